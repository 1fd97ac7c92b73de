//! The key-value layer under the state machine.
//!
//! All state lives in one ordered key space (one sled tree in production,
//! a `BTreeMap` in tests), partitioned by a one-byte prefix:
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
//! | `m` | name | counters and cluster facts |
//!
//! Integers are big-endian so keys sort numerically. A mutation runs
//! against a [`Txn`]: reads see the store plus the mutation's own writes,
//! and the writes are committed as one atomic batch together with the
//! applied log id, so a crash leaves the state before or after the entry,
//! never between. Applying is single-threaded (openraft calls `apply` from
//! one task), so a `Txn` needs no conflict detection.

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
}

impl Kv for sled::Tree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(sled::Tree::get(self, key)?.map(|v| v.to_vec()))
    }

    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<Pairs, StoreError> {
        let start = match after {
            Some(a) => Bound::Excluded(a.to_vec()),
            None => Bound::Included(prefix.to_vec()),
        };
        let mut out = Vec::new();
        for kv in self.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
            let (k, v) = kv?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn commit(&self, writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (k, v) in writes {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        self.apply_batch(batch)?;
        Ok(())
    }

    fn dump(&self) -> Result<Pairs, StoreError> {
        self.iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    fn replace_all(&self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for kv in self.iter() {
            let (k, _) = kv?;
            batch.remove(k);
        }
        for (k, v) in entries {
            batch.insert(k, v);
        }
        self.apply_batch(batch)?;
        Ok(())
    }
}

/// An in-memory [`Kv`] for tests.
#[derive(Debug, Default)]
pub struct MemKv(std::sync::Mutex<BTreeMap<Vec<u8>, Vec<u8>>>);

impl MemKv {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        // A poisoned map means a test already panicked; keep its data.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
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
        *self.map() = entries.into_iter().collect();
        Ok(())
    }
}

/// The buffered writes of a [`Txn`] at one point, to roll back to.
pub struct Savepoint(BTreeMap<Vec<u8>, Option<Vec<u8>>>);

/// A mutation in progress: reads through to the store, buffers writes.
pub struct Txn<'a, K: Kv + ?Sized> {
    kv: &'a K,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a, K: Kv + ?Sized> Txn<'a, K> {
    /// Starts a mutation over `kv`.
    pub fn new(kv: &'a K) -> Self {
        Self {
            kv,
            writes: BTreeMap::new(),
        }
    }

    /// Returns the raw value under `key`, seeing this mutation's writes.
    pub fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(key) {
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
        self.writes.insert(key, Some(encode(value)));
    }

    /// Stores raw bytes under `key`.
    pub fn put_raw(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    /// Deletes `key`.
    pub fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
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
    }

    /// Returns a savepoint: the buffered writes so far.
    pub fn savepoint(&self) -> Savepoint {
        Savepoint(self.writes.clone())
    }

    /// Discards every write buffered after `sp` was taken (one command of a
    /// batch failed; the commands before it stand).
    pub fn restore(&mut self, sp: Savepoint) {
        self.writes = sp.0;
    }

    /// Commits the buffered writes atomically.
    pub fn commit(self) -> Result<(), StoreError> {
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

    #[test]
    fn mem_kv_conforms() {
        exercise(&MemKv::default());
    }

    #[test]
    fn sled_kv_conforms() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        exercise(&db.open_tree("t").unwrap());
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
