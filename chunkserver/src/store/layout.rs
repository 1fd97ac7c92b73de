//! Pure layout logic of the chunk engine: block and segment math, metadata
//! keys and the byte encoding of metadata records.
//!
//! Nothing here does I/O, so it is unit-tested exhaustively beside the code.
//!
//! # Keys (one sled tree per shard, `shard-<k>`)
//!
//! * chunk header: `b'C'` ++ object id (u64 BE) ++ chunk index (u64 BE)
//! * block group:  `b'B'` ++ object id (u64 BE) ++ chunk index (u64 BE) ++
//!   group index (u32 BE), where group = block / [`GROUP_BLOCKS`]; the value
//!   holds the entries of that group's blocks that exist
//!   ([`encode_group`]).
//!
//! * chunk clone (snapshots, DESIGN §3): `b'K'` ++ object id ++ chunk index
//!   ++ snapshot seq (u64 BE) → [`CloneHeader`]: the chunk as snapshot
//!   `seq` saw it (kept at the first mutation under a newer seq)
//! * clone block group: `b'V'` ++ object id ++ chunk index ++ snapshot seq
//!   ++ group index (u32 BE) → [`encode_group`] of committed-only entries
//!
//! Big-endian keys sort like the numbers, so one range scan returns a
//! chunk's block entries in block order and `list_chunks` is a prefix scan.
//!
//! Block entries are grouped 64 to a key (format 2; format 1 had a key per
//! block): a 1 MiB write then updates 4 sled keys instead of 256, which
//! is what the chunkserver's CPU went to (sled node copies and
//! allocations, measured by `cairn-bench chunk` and perf), while a 4 KiB
//! read still costs one key lookup.
//!
//! # Records
//!
//! Records are encoded by hand (little-endian, a leading format byte) rather
//! than with bincode: decoding checks every length against the bytes
//! actually present before allocating, so a corrupt record is an error and
//! never a panic or an allocation bomb, and the format is pinned by these
//! tests rather than by a serializer's version.

use cairn_proto::frame::SEAL_LEN;
use cairn_proto::ids::{ChunkId, ObjectId};

/// Size of a block, the unit of allocation, CRC and atomic write.
pub const BLOCK_SIZE: u64 = 4096;
/// [`BLOCK_SIZE`] as a `usize`.
pub const BLOCK: usize = BLOCK_SIZE as usize;
/// Largest chunk: 4 GiB, so a block index always fits a `u32`.
pub const CHUNK_MAX: u64 = 4 << 30;

const HEADER_TAG: u8 = b'C';
const BLOCK_TAG: u8 = b'B';
const CLONE_TAG: u8 = b'K';
const CLONE_BLOCK_TAG: u8 = b'V';
/// Tag of the snapshot fields that trail a header record.
const SNAP_EXT: u8 = 1;
const RECORD_FORMAT: u8 = 1;
const GROUP_FORMAT: u8 = 1;

/// Blocks per block-group key (256 KiB of chunk).
pub const GROUP_BLOCKS: u32 = 64;

/// Returns the group holding `block`.
pub fn group_of(block: u32) -> u32 {
    block / GROUP_BLOCKS
}

/// Returns the CRC32 of one block of zeros: the CRC of a hole.
pub fn zero_block_crc() -> u32 {
    static CRC: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *CRC.get_or_init(|| crc32fast::hash(&[0u8; BLOCK]))
}

/// One piece of a byte range split at block boundaries of the chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Block index inside the chunk.
    pub block: u32,
    /// Offset of the piece inside its block.
    pub in_block: usize,
    /// Length of the piece (1..=4096).
    pub len: usize,
    /// Offset of the piece inside the caller's buffer.
    pub buf_off: usize,
}

impl Segment {
    /// Returns whether the piece covers its whole block.
    pub fn is_full(&self) -> bool {
        self.len == BLOCK
    }
}

/// Returns the pieces of `[offset, offset + len)` split at 4 KiB multiples
/// of the chunk offset: the first piece runs from `offset` to the next
/// boundary, the last ends at `offset + len`. Empty for `len == 0`.
///
/// The caller has checked `offset + len <= CHUNK_MAX`.
pub fn segments(offset: u64, len: u64) -> impl Iterator<Item = Segment> {
    let end = offset.saturating_add(len);
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let block = pos / BLOCK_SIZE;
        let in_block = pos % BLOCK_SIZE;
        let piece = (BLOCK_SIZE - in_block).min(end - pos);
        let seg = Segment {
            block: block as u32,
            in_block: in_block as usize,
            len: piece as usize,
            buf_off: (pos - offset) as usize,
        };
        pos += piece;
        Some(seg)
    })
}

/// Returns the number of segments [`segments`] yields.
pub fn segment_count(offset: u64, len: u64) -> usize {
    if len == 0 {
        return 0;
    }
    let first = offset / BLOCK_SIZE;
    let last = (offset + len - 1) / BLOCK_SIZE;
    (last - first + 1) as usize
}

/// Returns the half-open block range `[first, end)` that `[offset, offset +
/// len)` touches.
pub fn block_range(offset: u64, len: u64) -> (u32, u32) {
    if len == 0 {
        let b = (offset / BLOCK_SIZE) as u32;
        return (b, b);
    }
    let first = offset / BLOCK_SIZE;
    let end = (offset + len).div_ceil(BLOCK_SIZE);
    (first as u32, end as u32)
}

/// Returns the header key of `chunk`.
pub fn header_key(chunk: ChunkId) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = HEADER_TAG;
    k[1..9].copy_from_slice(&chunk.object.0.to_be_bytes());
    k[9..17].copy_from_slice(&chunk.index.to_be_bytes());
    k
}

/// Returns the prefix of `chunk`'s clone keys.
pub fn clone_prefix(chunk: ChunkId) -> [u8; 17] {
    let mut k = header_key(chunk);
    k[0] = CLONE_TAG;
    k
}

/// Returns the prefix shared by every clone key.
pub fn clones_prefix() -> [u8; 1] {
    [CLONE_TAG]
}

/// Returns the key of `chunk`'s clone for snapshot seq `seq`.
pub fn clone_key(chunk: ChunkId, seq: u64) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[..17].copy_from_slice(&clone_prefix(chunk));
    k[17..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Decodes a clone key into (chunk, seq); `None` if it is not one.
pub fn decode_clone_key(k: &[u8]) -> Option<(ChunkId, u64)> {
    if k.len() != 25 || k[0] != CLONE_TAG {
        return None;
    }
    let chunk = ChunkId {
        object: ObjectId(u64::from_be_bytes(k[1..9].try_into().ok()?)),
        index: u64::from_be_bytes(k[9..17].try_into().ok()?),
    };
    Some((chunk, u64::from_be_bytes(k[17..25].try_into().ok()?)))
}

/// Returns the prefix shared by every clone block group key.
pub fn clone_blocks_all_prefix() -> [u8; 1] {
    [CLONE_BLOCK_TAG]
}

/// Returns the prefix of the block groups of every clone of `chunk`.
pub fn clone_blocks_chunk_prefix(chunk: ChunkId) -> [u8; 17] {
    let mut k = header_key(chunk);
    k[0] = CLONE_BLOCK_TAG;
    k
}

/// Returns the prefix of the block groups of `chunk`'s clone `seq`.
pub fn clone_blocks_prefix(chunk: ChunkId, seq: u64) -> [u8; 25] {
    let mut k = clone_key(chunk, seq);
    k[0] = CLONE_BLOCK_TAG;
    k
}

/// Returns the key of block group `group` of `chunk`'s clone `seq`.
pub fn clone_group_key(chunk: ChunkId, seq: u64, group: u32) -> [u8; 29] {
    let mut k = [0u8; 29];
    k[..25].copy_from_slice(&clone_blocks_prefix(chunk, seq));
    k[25..].copy_from_slice(&group.to_be_bytes());
    k
}

/// Returns the prefix shared by every header key.
pub fn header_prefix() -> [u8; 1] {
    [HEADER_TAG]
}

/// Returns the prefix shared by every block entry key.
pub fn block_prefix() -> [u8; 1] {
    [BLOCK_TAG]
}

/// Returns the key of block group `group` of `chunk`.
pub fn group_key(chunk: ChunkId, group: u32) -> [u8; 21] {
    let mut k = [0u8; 21];
    k[0] = BLOCK_TAG;
    k[1..9].copy_from_slice(&chunk.object.0.to_be_bytes());
    k[9..17].copy_from_slice(&chunk.index.to_be_bytes());
    k[17..21].copy_from_slice(&group.to_be_bytes());
    k
}

/// Returns the prefix of every block key of `chunk`.
pub fn chunk_blocks_prefix(chunk: ChunkId) -> [u8; 17] {
    let mut k = header_key(chunk);
    k[0] = BLOCK_TAG;
    k
}

/// Decodes a header key; `None` if it is not one.
pub fn decode_header_key(k: &[u8]) -> Option<ChunkId> {
    if k.len() != 17 || k[0] != HEADER_TAG {
        return None;
    }
    Some(ChunkId {
        object: ObjectId(u64::from_be_bytes(k[1..9].try_into().ok()?)),
        index: u64::from_be_bytes(k[9..17].try_into().ok()?),
    })
}

/// Decodes a block-group key into (chunk, group); `None` if it is not one.
pub fn decode_group_key(k: &[u8]) -> Option<(ChunkId, u32)> {
    if k.len() != 21 || k[0] != BLOCK_TAG {
        return None;
    }
    let chunk = ChunkId {
        object: ObjectId(u64::from_be_bytes(k[1..9].try_into().ok()?)),
        index: u64::from_be_bytes(k[9..17].try_into().ok()?),
    };
    Some((chunk, u32::from_be_bytes(k[17..21].try_into().ok()?)))
}

/// A block's seal: the nonce and AES-GCM tag of an encrypted block, kept
/// for the client and never interpreted here. All zero: none.
pub type Seal = [u8; SEAL_LEN];

/// The seal of a block written in plain.
pub const NO_SEAL: Seal = [0; SEAL_LEN];

/// A block of the data file, the CRC32 of its 4096 bytes and its seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    /// Block number in the shard's data file.
    pub blockno: u64,
    /// CRC32 of the whole block.
    pub crc: u32,
    /// The client's seal of an encrypted block ([`NO_SEAL`]: plain).
    pub seal: Seal,
}

impl BlockRef {
    /// A reference to a block written in plain.
    pub fn plain(blockno: u64, crc: u32) -> Self {
        Self {
            blockno,
            crc,
            seal: NO_SEAL,
        }
    }
}

/// Reference tags in a block entry record: none (a hole or a dropped
/// block), a plain block, a sealed block (its seal follows the CRC).
const REF_NONE: u8 = 0;
const REF_PLAIN: u8 = 1;
const REF_SEALED: u8 = 2;

fn put_ref(v: &mut Vec<u8>, r: Option<BlockRef>) {
    match r {
        None => v.push(REF_NONE),
        Some(r) if r.seal == NO_SEAL => {
            v.push(REF_PLAIN);
            v.extend_from_slice(&r.blockno.to_le_bytes());
            v.extend_from_slice(&r.crc.to_le_bytes());
        }
        Some(r) => {
            v.push(REF_SEALED);
            v.extend_from_slice(&r.blockno.to_le_bytes());
            v.extend_from_slice(&r.crc.to_le_bytes());
            v.extend_from_slice(&r.seal);
        }
    }
}

/// One pending (written, not yet committed) version of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    /// The version.
    pub version: u64,
    /// First byte the change touches.
    pub offset: u64,
    /// Bytes written (0 for a truncate).
    pub len: u64,
    /// The chunk length once this version is current.
    pub new_len: u64,
    /// CRC32 over the client's segment CRCs: recognises a retried write.
    pub digest: u32,
    /// The snapshot seq the mutation was written under (DESIGN §3).
    pub seq: u64,
    /// The writer's volume had no snapshot: committing it keeps no clone.
    pub no_clone: bool,
}

impl Pending {
    /// Returns the block range whose entries this version has a pending
    /// reference in. A truncate (`len == 0`) touches every block from the
    /// new end on.
    pub fn touched_blocks(&self) -> (u32, u32) {
        if self.len == 0 {
            ((self.new_len / BLOCK_SIZE) as u32, u32::MAX)
        } else {
            block_range(self.offset, self.len)
        }
    }
}

/// The metadata record of one chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkHeader {
    /// The current version (0: never committed).
    pub committed_version: u64,
    /// The current length.
    pub committed_len: u64,
    /// Versions written but not committed, oldest first.
    pub pending: Vec<Pending>,
    /// The chain the chunk belongs to (0: not recorded, a chunk written
    /// before the field existed). Chain ids are stable forever, so a
    /// target enumerates one chain's chunks for a resync from its own
    /// metadata, including chunks of files whose length meta does not
    /// know yet.
    pub chain: u32,
    /// The newest snapshot seq a committed mutation was written under (0:
    /// none, or written before snapshots existed).
    pub seq: u64,
    /// The snapshot seq of the mutation that created the chunk: snapshots
    /// up to it read the chunk as a hole.
    pub birth: u64,
    /// The newest clone's seq (0: none), the one clone that can share
    /// blocks with the current version.
    pub clone_seq: u64,
    /// The chunk was copied here from another replica (resync, repair)
    /// when snapshots up to this seq existed, without their clones: this
    /// replica serves no snapshot read at or below it (0: none).
    pub snap_floor: u64,
}

/// A chunk's clone: the chunk as a snapshot saw it (its blocks are
/// committed-only entries under the clone's block keys).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CloneHeader {
    /// The committed version then.
    pub version: u64,
    /// The length then.
    pub len: u64,
    /// The chunk's birth seq (see [`ChunkHeader::birth`]).
    pub birth: u64,
}

impl CloneHeader {
    /// Returns the record bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(25);
        v.push(RECORD_FORMAT);
        v.extend_from_slice(&self.version.to_le_bytes());
        v.extend_from_slice(&self.len.to_le_bytes());
        v.extend_from_slice(&self.birth.to_le_bytes());
        v
    }

    /// Decodes a record made by [`Self::encode`].
    ///
    /// # Errors
    /// [`DecodeError`] for anything else.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(b);
        r.format()?;
        let h = Self {
            version: r.u64()?,
            len: r.u64()?,
            birth: r.u64()?,
        };
        r.end()?;
        if h.len > CHUNK_MAX {
            return Err(DecodeError::Value);
        }
        Ok(h)
    }
}

impl ChunkHeader {
    /// Returns the newest version, pending or committed.
    pub fn newest_version(&self) -> u64 {
        self.committed_version + self.pending.len() as u64
    }

    /// Returns the length the newest version has.
    pub fn newest_len(&self) -> u64 {
        self.pending
            .last()
            .map_or(self.committed_len, |p| p.new_len)
    }
}

/// The metadata record of one block of one chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockEntry {
    /// The block of the committed version; `None`: a hole.
    pub committed: Option<BlockRef>,
    /// The block of each pending version that changed it, oldest first;
    /// `None`: that version drops the block (a truncate).
    pub pending: Vec<(u64, Option<BlockRef>)>,
}

impl BlockEntry {
    /// Returns the block of the newest version (`None`: a hole).
    pub fn newest(&self) -> Option<BlockRef> {
        match self.pending.last() {
            Some((_, r)) => *r,
            None => self.committed,
        }
    }

    /// Returns every data block this entry references.
    pub fn refs(&self) -> impl Iterator<Item = BlockRef> + '_ {
        self.committed
            .iter()
            .copied()
            .chain(self.pending.iter().filter_map(|(_, r)| *r))
    }
}

/// Why a metadata record failed to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The record ended early or has trailing bytes.
    #[error("record has the wrong length")]
    Length,
    /// The leading format byte is unknown.
    #[error("unknown record format {0}")]
    Format(u8),
    /// A field holds a value it cannot have.
    #[error("invalid field value")]
    Value,
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        if self.0.len() < N {
            return Err(DecodeError::Length);
        }
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into().map_err(|_| DecodeError::Length)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
    /// Reads a count of items of `item_size` bytes, checking they are there.
    fn count(&mut self, item_size: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n.checked_mul(item_size).is_none_or(|b| b > self.0.len()) {
            return Err(DecodeError::Length);
        }
        Ok(n)
    }
    /// Reads a block reference after its tag (plain or sealed).
    fn block_ref(&mut self, tag: u8) -> Result<BlockRef, DecodeError> {
        let blockno = self.u64()?;
        let crc = self.u32()?;
        let seal = if tag == REF_SEALED {
            let seal: Seal = self.take()?;
            if seal == NO_SEAL {
                // A sealed tag with no seal is not what encode writes.
                return Err(DecodeError::Value);
            }
            seal
        } else {
            NO_SEAL
        };
        Ok(BlockRef { blockno, crc, seal })
    }
    fn format(&mut self) -> Result<(), DecodeError> {
        match self.u8()? {
            RECORD_FORMAT => Ok(()),
            other => Err(DecodeError::Format(other)),
        }
    }
    fn end(&self) -> Result<(), DecodeError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Length)
        }
    }
}

const PENDING_SIZE: usize = 8 * 4 + 4;
const PENDING_REF_SIZE: usize = 8 + 1 + 8 + 4;

impl ChunkHeader {
    /// Returns the record bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(1 + 16 + 4 + self.pending.len() * PENDING_SIZE);
        v.push(RECORD_FORMAT);
        v.extend_from_slice(&self.committed_version.to_le_bytes());
        v.extend_from_slice(&self.committed_len.to_le_bytes());
        v.extend_from_slice(&(self.pending.len() as u32).to_le_bytes());
        for p in &self.pending {
            v.extend_from_slice(&p.version.to_le_bytes());
            v.extend_from_slice(&p.offset.to_le_bytes());
            v.extend_from_slice(&p.len.to_le_bytes());
            v.extend_from_slice(&p.new_len.to_le_bytes());
            v.extend_from_slice(&p.digest.to_le_bytes());
        }
        let snap = self.seq != 0
            || self.birth != 0
            || self.clone_seq != 0
            || self.snap_floor != 0
            || self.pending.iter().any(|p| p.seq != 0 || p.no_clone);
        if self.chain != 0 || snap {
            v.extend_from_slice(&self.chain.to_le_bytes());
        }
        if snap {
            v.push(SNAP_EXT);
            v.extend_from_slice(&self.seq.to_le_bytes());
            v.extend_from_slice(&self.birth.to_le_bytes());
            v.extend_from_slice(&self.clone_seq.to_le_bytes());
            v.extend_from_slice(&self.snap_floor.to_le_bytes());
            for p in &self.pending {
                v.extend_from_slice(&p.seq.to_le_bytes());
                v.push(u8::from(p.no_clone));
            }
        }
        v
    }

    /// Decodes a record made by [`Self::encode`].
    ///
    /// # Errors
    /// [`DecodeError`] for a truncated, overlong or inconsistent record.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(b);
        r.format()?;
        let committed_version = r.u64()?;
        let committed_len = r.u64()?;
        let n = r.count(PENDING_SIZE)?;
        let mut pending = Vec::with_capacity(n);
        for i in 0..n {
            let p = Pending {
                version: r.u64()?,
                offset: r.u64()?,
                len: r.u64()?,
                new_len: r.u64()?,
                digest: r.u32()?,
                seq: 0,
                no_clone: false,
            };
            if p.version != committed_version + 1 + i as u64
                || p.new_len > CHUNK_MAX
                || p.offset.checked_add(p.len).is_none_or(|e| e > CHUNK_MAX)
            {
                return Err(DecodeError::Value);
            }
            pending.push(p);
        }
        // The chain id trails the record; records written before it
        // existed end here.
        let chain = if r.0.is_empty() { 0 } else { r.u32()? };
        // Then the snapshot fields, in records written since snapshots.
        let (mut seq, mut birth, mut clone_seq, mut snap_floor) = (0, 0, 0, 0);
        if !r.0.is_empty() {
            if r.u8()? != SNAP_EXT {
                return Err(DecodeError::Value);
            }
            seq = r.u64()?;
            birth = r.u64()?;
            clone_seq = r.u64()?;
            snap_floor = r.u64()?;
            for p in &mut pending {
                p.seq = r.u64()?;
                p.no_clone = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError::Value),
                };
            }
        }
        r.end()?;
        if committed_len > CHUNK_MAX {
            return Err(DecodeError::Value);
        }
        Ok(Self {
            committed_version,
            committed_len,
            pending,
            chain,
            seq,
            birth,
            clone_seq,
            snap_floor,
        })
    }
}

impl BlockEntry {
    /// Returns the record bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(
            1 + 13 + SEAL_LEN + 4 + self.pending.len() * (PENDING_REF_SIZE + SEAL_LEN),
        );
        v.push(RECORD_FORMAT);
        put_ref(&mut v, self.committed);
        v.extend_from_slice(&(self.pending.len() as u32).to_le_bytes());
        for (version, r) in &self.pending {
            v.extend_from_slice(&version.to_le_bytes());
            match r {
                // A dropped block keeps the fixed-size form older
                // records have: tag 0 and twelve zero bytes.
                None => {
                    v.push(REF_NONE);
                    v.extend_from_slice(&[0u8; 12]);
                }
                Some(_) => put_ref(&mut v, *r),
            }
        }
        v
    }

    /// Decodes a record made by [`Self::encode`].
    ///
    /// # Errors
    /// [`DecodeError`] for a truncated, overlong or inconsistent record.
    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(b);
        r.format()?;
        let committed = match r.u8()? {
            REF_NONE => None,
            tag @ (REF_PLAIN | REF_SEALED) => Some(r.block_ref(tag)?),
            _ => return Err(DecodeError::Value),
        };
        let n = r.count(PENDING_REF_SIZE)?;
        let mut pending: Vec<(u64, Option<BlockRef>)> = Vec::with_capacity(n);
        for _ in 0..n {
            let version = r.u64()?;
            let block = match r.u8()? {
                REF_NONE => {
                    r.take::<12>()?;
                    None
                }
                tag @ (REF_PLAIN | REF_SEALED) => Some(r.block_ref(tag)?),
                _ => return Err(DecodeError::Value),
            };
            if pending.last().is_some_and(|(v, _)| *v >= version) {
                return Err(DecodeError::Value);
            }
            pending.push((version, block));
        }
        r.end()?;
        Ok(Self { committed, pending })
    }
}

/// Encodes the entries of one block group, in block order: format byte,
/// count (u16), then per entry its block index (u32) and its encoded
/// [`BlockEntry`] with a u32 length.
pub fn encode_group<'a>(entries: impl Iterator<Item = (u32, &'a BlockEntry)>) -> Vec<u8> {
    let mut out = vec![GROUP_FORMAT, 0, 0];
    let mut n: u16 = 0;
    for (block, e) in entries {
        let rec = e.encode();
        out.extend_from_slice(&block.to_le_bytes());
        out.extend_from_slice(&(rec.len() as u32).to_le_bytes());
        out.extend_from_slice(&rec);
        n += 1;
    }
    out[1..3].copy_from_slice(&n.to_le_bytes());
    out
}

/// Decodes a block group written by [`encode_group`].
///
/// # Errors
/// [`DecodeError`] for anything but a well-formed group.
pub fn decode_group(b: &[u8]) -> Result<Vec<(u32, BlockEntry)>, DecodeError> {
    let mut out = Vec::new();
    decode_group_range(b, .., &mut out)?;
    Ok(out)
}

/// [`decode_group`], appending to `out` only the entries of blocks in
/// `range`: what a read uses, so that a 4 KiB read decodes one entry,
/// not the group's every entry, and allocates no vector of its own. The
/// whole record is still checked for well-formedness.
///
/// # Errors
/// As [`decode_group`].
pub fn decode_group_range(
    b: &[u8],
    range: impl std::ops::RangeBounds<u32>,
    out: &mut Vec<(u32, BlockEntry)>,
) -> Result<(), DecodeError> {
    let mut r = Reader(b);
    let format = r.u8()?;
    if format != GROUP_FORMAT {
        return Err(DecodeError::Format(format));
    }
    let n = u16::from_le_bytes(r.take()?);
    // Each entry takes at least 8 bytes: no allocation beyond the input.
    if usize::from(n) > r.0.len() / 8 {
        return Err(DecodeError::Length);
    }
    for _ in 0..n {
        let block = r.u32()?;
        let len = r.u32()? as usize;
        if len > r.0.len() {
            return Err(DecodeError::Length);
        }
        let (rec, rest) = r.0.split_at(len);
        r.0 = rest;
        if range.contains(&block) {
            out.push((block, BlockEntry::decode(rec)?));
        }
    }
    if !r.0.is_empty() {
        return Err(DecodeError::Length);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(o: u64, i: u64) -> ChunkId {
        ChunkId {
            object: ObjectId(o),
            index: i,
        }
    }

    #[test]
    fn segments_split_at_chunk_block_boundaries() {
        let s: Vec<_> = segments(4095, 4098).collect();
        assert_eq!(
            s,
            vec![
                Segment {
                    block: 0,
                    in_block: 4095,
                    len: 1,
                    buf_off: 0
                },
                Segment {
                    block: 1,
                    in_block: 0,
                    len: 4096,
                    buf_off: 1
                },
                Segment {
                    block: 2,
                    in_block: 0,
                    len: 1,
                    buf_off: 4097
                },
            ]
        );
        assert_eq!(segments(0, 0).count(), 0);
        assert_eq!(segments(8192, 4096).count(), 1);
        assert!(segments(8192, 4096).all(|s| s.is_full()));
        for (off, len) in [(0, 1), (1, 4095), (4095, 2), (0, 1 << 20), (123, 999_999)] {
            let segs: Vec<_> = segments(off, len).collect();
            assert_eq!(segs.len(), segment_count(off, len));
            assert_eq!(segs.iter().map(|s| s.len as u64).sum::<u64>(), len);
            let (first, end) = block_range(off, len);
            assert_eq!(segs[0].block, first);
            assert_eq!(segs.last().map(|s| s.block + 1), Some(end));
        }
    }

    #[test]
    fn keys_sort_by_number_and_round_trip() {
        let a = group_key(chunk(1, 2), 3);
        let b = group_key(chunk(1, 2), 256);
        let c = group_key(chunk(1, 3), 0);
        assert!(a < b && b < c);
        assert!(a.starts_with(&chunk_blocks_prefix(chunk(1, 2))));
        assert_eq!(decode_group_key(&b), Some((chunk(1, 2), 256)));
        assert_eq!(group_of(63), 0);
        assert_eq!(group_of(64), 1);
        assert_eq!(
            decode_header_key(&header_key(chunk(u64::MAX, 7))),
            Some(chunk(u64::MAX, 7))
        );
        assert_eq!(decode_header_key(&a), None);
        assert_eq!(decode_group_key(&header_key(chunk(1, 1))), None);
    }

    #[test]
    fn records_round_trip_and_reject_corruption() {
        let h = ChunkHeader {
            committed_version: 4,
            committed_len: 10_000,
            pending: vec![
                Pending {
                    version: 5,
                    offset: 1,
                    len: 2,
                    new_len: 10_000,
                    digest: 9,
                    seq: 0,
                    no_clone: false,
                },
                Pending {
                    version: 6,
                    offset: 0,
                    len: 0,
                    new_len: 3,
                    digest: 0,
                    seq: 0,
                    no_clone: false,
                },
            ],
            chain: 0,
            ..ChunkHeader::default()
        };
        let snapped = ChunkHeader {
            seq: 7,
            birth: 3,
            clone_seq: 5,
            snap_floor: 2,
            pending: h
                .pending
                .iter()
                .map(|p| Pending {
                    seq: 7,
                    no_clone: p.version == 6,
                    ..*p
                })
                .collect(),
            ..h.clone()
        };
        let sb = snapped.encode();
        assert_eq!(ChunkHeader::decode(&sb), Ok(snapped.clone()));
        // Cut inside the snapshot fields: never a record.
        let base = h.encode().len() + 4;
        for cut in base + 1..sb.len() {
            assert!(ChunkHeader::decode(&sb[..cut]).is_err(), "cut {cut}");
        }
        let mut bad_flag = sb.clone();
        *bad_flag.last_mut().unwrap() = 2;
        assert_eq!(ChunkHeader::decode(&bad_flag), Err(DecodeError::Value));
        let clone = CloneHeader {
            version: 4,
            len: 10_000,
            birth: 3,
        };
        assert_eq!(CloneHeader::decode(&clone.encode()), Ok(clone));
        assert!(CloneHeader::decode(&clone.encode()[..24]).is_err());
        assert_eq!(
            decode_clone_key(&clone_key(chunk(1, 2), 9)),
            Some((chunk(1, 2), 9))
        );
        assert!(clone_key(chunk(1, 2), 9) < clone_key(chunk(1, 2), 10));
        assert!(
            clone_group_key(chunk(1, 2), 9, 0).starts_with(&clone_blocks_prefix(chunk(1, 2), 9))
        );
        let chained = ChunkHeader {
            chain: 77,
            ..h.clone()
        };
        assert_eq!(ChunkHeader::decode(&chained.encode()), Ok(chained));
        let bytes = h.encode();
        assert_eq!(ChunkHeader::decode(&bytes), Ok(h.clone()));
        for cut in 0..bytes.len() {
            assert!(ChunkHeader::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(ChunkHeader::decode(&long), Err(DecodeError::Length));
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert_eq!(ChunkHeader::decode(&bad), Err(DecodeError::Format(9)));
        // A huge count never allocates: it is checked against the bytes.
        let mut huge = bytes.clone();
        huge[17..21].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(ChunkHeader::decode(&huge), Err(DecodeError::Length));

        let e = BlockEntry {
            committed: Some(BlockRef::plain(7, 1)),
            pending: vec![(5, Some(BlockRef::plain(8, 2))), (6, None)],
        };
        let bytes = e.encode();
        assert_eq!(BlockEntry::decode(&bytes), Ok(e.clone()));
        for cut in 0..bytes.len() {
            assert!(BlockEntry::decode(&bytes[..cut]).is_err());
        }
        assert_eq!(e.newest(), None);
        assert_eq!(e.refs().count(), 2);
        let hole = BlockEntry::default();
        assert_eq!(BlockEntry::decode(&hole.encode()), Ok(hole.clone()));

        // Sealed references keep their seals; records written before seals
        // existed (tags 0 and 1 only) decode unchanged.
        let sealed = BlockRef {
            seal: [0xA5; SEAL_LEN],
            ..BlockRef::plain(11, 3)
        };
        let s = BlockEntry {
            committed: Some(sealed),
            pending: vec![
                (5, None),
                (6, Some(sealed)),
                (7, Some(BlockRef::plain(12, 4))),
            ],
        };
        let sb = s.encode();
        assert_eq!(BlockEntry::decode(&sb), Ok(s.clone()));
        for cut in 0..sb.len() {
            assert!(BlockEntry::decode(&sb[..cut]).is_err());
        }
        let mut zero_seal = sb.clone();
        zero_seal[1 + 1 + 12..1 + 1 + 12 + SEAL_LEN].fill(0);
        assert_eq!(BlockEntry::decode(&zero_seal), Err(DecodeError::Value));
        let old_format: Vec<u8> = [
            &[RECORD_FORMAT, 1][..],
            &7u64.to_le_bytes(),
            &1u32.to_le_bytes(),
            &2u32.to_le_bytes(),
            &5u64.to_le_bytes(),
            &[1],
            &8u64.to_le_bytes(),
            &2u32.to_le_bytes(),
            &6u64.to_le_bytes(),
            &[0],
            &[0u8; 12],
        ]
        .concat();
        assert_eq!(BlockEntry::decode(&old_format), Ok(e.clone()));
        assert_eq!(e.encode(), old_format, "plain records keep their old form");

        let g = encode_group([(3, &e), (9, &hole)].into_iter());
        assert_eq!(
            decode_group(&g),
            Ok(vec![(3, e.clone()), (9, hole.clone())])
        );
        for cut in 0..g.len() {
            assert!(decode_group(&g[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = g.clone();
        huge[1..3].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(decode_group(&huge), Err(DecodeError::Length));
        assert_eq!(decode_group(&encode_group(std::iter::empty())), Ok(vec![]));

        // A read's range: only its blocks, appended; a malformed record
        // fails whatever the range.
        let mut out = vec![(1, hole.clone())];
        assert_eq!(decode_group_range(&g, 4..10, &mut out), Ok(()));
        assert_eq!(out, vec![(1, hole.clone()), (9, hole.clone())]);
        let mut none = Vec::new();
        assert_eq!(decode_group_range(&g, 4..9, &mut none), Ok(()));
        assert!(none.is_empty());
        assert!(decode_group_range(&g[..g.len() - 1], 4..5, &mut none).is_err());
        assert_eq!(
            decode_group_range(&huge, 0..1, &mut none),
            Err(DecodeError::Length)
        );
    }

    #[test]
    fn zero_crc_is_crc_of_zero_block() {
        assert_eq!(zero_block_crc(), crc32fast::hash(&vec![0u8; 4096]));
    }
}
