//! The retry, redirect and session behaviour of `MetaClient` against fake
//! meta replicas: real tonic servers on loopback whose answers each test
//! scripts (who is leader, which replies get lost, which session expires).
//! They check what meta relies on: a retried mutation carries the same
//! request id, a new session starts a fresh seq space, and the client ends
//! up talking to the leader.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_client::{ErrorCode, MetaClient, MetaClientOptions, Owner};
use cairn_proto::CairnStatus;
use cairn_proto::ids::InodeId;
use cairn_proto::meta::meta_server::{Meta, MetaServer};
use cairn_proto::meta::*;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// What the fake cluster saw and how it behaves.
#[derive(Default)]
struct Cluster {
    addrs: Vec<String>,
    leader: usize,
    /// Every mkdir that reached the leader, with its request id.
    mkdirs: Vec<RequestId>,
    not_leader_replies: u32,
    /// Mkdirs still to answer with a transport-like UNAVAILABLE (the reply
    /// "got lost"; the request was seen).
    lose_replies: u32,
    next_session: u64,
    live_sessions: BTreeSet<u64>,
    session_timeout_ms: u64,
    renewals: u32,
    closed_sessions: Vec<u64>,
    lookups: u32,
}

type Shared = Arc<Mutex<Cluster>>;

struct Fake {
    node: usize,
    cluster: Shared,
}

fn dir_attr(ino: u64) -> Attr {
    Attr {
        ino,
        kind: FileType::Directory as i32,
        mode: 0o755,
        nlink: 2,
        ..Attr::default()
    }
}

impl Fake {
    fn lock(&self) -> std::sync::MutexGuard<'_, Cluster> {
        self.cluster.lock().unwrap()
    }

    fn leader_only(&self) -> Result<(), Status> {
        let mut c = self.lock();
        if c.leader != self.node {
            c.not_leader_replies += 1;
            let hint = (c.leader as u64 + 1, c.addrs[c.leader].clone());
            return Err(CairnStatus::not_leader(Some(hint)).to_status());
        }
        Ok(())
    }
}

macro_rules! fake_meta {
    (
        custom { $($custom:tt)* }
        unimplemented { $($m:ident($req:ty) -> $resp:ty;)* }
    ) => {
        #[tonic::async_trait]
        impl Meta for Fake {
            $($custom)*
            $(
                async fn $m(&self, _r: Request<$req>) -> Result<Response<$resp>, Status> {
                    Err(Status::unimplemented(stringify!($m)))
                }
            )*
        }
    };
}

fake_meta! {
    custom {
        type WatchChainsStream = tonic::codegen::tokio_stream::Empty<Result<ChainTables, Status>>;

        async fn watch_chains(
            &self,
            _r: Request<WatchChainsRequest>,
        ) -> Result<Response<Self::WatchChainsStream>, Status> {
            Err(Status::unimplemented("watch_chains"))
        }

        type CallsStream = tonic::codegen::tokio_stream::Empty<Result<CallReply, Status>>;

        // A server of a version without the Calls stream: the client makes
        // every call unary (what these tests script).
        async fn calls(
            &self,
            _r: Request<tonic::Streaming<Call>>,
        ) -> Result<Response<Self::CallsStream>, Status> {
            Err(Status::unimplemented("calls"))
        }

        type WatchChangesStream = tonic::codegen::tokio_stream::Empty<Result<Changes, Status>>;

        async fn watch_changes(
            &self,
            _r: Request<tonic::Streaming<WatchChangesRequest>>,
        ) -> Result<Response<Self::WatchChangesStream>, Status> {
            Err(Status::unimplemented("watch_changes"))
        }

        async fn status(&self, _r: Request<Empty>) -> Result<Response<StatusReply>, Status> {
            let c = self.lock();
            Ok(Response::new(StatusReply {
                node_id: self.node as u64 + 1,
                leader_id: c.leader as u64 + 1,
                leader_addr: c.addrs[c.leader].clone(),
                state: if c.leader == self.node { "Leader" } else { "Follower" }.into(),
                ..StatusReply::default()
            }))
        }

        async fn lookup(&self, r: Request<LookupRequest>) -> Result<Response<AttrReply>, Status> {
            self.leader_only()?;
            self.lock().lookups += 1;
            if r.get_ref().name == "missing" {
                return Err(CairnStatus::new(ErrorCode::NotFound, "no such entry").to_status());
            }
            Ok(Response::new(AttrReply {
                attr: Some(dir_attr(7)),
                ..Default::default()
            }))
        }

        async fn mkdir(&self, r: Request<MkdirRequest>) -> Result<Response<EntryReply>, Status> {
            self.leader_only()?;
            let rid = r.get_ref().rid.unwrap_or_default();
            let mut c = self.lock();
            c.mkdirs.push(rid);
            if !c.live_sessions.contains(&rid.client_id) {
                let e = CairnStatus::new(ErrorCode::SessionExpired, "session unknown or expired");
                return Err(e.to_status());
            }
            if c.lose_replies > 0 {
                c.lose_replies -= 1;
                return Err(Status::unavailable("connection reset by peer"));
            }
            let ino = 100 + c.mkdirs.len() as u64;
            Ok(Response::new(EntryReply {
                attr: Some(dir_attr(ino)),
                ..Default::default()
            }))
        }

        async fn open_session(
            &self,
            _r: Request<OpenSessionRequest>,
        ) -> Result<Response<OpenSessionReply>, Status> {
            self.leader_only()?;
            let mut c = self.lock();
            c.next_session += 1;
            let id = c.next_session;
            c.live_sessions.insert(id);
            let timeout_ms = if c.session_timeout_ms == 0 { 60_000 } else { c.session_timeout_ms };
            Ok(Response::new(OpenSessionReply { session_id: id, timeout_ms }))
        }

        async fn renew_session(&self, r: Request<SessionRequest>) -> Result<Response<Empty>, Status> {
            self.leader_only()?;
            let mut c = self.lock();
            if !c.live_sessions.contains(&r.get_ref().session_id) {
                return Err(CairnStatus::new(ErrorCode::SessionExpired, "expired").to_status());
            }
            c.renewals += 1;
            Ok(Response::new(Empty {}))
        }

        async fn close_session(&self, r: Request<SessionRequest>) -> Result<Response<Empty>, Status> {
            self.leader_only()?;
            let mut c = self.lock();
            let id = r.get_ref().session_id;
            c.live_sessions.remove(&id);
            c.closed_sessions.push(id);
            Ok(Response::new(Empty {}))
        }
    }
    unimplemented {
        get_attr(GetAttrRequest) -> AttrReply;
        resolve(ResolveRequest) -> AttrReply;
        read_dir(ReadDirRequest) -> ReadDirReply;
        read_link(ReadLinkRequest) -> ReadLinkReply;
        get_xattr(GetXattrRequest) -> GetXattrReply;
        list_xattr(ListXattrRequest) -> ListXattrReply;
        stat_fs(StatFsRequest) -> StatFsReply;
        create(CreateRequest) -> EntryReply;
        symlink(SymlinkRequest) -> EntryReply;
        mknod(MknodRequest) -> EntryReply;
        set_lock(SetLockRequest) -> LockReply;
        get_lock(GetLockRequest) -> LockReply;
        link(LinkRequest) -> EntryReply;
        unlink(UnlinkRequest) -> UnlinkReply;
        rmdir(RmdirRequest) -> UnlinkReply;
        rename(RenameRequest) -> RenameReply;
        set_attr(SetAttrRequest) -> AttrReply;
        set_xattr(SetXattrRequest) -> Empty;
        remove_xattr(RemoveXattrRequest) -> Empty;
        create_volume(CreateVolumeRequest) -> VolumeReply;
        list_volumes(Empty) -> ListVolumesReply;
        rotate_volume_key(RotateVolumeKeyRequest) -> VolumeReply;
        set_volume_quota(SetVolumeQuotaRequest) -> VolumeReply;
        set_dir_quota(SetDirQuotaRequest) -> DirQuotaReply;
        get_dir_quota(GetDirQuotaRequest) -> DirQuotaReply;
        create_snapshot(CreateSnapshotRequest) -> SnapshotReply;
        delete_snapshot(DeleteSnapshotRequest) -> SnapshotReply;
        list_snapshots(ListSnapshotsRequest) -> ListSnapshotsReply;
        restore_snapshot(RestoreSnapshotRequest) -> RestoreReply;
        restore_status(RestoreStatusRequest) -> RestoreReply;
        copy_up(CopyUpRequest) -> CopyUpReply;
        copy_done(CopyDoneRequest) -> AttrReply;
        open(OpenRequest) -> AttrReply;
        close(CloseRequest) -> AttrReply;
        report_length(ReportLengthRequest) -> AttrReply;
        release_files(ReleaseFilesRequest) -> Empty;
        register_chunkserver(RegisterChunkserverRequest) -> RegisterChunkserverReply;
        chunkserver_heartbeat(ChunkserverHeartbeatRequest) -> ChunkserverHeartbeatReply;
        get_chains(Empty) -> ChainTables;
        report_corruption(ReportCorruptionRequest) -> Empty;
        report_chunks(ReportChunksRequest) -> ReportChunksReply;
        set_maintenance(SetMaintenanceRequest) -> Empty;
        join(JoinRequest) -> JoinReply;
        promote(PromoteRequest) -> StatusReply;
        remove_member(RemoveMemberRequest) -> StatusReply;
    }
}

/// Starts `n` fake replicas on loopback with replica `leader` leading.
async fn start(n: usize, leader: usize) -> (Shared, Vec<String>) {
    let cluster: Shared = Arc::default();
    let mut listeners = Vec::new();
    for _ in 0..n {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listeners.push(l);
    }
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    {
        let mut c = cluster.lock().unwrap();
        c.addrs = addrs.clone();
        c.leader = leader;
    }
    for (node, l) in listeners.into_iter().enumerate() {
        let svc = MetaServer::new(Fake {
            node,
            cluster: Arc::clone(&cluster),
        });
        let incoming = TcpIncoming::from(l).with_nodelay(Some(true));
        tokio::spawn(
            Server::builder()
                .add_service(svc)
                .serve_with_incoming(incoming),
        );
    }
    (cluster, addrs)
}

/// Returns loopback addresses nobody listens on.
async fn dead_addrs(n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut keep = Vec::new();
    for _ in 0..n {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        out.push(l.local_addr().unwrap().to_string());
        keep.push(l);
    }
    drop(keep);
    out
}

fn opts(deadline_ms: u64) -> MetaClientOptions {
    MetaClientOptions {
        deadline: Duration::from_millis(deadline_ms),
        request_timeout: Duration::from_secs(2),
        ..MetaClientOptions::default()
    }
}

#[tokio::test]
async fn follows_the_leader_hint_and_remembers_the_leader() {
    let (cluster, addrs) = start(3, 2).await;
    let client = MetaClient::connect(&addrs, opts(5_000)).await.unwrap();
    let e = client
        .mkdir(InodeId::ROOT, "a", 0o755, Owner::ROOT)
        .await
        .unwrap();
    assert_eq!(e.attr.ino, 101);
    assert_eq!(client.leader_addr(), addrs[2]);
    let bounced = cluster.lock().unwrap().not_leader_replies;
    assert!(bounced >= 1, "the first call should have met a follower");
    // Known leader: the next call goes straight there.
    client.lookup(InodeId::ROOT, "a").await.unwrap();
    assert_eq!(cluster.lock().unwrap().not_leader_replies, bounced);
    // Leadership moves: one redirect, and the client follows.
    cluster.lock().unwrap().leader = 0;
    client.lookup(InodeId::ROOT, "a").await.unwrap();
    assert_eq!(cluster.lock().unwrap().not_leader_replies, bounced + 1);
    assert_eq!(client.leader_addr(), addrs[0]);
}

#[tokio::test]
async fn a_hinted_leader_missing_from_the_list_is_added() {
    let (_cluster, addrs) = start(3, 2).await;
    let client = MetaClient::connect([&addrs[0]], opts(5_000)).await.unwrap();
    client.lookup(InodeId::ROOT, "x").await.unwrap();
    assert_eq!(client.addrs(), [addrs[0].clone(), addrs[2].clone()]);
    assert_eq!(client.leader_addr(), addrs[2]);
}

#[tokio::test]
async fn a_retried_mutation_keeps_its_request_id() {
    let (cluster, addrs) = start(1, 0).await;
    cluster.lock().unwrap().lose_replies = 2;
    let client = MetaClient::connect(&addrs, opts(5_000)).await.unwrap();
    client
        .mkdir(InodeId::ROOT, "a", 0o755, Owner::ROOT)
        .await
        .unwrap();
    let first = RequestId {
        client_id: 1,
        seq: 1,
        ack_below: 1,
    };
    assert_eq!(cluster.lock().unwrap().mkdirs, [first, first, first]);
    // The next mutation: the next seq, and seq 1 is acknowledged.
    client
        .mkdir(InodeId::ROOT, "b", 0o755, Owner::ROOT)
        .await
        .unwrap();
    let second = RequestId {
        client_id: 1,
        seq: 2,
        ack_below: 2,
    };
    assert_eq!(cluster.lock().unwrap().mkdirs.last(), Some(&second));
}

#[tokio::test]
async fn an_expired_session_is_replaced_once_with_fresh_ids() {
    let (cluster, addrs) = start(1, 0).await;
    let client = MetaClient::connect(&addrs, opts(5_000)).await.unwrap();
    client
        .mkdir(InodeId::ROOT, "a", 0o755, Owner::ROOT)
        .await
        .unwrap();
    client
        .mkdir(InodeId::ROOT, "b", 0o755, Owner::ROOT)
        .await
        .unwrap();
    // Meta forgets session 1 (it expired).
    cluster.lock().unwrap().live_sessions.clear();
    client
        .mkdir(InodeId::ROOT, "c", 0o755, Owner::ROOT)
        .await
        .unwrap();
    let c = cluster.lock().unwrap();
    assert_eq!(c.next_session, 2);
    let tail: Vec<_> = c.mkdirs[2..].to_vec();
    assert_eq!(
        tail,
        [
            RequestId {
                client_id: 1,
                seq: 3,
                ack_below: 3
            },
            RequestId {
                client_id: 2,
                seq: 1,
                ack_below: 1
            },
        ]
    );
}

#[tokio::test]
async fn non_retryable_errors_return_at_once() {
    let (cluster, addrs) = start(1, 0).await;
    let client = MetaClient::connect(&addrs, opts(5_000)).await.unwrap();
    let e = client.lookup(InodeId::ROOT, "missing").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    assert_eq!(cluster.lock().unwrap().lookups, 1);
    let io: std::io::Error = e.into();
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
}

#[tokio::test]
async fn gives_up_after_the_deadline_naming_every_address() {
    let addrs = dead_addrs(2).await;
    let client = MetaClient::connect(&addrs, opts(400)).await.unwrap();
    let t = std::time::Instant::now();
    let e = client.status().await.unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.code, ErrorCode::Unavailable);
    for a in &addrs {
        assert!(
            e.message.contains(a.as_str()),
            "{a} missing from: {}",
            e.message
        );
    }
    assert!(e.message.contains("status"), "{}", e.message);
    assert!(
        took >= Duration::from_millis(300),
        "gave up too early: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "gave up too late: {took:?}");
}

#[tokio::test]
async fn session_is_renewed_until_close() {
    let (cluster, addrs) = start(1, 0).await;
    cluster.lock().unwrap().session_timeout_ms = 300;
    let client = MetaClient::connect(&addrs, opts(5_000)).await.unwrap();
    let sid = client.session_id().await.unwrap();
    tokio::time::sleep(Duration::from_millis(550)).await;
    let renewed = cluster.lock().unwrap().renewals;
    assert!(
        renewed >= 2,
        "renewed {renewed} times in 550 ms at a 100 ms period"
    );
    client.close().await.unwrap();
    assert_eq!(cluster.lock().unwrap().closed_sessions, [sid.0]);
    let after_close = cluster.lock().unwrap().renewals;
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(cluster.lock().unwrap().renewals, after_close);
    let e = client
        .mkdir(InodeId::ROOT, "late", 0o755, Owner::ROOT)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Invalid);
    // Reads still work, and a second close is a no-op.
    client.lookup(InodeId::ROOT, "a").await.unwrap();
    client.close().await.unwrap();
    assert_eq!(cluster.lock().unwrap().closed_sessions.len(), 1);
}

#[tokio::test]
async fn leader_status_asks_the_leader() {
    let (_cluster, addrs) = start(3, 1).await;
    let client = MetaClient::connect([&addrs[2]], opts(5_000)).await.unwrap();
    let s = client.leader_status().await.unwrap();
    assert_eq!(s.node_id, 2);
    assert_eq!(s.state, "Leader");
}
