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
//! process ([`crate::servers`]), the machine and the command line.

pub mod cairn;
mod table;
pub mod tail;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use cairn_proto::ids::ObjectId;
use cairn_proto::units::parse_size;
use clap::Args;
use serde::Serialize;

use self::cairn::ChainClient;
use crate::layout::{self, BLOCK, IO_SIZE, Layout, random_blocks};
use crate::machine::{self, Machine};
use crate::measure::{self, Compared, Rate, blocking, p50_over_sum, rate_ratios};
use crate::meta::DataLocation;
use crate::servers::{CHUNKSERVERS, ChainRoute, Routes, Servers, Setup};
use crate::watch::{ServerClock, Watch};
use crate::{CommonArgs, ProcessRss, build_profile, pingpong, raw};

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

impl Compared for System {
    fn label(self) -> &'static str {
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

    fn description(self) -> &'static str {
        match self {
            System::Cairn => {
                "cairn-chunkserver, 1-replica chain; a write is acknowledged after data fdatasync + metadata flush; reads CRC-checked"
            }
            System::CairnReplicated => {
                "3-replica chain, one replica per chunkserver, all on this disk; acknowledged once every replica synced"
            }
            System::Pread => "pread of 4 KiB with O_DIRECT, same offsets, file of the same size",
            System::TcpPingPong => pingpong::DESCRIPTION,
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

    fn is_cairn(self) -> bool {
        matches!(self, System::Cairn | System::CairnReplicated)
    }
}

/// The figures of one system in one phase.
pub type SystemResult = measure::SystemResult<System>;

/// Everything measured in one phase.
pub type PhaseResult = measure::PhaseResult<Phase, System>;

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

/// Returns the random-read ratio: cairn p50 ÷ (pread p50 + ping-pong p50).
fn read_latency_ratio(systems: &[SystemResult]) -> Option<f64> {
    p50_over_sum(
        systems,
        System::Cairn,
        &[System::Pread, System::TcpPingPong],
    )
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
    let clock = ServerClock::start(servers, Watch::route(servers, &routes.single), notes).await;
    let m = single
        .random_reads(OBJECT_READ_SET, &rs, &picks, WARMUP_READS, &pattern)
        .await
        .context("Cairn's random reads")?;
    let around = clock.stop(notes).await;
    let mut systems = vec![SystemResult::new(System::Cairn, &m)];
    progress(phase, &systems[0]);
    let m = {
        let (p, d, picks) = (raw_read_set.clone(), pattern.clone(), picks.clone());
        blocking(move || raw::random_reads(&p, &picks, WARMUP_READS, &d, 1))
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
    let clock = ServerClock::start(servers, Watch::route(servers, &routes.single), notes).await;
    let m = single
        .write_set(OBJECT_SEQUENTIAL, seq, pattern.clone())
        .await
        .context("Cairn's sequential writes")?;
    let write_around = clock.stop(notes).await;
    let mut writes = vec![SystemResult::new(System::Cairn, &m)];
    progress(Phase::SeqWrite, &writes[0]);
    let clock = ServerClock::start(servers, Watch::route(servers, &routes.single), notes).await;
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
        ratio: rate_ratios(&mut writes, System::RawFdatasync, Rate::MibPerSec),
        ratio_of: "cairn MiB/s ÷ raw+fdatasync MiB/s",
        systems: writes,
        server_time: write_around.server_time,
        cpu: write_around.cpu,
    });
    out.phases.push(PhaseResult {
        phase: Phase::SeqRead,
        what: what("reads", "1-replica chain"),
        ratio: rate_ratios(&mut reads, System::RawRead, Rate::MibPerSec),
        ratio_of: "cairn MiB/s ÷ raw MiB/s",
        systems: reads,
        server_time: read_around.server_time,
        cpu: read_around.cpu,
    });

    // Phase 4: the same writes on a 3-replica chain.
    let clock = ServerClock::start(servers, Watch::route(servers, &routes.replicated), notes).await;
    let m = replicated
        .write_set(OBJECT_REPLICATED, seq, pattern.clone())
        .await
        .context("Cairn's replicated writes")?;
    let around = clock.stop(notes).await;
    let mut systems = vec![SystemResult::new(System::CairnReplicated, &m)];
    progress(Phase::ReplicatedWrite, &systems[0]);
    if let Some(raw) = &raw_fdatasync {
        systems.push(SystemResult::divided(raw, System::RawFdatasyncThird, 3.0));
    }
    out.phases.push(PhaseResult {
        phase: Phase::ReplicatedWrite,
        what: what(
            "writes",
            &format!("3-replica chain {}", routes.replicated.path()),
        ),
        ratio: rate_ratios(&mut systems, System::RawFdatasyncThird, Rate::MibPerSec),
        ratio_of: "cairn ×3 MiB/s ÷ (raw+fdatasync MiB/s ÷ 3)",
        systems,
        server_time: around.server_time,
        cpu: around.cpu,
    });
    Ok(())
}

/// Runs the `chunk` workload and returns its report. Starts the servers
/// and stops them again, also when the run fails or is interrupted
/// (Ctrl-C).
///
/// # Errors
/// Bad sizes, a missing binary, servers that do not start, a failed
/// operation or baseline.
pub async fn run(args: &ChunkArgs, command_line: Vec<String>) -> Result<ChunkReport> {
    let plan = Plan {
        sequential: Layout::new(args.bytes, args.depth).context("--bytes / --depth")?,
        read_set: Layout::new(args.read_set, args.depth).context("--read-set")?,
        reads: args.reads,
        seed: args.seed,
    };
    if plan.reads == 0 {
        bail!("--reads must be at least 1");
    }
    let mut setup = Setup::new(&args.common, "chunk")?;
    eprintln!(
        "chunk: starting 1 cairn-meta replica and {CHUNKSERVERS} chunkservers from {}",
        setup.bin_dir.display()
    );
    let servers = Servers::start(setup.work.path(), &setup.bin_dir, 1).await?;
    let raw_dir = setup.work.path().join("raw");
    std::fs::create_dir_all(&raw_dir).with_context(|| format!("creating {}", raw_dir.display()))?;
    let mut outcome = Outcome {
        routes: None,
        read_set_write: None,
        phases: Vec::new(),
    };
    let notes = &mut setup.notes;
    let (result, peak_rss) = servers
        .run_then_stop("cairn-bench (this process)", async |servers| {
            run_all(servers, &plan, &raw_dir, notes, &mut outcome).await
        })
        .await;
    result?;

    let mut done = setup.finish(&args.common)?;
    let retries: u64 = outcome
        .phases
        .iter()
        .flat_map(|p| &p.systems)
        .map(|s| s.retries)
        .sum();
    if retries > 0 {
        done.notes.push(format!(
            "Cairn requests were retried {retries} times after retryable error replies \
             (their pauses are in the figures)"
        ));
    }
    Ok(ChunkReport {
        workload: "chunk",
        command_line,
        started_unix: done.started_unix,
        seconds: done.seconds,
        machine: machine::describe(),
        bench_build: build_profile(),
        meta_binary: done.meta_binary,
        chunkserver_binary: done.chunkserver_binary,
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
        data: done.data,
        read_set_write: outcome.read_set_write,
        goals: goals(&outcome.phases),
        phases: outcome.phases,
        peak_rss,
        notes: done.notes,
    })
}

#[cfg(test)]
mod tests {
    use super::tail::TailSummary;
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
            rate_ratios(&mut systems, System::RawFdatasync, Rate::MibPerSec),
            Some(0.9)
        );
        assert_eq!(systems[0].cairn_over_this, None);
        assert_eq!(systems[2].cairn_over_this, Some(0.3));
        let third = SystemResult::divided(&systems[1], System::RawFdatasyncThird, 3.0);
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
