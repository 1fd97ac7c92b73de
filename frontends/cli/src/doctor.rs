//! `cairn doctor [PATH]`: the routine a platform team runs when a training
//! job is slow, as one command with a verdict per check.
//!
//! # What it measures
//! * **I/O on PATH** (skipped with `--quick`): sequential read (1 MiB
//!   requests, 4 jobs, direct), random read (4 KiB, 16 jobs, direct),
//!   checkpoint save (write a temporary file, fsync, rename into place —
//!   what `torch.save` through a mount does) and restore (read it back).
//! * **Cache** (with a cache directory): the merged counters of the
//!   clients publishing there (`cairn cache stats`), read before and after
//!   the I/O, so the eviction rate is a rate over this run.
//! * **Cluster**: meta quorum and leader, chunkservers alive and their
//!   space, under-replicated chains, the leader's clock against this
//!   host's, and the data-plane round trip to every chunkserver shard.
//! * **Host**: kernel, CPUs, memory, FUSE settings (facts, no verdict).
//!
//! # Where it measures
//! PATH is a directory. When it exists on this machine it is measured
//! through the local file system — a Cairn mount, or any other directory
//! as a baseline (the report names its file system type). Otherwise it
//! is an absolute Cairn path, measured through the client library with
//! no block cache (the library's equivalent of direct I/O). Direct I/O on
//! a local path uses `O_DIRECT`; where the file system refuses it, the
//! reads run buffered after the file's pages were dropped with
//! `posix_fadvise(DONTNEED)`, and the check says so.
//!
//! # Verdicts
//! The eight training signals carry the thresholds platform teams use
//! (issue 18), as warning / critical:
//! * `data_read_throughput`, MB/s: below 100 / below 50;
//! * `data_read_latency`, ms (p99 of the random reads): above 100 / 500;
//! * `checkpoint_save_time`, `checkpoint_restore_time`, s: above 30 / 60
//!   (meant for the default 1 GiB);
//! * `cache_hit_ratio`, %: below 85 / 70; `prefetch_hit_ratio`, %: below
//!   80 / 60; `cache_eviction_rate`, ops/s: above 1000 / 5000.
//!
//! Cluster checks: no leader or no majority of voters is critical, an
//! unreachable voter a warning; a dead chunkserver a warning, none alive
//! critical; the fullest chunkserver above 80 % used a warning, above 90 %
//! critical; any under-replicated chain a warning; clock skew above
//! 100 ms a warning, above 1 s critical (leases and mtimes assume clocks
//! within NTP's reach); a chunkserver round trip p50 above 1 ms a warning,
//! above 10 ms critical (one data centre). A check that cannot run is
//! `failed`, which counts as critical. The command exits 0 unless a check
//! is critical or failed.
//!
//! # Test files
//! Everything goes into one directory, `PATH/.cairn-doctor-<host>-<pid>`,
//! removed at the end, on failure, and on SIGINT/SIGTERM (the command
//! stops its work first). A kill -9 leaves it behind; its name says whose
//! it is.

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use cairn_client::cache::{self, CacheStats};
use cairn_client::checkpoint::Checkpoints;
use cairn_client::data::{DataPool, into_result, ping_request};
use cairn_client::{Client, MetaClient};
use serde::Serialize;
use serde_json::{Value, json};

use crate::data::DataArgs;
use crate::progress::Progress;

const MIB: u64 = 1 << 20;
const SEQ_JOBS: usize = 4;
const RANDOM_JOBS: usize = 16;
const RANDOM_SIZE: u64 = 4096;
const PINGS: usize = 20;

/// Set when a signal stops the run: the blocking I/O threads (which a
/// dropped future does not stop) give up at their next request, so none
/// writes into the test directory while it is removed.
static STOP: AtomicBool = AtomicBool::new(false);

fn check_stop() -> anyhow::Result<()> {
    if STOP.load(Ordering::Relaxed) {
        anyhow::bail!("stopped");
    }
    Ok(())
}

/// Flags of `cairn doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Directory to measure: a directory on this machine (a Cairn mount,
    /// or any directory as a baseline), or else an absolute Cairn path
    /// read through the client library.
    pub path: String,

    /// Data read by the sequential-read check, split over 4 files and
    /// jobs; the random reads use the same files.
    #[arg(long, default_value = "1GiB", value_parser = cairn_proto::units::parse_size, value_name = "SIZE")]
    pub read_size: u64,

    /// Size of the checkpoint saved and restored (the time thresholds are
    /// meant for 1 GiB).
    #[arg(long, default_value = "1GiB", value_parser = cairn_proto::units::parse_size, value_name = "SIZE")]
    pub checkpoint_size: u64,

    /// 4 KiB random reads, spread over 16 jobs.
    #[arg(long, default_value_t = 8000, value_name = "N")]
    pub random_reads: usize,

    /// Only the cluster, cache and host checks: no test files, no I/O.
    #[arg(long)]
    pub quick: bool,

    /// Also write the whole report as JSON to FILE (to attach to a
    /// ticket); `--json` prints it on stdout instead of the table.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// Cache directory of the clients whose cache counters to judge (what
    /// `cairn cache stats` reads); the measurements themselves use no
    /// cache.
    #[arg(long, env = "CAIRN_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Key file of an encrypted volume, as VOLUME=PATH (for a Cairn PATH
    /// on an encrypted volume; repeat, or separate with commas).
    #[arg(
        long = "key-file",
        env = "CAIRN_KEY_FILES",
        value_delimiter = ',',
        value_name = "VOLUME=PATH"
    )]
    pub key_files: Vec<String>,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// A fact without a threshold.
    Info,
    /// Within its thresholds.
    Ok,
    /// Past the warning threshold.
    Warning,
    /// Past the critical threshold.
    Critical,
    /// The check could not run (counts as critical).
    Failed,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Info => "info",
            Verdict::Ok => "ok",
            Verdict::Warning => "WARNING",
            Verdict::Critical => "CRITICAL",
            Verdict::Failed => "FAILED",
        }
    }
}

/// A check's thresholds: `value < warning` is bad when lower is worse,
/// `value > warning` when higher is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    /// The warning bound.
    pub warning: f64,
    /// The critical bound.
    pub critical: f64,
    /// Whether lower values are the bad ones (throughput, ratios).
    pub lower_is_worse: bool,
}

impl Threshold {
    const fn below(warning: f64, critical: f64) -> Self {
        Self {
            warning,
            critical,
            lower_is_worse: true,
        }
    }

    const fn above(warning: f64, critical: f64) -> Self {
        Self {
            warning,
            critical,
            lower_is_worse: false,
        }
    }

    /// The verdict of `value`.
    pub fn verdict(&self, value: f64) -> Verdict {
        let past = |bound: f64| {
            if self.lower_is_worse {
                value < bound
            } else {
                value > bound
            }
        };
        if past(self.critical) {
            Verdict::Critical
        } else if past(self.warning) {
            Verdict::Warning
        } else {
            Verdict::Ok
        }
    }

    fn describe(&self) -> String {
        let op = if self.lower_is_worse { "<" } else { ">" };
        format!(
            "warning {op} {}, critical {op} {}",
            self.warning, self.critical
        )
    }
}

/// The training signals' thresholds.
pub mod signals {
    use super::Threshold;
    /// MB/s.
    pub const DATA_READ_THROUGHPUT: Threshold = Threshold::below(100.0, 50.0);
    /// ms.
    pub const DATA_READ_LATENCY: Threshold = Threshold::above(100.0, 500.0);
    /// s.
    pub const CHECKPOINT_TIME: Threshold = Threshold::above(30.0, 60.0);
    /// %.
    pub const CACHE_HIT_RATIO: Threshold = Threshold::below(85.0, 70.0);
    /// %.
    pub const PREFETCH_HIT_RATIO: Threshold = Threshold::below(80.0, 60.0);
    /// ops/s.
    pub const CACHE_EVICTION_RATE: Threshold = Threshold::above(1000.0, 5000.0);
    /// % of capacity.
    pub const SPACE_USED: Threshold = Threshold::above(80.0, 90.0);
    /// ms, absolute.
    pub const CLOCK_SKEW: Threshold = Threshold::above(100.0, 1000.0);
    /// µs, p50.
    pub const CHUNKSERVER_RTT: Threshold = Threshold::above(1000.0, 10_000.0);
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Group: io, cache, cluster or host.
    pub group: &'static str,
    /// Name (the training signals keep their metric names).
    pub name: String,
    /// The measurement, when there is one.
    pub value: Option<f64>,
    /// Its unit.
    pub unit: &'static str,
    /// The verdict.
    pub verdict: Verdict,
    /// The thresholds applied, in words.
    pub thresholds: Option<String>,
    /// What was measured and how, or why it failed.
    pub detail: String,
}

impl Check {
    fn measured(
        group: &'static str,
        name: &str,
        value: f64,
        unit: &'static str,
        t: Threshold,
        detail: String,
    ) -> Self {
        Self {
            group,
            name: name.to_string(),
            value: Some(value),
            unit,
            verdict: t.verdict(value),
            thresholds: Some(t.describe()),
            detail,
        }
    }

    fn fact(group: &'static str, name: &str, verdict: Verdict, detail: String) -> Self {
        Self {
            group,
            name: name.to_string(),
            value: None,
            unit: "",
            verdict,
            thresholds: None,
            detail,
        }
    }

    fn failed(group: &'static str, name: &str, e: &anyhow::Error) -> Self {
        Self::fact(group, name, Verdict::Failed, format!("{e:#}"))
    }
}

/// Where the I/O checks run.
enum Target {
    /// A directory of this machine's file system.
    Local { dir: PathBuf, fs_type: String },
    /// A Cairn directory, through the client library.
    Cairn { dir: String, client: Client },
}

/// `cairn doctor`.
///
/// # Errors
/// PATH is neither a local nor a Cairn directory, the report cannot be
/// written, or a check is critical or failed (after printing the report).
pub async fn run(
    meta: &str,
    timeout: Duration,
    args: &DoctorArgs,
    json: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    let started = SystemTime::now();
    let mut checks = Vec::new();
    let mut signals = crate::signal::Signals::new().context("installing signal handlers")?;
    let target = resolve(meta, timeout, args).await?;
    let cache_before = cache_stats(args.cache_dir.as_deref());
    let clock = Instant::now();
    if !args.quick {
        let work_dir = work_dir_name();
        let io = io_checks(&target, &work_dir, args, quiet, &mut checks);
        let outcome = tokio::select! {
            r = io => r,
            sig = signals.recv() => {
                STOP.store(true, Ordering::Relaxed);
                Err(anyhow::anyhow!("stopped by {sig}"))
            }
        };
        // The I/O future is dropped here: nothing writes any more.
        let cleanup = remove_work_dir(&target, &work_dir).await;
        if let Err(e) = outcome {
            if let Err(c) = cleanup {
                return Err(e.context(format!("and its test files stay behind: {c:#}")));
            }
            if e.to_string().starts_with("stopped by") {
                anyhow::bail!("doctor: {e}; its test files were removed");
            }
            checks.push(Check::failed("io", "io", &e));
        } else if let Err(c) = cleanup {
            checks.push(Check::failed("io", "test files removed", &c));
        }
    }
    cache_checks(
        args.cache_dir.as_deref(),
        cache_before.as_ref(),
        clock.elapsed(),
        &mut checks,
    );
    step(quiet, "cluster health");
    cluster_checks(meta, timeout, &target, &mut checks).await;
    host_checks(&target, &mut checks);
    let worst = checks
        .iter()
        .map(|c| c.verdict)
        .max()
        .unwrap_or(Verdict::Info);
    let report = report_json(started, args, &target, &checks, worst);
    if let Some(file) = &args.report {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(file, text + "\n")
            .map_err(|e| crate::transfer::local_error("doctor --report", file, &e))?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report_text(&checks, worst));
    }
    if let Target::Cairn { client, .. } = &target {
        crate::data::close(client).await;
    }
    let bad = checks
        .iter()
        .filter(|c| c.verdict >= Verdict::Critical)
        .count();
    if bad > 0 {
        anyhow::bail!("doctor: {bad} check(s) critical or failed");
    }
    Ok(())
}

fn step(quiet: bool, what: &str) {
    if !quiet {
        eprintln!("doctor: {what}");
    }
}

async fn resolve(meta: &str, timeout: Duration, args: &DoctorArgs) -> anyhow::Result<Target> {
    let local = Path::new(&args.path);
    match std::fs::metadata(local) {
        Ok(m) if m.is_dir() => {
            let dir = std::fs::canonicalize(local)
                .map_err(|e| crate::transfer::local_error("doctor", local, &e))?;
            let fs_type = fs_type_of(&dir).unwrap_or_else(|| "unknown".into());
            return Ok(Target::Local { dir, fs_type });
        }
        Ok(_) => anyhow::bail!("doctor {}: not a directory", args.path),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(crate::transfer::local_error("doctor", local, &e));
        }
        Err(_) => {}
    }
    if !args.path.starts_with('/') {
        anyhow::bail!(
            "doctor {}: no such local directory, and not an absolute Cairn path",
            args.path
        );
    }
    // Reads through the library with no block cache: its direct I/O.
    let direct = DataArgs {
        cache_dir: None,
        cache_size: 0,
        key_files: args.key_files.clone(),
    };
    let client = crate::data::connect(meta, &direct, timeout).await?;
    let attr = client
        .stat(&args.path)
        .await
        .map_err(|e| anyhow::anyhow!("doctor {}: {}", args.path, e.message))?;
    if attr.kind != cairn_proto::meta::FileType::Directory as i32 {
        anyhow::bail!("doctor {}: not a directory", args.path);
    }
    Ok(Target::Cairn {
        dir: args.path.trim_end_matches('/').to_string(),
        client,
    })
}

/// The file system type of the mount holding `dir` (the longest mount
/// point that is a prefix of it in /proc/self/mountinfo).
pub(crate) fn fs_type_of(dir: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        let (Some(point), Some(fs)) = (fields.get(4), fields.get(sep + 1)) else {
            continue;
        };
        let point = point.replace("\\040", " ");
        if dir.starts_with(&point) && best.as_ref().is_none_or(|(n, _)| point.len() >= *n) {
            // `cairn mount` names its source "cairn" (type fuse).
            let fs = match fields.get(sep + 2) {
                Some(&"cairn") if !fs.contains("cairn") => format!("{fs} (cairn)"),
                _ => (*fs).to_string(),
            };
            best = Some((point.len(), fs));
        }
    }
    best.map(|(_, fs)| fs)
}

fn work_dir_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!(".cairn-doctor-{host}-{}", std::process::id())
}

/// Bytes of the pattern every test file repeats (pseudo-random, so a
/// compressed volume stores it whole).
fn pattern() -> Bytes {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(8 * MIB as usize);
    while v.len() < 8 * MIB as usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    Bytes::from(v)
}

/// A small deterministic generator for the random offsets.
fn next(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn io_checks(
    target: &Target,
    work_dir: &str,
    args: &DoctorArgs,
    quiet: bool,
    checks: &mut Vec<Check>,
) -> anyhow::Result<()> {
    let data = pattern();
    let file_size = (args.read_size / SEQ_JOBS as u64).max(MIB) / MIB * MIB;
    let total = file_size * SEQ_JOBS as u64;
    let skew = match target {
        Target::Local { dir, .. } => {
            let d = dir.join(work_dir);
            std::fs::create_dir(&d).map_err(|e| crate::transfer::local_error("doctor", &d, &e))?;
            let f = d.join("clock");
            let t0 = SystemTime::now();
            File::create(&f).map_err(|e| crate::transfer::local_error("doctor", &f, &e))?;
            let t1 = SystemTime::now();
            let m = std::fs::metadata(&f)?.modified()?;
            (m, t0, t1)
        }
        Target::Cairn { dir, client } => {
            let d = format!("{dir}/{work_dir}");
            client
                .create_dir_all(&d)
                .await
                .map_err(|e| anyhow::anyhow!("creating {d}: {}", e.message))?;
            let clock = format!("{d}/clock");
            let t0 = SystemTime::now();
            let f = client.create(&clock).await?;
            let t1 = SystemTime::now();
            f.close().await?;
            let ns = client.stat(&clock).await?.mtime_ns;
            let m = UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(0));
            (m, t0, t1)
        }
    };
    checks.push(clock_check(skew.0, skew.1, skew.2));

    let what = format!(
        "writing the read set ({} in {SEQ_JOBS} files)",
        crate::format::human_bytes(total)
    );
    let progress = phase(quiet, &what, total);
    let files: Vec<String> = (0..SEQ_JOBS).map(|i| format!("read-{i}")).collect();
    for name in &files {
        write_file(target, work_dir, name, file_size, &data, false, &progress).await?;
    }
    progress.finish();

    let progress = phase(
        quiet,
        "sequential read: 1 MiB requests, 4 jobs, direct",
        total,
    );
    let (elapsed, note) = sequential_read(target, work_dir, &files, file_size, &progress).await?;
    progress.finish();
    let mbps = total as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9);
    checks.push(Check::measured(
        "io",
        "data_read_throughput",
        round(mbps, 1),
        "MB/s",
        signals::DATA_READ_THROUGHPUT,
        format!(
            "{} read in {:.2} s by {SEQ_JOBS} jobs, 1 MiB requests{note}",
            crate::format::human_bytes(total),
            elapsed.as_secs_f64()
        ),
    ));

    step(
        quiet,
        &format!(
            "random read: {} × 4 KiB, {RANDOM_JOBS} jobs, direct",
            args.random_reads
        ),
    );
    let (mut lat, elapsed, note) =
        random_read(target, work_dir, &files, file_size, args.random_reads).await?;
    lat.sort_unstable();
    let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    checks.push(Check::measured(
        "io",
        "data_read_latency",
        round(p99.as_secs_f64() * 1e3, 3),
        "ms",
        signals::DATA_READ_LATENCY,
        format!(
            "p99 of {} 4 KiB random reads by {RANDOM_JOBS} jobs; p50 {:.3} ms, {:.0} reads/s{note}",
            lat.len(),
            p50.as_secs_f64() * 1e3,
            lat.len() as f64 / elapsed.as_secs_f64().max(1e-9)
        ),
    ));

    let size = args.checkpoint_size.max(MIB) / MIB * MIB;
    let what = format!(
        "checkpoint save: {} (write, fsync, rename)",
        crate::format::human_bytes(size)
    );
    let progress = phase(quiet, &what, size);
    let t = Instant::now();
    save_checkpoint(target, work_dir, size, &data, &progress).await?;
    let save = t.elapsed();
    progress.finish();
    checks.push(checkpoint_check(
        "checkpoint_save_time",
        save,
        size,
        "saved",
        "",
    ));

    let progress = phase(quiet, "checkpoint restore", size);
    let t = Instant::now();
    let note = restore_checkpoint(target, work_dir, size, &data, &progress).await?;
    let restore = t.elapsed();
    progress.finish();
    checks.push(checkpoint_check(
        "checkpoint_restore_time",
        restore,
        size,
        "restored and checked",
        note,
    ));
    Ok(())
}

/// Announces the measurement `what` and returns its progress bar over
/// `bytes`.
fn phase(quiet: bool, what: &str, bytes: u64) -> Arc<Progress> {
    step(quiet, what);
    Arc::new(Progress::new("doctor", 0, Some(bytes), quiet).with_label(what.to_string()))
}

/// A checkpoint time check: `size` bytes `done` in `took`.
fn checkpoint_check(name: &str, took: Duration, size: u64, done: &str, note: &str) -> Check {
    Check::measured(
        "io",
        name,
        round(took.as_secs_f64(), 3),
        "s",
        signals::CHECKPOINT_TIME,
        format!(
            "{} {done} at {:.0} MB/s{note}",
            crate::format::human_bytes(size),
            size as f64 / 1e6 / took.as_secs_f64().max(1e-9)
        ),
    )
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// The clock check: the leader stamped `mtime` between `t0` and `t1` of
/// this host's clock.
fn clock_check(mtime: SystemTime, t0: SystemTime, t1: SystemTime) -> Check {
    let ns = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    let mid = (ns(t0) + ns(t1)) / 2.0;
    let uncertainty = (ns(t1) - ns(t0)) / 2.0;
    let skew = ns(mtime) - mid;
    Check::measured(
        "cluster",
        "clock_skew",
        round(skew.abs(), 1),
        "ms",
        signals::CLOCK_SKEW,
        format!(
            "the file system stamped a new file {skew:+.1} ms from this host's clock (± {uncertainty:.1} ms, half the round trip)"
        ),
    )
}

fn local_path(target: &Target, work_dir: &str, name: &str) -> PathBuf {
    match target {
        Target::Local { dir, .. } => dir.join(work_dir).join(name),
        Target::Cairn { .. } => PathBuf::new(),
    }
}

fn cairn_path(target: &Target, work_dir: &str, name: &str) -> String {
    match target {
        Target::Cairn { dir, .. } => format!("{dir}/{work_dir}/{name}"),
        Target::Local { .. } => String::new(),
    }
}

/// Writes `size` bytes of the pattern to `name` (1 MiB writes, fsync at
/// the end); into a temporary name then renamed over `name` when
/// `publish`.
async fn write_file(
    target: &Target,
    work_dir: &str,
    name: &str,
    size: u64,
    data: &Bytes,
    publish: bool,
    progress: &Arc<Progress>,
) -> anyhow::Result<()> {
    let tmp = if publish {
        format!("{name}.tmp")
    } else {
        name.to_string()
    };
    match target {
        Target::Local { .. } => {
            let (path, final_path) = (
                local_path(target, work_dir, &tmp),
                local_path(target, work_dir, name),
            );
            let (data, progress) = (data.clone(), progress.clone());
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let io = |e: std::io::Error| crate::transfer::local_error("doctor", &path, &e);
                let mut f = File::create(&path).map_err(io)?;
                let mut at = 0u64;
                while at < size {
                    check_stop()?;
                    let n = MIB.min(size - at);
                    let off = (at % data.len() as u64) as usize;
                    f.write_all(&data[off..off + n as usize]).map_err(io)?;
                    at += n;
                    progress.add_bytes(n);
                }
                f.sync_all().map_err(io)?;
                if publish {
                    std::fs::rename(&path, &final_path).map_err(io)?;
                }
                Ok(())
            })
            .await?
        }
        Target::Cairn { client, .. } => {
            let path = cairn_path(target, work_dir, &tmp);
            let f = client.create(&path).await?;
            let mut at = 0u64;
            while at < size {
                check_stop()?;
                let n = (8 * MIB).min(size - at);
                let off = (at % data.len() as u64) as usize;
                f.write_at(at, data.slice(off..off + n as usize)).await?;
                at += n;
                progress.add_bytes(n);
            }
            f.fsync().await?;
            f.close().await?;
            if publish {
                client
                    .rename(&path, &cairn_path(target, work_dir, name))
                    .await?;
            }
            Ok(())
        }
    }
}

/// Opens `path` for direct reads: `O_DIRECT`, or (when the file system
/// refuses it) buffered after dropping the file's cached pages; the
/// second value says which.
fn open_direct(path: &Path) -> std::io::Result<(File, bool)> {
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let f = File::open(path)?;
            use std::os::fd::AsRawFd as _;
            // Advisory: a failure leaves cached pages, which the check's
            // note then overstates; it does not make the read wrong.
            let _ = drop_cached_pages(f.as_raw_fd());
            Ok((f, false))
        }
        Err(e) => Err(e),
    }
}

fn drop_cached_pages(fd: i32) -> i32 {
    // SAFETY: posix_fadvise reads no memory of ours; `fd` is a descriptor
    // the caller owns and keeps open across the call.
    #[allow(unsafe_code, reason = "a libc call on an owned descriptor")]
    unsafe {
        libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED)
    }
}

/// A buffer of `n` bytes aligned for `O_DIRECT`.
fn aligned(n: usize) -> (Vec<u8>, usize) {
    let v = vec![0u8; n + 4096];
    let off = v.as_ptr().align_offset(4096);
    (v, off)
}

fn direct_note(direct: bool) -> &'static str {
    if direct {
        ""
    } else {
        "; O_DIRECT refused by the file system: buffered reads after POSIX_FADV_DONTNEED"
    }
}

async fn sequential_read(
    target: &Target,
    work_dir: &str,
    files: &[String],
    size: u64,
    progress: &Arc<Progress>,
) -> anyhow::Result<(Duration, &'static str)> {
    let t = Instant::now();
    match target {
        Target::Local { .. } => {
            let mut jobs = Vec::new();
            for name in files {
                let path = local_path(target, work_dir, name);
                let progress = progress.clone();
                jobs.push(tokio::task::spawn_blocking(
                    move || -> anyhow::Result<bool> {
                        let io =
                            |e: std::io::Error| crate::transfer::local_error("doctor", &path, &e);
                        let (f, direct) = open_direct(&path).map_err(io)?;
                        let (mut buf, off) = aligned(MIB as usize);
                        let b = &mut buf[off..off + MIB as usize];
                        let mut at = 0;
                        while at < size {
                            check_stop()?;
                            let n = f.read_at(b, at).map_err(io)?;
                            if n == 0 {
                                anyhow::bail!(
                                    "{}: ends at {at} bytes, {size} were written",
                                    path.display()
                                );
                            }
                            at += n as u64;
                            progress.add_bytes(n as u64);
                        }
                        Ok(direct)
                    },
                ));
            }
            let mut direct = true;
            for j in jobs {
                direct &= j.await??;
            }
            Ok((t.elapsed(), direct_note(direct)))
        }
        Target::Cairn { client, .. } => {
            let reads = files.iter().map(|name| {
                let path = cairn_path(target, work_dir, name);
                async move {
                    let f = client.open_read(&path).await?;
                    let mut at = 0;
                    while at < size {
                        check_stop()?;
                        let n = MIB.min(size - at);
                        let got = f.read_at(at, n as usize).await?;
                        anyhow::ensure!(got.len() as u64 == n, "{path}: short read at {at}");
                        at += n;
                        progress.add_bytes(n);
                    }
                    f.close().await?;
                    anyhow::Ok(())
                }
            });
            futures::future::try_join_all(reads).await?;
            Ok((t.elapsed(), ""))
        }
    }
}

async fn random_read(
    target: &Target,
    work_dir: &str,
    files: &[String],
    size: u64,
    reads: usize,
) -> anyhow::Result<(Vec<Duration>, Duration, &'static str)> {
    let blocks = size / RANDOM_SIZE;
    let per_job = reads.div_ceil(RANDOM_JOBS).max(1);
    let t = Instant::now();
    match target {
        Target::Local { .. } => {
            let paths: Arc<Vec<PathBuf>> = Arc::new(
                files
                    .iter()
                    .map(|n| local_path(target, work_dir, n))
                    .collect(),
            );
            let mut jobs = Vec::new();
            for j in 0..RANDOM_JOBS {
                let paths = paths.clone();
                jobs.push(tokio::task::spawn_blocking(
                    move || -> anyhow::Result<(Vec<Duration>, bool)> {
                        let mut opened = Vec::new();
                        let mut direct = true;
                        for p in paths.iter() {
                            let (f, d) = open_direct(p)
                                .map_err(|e| crate::transfer::local_error("doctor", p, &e))?;
                            direct &= d;
                            opened.push(f);
                        }
                        let (mut buf, off) = aligned(RANDOM_SIZE as usize);
                        let b = &mut buf[off..off + RANDOM_SIZE as usize];
                        let mut x = j as u64 + 1;
                        let mut lat = Vec::with_capacity(per_job);
                        for _ in 0..per_job {
                            check_stop()?;
                            let f = &opened[(next(&mut x) % opened.len() as u64) as usize];
                            let at = next(&mut x) % blocks * RANDOM_SIZE;
                            let t = Instant::now();
                            f.read_exact_at(b, at)?;
                            lat.push(t.elapsed());
                        }
                        Ok((lat, direct))
                    },
                ));
            }
            let mut all = Vec::new();
            let mut direct = true;
            for j in jobs {
                let (lat, d) = j.await??;
                all.extend(lat);
                direct &= d;
            }
            Ok((all, t.elapsed(), direct_note(direct)))
        }
        Target::Cairn { client, .. } => {
            let mut handles = Vec::new();
            for name in files {
                handles.push(
                    client
                        .open_read(&cairn_path(target, work_dir, name))
                        .await?,
                );
            }
            let handles = &handles;
            let jobs = (0..RANDOM_JOBS).map(|j| async move {
                let mut x = j as u64 + 1;
                let mut lat = Vec::with_capacity(per_job);
                for _ in 0..per_job {
                    check_stop()?;
                    let f = &handles[(next(&mut x) % handles.len() as u64) as usize];
                    let at = next(&mut x) % blocks * RANDOM_SIZE;
                    let t = Instant::now();
                    let got = f.read_at(at, RANDOM_SIZE as usize).await?;
                    lat.push(t.elapsed());
                    anyhow::ensure!(got.len() as u64 == RANDOM_SIZE, "short random read at {at}");
                }
                anyhow::Ok(lat)
            });
            let all: Vec<Duration> = futures::future::try_join_all(jobs)
                .await?
                .into_iter()
                .flatten()
                .collect();
            Ok((all, t.elapsed(), ""))
        }
    }
}

async fn save_checkpoint(
    target: &Target,
    work_dir: &str,
    size: u64,
    data: &Bytes,
    progress: &Arc<Progress>,
) -> anyhow::Result<()> {
    match target {
        Target::Local { .. } => {
            write_file(target, work_dir, "checkpoint", size, data, true, progress).await
        }
        Target::Cairn { client, .. } => {
            let ckpt =
                Checkpoints::new(client.clone(), &cairn_path(target, work_dir, "checkpoints"));
            let mut reader = PatternReader {
                data: data.clone(),
                at: 0,
                size,
            };
            ckpt.save_reader("doctor", &mut reader, Default::default(), |n| {
                progress.set_bytes(n)
            })
            .await?;
            Ok(())
        }
    }
}

/// Reads the checkpoint back whole and checks its bytes.
async fn restore_checkpoint(
    target: &Target,
    work_dir: &str,
    size: u64,
    data: &Bytes,
    progress: &Arc<Progress>,
) -> anyhow::Result<&'static str> {
    let check = |at: u64, got: &[u8]| {
        let off = (at % data.len() as u64) as usize;
        got == &data[off..off + got.len()]
    };
    match target {
        Target::Local { .. } => {
            let path = local_path(target, work_dir, "checkpoint");
            let (data, progress) = (data.clone(), progress.clone());
            tokio::task::spawn_blocking(move || -> anyhow::Result<&'static str> {
                let io = |e: std::io::Error| crate::transfer::local_error("doctor", &path, &e);
                let (f, direct) = open_direct(&path).map_err(io)?;
                let (mut buf, off) = aligned(MIB as usize);
                let b = &mut buf[off..off + MIB as usize];
                let mut at = 0;
                while at < size {
                    check_stop()?;
                    let n = f.read_at(b, at).map_err(io)?;
                    anyhow::ensure!(n > 0, "{}: ends at {at} bytes of {size}", path.display());
                    let o = (at % data.len() as u64) as usize;
                    anyhow::ensure!(
                        b[..n] == data[o..o + n],
                        "{}: other bytes at {at}",
                        path.display()
                    );
                    at += n as u64;
                    progress.add_bytes(n as u64);
                }
                Ok(direct_note(direct))
            })
            .await?
        }
        Target::Cairn { client, .. } => {
            let ckpt =
                Checkpoints::new(client.clone(), &cairn_path(target, work_dir, "checkpoints"));
            let (_, got) = ckpt.load("doctor").await?;
            anyhow::ensure!(
                got.len() as u64 == size,
                "the checkpoint came back with {} bytes of {size}",
                got.len()
            );
            for at in (0..size).step_by(MIB as usize) {
                let end = (at + MIB).min(size);
                anyhow::ensure!(
                    check(at, &got[at as usize..end as usize]),
                    "the checkpoint came back with other bytes at {at}"
                );
            }
            progress.set_bytes(size);
            Ok("")
        }
    }
}

/// `size` bytes of the pattern, as an `AsyncRead`.
struct PatternReader {
    data: Bytes,
    at: u64,
    size: u64,
}

impl tokio::io::AsyncRead for PatternReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let left = self.size - self.at;
        let off = (self.at % self.data.len() as u64) as usize;
        let n = (buf.remaining() as u64)
            .min(left)
            .min((self.data.len() - off) as u64) as usize;
        buf.put_slice(&self.data[off..off + n]);
        self.at += n as u64;
        std::task::Poll::Ready(Ok(()))
    }
}

async fn remove_work_dir(target: &Target, work_dir: &str) -> anyhow::Result<()> {
    match target {
        Target::Local { dir, .. } => {
            let d = dir.join(work_dir);
            match std::fs::remove_dir_all(&d) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(crate::transfer::local_error("doctor", &d, &e)),
            }
        }
        Target::Cairn { dir, client } => {
            let path = format!("{dir}/{work_dir}");
            let attr = match client.stat(&path).await {
                Ok(a) => a,
                Err(e) if e.code == cairn_client::ErrorCode::NotFound => return Ok(()),
                Err(e) => anyhow::bail!("removing {path}: {}", e.message),
            };
            let parent = client
                .stat(dir)
                .await
                .map_err(|e| anyhow::anyhow!("removing {path}: {}", e.message))?;
            client
                .meta()
                .remove_tree(
                    cairn_proto::ids::InodeId(parent.ino),
                    work_dir,
                    cairn_proto::ids::InodeId(attr.ino),
                    &path,
                    true,
                )
                .await
                .map_err(|(at, e)| anyhow::anyhow!("removing {at}: {}", e.message))
        }
    }
}

fn cache_stats(dir: Option<&Path>) -> Option<CacheStats> {
    let per_process = cache::collect_stats(dir?).ok()?;
    Some(CacheStats::merge(&per_process))
}

fn cache_checks(
    dir: Option<&Path>,
    before: Option<&CacheStats>,
    elapsed: Duration,
    checks: &mut Vec<Check>,
) {
    let (Some(dir), Some(now)) = (dir, cache_stats(dir)) else {
        checks.push(Check::fact(
            "cache",
            "cache",
            Verdict::Info,
            "no cache directory given (--cache-dir or CAIRN_CACHE_DIR): the clients' cache counters were not read".into(),
        ));
        return;
    };
    let mem = &now.memory;
    let ssd_hits = now.ssd.as_ref().map_or(0, |s| s.hits);
    let lookups = mem.hits + mem.misses;
    let where_ = format!("clients publishing in {}", dir.display());
    if lookups == 0 {
        checks.push(Check::fact(
            "cache",
            "cache_hit_ratio",
            Verdict::Info,
            format!("no reads recorded yet by the {where_}"),
        ));
    } else {
        let ratio = (mem.hits + ssd_hits) as f64 / lookups as f64 * 100.0;
        checks.push(Check::measured(
            "cache",
            "cache_hit_ratio",
            round(ratio, 1),
            "%",
            signals::CACHE_HIT_RATIO,
            format!(
                "{} block lookups by the {where_}: memory {} hits, ssd {} hits",
                lookups, mem.hits, ssd_hits
            ),
        ));
    }
    if now.prefetched_blocks > 0 {
        checks.push(Check::measured(
            "cache",
            "prefetch_hit_ratio",
            round(now.prefetch_hit_ratio() * 100.0, 1),
            "%",
            signals::PREFETCH_HIT_RATIO,
            format!(
                "{} of {} prefetched blocks were read",
                now.prefetch_hits, now.prefetched_blocks
            ),
        ));
    }
    let evictions = |s: &CacheStats| s.memory.evictions + s.ssd.as_ref().map_or(0, |t| t.evictions);
    let delta = evictions(&now).saturating_sub(before.map_or(0, evictions));
    checks.push(Check::measured(
        "cache",
        "cache_eviction_rate",
        round(delta as f64 / elapsed.as_secs_f64().max(1e-3), 1),
        "ops/s",
        signals::CACHE_EVICTION_RATE,
        format!(
            "{delta} evictions over the {:.1} s of this run",
            elapsed.as_secs_f64()
        ),
    ));
    for (tier, t) in [("memory", Some(mem)), ("ssd", now.ssd.as_ref())] {
        if let Some(t) = t {
            checks.push(Check::fact(
                "cache",
                &format!("cache tier {tier}"),
                Verdict::Info,
                format!(
                    "{} of {} used, hit ratio {:.1} %, {} evictions",
                    crate::format::human_bytes(t.used_bytes),
                    crate::format::human_bytes(t.capacity_bytes),
                    t.hit_ratio() * 100.0,
                    t.evictions
                ),
            ));
        }
    }
}

async fn cluster_checks(meta: &str, timeout: Duration, target: &Target, checks: &mut Vec<Check>) {
    let owned;
    let mc: &MetaClient = match target {
        Target::Cairn { client, .. } => client.meta(),
        Target::Local { .. } => match crate::connect_meta(meta, timeout).await {
            Ok(c) => {
                owned = c;
                &owned
            }
            Err(e) => {
                checks.push(Check::failed("cluster", "meta", &e));
                return;
            }
        },
    };
    match mc.status().await {
        Ok(s) => {
            let h = crate::admin::health(&s);
            let verdict = if !h.ok {
                Verdict::Critical
            } else if h.reachable_voters < h.voters {
                Verdict::Warning
            } else {
                Verdict::Ok
            };
            checks.push(Check::fact("cluster", "meta quorum", verdict, h.summary));
        }
        Err(e) => checks.push(Check::fact(
            "cluster",
            "meta quorum",
            Verdict::Failed,
            format!("--meta {meta}: {}", e.message),
        )),
    }
    let t = match mc.get_chains().await {
        Ok(t) => t,
        Err(e) => {
            checks.push(Check::fact(
                "cluster",
                "chunkservers",
                Verdict::Failed,
                format!("chain table: {}", e.message),
            ));
            return;
        }
    };
    let alive: Vec<_> = t.chunkservers.iter().filter(|s| s.alive).collect();
    let verdict = if alive.is_empty() {
        Verdict::Critical
    } else if alive.len() < t.chunkservers.len() {
        Verdict::Warning
    } else {
        Verdict::Ok
    };
    let dead: Vec<String> = t
        .chunkservers
        .iter()
        .filter(|s| !s.alive)
        .map(|s| s.id.to_string())
        .collect();
    checks.push(Check::fact(
        "cluster",
        "chunkservers alive",
        verdict,
        format!(
            "{} of {} alive{}",
            alive.len(),
            t.chunkservers.len(),
            if dead.is_empty() {
                String::new()
            } else {
                format!("; not answering: {}", dead.join(", "))
            }
        ),
    ));
    let (used, cap): (u64, u64) = alive
        .iter()
        .fold((0, 0), |(u, c), s| (u + s.used_bytes, c + s.capacity_bytes));
    if let Some(fullest) = alive
        .iter()
        .filter(|s| s.capacity_bytes > 0)
        .max_by(|a, b| {
            (a.used_bytes as f64 / a.capacity_bytes as f64)
                .total_cmp(&(b.used_bytes as f64 / b.capacity_bytes as f64))
        })
    {
        let pct = fullest.used_bytes as f64 / fullest.capacity_bytes as f64 * 100.0;
        checks.push(Check::measured(
            "cluster",
            "chunkserver space used",
            round(pct, 1),
            "%",
            signals::SPACE_USED,
            format!(
                "fullest is chunkserver {} ({} of {}); all alive: {} of {}",
                fullest.id,
                crate::format::human_bytes(fullest.used_bytes),
                crate::format::human_bytes(fullest.capacity_bytes),
                crate::format::human_bytes(used),
                crate::format::human_bytes(cap)
            ),
        ));
    }
    let rows = crate::cluster::chain_rows(&t);
    let under = rows.iter().filter(|r| r.under_replicated()).count();
    checks.push(Check::fact(
        "cluster",
        "under-replicated chains",
        if under == 0 {
            Verdict::Ok
        } else {
            Verdict::Warning
        },
        format!("{under} of {} chains below their replication", rows.len()),
    ));
    let pool = DataPool::new(Duration::from_secs(2));
    for s in &alive {
        let mut rtts = Vec::new();
        let mut error = None;
        for port in &s.shard_ports {
            let addr = format!("{}:{port}", s.host);
            for _ in 0..PINGS {
                let t = Instant::now();
                match pool
                    .call(&addr, ping_request(), Duration::from_secs(2))
                    .await
                    .and_then(into_result)
                {
                    Ok(_) => rtts.push(t.elapsed()),
                    Err(e) => {
                        error = Some(format!("{addr}: {e}"));
                        break;
                    }
                }
            }
        }
        let name = format!("chunkserver {} round trip", s.id);
        if let Some(e) = error {
            checks.push(Check::fact("cluster", &name, Verdict::Failed, e));
            continue;
        }
        rtts.sort_unstable();
        let p50 = percentile(&rtts, 0.5);
        checks.push(Check::measured(
            "cluster",
            &name,
            round(p50.as_secs_f64() * 1e6, 0),
            "µs",
            signals::CHUNKSERVER_RTT,
            format!(
                "p50 of {} pings to {} ({} shard(s)); max {:.0} µs",
                rtts.len(),
                s.host,
                s.shard_ports.len(),
                rtts.last().map_or(0.0, |d| d.as_secs_f64() * 1e6)
            ),
        ));
    }
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn host_checks(target: &Target, checks: &mut Vec<Check>) {
    let kernel = read_trim("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into());
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let mem = read_trim("/proc/meminfo")
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|k| k.parse::<u64>().ok())
                })
        })
        .map_or_else(
            || "unknown".into(),
            |kib| crate::format::human_bytes(kib * 1024),
        );
    checks.push(Check::fact(
        "host",
        "host",
        Verdict::Info,
        format!("Linux {kernel}, {cpus} CPUs, {mem} memory"),
    ));
    let mut fuse = Vec::new();
    fuse.push(format!(
        "/dev/fuse {}",
        if Path::new("/dev/fuse").exists() {
            "present"
        } else {
            "missing"
        }
    ));
    for (name, path) in [
        (
            "max_user_bgreq",
            "/sys/module/fuse/parameters/max_user_bgreq",
        ),
        (
            "max_user_congthresh",
            "/sys/module/fuse/parameters/max_user_congthresh",
        ),
        ("max_pages_limit", "/proc/sys/fs/fuse/max_pages_limit"),
    ] {
        if let Some(v) = read_trim(path) {
            fuse.push(format!("{name} {v}"));
        }
    }
    let allow_other = read_trim("/etc/fuse.conf")
        .is_some_and(|c| c.lines().any(|l| l.trim() == "user_allow_other"));
    fuse.push(format!(
        "user_allow_other {}",
        if allow_other { "on" } else { "off" }
    ));
    checks.push(Check::fact("host", "fuse", Verdict::Info, fuse.join(", ")));
    let where_ = match target {
        Target::Local { dir, fs_type } => {
            let note = if fs_type.contains("cairn") {
                ""
            } else {
                " (not a Cairn mount: a baseline)"
            };
            format!("{} on {fs_type}{note}", dir.display())
        }
        Target::Cairn { dir, .. } => format!("Cairn path {dir} through the client library"),
    };
    checks.push(Check::fact("host", "measured", Verdict::Info, where_));
}

fn report_json(
    started: SystemTime,
    args: &DoctorArgs,
    target: &Target,
    checks: &[Check],
    worst: Verdict,
) -> Value {
    let (mode, path, fs_type) = match target {
        Target::Local { dir, fs_type } => ("local", dir.display().to_string(), fs_type.clone()),
        Target::Cairn { dir, .. } => ("cairn", dir.clone(), "cairn".into()),
    };
    json!({
        "timestamp": humantime::format_rfc3339_seconds(started).to_string(),
        "cairn_version": env!("CARGO_PKG_VERSION"),
        "command": std::env::args().collect::<Vec<_>>(),
        "target": { "path": path, "mode": mode, "fs_type": fs_type },
        "settings": {
            "read_size_bytes": args.read_size,
            "checkpoint_size_bytes": args.checkpoint_size,
            "random_reads": args.random_reads,
            "quick": args.quick,
        },
        "system": {
            "kernel": read_trim("/proc/sys/kernel/osrelease"),
            "hostname": read_trim("/proc/sys/kernel/hostname"),
            "cpus": std::thread::available_parallelism().map_or(0, usize::from),
        },
        "checks": checks,
        "verdict": worst,
    })
}

fn report_text(checks: &[Check], worst: Verdict) -> String {
    let rows: Vec<Vec<String>> = checks
        .iter()
        .map(|c| {
            vec![
                c.group.to_string(),
                c.name.clone(),
                c.value
                    .map_or_else(String::new, |v| format!("{v} {}", c.unit)),
                c.verdict.label().to_string(),
                c.thresholds.clone().unwrap_or_default(),
                c.detail.clone(),
            ]
        })
        .collect();
    let mut out = crate::format::table(
        &["GROUP", "CHECK", "VALUE", "VERDICT", "THRESHOLDS", "DETAIL"],
        &rows,
        &[2],
    );
    out.push_str(&format!("verdict: {}\n", worst.label()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_classify_at_their_bounds() {
        let t = signals::DATA_READ_THROUGHPUT;
        assert_eq!(t.verdict(100.0), Verdict::Ok);
        assert_eq!(t.verdict(99.9), Verdict::Warning);
        assert_eq!(t.verdict(50.0), Verdict::Warning);
        assert_eq!(t.verdict(49.9), Verdict::Critical);
        let t = signals::DATA_READ_LATENCY;
        assert_eq!(t.verdict(100.0), Verdict::Ok);
        assert_eq!(t.verdict(100.1), Verdict::Warning);
        assert_eq!(t.verdict(500.1), Verdict::Critical);
        assert_eq!(signals::CHECKPOINT_TIME.verdict(61.0), Verdict::Critical);
        assert_eq!(signals::CACHE_HIT_RATIO.verdict(84.0), Verdict::Warning);
        assert_eq!(
            signals::CACHE_EVICTION_RATE.verdict(5001.0),
            Verdict::Critical
        );
        assert_eq!(t.describe(), "warning > 100, critical > 500");
    }

    #[test]
    fn the_worst_verdict_wins_and_failed_counts_as_critical() {
        let v = [Verdict::Info, Verdict::Ok, Verdict::Warning];
        assert_eq!(v.iter().max(), Some(&Verdict::Warning));
        assert!(Verdict::Failed > Verdict::Critical);
    }

    #[test]
    fn clock_skew_is_the_stamp_against_the_midpoint() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1000);
        let t1 = t0 + Duration::from_millis(2);
        let c = clock_check(t0 + Duration::from_millis(251), t0, t1);
        assert_eq!(c.value, Some(250.0));
        assert_eq!(c.verdict, Verdict::Warning);
        assert_eq!(
            clock_check(t0 + Duration::from_millis(1), t0, t1).verdict,
            Verdict::Ok
        );
    }

    #[test]
    fn percentiles_and_the_pattern_reader() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 0.5), Duration::from_millis(51));
        assert_eq!(percentile(&d, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[tokio::test]
    async fn the_pattern_reader_yields_exactly_its_size() {
        use tokio::io::AsyncReadExt as _;
        let data = pattern();
        let mut r = PatternReader {
            data: data.clone(),
            at: 0,
            size: 9 * MIB + 5,
        };
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out.len() as u64, 9 * MIB + 5);
        assert_eq!(&out[8 * MIB as usize..], &data[..MIB as usize + 5]);
    }
}
