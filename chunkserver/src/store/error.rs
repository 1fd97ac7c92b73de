//! Errors of the chunk engine and their stable wire codes.

use std::path::PathBuf;

use cairn_proto::ErrorCode;
use cairn_proto::ids::ChunkId;

use super::alloc::AllocError;
use super::layout::DecodeError;

/// What a chunk engine operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The chunk does not exist on this target.
    #[error("chunk {chunk} not found")]
    NotFound {
        /// The chunk.
        chunk: ChunkId,
    },
    /// Data failed its CRC: a payload segment on write (nothing was
    /// stored), or a stored block on read (its bytes are never returned).
    #[error("chunk {chunk} block {block}: checksum mismatch")]
    Checksum {
        /// The chunk.
        chunk: ChunkId,
        /// The block index inside the chunk.
        block: u32,
    },
    /// The read range has a pending version (CRAQ dirty): ask the tail or
    /// read another replica.
    #[error("chunk {chunk}: range has a pending version")]
    Pending {
        /// The chunk.
        chunk: ChunkId,
    },
    /// The chunk was copied to this replica without the clones of the
    /// snapshots up to `floor`: read the snapshot from another replica.
    #[error(
        "chunk {chunk}: this replica was rebuilt from another without the clones of snapshots \
         up to seq {floor}; read another replica"
    )]
    NoClones {
        /// The chunk.
        chunk: ChunkId,
        /// The newest snapshot seq it has no clones of.
        floor: u64,
    },
    /// A sync source sent a clone this replica does not lack: one above
    /// its snapshot floor, which it keeps from its own writes.
    #[error(
        "chunk {chunk}: clone {seq} lies above this replica's snapshot floor {floor}; \
         it is not missing here"
    )]
    CloneNotMissing {
        /// The chunk.
        chunk: ChunkId,
        /// The clone's seq.
        seq: u64,
        /// This replica's floor.
        floor: u64,
    },
    /// A version arrived before the versions in front of it.
    #[error("chunk {chunk}: got version {got}, expected {expected}")]
    VersionGap {
        /// The chunk.
        chunk: ChunkId,
        /// The version the replica can apply next.
        expected: u64,
        /// The version received.
        got: u64,
    },
    /// A version older than one the replica already has (a late retry or a
    /// conflicting rewrite of a version).
    #[error("chunk {chunk}: version {got} is stale, newest is {newest}")]
    Stale {
        /// The chunk.
        chunk: ChunkId,
        /// The newest version the replica has.
        newest: u64,
        /// The version received.
        got: u64,
    },
    /// The range lies outside a chunk (past 4 GiB) or is empty.
    #[error("chunk {chunk}: bad range offset {offset} len {len}")]
    Range {
        /// The chunk.
        chunk: ChunkId,
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
    },
    /// The number of segment CRCs does not match the data.
    #[error("chunk {chunk}: {got} segment CRCs for {expected} segments")]
    Segments {
        /// The chunk.
        chunk: ChunkId,
        /// Segments the data has.
        expected: usize,
        /// CRCs received.
        got: usize,
    },
    /// Seals that do not fit the write: not one per segment, or a sealed
    /// write that does not cover whole blocks (a seal covers a whole
    /// block; a part of one cannot be merged without the client's key).
    #[error(
        "chunk {chunk}: {seals} seals for a write of {len} bytes at {offset}: a sealed write covers whole 4 KiB blocks, one seal each"
    )]
    Seals {
        /// The chunk.
        chunk: ChunkId,
        /// The write's offset.
        offset: u64,
        /// The write's length.
        len: u64,
        /// Seals received.
        seals: usize,
    },
    /// The chunk does not belong to this shard.
    #[error("chunk {chunk} belongs to shard {owner}, not {shard}")]
    WrongShard {
        /// The chunk.
        chunk: ChunkId,
        /// The shard that owns it.
        owner: u32,
        /// This shard.
        shard: u32,
    },
    /// The target (or its capacity limit) is full; nothing was changed.
    #[error(
        "shard {shard} is full: no room left within its capacity or on its file system; nothing was written"
    )]
    NoSpace {
        /// The shard.
        shard: u32,
    },
    /// A disk or filesystem operation failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The metadata store failed.
    #[error("metadata store: {0}")]
    Meta(#[from] sled::Error),
    /// A metadata record does not decode: the target is damaged.
    #[error("corrupt metadata record ({what}): {source}")]
    CorruptRecord {
        /// Which kind of record.
        what: &'static str,
        /// The decode failure.
        #[source]
        source: DecodeError,
    },
    /// The block references are inconsistent: the target is damaged.
    #[error("corrupt block map: {0}")]
    CorruptBlockMap(#[from] AllocError),
    /// A previous durability step failed; the shard refuses work until the
    /// target is reopened.
    #[error("shard {shard} is failed after an I/O error; reopen the target")]
    Failed {
        /// The shard.
        shard: u32,
    },
    /// `format` found a directory with files but no superblock.
    #[error("{path}: directory is not empty and has no superblock")]
    NotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// `format` found an existing superblock (never overwritten).
    #[error("{path}: already formatted")]
    AlreadyFormatted {
        /// The directory.
        path: PathBuf,
    },
    /// The superblock is missing, unreadable or invalid.
    #[error("{path}: bad superblock: {reason}")]
    BadSuperblock {
        /// The superblock file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// The superblock names a format version this build cannot read.
    #[error("unsupported target format version {found}")]
    UnsupportedFormat {
        /// The version found.
        found: u32,
    },
    /// A shard index outside the target's shard count, or shards = 0.
    #[error("shard {shard} does not exist (target has {shards})")]
    NoSuchShard {
        /// The shard asked for.
        shard: u32,
        /// The target's shard count.
        shards: u32,
    },
}

impl StoreError {
    /// Returns the stable wire code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound { .. } => ErrorCode::NotFound,
            Self::Checksum { .. } => ErrorCode::Checksum,
            Self::Pending { .. } => ErrorCode::Pending,
            Self::NoClones { .. } => ErrorCode::Unavailable,
            Self::VersionGap { .. } | Self::CloneNotMissing { .. } => ErrorCode::Invalid,
            Self::Stale { .. } => ErrorCode::StaleSequence,
            Self::Range { .. } | Self::Segments { .. } | Self::Seals { .. } => {
                ErrorCode::BadRequest
            }
            Self::WrongShard { .. } | Self::NoSuchShard { .. } => ErrorCode::Invalid,
            Self::NoSpace { .. } => ErrorCode::NoSpace,
            Self::Io { .. }
            | Self::Meta(_)
            | Self::CorruptRecord { .. }
            | Self::CorruptBlockMap(_)
            | Self::Failed { .. }
            | Self::BadSuperblock { .. } => ErrorCode::Io,
            Self::NotEmpty { .. } | Self::AlreadyFormatted { .. } => ErrorCode::Exists,
            Self::UnsupportedFormat { .. } => ErrorCode::Invalid,
        }
    }

    pub(crate) fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| Self::Io { op, source }
    }

    pub(crate) fn glommio<T>(op: &'static str) -> impl FnOnce(glommio::GlommioError<T>) -> Self {
        move |e| Self::Io {
            op,
            source: e.into(),
        }
    }
}
