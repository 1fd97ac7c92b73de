//! Checkpoint directories that manage themselves, seen from a mount
//! (issue 18; the library side is `cairn_client::checkpoint`).
//!
//! A directory marked with `user.cairn.checkpoint.keep = N` (`cairn
//! checkpoint init DIR --keep N`) is a checkpoint directory. Programs save
//! into it the usual way: write a temporary file, then rename it into
//! place. Through a mount this module turns that into checkpoints:
//!
//! * **Publish**: a rename into a marked directory records the file as a
//!   checkpoint (the xattr record `cairn checkpoint list` shows; no CRC,
//!   the mount never saw the bytes whole), then runs the retention: the
//!   newest N stay, older ones go — never the newest, never one this mount
//!   has open (a reader elsewhere keeps reading for the GC grace period).
//!   Both run after the rename's reply, so the program does not wait.
//! * **Save time**: from the creation of the file in this mount (in the
//!   directory, under its temporary name) to its publish, into
//!   `cairn_client_checkpoint_save_seconds`.
//! * **Failed saves**: a file created in a marked directory and unlinked
//!   without ever being published (what frameworks do when a save fails),
//!   into `cairn_client_checkpoint_saves_total{result="error"}`.
//! * **Restore time**: a file of a marked directory opened read-only and
//!   read to its end, from open to release, into
//!   `cairn_client_checkpoint_restore_seconds`. Files are known to be in a
//!   marked directory from lookups and publishes in this mount.
//!
//! Whether a directory is marked is cached for [`MARK_TTL`] per directory
//! (negative answers too), so a dataset tree costs one xattr read per
//! directory per TTL, not one per lookup.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use cairn_client::Client;
use cairn_client::checkpoint::{keep_of, record_published, retain};
use cairn_proto::ids::InodeId;
use tracing::{info, warn};

/// How long a directory's mark (or its absence) is trusted.
pub const MARK_TTL: Duration = Duration::from_secs(30);

/// Entries a map holds before it is cleared (memory bound; the cost of a
/// clear is a missed measurement, never a wrong one).
const BOUND: usize = 100_000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn bounded_insert<K: std::hash::Hash + Eq, V>(m: &mut HashMap<K, V>, k: K, v: V) {
    if m.len() >= BOUND {
        m.clear();
    }
    m.insert(k, v);
}

/// A read-only open of a checkpoint file.
struct Restore {
    started: Instant,
    size: u64,
    read: u64,
    volume: String,
}

/// What a mount knows of checkpoint directories.
#[derive(Default)]
pub struct Managed {
    /// Directory → (how many it keeps, when that was read).
    marks: Mutex<HashMap<u64, (Option<usize>, Instant)>>,
    /// (directory, name) → (inode, created at): files this mount created in
    /// a marked directory and has not published.
    pending: Mutex<HashMap<(u64, String), (Instant, String)>>,
    /// Inodes known to be checkpoints of a marked directory.
    members: Mutex<HashMap<u64, ()>>,
    /// Open handles reading a checkpoint.
    restores: Mutex<HashMap<u64, Restore>>,
}

impl Managed {
    /// How many checkpoints directory `dir` keeps (`None`: not marked).
    pub async fn keep(&self, client: &Client, dir: u64) -> Option<usize> {
        if let Some((k, at)) = lock(&self.marks).get(&dir)
            && at.elapsed() < MARK_TTL
        {
            return *k;
        }
        let k = match keep_of(client.meta(), InodeId(dir)).await {
            Ok(k) => k,
            Err(e) => {
                warn!(dir, error = %e, "reading a directory's checkpoint mark");
                None
            }
        };
        bounded_insert(&mut lock(&self.marks), dir, (k, Instant::now()));
        k
    }

    /// A lookup found `ino` in `parent`.
    pub async fn looked_up(&self, client: &Client, parent: u64, ino: u64) {
        if self.keep(client, parent).await.is_some() {
            bounded_insert(&mut lock(&self.members), ino, ());
        }
    }

    /// [`Self::looked_up`] when whether `parent` is marked is known: no
    /// await. `false`: nothing recorded, take [`Self::looked_up`].
    pub fn looked_up_now(&self, parent: u64, ino: u64) -> bool {
        let keep = match lock(&self.marks).get(&parent) {
            Some((k, at)) if at.elapsed() < MARK_TTL => *k,
            _ => return false,
        };
        if keep.is_some() {
            bounded_insert(&mut lock(&self.members), ino, ());
        }
        true
    }

    /// This mount created `name` in `parent`, a file of volume `volume_id`.
    pub async fn created(&self, client: &Client, parent: u64, name: &str, volume_id: u64) {
        if self.keep(client, parent).await.is_some() {
            bounded_insert(
                &mut lock(&self.pending),
                (parent, name.to_string()),
                (Instant::now(), client.volume_label(volume_id)),
            );
        }
    }

    /// `name` in `parent` was unlinked: a file created for a checkpoint
    /// and never published is a failed save.
    pub fn unlinked(&self, client: &Client, parent: u64, name: &str) {
        let pending = lock(&self.pending).remove(&(parent, name.to_string()));
        if let Some((_, volume)) = pending {
            client
                .metrics()
                .checkpoint_saved(&volume, Duration::ZERO, false);
        }
    }

    /// `name` in `p` was renamed to `new_name` in `np`. Returns the
    /// directory's retention when this published a checkpoint there: the
    /// caller runs [`Self::publish`] after replying.
    pub async fn renamed(
        &self,
        client: &Client,
        p: u64,
        name: &str,
        np: u64,
        new_name: &str,
    ) -> Option<(usize, Option<Instant>)> {
        let created = lock(&self.pending).remove(&(p, name.to_string()));
        let Some(keep) = self.keep(client, np).await else {
            // Moved out of (or within a non-marked) directory: still
            // pending under its new name if it was.
            if let Some(c) = created {
                bounded_insert(&mut lock(&self.pending), (np, new_name.to_string()), c);
            }
            return None;
        };
        Some((keep, created.map(|(at, _)| at)))
    }

    /// Records `new_name` in `dir` as a published checkpoint, measures its
    /// save, and keeps the directory's newest `keep`; `open` says whether
    /// this mount has an inode open.
    pub async fn publish(
        &self,
        client: &Client,
        dir: u64,
        new_name: &str,
        keep: usize,
        created: Option<Instant>,
        open: impl Fn(u64) -> bool,
    ) {
        let meta = client.meta();
        let attr = match meta.lookup(InodeId(dir), new_name).await {
            Ok(a) => a,
            Err(e) => {
                warn!(dir, name = new_name, error = %e, "a published checkpoint is gone before its record");
                return;
            }
        };
        if attr.kind != cairn_proto::meta::FileType::Regular as i32 {
            return;
        }
        let took = created.map(|at| at.elapsed());
        if let Some(took) = took {
            let volume = client.volume_label(attr.volume_id);
            client.metrics().checkpoint_saved(&volume, took, true);
        }
        bounded_insert(&mut lock(&self.members), attr.ino, ());
        let seconds = took.map_or(0.0, |t| t.as_secs_f64());
        if let Err(e) =
            record_published(meta, InodeId(attr.ino), new_name, attr.size, seconds).await
        {
            warn!(dir, name = new_name, error = %e, "recording a published checkpoint");
            return;
        }
        match retain(meta, InodeId(dir), keep, open).await {
            Ok(removed) if !removed.is_empty() => {
                info!(
                    dir,
                    keep,
                    ?removed,
                    "checkpoint retention removed older checkpoints"
                );
            }
            Ok(_) => {}
            Err(e) => warn!(dir, error = %e, "checkpoint retention"),
        }
    }

    /// Handle `fh` opened `ino` (of `size` bytes, volume `volume_id`)
    /// read-only.
    pub fn opened(&self, client: &Client, fh: u64, ino: u64, size: u64, volume_id: u64) {
        if size > 0 && lock(&self.members).contains_key(&ino) {
            bounded_insert(
                &mut lock(&self.restores),
                fh,
                Restore {
                    started: Instant::now(),
                    size,
                    read: 0,
                    volume: client.volume_label(volume_id),
                },
            );
        }
    }

    /// Handle `fh` read `n` bytes.
    pub fn read(&self, fh: u64, n: usize) {
        if let Some(r) = lock(&self.restores).get_mut(&fh) {
            r.read += n as u64;
        }
    }

    /// Handle `fh` was released: a checkpoint read whole is a restore.
    pub fn released(&self, client: &Client, fh: u64) {
        let r = lock(&self.restores).remove(&fh);
        if let Some(r) = r.filter(|r| r.read >= r.size) {
            client
                .metrics()
                .checkpoint_restored(&r.volume, r.started.elapsed());
        }
    }
}
