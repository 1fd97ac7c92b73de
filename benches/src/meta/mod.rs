//! The `meta` workload: metadata operations per second of a 3-replica
//! `cairn-meta` cluster (real processes on loopback, started through
//! `cairn-jepsen`), beside the same operations on the local file system
//! measured in the same run.
//!
//! For each client count `C` (default 1, then 32), `N` operations per phase
//! split evenly over the clients:
//!
//! | phase | Cairn ([`cairn`]) | local ([`local`]) |
//! |---|---|---|
//! | create | exclusive create, one Raft entry, durable on a majority | `open(O_CREAT\|O_EXCL)` + close |
//! | stat | linearizable `getattr` of a random own file (read index) | `stat` |
//! | rename | rename within the client's directory | `rename` |
//! | unlink | unlink of the renamed file | `unlink` |
//!
//! The local side runs twice: as plain syscalls (the page-cache ceiling)
//! and with each mutation fsynced (file + directory on create, directory on
//! rename and unlink) — the like-for-like durability comparison, since
//! Cairn acknowledges a mutation only once a majority of replicas flushed
//! it to their Raft logs (`sled::Db::flush`, DESIGN §4). Ratios are
//! Cairn's ops/s divided by the baseline's: 1.0 is parity, 0.25 means
//! Cairn does a quarter of the local operations per second.
//!
//! Beside throughput and latency: the leader's group commit in each
//! mutating phase (operations and Raft log entries per log fsync; meta may
//! pack several operations into one entry), and the peak resident
//! memory of every process the run started and of the benchmark itself
//! (DESIGN §10).
//!
//! The phases of one system run back to back and the systems one after the
//! other (Cairn, then local, then local with fsync), never concurrently, so
//! the three do not compete for the two cores of a small machine; the idle
//! cluster still heartbeats while the local baselines run.

pub mod cairn;
pub mod local;
mod standins;
mod table;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use cairn_client::{MetaClient, MetaClientOptions};
use cairn_proto::ids::InodeId;
use cairn_proto::meta::VolumePolicy;
use clap::Args;
use serde::Serialize;

use crate::cluster::{Cluster, ClusterOptions};
use crate::latency::{LatencySummary, Samples};
use crate::machine::{self, FsInfo, Machine};
use crate::{CommonArgs, ProcessRss, build_profile};

pub use table::print_table;

/// Help text of `cairn-bench meta --help`.
pub const LONG_ABOUT: &str = "\
Metadata operations per second of a 3-replica cairn-meta cluster, beside the
same operations on the local file system measured in the same run.

Starts 3 cairn-meta processes on 127.0.0.1 (release binaries from --bin-dir),
then for each client count C: C concurrent clients, each a separate MetaClient
with its own session (like separate processes) and its own directory, run four
phases of N/C operations each, one phase after the other:
  create  exclusive create (O_EXCL): one Raft entry, acknowledged once a
          majority of replicas flushed it to their Raft logs
  stat    getattr of a random file the client created, linearizable (read
          index on the leader; nothing is cached)
  rename  rename f… → r… within the client's directory
  unlink  unlink of the renamed files
Per phase: ops/s (all clients, over the phase's wall time) and latency p50 and
p99 in µs.

Baselines, same phases, C threads, in a directory on the same disk as the
cluster's data (--data-dir):
  local        plain std::fs calls; nothing is durable: the page-cache ceiling
  local+fsync  every mutation durable before the next: create fsyncs the file
               and its directory, rename and unlink fsync the directory. The
               like-for-like comparison: Cairn acknowledges a mutation only
               once a majority of replicas flushed it to disk.
Ratio = cairn ops/s ÷ baseline ops/s: 1 = parity, below 1 = Cairn slower
(0.25: Cairn does a quarter of the baseline's operations per second). Compare
ratios across runs and machines, not absolute rates.

Also reported: the meta leader's group commit in each mutating phase: ops/fsync
(the phase's operations ÷ the leader's Raft log fsyncs, i.e. how many
operations share one fsync) and entries/fsync (log entries appended ÷ log
fsyncs; lower when meta packs several operations into one entry), whether
single-client creates reach the 6,000/s target, the peak
resident memory (VmHWM) of each cairn-meta process and of the benchmark, the
machine and the command line.

Defaults (5,000 operations per phase with 1 client, 20,000 with 32) take about
two minutes on a 2-core machine.";

/// Arguments of `cairn-bench meta`.
#[derive(Debug, Clone, Args)]
pub struct MetaArgs {
    /// Client counts to run, one after the other.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,32",
        value_name = "C,..."
    )]
    pub clients: Vec<usize>,
    /// Operations per phase, summed over all clients: one value for every
    /// client count or one per --clients entry (rounded down to a multiple
    /// of the client count). [default: 5000 × C, at most 20000]
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub ops: Vec<usize>,
    /// Seed of the stat phase's random picks.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Register this many stand-in targets (8 per stand-in chunkserver,
    /// heartbeated by the benchmark, no data plane) before the phases, so
    /// that meta's chain tables are those of a cluster of that size (one
    /// chain per target) and every create picks its layout from them. 0:
    /// no chunkservers, files get no chains.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub targets: usize,
    /// Options shared by every workload.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Default operations per phase for `clients` clients.
fn default_ops(clients: usize) -> usize {
    (5_000 * clients).min(20_000)
}

/// Returns `(clients, operations per client)` for every run.
///
/// # Errors
/// A zero client count, a count of --ops that matches neither one nor the
/// number of client counts, or fewer operations than clients.
pub fn plan(clients: &[usize], ops: &[usize]) -> Result<Vec<(usize, usize)>> {
    if clients.is_empty() {
        bail!("--clients needs at least one client count");
    }
    if !(ops.is_empty() || ops.len() == 1 || ops.len() == clients.len()) {
        bail!(
            "--ops takes one value, or one per --clients entry ({} given for {} client counts)",
            ops.len(),
            clients.len()
        );
    }
    clients
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            if c == 0 {
                bail!("client counts must be at least 1");
            }
            let n = match ops.len() {
                0 => default_ops(c),
                1 => ops[0],
                _ => ops[i],
            };
            if n < c {
                bail!("{n} operations cannot be split over {c} clients");
            }
            Ok((c, n / c))
        })
        .collect()
}

/// One phase of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Exclusive creates.
    Create,
    /// Attribute reads of random own files.
    Stat,
    /// Renames within a directory.
    Rename,
    /// Unlinks of the renamed files.
    Unlink,
}

impl Phase {
    /// The phases in the order they run.
    pub const ALL: [Phase; 4] = [Phase::Create, Phase::Stat, Phase::Rename, Phase::Unlink];

    /// Returns the phase's name.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Create => "create",
            Phase::Stat => "stat",
            Phase::Rename => "rename",
            Phase::Unlink => "unlink",
        }
    }

    /// Returns whether the phase changes the namespace (a Raft entry per
    /// operation on Cairn).
    pub fn mutates(self) -> bool {
        self != Phase::Stat
    }
}

/// The system a set of phases ran on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SystemKind {
    /// The 3-replica meta cluster.
    Cairn,
    /// Local file system, plain syscalls.
    Local,
    /// Local file system, every mutation fsynced.
    LocalFsync,
}

impl SystemKind {
    /// Returns the label used in tables.
    pub fn label(self) -> &'static str {
        match self {
            SystemKind::Cairn => "cairn",
            SystemKind::Local => "local",
            SystemKind::LocalFsync => "local+fsync",
        }
    }

    /// Returns what the system is, in one line.
    pub fn description(self) -> &'static str {
        match self {
            SystemKind::Cairn => {
                "3-replica cairn-meta cluster; a mutation is acknowledged once a majority flushed its Raft log"
            }
            SystemKind::Local => "std::fs, no fsync (page-cache ceiling)",
            SystemKind::LocalFsync => {
                "std::fs; create fsyncs file + directory, rename and unlink fsync the directory"
            }
        }
    }
}

/// Raft counters of one replica over one phase.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaDelta {
    /// The replica's node id.
    pub node_id: u64,
    /// Its address.
    pub addr: String,
    /// Whether it was the leader, in the same term, before and after.
    pub leader: bool,
    /// Log entries it appended during the phase.
    pub entries_appended: u64,
    /// Log fsyncs it did during the phase.
    pub flushes: u64,
}

/// Raft counters over one phase; the leader's fields are `None` when no
/// replica was the leader in one term throughout.
#[derive(Debug, Clone, Serialize)]
pub struct RaftDelta {
    /// The leader's node id.
    pub leader_node: Option<u64>,
    /// Log entries the leader appended.
    pub entries_appended: Option<u64>,
    /// Log fsyncs the leader did.
    pub flushes: Option<u64>,
    /// The group-commit factor: `entries_appended / flushes`.
    pub entries_per_flush: Option<f64>,
    /// The phase's operations per leader log fsync. Equal to
    /// `entries_per_flush` while every operation is one log entry (plus the
    /// few background entries, such as session renewals); it stays
    /// meaningful if meta ever packs several operations into one entry.
    pub ops_per_flush: Option<f64>,
    /// Every replica that answered before and after.
    pub replicas: Vec<ReplicaDelta>,
}

/// The figures of one phase on one system.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    /// Which phase.
    pub phase: Phase,
    /// Operations done (all clients).
    pub ops: usize,
    /// Wall time from the phase's start to its last operation's end.
    pub seconds: f64,
    /// `ops / seconds`.
    pub ops_per_sec: f64,
    /// Per-operation latency.
    pub latency: LatencySummary,
    /// Raft counters (Cairn only).
    pub raft: Option<RaftDelta>,
}

impl PhaseResult {
    /// Returns the result of `phase` from its samples and wall time.
    pub fn new(
        phase: Phase,
        samples: &Samples,
        elapsed: Duration,
        mut raft: Option<RaftDelta>,
    ) -> Self {
        let seconds = elapsed.as_secs_f64();
        if let Some(d) = raft.as_mut() {
            d.ops_per_flush = d
                .flushes
                .filter(|&f| f > 0)
                .map(|f| samples.len() as f64 / f as f64);
        }
        Self {
            phase,
            ops: samples.len(),
            seconds,
            ops_per_sec: if seconds > 0.0 {
                samples.len() as f64 / seconds
            } else {
                0.0
            },
            latency: samples.summary(),
            raft,
        }
    }
}

/// All phases on one system.
#[derive(Debug, Clone, Serialize)]
pub struct SystemResult {
    /// Which system.
    pub system: SystemKind,
    /// What it is, in words.
    pub description: &'static str,
    /// Its phases, in run order.
    pub phases: Vec<PhaseResult>,
}

impl SystemResult {
    /// Returns the result of `system`.
    pub fn new(system: SystemKind, phases: Vec<PhaseResult>) -> Self {
        Self {
            system,
            description: system.description(),
            phases,
        }
    }

    /// Returns the result of `phase`, if it ran.
    pub fn phase(&self, phase: Phase) -> Option<&PhaseResult> {
        self.phases.iter().find(|p| p.phase == phase)
    }
}

/// Cairn's throughput relative to the baselines in one phase.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// Which phase.
    pub phase: Phase,
    /// Cairn ops/s ÷ local ops/s.
    pub cairn_over_local: Option<f64>,
    /// Cairn ops/s ÷ local+fsync ops/s.
    pub cairn_over_local_fsync: Option<f64>,
}

/// Everything measured at one client count.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// Concurrent clients.
    pub clients: usize,
    /// Operations per phase, all clients together.
    pub ops_per_phase: usize,
    /// Operations per phase per client.
    pub ops_per_client: usize,
    /// Cairn, local, local+fsync.
    pub systems: Vec<SystemResult>,
    /// Cairn over each baseline, per phase.
    pub ratios: Vec<Ratio>,
    /// How many creates shared one Raft log fsync of the meta leader (the
    /// create phase's `raft.ops_per_flush`).
    pub create_ops_per_fsync: Option<f64>,
    /// The leader's log entries per log fsync in the create phase (its
    /// `raft.entries_per_flush`).
    pub create_entries_per_fsync: Option<f64>,
    /// Peak resident memory of every process after this run.
    pub peak_rss_after: Vec<ProcessRss>,
    /// Seconds the whole run (all systems) took.
    pub seconds: f64,
}

impl RunResult {
    /// Returns the result of `system`, if it ran.
    pub fn system(&self, system: SystemKind) -> Option<&SystemResult> {
        self.systems.iter().find(|s| s.system == system)
    }
}

/// The target, checked against the single-client create phase.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What the target is.
    pub what: &'static str,
    /// The rate to reach.
    pub min_ops_per_sec: f64,
    /// Cairn's single-client create rate, if a 1-client run was made.
    pub measured_ops_per_sec: Option<f64>,
    /// Whether the measured rate reaches the target.
    pub met: Option<bool>,
}

/// The single-client create rate the issue sets as the target.
pub const TARGET_SINGLE_CLIENT_CREATES: f64 = 6_000.0;

/// Where the run's data lived.
#[derive(Debug, Clone, Serialize)]
pub struct DataLocation {
    /// The run's directory (removed afterwards unless --keep-data).
    pub dir: PathBuf,
    /// The file system it is on.
    pub fs: Option<FsInfo>,
    /// Whether the directory was kept.
    pub kept: bool,
}

impl DataLocation {
    /// One line for a table: the directory and its file system.
    pub fn describe(&self) -> String {
        let fs = self.fs.as_ref().map_or_else(
            || "unknown file system".to_string(),
            |f| {
                format!(
                    "{} on {} (mounted at {})",
                    f.fs_type, f.device, f.mount_point
                )
            },
        );
        format!("{} — {fs}", self.dir.display())
    }
}

/// The whole report of `cairn-bench meta`, as written to --json.
#[derive(Debug, Clone, Serialize)]
pub struct MetaReport {
    /// Always `"meta"`.
    pub workload: &'static str,
    /// The command line, one argument per element.
    pub command_line: Vec<String>,
    /// Unix time the run started, in seconds.
    pub started_unix: u64,
    /// Seconds the whole benchmark took, cluster start and stop included.
    pub seconds: f64,
    /// The machine.
    pub machine: Machine,
    /// `release` or `debug` (the benchmark binary's build).
    pub bench_build: &'static str,
    /// The cairn-meta binary that ran.
    pub meta_binary: PathBuf,
    /// Meta replicas started.
    pub replicas: usize,
    /// Stand-in targets registered (`--targets`).
    pub standin_targets: usize,
    /// Where the data lived.
    pub data: DataLocation,
    /// One entry per client count.
    pub runs: Vec<RunResult>,
    /// Peak resident memory of every process started, and of the benchmark,
    /// read just before the cluster was stopped.
    pub peak_rss: Vec<ProcessRss>,
    /// The single-client create target.
    pub target: Target,
    /// Things a reader should know about this run (warnings).
    pub notes: Vec<String>,
}

/// A small deterministic generator (SplitMix64) for the stat phase's picks:
/// reproducible for a seed, and `Send` unlike a thread-local RNG.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// Returns a generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Returns the next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Returns a number in `0..n` (`n` > 0; the modulo bias is negligible
    /// for the few thousand files of a client).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Puts `v` in a random order (Fisher–Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// Name of the `i`-th file a client creates.
pub fn file_name(i: usize) -> String {
    format!("f{i:07}")
}

/// Name the `i`-th file is renamed to.
pub fn renamed_name(i: usize) -> String {
    format!("r{i:07}")
}

/// Prints one finished phase to stderr, so a long run shows progress.
fn progress(clients: usize, system: SystemKind, r: &PhaseResult) {
    let gc = r
        .raft
        .as_ref()
        .and_then(|d| d.ops_per_flush.zip(d.entries_per_flush))
        .filter(|_| r.phase.mutates())
        .map(|(o, e)| format!(", {o:.1} ops/fsync, {e:.1} entries/fsync"))
        .unwrap_or_default();
    eprintln!(
        "  C={clients:<3} {:<12} {:<7} {:>7} ops in {:>6.2} s = {:>10.1} ops/s{gc}",
        system.label(),
        r.phase.name(),
        r.ops,
        r.seconds,
        r.ops_per_sec
    );
}

/// Returns Cairn's ratios over both baselines, per phase.
fn ratios(systems: &[SystemResult]) -> Vec<Ratio> {
    let rate = |kind: SystemKind, phase: Phase| {
        systems
            .iter()
            .find(|s| s.system == kind)
            .and_then(|s| s.phase(phase))
            .map(|p| p.ops_per_sec)
    };
    let over = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    Phase::ALL
        .iter()
        .map(|&phase| {
            let cairn = rate(SystemKind::Cairn, phase);
            Ratio {
                phase,
                cairn_over_local: over(cairn, rate(SystemKind::Local, phase)),
                cairn_over_local_fsync: over(cairn, rate(SystemKind::LocalFsync, phase)),
            }
        })
        .collect()
}

/// Returns the peak resident memory of the cluster's processes and of this
/// benchmark.
fn peak_rss(cluster: &Cluster) -> Vec<ProcessRss> {
    let mut out: Vec<ProcessRss> = cluster
        .processes()
        .into_iter()
        .map(|(name, pid)| ProcessRss::read(name, pid))
        .collect();
    out.push(ProcessRss::read(
        "cairn-bench (this process)".to_string(),
        std::process::id(),
    ));
    out
}

/// Registers `targets` stand-in targets with `cluster` and measures what
/// their heartbeats cost the idle meta replicas; returns the stand-ins
/// (heartbeating until dropped) and that figure as a note.
async fn register_standins(
    cluster: &Cluster,
    targets: usize,
) -> Result<(standins::Standins, String)> {
    let s = standins::register(&cluster.addrs(), targets)
        .await
        .context("registering the stand-in chunkservers")?;
    eprintln!(
        "meta: {} stand-in targets on {} chunkservers registered: chain tables of a cluster that size",
        s.targets, s.servers
    );
    // Let the registrations settle, then measure a quiet stretch.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pids: Vec<(String, u32)> = cluster.processes();
    let cpu = |pids: &[(String, u32)]| -> Vec<f64> {
        pids.iter()
            .map(|(_, pid)| crate::watch::cpu_seconds(*pid).unwrap_or(0.0))
            .collect()
    };
    let window = Duration::from_secs(5);
    let before = cpu(&pids);
    tokio::time::sleep(window).await;
    let after = cpu(&pids);
    let cores: Vec<String> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| format!("{:.3}", (a - b) / window.as_secs_f64()))
        .collect();
    let note = format!(
        "{} stand-in chunkservers ({} targets) heartbeating, no client: the meta replicas used {} cores",
        s.servers,
        s.targets,
        cores.join(" / ")
    );
    eprintln!("meta: {note}");
    Ok((s, note))
}

/// Runs every client count against a started cluster.
async fn run_all(
    cluster: &Cluster,
    plan: &[(usize, usize)],
    local_root: &Path,
    seed: u64,
) -> Result<Vec<RunResult>> {
    let addrs = cluster.addrs();
    let admin = MetaClient::connect(&addrs, MetaClientOptions::default())
        .await
        .context("connecting to the meta cluster")?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let volume = admin
        .create_volume(
            &format!("bench-{stamp}-{}", std::process::id()),
            VolumePolicy {
                replication: 3,
                chunk_size: 64 << 20,
                stripe_width: 8,
                ..VolumePolicy::default()
            },
        )
        .await
        .context("creating the benchmark volume")?;
    let mut runs = Vec::with_capacity(plan.len());
    for (i, &(clients, per_client)) in plan.iter().enumerate() {
        let start = Instant::now();
        eprintln!(
            "meta: {clients} client(s), {} operations per phase",
            clients * per_client
        );
        let cairn = cairn::run(
            &admin,
            &addrs,
            InodeId(volume.root_ino),
            &format!("run-{i}-c{clients}"),
            clients,
            per_client,
            seed,
        )
        .await?;
        let mut systems = vec![cairn];
        for durability in [local::Durability::PageCache, local::Durability::Fsync] {
            let root = local_root.join(format!("run-{i}-c{clients}-{durability:?}"));
            let r = tokio::task::spawn_blocking(move || {
                local::run(&root, clients, per_client, durability, seed)
            })
            .await
            .context("the local baseline task failed")??;
            systems.push(r);
        }
        let create_raft = systems[0]
            .phase(Phase::Create)
            .and_then(|p| p.raft.as_ref());
        let create_ops_per_fsync = create_raft.and_then(|d| d.ops_per_flush);
        let create_entries_per_fsync = create_raft.and_then(|d| d.entries_per_flush);
        runs.push(RunResult {
            clients,
            ops_per_phase: clients * per_client,
            ops_per_client: per_client,
            ratios: ratios(&systems),
            create_ops_per_fsync,
            create_entries_per_fsync,
            systems,
            peak_rss_after: peak_rss(cluster),
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    if let Err(e) = admin.close().await {
        eprintln!("warning: closing the admin session: {e}");
    }
    Ok(runs)
}

/// Runs the `meta` workload and returns its report. Starts the cluster and
/// stops it again, also when the run fails or is interrupted (Ctrl-C).
///
/// # Errors
/// A bad plan, a missing binary, a cluster that does not start, or a failed
/// operation.
pub async fn run(args: &MetaArgs, command_line: Vec<String>) -> Result<MetaReport> {
    let started = Instant::now();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let plan = plan(&args.clients, &args.ops)?;
    if (1..3).contains(&args.targets) {
        bail!(
            "--targets {} is too few: a 3-replica chain table needs targets on 3 chunkservers",
            args.targets
        );
    }
    let bin_dir = args.common.bin_dir()?;
    let meta_binary = bin_dir.join("cairn-meta");
    if !meta_binary.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p cairn-meta`, or point \
             --bin-dir / CAIRN_BIN_DIR at the directory that holds it",
            meta_binary.display()
        );
    }
    let work = args.common.work_dir("cairn-bench-meta-")?;
    let fs = machine::fs_of(work.path());
    let mut notes = Vec::new();
    if build_profile() == "debug" {
        notes.push("cairn-bench is a debug build: client-side figures are pessimistic".into());
    }
    if let Some(f) = fs.as_ref().filter(|f| f.fs_type == "tmpfs") {
        notes.push(format!(
            "the data directory is on tmpfs ({}): fsync costs nothing there, so neither \
             Cairn's durability nor the local+fsync baseline is measured; pass --data-dir on a disk",
            f.mount_point
        ));
    }
    for n in &notes {
        eprintln!("warning: {n}");
    }

    const REPLICAS: usize = 3;
    eprintln!(
        "meta: starting {REPLICAS} cairn-meta replicas from {}",
        bin_dir.display()
    );
    let cluster = Cluster::start(ClusterOptions {
        replicas: REPLICAS,
        data_dir: work.path().join("cluster"),
        bin_dir: bin_dir.clone(),
    })
    .await
    .context("starting the meta cluster")?;

    let local_root = work.path().join("local");
    let outcome = tokio::select! {
        r = async {
            // Dropped (heartbeats stop) when the phases are done.
            let _standins = if args.targets > 0 {
                let s = register_standins(&cluster, args.targets).await?;
                notes.push(s.1);
                Some(s.0)
            } else {
                None
            };
            run_all(&cluster, &plan, &local_root, args.seed).await
        } => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    // Read before stopping: VmHWM is gone with the process.
    let peak_rss = peak_rss(&cluster);
    cluster.stop().await;
    let runs = outcome?;

    let measured = runs
        .iter()
        .find(|r| r.clients == 1)
        .and_then(|r| r.system(SystemKind::Cairn))
        .and_then(|s| s.phase(Phase::Create))
        .map(|p| p.ops_per_sec);
    let data = DataLocation {
        dir: work.path().to_path_buf(),
        fs,
        kept: args.common.keep_data,
    };
    args.common.finish_work_dir(work)?;
    Ok(MetaReport {
        workload: "meta",
        command_line,
        started_unix,
        seconds: started.elapsed().as_secs_f64(),
        machine: machine::describe(),
        bench_build: build_profile(),
        meta_binary,
        replicas: REPLICAS,
        standin_targets: args.targets,
        data,
        runs,
        peak_rss,
        target: Target {
            what: "single-client creates per second, every acknowledged create fsync-durable on a majority",
            min_ops_per_sec: TARGET_SINGLE_CLIENT_CREATES,
            measured_ops_per_sec: measured,
            met: measured.map(|m| m >= TARGET_SINGLE_CLIENT_CREATES),
        },
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_defaults_and_explicit_ops() {
        assert_eq!(plan(&[1, 32], &[]).unwrap(), vec![(1, 5_000), (32, 625)]);
        assert_eq!(plan(&[1, 4], &[100]).unwrap(), vec![(1, 100), (4, 25)]);
        assert_eq!(plan(&[1, 3], &[10, 10]).unwrap(), vec![(1, 10), (3, 3)]);
        assert!(plan(&[], &[]).is_err());
        assert!(plan(&[0], &[]).is_err());
        assert!(plan(&[1, 2, 3], &[1, 2]).is_err());
        assert!(plan(&[32], &[10]).is_err());
    }

    #[test]
    fn splitmix_is_deterministic_and_in_range() {
        let mut a = SplitMix::new(7);
        let mut b = SplitMix::new(7);
        for _ in 0..1000 {
            let x = a.below(13);
            assert_eq!(x, b.below(13));
            assert!(x < 13);
        }
        assert_eq!(SplitMix::new(1).below(1), 0);
        let mut order: Vec<usize> = (0..100).collect();
        SplitMix::new(3).shuffle(&mut order);
        assert_ne!(order, (0..100).collect::<Vec<_>>());
        order.sort_unstable();
        assert_eq!(order, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn ratios_divide_cairn_by_each_baseline() {
        let phase = |ops_per_sec| PhaseResult {
            phase: Phase::Create,
            ops: 1,
            seconds: 1.0,
            ops_per_sec,
            latency: LatencySummary::default(),
            raft: None,
        };
        let systems = vec![
            SystemResult::new(SystemKind::Cairn, vec![phase(1_000.0)]),
            SystemResult::new(SystemKind::Local, vec![phase(100_000.0)]),
            SystemResult::new(SystemKind::LocalFsync, vec![phase(2_000.0)]),
        ];
        let r = ratios(&systems);
        assert_eq!(r[0].cairn_over_local, Some(0.01));
        assert_eq!(r[0].cairn_over_local_fsync, Some(0.5));
        assert_eq!(r[1].cairn_over_local, None);
    }
}
