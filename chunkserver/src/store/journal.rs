//! The shard's metadata journal: how a write becomes durable with one
//! `fdatasync` instead of a data sync followed by a metadata flush.
//!
//! # Why
//!
//! A write used to be durable after two steps in series: the data file's
//! `fdatasync`, then sled's flush (its own buffer write, `sync_file_range`
//! and an `fdatasync` of its file, on the blocking pool). Measured inside
//! the chunkserver during `cairn-bench chunk`'s 1 MiB writes (4 in flight,
//! one replica), a write spent 1.2 ms in its DMA write, 1.2 ms waiting for
//! the data sync and 1.4 ms waiting for the metadata flush.
//!
//! # How
//!
//! Each shard keeps a ring of blocks inside its own data file. A write
//! (`ShardStore::write_version`) stores, besides its data blocks, one
//! *record* in the ring: the metadata batch it will apply, the blocks it
//! wrote with their CRCs, its seq, and the newest seq known durable when
//! it was made. Data and record go to the same file, so one group-committed
//! `fdatasync` makes both durable. Only then is the batch applied to sled,
//! still under the chunk's lock, and the write acknowledged. sled is
//! flushed off the acknowledgement path: by the operations that still
//! flush it (commits, truncates, removes), when the ring is half full, and
//! at close.
//!
//! # Invariants
//!
//! 1. **sled never references unsynced data**: a record's batch is applied
//!    after the sync that covers its data blocks (the store's invariant 2
//!    holds as before).
//! 2. **A flush is a checkpoint**: before each sled flush the store writes
//!    the replay position (`POS_KEY`), the oldest record not yet applied,
//!    or the ring's head. Everything before it is in sled once the flush
//!    completes, so ring space before it may be reused.
//! 3. **Replay is idempotent and never goes back**: opening a shard reads
//!    the records from the replay position on (each checked by magic,
//!    epoch, seq and CRC) and applies them in order, except a record whose
//!    chunk's header already carries its seq or a later one
//!    ([`ChunkHeader::jseq`](super::layout::ChunkHeader::jseq)): sled then
//!    holds that change or a later one of the same chunk (a later commit,
//!    a non-durable commit sled wrote on its own), which the record must
//!    not overwrite. Changes of one chunk are serialized by its lock, so
//!    their records are in the ring in the order they were applied.
//! 4. **A torn record is never applied**: a power cut can leave a record
//!    durable and its data not (one sync, no order between the two
//!    writes). Such a record was never acknowledged. Replay checks the data
//!    blocks of every record newer than what the last valid record knew
//!    durable against their CRCs, and skips a record that fails: its chunk
//!    keeps the state before it (its lock was held until the apply that
//!    never happened, so no later record of that chunk exists).
//! 5. **An acknowledged record is never behind a hole**: the scan stops at
//!    the first slot that is not the next record, so a write waits, before
//!    its sync, until every earlier record has been written.
//! 6. **A replay starts a new epoch**: records of the previous run that
//!    were never replayed (behind a hole) can never be mistaken for new
//!    ones written at the same place.
//!
//! A block a journaled write releases (the committed version it replaces)
//! is free again once the write's record is synced: replay re-applies the
//! release.
//!
//! # Layout
//!
//! `RING_KEY` → first block, block count (u64 LE each); `POS_KEY` → epoch,
//! seq, logical position (u64 LE each). A logical position counts blocks
//! written since the ring was made; its block is `first + pos % count`. A
//! record never wraps: one that would not fit before the end starts at the
//! beginning. Record bytes, little-endian:
//!
//! ```text
//! magic "CJR1" | len u32 (whole record) | epoch u64 | seq u64 | durable u64
//! | fresh u32 | writes u32 | fresh × (block u64, crc u32)
//! | writes × (key len u32, key, 0 | 1 value len u32 value) | crc32 u32
//! ```

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};

use glommio::io::DmaFile;

use super::error::StoreError;
use super::group::Notify;
use super::layout::{BLOCK, BLOCK_SIZE, ChunkHeader, DecodeError, decode_header_key};
use super::target::durable_flush;

/// Key of the ring's location in the shard's tree.
pub(crate) const RING_KEY: &[u8] = b"\0jring";
/// Key of the replay position in the shard's tree.
pub(crate) const POS_KEY: &[u8] = b"\0jpos";
/// Blocks in a new shard's ring (8 MiB).
pub(crate) const RING_BLOCKS: u64 = 2048;
const MAGIC: u32 = u32::from_le_bytes(*b"CJR1");
const HEAD_LEN: usize = 4 + 4 + 8 + 8 + 8 + 4 + 4;

/// One metadata batch: the sled batch and the same writes encoded for a
/// journal record.
#[derive(Debug, Default)]
pub(crate) struct MetaBatch {
    sled: sled::Batch,
    writes: Vec<u8>,
    count: u32,
}

fn put_write(out: &mut Vec<u8>, key: &[u8], value: Option<&[u8]>) {
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    match value {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
    }
}

impl MetaBatch {
    /// Sets `key` to `value`.
    pub(crate) fn insert(
        &mut self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]> + Into<sled::IVec>,
    ) {
        let key = key.as_ref();
        put_write(&mut self.writes, key, Some(value.as_ref()));
        self.count += 1;
        self.sled.insert(key, value);
    }

    /// Removes `key`.
    pub(crate) fn remove(&mut self, key: impl AsRef<[u8]>) {
        let key = key.as_ref();
        put_write(&mut self.writes, key, None);
        self.count += 1;
        self.sled.remove(key);
    }

    /// The sled batch to apply.
    pub(crate) fn into_sled(self) -> sled::Batch {
        self.sled
    }

    /// Bytes of the record holding this batch and `fresh` blocks.
    pub(crate) fn record_len(&self, fresh: usize) -> usize {
        HEAD_LEN + fresh * 12 + self.writes.len() + 4
    }
}

/// What a record says besides its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHead {
    pub epoch: u64,
    pub seq: u64,
    /// Every record up to this seq was synced when this one was made.
    pub durable: u64,
}

/// Writes the record of `batch` into `dst` (at least
/// [`MetaBatch::record_len`] bytes; the rest is zeroed).
pub(crate) fn fill_record(
    dst: &mut [u8],
    head: RecordHead,
    fresh: &[(u64, u32)],
    batch: &MetaBatch,
) {
    let len = batch.record_len(fresh.len());
    let mut at = 0;
    let mut put = |b: &[u8]| {
        dst[at..at + b.len()].copy_from_slice(b);
        at += b.len();
    };
    put(&MAGIC.to_le_bytes());
    put(&(len as u32).to_le_bytes());
    put(&head.epoch.to_le_bytes());
    put(&head.seq.to_le_bytes());
    put(&head.durable.to_le_bytes());
    put(&(fresh.len() as u32).to_le_bytes());
    put(&batch.count.to_le_bytes());
    for (b, c) in fresh {
        put(&b.to_le_bytes());
        put(&c.to_le_bytes());
    }
    put(&batch.writes);
    let crc = crc32fast::hash(&dst[..at]);
    dst[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    dst[at + 4..].fill(0);
}

/// A record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub head: RecordHead,
    /// Data blocks the record's write stored, with their CRCs.
    pub fresh: Vec<(u64, u32)>,
    /// The batch: key, and the value (`None`: delete).
    pub writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The length, epoch and seq a record's first block claims, if it starts
/// like a record (nothing is checked beyond the magic and a sane length).
pub(crate) fn peek(first: &[u8], max_len: usize) -> Option<(usize, u64, u64)> {
    if u32_at(first, 0)? != MAGIC {
        return None;
    }
    let len = u32_at(first, 4)? as usize;
    if !(HEAD_LEN + 4..=max_len).contains(&len) {
        return None;
    }
    Some((len, u64_at(first, 8)?, u64_at(first, 16)?))
}

/// Decodes the record at the start of `b` (its CRC checked first).
///
/// # Errors
/// [`DecodeError`] for anything that is not a whole record.
pub(crate) fn decode_record(b: &[u8]) -> Result<Record, DecodeError> {
    let len = u32_at(b, 4).ok_or(DecodeError::Length)? as usize;
    if u32_at(b, 0) != Some(MAGIC) || len < HEAD_LEN + 4 || len > b.len() {
        return Err(DecodeError::Length);
    }
    let body = &b[..len - 4];
    if u32_at(b, len - 4) != Some(crc32fast::hash(body)) {
        return Err(DecodeError::Value);
    }
    let field = |at| u64_at(body, at).ok_or(DecodeError::Length);
    let head = RecordHead {
        epoch: field(8)?,
        seq: field(16)?,
        durable: field(24)?,
    };
    let nfresh = u32_at(body, 32).ok_or(DecodeError::Length)? as usize;
    let nwrites = u32_at(body, 36).ok_or(DecodeError::Length)? as usize;
    let mut at = HEAD_LEN;
    if nfresh > (body.len() - at) / 12 {
        return Err(DecodeError::Length);
    }
    let mut fresh = Vec::with_capacity(nfresh);
    for _ in 0..nfresh {
        fresh.push((field(at)?, u32_at(body, at + 8).ok_or(DecodeError::Length)?));
        at += 12;
    }
    // Each write takes at least 5 bytes (key length and tag).
    if nwrites > (body.len() - at) / 5 {
        return Err(DecodeError::Length);
    }
    let take = |at: &mut usize| -> Result<Vec<u8>, DecodeError> {
        let n = u32_at(body, *at).ok_or(DecodeError::Length)? as usize;
        let v = body
            .get(*at + 4..(*at + 4).checked_add(n).ok_or(DecodeError::Length)?)
            .ok_or(DecodeError::Length)?
            .to_vec();
        *at += 4 + n;
        Ok(v)
    };
    let mut writes = Vec::with_capacity(nwrites);
    for _ in 0..nwrites {
        let key = take(&mut at)?;
        let tag = *body.get(at).ok_or(DecodeError::Length)?;
        at += 1;
        let value = match tag {
            0 => None,
            1 => Some(take(&mut at)?),
            _ => return Err(DecodeError::Value),
        };
        writes.push((key, value));
    }
    if at != body.len() {
        return Err(DecodeError::Length);
    }
    Ok(Record {
        head,
        fresh,
        writes,
    })
}

/// Encodes a pair or triple of u64s (ring location, replay position).
pub(crate) fn encode_u64s(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Decodes what [`encode_u64s`] made of `n` numbers.
pub(crate) fn decode_u64s(b: &[u8], n: usize) -> Option<Vec<u64>> {
    if b.len() != n * 8 {
        return None;
    }
    Some((0..n).filter_map(|i| u64_at(b, i * 8)).collect())
}

/// Where a record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub seq: u64,
    /// Logical position of its first block.
    pub pos: u64,
    /// Its blocks.
    pub blocks: u64,
}

/// The ring's bookkeeping (single-threaded, inside the shard's executor;
/// the I/O is the store's).
#[derive(Debug)]
pub(crate) struct Journal {
    first: u64,
    blocks: u64,
    epoch: u64,
    next_seq: Cell<u64>,
    head: Cell<u64>,
    tail: Cell<u64>,
    /// Records reserved and not yet written (or given up).
    unwritten: RefCell<BTreeSet<u64>>,
    /// Records reserved and not yet applied to sled: seq → position.
    unapplied: RefCell<BTreeMap<u64, u64>>,
    durable: Cell<u64>,
    failed: Cell<bool>,
    written_changed: Notify,
}

impl Journal {
    /// The journal of a ring of `blocks` blocks from `first`, whose next
    /// record is `seq` at logical position `pos`, in `epoch`.
    pub(crate) fn new(first: u64, blocks: u64, epoch: u64, seq: u64, pos: u64) -> Self {
        Self {
            first,
            blocks,
            epoch,
            next_seq: Cell::new(seq),
            head: Cell::new(pos),
            tail: Cell::new(pos),
            unwritten: RefCell::default(),
            unapplied: RefCell::default(),
            durable: Cell::new(seq.saturating_sub(1)),
            failed: Cell::new(false),
            written_changed: Notify::default(),
        }
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The ring's first block and block count.
    pub(crate) fn ring(&self) -> (u64, u64) {
        (self.first, self.blocks)
    }

    /// The largest record, in bytes: a quarter of the ring.
    pub(crate) fn max_record(&self) -> usize {
        (self.blocks as usize / 4) * BLOCK
    }

    /// The block number of logical position `pos`.
    pub(crate) fn block_of(&self, pos: u64) -> u64 {
        self.first + pos % self.blocks
    }

    /// The newest seq known durable (every record up to it synced).
    pub(crate) fn durable(&self) -> u64 {
        self.durable.get()
    }

    /// Every record up to the returned seq has been written.
    pub(crate) fn written(&self) -> u64 {
        self.unwritten
            .borrow()
            .first()
            .map_or(self.next_seq.get() - 1, |s| s - 1)
    }

    pub(crate) fn is_failed(&self) -> bool {
        self.failed.get()
    }

    /// Marks the journal unusable (a record or its data could not be
    /// written or applied): the shard must be reopened, which replays what
    /// is durable.
    pub(crate) fn fail(&self) {
        self.failed.set(true);
        self.written_changed.notify_all();
    }

    /// Whether more than half the ring holds records a flush has not
    /// covered yet.
    pub(crate) fn wants_checkpoint(&self) -> bool {
        self.head.get() - self.tail.get() > self.blocks / 2
    }

    /// Takes the next seq and a place for a record of `len` bytes, or
    /// `None` when the ring has no room until a flush moves its tail.
    pub(crate) fn reserve(&self, len: usize) -> Option<Slot> {
        let n = len.div_ceil(BLOCK) as u64;
        let mut pos = self.head.get();
        if pos % self.blocks + n > self.blocks {
            pos = pos.next_multiple_of(self.blocks);
        }
        if pos + n - self.tail.get() > self.blocks {
            return None;
        }
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        self.head.set(pos + n);
        self.unwritten.borrow_mut().insert(seq);
        self.unapplied.borrow_mut().insert(seq, pos);
        Some(Slot {
            seq,
            pos,
            blocks: n,
        })
    }

    /// The record `seq` is on its way to the disk.
    pub(crate) fn written_done(&self, seq: u64) {
        self.unwritten.borrow_mut().remove(&seq);
        self.written_changed.notify_all();
    }

    /// Waits until every record up to `seq` has been written; the newest
    /// seq written then.
    pub(crate) async fn wait_written(&self, seq: u64) -> Option<u64> {
        loop {
            if self.failed.get() {
                return None;
            }
            let w = self.written();
            if w >= seq {
                return Some(w);
            }
            self.written_changed.notified().await;
        }
    }

    /// A sync that started when every record up to `seq` was written has
    /// completed.
    pub(crate) fn synced_through(&self, seq: u64) {
        self.durable.set(self.durable.get().max(seq));
    }

    /// The record `seq`'s batch is in sled (or was given up).
    pub(crate) fn applied(&self, seq: u64) {
        self.unapplied.borrow_mut().remove(&seq);
    }

    /// The replay position to record before a flush: the oldest record
    /// not applied yet, or the head. Returns (seq, position).
    pub(crate) fn replay_from(&self) -> (u64, u64) {
        match self.unapplied.borrow().first_key_value() {
            Some((s, p)) => (*s, *p),
            None => (self.next_seq.get(), self.head.get()),
        }
    }

    /// A flush that recorded replay position `pos` has completed.
    pub(crate) fn flushed(&self, pos: u64) {
        self.tail.set(self.tail.get().max(pos));
    }
}

fn corrupt(what: &'static str) -> StoreError {
    StoreError::CorruptRecord {
        what,
        source: DecodeError::Value,
    }
}

/// Opens the journal of a shard whose data file is `file` (`file_size`
/// bytes) and whose tree is `tree`: replays the records the last flush did
/// not cover (see the module docs) and starts a new epoch, or, on a shard
/// that has no ring yet, appends one to the data file. Returns the journal
/// and the data file's size after that.
///
/// # Errors
/// I/O and metadata errors; a corrupt ring location or replay position.
pub(crate) async fn open(
    file: &DmaFile,
    file_size: u64,
    tree: &sled::Tree,
    db: &sled::Db,
    meta_file: &std::fs::File,
) -> Result<(Journal, u64), StoreError> {
    let flush = || durable_flush(db, meta_file).map_err(StoreError::io("flush metadata"));
    let Some(ring) = tree.get(RING_KEY)? else {
        let first = file_size / BLOCK_SIZE;
        let end = (first + RING_BLOCKS) * BLOCK_SIZE;
        file.pre_allocate(end, false)
            .await
            .map_err(StoreError::glommio("allocate the journal ring"))?;
        tree.insert(RING_KEY, encode_u64s(&[first, RING_BLOCKS]))?;
        tree.insert(POS_KEY, encode_u64s(&[1, 1, 0]))?;
        flush()?;
        return Ok((Journal::new(first, RING_BLOCKS, 1, 1, 0), end));
    };
    let ring = decode_u64s(&ring, 2)
        .filter(|r| r[1] >= 8 && (r[0] + r[1]) * BLOCK_SIZE <= file_size)
        .ok_or_else(|| corrupt("journal ring"))?;
    let pos = tree
        .get(POS_KEY)?
        .and_then(|v| decode_u64s(&v, 3))
        .ok_or_else(|| corrupt("journal position"))?;
    let (first, blocks, epoch) = (ring[0], ring[1], pos[0]);
    let (seq, at) = replay(
        file,
        tree,
        Journal::new(first, blocks, epoch, pos[1], pos[2]),
    )
    .await?;
    // A new epoch: what lies beyond the last record replayed is never
    // taken for a record of this run.
    tree.insert(POS_KEY, encode_u64s(&[epoch + 1, seq, at]))?;
    flush()?;
    Ok((Journal::new(first, blocks, epoch + 1, seq, at), file_size))
}

/// Replays the records of `j`'s epoch from its position on; returns the
/// next seq and position.
async fn replay(file: &DmaFile, tree: &sled::Tree, j: Journal) -> Result<(u64, u64), StoreError> {
    let (start, blocks) = (j.head.get(), j.blocks);
    let (mut seq, mut at) = (j.next_seq.get(), start);
    let mut records = Vec::new();
    while at - start < blocks {
        let mut found = None;
        for p in [at, at.next_multiple_of(blocks)] {
            if let Some(r) = read_record(file, &j, p, seq).await? {
                found = Some((p, r));
                break;
            }
        }
        let Some((p, (record, n))) = found else {
            break;
        };
        records.push(record);
        seq += 1;
        at = p + n;
    }
    // Records up to what the last one knew durable were synced with their
    // data; the later ones may have been cut by a power loss.
    let durable = records.last().map_or(0, |r| r.head.durable);
    let (mut applied, mut torn, mut held) = (0, 0, 0);
    for r in records {
        if r.head.seq > durable && !data_intact(file, &r.fresh).await {
            torn += 1;
            continue;
        }
        if holds_change(tree, &r)? {
            held += 1;
            continue;
        }
        let mut batch = sled::Batch::default();
        for (k, v) in r.writes {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        tree.apply_batch(batch)?;
        applied += 1;
    }
    if applied + torn + held > 0 {
        tracing::info!(
            applied,
            already_held = held,
            torn,
            "replayed the metadata journal"
        );
    }
    Ok((seq, at))
}

/// Reads the record `seq` at logical position `pos`, if it is there.
async fn read_record(
    file: &DmaFile,
    j: &Journal,
    pos: u64,
    seq: u64,
) -> Result<Option<(Record, u64)>, StoreError> {
    let at = j.block_of(pos) * BLOCK_SIZE;
    let first = file
        .read_at_aligned(at, BLOCK)
        .await
        .map_err(StoreError::glommio("read the journal"))?;
    let Some((len, epoch, s)) = peek(&first, j.max_record()) else {
        return Ok(None);
    };
    let n = len.div_ceil(BLOCK) as u64;
    if epoch != j.epoch || s != seq || pos % j.blocks + n > j.blocks {
        return Ok(None);
    }
    let bytes = if n == 1 {
        first
    } else {
        file.read_at_aligned(at, n as usize * BLOCK)
            .await
            .map_err(StoreError::glommio("read the journal"))?
    };
    Ok(decode_record(&bytes).ok().map(|r| (r, n)))
}

/// Whether every block of `fresh` holds the bytes its CRC says.
async fn data_intact(file: &DmaFile, fresh: &[(u64, u32)]) -> bool {
    for (b, crc) in fresh {
        match file.read_at_aligned(b * BLOCK_SIZE, BLOCK).await {
            Ok(r) if r.len() == BLOCK && crc32fast::hash(&r) == *crc => {}
            _ => return false,
        }
    }
    true
}

/// Whether sled already holds record `r`'s change or a later one of the
/// same chunk: a chunk header it writes carries its seq or a newer one.
fn holds_change(tree: &sled::Tree, r: &Record) -> Result<bool, StoreError> {
    for (k, _) in &r.writes {
        if decode_header_key(k).is_none() {
            continue;
        }
        if let Some(v) = tree.get(k)? {
            let h = ChunkHeader::decode(&v).map_err(|source| StoreError::CorruptRecord {
                what: "chunk header",
                source,
            })?;
            if h.jseq >= r.head.seq {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> MetaBatch {
        let mut b = MetaBatch::default();
        b.insert(b"C-key", vec![1, 2, 3]);
        b.remove(b"gone");
        b.insert(b"", Vec::new());
        b
    }

    #[test]
    fn records_round_trip_and_reject_corruption() {
        let b = batch();
        let fresh = [(7u64, 0xdead_beefu32), (9, 1)];
        let head = RecordHead {
            epoch: 3,
            seq: 41,
            durable: 39,
        };
        let len = b.record_len(fresh.len());
        let mut buf = vec![0xaau8; len.next_multiple_of(BLOCK)];
        fill_record(&mut buf, head, &fresh, &b);
        assert!(buf[len..].iter().all(|x| *x == 0), "padding zeroed");
        assert_eq!(peek(&buf, 1 << 20), Some((len, 3, 41)));
        let r = decode_record(&buf).expect("decodes");
        assert_eq!(r.head, head);
        assert_eq!(r.fresh, fresh);
        assert_eq!(
            r.writes,
            vec![
                (b"C-key".to_vec(), Some(vec![1, 2, 3])),
                (b"gone".to_vec(), None),
                (Vec::new(), Some(Vec::new())),
            ]
        );
        // Any flipped byte of the record is caught; a cut record too.
        for i in 0..len {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(decode_record(&bad).is_err(), "flip at {i}");
        }
        for cut in 0..len {
            assert!(decode_record(&buf[..cut]).is_err(), "cut at {cut}");
        }
        // Zeros (a ring block never written) are no record.
        assert_eq!(peek(&[0u8; BLOCK], 1 << 20), None);
        assert!(decode_record(&[0u8; BLOCK]).is_err());
        // A claimed length beyond the limit is refused before reading it.
        assert_eq!(peek(&buf, len - 1), None);
    }

    #[test]
    fn reservations_wrap_and_wait_for_flushes() {
        let j = Journal::new(100, 8, 1, 1, 0);
        let a = j.reserve(3 * BLOCK).expect("room");
        assert_eq!((a.seq, a.pos, a.blocks), (1, 0, 3));
        let b = j.reserve(4 * BLOCK + 1).expect("room");
        assert_eq!((b.seq, b.pos, b.blocks), (2, 3, 5));
        // Full until a flush moves the tail.
        assert_eq!(j.reserve(1), None);
        assert_eq!(j.replay_from(), (1, 0));
        j.applied(1);
        assert_eq!(j.replay_from(), (2, 3));
        j.flushed(3);
        // Three blocks free at the start, but a record never wraps.
        let c = j.reserve(2 * BLOCK).expect("room");
        assert_eq!((c.seq, c.pos, c.blocks), (3, 8, 2));
        assert_eq!(j.block_of(c.pos), 100);
        assert_eq!(j.written(), 0);
        j.written_done(2);
        assert_eq!(j.written(), 0, "1 is not written yet");
        j.written_done(1);
        assert_eq!(j.written(), 2);
        j.written_done(3);
        assert_eq!(j.written(), 3);
    }
}
