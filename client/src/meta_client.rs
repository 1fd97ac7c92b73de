//! [`MetaClient`]: the client of the metadata service (`cairn.meta.v1.Meta`).
//!
//! # What it owns
//! * One lazily connected tonic channel per meta address (TCP_NODELAY, 1 s
//!   connect timeout, a per-request timeout), and on it one stream that
//!   carries the unary calls (the `calls` module: one DATA frame per call
//!   each way instead of an HTTP/2 stream per call), and a guess of which
//!   address is the Raft leader. Leader hints may name an address that was not in
//!   the list given to [`MetaClient::connect`]; it is appended.
//! * A session ([`OpenSession`](cairn_proto::meta::OpenSessionRequest)),
//!   opened lazily by the first mutation and renewed every third of its
//!   timeout by a background task, which stops when [`MetaClient::close`] is
//!   called or the last clone of the client is dropped.
//! * The request ids of mutations (see the `session` module): every
//!   mutation carries `(session, seq, ack_below)`, and a retry of the same
//!   mutation reuses its seq, so meta applies it once and answers the retry
//!   with the first reply.
//!
//! # Retries
//! Every RPC goes through one private loop (`call`):
//! * NOT_LEADER with a hint: go to the hinted address at once (with backoff
//!   only when hints bounce between replicas during an election);
//! * NOT_LEADER without a hint, UNAVAILABLE, transport failures, time-outs:
//!   try the next address after an exponential backoff (10 ms doubling to
//!   500 ms);
//! * any other error: returned at once.
//!
//! The loop gives up after [`MetaClientOptions::deadline`] (default 15 s)
//! with an [`ErrorCode::Unavailable`] status naming the addresses it tried
//! and the last error. A mutation whose session expired is retried once in
//! a new session, with a new request id (the old session's reply cache is
//! gone, so reusing the old id would protect nothing).
//!
//! Reads go to the leader too (meta serves linearizable reads through the
//! read index); spreading them over followers is a later optimisation.
//!
//! # Errors
//! Every method returns [`CairnStatus`]: a stable [`ErrorCode`] and a
//! message; `std::io::Error` has a `From` impl for it.

/// One attempt of the unary call `$method` over `$link`: on its replica's
/// call stream, or unary where the stream does not carry it.
macro_rules! attempt {
    ($link:ident, $method:ident, $r:ident) => {
        match $link.calls.call(stringify!($method), &$r).await {
            Some(res) => res,
            None => {
                let mut c = $link.grpc;
                c.$method($r).await
            }
        }
    };
}

mod listings;

pub use self::listings::{LISTED_AT_MOST, SCAN_AFTER};
mod calls;
pub mod feed;
mod paths;
mod releases;
mod retry;
mod session;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use cairn_proto::ids::{InodeId, NodeId, SessionId, VolumeId};
use cairn_proto::meta::meta_client::MetaClient as Grpc;
use cairn_proto::meta::{
    Attr, ChainTables, Changes, CloseRequest, CopyDoneRequest, CopyUpRequest, CreateRequest,
    CreateSnapshotRequest, CreateVolumeRequest, DeleteSnapshotRequest, DirEntry, DirQuota, Empty,
    EntryReply, FileLock, FileType, GetAttrRequest, GetDirQuotaRequest, GetLockRequest,
    GetXattrRequest, JoinReply, JoinRequest, LinkRequest, ListSnapshotsRequest, ListXattrRequest,
    LockType, LookupRequest, MkdirRequest, MknodRequest, OpenRequest, OpenSessionRequest,
    PromoteRequest, ReadDirReply, ReadDirRequest, ReadLinkRequest, RemoveMemberRequest,
    RemoveXattrRequest, RenameReply, RenameRequest, ReportLengthRequest, RequestId, ResolveRequest,
    RestoreReply, RestoreSnapshotRequest, RestoreStatusRequest, RmdirRequest,
    RotateVolumeKeyRequest, SessionRequest, SetAttrRequest, SetDirQuotaRequest, SetLockRequest,
    SetMaintenanceRequest, SetVolumeQuotaRequest, SetXattrRequest, Snapshot, SnapshotRef,
    StatFsReply, StatFsRequest, StatusReply, SymlinkRequest, Timespec, UnlinkReply, UnlinkRequest,
    Volume, VolumePolicy, WatchChangesRequest,
};
use cairn_proto::{CairnStatus, ErrorCode, names};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};

use self::calls::CallStream;
use self::retry::{AddrBook, Backoff, Step, Tried, classify};
use self::session::{Session, Ticket};
use crate::Result;
use crate::leased::{Changed, Named};

/// Entries asked for per `ReadDir` page by [`MetaClient::readdir_all`].
pub const READDIR_PAGE: u32 = 512;

/// How long [`MetaClient::close`] waits for meta to close the session.
const CLOSE_DEADLINE: Duration = Duration::from_secs(3);

/// Settings of a [`MetaClient`]. `Default` gives the production values.
#[derive(Debug, Clone)]
pub struct MetaClientOptions {
    /// Time allowed to establish a TCP connection to one address (1 s).
    pub connect_timeout: Duration,
    /// Time allowed for one attempt of one RPC on one address (10 s).
    pub request_timeout: Duration,
    /// Total time one call may take across all its retries (15 s); the call
    /// then fails with [`ErrorCode::Unavailable`].
    pub deadline: Duration,
    /// Name of this client in meta's session table, for operators
    /// (default `hostname/pid`).
    pub client_name: String,
    /// Answer [`MetaClient::resolve`] (and so the native client's `stat`,
    /// read-only `open` and the parent lookups of its mutations) from a
    /// cache of paths kept under meta's cache lease ([`crate::leased`]):
    /// exact while the lease runs, so close-to-open holds. Costs one
    /// change-feed stream per client, and other clients' changes of the
    /// names and files it cached wait for its acknowledgement. Off here
    /// (tools, and the FUSE mount, which follows the feed itself: its
    /// creates are covered while that lease runs); on in
    /// [`crate::ClientOptions`]'s default.
    pub cache_leases: bool,
    /// Entries per page when a directory is listed whole for the lease
    /// cache ([`listings`]: 4,096); a directory of up to
    /// [`LISTED_AT_MOST`] entries is read in as many pages. At least 1.
    pub listing_page: u32,
}

impl Default for MetaClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            deadline: Duration::from_secs(15),
            client_name: default_client_name(),
            cache_leases: false,
            listing_page: listings::PAGE,
        }
    }
}

/// Returns `hostname/pid` of this process.
pub fn default_client_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".to_string());
    format!("{host}/{}", std::process::id())
}

/// The owner given to new inodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl Owner {
    /// root:root.
    pub const ROOT: Owner = Owner { uid: 0, gid: 0 };

    /// Returns the effective uid and gid of this process (the owner of
    /// `/proc/self`), or root when they cannot be read.
    pub fn current() -> Self {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self")
            .map(|m| Owner {
                uid: m.uid(),
                gid: m.gid(),
            })
            .unwrap_or(Owner::ROOT)
    }
}

/// Flags of [`MetaClient::rename`] (renameat2(2)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RenameFlags {
    /// Fail with [`ErrorCode::Exists`] when the new name exists
    /// (RENAME_NOREPLACE).
    pub noreplace: bool,
    /// Swap the two entries atomically (RENAME_EXCHANGE).
    pub exchange: bool,
}

impl RenameFlags {
    /// A plain rename(2): replaces an existing target.
    pub const NONE: RenameFlags = RenameFlags {
        noreplace: false,
        exchange: false,
    };
    /// RENAME_NOREPLACE.
    pub const NOREPLACE: RenameFlags = RenameFlags {
        noreplace: true,
        exchange: false,
    };
    /// RENAME_EXCHANGE.
    pub const EXCHANGE: RenameFlags = RenameFlags {
        noreplace: false,
        exchange: true,
    };
}

/// How [`MetaClient::setxattr`] treats an existing attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XattrMode {
    /// Create or replace.
    #[default]
    Upsert,
    /// Fail with [`ErrorCode::Exists`] if it exists (XATTR_CREATE).
    CreateOnly,
    /// Fail with [`ErrorCode::NoData`] if it does not exist
    /// (XATTR_REPLACE).
    ReplaceOnly,
}

/// A time given to [`MetaClient::setattr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    /// Meta's time of the request (UTIME_NOW).
    Now,
    /// This time, in nanoseconds since the Unix epoch.
    At(i64),
}

impl SetTime {
    fn to_proto(self) -> Timespec {
        match self {
            SetTime::Now => Timespec { now: true, ns: 0 },
            SetTime::At(ns) => Timespec { now: false, ns },
        }
    }
}

/// Attribute changes of [`MetaClient::setattr`]; `None` leaves a field as
/// it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetAttrChanges {
    /// New permission bits (07777).
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size: truncates down or extends with a hole, and bumps the
    /// file's truncate generation.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
}

/// A new or linked directory entry: its inode's attributes and its
/// parent's attributes after the change.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The entry's inode.
    pub attr: Attr,
    /// The parent directory after the change (new mtime, nlink), when meta
    /// sent it.
    pub parent: Option<Attr>,
}

/// A cheap, cloneable handle on a meta cluster. Clones share channels,
/// the leader guess and the session.
#[derive(Clone)]
pub struct MetaClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MetaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaClient")
            .field("addrs", &self.addrs())
            .field("leader", &self.leader_addr())
            .finish_non_exhaustive()
    }
}

struct Inner {
    opts: MetaClientOptions,
    peers: RwLock<Peers>,
    /// Index into `peers` of the address that last answered.
    leader: AtomicUsize,
    /// The open session, if any.
    session: Mutex<Option<Arc<Session>>>,
    /// Serializes opening and replacing the session.
    session_open: tokio::sync::Mutex<()>,
    renewer_started: AtomicBool,
    /// Write opens closed unwritten, released in the background.
    releases: Arc<releases::Releases>,
    releaser_started: AtomicBool,
    /// Set to `true` by `close`; the renewal task watches it.
    stop: watch::Sender<bool>,
    closed: AtomicBool,
    /// Mutations of this client that ended (see [`MetaClient::mutations`]).
    mutations: AtomicU64,
    /// Resolved paths under the cache lease (`opts.cache_leases`).
    paths: crate::leased::Leased,
    paths_started: AtomicBool,
    /// Directories listed whole so that names in them are answered from
    /// `paths` ([`listings`]).
    listings: listings::Listings,
}

struct Peers {
    book: AddrBook,
    /// `channels[i]` reaches `book.get(i)`.
    channels: Vec<Channel>,
    /// `calls[i]` carries unary calls to `book.get(i)` on one stream.
    calls: Vec<Arc<CallStream>>,
}

/// What one attempt of a call is given to reach its replica: the unary
/// client, and the replica's call stream.
struct Link {
    grpc: Grpc<Channel>,
    calls: Arc<CallStream>,
}

fn endpoint(addr: &str, opts: &MetaClientOptions) -> Result<Endpoint> {
    Endpoint::from_shared(format!("http://{addr}"))
        .map(|e| {
            e.tcp_nodelay(true)
                .connect_timeout(opts.connect_timeout)
                .timeout(opts.request_timeout)
                // A replica that stops answering (partitioned, frozen, a
                // half-open connection) fails its call stream within
                // interval + timeout, and the calls on it are retried
                // elsewhere, instead of each waiting out the request
                // timeout on a dead connection: a mutation sent to a
                // frozen leader moves on after ~2.9 s (~5.9 s with the
                // 3 s + 3 s before; `client_data`'s frozen-leader test,
                // beside a CPU and disk hog).
                .http2_keep_alive_interval(cairn_proto::META_KEEPALIVE_INTERVAL)
                .keep_alive_timeout(cairn_proto::META_KEEPALIVE_TIMEOUT)
        })
        .map_err(|e| {
            CairnStatus::new(
                ErrorCode::Invalid,
                format!("meta address {addr:?} is not usable: {e}"),
            )
        })
}

/// Converts a gRPC status into a [`CairnStatus`]. A status without Cairn
/// details comes from the transport (or a foreign server); its cause chain
/// ("connection refused") is appended, because tonic's message alone is
/// just "transport error".
///
/// A stream reset by HTTP/2 (tonic reports it as INTERNAL "h2 protocol
/// error") means the replica went away mid-request, not that the request
/// was refused: it becomes UNAVAILABLE so the loop retries it (with the
/// same request id, so a mutation is still applied once).
fn status_to_error(s: &tonic::Status) -> CairnStatus {
    let mut e = CairnStatus::from_status(s);
    if s.details().is_empty() {
        if s.code() == tonic::Code::Internal && s.message().starts_with("h2 protocol error") {
            e.code = ErrorCode::Unavailable;
        }
        let mut cause = std::error::Error::source(s);
        while let Some(c) = cause {
            let text = c.to_string();
            if !e.message.contains(&text) {
                e.message.push_str(": ");
                e.message.push_str(&text);
            }
            cause = c.source();
        }
    }
    e
}

fn missing(what: &str) -> CairnStatus {
    CairnStatus::new(ErrorCode::Internal, format!("meta replied without {what}"))
}

/// The [`Entry`] of a reply that made or linked a name.
fn entry_of(r: EntryReply) -> Result<Entry> {
    Ok(Entry {
        attr: need_attr(r.attr)?,
        parent: r.parent,
    })
}

fn need_attr(attr: Option<Attr>) -> Result<Attr> {
    attr.ok_or_else(|| missing("attributes"))
}

/// Checks a name before it is sent, for a clearer error than meta's.
fn check_name(name: &str) -> Result<()> {
    names::validate(name).map_err(|(code, why)| CairnStatus::new(code, format!("{why}: {name:?}")))
}

macro_rules! rpc {
    ($self:ident, $method:ident, $req:expr) => {
        $self.call(stringify!($method), $req, |l: Link, r| async move {
            attempt!(l, $method, r)
        })
    };
}

/// A lock request: whose, which bytes, what kind (see
/// [`MetaClient::set_lock`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockRequest {
    /// The lock owner within this client (a process, an open file).
    pub owner: u64,
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive (`u64::MAX`: to the end of any file).
    pub end: u64,
    /// Read, write or unlock.
    pub kind: LockType,
    /// The locking process's id, reported to F_GETLK callers.
    pub pid: u32,
}

/// The changes a change-feed subscription receives
/// ([`MetaClient::watch_changes`]).
pub type ChangeStream = tonic::Streaming<Changes>;

macro_rules! mutation {
    ($self:ident, $method:ident, |$rid:ident| $req:expr) => {
        mutation!($self, $method, |$rid| $req, |_| None)
    };
    ($self:ident, $method:ident, |$rid:ident| $req:expr, $changed:expr) => {
        $self.mutate(
            stringify!($method),
            |$rid: RequestId| $req,
            |l: Link, r| async move { attempt!(l, $method, r) },
            $changed,
        )
    };
}

impl MetaClient {
    /// Returns a client of the meta replicas at `addrs` (`host:port`, in any
    /// order; one reachable replica is enough). Channels connect lazily:
    /// this does no network I/O, so an unreachable cluster shows up as an
    /// error of the first call. The session is opened by the first mutation
    /// (or [`Self::session_id`]).
    ///
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`ErrorCode::Invalid`] when `addrs` is empty or an address is not
    /// `host:port`.
    pub async fn connect<S: AsRef<str>>(
        addrs: impl IntoIterator<Item = S>,
        opts: MetaClientOptions,
    ) -> Result<Self> {
        let book = AddrBook::new(addrs)?;
        let channels = book
            .all()
            .iter()
            .map(|a| endpoint(a, &opts).map(|e| e.connect_lazy()))
            .collect::<Result<Vec<_>>>()?;
        let calls = channels
            .iter()
            .map(|c| Arc::new(CallStream::new(c.clone(), opts.request_timeout)))
            .collect();
        let (stop, _) = watch::channel(false);
        Ok(Self {
            inner: Arc::new(Inner {
                opts,
                peers: RwLock::new(Peers {
                    book,
                    channels,
                    calls,
                }),
                leader: AtomicUsize::new(0),
                session: Mutex::new(None),
                session_open: tokio::sync::Mutex::new(()),
                renewer_started: AtomicBool::new(false),
                releases: Arc::default(),
                releaser_started: AtomicBool::new(false),
                stop,
                closed: AtomicBool::new(false),
                mutations: AtomicU64::new(0),
                paths: crate::leased::Leased::default(),
                paths_started: AtomicBool::new(false),
                listings: listings::Listings::default(),
            }),
        })
    }

    /// Returns the options this client was built with.
    pub fn options(&self) -> &MetaClientOptions {
        &self.inner.opts
    }

    /// Returns every meta address this client knows: those given to
    /// [`Self::connect`], then any learned from leader hints.
    pub fn addrs(&self) -> Vec<String> {
        self.peers().book.all().to_vec()
    }

    /// Returns the address that answered last: the leader, as far as this
    /// client knows.
    pub fn leader_addr(&self) -> String {
        let idx = self.inner.leader.load(Ordering::Relaxed);
        self.peers().book.get(idx).to_string()
    }

    fn peers(&self) -> std::sync::RwLockReadGuard<'_, Peers> {
        self.inner
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns the address at `idx` (modulo the length) and the link an
    /// attempt reaches it by.
    fn reach(&self, idx: usize) -> (String, Link) {
        let p = self.peers();
        let i = idx % p.book.len();
        let link = Link {
            grpc: Grpc::new(p.channels[i].clone()),
            calls: p.calls[i].clone(),
        };
        (p.book.get(i).to_string(), link)
    }

    fn next_index(&self, idx: usize) -> usize {
        self.peers().book.next(idx)
    }

    /// Returns the index of `addr`, adding it (and a channel to it) when it
    /// is new.
    fn index_of(&self, addr: &str) -> Result<usize> {
        if let Some(i) = self.peers().book.position(addr) {
            return Ok(i);
        }
        let addr = retry::parse_addr(addr)?;
        let channel = endpoint(&addr, &self.inner.opts)?.connect_lazy();
        let mut p = self
            .inner
            .peers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = p.book.position(&addr) {
            return Ok(i);
        }
        let i = p.book.push(addr);
        p.calls.push(Arc::new(CallStream::new(
            channel.clone(),
            self.inner.opts.request_timeout,
        )));
        p.channels.push(channel);
        Ok(i)
    }

    // ------------------------------------------------------------ retry loop

    /// Sends `req` through `f` with the retry policy of the module docs,
    /// starting at the leader, within the configured deadline.
    async fn call<Req, Resp, F, Fut>(&self, op: &'static str, req: Req, f: F) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(Link, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.call_within(op, self.inner.opts.deadline, req, f).await
    }

    async fn call_within<Req, Resp, F, Fut>(
        &self,
        op: &'static str,
        total: Duration,
        req: Req,
        f: F,
    ) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(Link, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let start = Instant::now();
        let deadline = start + total;
        let mut idx = self.inner.leader.load(Ordering::Relaxed);
        let mut backoff = Backoff::new();
        let mut tried = Tried::default();
        // Redirects in a row; more than one per known address means the
        // hints bounce (an election is under way) and deserve a backoff.
        let mut redirects = 0usize;
        loop {
            let (addr, link) = self.reach(idx);
            tried.note(&addr);
            let remaining = deadline.saturating_duration_since(Instant::now());
            let err = match tokio::time::timeout(remaining, f(link, req.clone())).await {
                Ok(Ok(resp)) => {
                    self.inner.leader.store(idx, Ordering::Relaxed);
                    return Ok(resp.into_inner());
                }
                Ok(Err(status)) => status_to_error(&status),
                Err(_) => CairnStatus::new(
                    ErrorCode::TimedOut,
                    format!("{addr} did not answer before the deadline"),
                ),
            };
            let (next, delay) = match classify(&err) {
                Step::Stop => return Err(err),
                Step::Redirect(hint) => match self.index_of(&hint) {
                    Ok(j) if j != idx % self.peers().book.len() => {
                        redirects += 1;
                        let bouncing = redirects > self.peers().book.len();
                        (
                            j,
                            if bouncing {
                                backoff.next_delay()
                            } else {
                                Duration::ZERO
                            },
                        )
                    }
                    // A hint naming the replica that refused, or an address
                    // we cannot use: fall back to rotation.
                    _ => (self.next_index(idx), backoff.next_delay()),
                },
                Step::Rotate => {
                    redirects = 0;
                    (self.next_index(idx), backoff.next_delay())
                }
            };
            if Instant::now() + delay >= deadline {
                return Err(CairnStatus::new(
                    ErrorCode::Unavailable,
                    format!(
                        "{op}: no meta replica answered within {total:?} ({} attempts; tried {tried}); last error: {} ({})",
                        tried.attempts(),
                        err.message,
                        err.code,
                    ),
                ));
            }
            debug!(op, %addr, code = %err.code, error = %err.message, ?delay, "meta call failed, retrying");
            tokio::time::sleep(delay).await;
            idx = next;
        }
    }

    /// Sends one attempt of `req` to `addr` only, within the deadline.
    async fn call_at<Req, Resp, F, Fut>(&self, addr: &str, req: Req, f: F) -> Result<Resp>
    where
        F: FnOnce(Link, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let idx = self.index_of(addr)?;
        let (addr, link) = self.reach(idx);
        match tokio::time::timeout(self.inner.opts.deadline, f(link, req)).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(status_to_error(&status)),
            Err(_) => Err(CairnStatus::new(
                ErrorCode::TimedOut,
                format!(
                    "{addr} did not answer within {:?}",
                    self.inner.opts.deadline
                ),
            )),
        }
    }

    /// Runs a mutation: gives it a request id in the current session (opened
    /// on first use) and keeps that id across every retry of [`Self::call`];
    /// if the session expired, opens a new one and tries once more with a
    /// new id.
    async fn mutate<Req, Resp, B, F, Fut, C>(
        &self,
        op: &'static str,
        build: B,
        f: F,
        changed: C,
    ) -> Result<Resp>
    where
        Req: Clone,
        B: Fn(RequestId) -> Req,
        F: Fn(Link, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
        C: Fn(&Resp) -> Option<Changed>,
    {
        let mut session = self.session().await?;
        let mut renewed = false;
        loop {
            let ticket = Ticket::begin(Arc::clone(&session));
            let result = self.call(op, build(ticket.request_id()), &f).await;
            drop(ticket);
            // Counted, and dropped from the path cache: exactly what it
            // changed when it says, else (a failure included: it may have
            // been applied) everything.
            let effect = result.as_ref().ok().and_then(&changed);
            self.inner
                .paths
                .own_mutation(&self.inner.mutations, effect.as_ref());
            match result {
                Err(e) if e.code == ErrorCode::SessionExpired && !renewed => {
                    renewed = true;
                    info!(op, session = %session.id, "meta session expired; opening a new one");
                    session = self.replace_session(session.id).await?;
                }
                r => return r,
            }
        }
    }

    // ------------------------------------------------------------ sessions

    fn current_session(&self) -> Option<Arc<Session>> {
        self.inner
            .session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_session(&self, s: Option<Arc<Session>>) -> Option<Arc<Session>> {
        std::mem::replace(
            &mut *self
                .inner
                .session
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
            s,
        )
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(CairnStatus::new(
                ErrorCode::Invalid,
                "the meta client was closed",
            ));
        }
        Ok(())
    }

    async fn open_session_rpc(&self) -> Result<Arc<Session>> {
        let req = OpenSessionRequest {
            client_name: self.inner.opts.client_name.clone(),
        };
        let r = rpc!(self, open_session, req).await?;
        if r.session_id == 0 {
            return Err(missing("a session id"));
        }
        let timeout = match r.timeout_ms {
            0 => Duration::from_secs(60),
            ms => Duration::from_millis(ms),
        };
        debug!(session = r.session_id, ?timeout, "meta session opened");
        Ok(Arc::new(Session::new(SessionId(r.session_id), timeout)))
    }

    /// Returns the open session, opening one (and starting its renewal)
    /// when there is none.
    async fn session(&self) -> Result<Arc<Session>> {
        self.check_open()?;
        if let Some(s) = self.current_session() {
            return Ok(s);
        }
        let _guard = self.inner.session_open.lock().await;
        self.check_open()?;
        if let Some(s) = self.current_session() {
            return Ok(s);
        }
        let s = self.open_session_rpc().await?;
        self.set_session(Some(Arc::clone(&s)));
        self.start_renewer();
        Ok(s)
    }

    /// Replaces the session `expired` with a new one, unless another task
    /// already did.
    async fn replace_session(&self, expired: SessionId) -> Result<Arc<Session>> {
        let _guard = self.inner.session_open.lock().await;
        self.check_open()?;
        if let Some(s) = self.current_session()
            && s.id != expired
        {
            return Ok(s);
        }
        let s = self.open_session_rpc().await?;
        self.set_session(Some(Arc::clone(&s)));
        Ok(s)
    }

    fn start_renewer(&self) {
        if self.inner.renewer_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let stop = self.inner.stop.subscribe();
        tokio::spawn(renew_loop(weak, stop));
    }

    /// Renews the current session once; replaces it when meta says it
    /// expired.
    async fn renew_once(&self) {
        let Some(s) = self.current_session() else {
            return;
        };
        let req = SessionRequest { session_id: s.id.0 };
        let r = self
            .call_within(
                "renew_session",
                s.renew_period(),
                req,
                |l: Link, r| async move { attempt!(l, renew_session, r) },
            )
            .await;
        match r {
            Ok(Empty {}) => debug!(session = %s.id, "meta session renewed"),
            Err(e) if e.code == ErrorCode::SessionExpired => {
                warn!(session = %s.id, "meta session expired before renewal; opening a new one");
                if let Err(e) = self.replace_session(s.id).await {
                    warn!(error = %e, "could not open a new meta session");
                }
            }
            Err(e) => warn!(session = %s.id, error = %e, "could not renew the meta session"),
        }
    }

    /// Returns the id of this client's session, opening it if needed.
    ///
    /// # Errors
    /// As for any call; [`ErrorCode::Invalid`] after [`Self::close`].
    pub async fn session_id(&self) -> Result<SessionId> {
        Ok(self.session().await?.id)
    }

    /// Stops renewing the session and closes it on meta, which releases the
    /// files it holds open. Later mutations fail; reads keep working.
    /// Calling it again does nothing. Dropping every clone without calling
    /// it leaves the session to expire on meta after its timeout.
    ///
    /// # Errors
    /// When meta cannot be reached within a few seconds; the session then
    /// expires on its own.
    pub async fn close(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.inner.stop.send_replace(true);
        let session = {
            let _guard = self.inner.session_open.lock().await;
            self.set_session(None)
        };
        if let Some(s) = session {
            let req = SessionRequest { session_id: s.id.0 };
            self.call_within(
                "close_session",
                CLOSE_DEADLINE,
                req,
                |l: Link, r| async move { attempt!(l, close_session, r) },
            )
            .await?;
            debug!(session = %s.id, "meta session closed");
        }
        Ok(())
    }

    // ------------------------------------------------------------ namespace reads

    /// Returns the attributes of `name` in directory `parent`.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`], [`ErrorCode::NotDir`], or a retry failure.
    pub async fn lookup(&self, parent: InodeId, name: &str) -> Result<Attr> {
        self.lookup_at(None, parent, name).await
    }

    /// [`Self::lookup`] in the live tree (`None`) or in a snapshot's.
    ///
    /// # Errors
    /// As [`Self::lookup`].
    pub async fn lookup_at(
        &self,
        snapshot: Option<SnapshotRef>,
        parent: InodeId,
        name: &str,
    ) -> Result<Attr> {
        need_attr(self.lookup_with(snapshot, parent, name, 0).await?.attr)
    }

    async fn lookup_with(
        &self,
        snapshot: Option<SnapshotRef>,
        parent: InodeId,
        name: &str,
        lease_session: u64,
    ) -> Result<cairn_proto::meta::AttrReply> {
        let req = LookupRequest {
            parent: parent.0,
            name: name.to_string(),
            snapshot,
            lease_session,
        };
        rpc!(self, lookup, req).await
    }

    async fn getattr_with(
        &self,
        snapshot: Option<SnapshotRef>,
        ino: InodeId,
        lease_session: u64,
    ) -> Result<cairn_proto::meta::AttrReply> {
        let req = GetAttrRequest {
            ino: ino.0,
            snapshot,
            lease_session,
        };
        rpc!(self, get_attr, req).await
    }

    /// [`Self::lookup`] for a cache kept under this client's change-feed
    /// lease ([`Self::watch_changes`]): also returns whether meta's leader
    /// covered the answer with the lease (only then may it be cached).
    ///
    /// # Errors
    /// As [`Self::lookup`].
    pub async fn lookup_leased(&self, parent: InodeId, name: &str) -> Result<(Attr, bool)> {
        let session = self.session_id().await?.0;
        let r = self.lookup_with(None, parent, name, session).await?;
        Ok((need_attr(r.attr)?, r.leased))
    }

    /// [`Self::getattr`] for a cache kept under the change-feed lease; see
    /// [`Self::lookup_leased`].
    ///
    /// # Errors
    /// As [`Self::getattr`].
    pub async fn getattr_leased(&self, ino: InodeId) -> Result<(Attr, bool)> {
        let session = self.session_id().await?.0;
        let r = self.getattr_with(None, ino, session).await?;
        Ok((need_attr(r.attr)?, r.leased))
    }

    /// Returns the attributes of inode `ino`.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`], or a retry failure.
    pub async fn getattr(&self, ino: InodeId) -> Result<Attr> {
        self.getattr_at(None, ino).await
    }

    /// [`Self::getattr`] in the live tree (`None`) or in a snapshot's.
    ///
    /// # Errors
    /// As [`Self::getattr`].
    pub async fn getattr_at(&self, snapshot: Option<SnapshotRef>, ino: InodeId) -> Result<Attr> {
        need_attr(self.getattr_with(snapshot, ino, 0).await?.attr)
    }

    /// Returns the attributes of the absolute `path`, resolved on meta in one
    /// call; symlinks are not followed.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`], [`ErrorCode::NotDir`] for a non-directory
    /// in the middle, [`ErrorCode::Invalid`] for a relative path or `..`.
    pub async fn resolve(&self, path: &str) -> Result<Attr> {
        if !self.inner.opts.cache_leases {
            return need_attr(self.resolve_with(path, 0).await?.attr);
        }
        self.start_path_leases();
        let comps = paths::components(path)?;
        let leases = &self.inner.paths;
        let m = self.mutations();
        match leases.resolve(&comps, m) {
            Some(Named::Found(a)) => return Ok(a),
            Some(Named::Absent) => {
                return Err(CairnStatus::new(
                    ErrorCode::NotFound,
                    format!("{} does not exist", paths::join(&comps)),
                ));
            }
            None => {}
        }
        match self.resolve_kept(path, &comps, m).await {
            Err(e) if e.code == ErrorCode::NotFound => {
                self.list_for_absent_names(&comps);
                Err(e)
            }
            r => r,
        }
    }

    /// [`Self::resolve`] on meta, keeping every name on the path in the
    /// path cache when meta covered them with the lease. `m`: the client's
    /// mutation count before the call.
    async fn resolve_kept(&self, path: &str, comps: &[&str], m: u64) -> Result<Attr> {
        let leases = &self.inner.paths;
        let t = leases.begin(m);
        // A closed client still reads, uncached.
        let session = self.session_id().await.map_or(0, |s| s.0);
        let r = self.resolve_with(path, session).await?;
        let attr = need_attr(r.attr)?;
        if r.leased && r.path.len() == comps.len() {
            // Not kept if an own mutation ended meanwhile.
            let now = self.mutations();
            for (i, name) in comps.iter().enumerate() {
                let child = r.path.get(i + 1).unwrap_or(&attr);
                leases.keep(t, now, Some((r.path[i].ino, name)), child);
            }
            // A file looked up on meta: perhaps one of a scan.
            if attr.kind() != FileType::Directory
                && let Some(dir) = r.path.last()
                && let Some(listing) = self.scan_listing(dir.ino)
            {
                tokio::spawn(listing);
            }
        }
        Ok(attr)
    }

    /// The inode of the parent directory of `path`, and the last
    /// component: [`Self::resolve_parent`] for callers that need only the
    /// inode, answered from the path cache when every name on the way is
    /// there ([`MetaClientOptions::cache_leases`]; the directory's own
    /// attributes, which each entry made in it changes, need not be).
    ///
    /// # Errors
    /// As [`Self::resolve_parent`].
    pub async fn parent_dir(&self, path: &str) -> Result<(InodeId, String)> {
        if self.inner.opts.cache_leases {
            let comps = paths::components(path)?;
            if let Some((last, dirs)) = comps.split_last()
                && let Some(ino) = self.inner.paths.resolve_dir(dirs, self.mutations())
            {
                return Ok((InodeId(ino), (*last).to_string()));
            }
        }
        let (a, name) = self.resolve_parent(path).await?;
        Ok((InodeId(a.ino), name))
    }

    /// A new channel to the meta replica at `addr` with this client's
    /// connect timeout and keep-alive: for a stream that outlives calls
    /// (the chain watch), which must not sit on a silent replica.
    ///
    /// # Errors
    /// [`ErrorCode::Invalid`]: `addr` is not usable in a URI.
    pub(crate) fn channel_to(&self, addr: &str) -> Result<Channel> {
        Ok(endpoint(addr, &self.inner.opts)?.connect_lazy())
    }

    /// The cache kept under this client's lease: [`Self::resolve`]'s paths
    /// (with [`MetaClientOptions::cache_leases`]), or a frontend's own
    /// answers (the mount's lookups and opens). Every mutation of this
    /// client drops what it changed from it, exactly when the mutation says
    /// what it changed ([`crate::leased::Leased::own_mutation`]); the
    /// holder of the change feed applies other clients' changes.
    pub fn path_cache(&self) -> &crate::leased::Leased {
        &self.inner.paths
    }

    async fn resolve_with(
        &self,
        path: &str,
        lease_session: u64,
    ) -> Result<cairn_proto::meta::AttrReply> {
        let req = ResolveRequest {
            path: path.to_string(),
            lease_session,
        };
        rpc!(self, resolve, req).await
    }

    /// Returns one page of directory `ino`: at most `limit` entries after
    /// `cookie` (empty for the first page), with attributes when `plus`.
    /// The reply's `next_cookie` is empty on the last page.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`], [`ErrorCode::NotDir`], or a retry failure.
    pub async fn readdir(
        &self,
        ino: InodeId,
        cookie: &[u8],
        limit: u32,
        plus: bool,
    ) -> Result<ReadDirReply> {
        self.readdir_at(None, ino, cookie, limit, plus).await
    }

    /// The whole of directory `ino` in one page of at most `limit`
    /// entries, with each entry's attributes when `plus`, for a cache kept
    /// under this client's change-feed lease. The reply says whether the
    /// page holds the whole directory and meta's leader covered every name
    /// in it with the lease (`leased`: only then may
    /// [`crate::leased::Leased::keep_listing`] keep it), and whether it
    /// covered the files' attributes too (`attrs_leased`).
    ///
    /// # Errors
    /// As [`Self::readdir`].
    pub async fn readdir_leased(
        &self,
        ino: InodeId,
        limit: u32,
        plus: bool,
    ) -> Result<ReadDirReply> {
        self.leased_page(ino, &[], limit, plus, false).await
    }

    /// One page (from `cookie`, empty for the first) of directory `ino`,
    /// read whole in pages for a cache kept under this client's
    /// change-feed lease: meta's leader covers the directory on every
    /// page, whatever its size, and says so in each page's `leased` (and
    /// `attrs_leased`, with `plus`). The pages make the directory whole
    /// only if no change reached this client between the first and the
    /// last (a ticket of [`crate::leased::Leased::begin`] taken before the
    /// first says so).
    ///
    /// # Errors
    /// As [`Self::readdir`].
    pub async fn readdir_leased_page(
        &self,
        ino: InodeId,
        cookie: &[u8],
        limit: u32,
        plus: bool,
    ) -> Result<ReadDirReply> {
        self.leased_page(ino, cookie, limit, plus, true).await
    }

    async fn leased_page(
        &self,
        ino: InodeId,
        cookie: &[u8],
        limit: u32,
        plus: bool,
        paged: bool,
    ) -> Result<ReadDirReply> {
        let session = self.session_id().await?.0;
        let req = ReadDirRequest {
            ino: ino.0,
            cookie: cookie.to_vec(),
            limit,
            plus,
            snapshot: None,
            lease_session: session,
            paged,
        };
        rpc!(self, read_dir, req).await
    }

    /// [`Self::readdir`] in the live tree (`None`) or in a snapshot's.
    ///
    /// # Errors
    /// As [`Self::readdir`].
    pub async fn readdir_at(
        &self,
        snapshot: Option<SnapshotRef>,
        ino: InodeId,
        cookie: &[u8],
        limit: u32,
        plus: bool,
    ) -> Result<ReadDirReply> {
        let req = ReadDirRequest {
            ino: ino.0,
            cookie: cookie.to_vec(),
            limit,
            plus,
            snapshot,
            lease_session: 0,
            paged: false,
        };
        rpc!(self, read_dir, req).await
    }

    /// Returns every entry of directory `ino` (without attributes), paging
    /// through [`Self::readdir`]. Pages are separate reads: entries changed
    /// meanwhile may or may not be listed, as with readdir(3).
    ///
    /// # Errors
    /// As [`Self::readdir`].
    pub async fn readdir_all(&self, ino: InodeId) -> Result<Vec<DirEntry>> {
        self.readdir_pages(None, ino, false).await
    }

    /// As [`Self::readdir_all`], with each entry's attributes.
    ///
    /// # Errors
    /// As [`Self::readdir`].
    pub async fn readdir_all_plus(&self, ino: InodeId) -> Result<Vec<DirEntry>> {
        self.readdir_pages(None, ino, true).await
    }

    /// Every entry of directory `ino` with its attributes, in the live tree
    /// (`None`) or in a snapshot's.
    ///
    /// # Errors
    /// As [`Self::readdir`].
    pub async fn readdir_all_plus_at(
        &self,
        snapshot: Option<SnapshotRef>,
        ino: InodeId,
    ) -> Result<Vec<DirEntry>> {
        self.readdir_pages(snapshot, ino, true).await
    }

    async fn readdir_pages(
        &self,
        snapshot: Option<SnapshotRef>,
        ino: InodeId,
        plus: bool,
    ) -> Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        let mut cookie = Vec::new();
        loop {
            let page = self
                .readdir_at(snapshot, ino, &cookie, READDIR_PAGE, plus)
                .await?;
            out.extend(page.entries);
            if page.next_cookie.is_empty() {
                return Ok(out);
            }
            if page.next_cookie == cookie {
                return Err(CairnStatus::new(
                    ErrorCode::Internal,
                    format!("readdir of inode {ino} returned the same cookie twice"),
                ));
            }
            cookie = page.next_cookie;
        }
    }

    /// Returns the target of symlink `ino`.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`], [`ErrorCode::Invalid`] when `ino` is not a
    /// symlink.
    pub async fn readlink(&self, ino: InodeId) -> Result<String> {
        self.readlink_at(None, ino).await
    }

    /// [`Self::readlink`] in the live tree (`None`) or in a snapshot's.
    ///
    /// # Errors
    /// As [`Self::readlink`].
    pub async fn readlink_at(&self, snapshot: Option<SnapshotRef>, ino: InodeId) -> Result<String> {
        let req = ReadLinkRequest {
            ino: ino.0,
            snapshot,
        };
        Ok(rpc!(self, read_link, req).await?.target)
    }

    /// Returns the value of extended attribute `name` of `ino`.
    ///
    /// # Errors
    /// [`ErrorCode::NoData`] when it is not set.
    pub async fn getxattr(&self, ino: InodeId, name: &str) -> Result<Vec<u8>> {
        self.getxattr_at(None, ino, name).await
    }

    /// [`Self::getxattr`] in the live tree (`None`) or in a snapshot's.
    ///
    /// # Errors
    /// As [`Self::getxattr`].
    pub async fn getxattr_at(
        &self,
        snapshot: Option<SnapshotRef>,
        ino: InodeId,
        name: &str,
    ) -> Result<Vec<u8>> {
        let req = GetXattrRequest {
            ino: ino.0,
            name: name.to_string(),
            snapshot,
        };
        Ok(rpc!(self, get_xattr, req).await?.value)
    }

    /// Returns the names of the extended attributes of `ino`.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`], or a retry failure.
    pub async fn listxattr(&self, ino: InodeId) -> Result<Vec<String>> {
        self.listxattr_at(None, ino).await
    }

    /// [`Self::listxattr`] in the live tree (`None`) or in a snapshot's.
    ///
    /// # Errors
    /// As [`Self::listxattr`].
    pub async fn listxattr_at(
        &self,
        snapshot: Option<SnapshotRef>,
        ino: InodeId,
    ) -> Result<Vec<String>> {
        let req = ListXattrRequest {
            ino: ino.0,
            snapshot,
        };
        Ok(rpc!(self, list_xattr, req).await?.names)
    }

    /// Returns capacity and usage of volume `volume` (`VolumeId(0)`: the
    /// whole cluster).
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`] for an unknown volume.
    pub async fn statfs(&self, volume: VolumeId) -> Result<StatFsReply> {
        rpc!(
            self,
            stat_fs,
            StatFsRequest {
                volume_id: volume.0
            }
        )
        .await
    }

    // ------------------------------------------------------------ namespace mutations

    /// Creates directory `name` in `parent`.
    ///
    /// # Errors
    /// [`ErrorCode::Exists`], [`ErrorCode::NotFound`] (parent),
    /// [`ErrorCode::NotDir`], [`ErrorCode::Invalid`] /
    /// [`ErrorCode::NameTooLong`] for a bad name,
    /// [`ErrorCode::QuotaExceeded`].
    pub async fn mkdir(
        &self,
        parent: InodeId,
        name: &str,
        mode: u32,
        owner: Owner,
    ) -> Result<Entry> {
        check_name(name)?;
        let r = mutation!(
            self,
            mkdir,
            |rid| MkdirRequest {
                rid: Some(rid),
                parent: parent.0,
                name: name.to_string(),
                mode,
                uid: owner.uid,
                gid: owner.gid,
            },
            |r: &EntryReply| Changed::entry(parent.0, name, r.attr.as_ref())
        )
        .await?;
        let e = entry_of(r)?;
        self.inner.listings.made(e.attr.ino);
        Ok(e)
    }

    /// Creates regular file `name` in `parent`. With `exclusive` (O_EXCL)
    /// an existing name fails with [`ErrorCode::Exists`]; without it an
    /// existing regular file is returned as is. With `open_for_write` the
    /// file is registered as open for write in this client's session
    /// (close it with [`Self::close_file`]).
    ///
    /// # Errors
    /// As [`Self::mkdir`], plus [`ErrorCode::IsDir`] when a directory has
    /// the name.
    pub async fn create(
        &self,
        parent: InodeId,
        name: &str,
        mode: u32,
        owner: Owner,
        exclusive: bool,
        open_for_write: bool,
    ) -> Result<Entry> {
        check_name(name)?;
        // With the path cache, or a frontend's cache under a running lease
        // (the mount's feed grants it), meta covers what it makes with the
        // lease so a later stat or lookup of it is answered here.
        let lease_session = if self.inner.opts.cache_leases {
            self.start_path_leases();
            self.session_id().await?.0
        } else if self.inner.paths.live() {
            self.session_id().await?.0
        } else {
            0
        };
        let t = self.inner.paths.begin(self.mutations());
        let r = mutation!(
            self,
            create,
            |rid| CreateRequest {
                rid: Some(rid),
                parent: parent.0,
                name: name.to_string(),
                mode,
                uid: owner.uid,
                gid: owner.gid,
                exclusive,
                open_for_write,
                lease_session,
            },
            |r: &EntryReply| Changed::entry(parent.0, name, r.attr.as_ref())
        )
        .await?;
        if r.leased
            && let Some(a) = &r.attr
        {
            self.inner.paths.keep_own(t, Some((parent.0, name)), a);
        }
        entry_of(r)
    }

    /// Creates symlink `name` in `parent` pointing at `target` (stored as
    /// given, not resolved).
    ///
    /// # Errors
    /// As [`Self::mkdir`].
    pub async fn symlink(
        &self,
        parent: InodeId,
        name: &str,
        target: &str,
        owner: Owner,
    ) -> Result<Entry> {
        check_name(name)?;
        let r = mutation!(self, symlink, |rid| SymlinkRequest {
            rid: Some(rid),
            parent: parent.0,
            name: name.to_string(),
            target: target.to_string(),
            uid: owner.uid,
            gid: owner.gid,
        })
        .await?;
        entry_of(r)
    }

    /// Creates the special file `name` in `parent` (mknod(2)): a FIFO, a
    /// socket or a character or block device node with device number
    /// `rdev`. Special files are metadata only; the kernel serves their
    /// I/O itself.
    ///
    /// # Errors
    /// As [`Self::mkdir`]; [`ErrorCode::BadRequest`] for a `kind` that is
    /// not special.
    pub async fn mknod(
        &self,
        parent: InodeId,
        name: &str,
        kind: FileType,
        mode: u32,
        rdev: u32,
        owner: Owner,
    ) -> Result<Entry> {
        check_name(name)?;
        let r = mutation!(self, mknod, |rid| MknodRequest {
            rid: Some(rid),
            parent: parent.0,
            name: name.to_string(),
            kind: kind as i32,
            mode: mode & 0o7777,
            rdev,
            uid: owner.uid,
            gid: owner.gid,
        })
        .await?;
        entry_of(r)
    }

    /// Takes, changes or releases (`LockType::Unlock`) this session's lock
    /// of `lock.owner` on a byte range of `ino`, without waiting. Returns
    /// `None` when granted, or another owner's lock in the way (nothing
    /// changed). Locks are shared with every client of the cluster and
    /// go when this client's session ends.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`], [`ErrorCode::Invalid`] for a range that
    /// ends before it starts, or a retry failure.
    pub async fn set_lock(&self, ino: InodeId, lock: LockRequest) -> Result<Option<FileLock>> {
        let r = mutation!(self, set_lock, |rid| SetLockRequest {
            rid: Some(rid),
            ino: ino.0,
            owner: lock.owner,
            start: lock.start,
            end: lock.end,
            r#type: lock.kind as i32,
            pid: lock.pid,
        })
        .await?;
        Ok(if r.granted { None } else { r.conflict })
    }

    /// F_GETLK: returns another owner's lock that would refuse `lock`, or
    /// `None`. A read: no log entry.
    ///
    /// # Errors
    /// As [`Self::set_lock`].
    pub async fn get_lock(&self, ino: InodeId, lock: LockRequest) -> Result<Option<FileLock>> {
        let session_id = self.session_id().await?.0;
        let req = GetLockRequest {
            session_id,
            ino: ino.0,
            owner: lock.owner,
            start: lock.start,
            end: lock.end,
            r#type: lock.kind as i32,
        };
        let r = rpc!(self, get_lock, req).await?;
        Ok(if r.granted { None } else { r.conflict })
    }

    /// F_SETLKW: takes the lock, waiting while another owner holds a
    /// conflicting one. Waiting asks meta whether the lock is free (a read)
    /// every few milliseconds at first, then every `max_poll`, and tries
    /// again when it is; a lock freed and retaken in between only means
    /// another round. Meta keeps no waiters, so a waiter that goes away
    /// leaves nothing behind.
    ///
    /// `wake` is notified when a lock may have been freed: the caller's own
    /// unlocks (the FUSE mount's other processes), and other clients'
    /// that the change feed reports (`Changes.unlocked`). A waiter asks at
    /// once then, instead of at its next poll, so a process that unlocks
    /// and locks again in a loop does not starve a waiter, here or on
    /// another machine.
    ///
    /// # Errors
    /// As [`Self::set_lock`].
    pub async fn wait_lock(
        &self,
        ino: InodeId,
        lock: LockRequest,
        max_poll: Duration,
        wake: &tokio::sync::Notify,
    ) -> Result<()> {
        let mut pause = Duration::from_millis(2);
        loop {
            // Armed before the try: an unlock between the refusal and the
            // wait still wakes it.
            let woken = wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.set_lock(ino, lock).await?.is_none() {
                return Ok(());
            }
            loop {
                tokio::select! {
                    // Straight to the try: the unlocker's own next lock
                    // is on its way too.
                    () = &mut woken => break,
                    () = tokio::time::sleep(pause) => pause = (pause * 2).min(max_poll),
                }
                if self.get_lock(ino, lock).await?.is_none() {
                    break;
                }
            }
        }
    }

    /// Adds the hard link `new_name` in `new_parent` to inode `ino`.
    ///
    /// # Errors
    /// [`ErrorCode::Exists`], [`ErrorCode::NotPermitted`] for a directory,
    /// [`ErrorCode::CrossVolume`], [`ErrorCode::TooManyLinks`].
    pub async fn link(&self, ino: InodeId, new_parent: InodeId, new_name: &str) -> Result<Entry> {
        check_name(new_name)?;
        let r = mutation!(self, link, |rid| LinkRequest {
            rid: Some(rid),
            ino: ino.0,
            new_parent: new_parent.0,
            new_name: new_name.to_string(),
        })
        .await?;
        entry_of(r)
    }

    /// Removes the non-directory entry `name` from `parent`.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`], [`ErrorCode::IsDir`].
    pub async fn unlink(&self, parent: InodeId, name: &str) -> Result<UnlinkReply> {
        self.unlink_inner(parent, name, false).await
    }

    /// As [`Self::unlink`], for a file this client's session holds open:
    /// meta keeps its data until the session closes it (DESIGN §9.9).
    ///
    /// # Errors
    /// As [`Self::unlink`].
    pub async fn unlink_held_open(&self, parent: InodeId, name: &str) -> Result<UnlinkReply> {
        self.unlink_inner(parent, name, true).await
    }

    async fn unlink_inner(
        &self,
        parent: InodeId,
        name: &str,
        held_open: bool,
    ) -> Result<UnlinkReply> {
        check_name(name)?;
        mutation!(
            self,
            unlink,
            |rid| UnlinkRequest {
                rid: Some(rid),
                parent: parent.0,
                name: name.to_string(),
                held_open,
            },
            |r: &UnlinkReply| Some(Changed::new([parent.0, r.ino], &[(parent.0, name)]))
        )
        .await
    }

    /// Removes directory `name` of `parent` (inode `ino`, shown as `path` in
    /// errors) and everything under it, depth first: files as they are
    /// listed, each directory once it is empty. With `missing_ok`, entries
    /// someone else removed meanwhile are not errors.
    ///
    /// # Errors
    /// The first failure, with the path it happened at.
    pub async fn remove_tree(
        &self,
        parent: InodeId,
        name: &str,
        ino: InodeId,
        path: &str,
        missing_ok: bool,
    ) -> std::result::Result<(), (String, CairnStatus)> {
        struct Dir {
            parent: InodeId,
            name: String,
            ino: InodeId,
            path: String,
            listed: bool,
        }
        let missing = |r: Result<()>, at: &str| match r {
            Err(e) if missing_ok && e.code == ErrorCode::NotFound => Ok(()),
            r => r.map_err(|e| (at.to_string(), e)),
        };
        let mut stack = vec![Dir {
            parent,
            name: name.to_string(),
            ino,
            path: path.to_string(),
            listed: false,
        }];
        while let Some(mut d) = stack.pop() {
            if d.listed {
                missing(self.rmdir(d.parent, &d.name).await.map(drop), &d.path)?;
                continue;
            }
            let entries = match self.readdir_all(d.ino).await {
                Ok(e) => e,
                Err(e) => {
                    missing(Err(e), &d.path)?;
                    continue;
                }
            };
            d.listed = true;
            let (dir_ino, dir_path) = (d.ino, d.path.clone());
            stack.push(d);
            for e in entries {
                let child = format!("{dir_path}/{}", e.name);
                if e.kind() == FileType::Directory {
                    stack.push(Dir {
                        parent: dir_ino,
                        name: e.name,
                        ino: InodeId(e.ino),
                        path: child,
                        listed: false,
                    });
                } else {
                    missing(self.unlink(dir_ino, &e.name).await.map(drop), &child)?;
                }
            }
        }
        Ok(())
    }

    /// Removes the empty directory `name` from `parent`.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`], [`ErrorCode::NotDir`],
    /// [`ErrorCode::NotEmpty`].
    pub async fn rmdir(&self, parent: InodeId, name: &str) -> Result<UnlinkReply> {
        check_name(name)?;
        mutation!(
            self,
            rmdir,
            |rid| RmdirRequest {
                rid: Some(rid),
                parent: parent.0,
                name: name.to_string(),
            },
            |r: &UnlinkReply| Some(Changed::new([parent.0, r.ino], &[(parent.0, name)]))
        )
        .await
    }

    /// Renames `parent/name` to `new_parent/new_name` atomically, replacing
    /// an existing target as rename(2) does unless `flags` say otherwise.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`], [`ErrorCode::Exists`] (noreplace),
    /// [`ErrorCode::NotEmpty`], [`ErrorCode::IsDir`] / [`ErrorCode::NotDir`]
    /// for mismatched kinds, [`ErrorCode::Invalid`] for a directory moved
    /// into itself, [`ErrorCode::CrossVolume`].
    pub async fn rename(
        &self,
        parent: InodeId,
        name: &str,
        new_parent: InodeId,
        new_name: &str,
        flags: RenameFlags,
    ) -> Result<RenameReply> {
        check_name(name)?;
        check_name(new_name)?;
        mutation!(
            self,
            rename,
            |rid| RenameRequest {
                rid: Some(rid),
                parent: parent.0,
                name: name.to_string(),
                new_parent: new_parent.0,
                new_name: new_name.to_string(),
                noreplace: flags.noreplace,
                exchange: flags.exchange,
            },
            |r: &RenameReply| {
                // An exchange moves two inodes: everything goes.
                if flags.exchange {
                    return None;
                }
                let mut inos = vec![parent.0, new_parent.0, r.attr.as_ref()?.ino];
                if r.replaced_ino != 0 {
                    inos.push(r.replaced_ino);
                }
                Some(Changed::new(
                    inos,
                    &[(parent.0, name), (new_parent.0, new_name)],
                ))
            }
        )
        .await
    }

    /// Changes attributes of `ino` and returns them after the change.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`], [`ErrorCode::IsDir`] for a size on a
    /// directory, [`ErrorCode::QuotaExceeded`].
    pub async fn setattr(&self, ino: InodeId, changes: SetAttrChanges) -> Result<Attr> {
        let r = mutation!(
            self,
            set_attr,
            |rid| SetAttrRequest {
                rid: Some(rid),
                ino: ino.0,
                mode: changes.mode,
                uid: changes.uid,
                gid: changes.gid,
                size: changes.size,
                atime: changes.atime.map(SetTime::to_proto),
                mtime: changes.mtime.map(SetTime::to_proto),
            },
            |_| Some(Changed::ino(ino.0))
        )
        .await?;
        need_attr(r.attr)
    }

    /// Sets extended attribute `name` of `ino` to `value`.
    ///
    /// # Errors
    /// [`ErrorCode::Exists`] / [`ErrorCode::NoData`] per `mode`,
    /// [`ErrorCode::TooBig`].
    pub async fn setxattr(
        &self,
        ino: InodeId,
        name: &str,
        value: &[u8],
        mode: XattrMode,
    ) -> Result<()> {
        mutation!(self, set_xattr, |rid| SetXattrRequest {
            rid: Some(rid),
            ino: ino.0,
            name: name.to_string(),
            value: value.to_vec(),
            create_only: mode == XattrMode::CreateOnly,
            replace_only: mode == XattrMode::ReplaceOnly,
        })
        .await
        .map(|Empty {}| ())
    }

    /// Removes extended attribute `name` of `ino`.
    ///
    /// # Errors
    /// [`ErrorCode::NoData`] when it is not set.
    pub async fn removexattr(&self, ino: InodeId, name: &str) -> Result<()> {
        mutation!(self, remove_xattr, |rid| RemoveXattrRequest {
            rid: Some(rid),
            ino: ino.0,
            name: name.to_string(),
        })
        .await
        .map(|Empty {}| ())
    }

    // ------------------------------------------------------------ file lifecycle

    /// Opens `ino`; a write open is registered in this client's session so
    /// the file's data outlives an unlink until [`Self::close_file`].
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`], [`ErrorCode::IsDir`].
    pub async fn open_file(&self, ino: InodeId, write: bool) -> Result<Attr> {
        if write {
            self.inner.releases.cancel(ino).await;
        }
        let r = mutation!(
            self,
            open,
            |rid| OpenRequest {
                rid: Some(rid),
                ino: ino.0,
                write,
            },
            |_| Some(Changed::ino(ino.0))
        )
        .await?;
        need_attr(r.attr)
    }

    /// Closes `ino` in this client's session; a writer passes the
    /// `(length, truncate_gen)` it observed, `written_extent`: the end of
    /// its furthest write when that lies beyond the length (a failed write
    /// may have reached some replicas), else 0, and `written`: the
    /// `(logical, stored)` bytes it wrote to a file of a compressed volume
    /// (before compression, and as sent per replica in whole 4 KiB blocks;
    /// meta adds them to the volume's counters once, even when the close is
    /// retried), else `(0, 0)`. Returns the attributes after the close, or
    /// `None` when the close freed an unlinked file.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`], or a retry failure.
    pub async fn close_file(
        &self,
        ino: InodeId,
        length: Option<(u64, u64)>,
        written_extent: u64,
        written: (u64, u64),
    ) -> Result<Option<Attr>> {
        let t = self.inner.paths.begin_own(self.mutations(), ino.0);
        let r = mutation!(
            self,
            close,
            |rid| CloseRequest {
                rid: Some(rid),
                ino: ino.0,
                has_length: length.is_some(),
                length: length.map_or(0, |l| l.0),
                truncate_gen: length.map_or(0, |l| l.1),
                written_extent,
                logical_written: written.0,
                stored_written: written.1,
            },
            |_| Some(Changed::ino(ino.0))
        )
        .await?;
        if let (Some(t), Some(a)) = (t, &r.attr) {
            self.inner.paths.keep_own(t, None, a);
        }
        Ok(r.attr)
    }

    /// How many of this client's mutations have ended (successfully or
    /// not) so far. A cache of meta's answers that outlives a mutation of
    /// its own client must drop what it holds when this moves: meta does
    /// not send a client its own changes (see `cairn_meta::changes`).
    pub fn mutations(&self) -> u64 {
        self.inner.mutations.load(Ordering::Acquire)
    }

    /// Subscribes to the leader's change feed: namespace changes made by
    /// other clients, for dropping what this client cached of them, and
    /// the client's cache lease. Returns the sender of this stream's
    /// renewals and acknowledgements (its first message, naming the
    /// session, is already sent) and the stream of changes. The first
    /// change is a reset; the stream ends when the leader steps down
    /// (subscribe again: the next one starts with a reset too).
    ///
    /// # Errors
    /// No replica accepted the subscription (none leads, or none answers).
    pub async fn watch_changes(
        &self,
    ) -> Result<(tokio::sync::mpsc::Sender<WatchChangesRequest>, ChangeStream)> {
        let session_id = self.session_id().await?.0;
        let mut idx = self.inner.leader.load(Ordering::Relaxed);
        let mut last = None;
        let tries = 2 * self.peers().book.len();
        for _ in 0..tries {
            let (addr, Link { mut grpc, .. }) = self.reach(idx);
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            let hello = WatchChangesRequest {
                session_id,
                ..Default::default()
            };
            // A new channel has room for it.
            let _ = tx.try_send(hello);
            // A replica answers a subscription at once; one that does not
            // (frozen, or cut off with its connection still open) would
            // hold it until the connection's keep-alive fails, seconds
            // during which the client caches nothing.
            let r = tokio::time::timeout(
                feed::FEED_SILENCE,
                grpc.watch_changes(tokio_stream::wrappers::ReceiverStream::new(rx)),
            )
            .await;
            match r {
                Ok(Ok(s)) => {
                    self.inner.leader.store(idx, Ordering::Relaxed);
                    return Ok((tx, s.into_inner()));
                }
                Err(_) => {
                    idx = self.next_index(idx);
                    last = Some(format!("{addr}: no answer within {:?}", feed::FEED_SILENCE));
                }
                Ok(Err(status)) => {
                    let e = CairnStatus::from(status);
                    idx = match e.leader_addr.as_deref().map(|a| self.index_of(a)) {
                        Some(Ok(i)) if e.code == ErrorCode::NotLeader => i,
                        _ => self.next_index(idx),
                    };
                    last = Some(format!("{addr}: {}", e.message));
                }
            }
        }
        Err(CairnStatus::new(
            ErrorCode::Unavailable,
            format!(
                "no meta replica serves the change feed (last: {})",
                last.unwrap_or_default()
            ),
        ))
    }

    /// Releases this client's write open of `ino`, through which nothing
    /// was written, in the background: within `RELEASE_DELAY` (100 ms), together
    /// with other such releases (see `releases.rs`). A later write open of
    /// the same file by this client is never undone by it.
    pub async fn release_later(&self, ino: InodeId) {
        if !self.inner.releaser_started.swap(true, Ordering::AcqRel) {
            let weak = Arc::downgrade(&self.inner);
            let releases = Arc::clone(&self.inner.releases);
            let stop = self.inner.stop.subscribe();
            tokio::spawn(releases::release_loop(weak, releases, stop));
        }
        self.inner.releases.push(ino).await;
    }

    /// Reports the length a writer observed (fsync); ignored by meta when
    /// `truncate_gen` is older than the file's or the length is not larger.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`], [`ErrorCode::IsDir`],
    /// [`ErrorCode::QuotaExceeded`].
    pub async fn report_length(
        &self,
        ino: InodeId,
        length: u64,
        truncate_gen: u64,
    ) -> Result<Attr> {
        let t = self.inner.paths.begin_own(self.mutations(), ino.0);
        let r = mutation!(
            self,
            report_length,
            |rid| ReportLengthRequest {
                rid: Some(rid),
                ino: ino.0,
                length,
                truncate_gen,
            },
            |_| Some(Changed::ino(ino.0))
        )
        .await?;
        let a = need_attr(r.attr)?;
        if let Some(t) = t {
            self.inner.paths.keep_own(t, None, &a);
        }
        Ok(a)
    }

    // ------------------------------------------------------------ volumes and chains

    /// Creates volume `name` (a top-level directory `/name`) with `policy`.
    /// An encrypted volume (`policy.encrypted`) needs the check value of its
    /// first key in `policy.key_checks` (one entry, version 1); the key
    /// itself is never sent.
    ///
    /// # Errors
    /// [`ErrorCode::Exists`], [`ErrorCode::Invalid`] for a bad policy
    /// (including an encrypted one without its key check).
    pub async fn create_volume(&self, name: &str, policy: VolumePolicy) -> Result<Volume> {
        check_name(name)?;
        let r = mutation!(self, create_volume, |rid| CreateVolumeRequest {
            rid: Some(rid),
            name: name.to_string(),
            policy: Some(policy.clone()),
        })
        .await?;
        r.volume.ok_or_else(|| missing("the volume"))
    }

    /// Adds a key version (the current one + 1) to encrypted volume `name`,
    /// whose key has check value `check`: files created afterwards are
    /// sealed under it, files created before keep their version. Returns
    /// the volume with its new `key_version` and `key_checks`.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`] (no such volume), [`ErrorCode::Invalid`]
    /// (the volume is not encrypted, or `check` is already one of its
    /// versions' check values).
    pub async fn rotate_volume_key(&self, name: &str, check: [u8; 16]) -> Result<Volume> {
        check_name(name)?;
        let r = mutation!(self, rotate_volume_key, |rid| RotateVolumeKeyRequest {
            rid: Some(rid),
            name: name.to_string(),
            check: check.to_vec(),
        })
        .await?;
        r.volume.ok_or_else(|| missing("the volume"))
    }

    /// Sets volume `name`'s quotas: `None` keeps one, 0 means unlimited.
    /// Returns the volume as it is now.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`] (no such volume), or a retry failure.
    pub async fn set_volume_quota(
        &self,
        name: &str,
        quota_bytes: Option<u64>,
        quota_inodes: Option<u64>,
    ) -> Result<Volume> {
        check_name(name)?;
        let r = mutation!(self, set_volume_quota, |rid| SetVolumeQuotaRequest {
            rid: Some(rid),
            name: name.to_string(),
            quota_bytes,
            quota_inodes,
        })
        .await?;
        r.volume.ok_or_else(|| missing("the volume"))
    }

    /// Sets directory `ino`'s quotas (`None` keeps one, 0 means unlimited),
    /// making it a quota directory if it is not one (it must then be
    /// empty, not a volume's root, not under another quota directory).
    /// Returns the quota as it is now.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`], [`ErrorCode::NotDir`],
    /// [`ErrorCode::NotEmpty`], [`ErrorCode::Invalid`] (a volume's root, a
    /// nested quota), or a retry failure.
    pub async fn set_dir_quota(
        &self,
        ino: InodeId,
        quota_bytes: Option<u64>,
        quota_inodes: Option<u64>,
    ) -> Result<DirQuota> {
        let r = mutation!(self, set_dir_quota, |rid| SetDirQuotaRequest {
            rid: Some(rid),
            ino: ino.0,
            quota_bytes,
            quota_inodes,
        })
        .await?;
        r.quota.ok_or_else(|| missing("the directory quota"))
    }

    /// The quota of directory `ino`, or of the quota directory it is under
    /// (`None`: under none).
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`], or a retry failure.
    pub async fn dir_quota(&self, ino: InodeId) -> Result<Option<DirQuota>> {
        let req = GetDirQuotaRequest { ino: ino.0 };
        Ok(rpc!(self, get_dir_quota, req).await?.quota)
    }

    /// The statfs figures of a directory under `q`: [`Self::statfs`] of
    /// its volume narrowed to the directory quota's limits and use (what
    /// `df` shows in a mount of that directory, and the CSI volume stats of
    /// a volume carved out of a shared one): the directory's use, and its
    /// limits where it has them (a limit of 0 keeps the volume's total and
    /// free figures).
    pub fn narrow_statfs(s: &mut StatFsReply, q: &DirQuota) {
        s.used_bytes = q.used_bytes;
        s.files = q.used_inodes;
        if q.quota_bytes != 0 {
            s.total_bytes = q.quota_bytes;
            s.free_bytes = s.free_bytes.min(q.quota_bytes.saturating_sub(q.used_bytes));
        }
        if q.quota_inodes != 0 {
            s.files_free = s
                .files_free
                .min(q.quota_inodes.saturating_sub(q.used_inodes));
        }
    }

    /// Takes snapshot `name` of volume `volume` (issue 17); the same name
    /// again returns the existing snapshot.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`] (no such volume), [`ErrorCode::Invalid`] (a
    /// bad name), [`ErrorCode::Exists`] (the name is being deleted),
    /// [`ErrorCode::NoSpace`] (the volume keeps as many as it may).
    pub async fn create_snapshot(&self, volume: &str, name: &str) -> Result<Snapshot> {
        check_name(volume)?;
        let r = mutation!(self, create_snapshot, |rid| CreateSnapshotRequest {
            rid: Some(rid),
            volume: volume.to_string(),
            name: name.to_string(),
        })
        .await?;
        r.snapshot.ok_or_else(|| missing("the snapshot"))
    }

    /// Deletes snapshot `name` of volume `volume`.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`] (no such volume or snapshot).
    pub async fn delete_snapshot(&self, volume: &str, name: &str) -> Result<Snapshot> {
        check_name(volume)?;
        let r = mutation!(self, delete_snapshot, |rid| DeleteSnapshotRequest {
            rid: Some(rid),
            volume: volume.to_string(),
            name: name.to_string(),
        })
        .await?;
        r.snapshot.ok_or_else(|| missing("the snapshot"))
    }

    /// Starts restoring snapshot `snapshot` of volume `volume` into a new
    /// writable volume `to` (its tree is copied in the background; see
    /// [`Self::restore_status`]).
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`] (no such volume or snapshot),
    /// [`ErrorCode::Exists`] (`to` is taken).
    pub async fn restore_snapshot(
        &self,
        volume: &str,
        snapshot: &str,
        to: &str,
    ) -> Result<RestoreReply> {
        check_name(volume)?;
        check_name(to)?;
        mutation!(self, restore_snapshot, |rid| RestoreSnapshotRequest {
            rid: Some(rid),
            volume: volume.to_string(),
            snapshot: snapshot.to_string(),
            to: to.to_string(),
        })
        .await
    }

    /// Returns how far the restore into volume `volume` has come.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`] when `volume` was not restored from a
    /// snapshot.
    pub async fn restore_status(&self, volume: &str) -> Result<RestoreReply> {
        check_name(volume)?;
        let req = RestoreStatusRequest {
            volume: volume.to_string(),
        };
        rpc!(self, restore_status, req).await
    }

    /// Claims the copy of a restored file's data from its snapshot (or,
    /// with `discard`, drops that data: the file becomes empty). Returns
    /// whether this session must copy it, and the file's attributes.
    ///
    /// # Errors
    /// [`ErrorCode::Unavailable`] while another client copies it.
    pub async fn copy_up(&self, ino: InodeId, discard: bool) -> Result<(bool, Attr)> {
        let r = mutation!(self, copy_up, |rid| CopyUpRequest {
            rid: Some(rid),
            ino: ino.0,
            discard,
        })
        .await?;
        Ok((r.copy, need_attr(r.attr)?))
    }

    /// Tells meta this session copied restored file `ino`'s data into its
    /// own object: the file no longer reads its snapshot.
    ///
    /// # Errors
    /// [`ErrorCode::StaleSequence`] when the claim lapsed and another
    /// client took it.
    pub async fn copy_done(&self, ino: InodeId) -> Result<Attr> {
        let r = mutation!(self, copy_done, |rid| CopyDoneRequest {
            rid: Some(rid),
            ino: ino.0,
        })
        .await?;
        need_attr(r.attr)
    }

    /// Returns volume `volume`'s snapshots, oldest first.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`] (no such volume).
    pub async fn list_snapshots(&self, volume: &str) -> Result<Vec<Snapshot>> {
        check_name(volume)?;
        let req = ListSnapshotsRequest {
            volume: volume.to_string(),
        };
        Ok(rpc!(self, list_snapshots, req).await?.snapshots)
    }

    /// Returns volume `volume`'s ready snapshot `name`.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`]; [`ErrorCode::Unavailable`] while it is not
    /// ready (chunkservers have not all fenced its seq yet).
    pub async fn ready_snapshot(&self, volume: &str, name: &str) -> Result<Snapshot> {
        let all = self.list_snapshots(volume).await?;
        let Some(s) = all.into_iter().find(|s| s.name == name) else {
            return Err(CairnStatus::new(
                ErrorCode::NotFound,
                format!("volume {volume} has no snapshot {name}"),
            ));
        };
        if !s.ready {
            return Err(CairnStatus::new(
                ErrorCode::Unavailable,
                format!(
                    "snapshot {name} of volume {volume} is not ready: some chunkservers have \
                     not fenced its seq yet"
                ),
            ));
        }
        Ok(s)
    }

    /// Resolves `sp` (the parsed `path`) in its snapshot's tree;
    /// `/VOLUME/.snapshots` itself answers the volume root's attributes as
    /// the live tree has them (and a default snapshot).
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`], [`ErrorCode::NotDir`], as
    /// [`Self::ready_snapshot`].
    pub async fn resolve_in_snapshot(
        &self,
        sp: &SnapshotPath,
        path: &str,
    ) -> Result<(Snapshot, Attr)> {
        let root = self.resolve(&format!("/{}", sp.volume)).await?;
        let Some(name) = &sp.snapshot else {
            return Ok((Snapshot::default(), root));
        };
        let snap = self.ready_snapshot(&sp.volume, name).await?;
        let at = Some(SnapshotRef {
            volume_id: snap.volume_id,
            seq: snap.seq,
        });
        let mut cur = self.getattr_at(at, InodeId(root.ino)).await?;
        for (i, part) in sp.rest.iter().enumerate() {
            if cur.kind != FileType::Directory as i32 {
                return Err(CairnStatus::new(
                    ErrorCode::NotDir,
                    format!("{path}: component {} is not a directory", i + 1),
                ));
            }
            cur = self
                .lookup_at(at, InodeId(cur.ino), part)
                .await
                .map_err(|e| {
                    if e.code == ErrorCode::NotFound {
                        CairnStatus::new(e.code, format!("{path} does not exist"))
                    } else {
                        e
                    }
                })?;
        }
        Ok((snap, cur))
    }

    /// Lists `/VOLUME/.snapshots` (one directory per ready snapshot, with
    /// its root's attributes) or a directory inside a snapshot, with each
    /// entry's attributes.
    ///
    /// # Errors
    /// As [`Self::resolve_in_snapshot`].
    pub async fn read_snapshot_dir(&self, sp: &SnapshotPath, path: &str) -> Result<Vec<DirEntry>> {
        if sp.snapshot.is_none() {
            let root = self.resolve(&format!("/{}", sp.volume)).await?;
            let mut out = Vec::new();
            for s in self.list_snapshots(&sp.volume).await? {
                if !s.ready {
                    continue;
                }
                let at = Some(SnapshotRef {
                    volume_id: s.volume_id,
                    seq: s.seq,
                });
                let attr = self.getattr_at(at, InodeId(root.ino)).await?;
                out.push(DirEntry {
                    name: s.name,
                    ino: attr.ino,
                    kind: FileType::Directory as i32,
                    attr: Some(attr),
                });
            }
            return Ok(out);
        }
        let (snap, a) = self.resolve_in_snapshot(sp, path).await?;
        if a.kind != FileType::Directory as i32 {
            return Err(CairnStatus::new(
                ErrorCode::NotDir,
                format!("{path} is not a directory"),
            ));
        }
        let at = Some(SnapshotRef {
            volume_id: snap.volume_id,
            seq: snap.seq,
        });
        self.readdir_all_plus_at(at, InodeId(a.ino)).await
    }

    /// Returns every volume.
    ///
    /// # Errors
    /// A retry failure.
    pub async fn list_volumes(&self) -> Result<Vec<Volume>> {
        Ok(rpc!(self, list_volumes, Empty {}).await?.volumes)
    }

    /// Returns the chain tables and the chunkservers they point at.
    ///
    /// # Errors
    /// A retry failure.
    pub async fn get_chains(&self) -> Result<ChainTables> {
        rpc!(self, get_chains, Empty {}).await
    }

    // ------------------------------------------------------------ cluster administration

    /// Returns the Raft status of whichever replica answers first (the
    /// leader when known). Matched indexes and reachability are filled only
    /// by the leader; see [`Self::leader_status`].
    ///
    /// # Errors
    /// A retry failure.
    pub async fn status(&self) -> Result<StatusReply> {
        rpc!(self, status, Empty {}).await
    }

    /// Returns the status as the leader sees it: asks any replica, then the
    /// leader it names. Falls back to the first answer when the leader does
    /// not answer.
    ///
    /// # Errors
    /// A retry failure of the first request.
    pub async fn leader_status(&self) -> Result<StatusReply> {
        let s = self.status().await?;
        if s.state.eq_ignore_ascii_case("leader") || s.leader_id == 0 || s.leader_addr.is_empty() {
            return Ok(s);
        }
        match self.status_at(&s.leader_addr).await {
            Ok(l) => Ok(l),
            Err(e) => {
                debug!(leader = %s.leader_addr, error = %e, "leader did not answer status");
                Ok(s)
            }
        }
    }

    /// Returns the status of the replica at `addr`, asked once, without
    /// retries or redirection.
    ///
    /// # Errors
    /// The replica's error, [`ErrorCode::Unavailable`] when it cannot be
    /// reached, [`ErrorCode::TimedOut`].
    pub async fn status_at(&self, addr: &str) -> Result<StatusReply> {
        self.call_at(addr, Empty {}, |l, r| async move {
            let mut c = l.grpc;
            c.status(r).await
        })
        .await
    }

    /// Asks the cluster to add the replica at `addr` as a learner; returns
    /// the node id and cluster id it was given.
    ///
    /// # Errors
    /// [`ErrorCode::Invalid`] for a bad address, or a retry failure.
    pub async fn join(&self, addr: &str) -> Result<JoinReply> {
        let req = JoinRequest {
            addr: addr.to_string(),
        };
        rpc!(self, join, req).await
    }

    /// Promotes learner `node` to voter; returns the status afterwards.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`] for an unknown node, or a retry failure.
    pub async fn promote(&self, node: NodeId) -> Result<StatusReply> {
        rpc!(self, promote, PromoteRequest { node_id: node.0 }).await
    }

    /// Removes replica `node` from the cluster; returns the status
    /// afterwards.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`], [`ErrorCode::Invalid`] when removing it
    /// would lose the quorum, or a retry failure.
    pub async fn remove_member(&self, node: NodeId) -> Result<StatusReply> {
        rpc!(self, remove_member, RemoveMemberRequest { node_id: node.0 }).await
    }

    /// Puts chunkserver `chunkserver` in maintenance for `duration` (its
    /// targets leave their chains at once and are not replaced), or lifts
    /// the window when `duration` is zero.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`] for an unknown chunkserver, or a retry
    /// failure.
    pub async fn set_maintenance(&self, chunkserver: u64, duration: Duration) -> Result<()> {
        let duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        rpc!(
            self,
            set_maintenance,
            SetMaintenanceRequest {
                chunkserver_id: chunkserver,
                duration_ms,
            }
        )
        .await
        .map(|_| ())
    }
}

/// Renews the session every third of its timeout until `stop` is set or
/// the client is gone (only a weak reference is held between renewals).
async fn renew_loop(weak: Weak<Inner>, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        let period = {
            let Some(inner) = weak.upgrade() else {
                return;
            };
            let client = MetaClient { inner };
            match client.current_session() {
                Some(s) => s.renew_period(),
                None => return,
            }
        };
        tokio::select! {
            // `stop` only ever changes to true; a closed channel means the
            // client is gone. Either way: stop.
            _ = stop.changed() => return,
            () = tokio::time::sleep(period) => {}
        }
        let Some(inner) = weak.upgrade() else {
            return;
        };
        MetaClient { inner }.renew_once().await;
    }
}

pub use cairn_proto::names::SNAPSHOTS_DIR;

/// A path at or under `/VOLUME/.snapshots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPath {
    /// The volume.
    pub volume: String,
    /// The snapshot; `None`: `.snapshots` itself.
    pub snapshot: Option<String>,
    /// The components under the snapshot's root.
    pub rest: Vec<String>,
}

impl SnapshotPath {
    /// Parses `path`; `None` when it is not at or under a volume's
    /// `.snapshots`.
    pub fn parse(path: &str) -> Option<SnapshotPath> {
        let mut parts = path.split('/').filter(|p| !p.is_empty() && *p != ".");
        let volume = parts.next()?;
        if parts.next()? != SNAPSHOTS_DIR {
            return None;
        }
        Some(SnapshotPath {
            volume: volume.to_string(),
            snapshot: parts.next().map(str::to_string),
            rest: parts.map(str::to_string).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_convert_with_transport_resets_retryable() {
        let cairn = CairnStatus::new(ErrorCode::NotEmpty, "directory /a is not empty");
        assert_eq!(status_to_error(&cairn.to_status()), cairn);
        let reset = tonic::Status::internal("h2 protocol error: stream reset");
        assert_eq!(status_to_error(&reset).code, ErrorCode::Unavailable);
        let other = tonic::Status::internal("failed to decode the reply");
        assert_eq!(status_to_error(&other).code, ErrorCode::Internal);
        // A Cairn INTERNAL is never reinterpreted, whatever its text.
        let cairn = CairnStatus::new(ErrorCode::Internal, "h2 protocol error in the store");
        assert_eq!(
            status_to_error(&cairn.to_status()).code,
            ErrorCode::Internal
        );
    }

    #[test]
    fn set_time_maps_to_utime_now_or_a_time() {
        assert_eq!(SetTime::Now.to_proto(), Timespec { now: true, ns: 0 });
        assert_eq!(SetTime::At(-5).to_proto(), Timespec { now: false, ns: -5 });
    }
}
