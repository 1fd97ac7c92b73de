//! The `small` workload: metadata and small-file operations through a
//! real FUSE mount (`cairn mount`, its own process, [`crate::mount`]),
//! through the native client library in this process ([`native`]), and
//! on a local directory of the same disk, plain and fsynced, all in one
//! run, one table.
//!
//! | phase | threads | mount and local ([`posix`]) | native ([`native`]) |
//! |---|---|---|---|
//! | create | 1, T | `open(O_CREAT\|O_EXCL\|O_WRONLY)` + close, each thread in its own directory | `Client::create` + `File::close` |
//! | stat | 1 | `stat` of each file of the 1-thread create, shuffled | `Client::stat` |
//! | rename | 1, T | `rename` `f…` → `r…` in the thread's directory | `Client::rename` |
//! | unlink | 1, T | `unlink` of the renamed files | `Client::remove_file` |
//! | mkdir, rmdir | 1, T | `mkdir` of `d…`, then `rmdir` of them | `MetaClient::mkdir` (the client has only `mkdir -p`), `Client::remove_dir` |
//! | write | 1, T | create + write + close of a 128 KiB file, T threads sharing one directory | `Client::write_file` |
//! | read | 1, T | open + read whole + close in a random order, after dropping the page cache, of the files the *native client* wrote | `Client::read_file`, no client cache, of the files the *mount* wrote |
//! | reread | 1, T | the same files in another order, after one unmeasured pass on the same system: every cache warm, as in a training epoch after the first | `Client::read_file` again |
//!
//! The mount and local sides run the same code: the `meta` workload's
//! local [`Worker`](crate::meta::local::Worker) for the namespace and the
//! `client` workload's [`local`](crate::client::local) small-file
//! functions, with plain `std::fs` calls from OS threads. The native side
//! runs one [`cairn_client::Client`] (no block cache) shared by T tokio
//! tasks, as the mount is one client shared by the kernel's requests. Its
//! path calls resolve the parent on meta each time (a create is resolve,
//! create, close: three round trips), as a program using the library
//! does; the mount has the kernel's dentry cache instead.
//!
//! Baselines: local (plain syscalls, the page-cache ceiling) and
//! local+fsync (every namespace mutation durable before the next: the
//! file and the directory on create, the directory on the others; each
//! small file fsynced before its close), since a Cairn mutation is
//! acknowledged once a majority of meta replicas flushed it, and a
//! closed Cairn file is on every replica. The reference of each ratio is
//! local+fsync for mutations and writes, local for stat and reads.
//!
//! Around each Cairn part: the CPU every process used ([`crate::watch`]),
//! reported per operation — the meta replicas summed, the chunkservers
//! summed, and the client (the mount process, or this one for the native
//! side). Phases run one system after the other, never concurrently.
//!
//! Last, the collect step ([`collect`]): every small file left is deleted
//! through the native client and the run waits until meta's garbage
//! collector has removed all deleted data (the bench's meta replicas run
//! with a short `--gc-grace`, [`crate::cluster::GC_GRACE`]); the CPU of
//! that stretch per deleted file is what deleting costs the cluster,
//! now and later.

pub mod native;
pub mod posix;
mod table;

use std::future::Future;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use cairn_proto::units::parse_size;
use clap::Args;
use serde::Serialize;

use crate::client::VOLUME;
use crate::layout::MAX_DEPTH;
use crate::machine::{self, Machine, drop_caches};
use crate::measure::{self, Compared, Measured, blocking, over};
use crate::meta::SplitMix;
use crate::meta::local::Durability;
use crate::mount::{self, MountFlags, Mounted, run_mounted};
use crate::servers::Finished;
use crate::watch::{Around, ProcessCpu, ServerClock, ServerTime, THIS_PROCESS, Watch};
use crate::{CommonArgs, ProcessRss, build_profile};

use native::Native;
use posix::Posix;

pub use table::print_table;

/// Help text of `cairn-bench small --help`.
pub const LONG_ABOUT: &str = "\
Metadata and small-file operations through a real FUSE mount, through the
native client library and on the local file system, in one run on one disk.

Starts 3 cairn-meta replicas and 3 cairn-chunkserver processes on 127.0.0.1
(release binaries from --bin-dir), creates a volume (replication 3) and mounts
it with `cairn mount` (the release binary, its own process). Each phase runs on
every system, one after the other:

  mount        std::fs calls from OS threads on the mount
  native       cairn_client::Client in this process (no block cache), shared
               by as many tokio tasks; path calls, each resolving its parent
  local        std::fs on a directory of the same disk, no fsync
  local+fsync  the same, every mutation durable before the next: file and
               directory fsynced on create, the directory on rename, unlink,
               mkdir and rmdir; each small file fsynced before its close

Phases (1 thread, then --threads threads each in its own directory, --files
operations in all):
  create   open(O_CREAT|O_EXCL|O_WRONLY) + close (native: create + close)
  stat     every file of the 1-thread create once, shuffled, 1 thread
  missing  stat of as many names that do not exist, in the same directory
           (the names the rename will give), shuffled, 1 thread: what a
           create's lookup or an exists() check costs
  rename   f... -> r... within the directory
  unlink   the renamed files
  mkdir    --files directories, then
  rmdir    remove them
  write    --small-files files of --small-size: create, write, close, 1 then
           --threads threads into one directory (local+fsync: fsync before
           close; Cairn's close is durable)
  read     the files back whole in a random order (open, read, close), 1
           then --threads threads, each part after dropping the page cache
           (echo 3 > /proc/sys/vm/drop_caches: needs root; noted if not);
           each Cairn client reads the files the other wrote (the mount the
           native client's, the native client the mount's), as a training
           job reads a dataset another job wrote: nothing of them cached
  reread   the same again in another order after one unmeasured pass on the
           same system: every cache warm, as in a training epoch after the
           first (the page cache, the kernel's names, the mount's leases)

Per phase and system: operations per second and per-operation latency (p50,
p99). Ratios: mount and native over the reference, local+fsync for mutations
and writes, local for stat and reads (1 = parity, below 1 = Cairn slower), and
mount over native. Also the CPU per operation of the Cairn processes during
each Cairn part (meta replicas summed, chunkservers summed, the mount process or
this one as the client), the peak resident memory of every process, the
machine and the command line. Defaults take about 3 minutes on 2 cores.";

/// Flags of `cairn-bench small`.
#[derive(Debug, Clone, Args)]
pub struct SmallArgs {
    /// Operations of each namespace phase (create, stat, rename, unlink,
    /// mkdir, rmdir), split over the threads.
    #[arg(long, default_value_t = 2000, value_name = "N")]
    pub files: usize,
    /// Files of the write and read phases.
    #[arg(long, default_value_t = 2000, value_name = "N")]
    pub small_files: usize,
    /// Bytes of each small file.
    #[arg(long, default_value = "128KiB", value_parser = parse_size, value_name = "SIZE")]
    pub small_size: u64,
    /// Threads (tasks on the native client) of the concurrent phases.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub threads: usize,
    /// Seed of the stat and read orders and of the bytes written.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Whether the native client resolves paths from its cache under
    /// meta's lease (the library's default) or asks meta every time
    /// (`off`, as before the cache: for before/after comparisons).
    #[arg(long, default_value = "on", value_parser = ["on", "off"], value_name = "on|off")]
    pub native_path_cache: String,
    #[command(flatten)]
    pub mount: MountFlags,
    /// Options shared by every workload.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The sizes a run used.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Operations of each namespace phase.
    pub files: usize,
    /// Files of the write and read phases.
    pub small_files: usize,
    /// Bytes of each small file.
    pub small_size: u64,
    /// Threads of the concurrent phases.
    pub threads: usize,
    /// Seed of the orders and bytes.
    pub seed: u64,
    /// Extra `cairn mount` flags.
    pub mount_args: String,
    /// The native client's path cache (`--native-path-cache`).
    pub native_path_cache: bool,
}

impl Settings {
    /// Checks the flags.
    ///
    /// # Errors
    /// A thread count out of range, a size of 0, or fewer operations
    /// than threads.
    pub fn new(a: &SmallArgs) -> Result<Settings> {
        if !(1..=MAX_DEPTH).contains(&a.threads) {
            bail!(
                "--threads must be between 1 and {MAX_DEPTH}, not {}",
                a.threads
            );
        }
        if a.files < a.threads || a.small_files < a.threads {
            bail!("--files and --small-files must be at least --threads");
        }
        if a.small_size == 0 || a.small_size > 64 << 20 {
            bail!("--small-size must be between 1 byte and 64 MiB");
        }
        Ok(Settings {
            files: a.files,
            small_files: a.small_files,
            small_size: a.small_size,
            threads: a.threads,
            seed: a.seed,
            mount_args: a.mount.extra.clone(),
            native_path_cache: a.native_path_cache == "on",
        })
    }
}

/// An operation a phase repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// Create an empty file.
    Create,
    /// Stat a file.
    Stat,
    /// Stat a name that does not exist.
    Missing,
    /// Rename a file within its directory.
    Rename,
    /// Unlink a file.
    Unlink,
    /// Make a directory.
    Mkdir,
    /// Remove a directory.
    Rmdir,
    /// Create, write and close a small file.
    Write,
    /// Open, read whole and close a small file.
    Read,
    /// The same, again, with every cache kept (the epoch after).
    Reread,
}

impl Op {
    /// Every operation, in the order the phases run.
    pub const ALL: [Op; 10] = [
        Op::Create,
        Op::Stat,
        Op::Missing,
        Op::Rename,
        Op::Unlink,
        Op::Mkdir,
        Op::Rmdir,
        Op::Write,
        Op::Read,
        Op::Reread,
    ];

    /// Returns the operation's name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Stat => "stat",
            Op::Missing => "missing",
            Op::Rename => "rename",
            Op::Unlink => "unlink",
            Op::Mkdir => "mkdir",
            Op::Rmdir => "rmdir",
            Op::Write => "write",
            Op::Read => "read",
            Op::Reread => "reread",
        }
    }

    /// Returns whether the operation changes something (a durable Raft
    /// entry, or data on every replica, on Cairn).
    pub fn mutates(self) -> bool {
        !matches!(self, Op::Stat | Op::Missing | Op::Read | Op::Reread)
    }

    /// Returns the baseline the phase's ratios divide by.
    pub fn reference(self) -> System {
        if self.mutates() {
            System::LocalFsync
        } else {
            System::Local
        }
    }

    /// Returns the systems the operation runs on, Cairn first.
    fn systems(self) -> &'static [System] {
        if self.mutates() {
            &[
                System::Mount,
                System::Native,
                System::Local,
                System::LocalFsync,
            ]
        } else {
            // Reads and stats are the same with or without fsyncs.
            &[System::Mount, System::Native, System::Local]
        }
    }
}

/// A system the workload measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// A `cairn mount` of the volume.
    Mount,
    /// `cairn_client::Client` in this process.
    Native,
    /// The local file system, no fsync.
    Local,
    /// The local file system, every mutation fsynced.
    LocalFsync,
}

impl Compared for System {
    fn label(self) -> &'static str {
        match self {
            System::Mount => "mount",
            System::Native => "native",
            System::Local => "local",
            System::LocalFsync => "local+fsync",
        }
    }

    fn description(self) -> &'static str {
        match self {
            System::Mount => {
                "std::fs from OS threads on a `cairn mount` (FUSE, its own process) of a replication-3 volume; 3 meta + 3 chunkservers on loopback, every replica on this disk"
            }
            System::Native => {
                "cairn_client::Client in this process, no block cache, shared by as many tokio tasks; path calls, resolved from its path cache under meta's lease (--native-path-cache off: on meta, every call)"
            }
            System::Local => {
                "std::fs on a directory of the same disk, no fsync (page-cache ceiling)"
            }
            System::LocalFsync => {
                "std::fs; create fsyncs file + directory, rename/unlink/mkdir/rmdir fsync the directory, small files fsynced before close"
            }
        }
    }

    fn is_cairn(self) -> bool {
        matches!(self, System::Mount | System::Native)
    }
}

/// The figures of one system in one phase.
pub type SystemResult = measure::SystemResult<System>;

/// The CPU the Cairn processes used during one Cairn system's part of a
/// phase, in all and per operation.
#[derive(Debug, Clone, Serialize)]
pub struct CairnCpu {
    /// Mount or native.
    pub system: System,
    /// Operations of the part.
    pub ops: usize,
    /// What the client is: `cairn mount` or `cairn-bench`.
    pub client: &'static str,
    /// CPU seconds of the meta replicas, summed.
    pub meta_seconds: f64,
    /// CPU seconds of the chunkservers, summed.
    pub chunkserver_seconds: f64,
    /// CPU seconds of the client.
    pub client_seconds: f64,
    /// `meta_seconds` per operation, µs.
    pub meta_us_per_op: f64,
    /// `chunkserver_seconds` per operation, µs.
    pub chunkserver_us_per_op: f64,
    /// `client_seconds` per operation, µs.
    pub client_us_per_op: f64,
    /// Every watched process (this one too, whose threads make the
    /// syscalls of the mount side).
    pub processes: Vec<ProcessCpu>,
    /// The chunkservers' own handling time per opcode (data phases).
    pub chunkserver_time: Vec<ServerTime>,
}

impl CairnCpu {
    /// Sums what `around` measured of `system`'s part of `ops` operations.
    fn new(m: &Mounted<'_>, system: System, ops: usize, around: Around) -> Self {
        let client = match system {
            System::Mount => mount::PROCESS,
            _ => THIS_PROCESS,
        };
        let is_cs = |p: &str| m.servers.chunkservers().iter().any(|c| c.name == p);
        let sum = |f: &dyn Fn(&str) -> bool| -> f64 {
            around
                .cpu
                .iter()
                .filter(|c| f(&c.process))
                .map(|c| c.cpu_seconds)
                .sum()
        };
        let meta_seconds = sum(&|p| p.starts_with("meta"));
        let chunkserver_seconds = sum(&is_cs);
        let client_seconds = sum(&|p| p == client);
        let per_op = |s: f64| s * 1e6 / ops.max(1) as f64;
        Self {
            system,
            ops,
            client,
            meta_seconds,
            chunkserver_seconds,
            client_seconds,
            meta_us_per_op: per_op(meta_seconds),
            chunkserver_us_per_op: per_op(chunkserver_seconds),
            client_us_per_op: per_op(client_seconds),
            processes: around.cpu,
            chunkserver_time: around.server_time,
        }
    }
}

/// Everything measured in one phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    /// The operation.
    pub op: Op,
    /// Threads (tasks) that ran it at once.
    pub threads: usize,
    /// What ran, in words.
    pub what: String,
    /// Mount, native, then the baselines.
    pub systems: Vec<SystemResult>,
    /// The baseline the ratios divide by.
    pub reference: System,
    /// Mount ops/s ÷ the reference's.
    pub mount_over_reference: Option<f64>,
    /// Native ops/s ÷ the reference's.
    pub native_over_reference: Option<f64>,
    /// Mount ops/s ÷ native ops/s.
    pub mount_over_native: Option<f64>,
    /// The CPU of the Cairn processes during each Cairn part.
    pub cpu: Vec<CairnCpu>,
}

impl PhaseResult {
    /// Returns the result of `system`, if it ran.
    pub fn system(&self, system: System) -> Option<&SystemResult> {
        self.systems.iter().find(|s| s.system == system)
    }

    /// Returns the phase's label in tables: `create ×8`.
    pub fn label(&self) -> String {
        format!("{} ×{}", self.op.name(), self.threads)
    }

    fn new(
        op: Op,
        threads: usize,
        what: String,
        systems: Vec<SystemResult>,
        cpu: Vec<CairnCpu>,
    ) -> Self {
        let rate = |s: System| {
            systems
                .iter()
                .find(|r| r.system == s)
                .map(|r| r.ops_per_sec)
        };
        let reference = op.reference();
        Self {
            op,
            threads,
            what,
            reference,
            mount_over_reference: over(rate(System::Mount), rate(reference)),
            native_over_reference: over(rate(System::Native), rate(reference)),
            mount_over_native: over(rate(System::Mount), rate(System::Native)),
            systems,
            cpu,
        }
    }
}

/// The whole report of `cairn-bench small`, as written to --json.
#[derive(Debug, Clone, Serialize)]
pub struct SmallReport {
    /// Always `"small"`.
    pub workload: &'static str,
    /// The command line, one argument per element.
    pub command_line: Vec<String>,
    /// When and how long, the binaries, where the data lived, notes.
    pub run: Finished,
    /// The machine.
    pub machine: Machine,
    /// `release` or `debug` (the benchmark binary's build).
    pub bench_build: &'static str,
    /// The sizes used.
    pub settings: Settings,
    /// The phases, in run order.
    pub phases: Vec<PhaseResult>,
    /// Deleting the small files and collecting their data.
    pub collect: Option<CollectResult>,
    /// Peak resident memory of every process at the end (the mount's read
    /// just before it was unmounted).
    pub peak_rss: Vec<ProcessRss>,
    /// Things a reader should know about this run.
    pub notes: Vec<String>,
}

/// What deleting every small file and collecting its data cost.
#[derive(Debug, Clone, Serialize)]
pub struct CollectResult {
    /// Files deleted.
    pub files: usize,
    /// Objects the collector forgot during the step (also those of files
    /// deleted by earlier phases and not collected yet).
    pub objects_collected: u64,
    /// Chunk removals it sent (each to every replica of a chain).
    pub chunk_removals: u64,
    /// Seconds from the first delete until no garbage was left.
    pub seconds: f64,
    /// Seconds the deletes took.
    pub delete_seconds: f64,
    /// The CPU of the Cairn processes over the whole step, per deleted
    /// file (client: this process, which deleted).
    pub cpu: CairnCpu,
}

/// One phase's work on one system: what [`Posix::run`] and
/// [`Native::run`] do.
#[derive(Debug, Clone)]
pub struct Job {
    /// The operation.
    pub op: Op,
    /// Threads (tasks) at once.
    pub threads: usize,
    /// Operations per thread (namespace phases), or files in all (write).
    pub count: usize,
    /// File numbers in the order to visit them (stat, read).
    pub order: Arc<[usize]>,
    /// Each small file's bytes.
    pub data: Bytes,
}

impl Job {
    /// Returns the directory name of the small files written by `threads`
    /// threads (and read back by as many).
    pub fn small_dir(&self) -> String {
        format!("small-x{}", self.threads)
    }
}

/// Returns the numbers `0..n` in a random order drawn from `seed`.
fn shuffled(n: usize, seed: u64) -> Arc<[usize]> {
    let mut order: Vec<usize> = (0..n).collect();
    SplitMix::new(seed).shuffle(&mut order);
    order.into()
}

/// Prints one measured system to stderr, so a long run shows progress.
fn progress(label: &str, r: &SystemResult) {
    let lat = r.latency.unwrap_or_default();
    eprintln!(
        "  {label:<10} {:<12} {:>6} ops in {:>6.2} s = {:>9.1} ops/s, p50 {:>8.1} µs, p99 {:>9.1} µs",
        r.system.label(),
        r.ops,
        r.seconds,
        r.ops_per_sec,
        lat.p50_us,
        lat.p99_us
    );
}

/// Runs the phases: the systems and what the phases share.
struct Runner<'a, 'b> {
    m: &'a Mounted<'b>,
    settings: &'a Settings,
    notes: &'a mut Vec<String>,
    mount: Arc<Posix>,
    native: Native,
    local: Arc<Posix>,
    local_fsync: Arc<Posix>,
    data: Bytes,
}

impl Runner<'_, '_> {
    /// Runs Cairn's `part` between a [`ServerClock`]'s start and stop.
    async fn cairn(
        &mut self,
        system: System,
        part: impl Future<Output = Result<Measured>>,
    ) -> Result<(Measured, CairnCpu)> {
        let watch = Watch::all(self.m.servers).with_process(mount::PROCESS, self.m.pid);
        let clock = ServerClock::start(self.m.servers, watch, self.notes).await;
        let measured = part.await;
        let around = clock.stop(self.notes).await;
        let measured = measured?;
        let cpu = CairnCpu::new(self.m, system, measured.ops, around);
        Ok((measured, cpu))
    }

    /// The std::fs runner of `system` (`None`: the native client).
    fn posix(&self, system: System) -> Option<Arc<Posix>> {
        match system {
            System::Native => None,
            System::Mount => Some(self.mount.clone()),
            System::Local => Some(self.local.clone()),
            System::LocalFsync => Some(self.local_fsync.clone()),
        }
    }

    /// Runs `job` on `system`; returns its result and, for Cairn, the CPU.
    async fn one(&mut self, system: System, job: &Job) -> Result<(Measured, Option<CairnCpu>)> {
        if job.op == Op::Read {
            drop_caches(self.notes);
        }
        if job.op == Op::Reread {
            // One pass unmeasured, on this system, right before: the other
            // systems' read parts dropped the caches.
            match self.posix(system) {
                None => {
                    self.native.clone().run(job).await?;
                }
                Some(posix) => {
                    let job = job.clone();
                    blocking(move || posix.run(&job)).await?;
                }
            }
        }
        let Some(posix) = self.posix(system) else {
            let native = self.native.clone();
            let (m, cpu) = self.cairn(system, native.run(job)).await?;
            return Ok((m, Some(cpu)));
        };
        let job = job.clone();
        let run = blocking(move || posix.run(&job));
        if system.is_cairn() {
            let (m, cpu) = self.cairn(system, run).await?;
            Ok((m, Some(cpu)))
        } else {
            Ok((run.await?, None))
        }
    }

    /// Runs `job` on every system of its operation and returns the phase.
    async fn phase(&mut self, job: Job, what: String) -> Result<PhaseResult> {
        let label = format!("{} ×{}", job.op.name(), job.threads);
        let mut systems = Vec::new();
        let mut cpus = Vec::new();
        for &system in job.op.systems() {
            let (m, cpu) = self
                .one(system, &job)
                .await
                .with_context(|| format!("{label} on {}", system.label()))?;
            let r = SystemResult::new(system, &m);
            progress(&label, &r);
            systems.push(r);
            cpus.extend(cpu);
        }
        Ok(PhaseResult::new(job.op, job.threads, what, systems, cpus))
    }

    /// Returns the job of `op` with `threads` threads.
    fn job(&self, op: Op, threads: usize) -> Job {
        let s = self.settings;
        let (count, order) = match op {
            Op::Write => (s.small_files, Arc::from([])),
            // Other files per thread count: a disk may cache what was just
            // read.
            Op::Read => (
                s.small_files,
                shuffled(s.small_files, s.seed.wrapping_add(threads as u64)),
            ),
            Op::Reread => (
                s.small_files,
                shuffled(s.small_files, s.seed.wrapping_add(1000 + threads as u64)),
            ),
            Op::Stat => (s.files, shuffled(s.files, s.seed)),
            Op::Missing => (s.files, shuffled(s.files, s.seed.wrapping_add(7))),
            _ => (s.files / threads, Arc::from([])),
        };
        Job {
            op,
            threads,
            count,
            order,
            data: self.data.clone(),
        }
    }

    /// Returns what `op` with `threads` threads does, in words.
    fn what(&self, op: Op, threads: usize) -> String {
        let s = self.settings;
        let kib = s.small_size as f64 / 1024.0;
        let each = if threads == 1 {
            "1 thread".to_string()
        } else {
            format!("{threads} threads, each in its own directory")
        };
        match op {
            Op::Stat => format!(
                "stat of each of the {} files of create ×1, shuffled, 1 thread",
                s.files
            ),
            Op::Missing => format!(
                "stat of {} names that do not exist in create ×1's directory, shuffled, 1 thread",
                s.files
            ),
            Op::Write => format!(
                "{} files of {kib} KiB created, written, closed; {threads} thread(s), one directory",
                s.small_files
            ),
            Op::Read => format!(
                "the {} files of write ×{threads} opened, read whole, closed in a random order; \
                 {threads} thread(s); page cache dropped before each system; each Cairn client \
                 reads the files the other wrote",
                s.small_files
            ),
            Op::Reread => format!(
                "the files of read ×{threads} again in another random order, after one \
                 unmeasured pass on the same system: every cache warm, as in a training epoch \
                 after the first; {threads} thread(s)",
            ),
            _ => format!("{} {}s, {each}", s.files / threads * threads, op.name()),
        }
    }

    /// Runs every phase in order: each operation with 1 thread, then
    /// (but stat) with --threads; each reread right after its read (the
    /// next read drops the caches).
    async fn all(&mut self) -> Result<Vec<PhaseResult>> {
        let t = self.settings.threads;
        let mut phases = Vec::new();
        for op in Op::ALL {
            if op == Op::Reread {
                continue;
            }
            // With --threads 1 the concurrent phases would repeat the others.
            let counts: &[usize] = if matches!(op, Op::Stat | Op::Missing) || t == 1 {
                &[1]
            } else {
                &[1, t]
            };
            for &threads in counts {
                let ops: &[Op] = if op == Op::Read {
                    &[Op::Read, Op::Reread]
                } else {
                    &[op]
                };
                for &op in ops {
                    let (job, what) = (self.job(op, threads), self.what(op, threads));
                    phases.push(self.phase(job, what).await?);
                }
            }
        }
        Ok(phases)
    }
}

/// Runs every phase against the mounted volume.
async fn run_all(
    m: &Mounted<'_>,
    settings: &Settings,
    notes: &mut Vec<String>,
) -> Result<(Vec<PhaseResult>, Option<CollectResult>)> {
    let t = settings.threads;
    // Each Cairn client reads back the small files the other wrote, as a
    // training job reads a dataset another job wrote: nothing of them is
    // in its caches (names, attributes, blocks).
    let mount =
        Posix::new(m.root.join("mount"), t, Durability::PageCache)?.reading(m.root.join("native"));
    let local = Posix::new(m.work.join("local"), t, Durability::PageCache)?;
    let local_fsync = Posix::new(m.work.join("local-fsync"), t, Durability::Fsync)?;
    let native = Native::new(
        m.servers,
        &format!("/{VOLUME}/native"),
        t,
        settings.native_path_cache,
    )
    .await?
    .reading(&format!("/{VOLUME}/mount"));
    let data = Bytes::from(crate::layout::pattern(
        settings.small_size as usize,
        settings.seed,
    ));
    let mut runner = Runner {
        m,
        settings,
        notes,
        mount: Arc::new(mount),
        native,
        local: Arc::new(local),
        local_fsync: Arc::new(local_fsync),
        data,
    };
    let phases = runner.all().await;
    let collected = match phases {
        Ok(phases) => collect(&mut runner)
            .await
            .map(|c| (phases, Some(c)))
            .context("the collect step"),
        Err(e) => Err(e),
    };
    runner.native.close().await;
    collected
}

/// How long the collect step waits for the garbage to be gone.
const COLLECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Returns every regular file under `dir`, recursively.
async fn files_under(c: &cairn_client::Client, dir: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_string()];
    while let Some(d) = dirs.pop() {
        for e in c
            .read_dir(&d)
            .await
            .with_context(|| format!("listing {d}"))?
        {
            let path = format!("{d}/{}", e.name);
            match cairn_proto::meta::FileType::try_from(e.kind) {
                Ok(cairn_proto::meta::FileType::Directory) => dirs.push(path),
                Ok(cairn_proto::meta::FileType::Regular) => out.push(path),
                _ => {}
            }
        }
    }
    Ok(out)
}

/// The collect step (see the module docs).
async fn collect(r: &mut Runner<'_, '_>) -> Result<CollectResult> {
    let client = r.native.client().clone();
    let files = files_under(&client, &format!("/{VOLUME}")).await?;
    eprintln!(
        "  collect    deleting {} files, then waiting for the garbage collector",
        files.len()
    );
    let meta = client.meta().clone();
    let before = meta.leader_status().await.context("meta status")?;
    let started = std::time::Instant::now();
    let watch = Watch::all(r.m.servers).with_process(mount::PROCESS, r.m.pid);
    let clock = ServerClock::start(r.m.servers, watch, r.notes).await;
    let work = async {
        const TASKS: usize = 16;
        let tasks: Vec<_> = (0..TASKS)
            .map(|k| {
                let c = client.clone();
                let mine: Vec<String> = files.iter().skip(k).step_by(TASKS).cloned().collect();
                tokio::spawn(async move {
                    for p in mine {
                        c.remove_file(&p)
                            .await
                            .with_context(|| format!("deleting {p}"))?;
                    }
                    Result::<()>::Ok(())
                })
            })
            .collect();
        for t in tasks {
            t.await.context("a delete task panicked")??;
        }
        let delete_seconds = started.elapsed().as_secs_f64();
        loop {
            let s = meta.leader_status().await.context("meta status")?;
            if s.garbage_objects == 0 {
                return Ok((delete_seconds, s));
            }
            if started.elapsed() > COLLECT_TIMEOUT {
                bail!(
                    "{} deleted objects still not collected after {COLLECT_TIMEOUT:?}",
                    s.garbage_objects
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    let result: Result<(f64, cairn_proto::meta::StatusReply)> = work.await;
    let around = clock.stop(r.notes).await;
    let (delete_seconds, after) = result?;
    let seconds = started.elapsed().as_secs_f64();
    let (objects_collected, chunk_removals) = if after.node_id == before.node_id {
        (
            after.gc_objects_collected - before.gc_objects_collected,
            after.gc_chunk_removals - before.gc_chunk_removals,
        )
    } else {
        r.notes.push(
            "the meta leader changed during the collect step: its counters are partial".into(),
        );
        (after.gc_objects_collected, after.gc_chunk_removals)
    };
    let cpu = CairnCpu::new(r.m, System::Native, files.len(), around);
    eprintln!(
        "  collect    {} files deleted in {delete_seconds:.1} s, garbage gone after {seconds:.1} s: \
         {objects_collected} objects, {chunk_removals} chunk removals; CPU per file: meta {:.0} µs, \
         chunkservers {:.0} µs",
        files.len(),
        cpu.meta_us_per_op,
        cpu.chunkserver_us_per_op
    );
    Ok(CollectResult {
        files: files.len(),
        objects_collected,
        chunk_removals,
        seconds,
        delete_seconds,
        cpu,
    })
}

/// Runs the `small` workload and returns its report. Starts the servers
/// and the mount and stops them again, also when the run fails or is
/// interrupted (Ctrl-C).
///
/// # Errors
/// Bad flags, a missing binary, servers or a mount that do not start, a
/// failed operation.
pub async fn run(args: &SmallArgs, command_line: Vec<String>) -> Result<SmallReport> {
    let settings = Settings::new(args)?;
    let r = run_mounted(
        &args.common,
        "small",
        VOLUME,
        &args.mount,
        "cairn-bench (native client, syscall threads, baselines)",
        async |m, notes| run_all(m, &settings, notes).await,
    )
    .await?;
    Ok(SmallReport {
        workload: "small",
        command_line,
        run: r.run,
        machine: machine::describe(),
        bench_build: build_profile(),
        settings,
        phases: r.value.0,
        collect: r.value.1,
        peak_rss: r.peak_rss,
        notes: r.notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SmallArgs,
    }

    fn settings(extra: &[&str]) -> Result<Settings> {
        let mut argv = vec!["small"];
        argv.extend_from_slice(extra);
        Settings::new(&Cli::try_parse_from(argv)?.args)
    }

    #[test]
    fn defaults_and_checks() {
        let s = settings(&[]).unwrap();
        assert_eq!((s.files, s.small_files, s.threads), (2000, 2000, 8));
        assert_eq!(s.small_size, 128 << 10);
        assert!(settings(&["--threads", "0"]).is_err());
        assert!(settings(&["--files", "4"]).is_err());
        assert!(settings(&["--small-size", "0"]).is_err());
        assert!(settings(&["--mount-args", "--entry-ttl 0s"]).is_ok());
    }

    #[test]
    fn ratios_divide_by_the_reference_of_the_operation() {
        let sys = |system, ops_per_sec| SystemResult {
            system,
            description: system.description(),
            ops: 1,
            bytes: 0,
            seconds: 1.0,
            ops_per_sec,
            mib_per_sec: 0.0,
            latency: None,
            cairn_over_this: None,
            derived: false,
            retries: 0,
        };
        let systems = vec![
            sys(System::Mount, 100.0),
            sys(System::Native, 200.0),
            sys(System::Local, 10_000.0),
            sys(System::LocalFsync, 400.0),
        ];
        let p = PhaseResult::new(Op::Create, 1, String::new(), systems.clone(), vec![]);
        assert_eq!(p.reference, System::LocalFsync);
        assert_eq!(p.mount_over_reference, Some(0.25));
        assert_eq!(p.native_over_reference, Some(0.5));
        assert_eq!(p.mount_over_native, Some(0.5));
        let q = PhaseResult::new(Op::Read, 8, String::new(), systems, vec![]);
        assert_eq!(q.reference, System::Local);
        assert_eq!(q.mount_over_reference, Some(0.01));
        assert_eq!(q.label(), "read ×8");
    }

    #[test]
    fn every_operation_runs_on_cairn_first_and_on_its_reference() {
        for op in Op::ALL {
            let s = op.systems();
            assert_eq!(&s[..2], &[System::Mount, System::Native]);
            assert!(s.contains(&op.reference()), "{}", op.name());
        }
    }
}
