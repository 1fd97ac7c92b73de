//! The human-readable table of `cairn-bench client`: one block per kind
//! of phase, Cairn's rows carrying their phase's ratio, then the CPU and
//! handling-time lines, the ratios at a glance, the client's memory and
//! every process's.

use std::io::{self, Write};

use super::{ClientReport, Phase, PhaseResult, System, SystemResult};
use crate::measure::Compared;
use crate::report::{
    mib, micros, ratio, size, thousands, write_cpu, write_header, write_latency_phase,
    write_rss_table, write_server_legend, write_server_time,
};

/// The rate columns of a block.
#[derive(Clone, Copy)]
enum Unit {
    /// GB/s (10⁹ bytes) and MiB/s.
    Bytes,
    /// Operations per second (IOPS, files/s) and MiB/s.
    Ops(&'static str),
}

impl Unit {
    fn heads(self) -> [&'static str; 2] {
        match self {
            Unit::Bytes => ["GB/s", "MiB/s"],
            Unit::Ops(name) => [name, "MiB/s"],
        }
    }

    fn values(self, s: &SystemResult) -> [String; 2] {
        let mib = thousands(s.mib_per_sec);
        match self {
            Unit::Bytes => [
                format!("{:.2}", s.mib_per_sec * f64::from(1 << 20) / 1e9),
                mib,
            ],
            Unit::Ops(_) => [thousands(s.ops_per_sec), mib],
        }
    }
}

/// Writes one row per system of each phase of `rows` (labelled by the
/// row's first column), the ratio on Cairn's row, then each phase's CPU
/// and handling times.
fn write_block(
    out: &mut impl Write,
    title: &str,
    first: &str,
    rows: &[(String, &PhaseResult)],
    unit: Unit,
) -> io::Result<()> {
    writeln!(out, "{title}")?;
    let [r1, r2] = unit.heads();
    writeln!(
        out,
        "  {first:<14} {:<20} {r1:>9} {r2:>9} {:>9} {:>9} {:>9} {:>7}",
        "system", "p50 µs", "p99 µs", "p99.9 µs", "ratio"
    )?;
    for (label, p) in rows {
        for (i, s) in p.systems.iter().enumerate() {
            let [v1, v2] = unit.values(s);
            let lat = s
                .latency
                .map_or([String::new(), String::new(), String::new()], |l| {
                    [micros(l.p50_us), micros(l.p99_us), micros(l.p999_us)]
                });
            let r = if s.system.is_cairn() {
                ratio(p.ratio)
            } else {
                String::new()
            };
            let line = format!(
                "  {:<14} {:<20} {v1:>9} {v2:>9} {:>9} {:>9} {:>9} {r:>7}",
                if i == 0 { label.as_str() } else { "" },
                s.system.label(),
                lat[0],
                lat[1],
                lat[2],
            );
            writeln!(out, "{}", line.trim_end())?;
        }
    }
    for (_, p) in rows {
        write_around(out, p)?;
    }
    Ok(())
}

/// Writes the CPU and handling-time lines of `p`.
fn write_around(out: &mut impl Write, p: &PhaseResult) -> io::Result<()> {
    write_cpu(
        out,
        &format!("CPU during cairn's {}: ", p.phase.name()),
        &p.cpu,
    )?;
    write_server_time(
        out,
        &format!("chunkserver handling time, {}: ", p.phase.name()),
        &p.server_time,
    )
}

/// Returns the rows of `phases` that ran, each labelled.
fn rows<'a>(r: &'a ClientReport, phases: &[(Phase, String)]) -> Vec<(String, &'a PhaseResult)> {
    phases
        .iter()
        .filter_map(|(ph, label)| r.phase(*ph).map(|p| (label.clone(), p)))
        .collect()
}

/// Writes the whole report of `cairn-bench client` as tables.
///
/// # Errors
/// When `out` fails.
pub fn print_table(out: &mut impl Write, r: &ClientReport) -> io::Result<()> {
    let s = &r.settings;
    write_header(out, r.workload, &r.machine, &r.command_line)?;
    writeln!(out, "  data:    {}", r.run.data.describe())?;
    writeln!(
        out,
        "  servers: {} × {}, {} × {} (1 shard each; benchmark: {} build)",
        r.meta_replicas,
        r.run.meta_binary.display(),
        r.chunkservers,
        r.run.chunkserver_binary.display(),
        r.bench_build
    )?;
    let v = &r.volume;
    let chains: Vec<String> = v
        .chains
        .iter()
        .map(|c| format!("{} ({})", c.chain, c.path()))
        .collect();
    writeln!(
        out,
        "  volume:  /{}, replication {}, {} chunks, stripe width {}{}; chains {}",
        v.name,
        v.replication,
        size(v.chunk_size),
        v.stripe_width,
        if v.encrypted {
            ", ENCRYPTED (AES-256-GCM on the client)"
        } else {
            ""
        },
        chains.join(", ")
    )?;
    if let Some(c) = v.compression {
        let ratio = if v.stored_bytes > 0 {
            format!("{:.2}", v.logical_bytes as f64 / v.stored_bytes as f64)
        } else {
            "-".into()
        };
        writeln!(
            out,
            "  compression: {c:?} in {} units on the client; {} MiB written, {} MiB stored \
             per replica: ratio {ratio}; data {}",
            size(r.settings.compression_unit),
            v.logical_bytes >> 20,
            v.stored_bytes >> 20,
            if r.settings.compressible {
                "text-like (--compressible)"
            } else {
                "random (stored raw)"
            }
        )?;
    }
    for w in &r.setup_writes {
        writeln!(
            out,
            "  setup:   {}: {} MiB/s (not compared)",
            w.what,
            thousands(w.result.mib_per_sec)
        )?;
    }
    writeln!(out)?;

    let seq = rows(
        r,
        &[
            (Phase::SeqRead, "1".to_string()),
            (Phase::SeqReadStreams, s.streams.to_string()),
        ],
    );
    if !seq.is_empty() {
        write_block(
            out,
            &format!(
                "Sequential reads, cold client (memory cache {}): {} per stream, 4 MiB read_at calls",
                size(s.seq_cache),
                size(s.seq_size)
            ),
            "streams",
            &seq,
            Unit::Bytes,
        )?;
        writeln!(out)?;
    }
    let ckpt = rows(
        r,
        &[
            (Phase::CheckpointWrite, "write_at".to_string()),
            (Phase::CheckpointSave, "save_reader".to_string()),
        ],
    );
    if !ckpt.is_empty() {
        write_block(
            out,
            &format!(
                "Checkpoint: {} written front to back in 8 MiB calls, one at a time, fsync + close",
                size(s.checkpoint_size)
            ),
            "API",
            &ckpt,
            Unit::Bytes,
        )?;
        writeln!(out)?;
    }
    if let Some(p) = r.phase(Phase::RandomRead) {
        write_latency_phase(out, p, System::Cairn, [System::Pread, System::TcpPingPong])?;
        write_around(out, p)?;
        writeln!(out)?;
    }
    let concurrent = rows(r, &[(Phase::RandomReadConcurrent, s.readers.to_string())]);
    if !concurrent.is_empty() {
        write_block(
            out,
            &format!(
                "4 KiB random reads, {} readers, each one read at a time, other offsets",
                s.readers
            ),
            "readers",
            &concurrent,
            Unit::Ops("IOPS"),
        )?;
        writeln!(out)?;
    }
    let small = rows(
        r,
        &[
            (Phase::SmallWrite, format!("write ×{}", s.small_tasks)),
            (Phase::SmallRead, "read ×1".to_string()),
            (
                Phase::SmallReadConcurrent,
                format!("read ×{}", s.small_tasks),
            ),
        ],
    );
    if !small.is_empty() {
        write_block(
            out,
            &format!(
                "Small files: {} files of {} KiB, one directory, read back in random orders \
                 (local reads O_DIRECT, not from the page cache)",
                thousands(s.small_files as f64),
                s.small_size >> 10
            ),
            "phase",
            &small,
            Unit::Ops("files/s"),
        )?;
        writeln!(out)?;
    }

    writeln!(
        out,
        "ratios (1 = parity; below 1 = cairn slower, except read 4K, a latency: above 1 = slower)"
    )?;
    for p in &r.phases {
        writeln!(
            out,
            "  {:<17} {:<50} {:>7}",
            p.phase.name(),
            p.ratio_of,
            ratio(p.ratio)
        )?;
    }
    writeln!(
        out,
        "  (×N: {} streams, {} readers, {} small-file tasks)",
        s.streams, s.readers, s.small_tasks
    )?;
    writeln!(out)?;
    write_beside_plain(out, r)?;
    write_server_legend(out)?;
    let mut seen = Vec::new();
    for sys in r.phases.iter().flat_map(|p| &p.systems).map(|s| s.system) {
        if !seen.contains(&sys) {
            seen.push(sys);
            writeln!(out, "  {:<20} {}", sys.label(), sys.description())?;
        }
    }
    writeln!(out)?;
    let marks: Vec<String> = r
        .client
        .iter()
        .map(|c| format!("{} {}", c.phase.name(), mib(c.peak_rss_kib)))
        .collect();
    writeln!(
        out,
        "client (cairn-bench) peak resident memory after cairn's part of each phase:"
    )?;
    writeln!(out, "  {}", marks.join(", "))?;
    writeln!(out)?;
    write_rss_table(out, &r.peak_rss)?;
    for n in &r.run.notes {
        writeln!(out, "note: {n}")?;
    }
    writeln!(out, "total {:.1} s", r.run.seconds)
}

/// The client process's CPU seconds during a phase's Cairn part.
fn client_cpu(p: &PhaseResult) -> Option<f64> {
    p.cpu
        .iter()
        .find(|c| c.process == crate::watch::THIS_PROCESS)
        .map(|c| c.cpu_seconds)
}

/// With `--beside-plain`: each phase on the transformed volume beside the
/// same phase on the plain one, run earlier against the same servers.
fn write_beside_plain(out: &mut impl Write, r: &ClientReport) -> io::Result<()> {
    if r.plain_phases.is_empty() {
        return Ok(());
    }
    let what = match (r.volume.encrypted, r.volume.compression) {
        (true, Some(c)) => format!("encrypted + {c:?}"),
        (true, None) => "encrypted".to_string(),
        (false, Some(c)) => format!("{c:?}"),
        (false, None) => "transformed".to_string(),
    };
    writeln!(
        out,
        "{what} beside plain, same run (MiB/s, files/s, IOPS; read 4K: p50 µs, a latency)"
    )?;
    writeln!(
        out,
        "  {:<17} {:>12} {:>12} {:>7}   {:>22}",
        "phase", "plain", &what, "ratio", "client CPU-s plain/new"
    )?;
    for p in &r.phases {
        let Some(q) = r.plain_phases.iter().find(|q| q.phase == p.phase) else {
            continue;
        };
        let (Some(new), Some(old)) = (p.systems.first(), q.systems.first()) else {
            continue;
        };
        let (a, b) = match p.phase {
            Phase::RandomRead => (
                old.latency.as_ref().map_or(0.0, |l| l.p50_us),
                new.latency.as_ref().map_or(0.0, |l| l.p50_us),
            ),
            Phase::SeqRead
            | Phase::SeqReadStreams
            | Phase::CheckpointWrite
            | Phase::CheckpointSave => (old.mib_per_sec, new.mib_per_sec),
            _ => (old.ops_per_sec, new.ops_per_sec),
        };
        let r = if a > 0.0 { Some(b / a) } else { None };
        let cpu = match (client_cpu(q), client_cpu(p)) {
            (Some(x), Some(y)) => format!("{x:.2} / {y:.2}"),
            _ => "-".to_string(),
        };
        writeln!(
            out,
            "  {:<17} {:>12} {:>12} {:>7}   {:>22}",
            p.phase.name(),
            thousands(a),
            thousands(b),
            ratio(r),
            cpu
        )?;
    }
    writeln!(out)
}
