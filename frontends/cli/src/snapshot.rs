//! `cairn snapshot`: volume snapshots (issue 17, DESIGN §3).
//!
//! A snapshot is a read-only copy of a volume's tree as it was when it was
//! taken. Taking one is a single metadata entry whatever the volume's
//! size; the first write to each chunk afterwards keeps the chunk's old
//! version for the snapshot. Its files are read under
//! `/VOLUME/.snapshots/NAME/...` by `cairn cat`, `get` and `cp` and by
//! programs using the client library.

use std::io::IsTerminal;

use cairn_client::MetaClient;
use cairn_proto::ids::InodeId;
use cairn_proto::meta::{FileType, Snapshot, SnapshotRef};
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
    /// List VOLUME's snapshots, oldest first: when each was taken, what the
    /// volume held then (BYTES, INODES), and EXCLUSIVE, the bytes on disk
    /// (all replicas) that deleting it would free — the old chunk versions
    /// only it reads, as the chunkservers last counted them (every 10 s),
    /// and for the oldest snapshot the files deleted since that it keeps.
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
    /// Restore snapshot NAME of VOLUME into a new, writable volume NEW: the
    /// snapshot's tree is copied (metadata only, with a progress bar) and
    /// its files share the snapshot's data until they are written — the
    /// first write to a file copies that one file. The snapshot cannot be
    /// deleted while NEW exists. NEW gets VOLUME's policy, keys and
    /// compression (use the same key file for an encrypted one).
    Restore {
        /// The volume.
        volume: String,
        /// The snapshot.
        name: String,
        /// The new volume's name.
        #[arg(long)]
        to: String,
    },
    /// List what changed in VOLUME between snapshot FROM and snapshot TO
    /// (or the live tree when TO is omitted), one path per line: "+" added,
    /// "-" removed, "M" a file or symlink whose contents or attributes
    /// changed (directories show as added or removed only). For
    /// incremental dataset sync.
    Diff {
        /// The volume.
        volume: String,
        /// The older snapshot.
        from: String,
        /// The newer snapshot; the live tree when omitted.
        to: Option<String>,
    },
}

/// A tree as (path → (inode, kind, version)).
type Tree = std::collections::BTreeMap<String, (u64, i32, u64)>;

/// Walks the tree of volume `volume` at snapshot `at` (the live tree for
/// `None`).
async fn walk(c: &MetaClient, volume: &str, at: Option<SnapshotRef>) -> anyhow::Result<Tree> {
    let root = c
        .resolve(&format!("/{volume}"))
        .await
        .op("snapshot diff", volume)?;
    let mut out = Tree::new();
    let mut todo = vec![(InodeId(root.ino), String::new())];
    while let Some((dir, path)) = todo.pop() {
        for e in c
            .readdir_all_plus_at(at, dir)
            .await
            .op("snapshot diff", &path)?
        {
            let p = format!("{path}/{}", e.name);
            let (version, kind) = match &e.attr {
                Some(a) => (a.version, a.kind),
                None => (0, e.kind),
            };
            if kind == FileType::Directory as i32 {
                todo.push((InodeId(e.ino), p.clone()));
            }
            out.insert(p, (e.ino, kind, version));
        }
    }
    Ok(out)
}

/// The changes from tree `a` to tree `b`, in path order.
fn changes(a: &Tree, b: &Tree) -> Vec<(char, String)> {
    let mut out = Vec::new();
    for (p, (ino, kind, version)) in b {
        match a.get(p) {
            None => out.push(('+', p.clone())),
            Some((ino0, kind0, _)) if ino0 != ino || kind0 != kind => {
                out.push(('-', p.clone()));
                out.push(('+', p.clone()));
            }
            Some((_, _, v0)) if v0 != version && *kind != FileType::Directory as i32 => {
                out.push(('M', p.clone()));
            }
            Some(_) => {}
        }
    }
    for p in a.keys() {
        if !b.contains_key(p) {
            out.push(('-', p.clone()));
        }
    }
    // By path; a replaced path's removal before its addition.
    let rank = |k: char| match k {
        '-' => 0,
        '+' => 1,
        _ => 2,
    };
    out.sort_by(|x, y| x.1.cmp(&y.1).then(rank(x.0).cmp(&rank(y.0))));
    out
}

fn snapshot_json(s: &Snapshot) -> serde_json::Value {
    json!({
        "volume_id": s.volume_id,
        "name": s.name,
        "seq": s.seq,
        "created": full_time(s.created_ns),
        "used_bytes": s.used_bytes,
        "used_inodes": s.used_inodes,
        "exclusive_bytes": s.exclusive_bytes,
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
                        human_bytes(s.exclusive_bytes),
                        if s.ready { "yes" } else { "not yet" }.to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "NAME",
                        "SEQ",
                        "CREATED (UTC)",
                        "BYTES",
                        "INODES",
                        "EXCLUSIVE",
                        "READY"
                    ],
                    &rows,
                    &[1, 3, 4, 5]
                )
            );
        }
        SnapshotCommand::Diff { volume, from, to } => {
            let at = |s: Snapshot| {
                Some(SnapshotRef {
                    volume_id: s.volume_id,
                    seq: s.seq,
                })
            };
            let a_snap = c
                .ready_snapshot(volume, from)
                .await
                .op("snapshot diff", from)?;
            let a = walk(c, volume, at(a_snap)).await?;
            let b = match to {
                Some(t) => {
                    let s = c.ready_snapshot(volume, t).await.op("snapshot diff", t)?;
                    walk(c, volume, at(s)).await?
                }
                None => walk(c, volume, None).await?,
            };
            let diff = changes(&a, &b);
            if json {
                let out: Vec<_> = diff
                    .iter()
                    .map(|(k, p)| json!({"change": k.to_string(), "path": format!("/{volume}{p}")}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                for (k, p) in &diff {
                    println!("{k} /{volume}{p}");
                }
            }
        }
        SnapshotCommand::Restore { volume, name, to } => {
            let started = std::time::Instant::now();
            let mut r = c
                .restore_snapshot(volume, name, to)
                .await
                .op_only("snapshot restore")?;
            let bar = if std::io::stderr().is_terminal() && !json {
                indicatif::ProgressBar::new(r.total)
            } else {
                indicatif::ProgressBar::hidden()
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "restoring {msg} [{bar:30}] {pos}/{len} inodes {elapsed}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(to.clone());
            while !r.done {
                bar.set_length(r.total.max(r.copied));
                bar.set_position(r.copied);
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                r = c.restore_status(to).await.op_only("snapshot restore")?;
            }
            bar.finish_and_clear();
            if json {
                let out = json!({
                    "volume": to,
                    "from_volume": volume,
                    "snapshot": name,
                    "inodes": r.copied,
                    "seconds": started.elapsed().as_secs_f64(),
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!(
                    "restored snapshot {name} of volume {volume} into volume {to} ({} inodes in \
                     {:.1?}); its files share the snapshot's data until written",
                    r.copied,
                    started.elapsed()
                );
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_adds_removes_and_modified_files() {
        let f = FileType::Regular as i32;
        let d = FileType::Directory as i32;
        let a: Tree = [
            ("/d".to_string(), (2, d, 1)),
            ("/d/x".to_string(), (3, f, 1)),
            ("/y".to_string(), (4, f, 1)),
            ("/z".to_string(), (5, f, 1)),
        ]
        .into_iter()
        .collect();
        let b: Tree = [
            // The directory changed (an entry went): not listed itself.
            ("/d".to_string(), (2, d, 2)),
            ("/y".to_string(), (4, f, 2)),
            // Replaced by another file of the same name.
            ("/z".to_string(), (9, f, 1)),
            ("/new".to_string(), (8, f, 1)),
        ]
        .into_iter()
        .collect();
        let got = changes(&a, &b);
        let want: Vec<(char, String)> = vec![
            ('-', "/d/x".into()),
            ('+', "/new".into()),
            ('M', "/y".into()),
            ('-', "/z".into()),
            ('+', "/z".into()),
        ];
        assert_eq!(got, want);
        assert!(changes(&a, &a).is_empty());
    }
}
