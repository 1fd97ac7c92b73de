//! Atomic updates of a shard's metadata tree, without sled batches.
//!
//! A write, commit, truncate or removal changes several keys of the
//! shard's tree at once (the chunk header and the block groups it
//! touches, clone records), and a crash must leave all of them or none
//! (the store's invariant 1). sled 0.34's `apply_batch` gives that, at a
//! price this engine paid on every write: it rolls sled's I/O buffer
//! twice (before and after reserving the batch manifest,
//! `PageCache::pin_log`), each roll hands a buffer write with a
//! `sync_file_range` to sled's thread pool, and the pool's `Queue::send`
//! wakes *every* idle pool thread (`notify_all`; seven are kept idle) for
//! each job. It also takes sled's process-wide `concurrency_control` lock
//! exclusively, stalling every other shard's reads. A `perf` profile of
//! three chunkservers under 128 KiB replicated writes put 36% of their CPU
//! in those pool threads (54% of that in waking and sleeping), and a
//! replica's durable flush waited for the rolled buffers' device writes
//! before its own.
//!
//! Instead, an update of more than one key is written as one *redo record*
//! under [`REDO_KEY`] (a plain insert), then key by key, then the record
//! is removed: plain inserts only, no roll, nothing written until the next
//! flush. sled recovers a prefix of its log after a crash, so a recovered
//! tree holds either no record (the update is wholly there or wholly
//! absent) or the record (the update may be partly there), and
//! [`recover`], run when the shard opens, applies the record again and
//! removes it. Applying it again is safe: it is the shard's newest update
//! (the next one overwrites the record before touching anything), so no
//! later write of its keys can exist. One record per shard tree: a shard
//! runs on one thread and an update does not yield between its record and
//! its removal, so updates of one shard never interleave, and shards have
//! trees of their own. Readers on the shard's thread never see an update
//! half applied for the same reason. The meta replicas commit their state
//! machine the same way (`meta/src/fs/store.rs`).

use std::collections::BTreeMap;

use super::error::StoreError;
use super::layout::DecodeError;

/// The key of a shard tree's redo record: a tag no other record uses (see
/// `layout`), so no scan of the tree ever meets it.
pub const REDO_KEY: &[u8] = b"R";

/// The writes of one atomic update of a shard's tree; the same interface
/// as `sled::Batch` (a later write of a key replaces an earlier one).
#[derive(Debug, Default)]
pub struct MetaBatch {
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl MetaBatch {
    /// Sets `key` to `value` (taken as is: the encoded records callers
    /// build are not copied again).
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl Into<Vec<u8>>) {
        self.writes
            .insert(key.as_ref().to_vec(), Some(value.into()));
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.writes.insert(key.as_ref().to_vec(), None);
    }
}

/// Applies `batch` to `tree` atomically with respect to crashes (see the
/// module docs). Visible at once; durable with the next flush.
///
/// # Errors
/// A sled error. The tree may then hold part of the update; sled's errors
/// are fatal to the database (the shard must be reopened, which completes
/// the update from its record).
pub fn apply(tree: &sled::Tree, batch: MetaBatch) -> Result<(), StoreError> {
    match batch.writes.len() {
        0 => Ok(()),
        1 => apply_writes(tree, &batch.writes),
        _ => {
            tree.insert(REDO_KEY, encode(&batch.writes))?;
            apply_writes(tree, &batch.writes)?;
            tree.remove(REDO_KEY)?;
            Ok(())
        }
    }
}

/// Completes an update a crash interrupted: applies the redo record left
/// in `tree`, if any, and removes it. Returns whether there was one.
///
/// # Errors
/// A sled error, or a record that does not decode.
pub fn recover(tree: &sled::Tree) -> Result<bool, StoreError> {
    let Some(record) = tree.get(REDO_KEY)? else {
        return Ok(false);
    };
    let writes = decode(&record).ok_or(StoreError::CorruptRecord {
        what: "metadata redo record",
        source: DecodeError::Value,
    })?;
    apply_writes(tree, &writes)?;
    tree.remove(REDO_KEY)?;
    Ok(true)
}

fn apply_writes(
    tree: &sled::Tree,
    writes: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
) -> Result<(), StoreError> {
    for (k, v) in writes {
        match v {
            Some(v) => tree.insert(&k[..], &v[..])?,
            None => tree.remove(&k[..])?,
        };
    }
    Ok(())
}

/// Returns the redo record of `batch` (tests: what a crash can leave).
#[cfg(test)]
pub fn record(batch: &MetaBatch) -> Vec<u8> {
    encode(&batch.writes)
}

/// `count u32 LE`, then per write `key_len u32 LE, key, 0 (remove) | 1
/// (insert) value_len u32 LE value`.
fn encode(writes: &BTreeMap<Vec<u8>, Option<Vec<u8>>>) -> Vec<u8> {
    let size: usize = writes
        .iter()
        .map(|(k, v)| 9 + k.len() + v.as_ref().map_or(0, Vec::len))
        .sum();
    let mut out = Vec::with_capacity(4 + size);
    let len32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&len32(writes.len()));
    for (k, v) in writes {
        out.extend_from_slice(&len32(k.len()));
        out.extend_from_slice(k);
        match v {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&len32(v.len()));
                out.extend_from_slice(v);
            }
        }
    }
    out
}

fn decode(mut b: &[u8]) -> Option<BTreeMap<Vec<u8>, Option<Vec<u8>>>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (b.get(..n)?, b.get(n..)?);
        *b = tail;
        Some(head)
    }
    fn len32(b: &mut &[u8]) -> Option<usize> {
        let n = u32::from_le_bytes(take(b, 4)?.try_into().ok()?);
        usize::try_from(n).ok()
    }
    let count = len32(&mut b)?;
    let mut writes = BTreeMap::new();
    for _ in 0..count {
        let n = len32(&mut b)?;
        let key = take(&mut b, n)?.to_vec();
        let value = match take(&mut b, 1)?[0] {
            0 => None,
            1 => {
                let n = len32(&mut b)?;
                Some(take(&mut b, n)?.to_vec())
            }
            _ => return None,
        };
        writes.insert(key, value);
    }
    b.is_empty().then_some(writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (sled::Db, sled::Tree) {
        let db = sled::Config::new().temporary(true).open().expect("db");
        let t = db.open_tree("shard-0").expect("tree");
        (db, t)
    }

    fn sample() -> MetaBatch {
        let mut b = MetaBatch::default();
        b.insert(b"Ca", b"header".to_vec());
        b.insert(b"Bb", Vec::new());
        b.remove(b"Bc");
        b.insert(b"Bd", vec![7u8; 300]);
        // A later write of a key wins, as in sled::Batch.
        b.insert(b"Bc", b"again".to_vec());
        b.remove(b"Bd");
        b
    }

    #[test]
    fn records_round_trip_and_torn_ones_are_refused() {
        let b = sample();
        let bytes = encode(&b.writes);
        assert_eq!(decode(&bytes), Some(b.writes));
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), None);
        let mut bad_tag = bytes;
        bad_tag[4 + 4 + 2] = 9;
        assert_eq!(decode(&bad_tag), None);
    }

    #[test]
    fn an_update_applies_whole_and_leaves_no_record() {
        let (_db, t) = tree();
        t.insert(b"Bc", b"old").unwrap();
        t.insert(b"Bd", b"old").unwrap();
        apply(&t, sample()).unwrap();
        assert_eq!(t.get(b"Ca").unwrap().as_deref(), Some(&b"header"[..]));
        assert_eq!(t.get(b"Bb").unwrap().as_deref(), Some(&b""[..]));
        assert_eq!(t.get(b"Bc").unwrap().as_deref(), Some(&b"again"[..]));
        assert_eq!(t.get(b"Bd").unwrap(), None);
        assert_eq!(t.get(REDO_KEY).unwrap(), None);
        assert!(!recover(&t).unwrap(), "nothing to complete");
    }

    #[test]
    fn an_interrupted_update_is_completed_from_its_record() {
        // What a crash can leave: the record and a prefix of the writes.
        let b = sample();
        for done in 0..=b.writes.len() {
            let (_db, t) = tree();
            t.insert(b"Bd", b"old").unwrap();
            t.insert(REDO_KEY, encode(&b.writes)).unwrap();
            for (k, v) in b.writes.iter().take(done) {
                match v {
                    Some(v) => t.insert(&k[..], &v[..]).unwrap(),
                    None => t.remove(&k[..]).unwrap(),
                };
            }
            assert!(recover(&t).unwrap());
            let (_wdb, w) = tree();
            w.insert(b"Bd", b"old").unwrap();
            apply(&w, sample()).unwrap();
            let want: Vec<_> = w.iter().map(|kv| kv.unwrap()).collect();
            let got: Vec<_> = t.iter().map(|kv| kv.unwrap()).collect();
            assert_eq!(got, want, "{done} writes were done before the crash");
        }
    }

    #[test]
    fn a_corrupt_record_is_an_error_not_a_guess() {
        let (_db, t) = tree();
        t.insert(REDO_KEY, &b"\x05\x00"[..]).unwrap();
        assert!(matches!(recover(&t), Err(StoreError::CorruptRecord { .. })));
    }
}
