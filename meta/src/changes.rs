//! The change feed: namespace changes pushed to clients, and the cache
//! leases that let clients answer `open` from what they cached (DESIGN §4).
//!
//! After each mutation the leader commits, it publishes which inodes'
//! attributes changed and which directory entries were added, removed or
//! replaced ([`affected`], derived from the operation and its reply alone),
//! numbered in publication order (the feed position, `seq`). Clients hold a
//! `WatchChanges` stream to the leader and drop what they cached of those
//! (the FUSE mount also tells the kernel). Each change carries the session
//! that made it, and a client's own changes are not sent back: it updated
//! its caches when it made them.
//!
//! # Leases
//!
//! A client renews a lease on its stream every
//! [`cairn_proto::CHANGE_FEED_HEARTBEAT`]; the leader grants a renewal only
//! while its own read lease holds, and the client's lease runs for
//! [`cairn_proto::CLIENT_LEASE`] from when the client *sent* the renewal.
//! The client acknowledges every change once it dropped it from the caches
//! it answers from under the lease. The promise that makes those caches
//! safe for close-to-open:
//!
//! * **Leases cover files and names.** A client asks for a read's answer
//!   to be covered (`lease_session` in lookup and getattr); the leader
//!   registers what it read with the client's lease *before* it reads it
//!   (a lookup: the name, then the child's inode, read again), and says so
//!   in the reply (`leased`). Only covered answers are cached. A change
//!   committed before the registration is seen by the read; one published
//!   after it finds the registration. A directory's own attributes are not
//!   covered: every create in it changes them, so covering them would make
//!   each create wait for every client that looked the directory up. They
//!   stay best effort, as in the kernel's cache (dropped when the feed
//!   names them, after the acknowledgement); nothing needs them exact.
//! * **A leased listing covers every name of a directory**, present or
//!   not ([`Cover::Dir`]; `ReadDir` with `lease_session`, only of a live
//!   directory other than the root that fits one page), so the client may
//!   answer that a name it did not list does not exist. Every other
//!   client's entry made, removed or replaced there then waits for it;
//!   the mount lists only directories it made itself, which others rarely
//!   change.
//! * **No mutation is acknowledged before every other lease holder
//!   covering an inode it names acknowledged it, or its lease ran out**
//!   ([`ChangeFeed::wait_acked`]).
//!   The leader counts a lease as running until
//!   [`cairn_proto::CLIENT_LEASE_BOUND`] after it granted it, which is later
//!   than the client's own end (the client's clock started earlier, at the
//!   send, and the bound adds a tenth for clock-rate drift).
//! * **A grant never overtakes a change the waiter gave up on**: before a
//!   stream grants a renewal it forwards every change already published
//!   (a waiter only gives up after the change was published), in the same
//!   ordered stream, and a client applies a message's changes before its
//!   grant. So a client whose lease lapsed drops the change before its next
//!   lease begins.
//! * **A new leader waits its predecessors' leases out**
//!   ([`crate::lease::LeaderLease::fence`]) before acknowledging any
//!   mutation: an earlier leader granted leases only under its read lease.
//! * A stream that starts, or falls behind (the per-stream buffer
//!   overflows), sends `reset` (drop everything) with the feed position it
//!   covers; a client that loses its stream drops everything and stops
//!   answering from its caches at once.
//!
//! The cost falls on mutations only of files and names another client
//! cached under its lease: one round trip to the slowest such holder, in
//! parallel. A lease never gives anything back (past [`MAX_COVERED`] it
//! covers all), so a long-lived mount that read much of the namespace makes
//! most changes wait for it: a bounded price (its acknowledgement, or its
//! lease's end if it stops answering). A client's own
//! mutations it sees itself (the client library counts them and the mount
//! drops its lease caches after each).
//!
//! The kernel's caches (long TTLs while the stream is up) stay best effort
//! as before: invalidations reach them within a stream round trip, after
//! the acknowledgement; `open` revalidates the page cache from the
//! attributes it gets, from meta or from the lease.
//!
//! Only the leader publishes: followers refuse the stream with NOT_LEADER,
//! and the leader ends every stream when it loses leadership.
//!
//! # Unlocks
//!
//! An unlock is published too, as `unlocked` with nothing to drop:
//! clients waiting for a lock on that inode ask again at once instead of
//! at their next poll, so a holder that unlocks and locks again in a loop
//! does not starve waiters on other machines. Nothing waits for their
//! acknowledgement (no lease covers them). Not published, so found at the
//! waiters' next poll: a write lock turned read (a waiter's retry is a
//! Raft write, and announcing every read lock would wake a waiting writer
//! at each reader of a busy file), and locks freed when a session
//! expires.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use cairn_proto::CLIENT_LEASE_BOUND;
use tokio::sync::{Notify, broadcast};

use crate::fs::locks::LockKind;
use crate::fs::{Op, ROOT_INO, Reply};

/// How many changes a slow stream may fall behind before it gets a reset.
pub const FEED_BUFFER: usize = 8192;

/// What one committed mutation changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Change {
    /// The feed position (set when published).
    pub seq: u64,
    /// The session that made it (0 for meta's own operations).
    pub session: u64,
    /// Inodes whose attributes changed, or that were freed.
    pub inos: Vec<u64>,
    /// Directory entries `(parent, name)` added, removed or replaced.
    pub entries: Vec<(u64, String)>,
    /// Inodes on which a file lock was unlocked: waiters for
    /// a lock there ask again (nothing cached changed, so nothing waits
    /// for acknowledgements of these alone).
    pub unlocked: Vec<u64>,
}

/// Returns what `op`, answered by `reply`, changed in the namespace
/// (`None` for operations no client caches anything of).
pub fn affected(session: u64, op: &Op, reply: &Reply) -> Option<Change> {
    let entry_of = |parent: u64, name: &str| vec![(parent, name.to_string())];
    if let (
        Op::SetLock {
            ino,
            kind: LockKind::Unlock,
            ..
        },
        Reply::Lock(None),
    ) = (op, reply)
    {
        return Some(Change {
            seq: 0,
            session,
            inos: Vec::new(),
            entries: Vec::new(),
            unlocked: vec![*ino],
        });
    }
    let (inos, entries) = match (op, reply) {
        (
            Op::Create { parent, name, .. }
            | Op::Mkdir { parent, name, .. }
            | Op::Symlink { parent, name, .. }
            | Op::Mknod { parent, name, .. },
            Reply::Entry { attr, .. },
        ) => (vec![*parent, attr.ino], entry_of(*parent, name)),
        (
            Op::Link {
                ino,
                new_parent,
                new_name,
            },
            _,
        ) => (vec![*ino, *new_parent], entry_of(*new_parent, new_name)),
        (
            Op::Unlink { parent, name, .. } | Op::Rmdir { parent, name },
            Reply::Removed { ino, .. },
        ) => (vec![*parent, *ino], entry_of(*parent, name)),
        (
            Op::Rename {
                parent,
                name,
                new_parent,
                new_name,
                ..
            },
            Reply::Renamed { attr, replaced },
        ) => {
            let mut inos = vec![*parent, *new_parent, attr.ino];
            inos.extend(replaced.map(|(ino, _)| ino));
            let mut entries = entry_of(*parent, name);
            entries.extend(entry_of(*new_parent, new_name));
            (inos, entries)
        }
        (
            Op::SetAttr { ino, .. }
            | Op::SetXattr { ino, .. }
            | Op::RemoveXattr { ino, .. }
            | Op::ReportLength { ino, .. }
            | Op::Close { ino, .. }
            | Op::CloseCounted { ino, .. },
            _,
        ) => (vec![*ino], Vec::new()),
        (Op::CreateVolume { name, .. }, Reply::Volume(v))
        | (Op::CreateEncryptedVolume { name, .. }, Reply::EncryptedVolume { volume: v, .. })
        | (Op::CreateVolumeWith { name, .. }, Reply::VolumeWith { volume: v, .. }) => {
            (vec![ROOT_INO, v.root_ino], entry_of(ROOT_INO, name))
        }
        _ => return None,
    };
    let mut inos = inos;
    inos.sort_unstable();
    inos.dedup();
    Some(Change {
        seq: 0,
        session,
        inos,
        entries,
        unlocked: Vec::new(),
    })
}

/// The leader's feed of committed changes and its lease holders.
#[derive(Debug, Clone)]
pub struct ChangeFeed {
    inner: Arc<FeedInner>,
}

#[derive(Debug)]
struct FeedInner {
    tx: broadcast::Sender<Arc<Change>>,
    /// The last position handed out; held while sending, so that the
    /// broadcast order is the position order.
    seq: Mutex<u64>,
    holders: Mutex<Vec<Arc<Holder>>>,
    /// Woken on every acknowledgement, grant and holder leaving.
    moved: Notify,
    /// How long after a grant the leader counts a lease as running.
    lease: Duration,
}

/// One stream's lease, as the leader sees it.
#[derive(Debug)]
struct Holder {
    session: u64,
    acked: AtomicU64,
    /// Until when the client's lease may run (leader's clock); `None`
    /// before the first grant.
    until: Mutex<Option<Instant>>,
    /// The inodes the client may cache under the lease.
    covers: Mutex<Covered>,
}

/// What a lease covers: the inodes and names registered by the client's
/// leased reads, or (past [`MAX_COVERED`]) everything.
#[derive(Debug, Default)]
struct Covered {
    inos: HashSet<u64>,
    names: HashSet<(u64, String)>,
    /// Directories every name of which is covered, present or not.
    dirs: HashSet<u64>,
    all: bool,
}

/// What a leased read registers ([`ChangeFeed::cover`]).
#[derive(Debug, Clone, Copy)]
pub enum Cover<'a> {
    /// A file's attributes.
    Ino(u64),
    /// The entry `name` in directory `parent`.
    Name(u64, &'a str),
    /// Every entry of a directory, those it does not hold too: a leased
    /// listing, from which the client answers that a name does not exist.
    /// Only directories nothing adds names to unpublished (not the root,
    /// where a restore adds its volume's entry; never a snapshot's).
    Dir(u64),
}

impl Covered {
    fn add(&mut self, what: Cover<'_>) {
        if self.all {
            return;
        }
        match what {
            Cover::Ino(ino) => {
                self.inos.insert(ino);
            }
            Cover::Name(parent, name) => {
                self.names.insert((parent, name.to_string()));
            }
            Cover::Dir(dir) => {
                self.dirs.insert(dir);
            }
        }
        if self.inos.len() + self.names.len() + self.dirs.len() > MAX_COVERED {
            self.all = true;
            self.inos = HashSet::new();
            self.names = HashSet::new();
            self.dirs = HashSet::new();
        }
    }

    fn any(&self, c: &Change) -> bool {
        (self.all && !(c.inos.is_empty() && c.entries.is_empty()))
            || c.inos.iter().any(|i| self.inos.contains(i))
            || c.entries
                .iter()
                .any(|e| self.dirs.contains(&e.0) || self.names.contains(e))
    }
}

/// Inodes and names one lease covers one by one; past it, the lease
/// covers everything (the client caches at most 65,536 of each, and never
/// hands any back).
pub const MAX_COVERED: usize = 1 << 18;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for ChangeFeed {
    fn default() -> Self {
        Self::with_lease(CLIENT_LEASE_BOUND)
    }
}

/// A subscription: the changes published from now on, and this stream's
/// lease. Dropping it ends the lease (no mutation waits for it any more).
#[derive(Debug)]
pub struct Subscription {
    /// Changes published after [`Subscription::start`].
    pub rx: broadcast::Receiver<Arc<Change>>,
    /// The feed position when the subscription began: everything up to it
    /// was applied before the client's reset.
    pub start: u64,
    holder: Arc<Holder>,
    feed: Arc<FeedInner>,
}

impl Subscription {
    /// Records that the client dropped every change up to `seq`.
    pub fn ack(&self, seq: u64) {
        if self.holder.acked.fetch_max(seq, Ordering::AcqRel) < seq {
            self.feed.moved.notify_waiters();
        }
    }

    /// Records a grant made now: the client's lease may run until
    /// [`CLIENT_LEASE_BOUND`] from now.
    pub fn granted(&self) {
        *lock(&self.holder.until) = Some(Instant::now() + self.feed.lease);
        self.feed.moved.notify_waiters();
    }

    /// The last position published (what a reset sent now covers).
    pub fn position(&self) -> u64 {
        *lock(&self.feed.seq)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        lock(&self.feed.holders).retain(|h| !Arc::ptr_eq(h, &self.holder));
        self.feed.moved.notify_waiters();
    }
}

impl ChangeFeed {
    /// A feed whose leases the leader counts as running for `lease` after
    /// each grant ([`CLIENT_LEASE_BOUND`] in service).
    pub fn with_lease(lease: Duration) -> Self {
        Self {
            inner: Arc::new(FeedInner {
                tx: broadcast::channel(FEED_BUFFER).0,
                seq: Mutex::new(0),
                holders: Mutex::new(Vec::new()),
                moved: Notify::new(),
                lease,
            }),
        }
    }

    /// Returns whether any stream watches the feed.
    pub fn watched(&self) -> bool {
        self.inner.tx.receiver_count() > 0
    }

    /// Publishes what `op` changed, if anything, to every stream; returns
    /// the change with its feed position.
    pub fn publish(&self, session: u64, op: &Op, reply: &Reply) -> Option<Arc<Change>> {
        let mut c = affected(session, op, reply)?;
        let mut seq = lock(&self.inner.seq);
        *seq += 1;
        c.seq = *seq;
        let c = Arc::new(c);
        let _ = self.inner.tx.send(c.clone());
        Some(c)
    }

    /// Subscribes the stream of `session`: every change published from now
    /// on, and a lease (not yet granted).
    pub fn subscribe(&self, session: u64) -> Subscription {
        // Under the position lock: no change is published between the
        // receiver's start and the position read.
        let seq = lock(&self.inner.seq);
        let rx = self.inner.tx.subscribe();
        let holder = Arc::new(Holder {
            session,
            acked: AtomicU64::new(*seq),
            until: Mutex::new(None),
            covers: Mutex::new(Covered::default()),
        });
        lock(&self.inner.holders).push(holder.clone());
        Subscription {
            rx,
            start: *seq,
            holder,
            feed: self.inner.clone(),
        }
    }

    /// Registers `what` with the lease of `session`'s stream, before a read
    /// whose answer the client may cache under the lease; returns false
    /// when `session` has no stream here (the answer must not be cached).
    pub fn cover(&self, session: u64, what: Cover<'_>) -> bool {
        let holders = lock(&self.inner.holders);
        let mut found = false;
        for h in holders.iter().filter(|h| h.session == session) {
            lock(&h.covers).add(what);
            found = true;
        }
        found
    }

    /// Waits until every lease holder but the one that made `change`
    /// acknowledged it, or its lease ran out; holders whose lease covers
    /// none of the inodes it names are not waited for (module docs).
    pub async fn wait_acked(&self, change: &Change) {
        loop {
            let moved = self.inner.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            let Some(deadline) = self.waiting_for(change, Instant::now()) else {
                return;
            };
            tokio::select! {
                () = moved => {}
                () = tokio::time::sleep_until(deadline.into()) => {}
            }
        }
    }

    /// The earliest lease end among the holders that still owe an
    /// acknowledgement of `seq` at `now`; `None` when none does.
    fn waiting_for(&self, change: &Change, now: Instant) -> Option<Instant> {
        lock(&self.inner.holders)
            .iter()
            .filter(|h| change.session == 0 || h.session != change.session)
            .filter(|h| h.acked.load(Ordering::Acquire) < change.seq)
            .filter(|h| lock(&h.covers).any(change))
            .filter_map(|h| *lock(&h.until))
            .filter(|&until| until > now)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{Inode, Kind};

    fn inode(ino: u64) -> Inode {
        Inode {
            ino,
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            nlink: 1,
            atime: 0,
            mtime: 0,
            ctime: 0,
            crtime: 0,
            volume: 1,
            parent: 1,
            layout: None,
            truncate_gen: 0,
            version: 1,
            target: None,
            salt: Vec::new(),
            key_version: 0,
        }
    }

    #[test]
    fn creates_renames_and_removals_name_their_entries_and_inodes() {
        let create = Op::Mkdir {
            parent: 5,
            name: "d".into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        };
        let made = Reply::Entry {
            attr: inode(9),
            parent: None,
        };
        let c = affected(3, &create, &made).expect("a change");
        assert_eq!(c.session, 3);
        assert_eq!(c.inos, vec![5, 9]);
        assert_eq!(c.entries, vec![(5, "d".to_string())]);

        let rename = Op::Rename {
            parent: 5,
            name: "a".into(),
            new_parent: 6,
            new_name: "b".into(),
            noreplace: false,
            exchange: false,
        };
        let renamed = Reply::Renamed {
            attr: inode(10),
            replaced: Some((11, true)),
        };
        let c = affected(0, &rename, &renamed).expect("a change");
        assert_eq!(c.inos, vec![5, 6, 10, 11]);
        assert_eq!(c.entries, vec![(5, "a".to_string()), (6, "b".to_string())]);

        let unlink = Op::Unlink {
            parent: 5,
            name: "x".into(),
            held_open: false,
        };
        let removed = Reply::Removed {
            ino: 12,
            freed: true,
            parent: inode(5),
        };
        let c = affected(0, &unlink, &removed).expect("a change");
        assert_eq!(c.inos, vec![5, 12]);
        assert_eq!(c.entries, vec![(5, "x".to_string())]);
    }

    #[test]
    fn attribute_changes_name_the_inode_and_others_nothing() {
        let len = Op::ReportLength {
            ino: 7,
            length: 10,
            truncate_gen: 0,
        };
        let c = affected(1, &len, &Reply::Attr(inode(7))).expect("a change");
        assert_eq!((c.inos, c.entries), (vec![7], vec![]));
        let open = Op::OpenSession {
            client_name: "x".into(),
        };
        assert_eq!(affected(1, &open, &Reply::Session(4)), None);
        // A failed operation publishes nothing: its reply is not matched.
        let create = Op::Create {
            parent: 1,
            name: "f".into(),
            mode: 0,
            uid: 0,
            gid: 0,
            exclusive: true,
            open_for_write: false,
            salt: vec![],
        };
        assert_eq!(affected(1, &create, &Reply::Unit), None);
    }

    #[test]
    fn unlocks_name_the_inode_for_waiters_only() {
        let lock = |kind| Op::SetLock {
            ino: 7,
            owner: 1,
            start: 0,
            end: u64::MAX,
            kind,
            pid: 1,
        };
        let c = affected(2, &lock(LockKind::Unlock), &Reply::Lock(None)).expect("a change");
        assert_eq!(c.unlocked, vec![7]);
        assert!(c.inos.is_empty() && c.entries.is_empty(), "nothing to drop");
        // Locks taken are not announced; a refused request changed nothing.
        for kind in [LockKind::Write, LockKind::Read] {
            assert_eq!(affected(2, &lock(kind), &Reply::Lock(None)), None);
        }
        let holder = crate::fs::locks::LockHolder {
            session: 3,
            owner: 4,
            range: crate::fs::locks::LockRange {
                start: 0,
                end: 9,
                write: true,
                pid: 5,
            },
        };
        assert_eq!(
            affected(2, &lock(LockKind::Read), &Reply::Lock(Some(holder))),
            None
        );
    }

    #[test]
    fn a_new_encrypted_volume_names_its_root_and_a_rotation_nothing() {
        let volume = crate::fs::Volume {
            id: 2,
            name: "sec".into(),
            root_ino: 8,
            policy: crate::fs::VolumePolicy::default(),
            snap_seq: 0,
            used_bytes: 0,
            used_inodes: 1,
        };
        let made = Reply::EncryptedVolume {
            volume,
            keys: crate::fs::VolumeKeys::first([1; 16]),
        };
        let create = Op::CreateEncryptedVolume {
            name: "sec".into(),
            policy: crate::fs::VolumePolicy::default(),
            check: [1; 16],
        };
        let c = affected(1, &create, &made).expect("a change");
        assert_eq!(c.inos, vec![ROOT_INO, 8]);
        assert_eq!(c.entries, vec![(ROOT_INO, "sec".to_string())]);
        let rotate = Op::RotateVolumeKey {
            name: "sec".into(),
            check: [2; 16],
        };
        assert_eq!(affected(1, &rotate, &made), None);

        // A compressed one too; counting a close's bytes changes nothing
        // a client caches.
        let Reply::EncryptedVolume { volume, keys } = made else {
            unreachable!()
        };
        let made = Reply::VolumeWith {
            volume,
            keys: Some(keys),
            compression: Some(crate::fs::VolumeCompression::new(1, 65536)),
        };
        let create = Op::CreateVolumeWith {
            name: "sec".into(),
            policy: crate::fs::VolumePolicy::default(),
            check: Some([1; 16]),
            compression: 1,
            unit: 65536,
        };
        let c = affected(1, &create, &made).expect("a change");
        assert_eq!(c.inos, vec![ROOT_INO, 8]);
        assert_eq!(c.entries, vec![(ROOT_INO, "sec".to_string())]);
    }

    fn mkdir(name: &str) -> (Op, Reply) {
        let op = Op::Mkdir {
            parent: 5,
            name: name.into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        };
        let reply = Reply::Entry {
            attr: inode(9),
            parent: None,
        };
        (op, reply)
    }

    #[tokio::test]
    async fn a_mutation_waits_for_every_other_lease_holder_covering_it() {
        let feed = ChangeFeed::with_lease(Duration::from_secs(30));
        let (op, reply) = mkdir("a"); // names inodes 5 and 9
        // Nobody subscribed: nothing to wait for.
        let c = feed.publish(1, &op, &reply).expect("a change");
        assert_eq!(c.seq, 1);
        tokio::time::timeout(Duration::from_millis(100), feed.wait_acked(&c))
            .await
            .expect("no holder, no wait");
        assert!(
            !feed.cover(2, Cover::Ino(5)),
            "no stream of session 2 to cover"
        );

        let mut other = feed.subscribe(2);
        let own = feed.subscribe(1);
        assert_eq!(other.start, 1, "covers what was published before");
        assert!(feed.cover(2, Cover::Ino(5)));
        assert!(feed.cover(1, Cover::Ino(5)));
        // Not granted yet: its client answers nothing from its caches.
        let c = feed.publish(1, &op, &reply).expect("a change");
        tokio::time::timeout(Duration::from_millis(100), feed.wait_acked(&c))
            .await
            .expect("an ungranted lease is not waited for");

        other.granted();
        own.granted();
        let c = feed.publish(1, &op, &reply).expect("a change");
        assert_eq!(other.rx.recv().await.expect("queued").seq, 2);
        assert_eq!(other.rx.recv().await.expect("queued").seq, c.seq);
        let wait = feed.wait_acked(&c);
        tokio::pin!(wait);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), wait.as_mut())
                .await
                .is_err(),
            "acknowledged before the other holder dropped the change"
        );
        other.ack(c.seq - 1);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), wait.as_mut())
                .await
                .is_err(),
            "an older acknowledgement does not count"
        );
        other.ack(c.seq);
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("acknowledged");

        // A change of inodes no other lease covers waits for nobody.
        let (_, mut reply2) = mkdir("b");
        if let Reply::Entry { attr, .. } = &mut reply2 {
            attr.ino = 11;
        }
        let op2 = Op::Mkdir {
            parent: 10,
            name: "b".into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        };
        let c = feed.publish(1, &op2, &reply2).expect("a change");
        assert_eq!(c.inos, vec![10, 11]);
        tokio::time::timeout(Duration::from_millis(100), feed.wait_acked(&c))
            .await
            .expect("session 2 caches nothing of inodes 10 and 11");

        // The holder that made the change is not waited for, and one that
        // leaves is not either.
        let c = feed.publish(2, &op, &reply).expect("a change");
        let wait = feed.wait_acked(&c);
        tokio::pin!(wait);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), wait.as_mut())
                .await
                .is_err(),
            "session 1 holds a lease covering inode 5 too"
        );
        drop(own);
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("the holder left");
    }

    #[tokio::test]
    async fn a_holder_that_does_not_answer_is_waited_for_until_its_lease_ends() {
        let feed = ChangeFeed::with_lease(Duration::from_millis(300));
        let (op, reply) = mkdir("b");
        let silent = feed.subscribe(7);
        silent.granted();
        assert!(feed.cover(7, Cover::Name(5, "b")));
        let c = feed.publish(1, &op, &reply).expect("a change");
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), feed.wait_acked(&c))
            .await
            .expect("the lease ends");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250),
            "gave up after {waited:?}, before the lease could have ended"
        );
        // A later change is not waited for at all: the lease is over.
        let c = feed.publish(1, &op, &reply).expect("a change");
        tokio::time::timeout(Duration::from_millis(100), feed.wait_acked(&c))
            .await
            .expect("an ended lease is not waited for");
        assert_eq!(silent.position(), c.seq);
    }

    #[test]
    fn a_lease_covers_the_inodes_and_names_it_registered_or_all() {
        let change = |inos: &[u64], entries: &[(u64, &str)]| Change {
            seq: 1,
            session: 1,
            inos: inos.to_vec(),
            entries: entries.iter().map(|(p, n)| (*p, n.to_string())).collect(),
            unlocked: Vec::new(),
        };
        let mut c = Covered::default();
        c.add(Cover::Ino(2));
        c.add(Cover::Name(1, "a"));
        assert!(c.any(&change(&[3, 2], &[])));
        assert!(c.any(&change(&[1], &[(1, "a")])), "the name a in 1");
        assert!(
            !c.any(&change(&[1, 7], &[(1, "b")])),
            "a new name beside a covered one (a create in its directory)"
        );
        // A listed directory: every name in it, not its attributes.
        c.add(Cover::Dir(4));
        assert!(c.any(&change(&[4, 9], &[(4, "new")])), "a create in 4");
        assert!(c.any(&change(&[], &[(4, "gone")])), "a removal from 4");
        assert!(!c.any(&change(&[4], &[])), "4's own attributes");
        assert!(!c.any(&change(&[5, 9], &[(5, "new")])));
        for i in 0..MAX_COVERED as u64 {
            c.add(Cover::Ino(10 + i));
        }
        assert!(c.all);
        assert!(c.any(&change(&[u64::MAX], &[])));
        assert!(!c.any(&change(&[], &[])), "an unlock alone needs no ack");
        assert!(
            c.inos.is_empty(),
            "the sets are dropped once all are covered"
        );
    }
}
