//! The Raft log and the Raft hard state of a metadata replica, in sled.
//!
//! Owns two trees of the replica's sled database:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `raft_log` | log index, `u64` big-endian | bincode of [`Entry`] |
//! | `raft_state` | `format` | `u32` little-endian: format version of both trees |
//! | | `vote` | the last saved [`Vote`] |
//! | | `committed` | the last saved committed [`LogId`] |
//! | | `last_purged` | the [`LogId`] of the last purged entry |
//!
//! Invariants:
//!
//! * **Durability.** A vote is on stable storage before [`save_vote`]
//!   returns, and appended entries are on stable storage before openraft's
//!   append callback is called (DESIGN §4). Entries are readable as soon as
//!   [`append`] returns; the fsync runs on a dedicated flusher thread that
//!   takes every append queued while the previous fsync was running and
//!   covers them with one `flush()` (group commit), then completes their
//!   callbacks in the order they were appended. So the Raft core never
//!   blocks on an fsync, and a burst of appends costs one fsync. sled's
//!   `flush()` alone is not an fsync (it uses `sync_file_range`, which
//!   leaves the drive's cache volatile), so a store opened with
//!   [`LogStore::open_at`] follows each flush with an `fdatasync` of sled's
//!   data file; [`LogStore::open`] (temporary test databases) does not.
//! * **No holes.** Truncate removes `[index, ∞)` and purge removes
//!   `[0, index]`, each as one `sled::Batch`. Purge writes `last_purged`
//!   before it deletes: sled recovers a prefix of the writes made to one
//!   database, so a crash in between leaves extra entries below
//!   `last_purged` (harmless, never read) rather than a gap above it.
//! * Truncate and purge are not flushed themselves: losing one in a crash
//!   only brings back entries that Raft will truncate or purge again, and
//!   the next flushed append or vote makes them durable.
//! * The committed log id is saved without a flush (openraft allows it to
//!   lag; it only lets a restarted replica re-apply entries sooner).
//! * Everything read from disk is decoded with errors, never `unwrap`; an
//!   entry whose index differs from its key is reported as corrupt.
//!
//! [`save_vote`]: RaftLogStorage::save_vote
//! [`append`]: RaftLogStorage::append

// openraft's traits fix the error type (`StorageError`, 224 bytes); the
// private helpers that feed them return it as is rather than box and unbox.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::types::{Entry, LogId, TypeConfig};
use crate::metrics::LogIoCounters;

/// Format version of the `raft_log` and `raft_state` trees.
pub const LOG_FORMAT_VERSION: u32 = 1;

const LOG_TREE: &str = "raft_log";
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
}

/// The Raft log storage of a replica: log entries and hard state in sled.
///
/// Cheap to clone; clones share the trees and the flusher thread, which
/// stops when the last clone is dropped.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    log: sled::Tree,
    state: sled::Tree,
    /// Appends waiting for the flusher's next fsync. `None` only while
    /// dropping.
    flush_tx: Option<mpsc::Sender<LogFlushed<TypeConfig>>>,
    flusher: Option<JoinHandle<()>>,
    counters: Arc<LogIoCounters>,
    /// sled's data file, fdatasync'ed after every flush (see [`durable_flush`]).
    sync_file: Option<Arc<std::fs::File>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends the flusher after it has completed what is
        // queued; joining it releases its handle on the database, so the
        // same directory can be reopened right after the store is dropped.
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

impl LogStore {
    /// Opens (creating if needed) the Raft log trees of `db` and starts the
    /// flusher thread.
    ///
    /// # Errors
    /// A sled failure; [`sled::Error::Unsupported`] when the trees were
    /// written by a newer format, or their format record is unreadable; an
    /// I/O error if the flusher thread cannot be started.
    pub fn open(db: &sled::Db) -> Result<LogStore, sled::Error> {
        Self::open_synced(db, None)
    }

    /// As [`LogStore::open`] for a database at `dir` (sled's directory):
    /// every flush is followed by an `fdatasync` of its data file, which is
    /// what makes an acknowledged append survive power loss.
    ///
    /// # Errors
    /// As [`LogStore::open`]; an I/O error when the data file cannot be
    /// opened.
    pub fn open_at(db: &sled::Db, dir: &std::path::Path) -> Result<LogStore, sled::Error> {
        let file = std::fs::File::open(dir.join("db")).map_err(sled::Error::Io)?;
        Self::open_synced(db, Some(Arc::new(file)))
    }

    fn open_synced(
        db: &sled::Db,
        sync_file: Option<Arc<std::fs::File>>,
    ) -> Result<LogStore, sled::Error> {
        let log = db.open_tree(LOG_TREE)?;
        let state = db.open_tree(STATE_TREE)?;
        match state.get(KEY_FORMAT)? {
            None => {
                state.insert(KEY_FORMAT, &LOG_FORMAT_VERSION.to_le_bytes())?;
            }
            Some(v) => {
                let bytes: [u8; 4] = v.as_ref().try_into().map_err(|_| {
                    sled::Error::Unsupported(format!("unreadable raft log format record {v:?}"))
                })?;
                let v = u32::from_le_bytes(bytes);
                if v > LOG_FORMAT_VERSION {
                    return Err(sled::Error::Unsupported(format!(
                        "raft log format {v} is newer than this build understands \
                         ({LOG_FORMAT_VERSION}); upgrade cairn-meta"
                    )));
                }
            }
        }
        let (flush_tx, flush_rx) = mpsc::channel();
        let flush_db = db.clone();
        let counters = Arc::new(LogIoCounters::default());
        let flush_counters = counters.clone();
        let flush_file = sync_file.clone();
        let flusher = std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || {
                run_flusher(&flush_db, flush_file.as_deref(), &flush_rx, &flush_counters);
            })
            .map_err(sled::Error::Io)?;
        Ok(LogStore {
            inner: Arc::new(Inner {
                db: db.clone(),
                log,
                state,
                flush_tx: Some(flush_tx),
                flusher: Some(flusher),
                counters,
                sync_file,
            }),
        })
    }

    /// Returns the store's live counters (shared: they keep counting).
    pub fn io_counters(&self) -> Arc<LogIoCounters> {
        self.inner.counters.clone()
    }

    /// Returns a reading of the store's counters.
    pub fn stats(&self) -> LogStats {
        let c = &self.inner.counters;
        LogStats {
            entries_appended: c.entries_appended.load(Ordering::Relaxed),
            flushes: c.flushes.load(Ordering::Relaxed),
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

    /// Returns the last log id present in `raft_log`.
    fn last_log_id_in_tree(&self) -> Result<Option<LogId>, StorageError<u64>> {
        match self.inner.log.last().map_err(read_logs_err)? {
            None => Ok(None),
            Some((key, value)) => Ok(Some(decode_entry(&key, &value)?.log_id)),
        }
    }
}

/// Returns the index stored in a `raft_log` key.
fn key_index(key: &[u8]) -> Result<u64, StorageError<u64>> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| {
        StorageIOError::<u64>::read_logs(AnyError::error(format!(
            "raft_log key of {} bytes (want 8): {key:?}",
            key.len()
        )))
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// Decodes an entry and checks that it sits under its own index.
fn decode_entry(key: &[u8], value: &[u8]) -> Result<Entry, StorageError<u64>> {
    let index = key_index(key)?;
    let entry: Entry = bincode::deserialize(value).map_err(|e| {
        StorageIOError::<u64>::read_log_at_index(
            index,
            AnyError::new(&*e).add_context(|| "decoding raft log entry"),
        )
    })?;
    if entry.log_id.index != index {
        return Err(StorageIOError::<u64>::read_log_at_index(
            index,
            AnyError::error(format!(
                "corrupt raft log: entry {} stored under index {index}",
                entry.log_id
            )),
        )
        .into());
    }
    Ok(entry)
}

fn encode<T: Serialize>(
    value: &T,
    subject: ErrorSubject<u64>,
) -> Result<Vec<u8>, StorageError<u64>> {
    bincode::serialize(value)
        .map_err(|e| StorageIOError::new(subject, ErrorVerb::Write, AnyError::new(&*e)).into())
}

fn read_logs_err(e: sled::Error) -> StorageError<u64> {
    StorageIOError::<u64>::read_logs(AnyError::new(&e)).into()
}

fn write_logs_err(e: sled::Error) -> StorageError<u64> {
    StorageIOError::<u64>::write_logs(AnyError::new(&e)).into()
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

/// The flusher thread: one fsync for every append queued meanwhile, then
/// the callbacks, in append order.
fn run_flusher(
    db: &sled::Db,
    sync_file: Option<&std::fs::File>,
    rx: &mpsc::Receiver<LogFlushed<TypeConfig>>,
    counters: &LogIoCounters,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let result = durable_flush(db, sync_file);
        counters.flushes.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &result {
            tracing::error!(error = %e, "flushing the raft log failed");
        }
        for callback in batch {
            callback.log_io_completed(match &result {
                Ok(_) => Ok(()),
                Err(e) => Err(io::Error::other(format!("flushing the raft log: {e}"))),
            });
        }
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
        let bounds = (
            Bound::Included(start.to_be_bytes()),
            match end {
                Some(e) => Bound::Excluded(e.to_be_bytes()),
                None => Bound::Unbounded,
            },
        );
        let mut entries = Vec::new();
        for kv in self.inner.log.range(bounds) {
            let (key, value) = kv.map_err(read_logs_err)?;
            entries.push(decode_entry(&key, &value)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let last_purged: Option<LogId> = self.read_state(KEY_LAST_PURGED, ErrorSubject::Logs)?;
        let last_in_tree = self.last_log_id_in_tree()?;
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
        self.inner.counters.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        self.read_state(KEY_VOTE, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError<u64>> {
        let state = &self.inner.state;
        let res = match committed {
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
        let mut batch = sled::Batch::default();
        let mut count = 0;
        for entry in entries {
            count += 1;
            let value = bincode::serialize(&entry).map_err(|e| {
                StorageIOError::<u64>::write_log_entry(entry.log_id, AnyError::new(&*e))
            })?;
            batch.insert(&entry.log_id.index.to_be_bytes(), value);
        }
        self.inner.log.apply_batch(batch).map_err(write_logs_err)?;
        self.inner
            .counters
            .entries_appended
            .fetch_add(count, Ordering::Relaxed);
        // `flush_tx` is only taken while the last clone drops, so it is
        // always present here; a send fails only if the flusher panicked.
        let rejected = match &self.inner.flush_tx {
            Some(tx) => match tx.send(callback) {
                Ok(()) => return Ok(()),
                Err(mpsc::SendError(callback)) => callback,
            },
            None => callback,
        };
        // Fail this append rather than acknowledge it unflushed.
        let msg = "raft log flusher thread is not running";
        rejected.log_io_completed(Err(io::Error::other(msg)));
        Err(StorageError::from_io_error(
            ErrorSubject::Logs,
            ErrorVerb::Write,
            io::Error::other(msg),
        ))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        let mut batch = sled::Batch::default();
        for kv in self.inner.log.range(log_id.index.to_be_bytes()..) {
            let (key, _) = kv.map_err(read_logs_err)?;
            batch.remove(key);
        }
        self.inner.log.apply_batch(batch).map_err(write_logs_err)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        let value = encode(&log_id, ErrorSubject::Logs)?;
        self.inner
            .state
            .insert(KEY_LAST_PURGED, value)
            .map_err(write_logs_err)?;
        let mut batch = sled::Batch::default();
        for kv in self.inner.log.range(..=log_id.index.to_be_bytes()) {
            let (key, _) = kv.map_err(read_logs_err)?;
            batch.remove(key);
        }
        self.inner.log.apply_batch(batch).map_err(write_logs_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::index_range;

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
