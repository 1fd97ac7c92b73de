//! The key-value layer under the state machine.
//!
//! All state lives in one ordered key space (one sled tree in production,
//! [`SledKv`]; a `BTreeMap` in tests), partitioned by a one-byte prefix:
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `i` | ino | [`Inode`](super::Inode) |
//! | `d` | parent ino, name | child ino, kind byte |
//! | `x` | ino, name | xattr value |
//! | `v` | volume id | [`Volume`](super::Volume) |
//! | `y` | volume id | [`VolumeKeys`](super::VolumeKeys) — encrypted volumes only |
//! | `z` | volume id | [`VolumeCompression`](super::VolumeCompression) — compressed volumes only |
//! | `s` | session id | [`Session`](super::Session) |
//! | `r` | client id, seq | cached [`Response`](super::Response) |
//! | `k` | chunkserver id | [`ChunkserverRecord`](super::ChunkserverRecord) |
//! | `c` | replication, chain id | [`Chain`](super::Chain) |
//! | `g` | object id | [`Garbage`](super::Garbage) |
//! | `o` | ino | () — unlinked inodes still held open |
//! | `w` | chunkserver id | [`Maintenance`](super::Maintenance) |
//! | `l` | ino, session, owner | that owner's [`LockRange`](super::locks::LockRange)s |
//! | `L` | session, ino | () — the session holds locks on the inode |
//! | `S` | volume id, seq | [`Snapshot`](super::Snapshot) |
//! | `P` | volume id, epoch, key | a namespace record's value at snapshot `epoch` (see [`super::snapshots`]) |
//! | `h` | volume id, epoch, object id | [`Garbage`](super::Garbage) a snapshot still holds |
//! | `b` | ino | [`Origin`](super::Origin): a restored file still reading its snapshot (versioned) |
//! | `R` | volume id | [`RestoreJob`](super::RestoreJob): a restore into that volume |
//! | `M` | volume id, source ino | the copy's ino — a restore's hard-link map |
//! | `Q` | volume id, seq, restored volume id | () — a volume restored from that snapshot |
//! | `B` | volume id | (volume id, seq) of the snapshot it was restored from |
//! | `m` | name | counters and cluster facts |
//!
//! Integers are big-endian so keys sort numerically. A mutation runs
//! against a [`Txn`]: reads see the store plus the mutation's own writes,
//! and the writes are committed atomically (through a redo record, see
//! [`SledKv`]) together with the applied log id, so a crash leaves the
//! state before or after the entry, never between. Applying is
//! single-threaded (openraft calls `apply` from one task), so a `Txn` needs
//! no conflict detection.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A failure of the underlying store (disk error, corrupt record). Fatal for
/// the replica: Raft stops it rather than diverge.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A record could not be decoded.
    #[error("corrupt record under key {key:?}: {source}")]
    Decode {
        /// The key.
        key: Vec<u8>,
        /// Why.
        source: bincode::Error,
    },
    /// The data on disk is of a format this build cannot read.
    #[error("{0}")]
    Format(String),
}

/// Key-value pairs in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Ordered key-value storage the state machine reads and writes.
///
/// Implemented by sled trees (production) and `BTreeMap` (tests); both must
/// pass the same tests in this module.
pub trait Kv {
    /// Returns the value under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Returns up to `limit` entries with keys starting with `prefix` and
    /// strictly greater than `after` (or from the first when `None`).
    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<Pairs, StoreError>;
    /// Applies puts (`Some`) and deletes (`None`) atomically.
    fn commit(&self, writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>) -> Result<(), StoreError>;
    /// Returns every entry, in key order.
    fn dump(&self) -> Result<Pairs, StoreError>;
    /// Replaces every entry with `entries`, atomically.
    fn replace_all(&self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), StoreError>;
    /// Completes a commit a crash interrupted, if the store can have one
    /// (called once, before the first read).
    fn recover(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// The store's memory of its chain tables' ids ([`ChainIds`]), if it
    /// keeps one; such a store drops it on every commit that writes a
    /// chain record and on [`Kv::replace_all`].
    fn chain_ids_cache(&self) -> Option<&ChainIds> {
        None
    }
}

/// The ids of each replication's chain table as committed, kept in memory
/// so that a new file's layout ([`Txn::chain_ids`]) costs no scan of its
/// table: meta builds one chain per target, so a large cluster's table has
/// thousands, and every create read them all. A store that keeps one
/// calls [`ChainIds::changed`] after every commit that writes a chain
/// record (`c` prefix) and after replacing its contents; a table read
/// before such a change and kept after it is refused by the generation.
#[derive(Debug, Default)]
pub struct ChainIds {
    state: std::sync::Mutex<ChainIdsState>,
}

#[derive(Debug, Default)]
struct ChainIdsState {
    generation: u64,
    tables: std::collections::HashMap<u32, std::sync::Arc<[u32]>>,
}

impl ChainIds {
    fn state(&self) -> std::sync::MutexGuard<'_, ChainIdsState> {
        // Plain data, each update whole: a panicking holder tore nothing.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The current generation and the table of `replication` if kept.
    fn get(&self, replication: u32) -> (u64, Option<std::sync::Arc<[u32]>>) {
        let s = self.state();
        (s.generation, s.tables.get(&replication).cloned())
    }

    /// Keeps `ids` for `replication`, read at `generation`, unless a
    /// change came since.
    fn keep(&self, generation: u64, replication: u32, ids: std::sync::Arc<[u32]>) {
        let mut s = self.state();
        if s.generation == generation {
            s.tables.insert(replication, ids);
        }
    }

    /// Forgets every table (chain records changed).
    pub fn changed(&self) {
        let mut s = self.state();
        s.generation += 1;
        s.tables.clear();
    }

    /// Forgets every table if `writes` touch a chain record.
    fn committed(&self, writes: &BTreeMap<Vec<u8>, Option<Vec<u8>>>) {
        let chain_records = writes
            .range(vec![CHAIN_PREFIX]..vec![CHAIN_PREFIX + 1])
            .next()
            .is_some();
        if chain_records {
            self.changed();
        }
    }
}

/// The first byte of chain records' keys (see [`key::chain`]).
const CHAIN_PREFIX: u8 = b'c';

/// Key of the redo record of a commit in progress (see [`SledKv`]). The
/// NUL byte sorts it before every prefix of the table above; it exists only
/// while a commit runs, or after a crash during one until the next open.
const REDO_KEY: &[u8] = b"\0redo";

/// The production [`Kv`]: a sled tree whose multi-key commits are atomic
/// through a redo record rather than `sled::Batch`.
///
/// Why not `Tree::apply_batch`: sled 0.34 makes a batch atomic by rolling
/// its I/O buffer twice per batch (`PageCache::pin_log`), and each roll
/// writes the buffer and waits for `sync_file_range` on sled's thread pool.
/// Measured with gdb and strace on a create through the mount: two buffer
/// writes and two synchronous range syncs per replica per log entry, the
/// "sled I/O threads" share of a metadata mutation's CPU, on the apply path
/// of every entry (issue 13).
///
/// Instead a commit of more than one write:
///
/// 1. inserts the whole write set under [`REDO_KEY`] (one key: atomic);
/// 2. applies each put and delete, in key order;
/// 3. removes [`REDO_KEY`].
///
/// sled recovers a prefix of its log after a crash (log sequence numbers
/// are handed out in program order, and recovery stops at the first
/// missing or torn buffer), so a crash leaves either no record and the
/// state before or after the commit, or the record and any prefix of its
/// writes. [`Kv::recover`] then replays the record: puts and deletes of
/// final values are idempotent, so the state becomes the one after the
/// commit, which is what the commit's applied log id (one of its writes)
/// says. Durability is unchanged: applying never flushed sled (the Raft log
/// is the durable record; see `raft::state_machine`). A sled error half-way
/// leaves the record too: sled's errors are I/O failures after which every
/// operation fails, the replica stops (a store error is fatal to Raft), and
/// the next open completes the commit, which the log says was committed.
///
/// Visibility: every `get` and `scan` holds the read side of `lock` and a
/// commit holds the write side, so a reader sees each commit whole or not
/// at all, as sled's batches guaranteed.
#[derive(Debug, Clone)]
pub struct SledKv {
    tree: sled::Tree,
    lock: std::sync::Arc<std::sync::RwLock<()>>,
    chain_ids: std::sync::Arc<ChainIds>,
}

impl SledKv {
    /// Wraps `tree`. Call [`Kv::recover`] (as [`super::FsState::open`]
    /// does) before the first read.
    pub fn new(tree: sled::Tree) -> Self {
        Self {
            tree,
            lock: std::sync::Arc::default(),
            chain_ids: std::sync::Arc::default(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        // The lock guards no data: a panicking holder leaves nothing torn.
        self.lock
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.lock
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies `writes` one key at a time (the redo step).
    fn apply(&self, writes: &BTreeMap<Vec<u8>, Option<Vec<u8>>>) -> Result<(), StoreError> {
        for (k, v) in writes {
            match v {
                Some(v) => self.tree.insert(k.as_slice(), v.as_slice())?,
                None => self.tree.remove(k.as_slice())?,
            };
        }
        Ok(())
    }
}

impl Kv for SledKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let _r = self.read();
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<Pairs, StoreError> {
        let start = match after {
            Some(a) => Bound::Excluded(a.to_vec()),
            None => Bound::Included(prefix.to_vec()),
        };
        let _r = self.read();
        let mut out = Vec::new();
        for kv in self.tree.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
            let (k, v) = kv?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn commit(&self, writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>) -> Result<(), StoreError> {
        let _w = self.write();
        if writes.len() > 1 {
            self.tree.insert(REDO_KEY, encode(&writes))?;
        }
        self.apply(&writes)?;
        if writes.len() > 1 {
            self.tree.remove(REDO_KEY)?;
        }
        self.chain_ids.committed(&writes);
        Ok(())
    }

    fn recover(&self) -> Result<(), StoreError> {
        let _w = self.write();
        let Some(record) = self.tree.get(REDO_KEY)? else {
            return Ok(());
        };
        let writes: BTreeMap<Vec<u8>, Option<Vec<u8>>> = decode(REDO_KEY, &record)?;
        tracing::info!(
            writes = writes.len(),
            "completing a state-machine commit interrupted by a crash"
        );
        self.apply(&writes)?;
        self.tree.remove(REDO_KEY)?;
        self.chain_ids.changed();
        Ok(())
    }

    fn dump(&self) -> Result<Pairs, StoreError> {
        let _r = self.read();
        self.tree
            .iter()
            .filter(|kv| kv.as_ref().map_or(true, |(k, _)| k.as_ref() != REDO_KEY))
            .map(|kv| {
                let (k, v) = kv?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    fn replace_all(&self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), StoreError> {
        // Rare (a snapshot installed): sled's batch is atomic and its cost
        // does not matter here.
        let _w = self.write();
        let mut batch = sled::Batch::default();
        for kv in self.tree.iter() {
            let (k, _) = kv?;
            batch.remove(k);
        }
        for (k, v) in entries {
            batch.insert(k, v);
        }
        self.tree.apply_batch(batch)?;
        self.chain_ids.changed();
        Ok(())
    }

    fn chain_ids_cache(&self) -> Option<&ChainIds> {
        Some(&self.chain_ids)
    }
}

/// An in-memory [`Kv`] for tests.
#[derive(Debug, Default)]
pub struct MemKv {
    map: std::sync::Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    chain_ids: ChainIds,
}

impl MemKv {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        // A poisoned map means a test already panicked; keep its data.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Kv for MemKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map().get(key).cloned())
    }

    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<Pairs, StoreError> {
        let start = match after {
            Some(a) => Bound::Excluded(a.to_vec()),
            None => Bound::Included(prefix.to_vec()),
        };
        Ok(self
            .map()
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn commit(&self, writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>) -> Result<(), StoreError> {
        let mut m = self.map();
        self.chain_ids.committed(&writes);
        for (k, v) in writes {
            match v {
                Some(v) => m.insert(k, v),
                None => m.remove(&k),
            };
        }
        Ok(())
    }

    fn dump(&self) -> Result<Pairs, StoreError> {
        Ok(self
            .map()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn replace_all(&self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), StoreError> {
        let mut m = self.map();
        *m = entries.into_iter().collect();
        self.chain_ids.changed();
        Ok(())
    }

    fn chain_ids_cache(&self) -> Option<&ChainIds> {
        Some(&self.chain_ids)
    }
}

/// A point in a [`Txn`]'s writes to roll back to: the length of its undo
/// log then.
pub struct Savepoint(usize);

/// One entry of a [`Txn`]'s undo log: a key written and what the
/// mutation's writes held for it before (`None`: nothing; `Some(None)`: a
/// delete).
type Undo = (Vec<u8>, Option<Option<Vec<u8>>>);

/// A mutation in progress: reads through to the store, buffers writes.
///
/// Writes of namespace records (`i`, `d`, `x`) of a volume with snapshots
/// keep the record's pre-image first ([`super::snapshots`]), so no
/// operation can forget to.
pub struct Txn<'a, K: Kv + ?Sized> {
    kv: &'a K,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Once a savepoint was taken: for every write since, in order, the
    /// key and what `writes` held for it before (`None`: nothing), so a
    /// savepoint is a length and restoring one undoes only what came
    /// after it. (A savepoint used to be a copy of `writes`: each command
    /// of a batched entry copied every write of the commands before it.)
    undo: Vec<Undo>,
    /// Whether a savepoint was taken (writes before the first one are
    /// never undone, so they are not logged).
    logging: bool,
    /// Whether any snapshot record exists (read at the first need; `None`
    /// again when a write may have changed it).
    snapshots: Option<bool>,
    /// A store failure met while keeping a pre-image; [`Txn::commit`]
    /// returns it instead of committing.
    failed: Option<StoreError>,
}

impl<'a, K: Kv + ?Sized> Txn<'a, K> {
    /// Starts a mutation over `kv`.
    pub fn new(kv: &'a K) -> Self {
        Self {
            kv,
            writes: BTreeMap::new(),
            undo: Vec::new(),
            logging: false,
            snapshots: None,
            failed: None,
        }
    }

    /// Returns the stored value under `key`, ignoring this mutation's
    /// writes.
    pub fn stored(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.kv.get(key)
    }

    /// Returns whether any snapshot record exists, as this mutation sees it.
    pub(crate) fn snapshots_exist(&mut self) -> Result<bool, StoreError> {
        if let Some(b) = self.snapshots {
            return Ok(b);
        }
        let b = !self.scan(key::SNAPSHOTS, None, 1)?.is_empty();
        self.snapshots = Some(b);
        Ok(b)
    }

    /// Buffers one write, keeping a namespace record's pre-image first.
    fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        match key.first() {
            Some(b'S') => self.snapshots = None,
            Some(b'i' | b'd' | b'x' | b'b') if self.failed.is_none() => {
                if let Err(e) = super::snapshots::keep_pre_image(self, &key, value.as_deref()) {
                    self.failed = Some(e);
                }
            }
            _ => {}
        }
        if self.logging {
            let before = self.writes.insert(key.clone(), value);
            self.undo.push((key, before));
        } else {
            self.writes.insert(key, value);
        }
    }

    /// Returns this mutation's buffered write of `key`, if any: the value,
    /// or `None` for a delete.
    pub fn written(&self, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.writes.get(key)
    }

    /// Returns the raw value under `key`, seeing this mutation's writes.
    pub fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.written(key) {
            Some(v) => Ok(v.clone()),
            None => self.kv.get(key),
        }
    }

    /// Returns the decoded record under `key`.
    pub fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StoreError> {
        match self.get_raw(key)? {
            Some(v) => decode(key, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Stores `value` under `key`.
    pub fn put<T: Serialize>(&mut self, key: Vec<u8>, value: &T) {
        self.write(key, Some(encode(value)));
    }

    /// Stores raw bytes under `key`.
    pub fn put_raw(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.write(key, Some(value));
    }

    /// Deletes `key`.
    pub fn delete(&mut self, key: Vec<u8>) {
        self.write(key, None);
    }

    /// Returns up to `limit` live entries under `prefix` after `after`,
    /// merging this mutation's writes over the store's contents.
    pub fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Pairs, StoreError> {
        let mut out: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut cursor = after.map(|a| a.to_vec());
        // Deleted keys in `writes` can hide stored ones, so read in rounds
        // until `limit` live entries are found or the prefix is exhausted.
        loop {
            let batch = self.kv.scan(prefix, cursor.as_deref(), limit.max(16))?;
            let exhausted = batch.len() < limit.max(16);
            for (k, v) in &batch {
                match self.writes.get(k) {
                    Some(Some(w)) => {
                        out.insert(k.clone(), w.clone());
                    }
                    Some(None) => {}
                    None => {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
            cursor = batch.last().map(|(k, _)| k.clone()).or(cursor);
            if exhausted || out.len() >= limit {
                break;
            }
        }
        let lower = match after {
            Some(a) => Bound::Excluded(a.to_vec()),
            None => Bound::Included(prefix.to_vec()),
        };
        for (k, v) in self.writes.range::<Vec<u8>, _>((lower, Bound::Unbounded)) {
            if !k.starts_with(prefix) {
                break;
            }
            if let Some(v) = v {
                out.insert(k.clone(), v.clone());
            }
        }
        Ok(out.into_iter().take(limit).collect())
    }

    /// Discards the buffered writes (a failed mutation changes nothing).
    pub fn rollback(&mut self) {
        self.writes.clear();
        self.undo.clear();
        self.snapshots = None;
    }

    /// The ids of `replication`'s chain table, in order, as this
    /// mutation sees it: from the store's memory ([`ChainIds`]) unless
    /// this mutation wrote chain records of that table itself.
    ///
    /// # Errors
    /// The store failed.
    pub(crate) fn chain_ids(&self, replication: u32) -> Result<std::sync::Arc<[u32]>, StoreError> {
        let prefix = key::chain_prefix(replication);
        let own = self
            .writes
            .range(prefix.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&prefix));
        let cache = self.kv.chain_ids_cache().filter(|_| !own);
        let mut generation = None;
        if let Some(c) = cache {
            let (g, kept) = c.get(replication);
            if let Some(ids) = kept {
                return Ok(ids);
            }
            generation = Some(g);
        }
        let ids: std::sync::Arc<[u32]> = self
            .scan(&prefix, None, usize::MAX)?
            .iter()
            .map(|(k, _)| u32::from_be_bytes(k[5..9].try_into().unwrap_or([0; 4])))
            .collect();
        if let (Some(c), Some(g)) = (cache, generation) {
            c.keep(g, replication, ids.clone());
        }
        Ok(ids)
    }

    /// Returns a savepoint: the buffered writes so far.
    pub fn savepoint(&mut self) -> Savepoint {
        self.logging = true;
        Savepoint(self.undo.len())
    }

    /// Discards every write buffered after `sp` was taken (one command of a
    /// batch failed; the commands before it stand).
    pub fn restore(&mut self, sp: Savepoint) {
        while self.undo.len() > sp.0 {
            let Some((key, before)) = self.undo.pop() else {
                break;
            };
            match before {
                Some(v) => self.writes.insert(key, v),
                None => self.writes.remove(&key),
            };
        }
        self.snapshots = None;
    }

    /// Commits the buffered writes atomically.
    ///
    /// # Errors
    /// The store failed, now or while a pre-image was kept (then nothing
    /// is committed).
    pub fn commit(self) -> Result<(), StoreError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        self.kv.commit(self.writes)
    }
}

/// Encodes a record.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // bincode cannot fail on our types (no maps with non-string keys
    // limits, no unsized sequences); an error here would be a programming
    // error caught by every test.
    bincode::serialize(value).unwrap_or_default()
}

/// Decodes a record stored under `key`.
///
/// # Errors
/// [`StoreError::Decode`] when the bytes are not a `T`.
pub fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    bincode::deserialize(bytes).map_err(|source| StoreError::Decode {
        key: key.to_vec(),
        source,
    })
}

/// Key builders, one per prefix of the table in the module docs.
pub mod key {
    /// `i` + ino.
    pub fn inode(ino: u64) -> Vec<u8> {
        let mut k = vec![b'i'];
        k.extend_from_slice(&ino.to_be_bytes());
        k
    }
    /// `d` + parent: the prefix of a directory's entries.
    pub fn dir_prefix(parent: u64) -> Vec<u8> {
        let mut k = vec![b'd'];
        k.extend_from_slice(&parent.to_be_bytes());
        k
    }
    /// `d` + parent + name.
    pub fn dentry(parent: u64, name: &str) -> Vec<u8> {
        let mut k = dir_prefix(parent);
        k.extend_from_slice(name.as_bytes());
        k
    }
    /// `x` + ino: the prefix of an inode's xattrs.
    pub fn xattr_prefix(ino: u64) -> Vec<u8> {
        let mut k = vec![b'x'];
        k.extend_from_slice(&ino.to_be_bytes());
        k
    }
    /// `x` + ino + name.
    pub fn xattr(ino: u64, name: &str) -> Vec<u8> {
        let mut k = xattr_prefix(ino);
        k.extend_from_slice(name.as_bytes());
        k
    }
    /// `q` + ino: a directory's own quota ([`super::super::DirQuota`]).
    pub fn dir_quota(ino: u64) -> Vec<u8> {
        let mut k = vec![b'q'];
        k.extend_from_slice(&ino.to_be_bytes());
        k
    }
    /// `u` + ino: the quota directory the inode is charged to (its ino,
    /// u64 big-endian); absent for inodes under no directory quota.
    pub fn quota_member(ino: u64) -> Vec<u8> {
        let mut k = vec![b'u'];
        k.extend_from_slice(&ino.to_be_bytes());
        k
    }
    /// `v` + volume id.
    pub fn volume(id: u64) -> Vec<u8> {
        let mut k = vec![b'v'];
        k.extend_from_slice(&id.to_be_bytes());
        k
    }
    /// `y` + volume id: an encrypted volume's keys.
    pub fn volume_keys(id: u64) -> Vec<u8> {
        let mut k = vec![b'y'];
        k.extend_from_slice(&id.to_be_bytes());
        k
    }
    /// `z` + volume id: a compressed volume's algorithm, unit and counters.
    pub fn volume_compression(id: u64) -> Vec<u8> {
        let mut k = vec![b'z'];
        k.extend_from_slice(&id.to_be_bytes());
        k
    }
    /// `s` + session id.
    pub fn session(id: u64) -> Vec<u8> {
        let mut k = vec![b's'];
        k.extend_from_slice(&id.to_be_bytes());
        k
    }
    /// `A` + client: the highest `ack_below` the client has sent, below
    /// which every seq of it is stale (its reply may be forgotten).
    pub fn acked(client: u64) -> Vec<u8> {
        let mut k = vec![b'A'];
        k.extend_from_slice(&client.to_be_bytes());
        k
    }
    /// `r` + client: the prefix of a client's cached replies.
    pub fn reply_prefix(client: u64) -> Vec<u8> {
        let mut k = vec![b'r'];
        k.extend_from_slice(&client.to_be_bytes());
        k
    }
    /// `r` + client + seq.
    pub fn reply(client: u64, seq: u64) -> Vec<u8> {
        let mut k = reply_prefix(client);
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }
    /// `k` + chunkserver id.
    pub fn chunkserver(id: u64) -> Vec<u8> {
        let mut k = vec![b'k'];
        k.extend_from_slice(&id.to_be_bytes());
        k
    }
    /// `c` + replication: the prefix of one chain table.
    pub fn chain_prefix(replication: u32) -> Vec<u8> {
        let mut k = vec![b'c'];
        k.extend_from_slice(&replication.to_be_bytes());
        k
    }
    /// `c` + replication + chain id.
    pub fn chain(replication: u32, id: u32) -> Vec<u8> {
        let mut k = chain_prefix(replication);
        k.extend_from_slice(&id.to_be_bytes());
        k
    }
    /// `g` + object id.
    pub fn garbage(object: u64) -> Vec<u8> {
        let mut k = vec![b'g'];
        k.extend_from_slice(&object.to_be_bytes());
        k
    }
    /// `e` + object id: how far data of the object may reach beyond its
    /// file's recorded size (u64 BE; `u64::MAX`: unknown). See
    /// `session::mark_extent`.
    pub fn extent(object: u64) -> Vec<u8> {
        let mut k = vec![b'e'];
        k.extend_from_slice(&object.to_be_bytes());
        k
    }
    /// `o` + ino.
    pub fn orphan(ino: u64) -> Vec<u8> {
        let mut k = vec![b'o'];
        k.extend_from_slice(&ino.to_be_bytes());
        k
    }
    /// `w` + chunkserver id: its maintenance window.
    pub fn maintenance(chunkserver: u64) -> Vec<u8> {
        let mut k = vec![b'w'];
        k.extend_from_slice(&chunkserver.to_be_bytes());
        k
    }
    /// The prefix of every snapshot record.
    pub const SNAPSHOTS: &[u8] = b"S";
    /// `S` + volume id: the prefix of a volume's snapshot records.
    pub fn snapshot_prefix(volume: u64) -> Vec<u8> {
        let mut k = vec![b'S'];
        k.extend_from_slice(&volume.to_be_bytes());
        k
    }
    /// `S` + volume id + seq: a snapshot record.
    pub fn snapshot(volume: u64, seq: u64) -> Vec<u8> {
        let mut k = snapshot_prefix(volume);
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }
    /// `P` + volume id + epoch: the prefix of the pre-images kept for
    /// snapshot `epoch`.
    pub fn pre_image_prefix(volume: u64, epoch: u64) -> Vec<u8> {
        let mut k = vec![b'P'];
        k.extend_from_slice(&volume.to_be_bytes());
        k.extend_from_slice(&epoch.to_be_bytes());
        k
    }
    /// `P` + volume id + epoch + key: `key`'s value at snapshot `epoch`.
    pub fn pre_image(volume: u64, epoch: u64, key: &[u8]) -> Vec<u8> {
        let mut k = pre_image_prefix(volume, epoch);
        k.extend_from_slice(key);
        k
    }
    /// Length of a [`pre_image_prefix`].
    pub const PRE_IMAGE_PREFIX_LEN: usize = 17;
    /// `h` + volume id + epoch: the prefix of objects pinned by snapshot
    /// `epoch` (and maybe older ones).
    pub fn pinned_prefix(volume: u64, epoch: u64) -> Vec<u8> {
        let mut k = vec![b'h'];
        k.extend_from_slice(&volume.to_be_bytes());
        k.extend_from_slice(&epoch.to_be_bytes());
        k
    }
    /// `h` + volume id + epoch + object id.
    pub fn pinned(volume: u64, epoch: u64, object: u64) -> Vec<u8> {
        let mut k = pinned_prefix(volume, epoch);
        k.extend_from_slice(&object.to_be_bytes());
        k
    }
    /// `b` + ino: a restored file's [`Origin`](super::super::Origin)
    /// (versioned by snapshots like `i`, `d` and `x`).
    pub fn origin(ino: u64) -> Vec<u8> {
        let mut k = vec![b'b'];
        k.extend_from_slice(&ino.to_be_bytes());
        k
    }
    /// The prefix of every restore job.
    pub const RESTORES: &[u8] = b"R";
    /// `R` + volume id: the restore into that volume.
    pub fn restore(volume: u64) -> Vec<u8> {
        let mut k = vec![b'R'];
        k.extend_from_slice(&volume.to_be_bytes());
        k
    }
    /// `M` + volume id: the prefix of a restore's hard-link map.
    pub fn restore_map_prefix(volume: u64) -> Vec<u8> {
        let mut k = vec![b'M'];
        k.extend_from_slice(&volume.to_be_bytes());
        k
    }
    /// `M` + volume id + source ino: its copy's ino (u64).
    pub fn restore_map(volume: u64, ino: u64) -> Vec<u8> {
        let mut k = restore_map_prefix(volume);
        k.extend_from_slice(&ino.to_be_bytes());
        k
    }
    /// `Q` + volume id + seq: the prefix of the volumes restored from that
    /// snapshot.
    pub fn dependents_prefix(volume: u64, seq: u64) -> Vec<u8> {
        let mut k = vec![b'Q'];
        k.extend_from_slice(&volume.to_be_bytes());
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }
    /// `Q` + volume id + seq + restored volume id.
    pub fn dependent(volume: u64, seq: u64, restored: u64) -> Vec<u8> {
        let mut k = dependents_prefix(volume, seq);
        k.extend_from_slice(&restored.to_be_bytes());
        k
    }
    /// `B` + volume id: the (volume, seq) of the snapshot a volume was
    /// restored from.
    pub fn base(volume: u64) -> Vec<u8> {
        let mut k = vec![b'B'];
        k.extend_from_slice(&volume.to_be_bytes());
        k
    }
    /// `m` + name.
    pub fn meta(name: &str) -> Vec<u8> {
        let mut k = vec![b'm'];
        k.extend_from_slice(name.as_bytes());
        k
    }
    /// Returns the u64 in the 8 bytes after the one-byte prefix of `key`.
    pub fn id_of(key: &[u8]) -> u64 {
        let mut b = [0u8; 8];
        if key.len() >= 9 {
            b.copy_from_slice(&key[1..9]);
        }
        u64::from_be_bytes(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens the sled database at `path` again. sled releases a dropped
    /// handle's file lock only when its background threads have exited,
    /// which can be a moment after the drop on a busy machine (the suite
    /// once failed here with "could not acquire lock").
    fn reopen(path: &std::path::Path) -> sled::Db {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match sled::Config::new().path(path).open() {
                Ok(db) => return db,
                Err(e)
                    if std::time::Instant::now() < deadline
                        && e.to_string().contains("could not acquire lock") =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("opening {}: {e}", path.display()),
            }
        }
    }

    fn exercise(kv: &dyn Kv) {
        let mut t = Txn::new(kv);
        t.put_raw(b"da1".to_vec(), b"1".to_vec());
        t.put_raw(b"da2".to_vec(), b"2".to_vec());
        t.put_raw(b"db1".to_vec(), b"x".to_vec());
        t.commit().unwrap();

        let mut t = Txn::new(kv);
        t.delete(b"da1".to_vec());
        t.put_raw(b"da3".to_vec(), b"3".to_vec());
        // Reads see the mutation's own writes.
        assert_eq!(t.get_raw(b"da1").unwrap(), None);
        let got: Vec<_> = t.scan(b"da", None, 10).unwrap();
        assert_eq!(
            got,
            vec![
                (b"da2".to_vec(), b"2".to_vec()),
                (b"da3".to_vec(), b"3".to_vec())
            ]
        );
        assert_eq!(t.scan(b"da", Some(b"da2"), 10).unwrap().len(), 1);
        assert_eq!(t.scan(b"da", None, 1).unwrap().len(), 1);
        // Back to a savepoint, then rolled back: nothing changed.
        let sp = t.savepoint();
        t.put_raw(b"dz".to_vec(), b"z".to_vec());
        t.restore(sp);
        assert_eq!(t.get_raw(b"dz").unwrap(), None);
        assert_eq!(t.get_raw(b"da3").unwrap(), Some(b"3".to_vec()));
        t.rollback();
        t.commit().unwrap();
        assert_eq!(kv.get(b"da1").unwrap(), Some(b"1".to_vec()));
        assert_eq!(kv.get(b"da3").unwrap(), None);
        assert_eq!(kv.scan(b"d", None, 100).unwrap().len(), 3);
        assert_eq!(kv.dump().unwrap().len(), 3);
        kv.replace_all(vec![(b"z".to_vec(), b"z".to_vec())])
            .unwrap();
        assert_eq!(kv.dump().unwrap(), vec![(b"z".to_vec(), b"z".to_vec())]);
    }

    /// The chain tables' ids a create reads: what the store holds, the
    /// mutation's own writes first, never a table from before a change.
    fn exercise_chain_ids(kv: &dyn Kv) {
        let ids = |kv: &dyn Kv, r: u32| Txn::new(kv).chain_ids(r).unwrap().to_vec();
        let put = |kv: &dyn Kv, r: u32, id: u32| {
            let mut t = Txn::new(kv);
            t.put_raw(key::chain(r, id), b"chain".to_vec());
            t.commit().unwrap();
        };
        assert!(ids(kv, 3).is_empty());
        put(kv, 3, 2);
        put(kv, 3, 1);
        put(kv, 1, 9);
        assert_eq!(ids(kv, 3), vec![1, 2]);
        assert_eq!(ids(kv, 1), vec![9]);
        // Kept: a commit of other records changes nothing.
        let mut t = Txn::new(kv);
        t.put_raw(b"i1".to_vec(), b"inode".to_vec());
        t.commit().unwrap();
        assert_eq!(ids(kv, 3), vec![1, 2]);
        // A chain added or removed is seen by the next mutation.
        put(kv, 3, 7);
        assert_eq!(ids(kv, 3), vec![1, 2, 7]);
        let mut t = Txn::new(kv);
        t.delete(key::chain(3, 1));
        // The mutation's own writes, before they are committed.
        assert_eq!(t.chain_ids(3).unwrap().to_vec(), vec![2, 7]);
        assert_eq!(ids(kv, 3), vec![1, 2, 7]);
        t.commit().unwrap();
        assert_eq!(ids(kv, 3), vec![2, 7]);
        // Replaced contents (a snapshot installed) are read anew.
        kv.replace_all(vec![(key::chain(3, 5), b"chain".to_vec())])
            .unwrap();
        assert_eq!(ids(kv, 3), vec![5]);
        assert!(ids(kv, 1).is_empty());
    }

    /// Savepoints nest: restoring one brings back exactly the buffered
    /// writes it was taken at (overwritten values, deletes and keys made
    /// after it alike), as a batch's failed command needs.
    #[test]
    fn savepoints_restore_the_writes_they_were_taken_at() {
        let kv = MemKv::default();
        let mut t = Txn::new(&kv);
        t.put_raw(b"da".to_vec(), b"1".to_vec());
        t.delete(b"db".to_vec());
        let at_a = t.writes.clone();
        let a = t.savepoint();
        t.put_raw(b"da".to_vec(), b"2".to_vec());
        t.put_raw(b"db".to_vec(), b"2".to_vec());
        t.put_raw(b"dc".to_vec(), b"2".to_vec());
        let at_b = t.writes.clone();
        let b = t.savepoint();
        t.delete(b"da".to_vec());
        t.put_raw(b"dc".to_vec(), b"3".to_vec());
        t.put_raw(b"dd".to_vec(), b"3".to_vec());
        t.restore(b);
        assert_eq!(t.writes, at_b);
        let c = t.savepoint();
        t.put_raw(b"de".to_vec(), b"4".to_vec());
        t.restore(c);
        assert_eq!(t.writes, at_b);
        t.restore(a);
        assert_eq!(t.writes, at_a);
        t.commit().unwrap();
        assert_eq!(kv.get(b"da").unwrap(), Some(b"1".to_vec()));
        assert_eq!(kv.get(b"dc").unwrap(), None);
    }

    /// Counts scans of chain records.
    #[derive(Default)]
    struct CountingKv {
        inner: MemKv,
        chain_scans: std::sync::atomic::AtomicUsize,
    }

    impl Kv for CountingKv {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }
        fn scan(
            &self,
            prefix: &[u8],
            after: Option<&[u8]>,
            limit: usize,
        ) -> Result<Pairs, StoreError> {
            if prefix.first() == Some(&CHAIN_PREFIX) {
                self.chain_scans
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            self.inner.scan(prefix, after, limit)
        }
        fn commit(&self, writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>) -> Result<(), StoreError> {
            self.inner.commit(writes)
        }
        fn dump(&self) -> Result<Pairs, StoreError> {
            self.inner.dump()
        }
        fn replace_all(&self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), StoreError> {
            self.inner.replace_all(entries)
        }
        fn chain_ids_cache(&self) -> Option<&ChainIds> {
            self.inner.chain_ids_cache()
        }
    }

    /// A chain table is read from the store once, not once per create
    /// (each read was a scan of one record per target of the cluster).
    #[test]
    fn chain_ids_are_read_once_until_a_chain_changes() {
        let kv = CountingKv::default();
        let mut t = Txn::new(&kv);
        for id in 0..100 {
            t.put_raw(key::chain(3, id), b"chain".to_vec());
        }
        t.commit().unwrap();
        let scans = || kv.chain_scans.load(std::sync::atomic::Ordering::Relaxed);
        for _ in 0..50 {
            let mut t = Txn::new(&kv);
            assert_eq!(t.chain_ids(3).unwrap().len(), 100);
            t.put_raw(b"i1".to_vec(), b"inode".to_vec());
            t.commit().unwrap();
        }
        assert_eq!(scans(), 1);
        let mut t = Txn::new(&kv);
        t.put_raw(key::chain(3, 100), b"chain".to_vec());
        t.commit().unwrap();
        assert_eq!(Txn::new(&kv).chain_ids(3).unwrap().len(), 101);
        assert_eq!(scans(), 2);
    }

    #[test]
    fn mem_kv_conforms() {
        exercise(&MemKv::default());
        exercise_chain_ids(&MemKv::default());
    }

    #[test]
    fn sled_kv_conforms() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let kv = SledKv::new(db.open_tree("t").unwrap());
        exercise(&kv);
        // A finished commit leaves no redo record behind.
        assert_eq!(kv.tree.get(REDO_KEY).unwrap(), None);
        exercise_chain_ids(&SledKv::new(db.open_tree("u").unwrap()));
    }

    /// The states a crash can leave a commit in: the redo record and any
    /// prefix of its writes. Opening completes the commit; without the
    /// record nothing is replayed.
    #[test]
    fn sled_kv_completes_an_interrupted_commit() {
        let dir = tempfile::tempdir().unwrap();
        let writes: BTreeMap<Vec<u8>, Option<Vec<u8>>> = [
            (b"da1".to_vec(), None),
            (b"da2".to_vec(), Some(b"new".to_vec())),
            (b"mapplied".to_vec(), Some(b"7".to_vec())),
        ]
        .into_iter()
        .collect();
        for done in 0..=writes.len() {
            let path = dir.path().join(format!("db{done}"));
            {
                let db = sled::Config::new().path(&path).open().unwrap();
                let tree = db.open_tree("t").unwrap();
                tree.insert(b"da1", b"old").unwrap();
                tree.insert(b"da2", b"old").unwrap();
                tree.insert(REDO_KEY, encode(&writes)).unwrap();
                for (k, v) in writes.iter().take(done) {
                    match v {
                        Some(v) => tree.insert(k.as_slice(), v.as_slice()).unwrap(),
                        None => tree.remove(k.as_slice()).unwrap(),
                    };
                }
                db.flush().unwrap();
            }
            let db = reopen(&path);
            let kv = SledKv::new(db.open_tree("t").unwrap());
            // The record never shows through a read.
            assert!(kv.dump().unwrap().iter().all(|(k, _)| k != REDO_KEY));
            kv.recover().unwrap();
            assert_eq!(
                kv.dump().unwrap(),
                vec![
                    (b"da2".to_vec(), b"new".to_vec()),
                    (b"mapplied".to_vec(), b"7".to_vec())
                ],
                "after {done} of the writes"
            );
            assert_eq!(kv.tree.get(REDO_KEY).unwrap(), None);
            // Recovering again changes nothing.
            kv.recover().unwrap();
            assert_eq!(kv.dump().unwrap().len(), 2);
        }
    }

    /// A reader never sees half a commit.
    #[test]
    fn sled_kv_commits_are_seen_whole() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let kv = std::sync::Arc::new(SledKv::new(db.open_tree("t").unwrap()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (kv, stop) = (kv.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let got = kv.scan(b"p", None, 100).unwrap();
                    // Every commit writes the same value under 20 keys.
                    assert!(got.is_empty() || got.len() == 20, "{got:?}");
                    assert!(got.windows(2).all(|w| w[0].1 == w[1].1), "{got:?}");
                    seen += 1;
                }
                seen
            })
        };
        for round in 0..300u32 {
            let writes = (0..20u8)
                .map(|i| (vec![b'p', i], Some(round.to_be_bytes().to_vec())))
                .collect();
            kv.commit(writes).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    }

    #[test]
    fn scan_skips_many_deleted_keys() {
        let kv = MemKv::default();
        let mut t = Txn::new(&kv);
        for i in 0..100u8 {
            t.put_raw(vec![b'p', i], vec![i]);
        }
        t.commit().unwrap();
        let mut t = Txn::new(&kv);
        for i in 0..99u8 {
            t.delete(vec![b'p', i]);
        }
        assert_eq!(
            t.scan(b"p", None, 1).unwrap(),
            vec![(vec![b'p', 99], vec![99])]
        );
    }
}
