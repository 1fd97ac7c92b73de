//! The Raft log and the Raft hard state of a metadata replica: entries in
//! append-only segment files ([`Segments`]), hard state in sled.
//!
//! | where | what |
//! |---|---|
//! | the log directory | segment files of entries (see [`super::segments`]) |
//! | sled tree `raft_state`, key `format` | `u32` LE: format version (2: entries in segments; 1: entries were in sled's `raft_log` tree, moved on open) |
//! | `vote` | the last saved [`Vote`] |
//! | `committed` | the last saved committed [`LogId`] |
//! | `last_purged` | the [`LogId`] of the last purged entry |
//!
//! Invariants:
//!
//! * **Durability.** A vote is on stable storage before [`save_vote`]
//!   returns. Entries are written to their segment (and readable) when
//!   [`append`] returns; a dedicated flusher thread takes every append
//!   queued while its previous `fdatasync` ran and covers them with one
//!   sync per segment file (group commit), then raises the durable
//!   watermark ([`DurableLog`]) and completes the waiting callbacks in
//!   append order. A follower's appends (and a leader's blank and
//!   membership entries) complete openraft's callback only after their
//!   sync, so a follower never acknowledges an entry it could lose.
//! * **A sync with nothing ahead of it runs inline.** When no append is
//!   queued for the flusher (nor being synced by it), an append that waits
//!   for its sync (a follower's, above all) syncs on the calling task and
//!   completes its callback there. openraft awaits that callback before its
//!   next log command anyway, so this changes no ordering and no grouping
//!   (appends arriving meanwhile are covered by the next sync together);
//!   it saves the two thread hand-offs of the flusher per append, a wake-up
//!   of the flusher and one back: measured on a follower (2 cores, three
//!   replicas), recv → sync started was 45 µs and sync done → ack sent
//!   50 µs through the flusher, the part of a create's critical path that
//!   was not the disk's. The flusher's lock makes the two paths exclusive,
//!   so callbacks still complete in append order and the watermark only
//!   rises. A leader's early-acknowledged appends keep the flusher, since
//!   their sync must overlap the sending of AppendEntries; so does any
//!   append while [`LogStore::pause_syncs`] holds the gate.
//! * **Leader appends** (when [`super::replicate_during_sync`] wired the
//!   replica, as every running replica is). openraft 0.9's core awaits each append's
//!   callback before it runs its next command, so a leader that waited for
//!   its own sync sent AppendEntries only after it (measured: ~200 µs of a
//!   ~900 µs create, strace of the leader) and appended nothing meanwhile.
//!   The command entries a node appends as leader under its saved vote are
//!   therefore acknowledged as soon as they are written: the leader sends
//!   them to followers while its own sync runs. openraft may then count
//!   such an entry committed with one follower's durable copy and the
//!   leader's unsynced one, so nothing that commit would reveal happens
//!   before the leader's sync too: the state machine applies an entry only
//!   once [`DurableLog`] covers it (answers to clients and reads follow
//!   applying), the commit index sent to followers is capped at it (so no
//!   follower applies it either), and so is the saved committed id. Every
//!   effect of a write thus still waits for a majority of durable copies
//!   (DESIGN §4). If the leader crashes before its sync, the entry was
//!   committed only in the crashed leader's memory: no one applied it, and
//!   Raft may drop it like any uncommitted entry.
//! * **sled is off the acknowledgement path.** Appending never flushes
//!   sled: the state machine's writes reach disk through sled's own
//!   background flusher, and a replica that restarts re-applies the log
//!   from the last applied id that sled made durable (each applied entry
//!   is one atomic commit with that id, see [`crate::fs::store::SledKv`]).
//!   Votes and purges do flush sled: they are rare.
//! * `last_purged` is durable before segments are unlinked, so a restart
//!   never finds a hole below the log that the purge record does not
//!   cover.
//! * The committed log id is saved without a flush (openraft allows it to
//!   lag; it only lets a restarted replica re-apply entries sooner).
//! * Everything read from disk is decoded with errors, never `unwrap`.
//!
//! [`save_vote`]: RaftLogStorage::save_vote
//! [`append`]: RaftLogStorage::append

// openraft's traits fix the error type (`StorageError`, 224 bytes); the
// private helpers that feed them return it as is rather than box and unbox.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, StorageError, StorageIOError, Vote,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::segments::Segments;
use super::types::{Entry, LogId, TypeConfig};
use crate::metrics::LogIoCounters;

/// Format version of the log: 2 keeps entries in segment files.
pub const LOG_FORMAT_VERSION: u32 = 2;

/// sled's tree of log entries in format 1 (moved to segments on open).
const LEGACY_LOG_TREE: &str = "raft_log";
const STATE_TREE: &str = "raft_state";
const KEY_FORMAT: &[u8] = b"format";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// Counters of a [`LogStore`] since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Log entries appended.
    pub entries_appended: u64,
    /// fsyncs that made appended entries or votes durable (one per group
    /// commit, so `entries_appended / flushes` is the group-commit factor,
    /// diluted by elections).
    pub flushes: u64,
    /// Of `flushes`, those an append ran itself because nothing was queued
    /// for the flusher (module docs).
    pub inline_syncs: u64,
}

/// An append handed to the flusher.
struct FlushJob {
    /// The segment files its entries were written to.
    files: Vec<Arc<std::fs::File>>,
    /// openraft's callback, `None` when it was completed at once (a
    /// leader's own entries, see "Leader appends" in the module docs).
    callback: Option<LogFlushed<TypeConfig>>,
    /// The log id of its last entry.
    last: Option<LogId>,
}

/// How far the log is on stable storage, as the flusher last reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flushed {
    /// Every entry of the log at or below this log id is durable.
    Upto(Option<LogId>),
    /// A sync failed: nothing appended since can be called durable.
    Failed,
}

/// A reader of how far a [`LogStore`]'s log is durable: what the state
/// machine waits for before applying a leader's own entries, and what the
/// commit index a leader sends is capped at (see "Leader appends" in the
/// module docs).
#[derive(Debug, Clone)]
pub struct DurableLog {
    rx: watch::Receiver<Flushed>,
}

impl DurableLog {
    /// The last log id known durable (`None`: none, or a sync failed).
    pub fn upto(&self) -> Option<LogId> {
        match *self.rx.borrow() {
            Flushed::Upto(u) => u,
            Flushed::Failed => None,
        }
    }

    /// `committed`, lowered to the durable log id when it is past it;
    /// `None` (claim nothing) when the two cannot be compared.
    pub fn clamp(&self, committed: Option<LogId>) -> Option<LogId> {
        clamp_committed(committed, self.upto())
    }

    /// Waits until the entry `id` is durable.
    ///
    /// # Errors
    /// A sync of the log failed, or the store was closed.
    pub async fn wait_for(&self, id: LogId) -> io::Result<()> {
        let mut rx = self.rx.clone();
        let seen = rx
            .wait_for(|f| match f {
                Flushed::Upto(u) => *u >= Some(id),
                Flushed::Failed => true,
            })
            .await
            .map(|f| *f);
        match seen {
            Ok(Flushed::Upto(_)) => Ok(()),
            Ok(Flushed::Failed) => Err(io::Error::other(
                "a sync of the raft log failed: its unsynced entries are not durable",
            )),
            Err(_) => Err(io::Error::other("the raft log was closed")),
        }
    }
}

/// The Raft log storage of a replica: entries in segment files, hard state
/// in sled.
///
/// Cheap to clone; clones share the log and the flusher thread, which
/// stops when the last clone is dropped.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    state: sled::Tree,
    segments: Mutex<Segments>,
    /// Appends waiting for the flusher's next sync. `None` only while
    /// dropping.
    flush_tx: Option<mpsc::Sender<FlushJob>>,
    flusher: Option<JoinHandle<()>>,
    /// Syncing, shared with the flusher thread.
    syncer: Arc<Syncer>,
    /// sled's data file, fdatasync'ed after a vote's flush (see
    /// [`durable_flush`]).
    sync_file: Option<Arc<std::fs::File>>,
    /// How far the log is durable.
    durable: DurableLog,
    /// The node whose own entries, appended while it leads, are
    /// acknowledged before their sync; 0: none (every append waits).
    early_node: AtomicU64,
    /// The last saved vote.
    vote: Mutex<Option<Vote<u64>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends the flusher after it has completed what is
        // queued.
        self.flush_tx.take();
        if let Some(flusher) = self.flusher.take()
            && flusher.join().is_err()
        {
            tracing::error!("raft log flusher thread panicked");
        }
    }
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Segments>) -> std::sync::MutexGuard<'_, Segments> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unsupported(msg: String) -> sled::Error {
    sled::Error::Unsupported(msg)
}

/// The decoded value under `key` in the state tree, read while opening.
fn decode_at_open<T: DeserializeOwned>(
    state: &sled::Tree,
    key: &[u8],
) -> Result<Option<T>, sled::Error> {
    let Some(v) = state.get(key)? else {
        return Ok(None);
    };
    bincode::deserialize(&v).map(Some).map_err(|e| {
        let key = String::from_utf8_lossy(key);
        unsupported(format!("unreadable raft_state/{key}: {e}"))
    })
}

impl LogStore {
    /// Opens (creating if needed) the log in `log_dir` and the hard state
    /// in `db`, and starts the flusher thread. A log of format 1 (entries
    /// in sled) is moved into segments first.
    ///
    /// # Errors
    /// A sled or I/O failure; [`sled::Error::Unsupported`] when the log was
    /// written by a newer format, or its format record is unreadable, or
    /// its segments leave a hole.
    pub fn open(db: &sled::Db, log_dir: &Path) -> Result<LogStore, sled::Error> {
        Self::open_synced(db, log_dir, None)
    }

    /// As [`LogStore::open`] for a database at `sled_dir` (sled's
    /// directory): a vote's flush is followed by an `fdatasync` of sled's
    /// data file, which is what makes it survive power loss.
    ///
    /// # Errors
    /// As [`LogStore::open`]; an I/O error when the data file cannot be
    /// opened.
    pub fn open_at(
        db: &sled::Db,
        sled_dir: &Path,
        log_dir: &Path,
    ) -> Result<LogStore, sled::Error> {
        let file = std::fs::File::open(sled_dir.join("db")).map_err(sled::Error::Io)?;
        Self::open_synced(db, log_dir, Some(Arc::new(file)))
    }

    fn open_synced(
        db: &sled::Db,
        log_dir: &Path,
        sync_file: Option<Arc<std::fs::File>>,
    ) -> Result<LogStore, sled::Error> {
        let state = db.open_tree(STATE_TREE)?;
        let format = match state.get(KEY_FORMAT)? {
            None => None,
            Some(v) => {
                let bytes: [u8; 4] = v
                    .as_ref()
                    .try_into()
                    .map_err(|_| unsupported(format!("unreadable raft log format record {v:?}")))?;
                Some(u32::from_le_bytes(bytes))
            }
        };
        if let Some(v) = format.filter(|v| *v > LOG_FORMAT_VERSION) {
            return Err(unsupported(format!(
                "raft log format {v} is newer than this build understands \
                 ({LOG_FORMAT_VERSION}); upgrade cairn-meta"
            )));
        }
        let last_purged: Option<LogId> = decode_at_open(&state, KEY_LAST_PURGED)?;
        let mut segments =
            Segments::open(log_dir, last_purged.map(|l| l.index)).map_err(sled::Error::Io)?;
        if format.is_some_and(|v| v < LOG_FORMAT_VERSION) {
            migrate_from_sled(db, &mut segments)?;
        }
        if format != Some(LOG_FORMAT_VERSION) {
            state.insert(KEY_FORMAT, &LOG_FORMAT_VERSION.to_le_bytes())?;
            durable_flush(db, sync_file.as_deref())?;
        }
        let vote: Option<Vote<u64>> = decode_at_open(&state, KEY_VOTE)?;
        // What recovery found is what the log holds (the state openraft
        // starts from): the watermark starts there.
        let (durable_tx, durable_rx) =
            watch::channel(Flushed::Upto(segments.last().map(|e| e.log_id)));
        let (flush_tx, flush_rx) = mpsc::channel();
        let syncer = Arc::new(Syncer {
            counters: Arc::default(),
            durable: durable_tx,
            gate: Arc::default(),
            lock: Mutex::new(()),
            queued: AtomicU64::new(0),
        });
        let flusher_syncer = syncer.clone();
        let flusher = std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || run_flusher(&flush_rx, &flusher_syncer))
            .map_err(sled::Error::Io)?;
        Ok(LogStore {
            inner: Arc::new(Inner {
                db: db.clone(),
                state,
                segments: Mutex::new(segments),
                flush_tx: Some(flush_tx),
                flusher: Some(flusher),
                syncer,
                sync_file,
                durable: DurableLog { rx: durable_rx },
                early_node: AtomicU64::new(0),
                vote: Mutex::new(vote),
            }),
        })
    }

    /// Acknowledges to openraft the entries node `node_id` appends as
    /// leader as soon as they are written, before their sync (see "Leader
    /// appends" in the module docs). Only sound when the state machine
    /// waits for [`LogStore::durable`] before applying and the network caps
    /// the commit index it sends at it: [`super::replicate_during_sync`]
    /// turns on all three.
    pub(crate) fn ack_leader_appends_early(&self, node_id: u64) {
        self.inner.early_node.store(node_id, Ordering::Relaxed);
    }

    /// Stalls the log's syncs until the returned handle drops, as a hung
    /// disk would (a sync already running finishes). For fault tests: what
    /// a replica acknowledges while its disk hangs.
    pub fn pause_syncs(&self) -> SyncPause {
        self.inner.syncer.gate.set(true);
        SyncPause {
            gate: self.inner.syncer.gate.clone(),
        }
    }

    /// Returns a reader of how far the log is durable.
    pub fn durable(&self) -> DurableLog {
        self.inner.durable.clone()
    }

    /// Whether `entries` are this node's own, appended while it leads
    /// under the saved vote, and carry only commands (a leader's blank and
    /// membership entries wait for their sync, as a follower's do).
    fn own_commands(&self, entries: &[Entry]) -> bool {
        let node = self.inner.early_node.load(Ordering::Relaxed);
        let vote = *self
            .inner
            .vote
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(vote) = vote.filter(|v| node != 0 && v.is_committed()) else {
            return false;
        };
        vote.leader_id().voted_for() == Some(node)
            && !entries.is_empty()
            && entries.iter().all(|e| {
                e.log_id.leader_id == *vote.leader_id()
                    && matches!(e.payload, EntryPayload::Normal(_))
            })
    }

    /// Syncs an append's `files` on the calling task when nothing is
    /// queued for the flusher or being synced by it, and completes
    /// `callback` (module docs: "A sync with nothing ahead of it runs
    /// inline"). Returns the callback when the append must go through the
    /// flusher instead.
    fn sync_inline(
        &self,
        files: &[Arc<std::fs::File>],
        last: Option<LogId>,
        callback: LogFlushed<TypeConfig>,
    ) -> Option<LogFlushed<TypeConfig>> {
        let sy = &self.inner.syncer;
        if sy.queued.load(Ordering::Acquire) != 0 || sy.gate.is_paused() {
            return Some(callback);
        }
        let Ok(held) = sy.lock.try_lock() else {
            return Some(callback);
        };
        // Checked again under the lock: the flusher takes it before it
        // looks at its queue and lowers the count only after its callbacks.
        if sy.queued.load(Ordering::Acquire) != 0 {
            return Some(callback);
        }
        let result = sy.sync(files, last);
        sy.counters.inline_syncs.fetch_add(1, Ordering::Relaxed);
        complete(callback, &result);
        drop(held);
        None
    }

    /// Returns the store's live counters (shared: they keep counting).
    pub fn io_counters(&self) -> Arc<LogIoCounters> {
        self.inner.syncer.counters.clone()
    }

    /// Returns a reading of the store's counters.
    pub fn stats(&self) -> LogStats {
        let c = &self.inner.syncer.counters;
        LogStats {
            entries_appended: c.entries_appended.load(Ordering::Relaxed),
            flushes: c.flushes.load(Ordering::Relaxed),
            inline_syncs: c.inline_syncs.load(Ordering::Relaxed),
        }
    }

    /// Returns the decoded value under `key` in the state tree.
    fn read_state<T: DeserializeOwned>(
        &self,
        key: &[u8],
        subject: ErrorSubject<u64>,
    ) -> Result<Option<T>, StorageError<u64>> {
        let io = |e: AnyError| StorageIOError::new(subject.clone(), ErrorVerb::Read, e);
        let Some(bytes) = self
            .inner
            .state
            .get(key)
            .map_err(|e| io(AnyError::new(&e)))?
        else {
            return Ok(None);
        };
        let value = bincode::deserialize(&bytes).map_err(|e| {
            io(AnyError::new(&*e)
                .add_context(|| format!("decoding raft_state/{}", String::from_utf8_lossy(key))))
        })?;
        Ok(Some(value))
    }
}

/// Moves the entries of a format-1 log (sled's `raft_log` tree) into
/// segments, syncs them, then drops the tree.
fn migrate_from_sled(db: &sled::Db, segments: &mut Segments) -> Result<(), sled::Error> {
    let tree = db.open_tree(LEGACY_LOG_TREE)?;
    let mut entries = Vec::new();
    for kv in tree.iter() {
        let (key, value) = kv?;
        let entry: Entry = bincode::deserialize(&value)
            .map_err(|e| unsupported(format!("decoding raft log entry {key:?}: {e}")))?;
        entries.push(entry);
    }
    let have = segments.last().map(|e| e.log_id.index);
    entries.retain(|e| have.is_none_or(|h| e.log_id.index > h));
    for file in segments.append(entries).map_err(sled::Error::Io)? {
        file.sync_data().map_err(sled::Error::Io)?;
    }
    drop(tree);
    db.drop_tree(LEGACY_LOG_TREE)?;
    Ok(())
}

fn encode<T: Serialize>(
    value: &T,
    subject: ErrorSubject<u64>,
) -> Result<Vec<u8>, StorageError<u64>> {
    bincode::serialize(value)
        .map_err(|e| StorageIOError::new(subject, ErrorVerb::Write, AnyError::new(&*e)).into())
}

fn write_logs_err<E: std::error::Error + 'static>(e: &E) -> StorageError<u64> {
    StorageIOError::<u64>::write_logs(AnyError::new(e)).into()
}

/// Converts a range of log indexes to `[start, end)`, `end == None` meaning
/// unbounded; `None` for an empty range.
fn index_range<RB: RangeBounds<u64>>(range: &RB) -> Option<(u64, Option<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.checked_add(1),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => None,
    };
    match end {
        Some(e) if e <= start => None,
        _ => Some((start, end)),
    }
}

/// Flushes sled and makes the flush durable.
///
/// sled 0.34's `flush()` writes its pages with `sync_file_range`, which
/// pushes them to the device but neither flushes the drive's volatile
/// cache nor syncs file metadata (strace: no fsync on that path; only its
/// 500 ms background flusher calls fsync). One `fdatasync` on the data
/// file after the flush covers both, for every write the flush carried.
fn durable_flush(db: &sled::Db, sync_file: Option<&std::fs::File>) -> Result<(), sled::Error> {
    db.flush()?;
    if let Some(f) = sync_file {
        f.sync_data().map_err(sled::Error::Io)?;
    }
    Ok(())
}

/// `committed` capped at `durable`, both log ids of this replica's log.
///
/// A durable id at or above the committed one leaves it as is; one below
/// it, at a lower or equal index, is an entry of the log (the watermark
/// only names entries that were synced, and none at or below a committed
/// index is ever truncated), so it is the cap. One that sorts below the
/// committed id by term yet sits at a higher index names an entry a
/// conflict truncated after its sync (the watermark keeps the highest id
/// ever synced until the next sync passes it): it is not in the log, so
/// nothing is claimed (`None`; followers and the saved id only ever rise,
/// so this is late news, never wrong news).
fn clamp_committed(committed: Option<LogId>, durable: Option<LogId>) -> Option<LogId> {
    let (c, d) = (committed?, durable?);
    if d >= c {
        Some(c)
    } else if d.index <= c.index {
        Some(d)
    } else {
        None
    }
}

/// Whether the flusher may sync (see [`LogStore::pause_syncs`]).
#[derive(Default)]
struct SyncGate {
    paused: Mutex<bool>,
    resumed: std::sync::Condvar,
}

impl SyncGate {
    fn set(&self, paused: bool) {
        *self.paused.lock().unwrap_or_else(PoisonError::into_inner) = paused;
        if !paused {
            self.resumed.notify_all();
        }
    }

    fn is_paused(&self) -> bool {
        *self.paused.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait_open(&self) {
        let mut paused = self.paused.lock().unwrap_or_else(PoisonError::into_inner);
        while *paused {
            paused = self
                .resumed
                .wait(paused)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// A pause of a log's syncs; they resume when it drops.
#[must_use = "syncs resume when the pause drops"]
pub struct SyncPause {
    gate: Arc<SyncGate>,
}

impl Drop for SyncPause {
    fn drop(&mut self) {
        self.gate.set(false);
    }
}

/// How the log is synced, shared by the store (inline syncs) and the
/// flusher thread.
struct Syncer {
    counters: Arc<LogIoCounters>,
    /// Raises the store's [`DurableLog`].
    durable: watch::Sender<Flushed>,
    /// Checked by the flusher before each sync; see
    /// [`LogStore::pause_syncs`].
    gate: Arc<SyncGate>,
    /// Held by whoever syncs: the flusher for a whole batch, or an inline
    /// append (module docs).
    lock: Mutex<()>,
    /// Appends handed to the flusher whose callbacks it has not completed.
    queued: AtomicU64,
}

impl Syncer {
    /// Syncs `files` and records the outcome: the flush counted, and the
    /// durable watermark raised to `last` (or marked failed). Returns the
    /// result for the callbacks.
    fn sync<'a>(
        &self,
        files: impl IntoIterator<Item = &'a Arc<std::fs::File>>,
        last: Option<LogId>,
    ) -> Result<(), String> {
        let result = files.into_iter().try_for_each(|f| f.sync_data());
        self.counters.flushes.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(()) => {
                self.durable.send_if_modified(|f| match f {
                    Flushed::Upto(u) if last > *u => {
                        *u = last;
                        true
                    }
                    _ => false,
                });
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "syncing the raft log failed");
                self.durable.send_replace(Flushed::Failed);
                Err(format!("syncing the raft log: {e}"))
            }
        }
    }
}

/// Completes one append's callback with a sync's `result`.
fn complete(callback: LogFlushed<TypeConfig>, result: &Result<(), String>) {
    callback.log_io_completed(result.clone().map_err(io::Error::other));
}

/// The flusher thread: one `fdatasync` per segment file for every append
/// queued meanwhile, then the durable watermark, then the callbacks, in
/// append order.
fn run_flusher(rx: &mpsc::Receiver<FlushJob>, f: &Syncer) {
    while let Ok(first) = rx.recv() {
        let held = f.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let mut files: Vec<&Arc<std::fs::File>> = Vec::new();
        for file in batch.iter().flat_map(|j| &j.files) {
            if !files.iter().any(|g| Arc::ptr_eq(g, file)) {
                files.push(file);
            }
        }
        f.gate.wait_open();
        let last = batch.iter().filter_map(|j| j.last).max();
        let result = f.sync(files, last);
        let jobs = batch.len() as u64;
        for callback in batch.into_iter().filter_map(|j| j.callback) {
            complete(callback, &result);
        }
        f.queued.fetch_sub(jobs, Ordering::Release);
        drop(held);
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<u64>> {
        let Some((start, end)) = index_range(&range) else {
            return Ok(Vec::new());
        };
        Ok(lock(&self.inner.segments).range(start, end))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let last_purged: Option<LogId> = self.read_state(KEY_LAST_PURGED, ErrorSubject::Logs)?;
        let last_in_tree = lock(&self.inner.segments).last().map(|e| e.log_id);
        // After purging everything (or past the end), the last log id is the
        // purged one.
        let last_log_id = match (last_in_tree, last_purged) {
            (Some(l), Some(p)) => Some(l.max(p)),
            (l, p) => l.or(p),
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let write =
            |e: sled::Error| StorageError::from(StorageIOError::write_vote(AnyError::new(&e)));
        let value = encode(vote, ErrorSubject::Vote)?;
        self.inner.state.insert(KEY_VOTE, value).map_err(write)?;
        let (db, file) = (self.inner.db.clone(), self.inner.sync_file.clone());
        tokio::task::spawn_blocking(move || durable_flush(&db, file.as_deref()))
            .await
            .map_err(|e| sled::Error::Io(io::Error::other(e.to_string())))
            .and_then(|r| r)
            .map_err(write)?;
        self.inner
            .syncer
            .counters
            .flushes
            .fetch_add(1, Ordering::Relaxed);
        *self
            .inner
            .vote
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        self.read_state(KEY_VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError<u64>> {
        // A leader may count its own entries committed before they are
        // durable here; a restart must not find a committed id past its log.
        let capped = self.inner.durable.clamp(committed);
        if capped.is_none() && committed.is_some() {
            // Nothing durable to claim yet: keep the saved id (it only
            // ever rises).
            return Ok(());
        }
        let state = &self.inner.state;
        let res = match capped {
            Some(c) => state.insert(KEY_COMMITTED, encode(&c, ErrorSubject::Store)?),
            None => state.remove(KEY_COMMITTED),
        };
        res.map_err(|e| StorageIOError::<u64>::write(AnyError::new(&e)))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError<u64>> {
        self.read_state(KEY_COMMITTED, ErrorSubject::Store)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let count = entries.len() as u64;
        let last = entries.last().map(|e| e.log_id);
        let early = self.own_commands(&entries);
        let files = lock(&self.inner.segments)
            .append(entries)
            .map_err(|e| write_logs_err(&e))?;
        self.inner
            .syncer
            .counters
            .entries_appended
            .fetch_add(count, Ordering::Relaxed);
        let (queued, now) = if early {
            (None, Some(callback))
        } else {
            match self.sync_inline(&files, last, callback) {
                None => return Ok(()),
                Some(callback) => (Some(callback), None),
            }
        };
        let job = FlushJob {
            files,
            callback: queued,
            last,
        };
        // `flush_tx` is only taken while the last clone drops, so it is
        // always present here; a send fails only if the flusher panicked.
        self.inner.syncer.queued.fetch_add(1, Ordering::AcqRel);
        let rejected = match &self.inner.flush_tx {
            Some(tx) => match tx.send(job) {
                Ok(()) => {
                    if let Some(callback) = now {
                        callback.log_io_completed(Ok(()));
                    }
                    return Ok(());
                }
                Err(mpsc::SendError(job)) => job.callback.or(now),
            },
            None => job.callback.or(now),
        };
        // Fail this append rather than acknowledge it unflushed.
        let msg = "raft log flusher thread is not running";
        if let Some(callback) = rejected {
            callback.log_io_completed(Err(io::Error::other(msg)));
        }
        Err(StorageError::from_io_error(
            ErrorSubject::Logs,
            ErrorVerb::Write,
            io::Error::other(msg),
        ))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        lock(&self.inner.segments)
            .truncate(log_id.index)
            .map_err(|e| write_logs_err(&e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        let value = encode(&log_id, ErrorSubject::Logs)?;
        self.inner
            .state
            .insert(KEY_LAST_PURGED, value)
            .map_err(|e| write_logs_err(&e))?;
        // Durable before any segment goes (see the module docs).
        let (db, file) = (self.inner.db.clone(), self.inner.sync_file.clone());
        tokio::task::spawn_blocking(move || durable_flush(&db, file.as_deref()))
            .await
            .map_err(|e| sled::Error::Io(io::Error::other(e.to_string())))
            .and_then(|r| r)
            .map_err(|e| write_logs_err(&e))?;
        lock(&self.inner.segments)
            .purge(log_id.index)
            .map_err(|e| write_logs_err(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::{LogId, clamp_committed, index_range};

    fn id(term: u64, index: u64) -> LogId {
        LogId::new(openraft::CommittedLeaderId::new(term, 1), index)
    }

    #[test]
    fn the_commit_index_is_capped_at_an_entry_of_the_log() {
        let cases = [
            // Durable past the committed id: unchanged.
            (Some(id(3, 5)), Some(id(3, 7)), Some(id(3, 5))),
            (Some(id(3, 5)), Some(id(4, 6)), Some(id(3, 5))),
            // The leader's own copy lags: capped at it.
            (Some(id(3, 9)), Some(id(3, 7)), Some(id(3, 7))),
            (Some(id(4, 9)), Some(id(3, 7)), Some(id(3, 7))),
            // A synced entry a conflict truncated (older term, higher
            // index) is not in the log: claim nothing rather than name it.
            (Some(id(5, 8)), Some(id(3, 10)), None),
            // Nothing durable or nothing committed: nothing to claim.
            (Some(id(3, 5)), None, None),
            (None, Some(id(3, 5)), None),
        ];
        for (committed, durable, capped) in cases {
            assert_eq!(
                clamp_committed(committed, durable),
                capped,
                "committed {committed:?}, durable {durable:?}"
            );
        }
    }

    #[test]
    fn index_ranges() {
        assert_eq!(index_range(&(3..3)), None);
        #[allow(clippy::reversed_empty_ranges)] // the point of the test
        let reversed = 5..3;
        assert_eq!(index_range(&reversed), None);
        assert_eq!(index_range(&(5..7)), Some((5, Some(7))));
        assert_eq!(index_range(&(5..=7)), Some((5, Some(8))));
        assert_eq!(index_range(&(0..)), Some((0, None)));
        assert_eq!(index_range(&(..)), Some((0, None)));
        assert_eq!(index_range(&(..=u64::MAX)), Some((0, None)));
        assert_eq!(index_range(&(u64::MAX..=u64::MAX)), Some((u64::MAX, None)));
    }
}
