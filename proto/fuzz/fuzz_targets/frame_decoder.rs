//! Feeds arbitrary bytes to `FrameDecoder`, as one buffer and again in
//! pieces, and checks what a server relies on: no panic, nothing consumed
//! by a partial frame or an error, every decoded frame re-encodes to exactly
//! the bytes it came from, and the piecewise decode agrees with the whole.

#![no_main]

use bytes::BytesMut;
use cairn_proto::frame::{Frame, FrameDecoder, FrameError, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

/// Decodes `src` to the end; returns the frames and how decoding stopped.
fn decode_all(src: &mut BytesMut) -> (Vec<Frame>, Option<FrameError>) {
    let mut dec = FrameDecoder::new();
    let mut frames = Vec::new();
    loop {
        let before = src.clone();
        match dec.decode(src) {
            Ok(Some(frame)) => {
                let used = before.len() - src.len();
                let mut again = BytesMut::new();
                frame
                    .encode_into(&mut again)
                    .expect("a decoded frame re-encodes");
                assert_eq!(&again[..], &before[..used], "re-encoding differs");
                let _ = frame.verify_payload();
                let _ = frame.error_message();
                frames.push(frame);
            }
            Ok(None) => {
                assert_eq!(*src, before, "a partial frame consumed bytes");
                return (frames, None);
            }
            Err(e) => {
                assert_eq!(*src, before, "an error consumed bytes");
                let _ = e.code();
                let _ = Frame::protocol_error(&e);
                return (frames, Some(e));
            }
        }
    }
}

fuzz_target!(|input: &[u8]| {
    // First byte: bit 0 asks for a valid magic, version and header CRC, so
    // the fuzzer explores the checks behind the CRC instead of stopping at
    // it; the other bits pick the piece size of the piecewise decode.
    let Some((&control, data)) = input.split_first() else {
        return;
    };
    let mut data = data.to_vec();
    if control & 1 == 1 && data.len() >= HEADER_LEN {
        data[..5].copy_from_slice(b"CRN1\x01");
        let crc = crc32fast::hash(&data[..HEADER_LEN - 4]);
        data[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    }
    let (whole, whole_err) = decode_all(&mut BytesMut::from(&data[..]));

    // The same bytes arriving in pieces must give the same frames and the
    // same verdict.
    let step = usize::from(control >> 1).max(1);
    let mut dec = FrameDecoder::new();
    let mut src = BytesMut::new();
    let mut pieces = Vec::new();
    let mut piece_err = None;
    'feed: for piece in data.chunks(step) {
        src.extend_from_slice(piece);
        loop {
            match dec.decode(&mut src) {
                Ok(Some(frame)) => pieces.push(frame),
                Ok(None) => break,
                Err(e) => {
                    piece_err = Some(e);
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(whole, pieces);
    assert_eq!(whole_err, piece_err);
});
