//! The client's block cache (DESIGN §7): whole 4 KiB blocks of files in a
//! memory tier, with an optional local-SSD tier behind it, and the counters
//! `cairn cache stats` shows. [`crate::file`] asks it before reading from
//! chunkservers, fills it with what it fetched (read-ahead included) and
//! invalidates what the client itself wrote. Nothing here talks to the
//! network.
//!
//! # Keys: close-to-open consistency for free
//! A [`BlockKey`] carries the file's attribute version from when it was
//! opened (`generation`). A file changed by another client gets a new
//! version, so the next open reads under a new generation and can never
//! hit blocks cached under the old one; old entries simply age out. The
//! client's own writes are not covered by that (the generation does not
//! change while the file is open), hence [`BlockCache::invalidate`].
//! A full block never changes under a given generation except through
//! this client's writes. A file's short last block may still grow (a
//! truncate that extends the file writes nothing, so it invalidates
//! nothing): the client keeps it at exactly the file's length and answers
//! it only while the file still has that length ([`BlockCache::read_in_memory`]'s
//! `span`, and the same check in the client's reads); it stays in memory
//! (the SSD tier's segments hold whole blocks).
//!
//! # Memory tier: sharded CLOCK
//! Blocks live in 16 shards (fewer for tiny caches, so each shard keeps a
//! useful number of blocks) chosen by a mixed hash of the key, each a
//! `std::sync::Mutex` held only for a map lookup and a few field writes.
//! Every entry is exactly one block, so a shard's byte budget
//! (`memory_bytes / shards`) is a fixed number of slots. Eviction is CLOCK
//! (second chance): a hit sets a referenced bit, the hand clears bits and
//! evicts the first unreferenced slot. A hit costs one map lookup, one bit
//! write and a `Bytes` reference-count increment (no allocation, no list
//! relinking as in LRU, which would make every hit a write to shared
//! pointers); an insert is amortized O(1) because the hand clears at most
//! one full turn of bits before it finds a victim. CLOCK also resists
//! scans: a streaming read inserts blocks that are never referenced, so
//! they go first and a block read again and again stays.
//!
//! Counters are `AtomicU64` with relaxed ordering: they are statistics,
//! never used to make decisions.
//!
//! ## Memory accounting
//! The client's reads copy each block in ([`BlockCache::insert_copy`]),
//! so every cached block owns its 4 KiB and the tier's count (`BLOCK`
//! bytes per block) is exact: a zero-copy slice would keep its whole read
//! buffer alive as long as any one block of it stayed cached. The copies
//! go into the buffers of blocks evicted from the same shard when nobody
//! else holds them, so a full tier takes new blocks without allocating.
//! Blocks read back from the SSD tier own their 4 KiB too.
//!
//! # SSD tier: a log-structured victim cache
//! With [`CacheConfig::dir`] set, blocks evicted from memory are admitted
//! to a local SSD tier, so a working set that fits in memory never costs
//! an SSD write, and one that does not still avoids the network. A block
//! found there is promoted back to memory (and stays on the SSD, so its
//! next eviction is not written again).
//!
//! * Layout: `<dir>/proc-<pid>/seg-<n>` segment files (up to 32 MiB, a
//!   quarter of `dir_bytes` for small limits), written append-only. Each
//!   process has its own subdirectory (a second cache in the same process
//!   gets `proc-<pid>-<k>`), so processes sharing a directory never see
//!   each other's files. The tier starts empty: directories of processes
//!   no longer alive (`/proc/<pid>` gone) and our own leftovers are
//!   removed at start, ours again on drop. Nothing is fsynced: the data is
//!   a cache and is wiped at startup anyway.
//! * Writes: `insert` never does I/O. An evicted block is handed to a
//!   background thread through a bounded `sync_channel`; if it is full the
//!   admission is dropped (the block was about to be forgotten anyway).
//!   The thread writes batches with one positioned write each.
//! * Index: `HashMap<BlockKey, (segment, offset, crc32)>` behind a mutex.
//!   Past `dir_bytes` the oldest whole segment is deleted and its entries
//!   dropped (counted as evictions): no compaction, no free-space map.
//!   Invalidation only removes index entries; space comes back when the
//!   segment goes.
//! * Reads: a positioned read on a file handle kept per segment (a
//!   deleted segment stays readable through it), then the CRC32 recorded
//!   at write time is checked. A mismatch or an I/O error is a miss and
//!   drops the entry: a local disk that lies must cost performance, never
//!   correctness.
//! * Failures: a write error (disk full, directory removed) is logged once
//!   at `warn` and pauses admissions for a while; reads keep working.
//!   Nothing panics.
//!
//! ## Invalidation vs. blocks in flight
//! An evicted block may sit in the channel while the client writes the
//! same range. Admissions therefore carry the invalidation epoch read
//! under the shard lock at eviction time; `invalidate` holds the index
//! lock while it removes index and memory entries and only then bumps the
//! epoch and records the range. The writer, under the index lock, drops
//! an admission older than a recorded range covering it (or older than
//! the oldest record kept, to stay bounded). Promotion from the SSD
//! re-checks the index entry under the index lock for the same reason.
//! Lock order: index, then shard.
//!
//! # Stats files
//! Each cache with a directory writes its [`CacheStats`] as JSON to
//! `<dir>/stats-<pid>.json` (write a temporary file, then rename, so
//! readers never see half a file). [`collect_stats`] reads the files of
//! live processes and deletes the others. The file is plain `CacheStats`
//! rather than a versioned envelope: it is rewritten every few seconds by
//! the process that owns it, and `#[serde(default)]` plus serde's
//! ignoring of unknown fields let older and newer `cairn` read it.
//! Liveness is `/proc/<pid>`; where there is no `/proc` every process is
//! taken as alive (nothing is deleted). Processes in another PID
//! namespace sharing the directory would look dead: give containers
//! their own directory.
//!
//! All errors are local file-system errors, so the fallible operations
//! return `std::io::Result`; [`CacheConfigError`] covers configuration.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Cache block size: the cache holds whole 4 KiB blocks of files (short
/// blocks at EOF are never cached).
pub const BLOCK: u64 = 4096;

/// [`BLOCK`] as a length.
const BLOCK_LEN: usize = 4096;

/// Most shards of the memory tier.
const MAX_SHARDS: u64 = 16;

/// Fewest blocks a shard should hold; tiny caches use fewer shards.
const MIN_SHARD_BLOCKS: u64 = 64;

/// Largest SSD segment file.
const MAX_SEGMENT: u64 = 32 << 20;

/// Admissions waiting for the SSD writer (each pins one block).
const ADMIT_QUEUE: usize = 1024;

/// Blocks the SSD writer writes with one positioned write.
const WRITE_BATCH: usize = 64;

/// How long admissions are dropped after an SSD write failed.
const WRITE_PAUSE: Duration = Duration::from_secs(10);

/// Invalidated ranges kept for filtering admissions in flight.
const MAX_RECORDS: usize = 1024;

/// Ranges up to this many blocks are invalidated key by key; longer ones
/// (truncating a big file) scan the tiers instead.
const INVALIDATE_BY_KEY: u64 = 4096;

/// Buffers of evicted blocks a memory shard keeps for the next copies
/// ([`BlockCache::insert_copy`]): once the tier is full, each insert
/// evicts one, so a few are enough.
const SPARE_BUFFERS: usize = 4;

/// Caches with a directory created by this process (names the second and
/// later ones apart); the lock also serializes their directory setup.
static INSTANCES: Mutex<u64> = Mutex::new(0);

/// One cached block: a file's object, the generation it was opened under,
/// and the block number (file offset / [`BLOCK`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockKey {
    /// The file's object id.
    pub object: u64,
    /// The file's attribute version when it was opened, so a file changed
    /// elsewhere never hits old entries (close-to-open consistency).
    pub generation: u64,
    /// File offset / [`BLOCK`].
    pub block: u64,
}

/// Block cache settings (`[cache]` in the client configuration).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct CacheConfig {
    /// Memory tier size in bytes (default 64 MiB); 0 disables the memory
    /// tier.
    pub memory_bytes: u64,
    /// Local SSD cache directory shared by the processes of a machine;
    /// `None` (the default) means no SSD tier and no published stats.
    pub dir: Option<PathBuf>,
    /// Size limit of this process's SSD tier in bytes (default 1 GiB).
    pub dir_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            dir: None,
            dir_bytes: 1 << 30,
        }
    }
}

/// A [`CacheConfig`] that cannot work as meant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheConfigError {
    /// `memory-bytes` is neither 0 nor at least one block.
    #[error("cache memory-bytes {bytes} holds no block (4096 bytes); use 0 to disable it")]
    MemoryBelowBlock {
        /// The configured size.
        bytes: u64,
    },
    /// A cache directory is set but `dir-bytes` holds no block.
    #[error("cache dir-bytes {bytes} holds no block (4096 bytes)")]
    DirBelowBlock {
        /// The configured size.
        bytes: u64,
    },
}

impl CacheConfig {
    /// Checks the sizes.
    ///
    /// # Errors
    /// A tier configured too small to hold one block ([`BlockCache::new`]
    /// would run it as disabled).
    pub fn validate(&self) -> Result<(), CacheConfigError> {
        if self.memory_bytes != 0 && self.memory_bytes < BLOCK {
            return Err(CacheConfigError::MemoryBelowBlock {
                bytes: self.memory_bytes,
            });
        }
        if self.dir.is_some() && self.dir_bytes < BLOCK {
            return Err(CacheConfigError::DirBelowBlock {
                bytes: self.dir_bytes,
            });
        }
        Ok(())
    }
}

/// Counters of one cache tier.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct TierStats {
    /// Configured size in bytes.
    pub capacity_bytes: u64,
    /// Bytes held: blocks × [`BLOCK`] in memory (see the module docs on
    /// slices), segment bytes on disk for the SSD tier.
    pub used_bytes: u64,
    /// Blocks held.
    pub blocks: u64,
    /// Lookups answered by this tier.
    pub hits: u64,
    /// Lookups this tier could not answer (the SSD tier is asked only
    /// after a memory miss).
    pub misses: u64,
    /// Blocks stored.
    pub inserts: u64,
    /// Blocks dropped for space.
    pub evictions: u64,
}

impl TierStats {
    /// Returns hits / (hits + misses), 0 when there were no lookups.
    pub fn hit_ratio(&self) -> f64 {
        ratio(self.hits, self.hits.saturating_add(self.misses))
    }

    fn add(&mut self, o: &TierStats) {
        self.capacity_bytes = self.capacity_bytes.saturating_add(o.capacity_bytes);
        self.used_bytes = self.used_bytes.saturating_add(o.used_bytes);
        self.blocks = self.blocks.saturating_add(o.blocks);
        self.hits = self.hits.saturating_add(o.hits);
        self.misses = self.misses.saturating_add(o.misses);
        self.inserts = self.inserts.saturating_add(o.inserts);
        self.evictions = self.evictions.saturating_add(o.evictions);
    }
}

/// Counters of one process's block cache (what `stats-<pid>.json` holds).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CacheStats {
    /// The process (0 in a [`CacheStats::merge`] result).
    pub pid: u32,
    /// When the counters were read, milliseconds since the Unix epoch.
    pub updated_unix_ms: u64,
    /// The memory tier.
    pub memory: TierStats,
    /// The SSD tier, if configured.
    pub ssd: Option<TierStats>,
    /// Blocks read-ahead fetched into its streams' own buffers
    /// ([`BlockCache::count_prefetch`]).
    pub prefetched_blocks: u64,
    /// Of those, blocks the stream then read.
    pub prefetch_hits: u64,
}

impl CacheStats {
    /// Returns prefetch hits / prefetched blocks, 0 when nothing was
    /// prefetched.
    pub fn prefetch_hit_ratio(&self) -> f64 {
        ratio(self.prefetch_hits, self.prefetched_blocks)
    }

    /// Returns the sum of several processes' stats (for `cairn cache
    /// stats` over a shared directory): counters and capacities add up,
    /// `pid` is 0, `updated_unix_ms` is the latest, and `ssd` is present
    /// if any process has an SSD tier.
    pub fn merge(items: &[CacheStats]) -> CacheStats {
        let mut out = CacheStats::default();
        for s in items {
            out.updated_unix_ms = out.updated_unix_ms.max(s.updated_unix_ms);
            out.memory.add(&s.memory);
            if let Some(t) = &s.ssd {
                out.ssd.get_or_insert_with(TierStats::default).add(t);
            }
            out.prefetched_blocks = out.prefetched_blocks.saturating_add(s.prefetched_blocks);
            out.prefetch_hits = out.prefetch_hits.saturating_add(s.prefetch_hits);
        }
        out
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its structure consistent or, where it
    // could not, lookups tolerate the gap; a panic elsewhere must not take
    // the cache down with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn read(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// Logs the first occurrence of a kind of failure at `warn`, later ones at
/// `debug` (a failing disk must not flood the log from the data path).
fn warn_once(flag: &AtomicBool, what: &str, err: &dyn fmt::Display) {
    if flag.swap(true, Ordering::Relaxed) {
        tracing::debug!(error = %err, "block cache: {what}");
    } else {
        tracing::warn!(error = %err, "block cache: {what} (further ones logged at debug)");
    }
}

/// Returns a well-mixed hash of `key` (splitmix64's finalizer): the shard
/// choice must spread consecutive blocks of one file.
fn mix(key: &BlockKey) -> u64 {
    let mut h = key.object.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ key.generation.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ key.block;
    h ^= h >> 30;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

/// The maps' hasher for [`BlockKey`]s: a multiply-rotate per word and the
/// finalizer of [`mix`]. The keys are ids and block numbers the client
/// makes, so there is no adversary to resist; the default SipHash was 3%
/// of the mount's worker samples on cold 128 KiB reads (`perf`), a hash
/// per block on every insert, eviction and hit.
#[derive(Debug, Default, Clone, Copy)]
struct KeyHash;

impl BuildHasher for KeyHash {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

/// The state of a [`KeyHash`].
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(23) ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 30;
        h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 27;
        h = h.wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^ (h >> 31)
    }
}

/// The length block `block` of a file of `file_len` bytes is cached at:
/// a whole block, or the file's short last block at exactly its length
/// (0: past the end). A cached block of another length is not the file's
/// as it is now.
pub fn cached_len(file_len: u64, block: u64) -> u64 {
    file_len.saturating_sub(block * BLOCK).min(BLOCK)
}

// ------------------------------------------------------------ memory tier

/// A cached block in a memory shard.
struct Slot {
    key: BlockKey,
    data: Bytes,
    /// CLOCK's second-chance bit, set by hits.
    referenced: bool,
    /// Came from the SSD tier (and is still there), or must never go
    /// there (plaintext of an encrypted file): not admitted on eviction.
    on_ssd: bool,
}

/// One memory shard: a map into a fixed ring of slots swept by the hand.
#[derive(Default)]
struct Shard {
    map: HashMap<BlockKey, usize, KeyHash>,
    slots: Vec<Option<Slot>>,
    /// Empty slots below `slots.len()` (left by invalidation).
    free: Vec<usize>,
    hand: usize,
    capacity: usize,
    /// Empty `BLOCK`-sized buffers of evicted blocks nobody else held,
    /// for [`BlockCache::insert_copy`].
    spare: Vec<BytesMut>,
}

/// What an insert into a shard did.
enum Inserted {
    /// The key was cached already; its data was replaced.
    Present,
    /// A new entry, possibly at the cost of an evicted one.
    New(Option<Slot>),
}

impl Shard {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    /// Returns the block, marked used.
    fn get(&mut self, key: &BlockKey) -> Option<Bytes> {
        let i = *self.map.get(key)?;
        let s = self.slots.get_mut(i)?.as_mut()?;
        s.referenced = true;
        Some(s.data.clone())
    }

    fn insert(&mut self, slot: Slot) -> Inserted {
        if let Some(&i) = self.map.get(&slot.key) {
            if let Some(Some(s)) = self.slots.get_mut(i) {
                s.data = slot.data;
                return Inserted::Present;
            }
            self.map.remove(&slot.key);
        }
        let (i, victim) = self.claim();
        self.map.insert(slot.key, i);
        if let Some(s) = self.slots.get_mut(i) {
            *s = Some(slot);
        }
        Inserted::New(victim)
    }

    /// Returns a slot index to fill and what it held: a free slot, a new
    /// one while under capacity, or CLOCK's victim.
    fn claim(&mut self) -> (usize, Option<Slot>) {
        if let Some(i) = self.free.pop() {
            return (i, None);
        }
        if self.slots.len() < self.capacity.max(1) {
            self.slots.push(None);
            return (self.slots.len() - 1, None);
        }
        let n = self.slots.len();
        // One full turn clears every bit, so this ends within n + 1 steps;
        // `spins` makes that explicit.
        let mut spins = 0;
        loop {
            let i = self.hand % n;
            self.hand = (i + 1) % n;
            let slot = &mut self.slots[i]; // i < n = len, n >= 1
            match slot {
                Some(s) if s.referenced && spins < n => {
                    s.referenced = false;
                    spins += 1;
                }
                _ => {
                    let victim = slot.take();
                    if let Some(v) = &victim {
                        self.map.remove(&v.key);
                    }
                    return (i, victim);
                }
            }
        }
    }

    /// Keeps the buffer of an evicted block for a later copy, when nobody
    /// else holds it (a reader's `Bytes`, the SSD tier's queue) and it is
    /// a block's own allocation (not a slice of a larger buffer).
    fn recycle(&mut self, data: Bytes) {
        if self.spare.len() < SPARE_BUFFERS
            && let Ok(mut b) = data.try_into_mut()
            && b.capacity() == BLOCK_LEN
        {
            b.clear();
            self.spare.push(b);
        }
    }

    fn remove(&mut self, key: &BlockKey) {
        if let Some(i) = self.map.remove(key)
            && let Some(slot) = self.slots.get_mut(i)
            && slot.take().is_some()
        {
            self.free.push(i);
        }
    }

    fn remove_where(&mut self, mut pred: impl FnMut(&BlockKey) -> bool) {
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|s| pred(&s.key))
                && let Some(s) = slot.take()
            {
                self.map.remove(&s.key);
                self.free.push(i);
            }
        }
    }
}

/// The memory tier: shards plus counters.
struct Memory {
    shards: Box<[Mutex<Shard>]>,
    capacity_bytes: u64,
    hits: AtomicU64,
    misses: AtomicU64,
    inserts: AtomicU64,
    evictions: AtomicU64,
}

impl Memory {
    fn new(capacity_bytes: u64) -> Self {
        let blocks = capacity_bytes / BLOCK;
        let shards = if blocks == 0 {
            0
        } else {
            let n = (blocks / MIN_SHARD_BLOCKS).clamp(1, MAX_SHARDS);
            // Largest power of two <= n, so the shard is a mask away.
            1u64 << (63 - n.leading_zeros())
        };
        let shards = (0..shards)
            .map(|i| {
                let cap = blocks / shards + u64::from(i < blocks % shards);
                Mutex::new(Shard::with_capacity(
                    usize::try_from(cap).unwrap_or(usize::MAX),
                ))
            })
            .collect();
        Self {
            shards,
            capacity_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            inserts: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// Returns the shard of `key`, `None` when the tier is disabled.
    fn shard(&self, key: &BlockKey) -> Option<&Mutex<Shard>> {
        // The length is a power of two; the high half of the hash picks.
        let i = usize::try_from(mix(key) >> 32).unwrap_or(0) & (self.shards.len().wrapping_sub(1));
        self.shards.get(i)
    }
}

// ------------------------------------------------------------ SSD tier

/// Where a block lives on the SSD tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    segment: u64,
    offset: u64,
    crc: u32,
}

/// One segment file.
struct Segment {
    id: u64,
    file: Arc<File>,
    /// Bytes written and indexed.
    len: u64,
    /// Keys written here (some may since point elsewhere or be gone).
    keys: Vec<BlockKey>,
}

/// A range invalidated at `epoch`.
struct Record {
    epoch: u64,
    object: u64,
    generation: u64,
    first: u64,
    end: u64,
}

impl Record {
    fn covers(&self, k: &BlockKey) -> bool {
        k.object == self.object
            && k.generation == self.generation
            && (self.first..self.end).contains(&k.block)
    }
}

/// The SSD tier's index (behind one mutex).
#[derive(Default)]
struct Index {
    map: HashMap<BlockKey, Loc, KeyHash>,
    /// Oldest first; ids are consecutive; the last one is being written.
    segments: VecDeque<Segment>,
    /// Sum of the segments' lengths.
    bytes: u64,
    /// Recent invalidations, oldest first.
    records: VecDeque<Record>,
    /// Epoch of the newest record dropped from `records`.
    floor: u64,
}

impl Index {
    fn file(&self, segment: u64) -> Option<&Arc<File>> {
        let first = self.segments.front()?.id;
        let i = usize::try_from(segment.checked_sub(first)?).ok()?;
        self.segments
            .get(i)
            .filter(|s| s.id == segment)
            .map(|s| &s.file)
    }

    /// Removes the entry of `key` if it is still `loc`.
    fn remove_if(&mut self, key: &BlockKey, loc: &Loc) {
        if self.map.get(key) == Some(loc) {
            self.map.remove(key);
        }
    }
}

/// Returns whether an admission of `key` evicted at `epoch` may hold data
/// invalidated since (`records` and `floor` of the [`Index`]).
fn stale(records: &VecDeque<Record>, floor: u64, key: &BlockKey, epoch: u64) -> bool {
    epoch < floor
        || records
            .iter()
            .rev()
            .take_while(|r| r.epoch > epoch)
            .any(|r| r.covers(key))
}

/// A block on its way to the SSD writer.
struct Admission {
    key: BlockKey,
    data: Bytes,
    /// Invalidation epoch when it left memory.
    epoch: u64,
}

/// State shared by the cache and its SSD writer thread.
struct SsdShared {
    index: Mutex<Index>,
    /// Invalidation epoch; changed only under the index lock.
    epoch: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    inserts: AtomicU64,
    evictions: AtomicU64,
    /// Admissions sent and not yet processed.
    pending: AtomicU64,
    warned_write: AtomicBool,
    warned_read: AtomicBool,
    warned_corrupt: AtomicBool,
}

/// The SSD tier of one cache.
struct Ssd {
    /// The configured directory (stats files live here).
    root: PathBuf,
    /// This cache's subdirectory of `root`.
    dir: PathBuf,
    /// File name of this cache's stats file in `root`.
    stats_name: String,
    capacity: u64,
    shared: Arc<SsdShared>,
    /// `None` once dropping, or when `capacity` holds no block.
    tx: Option<SyncSender<Admission>>,
    writer: Option<JoinHandle<()>>,
    /// Serializes `publish_stats` (they share a temporary file).
    publishing: Mutex<()>,
}

impl Ssd {
    fn open(root: &Path, capacity: u64) -> io::Result<Ssd> {
        fs::create_dir_all(root)?;
        let me = std::process::id();
        let (dir, stats_name) = {
            let mut instances = lock(&INSTANCES);
            let instance = *instances;
            *instances += 1;
            clean_dir(root, me, instance)?;
            let suffix = if instance == 0 {
                String::new()
            } else {
                format!("-{instance}")
            };
            let dir = root.join(format!("proc-{me}{suffix}"));
            fs::create_dir(&dir)?;
            (dir, format!("stats-{me}{suffix}.json"))
        };
        let shared = Arc::new(SsdShared {
            index: Mutex::new(Index::default()),
            epoch: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            inserts: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            warned_write: AtomicBool::new(false),
            warned_read: AtomicBool::new(false),
            warned_corrupt: AtomicBool::new(false),
        });
        let (tx, writer) = if capacity >= BLOCK {
            let (tx, rx) = std::sync::mpsc::sync_channel(ADMIT_QUEUE);
            let writer = Writer {
                shared: shared.clone(),
                dir: dir.clone(),
                capacity,
                segment_size: ((capacity / 4).min(MAX_SEGMENT) / BLOCK * BLOCK).max(BLOCK),
                active: None,
                next_id: 0,
                paused_until: None,
                buf: Vec::new(),
                crcs: Vec::new(),
            };
            let handle = std::thread::Builder::new()
                .name("cairn-cache-ssd".into())
                .spawn(move || writer.run(rx));
            match handle {
                Ok(h) => (Some(tx), Some(h)),
                Err(e) => {
                    let _ = fs::remove_dir_all(&dir);
                    return Err(e);
                }
            }
        } else {
            (None, None)
        };
        tracing::debug!(dir = %dir.display(), capacity, "block cache: SSD tier started");
        Ok(Ssd {
            root: root.to_path_buf(),
            dir,
            stats_name,
            capacity,
            shared,
            tx,
            writer,
            publishing: Mutex::new(()),
        })
    }

    /// Hands a block evicted from memory to the writer, unless the queue
    /// is full.
    fn admit(&self, key: BlockKey, data: Bytes, epoch: u64) -> bool {
        let Some(tx) = &self.tx else { return false };
        self.shared.pending.fetch_add(1, Ordering::SeqCst);
        let a = Admission { key, data, epoch };
        match tx.try_send(a) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.pending.fetch_sub(1, Ordering::SeqCst);
                false
            }
        }
    }

    /// Returns the block of `key` and where it was read, if the tier holds
    /// it intact.
    fn read(&self, key: &BlockKey) -> Option<(Bytes, Loc)> {
        let (file, loc) = {
            let idx = lock(&self.shared.index);
            let loc = *idx.map.get(key)?;
            (idx.file(loc.segment)?.clone(), loc)
        };
        let mut buf = vec![0u8; BLOCK_LEN];
        let intact = match file.read_exact_at(&mut buf, loc.offset) {
            Ok(()) if crc32fast::hash(&buf) == loc.crc => true,
            Ok(()) => {
                let e = format!(
                    "segment {} offset {}: CRC mismatch",
                    loc.segment, loc.offset
                );
                warn_once(&self.shared.warned_corrupt, "corrupt SSD block dropped", &e);
                false
            }
            Err(e) => {
                warn_once(&self.shared.warned_read, "SSD read failed", &e);
                false
            }
        };
        if !intact {
            lock(&self.shared.index).remove_if(key, &loc);
            return None;
        }
        Some((Bytes::from(buf), loc))
    }
}

/// The SSD writer thread's state.
struct Writer {
    shared: Arc<SsdShared>,
    dir: PathBuf,
    capacity: u64,
    segment_size: u64,
    /// The segment being appended to: id, file, bytes written.
    active: Option<(u64, Arc<File>, u64)>,
    next_id: u64,
    paused_until: Option<Instant>,
    buf: Vec<u8>,
    crcs: Vec<u32>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Admission>) {
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        // Ends when the cache drops its sender.
        while let Ok(first) = rx.recv() {
            batch.push(first);
            while batch.len() < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(a) => batch.push(a),
                    Err(_) => break,
                }
            }
            let paused = self.paused_until.is_some_and(|t| Instant::now() < t);
            if !paused {
                self.paused_until = None;
                if let Err(e) = self.write(&batch) {
                    warn_once(
                        &self.shared.warned_write,
                        "SSD write failed, admissions paused",
                        &e,
                    );
                    self.paused_until = Some(Instant::now() + WRITE_PAUSE);
                }
            }
            let n = batch.len() as u64;
            batch.clear();
            self.shared.pending.fetch_sub(n, Ordering::SeqCst);
        }
    }

    fn write(&mut self, batch: &[Admission]) -> io::Result<()> {
        let mut rest = batch;
        while !rest.is_empty() {
            let (id, file, len) = self.segment()?;
            let room = usize::try_from((self.segment_size - len) / BLOCK).unwrap_or(usize::MAX);
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.buf.clear();
            self.crcs.clear();
            for a in now {
                self.buf.extend_from_slice(&a.data);
                self.crcs.push(crc32fast::hash(&a.data));
            }
            file.write_all_at(&self.buf, len)?;
            let written = self.buf.len() as u64;
            let mut inserted = 0;
            {
                let mut guard = lock(&self.shared.index);
                let idx = &mut *guard;
                if let Some(seg) = idx.segments.back_mut().filter(|s| s.id == id) {
                    for ((a, crc), offset) in
                        now.iter().zip(&self.crcs).zip((len..).step_by(BLOCK_LEN))
                    {
                        if stale(&idx.records, idx.floor, &a.key, a.epoch) {
                            continue;
                        }
                        let loc = Loc {
                            segment: id,
                            offset,
                            crc: *crc,
                        };
                        idx.map.insert(a.key, loc);
                        seg.keys.push(a.key);
                        inserted += 1;
                    }
                    seg.len += written;
                    idx.bytes += written;
                }
            }
            bump(&self.shared.inserts, inserted);
            if let Some(active) = &mut self.active {
                active.2 = len + written;
            }
            rest = later;
        }
        Ok(())
    }

    /// Returns the segment to append to, starting a new one (and dropping
    /// the oldest ones past the size limit) when the current one is full.
    fn segment(&mut self) -> io::Result<(u64, Arc<File>, u64)> {
        if let Some((id, file, len)) = &self.active
            && *len + BLOCK <= self.segment_size
        {
            return Ok((*id, file.clone(), *len));
        }
        let id = self.next_id;
        let file = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(self.dir.join(format!("seg-{id}")))?,
        );
        let mut dropped = Vec::new();
        let mut evicted = 0;
        {
            let mut guard = lock(&self.shared.index);
            let idx = &mut *guard;
            while idx.bytes + self.segment_size > self.capacity {
                let Some(old) = idx.segments.pop_front() else {
                    break;
                };
                idx.bytes -= old.len;
                for k in &old.keys {
                    if idx.map.get(k).is_some_and(|l| l.segment == old.id) {
                        idx.map.remove(k);
                        evicted += 1;
                    }
                }
                dropped.push(old.id);
            }
            idx.segments.push_back(Segment {
                id,
                file: file.clone(),
                len: 0,
                keys: Vec::new(),
            });
        }
        bump(&self.shared.evictions, evicted);
        for old in dropped {
            let path = self.dir.join(format!("seg-{old}"));
            if let Err(e) = fs::remove_file(&path) {
                tracing::debug!(error = %e, path = %path.display(), "block cache: segment removal failed");
            }
        }
        self.next_id += 1;
        self.active = Some((id, file.clone(), 0));
        Ok((id, file, 0))
    }
}

// ------------------------------------------------------------ directory

/// Returns whether process `pid` is alive (true when there is no `/proc`
/// to tell: better keep a dead process's files than delete a live one's).
fn alive(pid: u32) -> bool {
    !Path::new("/proc/self").exists() || Path::new("/proc").join(pid.to_string()).exists()
}

/// Returns the pid and instance of `<pid>` or `<pid>-<instance>`.
fn parse_owner(s: &str) -> Option<(u32, u64)> {
    let (pid, instance) = s.split_once('-').unwrap_or((s, "0"));
    Some((pid.parse().ok()?, instance.parse().ok()?))
}

/// Returns the owner of a stats file name.
fn stats_owner(name: &str) -> Option<(u32, u64)> {
    parse_owner(name.strip_prefix("stats-")?.strip_suffix(".json")?)
}

/// Removes from `root` the subdirectories and stats files of dead
/// processes, and leftovers of this process's `instance` (of any instance
/// for the first one: they are from an earlier process with our pid).
fn clean_dir(root: &Path, me: u32, instance: u64) -> io::Result<()> {
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let (owner, is_dir) = match name.strip_prefix("proc-") {
            Some(rest) => (parse_owner(rest), true),
            None => (stats_owner(name), false),
        };
        let Some((pid, inst)) = owner else { continue };
        let ours = pid == me && (instance == 0 || inst == instance);
        if !ours && (pid == me || alive(pid)) {
            continue;
        }
        let path = entry.path();
        let r = if is_dir {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match r {
            Ok(()) => tracing::debug!(path = %path.display(), "block cache: removed leftover"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "block cache: cannot remove leftover");
            }
        }
    }
    Ok(())
}

/// Reads the stats files in `dir` of processes still alive, removing the
/// files of dead processes; used by `cairn cache stats`. Files that cannot
/// be read or parsed are skipped (logged).
///
/// # Errors
/// `dir` cannot be listed.
pub fn collect_stats(dir: &Path) -> io::Result<Vec<CacheStats>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some((pid, _)) = name.to_str().and_then(stats_owner) else {
            continue;
        };
        let path = entry.path();
        if !alive(pid) {
            if let Err(e) = fs::remove_file(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::debug!(error = %e, path = %path.display(), "block cache: cannot remove stale stats");
            }
            continue;
        }
        match fs::read(&path) {
            Ok(b) => match serde_json::from_slice::<CacheStats>(&b) {
                Ok(s) => out.push(s),
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "block cache: unreadable stats file skipped");
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "block cache: unreadable stats file skipped");
            }
        }
    }
    out.sort_by_key(|s| (s.pid, s.updated_unix_ms));
    Ok(out)
}

// ------------------------------------------------------------ the cache

/// The client's block cache: memory tier, optional SSD tier, counters.
/// `Send + Sync`; shared as `Arc<BlockCache>`. See the module docs.
pub struct BlockCache {
    memory: Memory,
    ssd: Option<Ssd>,
    prefetched_blocks: AtomicU64,
    prefetch_hits: AtomicU64,
}

impl fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockCache")
            .field("memory_bytes", &self.memory.capacity_bytes)
            .field("shards", &self.memory.shards.len())
            .field("ssd_dir", &self.ssd.as_ref().map(|s| &s.dir))
            .finish_non_exhaustive()
    }
}

impl BlockCache {
    /// Creates the cache. With a directory: creates it, uses a per-process
    /// subdirectory `<dir>/proc-<pid>/` (`proc-<pid>-<k>` for a second
    /// cache in the same process), removes subdirectories and stats files
    /// of processes no longer alive, and starts the SSD tier empty with
    /// its writer thread.
    ///
    /// # Errors
    /// The directory cannot be created or listed, or the writer thread
    /// cannot be started.
    pub fn new(config: &CacheConfig) -> io::Result<BlockCache> {
        let ssd = match &config.dir {
            Some(dir) => Some(Ssd::open(dir, config.dir_bytes)?),
            None => None,
        };
        Ok(BlockCache {
            memory: Memory::new(config.memory_bytes),
            ssd,
            prefetched_blocks: AtomicU64::new(0),
            prefetch_hits: AtomicU64::new(0),
        })
    }

    /// Returns the block of `key` if cached: memory tier first, then the
    /// SSD tier, whose block is checked against the CRC32 recorded when it
    /// was written (a corrupt or unreadable block is dropped and is a
    /// miss) and promoted to memory. Counts hits and misses per tier.
    pub fn get(&self, key: BlockKey) -> Option<Bytes> {
        if let Some(shard) = self.memory.shard(&key) {
            let hit = lock(shard).get(&key);
            if let Some(data) = hit {
                bump(&self.memory.hits, 1);
                return Some(data);
            }
            bump(&self.memory.misses, 1);
        }
        let ssd = self.ssd.as_ref()?;
        let Some((data, loc)) = ssd.read(&key) else {
            bump(&ssd.shared.misses, 1);
            return None;
        };
        bump(&ssd.shared.hits, 1);
        self.promote(ssd, key, &data, &loc);
        Some(data)
    }

    /// `len` bytes from `skip` into the `blocks` blocks from `first` on
    /// (same object and generation), when the memory tier holds every one
    /// of them whole (counted as hits): `span` bytes in all, so the last
    /// one may be a file's short last block, held at exactly its length.
    /// `None` otherwise, with no lookup counted: the caller then reads
    /// through [`Self::get`]. Never does I/O (the SSD tier is not asked),
    /// so it may run where blocking is not allowed.
    pub fn read_in_memory(
        &self,
        first: BlockKey,
        blocks: u64,
        span: u64,
        skip: u64,
        len: u64,
    ) -> Option<Bytes> {
        let key = |i: u64| BlockKey {
            block: first.block + i,
            ..first
        };
        let get = |i: u64| {
            let k = key(i);
            let shard = self.memory.shard(&k)?;
            let b = lock(shard).get(&k)?;
            // Whole, or the file's last block at exactly its length.
            (span > i * BLOCK && b.len() as u64 == cached_len(span, i)).then_some(b)
        };
        let skip = usize::try_from(skip).ok()?;
        let len = usize::try_from(len).ok()?;
        let data = if blocks == 1 {
            let b = get(0)?;
            if skip.checked_add(len)? > b.len() {
                return None;
            }
            b.slice(skip..skip + len)
        } else {
            let mut out = BytesMut::with_capacity(len);
            let mut at = 0usize; // bytes of the blocks passed so far
            for i in 0..blocks {
                let b = get(i)?;
                let lo = skip.saturating_sub(at).min(b.len());
                let hi = (skip + len).saturating_sub(at).min(b.len());
                out.extend_from_slice(&b[lo..hi]);
                at += b.len();
            }
            if out.len() != len {
                return None;
            }
            out.freeze()
        };
        bump(&self.memory.hits, blocks);
        Some(data)
    }

    /// Whether a tier holds `key`, without counting a lookup or marking
    /// the block used (read-ahead asks this before fetching what a
    /// warm-up already loaded).
    pub fn contains(&self, key: BlockKey) -> bool {
        if let Some(shard) = self.memory.shard(&key)
            && lock(shard).map.contains_key(&key)
        {
            return true;
        }
        self.ssd
            .as_ref()
            .is_some_and(|ssd| lock(&ssd.shared.index).map.contains_key(&key))
    }

    /// Moves a block read from the SSD tier into memory, unless it was
    /// invalidated (or replaced) since it was read.
    fn promote(&self, ssd: &Ssd, key: BlockKey, data: &Bytes, loc: &Loc) {
        let idx = lock(&ssd.shared.index);
        if idx.map.get(&key) != Some(loc) {
            return;
        }
        let Some(shard) = self.memory.shard(&key) else {
            return;
        };
        let slot = Slot {
            key,
            data: data.clone(),
            referenced: false,
            on_ssd: true,
        };
        self.insert_slot(shard, |_| slot);
        // Released only now: an `invalidate` waiting for the index lock
        // finds the block in memory and removes it.
        drop(idx);
    }

    /// Counts read-ahead that bypassed the tiers: `prefetched` blocks
    /// fetched ahead of a stream into its own buffer, `hits` blocks of
    /// them the stream then read (for [`CacheStats::prefetch_hit_ratio`]).
    pub fn count_prefetch(&self, prefetched: u64, hits: u64) {
        bump(&self.prefetched_blocks, prefetched);
        bump(&self.prefetch_hits, hits);
    }

    /// Inserts a full block (`data.len()` must be [`BLOCK`]; anything else
    /// is ignored), kept as given (tests; the client copies blocks in with
    /// [`Self::insert_copy`]). Never blocks on I/O.
    #[cfg(test)]
    pub fn insert(&self, key: BlockKey, data: Bytes) {
        self.insert_in(key, data, true);
    }

    /// Inserts a full block into the memory tier only: it is never written
    /// to the SSD tier, not even when evicted. For decrypted blocks of
    /// encrypted files, whose plaintext must not reach a disk (DESIGN §7).
    #[cfg(test)]
    pub fn insert_memory_only(&self, key: BlockKey, data: Bytes) {
        self.insert_in(key, data, false);
    }

    fn insert_in(&self, key: BlockKey, data: Bytes, to_ssd: bool) {
        if data.is_empty() || data.len() > BLOCK_LEN {
            return;
        }
        // A file's short last block stays in memory: the SSD tier's
        // segments hold whole blocks.
        let to_ssd = to_ssd && data.len() == BLOCK_LEN;
        match self.memory.shard(&key) {
            Some(shard) => {
                let slot = Slot {
                    key,
                    data,
                    referenced: false,
                    // Marked as already on the SSD, eviction never
                    // admits it there.
                    on_ssd: !to_ssd,
                };
                self.insert_slot(shard, |_| slot);
            }
            // No memory tier: straight to the SSD tier, if any.
            None => {
                if let Some(ssd) = self.ssd.as_ref().filter(|_| to_ssd) {
                    let epoch = ssd.shared.epoch.load(Ordering::SeqCst);
                    ssd.admit(key, data, epoch);
                }
            }
        }
    }

    /// Inserts a copy of `src`, a block or a file's short last block, in
    /// a buffer of an evicted block when the shard has one (so a full tier
    /// fills from the network without allocating: a fresh 4 KiB per block
    /// cost a `malloc`, and glibc growing a thread's heap page faults, a
    /// fifth of the mount's worker samples on cold 128 KiB reads in
    /// `perf`). `memory_only`: never written to the SSD tier, not even
    /// when evicted (plaintext of encrypted files, DESIGN §7; a file's
    /// short last block). Never blocks on I/O.
    pub fn insert_copy(&self, key: BlockKey, src: &[u8], memory_only: bool) {
        if src.is_empty() || src.len() > BLOCK_LEN {
            return;
        }
        let to_ssd = !memory_only && src.len() == BLOCK_LEN;
        let Some(shard) = self.memory.shard(&key) else {
            return self.insert_in(key, Bytes::copy_from_slice(src), to_ssd);
        };
        self.insert_slot(shard, |s| {
            let mut b = s
                .spare
                .pop()
                .unwrap_or_else(|| BytesMut::with_capacity(BLOCK_LEN));
            b.extend_from_slice(src);
            Slot {
                key,
                data: b.freeze(),
                referenced: false,
                on_ssd: !to_ssd,
            }
        });
    }

    /// Inserts into a memory shard the slot `make` builds under its lock,
    /// and hands the victim, if any, to the SSD tier (or keeps its buffer
    /// for later copies). Returns whether the key was new.
    fn insert_slot(&self, shard: &Mutex<Shard>, make: impl FnOnce(&mut Shard) -> Slot) -> bool {
        let (evicted, admit, epoch) = {
            let mut s = lock(shard);
            let slot = make(&mut s);
            let Inserted::New(victim) = s.insert(slot) else {
                return false;
            };
            let evicted = victim.is_some();
            // A victim the SSD tier does not take gives its buffer back.
            let admit = victim.and_then(|v| {
                if self.ssd.is_some() && !v.on_ssd {
                    Some(v)
                } else {
                    s.recycle(v.data);
                    None
                }
            });
            // Read under the shard lock: see "Invalidation vs. blocks in
            // flight" in the module docs.
            let epoch = self
                .ssd
                .as_ref()
                .map_or(0, |ssd| ssd.shared.epoch.load(Ordering::SeqCst));
            (evicted, admit, epoch)
        };
        bump(&self.memory.inserts, 1);
        if evicted {
            bump(&self.memory.evictions, 1);
        }
        if let (Some(ssd), Some(v)) = (&self.ssd, admit) {
            ssd.admit(v.key, v.data, epoch);
        }
        true
    }

    /// Drops blocks `[first, end)` of (`object`, `generation`) from both
    /// tiers, including blocks on their way to the SSD (the client's own
    /// writes).
    pub fn invalidate(&self, object: u64, generation: u64, first: u64, end: u64) {
        if first >= end {
            return;
        }
        let by_key = end - first <= INVALIDATE_BY_KEY;
        let key = |block| BlockKey {
            object,
            generation,
            block,
        };
        let covered = |k: &BlockKey| {
            k.object == object && k.generation == generation && (first..end).contains(&k.block)
        };
        // The index lock is held throughout (see the module docs).
        let mut idx = self.ssd.as_ref().map(|s| lock(&s.shared.index));
        if let Some(idx) = idx.as_deref_mut() {
            if by_key {
                for b in first..end {
                    idx.map.remove(&key(b));
                }
            } else {
                idx.map.retain(|k, _| !covered(k));
            }
        }
        if by_key {
            for b in first..end {
                let k = key(b);
                if let Some(shard) = self.memory.shard(&k) {
                    lock(shard).remove(&k);
                }
            }
        } else {
            for shard in &*self.memory.shards {
                lock(shard).remove_where(covered);
            }
        }
        if let (Some(idx), Some(ssd)) = (idx.as_deref_mut(), &self.ssd) {
            let epoch = ssd.shared.epoch.load(Ordering::SeqCst) + 1;
            ssd.shared.epoch.store(epoch, Ordering::SeqCst);
            idx.records.push_back(Record {
                epoch,
                object,
                generation,
                first,
                end,
            });
            if idx.records.len() > MAX_RECORDS
                && let Some(old) = idx.records.pop_front()
            {
                idx.floor = old.epoch;
            }
        }
    }

    /// Returns the current counters.
    pub fn stats(&self) -> CacheStats {
        let blocks: usize = self.memory.shards.iter().map(|s| lock(s).map.len()).sum();
        let blocks = blocks as u64;
        let memory = TierStats {
            capacity_bytes: self.memory.capacity_bytes,
            used_bytes: blocks * BLOCK,
            blocks,
            hits: read(&self.memory.hits),
            misses: read(&self.memory.misses),
            inserts: read(&self.memory.inserts),
            evictions: read(&self.memory.evictions),
        };
        let ssd = self.ssd.as_ref().map(|ssd| {
            let (used_bytes, blocks) = {
                let idx = lock(&ssd.shared.index);
                (idx.bytes, idx.map.len() as u64)
            };
            TierStats {
                capacity_bytes: ssd.capacity,
                used_bytes,
                blocks,
                hits: read(&ssd.shared.hits),
                misses: read(&ssd.shared.misses),
                inserts: read(&ssd.shared.inserts),
                evictions: read(&ssd.shared.evictions),
            }
        });
        CacheStats {
            pid: std::process::id(),
            updated_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            memory,
            ssd,
            prefetched_blocks: read(&self.prefetched_blocks),
            prefetch_hits: read(&self.prefetch_hits),
        }
    }

    /// Writes [`BlockCache::stats`] to `<dir>/stats-<pid>.json` atomically
    /// (temporary file, then rename); does nothing without a directory.
    ///
    /// # Errors
    /// The file cannot be written or renamed.
    pub fn publish_stats(&self) -> io::Result<()> {
        let Some(ssd) = &self.ssd else {
            return Ok(());
        };
        let json = serde_json::to_vec_pretty(&self.stats()).map_err(io::Error::other)?;
        let _one_at_a_time = lock(&ssd.publishing);
        let tmp = ssd.root.join(format!(".{}.tmp", ssd.stats_name));
        fs::write(&tmp, json)?;
        fs::rename(&tmp, ssd.root.join(&ssd.stats_name))
    }
}

impl Drop for BlockCache {
    fn drop(&mut self) {
        let Some(ssd) = &mut self.ssd else { return };
        // Closing the channel ends the writer after its current batch.
        ssd.tx = None;
        if let Some(h) = ssd.writer.take()
            && h.join().is_err()
        {
            tracing::warn!("block cache: SSD writer thread panicked");
        }
        if let Err(e) = fs::remove_dir_all(&ssd.dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, dir = %ssd.dir.display(), "block cache: cannot remove SSD tier");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn key(block: u64) -> BlockKey {
        BlockKey {
            object: 7,
            generation: 1,
            block,
        }
    }

    /// A block whose every word depends on the key, so wrong bytes show.
    fn data(k: &BlockKey) -> Bytes {
        let mut v = Vec::with_capacity(BLOCK_LEN);
        for i in 0..(BLOCK / 8) {
            let w = k.object.wrapping_mul(1_000_003)
                ^ k.generation.wrapping_mul(7_919)
                ^ (k.block << 20)
                ^ i;
            v.extend_from_slice(&w.to_le_bytes());
        }
        Bytes::from(v)
    }

    fn memory_only(blocks: u64) -> BlockCache {
        BlockCache::new(&CacheConfig {
            memory_bytes: blocks * BLOCK,
            dir: None,
            dir_bytes: 0,
        })
        .unwrap()
    }

    fn with_ssd(dir: &Path, blocks: u64, dir_bytes: u64) -> BlockCache {
        BlockCache::new(&CacheConfig {
            memory_bytes: blocks * BLOCK,
            dir: Some(dir.to_path_buf()),
            dir_bytes,
        })
        .unwrap()
    }

    #[test]
    fn key_hashes_differ_in_the_bits_the_map_uses() {
        // hashbrown takes a bucket from the low bits and a tag from the top
        // seven: neighbouring blocks, objects and generations must spread.
        let mut low = std::collections::HashSet::new();
        let mut top = std::collections::HashSet::new();
        for object in 0..8u64 {
            for generation in 0..4u64 {
                for block in 0..256u64 {
                    let h = KeyHash.hash_one(BlockKey {
                        object,
                        generation,
                        block,
                    });
                    low.insert(h & 0xffff);
                    top.insert(h >> 57);
                }
            }
        }
        // 8,192 keys into 65,536 low values: a few collide at random.
        assert!(low.len() > 7_500, "{} distinct low bits", low.len());
        assert_eq!(top.len(), 128, "top seven bits take every value");
    }

    #[test]
    fn copies_reuse_the_buffers_of_evicted_blocks_nobody_holds() {
        // 16 blocks: one shard of 16 slots.
        let c = memory_only(16);
        let spare = || lock(&c.memory.shards[0]).spare.len();
        // Where a cached block's bytes are, without a hit's referenced bit.
        let at = |b: u64| {
            let s = lock(&c.memory.shards[0]);
            let i = *s.map.get(&key(b))?;
            s.slots[i].as_ref().map(|slot| slot.data.as_ptr())
        };
        for b in 0..16 {
            c.insert_copy(key(b), &data(&key(b)), false);
        }
        assert_eq!(spare(), 0, "nothing evicted yet");
        // A reader holds block 0 (the hit gives it a second chance).
        let held = c.get(key(0)).unwrap();
        // Block 1 goes first; nobody holds it: its buffer is kept, and the
        // next copy goes into it.
        let one = at(1).unwrap();
        c.insert_copy(key(16), &data(&key(16)), false);
        assert_eq!(spare(), 1);
        c.insert_copy(key(17), &data(&key(17)), false);
        assert_eq!(at(17), Some(one), "not copied into block 1's buffer");
        // Around the ring to block 0, evicted while held: not reused.
        for b in 18..64 {
            c.insert_copy(key(b), &data(&key(b)), false);
            assert!(spare() <= SPARE_BUFFERS);
        }
        assert_eq!(c.get(key(0)), None, "block 0 still cached");
        for b in 18..64 {
            assert_ne!(at(b), Some(held.as_ptr()), "a held buffer was reused");
            if let Some(d) = c.get(key(b)) {
                assert_eq!(d, data(&key(b)), "block {b}");
            }
        }
        assert_eq!(held, data(&key(0)));
        // A short last block is copied as it is.
        let short = &data(&key(99))[..100];
        c.insert_copy(key(99), short, true);
        assert_eq!(c.get(key(99)).unwrap(), Bytes::copy_from_slice(short));
    }

    /// Waits until the SSD writer has processed every admission.
    fn settle(c: &BlockCache) {
        let ssd = c.ssd.as_ref().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while ssd.shared.pending.load(Ordering::SeqCst) != 0 {
            assert!(Instant::now() < deadline, "SSD writer stuck");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn ssd_stats(c: &BlockCache) -> TierStats {
        c.stats().ssd.unwrap()
    }

    #[test]
    fn cache_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<BlockCache>();
    }

    #[test]
    fn counts_hits_and_misses() {
        let c = memory_only(256);
        assert_eq!(c.get(key(0)), None);
        c.insert(key(0), data(&key(0)));
        assert_eq!(c.get(key(0)), Some(data(&key(0))));
        assert_eq!(c.get(key(0)), Some(data(&key(0))));
        assert_eq!(c.get(key(1)), None);
        let s = c.stats();
        assert_eq!(
            (s.memory.hits, s.memory.misses, s.memory.inserts),
            (2, 2, 1)
        );
        assert_eq!(s.memory.hit_ratio(), 0.5);
        assert_eq!((s.memory.blocks, s.memory.used_bytes), (1, BLOCK));
        assert_eq!(s.ssd, None);
        assert_eq!(s.pid, std::process::id());
    }

    #[test]
    fn a_range_is_read_from_memory_only_when_every_block_is_there() {
        let c = memory_only(256);
        for b in 0..4 {
            c.insert(key(b), data(&key(b)));
        }
        let whole: Vec<u8> = (0..4).flat_map(|b| data(&key(b)).to_vec()).collect();
        let at = |skip: usize, len: usize| {
            c.read_in_memory(key(0), 4, 4 * BLOCK, skip as u64, len as u64)
        };
        assert_eq!(at(0, whole.len()).as_deref(), Some(&whole[..]));
        assert_eq!(at(100, 9000).as_deref(), Some(&whole[100..9100]));
        let one = c.read_in_memory(key(2), 1, BLOCK, 10, 20);
        assert_eq!(one.as_deref(), Some(&whole[2 * 4096 + 10..2 * 4096 + 30]));
        assert_eq!(c.stats().memory.hits, 4 + 4 + 1);
        // Block 4 is missing: nothing is answered and nothing counted.
        assert_eq!(c.read_in_memory(key(2), 3, 3 * BLOCK, 0, 3 * 4096), None);
        assert_eq!(
            c.read_in_memory(key(0), 1, BLOCK, 4000, 200),
            None,
            "past the block"
        );
        // A span ending inside block 3 wants a short block there, not a
        // whole one (the file is shorter than what was cached).
        assert_eq!(c.read_in_memory(key(0), 4, 3 * BLOCK + 100, 0, 100), None);
        let s = c.stats().memory;
        assert_eq!((s.hits, s.misses), (9, 0));
        // A file's short last block is kept (in memory only) and answered
        // at its length.
        let short = Bytes::from(vec![7u8; 100]);
        c.insert(key(4), short.clone());
        let got = c.read_in_memory(key(3), 2, BLOCK + 100, 4000, 196);
        let mut want = data(&key(3))[4000..].to_vec();
        want.extend_from_slice(&short);
        assert_eq!(got.as_deref(), Some(&want[..]));
        assert_eq!(
            c.read_in_memory(key(4), 1, 200, 0, 100),
            None,
            "the file grew"
        );
    }

    #[test]
    fn memory_stays_within_budget() {
        let c = memory_only(256);
        for b in 0..2560 {
            c.insert(key(b), data(&key(b)));
        }
        let s = c.stats().memory;
        assert!(s.used_bytes <= s.capacity_bytes, "{s:?}");
        assert_eq!(s.capacity_bytes, 256 * BLOCK);
        assert_eq!(s.blocks, 256, "a full cache should stay full: {s:?}");
        assert_eq!(s.inserts, 2560);
        assert_eq!(s.evictions, 2560 - 256);
        // The newest blocks survive, the oldest are gone.
        assert_eq!(c.get(key(2559)), Some(data(&key(2559))));
        assert_eq!(c.get(key(0)), None);
    }

    #[test]
    fn clock_keeps_a_hot_block_over_a_scan() {
        let c = memory_only(256);
        let hot = BlockKey {
            object: 99,
            generation: 1,
            block: 0,
        };
        c.insert(hot, data(&hot));
        assert!(c.get(hot).is_some());
        // A one-time scan of 10x the capacity, the hot block read every 100
        // blocks (far fewer than its shard holds between two reads, and far
        // more than FIFO would let it survive).
        for b in 0..2560 {
            c.insert(key(b), data(&key(b)));
            if b % 100 == 99 {
                assert_eq!(c.get(hot), Some(data(&hot)), "evicted after {b}");
            }
        }
        assert_eq!(c.get(hot), Some(data(&hot)));
        assert!(c.stats().memory.blocks <= 256);
    }

    #[test]
    fn generations_are_isolated() {
        let c = memory_only(256);
        let g1 = key(3);
        let g2 = BlockKey {
            generation: 2,
            ..g1
        };
        let mut other = vec![0xAB; BLOCK_LEN];
        other[0] = 1;
        let other = Bytes::from(other);
        c.insert(g1, data(&g1));
        assert_eq!(c.get(g2), None, "a new generation must not see old blocks");
        c.insert(g2, other.clone());
        assert_eq!(c.get(g1), Some(data(&g1)));
        assert_eq!(c.get(g2), Some(other.clone()));
        c.invalidate(g1.object, 1, 0, 10);
        assert_eq!(c.get(g1), None);
        assert_eq!(c.get(g2), Some(other));
    }

    #[test]
    fn only_a_files_short_last_block_is_kept_and_never_on_the_ssd() {
        let c = memory_only(256);
        let short = Bytes::from(vec![1u8; BLOCK_LEN - 1]);
        c.insert(key(0), short.clone());
        c.insert(key(1), Bytes::from(vec![1u8; BLOCK_LEN + 1]));
        c.insert(key(2), Bytes::new());
        assert_eq!(c.get(key(0)), Some(short), "a file's short last block");
        for b in 1..3 {
            assert_eq!(c.get(key(b)), None);
        }
        let s = c.stats();
        assert_eq!((s.memory.inserts, s.memory.blocks), (1, 1));
        // With an SSD tier, evicting it from memory does not admit it.
        let dir = tempfile::tempdir().unwrap();
        let c = with_ssd(dir.path(), 64, 1 << 30);
        c.insert(key(0), Bytes::from(vec![2u8; 100]));
        for b in 1..400 {
            c.insert(key(b), data(&key(b)));
        }
        settle(&c);
        assert!(ssd_stats(&c).inserts >= 150, "whole blocks went to the SSD");
        assert_eq!(c.get(key(0)), None, "a short block came back from the SSD");
    }

    #[test]
    fn slices_of_a_read_buffer_are_kept_without_copy() {
        let c = memory_only(256);
        let buf = Bytes::from(vec![5u8; 4 * BLOCK_LEN]);
        for b in 0..4u64 {
            let at = usize::try_from(b * BLOCK).unwrap();
            c.insert(key(b), buf.slice(at..at + BLOCK_LEN));
        }
        let got = c.get(key(2)).unwrap();
        assert_eq!(got.as_ptr(), buf.slice(2 * BLOCK_LEN..).as_ptr());
    }

    #[test]
    fn prefetch_hit_ratio() {
        let c = memory_only(256);
        // Read-ahead that bypassed the tiers, counted by its stream.
        c.count_prefetch(10, 5);
        let s = c.stats();
        assert_eq!((s.prefetched_blocks, s.prefetch_hits), (10, 5));
        assert_eq!(s.prefetch_hit_ratio(), 0.5);
        // Hits on blocks of the tiers are no prefetch hits.
        c.insert(key(1), data(&key(1)));
        c.get(key(1)).unwrap();
        assert_eq!(c.stats().prefetch_hits, 5);
    }

    #[test]
    fn invalidate_removes_from_both_tiers() {
        let dir = tempfile::tempdir().unwrap();
        let c = with_ssd(dir.path(), 64, 1 << 30);
        for b in 0..128 {
            c.insert(key(b), data(&key(b)));
        }
        settle(&c);
        assert_eq!(ssd_stats(&c).blocks, 64, "0..64 should be on the SSD");
        c.invalidate(7, 1, 32, 96);
        for b in 32..96 {
            assert_eq!(c.get(key(b)), None, "block {b}");
        }
        for b in (0..32).chain(96..128) {
            assert_eq!(c.get(key(b)), Some(data(&key(b))), "block {b}");
        }
        // A long range (scan path) also works.
        c.invalidate(7, 1, 0, u64::MAX);
        for b in 0..128 {
            assert_eq!(c.get(key(b)), None, "block {b}");
        }
        assert_eq!(c.stats().memory.blocks, 0);
        assert_eq!(ssd_stats(&c).blocks, 0);
    }

    #[test]
    fn invalidate_catches_blocks_on_their_way_to_the_ssd() {
        let dir = tempfile::tempdir().unwrap();
        let c = with_ssd(dir.path(), 64, 1 << 30);
        for round in 0..20u64 {
            let base = round * 1000;
            for b in base..base + 80 {
                c.insert(key(b), data(&key(b)));
            }
            // Evictions of the first blocks may still be queued.
            c.invalidate(7, 1, base, base + 80);
            settle(&c);
            for b in base..base + 80 {
                assert_eq!(c.get(key(b)), None, "block {b}");
            }
        }
    }

    #[test]
    fn evicted_blocks_come_back_from_the_ssd() {
        let dir = tempfile::tempdir().unwrap();
        let c = with_ssd(dir.path(), 64, 1 << 30);
        // A working set that fits in memory never touches the SSD.
        for b in 0..32 {
            c.insert(key(b), data(&key(b)));
        }
        for b in 0..32 {
            c.get(key(b)).unwrap();
        }
        settle(&c);
        let s = ssd_stats(&c);
        assert_eq!((s.inserts, s.hits, s.misses), (0, 0, 0));
        c.insert(key(1000), data(&key(1000)));
        for b in 2000..2200 {
            c.insert(key(b), data(&key(b)));
        }
        settle(&c);
        let s = ssd_stats(&c);
        assert!(s.inserts >= 150, "{s:?}");
        assert_eq!(s.blocks, s.inserts);
        let before = c.stats();
        assert_eq!(c.get(key(1000)), Some(data(&key(1000))));
        for b in 2000..2100 {
            assert_eq!(c.get(key(b)), Some(data(&key(b))), "block {b}");
        }
        let after = c.stats();
        let ssd = after.ssd.as_ref().unwrap();
        assert_eq!(ssd.hits, 101);
        assert_eq!(after.memory.misses - before.memory.misses, 101);
        // Promoted: the next read is a memory hit.
        assert_eq!(c.get(key(2099)), Some(data(&key(2099))));
        assert_eq!(c.stats().memory.hits, after.memory.hits + 1);
        let proc_dir = c.ssd.as_ref().unwrap().dir.clone();
        assert!(proc_dir.join("seg-0").exists());
        drop(c);
        assert!(!proc_dir.exists(), "drop removes the per-process directory");
    }

    #[test]
    fn ssd_size_limit_drops_oldest_segment() {
        let dir = tempfile::tempdir().unwrap();
        // 256 KiB limit: 64 KiB segments of 16 blocks.
        let limit = 64 * BLOCK;
        let c = with_ssd(dir.path(), 16, limit);
        for b in 0..(16 + 640) {
            c.insert(key(b), data(&key(b)));
            if b % 256 == 0 {
                settle(&c); // keep the queue from overflowing
            }
        }
        settle(&c);
        let s = ssd_stats(&c);
        assert!(s.used_bytes <= limit, "{s:?}");
        assert!(s.evictions > 0, "{s:?}");
        assert_eq!(s.blocks + s.evictions, s.inserts, "{s:?}");
        let proc_dir = c.ssd.as_ref().unwrap().dir.clone();
        let on_disk: u64 = fs::read_dir(&proc_dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(on_disk <= limit, "{on_disk} bytes on disk");
        assert!(!proc_dir.join("seg-0").exists(), "oldest segment deleted");
        assert_eq!(c.get(key(0)), None, "oldest block gone");
        assert_eq!(c.get(key(639)), Some(data(&key(639))), "recent victim kept");
    }

    #[test]
    fn corrupt_ssd_block_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let c = with_ssd(dir.path(), 64, 1 << 30);
        for b in 0..128 {
            c.insert(key(b), data(&key(b)));
        }
        settle(&c);
        let ssd = c.ssd.as_ref().unwrap();
        let loc = *lock(&ssd.shared.index).map.get(&key(5)).unwrap();
        let path = ssd.dir.join(format!("seg-{}", loc.segment));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut byte = [0u8; 1];
        f.read_exact_at(&mut byte, loc.offset + 100).unwrap();
        byte[0] ^= 0x40;
        f.write_all_at(&byte, loc.offset + 100).unwrap();
        let blocks = ssd_stats(&c).blocks;
        assert_eq!(c.get(key(5)), None, "wrong bytes must never be returned");
        assert_eq!(c.get(key(5)), None);
        let s = ssd_stats(&c);
        assert_eq!((s.hits, s.misses, s.blocks), (0, 2, blocks - 1));
        assert_eq!(c.get(key(6)), Some(data(&key(6))), "neighbours unaffected");
    }

    #[test]
    fn memory_disabled_goes_straight_to_ssd() {
        let dir = tempfile::tempdir().unwrap();
        let c = with_ssd(dir.path(), 0, 1 << 30);
        c.insert(key(1), data(&key(1)));
        settle(&c);
        assert_eq!(c.get(key(1)), Some(data(&key(1))));
        let s = c.stats();
        assert_eq!((s.memory.hits, s.memory.misses, s.memory.blocks), (0, 0, 0));
        assert_eq!(s.ssd.unwrap().hits, 1);
    }

    #[test]
    fn stats_round_trip_and_dead_processes_are_cleaned() {
        let dead = 4_000_000;
        assert!(!alive(dead));
        let dir = tempfile::tempdir().unwrap();
        let dead_dir = dir.path().join(format!("proc-{dead}"));
        fs::create_dir(&dead_dir).unwrap();
        fs::write(dead_dir.join("seg-0"), b"old").unwrap();
        let c = with_ssd(dir.path(), 64, 1 << 30);
        assert!(!dead_dir.exists(), "a dead process's SSD tier is removed");
        c.insert(key(0), data(&key(0)));
        c.get(key(0)).unwrap();
        c.get(key(1));
        c.publish_stats().unwrap();
        let fake = dir.path().join(format!("stats-{dead}.json"));
        let stale = CacheStats {
            pid: dead,
            ..CacheStats::default()
        };
        fs::write(&fake, serde_json::to_vec(&stale).unwrap()).unwrap();
        fs::write(dir.path().join("stats-junk.json"), b"{").unwrap();
        let got = collect_stats(dir.path()).unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        let mine = &got[0];
        assert_eq!(mine.pid, std::process::id());
        assert_eq!((mine.memory.hits, mine.memory.misses), (1, 1));
        assert_eq!(mine.ssd.as_ref().unwrap().capacity_bytes, 1 << 30);
        assert!(mine.updated_unix_ms > 0);
        assert!(!fake.exists(), "a dead process's stats file is removed");
        // Publishing again replaces the file.
        c.get(key(0)).unwrap();
        c.publish_stats().unwrap();
        assert_eq!(collect_stats(dir.path()).unwrap()[0].memory.hits, 2);
    }

    #[test]
    fn publish_without_dir_is_a_no_op() {
        memory_only(16).publish_stats().unwrap();
    }

    #[test]
    fn merge_sums_processes() {
        let a = CacheStats {
            pid: 1,
            updated_unix_ms: 5,
            memory: TierStats {
                capacity_bytes: 10,
                hits: 3,
                misses: 1,
                ..TierStats::default()
            },
            ssd: None,
            prefetched_blocks: 4,
            prefetch_hits: 1,
        };
        let b = CacheStats {
            pid: 2,
            updated_unix_ms: 9,
            memory: TierStats {
                capacity_bytes: 10,
                hits: 1,
                misses: 3,
                ..TierStats::default()
            },
            ssd: Some(TierStats {
                hits: 2,
                ..TierStats::default()
            }),
            prefetched_blocks: 4,
            prefetch_hits: 3,
        };
        let m = CacheStats::merge(&[a, b]);
        assert_eq!((m.pid, m.updated_unix_ms), (0, 9));
        assert_eq!(
            (m.memory.capacity_bytes, m.memory.hits, m.memory.misses),
            (20, 4, 4)
        );
        assert_eq!(m.memory.hit_ratio(), 0.5);
        assert_eq!(m.ssd.as_ref().map(|s| s.hits), Some(2));
        assert_eq!(m.prefetch_hit_ratio(), 0.5);
        assert_eq!(CacheStats::merge(&[]), CacheStats::default());
        assert_eq!(TierStats::default().hit_ratio(), 0.0);
        assert_eq!(CacheStats::default().prefetch_hit_ratio(), 0.0);
    }

    #[test]
    fn config_defaults_and_validation() {
        let d: CacheConfig = serde_json::from_str(r#"{"memory-bytes": 8192}"#).unwrap();
        assert_eq!(
            (d.memory_bytes, d.dir.clone(), d.dir_bytes),
            (8192, None, 1 << 30)
        );
        assert!(d.validate().is_ok());
        let small = CacheConfig {
            memory_bytes: 100,
            ..CacheConfig::default()
        };
        assert_eq!(
            small.validate(),
            Err(CacheConfigError::MemoryBelowBlock { bytes: 100 })
        );
        let dir = CacheConfig {
            dir: Some(PathBuf::from("/tmp/x")),
            dir_bytes: 1,
            ..CacheConfig::default()
        };
        assert_eq!(
            dir.validate(),
            Err(CacheConfigError::DirBelowBlock { bytes: 1 })
        );
    }

    #[test]
    fn concurrent_use_returns_only_right_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let c = Arc::new(with_ssd(dir.path(), 128, 4 << 20));
        let gets = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let c = c.clone();
                let gets = gets.clone();
                std::thread::spawn(move || {
                    let mut x = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    for _ in 0..5000 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let k = BlockKey {
                            object: x % 2,
                            generation: 1,
                            block: (x >> 8) % 512,
                        };
                        match x % 100 {
                            0..60 => {
                                gets.fetch_add(1, Ordering::Relaxed);
                                if let Some(b) = c.get(k) {
                                    assert_eq!(b, data(&k), "{k:?}");
                                }
                            }
                            60..95 => c.insert(k, data(&k)),
                            _ => c.invalidate(k.object, 1, k.block, k.block + 4),
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        settle(&c);
        let s = c.stats();
        let ssd = s.ssd.as_ref().unwrap();
        assert_eq!(
            s.memory.hits + s.memory.misses,
            gets.load(Ordering::Relaxed)
        );
        assert_eq!(ssd.hits + ssd.misses, s.memory.misses);
        assert!(s.memory.used_bytes <= s.memory.capacity_bytes);
        assert!(ssd.used_bytes <= ssd.capacity_bytes);
        for b in 0..512 {
            for object in 0..2 {
                let k = BlockKey {
                    object,
                    generation: 1,
                    block: b,
                };
                if let Some(got) = c.get(k) {
                    assert_eq!(got, data(&k));
                }
            }
        }
    }
}
