//! Output shared by every workload: number and size formatting for the
//! human tables, the machine / command-line header, the peak-memory table,
//! the servers' handling-time and CPU lines, and the JSON file.

use std::io::{self, Write};
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::ProcessRss;
use crate::machine::Machine;
use crate::measure::{Compared, PhaseResult};
use crate::watch::{ProcessCpu, ServerTime};

/// Returns `x` rounded to an integer with thousands separators
/// (`12,345`); large rates read faster that way.
pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let n = x.round().abs() as u64;
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if x < -0.5 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Returns a latency in µs with one decimal below 100 µs and none above.
pub fn micros(us: f64) -> String {
    if us < 100.0 {
        format!("{us:.1}")
    } else {
        thousands(us)
    }
}

/// Returns a ratio with two significant digits or so (`0.031`, `0.45`,
/// `1.2`, `37`), `-` when unknown.
pub fn ratio(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(r) if r >= 10.0 => format!("{r:.0}"),
        Some(r) if r >= 1.0 => format!("{r:.2}"),
        Some(r) if r >= 0.1 => format!("{r:.2}"),
        Some(r) => format!("{r:.3}"),
    }
}

/// Returns KiB as MiB with one decimal, `-` when unknown.
pub fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

/// Writes the machine and the command line, the first lines of every
/// table.
///
/// # Errors
/// When `out` fails.
pub fn write_header(
    out: &mut impl Write,
    workload: &str,
    machine: &Machine,
    command_line: &[String],
) -> io::Result<()> {
    writeln!(out, "cairn-bench {workload}")?;
    writeln!(out, "  command: {}", command_line.join(" "))?;
    writeln!(
        out,
        "  machine: {} CPUs ({}), {:.1} GiB RAM, {} ({})",
        machine.nproc,
        if machine.cpu_model.is_empty() {
            "unknown CPU"
        } else {
            &machine.cpu_model
        },
        machine.mem_total_kib as f64 / f64::from(1 << 20),
        machine.kernel,
        machine.kernel_version,
    )
}

/// Writes the peak-resident-memory table.
///
/// # Errors
/// When `out` fails.
pub fn write_rss_table(out: &mut impl Write, rows: &[ProcessRss]) -> io::Result<()> {
    let w = rows
        .iter()
        .map(|r| r.process.len())
        .max()
        .unwrap_or(0)
        .max(7);
    writeln!(out, "peak resident memory (VmHWM)")?;
    writeln!(out, "  {:<w$} {:>8} {:>12}", "process", "pid", "peak RSS")?;
    for r in rows {
        writeln!(
            out,
            "  {:<w$} {:>8} {:>12}",
            r.process,
            r.pid,
            mib(r.peak_rss_kib)
        )?;
    }
    Ok(())
}

/// Returns a size in bytes as `256 MiB` or `1 GiB`.
pub fn size(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else if bytes < 1 << 20 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{} MiB", thousands((bytes >> 20) as f64))
    }
}

/// Writes the chunkservers' handling times of one phase, one line (the
/// role only when a chain was watched).
pub fn write_server_time(
    out: &mut impl Write,
    label: &str,
    times: &[ServerTime],
) -> io::Result<()> {
    // Only the data path's opcodes; pings and stats are noise here.
    let parts: Vec<String> = times
        .iter()
        .filter(|t| matches!(t.op.as_str(), "read" | "write" | "forward"))
        .map(|t| {
            let role = if t.role == "any" {
                String::new()
            } else {
                format!(" ({})", t.role)
            };
            let mut errors = if t.errors > 0 {
                format!(", {} errors", thousands(t.errors as f64))
            } else {
                String::new()
            };
            if let Some(a) = t.allocations_per_request {
                errors.push_str(&format!(", {a:.1} heap allocations"));
            }
            format!(
                "{}{role} {} {} µs × {} ({} KiB each{errors})",
                t.chunkserver,
                t.op,
                micros(t.mean_us),
                thousands(t.requests as f64),
                thousands(t.mean_kib())
            )
        })
        .collect();
    if parts.is_empty() {
        return Ok(());
    }
    writeln!(out, "  {label}{}", parts.join(", "))
}

/// Writes what the handling-time and CPU lines mean.
///
/// # Errors
/// When `out` fails.
pub fn write_server_legend(out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "handling time = the chunkserver's own time per request, decoded request to reply \
         queued (mean × requests, mean payload, error replies, and the chunkserver process's \
         heap allocations per request it handled, all opcodes, metrics reads subtracted);"
    )?;
    writeln!(
        out,
        "CPU = CPU seconds used during cairn's part (cores = CPU ÷ wall time; cairn-bench is \
         the client)."
    )
}

/// Writes the CPU the processes used during Cairn's part of one phase.
pub fn write_cpu(out: &mut impl Write, label: &str, cpu: &[ProcessCpu]) -> io::Result<()> {
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

/// Writes a queue-depth-1 random-read phase: one row per system with its
/// p50, p99, p99.9, max and mean latency in µs, then the line computing
/// the phase's ratio, `of`'s p50 ÷ the sum of the p50s of `floors`.
///
/// # Errors
/// When `out` fails.
pub fn write_latency_phase<P, S: Compared>(
    out: &mut impl Write,
    p: &PhaseResult<P, S>,
    of: S,
    floors: [S; 2],
) -> io::Result<()> {
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
    let p50 = |sys: S| p.system(sys).and_then(|s| s.latency).map(|l| l.p50_us);
    if let (Some(c), Some(d), Some(n)) = (p50(of), p50(floors[0]), p50(floors[1])) {
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
    Ok(())
}

/// Writes `report` to `path` as pretty-printed JSON.
///
/// # Errors
/// When the file cannot be written.
pub fn write_json<T: Serialize>(path: &Path, report: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(report).context("encoding the JSON report")?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(-1_500.0), "-1,500");
        assert_eq!(thousands(f64::NAN), "-");
        assert_eq!(micros(8.26), "8.3");
        assert_eq!(micros(1_500.2), "1,500");
        assert_eq!(ratio(None), "-");
        assert_eq!(ratio(Some(0.0312)), "0.031");
        assert_eq!(ratio(Some(0.456)), "0.46");
        assert_eq!(ratio(Some(37.2)), "37");
        assert_eq!(mib(Some(2048)), "2.0 MiB");
    }
}
