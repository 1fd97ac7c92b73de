//! The control plane of a chunkserver: a small tokio thread that talks gRPC
//! to meta (DESIGN §2, §5).
//!
//! * Registers the chunkserver (stable node UUID, host, one port per shard,
//!   zone) and its targets (UUID, capacity), learning its chunkserver id and
//!   target ids, and the heartbeat interval and timeout meta wants.
//! * Heartbeats with target usage; every successful heartbeat extends the
//!   **lease**: a chunkserver that has not reached meta for half the
//!   heartbeat timeout stops serving (shards check [`ControlState::serving`]
//!   on every request), while meta waits the full timeout before taking its
//!   targets out of their chains. So a partitioned chunkserver never serves
//!   stale data to clients holding an old table (invariant 8).
//! * Watches the chain table (meta's stream) and publishes each new
//!   [`ChainView`]; shards pick it up by comparing one atomic version.
//! * Keeps the **snapshot fence** (DESIGN §3): the newest snapshot seq from
//!   registration, heartbeats and chain tables. Heads admit client writes
//!   through [`ControlState::admit_write`], which refuses older seqs and
//!   counts the admitted ones; each heartbeat reports the newest seq under
//!   which no older write is still under way, and meta calls a snapshot
//!   ready once every serving chunkserver reports its seq. The fence lives
//!   in memory only: a restarted chunkserver learns it when it registers,
//!   before its first lease.
//!
//! Meta's leader may move: calls follow NOT_LEADER hints and rotate through
//! the configured addresses.
//!
//! # A meta replica that falls silent
//!
//! A frozen or cut-off replica keeps its TCP connections open, so nothing
//! fails on its own. Three guards keep the control plane moving:
//!
//! * Every connection to meta sends an HTTP/2 PING after
//!   [`cairn_proto::META_KEEPALIVE_INTERVAL`] of silence and closes when it
//!   goes unanswered for [`cairn_proto::META_KEEPALIVE_TIMEOUT`]: the chain
//!   watch on a silent replica breaks and reconnects elsewhere.
//! * A heartbeat attempt gives up after one heartbeat interval and tries
//!   the next replica, so one silent replica does not run out the lease
//!   (half the heartbeat timeout) while the others would answer.
//! * The chain watch may sit on a replica that answers PINGs but no longer
//!   learns the table (a follower cut off from the leader). Each
//!   heartbeat's reply carries the leader's table version; when this
//!   chunkserver is behind it and has learned nothing by the next
//!   heartbeat, the watch moves to the replica that answered it.
//!
//! Before, a chunkserver watching a frozen leader learned no chain table
//! for as long as the freeze lasted, and a client writing to a chain the new
//! leader had changed was refused (`NEWER_CHAIN_VERSION`) until its
//! deadline ran out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_proto::meta as pb;
use cairn_proto::meta::meta_client::MetaClient;
use cairn_proto::{CairnStatus, ErrorCode};
use tonic::transport::{Channel, Endpoint};

use crate::chain::ChainView;

/// (object id, chain id): what a chunk report lists.
pub type ObjectChain = (u64, u32);

/// What the control thread shares with the shards.
#[derive(Debug)]
pub struct ControlState {
    view: RwLock<Arc<ChainView>>,
    view_version: AtomicU64,
    lease_until_ms: AtomicU64,
    chunkserver_id: AtomicU64,
    target_ids: Mutex<Vec<u64>>,
    /// Shards that finished syncing each (chain, chain version).
    synced: Mutex<std::collections::HashMap<(u32, u64), u32>>,
    shards: AtomicU64,
    leaving: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
    /// Per shard, the (object, chain) pairs it last listed, for the chunk
    /// report.
    chunk_lists: Mutex<Vec<Option<Vec<ObjectChain>>>>,
    /// Per shard, (object, chain) pairs meta confirmed orphaned, to remove;
    /// chain 0: every chunk of an unreferenced object.
    removals: Mutex<Vec<Vec<ObjectChain>>>,
    /// The snapshot fence (DESIGN §3): the newest snapshot seq learned from
    /// meta; a head refuses client writes carrying an older one.
    snap_seq: AtomicU64,
    /// Head writes under way, by the snapshot seq they were accepted
    /// under (seq → count): meta learns a seq is drained only when none
    /// older is left.
    writes_by_seq: Mutex<std::collections::BTreeMap<u64, u64>>,
    /// Meta's snapshots (see [`LiveSnapshots`]), once a heartbeat brought
    /// them.
    live_snapshots: RwLock<Option<Arc<LiveSnapshots>>>,
    /// Per shard, the bytes stored for each snapshot alone (seq → bytes),
    /// as the shard last computed them.
    snapshot_space: Mutex<Vec<std::collections::BTreeMap<u64, u64>>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Default for ControlState {
    fn default() -> Self {
        Self {
            view: RwLock::new(Arc::new(ChainView::default())),
            view_version: AtomicU64::new(0),
            lease_until_ms: AtomicU64::new(0),
            chunkserver_id: AtomicU64::new(0),
            target_ids: Mutex::new(Vec::new()),
            synced: Mutex::new(std::collections::HashMap::new()),
            shards: AtomicU64::new(1),
            leaving: std::sync::atomic::AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            chunk_lists: Mutex::new(vec![None]),
            removals: Mutex::new(vec![Vec::new()]),
            snap_seq: AtomicU64::new(0),
            writes_by_seq: Mutex::new(std::collections::BTreeMap::new()),
            live_snapshots: RwLock::new(None),
            snapshot_space: Mutex::new(vec![std::collections::BTreeMap::new()]),
        }
    }
}

/// The snapshots meta has, as one heartbeat reply told: chunk clones no
/// snapshot reads are freed against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveSnapshots {
    /// The seqs of the snapshots, ascending.
    pub seqs: Vec<u64>,
    /// The newest snapshot seq when meta read them: a clone keyed above it
    /// belongs to a snapshot taken since, which the list cannot show, so
    /// it is never freed against this list.
    pub upto: u64,
}

/// A head write counted in [`ControlState::writes_by_seq`] while alive.
#[derive(Debug)]
pub struct SnapWrite<'a> {
    state: &'a ControlState,
    seq: u64,
}

impl Drop for SnapWrite<'_> {
    fn drop(&mut self) {
        let mut m = lock(&self.state.writes_by_seq);
        if let Some(n) = m.get_mut(&self.seq) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.seq);
                // The last write under an older seq than the fence: meta
                // waits for this to make a snapshot ready, so tell it now.
                if self.seq < self.state.snap_seq() {
                    self.state.wake.notify_one();
                }
            }
        }
    }
}

impl ControlState {
    /// Raises the snapshot fence to `seq` (never lowers it). A new fence
    /// sends a heartbeat at once: a snapshot is ready when every
    /// chunkserver has reported it drained, and waiting for the next
    /// regular heartbeat would make taking one last up to an interval.
    pub fn learn_snap_seq(&self, seq: u64) {
        if self.snap_seq.fetch_max(seq, Ordering::SeqCst) < seq {
            self.wake.notify_one();
        }
    }

    /// Returns the snapshot fence.
    pub fn snap_seq(&self) -> u64 {
        self.snap_seq.load(Ordering::SeqCst)
    }

    /// Admits a head write carrying snapshot seq `seq`: counted until the
    /// guard drops, or refused with the fence when `seq` is older. The
    /// write is counted before the fence is read, so a seq the control
    /// thread reports drained (it reads the fence, then the counts) has no
    /// write under an older seq left, admitted or about to be.
    ///
    /// # Errors
    /// The fence, when `seq` is below it.
    pub fn admit_write(&self, seq: u64) -> Result<SnapWrite<'_>, u64> {
        *lock(&self.writes_by_seq).entry(seq).or_insert(0) += 1;
        let guard = SnapWrite { state: self, seq };
        let fence = self.snap_seq();
        if seq < fence {
            return Err(fence);
        }
        Ok(guard)
    }

    /// The newest seq that is fenced and has no write under an older seq
    /// under way (what heartbeats report as `snap_seq_drained`).
    pub fn snap_seq_drained(&self) -> u64 {
        let fence = self.snap_seq();
        let oldest = lock(&self.writes_by_seq)
            .keys()
            .next()
            .copied()
            .unwrap_or(u64::MAX);
        fence.min(oldest)
    }

    /// Returns meta's snapshots as of the last heartbeat (`None` until one
    /// brought them).
    pub fn live_snapshots(&self) -> Option<Arc<LiveSnapshots>> {
        self.live_snapshots
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Returns whether the lease allows serving now.
    pub fn serving(&self) -> bool {
        now_ms() < self.lease_until_ms.load(Ordering::Acquire)
    }

    /// Extends the lease to `until_ms` (ms since the epoch).
    pub fn extend_lease(&self, until_ms: u64) {
        self.lease_until_ms.fetch_max(until_ms, Ordering::AcqRel);
    }

    /// Returns the version of the newest published chain view.
    pub fn view_version(&self) -> u64 {
        self.view_version.load(Ordering::Acquire)
    }

    /// Returns the newest chain view.
    pub fn view(&self) -> Arc<ChainView> {
        self.view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Publishes `view` if it is newer than the current one.
    pub fn publish(&self, view: ChainView) {
        let mut cur = self
            .view
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if view.version >= cur.version {
            let v = view.version;
            *cur = Arc::new(view);
            self.view_version.store(v, Ordering::Release);
        }
    }

    /// Returns this chunkserver's id (0 before registration).
    pub fn chunkserver_id(&self) -> u64 {
        self.chunkserver_id.load(Ordering::Acquire)
    }

    /// Announces that this chunkserver is stopping for a restart: the next
    /// heartbeat (sent now) asks meta to take its targets out of their
    /// chains without replacing them.
    pub fn leave(&self) {
        self.leaving.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Whether this chunkserver is ready for traffic (`GET /ready`, the pod's
    /// readiness, DESIGN §8): registered, within its lease, and every chain
    /// member it holds serving — so a rolling restart moves on only once
    /// the restarted chunkserver has been resynced.
    ///
    /// # Errors
    /// Why it is not ready.
    pub fn readiness(&self) -> Result<(), String> {
        let me = self.chunkserver_id();
        if me == 0 {
            return Err("not registered with meta yet".into());
        }
        if !self.serving() {
            return Err("no lease: meta not reached within half the heartbeat timeout".into());
        }
        let view = self.view();
        let behind: Vec<String> = view
            .chains()
            .filter_map(|(id, c)| {
                c.members
                    .iter()
                    .find(|m| m.chunkserver == me && m.state != crate::chain::MemberState::Serving)
                    .map(|m| format!("chain {id}: {:?}", m.state).to_lowercase())
            })
            .collect();
        if behind.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "not serving in every chain ({})",
                behind.join(", ")
            ))
        }
    }

    /// Returns whether every chain member on chunkserver `me` is offline
    /// in the current view (meta took them out).
    pub fn out_of_chains(&self) -> bool {
        let me = self.chunkserver_id();
        let view = self.view();
        view.chains().all(|(_, c)| {
            // A chain's last serving member is never taken out.
            let serving = c
                .members
                .iter()
                .filter(|m| m.state == crate::chain::MemberState::Serving)
                .count();
            c.members.iter().all(|m| {
                m.chunkserver != me
                    || m.state == crate::chain::MemberState::Offline
                    || (serving == 1 && m.state == crate::chain::MemberState::Serving)
            })
        })
    }

    /// Sets how many shards must sync a chain before it is reported.
    pub fn set_shards(&self, shards: u32) {
        self.shards
            .store(u64::from(shards.max(1)), Ordering::Release);
        let n = shards.max(1) as usize;
        *lock(&self.chunk_lists) = vec![None; n];
        *lock(&self.removals) = vec![Vec::new(); n];
        *lock(&self.snapshot_space) = vec![std::collections::BTreeMap::new(); n];
    }

    /// Publishes the bytes shard `shard` stores for each snapshot alone.
    pub fn set_snapshot_space(&self, shard: u32, space: std::collections::BTreeMap<u64, u64>) {
        if let Some(s) = lock(&self.snapshot_space).get_mut(shard as usize) {
            *s = space;
        }
    }

    /// The bytes this chunkserver stores for each snapshot alone, summed
    /// over its shards.
    pub fn snapshot_space(&self) -> Vec<pb::SnapshotSpace> {
        let mut sum: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
        for m in lock(&self.snapshot_space).iter() {
            for (seq, b) in m {
                *sum.entry(*seq).or_default() += b;
            }
        }
        sum.into_iter()
            .map(|(seq, exclusive_bytes)| pb::SnapshotSpace {
                seq,
                exclusive_bytes,
            })
            .collect()
    }

    /// Whether shard `shard` owes a list for the next chunk report (the
    /// report took the last one).
    pub fn wants_chunk_list(&self, shard: u32) -> bool {
        lock(&self.chunk_lists)
            .get(shard as usize)
            .is_some_and(Option::is_none)
    }

    /// Publishes the (object, chain) pairs shard `shard` holds.
    pub fn set_chunk_list(&self, shard: u32, list: Vec<(u64, u32)>) {
        if let Some(s) = lock(&self.chunk_lists).get_mut(shard as usize) {
            *s = Some(list);
        }
    }

    /// Takes the orphaned (object, chain) pairs shard `shard` must remove.
    pub fn take_removals(&self, shard: u32) -> Vec<(u64, u32)> {
        lock(&self.removals)
            .get_mut(shard as usize)
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Records that one shard synced `chain` at `version`.
    pub fn shard_synced(&self, chain: u32, version: u64) {
        *self
            .synced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((chain, version))
            .or_insert(0) += 1;
    }

    /// Returns the (chain, version) pairs every shard has synced and that
    /// are still current, forgetting those that are not.
    pub fn synced_chains(&self) -> Vec<(u32, u64)> {
        let view = self.view();
        let shards = self.shards.load(Ordering::Acquire);
        let mut m = self
            .synced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.retain(|(c, v), _| view.chain(*c).is_none_or(|i| i.version <= *v));
        m.iter()
            .filter(|(_, n)| u64::from(**n) >= shards)
            .map(|(k, _)| *k)
            .collect()
    }

    /// Returns the target ids, in the order of the configured targets.
    pub fn target_ids(&self) -> Vec<u64> {
        self.target_ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// What the chunkserver registers with.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Stable chunkserver UUID.
    pub node_uuid: String,
    /// Data-plane host clients connect to.
    pub host: String,
    /// One port per shard.
    pub shard_ports: Vec<u32>,
    /// Failure domain.
    pub zone: String,
    /// Targets: (UUID, capacity bytes).
    pub targets: Vec<(String, u64)>,
}

/// Reports target usage for heartbeats.
pub trait UsageSource: Send + Sync + 'static {
    /// Returns (uuid, capacity, used) per target.
    fn usage(&self) -> Vec<(String, u64, u64)>;
}

/// How long one call to one meta replica may take by default.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A lazily connecting channel to the meta replica at `addr` (module docs).
fn meta_channel(addr: &str) -> Result<Channel, CairnStatus> {
    let ep = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| CairnStatus::new(ErrorCode::Invalid, format!("meta address {addr}: {e}")))?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(cairn_proto::META_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(cairn_proto::META_KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    Ok(ep.connect_lazy())
}

/// A meta client that follows the leader.
struct Meta {
    addrs: Vec<String>,
    cursor: usize,
    leader: Option<String>,
    clients: std::collections::HashMap<String, MetaClient<Channel>>,
    /// How long one attempt at one replica may take.
    call_timeout: Duration,
}

impl Meta {
    fn new(addrs: Vec<String>) -> Self {
        Self {
            addrs,
            cursor: 0,
            leader: None,
            clients: std::collections::HashMap::new(),
            call_timeout: CALL_TIMEOUT,
        }
    }

    fn client(&mut self, addr: &str) -> Result<MetaClient<Channel>, CairnStatus> {
        if let Some(c) = self.clients.get(addr) {
            return Ok(c.clone());
        }
        let c = MetaClient::new(meta_channel(addr)?);
        self.clients.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    fn target(&mut self) -> String {
        if let Some(l) = &self.leader {
            return l.clone();
        }
        let a = self.addrs[self.cursor % self.addrs.len().max(1)].clone();
        self.cursor += 1;
        a
    }

    /// Runs `f` against the leader, following hints, up to a few hops.
    async fn call<T, F, Fut>(&mut self, mut f: F) -> Result<T, CairnStatus>
    where
        F: FnMut(MetaClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut last = CairnStatus::new(ErrorCode::Unavailable, "no meta address configured");
        for _ in 0..(self.addrs.len() * 2).max(2) {
            let addr = self.target();
            let client = self.client(&addr)?;
            let r = tokio::time::timeout(self.call_timeout, f(client))
                .await
                .unwrap_or_else(|_| {
                    Err(tonic::Status::unavailable(format!(
                        "{addr} did not answer within {:?}",
                        self.call_timeout
                    )))
                });
            match r {
                Ok(r) => {
                    self.leader = Some(addr);
                    return Ok(r.into_inner());
                }
                Err(s) => {
                    let e = CairnStatus::from_status(&s);
                    self.leader = None;
                    if e.code == ErrorCode::NotLeader {
                        self.leader = e.leader_addr.clone();
                    } else if !e.is_retryable() && e.code != ErrorCode::Unavailable {
                        return Err(e);
                    } else {
                        self.clients.remove(&addr);
                    }
                    last = e;
                }
            }
        }
        Err(last)
    }
}

/// Runs the control plane until `stop` flips; returns when stopped.
///
/// Registration is retried until it succeeds (meta may start later than
/// the chunkserver); heartbeats and the chain watch then run concurrently.
pub async fn run(
    meta_addrs: Vec<String>,
    reg: Registration,
    usage: Arc<dyn UsageSource>,
    state: Arc<ControlState>,
    metrics: Arc<crate::metrics::Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut meta = Meta::new(meta_addrs.clone());
    let req = pb::RegisterChunkserverRequest {
        host: reg.host.clone(),
        shard_ports: reg.shard_ports.clone(),
        targets: reg
            .targets
            .iter()
            .map(|(uuid, cap)| pb::TargetInfo {
                uuid: uuid.clone(),
                capacity_bytes: *cap,
                used_bytes: 0,
            })
            .collect(),
        zone: reg.zone.clone(),
        node_uuid: reg.node_uuid.clone(),
    };
    let mut backoff = Duration::from_millis(100);
    let reply = loop {
        let r = meta
            .call(|mut c| {
                let req = req.clone();
                async move { c.register_chunkserver(req).await }
            })
            .await;
        match r {
            Ok(r) => break r,
            Err(e) => tracing::warn!("registering with meta: {e}; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    };
    // Fenced before the first lease: no write under an older snapshot seq
    // is ever accepted.
    state.learn_snap_seq(reply.snap_seq);
    state
        .chunkserver_id
        .store(reply.chunkserver_id, Ordering::Release);
    *state
        .target_ids
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = reply.target_ids.clone();
    let interval = Duration::from_millis(reply.heartbeat_interval_ms.max(50));
    let timeout = Duration::from_millis(reply.heartbeat_timeout_ms.max(200));
    let lease = timeout / 2;
    state.extend_lease(now_ms() + u64::try_from(lease.as_millis()).unwrap_or(0));
    tracing::info!(
        id = reply.chunkserver_id,
        targets = ?reply.target_ids,
        "registered with meta"
    );

    // One silent replica must not run out the lease (module docs).
    meta.call_timeout = interval;
    let (rewatch, rewatch_rx) = tokio::sync::watch::channel(None);
    let watch_state = state.clone();
    let watch_stop = stop.clone();
    let watcher = tokio::spawn(watch_chains(
        meta_addrs,
        watch_state,
        rewatch_rx,
        watch_stop,
    ));
    // The table version the last heartbeat found here when it was behind
    // the leader's.
    let mut behind: Option<u64> = None;

    let id = reply.chunkserver_id;
    loop {
        let started = Instant::now();
        let targets = usage
            .usage()
            .into_iter()
            .map(|(uuid, cap, used)| pb::TargetInfo {
                uuid,
                capacity_bytes: cap,
                used_bytes: used,
            })
            .collect::<Vec<_>>();
        let known = state.view_version();
        let synced: Vec<pb::ChainSynced> = state
            .synced_chains()
            .into_iter()
            .map(|(chain_id, chain_version)| pb::ChainSynced {
                chain_id,
                chain_version,
            })
            .collect();
        let (chunks_copied, bytes_copied, chunks_current, chains, _) = metrics.repair_counts();
        let repair = pb::RepairProgress {
            chunks_copied,
            bytes_copied,
            chunks_current,
            chains_syncing: u32::try_from(chains).unwrap_or(u32::MAX),
            bytes_per_sec: 0,
        };
        let sent_at = now_ms();
        let drained = state.snap_seq_drained();
        let space = state.snapshot_space();
        let r = meta
            .call(|mut c| {
                let req = pb::ChunkserverHeartbeatRequest {
                    chunkserver_id: id,
                    targets: targets.clone(),
                    chain_table_version: known,
                    synced: synced.clone(),
                    repair: Some(repair),
                    leaving: state.leaving.load(Ordering::Acquire),
                    snap_seq_drained: drained,
                    snapshot_space: space.clone(),
                };
                async move { c.chunkserver_heartbeat(req).await }
            })
            .await;
        match r {
            // The lease counts from when the heartbeat was sent, not
            // answered: meta's clock for us started no later than that.
            // The fence first: a lease regained after a partition never
            // serves a write under a snapshot seq it missed.
            Ok(r) => {
                // Behind the leader's table, and learned nothing since the
                // last heartbeat found it behind: the watch is stuck on a
                // replica that does not learn the table (a watch that is
                // merely catching up with a busy table has moved).
                let have = state.view_version();
                let lagging = r.chain_table_version > have;
                if lagging
                    && behind == Some(have)
                    && let Some(leader) = &meta.leader
                {
                    tracing::warn!(
                        at = %leader,
                        version = r.chain_table_version,
                        have,
                        "the chain watch is behind meta's leader; watching there"
                    );
                    rewatch.send_replace(Some(leader.clone()));
                }
                behind = lagging.then_some(have);
                state.learn_snap_seq(r.snap_seq);
                *state
                    .live_snapshots
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(Arc::new(LiveSnapshots {
                        seqs: r.live_snapshots,
                        upto: r.snap_seq,
                    }));
                state.extend_lease(sent_at + u64::try_from(lease.as_millis()).unwrap_or(0));
            }
            Err(e) if e.code == ErrorCode::NotFound => {
                tracing::error!("meta no longer knows this chunkserver: {e}");
            }
            Err(e) => tracing::warn!("heartbeat: {e}"),
        }
        let wait = interval.saturating_sub(started.elapsed());
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = state.wake.notified() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    watcher.abort();
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends the chunk report every `interval` once every shard has listed its
/// chunks (DESIGN §11), and hands the orphans meta confirms to the shards.
pub async fn report_chunks(
    addrs: Vec<String>,
    state: Arc<ControlState>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut meta = Meta::new(addrs);
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let id = state.chunkserver_id();
        let lists = std::mem::take(&mut *lock(&state.chunk_lists));
        let n = lists.len();
        if id == 0 || lists.iter().any(Option::is_none) {
            *lock(&state.chunk_lists) = lists;
            continue;
        }
        *lock(&state.chunk_lists) = vec![None; n];
        let mut entries: Vec<(u64, u32)> = lists.into_iter().flatten().flatten().collect();
        entries.sort_unstable();
        entries.dedup();
        let req = pb::ReportChunksRequest {
            chunkserver_id: id,
            entries: entries
                .iter()
                .map(|(object_id, chain_id)| pb::ChunkReportEntry {
                    object_id: *object_id,
                    chain_id: *chain_id,
                })
                .collect(),
        };
        match meta
            .call(|mut c| {
                let req = req.clone();
                async move { c.report_chunks(req).await }
            })
            .await
        {
            Ok(r) if !r.remove.is_empty() || !r.unreferenced.is_empty() => {
                // Chain 0 stands for every chunk of an unreferenced object.
                let remove: Vec<(u64, u32)> = r
                    .remove
                    .iter()
                    .map(|e| (e.object_id, e.chain_id))
                    .filter(|(_, c)| *c != 0)
                    .chain(r.unreferenced.iter().map(|o| (*o, 0)))
                    .collect();
                tracing::warn!(
                    n = remove.len(),
                    "meta confirmed orphaned chunks here; removing them"
                );
                for q in lock(&state.removals).iter_mut() {
                    q.extend(remove.iter().copied());
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!("chunk report: {e}"),
        }
    }
}

/// Tells meta's leader about a corrupt replica (DESIGN §5: the scrubber
/// and reads report; repair, issue 6, rewrites it from a healthy replica).
///
/// # Errors
/// The last error when no meta replica took the report.
pub async fn report_corruption(
    addrs: &[String],
    req: pb::ReportCorruptionRequest,
) -> Result<(), CairnStatus> {
    let mut meta = Meta::new(addrs.to_vec());
    meta.call(|mut c| {
        let req = req.clone();
        async move { c.report_corruption(req).await }
    })
    .await
    .map(|_| ())
}

/// Follows meta's chain-table stream, reconnecting (to the next replica)
/// when it breaks, and at the replica `rewatch` names when the heartbeats
/// find it behind (module docs).
async fn watch_chains(
    addrs: Vec<String>,
    state: Arc<ControlState>,
    mut rewatch: tokio::sync::watch::Receiver<Option<String>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut i = 0usize;
    let mut next: Option<String> = None;
    loop {
        let addr = next.take().unwrap_or_else(|| {
            i += 1;
            addrs[(i - 1) % addrs.len().max(1)].clone()
        });
        let stream = async {
            let mut c = MetaClient::new(meta_channel(&addr).ok()?);
            let known = state.view_version();
            let s = tokio::time::timeout(
                CALL_TIMEOUT,
                c.watch_chains(pb::WatchChainsRequest {
                    known_version: known,
                }),
            )
            .await
            .ok()?
            .ok()?;
            Some(s.into_inner())
        };
        if let Some(mut s) = stream.await {
            loop {
                tokio::select! {
                    m = s.message() => match m {
                        Ok(Some(t)) => {
                            state.learn_snap_seq(t.snap_seq);
                            state.publish(ChainView::from_pb(&t));
                        }
                        _ => break,
                    },
                    Ok(()) = rewatch.changed() => {
                        next = rewatch.borrow_and_update().clone();
                        break;
                    }
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
        if next.is_some() {
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_expires() {
        let s = ControlState::default();
        assert!(!s.serving(), "no lease before registration");
        s.extend_lease(now_ms() + 10_000);
        assert!(s.serving());
        // Extending never shortens.
        s.extend_lease(now_ms());
        assert!(s.serving());
    }

    #[test]
    fn publishes_only_newer_views() {
        let s = ControlState::default();
        let t = pb::ChainTables {
            version: 5,
            ..Default::default()
        };
        s.publish(ChainView::from_pb(&t));
        assert_eq!(s.view_version(), 5);
        let old = pb::ChainTables {
            version: 3,
            ..Default::default()
        };
        s.publish(ChainView::from_pb(&old));
        assert_eq!(s.view().version, 5);
    }

    #[test]
    fn the_snapshot_fence_refuses_older_writes_and_drains() {
        let s = ControlState::default();
        s.learn_snap_seq(4);
        s.learn_snap_seq(2);
        assert_eq!(s.snap_seq(), 4, "the fence never goes back");
        assert_eq!(s.admit_write(3).unwrap_err(), 4);
        assert_eq!(s.snap_seq_drained(), 4, "a refused write is not counted");
        let w = s.admit_write(4).unwrap();
        let newer = s.admit_write(9).unwrap();
        // A new snapshot: the write admitted under 4 is still under way.
        s.learn_snap_seq(7);
        assert_eq!(s.snap_seq_drained(), 4);
        drop(w);
        assert_eq!(s.snap_seq_drained(), 7);
        drop(newer);
        assert_eq!(s.snap_seq_drained(), 7);
    }
}
