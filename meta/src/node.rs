//! Starting a metadata replica: identity, bootstrap or join, serving, and
//! the leader's background duties.
//!
//! Identity (DESIGN §4): a replica's Raft node id and the cluster id are
//! persisted in its sled database the first time it starts and never taken
//! from flags. A replica with an empty data directory either bootstraps a
//! new cluster (only with `bootstrap`, after no `join` peer answered for
//! `BOOTSTRAP_QUIET`: a peer that answers at all knows a cluster) as node 1, or asks a member to allocate it a fresh node id through Raft
//! and add it as a learner. So a wiped replica always comes back under a new
//! identity; the leader promotes caught-up learners to voters only while the
//! cluster has fewer than `replicas` voters, and beyond that an operator
//! promotes (and removes the old identity) through the admin API.
//!
//! Duties of the leader, every `DUTY_INTERVAL`: finish bootstrap (record
//! the cluster id), grow the voter set, declare chunkservers dead after
//! `chunkserver_timeout` of silence and expire sessions after
//! `session_timeout`, and merge away deleted snapshots' records that their
//! delete entry did not finish (`fs::snapshots`). Both clocks start no earlier than the moment this
//! replica became leader, so a new leader waits one full timeout before
//! declaring anyone dead (HDFS safe mode). Once a second it also runs a
//! garbage-collection round ([`crate::gc`]): deleted files' chunks leave
//! the chunkservers after `gc_grace`.
//!
//! Known gap: openraft 0.9 has no leadership transfer, so a leader that is
//! stopped simply stops; the others elect a new leader within about one
//! election timeout.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_proto::meta as pb;
use cairn_proto::meta::meta_client::MetaClient;
use cairn_proto::meta::meta_server::MetaServer;
use cairn_proto::raft::raft_server::RaftServer;
use cairn_proto::{CairnStatus, ErrorCode};
use openraft::{BasicNode, ChangeMembers, Raft};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::MetaConfig;
use crate::fs::store::SledKv;
use crate::fs::{FsState, Op, StoreError, TargetState};
use crate::metrics::{RpcMetrics, RpcMetricsLayer};
use crate::raft::log_store::LogStore;
use crate::raft::network::{Network, RaftTransport, raft_config};
use crate::raft::state_machine::StateMachineStore;
use crate::service::{Liveness, MetaService, Shared};

/// A connection silent this long gets an HTTP/2 PING.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// A PING unanswered this long closes the connection and its streams.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the leader runs its duties.
const DUTY_INTERVAL: Duration = Duration::from_millis(200);

/// How long a replica given both `bootstrap` and `join` peers waits
/// without any peer answering before it founds a new cluster.
const BOOTSTRAP_QUIET: Duration = Duration::from_secs(5);

/// Why a replica could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The database failed.
    #[error("metadata store: {0}")]
    Store(#[from] StoreError),
    /// sled failed.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// Raft failed to start or stopped.
    #[error("raft: {0}")]
    Raft(String),
    /// Joining an existing cluster failed.
    #[error("join: {0}")]
    Join(String),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A running replica.
pub struct MetaHandle {
    /// The address the server listens on.
    pub addr: SocketAddr,
    /// This replica's node id.
    pub node_id: u64,
    /// Where `/metrics` is served, when configured.
    pub metrics_addr: Option<SocketAddr>,
    /// Shared state (Raft handle, state machine), for tests and tools.
    pub shared: Arc<Shared>,
    task: JoinHandle<Result<(), MetaError>>,
}

impl MetaHandle {
    /// Waits until the replica has shut down (after the shutdown future
    /// given to [`start`] resolved).
    ///
    /// # Errors
    /// The error the server stopped with.
    pub async fn wait(self) -> Result<(), MetaError> {
        let r = match self.task.await {
            Ok(r) => r,
            Err(e) => Err(MetaError::Raft(format!("server task failed: {e}"))),
        };
        if r.is_err() {
            // Its sled handles may be the last: dropping them would flush
            // on what may be a full or failing disk, and never return.
            std::mem::forget(self.shared);
        }
        r
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MetaError {
    let what = what.into();
    move |source| MetaError::Io { what, source }
}

/// Node identity as persisted in the `identity` tree.
struct Identity {
    node_id: u64,
    cluster_id: String,
}

fn load_identity(tree: &sled::Tree) -> Result<Option<Identity>, MetaError> {
    let (Some(id), Some(cid)) = (tree.get("node_id")?, tree.get("cluster_id")?) else {
        return Ok(None);
    };
    let id: [u8; 8] = id
        .as_ref()
        .try_into()
        .map_err(|_| MetaError::Config("corrupt node id in the data directory".into()))?;
    Ok(Some(Identity {
        node_id: u64::from_be_bytes(id),
        cluster_id: String::from_utf8_lossy(&cid).into_owned(),
    }))
}

async fn save_identity(
    db: &sled::Db,
    tree: &sled::Tree,
    ident: &Identity,
) -> Result<(), MetaError> {
    tree.insert("node_id", &ident.node_id.to_be_bytes())?;
    tree.insert("cluster_id", ident.cluster_id.as_bytes())?;
    db.flush_async().await?;
    Ok(())
}

async fn meta_client(addr: &str) -> Result<MetaClient<tonic::transport::Channel>, CairnStatus> {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| CairnStatus::new(ErrorCode::Invalid, format!("bad address {addr}: {e}")))?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    let ch = ep
        .connect()
        .await
        .map_err(|e| CairnStatus::new(ErrorCode::Unavailable, format!("{addr}: {e}")))?;
    Ok(MetaClient::new(ch))
}

/// Asks the cluster at `peers` to admit `advertise` as a learner; follows
/// leader hints. Returns `None` when no peer answered at all.
async fn try_join(peers: &[String], advertise: &str) -> Result<Option<Identity>, MetaError> {
    // Every StatefulSet pod is given every ordinal's address; a replica
    // does not ask itself.
    let mut queue: Vec<String> = peers.iter().filter(|p| *p != advertise).cloned().collect();
    let mut hops = 0;
    let mut answered = false;
    while let Some(addr) = queue.pop() {
        hops += 1;
        if hops > 10 + peers.len() {
            break;
        }
        let Ok(mut c) = meta_client(&addr).await else {
            continue;
        };
        let res = c
            .join(pb::JoinRequest {
                addr: advertise.to_string(),
            })
            .await;
        match res {
            Ok(r) => {
                let r = r.into_inner();
                return Ok(Some(Identity {
                    node_id: r.node_id,
                    cluster_id: r.cluster_id,
                }));
            }
            Err(s) => {
                let e = CairnStatus::from_status(&s);
                if e.code == ErrorCode::NotLeader {
                    answered = true;
                    if let Some(a) = e.leader_addr {
                        queue.push(a);
                    }
                } else if e.code != ErrorCode::Unavailable {
                    return Err(MetaError::Join(format!("{addr} refused: {e}")));
                }
            }
        }
    }
    if answered {
        return Err(MetaError::Join(
            "the cluster answered but has no leader right now".into(),
        ));
    }
    Ok(None)
}

/// Finds this replica's identity: persisted, or by joining, or by
/// bootstrapping. Returns it and whether this replica bootstraps.
async fn establish_identity(
    config: &MetaConfig,
    db: &sled::Db,
    tree: &sled::Tree,
    advertise: &str,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<(Identity, bool)>, MetaError> {
    if let Some(ident) = load_identity(tree)? {
        return Ok(Some((ident, false)));
    }
    let mut backoff = Duration::from_millis(100);
    // With join peers, bootstrap only once none of them has answered for
    // BOOTSTRAP_QUIET: a peer that answers knows a cluster (a replica with
    // an empty data directory does not serve), so a wiped first replica
    // joins the cluster its peers hold, even while they are electing or
    // still starting, instead of founding a second one.
    let mut quiet_since = Instant::now();
    loop {
        if !config.join.is_empty() {
            match try_join(&config.join, advertise).await {
                Ok(Some(ident)) => {
                    save_identity(db, tree, &ident).await?;
                    tracing::info!(node = ident.node_id, cluster = %ident.cluster_id, "joined cluster");
                    return Ok(Some((ident, false)));
                }
                Ok(None) if config.bootstrap => {}
                Ok(None) => tracing::info!(peers = ?config.join, "no peer reachable yet; retrying"),
                Err(e) => {
                    quiet_since = Instant::now();
                    tracing::warn!("{e}; retrying");
                }
            }
        }
        let quiet = config.join.is_empty() || quiet_since.elapsed() >= BOOTSTRAP_QUIET;
        if config.bootstrap && quiet {
            let ident = Identity {
                node_id: 1,
                cluster_id: format!("{:032x}", rand::random::<u128>()),
            };
            save_identity(db, tree, &ident).await?;
            tracing::info!(cluster = %ident.cluster_id, "bootstrapping a new cluster");
            return Ok(Some((ident, true)));
        }
        if config.join.is_empty() {
            return Err(MetaError::Config(
                "the data directory is empty: pass --bootstrap to start a new cluster or \
                 --join to join an existing one"
                    .into(),
            ));
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return Ok(None),
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Starts a metadata replica and returns once it serves; it runs until
/// `shutdown` resolves.
///
/// # Errors
/// A bad configuration, an unusable data directory or listen address, or
/// a failed join.
pub async fn start(
    config: MetaConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<MetaHandle, MetaError> {
    config.validate().map_err(MetaError::Config)?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let stop_on_fatal = stop_tx.clone();
    tokio::spawn(async move {
        shutdown.await;
        stop_tx.send_replace(true);
    });

    std::fs::create_dir_all(&config.data_dir)
        .map_err(io(format!("creating {}", config.data_dir.display())))?;
    let db = sled::Config::new()
        .path(config.data_dir.join("db"))
        .cache_capacity(config.cache_bytes)
        .flush_every_ms(Some(500))
        .open()?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(io(format!("listening on {}", config.listen)))?;
    let addr = listener.local_addr().map_err(io("local address"))?;
    let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());

    let ident_tree = db.open_tree("identity")?;
    let Some((ident, bootstrap)) =
        establish_identity(&config, &db, &ident_tree, &advertise, &mut stop_rx).await?
    else {
        return Err(MetaError::Join("shut down before joining a cluster".into()));
    };

    let fs = Arc::new(FsState::open(SledKv::new(db.open_tree("fs")?))?);
    let log_store = LogStore::open_at(
        &db,
        &config.data_dir.join("db"),
        &config.data_dir.join("raft-log"),
    )?;
    let log_io = log_store.io_counters();
    let sm =
        StateMachineStore::open(&db, fs.clone()).map_err(|e| MetaError::Raft(e.to_string()))?;
    let network = crate::raft::replicate_during_sync(
        ident.node_id,
        &log_store,
        &sm,
        Network::new(ident.cluster_id.clone()),
    );
    let rconf = raft_config(
        config.raft_heartbeat,
        config.election_timeout,
        config.snapshot_every,
    )
    .map_err(|e| MetaError::Config(e.to_string()))?;
    let raft = Raft::new(
        ident.node_id,
        Arc::new(rconf),
        network.clone(),
        log_store,
        sm,
    )
    .await
    .map_err(|e| MetaError::Raft(e.to_string()))?;
    if bootstrap {
        let members = BTreeMap::from([(
            ident.node_id,
            BasicNode {
                addr: advertise.clone(),
            },
        )]);
        raft.initialize(members)
            .await
            .map_err(|e| MetaError::Raft(e.to_string()))?;
    }

    let shared = Arc::new(Shared {
        raft: raft.clone(),
        fs,
        node_id: ident.node_id,
        cluster_id: ident.cluster_id.clone(),
        config: config.clone(),
        liveness: Mutex::new(Liveness::default()),
        log_io,
        gc: crate::metrics::GcCounters::default(),
        network,
        proposer: crate::proposer::Proposer::spawn(raft.clone(), ident.node_id),
        changes: crate::changes::ChangeFeed::default(),
        lease: {
            let lease = crate::lease::LeaderLease::new(
                crate::raft::network::election_timeout_min(config.election_timeout),
                config.election_timeout,
            );
            lease.watch(&raft);
            lease
        },
        stop: stop_rx.clone(),
    });
    if bootstrap {
        // Create the root and record the cluster id before serving anyone,
        // so no client ever sees an uninitialized namespace. (A crash
        // before this commits is finished by the leader's duties.)
        raft.wait(Some(Duration::from_secs(30)))
            .current_leader(ident.node_id, "bootstrap")
            .await
            .map_err(|e| MetaError::Raft(format!("no leadership after bootstrap: {e}")))?;
        shared
            .propose(
                None,
                Op::InitCluster {
                    cluster_id: ident.cluster_id.clone(),
                },
            )
            .await
            .map_err(|e| MetaError::Raft(format!("initializing the namespace: {e}")))?;
    }
    let rpc_metrics = Arc::new(RpcMetrics::default());
    let mut metrics_addr = None;
    if let Some(maddr) = config.metrics_listen {
        let mut mstop = stop_rx.clone();
        let bound = crate::metrics::serve(maddr, shared.clone(), rpc_metrics.clone(), async move {
            let _ = mstop.wait_for(|s| *s).await;
        })
        .await
        .map_err(io(format!("metrics listener on {maddr}")))?;
        tracing::info!(%bound, "metrics on http://{bound}/metrics");
        metrics_addr = Some(bound);
    }
    let meta_svc =
        MetaServer::new(MetaService::new(shared.clone()).with_rpc_metrics(rpc_metrics.clone()))
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(64 << 20);
    let raft_svc = RaftServer::new(
        RaftTransport::new(
            raft.clone(),
            ident.node_id,
            ident.cluster_id.clone(),
            stop_rx.clone(),
        )
        .with_lease(shared.lease.clone()),
    )
    .max_decoding_message_size(512 << 20)
    .max_encoding_message_size(512 << 20);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut server_stop = stop_rx.clone();
    let server = tonic::transport::Server::builder()
        // A peer that stops answering (a partitioned or frozen client, a
        // half-open connection of a leader that lost its network) is
        // dropped with its streams: its Calls and AppendStream tasks would
        // otherwise stay until this node stops.
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(RpcMetricsLayer(rpc_metrics))
        .add_service(meta_svc)
        .add_service(raft_svc)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = server_stop.wait_for(|s| *s).await;
        });
    let duties = tokio::spawn(run_duties(shared.clone(), stop_rx.clone()));
    let fatal = tokio::spawn(stop_when_raft_fails(raft.clone(), stop_on_fatal));
    let node_id = ident.node_id;
    tracing::info!(node = node_id, %addr, %advertise, "cairn-meta serving");

    let task = tokio::spawn(async move {
        let served = server.await;
        duties.abort();
        let failed = if fatal.is_finished() {
            fatal.await.ok().flatten()
        } else {
            fatal.abort();
            None
        };
        if let Err(e) = raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
        if let Some(why) = failed {
            // Bounded: sled's flush on the full disk that stopped the core
            // waited forever, and the replica with it.
            match tokio::time::timeout(Duration::from_secs(5), db.flush_async()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!("state machine not flushed: {e}"),
                Err(_) => tracing::warn!("state machine not flushed within 5 s"),
            }
            // Dropping the last handle of a sled database flushes it
            // synchronously, and on the full disk that flush never ends:
            // the process is about to exit, so the handle is left behind
            // (and `MetaHandle::wait` leaves `shared` behind likewise).
            std::mem::forget(db);
            return Err(MetaError::Raft(format!(
                "the Raft core stopped: {why}; this replica stopped with it (fix the cause, \
                 a full or failing disk for example, and start it again: the other replicas \
                 serve meanwhile)"
            )));
        }
        db.flush_async().await?;
        tracing::info!(node = node_id, "cairn-meta stopped");
        served.map_err(MetaError::from)
    });
    Ok(MetaHandle {
        addr,
        node_id,
        metrics_addr,
        shared,
        task,
    })
}

/// Waits until openraft's core stops on its own (a storage error: a full
/// or failing disk), then stops the replica and returns why (`None`: the
/// metrics ended first). Fail-stop: a replica whose Raft core is gone
/// still held its port open and answered nothing useful, so neither a
/// liveness probe nor an operator saw it; now the process exits with the
/// error, and its supervisor (Kubernetes, systemd) shows and restarts it.
async fn stop_when_raft_fails(
    raft: crate::raft::types::MetaRaft,
    stop: watch::Sender<bool>,
) -> Option<String> {
    let mut metrics = raft.metrics();
    let why = {
        let m = metrics.wait_for(|m| m.running_state.is_err()).await.ok()?;
        m.running_state.as_ref().err()?.to_string()
    };
    tracing::error!(error = %why, "the Raft core stopped; stopping this replica");
    stop.send_replace(true);
    Some(why)
}

/// The leader's background duties; see the module docs.
async fn run_duties(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut was_leader = false;
    let gc = crate::gc::Gc::default();
    let mut gc_tick = 0u32;
    loop {
        tokio::select! {
            () = tokio::time::sleep(DUTY_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let leader = shared.is_leader();
        if leader && !was_leader {
            let mut live = shared.liveness();
            *live = Liveness {
                leader_since: Some(Instant::now()),
                ..Liveness::default()
            };
        }
        was_leader = leader;
        if !leader {
            continue;
        }
        if let Err(e) = duty_round(&shared).await {
            tracing::debug!("leader duties: {e}");
        }
        // Once a second: a round scans the garbage list.
        gc_tick = (gc_tick + 1) % 5;
        if gc_tick == 0
            && let Err(e) = gc.round(&shared).await
        {
            tracing::debug!("garbage collection: {e}");
        }
    }
}

async fn duty_round(shared: &Shared) -> Result<(), CairnStatus> {
    if shared.fs.cluster_id().map_err(CairnStatus::from)?.is_none() {
        shared
            .propose(
                None,
                Op::InitCluster {
                    cluster_id: shared.cluster_id.clone(),
                },
            )
            .await?;
    }
    grow_voters(shared).await?;
    check_chunkservers(shared).await?;
    expire_sessions(shared).await?;
    merge_deleted_snapshots(shared).await?;
    step_restores(shared).await?;
    Ok(())
}

/// How long one round of leader duties spends copying restores.
const RESTORE_ROUND: Duration = Duration::from_millis(100);

/// Goes on copying the restores under way (`fs::restore`), one step after
/// the other for up to [`RESTORE_ROUND`] per round.
async fn step_restores(shared: &Shared) -> Result<(), CairnStatus> {
    let started = std::time::Instant::now();
    for (volume, _) in shared.fs.restores().map_err(CairnStatus::from)? {
        while started.elapsed() < RESTORE_ROUND {
            match shared.propose(None, Op::RestoreStep { volume }).await {
                Ok(crate::fs::Reply::Restore(_, Some(_))) => {}
                // Done, here or by a step the RestoreSnapshot call made.
                Ok(_) => break,
                Err(e) if e.code == cairn_proto::ErrorCode::NotFound => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Goes on merging away the records of deleted snapshots that one entry
/// did not finish (`fs::snapshots`): one entry per snapshot per round.
async fn merge_deleted_snapshots(shared: &Shared) -> Result<(), CairnStatus> {
    for s in shared.fs.deleting_snapshots().map_err(CairnStatus::from)? {
        shared
            .propose(
                None,
                Op::MergeSnapshot {
                    volume: s.volume,
                    seq: s.seq,
                },
            )
            .await?;
    }
    Ok(())
}

/// Promotes caught-up learners while there are fewer voters than wanted.
async fn grow_voters(shared: &Shared) -> Result<(), CairnStatus> {
    let m = shared.raft.metrics().borrow().clone();
    let mem = m.membership_config.membership();
    let voters: BTreeSet<u64> = mem.voter_ids().collect();
    if voters.len() >= shared.config.replicas || mem.get_joint_config().len() > 1 {
        return Ok(());
    }
    let last = m.last_log_index.unwrap_or(0);
    let Some(repl) = m.replication.as_ref() else {
        return Ok(());
    };
    let ready: BTreeSet<u64> = mem
        .learner_ids()
        .filter(|id| {
            repl.get(id)
                .cloned()
                .flatten()
                .is_some_and(|l| l.index + 100 >= last)
        })
        .take(shared.config.replicas - voters.len())
        .collect();
    if ready.is_empty() {
        return Ok(());
    }
    tracing::info!(?ready, "promoting caught-up learners to voters");
    tokio::time::timeout(
        crate::service::RAFT_TIMEOUT,
        shared
            .raft
            .change_membership(ChangeMembers::AddVoterIds(ready), false),
    )
    .await
    .map_err(|_| CairnStatus::new(ErrorCode::Unavailable, "promotion timed out"))?
    .map_err(|e| CairnStatus::new(ErrorCode::Unavailable, e.to_string()))?;
    Ok(())
}

/// Marks the targets of silent chunkservers offline, and those of
/// chunkservers heard again syncing (they catch up before serving).
async fn check_chunkservers(shared: &Shared) -> Result<(), CairnStatus> {
    let servers = shared.fs.chunkservers().map_err(CairnStatus::from)?;
    // Read once per round, again only after a change (every chain decoded:
    // thousands on a large cluster, five rounds a second).
    let mut tables = shared.fs.chain_tables().map_err(CairnStatus::from)?;
    let timeout = shared.config.chunkserver_timeout;
    // Chunkservers in a maintenance window (an operator's, or a restart's
    // while the chunkserver is still stopping): kept out of their chains,
    // never replaced, not rebalanced onto.
    let in_window = {
        let now = crate::service::now_ns();
        shared
            .fs
            .maintenance()
            .map_err(CairnStatus::from)?
            .into_iter()
            .filter(|(_, m)| m.until_ns > now)
            .map(|(id, _)| id)
            .collect::<std::collections::HashSet<u64>>()
    };
    // Each target's states in its chains, gathered in one pass over the
    // tables (looking them up per target made a round quadratic in the
    // cluster's size: 500 servers of 8 targets kept a core busy).
    let mut states_of: HashMap<u64, Vec<TargetState>> = HashMap::new();
    for m in tables
        .iter()
        .flat_map(|(_, chains)| chains.iter())
        .flat_map(|c| c.members.iter())
    {
        states_of.entry(m.target).or_default().push(m.state);
    }
    let mut changes = Vec::new();
    {
        let live = shared.liveness();
        let since = live.leader_since.unwrap_or_else(Instant::now);
        for cs in &servers {
            let heard = live.chunkservers.get(&cs.id).map(|(at, _)| *at);
            let last = heard.map_or(since, |h| h.max(since));
            let dead = last.elapsed() > timeout;
            for t in &cs.targets {
                let states = states_of.get(&t.id).map_or(&[][..], Vec::as_slice);
                if dead && states.iter().any(|s| *s != TargetState::Offline) {
                    changes.push((t.id, TargetState::Offline));
                } else if !dead
                    && !in_window.contains(&cs.id)
                    && heard.is_some_and(|h| h.elapsed() < timeout)
                    && states.contains(&TargetState::Offline)
                {
                    changes.push((t.id, TargetState::Syncing));
                }
            }
        }
    }
    if !changes.is_empty() {
        // (Repeated while a dead chunkserver is the last serving member of
        // a chain, which meta never takes away; a no-op then.)
        tracing::debug!(?changes, "chunkserver liveness changes target states");
        shared
            .propose(None, Op::SetTargetStates { changes })
            .await?;
        // Re-read: the changes above may have taken targets offline.
        tables = shared.fs.chain_tables().map_err(CairnStatus::from)?;
    }
    let plan = {
        let live = shared.liveness();
        let since = live.leader_since.unwrap_or_else(Instant::now);
        let silent_for = |id: u64| {
            let heard = live.chunkservers.get(&id).map(|(at, _)| *at);
            heard.map_or(since, |h| h.max(since)).elapsed()
        };
        crate::placement::replacements(
            &servers,
            &tables,
            |id| silent_for(id) > shared.config.replace_after && !in_window.contains(&id),
            |id| silent_for(id) < timeout,
        )
    };
    if plan.is_empty() {
        return rebalance(shared, &servers, &tables, &in_window).await;
    }
    tracing::warn!(
        ?plan,
        "re-replicating: chunkservers dead longer than --replace-after are replaced in their chains"
    );
    shared
        .propose(None, Op::ReplaceTargets { changes: plan })
        .await
        .map(|_| ())
}

/// Moves one chain membership towards balance when a chunkserver was
/// added (see [`crate::placement::rebalance_move`]): the new target joins
/// the chain as syncing, its head fills it, and once it serves the most
/// loaded old member leaves. One move at a time, so the cluster stays
/// online and clients see only chain-version refreshes.
async fn rebalance(
    shared: &Shared,
    servers: &[crate::fs::ChunkserverRecord],
    tables: &[(u32, Vec<crate::fs::Chain>)],
    in_window: &std::collections::HashSet<u64>,
) -> Result<(), CairnStatus> {
    let timeout = shared.config.chunkserver_timeout;
    let step = {
        let live = shared.liveness();
        crate::placement::rebalance_move(servers, tables, |id| {
            live.chunkservers
                .get(&id)
                .is_some_and(|(at, _)| at.elapsed() < timeout)
                && !in_window.contains(&id)
        })
    };
    let Some((chain, target, chunkserver)) = step else {
        return Ok(());
    };
    tracing::info!(
        chain,
        target,
        chunkserver,
        "rebalancing: a target joins a chain; the most loaded member leaves once it is synced"
    );
    shared
        .propose(
            None,
            Op::AddMember {
                chain,
                target,
                chunkserver,
            },
        )
        .await
        .map(|_| ())
}

/// Closes sessions not renewed within the session timeout.
async fn expire_sessions(shared: &Shared) -> Result<(), CairnStatus> {
    let sessions = shared.fs.sessions().map_err(CairnStatus::from)?;
    let expired: Vec<u64> = {
        let live = shared.liveness();
        let since = live.leader_since.unwrap_or_else(Instant::now);
        sessions
            .iter()
            .filter(|s| {
                let last = live.sessions.get(&s.id).map_or(since, |h| (*h).max(since));
                last.elapsed() > shared.config.session_timeout
            })
            .map(|s| s.id)
            .collect()
    };
    for id in expired {
        tracing::info!(session = id, "session expired");
        shared
            .propose(None, Op::CloseSession { session: id })
            .await?;
        shared.liveness().sessions.remove(&id);
    }
    Ok(())
}
