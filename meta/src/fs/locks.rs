//! Advisory file locks shared by every client: POSIX byte-range locks
//! (`fcntl` F_SETLK/F_SETLKW/F_GETLK) and `flock`, as the mounts forward
//! them (issue 15: PyTorch's file rendezvous, SQLite and HDF5 lock files
//! on shared volumes from many machines).
//!
//! A lock belongs to an owner: a client session plus the owner id the
//! client gives (the kernel's lock owner: a process's file table for
//! `fcntl`, an open file description for `flock`). One owner's ranges on
//! an inode are one record, `l` + ino + session + owner, kept sorted,
//! disjoint and merged; `L` + session + ino indexes them so that closing
//! or expiring a session drops every lock it held (a crashed client's
//! locks last at most the session timeout).
//!
//! POSIX rules kept here: a lock conflicts with another owner's lock on an
//! overlapping range when either is a write lock; an owner's new lock (or
//! unlock) replaces its own locks on the range, splitting and merging
//! them; `end` is inclusive (`u64::MAX`: to the end of any file). Waiting
//! (F_SETLKW) is the client's loop: a refused request changes nothing and
//! names the holder, so no waiter state lives in meta.

use serde::{Deserialize, Serialize};

use super::namespace::inode;
use super::store::{Kv, Txn};
use super::{FsResult, Reply, fail};

/// What a lock request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockKind {
    /// A shared (read) lock.
    Read,
    /// An exclusive (write) lock.
    Write,
    /// Release the range.
    Unlock,
}

/// One range an owner holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRange {
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive).
    pub end: u64,
    /// Exclusive.
    pub write: bool,
    /// The locking process's id, as its client saw it (F_GETLK reports it).
    pub pid: u32,
}

/// A lock that stands in a request's way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// The holder's session.
    pub session: u64,
    /// The holder's owner id within its session.
    pub owner: u64,
    /// The conflicting range.
    pub range: LockRange,
}

/// `l` + ino: the prefix of an inode's lock records.
fn ino_prefix(ino: u64) -> Vec<u8> {
    let mut k = vec![b'l'];
    k.extend_from_slice(&ino.to_be_bytes());
    k
}

/// `l` + ino + session: the prefix of one session's lock records on `ino`.
fn session_owners(ino: u64, session: u64) -> Vec<u8> {
    let mut k = ino_prefix(ino);
    k.extend_from_slice(&session.to_be_bytes());
    k
}

/// `l` + ino + session + owner.
fn owner_key(ino: u64, session: u64, owner: u64) -> Vec<u8> {
    let mut k = session_owners(ino, session);
    k.extend_from_slice(&owner.to_be_bytes());
    k
}

/// `L` + session: the prefix of a session's lock index.
fn session_prefix(session: u64) -> Vec<u8> {
    let mut k = vec![b'L'];
    k.extend_from_slice(&session.to_be_bytes());
    k
}

fn session_key(session: u64, ino: u64) -> Vec<u8> {
    let mut k = session_prefix(session);
    k.extend_from_slice(&ino.to_be_bytes());
    k
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Whether `a` and `b` share a byte.
fn overlaps(a: &LockRange, start: u64, end: u64) -> bool {
    a.start <= end && start <= a.end
}

/// Applies an owner's request to its own ranges: the range `start..=end`
/// becomes `kind` (or free), splitting the ranges it cuts, then ranges of
/// the same type that touch are merged. Pure: the POSIX bookkeeping.
pub fn apply(ranges: &mut Vec<LockRange>, start: u64, end: u64, kind: LockKind, pid: u32) {
    let mut out = Vec::with_capacity(ranges.len() + 2);
    for r in ranges.drain(..) {
        if !overlaps(&r, start, end) {
            out.push(r);
            continue;
        }
        if r.start < start {
            out.push(LockRange {
                end: start - 1,
                ..r
            });
        }
        if r.end > end {
            out.push(LockRange {
                start: end + 1,
                ..r
            });
        }
    }
    if kind != LockKind::Unlock {
        out.push(LockRange {
            start,
            end,
            write: kind == LockKind::Write,
            pid,
        });
    }
    out.sort_by_key(|r| r.start);
    for r in out {
        match ranges.last_mut() {
            Some(last)
                if last.write == r.write && last.end != u64::MAX && last.end + 1 >= r.start =>
            {
                last.end = last.end.max(r.end);
                last.pid = r.pid;
            }
            _ => ranges.push(r),
        }
    }
}

/// Returns the first lock of another owner that conflicts with `kind` on
/// `start..=end` (`None`: the request can be granted).
pub(crate) fn conflict<K: Kv + ?Sized>(
    t: &Txn<'_, K>,
    ino: u64,
    session: u64,
    owner: u64,
    start: u64,
    end: u64,
    kind: LockKind,
) -> FsResult<Option<LockHolder>> {
    if kind == LockKind::Unlock {
        return Ok(None);
    }
    let prefix = ino_prefix(ino);
    for (k, v) in t.scan(&prefix, None, usize::MAX)? {
        if k.len() != prefix.len() + 16 {
            continue;
        }
        let (s, o) = (be64(&k[prefix.len()..]), be64(&k[prefix.len() + 8..]));
        if (s, o) == (session, owner) {
            continue;
        }
        let ranges: Vec<LockRange> = super::store::decode(&k, &v)?;
        if let Some(r) = ranges
            .iter()
            .find(|r| overlaps(r, start, end) && (r.write || kind == LockKind::Write))
        {
            return Ok(Some(LockHolder {
                session: s,
                owner: o,
                range: *r,
            }));
        }
    }
    Ok(None)
}

/// F_SETLK: grants the request (and answers `Reply::Lock(None)`) or, when
/// another owner's lock conflicts, changes nothing and names it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn set_lock<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    session: u64,
    ino: u64,
    owner: u64,
    start: u64,
    end: u64,
    kind: LockKind,
    pid: u32,
) -> FsResult<Reply> {
    if session == 0 {
        fail!(BadRequest, "file locks need a client session");
    }
    if start > end {
        fail!(Invalid, "lock range starts at {start} after its end {end}");
    }
    if t.get_raw(&super::store::key::session(session))?.is_none() {
        fail!(SessionExpired, "session {session} is unknown or expired");
    }
    let key = owner_key(ino, session, owner);
    let mut ranges: Vec<LockRange> = t.get(&key)?.unwrap_or_default();
    if kind != LockKind::Unlock {
        inode(t, ino)?;
        if let Some(h) = conflict(t, ino, session, owner, start, end, kind)? {
            return Ok(Reply::Lock(Some(h)));
        }
    } else if ranges.is_empty() {
        return Ok(Reply::Lock(None));
    }
    apply(&mut ranges, start, end, kind, pid);
    if ranges.is_empty() {
        t.delete(key);
        // The index stays while another owner of the session holds a lock
        // on the inode.
        if t.scan(&session_owners(ino, session), None, 1)?.is_empty() {
            t.delete(session_key(session, ino));
        }
    } else {
        t.put(key, &ranges);
        t.put(session_key(session, ino), &());
    }
    Ok(Reply::Lock(None))
}

/// Drops every lock of session `session` (closed or expired).
pub(crate) fn release_session<K: Kv + ?Sized>(t: &mut Txn<'_, K>, session: u64) -> FsResult<()> {
    let prefix = session_prefix(session);
    for (k, _) in t.scan(&prefix, None, usize::MAX)? {
        t.delete(k.clone());
        if k.len() != prefix.len() + 8 {
            continue;
        }
        let ino = be64(&k[prefix.len()..]);
        for (lk, _) in t.scan(&session_owners(ino, session), None, usize::MAX)? {
            t.delete(lk);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64, write: bool) -> LockRange {
        LockRange {
            start,
            end,
            write,
            pid: 1,
        }
    }

    #[test]
    fn an_owners_ranges_split_replace_and_merge() {
        let mut v = Vec::new();
        apply(&mut v, 0, 99, LockKind::Read, 1);
        assert_eq!(v, [r(0, 99, false)]);
        // A write lock in the middle splits the read lock.
        apply(&mut v, 10, 19, LockKind::Write, 1);
        assert_eq!(v, [r(0, 9, false), r(10, 19, true), r(20, 99, false)]);
        // Downgrading it merges the three back into one.
        apply(&mut v, 10, 19, LockKind::Read, 1);
        assert_eq!(v, [r(0, 99, false)]);
        // Unlocking a hole, then the rest.
        apply(&mut v, 50, 59, LockKind::Unlock, 1);
        assert_eq!(v, [r(0, 49, false), r(60, 99, false)]);
        apply(&mut v, 0, u64::MAX, LockKind::Unlock, 1);
        assert!(v.is_empty());
        // Adjacent locks of one type merge, to the end of any file too.
        apply(&mut v, 0, 9, LockKind::Write, 1);
        apply(&mut v, 10, u64::MAX, LockKind::Write, 1);
        assert_eq!(v, [r(0, u64::MAX, true)]);
        apply(&mut v, 5, 5, LockKind::Read, 1);
        assert_eq!(v, [r(0, 4, true), r(5, 5, false), r(6, u64::MAX, true)]);
    }
}
