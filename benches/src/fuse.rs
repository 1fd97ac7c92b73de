//! The `fuse` workload: Cairn through a real FUSE mount (`cairn mount`,
//! the release binary, as its own process) beside the native client
//! library and the local file system, all in one run on one disk.
//!
//! | phase | mount | native | local |
//! |---|---|---|---|
//! | seq write | fio 1 MiB sequential writes, `end_fsync` | `File::write_at` 1 MiB pieces, fsync, close | the same fio job in a local directory |
//! | seq read | fio 1 MiB sequential reads, cold caches | a fresh client, 1 MiB `read_at` calls | fio, after dropping the page cache |
//! | read 4K QD1 | fio 4 KiB random reads, `O_DIRECT` (every read reaches Cairn) | 4 KiB `read_at`, no client cache | fio with `O_DIRECT` |
//! | read 4K QD1 warm | fio 4 KiB random buffered reads of a file already read once (page cache, kept across opens while unchanged) | — | the same, local |
//! | read 4K ×N | fio, N jobs, `O_DIRECT` | N tasks | fio, N jobs, `O_DIRECT` |
//!
//! fio measures the mount and the local directory with the same job; the
//! native client is timed here. Ratios: mount ÷ native, mount ÷ local
//! (MiB/s and IOPS: higher is better; latency: the mount's p50 over the
//! other's, lower is better). Dropping caches needs root; without it the
//! cold phases say so in the notes.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use cairn_proto::units::parse_size;
use clap::Args;
use serde::Serialize;

use crate::chunk::WARMUP_READS;
use crate::client::cairn;
use crate::latency::LatencySummary;
use crate::layout::{self, random_blocks};
use crate::machine::{self, Machine, drop_caches};
use crate::measure::{Measured, blocking};
use crate::mount::{MountFlags, Mounted, run_mounted};
use crate::report;
use crate::servers::Finished;
use crate::{CommonArgs, ProcessRss, build_profile};

/// Help text of `cairn-bench fuse --help`.
pub const LONG_ABOUT: &str = "\
Cairn through a real FUSE mount, beside the native client library and the
local file system, in one run on one disk.

Starts 3 cairn-meta replicas and 3 cairn-chunkserver processes on 127.0.0.1
(release binaries from --bin-dir), creates a volume with replication 3, and
mounts it with `cairn mount` (the release binary, its own process). Phases:

  seq write   fio, 1 MiB sequential writes of --seq-size, end_fsync, through
              the mount; the native client writing the same size in 1 MiB
              write_at calls then fsync; the same fio job in a local
              directory on the same disk. MiB/s.
  seq read    The --seq-size file read front to back in 1 MiB reads with cold
              caches: fio through the mount after dropping the page cache; a
              freshly connected native client (64 MiB cache, read-ahead on);
              fio on the local file after dropping the page cache. MiB/s.
  read 4K QD1 --random-reads 4 KiB reads at random offsets of a --random-set
              file, one at a time: fio with O_DIRECT through the mount (every
              read reaches Cairn); a native client with no cache; fio with
              O_DIRECT on a local file. Latency p50/p99 in µs.
  read 4K QD1 warm  The same through the page cache after one full read of the
              file: Cairn keeps the kernel's cache across opens while the file
              is unchanged. Mount and local only.
  read 4K xN  --readers jobs (tasks) at once, O_DIRECT. IOPS.

fio must be installed (apt-get install fio). Ratios: mount / native and
mount / local; for latency the mount's p50 over the other's.";

/// The volume the run creates.
const VOLUME: &str = "bench";
/// Bytes per sequential I/O.
const SEQ_IO: u64 = 1 << 20;
/// The native client's memory cache (the client's default, as the mount's).
const DEFAULT_CACHE: u64 = 64 << 20;

/// Flags of `cairn-bench fuse`.
#[derive(Debug, Clone, Args)]
pub struct FuseArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Size of the sequentially written and read file.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    pub seq_size: u64,
    /// Size of the file the random reads address.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub random_set: u64,
    /// Random 4 KiB reads per QD1 run.
    #[arg(long, default_value_t = 5000)]
    pub random_reads: usize,
    /// Concurrent readers of the read 4K xN phase.
    #[arg(long, default_value_t = 16)]
    pub readers: usize,
    #[command(flatten)]
    pub mount: MountFlags,
}

/// One system's figures in one phase.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// "mount", "native" or "local".
    pub system: &'static str,
    /// MiB/s, when the phase moves data.
    pub mib_s: Option<f64>,
    /// Operations per second.
    pub iops: Option<f64>,
    /// Per-operation latency.
    pub latency: Option<LatencySummary>,
}

/// A phase: its systems and the mount's ratios to the others.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// Phase name.
    pub name: &'static str,
    /// What the ratio compares ("MiB/s", "IOPS", "p50").
    pub metric: &'static str,
    /// Figures, mount first.
    pub figures: Vec<Figure>,
    /// mount ÷ native.
    pub mount_over_native: Option<f64>,
    /// mount ÷ local.
    pub mount_over_local: Option<f64>,
}

/// The whole run, for the table and `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct FuseReport {
    pub workload: &'static str,
    pub command_line: Vec<String>,
    pub run: Finished,
    pub machine: Machine,
    pub bench_build: &'static str,
    pub seq_size: u64,
    pub random_set: u64,
    pub random_reads: usize,
    pub readers: usize,
    pub phases: Vec<Phase>,
    pub peak_rss: Vec<ProcessRss>,
    pub notes: Vec<String>,
}

fn metric_of(f: &Figure, metric: &str) -> Option<f64> {
    match metric {
        "MiB/s" => f.mib_s,
        "IOPS" => f.iops,
        _ => f.latency.map(|l| l.p50_us),
    }
}

impl Phase {
    fn new(name: &'static str, metric: &'static str, figures: Vec<Figure>) -> Self {
        let get = |s: &str| {
            figures
                .iter()
                .find(|f| f.system == s)
                .and_then(|f| metric_of(f, metric))
        };
        let ratio = |other: &str| match (get("mount"), get(other)) {
            (Some(m), Some(o)) if o > 0.0 => Some(m / o),
            _ => None,
        };
        Self {
            name,
            metric,
            mount_over_native: ratio("native"),
            mount_over_local: ratio("local"),
            figures,
        }
    }
}

/// Runs fio with `args`; returns the figures of its (group-reported) job.
fn fio(system: &'static str, args: &[String]) -> Result<Figure> {
    let out = Command::new("fio")
        .args([
            "--output-format=json",
            "--group_reporting",
            "--ioengine=psync",
        ])
        .args(args)
        .output()
        .context("running fio (install it: apt-get install fio)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "fio {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            stdout
        );
    }
    let v: serde_json::Value = serde_json::from_str(&stdout[stdout.find('{').unwrap_or(0)..])
        .context("parsing fio's JSON")?;
    let job = &v["jobs"][0];
    let dir = if job["read"]["io_bytes"].as_u64().unwrap_or(0) > 0 {
        &job["read"]
    } else {
        &job["write"]
    };
    let pct = |p: &str| dir["clat_ns"]["percentile"][p].as_f64().map(|n| n / 1000.0);
    let latency = pct("50.000000").map(|p50| LatencySummary {
        p50_us: p50,
        p99_us: pct("99.000000").unwrap_or(0.0),
        p999_us: pct("99.900000").unwrap_or(0.0),
        max_us: dir["clat_ns"]["max"].as_f64().unwrap_or(0.0) / 1000.0,
        mean_us: dir["clat_ns"]["mean"].as_f64().unwrap_or(0.0) / 1000.0,
    });
    Ok(Figure {
        system,
        mib_s: dir["bw_bytes"].as_f64().map(|b| b / f64::from(1 << 20)),
        iops: dir["iops"].as_f64(),
        latency,
    })
}

fn seq_job(path: &Path, rw: &str, size: u64) -> Vec<String> {
    vec![
        "--name=seq".into(),
        format!("--filename={}", path.display()),
        format!("--rw={rw}"),
        "--bs=1M".into(),
        format!("--size={size}"),
        "--end_fsync=1".into(),
    ]
}

fn rand_job(path: &Path, size: u64, ios: usize, jobs: usize, direct: bool) -> Vec<String> {
    vec![
        "--name=rand".into(),
        format!("--filename={}", path.display()),
        "--rw=randread".into(),
        "--bs=4k".into(),
        format!("--size={size}"),
        format!("--number_ios={}", ios.div_ceil(jobs)),
        format!("--numjobs={jobs}"),
        format!("--direct={}", u8::from(direct)),
        "--randrepeat=0".into(),
        // Warm runs read what the page cache holds: fio would drop it.
        "--invalidate=0".into(),
    ]
}

/// The native client's figures from what [`crate::client::cairn`]
/// measured (it times every call and checks the bytes read).
fn native(m: &Measured) -> Figure {
    let secs = m.elapsed.as_secs_f64();
    Figure {
        system: "native",
        mib_s: Some(m.bytes as f64 / f64::from(1 << 20) / secs),
        iops: Some(m.ops as f64 / secs),
        latency: Some(m.samples.summary()),
    }
}

async fn run_all(m: &Mounted<'_>, a: &FuseArgs, notes: &mut Vec<String>) -> Result<Vec<Phase>> {
    let servers = m.servers;
    let writer = cairn::connect(servers, DEFAULT_CACHE).await?;
    let data = Bytes::from(layout::pattern(SEQ_IO as usize, 1));
    let local = m.work.join("local");
    std::fs::create_dir_all(&local)?;
    let mroot = m.root.clone();
    let mut phases = Vec::new();

    // Sequential write.
    eprintln!("fuse: seq write");
    let (mp, lp) = (mroot.join("seq-mount"), local.join("seq"));
    let size = a.seq_size;
    let m = blocking(move || fio("mount", &seq_job(&mp, "write", size))).await?;
    let seq = ["/bench/seq-native".to_string()];
    let n = native(&cairn::write_files(&writer, &seq, size, data.clone()).await?);
    let l = blocking(move || fio("local", &seq_job(&lp, "write", size))).await?;
    phases.push(Phase::new("seq write", "MiB/s", vec![m, n, l]));

    // Sequential read, cold.
    eprintln!("fuse: seq read");
    drop_caches(notes);
    let mp = mroot.join("seq-native");
    let m = blocking(move || fio("mount", &seq_job(&mp, "read", size))).await?;
    let reader = cairn::connect(servers, DEFAULT_CACHE).await?;
    let n = native(&cairn::read_files(&reader, &seq, size, data.clone()).await?);
    reader.close().await?;
    drop_caches(notes);
    let lp = local.join("seq");
    let l = blocking(move || fio("local", &seq_job(&lp, "read", size))).await?;
    phases.push(Phase::new("seq read", "MiB/s", vec![m, n, l]));

    // The random-read set, written through the native client and locally.
    eprintln!(
        "fuse: writing the {} random-read set",
        report::size(a.random_set)
    );
    let random = "/bench/random";
    cairn::write_files(&writer, &[random.to_string()], a.random_set, data.clone()).await?;
    let (rs, lr) = (a.random_set, local.join("random"));
    let lr2 = lr.clone();
    blocking(move || fio("local", &seq_job(&lr2, "write", rs))).await?;
    let ios = a.random_reads;
    let mr = mroot.join("random");

    eprintln!("fuse: read 4K QD1");
    let (m1, l1) = (mr.clone(), lr.clone());
    let m = blocking(move || fio("mount", &rand_job(&m1, rs, ios, 1, true))).await?;
    let c = cairn::connect(servers, 0).await?;
    let picks = random_blocks(rs, WARMUP_READS + ios * 4, 0x5eed);
    let n = native(
        &cairn::random_reads(
            &c,
            random,
            &picks[..WARMUP_READS + ios],
            WARMUP_READS,
            1,
            data.clone(),
            None,
        )
        .await?,
    );
    let l = blocking(move || fio("local", &rand_job(&l1, rs, ios, 1, true))).await?;
    phases.push(Phase::new("read 4K QD1", "p50", vec![m, n, l]));

    eprintln!("fuse: read 4K QD1 warm");
    let (m1, l1) = (mr.clone(), lr.clone());
    let m = blocking(move || {
        fio("mount", &seq_job(&m1, "read", rs))?;
        fio("mount", &rand_job(&m1, rs, ios, 1, false))
    })
    .await?;
    let l = blocking(move || {
        fio("local", &seq_job(&l1, "read", rs))?;
        fio("local", &rand_job(&l1, rs, ios, 1, false))
    })
    .await?;
    phases.push(Phase::new("read 4K QD1 warm", "p50", vec![m, l]));

    eprintln!("fuse: read 4K x{}", a.readers);
    let jobs = a.readers;
    let (m1, l1) = (mr.clone(), lr.clone());
    let m = blocking(move || fio("mount", &rand_job(&m1, rs, ios * 4, jobs, true))).await?;
    let n = native(
        &cairn::random_reads(&c, random, &picks, WARMUP_READS, jobs, data.clone(), None).await?,
    );
    let l = blocking(move || fio("local", &rand_job(&l1, rs, ios * 4, jobs, true))).await?;
    phases.push(Phase::new("read 4K xN", "IOPS", vec![m, n, l]));
    c.close().await?;
    writer.close().await?;
    Ok(phases)
}

/// Runs the workload.
///
/// # Errors
/// A missing binary or fio, servers that do not start, a failed phase.
pub async fn run(args: &FuseArgs, command_line: Vec<String>) -> Result<FuseReport> {
    let r = run_mounted(
        &args.common,
        "fuse",
        VOLUME,
        &args.mount,
        "cairn-bench (native client and fio driver)",
        async |m, notes| run_all(m, args, notes).await,
    )
    .await?;
    Ok(FuseReport {
        workload: "fuse",
        command_line,
        run: r.run,
        machine: machine::describe(),
        bench_build: build_profile(),
        seq_size: args.seq_size,
        random_set: args.random_set,
        random_reads: args.random_reads,
        readers: args.readers,
        phases: r.value,
        peak_rss: r.peak_rss,
        notes: r.notes,
    })
}

fn fmt_figure(f: Option<&Figure>, metric: &str) -> String {
    let Some(f) = f else {
        return "—".into();
    };
    match metric {
        "p50" => f.latency.map_or("—".into(), |l| {
            format!(
                "p50 {} p99 {} µs",
                report::micros(l.p50_us),
                report::micros(l.p99_us)
            )
        }),
        "IOPS" => f
            .iops
            .map_or("—".into(), |x| format!("{} IOPS", report::thousands(x))),
        _ => f.mib_s.map_or("—".into(), |x| format!("{x:.0} MiB/s")),
    }
}

/// Prints the report as a table.
///
/// # Errors
/// When `out` fails.
pub fn print_table(out: &mut impl std::io::Write, r: &FuseReport) -> std::io::Result<()> {
    report::write_header(out, "fuse", &r.machine, &r.command_line)?;
    writeln!(
        out,
        "  sizes: seq {}, random set {}, {} random reads, {} readers",
        report::size(r.seq_size),
        report::size(r.random_set),
        r.random_reads,
        r.readers
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<18} {:<28} {:<28} {:<28} {:>12} {:>12}",
        "phase", "mount", "native", "local", "mount/native", "mount/local"
    )?;
    for p in &r.phases {
        let f = |s: &str| p.figures.iter().find(|f| f.system == s);
        writeln!(
            out,
            "{:<18} {:<28} {:<28} {:<28} {:>12} {:>12}",
            p.name,
            fmt_figure(f("mount"), p.metric),
            fmt_figure(f("native"), p.metric),
            fmt_figure(f("local"), p.metric),
            report::ratio(p.mount_over_native),
            report::ratio(p.mount_over_local),
        )?;
    }
    writeln!(out)?;
    report::write_rss_table(out, &r.peak_rss)?;
    for n in &r.notes {
        writeln!(out, "note: {n}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(system: &'static str, mib: f64, p50: f64) -> Figure {
        Figure {
            system,
            mib_s: Some(mib),
            iops: Some(mib * 256.0),
            latency: Some(LatencySummary {
                p50_us: p50,
                ..LatencySummary::default()
            }),
        }
    }

    #[test]
    fn ratios_are_the_mount_over_each_other_system() {
        let p = Phase::new(
            "x",
            "MiB/s",
            vec![
                fig("mount", 300.0, 0.0),
                fig("native", 400.0, 0.0),
                fig("local", 600.0, 0.0),
            ],
        );
        assert_eq!(p.mount_over_native, Some(0.75));
        assert_eq!(p.mount_over_local, Some(0.5));
        let q = Phase::new(
            "y",
            "p50",
            vec![fig("mount", 0.0, 50.0), fig("local", 0.0, 25.0)],
        );
        assert_eq!(q.mount_over_local, Some(2.0));
        assert_eq!(q.mount_over_native, None);
    }

    #[test]
    fn fio_jobs_name_their_file_and_depth() {
        let j = rand_job(Path::new("/m/r"), 1 << 20, 1000, 16, true);
        assert!(j.contains(&"--filename=/m/r".to_string()));
        assert!(j.contains(&"--numjobs=16".to_string()));
        assert!(j.contains(&"--number_ios=63".to_string()));
        assert!(j.contains(&"--direct=1".to_string()));
    }
}
