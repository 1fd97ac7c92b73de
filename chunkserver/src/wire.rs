//! Frame I/O on glommio sockets: the chunkserver's side of
//! `cairn_proto::frame::io`.
//!
//! Small frames are encoded into one buffer and written with one call;
//! large ones go out as header, payload and CRCs without copying the
//! payload. Reads fill a `BytesMut` that [`FrameDecoder`] splits, so a
//! payload is a view of the read buffer.

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
            let n = r.read(&mut self.scratch).await.map_err(ReadError::Io)?;
            if n == 0 {
                return Err(if self.buf.is_empty() {
                    ReadError::Eof
                } else {
                    ReadError::Truncated
                });
            }
            self.buf.extend_from_slice(&self.scratch[..n]);
        }
    }
}
