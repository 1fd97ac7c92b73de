//! Checkpoints (DESIGN §7, invariant 2): save, load the latest, list, keep
//! the last N.
//!
//! A checkpoint is a regular file in a checkpoint directory. [`Checkpoints::save`]
//! writes it under a hidden temporary name (`.NAME.tmp-SESSION-SEQ`),
//! which no listing shows, waits until every byte is on every replica,
//! reports its length to meta, attaches its record — size, CRC32 of the
//! contents, creation time, save duration and the caller's metrics, as
//! JSON in the `user.cairn.checkpoint` xattr — and only then renames it
//! over `NAME` in one atomic metadata operation. A reader therefore finds
//! either the previous complete file or the new complete one under `NAME`,
//! never a partial one, whatever happens to the writer; a writer killed
//! midway leaves only a hidden temporary file, which
//! [`Checkpoints::keep_last`] removes once it is older than
//! [`STALE_TEMP`].
//!
//! [`Checkpoints::load_latest`] picks the newest record and checks the
//! bytes it read against the record's size and CRC before returning them;
//! if the file was pruned between the listing and the read it looks again.
//!
//! # Directories that manage themselves
//! [`Checkpoints::set_keep`] (`cairn checkpoint init DIR --keep N`) marks
//! a directory with [`KEEP_XATTR`]. From then on every save through this
//! API, and every file a program publishes there through a `cairn mount`
//! by renaming it into place (the FUSE frontend writes the record, with no
//! CRC since it never saw the bytes whole), is followed by the same
//! retention ([`retain`]): the newest N checkpoints by creation time stay,
//! older ones are removed — never the newest, and (in a mount) never one
//! that mount has open. A reader elsewhere that has one open keeps reading
//! it: removed files' data outlives the unlink for the GC grace period.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use cairn_proto::ids::InodeId;
use cairn_proto::meta::FileType;
use cairn_proto::{CairnStatus, ErrorCode};
use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::client::{Client, OpenOptions};
use crate::file::File;
use crate::{Result, XattrMode};

/// The xattr holding a checkpoint's record.
pub const XATTR: &str = "user.cairn.checkpoint";

/// Temporary files of killed writers older than this are removed by
/// [`Checkpoints::keep_last`].
pub const STALE_TEMP: Duration = Duration::from_secs(600);

/// The xattr that marks a directory whose checkpoints are kept to the
/// newest N (its value, in decimal).
pub const KEEP_XATTR: &str = "user.cairn.checkpoint.keep";

/// Bytes read from a reader per write by [`Checkpoints::save_reader`].
const SAVE_BUFFER: usize = 8 << 20;

/// Writes [`Checkpoints::save_reader`] keeps in flight: consecutive 8 MiB
/// writes land on different chunks or queue at one head, and either way
/// the next one's transfer overlaps the last one's syncs.
const SAVE_DEPTH: usize = 4;

/// What a checkpoint's xattr records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// Format of this record.
    pub format: u32,
    /// The checkpoint's name in its directory.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// CRC32 (IEEE, crc32fast) of the contents; `None` for a checkpoint
    /// a program published through a mount (only the size is checked).
    pub crc32: Option<u32>,
    /// When the save finished, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// How long the save took (write, fsync, record; not the rename).
    pub save_seconds: f64,
    /// The caller's metrics (loss, step, ...).
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}

impl CheckpointInfo {
    /// The recorded CRC32 in hex, or "unrecorded" (a file published
    /// through a mount).
    pub fn crc_text(&self) -> String {
        self.crc32
            .map_or_else(|| "unrecorded".into(), |c| format!("{c:08x}"))
    }
}

/// The checkpoints in one directory.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    client: Client,
    dir: String,
}

fn invalid(m: String) -> CairnStatus {
    CairnStatus::new(ErrorCode::Invalid, m)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Checkpoints {
    /// The checkpoints in directory `dir` (created by the first save).
    pub fn new(client: Client, dir: &str) -> Self {
        Self {
            client,
            dir: dir.trim_end_matches('/').to_string(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &str {
        if self.dir.is_empty() { "/" } else { &self.dir }
    }

    fn path(&self, name: &str) -> String {
        format!("{}/{name}", self.dir)
    }

    fn check_name(name: &str) -> Result<()> {
        if name.is_empty() || name.starts_with('.') || name.contains('/') {
            return Err(invalid(format!(
                "checkpoint name {name:?} must be non-empty, contain no '/' and not start with '.'"
            )));
        }
        Ok(())
    }

    /// Saves `data` as checkpoint `name` (replacing one of that name
    /// atomically) with `metrics`.
    ///
    /// # Errors
    /// A bad name ([`ErrorCode::Invalid`]), data-plane and meta errors; on
    /// error the previous checkpoint of that name is untouched.
    pub async fn save(
        &self,
        name: &str,
        data: Bytes,
        metrics: BTreeMap<String, f64>,
    ) -> Result<CheckpointInfo> {
        // Slices of the caller's buffer, not copies.
        let pieces = (0..data.len())
            .step_by(SAVE_BUFFER)
            .map(|at| Ok(data.slice(at..(at + SAVE_BUFFER).min(data.len()))))
            .collect::<Vec<Result<Bytes>>>();
        self.save_stream(name, futures::stream::iter(pieces), metrics, |_| {})
            .await
    }

    /// Saves everything `reader` yields as checkpoint `name`; `progress` is
    /// called with the bytes written so far.
    ///
    /// # Errors
    /// As [`Self::save`], plus the reader's errors ([`ErrorCode::Io`]).
    pub async fn save_reader<R: AsyncRead + Unpin>(
        &self,
        name: &str,
        reader: &mut R,
        metrics: BTreeMap<String, f64>,
        progress: impl Fn(u64),
    ) -> Result<CheckpointInfo> {
        let pieces = futures::stream::unfold(reader, |r| async move {
            match fill(r).await {
                Ok(b) if b.is_empty() => None,
                Ok(b) => Some((Ok(b.freeze()), r)),
                Err(e) => Some((Err(e), r)),
            }
        });
        self.save_stream(name, pieces, metrics, progress).await
    }

    /// Saves the bytes `pieces` yields, in order, as checkpoint `name`.
    async fn save_stream<S: Stream<Item = Result<Bytes>>>(
        &self,
        name: &str,
        pieces: S,
        metrics: BTreeMap<String, f64>,
        progress: impl Fn(u64),
    ) -> Result<CheckpointInfo> {
        Self::check_name(name)?;
        let started = Instant::now();
        let r = self
            .save_stream_inner(name, pieces, metrics, progress, started)
            .await;
        self.client
            .metrics()
            .checkpoint_saved(self.volume(), started.elapsed(), r.is_ok());
        r
    }

    /// The `volume` label of this directory's checkpoints (the first
    /// component of the path).
    fn volume(&self) -> &str {
        self.dir
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or("")
    }

    async fn save_stream_inner<S: Stream<Item = Result<Bytes>>>(
        &self,
        name: &str,
        pieces: S,
        metrics: BTreeMap<String, f64>,
        progress: impl Fn(u64),
        started: Instant,
    ) -> Result<CheckpointInfo> {
        let meta = self.client.meta();
        self.client.create_dir_all(self.dir()).await?;
        let sid = meta.session_id().await?.0;
        let tmp = format!(".{name}.tmp-{sid}-{}", self.client.next_seq());
        let tmp_path = self.path(&tmp);
        let how = OpenOptions {
            write: true,
            create: true,
            create_new: true,
            truncate: false,
            append: false,
        };
        let f = self.client.open(&tmp_path, how).await?;
        let written = write_all(&f, pieces, &progress).await;
        let (size, crc32) = match written {
            Ok(v) => v,
            Err(e) => {
                let _ = f.close().await;
                let _ = self.client.remove_file(&tmp_path).await;
                return Err(e);
            }
        };
        f.fsync().await?;
        let ino = f.ino();
        f.close().await?;
        let info = CheckpointInfo {
            format: 1,
            name: name.to_string(),
            size,
            crc32: Some(crc32),
            created_unix_ms: now_ms(),
            save_seconds: started.elapsed().as_secs_f64(),
            metrics,
        };
        let record = serde_json::to_vec(&info).map_err(|e| {
            CairnStatus::new(ErrorCode::Internal, format!("checkpoint record: {e}"))
        })?;
        meta.setxattr(ino, XATTR, &record, XattrMode::Upsert)
            .await?;
        self.client.rename(&tmp_path, &self.path(name)).await?;
        // A managed directory keeps its newest N; the save itself stands
        // whatever the cleanup meets.
        match self.keep().await {
            Ok(Some(n)) => {
                if let Err(e) = self.keep_last(n).await {
                    tracing::warn!(dir = %self.dir(), error = %e, "checkpoint retention failed");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(dir = %self.dir(), error = %e, "reading the retention mark failed")
            }
        }
        Ok(info)
    }

    /// Marks the directory (created if missing) to keep its newest `n`
    /// checkpoints after every save and every publish through a mount.
    ///
    /// # Errors
    /// `n` is 0 ([`ErrorCode::Invalid`]), meta errors.
    pub async fn set_keep(&self, n: usize) -> Result<()> {
        if n == 0 {
            return Err(invalid(
                "--keep must be at least 1: the newest checkpoint is never removed".into(),
            ));
        }
        let attr = self.client.create_dir_all(self.dir()).await?;
        self.client
            .meta()
            .setxattr(
                InodeId(attr.ino),
                KEEP_XATTR,
                n.to_string().as_bytes(),
                XattrMode::Upsert,
            )
            .await
    }

    /// How many checkpoints the directory keeps, if it is marked.
    ///
    /// # Errors
    /// Meta errors (a missing directory is `None`).
    pub async fn keep(&self) -> Result<Option<usize>> {
        let attr = match self.client.stat(self.dir()).await {
            Ok(a) => a,
            Err(e) if e.code == ErrorCode::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        keep_of(self.client.meta(), InodeId(attr.ino)).await
    }

    /// Every checkpoint in the directory, oldest first (an empty list if
    /// the directory does not exist).
    ///
    /// # Errors
    /// Meta errors.
    pub async fn list(&self) -> Result<Vec<CheckpointInfo>> {
        let entries = match self.client.read_dir(self.dir()).await {
            Ok(e) => e,
            Err(e) if e.code == ErrorCode::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for e in entries {
            if e.name.starts_with('.') || e.kind != FileType::Regular as i32 {
                continue;
            }
            match self.record(InodeId(e.ino)).await {
                Ok(Some(mut info)) => {
                    // The name it has now (it may have been renamed).
                    info.name = e.name;
                    out.push(info);
                }
                Ok(None) => {}
                Err(err) if err.code == ErrorCode::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        out.sort_by(|a, b| (a.created_unix_ms, &a.name).cmp(&(b.created_unix_ms, &b.name)));
        Ok(out)
    }

    async fn record(&self, ino: InodeId) -> Result<Option<CheckpointInfo>> {
        match self.client.meta().getxattr(ino, XATTR).await {
            Ok(v) => Ok(serde_json::from_slice(&v).ok()),
            Err(e) if e.code == ErrorCode::NoData => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The newest checkpoint's record, if any.
    ///
    /// # Errors
    /// Meta errors.
    pub async fn latest(&self) -> Result<Option<CheckpointInfo>> {
        Ok(self.list().await?.pop())
    }

    /// Opens checkpoint `name`; returns its record and a read handle.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`], [`ErrorCode::NoData`] when the file is not
    /// a checkpoint.
    pub async fn open(&self, name: &str) -> Result<(CheckpointInfo, File)> {
        Self::check_name(name)?;
        let f = self.client.open_read(&self.path(name)).await?;
        let info = self.record(f.ino()).await?.ok_or_else(|| {
            CairnStatus::new(
                ErrorCode::NoData,
                format!("{} is not a checkpoint", self.path(name)),
            )
        })?;
        Ok((info, f))
    }

    /// Reads checkpoint `name` whole and checks it against its record.
    ///
    /// # Errors
    /// As [`Self::open`]; [`ErrorCode::Checksum`] when the contents do not
    /// match the record.
    pub async fn load(&self, name: &str) -> Result<(CheckpointInfo, Bytes)> {
        let started = Instant::now();
        let r = self.load_inner(name).await;
        if r.is_ok() {
            self.client
                .metrics()
                .checkpoint_restored(self.volume(), started.elapsed());
        }
        r
    }

    async fn load_inner(&self, name: &str) -> Result<(CheckpointInfo, Bytes)> {
        let (info, f) = self.open(name).await?;
        let want = usize::try_from(info.size).map_err(|_| {
            invalid(format!(
                "checkpoint {name} is too large to load into memory"
            ))
        })?;
        let data = f.read_at(0, want).await;
        let _ = f.close().await;
        let data = data?;
        if data.len() as u64 != info.size || info.crc32.is_some_and(|c| c != crc32fast::hash(&data))
        {
            return Err(CairnStatus::new(
                ErrorCode::Checksum,
                format!(
                    "checkpoint {name}: read {} bytes that do not match its record ({} bytes, crc32 {})",
                    data.len(),
                    info.size,
                    info.crc_text()
                ),
            ));
        }
        Ok((info, data))
    }

    /// Loads the newest checkpoint, if there is one.
    ///
    /// # Errors
    /// As [`Self::load`].
    pub async fn load_latest(&self) -> Result<Option<(CheckpointInfo, Bytes)>> {
        for _ in 0..5 {
            let Some(latest) = self.latest().await? else {
                return Ok(None);
            };
            match self.load(&latest.name).await {
                // Pruned or replaced between the listing and the read.
                Err(e) if matches!(e.code, ErrorCode::NotFound | ErrorCode::NoData) => continue,
                r => return r.map(Some),
            }
        }
        Err(CairnStatus::new(
            ErrorCode::Unavailable,
            format!("{}: checkpoints kept changing under the reader", self.dir()),
        ))
    }

    /// Removes all but the newest `n` checkpoints, and temporary files of
    /// saves that died more than [`STALE_TEMP`] ago; returns the names
    /// removed.
    ///
    /// # Errors
    /// Meta errors.
    pub async fn keep_last(&self, n: usize) -> Result<Vec<String>> {
        let mut removed = match self.client.stat(self.dir()).await {
            Ok(a) => retain(self.client.meta(), InodeId(a.ino), n, |_| false).await?,
            Err(e) if e.code == ErrorCode::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let stale_before = i64::try_from(now_ms().saturating_sub(STALE_TEMP.as_millis() as u64))
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000_000);
        let entries = match self.client.read_dir(self.dir()).await {
            Ok(e) => e,
            Err(e) if e.code == ErrorCode::NotFound => return Ok(removed),
            Err(e) => return Err(e),
        };
        for e in entries {
            let stale = e.name.starts_with('.')
                && e.name.contains(".tmp-")
                && e.attr.as_ref().is_some_and(|a| a.mtime_ns < stale_before);
            if stale && self.client.remove_file(&self.path(&e.name)).await.is_ok() {
                removed.push(e.name);
            }
        }
        Ok(removed)
    }
}

/// The retention mark of directory `dir`: how many checkpoints it keeps.
///
/// # Errors
/// Meta errors other than "no such xattr".
pub async fn keep_of(meta: &crate::MetaClient, dir: InodeId) -> Result<Option<usize>> {
    match meta.getxattr(dir, KEEP_XATTR).await {
        Ok(v) => Ok(std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|n| *n > 0)),
        Err(e) if e.code == ErrorCode::NoData => Ok(None),
        Err(e) => Err(e),
    }
}

/// The retention of a checkpoint directory: of the checkpoints in `dir`
/// (regular files with a record, hidden names left out), ordered by
/// creation time, removes all but the newest `keep`, skipping those
/// `in_use` says are open; returns the names removed. The newest is never
/// removed.
///
/// # Errors
/// Meta errors (an entry removed meanwhile is not one).
pub async fn retain(
    meta: &crate::MetaClient,
    dir: InodeId,
    keep: usize,
    in_use: impl Fn(u64) -> bool,
) -> Result<Vec<String>> {
    let keep = keep.max(1);
    let mut found = Vec::new();
    for e in meta.readdir_all(dir).await? {
        if e.name.starts_with('.') || e.kind != FileType::Regular as i32 {
            continue;
        }
        match meta.getxattr(InodeId(e.ino), XATTR).await {
            Ok(v) => {
                if let Ok(info) = serde_json::from_slice::<CheckpointInfo>(&v) {
                    found.push((info.created_unix_ms, e.name, e.ino));
                }
            }
            Err(err) if matches!(err.code, ErrorCode::NoData | ErrorCode::NotFound) => {}
            Err(err) => return Err(err),
        }
    }
    found.sort();
    let old = found.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for (_, name, ino) in found.into_iter().take(old) {
        if in_use(ino) {
            continue;
        }
        match meta.unlink(dir, &name).await {
            Ok(_) => removed.push(name),
            Err(e) if e.code == ErrorCode::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// Records file `ino`, just published as `name` (`size` bytes) in a
/// checkpoint directory through a mount, as a checkpoint: the record
/// [`Checkpoints::list`] and [`retain`] read, without a CRC.
///
/// # Errors
/// Meta errors.
pub async fn record_published(
    meta: &crate::MetaClient,
    ino: InodeId,
    name: &str,
    size: u64,
    save_seconds: f64,
) -> Result<CheckpointInfo> {
    let info = CheckpointInfo {
        format: 1,
        name: name.to_string(),
        size,
        crc32: None,
        created_unix_ms: now_ms(),
        save_seconds,
        metrics: BTreeMap::new(),
    };
    let record = serde_json::to_vec(&info)
        .map_err(|e| CairnStatus::new(ErrorCode::Internal, format!("checkpoint record: {e}")))?;
    meta.setxattr(ino, XATTR, &record, XattrMode::Upsert)
        .await?;
    Ok(info)
}

/// Writes the bytes of `pieces` into `f` from offset 0, [`SAVE_DEPTH`]
/// writes in flight while the next piece is produced; returns the size and
/// CRC32. `progress` gets the bytes acknowledged so far.
async fn write_all<S: Stream<Item = Result<Bytes>>>(
    f: &File,
    pieces: S,
    progress: &impl Fn(u64),
) -> Result<(u64, u32)> {
    let mut pieces = std::pin::pin!(pieces);
    let mut crc = crc32fast::Hasher::new();
    let mut at = 0u64;
    let mut acked = 0u64;
    let mut inflight = FuturesUnordered::new();
    loop {
        // Produce the next piece while the writes in flight make progress.
        let next = pieces.next();
        tokio::pin!(next);
        let piece = loop {
            tokio::select! {
                r = &mut next => break r.transpose()?,
                Some(w) = inflight.next(), if !inflight.is_empty() => {
                    acked += w?;
                    progress(acked);
                }
            }
        };
        let Some(buf) = piece else {
            break;
        };
        crc.update(&buf);
        let n = buf.len() as u64;
        let off = at;
        at += n;
        inflight.push(async move { f.write_at(off, buf).await.map(|()| n) });
        while inflight.len() >= SAVE_DEPTH {
            if let Some(w) = inflight.next().await {
                acked += w?;
                progress(acked);
            }
        }
    }
    while let Some(w) = inflight.next().await {
        acked += w?;
        progress(acked);
    }
    Ok((at, crc.finalize()))
}

/// Reads up to [`SAVE_BUFFER`] bytes (less only at the end).
async fn fill<R: AsyncRead + Unpin>(reader: &mut R) -> Result<BytesMut> {
    let mut buf = BytesMut::with_capacity(SAVE_BUFFER);
    while buf.len() < SAVE_BUFFER {
        let n = reader.read_buf(&mut buf).await.map_err(|e| {
            CairnStatus::new(ErrorCode::Io, format!("reading the checkpoint data: {e}"))
        })?;
        if n == 0 {
            break;
        }
    }
    Ok(buf)
}
