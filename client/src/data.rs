//! The client side of Cairn's data plane (DESIGN §6) over tokio TCP.
//!
//! A [`DataConn`] is one pipelined connection to one chunkserver shard:
//! many requests in flight, each reply matched to its request by
//! `request_id`. A writer task owns the socket's write half and sends the
//! frames queued by callers; a reader task decodes replies and hands each
//! to the caller waiting for it. A reply with `request_id` 0 (the server's
//! protocol error before it closes), a frame that does not decode, or the
//! end of the stream fails every request in flight and marks the
//! connection dead; later calls fail at once and [`DataPool`] opens a new
//! one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cairn_proto::ErrorCode;
use cairn_proto::frame::{Frame, FrameDecoder, FrameError, Header, Opcode};
use cairn_proto::ids::{ChainId, ChainVersion, ChunkId, SessionId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// Frames up to this size are copied into one buffer before writing.
const COALESCE: usize = 64 << 10;

/// What a data-plane call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The connection could not be opened.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The chunkserver shard.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The socket failed.
    #[error("{addr}: {source}")]
    Io {
        /// The chunkserver shard.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The connection is gone.
    #[error("{addr}: connection closed: {reason}")]
    Closed {
        /// The chunkserver shard.
        addr: String,
        /// Why.
        reason: String,
    },
    /// No reply in time.
    #[error("{addr}: no reply in time")]
    TimedOut {
        /// The chunkserver shard.
        addr: String,
    },
    /// A frame could not be built.
    #[error("frame: {0}")]
    Protocol(FrameError),
    /// The server answered with an error.
    #[error("{code:?}: {message}")]
    Status {
        /// The code.
        code: ErrorCode,
        /// The server's message.
        message: String,
        /// A CRAQ "pending" answer: read another replica.
        pending: bool,
    },
    /// Data failed its end-to-end CRC.
    #[error("data failed its CRC check (segment {segment})")]
    Checksum {
        /// The first bad segment.
        segment: usize,
    },
}

impl DataError {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Connect { .. } | Self::Io { .. } | Self::Closed { .. } => ErrorCode::Unavailable,
            Self::TimedOut { .. } => ErrorCode::TimedOut,
            Self::Protocol(e) => e.code(),
            Self::Status { code, .. } => *code,
            Self::Checksum { .. } => ErrorCode::Checksum,
        }
    }

    /// Whether retrying (after refreshing the chain table, or on another
    /// replica) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.code(),
            ErrorCode::Unavailable
                | ErrorCode::TimedOut
                | ErrorCode::Pending
                | ErrorCode::StaleChainVersion
                | ErrorCode::NewerChainVersion
        )
    }
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Frame, DataError>>>>>;

/// One pipelined connection to a chunkserver shard.
#[derive(Debug)]
pub struct DataConn {
    addr: String,
    tx: mpsc::UnboundedSender<Frame>,
    waiters: Waiters,
    next_id: AtomicU64,
    closed: Arc<AtomicBool>,
    reason: Arc<Mutex<String>>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Drop for DataConn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Fails every waiter and marks the connection dead.
fn fail_all(
    waiters: &Waiters,
    closed: &AtomicBool,
    reason_slot: &Mutex<String>,
    addr: &str,
    reason: String,
) {
    closed.store(true, Ordering::Release);
    *lock(reason_slot) = reason.clone();
    let drained: Vec<_> = lock(waiters).drain().collect();
    for (_, w) in drained {
        let _ = w.send(Err(DataError::Closed {
            addr: addr.to_string(),
            reason: reason.clone(),
        }));
    }
}

impl DataConn {
    /// Connects to `addr` (`host:port`).
    ///
    /// # Errors
    /// [`DataError::Connect`] or [`DataError::TimedOut`].
    pub async fn connect(addr: &str, timeout: Duration) -> Result<DataConn, DataError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| DataError::TimedOut {
                addr: addr.to_string(),
            })?
            .map_err(|source| DataError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let waiters: Waiters = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let reason = Arc::new(Mutex::new(String::new()));
        let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();

        let (w, c, r, a) = (
            waiters.clone(),
            closed.clone(),
            reason.clone(),
            addr.to_string(),
        );
        let writer = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            while let Some(f) = rx.recv().await {
                let res = async {
                    if f.encoded_len() <= COALESCE {
                        buf.clear();
                        f.encode_into(&mut buf).map_err(std::io::Error::other)?;
                        // Batch every small frame already queued.
                        while buf.len() < COALESCE {
                            match rx.try_recv() {
                                Ok(more) => {
                                    more.encode_into(&mut buf).map_err(std::io::Error::other)?
                                }
                                Err(_) => break,
                            }
                        }
                        wr.write_all(&buf).await
                    } else {
                        let p = f.encode_parts().map_err(std::io::Error::other)?;
                        wr.write_all(p.head()).await?;
                        wr.write_all(p.payload()).await?;
                        wr.write_all(p.crcs()).await
                    }
                }
                .await;
                if let Err(e) = res {
                    fail_all(&w, &c, &r, &a, format!("send: {e}"));
                    return;
                }
            }
        });

        let (w, c, r, a) = (
            waiters.clone(),
            closed.clone(),
            reason.clone(),
            addr.to_string(),
        );
        let reader = tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(256 << 10);
            let mut dec = FrameDecoder::new();
            let why = loop {
                match dec.decode(&mut buf) {
                    Ok(Some(f)) => {
                        if f.header.request_id == 0 {
                            let msg = f.error_message().unwrap_or_default().into_owned();
                            break format!("server protocol error: {msg}");
                        }
                        if let Some(tx) = lock(&w).remove(&f.header.request_id) {
                            let _ = tx.send(Ok(f));
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => break format!("malformed reply: {e}"),
                }
                if buf.capacity() - buf.len() < 64 << 10 {
                    buf.reserve(256 << 10);
                }
                match rd.read_buf(&mut buf).await {
                    Ok(0) => break "closed by the server".to_string(),
                    Ok(_) => {}
                    Err(e) => break format!("receive: {e}"),
                }
            };
            fail_all(&w, &c, &r, &a, why);
        });

        Ok(DataConn {
            addr: addr.to_string(),
            tx,
            waiters,
            next_id: AtomicU64::new(1),
            closed,
            reason,
            tasks: [writer, reader],
        })
    }

    /// The shard's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether the connection is dead.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends `frame` (its `request_id` is set here) and returns the reply,
    /// error replies included.
    ///
    /// # Errors
    /// [`DataError::Closed`], [`DataError::TimedOut`].
    pub async fn call(&self, mut frame: Frame, timeout: Duration) -> Result<Frame, DataError> {
        let closed = || DataError::Closed {
            addr: self.addr.clone(),
            reason: lock(&self.reason).clone(),
        };
        if self.is_closed() {
            return Err(closed());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        frame.header.request_id = id;
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(id, tx);
        // The reader may have failed everyone just before the insert.
        if self.is_closed() || self.tx.send(frame).is_err() {
            lock(&self.waiters).remove(&id);
            return Err(closed());
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(closed()),
            Err(_) => {
                lock(&self.waiters).remove(&id);
                Err(DataError::TimedOut {
                    addr: self.addr.clone(),
                })
            }
        }
    }
}

/// One [`DataConn`] per address, opened on first use and replaced when it
/// dies.
#[derive(Debug)]
pub struct DataPool {
    conns: tokio::sync::Mutex<HashMap<String, Arc<DataConn>>>,
    connect_timeout: Duration,
}

impl DataPool {
    /// An empty pool.
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            conns: tokio::sync::Mutex::new(HashMap::new()),
            connect_timeout,
        }
    }

    /// The live connection to `addr`, opening one if needed.
    ///
    /// # Errors
    /// As [`DataConn::connect`].
    pub async fn get(&self, addr: &str) -> Result<Arc<DataConn>, DataError> {
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(addr)
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        let c = Arc::new(DataConn::connect(addr, self.connect_timeout).await?);
        conns.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// [`DataConn::call`] on the pool's connection to `addr`.
    ///
    /// # Errors
    /// As [`DataPool::get`] and [`DataConn::call`].
    pub async fn call(
        &self,
        addr: &str,
        frame: Frame,
        timeout: Duration,
    ) -> Result<Frame, DataError> {
        self.get(addr).await?.call(frame, timeout).await
    }
}

/// Maps an error reply to [`DataError::Status`]; passes a success through.
///
/// # Errors
/// [`DataError::Status`] for a non-zero status.
pub fn into_result(reply: Frame) -> Result<Frame, DataError> {
    match reply.error_code() {
        None => Ok(reply),
        Some(code) => Err(DataError::Status {
            code,
            message: reply.error_message().unwrap_or_default().into_owned(),
            pending: reply
                .header
                .flags
                .contains(cairn_proto::frame::Flags::PENDING),
        }),
    }
}

/// Checks a read reply's payload against its CRCs (end to end).
///
/// # Errors
/// [`DataError::Checksum`].
pub fn verify_read_reply(reply: &Frame) -> Result<(), DataError> {
    reply
        .crcs
        .verify(reply.header.segment_base(), &reply.payload)
        .map_err(|segment| DataError::Checksum { segment })
}

fn base(op: Opcode, chain: ChainId, chain_version: ChainVersion, chunk: ChunkId) -> Header {
    Header {
        chain,
        chain_version,
        chunk,
        ..Header::request(op, 0)
    }
}

/// A Write of `data` at `offset` of `chunk`, with per-4 KiB CRCs.
#[allow(
    clippy::too_many_arguments,
    reason = "one argument per header field a write carries"
)]
pub fn write_request(
    chain: ChainId,
    chain_version: ChainVersion,
    chunk: ChunkId,
    offset: u64,
    data: Bytes,
    client_id: u64,
    client_seq: u64,
    snap_seq: u64,
) -> Frame {
    let h = Header {
        offset,
        client_id: SessionId(client_id),
        client_seq,
        snap_seq,
        ..base(Opcode::Write, chain, chain_version, chunk)
    };
    Frame::with_payload(h, data).unwrap_or_else(|_| Frame::new(h))
}

/// A Read of `len` bytes at `offset` of `chunk`.
pub fn read_request(
    chain: ChainId,
    chain_version: ChainVersion,
    chunk: ChunkId,
    offset: u64,
    len: u32,
) -> Frame {
    Frame::new(Header {
        offset,
        length: len,
        ..base(Opcode::Read, chain, chain_version, chunk)
    })
}

/// A Stat of `chunk`: the reply's `version` is the committed version and
/// its `offset` the chunk length.
pub fn stat_request(chain: ChainId, chain_version: ChainVersion, chunk: ChunkId) -> Frame {
    Frame::new(base(Opcode::Stat, chain, chain_version, chunk))
}

/// A Remove of `chunk` (sent to the head; travels down the chain).
pub fn remove_request(chain: ChainId, chain_version: ChainVersion, chunk: ChunkId) -> Frame {
    Frame::new(base(Opcode::Remove, chain, chain_version, chunk))
}

/// A Ping.
pub fn ping_request() -> Frame {
    Frame::new(Header::request(Opcode::Ping, 0))
}
