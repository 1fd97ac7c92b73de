//! Entries and attributes a client answers itself under meta's cache
//! lease (DESIGN §4; the protocol is in `cairn_meta::changes`). The FUSE
//! mount keeps one for its `open` and `lookup`, and [`crate::MetaClient`]
//! one for the paths the native client resolves
//! ([`crate::meta_client::MetaClientOptions::cache_leases`]).
//!
//! Before, every `open(2)` asked meta for the file's attributes (that is
//! close-to-open), and every name the kernel had forgotten cost a LOOKUP
//! round trip: two of the three round trips of a dataset file read after
//! the page cache was dropped. While a client holds a lease, meta
//! acknowledges no other client's change before this client acknowledged
//! dropping it from here (or the lease ran out), so what is here is what
//! meta would answer, and `open` and `lookup` are answered from memory.
//!
//! What may be answered from here:
//!
//! * Only while the lease runs on this machine's clock: from the send of
//!   the renewal meta granted, for [`CLIENT_LEASE`]. Meta counts it from
//!   its grant, later, plus a margin for clock drift.
//! * Only meta's answers to reads (lookup, getattr) that meta's leader
//!   covered with the lease (it registered the names and files before
//!   reading them, so their later changes wait for this client; a
//!   directory's own attributes are not covered and stay best effort, as
//!   in the kernel's cache: the feed drops them when they change), kept
//!   when nothing
//!   moved while they were in flight: no change arrived from the feed (an
//!   epoch counts them) and no mutation of this client ended
//!   ([`crate::MetaClient::mutations`]). A change that arrives after the
//!   answer was kept drops it.
//! * Meta does not send a client its own changes: each own mutation drops
//!   what it changed ([`Leased::own_mutation`], called by the meta client
//!   for the cache it holds, [`crate::MetaClient::path_cache`], which the
//!   mount uses too), the same inodes and names the feed tells others, or
//!   everything when it does not say.
//! * An own mutation's answer is kept when the lease covers it and nothing
//!   else moved while it was in flight ([`Leased::keep_own`]): a create
//!   meta covered (the creator caches what it made as a lookup's answer),
//!   and a close or length report of a file whose attributes are here
//!   ([`Leased::begin_own`]), so a program that wrote small files opens
//!   them again without a round trip per file.
//! * A reset, or a lost or silent feed, drops everything.
//!
//! # Names that do not exist
//!
//! A create through the mount costs the kernel's LOOKUP of the new name
//! first, and that answer ("no such file") was a meta round trip each time
//! (a quarter of a create's time). A leased *listing* of a directory
//! ([`Leased::keep_listing`], meta's `ReadDir` with `lease_session`) makes
//! the directory *complete* here: meta registered every name in it with
//! the lease before it read the listing, so no other client's entry made,
//! removed or replaced in it is acknowledged before this client dropped
//! the name. A name of a complete directory that is not here does not
//! exist ([`Leased::named`], [`Leased::resolve`]). A name some change dropped (the feed's, or
//! this client's own create) is *unknown* instead of absent until an
//! answer for it is kept again, so only names never seen since the listing
//! are answered as absent. Meta lists with the lease only live directories
//! other than the root (a restore adds its volume's name there without
//! publishing it), never a snapshot's. Which directories a client lists,
//! and when: `MetaClient::absent_listing` (the mount's lookups and the
//! native client's path resolution alike).
//!
//! Bounded: past [`MAX_ATTRS`] inodes the cache starts over.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use cairn_proto::CLIENT_LEASE;
use cairn_proto::ids::InodeId;
use cairn_proto::meta::Attr;
use cairn_proto::meta::FileType;

/// Most inodes kept (and as many names); past it the cache starts over.
pub const MAX_ATTRS: usize = 1 << 16;

/// Renewals remembered while their grants are outstanding.
const MAX_SENT: usize = 16;

#[derive(Default)]
struct State {
    attrs: HashMap<u64, Attr>,
    /// Name → (inode, whether it is a directory: a kind never changes).
    entries: HashMap<(u64, String), (u64, bool)>,
    /// Directories every name of which is in `entries`, in `unknown`, or
    /// does not exist (see the module docs).
    complete: HashSet<u64>,
    /// Names of complete directories a change dropped.
    unknown: HashSet<(u64, String)>,
    /// The lease's end on this machine's clock.
    until: Option<Instant>,
    /// Counts changes applied, resets and losses.
    epoch: u64,
    /// The client's mutation count the cache holds answers for.
    mutations: u64,
    /// Renewals sent, not yet granted: (number, sent at).
    sent: VecDeque<(u64, Instant)>,
    next_renewal: u64,
    /// Answers given from here.
    hits: u64,
}

impl State {
    fn clear(&mut self) {
        self.attrs.clear();
        self.entries.clear();
        self.complete.clear();
        self.unknown.clear();
        self.epoch += 1;
    }

    /// Whether the maps are full (then the cache starts over).
    fn full(&self) -> bool {
        self.attrs.len() >= MAX_ATTRS
            || self.entries.len() >= MAX_ATTRS
            || self.unknown.len() >= MAX_ATTRS
    }

    /// Keeps `attr` and the name it was looked up by, if any, for a read
    /// of epoch `epoch`.
    fn insert(&mut self, epoch: u64, name: Option<(u64, &str)>, attr: &Attr) {
        if self.full() {
            self.clear();
            // Still this read's epoch: nothing changed, the map was full.
            self.epoch = epoch;
        }
        self.attrs.insert(attr.ino, attr.clone());
        if let Some((parent, name)) = name {
            let dir = attr.kind() == FileType::Directory;
            let key = (parent, name.to_string());
            if !self.unknown.is_empty() {
                self.unknown.remove(&key);
            }
            self.entries.insert(key, (attr.ino, dir));
        }
    }

    /// Drops the attributes of `inos` and the names `entries` (a name of a
    /// complete directory becomes unknown, not absent).
    fn forget<'a>(&mut self, inos: &[u64], entries: impl IntoIterator<Item = (u64, &'a str)>) {
        for ino in inos {
            self.attrs.remove(ino);
        }
        for (parent, name) in entries {
            let key = (parent, name.to_string());
            self.entries.remove(&key);
            if self.complete.contains(&parent) {
                self.unknown.insert(key);
            }
        }
    }

    /// Follows `names` from the root through the kept entries: the inode
    /// at the end and whether it is a directory.
    fn walk(&self, names: &[&str]) -> Option<(u64, bool)> {
        let mut at = (InodeId::ROOT.0, true);
        for name in names {
            at = *self.entries.get(&(at.0, (*name).to_string()))?;
        }
        Some(at)
    }

    /// What is known here of `name` in `parent`: its attributes, or that
    /// it does not exist (see the module docs); `files_only`: nothing of
    /// a directory.
    fn named(&self, parent: u64, name: &str, files_only: bool) -> Option<Named> {
        let key = (parent, name.to_string());
        match self.entries.get(&key) {
            Some((_, true)) if files_only => None,
            Some((ino, _)) => Some(Named::Found(self.attrs.get(ino).cloned()?)),
            None if self.complete.contains(&parent) && !self.unknown.contains(&key) => {
                Some(Named::Absent)
            }
            None => None,
        }
    }

    /// Whether answers may come from here at `now`, with the client at
    /// `mutations`; drops everything when an own mutation ended since.
    fn usable(&mut self, mutations: u64, now: Instant) -> bool {
        if mutations > self.mutations {
            self.clear();
            self.mutations = mutations;
            return false;
        }
        // A caller that read the count before an own mutation the cache
        // already counted: it may not use what is here.
        mutations == self.mutations && self.until.is_some_and(|u| now < u)
    }
}

/// What a mutation changed, as meta's change feed tells other clients
/// (`cairn_meta::changes::affected`): attributes of `inos`, and the names
/// `entries` (parent, name).
#[derive(Debug, Clone, Default)]
pub struct Changed {
    /// Inodes whose attributes changed.
    pub inos: Vec<u64>,
    /// Names added, removed or pointed elsewhere.
    pub entries: Vec<(u64, String)>,
}

impl Changed {
    /// `inos` and the names `entries`.
    pub fn new(inos: impl Into<Vec<u64>>, entries: &[(u64, &str)]) -> Changed {
        Changed {
            inos: inos.into(),
            entries: entries
                .iter()
                .map(|(p, n)| (*p, (*n).to_string()))
                .collect(),
        }
    }

    /// One inode's attributes.
    pub fn ino(ino: u64) -> Changed {
        Self::new([ino], &[])
    }

    /// The entry `name` of `parent` made, answered by `attr` (`None` when
    /// the answer names no inode: then it is not known what changed).
    pub fn entry(parent: u64, name: &str, attr: Option<&Attr>) -> Option<Changed> {
        Some(Self::new([parent, attr?.ino], &[(parent, name)]))
    }
}

/// One entry of a leased listing ([`Leased::keep_listing`]).
#[derive(Debug, Clone, Copy)]
pub struct Listed<'a> {
    /// Its name in the directory.
    pub name: &'a str,
    /// The inode it names.
    pub ino: u64,
    /// Whether that is a directory (a kind never changes).
    pub dir: bool,
    /// Its attributes, when meta covered them with the lease as well.
    pub attr: Option<&'a Attr>,
}

#[cfg(test)]
impl<'a> Listed<'a> {
    /// A name without attributes.
    pub fn name(name: &'a str, ino: u64, dir: bool) -> Listed<'a> {
        Listed {
            name,
            ino,
            dir,
            attr: None,
        }
    }
}

/// What [`Leased::named`] knows of a name.
#[derive(Debug, Clone, PartialEq)]
pub enum Named {
    /// It exists, with these attributes.
    Found(Attr),
    /// It does not exist.
    Absent,
}

/// What a read saw before it was sent (see [`Leased::begin`]).
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    epoch: u64,
    mutations: u64,
}

/// See the module docs.
#[derive(Default)]
pub struct Leased {
    state: Mutex<State>,
}

impl Leased {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Called before a read is sent to meta, with the client's mutation
    /// count; its answer may be kept only if nothing moved meanwhile.
    pub fn begin(&self, mutations: u64) -> Ticket {
        Ticket {
            epoch: self.state().epoch,
            mutations,
        }
    }

    /// Keeps `attr`, meta's answer to a read that began with `t`, and the
    /// name it was looked up by, if any.
    pub fn keep(&self, t: Ticket, mutations: u64, name: Option<(u64, &str)>, attr: &Attr) {
        self.keep_at(t, mutations, name, attr, Instant::now());
    }

    fn keep_at(
        &self,
        t: Ticket,
        mutations: u64,
        name: Option<(u64, &str)>,
        attr: &Attr,
        now: Instant,
    ) {
        let mut s = self.state();
        if !s.usable(mutations, now) || t.epoch != s.epoch || t.mutations != mutations {
            return;
        }
        s.insert(t.epoch, name, attr);
    }

    /// Keeps `attr`, meta's answer to this client's own mutation that
    /// began with `t` (and made the entry `name`, if any), if nothing else
    /// moved meanwhile: no change arrived from the feed, and no own
    /// mutation other than this one ended (one that ends later drops what
    /// it changed, [`Self::own_mutation`]). The answer must be covered by
    /// the lease: a create's when meta says so, a mutation of a file's
    /// attributes when [`Self::begin_own`] gave its ticket.
    pub fn keep_own(&self, t: Ticket, name: Option<(u64, &str)>, attr: &Attr) {
        let mut s = self.state();
        if !s.usable(t.mutations + 1, Instant::now()) || t.epoch != s.epoch {
            return;
        }
        s.insert(t.epoch, name, attr);
    }

    /// The ticket of an own mutation of file `ino`'s attributes (a close
    /// that reports the length) whose answer [`Self::keep_own`] may keep:
    /// only when the file's attributes are here, so the lease covers it
    /// (meta registered it for this client's stream, and a new stream
    /// starts with a reset that empties this cache), and it is no restored
    /// file reading through a snapshot (such answers do not carry the
    /// file's origin).
    ///
    /// A file a program wrote and closed is then answered from here when it
    /// reads it back (the small-files read after write), as when it looked
    /// it up: the close's reply is meta's state of the file once the close
    /// applied, and any other client's later change waits for this client
    /// to drop it.
    pub fn begin_own(&self, mutations: u64, ino: u64) -> Option<Ticket> {
        let mut s = self.state();
        if !s.usable(mutations, Instant::now()) {
            return None;
        }
        let a = s.attrs.get(&ino)?;
        (a.origin_object == 0 && a.kind() == FileType::Regular).then_some(Ticket {
            epoch: s.epoch,
            mutations,
        })
    }

    /// The attributes of `ino`, if they may be answered from here.
    pub fn attr(&self, ino: u64, mutations: u64) -> Option<Attr> {
        self.attr_at(ino, mutations, Instant::now())
    }

    fn attr_at(&self, ino: u64, mutations: u64, now: Instant) -> Option<Attr> {
        let mut s = self.state();
        if !s.usable(mutations, now) {
            return None;
        }
        let a = s.attrs.get(&ino).cloned()?;
        s.hits += 1;
        Some(a)
    }

    /// The entry `name` in `parent`, if it may be answered from here: its
    /// attributes, or that it does not exist (`parent` is complete and the
    /// name was neither listed nor kept nor dropped since, see the module
    /// docs). One look under one lock, for the mount's lookups.
    pub fn named(&self, parent: u64, name: &str, mutations: u64) -> Option<Named> {
        self.named_at(parent, name, mutations, Instant::now())
    }

    fn named_at(&self, parent: u64, name: &str, mutations: u64, now: Instant) -> Option<Named> {
        let mut s = self.state();
        if !s.usable(mutations, now) {
            return None;
        }
        let named = s.named(parent, name, false)?;
        s.hits += 1;
        Some(named)
    }

    #[cfg(test)]
    fn lookup_at(&self, parent: u64, name: &str, mutations: u64, now: Instant) -> Option<Attr> {
        match self.named_at(parent, name, mutations, now)? {
            Named::Found(a) => Some(a),
            Named::Absent => None,
        }
    }

    #[cfg(test)]
    fn absent_at(&self, parent: u64, name: &str, mutations: u64, now: Instant) -> bool {
        matches!(
            self.named_at(parent, name, mutations, now),
            Some(Named::Absent)
        )
    }

    /// Whether directory `dir` is complete here (its names listed under
    /// the lease, see the module docs).
    pub fn complete(&self, dir: u64) -> bool {
        self.state().complete.contains(&dir)
    }

    /// Keeps meta's leased listing of the whole directory `dir`, read with
    /// ticket `t`, if nothing moved meanwhile: from then on the directory
    /// is complete (see the module docs), and the files whose attributes
    /// came with the listing (meta covered them too, `attrs_leased`) are
    /// answered from here as if each had been looked up.
    pub fn keep_listing<'a>(
        &self,
        t: Ticket,
        mutations: u64,
        dir: u64,
        listing: impl ExactSizeIterator<Item = Listed<'a>>,
    ) {
        self.keep_listing_at(t, mutations, dir, listing, Instant::now());
    }

    fn keep_listing_at<'a>(
        &self,
        t: Ticket,
        mutations: u64,
        dir: u64,
        listing: impl ExactSizeIterator<Item = Listed<'a>>,
        now: Instant,
    ) {
        let mut s = self.state();
        if !s.usable(mutations, now) || t.epoch != s.epoch || t.mutations != mutations {
            return;
        }
        let n = listing.len();
        if s.entries.len() + n >= MAX_ATTRS || s.attrs.len() + n >= MAX_ATTRS || s.full() {
            return;
        }
        s.unknown.retain(|(p, _)| *p != dir);
        for e in listing {
            s.entries.insert((dir, e.name.to_string()), (e.ino, e.dir));
            if let Some(a) = e.attr.filter(|a| a.ino == e.ino) {
                s.attrs.insert(e.ino, a.clone());
            }
        }
        s.complete.insert(dir);
    }

    /// What is known here of the path made of `names` from the root, when
    /// every directory on the way may be answered from here: the
    /// attributes of its last name if that is not a directory (a
    /// directory's own attributes are not covered by the lease, kept only
    /// to walk paths, so a stat of one asks meta), or that the last name
    /// does not exist (its directory is complete, see the module docs).
    pub fn resolve(&self, names: &[&str], mutations: u64) -> Option<Named> {
        self.resolve_named_at(names, mutations, Instant::now())
    }

    fn resolve_named_at(&self, names: &[&str], mutations: u64, now: Instant) -> Option<Named> {
        let mut s = self.state();
        let (last, dirs) = names.split_last()?;
        if !s.usable(mutations, now) {
            return None;
        }
        let (parent, _) = s.walk(dirs)?;
        let named = s.named(parent, last, true)?;
        s.hits += 1;
        Some(named)
    }

    #[cfg(test)]
    fn resolve_at(&self, names: &[&str], mutations: u64, now: Instant) -> Option<Attr> {
        match self.resolve_named_at(names, mutations, now)? {
            Named::Found(a) => Some(a),
            Named::Absent => None,
        }
    }

    /// The inode of the directory at the path made of `names` from the
    /// root, if every name on it may be answered from here (the
    /// directory's own attributes need not be: every entry made in it
    /// changes them).
    pub fn resolve_dir(&self, names: &[&str], mutations: u64) -> Option<u64> {
        self.resolve_dir_at(names, mutations, Instant::now())
    }

    fn resolve_dir_at(&self, names: &[&str], mutations: u64, now: Instant) -> Option<u64> {
        let mut s = self.state();
        if !s.usable(mutations, now) {
            return None;
        }
        let (ino, dir) = s.walk(names)?;
        if !dir {
            return None;
        }
        s.hits += 1;
        Some(ino)
    }

    /// Counts an own mutation that ended, in `counter` (the client's
    /// [`crate::MetaClient::mutations`]), and drops what it changed:
    /// `changed`'s inodes and names when the mutation says what it changed
    /// and the cache had seen every earlier one, else everything. Meta does
    /// not send a client its own changes, so this stands for the feed's.
    pub fn own_mutation(&self, counter: &AtomicU64, changed: Option<&Changed>) {
        let mut s = self.state();
        match changed {
            Some(c) if s.mutations == counter.load(Ordering::Acquire) => {
                s.forget(&c.inos, c.entries.iter().map(|(p, n)| (*p, n.as_str())));
            }
            _ => s.clear(),
        }
        s.mutations = counter.fetch_add(1, Ordering::AcqRel) + 1;
    }

    /// Whether the lease runs now (answers may be kept and given).
    pub fn live(&self) -> bool {
        self.live_at(Instant::now())
    }

    fn live_at(&self, now: Instant) -> bool {
        self.state().until.is_some_and(|u| now < u)
    }

    /// How many answers were given from here so far.
    pub fn hits(&self) -> u64 {
        self.state().hits
    }

    /// Drops what other clients' changes touched: attributes of `inos` and
    /// the names `entries`.
    pub fn changed<'a>(&self, inos: &[u64], entries: impl IntoIterator<Item = (u64, &'a str)>) {
        let mut s = self.state();
        s.epoch += 1;
        s.forget(inos, entries);
    }

    /// Drops everything (a reset: changes may have been missed).
    pub fn reset(&self) {
        self.state().clear();
    }

    /// The feed is lost or silent: drops everything and the lease.
    pub fn lost(&self) {
        let mut s = self.state();
        s.clear();
        s.until = None;
        s.sent.clear();
    }

    /// Records a renewal sent now; returns its number.
    pub fn renewal(&self) -> u64 {
        self.renewal_at(Instant::now())
    }

    fn renewal_at(&self, now: Instant) -> u64 {
        let mut s = self.state();
        s.next_renewal += 1;
        let n = s.next_renewal;
        if s.sent.len() >= MAX_SENT {
            s.sent.pop_front();
        }
        s.sent.push_back((n, now));
        n
    }

    /// Meta granted renewal `n`: the lease runs [`CLIENT_LEASE`] from its
    /// send. Unknown numbers (a renewal of a lost stream) grant nothing.
    pub fn granted(&self, n: u64) {
        let mut s = self.state();
        let Some(&(_, sent)) = s.sent.iter().find(|(m, _)| *m == n) else {
            return;
        };
        s.sent.retain(|(m, _)| *m > n);
        let end = sent + CLIENT_LEASE;
        s.until = Some(s.until.map_or(end, |u| u.max(end)));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn attr(ino: u64, size: u64) -> Attr {
        Attr {
            ino,
            size,
            ..Default::default()
        }
    }

    fn leased_now() -> (Leased, Instant) {
        let l = Leased::default();
        let t0 = Instant::now();
        let n = l.renewal_at(t0);
        l.granted(n);
        (l, t0)
    }

    #[test]
    fn answers_only_under_a_running_lease() {
        let l = Leased::default();
        let t0 = Instant::now();
        let t = l.begin(0);
        l.keep_at(t, 0, Some((1, "a")), &attr(5, 10), t0);
        assert_eq!(l.attr_at(5, 0, t0), None, "no lease: nothing kept");

        let n = l.renewal_at(t0);
        assert_eq!(l.attr_at(5, 0, t0), None, "asked, not granted");
        assert!(!l.live_at(t0));
        l.granted(n);
        assert!(l.live_at(t0));
        let t = l.begin(0);
        l.keep_at(t, 0, Some((1, "a")), &attr(5, 10), t0);
        assert_eq!(l.attr_at(5, 0, t0).map(|a| a.size), Some(10));
        assert_eq!(l.lookup_at(1, "a", 0, t0).map(|a| a.ino), Some(5));
        assert_eq!(l.lookup_at(1, "b", 0, t0), None);
        // The lease runs from the renewal's send, not from the grant.
        let end = t0 + CLIENT_LEASE;
        assert!(l.attr_at(5, 0, end - Duration::from_millis(1)).is_some());
        assert_eq!(l.attr_at(5, 0, end), None, "the lease ran out");
        assert!(!l.live_at(end));
        // A grant of a stream that was lost grants nothing.
        let n = l.renewal_at(t0);
        l.lost();
        l.granted(n);
        assert_eq!(l.attr_at(5, 0, t0), None);
        assert!(!l.live_at(t0));
    }

    #[test]
    fn a_change_drops_what_it_names_and_an_answer_that_raced_it() {
        let (l, t0) = leased_now();
        for ino in [5, 6] {
            let t = l.begin(0);
            l.keep_at(t, 0, Some((1, &format!("f{ino}"))), &attr(ino, 1), t0);
        }
        l.changed(&[5], []);
        assert_eq!(l.attr_at(5, 0, t0), None);
        assert_eq!(
            l.lookup_at(1, "f5", 0, t0),
            None,
            "its name has no attributes"
        );
        assert!(l.attr_at(6, 0, t0).is_some(), "others stay");
        l.changed(&[], [(1, "f6")]);
        assert_eq!(l.lookup_at(1, "f6", 0, t0), None);
        assert!(l.attr_at(6, 0, t0).is_some());

        // An answer sent before a change and received after it may show
        // the state before the change: not kept.
        let t = l.begin(0);
        l.changed(&[9], []);
        l.keep_at(t, 0, None, &attr(7, 1), t0);
        assert_eq!(l.attr_at(7, 0, t0), None);

        l.reset();
        assert_eq!(l.attr_at(6, 0, t0), None, "a reset drops everything");
    }

    #[test]
    fn an_own_mutation_drops_everything_and_the_answers_it_raced() {
        let (l, t0) = leased_now();
        let t = l.begin(0);
        l.keep_at(t, 0, None, &attr(5, 1), t0);
        assert!(l.attr_at(5, 0, t0).is_some());
        assert_eq!(l.attr_at(5, 1, t0), None, "a mutation of this client ended");
        assert_eq!(l.attr_at(5, 1, t0), None, "and the cache was dropped");
        // A read that began before the mutation ended is not kept.
        let t = l.begin(1);
        l.keep_at(t, 2, None, &attr(5, 2), t0);
        assert_eq!(l.attr_at(5, 2, t0), None);
        let t = l.begin(2);
        l.keep_at(t, 2, None, &attr(5, 2), t0);
        assert_eq!(l.attr_at(5, 2, t0).map(|a| a.size), Some(2));
    }

    #[test]
    fn a_path_is_answered_when_every_name_on_it_is() {
        let (l, t0) = leased_now();
        let root = InodeId::ROOT.0;
        let keep = |parent, name, a: Attr| {
            let t = l.begin(0);
            l.keep_at(t, 0, Some((parent, name)), &a, t0);
        };
        keep(root, "vol", attr(2, 0));
        keep(2, "d", attr(3, 0));
        keep(3, "f", attr(4, 7));
        assert_eq!(
            l.resolve_at(&["vol", "d", "f"], 0, t0).map(|a| a.size),
            Some(7)
        );
        assert_eq!(l.resolve_at(&["vol", "d"], 0, t0).map(|a| a.ino), Some(3));
        keep(
            3,
            "sub",
            Attr {
                kind: FileType::Directory as i32,
                ..attr(5, 0)
            },
        );
        assert_eq!(
            l.resolve_at(&["vol", "d", "sub"], 0, t0),
            None,
            "a directory's attributes are not covered: asked"
        );
        assert_eq!(l.resolve_dir_at(&["vol", "d", "sub"], 0, t0), Some(5));
        assert_eq!(l.resolve_at(&[], 0, t0), None, "the root is asked");
        assert_eq!(l.resolve_at(&["vol", "x", "f"], 0, t0), None);
        assert_eq!(l.hits(), 3);
        // A change of a name in the middle hides everything below it.
        l.changed(&[], [(2, "d")]);
        assert_eq!(l.resolve_at(&["vol", "d", "f"], 0, t0), None);
        assert!(l.attr_at(4, 0, t0).is_some(), "the file itself stays");
    }

    #[test]
    fn an_own_mutation_that_says_what_it_changed_drops_only_that() {
        let counter = AtomicU64::new(0);
        let (l, t0) = leased_now();
        let root = InodeId::ROOT.0;
        let dir = Attr {
            kind: FileType::Directory as i32,
            ..attr(2, 0)
        };
        for (parent, name, a) in [(root, "vol", dir.clone()), (2, "f", attr(3, 1))] {
            let t = l.begin(0);
            l.keep_at(t, 0, Some((parent, name)), &a, t0);
        }
        // A create of "g" in the volume: its name and the volume's
        // attributes go, the path to the volume stays.
        l.own_mutation(&counter, Some(&Changed::new([2, 4], &[(2, "g")])));
        assert_eq!(l.resolve_dir_at(&["vol"], 1, t0), Some(2));
        assert_eq!(
            l.resolve_at(&["vol"], 1, t0),
            None,
            "its attributes changed"
        );
        assert_eq!(l.resolve_at(&["vol", "f"], 1, t0).map(|a| a.ino), Some(3));
        assert_eq!(
            l.resolve_dir_at(&["vol", "f"], 1, t0),
            None,
            "not a directory"
        );
        // A mutation that does not say, or one the cache did not count,
        // drops everything.
        l.own_mutation(&counter, None);
        assert_eq!(l.resolve_dir_at(&["vol"], 2, t0), None);
        let t = l.begin(2);
        l.keep_at(t, 2, Some((root, "vol")), &dir, t0);
        counter.fetch_add(1, Ordering::AcqRel);
        l.own_mutation(&counter, Some(&Changed::default()));
        assert_eq!(l.resolve_dir_at(&["vol"], 4, t0), None);
    }

    #[test]
    fn a_listed_directorys_missing_names_are_absent_until_a_change_names_them() {
        let (l, t0) = leased_now();
        let counter = AtomicU64::new(0);
        assert!(!l.absent_at(4, "x", 0, t0), "not listed: ask meta");
        let t = l.begin(0);
        let listing = [Listed::name("a", 10, false), Listed::name("sub", 11, true)];
        l.keep_listing_at(t, 0, 4, listing.into_iter(), t0);
        assert!(l.complete(4));
        assert!(l.absent_at(4, "x", 0, t0));
        assert!(!l.absent_at(4, "a", 0, t0), "listed");
        assert!(!l.absent_at(5, "x", 0, t0), "another directory");
        assert_eq!(
            l.lookup_at(4, "a", 0, t0),
            None,
            "listed without attributes"
        );
        assert_eq!(l.resolve_dir_at(&[], 0, t0), Some(1));
        // A path through the listed directory (the native client's).
        let t = l.begin(0);
        l.keep_at(t, 0, Some((InodeId::ROOT.0, "v")), &attr(4, 0), t0);
        assert_eq!(l.resolve_named_at(&["v", "x"], 0, t0), Some(Named::Absent));
        assert_eq!(l.resolve_named_at(&["v", "a"], 0, t0), None, "listed");
        assert_eq!(
            l.resolve_named_at(&["v", "sub"], 0, t0),
            None,
            "a directory"
        );
        assert_eq!(l.resolve_named_at(&["w", "x"], 0, t0), None, "not walked");
        // Another client's change naming x: unknown, not absent.
        l.changed(&[4], [(4, "x")]);
        assert!(!l.absent_at(4, "x", 0, t0));
        assert_eq!(l.resolve_named_at(&["v", "x"], 0, t0), None);
        assert!(l.absent_at(4, "y", 0, t0));
        // This client's own create of y: unknown until its answer is kept.
        let t = l.begin(0);
        counter.store(0, Ordering::Release);
        l.own_mutation(&counter, Some(&Changed::new([4, 12], &[(4, "y")])));
        assert!(!l.absent_at(4, "y", 1, t0));
        l.keep_own(t, Some((4, "y")), &attr(12, 0));
        assert_eq!(l.lookup_at(4, "y", 1, t0).map(|a| a.ino), Some(12));
        assert_eq!(l.named_at(4, "y", 1, t0), Some(Named::Found(attr(12, 0))));
        assert_eq!(l.named_at(4, "a", 1, t0), None, "listed, no attributes");
        assert_eq!(l.named_at(4, "w", 1, t0), Some(Named::Absent));
        // A listing that raced a change is not kept.
        let t = l.begin(1);
        l.changed(&[], [(6, "z")]);
        l.keep_listing_at(t, 1, 6, [].into_iter(), t0);
        assert!(!l.complete(6));
        assert!(!l.absent_at(6, "q", 1, t0));
        // Nor one that raced an own mutation.
        let t = l.begin(1);
        l.own_mutation(&counter, Some(&Changed::default()));
        l.keep_listing_at(t, 2, 6, [].into_iter(), t0);
        assert!(!l.complete(6));
        // Nothing is absent once the lease ran out, or after a reset.
        assert!(!l.absent_at(4, "w", 2, t0 + CLIENT_LEASE));
        l.reset();
        assert!(!l.absent_at(4, "w", 2, t0));
        assert!(!l.complete(4));
    }

    #[test]
    fn a_listing_with_attributes_answers_its_files_until_a_change_names_them() {
        let (l, t0) = leased_now();
        let (a, b, sub) = (attr(10, 5), attr(11, 7), attr(12, 0));
        let t = l.begin(0);
        let listing = [
            Listed {
                attr: Some(&a),
                ..Listed::name("a", 10, false)
            },
            Listed {
                attr: Some(&b),
                ..Listed::name("b", 11, false)
            },
            // Attributes that are not the entry's are not kept.
            Listed {
                attr: Some(&a),
                ..Listed::name("c", 13, false)
            },
            Listed::name("sub", sub.ino, true),
        ];
        l.keep_listing_at(t, 0, 4, listing.into_iter(), t0);
        assert_eq!(l.named_at(4, "a", 0, t0), Some(Named::Found(a.clone())));
        assert_eq!(l.named_at(4, "b", 0, t0), Some(Named::Found(b)));
        assert_eq!(l.named_at(4, "c", 0, t0), None, "no attributes of its own");
        assert_eq!(
            l.named_at(4, "sub", 0, t0),
            None,
            "listed without attributes"
        );
        assert_eq!(l.named_at(4, "d", 0, t0), Some(Named::Absent));
        // Another client wrote b: only b is asked of meta again.
        l.changed(&[11], []);
        assert_eq!(l.named_at(4, "b", 0, t0), None);
        assert_eq!(l.named_at(4, "a", 0, t0), Some(Named::Found(a)));
        // Past the lease, nothing.
        assert_eq!(l.named_at(4, "a", 0, t0 + CLIENT_LEASE), None);
    }

    fn file(ino: u64, size: u64) -> Attr {
        Attr {
            kind: FileType::Regular as i32,
            ..attr(ino, size)
        }
    }

    #[test]
    fn an_own_close_keeps_its_answer_only_for_a_covered_file_nothing_raced() {
        let (l, t0) = leased_now();
        let counter = AtomicU64::new(0);
        let close = |ino: u64| {
            l.own_mutation(&counter, Some(&Changed::ino(ino)));
        };
        assert!(l.begin_own(0, 7).is_none(), "not here: not covered");
        // Created here (the create's answer kept), then written and closed.
        let t = l.begin(0);
        close(7);
        l.keep_own(t, Some((4, "f")), &file(7, 0));
        let t = l.begin_own(1, 7).expect("covered");
        close(7);
        assert_eq!(l.lookup_at(4, "f", 2, t0), None, "the close dropped it");
        l.keep_own(t, None, &file(7, 4096));
        assert_eq!(l.lookup_at(4, "f", 2, t0), Some(file(7, 4096)));
        // A change from the feed while the close was in flight: not kept.
        let t = l.begin_own(2, 7).expect("covered");
        close(7);
        l.changed(&[9], []);
        l.keep_own(t, None, &file(7, 8192));
        assert_eq!(l.attr_at(7, 3, t0), None);
        // Another own mutation that ended meanwhile: not kept either.
        let t = l.begin(3);
        l.keep_at(t, 3, Some((4, "f")), &file(7, 8192), t0);
        let t = l.begin_own(3, 7).expect("covered");
        close(7);
        close(8);
        l.keep_own(t, None, &file(7, 1));
        assert_eq!(l.attr_at(7, 5, t0), None);
        // A restored file (its origin is not in a close's answer) and a
        // directory are never kept this way.
        let t = l.begin(5);
        let restored = Attr {
            origin_object: 3,
            ..file(10, 1)
        };
        l.keep_at(t, 5, None, &restored, t0);
        let dir = Attr {
            kind: FileType::Directory as i32,
            ..attr(11, 0)
        };
        l.keep_at(t, 5, None, &dir, t0);
        assert!(l.attr_at(10, 5, t0).is_some());
        assert!(l.begin_own(5, 10).is_none());
        assert!(l.begin_own(5, 11).is_none());
        // Nor after a reset (a new stream covers nothing yet).
        l.reset();
        assert!(l.begin_own(5, 7).is_none());
    }

    #[test]
    fn the_cache_starts_over_when_full() {
        let (l, t0) = leased_now();
        for ino in 0..=MAX_ATTRS as u64 {
            let t = l.begin(0);
            l.keep_at(t, 0, None, &attr(ino, 1), t0);
        }
        assert_eq!(l.attr_at(0, 0, t0), None, "dropped when the map filled");
        assert!(l.attr_at(MAX_ATTRS as u64, 0, t0).is_some());
        assert!(l.state().attrs.len() <= MAX_ATTRS);
    }
}
