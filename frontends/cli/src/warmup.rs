//! `cairn warmup PATH...`: loads files into the caches that this machine's
//! `cairn mount` reads from, before a training job starts.
//!
//! # Why through the mount
//! Each client process has its own block cache (memory, and an SSD tier
//! whose files only that process reads). A warm-up run as a process of its
//! own would fill a cache nobody else reads, so `cairn warmup` asks the
//! running mount to do the reading: for each range of each file it reads
//! the extended attribute `user.cairn.warmup:OFFSET:LEN`
//! (`cairn_fuse::fs::WARMUP_XATTR`), and the mount loads that range into
//! its own cache and answers with the bytes it loaded. Blocks land in the
//! mount's memory tier and, when it has an SSD tier (`cairn mount
//! --cache-dir`), what the memory tier evicts overflows there; a data set
//! larger than both keeps its most recently warmed part.
//!
//! # Resumable
//! Ranges already in the mount's cache are answered from it without a
//! network read, so running the same command again after an interruption
//! costs little beyond the listing.
//!
//! PATHs must be files or directories on a Cairn mount of this machine; a
//! Cairn path that is not mounted here is refused, since warming this
//! process would not help any reader.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context as _;
use serde_json::json;

use crate::progress::{Progress, print_summary};

/// Bytes per warm-up request (each runs within the mount's request
/// timeout).
const RANGE: u64 = 256 << 20;

/// Flags of `cairn warmup`.
#[derive(Debug, clap::Args)]
pub struct WarmupArgs {
    /// Files or directories on a Cairn mount of this machine (directories
    /// are walked; symbolic links are not followed).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,

    /// Ranges loaded in parallel.
    #[arg(short = 'j', long, default_value_t = 8, value_name = "N")]
    pub jobs: usize,
}

/// `cairn warmup`.
///
/// # Errors
/// A path is not on a Cairn mount or cannot be walked, or some files could
/// not be loaded (the others are).
pub async fn run(args: &WarmupArgs, quiet: bool, json: bool) -> anyhow::Result<()> {
    if args.jobs == 0 {
        anyhow::bail!("warmup: --jobs must be at least 1");
    }
    let mut files = Vec::new();
    for p in &args.paths {
        let abs =
            std::fs::canonicalize(p).map_err(|e| crate::transfer::local_error("warmup", p, &e))?;
        let fs = crate::doctor::fs_type_of(&abs).unwrap_or_default();
        if !fs.contains("cairn") {
            anyhow::bail!(
                "warmup {}: not on a Cairn mount of this machine (file system {}); warm up the \
                 directory where training reads it, e.g. the `cairn mount` or CSI volume path",
                p.display(),
                if fs.is_empty() { "unknown" } else { &fs }
            );
        }
        walk(&abs, &mut files).with_context(|| format!("warmup {}", p.display()))?;
    }
    let total: u64 = files.iter().map(|(_, n)| n).sum();
    let progress = Arc::new(Progress::new(
        "warmup",
        files.len() as u64,
        Some(total),
        quiet,
    ));
    // One work item per range; a file is done when its last range is.
    let mut ranges = Vec::new();
    for (i, (_, size)) in files.iter().enumerate() {
        let mut at = 0;
        loop {
            ranges.push((i, at, RANGE.min(size - at)));
            at += RANGE;
            if at >= *size {
                break;
            }
        }
    }
    let left: Arc<Vec<AtomicUsize>> = Arc::new(
        files
            .iter()
            .map(|(_, size)| AtomicUsize::new(size.div_ceil(RANGE).max(1) as usize))
            .collect(),
    );
    let files = Arc::new(files);
    let queue = Arc::new(std::sync::Mutex::new(ranges.into_iter()));
    let mut workers = Vec::new();
    for _ in 0..args.jobs {
        let (queue, files, left, progress) =
            (queue.clone(), files.clone(), left.clone(), progress.clone());
        workers.push(tokio::task::spawn_blocking(move || {
            loop {
                let next = queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .next();
                let Some((i, at, len)) = next else { break };
                let (path, _) = &files[i];
                match warm(path, at, len) {
                    // A file that shrank since the walk: less to count.
                    Ok(n) => {
                        progress.resize(len, n.min(len));
                        progress.add_bytes(n.min(len));
                    }
                    Err(e) => progress.report(&e),
                }
                if left[i].fetch_sub(1, Ordering::Relaxed) == 1 {
                    progress.file_done();
                }
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let summary = progress.finish();
    let line = format!("warmed {}", summary.line());
    let mut v = summary.json();
    v["paths"] = json!(args.paths);
    print_summary(&line, &v, quiet, json, false);
    if summary.failed > 0 {
        anyhow::bail!("warmup: {} range(s) could not be loaded", summary.failed);
    }
    Ok(())
}

/// Regular files under `p` with their sizes.
fn walk(p: &Path, out: &mut Vec<(PathBuf, u64)>) -> anyhow::Result<()> {
    let m =
        std::fs::symlink_metadata(p).map_err(|e| crate::transfer::local_error("warmup", p, &e))?;
    if m.is_file() {
        out.push((p.to_path_buf(), m.len()));
    } else if m.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(p)
            .map_err(|e| crate::transfer::local_error("warmup", p, &e))?
            .collect::<Result<_, _>>()
            .map_err(|e| crate::transfer::local_error("warmup", p, &e))?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for e in entries {
            walk(&e.path(), out)?;
        }
    }
    Ok(())
}

/// Asks the mount to load `[at, at + len)` of `path`; returns the bytes it
/// loaded.
fn warm(path: &Path, at: u64, len: u64) -> anyhow::Result<u64> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    let name = CString::new(format!("{}{at}:{len}", cairn_fuse::fs::WARMUP_XATTR))?;
    let mut buf = [0u8; 64];
    // SAFETY: both strings are NUL-terminated and outlive the call; `buf`
    // is writable for its whole length, which is what is passed.
    #[allow(unsafe_code, reason = "getxattr(2) has no std wrapper")]
    let n = unsafe {
        libc::getxattr(
            c_path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return Err(crate::transfer::local_error("warmup", path, &e));
    }
    let text = std::str::from_utf8(&buf[..n as usize]).unwrap_or("");
    text.trim()
        .parse()
        .with_context(|| format!("warmup {}: the mount answered {text:?}", path.display()))
}
