//! The `cairn-bench` binary: parses the command line, runs one workload,
//! prints its table on stdout and writes its JSON report. Workloads live in
//! the library (`cairn_bench::meta`, …); each is a subcommand here.

use std::io::{self, StdoutLock, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use cairn_bench::chunk::{self, ChunkArgs};
use cairn_bench::client::{self, ClientArgs};
use cairn_bench::fuse::{self, FuseArgs};
use cairn_bench::meta::{self, MetaArgs};
use cairn_bench::repair::{self, RepairArgs};
use cairn_bench::small::{self, SmallArgs};
use cairn_bench::snapshot::{self, SnapshotArgs};
use cairn_bench::{BIN_DIR_ENV, CommonArgs, report};
use clap::{Parser, Subcommand};
use serde::Serialize;

/// The workloads section of `cairn-bench --help`.
const WORKLOADS: &str = "\
Workloads:
  meta   Metadata operations per second (create, stat, rename, unlink) of a
         3-replica cairn-meta cluster on loopback, with 1 and then 32
         concurrent clients, each a separate client with its own session.
         Baselines measured in the same run, same phases, same number of
         threads, on the same disk: the local file system as plain syscalls
         (the page-cache ceiling), and with every mutation fsynced (file and
         directory) — the like-for-like one, since Cairn acknowledges a
         mutation only once a majority of replicas flushed it to disk.
         Ratio = cairn ops/s ÷ baseline ops/s: 1 = parity, below 1 = Cairn
         slower. Also reports the meta leader's group commit (how many
         operations share one Raft log fsync, and log entries per fsync) and
         the single-client create target (≥ 6,000/s).
         Details: cairn-bench meta --help
  chunk  Chunkserver data path: 4 KiB random read latency at queue depth 1
         (p50/p99/p99.9) on a 1-replica chain, 1 MiB sequential write and read
         throughput on it, and 1 MiB write throughput on a 3-replica chain (3
         chunkservers, all on this disk). Baselines measured in the same run on
         the same disk: O_DIRECT pread of the same offsets plus a bare loopback
         TCP ping-pong (goal: cairn p50 ≤ 1.3 × their sum); O_DIRECT writes with
         an fdatasync after each, like-for-like since Cairn acknowledges a write
         only once data and metadata are synced (goal ≥ 0.9; once at the end
         for reference); O_DIRECT reads (goal ≥ 0.9); a third of the synced
         writes for 3 replicas (goal ≥ 0.8). Also the chunkservers' own
         handling time per request.
         Details: cairn-bench chunk --help
  client The client library end to end (cairn_client::Client, File,
         Checkpoints) on 3 cairn-meta and 3 cairn-chunkserver processes,
         replication 3, every replica on this disk. Each figure beside a
         baseline measured in the same run on the same disk:
           sequential reads, 1 and 4 streams, cold client: GB/s vs O_DIRECT
             reads of the same bytes by as many threads;
           checkpoint write (write_at front to back, fsync, close; and
             Checkpoints::save_reader): MiB/s vs a third of O_DIRECT writes
             with one fdatasync at the end (3 copies on one disk);
           4 KiB random reads, queue depth 1, no client cache: p50/p99/p99.9
             vs O_DIRECT pread p50 + loopback TCP ping-pong p50; and 16
             concurrent readers: IOPS vs 16 threads of O_DIRECT pread;
           small files (10,000 × 128 KiB): files/s written by 8 tasks, read in
             random order by 1 and 8, vs the local file system (write + fsync
             per file; reads with O_DIRECT, so not from the page cache).
         Also the CPU of every process and the client's peak memory per phase.
         Details: cairn-bench client --help
  small  Metadata and small-file operations through a real FUSE mount
         (`cairn mount`), through the native client library and on the
         local file system, in one run: create, stat, rename, unlink, mkdir,
         rmdir (1 and 8 threads, 2,000 each), 128 KiB files written and read
         back in a random order after dropping the page cache (1 and 8
         threads). Baselines: the local file system plain, and with every
         mutation fsynced (file and directory; small files before close),
         the like-for-like one since Cairn's mutations and closes are
         durable. Ratio = cairn ops/s ÷ local+fsync for mutations and
         writes, ÷ local for stat and reads; also mount ÷ native, the CPU
         per operation of meta, chunkservers and the mount, and every
         process's peak memory. Needs root (mount, drop_caches) and the
         `cairn` binary.
         Details: cairn-bench small --help
  repair Re-replication after a chunkserver dies for good: 3 cairn-meta and
         4 cairn-chunkservers (3 replicas and a spare); the fullest is
         filled to --size (10 GiB) and killed; time until every chain is
         back to 3 replicas, and the copy throughput as a ratio to O_DIRECT
         sequential writes of --size on the same disk in the same run.
         Details: cairn-bench repair --help
  snapshot What a volume snapshot costs: taking one (3 cairn-meta, 3
         chunkservers, a 3-replica volume), the first durable 4 KiB write
         to each chunk after it and a second round, creates with snapshots
         present, beside the same phases without a snapshot and local
         pwrite + fdatasync / create + fsync; the bytes it holds alone.
         Details: cairn-bench snapshot --help

Every workload prints a table on stdout (progress on stderr), writes every
figure with the machine (nproc, kernel) and the command line to --json FILE,
and reports the peak resident memory (VmHWM) of every process it starts and
of itself. Figures from a shared machine are noisy: compare ratios measured
in one run, not absolute rates across runs.

Build first (release, the benchmark and the servers):
  cargo build --release -p cairn-bench -p cairn-meta -p cairn-chunkserver
  target/release/cairn-bench meta --json meta.json
(fuse and small also need the cairn binary: -p cairn-cli)";

/// End-to-end benchmarks of Cairn: real server processes, each figure
/// beside a local baseline measured in the same run.
#[derive(Debug, Parser)]
#[command(
    name = "cairn-bench",
    version,
    after_help = WORKLOADS,
    subcommand_required = true,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Debug, Subcommand)]
enum Workload {
    /// Metadata ops/s of a 3-replica meta cluster, beside the local file
    /// system (plain and fsynced).
    #[command(long_about = meta::LONG_ABOUT)]
    Meta(MetaArgs),
    /// Chunkserver read latency and write/read throughput, beside the raw
    /// disk (O_DIRECT) and a bare TCP round trip.
    #[command(long_about = chunk::LONG_ABOUT)]
    Chunk(ChunkArgs),
    /// The client library end to end — sequential reads, checkpoint
    /// writes, random reads, small files — beside the raw disk, the network
    /// and the local file system.
    #[command(long_about = client::LONG_ABOUT)]
    Client(ClientArgs),
    /// Cairn through a FUSE mount (`cairn mount`) beside the native client
    /// and the same fio jobs on the local file system.
    #[command(long_about = fuse::LONG_ABOUT)]
    Fuse(FuseArgs),
    /// Metadata and small-file operations through a FUSE mount, the
    /// native client and the local file system (plain and fsynced).
    #[command(long_about = small::LONG_ABOUT)]
    Small(SmallArgs),
    /// Re-replication of a dead chunkserver's data (time to 3 replicas,
    /// MiB/s) beside the raw disk's write throughput.
    #[command(long_about = repair::LONG_ABOUT)]
    Repair(RepairArgs),
    /// What a volume snapshot costs: taking one, the first write after
    /// it, creates with snapshots, the space it holds; beside the same
    /// operations without one and the local disk.
    #[command(long_about = snapshot::LONG_ABOUT)]
    Snapshot(SnapshotArgs),
}

impl Workload {
    fn common(&self) -> &CommonArgs {
        match self {
            Workload::Meta(a) => &a.common,
            Workload::Chunk(a) => &a.common,
            Workload::Client(a) => &a.common,
            Workload::Fuse(a) => &a.common,
            Workload::Small(a) => &a.common,
            Workload::Repair(a) => &a.common,
            Workload::Snapshot(a) => &a.common,
        }
    }
}

/// Makes an explicit `--bin-dir` visible to the cluster harness, which
/// reads `CAIRN_BIN_DIR` (the same variable `--bin-dir` defaults from).
///
/// Must run before any other thread exists.
#[allow(unsafe_code)]
fn export_bin_dir(common: &CommonArgs) {
    let Some(dir) = common.bin_dir.as_ref() else {
        return;
    };
    if std::env::var_os(BIN_DIR_ENV).is_some_and(|v| v == dir.as_os_str()) {
        return;
    }
    // SAFETY: called from `main` before the tokio runtime (or anything
    // else) has started a thread, so no other thread can read the
    // environment concurrently.
    unsafe { std::env::set_var(BIN_DIR_ENV, dir) };
}

/// Prints a workload's table on stdout and writes its JSON report to
/// `json`, if given.
fn output<R: Serialize>(
    report: &R,
    json: Option<&Path>,
    print: impl FnOnce(&mut StdoutLock<'static>, &R) -> io::Result<()>,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    print(&mut out, report).context("writing the table")?;
    out.flush().context("writing the table")?;
    if let Some(path) = json {
        report::write_json(path, report)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    let command_line: Vec<String> = std::env::args().collect();
    export_bin_dir(cli.workload.common());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match cli.workload {
        Workload::Meta(args) => output(
            &rt.block_on(meta::run(&args, command_line))?,
            args.common.json.as_deref(),
            meta::print_table,
        ),
        Workload::Chunk(args) => output(
            &rt.block_on(chunk::run(&args, command_line))?,
            args.common.json.as_deref(),
            chunk::print_table,
        ),
        Workload::Client(args) => output(
            &rt.block_on(client::run(&args, command_line))?,
            args.common.json.as_deref(),
            client::print_table,
        ),
        Workload::Fuse(args) => output(
            &rt.block_on(fuse::run(&args, command_line))?,
            args.common.json.as_deref(),
            fuse::print_table,
        ),
        Workload::Small(args) => output(
            &rt.block_on(small::run(&args, command_line))?,
            args.common.json.as_deref(),
            small::print_table,
        ),
        Workload::Repair(args) => output(
            &rt.block_on(repair::run(&args, command_line))?,
            args.common.json.as_deref(),
            repair::print_table,
        ),
        Workload::Snapshot(args) => output(
            &rt.block_on(snapshot::run(&args, command_line))?,
            args.common.json.as_deref(),
            snapshot::print_table,
        ),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
