//! Connections from a shard to other chunkservers' shards: forwarding a
//! write down the chain and asking the tail which version is committed.
//!
//! Each shard executor keeps its own pool (no locks, no cross-thread
//! traffic). A connection carries one request at a time and goes back to
//! the pool after its reply; concurrent requests to one peer open more
//! connections (bounded by [`MAX_IDLE`] kept). Per-connection pipelining
//! would save sockets but not latency here: the head already serializes
//! writes per chunk, so a forward never waits behind another on the same
//! chunk, and independent chunks get independent connections. Any error
//! or timeout drops the connection, so a reply can never be matched to the
//! wrong request.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Duration;

use cairn_proto::ErrorCode;
use cairn_proto::frame::Frame;
use glommio::net::TcpStream;

use crate::wire::{FrameReader, write_frame};

/// Idle connections kept per peer address.
const MAX_IDLE: usize = 16;

/// Why a peer request failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Connecting, sending or receiving failed.
    #[error("peer {addr}: {what}")]
    Unreachable {
        /// The peer.
        addr: String,
        /// What failed.
        what: String,
    },
    /// No reply within the timeout.
    #[error("peer {addr}: no reply within {timeout:?}")]
    TimedOut {
        /// The peer.
        addr: String,
        /// The timeout.
        timeout: Duration,
    },
}

impl PeerError {
    /// The code a client gets for this failure: retry after the chain
    /// table changes.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Unreachable { .. } => ErrorCode::Unavailable,
            Self::TimedOut { .. } => ErrorCode::TimedOut,
        }
    }
}

struct Conn {
    stream: TcpStream,
    reader: FrameReader,
    /// Reused encode buffer for small frames.
    out: bytes::BytesMut,
}

/// A shard's connections to its peers.
pub struct PeerPool {
    idle: RefCell<HashMap<String, Vec<Conn>>>,
    next_id: Cell<u64>,
    timeout: Duration,
}

impl std::fmt::Debug for PeerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerPool")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PeerPool {
    /// A pool whose requests time out after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            idle: RefCell::new(HashMap::new()),
            next_id: Cell::new(1),
            timeout,
        }
    }

    /// Sends `frame` to `addr` and returns the reply (which may be an error
    /// reply: the caller reads its status).
    ///
    /// # Errors
    /// [`PeerError`] when no reply arrives.
    pub async fn call(&self, addr: &str, mut frame: Frame) -> Result<Frame, PeerError> {
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1).max(1));
        frame.header.request_id = id;
        let timeout = self.timeout;
        let attempt = async {
            let mut conn = self.take(addr).await?;
            let unreachable = |what: String| PeerError::Unreachable {
                addr: addr.to_string(),
                what,
            };
            write_frame(&mut conn.stream, &mut conn.out, &frame)
                .await
                .map_err(|e| unreachable(format!("send: {e}")))?;
            let reply = conn
                .reader
                .read(&mut conn.stream)
                .await
                .map_err(|e| unreachable(format!("receive: {e}")))?;
            if reply.header.request_id != id {
                return Err(unreachable(format!(
                    "reply to request {} on the connection of request {id}",
                    reply.header.request_id
                )));
            }
            self.put(addr, conn);
            Ok(reply)
        };
        let timer = async {
            glommio::timer::sleep(timeout).await;
            Err(PeerError::TimedOut {
                addr: addr.to_string(),
                timeout,
            })
        };
        futures_lite::future::or(attempt, timer).await
    }

    async fn take(&self, addr: &str) -> Result<Conn, PeerError> {
        if let Some(c) = self.idle.borrow_mut().get_mut(addr).and_then(Vec::pop) {
            return Ok(c);
        }
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| PeerError::Unreachable {
                addr: addr.to_string(),
                what: format!("connect: {e}"),
            })?;
        // Best effort: without it only small-frame latency suffers.
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            reader: FrameReader::default(),
            out: bytes::BytesMut::new(),
        })
    }

    fn put(&self, addr: &str, conn: Conn) {
        let mut idle = self.idle.borrow_mut();
        let v = idle.entry(addr.to_string()).or_default();
        if v.len() < MAX_IDLE {
            v.push(conn);
        }
    }
}
