//! The openraft state machine of a metadata replica: [`FsState`] plus the
//! latest Raft snapshot, in sled.
//!
//! Owns the `raft_snapshot` tree of the replica's sled database; the state
//! itself lives in the tree [`FsState`] was opened over (same database):
//!
//! | key | value |
//! |---|---|
//! | `current` | `u32` LE format, `u32` LE meta length, bincode of [`SnapshotMeta`], then the snapshot bytes ([`FsState::export`]) |
//! | `counter` | `u64` BE: the last snapshot counter used in a snapshot id |
//!
//! Invariants:
//!
//! * Applying is not flushed: an applied entry stays in the Raft log until
//!   a snapshot covers it, so a crash only makes the replica re-apply
//!   entries from its log (each entry is one atomic batch together with
//!   the applied log id, see [`crate::fs::store`]).
//! * A snapshot is a consistent view: exporting holds the apply lock, so
//!   no entry is applied half-way through an export, and the snapshot's
//!   `last_log_id` and membership are read under the same lock. (sled 0.34
//!   has no point-in-time read view, so applying waits for an export; this
//!   costs a pause of one export per `snapshot_every` entries.)
//! * **Before a built snapshot is handed to openraft (which then purges the
//!   log up to it), the database is flushed**, after the export and the
//!   write of the snapshot record. So the state the snapshot covers, and the
//!   snapshot itself, are durable before any log entry it replaces can be
//!   removed. An installed snapshot is flushed before `install_snapshot`
//!   returns.
//! * The stored snapshot never moves backwards: a snapshot is recorded
//!   only if its `last_log_id` is at least the recorded one's.
//! * Snapshot ids are `<term>-<index>-<counter>` (`none-<counter>` for an
//!   empty state); the counter is persisted, so ids stay unique across
//!   restarts.

// openraft's traits fix the error type (`StorageError`, 224 bytes); the
// private helpers that feed them return it as is rather than box and unbox.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageError, StorageIOError,
};

use super::log_store::DurableLog;
use super::types::{Entry, LogId, SnapshotMeta, StoredMembership, TypeConfig};
use crate::fs::{FsState, Response, StoreError};

/// Format version of the `raft_snapshot` tree's records.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;

const SNAPSHOT_TREE: &str = "raft_snapshot";
const KEY_CURRENT: &[u8] = b"current";
const KEY_COUNTER: &[u8] = b"counter";

/// The Raft state machine of a replica: the metadata state ([`FsState`])
/// and its latest snapshot.
///
/// Cheap to clone; clones share everything (openraft builds snapshots on a
/// clone while the original keeps applying).
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    fs: Arc<FsState>,
    snapshots: sled::Tree,
    /// Held while applying a batch, exporting, or importing: gives a
    /// snapshot a consistent view and keeps snapshot records in order.
    apply_lock: Arc<tokio::sync::Mutex<()>>,
    counter: AtomicU64,
    /// When set, a batch is applied only once its last entry is durable in
    /// the local log (see [`StateMachineStore::apply_durable_only`]).
    durable: OnceLock<DurableLog>,
}

impl std::fmt::Debug for StateMachineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore").finish_non_exhaustive()
    }
}

impl StateMachineStore {
    /// Opens the state machine over `fs`, whose tree must belong to `db`
    /// (the database this store flushes), and the `raft_snapshot` tree of
    /// `db`.
    ///
    /// # Errors
    /// A sled failure; [`sled::Error::Unsupported`] for an unreadable
    /// snapshot counter.
    pub fn open(db: &sled::Db, fs: Arc<FsState>) -> Result<Self, sled::Error> {
        let snapshots = db.open_tree(SNAPSHOT_TREE)?;
        let counter = match snapshots.get(KEY_COUNTER)? {
            None => 0,
            Some(v) => {
                let bytes: [u8; 8] = v.as_ref().try_into().map_err(|_| {
                    sled::Error::Unsupported(format!("unreadable snapshot counter {v:?}"))
                })?;
                u64::from_be_bytes(bytes)
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                db: db.clone(),
                fs,
                snapshots,
                apply_lock: Arc::new(tokio::sync::Mutex::new(())),
                counter: AtomicU64::new(counter),
                durable: OnceLock::new(),
            }),
        })
    }

    /// Applies an entry only once the local log has it on stable storage
    /// (`durable`). A leader whose log acknowledges its own entries before
    /// their sync ([`super::replicate_during_sync`])
    /// may count one committed before it is durable here; waiting keeps
    /// every effect of it (answers to clients, reads) behind a majority of
    /// durable copies. Entries a follower applies are durable already.
    pub fn apply_durable_only(&self, durable: DurableLog) {
        // Set once, when the node is wired; a second call changes nothing.
        let _ = self.inner.durable.set(durable);
    }

    /// Returns the metadata state this state machine applies to.
    pub fn fs(&self) -> &Arc<FsState> {
        &self.inner.fs
    }

    async fn flush(&self, meta: &SnapshotMeta) -> Result<(), StorageError<u64>> {
        self.inner.db.flush_async().await.map_err(|e| {
            StorageIOError::<u64>::write_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        Ok(())
    }
}

impl Inner {
    /// Exports the state and records it as the current snapshot. Runs on a
    /// blocking thread with the apply lock held.
    fn build_locked(&self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let read = |e: StoreError| {
            StorageError::from(StorageIOError::<u64>::read_state_machine(AnyError::new(&e)))
        };
        let (last_log_id, last_membership) = self.fs.applied_state().map_err(read)?;
        let data = self.fs.export().map_err(read)?;
        let counter = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let snapshot_id = match &last_log_id {
            Some(l) => format!("{}-{}-{counter}", l.leader_id.term, l.index),
            None => format!("none-{counter}"),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        self.record(&meta, &data, counter)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }

    /// Imports an installed snapshot and records it. Runs on a blocking
    /// thread with the apply lock held.
    fn install_locked(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError<u64>> {
        let write = |e: AnyError| {
            StorageError::from(StorageIOError::<u64>::write_snapshot(
                Some(meta.signature()),
                e,
            ))
        };
        self.fs.import(data).map_err(|e| write(AnyError::new(&e)))?;
        let applied = self
            .fs
            .applied_state()
            .map_err(|e| write(AnyError::new(&e)))?;
        if applied != (meta.last_log_id, meta.last_membership.clone()) {
            return Err(write(AnyError::error(format!(
                "installed snapshot {} holds state applied up to {:?} with membership {}",
                meta.snapshot_id, applied.0, applied.1
            ))));
        }
        let counter = self.counter.load(Ordering::Relaxed);
        self.record(meta, data, counter)
    }

    /// Records `meta` and `data` as the current snapshot unless a newer one
    /// is recorded.
    fn record(
        &self,
        meta: &SnapshotMeta,
        data: &[u8],
        counter: u64,
    ) -> Result<(), StorageError<u64>> {
        let write = |e: AnyError| {
            StorageError::from(StorageIOError::<u64>::write_snapshot(
                Some(meta.signature()),
                e,
            ))
        };
        if let Some(value) = self.current_record()? {
            match decode_record(&value) {
                Ok((current, _)) if current.last_log_id > meta.last_log_id => return Ok(()),
                Ok(_) => {}
                // A record this build cannot read is replaced, not kept.
                Err(msg) => tracing::warn!(error = %msg, "replacing unreadable snapshot record"),
            }
        }
        let meta_bytes = bincode::serialize(meta).map_err(|e| write(AnyError::new(&*e)))?;
        let meta_len = u32::try_from(meta_bytes.len())
            .map_err(|_| write(AnyError::error("snapshot meta larger than 4 GiB")))?;
        let mut value = Vec::with_capacity(8 + meta_bytes.len() + data.len());
        value.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
        value.extend_from_slice(&meta_len.to_le_bytes());
        value.extend_from_slice(&meta_bytes);
        value.extend_from_slice(data);
        let mut batch = sled::Batch::default();
        batch.insert(KEY_CURRENT, value);
        batch.insert(KEY_COUNTER, &counter.to_be_bytes());
        self.snapshots
            .apply_batch(batch)
            .map_err(|e| write(AnyError::new(&e)))?;
        Ok(())
    }

    /// Returns the raw `current` record.
    fn current_record(&self) -> Result<Option<sled::IVec>, StorageError<u64>> {
        self.snapshots
            .get(KEY_CURRENT)
            .map_err(|e| StorageIOError::<u64>::read_snapshot(None, AnyError::new(&e)).into())
    }

    /// Returns the recorded snapshot.
    fn current(&self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let Some(value) = self.current_record()? else {
            return Ok(None);
        };
        let (meta, data) = decode_record(&value)
            .map_err(|msg| StorageIOError::<u64>::read_snapshot(None, AnyError::error(msg)))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data.to_vec())),
        }))
    }
}

/// Splits a `current` record into its meta and its data.
fn decode_record(value: &[u8]) -> Result<(SnapshotMeta, &[u8]), String> {
    let word = |at: usize| -> Result<u32, String> {
        value
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| format!("snapshot record of {} bytes is truncated", value.len()))
    };
    let format = word(0)?;
    if format > SNAPSHOT_FORMAT_VERSION {
        return Err(format!(
            "snapshot record format {format} is newer than this build understands \
             ({SNAPSHOT_FORMAT_VERSION})"
        ));
    }
    let meta_len = word(4)? as usize;
    let meta_bytes = value
        .get(8..8 + meta_len)
        .ok_or_else(|| format!("snapshot record of {} bytes is truncated", value.len()))?;
    let meta =
        bincode::deserialize(meta_bytes).map_err(|e| format!("corrupt snapshot meta: {e}"))?;
    Ok((meta, &value[8 + meta_len..]))
}

fn join_error(e: tokio::task::JoinError) -> StorageError<u64> {
    StorageIOError::<u64>::new(
        ErrorSubject::StateMachine,
        ErrorVerb::Write,
        AnyError::new(&e),
    )
    .into()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let guard = self.inner.apply_lock.clone().lock_owned().await;
        let inner = self.inner.clone();
        let snapshot = tokio::task::spawn_blocking(move || {
            let snapshot = inner.build_locked();
            drop(guard);
            snapshot
        })
        .await
        .map_err(join_error)??;
        self.flush(&snapshot.meta).await?;
        tracing::info!(snapshot = %snapshot.meta, "built raft snapshot");
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership), StorageError<u64>> {
        self.inner
            .fs
            .applied_state()
            .map_err(|e| StorageIOError::<u64>::read_state_machine(AnyError::new(&e)).into())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let (Some(durable), Some(last)) = (self.inner.durable.get(), entries.last()) {
            durable
                .wait_for(last.log_id)
                .await
                .map_err(|e| StorageIOError::<u64>::apply(last.log_id, AnyError::new(&e)))?;
        }
        let _guard = self.inner.apply_lock.lock().await;
        let mut responses = Vec::new();
        for entry in entries {
            let response = self
                .inner
                .fs
                .apply(&entry.log_id, &entry.payload)
                .map_err(|e| StorageIOError::<u64>::apply(entry.log_id, AnyError::new(&e)))?;
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot.into_inner();
        let guard = self.inner.apply_lock.clone().lock_owned().await;
        let inner = self.inner.clone();
        let owned_meta = meta.clone();
        tokio::task::spawn_blocking(move || {
            let res = inner.install_locked(&owned_meta, &data);
            drop(guard);
            res
        })
        .await
        .map_err(join_error)??;
        self.flush(meta).await?;
        tracing::info!(snapshot = %meta, "installed raft snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        self.inner.current()
    }
}

#[cfg(test)]
mod tests {
    use super::decode_record;

    #[test]
    fn truncated_records_are_errors() {
        assert!(decode_record(&[]).is_err());
        assert!(decode_record(&[1, 0, 0, 0]).is_err());
        assert!(decode_record(&[1, 0, 0, 0, 200, 0, 0, 0, 1, 2]).is_err());
        assert!(decode_record(&[9, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
