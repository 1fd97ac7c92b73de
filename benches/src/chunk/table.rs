//! The human-readable table of `cairn-bench chunk`.

use std::io::{self, Write};

use super::{ChunkReport, Goal, Phase, PhaseResult, System};
use crate::measure::Compared;
use crate::report::{
    micros, ratio, size, thousands, write_cpu, write_header, write_latency_phase, write_rss_table,
    write_server_legend, write_server_time,
};

fn write_random_reads(out: &mut impl Write, p: &PhaseResult) -> io::Result<()> {
    write_latency_phase(out, p, System::Cairn, [System::Pread, System::TcpPingPong])?;
    write_server_time(
        out,
        "chunkserver handling time per request (mean): ",
        &p.server_time,
    )?;
    write_cpu(out, "CPU during cairn's reads: ", &p.cpu)
}

fn write_throughput(out: &mut impl Write, phases: &[&PhaseResult], title: &str) -> io::Result<()> {
    writeln!(out, "{title}")?;
    writeln!(
        out,
        "  {:<12} {:<18} {:>9} {:>9} {:>9} {:>11}",
        "phase", "system", "MiB/s", "p50 µs", "p99 µs", "cairn÷this"
    )?;
    for p in phases {
        let mut first = true;
        for s in &p.systems {
            let (p50, p99) = s.latency.map_or((String::new(), String::new()), |l| {
                (micros(l.p50_us), micros(l.p99_us))
            });
            let r = if matches!(s.system, System::Cairn | System::CairnReplicated) {
                String::new()
            } else {
                ratio(s.cairn_over_this)
            };
            let line = format!(
                "  {:<12} {:<18} {:>9} {:>9} {:>9} {:>11}",
                if first { p.phase.name() } else { "" },
                s.system.label(),
                thousands(s.mib_per_sec),
                p50,
                p99,
                r,
            );
            writeln!(out, "{}", line.trim_end())?;
            first = false;
        }
    }
    for p in phases {
        write_server_time(
            out,
            &format!("chunkserver handling time, {}: ", p.phase.name()),
            &p.server_time,
        )?;
        write_cpu(
            out,
            &format!("CPU during cairn's {}: ", p.phase.name()),
            &p.cpu,
        )?;
    }
    Ok(())
}

fn write_goal(out: &mut impl Write, g: &Goal) -> io::Result<()> {
    let verdict = match g.met {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "not measured",
    };
    writeln!(
        out,
        "  {:<12} {:<66} {:>6}  {verdict}",
        g.phase.name(),
        g.what,
        ratio(g.ratio)
    )
}

/// Writes the whole report of `cairn-bench chunk` as tables.
///
/// # Errors
/// When `out` fails.
pub fn print_table(out: &mut impl Write, r: &ChunkReport) -> io::Result<()> {
    write_header(out, r.workload, &r.machine, &r.command_line)?;
    writeln!(out, "  data:    {}", r.data.describe())?;
    writeln!(
        out,
        "  servers: 1 × {}, {} × {} (1 shard each; benchmark: {} build)",
        r.meta_binary.display(),
        r.chunkservers,
        r.chunkserver_binary.display(),
        r.bench_build
    )?;
    if let Some(c) = &r.chains {
        writeln!(
            out,
            "  chains:  1 replica: chain {} on {}; 3 replicas: chain {}, {}",
            c.single.chain,
            c.single.path(),
            c.replicated.chain,
            c.replicated.path()
        )?;
    }
    writeln!(out)?;
    if let Some(p) = r.phase(Phase::RandomRead) {
        write_random_reads(out, p)?;
        writeln!(out)?;
    }
    let s = &r.settings.sequential;
    let seq: Vec<&PhaseResult> = [Phase::SeqWrite, Phase::SeqRead]
        .iter()
        .filter_map(|&p| r.phase(p))
        .collect();
    if !seq.is_empty() {
        write_throughput(
            out,
            &seq,
            &format!(
                "1 MiB sequential writes and reads, 1-replica chain: {} per system, {} in \
                 flight, {} chunks of {}",
                size(s.bytes),
                s.depth,
                s.chunks,
                size(s.chunk_bytes)
            ),
        )?;
        writeln!(out)?;
    }
    if let Some(p) = r.phase(Phase::ReplicatedWrite) {
        let path = r
            .chains
            .as_ref()
            .map_or_else(String::new, |c| format!(" ({})", c.replicated.path()));
        write_throughput(
            out,
            &[p],
            &format!(
                "1 MiB writes, 3-replica chain{path}, all replicas on this disk: {}, {} in flight",
                size(s.bytes),
                s.depth
            ),
        )?;
        writeln!(out)?;
    }
    writeln!(
        out,
        "cairn÷this = cairn MiB/s ÷ that system's MiB/s (1 = parity, below 1 = cairn slower);"
    )?;
    write_server_legend(out)?;
    for sys in [
        System::Cairn,
        System::CairnReplicated,
        System::Pread,
        System::TcpPingPong,
        System::RawFdatasync,
        System::RawOneSync,
        System::RawRead,
        System::RawFdatasyncThird,
    ] {
        writeln!(out, "  {:<18} {}", sys.label(), sys.description())?;
    }
    writeln!(out)?;
    writeln!(out, "goals")?;
    for g in &r.goals {
        write_goal(out, g)?;
    }
    writeln!(out)?;
    write_rss_table(out, &r.peak_rss)?;
    for n in &r.notes {
        writeln!(out, "note: {n}")?;
    }
    writeln!(out, "total {:.1} s", r.seconds)
}
