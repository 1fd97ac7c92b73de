//! A shard's data-plane server: chain replication with CRAQ reads
//! (DESIGN §5, §6).
//!
//! One [`Shard`] runs in one glommio executor, owns the chunks with
//! `shard_of(chunk) == k` on this chunkserver's target, and listens on its
//! own port, so a request is decoded, served and answered on one core.
//! Connections are pipelined: every request runs as its own task and its
//! reply goes out when ready, matched by request id.
//!
//! # Checks on every request
//!
//! 1. **Lease**: a chunkserver that has not reached meta for half the
//!    heartbeat timeout answers UNAVAILABLE (invariant 8).
//! 2. **Chain version**: older than ours → STALE_CHAIN_VERSION, newer →
//!    NEWER_CHAIN_VERSION (our table is behind; the watch stream catches
//!    up). The client refreshes on either (invariant 5).
//! 3. **Membership and role**: the target must be in the chain and not
//!    offline; a Write goes to the head only; a Read to a serving member
//!    only (a syncing replica never serves reads).
//! 4. **Shard**: the chunk must hash to this shard.
//!
//! # Writes
//!
//! The head takes the chunk's lock, so writes to a chunk are serialized and
//! versions are assigned as `committed + 1`. It first settles any version
//! left pending by an earlier failed forward or a crash (reading it back
//! with [`ShardStore::read_pending`] and forwarding it again), then
//! persists the new version locally (data fdatasync + metadata flush,
//! group-committed) *while* forwarding it to its successor, and once both
//! are done commits locally and replies. Every replica does the same with
//! the head's version; the tail stores and commits in one step
//! ([`ShardStore::write_committed`]). A reply therefore travels back only
//! after every replica of the current chain has the data on stable
//! storage, and the commit flows back with it — no separate commit round.
//! A three-replica write costs about one sync of latency instead of three
//! in series (issue 14). The payload's CRCs are checked before forwarding,
//! so a bad payload never reaches a successor.
//!
//! # Diverged replicas
//!
//! Forwarding before the local copy is durable opens one case that
//! persisting first did not have: the successors hold a version this
//! replica does not. Left alone, the head would give that version's number
//! to the next write, and the successors would answer "already here" for
//! other bytes. Two paths lead there, and both end in the replica copying
//! the chunk from the tail:
//!
//! * **The local store fails** (an I/O error) after the forward started:
//!   the replica marks the chunk *diverged* in memory. It serves no read of
//!   it (PENDING: the client reads another replica), and its next mutation
//!   of the chunk first replaces its copy with the tail's committed version
//!   ([`ShardStore::install_piece`], which drops every version of its own)
//!   and forgets the retries remembered for it.
//! * **The replica crashes** after forwarding, before storing: the memory
//!   is gone. A replica answering a forward of version `v` that is its own
//!   committed version compares the bytes: a head settling a version whose
//!   commit it lost sends the same bytes; a head that reused the number
//!   does not, and gets [`ErrorCode::Diverged`]. The head (and any replica
//!   that relayed the answer) then copies the chunk from the tail under
//!   the lock it holds, and the client's retry gets the next version.
//!
//! A replica restarted after such a crash has no memory of the lost
//! version, so before its next write it would read the previous version
//! of the chunk while the tail serves the newer (unacknowledged) one. A
//! start without the clean-stop mark therefore checks every chunk against
//! its tail before trusting it for reads ([`verify`]). No acknowledged
//! write is affected in any of these cases: it is on every replica before
//! the reply.
//!
//! Non-tail replicas commit without waiting for the metadata flush: a
//! crash can lose only the commit record, leaving the version pending,
//! and a pending version under a committed one at the tail is committed
//! again lazily (below). The tail's commit is durable, since the tail's
//! committed version is what CRAQ reads trust.
//!
//! **A non-tail replica commits after its reply.** Once the successors
//! answered and the local copy is durable, the write is on stable storage
//! everywhere and committed at the tail: the client may be told. The
//! local commit (a metadata update on the shard's thread that needs
//! nothing from the other replicas; as a sled batch it rolled sled's I/O
//! buffer and could wait on a buffer write of sled's I/O threads, and perf
//! and strace put it on the reply path of every replicated write, twice in
//! a 3-replica chain) runs right after the reply goes out, in the
//! request's task, still
//! holding the chunk's lock (the next write to the chunk waits for it, as
//! it waited before) and still counted in flight for resync. Reads and
//! Stats of a chunk whose commit is under way wait for it
//! ([`Shard::committed_here`]) rather than ask the tail. A commit that
//! fails, or never runs (the process stops first), leaves the version
//! pending here, the state a crash after a non-durable commit already
//! leaves: reads ask the tail, the next write settles it.
//!
//! A retry carries the same (client id, sequence): the head remembers the
//! last one per chunk and answers a retry of an applied write with its
//! version instead of applying it again, and refuses an older sequence, so
//! a late retry can never overwrite a newer write. The memory is per
//! process; after a head restart a retry is applied again (same bytes at
//! the same offset, so only a newer write by *another* client in between
//! could be overwritten — the window DESIGN §11 leaves to close-to-open).
//!
//! Members that are syncing (back after an outage, at the chain's tail)
//! take the writes they can build on what they hold; a write to a chunk
//! they missed versions of is acknowledged without storing it, since they
//! serve no reads and such a chunk must be copied whole when the target is
//! resynced. So a returning chunkserver never blocks writes.
//!
//! # Reads (CRAQ)
//!
//! A serving replica reads its committed version when no pending version
//! touches the range. When one does, it asks the tail (Stat) which version
//! is committed: if the tail is ahead, the replica commits up to it (the
//! commit record it lost or has not received yet) and reads; if the tail
//! agrees, the committed version is current. If the tail cannot be asked,
//! the replica answers PENDING and the client reads elsewhere. The same
//! question goes to the tail for a range this replica has forwarded but
//! not stored yet (stores and forwards run at once, so the tail may serve
//! the new version first) and for a chunk not yet checked after an unclean
//! start. When the tail holds a version this replica has not stored yet,
//! the answer is PENDING too, never the older bytes. Every stored block is
//! verified against its CRC on read; a corrupt block is never returned, is
//! counted, and is reported to meta.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_proto::ErrorCode;
use cairn_proto::frame::{Flags, Frame, FrameError, Header, Opcode, SEAL_LEN, SegmentCrcs};
use cairn_proto::ids::{ChainId, ChainVersion, ChunkId};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;

use crate::chain::{ChainView, Endpoint, MemberState};
use crate::control::ControlState;
use crate::failpoint;
use crate::locks::{ChunkLockGuard, ChunkLocks};
use crate::metrics::Metrics;
use crate::peer::{PeerError, PeerPool};
use crate::store::{
    NO_SEAL, Notify, ReadMode, Seal, ShardStore, Snap, StoreError, WriteIn, shard_of,
};
use crate::wire::{FrameReader, ReadError, write_frame};

pub mod resync;
pub mod verify;

/// Requests one connection may have in flight before the server stops
/// reading from it (back-pressure).
const MAX_IN_FLIGHT: usize = 256;

/// The failpoint that makes a non-tail replica forward before storing.
const FORWARDED_UNPERSISTED: &str = "chunk.write.forwarded_unpersisted";

/// The failpoint that makes a non-tail replica store a version a second
/// after its successors have it.
const STORE_LATE: &str = "chunk.write.store_late";

/// Work a request leaves to run after its reply went out: a non-tail
/// replica's commit of a replicated version (see "A non-tail replica
/// commits after its reply" in the module docs).
pub type AfterReply<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

/// (client, sequence) pairs remembered for retries, per shard.
const DEDUP_ENTRIES: usize = 65_536;

/// A Stat request's `client_seq` asking for the chunk's content digest.
pub const STAT_DIGEST: u64 = 1;

/// The state of one replica of a chunk as resync compares it — committed
/// version, committed length and content digest, all 0 when the chunk is
/// absent — folded into one nonzero value. The first piece of an Install
/// carries the receiver's state as the sync source saw it (its `client_id`
/// field; 0 = no expectation), and the receiver installs only over that
/// state. A copy delivered late (its sender timed out and released the
/// chunk's lock, then a removal and a new "version 1" reached the
/// receiver) is refused instead of putting the old bytes back under the
/// version the new ones carry.
pub fn replica_state_tag(version: u64, len: u64, digest: u64) -> u64 {
    let mut h = crc32fast::Hasher::new();
    h.update(&version.to_le_bytes());
    h.update(&len.to_le_bytes());
    h.update(&digest.to_le_bytes());
    let lo = u64::from(h.finalize());
    let mut h = crc32fast::Hasher::new_with_initial(0x5eed);
    h.update(&digest.to_le_bytes());
    h.update(&len.to_le_bytes());
    h.update(&version.to_le_bytes());
    ((u64::from(h.finalize()) << 32) | lo) | 1
}

/// Receives corrupt blocks found by reads: (chunk, block indexes).
pub type CorruptSink = Rc<dyn Fn(ChunkId, Vec<u32>)>;

/// A request refused: the code and message of its error reply.
#[derive(Debug)]
pub struct Reject {
    code: ErrorCode,
    msg: String,
}

impl Reject {
    fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
        }
    }
}

impl From<StoreError> for Reject {
    fn from(e: StoreError) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

impl From<PeerError> for Reject {
    fn from(e: PeerError) -> Self {
        Self::new(e.code(), format!("forwarding down the chain: {e}"))
    }
}

type Result<T> = std::result::Result<T, Reject>;

/// A change to a chunk, as it travels down a chain.
#[derive(Debug, Clone)]
enum Mutation {
    Write {
        offset: u64,
        data: Bytes,
        crcs: SegmentCrcs,
        /// Seal bytes (one per segment) or empty.
        seals: Bytes,
        /// The snapshot context it was made under (kept with a pending
        /// version, so a re-forward carries its own).
        snap: Snap,
    },
    Truncate {
        new_len: u64,
        snap: Snap,
    },
}

impl Mutation {
    fn snap(&self) -> Snap {
        match self {
            Mutation::Write { snap, .. } | Mutation::Truncate { snap, .. } => *snap,
        }
    }
}

/// The reply to read `h` with what the store read.
fn read_reply(h: &Header, out: crate::store::ReadOut) -> Result<Frame> {
    let header = Header {
        version: out.version,
        ..Header::reply_to(h)
    };
    Frame::with_payload_crcs(header, out.data, SegmentCrcs::from_slice(&out.block_crcs))
        .and_then(|f| sealed(f, seal_bytes(&out.block_seals)))
        .map_err(|e| Reject::new(ErrorCode::Internal, format!("read reply: {e}")))
}

/// The snapshot context a mutation request carries.
fn snap_of(h: &Header) -> Snap {
    Snap {
        seq: h.snap_seq,
        no_clone: h.flags.contains(Flags::NO_CLONE),
    }
}

/// Where this target stands in a request's chain. Peer addresses are
/// looked up only by the requests that contact a peer (a clean read
/// contacts none).
#[derive(Debug)]
struct Route {
    view: Arc<ChainView>,
    chain_id: u32,
    target: u64,
    chunk: ChunkId,
    chain_version: u64,
    state: MemberState,
    is_head: bool,
    /// Last member of the write path: stores and commits in one step.
    is_tail: bool,
    /// Last serving member: its committed version is what CRAQ reads
    /// trust (the write-path tail itself unless syncing members follow).
    is_serving_tail: bool,
}

impl Route {
    /// The next member down the chain; an error when it has no address.
    fn successor(&self) -> Result<Endpoint> {
        self.view
            .successor(self.chain_id, self.target, self.chunk)
            .ok_or_else(|| {
                Reject::new(
                    ErrorCode::Unavailable,
                    format!("no address for the successor in chain {}", self.chain_id),
                )
            })
    }

    /// The chain's tail, if it has an address.
    fn tail(&self) -> Option<Endpoint> {
        self.view.tail(self.chain_id, self.chunk)
    }
}

/// Recent (sequence → version) pairs per (chunk, client) the head applied.
///
/// A window rather than the last sequence alone: a client pipelines writes
/// to one chunk, so sequence 6 may arrive before 5, and 5 is new, not a
/// late retry. A sequence inside the window is a retry when present; one
/// older than a full window cannot be told apart and is refused.
#[derive(Debug, Default)]
struct Dedup {
    seen: HashMap<(ChunkId, u64), VecDeque<(u64, u64)>>,
    order: VecDeque<(ChunkId, u64)>,
}

/// Sequences remembered per (chunk, client).
const DEDUP_WINDOW: usize = 64;

impl Dedup {
    /// Returns the version a retry of (client, seq) already got, or
    /// refuses a sequence older than the remembered window.
    fn check(&self, chunk: ChunkId, client: u64, seq: u64) -> Result<Option<u64>> {
        if client == 0 {
            return Ok(None);
        }
        let Some(w) = self.seen.get(&(chunk, client)) else {
            return Ok(None);
        };
        if let Some(&(_, v)) = w.iter().find(|(s, _)| *s == seq) {
            return Ok(Some(v));
        }
        let oldest = w.iter().map(|(s, _)| *s).min().unwrap_or(0);
        if w.len() >= DEDUP_WINDOW && seq < oldest {
            return Err(Reject::new(
                ErrorCode::StaleSequence,
                format!(
                    "write {seq} of client {client} to {chunk} is older than every write \
                     remembered (from {oldest}); refusing what may be a late retry"
                ),
            ));
        }
        Ok(None)
    }

    /// Forgets every write remembered for `chunk`: its versions here were
    /// replaced by the tail's (a diverged replica caught up), so a
    /// remembered version may not hold that write any more.
    fn forget(&mut self, chunk: ChunkId) {
        self.seen.retain(|(c, _), _| *c != chunk);
    }

    fn record(&mut self, chunk: ChunkId, client: u64, seq: u64, version: u64) {
        if client == 0 {
            return;
        }
        let key = (chunk, client);
        let w = self.seen.entry(key).or_insert_with(|| {
            self.order.push_back(key);
            VecDeque::new()
        });
        w.push_back((seq, version));
        if w.len() > DEDUP_WINDOW {
            w.pop_front();
        }
        while self.order.len() > DEDUP_ENTRIES {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
    }
}

/// One shard's server state; lives in one glommio executor.
pub struct Shard {
    shard: u32,
    shards: u32,
    store: Rc<ShardStore>,
    control: Arc<ControlState>,
    view: RefCell<Arc<ChainView>>,
    peers: PeerPool,
    metrics: Arc<Metrics>,
    locks: ChunkLocks,
    dedup: RefCell<Dedup>,
    corrupt: CorruptSink,
    /// Head mutations under way per (chain, chain version they were routed
    /// with): a resync waits for those routed before the chain gained its
    /// syncing member (they may not reach it) before it lists chunks.
    inflight: RefCell<HashMap<(u32, u64), u32>>,
    /// When the resync pacer next lets bytes out (rate limit).
    pace_next: Cell<Instant>,
    /// Chunks found corrupt here, to be rewritten from a healthy replica.
    repairs: RefCell<std::collections::BTreeSet<ChunkId>>,
    /// Chunks whose successors may hold a version this replica does not
    /// (see "Diverged replicas" in the module docs): no reads here, and
    /// the next mutation copies the chunk from the tail first.
    diverged: RefCell<std::collections::HashSet<ChunkId>>,
    /// Byte ranges of versions forwarded from here whose local store has
    /// not finished, per chunk: the successors (and readers of the tail)
    /// may see them first, so reads here that touch them ask the tail.
    /// (A handful at a time: one per write in flight through this shard,
    /// so a list scanned whole, allocated once.)
    unstored: RefCell<Vec<(ChunkId, u64, u64)>>,
    /// Set after an unclean start until every chunk here was checked
    /// against its chain's tail (`verify.rs`).
    suspect: Cell<bool>,
    /// After an unclean start, the verification pass has checked every
    /// chunk up to this one (chunks are listed in id order)...
    verified_through: Cell<Option<ChunkId>>,
    /// ...except these, whose tails could not be asked yet.
    recheck: RefCell<std::collections::BTreeSet<ChunkId>>,
    /// Chunks whose local commit runs after the write's reply, with how
    /// many such commits are under way; [`Self::commits_done`] is
    /// notified as each ends.
    committing: RefCell<HashMap<ChunkId, u32>>,
    commits_done: Notify,
}

/// Counts one commit in [`Shard::committing`] while alive.
struct CommittingGuard<'a> {
    shard: &'a Shard,
    chunk: ChunkId,
}

impl Drop for CommittingGuard<'_> {
    fn drop(&mut self) {
        let mut m = self.shard.committing.borrow_mut();
        if let Some(n) = m.get_mut(&self.chunk) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.chunk);
            }
        }
        drop(m);
        self.shard.commits_done.notify_all();
    }
}

/// Keeps one range in [`Shard::unstored`] while alive.
struct UnstoredGuard<'a> {
    list: &'a RefCell<Vec<(ChunkId, u64, u64)>>,
    entry: (ChunkId, u64, u64),
}

impl Drop for UnstoredGuard<'_> {
    fn drop(&mut self) {
        let mut list = self.list.borrow_mut();
        if let Some(i) = list.iter().position(|e| *e == self.entry) {
            list.swap_remove(i);
        }
    }
}

/// Counts one head mutation in [`Shard::inflight`] while alive.
struct InflightGuard<'a> {
    map: &'a RefCell<HashMap<(u32, u64), u32>>,
    key: (u32, u64),
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        let mut m = self.map.borrow_mut();
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("shard", &self.shard)
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

fn crcs_of(c: &SegmentCrcs) -> Vec<u32> {
    c.iter().collect()
}

/// The seals of a sealed frame's body (whole seals only; the codec has
/// checked the count).
pub(crate) fn seals_of(b: &Bytes) -> Vec<Seal> {
    b.chunks_exact(SEAL_LEN)
        .map(|c| {
            let mut s = NO_SEAL;
            s.copy_from_slice(c);
            s
        })
        .collect()
}

/// The wire form of `seals`.
pub(crate) fn seal_bytes(seals: &[Seal]) -> Bytes {
    seals.concat().into()
}

/// `f` carrying `seals` when there are any (a plain frame otherwise).
pub(crate) fn sealed(f: Frame, seals: Bytes) -> std::result::Result<Frame, FrameError> {
    if seals.is_empty() {
        Ok(f)
    } else {
        f.with_seals(seals)
    }
}

impl Shard {
    /// A shard server over `store`, shard `shard` of `shards`.
    pub fn new(
        store: Rc<ShardStore>,
        shards: u32,
        control: Arc<ControlState>,
        metrics: Arc<Metrics>,
        peer_timeout: Duration,
        corrupt: CorruptSink,
    ) -> Self {
        let view = control.view();
        Self {
            shard: store.shard(),
            shards,
            store,
            control,
            view: RefCell::new(view),
            peers: PeerPool::new(peer_timeout),
            metrics,
            locks: ChunkLocks::default(),
            dedup: RefCell::new(Dedup::default()),
            corrupt,
            inflight: RefCell::new(HashMap::new()),
            pace_next: Cell::new(Instant::now()),
            repairs: RefCell::new(std::collections::BTreeSet::new()),
            diverged: RefCell::new(std::collections::HashSet::new()),
            unstored: RefCell::new(Vec::with_capacity(MAX_IN_FLIGHT)),
            suspect: Cell::new(false),
            verified_through: Cell::new(None),
            recheck: RefCell::new(std::collections::BTreeSet::new()),
            committing: RefCell::new(HashMap::new()),
            commits_done: Notify::default(),
        }
    }

    /// Queues `chunk` for repair from a healthy replica (a read or the
    /// scrubber found a corrupt block of it here).
    pub fn queue_repair(&self, chunk: ChunkId) {
        self.repairs.borrow_mut().insert(chunk);
    }

    fn count_inflight(&self, route: &Route) -> InflightGuard<'_> {
        let key = (route.chain_id, route.chain_version);
        *self.inflight.borrow_mut().entry(key).or_insert(0) += 1;
        InflightGuard {
            map: &self.inflight,
            key,
        }
    }

    /// Returns whether head mutations routed with a version of `chain`
    /// older than `version` are still under way.
    pub(crate) fn older_writes_inflight(&self, chain: u32, version: u64) -> bool {
        self.inflight
            .borrow()
            .keys()
            .any(|(c, v)| *c == chain && *v < version)
    }

    /// The store this shard serves.
    pub fn store(&self) -> &Rc<ShardStore> {
        &self.store
    }

    /// Serves one client or peer connection until it closes or sends a
    /// malformed frame (answered with a protocol error, then closed).
    pub async fn serve_connection(self: Rc<Self>, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        self.metrics.connection_opened();
        let (mut rd, mut wr) = futures_lite::io::split(stream);
        let (tx, rx) = glommio::channels::local_channel::new_bounded::<Frame>(MAX_IN_FLIGHT);
        let writer = glommio::spawn_local(async move {
            let mut buf = bytes::BytesMut::new();
            while let Some(f) = rx.recv().await {
                if let Err(e) = write_frame(&mut wr, &mut buf, &f).await {
                    tracing::debug!("writing a reply: {e}");
                    break;
                }
            }
        });
        let gate = Rc::new(Semaphore::new(MAX_IN_FLIGHT as u64));
        let mut reader = FrameReader::default();
        let tx = Rc::new(tx);
        loop {
            match reader.read(&mut rd).await {
                Ok(frame) => {
                    let Ok(permit) = gate.clone().acquire_static_permit(1).await else {
                        break;
                    };
                    let me = self.clone();
                    let tx = tx.clone();
                    glommio::spawn_local(async move {
                        let mut after = None;
                        let reply = me.handle(frame, &mut after).await;
                        // The writer is gone only when the connection is.
                        let _ = tx.send(reply).await;
                        if let Some(work) = after {
                            work.await;
                        }
                        drop(permit);
                    })
                    .detach();
                }
                Err(ReadError::Eof) => break,
                Err(ReadError::Frame(e)) => {
                    self.metrics.protocol_error();
                    tracing::info!(%peer, "closing connection: {e}");
                    let _ = tx.send(Frame::protocol_error(&e)).await;
                    break;
                }
                Err(e @ (ReadError::Truncated | ReadError::Io(_))) => {
                    tracing::debug!(%peer, "connection ended: {e}");
                    break;
                }
            }
        }
        // Let in-flight requests answer, then close.
        drop(tx);
        writer.await;
        self.metrics.connection_closed();
    }

    /// Serves one request; never fails: errors become error replies.
    /// Work left for after the reply (a replica's commit) is put in
    /// `after`; the caller runs it once the reply is sent.
    pub async fn handle<'a>(&'a self, frame: Frame, after: &mut Option<AfterReply<'a>>) -> Frame {
        let started = Instant::now();
        let h = frame.header;
        let bytes_in = frame.payload.len() as u64;
        let _in_flight = self.store.progress().request(h.opcode, h.chunk, started);
        let reply = match self.dispatch(frame, after).await {
            Ok(r) => r,
            Err(r) => {
                if r.code == ErrorCode::Pending {
                    self.metrics.pending_reply();
                    Frame::pending_reply(&h)
                } else {
                    Frame::error_reply(&h, r.code, &r.msg)
                }
            }
        };
        let ok = reply.header.status == 0;
        let bytes_out = if ok { reply.payload.len() as u64 } else { 0 };
        self.metrics
            .op(h.opcode)
            .observe(started.elapsed(), ok, bytes_in, bytes_out);
        reply
    }

    fn current_view(&self) -> Arc<ChainView> {
        if self.control.view_version() != self.view.borrow().version {
            *self.view.borrow_mut() = self.control.view();
        }
        self.view.borrow().clone()
    }

    fn route(&self, h: &Header) -> Result<Route> {
        let view = self.current_view();
        let chain_id = h.chain.0;
        let Some(chain) = view.chain(chain_id) else {
            return Err(Reject::new(
                ErrorCode::NewerChainVersion,
                format!(
                    "chain {chain_id} is not in this chunkserver's table (version {})",
                    view.version
                ),
            ));
        };
        let ours = h.chain_version.0;
        if ours < chain.version {
            return Err(Reject::new(
                ErrorCode::StaleChainVersion,
                format!(
                    "chain {chain_id} is at version {}, the request carries {ours}",
                    chain.version
                ),
            ));
        }
        if ours > chain.version {
            return Err(Reject::new(
                ErrorCode::NewerChainVersion,
                format!(
                    "chain {chain_id} is at version {} here, the request carries {ours}",
                    chain.version
                ),
            ));
        }
        let me = self.control.chunkserver_id();
        let Some(member) = chain.members.iter().find(|m| m.chunkserver == me) else {
            return Err(Reject::new(
                ErrorCode::Invalid,
                format!("chunkserver {me} holds no replica of chain {chain_id}"),
            ));
        };
        if member.state == MemberState::Offline {
            return Err(Reject::new(
                ErrorCode::Unavailable,
                format!(
                    "target {} is offline in chain {chain_id} version {}",
                    member.target, chain.version
                ),
            ));
        }
        let owner = shard_of(h.chunk, self.shards);
        if owner != self.shard {
            return Err(Reject::new(
                ErrorCode::Invalid,
                format!(
                    "{} belongs to shard {owner} of this chunkserver, not shard {}",
                    h.chunk, self.shard
                ),
            ));
        }
        let is_head = chain.write_path().next().map(|m| m.target) == Some(member.target);
        let is_tail = chain.write_path().last().map(|m| m.target) == Some(member.target);
        let is_serving_tail = chain
            .write_path()
            .filter(|m| m.state == MemberState::Serving)
            .last()
            .map(|m| m.target)
            == Some(member.target);
        Ok(Route {
            chain_version: chain.version,
            state: member.state,
            is_head,
            is_tail,
            is_serving_tail,
            chain_id,
            target: member.target,
            chunk: h.chunk,
            view,
        })
    }

    async fn dispatch<'a>(
        &'a self,
        frame: Frame,
        after: &mut Option<AfterReply<'a>>,
    ) -> Result<Frame> {
        let h = frame.header;
        if h.reply {
            return Err(Reject::new(
                ErrorCode::BadRequest,
                "a reply frame was sent as a request",
            ));
        }
        if h.opcode == Opcode::Ping {
            return Ok(Frame::reply(&h));
        }
        if !self.control.serving() {
            return Err(Reject::new(
                ErrorCode::Unavailable,
                "this chunkserver is not serving: it has not reached meta within its lease",
            ));
        }
        let route = self.route(&h)?;
        match h.opcode {
            Opcode::Write => {
                if !route.is_head {
                    return Err(Reject::new(
                        ErrorCode::Invalid,
                        format!("writes to chain {} go to its head", h.chain),
                    ));
                }
                let m = Mutation::Write {
                    offset: h.offset,
                    data: frame.payload,
                    crcs: frame.crcs,
                    seals: frame.seals,
                    snap: snap_of(&h),
                };
                self.head_mutate(&route, &h, m, after).await
            }
            Opcode::Truncate if route.is_head && h.version == 0 => {
                let m = Mutation::Truncate {
                    new_len: h.offset,
                    snap: snap_of(&h),
                };
                self.head_mutate(&route, &h, m, after).await
            }
            Opcode::Forward | Opcode::Truncate => {
                if route.is_head {
                    return Err(Reject::new(
                        ErrorCode::StaleChainVersion,
                        format!("this target is the head of chain {}", h.chain),
                    ));
                }
                let m = if h.opcode == Opcode::Forward {
                    Mutation::Write {
                        offset: h.offset,
                        data: frame.payload,
                        crcs: frame.crcs,
                        seals: frame.seals,
                        snap: snap_of(&h),
                    }
                } else {
                    Mutation::Truncate {
                        new_len: h.offset,
                        snap: snap_of(&h),
                    }
                };
                self.replica_mutate(&route, &h, m, after).await
            }
            Opcode::Read => self.read(&route, &h, false).await,
            Opcode::ReadChunk => self.read(&route, &h, true).await,
            Opcode::Stat => {
                self.committed_here(h.chunk).await;
                if route.is_serving_tail {
                    self.commit_pending_as_tail(h.chunk).await?;
                }
                self.stat(&h)
            }
            Opcode::Remove => self.remove(&route, &h).await,
            Opcode::RemoveMany => self.remove_many(&route, &h, &frame).await,
            Opcode::Install => self.install(&route, &h, &frame).await,
            Opcode::Clones => self.clones(&h).await,
            Opcode::InstallClone => self.install_clone(&h, &frame).await,
            Opcode::SnapFloor => {
                let _lock = self.lock(h.chunk).await?;
                self.store
                    .set_snap_floor(h.chunk, h.version, h.snap_seq, h.offset, h.client_seq)
                    .await?;
                Ok(Frame::reply(&h))
            }
            Opcode::Commit => {
                self.store
                    .commit_through(h.chunk, h.version, route.is_tail)
                    .await?;
                Ok(Frame::reply(&h))
            }
            Opcode::Ping => Ok(Frame::reply(&h)),
        }
    }

    async fn lock(&self, chunk: ChunkId) -> Result<ChunkLockGuard<'_>> {
        self.locks
            .lock(chunk)
            .await
            .map_err(|e| Reject::new(ErrorCode::Internal, format!("chunk lock: {e}")))
    }

    /// Returns once no commit of `chunk` left for after a reply is under
    /// way here (at once almost always: the map is empty).
    async fn committed_here(&self, chunk: ChunkId) {
        loop {
            let done = self.commits_done.notified();
            if !self.committing.borrow().contains_key(&chunk) {
                return;
            }
            done.await;
        }
    }

    /// Returns the commit of `version` of `chunk` here, to run after the
    /// write's reply; `held` (the chunk's lock and the write's counters)
    /// is released when it ends. See the module docs.
    fn commit_after_reply<'a>(
        &'a self,
        chunk: ChunkId,
        version: u64,
        held: impl Sized + 'a,
    ) -> AfterReply<'a> {
        *self.committing.borrow_mut().entry(chunk).or_insert(0) += 1;
        let counted = CommittingGuard { shard: self, chunk };
        Box::pin(async move {
            // Let the connection's writer send the reply first: the commit
            // below does not yield (a non-durable commit is a few blocking
            // sled inserts).
            futures_lite::future::yield_now().await;
            failpoint::hit("chunk.write.after_reply");
            if let Err(e) = self.store.commit_through(chunk, version, false).await {
                tracing::warn!(
                    %chunk,
                    version,
                    "committing a replicated version here: {e}; it stays pending until \
                     the tail is asked or the next write settles it"
                );
            }
            drop(held);
            drop(counted);
        })
    }

    /// The head's write path; see the module docs.
    async fn head_mutate<'a>(
        &'a self,
        route: &Route,
        h: &Header,
        m: Mutation,
        after: &mut Option<AfterReply<'a>>,
    ) -> Result<Frame> {
        let inflight = self.count_inflight(route);
        // Counted until the write is done: see `ControlState::admit_write`.
        let snap = self.control.admit_write(h.snap_seq).map_err(|fence| {
            Reject::new(
                ErrorCode::StaleSnapSeq,
                format!(
                    "the write carries snapshot sequence {}, this chunkserver knows {fence}: \
                     refresh the chain table",
                    h.snap_seq
                ),
            )
        })?;
        let chunk = h.chunk;
        let lock = self.lock(chunk).await?;
        self.converge(route, h, chunk).await?;
        let seen = self
            .dedup
            .borrow()
            .check(chunk, h.client_id.0, h.client_seq)?;
        self.settle_pending(route, h, chunk).await?;
        if let Some(version) = seen {
            return Ok(Self::versioned_reply(h, version));
        }
        let committed = self.store.stat(chunk)?.map_or(0, |s| s.committed_version);
        if let Mutation::Write { .. } = m
            && (h.version != 0 || h.flags.contains(Flags::CONDITIONAL))
            && h.version != committed
        {
            // A conditional write (a client's read-modify-write of part of
            // an encrypted block): the chunk changed since the client read
            // it, so its merge may be stale. It reads again and retries.
            return Err(Reject::new(
                ErrorCode::StaleSequence,
                format!(
                    "{chunk} is at version {committed}; the conditional write expected version {}",
                    h.version
                ),
            ));
        }
        if let Mutation::Truncate { .. } = m
            && committed == 0
        {
            // Nothing stored, nothing to cut.
            return Ok(Self::versioned_reply(h, 0));
        }
        let version = committed + 1;
        let commit_later = self
            .apply(route, h, chunk, version, &m, |v| {
                self.dedup
                    .borrow_mut()
                    .record(chunk, h.client_id.0, h.client_seq, v);
            })
            .await?;
        failpoint::hit("chunk.write.before_reply");
        if commit_later {
            *after = Some(self.commit_after_reply(chunk, version, (lock, snap, inflight)));
        }
        Ok(Self::versioned_reply(h, version))
    }

    /// A non-head replica's write path: the head's version, in order.
    async fn replica_mutate<'a>(
        &'a self,
        route: &Route,
        h: &Header,
        m: Mutation,
        after: &mut Option<AfterReply<'a>>,
    ) -> Result<Frame> {
        let chunk = h.chunk;
        if h.version == 0 {
            return Err(Reject::new(
                ErrorCode::BadRequest,
                "a forwarded mutation must carry the head's version",
            ));
        }
        let lock = self.lock(chunk).await?;
        self.converge(route, h, chunk).await?;
        let st = self.store.stat(chunk)?;
        let committed = st.as_ref().map_or(0, |s| s.committed_version);
        if h.version == committed {
            // Already here: the head settling a version whose commit it
            // lost — or a head that lost the version itself (it crashed
            // after forwarding it, before storing it) and gave the number
            // to another write. Only the bytes tell them apart.
            self.same_as_committed(chunk, h.version, &m).await?;
            return Ok(Self::versioned_reply(h, h.version));
        }
        if h.version < committed {
            // A version this replica has built on: the sender is settling
            // it late; what we hold came from the head that assigned it.
            return Ok(Self::versioned_reply(h, h.version));
        }
        let newest = st
            .as_ref()
            .and_then(|s| s.pending_versions.last().copied())
            .unwrap_or(committed)
            .max(committed);
        if route.state == MemberState::Syncing && h.version > newest + 1 {
            // A syncing member that missed versions while it was away: it
            // cannot build this one on what it holds, and it serves no
            // reads. Acknowledge without storing — the chain stays
            // writable on its serving members — and leave the chunk to be
            // copied whole when the target is resynced.
            tracing::debug!(%chunk, version = h.version, newest, "syncing: missed versions, chunk left for resync");
            self.metrics.sync_gap();
            return Ok(Self::versioned_reply(h, h.version));
        }
        if self.apply(route, h, chunk, h.version, &m, |_| {}).await? {
            *after = Some(self.commit_after_reply(chunk, h.version, lock));
        }
        Ok(Self::versioned_reply(h, h.version))
    }

    /// Persists version `version` here and forwards it to the successor;
    /// `persisted` runs once the local copy is durable. Commits it here
    /// when this replica is the chain's (serving) tail; otherwise returns
    /// `true`: the caller commits it after the reply (see the module docs).
    async fn apply(
        &self,
        route: &Route,
        h: &Header,
        chunk: ChunkId,
        version: u64,
        m: &Mutation,
        persisted: impl FnOnce(u64),
    ) -> Result<bool> {
        failpoint::hit("chunk.write.before_local");
        if route.is_tail {
            // The tail (or a one-replica chain): store and commit at once.
            self.store_version(route, chunk, version, m, true).await?;
            persisted(version);
            return Ok(false);
        }
        let next = route.successor()?;
        let _unstored = self.mark_unstored(chunk, m);
        let (stored, forwarded) = self
            .store_and_forward(&next, route, h, chunk, version, m)
            .await?;
        if let Err(e) = stored {
            // The successors may hold the version now, this replica does
            // not: it must not serve the chunk, or build on it, until it
            // has copied the chunk from the tail.
            tracing::error!(
                %chunk,
                version,
                "storing a forwarded version failed; the chunk diverged here: {}",
                e.msg
            );
            self.diverge(chunk);
            return Err(e);
        }
        match forwarded {
            // This replica's copy was replaced by the tail's, in which the
            // version holds other bytes: nothing of this write to remember.
            Err(e) if e.code == ErrorCode::Diverged => return Err(e),
            forwarded => {
                persisted(version);
                forwarded?;
            }
        }
        failpoint::hit("chunk.write.before_commit");
        if route.is_serving_tail {
            // The last serving member (its successors are syncing): its
            // commit is what reads trust, so it is durable before the reply.
            self.store.commit_through(chunk, version, true).await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Stores version `version` of `chunk` here (pending) while forwarding
    /// it to `next`; returns both outcomes. A store that fails before it
    /// first waits — the payload's CRCs are checked then — is returned as
    /// the error, without forwarding: a bad payload never reaches a
    /// successor.
    async fn store_and_forward(
        &self,
        next: &Endpoint,
        route: &Route,
        h: &Header,
        chunk: ChunkId,
        version: u64,
        m: &Mutation,
    ) -> Result<(Result<()>, Result<()>)> {
        let local = self.store_version(route, chunk, version, m, false);
        let forward = self.forward(next, route, h, chunk, version, m);
        if failpoint::is_armed(FORWARDED_UNPERSISTED) || failpoint::is_armed(STORE_LATE) {
            // Fault tests: the successors have the version before this
            // replica starts storing it.
            let forwarded = forward.await;
            failpoint::hit(FORWARDED_UNPERSISTED);
            if failpoint::is_armed(STORE_LATE) {
                glommio::timer::sleep(Duration::from_secs(1)).await;
            }
            return Ok((local.await, forwarded));
        }
        if failpoint::fires("chunk.write.local_error") {
            // Fault tests: the local store fails as an I/O error would,
            // after the successors have the version.
            drop(local);
            let failed = Reject::new(
                ErrorCode::Io,
                "failpoint chunk.write.local_error: the local store failed",
            );
            return Ok((Err(failed), forward.await));
        }
        let mut local = std::pin::pin!(local);
        let early = futures_lite::future::poll_once(&mut local).await;
        if let Some(Err(e)) = early {
            return Err(e);
        }
        failpoint::hit("chunk.write.before_forward");
        Ok(match early {
            Some(stored) => (stored, forward.await),
            None => futures_lite::future::zip(local, forward).await,
        })
    }

    /// Stores version `version` of `chunk` here: committed at once when
    /// `tail`, else pending until the successor's answer.
    async fn store_version(
        &self,
        route: &Route,
        chunk: ChunkId,
        version: u64,
        m: &Mutation,
        tail: bool,
    ) -> Result<()> {
        match m {
            // A version already committed here never gets this far (both
            // callers check under the chunk lock), so STALE from the store
            // means other bytes under this version: an error, never
            // "already applied".
            Mutation::Write {
                offset,
                data,
                crcs,
                seals,
                snap,
            } => {
                let (crcs, seals) = (crcs_of(crcs), seals_of(seals));
                let w = WriteIn {
                    offset: *offset,
                    data,
                    segment_crcs: &crcs,
                    seals: &seals,
                    snap: *snap,
                };
                self.store
                    .write_in_chain(route.chain_id, chunk, version, w, tail)
                    .await
                    .map_err(|e| self.store_error(chunk, e))
            }
            Mutation::Truncate { new_len, snap } => {
                self.store.truncate(chunk, version, *new_len, *snap).await?;
                if tail {
                    self.store.commit_through(chunk, version, true).await?;
                }
                Ok(())
            }
        }
    }

    /// Sends version `version` of `chunk` to `next` and waits until it and
    /// everything after it in the chain have it.
    async fn forward(
        &self,
        next: &Endpoint,
        route: &Route,
        h: &Header,
        chunk: ChunkId,
        version: u64,
        m: &Mutation,
    ) -> Result<()> {
        let base = Header {
            chunk,
            chain: h.chain,
            chain_version: ChainVersion(route.chain_version),
            version,
            snap_seq: m.snap().seq,
            flags: if m.snap().no_clone {
                Flags::NO_CLONE
            } else {
                Flags::NONE
            },
            client_id: h.client_id,
            client_seq: h.client_seq,
            token: h.token,
            ..Header::request(Opcode::Forward, 0)
        };
        let frame = match m {
            Mutation::Write {
                offset,
                data,
                crcs,
                seals,
                ..
            } => Frame::with_payload_crcs(
                Header {
                    offset: *offset,
                    ..base
                },
                data.clone(),
                crcs.clone(),
            )
            .and_then(|f| sealed(f, seals.clone()))
            .map_err(|e| Reject::new(ErrorCode::Internal, format!("forward frame: {e}")))?,
            Mutation::Truncate { new_len, .. } => Frame::new(Header {
                opcode: Opcode::Truncate,
                offset: *new_len,
                ..base
            }),
        };
        self.metrics.forwarded();
        let reply = self.peers.call(&next.addr, frame).await?;
        let Some(code) = reply.error_code() else {
            return Ok(());
        };
        if code == ErrorCode::Diverged {
            // This replica reused a version its successors hold with other
            // bytes: it converges now, while it holds the chunk's lock (and
            // again later if the tail cannot supply the chunk yet).
            self.diverge(chunk);
            if let Err(e) = self.converge(route, h, chunk).await {
                tracing::warn!(%chunk, "copying a diverged chunk from the tail: {}", e.msg);
            }
        }
        Err(Reject::new(
            code,
            format!(
                "successor target {} at {} refused version {version} of {chunk}: {}",
                next.target,
                next.addr,
                reply.error_message().unwrap_or_default()
            ),
        ))
    }

    /// Forwards and commits versions left pending here by a failed forward
    /// or a crash, oldest first, so the chain converges before a new
    /// version is assigned.
    async fn settle_pending(&self, route: &Route, h: &Header, chunk: ChunkId) -> Result<()> {
        let Some(st) = self.store.stat(chunk)? else {
            return Ok(());
        };
        for v in st.pending_versions {
            let p = self.store.read_pending(chunk, v).await?;
            let m = if p.len == 0 && p.data.is_empty() {
                Mutation::Truncate {
                    new_len: p.new_len,
                    snap: p.snap,
                }
            } else {
                Mutation::Write {
                    offset: p.offset,
                    crcs: SegmentCrcs::from_slice(&p.segment_crcs),
                    seals: seal_bytes(&p.segment_seals),
                    data: p.data,
                    snap: p.snap,
                }
            };
            if !route.is_tail {
                tracing::info!(%chunk, version = v, "re-forwarding a pending version");
                self.forward(&route.successor()?, route, h, chunk, v, &m)
                    .await?;
            }
            self.store.commit_through(chunk, v, route.is_tail).await?;
        }
        Ok(())
    }

    /// Records the range `m` changes as forwarded but not stored here
    /// until the guard drops.
    fn mark_unstored(&self, chunk: ChunkId, m: &Mutation) -> UnstoredGuard<'_> {
        let range = match m {
            Mutation::Write { offset, data, .. } => {
                (*offset, offset.saturating_add(data.len() as u64))
            }
            // A truncate changes the length: every read may see it.
            Mutation::Truncate { .. } => (0, u64::MAX),
        };
        let entry = (chunk, range.0, range.1);
        self.unstored.borrow_mut().push(entry);
        UnstoredGuard {
            list: &self.unstored,
            entry,
        }
    }

    /// Whether a read of `len` bytes at `offset` of `chunk` here must ask
    /// the tail first: it touches a version this replica forwarded but has
    /// not stored, or the chunk is unchecked since an unclean start.
    fn must_ask_tail(&self, chunk: ChunkId, offset: u64, len: u64) -> bool {
        let end = offset.saturating_add(len.max(1));
        let in_flight = self
            .unstored
            .borrow()
            .iter()
            .any(|(c, a, b)| *c == chunk && *a < end && offset < *b);
        in_flight || self.unverified(chunk)
    }

    /// Marks `chunk` diverged here (see the module docs).
    fn diverge(&self, chunk: ChunkId) {
        if self.diverged.borrow_mut().insert(chunk) {
            self.metrics.diverged();
        }
    }

    /// Before a mutation of a chunk diverged here: replaces this replica's
    /// copy with the tail's committed version (dropping every version of
    /// its own, pending ones included) and forgets the writes remembered
    /// for it, whose versions may be gone. Called under the chunk's lock,
    /// which the head holds down the chain, so no write to the chunk is
    /// under way between here and the tail.
    async fn converge(&self, route: &Route, h: &Header, chunk: ChunkId) -> Result<()> {
        if !self.diverged.borrow().contains(&chunk) {
            return Ok(());
        }
        let tail = if route.is_serving_tail {
            None
        } else {
            route.tail()
        };
        if let Some(tail) = tail {
            let (version, len) = self
                .tail_committed(&tail.addr, h.chain, route.chain_version, chunk)
                .await
                .map_err(|e| {
                    Reject::new(
                        ErrorCode::Unavailable,
                        format!(
                            "{chunk} diverged here and the tail cannot supply it yet: {}",
                            e.msg
                        ),
                    )
                })?;
            if version == 0 {
                self.store.remove(chunk).await?;
            } else {
                let (data, crcs, seals) = self
                    .fetch_committed(
                        &tail.addr,
                        route.chain_id,
                        route.chain_version,
                        chunk,
                        version,
                        len,
                    )
                    .await?;
                let w = WriteIn {
                    offset: 0,
                    data: &data,
                    segment_crcs: &crcs,
                    seals: &seals,
                    snap: Snap {
                        seq: self.control.snap_seq(),
                        ..Snap::default()
                    },
                };
                self.store
                    .install_piece(route.chain_id, chunk, version, len, w)
                    .await?;
            }
            tracing::warn!(%chunk, version, "diverged replica caught up with the tail");
        } else {
            // The tail now (its successors left the chain): what it holds
            // is what the chain holds.
            tracing::warn!(%chunk, "diverged replica became the tail; keeping its copy");
        }
        self.dedup.borrow_mut().forget(chunk);
        self.diverged.borrow_mut().remove(&chunk);
        Ok(())
    }

    /// Checks that version `version`, committed here, holds the bytes of
    /// `m`; [`ErrorCode::Diverged`] when it does not.
    async fn same_as_committed(&self, chunk: ChunkId, version: u64, m: &Mutation) -> Result<()> {
        let same = match m {
            Mutation::Write { offset, data, .. } => {
                let got = self
                    .store
                    .read(chunk, *offset, data.len() as u64, ReadMode::Committed)
                    .await?;
                got.version == version && got.data == *data
            }
            Mutation::Truncate { new_len, .. } => self
                .store
                .stat(chunk)?
                .is_some_and(|s| s.committed_version == version && s.committed_len == *new_len),
        };
        if same {
            return Ok(());
        }
        self.metrics.diverged();
        Err(Reject::new(
            ErrorCode::Diverged,
            format!(
                "version {version} of {chunk} is committed here with other bytes: the sender \
                 lost it and assigned the number again; it copies the chunk from the tail"
            ),
        ))
    }

    fn store_error(&self, chunk: ChunkId, e: StoreError) -> Reject {
        if let StoreError::Checksum { block, .. } = &e {
            // A client payload that fails its CRC on arrival.
            self.metrics.client_crc_failure();
            tracing::warn!(%chunk, block, "write payload failed its CRC");
        }
        e.into()
    }

    fn versioned_reply(h: &Header, version: u64) -> Frame {
        Frame::new(Header {
            version,
            ..Header::reply_to(h)
        })
    }

    async fn read(&self, route: &Route, h: &Header, whole: bool) -> Result<Frame> {
        if self.diverged.borrow().contains(&h.chunk) {
            return Err(Reject::new(
                ErrorCode::Pending,
                format!(
                    "{} diverged here (a write this replica lost reached its successors): \
                     read another replica",
                    h.chunk
                ),
            ));
        }
        if route.state != MemberState::Serving {
            return Err(Reject::new(
                ErrorCode::Unavailable,
                format!(
                    "this replica of chain {} is syncing: it serves no reads",
                    h.chain
                ),
            ));
        }
        let (chunk, offset, len) = (h.chunk, h.offset, u64::from(h.length));
        self.committed_here(chunk).await;
        // The read of a client's read-modify-write (CONDITIONAL, at the
        // head): under the chunk lock, once every version the head holds
        // is committed, so the version it returns is the one a conditional
        // write will be compared with — not one a write in flight is about
        // to pass.
        let _settled = if h.flags.contains(Flags::CONDITIONAL) && route.is_head && !whole {
            let lock = self.lock(chunk).await?;
            self.settle_pending(route, h, chunk).await?;
            Some(lock)
        } else {
            None
        };
        if h.flags.contains(Flags::SNAPSHOT) {
            return self.read_snapshot(route, h).await;
        }
        if route.is_serving_tail && whole {
            self.commit_pending_as_tail(chunk).await?;
        }
        let mode = if whole {
            ReadMode::Committed
        } else {
            ReadMode::CleanOnly
        };
        let ask_tail = !route.is_serving_tail && self.must_ask_tail(chunk, offset, len);
        let first = if ask_tail {
            self.catch_up_with_tail(route, h).await?;
            self.store
                .read(chunk, offset, len, ReadMode::Committed)
                .await
        } else {
            self.store.read(chunk, offset, len, mode).await
        };
        let out = match first {
            Err(StoreError::Pending { .. }) if route.is_serving_tail => {
                self.commit_pending_as_tail(chunk).await?;
                self.store
                    .read(chunk, offset, len, ReadMode::Committed)
                    .await
            }
            Err(StoreError::Pending { .. }) => {
                self.catch_up_with_tail(route, h).await?;
                self.store
                    .read(chunk, offset, len, ReadMode::Committed)
                    .await
            }
            r => r,
        };
        let out = match out {
            Ok(o) => o,
            Err(StoreError::Checksum { block, .. }) => {
                self.metrics.crc_failure();
                tracing::error!(%chunk, block, "stored block failed its CRC; not returned");
                (self.corrupt)(chunk, vec![block]);
                self.queue_repair(chunk);
                return Err(Reject::new(
                    ErrorCode::Checksum,
                    format!("block {block} of {chunk} is corrupt on this replica; read another"),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        read_reply(h, out)
    }

    /// A read of snapshot `h.snap_seq` (DESIGN §3): from the chunk's clone,
    /// or its committed version if it has not changed since. Pending
    /// versions are settled first (committed at the tail, caught up from it
    /// elsewhere): one may be older than the snapshot and in it, and
    /// replicas that commit at different times must all read the same.
    async fn read_snapshot(&self, route: &Route, h: &Header) -> Result<Frame> {
        let chunk = h.chunk;
        let pending = self
            .store
            .stat(chunk)?
            .is_some_and(|s| !s.pending_versions.is_empty());
        if pending {
            if route.is_serving_tail {
                self.commit_pending_as_tail(chunk).await?;
            } else {
                self.catch_up_with_tail(route, h).await?;
            }
        }
        let out = match self
            .store
            .read_snapshot(chunk, h.snap_seq, h.offset, u64::from(h.length))
            .await
        {
            Ok(o) => o,
            Err(StoreError::Checksum { block, .. }) => {
                self.metrics.crc_failure();
                tracing::error!(%chunk, block, "stored block of a clone failed its CRC; not returned");
                (self.corrupt)(chunk, vec![block]);
                return Err(Reject::new(
                    ErrorCode::Checksum,
                    format!("block {block} of {chunk} is corrupt on this replica; read another"),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        read_reply(h, out)
    }

    /// At the tail, commits every pending version (durably). The tail's
    /// state is what is committed; a tail holds pending versions only from
    /// when it was not the tail (its successors were removed from the
    /// chain, or it crashed before a commit record reached its disk).
    /// Those versions were persisted here before they were forwarded, so
    /// every write a client saw acknowledged is among them: committing
    /// them is what keeps it readable — reading the older committed
    /// version instead would lose it (found when every chunkserver was
    /// killed at once and the survivor meta kept as sole member held the
    /// only copy pending).
    async fn commit_pending_as_tail(&self, chunk: ChunkId) -> Result<()> {
        let Some(st) = self.store.stat(chunk)? else {
            return Ok(());
        };
        let newest = st.pending_versions.last().copied().unwrap_or(0);
        if newest > st.committed_version {
            self.store.commit_through(chunk, newest, true).await?;
        }
        Ok(())
    }

    /// Asks the replica at `tail` for `chunk`'s committed (version, length):
    /// (0, 0) when it holds no such chunk; UNAVAILABLE when it cannot
    /// answer.
    async fn tail_committed(
        &self,
        tail: &str,
        chain: ChainId,
        chain_version: u64,
        chunk: ChunkId,
    ) -> Result<(u64, u64)> {
        self.metrics.tail_query();
        let q = Frame::new(Header {
            chunk,
            chain,
            chain_version: ChainVersion(chain_version),
            ..Header::request(Opcode::Stat, 0)
        });
        let reply = self.peers.call(tail, q).await?;
        match reply.error_code() {
            None => Ok((reply.header.version, reply.header.offset)),
            Some(ErrorCode::NotFound) => Ok((0, 0)),
            Some(code) => Err(Reject::new(
                ErrorCode::Unavailable,
                format!(
                    "the tail at {tail} answered {}: {}",
                    code.name(),
                    reply.error_message().unwrap_or_default()
                ),
            )),
        }
    }

    /// For a dirty range: asks the tail which version is committed and
    /// commits up to it here; PENDING when the tail cannot answer.
    async fn catch_up_with_tail(&self, route: &Route, h: &Header) -> Result<()> {
        let pending = || Reject::new(ErrorCode::Pending, "range is being written");
        let Some(tail) = route.tail() else {
            return Err(pending());
        };
        let tail_version = match self
            .tail_committed(&tail.addr, h.chain, route.chain_version, h.chunk)
            .await
        {
            Ok((version, _)) => version,
            Err(e) => {
                tracing::debug!("asking the tail: {}", e.msg);
                return Err(pending());
            }
        };
        let Some(st) = self.store.stat(h.chunk)? else {
            if tail_version > 0 {
                return Err(pending());
            }
            self.checked(h.chunk);
            return Ok(());
        };
        let newest = st.pending_versions.last().copied().unwrap_or(0);
        if tail_version > newest.max(st.committed_version) {
            // The tail has a version this replica has not stored: one it
            // is storing while its successors already have it, or one it
            // lost (a crash between forwarding and storing).
            return Err(pending());
        }
        let through = tail_version.min(newest);
        if through > st.committed_version {
            self.store.commit_through(h.chunk, through, false).await?;
        }
        self.checked(h.chunk);
        Ok(())
    }

    /// This replica's [`replica_state_tag`] of `chunk`.
    fn replica_state(&self, chunk: ChunkId) -> Result<u64> {
        let Some(st) = self.store.stat(chunk)? else {
            return Ok(replica_state_tag(0, 0, 0));
        };
        let digest = self.store.digest(chunk)?.unwrap_or(0);
        Ok(replica_state_tag(
            st.committed_version,
            st.committed_len,
            digest,
        ))
    }

    fn stat(&self, h: &Header) -> Result<Frame> {
        let Some(st) = self.store.stat(h.chunk)? else {
            return Err(Reject::new(
                ErrorCode::NotFound,
                format!("{} is not stored here", h.chunk),
            ));
        };
        // `client_seq == 1` in the request asks for the content digest
        // (resync), returned in the reply's `client_seq`.
        let digest = if h.client_seq == STAT_DIGEST {
            self.store.digest(h.chunk)?.unwrap_or(0)
        } else {
            0
        };
        // With the digest comes the replica's snapshot floor (in
        // `snap_seq`): a resync copies clones to a member whose floor lies
        // above its own. An older chunkserver echoes the request's 0.
        let floor = if h.client_seq == STAT_DIGEST {
            self.store.clone_list(h.chunk)?.map_or(0, |c| c.floor)
        } else {
            h.snap_seq
        };
        Ok(Frame::new(Header {
            offset: st.committed_len,
            version: st.committed_version,
            client_seq: digest,
            snap_seq: floor,
            ..Header::reply_to(h)
        }))
    }

    /// Lists this replica's snapshot state of a chunk
    /// ([`Opcode::Clones`]); see [`crate::resync`].
    async fn clones(&self, h: &Header) -> Result<Frame> {
        let _lock = self.lock(h.chunk).await?;
        let Some(list) = self.store.clone_list(h.chunk)? else {
            return Err(Reject::new(
                ErrorCode::NotFound,
                format!("{} is not stored here", h.chunk),
            ));
        };
        Frame::data_reply(h, list.encode())
            .map_err(|e| Reject::new(ErrorCode::Internal, format!("clone list reply: {e}")))
    }

    /// Stores a piece of a sync source's clone of a chunk
    /// ([`Opcode::InstallClone`]); see [`crate::resync`].
    async fn install_clone(&self, h: &Header, frame: &Frame) -> Result<Frame> {
        let _lock = self.lock(h.chunk).await?;
        let (crcs, seals) = (crcs_of(&frame.crcs), seals_of(&frame.seals));
        let piece = WriteIn {
            offset: h.offset,
            data: &frame.payload,
            segment_crcs: &crcs,
            seals: &seals,
            snap: Snap::default(),
        };
        let clone = crate::store::CloneHeader {
            version: h.version,
            len: h.client_seq,
            birth: h.client_id.0,
        };
        self.store
            .install_clone_piece(h.chunk, h.snap_seq, clone, piece)
            .await
            .map_err(|e| self.store_error(h.chunk, e))?;
        self.metrics.installed(frame.payload.len() as u64);
        Ok(Frame::reply(h))
    }

    /// Stores a piece of a sync source's copy of a chunk
    /// ([`Opcode::Install`]); see [`crate::resync`].
    async fn install(&self, route: &Route, h: &Header, frame: &Frame) -> Result<Frame> {
        let _lock = self.lock(h.chunk).await?;
        if h.offset == 0 && h.client_id.0 != 0 {
            let now = self.replica_state(h.chunk)?;
            if now != h.client_id.0 {
                self.metrics.stale_install();
                return Err(Reject::new(
                    ErrorCode::StaleSequence,
                    format!(
                        "{} changed here since the sync source compared it: a late copy, not installed",
                        h.chunk
                    ),
                ));
            }
        }
        let (crcs, seals) = (crcs_of(&frame.crcs), seals_of(&frame.seals));
        let piece = WriteIn {
            offset: h.offset,
            data: &frame.payload,
            segment_crcs: &crcs,
            seals: &seals,
            // The copy comes without clones: no snapshot up to the
            // newest one is read from it here.
            snap: Snap {
                seq: self.control.snap_seq(),
                no_clone: false,
            },
        };
        self.store
            .install_piece(route.chain_id, h.chunk, h.version, h.client_seq, piece)
            .await
            .map_err(|e| self.store_error(h.chunk, e))?;
        self.metrics.installed(frame.payload.len() as u64);
        if h.offset + frame.payload.len() as u64 >= h.client_seq {
            // The whole copy of the head's committed version is here.
            self.diverged.borrow_mut().remove(&h.chunk);
            self.checked(h.chunk);
        }
        Ok(Self::versioned_reply(h, h.version))
    }

    /// Removes the chunk down the chain: successors first, so a failure
    /// leaves the head still holding it and a retry completes the removal.
    async fn remove(&self, route: &Route, h: &Header) -> Result<Frame> {
        // Counted like a write: a resync drains removals routed with an
        // older chain version before it copies, or a removal waiting here
        // for a chunk the resync holds would go down the old chain after
        // the copy and leave the new member the only holder.
        let _inflight = route.is_head.then(|| self.count_inflight(route));
        let _lock = self.lock(h.chunk).await?;
        if !route.is_tail {
            let next = route.successor()?;
            let f = Frame::new(Header {
                chunk: h.chunk,
                chain: h.chain,
                chain_version: ChainVersion(route.chain_version),
                token: h.token,
                ..Header::request(Opcode::Remove, 0)
            });
            let reply = self.peers.call(&next.addr, f).await?;
            if let Some(code) = reply.error_code() {
                return Err(Reject::new(
                    code,
                    format!(
                        "successor {} refused the removal: {}",
                        next.addr,
                        reply.error_message().unwrap_or_default()
                    ),
                ));
            }
        }
        self.store.remove(h.chunk).await?;
        Ok(Frame::reply(h))
    }
}

impl Shard {
    /// Removes a list of chunks down the chain ([`Opcode::RemoveMany`]):
    /// as [`Self::remove`], successors first, each successor shard sent its
    /// part of the list in one request, then this replica's part in one
    /// metadata batch and flush.
    async fn remove_many(&self, route: &Route, h: &Header, frame: &Frame) -> Result<Frame> {
        frame.verify_payload().map_err(|e| {
            Reject::new(
                ErrorCode::Checksum,
                format!("the chunk list failed its CRC: {e}"),
            )
        })?;
        let mut chunks = cairn_proto::frame::decode_chunk_list(&frame.payload)
            .map_err(|m| Reject::new(ErrorCode::BadRequest, m))?;
        if let Some(c) = chunks
            .iter()
            .find(|&&c| shard_of(c, self.shards) != self.shard)
        {
            return Err(Reject::new(
                ErrorCode::Invalid,
                format!(
                    "{c} in a removal list does not belong to shard {}",
                    self.shard
                ),
            ));
        }
        chunks.sort_unstable();
        chunks.dedup();
        let _inflight = route.is_head.then(|| self.count_inflight(route));
        let mut guards = Vec::with_capacity(chunks.len());
        for &c in &chunks {
            guards.push(self.lock(c).await?);
        }
        if !route.is_tail {
            let mut parts: HashMap<String, Vec<ChunkId>> = HashMap::new();
            for &c in &chunks {
                let next = route
                    .view
                    .successor(route.chain_id, route.target, c)
                    .ok_or_else(|| {
                        Reject::new(
                            ErrorCode::Unavailable,
                            format!("no address for the successor in chain {}", route.chain_id),
                        )
                    })?;
                parts.entry(next.addr).or_default().push(c);
            }
            for (addr, part) in parts {
                let header = Header {
                    chunk: part[0],
                    chain: h.chain,
                    chain_version: ChainVersion(route.chain_version),
                    token: h.token,
                    ..Header::request(Opcode::RemoveMany, 0)
                };
                let f = Frame::with_payload(header, cairn_proto::frame::encode_chunk_list(&part))
                    .map_err(|e| Reject::new(ErrorCode::Internal, e.to_string()))?;
                let reply = self.peers.call(&addr, f).await?;
                if let Some(code) = reply.error_code() {
                    return Err(Reject::new(
                        code,
                        format!(
                            "successor {addr} refused the removal of {} chunks: {}",
                            part.len(),
                            reply.error_message().unwrap_or_default()
                        ),
                    ));
                }
            }
        }
        self.store
            .remove_many(&chunks)
            .await
            .map_err(|e| self.store_error(h.chunk, e))?;
        drop(guards);
        Ok(Frame::reply(h))
    }
}

#[cfg(test)]
mod tests {
    use cairn_proto::ids::ObjectId;

    use super::*;

    fn c(i: u64) -> ChunkId {
        ChunkId {
            object: ObjectId(i),
            index: 0,
        }
    }

    #[test]
    fn dedup_answers_retries_and_refuses_older_sequences() {
        let mut d = Dedup::default();
        assert!(d.check(c(1), 7, 1).unwrap().is_none());
        d.record(c(1), 7, 2, 10);
        assert!(
            d.check(c(1), 7, 1).unwrap().is_none(),
            "pipelined, not a retry"
        );
        d.record(c(1), 7, 1, 11);
        assert_eq!(d.check(c(1), 7, 2).unwrap(), Some(10), "retry");
        assert_eq!(d.check(c(1), 7, 1).unwrap(), Some(11), "retry");
        assert!(d.check(c(1), 8, 2).unwrap().is_none(), "other client");
        assert!(d.check(c(2), 7, 2).unwrap().is_none(), "other chunk");
        assert!(d.check(c(1), 0, 0).unwrap().is_none(), "no client id");
        for s in 100..100 + DEDUP_WINDOW as u64 {
            d.record(c(1), 7, s, s);
        }
        let e = d.check(c(1), 7, 3).unwrap_err();
        assert_eq!(e.code, ErrorCode::StaleSequence, "late retry refused");
    }

    #[test]
    fn dedup_is_bounded() {
        let mut d = Dedup::default();
        for i in 0..(DEDUP_ENTRIES as u64 + 10) {
            d.record(c(i), 1, 1, 1);
        }
        assert_eq!(d.seen.len(), DEDUP_ENTRIES);
        assert!(d.check(c(0), 1, 1).unwrap().is_none(), "oldest evicted");
    }
}
