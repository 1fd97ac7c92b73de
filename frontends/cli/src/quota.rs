//! `cairn quota`: directory quotas.
//!
//! A directory can carry a byte and an inode quota of its own inside its
//! volume: everything made under it, at any depth, counts against it as
//! well as against the volume's quota. The CSI driver carves volumes out
//! of one shared Cairn volume this way (StorageClass parameter
//! `sharedVolume`). A quota starts on an empty directory that is not a
//! volume's root and not under another quota directory; a rename or hard
//! link across its edge fails with EXDEV (`mv` then copies), as with XFS
//! project quotas; removing the directory removes its quota.

use cairn_client::MetaClient;
use cairn_proto::ids::InodeId;
use cairn_proto::meta::DirQuota;
use clap::Subcommand;
use serde_json::json;

use crate::format::human_bytes;
use crate::report::Context;

/// `cairn quota ...`.
#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Set a directory's quotas. The first time, the directory must be
    /// empty, not a volume's root (use `cairn volume set-quota`) and not
    /// under another quota directory. A quota below what is used refuses
    /// new allocations until use falls under it; nothing is deleted.
    #[command(arg_required_else_help = true)]
    Set {
        /// Absolute path of the directory.
        path: String,
        /// Byte quota (e.g. "10GiB"; 0 = unlimited).
        #[arg(long, value_parser = cairn_proto::units::parse_size, value_name = "SIZE")]
        bytes: Option<u64>,
        /// Inode quota (0 = unlimited).
        #[arg(long, value_name = "N")]
        inodes: Option<u64>,
    },
    /// Show the quota a path is under: its own if it is a quota directory,
    /// else the quota directory's above it.
    #[command(arg_required_else_help = true)]
    Get {
        /// Absolute path.
        path: String,
    },
}

fn limit(n: u64, bytes: bool) -> String {
    match (n, bytes) {
        (0, _) => "unlimited".to_string(),
        (n, true) => human_bytes(n),
        (n, false) => n.to_string(),
    }
}

fn print(path: &str, q: &DirQuota, json: bool) -> anyhow::Result<()> {
    if json {
        let v = json!({
            "path": path,
            "ino": q.ino,
            "quota_bytes": q.quota_bytes,
            "quota_inodes": q.quota_inodes,
            "used_bytes": q.used_bytes,
            "used_inodes": q.used_inodes,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{path}: quota {} ({} used), inodes {} ({} used)",
            limit(q.quota_bytes, true),
            human_bytes(q.used_bytes),
            limit(q.quota_inodes, false),
            q.used_inodes
        );
    }
    Ok(())
}

/// Runs a `cairn quota` command.
///
/// # Errors
/// The path cannot be resolved, or meta refuses (with its reason).
pub async fn run(c: &MetaClient, cmd: &QuotaCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        QuotaCommand::Set {
            path,
            bytes,
            inodes,
        } => {
            if bytes.is_none() && inodes.is_none() {
                anyhow::bail!("quota set {path}: give --bytes SIZE, --inodes N or both");
            }
            let a = c.resolve(path).await.op("quota set", path)?;
            let q = c
                .set_dir_quota(InodeId(a.ino), *bytes, *inodes)
                .await
                .op("quota set", path)?;
            print(path, &q, json)
        }
        QuotaCommand::Get { path } => {
            let a = c.resolve(path).await.op("quota get", path)?;
            match c.dir_quota(InodeId(a.ino)).await.op("quota get", path)? {
                Some(q) if q.ino == a.ino => print(path, &q, json),
                Some(q) => {
                    if !json {
                        println!("{path} is under quota directory inode {}:", q.ino);
                    }
                    print(path, &q, json)
                }
                None if json => {
                    println!("null");
                    Ok(())
                }
                None => {
                    println!("{path}: under no directory quota (the volume's quota applies)");
                    Ok(())
                }
            }
        }
    }
}
