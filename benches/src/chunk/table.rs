//! The human-readable table of `cairn-bench chunk`.

use std::io::{self, Write};

use super::{ChunkReport, Goal, Phase, PhaseResult, ProcessCpu, ServerTime, System};
use crate::report::{micros, ratio, thousands, write_header, write_rss_table};

/// Returns a size in bytes as `256 MiB` or `1 GiB`.
fn size(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", thousands((bytes >> 20) as f64))
    }
}

/// Writes the chunkservers' handling times of one phase, one line.
fn write_server_time(out: &mut impl Write, label: &str, times: &[ServerTime]) -> io::Result<()> {
    // Only the data path's opcodes; pings and stats are noise here.
    let parts: Vec<String> = times
        .iter()
        .filter(|t| matches!(t.op.as_str(), "read" | "write" | "forward"))
        .map(|t| {
            format!(
                "{} ({}) {} {} µs × {}",
                t.chunkserver,
                t.role,
                t.op,
                micros(t.mean_us),
                thousands(t.requests as f64)
            )
        })
        .collect();
    if parts.is_empty() {
        return Ok(());
    }
    writeln!(out, "  {label}{}", parts.join(", "))
}

/// Writes the CPU the processes used during Cairn's part of one phase.
fn write_cpu(out: &mut impl Write, label: &str, cpu: &[ProcessCpu]) -> io::Result<()> {
    if cpu.is_empty() {
        return Ok(());
    }
    let parts: Vec<String> = cpu
        .iter()
        .map(|c| {
            format!(
                "{} {:.2} s ({:.2} cores)",
                c.process, c.cpu_seconds, c.cores
            )
        })
        .collect();
    writeln!(out, "  {label}{}", parts.join(", "))
}

fn write_random_reads(out: &mut impl Write, p: &PhaseResult) -> io::Result<()> {
    writeln!(out, "4 KiB random reads, queue depth 1: {}", p.what)?;
    writeln!(
        out,
        "  {:<14} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "system", "p50 µs", "p99 µs", "p99.9 µs", "max µs", "mean µs"
    )?;
    for s in &p.systems {
        let l = s.latency.unwrap_or_default();
        writeln!(
            out,
            "  {:<14} {:>9} {:>9} {:>9} {:>9} {:>9}",
            s.system.label(),
            micros(l.p50_us),
            micros(l.p99_us),
            micros(l.p999_us),
            micros(l.max_us),
            micros(l.mean_us),
        )?;
    }
    let p50 = |sys: System| p.system(sys).and_then(|s| s.latency).map(|l| l.p50_us);
    if let (Some(c), Some(d), Some(n)) = (
        p50(System::Cairn),
        p50(System::Pread),
        p50(System::TcpPingPong),
    ) {
        writeln!(
            out,
            "  ratio = {} = {} ÷ ({} + {}) = {}",
            p.ratio_of,
            micros(c),
            micros(d),
            micros(n),
            ratio(p.ratio)
        )?;
    }
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
    writeln!(
        out,
        "handling time = the chunkserver's own time per request, decoded request to reply \
         queued (mean × requests);"
    )?;
    writeln!(
        out,
        "CPU = CPU seconds used during cairn's part (cores = CPU ÷ wall time; cairn-bench is \
         the client)."
    )?;
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
