//! [`File`]: an open file's reads and writes, striped over chains
//! (DESIGN §3, §7).
//!
//! # Reads
//! A read is clipped to the file's length (as of the open, grown by this
//! handle's own writes: close-to-open), widened to whole 4 KiB blocks, and
//! cut into [`Piece`]s (one chunk, at most `max_io` bytes). A piece whose
//! blocks are all in the block cache is not fetched; the others go out
//! whole (a piece with a few evicted blocks must not become many small
//! requests), `window` in flight, each to one replica of its chain. A 4 KiB
//! read of an uncached block is therefore exactly one request to one
//! replica, and its reply is returned without a copy. Ranges the chunk
//! does not cover (holes, a chunk never written) read as zeros. Every reply
//! is CRC-checked end to end before it is used.
//!
//! Read-ahead ([`ReadAhead`]) prefetches ahead of sequential streams into
//! the handle's own read-ahead buffer — whole pieces, aligned like the
//! reader's, handed to the reader without a copy — and not into the block
//! cache: a stream then costs one CRC check and one copy per byte instead
//! of a trip through 4 KiB cache blocks, and a large scan never evicts the
//! random-read working set. The buffer holds at most two windows
//! (`min(readahead_max, cache memory / 8)` each) and drops what the reader
//! has passed. A read overlapping a prefetch still in flight waits for it
//! instead of fetching the same bytes twice. Prefetched and used blocks are
//! counted in the cache's prefetch hit ratio.
//!
//! # Writes
//! A write is cut into pieces the same way and sent to the chain heads,
//! `window` in flight; it returns when every piece is on every replica of
//! its chain, or fails — never a silent short write (a failed write may
//! have changed some of its range, as with any file system). The handle
//! tracks the length it wrote; [`File::fsync`] and [`File::close`] report
//! it to meta, which is when other clients see it: a handle that wrote
//! reports even when the length did not grow, so the file's mtime and
//! version move and other clients' caches drop the overwritten contents
//! at their next open (close-to-open). Data is already durable when a
//! write returns, so `fsync` costs one metadata call at most.
//!
//! # Encrypted files
//! A file whose inode has a salt belongs to an encrypted volume
//! ([`crate::crypto`]): every 4 KiB block is stored sealed (AES-256-GCM
//! under the file's key, a fresh nonce per write, the seal kept by the
//! chunkservers beside the block's CRC). So the data path moves whole
//! blocks only:
//! * Reads fetch whole blocks (past the end of the file too: a sealed
//!   block is stored whole) and open them before anything else sees them;
//!   the block cache's memory tier gets the plaintext, the SSD tier never
//!   does. A block without a seal must be a hole (zeros); anything else,
//!   and a block whose tag fails, is an error ([`ErrorCode::Checksum`]),
//!   never data.
//! * A write covering a block only partly first reads and opens that
//!   block from the chain's head (whose committed version is the one a
//!   conditional write is compared with; other replicas lag while writes
//!   are in flight) — at most the first and the last block of the write —
//!   merges,
//!   seals every block and writes them whole. The pieces holding a merged
//!   block go first, one at a time, each conditional
//!   ([`Flags::CONDITIONAL`](cairn_proto::frame::Flags::CONDITIONAL)) on
//!   the chunk version the read saw (0 for a chunk not written yet) or the
//!   one the previous piece made (DESIGN §7 asks for the block's version;
//!   the chunkserver keeps versions per chunk, which is stricter: an
//!   unrelated write to the same chunk also makes the merge start again).
//!   A lost race is retried (at once, then after random pauses), up to 100
//!   times. A block at or past the end of the file as this handle knows
//!   it is read too (usually a hole): two clients filling disjoint slices
//!   of one new block both keep their bytes, as on a plain file.
//! * Bytes past the end of the file inside its last block are always
//!   zeros: a truncation into a block seals it again with its tail zeroed
//!   before the chunk is cut at the next block boundary, so extending the
//!   file later reads zeros, never old bytes.
//!
//! # Compressed files
//! A file of a compressed volume is stored in units ([`crate::compress`]:
//! 64 KiB by default, packed or raw, the form marked in the seal of the
//! unit's first block), and its data path is the encrypted one above with
//! the unit in place of the block: reads fetch and decode whole units
//! (decrypting first on a volume that is both), a write covering a unit
//! only partly reads and decodes that unit at the chain's head and writes
//! it back conditionally, truncation into a unit stores it again with its
//! tail zeroed. Compression comes before encryption (ciphertext does not
//! compress). Each handle counts the bytes it wrote before and after
//! compression and reports them at close, for the volume's ratio.
//!
//! # Truncation
//! [`File::set_len`] below the current length first truncates the chunk at
//! the new end and removes the chunks past it on every replica, then
//! records the length in meta (bumping the truncate generation, so a late
//! length report from an older writer cannot resurrect the old length).
//! Data goes first so that extending the file later can never expose old
//! bytes; a crash in between leaves a file whose tail reads as zeros.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use cairn_proto::ids::InodeId;
use cairn_proto::meta::Attr;
use cairn_proto::{CairnStatus, ErrorCode};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::watch;

use crate::Result;
use crate::SetAttrChanges;
use crate::cache::{BLOCK, BlockKey, cached_len};
use crate::chunk_io::WriteData;
use crate::client::{Client, OpenOptions, WriteEpoch};
use crate::compress::{Codec, PACKED_MARK, Packing, is_packed};
use crate::crypto::{FileKey, Nonces, SEAL_LEN, Seal, is_no_seal};
use crate::layout::{FileLayout, Piece};
use crate::readahead::ReadAhead;

/// An open file. Methods take `&self`: one handle may serve concurrent
/// reads and writes (share it in an `Arc`). Close it with [`File::close`];
/// a handle dropped without closing is closed in the background.
#[derive(Debug)]
pub struct File {
    inner: Arc<FileInner>,
}

#[derive(Debug)]
struct FileInner {
    client: Client,
    ino: InodeId,
    layout: FileLayout,
    /// The attribute version at open: the block cache's generation.
    generation: u64,
    /// The inode's write epoch in this client (shared by its handles).
    write_epoch: WriteEpoch,
    how: OpenOptions,
    /// The file's key when its volume is encrypted.
    crypt: Option<Crypt>,
    /// The file's volume.
    volume: u64,
    /// A file of a snapshot's tree (or a restored file not copied yet):
    /// the snapshot's seq. Read-only, read with the snapshot's seq, cached
    /// under a generation of its own ([`FileInner::key`]).
    snapshot: Option<u64>,
    /// How the volume compresses (set at open when the client knows the
    /// volume, else by [`FileInner::ready`] before the first read or write).
    codec: std::sync::OnceLock<Option<Codec>>,
    /// The volume's data-path metrics, resolved at the first read or
    /// write (after [`FileInner::ready`], so the volume's name is known).
    metrics: std::sync::OnceLock<crate::metrics::FileMetrics>,
    state: Mutex<State>,
    /// Serializes appends (O_APPEND is atomic within one client).
    append: tokio::sync::Mutex<()>,
    /// Serializes this handle's writes to an encrypted or compressed
    /// file, whose partial blocks (units) are read, merged and written
    /// again.
    sealing: tokio::sync::Mutex<()>,
    /// A writable handle of a restored file whose data is still its
    /// snapshot's: (the snapshot's object, its seq) until
    /// [`FileInner::copy_up`] has copied it into the file's own object.
    origin: tokio::sync::Mutex<Option<(u64, u64)>>,
    /// Reads put what they fetched in the block cache before they return
    /// ([`File::fill_cache_before_returning`]), instead of in a task of
    /// its own after ([`FileInner::cache_later`]).
    fill_inline: std::sync::atomic::AtomicBool,
}

/// What a file's stored blocks go through: decryption, then decompression
/// (see the module docs' "Encrypted files" and [`crate::compress`]).
#[derive(Debug, Clone)]
struct Transform {
    crypt: Option<Crypt>,
    codec: Option<Codec>,
    ino: u64,
}

/// How an encrypted file's blocks are sealed and opened (see the module
/// docs' "Encrypted files").
#[derive(Debug, Clone)]
struct Crypt {
    /// Shared: a [`Transform`] is cloned per piece read and per write,
    /// and the key (expanded cipher state) is not copied each time.
    key: Arc<FileKey>,
    object: u64,
    ino: u64,
}

/// Pieces at least this large are opened on the blocking pool, so the
/// pieces of a stream in flight are decrypted on every core at once; a
/// small read is opened where it is (a thread hop would cost more than it
/// saves).
const OPEN_ELSEWHERE: usize = 256 << 10;

/// Attempts at a read-modify-write of partial encrypted blocks that lose a
/// race with another writer of the same chunk before the write fails. The
/// first few retry at once: a loser that paused while the winner went on
/// to its next write would lose again and again (two writers of one block
/// in tight loops starved one in a test); only a long losing streak adds
/// a random pause of up to 8 ms.
const SEAL_ATTEMPTS: u32 = 100;

/// Lost races retried without a pause.
const SEAL_EAGER: u32 = 4;

impl Crypt {
    /// Decrypts what a piece at `file_offset` (block-aligned) returned:
    /// `data` with one seal per 4 KiB block in `seals` (empty: none). A
    /// block without a seal must be a hole (zeros): anything else was not
    /// written by an encrypting client and is refused, as is a block
    /// whose tag does not verify.
    fn open_piece(&self, file_offset: u64, data: Bytes, seals: &Bytes) -> Result<Bytes> {
        if data.is_empty() {
            return Ok(data);
        }
        // Opened from the received bytes (shared with their frame) into a
        // new buffer in one pass; holes stay the new buffer's zeros.
        let mut buf = BytesMut::zeroed(data.len());
        let first = file_offset / BLOCK;
        let bs = BLOCK as usize;
        for (i, block) in buf.chunks_mut(bs).enumerate() {
            let sealed = &data[i * bs..(i * bs + block.len())];
            let index = first + i as u64;
            let seal: Option<&Seal> = seals
                .get(i * SEAL_LEN..(i + 1) * SEAL_LEN)
                .and_then(|s| <&Seal>::try_from(s).ok())
                .filter(|s| !is_no_seal(s));
            match seal {
                None if sealed.iter().all(|b| *b == 0) => {}
                None => {
                    return Err(CairnStatus::new(
                        ErrorCode::Checksum,
                        format!(
                            "block {index} of encrypted file inode {} has no seal: it was not \
                             written by an encrypting client",
                            self.ino
                        ),
                    ));
                }
                Some(seal) => {
                    if block.len() as u64 != BLOCK {
                        return Err(CairnStatus::new(
                            ErrorCode::Checksum,
                            format!(
                                "block {index} of encrypted file inode {} is cut short ({} bytes)",
                                self.ino,
                                block.len()
                            ),
                        ));
                    }
                    self.key
                        .open_into((self.object, index), sealed, block, seal)
                        .map_err(|e| {
                            CairnStatus::new(
                                ErrorCode::Checksum,
                                format!("encrypted file inode {}: {e}", self.ino),
                            )
                        })?;
                }
            }
        }
        Ok(buf.freeze())
    }
}

#[derive(Debug)]
struct State {
    /// The length as this handle knows it.
    len: u64,
    /// The length meta has from us (or had at open).
    reported: u64,
    /// End of the furthest write sent through this handle (it may have
    /// reached some replicas even if it failed): reported at close when
    /// beyond the length, for the garbage collector.
    attempted: u64,
    truncate_gen: u64,
    closed: bool,
    readahead: ReadAhead,
    /// Prefetches in flight: `[from, to)` and a flag set when done.
    prefetching: Vec<(u64, u64, watch::Receiver<bool>)>,
    /// Read-ahead data: (file offset, length, bytes) of fetched pieces,
    /// in file order; bytes shorter than the length end in a hole.
    ahead: VecDeque<(u64, u64, Bytes)>,
    ahead_bytes: u64,
    /// Bytes this handle wrote in compression units: (before, after
    /// compression), for the volume's ratio (reported at close).
    written: (u64, u64),
    /// Writes sent through this handle, and how many of them meta has
    /// heard of (a report moves the file's mtime and version, so other
    /// clients re-read an overwritten file after open, not only a grown
    /// one).
    writes: u64,
    reported_writes: u64,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn too_big(what: u64) -> CairnStatus {
    CairnStatus::new(
        ErrorCode::TooBig,
        format!("offset {what} is beyond the largest file size"),
    )
}

impl File {
    pub(crate) fn new(client: Client, attr: Attr, how: OpenOptions) -> Result<File> {
        Self::new_at(client, attr, how, None)
    }

    /// A read-only handle on a file of snapshot `seq`'s tree (`attr` as the
    /// snapshot holds it).
    pub(crate) fn new_in_snapshot(client: Client, attr: Attr, seq: u64) -> Result<File> {
        Self::new_at(client, attr, OpenOptions::READ, Some(seq))
    }

    fn new_at(
        client: Client,
        mut attr: Attr,
        how: OpenOptions,
        mut snapshot: Option<u64>,
    ) -> Result<File> {
        if snapshot.is_some() && how.write {
            return Err(CairnStatus::new(
                ErrorCode::NotPermitted,
                "snapshots are read-only",
            ));
        }
        // A file of a restored volume whose data is still its snapshot's
        // (meta's `fs::restore`): a reader reads the snapshot's object at
        // the snapshot's seq; a writer copies it into the file's own
        // object before its first read or write ([`FileInner::copy_up`]).
        let mut origin = None;
        if snapshot.is_none() && attr.origin_seq != 0 {
            let o = (attr.origin_object, attr.origin_seq);
            (attr.origin_object, attr.origin_seq) = (0, 0);
            if how.write {
                origin = Some(o);
            } else if let Some(l) = attr.layout.as_mut() {
                l.object_id = o.0;
                snapshot = Some(o.1);
            }
        }
        let layout = attr.layout.as_ref().ok_or_else(|| {
            CairnStatus::new(
                ErrorCode::Internal,
                format!("meta sent no layout for file inode {}", attr.ino),
            )
        })?;
        let layout = FileLayout::from_pb(layout)?;
        let opts = &client.inner.opts;
        // Read-ahead lands in the memory tier: a window larger than an
        // eighth of it would evict a stream's prefetched blocks before
        // they are read (several streams share the tier).
        // A stream's read-ahead (buffered and in flight, two windows) is
        // bounded by a quarter of the memory tier, so the memory budget
        // users set also covers a few concurrent streams.
        let readahead = ReadAhead::new(
            opts.readahead_initial,
            opts.readahead_max.min(opts.cache.memory_bytes / 8),
        );
        // A key version says the file is sealed (files of builds before
        // encryption existed may carry a salt and are plain).
        let crypt = if attr.key_version == 0 || attr.encryption_salt.is_empty() {
            None
        } else {
            Some(Crypt {
                key: Arc::new(client.file_key(&attr)?),
                object: layout.object.0,
                ino: attr.ino,
            })
        };
        let codec = std::sync::OnceLock::new();
        if let Some(c) = client.known_codec(attr.volume_id) {
            check_unit(attr.ino, &layout, c.as_ref())?;
            let _ = codec.set(c);
        }
        let write_epoch = client.register(attr.ino, attr.version);
        Ok(File {
            inner: Arc::new(FileInner {
                ino: InodeId(attr.ino),
                volume: attr.volume_id,
                snapshot,
                codec,
                metrics: std::sync::OnceLock::new(),
                layout,
                generation: attr.version,
                write_epoch,
                how,
                crypt,
                state: Mutex::new(State {
                    len: attr.size,
                    reported: attr.size,
                    attempted: 0,
                    writes: 0,
                    reported_writes: 0,
                    truncate_gen: attr.truncate_gen,
                    closed: false,
                    readahead,
                    prefetching: Vec::new(),
                    ahead: VecDeque::new(),
                    ahead_bytes: 0,
                    written: (0, 0),
                }),
                append: tokio::sync::Mutex::new(()),
                sealing: tokio::sync::Mutex::new(()),
                origin: tokio::sync::Mutex::new(origin),
                fill_inline: std::sync::atomic::AtomicBool::new(false),
                client,
            }),
        })
    }

    /// Makes this handle's reads return only once the blocks they fetched
    /// are in the block cache's memory tier (a warm-up: `cairn warmup`
    /// reports the data loaded when it is, so the job that starts next
    /// finds it there; what overflows into the SSD tier is written there
    /// in the background, as always). By default a read returns first and
    /// the cache fills right after.
    pub fn fill_cache_before_returning(&self) {
        self.inner.fill_inline.store(true, Ordering::Relaxed);
    }

    /// The file's inode.
    pub fn ino(&self) -> InodeId {
        self.inner.ino
    }

    /// The inode's attribute version when this handle opened it (changes
    /// with every change to the inode on meta).
    pub fn version(&self) -> u64 {
        self.inner.generation
    }

    /// The file's length as this handle knows it (at open, plus its own
    /// writes and truncations).
    pub fn len(&self) -> u64 {
        lock(&self.inner.state).len
    }

    /// Takes in what other clients changed since this handle opened, as
    /// `attr` (fresh from meta) says: their length and truncate generation
    /// (unless this handle has writes meta has not heard of: its own
    /// length is then newer) and no cached or read-ahead data of the file.
    /// For a file lock just granted: what the previous holder wrote under
    /// the lock is what the new holder must read (as NFS does on lock).
    pub fn revalidate(&self, attr: &Attr) {
        {
            let mut s = lock(&self.inner.state);
            let clean = s.writes == s.reported_writes && s.len <= s.reported;
            if clean {
                s.len = attr.size;
                s.reported = attr.size;
                s.truncate_gen = attr.truncate_gen;
            } else {
                s.len = s.len.max(attr.size);
            }
        }
        self.inner.invalidate(0, u64::MAX);
    }

    /// Whether [`Self::len`] is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file's layout.
    pub fn layout(&self) -> &FileLayout {
        &self.inner.layout
    }

    /// Reads up to `len` bytes at `offset`; the result is shorter only at
    /// the end of the file (empty at or past it).
    ///
    /// # Errors
    /// No replica could serve a part within the retry deadline
    /// ([`ErrorCode::Unavailable`]), every replica's copy corrupt
    /// ([`ErrorCode::Checksum`]), a closed handle ([`ErrorCode::Invalid`]).
    pub async fn read_at(&self, offset: u64, len: usize) -> Result<Bytes> {
        let started = std::time::Instant::now();
        if self.inner.how.write {
            self.inner.copy_up(false).await?;
        }
        let data = self.read_at_inner(offset, len).await?;
        self.inner.metrics().read(data.len(), started.elapsed());
        Ok(data)
    }

    async fn read_at_inner(&self, offset: u64, len: usize) -> Result<Bytes> {
        self.inner.ready().await?;
        match self.note_read(offset, len)? {
            Some(end) => self.read_noted(offset, end).await,
            None => Ok(Bytes::new()),
        }
    }

    /// Records a read of `len` bytes at `offset` with the read-ahead
    /// detector and starts the prefetch it asks for; returns where the
    /// read ends (`None`: at or past the end of the file, nothing to read).
    fn note_read(&self, offset: u64, len: usize) -> Result<Option<u64>> {
        let (end, prefetch) = {
            let mut s = lock(&self.inner.state);
            if s.closed {
                return Err(closed());
            }
            let end = offset.saturating_add(len as u64).min(s.len);
            if offset >= end {
                return Ok(None);
            }
            let size = s.len;
            let prefetch = s.readahead.on_read(offset, end - offset, size);
            (end, prefetch)
        };
        if let Some((from, to)) = prefetch {
            self.spawn_prefetch(from, to);
        }
        Ok(Some(end))
    }

    /// The bytes `[offset, end)` of a read [`Self::note_read`] recorded.
    async fn read_noted(&self, offset: u64, end: u64) -> Result<Bytes> {
        let f = &self.inner;
        f.wait_prefetches(offset, end).await;
        let start = offset - offset % f.align();
        let data = f.read_range(start, end).await?;
        f.drop_ahead_before(offset);
        let skip = usize::try_from(offset - start).unwrap_or(0);
        Ok(data.slice(skip..))
    }

    /// [`Self::read_at`] answered at once when the memory tier of the block
    /// cache holds every block of the range (a warmed dataset, a file read
    /// before): no await and no task, for callers answering from a thread
    /// that must not block (the mount's FUSE threads). Anything else (a
    /// miss, a prefetch in flight over the range, a sealed or writable
    /// file) comes back as [`ReadNow::Later`], to be finished with
    /// [`Self::read_later`]; the read is recorded with the read-ahead
    /// detector once either way. Outside a tokio runtime (a prefetch it
    /// starts is a task) it always answers `Later`.
    pub fn try_read_now(&self, offset: u64, len: usize) -> ReadNow {
        let started = std::time::Instant::now();
        let mut later = ReadLater {
            offset,
            len,
            end: None,
            started,
        };
        let f = &self.inner;
        // Outside a runtime no prefetch could start: the read is left whole.
        if f.how.write || f.codec.get().is_none() || tokio::runtime::Handle::try_current().is_err()
        {
            return ReadNow::Later(later);
        }
        let end = match self.note_read(offset, len) {
            Ok(Some(end)) => end,
            Ok(None) => return ReadNow::Done(Ok(Bytes::new())),
            Err(e) => return ReadNow::Done(Err(e)),
        };
        later.end = Some(end);
        if f.transformed() || !cache_enabled(&f.client) {
            return ReadNow::Later(later);
        }
        let start = offset - offset % BLOCK;
        let size = {
            let s = lock(&f.state);
            let overlaps = |a: u64, b: u64| a < end && start < b;
            if s.prefetching.iter().any(|(a, b, _)| overlaps(*a, *b))
                || s.ahead.iter().any(|(a, n, _)| overlaps(*a, a + n))
            {
                return ReadNow::Later(later);
            }
            s.len
        };
        let first = self.inner.key(start / BLOCK);
        let blocks = end.div_ceil(BLOCK) - start / BLOCK;
        let span = (blocks * BLOCK).min(size.saturating_sub(start));
        let cache = &f.client.inner.cache;
        let Some(data) = cache.read_in_memory(first, blocks, span, offset - start, end - offset)
        else {
            return ReadNow::Later(later);
        };
        f.drop_ahead_before(offset);
        f.metrics().read(data.len(), started.elapsed());
        ReadNow::Done(Ok(data))
    }

    /// Finishes a read [`Self::try_read_now`] could not answer at once.
    ///
    /// # Errors
    /// As [`Self::read_at`].
    pub async fn read_later(&self, r: ReadLater) -> Result<Bytes> {
        let Some(end) = r.end else {
            return self.read_at(r.offset, r.len).await;
        };
        let data = self.read_noted(r.offset, end).await?;
        self.inner.metrics().read(data.len(), r.started.elapsed());
        Ok(data)
    }

    /// Reads exactly `buf.len()` bytes at `offset` into `buf`.
    ///
    /// # Errors
    /// As [`Self::read_at`]; [`ErrorCode::Invalid`] when the file ends
    /// first (fewer bytes are there than asked for).
    pub async fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let data = self.read_at(offset, buf.len()).await?;
        if data.len() < buf.len() {
            return Err(CairnStatus::new(
                ErrorCode::Invalid,
                format!(
                    "the file ends {} bytes into a read of {} at {offset}",
                    data.len(),
                    buf.len()
                ),
            ));
        }
        buf.copy_from_slice(&data);
        Ok(())
    }

    /// Starts fetching `[from, to)` into the read-ahead buffer, one task
    /// per piece: each piece is usable (and waited for) on its own, so the
    /// reader never waits for a whole window.
    fn spawn_prefetch(&self, from: u64, to: u64) {
        let f = &self.inner;
        let max_io = f.max_io();
        // Sealed blocks and compressed units are fetched whole.
        let (from, to) = if f.transformed() {
            let g = f.align();
            (from - from % g, to.div_ceil(g).saturating_mul(g))
        } else {
            (from, to)
        };
        for p in f.layout.pieces(from, to.saturating_sub(from), max_io) {
            let (tx, rx) = watch::channel(false);
            let (a, b) = (p.file_offset, p.file_offset + p.len);
            lock(&f.state).prefetching.push((a, b, rx));
            let f = f.clone();
            tokio::spawn(async move {
                if let Err(e) = f.prefetch(p).await {
                    tracing::debug!(error = %e, from = a, to = b, "prefetch failed");
                }
                let _ = tx.send(true);
                lock(&f.state)
                    .prefetching
                    .retain(|(x, y, _)| (*x, *y) != (a, b));
            });
        }
    }

    /// Writes all of `data` at `offset` (at the end of the file when the
    /// file was opened with `append`).
    ///
    /// # Errors
    /// [`ErrorCode::NotPermitted`] on a read-only handle; otherwise as the
    /// module docs say: the write is on every replica, or an error says it
    /// may not be.
    pub async fn write_at(&self, offset: u64, data: Bytes) -> Result<()> {
        let (started, n) = (std::time::Instant::now(), data.len());
        self.inner.copy_up(false).await?;
        if self.inner.how.append {
            self.append(data).await?;
        } else {
            self.inner.write_at(offset, data).await?;
        }
        self.inner.metrics().wrote(n, started.elapsed());
        Ok(())
    }

    /// Writes `data` at the end of the file; returns the offset it went to.
    /// Appends through one client are atomic with respect to each other.
    ///
    /// # Errors
    /// As [`Self::write_at`].
    pub async fn append(&self, data: Bytes) -> Result<u64> {
        self.inner.copy_up(false).await?;
        let _one = self.inner.append.lock().await;
        let at = self.len();
        self.inner.write_at(at, data).await?;
        Ok(at)
    }

    /// Makes the file's length visible to other clients (data is durable
    /// on every replica when each write returns).
    ///
    /// # Errors
    /// Meta errors.
    pub async fn fsync(&self) -> Result<()> {
        let f = &self.inner;
        let (len, reported, gen_, writes, reported_writes) = {
            let s = lock(&f.state);
            (
                s.len,
                s.reported,
                s.truncate_gen,
                s.writes,
                s.reported_writes,
            )
        };
        if !f.how.write || (len <= reported && writes == reported_writes) {
            return Ok(());
        }
        f.client.inner.meta.report_length(f.ino, len, gen_).await?;
        let mut s = lock(&f.state);
        s.reported = s.reported.max(len);
        s.reported_writes = s.reported_writes.max(writes);
        Ok(())
    }

    /// Sets the file's length: truncates (on every replica, then in meta)
    /// or extends with a hole.
    ///
    /// # Errors
    /// [`ErrorCode::NotPermitted`] on a read-only handle, data-plane and
    /// meta errors.
    pub async fn set_len(&self, new_len: u64) -> Result<()> {
        let f = &self.inner;
        f.check_writable()?;
        f.ready().await?;
        // Emptied, a restored file needs none of its snapshot's data.
        f.copy_up(new_len == 0).await?;
        let old = {
            let s = lock(&f.state);
            s.len.max(s.reported)
        };
        if new_len < old {
            f.drop_data(new_len, old).await?;
        }
        let attr = f
            .client
            .inner
            .meta
            .setattr(
                f.ino,
                SetAttrChanges {
                    size: Some(new_len),
                    ..Default::default()
                },
            )
            .await?;
        let mut s = lock(&f.state);
        s.len = new_len;
        s.reported = new_len;
        s.truncate_gen = attr.truncate_gen;
        Ok(())
    }

    /// Closes the handle; a writer's length goes to meta.
    ///
    /// # Errors
    /// Meta errors (the handle is closed anyway).
    pub async fn close(self) -> Result<()> {
        self.inner.close().await
    }

    /// Closes a read-only file at once when that needs no word to meta
    /// (what closing a reader almost always is): no task and no await, for
    /// callers answering from a thread that must not block (the mount's
    /// FUSE threads). Gives the file back when closing it needs meta (the
    /// last handle of a file unlinked while open); [`Self::close`] it then.
    ///
    /// # Errors
    /// The file itself, unclosed, as said above.
    pub fn close_now(self) -> std::result::Result<(), File> {
        let f = &self.inner;
        if f.how.write {
            return Err(self);
        }
        // Only a `File` closes its inner file, and this one is ours.
        if lock(&f.state).closed {
            return Ok(());
        }
        if !f.client.unregister_quietly(f.ino.0, f.generation) {
            return Err(self);
        }
        lock(&f.state).closed = true;
        Ok(())
    }
}

impl Drop for File {
    fn drop(&mut self) {
        if lock(&self.inner.state).closed {
            return;
        }
        let f = self.inner.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = f.close().await {
                    tracing::warn!(ino = f.ino.0, error = %e, "closing a dropped file handle failed");
                }
            });
        }
    }
}

/// What [`File::try_read_now`] did.
#[derive(Debug)]
pub enum ReadNow {
    /// The read's answer.
    Done(Result<Bytes>),
    /// It needs I/O: finish it with [`File::read_later`].
    Later(ReadLater),
}

/// A read [`File::try_read_now`] began and could not finish at once.
#[derive(Debug)]
pub struct ReadLater {
    offset: u64,
    len: usize,
    /// Where the read ends, once the read-ahead detector recorded it
    /// (`None`: not recorded; [`File::read_later`] reads from scratch).
    end: Option<u64>,
    started: std::time::Instant,
}

/// The top bit of a snapshot read's cache generation (see
/// [`FileInner::key`]).
const SNAPSHOT_GENERATION: u64 = 1 << 63;

/// How long a writer waits for another client's copy of a restored
/// file's data ([`FileInner::copy_up`]).
const COPY_WAIT: std::time::Duration = std::time::Duration::from_secs(120);
/// Bytes a copy-up moves per read and write.
const COPY_PIECE: u64 = 8 << 20;
/// How often a long copy-up renews its claim (meta lets a claim lapse
/// after 30 s).
const COPY_RENEW: std::time::Duration = std::time::Duration::from_secs(10);

fn closed() -> CairnStatus {
    CairnStatus::new(ErrorCode::Invalid, "the file handle is closed")
}

impl FileInner {
    /// Copies a restored file's data from its snapshot into the file's own
    /// object, once per handle, before the handle's first read, write or
    /// truncate (`discard`: a truncate to 0, which needs none of it). Meta
    /// lets one session copy at a time; another's copy is waited for. The
    /// claim is renewed while a long copy runs.
    async fn copy_up(&self, discard: bool) -> Result<()> {
        let mut origin = self.origin.lock().await;
        let Some((object, seq)) = *origin else {
            return Ok(());
        };
        // One copier per file in this client; a later one finds the copy
        // done (meta answers that there is nothing to copy).
        let copying = || {
            self.client
                .inner
                .copying
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let one = copying().entry(self.ino.0).or_default().clone();
        let _one = one.lock().await;
        let r = self.copy_up_locked(object, seq, discard).await;
        {
            let mut m = copying();
            if m.get(&self.ino.0)
                .is_some_and(|a| Arc::strong_count(a) <= 2)
            {
                m.remove(&self.ino.0);
            }
        }
        r?;
        *origin = None;
        Ok(())
    }

    /// The body of [`Self::copy_up`], under the client's copy lock of the
    /// file.
    async fn copy_up_locked(&self, object: u64, seq: u64, discard: bool) -> Result<()> {
        let meta = &self.client.inner.meta;
        let deadline = std::time::Instant::now() + COPY_WAIT;
        let mut pause = std::time::Duration::from_millis(20);
        let attr = loop {
            match meta.copy_up(self.ino, discard).await {
                Ok((true, attr)) => break attr,
                Ok((false, attr)) => {
                    // Dropped (discard) or copied by another handle.
                    let mut s = lock(&self.state);
                    s.len = attr.size;
                    s.reported = attr.size;
                    s.truncate_gen = attr.truncate_gen;
                    return Ok(());
                }
                Err(e)
                    if e.code == ErrorCode::Unavailable && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        };
        let mut src_attr = attr.clone();
        (src_attr.origin_object, src_attr.origin_seq) = (0, 0);
        if let Some(l) = src_attr.layout.as_mut() {
            l.object_id = object;
        }
        let src = File::new_at(self.client.clone(), src_attr, OpenOptions::READ, Some(seq))?;
        let size = attr.size;
        let mut renewed = std::time::Instant::now();
        let mut at = 0;
        while at < size {
            let n = COPY_PIECE.min(size - at);
            let data = src
                .read_at_inner(at, usize::try_from(n).unwrap_or(usize::MAX))
                .await?;
            if data.is_empty() {
                break;
            }
            at += data.len() as u64;
            self.write_at(at - data.len() as u64, data).await?;
            if renewed.elapsed() >= COPY_RENEW {
                meta.copy_up(self.ino, false).await?;
                renewed = std::time::Instant::now();
            }
        }
        drop(src);
        let (len, gen_) = {
            let s = lock(&self.state);
            (s.len.max(size), s.truncate_gen)
        };
        meta.report_length(self.ino, len, gen_).await?;
        {
            let mut s = lock(&self.state);
            s.reported = s.reported.max(len);
            s.reported_writes = s.writes;
        }
        meta.copy_done(self.ino).await?;
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        if lock(&self.state).closed {
            return Err(closed());
        }
        if !self.how.write {
            return Err(CairnStatus::new(
                ErrorCode::NotPermitted,
                "the file is open for reading only",
            ));
        }
        Ok(())
    }

    /// How the file's volume compresses (known once [`Self::ready`] ran).
    fn codec(&self) -> Option<&Codec> {
        self.codec.get().and_then(Option::as_ref)
    }

    /// Whether stored blocks differ from the file's bytes (sealed or
    /// compressed): reads and writes then move whole [`Self::align`]s.
    fn transformed(&self) -> bool {
        self.crypt.is_some() || self.codec().is_some()
    }

    /// What reads start at and transformed writes cover whole: a
    /// compression unit, else a block.
    fn align(&self) -> u64 {
        self.codec().map_or(BLOCK, |c| c.unit)
    }

    fn transform(&self) -> Transform {
        Transform {
            crypt: self.crypt.clone(),
            codec: self.codec().copied(),
            ino: self.ino.0,
        }
    }

    fn metrics(&self) -> &crate::metrics::FileMetrics {
        self.metrics.get_or_init(|| {
            self.client
                .inner
                .metrics
                .file(&self.client.volume_label(self.volume))
        })
    }

    /// Learns how the file's volume compresses, when the client did not
    /// know the volume at open (it is new).
    async fn ready(&self) -> Result<()> {
        if self.codec.get().is_some() {
            return Ok(());
        }
        let c = self.client.codec_of(self.volume).await.map_err(|e| {
            CairnStatus::new(
                e.code,
                format!("opening file inode {}: {}", self.ino.0, e.message),
            )
        })?;
        check_unit(self.ino.0, &self.layout, c.as_ref())?;
        let _ = self.codec.set(c);
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        let (len, gen_, reported, attempted, written, unreported) = {
            let mut s = lock(&self.state);
            if s.closed {
                return Ok(());
            }
            s.closed = true;
            (
                s.len,
                s.truncate_gen,
                s.reported,
                s.attempted,
                s.written,
                s.writes > s.reported_writes,
            )
        };
        let held = self.client.unregister(self.ino.0, self.generation);
        let meta = &self.client.inner.meta;
        // Data may lie beyond the length only where a write failed.
        let beyond = if attempted > len.max(reported) {
            attempted
        } else {
            0
        };
        if self.how.write {
            if len > reported || unreported || beyond > 0 || written.0 > 0 {
                let length = (len > reported || unreported).then_some((len, gen_));
                meta.close_file(self.ino, length, beyond, written).await?;
            } else {
                // Nothing to report: the release waits for company.
                meta.release_later(self.ino).await;
            }
        } else if held {
            meta.close_file(self.ino, None, 0, (0, 0)).await?;
        }
        Ok(())
    }

    async fn wait_prefetches(&self, from: u64, to: u64) {
        let waits: Vec<_> = lock(&self.state)
            .prefetching
            .iter()
            .filter(|(a, b, _)| *a < to && from < *b)
            .map(|(_, _, rx)| rx.clone())
            .collect();
        for mut rx in waits {
            let _ = rx.wait_for(|done| *done).await;
        }
    }

    fn epoch(&self) -> u64 {
        self.write_epoch.load(Ordering::SeqCst)
    }

    fn key(&self, block: u64) -> BlockKey {
        // An object as a snapshot saw it never changes: its blocks are
        // cached under the snapshot's seq with the top bit set, which no
        // attribute version reaches, so they never mix with the live
        // object's (whose generation is the version at open).
        let generation = match self.snapshot {
            Some(seq) => SNAPSHOT_GENERATION | seq,
            None => self.generation,
        };
        BlockKey {
            object: self.layout.object.0,
            generation,
            block,
        }
    }

    /// Returns `[start, end)` (`start` block-aligned, `end` at most the
    /// length) from the cache and the chains; holes are zeros.
    async fn read_range(self: &Arc<Self>, start: u64, end: u64) -> Result<Bytes> {
        let opts = &self.client.inner.opts;
        let cache = &self.client.inner.cache;
        let size = lock(&self.state).len;
        let use_cache = cache_enabled(&self.client);
        // Parts found or fetched: (file offset, bytes).
        let mut parts: Vec<(u64, Bytes)> = Vec::new();
        // Pieces to fetch: the first apart, so that a read of one piece
        // (the common small read) allocates no vector for it.
        let mut first: Option<Piece> = None;
        let mut runs: Vec<Piece> = Vec::new();
        // A sealed block or a compressed unit is fetched whole (its stored
        // form is, past the end of the file too); a plain one only up to
        // the end.
        let fetch_end = if self.transformed() {
            let g = self.align();
            end.div_ceil(g).saturating_mul(g)
        } else {
            end.div_ceil(BLOCK).saturating_mul(BLOCK).min(size).max(end)
        };
        for p in self.layout.pieces(start, fetch_end - start, self.max_io()) {
            // A piece is served from the cache only when every block of it
            // is there; otherwise it is fetched whole, in one request (a
            // piece with a few evicted blocks must not turn into many
            // small requests).
            let p_end = p.file_offset + p.len;
            if let Some(b) = self.take_ahead(p.file_offset, p_end) {
                parts.push((p.file_offset, b));
                continue;
            }
            let mut hits = Vec::new();
            // Plain files only: their last block may be cached short, at
            // exactly the file's length (a sealed one is stored whole).
            let ends_whole = p_end.div_ceil(BLOCK) * BLOCK <= size;
            if use_cache && (ends_whole || !self.transformed()) {
                let mut blk = p.file_offset / BLOCK;
                while blk * BLOCK < p_end {
                    match cache.get(self.key(blk)) {
                        Some(b) if b.len() as u64 == cached_len(size, blk) => {
                            hits.push((blk * BLOCK, b));
                        }
                        _ => break,
                    }
                    blk += 1;
                }
                if blk * BLOCK < p_end {
                    hits.clear();
                }
            }
            if hits.is_empty() {
                if first.is_none() {
                    first = Some(p);
                } else {
                    runs.push(p);
                }
            } else {
                parts.extend(hits);
            }
        }
        let epoch = self.epoch();
        let want = usize::try_from(end - start).map_err(|_| too_big(end))?;
        if let (Some(r), [], []) = (&first, runs.as_slice(), parts.as_slice()) {
            // One piece, nothing cached (a small random read): fetched
            // directly, without the ordered stream's queue and tasks.
            let data = self.fetch(r).await?;
            if use_cache {
                self.cache_later(std::iter::once((*r, data.clone())), epoch, size);
            }
            if r.file_offset == start && data.len() >= want {
                return Ok(data.slice(..want));
            }
            parts.push((r.file_offset, data));
        } else {
            let fetched: Vec<(Piece, Bytes)> = futures::stream::iter(first.into_iter().chain(runs))
                .map(|r| async move { self.fetch(&r).await.map(|b| (r, b)) })
                .buffered(opts.window)
                .try_collect()
                .await?;
            parts.extend(
                fetched
                    .iter()
                    .map(|(r, data)| (r.file_offset, data.clone())),
            );
            if use_cache {
                self.cache_later(fetched, epoch, size);
            }
        }
        if let [(off, b)] = parts.as_slice()
            && *off == start
            && b.len() >= want
        {
            return Ok(b.slice(..want));
        }
        // Pieces are disjoint; a short one (a hole, the chunk's end)
        // leaves a gap that reads as zeros.
        parts.sort_unstable_by_key(|(off, _)| *off);
        let mut buf = BytesMut::with_capacity(want);
        for (off, b) in parts {
            let at = usize::try_from(off - start).map_err(|_| too_big(off))?;
            if at >= want || at < buf.len() {
                continue;
            }
            buf.resize(at, 0);
            let n = b.len().min(want - at);
            buf.extend_from_slice(&b[..n]);
        }
        buf.resize(want, 0);
        Ok(buf.freeze())
    }

    /// [`Self::cache_fetched`] once the reader has its bytes: a task of its
    /// own, which a runtime worker runs after the read's task (tokio runs a
    /// task spawned by a worker next on that worker), so the copies into
    /// the cache, and the page faults of a memory tier still filling up,
    /// stay off the read's latency (a third of a mount's CPU for cold
    /// 128 KiB files while its cache filled). A read of the same blocks in
    /// between fetches them again.
    /// One task per read, whatever its pieces.
    fn cache_later<I>(self: &Arc<Self>, fetched: I, epoch: u64, size: u64)
    where
        I: IntoIterator<Item = (Piece, Bytes)> + Send + 'static,
    {
        let f = self.clone();
        let fill = move || {
            for (r, data) in fetched {
                f.cache_fetched(&r, &data, epoch, size);
            }
        };
        if self.fill_inline.load(Ordering::Relaxed)
            || tokio::runtime::Handle::try_current().is_err()
        {
            return fill();
        }
        tokio::spawn(async move { fill() });
    }

    /// Puts the whole blocks of `data`, just fetched for piece `r`, into
    /// the block cache, unless this handle wrote since `epoch` (the reply
    /// may predate the write). A short reply is a hole or the chunk's end;
    /// only whole stored blocks within the file's `size` are cached.
    fn cache_fetched(&self, r: &Piece, data: &Bytes, epoch: u64, size: u64) {
        if self.epoch() != epoch {
            return;
        }
        let cache = &self.client.inner.cache;
        let mut off = 0u64;
        while off + BLOCK <= data.len() as u64 && r.file_offset + off + BLOCK <= size {
            // A copy, not a slice: a slice would keep the whole reply
            // buffer alive as long as any one block of it stays cached,
            // and the tier's size limit would mean nothing. Plaintext
            // never reaches the SSD tier.
            let key = self.key((r.file_offset + off) / BLOCK);
            let src = &data[off as usize..(off + BLOCK) as usize];
            cache.insert_copy(key, src, self.crypt.is_some());
            off += BLOCK;
        }
        // The file's last block, short: kept at exactly the file's length
        // (a read answers it only while the length is that, see
        // `read_range`), in memory only. Sealed files are stored whole.
        let at = r.file_offset + off;
        let short = cached_len(size, at / BLOCK);
        if !self.transformed() && short > 0 && short < BLOCK && off + short <= data.len() as u64 {
            let src = &data[off as usize..(off + short) as usize];
            cache.insert_copy(self.key(at / BLOCK), src, true);
        }
    }

    /// Fetches piece `p` into the read-ahead buffer (kept in file order).
    async fn prefetch(&self, p: Piece) -> Result<()> {
        // A piece the block cache holds whole (a warm-up, an earlier
        // reader) is not fetched again: the read finds it there.
        let size = lock(&self.state).len;
        let p_end = p.file_offset + p.len;
        if cache_enabled(&self.client)
            && p_end.div_ceil(BLOCK) * BLOCK <= size
            && (p.file_offset / BLOCK..p_end.div_ceil(BLOCK))
                .all(|blk| self.client.inner.cache.contains(self.key(blk)))
        {
            return Ok(());
        }
        let epoch = self.epoch();
        let b = self.fetch(&p).await?;
        if self.epoch() != epoch {
            // A write through this client overlapped: what we fetched may
            // predate it.
            return Ok(());
        }
        let mut s = lock(&self.state);
        let limit = 2 * s.readahead.max_window();
        let at = s.ahead.partition_point(|(off, _, _)| *off < p.file_offset);
        s.ahead.insert(at, (p.file_offset, p.len, b));
        s.ahead_bytes += p.len;
        while s.ahead_bytes > limit {
            match s.ahead.pop_front() {
                Some((_, len, _)) => s.ahead_bytes -= len,
                None => break,
            }
        }
        drop(s);
        self.client
            .inner
            .cache
            .count_prefetch(p.len.div_ceil(BLOCK), 0);
        Ok(())
    }

    /// Returns `[from, to)` from the read-ahead buffer if one fetched piece
    /// covers it (zero-filled past a hole), counting the prefetch hit.
    fn take_ahead(&self, from: u64, to: u64) -> Option<Bytes> {
        let s = lock(&self.state);
        let (off, _, b) = s
            .ahead
            .iter()
            .find(|(off, len, _)| *off <= from && to <= off + len)?;
        let lo = usize::try_from(from - off).ok()?;
        let hi = usize::try_from(to - off).ok()?;
        let data = if hi <= b.len() {
            b.slice(lo..hi)
        } else {
            let mut v = BytesMut::zeroed(hi - lo);
            if lo < b.len() {
                v[..b.len() - lo].copy_from_slice(&b[lo..]);
            }
            v.freeze()
        };
        drop(s);
        self.client
            .inner
            .cache
            .count_prefetch(0, (to - from).div_ceil(BLOCK));
        Some(data)
    }

    /// Drops read-ahead data the stream has passed. Pieces up to two
    /// requests behind `offset` stay: concurrent reads of one stream
    /// complete out of order, and an earlier one may not have taken its
    /// piece yet.
    fn drop_ahead_before(&self, offset: u64) {
        let offset = offset.saturating_sub(2 * self.client.inner.opts.max_io);
        let mut s = lock(&self.state);
        while let Some(&(off, len, _)) = s.ahead.front() {
            if off + len > offset {
                break;
            }
            s.ahead.pop_front();
            s.ahead_bytes -= len;
        }
    }

    /// The largest read, in whole blocks (units) for sealed (compressed)
    /// files.
    fn max_io(&self) -> u64 {
        let m = self.client.inner.opts.max_io;
        if self.transformed() {
            let g = self.align();
            (m - m % g).max(g)
        } else {
            m
        }
    }

    /// Reads piece `p` from the chains: plain bytes, decrypted and
    /// decompressed for a transformed file (whose pieces are aligned).
    async fn fetch(&self, p: &Piece) -> Result<Bytes> {
        let io = &self.client.inner.io;
        let r = match self.snapshot {
            Some(seq) => io.read_snapshot(p, seq).await?,
            None if !self.transformed() => return io.read(p).await,
            None => io.read_sealed(p).await?,
        };
        if !self.transformed() {
            return Ok(r.data);
        }
        let t = self.transform();
        if r.data.len() < OPEN_ELSEWHERE {
            return t.decode_piece(p.file_offset, r.data, &r.seals);
        }
        let at = p.file_offset;
        tokio::task::spawn_blocking(move || t.decode_piece(at, r.data, &r.seals))
            .await
            .map_err(|e| CairnStatus::new(ErrorCode::Internal, format!("decoding a read: {e}")))?
    }

    async fn write_at(&self, offset: u64, data: Bytes) -> Result<()> {
        self.check_writable()?;
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| too_big(offset))?;
        if data.is_empty() {
            return Ok(());
        }
        self.ready().await?;
        if self.transformed() {
            return self.write_sealed(offset, &data).await;
        }
        let inner = &self.client.inner;
        let client_id = inner.meta.session_id().await?.0;
        let pieces: Vec<(Piece, Bytes, u64)> = self
            .layout
            .pieces(offset, data.len() as u64, inner.opts.max_write)
            .map(|p| {
                let at = (p.file_offset - offset) as usize;
                let d = data.slice(at..at + p.len as usize);
                (p, d, self.client.next_seq())
            })
            .collect();
        self.write_epoch.fetch_add(1, Ordering::SeqCst);
        {
            let mut s = lock(&self.state);
            s.attempted = s.attempted.max(end);
            s.writes += 1;
        }
        let result: Result<()> = futures::stream::iter(pieces)
            .map(|(p, d, seq)| async move {
                inner
                    .io
                    .write(&p, WriteData::plain(d), client_id, seq, self.volume)
                    .await
                    .map(|_| ())
            })
            .buffer_unordered(inner.opts.window)
            .try_collect()
            .await;
        // Cached blocks of the range are stale whether or not every piece
        // made it.
        self.write_epoch.fetch_add(1, Ordering::SeqCst);
        self.invalidate(offset, end);
        result?;
        let mut s = lock(&self.state);
        s.len = s.len.max(end);
        Ok(())
    }

    /// Reads the unit (block) at `at` from the chain's head, decoded and
    /// `align()` bytes long, with the version of the chunk it came from
    /// (0: no such chunk).
    async fn read_unit(&self, t: &Transform, at: u64) -> Result<(Bytes, u64)> {
        let g = self.align();
        let Some(p) = self.layout.pieces(at, g, g).next() else {
            return Err(too_big(at));
        };
        let r = self.client.inner.io.read_at_head(&p).await?;
        let plain = t.decode_piece(at, r.data, &r.seals)?;
        let mut unit = BytesMut::zeroed(g as usize);
        let n = plain.len().min(unit.len());
        unit[..n].copy_from_slice(&plain[..n]);
        Ok((unit.freeze(), r.version))
    }

    /// Writes `data` at `offset` of an encrypted or compressed file: whole
    /// units (blocks), each compressed and sealed again. A unit the write
    /// covers only partly is read and decoded first, and the write of its
    /// chunk is made conditional on the chunk version that read saw; when
    /// another writer got in between, the whole write is merged and sent
    /// again.
    async fn write_sealed(&self, offset: u64, data: &Bytes) -> Result<()> {
        let _one = self.sealing.lock().await;
        let end = offset + data.len() as u64;
        {
            // The stored tail of the last unit lies in the same chunk as
            // `end`: the chunks written are those of `[offset, end)`.
            let mut s = lock(&self.state);
            s.attempted = s.attempted.max(end);
            s.writes += 1;
        }
        self.merge_and_seal(offset, data).await?;
        let mut s = lock(&self.state);
        s.len = s.len.max(end);
        Ok(())
    }

    /// [`Self::write_sealed_once`] again while it loses races with other
    /// writers of the same chunks (the caller holds `sealing`).
    async fn merge_and_seal(&self, offset: u64, data: &Bytes) -> Result<()> {
        let g = self.align();
        let end = offset + data.len() as u64;
        let b1 = end
            .div_ceil(g)
            .checked_mul(g)
            .ok_or_else(|| too_big(offset))?;
        let b0 = offset - offset % g;
        let t = self.transform();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.write_sealed_once(&t, offset, data, b0, b1).await {
                Err(e) if e.code == ErrorCode::StaleSequence && attempt < SEAL_ATTEMPTS => {
                    tracing::debug!(
                        ino = self.ino.0,
                        attempt,
                        "sealed write raced another writer; merging again"
                    );
                    if attempt > SEAL_EAGER {
                        let cap_us = 500u64 << (attempt - SEAL_EAGER).min(4);
                        let pause = jitter() % cap_us;
                        tokio::time::sleep(std::time::Duration::from_micros(pause)).await;
                    }
                }
                other => return other,
            }
        }
    }

    async fn write_sealed_once(
        &self,
        t: &Transform,
        offset: u64,
        data: &Bytes,
        b0: u64,
        b1: u64,
    ) -> Result<()> {
        let g = self.align();
        let end = offset + data.len() as u64;
        let cs = self.layout.chunk_size;
        let mut buf =
            (self.client.inner.write_bufs).take(usize::try_from(b1 - b0).map_err(|_| too_big(b1))?);
        // Chunk index -> the version its partial units were read at.
        let mut expect: Vec<(u64, u64)> = Vec::new();
        let mut edges = Vec::new();
        if offset != b0 {
            edges.push(b0);
        }
        if end != b1 && (b1 - g != b0 || offset == b0) {
            edges.push(b1 - g);
        }
        // Units read and merged: their pieces are sent first, one at a
        // time, each conditional on the version its chunk had (then on the
        // version the previous one made); the others follow, in parallel.
        let mut merged = Vec::new();
        // Edges at or past the end of the file as this handle knows it are
        // read too: another client may have written there since this one
        // opened (two writers filling disjoint slices of one file), and the
        // read makes the write conditional on what it saw.
        for at in edges {
            let (unit, version) = self.read_unit(t, at).await?;
            let i = (at - b0) as usize;
            buf[i..i + g as usize].copy_from_slice(&unit);
            let chunk = at / cs;
            match expect.iter().find(|(k, _)| *k == chunk) {
                Some((_, v)) if *v != version => {
                    return Err(CairnStatus::new(
                        ErrorCode::StaleSequence,
                        "the chunk changed between two reads",
                    ));
                }
                Some(_) => {}
                None => expect.push((chunk, version)),
            }
            merged.push(at);
        }
        let at = (offset - b0) as usize;
        let (lo, hi) = if t.codec.is_none() && t.crypt.is_some() {
            // Sealed only: the blocks the write covers whole are sealed
            // straight from `data` into `buf`; only the bytes of the edge
            // blocks are copied in first.
            let bs = BLOCK as usize;
            let lo = at.next_multiple_of(bs);
            let hi = (at + data.len()) / bs * bs;
            if lo < hi { (lo, hi) } else { (at, at) }
        } else {
            (at, at)
        };
        if lo < hi {
            buf[at..lo].copy_from_slice(&data[..lo - at]);
            buf[hi..at + data.len()].copy_from_slice(&data[hi - at..]);
        } else {
            buf[at..at + data.len()].copy_from_slice(data);
        }
        let whole = Whole {
            at: lo,
            data: data.slice(lo - at..hi - at),
        };
        let (buf, seals, stored) = encode_all(t, b0, buf, whole).await?;

        let inner = &self.client.inner;
        let client_id = inner.meta.session_id().await?.0;
        let max = (inner.opts.max_write - inner.opts.max_write % g).max(g);
        let (mut first, mut rest) = (Vec::new(), Vec::new());
        for p in self.layout.pieces(b0, b1 - b0, max) {
            let lo = (p.file_offset - b0) as usize;
            let hi = lo + p.len as usize;
            let seals = if seals.is_empty() {
                Bytes::new()
            } else {
                seals.slice(lo / BLOCK as usize * SEAL_LEN..hi / BLOCK as usize * SEAL_LEN)
            };
            let w = WriteData {
                data: buf.slice(lo..hi),
                seals,
                expect_version: None,
            };
            let holds_merged = merged
                .iter()
                .any(|a| p.file_offset <= *a && *a < p.file_offset + p.len);
            let item = (p, w, self.client.next_seq());
            if holds_merged {
                first.push(item);
            } else {
                rest.push(item);
            }
        }
        self.write_epoch.fetch_add(1, Ordering::SeqCst);
        let volume = self.volume;
        let result: Result<()> = async {
            for (p, mut w, seq) in first {
                let chunk = p.file_offset / cs;
                let slot = expect.iter_mut().find(|(k, _)| *k == chunk);
                w.expect_version = slot.as_ref().map(|(_, v)| *v);
                let v = inner.io.write(&p, w, client_id, seq, self.volume).await?;
                if let Some((_, expected)) = slot {
                    *expected = v;
                }
            }
            futures::stream::iter(rest)
                .map(|(p, w, seq)| async move {
                    inner
                        .io
                        .write(&p, w, client_id, seq, volume)
                        .await
                        .map(|_| ())
                })
                .buffer_unordered(inner.opts.window)
                .try_collect()
                .await
        }
        .await;
        self.write_epoch.fetch_add(1, Ordering::SeqCst);
        self.invalidate(b0, b1);
        // Every piece was sent (or failed): the buffer is ours again,
        // unless a slice of it still travels somewhere.
        inner.write_bufs.give(buf);
        result?;
        if t.codec.is_some() {
            let mut s = lock(&self.state);
            s.written.0 += b1 - b0;
            s.written.1 += stored;
        }
        Ok(())
    }

    /// Drops cached blocks of `[from, to)` (every open generation of this
    /// inode in this client) and this handle's read-ahead data.
    fn invalidate(&self, from: u64, to: u64) {
        {
            let mut s = lock(&self.state);
            s.ahead.clear();
            s.ahead_bytes = 0;
        }
        let cache = &self.client.inner.cache;
        for g in self.client.generations(self.ino.0) {
            cache.invalidate(self.layout.object.0, g, from / BLOCK, to.div_ceil(BLOCK));
        }
    }

    /// Removes the data of `[new_len, old)` from the chains.
    async fn drop_data(&self, new_len: u64, old: u64) -> Result<()> {
        let cs = self.layout.chunk_size;
        let io = &self.client.inner.io;
        // A sealed (compressed) file is cut at a block (unit) boundary,
        // after the bytes of the block (unit) that holds the new end are
        // zeroed past it (and stored again).
        let g = self.align();
        let cut = if self.transformed() && !new_len.is_multiple_of(g) {
            let at = new_len - new_len % g;
            let zeros = Bytes::from(vec![0u8; (g - new_len % g) as usize]);
            let _one = self.sealing.lock().await;
            self.merge_and_seal(new_len, &zeros).await?;
            at + g
        } else {
            new_len
        };
        self.write_epoch.fetch_add(1, Ordering::SeqCst);
        if !cut.is_multiple_of(cs) {
            let (chunk, chain) = self.layout.chunk_at(cut);
            io.truncate(chunk, chain, cut % cs, self.volume).await?;
        }
        // Whole chunks past the end are cut to nothing, not removed: a
        // cut is a versioned mutation, so the chunk's version keeps
        // counting and a later write is version n+1, never a second
        // "version 1" that a replica which held the old one would take
        // for a retry it already has. The empty chunk costs one metadata
        // record until the file is deleted (GC removes the object).
        let whole = self.layout.chunks_between(new_len.div_ceil(cs) * cs, old);
        let volume = self.volume;
        futures::stream::iter(whole)
            .map(|i| {
                let (chunk, chain) = self.layout.chunk(i);
                async move { io.truncate(chunk, chain, 0, volume).await }
            })
            .buffer_unordered(self.client.inner.opts.window)
            .try_collect::<()>()
            .await?;
        self.write_epoch.fetch_add(1, Ordering::SeqCst);
        self.invalidate(new_len, old.max(new_len) + g);
        Ok(())
    }
}

/// The buffers encrypted and compressed writes are encoded in, reused: a
/// fresh one per write (8 MiB for a checkpoint's writes) is mapped anew
/// and faulted in page by page as it is filled; a reused one is only
/// zeroed. (One `--beside-plain` run after this change was within the
/// noise of the two before it, so no speed is claimed.) At most [`WriteBufs::KEEP`] buffers of at most
/// [`WriteBufs::MAX_BYTES`] each are kept.
#[derive(Debug, Default)]
pub(crate) struct WriteBufs(Mutex<Vec<BytesMut>>);

impl WriteBufs {
    /// Buffers kept.
    const KEEP: usize = 4;
    /// Largest buffer kept.
    const MAX_BYTES: usize = 16 << 20;

    /// A buffer of `len` zeros, reused when one is large enough.
    fn take(&self, len: usize) -> BytesMut {
        let reused = {
            let mut bufs = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            let i = bufs.iter().position(|b| b.capacity() >= len);
            i.map(|i| bufs.swap_remove(i))
        };
        match reused {
            Some(mut b) => {
                b.clear();
                b.resize(len, 0);
                b
            }
            None => BytesMut::zeroed(len),
        }
    }

    /// Keeps `buf` for a later write if nothing else holds a slice of it
    /// and there is room.
    fn give(&self, buf: Bytes) {
        let Ok(b) = buf.try_into_mut() else {
            return;
        };
        if b.capacity() > Self::MAX_BYTES {
            return;
        }
        let mut bufs = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if bufs.len() < Self::KEEP {
            bufs.push(b);
        }
    }
}

/// Blocks of a sealed-only write that `buf` does not hold yet: their plain
/// text is `data`, to be sealed into `buf` from offset `at` (whole blocks;
/// empty `data`: none).
#[derive(Clone)]
struct Whole {
    at: usize,
    data: Bytes,
}

impl Whole {
    /// No blocks: the buffer holds every byte.
    fn none() -> Whole {
        Whole {
            at: 0,
            data: Bytes::new(),
        }
    }

    /// The part of these blocks that falls in `buf[from..to]`, with its
    /// offset made relative to `from`.
    fn within(&self, from: usize, to: usize) -> Whole {
        let lo = self.at.clamp(from, to);
        let hi = (self.at + self.data.len()).clamp(from, to);
        if lo >= hi {
            return Whole::none();
        }
        Whole {
            at: lo - from,
            data: self.data.slice(lo - self.at..hi - self.at),
        }
    }
}

/// Encodes `buf` (whole units of the transform, the first one at file
/// offset `at`; with `whole`, some blocks still to be sealed in from
/// there) as it is stored: compressed per unit (packed or raw, see
/// [`crate::compress`]), then sealed per block. Returns the stored bytes,
/// the seals (one per block; empty when no block has one) and the bytes of
/// blocks that hold data (what compression left). A large buffer is cut
/// into parts encoded on the blocking pool at once (every core).
async fn encode_all(
    t: &Transform,
    at: u64,
    mut buf: BytesMut,
    whole: Whole,
) -> Result<(Bytes, Bytes, u64)> {
    let part_len =
        t.codec
            .map_or(OPEN_ELSEWHERE as u64, |c| c.unit.max(OPEN_ELSEWHERE as u64)) as usize;
    if buf.len() < 2 * part_len {
        let (seals, stored) = t.encode_part(at, &mut buf, &whole);
        return Ok((buf.freeze(), seals.into(), stored));
    }
    let mut tasks = Vec::new();
    let mut off = at;
    let mut from = 0;
    while !buf.is_empty() {
        let mut part = buf.split_to(part_len.min(buf.len()));
        let (t, here) = (t.clone(), off);
        let mine = whole.within(from, from + part.len());
        off += part.len() as u64;
        from += part.len();
        tasks.push(tokio::task::spawn_blocking(move || {
            let (seals, stored) = t.encode_part(here, &mut part, &mine);
            (part, seals, stored)
        }));
    }
    let mut out = BytesMut::new();
    let mut seals = Vec::new();
    let mut stored = 0;
    let mut any_seal = false;
    for task in tasks {
        let (part, s, n) = task
            .await
            .map_err(|e| CairnStatus::new(ErrorCode::Internal, format!("encoding a write: {e}")))?;
        // The parts are adjacent: unsplit joins them without a copy.
        let blocks = part.len() / BLOCK as usize;
        out.unsplit(part);
        if s.is_empty() {
            seals.resize(seals.len() + blocks * SEAL_LEN, 0);
        } else {
            any_seal = true;
            seals.extend_from_slice(&s);
        }
        stored += n;
    }
    if !any_seal {
        seals.clear();
    }
    Ok((out.freeze(), seals.into(), stored))
}

impl Transform {
    /// Encodes `part` (whole units, the first at file offset `at`) in
    /// place, sealing the blocks of `whole` in from its data; returns the
    /// seals (empty when no block has one) and the bytes of blocks that
    /// hold data.
    fn encode_part(&self, at: u64, part: &mut [u8], whole: &Whole) -> (Vec<u8>, u64) {
        let first = at / BLOCK;
        let bs = BLOCK as usize;
        let Some(codec) = self.codec else {
            // Sealed only: every block.
            let mut seals = Vec::with_capacity(part.len() / bs * SEAL_LEN);
            if let Some(c) = &self.crypt {
                let mut nonces = Nonces::new(part.len().div_ceil(bs));
                let (lo, hi) = (whole.at, whole.at + whole.data.len());
                for (i, block) in part.chunks_mut(bs).enumerate() {
                    let place = (c.object, first + i as u64);
                    let b = i * bs;
                    let seal = if lo <= b && b + bs <= hi {
                        let input = &whole.data[b - lo..b - lo + bs];
                        c.key.seal_into(&mut nonces, place, input, block)
                    } else {
                        c.key.seal_with(&mut nonces, place.0, place.1, block, None)
                    };
                    seals.extend_from_slice(&seal);
                }
            }
            return (seals, part.len() as u64);
        };
        let u = codec.unit as usize;
        let mut seals = vec![0u8; part.len() / bs * SEAL_LEN];
        let mut any_seal = false;
        let mut stored = 0u64;
        let mut scratch = Vec::new();
        let mut nonces = Nonces::new(part.len().div_ceil(bs));
        for (k, unit) in part.chunks_mut(u).enumerate() {
            let b0 = k * u / bs;
            let (n, packed) = match codec.pack_into(unit, &mut scratch) {
                Packing::Zero => (0, false),
                Packing::Raw => (u, false),
                Packing::Packed(p) => {
                    unit[..p].copy_from_slice(&scratch[..p]);
                    unit[p..].fill(0);
                    (p, true)
                }
            };
            stored += n as u64;
            match &self.crypt {
                Some(c) => {
                    // Blocks past `n` are zeros without a seal: holes.
                    for (i, block) in unit[..n].chunks_mut(bs).enumerate() {
                        let at = first + (b0 + i) as u64;
                        let seal = c
                            .key
                            .seal_with(&mut nonces, c.object, at, block, Some(packed));
                        let j = (b0 + i) * SEAL_LEN;
                        seals[j..j + SEAL_LEN].copy_from_slice(&seal);
                        any_seal = true;
                    }
                }
                None if packed => {
                    let j = b0 * SEAL_LEN;
                    seals[j..j + SEAL_LEN].copy_from_slice(&PACKED_MARK);
                    any_seal = true;
                }
                None => {}
            }
        }
        if !any_seal {
            seals.clear();
        }
        (seals, stored)
    }

    /// Whether the unit at `at` whose `blocks` stored blocks start at
    /// block `first` of the reply is packed, from the seals: a packed
    /// unit's first block carries the mark and any other blocks of it
    /// come after (sealed, on an encrypted volume) and before its tail of
    /// holes; a raw unit is sealed whole with the mark clear (encrypted)
    /// or not at all (plain); a unit of zeros has no seal. Any other
    /// shape was not written by a client (a block replaced, dropped or
    /// reported as a hole) and is an error, never data.
    fn unit_form(&self, at: u64, seals: &Bytes, first: usize, blocks: usize) -> Result<bool> {
        let seal = |i: usize| {
            seals
                .get((first + i) * SEAL_LEN..(first + i + 1) * SEAL_LEN)
                .and_then(|s| <&Seal>::try_from(s).ok())
                .filter(|s| !is_no_seal(s))
        };
        let bad = || {
            CairnStatus::new(
                ErrorCode::Checksum,
                format!(
                    "file inode {}, the unit at {at}: its blocks are not those of a stored                      unit (a block was replaced or lost)",
                    self.ino
                ),
            )
        };
        let head = seal(0);
        let packed = head.is_some_and(is_packed);
        if self.crypt.is_none() {
            // Plain: only a packed unit's first block has a seal.
            if (head.is_some() && !packed) || (1..blocks).any(|i| seal(i).is_some()) {
                return Err(bad());
            }
            return Ok(packed);
        }
        let mut tail = false;
        for i in 1..blocks {
            let ok = match (head.map(is_packed), seal(i).map(is_packed)) {
                (Some(true), Some(true)) => !tail,
                (Some(true), None) => {
                    tail = true;
                    true
                }
                (Some(false), Some(false)) | (None, None) => true,
                _ => false,
            };
            if !ok {
                return Err(bad());
            }
        }
        Ok(packed)
    }

    /// Decodes what a piece at `file_offset` (aligned) returned: `data`
    /// with one seal per 4 KiB block in `seals` (empty: none). Decrypts
    /// (see [`Crypt::open_piece`]), then unpacks each unit a packed mark
    /// says is packed. Units past the end of `data` are left out (the
    /// caller reads them as zeros).
    fn decode_piece(&self, file_offset: u64, data: Bytes, seals: &Bytes) -> Result<Bytes> {
        let data = match &self.crypt {
            Some(c) => c.open_piece(file_offset, data, seals)?,
            None => data,
        };
        let Some(codec) = self.codec else {
            return Ok(data);
        };
        let u = codec.unit as usize;
        let bs = BLOCK as usize;
        let units = data.len().div_ceil(u);
        let mut packed = Vec::with_capacity(units);
        for k in 0..units {
            let blocks = (data.len().min((k + 1) * u) - k * u).div_ceil(bs);
            packed.push(self.unit_form(file_offset + (k * u) as u64, seals, k * u / bs, blocks)?);
        }
        if !packed.contains(&true) {
            // Raw units only: the bytes are the file's.
            return Ok(data);
        }
        let mut out = BytesMut::zeroed(units * u);
        for k in 0..units {
            let stored = &data[k * u..((k + 1) * u).min(data.len())];
            let dst = &mut out[k * u..(k + 1) * u];
            if packed[k] {
                codec.decode_into(stored, dst).map_err(|e| {
                    CairnStatus::new(
                        e.code,
                        format!(
                            "file inode {}, the unit at {}: {}",
                            self.ino,
                            file_offset + (k * u) as u64,
                            e.message
                        ),
                    )
                })?;
            } else {
                dst[..stored.len()].copy_from_slice(stored);
            }
        }
        Ok(out.freeze())
    }
}

/// A number that differs between calls and processes (retry jitter; not
/// for secrets).
fn jitter() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Refuses a compression unit that does not divide the file's chunks
/// (meta never hands one out: units would straddle chunks).
fn check_unit(ino: u64, layout: &FileLayout, codec: Option<&Codec>) -> Result<()> {
    match codec {
        Some(c) if !layout.chunk_size.is_multiple_of(c.unit) => Err(CairnStatus::new(
            ErrorCode::Internal,
            format!(
                "file inode {ino} has {} B chunks, which {} B compression units do not divide",
                layout.chunk_size, c.unit
            ),
        )),
        _ => Ok(()),
    }
}

fn cache_enabled(c: &Client) -> bool {
    c.inner.opts.cache.memory_bytes > 0 || c.inner.opts.cache.dir.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_buffers_are_reused_only_when_nothing_else_holds_them() {
        let bufs = WriteBufs::default();
        let mut b = bufs.take(8192);
        assert_eq!(b.len(), 8192);
        b[0] = 7;
        let ptr = b.as_ptr();
        bufs.give(b.freeze());
        let again = bufs.take(4096);
        assert_eq!(again.as_ptr(), ptr, "the same memory again");
        assert!(again.iter().all(|x| *x == 0), "and zeroed");
        // A slice still held elsewhere keeps the buffer out of the pool.
        let frozen = again.freeze();
        let held = frozen.slice(0..10);
        bufs.give(frozen);
        assert_ne!(bufs.take(4096).as_ptr(), held.as_ptr());
        // Too large to keep.
        bufs.give(BytesMut::zeroed(WriteBufs::MAX_BYTES + 1).freeze());
        assert!(bufs.0.lock().unwrap().is_empty());
    }
    use crate::compress::Algo;
    use crate::crypto::VolumeKey;

    fn transform(encrypted: bool) -> Transform {
        Transform {
            crypt: encrypted.then(|| Crypt {
                key: Arc::new(VolumeKey::from_bytes([7; 32]).file_key(b"salt-of-the-file")),
                object: 9,
                ino: 3,
            }),
            codec: Some(Codec {
                algo: Algo::Lz4,
                unit: 16 << 10,
            }),
            ino: 3,
        }
    }

    fn text(len: usize) -> Vec<u8> {
        (0..len).map(|i| b"tensor shard epoch "[i % 19]).collect()
    }

    fn noise(len: u32) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(len);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// Encodes two units (one packed into several blocks: half noise, half
    /// text; one raw: noise) as a write would.
    fn stored(t: &Transform) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let mut plain = noise(8 << 10);
        plain.extend(text(8 << 10));
        plain.extend(noise(16 << 10));
        let mut buf = plain.clone();
        let (seals, stored) = t.encode_part(0, &mut buf, &Whole::none());
        assert!(
            stored > 16 << 10 && stored <= (16 << 10) + (12 << 10),
            "{stored}"
        );
        (plain, buf, seals)
    }

    #[test]
    fn blocks_sealed_from_the_write_decode_like_blocks_sealed_in_place() {
        let t = Transform {
            codec: None,
            ..transform(true)
        };
        // 12 blocks; the write's data covers blocks 2..9 whole, the
        // buffer holds the rest (edges, merged units).
        let plain = noise(48 << 10);
        let mut buf = plain.clone();
        buf[8 << 10..36 << 10].fill(0);
        let whole = Whole {
            at: 8 << 10,
            data: Bytes::copy_from_slice(&plain[8 << 10..36 << 10]),
        };
        // Cut as encode_all cuts a large buffer: the parts meet inside the
        // whole blocks.
        let mut seals = Vec::new();
        for (from, to) in [(0, 16 << 10), (16 << 10, 48 << 10)] {
            let (s, _) = t.encode_part(from as u64, &mut buf[from..to], &whole.within(from, to));
            seals.extend(s);
        }
        assert_ne!(&buf[8 << 10..12 << 10], &plain[8 << 10..12 << 10]);
        let back = t
            .decode_piece(0, Bytes::from(buf), &Bytes::from(seals))
            .unwrap();
        assert!(back == plain, "decoded bytes differ");
    }

    #[test]
    fn encoded_units_decode_and_damaged_forms_are_errors() {
        for encrypted in [false, true] {
            let t = transform(encrypted);
            let (plain, data, seals) = stored(&t);
            let back = t
                .decode_piece(0, Bytes::from(data.clone()), &Bytes::from(seals.clone()))
                .unwrap();
            assert!(back[..] == plain[..], "encrypted {encrypted}");

            let code = |d: Vec<u8>, s: Vec<u8>| {
                t.decode_piece(0, Bytes::from(d), &Bytes::from(s))
                    .err()
                    .map(|e| e.code)
            };
            if encrypted {
                // The packed unit's first block reported as a hole (zeros,
                // no seal): an error, never its compressed bytes as data.
                // (A plain volume trusts its chunkservers with this.)
                let mut d = data.clone();
                d[..4096].fill(0);
                let mut s = seals.clone();
                s[..SEAL_LEN].fill(0);
                assert_eq!(code(d, s), Some(ErrorCode::Checksum));
            }
            // A mark on a block that does not start a unit.
            let mut s = seals.clone();
            let (a, b) = s.split_at_mut(SEAL_LEN);
            b[5 * SEAL_LEN..6 * SEAL_LEN].copy_from_slice(a);
            assert_eq!(
                code(data.clone(), s),
                Some(ErrorCode::Checksum),
                "encrypted {encrypted}"
            );
        }
    }
}
