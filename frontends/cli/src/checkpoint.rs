//! `cairn checkpoint save|load|list|prune`: the checkpoint API of
//! [`cairn_client::Checkpoints`] from a shell.
//!
//! * `save` streams FILE (or stdin) through
//!   [`Checkpoints::save_reader`], which writes a hidden temporary file,
//!   records size, CRC32 and metrics and renames it into place, so a
//!   reader never sees a partial checkpoint; the bar follows the bytes the
//!   library reports written.
//! * `load` only ever hands out checked bytes. To a file it streams the
//!   checkpoint in 8 MiB pieces (two reads in flight) into a temporary
//!   file next to FILE, checks the size and CRC32 against the record,
//!   fsyncs and renames it over FILE, so memory stays flat for checkpoints
//!   of many GiB and FILE is never left with unchecked bytes. To stdout,
//!   which cannot take bytes back, it uses [`Checkpoints::load`] /
//!   [`Checkpoints::load_latest`], which check the whole checkpoint in
//!   memory before a byte is written. Without NAME it takes the newest
//!   checkpoint, and looks again if that one is pruned before it is
//!   opened.
//! * `list` prints the records (times in UTC); `prune` keeps the newest N
//!   and prints what it removed (including temporary files of saves that
//!   died long ago).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cairn_client::{CheckpointInfo, Checkpoints, Client, ErrorCode, File};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWriteExt};

use crate::data::DataArgs;
use crate::format::{full_time, human_bytes, table};
use crate::progress::{Progress, Summary, print_summary};
use crate::report::{Context, op_error};
use crate::transfer::{PIECE, cairn_path, io_text, local_error};

/// Reads in flight while loading to a file.
const IN_FLIGHT: usize = 2;
/// Attempts to open the newest checkpoint while others prune it.
const LATEST_ATTEMPTS: usize = 5;

/// Flags of `cairn checkpoint`.
#[derive(Debug, clap::Args)]
pub struct CheckpointArgs {
    /// Client flags (cache).
    #[command(flatten)]
    pub data: DataArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: CheckpointCommand,
}

/// `cairn checkpoint` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CheckpointCommand {
    /// Save FILE (or stdin) as checkpoint NAME in DIR.
    ///
    /// The checkpoint appears atomically once every byte is stored on
    /// every replica, with its size, CRC32, creation time, save time and
    /// metrics recorded; a checkpoint of the same name is replaced. Readers
    /// never see a partial checkpoint.
    Save {
        /// Checkpoint directory (absolute Cairn path; created if missing).
        dir: String,
        /// Checkpoint name (no '/', not starting with '.').
        name: String,
        /// Local file to save; "-" or nothing reads stdin.
        #[arg(value_name = "FILE|-")]
        file: Option<PathBuf>,
        /// A metric to record with the checkpoint, e.g. --metric loss=0.42
        /// (repeatable; values are numbers).
        #[arg(long = "metric", value_name = "KEY=VALUE", value_parser = parse_metric)]
        metrics: Vec<(String, f64)>,
    },
    /// Write a checkpoint (the newest by default) to a file or stdout.
    ///
    /// Only bytes checked against the checkpoint's recorded size and CRC32
    /// are written: a file is written next to FILE and renamed over it
    /// once checked; stdout gets the checkpoint after it was read and
    /// checked whole, in memory. Exits 1 when DIR has no checkpoint.
    Load {
        /// Checkpoint directory (absolute Cairn path).
        dir: String,
        /// Checkpoint name; the newest checkpoint when omitted.
        name: Option<String>,
        /// Where to write it: a local file (replaced atomically once
        /// checked) or "-" for stdout.
        #[arg(short = 'o', long, value_name = "FILE|-", default_value = "-")]
        output: PathBuf,
    },
    /// List the checkpoints of DIR, oldest first: name, size, creation time
    /// (UTC), save time and metrics.
    List {
        /// Checkpoint directory (absolute Cairn path).
        dir: String,
    },
    /// Remove all but the newest N checkpoints of DIR; prints what it
    /// removed.
    ///
    /// Also removes temporary files of saves that died more than 10
    /// minutes ago.
    Prune {
        /// Checkpoint directory (absolute Cairn path).
        dir: String,
        /// How many of the newest checkpoints to keep.
        #[arg(long, value_name = "N")]
        keep: usize,
    },
    /// Make a directory manage its checkpoints: after every save through
    /// this command line or the API, and every file a program publishes in
    /// it through a `cairn mount` by renaming it into place (torch.save to
    /// a temporary name, then rename; Lightning, DeepSpeed and TF save
    /// files this way), only the newest N checkpoints stay. Published
    /// files get a record (`checkpoint list` shows them) and the mount
    /// measures their save and restore times and failed saves (its
    /// metrics: cairn_client_checkpoint_*). Creates the directory if
    /// needed; run again to change N.
    Init {
        /// Checkpoint directory (absolute Cairn path).
        dir: String,
        /// How many of the newest checkpoints to keep (at least 1).
        #[arg(long, value_name = "N")]
        keep: usize,
    },
}

/// Parses `key=value` with a finite number as the value.
///
/// # Errors
/// A message for a missing `=`, an empty key or a value that is not a
/// finite number.
pub fn parse_metric(s: &str) -> Result<(String, f64), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(format!("{s:?} has an empty metric name"));
    }
    let v: f64 = v
        .trim()
        .parse()
        .map_err(|_| format!("the value of metric {k:?} is not a number: {v:?}"))?;
    if !v.is_finite() {
        return Err(format!("the value of metric {k:?} must be finite, not {v}"));
    }
    Ok((k.to_string(), v))
}

/// How `checkpoint` commands print.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// No progress bar or summary line.
    pub quiet: bool,
    /// JSON instead of text.
    pub json: bool,
}

fn is_stdio(p: Option<&Path>) -> bool {
    p.is_none_or(|p| p == Path::new("-"))
}

/// Runs one `checkpoint` subcommand.
///
/// # Errors
/// As each command says; every error names the directory, checkpoint or
/// local file.
pub async fn run(c: &Client, cmd: &CheckpointCommand, out: Output) -> anyhow::Result<()> {
    match cmd {
        CheckpointCommand::Save {
            dir,
            name,
            file,
            metrics,
        } => {
            let metrics: BTreeMap<String, f64> = metrics.iter().cloned().collect();
            save(c, dir, name, file.as_deref(), metrics, out).await
        }
        CheckpointCommand::Load { dir, name, output } => {
            load(c, dir, name.as_deref(), output, out).await
        }
        CheckpointCommand::List { dir } => list(c, dir, out.json).await,
        CheckpointCommand::Prune { dir, keep } => prune(c, dir, *keep, out.json).await,
        CheckpointCommand::Init { dir, keep } => init(c, dir, *keep, out.json).await,
    }
}

/// Returns `created_unix_ms` as `YYYY-MM-DD HH:MM:SS` (UTC).
fn created(ms: u64) -> String {
    let ns = i64::try_from(ms)
        .unwrap_or(i64::MAX / 1_000_000)
        .saturating_mul(1_000_000);
    let t = full_time(ns);
    match t.split_once('.') {
        Some((secs, _)) => secs.replacen('T', " ", 1),
        None => t,
    }
}

/// Returns `loss=0.42 step=100`.
fn metrics_text(m: &BTreeMap<String, f64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Returns a record as JSON, with the creation time in RFC 3339 too.
fn info_json(dir: &str, info: &CheckpointInfo) -> Value {
    let mut v = serde_json::to_value(info).unwrap_or_else(|_| json!({ "name": info.name }));
    v["dir"] = json!(dir);
    v["created"] = json!(full_time(
        i64::try_from(info.created_unix_ms)
            .unwrap_or(i64::MAX / 1_000_000)
            .saturating_mul(1_000_000)
    ));
    v["crc32_hex"] = json!(info.crc32.map(|c| format!("{c:08x}")));
    v
}

async fn save(
    c: &Client,
    dir: &str,
    name: &str,
    file: Option<&Path>,
    metrics: BTreeMap<String, f64>,
    out: Output,
) -> anyhow::Result<()> {
    let op = "checkpoint save";
    let dir = cairn_path(op, dir)?;
    let cps = Checkpoints::new(c.clone(), &dir);
    let target = format!("{}/{name}", dir.trim_end_matches('/'));
    let started = Instant::now();
    let info = if is_stdio(file) {
        let stdin = tokio::io::stdin();
        if std::io::stdin().is_terminal() {
            return Err(op_error(
                op,
                &target,
                ErrorCode::Invalid,
                "stdin is a terminal: give FILE, or pipe the checkpoint in",
            ));
        }
        save_from(&cps, name, &target, stdin, None, metrics, out).await?
    } else {
        let path = file.unwrap_or(Path::new("-"));
        let mut f = tokio::fs::File::open(path)
            .await
            .map_err(|e| local_error(op, path, &e))?;
        f.set_max_buf_size(PIECE);
        let meta = f.metadata().await.map_err(|e| local_error(op, path, &e))?;
        if meta.is_dir() {
            anyhow::bail!("{op} {}: Is a directory", path.display());
        }
        // A FIFO or a device has no length known up front: a spinner.
        let size = meta.is_file().then_some(meta.len());
        save_from(&cps, name, &target, f, size, metrics, out).await?
    };
    let summary = Summary {
        op: "save",
        files: 1,
        failed: 0,
        bytes: info.size,
        elapsed: started.elapsed(),
    };
    let line = format!(
        "saved checkpoint {target}: {} in {:.1} s ({}/s), crc32 {}",
        human_bytes(info.size),
        summary.elapsed.as_secs_f64(),
        // Truncated to whole bytes per second, as printed.
        human_bytes(summary.bytes_per_second() as u64),
        info.crc_text()
    );
    let mut v = info_json(cps.dir(), &info);
    v["bytes_per_second"] = json!(summary.bytes_per_second());
    print_summary(&line, &v, out.quiet, out.json, false);
    Ok(())
}

async fn save_from<R: AsyncRead + Unpin>(
    cps: &Checkpoints,
    name: &str,
    target: &str,
    mut reader: R,
    size: Option<u64>,
    metrics: BTreeMap<String, f64>,
    out: Output,
) -> anyhow::Result<CheckpointInfo> {
    let progress = Progress::new("save", 1, size, out.quiet).with_label(format!("save {name}"));
    let r = cps
        .save_reader(name, &mut reader, metrics, |n| progress.set_bytes(n))
        .await
        .op("checkpoint save", target);
    progress.finish();
    r
}

async fn load(
    c: &Client,
    dir: &str,
    name: Option<&str>,
    output: &Path,
    out: Output,
) -> anyhow::Result<()> {
    let op = "checkpoint load";
    let dir = cairn_path(op, dir)?;
    let cps = Checkpoints::new(c.clone(), &dir);
    let none = || {
        op_error(
            op,
            &dir,
            ErrorCode::NotFound,
            format!("no checkpoint in {dir}"),
        )
    };
    let started = Instant::now();
    let to_stdout = is_stdio(Some(output));
    let info = if to_stdout {
        let (info, data) = match name {
            Some(n) => cps.load(n).await.op(op, &path_of(&dir, n))?,
            None => cps.load_latest().await.op(op, &dir)?.ok_or_else(none)?,
        };
        let mut stdout = tokio::io::stdout();
        let written = async {
            stdout.write_all(&data).await?;
            stdout.flush().await
        };
        written
            .await
            .map_err(|e| anyhow::anyhow!("{op}: writing to stdout: {}", io_text(&e)))?;
        info
    } else {
        let (info, f) = open(&cps, &dir, name).await?.ok_or_else(none)?;
        let target = path_of(&dir, &info.name);
        let r = load_to_file(&info, &f, &target, output, out.quiet).await;
        if let Err(e) = f.close().await {
            tracing::debug!(error = %e, "closing a read handle");
        }
        r?;
        info
    };
    let summary = Summary {
        op: "load",
        files: 1,
        failed: 0,
        bytes: info.size,
        elapsed: started.elapsed(),
    };
    let dest = if to_stdout {
        "stdout".to_string()
    } else {
        output.display().to_string()
    };
    let line = format!(
        "loaded checkpoint {} to {dest}: {} in {:.1} s ({}/s), crc32 {}",
        path_of(&dir, &info.name),
        human_bytes(info.size),
        summary.elapsed.as_secs_f64(),
        // Truncated to whole bytes per second, as printed.
        human_bytes(summary.bytes_per_second() as u64),
        info.crc32.map_or_else(
            || "unrecorded (size checked)".into(),
            |c| format!("{c:08x} ok")
        )
    );
    let mut v = info_json(cps.dir(), &info);
    v["output"] = json!(dest);
    v["bytes_per_second"] = json!(summary.bytes_per_second());
    print_summary(&line, &v, out.quiet, out.json, to_stdout);
    Ok(())
}

fn path_of(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// Opens checkpoint `name`, or the newest one (looking again when it is
/// pruned before it opens); `None` when there is none.
async fn open(
    cps: &Checkpoints,
    dir: &str,
    name: Option<&str>,
) -> anyhow::Result<Option<(CheckpointInfo, File)>> {
    let op = "checkpoint load";
    if let Some(n) = name {
        return cps.open(n).await.op(op, &path_of(dir, n)).map(Some);
    }
    for _ in 0..LATEST_ATTEMPTS {
        let Some(latest) = cps.latest().await.op(op, dir)? else {
            return Ok(None);
        };
        match cps.open(&latest.name).await {
            Err(e) if matches!(e.code, ErrorCode::NotFound | ErrorCode::NoData) => continue,
            r => return r.op(op, &path_of(dir, &latest.name)).map(Some),
        }
    }
    Err(op_error(
        op,
        dir,
        ErrorCode::Unavailable,
        "checkpoints kept changing under the reader",
    ))
}

/// Streams checkpoint `f` into a temporary file next to `output`, checks it
/// and renames it over `output`.
async fn load_to_file(
    info: &CheckpointInfo,
    f: &File,
    target: &str,
    output: &Path,
    quiet: bool,
) -> anyhow::Result<()> {
    let op = "checkpoint load";
    let tmp = temp_path(output);
    let r = write_checked(info, f, target, output, &tmp, quiet).await;
    if r.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    r?;
    tokio::fs::rename(&tmp, output)
        .await
        .map_err(|e| local_error(op, output, &e))
}

/// Returns `DIR/.NAME.cairn-part-PID` for output `DIR/NAME`.
fn temp_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "checkpoint".to_string());
    output.with_file_name(format!(".{name}.cairn-part-{}", std::process::id()))
}

async fn write_checked(
    info: &CheckpointInfo,
    f: &File,
    target: &str,
    output: &Path,
    tmp: &Path,
    quiet: bool,
) -> anyhow::Result<()> {
    let op = "checkpoint load";
    let mut out = tokio::fs::File::create(tmp)
        .await
        .map_err(|e| local_error(op, output, &e))?;
    out.set_max_buf_size(PIECE);
    let progress =
        Progress::new("load", 1, Some(info.size), quiet).with_label(format!("load {}", info.name));
    let len = info.size.min(f.len());
    let mut pieces = futures::stream::iter((0..len).step_by(PIECE))
        .map(|at| async move {
            let n = usize::try_from(len - at).unwrap_or(PIECE).min(PIECE);
            f.read_at(at, n).await
        })
        .buffered(IN_FLIGHT);
    let mut crc = crc32fast::Hasher::new();
    let mut size = 0u64;
    let copied = async {
        while let Some(piece) = pieces.next().await {
            let data = piece.op(op, target)?;
            crc.update(&data);
            size += data.len() as u64;
            out.write_all(&data)
                .await
                .map_err(|e| local_error(op, output, &e))?;
            progress.add_bytes(data.len() as u64);
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    progress.finish();
    copied?;
    let crc = crc.finalize();
    if size != info.size || info.crc32.is_some_and(|c| c != crc) {
        return Err(op_error(
            op,
            target,
            ErrorCode::Checksum,
            format!(
                "read {size} bytes with crc32 {crc:08x}, but its record says {} bytes with crc32 {}; {} is unchanged",
                info.size,
                info.crc_text(),
                output.display()
            ),
        ));
    }
    out.flush().await.map_err(|e| local_error(op, output, &e))?;
    out.sync_all()
        .await
        .map_err(|e| local_error(op, output, &e))
}

async fn list(c: &Client, dir: &str, json: bool) -> anyhow::Result<()> {
    let op = "checkpoint list";
    let dir = cairn_path(op, dir)?;
    let cps = Checkpoints::new(c.clone(), &dir);
    let infos = cps.list().await.op(op, &dir)?;
    if json {
        let v: Vec<Value> = infos.iter().map(|i| info_json(cps.dir(), i)).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if infos.is_empty() {
        eprintln!("no checkpoint in {dir}");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = infos
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                human_bytes(i.size),
                created(i.created_unix_ms),
                format!("{:.1} s", i.save_seconds),
                metrics_text(&i.metrics),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["NAME", "SIZE", "CREATED (UTC)", "SAVE TIME", "METRICS"],
            &rows,
            &[1, 3]
        )
    );
    Ok(())
}

async fn init(c: &Client, dir: &str, keep: usize, json: bool) -> anyhow::Result<()> {
    let op = "checkpoint init";
    let dir = cairn_path(op, dir)?;
    let cps = Checkpoints::new(c.clone(), &dir);
    cps.set_keep(keep).await.op(op, &dir)?;
    // What is there already follows the new rule at once.
    let removed = cps.keep_last(keep).await.op(op, &dir)?;
    if json {
        let v = json!({ "dir": cps.dir(), "keep": keep, "removed": removed });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{dir} keeps its newest {keep} checkpoint(s)");
    for name in &removed {
        println!("removed {}", path_of(&dir, name));
    }
    Ok(())
}

async fn prune(c: &Client, dir: &str, keep: usize, json: bool) -> anyhow::Result<()> {
    let op = "checkpoint prune";
    let dir = cairn_path(op, dir)?;
    let cps = Checkpoints::new(c.clone(), &dir);
    let removed = cps.keep_last(keep).await.op(op, &dir)?;
    if json {
        let v = json!({ "dir": cps.dir(), "keep": keep, "removed": removed });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if removed.is_empty() {
        println!("nothing to remove in {dir} (keeping the newest {keep})");
    }
    for name in &removed {
        println!("removed {}", path_of(&dir, name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_parse() {
        assert_eq!(parse_metric("loss=0.42"), Ok(("loss".into(), 0.42)));
        assert_eq!(parse_metric(" step = 100 "), Ok(("step".into(), 100.0)));
        assert_eq!(parse_metric("lr=1e-4"), Ok(("lr".into(), 1e-4)));
        assert!(parse_metric("loss").is_err());
        assert!(parse_metric("=1").is_err());
        assert!(parse_metric("loss=low").is_err());
        assert!(parse_metric("loss=NaN").is_err());
        assert!(parse_metric("loss=inf").is_err());
    }

    #[test]
    fn records_print() {
        // 2000-02-29 12:34:56.789 UTC.
        assert_eq!(created(951_827_696_789), "2000-02-29 12:34:56");
        let m: BTreeMap<String, f64> = [("step".to_string(), 100.0), ("loss".to_string(), 0.5)]
            .into_iter()
            .collect();
        assert_eq!(metrics_text(&m), "loss=0.5 step=100");
        assert_eq!(metrics_text(&BTreeMap::new()), "");
    }

    #[test]
    fn temp_files_sit_next_to_the_output() {
        let t = temp_path(Path::new("/data/model.pt"));
        assert_eq!(t.parent(), Some(Path::new("/data")));
        let name = t.file_name().map(|n| n.to_string_lossy().into_owned());
        assert!(name.is_some_and(|n| n.starts_with(".model.pt.cairn-part-")));
    }

    #[test]
    fn stdio_is_dash_or_nothing() {
        assert!(is_stdio(None));
        assert!(is_stdio(Some(Path::new("-"))));
        assert!(!is_stdio(Some(Path::new("./-x"))));
    }
}
