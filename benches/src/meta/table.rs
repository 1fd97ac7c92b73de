//! The human-readable table of `cairn-bench meta`.

use std::io::{self, Write};

use super::{MetaReport, Phase, RaftDelta, RunResult, SystemKind};
use crate::report::{micros, ratio, thousands, write_header, write_rss_table};

fn plural(n: usize, one: &str, many: &str) -> String {
    format!(
        "{} {}",
        thousands(n as f64),
        if n == 1 { one } else { many }
    )
}

/// Returns the leader's group-commit columns of a phase for the table:
/// operations per log fsync and log entries per log fsync.
fn factors(raft: Option<&RaftDelta>) -> (String, String) {
    let f2 = |f: f64| format!("{f:.2}");
    match raft {
        None => (String::new(), String::new()),
        Some(d) => match (d.ops_per_flush, d.entries_per_flush, d.leader_node) {
            (Some(o), Some(e), _) => (f2(o), f2(e)),
            (_, _, None) => ("leader changed".into(), String::new()),
            _ => ("no fsyncs".into(), String::new()),
        },
    }
}

/// Writes how many creates shared one Raft log fsync, on the leader and
/// on each follower.
fn write_group_commit(out: &mut impl Write, d: &RaftDelta) -> io::Result<()> {
    let (Some(node), Some(entries), Some(flushes)) = (d.leader_node, d.entries_appended, d.flushes)
    else {
        return writeln!(
            out,
            "  group commit, create phase: not measured (the leader changed during the phase)"
        );
    };
    let f2 = |f: Option<f64>| f.map_or_else(|| "-".into(), |f| format!("{f:.2}"));
    writeln!(
        out,
        "  group commit, create phase: the leader (node {node}) appended {} log entries in {} \
         fsyncs:",
        thousands(entries as f64),
        thousands(flushes as f64),
    )?;
    writeln!(
        out,
        "    {} entries per Raft log fsync, {} creates per fsync",
        f2(d.entries_per_flush),
        f2(d.ops_per_flush),
    )?;
    let followers: Vec<String> = d
        .replicas
        .iter()
        .filter(|r| !r.leader && r.flushes > 0)
        .map(|r| {
            format!(
                "node {} {:.2}",
                r.node_id,
                r.entries_appended as f64 / r.flushes as f64
            )
        })
        .collect();
    if followers.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "    followers, entries per fsync: {}",
        followers.join(", ")
    )
}

fn write_run(out: &mut impl Write, run: &RunResult) -> io::Result<()> {
    writeln!(
        out,
        "{}, {} per phase ({} per client)",
        plural(run.clients, "client", "concurrent clients"),
        plural(run.ops_per_phase, "operation", "operations"),
        thousands(run.ops_per_client as f64),
    )?;
    writeln!(
        out,
        "  {:<7} {:<12} {:>10} {:>9} {:>9} {:>11} {:>10} {:>14}",
        "phase", "system", "ops/s", "p50 µs", "p99 µs", "cairn÷this", "ops/fsync", "entries/fsync"
    )?;
    for phase in Phase::ALL {
        let ratio_of = |kind: SystemKind| {
            let r = run.ratios.iter().find(|r| r.phase == phase);
            match kind {
                SystemKind::Cairn => String::new(),
                SystemKind::Local => ratio(r.and_then(|r| r.cairn_over_local)),
                SystemKind::LocalFsync => ratio(r.and_then(|r| r.cairn_over_local_fsync)),
            }
        };
        let mut first = true;
        for sys in &run.systems {
            let Some(p) = sys.phase(phase) else { continue };
            let (ops_gc, entries_gc) = if phase.mutates() {
                factors(p.raft.as_ref())
            } else {
                (String::new(), String::new())
            };
            let line = format!(
                "  {:<7} {:<12} {:>10} {:>9} {:>9} {:>11} {:>10} {:>14}",
                if first { phase.name() } else { "" },
                sys.system.label(),
                thousands(p.ops_per_sec),
                micros(p.latency.p50_us),
                micros(p.latency.p99_us),
                ratio_of(sys.system),
                ops_gc,
                entries_gc,
            );
            writeln!(out, "{}", line.trim_end())?;
            first = false;
        }
    }
    let create = run
        .system(SystemKind::Cairn)
        .and_then(|s| s.phase(Phase::Create))
        .and_then(|p| p.raft.as_ref());
    if let Some(d) = create {
        write_group_commit(out, d)?;
    }
    writeln!(out, "  run took {:.1} s", run.seconds)
}

/// Writes the whole report of `cairn-bench meta` as tables.
///
/// # Errors
/// When `out` fails.
pub fn print_table(out: &mut impl Write, r: &MetaReport) -> io::Result<()> {
    write_header(out, r.workload, &r.machine, &r.command_line)?;
    writeln!(out, "  data:    {}", r.data.describe())?;
    writeln!(
        out,
        "  servers: {} × {} (benchmark: {} build)",
        r.replicas,
        r.meta_binary.display(),
        r.bench_build
    )?;
    if r.standin_targets > 0 {
        writeln!(
            out,
            "  chains:  {} stand-in targets registered (--targets): chain tables of a cluster that size",
            r.standin_targets
        )?;
    }
    writeln!(out)?;
    for run in &r.runs {
        write_run(out, run)?;
        writeln!(out)?;
    }
    writeln!(
        out,
        "cairn÷this = cairn ops/s ÷ that system's ops/s (1 = parity, below 1 = cairn slower);"
    )?;
    writeln!(
        out,
        "ops/fsync = the phase's operations per Raft log fsync of the meta leader (group commit);"
    )?;
    writeln!(
        out,
        "entries/fsync = the leader's log entries per log fsync (below ops/fsync when meta packs \
         several operations into one entry)."
    )?;
    for kind in [SystemKind::Cairn, SystemKind::Local, SystemKind::LocalFsync] {
        writeln!(out, "  {:<12} {}", kind.label(), kind.description())?;
    }
    writeln!(out)?;
    let t = &r.target;
    match (t.measured_ops_per_sec, t.met) {
        (Some(m), Some(met)) => writeln!(
            out,
            "target: single-client creates ≥ {}/s, each fsync-durable on a majority: \
             measured {}/s — {} ({:.2}× the target)",
            thousands(t.min_ops_per_sec),
            thousands(m),
            if met { "met" } else { "NOT met" },
            m / t.min_ops_per_sec,
        )?,
        _ => writeln!(
            out,
            "target: single-client creates ≥ {}/s: not measured (no 1-client run)",
            thousands(t.min_ops_per_sec)
        )?,
    }
    writeln!(out)?;
    write_rss_table(out, &r.peak_rss)?;
    for n in &r.notes {
        writeln!(out, "note: {n}")?;
    }
    writeln!(out, "total {:.1} s", r.seconds)
}
