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
//!   only namespace mutation in flight from start to end, and nothing was
//!   invalidated meanwhile (an epoch counts every start and every
//!   invalidation): two own mutations racing in one directory may reach
//!   meta in either order, and an invalidation that arrives before the
//!   reply may be about a later change than the reply shows.
//! * A mutation whose effect on directories is not returned (rename,
//!   setattr, xattrs, a checkpoint directory's pruning) drops everything
//!   when it ends ([`DirAttrs::finish_unknown`]), and one that returns
//!   them but may not be kept drops its parent's.
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
    epoch: u64,
    alone: bool,
}

#[derive(Default)]
struct State {
    attrs: HashMap<u64, Attr>,
    inflight: usize,
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

    /// A namespace mutation starts.
    pub(crate) fn begin(&self) -> Ticket {
        let mut s = self.state();
        let alone = s.inflight == 0;
        s.inflight += 1;
        s.epoch += 1;
        Ticket {
            epoch: s.epoch,
            alone,
        }
    }

    /// The mutation of `t` ended; `parent` is its parent directory's
    /// attributes after it, when meta returned them; `live`: the change
    /// feed is connected.
    pub(crate) fn finish(&self, t: Ticket, parent: Option<&Attr>, live: bool) {
        let mut s = self.state();
        s.inflight = s.inflight.saturating_sub(1);
        let Some(p) = parent else {
            return;
        };
        let keep = live && t.alone && s.epoch == t.epoch && p.kind == FileType::Directory as i32;
        if !keep {
            s.attrs.remove(&p.ino);
            return;
        }
        if s.attrs.len() >= MAX_DIRS && !s.attrs.contains_key(&p.ino) {
            s.attrs.clear();
        }
        s.attrs.insert(p.ino, p.clone());
    }

    /// The mutation of `t` ended and what it did to directories is not
    /// known here: everything is dropped.
    pub(crate) fn finish_unknown(&self, t: Ticket) {
        let mut s = self.state();
        s.inflight = s.inflight.saturating_sub(1);
        drop(t);
        s.epoch += 1;
        s.attrs.clear();
    }

    /// Runs `op`, a mutation whose effect on directories is not known
    /// here ([`Self::finish_unknown`]).
    pub(crate) async fn unknown<T>(&self, op: impl std::future::Future<Output = T>) -> T {
        let t = self.begin();
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

    #[test]
    fn a_lone_mutation_keeps_its_parent_while_the_feed_is_live() {
        let d = DirAttrs::default();
        let t = d.begin();
        d.finish(t, Some(&dir(5, 1)), true);
        assert_eq!(d.get(5).map(|a| a.mtime_ns), Some(1));
        let t = d.begin();
        d.finish(t, Some(&dir(5, 2)), true);
        assert_eq!(d.get(5).map(|a| a.mtime_ns), Some(2));
        // Without the feed nothing is kept, and the old value goes.
        let t = d.begin();
        d.finish(t, Some(&dir(5, 3)), false);
        assert_eq!(d.get(5), None);
    }

    #[test]
    fn racing_mutations_keep_nothing_and_drop_what_was_kept() {
        let d = DirAttrs::default();
        let t = d.begin();
        d.finish(t, Some(&dir(5, 1)), true);
        let (a, b) = (d.begin(), d.begin());
        // b's reply may show the state before a's change, or after it.
        d.finish(b, Some(&dir(5, 3)), true);
        d.finish(a, Some(&dir(5, 2)), true);
        assert_eq!(d.get(5), None);
        // Once alone again, it keeps.
        let t = d.begin();
        d.finish(t, Some(&dir(5, 4)), true);
        assert_eq!(d.get(5).map(|a| a.mtime_ns), Some(4));
    }

    #[test]
    fn an_invalidation_during_a_mutation_wins() {
        let d = DirAttrs::default();
        let t = d.begin();
        d.forget([5]);
        d.finish(t, Some(&dir(5, 1)), true);
        assert_eq!(d.get(5), None);
        let t = d.begin();
        d.finish(t, Some(&dir(5, 2)), true);
        d.forget([7, 5]);
        assert_eq!(d.get(5), None);
    }

    #[test]
    fn unknown_effects_and_a_lost_feed_drop_everything() {
        let d = DirAttrs::default();
        for ino in [5, 6] {
            let t = d.begin();
            d.finish(t, Some(&dir(ino, 1)), true);
        }
        let t = d.begin();
        d.finish_unknown(t);
        assert_eq!((d.get(5), d.get(6)), (None, None));
        let t = d.begin();
        d.finish(t, Some(&dir(5, 1)), true);
        d.clear();
        assert_eq!(d.get(5), None);
        // A file's attributes are never kept.
        let t = d.begin();
        let file = Attr {
            ino: 9,
            kind: FileType::Regular as i32,
            ..Attr::default()
        };
        d.finish(t, Some(&file), true);
        assert_eq!(d.get(9), None);
    }
}
