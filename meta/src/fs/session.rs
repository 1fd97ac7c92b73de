//! Client sessions, open files and file lengths (DESIGN §4).
//!
//! A session lists the files it has open for write and the unlinked files
//! it still holds open. An index `h` + ino + session answers "does anyone
//! hold this inode" without scanning sessions. Read opens are not recorded
//! (they would cost a Raft entry per open on the dataset read path); a
//! reader's handle on a file unlinked by someone else is protected by the
//! GC grace period instead (DESIGN §11).
//!
//! Lengths: writers report (length, truncate generation); a report of an
//! older generation is dropped so an old writer cannot regrow a truncated
//! file, and a length only grows the file (shrinking is truncate's job).

use super::namespace::{charge_bytes, free_inode, inode, put_inode};
use super::store::{Kv, Txn, key};
use super::{FsResult, Kind, Reply, Session, counter, fail, next};

fn hold_key(ino: u64, session: u64) -> Vec<u8> {
    let mut k = vec![b'h'];
    k.extend_from_slice(&ino.to_be_bytes());
    k.extend_from_slice(&session.to_be_bytes());
    k
}

fn hold_prefix(ino: u64) -> Vec<u8> {
    let mut k = vec![b'h'];
    k.extend_from_slice(&ino.to_be_bytes());
    k
}

fn session<K: Kv + ?Sized>(t: &Txn<'_, K>, id: u64) -> FsResult<Session> {
    match t.get::<Session>(&key::session(id))? {
        Some(s) => Ok(s),
        None => fail!(SessionExpired, "session {id} is unknown or expired"),
    }
}

/// Opens a new session.
pub(crate) fn open_session<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    client_name: &str,
    now: i64,
) -> FsResult<Reply> {
    let id = next(t, counter::NEXT_SESSION, 1)?;
    let s = Session {
        id,
        client_name: client_name.chars().take(256).collect(),
        opened_ns: now,
        ..Session::default()
    };
    t.put(key::session(id), &s);
    Ok(Reply::Session(id))
}

/// Returns whether any session holds `ino` open (for write or unlinked).
pub(crate) fn is_held<K: Kv + ?Sized>(t: &Txn<'_, K>, ino: u64) -> FsResult<bool> {
    Ok(!t.scan(&hold_prefix(ino), None, 1)?.is_empty())
}

/// Records that session `sid` holds the unlinked inode `ino` open.
pub(crate) fn hold<K: Kv + ?Sized>(t: &mut Txn<'_, K>, sid: u64, ino: u64) -> FsResult<()> {
    let mut s = session(t, sid)?;
    s.held.insert(ino);
    t.put(key::session(sid), &s);
    t.put_raw(hold_key(ino, sid), Vec::new());
    Ok(())
}

/// Registers an open in session `sid` (write opens only; see module docs).
pub(crate) fn open<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    sid: u64,
    ino: u64,
    write: bool,
) -> FsResult<()> {
    let mut s = session(t, sid)?;
    if write {
        s.open_write.insert(ino);
        t.put(key::session(sid), &s);
        t.put_raw(hold_key(ino, sid), Vec::new());
    }
    Ok(())
}

/// Releases session `sid`'s hold on `ino`; frees the inode when it was
/// unlinked and nobody holds it any more. Returns whether it was freed.
fn release<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    s: &mut Session,
    ino: u64,
    now: i64,
) -> FsResult<bool> {
    s.open_write.remove(&ino);
    s.held.remove(&ino);
    t.delete(hold_key(ino, s.id));
    if t.get_raw(&key::orphan(ino))?.is_some() && !is_held(t, ino)? {
        let i = inode(t, ino)?;
        free_inode(t, &i, now)?;
        return Ok(true);
    }
    Ok(false)
}

/// Closes a file: applies the writer's length, then releases the session's
/// hold on it.
pub(crate) fn close<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    sid: u64,
    ino: u64,
    length: Option<(u64, u64)>,
    now: i64,
) -> FsResult<Reply> {
    if let Some((len, gen_)) = length {
        report_length(t, ino, len, gen_, now)?;
    }
    if sid != 0 {
        let mut s = session(t, sid)?;
        let freed = release(t, &mut s, ino, now)?;
        t.put(key::session(sid), &s);
        if freed {
            return Ok(Reply::Unit);
        }
    }
    Ok(Reply::Attr(inode(t, ino)?))
}

/// Releases session `sid`'s holds on `inos` (files it closed without a
/// length to report); files it does not hold are skipped, and unlinked ones
/// nobody holds any more are freed.
pub(crate) fn release_files<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    sid: u64,
    inos: &[u64],
    now: i64,
) -> FsResult<Reply> {
    let mut s = session(t, sid)?;
    for &ino in inos {
        if s.open_write.contains(&ino) || s.held.contains(&ino) {
            release(t, &mut s, ino, now)?;
        }
    }
    t.put(key::session(sid), &s);
    Ok(Reply::Unit)
}

/// Records that data of `ino` may reach `extent` bytes (see module docs).
/// Nothing to record when the size already covers it.
pub(crate) fn mark_extent<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    ino: u64,
    extent: u64,
) -> FsResult<Reply> {
    let Some(i) = t.get::<super::Inode>(&key::inode(ino))? else {
        return Ok(Reply::Unit);
    };
    let Some(layout) = &i.layout else {
        return Ok(Reply::Unit);
    };
    let k = key::extent(layout.object_id);
    let old = t.get::<u64>(&k)?.unwrap_or(0);
    if extent > i.size && extent > old {
        t.put(k, &extent);
    }
    Ok(Reply::Unit)
}

/// Closes a session (on request or expiry): drops its file locks, releases
/// every file it holds
/// (a file open for write may hold data beyond its size that the writer
/// never reported: its extent becomes unknown) and forgets its reply
/// cache.
pub(crate) fn close_session<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    sid: u64,
    now: i64,
) -> FsResult<Reply> {
    let mut s = session(t, sid)?;
    let inos: Vec<u64> = s.open_write.iter().chain(s.held.iter()).copied().collect();
    for ino in inos {
        mark_extent(t, ino, u64::MAX)?;
        release(t, &mut s, ino, now)?;
    }
    super::locks::release_session(t, sid)?;
    t.delete(key::session(sid));
    t.delete(key::acked(sid));
    for (k, _) in t.scan(&key::reply_prefix(sid), None, usize::MAX)? {
        t.delete(k);
    }
    Ok(Reply::Unit)
}

/// Applies a writer's report under truncate generation `gen_`: the writer
/// wrote data (clients report after writing, also when the length did not
/// grow), so the modification time and the version move, which tells
/// every other client's caches that the contents changed (close-to-open
/// for overwrites); the length only grows. A report of an older
/// generation changes nothing: the truncate since moved both.
pub(crate) fn report_length<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    ino: u64,
    length: u64,
    gen_: u64,
    now: i64,
) -> FsResult<Reply> {
    let mut i = inode(t, ino)?;
    if i.kind != Kind::File {
        fail!(IsDir, "inode {ino} is not a regular file");
    }
    if gen_ == i.truncate_gen {
        if length > i.size {
            charge_bytes(t, i.volume, i.ino, i.size, length)?;
            i.size = length;
        }
        i.mtime = now;
        i.ctime = now;
        put_inode(t, &mut i);
    }
    Ok(Reply::Attr(i))
}
