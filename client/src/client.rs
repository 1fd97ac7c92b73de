//! [`Client`]: the entry point programs use (DESIGN §7).
//!
//! One `Client` holds a [`MetaClient`] (session renewed by heartbeat), the
//! chain-table cache, the data-plane connection pool (one pipelined
//! connection per chunkserver shard, shared by every file) and the block
//! cache. It is cheap to clone; clones share all of it.
//!
//! Paths are absolute, `/`-separated, resolved by meta without following a
//! final symlink. Metadata is called on open, close, fsync and namespace
//! operations only: reads and writes compute chunk ids and replicas from
//! the layout the open returned.
//!
//! A volume's snapshots are read under `/VOLUME/.snapshots/NAME/...`
//! ([`SNAPSHOTS_DIR`]): `open` (read-only), `stat` and `read_dir` resolve
//! such paths in the snapshot's tree, and reads name its seq (DESIGN §3).
//!
//! Consistency is close-to-open (DESIGN §11): a file opened after another
//! client closed (or fsynced) it sees that client's writes; cached blocks
//! are keyed by the file's attribute version at open, so a changed file
//! never hits stale blocks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cairn_proto::ids::InodeId;
use cairn_proto::meta::{Attr, DirEntry, FileType, UnlinkReply};
use cairn_proto::{CairnStatus, ErrorCode};

use crate::cache::{BlockCache, CacheConfig, CacheStats};
use crate::chains::ChainCache;
use crate::chunk_io::{ChunkIo, IoOptions};
use crate::compress::Codec;
use crate::crypto::{FileKey, KeyRing};
use crate::file::File;
pub use crate::meta_client::{SNAPSHOTS_DIR, SnapshotPath};
use crate::{MetaClient, MetaClientOptions, Owner, RenameFlags, Result};

/// Settings of a [`Client`]. `Default` gives the production values.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Meta client settings.
    pub meta: MetaClientOptions,
    /// Data-plane timeouts and retry budget.
    pub io: IoOptions,
    /// Block cache tiers.
    pub cache: CacheConfig,
    /// Chunk requests one read or write keeps in flight (striping window).
    pub window: usize,
    /// Largest single read request, in bytes.
    pub max_io: u64,
    /// Largest single write request, in bytes. Larger than reads: every
    /// write costs a sync on each replica in turn, so bigger pieces
    /// amortize the syncs (a chunk's writes are serialized at its head).
    pub max_write: u64,
    /// First read-ahead window of a sequential stream, in bytes.
    pub readahead_initial: u64,
    /// Largest read-ahead window, in bytes; 0 disables read-ahead.
    pub readahead_max: u64,
    /// Mode of files and directories the client creates (before umask;
    /// the client applies none).
    pub file_mode: u32,
    /// Mode of directories the client creates.
    pub dir_mode: u32,
    /// Keys of encrypted volumes (checked against meta at connect; see
    /// [`Client::add_volume_key`]). A file of an encrypted volume without
    /// its key here cannot be opened.
    pub keys: Vec<Arc<KeyRing>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            // A program's paths are resolved from the lease cache.
            meta: MetaClientOptions {
                cache_leases: true,
                ..MetaClientOptions::default()
            },
            io: IoOptions::default(),
            cache: CacheConfig::default(),
            window: 16,
            max_io: 1 << 20,
            max_write: 8 << 20,
            readahead_initial: 1 << 20,
            readahead_max: 32 << 20,
            file_mode: 0o644,
            dir_mode: 0o755,
            keys: Vec::new(),
        }
    }
}

impl ClientOptions {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`ErrorCode::Invalid`] naming the bad setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(CairnStatus::new(ErrorCode::Invalid, m.to_string()));
        if self.window == 0 {
            return bad("the striping window must be at least 1");
        }
        if let Err(e) = self.cache.validate() {
            return Err(CairnStatus::new(ErrorCode::Invalid, format!("cache: {e}")));
        }
        let max = u64::from(cairn_proto::frame::MAX_PAYLOAD);
        if !(4096..=max).contains(&self.max_io) || !(4096..=max).contains(&self.max_write) {
            return bad("max-io and max-write must be between 4 KiB and 16 MiB");
        }
        Ok(())
    }
}

/// How [`Client::open`] opens a file (the `open(2)` flags that apply).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Open for writing (reading is always allowed).
    pub write: bool,
    /// Create the file if it does not exist (O_CREAT).
    pub create: bool,
    /// Fail if it exists (O_EXCL, with `create`).
    pub create_new: bool,
    /// Truncate to 0 bytes (O_TRUNC, with `write`).
    pub truncate: bool,
    /// Every [`File::append`] and [`File::write`] goes to the end (O_APPEND).
    pub append: bool,
}

impl OpenOptions {
    /// Read only.
    pub const READ: OpenOptions = OpenOptions {
        write: false,
        create: false,
        create_new: false,
        truncate: false,
        append: false,
    };
    /// An existing file for writing, contents kept (`open(O_RDWR)`).
    pub const WRITE: OpenOptions = OpenOptions {
        write: true,
        create: false,
        create_new: false,
        truncate: false,
        append: false,
    };
    /// Create or truncate for writing (`open(O_WRONLY|O_CREAT|O_TRUNC)`).
    pub const CREATE: OpenOptions = OpenOptions {
        write: true,
        create: true,
        create_new: false,
        truncate: true,
        append: false,
    };
}

/// A connection to a Cairn cluster. See the module docs.
#[derive(Clone, Debug)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) meta: MetaClient,
    pub(crate) io: ChunkIo,
    pub(crate) cache: Arc<BlockCache>,
    pub(crate) opts: ClientOptions,
    /// Write sequence numbers (the chain head's retry detection).
    seq: AtomicU64,
    /// Open handles per inode, and the cache generations they read under.
    open: Mutex<HashMap<u64, OpenInode>>,
    stats_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Verified keys of encrypted volumes, by volume id.
    keys: Mutex<HashMap<u64, Arc<KeyRing>>>,
    /// Volume names by id, for messages (filled at connect and when keys
    /// are added).
    volume_names: Mutex<HashMap<u64, String>>,
    /// How each known volume compresses (`None`: it does not). Fixed at a
    /// volume's creation, so an entry never goes stale.
    codecs: Mutex<HashMap<u64, Option<Codec>>>,
    /// Buffers of encrypted or compressed writes, kept for the next one.
    pub(crate) write_bufs: crate::file::WriteBufs,
    /// What `/metrics` shows of this client ([`crate::metrics`]).
    pub(crate) metrics: Arc<crate::metrics::ClientMetrics>,
    /// Per restored file being copied from its snapshot, the lock its
    /// copiers in this client take: meta's claim is per session, so two
    /// handles of one client must not copy (and then write) at once.
    pub(crate) copying: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Debug, Default)]
struct OpenInode {
    handles: usize,
    /// Generations of open handles (with counts): own writes invalidate
    /// the cached blocks of every one.
    generations: Vec<(u64, usize)>,
    /// This client told meta it holds the (unlinked) inode open.
    held: bool,
    /// Shared by the inode's handles; see [`WriteEpoch`].
    write_epoch: WriteEpoch,
}

/// Bumped when a write to an inode through this client starts and when it
/// ends: a read that saw it move does not cache what it fetched (it may
/// predate the write, and the write's invalidation may have run already).
/// Every handle of the inode holds the same counter, so the read path
/// checks it without a lock.
pub(crate) type WriteEpoch = Arc<std::sync::atomic::AtomicU64>;

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(t) = self
            .stats_task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            t.abort();
        }
    }
}

impl Client {
    /// Connects to the meta replicas at `addrs` (any order; one reachable
    /// replica is enough) and loads the chain table.
    ///
    /// # Errors
    /// Bad options ([`ErrorCode::Invalid`]), meta unreachable, or the cache
    /// directory unusable.
    pub async fn connect<S: AsRef<str>>(
        addrs: impl IntoIterator<Item = S>,
        opts: ClientOptions,
    ) -> Result<Client> {
        opts.validate()?;
        let meta = MetaClient::connect(addrs, opts.meta.clone()).await?;
        let chains = ChainCache::start(meta.clone()).await?;
        let cache = BlockCache::new(&opts.cache).map_err(|e| {
            CairnStatus::new(
                ErrorCode::Io,
                format!(
                    "cache directory {}: {e}",
                    opts.cache
                        .dir
                        .as_ref()
                        .map_or_else(String::new, |d| d.display().to_string())
                ),
            )
        })?;
        let cache = Arc::new(cache);
        let inner = Arc::new(Inner {
            io: ChunkIo::new(chains, opts.io.clone()),
            meta,
            cache: cache.clone(),
            opts,
            seq: AtomicU64::new(1),
            open: Mutex::new(HashMap::new()),
            stats_task: Mutex::new(None),
            keys: Mutex::new(HashMap::new()),
            volume_names: Mutex::new(HashMap::new()),
            codecs: Mutex::new(HashMap::new()),
            write_bufs: crate::file::WriteBufs::default(),
            metrics: Arc::new(crate::metrics::ClientMetrics::new(cache.clone())),
            copying: Mutex::new(HashMap::new()),
        });
        if inner.opts.cache.dir.is_some() {
            let weak = Arc::downgrade(&cache);
            let task = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let Some(c) = weak.upgrade() else { return };
                    let _ = tokio::task::spawn_blocking(move || c.publish_stats()).await;
                }
            });
            *inner
                .stats_task
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(task);
        }
        let client = Client { inner };
        let keys = client.inner.opts.keys.clone();
        if keys.is_empty() {
            // Names only make messages clearer: a failure here is not one
            // of connecting.
            if let Ok(volumes) = client.inner.meta.list_volumes().await {
                client.remember_names(&volumes);
            }
        }
        for ring in keys {
            client.add_volume_key(ring).await?;
        }
        Ok(client)
    }

    fn remember_names(&self, volumes: &[cairn_proto::meta::Volume]) {
        let mut names = self
            .inner
            .volume_names
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut codecs = self
            .inner
            .codecs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for v in volumes {
            names.insert(v.id, v.name.clone());
            let p = v.policy.clone().unwrap_or_default();
            match Codec::from_policy(p.compression, u64::from(p.compression_unit)) {
                Ok(c) => {
                    codecs.insert(v.id, c);
                }
                // Left unknown: opening one of its files says why.
                Err(e) => tracing::warn!(volume = %v.name, error = %e, "volume compression"),
            }
        }
    }

    /// How volume `id` compresses, if this client knows it yet.
    pub(crate) fn known_codec(&self, id: u64) -> Option<Option<Codec>> {
        if id == 0 {
            // Files outside every volume (in the root) have the cluster's
            // default policy: no compression.
            return Some(None);
        }
        self.inner
            .codecs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .copied()
    }

    /// How volume `id` compresses, asking meta when this client has not
    /// seen the volume yet (it was created after the client connected).
    ///
    /// # Errors
    /// Meta errors; [`ErrorCode::NotFound`] when no volume has that id,
    /// [`ErrorCode::Invalid`] when its compression is unknown to this
    /// client.
    pub(crate) async fn codec_of(&self, id: u64) -> Result<Option<Codec>> {
        if let Some(c) = self.known_codec(id) {
            return Ok(c);
        }
        let volumes = self.inner.meta.list_volumes().await?;
        self.remember_names(&volumes);
        if let Some(c) = self.known_codec(id) {
            return Ok(c);
        }
        let v = volumes.iter().find(|v| v.id == id).ok_or_else(|| {
            CairnStatus::new(ErrorCode::NotFound, format!("no volume has id {id}"))
        })?;
        let p = v.policy.clone().unwrap_or_default();
        Codec::from_policy(p.compression, u64::from(p.compression_unit))
            .map_err(|e| CairnStatus::new(e.code, format!("volume '{}': {}", v.name, e.message)))
    }

    /// This client's metrics ([`crate::metrics`]): serve
    /// [`crate::metrics::ClientMetrics::encode`] at `/metrics`.
    pub fn metrics(&self) -> &Arc<crate::metrics::ClientMetrics> {
        &self.inner.metrics
    }

    /// The `volume` label of volume `id`: its name, or `#ID` while the
    /// client has not learned it.
    pub fn volume_label(&self, id: u64) -> String {
        self.inner
            .volume_names
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("#{id}"))
    }

    fn volume_name(&self, id: u64) -> String {
        self.inner
            .volume_names
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .map_or_else(|| format!("#{id}"), |n| format!("'{n}'"))
    }

    /// Gives this client the keys of an encrypted volume, after checking
    /// each key version against the check value meta holds for it (meta
    /// never sees a key). Files of the volume can then be opened.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`] (no such volume), [`ErrorCode::Invalid`]
    /// (the volume is not encrypted, or has no such key version),
    /// [`ErrorCode::AccessDenied`] (a key is not the volume's), meta
    /// errors. Each message names the volume.
    pub async fn add_volume_key(&self, ring: Arc<KeyRing>) -> Result<()> {
        let volumes = self.inner.meta.list_volumes().await?;
        self.remember_names(&volumes);
        let name = ring.volume();
        let v = volumes.iter().find(|v| v.name == name).ok_or_else(|| {
            CairnStatus::new(
                ErrorCode::NotFound,
                format!("a key was given for volume '{name}', but no volume has that name"),
            )
        })?;
        let policy = v.policy.clone().unwrap_or_default();
        if !policy.encrypted {
            return Err(CairnStatus::new(
                ErrorCode::Invalid,
                format!("a key was given for volume '{name}', which is not encrypted"),
            ));
        }
        for version in ring.versions() {
            let Some(check) = policy.key_checks.iter().find(|c| c.version == version) else {
                return Err(CairnStatus::new(
                    ErrorCode::Invalid,
                    format!(
                        "the key file for volume '{name}' has key version {version}, which the \
                         volume does not have (its current version is {}; add a version with \
                         `cairn volume rotate-key`)",
                        policy.key_version
                    ),
                ));
            };
            let key = ring
                .get(version)
                .map_err(|e| CairnStatus::new(ErrorCode::Invalid, e.to_string()))?;
            if key.check_value()[..] != check.check[..] {
                return Err(CairnStatus::new(
                    ErrorCode::AccessDenied,
                    format!(
                        "the key given for volume '{name}' (version {version}) is not that volume's key"
                    ),
                ));
            }
        }
        if ring.get(policy.key_version).is_err() {
            tracing::warn!(
                volume = name,
                current = policy.key_version,
                "the key file lacks the volume's current key version: files can be read, but \
                 new files cannot be created (give the whole key file)"
            );
        }
        self.inner
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(v.id, ring);
        Ok(())
    }

    /// The key of an encrypted file (`attr` has a salt).
    pub(crate) fn file_key(&self, attr: &Attr) -> Result<FileKey> {
        let ring = self
            .inner
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&attr.volume_id)
            .cloned();
        let Some(ring) = ring else {
            return Err(CairnStatus::new(
                ErrorCode::AccessDenied,
                format!(
                    "file inode {} is in encrypted volume {}, and this client was given no key \
                     for it (cairn --key-file VOLUME=PATH, or CAIRN_KEY_FILES)",
                    attr.ino,
                    self.volume_name(attr.volume_id)
                ),
            ));
        };
        let key = ring.get(attr.key_version).map_err(|_| {
            CairnStatus::new(
                ErrorCode::AccessDenied,
                format!(
                    "file inode {} of volume {} is sealed with key version {}, which the key \
                     file given for the volume does not hold",
                    attr.ino,
                    self.volume_name(attr.volume_id),
                    attr.key_version
                ),
            )
        })?;
        Ok(key.file_key(&attr.encryption_salt))
    }

    /// The metadata client (for namespace operations this type does not
    /// wrap).
    pub fn meta(&self) -> &MetaClient {
        &self.inner.meta
    }

    /// The options the client runs with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// Block cache counters of this client.
    pub fn cache_stats(&self) -> CacheStats {
        self.inner.cache.stats()
    }

    /// The cache directory, if the SSD tier is on.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        self.inner.opts.cache.dir.clone()
    }

    /// Closes the session with meta (files still open lose their
    /// open-for-write registration) and publishes the cache counters.
    ///
    /// # Errors
    /// Meta unreachable.
    pub async fn close(&self) -> Result<()> {
        let c = self.inner.cache.clone();
        let _ = tokio::task::spawn_blocking(move || c.publish_stats()).await;
        self.inner.meta.close().await
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.inner.seq.fetch_add(1, Ordering::Relaxed)
    }

    // ------------------------------------------------------------ files

    /// Opens the file at `path`.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`] (without `create`), [`ErrorCode::Exists`]
    /// (with `create_new`), [`ErrorCode::IsDir`], meta errors.
    pub async fn open(&self, path: &str, how: OpenOptions) -> Result<File> {
        if let Some(sp) = SnapshotPath::parse(path) {
            if how.write || how.create || how.truncate {
                return Err(CairnStatus::new(
                    ErrorCode::NotPermitted,
                    format!("{path}: snapshots are read-only"),
                ));
            }
            let (snap, attr) = self.inner.meta.resolve_in_snapshot(&sp, path).await?;
            check_file(&attr, path)?;
            return File::new_in_snapshot(self.clone(), attr, snap.seq);
        }
        let attr = if how.create {
            let (parent, name) = self.inner.meta.parent_dir(path).await?;
            let e = self
                .inner
                .meta
                .create(
                    parent,
                    &name,
                    self.inner.opts.file_mode,
                    Owner::current(),
                    how.create_new,
                    how.write,
                )
                .await?;
            e.attr
        } else {
            let a = self.inner.meta.resolve(path).await?;
            check_file(&a, path)?;
            if how.write {
                self.inner.meta.open_file(InodeId(a.ino), true).await?
            } else {
                a
            }
        };
        check_file(&attr, path)?;
        let f = self.new_file(attr, how).await?;
        if how.truncate && how.write && !f.is_empty() {
            f.set_len(0).await?;
        }
        Ok(f)
    }

    /// [`File::new`] after meta registered a write open: a handle that
    /// cannot be made (no key for a sealed file) releases it again.
    async fn new_file(&self, attr: Attr, how: OpenOptions) -> Result<File> {
        let ino = InodeId(attr.ino);
        match File::new(self.clone(), attr, how) {
            Ok(f) => Ok(f),
            Err(e) => {
                if how.write
                    && let Err(c) = self.inner.meta.close_file(ino, None, 0, (0, 0)).await
                {
                    tracing::debug!(ino = ino.0, error = %c, "releasing a failed open");
                }
                Err(e)
            }
        }
    }

    /// Opens `path` for reading.
    ///
    /// # Errors
    /// As [`Self::open`].
    pub async fn open_read(&self, path: &str) -> Result<File> {
        self.open(path, OpenOptions::READ).await
    }

    /// Creates (or truncates) `path` for writing.
    ///
    /// # Errors
    /// As [`Self::open`].
    pub async fn create(&self, path: &str) -> Result<File> {
        self.open(path, OpenOptions::CREATE).await
    }

    /// Opens inode `ino` (frontends that resolve names themselves).
    ///
    /// # Errors
    /// As [`Self::open`].
    pub async fn open_ino(&self, ino: InodeId, how: OpenOptions) -> Result<File> {
        let attr = if how.write {
            self.inner.meta.open_file(ino, true).await?
        } else {
            self.inner.meta.getattr(ino).await?
        };
        check_file(&attr, &format!("inode {}", ino.0))?;
        let f = self.new_file(attr, how).await?;
        if how.truncate && how.write && !f.is_empty() {
            f.set_len(0).await?;
        }
        Ok(f)
    }

    /// Opens a file whose attributes the caller already has from meta
    /// (a frontend's create, or an open it made itself); a write open must
    /// already be registered with meta (`create` with `open_for_write`, or
    /// [`MetaClient::open_file`]). No round trip.
    ///
    /// # Errors
    /// [`ErrorCode::IsDir`] / [`ErrorCode::Invalid`] when `attr` is not a
    /// regular file.
    pub fn open_attr(&self, attr: Attr, how: OpenOptions) -> Result<File> {
        check_file(&attr, &format!("inode {}", attr.ino))?;
        File::new(self.clone(), attr, how)
    }

    /// Opens a file of snapshot `seq`'s tree, read-only, from the
    /// attributes the snapshot holds (frontends that resolve names
    /// themselves, with [`MetaClient::lookup_at`]). No round trip.
    ///
    /// # Errors
    /// As [`Self::open_attr`].
    pub fn open_in_snapshot(&self, attr: Attr, seq: u64) -> Result<File> {
        check_file(&attr, &format!("inode {}", attr.ino))?;
        File::new_in_snapshot(self.clone(), attr, seq)
    }

    /// Writes `data` to `path` (created or truncated) and closes it.
    ///
    /// # Errors
    /// As [`Self::open`] and [`File::write_at`].
    pub async fn write_file(&self, path: &str, data: bytes::Bytes) -> Result<()> {
        let f = self.create(path).await?;
        f.write_at(0, data).await?;
        f.close().await
    }

    /// Reads the whole file at `path`.
    ///
    /// # Errors
    /// As [`Self::open`] and [`File::read_at`].
    pub async fn read_file(&self, path: &str) -> Result<bytes::Bytes> {
        let f = self.open_read(path).await?;
        let len = usize::try_from(f.len()).map_err(|_| {
            CairnStatus::new(
                ErrorCode::Invalid,
                format!("{path} is too large to read into memory"),
            )
        })?;
        let data = f.read_at(0, len).await?;
        f.close().await?;
        Ok(data)
    }

    // ------------------------------------------------------------ namespace

    /// Returns the attributes of `path` (a final symlink not followed).
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`], [`ErrorCode::NotDir`].
    pub async fn stat(&self, path: &str) -> Result<Attr> {
        match SnapshotPath::parse(path) {
            Some(sp) => Ok(self.inner.meta.resolve_in_snapshot(&sp, path).await?.1),
            None => self.inner.meta.resolve(path).await,
        }
    }

    /// Lists directory `path` with each entry's attributes.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`], [`ErrorCode::NotDir`].
    pub async fn read_dir(&self, path: &str) -> Result<Vec<DirEntry>> {
        if let Some(sp) = SnapshotPath::parse(path) {
            return self.inner.meta.read_snapshot_dir(&sp, path).await;
        }
        let a = self.inner.meta.resolve(path).await?;
        if a.kind != FileType::Directory as i32 {
            return Err(CairnStatus::new(
                ErrorCode::NotDir,
                format!("{path} is not a directory"),
            ));
        }
        self.inner.meta.readdir_all_plus(InodeId(a.ino)).await
    }

    /// Creates directory `path` and its missing parents (`mkdir -p`).
    ///
    /// # Errors
    /// [`ErrorCode::NotDir`] when a component is not a directory.
    pub async fn create_dir_all(&self, path: &str) -> Result<Attr> {
        self.inner
            .meta
            .mkdir_p(path, self.inner.opts.dir_mode, Owner::current())
            .await
    }

    /// Renames `from` to `to`, replacing a file or empty directory at `to`
    /// atomically.
    ///
    /// # Errors
    /// As [`MetaClient::rename`].
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let m = &self.inner.meta;
        let (fp, fname) = m.parent_dir(from).await?;
        let (tp, tname) = m.parent_dir(to).await?;
        m.rename(fp, &fname, tp, &tname, RenameFlags::NONE)
            .await
            .map(|_| ())
    }

    /// Removes the file (or symlink) at `path`. A file this client still
    /// has open stays readable through its handles until they close.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`], [`ErrorCode::IsDir`].
    pub async fn remove_file(&self, path: &str) -> Result<()> {
        let (parent, name) = self.inner.meta.parent_dir(path).await?;
        self.unlink_at(parent, &name).await.map(|_| ())
    }

    /// Removes entry `name` (not a directory) of directory `parent`, as
    /// [`Self::remove_file`] does for a path: a file this client has open
    /// stays readable through its handles until they close.
    ///
    /// # Errors
    /// [`ErrorCode::NotFound`], [`ErrorCode::IsDir`].
    pub async fn unlink_at(&self, parent: InodeId, name: &str) -> Result<UnlinkReply> {
        let m = &self.inner.meta;
        // With nothing open here, no handle needs the file kept: one round
        // trip. (An open that registers while the unlink is on its way
        // races it as it would race the lookup below.)
        if self.lock_open().is_empty() {
            return m.unlink(parent, name).await;
        }
        let a = m.lookup(parent, name).await?;
        let open = {
            let mut open = self.lock_open();
            match open.get_mut(&a.ino) {
                Some(o) => {
                    o.held = true;
                    true
                }
                None => false,
            }
        };
        if open {
            m.unlink_held_open(parent, name).await
        } else {
            m.unlink(parent, name).await
        }
    }

    /// Removes the empty directory at `path`.
    ///
    /// # Errors
    /// [`ErrorCode::NotEmpty`], [`ErrorCode::NotDir`].
    pub async fn remove_dir(&self, path: &str) -> Result<()> {
        let m = &self.inner.meta;
        let (parent, name) = m.parent_dir(path).await?;
        m.rmdir(parent, &name).await.map(|_| ())
    }

    // ------------------------------------------------------------ open-file bookkeeping

    fn lock_open(&self) -> std::sync::MutexGuard<'_, HashMap<u64, OpenInode>> {
        self.inner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records an open handle; returns the inode's write epoch.
    pub(crate) fn register(&self, ino: u64, generation: u64) -> WriteEpoch {
        let mut open = self.lock_open();
        let o = open.entry(ino).or_default();
        o.handles += 1;
        match o.generations.iter_mut().find(|(g, _)| *g == generation) {
            Some((_, n)) => *n += 1,
            None => o.generations.push((generation, 1)),
        }
        o.write_epoch.clone()
    }

    /// Forgets one handle; returns whether the inode was held open after
    /// an unlink and this was its last handle (meta must be told).
    pub(crate) fn unregister(&self, ino: u64, generation: u64) -> bool {
        self.forget_handle(ino, generation, true) == Some(true)
    }

    /// [`Self::unregister`] only when that needs no word to meta (it is
    /// not the last handle of an inode held open after an unlink), in one
    /// step under the table's lock; returns whether the handle was
    /// forgotten.
    pub(crate) fn unregister_quietly(&self, ino: u64, generation: u64) -> bool {
        self.forget_handle(ino, generation, false).is_some()
    }

    /// Forgets one handle of `ino`: `Some(held)` as [`Self::unregister`];
    /// `None` (nothing changed) when `or_held` is false and this is the
    /// last handle of a held inode.
    fn forget_handle(&self, ino: u64, generation: u64, or_held: bool) -> Option<bool> {
        let mut open = self.lock_open();
        let Some(o) = open.get_mut(&ino) else {
            return Some(false);
        };
        if !or_held && o.held && o.handles <= 1 {
            return None;
        }
        o.handles = o.handles.saturating_sub(1);
        if let Some(i) = o.generations.iter().position(|(g, _)| *g == generation) {
            o.generations[i].1 -= 1;
            if o.generations[i].1 == 0 {
                o.generations.swap_remove(i);
            }
        }
        if o.handles == 0 {
            let held = o.held;
            open.remove(&ino);
            return Some(held);
        }
        Some(false)
    }

    /// Generations the inode's open handles read under.
    pub(crate) fn generations(&self, ino: u64) -> Vec<u64> {
        self.lock_open()
            .get(&ino)
            .map(|o| o.generations.iter().map(|(g, _)| *g).collect())
            .unwrap_or_default()
    }
}

fn check_file(a: &Attr, path: &str) -> Result<()> {
    if a.kind == FileType::Directory as i32 {
        return Err(CairnStatus::new(
            ErrorCode::IsDir,
            format!("{path} is a directory"),
        ));
    }
    if a.kind != FileType::Regular as i32 {
        return Err(CairnStatus::new(
            ErrorCode::Invalid,
            format!("{path} is not a regular file"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_paths_are_recognised_under_a_volume_root_only() {
        let p = SnapshotPath::parse("/ds/.snapshots/v1/d/c").unwrap();
        assert_eq!(p.volume, "ds");
        assert_eq!(p.snapshot.as_deref(), Some("v1"));
        assert_eq!(p.rest, ["d", "c"]);
        let p = SnapshotPath::parse("/ds/.snapshots/").unwrap();
        assert_eq!(p.snapshot, None);
        assert!(p.rest.is_empty());
        assert_eq!(SnapshotPath::parse("/ds/d/.snapshots/v1"), None);
        assert_eq!(SnapshotPath::parse("/.snapshots"), None);
        assert_eq!(SnapshotPath::parse("/ds"), None);
    }
}
