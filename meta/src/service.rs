//! The client-facing gRPC service `cairn.meta.v1.Meta`.
//!
//! Mutations become one Raft entry each, stamped with the leader's clock and
//! the caller's request id (and, for a file create, a random encryption
//! salt: see `create`); a follower answers NOT_LEADER with the leader's
//! address. Reads are linearizable: the leader reads its own state under
//! its read lease ([`crate::lease`]), or else confirms its leadership with
//! a quorum (read index); a follower asks the leader for the read index and
//! waits until it has applied that far, then reads its local state.
//! Every Raft wait is bounded by `RAFT_TIMEOUT`, so a replica cut off from
//! the majority answers UNAVAILABLE instead of hanging.
//!
//! Chunkserver heartbeats and session renewals are soft state on the
//! leader ([`Liveness`]); only the decisions they lead to go through Raft.
//! So are corruption reports ([`CorruptReplicas`]): a chunkserver's
//! scrubber reports a bad replica again every pass, so a new leader learns
//! them anew without a Raft entry per report.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_proto::ids::{ChunkId, ChunkserverId, ObjectId, TargetId};
use cairn_proto::meta as pb;
use cairn_proto::meta::meta_server::Meta;
use cairn_proto::{CairnStatus, ErrorCode};
use openraft::error::{CheckIsLeaderError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use tonic::{Request, Response, Status, Streaming};
use tracing::instrument;

use crate::changes::Cover;
use crate::config::MetaConfig;
use crate::fs::locks::{LockHolder, LockKind};
use crate::fs::{
    self, Command, FsError, FsState, Inode, KEY_CHECK_LEN, Kind, Kv, Op, ROOT_INO, Reply, SALT_LEN,
    SetAttr, SetTime, TargetSpec, TargetState, VolumeCompression, VolumeKeys, VolumePolicy,
    compression,
};
use crate::raft::types::MetaRaft;

mod calls;

/// How long a request waits for Raft (commit or read index) before it is
/// answered UNAVAILABLE.
pub const RAFT_TIMEOUT: Duration = Duration::from_secs(5);

/// Most files one ReleaseFiles request may name.
pub const MAX_RELEASES: usize = 4096;

/// Why CreateVolume with `encrypted` set and no key check is refused.
pub const NEEDS_FIRST_KEY_CHECK: &str = "an encrypted volume needs the check value of its first \
     key (version 1); clients send it when given a key";

/// Soft state the leader keeps about chunkservers and sessions.
#[derive(Debug, Default)]
pub struct Liveness {
    /// When this replica last became leader.
    pub leader_since: Option<Instant>,
    /// Last heartbeat per chunkserver id, with its reported target usage.
    pub chunkservers: HashMap<u64, (Instant, Vec<pb::TargetInfo>)>,
    /// Last renewal per session id.
    pub sessions: HashMap<u64, Instant>,
    /// Corrupt replicas reported by chunkservers, for repair.
    pub corrupt: CorruptReplicas,
    /// Repair progress per chunkserver, as last reported, with the rate
    /// between its last two reports.
    pub repair: HashMap<u64, (Instant, pb::RepairProgress)>,
    /// Per chunkserver, the (object, chain) pairs its previous chunk report
    /// held that were orphans then: removed if still orphans in the next.
    pub orphan_suspects: HashMap<u64, std::collections::HashSet<(u64, u32)>>,
    /// Per chunkserver, the newest snapshot seq it fences writes with and
    /// has drained writes under older ones (its last heartbeat).
    pub snap_acks: HashMap<u64, u64>,
    /// Per chunkserver, the bytes it stores for each snapshot alone (seq →
    /// bytes, its last heartbeat).
    pub snapshot_space: HashMap<u64, Vec<pb::SnapshotSpace>>,
}

/// How many corrupt replicas the leader remembers; past it, the replica
/// reported least recently is forgotten (it is reported again next pass).
pub const MAX_CORRUPT_REPLICAS: usize = 1000;

/// How many bad blocks the leader remembers per replica. A replica with
/// more needs a whole-chunk repair anyway.
pub const MAX_BAD_BLOCKS_PER_REPLICA: usize = 1024;

/// How many bytes of a report's free-text detail are kept.
const MAX_DETAIL_BYTES: usize = 200;

/// A chunk replica with stored blocks that fail their CRC, as reported by
/// the chunkserver holding it (on a read or a scrub pass).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptReplica {
    /// The chunkserver holding the replica.
    pub chunkserver: ChunkserverId,
    /// The target (disk) holding the replica.
    pub target: TargetId,
    /// The chunk.
    pub chunk: ChunkId,
    /// Bad block indexes within the chunk, ascending, at most
    /// [`MAX_BAD_BLOCKS_PER_REPLICA`]; the union of every report.
    pub bad_blocks: Vec<u32>,
    /// How the latest report found it ("scrub", "read", ...).
    pub detail: String,
    /// When this leader first heard of it.
    pub first_reported: Instant,
    /// When this leader last heard of it.
    pub last_reported: Instant,
    /// Reports received for it.
    pub reports: u64,
}

/// The leader's bounded soft state of corrupt replicas, one entry per
/// (target, chunk). Repair (issue 6) consumes it and calls
/// [`CorruptReplicas::resolve`] once a replica is rewritten. Like the rest
/// of [`Liveness`], it starts empty whenever this replica becomes leader
/// (the next scrub passes refill it).
#[derive(Debug, Default)]
pub struct CorruptReplicas {
    replicas: HashMap<(TargetId, ChunkId), CorruptReplica>,
    reports: u64,
}

impl CorruptReplicas {
    /// Records one report at `now`: merges `bad_blocks` into the replica's
    /// entry, or adds one, forgetting the least recently reported replica
    /// when [`MAX_CORRUPT_REPLICAS`] are already known.
    pub fn record(
        &mut self,
        chunkserver: ChunkserverId,
        target: TargetId,
        chunk: ChunkId,
        bad_blocks: &[u32],
        detail: &str,
        now: Instant,
    ) {
        self.reports += 1;
        let key = (target, chunk);
        if !self.replicas.contains_key(&key) && self.replicas.len() >= MAX_CORRUPT_REPLICAS {
            let oldest = self
                .replicas
                .iter()
                .min_by_key(|(_, r)| r.last_reported)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.replicas.remove(&k);
            }
        }
        let entry = self.replicas.entry(key).or_insert_with(|| CorruptReplica {
            chunkserver,
            target,
            chunk,
            bad_blocks: Vec::new(),
            detail: String::new(),
            first_reported: now,
            last_reported: now,
            reports: 0,
        });
        entry.bad_blocks.extend_from_slice(bad_blocks);
        entry.bad_blocks.sort_unstable();
        entry.bad_blocks.dedup();
        entry.bad_blocks.truncate(MAX_BAD_BLOCKS_PER_REPLICA);
        entry.chunkserver = chunkserver;
        entry.detail = truncate_utf8(detail, MAX_DETAIL_BYTES).to_string();
        entry.last_reported = now;
        entry.reports += 1;
    }

    /// Forgets a replica (repaired, or its chunk removed); returns its entry.
    pub fn resolve(&mut self, target: TargetId, chunk: ChunkId) -> Option<CorruptReplica> {
        self.replicas.remove(&(target, chunk))
    }

    /// Returns the known corrupt replicas, ordered by target and chunk.
    pub fn list(&self) -> Vec<CorruptReplica> {
        let mut out: Vec<CorruptReplica> = self.replicas.values().cloned().collect();
        out.sort_by_key(|r| (r.target, r.chunk));
        out
    }

    /// Returns how many corrupt replicas are known.
    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    /// Returns whether no corrupt replica is known.
    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// Returns how many reports were received since this replica last
    /// became leader.
    pub fn reports(&self) -> u64 {
        self.reports
    }
}

/// Returns the longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// State shared by the gRPC service and the node's background duties.
pub struct Shared {
    /// This replica's Raft handle.
    pub raft: MetaRaft,
    /// The state machine (read side).
    pub fs: Arc<FsState>,
    /// This replica's node id.
    pub node_id: u64,
    /// The cluster id.
    pub cluster_id: String,
    /// Configuration.
    pub config: MetaConfig,
    /// Soft state (leader only).
    pub liveness: Mutex<Liveness>,
    /// Raft log appends and fsyncs of this replica.
    pub log_io: Arc<crate::metrics::LogIoCounters>,
    /// What the garbage collector did while this replica led.
    pub gc: crate::metrics::GcCounters,
    /// The Raft transport's client side (its channels are reused for
    /// follower read-index calls).
    pub network: crate::raft::network::Network,
    /// Group-commits mutations into Raft entries.
    pub proposer: crate::proposer::Proposer,
    /// The leader's read lease.
    pub lease: crate::lease::LeaderLease,
    /// Committed namespace changes, for clients' caches.
    pub changes: crate::changes::ChangeFeed,
    /// Flips to true when the replica shuts down.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

impl Shared {
    /// Returns the leader's (id, address) as this replica knows it.
    pub fn leader(&self) -> Option<(u64, String)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())?;
        Some((id, addr))
    }

    /// Returns NOT_LEADER with a hint, never one that names this replica.
    pub fn not_leader(&self, hint: Option<(u64, String)>) -> CairnStatus {
        CairnStatus::not_leader(hint.filter(|(id, _)| *id != self.node_id))
    }

    /// Returns whether this replica is the leader now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Locks the soft state (a poisoned lock still holds valid data).
    pub fn liveness(&self) -> std::sync::MutexGuard<'_, Liveness> {
        self.liveness.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns the corrupt replicas chunkservers reported to this replica
    /// while leader, ordered by target and chunk (empty on a follower).
    pub fn corrupt_replicas(&self) -> Vec<CorruptReplica> {
        self.liveness().corrupt.list()
    }

    /// Returns how many corruption reports this replica received since it
    /// last became leader.
    pub fn corruption_reports_total(&self) -> u64 {
        self.liveness().corrupt.reports()
    }

    /// Proposes `op` as one Raft entry and returns the state machine's reply.
    ///
    /// # Errors
    /// NOT_LEADER with a hint on a follower, UNAVAILABLE when no quorum
    /// commits it within [`RAFT_TIMEOUT`], or the operation's own error.
    pub async fn propose(&self, rid: Option<&pb::RequestId>, op: Op) -> Result<Reply, CairnStatus> {
        let name = op.name();
        // Only cloned while some client watches the feed.
        let published = self.changes.watched().then(|| op.clone());
        let cmd = Command {
            client_id: rid.map_or(0, |r| r.client_id),
            seq: rid.map_or(0, |r| r.seq),
            ack_below: rid.map_or(0, |r| r.ack_below),
            time_ns: now_ns(),
            op,
        };
        let session = cmd.client_id;
        let proposed = tokio::select! {
            biased;
            r = tokio::time::timeout(RAFT_TIMEOUT, self.proposer.propose(cmd)) => r,
            // The client retries elsewhere, under the same request id.
            () = self.cut_off() => return Err(self.cut_off_error(name)),
        };
        match proposed {
            Err(_) => Err(CairnStatus::new(
                ErrorCode::Unavailable,
                format!("{name}: no Raft quorum committed the request within {RAFT_TIMEOUT:?}"),
            )),
            Ok(r) => {
                if r.is_ok() {
                    // Earlier leaders' client leases run out first, then
                    // every other lease holder drops what this changed
                    // (crate::changes): then a client may trust its cache.
                    self.wait_out_earlier_leases().await;
                }
                if let (Ok(reply), Some(op)) = (&r, &published)
                    && let Some(change) = self.changes.publish(session, op, reply)
                {
                    self.changes.wait_acked(&change).await;
                }
                r
            }
        }
    }

    /// Resolves once this replica leads a cluster of several voters
    /// without having heard from a quorum for an election timeout, from now
    /// at the earliest ([`crate::lease::LeaderLease::cut_off`]): what waits
    /// on its quorum gives up then, and the client tries another replica.
    /// A single voter is its own quorum and never counts as cut off.
    async fn cut_off(&self) {
        let voters = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .count();
        if voters < 2 {
            return std::future::pending().await;
        }
        self.lease.cut_off(std::time::Instant::now()).await;
    }

    fn cut_off_error(&self, what: &str) -> CairnStatus {
        CairnStatus::new(
            ErrorCode::Unavailable,
            format!(
                "{what}: this replica leads but has heard from no quorum for an election \
                 timeout; another replica may lead now"
            ),
        )
    }

    /// Waits until client leases an earlier leader granted have run out
    /// (`crate::lease`, "Clients' cache leases").
    async fn wait_out_earlier_leases(&self) {
        let fence = self
            .lease
            .fence()
            .unwrap_or_else(|| std::time::Instant::now() + self.lease.fence_after());
        if fence > std::time::Instant::now() {
            tokio::time::sleep_until(fence.into()).await;
        }
    }

    /// Waits until a read on this replica is linearizable.
    ///
    /// # Errors
    /// NOT_LEADER / UNAVAILABLE when neither this replica nor the leader can
    /// confirm a read index with a quorum in time.
    pub async fn linearize(&self) -> Result<(), CairnStatus> {
        if self.is_leader() && self.lease.valid() {
            return Ok(());
        }
        if self.is_leader() {
            let confirmed = tokio::select! {
                biased;
                r = tokio::time::timeout(RAFT_TIMEOUT, self.raft.ensure_linearizable()) => r,
                () = self.cut_off() => return Err(self.cut_off_error("read")),
            };
            return match confirmed {
                Ok(Ok(_)) => self
                    .lease
                    .applied_through_office(&self.raft, RAFT_TIMEOUT)
                    .await
                    .map(|_| ())
                    .map_err(|e| CairnStatus::new(ErrorCode::Unavailable, e)),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    Err(self.not_leader(f.leader_id.zip(f.leader_node.map(|n| n.addr))))
                }
                Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => {
                    Err(CairnStatus::new(
                        ErrorCode::Unavailable,
                        format!(
                            "this replica cannot reach a quorum to confirm its leadership: {q}"
                        ),
                    ))
                }
                Ok(Err(e)) => Err(CairnStatus::new(ErrorCode::Unavailable, e.to_string())),
                Err(_) => Err(CairnStatus::new(
                    ErrorCode::Unavailable,
                    "this replica cannot reach a quorum to confirm its leadership",
                )),
            };
        }
        let Some((leader_id, addr)) = self.leader().filter(|(id, _)| *id != self.node_id) else {
            return Err(CairnStatus::new(
                ErrorCode::Unavailable,
                "no leader is known to this replica",
            ));
        };
        let read =
            tokio::time::timeout(RAFT_TIMEOUT, self.network.read_index(leader_id, &addr)).await;
        let log_id = match read {
            Ok(Ok(id)) => id,
            Ok(Err(_)) | Err(_) => return Err(self.not_leader(self.leader())),
        };
        if let Some(id) = log_id {
            self.raft
                .wait(Some(RAFT_TIMEOUT))
                .applied_index_at_least(Some(id.index), "follower read")
                .await
                .map_err(|e| CairnStatus::new(ErrorCode::Unavailable, e.to_string()))?;
        }
        Ok(())
    }
}

/// Returns the wall clock in ns since the epoch (leader-side stamping).
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The gRPC service.
#[derive(Clone)]
pub struct MetaService {
    shared: Arc<Shared>,
    /// Where calls on the Calls stream are recorded (unary calls are
    /// recorded by the server's metrics layer).
    rpc_metrics: Option<Arc<crate::metrics::RpcMetrics>>,
}

impl MetaService {
    /// The state of the restore into volume `name`.
    fn restore_reply(&self, name: &str) -> GrpcResult<pb::RestoreReply> {
        let fs = &self.shared.fs;
        let Some((v, job, (src, seq))) = fs.restore_named(name).map_err(fs_err)? else {
            return Err(CairnStatus::new(
                ErrorCode::NotFound,
                format!("volume {name} was not restored from a snapshot"),
            )
            .into());
        };
        let source = fs
            .volumes()
            .map_err(fs_err)?
            .into_iter()
            .find(|x| x.id == src)
            .map(|x| x.name)
            .unwrap_or_default();
        let snapshot = fs
            .snapshots(src)
            .map_err(fs_err)?
            .into_iter()
            .find(|s| s.seq == seq)
            .map(|s| s.name)
            .unwrap_or_default();
        let keys = fs.volume_keys().map_err(fs_err)?;
        let compression = fs.volume_compression().map_err(fs_err)?;
        let (copied, total) = job
            .as_ref()
            .map_or((v.used_inodes, v.used_inodes), |j| (j.copied, j.total));
        Ok(Response::new(pb::RestoreReply {
            volume: Some(volume_pb(&v, keys.get(&v.id), compression.get(&v.id))),
            copied,
            total,
            done: job.is_none(),
            source_volume: source,
            snapshot,
        }))
    }

    /// Returns the service over `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            rpc_metrics: None,
        }
    }

    /// Records the calls made on the Calls stream in `metrics`, per method,
    /// as the server's metrics layer records unary calls.
    #[must_use]
    pub fn with_rpc_metrics(mut self, metrics: Arc<crate::metrics::RpcMetrics>) -> Self {
        self.rpc_metrics = Some(metrics);
        self
    }

    /// Soft state lives on the leader: refuse elsewhere with a hint.
    /// Closes `chunkserver`'s maintenance window (through Raft); its
    /// targets then rejoin as syncing (leader duties).
    async fn lift_maintenance(&self, chunkserver: u64) -> Result<(), Status> {
        self.shared
            .propose(
                None,
                Op::SetMaintenance {
                    chunkserver,
                    until_ns: 0,
                    hold: false,
                },
            )
            .await
            .map(|_| ())
            .map_err(Status::from)
    }

    /// Opens a maintenance window for `chunkserver` until `until_ns`
    /// (through Raft) and takes its targets out of their chains at once.
    async fn enter_maintenance(
        &self,
        chunkserver: u64,
        until_ns: i64,
        hold: bool,
    ) -> Result<(), Status> {
        self.shared
            .propose(
                None,
                Op::SetMaintenance {
                    chunkserver,
                    until_ns,
                    hold,
                },
            )
            .await
            .map_err(Status::from)?;
        let targets: Vec<(u64, crate::fs::TargetState)> = self
            .shared
            .fs
            .chunkservers()
            .map_err(fs_err)?
            .iter()
            .filter(|c| c.id == chunkserver)
            .flat_map(|c| c.targets.iter())
            .map(|t| (t.id, crate::fs::TargetState::Offline))
            .collect();
        self.shared
            .propose(None, Op::SetTargetStates { changes: targets })
            .await
            .map_err(Status::from)?;
        Ok(())
    }

    /// Covers `ino` with the cache lease of `session`'s change feed on
    /// this leader, before a read of it (crate::changes); false when the
    /// answer may not be cached under a lease.
    fn cover(&self, session: u64, what: Cover<'_>) -> bool {
        session != 0 && self.shared.is_leader() && self.shared.changes.cover(session, what)
    }

    /// A read that asks for `session`'s cache lease is sent to the leader
    /// (NOT_LEADER with its address): a follower's answer, through the
    /// read index, is right but covered by no lease (the client's change
    /// feed is at the leader), and a client whose calls stayed with a
    /// follower would not cache again. Seen after a frozen leader thawed:
    /// the reader's calls had moved to a follower while the leader was
    /// silent, its feed to the new leader, and nothing it read was cached
    /// for 12 s.
    fn leased_read_here(&self, session: u64) -> Result<(), Status> {
        if session == 0 {
            return Ok(());
        }
        self.leader_only()
    }

    fn leader_only(&self) -> Result<(), Status> {
        if self.shared.is_leader() {
            return Ok(());
        }
        Err(self.shared.not_leader(self.shared.leader()).into())
    }

    async fn write(&self, rid: Option<&pb::RequestId>, op: Op) -> Result<Reply, Status> {
        self.shared.propose(rid, op).await.map_err(Status::from)
    }

    async fn read(&self) -> Result<&FsState, Status> {
        self.shared.linearize().await.map_err(Status::from)?;
        if self.shared.fs.cluster_id().map_err(fs_err)?.is_none() {
            return Err(CairnStatus::new(
                ErrorCode::NotInitialized,
                "the cluster is still being initialized; retry",
            )
            .into());
        }
        Ok(&self.shared.fs)
    }
}

type GrpcResult<T> = Result<Response<T>, Status>;

fn fs_err(e: FsError) -> Status {
    CairnStatus::from(e).into()
}

fn bad(message: impl Into<String>) -> Status {
    CairnStatus::new(ErrorCode::BadRequest, message).into()
}

fn dir_quota_pb(q: &crate::fs::DirQuota) -> pb::DirQuota {
    pb::DirQuota {
        ino: q.ino,
        volume_id: q.volume,
        quota_bytes: q.quota_bytes,
        quota_inodes: q.quota_inodes,
        used_bytes: q.used_bytes,
        used_inodes: q.used_inodes,
    }
}

fn unexpected(r: &Reply) -> Status {
    CairnStatus::new(ErrorCode::Internal, format!("unexpected reply {r:?}")).into()
}

fn kind_pb(k: Kind) -> pb::FileType {
    match k {
        Kind::File => pb::FileType::Regular,
        Kind::Dir => pb::FileType::Directory,
        Kind::Symlink => pb::FileType::Symlink,
        Kind::Fifo => pb::FileType::Fifo,
        Kind::Socket => pb::FileType::Socket,
        Kind::CharDevice(_) => pb::FileType::CharDevice,
        Kind::BlockDevice(_) => pb::FileType::BlockDevice,
    }
}

fn lock_kind(t: i32) -> Result<LockKind, Status> {
    match pb::LockType::try_from(t) {
        Ok(pb::LockType::Read) => Ok(LockKind::Read),
        Ok(pb::LockType::Write) => Ok(LockKind::Write),
        Ok(pb::LockType::Unlock) => Ok(LockKind::Unlock),
        _ => Err(bad(format!("lock type {t} is not read, write or unlock"))),
    }
}

fn lock_reply(held: Option<LockHolder>) -> pb::LockReply {
    pb::LockReply {
        granted: held.is_none(),
        conflict: held.map(|h| pb::FileLock {
            start: h.range.start,
            end: h.range.end,
            r#type: if h.range.write {
                pb::LockType::Write
            } else {
                pb::LockType::Read
            } as i32,
            pid: h.range.pid,
            session_id: h.session,
            owner: h.owner,
        }),
    }
}

/// Converts a stored inode to its wire form.
pub fn attr_pb(i: &Inode) -> pb::Attr {
    pb::Attr {
        ino: i.ino,
        kind: kind_pb(i.kind) as i32,
        mode: i.mode,
        uid: i.uid,
        gid: i.gid,
        size: i.size,
        nlink: i.nlink,
        atime_ns: i.atime,
        mtime_ns: i.mtime,
        ctime_ns: i.ctime,
        crtime_ns: i.crtime,
        volume_id: i.volume,
        layout: i.layout.as_ref().map(|l| pb::Layout {
            object_id: l.object_id,
            chunk_size: l.chunk_size,
            chains: l.chains.clone(),
            replication: l.replication,
        }),
        truncate_gen: i.truncate_gen,
        version: i.version,
        // Builds before encryption existed drew a salt for every file and
        // stored it; only a key version (never 0 in an encrypted volume)
        // says a file is sealed, so those plain files stay plain.
        encryption_salt: if i.key_version == 0 {
            Vec::new()
        } else {
            i.salt.clone()
        },
        key_version: i.key_version,
        rdev: i.kind.rdev(),
        origin_object: 0,
        origin_seq: 0,
    }
}

/// Sets `a`'s origin fields when it is a file of a restored volume that
/// still reads its snapshot's data (as the live tree has it, or with `at`,
/// as that snapshot of its volume saw it).
fn fill_origin(fs: &FsState, at: Option<(u64, u64)>, a: &mut pb::Attr) -> Result<(), Status> {
    if a.kind != pb::FileType::Regular as i32 || a.size == 0 {
        return Ok(());
    }
    if let Some(o) = fs.origin(a.ino, at).map_err(fs_err)? {
        a.origin_object = o.object;
        a.origin_seq = o.seq;
    }
    Ok(())
}

/// [`attr_pb`] with [`fill_origin`].
fn attr_full(fs: &FsState, at: Option<(u64, u64)>, i: &Inode) -> Result<pb::Attr, Status> {
    let mut a = attr_pb(i);
    fill_origin(fs, at, &mut a)?;
    Ok(a)
}

fn entry_reply(r: Reply) -> Result<pb::EntryReply, Status> {
    match r {
        Reply::Entry { attr, parent } => Ok(pb::EntryReply {
            attr: Some(attr_pb(&attr)),
            parent: parent.as_ref().map(attr_pb),
            leased: false,
        }),
        other => Err(unexpected(&other)),
    }
}

fn attr_reply(r: Reply) -> Result<pb::AttrReply, Status> {
    match r {
        Reply::Attr(a) => Ok(pb::AttrReply {
            attr: Some(attr_pb(&a)),
            ..Default::default()
        }),
        Reply::Unit => Ok(pb::AttrReply::default()),
        other => Err(unexpected(&other)),
    }
}

fn removed_reply(r: Reply) -> Result<pb::UnlinkReply, Status> {
    match r {
        Reply::Removed { ino, freed, parent } => Ok(pb::UnlinkReply {
            ino,
            freed,
            parent: Some(attr_pb(&parent)),
        }),
        other => Err(unexpected(&other)),
    }
}

fn policy_from_pb(p: Option<pb::VolumePolicy>) -> VolumePolicy {
    let d = VolumePolicy::default();
    let Some(p) = p else { return d };
    VolumePolicy {
        replication: if p.replication == 0 {
            d.replication
        } else {
            p.replication
        },
        chunk_size: if p.chunk_size == 0 {
            d.chunk_size
        } else {
            p.chunk_size
        },
        stripe_width: if p.stripe_width == 0 {
            d.stripe_width
        } else {
            p.stripe_width
        },
        encrypted: p.encrypted,
        quota_bytes: p.quota_bytes,
        quota_inodes: p.quota_inodes,
    }
}

fn invalid(message: impl Into<String>) -> CairnStatus {
    CairnStatus::new(ErrorCode::Invalid, message)
}

/// Returns a key check value sent by a client as the stored array.
fn key_check(bytes: &[u8]) -> Result<[u8; KEY_CHECK_LEN], CairnStatus> {
    bytes.try_into().map_err(|_| {
        invalid(format!(
            "a key check value is {KEY_CHECK_LEN} bytes, not {}",
            bytes.len()
        ))
    })
}

/// Returns the operation a CreateVolume request asks for: a plain volume,
/// or an encrypted one with the check value of its first key (exactly one
/// check, version 1; `key_version` 0 or 1); either of them compressed
/// (`CreateVolumeWith`, the volume and its compression in one entry) when
/// the policy asks for a compression (see [`compression::settle`]).
fn create_volume_op(name: String, p: Option<pb::VolumePolicy>) -> Result<Op, CairnStatus> {
    let p = p.unwrap_or_default();
    let (algo, unit) = (p.compression, p.compression_unit);
    let check = first_key_check(&p)?;
    let policy = policy_from_pb(Some(p));
    let Some((algo, unit)) =
        compression::settle(&name, algo, unit, policy.chunk_size).map_err(invalid)?
    else {
        return Ok(match check {
            None => Op::CreateVolume { name, policy },
            Some(check) => Op::CreateEncryptedVolume {
                name,
                policy,
                check,
            },
        });
    };
    Ok(Op::CreateVolumeWith {
        name,
        policy,
        check,
        compression: algo,
        unit,
    })
}

/// Returns the check value of the first key of the encrypted volume `p`
/// asks for (`None`: a plain volume): exactly one check, version 1, and a
/// `key_version` of 0 or 1.
fn first_key_check(p: &pb::VolumePolicy) -> Result<Option<[u8; KEY_CHECK_LEN]>, CairnStatus> {
    if !p.encrypted {
        if !p.key_checks.is_empty() || p.key_version != 0 {
            return Err(invalid(
                "key checks and a key version are for encrypted volumes, and this volume is \
                 not encrypted",
            ));
        }
        return Ok(None);
    }
    let first = match p.key_checks.as_slice() {
        [] => return Err(invalid(NEEDS_FIRST_KEY_CHECK)),
        [first] => first,
        more => {
            return Err(invalid(format!(
                "a new encrypted volume takes the check value of its first key (version 1) \
                 only, not {} checks; later versions come from RotateVolumeKey",
                more.len()
            )));
        }
    };
    if first.version != 1 {
        return Err(invalid(format!(
            "the first key of an encrypted volume is version 1, not {}",
            first.version
        )));
    }
    if p.key_version > 1 {
        return Err(invalid(format!(
            "a new encrypted volume starts at key version 1, not {}",
            p.key_version
        )));
    }
    key_check(&first.check).map(Some)
}

/// Converts a stored volume, its keys (`None`: plain) and its compression
/// (`None`: uncompressed) to its wire form.
/// The (volume, seq) of a read of a snapshot's tree; `None` for the live
/// tree.
fn snapshot_ref(r: Option<&pb::SnapshotRef>) -> Option<(u64, u64)> {
    r.map(|r| (r.volume_id, r.seq))
}

fn snapshot_pb(s: &crate::fs::Snapshot, ready: bool) -> pb::Snapshot {
    pb::Snapshot {
        volume_id: s.volume,
        seq: s.seq,
        name: s.name.clone(),
        created_ns: s.created_ns,
        used_bytes: s.used_bytes,
        used_inodes: s.used_inodes,
        ready,
        exclusive_bytes: 0,
    }
}

/// How long RestoreSnapshot copies the tree itself before it answers.
const RESTORE_INLINE: Duration = Duration::from_millis(100);

/// How long CreateSnapshot waits for the chunkservers to fence the new seq.
const SNAPSHOT_READY_WAIT: Duration = Duration::from_secs(15);

/// Returns the chunkservers that may still accept writes under a snapshot
/// seq older than `seq` (DESIGN §3: a snapshot is ready once every serving
/// chunkserver has acknowledged its seq). A chunkserver that has not
/// reached this leader for a whole heartbeat timeout has stopped serving
/// (it stops after half of one) and learns the seq before it serves again,
/// so it is not waited for; one never heard from is waited for until this
/// replica has led for a timeout.
fn snapshot_pending(shared: &Shared, seq: u64) -> Result<Vec<u64>, Status> {
    let servers = shared.fs.chunkservers().map_err(fs_err)?;
    let timeout = shared.config.chunkserver_timeout;
    let live = shared.liveness();
    let led_long = live.leader_since.is_some_and(|t| t.elapsed() >= timeout);
    Ok(servers
        .iter()
        .map(|c| c.id)
        .filter(|id| live.snap_acks.get(id).copied().unwrap_or(0) < seq)
        .filter(|id| match live.chunkservers.get(id) {
            Some((at, _)) => at.elapsed() < timeout,
            None => !led_long,
        })
        .collect())
}

fn volume_pb(
    v: &fs::Volume,
    keys: Option<&VolumeKeys>,
    compression: Option<&VolumeCompression>,
) -> pb::Volume {
    pb::Volume {
        id: v.id,
        name: v.name.clone(),
        root_ino: v.root_ino,
        policy: Some(pb::VolumePolicy {
            replication: v.policy.replication,
            chunk_size: v.policy.chunk_size,
            stripe_width: v.policy.stripe_width,
            // A volume is encrypted when it has keys: some volumes created
            // before encryption existed have the flag set over plain text.
            encrypted: keys.is_some(),
            quota_bytes: v.policy.quota_bytes,
            quota_inodes: v.policy.quota_inodes,
            key_version: keys.map_or(0, |k| k.current),
            key_checks: keys.map_or_else(Vec::new, |k| {
                k.checks
                    .iter()
                    .map(|c| pb::VolumeKeyCheck {
                        version: c.version,
                        check: c.check.to_vec(),
                    })
                    .collect()
            }),
            compression: compression.map_or(0, |c| i32::from(c.algo)),
            compression_unit: compression.map_or(0, |c| c.unit),
        }),
        snap_seq: v.snap_seq,
        used_bytes: v.used_bytes,
        used_inodes: v.used_inodes,
        logical_bytes: compression.map_or(0, |c| c.logical),
        stored_bytes: compression.map_or(0, |c| c.stored),
    }
}

/// Converts the reply of a volume operation to its wire form. Replies
/// that carry no compression (plain creations, key rotations) take the
/// volume's from `fs`, the state the operation was just applied to: a
/// volume's algorithm and unit never change.
fn volume_reply<K: Kv>(r: Reply, fs: &FsState<K>) -> Result<pb::VolumeReply, Status> {
    let volume = match r {
        Reply::Volume(v) => {
            let c = fs.compression_of(v.id).map_err(fs_err)?;
            volume_pb(&v, None, c.as_ref())
        }
        Reply::EncryptedVolume { volume, keys } => {
            let c = fs.compression_of(volume.id).map_err(fs_err)?;
            volume_pb(&volume, Some(&keys), c.as_ref())
        }
        Reply::VolumeWith {
            volume,
            keys,
            compression,
        } => volume_pb(&volume, keys.as_ref(), compression.as_ref()),
        other => return Err(unexpected(&other)),
    };
    Ok(pb::VolumeReply {
        volume: Some(volume),
    })
}

fn set_time(t: Option<pb::Timespec>) -> Option<SetTime> {
    t.map(|t| {
        if t.now {
            SetTime::Now
        } else {
            SetTime::At(t.ns)
        }
    })
}

fn state_pb(s: TargetState) -> pb::TargetState {
    match s {
        TargetState::Serving => pb::TargetState::Serving,
        TargetState::Syncing => pb::TargetState::Syncing,
        TargetState::Offline => pb::TargetState::Offline,
    }
}

/// Builds the wire chain tables from the state and the leader's liveness.
pub fn chain_tables_pb(shared: &Shared) -> Result<pb::ChainTables, Status> {
    let version = shared
        .fs
        .chains_version()
        .map_err(|e| Status::internal(e.to_string()))?;
    let tables = shared.fs.chain_tables().map_err(fs_err)?;
    let servers = shared.fs.chunkservers().map_err(fs_err)?;
    let maintenance = shared.fs.maintenance().map_err(fs_err)?;
    let now = now_ns();
    // The seq before the volumes' epochs: a volume snapshotted in between
    // is listed with a seq newer than the one sent, so a client never
    // skips clones under a seq that fences its volume's new snapshot.
    let snap_seq = shared.fs.snap_seq().map_err(fs_err)?;
    let volume_epochs = shared
        .fs
        .volumes()
        .map_err(fs_err)?
        .iter()
        .filter(|v| v.snap_seq != 0)
        .map(|v| pb::VolumeEpoch {
            volume_id: v.id,
            seq: v.snap_seq,
        })
        .collect();
    let live = shared.liveness();
    let timeout = shared.config.chunkserver_timeout;
    Ok(pb::ChainTables {
        version,
        snap_seq,
        volume_epochs,
        tables: tables
            .into_iter()
            .filter(|(_, chains)| !chains.is_empty())
            .map(|(r, chains)| pb::ChainTable {
                replication: r,
                chains: chains
                    .into_iter()
                    .map(|c| pb::Chain {
                        id: c.id,
                        version: c.version,
                        targets: c
                            .members
                            .iter()
                            .map(|m| pb::ChainTarget {
                                target_id: m.target,
                                chunkserver_id: m.chunkserver,
                                state: state_pb(m.state) as i32,
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
        chunkservers: servers
            .iter()
            .map(|c| {
                let beat = live.chunkservers.get(&c.id);
                let (capacity, used) = beat.map_or(
                    (c.targets.iter().map(|t| t.capacity).sum(), 0),
                    |(_, ts)| {
                        (
                            ts.iter().map(|t| t.capacity_bytes).sum(),
                            ts.iter().map(|t| t.used_bytes).sum(),
                        )
                    },
                );
                pb::ChunkserverInfo {
                    id: c.id,
                    host: c.host.clone(),
                    shard_ports: c.shard_ports.clone(),
                    zone: c.zone.clone(),
                    alive: beat.is_some_and(|(at, _)| at.elapsed() < timeout),
                    target_ids: c.targets.iter().map(|t| t.id).collect(),
                    capacity_bytes: capacity,
                    used_bytes: used,
                    repair: live.repair.get(&c.id).map(|(_, p)| *p),
                    maintenance_until_ms: maintenance
                        .get(&c.id)
                        .filter(|m| m.until_ns > now)
                        .map_or(0, |m| u64::try_from(m.until_ns / 1_000_000).unwrap_or(0)),
                }
            })
            .collect(),
    })
}

/// Builds the status of this replica from its Raft metrics.
pub fn status_pb(shared: &Shared) -> pb::StatusReply {
    let m = shared.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let leader_addr = m
        .current_leader
        .and_then(|id| membership.get_node(&id).map(|n| n.addr.clone()))
        .unwrap_or_default();
    let members = membership
        .nodes()
        .map(|(id, node)| {
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(id).cloned().flatten())
                .map(|l| l.index);
            pb::MetaMember {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
                matched_index: if *id == m.id {
                    m.last_log_index.unwrap_or(0)
                } else {
                    matched.unwrap_or(0)
                },
                // Answered one of this replica's Raft RPCs lately (the
                // leader talks to everyone; a follower only when voting).
                reachable: *id == m.id
                    || shared
                        .network
                        .last_contact(*id)
                        .is_some_and(|t| t.elapsed() < shared.config.election_timeout * 2),
            }
        })
        .collect();
    pb::StatusReply {
        node_id: m.id,
        cluster_id: shared.cluster_id.clone(),
        leader_id: m.current_leader.unwrap_or(0),
        leader_addr,
        term: m.current_term,
        commit_index: commit_index(&m, &voters),
        applied_index: m.last_applied.map_or(0, |l| l.index),
        last_log_index: m.last_log_index.unwrap_or(0),
        state: format!("{:?}", m.state),
        members,
        snapshot_index: m.snapshot.map_or(0, |l| l.index),
        log_entries_appended: shared
            .log_io
            .entries_appended
            .load(std::sync::atomic::Ordering::Relaxed),
        log_flushes: shared
            .log_io
            .flushes
            .load(std::sync::atomic::Ordering::Relaxed),
        garbage_objects: shared.fs.garbage_count().unwrap_or(0) as u64,
        gc_objects_collected: shared.gc.objects.load(std::sync::atomic::Ordering::Relaxed),
        gc_chunk_removals: shared.gc.chunks.load(std::sync::atomic::Ordering::Relaxed),
    }
}

/// Returns the commit index: on the leader the highest index a majority of
/// voters has, elsewhere the applied index (the best a follower knows).
fn commit_index(
    m: &openraft::RaftMetrics<u64, BasicNode>,
    voters: &std::collections::BTreeSet<u64>,
) -> u64 {
    let applied = m.last_applied.map_or(0, |l| l.index);
    let Some(repl) = m.replication.as_ref() else {
        return applied;
    };
    let mut matched: Vec<u64> = voters
        .iter()
        .map(|v| repl.get(v).cloned().flatten().map_or(0, |l| l.index))
        .collect();
    if matched.is_empty() {
        return applied;
    }
    matched.sort_unstable_by(|a, b| b.cmp(a));
    matched[voters.len() / 2].max(applied)
}

fn membership_error<E: std::fmt::Display>(shared: &Shared, e: RaftError<u64, E>) -> Status {
    match e {
        RaftError::APIError(e) if e.to_string().contains("forward") => {
            shared.not_leader(shared.leader()).into()
        }
        e => CairnStatus::new(ErrorCode::Unavailable, e.to_string()).into(),
    }
}

type WatchStream =
    Pin<Box<dyn futures::Stream<Item = Result<pb::ChainTables, Status>> + Send + 'static>>;

type ChangesStream =
    Pin<Box<dyn futures::Stream<Item = Result<pb::Changes, Status>> + Send + 'static>>;

type FeedItem = Result<Arc<crate::changes::Change>, tokio::sync::broadcast::error::RecvError>;

/// How long a change-feed stream may take to name its session.
const FEED_HELLO: Duration = Duration::from_secs(10);

/// Returns the next change already queued on `feed`, if any.
fn next_queued(
    feed: &mut tokio::sync::broadcast::Receiver<Arc<crate::changes::Change>>,
) -> Option<FeedItem> {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    match feed.try_recv() {
        Ok(c) => Some(Ok(c)),
        Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
        Err(TryRecvError::Empty | TryRecvError::Closed) => None,
    }
}

#[tonic::async_trait]
impl Meta for MetaService {
    async fn lookup(&self, req: Request<pb::LookupRequest>) -> GrpcResult<pb::AttrReply> {
        let r = req.into_inner();
        let snap = snapshot_ref(r.snapshot.as_ref());
        if snap.is_none() {
            self.leased_read_here(r.lease_session)?;
        }
        // Covered before the read (crate::changes): a change the read does
        // not see is waited for.
        let leased = snap.is_none() && self.cover(r.lease_session, Cover::Name(r.parent, &r.name));
        let fs = self.read().await?;
        let mut a = match snap {
            Some((v, seq)) => fs.snapshot_lookup(v, seq, r.parent, &r.name),
            None => fs.lookup(r.parent, &r.name),
        }
        .map_err(fs_err)?;
        if leased && a.kind != Kind::Dir {
            // Read again now that the file is covered.
            self.cover(r.lease_session, Cover::Ino(a.ino));
            a = fs.getattr(a.ino).map_err(fs_err)?;
        }
        Ok(Response::new(pb::AttrReply {
            attr: Some(attr_full(fs, snap, &a)?),
            leased,
            path: Vec::new(),
        }))
    }

    async fn get_attr(&self, req: Request<pb::GetAttrRequest>) -> GrpcResult<pb::AttrReply> {
        let r = req.into_inner();
        let snap = snapshot_ref(r.snapshot.as_ref());
        if snap.is_none() {
            self.leased_read_here(r.lease_session)?;
        }
        let fs = self.read().await?;
        let mut a = match snap {
            Some((v, seq)) => fs.snapshot_getattr(v, seq, r.ino),
            None => fs.getattr(r.ino),
        }
        .map_err(fs_err)?;
        // A file is covered, then read again (crate::changes); a
        // directory's attributes are not covered.
        let leased = snap.is_none()
            && r.lease_session != 0
            && self.shared.is_leader()
            && (a.kind == Kind::Dir || self.cover(r.lease_session, Cover::Ino(a.ino)));
        if leased && a.kind != Kind::Dir {
            a = fs.getattr(a.ino).map_err(fs_err)?;
        }
        Ok(Response::new(pb::AttrReply {
            attr: Some(attr_full(fs, snap, &a)?),
            leased,
            path: Vec::new(),
        }))
    }

    async fn resolve(&self, req: Request<pb::ResolveRequest>) -> GrpcResult<pb::AttrReply> {
        let r = req.into_inner();
        self.leased_read_here(r.lease_session)?;
        let fs = self.read().await?;
        if r.lease_session == 0 {
            let a = fs.resolve(&r.path).map_err(fs_err)?;
            return Ok(Response::new(pb::AttrReply {
                attr: Some(attr_full(fs, None, &a)?),
                ..Default::default()
            }));
        }
        // As a leased lookup of each name in turn: every name is covered
        // before it is read, the file it ends at before it is read again
        // (crate::changes).
        let mut leased = self.shared.is_leader();
        let mut path = Vec::new();
        let mut a = fs
            .resolve_with(
                &r.path,
                |parent, name| {
                    leased = leased && self.cover(r.lease_session, Cover::Name(parent, name));
                },
                |dir| path.push(attr_pb(dir)),
            )
            .map_err(fs_err)?;
        if leased && a.kind != Kind::Dir {
            leased = self.cover(r.lease_session, Cover::Ino(a.ino));
            a = fs.getattr(a.ino).map_err(fs_err)?;
        }
        Ok(Response::new(pb::AttrReply {
            attr: Some(attr_full(fs, None, &a)?),
            leased,
            path: if leased { path } else { Vec::new() },
        }))
    }

    async fn read_dir(&self, req: Request<pb::ReadDirRequest>) -> GrpcResult<pb::ReadDirReply> {
        let r = req.into_inner();
        let limit = if r.limit == 0 { 1000 } else { r.limit as usize };
        // A whole live directory, covered before it is read
        // (crate::changes, Cover::Dir): not the root, where a restore adds
        // its volume's name without publishing it until it is done. Only
        // one that fits the page (a first read without attributes says),
        // unless the client reads it whole in pages (`paged`): a covered
        // directory makes every other client's change in it wait for this
        // one, which a listing that cannot be complete is not worth. A
        // paged listing covers the directory again on every page
        // (idempotent), so a page read by a new leader is covered there
        // too; the client keeps the pages only if no change reached it
        // between the first and the last.
        let cover = r.lease_session != 0
            && r.snapshot.is_none()
            && (r.cookie.is_empty() || r.paged)
            && r.ino != ROOT_INO;
        if cover {
            self.leased_read_here(r.lease_session)?;
        }
        let fs = self.read().await?;
        let covered = cover
            && (r.paged || matches!(fs.readdir(r.ino, &[], limit, false), Ok((_, None))))
            && self.cover(r.lease_session, Cover::Dir(r.ino));
        // A covered listing with attributes reads each entry's itself, in
        // the loop below, not with the names.
        let each = covered && r.plus;
        let (entries, next) = match snapshot_ref(r.snapshot.as_ref()) {
            Some((v, seq)) => fs.snapshot_readdir(v, seq, r.ino, &r.cookie, limit, r.plus),
            None => fs.readdir(r.ino, &r.cookie, limit, r.plus && !each),
        }
        .map_err(fs_err)?;
        let leased = covered && (r.paged || next.is_none());
        // A leased listing with attributes covers the files too, as a
        // leased lookup does: each file is registered, then its attributes
        // are read (crate::changes). One freed meanwhile goes without
        // attributes (its name is covered by the directory's).
        let attrs_leased = leased && r.plus;
        let at = snapshot_ref(r.snapshot.as_ref());
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let attr = if each {
                if attrs_leased && e.kind != Kind::Dir {
                    self.cover(r.lease_session, Cover::Ino(e.ino));
                }
                fs.getattr(e.ino).ok()
            } else {
                e.attr
            };
            out.push(pb::DirEntry {
                attr: attr.as_ref().map(|a| attr_full(fs, at, a)).transpose()?,
                name: e.name,
                ino: e.ino,
                kind: kind_pb(e.kind) as i32,
            });
        }
        Ok(Response::new(pb::ReadDirReply {
            entries: out,
            leased,
            attrs_leased,
            next_cookie: next.unwrap_or_default(),
        }))
    }

    async fn read_link(&self, req: Request<pb::ReadLinkRequest>) -> GrpcResult<pb::ReadLinkReply> {
        let r = req.into_inner();
        let fs = self.read().await?;
        let target = match snapshot_ref(r.snapshot.as_ref()) {
            Some((v, seq)) => fs.snapshot_getattr(v, seq, r.ino).and_then(|i| {
                i.target.ok_or_else(|| {
                    FsError::new(
                        ErrorCode::Invalid,
                        format!("inode {} is not a symlink", r.ino),
                    )
                })
            }),
            None => fs.readlink(r.ino),
        }
        .map_err(fs_err)?;
        Ok(Response::new(pb::ReadLinkReply { target }))
    }

    async fn get_xattr(&self, req: Request<pb::GetXattrRequest>) -> GrpcResult<pb::GetXattrReply> {
        let r = req.into_inner();
        let fs = self.read().await?;
        let value = match snapshot_ref(r.snapshot.as_ref()) {
            Some((v, seq)) => fs.snapshot_xattrs(v, seq, r.ino).and_then(|all| {
                all.into_iter()
                    .find(|(n, _)| *n == r.name)
                    .map(|(_, v)| v)
                    .ok_or_else(|| {
                        FsError::new(ErrorCode::NoData, format!("no xattr {:?}", r.name))
                    })
            }),
            None => fs.getxattr(r.ino, &r.name),
        }
        .map_err(fs_err)?;
        Ok(Response::new(pb::GetXattrReply { value }))
    }

    async fn list_xattr(
        &self,
        req: Request<pb::ListXattrRequest>,
    ) -> GrpcResult<pb::ListXattrReply> {
        let r = req.into_inner();
        let fs = self.read().await?;
        let names = match snapshot_ref(r.snapshot.as_ref()) {
            Some((v, seq)) => fs
                .snapshot_xattrs(v, seq, r.ino)
                .map(|all| all.into_iter().map(|(n, _)| n).collect()),
            None => fs.listxattr(r.ino),
        }
        .map_err(fs_err)?;
        Ok(Response::new(pb::ListXattrReply { names }))
    }

    async fn stat_fs(&self, req: Request<pb::StatFsRequest>) -> GrpcResult<pb::StatFsReply> {
        let r = req.into_inner();
        let fs = self.read().await?;
        let s = fs.statfs(r.volume_id).map_err(fs_err)?;
        let (cap, used_disk) = {
            let live = self.shared.liveness();
            live.chunkservers
                .values()
                .fold((0u64, 0u64), |(c, u), (_, ts)| {
                    (
                        c + ts.iter().map(|t| t.capacity_bytes).sum::<u64>(),
                        u + ts.iter().map(|t| t.used_bytes).sum::<u64>(),
                    )
                })
        };
        // Raw capacity divided by the replication factor, bounded by quota.
        let mut total = cap / 3;
        let mut free = cap.saturating_sub(used_disk) / 3;
        if s.quota_bytes != 0 {
            total = s.quota_bytes;
            free = s.quota_bytes.saturating_sub(s.used_bytes);
        }
        Ok(Response::new(pb::StatFsReply {
            total_bytes: total,
            free_bytes: free,
            used_bytes: s.used_bytes,
            files: s.files,
            block_size: 4096,
            name_max: cairn_proto::names::NAME_MAX as u32,
            files_free: if s.quota_inodes != 0 {
                s.quota_inodes.saturating_sub(s.files)
            } else {
                u64::MAX >> 1
            },
        }))
    }

    #[instrument(skip_all, fields(parent = req.get_ref().parent))]
    async fn mkdir(&self, req: Request<pb::MkdirRequest>) -> GrpcResult<pb::EntryReply> {
        let r = req.into_inner();
        let op = Op::Mkdir {
            parent: r.parent,
            name: r.name,
            mode: r.mode,
            uid: r.uid,
            gid: r.gid,
        };
        let reply = self.write(r.rid.as_ref(), op).await?;
        Ok(Response::new(entry_reply(reply)?))
    }

    #[instrument(skip_all, fields(parent = req.get_ref().parent))]
    async fn create(&self, req: Request<pb::CreateRequest>) -> GrpcResult<pb::EntryReply> {
        let r = req.into_inner();
        // A file of an encrypted volume needs a salt, drawn here, never
        // while applying. Only the apply step knows the parent's volume for
        // sure, and keeps the salt only in an encrypted one; a parent known
        // here to be in a plain volume gets none, so plain volumes' entries
        // stay as builds before encryption wrote them.
        let salt = if self.shared.fs.creates_plain_files(r.parent) {
            Vec::new()
        } else {
            rand::random::<[u8; SALT_LEN]>().to_vec()
        };
        // The name is covered before the create, the file once it exists,
        // then read again: the creator may cache what it made as it would
        // a leased lookup's answer (crate::changes).
        let leased = self.cover(r.lease_session, Cover::Name(r.parent, &r.name));
        let op = Op::Create {
            parent: r.parent,
            name: r.name,
            mode: r.mode,
            uid: r.uid,
            gid: r.gid,
            exclusive: r.exclusive,
            open_for_write: r.open_for_write,
            salt,
        };
        let reply = self.write(r.rid.as_ref(), op).await?;
        // An existing file (O_CREAT without O_EXCL) may be a restored one.
        let mut out = entry_reply(reply)?;
        if let Some(a) = out.attr.as_mut() {
            let fs = &self.shared.fs;
            let covered = leased && self.cover(r.lease_session, Cover::Ino(a.ino));
            match covered.then(|| fs.getattr(a.ino).ok()).flatten() {
                Some(now) => {
                    *a = attr_full(fs, None, &now)?;
                    out.leased = true;
                }
                None => fill_origin(fs, None, a)?,
            }
        }
        Ok(Response::new(out))
    }

    async fn symlink(&self, req: Request<pb::SymlinkRequest>) -> GrpcResult<pb::EntryReply> {
        let r = req.into_inner();
        let op = Op::Symlink {
            parent: r.parent,
            name: r.name,
            target: r.target,
            uid: r.uid,
            gid: r.gid,
        };
        let reply = self.write(r.rid.as_ref(), op).await?;
        Ok(Response::new(entry_reply(reply)?))
    }

    async fn mknod(&self, req: Request<pb::MknodRequest>) -> GrpcResult<pb::EntryReply> {
        let r = req.into_inner();
        let kind = match pb::FileType::try_from(r.kind) {
            Ok(pb::FileType::Fifo) => Kind::Fifo,
            Ok(pb::FileType::Socket) => Kind::Socket,
            Ok(pb::FileType::CharDevice) => Kind::CharDevice(r.rdev),
            Ok(pb::FileType::BlockDevice) => Kind::BlockDevice(r.rdev),
            _ => {
                return Err(bad(format!(
                    "mknod makes FIFOs, sockets and device nodes; file type {} is not one",
                    r.kind
                )));
            }
        };
        let op = Op::Mknod {
            parent: r.parent,
            name: r.name,
            kind,
            mode: r.mode,
            uid: r.uid,
            gid: r.gid,
        };
        let reply = self.write(r.rid.as_ref(), op).await?;
        Ok(Response::new(entry_reply(reply)?))
    }

    async fn link(&self, req: Request<pb::LinkRequest>) -> GrpcResult<pb::EntryReply> {
        let r = req.into_inner();
        let op = Op::Link {
            ino: r.ino,
            new_parent: r.new_parent,
            new_name: r.new_name,
        };
        let reply = self.write(r.rid.as_ref(), op).await?;
        Ok(Response::new(entry_reply(reply)?))
    }

    async fn unlink(&self, req: Request<pb::UnlinkRequest>) -> GrpcResult<pb::UnlinkReply> {
        let r = req.into_inner();
        let op = Op::Unlink {
            parent: r.parent,
            name: r.name,
            held_open: r.held_open,
        };
        let reply = self.write(r.rid.as_ref(), op).await?;
        Ok(Response::new(removed_reply(reply)?))
    }

    async fn rmdir(&self, req: Request<pb::RmdirRequest>) -> GrpcResult<pb::UnlinkReply> {
        let r = req.into_inner();
        let op = Op::Rmdir {
            parent: r.parent,
            name: r.name,
        };
        let reply = self.write(r.rid.as_ref(), op).await?;
        Ok(Response::new(removed_reply(reply)?))
    }

    async fn rename(&self, req: Request<pb::RenameRequest>) -> GrpcResult<pb::RenameReply> {
        let r = req.into_inner();
        let op = Op::Rename {
            parent: r.parent,
            name: r.name,
            new_parent: r.new_parent,
            new_name: r.new_name,
            noreplace: r.noreplace,
            exchange: r.exchange,
        };
        match self.write(r.rid.as_ref(), op).await? {
            Reply::Renamed { attr, replaced } => {
                // Not in the reply the state machine records: read here,
                // from the state the rename applied to (best effort, as a
                // directory's attributes are everywhere, crate::changes).
                let dir = |ino: u64| self.shared.fs.getattr(ino).ok().map(|d| attr_pb(&d));
                let parent = dir(r.parent);
                let new_parent = if r.new_parent == r.parent {
                    parent.clone()
                } else {
                    dir(r.new_parent)
                };
                Ok(Response::new(pb::RenameReply {
                    attr: Some(attr_pb(&attr)),
                    replaced_ino: replaced.map_or(0, |(i, _)| i),
                    replaced_freed: replaced.is_some_and(|(_, f)| f),
                    parent,
                    new_parent,
                }))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn set_attr(&self, req: Request<pb::SetAttrRequest>) -> GrpcResult<pb::AttrReply> {
        let r = req.into_inner();
        let op = Op::SetAttr {
            ino: r.ino,
            attr: SetAttr {
                mode: r.mode,
                uid: r.uid,
                gid: r.gid,
                size: r.size,
                atime: set_time(r.atime),
                mtime: set_time(r.mtime),
            },
        };
        let reply = self.write(r.rid.as_ref(), op).await?;
        Ok(Response::new(attr_reply(reply)?))
    }

    async fn set_xattr(&self, req: Request<pb::SetXattrRequest>) -> GrpcResult<pb::Empty> {
        let r = req.into_inner();
        let op = Op::SetXattr {
            ino: r.ino,
            name: r.name,
            value: r.value,
            create_only: r.create_only,
            replace_only: r.replace_only,
        };
        self.write(r.rid.as_ref(), op).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn remove_xattr(&self, req: Request<pb::RemoveXattrRequest>) -> GrpcResult<pb::Empty> {
        let r = req.into_inner();
        let op = Op::RemoveXattr {
            ino: r.ino,
            name: r.name,
        };
        self.write(r.rid.as_ref(), op).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn create_volume(
        &self,
        req: Request<pb::CreateVolumeRequest>,
    ) -> GrpcResult<pb::VolumeReply> {
        let r = req.into_inner();
        let op = create_volume_op(r.name, r.policy)?;
        let reply = self.write(r.rid.as_ref(), op).await?;
        Ok(Response::new(volume_reply(reply, &self.shared.fs)?))
    }

    #[instrument(skip_all, fields(volume = %req.get_ref().name))]
    async fn rotate_volume_key(
        &self,
        req: Request<pb::RotateVolumeKeyRequest>,
    ) -> GrpcResult<pb::VolumeReply> {
        let r = req.into_inner();
        let check = key_check(&r.check)?;
        let op = Op::RotateVolumeKey {
            name: r.name,
            check,
        };
        let reply = volume_reply(self.write(r.rid.as_ref(), op).await?, &self.shared.fs)?;
        if let Some(v) = &reply.volume {
            tracing::info!(
                volume = %v.name,
                key_version = v.policy.as_ref().map_or(0, |p| p.key_version),
                "volume key rotated: new files use the new version"
            );
        }
        Ok(Response::new(reply))
    }

    #[instrument(skip_all, fields(volume = %req.get_ref().name))]
    async fn set_volume_quota(
        &self,
        req: Request<pb::SetVolumeQuotaRequest>,
    ) -> GrpcResult<pb::VolumeReply> {
        let r = req.into_inner();
        let op = Op::SetVolumeQuota {
            name: r.name,
            bytes: r.quota_bytes,
            inodes: r.quota_inodes,
        };
        let reply = volume_reply(self.write(r.rid.as_ref(), op).await?, &self.shared.fs)?;
        if let Some(v) = &reply.volume {
            let p = v.policy.clone().unwrap_or_default();
            tracing::info!(volume = %v.name, quota_bytes = p.quota_bytes, quota_inodes = p.quota_inodes, "volume quota set");
        }
        Ok(Response::new(reply))
    }

    #[instrument(skip_all, fields(ino = req.get_ref().ino))]
    async fn set_dir_quota(
        &self,
        req: Request<pb::SetDirQuotaRequest>,
    ) -> GrpcResult<pb::DirQuotaReply> {
        let r = req.into_inner();
        let op = Op::SetDirQuota {
            ino: r.ino,
            bytes: r.quota_bytes,
            inodes: r.quota_inodes,
        };
        let q = match self.write(r.rid.as_ref(), op).await? {
            Reply::DirQuota(q) => q,
            other => return Err(unexpected(&other)),
        };
        tracing::info!(
            ino = q.ino,
            quota_bytes = q.quota_bytes,
            quota_inodes = q.quota_inodes,
            "directory quota set"
        );
        Ok(Response::new(pb::DirQuotaReply {
            quota: Some(dir_quota_pb(&q)),
        }))
    }

    async fn get_dir_quota(
        &self,
        req: Request<pb::GetDirQuotaRequest>,
    ) -> GrpcResult<pb::DirQuotaReply> {
        let r = req.into_inner();
        let fs = self.read().await?;
        let q = fs.dir_quota(r.ino).map_err(fs_err)?;
        Ok(Response::new(pb::DirQuotaReply {
            quota: q.as_ref().map(dir_quota_pb),
        }))
    }

    #[instrument(skip_all, fields(volume = %req.get_ref().volume, snapshot = %req.get_ref().name))]
    async fn create_snapshot(
        &self,
        req: Request<pb::CreateSnapshotRequest>,
    ) -> GrpcResult<pb::SnapshotReply> {
        let r = req.into_inner();
        let op = Op::CreateSnapshot {
            volume: r.volume,
            name: r.name,
        };
        let s = match self.write(r.rid.as_ref(), op).await? {
            Reply::Snapshot(s) => s,
            other => return Err(unexpected(&other)),
        };
        let deadline = Instant::now() + SNAPSHOT_READY_WAIT;
        loop {
            let pending = snapshot_pending(&self.shared, s.seq)?;
            if pending.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(CairnStatus::new(
                    ErrorCode::Unavailable,
                    format!(
                        "snapshot {} was taken but chunkservers {pending:?} have not fenced its                          seq {} within {SNAPSHOT_READY_WAIT:?}; its data cannot be read until they                          do. Retry the same command to wait again",
                        s.name, s.seq
                    ),
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(seq = s.seq, "snapshot taken and ready");
        Ok(Response::new(pb::SnapshotReply {
            snapshot: Some(snapshot_pb(&s, true)),
        }))
    }

    #[instrument(skip_all, fields(volume = %req.get_ref().volume, snapshot = %req.get_ref().name))]
    async fn delete_snapshot(
        &self,
        req: Request<pb::DeleteSnapshotRequest>,
    ) -> GrpcResult<pb::SnapshotReply> {
        let r = req.into_inner();
        let op = Op::DeleteSnapshot {
            volume: r.volume,
            name: r.name,
        };
        match self.write(r.rid.as_ref(), op).await? {
            Reply::Snapshot(s) => {
                tracing::info!(seq = s.seq, "snapshot deleted");
                Ok(Response::new(pb::SnapshotReply {
                    snapshot: Some(snapshot_pb(&s, false)),
                }))
            }
            other => Err(unexpected(&other)),
        }
    }

    #[instrument(skip_all, fields(volume = %req.get_ref().volume, snapshot = %req.get_ref().snapshot, to = %req.get_ref().to))]
    async fn restore_snapshot(
        &self,
        req: Request<pb::RestoreSnapshotRequest>,
    ) -> GrpcResult<pb::RestoreReply> {
        let r = req.into_inner();
        let op = Op::RestoreSnapshot {
            volume: r.volume,
            snapshot: r.snapshot,
            to: r.to.clone(),
        };
        let id = match self.write(r.rid.as_ref(), op).await? {
            Reply::Restore(v, _) => {
                tracing::info!(volume = v.id, "restore started");
                v.id
            }
            other => return Err(unexpected(&other)),
        };
        // A small tree is copied before the answer; the leader's duties
        // copy the rest.
        let started = Instant::now();
        while started.elapsed() < RESTORE_INLINE {
            match self
                .shared
                .propose(None, Op::RestoreStep { volume: id })
                .await
            {
                Ok(Reply::Restore(_, Some(_))) => {}
                _ => break,
            }
        }
        self.restore_reply(&r.to)
    }

    async fn restore_status(
        &self,
        req: Request<pb::RestoreStatusRequest>,
    ) -> GrpcResult<pb::RestoreReply> {
        let r = req.into_inner();
        self.read().await?;
        self.restore_reply(&r.volume)
    }

    async fn copy_up(&self, req: Request<pb::CopyUpRequest>) -> GrpcResult<pb::CopyUpReply> {
        let r = req.into_inner();
        let op = Op::CopyUp {
            ino: r.ino,
            discard: r.discard,
        };
        let copy = match self.write(r.rid.as_ref(), op).await? {
            Reply::Origin(o) => o.is_some(),
            other => return Err(unexpected(&other)),
        };
        let fs = &self.shared.fs;
        let a = fs.getattr(r.ino).map_err(fs_err)?;
        Ok(Response::new(pb::CopyUpReply {
            copy,
            attr: Some(attr_full(fs, None, &a)?),
        }))
    }

    async fn copy_done(&self, req: Request<pb::CopyDoneRequest>) -> GrpcResult<pb::AttrReply> {
        let r = req.into_inner();
        match self
            .write(r.rid.as_ref(), Op::CopyDone { ino: r.ino })
            .await?
        {
            Reply::Origin(_) => {}
            other => return Err(unexpected(&other)),
        }
        let fs = &self.shared.fs;
        let a = fs.getattr(r.ino).map_err(fs_err)?;
        Ok(Response::new(pb::AttrReply {
            attr: Some(attr_full(fs, None, &a)?),
            ..Default::default()
        }))
    }

    async fn list_snapshots(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> GrpcResult<pb::ListSnapshotsReply> {
        let r = req.into_inner();
        let fs = self.read().await?;
        let Some(v) = fs
            .volumes()
            .map_err(fs_err)?
            .into_iter()
            .find(|v| v.name == r.volume)
        else {
            return Err(
                CairnStatus::new(ErrorCode::NotFound, format!("no volume {}", r.volume)).into(),
            );
        };
        let snapshots = fs.snapshots(v.id).map_err(fs_err)?;
        // Old chunk versions each snapshot alone reads, on every
        // chunkserver that reported; the files deleted from the live tree
        // that the oldest keeps (deleting a later one hands its kept files
        // to the one before it).
        let mut exclusive: HashMap<u64, u64> = HashMap::new();
        for rows in self.shared.liveness().snapshot_space.values() {
            for r in rows {
                *exclusive.entry(r.seq).or_default() += r.exclusive_bytes;
            }
        }
        if let Some(oldest) = snapshots.iter().map(|s| s.seq).min() {
            let kept = fs.pinned_bytes(v.id, oldest).map_err(fs_err)?;
            *exclusive.entry(oldest).or_default() += kept;
        }
        let mut out = Vec::with_capacity(snapshots.len());
        for s in &snapshots {
            let ready = snapshot_pending(&self.shared, s.seq)?.is_empty();
            let mut p = snapshot_pb(s, ready);
            p.exclusive_bytes = exclusive.get(&s.seq).copied().unwrap_or(0);
            out.push(p);
        }
        Ok(Response::new(pb::ListSnapshotsReply { snapshots: out }))
    }

    async fn list_volumes(&self, _req: Request<pb::Empty>) -> GrpcResult<pb::ListVolumesReply> {
        let fs = self.read().await?;
        let volumes = fs.volumes().map_err(fs_err)?;
        let keys = fs.volume_keys().map_err(fs_err)?;
        let compression = fs.volume_compression().map_err(fs_err)?;
        Ok(Response::new(pb::ListVolumesReply {
            volumes: volumes
                .iter()
                .map(|v| volume_pb(v, keys.get(&v.id), compression.get(&v.id)))
                .collect(),
        }))
    }

    async fn open_session(
        &self,
        req: Request<pb::OpenSessionRequest>,
    ) -> GrpcResult<pb::OpenSessionReply> {
        let r = req.into_inner();
        let op = Op::OpenSession {
            client_name: r.client_name,
        };
        match self.write(None, op).await? {
            Reply::Session(id) => {
                self.shared.liveness().sessions.insert(id, Instant::now());
                Ok(Response::new(pb::OpenSessionReply {
                    session_id: id,
                    timeout_ms: self.shared.config.session_timeout.as_millis() as u64,
                }))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn renew_session(&self, req: Request<pb::SessionRequest>) -> GrpcResult<pb::Empty> {
        let r = req.into_inner();
        self.leader_only()?;
        if !self.shared.fs.has_session(r.session_id).map_err(fs_err)? {
            return Err(CairnStatus::new(
                ErrorCode::SessionExpired,
                format!("session {} is unknown or expired", r.session_id),
            )
            .into());
        }
        self.shared
            .liveness()
            .sessions
            .insert(r.session_id, Instant::now());
        Ok(Response::new(pb::Empty {}))
    }

    async fn close_session(&self, req: Request<pb::SessionRequest>) -> GrpcResult<pb::Empty> {
        let r = req.into_inner();
        self.write(
            None,
            Op::CloseSession {
                session: r.session_id,
            },
        )
        .await?;
        self.shared.liveness().sessions.remove(&r.session_id);
        Ok(Response::new(pb::Empty {}))
    }

    async fn open(&self, req: Request<pb::OpenRequest>) -> GrpcResult<pb::AttrReply> {
        let r = req.into_inner();
        if !r.write {
            // Read opens are not recorded (see fs::session); a linearizable
            // getattr gives close-to-open consistency.
            let fs = self.read().await?;
            let a = fs.getattr(r.ino).map_err(fs_err)?;
            return Ok(Response::new(pb::AttrReply {
                attr: Some(attr_full(fs, None, &a)?),
                ..Default::default()
            }));
        }
        let op = Op::Open {
            ino: r.ino,
            write: true,
        };
        let reply = self.write(r.rid.as_ref(), op).await?;
        let mut out = attr_reply(reply)?;
        if let Some(a) = out.attr.as_mut() {
            fill_origin(&self.shared.fs, None, a)?;
        }
        Ok(Response::new(out))
    }

    async fn close(&self, req: Request<pb::CloseRequest>) -> GrpcResult<pb::AttrReply> {
        let r = req.into_inner();
        if r.written_extent > r.length {
            // Before the close that releases the file: recorded on retry too
            // (it only ever widens what the collector removes).
            self.write(
                None,
                Op::MarkExtent {
                    ino: r.ino,
                    extent: r.written_extent,
                },
            )
            .await?;
        }
        let length = r.has_length.then_some((r.length, r.truncate_gen));
        // A compressed file's byte counts go with the close, in one entry
        // under its request id: a retry counts them once.
        let op = if r.logical_written > 0 {
            Op::CloseCounted {
                ino: r.ino,
                length,
                logical: r.logical_written,
                stored: r.stored_written,
            }
        } else {
            Op::Close { ino: r.ino, length }
        };
        let reply = self.write(r.rid.as_ref(), op).await?;
        Ok(Response::new(attr_reply(reply)?))
    }

    async fn release_files(&self, req: Request<pb::ReleaseFilesRequest>) -> GrpcResult<pb::Empty> {
        let r = req.into_inner();
        if r.inos.len() > MAX_RELEASES {
            return Err(bad(format!(
                "{} files in one release, at most {MAX_RELEASES}",
                r.inos.len()
            )));
        }
        self.write(r.rid.as_ref(), Op::ReleaseFiles { inos: r.inos })
            .await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn set_lock(&self, req: Request<pb::SetLockRequest>) -> GrpcResult<pb::LockReply> {
        let r = req.into_inner();
        let op = Op::SetLock {
            ino: r.ino,
            owner: r.owner,
            start: r.start,
            end: r.end,
            kind: lock_kind(r.r#type)?,
            pid: r.pid,
        };
        match self.write(r.rid.as_ref(), op).await? {
            Reply::Lock(held) => Ok(Response::new(lock_reply(held))),
            other => Err(unexpected(&other)),
        }
    }

    async fn get_lock(&self, req: Request<pb::GetLockRequest>) -> GrpcResult<pb::LockReply> {
        let r = req.into_inner();
        let kind = lock_kind(r.r#type)?;
        if r.start > r.end {
            return Err(bad(format!(
                "lock range starts at {} after its end {}",
                r.start, r.end
            )));
        }
        let fs = self.read().await?;
        fs.getattr(r.ino).map_err(fs_err)?;
        let held = fs
            .get_lock(r.ino, r.session_id, r.owner, (r.start, r.end), kind)
            .map_err(fs_err)?;
        Ok(Response::new(lock_reply(held)))
    }

    async fn report_length(
        &self,
        req: Request<pb::ReportLengthRequest>,
    ) -> GrpcResult<pb::AttrReply> {
        let r = req.into_inner();
        let op = Op::ReportLength {
            ino: r.ino,
            length: r.length,
            truncate_gen: r.truncate_gen,
        };
        let reply = self.write(r.rid.as_ref(), op).await?;
        Ok(Response::new(attr_reply(reply)?))
    }

    #[instrument(skip_all, fields(host = %req.get_ref().host))]
    async fn register_chunkserver(
        &self,
        req: Request<pb::RegisterChunkserverRequest>,
    ) -> GrpcResult<pb::RegisterChunkserverReply> {
        let r = req.into_inner();
        if r.targets.iter().any(|t| t.uuid.is_empty()) {
            return Err(bad("every target needs a uuid"));
        }
        let op = Op::RegisterChunkserver {
            node_uuid: r.node_uuid,
            host: r.host,
            shard_ports: r.shard_ports,
            zone: r.zone,
            targets: r
                .targets
                .iter()
                .map(|t| TargetSpec {
                    uuid: t.uuid.clone(),
                    capacity: t.capacity_bytes,
                })
                .collect(),
        };
        match self.write(None, op).await? {
            Reply::Chunkserver { id, target_ids } => {
                self.shared
                    .liveness()
                    .chunkservers
                    .insert(id, (Instant::now(), r.targets));
                let interval = self.shared.config.chunkserver_timeout / 5;
                Ok(Response::new(pb::RegisterChunkserverReply {
                    chunkserver_id: id,
                    target_ids,
                    heartbeat_interval_ms: interval.as_millis() as u64,
                    heartbeat_timeout_ms: self.shared.config.chunkserver_timeout.as_millis() as u64,
                    snap_seq: self.shared.fs.snap_seq().map_err(fs_err)?,
                }))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn chunkserver_heartbeat(
        &self,
        req: Request<pb::ChunkserverHeartbeatRequest>,
    ) -> GrpcResult<pb::ChunkserverHeartbeatReply> {
        let r = req.into_inner();
        // Only a leader a quorum still follows extends a chunkserver's
        // lease and tells it the table's version: a leader cut off from
        // the other replicas keeps believing it leads, and its answers
        // would keep a chunkserver serving that the real leader is taking
        // out of its chains, and its watch on a replica that no longer
        // learns the table (the chunkserver's control module docs).
        self.leader_only()?;
        self.shared.linearize().await.map_err(Status::from)?;
        let known = self
            .shared
            .fs
            .chunkserver_registered(r.chunkserver_id)
            .map_err(fs_err)?;
        if !known {
            return Err(CairnStatus::new(
                ErrorCode::NotFound,
                format!("chunkserver {} is not registered", r.chunkserver_id),
            )
            .into());
        }
        {
            let now = Instant::now();
            let mut live = self.shared.liveness();
            live.chunkservers.insert(r.chunkserver_id, (now, r.targets));
            live.snap_acks.insert(r.chunkserver_id, r.snap_seq_drained);
            live.snapshot_space
                .insert(r.chunkserver_id, r.snapshot_space);
            if let Some(mut p) = r.repair {
                if let Some((at, prev)) = live.repair.get(&r.chunkserver_id) {
                    let secs = now.duration_since(*at).as_secs_f64();
                    if secs > 0.0 {
                        let d = p.bytes_copied.saturating_sub(prev.bytes_copied);
                        p.bytes_per_sec = (d as f64 / secs) as u64;
                    }
                }
                live.repair.insert(r.chunkserver_id, (now, p));
            }
        }
        // A chunkserver stopping (SIGTERM) opens a maintenance window once;
        // back (a heartbeat without `leaving`), its restart window closes.
        let window = self
            .shared
            .fs
            .maintenance()
            .map_err(fs_err)?
            .get(&r.chunkserver_id)
            .copied();
        if r.leaving && window.is_none_or(|m| m.until_ns <= now_ns()) {
            let until = now_ns().saturating_add(
                i64::try_from(self.shared.config.maintenance_window.as_nanos()).unwrap_or(i64::MAX),
            );
            tracing::info!(
                chunkserver = r.chunkserver_id,
                "chunkserver leaving for a restart: its targets go offline in their chains, not replaced during the maintenance window"
            );
            self.enter_maintenance(r.chunkserver_id, until, false)
                .await?;
        } else if !r.leaving && window.is_some_and(|m| !m.hold) {
            // Back from a restart: the window closes; its targets rejoin
            // as syncing (leader duties) and are resynced by version.
            self.lift_maintenance(r.chunkserver_id).await?;
        }
        for s in &r.synced {
            tracing::info!(
                chain = s.chain_id,
                version = s.chain_version,
                by = r.chunkserver_id,
                "chain synced: its syncing members become serving"
            );
            self.shared
                .propose(
                    None,
                    Op::ChainSynced {
                        chain: s.chain_id,
                        version: s.chain_version,
                    },
                )
                .await
                .map_err(Status::from)?;
        }
        let version = self
            .shared
            .fs
            .chains_version()
            .map_err(|e| Status::internal(e.to_string()))?;
        let snap_seq = self.shared.fs.snap_seq().map_err(fs_err)?;
        let live_snapshots = self
            .shared
            .fs
            .ready_snapshots()
            .map_err(fs_err)?
            .into_iter()
            .map(|(_, seq)| seq)
            .collect();
        Ok(Response::new(pb::ChunkserverHeartbeatReply {
            chain_table_version: version,
            snap_seq,
            live_snapshots,
        }))
    }

    #[instrument(skip_all, fields(chunkserver = req.get_ref().chunkserver_id))]
    async fn set_maintenance(
        &self,
        req: Request<pb::SetMaintenanceRequest>,
    ) -> GrpcResult<pb::Empty> {
        let r = req.into_inner();
        self.leader_only()?;
        if !self
            .shared
            .fs
            .chunkserver_registered(r.chunkserver_id)
            .map_err(fs_err)?
        {
            return Err(CairnStatus::new(
                ErrorCode::NotFound,
                format!("no chunkserver {} is registered", r.chunkserver_id),
            )
            .into());
        }
        if r.duration_ms == 0 {
            tracing::info!(chunkserver = r.chunkserver_id, "maintenance lifted");
            self.lift_maintenance(r.chunkserver_id).await?;
        } else {
            let until = now_ns().saturating_add(
                i64::try_from(r.duration_ms.saturating_mul(1_000_000)).unwrap_or(i64::MAX),
            );
            tracing::info!(
                chunkserver = r.chunkserver_id,
                duration_ms = r.duration_ms,
                "maintenance"
            );
            self.enter_maintenance(r.chunkserver_id, until, true)
                .await?;
        }
        Ok(Response::new(pb::Empty {}))
    }

    #[instrument(skip_all, fields(chunkserver = req.get_ref().chunkserver_id))]
    async fn report_chunks(
        &self,
        req: Request<pb::ReportChunksRequest>,
    ) -> GrpcResult<pb::ReportChunksReply> {
        let r = req.into_inner();
        self.leader_only()?;
        // Every create the leader acknowledged is applied here first: a
        // chunk is written only after its file's create, so a reference is
        // never missed.
        self.shared.linearize().await?;
        let referenced = self.shared.fs.referenced_objects().map_err(fs_err)?;
        let tables = self.shared.fs.chain_tables().map_err(fs_err)?;
        let member = |chain: u32| {
            tables
                .iter()
                .flat_map(|(_, cs)| cs.iter())
                .find(|c| c.id == chain)
                .is_some_and(|c| c.members.iter().any(|m| m.chunkserver == r.chunkserver_id))
        };
        // (object, chain); chain 0 stands for "the object is unreferenced".
        let orphans: std::collections::HashSet<(u64, u32)> = r
            .entries
            .iter()
            .filter_map(|e| {
                if !referenced.contains(&e.object_id) {
                    Some((e.object_id, 0))
                } else if e.chain_id != 0 && !member(e.chain_id) {
                    Some((e.object_id, e.chain_id))
                } else {
                    None
                }
            })
            .collect();
        let previous = self
            .shared
            .liveness()
            .orphan_suspects
            .insert(r.chunkserver_id, orphans.clone())
            .unwrap_or_default();
        let confirmed: Vec<(u64, u32)> = orphans.intersection(&previous).copied().collect();
        let unreferenced: Vec<u64> = confirmed
            .iter()
            .filter(|(_, c)| *c == 0)
            .map(|(o, _)| *o)
            .collect();
        let remove: Vec<pb::ChunkReportEntry> = confirmed
            .iter()
            .filter(|(_, c)| *c != 0)
            .map(|(object_id, chain_id)| pb::ChunkReportEntry {
                object_id: *object_id,
                chain_id: *chain_id,
            })
            .collect();
        if !confirmed.is_empty() {
            tracing::warn!(
                chunkserver = r.chunkserver_id,
                unreferenced = unreferenced.len(),
                left_chains = remove.len(),
                "chunk report: orphaned chunks confirmed in two rounds; the chunkserver removes them"
            );
        }
        Ok(Response::new(pb::ReportChunksReply {
            remove,
            unreferenced,
        }))
    }

    #[instrument(skip_all, fields(
        chunkserver = req.get_ref().chunkserver_id,
        target = req.get_ref().target_id,
    ))]
    async fn report_corruption(
        &self,
        req: Request<pb::ReportCorruptionRequest>,
    ) -> GrpcResult<pb::Empty> {
        let r = req.into_inner();
        self.leader_only()?;
        if r.bad_blocks.is_empty() {
            return Err(bad("a corruption report needs at least one bad block"));
        }
        let servers = self.shared.fs.chunkservers().map_err(fs_err)?;
        let Some(cs) = servers.iter().find(|c| c.id == r.chunkserver_id) else {
            return Err(CairnStatus::new(
                ErrorCode::NotFound,
                format!("chunkserver {} is not registered", r.chunkserver_id),
            )
            .into());
        };
        if !cs.targets.iter().any(|t| t.id == r.target_id) {
            return Err(CairnStatus::new(
                ErrorCode::NotFound,
                format!(
                    "target {} is not a target of chunkserver {}",
                    r.target_id, r.chunkserver_id
                ),
            )
            .into());
        }
        let chunk = ChunkId {
            object: ObjectId(r.object_id),
            index: r.chunk_index,
        };
        tracing::warn!(
            %chunk,
            bad_blocks = r.bad_blocks.len(),
            first = ?&r.bad_blocks[..r.bad_blocks.len().min(8)],
            detail = %truncate_utf8(&r.detail, MAX_DETAIL_BYTES),
            "a chunkserver reported a corrupt replica"
        );
        self.shared.liveness().corrupt.record(
            ChunkserverId(r.chunkserver_id),
            TargetId(r.target_id),
            chunk,
            &r.bad_blocks,
            &r.detail,
            Instant::now(),
        );
        Ok(Response::new(pb::Empty {}))
    }

    async fn get_chains(&self, _req: Request<pb::Empty>) -> GrpcResult<pb::ChainTables> {
        self.read().await?;
        Ok(Response::new(chain_tables_pb(&self.shared)?))
    }

    type WatchChainsStream = WatchStream;

    type CallsStream = calls::CallsStream;

    async fn calls(&self, req: Request<Streaming<pb::Call>>) -> GrpcResult<Self::CallsStream> {
        Ok(Response::new(calls::CallsStream::new(
            self.clone(),
            req.into_inner(),
            self.shared.stop.clone(),
            self.rpc_metrics.clone(),
        )))
    }

    async fn watch_chains(
        &self,
        req: Request<pb::WatchChainsRequest>,
    ) -> GrpcResult<Self::WatchChainsStream> {
        let known = req.into_inner().known_version;
        let shared = self.shared.clone();
        let mut rx = shared.fs.watch_chains();
        let mut stop = shared.stop.clone();
        let (tx, out) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut last = known;
            let mut first = true;
            loop {
                let v = *rx.borrow_and_update();
                if v > last || (first && known == 0) {
                    let table = chain_tables_pb(&shared);
                    if tx.send(table).await.is_err() {
                        return;
                    }
                    last = v;
                }
                first = false;
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                    // An open watch must not hold up a graceful shutdown.
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    type WatchChangesStream = ChangesStream;

    async fn watch_changes(
        &self,
        req: Request<Streaming<pb::WatchChangesRequest>>,
    ) -> GrpcResult<Self::WatchChangesStream> {
        let shared = self.shared.clone();
        if !shared.is_leader() {
            return Err(shared.not_leader(shared.leader()).into());
        }
        let mut input = req.into_inner();
        let me = match tokio::time::timeout(FEED_HELLO, input.message()).await {
            Ok(Ok(Some(first))) => first.session_id,
            Ok(Ok(None)) => {
                return Err(Status::invalid_argument(
                    "the change feed needs a first message naming the session",
                ));
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "no first change-feed message within {FEED_HELLO:?}"
                )));
            }
        };
        let mut sub = shared.changes.subscribe(me);
        let mut metrics = shared.raft.metrics();
        let mut stop = shared.stop.clone();
        let (tx, out) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            // Whatever the client cached before this stream may be stale;
            // the reset covers every change applied before it.
            let reset = pb::Changes {
                reset: true,
                seq: sub.start,
                ..Default::default()
            };
            if tx.send(Ok(reset)).await.is_err() {
                return;
            }
            let mut lapsed = 0;
            loop {
                let (first, renew) = tokio::select! {
                    r = sub.rx.recv() => (Some(r), 0),
                    m = input.message() => match m {
                        Ok(Some(m)) => {
                            sub.ack(m.acked);
                            if m.renew == 0 {
                                continue;
                            }
                            // Every change already published goes out in
                            // the grant's message, before the grant
                            // (crate::changes).
                            (next_queued(&mut sub.rx), m.renew)
                        }
                        // The client went away.
                        Ok(None) | Err(_) => return,
                    },
                    () = tx.closed() => return,
                    _ = stop.wait_for(|s| *s) => return,
                    // A replica that stops leading ends its streams: the
                    // client resubscribes at the new leader (and resets).
                    _ = metrics.wait_for(|m| m.state != ServerState::Leader) => return,
                };
                let mut msg = pb::Changes::default();
                if renew != 0 {
                    // The client's lease: granted only while this replica's
                    // read lease holds, so a leader cut off from its quorum
                    // lets its clients' caches lapse before another leader
                    // can take changes.
                    lapsed = if shared.lease.valid() { 0 } else { lapsed + 1 };
                    if lapsed >= 4 {
                        return;
                    }
                    if lapsed == 0 {
                        sub.granted();
                        msg.granted = renew;
                    }
                }
                let mut next = first;
                while let Some(r) = next.take() {
                    match r {
                        Ok(c) => {
                            msg.seq = msg.seq.max(c.seq);
                            if c.session != me || me == 0 {
                                msg.inos.extend_from_slice(&c.inos);
                                msg.unlocked.extend_from_slice(&c.unlocked);
                                msg.entries.extend(c.entries.iter().map(|(parent, name)| {
                                    pb::EntryChange {
                                        parent: *parent,
                                        name: name.clone(),
                                    }
                                }));
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            msg.reset = true;
                            msg.seq = msg.seq.max(sub.position());
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                    // Gather what is already queued into the same message;
                    // all of it when the message carries a grant (the grant
                    // must not overtake a change published before it).
                    if msg.inos.len() < 4096 || msg.granted != 0 {
                        next = next_queued(&mut sub.rx);
                    }
                }
                let content = msg.reset
                    || !msg.inos.is_empty()
                    || !msg.entries.is_empty()
                    || !msg.unlocked.is_empty();
                if (content || msg.granted != 0) && tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    async fn status(&self, _req: Request<pb::Empty>) -> GrpcResult<pb::StatusReply> {
        Ok(Response::new(status_pb(&self.shared)))
    }

    #[instrument(skip_all, fields(addr = %req.get_ref().addr))]
    async fn join(&self, req: Request<pb::JoinRequest>) -> GrpcResult<pb::JoinReply> {
        let r = req.into_inner();
        if r.addr.is_empty()
            || r.addr.parse::<std::net::SocketAddr>().is_err() && !r.addr.contains(':')
        {
            return Err(bad(format!(
                "join needs a host:port address, got {:?}",
                r.addr
            )));
        }
        let id = match self
            .write(
                None,
                Op::AllocateNodeId {
                    addr: r.addr.clone(),
                },
            )
            .await?
        {
            Reply::NodeId(id) => id,
            other => return Err(unexpected(&other)),
        };
        // Non-blocking: the joiner starts serving Raft after this returns.
        self.shared
            .raft
            .add_learner(id, BasicNode { addr: r.addr }, false)
            .await
            .map_err(|e| membership_error(&self.shared, e))?;
        tracing::info!(node = id, "replica joined as a learner");
        Ok(Response::new(pb::JoinReply {
            node_id: id,
            cluster_id: self.shared.cluster_id.clone(),
        }))
    }

    async fn promote(&self, req: Request<pb::PromoteRequest>) -> GrpcResult<pb::StatusReply> {
        let id = req.into_inner().node_id;
        let known = {
            let m = self.shared.raft.metrics().borrow().clone();
            m.membership_config.membership().get_node(&id).is_some()
        };
        if !known {
            return Err(CairnStatus::new(
                ErrorCode::NotFound,
                format!("node {id} is not a member; it must join as a learner first"),
            )
            .into());
        }
        let ids: std::collections::BTreeSet<u64> = [id].into();
        tokio::time::timeout(
            RAFT_TIMEOUT * 2,
            self.shared
                .raft
                .change_membership(ChangeMembers::AddVoterIds(ids), false),
        )
        .await
        .map_err(|_| {
            Status::from(CairnStatus::new(
                ErrorCode::Unavailable,
                "membership change timed out",
            ))
        })?
        .map_err(|e| membership_error(&self.shared, e))?;
        Ok(Response::new(status_pb(&self.shared)))
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> GrpcResult<pb::StatusReply> {
        let id = req.into_inner().node_id;
        let (is_voter, known) = {
            let m = self.shared.raft.metrics().borrow().clone();
            let mem = m.membership_config.membership();
            (
                mem.voter_ids().any(|v| v == id),
                mem.get_node(&id).is_some(),
            )
        };
        if !known {
            return Err(CairnStatus::new(
                ErrorCode::NotFound,
                format!("node {id} is not a member"),
            )
            .into());
        }
        let ids: std::collections::BTreeSet<u64> = [id].into();
        let change = if is_voter {
            ChangeMembers::RemoveVoters(ids)
        } else {
            ChangeMembers::RemoveNodes(ids)
        };
        tokio::time::timeout(
            RAFT_TIMEOUT * 2,
            self.shared.raft.change_membership(change, false),
        )
        .await
        .map_err(|_| {
            Status::from(CairnStatus::new(
                ErrorCode::Unavailable,
                "membership change timed out",
            ))
        })?
        .map_err(|e| membership_error(&self.shared, e))?;
        Ok(Response::new(status_pb(&self.shared)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(o: u64) -> ChunkId {
        ChunkId {
            object: ObjectId(o),
            index: 2,
        }
    }

    #[test]
    fn corrupt_replicas_merge_reports_of_one_replica() {
        let mut c = CorruptReplicas::default();
        let t0 = Instant::now();
        let (cs, t) = (ChunkserverId(1), TargetId(7));
        c.record(cs, t, chunk(5), &[9, 3], "scrub", t0);
        c.record(
            cs,
            t,
            chunk(5),
            &[3, 4],
            "read",
            t0 + Duration::from_secs(1),
        );
        c.record(cs, TargetId(8), chunk(5), &[1], "scrub", t0);
        assert_eq!((c.len(), c.reports()), (2, 3));
        let l = c.list();
        assert_eq!(l[0].target, t);
        assert_eq!(l[0].bad_blocks, vec![3, 4, 9]);
        assert_eq!((l[0].reports, l[0].detail.as_str()), (2, "read"));
        assert_eq!(l[0].first_reported, t0);
        assert!(c.resolve(t, chunk(5)).is_some());
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn corrupt_replicas_stay_bounded() {
        let mut c = CorruptReplicas::default();
        let t0 = Instant::now();
        for o in 0..(MAX_CORRUPT_REPLICAS as u64 + 10) {
            let at = t0 + Duration::from_millis(o);
            c.record(ChunkserverId(1), TargetId(1), chunk(o), &[0], "scrub", at);
        }
        assert_eq!(c.len(), MAX_CORRUPT_REPLICAS);
        // The least recently reported are forgotten first.
        let l = c.list();
        assert_eq!(l[0].chunk, chunk(10));
        let many: Vec<u32> = (0..5000).rev().collect();
        c.record(ChunkserverId(1), TargetId(1), chunk(10), &many, "x", t0);
        let r = &c.list()[0];
        assert_eq!(r.bad_blocks.len(), MAX_BAD_BLOCKS_PER_REPLICA);
        assert_eq!(r.bad_blocks[..3], [0, 1, 2]);
        assert_eq!(truncate_utf8("héllo", 2), "h");
        assert_eq!(truncate_utf8("héllo", 3), "hé");
    }

    fn policy(encrypted: bool, checks: &[(u32, &[u8])]) -> Option<pb::VolumePolicy> {
        Some(pb::VolumePolicy {
            encrypted,
            key_checks: checks
                .iter()
                .map(|(version, check)| pb::VolumeKeyCheck {
                    version: *version,
                    check: check.to_vec(),
                })
                .collect(),
            ..Default::default()
        })
    }

    fn refusal(p: Option<pb::VolumePolicy>) -> String {
        let e = create_volume_op("v".into(), p).expect_err("refused");
        assert_eq!(e.code, ErrorCode::Invalid, "{e}");
        e.message
    }

    #[test]
    fn an_encrypted_volume_is_created_with_exactly_its_first_key_check() {
        match create_volume_op("v".into(), policy(true, &[(1, &[9; 16])])) {
            Ok(Op::CreateEncryptedVolume {
                name,
                policy,
                check,
            }) => {
                assert_eq!((name.as_str(), check), ("v", [9; 16]));
                assert!(policy.encrypted);
                assert_eq!(policy.replication, 3, "defaults apply");
            }
            r => panic!("{r:?}"),
        }
        let mut p = policy(true, &[(1, &[9; 16])]);
        if let Some(p) = &mut p {
            p.key_version = 1;
        }
        assert!(create_volume_op("v".into(), p).is_ok());
        assert!(matches!(
            create_volume_op("v".into(), None),
            Ok(Op::CreateVolume { .. })
        ));
        assert!(matches!(
            create_volume_op("v".into(), policy(false, &[])),
            Ok(Op::CreateVolume { policy, .. }) if !policy.encrypted
        ));

        assert_eq!(refusal(policy(true, &[])), NEEDS_FIRST_KEY_CHECK);
        let two = refusal(policy(true, &[(1, &[9; 16]), (2, &[8; 16])]));
        assert!(two.contains("not 2 checks"), "{two}");
        let v2 = refusal(policy(true, &[(2, &[9; 16])]));
        assert!(v2.contains("version 1, not 2"), "{v2}");
        let short = refusal(policy(true, &[(1, &[9; 15])]));
        assert!(short.contains("16 bytes, not 15"), "{short}");
        let mut ahead = policy(true, &[(1, &[9; 16])]);
        if let Some(p) = &mut ahead {
            p.key_version = 2;
        }
        assert!(refusal(ahead).contains("key version 1, not 2"));
        // A plain volume carries no key material.
        let plain = refusal(policy(false, &[(1, &[9; 16])]));
        assert!(plain.contains("not encrypted"), "{plain}");
        let mut versioned = policy(false, &[]);
        if let Some(p) = &mut versioned {
            p.key_version = 1;
        }
        assert!(refusal(versioned).contains("not encrypted"));
        assert!(key_check(&[0; 17]).is_err() && key_check(&[0; 16]).is_ok());
    }

    fn compressed(algo: pb::Compression, unit: u32) -> pb::VolumePolicy {
        pb::VolumePolicy {
            compression: algo as i32,
            compression_unit: unit,
            ..Default::default()
        }
    }

    #[test]
    fn a_compressed_volume_is_one_entry_with_its_compression_and_key() {
        match create_volume_op("v".into(), Some(compressed(pb::Compression::Lz4, 0))) {
            Ok(Op::CreateVolumeWith {
                name,
                policy,
                check: None,
                compression: compression::LZ4,
                unit: compression::DEFAULT_UNIT,
            }) => {
                assert_eq!(name, "v");
                assert!(!policy.encrypted);
                assert_eq!(policy.chunk_size, 64 << 20, "defaults apply");
            }
            r => panic!("{r:?}"),
        }
        // zstd and encryption: one entry carries both.
        let mut p = policy(true, &[(1, &[9; 16])]).unwrap();
        p.compression = pb::Compression::Zstd as i32;
        p.compression_unit = 1 << 20;
        match create_volume_op("v".into(), Some(p)) {
            Ok(Op::CreateVolumeWith {
                policy,
                check: Some(check),
                compression: compression::ZSTD,
                unit,
                ..
            }) => {
                assert_eq!((check, unit), ([9; 16], 1 << 20));
                assert!(policy.encrypted);
            }
            r => panic!("{r:?}"),
        }
        // Uncompressed volumes keep the ops older replicas know.
        assert!(matches!(
            create_volume_op("v".into(), Some(compressed(pb::Compression::None, 0))),
            Ok(Op::CreateVolume { .. })
        ));
        assert!(matches!(
            create_volume_op("v".into(), policy(true, &[(1, &[9; 16])])),
            Ok(Op::CreateEncryptedVolume { .. })
        ));

        // Refused, naming the volume.
        let mut unknown = compressed(pb::Compression::Lz4, 0);
        unknown.compression = 7;
        let e = refusal(Some(unknown));
        assert!(e.starts_with("volume v: unknown compression 7"), "{e}");
        let e = refusal(Some(compressed(pb::Compression::None, 64 << 10)));
        assert!(e.contains("compression_unit needs a compression"), "{e}");
        for unit in [3 << 10, 8 << 10, 2 << 20, 100_000] {
            let e = refusal(Some(compressed(pb::Compression::Lz4, unit)));
            assert!(e.contains(&format!("compression unit {unit} bytes")), "{e}");
            assert!(e.contains("power of two"), "{e}");
        }
        let mut small_chunks = compressed(pb::Compression::Zstd, 256 << 10);
        small_chunks.chunk_size = 128 << 10;
        let e = refusal(Some(small_chunks));
        assert!(e.contains("larger than its chunk size"), "{e}");
        // Encryption's own refusals still apply to a compressed volume.
        let mut no_check = compressed(pb::Compression::Lz4, 0);
        no_check.encrypted = true;
        assert_eq!(refusal(Some(no_check)), NEEDS_FIRST_KEY_CHECK);
    }

    #[test]
    fn volumes_show_their_compression_and_counters() {
        let v = fs::Volume {
            id: 4,
            name: "v".into(),
            root_ino: 9,
            policy: VolumePolicy::default(),
            snap_seq: 0,
            used_bytes: 0,
            used_inodes: 0,
        };
        let plain = volume_pb(&v, None, None);
        let p = plain.policy.unwrap();
        assert_eq!(p.compression(), pb::Compression::None);
        assert_eq!(p.compression_unit, 0);
        assert_eq!((plain.logical_bytes, plain.stored_bytes), (0, 0));
        let c = VolumeCompression {
            algo: compression::ZSTD,
            unit: 128 << 10,
            logical: 1000,
            stored: 400,
        };
        let keys = VolumeKeys::first([1; 16]);
        let both = volume_pb(&v, Some(&keys), Some(&c));
        let p = both.policy.unwrap();
        assert_eq!(p.compression(), pb::Compression::Zstd);
        assert_eq!(p.compression_unit, 128 << 10);
        assert!(p.encrypted && p.key_version == 1);
        assert_eq!((both.logical_bytes, both.stored_bytes), (1000, 400));

        // Replies without a compression (a rotation) take the volume's.
        let state = FsState::open(fs::MemKv::default()).unwrap();
        let mut t = fs::Txn::new(state.kv());
        t.put(fs::store::key::volume_compression(4), &c);
        t.commit().unwrap();
        let rotated = Reply::EncryptedVolume {
            volume: v.clone(),
            keys,
        };
        let r = volume_reply(rotated, &state).unwrap().volume.unwrap();
        assert_eq!(r.policy.unwrap().compression(), pb::Compression::Zstd);
        assert_eq!(r.stored_bytes, 400);
        let made = Reply::VolumeWith {
            volume: fs::Volume { id: 5, ..v },
            keys: None,
            compression: Some(VolumeCompression::new(compression::LZ4, 64 << 10)),
        };
        let r = volume_reply(made, &state).unwrap().volume.unwrap();
        let p = r.policy.unwrap();
        assert_eq!(
            (p.compression(), p.compression_unit),
            (pb::Compression::Lz4, 64 << 10)
        );
        assert!(!p.encrypted);
        assert!(volume_reply(Reply::Unit, &state).is_err());
    }

    #[test]
    fn volumes_and_files_show_their_key_material() {
        let v = fs::Volume {
            id: 4,
            name: "v".into(),
            root_ino: 9,
            // As volumes created before encryption existed may have it.
            policy: VolumePolicy {
                encrypted: true,
                ..VolumePolicy::default()
            },
            snap_seq: 0,
            used_bytes: 0,
            used_inodes: 0,
        };
        let p = volume_pb(&v, None, None).policy.unwrap();
        assert!(!p.encrypted && p.key_version == 0 && p.key_checks.is_empty());
        let mut keys = VolumeKeys::first([1; 16]);
        keys.checks.push(fs::KeyCheck {
            version: 2,
            check: [2; 16],
        });
        keys.current = 2;
        let p = volume_pb(&v, Some(&keys), None).policy.unwrap();
        assert!(p.encrypted);
        assert_eq!(p.key_version, 2);
        assert_eq!(
            p.key_checks,
            vec![
                pb::VolumeKeyCheck {
                    version: 1,
                    check: vec![1; 16]
                },
                pb::VolumeKeyCheck {
                    version: 2,
                    check: vec![2; 16]
                }
            ]
        );

        let file = Inode {
            ino: 10,
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            nlink: 1,
            atime: 0,
            mtime: 0,
            ctime: 0,
            crtime: 0,
            volume: 4,
            parent: 0,
            layout: None,
            truncate_gen: 0,
            version: 1,
            target: None,
            salt: vec![5; SALT_LEN],
            key_version: 2,
        };
        let a = attr_pb(&file);
        assert_eq!((a.encryption_salt, a.key_version), (vec![5; SALT_LEN], 2));
        // A plain file of a build from before encryption existed (they drew
        // a salt for every file): no salt is shown, so no client takes it
        // for a sealed file.
        let legacy = Inode {
            key_version: 0,
            ..file
        };
        let a = attr_pb(&legacy);
        assert!(a.encryption_salt.is_empty() && a.key_version == 0);
    }
}
