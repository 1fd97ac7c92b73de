//! Frame I/O on glommio sockets: the chunkserver's side of
//! `cairn_proto::frame::io`.
//!
//! Small frames are encoded into one buffer and written with one call;
//! large ones go out as header, payload and CRCs without copying the
//! payload. Reads fill a `BytesMut` that [`FrameDecoder`] splits, so a
//! payload is a view of the read buffer.
//!
//! Reading the rest of a large frame straight into the read buffer (zeroed
//! once, no scratch copy) was tried on 2026-12-06: it cut the chunkservers'
//! CPU of 3-replica 1 MiB writes by 12-17% but made 1-replica writes 8-10%
//! slower in four interleaved `cairn-bench chunk` pairs, and checkpoints
//! through the client did not move, so the scratch copy stays. Reading
//! them into pooled buffers zeroed once (no per-frame zeroing) was tried
//! on 2026-12-08 and was slower still: 1-replica 1 MiB writes 536/538 ->
//! 492/501 MiB/s and the chunkserver's CPU per GiB 1.52/1.48 -> 1.67/1.60
//! s in two interleaved pairs. The kernel's copy into a large buffer
//! costs more than its copy into the cache-warm 256 KiB scratch plus
//! ours out of it.

use std::io;

use bytes::BytesMut;
use cairn_proto::frame::{Frame, FrameDecoder, FrameError};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Frames up to this size are copied into one buffer and written at once.
const COALESCE: usize = 64 << 10;

/// How much a read asks the socket for at a time.
const READ_CHUNK: usize = 256 << 10;

/// Writes `frame` to `w`; `buf` is the connection's reusable encode
/// buffer, so a small reply allocates nothing.
///
/// # Errors
/// An I/O error, or `InvalidData` for a frame that does not encode.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    buf: &mut BytesMut,
    frame: &Frame,
) -> io::Result<()> {
    let invalid = |e: FrameError| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    if frame.encoded_len() <= COALESCE {
        buf.clear();
        frame.encode_into(buf).map_err(invalid)?;
        w.write_all(buf).await?;
    } else {
        let parts = frame.encode_parts().map_err(invalid)?;
        w.write_all(parts.head()).await?;
        w.write_all(parts.payload()).await?;
        w.write_all(parts.crcs()).await?;
    }
    w.flush().await
}

/// What [`read_frame`] can fail with.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection between frames.
    Eof,
    /// The peer closed the connection inside a frame.
    Truncated,
    /// The bytes are not a frame.
    Frame(FrameError),
    /// The socket failed.
    Io(io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Eof => f.write_str("connection closed"),
            Self::Truncated => f.write_str("connection closed inside a frame"),
            Self::Frame(e) => write!(f, "malformed frame: {e}"),
            Self::Io(e) => write!(f, "socket: {e}"),
        }
    }
}

/// Reads frames from one socket: a read buffer the decoder splits payloads
/// from, and a scratch buffer the socket reads into, so each read copies
/// only the bytes it got (zero-filling a large read buffer per read would
/// cost more than a 4 KiB request).
pub struct FrameReader {
    buf: BytesMut,
    scratch: Vec<u8>,
    decoder: FrameDecoder,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self {
            buf: BytesMut::with_capacity(READ_CHUNK),
            scratch: vec![0; READ_CHUNK],
            decoder: FrameDecoder::new(),
        }
    }
}

impl FrameReader {
    /// Reads the next frame from `r`.
    ///
    /// # Errors
    /// See [`ReadError`]; after any error the stream is unusable.
    pub async fn read<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<Frame, ReadError> {
        loop {
            if let Some(f) = self
                .decoder
                .decode(&mut self.buf)
                .map_err(ReadError::Frame)?
            {
                return Ok(f);
            }
            // Inside a large frame, read no further than its end, so the
            // next frame starts in an empty buffer (below).
            let want = match self.decoder.frame_len(&self.buf) {
                Some(total) if total >= LARGE_FRAME => total - self.buf.len(),
                _ => READ_CHUNK,
            };
            let n = r
                .read(&mut self.scratch[..want.min(READ_CHUNK)])
                .await
                .map_err(ReadError::Io)?;
            if n == 0 {
                return Err(if self.buf.is_empty() {
                    ReadError::Eof
                } else {
                    ReadError::Truncated
                });
            }
            let got = &self.scratch[..n];
            if self.buf.is_empty()
                && let Some(total) = self.decoder.frame_len(got).filter(|t| *t > n)
                && total >= LARGE_FRAME
            {
                // A large frame starts with this read: it gets a buffer of
                // its own size now. Otherwise the room the decoder reserves
                // for the rest would move what arrived into a larger
                // allocation (realloc copied 5% of a shard's CPU under
                // 1 MiB writes), and the payload would share the buffer
                // with the frames after it.
                self.buf = BytesMut::with_capacity(total);
            }
            self.buf.extend_from_slice(got);
        }
    }
}

/// Frames at least this large are read into a buffer of their own size.
const LARGE_FRAME: usize = 64 << 10;

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use cairn_proto::frame::{Header, Opcode};
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// Hands out its bytes a few at a time, in changing sizes (or, with
    /// `step` 0, as much as each read asks for), and records where each
    /// read ended.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
        ends: Vec<usize>,
    }

    impl Trickle {
        fn new(data: &[u8], step: usize) -> Self {
            Self {
                data: data.to_vec(),
                at: 0,
                step,
                ends: Vec::new(),
            }
        }
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let most = if self.step == 0 {
                buf.len()
            } else {
                self.step = self.step * 7 % 100_003 + 1;
                self.step
            };
            let n = buf.len().min(most).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            let at = self.at;
            self.ends.push(at);
            Poll::Ready(Ok(n))
        }
    }

    fn frame(id: u64, len: usize) -> Frame {
        let data: Vec<u8> = (0..len).map(|i| (i as u64 * 31 + id) as u8).collect();
        Frame::with_payload(Header::request(Opcode::Write, id), Bytes::from(data)).unwrap()
    }

    /// The frames encoded back to back, and where each one ends.
    fn encoded(frames: &[Frame]) -> (BytesMut, Vec<usize>) {
        let mut wire = BytesMut::new();
        let mut ends = Vec::new();
        for f in frames {
            f.encode_into(&mut wire).unwrap();
            ends.push(wire.len());
        }
        (wire, ends)
    }

    #[test]
    fn large_and_small_frames_read_back_whole_from_any_split() {
        let frames = [
            frame(1, 1 << 20),
            frame(2, 10),
            frame(3, 300_000),
            frame(4, 0),
        ];
        let (wire, _) = encoded(&frames);
        let mut r = Trickle::new(&wire, 1);
        let mut reader = FrameReader::default();
        futures_lite::future::block_on(async {
            for f in &frames {
                let got = reader.read(&mut r).await.expect("frame");
                assert_eq!(&got, f);
            }
            assert!(matches!(reader.read(&mut r).await, Err(ReadError::Eof)));
        });
        // Cut inside a large frame's body: truncated, not a frame.
        let mut r = Trickle::new(&wire[..200_000], 1);
        let mut reader = FrameReader::default();
        let got = futures_lite::future::block_on(reader.read(&mut r));
        assert!(matches!(got, Err(ReadError::Truncated)), "{got:?}");
    }

    #[test]
    fn reads_stop_at_a_large_frames_end_and_its_payload_has_its_own_buffer() {
        let frames = [
            frame(1, 1 << 20),
            frame(2, 600_000),
            frame(3, 4096),
            frame(4, 4096),
        ];
        let (wire, ends) = encoded(&frames);
        let mut r = Trickle::new(&wire, 0);
        let mut reader = FrameReader::default();
        let got: Vec<Frame> = futures_lite::future::block_on(async {
            let mut got = Vec::new();
            for _ in &frames {
                got.push(reader.read(&mut r).await.expect("frame"));
            }
            got
        });
        assert_eq!(got, frames);
        // No read crossed the end of either large frame: the next frame
        // started in an empty buffer.
        for end in &ends[..2] {
            let crossed = r.ends.windows(2).any(|w| w[0] < *end && w[1] > *end);
            assert!(!crossed, "a read crossed {end}: {:?}", r.ends);
        }
        // The large payloads own buffers sized for their frames: turning
        // one into a Vec reuses its allocation only when nothing else
        // shares it.
        let payload = got[1].payload.clone();
        drop(got);
        let ptr = payload.as_ptr();
        let v = BytesMut::from(payload);
        assert_eq!(v.as_ptr(), ptr, "the payload's buffer is shared");
    }
}
