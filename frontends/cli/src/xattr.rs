//! `cairn xattr`: list, get, set and remove extended attributes (the
//! `user.*` names programs set through a mount with setxattr(2) are the
//! same ones). Values are bytes: `get` writes them to stdout as they are
//! (or as hex with `--hex`), `set` takes them from the argument or a file.
//! Meta keeps them beside the inode, at most 64 KiB per value, and refuses
//! larger ones with a clear error.

use std::io::Write;

use cairn_client::MetaClient;
use cairn_client::meta_client::XattrMode;
use cairn_proto::ids::InodeId;
use clap::{Args, Subcommand};
use serde_json::json;

use crate::format::hex;
use crate::report::Context;

/// `cairn xattr ...`.
#[derive(Debug, Subcommand)]
pub enum XattrCommand {
    /// List the attribute names of a path, with their sizes.
    Ls {
        /// Absolute path (a symlink's own attributes, not its target's).
        path: String,
    },
    /// Print one attribute's value (bytes as stored).
    Get {
        /// Absolute path.
        path: String,
        /// Attribute name, e.g. user.checksum.
        name: String,
        /// Print the value as hex instead of raw bytes.
        #[arg(long)]
        hex: bool,
    },
    /// Set one attribute (created or replaced).
    Set(SetArgs),
    /// Remove one attribute.
    Rm {
        /// Absolute path.
        path: String,
        /// Attribute name.
        name: String,
    },
}

/// `cairn xattr set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// Absolute path.
    path: String,
    /// Attribute name, e.g. user.dataset-version.
    name: String,
    /// The value (UTF-8 text); or give --value-file.
    #[arg(required_unless_present = "value_file", conflicts_with = "value_file")]
    value: Option<String>,
    /// Read the value's bytes from this local file.
    #[arg(long, value_name = "FILE")]
    value_file: Option<std::path::PathBuf>,
    /// Fail if the attribute exists (XATTR_CREATE).
    #[arg(long, conflicts_with = "replace")]
    create: bool,
    /// Fail if the attribute does not exist (XATTR_REPLACE).
    #[arg(long)]
    replace: bool,
}

/// Runs an xattr command.
pub async fn run(c: &MetaClient, cmd: &XattrCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        XattrCommand::Ls { path } => {
            let ino = InodeId(c.resolve(path).await.op("xattr ls", path)?.ino);
            let mut names = c.listxattr(ino).await.op("xattr ls", path)?;
            names.sort();
            let mut sized = Vec::with_capacity(names.len());
            for n in names {
                let len = c.getxattr(ino, &n).await.op("xattr ls", path)?.len();
                sized.push((n, len));
            }
            if json {
                let v: Vec<_> = sized
                    .iter()
                    .map(|(n, len)| json!({"name": n, "size": len}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for (n, len) in sized {
                    println!("{n}\t{len} bytes");
                }
            }
        }
        XattrCommand::Get {
            path,
            name,
            hex: as_hex,
        } => {
            let ino = InodeId(c.resolve(path).await.op("xattr get", path)?.ino);
            let v = c.getxattr(ino, name).await.op("xattr get", path)?;
            if json {
                let text = String::from_utf8(v.clone()).ok();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({"name": name, "size": v.len(), "hex": hex(&v), "text": text})
                    )?
                );
            } else if *as_hex {
                println!("{}", hex(&v));
            } else {
                std::io::stdout().write_all(&v)?;
            }
        }
        XattrCommand::Set(a) => {
            let value = match (&a.value, &a.value_file) {
                (_, Some(f)) => std::fs::read(f)
                    .map_err(|e| anyhow::anyhow!("xattr set: reading {}: {e}", f.display()))?,
                (Some(v), None) => v.as_bytes().to_vec(),
                (None, None) => anyhow::bail!("xattr set: give a value or --value-file"),
            };
            let mode = if a.create {
                XattrMode::CreateOnly
            } else if a.replace {
                XattrMode::ReplaceOnly
            } else {
                XattrMode::Upsert
            };
            let ino = InodeId(c.resolve(&a.path).await.op("xattr set", &a.path)?.ino);
            c.setxattr(ino, &a.name, &value, mode)
                .await
                .op("xattr set", &a.path)?;
        }
        XattrCommand::Rm { path, name } => {
            let ino = InodeId(c.resolve(path).await.op("xattr rm", path)?.ino);
            c.removexattr(ino, name).await.op("xattr rm", path)?;
        }
    }
    Ok(())
}
