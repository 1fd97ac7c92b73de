//! The `chunk` workload: the chunkserver data path (real
//! `cairn-chunkserver` processes on loopback, driven by Cairn's
//! data-plane client) beside raw-disk and raw-network baselines measured
//! in the same run, on the same disk.
//!
//! | phase | Cairn ([`cairn`]) | baselines ([`raw`], [`pingpong`]) | goal |
//! |---|---|---|---|
//! | read 4K | 4 KiB random reads, queue depth 1, 1-replica chain | `O_DIRECT` pread of the same offsets; TCP ping-pong of the same sizes | cairn p50 ÷ (pread p50 + ping-pong p50) ≤ 1.3 |
//! | write 1M | 1 MiB writes, `depth` in flight, 1-replica chain | `O_DIRECT` writes, fdatasync after each (and, for reference, once at the end) | cairn ÷ raw+fdatasync ≥ 0.9 |
//! | read 1M | the same data read back | `O_DIRECT` reads | cairn ÷ raw ≥ 0.9 |
//! | write 1M ×3 | 1 MiB writes, 3-replica chain, all replicas on this disk | raw+fdatasync ÷ 3 | cairn ÷ baseline ≥ 0.8 |
//!
//! The per-write-durable baseline is the like-for-like one: a chunkserver
//! acknowledges a write only after its data file's `fdatasync` and its
//! metadata flush (DESIGN §5), so comparing with writes synced once at the
//! end would charge Cairn for a durability the baseline does not give.
//! Both sides do the same I/O in the same order ([`layout`]), and neither
//! goes through the page cache (`O_DIRECT` on both).
//!
//! Systems run one after the other, never concurrently, so they do not
//! compete for the two cores of a small machine; the idle servers still
//! heartbeat while the baselines run. Beside the figures: each
//! chunkserver's own handling time per request (from its metrics, to tell
//! server time from network and client time) and the CPU each process
//! used during Cairn's part of a phase (to tell a server that computes
//! from one that waits on the disk), the peak resident memory of every
//! process ([`servers`]), the machine and the command line.

pub mod cairn;
pub mod layout;
pub mod pingpong;
pub mod raw;
pub mod servers;
mod table;
pub mod tail;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use cairn_proto::ids::ObjectId;
use cairn_proto::units::parse_size;
use clap::Args;
use serde::Serialize;

use self::cairn::ChainClient;
use self::layout::{BLOCK, IO_SIZE, Layout, random_blocks};
use self::servers::{CHUNKSERVERS, ChainRoute, OpTimes, Routes, Servers};
use self::tail::{TailSamples, TailSummary};
use crate::machine::{self, Machine};
use crate::meta::DataLocation;
use crate::{CommonArgs, ProcessRss, build_profile};

pub use table::print_table;

/// Help text of `cairn-bench chunk --help`.
pub const LONG_ABOUT: &str = "\
Chunkserver data-path performance beside raw-disk and raw-network baselines
measured in the same run, on the same disk.

Starts one cairn-meta replica and 3 cairn-chunkserver processes (one shard each)
on 127.0.0.1, with their data in --data-dir (release binaries from --bin-dir),
then runs four phases through Cairn's data-plane client, each followed by its
baselines:

  read 4K      4 KiB reads at random 4 KiB-aligned offsets of a --read-set data
               set (written first), one at a time (queue depth 1), from a
               1-replica chain on one chunkserver. Every reply is checked
               against its CRCs, as a client does. Figures: latency p50, p99
               and p99.9 in µs. Baselines:
                 pread          the same offsets of a file of the same size on
                                the same disk, pread with O_DIRECT (no page
                                cache; the chunkserver's data file is O_DIRECT)
                 tcp ping-pong  a bare loopback TCP round trip of the same
                                sizes (128-byte request; 4 KiB, header and CRC
                                back), TCP_NODELAY, no storage, tokio client
               ratio = cairn p50 ÷ (pread p50 + ping-pong p50): what the
               chunkserver and the protocol add to one disk read plus one
               network round trip. Goal: at most 1.3.
  write 1M     --bytes in 1 MiB writes to the 1-replica chain, --depth in
               flight, each on its own chunk (a chain orders the writes of one
               chunk; chunks are 64 MiB). Figures: MiB/s, per-write latency.
               Baselines, the same pieces by --depth threads, O_DIRECT writes
               to a preallocated file on the same disk:
                 raw+fdatasync  fdatasync after every write, before the
                                thread's next one. The like-for-like one, used
                                for the ratio: Cairn acknowledges a write only
                                once its data and its metadata are synced.
                 raw, 1 sync    one fdatasync after the last write: the disk's
                                streaming ceiling, for reference.
               ratio = cairn MiB/s ÷ raw+fdatasync MiB/s. Goal: at least 0.9.
  read 1M      the data just written, read back in 1 MiB reads the same way.
               Baseline raw: the raw file read back with O_DIRECT.
               ratio = cairn MiB/s ÷ raw MiB/s. Goal: at least 0.9.
  write 1M ×3  --bytes in 1 MiB writes to a 3-replica chain (head → middle →
               tail, one replica per chunkserver, all three on this disk), same
               depth; a write is acknowledged once every replica synced it.
               Baseline: raw+fdatasync of the write phase with its MiB/s
               divided by 3, since the disk takes every byte three times.
               ratio = cairn MiB/s ÷ (raw+fdatasync MiB/s ÷ 3). Goal: at least
               0.8.

Also reported: each chunkserver's own handling time per request (the mean of
its request_duration_seconds metric; the rest of a client's latency is the
network, queues and the client), the CPU the chain's chunkservers and the
benchmark (the client) used during Cairn's part of each phase, in cores kept
busy (a one-shard chunkserver near 1.0 is bound by its shard thread, not by
the disk), the peak resident memory (VmHWM) of
cairn-meta, of each chunkserver and of the benchmark, the machine and the
command line. Compare ratios across runs and machines, not absolute rates.

Defaults (1 GiB per throughput phase, 4 in flight, 50,000 random reads over
256 MiB) take about half a minute on a 2-core machine and need about 5 GiB
of free space in --data-dir.";

/// Arguments of `cairn-bench chunk`.
#[derive(Debug, Clone, Args)]
pub struct ChunkArgs {
    /// Bytes each throughput phase writes or reads, per system (a multiple
    /// of 1 MiB, e.g. 1GiB, 256MiB).
    #[arg(long, value_parser = parse_size, default_value = "1GiB", value_name = "SIZE")]
    pub bytes: u64,
    /// 1 MiB operations in flight in the throughput phases: each on its own
    /// chunk on Cairn, each its own thread on the raw disk.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub depth: usize,
    /// Size of the data set the random reads pick from (a multiple of
    /// 1 MiB); written to Cairn and to a raw file first.
    #[arg(long, value_parser = parse_size, default_value = "256MiB", value_name = "SIZE")]
    pub read_set: u64,
    /// Random 4 KiB reads recorded per system, after 200 unrecorded
    /// warm-up reads.
    #[arg(long, default_value_t = 50_000, value_name = "N")]
    pub reads: usize,
    /// Seed of the random offsets and of the bytes written.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Options shared by every workload.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Unrecorded reads before each system's random reads (connections, caches
/// of file extents and block maps).
pub const WARMUP_READS: usize = 200;

/// The data set of the random reads, on the 1-replica chain.
const OBJECT_READ_SET: ObjectId = ObjectId(1);
/// The data set of the sequential phases, on the 1-replica chain.
const OBJECT_SEQUENTIAL: ObjectId = ObjectId(2);
/// The data set of the replicated writes. Distinct from the others: the
/// first chunkserver stores chunks of both chains in one store.
const OBJECT_REPLICATED: ObjectId = ObjectId(3);

/// What one system did in one phase: operations, bytes, wall time and
/// every operation's latency.
#[derive(Debug)]
pub struct Measured {
    /// Operations recorded.
    pub ops: usize,
    /// Payload bytes they moved.
    pub bytes: u64,
    /// Wall time from the first recorded operation's start to the last
    /// one's end (a final sync included).
    pub elapsed: Duration,
    /// Every recorded operation's latency.
    pub samples: TailSamples,
    /// Requests retried after a retryable error reply (Cairn only).
    pub retries: u64,
}

/// One phase of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// 4 KiB random reads at queue depth 1.
    RandomRead,
    /// 1 MiB sequential writes, 1-replica chain.
    SeqWrite,
    /// 1 MiB sequential reads of what was written.
    SeqRead,
    /// 1 MiB sequential writes, 3-replica chain.
    ReplicatedWrite,
}

impl Phase {
    /// The phases in the order they run.
    pub const ALL: [Phase; 4] = [
        Phase::RandomRead,
        Phase::SeqWrite,
        Phase::SeqRead,
        Phase::ReplicatedWrite,
    ];

    /// Returns the phase's name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Phase::RandomRead => "read 4K",
            Phase::SeqWrite => "write 1M",
            Phase::SeqRead => "read 1M",
            Phase::ReplicatedWrite => "write 1M ×3",
        }
    }
}

/// A system measured in a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// Cairn, 1-replica chain.
    Cairn,
    /// Cairn, 3-replica chain.
    CairnReplicated,
    /// `O_DIRECT` 4 KiB preads.
    Pread,
    /// Loopback TCP round trips.
    TcpPingPong,
    /// `O_DIRECT` writes, fdatasync after each.
    RawFdatasync,
    /// `O_DIRECT` writes, one fdatasync at the end.
    RawOneSync,
    /// `O_DIRECT` reads.
    RawRead,
    /// [`System::RawFdatasync`]'s throughput divided by 3 (derived).
    RawFdatasyncThird,
}

impl System {
    /// Returns the label used in tables.
    pub fn label(self) -> &'static str {
        match self {
            System::Cairn => "cairn",
            System::CairnReplicated => "cairn ×3",
            System::Pread => "pread",
            System::TcpPingPong => "tcp ping-pong",
            System::RawFdatasync => "raw+fdatasync",
            System::RawOneSync => "raw, 1 sync",
            System::RawRead => "raw",
            System::RawFdatasyncThird => "raw+fdatasync ÷ 3",
        }
    }

    /// Returns what the system is, in one line.
    pub fn description(self) -> &'static str {
        match self {
            System::Cairn => {
                "cairn-chunkserver, 1-replica chain; a write is acknowledged after data fdatasync + metadata flush; reads CRC-checked"
            }
            System::CairnReplicated => {
                "3-replica chain, one replica per chunkserver, all on this disk; acknowledged once every replica synced"
            }
            System::Pread => "pread of 4 KiB with O_DIRECT, same offsets, file of the same size",
            System::TcpPingPong => {
                "loopback TCP round trip, 128 B out, 4 KiB + header + CRC back, TCP_NODELAY"
            }
            System::RawFdatasync => {
                "O_DIRECT pwrite to a preallocated file, fdatasync after every write (like-for-like)"
            }
            System::RawOneSync => "O_DIRECT pwrite, one fdatasync after the last write (ceiling)",
            System::RawRead => "O_DIRECT pread of the file written",
            System::RawFdatasyncThird => {
                "raw+fdatasync of the write phase, MiB/s divided by 3 (3 copies on one disk)"
            }
        }
    }
}

/// The figures of one system in one phase.
#[derive(Debug, Clone, Serialize)]
pub struct SystemResult {
    /// Which system.
    pub system: System,
    /// What it is, in words.
    pub description: &'static str,
    /// Operations recorded.
    pub ops: usize,
    /// Payload bytes moved.
    pub bytes: u64,
    /// Wall time of the recorded operations.
    pub seconds: f64,
    /// `ops / seconds`.
    pub ops_per_sec: f64,
    /// `bytes / seconds` in MiB/s.
    pub mib_per_sec: f64,
    /// Per-operation latency; `None` for a derived baseline.
    pub latency: Option<TailSummary>,
    /// Cairn's MiB/s ÷ this system's (throughput phases, baselines only).
    pub cairn_over_this: Option<f64>,
    /// Whether the figures are computed from another system's rather than
    /// measured.
    pub derived: bool,
    /// Requests Cairn retried after a retryable error reply (normally 0).
    pub retries: u64,
}

impl SystemResult {
    /// Returns the result of `system` from what it measured.
    pub fn new(system: System, m: &Measured) -> Self {
        let seconds = m.elapsed.as_secs_f64();
        let per_sec = |x: f64| if seconds > 0.0 { x / seconds } else { 0.0 };
        Self {
            system,
            description: system.description(),
            ops: m.ops,
            bytes: m.bytes,
            seconds,
            ops_per_sec: per_sec(m.ops as f64),
            mib_per_sec: per_sec(m.bytes as f64 / f64::from(1 << 20)),
            latency: Some(m.samples.summary()),
            cairn_over_this: None,
            derived: false,
            retries: m.retries,
        }
    }

    /// Returns the 3-replica baseline derived from `raw`: a third of its
    /// rates (three copies of every byte go to the one disk).
    pub fn third_of(raw: &SystemResult) -> Self {
        Self {
            system: System::RawFdatasyncThird,
            description: System::RawFdatasyncThird.description(),
            ops: raw.ops,
            bytes: raw.bytes,
            seconds: raw.seconds * 3.0,
            ops_per_sec: raw.ops_per_sec / 3.0,
            mib_per_sec: raw.mib_per_sec / 3.0,
            latency: None,
            cairn_over_this: None,
            derived: true,
            retries: 0,
        }
    }
}

/// A chunkserver's own handling time for one opcode over one phase.
#[derive(Debug, Clone, Serialize)]
pub struct ServerTime {
    /// The chunkserver (`cs1`, …).
    pub chunkserver: String,
    /// Its place in the chain: `only`, `head`, `middle` or `tail`.
    pub role: &'static str,
    /// The opcode (`read`, `write`, `forward`, …).
    pub op: String,
    /// Requests of that opcode it handled during the phase.
    pub requests: u64,
    /// Their mean handling time (from decoded request to reply queued), µs.
    pub mean_us: f64,
}

/// The CPU one process used during Cairn's part of a phase.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessCpu {
    /// The process (`cs1`, `cairn-bench`).
    pub process: String,
    /// CPU seconds it used (all threads; 10 ms resolution).
    pub cpu_seconds: f64,
    /// Wall seconds of the measurement.
    pub wall_seconds: f64,
    /// `cpu_seconds / wall_seconds`: how many cores it kept busy on
    /// average (the shard of a one-shard chunkserver is one thread).
    pub cores: f64,
}

/// Everything measured in one phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    /// Which phase.
    pub phase: Phase,
    /// What ran, in words.
    pub what: String,
    /// Cairn first, then the baselines.
    pub systems: Vec<SystemResult>,
    /// The phase's goal ratio (see [`Goal`]).
    pub ratio: Option<f64>,
    /// How the ratio is computed.
    pub ratio_of: &'static str,
    /// The chain's chunkservers' handling times during Cairn's part (empty
    /// when their metrics could not be read).
    pub server_time: Vec<ServerTime>,
    /// CPU used by the chain's chunkservers and by the benchmark (the
    /// client) during Cairn's part, warm-up reads included.
    pub cpu: Vec<ProcessCpu>,
}

impl PhaseResult {
    /// Returns the result of `system`, if it ran.
    pub fn system(&self, system: System) -> Option<&SystemResult> {
        self.systems.iter().find(|s| s.system == system)
    }
}

/// One goal of the issue, checked against a phase's ratio.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    /// The phase.
    pub phase: Phase,
    /// The goal in words.
    pub what: &'static str,
    /// The measured ratio.
    pub ratio: Option<f64>,
    /// The bound it must meet.
    pub bound: f64,
    /// Whether the ratio must be at most (`true`) or at least the bound.
    pub at_most: bool,
    /// Whether it is met; `None` when the ratio could not be computed.
    pub met: Option<bool>,
}

impl Goal {
    fn new(
        phase: Phase,
        what: &'static str,
        ratio: Option<f64>,
        bound: f64,
        at_most: bool,
    ) -> Self {
        Self {
            phase,
            what,
            ratio,
            bound,
            at_most,
            met: ratio.map(|r| if at_most { r <= bound } else { r >= bound }),
        }
    }
}

/// The sizes a run used.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Bytes per throughput phase and system.
    pub bytes: u64,
    /// Operations in flight in the throughput phases.
    pub depth: usize,
    /// Bytes of the random reads' data set.
    pub read_set_bytes: u64,
    /// Random reads recorded per system.
    pub reads: usize,
    /// Unrecorded warm-up reads per system before them.
    pub warmup_reads: usize,
    /// Bytes of one random read.
    pub read_size: u64,
    /// Bytes of one sequential operation.
    pub io_size: u64,
    /// Seed of the offsets and of the bytes.
    pub seed: u64,
    /// How the throughput phases' data set is cut.
    pub sequential: Layout,
    /// How the random reads' data set is cut (and was written).
    pub read_set: Layout,
}

/// The chains the run used.
#[derive(Debug, Clone, Serialize)]
pub struct Chains {
    /// The 1-replica chain (read 4K, write 1M, read 1M).
    pub single: ChainRoute,
    /// The 3-replica chain (write 1M ×3).
    pub replicated: ChainRoute,
    /// The chain-table version they were read from.
    pub table_version: u64,
}

/// The whole report of `cairn-bench chunk`, as written to --json.
#[derive(Debug, Clone, Serialize)]
pub struct ChunkReport {
    /// Always `"chunk"`.
    pub workload: &'static str,
    /// The command line, one argument per element.
    pub command_line: Vec<String>,
    /// Unix time the run started, in seconds.
    pub started_unix: u64,
    /// Seconds the whole benchmark took, server start and stop included.
    pub seconds: f64,
    /// The machine.
    pub machine: Machine,
    /// `release` or `debug` (the benchmark binary's build).
    pub bench_build: &'static str,
    /// The cairn-meta binary that ran.
    pub meta_binary: PathBuf,
    /// The cairn-chunkserver binary that ran.
    pub chunkserver_binary: PathBuf,
    /// Chunkservers started (one shard each).
    pub chunkservers: usize,
    /// The chains used.
    pub chains: Option<Chains>,
    /// The sizes used.
    pub settings: Settings,
    /// Where the data lived.
    pub data: DataLocation,
    /// Writing the random reads' data set to Cairn (not a phase; for
    /// information).
    pub read_set_write: Option<SystemResult>,
    /// The phases, in run order.
    pub phases: Vec<PhaseResult>,
    /// The goals.
    pub goals: Vec<Goal>,
    /// Peak resident memory of every process started, and of the
    /// benchmark, read just before the servers were stopped.
    pub peak_rss: Vec<ProcessRss>,
    /// Things a reader should know about this run (warnings).
    pub notes: Vec<String>,
}

impl ChunkReport {
    /// Returns the result of `phase`, if it ran.
    pub fn phase(&self, phase: Phase) -> Option<&PhaseResult> {
        self.phases.iter().find(|p| p.phase == phase)
    }
}

/// Returns `a / b` when both are known and `b` is positive.
fn over(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Fills in `cairn_over_this` of every baseline of a throughput phase and
/// returns the ratio over `goal_system`.
fn throughput_ratios(systems: &mut [SystemResult], goal_system: System) -> Option<f64> {
    let cairn = systems
        .iter()
        .find(|s| matches!(s.system, System::Cairn | System::CairnReplicated))
        .map(|s| s.mib_per_sec);
    for s in systems.iter_mut() {
        if !matches!(s.system, System::Cairn | System::CairnReplicated) {
            s.cairn_over_this = over(cairn, Some(s.mib_per_sec));
        }
    }
    systems
        .iter()
        .find(|s| s.system == goal_system)
        .and_then(|s| s.cairn_over_this)
}

/// Returns the random-read ratio: cairn p50 ÷ (pread p50 + ping-pong p50).
fn read_latency_ratio(systems: &[SystemResult]) -> Option<f64> {
    let p50 = |sys: System| {
        systems
            .iter()
            .find(|s| s.system == sys)
            .and_then(|s| s.latency)
            .map(|l| l.p50_us)
    };
    let floor = p50(System::Pread)
        .zip(p50(System::TcpPingPong))
        .map(|(a, b)| a + b);
    over(p50(System::Cairn), floor)
}

/// Returns the four goals from the phases.
fn goals(phases: &[PhaseResult]) -> Vec<Goal> {
    let ratio = |p: Phase| phases.iter().find(|r| r.phase == p).and_then(|r| r.ratio);
    vec![
        Goal::new(
            Phase::RandomRead,
            "4 KiB random read p50 at most 1.3 × (pread p50 + tcp ping-pong p50)",
            ratio(Phase::RandomRead),
            1.3,
            true,
        ),
        Goal::new(
            Phase::SeqWrite,
            "1 MiB write throughput at least 0.9 × raw+fdatasync",
            ratio(Phase::SeqWrite),
            0.9,
            false,
        ),
        Goal::new(
            Phase::SeqRead,
            "1 MiB read throughput at least 0.9 × raw O_DIRECT reads",
            ratio(Phase::SeqRead),
            0.9,
            false,
        ),
        Goal::new(
            Phase::ReplicatedWrite,
            "3-replica write throughput at least 0.8 × raw+fdatasync ÷ 3",
            ratio(Phase::ReplicatedWrite),
            0.8,
            false,
        ),
    ]
}

/// Prints one measured system to stderr, so a long run shows progress.
fn progress(phase: Phase, r: &SystemResult) {
    let lat = r.latency.unwrap_or_default();
    let retries = if r.retries > 0 {
        format!(", {} retries", r.retries)
    } else {
        String::new()
    };
    if phase == Phase::RandomRead {
        eprintln!(
            "  {:<11} {:<14} {:>7} ops in {:>6.2} s: p50 {:>7.1} µs, p99 {:>7.1} µs, p99.9 {:>7.1} µs{retries}",
            phase.name(),
            r.system.label(),
            r.ops,
            r.seconds,
            lat.p50_us,
            lat.p99_us,
            lat.p999_us,
        );
    } else {
        eprintln!(
            "  {:<11} {:<14} {:>5} MiB in {:>6.2} s = {:>7.1} MiB/s, p50 {:>7.0} µs, p99 {:>7.0} µs{retries}",
            phase.name(),
            r.system.label(),
            r.bytes >> 20,
            r.seconds,
            r.mib_per_sec,
            lat.p50_us,
            lat.p99_us,
        );
    }
}

/// Runs blocking baseline work on a blocking thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("a baseline thread failed")?
}

/// Reads the request counters of every member of `route`.
async fn scrape_route(servers: &Servers, route: &ChainRoute) -> Result<Vec<OpTimes>> {
    let mut out = Vec::with_capacity(route.members.len());
    for m in &route.members {
        let cs = &servers.chunkservers()[m.process];
        out.push(servers::scrape(cs.metrics_addr).await?);
    }
    Ok(out)
}

/// What the servers (and the client) did around one Cairn run: the chain
/// members' handling times and every involved process's CPU.
struct Around {
    server_time: Vec<ServerTime>,
    cpu: Vec<ProcessCpu>,
}

/// Measures [`Around`] one Cairn run on `route`; a failed metrics scrape
/// costs only the handling times (and adds a note).
struct ServerClock<'a> {
    servers: &'a Servers,
    route: &'a ChainRoute,
    before: Option<Vec<OpTimes>>,
    /// `(name, pid, CPU seconds at the start)` of the members and of this
    /// process.
    cpu_before: Vec<(String, u32, Option<f64>)>,
    started: Instant,
}

impl<'a> ServerClock<'a> {
    async fn start(servers: &'a Servers, route: &'a ChainRoute, notes: &mut Vec<String>) -> Self {
        let before = match scrape_route(servers, route).await {
            Ok(b) => Some(b),
            Err(e) => {
                notes.push(format!("chunkserver metrics unavailable: {e:#}"));
                None
            }
        };
        let mut procs: Vec<(String, u32)> = route
            .members
            .iter()
            .map(|m| (m.name.clone(), servers.chunkservers()[m.process].pid))
            .collect();
        procs.push(("cairn-bench".to_string(), std::process::id()));
        let cpu_before = procs
            .into_iter()
            .map(|(name, pid)| (name, pid, servers::cpu_seconds(pid)))
            .collect();
        Self {
            servers,
            route,
            before,
            cpu_before,
            started: Instant::now(),
        }
    }

    async fn stop(self, notes: &mut Vec<String>) -> Around {
        let wall = self.started.elapsed().as_secs_f64();
        let cpu = self
            .cpu_before
            .iter()
            .filter_map(|(name, pid, before)| {
                let used = servers::cpu_seconds(*pid)? - (*before)?;
                Some(ProcessCpu {
                    process: name.clone(),
                    cpu_seconds: used,
                    wall_seconds: wall,
                    cores: if wall > 0.0 { used / wall } else { 0.0 },
                })
            })
            .collect();
        let mut out = Around {
            server_time: Vec::new(),
            cpu,
        };
        let Some(before) = self.before else {
            return out;
        };
        let after = match scrape_route(self.servers, self.route).await {
            Ok(a) => a,
            Err(e) => {
                notes.push(format!("chunkserver metrics unavailable: {e:#}"));
                return out;
            }
        };
        let n = self.route.members.len();
        for (i, m) in self.route.members.iter().enumerate() {
            let role = match i {
                _ if n == 1 => "only",
                0 => "head",
                _ if i + 1 == n => "tail",
                _ => "middle",
            };
            for (op, requests, mean_s) in after[i].since(&before[i]) {
                out.server_time.push(ServerTime {
                    chunkserver: m.name.clone(),
                    role,
                    op,
                    requests,
                    mean_us: mean_s * 1e6,
                });
            }
        }
        out
    }
}

/// What [`run_all`] measured.
struct Outcome {
    routes: Option<Routes>,
    read_set_write: Option<SystemResult>,
    phases: Vec<PhaseResult>,
}

/// The sizes of a run, checked.
struct Plan {
    sequential: Layout,
    read_set: Layout,
    reads: usize,
    seed: u64,
}

/// Runs every phase against started servers; `dir` holds the raw files.
async fn run_all(
    servers: &Servers,
    plan: &Plan,
    dir: &Path,
    notes: &mut Vec<String>,
    out: &mut Outcome,
) -> Result<()> {
    let routes = servers.routes().await?;
    eprintln!(
        "chunk: 1-replica chain {} on {}; 3-replica chain {} ({})",
        routes.single.chain,
        routes.single.path(),
        routes.replicated.chain,
        routes.replicated.path()
    );
    out.routes = Some(routes.clone());
    // Any id unique to this run; never 0, which means "no client".
    let client_id = (u64::from(std::process::id()) << 16) | 1;
    let single = ChainClient::connect(&routes.single, client_id).await?;
    let replicated = ChainClient::connect(&routes.replicated, client_id).await?;
    let pattern = Bytes::from(layout::pattern(IO_SIZE as usize, plan.seed));

    // Phase 1: 4 KiB random reads at queue depth 1.
    let rs = plan.read_set;
    eprintln!(
        "chunk: writing the {} MiB read set to Cairn and to a raw file",
        rs.bytes >> 20
    );
    let m = single
        .write_set(OBJECT_READ_SET, rs, pattern.clone())
        .await
        .context("writing the read set to Cairn")?;
    out.read_set_write = Some(SystemResult::new(System::Cairn, &m));
    let raw_read_set = dir.join("raw-read-set");
    {
        let (p, d) = (raw_read_set.clone(), pattern.clone());
        blocking(move || raw::write(&p, &rs, &d, raw::Sync::AtEnd))
            .await
            .context("writing the raw read set")?;
    }
    let picks = random_blocks(rs.bytes, WARMUP_READS + plan.reads, plan.seed);
    let phase = Phase::RandomRead;
    let clock = ServerClock::start(servers, &routes.single, notes).await;
    let m = single
        .random_reads(OBJECT_READ_SET, &rs, &picks, WARMUP_READS, &pattern)
        .await
        .context("Cairn's random reads")?;
    let around = clock.stop(notes).await;
    let mut systems = vec![SystemResult::new(System::Cairn, &m)];
    progress(phase, &systems[0]);
    let m = {
        let (p, d, picks) = (raw_read_set.clone(), pattern.clone(), picks.clone());
        blocking(move || raw::random_reads(&p, &picks, WARMUP_READS, &d))
            .await
            .context("the raw random reads")?
    };
    systems.push(SystemResult::new(System::Pread, &m));
    progress(phase, &systems[1]);
    let _ = std::fs::remove_file(&raw_read_set);
    let m = pingpong::run(plan.reads, WARMUP_READS)
        .await
        .context("the TCP ping-pong")?;
    systems.push(SystemResult::new(System::TcpPingPong, &m));
    progress(phase, &systems[2]);
    out.phases.push(PhaseResult {
        phase,
        what: format!(
            "{} reads of 4 KiB at random aligned offsets of a {} MiB data set, one at a time \
             (after {WARMUP_READS} unrecorded)",
            crate::report::thousands(plan.reads as f64),
            rs.bytes >> 20
        ),
        ratio: read_latency_ratio(&systems),
        ratio_of: "cairn p50 ÷ (pread p50 + tcp ping-pong p50)",
        systems,
        server_time: around.server_time,
        cpu: around.cpu,
    });

    // Phases 2 and 3: 1 MiB sequential writes, then reads, 1 replica.
    let seq = plan.sequential;
    let what = |verb: &str, chain: &str| {
        format!(
            "{} MiB in 1 MiB {verb}, {} in flight, {} chunks of {} MiB, {chain}",
            seq.bytes >> 20,
            seq.depth,
            seq.chunks,
            seq.chunk_bytes >> 20
        )
    };
    let clock = ServerClock::start(servers, &routes.single, notes).await;
    let m = single
        .write_set(OBJECT_SEQUENTIAL, seq, pattern.clone())
        .await
        .context("Cairn's sequential writes")?;
    let write_around = clock.stop(notes).await;
    let mut writes = vec![SystemResult::new(System::Cairn, &m)];
    progress(Phase::SeqWrite, &writes[0]);
    let clock = ServerClock::start(servers, &routes.single, notes).await;
    let m = single
        .read_set(OBJECT_SEQUENTIAL, seq, pattern.clone())
        .await
        .context("Cairn's sequential reads")?;
    let read_around = clock.stop(notes).await;
    let mut reads = vec![SystemResult::new(System::Cairn, &m)];
    progress(Phase::SeqRead, &reads[0]);
    let raw_file = dir.join("raw-sequential");
    for (system, sync) in [
        (System::RawFdatasync, raw::Sync::EachWrite),
        (System::RawOneSync, raw::Sync::AtEnd),
    ] {
        let (p, d) = (raw_file.clone(), pattern.clone());
        let m = blocking(move || raw::write(&p, &seq, &d, sync))
            .await
            .with_context(|| format!("the {} baseline", system.label()))?;
        writes.push(SystemResult::new(system, &m));
        progress(Phase::SeqWrite, &writes[writes.len() - 1]);
    }
    let m = {
        let (p, d) = (raw_file.clone(), pattern.clone());
        blocking(move || raw::read(&p, &seq, &d))
            .await
            .context("the raw read baseline")?
    };
    reads.push(SystemResult::new(System::RawRead, &m));
    progress(Phase::SeqRead, &reads[1]);
    let _ = std::fs::remove_file(&raw_file);
    let raw_fdatasync = writes
        .iter()
        .find(|s| s.system == System::RawFdatasync)
        .cloned();
    out.phases.push(PhaseResult {
        phase: Phase::SeqWrite,
        what: what("writes", "1-replica chain"),
        ratio: throughput_ratios(&mut writes, System::RawFdatasync),
        ratio_of: "cairn MiB/s ÷ raw+fdatasync MiB/s",
        systems: writes,
        server_time: write_around.server_time,
        cpu: write_around.cpu,
    });
    out.phases.push(PhaseResult {
        phase: Phase::SeqRead,
        what: what("reads", "1-replica chain"),
        ratio: throughput_ratios(&mut reads, System::RawRead),
        ratio_of: "cairn MiB/s ÷ raw MiB/s",
        systems: reads,
        server_time: read_around.server_time,
        cpu: read_around.cpu,
    });

    // Phase 4: the same writes on a 3-replica chain.
    let clock = ServerClock::start(servers, &routes.replicated, notes).await;
    let m = replicated
        .write_set(OBJECT_REPLICATED, seq, pattern.clone())
        .await
        .context("Cairn's replicated writes")?;
    let around = clock.stop(notes).await;
    let mut systems = vec![SystemResult::new(System::CairnReplicated, &m)];
    progress(Phase::ReplicatedWrite, &systems[0]);
    if let Some(raw) = &raw_fdatasync {
        systems.push(SystemResult::third_of(raw));
    }
    out.phases.push(PhaseResult {
        phase: Phase::ReplicatedWrite,
        what: what(
            "writes",
            &format!("3-replica chain {}", routes.replicated.path()),
        ),
        ratio: throughput_ratios(&mut systems, System::RawFdatasyncThird),
        ratio_of: "cairn ×3 MiB/s ÷ (raw+fdatasync MiB/s ÷ 3)",
        systems,
        server_time: around.server_time,
        cpu: around.cpu,
    });
    Ok(())
}

/// Returns the peak resident memory of the servers and of this benchmark.
fn peak_rss(servers: &Servers) -> Vec<ProcessRss> {
    let mut out: Vec<ProcessRss> = servers
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

/// Runs the `chunk` workload and returns its report. Starts the servers
/// and stops them again, also when the run fails or is interrupted
/// (Ctrl-C).
///
/// # Errors
/// Bad sizes, a missing binary, servers that do not start, a failed
/// operation or baseline.
pub async fn run(args: &ChunkArgs, command_line: Vec<String>) -> Result<ChunkReport> {
    let started = Instant::now();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let plan = Plan {
        sequential: Layout::new(args.bytes, args.depth).context("--bytes / --depth")?,
        read_set: Layout::new(args.read_set, args.depth).context("--read-set")?,
        reads: args.reads,
        seed: args.seed,
    };
    if plan.reads == 0 {
        bail!("--reads must be at least 1");
    }
    let bin_dir = args.common.bin_dir()?;
    let meta_binary = bin_dir.join("cairn-meta");
    let chunkserver_binary = bin_dir.join("cairn-chunkserver");
    for (b, krate) in [
        (&meta_binary, "cairn-meta"),
        (&chunkserver_binary, "cairn-chunkserver"),
    ] {
        if !b.is_file() {
            bail!(
                "{} not found: build it with `cargo build --release -p {krate}`, or point \
                 --bin-dir / CAIRN_BIN_DIR at the directory that holds it",
                b.display()
            );
        }
    }
    let work = args.common.work_dir("cairn-bench-chunk-")?;
    let fs = machine::fs_of(work.path());
    if let Some(f) = fs.as_ref().filter(|f| f.fs_type == "tmpfs") {
        bail!(
            "the data directory is on tmpfs ({}), which has no O_DIRECT and no disk to \
             measure: pass --data-dir on a disk",
            f.mount_point
        );
    }
    let mut notes = Vec::new();
    if build_profile() == "debug" {
        notes.push("cairn-bench is a debug build: client-side figures are pessimistic".into());
    }
    for n in &notes {
        eprintln!("warning: {n}");
    }

    eprintln!(
        "chunk: starting 1 cairn-meta replica and {CHUNKSERVERS} chunkservers from {}",
        bin_dir.display()
    );
    let servers = Servers::start(work.path(), &bin_dir).await?;
    let raw_dir = work.path().join("raw");
    std::fs::create_dir_all(&raw_dir).with_context(|| format!("creating {}", raw_dir.display()))?;
    let mut outcome = Outcome {
        routes: None,
        read_set_write: None,
        phases: Vec::new(),
    };
    let result = tokio::select! {
        r = run_all(&servers, &plan, &raw_dir, &mut notes, &mut outcome) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    // Read before stopping: VmHWM is gone with the process.
    let peak_rss = peak_rss(&servers);
    servers.stop().await;
    result?;

    let data = DataLocation {
        dir: work.path().to_path_buf(),
        fs,
        kept: args.common.keep_data,
    };
    args.common.finish_work_dir(work)?;
    let retries: u64 = outcome
        .phases
        .iter()
        .flat_map(|p| &p.systems)
        .map(|s| s.retries)
        .sum();
    if retries > 0 {
        notes.push(format!(
            "Cairn requests were retried {retries} times after retryable error replies \
             (their pauses are in the figures)"
        ));
    }
    Ok(ChunkReport {
        workload: "chunk",
        command_line,
        started_unix,
        seconds: started.elapsed().as_secs_f64(),
        machine: machine::describe(),
        bench_build: build_profile(),
        meta_binary,
        chunkserver_binary,
        chunkservers: CHUNKSERVERS,
        chains: outcome.routes.map(|r| Chains {
            single: r.single,
            replicated: r.replicated,
            table_version: r.table_version,
        }),
        settings: Settings {
            bytes: args.bytes,
            depth: args.depth,
            read_set_bytes: args.read_set,
            reads: plan.reads,
            warmup_reads: WARMUP_READS,
            read_size: BLOCK,
            io_size: IO_SIZE,
            seed: plan.seed,
            sequential: plan.sequential,
            read_set: plan.read_set,
        },
        data,
        read_set_write: outcome.read_set_write,
        goals: goals(&outcome.phases),
        phases: outcome.phases,
        peak_rss,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(system: System, mib_per_sec: f64, p50_us: f64) -> SystemResult {
        SystemResult {
            system,
            description: system.description(),
            ops: 1,
            bytes: 1,
            seconds: 1.0,
            ops_per_sec: 1.0,
            mib_per_sec,
            latency: Some(TailSummary {
                p50_us,
                ..TailSummary::default()
            }),
            cairn_over_this: None,
            derived: false,
            retries: 0,
        }
    }

    #[test]
    fn read_ratio_divides_by_the_sum_of_both_floors() {
        let systems = vec![
            result(System::Cairn, 0.0, 65.0),
            result(System::Pread, 0.0, 35.0),
            result(System::TcpPingPong, 0.0, 15.0),
        ];
        assert_eq!(read_latency_ratio(&systems), Some(1.3));
        assert_eq!(read_latency_ratio(&systems[..2]), None);
    }

    #[test]
    fn throughput_ratios_divide_cairn_by_each_baseline() {
        let mut systems = vec![
            result(System::Cairn, 450.0, 0.0),
            result(System::RawFdatasync, 500.0, 0.0),
            result(System::RawOneSync, 1500.0, 0.0),
        ];
        assert_eq!(
            throughput_ratios(&mut systems, System::RawFdatasync),
            Some(0.9)
        );
        assert_eq!(systems[0].cairn_over_this, None);
        assert_eq!(systems[2].cairn_over_this, Some(0.3));
        let third = SystemResult::third_of(&systems[1]);
        assert!((third.mib_per_sec - 500.0 / 3.0).abs() < 1e-9);
        assert!(third.derived && third.latency.is_none());
    }

    #[test]
    fn goals_compare_in_the_right_direction() {
        let phase = |phase, ratio| PhaseResult {
            phase,
            what: String::new(),
            systems: Vec::new(),
            ratio,
            ratio_of: "",
            server_time: Vec::new(),
            cpu: Vec::new(),
        };
        let g = goals(&[
            phase(Phase::RandomRead, Some(1.31)),
            phase(Phase::SeqWrite, Some(0.9)),
            phase(Phase::SeqRead, None),
            phase(Phase::ReplicatedWrite, Some(0.79)),
        ]);
        let met: Vec<Option<bool>> = g.iter().map(|g| g.met).collect();
        assert_eq!(met, vec![Some(false), Some(true), None, Some(false)]);
    }
}
