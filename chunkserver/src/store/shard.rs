//! One shard's chunk store: the chunks with `shard_of(chunk) == k`, their
//! data file and their part of the target's metadata.
//!
//! Used inside one glommio executor only (`!Send`); nothing is locked
//! across threads. Per-chunk mutations (write, commit, truncate, remove)
//! are serialized by a per-chunk semaphore that is held from the header
//! read until the metadata batch is applied, and released *before* the
//! metadata flush, so the next version of the same chunk and writes to
//! other chunks share that flush. Reads take no lock: they see a header
//! and block entries either before or after an applied batch. The one
//! exception is `read_pending` (a recovery path of the chain's head): it
//! holds the lock so the version it reads cannot be committed and its
//! blocks released under it.
//!
//! # Chain operations
//!
//! `commit_through` commits every pending version up to one, in one batch
//! (a later committed version implies the earlier ones); without
//! `durable` it does not wait for the flush, and its released blocks are
//! deferred on the ticket of its batch, so whichever flush first covers
//! that ticket (the next durable operation's, or `close`) frees them.
//! `write_committed` (the tail) stores and commits a version in one batch
//! and one flush when no version is pending.
//!
//! # Write path
//!
//! verify segment CRCs → lock chunk → check version order → read and verify
//! the (at most two) partially covered blocks of the newest version →
//! allocate fresh blocks → fill aligned DMA buffers, one per contiguous run
//! → `write_at` each run → group-committed `fdatasync` → one atomic
//! metadata update (header with the new pending version + every touched
//! block entry; a redo record and plain sled inserts, see `batch`)
//! → unlock → group-committed sled flush on the blocking pool → return.
//!
//! # Crash safety
//!
//! * Metadata references a block only after its bytes are synced, so a
//!   torn data write is never referenced.
//! * Data is never overwritten in place: a crash leaves the old version
//!   intact beside an unreferenced (free at reopen) new one.
//! * A block released by a commit/remove/truncate becomes reusable only
//!   after the flush that made the release durable (see `alloc`).
//! * A read that races with a commit and a later reuse of the block it was
//!   reading sees a CRC mismatch; it re-reads the block entry and retries
//!   when the reference moved, and reports `Checksum` only when the entry
//!   still points at the bad block. Corrupt bytes are never returned.
//!
//! # Costs
//!
//! A cold read of one block is one header lookup (usually served by the
//! bounded per-shard header cache), one sled range lookup for the block
//! entries, and one 4 KiB DMA read. sled `get`/`range` run on the executor
//! thread: they hit sled's page cache almost always and would block only on
//! a cache miss; flushes (which always block) run on glommio's blocking
//! pool. Payloads are copied once on each side: into an aligned DMA buffer
//! on write, out of the DMA read result into one `Bytes` on read (zero-copy
//! needs the network layer to receive into DMA buffers; later).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use cairn_proto::frame::{CloneInfo, CloneList};
use cairn_proto::ids::ChunkId;
use glommio::io::{DmaFile, OpenOptions};
use smallvec::{SmallVec, smallvec};

use super::alloc::{Allocator, Run};
use super::batch::{self, MetaBatch};
use super::error::StoreError;
use super::group::GroupSync;
use super::layout::{
    self, BLOCK, BLOCK_SIZE, BlockEntry, BlockRef, CHUNK_MAX, ChunkHeader, NO_SEAL, Pending, Seal,
    Segment,
};
use super::target::Target;
use super::{
    ChunkStat, PendingData, ReadMode, ReadOut, ScrubReport, Snap, SpaceUsage, WriteIn, shard_of,
};
use crate::locks::{ChunkLockGuard, ChunkLocks};
use crate::stall::{Progress, Step};

type Result<T> = std::result::Result<T, StoreError>;

/// How often a read retries when the block it read moved under it.
const READ_RETRIES: usize = 3;

/// One shard's chunk store. See the module docs.
pub struct ShardStore {
    shard: u32,
    shards: u32,
    db: sled::Db,
    meta_file: Arc<std::fs::File>,
    tree: sled::Tree,
    file: Rc<DmaFile>,
    /// The data file's path, for the file system's free space.
    data_path: std::path::PathBuf,
    alloc: RefCell<Allocator>,
    data_sync: GroupSync,
    meta_sync: GroupSync,
    headers: RefCell<HashMap<ChunkId, ChunkHeader>>,
    header_cache_entries: usize,
    locks: ChunkLocks,
    capacity_blocks: u64,
    grow_blocks: u64,
    capacity_bytes: Option<u64>,
    read_retries: Cell<u64>,
    /// Requests and durability steps, watched for stalls.
    progress: Arc<Progress>,
}

impl std::fmt::Debug for ShardStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardStore")
            .field("shard", &self.shard)
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

/// Free space a data file never takes from a file system of `size` bytes:
/// room for the block map (sled) to record what is written, a sixteenth
/// of the file system, at most 64 MiB. Without it a disk filled by data
/// left sled unable to flush, and every write failed on its metadata.
fn metadata_reserve(size: u64) -> u64 {
    (size / 16).min(64 << 20)
}

fn decode_group(v: &[u8]) -> Result<Vec<(u32, BlockEntry)>> {
    layout::decode_group(v).map_err(|source| StoreError::CorruptRecord {
        what: "block group",
        source,
    })
}

/// Changes to a chunk's block entries (`None`: remove), staged group by
/// group into one batch by [`ShardStore::stage_blocks`].
#[derive(Debug, Default)]
struct BlockUpdates(std::collections::BTreeMap<u32, Option<BlockEntry>>);

impl BlockUpdates {
    fn set(&mut self, block: u32, e: BlockEntry) {
        self.0.insert(block, Some(e));
    }

    fn remove(&mut self, block: u32) {
        self.0.insert(block, None);
    }
}

fn decode_header(v: &[u8]) -> Result<ChunkHeader> {
    ChunkHeader::decode(v).map_err(|source| StoreError::CorruptRecord {
        what: "chunk header",
        source,
    })
}

/// Returns whether `[a, a + al)` and `[b, b + bl)` overlap.
fn overlaps(a: u64, al: u64, b: u64, bl: u64) -> bool {
    a < b.saturating_add(bl) && b < a.saturating_add(al)
}

/// Returns whether reading `[offset, offset + len)` of the committed
/// version could return bytes a pending version changes (CRAQ dirty).
fn range_is_dirty(h: &ChunkHeader, offset: u64, len: u64) -> bool {
    let mut prev_len = h.committed_len;
    for p in &h.pending {
        if p.len > 0 && overlaps(offset, len, p.offset, p.len) {
            return true;
        }
        let (lo, hi) = (p.new_len.min(prev_len), p.new_len.max(prev_len));
        if hi > lo && overlaps(offset, len, lo, hi - lo) {
            return true;
        }
        prev_len = p.new_len;
    }
    false
}

fn digest_of(offset: u64, len: u64, crcs: &[u32]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&offset.to_le_bytes());
    h.update(&len.to_le_bytes());
    for c in crcs {
        h.update(&c.to_le_bytes());
    }
    h.finalize()
}

impl ShardStore {
    pub(crate) async fn open(target: &Target, shard: u32) -> Result<Self> {
        let shards = target.shards();
        if shard >= shards {
            return Err(StoreError::NoSuchShard { shard, shards });
        }
        // glommio probes each device once per thread by reading offset 0
        // of the first DmaFile opened; on an empty file the probe wrongly
        // succeeds and later reads fail with EOPNOTSUPP. Let the non-empty
        // superblock be the first file this executor opens.
        let probe = DmaFile::open(target.superblock_path())
            .await
            .map_err(StoreError::glommio("open superblock for the I/O probe"))?;
        probe
            .close()
            .await
            .map_err(StoreError::glommio("close superblock"))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .dma_open(target.data_path(shard))
            .await
            .map_err(StoreError::glommio("open data file"))?;
        let file_size = file
            .file_size()
            .await
            .map_err(StoreError::glommio("stat data file"))?;
        let tree = target.db().open_tree(format!("shard-{shard}"))?;
        if batch::recover(&tree)? {
            tracing::info!(shard, "completed a metadata update a crash interrupted");
        }

        // Blocks of the chunks and of their clones (which share blocks
        // with each other: each counted once).
        let mut used = std::collections::BTreeSet::new();
        for prefix in [layout::block_prefix(), layout::clone_blocks_all_prefix()] {
            for kv in tree.scan_prefix(prefix) {
                let (_, v) = kv?;
                for (_, e) in decode_group(&v)? {
                    used.extend(e.refs().map(|r| r.blockno));
                }
            }
        }
        let alloc = Allocator::rebuild(file_size / BLOCK_SIZE, used.into_iter().collect())?;
        let opts = target.options();
        let capacity_blocks = opts.capacity_bytes.map_or(u64::MAX / BLOCK_SIZE, |c| {
            c / u64::from(shards) / BLOCK_SIZE
        });
        tracing::debug!(
            shard,
            blocks = alloc.total_blocks(),
            free = alloc.free_blocks(),
            "opened shard"
        );
        Ok(Self {
            shard,
            shards,
            db: target.db().clone(),
            meta_file: target.meta_file(),
            tree,
            file: Rc::new(file),
            data_path: target.data_path(shard),
            alloc: RefCell::new(alloc),
            data_sync: GroupSync::default(),
            meta_sync: GroupSync::default(),
            headers: RefCell::new(HashMap::new()),
            header_cache_entries: opts.header_cache_entries.max(1),
            locks: ChunkLocks::default(),
            capacity_blocks,
            grow_blocks: (opts.grow_bytes / BLOCK_SIZE).max(1),
            capacity_bytes: opts.capacity_bytes.map(|c| c / u64::from(shards)),
            read_retries: Cell::new(0),
            progress: Arc::default(),
        })
    }

    /// Returns this shard's index.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    fn check(&self, chunk: ChunkId) -> Result<()> {
        let owner = shard_of(chunk, self.shards);
        if owner != self.shard {
            return Err(StoreError::WrongShard {
                chunk,
                owner,
                shard: self.shard,
            });
        }
        if self.data_sync.is_poisoned() || self.meta_sync.is_poisoned() {
            return Err(StoreError::Failed { shard: self.shard });
        }
        Ok(())
    }

    async fn lock(&self, chunk: ChunkId) -> Result<ChunkLockGuard<'_>> {
        self.locks
            .lock(chunk)
            .await
            .map_err(StoreError::glommio("chunk lock"))
    }

    fn load_header(&self, chunk: ChunkId) -> Result<Option<ChunkHeader>> {
        if let Some(h) = self.headers.borrow().get(&chunk) {
            return Ok(Some(h.clone()));
        }
        let Some(v) = self.tree.get(layout::header_key(chunk))? else {
            return Ok(None);
        };
        let h = decode_header(&v)?;
        self.cache_header(chunk, h.clone());
        Ok(Some(h))
    }

    fn cache_header(&self, chunk: ChunkId, h: ChunkHeader) {
        let mut cache = self.headers.borrow_mut();
        if cache.len() >= self.header_cache_entries && !cache.contains_key(&chunk) {
            // Evict an arbitrary entry: cheap, bounded, good enough until
            // profiles ask for an LRU.
            if let Some(k) = cache.keys().next().copied() {
                cache.remove(&k);
            }
        }
        cache.insert(chunk, h);
    }

    /// Returns the block entries of `chunk` in `[first, end)` (end may be
    /// `u32::MAX`, meaning "to the last block").
    fn entries(&self, chunk: ChunkId, first: u32, end: u32) -> Result<Vec<(u32, BlockEntry)>> {
        if end <= first {
            return Ok(Vec::new());
        }
        let lo = layout::group_key(chunk, layout::group_of(first));
        let hi = layout::group_key(chunk, layout::group_of(end - 1));
        let mut out = Vec::with_capacity(((end - first) as usize).min(64));
        let mut decode = |v: &[u8]| {
            layout::decode_group_range(v, first..end, &mut out).map_err(|source| {
                StoreError::CorruptRecord {
                    what: "block group",
                    source,
                }
            })
        };
        if lo == hi {
            // One group (every read of up to 256 KiB inside one): a point
            // lookup, without a range scan's set-up and successor walk
            // (perf during `cairn-bench chunk`'s 4 KiB reads put this
            // function at ~6% of the shard's CPU, the scan most of it; the
            // read's p50 did not move outside that bench's noise).
            if let Some(v) = self.tree.get(&lo[..])? {
                decode(&v)?;
            }
            return Ok(out);
        }
        for kv in self.tree.range(&lo[..]..=&hi[..]) {
            let (k, v) = kv?;
            if layout::decode_group_key(&k).is_none() {
                return Err(StoreError::CorruptRecord {
                    what: "block group key",
                    source: layout::DecodeError::Value,
                });
            }
            decode(&v)?;
        }
        Ok(out)
    }

    /// Stages `updates` into `batch`: each touched group is read, changed
    /// and rewritten (removed once empty). The caller holds the chunk lock,
    /// so nothing else changes these groups until the batch is applied.
    fn stage_blocks(
        &self,
        chunk: ChunkId,
        updates: BlockUpdates,
        batch: &mut MetaBatch,
    ) -> Result<()> {
        let mut current: Option<(u32, std::collections::BTreeMap<u32, BlockEntry>)> = None;
        let put =
            |batch: &mut MetaBatch, g: u32, m: &std::collections::BTreeMap<u32, BlockEntry>| {
                let key = layout::group_key(chunk, g);
                if m.is_empty() {
                    batch.remove(&key[..]);
                } else {
                    batch.insert(
                        &key[..],
                        layout::encode_group(m.iter().map(|(b, e)| (*b, e))),
                    );
                }
            };
        for (block, change) in updates.0 {
            let g = layout::group_of(block);
            if current.as_ref().is_none_or(|(cg, _)| *cg != g) {
                if let Some((cg, m)) = current.take() {
                    put(batch, cg, &m);
                }
                let m = match self.tree.get(layout::group_key(chunk, g))? {
                    Some(v) => decode_group(&v)?.into_iter().collect(),
                    None => std::collections::BTreeMap::new(),
                };
                current = Some((g, m));
            }
            if let Some((_, m)) = current.as_mut() {
                match change {
                    Some(e) => m.insert(block, e),
                    None => m.remove(&block),
                };
            }
        }
        if let Some((cg, m)) = current {
            put(batch, cg, &m);
        }
        Ok(())
    }

    async fn sync_data(&self) -> Result<()> {
        let ticket = self.data_sync.ticket();
        let (file, progress) = (&self.file, &self.progress);
        self.data_sync
            .wait(ticket, || async move {
                let _running = progress.step(Step::DataSync);
                file.fdatasync().await.map_err(io::Error::from)
            })
            .await
            .map_err(StoreError::io("fdatasync data file"))?;
        Ok(())
    }

    /// Waits until metadata changes through `ticket` are durable, then frees
    /// the blocks they released.
    async fn flush_meta(&self, ticket: u64) -> Result<()> {
        let (db, file, progress) = (&self.db, &self.meta_file, &self.progress);
        let done = self
            .meta_sync
            .wait(ticket, || {
                let (db, file) = (db.clone(), file.clone());
                async move {
                    let _running = progress.step(Step::MetaFlush);
                    glommio::executor()
                        .spawn_blocking(move || super::target::durable_flush(&db, &file))
                        .await
                        .map_err(io::Error::other)
                }
            })
            .await
            .map_err(StoreError::io("flush metadata"))?;
        self.alloc.borrow_mut().release_through(done);
        Ok(())
    }

    /// Takes `n` blocks, growing the data file (by whole extents, up to the
    /// capacity) when needed. Nothing is taken on error.
    async fn allocate(&self, n: u64) -> Result<Vec<Run>> {
        for _ in 0..4 {
            if let Some(runs) = self.alloc.borrow_mut().alloc(n) {
                return Ok(runs);
            }
            let (total, free, deferred) = {
                let a = self.alloc.borrow();
                (a.total_blocks(), a.free_blocks(), a.deferred_blocks())
            };
            let need = n - free;
            if total.saturating_add(need) > self.capacity_blocks {
                if deferred > 0 {
                    // Blocks wait for a flush to become reusable: flush now
                    // rather than report a full disk.
                    self.flush_meta(self.meta_sync.issued()).await?;
                    continue;
                }
                return Err(StoreError::NoSpace { shard: self.shard });
            }
            let want = total + need;
            let extent = want
                .next_multiple_of(self.grow_blocks)
                .min(self.capacity_blocks)
                .max(want);
            // A whole extent; on a disk with less room left than that
            // (the capacity is what the operator said, not what the file
            // system has), only what this write needs; never the room the
            // block map needs to record it.
            let room = self.room_blocks();
            let target = if extent - total <= room {
                extent
            } else if need <= room {
                want
            } else {
                return Err(StoreError::NoSpace { shard: self.shard });
            };
            self.grow(total, target).await?;
        }
        Err(StoreError::NoSpace { shard: self.shard })
    }

    /// Blocks the data file may still grow by on its file system, keeping
    /// [`metadata_reserve`] free for the block map (sled) and the rest of
    /// the target. Unknown (statvfs failed): no limit here, the growth
    /// itself finds out.
    fn room_blocks(&self) -> u64 {
        match nix::sys::statvfs::statvfs(&self.data_path) {
            Ok(st) => {
                let unit = st.fragment_size();
                let free = st.blocks_available().saturating_mul(unit);
                let size = st.blocks().saturating_mul(unit);
                free.saturating_sub(metadata_reserve(size)) / BLOCK_SIZE
            }
            Err(e) => {
                tracing::debug!(error = %e, path = %self.data_path.display(), "statvfs");
                u64::MAX
            }
        }
    }

    /// Grows the data file from `from` to `blocks` blocks.
    ///
    /// # Errors
    /// [`StoreError::NoSpace`] when the file system is full (the file is
    /// cut back to `from` blocks: a failed `fallocate` may have taken
    /// every free block before it failed), I/O errors.
    async fn grow(&self, from: u64, blocks: u64) -> Result<()> {
        match self.file.pre_allocate(blocks * BLOCK_SIZE, false).await {
            Ok(()) => {
                self.alloc.borrow_mut().grow_to(blocks);
                Ok(())
            }
            Err(e) => {
                // glommio's error keeps the kind, not the errno.
                let e = io::Error::from(e);
                if e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
                    if let Err(t) = self.file.truncate(from * BLOCK_SIZE).await {
                        tracing::warn!(error = %t, "giving back a failed growth of the data file");
                    }
                    return Err(StoreError::NoSpace { shard: self.shard });
                }
                Err(StoreError::Io {
                    op: "grow data file",
                    source: e,
                })
            }
        }
    }

    fn free_runs(&self, runs: &[Run]) {
        let mut a = self.alloc.borrow_mut();
        for r in runs {
            a.free_now(*r);
        }
    }

    /// Reads one stored block and verifies it against its CRC.
    async fn read_block(&self, chunk: ChunkId, block: u32, r: BlockRef) -> Result<Vec<u8>> {
        let res = self
            .file
            .read_at_aligned(r.blockno * BLOCK_SIZE, BLOCK)
            .await
            .map_err(StoreError::glommio("read block"))?;
        if res.len() != BLOCK || crc32fast::hash(&res) != r.crc {
            return Err(StoreError::Checksum { chunk, block });
        }
        Ok(res.to_vec())
    }

    /// Writes `blocks` (each exactly 4096 bytes, in order) into the
    /// allocated `runs`, one DMA write per run, and syncs the data file.
    /// Returns the block number of each block.
    async fn write_blocks(&self, runs: &[Run], blocks: &[&[u8]]) -> Result<Vec<u64>> {
        let mut blocknos = Vec::with_capacity(blocks.len());
        let mut i = 0;
        for &(start, n) in runs {
            let size = n as usize * BLOCK;
            let mut buf = self.file.alloc_dma_buffer(size);
            let dst = buf.as_bytes_mut();
            for j in 0..n as usize {
                dst[j * BLOCK..(j + 1) * BLOCK].copy_from_slice(blocks[i + j]);
                blocknos.push(start + j as u64);
            }
            i += n as usize;
            let wrote = self
                .file
                .write_at(buf, start * BLOCK_SIZE)
                .await
                .map_err(StoreError::glommio("write blocks"))?;
            if wrote != size {
                return Err(StoreError::Io {
                    op: "write blocks",
                    source: io::Error::new(io::ErrorKind::WriteZero, "short DMA write"),
                });
            }
        }
        crate::failpoint::hit("chunk.store.before_data_sync");
        if !blocks.is_empty() {
            self.sync_data().await?;
        }
        Ok(blocknos)
    }

    /// Checks `version` against the header for a new pending version; Ok(true)
    /// means "an identical retry of the newest pending version".
    fn check_next_version(
        chunk: ChunkId,
        h: &ChunkHeader,
        version: u64,
        offset: u64,
        len: u64,
        digest: u32,
    ) -> Result<bool> {
        let newest = h.newest_version();
        if version == newest + 1 {
            return Ok(false);
        }
        if version > newest {
            return Err(StoreError::VersionGap {
                chunk,
                expected: newest + 1,
                got: version,
            });
        }
        if let Some(p) = h.pending.last()
            && p.version == version
            && p.offset == offset
            && p.len == len
            && p.digest == digest
        {
            return Ok(true);
        }
        Err(StoreError::Stale {
            chunk,
            newest,
            got: version,
        })
    }

    /// Stores `data` at `offset` of `chunk` as pending version `version`
    /// and returns once it is durable (data synced, metadata flushed).
    ///
    /// `segment_crcs` holds the CRC32 of each piece of the data split at
    /// 4 KiB multiples of the chunk offset. Fully covered blocks keep the
    /// client's CRC; partially covered ones are merged with the newest
    /// version of the block (verified first) and get a new CRC.
    ///
    /// # Errors
    /// [`StoreError::Checksum`] (a segment does not match; nothing stored),
    /// [`StoreError::Segments`], [`StoreError::Range`],
    /// [`StoreError::VersionGap`] / [`StoreError::Stale`] (version is not
    /// `committed + pending + 1`; an identical retry of the newest pending
    /// version is accepted), [`StoreError::NoSpace`] (nothing changed), I/O
    /// errors.
    pub async fn write_pending(
        &self,
        chunk: ChunkId,
        version: u64,
        offset: u64,
        data: &[u8],
        segment_crcs: &[u32],
    ) -> Result<()> {
        let w = WriteIn::plain(offset, data, segment_crcs);
        self.write_version(chunk, version, w, false, None, None)
            .await
    }

    /// Stores `data` at `offset` of `chunk` as version `version` and
    /// commits it (the chain's tail): one chunk lock hold, one metadata
    /// flush, durable on return.
    ///
    /// With no pending versions and `version == committed + 1` the write
    /// goes straight to the committed version in one atomic batch (the
    /// replaced blocks are released as by a commit). Otherwise it is stored
    /// as a pending version and every pending version through `version` is
    /// committed, oldest first, under the same lock hold (two batches, one
    /// flush); an identical retry of the newest pending version just
    /// commits it.
    ///
    /// # Errors
    /// As [`Self::write_pending`]. [`StoreError::Stale`] also when
    /// `version` is already committed: the caller treats that as "already
    /// applied" (committed versions keep no digest to compare).
    pub async fn write_committed(
        &self,
        chunk: ChunkId,
        version: u64,
        offset: u64,
        data: &[u8],
        segment_crcs: &[u32],
    ) -> Result<()> {
        let w = WriteIn::plain(offset, data, segment_crcs);
        self.write_version(chunk, version, w, true, None, None)
            .await
    }

    /// [`Self::write_pending`] (`commit == false`) or
    /// [`Self::write_committed`] (`commit == true`) that also records the
    /// chain `chain` the chunk belongs to (the data path's writes), so a
    /// resync can enumerate a chain's chunks here.
    ///
    /// With seals (one per segment, [`WriteIn::seals`]) the write must
    /// cover whole blocks: each block is stored with its seal.
    ///
    /// # Errors
    /// As [`Self::write_pending`] and [`Self::write_committed`];
    /// [`StoreError::Seals`] for seals that do not fit the write.
    pub async fn write_in_chain(
        &self,
        chain: u32,
        chunk: ChunkId,
        version: u64,
        write: WriteIn<'_>,
        commit: bool,
    ) -> Result<()> {
        self.write_version(chunk, version, write, commit, Some(chain), None)
            .await
    }

    /// Replaces the blocks of `chunk`'s committed version `version` with
    /// `data` (the whole chunk, fetched from a healthy replica): repair of
    /// a corrupt replica. One atomic metadata batch, so a crash leaves
    /// either the corrupt blocks (found again) or the good ones; durable on
    /// return.
    ///
    /// # Errors
    /// [`StoreError::Stale`] when the chunk is no longer at `version` with
    /// `data.len()` bytes, [`StoreError::Pending`] when it has pending
    /// versions (retry once they settle), as [`Self::write_committed`]
    /// otherwise.
    pub async fn rewrite_committed(
        &self,
        chain: u32,
        chunk: ChunkId,
        version: u64,
        write: WriteIn<'_>,
    ) -> Result<()> {
        let data = write.data;
        let header = self
            .load_header(chunk)?
            .ok_or(StoreError::NotFound { chunk })?;
        if version == 0
            || header.committed_version != version
            || header.committed_len != data.len() as u64
        {
            return Err(StoreError::Stale {
                chunk,
                newest: header.committed_version,
                got: version,
            });
        }
        if data.is_empty() {
            return Ok(());
        }
        if write.offset != 0 {
            return Err(StoreError::Range {
                chunk,
                offset: write.offset,
                len: data.len() as u64,
            });
        }
        self.write_version(chunk, version, write, true, Some(chain), Some(version - 1))
            .await
    }

    /// Stores one piece of a copy of another replica's committed version
    /// `version` of `chunk` (resync and repair), `total` bytes long: the
    /// piece at offset 0 first drops whatever this replica held of the
    /// chunk; pieces then follow in offset order. Until the piece reaching
    /// `total` arrives the chunk reads as committed version 0 (never as
    /// `version`), so a copy cut short by a crash or a dropped connection
    /// is seen as stale by the next resync, not as complete. Durable on
    /// return.
    ///
    /// # Errors
    /// [`StoreError::Range`] for a piece out of order or past `total`,
    /// as [`Self::write_committed`] otherwise.
    ///
    /// `piece.snap.seq` is the newest snapshot seq when the copy was made:
    /// the copy carries no clones, so this replica serves no read of a
    /// snapshot up to it ([`ChunkHeader::snap_floor`]).
    pub async fn install_piece(
        &self,
        chain: u32,
        chunk: ChunkId,
        version: u64,
        total: u64,
        piece: WriteIn<'_>,
    ) -> Result<()> {
        let floor = piece.snap.seq;
        let piece = WriteIn {
            snap: Snap::default(),
            ..piece
        };
        self.check(chunk)?;
        let (offset, data) = (piece.offset, piece.data);
        let len = data.len() as u64;
        let end = offset.checked_add(len);
        if version == 0 || total > CHUNK_MAX || end.is_none_or(|e| e > total) {
            return Err(StoreError::Range { chunk, offset, len });
        }
        if offset == 0 {
            self.remove(chunk).await?;
        }
        let last = end == Some(total);
        let mut header = self.load_header(chunk)?.unwrap_or_default();
        if offset != 0 && (header.committed_version != 0 || header.committed_len != offset) {
            // Not the continuation of an install in progress.
            return Err(StoreError::Range { chunk, offset, len });
        }
        header.pending.clear();
        header.chain = chain;
        header.snap_floor = header.snap_floor.max(floor);
        header.seq = header.seq.max(floor);
        if len == 0 {
            header.committed_version = if last { version } else { 0 };
            let guard = self.lock(chunk).await?;
            self.tree
                .insert(&layout::header_key(chunk)[..], header.encode())?;
            self.cache_header(chunk, header);
            let ticket = self.meta_sync.ticket();
            drop(guard);
            return self.flush_meta(ticket).await;
        }
        // The piece is written as the version after the one set here: the
        // final one as `version`, the others as version 1 over 0, reset
        // before each piece.
        let (base, as_version) = if last { (version - 1, version) } else { (0, 1) };
        header.committed_version = base;
        {
            let _guard = self.lock(chunk).await?;
            self.tree
                .insert(&layout::header_key(chunk)[..], header.encode())?;
            self.cache_header(chunk, header);
        }
        self.write_version(chunk, as_version, piece, true, Some(chain), None)
            .await?;
        if !last {
            // Intermediate pieces leave the chunk at version 0.
            let guard = self.lock(chunk).await?;
            if let Some(mut h) = self.load_header(chunk)? {
                h.committed_version = 0;
                self.tree
                    .insert(&layout::header_key(chunk)[..], h.encode())?;
                self.cache_header(chunk, h);
            }
            let ticket = self.meta_sync.ticket();
            drop(guard);
            self.flush_meta(ticket).await?;
        }
        Ok(())
    }

    /// Checks a write's range, segment count and segment CRCs; returns its
    /// segments and digest.
    fn verify_payload(chunk: ChunkId, w: &WriteIn<'_>) -> Result<(Vec<Segment>, u32)> {
        let (offset, data, segment_crcs) = (w.offset, w.data, w.segment_crcs);
        let len = data.len() as u64;
        if len == 0 || offset.checked_add(len).is_none_or(|e| e > CHUNK_MAX) {
            return Err(StoreError::Range { chunk, offset, len });
        }
        let nseg = layout::segment_count(offset, len);
        if segment_crcs.len() != nseg {
            return Err(StoreError::Segments {
                chunk,
                expected: nseg,
                got: segment_crcs.len(),
            });
        }
        let segs: Vec<Segment> = layout::segments(offset, len).collect();
        // A seal covers a whole block; a partly written block (which is
        // merged here) can only be a plain one.
        let misfit = |(s, seal): (&Segment, &Seal)| !s.is_full() && *seal != NO_SEAL;
        if !w.seals.is_empty() && (w.seals.len() != nseg || segs.iter().zip(w.seals).any(misfit)) {
            return Err(StoreError::Seals {
                chunk,
                offset,
                len,
                seals: w.seals.len(),
            });
        }
        for (s, crc) in segs.iter().zip(segment_crcs) {
            if crc32fast::hash(&data[s.buf_off..s.buf_off + s.len]) != *crc {
                return Err(StoreError::Checksum {
                    chunk,
                    block: s.block,
                });
            }
        }
        Ok((segs, digest_of(offset, len, segment_crcs)))
    }

    /// The body of [`Self::write_pending`] (`commit == false`) and
    /// [`Self::write_committed`] (`commit == true`).
    async fn write_version(
        &self,
        chunk: ChunkId,
        version: u64,
        w: WriteIn<'_>,
        commit: bool,
        chain: Option<u32>,
        rebase: Option<u64>,
    ) -> Result<()> {
        self.check(chunk)?;
        let (segs, digest) = Self::verify_payload(chunk, &w)?;
        let (offset, data, segment_crcs) = (w.offset, w.data, w.segment_crcs);
        let len = data.len() as u64;

        let guard = self.lock(chunk).await?;
        let mut header = match self.load_header(chunk)? {
            Some(h) => h,
            // Snapshots up to the seq that creates the chunk read a hole.
            None => ChunkHeader {
                birth: w.snap.seq,
                ..ChunkHeader::default()
            },
        };
        if let Some(base) = rebase {
            // A rewrite of the committed version in place of its blocks
            // (repair): written as if it followed `base`.
            if !header.pending.is_empty() {
                return Err(StoreError::Pending { chunk });
            }
            header.committed_version = base;
        }
        // Also refuses a version that is already committed (Stale).
        if Self::check_next_version(chunk, &header, version, offset, len, digest)? {
            let ticket = if commit {
                self.commit_locked(chunk, header, version)?
            } else {
                self.meta_sync.issued()
            };
            drop(guard);
            return self.flush_meta(ticket).await;
        }
        // Straight to committed: version == committed + 1 here, and no
        // clone to keep (a commit of its own does that).
        let direct = commit
            && header.pending.is_empty()
            && !needs_clone(&header, w.snap.seq, w.snap.no_clone);
        let (first, end) = layout::block_range(offset, len);
        let existing: HashMap<u32, BlockEntry> =
            self.entries(chunk, first, end)?.into_iter().collect();
        if direct && existing.values().any(|e| !e.pending.is_empty()) {
            return Err(StoreError::CorruptRecord {
                what: "block entry without pending version in header",
                source: layout::DecodeError::Value,
            });
        }

        // Merge partially covered blocks with the newest version.
        let mut merged: Vec<(usize, Vec<u8>)> = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            if s.is_full() {
                continue;
            }
            let mut base = match existing.get(&s.block).and_then(BlockEntry::newest) {
                Some(r) => self.read_block(chunk, s.block, r).await?,
                None => vec![0u8; BLOCK],
            };
            base[s.in_block..s.in_block + s.len]
                .copy_from_slice(&data[s.buf_off..s.buf_off + s.len]);
            merged.push((i, base));
        }
        let blocks: Vec<&[u8]> = segs
            .iter()
            .enumerate()
            .map(|(i, s)| match merged.iter().find(|(j, _)| *j == i) {
                Some((_, b)) => &b[..],
                None => &data[s.buf_off..s.buf_off + s.len],
            })
            .collect();

        // Whole blocks of zeros without a seal are stored as holes: they
        // read back the same (zeros, the zero block's CRC) and take no
        // space. Compressed units end in such blocks (see the client's
        // `compress` module), and so do files written full of zeros.
        let zero_crc = layout::zero_block_crc();
        let hole: Vec<bool> = segs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.is_full()
                    && segment_crcs[i] == zero_crc
                    && w.seals.get(i).is_none_or(|seal| *seal == NO_SEAL)
                    && blocks[i].iter().all(|b| *b == 0)
            })
            .collect();
        let stored: Vec<&[u8]> = blocks
            .iter()
            .zip(&hole)
            .filter(|(_, h)| !**h)
            .map(|(b, _)| *b)
            .collect();
        let runs = self.allocate(stored.len() as u64).await?;
        let written = match self.write_blocks(&runs, &stored).await {
            Ok(b) => b,
            Err(e) => {
                self.free_runs(&runs);
                return Err(e);
            }
        };
        let mut written = written.into_iter();
        let blocknos: Vec<Option<u64>> = hole
            .iter()
            .map(|h| if *h { None } else { written.next() })
            .collect();

        let mut batch = MetaBatch::default();
        let mut updates = BlockUpdates::default();
        let mut freed = Vec::new();
        // Blocks the newest clone shares with the committed version stay;
        // it keeps its own copy of the groups this write changes.
        let clone_blocks = if direct {
            self.stage_clone_copy(chunk, header.clone_seq, first, end, &mut batch)?;
            self.clone_blocks(chunk, header.clone_seq, first, end)?
        } else {
            HashMap::new()
        };
        for (i, s) in segs.iter().enumerate() {
            let crc = if s.is_full() {
                segment_crcs[i]
            } else {
                crc32fast::hash(blocks[i])
            };
            let new = blocknos[i].map(|blockno| BlockRef {
                blockno,
                crc,
                seal: if s.is_full() {
                    w.seals.get(i).copied().unwrap_or(NO_SEAL)
                } else {
                    NO_SEAL
                },
            });
            let mut e = existing.get(&s.block).cloned().unwrap_or_default();
            if direct {
                freed.extend(
                    e.committed
                        .map(|r| r.blockno)
                        .filter(|b| clone_blocks.get(&s.block) != Some(b)),
                );
                e.committed = new;
            } else {
                e.pending.push((version, new));
            }
            if e.committed.is_none() && e.pending.is_empty() {
                updates.remove(s.block);
            } else {
                updates.set(s.block, e);
            }
        }
        self.stage_blocks(chunk, updates, &mut batch)?;
        let new_len = header.newest_len().max(offset + len);
        if let Some(c) = chain {
            header.chain = c;
        }
        if direct {
            header.committed_version = version;
            header.committed_len = new_len;
            header.seq = header.seq.max(w.snap.seq);
        } else {
            header.pending.push(Pending {
                version,
                offset,
                len,
                new_len,
                digest,
                seq: w.snap.seq,
                no_clone: w.snap.no_clone,
            });
        }
        batch.insert(&layout::header_key(chunk)[..], header.encode());
        crate::failpoint::hit("chunk.store.before_meta_batch");
        // A failed update may be partly applied, its redo record with it,
        // which the next open completes: its blocks stay taken (until the
        // allocator is rebuilt at that open), never reused under it.
        batch::apply(&self.tree, batch)?;
        crate::failpoint::hit("chunk.store.before_meta_flush");
        let mut ticket = self.meta_sync.ticket();
        self.defer_frees(ticket, freed);
        if commit && !direct {
            self.cache_header(chunk, header.clone());
            ticket = self.commit_locked(chunk, header, version)?;
        } else {
            self.cache_header(chunk, header);
        }
        drop(guard);
        self.flush_meta(ticket).await
    }

    fn defer_frees(&self, ticket: u64, blocks: Vec<u64>) {
        let mut a = self.alloc.borrow_mut();
        for b in blocks {
            a.defer_free(ticket, b);
        }
    }

    /// Makes pending version `version` (and any older pending one) the
    /// committed version and releases the blocks it replaced; returns once
    /// durable. The same as [`Self::commit_through`]`(chunk, version, true)`.
    ///
    /// # Errors
    /// As [`Self::commit_through`].
    pub async fn commit(&self, chunk: ChunkId, version: u64) -> Result<()> {
        self.commit_through(chunk, version, true).await
    }

    /// Commits every pending version of `chunk` up to and including
    /// `version`, oldest first, in one atomic metadata batch (the tail
    /// commits in order, so a later committed version implies the earlier
    /// ones), and releases the blocks they replaced. A version already
    /// committed is a no-op.
    ///
    /// With `durable`, returns after the metadata flush. Without it,
    /// returns once the batch is applied: the change is visible at once and
    /// becomes durable with the next flush of this shard (any durable
    /// operation's, or `close`) or sled's background flush. A crash before
    /// that leaves the versions pending, which the caller must tolerate
    /// (the tail holds them committed; the replica re-commits). The blocks
    /// such a commit releases stay unusable until a flush that covers it
    /// completes.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::VersionGap`] (`version` is
    /// newer than the newest pending version; `expected` is that newest
    /// version), I/O and metadata errors.
    pub async fn commit_through(&self, chunk: ChunkId, version: u64, durable: bool) -> Result<()> {
        self.check(chunk)?;
        let guard = self.lock(chunk).await?;
        let Some(header) = self.load_header(chunk)? else {
            return Err(StoreError::NotFound { chunk });
        };
        let ticket = if version <= header.committed_version {
            self.meta_sync.issued()
        } else if version > header.newest_version() {
            return Err(StoreError::VersionGap {
                chunk,
                expected: header.newest_version(),
                got: version,
            });
        } else {
            self.commit_locked(chunk, header, version)?
        };
        drop(guard);
        if durable {
            self.flush_meta(ticket).await
        } else {
            Ok(())
        }
    }

    /// Commits the pending versions of `header` through `version` (the
    /// caller holds the chunk lock and checked `committed < version <=
    /// newest`) and returns the flush ticket that makes it durable.
    ///
    /// Versions are committed in runs, one applied batch each: a run is a
    /// version and the versions after it that need no clone of their own.
    /// A run whose first version is the chunk's first mutation under a
    /// newer snapshot seq keeps the committed version as a clone, in the
    /// run's batch (DESIGN §3; its block map is copied group by group as
    /// commits change it, see the module docs of `store`); a crash between
    /// runs leaves the later ones
    /// pending. Every replica commits the same versions with the same seqs
    /// in order, so every replica keeps the same clones.
    fn commit_locked(&self, chunk: ChunkId, mut header: ChunkHeader, version: u64) -> Result<u64> {
        let mut ticket = self.meta_sync.issued();
        while header.committed_version < version {
            let Some(first) = header.pending.first().copied() else {
                break;
            };
            let clone = needs_clone(&header, first.seq, first.no_clone).then_some(first.seq);
            let mut seq = header.seq.max(first.seq);
            let mut through = first.version;
            for p in header.pending.iter().skip(1) {
                if p.version > version || (!p.no_clone && p.seq > seq) {
                    break;
                }
                seq = seq.max(p.seq);
                through = p.version;
            }
            ticket = self.commit_run(chunk, &mut header, through, clone)?;
        }
        Ok(ticket)
    }

    /// Returns block → block number of `chunk`'s clone `seq` in `[first,
    /// end)` as snapshots read it ([`Self::clone_entries`]; nothing for seq
    /// 0: no clone).
    fn clone_blocks(
        &self,
        chunk: ChunkId,
        seq: u64,
        first: u32,
        end: u32,
    ) -> Result<HashMap<u32, u64>> {
        if seq == 0 || end <= first {
            return Ok(HashMap::new());
        }
        Ok(self
            .clone_entries(chunk, seq, first, end)?
            .into_iter()
            .filter_map(|(b, e)| e.committed.map(|r| (b, r.blockno)))
            .collect())
    }

    /// Returns block → block number of the groups clone `seq` of `chunk`
    /// holds a copy of itself ([`Self::clone_own_entries`]).
    fn clone_own_blocks(&self, chunk: ChunkId, seq: u64) -> Result<HashMap<u32, u64>> {
        Ok(self
            .clone_own_entries(chunk, seq, 0, u32::MAX)?
            .into_iter()
            .filter_map(|(b, e)| e.committed.map(|r| (b, r.blockno)))
            .collect())
    }

    /// Returns the block entries in `[first, end)` of `chunk`'s clone `seq`
    /// as snapshots read it. A clone copies a group of the chunk's block
    /// map only when a commit first changes that group after the clone was
    /// taken ([`Self::stage_clone_copy`]): group by group, the clone's own
    /// copy, else the copy of the next newer clone that has one (the group
    /// did not change in between), else the chunk's committed entries (it
    /// has not changed since).
    fn clone_entries(
        &self,
        chunk: ChunkId,
        seq: u64,
        first: u32,
        end: u32,
    ) -> Result<Vec<(u32, BlockEntry)>> {
        if end <= first {
            return Ok(Vec::new());
        }
        let mut seqs: Vec<u64> = self
            .clones(chunk)?
            .into_iter()
            .map(|(s, _)| s)
            .filter(|s| *s > seq)
            .collect();
        seqs.insert(0, seq);
        let (g0, g1) = (layout::group_of(first), layout::group_of(end - 1));
        // The groups any source holds in the range.
        let mut groups = std::collections::BTreeSet::new();
        let lo = layout::group_key(chunk, g0);
        let hi = layout::group_key(chunk, g1);
        for kv in self.tree.range(&lo[..]..=&hi[..]) {
            if let Some((_, g)) = layout::decode_group_key(&kv?.0) {
                groups.insert(g);
            }
        }
        for s in &seqs {
            let lo = layout::clone_group_key(chunk, *s, g0);
            let hi = layout::clone_group_key(chunk, *s, g1);
            for kv in self.tree.range(&lo[..]..=&hi[..]) {
                let k = kv?.0;
                if let Some(b) = k.get(25..29).and_then(|b| b.try_into().ok()) {
                    groups.insert(u32::from_be_bytes(b));
                }
            }
        }
        let corrupt = |source| StoreError::CorruptRecord {
            what: "clone block group",
            source,
        };
        let mut out = Vec::new();
        'group: for g in groups {
            for s in &seqs {
                if let Some(v) = self.tree.get(layout::clone_group_key(chunk, *s, g))? {
                    layout::decode_group_range(&v, first..end, &mut out).map_err(corrupt)?;
                    continue 'group;
                }
            }
            if let Some(v) = self.tree.get(layout::group_key(chunk, g))? {
                let mut live = Vec::new();
                layout::decode_group_range(&v, first..end, &mut live).map_err(corrupt)?;
                out.extend(live.into_iter().filter_map(|(b, e)| {
                    e.committed.map(|r| {
                        (
                            b,
                            BlockEntry {
                                committed: Some(r),
                                pending: Vec::new(),
                            },
                        )
                    })
                }));
            }
        }
        Ok(out)
    }

    /// Returns the block entries in `[first, end)` of the groups `chunk`'s
    /// clone `seq` holds a copy of itself.
    fn clone_own_entries(
        &self,
        chunk: ChunkId,
        seq: u64,
        first: u32,
        end: u32,
    ) -> Result<Vec<(u32, BlockEntry)>> {
        if end <= first {
            return Ok(Vec::new());
        }
        let lo = layout::clone_group_key(chunk, seq, layout::group_of(first));
        let hi = layout::clone_group_key(chunk, seq, layout::group_of(end - 1));
        let mut out = Vec::new();
        for kv in self.tree.range(&lo[..]..=&hi[..]) {
            let (_, v) = kv?;
            layout::decode_group_range(&v, first..end, &mut out).map_err(|source| {
                StoreError::CorruptRecord {
                    what: "clone block group",
                    source,
                }
            })?;
        }
        Ok(out)
    }

    /// Before a commit changes the committed entries of `chunk` in blocks
    /// `[first, end)`: stages into `batch` a copy, for the newest clone
    /// `seq` (0: none), of each group there it has no copy of yet (an
    /// empty one for a group without entries, so the clone never reads
    /// the changed group). With `end` unbounded (a truncate), only groups
    /// that exist are copied: the others stay without entries.
    fn stage_clone_copy(
        &self,
        chunk: ChunkId,
        seq: u64,
        first: u32,
        end: u32,
        batch: &mut MetaBatch,
    ) -> Result<()> {
        if seq == 0 || end <= first {
            return Ok(());
        }
        let (g0, g1) = (layout::group_of(first), layout::group_of(end - 1));
        let groups: Vec<u32> = if end == u32::MAX {
            let lo = layout::group_key(chunk, g0);
            let hi = layout::group_key(chunk, g1);
            let mut gs = Vec::new();
            for kv in self.tree.range(&lo[..]..=&hi[..]) {
                if let Some((_, g)) = layout::decode_group_key(&kv?.0) {
                    gs.push(g);
                }
            }
            gs
        } else {
            (g0..=g1).collect()
        };
        for g in groups {
            let ck = layout::clone_group_key(chunk, seq, g);
            if self.tree.get(ck)?.is_some() {
                continue;
            }
            let live = match self.tree.get(layout::group_key(chunk, g))? {
                Some(v) => decode_group(&v)?,
                None => Vec::new(),
            };
            let committed: Vec<(u32, BlockEntry)> = live
                .into_iter()
                .filter_map(|(b, e)| {
                    e.committed.map(|r| {
                        (
                            b,
                            BlockEntry {
                                committed: Some(r),
                                pending: Vec::new(),
                            },
                        )
                    })
                })
                .collect();
            batch.insert(
                &ck[..],
                layout::encode_group(committed.iter().map(|(b, e)| (*b, e))),
            );
        }
        Ok(())
    }

    /// Commits pending versions through `version` in one applied batch;
    /// with `clone`, first keeps the committed version as the clone keyed
    /// by that seq, in the same batch. Releases the replaced blocks that
    /// no clone holds.
    fn commit_run(
        &self,
        chunk: ChunkId,
        header: &mut ChunkHeader,
        version: u64,
        clone: Option<u64>,
    ) -> Result<u64> {
        let n = header
            .pending
            .iter()
            .take_while(|p| p.version <= version)
            .count();
        let (mut first, mut end) = (u32::MAX, 0u32);
        for p in &header.pending[..n] {
            let (f, e) = p.touched_blocks();
            first = first.min(f);
            end = end.max(e);
        }
        let mut batch = MetaBatch::default();
        let mut updates = BlockUpdates::default();
        let mut freed = Vec::new();
        let entries = if first < end {
            self.entries(chunk, first, end)?
        } else {
            Vec::new()
        };
        // A new clone is taken by its record alone: its groups are copied
        // as commits change them (`stage_clone_copy`), starting with this
        // run's. The blocks the newest clone holds stay when replaced.
        if let Some(seq) = clone {
            let ch = layout::CloneHeader {
                version: header.committed_version,
                len: header.committed_len,
                birth: header.birth,
            };
            batch.insert(&layout::clone_key(chunk, seq)[..], ch.encode());
            header.clone_seq = seq;
        }
        self.stage_clone_copy(chunk, header.clone_seq, first, end, &mut batch)?;
        let kept = self.clone_blocks(chunk, header.clone_seq, first, end)?;
        for (block, mut e) in entries {
            let k = e.pending.iter().take_while(|(v, _)| *v <= version).count();
            if k == 0 {
                continue;
            }
            if e.pending[k..].iter().any(|(v, _)| *v <= version) {
                return Err(StoreError::CorruptRecord {
                    what: "block entry version order",
                    source: layout::DecodeError::Value,
                });
            }
            // Every replaced reference (the old committed one and those of
            // versions superseded within this batch) is released, unless
            // a clone holds it.
            for (_, new) in e.pending.drain(..k) {
                if let Some(old) = e.committed
                    && Some(old) != new
                    && kept.get(&block) != Some(&old.blockno)
                {
                    freed.push(old.blockno);
                }
                e.committed = new;
            }
            if e.committed.is_none() && e.pending.is_empty() {
                updates.remove(block);
            } else {
                updates.set(block, e);
            }
        }
        self.stage_blocks(chunk, updates, &mut batch)?;
        let run: Vec<Pending> = header.pending.drain(..n).collect();
        if let Some(last) = run.last() {
            header.committed_version = last.version;
            header.committed_len = last.new_len;
        }
        header.seq = run.iter().map(|p| p.seq).fold(header.seq, u64::max);
        batch.insert(&layout::header_key(chunk)[..], header.encode());
        batch::apply(&self.tree, batch)?;
        self.cache_header(chunk, header.clone());
        let ticket = self.meta_sync.ticket();
        self.defer_frees(ticket, freed);
        Ok(ticket)
    }

    /// Changes the length of `chunk` to `new_len` as pending version
    /// `version` (commit it like a write). Shrinking drops the blocks past
    /// the end and rewrites a partial last block with its tail zeroed, so a
    /// later extension reads zeros, never old bytes.
    ///
    /// # Errors
    /// As [`Self::write_pending`]; [`StoreError::NotFound`] for an unknown
    /// chunk.
    pub async fn truncate(
        &self,
        chunk: ChunkId,
        version: u64,
        new_len: u64,
        snap: Snap,
    ) -> Result<()> {
        self.check(chunk)?;
        if new_len > CHUNK_MAX {
            return Err(StoreError::Range {
                chunk,
                offset: new_len,
                len: 0,
            });
        }
        let digest = digest_of(new_len, 0, &[]);
        let guard = self.lock(chunk).await?;
        let Some(mut header) = self.load_header(chunk)? else {
            return Err(StoreError::NotFound { chunk });
        };
        if Self::check_next_version(chunk, &header, version, new_len, 0, digest)? {
            drop(guard);
            return self.flush_meta(self.meta_sync.issued()).await;
        }
        let mut batch = MetaBatch::default();
        let mut updates = BlockUpdates::default();
        if new_len < header.newest_len() {
            let first = (new_len / BLOCK_SIZE) as u32;
            let tail = (new_len % BLOCK_SIZE) as usize;
            for (block, mut e) in self.entries(chunk, first, u32::MAX)? {
                let Some(newest) = e.newest() else {
                    continue;
                };
                let replacement = if block == first && tail > 0 {
                    let mut b = self.read_block(chunk, block, newest).await?;
                    b[tail..].fill(0);
                    let runs = self.allocate(1).await?;
                    let blocknos = match self.write_blocks(&runs, &[&b[..]]).await {
                        Ok(n) => n,
                        Err(err) => {
                            self.free_runs(&runs);
                            return Err(err);
                        }
                    };
                    // Zero-filled in plain: a sealed block is never cut
                    // here (clients of encrypted files truncate at block
                    // boundaries).
                    blocknos
                        .first()
                        .map(|&blockno| BlockRef::plain(blockno, crc32fast::hash(&b)))
                } else {
                    None
                };
                e.pending.push((version, replacement));
                updates.set(block, e);
            }
        }
        self.stage_blocks(chunk, updates, &mut batch)?;
        header.pending.push(Pending {
            version,
            offset: new_len,
            len: 0,
            new_len,
            digest,
            seq: snap.seq,
            no_clone: snap.no_clone,
        });
        batch.insert(&layout::header_key(chunk)[..], header.encode());
        // A failed update may be partly applied, its redo record with it,
        // which the next open completes: its blocks stay taken (until the
        // allocator is rebuilt at that open), never reused under it.
        batch::apply(&self.tree, batch)?;
        self.cache_header(chunk, header);
        let ticket = self.meta_sync.ticket();
        drop(guard);
        self.flush_meta(ticket).await
    }

    /// Reads `[offset, offset + len)` of `chunk`'s committed version,
    /// clipped to its committed length (a read past the end is short).
    /// Holes read as zeros. Returns the data, one CRC per block-aligned
    /// segment of the returned range (the stored CRC for whole blocks), and
    /// the committed version and length.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::Pending`] (only with
    /// [`ReadMode::CleanOnly`], when a pending version changes bytes of the
    /// range), [`StoreError::Checksum`] (a stored block is corrupt; its
    /// bytes are not returned), I/O errors.
    pub async fn read(
        &self,
        chunk: ChunkId,
        offset: u64,
        len: u64,
        mode: ReadMode,
    ) -> Result<ReadOut> {
        self.check(chunk)?;
        // Nothing exists past the largest chunk: such a read is just short.
        let len = len.min(CHUNK_MAX.saturating_sub(offset));
        let mut attempt = 0;
        loop {
            let Some(header) = self.load_header(chunk)? else {
                return Err(StoreError::NotFound { chunk });
            };
            match self.read_once(chunk, &header, offset, len, mode).await {
                Err(StoreError::Checksum { block, .. }) if attempt < READ_RETRIES => {
                    // Did the block move under us (commit + flush + reuse)?
                    if !self.block_moved(chunk, &header)? {
                        return Err(StoreError::Checksum { chunk, block });
                    }
                    self.read_retries.set(self.read_retries.get() + 1);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Returns whether a commit or remove happened since a read based on
    /// `seen` started (only those release blocks for reuse).
    fn block_moved(&self, chunk: ChunkId, seen: &ChunkHeader) -> Result<bool> {
        let now = self.load_header(chunk)?;
        Ok(now.as_ref().map(|h| h.committed_version) != Some(seen.committed_version))
    }

    async fn read_once(
        &self,
        chunk: ChunkId,
        header: &ChunkHeader,
        offset: u64,
        len: u64,
        mode: ReadMode,
    ) -> Result<ReadOut> {
        if mode == ReadMode::CleanOnly && range_is_dirty(header, offset, len) {
            return Err(StoreError::Pending { chunk });
        }
        let (version, chunk_len) = (header.committed_version, header.committed_len);
        self.read_version(chunk, (version, chunk_len), offset, len, |first, last| {
            self.entries(chunk, first, last)
        })
        .await
    }

    /// Reads `[offset, offset + len)` of a version of `chunk` that is
    /// `chunk_len` bytes long, whose committed block entries in a block
    /// range `entries` returns (the current version's, or a clone's).
    async fn read_version(
        &self,
        chunk: ChunkId,
        (version, chunk_len): (u64, u64),
        offset: u64,
        len: u64,
        entries: impl FnOnce(u32, u32) -> Result<Vec<(u32, BlockEntry)>>,
    ) -> Result<ReadOut> {
        let end = offset.saturating_add(len).min(chunk_len);
        let mut out = ReadOut {
            data: Bytes::new(),
            block_crcs: Vec::new(),
            block_seals: Vec::new(),
            version,
            len: chunk_len,
        };
        if offset >= end {
            return Ok(out);
        }
        let rlen = end - offset;
        let (first, last) = layout::block_range(offset, rlen);
        let mut refs: SmallVec<[Option<BlockRef>; 8]> = smallvec![None; (last - first) as usize];
        for (block, e) in entries(first, last)? {
            if let Some(slot) = refs.get_mut((block - first) as usize) {
                *slot = e.committed;
            }
        }
        let (data, crcs, seals) = self.read_refs(chunk, offset, rlen, &refs).await?;
        out.data = data;
        out.block_crcs = crcs;
        out.block_seals = seals;
        Ok(out)
    }

    /// Reads `[offset, offset + len)` from `refs` (one per block the range
    /// touches; `None`: a hole, read as zeros), one DMA read per run of
    /// contiguously stored blocks, each block checked against its CRC.
    /// Returns the bytes, one CRC per segment (the stored CRC for whole
    /// blocks) and, when any whole block read has a seal, one seal per
    /// segment ([`NO_SEAL`] for the others; empty when none has one).
    async fn read_refs(
        &self,
        chunk: ChunkId,
        offset: u64,
        rlen: u64,
        refs: &[Option<BlockRef>],
    ) -> Result<(Bytes, Vec<u32>, Vec<Seal>)> {
        let mut data = BytesMut::with_capacity(rlen as usize);
        let mut crcs = Vec::with_capacity(refs.len());
        let mut seals: Vec<Seal> = Vec::new();
        // The bookkeeping lists live on the stack up to a few entries, so a
        // small read allocates only its result (issue 14, DESIGN §10).
        let segs: SmallVec<[Segment; 8]> = layout::segments(offset, rlen).collect();
        // Runs of blocks stored contiguously on disk, in the range's order:
        // one DMA read each. Holes between them do not break a run (a
        // compressed unit's blocks are followed by holes, and the next
        // unit's blocks were allocated right after it by the same write).
        let mut runs: SmallVec<[(u64, usize); 4]> = SmallVec::new();
        let mut at: SmallVec<[Option<(usize, usize)>; 8]> = smallvec![None; segs.len()];
        for (i, r) in refs.iter().enumerate().take(segs.len()) {
            let Some(r) = r else { continue };
            let last = runs.len().wrapping_sub(1);
            match runs.last_mut() {
                Some((first, n)) if r.blockno == *first + *n as u64 => {
                    at[i] = Some((last, *n));
                    *n += 1;
                }
                _ => {
                    at[i] = Some((runs.len(), 0));
                    runs.push((r.blockno, 1));
                }
            }
        }
        let mut bufs: SmallVec<[_; 4]> = SmallVec::with_capacity(runs.len());
        for &(first, n) in &runs {
            bufs.push(
                self.file
                    .read_at_aligned(first * BLOCK_SIZE, n * BLOCK)
                    .await
                    .map_err(StoreError::glommio("read blocks"))?,
            );
        }
        for (i, s) in segs.iter().enumerate() {
            let (Some(r), Some((run, k))) = (refs[i], at[i]) else {
                // A hole reads as zeros.
                data.extend_from_slice(&[0u8; BLOCK][..s.len]);
                crcs.push(if s.is_full() {
                    layout::zero_block_crc()
                } else {
                    crc32fast::hash(&[0u8; BLOCK][..s.len])
                });
                continue;
            };
            let Some(bytes) = bufs[run].get(k * BLOCK..(k + 1) * BLOCK) else {
                return Err(StoreError::Checksum {
                    chunk,
                    block: s.block,
                });
            };
            if crc32fast::hash(bytes) != r.crc {
                return Err(StoreError::Checksum {
                    chunk,
                    block: s.block,
                });
            }
            let piece = &bytes[s.in_block..s.in_block + s.len];
            data.extend_from_slice(piece);
            crcs.push(if s.is_full() {
                r.crc
            } else {
                crc32fast::hash(piece)
            });
            if r.seal != NO_SEAL && s.is_full() {
                // Seals so far: none, one per earlier segment.
                seals.resize(i, NO_SEAL);
                seals.push(r.seal);
            }
        }
        if !seals.is_empty() {
            seals.resize(segs.len(), NO_SEAL);
        }
        Ok((data.freeze(), crcs, seals))
    }

    /// Returns pending version `version` of `chunk` exactly as it was
    /// written: for a write, its `len` bytes at `offset` read from that
    /// version's own blocks (each checked against its CRC) and the CRC of
    /// each segment split at 4 KiB multiples of the chunk offset (as
    /// `cairn_proto::frame::segment_crcs` computes them); for a truncate,
    /// `len == 0`, no data and the new length. The chain's head uses it to
    /// forward again a version its successor may not have.
    ///
    /// Holds the chunk's lock while reading, so the version cannot be
    /// committed and its blocks released under the read.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] (unknown chunk, or `version` is not
    /// pending: never written or already committed),
    /// [`StoreError::Checksum`] (a stored block is corrupt), I/O and
    /// metadata errors.
    pub async fn read_pending(&self, chunk: ChunkId, version: u64) -> Result<PendingData> {
        self.check(chunk)?;
        let guard = self.lock(chunk).await?;
        let Some(p) = self
            .load_header(chunk)?
            .and_then(|h| h.pending.into_iter().find(|p| p.version == version))
        else {
            return Err(StoreError::NotFound { chunk });
        };
        let mut out = PendingData {
            version,
            offset: p.offset,
            len: p.len,
            new_len: p.new_len,
            data: Bytes::new(),
            segment_crcs: Vec::new(),
            segment_seals: Vec::new(),
            snap: Snap {
                seq: p.seq,
                no_clone: p.no_clone,
            },
        };
        if p.len == 0 {
            return Ok(out);
        }
        let (first, end) = layout::block_range(p.offset, p.len);
        let mut refs: Vec<Option<BlockRef>> = vec![None; (end - first) as usize];
        let mut found = vec![false; refs.len()];
        for (block, e) in self.entries(chunk, first, end)? {
            let r = e.pending.iter().find(|(v, _)| *v == version);
            let i = (block - first) as usize;
            if let (Some(slot), Some((_, r))) = (refs.get_mut(i), r) {
                *slot = *r;
                found[i] = true;
            }
        }
        // A write records every block it touches (a block of zeros as a
        // hole): a missing entry means damaged metadata.
        if found.iter().any(|f| !f) {
            return Err(StoreError::CorruptRecord {
                what: "pending version without its blocks",
                source: layout::DecodeError::Value,
            });
        }
        let (data, crcs, seals) = self.read_refs(chunk, p.offset, p.len, &refs).await?;
        drop(guard);
        out.data = data;
        out.segment_crcs = crcs;
        out.segment_seals = seals;
        Ok(out)
    }

    /// Returns the versions and length of `chunk`, `None` if unknown.
    ///
    /// # Errors
    /// Metadata errors.
    pub fn stat(&self, chunk: ChunkId) -> Result<Option<ChunkStat>> {
        Ok(self.load_header(chunk)?.map(|h| ChunkStat {
            committed_version: h.committed_version,
            committed_len: h.committed_len,
            pending_versions: h.pending.iter().map(|p| p.version).collect(),
            chain: h.chain,
        }))
    }

    /// Returns a 64-bit digest of `chunk`'s committed content (from the
    /// stored block CRCs; a hole counts as a zero block), `None` if the
    /// chunk is unknown. Replicas holding the same bytes at the same
    /// version and length have the same digest; a resync compares it as
    /// well as the version, because versions restart at 1 when a chunk is
    /// removed and written again (a replica away during both holds another
    /// version 1).
    ///
    /// # Errors
    /// Metadata errors.
    pub fn digest(&self, chunk: ChunkId) -> Result<Option<u64>> {
        let Some(h) = self.load_header(chunk)? else {
            return Ok(None);
        };
        let blocks = u32::try_from(h.committed_len.div_ceil(BLOCK as u64)).unwrap_or(u32::MAX);
        let entries: HashMap<u32, BlockEntry> =
            self.entries(chunk, 0, blocks)?.into_iter().collect();
        let (mut a, mut b) = (crc32fast::Hasher::new(), crc32fast::Hasher::new());
        for i in 0..blocks {
            let crc = entries
                .get(&i)
                .and_then(|e| e.committed)
                .map_or_else(layout::zero_block_crc, |r| r.crc);
            a.update(&crc.to_le_bytes());
            b.update(&i.to_le_bytes());
            b.update(&crc.to_be_bytes());
        }
        Ok(Some(
            (u64::from(a.finalize()) << 32) | u64::from(b.finalize()),
        ))
    }

    /// Deletes `chunk` (every version, pending ones too) and returns
    /// whether it existed; durable on return. Its blocks become reusable
    /// after the flush.
    ///
    /// # Errors
    /// I/O and metadata errors.
    pub async fn remove(&self, chunk: ChunkId) -> Result<bool> {
        self.check(chunk)?;
        let guard = self.lock(chunk).await?;
        if self.load_header(chunk)?.is_none() {
            return Ok(false);
        }
        let mut batch = MetaBatch::default();
        let mut freed = std::collections::BTreeSet::new();
        self.stage_remove(chunk, &mut batch, &mut freed)?;
        let freed: Vec<u64> = freed.into_iter().collect();
        batch::apply(&self.tree, batch)?;
        self.headers.borrow_mut().remove(&chunk);
        let ticket = self.meta_sync.ticket();
        self.defer_frees(ticket, freed);
        drop(guard);
        self.flush_meta(ticket).await?;
        Ok(true)
    }

    /// Deletes every chunk of `chunks` as [`Self::remove`] does, in one
    /// metadata batch and one flush; returns how many existed. Durable on
    /// return.
    ///
    /// # Errors
    /// A chunk of another shard (nothing is removed), I/O and metadata
    /// errors.
    pub async fn remove_many(&self, chunks: &[ChunkId]) -> Result<usize> {
        let mut sorted = chunks.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        for &c in &sorted {
            self.check(c)?;
        }
        // Locked in id order, so two lists never wait on each other.
        let mut guards = Vec::with_capacity(sorted.len());
        for &c in &sorted {
            guards.push(self.lock(c).await?);
        }
        let mut batch = MetaBatch::default();
        let mut freed = std::collections::BTreeSet::new();
        let mut existed = Vec::new();
        for &chunk in &sorted {
            if self.load_header(chunk)?.is_none() {
                continue;
            }
            self.stage_remove(chunk, &mut batch, &mut freed)?;
            existed.push(chunk);
        }
        let freed: Vec<u64> = freed.into_iter().collect();
        if existed.is_empty() {
            return Ok(0);
        }
        batch::apply(&self.tree, batch)?;
        {
            let mut headers = self.headers.borrow_mut();
            for c in &existed {
                headers.remove(c);
            }
        }
        let ticket = self.meta_sync.ticket();
        self.defer_frees(ticket, freed);
        drop(guards);
        self.flush_meta(ticket).await?;
        Ok(existed.len())
    }

    /// Stages the removal of `chunk`: its header, its blocks and its
    /// clones, adding every block they reference to `freed` (a set: a
    /// block a clone shares with the chunk or another clone is freed once).
    fn stage_remove(
        &self,
        chunk: ChunkId,
        batch: &mut MetaBatch,
        freed: &mut std::collections::BTreeSet<u64>,
    ) -> Result<()> {
        for prefix in [
            layout::chunk_blocks_prefix(chunk),
            layout::clone_blocks_chunk_prefix(chunk),
        ] {
            for kv in self.tree.scan_prefix(prefix) {
                let (k, v) = kv?;
                for (_, e) in decode_group(&v)? {
                    freed.extend(e.refs().map(|r| r.blockno));
                }
                batch.remove(k);
            }
        }
        for kv in self.tree.scan_prefix(layout::clone_prefix(chunk)) {
            let (k, _) = kv?;
            batch.remove(k);
        }
        batch.remove(&layout::header_key(chunk)[..]);
        Ok(())
    }

    /// Returns `chunk`'s clones as (seq, header), oldest first.
    fn clones(&self, chunk: ChunkId) -> Result<Vec<(u64, layout::CloneHeader)>> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(layout::clone_prefix(chunk)) {
            let (k, v) = kv?;
            let Some((_, seq)) = layout::decode_clone_key(&k) else {
                return Err(StoreError::CorruptRecord {
                    what: "clone key",
                    source: layout::DecodeError::Value,
                });
            };
            let h =
                layout::CloneHeader::decode(&v).map_err(|source| StoreError::CorruptRecord {
                    what: "clone header",
                    source,
                })?;
            out.push((seq, h));
        }
        Ok(out)
    }

    /// Reads `[offset, offset + len)` of `chunk` as snapshot `seq` saw it
    /// (DESIGN §3): from the clone with the smallest seq at or above
    /// `seq`, else from the committed version (the chunk has not changed
    /// since). A chunk born under `seq` or later did not exist then.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the chunk did not exist in the
    /// snapshot (a hole to the reader), as [`Self::read`] otherwise.
    pub async fn read_snapshot(
        &self,
        chunk: ChunkId,
        seq: u64,
        offset: u64,
        len: u64,
    ) -> Result<ReadOut> {
        self.check(chunk)?;
        let len = len.min(CHUNK_MAX.saturating_sub(offset));
        let Some(header) = self.load_header(chunk)? else {
            return Err(StoreError::NotFound { chunk });
        };
        if seq <= header.snap_floor {
            return Err(StoreError::NoClones {
                chunk,
                floor: header.snap_floor,
            });
        }
        let clone = self.clones(chunk)?.into_iter().find(|(s, _)| *s >= seq);
        let Some((cseq, ch)) = clone else {
            if seq <= header.birth {
                return Err(StoreError::NotFound { chunk });
            }
            return self.read(chunk, offset, len, ReadMode::Committed).await;
        };
        if seq <= ch.birth {
            return Err(StoreError::NotFound { chunk });
        }
        // Clones never change and their blocks are freed only with them, so
        // no retry is needed for a block moved under the read.
        self.read_version(chunk, (ch.version, ch.len), offset, len, |first, last| {
            self.clone_entries(chunk, cseq, first, last)
        })
        .await
    }

    /// Drops the clones no snapshot reads any more: a clone keyed `s`
    /// serves the snapshots whose seq lies above the previous clone's and
    /// at most `s`, so it goes when none of `live` (the ready snapshots'
    /// seqs, ascending) does. Its blocks are freed unless the committed
    /// or a pending version, or a remaining clone, holds them. Clones keyed
    /// above `upto` (the newest seq when `live` was read) are kept: their
    /// snapshot may be newer than the list.
    /// Returns how many clones were dropped.
    ///
    /// # Errors
    /// Metadata errors.
    pub async fn prune_clones(&self, live: &[u64], upto: u64) -> Result<usize> {
        let mut chunks = Vec::new();
        for kv in self.tree.scan_prefix(layout::clones_prefix()) {
            let (k, _) = kv?;
            if let Some((chunk, _)) = layout::decode_clone_key(&k)
                && chunks.last() != Some(&chunk)
            {
                chunks.push(chunk);
            }
        }
        let mut dropped = 0;
        for chunk in chunks {
            let guard = self.lock(chunk).await?;
            let Some(mut header) = self.load_header(chunk)? else {
                continue;
            };
            let clones = self.clones(chunk)?;
            let mut prev = 0;
            let mut doomed = Vec::new();
            for (i, (seq, _)) in clones.iter().enumerate() {
                if *seq <= upto && !live.iter().any(|t| *t > prev && *t <= *seq) {
                    doomed.push(i);
                }
                prev = *seq;
            }
            if doomed.is_empty() {
                continue;
            }
            let doomed_seqs: Vec<u64> = doomed.iter().map(|&i| clones[i].0).collect();
            let mut batch = MetaBatch::default();
            // A remaining clone reads the groups it has no copy of through
            // the next newer clones (`clone_entries`): it takes over the
            // first copy a dropped one between it and the next remaining
            // clone holds of each such group.
            let mut moved: std::collections::HashSet<u64> = std::collections::HashSet::new();
            for (i, (p, _)) in clones.iter().enumerate() {
                if doomed.contains(&i) {
                    continue;
                }
                let own: std::collections::HashSet<u32> = self
                    .tree
                    .scan_prefix(layout::clone_blocks_prefix(chunk, *p))
                    .filter_map(|kv| kv.ok())
                    .filter_map(|(k, _)| k.get(25..29).and_then(|b| b.try_into().ok()))
                    .map(u32::from_be_bytes)
                    .collect();
                let mut taken: std::collections::HashSet<u32> = std::collections::HashSet::new();
                for (j, (d, _)) in clones.iter().enumerate().skip(i + 1) {
                    if !doomed.contains(&j) {
                        break;
                    }
                    for kv in self
                        .tree
                        .scan_prefix(layout::clone_blocks_prefix(chunk, *d))
                    {
                        let (k, v) = kv?;
                        let Some(g) = k.get(25..29).and_then(|b| b.try_into().ok()) else {
                            continue;
                        };
                        let g = u32::from_be_bytes(g);
                        if own.contains(&g) || !taken.insert(g) {
                            continue;
                        }
                        for (_, e) in decode_group(&v)? {
                            moved.extend(e.refs().map(|r| r.blockno));
                        }
                        batch.insert(&layout::clone_group_key(chunk, *p, g)[..], v.to_vec());
                    }
                }
            }
            // Blocks the chunk's versions or a remaining clone hold stay
            // (a clone being installed by a resync too, and the copies just
            // taken over); each block of a dropped clone is freed once.
            let mut keep = self.held_blocks(chunk, &doomed_seqs)?;
            keep.extend(moved);
            let mut freed = Vec::new();
            for &i in &doomed {
                let seq = clones[i].0;
                for (_, b) in self.clone_own_blocks(chunk, seq)? {
                    if !keep.contains(&b) {
                        freed.push(b);
                    }
                }
                for kv in self
                    .tree
                    .scan_prefix(layout::clone_blocks_prefix(chunk, seq))
                {
                    batch.remove(kv?.0);
                }
                batch.remove(&layout::clone_key(chunk, seq)[..]);
                dropped += 1;
            }
            let remaining = clones
                .iter()
                .enumerate()
                .filter(|(i, _)| !doomed.contains(i))
                .map(|(_, (s, _))| *s)
                .max()
                .unwrap_or(0);
            if header.clone_seq != remaining {
                header.clone_seq = remaining;
                batch.insert(&layout::header_key(chunk)[..], header.encode());
            }
            freed.sort_unstable();
            freed.dedup();
            batch::apply(&self.tree, batch)?;
            self.cache_header(chunk, header);
            let ticket = self.meta_sync.ticket();
            self.defer_frees(ticket, freed);
            drop(guard);
            self.flush_meta(ticket).await?;
        }
        Ok(dropped)
    }

    /// Returns, per snapshot seq of `live` (the ready snapshots, ascending),
    /// the bytes this shard stores for that snapshot alone: blocks of
    /// clones that serve exactly that one snapshot and that no other
    /// version or clone of their chunk holds. Deleting the snapshot frees
    /// them (the next prune). Seqs with nothing exclusive are absent.
    ///
    /// # Errors
    /// Metadata errors.
    pub async fn snapshot_space(
        &self,
        live: &[u64],
    ) -> Result<std::collections::BTreeMap<u64, u64>> {
        let mut out = std::collections::BTreeMap::new();
        let mut chunks = Vec::new();
        for kv in self.tree.scan_prefix(layout::clones_prefix()) {
            let (k, _) = kv?;
            if let Some((chunk, _)) = layout::decode_clone_key(&k)
                && chunks.last() != Some(&chunk)
            {
                chunks.push(chunk);
            }
        }
        for chunk in chunks {
            glommio::yield_if_needed().await;
            let clones = self.clones(chunk)?;
            // How many versions hold each block.
            let mut holders: HashMap<u64, u32> = HashMap::new();
            let mut current = std::collections::HashSet::new();
            for (_, e) in self.entries(chunk, 0, u32::MAX)? {
                current.extend(e.refs().map(|r| r.blockno));
            }
            for b in current {
                *holders.entry(b).or_default() += 1;
            }
            // Each clone's own group copies: group → its blocks.
            let mut copies: Vec<HashMap<u32, Vec<u64>>> = Vec::with_capacity(clones.len());
            for (seq, _) in &clones {
                let mut by_group: HashMap<u32, Vec<u64>> = HashMap::new();
                for (block, b) in self.clone_own_blocks(chunk, *seq)? {
                    *holders.entry(b).or_default() += 1;
                    by_group.entry(layout::group_of(block)).or_default().push(b);
                }
                copies.push(by_group);
            }
            // The snapshots each clone serves.
            let mut prev = 0;
            let served: Vec<Vec<u64>> = clones
                .iter()
                .map(|(seq, _)| {
                    let s = live
                        .iter()
                        .copied()
                        .filter(|t| *t > prev && *t <= *seq)
                        .collect();
                    prev = *seq;
                    s
                })
                .collect();
            // A copy is read by its clone's snapshots and by those of the
            // older clones without a copy of that group, which read
            // through it; it is one snapshot's alone when that is all.
            for (i, groups) in copies.iter().enumerate() {
                for (g, bs) in groups {
                    let mut readers: Vec<u64> = served[i].clone();
                    for j in (0..i).rev() {
                        if copies[j].contains_key(g) {
                            break;
                        }
                        readers.extend(&served[j]);
                    }
                    if let [t] = readers[..] {
                        let own = bs.iter().filter(|b| holders.get(b) == Some(&1)).count();
                        if own > 0 {
                            *out.entry(t).or_default() += own as u64 * BLOCK_SIZE;
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Returns `chunk`'s snapshot state as a resync compares it (floor,
    /// birth, newest write seq, clones oldest first), `None` if unknown.
    ///
    /// # Errors
    /// Metadata errors.
    pub fn clone_list(&self, chunk: ChunkId) -> Result<Option<CloneList>> {
        let Some(h) = self.load_header(chunk)? else {
            return Ok(None);
        };
        let clones = self
            .clones(chunk)?
            .into_iter()
            .map(|(seq, c)| CloneInfo {
                seq,
                version: c.version,
                len: c.len,
                birth: c.birth,
            })
            .collect();
        Ok(Some(CloneList {
            floor: h.snap_floor,
            birth: h.birth,
            seq: h.seq,
            clones,
        }))
    }

    /// Reads `[offset, offset + len)` of exactly the clone keyed `seq`
    /// (a resync copying it), each block checked against its CRC.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when there is no such clone, as
    /// [`Self::read`] otherwise.
    pub async fn read_clone(
        &self,
        chunk: ChunkId,
        seq: u64,
        offset: u64,
        len: u64,
    ) -> Result<ReadOut> {
        self.check(chunk)?;
        let Some((_, ch)) = self.clones(chunk)?.into_iter().find(|(s, _)| *s == seq) else {
            return Err(StoreError::NotFound { chunk });
        };
        self.read_version(chunk, (ch.version, ch.len), offset, len, |first, last| {
            self.clone_entries(chunk, seq, first, last)
        })
        .await
    }

    /// Stores one piece of a sync source's clone `seq` of `chunk` (resync,
    /// [`cairn_proto::frame::Opcode::InstallClone`]). The piece at offset 0
    /// first drops what this replica held of that clone; pieces follow in
    /// offset order, each covering whole block groups but the last; the
    /// clone exists (and is read) only once the piece reaching `clone.len`
    /// is stored. Durable on return.
    ///
    /// Only a clone at or below this replica's snapshot floor is accepted:
    /// above it the replica made its own clones. A block equal to the same
    /// block of the next newer clone shares its storage; none is shared
    /// with the chunk's current version, so the rule that frees a replaced
    /// block unless the newest clone holds it stays exact whatever order
    /// clones arrive in.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] (no such chunk here),
    /// [`StoreError::CloneNotMissing`], [`StoreError::Range`] (a piece out
    /// of order or past the clone's length), as [`Self::write_committed`]
    /// otherwise.
    pub async fn install_clone_piece(
        &self,
        chunk: ChunkId,
        seq: u64,
        clone: layout::CloneHeader,
        piece: WriteIn<'_>,
    ) -> Result<()> {
        self.check(chunk)?;
        let (offset, len) = (piece.offset, piece.data.len() as u64);
        let end = offset.checked_add(len);
        let group_bytes = u64::from(layout::GROUP_BLOCKS) * BLOCK as u64;
        if clone.version == 0
            || clone.len > CHUNK_MAX
            || end.is_none_or(|e| e > clone.len)
            || !offset.is_multiple_of(group_bytes)
        {
            return Err(StoreError::Range { chunk, offset, len });
        }
        let last = end == Some(clone.len);
        let segs: Vec<Segment> = if len == 0 {
            Vec::new()
        } else {
            Self::verify_payload(chunk, &piece)?.0
        };
        let guard = self.lock(chunk).await?;
        let Some(mut header) = self.load_header(chunk)? else {
            return Err(StoreError::NotFound { chunk });
        };
        if seq == 0 || seq > header.snap_floor {
            return Err(StoreError::CloneNotMissing {
                chunk,
                seq,
                floor: header.snap_floor,
            });
        }
        let clones = self.clones(chunk)?;
        let mut batch = MetaBatch::default();
        let mut freed = Vec::new();
        if offset == 0 {
            // Start over: drop this clone's record and groups; their blocks
            // go unless a version or another clone (complete or not) holds
            // them.
            let keep = self.held_blocks(chunk, &[seq])?;
            for kv in self
                .tree
                .scan_prefix(layout::clone_blocks_prefix(chunk, seq))
            {
                let (k, v) = kv?;
                for (_, e) in decode_group(&v)? {
                    freed.extend(e.refs().map(|r| r.blockno).filter(|b| !keep.contains(b)));
                }
                batch.remove(k);
            }
            batch.remove(&layout::clone_key(chunk, seq)[..]);
        } else if clones.iter().any(|(s, _)| *s == seq) {
            // Not the continuation of an install in progress.
            return Err(StoreError::Range { chunk, offset, len });
        }
        // Blocks equal to the next newer clone's share its storage.
        let (first, last_block) = layout::block_range(offset, len);
        let newer: HashMap<u32, BlockRef> = match clones.iter().find(|(s, _)| *s > seq) {
            Some((s, _)) => self
                .clone_own_entries(chunk, *s, first, last_block)?
                .into_iter()
                .filter_map(|(b, e)| e.committed.map(|r| (b, r)))
                .collect(),
            None => HashMap::new(),
        };
        let zero_crc = layout::zero_block_crc();
        let mut refs: Vec<(u32, Option<BlockRef>)> = Vec::with_capacity(segs.len());
        let mut fresh: Vec<(usize, Vec<u8>, BlockRef)> = Vec::new();
        for (i, sg) in segs.iter().enumerate() {
            let mut block = vec![0u8; BLOCK];
            block[sg.in_block..sg.in_block + sg.len]
                .copy_from_slice(&piece.data[sg.buf_off..sg.buf_off + sg.len]);
            let crc = if sg.is_full() {
                piece.segment_crcs[i]
            } else {
                crc32fast::hash(&block)
            };
            let seal = if sg.is_full() {
                piece.seals.get(i).copied().unwrap_or(NO_SEAL)
            } else {
                NO_SEAL
            };
            if crc == zero_crc && seal == NO_SEAL && block.iter().all(|b| *b == 0) {
                refs.push((sg.block, None));
                continue;
            }
            if let Some(r) = newer.get(&sg.block)
                && r.crc == crc
                && r.seal == seal
                && self
                    .read_block(chunk, sg.block, *r)
                    .await
                    .is_ok_and(|b| b == block)
            {
                refs.push((sg.block, Some(*r)));
                continue;
            }
            refs.push((sg.block, None));
            fresh.push((
                refs.len() - 1,
                block,
                BlockRef {
                    blockno: 0,
                    crc,
                    seal,
                },
            ));
        }
        let runs = self.allocate(fresh.len() as u64).await?;
        let stored: Vec<&[u8]> = fresh.iter().map(|(_, b, _)| &b[..]).collect();
        let blocknos = match self.write_blocks(&runs, &stored).await {
            Ok(b) => b,
            Err(e) => {
                self.free_runs(&runs);
                return Err(e);
            }
        };
        for ((at, _, r), blockno) in fresh.iter().zip(blocknos) {
            refs[*at].1 = Some(BlockRef { blockno, ..*r });
        }
        // Every group of the piece gets a record, an empty one for holes: a
        // clone without a group's copy would read it through newer ones.
        if len > 0 {
            for g in layout::group_of(first)..=layout::group_of(last_block - 1) {
                batch.insert(
                    &layout::clone_group_key(chunk, seq, g)[..],
                    layout::encode_group(std::iter::empty()),
                );
            }
        }
        stage_clone_blocks(
            chunk,
            seq,
            refs.into_iter().filter_map(|(b, r)| r.map(|r| (b, r))),
            &mut batch,
        );
        if last {
            batch.insert(&layout::clone_key(chunk, seq)[..], clone.encode());
            header.clone_seq = header.clone_seq.max(seq);
            batch.insert(&layout::header_key(chunk)[..], header.encode());
        }
        // A failed update may be partly applied, its redo record with it,
        // which the next open completes: its blocks stay taken (until the
        // allocator is rebuilt at that open), never reused under it.
        batch::apply(&self.tree, batch)?;
        if last {
            self.cache_header(chunk, header);
        }
        let ticket = self.meta_sync.ticket();
        self.defer_frees(ticket, freed);
        drop(guard);
        self.flush_meta(ticket).await
    }

    /// Lowers `chunk`'s snapshot floor to `floor` and takes the sync
    /// source's `birth` and newest write `seq` once the source has
    /// installed every clone above `floor` here
    /// ([`cairn_proto::frame::Opcode::SnapFloor`]); from then on this
    /// replica serves those snapshots and keeps clones exactly as the
    /// source does. Applied only while the committed version is `version`
    /// and nothing is pending. Durable on return.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::Stale`] (the chunk moved on),
    /// [`StoreError::Pending`], metadata errors.
    pub async fn set_snap_floor(
        &self,
        chunk: ChunkId,
        version: u64,
        floor: u64,
        birth: u64,
        seq: u64,
    ) -> Result<()> {
        self.check(chunk)?;
        let guard = self.lock(chunk).await?;
        let Some(mut header) = self.load_header(chunk)? else {
            return Err(StoreError::NotFound { chunk });
        };
        if header.committed_version != version {
            return Err(StoreError::Stale {
                chunk,
                newest: header.committed_version,
                got: version,
            });
        }
        if !header.pending.is_empty() {
            return Err(StoreError::Pending { chunk });
        }
        if header.snap_floor <= floor {
            return Ok(());
        }
        header.snap_floor = floor;
        header.birth = birth;
        header.seq = seq;
        self.tree
            .insert(&layout::header_key(chunk)[..], header.encode())?;
        self.cache_header(chunk, header);
        let ticket = self.meta_sync.ticket();
        drop(guard);
        self.flush_meta(ticket).await
    }

    /// Returns the block numbers `chunk`'s versions (committed, pending)
    /// and clones hold — every clone's groups, an install in progress
    /// included — except those of the clones keyed in `except`.
    fn held_blocks(
        &self,
        chunk: ChunkId,
        except: &[u64],
    ) -> Result<std::collections::HashSet<u64>> {
        let mut keep = std::collections::HashSet::new();
        for (_, e) in self.entries(chunk, 0, u32::MAX)? {
            keep.extend(e.refs().map(|r| r.blockno));
        }
        for kv in self
            .tree
            .scan_prefix(layout::clone_blocks_chunk_prefix(chunk))
        {
            let (k, v) = kv?;
            let seq = k
                .get(17..25)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes);
            if seq.is_some_and(|s| except.contains(&s)) {
                continue;
            }
            for (_, e) in decode_group(&v)? {
                keep.extend(e.refs().map(|r| r.blockno));
            }
        }
        Ok(keep)
    }

    /// Returns every chunk of this shard (for chunk reports, scrub and
    /// resync), in id order.
    ///
    /// # Errors
    /// Metadata errors.
    pub fn list_chunks(&self) -> Result<Vec<ChunkId>> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(layout::header_prefix()) {
            let (k, _) = kv?;
            match layout::decode_header_key(&k) {
                Some(c) => out.push(c),
                None => {
                    return Err(StoreError::CorruptRecord {
                        what: "header key",
                        source: layout::DecodeError::Value,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Re-reads every stored block of `chunk` (committed and pending
    /// versions, and its clones: the old versions snapshots read) and
    /// checks it against its CRC; a block several versions share is read
    /// once.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], I/O and metadata errors. Bad blocks are
    /// reported in the result, not as an error.
    pub async fn scrub_chunk(&self, chunk: ChunkId) -> Result<ScrubReport> {
        self.check(chunk)?;
        if self.load_header(chunk)?.is_none() {
            return Err(StoreError::NotFound { chunk });
        }
        let mut report = ScrubReport::default();
        let mut seen = std::collections::HashSet::new();
        for (block, e) in self.entries(chunk, 0, u32::MAX)? {
            for r in e.refs() {
                if !seen.insert(r.blockno) {
                    continue;
                }
                report.blocks_checked += 1;
                match self.read_block(chunk, block, r).await {
                    Ok(_) => {}
                    Err(StoreError::Checksum { .. }) => report.bad_blocks.push(block),
                    Err(e) => return Err(e),
                }
            }
        }
        for (seq, _) in self.clones(chunk)? {
            for (block, e) in self.clone_own_entries(chunk, seq, 0, u32::MAX)? {
                let Some(r) = e.committed.filter(|r| seen.insert(r.blockno)) else {
                    continue;
                };
                report.blocks_checked += 1;
                match self.read_block(chunk, block, r).await {
                    Ok(_) => {}
                    Err(StoreError::Checksum { .. }) => report.bad_clone_blocks.push((seq, block)),
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(report)
    }

    /// Returns the shard's request and durability-step progress (see
    /// [`crate::stall`]).
    pub fn progress(&self) -> &Arc<Progress> {
        &self.progress
    }

    /// Returns the space this shard uses.
    pub fn usage(&self) -> SpaceUsage {
        let a = self.alloc.borrow();
        SpaceUsage {
            used_bytes: a.used_blocks() * BLOCK_SIZE,
            file_bytes: a.total_blocks() * BLOCK_SIZE,
            deferred_bytes: a.deferred_blocks() * BLOCK_SIZE,
            capacity_bytes: self.capacity_bytes,
        }
    }

    /// Returns how many syncs ran: (data `fdatasync`s, metadata flushes).
    /// With N concurrent writers these grow slower than the writes.
    pub fn sync_counts(&self) -> (u64, u64) {
        (self.data_sync.syncs(), self.meta_sync.syncs())
    }

    /// Flushes metadata and closes the data file.
    ///
    /// # Errors
    /// I/O and metadata errors.
    pub async fn close(self) -> Result<()> {
        self.flush_meta(self.meta_sync.ticket()).await?;
        let file = Rc::try_unwrap(self.file).map_err(|_| StoreError::Io {
            op: "close data file",
            source: io::Error::other("data file still in use"),
        })?;
        file.close()
            .await
            .map_err(StoreError::glommio("close data file"))?;
        Ok(())
    }
}

/// Stages the block groups of `chunk`'s clone `seq` holding `refs`
/// (block index → stored block, ascending), one group record each.
fn stage_clone_blocks(
    chunk: ChunkId,
    seq: u64,
    refs: impl Iterator<Item = (u32, BlockRef)>,
    batch: &mut MetaBatch,
) {
    let mut groups: std::collections::BTreeMap<u32, Vec<(u32, BlockEntry)>> =
        std::collections::BTreeMap::new();
    for (block, r) in refs {
        groups.entry(layout::group_of(block)).or_default().push((
            block,
            BlockEntry {
                committed: Some(r),
                pending: Vec::new(),
            },
        ));
    }
    for (g, es) in &groups {
        batch.insert(
            &layout::clone_group_key(chunk, seq, *g)[..],
            layout::encode_group(es.iter().map(|(b, e)| (*b, e))),
        );
    }
}

/// Whether committing a mutation made under snapshot seq `seq` (with
/// `no_clone` when its volume has no snapshot) first keeps `header`'s
/// committed version as a clone: the chunk has one and no committed
/// mutation was made under `seq` or a newer one.
fn needs_clone(header: &ChunkHeader, seq: u64, no_clone: bool) -> bool {
    !no_clone && seq > header.seq && header.committed_version > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(version: u64, offset: u64, len: u64, new_len: u64) -> Pending {
        Pending {
            version,
            offset,
            len,
            new_len,
            digest: 0,
            seq: 0,
            no_clone: false,
        }
    }

    #[test]
    fn dirty_ranges_follow_pending_writes_and_length_changes() {
        let h = ChunkHeader {
            committed_version: 1,
            committed_len: 8192,
            pending: vec![pending(2, 100, 10, 8192)],
            chain: 0,
            ..ChunkHeader::default()
        };
        assert!(range_is_dirty(&h, 0, 4096));
        assert!(range_is_dirty(&h, 105, 1));
        assert!(!range_is_dirty(&h, 110, 4000));
        assert!(!range_is_dirty(&h, 4096, 4096));
        // An append makes only the new range dirty.
        let h = ChunkHeader {
            committed_version: 1,
            committed_len: 8192,
            pending: vec![pending(2, 8192, 4096, 12288)],
            chain: 0,
            ..ChunkHeader::default()
        };
        assert!(!range_is_dirty(&h, 0, 8192));
        assert!(range_is_dirty(&h, 8000, 4096));
        // A shrinking truncate dirties what it cuts off.
        let h = ChunkHeader {
            committed_version: 1,
            committed_len: 8192,
            pending: vec![pending(2, 5000, 0, 5000)],
            chain: 0,
            ..ChunkHeader::default()
        };
        assert!(!range_is_dirty(&h, 0, 5000));
        assert!(range_is_dirty(&h, 4999, 2));
    }

    #[test]
    fn a_shard_completes_an_interrupted_metadata_update_when_it_opens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        Target::format(&path, 1).expect("format");
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let chunk = ChunkId {
                    object: cairn_proto::ids::ObjectId(7),
                    index: 0,
                };
                let data = vec![5u8; 8192];
                let crcs = cairn_proto::frame::segment_crcs(0, &data);
                {
                    let t = Target::open(&path).expect("open");
                    let s = t.open_shard(0).await.expect("shard");
                    s.write_committed(chunk, 1, 0, &data, &crcs)
                        .await
                        .expect("write");
                    // What a crash in the middle of removing the chunk
                    // leaves: the update's record, none of its writes.
                    let mut b = MetaBatch::default();
                    b.remove(layout::header_key(chunk));
                    b.remove(layout::group_key(chunk, 0));
                    s.tree
                        .insert(batch::REDO_KEY, batch::record(&b))
                        .expect("record");
                    s.tree.flush().expect("flush");
                    assert!(s.stat(chunk).expect("stat").is_some());
                }
                let t = Target::open(&path).expect("reopen");
                let s = t.open_shard(0).await.expect("shard");
                assert!(
                    s.stat(chunk).expect("stat").is_none(),
                    "the interrupted removal was completed"
                );
                assert_eq!(s.tree.get(batch::REDO_KEY).expect("get"), None);
            })
            .expect("executor")
            .join()
            .expect("join");
    }

    #[test]
    fn digest_tells_retries_from_rewrites() {
        assert_eq!(digest_of(1, 2, &[3, 4]), digest_of(1, 2, &[3, 4]));
        assert_ne!(digest_of(1, 2, &[3, 4]), digest_of(1, 2, &[3, 5]));
        assert_ne!(digest_of(0, 2, &[3, 4]), digest_of(1, 2, &[3, 4]));
    }
}
