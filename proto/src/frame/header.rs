//! The fixed frame header: its fields, its byte layout and its validity
//! rules (see the table in the parent module).

use super::error::FrameError;
use super::segment::segment_count;
use crate::ErrorCode;
use crate::ids::{ChainId, ChainVersion, ChunkId, ObjectId, SessionId};

/// The first four bytes of every frame, `b"CRN1"`, read as a little-endian
/// u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"CRN1");

/// The frame format version this build writes and the only one it reads.
pub const FORMAT_VERSION: u8 = 1;

/// The size of the encoded header in bytes.
pub const HEADER_LEN: usize = 128;

/// The largest `length` any frame may carry: 16 MiB.
pub const MAX_PAYLOAD: u32 = 16 << 20;

/// The largest error message an error reply may carry, in bytes.
pub const MAX_ERROR_MESSAGE: u32 = 4096;

/// Bytes of one block seal in a [`Flags::SEALED`] body: the 12-byte nonce
/// and the 16-byte AES-GCM tag of an encrypted block. All zero: no seal (a
/// hole, or a block written in plain).
pub const SEAL_LEN: usize = 28;

/// The bytes covered by the header CRC: everything before it.
const CRC_COVERED: usize = HEADER_LEN - 4;
const REPLY_BIT: u8 = 0x80;

// Lengths are u32 on the wire and become usize in memory.
const _: () = assert!(usize::BITS >= 32);

/// What a frame asks for (or, with the reply bit, answers). The values are
/// stable wire values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// Client → chain head: write `length` bytes at `offset`.
    Write = 1,
    /// Replica → successor: a write with the head-assigned `version`.
    Forward = 2,
    /// Successor → predecessor: `version` is committed.
    Commit = 3,
    /// Read `length` bytes at `offset`.
    Read = 4,
    /// Chunk length (reply `offset`) and committed version (reply `version`).
    Stat = 5,
    /// Remove the chunk.
    Remove = 6,
    /// Truncate the chunk to `offset` bytes.
    Truncate = 7,
    /// Whole-chunk read for resync and repair, paginated by `offset` and
    /// `length`.
    ReadChunk = 8,
    /// Liveness and round-trip check.
    Ping = 9,
    /// Sync source → syncing or repaired replica: a piece of a chunk's
    /// committed version `version`, to be stored at `offset`, replacing
    /// whatever the replica held of the chunk. `client_seq` carries the
    /// whole length of that version: the piece at offset 0 starts the
    /// replacement, the piece reaching that length completes it (only then
    /// does the replica report `version`), so an interrupted copy is never
    /// taken for a complete one.
    Install = 10,
    /// Remove many chunks of one chain and one shard, down the chain like
    /// Remove: the body lists them ([`encode_chunk_list`]), `chunk` is the
    /// first of them (for routing). One request and one metadata flush per
    /// replica for the whole list: the garbage collector's removal.
    RemoveMany = 11,
    /// Sync source → syncing member: list the snapshot state this replica
    /// holds of the chunk (its clones, snapshot floor, birth and seq). The
    /// successful reply's body is a [`CloneList`].
    Clones = 12,
    /// Sync source → syncing member: a piece of the chunk's clone kept for
    /// snapshot `snap_seq`, stored at `offset`: `version`, `client_seq` and
    /// `client_id` carry the clone's version, whole length and birth seq.
    /// The piece at offset 0 replaces whatever the member held of that
    /// clone; the clone exists only once the piece reaching its length has
    /// arrived. Accepted only for a clone at or below the member's
    /// snapshot floor (one it cannot have made itself).
    InstallClone = 13,
    /// Sync source → syncing member, after the clones: the member now holds
    /// every clone the source holds above the source's floor, so it serves
    /// snapshot reads above `snap_seq` (its new floor). `offset` and
    /// `client_seq` carry the chunk's birth seq and newest write seq as the
    /// source has them; applied only while the member's committed version
    /// is still `version`.
    SnapFloor = 14,
}

/// Most clones a [`CloneList`] may name (a volume keeps at most 256
/// snapshots; clones of deleted ones linger until pruned).
pub const MAX_CLONES: usize = 4096;

/// One clone in a [`CloneList`]: the chunk as snapshots up to `seq` (and
/// above the previous clone's) saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloneInfo {
    /// The clone's key: the snapshot seq of the write that replaced it.
    pub seq: u64,
    /// The chunk's committed version it keeps.
    pub version: u64,
    /// Its length.
    pub len: u64,
    /// The chunk's birth seq then.
    pub birth: u64,
}

/// The body of a successful [`Opcode::Clones`] reply: a replica's snapshot
/// state of one chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloneList {
    /// Snapshots at or below it are not served here (copied without
    /// clones).
    pub floor: u64,
    /// The seq of the mutation that created the chunk.
    pub birth: u64,
    /// The newest seq a committed mutation was written under.
    pub seq: u64,
    /// The clones, oldest first.
    pub clones: Vec<CloneInfo>,
}

impl CloneList {
    /// Encodes the list: floor, birth, seq, count, then seq, version, len
    /// and birth of each clone, u64 LE each.
    pub fn encode(&self) -> bytes::Bytes {
        let mut out = Vec::with_capacity(32 + 32 * self.clones.len());
        for v in [self.floor, self.birth, self.seq, self.clones.len() as u64] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for c in &self.clones {
            for v in [c.seq, c.version, c.len, c.birth] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out.into()
    }

    /// Decodes a body made by [`Self::encode`].
    ///
    /// # Errors
    /// A message saying what is wrong: a short or long body, or more than
    /// [`MAX_CLONES`] clones.
    pub fn decode(body: &[u8]) -> Result<CloneList, String> {
        let word = |i: usize| -> Option<u64> {
            let b = body.get(i * 8..i * 8 + 8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Some(u64::from_le_bytes(a))
        };
        let short = || format!("a clone list of {} bytes is cut short", body.len());
        let (floor, birth, seq, n) = match (word(0), word(1), word(2), word(3)) {
            (Some(a), Some(b), Some(c), Some(d)) => (a, b, c, d),
            _ => return Err(short()),
        };
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        if n > MAX_CLONES {
            return Err(format!(
                "a clone list names {n} clones, at most {MAX_CLONES}"
            ));
        }
        if body.len() != 32 + 32 * n {
            return Err(format!(
                "a clone list of {n} clones takes {} bytes, not {}",
                32 + 32 * n,
                body.len()
            ));
        }
        let clones = (0..n)
            .map(|i| CloneInfo {
                seq: word(4 + 4 * i).unwrap_or(0),
                version: word(5 + 4 * i).unwrap_or(0),
                len: word(6 + 4 * i).unwrap_or(0),
                birth: word(7 + 4 * i).unwrap_or(0),
            })
            .collect();
        Ok(CloneList {
            floor,
            birth,
            seq,
            clones,
        })
    }
}

/// Most chunks one [`Opcode::RemoveMany`] names.
pub const MAX_REMOVE_MANY: usize = 1024;

/// Bytes of one chunk id in a [`Opcode::RemoveMany`] body: object then
/// index, u64 LE each.
const CHUNK_ID_LEN: usize = 16;

/// Encodes the body of a [`Opcode::RemoveMany`] request.
pub fn encode_chunk_list(chunks: &[ChunkId]) -> bytes::Bytes {
    let mut out = Vec::with_capacity(chunks.len() * CHUNK_ID_LEN);
    for c in chunks {
        out.extend_from_slice(&c.object.0.to_le_bytes());
        out.extend_from_slice(&c.index.to_le_bytes());
    }
    out.into()
}

/// Decodes the body of a [`Opcode::RemoveMany`] request.
///
/// # Errors
/// A message saying what is wrong: a length that is not a whole number of
/// ids, no id, or more than [`MAX_REMOVE_MANY`].
pub fn decode_chunk_list(body: &[u8]) -> Result<Vec<ChunkId>, String> {
    if !body.len().is_multiple_of(CHUNK_ID_LEN) {
        return Err(format!(
            "a chunk list of {} bytes is not a whole number of {CHUNK_ID_LEN}-byte ids",
            body.len()
        ));
    }
    let n = body.len() / CHUNK_ID_LEN;
    if n == 0 || n > MAX_REMOVE_MANY {
        return Err(format!(
            "a chunk list names {n} chunks, it must name 1 to {MAX_REMOVE_MANY}"
        ));
    }
    Ok(body
        .chunks_exact(CHUNK_ID_LEN)
        .map(|b| {
            let mut object = [0u8; 8];
            let mut index = [0u8; 8];
            object.copy_from_slice(&b[..8]);
            index.copy_from_slice(&b[8..]);
            ChunkId {
                object: ObjectId(u64::from_le_bytes(object)),
                index: u64::from_le_bytes(index),
            }
        })
        .collect())
}

impl Opcode {
    /// Every opcode, in wire order.
    pub const ALL: [Opcode; 14] = [
        Self::Write,
        Self::Forward,
        Self::Commit,
        Self::Read,
        Self::Stat,
        Self::Remove,
        Self::Truncate,
        Self::ReadChunk,
        Self::Ping,
        Self::Install,
        Self::RemoveMany,
        Self::Clones,
        Self::InstallClone,
        Self::SnapFloor,
    ];

    /// Returns the opcode for a wire value without the reply bit, or `None`
    /// if this build does not know it.
    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|o| *o as u8 == v)
    }

    /// A short lowercase name for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::Write => "write",
            Self::Forward => "forward",
            Self::Commit => "commit",
            Self::Read => "read",
            Self::Stat => "stat",
            Self::Remove => "remove",
            Self::Truncate => "truncate",
            Self::ReadChunk => "read_chunk",
            Self::Ping => "ping",
            Self::Install => "install",
            Self::RemoveMany => "remove_many",
            Self::Clones => "clones",
            Self::InstallClone => "install_clone",
            Self::SnapFloor => "snap_floor",
        }
    }

    /// Returns whether a frame of this opcode and direction carries a data
    /// body when it succeeds (rule 5 of the module doc).
    pub fn carries_data(self, reply: bool) -> bool {
        match self {
            Self::Write | Self::Forward | Self::Install | Self::InstallClone | Self::RemoveMany => {
                !reply
            }
            Self::Read | Self::ReadChunk | Self::Clones => reply,
            _ => false,
        }
    }

    /// Returns whether a request of this opcode uses `length` without a body
    /// (the byte count to read).
    fn requests_length(self) -> bool {
        matches!(self, Self::Read | Self::ReadChunk)
    }
}

impl std::fmt::Display for Opcode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The header's flag bits. Bits this build does not define are reserved and
/// must be 0, so a value of this type only ever holds known bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(u16);

impl Flags {
    /// No flag set.
    pub const NONE: Flags = Flags(0);
    /// Bit 0: a body (`length` bytes, then the segment CRCs) follows.
    pub const BODY: Flags = Flags(1);
    /// Bit 1: the body is a UTF-8 error message (error replies only).
    pub const ERROR_MESSAGE: Flags = Flags(1 << 1);
    /// Bit 2: CRAQ "pending": the replica's copy is dirty and it could not
    /// answer; read another replica or retry (replies with status
    /// [`ErrorCode::Pending`] only).
    pub const PENDING: Flags = Flags(1 << 2);
    /// Bit 3: the body ends with one [`SEAL_LEN`]-byte seal per segment,
    /// after the CRCs (encrypted blocks: nonce and tag, DESIGN §7). Only on
    /// frames with a data body other than RemoveMany.
    pub const SEALED: Flags = Flags(1 << 3);
    /// Bit 4: on a Write request, conditional on the chunk's committed
    /// version being `version` (0: the chunk does not exist yet); the head
    /// refuses it otherwise. Without it a non-zero `version` in a Write
    /// request is conditional too (0 then means unconditional). On a Read
    /// request to the head: the read of a read-modify-write, answered once
    /// the head's pending versions are committed, so its version is the
    /// one a conditional write is compared with.
    pub const CONDITIONAL: Flags = Flags(1 << 4);
    /// Bit 5: on a Write, Truncate or Forward request, the written file's
    /// volume has no snapshot (as of the header's `snap_seq`): the replicas
    /// keep no clone of the chunk's previous version (DESIGN §3).
    pub const NO_CLONE: Flags = Flags(1 << 5);
    /// Bit 6: on a Read request, read the chunk as snapshot `snap_seq` saw
    /// it (its clone, or the current version if it has not changed since).
    pub const SNAPSHOT: Flags = Flags(1 << 6);
    const KNOWN: u16 = 0b111_1111;

    /// Returns the wire bits.
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// Returns the flags for wire bits, or `None` if a reserved bit is set.
    pub const fn from_bits(bits: u16) -> Option<Flags> {
        if bits & !Self::KNOWN == 0 {
            Some(Flags(bits))
        } else {
            None
        }
    }

    /// Returns whether every bit of `other` is set in `self`.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Returns `self` with the bits of `other` set too.
    #[must_use]
    pub const fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    /// Returns `self` with the bits of `other` cleared.
    #[must_use]
    pub const fn without(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        self.with(rhs)
    }
}

impl std::fmt::Debug for Flags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut set = f.debug_set();
        for (flag, name) in [
            (Self::BODY, "BODY"),
            (Self::ERROR_MESSAGE, "ERROR_MESSAGE"),
            (Self::PENDING, "PENDING"),
            (Self::SEALED, "SEALED"),
            (Self::CONDITIONAL, "CONDITIONAL"),
            (Self::NO_CLONE, "NO_CLONE"),
            (Self::SNAPSHOT, "SNAPSHOT"),
        ] {
            if self.contains(flag) {
                set.entry(&format_args!("{name}"));
            }
        }
        set.finish()
    }
}

/// The capability token field (DESIGN §11): an HMAC capability issued by
/// meta and checked by chunkservers. All zero means "no token". Its `Debug`
/// output never shows the bytes, so tokens do not leak into logs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CapabilityToken(pub [u8; CapabilityToken::LEN]);

impl CapabilityToken {
    /// The size of the field in bytes.
    pub const LEN: usize = 32;
    /// The absent token.
    pub const NONE: CapabilityToken = CapabilityToken([0; Self::LEN]);

    /// Returns whether this is the absent (all-zero) token.
    pub fn is_none(&self) -> bool {
        self.0 == [0; Self::LEN]
    }
}

impl std::fmt::Debug for CapabilityToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_none() {
            f.write_str("CapabilityToken(none)")
        } else {
            f.write_str("CapabilityToken(<redacted>)")
        }
    }
}

/// A decoded frame header. Every field is on the wire; see the layout table
/// in the module doc for what each one means per opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// What the frame asks for or answers.
    pub opcode: Opcode,
    /// Whether this frame is a reply (bit 7 of the wire opcode).
    pub reply: bool,
    /// Flag bits.
    pub flags: Flags,
    /// Matches a reply to its request on a pipelined connection.
    pub request_id: u64,
    /// The chunk addressed.
    pub chunk: ChunkId,
    /// The chain the chunk lives on.
    pub chain: ChainId,
    /// The sender's chain version (fencing, DESIGN §5).
    pub chain_version: ChainVersion,
    /// Byte offset inside the chunk.
    pub offset: u64,
    /// Payload bytes, or bytes requested by a Read or ReadChunk request.
    pub length: u32,
    /// Chunk version (head-assigned, committed or expected).
    pub version: u64,
    /// Snapshot sequence.
    pub snap_seq: u64,
    /// The writing client, for idempotent writes.
    pub client_id: SessionId,
    /// The writing client's sequence number.
    pub client_seq: u64,
    /// 0, or an [`ErrorCode`] value in an error reply.
    pub status: u16,
    /// Capability token.
    pub token: CapabilityToken,
}

impl Header {
    /// Returns a request header for `opcode` with every other field zero;
    /// set the fields the opcode uses with struct update syntax.
    pub fn request(opcode: Opcode, request_id: u64) -> Header {
        Header {
            opcode,
            reply: false,
            flags: Flags::NONE,
            request_id,
            chunk: ChunkId {
                object: ObjectId(0),
                index: 0,
            },
            chain: ChainId(0),
            chain_version: ChainVersion(0),
            offset: 0,
            length: 0,
            version: 0,
            snap_seq: 0,
            client_id: SessionId(0),
            client_seq: 0,
            status: 0,
            token: CapabilityToken::NONE,
        }
    }

    /// Returns the header of a successful, bodyless reply to `req`: same
    /// opcode with the reply bit, and `request_id`, chunk, chain, chain
    /// version, offset, snap_seq and client id/sequence echoed. `length`,
    /// `version` and `status` are 0 and the token is not echoed.
    pub fn reply_to(req: &Header) -> Header {
        Header {
            reply: true,
            chunk: req.chunk,
            chain: req.chain,
            chain_version: req.chain_version,
            offset: req.offset,
            snap_seq: req.snap_seq,
            client_id: req.client_id,
            client_seq: req.client_seq,
            ..Header::request(req.opcode, req.request_id)
        }
    }

    /// Returns the opcode byte as sent: the opcode, with bit 7 for a reply.
    pub fn wire_opcode(&self) -> u8 {
        if self.reply {
            self.opcode as u8 | REPLY_BIT
        } else {
            self.opcode as u8
        }
    }

    /// Returns the error this frame reports: `None` for status 0, the code
    /// otherwise ([`ErrorCode::Internal`] for a code this build does not
    /// know, sent by a newer peer).
    pub fn error_code(&self) -> Option<ErrorCode> {
        match self.status {
            0 => None,
            s => Some(ErrorCode::from_u32(u32::from(s)).unwrap_or(ErrorCode::Internal)),
        }
    }

    /// Returns whether a body follows the header.
    pub fn has_body(&self) -> bool {
        self.flags.contains(Flags::BODY)
    }

    /// Returns whether the body carries block seals after its CRCs.
    pub fn is_sealed(&self) -> bool {
        self.flags.contains(Flags::SEALED)
    }

    /// Returns the chunk offset the body's segment CRCs are aligned to:
    /// `offset` for data, 0 for an error message.
    pub fn segment_base(&self) -> u64 {
        if self.flags.contains(Flags::ERROR_MESSAGE) {
            0
        } else {
            self.offset
        }
    }

    /// Returns how many segment CRCs follow the payload (0 without a body).
    ///
    /// # Errors
    ///
    /// [`FrameError::RangeOverflow`] if the segment range overflows a u64.
    pub fn crc_count(&self) -> Result<usize, FrameError> {
        if !self.has_body() {
            return Ok(0);
        }
        segment_count(self.segment_base(), u64::from(self.length))
            .and_then(|n| usize::try_from(n).ok())
            .ok_or(FrameError::RangeOverflow {
                offset: self.offset,
                length: self.length,
            })
    }

    /// Returns the number of bytes that follow the header: payload plus
    /// CRCs, 0 without a body.
    ///
    /// # Errors
    ///
    /// [`FrameError::RangeOverflow`] if the body size overflows.
    pub fn body_len(&self) -> Result<usize, FrameError> {
        if !self.has_body() {
            return Ok(0);
        }
        let overflow = FrameError::RangeOverflow {
            offset: self.offset,
            length: self.length,
        };
        let per_segment = if self.is_sealed() { 4 + SEAL_LEN } else { 4 };
        let trailer = self
            .crc_count()?
            .checked_mul(per_segment)
            .ok_or(overflow.clone())?;
        trailer.checked_add(self.length as usize).ok_or(overflow)
    }

    /// Checks the rules of the module doc that a [`Header`] value can break
    /// (rules 2 to 7); the decoder and the encoder both call it.
    ///
    /// # Errors
    ///
    /// The [`FrameError`] of the first rule broken.
    pub fn validate(&self) -> Result<(), FrameError> {
        let body = self.has_body();
        let message = self.flags.contains(Flags::ERROR_MESSAGE);
        let pending = self.flags.contains(Flags::PENDING);
        if !self.reply && self.status != 0 {
            return Err(FrameError::StatusInRequest(self.status));
        }
        let sealed = self.is_sealed();
        let conditional = self.flags.contains(Flags::CONDITIONAL);
        let no_clone = self.flags.contains(Flags::NO_CLONE);
        let snapshot = self.flags.contains(Flags::SNAPSHOT);
        let misplaced = (pending && self.status != ErrorCode::Pending as u16)
            || (no_clone
                && (self.reply
                    || !matches!(
                        self.opcode,
                        Opcode::Write | Opcode::Truncate | Opcode::Forward
                    )))
            || (snapshot && (self.reply || self.opcode != Opcode::Read))
            || (conditional
                && (self.reply || !matches!(self.opcode, Opcode::Write | Opcode::Read)))
            || (message && (self.status == 0 || !body))
            || (sealed
                && (!body
                    || message
                    || self.opcode == Opcode::RemoveMany
                    || !self.opcode.carries_data(self.reply)));
        if misplaced {
            return Err(FrameError::MisplacedFlags {
                flags: self.flags,
                opcode: self.wire_opcode(),
                status: self.status,
            });
        }
        if self.length > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(self.length));
        }
        let data_frame = self.opcode.carries_data(self.reply) && self.status == 0;
        if body && message {
            if self.length > MAX_ERROR_MESSAGE {
                return Err(FrameError::MessageTooLong(self.length));
            }
        } else if body && !data_frame {
            return Err(FrameError::UnexpectedBody {
                opcode: self.opcode,
                reply: self.reply,
            });
        } else if !body && data_frame {
            return Err(FrameError::MissingBody {
                opcode: self.opcode,
                reply: self.reply,
            });
        } else if !body && self.length != 0 && (self.reply || !self.opcode.requests_length()) {
            return Err(FrameError::UnexpectedLength {
                opcode: self.opcode,
                reply: self.reply,
                length: self.length,
            });
        }
        if self
            .segment_base()
            .checked_add(u64::from(self.length))
            .is_none()
        {
            return Err(FrameError::RangeOverflow {
                offset: self.offset,
                length: self.length,
            });
        }
        Ok(())
    }

    /// Returns the 128 wire bytes of this header, header CRC included. It
    /// does not validate: [`Frame::encode_into`](super::Frame::encode_into)
    /// does.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut buf = [0u8; HEADER_LEN];
        let mut w = Writer(&mut buf);
        w.put(MAGIC.to_le_bytes());
        w.put([FORMAT_VERSION]);
        w.put([self.wire_opcode()]);
        w.put(self.flags.bits().to_le_bytes());
        w.put(self.request_id.to_le_bytes());
        w.put(self.chunk.object.0.to_le_bytes());
        w.put(self.chunk.index.to_le_bytes());
        w.put(self.chain.0.to_le_bytes());
        w.put(self.length.to_le_bytes());
        w.put(self.chain_version.0.to_le_bytes());
        w.put(self.offset.to_le_bytes());
        w.put(self.version.to_le_bytes());
        w.put(self.snap_seq.to_le_bytes());
        w.put(self.client_id.0.to_le_bytes());
        w.put(self.client_seq.to_le_bytes());
        w.put(self.status.to_le_bytes());
        w.put(0u16.to_le_bytes());
        w.put(self.token.0);
        let (covered, crc) = buf.split_at_mut(CRC_COVERED);
        Writer(crc).put(crc32fast::hash(covered).to_le_bytes());
        buf
    }

    /// Decodes and validates a header: magic, version, header CRC, opcode,
    /// flags, the reserved field, then [`Header::validate`].
    ///
    /// # Errors
    ///
    /// The [`FrameError`] of the first check that fails.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Header, FrameError> {
        let mut r = Reader(bytes);
        let magic = u32::from_le_bytes(r.take());
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let [version] = r.take();
        if version != FORMAT_VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        let (covered, crc) = bytes.split_at(CRC_COVERED);
        let expected = u32::from_le_bytes(Reader(crc).take());
        let actual = crc32fast::hash(covered);
        if expected != actual {
            return Err(FrameError::HeaderCrc { expected, actual });
        }
        let [op] = r.take();
        let opcode = Opcode::from_u8(op & !REPLY_BIT).ok_or(FrameError::UnknownOpcode(op))?;
        let flag_bits = u16::from_le_bytes(r.take());
        let flags = Flags::from_bits(flag_bits).ok_or(FrameError::ReservedFlags(flag_bits))?;
        let request_id = u64::from_le_bytes(r.take());
        let object = ObjectId(u64::from_le_bytes(r.take()));
        let index = u64::from_le_bytes(r.take());
        let chain = ChainId(u32::from_le_bytes(r.take()));
        let length = u32::from_le_bytes(r.take());
        let chain_version = ChainVersion(u64::from_le_bytes(r.take()));
        let offset = u64::from_le_bytes(r.take());
        let chunk_version = u64::from_le_bytes(r.take());
        let snap_seq = u64::from_le_bytes(r.take());
        let client_id = SessionId(u64::from_le_bytes(r.take()));
        let client_seq = u64::from_le_bytes(r.take());
        let status = u16::from_le_bytes(r.take());
        let reserved = u16::from_le_bytes(r.take());
        if reserved != 0 {
            return Err(FrameError::ReservedField(reserved));
        }
        let token = CapabilityToken(r.take());
        let header = Header {
            opcode,
            reply: op & REPLY_BIT != 0,
            flags,
            request_id,
            chunk: ChunkId { object, index },
            chain,
            chain_version,
            offset,
            length,
            version: chunk_version,
            snap_seq,
            client_id,
            client_seq,
            status,
            token,
        };
        header.validate()?;
        Ok(header)
    }
}

/// Checks the magic and version as soon as their bytes are buffered, so
/// garbage fails without waiting for a whole header.
pub(super) fn check_prefix(buf: &[u8]) -> Result<(), FrameError> {
    if let Some(magic) = buf.first_chunk::<4>() {
        let magic = u32::from_le_bytes(*magic);
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
    }
    match buf.get(4) {
        Some(&v) if v != FORMAT_VERSION => Err(FrameError::UnsupportedVersion(v)),
        _ => Ok(()),
    }
}

/// Writes consecutive fields; the field order in [`Header::encode`] is the
/// layout. Writing past the end is impossible by construction of the
/// layout (the golden test pins it) and would silently drop bytes rather
/// than panic.
struct Writer<'a>(&'a mut [u8]);

impl Writer<'_> {
    fn put<const N: usize>(&mut self, bytes: [u8; N]) {
        let buf = std::mem::take(&mut self.0);
        if let Some((head, rest)) = buf.split_first_chunk_mut::<N>() {
            *head = bytes;
            self.0 = rest;
        }
    }
}

/// Reads consecutive fields; never panics (a short read yields zeros, which
/// cannot happen on a `[u8; HEADER_LEN]`).
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        match self.0.split_first_chunk::<N>() {
            Some((head, rest)) => {
                self.0 = rest;
                *head
            }
            None => [0; N],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_lists_round_trip_and_bad_ones_are_refused() {
        let list = CloneList {
            floor: 9,
            birth: 2,
            seq: 11,
            clones: (1..=3)
                .map(|i| CloneInfo {
                    seq: i * 3,
                    version: i,
                    len: i << 20,
                    birth: 2,
                })
                .collect(),
        };
        let body = list.encode();
        assert_eq!(body.len(), 32 + 3 * 32);
        assert_eq!(CloneList::decode(&body).unwrap(), list);
        assert_eq!(
            CloneList::decode(&CloneList::default().encode()).unwrap(),
            CloneList::default()
        );
        assert!(
            CloneList::decode(&body[..20])
                .unwrap_err()
                .contains("cut short")
        );
        assert!(
            CloneList::decode(&body[..100])
                .unwrap_err()
                .contains("takes")
        );
        let mut huge = body.to_vec();
        huge[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(CloneList::decode(&huge).unwrap_err().contains("at most"));
    }

    #[test]
    fn chunk_lists_round_trip_and_bad_ones_are_refused() {
        let chunks: Vec<ChunkId> = (0..5)
            .map(|i| ChunkId {
                object: ObjectId(u64::MAX - i),
                index: i * 7,
            })
            .collect();
        let body = encode_chunk_list(&chunks);
        assert_eq!(body.len(), 80);
        assert_eq!(decode_chunk_list(&body).unwrap(), chunks);
        assert!(
            decode_chunk_list(&body[..79])
                .unwrap_err()
                .contains("whole number")
        );
        assert!(
            decode_chunk_list(&[])
                .unwrap_err()
                .contains("names 0 chunks")
        );
        let too_many = vec![chunks[0]; MAX_REMOVE_MANY + 1];
        assert!(decode_chunk_list(&encode_chunk_list(&too_many)).is_err());
        let most = vec![chunks[0]; MAX_REMOVE_MANY];
        assert_eq!(
            decode_chunk_list(&encode_chunk_list(&most)).unwrap().len(),
            MAX_REMOVE_MANY
        );
    }
}
