//! Whole frames: building, encoding (copying or vectored) and the streaming
//! decoder.

use std::borrow::Cow;
use std::io::IoSlice;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::FrameError;
use super::header::{
    Flags, HEADER_LEN, Header, MAX_ERROR_MESSAGE, MAX_PAYLOAD, Opcode, SEAL_LEN, check_prefix,
};
use super::segment::SegmentCrcs;
use crate::ErrorCode;

/// One frame: a header and, when [`Flags::BODY`] is set, its payload and
/// segment CRCs. Decoded payloads and CRCs are views of the read buffer.
///
/// The fields are public so a frame can be taken apart without copies; the
/// constructors keep them consistent, and the encoders refuse a frame the
/// decoder would refuse.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header.
    pub header: Header,
    /// The payload: data, an error message, or empty.
    pub payload: Bytes,
    /// One CRC per payload segment.
    pub crcs: SegmentCrcs,
    /// With [`Flags::SEALED`]: one [`SEAL_LEN`]-byte seal per segment
    /// (nonce and tag of an encrypted block; all zero for none), else empty.
    pub seals: Bytes,
}

impl Frame {
    /// Returns a frame without a body.
    pub fn new(header: Header) -> Frame {
        Frame {
            header,
            payload: Bytes::new(),
            crcs: SegmentCrcs::empty(),
            seals: Bytes::new(),
        }
    }

    /// Returns a frame carrying `payload` as data at `header.offset`: sets
    /// [`Flags::BODY`] and `length` and computes the segment CRCs.
    ///
    /// # Errors
    ///
    /// [`FrameError::TooLarge`] above [`MAX_PAYLOAD`];
    /// [`FrameError::RangeOverflow`] if `offset + length` overflows.
    pub fn with_payload(header: Header, payload: Bytes) -> Result<Frame, FrameError> {
        let header = body_header(header, payload.len())?;
        let crcs = SegmentCrcs::compute(header.segment_base(), &payload);
        Ok(Frame {
            header,
            payload,
            crcs,
            seals: Bytes::new(),
        })
    }

    /// Returns a frame carrying `payload` with CRCs computed elsewhere: by
    /// the client for a write (forwarded unchanged down the chain), or the
    /// stored block CRCs for a block-aligned read, so they are end to end.
    /// The CRC values are not checked here; the receiver checks them.
    ///
    /// # Errors
    ///
    /// As [`Frame::with_payload`], and [`FrameError::BadCrcCount`] if `crcs`
    /// does not have one CRC per segment.
    pub fn with_payload_crcs(
        header: Header,
        payload: Bytes,
        crcs: SegmentCrcs,
    ) -> Result<Frame, FrameError> {
        let header = body_header(header, payload.len())?;
        let expected = header.crc_count()?;
        if crcs.len() != expected {
            return Err(FrameError::BadCrcCount {
                expected,
                actual: crcs.len(),
            });
        }
        Ok(Frame {
            header,
            payload,
            crcs,
            seals: Bytes::new(),
        })
    }

    /// Returns this data frame carrying `seals` (one [`SEAL_LEN`]-byte seal
    /// per segment, the encrypted blocks' nonces and tags) and
    /// [`Flags::SEALED`].
    ///
    /// # Errors
    ///
    /// [`FrameError::BadSealCount`] unless there is one seal per segment;
    /// as [`Frame::validate`] for a frame that cannot carry seals.
    pub fn with_seals(self, seals: Bytes) -> Result<Frame, FrameError> {
        let header = Header {
            flags: self.header.flags | Flags::SEALED,
            ..self.header
        };
        let expected = header.crc_count()?;
        if seals.len() != expected.saturating_mul(SEAL_LEN) {
            return Err(FrameError::BadSealCount {
                expected,
                bytes: seals.len(),
            });
        }
        let frame = Frame {
            header,
            seals,
            ..self
        };
        frame.header.validate()?;
        Ok(frame)
    }

    /// Returns the seal of segment `i` (`None` past the end or without
    /// seals).
    pub fn seal(&self, i: usize) -> Option<&[u8; SEAL_LEN]> {
        let at = i.checked_mul(SEAL_LEN)?;
        self.seals.get(at..)?.first_chunk::<SEAL_LEN>()
    }

    /// Returns a successful bodyless reply to `req` (see
    /// [`Header::reply_to`]); a Stat reply then sets `offset` and
    /// `version`, a Write reply `version`.
    pub fn reply(req: &Header) -> Frame {
        Frame::new(Header::reply_to(req))
    }

    /// Returns a successful Read or ReadChunk reply to `req` carrying
    /// `payload` at the request's offset, with freshly computed CRCs.
    ///
    /// # Errors
    ///
    /// As [`Frame::with_payload`].
    pub fn data_reply(req: &Header, payload: Bytes) -> Result<Frame, FrameError> {
        Frame::with_payload(Header::reply_to(req), payload)
    }

    /// Returns an error reply to `req` with status `code` and, unless `msg`
    /// is empty, `msg` as its message (cut at a character boundary to
    /// [`MAX_ERROR_MESSAGE`] bytes).
    pub fn error_reply(req: &Header, code: ErrorCode, msg: &str) -> Frame {
        let header = Header {
            // Every code fits: they are small and stable; an impossible
            // overflow degrades to Internal rather than to "success".
            status: u16::try_from(code as u32).unwrap_or(ErrorCode::Internal as u16),
            ..Header::reply_to(req)
        };
        let mut end = msg.len().min(MAX_ERROR_MESSAGE as usize);
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        let Some(msg) = msg.get(..end).filter(|m| !m.is_empty()) else {
            return Frame::new(header);
        };
        let payload = Bytes::copy_from_slice(msg.as_bytes());
        let header = Header {
            flags: header.flags | Flags::BODY | Flags::ERROR_MESSAGE,
            length: end as u32,
            ..header
        };
        let crcs = SegmentCrcs::compute(header.segment_base(), &payload);
        Frame {
            header,
            payload,
            crcs,
            seals: Bytes::new(),
        }
    }

    /// Returns the CRAQ "pending" reply to `req`: status
    /// [`ErrorCode::Pending`] and [`Flags::PENDING`], for a replica whose
    /// copy of the range is dirty.
    pub fn pending_reply(req: &Header) -> Frame {
        Frame::new(Header {
            flags: Flags::PENDING,
            status: ErrorCode::Pending as u16,
            ..Header::reply_to(req)
        })
    }

    /// Returns the error frame a server sends before closing a connection
    /// whose input failed to decode: a Ping reply with the reserved
    /// `request_id` 0, status `err.code()` and the error as its message.
    pub fn protocol_error(err: &FrameError) -> Frame {
        Frame::error_reply(
            &Header::request(Opcode::Ping, 0),
            err.code(),
            &err.to_string(),
        )
    }

    /// Returns the error this frame reports, if any; see
    /// [`Header::error_code`].
    pub fn error_code(&self) -> Option<ErrorCode> {
        self.header.error_code()
    }

    /// Returns the error message of an error reply that carries one
    /// (invalid UTF-8 replaced, never an error).
    pub fn error_message(&self) -> Option<Cow<'_, str>> {
        self.header
            .flags
            .contains(Flags::ERROR_MESSAGE)
            .then(|| String::from_utf8_lossy(&self.payload))
    }

    /// Checks the payload against its segment CRCs. Every replica calls it
    /// before storing a write and the client after a read.
    ///
    /// # Errors
    ///
    /// [`FrameError::PayloadCrc`] with the first bad segment (a missing or
    /// extra CRC counts as bad).
    pub fn verify_payload(&self) -> Result<(), FrameError> {
        self.crcs
            .verify(self.header.segment_base(), &self.payload)
            .map_err(|segment| FrameError::PayloadCrc { segment })
    }

    /// Returns the encoded size of this frame in bytes.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            .saturating_add(self.payload.len())
            .saturating_add(self.crcs.as_bytes().len())
            .saturating_add(self.seals.len())
    }

    /// Checks everything the decoder would: the header rules and that the
    /// payload and CRCs match the header.
    ///
    /// # Errors
    ///
    /// The first inconsistency found.
    pub fn validate(&self) -> Result<(), FrameError> {
        self.header.validate()?;
        let length = if self.header.has_body() {
            self.header.length
        } else {
            0
        };
        if self.payload.len() != length as usize {
            return Err(FrameError::LengthMismatch {
                header: length,
                payload: self.payload.len(),
            });
        }
        let expected = self.header.crc_count()?;
        if self.crcs.len() != expected {
            return Err(FrameError::BadCrcCount {
                expected,
                actual: self.crcs.len(),
            });
        }
        let seals = if self.header.is_sealed() {
            expected.saturating_mul(SEAL_LEN)
        } else {
            0
        };
        if self.seals.len() != seals {
            return Err(FrameError::BadSealCount {
                expected: if self.header.is_sealed() { expected } else { 0 },
                bytes: self.seals.len(),
            });
        }
        Ok(())
    }

    /// Appends the encoded frame to `dst`. This copies the payload into
    /// `dst`; senders of large payloads use [`Frame::encode_parts`] and a
    /// vectored write instead.
    ///
    /// # Errors
    ///
    /// As [`Frame::validate`]; nothing is written then.
    pub fn encode_into(&self, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.validate()?;
        dst.reserve(self.encoded_len());
        dst.put_slice(&self.header.encode());
        dst.put_slice(&self.payload);
        dst.put_slice(self.crcs.as_bytes());
        dst.put_slice(&self.seals);
        Ok(())
    }

    /// Returns the frame's wire form as three parts (header bytes, payload,
    /// CRCs) that share the payload instead of copying it.
    ///
    /// # Errors
    ///
    /// As [`Frame::validate`].
    pub fn encode_parts(&self) -> Result<EncodedFrame, FrameError> {
        self.validate()?;
        // Seals travel in the trailer part with the CRCs (32 bytes per
        // 4 KiB: the copy is small next to the payload it saves).
        let crcs = if self.seals.is_empty() {
            self.crcs.as_bytes().clone()
        } else {
            let mut t = BytesMut::with_capacity(self.crcs.as_bytes().len() + self.seals.len());
            t.put_slice(self.crcs.as_bytes());
            t.put_slice(&self.seals);
            t.freeze()
        };
        Ok(EncodedFrame {
            head: self.header.encode(),
            payload: self.payload.clone(),
            crcs,
        })
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Payloads are up to 16 MiB: show their size, not their bytes.
        f.debug_struct("Frame")
            .field("header", &self.header)
            .field("payload_len", &self.payload.len())
            .field("crcs", &self.crcs)
            .field("seals", &(self.seals.len() / SEAL_LEN))
            .finish()
    }
}

/// Sets the body flag and length for a payload of `len` bytes.
fn body_header(header: Header, len: usize) -> Result<Header, FrameError> {
    let length = u32::try_from(len)
        .ok()
        .filter(|l| *l <= MAX_PAYLOAD)
        .ok_or(FrameError::TooLarge(u32::try_from(len).unwrap_or(u32::MAX)))?;
    let header = Header {
        flags: header.flags | Flags::BODY,
        length,
        ..header
    };
    header.crc_count()?;
    Ok(header)
}

/// A frame's wire form in three parts, for a vectored write that does not
/// copy the payload.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    head: [u8; HEADER_LEN],
    payload: Bytes,
    crcs: Bytes,
}

impl EncodedFrame {
    /// Returns the encoded header.
    pub fn head(&self) -> &[u8; HEADER_LEN] {
        &self.head
    }

    /// Returns the payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Returns the CRCs' wire bytes.
    pub fn crcs(&self) -> &Bytes {
        &self.crcs
    }

    /// Returns the total size in bytes.
    pub fn len(&self) -> usize {
        HEADER_LEN + self.payload.len() + self.crcs.len()
    }

    /// Always false: a frame has at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Returns the three parts as slices for `write_vectored`, in order.
    pub fn io_slices(&self) -> [IoSlice<'_>; 3] {
        [
            IoSlice::new(&self.head),
            IoSlice::new(&self.payload),
            IoSlice::new(&self.crcs),
        ]
    }
}

/// The streaming decoder: one per connection, fed the connection's read
/// buffer. It never panics and, on a partial frame or an error, consumes
/// nothing.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_payload: u32,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// Returns a decoder that accepts frames up to [`MAX_PAYLOAD`].
    pub const fn new() -> FrameDecoder {
        FrameDecoder {
            max_payload: MAX_PAYLOAD,
        }
    }

    /// Returns a decoder with a lower `length` limit (a server short of
    /// memory); values above [`MAX_PAYLOAD`] are lowered to it.
    pub fn with_max_payload(max_payload: u32) -> FrameDecoder {
        FrameDecoder {
            max_payload: max_payload.min(MAX_PAYLOAD),
        }
    }

    /// Takes the next whole frame off the front of `src`. Returns
    /// `Ok(None)` and consumes nothing while the frame is incomplete,
    /// reserving room in `src` for the rest of it once the header has been
    /// checked (so nothing is reserved for a length that fails the checks).
    /// The returned payload and CRCs are views of `src`'s buffer.
    ///
    /// # Errors
    ///
    /// Any [`FrameError`] of the module doc's rules. Each is fatal to the
    /// stream ([`FrameError::is_fatal`]); `src` is left as it was.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some((header, total)) = self.head(src)? else {
            src.reserve(HEADER_LEN - src.len());
            return Ok(None);
        };
        let Some(missing) = total.checked_sub(src.len()).filter(|m| *m > 0) else {
            let payload_len = if header.has_body() {
                header.length as usize
            } else {
                0
            };
            // total = HEADER_LEN + payload_len + (4 [+ SEAL_LEN]) *
            // crc_count <= src.len(), so no split can panic and the rest is
            // whole CRCs, then whole seals.
            let mut body = src.split_to(total);
            body.advance(HEADER_LEN);
            let payload = body.split_to(payload_len).freeze();
            let crc_bytes = if header.is_sealed() {
                body.len() / (4 + SEAL_LEN) * 4
            } else {
                body.len()
            };
            let crcs =
                SegmentCrcs::from_bytes(body.split_to(crc_bytes).freeze()).unwrap_or_default();
            return Ok(Some(Frame {
                header,
                payload,
                crcs,
                seals: body.freeze(),
            }));
        };
        src.reserve(missing);
        Ok(None)
    }

    /// The encoded length (header, body) of the frame at the front of
    /// `src`, once its header is in and passes the checks [`decode`] makes;
    /// `None` before, or when they fail (`decode` reports why). A reader
    /// sizes its buffer for a large frame with it before the frame's body
    /// arrives, and stops reading at the frame's end.
    ///
    /// [`decode`]: FrameDecoder::decode
    pub fn frame_len(&self, src: &[u8]) -> Option<usize> {
        self.head(src).ok().flatten().map(|(_, total)| total)
    }

    /// The header at the front of `src` and its frame's encoded length,
    /// checked: magic and version as soon as their bytes are in, then the
    /// header, the payload limit and the body length. `None` while the
    /// header is incomplete.
    fn head(&self, src: &[u8]) -> Result<Option<(Header, usize)>, FrameError> {
        check_prefix(src)?;
        let Some(head) = src.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let header = Header::decode(head)?;
        if header.length > self.max_payload {
            return Err(FrameError::TooLarge(header.length));
        }
        let total =
            header
                .body_len()?
                .checked_add(HEADER_LEN)
                .ok_or(FrameError::RangeOverflow {
                    offset: header.offset,
                    length: header.length,
                })?;
        Ok(Some((header, total)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::CapabilityToken;
    use crate::ids::{ChainId, ChainVersion, ChunkId, ObjectId, SessionId};

    fn sample_request(opcode: Opcode) -> Header {
        Header {
            chunk: ChunkId {
                object: ObjectId(42),
                index: 7,
            },
            chain: ChainId(3),
            chain_version: ChainVersion(9),
            offset: 4094,
            snap_seq: 2,
            client_id: SessionId(77),
            client_seq: 1000,
            token: CapabilityToken([0x5A; 32]),
            ..Header::request(opcode, 12)
        }
    }

    fn round_trip(frame: &Frame) -> Frame {
        let mut buf = BytesMut::new();
        frame.encode_into(&mut buf).expect("encode");
        assert_eq!(buf.len(), frame.encoded_len());
        let mut dec = FrameDecoder::new();
        let back = dec.decode(&mut buf).expect("decode").expect("whole frame");
        assert!(buf.is_empty(), "decoder left {} bytes", buf.len());
        assert_eq!(&back, frame);
        back.verify_payload().expect("payload CRCs");
        back
    }

    /// Every opcode, as request and as reply, in each shape it may take.
    #[test]
    fn every_opcode_round_trips() {
        let data = Bytes::from_static(b"hello, chunk");
        for op in Opcode::ALL {
            let req = sample_request(op);
            let req_frame = if op.carries_data(false) {
                Frame::with_payload(req, data.clone()).unwrap()
            } else if matches!(op, Opcode::Read | Opcode::ReadChunk) {
                Frame::new(Header {
                    length: 65536,
                    ..req
                })
            } else {
                Frame::new(req)
            };
            let back = round_trip(&req_frame);
            assert_eq!(back.header.opcode, op);
            assert!(!back.header.reply);
            assert_eq!(back.header.wire_opcode(), op as u8);

            let ok = if op.carries_data(true) {
                Frame::data_reply(&req, data.clone()).unwrap()
            } else {
                Frame::reply(&req)
            };
            let back = round_trip(&ok);
            assert!(back.header.reply);
            assert_eq!(back.header.wire_opcode(), op as u8 | 0x80);
            assert_eq!(back.header.request_id, 12);
            assert_eq!(back.error_code(), None);

            let err = Frame::error_reply(&req, ErrorCode::StaleChainVersion, "chain 3 is at 10");
            let back = round_trip(&err);
            assert_eq!(back.error_code(), Some(ErrorCode::StaleChainVersion));
            assert_eq!(back.error_message().as_deref(), Some("chain 3 is at 10"));
            assert!(back.header.token.is_none(), "replies do not echo tokens");

            round_trip(&Frame::error_reply(&req, ErrorCode::NotFound, ""));
            let back = round_trip(&Frame::pending_reply(&req));
            assert_eq!(back.error_code(), Some(ErrorCode::Pending));
            assert!(back.header.flags.contains(Flags::PENDING));
        }
    }

    /// The exact bytes of one frame, written out field by field, so the
    /// format cannot drift silently. The CRCs were computed independently
    /// (Python's `zlib.crc32`).
    #[test]
    fn golden_bytes() {
        let header = Header {
            chunk: ChunkId {
                object: ObjectId(0x1112_1314_1516_1718),
                index: 0x21,
            },
            chain: ChainId(0x3132_3334),
            chain_version: ChainVersion(0x41),
            offset: 4094,
            version: 0x51,
            snap_seq: 0x61,
            client_id: SessionId(0x71),
            client_seq: 0x81,
            token: CapabilityToken(std::array::from_fn(|i| 0xA0 + i as u8)),
            ..Header::request(Opcode::Write, 0x0102_0304_0506_0708)
        };
        let frame = Frame::with_payload(header, Bytes::from_static(b"hello")).unwrap();
        let mut want: Vec<u8> = Vec::new();
        want.extend(b"CRN1"); // 0 magic
        want.push(1); // 4 version
        want.push(1); // 5 opcode: Write
        want.extend([1, 0]); // 6 flags: BODY
        want.extend([8, 7, 6, 5, 4, 3, 2, 1]); // 8 request_id
        want.extend([0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11]); // 16 object
        want.extend([0x21, 0, 0, 0, 0, 0, 0, 0]); // 24 index
        want.extend([0x34, 0x33, 0x32, 0x31]); // 32 chain
        want.extend([5, 0, 0, 0]); // 36 length
        want.extend([0x41, 0, 0, 0, 0, 0, 0, 0]); // 40 chain_version
        want.extend([0xFE, 0x0F, 0, 0, 0, 0, 0, 0]); // 48 offset 4094
        want.extend([0x51, 0, 0, 0, 0, 0, 0, 0]); // 56 version
        want.extend([0x61, 0, 0, 0, 0, 0, 0, 0]); // 64 snap_seq
        want.extend([0x71, 0, 0, 0, 0, 0, 0, 0]); // 72 client_id
        want.extend([0x81, 0, 0, 0, 0, 0, 0, 0]); // 80 client_seq
        want.extend([0, 0]); // 88 status
        want.extend([0, 0]); // 90 reserved
        want.extend(0xA0..=0xBFu8); // 92 token
        want.extend(0xDCDB_A906u32.to_le_bytes()); // 124 header_crc
        want.extend(b"hello"); // payload at 4094: segments "he" | "llo"
        want.extend(0xD125_6687u32.to_le_bytes()); // crc32("he")
        want.extend(0xAAC9_B334u32.to_le_bytes()); // crc32("llo")
        assert_eq!(want.len(), HEADER_LEN + 5 + 8);

        let mut buf = BytesMut::new();
        frame.encode_into(&mut buf).unwrap();
        assert_eq!(&buf[..], &want[..]);
        let parts = frame.encode_parts().unwrap();
        let joined: Vec<u8> = parts.io_slices().iter().flat_map(|s| s.to_vec()).collect();
        assert_eq!(joined, want);
        let back = FrameDecoder::new().decode(&mut buf).unwrap().unwrap();
        assert_eq!(back, frame);
    }

    #[test]
    fn partial_frames_consume_nothing() {
        let frame = Frame::with_payload(
            sample_request(Opcode::Write),
            Bytes::from(vec![7u8; 10_000]),
        )
        .unwrap();
        let mut wire = BytesMut::new();
        frame.encode_into(&mut wire).unwrap();
        let mut dec = FrameDecoder::new();
        for cut in [0, 1, 4, 5, 127, 128, 129, wire.len() - 1] {
            let mut partial = BytesMut::from(&wire[..cut]);
            assert_eq!(dec.decode(&mut partial), Ok(None), "cut {cut}");
            assert_eq!(&partial[..], &wire[..cut]);
        }
    }

    /// A sealed frame carries one seal per segment after its CRCs, through
    /// both encoders; the rules refuse seals where they do not belong.
    #[test]
    fn sealed_frames_round_trip_and_are_checked() {
        let header = Header {
            offset: 8192,
            ..sample_request(Opcode::Write)
        };
        let data = Bytes::from(vec![9u8; 3 * 4096]);
        let seals: Vec<u8> = (0..3 * SEAL_LEN).map(|i| i as u8).collect();
        let frame = Frame::with_payload(header, data.clone())
            .unwrap()
            .with_seals(Bytes::from(seals.clone()))
            .unwrap();
        assert!(frame.header.is_sealed());
        let back = round_trip(&frame);
        assert_eq!(&back.seals[..], &seals[..]);
        assert_eq!(back.seal(1).unwrap()[0], SEAL_LEN as u8);
        assert!(back.seal(3).is_none());
        let parts = frame.encode_parts().unwrap();
        let mut joined = BytesMut::new();
        for s in parts.io_slices() {
            joined.extend_from_slice(&s);
        }
        assert_eq!(joined.len(), HEADER_LEN + 3 * 4096 + 3 * (4 + SEAL_LEN));
        let decoded = FrameDecoder::new().decode(&mut joined).unwrap().unwrap();
        assert_eq!(decoded, frame);

        // The wrong number of seals, seals on a bodyless or RemoveMany
        // frame, and a frame whose seals vanished are all refused.
        let short = Frame::with_payload(header, data.clone())
            .unwrap()
            .with_seals(Bytes::from(vec![1u8; SEAL_LEN]));
        assert!(matches!(short, Err(FrameError::BadSealCount { .. })));
        let commit = Frame::new(sample_request(Opcode::Commit)).with_seals(Bytes::new());
        assert!(commit.is_err());
        let remove_many = Frame::with_payload(
            sample_request(Opcode::RemoveMany),
            Bytes::from(vec![0u8; 16]),
        )
        .unwrap()
        .with_seals(Bytes::from(vec![0u8; SEAL_LEN]));
        assert!(remove_many.is_err());
        let mut stripped = frame.clone();
        stripped.seals = Bytes::new();
        assert!(stripped.encode_into(&mut BytesMut::new()).is_err());

        // CONDITIONAL belongs to Write and Read requests only.
        let conditional = Header {
            flags: Flags::CONDITIONAL,
            ..sample_request(Opcode::Write)
        };
        round_trip(&Frame::with_payload(conditional, data.clone()).unwrap());
        for (op, reply) in [
            (Opcode::ReadChunk, false),
            (Opcode::Forward, false),
            (Opcode::Write, true),
        ] {
            let h = Header {
                flags: Flags::CONDITIONAL,
                reply,
                ..sample_request(op)
            };
            assert!(
                matches!(h.validate(), Err(FrameError::MisplacedFlags { .. })),
                "{op} reply={reply}"
            );
        }
    }

    #[test]
    fn garbage_fails_fast() {
        let mut dec = FrameDecoder::new();
        let mut http = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert!(matches!(
            dec.decode(&mut http),
            Err(FrameError::BadMagic(_))
        ));
        let mut v2 = BytesMut::from(&b"CRN1\x02"[..]);
        assert_eq!(dec.decode(&mut v2), Err(FrameError::UnsupportedVersion(2)));
        assert_eq!(v2.len(), 5, "nothing consumed on error");
    }

    /// Re-signs a header after tampering, to reach the checks behind the CRC.
    fn resign(mut head: [u8; HEADER_LEN]) -> BytesMut {
        let crc = crc32fast::hash(&head[..HEADER_LEN - 4]);
        head[HEADER_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        BytesMut::from(&head[..])
    }

    #[test]
    fn rule_violations_behind_a_good_crc_are_rejected() {
        let mut dec = FrameDecoder::new();
        let ping = Header::request(Opcode::Ping, 1).encode();
        type Tamper = Box<dyn Fn(&mut [u8; HEADER_LEN])>;
        let cases: Vec<(Tamper, FrameError)> = vec![
            (Box::new(|h| h[5] = 0x0F), FrameError::UnknownOpcode(0x0F)),
            (Box::new(|h| h[5] = 0x80), FrameError::UnknownOpcode(0x80)),
            (Box::new(|h| h[6] = 0x80), FrameError::ReservedFlags(0x80)),
            (Box::new(|h| h[7] = 0x80), FrameError::ReservedFlags(0x8000)),
            (Box::new(|h| h[90] = 1), FrameError::ReservedField(1)),
            (Box::new(|h| h[88] = 2), FrameError::StatusInRequest(2)),
            (
                Box::new(|h| h[6] = 1),
                FrameError::UnexpectedBody {
                    opcode: Opcode::Ping,
                    reply: false,
                },
            ),
            (
                Box::new(|h| h[5] = 1),
                FrameError::MissingBody {
                    opcode: Opcode::Write,
                    reply: false,
                },
            ),
            (
                Box::new(|h| h[36] = 1),
                FrameError::UnexpectedLength {
                    opcode: Opcode::Ping,
                    reply: false,
                    length: 1,
                },
            ),
            (
                Box::new(|h| {
                    h[5] = 4;
                    h[36..40].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
                }),
                FrameError::TooLarge(MAX_PAYLOAD + 1),
            ),
            (
                Box::new(|h| {
                    h[5] = 4;
                    h[36] = 2;
                    h[48..56].copy_from_slice(&u64::MAX.to_le_bytes());
                }),
                FrameError::RangeOverflow {
                    offset: u64::MAX,
                    length: 2,
                },
            ),
            (
                Box::new(|h| {
                    h[5] = 0x89;
                    h[6] = 4;
                    h[88] = 1;
                }),
                FrameError::MisplacedFlags {
                    flags: Flags::PENDING,
                    opcode: 0x89,
                    status: 1,
                },
            ),
            (
                Box::new(|h| {
                    h[5] = 0x89;
                    h[6] = 2;
                    h[88] = 1;
                }),
                FrameError::MisplacedFlags {
                    flags: Flags::ERROR_MESSAGE,
                    opcode: 0x89,
                    status: 1,
                },
            ),
            (
                Box::new(|h| {
                    h[5] = 0x89;
                    h[6] = 3;
                    h[88] = 1;
                    h[36..40].copy_from_slice(&(MAX_ERROR_MESSAGE + 1).to_le_bytes());
                }),
                FrameError::MessageTooLong(MAX_ERROR_MESSAGE + 1),
            ),
        ];
        // NO_CLONE and SNAPSHOT on a Ping request.
        for bit in [0x20u8, 0x40] {
            let mut head = ping;
            head[6] = bit;
            let mut buf = resign(head);
            assert!(
                matches!(dec.decode(&mut buf), Err(FrameError::MisplacedFlags { .. })),
                "flag {bit:#x}"
            );
        }
        for (i, (tamper, want)) in cases.into_iter().enumerate() {
            let mut head = ping;
            tamper(&mut head);
            let mut buf = resign(head);
            assert_eq!(dec.decode(&mut buf), Err(want), "case {i}");
            assert_eq!(buf.len(), HEADER_LEN);
        }
    }

    #[test]
    fn length_limit_is_checked_before_buffering() {
        let head = Header {
            length: 1 << 20,
            ..Header::request(Opcode::Write, 1)
        };
        let head = Header {
            flags: Flags::BODY,
            ..head
        }
        .encode();
        let mut buf = BytesMut::from(&head[..]);
        let mut small = FrameDecoder::with_max_payload(4096);
        assert_eq!(small.decode(&mut buf), Err(FrameError::TooLarge(1 << 20)));
        assert!(
            buf.capacity() < 1 << 20,
            "nothing reserved for a refused frame"
        );
        assert_eq!(FrameDecoder::new().decode(&mut buf), Ok(None));
        assert!(buf.capacity() >= HEADER_LEN + (1 << 20) + 256 * 4);
    }

    #[test]
    fn payload_corruption_is_found_by_verify_not_decode() {
        let frame =
            Frame::with_payload(sample_request(Opcode::Write), Bytes::from(vec![1u8; 9000]))
                .unwrap();
        let mut buf = BytesMut::new();
        frame.encode_into(&mut buf).unwrap();
        // offset 4094: segments are [0,2), [2,4098), [4098,8194), [8194,9000).
        buf[HEADER_LEN + 4098] ^= 0x10;
        let back = FrameDecoder::new().decode(&mut buf).unwrap().unwrap();
        let err = back.verify_payload().unwrap_err();
        assert_eq!(err, FrameError::PayloadCrc { segment: 2 });
        assert_eq!(err.code(), ErrorCode::Checksum);
        assert!(!err.is_fatal());
    }

    #[test]
    fn encoders_refuse_inconsistent_frames() {
        let req = sample_request(Opcode::Write);
        let mut frame = Frame::with_payload(req, Bytes::from_static(b"abc")).unwrap();
        frame.payload = Bytes::from_static(b"abcd");
        let mut buf = BytesMut::new();
        assert_eq!(
            frame.encode_into(&mut buf),
            Err(FrameError::LengthMismatch {
                header: 3,
                payload: 4
            })
        );
        assert!(buf.is_empty());
        assert_eq!(
            Frame::with_payload_crcs(req, Bytes::from_static(b"abc"), SegmentCrcs::empty()),
            Err(FrameError::BadCrcCount {
                expected: 2,
                actual: 0
            })
        );
        assert_eq!(
            Frame::new(req).encode_parts().unwrap_err(),
            FrameError::MissingBody {
                opcode: Opcode::Write,
                reply: false
            }
        );
    }

    #[test]
    fn error_messages_are_cut_at_char_boundaries() {
        let req = sample_request(Opcode::Read);
        let long = "é".repeat(3000); // 6000 bytes
        let frame = Frame::error_reply(&req, ErrorCode::Io, &long);
        let msg = frame.error_message().unwrap();
        assert_eq!(msg.len(), 4096);
        assert!(msg.chars().all(|c| c == 'é'));
        assert_eq!(frame.crcs.len(), 1, "a message is one segment");
        round_trip(&frame);
    }

    #[test]
    fn protocol_error_frame_names_the_problem() {
        let err = FrameError::HeaderCrc {
            expected: 1,
            actual: 2,
        };
        let frame = round_trip(&Frame::protocol_error(&err));
        assert_eq!(frame.header.request_id, 0);
        assert_eq!(frame.error_code(), Some(ErrorCode::Checksum));
        assert!(frame.error_message().unwrap().contains("header CRC"));
        assert!(err.is_fatal());
    }

    #[test]
    fn pipelined_frames_decode_in_order() {
        let mut buf = BytesMut::new();
        for id in 1..=3 {
            Frame::new(Header::request(Opcode::Ping, id))
                .encode_into(&mut buf)
                .unwrap();
        }
        let mut dec = FrameDecoder::new();
        for id in 1..=3 {
            assert_eq!(dec.decode(&mut buf).unwrap().unwrap().header.request_id, id);
        }
        assert_eq!(dec.decode(&mut buf), Ok(None));
    }

    #[test]
    fn unknown_status_from_a_newer_peer_reads_as_internal() {
        let h = Header {
            reply: true,
            status: 999,
            ..Header::request(Opcode::Stat, 1)
        };
        assert_eq!(h.error_code(), Some(ErrorCode::Internal));
        round_trip(&Frame::new(h));
    }
}
