//! Why a frame was refused.

use super::header::{Flags, Opcode};
use crate::ErrorCode;

/// A frame that cannot be decoded, encoded or trusted. Variants carry the
/// offending values, not formatted strings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first four bytes are not `b"CRN1"`.
    #[error("bad frame magic {0:#010x}")]
    BadMagic(u32),
    /// A format version this build does not read.
    #[error("unsupported frame format version {0}")]
    UnsupportedVersion(u8),
    /// An opcode byte (reply bit included) this build does not know.
    #[error("unknown opcode {0:#04x}")]
    UnknownOpcode(u8),
    /// Reserved flag bits are set.
    #[error("reserved flag bits set in {0:#06x}")]
    ReservedFlags(u16),
    /// The reserved header field is not 0.
    #[error("reserved header field is {0:#06x}, must be 0")]
    ReservedField(u16),
    /// The header CRC does not match the header bytes.
    #[error("header CRC mismatch: header says {expected:#010x}, bytes give {actual:#010x}")]
    HeaderCrc {
        /// The CRC the header carries.
        expected: u32,
        /// The CRC of the header bytes as received.
        actual: u32,
    },
    /// `length` is above the limit ([`MAX_PAYLOAD`](super::MAX_PAYLOAD) or
    /// the decoder's own).
    #[error("frame length {0} exceeds the limit")]
    TooLarge(u32),
    /// A request carries a non-zero status.
    #[error("status {0} in a request")]
    StatusInRequest(u16),
    /// PENDING or ERROR_MESSAGE where the rules forbid it.
    #[error("flags {flags:?} not allowed on opcode {opcode:#04x} with status {status}")]
    MisplacedFlags {
        /// The frame's flags.
        flags: Flags,
        /// The wire opcode.
        opcode: u8,
        /// The frame's status.
        status: u16,
    },
    /// A data body on a frame that cannot carry one.
    #[error("{opcode} {} cannot carry a data body", if *reply { "reply" } else { "request" })]
    UnexpectedBody {
        /// The opcode.
        opcode: Opcode,
        /// Whether the frame is a reply.
        reply: bool,
    },
    /// A Write or Forward request, or a successful Read or ReadChunk reply,
    /// without a body.
    #[error("{opcode} {} must carry a body", if *reply { "reply" } else { "request" })]
    MissingBody {
        /// The opcode.
        opcode: Opcode,
        /// Whether the frame is a reply.
        reply: bool,
    },
    /// A non-zero `length` on a bodyless frame other than a Read or
    /// ReadChunk request.
    #[error("{opcode} {} without a body has length {length}", if *reply { "reply" } else { "request" })]
    UnexpectedLength {
        /// The opcode.
        opcode: Opcode,
        /// Whether the frame is a reply.
        reply: bool,
        /// The length field.
        length: u32,
    },
    /// A sealed frame without one seal per segment, or seals on a frame
    /// without [`Flags::SEALED`].
    #[error("{bytes} bytes of block seals where {expected} seals belong")]
    BadSealCount {
        /// The seals the frame should carry.
        expected: usize,
        /// The seal bytes it carries.
        bytes: usize,
    },
    /// `offset + length` overflows a u64.
    #[error("range {offset}+{length} overflows")]
    RangeOverflow {
        /// The offset field.
        offset: u64,
        /// The length field.
        length: u32,
    },
    /// An error message longer than
    /// [`MAX_ERROR_MESSAGE`](super::MAX_ERROR_MESSAGE).
    #[error("error message of {0} bytes is too long")]
    MessageTooLong(u32),
    /// Encoding: the payload's size is not the header's `length` (or a
    /// bodyless frame has a payload).
    #[error("header length {header} but payload of {payload} bytes")]
    LengthMismatch {
        /// The length field (0 without a body).
        header: u32,
        /// The payload's size.
        payload: usize,
    },
    /// Encoding: the number of CRCs is not the number of segments.
    #[error("{actual} segment CRCs for {expected} segments")]
    BadCrcCount {
        /// The number of segments the payload covers.
        expected: usize,
        /// The number of CRCs given.
        actual: usize,
    },
    /// A payload segment does not match its CRC.
    #[error("payload segment {segment} failed its CRC check")]
    PayloadCrc {
        /// The index of the first bad segment.
        segment: usize,
    },
}

impl FrameError {
    /// Returns the stable code to report this error under:
    /// [`ErrorCode::Checksum`] for CRC failures, [`ErrorCode::BadRequest`]
    /// for everything else.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::HeaderCrc { .. } | Self::PayloadCrc { .. } => ErrorCode::Checksum,
            _ => ErrorCode::BadRequest,
        }
    }

    /// Returns whether the byte stream this came from can no longer be
    /// trusted, so the connection must be closed (after a
    /// [`Frame::protocol_error`](super::Frame::protocol_error)). Only
    /// [`FrameError::PayloadCrc`] leaves the framing intact: answer that one
    /// request and carry on.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, Self::PayloadCrc { .. })
    }
}
