//! `cairn snapshot`: volume snapshots (issue 17, DESIGN §3).
//!
//! A snapshot is a read-only copy of a volume's tree as it was when it was
//! taken. Taking one is a single metadata entry whatever the volume's
//! size; the first write to each chunk afterwards keeps the chunk's old
//! version for the snapshot. Its files are read under
//! `/VOLUME/.snapshots/NAME/...` by `cairn cat`, `get` and `cp` and by
//! programs using the client library.

use cairn_client::MetaClient;
use cairn_proto::meta::Snapshot;
use clap::Subcommand;
use serde_json::json;

use crate::format::{full_time, human_bytes, short_time, table};
use crate::report::Context;

/// `cairn snapshot ...`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Take snapshot NAME of VOLUME: its tree as it is now, read-only, at
    /// /VOLUME/.snapshots/NAME. Taking the same name again answers the
    /// existing snapshot. Returns once every chunkserver fences the new
    /// snapshot (about one heartbeat), so its data reads back unchanged
    /// from then on.
    Create {
        /// The volume.
        volume: String,
        /// The snapshot's name (a file name: no '/').
        name: String,
    },
    /// List VOLUME's snapshots, oldest first.
    #[command(alias = "list")]
    Ls {
        /// The volume.
        volume: String,
    },
    /// Delete snapshot NAME of VOLUME. Data only it holds is freed by the
    /// garbage collector afterwards.
    #[command(alias = "delete")]
    Rm {
        /// The volume.
        volume: String,
        /// The snapshot.
        name: String,
    },
}

fn snapshot_json(s: &Snapshot) -> serde_json::Value {
    json!({
        "volume_id": s.volume_id,
        "name": s.name,
        "seq": s.seq,
        "created": full_time(s.created_ns),
        "used_bytes": s.used_bytes,
        "used_inodes": s.used_inodes,
        "ready": s.ready,
    })
}

/// Runs one `cairn snapshot` command.
///
/// # Errors
/// The command failed; the error says why.
pub async fn run(c: &MetaClient, cmd: &SnapshotCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        SnapshotCommand::Create { volume, name } => {
            let started = std::time::Instant::now();
            let s = c
                .create_snapshot(volume, name)
                .await
                .op_only("snapshot create")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&snapshot_json(&s))?);
            } else {
                println!(
                    "snapshot {name} of volume {volume} taken in {:.0?} (seq {}): read it at \
                     /{volume}/.snapshots/{name}",
                    started.elapsed(),
                    s.seq
                );
            }
        }
        SnapshotCommand::Ls { volume } => {
            let all = c.list_snapshots(volume).await.op_only("snapshot ls")?;
            if json {
                let out: Vec<_> = all.iter().map(snapshot_json).collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
                return Ok(());
            }
            if all.is_empty() {
                println!("volume {volume} has no snapshots");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        s.seq.to_string(),
                        short_time(s.created_ns),
                        human_bytes(s.used_bytes),
                        s.used_inodes.to_string(),
                        if s.ready { "yes" } else { "not yet" }.to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["NAME", "SEQ", "CREATED (UTC)", "BYTES", "INODES", "READY"],
                    &rows,
                    &[1, 3, 4]
                )
            );
        }
        SnapshotCommand::Rm { volume, name } => {
            let s = c
                .delete_snapshot(volume, name)
                .await
                .op_only("snapshot rm")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&snapshot_json(&s))?);
            } else {
                println!("snapshot {name} of volume {volume} deleted");
            }
        }
    }
    Ok(())
}
