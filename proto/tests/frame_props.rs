//! Property tests of the data-plane frame codec: valid frames round-trip
//! however the stream is cut, arbitrary input never panics the decoder, and
//! header corruption never gets through.

use bytes::{Bytes, BytesMut};
use cairn_proto::ErrorCode;
use cairn_proto::frame::{
    BLOCK_SIZE, CapabilityToken, Flags, Frame, FrameDecoder, FrameError, HEADER_LEN, Header,
    MAX_PAYLOAD, Opcode, segment_count, segment_crcs, verify_segments,
};
use cairn_proto::ids::{ChainId, ChainVersion, ChunkId, ObjectId, SessionId};
use proptest::prelude::*;

/// Largest payload generated: enough to cross several 4 KiB boundaries.
const MAX_TEST_PAYLOAD: usize = 10_000;

/// How a generated reply ends.
#[derive(Debug, Clone)]
enum Outcome {
    Ok,
    Error { status: u16, message: String },
    Pending { message: String },
}

fn arb_opcode() -> impl Strategy<Value = Opcode> {
    proptest::sample::select(Opcode::ALL.to_vec())
}

/// Offsets near block boundaries and anywhere in the u64 range that leaves
/// room for a payload.
fn arb_offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..3 * BLOCK_SIZE,
        (0..1u64 << 20).prop_map(|b| b * BLOCK_SIZE),
        (0..1u64 << 20).prop_map(|b| b * BLOCK_SIZE - 1),
        0..u64::MAX - MAX_PAYLOAD as u64,
    ]
}

fn arb_header() -> impl Strategy<Value = Header> {
    (
        (arb_opcode(), any::<bool>(), any::<u64>()),
        (any::<u64>(), any::<u64>(), any::<u32>(), any::<u64>()),
        (arb_offset(), any::<u64>(), any::<u64>()),
        (any::<u64>(), any::<u64>(), any::<[u8; 32]>()),
    )
        .prop_map(
            |(
                (opcode, reply, request_id),
                (object, index, chain, chain_version),
                (offset, version, snap_seq),
                (client_id, client_seq, token),
            )| Header {
                reply,
                chunk: ChunkId {
                    object: ObjectId(object),
                    index,
                },
                chain: ChainId(chain),
                chain_version: ChainVersion(chain_version),
                offset,
                version,
                snap_seq,
                client_id: SessionId(client_id),
                client_seq,
                token: CapabilityToken(token),
                ..Header::request(opcode, request_id)
            },
        )
}

fn arb_outcome() -> impl Strategy<Value = Outcome> {
    let message = prop_oneof![Just(String::new()), "\\PC{0,100}"];
    prop_oneof![
        3 => Just(Outcome::Ok),
        2 => (1..=u16::MAX, message.clone())
            .prop_map(|(status, message)| Outcome::Error { status, message }),
        1 => message.prop_map(|message| Outcome::Pending { message }),
    ]
}

fn arb_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(any::<u8>(), 0..MAX_TEST_PAYLOAD),
    ]
}

/// Any frame the rules allow, built through the public constructors.
fn arb_frame() -> impl Strategy<Value = Frame> {
    (arb_header(), arb_outcome(), arb_payload(), 0..=MAX_PAYLOAD).prop_map(
        |(mut header, outcome, payload, read_len)| {
            let outcome = if header.reply { outcome } else { Outcome::Ok };
            let (status, flags, message) = match outcome {
                Outcome::Ok => (0, Flags::NONE, String::new()),
                Outcome::Error { status, message } => (status, Flags::NONE, message),
                Outcome::Pending { message } => {
                    (ErrorCode::Pending as u16, Flags::PENDING, message)
                }
            };
            header.status = status;
            header.flags = flags;
            if status != 0 {
                if message.is_empty() {
                    return Frame::new(header);
                }
                header.flags = flags | Flags::ERROR_MESSAGE;
                return Frame::with_payload(header, Bytes::from(message)).expect("message frame");
            }
            if header.opcode.carries_data(header.reply) {
                return Frame::with_payload(header, Bytes::from(payload)).expect("data frame");
            }
            if !header.reply && matches!(header.opcode, Opcode::Read | Opcode::ReadChunk) {
                header.length = read_len;
            }
            Frame::new(header)
        },
    )
}

/// Frames with a non-empty body: data, or an error message.
fn arb_body_frame() -> impl Strategy<Value = Frame> {
    let kind = proptest::sample::select(vec![
        (Opcode::Write, false),
        (Opcode::Forward, false),
        (Opcode::Install, false),
        (Opcode::Read, true),
        (Opcode::ReadChunk, true),
    ]);
    (
        arb_header(),
        kind,
        proptest::collection::vec(any::<u8>(), 1..MAX_TEST_PAYLOAD),
        prop_oneof![Just(None), (1..=u16::MAX, "\\PC{1,100}").prop_map(Some)],
    )
        .prop_map(|(header, (opcode, reply), payload, error)| match error {
            None => {
                let header = Header {
                    opcode,
                    reply,
                    ..header
                };
                Frame::with_payload(header, Bytes::from(payload)).expect("data frame")
            }
            Some((status, message)) => {
                let header = Header {
                    reply: true,
                    status,
                    flags: Flags::ERROR_MESSAGE,
                    ..header
                };
                Frame::with_payload(header, Bytes::from(message)).expect("message frame")
            }
        })
}

fn encode(frame: &Frame) -> BytesMut {
    let mut buf = BytesMut::new();
    frame
        .encode_into(&mut buf)
        .expect("generated frames are valid");
    buf
}

/// Decodes everything in `buf`; every frame yielded must re-encode to
/// exactly the bytes it was decoded from.
fn decode_all(buf: &[u8]) -> (Vec<Frame>, Result<(), FrameError>) {
    let mut src = BytesMut::from(buf);
    let mut dec = FrameDecoder::new();
    let mut frames = Vec::new();
    loop {
        let before = src.clone();
        match dec.decode(&mut src) {
            Ok(Some(frame)) => {
                let used = before.len() - src.len();
                assert_eq!(&encode(&frame)[..], &before[..used], "re-encoding differs");
                frames.push(frame);
            }
            Ok(None) => {
                assert_eq!(src, before, "a partial frame consumed bytes");
                return (frames, Ok(()));
            }
            Err(e) => {
                assert_eq!(src, before, "an error consumed bytes");
                assert!(e.is_fatal());
                return (frames, Err(e));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn valid_frames_round_trip(frame in arb_frame()) {
        let mut buf = encode(&frame);
        prop_assert_eq!(buf.len(), frame.encoded_len());
        let parts = frame.encode_parts().unwrap();
        let joined: Vec<u8> = parts.io_slices().iter().flat_map(|s| s.to_vec()).collect();
        prop_assert_eq!(&joined[..], &buf[..]);
        let back = FrameDecoder::new().decode(&mut buf).unwrap().unwrap();
        prop_assert!(buf.is_empty());
        prop_assert_eq!(&back, &frame);
        prop_assert_eq!(back.verify_payload(), Ok(()));
    }

    /// Two pipelined frames fed in arbitrary pieces: nothing comes out (or
    /// is consumed) before a frame is whole, and both come out intact.
    #[test]
    fn any_split_of_the_stream_decodes_the_same(
        a in arb_frame(),
        b in arb_frame(),
        cuts in proptest::collection::vec(1usize..3000, 0..40),
    ) {
        let mut wire = encode(&a);
        let a_len = wire.len();
        wire.extend_from_slice(&encode(&b));
        let mut src = BytesMut::new();
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        let mut fed = 0;
        let mut cuts = cuts.into_iter();
        while fed < wire.len() {
            let n = cuts.next().unwrap_or(wire.len()).min(wire.len() - fed);
            src.extend_from_slice(&wire[fed..fed + n]);
            fed += n;
            while let Some(f) = dec.decode(&mut src).unwrap() {
                got.push(f);
            }
            let whole = if fed >= wire.len() { 2 } else if fed >= a_len { 1 } else { 0 };
            prop_assert_eq!(got.len(), whole);
            let consumed = if whole == 0 { 0 } else if whole == 1 { a_len } else { wire.len() };
            prop_assert_eq!(src.len(), fed - consumed);
        }
        prop_assert_eq!(got, vec![a, b]);
    }

    #[test]
    fn byte_by_byte_decodes_the_same(frame in arb_frame()) {
        let wire = encode(&frame);
        prop_assume!(wire.len() <= 2 * HEADER_LEN + 1000);
        let mut src = BytesMut::new();
        let mut dec = FrameDecoder::new();
        for (i, byte) in wire.iter().enumerate() {
            src.extend_from_slice(&[*byte]);
            let out = dec.decode(&mut src).unwrap();
            if i + 1 < wire.len() {
                prop_assert!(out.is_none());
                prop_assert_eq!(src.len(), i + 1);
            } else {
                prop_assert_eq!(out.as_ref(), Some(&frame));
                prop_assert!(src.is_empty());
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = decode_all(&bytes);
    }

    /// Arbitrary headers with a good magic, version and CRC reach the rule
    /// checks: each either fails or decodes to a frame that re-encodes to
    /// the same bytes.
    #[test]
    fn arbitrary_signed_headers_never_panic(
        mut head in any::<[u8; HEADER_LEN]>(),
        opcode in prop_oneof![4 => 1u8..=9, 4 => 0x81u8..=0x89, 1 => any::<u8>()],
        flags in prop_oneof![8 => 0u16..8, 1 => any::<u16>()],
        status in prop_oneof![
            4 => Just(0u16),
            2 => Just(ErrorCode::Pending as u16),
            2 => 1u16..=30,
            1 => any::<u16>(),
        ],
        length in prop_oneof![4 => Just(0u32), 4 => 0u32..5000, 1 => any::<u32>()],
        small_offset in prop::bool::weighted(0.8),
        reserved_zero in prop::bool::weighted(0.9),
        tail in proptest::collection::vec(any::<u8>(), 0..6000),
    ) {
        head[..4].copy_from_slice(b"CRN1");
        head[4] = 1;
        head[5] = opcode;
        head[6..8].copy_from_slice(&flags.to_le_bytes());
        head[36..40].copy_from_slice(&length.to_le_bytes());
        head[88..90].copy_from_slice(&status.to_le_bytes());
        if reserved_zero {
            head[90..92].fill(0);
        }
        if small_offset {
            head[52..56].fill(0);
        }
        let crc = crc32fast::hash(&head[..HEADER_LEN - 4]);
        head[HEADER_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        let mut wire = head.to_vec();
        wire.extend_from_slice(&tail);
        let (frames, _) = decode_all(&wire);
        for f in &frames {
            prop_assert_eq!(f.validate(), Ok(()));
        }
    }

    /// Any change to one header byte is caught: by the magic, the version
    /// or the header CRC, before any other field is believed.
    #[test]
    fn any_header_byte_flip_is_caught(frame in arb_frame(), at in 0..HEADER_LEN, mask in 1u8..) {
        let mut wire = encode(&frame);
        wire[at] ^= mask;
        let before = wire.clone();
        let err = FrameDecoder::new().decode(&mut wire).unwrap_err();
        prop_assert_eq!(&wire, &before);
        match at {
            0..=3 => prop_assert!(matches!(err, FrameError::BadMagic(_)), "{:?}", err),
            4 => prop_assert_eq!(err, FrameError::UnsupportedVersion(1 ^ mask)),
            _ => prop_assert!(matches!(err, FrameError::HeaderCrc { .. }), "{:?}", err),
        }
    }

    /// A body byte flip leaves the framing intact; the payload check names
    /// the segment that holds the byte.
    #[test]
    fn any_body_byte_flip_is_caught_by_verify(
        frame in arb_body_frame(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..,
    ) {
        let body = frame.payload.len() + frame.crcs.as_bytes().len();
        let at = at.index(body);
        let mut wire = encode(&frame);
        wire[HEADER_LEN + at] ^= mask;
        let back = FrameDecoder::new().decode(&mut wire).unwrap().unwrap();
        prop_assert_eq!(back.header, frame.header);
        let segment = if at < frame.payload.len() {
            let base = frame.header.segment_base();
            let skipped = segment_count(base, at as u64 + 1).unwrap() as usize;
            skipped - 1
        } else {
            (at - frame.payload.len()) / 4
        };
        let err = back.verify_payload().unwrap_err();
        prop_assert_eq!(err.clone(), FrameError::PayloadCrc { segment });
        prop_assert_eq!(err.code(), ErrorCode::Checksum);
        prop_assert!(!err.is_fatal());
    }

    /// The segment CRCs against a naive reference: bytes grouped by the
    /// 4 KiB block of the chunk they land in.
    #[test]
    fn segment_crcs_match_the_reference(offset in arb_offset(), data in arb_payload()) {
        let mut groups: Vec<(u64, Vec<u8>)> = Vec::new();
        for (i, b) in data.iter().enumerate() {
            let block = (offset + i as u64) / BLOCK_SIZE;
            match groups.last_mut() {
                Some((blk, bytes)) if *blk == block => bytes.push(*b),
                _ => groups.push((block, vec![*b])),
            }
        }
        let want: Vec<u32> = groups.iter().map(|(_, g)| crc32fast::hash(g)).collect();
        let crcs = segment_crcs(offset, &data);
        prop_assert_eq!(&crcs, &want);
        prop_assert_eq!(segment_count(offset, data.len() as u64), Some(want.len() as u64));
        prop_assert_eq!(verify_segments(offset, &data, crcs.iter().copied()), Ok(()));
    }
}
