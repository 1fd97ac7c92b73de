//! The Raft transport between metadata replicas, over tonic, and the
//! openraft configuration.
//!
//! * Client side: [`Network`] (openraft's `RaftNetworkFactory`) hands out a
//!   [`NetworkConnection`] per target. Connections share one cache of
//!   tonic channels, keyed by node id and address; a channel is connected
//!   lazily on the first RPC (connect timeout [`CONNECT_TIMEOUT`],
//!   `TCP_NODELAY` on: without it every RPC waits ~40 ms for Nagle) and
//!   dropped on a transport error, so the next RPC reconnects.
//!   AppendEntries after a connection's first go over one long-lived
//!   `AppendStream` call per connection (one DATA frame each way per
//!   append, no new HTTP/2 stream, no server task per message), opened on
//!   the second append and dropped on any failure or timeout, so the next
//!   append opens a new one (see `NetworkConnection::exchange`); a peer
//!   that answers UNIMPLEMENTED (an older version) gets unary appends for
//!   [`UNARY_FALLBACK`] before a stream is tried again. Votes, snapshots
//!   and read indexes stay unary: they are rare.
//! * Server side: [`RaftTransport`] implements the generated
//!   `cairn.raft.v1.Raft` service and feeds requests to the local
//!   [`MetaRaft`]; its server must allow messages of
//!   [`MAX_MESSAGE_BYTES`] both ways.
//! * [`raft_config`]: the openraft [`Config`](openraft::Config) of a replica.
//!
//! Elided appends: openraft 0.9 follows every commit with an empty
//! AppendEntries to each follower (a commit notice) and waits for its
//! answer before the next entry goes out, so each metadata mutation cost
//! four Raft RPCs on the leader where two carry anything. A
//! [`NetworkConnection`] answers an empty append itself ("success") when
//! the same peer acknowledged a real append under the same vote, ending
//! at the same log id, less than [`ELIDE_WINDOW`] ago; the peer learns the
//! commit index from the next real message (the next entry, or a
//! heartbeat at most one interval later). What the answer claims is true
//! of the peer as of that real acknowledgement: it still matches that log
//! id (an acknowledged entry is durable there), and it has not voted for
//! anyone else (openraft's followers refuse to before `election_timeout`
//! has passed since they heard from their leader). It only dates the
//! acknowledgement up to [`ELIDE_WINDOW`] late, and what relies on that
//! date — openraft's read index and the read lease (`crate::lease`, which
//! subtracts the window) — has margins of hundreds of milliseconds. It
//! never claims a new entry replicated, so it never commits anything.
//!
//! Wire format: every openraft request, and every `Result<response,
//! RaftError>` reply, travels as bincode (varint, little-endian, at most
//! [`MAX_MESSAGE_BYTES`], no trailing bytes) in `RaftMessage.payload`.
//! `ReadIndex` replies carry `Result<Option<LogId>, String>`.
//!
//! Invariants:
//!
//! * Nothing from the network panics a replica: bad payloads are answered
//!   with `INVALID_ARGUMENT`, bad replies become `RPCError::Network`.
//! * A replica refuses messages that name another cluster
//!   (`FAILED_PRECONDITION`) once it knows its own cluster id, and a client
//!   refuses replies that name another cluster: a replica whose disk was
//!   reused never joins the wrong group.
//! * Transport failures map to openraft's retry classes: `Unreachable`
//!   (openraft backs off) for a peer that is down or will refuse us again,
//!   `Network` (retried at once) for everything else, `Timeout` when the
//!   RPC outlives `RPCOption::hard_ttl()`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bincode::Options;
use cairn_proto::raft::RaftMessage;
use cairn_proto::raft::raft_client::RaftClient;
use cairn_proto::raft::raft_server::Raft;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{
    AnyError, BasicNode, RPCTypes, RaftNetwork, RaftNetworkFactory, SnapshotPolicy, Vote,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use super::log_store::DurableLog;
use super::types::{LogId, MetaRaft, TypeConfig};

/// Largest Raft message, either way (gRPC's default of 4 MiB is too small
/// for a full append batch of large entries).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// How long connecting to a peer may take before it counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// How long after a peer acknowledged an append an empty one to it (a
/// commit notice or a heartbeat) is answered "success" on its behalf
/// instead of being sent; see the module docs.
pub const ELIDE_WINDOW: Duration = Duration::from_millis(5);

/// Deadline of a whole [`read_index`] call.
pub const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(2);

/// Snapshot chunks are this large (well under [`MAX_MESSAGE_BYTES`]).
const SNAPSHOT_CHUNK_BYTES: u64 = 4 << 20;

/// A chunk's deadline: the receiver imports and flushes the whole snapshot
/// before answering the last one.
const INSTALL_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);

/// The id of the cluster a replica belongs to, shared by the transport's
/// client and server halves and the node; empty until the replica knows
/// it (a new replica learns it when it joins).
#[derive(Clone, Debug, Default)]
pub struct ClusterId(Arc<RwLock<String>>);

impl ClusterId {
    /// Returns a handle holding `id` (empty: unknown).
    pub fn new(id: impl Into<String>) -> Self {
        Self(Arc::new(RwLock::new(id.into())))
    }

    /// Returns the cluster id, empty when unknown.
    pub fn get(&self) -> String {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Sets the cluster id, for every holder of this handle.
    pub fn set(&self, id: &str) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = id.to_string();
    }
}

impl From<String> for ClusterId {
    fn from(id: String) -> Self {
        Self::new(id)
    }
}

impl From<&str> for ClusterId {
    fn from(id: &str) -> Self {
        Self::new(id)
    }
}

/// Returns the bincode options of the wire format.
fn codec() -> impl Options {
    bincode::DefaultOptions::new().with_limit(MAX_MESSAGE_BYTES as u64)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, bincode::Error> {
    codec().serialize(value)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    codec().deserialize(bytes)
}

/// Returns the URI of a node address (`host:port`, or a full URI).
fn uri(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// Connects a channel to `addr`.
async fn connect(addr: &str) -> Result<Channel, Failure> {
    let endpoint = Endpoint::from_shared(uri(addr))
        .map_err(|e| Failure::Unreachable(AnyError::new(&e).add_context(|| addr.to_string())))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    endpoint
        .connect()
        .await
        .map_err(|e| Failure::Unreachable(AnyError::new(&e).add_context(|| addr.to_string())))
}

fn client(channel: Channel) -> RaftClient<Channel> {
    RaftClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// The four RPCs of the service.
#[derive(Clone, Copy, Debug)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
    ReadIndex,
}

/// Sends one message on `channel`; returns the reply payload.
async fn call(
    channel: Channel,
    rpc: Rpc,
    payload: Vec<u8>,
    cluster_id: &ClusterId,
    to_node_id: u64,
) -> Result<Vec<u8>, Status> {
    let mut client = client(channel);
    let ours = cluster_id.get();
    let request = Request::new(RaftMessage {
        payload,
        cluster_id: ours.clone(),
        to_node_id,
    });
    let reply = match rpc {
        Rpc::AppendEntries => client.append_entries(request).await,
        Rpc::Vote => client.vote(request).await,
        Rpc::InstallSnapshot => client.install_snapshot(request).await,
        Rpc::ReadIndex => client.read_index(request).await,
    }?
    .into_inner();
    check_reply_cluster(&ours, &reply)?;
    Ok(reply.payload)
}

/// Refuses a reply from a replica of another cluster than `ours`.
fn check_reply_cluster(ours: &str, reply: &RaftMessage) -> Result<(), Status> {
    if !ours.is_empty() && !reply.cluster_id.is_empty() && reply.cluster_id != ours {
        return Err(Status::failed_precondition(format!(
            "reply from cluster {}, this replica belongs to {ours}",
            reply.cluster_id
        )));
    }
    Ok(())
}

/// Why an RPC did not get a reply, in openraft's retry classes.
#[derive(Debug)]
enum Failure {
    /// Back off before retrying.
    Unreachable(AnyError),
    /// Retry at once.
    Network(AnyError),
}

impl Failure {
    fn from_status(status: &Status) -> Self {
        let e = AnyError::error(format!("{:?}: {}", status.code(), status.message()));
        match status.code() {
            // Down, or it will refuse us again the same way.
            Code::Unavailable
            | Code::FailedPrecondition
            | Code::InvalidArgument
            | Code::Unimplemented
            | Code::PermissionDenied
            | Code::Unauthenticated => Failure::Unreachable(e),
            _ => Failure::Network(e),
        }
    }

    fn into_rpc<E: std::error::Error>(self) -> RPCError<u64, BasicNode, E> {
        match self {
            Failure::Unreachable(e) => RPCError::Unreachable(Unreachable::from(e)),
            Failure::Network(e) => RPCError::Network(NetworkError::from(e)),
        }
    }
}

/// Whether a status means the connection itself is broken.
fn is_transport_error(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
    )
}

type ChannelCache = Arc<Mutex<HashMap<u64, (String, Channel)>>>;
type Contacts = Arc<Mutex<HashMap<u64, std::time::Instant>>>;

/// openraft's network factory: hands out connections to peers over one
/// shared channel cache.
#[derive(Clone, Debug)]
pub struct Network {
    cluster_id: ClusterId,
    channels: ChannelCache,
    contacts: Contacts,
    /// Caps the commit index sent to followers (see
    /// [`Network::cap_commit_at`]).
    durable: Option<DurableLog>,
}

impl Network {
    /// Returns a network that stamps messages with `cluster_id` (a shared
    /// [`ClusterId`] handle, or a fixed id).
    pub fn new(cluster_id: impl Into<ClusterId>) -> Self {
        Self {
            cluster_id: cluster_id.into(),
            channels: Arc::default(),
            contacts: Arc::default(),
            durable: None,
        }
    }

    /// Never tells a follower of a commit index past what this replica's
    /// own log has on stable storage. A leader whose log acknowledges its
    /// own entries before their sync
    /// ([`crate::raft::replicate_during_sync`]) may
    /// count an entry committed with one follower's durable copy and its
    /// own unsynced one; capping keeps followers from applying it until
    /// two copies are durable. (Followers only ever raise their commit
    /// index, so a lower one is merely late news.)
    #[must_use]
    pub fn cap_commit_at(mut self, durable: DurableLog) -> Self {
        self.durable = Some(durable);
        self
    }

    /// Returns when peer `target` last answered a Raft RPC of ours.
    pub fn last_contact(&self, target: u64) -> Option<std::time::Instant> {
        self.contacts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&target)
            .copied()
    }

    /// Asks replica `target` at `addr` (the leader) for a read index over
    /// the cached channel; see [`read_index`].
    ///
    /// # Errors
    /// A description of the failure; it contains "not leader" when `target`
    /// is not the leader.
    pub async fn read_index(&self, target: u64, addr: &str) -> Result<Option<LogId>, String> {
        let peer = Peer {
            target,
            addr: addr.to_string(),
            cluster_id: self.cluster_id.clone(),
            channels: self.channels.clone(),
            contacts: self.contacts.clone(),
        };
        let call = peer.call(Rpc::ReadIndex, Vec::new());
        let bytes = match tokio::time::timeout(READ_INDEX_TIMEOUT, call).await {
            Err(_) => {
                // A connection that stalled (e.g. across a partition) may
                // never recover: reconnect next time.
                peer.forget();
                return Err(format!("read index from {addr}: timed out"));
            }
            Ok(Err(Failure::Unreachable(e) | Failure::Network(e))) => {
                return Err(format!("read index from {addr}: {e}"));
            }
            Ok(Ok(bytes)) => bytes,
        };
        decode_read_index(addr, &bytes)
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = NetworkConnection;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> NetworkConnection {
        NetworkConnection {
            node: node.clone(),
            acked: None,
            durable: self.durable.clone(),
            stream: None,
            unary_until: None,
            appended: false,
            peer: Peer {
                target,
                addr: node.addr.clone(),
                cluster_id: self.cluster_id.clone(),
                channels: self.channels.clone(),
                contacts: self.contacts.clone(),
            },
        }
    }
}

/// One peer's address and the shared channel cache.
#[derive(Debug)]
struct Peer {
    target: u64,
    addr: String,
    cluster_id: ClusterId,
    channels: ChannelCache,
    contacts: Contacts,
}

impl Peer {
    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (String, Channel)>> {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns the cached channel, connecting one if needed.
    async fn channel(&self) -> Result<Channel, Failure> {
        if let Some((addr, channel)) = self.cache().get(&self.target)
            && *addr == self.addr
        {
            return Ok(channel.clone());
        }
        let channel = connect(&self.addr).await?;
        self.cache()
            .insert(self.target, (self.addr.clone(), channel.clone()));
        Ok(channel)
    }

    /// Drops the cached channel, if it is still the one for our address.
    fn forget(&self) {
        let mut cache = self.cache();
        if cache
            .get(&self.target)
            .is_some_and(|(a, _)| *a == self.addr)
        {
            cache.remove(&self.target);
        }
    }

    async fn call(&self, rpc: Rpc, payload: Vec<u8>) -> Result<Vec<u8>, Failure> {
        let channel = self.channel().await?;
        let r = call(channel, rpc, payload, &self.cluster_id, self.target).await;
        self.outcome(rpc, r)
    }

    /// Notes a reply as contact, or a failure (dropping a broken channel).
    fn outcome(&self, rpc: Rpc, r: Result<Vec<u8>, Status>) -> Result<Vec<u8>, Failure> {
        match r {
            Ok(bytes) => {
                self.contacts
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(self.target, std::time::Instant::now());
                Ok(bytes)
            }
            Err(status) => {
                if is_transport_error(&status) {
                    self.forget();
                }
                tracing::debug!(target_node = self.target, addr = %self.addr, ?rpc, %status, "raft rpc failed");
                Err(Failure::from_status(&status))
            }
        }
    }

    /// Opens an append stream on the cached channel.
    async fn open_stream(&self) -> Result<AppendStream, Status> {
        let channel = self.channel().await.map_err(|f| match f {
            Failure::Unreachable(e) => Status::unavailable(e.to_string()),
            Failure::Network(e) => Status::unknown(e.to_string()),
        })?;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let replies = client(channel)
            .append_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(AppendStream { tx, replies })
    }

    /// Sends one append on `stream` and reads its reply.
    async fn exchange(
        &self,
        stream: &mut AppendStream,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, Status> {
        let ours = self.cluster_id.get();
        stream
            .tx
            .send(RaftMessage {
                payload,
                cluster_id: ours.clone(),
                to_node_id: self.target,
            })
            .await
            .map_err(|_| Status::unavailable("the append stream was closed"))?;
        let reply = stream
            .replies
            .message()
            .await?
            .ok_or_else(|| Status::unavailable("the append stream ended"))?;
        check_reply_cluster(&ours, &reply)?;
        Ok(reply.payload)
    }
}

/// A long-lived `AppendStream` call to one peer (see the proto): one reply
/// per message, in order. Its holder takes it for each exchange and puts
/// it back only after reading the reply, so a call dropped in between (a
/// timeout) drops the stream with it, and no reply can answer the wrong
/// message.
#[derive(Debug)]
struct AppendStream {
    tx: tokio::sync::mpsc::Sender<RaftMessage>,
    replies: tonic::Streaming<RaftMessage>,
}

/// How long a connection sends appends as unary calls after the peer
/// answered UNIMPLEMENTED to a stream (an older version), before it tries
/// a stream again.
const UNARY_FALLBACK: Duration = Duration::from_secs(60);

/// A connection to one peer, used by openraft's replication and election
/// tasks.
#[derive(Debug)]
pub struct NetworkConnection {
    node: BasicNode,
    peer: Peer,
    /// The peer's answer to the last append sent to it, if it was a
    /// success (see [`ELIDE_WINDOW`]).
    acked: Option<Acked>,
    /// See [`Network::cap_commit_at`].
    durable: Option<DurableLog>,
    /// The append stream to the peer, once open.
    stream: Option<AppendStream>,
    /// Appends go as unary calls until then (the peer has no streams).
    unary_until: Option<Instant>,
    /// Whether this connection sent an append yet.
    appended: bool,
}

/// An append the peer acknowledged: when it was sent, under which vote,
/// and the log id the peer then matched.
#[derive(Debug, Clone)]
struct Acked {
    sent: Instant,
    vote: Vote<u64>,
    matched: Option<LogId>,
}

impl Acked {
    /// Whether `rpc` can be answered for the peer (see [`ELIDE_WINDOW`]):
    /// it carries no entry, under the same vote, from the log id the peer
    /// acknowledged less than the window ago.
    fn covers(&self, rpc: &AppendEntriesRequest<TypeConfig>, now: Instant) -> bool {
        rpc.entries.is_empty()
            && now.saturating_duration_since(self.sent) < ELIDE_WINDOW
            && self.vote == rpc.vote
            && self.matched == rpc.prev_log_id
    }
}

impl NetworkConnection {
    /// Sends `payload` and decodes the peer's `Result`, within the RPC's
    /// hard TTL. `sender` is our node id (from the request's vote), for the
    /// timeout report.
    async fn send<Resp, E>(
        &mut self,
        action: RPCTypes,
        rpc: Rpc,
        payload: Vec<u8>,
        option: &RPCOption,
        sender: u64,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let ttl = option.hard_ttl();
        let bytes = match tokio::time::timeout(ttl, self.exchange(rpc, payload)).await {
            Err(_) => {
                // A connection that stalls (packets dropped by a partition)
                // can take TCP's retransmission backoff — seconds — to
                // recover after the network heals: start afresh instead.
                self.peer.forget();
                return Err(RPCError::Timeout(Timeout {
                    action,
                    id: sender,
                    target: self.peer.target,
                    timeout: ttl,
                }));
            }
            Ok(Err(failure)) => return Err(failure.into_rpc()),
            Ok(Ok(bytes)) => bytes,
        };
        let reply: Result<Resp, RaftError<u64, E>> = decode(&bytes).map_err(|e| {
            RPCError::Network(NetworkError::from(
                AnyError::new(&*e).add_context(|| format!("decoding {rpc:?} reply")),
            ))
        })?;
        reply.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.peer.target,
                self.node.clone(),
                e,
            ))
        })
    }

    /// Sends `payload` as `rpc` and returns the reply's payload: appends
    /// after a connection's first on the peer's append stream (opened then,
    /// dropped on any failure so the next append opens a new one), the
    /// rest as unary calls. The first goes unary because openraft makes a
    /// connection for each single append of a leadership check (a read
    /// index), where opening a stream would cost a round trip more; its
    /// replication tasks keep theirs.
    async fn exchange(&mut self, rpc: Rpc, payload: Vec<u8>) -> Result<Vec<u8>, Failure> {
        let append = matches!(rpc, Rpc::AppendEntries);
        let streams =
            append && self.appended && self.unary_until.is_none_or(|t| Instant::now() >= t);
        self.appended |= append;
        if !streams {
            return self.peer.call(rpc, payload).await;
        }
        let mut stream = match self.stream.take() {
            Some(s) => s,
            None => match self.peer.open_stream().await {
                Ok(s) => s,
                Err(status) if status.code() == Code::Unimplemented => {
                    tracing::info!(target_node = self.peer.target, addr = %self.peer.addr,
                        "the peer serves no append stream (an older version): unary appends");
                    self.unary_until = Some(Instant::now() + UNARY_FALLBACK);
                    return self.peer.call(rpc, payload).await;
                }
                Err(status) => return self.peer.outcome(rpc, Err(status)),
            },
        };
        let r = self.peer.exchange(&mut stream, payload).await;
        if r.is_ok() {
            self.stream = Some(stream);
        }
        self.peer.outcome(rpc, r)
    }
}

/// Maps a request that cannot be encoded to an RPC error.
fn encode_failed<E: std::error::Error>(e: &bincode::Error) -> RPCError<u64, BasicNode, E> {
    RPCError::Network(NetworkError::from(
        AnyError::new(&**e).add_context(|| "encoding raft request"),
    ))
}

impl RaftNetwork<TypeConfig> for NetworkConnection {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        if let Some(durable) = &self.durable {
            rpc.leader_commit = durable.clamp(rpc.leader_commit);
        }
        let sent = Instant::now();
        if self.acked.as_ref().is_some_and(|a| a.covers(&rpc, sent)) {
            return Ok(AppendEntriesResponse::Success);
        }
        let payload = match encode(&rpc) {
            Ok(p) => p,
            Err(e) if matches!(*e, bincode::ErrorKind::SizeLimit) && rpc.entries.len() > 1 => {
                // openraft retries at once with fewer entries.
                let hint = (rpc.entries.len() / 2) as u64;
                return Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(hint),
                ));
            }
            Err(e) => return Err(encode_failed(&e)),
        };
        let sender = rpc.vote.leader_id().voted_for().unwrap_or_default();
        let matched = rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id);
        let r = self
            .send(
                RPCTypes::AppendEntries,
                Rpc::AppendEntries,
                payload,
                &option,
                sender,
            )
            .await;
        self.acked = match r {
            Ok(AppendEntriesResponse::Success) => Some(Acked {
                sent,
                vote: rpc.vote,
                matched,
            }),
            _ => None,
        };
        r
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        let payload = encode(&rpc).map_err(|e| encode_failed(&e))?;
        let sender = rpc.vote.leader_id().voted_for().unwrap_or_default();
        self.send(
            RPCTypes::InstallSnapshot,
            Rpc::InstallSnapshot,
            payload,
            &option,
            sender,
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let payload = encode(&rpc).map_err(|e| encode_failed(&e))?;
        let sender = rpc.vote.leader_id().voted_for().unwrap_or_default();
        self.send(RPCTypes::Vote, Rpc::Vote, payload, &option, sender)
            .await
    }
}

/// Decodes a `ReadIndex` reply.
fn decode_read_index(addr: &str, bytes: &[u8]) -> Result<Option<LogId>, String> {
    decode::<Result<Option<LogId>, String>>(bytes)
        .map_err(|e| format!("read index from {addr}: undecodable reply: {e}"))?
}

/// Asks the replica at `addr` (the leader) for a linearizable read index
/// over a new connection: the leader confirms its leadership with a quorum
/// and answers the log id a read must wait for (`None`: nothing committed
/// yet). Replicas that ask often should use [`Network::read_index`], which
/// reuses a cached channel.
///
/// # Errors
/// A description of the failure; it contains "not leader" when the replica
/// at `addr` is not the leader.
pub async fn read_index(addr: &str, cluster_id: &str) -> Result<Option<LogId>, String> {
    let ids = ClusterId::new(cluster_id);
    let ask = async {
        let channel = connect(addr).await.map_err(|f| match f {
            Failure::Unreachable(e) | Failure::Network(e) => e.to_string(),
        })?;
        call(channel, Rpc::ReadIndex, Vec::new(), &ids, 0)
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    };
    let bytes = match tokio::time::timeout(READ_INDEX_TIMEOUT, ask).await {
        Err(_) => return Err(format!("read index from {addr}: timed out")),
        Ok(Err(e)) => return Err(format!("read index from {addr}: {e}")),
        Ok(Ok(bytes)) => bytes,
    };
    decode_read_index(addr, &bytes)
}

/// The server half: the `cairn.raft.v1.Raft` service of a replica.
#[derive(Clone)]
pub struct RaftTransport {
    raft: MetaRaft,
    node_id: u64,
    cluster_id: ClusterId,
    /// The server's stop signal: ends the append streams.
    stop: tokio::sync::watch::Receiver<bool>,
    /// This replica's read lease, whose office floor a read index this
    /// replica confirms as leader must not be below.
    lease: Option<crate::lease::LeaderLease>,
}

impl RaftTransport {
    /// Returns the service feeding `raft`, refusing messages of clusters
    /// other than `cluster_id` (a shared [`ClusterId`] handle, or a fixed
    /// id; empty: unknown, nothing is refused) and messages addressed to a
    /// node id other than `node_id`. Its append streams end once `stop`
    /// (the server's own stop signal) turns true or its sender is gone: a
    /// graceful shutdown waits for every call to end, and an append stream
    /// otherwise ends only when its leader closes it.
    pub fn new(
        raft: MetaRaft,
        node_id: u64,
        cluster_id: impl Into<ClusterId>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            raft,
            node_id,
            cluster_id: cluster_id.into(),
            stop,
            lease: None,
        }
    }

    /// Makes the read indexes this replica confirms as leader cover its
    /// log as far as it reached when it took office
    /// ([`crate::lease::LeaderLease::applied_through_office`]).
    #[must_use]
    pub fn with_lease(mut self, lease: crate::lease::LeaderLease) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Refuses a message of another cluster or for another node id.
    fn check(&self, msg: &RaftMessage) -> Result<(), Status> {
        let ours = self.cluster_id.get();
        if !ours.is_empty() && !msg.cluster_id.is_empty() && msg.cluster_id != ours {
            return Err(Status::failed_precondition(format!(
                "message from cluster {}, this replica belongs to {ours}",
                msg.cluster_id
            )));
        }
        if msg.to_node_id != 0 && msg.to_node_id != self.node_id {
            return Err(Status::failed_precondition(format!(
                "message for node {} reached node {} (a replaced replica at a reused address)",
                msg.to_node_id, self.node_id
            )));
        }
        Ok(())
    }

    /// Checks the sender's cluster id and decodes the payload.
    fn open<T: DeserializeOwned>(&self, request: Request<RaftMessage>) -> Result<T, Status> {
        self.open_message(request.into_inner())
    }

    /// [`Self::open`] of a message of a stream.
    fn open_message<T: DeserializeOwned>(&self, msg: RaftMessage) -> Result<T, Status> {
        self.check(&msg)?;
        decode(&msg.payload)
            .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
    }

    /// Encodes a reply.
    fn reply<T: Serialize>(&self, value: &T) -> Result<Response<RaftMessage>, Status> {
        let payload =
            encode(value).map_err(|e| Status::internal(format!("encoding raft reply: {e}")))?;
        Ok(Response::new(RaftMessage {
            payload,
            cluster_id: self.cluster_id.get(),
            to_node_id: 0,
        }))
    }
}

/// Describes a failed read index; "not leader" for a follower.
fn describe_read_index_error(
    e: &RaftError<u64, openraft::error::CheckIsLeaderError<u64, BasicNode>>,
) -> String {
    match e.forward_to_leader::<BasicNode>() {
        Some(f) => match (&f.leader_id, &f.leader_node) {
            (Some(id), Some(node)) => format!("not leader; leader is node {id} at {}", node.addr),
            (Some(id), None) => format!("not leader; leader is node {id}"),
            _ => "not leader; leader unknown".to_string(),
        },
        None => e.to_string(),
    }
}

/// The replies of an append stream, in the order of its requests.
type AppendReplies =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftMessage, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Raft for RaftTransport {
    type AppendStreamStream = AppendReplies;

    /// Each message is handled as [`Self::append_entries`] handles a call,
    /// one at a time and in order, by the task that serves the stream (no
    /// task per message); the first failure ends the stream with its
    /// status.
    #[tracing::instrument(level = "debug", skip_all)]
    async fn append_stream(
        &self,
        request: Request<tonic::Streaming<RaftMessage>>,
    ) -> Result<Response<AppendReplies>, Status> {
        use futures::StreamExt as _;
        let this = self.clone();
        let replies = request.into_inner().then(move |msg| {
            let this = this.clone();
            async move {
                let rpc: AppendEntriesRequest<TypeConfig> = this.open_message(msg?)?;
                let result = this.raft.append_entries(rpc).await;
                this.reply(&result).map(Response::into_inner)
            }
        });
        let mut stop = self.stop.clone();
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        Ok(Response::new(Box::pin(replies.take_until(stopped))))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = self.open(request)?;
        let result = self.raft.append_entries(rpc).await;
        self.reply(&result)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<u64> = self.open(request)?;
        let result = self.raft.vote(rpc).await;
        self.reply(&result)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = self.open(request)?;
        let result = self.raft.install_snapshot(rpc).await;
        self.reply(&result)
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn read_index(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        // The payload is empty; only the ids are checked.
        self.check(&request.into_inner())?;
        let mut result: Result<Option<LogId>, String> = self
            .raft
            .ensure_linearizable()
            .await
            .map_err(|e| describe_read_index_error(&e));
        if let (Ok(id), Some(lease)) = (&result, &self.lease) {
            result = lease
                .applied_through_office(&self.raft, READ_INDEX_FLOOR_TIMEOUT)
                .await
                .map(|applied| (*id).max(applied));
        }
        self.reply(&result)
    }
}

/// How long a read index request waits for a new leader to apply the log
/// its predecessors left (a follower's own wait is longer).
const READ_INDEX_FLOOR_TIMEOUT: Duration = Duration::from_secs(5);

/// Returns the shortest election timeout of a replica configured with
/// `election_timeout` (openraft picks each timeout between the two).
pub fn election_timeout_min(election_timeout: Duration) -> Duration {
    election_timeout * 3 / 5
}

/// Returns the openraft configuration of a replica: heartbeat every
/// `heartbeat`, elections after 0.6 × `election_timeout` .. `election_timeout`
/// of silence (openraft 0.9 also makes followers honour the old leader's
/// lease, `election_timeout`, before they vote, so a leader's loss is
/// noticed and replaced within 1.6–2 × `election_timeout`: under the 3 s of
/// DESIGN §10 with the default 1 s), a snapshot (and log compaction) every `snapshot_every`
/// entries keeping the last `min(snapshot_every, 1000)` entries for lagging
/// followers, purges in
/// batches of 256.
///
/// # Errors
/// The election timeout is not longer than the heartbeat, a duration rounds
/// to zero milliseconds, or `snapshot_every` is 0.
#[allow(clippy::result_large_err)] // openraft's error type
pub fn raft_config(
    heartbeat: Duration,
    election_timeout: Duration,
    snapshot_every: u64,
) -> Result<openraft::Config, openraft::ConfigError> {
    if snapshot_every == 0 {
        return Err(openraft::ConfigError::InvalidSnapshotPolicy {
            invalid: "0".to_string(),
            syntax: "snapshot-every > 0".to_string(),
        });
    }
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let election = ms(election_timeout);
    openraft::Config {
        cluster_name: "cairn-meta".to_string(),
        heartbeat_interval: ms(heartbeat),
        election_timeout_min: ms(election_timeout_min(election_timeout)),
        election_timeout_max: election,
        install_snapshot_timeout: ms(INSTALL_SNAPSHOT_TIMEOUT),
        snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: snapshot_every.min(1000),
        purge_batch_size: 256,
        enable_tick: true,
        enable_heartbeat: true,
        enable_elect: true,
        ..openraft::Config::default()
    }
    .validate()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(openraft::CommittedLeaderId::new(term, 1), index)
    }

    fn append(
        term: u64,
        prev: Option<LogId>,
        entries: &[LogId],
    ) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(term, 1),
            prev_log_id: prev,
            entries: entries
                .iter()
                .map(|id| super::super::types::Entry {
                    log_id: *id,
                    payload: openraft::EntryPayload::Blank,
                })
                .collect(),
            leader_commit: prev,
        }
    }

    #[test]
    fn only_an_empty_append_right_after_a_matching_ack_is_answered_locally() {
        let t0 = Instant::now();
        let acked = Acked {
            sent: t0,
            vote: Vote::new_committed(3, 1),
            matched: Some(log_id(3, 10)),
        };
        let soon = t0 + ELIDE_WINDOW / 2;
        // The commit notice of entry 10, from the peer's matched id.
        assert!(acked.covers(&append(3, Some(log_id(3, 10)), &[]), soon));
        // Not: an entry to replicate, another vote, another matched id, or
        // the window has passed.
        assert!(!acked.covers(&append(3, Some(log_id(3, 10)), &[log_id(3, 11)]), soon));
        assert!(!acked.covers(&append(4, Some(log_id(3, 10)), &[]), soon));
        assert!(!acked.covers(&append(3, Some(log_id(3, 9)), &[]), soon));
        assert!(!acked.covers(&append(3, None, &[]), soon));
        assert!(!acked.covers(&append(3, Some(log_id(3, 10)), &[]), t0 + ELIDE_WINDOW));
    }

    #[test]
    fn config_is_validated() {
        let c = raft_config(Duration::from_millis(100), Duration::from_secs(1), 10_000);
        let c = c.expect("valid config");
        assert_eq!(
            (c.election_timeout_min, c.election_timeout_max),
            (600, 1000)
        );
        assert!(raft_config(Duration::from_secs(1), Duration::from_secs(1), 10).is_err());
        assert!(raft_config(Duration::ZERO, Duration::ZERO, 10).is_err());
        assert!(raft_config(Duration::from_millis(100), Duration::from_secs(1), 0).is_err());
    }

    #[test]
    fn garbage_is_not_a_message() {
        assert!(decode::<VoteRequest<u64>>(&[0xff; 3]).is_err());
        // A length prefix far beyond the limit is refused, not allocated.
        let mut huge = vec![0xfc];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode::<Vec<u8>>(&huge).is_err());
    }
}
