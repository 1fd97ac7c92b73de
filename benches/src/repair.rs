//! The `repair` workload: how fast Cairn re-replicates the data of a
//! chunkserver that died for good, beside the raw disk's write throughput
//! measured in the same run on the same disk.
//!
//! 1. **Raw baseline**: `--size` bytes written sequentially with O_DIRECT
//!    in 1 MiB pieces and one fdatasync at the end (what one disk takes).
//! 2. **Cluster**: 3 `cairn-meta` replicas and `--chunkservers` (default 4:
//!    three replicas plus a spare) `cairn-chunkserver`s on loopback, meta
//!    with `--replace-after 1s`. Files are written (replication 3) until
//!    the fullest chunkserver holds `--size` bytes.
//! 3. **Failure**: that chunkserver is killed (`kill -9`). Meta declares it
//!    dead after its heartbeat timeout (3 s here), replaces its member in
//!    each of its chains by a target on another chunkserver, and each
//!    chain's head streams the chain's chunks to it.
//! 4. **Measured**: bytes copied (the sync sources' counters, through
//!    meta), the time from the first replacement to every chain serving 3
//!    replicas again (re-replication throughput = bytes ÷ that time), and
//!    the time from the kill (detection included). Ratio = re-replication
//!    MiB/s ÷ raw write MiB/s. A few files are then checked replica by
//!    replica (versions, CRCs, bytes).
//!
//! Every process shares one disk here: the copies are read and written on
//! the disk the raw baseline wrote to, so the ratio is what repair gets of
//! one disk's write bandwidth. On a real cluster each chain rebuilds from
//! its own head onto its own new member, in parallel across machines.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cairn_client::ClientOptions;
use cairn_jepsen::data_cluster::{DataCluster, DataOpts, pattern};
use cairn_proto::meta::{ChainTables, TargetState, VolumePolicy};
use cairn_proto::units::parse_size;
use clap::Args;
use serde::Serialize;

use crate::layout::Layout;
use crate::machine::{self, Machine};
use crate::measure::blocking;
use crate::raw::{self, Sync};
use crate::{CommonArgs, report};

/// Help text of `cairn-bench repair --help`.
pub const LONG_ABOUT: &str = "\
Re-replication after a chunkserver dies for good, beside the raw disk.

Writes --size bytes to the local disk with O_DIRECT (the baseline), then
starts 3 cairn-meta and --chunkservers cairn-chunkservers (a spare beyond
3), fills them with replicated files until the fullest chunkserver holds
--size bytes, kills it with SIGKILL, and times how long until every chain
serves 3 replicas again and how many bytes were copied. Reports the
re-replication throughput as a ratio to the raw write throughput, and the
time from the kill until full replication (heartbeat timeout included).

Needs about 4 x --size free space in the working directory ($TMPDIR).";

/// `cairn-bench repair` options.
#[derive(Debug, Args)]
pub struct RepairArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Data on the chunkserver that dies (and the raw baseline's size).
    #[arg(long, default_value = "10GiB", value_parser = parse_size)]
    pub size: u64,
    /// Chunkservers started (at least 4: three replicas and a spare).
    #[arg(long, default_value_t = 4)]
    pub chunkservers: usize,
    /// Size of each file written.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub file_size: u64,
    /// The chunkservers' --resync-rate (bytes/s each; 0: unlimited).
    #[arg(long, default_value = "0", value_parser = parse_size)]
    pub resync_rate: u64,
}

/// What `cairn-bench repair` measured.
#[derive(Debug, Clone, Serialize)]
pub struct RepairReport {
    /// The machine.
    pub machine: Machine,
    /// The command line.
    pub command_line: Vec<String>,
    /// Raw O_DIRECT sequential write, MiB/s.
    pub raw_write_mib_s: f64,
    /// Bytes of file data written to the cluster (each stored 3 times).
    pub data_bytes: u64,
    /// Bytes the killed chunkserver held.
    pub failed_bytes: u64,
    /// Bytes the sync sources copied.
    pub copied_bytes: u64,
    /// Chains the failed chunkserver was a member of (3-replica table).
    pub chains_rebuilt: usize,
    /// Seconds from the kill until meta declared the chunkserver dead.
    pub detect_s: f64,
    /// Seconds from the first replacement until every chain served 3
    /// replicas.
    pub rebuild_s: f64,
    /// Seconds from the kill until every chain served 3 replicas.
    pub total_s: f64,
    /// copied_bytes ÷ rebuild_s, MiB/s.
    pub rebuild_mib_s: f64,
    /// rebuild_mib_s ÷ raw_write_mib_s.
    pub ratio: f64,
    /// Chunks checked replica by replica afterwards.
    pub chunks_verified: usize,
}

fn mib_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / f64::from(1 << 20) / secs.max(1e-9)
}

fn members_on(t: &ChainTables, cs: u64) -> Vec<(u32, i32)> {
    t.tables
        .iter()
        .filter(|tb| tb.replication == 3)
        .flat_map(|tb| tb.chains.iter())
        .flat_map(|c| {
            c.targets
                .iter()
                .filter(move |m| m.chunkserver_id == cs)
                .map(move |m| (c.id, m.state))
        })
        .collect()
}

/// Runs the workload.
///
/// # Errors
/// A server failed, the disk is too small, or repair did not finish.
pub async fn run(args: &RepairArgs, command_line: Vec<String>) -> Result<RepairReport> {
    if args.chunkservers < 4 {
        bail!("--chunkservers must be at least 4 (three replicas and a spare)");
    }
    let io = crate::layout::IO_SIZE;
    let size = args.size.div_ceil(io) * io;
    let work = tempfile::Builder::new()
        .prefix("cairn-bench-repair-")
        .tempdir_in(
            args.common
                .data_dir
                .clone()
                .unwrap_or_else(std::env::temp_dir),
        )?;

    eprintln!("raw: writing {} with O_DIRECT", report::size(size));
    let raw_path = work.path().join("raw");
    let layout = Layout::new(size, 1)?;
    let piece = crate::layout::pattern(io as usize, 7);
    let raw_measured = {
        let (p, l) = (raw_path.clone(), layout);
        blocking(move || raw::write(&p, &l, &piece, Sync::AtEnd)).await?
    };
    std::fs::remove_file(&raw_path)?;
    let raw_write_mib_s = mib_s(raw_measured.bytes, raw_measured.elapsed.as_secs_f64());
    eprintln!("raw: {raw_write_mib_s:.0} MiB/s");

    let mut cluster = DataCluster::start(DataOpts {
        chunkservers: args.chunkservers,
        shards: 1,
        capacity: (size * 4).to_string(),
        meta_args: vec!["--replace-after".into(), "1s".into()],
        chunkserver_args: vec!["--resync-rate".into(), args.resync_rate.to_string()],
        ..DataOpts::default()
    })
    .await?;
    let client = cluster.client(ClientOptions::default()).await?;
    client
        .meta()
        .create_volume("repair", VolumePolicy::default())
        .await?;

    // Fill until the fullest chunkserver holds `size` bytes.
    let per_file = args.file_size.max(io);
    let mut written = 0u64;
    let mut next = 0u64;
    let started = Instant::now();
    loop {
        let t = cluster.chains().await?;
        let fullest = t
            .chunkservers
            .iter()
            .map(|c| c.used_bytes)
            .max()
            .unwrap_or(0);
        if fullest >= size {
            break;
        }
        let mut tasks = tokio::task::JoinSet::new();
        for i in next..next + 4 {
            let c = client.clone();
            tasks.spawn(async move {
                c.write_file(&format!("/repair/f{i}"), pattern(i, per_file as usize))
                    .await
                    .with_context(|| format!("writing /repair/f{i}"))
            });
        }
        next += 4;
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        written += 4 * per_file;
        eprintln!(
            "fill: {} written, fullest chunkserver {} ({:.0} MiB/s)",
            report::size(written),
            report::size(fullest),
            mib_s(written, started.elapsed().as_secs_f64())
        );
        // Let heartbeats carry the new usage.
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }

    let t = cluster.chains().await?;
    let victim = t
        .chunkservers
        .iter()
        .max_by_key(|c| c.used_bytes)
        .context("no chunkserver")?
        .clone();
    let chains_rebuilt = members_on(&t, victim.id).len();
    let before: u64 = t
        .chunkservers
        .iter()
        .filter_map(|c| c.repair.map(|r| r.bytes_copied))
        .sum();
    let index = cluster.index_of(victim.id).await?;
    eprintln!(
        "killing chunkserver {} holding {} in {chains_rebuilt} chains",
        victim.id,
        report::size(victim.used_bytes)
    );
    cluster.kill(index);
    let killed = Instant::now();
    let mut detected = None;
    let mut replaced = None;
    let healed;
    loop {
        let t = cluster.chains().await?;
        let on = members_on(&t, victim.id);
        if detected.is_none() && on.iter().all(|(_, s)| *s == TargetState::Offline as i32) {
            detected = Some(killed.elapsed());
        }
        if replaced.is_none() && on.len() < chains_rebuilt {
            replaced = Some(killed.elapsed());
        }
        if on.is_empty() && cairn_proto::chain::fully_serving(&t, 3) {
            healed = killed.elapsed();
            break;
        }
        if killed.elapsed() > Duration::from_secs(3600) {
            bail!("not back to 3 replicas within an hour");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The sources' counters reach meta with their heartbeats.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = cluster.repair_bytes().await?;
    let copied_bytes = after.saturating_sub(before);
    let replaced = replaced.unwrap_or(healed);
    let rebuild_s = (healed - replaced).as_secs_f64();
    let rebuild_mib_s = mib_s(copied_bytes, rebuild_s);
    eprintln!("verifying replicas of 4 files");
    let paths: Vec<String> = (0..4).map(|i| format!("/repair/f{i}")).collect();
    let check =
        cairn_jepsen::replicas::verify_replicas(&cluster, &client, &paths, 3, &[victim.id], |p| {
            let i: u64 = p.trim_start_matches("/repair/f").parse().ok()?;
            Some(pattern(i, per_file as usize))
        })
        .await?;
    drop(cluster);
    Ok(RepairReport {
        machine: machine::describe(),
        command_line,
        raw_write_mib_s,
        data_bytes: written,
        failed_bytes: victim.used_bytes,
        copied_bytes,
        chains_rebuilt,
        detect_s: detected.unwrap_or(healed).as_secs_f64(),
        rebuild_s,
        total_s: healed.as_secs_f64(),
        rebuild_mib_s,
        ratio: rebuild_mib_s / raw_write_mib_s,
        chunks_verified: check.chunks,
    })
}

/// Prints the report as a table.
///
/// # Errors
/// Writing to `out`.
pub fn print_table(out: &mut impl std::io::Write, r: &RepairReport) -> std::io::Result<()> {
    report::write_header(out, "repair", &r.machine, &r.command_line)?;
    writeln!(
        out,
        "  {} of files written (3 replicas); the killed chunkserver held {} in {} chains",
        report::size(r.data_bytes),
        report::size(r.failed_bytes),
        r.chains_rebuilt
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<34} {:>12} {:>16} {:>8}",
        "", "MiB/s", "raw write MiB/s", "ratio"
    )?;
    writeln!(
        out,
        "{:<34} {:>12.0} {:>16.0} {:>8.2}",
        "re-replication (copied ÷ rebuild)", r.rebuild_mib_s, r.raw_write_mib_s, r.ratio
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "  copied {} in {:.1} s; dead declared {:.1} s after the kill; \
         every chain back to 3 replicas {:.1} s after the kill",
        report::size(r.copied_bytes),
        r.rebuild_s,
        r.detect_s,
        r.total_s
    )?;
    writeln!(
        out,
        "  {} chunks of 4 files verified replica by replica (version, CRCs, bytes)",
        r.chunks_verified
    )?;
    Ok(())
}
