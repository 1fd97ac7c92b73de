//! Directories' attributes as this mount's own changes left them.
//!
//! The kernel drops a directory's attributes after every entry it creates
//! or removes there, and asks for them again (GETATTR) before the next
//! permission check: through the mount, each create, mkdir, unlink and
//! rmdir in a directory cost a read round trip to meta for its parent
//! before its own. Meta's replies to those mutations already carry the
//! parent's attributes after the change, so the mount keeps them and
//! answers the next GETATTR of that directory itself.
//!
//! What may be answered from here, and so never older than what the
//! kernel would cache with the feed's long TTL (see [`crate::feed`]):
//!
//! * Only while the change feed is connected: others' changes to the
//!   directory arrive as invalidations ([`DirAttrs::forget`]); a lost or
//!   reset feed drops everything ([`DirAttrs::clear`]).
//! * Only the attributes a mutation returned when it was this mount's
//!   only mutation in flight *in that directory* from start to end, no
//!   mutation of unknown effect overlapped it, and nothing was invalidated
//!   meanwhile (an epoch counts invalidations and ended mutations of
//!   unknown effect): two own mutations racing in one directory may reach
//!   meta in either order, and an invalidation that arrives before the
//!   reply may be about a later change than the reply shows. Mutations in
//!   other directories do not matter: a create, mkdir, link, symlink,
//!   unlink or rmdir changes the attributes of its own parent only (and of
//!   the entry's inode), so writers each in its own directory (a job's
//!   ranks) keep theirs. (Until 2026-12-07 any other own mutation in
//!   flight dropped them: at 8 threads every create through the mount
//!   cost a GETATTR on meta.)
//! * A rename changes two directories (one when within a directory): it
//!   keeps both as meta returned them once it applied, under the same
//!   rules for each, and drops the moved and the replaced inode (a moved
//!   directory's own attributes changed too). (Until 2026-12-07 a rename
//!   dropped everything: through the mount each rename cost a GETATTR of
//!   its directory on meta.)
//! * A mutation whose effect on directories is not returned (an exchange,
//!   setattr, xattrs, a checkpoint directory's pruning) drops everything
//!   when it ends ([`DirAttrs::finish_unknown`]), and one that returns
//!   them but may not be kept drops its directories'.
//!
//! So the cache is never the only place a change lives: meta has it, and
//! this only saves asking for what this mount was just told.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use cairn_proto::meta::{Attr, FileType};

/// Most directories kept; past it the map starts over.
const MAX_DIRS: usize = 4096;

/// A namespace mutation of this mount, from [`DirAttrs::begin`].
#[derive(Debug)]
#[must_use = "pass it to finish or finish_unknown"]
pub(crate) struct Ticket {
    /// The directories whose entries the mutation changes: a rename's
    /// source and destination, else the same one twice (`None`: unknown
    /// effect).
    dirs: Option<[u64; 2]>,
    epoch: u64,
}

/// The directories of a ticket, each once.
fn distinct([a, b]: [u64; 2]) -> impl Iterator<Item = u64> {
    std::iter::once(a).chain((b != a).then_some(b))
}

/// Mutations in flight in one directory.
#[derive(Default)]
struct InFlight {
    count: usize,
    /// Another mutation began there, or one of unknown effect ran
    /// anywhere, while these were in flight: none of them keeps what it
    /// returns.
    raced: bool,
}

#[derive(Default)]
struct State {
    attrs: HashMap<u64, Attr>,
    /// By directory; an entry goes when its last mutation ends.
    inflight: HashMap<u64, InFlight>,
    /// Mutations of unknown effect in flight.
    unknown: usize,
    /// Counts invalidations and ended mutations of unknown effect.
    epoch: u64,
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct DirAttrs {
    state: Mutex<State>,
}

impl DirAttrs {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A mutation that makes or removes an entry of directory `dir`
    /// starts.
    pub(crate) fn begin(&self, dir: u64) -> Ticket {
        self.begin_in([dir, dir])
    }

    /// A rename from directory `from` to directory `to` starts (not an
    /// exchange: that one's effect is [`Self::unknown`]).
    pub(crate) fn begin_rename(&self, from: u64, to: u64) -> Ticket {
        self.begin_in([from, to])
    }

    fn begin_in(&self, dirs: [u64; 2]) -> Ticket {
        let mut s = self.state();
        let unknown = s.unknown > 0;
        for dir in distinct(dirs) {
            let f = s.inflight.entry(dir).or_default();
            f.count += 1;
            f.raced |= f.count > 1 || unknown;
        }
        Ticket {
            dirs: Some(dirs),
            epoch: s.epoch,
        }
    }

    /// A mutation whose effect on directories is not returned starts:
    /// every one in flight is raced.
    fn begin_unknown(&self) -> Ticket {
        let mut s = self.state();
        s.unknown += 1;
        for f in s.inflight.values_mut() {
            f.raced = true;
        }
        Ticket {
            dirs: None,
            epoch: s.epoch,
        }
    }

    /// Counts the mutation of `t` out; whether it ran alone in each of
    /// its directories with nothing invalidated meanwhile.
    fn end(s: &mut State, t: &Ticket) -> bool {
        let Some(dirs) = t.dirs else {
            s.unknown = s.unknown.saturating_sub(1);
            return false;
        };
        let mut alone = s.epoch == t.epoch;
        for dir in distinct(dirs) {
            let Some(f) = s.inflight.get_mut(&dir) else {
                alone = false;
                continue;
            };
            alone &= !f.raced;
            f.count = f.count.saturating_sub(1);
            if f.count == 0 {
                s.inflight.remove(&dir);
            }
        }
        alone
    }

    /// The mutation of `t` ended; `parent` is its parent directory's
    /// attributes after it, when meta returned them; `live`: the change
    /// feed is connected.
    pub(crate) fn finish(&self, t: Ticket, parent: Option<&Attr>, live: bool) {
        self.finish_all(t, &[parent], &[], live);
    }

    /// [`Self::finish`] of a mutation that changed several directories
    /// (`parents`: their attributes after it, as meta returned them) and
    /// the attributes of the inodes `changed` (dropped). A directory of
    /// the ticket meta returned nothing for is dropped.
    pub(crate) fn finish_all(
        &self,
        t: Ticket,
        parents: &[Option<&Attr>],
        changed: &[u64],
        live: bool,
    ) {
        let mut s = self.state();
        let alone = Self::end(&mut s, &t);
        // Everything it touched goes; then what may be kept comes back.
        // (Inode 0 is none: the directories of a ticket of unknown effect.)
        let dirs = t.dirs.unwrap_or_default();
        let returned = parents.iter().flatten().map(|p| p.ino);
        for ino in changed.iter().chain(&dirs).copied().chain(returned) {
            s.attrs.remove(&ino);
        }
        if !(live && alone) {
            return;
        }
        let keep = parents
            .iter()
            .flatten()
            .filter(|p| dirs.contains(&p.ino) && p.kind == FileType::Directory as i32);
        for p in keep {
            if s.attrs.len() >= MAX_DIRS {
                s.attrs.clear();
            }
            s.attrs.insert(p.ino, (*p).clone());
        }
    }

    /// The mutation of `t` ended and what it did to directories is not
    /// known here: everything is dropped.
    pub(crate) fn finish_unknown(&self, t: Ticket) {
        let mut s = self.state();
        Self::end(&mut s, &t);
        s.epoch += 1;
        s.attrs.clear();
    }

    /// Runs `op`, a mutation whose effect on directories is not known
    /// here ([`Self::finish_unknown`]).
    pub(crate) async fn unknown<T>(&self, op: impl std::future::Future<Output = T>) -> T {
        let t = self.begin_unknown();
        let r = op.await;
        self.finish_unknown(t);
        r
    }

    /// Directory `ino`'s attributes, if kept.
    pub(crate) fn get(&self, ino: u64) -> Option<Attr> {
        self.state().attrs.get(&ino).cloned()
    }

    /// Another client changed these inodes (or entries in them).
    pub(crate) fn forget(&self, inos: impl IntoIterator<Item = u64>) {
        let mut s = self.state();
        s.epoch += 1;
        for ino in inos {
            s.attrs.remove(&ino);
        }
    }

    /// The feed was lost or reset: nothing is known.
    pub(crate) fn clear(&self) {
        let mut s = self.state();
        s.epoch += 1;
        s.attrs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(ino: u64, mtime: i64) -> Attr {
        Attr {
            ino,
            kind: FileType::Directory as i32,
            mtime_ns: mtime,
            ..Attr::default()
        }
    }

    /// Keeps `ino`'s attributes with `mtime` through a lone mutation.
    fn kept(d: &DirAttrs, ino: u64, mtime: i64) {
        let t = d.begin(ino);
        d.finish(t, Some(&dir(ino, mtime)), true);
    }

    #[test]
    fn a_lone_mutation_keeps_its_parent_while_the_feed_is_live() {
        let d = DirAttrs::default();
        kept(&d, 5, 1);
        assert_eq!(d.get(5).map(|a| a.mtime_ns), Some(1));
        kept(&d, 5, 2);
        assert_eq!(d.get(5).map(|a| a.mtime_ns), Some(2));
        // Without the feed nothing is kept, and the old value goes.
        let t = d.begin(5);
        d.finish(t, Some(&dir(5, 3)), false);
        assert_eq!(d.get(5), None);
    }

    #[test]
    fn racing_mutations_keep_nothing_and_drop_what_was_kept() {
        let d = DirAttrs::default();
        kept(&d, 5, 1);
        let (a, b) = (d.begin(5), d.begin(5));
        // b's reply may show the state before a's change, or after it.
        d.finish(b, Some(&dir(5, 3)), true);
        d.finish(a, Some(&dir(5, 2)), true);
        assert_eq!(d.get(5), None);
        // Once alone again, it keeps.
        kept(&d, 5, 4);
        assert_eq!(d.get(5).map(|a| a.mtime_ns), Some(4));
    }

    #[test]
    fn mutations_in_other_directories_do_not_race() {
        let d = DirAttrs::default();
        let (a, b) = (d.begin(5), d.begin(6));
        d.finish(b, Some(&dir(6, 1)), true);
        d.finish(a, Some(&dir(5, 1)), true);
        assert_eq!((d.get(5).is_some(), d.get(6).is_some()), (true, true));
        // Two in one directory, a third elsewhere: only the third keeps.
        let (a, b, c) = (d.begin(5), d.begin(5), d.begin(7));
        d.finish(a, Some(&dir(5, 2)), true);
        d.finish(c, Some(&dir(7, 2)), true);
        d.finish(b, Some(&dir(5, 3)), true);
        assert_eq!(d.get(5), None);
        assert_eq!(d.get(7).map(|a| a.mtime_ns), Some(2));
        // One of unknown effect overlapping a mutation: nothing is kept.
        let a = d.begin(8);
        let u = d.begin_unknown();
        d.finish(a, Some(&dir(8, 1)), true);
        assert_eq!(d.get(8), None);
        let b = d.begin(8);
        d.finish(b, Some(&dir(8, 2)), true);
        assert_eq!(d.get(8), None, "began while one of unknown effect ran");
        d.finish_unknown(u);
        kept(&d, 8, 3);
        assert_eq!(d.get(8).map(|a| a.mtime_ns), Some(3));
        // A reply about another directory than the one begun is not kept.
        let t = d.begin(9);
        d.finish(t, Some(&dir(10, 1)), true);
        assert_eq!(d.get(10), None);
    }

    #[test]
    fn a_rename_keeps_both_directories_and_drops_what_it_moved() {
        let d = DirAttrs::default();
        for ino in [5, 6, 7] {
            kept(&d, ino, 1);
        }
        // Between two directories, moving directory 7 (its ctime changed).
        let t = d.begin_rename(5, 6);
        d.finish_all(t, &[Some(&dir(5, 2)), Some(&dir(6, 2))], &[7], true);
        assert_eq!(d.get(5).map(|a| a.mtime_ns), Some(2));
        assert_eq!(d.get(6).map(|a| a.mtime_ns), Some(2));
        assert_eq!(d.get(7), None, "the moved directory");
        // Within one directory, beside a create in another one.
        let (t, c) = (d.begin_rename(5, 5), d.begin(6));
        d.finish_all(t, &[Some(&dir(5, 3)), Some(&dir(5, 3))], &[], true);
        d.finish(c, Some(&dir(6, 3)), true);
        assert_eq!(d.get(5).map(|a| a.mtime_ns), Some(3));
        assert_eq!(d.get(6).map(|a| a.mtime_ns), Some(3), "another directory");
        // A create racing the rename in its destination: neither keeps it.
        let (t, c) = (d.begin_rename(5, 6), d.begin(6));
        d.finish(c, Some(&dir(6, 4)), true);
        d.finish_all(t, &[Some(&dir(5, 4)), Some(&dir(6, 5))], &[], true);
        assert_eq!((d.get(5), d.get(6)), (None, None));
        // A meta that does not return the directories: both dropped.
        for ino in [5, 6] {
            kept(&d, ino, 6);
        }
        let t = d.begin_rename(5, 6);
        d.finish_all(t, &[None, None], &[], true);
        assert_eq!((d.get(5), d.get(6)), (None, None));
    }

    #[test]
    fn an_invalidation_during_a_mutation_wins() {
        let d = DirAttrs::default();
        let t = d.begin(5);
        d.forget([5]);
        d.finish(t, Some(&dir(5, 1)), true);
        assert_eq!(d.get(5), None);
        kept(&d, 5, 2);
        d.forget([7, 5]);
        assert_eq!(d.get(5), None);
    }

    #[test]
    fn unknown_effects_and_a_lost_feed_drop_everything() {
        let d = DirAttrs::default();
        for ino in [5, 6] {
            let t = d.begin(5);
            d.finish(t, Some(&dir(ino, 1)), true);
        }
        let t = d.begin(5);
        d.finish_unknown(t);
        assert_eq!((d.get(5), d.get(6)), (None, None));
        kept(&d, 5, 1);
        d.clear();
        assert_eq!(d.get(5), None);
        // A file's attributes are never kept.
        let t = d.begin(5);
        let file = Attr {
            ino: 9,
            kind: FileType::Regular as i32,
            ..Attr::default()
        };
        d.finish(t, Some(&file), true);
        assert_eq!(d.get(9), None);
    }
}
