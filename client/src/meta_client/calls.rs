//! Unary meta calls on one long-lived stream per replica (proto
//! `Meta.Calls`; the server side is `cairn_meta::service::calls`).
//!
//! # Why
//!
//! A unary gRPC call is an HTTP/2 stream of its own: hyper writes its
//! HEADERS and its DATA in two writes (the body goes out from a task of its
//! own), the server wakes for each, and answers with HEADERS, DATA and
//! trailers. On the stream a call is one DATA frame each way: one write,
//! one wake-up, no hpack, no task per call on the server.
//!
//! # Design
//!
//! * One [`CallStream`] per meta address, beside its tonic channel. The
//!   stream is opened by the first call and reopened by the first call
//!   after it failed; calls made while it opens wait in its send queue.
//! * A call is numbered on its stream and registered with a `oneshot`
//!   before it is queued; the task that reads the stream hands each reply
//!   to the call of its number. A call that gives up (time-out, dropped
//!   future) forgets its number; a late reply to it is dropped.
//! * A reply carries the unary call's status fields, details included, and
//!   is turned back into that status, so the retry loop sees exactly what
//!   the unary call would have returned. A failed stream fails every call
//!   on it UNAVAILABLE (the loop retries them, mutations under the same
//!   request id, which meta applies once); the next call opens a new one.
//! * A call gets the per-request time-out the unary calls get from their
//!   channel ([`super::MetaClientOptions::request_timeout`]), as CANCELLED,
//!   the status tonic gives a unary call that timed out.
//! * Fallbacks (rolling upgrades): a replica without the stream (it fails
//!   to open with UNIMPLEMENTED) gets unary calls for [`UNARY_FOR`], and a
//!   method it does not carry on the stream (a call answered UNIMPLEMENTED)
//!   is made again as a unary call. [`CallStream::call`] returns `None` in
//!   both cases, and the caller makes the unary call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use cairn_proto::meta::meta_client::MetaClient as Grpc;
use cairn_proto::meta::{Call, CallReply};
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Calls queued for a stream before callers wait for room.
const QUEUE: usize = 1024;

/// How long a replica that refused the stream gets unary calls.
pub(crate) const UNARY_FOR: Duration = Duration::from_secs(60);

/// The largest reply message accepted (the unary calls' own limit is
/// tonic's 4 MiB; a reply travels here with a few bytes more).
const MAX_REPLY: usize = 16 << 20;

/// What a call's waiter receives.
enum Answer {
    Reply(CallReply),
    /// The stream failed: the call's status.
    Failed(Status),
    /// The replica has no Calls stream: make the call unary.
    Unsupported,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The calls of one replica (module docs).
pub(crate) struct CallStream {
    channel: Channel,
    request_timeout: Duration,
    live: Mutex<Option<Arc<Live>>>,
    /// Until when calls go unary (the replica refused the stream).
    unary_until: Arc<Mutex<Option<Instant>>>,
}

/// One open (or opening) stream. Dropping it (the last call on it done,
/// and the [`CallStream`] gone or on a newer stream) closes the request
/// side, so the server ends the stream and the reading task ends: that
/// task holds only the [`Calls`], not the sender.
struct Live {
    tx: mpsc::Sender<Call>,
    calls: Arc<Calls>,
}

/// The calls waiting on a stream, shared with the task reading it.
struct Calls {
    next_id: AtomicU64,
    /// The calls waiting for their reply, by id.
    waiters: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    /// Set once the stream failed, before its waiters are answered; no
    /// call registers after that (checked under the waiters' lock).
    dead: AtomicBool,
}

impl Live {
    /// Opens a stream on `channel`: the task that opens it and then reads
    /// its replies runs until it ends.
    fn open(channel: Channel, unary_until: Arc<Mutex<Option<Instant>>>) -> Arc<Live> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let calls = Arc::new(Calls {
            next_id: AtomicU64::new(1),
            waiters: Mutex::default(),
            dead: AtomicBool::new(false),
        });
        let reader = calls.clone();
        tokio::spawn(async move {
            let mut grpc = Grpc::new(channel).max_decoding_message_size(MAX_REPLY);
            let mut inbound = match grpc.calls(ReceiverStream::new(rx)).await {
                Ok(r) => r.into_inner(),
                Err(s) if s.code() == Code::Unimplemented => {
                    *lock(&unary_until) = Some(Instant::now() + UNARY_FOR);
                    reader.fail(|| Answer::Unsupported);
                    return;
                }
                Err(s) => {
                    reader.fail_with(&s);
                    return;
                }
            };
            loop {
                match inbound.message().await {
                    Ok(Some(reply)) => reader.deliver(reply),
                    Ok(None) => {
                        reader.fail_with(&Status::unavailable("meta ended the call stream"));
                        return;
                    }
                    Err(s) => {
                        reader.fail_with(&s);
                        return;
                    }
                }
            }
        });
        Arc::new(Live { tx, calls })
    }
}

impl Calls {
    /// Registers a waiter for call `id`; `None` if the stream failed.
    fn register(&self, id: u64) -> Option<oneshot::Receiver<Answer>> {
        let mut w = lock(&self.waiters);
        if self.dead.load(Ordering::Acquire) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        w.insert(id, tx);
        Some(rx)
    }

    fn forget(&self, id: u64) {
        lock(&self.waiters).remove(&id);
    }

    fn deliver(&self, reply: CallReply) {
        if let Some(tx) = lock(&self.waiters).remove(&reply.id) {
            let _ = tx.send(Answer::Reply(reply));
        }
    }

    /// Fails every call on the stream UNAVAILABLE, naming `s`.
    fn fail_with(&self, s: &Status) {
        let why = format!("meta call stream failed: {} ({:?})", s.message(), s.code());
        tracing::debug!("{why}");
        self.fail(|| Answer::Failed(Status::unavailable(why.clone())));
    }

    /// Marks the stream dead and answers every waiting call.
    fn fail(&self, answer: impl Fn() -> Answer) {
        self.dead.store(true, Ordering::Release);
        let drained = std::mem::take(&mut *lock(&self.waiters));
        for (_, tx) in drained {
            let _ = tx.send(answer());
        }
    }
}

/// Forgets a call that ends without its reply.
struct Forget<'a> {
    calls: &'a Calls,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.calls.forget(self.id);
    }
}

impl CallStream {
    /// The calls of the replica behind `channel`, each given
    /// `request_timeout`. Opens nothing yet.
    pub(crate) fn new(channel: Channel, request_timeout: Duration) -> Self {
        Self {
            channel,
            request_timeout,
            live: Mutex::new(None),
            unary_until: Arc::default(),
        }
    }

    /// The open stream, opened if there is none (or it failed); `None`
    /// while calls go unary.
    fn live(&self) -> Option<Arc<Live>> {
        {
            let mut until = lock(&self.unary_until);
            match *until {
                Some(t) if Instant::now() < t => return None,
                Some(_) => *until = None,
                None => {}
            }
        }
        let mut live = lock(&self.live);
        if let Some(l) = live
            .as_ref()
            .filter(|l| !l.calls.dead.load(Ordering::Acquire))
        {
            return Some(l.clone());
        }
        let l = Live::open(self.channel.clone(), self.unary_until.clone());
        *live = Some(l.clone());
        Some(l)
    }

    /// Makes the unary call `method` (the `MetaClient` method's name) with
    /// `req` on the stream. Returns what the unary call would have returned,
    /// or `None` when the call must be made unary instead (module docs).
    pub(crate) async fn call<Req, Resp>(
        &self,
        method: &'static str,
        req: &Req,
    ) -> Option<Result<tonic::Response<Resp>, Status>>
    where
        Req: Message,
        Resp: Message + Default,
    {
        let live = self.live()?;
        let id = live.calls.next_id.fetch_add(1, Ordering::Relaxed);
        let Some(rx) = live.calls.register(id) else {
            return Some(Err(Status::unavailable("meta call stream failed")));
        };
        let _forget = Forget {
            calls: &live.calls,
            id,
        };
        let call = Call {
            id,
            method: method.to_string(),
            request: req.encode_to_vec(),
        };
        let answer = tokio::time::timeout(self.request_timeout, async {
            if live.tx.send(call).await.is_err() {
                return Answer::Failed(Status::unavailable("meta call stream closed"));
            }
            rx.await
                .unwrap_or_else(|_| Answer::Failed(Status::unavailable("meta call stream closed")))
        })
        .await
        .unwrap_or_else(|_| {
            Answer::Failed(Status::cancelled(format!(
                "no reply within {:?}",
                self.request_timeout
            )))
        });
        match answer {
            Answer::Unsupported => None,
            Answer::Failed(s) => Some(Err(s)),
            Answer::Reply(r) if r.code == 0 => Some(
                Resp::decode(r.reply.as_slice())
                    .map(tonic::Response::new)
                    .map_err(|e| Status::internal(format!("undecodable {method} reply: {e}"))),
            ),
            Answer::Reply(r) if r.code == Code::Unimplemented as i32 => None,
            Answer::Reply(r) => Some(Err(Status::with_details(
                Code::from(r.code),
                r.message,
                r.details.into(),
            ))),
        }
    }
}
