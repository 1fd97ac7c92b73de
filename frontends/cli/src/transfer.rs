//! `cairn put`, `cairn get` and `cairn cp`: copying files and trees
//! between the local file system and Cairn, or within Cairn.
//!
//! # Shape of a copy
//! One engine serves all three: a source or destination is a [`Loc`]
//! (a local path or a Cairn path) and the per-file copy picks its way by
//! the pair (local→Cairn, Cairn→local, Cairn→Cairn). A run has two phases:
//!
//! 1. **Plan.** The destination is looked at once; each source is walked
//!    whole (local trees with `std::fs` on a blocking thread, Cairn trees
//!    with `read_dir`, which returns attributes with the names) and mapped
//!    to its target by the `cp -r` rules of [`target`]. Walking first is
//!    what gives the progress bar its totals, and it means a tree copied
//!    into itself cannot grow under the walk. A source that cannot be read
//!    is reported and skipped; the others are still copied (as `cp` does)
//!    and the command exits 1 at the end.
//! 2. **Copy.** Directories are created first, one depth level at a time
//!    (a level's directories in parallel, parents before children), then
//!    symlinks, then files, up to `--jobs` files at once. Each file is a
//!    tokio task, so files are copied on every core; a failed file is
//!    reported and the rest go on. Files under a directory that could not
//!    be created are skipped (and counted as failed) instead of each
//!    failing with the same error.
//!
//! # Pieces in flight
//! A file moves in [`PIECE`] (8 MiB) pieces: `put` reads a piece from the
//! local file with `tokio::fs` and hands it to [`cairn_client::File::write_at`], which
//! stripes it over the chains itself (`ClientOptions::window` chunk
//! requests in flight), so [`PER_FILE`] = 2 pieces per file keep the
//! chains busy while the next piece is read. `get` and `cp` read pieces
//! with `read_at` the same way, `get` writing them to the local file in
//! order. Every piece holds permits of one byte budget shared by all the
//! workers ([`BUDGET`], 32 MiB) from before it is read until it is
//! written, so buffered data stays bounded whatever `--jobs` is (8 jobs ×
//! 2 pieces × 8 MiB would be 128 MiB, over the client memory target of
//! DESIGN §10), while small files, whose pieces are small, still run
//! `--jobs` at a time. A piece's permits are taken before its read and
//! only released when it is written, and no piece waits for another
//! piece's permits while holding its own, so the budget cannot deadlock.
//!
//! # What is copied
//! Regular files, directories and symlinks (recreated as symlinks with the
//! same target, not followed, as `cp -r` does); a local source named on the
//! command line is followed if it is a symlink. Local sockets, FIFOs and
//! devices are skipped with a message. `cp` gives each copied file the
//! source's extended attributes (`put` and `get` do not carry them across
//! the local file system). Modes, owners and times are not copied: new
//! files get the client's defaults. An existing destination
//! file is truncated and overwritten; a file that fails midway is left
//! partial, as with `cp`. `get` fsyncs every file it wrote before it
//! counts it done.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use cairn_client::meta_client::XattrMode;
use cairn_client::{Client, ErrorCode, Owner};
use cairn_proto::ids::InodeId;
use cairn_proto::meta::FileType;
use futures::stream::FuturesUnordered;
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::data::DataArgs;
use crate::progress::Progress;
use crate::report::{self, Context, Reported, op_error};

/// Bytes per read or write of one file.
pub const PIECE: usize = 8 << 20;
/// Pieces of one file in flight at most.
pub const PER_FILE: usize = 2;
/// Bytes all the workers of one command may hold in pieces at once.
pub const BUDGET: usize = 32 << 20;
/// The read that finds the end of a local file once its expected size has
/// been read (it may have grown since the walk).
const PROBE: usize = 64 << 10;

/// A file or directory on one side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loc {
    /// A path in the local file system.
    Local(PathBuf),
    /// A normalized absolute Cairn path (`/` or `/a/b`, no trailing `/`).
    Cairn(String),
}

impl Loc {
    /// Returns the entry `name` inside this directory.
    fn join(&self, name: &str) -> Loc {
        match self {
            Loc::Local(p) => Loc::Local(p.join(name)),
            Loc::Cairn(p) => Loc::Cairn(cairn_join(p, name)),
        }
    }

    /// Returns whether `self` is `dir` or inside it.
    fn is_within(&self, dir: &Loc) -> bool {
        match (self, dir) {
            (Loc::Local(p), Loc::Local(d)) => p.starts_with(d),
            (Loc::Cairn(p), Loc::Cairn(d)) => {
                d == "/"
                    || p == d
                    || p.strip_prefix(d.as_str())
                        .is_some_and(|r| r.starts_with('/'))
            }
            _ => false,
        }
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::Local(p) => write!(f, "{}", p.display()),
            Loc::Cairn(p) => f.write_str(p),
        }
    }
}

/// Returns `dir/name` for a normalized Cairn directory.
fn cairn_join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Returns `path` normalized (`/a//b/` → `/a/b`).
///
/// # Errors
/// An [`report::OpError`] naming `path` when it is relative, contains
/// `..` or has an invalid name.
pub fn cairn_path(op: &str, path: &str) -> anyhow::Result<String> {
    let comps = cairn_proto::names::components(path)
        .map_err(|(code, why)| op_error(op, path, code, why))?;
    Ok(format!("/{}", comps.join("/")))
}

/// Returns the error for `op` on local `path`: `put ./a: Permission denied`.
pub fn local_error(op: &str, path: &Path, e: &std::io::Error) -> anyhow::Error {
    anyhow::anyhow!("{op} {}: {}", path.display(), io_text(e))
}

/// Returns the text of `e` without Rust's ` (os error N)` suffix, as
/// strerror(3) would print it.
pub fn io_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    File { size: u64 },
    Dir,
    Symlink { target: String },
}

/// An entry found under a source: its place and its path below the
/// source's root (empty for the root).
#[derive(Debug, Clone)]
struct Found {
    src: Loc,
    rel: Vec<String>,
    kind: Kind,
}

/// One thing to create.
#[derive(Debug, Clone)]
struct Job {
    src: Loc,
    dst: Loc,
    kind: Kind,
    /// Depth below the source's root (directories are made by level).
    depth: usize,
}

/// What the destination named on the command line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DestState {
    Missing,
    Dir,
    NotDir,
}

/// Where a source goes, by the rules of `cp -r`: inside `dest` when it is
/// a directory, as `dest` otherwise (one source only; a directory does not
/// replace a file).
///
/// # Errors
/// The code and message of a destination that cannot take the source.
fn target(
    src: &Loc,
    src_name: Option<&str>,
    src_is_dir: bool,
    dest: &Loc,
    state: DestState,
    several: bool,
) -> Result<Loc, (ErrorCode, String)> {
    let t = match state {
        DestState::Dir => match src_name {
            Some(name) => dest.join(name),
            None => {
                return Err((
                    ErrorCode::Invalid,
                    format!("{src} has no name to create inside {dest}; name the target instead"),
                ));
            }
        },
        DestState::Missing if several => {
            return Err((
                ErrorCode::NotFound,
                format!("{dest} does not exist; with several sources it must be a directory"),
            ));
        }
        DestState::NotDir if several => {
            return Err((
                ErrorCode::NotDir,
                format!("{dest} is not a directory; with several sources it must be one"),
            ));
        }
        DestState::NotDir if src_is_dir => {
            return Err((
                ErrorCode::Exists,
                format!("cannot overwrite non-directory {dest} with directory {src}"),
            ));
        }
        DestState::Missing | DestState::NotDir => dest.clone(),
    };
    if &t == src {
        return Err((
            ErrorCode::Invalid,
            format!("{src} and {t} are the same file"),
        ));
    }
    if src_is_dir && t.is_within(src) {
        return Err((
            ErrorCode::Invalid,
            format!("cannot copy directory {src} into itself ({t})"),
        ));
    }
    Ok(t)
}

/// `-j/--jobs`: files copied at once.
fn jobs_arg() -> clap::builder::RangedI64ValueParser<usize> {
    clap::builder::RangedI64ValueParser::new().range(1..=1024)
}

/// Flags of `cairn put`.
#[derive(Debug, clap::Args)]
pub struct PutArgs {
    /// Client flags (cache).
    #[command(flatten)]
    pub data: DataArgs,
    /// Files uploaded at once (each moves in 8 MiB pieces, two in flight).
    #[arg(short = 'j', long, default_value_t = 8, value_name = "N", value_parser = jobs_arg())]
    pub jobs: usize,
    /// Local files or directories; a directory is uploaded with everything
    /// in it (symlinks inside it are copied as symlinks).
    #[arg(required = true, value_name = "LOCAL")]
    pub sources: Vec<PathBuf>,
    /// Cairn path: an existing directory to put the sources in, or the new
    /// name of a single source (its parent must exist). With several
    /// sources it must be an existing directory.
    #[arg(value_name = "DEST")]
    pub dest: String,
}

/// Flags of `cairn get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// Client flags (cache).
    #[command(flatten)]
    pub data: DataArgs,
    /// Files downloaded at once (each moves in 8 MiB pieces, two in
    /// flight).
    #[arg(short = 'j', long, default_value_t = 8, value_name = "N", value_parser = jobs_arg())]
    pub jobs: usize,
    /// Cairn files or directories (absolute paths); a directory is
    /// downloaded with everything in it.
    #[arg(required = true, value_name = "SRC")]
    pub sources: Vec<String>,
    /// Local path: an existing directory to put the sources in, or the new
    /// name of a single source (its parent must exist). Every file is
    /// fsynced before the command succeeds.
    #[arg(value_name = "LOCALDEST")]
    pub dest: PathBuf,
}

/// Flags of `cairn cp`.
#[derive(Debug, clap::Args)]
pub struct CpArgs {
    /// Client flags (cache).
    #[command(flatten)]
    pub data: DataArgs,
    /// Copy directories and everything in them.
    #[arg(short = 'r', short_alias = 'R', long)]
    pub recursive: bool,
    /// Files copied at once (each moves in 8 MiB pieces, two in flight).
    #[arg(short = 'j', long, default_value_t = 8, value_name = "N", value_parser = jobs_arg())]
    pub jobs: usize,
    /// Cairn files (or directories, with -r) to copy.
    #[arg(required = true, value_name = "SRC")]
    pub sources: Vec<String>,
    /// Cairn path: an existing directory to copy the sources into, or the
    /// new name of a single source (its parent must exist).
    #[arg(value_name = "DST")]
    pub dest: String,
}

/// Options of one copy command.
#[derive(Debug, Clone, Copy)]
pub struct CopyOptions {
    /// Copy directories (always on for `put` and `get`; `cp -r`).
    pub recursive: bool,
    /// Files copied at once.
    pub jobs: usize,
    /// No progress bar and no summary line.
    pub quiet: bool,
    /// A JSON summary.
    pub json: bool,
}

/// `cairn put LOCAL... DEST`.
///
/// # Errors
/// [`Reported`] when some sources failed (each was printed); an error
/// naming DEST when it cannot take the sources.
pub async fn put(
    c: &Client,
    sources: &[PathBuf],
    dest: &str,
    opts: CopyOptions,
) -> anyhow::Result<()> {
    let dest = Loc::Cairn(cairn_path("put", dest)?);
    let sources = sources.iter().cloned().map(Loc::Local).collect();
    run(c, "put", sources, dest, opts).await
}

/// `cairn get SRC... LOCALDEST`.
///
/// # Errors
/// As [`put`].
pub async fn get(
    c: &Client,
    sources: &[String],
    dest: &Path,
    opts: CopyOptions,
) -> anyhow::Result<()> {
    let sources = cairn_sources("get", sources)?;
    run(c, "get", sources, Loc::Local(dest.to_path_buf()), opts).await
}

/// `cairn cp [-r] SRC... DST` within Cairn.
///
/// # Errors
/// As [`put`].
pub async fn cp(
    c: &Client,
    sources: &[String],
    dest: &str,
    opts: CopyOptions,
) -> anyhow::Result<()> {
    let dest = Loc::Cairn(cairn_path("cp", dest)?);
    let sources = cairn_sources("cp", sources)?;
    run(c, "cp", sources, dest, opts).await
}

fn cairn_sources(op: &str, sources: &[String]) -> anyhow::Result<Vec<Loc>> {
    sources
        .iter()
        .map(|s| cairn_path(op, s).map(Loc::Cairn))
        .collect()
}

/// Plans and runs one copy command; see the module docs.
async fn run(
    c: &Client,
    op: &'static str,
    sources: Vec<Loc>,
    dest: Loc,
    opts: CopyOptions,
) -> anyhow::Result<()> {
    let state = dest_state(c, op, &dest).await?;
    let several = sources.len() > 1;
    if several && state != DestState::Dir {
        // Said once, not once per source.
        let (code, why) = match state {
            DestState::Missing => (ErrorCode::NotFound, "does not exist"),
            _ => (ErrorCode::NotDir, "is not a directory"),
        };
        return Err(op_error(
            op,
            &dest.to_string(),
            code,
            format!("{dest} {why}; with several sources it must be a directory"),
        ));
    }
    let mut jobs: Vec<Job> = Vec::new();
    let mut failed = 0u64;
    for src in &sources {
        match plan_source(c, op, src, &dest, state, several, opts.recursive).await {
            Ok((found, problems)) => {
                failed += problems.len() as u64;
                for p in &problems {
                    report::print(p);
                }
                jobs.extend(found);
            }
            Err(e) => {
                report::print(&e);
                failed += 1;
            }
        }
    }
    if jobs.is_empty() && failed > 0 {
        // Nothing to copy: the errors said it all, a "0 files" line would
        // add nothing.
        return Err(Reported.into());
    }
    let (mut dirs, mut links, mut files) = (Vec::new(), Vec::new(), Vec::new());
    for j in jobs {
        match j.kind {
            Kind::Dir => dirs.push(j),
            Kind::Symlink { .. } => links.push(j),
            Kind::File { .. } => files.push(j),
        }
    }
    let bytes: u64 = files
        .iter()
        .map(|j| match j.kind {
            Kind::File { size } => size,
            _ => 0,
        })
        .sum();
    let progress = Arc::new(Progress::new(
        op,
        (files.len() + links.len()) as u64,
        Some(bytes),
        opts.quiet,
    ));
    progress.add_failed(failed);
    let failed_dirs = make_dirs(c, op, dirs, opts.jobs, &progress).await;
    let skipped = |j: &Job| failed_dirs.iter().any(|d| j.dst.is_within(d));
    for j in &links {
        if skipped(j) {
            progress.add_failed(1);
            continue;
        }
        match make_link(c, op, j).await {
            Ok(()) => progress.file_done(),
            Err(e) => progress.report(&e),
        }
    }
    let (files, lost): (Vec<Job>, Vec<Job>) = files.into_iter().partition(|j| !skipped(j));
    progress.add_failed(lost.len() as u64);
    copy_files(c, op, files, opts.jobs, &progress).await;
    let summary = progress.finish();
    summary.print(opts.quiet, opts.json, false);
    if summary.failed > 0 {
        return Err(Reported.into());
    }
    Ok(())
}

/// Looks at the destination named on the command line.
async fn dest_state(c: &Client, op: &str, dest: &Loc) -> anyhow::Result<DestState> {
    match dest {
        Loc::Cairn(p) => match c.stat(p).await {
            Ok(a) if a.kind() == FileType::Directory => Ok(DestState::Dir),
            Ok(_) => Ok(DestState::NotDir),
            Err(e) if e.code == ErrorCode::NotFound => {
                // Like cp: the parent must exist; this names the path now,
                // before anything is copied.
                let (parent, _) = c.meta().resolve_parent(p).await.op(op, p)?;
                if parent.kind() != FileType::Directory {
                    return Err(op_error(
                        op,
                        p,
                        ErrorCode::NotDir,
                        format!("the parent of {p} is not a directory"),
                    ));
                }
                Ok(DestState::Missing)
            }
            Err(e) => Err(e).op(op, p),
        },
        Loc::Local(p) => match tokio::fs::metadata(p).await {
            Ok(m) if m.is_dir() => Ok(DestState::Dir),
            Ok(_) => Ok(DestState::NotDir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let parent = match p.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d,
                    _ => Path::new("."),
                };
                match tokio::fs::metadata(parent).await {
                    Ok(m) if m.is_dir() => Ok(DestState::Missing),
                    Ok(_) => Err(anyhow::anyhow!(
                        "{op} {}: {} is not a directory",
                        p.display(),
                        parent.display()
                    )),
                    Err(e) => Err(local_error(op, p, &e)),
                }
            }
            Err(e) => Err(local_error(op, p, &e)),
        },
    }
}

/// Walks one source and maps what it found to jobs; returns them with the
/// problems found inside the tree (already attributed to their paths).
async fn plan_source(
    c: &Client,
    op: &'static str,
    src: &Loc,
    dest: &Loc,
    state: DestState,
    several: bool,
    recursive: bool,
) -> anyhow::Result<(Vec<Job>, Vec<anyhow::Error>)> {
    let (found, problems) = match src {
        Loc::Local(p) => {
            let p = p.clone();
            tokio::task::spawn_blocking(move || walk_local(op, &p))
                .await
                .map_err(|e| anyhow::anyhow!("{op}: walking the sources: {e}"))??
        }
        Loc::Cairn(p) => walk_cairn(c, op, p, recursive).await?,
    };
    let Some(root) = found.first() else {
        return Ok((Vec::new(), problems));
    };
    let name = source_name(src);
    let root_dst = target(
        src,
        name.as_deref(),
        root.kind == Kind::Dir,
        dest,
        state,
        several,
    )
    .map_err(|(code, why)| op_error(op, &dest.to_string(), code, why))?;
    let jobs = found
        .into_iter()
        .map(|f| {
            let dst = f.rel.iter().fold(root_dst.clone(), |d, n| d.join(n));
            Job {
                depth: f.rel.len(),
                src: f.src,
                dst,
                kind: f.kind,
            }
        })
        .collect();
    Ok((jobs, problems))
}

/// Returns the name a source gets inside a destination directory.
fn source_name(src: &Loc) -> Option<String> {
    match src {
        Loc::Cairn(p) => p
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .map(str::to_string),
        Loc::Local(p) => {
            let name = match p.file_name() {
                Some(n) => Some(n.to_os_string()),
                // `.`, `..`: the name of the directory they stand for.
                None => std::fs::canonicalize(p)
                    .ok()
                    .and_then(|c| c.file_name().map(|n| n.to_os_string())),
            };
            name.and_then(|n| n.into_string().ok())
        }
    }
}

/// Walks a local source (following it if it is a symlink, not the
/// symlinks inside it); the root comes first, parents before children.
fn walk_local(op: &str, root: &Path) -> anyhow::Result<(Vec<Found>, Vec<anyhow::Error>)> {
    let meta = std::fs::metadata(root).map_err(|e| local_error(op, root, &e))?;
    let mut found = Vec::new();
    let mut problems = Vec::new();
    if meta.is_file() {
        found.push(Found {
            src: Loc::Local(root.to_path_buf()),
            rel: Vec::new(),
            kind: Kind::File { size: meta.len() },
        });
        return Ok((found, problems));
    }
    if !meta.is_dir() {
        return Err(anyhow::anyhow!(
            "{op} {}: not a regular file or directory",
            root.display()
        ));
    }
    if source_name(&Loc::Local(root.to_path_buf())).is_none() {
        return Err(anyhow::anyhow!(
            "{op} {}: the name is not valid UTF-8, which Cairn names must be",
            root.display()
        ));
    }
    found.push(Found {
        src: Loc::Local(root.to_path_buf()),
        rel: Vec::new(),
        kind: Kind::Dir,
    });
    // Directories still to list: (path, path below the root).
    let mut stack: Vec<(PathBuf, Vec<String>)> = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                problems.push(local_error(op, &dir, &e));
                continue;
            }
        };
        let mut names = Vec::new();
        for e in entries {
            match e {
                Ok(e) => names.push(e),
                Err(e) => problems.push(local_error(op, &dir, &e)),
            }
        }
        // A stable order: the same tree plans the same way every time.
        names.sort_by_key(std::fs::DirEntry::file_name);
        let mut subdirs = Vec::new();
        for e in names {
            let path = e.path();
            let Ok(name) = e.file_name().into_string() else {
                problems.push(anyhow::anyhow!(
                    "{op} {}: the name is not valid UTF-8, which Cairn names must be; skipped",
                    path.display()
                ));
                continue;
            };
            let ft = match e.file_type() {
                Ok(t) => t,
                Err(err) => {
                    problems.push(local_error(op, &path, &err));
                    continue;
                }
            };
            let mut child_rel = rel.clone();
            child_rel.push(name);
            let kind = if ft.is_dir() {
                subdirs.push((path.clone(), child_rel.clone()));
                Kind::Dir
            } else if ft.is_file() {
                match e.metadata() {
                    Ok(m) => Kind::File { size: m.len() },
                    Err(err) => {
                        problems.push(local_error(op, &path, &err));
                        continue;
                    }
                }
            } else if ft.is_symlink() {
                match std::fs::read_link(&path) {
                    Ok(t) => match t.into_os_string().into_string() {
                        Ok(target) => Kind::Symlink { target },
                        Err(_) => {
                            problems.push(anyhow::anyhow!(
                                "{op} {}: the symlink's target is not valid UTF-8; skipped",
                                path.display()
                            ));
                            continue;
                        }
                    },
                    Err(err) => {
                        problems.push(local_error(op, &path, &err));
                        continue;
                    }
                }
            } else {
                problems.push(anyhow::anyhow!(
                    "{op} {}: not a regular file, directory or symlink; skipped",
                    path.display()
                ));
                continue;
            };
            found.push(Found {
                src: Loc::Local(path),
                rel: child_rel,
                kind,
            });
        }
        // Reversed so the stack lists them in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok((found, problems))
}

/// Walks a Cairn source (a symlink is not followed); the root comes
/// first, parents before children.
async fn walk_cairn(
    c: &Client,
    op: &str,
    root: &str,
    recursive: bool,
) -> anyhow::Result<(Vec<Found>, Vec<anyhow::Error>)> {
    let attr = c.stat(root).await.op(op, root)?;
    let mut problems = Vec::new();
    let kind = match attr.kind() {
        FileType::Directory if !recursive => {
            return Err(op_error(
                op,
                root,
                ErrorCode::IsDir,
                format!("{root} is a directory (use -r to copy it and its contents)"),
            ));
        }
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink {
            target: c.meta().readlink(InodeId(attr.ino)).await.op(op, root)?,
        },
        FileType::Regular | FileType::Unspecified => Kind::File { size: attr.size },
        special => {
            return Err(op_error(
                op,
                root,
                ErrorCode::Invalid,
                format!(
                    "{root} is a {}: only regular files, directories and symlinks are copied",
                    crate::format::kind_long_name(special)
                ),
            ));
        }
    };
    let mut found = vec![Found {
        src: Loc::Cairn(root.to_string()),
        rel: Vec::new(),
        kind: kind.clone(),
    }];
    if kind != Kind::Dir {
        return Ok((found, problems));
    }
    let mut stack: Vec<(String, Vec<String>)> = vec![(root.to_string(), Vec::new())];
    while let Some((dir, rel)) = stack.pop() {
        let mut entries = match c.read_dir(&dir).await.op(op, &dir) {
            Ok(e) => e,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let mut subdirs = Vec::new();
        for e in entries {
            let path = cairn_join(&dir, &e.name);
            let mut child_rel = rel.clone();
            child_rel.push(e.name.clone());
            let kind = match e.kind() {
                FileType::Directory => {
                    subdirs.push((path.clone(), child_rel.clone()));
                    Kind::Dir
                }
                FileType::Symlink => match c.meta().readlink(InodeId(e.ino)).await.op(op, &path) {
                    Ok(target) => Kind::Symlink { target },
                    Err(err) => {
                        problems.push(err);
                        continue;
                    }
                },
                FileType::Fifo
                | FileType::Socket
                | FileType::CharDevice
                | FileType::BlockDevice => {
                    problems.push(anyhow::anyhow!(
                        "{op} {path}: a {}, not a regular file, directory or symlink; skipped",
                        crate::format::kind_long_name(e.kind())
                    ));
                    continue;
                }
                FileType::Regular | FileType::Unspecified => {
                    let size = match &e.attr {
                        Some(a) => a.size,
                        // A meta that does not fill readdirplus: ask.
                        None => match c.stat(&path).await.op(op, &path) {
                            Ok(a) => a.size,
                            Err(err) => {
                                problems.push(err);
                                continue;
                            }
                        },
                    };
                    Kind::File { size }
                }
            };
            found.push(Found {
                src: Loc::Cairn(path),
                rel: child_rel,
                kind,
            });
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok((found, problems))
}

/// Creates the directories, a depth level at a time; returns those that
/// failed (reported through `progress`).
async fn make_dirs(
    c: &Client,
    op: &str,
    mut dirs: Vec<Job>,
    jobs: usize,
    progress: &Progress,
) -> Vec<Loc> {
    dirs.sort_by_key(|d| d.depth);
    let mut failed: Vec<Loc> = Vec::new();
    let mut rest = dirs.as_slice();
    while let Some(first) = rest.first() {
        let n = rest.iter().take_while(|d| d.depth == first.depth).count();
        let (level, next) = rest.split_at(n);
        rest = next;
        let results: Vec<(Loc, anyhow::Result<()>)> = futures::stream::iter(level)
            .filter(|d| {
                let under_failed = failed.iter().any(|f| d.dst.is_within(f));
                async move { !under_failed }
            })
            .map(|d| async move { (d.dst.clone(), make_dir(c, op, &d.dst).await) })
            .buffer_unordered(jobs)
            .collect()
            .await;
        for (dst, r) in results {
            if let Err(e) = r {
                progress.report(&e);
                failed.push(dst);
            }
        }
    }
    failed
}

async fn make_dir(c: &Client, op: &str, dst: &Loc) -> anyhow::Result<()> {
    match dst {
        Loc::Cairn(p) => c.create_dir_all(p).await.op(op, p).map(drop),
        Loc::Local(p) => tokio::fs::create_dir_all(p)
            .await
            .map_err(|e| local_error(op, p, &e)),
    }
}

/// Creates a symlink like the source one, replacing a file or symlink in
/// its place.
async fn make_link(c: &Client, op: &str, j: &Job) -> anyhow::Result<()> {
    let Kind::Symlink { target } = &j.kind else {
        return Ok(());
    };
    match &j.dst {
        Loc::Cairn(p) => {
            let meta = c.meta();
            let (parent, name) = meta.resolve_parent(p).await.op(op, p)?;
            let parent = InodeId(parent.ino);
            match meta.symlink(parent, &name, target, Owner::current()).await {
                Err(e) if e.code == ErrorCode::Exists => {
                    c.remove_file(p).await.op(op, p)?;
                    meta.symlink(parent, &name, target, Owner::current())
                        .await
                        .op(op, p)?;
                }
                r => {
                    r.op(op, p)?;
                }
            }
        }
        Loc::Local(p) => match tokio::fs::symlink(target, p).await {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                tokio::fs::remove_file(p)
                    .await
                    .map_err(|e| local_error(op, p, &e))?;
                tokio::fs::symlink(target, p)
                    .await
                    .map_err(|e| local_error(op, p, &e))?;
            }
            r => r.map_err(|e| local_error(op, p, &e))?,
        },
    }
    Ok(())
}

/// Copies the files, `jobs` at a time, each in its own task; failures are
/// reported through `progress`.
async fn copy_files(
    c: &Client,
    op: &'static str,
    files: Vec<Job>,
    jobs: usize,
    progress: &Arc<Progress>,
) {
    let budget = Arc::new(Semaphore::new(BUDGET));
    let mut results = futures::stream::iter(files)
        .map(|job| {
            let c = c.clone();
            let progress = progress.clone();
            let budget = budget.clone();
            tokio::spawn(async move {
                let r = copy_file(&c, op, &job, &progress, &budget).await;
                if r.is_ok() {
                    progress.file_done();
                }
                r
            })
        })
        .buffer_unordered(jobs);
    while let Some(r) = results.next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => progress.report(&e),
            Err(e) => progress.report(&anyhow::anyhow!("{op}: a copy task failed: {e}")),
        }
    }
}

async fn copy_file(
    c: &Client,
    op: &'static str,
    job: &Job,
    progress: &Progress,
    budget: &Arc<Semaphore>,
) -> anyhow::Result<()> {
    let planned = match job.kind {
        Kind::File { size } => size,
        _ => 0,
    };
    let io = PieceIo {
        op,
        progress,
        budget,
    };
    match (&job.src, &job.dst) {
        (Loc::Local(src), Loc::Cairn(dst)) => io.put_file(c, src, dst, planned).await,
        (Loc::Cairn(src), Loc::Local(dst)) => io.get_file(c, src, dst, planned).await,
        (Loc::Cairn(src), Loc::Cairn(dst)) => io.cp_file(c, src, dst, planned).await,
        (Loc::Local(src), Loc::Local(_)) => Err(anyhow::anyhow!(
            "{op} {}: local-to-local copies are cp(1)'s job",
            src.display()
        )),
    }
}

/// The per-file copies, sharing the command's progress and byte budget.
struct PieceIo<'a> {
    op: &'static str,
    progress: &'a Progress,
    budget: &'a Arc<Semaphore>,
}

impl PieceIo<'_> {
    /// Takes `n` bytes of the budget.
    async fn permit(&self, n: usize) -> anyhow::Result<OwnedSemaphorePermit> {
        // n <= PIECE < u32::MAX; the semaphore is never closed.
        let n = u32::try_from(n.clamp(1, PIECE)).unwrap_or(u32::MAX);
        self.budget
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.op))
    }

    /// Local file → Cairn file.
    async fn put_file(
        &self,
        c: &Client,
        src: &Path,
        dst: &str,
        planned: u64,
    ) -> anyhow::Result<()> {
        let op = self.op;
        let mut local = tokio::fs::File::open(src)
            .await
            .map_err(|e| local_error(op, src, &e))?;
        // One blocking read per piece instead of 2 MiB ones.
        local.set_max_buf_size(PIECE);
        let file = c.create(dst).await.op(op, dst)?;
        let written = self.upload(&mut local, &file, src, dst, planned).await;
        // Close whatever happened: it reports the length meta should have.
        let closed = file.close().await.op(op, dst);
        let written = written?;
        self.progress.resize(planned, written);
        closed
    }

    /// Streams `local` into `f`, [`PER_FILE`] writes in flight while the
    /// next piece is read; returns the bytes written.
    async fn upload(
        &self,
        local: &mut tokio::fs::File,
        f: &cairn_client::File,
        src: &Path,
        dst: &str,
        planned: u64,
    ) -> anyhow::Result<u64> {
        let mut writes = FuturesUnordered::new();
        let mut at = 0u64;
        let mut eof = false;
        while !eof || !writes.is_empty() {
            if eof || writes.len() >= PER_FILE {
                if let Some(w) = writes.next().await {
                    w?;
                }
                continue;
            }
            let left = planned.saturating_sub(at);
            let want = if left > 0 {
                usize::try_from(left).unwrap_or(PIECE).min(PIECE)
            } else {
                PROBE
            };
            let read = self.read_local(local, want, src);
            tokio::pin!(read);
            // Writes in flight go on while the piece is read.
            let piece = loop {
                tokio::select! {
                    r = &mut read => break r?,
                    Some(w) = writes.next(), if !writes.is_empty() => w?,
                }
            };
            match piece {
                None => eof = true,
                Some((data, permit)) => {
                    let n = data.len() as u64;
                    writes.push(self.write_piece(f, dst, at, data, permit));
                    at += n;
                }
            }
        }
        Ok(at)
    }

    /// Reads the next piece of a local file (with its budget); `None` at
    /// the end.
    async fn read_local(
        &self,
        local: &mut tokio::fs::File,
        want: usize,
        src: &Path,
    ) -> anyhow::Result<Option<(Bytes, OwnedSemaphorePermit)>> {
        let permit = self.permit(want).await?;
        let data = read_piece(local, want)
            .await
            .map_err(|e| local_error(self.op, src, &e))?;
        Ok((!data.is_empty()).then_some((data, permit)))
    }

    /// Writes one piece and releases its budget.
    async fn write_piece(
        &self,
        f: &cairn_client::File,
        dst: &str,
        at: u64,
        data: Bytes,
        permit: OwnedSemaphorePermit,
    ) -> anyhow::Result<()> {
        let n = data.len() as u64;
        f.write_at(at, data).await.op(self.op, dst)?;
        drop(permit);
        self.progress.add_bytes(n);
        Ok(())
    }

    /// Cairn file → local file, fsynced.
    async fn get_file(
        &self,
        c: &Client,
        src: &str,
        dst: &Path,
        planned: u64,
    ) -> anyhow::Result<()> {
        let op = self.op;
        let file = c.open_read(src).await.op(op, src)?;
        let len = file.len();
        self.progress.resize(planned, len);
        let written = self.download(&file, src, dst, len).await;
        close_read(file).await;
        written
    }

    async fn download(
        &self,
        f: &cairn_client::File,
        src: &str,
        dst: &Path,
        len: u64,
    ) -> anyhow::Result<()> {
        let op = self.op;
        let mut out = tokio::fs::File::create(dst)
            .await
            .map_err(|e| local_error(op, dst, &e))?;
        out.set_max_buf_size(PIECE);
        let mut pieces = futures::stream::iter(piece_offsets(len))
            .map(|(at, n)| async move {
                let permit = self.permit(n).await?;
                let data = f.read_at(at, n).await.op(op, src)?;
                Ok::<_, anyhow::Error>((data, permit))
            })
            .buffered(PER_FILE);
        while let Some(piece) = pieces.next().await {
            let (data, permit) = piece?;
            out.write_all(&data)
                .await
                .map_err(|e| local_error(op, dst, &e))?;
            drop(permit);
            self.progress.add_bytes(data.len() as u64);
        }
        out.flush().await.map_err(|e| local_error(op, dst, &e))?;
        out.sync_all().await.map_err(|e| local_error(op, dst, &e))?;
        Ok(())
    }

    /// Cairn file → Cairn file.
    async fn cp_file(&self, c: &Client, src: &str, dst: &str, planned: u64) -> anyhow::Result<()> {
        let op = self.op;
        let from = c.open_read(src).await.op(op, src)?;
        let len = from.len();
        self.progress.resize(planned, len);
        let to = c.create(dst).await.op(op, dst)?;
        let (from_ref, to_ref) = (&from, &to);
        let copied = futures::stream::iter(piece_offsets(len))
            .map(|(at, n)| async move {
                let permit = self.permit(n).await?;
                let data = from_ref.read_at(at, n).await.op(op, src)?;
                let got = data.len() as u64;
                to_ref.write_at(at, data).await.op(op, dst)?;
                drop(permit);
                self.progress.add_bytes(got);
                Ok::<(), anyhow::Error>(())
            })
            .buffer_unordered(PER_FILE)
            .try_collect::<()>()
            .await;
        let xattrs = match copied {
            Ok(()) => copy_xattrs(c, op, (src, from.ino()), (dst, to.ino())).await,
            Err(_) => Ok(()),
        };
        let closed = to.close().await.op(op, dst);
        close_read(from).await;
        copied?;
        xattrs?;
        closed
    }
}

/// Gives the copy of a Cairn file the source's extended attributes.
async fn copy_xattrs(
    c: &Client,
    op: &str,
    (src, from): (&str, InodeId),
    (dst, to): (&str, InodeId),
) -> anyhow::Result<()> {
    let meta = c.meta();
    for name in meta.listxattr(from).await.op(op, src)? {
        let value = match meta.getxattr(from, &name).await {
            Ok(v) => v,
            // Removed since it was listed.
            Err(e) if e.code == ErrorCode::NoData => continue,
            Err(e) => return Err(e).op(op, src),
        };
        meta.setxattr(to, &name, &value, XattrMode::Upsert)
            .await
            .op(op, dst)?;
    }
    Ok(())
}

/// Closes a read handle; nothing the user could act on can fail there.
async fn close_read(f: cairn_client::File) {
    if let Err(e) = f.close().await {
        tracing::debug!(error = %e, "closing a read handle");
    }
}

/// Returns the pieces of a file of `len` bytes: (offset, length).
fn piece_offsets(len: u64) -> impl Iterator<Item = (u64, usize)> {
    (0..len).step_by(PIECE).map(move |at| {
        let n = usize::try_from(len - at).unwrap_or(PIECE).min(PIECE);
        (at, n)
    })
}

/// Reads up to `want` bytes (fewer only at the end of the file).
async fn read_piece(f: &mut tokio::fs::File, want: usize) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(want);
    while buf.len() < want {
        let left = (want - buf.len()) as u64;
        if (&mut *f).take(left).read_buf(&mut buf).await? == 0 {
            break;
        }
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cairn(p: &str) -> Loc {
        Loc::Cairn(p.to_string())
    }

    #[test]
    fn paths_normalize() {
        assert_eq!(cairn_path("put", "/a//b/").ok().as_deref(), Some("/a/b"));
        assert_eq!(cairn_path("put", "/").ok().as_deref(), Some("/"));
        assert_eq!(cairn_path("put", "/./a").ok().as_deref(), Some("/a"));
        let e = cairn_path("put", "a/b").map_err(|e| e.to_string());
        assert!(e.is_err_and(|m| m.starts_with("put a/b: ")));
        assert!(cairn_path("put", "/a/../b").is_err());
        assert_eq!(cairn_join("/", "x"), "/x");
        assert_eq!(cairn_join("/a", "x"), "/a/x");
    }

    #[test]
    fn within() {
        assert!(cairn("/a/b").is_within(&cairn("/a")));
        assert!(cairn("/a").is_within(&cairn("/a")));
        assert!(cairn("/a").is_within(&cairn("/")));
        assert!(!cairn("/ab").is_within(&cairn("/a")));
        assert!(!cairn("/a").is_within(&cairn("/a/b")));
        let local = |p: &str| Loc::Local(PathBuf::from(p));
        assert!(local("x/y").is_within(&local("x")));
        assert!(!local("xy").is_within(&local("x")));
        assert!(!local("/a").is_within(&cairn("/a")));
    }

    #[test]
    fn targets_follow_cp() {
        let src = Loc::Local(PathBuf::from("data/train"));
        let t = |state, several, is_dir| {
            target(&src, Some("train"), is_dir, &cairn("/v/ds"), state, several)
        };
        // Into an existing directory, under the source's name.
        assert_eq!(t(DestState::Dir, false, true), Ok(cairn("/v/ds/train")));
        assert_eq!(t(DestState::Dir, true, false), Ok(cairn("/v/ds/train")));
        // As the destination: a new name, or over a file.
        assert_eq!(t(DestState::Missing, false, true), Ok(cairn("/v/ds")));
        assert_eq!(t(DestState::NotDir, false, false), Ok(cairn("/v/ds")));
        // Refused.
        assert_eq!(
            t(DestState::Missing, true, false).map_err(|e| e.0),
            Err(ErrorCode::NotFound)
        );
        assert_eq!(
            t(DestState::NotDir, true, false).map_err(|e| e.0),
            Err(ErrorCode::NotDir)
        );
        assert_eq!(
            t(DestState::NotDir, false, true).map_err(|e| e.0),
            Err(ErrorCode::Exists)
        );
        let nameless = target(&cairn("/"), None, true, &cairn("/v"), DestState::Dir, false);
        assert_eq!(nameless.map_err(|e| e.0), Err(ErrorCode::Invalid));
    }

    #[test]
    fn copies_into_themselves_are_refused() {
        let src = cairn("/v/a");
        let into = target(
            &src,
            Some("a"),
            true,
            &cairn("/v/a/b"),
            DestState::Dir,
            false,
        );
        assert!(into.is_err_and(|(_, m)| m.contains("into itself")));
        let same = target(
            &src,
            Some("a"),
            false,
            &cairn("/v/a"),
            DestState::NotDir,
            false,
        );
        assert!(same.is_err_and(|(_, m)| m.contains("same file")));
        // A sibling whose name starts the same is fine.
        let sib = target(
            &src,
            Some("a"),
            true,
            &cairn("/v/ab"),
            DestState::Missing,
            false,
        );
        assert_eq!(sib, Ok(cairn("/v/ab")));
    }

    #[test]
    fn pieces_cover_the_file() {
        let p: Vec<_> = piece_offsets(0).collect();
        assert!(p.is_empty());
        let p: Vec<_> = piece_offsets(PIECE as u64 * 2 + 5).collect();
        assert_eq!(
            p,
            vec![(0, PIECE), (PIECE as u64, PIECE), (2 * PIECE as u64, 5)]
        );
        let p: Vec<_> = piece_offsets(PIECE as u64).collect();
        assert_eq!(p, vec![(0, PIECE)]);
    }

    #[test]
    fn source_names() {
        assert_eq!(source_name(&cairn("/v/a")).as_deref(), Some("a"));
        assert_eq!(source_name(&cairn("/")), None);
        let local = |p: &str| source_name(&Loc::Local(PathBuf::from(p)));
        assert_eq!(local("dir/").as_deref(), Some("dir"));
        assert_eq!(local("a/b.txt").as_deref(), Some("b.txt"));
        // `.` is named after the directory it stands for.
        let cwd = std::env::current_dir().ok();
        let cwd_name = cwd
            .as_deref()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str());
        assert_eq!(local(".").as_deref(), cwd_name);
    }

    #[test]
    fn local_errors_read_like_strerror() {
        let e = std::io::Error::from_raw_os_error(2);
        let msg = local_error("put", Path::new("./x"), &e).to_string();
        assert_eq!(msg, "put ./x: No such file or directory");
    }

    #[tokio::test]
    async fn local_walks_list_parents_first() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("t");
        std::fs::create_dir_all(root.join("a/b"))?;
        std::fs::write(root.join("a/b/f"), b"12345")?;
        std::fs::write(root.join("z"), b"")?;
        std::os::unix::fs::symlink("a/b/f", root.join("l"))?;
        let (found, problems) = walk_local("put", &root)?;
        assert!(problems.is_empty());
        let rel: Vec<(String, Kind)> = found
            .iter()
            .map(|f| (f.rel.join("/"), f.kind.clone()))
            .collect();
        assert_eq!(
            rel,
            vec![
                (String::new(), Kind::Dir),
                ("a".into(), Kind::Dir),
                (
                    "l".into(),
                    Kind::Symlink {
                        target: "a/b/f".into()
                    }
                ),
                ("z".into(), Kind::File { size: 0 }),
                ("a/b".into(), Kind::Dir),
                ("a/b/f".into(), Kind::File { size: 5 }),
            ]
        );
        let missing = walk_local("put", &root.join("nope")).map(drop);
        assert!(missing.is_err_and(|e| e.to_string().contains("nope: No such file")));
        Ok(())
    }

    #[tokio::test]
    async fn pieces_read_whole_until_the_end() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 100_000])?;
        let mut f = tokio::fs::File::open(&p).await?;
        assert_eq!(read_piece(&mut f, 65_536).await?.len(), 65_536);
        assert_eq!(read_piece(&mut f, 65_536).await?.len(), 100_000 - 65_536);
        assert!(read_piece(&mut f, 65_536).await?.is_empty());
        Ok(())
    }
}
