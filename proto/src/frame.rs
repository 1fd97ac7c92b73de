//! The data-plane frame: Cairn's binary protocol between clients and
//! chunkservers and between the replicas of a chain (DESIGN §5, §6).
//!
//! A frame is a fixed 128-byte little-endian [`Header`], then, when the
//! header's [`Flags::BODY`] bit is set, `length` payload bytes and one CRC32
//! per 4 KiB segment of the payload. Requests are pipelined: a connection
//! carries many in flight, and a reply echoes its request's `request_id`.
//! This module is pure and runtime-agnostic: [`FrameDecoder`] works on a
//! [`bytes::BytesMut`] read buffer (the chunkserver feeds it from glommio,
//! the client from tokio through the helpers in [`io`]), and payloads are
//! [`bytes::Bytes`] views of that buffer, never copied on the way through.
//!
//! # Header layout (format version 1, 128 bytes, all integers little-endian)
//!
//! | offset | size | field           | meaning |
//! |-------:|-----:|-----------------|---------|
//! |      0 |    4 | `magic`         | `b"CRN1"` (the u32 `0x314E_5243`) |
//! |      4 |    1 | `version`       | format version, [`FORMAT_VERSION`] = 1 |
//! |      5 |    1 | `opcode`        | [`Opcode`]; bit 7 set = reply |
//! |      6 |    2 | `flags`         | [`Flags`]: bit 0 body, bit 1 error message, bit 2 pending, bit 3 sealed, bit 4 conditional, bit 5 no clone, bit 6 snapshot read; others 0 |
//! |      8 |    8 | `request_id`    | chosen by the sender of a request, echoed by its reply |
//! |     16 |    8 | `chunk.object`  | [`ObjectId`](crate::ids::ObjectId) of the chunk |
//! |     24 |    8 | `chunk.index`   | index of the chunk in its object |
//! |     32 |    4 | `chain`         | [`ChainId`](crate::ids::ChainId) |
//! |     36 |    4 | `length`        | payload bytes when a body follows; bytes requested by Read/ReadChunk requests; else 0 |
//! |     40 |    8 | `chain_version` | [`ChainVersion`](crate::ids::ChainVersion), for fencing |
//! |     48 |    8 | `offset`        | byte offset inside the chunk (Truncate: the new length; Stat reply: the chunk length) |
//! |     56 |    8 | `version`       | chunk version: head-assigned on Forward, committed in replies, expected by a conditional Write (with [`Flags::CONDITIONAL`]; without it, 0 = unconditional) |
//! |     64 |    8 | `snap_seq`      | the writer's (or a snapshot read's) snapshot sequence |
//! |     72 |    8 | `client_id`     | [`SessionId`](crate::ids::SessionId) of the writing client, for idempotent writes |
//! |     80 |    8 | `client_seq`    | the client's write sequence |
//! |     88 |    2 | `status`        | 0, or an [`ErrorCode`](crate::ErrorCode) in an error reply |
//! |     90 |    2 | `reserved`      | 0 in version 1 |
//! |     92 |   32 | `token`         | [`CapabilityToken`]; all zero = none (DESIGN §11) |
//! |    124 |    4 | `header_crc`    | CRC32 (crc32fast, IEEE) of bytes 0..124 |
//!
//! The fields are those of DESIGN §6 ordered so that every field sits at a
//! multiple of its own size (`chain` and `length` share one 8-byte slot and a
//! reserved u16 pads `status`), which makes the header exactly two cache
//! lines and its hex dumps readable. The magic is the first four bytes on
//! the wire, so a stray HTTP client or an unsynchronized stream fails after
//! four bytes.
//!
//! # Body
//!
//! When [`Flags::BODY`] is set, `length` payload bytes follow the header,
//! then `n` CRC32s (u32 LE), one per segment: the payload is cut at the
//! multiples of 4096 of the *chunk* offset, so the first segment runs from
//! `offset` to the next 4 KiB boundary and the last one may be partial
//! ([`segment_crcs`], [`segment_count`]). For a block-aligned payload each
//! CRC is exactly the per-block CRC a replica stores, which is what makes
//! checksums end to end. With [`Flags::SEALED`] the CRCs are followed by
//! one [`SEAL_LEN`]-byte seal per segment: the nonce and AES-GCM tag of an
//! encrypted block (DESIGN §7), all zero for a block without one (a hole).
//! Chunkservers store seals beside the block CRCs and return them with
//! reads; they never interpret them. An error message body is not chunk data: its
//! segments are counted from offset 0 whatever `offset` says, so a message
//! (at most [`MAX_ERROR_MESSAGE`] bytes) has one CRC.
//!
//! # Rules the decoder enforces (any violation is a [`FrameError`])
//!
//! 1. Magic, then version, then the header CRC, then opcode (1..=14, with or
//!    without the reply bit), flags (reserved bits 0) and the reserved field.
//! 2. `status` is 0 in requests.
//! 3. [`Flags::PENDING`] only in replies whose status is
//!    [`ErrorCode::Pending`](crate::ErrorCode::Pending): a CRAQ replica whose
//!    range is dirty answers with both, so code that looks only at `status`
//!    can never take "pending" for data.
//! 4. [`Flags::ERROR_MESSAGE`] only in replies with a non-zero status, and
//!    only with [`Flags::BODY`]; the body is then a UTF-8 message.
//! 5. A data body (BODY without ERROR_MESSAGE) travels on Write, Forward,
//!    Install, InstallClone and RemoveMany (its chunk list) requests and on
//!    successful (status 0) Read, ReadChunk and Clones (a [`CloneList`])
//!    replies, and those frames must carry one (possibly empty). No other
//!    frame may.
//! 6. `length` ≤ [`MAX_PAYLOAD`] (16 MiB) in every frame, checked before
//!    anything is buffered for the body. Without a body `length` is 0,
//!    except in Read and ReadChunk requests, where it is the byte count
//!    requested.
//! 7. `offset + length` fits in a u64 (for an error message, `length`
//!    counted from 0, see above).
//! 8. [`Flags::NO_CLONE`] only on Write, Truncate and Forward requests;
//!    [`Flags::SNAPSHOT`] only on Read requests.
//!
//! Opcode conventions the codec does not check: Truncate carries the new
//! chunk length in `offset`; a Stat reply carries the chunk length in
//! `offset` and its committed version in `version`; Remove and Truncate
//! travel down a chain under their own opcodes with the head-assigned
//! `version`; `request_id` 0 is reserved for [`Frame::protocol_error`], so
//! senders number requests from 1.
//!
//! # Errors and the connection
//!
//! Every error [`FrameDecoder::decode`] returns means the stream can no
//! longer be trusted ([`FrameError::is_fatal`]): the server answers with
//! [`Frame::protocol_error`] and closes the connection (DESIGN §6). The
//! decoder never panics and never consumes bytes on error or on a partial
//! frame. Payload CRCs are not checked by the decoder, since a bad payload
//! under a good header leaves the framing intact: the receiver calls
//! [`Frame::verify_payload`] (every replica before storing, the client after
//! reading) and answers that one request with
//! [`ErrorCode::Checksum`](crate::ErrorCode::Checksum).

#![warn(missing_docs)]

mod codec;
mod error;
mod header;
pub mod io;
mod segment;

pub use codec::{EncodedFrame, Frame, FrameDecoder};
pub use error::FrameError;
pub use header::{
    CapabilityToken, CloneInfo, CloneList, FORMAT_VERSION, Flags, HEADER_LEN, Header, MAGIC,
    MAX_CLONES, MAX_ERROR_MESSAGE, MAX_PAYLOAD, MAX_REMOVE_MANY, Opcode, SEAL_LEN,
    decode_chunk_list, encode_chunk_list,
};
pub use segment::{
    BLOCK_SIZE, SegmentCrcs, Segments, segment_count, segment_crcs, segments, verify_segments,
};
