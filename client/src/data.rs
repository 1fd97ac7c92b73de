//! The client side of Cairn's data plane (DESIGN §6): frames to and from
//! chunkserver shards over tokio TCP.
//!
//! # Design
//!
//! A [`DataConn`] is one pipelined TCP connection (`TCP_NODELAY`) to one
//! chunkserver shard: any number of requests in flight, each reply matched
//! to its request by `request_id`. The connection numbers requests from 1
//! (`request_id` 0 is reserved for the server's protocol-error frame, see
//! [`Frame::protocol_error`]). Two tasks serve the socket, and callers of an
//! idle connection write their own small requests:
//!
//! * The **writer task** is fed frames through a bounded channel. It takes
//!   every frame already queued (up to a batch limit) and sends the batch
//!   with vectored writes, looping over partial writes: small frames are
//!   encoded into one buffer, so a burst of 4 KiB requests costs one system
//!   call; a large payload is not copied but sent as its own slice between
//!   its header and its CRCs ([`Frame::encode_parts`]). The channel bound
//!   gives callers backpressure.
//! * **A small request on an idle connection skips the writer task**: the
//!   caller takes the write half's lock without waiting, and when nothing
//!   is queued, writes the frame itself with one non-blocking `write`. That
//!   saves a task wake-up, often on another thread, per request at queue
//!   depth 1 (a 4 KiB read). Whatever that write could not take is
//!   finished by a task of its own that keeps the lock, so a caller that
//!   gives up (a timeout, a dropped future) still never leaves half a frame
//!   on the wire; requests are independent (matched by `request_id`), so
//!   one overtaking a queued one changes nothing.
//! * The **reader task** decodes replies with a [`FrameDecoder`] on a
//!   [`BytesMut`] read buffer (payloads are views of that buffer, not
//!   copies) and hands each reply to the caller waiting for it through a
//!   reply slot named in the pending map, `Mutex<HashMap<request_id, _>>`.
//!   A reply nobody waits for any more (its caller timed out) is dropped.
//! * **Reply slots are pooled** per connection, so a call allocates
//!   nothing for its reply once the connection has served as many calls at
//!   once as it now serves (DESIGN §10: a 4 KiB read allocates nothing
//!   beyond pooled buffers; a `oneshot` channel was one allocation per
//!   call). A slot is armed with its request's id; the reader fills it only
//!   if it still holds that id, under the slot's lock, and the caller
//!   disarms it under the same lock before the slot goes back to the pool,
//!   so a late reply can never land in a slot reused by a later request
//!   (ids are never reused on a connection).
//!
//! A call that times out while the server sent nothing at all on the
//! connection kills the connection too: the server may be gone without
//! the socket saying so (a host that vanished, a socket it accepted and
//! then lost), and a connection that stays silent is no better than a
//! dead one, while keeping it would send every retry into the same
//! silence. A connection over which a slow reply is still arriving, or
//! other replies come, lives on: only its timed-out request is forgotten.
//!
//! A reply with `request_id` 0 (the server's protocol error, sent before it
//! closes), a frame that does not decode, a frame that is not a reply to a
//! request of the same opcode, the end of the stream or a socket error
//! fails **every** request in flight with [`DataError::Closed`] (whose
//! reason says which) and marks the connection dead ([`DataConn::is_closed`]):
//! after that the stream cannot be trusted, later calls fail at once, both
//! tasks stop and [`DataPool`] opens a new connection on next use. The
//! closed flag and the pending map share one lock, so a request is either
//! registered before the connection dies (and is failed with the others)
//! or refused.
//!
//! [`DataConn::call`] returns the reply frame as it came, error replies
//! included; [`into_result`] turns a non-zero status into
//! [`DataError::Status`], and [`verify_read_reply`] checks a read reply's
//! payload against the CRCs the replica sent, which makes checksums end to
//! end (the CRCs of block-aligned reads are the ones stored on disk).
//!
//! A call that times out may still be executed by the server: a write is
//! retried with the same `client_id`/`client_seq`, which the chain head
//! applies once.

use std::collections::HashMap;
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cairn_proto::ErrorCode;
use cairn_proto::frame::{Flags, Frame, FrameDecoder, FrameError, Header, Opcode};
use cairn_proto::ids::{ChainId, ChainVersion, ChunkId, SessionId};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Frames queued for the writer task before callers wait for room.
const QUEUE: usize = 1024;

/// Payloads up to this size are copied into the batch buffer; larger ones
/// are sent as their own slice.
const COPY_MAX: usize = 8 << 10;

/// The writer stops adding queued frames to a batch at this many bytes.
const BATCH_BYTES: usize = 1 << 20;

/// Free reply slots a connection keeps for later calls.
const MAX_FREE_SLOTS: usize = 1024;

/// Slices per vectored write (Linux allows 1024).
const MAX_IOV: usize = 64;

/// Read buffer growth, and the least free room a read is given.
const READ_CHUNK: usize = 256 << 10;
const MIN_READ: usize = 64 << 10;

/// Room made between replies: a 128 KiB read's reply (a dataset file, a
/// kernel read through the mount) with its header and CRCs.
const WHOLE_REPLY: usize = 136 << 10;

/// What a data-plane operation can fail with.
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
    /// The socket failed while sending.
    #[error("{addr}: {source}")]
    Io {
        /// The chunkserver shard.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The connection is dead; every request in flight on it failed with
    /// this error.
    #[error("{addr}: connection closed: {reason}")]
    Closed {
        /// The chunkserver shard.
        addr: String,
        /// Why the connection died (end of stream, the server's protocol
        /// error, an undecodable reply, a socket error).
        reason: String,
    },
    /// No reply (or no connection) in time.
    #[error("{addr}: no reply in time")]
    TimedOut {
        /// The chunkserver shard.
        addr: String,
    },
    /// The request frame is invalid (such as a payload over
    /// [`MAX_PAYLOAD`](cairn_proto::frame::MAX_PAYLOAD)); nothing was sent.
    #[error("invalid request frame: {0}")]
    Protocol(FrameError),
    /// The server answered with an error status.
    #[error("{}: {message}", code.name())]
    Status {
        /// The reply's status.
        code: ErrorCode,
        /// The reply's error message, empty if it carried none.
        message: String,
        /// A CRAQ "pending" answer ([`Flags::PENDING`]): the replica's copy
        /// is dirty; read another replica or retry.
        pending: bool,
    },
    /// Data failed its end-to-end CRC check.
    #[error("data failed its CRC check in segment {segment}")]
    Checksum {
        /// The index of the first bad 4 KiB segment of the payload.
        segment: usize,
    },
}

impl DataError {
    /// Returns the stable wire code of this error: connection failures are
    /// [`ErrorCode::Unavailable`], a timeout [`ErrorCode::TimedOut`], a
    /// status the server's code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Connect { .. } | Self::Io { .. } | Self::Closed { .. } => ErrorCode::Unavailable,
            Self::TimedOut { .. } => ErrorCode::TimedOut,
            Self::Protocol(e) => e.code(),
            Self::Status { code, .. } => *code,
            Self::Checksum { .. } => ErrorCode::Checksum,
        }
    }

    /// Returns whether the same request may succeed if sent again, on a
    /// new connection, to another replica or after refreshing the chain
    /// table: connection failures, timeouts, and the statuses
    /// [`ErrorCode::Pending`], [`ErrorCode::Unavailable`],
    /// [`ErrorCode::TimedOut`], [`ErrorCode::StaleChainVersion`] and
    /// [`ErrorCode::NewerChainVersion`].
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Io { .. } | Self::Closed { .. } => true,
            Self::TimedOut { .. } => true,
            Self::Protocol(_) | Self::Checksum { .. } => false,
            Self::Status { code, .. } => matches!(
                code,
                ErrorCode::Pending
                    | ErrorCode::Diverged
                    | ErrorCode::Unavailable
                    | ErrorCode::TimedOut
                    | ErrorCode::StaleChainVersion
                    | ErrorCode::NewerChainVersion
            ),
        }
    }
}

/// A caller waiting for its reply.
#[derive(Debug)]
struct Waiter {
    /// The request's opcode, which the reply must echo.
    opcode: Opcode,
    slot: Arc<ReplySlot>,
}

/// Where one call's reply is left for its caller (module docs: pooled).
#[derive(Debug, Default)]
struct ReplySlot {
    state: Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    /// The request whose reply the slot takes; 0 while it is free.
    id: u64,
    reply: Option<Result<Frame, DataError>>,
    waker: Option<Waker>,
}

impl ReplySlot {
    /// Leaves `reply` for request `id`'s caller and wakes it; does nothing
    /// if the slot no longer waits for `id` (its caller gave up).
    fn fill(&self, id: u64, reply: Result<Frame, DataError>) {
        let waker = {
            let mut st = lock(&self.state);
            if st.id != id || st.reply.is_some() {
                return;
            }
            st.reply = Some(reply);
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Takes the reply of request `id`, or registers `cx` for a wake-up.
    fn poll_take(&self, id: u64, cx: &mut Context<'_>) -> Poll<Result<Frame, DataError>> {
        let mut st = lock(&self.state);
        debug_assert_eq!(st.id, id);
        if let Some(reply) = st.reply.take() {
            return Poll::Ready(reply);
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Empties the slot and arms it for request `id` (0: disarmed, a late
    /// reply to its last request is dropped).
    fn reset(&self, id: u64) {
        *lock(&self.state) = SlotState {
            id,
            reply: None,
            waker: None,
        };
    }
}

/// The reply of request `id`, once its slot is filled.
struct ReplyFuture<'a> {
    slot: &'a ReplySlot,
    id: u64,
}

impl std::future::Future for ReplyFuture<'_> {
    type Output = Result<Frame, DataError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.slot.poll_take(self.id, cx)
    }
}

/// The socket's write half, shared by the writer task and the fast path.
type Wire = Arc<tokio::sync::Mutex<Option<WireHalf>>>;

/// The write half, and the fast path's encode buffer (reused, so a
/// request written by its caller allocates nothing for its bytes).
#[derive(Debug)]
struct WireHalf {
    wr: OwnedWriteHalf,
    buf: BytesMut,
}

/// What the pending map's lock protects.
#[derive(Debug, Default)]
struct State {
    pending: HashMap<u64, Waiter>,
    /// Reply slots no call holds (module docs).
    free: Vec<Arc<ReplySlot>>,
    /// Why the connection died; `Some` once and for all.
    closed: Option<Arc<str>>,
}

/// What the connection and its two tasks share.
#[derive(Debug)]
struct Shared {
    addr: Arc<str>,
    state: Mutex<State>,
    /// Mirrors `state.closed.is_some()` for a lock-free [`DataConn::is_closed`].
    closed: AtomicBool,
    /// Set to `true` when the connection dies, to stop both tasks.
    dead: watch::Sender<bool>,
    /// Bytes received so far: a call that times out without the server
    /// having sent anything meanwhile kills the connection (module docs).
    heard: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic under the lock cannot leave the map inconsistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Registers a waiter for request `id` with a slot from the pool, or
    /// refuses if the connection is dead. Returns the slot.
    fn register(&self, id: u64, opcode: Opcode) -> Result<Arc<ReplySlot>, DataError> {
        let mut st = lock(&self.state);
        if let Some(reason) = &st.closed {
            return Err(self.closed_error(reason));
        }
        let slot = st.free.pop().unwrap_or_default();
        slot.reset(id);
        st.pending.insert(
            id,
            Waiter {
                opcode,
                slot: slot.clone(),
            },
        );
        Ok(slot)
    }

    /// Ends call `id`: forgets its waiter if no reply came, and puts its
    /// slot back in the pool, disarmed.
    fn release(&self, id: u64, slot: &Arc<ReplySlot>) {
        slot.reset(0);
        let mut st = lock(&self.state);
        st.pending.remove(&id);
        if st.free.len() < MAX_FREE_SLOTS {
            st.free.push(slot.clone());
        }
    }

    fn closed_error(&self, reason: &str) -> DataError {
        DataError::Closed {
            addr: self.addr.to_string(),
            reason: reason.to_string(),
        }
    }

    /// The error of a call on a dead connection.
    fn current_closed_error(&self) -> DataError {
        let reason = lock(&self.state).closed.clone();
        self.closed_error(reason.as_deref().unwrap_or("connection dropped"))
    }

    /// Marks the connection dead (the first reason wins), fails every
    /// request in flight and stops both tasks.
    fn fail(&self, reason: String) {
        let (reason, drained) = {
            let mut st = lock(&self.state);
            let reason = st.closed.get_or_insert_with(|| Arc::from(reason)).clone();
            self.closed.store(true, Ordering::Release);
            (reason, std::mem::take(&mut st.pending))
        };
        self.dead.send_replace(true);
        if !drained.is_empty() {
            tracing::debug!(addr = %self.addr, %reason, in_flight = drained.len(), "data connection failed");
        }
        for (id, w) in drained {
            w.slot.fill(id, Err(self.closed_error(&reason)));
        }
    }

    /// Hands a reply to its caller. Returns why the connection must die if
    /// the reply shows the stream cannot be trusted.
    fn dispatch(&self, reply: Frame) -> Result<(), String> {
        let h = &reply.header;
        if h.request_id == 0 {
            let code = h.error_code().unwrap_or(ErrorCode::Internal);
            let msg = reply.error_message().unwrap_or_default();
            return Err(format!(
                "protocol error from the server: {}: {msg}",
                code.name()
            ));
        }
        if !h.reply {
            return Err(format!(
                "the server sent a {} request (id {}) instead of a reply",
                h.opcode, h.request_id
            ));
        }
        let Some(waiter) = lock(&self.state).pending.remove(&h.request_id) else {
            tracing::debug!(addr = %self.addr, id = h.request_id, "reply nobody waits for");
            return Ok(());
        };
        if waiter.opcode != h.opcode {
            let why = format!(
                "reply {} is a {} reply to a {} request",
                h.request_id, h.opcode, waiter.opcode
            );
            waiter.slot.fill(h.request_id, Err(self.closed_error(&why)));
            return Err(why);
        }
        waiter.slot.fill(h.request_id, Ok(reply));
        Ok(())
    }
}

/// One pipelined connection to one chunkserver shard (see the module doc).
/// Dropping it closes the socket and stops its tasks.
#[derive(Debug)]
pub struct DataConn {
    shared: Arc<Shared>,
    queue: mpsc::Sender<Frame>,
    /// The write half: held by whoever is writing a frame (the writer task,
    /// or a caller on the idle fast path, see the module docs); `None` once
    /// the connection died (dropping it tells the server).
    wire: Wire,
    next_id: AtomicU64,
    writer: JoinHandle<()>,
    reader: JoinHandle<()>,
}

impl Drop for DataConn {
    fn drop(&mut self) {
        // Stops a fast-path write still finishing a frame, too.
        self.shared.dead.send_replace(true);
        self.writer.abort();
        self.reader.abort();
    }
}

/// Ends a call however it ends (reply, timeout, error, or the future
/// dropped): forgets its pending entry and returns its slot to the pool.
struct Release<'a> {
    shared: &'a Shared,
    id: u64,
    slot: Arc<ReplySlot>,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.shared.release(self.id, &self.slot);
    }
}

impl DataConn {
    /// Opens a connection to the shard at `addr` (`host:port`), with
    /// `TCP_NODELAY`, and starts its writer and reader tasks. Must be
    /// called inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`DataError::Connect`] if the connection is refused or fails,
    /// [`DataError::TimedOut`] if it takes longer than `timeout`.
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
        stream
            .set_nodelay(true)
            .map_err(|source| DataError::Connect {
                addr: addr.to_string(),
                source,
            })?;
        let (rd, wr) = stream.into_split();
        let (dead, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            addr: Arc::from(addr),
            state: Mutex::new(State::default()),
            closed: AtomicBool::new(false),
            dead,
            heard: AtomicU64::new(0),
        });
        let (queue, rx) = mpsc::channel(QUEUE);
        let wire = Arc::new(tokio::sync::Mutex::new(Some(WireHalf {
            wr,
            buf: BytesMut::with_capacity(COPY_MAX + 1024),
        })));
        let writer = tokio::spawn(write_loop(wire.clone(), rx, shared.clone()));
        let reader = tokio::spawn(read_loop(rd, shared.clone()));
        Ok(DataConn {
            shared,
            queue,
            wire,
            next_id: AtomicU64::new(1),
            writer,
            reader,
        })
    }

    /// Returns the shard's address, as given to [`DataConn::connect`].
    pub fn addr(&self) -> &str {
        &self.shared.addr
    }

    /// Returns whether the connection is dead; calls on it fail at once.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Returns the number of requests waiting for their reply.
    pub fn in_flight(&self) -> usize {
        lock(&self.shared.state).pending.len()
    }

    /// Sends `frame` with a fresh `request_id` (whatever the frame's header
    /// said) and returns the reply as it came, error replies (status ≠ 0)
    /// included: see [`into_result`]. Many calls may run at once on one
    /// connection. When `timeout` passes (queueing included) or the future
    /// is dropped, the request is forgotten and a late reply is dropped.
    ///
    /// # Errors
    ///
    /// [`DataError::Protocol`] for a frame the encoder refuses, before
    /// anything is sent; [`DataError::Closed`] if the connection is or
    /// becomes dead before the reply; [`DataError::TimedOut`].
    pub async fn call(&self, mut frame: Frame, timeout: Duration) -> Result<Frame, DataError> {
        frame.validate().map_err(DataError::Protocol)?;
        let id = self.next_request_id();
        frame.header.request_id = id;
        let slot = self.shared.register(id, frame.header.opcode)?;
        let guard = Release {
            shared: &self.shared,
            id,
            slot,
        };
        let reply = ReplyFuture {
            slot: &guard.slot,
            id,
        };
        let exchange = async {
            if let Some(frame) = self.try_send_now(frame) {
                self.queue
                    .send(frame)
                    .await
                    .map_err(|_| self.shared.current_closed_error())?;
            }
            reply.await
        };
        let heard = self.shared.heard.load(Ordering::Relaxed);
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                if self.shared.heard.load(Ordering::Relaxed) == heard {
                    self.shared.fail(format!(
                        "the server sent nothing for {timeout:?} with a request in flight"
                    ));
                }
                Err(DataError::TimedOut {
                    addr: self.shared.addr.to_string(),
                })
            }
        }
    }

    /// The idle fast path (module docs): writes a small `frame` on this
    /// thread when no other frame is queued or being written. Returns the
    /// frame when it must go through the writer task instead. A write
    /// error fails the connection, which fails this call's waiter too.
    fn try_send_now(&self, frame: Frame) -> Option<Frame> {
        if frame.payload.len() > COPY_MAX || self.queue.capacity() < self.queue.max_capacity() {
            return Some(frame);
        }
        let Ok(mut wire) = self.wire.clone().try_lock_owned() else {
            return Some(frame);
        };
        let Some(w) = wire.as_mut() else {
            // Dead: the queue refuses it with the reason.
            return Some(frame);
        };
        w.buf.clear();
        if frame.encode_into(&mut w.buf).is_err() {
            // Checked by the caller already; the writer task reports it.
            return Some(frame);
        }
        let sent = match w.wr.try_write(&w.buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => {
                self.shared.fail(format!("send: {e}"));
                return None;
            }
        };
        if sent < w.buf.len() {
            // The socket is full: the rest goes out from a task that keeps
            // the lock, whatever becomes of this caller.
            let rest = [Bytes::copy_from_slice(&w.buf[sent..])];
            let shared = self.shared.clone();
            let mut dead = shared.dead.subscribe();
            tokio::spawn(async move {
                let Some(w) = wire.as_mut() else { return };
                tokio::select! {
                    r = write_all_parts(&mut w.wr, &rest) => if let Err(e) = r {
                        shared.fail(format!("send: {e}"));
                    },
                    _ = dead.wait_for(|d| *d) => {}
                }
            });
        }
        None
    }

    fn next_request_id(&self) -> u64 {
        loop {
            // 0 is reserved; it comes back only after 2^64 requests.
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }
}

/// The writer task: sends queued frames in batches until the connection
/// dies or is dropped.
async fn write_loop(wire: Wire, rx: mpsc::Receiver<Frame>, shared: Arc<Shared>) {
    write_batches(&wire, rx, shared).await;
    // The connection is dead: closing the write half tells the server.
    wire.lock().await.take();
}

/// The body of [`write_loop`]: returns when the connection dies.
async fn write_batches(wire: &Wire, mut rx: mpsc::Receiver<Frame>, shared: Arc<Shared>) {
    let mut dead = shared.dead.subscribe();
    let mut buf = BytesMut::with_capacity(64 << 10);
    let mut parts: Vec<Bytes> = Vec::with_capacity(MAX_IOV);
    loop {
        let first = tokio::select! {
            f = rx.recv() => match f {
                Some(f) => f,
                None => return,
            },
            _ = dead.wait_for(|d| *d) => return,
        };
        let mut batched = stage(&first, &mut buf, &mut parts, &shared);
        // Three parts at most per frame: keep the batch within MAX_IOV
        // slices so one write can take all of it.
        while batched < BATCH_BYTES && parts.len() + 4 <= MAX_IOV {
            match rx.try_recv() {
                Ok(f) => batched += stage(&f, &mut buf, &mut parts, &shared),
                Err(_) => break,
            }
        }
        if !buf.is_empty() {
            parts.push(buf.split().freeze());
        }
        let sent = tokio::select! {
            r = async {
                match wire.lock().await.as_mut() {
                    Some(w) => write_all_parts(&mut w.wr, &parts).await,
                    None => Err(std::io::ErrorKind::NotConnected.into()),
                }
            } => r,
            _ = dead.wait_for(|d| *d) => return,
        };
        parts.clear();
        if let Err(e) = sent {
            shared.fail(format!("send: {e}"));
            return;
        }
    }
}

/// Appends `frame`'s wire form to the batch: into `buf` when it is small,
/// else its header and CRCs into `buf` around its payload as its own part.
/// Returns the bytes added. A frame that does not encode (impossible after
/// the check in [`DataConn::call`]) fails its own call only.
fn stage(frame: &Frame, buf: &mut BytesMut, parts: &mut Vec<Bytes>, shared: &Shared) -> usize {
    let res = if frame.payload.len() <= COPY_MAX {
        frame.encode_into(buf)
    } else {
        frame.encode_parts().map(|p| {
            buf.extend_from_slice(p.head());
            parts.push(buf.split().freeze());
            parts.push(p.payload().clone());
            buf.extend_from_slice(p.crcs());
        })
    };
    match res {
        Ok(()) => frame.encoded_len(),
        Err(e) => {
            let waiter = lock(&shared.state).pending.remove(&frame.header.request_id);
            if let Some(w) = waiter {
                w.slot
                    .fill(frame.header.request_id, Err(DataError::Protocol(e)));
            }
            0
        }
    }
}

/// Writes every byte of `parts`, in order, with vectored writes, however
/// short each write turns out.
async fn write_all_parts<W>(wr: &mut W, parts: &[Bytes]) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    // The first unwritten byte is `parts[idx][off]`.
    let (mut idx, mut off) = (0, 0);
    loop {
        while parts.get(idx).is_some_and(|p| off >= p.len()) {
            idx += 1;
            off = 0;
        }
        let Some(rest) = parts.get(idx..).filter(|r| !r.is_empty()) else {
            return Ok(());
        };
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let mut n = 0;
        for (slot, (i, p)) in slices.iter_mut().zip(rest.iter().enumerate()) {
            let from = if i == 0 { off } else { 0 };
            *slot = IoSlice::new(p.get(from..).unwrap_or_default());
            n += 1;
        }
        let mut written = wr.write_vectored(&slices[..n]).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while let Some(p) = parts.get(idx) {
            let left = p.len() - off;
            if written < left {
                off += written;
                break;
            }
            written -= left;
            idx += 1;
            off = 0;
        }
    }
}

/// The reader task: decodes replies and dispatches them until the stream
/// ends or fails, then fails the connection.
async fn read_loop(mut rd: OwnedReadHalf, shared: Arc<Shared>) {
    let mut dead = shared.dead.subscribe();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut decoder = FrameDecoder::new();
    let why = loop {
        match decoder.decode(&mut buf) {
            Ok(Some(reply)) => match shared.dispatch(reply) {
                Ok(()) => continue,
                Err(why) => break why,
            },
            Ok(None) => {}
            Err(e) => break format!("undecodable reply: {e}"),
        }
        // Between frames (nothing partial to move) room is made for a
        // 128 KiB reply, so that it is read in place: with less, its
        // decode reserved the rest and moved what had arrived (6% of the
        // mount's worker CPU on cold 128 KiB reads in `perf`).
        let room = buf.capacity() - buf.len();
        if room < MIN_READ || (buf.is_empty() && room < WHOLE_REPLY) {
            buf.reserve(READ_CHUNK);
        }
        let read = tokio::select! {
            r = rd.read_buf(&mut buf) => r,
            _ = dead.wait_for(|d| *d) => return,
        };
        match read {
            Ok(0) if buf.is_empty() => break "closed by the server".to_string(),
            Ok(0) => {
                break format!(
                    "closed by the server in the middle of a reply ({} bytes received)",
                    buf.len()
                );
            }
            Ok(n) => {
                shared.heard.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => break format!("receive: {e}"),
        }
    };
    shared.fail(why);
}

/// One [`DataConn`] per address, opened on first use and replaced when it
/// is found dead. Connecting to one address never waits for another.
#[derive(Debug)]
pub struct DataPool {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    connect_timeout: Duration,
}

/// The pool's entry for one address.
#[derive(Debug, Default)]
struct Slot {
    conn: Mutex<Option<Arc<DataConn>>>,
    /// Held while connecting, so concurrent callers open one connection.
    connecting: tokio::sync::Mutex<()>,
}

impl Slot {
    fn live(&self) -> Option<Arc<DataConn>> {
        lock(&self.conn)
            .as_ref()
            .filter(|c| !c.is_closed())
            .cloned()
    }
}

impl DataPool {
    /// Returns an empty pool whose connections are opened with
    /// `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            connect_timeout,
        }
    }

    /// Returns the live connection to `addr`, opening one if there is none
    /// or the last one died.
    ///
    /// # Errors
    ///
    /// As [`DataConn::connect`].
    pub async fn get(&self, addr: &str) -> Result<Arc<DataConn>, DataError> {
        let slot = {
            let mut slots = lock(&self.slots);
            match slots.get(addr) {
                Some(s) => s.clone(),
                None => slots.entry(addr.to_string()).or_default().clone(),
            }
        };
        if let Some(c) = slot.live() {
            return Ok(c);
        }
        let _connecting = slot.connecting.lock().await;
        if let Some(c) = slot.live() {
            return Ok(c);
        }
        let conn = Arc::new(DataConn::connect(addr, self.connect_timeout).await?);
        *lock(&slot.conn) = Some(conn.clone());
        Ok(conn)
    }

    /// Returns the reply to `frame` from the shard at `addr`:
    /// [`DataConn::call`] on the pool's connection to it.
    ///
    /// # Errors
    ///
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

/// Returns `reply` if its status is 0, else its error as
/// [`DataError::Status`] (with the message and the CRAQ pending flag).
///
/// # Errors
///
/// [`DataError::Status`] for a non-zero status.
pub fn into_result(reply: Frame) -> Result<Frame, DataError> {
    match reply.error_code() {
        None => Ok(reply),
        Some(code) => Err(DataError::Status {
            code,
            message: reply.error_message().unwrap_or_default().into_owned(),
            pending: reply.header.flags.contains(Flags::PENDING),
        }),
    }
}

/// Checks a read reply's payload against the segment CRCs the replica sent
/// with it ([`Frame::verify_payload`]): the client's half of the end-to-end
/// check.
///
/// # Errors
///
/// [`DataError::Checksum`] with the first bad segment.
pub fn verify_read_reply(reply: &Frame) -> Result<(), DataError> {
    reply.verify_payload().map_err(|e| match e {
        FrameError::PayloadCrc { segment } => DataError::Checksum { segment },
        other => DataError::Protocol(other),
    })
}

/// A request header for `opcode` on `chunk` of `chain` at `chain_version`;
/// the connection sets the `request_id`.
fn chunk_header(
    opcode: Opcode,
    chain: ChainId,
    chain_version: ChainVersion,
    chunk: ChunkId,
) -> Header {
    Header {
        chain,
        chain_version,
        chunk,
        ..Header::request(opcode, 0)
    }
}

/// Returns a Write request (for the chain head) of `data` at byte `offset`
/// of `chunk`, with one CRC per 4 KiB segment of the chunk, from client
/// `client_id` with its write sequence `client_seq` (a retry reuses both,
/// so the head applies the write once) under snapshot sequence `snap_seq`.
/// The reply's `version` is the chunk version the write committed as.
///
/// `data` larger than [`MAX_PAYLOAD`](cairn_proto::frame::MAX_PAYLOAD)
/// gives a frame that [`DataConn::call`] refuses with
/// [`DataError::Protocol`].
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
    let header = Header {
        offset,
        snap_seq,
        client_id: SessionId(client_id),
        client_seq,
        ..chunk_header(Opcode::Write, chain, chain_version, chunk)
    };
    let len = data.len();
    Frame::with_payload(header, data.clone()).unwrap_or_else(|_| Frame {
        // Left for `Frame::validate` to refuse with the precise error.
        header: Header {
            flags: Flags::BODY,
            length: u32::try_from(len).unwrap_or(u32::MAX),
            ..header
        },
        payload: data,
        crcs: Default::default(),
        seals: Bytes::new(),
    })
}

/// Returns a Read request for `len` bytes at byte `offset` of `chunk`. The
/// reply carries the data and its segment CRCs (check them with
/// [`verify_read_reply`]); a CRAQ replica whose copy is dirty answers
/// "pending" instead.
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
        ..chunk_header(Opcode::Read, chain, chain_version, chunk)
    })
}

/// Returns a Stat request for `chunk`: the reply's `offset` is the chunk
/// length and its `version` the committed chunk version.
pub fn stat_request(chain: ChainId, chain_version: ChainVersion, chunk: ChunkId) -> Frame {
    Frame::new(chunk_header(Opcode::Stat, chain, chain_version, chunk))
}

/// Returns a Truncate request (for the chain head) cutting `chunk` to
/// `new_len` bytes; the head passes it down the chain.
///
/// It carries snapshot seq `snap_seq`, and [`Flags::NO_CLONE`] with
/// `no_clone` (the file's volume has no snapshot).
pub fn truncate_request(
    chain: ChainId,
    chain_version: ChainVersion,
    chunk: ChunkId,
    new_len: u64,
    snap_seq: u64,
    no_clone: bool,
) -> Frame {
    Frame::new(Header {
        offset: new_len,
        snap_seq,
        flags: if no_clone {
            Flags::NO_CLONE
        } else {
            Flags::NONE
        },
        ..chunk_header(Opcode::Truncate, chain, chain_version, chunk)
    })
}

/// Returns a Remove request for `chunk`, sent to the chain head, which
/// passes it down the chain.
pub fn remove_request(chain: ChainId, chain_version: ChainVersion, chunk: ChunkId) -> Frame {
    Frame::new(chunk_header(Opcode::Remove, chain, chain_version, chunk))
}

/// Returns a RemoveMany request (for the chain head) of `chunks`, all of
/// chain `chain` and of one shard of its head (1 to
/// [`cairn_proto::frame::MAX_REMOVE_MANY`] of them).
///
/// # Panics
/// Never for a list within those bounds: its body is far below the frame
/// limit.
pub fn remove_many_request(
    chain: ChainId,
    chain_version: ChainVersion,
    chunks: &[ChunkId],
) -> Frame {
    let first = chunks.first().copied().unwrap_or(ChunkId {
        object: cairn_proto::ids::ObjectId(0),
        index: 0,
    });
    let header = chunk_header(Opcode::RemoveMany, chain, chain_version, first);
    Frame::with_payload(header, cairn_proto::frame::encode_chunk_list(chunks))
        .unwrap_or_else(|_| Frame::new(header))
}

/// Returns a Ping request: a liveness and round-trip check.
pub fn ping_request() -> Frame {
    Frame::new(Header::request(Opcode::Ping, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::frame::io::{read_frame, write_frame};
    use cairn_proto::frame::{HEADER_LEN, MAX_PAYLOAD, segment_count};
    use cairn_proto::ids::ObjectId;
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    const T: Duration = Duration::from_secs(5);

    fn chunk() -> ChunkId {
        ChunkId {
            object: ObjectId(42),
            index: 3,
        }
    }

    /// The bytes a test server holds at `offset..offset + len`.
    fn pattern(offset: u64, len: u32) -> Bytes {
        (offset..offset + u64::from(len))
            .map(|i| (i.wrapping_mul(31) % 251) as u8)
            .collect()
    }

    async fn listen() -> (TcpListener, String) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        (l, addr)
    }

    /// One accepted connection of a test server.
    struct Peer {
        s: TcpStream,
        dec: FrameDecoder,
        buf: BytesMut,
    }

    impl Peer {
        async fn accept(l: &TcpListener) -> Peer {
            let (s, _) = l.accept().await.unwrap();
            Peer {
                s,
                dec: FrameDecoder::new(),
                buf: BytesMut::new(),
            }
        }

        async fn recv(&mut self) -> Option<Frame> {
            read_frame(&mut self.s, &mut self.dec, &mut self.buf)
                .await
                .unwrap()
        }

        async fn send(&mut self, f: &Frame) {
            write_frame(&mut self.s, f).await.unwrap();
        }
    }

    /// The answer of the echo server: data for a Read, the chunk length
    /// and a version for a Stat, a plain reply otherwise.
    fn answer(req: &Header) -> Frame {
        match req.opcode {
            Opcode::Read => Frame::data_reply(req, pattern(req.offset, req.length)).unwrap(),
            Opcode::Stat => Frame::new(Header {
                offset: 1234,
                version: 5,
                ..Header::reply_to(req)
            }),
            _ => Frame::reply(req),
        }
    }

    /// Small writes sent while the server reads nothing fill the socket, so
    /// the idle fast path's write comes up short and later calls queue
    /// behind it: every frame still arrives whole, with its own payload.
    #[tokio::test]
    async fn a_full_socket_never_splits_or_mixes_frames() {
        const N: usize = 1500;
        let (l, addr) = listen().await;
        let server = tokio::spawn(async move {
            let mut p = Peer::accept(&l).await;
            // Let the client fill both socket buffers first.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut seen = 0;
            while let Some(f) = p.recv().await {
                let want = COPY_MAX - f.header.offset as usize;
                assert_eq!(f.payload.len(), want);
                let fill = (f.header.offset % 251) as u8;
                assert!(f.payload.iter().all(|&b| b == fill), "mixed payload");
                p.send(&answer(&f.header)).await;
                seen += 1;
            }
            seen
        });
        let conn = DataConn::connect(&addr, T).await.unwrap();
        let (c, v, k) = (ChainId(1), ChainVersion(1), chunk());
        let calls = (0..N).map(|i| {
            let len = COPY_MAX - i;
            let data = Bytes::from(vec![(i % 251) as u8; len]);
            conn.call(
                write_request(c, v, k, i as u64, data, 7, i as u64 + 1, 0),
                T,
            )
        });
        for r in futures::future::join_all(calls).await {
            into_result(r.unwrap()).unwrap();
        }
        drop(conn);
        assert_eq!(server.await.unwrap(), N);
    }

    /// Takes `n` requests before answering any, then answers them in
    /// reverse order: only a pipelined client that matches by id passes.
    #[tokio::test]
    async fn concurrent_calls_get_their_own_out_of_order_replies() {
        const N: u64 = 100;
        let (l, addr) = listen().await;
        let server = tokio::spawn(async move {
            let mut p = Peer::accept(&l).await;
            let mut reqs = Vec::new();
            while reqs.len() < N as usize {
                reqs.push(p.recv().await.unwrap().header);
            }
            for req in reqs.iter().rev() {
                p.send(&answer(req)).await;
            }
            assert!(p.recv().await.is_none(), "no request beyond the {N}");
            let mut ids: Vec<u64> = reqs.iter().map(|r| r.request_id).collect();
            ids.sort_unstable();
            ids
        });
        let conn = Arc::new(DataConn::connect(&addr, T).await.unwrap());
        assert_eq!(conn.addr(), addr);
        let calls: Vec<_> = (0..N)
            .map(|i| {
                let conn = conn.clone();
                tokio::spawn(async move {
                    let (offset, len) = (i * 1000, 100 + i as u32);
                    let req = read_request(ChainId(1), ChainVersion(2), chunk(), offset, len);
                    let reply = into_result(conn.call(req, T).await.unwrap()).unwrap();
                    verify_read_reply(&reply).unwrap();
                    assert_eq!(reply.header.offset, offset);
                    assert_eq!(reply.payload, pattern(offset, len), "call {i}");
                })
            })
            .collect();
        for c in calls {
            c.await.unwrap();
        }
        assert_eq!(conn.in_flight(), 0);
        assert!(!conn.is_closed());
        drop(conn);
        let ids = server.await.unwrap();
        assert_eq!(ids, (1..=N).collect::<Vec<_>>(), "ids from 1, never 0");
    }

    /// Every request builder's header, as the server decodes it, and
    /// writes both small (copied, batched) and large (vectored).
    #[tokio::test]
    async fn requests_reach_the_server_intact() {
        let (l, addr) = listen().await;
        let server = tokio::spawn(async move {
            let mut p = Peer::accept(&l).await;
            let mut seen = Vec::new();
            while let Some(f) = p.recv().await {
                let reply = if f.header.opcode == Opcode::Write {
                    match f.verify_payload() {
                        Ok(()) => Frame::new(Header {
                            version: 9,
                            ..Header::reply_to(&f.header)
                        }),
                        Err(_) => Frame::error_reply(&f.header, ErrorCode::Checksum, "bad"),
                    }
                } else {
                    answer(&f.header)
                };
                p.send(&reply).await;
                seen.push(f);
            }
            seen
        });
        let conn = DataConn::connect(&addr, T).await.unwrap();
        let (c, v, k) = (ChainId(7), ChainVersion(11), chunk());
        let big = Bytes::from((0..3 << 20).map(|i| (i % 253) as u8).collect::<Vec<u8>>());
        let small = Bytes::from_static(b"hello, chunk");
        let (w_big, w_small, stat) = tokio::join!(
            conn.call(write_request(c, v, k, 4094, big.clone(), 77, 5, 3), T),
            conn.call(write_request(c, v, k, 100, small.clone(), 77, 6, 3), T),
            conn.call(stat_request(c, v, k), T),
        );
        assert_eq!(into_result(w_big.unwrap()).unwrap().header.version, 9);
        assert_eq!(into_result(w_small.unwrap()).unwrap().header.version, 9);
        let stat = into_result(stat.unwrap()).unwrap();
        assert_eq!((stat.header.offset, stat.header.version), (1234, 5));
        into_result(conn.call(remove_request(c, v, k), T).await.unwrap()).unwrap();
        into_result(conn.call(ping_request(), T).await.unwrap()).unwrap();
        drop(conn);

        // The server sees end of stream once the connection is dropped.
        let seen = tokio::time::timeout(T, server).await.unwrap().unwrap();
        assert_eq!(seen.len(), 5);
        let by_op = |op: Opcode| seen.iter().filter(move |f| f.header.opcode == op);
        for f in &seen {
            let h = &f.header;
            assert!(!h.reply && h.status == 0 && h.token.is_none());
            if h.opcode != Opcode::Ping {
                assert_eq!((h.chain, h.chain_version, h.chunk), (c, v, k));
            }
        }
        let writes: Vec<_> = by_op(Opcode::Write).collect();
        assert_eq!(writes.len(), 2);
        for w in writes {
            let h = &w.header;
            assert!(h.flags.contains(Flags::BODY));
            assert_eq!((h.client_id, h.snap_seq), (SessionId(77), 3));
            let (offset, data, seq) = if h.client_seq == 5 {
                (4094, &big, 5)
            } else {
                (100, &small, 6)
            };
            assert_eq!((h.offset, h.client_seq), (offset, seq));
            assert_eq!(&w.payload, data);
            assert_eq!(h.length as usize, data.len());
            let crcs = segment_count(offset, data.len() as u64).unwrap();
            assert_eq!(w.crcs.len() as u64, crcs);
            w.verify_payload().unwrap();
        }
        assert_eq!(by_op(Opcode::Stat).count(), 1);
        assert_eq!(by_op(Opcode::Remove).count(), 1);
        assert_eq!(by_op(Opcode::Ping).count(), 1);
    }

    #[tokio::test]
    async fn server_closing_mid_frame_fails_every_call_in_flight() {
        let (l, addr) = listen().await;
        let server = tokio::spawn(async move {
            let mut p = Peer::accept(&l).await;
            let mut last = None;
            for _ in 0..3 {
                last = p.recv().await;
            }
            let mut wire = BytesMut::new();
            answer(&last.unwrap().header)
                .encode_into(&mut wire)
                .unwrap();
            p.s.write_all(&wire[..HEADER_LEN + 10]).await.unwrap();
            // Dropping `p` closes the connection mid-frame.
        });
        let conn = DataConn::connect(&addr, T).await.unwrap();
        let read = || read_request(ChainId(1), ChainVersion(1), chunk(), 0, 4096);
        let (a, b, c) = tokio::join!(
            conn.call(read(), T),
            conn.call(read(), T),
            conn.call(read(), T)
        );
        for r in [a, b, c] {
            match r {
                Err(e @ DataError::Closed { .. }) => {
                    assert!(e.to_string().contains("middle of a reply"), "{e}");
                    assert!(e.is_retryable());
                    assert_eq!(e.code(), ErrorCode::Unavailable);
                }
                other => panic!("expected Closed, got {other:?}"),
            }
        }
        server.await.unwrap();
        assert!(conn.is_closed());
        assert_eq!(conn.in_flight(), 0);
        // Later calls fail at once, long before their timeout.
        let late = tokio::time::timeout(Duration::from_secs(1), conn.call(ping_request(), T))
            .await
            .expect("a call on a dead connection fails fast");
        assert!(matches!(late, Err(DataError::Closed { .. })), "{late:?}");
    }

    #[tokio::test]
    async fn unanswered_call_times_out_and_its_late_reply_is_dropped() {
        let (l, addr) = listen().await;
        let (go_tx, go_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let mut p = Peer::accept(&l).await;
            let timed_out = p.recv().await.unwrap();
            // Another request is answered meanwhile: the server is alive,
            // only slow with the first one.
            let ping = p.recv().await.unwrap();
            p.send(&answer(&ping.header)).await;
            go_rx.await.unwrap();
            let abandoned = p.recv().await.unwrap();
            let live = p.recv().await.unwrap();
            // The late replies to the forgotten requests come first.
            for req in [timed_out, abandoned, live] {
                p.send(&answer(&req.header)).await;
            }
            p.recv().await // hold the connection until the client drops it
        });
        let conn = DataConn::connect(&addr, T).await.unwrap();
        let req = |offset| read_request(ChainId(1), ChainVersion(1), chunk(), offset, 10);
        let (r, pong) = tokio::join!(conn.call(req(0), Duration::from_millis(300)), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            conn.call(ping_request(), T).await
        });
        into_result(pong.unwrap()).unwrap();
        assert!(matches!(r, Err(DataError::TimedOut { .. })), "{r:?}");
        assert_eq!(
            conn.in_flight(),
            0,
            "a timed-out call leaves nothing behind"
        );
        assert!(!conn.is_closed());

        // A call whose future is dropped leaves nothing behind either.
        let abandoned = tokio::time::timeout(Duration::from_millis(50), conn.call(req(2), T)).await;
        assert!(abandoned.is_err());
        assert_eq!(conn.in_flight(), 0);

        go_tx.send(()).unwrap();
        let reply = conn.call(req(1), T).await.unwrap();
        assert_eq!(
            reply.header.offset, 1,
            "not a late reply to another request"
        );
        assert_eq!(reply.payload, pattern(1, 10));
        assert_eq!(conn.in_flight(), 0);
        assert_eq!(
            lock(&conn.shared.state).free.len(),
            2,
            "the calls took two pooled reply slots (two ran at once), then reused them"
        );
        drop(conn);
        assert!(server.await.unwrap().is_none());
    }

    #[tokio::test]
    async fn corrupted_read_payload_fails_the_end_to_end_check() {
        let (l, addr) = listen().await;
        tokio::spawn(async move {
            let mut p = Peer::accept(&l).await;
            while let Some(f) = p.recv().await {
                let mut reply = answer(&f.header);
                if f.header.offset == 0 {
                    // Flip a bit of the third segment after the CRCs were taken.
                    let mut data = BytesMut::from(&reply.payload[..]);
                    data[2 * 4096 + 5] ^= 0x04;
                    reply.payload = data.freeze();
                }
                p.send(&reply).await;
            }
        });
        let conn = DataConn::connect(&addr, T).await.unwrap();
        let read = |offset| read_request(ChainId(1), ChainVersion(1), chunk(), offset, 16384);
        let good = into_result(conn.call(read(4096), T).await.unwrap()).unwrap();
        verify_read_reply(&good).unwrap();
        let bad = into_result(conn.call(read(0), T).await.unwrap()).unwrap();
        let err = verify_read_reply(&bad).unwrap_err();
        assert!(matches!(err, DataError::Checksum { segment: 2 }), "{err:?}");
        assert_eq!(err.code(), ErrorCode::Checksum);
        assert!(!err.is_retryable());
        assert!(!conn.is_closed(), "a bad payload leaves the framing intact");
    }

    #[tokio::test]
    async fn protocol_error_frame_fails_every_call_in_flight() {
        let (l, addr) = listen().await;
        let server = tokio::spawn(async move {
            let mut p = Peer::accept(&l).await;
            p.recv().await.unwrap();
            p.recv().await.unwrap();
            let err = FrameError::HeaderCrc {
                expected: 1,
                actual: 2,
            };
            p.send(&Frame::protocol_error(&err)).await;
            // Keep the connection open: the id-0 frame alone must do it.
            p.recv().await
        });
        let conn = DataConn::connect(&addr, T).await.unwrap();
        let (a, b) = tokio::join!(
            conn.call(ping_request(), T),
            conn.call(stat_request(ChainId(1), ChainVersion(1), chunk()), T)
        );
        for r in [a, b] {
            match r {
                Err(DataError::Closed { reason, .. }) => {
                    assert!(reason.contains("protocol error"), "{reason}");
                    assert!(reason.contains("header CRC"), "{reason}");
                }
                other => panic!("expected Closed, got {other:?}"),
            }
        }
        assert!(conn.is_closed());
        assert!(matches!(
            conn.call(ping_request(), T).await,
            Err(DataError::Closed { .. })
        ));
        // The connection's tasks are gone, so the server sees the end of
        // the stream while `conn` still exists.
        let end = tokio::time::timeout(T, server).await.unwrap().unwrap();
        assert!(end.is_none());
    }

    #[tokio::test]
    async fn invalid_request_is_refused_before_sending() {
        let (l, addr) = listen().await;
        let server = tokio::spawn(async move {
            let mut p = Peer::accept(&l).await;
            let mut ops = Vec::new();
            while let Some(f) = p.recv().await {
                p.send(&answer(&f.header)).await;
                ops.push(f.header.opcode);
            }
            ops
        });
        let conn = DataConn::connect(&addr, T).await.unwrap();
        let huge = Bytes::from(vec![0u8; MAX_PAYLOAD as usize + 1]);
        let w = write_request(ChainId(1), ChainVersion(1), chunk(), 0, huge, 1, 1, 0);
        let e = conn.call(w, T).await.unwrap_err();
        assert!(
            matches!(e, DataError::Protocol(FrameError::TooLarge(_))),
            "{e:?}"
        );
        assert_eq!(e.code(), ErrorCode::BadRequest);
        let r = read_request(ChainId(1), ChainVersion(1), chunk(), 0, MAX_PAYLOAD + 1);
        assert!(matches!(conn.call(r, T).await, Err(DataError::Protocol(_))));
        into_result(conn.call(ping_request(), T).await.unwrap()).unwrap();
        drop(conn);
        assert_eq!(server.await.unwrap(), vec![Opcode::Ping]);
    }

    #[tokio::test]
    async fn pool_reuses_a_live_connection_and_replaces_a_dead_one() {
        let (l, addr) = listen().await;
        // Each connection answers one request, then closes.
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let mut p = Peer::accept(&l).await;
                let f = p.recv().await.unwrap();
                p.send(&answer(&f.header)).await;
            }
        });
        let pool = DataPool::new(T);
        let a = pool.get(&addr).await.unwrap();
        assert!(Arc::ptr_eq(&a, &pool.get(&addr).await.unwrap()));
        into_result(pool.call(&addr, ping_request(), T).await.unwrap()).unwrap();
        tokio::time::timeout(T, async {
            while !a.is_closed() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the server's close is noticed");
        let b = pool.get(&addr).await.unwrap();
        assert!(!Arc::ptr_eq(&a, &b), "a dead connection is replaced");
        into_result(pool.call(&addr, ping_request(), T).await.unwrap()).unwrap();
        server.await.unwrap();

        // Nothing listens any more.
        drop(b);
        let (l, gone) = listen().await;
        drop(l);
        let e = pool.get(&gone).await.unwrap_err();
        assert!(matches!(e, DataError::Connect { .. }), "{e:?}");
        assert!(e.is_retryable());
    }

    /// A server that accepted the connection but never answers on it (a
    /// socket it lost, a host gone without a reset): the call that times
    /// out kills the connection, and the pool's next call opens a new one
    /// that is answered, instead of sending every retry into the silence.
    #[tokio::test]
    async fn a_connection_silent_through_a_timeout_is_replaced() {
        let (l, addr) = listen().await;
        let server = tokio::spawn(async move {
            let mut deaf = Peer::accept(&l).await;
            let ignored = deaf.recv().await.unwrap();
            let mut fresh = Peer::accept(&l).await;
            let f = fresh.recv().await.unwrap();
            fresh.send(&answer(&f.header)).await;
            // Both connections stay open until the test ends.
            (ignored.header.opcode, deaf, fresh)
        });
        let pool = DataPool::new(T);
        let first = pool.get(&addr).await.unwrap();
        let r = pool
            .call(&addr, ping_request(), Duration::from_millis(200))
            .await;
        assert!(matches!(r, Err(DataError::TimedOut { .. })), "{r:?}");
        assert!(r.unwrap_err().is_retryable());
        assert!(first.is_closed(), "the silent connection is dead");
        let reply = pool.call(&addr, ping_request(), T).await.unwrap();
        into_result(reply).unwrap();
        let second = pool.get(&addr).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &second), "a new connection answered");
        let (op, _deaf, _fresh) = server.await.unwrap();
        assert_eq!(op, Opcode::Ping);
    }

    #[test]
    fn error_replies_map_to_status() {
        let req = Header::request(Opcode::Read, 4);
        let e = into_result(Frame::error_reply(
            &req,
            ErrorCode::StaleChainVersion,
            "chain 1 is at 3",
        ))
        .unwrap_err();
        match &e {
            DataError::Status {
                code,
                message,
                pending,
            } => {
                assert_eq!(*code, ErrorCode::StaleChainVersion);
                assert_eq!(message, "chain 1 is at 3");
                assert!(!pending);
            }
            other => panic!("{other:?}"),
        }
        assert!(e.is_retryable());
        let e = into_result(Frame::pending_reply(&req)).unwrap_err();
        assert!(
            matches!(e, DataError::Status { pending: true, .. }),
            "{e:?}"
        );
        assert!(e.is_retryable());
        let e = into_result(Frame::error_reply(&req, ErrorCode::NotFound, "")).unwrap_err();
        assert_eq!(e.code(), ErrorCode::NotFound);
        assert!(!e.is_retryable());
        assert!(into_result(Frame::reply(&req)).is_ok());
    }

    /// A 7-byte pipe makes every vectored write short.
    #[tokio::test]
    async fn short_vectored_writes_send_every_byte_in_order() {
        let parts: Vec<Bytes> = [
            &b"header"[..],
            b"",
            &[7u8; 5000],
            b"x",
            b"",
            b"tail of the batch",
        ]
        .iter()
        .map(|p| Bytes::copy_from_slice(p))
        .collect();
        let want: Vec<u8> = parts.iter().flat_map(|p| p.to_vec()).collect();
        let (mut a, mut b) = tokio::io::duplex(7);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            got
        });
        write_all_parts(&mut a, &parts).await.unwrap();
        write_all_parts(&mut a, &[]).await.unwrap();
        drop(a);
        assert_eq!(reader.await.unwrap(), want);
    }
}
