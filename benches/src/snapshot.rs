//! The `snapshot` workload: what a volume snapshot costs (issue 17) —
//! taking one, the first write to a chunk after it, later writes, creates
//! in a volume that has snapshots, and the space it holds — beside the
//! same operations without a snapshot on the same servers and the local
//! disk's fsynced equivalents, all in one run.
//!
//! 1. **Local baselines** (the working directory's disk): `--files` 4 KiB
//!    `pwrite` + `fdatasync` at the same offsets as the Cairn phases, and
//!    `--creates` file creates each followed by an fsync of the file and
//!    its directory (what a durable create costs locally).
//! 2. **Servers**: 3 `cairn-meta` replicas and 3 chunkservers on loopback;
//!    a 3-replica volume holding `--files` files of `--file-size` bytes
//!    (each file one chunk at the default 64 MiB chunk size).
//! 3. **Cairn, no snapshot**: one 4 KiB write + fsync per file (durable,
//!    like the local baseline), then `--creates` creates of empty files.
//! 4. **Taking snapshots**: `--snapshots` snapshots, one after the other,
//!    each timed from the request to the answer (once every chunkserver
//!    fences it).
//! 5. **Cairn, after the snapshot**: the first 4 KiB write + fsync to each
//!    chunk (each keeps the chunk's previous version as a clone), then a
//!    second round to the same chunks (no clone), then `--creates` creates
//!    (each copies its parent directory's record once per snapshot).
//! 6. **Deleting**: every snapshot but the newest, each timed.
//! 7. **Space**: what `ListSnapshots` reports the newest snapshot then
//!    holds alone once the chunkservers have counted (every 10 s), against
//!    what the two rounds of writes replaced of its version (2 × 4 KiB ×
//!    files × 3 replicas).
//!
//! Ratios: each Cairn phase against the local fsynced baseline, and the
//! after-snapshot phases against the same phase without a snapshot (the
//! snapshot's own cost). CPU per operation of meta and chunkservers comes
//! from their `/proc` counters around each phase.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use cairn_client::{Client, OpenOptions};
use cairn_proto::meta::VolumePolicy;
use cairn_proto::units::parse_size;
use clap::Args;
use serde::Serialize;

use crate::client::cairn;
use crate::latency::{LatencySummary, Samples};
use crate::machine::{self, Machine};
use crate::measure::blocking;
use crate::servers::{CHUNKSERVERS, Finished, Servers, Setup};
use crate::watch::{ProcessCpu, ServerClock, Watch};
use crate::{CommonArgs, ProcessRss, report};

/// Help text of `cairn-bench snapshot --help`.
pub const LONG_ABOUT: &str = "\
What a volume snapshot costs, beside the same operations without one and
the local disk, in one run.

Starts 3 cairn-meta and 3 cairn-chunkservers, fills a 3-replica volume with
--files files of --file-size bytes, then times: a durable 4 KiB overwrite
of each file (write + fsync) and --creates file creates without a
snapshot; --snapshots snapshots taken one after the other; the first
overwrite of each file after the last one (the chunk keeps its old
version), a second round, and --creates creates with snapshots present;
deleting all snapshots but the newest, and the bytes the newest then holds
alone. The local baselines
are the same overwrites with pwrite + fdatasync and creates with an fsync
of the file and its directory, in the run's working directory.";

/// The volume the workload writes.
const VOLUME: &str = "snapbench";

/// Meta replicas started.
const META_REPLICAS: usize = 3;

/// Bytes of each overwrite.
const WRITE: usize = 4096;

/// `cairn-bench snapshot` options.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Files in the volume (each one chunk), and overwrites per round.
    #[arg(long, default_value_t = 200)]
    pub files: usize,
    /// Size of each file.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub file_size: u64,
    /// Empty files created per create phase.
    #[arg(long, default_value_t = 500)]
    pub creates: usize,
    /// Snapshots taken.
    #[arg(long, default_value_t = 5)]
    pub snapshots: usize,
}

/// One timed phase.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// What was done.
    pub name: String,
    /// Operations.
    pub ops: usize,
    /// Operations per second.
    pub ops_per_s: f64,
    /// Per-operation latency.
    pub latency: LatencySummary,
    /// CPU seconds per operation of the meta replicas, summed.
    pub meta_cpu_ms_per_op: Option<f64>,
    /// CPU seconds per operation of the chunkservers, summed.
    pub chunkserver_cpu_ms_per_op: Option<f64>,
    /// Every process's CPU over the phase.
    pub cpu: Vec<ProcessCpu>,
}

/// What `cairn-bench snapshot` measured.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotReport {
    /// The workload.
    pub workload: &'static str,
    /// The command line.
    pub command_line: Vec<String>,
    /// The run.
    pub run: Finished,
    /// The machine.
    pub machine: Machine,
    /// Bytes of file data in the volume when the snapshots were taken.
    pub volume_bytes: u64,
    /// Local: 4 KiB pwrite + fdatasync.
    pub local_write: Phase,
    /// Local: create + fsync of file and directory.
    pub local_create: Phase,
    /// Cairn without a snapshot: 4 KiB write + fsync per chunk.
    pub write_before: Phase,
    /// Cairn without a snapshot: creates.
    pub create_before: Phase,
    /// Taking a snapshot.
    pub take: Phase,
    /// Cairn: the first write to each chunk after the snapshot.
    pub first_write_after: Phase,
    /// Cairn: the second write to each chunk after it.
    pub second_write_after: Phase,
    /// Cairn with snapshots: creates.
    pub create_after: Phase,
    /// Deleting every snapshot but the newest.
    pub delete: Phase,
    /// What the newest snapshot holds alone, as ListSnapshots reports it
    /// (all replicas), once the chunkservers have counted.
    pub exclusive_bytes: u64,
    /// What the two rounds of writes after the snapshot replaced of the
    /// snapshot's version: 2 × 4 KiB × files × 3 replicas.
    pub replaced_bytes: u64,
    /// Peak memory of every process.
    pub peak_rss: Vec<ProcessRss>,
}

fn phase(name: &str, samples: &Samples, wall: Duration, cpu: Vec<ProcessCpu>) -> Phase {
    let ops = samples.len();
    let per_op = |prefix: &str| {
        let secs: f64 = cpu
            .iter()
            .filter(|c| c.process.starts_with(prefix))
            .map(|c| c.cpu_seconds)
            .sum();
        (!cpu.is_empty() && ops > 0).then(|| secs * 1000.0 / ops as f64)
    };
    Phase {
        name: name.to_string(),
        ops,
        ops_per_s: ops as f64 / wall.as_secs_f64().max(1e-9),
        latency: samples.summary(),
        meta_cpu_ms_per_op: per_op("meta"),
        chunkserver_cpu_ms_per_op: per_op("cs"),
        cpu,
    }
}

/// The offset of the overwrite of file `i` in round `round`: one 4 KiB
/// block, a different one each round.
fn offset(i: usize, round: usize, file_size: u64) -> u64 {
    let blocks = (file_size / WRITE as u64).max(1);
    ((i as u64 * 7 + round as u64 * 13) % blocks) * WRITE as u64
}

fn local_writes(dir: &Path, files: usize, file_size: u64) -> Result<(Samples, Duration)> {
    use std::os::unix::fs::FileExt;
    let path = dir.join("overwrite");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.set_len(file_size * files as u64)?;
    f.sync_all()?;
    let block = vec![0x5Au8; WRITE];
    let start = Instant::now();
    let samples = Samples::time_each(0..files, |i| {
        f.write_all_at(&block, i as u64 * file_size + offset(i, 0, file_size))?;
        f.sync_data()?;
        Ok(())
    })?;
    Ok((samples, start.elapsed()))
}

fn local_creates(dir: &Path, n: usize) -> Result<(Samples, Duration)> {
    let d = dir.join("creates");
    std::fs::create_dir_all(&d)?;
    let dh = std::fs::File::open(&d)?;
    let start = Instant::now();
    let samples = Samples::time_each(0..n, |i| {
        let f = std::fs::File::create(d.join(format!("f{i}")))?;
        f.sync_all()?;
        dh.sync_all()?;
        Ok(())
    })?;
    Ok((samples, start.elapsed()))
}

async fn cairn_writes(
    client: &Client,
    files: usize,
    round: usize,
    file_size: u64,
) -> Result<(Samples, Duration)> {
    let block = Bytes::from(vec![round as u8 + 1; WRITE]);
    let mut handles = Vec::with_capacity(files);
    for i in 0..files {
        handles.push(
            client
                .open(&format!("/{VOLUME}/f{i}"), OpenOptions::WRITE)
                .await?,
        );
    }
    let start = Instant::now();
    let mut samples = Samples::with_capacity(files);
    for (i, f) in handles.iter().enumerate() {
        let t = Instant::now();
        f.write_at(offset(i, round, file_size), block.clone())
            .await?;
        f.fsync().await?;
        samples.record(t.elapsed());
    }
    let wall = start.elapsed();
    for f in handles {
        f.close().await?;
    }
    Ok((samples, wall))
}

async fn cairn_creates(client: &Client, dir: &str, n: usize) -> Result<(Samples, Duration)> {
    client.create_dir_all(dir).await?;
    let start = Instant::now();
    let mut samples = Samples::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let f = client.create(&format!("{dir}/f{i}")).await?;
        f.close().await?;
        samples.record(t.elapsed());
    }
    Ok((samples, start.elapsed()))
}

/// Runs `work` between a [`ServerClock`] start and stop over every
/// process, and returns its phase.
async fn timed<F>(servers: &Servers, name: &str, notes: &mut Vec<String>, work: F) -> Result<Phase>
where
    F: Future<Output = Result<(Samples, Duration)>>,
{
    eprintln!("snapshot: {name}");
    let clock = ServerClock::start(servers, Watch::all(servers), notes).await;
    let (samples, wall) = work.await?;
    let around = clock.stop(notes).await;
    Ok(phase(name, &samples, wall, around.cpu))
}

/// The Cairn phases; returns them in report order and the exclusive bytes.
async fn cairn_phases(
    servers: &Servers,
    args: &SnapshotArgs,
    notes: &mut Vec<String>,
) -> Result<(Vec<Phase>, u64)> {
    let client = cairn::connect(servers, 0).await?;
    client
        .meta()
        .create_volume(VOLUME, VolumePolicy::default())
        .await?;
    eprintln!(
        "snapshot: writing {} files of {}",
        args.files,
        report::size(args.file_size)
    );
    for i in 0..args.files {
        let data = crate::layout::pattern(args.file_size as usize, i as u64);
        client
            .write_file(&format!("/{VOLUME}/f{i}"), Bytes::from(data))
            .await?;
    }
    let (files, size) = (args.files, args.file_size);
    let mut out = Vec::new();
    out.push(
        timed(
            servers,
            "write before",
            notes,
            cairn_writes(&client, files, 0, size),
        )
        .await?,
    );
    out.push(
        timed(
            servers,
            "create before",
            notes,
            cairn_creates(&client, &format!("/{VOLUME}/before"), args.creates),
        )
        .await?,
    );
    let take = timed(servers, "take snapshots", notes, async {
        let start = Instant::now();
        let mut samples = Samples::with_capacity(args.snapshots);
        for k in 0..args.snapshots {
            let t = Instant::now();
            client
                .meta()
                .create_snapshot(VOLUME, &format!("s{k}"))
                .await?;
            samples.record(t.elapsed());
        }
        Ok((samples, start.elapsed()))
    })
    .await?;
    out.push(take);
    out.push(
        timed(
            servers,
            "first write after",
            notes,
            cairn_writes(&client, files, 1, size),
        )
        .await?,
    );
    out.push(
        timed(
            servers,
            "second write after",
            notes,
            cairn_writes(&client, files, 2, size),
        )
        .await?,
    );
    out.push(
        timed(
            servers,
            "create after",
            notes,
            cairn_creates(&client, &format!("/{VOLUME}/after"), args.creates),
        )
        .await?,
    );
    // Every snapshot but the newest goes: the first writes' old versions
    // are then the newest one's alone (before, all of them read them).
    out.push(
        timed(servers, "delete snapshots", notes, async {
            let start = Instant::now();
            let mut samples = Samples::with_capacity(args.snapshots);
            for k in 0..args.snapshots - 1 {
                let t = Instant::now();
                client
                    .meta()
                    .delete_snapshot(VOLUME, &format!("s{k}"))
                    .await?;
                samples.record(t.elapsed());
            }
            Ok((samples, start.elapsed()))
        })
        .await?,
    );
    // The chunkservers count every 10 s and report with their heartbeats.
    let newest = format!("s{}", args.snapshots - 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut exclusive = 0;
    while Instant::now() < deadline {
        let all = client.meta().list_snapshots(VOLUME).await?;
        exclusive = all
            .iter()
            .find(|s| s.name == newest)
            .map_or(0, |s| s.exclusive_bytes);
        if exclusive >= (2 * files * WRITE * 3) as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok((out, exclusive))
}

/// Runs the workload.
///
/// # Errors
/// Bad options, servers that do not start, a failed operation.
pub async fn run(args: &SnapshotArgs, command_line: Vec<String>) -> Result<SnapshotReport> {
    if args.files == 0 || args.snapshots == 0 || args.file_size < WRITE as u64 {
        bail!("--files and --snapshots must be at least 1, --file-size at least 4KiB");
    }
    if args.file_size > 64 << 20 {
        bail!("--file-size is at most 64MiB (one chunk per file)");
    }
    let mut setup = Setup::new(&args.common, "snapshot")?;
    let local = setup.work.path().join("local");
    std::fs::create_dir_all(&local)?;
    eprintln!("snapshot: local baselines in {}", local.display());
    let (files, size, creates) = (args.files, args.file_size, args.creates);
    let l = local.clone();
    let (ws, ww) = blocking(move || local_writes(&l, files, size)).await?;
    let local_write = phase("local write", &ws, ww, Vec::new());
    let l = local.clone();
    let (cs, cw) = blocking(move || local_creates(&l, creates)).await?;
    let local_create = phase("local create", &cs, cw, Vec::new());
    std::fs::remove_dir_all(&local)?;

    eprintln!(
        "snapshot: starting {META_REPLICAS} cairn-meta replicas and {CHUNKSERVERS} chunkservers"
    );
    let servers = Servers::start(setup.work.path(), &setup.bin_dir, META_REPLICAS).await?;
    let notes = &mut setup.notes;
    let (result, peak_rss) = servers
        .run_then_stop("cairn-bench (this process: the client)", async |servers| {
            cairn_phases(servers, args, notes).await
        })
        .await;
    let (mut phases, exclusive_bytes) = result?;
    let run = setup.finish(&args.common)?;
    let mut take = |name: &str| -> Result<Phase> {
        let i = phases
            .iter()
            .position(|p| p.name == name)
            .with_context(|| format!("phase {name} missing"))?;
        Ok(phases.remove(i))
    };
    Ok(SnapshotReport {
        workload: "snapshot",
        command_line,
        run,
        machine: machine::describe(),
        volume_bytes: files as u64 * size,
        local_write,
        local_create,
        write_before: take("write before")?,
        create_before: take("create before")?,
        take: take("take snapshots")?,
        first_write_after: take("first write after")?,
        second_write_after: take("second write after")?,
        create_after: take("create after")?,
        delete: take("delete snapshots")?,
        exclusive_bytes,
        replaced_bytes: (2 * files * WRITE * 3) as u64,
        peak_rss,
    })
}

fn row(out: &mut impl std::io::Write, p: &Phase, vs: &[Option<&Phase>]) -> std::io::Result<()> {
    let ratio =
        |b: Option<&Phase>| report::ratio(b.map(|b| b.latency.p50_us / p.latency.p50_us.max(1e-9)));
    let ms = |x: Option<f64>| x.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
    writeln!(
        out,
        "{:<22} {:>6} {:>10} {:>10} {:>10} {:>12} {:>12} {:>9} {:>9}",
        p.name,
        p.ops,
        report::thousands(p.ops_per_s),
        report::micros(p.latency.p50_us),
        report::micros(p.latency.p99_us),
        ratio(vs.first().copied().flatten()),
        ratio(vs.get(1).copied().flatten()),
        ms(p.meta_cpu_ms_per_op),
        ms(p.chunkserver_cpu_ms_per_op),
    )
}

fn kib(bytes: u64) -> String {
    format!("{} KiB", report::thousands(bytes as f64 / 1024.0))
}

/// Prints the report as a table.
///
/// # Errors
/// Writing to `out`.
pub fn print_table(out: &mut impl std::io::Write, r: &SnapshotReport) -> std::io::Result<()> {
    report::write_header(out, "snapshot", &r.machine, &r.command_line)?;
    writeln!(
        out,
        "  3 meta + 3 chunkservers, one disk; volume of {} ({} files, one chunk each, 3 replicas)",
        report::size(r.volume_bytes),
        r.local_write.ops
    )?;
    writeln!(
        out,
        "  ratios are p50 latency ratios (baseline ÷ this; 1 = as fast, below 1 = slower)"
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<22} {:>6} {:>10} {:>10} {:>10} {:>12} {:>12} {:>9} {:>9}",
        "phase", "ops", "ops/s", "p50", "p99", "vs local", "vs no snap", "meta ms", "cs ms"
    )?;
    row(out, &r.local_write, &[])?;
    row(out, &r.write_before, &[Some(&r.local_write)])?;
    row(
        out,
        &r.first_write_after,
        &[Some(&r.local_write), Some(&r.write_before)],
    )?;
    row(
        out,
        &r.second_write_after,
        &[Some(&r.local_write), Some(&r.write_before)],
    )?;
    row(out, &r.local_create, &[])?;
    row(out, &r.create_before, &[Some(&r.local_create)])?;
    row(
        out,
        &r.create_after,
        &[Some(&r.local_create), Some(&r.create_before)],
    )?;
    row(out, &r.take, &[])?;
    row(out, &r.delete, &[])?;
    writeln!(out)?;
    writeln!(
        out,
        "  taking a snapshot of a {} volume: p50 {}, max {}",
        report::size(r.volume_bytes),
        report::micros(r.take.latency.p50_us),
        report::micros(r.take.latency.max_us)
    )?;
    writeln!(
        out,
        "  the newest snapshot, alone once the others are deleted, holds {}; the writes after \
         it replaced {} of its blocks (all replicas)",
        kib(r.exclusive_bytes),
        kib(r.replaced_bytes)
    )?;
    writeln!(
        out,
        "  (meta ms, cs ms: CPU milliseconds per operation, replicas summed)"
    )?;
    writeln!(out)?;
    report::write_rss_table(out, &r.peak_rss)
}
