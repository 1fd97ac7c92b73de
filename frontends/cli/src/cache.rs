//! `cairn cache stats`: the block-cache counters of every client on this
//! machine that shares one cache directory.
//!
//! # How the stats are found
//! There is no daemon to ask: each client started with a cache directory
//! (`--cache-dir`, `CAIRN_CACHE_DIR`, or `CacheConfig::dir` in a program)
//! publishes its own counters into that directory every few seconds and
//! when it closes. [`cairn_client::cache::collect_stats`] reads what the
//! live processes published (the cache module decides what counts as live
//! and drops files of processes that are gone), so this command needs no
//! meta connection and works while the cluster is down. The counters of
//! all processes are merged with [`CacheStats::merge`] and printed per
//! tier; `--json` prints the merged object and the per-process list.
//!
//! A client that runs without a cache directory publishes nothing, which
//! is why the command refuses to run without one instead of printing
//! zeros.

use std::path::{Path, PathBuf};

use cairn_client::cache::{self, CacheStats, TierStats};
use serde_json::{Value, json};

use crate::format::{human_bytes, table};
use crate::transfer::local_error;

/// `cairn cache` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CacheCommand {
    /// Show the merged block-cache counters of the clients using a cache
    /// directory.
    ///
    /// Reads what the running clients (FUSE mounts, CSI nodes, programs,
    /// `cairn` commands) started with that cache directory publish there,
    /// and prints per tier (memory, ssd) capacity, used, blocks, hits,
    /// misses, hit ratio, inserts and evictions, then the prefetch hit
    /// ratio and the number of processes. Clients without a cache
    /// directory publish nothing; processes that exited are not counted.
    /// Needs no cluster.
    Stats {
        /// The cache directory the clients were started with.
        #[arg(long, env = "CAIRN_CACHE_DIR", value_name = "DIR")]
        cache_dir: Option<PathBuf>,

        /// Show one tier only.
        #[arg(long = "type", value_enum, value_name = "TIER")]
        tier: Option<Tier>,
    },
}

/// A cache tier of `cairn cache stats --type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Tier {
    /// The in-memory block cache of each process.
    Memory,
    /// The SSD tier in the cache directory.
    Ssd,
}

/// Runs one `cache` subcommand.
///
/// # Errors
/// No cache directory given, or it cannot be read.
pub fn run(cmd: &CacheCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        CacheCommand::Stats { cache_dir, tier } => stats(cache_dir.as_deref(), *tier, json),
    }
}

fn stats(dir: Option<&Path>, tier: Option<Tier>, json: bool) -> anyhow::Result<()> {
    let op = "cache stats";
    let Some(dir) = dir else {
        anyhow::bail!(
            "{op}: no cache directory: give --cache-dir DIR or set CAIRN_CACHE_DIR. Only clients \
             started with a cache directory (--cache-dir, CAIRN_CACHE_DIR or CacheConfig::dir) \
             publish their cache counters, in that directory"
        );
    };
    if let Err(e) = std::fs::metadata(dir) {
        return Err(local_error(op, dir, &e));
    }
    let per_process = cache::collect_stats(dir).map_err(|e| local_error(op, dir, &e))?;
    let merged = CacheStats::merge(&per_process);
    if let Some(t) = tier {
        return tier_stats(dir, &merged, t, per_process.len(), json);
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&stats_json(dir, &merged, &per_process))?
        );
    } else {
        print!("{}", stats_text(dir, &merged, per_process.len()));
    }
    Ok(())
}

/// `--type TIER`: one tier's size, used, hits, misses, hit ratio and
/// evictions, plus the prefetch hits (memory) over every process.
fn tier_stats(
    dir: &Path,
    merged: &CacheStats,
    tier: Tier,
    processes: usize,
    json: bool,
) -> anyhow::Result<()> {
    let (name, t) = match tier {
        Tier::Memory => ("memory", Some(&merged.memory)),
        Tier::Ssd => ("ssd", merged.ssd.as_ref()),
    };
    let Some(t) = t else {
        anyhow::bail!(
            "cache stats --type ssd: no client publishing in {} has an SSD tier",
            dir.display()
        );
    };
    let prefetch =
        (tier == Tier::Memory).then_some((merged.prefetch_hits, merged.prefetched_blocks));
    if json {
        let mut v = json!({
            "cache_dir": dir.display().to_string(),
            "processes": processes,
            "tier": name,
            "capacity_bytes": t.capacity_bytes,
            "used_bytes": t.used_bytes,
            "blocks": t.blocks,
            "hits": t.hits,
            "misses": t.misses,
            "hit_ratio": t.hit_ratio(),
            "inserts": t.inserts,
            "evictions": t.evictions,
        });
        if let Some((hits, blocks)) = prefetch {
            v["prefetch_hits"] = json!(hits);
            v["prefetched_blocks"] = json!(blocks);
            v["prefetch_hit_ratio"] = json!(merged.prefetch_hit_ratio());
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("tier         {name}");
    println!("size         {}", human_bytes(t.capacity_bytes));
    println!(
        "used         {} ({} blocks)",
        human_bytes(t.used_bytes),
        t.blocks
    );
    println!("hits         {}", t.hits);
    println!("misses       {}", t.misses);
    println!("hit ratio    {}", percent(t.hit_ratio()));
    println!("evictions    {}", t.evictions);
    if let Some((hits, blocks)) = prefetch {
        println!(
            "prefetch     {} of {blocks} prefetched blocks read ({})",
            hits,
            percent(merged.prefetch_hit_ratio())
        );
    }
    println!("processes    {processes} publishing in {}", dir.display());
    Ok(())
}

/// Returns the `--json` form: the merged counters (with ratios) and each
/// process's.
fn stats_json(dir: &Path, merged: &CacheStats, per_process: &[CacheStats]) -> Value {
    let with_ratios = |s: &CacheStats| {
        let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert("prefetch_hit_ratio".into(), json!(s.prefetch_hit_ratio()));
            m.insert("memory_hit_ratio".into(), json!(s.memory.hit_ratio()));
            m.insert(
                "ssd_hit_ratio".into(),
                json!(s.ssd.as_ref().map(TierStats::hit_ratio)),
            );
        }
        v
    };
    json!({
        "cache_dir": dir.display().to_string(),
        "processes": per_process.len(),
        "merged": with_ratios(merged),
        "per_process": per_process.iter().map(with_ratios).collect::<Vec<_>>(),
    })
}

/// Returns a ratio as a percentage with one decimal.
fn percent(r: f64) -> String {
    format!("{:.1}%", r * 100.0)
}

/// Returns the table and the lines under it.
fn stats_text(dir: &Path, merged: &CacheStats, processes: usize) -> String {
    let row = |name: &str, t: &TierStats| {
        vec![
            name.to_string(),
            human_bytes(t.capacity_bytes),
            human_bytes(t.used_bytes),
            t.blocks.to_string(),
            t.hits.to_string(),
            t.misses.to_string(),
            percent(t.hit_ratio()),
            t.inserts.to_string(),
            t.evictions.to_string(),
        ]
    };
    let mut rows = vec![row("memory", &merged.memory)];
    if let Some(ssd) = &merged.ssd {
        rows.push(row("ssd", ssd));
    }
    let mut out = table(
        &[
            "TIER",
            "CAPACITY",
            "USED",
            "BLOCKS",
            "HITS",
            "MISSES",
            "HIT RATIO",
            "INSERTS",
            "EVICTIONS",
        ],
        &rows,
        &[1, 2, 3, 4, 5, 6, 7, 8],
    );
    if merged.ssd.is_none() {
        out.push_str("ssd: off in every process\n");
    }
    out.push_str(&format!(
        "prefetch hit ratio: {} ({} of {} prefetched blocks read)\n",
        percent(merged.prefetch_hit_ratio()),
        merged.prefetch_hits,
        merged.prefetched_blocks
    ));
    out.push_str(&format!(
        "processes: {processes} publishing in {}\n",
        dir.display()
    ));
    if processes == 0 {
        out.push_str(
            "(no live client publishes here: counters are per process and gone when it exits)\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_names_every_tier_and_the_process_count() {
        let s = CacheStats {
            memory: TierStats {
                capacity_bytes: 64 << 20,
                used_bytes: 1 << 20,
                blocks: 256,
                hits: 30,
                misses: 10,
                inserts: 256,
                evictions: 0,
            },
            ssd: Some(TierStats {
                capacity_bytes: 1 << 30,
                ..TierStats::default()
            }),
            ..CacheStats::default()
        };
        let t = stats_text(Path::new("/var/cache/cairn"), &s, 2);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("TIER"), "{t}");
        assert!(lines[1].starts_with("memory"), "{t}");
        assert!(
            lines[1].contains("64 MiB") && lines[1].contains("256"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("ssd") && lines[2].contains("1 GiB"),
            "{t}"
        );
        assert!(
            t.contains("processes: 2 publishing in /var/cache/cairn"),
            "{t}"
        );
        let none = stats_text(Path::new("/c"), &CacheStats::default(), 0);
        assert!(
            none.contains("ssd: off") && none.contains("no live client"),
            "{none}"
        );
    }

    #[test]
    fn json_has_merged_and_per_process() {
        let s = CacheStats::default();
        let v = stats_json(Path::new("/c"), &s, std::slice::from_ref(&s));
        assert_eq!(v["processes"], 1);
        assert!(v["merged"].is_object());
        assert_eq!(v["per_process"].as_array().map(Vec::len), Some(1));
        assert!(v["merged"]["prefetch_hit_ratio"].is_number());
    }

    #[test]
    fn needs_a_directory() {
        let e = stats(None, None, false).map(drop);
        let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("--cache-dir") && msg.contains("CAIRN_CACHE_DIR"),
            "{msg}"
        );
    }
}
