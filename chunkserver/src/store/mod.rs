//! The chunk engine (DESIGN §5): chunks stored as 4 KiB blocks in large
//! preallocated per-shard data files, with a sled metadata store mapping
//! each chunk to its committed version, pending versions and per-block
//! CRCs.
//!
//! # On-disk layout of a target
//!
//! ```text
//! <dir>/superblock.json     format_version 1, target_uuid, shards, block_size 4096, created
//! <dir>/meta/               sled: tree "shard-<k>" per shard
//!     'C' ++ object BE ++ index BE              -> ChunkHeader
//!     'B' ++ object BE ++ index BE ++ block BE  -> BlockEntry
//!     'R'                                       -> redo record of an update in progress (`batch`)
//! <dir>/data/shard-<k>.dat  data blocks, grown by fallocate in 256 MiB extents
//! <dir>/clean-shutdown      empty; present only between a clean stop and the next start
//! ```
//!
//! # Invariants
//!
//! 1. **Data is never overwritten in place.** A write goes to free blocks;
//!    one atomic metadata batch makes it a pending version, another (the
//!    commit) makes it current and releases the replaced blocks. A crash
//!    leaves the old or the new version, never a mix.
//! 2. **Metadata references only synced blocks**: the data file is
//!    `fdatasync`ed before the batch that references its new blocks, so a
//!    torn data write is never referenced (DESIGN §9 inv. 1).
//! 3. **A released block is reused only after the release is flushed**;
//!    otherwise a crash could bring back a reference to overwritten bytes.
//! 4. **Every block read is checked against its CRC**; corrupt bytes are
//!    never returned (inv. 3). Fully written blocks keep the client's CRC
//!    (end to end); merged partial blocks are verified before merging.
//! 5. **Bad input never panics or corrupts** (inv. 6): segment CRCs are
//!    checked before anything is stored, versions apply strictly in order,
//!    and a record that does not decode is an error.
//! 6. **A clone never changes** (snapshots, DESIGN §3): committing the
//!    first mutation of a chunk under a newer snapshot seq stores, in the
//!    same batch, a clone record keyed by that seq (the committed
//!    version's number, length and birth). Its block map is copied group
//!    by group: every commit that changes a group's committed entries
//!    first copies the group for the newest clone unless it has its copy
//!    already, so a clone reads a group from its own copy, else from the
//!    next newer clone's, else from the chunk (unchanged since). Pruning a
//!    clone hands its copies to the older clone that read through them.
//!    Its blocks are released only when the clone is pruned and no other
//!    version or clone holds them.
//! 7. Acknowledged means durable: `write_pending`, `write_committed`,
//!    `commit`, `truncate` and `remove` return only after the data sync and
//!    the metadata flush, both group-committed across the shard's
//!    concurrent writers. The one exception is `commit_through(..,
//!    durable: false)`, for chain replicas whose tail already holds the
//!    version committed: it is visible at once and durable with the next
//!    flush; a crash before that leaves the versions pending (never a
//!    mix), and the blocks it releases wait for that flush (inv. 3).
//!
//! # Threading
//!
//! A [`Target`] (sled database, superblock) is shared by every shard's
//! executor; each [`ShardStore`] lives in one glommio executor and owns the
//! chunks with [`shard_of`]`(chunk) == k`.

mod alloc;
mod batch;
mod error;
mod group;
pub mod layout;
mod shard;
mod target;

use bytes::Bytes;

pub use alloc::AllocError;
pub use error::StoreError;
pub(crate) use group::Notify;
pub use layout::{CloneHeader, NO_SEAL, Seal};
pub use shard::ShardStore;
pub use target::{FORMAT_VERSION, Superblock, Target, TargetOptions};

/// The chunk-to-shard hash (defined once in `cairn_proto::chain`, shared
/// with clients and peers): it decides where chunks live on disk.
pub use cairn_proto::chain::shard_of;

/// Which version a read may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// The committed version, even where a pending version exists (CRAQ:
    /// the tail confirmed the committed version is current).
    Committed,
    /// The committed version only if no pending version changes the range;
    /// otherwise [`StoreError::Pending`].
    CleanOnly,
}

/// The data of one write as the store takes it.
#[derive(Debug, Clone, Copy)]
pub struct WriteIn<'a> {
    /// Byte offset in the chunk.
    pub offset: u64,
    /// The bytes.
    pub data: &'a [u8],
    /// CRC32 of each piece of `data` split at 4 KiB multiples of the chunk
    /// offset.
    pub segment_crcs: &'a [u32],
    /// Empty (plain data), or one seal per segment: the write then covers
    /// whole blocks, each stored with its seal (encrypted data, DESIGN §7).
    pub seals: &'a [Seal],
    /// The snapshot seq the write was made under.
    pub snap: Snap,
}

/// The snapshot context of a mutation (DESIGN §3): the snapshot seq it was
/// made under and whether its volume has no snapshot. Committing the first
/// mutation of a chunk under a newer seq keeps the chunk's previous
/// version as a clone, unless `no_clone`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snap {
    /// The snapshot seq.
    pub seq: u64,
    /// The volume has no snapshot: keep no clone.
    pub no_clone: bool,
}

impl<'a> WriteIn<'a> {
    /// A plain write of `data` at `offset`.
    pub fn plain(offset: u64, data: &'a [u8], segment_crcs: &'a [u32]) -> Self {
        Self {
            offset,
            data,
            segment_crcs,
            seals: &[],
            snap: Snap::default(),
        }
    }
}

/// The result of a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOut {
    /// The bytes (short if the range passes the chunk's end).
    pub data: Bytes,
    /// CRC32 of each block-aligned segment of `data`, split like a write's
    /// segments (stored CRC for whole blocks).
    pub block_crcs: Vec<u32>,
    /// The seal of each segment, parallel to `block_crcs` ([`NO_SEAL`] for
    /// holes, plain blocks and partly read blocks); empty when no block of
    /// the range has one.
    pub block_seals: Vec<Seal>,
    /// The committed version read.
    pub version: u64,
    /// The committed length of the chunk.
    pub len: u64,
}

/// One pending version as it was written, from
/// [`ShardStore::read_pending`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingData {
    /// The version.
    pub version: u64,
    /// Offset of the write (for a truncate: the new length).
    pub offset: u64,
    /// Bytes written (0 for a truncate).
    pub len: u64,
    /// The chunk length once this version is current.
    pub new_len: u64,
    /// The `len` bytes written (empty for a truncate).
    pub data: Bytes,
    /// CRC32 of each piece of `data` split at 4 KiB multiples of the chunk
    /// offset, as a write carries them.
    pub segment_crcs: Vec<u32>,
    /// The snapshot context the version was written under.
    pub snap: Snap,
    /// The seal of each segment, as the write carried them (empty for a
    /// plain write).
    pub segment_seals: Vec<Seal>,
}

/// A chunk's versions and length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkStat {
    /// The committed version (0: none yet).
    pub committed_version: u64,
    /// The committed length.
    pub committed_len: u64,
    /// Pending versions, oldest first.
    pub pending_versions: Vec<u64>,
    /// The chain the chunk belongs to (0: not recorded).
    pub chain: u32,
}

/// Space used by a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceUsage {
    /// Bytes of blocks in use (referenced, being written, or released but
    /// not yet reusable).
    pub used_bytes: u64,
    /// Size of the data file.
    pub file_bytes: u64,
    /// Bytes released and waiting for a metadata flush.
    pub deferred_bytes: u64,
    /// The shard's share of the configured capacity, if any.
    pub capacity_bytes: Option<u64>,
}

/// What a scrub of one chunk found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Stored blocks read and checked.
    pub blocks_checked: u64,
    /// Block indexes (in the chunk) whose stored bytes fail their CRC.
    pub bad_blocks: Vec<u32>,
    /// Blocks of clones (old versions snapshots read) that fail their CRC,
    /// as (clone seq, block index); only those not shared with the
    /// current version (those count in `bad_blocks`).
    pub bad_clone_blocks: Vec<(u64, u32)>,
}
