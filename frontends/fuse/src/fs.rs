//! The `fuser::Filesystem` over a [`cairn_client::Client`].
//!
//! Each kernel request that needs the cluster runs on the mount's runtime:
//! started on the fuser thread until it first waits (its request sent),
//! then a tokio task (`fs/eager.rs`), so the fuser threads only read,
//! dispatch and send: requests run concurrently, and nothing holds a lock
//! across a call to the cluster.
//! Every request is bounded by [`FsConfig::timeout`]: with the cluster gone
//! a request fails with ETIMEDOUT (or EIO when the client library's own
//! retries gave up first) instead of hanging the mount.
//!
//! Open files: one [`File`] per inode per mount, shared by every kernel
//! handle of it, so reads through any handle see this mount's writes and
//! `getattr` reports the length they reached. It is opened read-only
//! until a handle opens it for writing, then replaced by a writable one
//! (registered with meta as open for write). The last release closes it,
//! which reports the length; `flush` (each close(2)) reports it too, so a
//! file closed on one mount reads whole on another after open
//! (close-to-open).
//!
//! Kernel caches: entries and attributes live for their TTLs. On open the
//! inode's attributes come from meta; when they differ from what the
//! kernel was told, its cached attributes are invalidated, and its page
//! cache is kept only when the inode's version is the one this mount last
//! opened (`FOPEN_KEEP_CACHE`): an unchanged dataset file stays in the page
//! cache across opens, a changed one is read afresh.
//!
//! Names that no longer resolve to the inode the kernel cached (another
//! client replaced the file by rename) answer ESTALE for inode-based calls,
//! which makes the kernel look the path up again instead of failing.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cairn_client::leased::{Leased, Named};
use cairn_client::meta_client::{
    LockRequest, Owner, RenameFlags, SetAttrChanges, SetTime, XattrMode,
};
use cairn_client::{Client, Entry, File, OpenOptions, ReadLater, ReadNow};
use cairn_proto::ids::{InodeId, VolumeId};
use cairn_proto::meta::{
    Attr, DirEntry, FileLock, FileType as Kind, LockType, RenameReply, UnlinkReply,
};
use cairn_proto::{CairnStatus, ErrorCode};
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, IoctlFlags, KernelConfig, LockOwner, Notifier, OpenFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;
use tracing::{debug, warn};

use crate::attr::{self, InoMap, errno, errno_by_ino, file_attr, raw};
use crate::writeback::{self, WriteBack};

/// Most names the mount tracks for the long TTL; past it, new names get
/// the short one (each costs ~64 bytes).
pub const MAX_TRACKED_NAMES: usize = 262_144;

/// Largest write the kernel sends in one request.
pub const MAX_WRITE: u32 = 1 << 20;

/// Behaviour of a mounted file system.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// How long the kernel may cache a name → inode mapping.
    pub entry_ttl: Duration,
    /// How long the kernel may cache an inode's attributes.
    pub attr_ttl: Duration,
    /// How long the kernel may cache entries and attributes while meta's
    /// change feed is connected ([`crate::feed`]); zero leaves the feed
    /// unused. Never shorter than the TTLs above.
    pub cached_ttl: Duration,
    /// Bound on any one request, retries included; then ETIMEDOUT.
    pub timeout: Duration,
    /// Bypass the page cache (`FOPEN_DIRECT_IO`): every read reaches
    /// Cairn, for random-read workloads that would thrash it.
    pub direct_io: bool,
    /// Gather writes and send them in the background
    /// ([`crate::writeback`]); off, every `write(2)` waits for the chain.
    pub write_back: bool,
    /// Bytes the mount's background writes may hold in memory at once.
    pub write_back_budget: usize,
}

impl Default for FsConfig {
    fn default() -> Self {
        Self {
            entry_ttl: Duration::from_secs(1),
            attr_ttl: Duration::from_secs(1),
            cached_ttl: Duration::from_secs(60),
            timeout: Duration::from_secs(60),
            direct_io: false,
            write_back: true,
            write_back_budget: 256 << 20,
        }
    }
}

type R<T> = Result<T, Errno>;

mod dirattrs;
mod eager;
mod locks;
use locks::{LockTable, Unlock};
mod snapshots;

/// The file system handed to fuser; clones share everything.
#[derive(Clone)]
pub(crate) struct CairnFs {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    client: Client,
    rt: Handle,
    cfg: FsConfig,
    map: InoMap,
    volume: VolumeId,
    pub(crate) notifier: OnceLock<Notifier>,
    /// The change feed is connected: kernel caches may live `cached_ttl`.
    /// Changed only under `names`' lock (see [`Inner::entry_ttl_for`]).
    pub(crate) feed_live: AtomicBool,
    /// Names handed to the kernel with the long TTL, to invalidate when
    /// the feed is lost (the kernel has no "forget every name").
    names: Mutex<HashSet<(u64, String)>>,
    next_fh: AtomicU64,
    /// This process took over the FUSE connection of a mount process that
    /// died ([`crate::mount::resume`]): the kernel still uses that
    /// process's file handles, which are adopted ([`Inner::handle_or_adopt`]).
    pub(crate) adopting: AtomicBool,
    handles: Mutex<HashMap<u64, Handle_>>,
    inodes: Mutex<HashMap<u64, OpenInode>>,
    dirs: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<Listing>>>>,
    seen: Mutex<HashMap<u64, Seen>>,
    /// Per-inode locks serializing open, upgrade and last close of the
    /// shared file (a close racing an open would otherwise release the
    /// new writer's registration with meta).
    inode_locks: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
    /// The file locks this mount took on meta, to release at close
    /// ([`locks`]).
    file_locks: Mutex<LockTable>,
    /// Notified after each unlock this mount sent, and when the change
    /// feed reports another client's ([`crate::feed`]): its waiters ask
    /// meta at once instead of at their next poll.
    pub(crate) unlocked: tokio::sync::Notify,
    /// Checkpoint directories that manage themselves ([`crate::checkpoints`]).
    ckpt: Arc<crate::checkpoints::Managed>,
    /// Mount-wide budget of background write bytes (units of
    /// [`writeback::BUDGET_UNIT`]).
    budget: Arc<tokio::sync::Semaphore>,
    /// Inode numbers of the snapshot namespace ([`snapshots`]).
    snaps: Mutex<snapshots::Nodes>,
    /// Directories' attributes as this mount's own changes left them
    /// ([`dirattrs`]).
    pub(crate) dir_attrs: Arc<dirattrs::DirAttrs>,
}

/// Holds an inode's lock; removes the lock from the map when it is the
/// last user.
struct InodeGuard<'a> {
    inner: &'a Inner,
    ino: u64,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for InodeGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = lock(&self.inner.inode_locks);
        // Ours and the map's: nobody else waits for it.
        if Arc::strong_count(&self.lock) == 2 {
            map.remove(&self.ino);
        }
    }
}

/// A kernel file handle.
#[derive(Debug, Clone, Copy)]
struct Handle_ {
    ino: u64,
    write: bool,
    append: bool,
}

/// What the last handle of an inode leaves to close: the mount's file of
/// it and its write-back.
type LastHandle = (Arc<File>, Option<Arc<WriteBack>>);

/// The file shared by a mount's handles of one inode.
struct OpenInode {
    file: Arc<File>,
    /// The attributes meta gave at the latest open: what `fstat` answers
    /// once another client removed the file (POSIX keeps an open file
    /// usable after its last name goes).
    attr: Attr,
    writable: bool,
    handles: usize,
    /// Write-behind of a writable file (unless turned off).
    wb: Option<Arc<WriteBack>>,
}

impl OpenInode {
    /// Takes in `a`, fresh from meta (an open's close-to-open check, a
    /// lock's grant): when the inode changed since the shared file last
    /// took it in, the file learns the new length and drops what it
    /// cached. Another handle of this mount holding the file open must
    /// not make a new open read what the file was when that one opened.
    fn take_in(&mut self, a: &Attr) {
        if a.version <= self.attr.version {
            return;
        }
        self.file.revalidate(a);
        // With nothing of ours pending, the length is the one meta has
        // (another client may have cut the file).
        if let Some(wb) = &self.wb
            && wb.is_idle()
        {
            wb.set_len(self.file.len());
        }
        self.attr = a.clone();
    }
}

/// What a handle operates on.
struct Open {
    h: Handle_,
    file: Arc<File>,
    wb: Option<Arc<WriteBack>>,
}

/// What the kernel was last told of an inode.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    size: u64,
    mtime: i64,
    /// The version whose data the page cache may hold (set on open).
    data_version: Option<u64>,
}

/// An open directory: its entries as read at offset 0 (rewinddir reads
/// them again), shared with the replies that page through them.
#[derive(Default)]
struct Listing {
    entries: Arc<Vec<DirEntry>>,
    loaded: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn name_of(name: &OsStr) -> R<String> {
    name.to_str().map(str::to_string).ok_or(Errno::EINVAL)
}

/// The name as UTF-8, or the request answered with EINVAL and the handler
/// left (Cairn names are UTF-8).
macro_rules! name_or_reply {
    ($name:expr, $reply:ident) => {
        match name_of($name) {
            Ok(n) => n,
            Err(e) => return $reply.error(e),
        }
    };
}

/// How often a waiting F_SETLKW asks at most whether the lock is free.
const LOCK_POLL: Duration = Duration::from_millis(100);

/// The lock request of a kernel getlk/setlk (`typ`: `F_RDLCK`, `F_WRLCK`
/// or `F_UNLCK`; `None` for anything else).
fn lock_request(owner: LockOwner, start: u64, end: u64, typ: i32, pid: u32) -> Option<LockRequest> {
    let kind = match typ {
        libc::F_RDLCK => LockType::Read,
        libc::F_WRLCK => LockType::Write,
        libc::F_UNLCK => LockType::Unlock,
        _ => return None,
    };
    Some(LockRequest {
        owner: owner.0,
        start,
        end,
        kind,
        pid,
    })
}

fn owner(req: &Request) -> Owner {
    Owner {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(attr::nanos(t)),
    }
}

/// The bit of a file handle number that marks a writer's handle
/// ([`Inner::new_fh`]).
const FH_WRITER: u64 = 1;

/// Permission bits of a new inode: the mode asked for, less the umask.
fn new_mode(mode: u32, umask: u32) -> u32 {
    mode & !umask & 0o7777
}

impl CairnFs {
    pub(crate) fn new(
        client: Client,
        rt: Handle,
        cfg: FsConfig,
        root: u64,
        volume: VolumeId,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                rt,
                map: InoMap::new(root),
                volume,
                notifier: OnceLock::new(),
                feed_live: AtomicBool::new(false),
                names: Mutex::new(HashSet::new()),
                dir_attrs: Arc::default(),
                next_fh: AtomicU64::new(1),
                adopting: AtomicBool::new(false),
                handles: Mutex::new(HashMap::new()),
                inodes: Mutex::new(HashMap::new()),
                dirs: Mutex::new(HashMap::new()),
                seen: Mutex::new(HashMap::new()),
                inode_locks: Mutex::new(HashMap::new()),
                file_locks: Mutex::new(LockTable::default()),
                unlocked: tokio::sync::Notify::new(),
                ckpt: Arc::default(),
                budget: Arc::new(tokio::sync::Semaphore::new(
                    (cfg.write_back_budget / writeback::BUDGET_UNIT)
                        .max(writeback::PIECE / writeback::BUDGET_UNIT),
                )),
                snaps: Mutex::default(),
                cfg,
            }),
        }
    }

    /// Runs `op`, bounded by the configured timeout, and hands its result
    /// to `reply`: on this thread until it first waits, then as a task.
    fn spawn<T, F, Fut>(&self, op: F, reply: impl FnOnce(R<T>) + Send + 'static)
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>) -> Fut + Send + 'static,
        Fut: Future<Output = R<T>> + Send + 'static,
    {
        self.spawn_within(Some(self.inner.cfg.timeout), op, reply);
    }

    /// Runs `op`, which makes the entry `name` in `parent` on meta (mkdir,
    /// symlink, mknod, link), and answers the kernel with the new inode's
    /// attributes under that name's entry TTL.
    fn spawn_entry<F, Fut>(&self, parent: u64, name: String, reply: ReplyEntry, op: F)
    where
        F: FnOnce(Arc<Inner>, String) -> Fut + Send + 'static,
        Fut: Future<Output = cairn_client::Result<Entry>> + Send + 'static,
    {
        let (me2, n2) = (self.inner.clone(), name.clone());
        self.spawn(
            move |me| async move {
                let t = me.dir_attrs.begin(parent);
                let e = op(me.clone(), name).await;
                let e = me.finish_entry(t, e).map_err(|e| errno(&e))?;
                Ok(me.attr(&e.attr))
            },
            move |r| entry(reply, me2.entry_ttl_for(parent, &n2), r),
        );
    }

    /// As [`Self::spawn`], with `limit` (`None`: none, for F_SETLKW, which
    /// waits as long as the lock is held elsewhere).
    fn spawn_within<T, F, Fut>(
        &self,
        limit: Option<Duration>,
        op: F,
        reply: impl FnOnce(R<T>) + Send + 'static,
    ) where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>) -> Fut + Send + 'static,
        Fut: Future<Output = R<T>> + Send + 'static,
    {
        let me = self.inner.clone();
        // Started here, continued on the runtime once it waits (see
        // `eager`): no worker is woken before the request is sent.
        eager::start(&self.inner.rt, async move {
            let r = match limit {
                Some(limit) => tokio::time::timeout(limit, op(me))
                    .await
                    .unwrap_or(Err(raw(libc::ETIMEDOUT))),
                None => op(me).await,
            };
            reply(r);
        });
    }
}

impl Inner {
    fn cairn(&self, ino: INodeNo) -> u64 {
        self.map.cairn(ino)
    }

    /// The kernel's number of Cairn inode `ino`.
    pub(crate) fn kernel(&self, ino: u64) -> INodeNo {
        self.map.kernel(ino)
    }

    /// The client this file system serves from.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Entries and attributes answered under meta's cache lease
    /// ([`cairn_client::leased`]): the meta client's cache, so each of this
    /// mount's own mutations drops exactly what it changed (meta does not
    /// send a client its own changes), not everything.
    pub(crate) fn lease_cache(&self) -> &Leased {
        self.client.meta().path_cache()
    }

    /// Of `only` (every one when `None`), the inodes the kernel was told of.
    pub(crate) fn known_inodes(&self, only: Option<&[u64]>) -> Vec<u64> {
        let seen = lock(&self.seen);
        match only {
            None => seen.keys().copied().collect(),
            Some(inos) => inos
                .iter()
                .copied()
                .filter(|i| seen.contains_key(i))
                .collect(),
        }
    }

    /// The TTL of the name `name` in `parent` handed to the kernel now:
    /// the long one while the feed is connected, and the name is then
    /// remembered so it can be invalidated if the feed is lost.
    pub(crate) fn entry_ttl_for(&self, parent: u64, name: &str) -> Duration {
        let short = self.cfg.entry_ttl;
        let mut names = lock(&self.names);
        if !self.feed_live.load(Ordering::Acquire) {
            return short;
        }
        let key = (parent, name.to_string());
        if names.len() >= MAX_TRACKED_NAMES && !names.contains(&key) {
            return short;
        }
        names.insert(key);
        short.max(self.cfg.cached_ttl)
    }

    /// Marks the feed connected or not. When that loses a connected feed,
    /// returns the names handed out with the long TTL (for the caller to
    /// invalidate); `None` when nothing was lost.
    pub(crate) fn set_feed_live(&self, live: bool) -> Option<Vec<(u64, String)>> {
        let mut names = lock(&self.names);
        let was = self.feed_live.swap(live, Ordering::AcqRel);
        (was && !live).then(|| names.drain().collect())
    }

    /// Forgets a name the kernel was told to drop.
    pub(crate) fn forget_name(&self, parent: u64, name: &str) {
        lock(&self.names).remove(&(parent, name.to_string()));
    }

    /// The TTL of attributes handed to the kernel now.
    fn attr_ttl(&self) -> Duration {
        self.ttl(self.cfg.attr_ttl)
    }

    fn ttl(&self, short: Duration) -> Duration {
        if self.feed_live.load(Ordering::Acquire) {
            short.max(self.cfg.cached_ttl)
        } else {
            short
        }
    }

    /// Kernel attributes for `a`, recording what the kernel now knows.
    fn attr(&self, a: &Attr) -> FileAttr {
        let size = match lock(&self.inodes).get(&a.ino) {
            Some(o) if o.writable => a
                .size
                .max(o.wb.as_ref().map_or_else(|| o.file.len(), |w| w.file_len())),
            _ => a.size,
        };
        let mut seen = lock(&self.seen);
        let s = seen.entry(a.ino).or_default();
        s.size = size;
        s.mtime = a.mtime_ns;
        file_attr(a, self.map, size)
    }

    /// [`Self::lock_inode`] when nobody holds or waits for the lock.
    fn try_lock_inode(&self, ino: u64) -> Option<InodeGuard<'_>> {
        let l = lock(&self.inode_locks).entry(ino).or_default().clone();
        let guard = l.clone().try_lock_owned().ok()?;
        Some(InodeGuard {
            inner: self,
            ino,
            lock: l,
            guard: Some(guard),
        })
    }

    async fn lock_inode(&self, ino: u64) -> InodeGuard<'_> {
        let l = lock(&self.inode_locks).entry(ino).or_default().clone();
        let guard = l.clone().lock_owned().await;
        InodeGuard {
            inner: self,
            ino,
            lock: l,
            guard: Some(guard),
        }
    }

    /// A new file handle number: a counter with [`FH_WRITER`] set for a
    /// handle open for writing, so that a process taking over the mount
    /// knows a writer's handle from a reader's by its number alone.
    fn new_fh(&self, write: bool) -> u64 {
        let n = self.next_fh.fetch_add(1, Ordering::Relaxed) << 1;
        if write { n | FH_WRITER } else { n }
    }

    /// The handles of this mount once [`Self::adopting`] is set start far
    /// above any number the process before it gave out.
    pub(crate) fn start_adopting(&self) {
        self.next_fh.store(1 << 40, Ordering::Relaxed);
        self.adopting.store(true, Ordering::Release);
    }

    /// Open handle `fh`. An unknown one is EBADF, or after a takeover
    /// ([`Self::adopting`]) a handle of the process before: EIO for a
    /// writer's (what it had not yet published may be lost with that
    /// process).
    fn handle(&self, fh: FileHandle) -> R<Open> {
        let unknown = || {
            if self.adopting.load(Ordering::Acquire) {
                warn!(
                    fh = fh.0,
                    "a file handle of the mount process before failed (EIO)"
                );
                Errno::EIO
            } else {
                Errno::EBADF
            }
        };
        let h = *lock(&self.handles).get(&fh.0).ok_or_else(unknown)?;
        let (file, wb) = lock(&self.inodes)
            .get(&h.ino)
            .map(|o| (o.file.clone(), o.wb.clone()))
            .ok_or_else(unknown)?;
        Ok(Open { h, file, wb })
    }

    /// Whether `fh` is a reader's handle of the mount process before this
    /// one (see [`Self::adopting`]), which this process does not know.
    fn adoptable(&self, fh: FileHandle) -> bool {
        self.adopting.load(Ordering::Acquire)
            && fh.0 & FH_WRITER == 0
            && !lock(&self.handles).contains_key(&fh.0)
    }

    /// [`Self::handle`], a reader's handle of the process before this one
    /// opened again on inode `ino` under the same number: a reader goes
    /// on reading across a takeover.
    async fn handle_or_adopt(&self, ino: u64, fh: FileHandle) -> R<Open> {
        if self.adoptable(fh) {
            let (fresh, _) = self.open(ino, OpenFlags(libc::O_RDONLY)).await?;
            let h = lock(&self.handles).remove(&fresh);
            let raced = match h {
                Some(h) => {
                    let mut handles = lock(&self.handles);
                    let taken = handles.contains_key(&fh.0);
                    if !taken {
                        handles.insert(fh.0, h);
                    } else {
                        handles.insert(fresh, h);
                    }
                    taken
                }
                None => false,
            };
            if raced {
                // Another request adopted it first.
                self.release(fresh).await;
            } else {
                debug!(fh = fh.0, ino, "adopted a reader's handle");
            }
        }
        self.handle(fh)
    }

    fn write_back(&self, file: &Arc<File>) -> Option<Arc<WriteBack>> {
        self.cfg
            .write_back
            .then(|| Arc::new(WriteBack::new(file.clone(), self.budget.clone())))
    }

    /// Ends a mutation that made an entry: keeps its parent's attributes
    /// ([`dirattrs`]); a failed one may still have reached meta.
    fn finish_entry(
        &self,
        t: dirattrs::Ticket,
        e: cairn_client::Result<Entry>,
    ) -> cairn_client::Result<Entry> {
        match &e {
            Ok(e) => {
                let live = self.feed_live.load(Ordering::Acquire);
                self.dir_attrs.finish(t, e.parent.as_ref(), live);
            }
            Err(_) => self.dir_attrs.finish_unknown(t),
        }
        e
    }

    /// Ends an unlink or rmdir, as [`Self::finish_entry`].
    fn finish_removal(&self, t: dirattrs::Ticket, r: &cairn_client::Result<UnlinkReply>) {
        match r {
            Ok(r) => {
                let live = self.feed_live.load(Ordering::Acquire);
                self.dir_attrs.finish(t, r.parent.as_ref(), live);
            }
            Err(_) => self.dir_attrs.finish_unknown(t),
        }
    }

    /// Ends a rename (not an exchange), as [`Self::finish_entry`]: both
    /// directories' attributes kept, the moved and the replaced inode's
    /// dropped.
    fn finish_rename(&self, t: dirattrs::Ticket, r: &cairn_client::Result<RenameReply>) {
        match r {
            Ok(RenameReply {
                attr: Some(moved),
                replaced_ino,
                parent,
                new_parent,
                ..
            }) => {
                let live = self.feed_live.load(Ordering::Acquire);
                self.dir_attrs.finish_all(
                    t,
                    &[parent.as_ref(), new_parent.as_ref()],
                    &[moved.ino, *replaced_ino],
                    live,
                );
            }
            _ => self.dir_attrs.finish_unknown(t),
        }
    }

    /// A getattr answered on the FUSE thread, as [`Self::lookup_now`]
    /// answers lookups: a directory's attributes as this mount's own
    /// changes left them while the feed is up ([`dirattrs`]; the kernel
    /// asks for them before each name it looks up in a directory it just
    /// changed), or a file's the lease covers. `None`: take
    /// [`Self::getattr`].
    fn getattr_now(&self, ino: u64) -> Option<FileAttr> {
        if snapshots::is_snapshot(ino) {
            return None;
        }
        if self.feed_live.load(Ordering::Acquire)
            && let Some(a) = self.dir_attrs.get(ino)
        {
            return Some(self.attr(&a));
        }
        let a = self
            .lease_cache()
            .attr(ino, self.client.meta().mutations())?;
        Some(self.attr(&a))
    }

    async fn getattr(&self, ino: u64) -> R<FileAttr> {
        if snapshots::is_snapshot(ino) {
            return Ok(self.attr(&self.snap_getattr(ino).await?));
        }
        if self.feed_live.load(Ordering::Acquire)
            && let Some(a) = self.dir_attrs.get(ino)
        {
            return Ok(self.attr(&a));
        }
        match self.leased_getattr(ino).await {
            Ok(a) => Ok(self.attr(&a)),
            // Freed by another client while this mount has it open: the
            // open file keeps its attributes, with no link left.
            Err(e) if e.code == ErrorCode::NotFound => {
                let open = lock(&self.inodes).get(&ino).map(|o| o.attr.clone());
                let mut a = open.ok_or_else(|| errno_by_ino(&e))?;
                a.nlink = 0;
                Ok(self.attr(&a))
            }
            Err(e) => Err(errno_by_ino(&e)),
        }
    }

    async fn lookup(&self, parent: u64, name: String) -> R<FileAttr> {
        if let Some(a) = self.snap_lookup(parent, &name).await {
            return Ok(self.attr(&a?));
        }
        let m = self.client.meta();
        let a = match self.lease_cache().named(parent, &name, m.mutations()) {
            Some(Named::Found(a)) => a,
            Some(Named::Absent) => return Err(Errno::ENOENT),
            None => {
                let t = self.lease_cache().begin(m.mutations());
                let r = m.lookup_leased(InodeId(parent), &name).await;
                if r.as_ref().is_err_and(|e| e.code == ErrorCode::NotFound) {
                    self.list_for_absent_names(parent);
                }
                let (a, leased) = r.map_err(|e| errno(&e))?;
                if leased {
                    self.lease_cache()
                        .keep(t, m.mutations(), Some((parent, &name)), &a);
                    // A file looked up on meta: perhaps one of a scan.
                    if a.kind != Kind::Directory as i32
                        && let Some(listing) = m.scan_listing(parent)
                    {
                        self.rt.spawn(listing);
                    }
                }
                a
            }
        };
        if a.kind == Kind::Regular as i32 {
            self.ckpt.looked_up(&self.client, parent, a.ino).await;
        }
        Ok(self.attr(&a))
    }

    /// A lookup answered on the FUSE thread from what the lease covers
    /// ([`cairn_client::leased`]), as [`Self::open_now`] answers opens: no
    /// task, no wake-up; a name the lease cache knows does not exist too
    /// (ENOENT, never cached by the kernel). `None`: take
    /// [`Self::lookup`].
    fn lookup_now(&self, parent: u64, name: &str) -> Option<R<FileAttr>> {
        if snapshots::is_snapshot(parent) || name == snapshots::DIR {
            return None;
        }
        let a = match self
            .lease_cache()
            .named(parent, name, self.client.meta().mutations())?
        {
            Named::Found(a) => a,
            Named::Absent => return Some(Err(Errno::ENOENT)),
        };
        if a.kind == Kind::Regular as i32 && !self.ckpt.looked_up_now(parent, a.ino) {
            return None;
        }
        Some(Ok(self.attr(&a)))
    }

    /// Meta said a name in `parent` does not exist: lists `parent` in the
    /// background under the lease when it is a directory this mount made
    /// ([`cairn_client::MetaClient::absent_listing`]), so that the next names looked up
    /// there that do not exist (a create's LOOKUP) are answered from the
    /// lease cache ([`cairn_client::leased`], "Names that do not exist").
    fn list_for_absent_names(&self, parent: u64) {
        if let Some(listing) = self.client.meta().absent_listing(parent) {
            self.rt.spawn(listing);
        }
    }

    /// The attributes of `ino`: under the cache lease from this mount's
    /// memory ([`cairn_client::leased`]), else from meta (and kept when they may be).
    async fn leased_getattr(&self, ino: u64) -> Result<Attr, CairnStatus> {
        let m = self.client.meta();
        if let Some(a) = self.lease_cache().attr(ino, m.mutations()) {
            return Ok(a);
        }
        let t = self.lease_cache().begin(m.mutations());
        let (a, leased) = m.getattr_leased(InodeId(ino)).await?;
        if leased {
            self.lease_cache().keep(t, m.mutations(), None, &a);
        }
        Ok(a)
    }

    /// The inode's writable shared file, opening (or upgrading to) one;
    /// `None` when no handle of this mount has the inode open.
    async fn writable(&self, ino: u64) -> R<Option<(Arc<File>, Option<Arc<WriteBack>>)>> {
        let _one = self.lock_inode(ino).await;
        let wb = match lock(&self.inodes).get(&ino) {
            None => return Ok(None),
            Some(o) if o.writable => Some((o.file.clone(), o.wb.clone())),
            Some(_) => None,
        };
        if let Some((f, wb)) = wb {
            if let Some(wb) = &wb {
                wb.settle().await.map_err(|e| errno(&e))?;
            }
            return Ok(Some((f, wb)));
        }
        let f = self
            .client
            .open_ino(InodeId(ino), OpenOptions::WRITE)
            .await
            .map_err(|e| errno_by_ino(&e))?;
        let f = Arc::new(f);
        let mut inodes = lock(&self.inodes);
        let Some(o) = inodes.get_mut(&ino) else {
            // Released meanwhile: the new file closes when dropped.
            return Ok(Some((f, None)));
        };
        o.wb = self.write_back(&f);
        o.file = f.clone();
        o.writable = true;
        Ok(Some((f, o.wb.clone())))
    }

    async fn truncate(&self, ino: u64, size: u64) -> R<()> {
        if let Some((f, wb)) = self.writable(ino).await? {
            f.set_len(size).await.map_err(|e| errno(&e))?;
            if let Some(wb) = wb {
                wb.set_len(size);
            }
            return Ok(());
        }
        let f = self
            .client
            .open_ino(InodeId(ino), OpenOptions::WRITE)
            .await
            .map_err(|e| errno_by_ino(&e))?;
        f.set_len(size).await.map_err(|e| errno(&e))?;
        f.close().await.map_err(|e| errno(&e))
    }

    #[allow(clippy::too_many_arguments)]
    async fn setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
    ) -> R<FileAttr> {
        if let Some(size) = size {
            self.truncate(ino, size).await?;
        }
        let changes = SetAttrChanges {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size: None,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
        };
        let m = self.client.meta();
        let a = if changes == SetAttrChanges::default() {
            m.getattr(InodeId(ino)).await
        } else {
            m.setattr(InodeId(ino), changes).await
        };
        Ok(self.attr(&a.map_err(|e| errno_by_ino(&e))?))
    }

    /// Registers a kernel handle of `attr`'s inode, sharing or replacing
    /// the mount's file for it; returns the handle and open flags.
    fn register(
        &self,
        attr: &Attr,
        fresh: Option<File>,
        write: bool,
        append: bool,
    ) -> R<(u64, FopenFlags)> {
        let ino = attr.ino;
        {
            let mut inodes = lock(&self.inodes);
            match (inodes.get_mut(&ino), fresh) {
                (Some(o), Some(f)) if !o.writable => {
                    // A writable file replaces a read-only one; a newer
                    // version replaces an older read-only one (close-to-open).
                    o.attr = attr.clone();
                    let f = Arc::new(f);
                    if write {
                        o.wb = self.write_back(&f);
                    }
                    o.file = f;
                    o.writable = write;
                    o.handles += 1;
                }
                (Some(o), _) => {
                    o.take_in(attr);
                    o.handles += 1;
                }
                (None, Some(f)) => {
                    let f = Arc::new(f);
                    let wb = if write { self.write_back(&f) } else { None };
                    inodes.insert(
                        ino,
                        OpenInode {
                            file: f,
                            attr: attr.clone(),
                            writable: write,
                            handles: 1,
                            wb,
                        },
                    );
                }
                (None, None) => return Err(Errno::EIO),
            }
        }
        let fh = self.new_fh(write);
        lock(&self.handles).insert(fh, Handle_ { ino, write, append });
        Ok((fh, self.open_flags(attr)))
    }

    /// Open flags for the kernel, and invalidation of what it cached of
    /// an inode that changed elsewhere (see the module docs).
    fn open_flags(&self, a: &Attr) -> FopenFlags {
        let (stale_attrs, keep) = {
            let mut seen = lock(&self.seen);
            let s = seen.entry(a.ino).or_default();
            let stale = s.size != a.size || s.mtime != a.mtime_ns;
            let keep = s.data_version == Some(a.version);
            s.data_version = Some(a.version);
            (stale, keep)
        };
        if stale_attrs {
            if let Some(n) = self.notifier.get() {
                // Attributes only (negative offset): the page cache is
                // dropped by opening without KEEP_CACHE.
                if let Err(e) = n.inval_inode(self.map.kernel(a.ino), -1, 0) {
                    debug!(ino = a.ino, error = %e, "attribute invalidation");
                }
            }
        }
        if self.cfg.direct_io {
            FopenFlags::FOPEN_DIRECT_IO
        } else if keep {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        }
    }

    /// An `open` for reading answered on the FUSE thread: when the lease
    /// answers it ([`cairn_client::leased`]), nobody holds the inode's lock, and the
    /// kernel's attributes of it are current (no invalidation to send from
    /// this thread). No task, no wake-up: what every epoch after the first
    /// does for each file. `None`: take [`Self::open`].
    fn open_now(&self, ino: u64, flags: OpenFlags) -> Option<R<(u64, FopenFlags)>> {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY || snapshots::is_snapshot(ino) {
            return None;
        }
        let a = self
            .lease_cache()
            .attr(ino, self.client.meta().mutations())?;
        if a.kind != Kind::Regular as i32 {
            return None;
        }
        let current = lock(&self.seen)
            .get(&ino)
            .is_some_and(|s| s.size == a.size && s.mtime == a.mtime_ns);
        if !current {
            return None;
        }
        let _one = self.try_lock_inode(ino)?;
        Some(self.opened(&a, self.open_state(ino), false, flags))
    }

    /// Whether this mount has `ino` open: writable, and the file's version.
    fn open_state(&self, ino: u64) -> Option<(bool, u64)> {
        lock(&self.inodes)
            .get(&ino)
            .map(|o| (o.writable, o.file.version()))
    }

    /// Ends an open of `a` (under the inode's lock, `existing` read under
    /// it): shares the mount's file of it or opens one, and registers the
    /// handle. `need_writer`: meta registered a new writer for it.
    fn opened(
        &self,
        a: &Attr,
        existing: Option<(bool, u64)>,
        need_writer: bool,
        flags: OpenFlags,
    ) -> R<(u64, FopenFlags)> {
        let write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        let append = flags.0 & libc::O_APPEND != 0;
        let fresh = match existing {
            Some((true, _)) => None,
            Some((false, v)) if !need_writer && v == a.version => None,
            _ => {
                let how = if need_writer {
                    OpenOptions::WRITE
                } else {
                    OpenOptions::READ
                };
                Some(
                    self.client
                        .open_attr(a.clone(), how)
                        .map_err(|e| errno(&e))?,
                )
            }
        };
        let (fh, flags) = self.register(a, fresh, write, append)?;
        if !write {
            self.ckpt
                .opened(&self.client, fh, a.ino, a.size, a.volume_id);
        }
        Ok((fh, flags))
    }

    async fn open(&self, ino: u64, flags: OpenFlags) -> R<(u64, FopenFlags)> {
        let write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        if snapshots::is_snapshot(ino) {
            let (a, f) = self.snap_open(ino, write).await?;
            let _one = self.lock_inode(ino).await;
            let fresh = match lock(&self.inodes).get(&ino) {
                Some(_) => None,
                None => Some(f),
            };
            return self.register(&a, fresh, false, false);
        }
        let m = self.client.meta();
        let _one = self.lock_inode(ino).await;
        let existing = self.open_state(ino);
        let need_writer = write && !existing.is_some_and(|(w, _)| w);
        // Close-to-open: what meta has now, or what the lease vouches for.
        let a = if need_writer {
            m.open_file(InodeId(ino), true).await
        } else {
            self.leased_getattr(ino).await
        }
        .map_err(|e| errno_by_ino(&e))?;
        if a.kind == Kind::Directory as i32 {
            return Err(Errno::EISDIR);
        }
        self.opened(&a, existing, need_writer, flags)
    }

    async fn create(
        &self,
        parent: u64,
        name: String,
        mode: u32,
        owner: Owner,
        flags: i32,
    ) -> R<(FileAttr, u64, FopenFlags)> {
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let excl = flags & libc::O_EXCL != 0;
        let t = self.dir_attrs.begin(parent);
        let e = self
            .client
            .meta()
            .create(InodeId(parent), &name, mode, owner, excl, true)
            .await;
        let e = self.finish_entry(t, e).map_err(|e| errno(&e))?;
        let a = e.attr;
        self.ckpt
            .created(&self.client, parent, &name, a.volume_id)
            .await;
        let one = self.lock_inode(a.ino).await;
        let existing = lock(&self.inodes).get(&a.ino).map(|o| o.writable);
        let fresh = match existing {
            Some(true) => None,
            _ => Some(
                self.client
                    .open_attr(a.clone(), OpenOptions::WRITE)
                    .map_err(|e| errno(&e))?,
            ),
        };
        let (fh, open_flags) = self.register(&a, fresh, write, flags & libc::O_APPEND != 0)?;
        drop(one);
        let mut a = a;
        if flags & libc::O_TRUNC != 0 && a.size > 0 {
            if let Err(e) = self.truncate(a.ino, 0).await {
                self.release(fh).await;
                return Err(e);
            }
            a.size = 0;
        }
        let fa = self.attr(&a);
        Ok((fa, fh, open_flags))
    }

    /// A read answered on the FUSE thread from the client's memory cache
    /// ([`File::try_read_now`]): a warmed dataset, a file read before.
    /// `Err`: it needs I/O, finished by [`Self::read_later`] in a task
    /// (`None`: by [`Self::read`], nothing begun).
    fn read_now(
        &self,
        fh: FileHandle,
        offset: u64,
        size: u32,
    ) -> Result<R<Bytes>, Option<(Arc<File>, ReadLater)>> {
        if self.adoptable(fh) {
            return Err(None);
        }
        let o = match self.handle(fh) {
            Ok(o) => o,
            Err(e) => return Ok(Err(e)),
        };
        if o.wb.as_ref().is_some_and(|w| !w.is_idle()) {
            return Err(None);
        }
        match o.file.try_read_now(offset, size as usize) {
            ReadNow::Done(r) => {
                let r = r.map_err(|e| errno(&e));
                if let Ok(data) = &r {
                    self.ckpt.read(fh.0, data.len());
                }
                Ok(r)
            }
            ReadNow::Later(later) => Err(Some((o.file, later))),
        }
    }

    /// Finishes a read [`Self::read_now`] began.
    async fn read_later(&self, fh: FileHandle, file: Arc<File>, later: ReadLater) -> R<Bytes> {
        let data = file.read_later(later).await.map_err(|e| errno(&e))?;
        self.ckpt.read(fh.0, data.len());
        Ok(data)
    }

    async fn read(&self, ino: u64, fh: FileHandle, offset: u64, size: u32) -> R<Bytes> {
        let o = self.handle_or_adopt(ino, fh).await?;
        if let Some(wb) = o.wb.as_ref().filter(|w| !w.is_idle()) {
            wb.settle().await.map_err(|e| errno(&e))?;
        }
        let data = o
            .file
            .read_at(offset, size as usize)
            .await
            .map_err(|e| errno(&e))?;
        self.ckpt.read(fh.0, data.len());
        Ok(data)
    }

    async fn write(&self, fh: FileHandle, offset: u64, data: Bytes) -> R<u32> {
        let o = self.handle(fh)?;
        if !o.h.write {
            return Err(Errno::EBADF);
        }
        let n = u32::try_from(data.len()).map_err(|_| Errno::EINVAL)?;
        let r = match (&o.wb, o.h.append) {
            (Some(wb), false) => wb.write(offset, &data).await,
            (wb, true) => {
                // O_APPEND: the end is known only once earlier writes landed.
                if let Some(wb) = wb {
                    wb.settle().await.map_err(|e| errno(&e))?;
                }
                o.file.append(data).await.map(|_| ())
            }
            (None, false) => o.file.write_at(offset, data).await,
        };
        r.map_err(|e| errno(&e))?;
        Ok(n)
    }

    /// Takes, changes or releases a file lock on meta (shared with every
    /// client of the cluster) through handle `fh`; `wait`: F_SETLKW.
    async fn set_lock(&self, ino: u64, fh: u64, req: LockRequest, wait: bool) -> R<()> {
        let meta = self.client.meta();
        if req.kind != LockType::Unlock {
            // Recorded first: a close racing the grant still releases it.
            // An unlock of the same owner still on its way goes first.
            loop {
                let recorded = lock(&self.file_locks).record(ino, req.owner, fh);
                match recorded {
                    Ok(()) => break,
                    Err(gate) => locks::wait(gate).await,
                }
            }
        }
        if wait {
            meta.wait_lock(InodeId(ino), req, LOCK_POLL, &self.unlocked)
                .await
                .map_err(|e| errno_by_ino(&e))?;
        } else {
            match meta.set_lock(InodeId(ino), req).await {
                // An unlock may free what a waiter here wants. (Not a read
                // lock, though it may replace the owner's write lock: a
                // waiter's retry is a Raft write, and a file many read-lock
                // would wake a waiting writer at every reader.)
                Ok(None) if req.kind == LockType::Unlock => self.unlocked.notify_waiters(),
                Ok(None) => {}
                Ok(Some(_)) => return Err(Errno::EAGAIN),
                Err(e) => return Err(errno_by_ino(&e)),
            }
        }
        if req.kind != LockType::Unlock {
            self.revalidate(ino).await?;
        }
        Ok(())
    }

    /// After a lock is granted: when the file changed elsewhere since this
    /// mount opened it (the previous holder wrote under the lock), drops
    /// what the kernel and the open file cached of it, so reads under the
    /// lock see those writes even though the file was opened before the
    /// lock was taken (PyTorch's FileStore opens, then locks).
    async fn revalidate(&self, ino: u64) -> R<()> {
        let a = self
            .client
            .meta()
            .getattr(InodeId(ino))
            .await
            .map_err(|e| errno_by_ino(&e))?;
        if let Some(o) = lock(&self.inodes).get_mut(&ino) {
            debug!(
                ino,
                version = a.version,
                size = a.size,
                had = o.attr.version,
                "lock granted"
            );
            o.take_in(&a);
        }
        let changed = {
            let mut seen = lock(&self.seen);
            let s = seen.entry(ino).or_default();
            let changed = s.data_version != Some(a.version);
            s.data_version = Some(a.version);
            changed
        };
        if changed
            && let Some(n) = self.notifier.get()
            && let Err(e) = n.inval_inode(self.map.kernel(ino), 0, 0)
        {
            debug!(ino, error = %e, "page cache invalidation after a lock");
        }
        Ok(())
    }

    /// Releases every lock `owner` holds on `ino`, if it took any here
    /// (a process's close: POSIX drops its locks at any close).
    async fn drop_locks(&self, ino: u64, owner: u64) -> R<()> {
        let taken = lock(&self.file_locks).take_owner(ino, owner);
        match taken {
            Some(u) => self.unlock_all(&u).await,
            None => Ok(()),
        }
    }

    /// Releases the locks taken on `ino` through handle `fh`, whose open
    /// file is gone (its RELEASE): flock and OFD locks belong to it.
    async fn drop_handle_locks(&self, ino: u64, fh: u64) -> R<()> {
        let taken = lock(&self.file_locks).take_handle(ino, fh);
        for u in taken {
            self.unlock_all(&u).await?;
        }
        Ok(())
    }

    /// Sends `u`: unlocks the whole inode for its owner on meta.
    async fn unlock_all(&self, u: &Unlock) -> R<()> {
        let all = LockRequest {
            owner: u.owner,
            start: 0,
            end: u64::MAX,
            kind: LockType::Unlock,
            pid: 0,
        };
        let r = self.client.meta().set_lock(InodeId(u.ino), all).await;
        self.unlocked.notify_waiters();
        r.map(|_| ()).map_err(|e| errno_by_ino(&e))
    }

    /// Whether a FLUSH of handle `fh` of `ino` by `owner` has nothing to
    /// do: a read-only handle (nothing to publish) of an owner holding no
    /// lock on the inode through this mount (nothing to drop). An unknown
    /// handle is not a no-op: [`Self::flush`] answers it EBADF.
    fn flush_is_noop(&self, ino: u64, fh: FileHandle, owner: u64) -> bool {
        let read_only = lock(&self.handles).get(&fh.0).is_some_and(|h| !h.write);
        read_only && !lock(&self.file_locks).holds(ino, owner)
    }

    /// Publishes a writer's length to meta (flush on close(2), fsync).
    async fn flush(&self, fh: FileHandle) -> R<()> {
        if self.adoptable(fh) {
            // A reader of the process before: nothing to publish.
            return Ok(());
        }
        let o = self.handle(fh)?;
        if o.h.write {
            if let Some(wb) = &o.wb {
                wb.settle().await.map_err(|e| errno(&e))?;
            }
            o.file.fsync().await.map_err(|e| errno(&e))?;
        }
        Ok(())
    }

    /// A reader's release answered on the FUSE thread: a read-only handle
    /// whose owner holds no lock here, of an inode nobody else is opening
    /// or releasing, whose file (when this was its last handle) closes
    /// without a word to meta. What every file of a dataset epoch ends
    /// with. `false`: nothing done, take [`Self::release`].
    fn release_now(&self, ino: u64, fh: u64) -> bool {
        if lock(&self.file_locks).through(ino, fh) {
            return false;
        }
        let Some(h) = lock(&self.handles).get(&fh).copied() else {
            return false;
        };
        if h.write {
            return false;
        }
        let Some(_one) = self.try_lock_inode(h.ino) else {
            return false;
        };
        let Ok(last) = self.drop_handle(h.ino, true) else {
            return false;
        };
        lock(&self.handles).remove(&fh);
        self.ckpt.released(&self.client, fh);
        // Reads still running hold the file: it closes when they finish.
        if let Some(Ok(f)) = last.map(|(f, _)| Arc::try_unwrap(f))
            && let Err(f) = f.close_now()
        {
            let ino = h.ino;
            self.rt.spawn(async move {
                if let Err(e) = f.close().await {
                    warn!(ino, error = %e, "closing a file on release failed");
                }
            });
        }
        true
    }

    /// One handle of `ino` fewer (the caller holds the inode's lock):
    /// the mount's file of it and its write-back when that was the last
    /// handle. `Err` (nothing changed) for the last handle of a writer's
    /// file when `readers_only`: its close may report to meta.
    fn drop_handle(&self, ino: u64, readers_only: bool) -> Result<Option<LastHandle>, ()> {
        let mut inodes = lock(&self.inodes);
        match inodes.get_mut(&ino) {
            Some(o) if o.handles > 1 => {
                o.handles -= 1;
                Ok(None)
            }
            Some(o) if readers_only && o.writable => Err(()),
            Some(_) => Ok(inodes.remove(&ino).map(|o| (o.file, o.wb))),
            None => Ok(None),
        }
    }

    async fn release(&self, fh: u64) {
        self.ckpt.released(&self.client, fh);
        let Some(h) = lock(&self.handles).remove(&fh) else {
            return;
        };
        let _one = self.lock_inode(h.ino).await;
        if let Ok(Some((f, wb))) = self.drop_handle(h.ino, false) {
            if let Some(wb) = wb {
                // The kernel flushed before releasing; this only catches
                // writes that raced it. Nobody is left to report to.
                if let Err(e) = wb.settle().await {
                    warn!(ino = h.ino, error = %e, "a write failed after the last flush");
                }
                drop(wb);
            }
            // Reads or writes still running hold the file; it closes in the
            // background when they finish.
            if let Ok(f) = Arc::try_unwrap(f) {
                if let Err(e) = f.close().await {
                    warn!(ino = h.ino, error = %e, "closing a file on release failed");
                }
            }
        }
    }

    async fn readdir(&self, ino: u64, fh: u64, offset: u64, plus: bool) -> R<Arc<Vec<DirEntry>>> {
        let l = {
            let mut dirs = lock(&self.dirs);
            if self.adopting.load(Ordering::Acquire) {
                // A directory handle of the process before: listed afresh.
                dirs.entry(fh).or_default().clone()
            } else {
                dirs.get(&fh).cloned().ok_or(Errno::EBADF)?
            }
        };
        let mut g = l.lock().await;
        if offset == 0 || !g.loaded {
            if snapshots::is_snapshot(ino) {
                g.entries = Arc::new(self.snap_readdir(ino).await?);
                g.loaded = true;
                return Ok(g.entries.clone());
            }
            let m = self.client.meta();
            let r = if plus {
                m.readdir_all_plus(InodeId(ino)).await
            } else {
                m.readdir_all(InodeId(ino)).await
            };
            g.entries = Arc::new(r.map_err(|e| errno_by_ino(&e))?);
            g.loaded = true;
        }
        Ok(g.entries.clone())
    }

    /// Reads `[offset, offset + len)` of `ino` through the client, which
    /// keeps what it fetched in its block cache; returns the bytes read.
    async fn warm(&self, ino: u64, offset: u64, len: u64) -> R<u64> {
        let f = self
            .client
            .open_ino(InodeId(ino), OpenOptions::READ)
            .await
            .map_err(|e| errno_by_ino(&e))?;
        // Done means cached: the job started after `cairn warmup` reads
        // from memory.
        f.fill_cache_before_returning();
        let end = offset.saturating_add(len).min(f.len());
        let mut at = offset;
        let mut warmed = 0;
        let result = async {
            while at < end {
                let n = (end - at).min(8 << 20);
                warmed += f
                    .read_at(at, n as usize)
                    .await
                    .map_err(|e| errno(&e))?
                    .len() as u64;
                at += n;
            }
            Ok(warmed)
        }
        .await;
        let _ = f.close().await;
        result
    }

    async fn rename(&self, p: u64, name: String, np: u64, new_name: String, flags: u32) -> R<()> {
        let f = RenameFlags {
            noreplace: flags & libc::RENAME_NOREPLACE != 0,
            exchange: flags & libc::RENAME_EXCHANGE != 0,
        };
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
            return Err(Errno::EINVAL);
        }
        let op = self
            .client
            .meta()
            .rename(InodeId(p), &name, InodeId(np), &new_name, f);
        if f.exchange {
            self.dir_attrs.unknown(op).await.map_err(|e| errno(&e))?;
        } else {
            let t = self.dir_attrs.begin_rename(p, np);
            let r = op.await;
            self.finish_rename(t, &r);
            r.map_err(|e| errno(&e))?;
        }
        if !f.exchange
            && let Some((keep, created)) = self
                .ckpt
                .renamed(&self.client, p, &name, np, &new_name)
                .await
        {
            // Recorded and pruned after the reply: the program's rename
            // does not wait for the retention.
            let open: HashSet<u64> = lock(&self.inodes).keys().copied().collect();
            let (ckpt, client) = (self.ckpt.clone(), self.client.clone());
            let dirs = self.dir_attrs.clone();
            self.rt.spawn(async move {
                // Pruning unlinks in the directory.
                let op = ckpt.publish(&client, np, &new_name, keep, created, |ino| {
                    open.contains(&ino)
                });
                dirs.unknown(op).await;
            });
        }
        Ok(())
    }
}

/// The mount's warm-up request (`cairn warmup`): reading the extended
/// attribute `user.cairn.warmup:OFFSET:LEN` of a file loads that range
/// into this mount's block cache (memory, overflowing into the SSD tier
/// when there is one) and answers the bytes loaded, in decimal. A read
/// (not a write) of an attribute, so anyone who may read the file may
/// warm it; nothing is stored in meta.
pub const WARMUP_XATTR: &str = "user.cairn.warmup:";

/// Bytes a warm-up request may cover (it runs within the request timeout).
pub const WARMUP_MAX: u64 = 1 << 30;

fn parse_warmup(range: &str) -> Option<(u64, u64)> {
    let (offset, len) = range.split_once(':')?;
    let (offset, len) = (offset.parse().ok()?, len.parse().ok()?);
    (len <= WARMUP_MAX).then_some((offset, len))
}

/// Extended attributes the kernel asks about on its own (capabilities on
/// every write, POSIX ACLs on permission checks). Cairn stores neither, so
/// they are answered here without a round trip to meta.
fn kernel_xattr(name: &str) -> bool {
    name == "security.capability" || name.starts_with("system.posix_acl_")
}

fn entry(reply: ReplyEntry, ttl: Duration, r: R<FileAttr>) {
    match r {
        Ok(a) => reply.entry(&ttl, &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty, r: R<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for CairnFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        if let Err(max) = config.set_max_readahead(u32::MAX) {
            let _ = config.set_max_readahead(max);
        }
        for cap in [
            InitFlags::FUSE_MAX_PAGES,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_ASYNC_DIO,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            // fcntl and flock locks go to meta, shared by every mount.
            InitFlags::FUSE_POSIX_LOCKS,
            InitFlags::FUSE_FLOCK_LOCKS,
        ] {
            if config.add_capabilities(cap).is_err() {
                debug!(?cap, "the kernel lacks a FUSE capability");
            }
        }
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let parent = self.inner.cairn(parent);
        let me2 = self.inner.clone();
        match name_of(name) {
            Ok(name) => {
                let now = {
                    let _rt = self.inner.rt.enter();
                    self.inner.lookup_now(parent, &name)
                };
                if let Some(r) = now {
                    return entry(reply, self.inner.entry_ttl_for(parent, &name), r);
                }
                let n2 = name.clone();
                self.spawn(
                    move |me| async move { me.lookup(parent, name).await },
                    move |r| entry(reply, me2.entry_ttl_for(parent, &n2), r),
                );
            }
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, _nlookup: u64) {
        // The kernel dropped the inode (and its page cache): what it was
        // told of it no longer matters. Keeps `seen` as large as the
        // kernel's inode cache, not as the namespace.
        let ino = self.inner.cairn(ino);
        lock(&self.inner.seen).remove(&ino);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let ino = self.inner.cairn(ino);
        let ttl = self.inner.attr_ttl();
        if let Some(a) = self.inner.getattr_now(ino) {
            return reply.attr(&ttl, &a);
        }
        self.spawn(
            move |me| async move { me.getattr(ino).await },
            move |r| match r {
                Ok(a) => reply.attr(&ttl, &a),
                Err(e) => reply.error(e),
            },
        );
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let ino = self.inner.cairn(ino);
        if snapshots::is_snapshot(ino) {
            return reply.error(Errno::EROFS);
        }
        let ttl = self.inner.attr_ttl();
        self.spawn(
            move |me| async move {
                let op = me.setattr(ino, mode, uid, gid, size, atime, mtime);
                me.dir_attrs.unknown(op).await
            },
            move |r| match r {
                Ok(a) => reply.attr(&ttl, &a),
                Err(e) => reply.error(e),
            },
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let ino = self.inner.cairn(ino);
        self.spawn(
            move |me| async move {
                if snapshots::is_snapshot(ino) {
                    return me.snap_readlink(ino).await;
                }
                me.client
                    .meta()
                    .readlink(InodeId(ino))
                    .await
                    .map_err(|e| errno_by_ino(&e))
            },
            move |r| match r {
                Ok(t) => reply.data(t.as_bytes()),
                Err(e) => reply.error(e),
            },
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let parent = self.inner.cairn(parent);
        if snapshots::is_snapshot(parent) {
            return reply.error(Errno::EROFS);
        }
        let owner = owner(req);
        let name = name_or_reply!(name, reply);
        self.spawn_entry(parent, name, reply, move |me, name| async move {
            me.client
                .meta()
                .mkdir(InodeId(parent), &name, new_mode(mode, umask), owner)
                .await
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let parent = self.inner.cairn(parent);
        if snapshots::is_snapshot(parent) {
            return reply.error(Errno::EROFS);
        }
        let name = name_or_reply!(name, reply);
        self.spawn(
            move |me| async move {
                let t = me.dir_attrs.begin(parent);
                let r = me.client.unlink_at(InodeId(parent), &name).await;
                me.finish_removal(t, &r);
                r.map_err(|e| errno(&e))?;
                me.ckpt.unlinked(&me.client, parent, &name);
                Ok(())
            },
            move |r| empty(reply, r),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let parent = self.inner.cairn(parent);
        if snapshots::is_snapshot(parent) {
            return reply.error(Errno::EROFS);
        }
        let name = name_or_reply!(name, reply);
        self.spawn(
            move |me| async move {
                let t = me.dir_attrs.begin(parent);
                let r = me.client.meta().rmdir(InodeId(parent), &name).await;
                me.finish_removal(t, &r);
                r.map(|_| ()).map_err(|e| errno(&e))
            },
            move |r| empty(reply, r),
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let parent = self.inner.cairn(parent);
        if snapshots::is_snapshot(parent) {
            return reply.error(Errno::EROFS);
        }
        let owner = owner(req);
        let (name, target) = match (name_of(link_name), target.to_str()) {
            (Ok(n), Some(t)) => (n, t.to_string()),
            _ => return reply.error(Errno::EINVAL),
        };
        self.spawn_entry(parent, name, reply, move |me, name| async move {
            let meta = me.client.meta();
            meta.symlink(InodeId(parent), &name, &target, owner).await
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let parent = self.inner.cairn(parent);
        if snapshots::is_snapshot(parent) {
            return reply.error(Errno::EROFS);
        }
        let owner = owner(req);
        let name = name_or_reply!(name, reply);
        let kind = match mode & libc::S_IFMT {
            // mknod(2) of a regular file (type 0 or S_IFREG): an empty file,
            // as open(O_CREAT|O_EXCL) + close would make it.
            0 | libc::S_IFREG => None,
            libc::S_IFIFO => Some(Kind::Fifo),
            libc::S_IFSOCK => Some(Kind::Socket),
            libc::S_IFCHR => Some(Kind::CharDevice),
            libc::S_IFBLK => Some(Kind::BlockDevice),
            _ => return reply.error(Errno::EINVAL),
        };
        let mode = new_mode(mode, umask);
        self.spawn_entry(parent, name, reply, move |me, name| async move {
            let meta = me.client.meta();
            match kind {
                Some(kind) => {
                    meta.mknod(InodeId(parent), &name, kind, mode, rdev, owner)
                        .await
                }
                None => {
                    meta.create(InodeId(parent), &name, mode, owner, true, false)
                        .await
                }
            }
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (p, np) = (self.inner.cairn(parent), self.inner.cairn(newparent));
        if snapshots::is_snapshot(p) || snapshots::is_snapshot(np) {
            return reply.error(Errno::EROFS);
        }
        let (name, new_name) = match (name_of(name), name_of(newname)) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return reply.error(Errno::EINVAL),
        };
        let flags = flags.bits();
        self.spawn(
            move |me| async move { me.rename(p, name, np, new_name, flags).await },
            move |r| empty(reply, r),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (ino, np) = (self.inner.cairn(ino), self.inner.cairn(newparent));
        if snapshots::is_snapshot(ino) || snapshots::is_snapshot(np) {
            return reply.error(Errno::EROFS);
        }
        let name = name_or_reply!(newname, reply);
        self.spawn_entry(np, name, reply, move |me, name| async move {
            me.client
                .meta()
                .link(InodeId(ino), InodeId(np), &name)
                .await
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let ino = self.inner.cairn(ino);
        let now = {
            let _rt = self.inner.rt.enter();
            self.inner.open_now(ino, flags)
        };
        if let Some(r) = now {
            return match r {
                Ok((fh, flags)) => reply.opened(FileHandle(fh), flags),
                Err(e) => reply.error(e),
            };
        }
        self.spawn(
            move |me| async move { me.open(ino, flags).await },
            move |r| match r {
                Ok((fh, flags)) => reply.opened(FileHandle(fh), flags),
                Err(e) => reply.error(e),
            },
        );
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let ino = self.inner.cairn(ino);
        let now = {
            let _rt = self.inner.rt.enter();
            self.inner.read_now(fh, offset, size)
        };
        let later = match now {
            Ok(Ok(b)) => return reply.data(&b),
            Ok(Err(e)) => return reply.error(e),
            Err(later) => later,
        };
        self.spawn(
            move |me| async move {
                match later {
                    Some((file, later)) => me.read_later(fh, file, later).await,
                    None => me.read(ino, fh, offset, size).await,
                }
            },
            move |r| match r {
                Ok(b) => reply.data(&b),
                Err(e) => reply.error(e),
            },
        );
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = Bytes::copy_from_slice(data);
        self.spawn(
            move |me| async move { me.write(fh, offset, data).await },
            move |r| match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e),
            },
        );
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let ino = self.inner.cairn(ino);
        if self.inner.flush_is_noop(ino, fh, lock_owner.0) {
            // A reader's close(2) (every file of a dataset epoch): nothing
            // to publish and no lock to drop, so no task and no wake-up.
            return reply.ok();
        }
        self.spawn(
            move |me| async move {
                // POSIX: closing any descriptor of a file drops the
                // process's locks on it, once what it wrote is out (the
                // next holder reads it).
                let flushed = me.flush(fh).await;
                let unlocked = me.drop_locks(ino, lock_owner.0).await;
                flushed.and(unlocked)
            },
            move |r| empty(reply, r),
        );
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let ino = self.inner.cairn(ino);
        let now = {
            let _rt = self.inner.rt.enter();
            self.inner.release_now(ino, fh.0)
        };
        if now {
            return reply.ok();
        }
        self.spawn(
            move |me| async move {
                // flock and OFD locks: the open file's last close drops
                // them. Its writes are out already: the kernel flushed
                // before this. The kernel does not wait for a release, so
                // the lock goes a moment after close(2) returns.
                if let Err(e) = me.drop_handle_locks(ino, fh.0).await {
                    warn!(ino, error = ?e, "releasing a file's locks on close failed");
                }
                me.release(fh.0).await;
                Ok(())
            },
            move |r| empty(reply, r),
        );
    }

    /// fallocate(2): mode 0 grows the file to `offset + length` (the new
    /// bytes read as zeros) and KEEP_SIZE changes nothing, both after
    /// checking that the volume has the room (quota and free space). Cairn
    /// is thin-provisioned: room is checked, not set aside, so a later write
    /// can still meet ENOSPC if others fill the cluster first. Punching
    /// holes, zeroing, collapsing and inserting ranges answer EOPNOTSUPP.
    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let ino = self.inner.cairn(ino);
        let keep_size = match mode {
            0 => false,
            libc::FALLOC_FL_KEEP_SIZE => true,
            _ => return reply.error(Errno::EOPNOTSUPP),
        };
        let Some(end) = offset.checked_add(length) else {
            return reply.error(Errno::EFBIG);
        };
        self.spawn(
            move |me| async move {
                let attr = me
                    .client
                    .meta()
                    .getattr(InodeId(ino))
                    .await
                    .map_err(|e| errno_by_ino(&e))?;
                let size = me.attr(&attr).size;
                let grow = end.saturating_sub(size);
                if grow == 0 {
                    return Ok(());
                }
                let room = me
                    .client
                    .meta()
                    .statfs(me.volume)
                    .await
                    .map_err(|e| errno(&e))?;
                if room.free_bytes < grow {
                    return Err(Errno::ENOSPC);
                }
                if keep_size {
                    return Ok(());
                }
                me.truncate(ino, end).await
            },
            move |r| empty(reply, r),
        );
    }

    /// copy_file_range(2): not offloaded yet. ENOSYS tells the kernel once
    /// per mount to copy through read and write itself (what `cp` and
    /// `shutil` then do), instead of a warning per call.
    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let ino = self.inner.cairn(ino);
        let Some(lock) = lock_request(lock_owner, start, end, typ, pid) else {
            return reply.error(Errno::EINVAL);
        };
        self.spawn(
            move |me| async move {
                me.client
                    .meta()
                    .get_lock(InodeId(ino), lock)
                    .await
                    .map_err(|e| errno_by_ino(&e))
            },
            move |r: R<Option<FileLock>>| match r {
                Ok(None) => reply.locked(start, end, libc::F_UNLCK, 0),
                Ok(Some(h)) => {
                    let typ = if h.r#type == LockType::Write as i32 {
                        libc::F_WRLCK
                    } else {
                        libc::F_RDLCK
                    };
                    reply.locked(h.start, h.end, typ, h.pid);
                }
                Err(e) => reply.error(e),
            },
        );
    }

    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let ino = self.inner.cairn(ino);
        let Some(lock) = lock_request(lock_owner, start, end, typ, pid) else {
            return reply.error(Errno::EINVAL);
        };
        let kind = lock.kind;
        let limit = if sleep && kind != LockType::Unlock {
            None
        } else {
            Some(self.inner.cfg.timeout)
        };
        self.spawn_within(
            limit,
            move |me| async move {
                if kind == LockType::Unlock {
                    // What was written under the lock goes out before the
                    // next holder can take it (as NFS does).
                    me.flush(fh).await?;
                }
                me.set_lock(ino, fh.0, lock, sleep).await
            },
            move |r| empty(reply, r),
        );
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(
            move |me| async move { me.flush(fh).await },
            move |r| empty(reply, r),
        );
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fh = self.inner.new_fh(false);
        lock(&self.inner.dirs).insert(fh, Arc::default());
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let kino = ino;
        let ino = self.inner.cairn(ino);
        let map = self.inner.map;
        self.spawn(
            move |me| async move { me.readdir(ino, fh.0, offset, false).await },
            move |r| {
                let entries = match r {
                    Ok(l) => l,
                    Err(e) => return reply.error(e),
                };
                let dots = [(kino, ".".to_string()), (kino, "..".to_string())];
                let all = dots
                    .iter()
                    .map(|(i, n)| (*i, fuser::FileType::Directory, n.as_str()))
                    .chain(
                        entries
                            .iter()
                            .map(|e| (map.kernel(e.ino), attr::kind(e.kind), e.name.as_str())),
                    );
                for (i, (ino, kind, name)) in all.enumerate().skip(offset as usize) {
                    if reply.add(ino, i as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            },
        );
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let ino = self.inner.cairn(ino);
        let me2 = self.inner.clone();
        self.spawn(
            move |me| async move {
                let l = me.readdir(ino, fh.0, offset, true).await?;
                // The directory's own attributes only for "." and "..",
                // which come first: not one meta call per page.
                let dir = if offset < 2 && snapshots::is_snapshot(ino) {
                    Some(me.snap_getattr(ino).await?)
                } else if offset < 2 {
                    let a = me.client.meta().getattr(InodeId(ino)).await;
                    Some(a.map_err(|e| errno_by_ino(&e))?)
                } else {
                    None
                };
                Ok((l, dir))
            },
            move |r| {
                let (entries, dir) = match r {
                    Ok(x) => x,
                    Err(e) => return reply.error(e),
                };
                if let Some(dir) = dir {
                    let dot = me2.attr(&dir);
                    let ttl = me2.cfg.entry_ttl.min(me2.attr_ttl());
                    for (i, name) in [(1, "."), (2, "..")] {
                        if i > offset && reply.add(dot.ino, i, name, &ttl, &dot, Generation(0)) {
                            return reply.ok();
                        }
                    }
                }
                // Entry k (0-based) has offset k + 3: after "." and "..".
                let first = usize::try_from(offset.saturating_sub(2)).unwrap_or(usize::MAX);
                for (k, e) in entries.iter().enumerate().skip(first) {
                    let Some(a) = e.attr.as_ref() else { continue };
                    let fa = me2.attr(a);
                    let ttl = me2.entry_ttl_for(ino, &e.name).min(me2.attr_ttl());
                    if reply.add(fa.ino, k as u64 + 3, &e.name, &ttl, &fa, Generation(0)) {
                        break;
                    }
                }
                reply.ok();
            },
        );
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.inner.dirs).remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Namespace changes are committed through Raft before they return.
        reply.ok();
    }

    /// No ioctl is supported: ENOTTY, what a regular file on a local file
    /// system answers. Python's `open` asks `TCGETS` (isatty) of every file
    /// it opens; fuser's default answered ENOSYS and logged a warning per
    /// open, so a data loader filled the mount's log.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        debug!(cmd, "ioctl refused: ENOTTY");
        reply.error(Errno::ENOTTY);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let volume = self.inner.volume;
        let root = self.inner.map.cairn(INodeNo(1));
        self.spawn(
            move |me| async move {
                let meta = me.client.meta();
                let mut s = meta.statfs(volume).await.map_err(|e| errno(&e))?;
                // A mount of a directory with a quota of its own (a CSI
                // volume carved out of a shared one) shows that quota, as
                // `df` in the pod should.
                if root != 1 {
                    if let Some(q) = meta.dir_quota(InodeId(root)).await.map_err(|e| errno(&e))? {
                        cairn_client::MetaClient::narrow_statfs(&mut s, &q);
                    }
                }
                Ok(s)
            },
            move |r| match r {
                Ok(s) => {
                    const B: u64 = 4096;
                    reply.statfs(
                        s.total_bytes / B,
                        s.free_bytes / B,
                        s.free_bytes / B,
                        // f_files is the total: used (meta's `files`) and free.
                        s.files.saturating_add(s.files_free),
                        s.files_free,
                        B as u32,
                        if s.name_max == 0 { 255 } else { s.name_max },
                        B as u32,
                    );
                }
                Err(e) => reply.error(e),
            },
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let ino = self.inner.cairn(ino);
        if snapshots::is_snapshot(ino) {
            return reply.error(Errno::EROFS);
        }
        let name = name_or_reply!(name, reply);
        if kernel_xattr(&name) {
            return reply.error(raw(libc::EOPNOTSUPP));
        }
        let mode = if flags & libc::XATTR_CREATE != 0 {
            XattrMode::CreateOnly
        } else if flags & libc::XATTR_REPLACE != 0 {
            XattrMode::ReplaceOnly
        } else {
            XattrMode::Upsert
        };
        let value = value.to_vec();
        self.spawn(
            move |me| async move {
                let op = me.client.meta().setxattr(InodeId(ino), &name, &value, mode);
                me.dir_attrs.unknown(op).await.map_err(|e| errno_by_ino(&e))
            },
            move |r| empty(reply, r),
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let ino = self.inner.cairn(ino);
        let name = name_or_reply!(name, reply);
        if kernel_xattr(&name) {
            return reply.error(raw(libc::ENODATA));
        }
        if let Some(range) = name.strip_prefix(WARMUP_XATTR) {
            let Some((offset, len)) = parse_warmup(range) else {
                return reply.error(raw(libc::EINVAL));
            };
            self.spawn(
                move |me| async move {
                    me.warm(ino, offset, len)
                        .await
                        .map(|n| n.to_string().into_bytes())
                },
                move |r| xattr_reply(reply, size, r),
            );
            return;
        }
        self.spawn(
            move |me| async move {
                if snapshots::is_snapshot(ino) {
                    return me.snap_xattr(ino, Some(&name)).await;
                }
                me.client
                    .meta()
                    .getxattr(InodeId(ino), &name)
                    .await
                    .map_err(|e| errno_by_ino(&e))
            },
            move |r| xattr_reply(reply, size, r),
        );
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let ino = self.inner.cairn(ino);
        self.spawn(
            move |me| async move {
                if snapshots::is_snapshot(ino) {
                    return me.snap_xattr(ino, None).await;
                }
                let names = me
                    .client
                    .meta()
                    .listxattr(InodeId(ino))
                    .await
                    .map_err(|e| errno_by_ino(&e))?;
                let mut out = Vec::new();
                for n in names {
                    out.extend_from_slice(n.as_bytes());
                    out.push(0);
                }
                Ok(out)
            },
            move |r| xattr_reply(reply, size, r),
        );
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let ino = self.inner.cairn(ino);
        if snapshots::is_snapshot(ino) {
            return reply.error(Errno::EROFS);
        }
        let name = name_or_reply!(name, reply);
        if kernel_xattr(&name) {
            return reply.error(raw(libc::ENODATA));
        }
        self.spawn(
            move |me| async move {
                let op = me.client.meta().removexattr(InodeId(ino), &name);
                me.dir_attrs.unknown(op).await.map_err(|e| errno_by_ino(&e))
            },
            move |r| empty(reply, r),
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // The mount uses default_permissions: the kernel checks mode bits.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let parent = self.inner.cairn(parent);
        if snapshots::is_snapshot(parent) {
            return reply.error(Errno::EROFS);
        }
        let owner = owner(req);
        let name = name_or_reply!(name, reply);
        let mode = new_mode(mode, umask);
        let (me2, n2) = (self.inner.clone(), name.clone());
        self.spawn(
            move |me| async move { me.create(parent, name, mode, owner, flags).await },
            move |r| match r {
                Ok((a, fh, f)) => {
                    let ttl = me2.entry_ttl_for(parent, &n2).min(me2.attr_ttl());
                    reply.created(&ttl, &a, Generation(0), FileHandle(fh), f)
                }
                Err(e) => reply.error(e),
            },
        );
    }
}

fn xattr_reply(reply: ReplyXattr, size: u32, r: R<Vec<u8>>) {
    match r {
        Ok(v) if size == 0 => reply.size(u32::try_from(v.len()).unwrap_or(u32::MAX)),
        Ok(v) if v.len() > size as usize => reply.error(raw(libc::ERANGE)),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn umask_and_type_bits_are_stripped_from_new_modes() {
        assert_eq!(new_mode(0o100_666, 0o022), 0o644);
        assert_eq!(new_mode(0o40_777, 0o027), 0o750);
        assert_eq!(new_mode(0o1777, 0), 0o1777);
    }

    #[test]
    fn kernel_only_xattrs_are_recognised() {
        assert!(kernel_xattr("security.capability"));
        assert!(kernel_xattr("system.posix_acl_access"));
        assert!(!kernel_xattr("user.cairn.checkpoint"));
        assert!(!kernel_xattr("security.selinux"));
    }
}
