//! Reading and writing frames on tokio streams (the client side; the
//! chunkserver drives [`FrameDecoder`] from glommio itself).
//!
//! Decoding errors surface as [`std::io::ErrorKind::InvalidData`] with the
//! [`FrameError`] inside (`err.get_ref()` and `downcast_ref`), so a server
//! can still answer with [`Frame::protocol_error`] before closing.

use std::io::{self, IoSlice};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{Frame, FrameDecoder, FrameError};

/// The least free room a read is given, so small frames are read in
/// batches rather than one header at a time.
const MIN_READ: usize = 64 * 1024;

/// Reads the next frame from `reader`, buffering in `buf` (keep both, and
/// `decoder`, for the life of the connection: `buf` may hold the start of
/// the following frames). Returns `None` at a clean end of stream between
/// frames.
///
/// # Errors
///
/// I/O errors; [`io::ErrorKind::UnexpectedEof`] if the stream ends inside a
/// frame; [`io::ErrorKind::InvalidData`] wrapping a [`FrameError`].
pub async fn read_frame<R>(
    reader: &mut R,
    decoder: &mut FrameDecoder,
    buf: &mut BytesMut,
) -> io::Result<Option<Frame>>
where
    R: AsyncRead + Unpin + ?Sized,
{
    loop {
        if let Some(frame) = decoder.decode(buf).map_err(invalid_data)? {
            return Ok(Some(frame));
        }
        if buf.capacity() - buf.len() < MIN_READ {
            buf.reserve(MIN_READ);
        }
        if reader.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "stream ended inside a frame",
                ))
            };
        }
    }
}

/// Writes `frame` to `writer` with vectored writes, without copying the
/// payload. Does not flush: flush a buffered writer after the last frame of
/// a batch.
///
/// # Errors
///
/// I/O errors; [`io::ErrorKind::InvalidData`] wrapping a [`FrameError`] if
/// the frame is inconsistent ([`Frame::validate`]), before anything is
/// written.
pub async fn write_frame<W>(writer: &mut W, frame: &Frame) -> io::Result<()>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let parts = frame.encode_parts().map_err(invalid_data)?;
    let mut slices = parts.io_slices();
    let mut rest: &mut [IoSlice<'_>] = &mut slices;
    while rest.iter().any(|s| !s.is_empty()) {
        let n = writer.write_vectored(rest).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

fn invalid_data(e: FrameError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Header, Opcode};
    use bytes::Bytes;

    #[tokio::test]
    async fn frames_cross_a_pipe_in_small_pieces() {
        // A 7-byte pipe forces partial reads and partial vectored writes.
        let (mut a, mut b) = tokio::io::duplex(7);
        let frames: Vec<Frame> = (1..=20u64)
            .map(|id| {
                let h = Header {
                    offset: id * 1000,
                    ..Header::request(Opcode::Write, id)
                };
                Frame::with_payload(h, Bytes::from(vec![id as u8; id as usize * 700])).unwrap()
            })
            .collect();
        let sent = frames.clone();
        let writer = tokio::spawn(async move {
            for f in &sent {
                write_frame(&mut a, f).await.unwrap();
            }
        });
        let mut dec = FrameDecoder::new();
        let mut buf = BytesMut::new();
        for want in &frames {
            let got = read_frame(&mut b, &mut dec, &mut buf)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&got, want);
            got.verify_payload().unwrap();
        }
        writer.await.unwrap();
        assert!(
            read_frame(&mut b, &mut dec, &mut buf)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn truncated_stream_and_garbage_are_errors() {
        let mut wire = BytesMut::new();
        Frame::new(Header::request(Opcode::Ping, 1))
            .encode_into(&mut wire)
            .unwrap();
        let mut cut = &wire[..100];
        let err = read_frame(&mut cut, &mut FrameDecoder::new(), &mut BytesMut::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);

        let mut junk = &b"GET / HTTP/1.1\r\n\r\n"[..];
        let err = read_frame(&mut junk, &mut FrameDecoder::new(), &mut BytesMut::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let inner = err.get_ref().and_then(|e| e.downcast_ref::<FrameError>());
        assert!(matches!(inner, Some(FrameError::BadMagic(_))));
    }
}
