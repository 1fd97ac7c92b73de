//! Starting and stopping a chunkserver: one glommio executor per shard
//! serving the data plane, one tokio thread for the control plane (meta
//! gRPC, metrics endpoint, corruption reports).
//!
//! A chunkserver has one target (one data directory, one SSD). Several
//! targets per process would share shard executors and need equal shard
//! counts; one process per disk is what a StatefulSet runs anyway. The
//! target is formatted on first start with the configured shard count,
//! which the superblock then fixes: a later `--shards` that differs is
//! ignored with a warning, so changing a pod's CPU limit never strands
//! chunks (DESIGN §5). The chunkserver's stable identity towards meta is
//! derived from the target UUID, so a restarted or rescheduled pod with the
//! same volume is the same chunkserver.
//!
//! A clean stop leaves a `clean-shutdown` file in the target directory,
//! and a start removes it (durably) before serving. A start without it is
//! *unclean* (kill -9, a crash, a power cut): a replica may then have
//! forwarded a version down its chain that it never stored (writes store
//! and forward at once, see [`crate::server`]), so each shard checks its
//! chunks against their chains' tails before trusting them for reads
//! (`server/verify.rs`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use cairn_proto::ids::ChunkId;
use cairn_proto::meta as pb;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};

use crate::control::{self, ControlState, Registration, UsageSource};
use crate::metrics::Metrics;
use crate::scrub::{self, ScrubConfig};
use crate::server::Shard;
use crate::store::{StoreError, Target, TargetOptions};

/// How a chunkserver starts.
#[derive(Debug, Clone)]
pub struct ChunkserverConfig {
    /// Meta replica addresses (`host:port`).
    pub meta: Vec<String>,
    /// The target directory (formatted on first start).
    pub data_dir: PathBuf,
    /// Address the shards listen on.
    pub listen_ip: IpAddr,
    /// Host clients and peers connect to (registered with meta).
    pub advertise_host: String,
    /// First shard port; shard `k` listens on `base + k`. 0: any free port.
    pub port_base: u16,
    /// Shards (executors) when formatting a new target.
    pub shards: u32,
    /// Failure domain.
    pub zone: String,
    /// Bytes this target may use; `None`: the file system's size.
    pub capacity_bytes: Option<u64>,
    /// Prometheus endpoint, if any.
    pub metrics_listen: Option<SocketAddr>,
    /// Scrubber pace.
    pub scrub: ScrubConfig,
    /// How long a forward or tail query may take.
    pub peer_timeout: Duration,
    /// Bytes per second this chunkserver may send to resync or repair
    /// other replicas (0: unlimited), split evenly over its shards.
    pub resync_rate: u64,
    /// How often the chunkserver reports the (object, chain) pairs it
    /// holds to meta, which answers with orphans to remove.
    pub chunk_report_interval: Duration,
    /// How long an idle shard polls for work before it sleeps in the
    /// kernel: a request arriving meanwhile skips a thread wake-up (tens of
    /// µs on a VM) at the cost of CPU while idle. 0 sleeps at once.
    pub spin_before_park: Duration,
}

impl Default for ChunkserverConfig {
    fn default() -> Self {
        Self {
            meta: vec!["127.0.0.1:7000".into()],
            data_dir: PathBuf::from("cairn-chunkserver"),
            listen_ip: IpAddr::from([127, 0, 0, 1]),
            advertise_host: "127.0.0.1".into(),
            port_base: 0,
            shards: 1,
            zone: String::new(),
            capacity_bytes: None,
            metrics_listen: None,
            scrub: ScrubConfig::default(),
            peer_timeout: Duration::from_secs(5),
            resync_rate: RESYNC_RATE_DEFAULT,
            chunk_report_interval: Duration::from_secs(600),
            spin_before_park: Duration::from_micros(SPIN_DEFAULT_US),
        }
    }
}

/// Default of [`ChunkserverConfig::resync_rate`]: 1 GiB/s, above what
/// one SSD takes (so the disk, not the limit, paces a repair) while leaving
/// a NIC room for client traffic.
pub const RESYNC_RATE_DEFAULT: u64 = 1 << 30;

/// Default of [`ChunkserverConfig::spin_before_park`], µs.
pub const SPIN_DEFAULT_US: u64 = 0;

/// Why a chunkserver did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The target could not be formatted or opened.
    #[error("target {dir}: {source}")]
    Target {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        source: StoreError,
    },
    /// A shard executor failed to start.
    #[error("shard {shard}: {what}")]
    Shard {
        /// The shard.
        shard: u32,
        /// The cause.
        what: String,
    },
    /// The control thread failed to start.
    #[error("control plane: {0}")]
    Control(String),
}

/// A running chunkserver.
#[derive(Debug)]
pub struct Chunkserver {
    /// Where each shard listens, by shard index.
    pub shard_addrs: Vec<SocketAddr>,
    /// The metrics endpoint, if configured.
    pub metrics_addr: Option<SocketAddr>,
    /// Control-plane state (lease, chain view, ids).
    pub control: Arc<ControlState>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The target's UUID.
    pub target_uuid: String,
    data_dir: PathBuf,
    stop: Arc<AtomicBool>,
    control_stop: tokio::sync::watch::Sender<bool>,
    threads: Vec<JoinHandle<()>>,
}

/// The file a clean stop leaves in the target directory.
const CLEAN_MARK: &str = "clean-shutdown";

/// Writes (`present`) or removes the clean-stop mark in `dir`, durably.
fn set_clean_mark(dir: &std::path::Path, present: bool) -> std::io::Result<()> {
    let mark = dir.join(CLEAN_MARK);
    if present {
        let f = std::fs::File::create(&mark)?;
        f.sync_all()?;
    } else {
        match std::fs::remove_file(&mark) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            r => r?,
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

impl Chunkserver {
    /// Leaves the chains before a restart (maintenance, DESIGN §8): tells
    /// meta, which takes this chunkserver's targets out of their chains at
    /// once without replacing them, and waits (up to `timeout`) until the
    /// chain table shows them out, so writes stop coming here before the
    /// process goes. Back, the targets are resynced by version.
    pub fn leave(&self, timeout: Duration) -> bool {
        self.control.leave();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.control.out_of_chains() {
                // Let writes already routed here finish.
                std::thread::sleep(Duration::from_millis(200));
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Stops serving, closes the stores and joins every thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.control_stop.send(true);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Every shard has flushed its store: the next start is clean.
        if let Err(e) = set_clean_mark(&self.data_dir, true) {
            tracing::warn!(
                dir = %self.data_dir.display(),
                "writing the clean-stop mark: {e}; the next start checks every chunk"
            );
        }
    }
}

/// Per-shard space use, for heartbeats.
struct UsageBoard {
    uuid: String,
    capacity: u64,
    used: Vec<AtomicU64>,
}

impl UsageSource for UsageBoard {
    fn usage(&self) -> Vec<(String, u64, u64)> {
        let used = self.used.iter().map(|u| u.load(Ordering::Relaxed)).sum();
        vec![(self.uuid.clone(), self.capacity, used)]
    }
}

fn fs_capacity(dir: &std::path::Path) -> u64 {
    nix::sys::statvfs::statvfs(dir).map_or(0, |s| s.blocks().saturating_mul(s.fragment_size()))
}

/// A corrupt replica block found by a read or the scrubber.
#[derive(Debug, Clone)]
struct Corrupt {
    chunk: ChunkId,
    blocks: Vec<u32>,
    detail: &'static str,
}

/// Formats (first start) or opens the target, starts the shard executors
/// and the control thread, and returns once every shard listens.
///
/// # Errors
/// [`StartError`] when the target cannot be opened or a port cannot be
/// bound.
pub fn start(cfg: ChunkserverConfig) -> Result<Chunkserver, StartError> {
    let target_err = |source| StartError::Target {
        dir: cfg.data_dir.clone(),
        source,
    };
    let fresh = !cfg.data_dir.join("superblock.json").exists();
    if fresh {
        Target::format(&cfg.data_dir, cfg.shards.max(1)).map_err(target_err)?;
        tracing::info!(dir = %cfg.data_dir.display(), shards = cfg.shards, "formatted target");
    }
    let unclean = !fresh && !cfg.data_dir.join(CLEAN_MARK).exists();
    // Gone before the first write is served: a crash from here on is seen.
    set_clean_mark(&cfg.data_dir, false)
        .map_err(StoreError::io("removing the clean-stop mark"))
        .map_err(target_err)?;
    if unclean {
        tracing::warn!(
            dir = %cfg.data_dir.display(),
            "the last run did not stop cleanly: chunks are checked against their chains' tails before they serve reads"
        );
    }
    let target = Arc::new(
        Target::open_with(
            &cfg.data_dir,
            TargetOptions {
                capacity_bytes: cfg.capacity_bytes,
                ..TargetOptions::default()
            },
        )
        .map_err(target_err)?,
    );
    let shards = target.shards();
    if shards != cfg.shards {
        tracing::warn!(
            formatted = shards,
            configured = cfg.shards,
            "the target was formatted with another shard count; it keeps its own"
        );
    }
    let uuid = target.superblock().target_uuid.clone();
    let capacity = cfg
        .capacity_bytes
        .unwrap_or_else(|| fs_capacity(&cfg.data_dir));
    let usage = Arc::new(UsageBoard {
        uuid: uuid.clone(),
        capacity,
        used: (0..shards).map(|_| AtomicU64::new(0)).collect(),
    });
    let control = Arc::new(ControlState::default());
    control.set_shards(shards);
    let metrics = Arc::new(Metrics::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (corrupt_tx, corrupt_rx) = tokio::sync::mpsc::unbounded_channel::<Corrupt>();

    let mut threads = Vec::new();
    let mut shard_addrs = Vec::new();
    let mut progress = Vec::new();
    for k in 0..shards {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<ShardReady, String>>();
        let port = if cfg.port_base == 0 {
            0
        } else {
            cfg.port_base
                .saturating_add(u16::try_from(k).unwrap_or(u16::MAX))
        };
        let ctx = ShardStart {
            k,
            shards,
            bind: SocketAddr::new(cfg.listen_ip, port),
            target: target.clone(),
            control: control.clone(),
            metrics: metrics.clone(),
            usage: usage.clone(),
            stop: stop.clone(),
            corrupt: corrupt_tx.clone(),
            scrub: cfg.scrub.clone(),
            peer_timeout: cfg.peer_timeout,
            unclean,
            resync: crate::server::resync::ResyncConfig {
                rate_per_shard: cfg.resync_rate / u64::from(shards.max(1)),
            },
        };
        let handle = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("cairn-shard-{k}"))
            .spin_before_park(cfg.spin_before_park)
            .spawn(move || run_shard(ctx, ready_tx))
            .map_err(|e| StartError::Shard {
                shard: k,
                what: e.to_string(),
            })?;
        let (addr, shard_progress) = ready_rx
            .recv()
            .map_err(|_| StartError::Shard {
                shard: k,
                what: "executor exited while starting".into(),
            })?
            .map_err(|what| StartError::Shard { shard: k, what })?;
        shard_addrs.push(addr);
        progress.push(shard_progress);
        threads.push(std::thread::spawn(move || {
            if let Err(e) = handle.join() {
                tracing::error!("shard executor: {e}");
            }
        }));
    }

    threads.push(crate::stall::spawn_watchdog(progress, stop.clone()));

    let (control_stop, stop_rx) = tokio::sync::watch::channel(false);
    let reg = Registration {
        node_uuid: format!("cs-{uuid}"),
        host: cfg.advertise_host.clone(),
        shard_ports: shard_addrs.iter().map(|a| u32::from(a.port())).collect(),
        zone: cfg.zone.clone(),
        targets: vec![(uuid.clone(), capacity)],
    };
    let (maddr_tx, maddr_rx) = mpsc::channel::<Result<Option<SocketAddr>, String>>();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError::Control(e.to_string()))?;
    let report_interval = cfg.chunk_report_interval;
    let (meta, ctl, m, listen) = (
        cfg.meta.clone(),
        control.clone(),
        metrics.clone(),
        cfg.metrics_listen,
    );
    threads.push(std::thread::spawn(move || {
        rt.block_on(async move {
            let maddr = match listen {
                Some(a) => {
                    let c = ctl.clone();
                    let ready: crate::metrics::Readiness = Arc::new(move || c.readiness());
                    crate::metrics::serve(a, m.clone(), ready, stop_rx.clone())
                        .await
                        .map(Some)
                        .map_err(|e| format!("metrics endpoint {a}: {e}"))
                }
                None => Ok(None),
            };
            let failed = maddr.is_err();
            let _ = maddr_tx.send(maddr);
            if failed {
                return;
            }
            let reporter = tokio::spawn(report_corruption(meta.clone(), ctl.clone(), corrupt_rx));
            let chunk_reports = tokio::spawn(control::report_chunks(
                meta.clone(),
                ctl.clone(),
                report_interval,
                stop_rx.clone(),
            ));
            control::run(meta, reg, usage, ctl, m, stop_rx).await;
            reporter.abort();
            chunk_reports.abort();
        });
    }));
    let metrics_addr = match maddr_rx.recv() {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            stop.store(true, Ordering::Release);
            return Err(StartError::Control(e));
        }
        Err(_) => {
            stop.store(true, Ordering::Release);
            return Err(StartError::Control("control thread exited".into()));
        }
    };
    tracing::info!(shards = ?shard_addrs, target = %uuid, "chunkserver serving");
    Ok(Chunkserver {
        shard_addrs,
        metrics_addr,
        control,
        metrics,
        target_uuid: uuid,
        data_dir: cfg.data_dir.clone(),
        stop,
        control_stop,
        threads,
    })
}

/// Everything one shard executor needs.
struct ShardStart {
    k: u32,
    shards: u32,
    bind: SocketAddr,
    target: Arc<Target>,
    control: Arc<ControlState>,
    metrics: Arc<Metrics>,
    usage: Arc<UsageBoard>,
    stop: Arc<AtomicBool>,
    corrupt: tokio::sync::mpsc::UnboundedSender<Corrupt>,
    scrub: ScrubConfig,
    peer_timeout: Duration,
    /// The target's last run ended without a clean stop.
    unclean: bool,
    resync: crate::server::resync::ResyncConfig,
}

/// How often a shard looks at its stop flag and refreshes its usage.
const TICK: Duration = Duration::from_millis(100);

/// A started shard: its address and its progress, for the stall watchdog.
type ShardReady = (SocketAddr, Arc<crate::stall::Progress>);

async fn run_shard(ctx: ShardStart, ready: mpsc::Sender<Result<ShardReady, String>>) {
    let store = match ctx.target.open_shard(ctx.k).await {
        Ok(s) => Rc::new(s),
        Err(e) => {
            let _ = ready.send(Err(format!("opening the shard store: {e}")));
            return;
        }
    };
    let listener = match TcpListener::bind(ctx.bind) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!("listening on {}: {e}", ctx.bind)));
            return;
        }
    };
    let addr = listener.local_addr().unwrap_or(ctx.bind);
    let _ = ready.send(Ok((addr, store.progress().clone())));

    let tx = ctx.corrupt.clone();
    let read_sink: crate::server::CorruptSink = Rc::new(move |chunk, blocks| {
        let _ = tx.send(Corrupt {
            chunk,
            blocks,
            detail: "read",
        });
    });
    let shard = Rc::new(Shard::new(
        store.clone(),
        ctx.shards,
        ctx.control.clone(),
        ctx.metrics.clone(),
        ctx.peer_timeout,
        read_sink,
    ));
    let scrub_stop = Rc::new(std::cell::Cell::new(false));
    let verify = ctx.unclean.then(|| {
        shard.suspect_after_crash();
        glommio::spawn_local(shard.clone().verify_after_crash(scrub_stop.clone()))
    });
    let tx = ctx.corrupt.clone();
    let repair_shard = shard.clone();
    // The scrubber yields to the data path: its own queue, few shares.
    let scrub_queue = glommio::executor().create_task_queue(
        glommio::Shares::Static(50),
        glommio::Latency::NotImportant,
        "scrub",
    );
    let scrubber = glommio::spawn_local_into(
        scrub::run_scrubber(
            store.clone(),
            ctx.scrub.clone(),
            ctx.metrics.clone(),
            move |r: scrub::CorruptReport| {
                repair_shard.queue_repair(r.chunk);
                let _ = tx.send(Corrupt {
                    chunk: r.chunk,
                    blocks: r.bad_blocks,
                    detail: "scrub",
                });
            },
            scrub_stop.clone(),
        ),
        scrub_queue,
    );
    let ctl = ctx.control.clone();
    let resync = glommio::spawn_local(crate::server::resync::run(
        shard.clone(),
        ctx.resync,
        scrub_stop.clone(),
        move |chain, version| ctl.shard_synced(chain, version),
    ));
    let slot = ctx.k as usize;
    // One accept stays in flight across ticks. An accept is an io_uring
    // operation: dropping its future after the kernel completed it, before
    // the future collected the new socket, leaks that socket (glommio does
    // not close it), and the client is left with an open connection that
    // nobody reads, every request on it timing out. Racing a fresh accept
    // against each tick did exactly that, now and then.
    let mut accept = Box::pin(listener.accept());
    while !ctx.stop.load(Ordering::Acquire) {
        let accepted = async { Some((&mut accept).await) };
        let tick = async {
            glommio::timer::sleep(TICK).await;
            None
        };
        if let Some(r) = futures_lite::future::or(accepted, tick).await {
            accept = Box::pin(listener.accept());
            match r {
                Ok(stream) => {
                    glommio::spawn_local(shard.clone().serve_connection(stream)).detach();
                }
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    glommio::timer::sleep(TICK).await;
                }
            }
        }
        if let Some(u) = ctx.usage.used.get(slot) {
            u.store(store.usage().used_bytes, Ordering::Relaxed);
        }
    }
    drop(accept);
    scrub_stop.set(true);
    resync.await;
    if let Some(v) = verify {
        v.await;
    }
    match scrubber {
        Ok(t) => t.await,
        Err(e) => tracing::error!("the scrubber could not start: {e}"),
    }
    if let Err(e) = ctx.target.flush() {
        tracing::error!("flushing the target at shutdown: {e}");
    }
}

/// Sends corrupt-block reports to meta (soft state there; the scrubber
/// reports again every pass, so a lost report is not lost for good).
async fn report_corruption(
    meta: Vec<String>,
    control: Arc<ControlState>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Corrupt>,
) {
    while let Some(c) = rx.recv().await {
        let req = pb::ReportCorruptionRequest {
            chunkserver_id: control.chunkserver_id(),
            target_id: control.target_ids().first().copied().unwrap_or(0),
            object_id: c.chunk.object.0,
            chunk_index: c.chunk.index,
            bad_blocks: c.blocks.clone(),
            detail: c.detail.to_string(),
        };
        tracing::error!(chunk = %c.chunk, blocks = ?c.blocks, via = c.detail, "reporting a corrupt replica to meta");
        if let Err(e) = control::report_corruption(&meta, req).await {
            tracing::warn!("reporting corruption to meta: {e}");
        }
    }
}
