//! The human-readable table of `cairn-bench small`: one row per phase
//! with every system's rate and p50 and the ratios, then the CPU per
//! operation of the Cairn processes, and every process's peak memory.

use std::io::{self, Write};

use super::{CairnCpu, PhaseResult, SmallReport, System};
use crate::measure::Compared;
use crate::report::{micros, ratio, size, thousands, write_header, write_rss_table};

/// The systems' columns, in order.
const SYSTEMS: [System; 4] = [
    System::Mount,
    System::Native,
    System::Local,
    System::LocalFsync,
];

/// Returns a system's cell: `ops/s (p50 µs)`, `—` when it did not run.
fn cell(p: &PhaseResult, system: System) -> String {
    p.system(system).map_or_else(
        || "—".into(),
        |s| {
            let p50 = s.latency.map_or_else(|| "-".into(), |l| micros(l.p50_us));
            format!("{} ({p50})", thousands(s.ops_per_sec))
        },
    )
}

/// Returns a Cairn part's CPU cell: meta, chunkservers, client, µs/op.
fn cpu_cell(c: Option<&CairnCpu>) -> String {
    c.map_or_else(
        || "—".into(),
        |c| {
            format!(
                "{} / {} / {}",
                micros(c.meta_us_per_op),
                micros(c.chunkserver_us_per_op),
                micros(c.client_us_per_op)
            )
        },
    )
}

/// Writes the whole report of `cairn-bench small` as tables.
///
/// # Errors
/// When `out` fails.
pub fn print_table(out: &mut impl Write, r: &SmallReport) -> io::Result<()> {
    write_header(out, r.workload, &r.machine, &r.command_line)?;
    writeln!(out, "  data:    {}", r.run.data.describe())?;
    let s = &r.settings;
    let kib = s.small_size as f64 / 1024.0;
    writeln!(
        out,
        "  sizes:   {} namespace operations per phase, {} small files of {kib} KiB ({} per \
         set), {} threads in the concurrent phases",
        thousands(s.files as f64),
        thousands(s.small_files as f64),
        size(s.small_size * s.small_files as u64),
        s.threads
    )?;
    if !s.mount_args.is_empty() {
        writeln!(out, "  mount flags: {}", s.mount_args)?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "ops/s (p50 µs); ref = local+fsync for mutations and writes, local for stat and reads"
    )?;
    let head: Vec<&str> = SYSTEMS.iter().map(|s| s.label()).collect();
    writeln!(
        out,
        "  {:<10} {:>17} {:>17} {:>17} {:>17} {:>10} {:>10} {:>12}",
        "phase", head[0], head[1], head[2], head[3], "mount÷ref", "native÷ref", "mount÷native"
    )?;
    for p in &r.phases {
        writeln!(
            out,
            "  {:<10} {:>17} {:>17} {:>17} {:>17} {:>10} {:>10} {:>12}",
            p.label(),
            cell(p, SYSTEMS[0]),
            cell(p, SYSTEMS[1]),
            cell(p, SYSTEMS[2]),
            cell(p, SYSTEMS[3]),
            ratio(p.mount_over_reference),
            ratio(p.native_over_reference),
            ratio(p.mount_over_native),
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "CPU µs per operation during the Cairn parts: meta replicas summed / chunkservers \
         summed / client (the cairn mount process; cairn-bench for native)"
    )?;
    writeln!(out, "  {:<10} {:>26} {:>26}", "phase", "mount", "native")?;
    for p in &r.phases {
        let of = |system: System| p.cpu.iter().find(|c| c.system == system);
        writeln!(
            out,
            "  {:<10} {:>26} {:>26}",
            p.label(),
            cpu_cell(of(System::Mount)),
            cpu_cell(of(System::Native)),
        )?;
    }
    if let Some(c) = &r.collect {
        writeln!(out)?;
        writeln!(
            out,
            "collect: {} files deleted in {:.1} s, all garbage gone after {:.1} s ({} objects, {} \
             chunk removals); CPU per deleted file: {} (meta / chunkservers / cairn-bench)",
            thousands(c.files as f64),
            c.delete_seconds,
            c.seconds,
            c.objects_collected,
            c.chunk_removals,
            cpu_cell(Some(&c.cpu)),
        )?;
    }
    writeln!(out)?;
    for system in SYSTEMS {
        writeln!(out, "  {:<12} {}", system.label(), system.description())?;
    }
    writeln!(out)?;
    write_rss_table(out, &r.peak_rss)?;
    for n in &r.notes {
        writeln!(out, "note: {n}")?;
    }
    writeln!(out, "total {:.1} s", r.run.seconds)
}
