//! A target: one data directory on one SSD, its superblock and its metadata
//! store.
//!
//! ```text
//! <dir>/superblock.json    {format_version, target_uuid, shards, block_size, created}
//! <dir>/meta/              one sled database for the whole target
//! <dir>/data/shard-<k>.dat one data file per shard
//! ```
//!
//! The shard count is fixed when the target is formatted (DESIGN §5), so
//! a chunk's shard never changes when a pod's CPU limit does. The
//! superblock is written once (temp file, fsync, rename, fsync of the
//! directory) and never overwritten: `format` refuses a formatted target
//! and a non-empty directory without a superblock.
//!
//! One sled database serves every shard of the target (one flush makes all
//! of them durable); each shard uses its own tree `shard-<k>`. The brief
//! suggested a `chunks-<k>` and a `blocks-<k>` tree per shard; a single
//! tree with tagged keys (see `layout`) is used instead because sled's
//! `apply_batch` is atomic only within one tree, and a multi-tree sled
//! transaction costs a conflict-checking pass per write and offers no
//! range scans. The shard's header/block-entry split is kept in the key
//! tag.
//!
//! `Target` is `Send + Sync`: open it once, share it (in an `Arc`) with
//! every shard's executor, and call [`Target::open_shard`] inside the
//! executor that will own that shard.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::StoreError;
use super::shard::ShardStore;

/// The on-disk format this build writes and reads.
pub const FORMAT_VERSION: u32 = 2;
const SUPERBLOCK: &str = "superblock.json";

/// The superblock of a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superblock {
    /// On-disk format version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// The target's identity, chosen at format time (uuid v4).
    pub target_uuid: String,
    /// Number of shards, fixed at format time.
    pub shards: u32,
    /// Block size in bytes (4096).
    pub block_size: u32,
    /// Format time, seconds since the Unix epoch.
    pub created: u64,
}

/// Options for opening a target.
#[derive(Debug, Clone)]
pub struct TargetOptions {
    /// Most bytes the target's data files may occupy, split evenly across
    /// shards; `None`: until the filesystem is full.
    pub capacity_bytes: Option<u64>,
    /// sled's page cache, bytes (the block-map cache budget).
    pub meta_cache_bytes: u64,
    /// Chunk headers each shard keeps decoded in memory.
    pub header_cache_entries: usize,
    /// How much a data file grows at a time (fallocate), bytes.
    pub grow_bytes: u64,
}

impl Default for TargetOptions {
    fn default() -> Self {
        Self {
            capacity_bytes: None,
            meta_cache_bytes: 64 << 20,
            header_cache_entries: 65_536,
            grow_bytes: 256 << 20,
        }
    }
}

/// An open target.
#[derive(Debug)]
pub struct Target {
    dir: PathBuf,
    superblock: Superblock,
    db: sled::Db,
    /// sled's data file, fdatasync'ed after each flush (see [`durable_flush`]).
    meta_file: std::sync::Arc<std::fs::File>,
    options: TargetOptions,
}

/// Flushes sled durably: sled 0.34's `flush()` writes with
/// `sync_file_range`, which reaches the device but leaves its volatile
/// cache (and file metadata) unsynced; one `fdatasync` of sled's data file
/// afterwards makes every write the flush carried survive power loss.
pub(crate) fn durable_flush(db: &sled::Db, file: &std::fs::File) -> std::io::Result<()> {
    db.flush().map_err(std::io::Error::other)?;
    file.sync_data()
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("sync directory"))
}

impl Target {
    /// Formats `dir` (created if missing) as a target of `shards` shards
    /// and returns its superblock.
    ///
    /// # Errors
    /// [`StoreError::AlreadyFormatted`] if it has a superblock,
    /// [`StoreError::NotEmpty`] if it has other files (a `lost+found`
    /// directory, as at the root of a new ext4 file system, is no file),
    /// [`StoreError::NoSuchShard`] for `shards == 0`, I/O errors.
    pub fn format(dir: &Path, shards: u32) -> Result<Superblock, StoreError> {
        if shards == 0 {
            return Err(StoreError::NoSuchShard { shard: 0, shards });
        }
        std::fs::create_dir_all(dir).map_err(StoreError::io("create target directory"))?;
        if dir.join(SUPERBLOCK).exists() {
            return Err(StoreError::AlreadyFormatted {
                path: dir.to_path_buf(),
            });
        }
        // The root of a fresh ext4 file system holds `lost+found`: a disk
        // mounted for the chunkserver is used as it is.
        let mut entries = std::fs::read_dir(dir)
            .map_err(StoreError::io("list target"))?
            .filter(|e| {
                !e.as_ref().is_ok_and(|e| {
                    e.file_name() == "lost+found" && e.file_type().is_ok_and(|t| t.is_dir())
                })
            });
        if entries.next().is_some() {
            return Err(StoreError::NotEmpty {
                path: dir.to_path_buf(),
            });
        }
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let sb = Superblock {
            format_version: FORMAT_VERSION,
            target_uuid: uuid::Uuid::new_v4().to_string(),
            shards,
            block_size: super::layout::BLOCK_SIZE as u32,
            created,
        };
        std::fs::create_dir_all(dir.join("meta")).map_err(StoreError::io("create meta"))?;
        std::fs::create_dir_all(dir.join("data")).map_err(StoreError::io("create data"))?;
        let tmp = dir.join("superblock.json.tmp");
        let json = serde_json::to_vec_pretty(&sb).map_err(|e| StoreError::Io {
            op: "encode superblock",
            source: e.into(),
        })?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(StoreError::io("write superblock"))?;
            f.write_all(&json)
                .and_then(|()| f.sync_all())
                .map_err(StoreError::io("write superblock"))?;
        }
        std::fs::rename(&tmp, dir.join(SUPERBLOCK)).map_err(StoreError::io("rename superblock"))?;
        sync_dir(dir)?;
        tracing::info!(dir = %dir.display(), shards, uuid = %sb.target_uuid, "formatted target");
        Ok(sb)
    }

    /// Opens a formatted target with default options.
    ///
    /// # Errors
    /// See [`Self::open_with`].
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, TargetOptions::default())
    }

    /// Opens a formatted target.
    ///
    /// # Errors
    /// [`StoreError::BadSuperblock`], [`StoreError::UnsupportedFormat`],
    /// metadata store errors.
    pub fn open_with(dir: &Path, options: TargetOptions) -> Result<Self, StoreError> {
        let path = dir.join(SUPERBLOCK);
        let bytes = std::fs::read(&path).map_err(|_| StoreError::BadSuperblock {
            path: path.clone(),
            reason: "cannot read",
        })?;
        let superblock: Superblock =
            serde_json::from_slice(&bytes).map_err(|_| StoreError::BadSuperblock {
                path: path.clone(),
                reason: "not a valid superblock",
            })?;
        if superblock.format_version != FORMAT_VERSION {
            return Err(StoreError::UnsupportedFormat {
                found: superblock.format_version,
            });
        }
        if superblock.block_size as u64 != super::layout::BLOCK_SIZE || superblock.shards == 0 {
            return Err(StoreError::BadSuperblock {
                path,
                reason: "unsupported block size or shard count",
            });
        }
        let db = sled::Config::new()
            .path(dir.join("meta"))
            .cache_capacity(options.meta_cache_bytes)
            .open()?;
        let meta_file = std::fs::File::open(dir.join("meta").join("db"))
            .map_err(StoreError::io("open the metadata file for syncing"))?;
        Ok(Self {
            meta_file: std::sync::Arc::new(meta_file),
            dir: dir.to_path_buf(),
            superblock,
            db,
            options,
        })
    }

    /// Returns the superblock.
    pub fn superblock(&self) -> &Superblock {
        &self.superblock
    }

    /// Returns the target's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Returns the shard count.
    pub fn shards(&self) -> u32 {
        self.superblock.shards
    }

    /// Returns the options the target was opened with.
    pub fn options(&self) -> &TargetOptions {
        &self.options
    }

    /// Returns the path of shard `shard`'s data file.
    pub fn data_path(&self, shard: u32) -> PathBuf {
        self.dir.join("data").join(format!("shard-{shard}.dat"))
    }

    /// Returns the path of the superblock.
    pub fn superblock_path(&self) -> PathBuf {
        self.dir.join(SUPERBLOCK)
    }

    /// Returns the metadata database (shared by every shard).
    pub(crate) fn db(&self) -> &sled::Db {
        &self.db
    }

    pub(crate) fn meta_file(&self) -> std::sync::Arc<std::fs::File> {
        self.meta_file.clone()
    }

    /// Opens shard `shard`. Call it inside the glommio executor that will
    /// own the shard; the store is used from that executor only.
    ///
    /// # Errors
    /// [`StoreError::NoSuchShard`], I/O and metadata errors, and corrupt
    /// metadata ([`StoreError::CorruptRecord`], [`StoreError::CorruptBlockMap`]).
    pub async fn open_shard(&self, shard: u32) -> Result<ShardStore, StoreError> {
        ShardStore::open(self, shard).await
    }

    /// Makes every metadata change durable (sled flush, blocking).
    ///
    /// # Errors
    /// Metadata store errors.
    pub fn flush(&self) -> Result<(), StoreError> {
        durable_flush(&self.db, &self.meta_file).map_err(StoreError::io("flush metadata"))
    }
}
