//! Restoring a snapshot into a new, writable volume (issue 17): `cairn
//! snapshot restore VOLUME NAME --to NEW`.
//!
//! # What a restored volume is
//!
//! A copy of the snapshot's namespace — every directory, file, symlink,
//! special file, hard link and xattr, with new inode numbers — whose files
//! **share the snapshot's data** until they are written: each file gets an
//! object of its own (new chunks are written there) and an [`Origin`]
//! record (`b` + ino) naming the source object and the snapshot's seq. A
//! client reads a file with an origin as the snapshot reads it (chunk `i`
//! of the source object at that seq, through the file's layout, which is
//! the source file's with only the object changed, so the chains are the
//! same); before its first write it copies the data into the file's own
//! object ([`Op::CopyUp`](super::Op::CopyUp) claims the copy for one
//! session, [`Op::CopyDone`](super::Op::CopyDone) drops the origin), or
//! drops the origin when the write truncates the file to nothing. So a
//! restore costs metadata only, dataset files that are only read are never
//! copied, and the granularity of copy-on-write is the file: the layouts
//! never change (DESIGN §3), which keeps the read path free of per-chunk
//! metadata, and training data and checkpoints are written whole far more
//! often than patched in place. The origin record is versioned by the
//! restored volume's own snapshots like inodes are, so a snapshot of a
//! restored volume reads its shared files through the same origin.
//!
//! # Lifetimes
//!
//! The snapshot a volume was restored from cannot be deleted while that
//! volume exists (`Q` + source + seq + restored volume; `B` + restored
//! volume names its base), as ZFS keeps a clone's origin snapshot: the
//! restored volume and its snapshots may read any of its data until they
//! are gone. Its source volume cannot be removed meanwhile either (a
//! volume with snapshots cannot). A file's own object is freed like any
//! other; an origin goes with its file's inode (unlink, the volume's
//! removal), never freeing the source object, which the snapshot holds.
//!
//! # The copy
//!
//! [`start`] makes the volume (its record, a copy of the snapshot's root
//! directory, its encryption keys and compression records, the
//! snapshot's usage as its usage) without a root entry: the volume is
//! listed as restoring but cannot be reached by path, and its name is
//! reserved (a mkdir or rename in the root directory that would take it
//! fails). Then [`step`] entries, proposed by the leader back to back,
//! each copy up to [`STEP_ENTRIES`] directory entries, breadth first (the
//! job keeps the queue of directories and a cursor in the first). A
//! source inode with more than one link is mapped (`M`) the first time it
//! is copied, so its other names link the same copy; the map is cleared
//! in the last steps, and the last one adds the volume's root entry.
//! Snapshots of the volume are refused until then.

use cairn_proto::names;

use super::snapshots::View;
use super::store::{Kv, Txn, key};
use super::{
    FsResult, Inode, Kind, Layout, Origin, ROOT_INO, Reply, RestoreJob, Volume, counter, fail,
    namespace, next,
};

/// Directory entries one [`step`] copies at most.
pub const STEP_ENTRIES: usize = 512;

/// How long a copy claim ([`copy_up`]) keeps other sessions out: a client
/// that claims a copy renews the claim while it copies, so a claim older
/// than this belongs to a client that died.
pub const CLAIM_NS: i64 = 30_000_000_000;

/// Returns the restore into volume `id`, if one is under way.
///
/// # Errors
/// The store failed.
pub(crate) fn job<K: Kv + ?Sized>(t: &Txn<'_, K>, id: u64) -> FsResult<Option<RestoreJob>> {
    Ok(t.get::<RestoreJob>(&key::restore(id))?)
}

/// Fails when a restore under way reserves `name` for its volume.
///
/// # Errors
/// `Exists` when one does; the store failed.
pub(crate) fn check_name_free<K: Kv + ?Sized>(t: &Txn<'_, K>, name: &str) -> FsResult<()> {
    for (k, v) in t.scan(key::RESTORES, None, usize::MAX)? {
        let j: RestoreJob = super::store::decode(&k, &v)?;
        if j.name == name {
            fail!(
                Exists,
                "volume {name} is being restored from snapshot {} ({} of {} inodes copied)",
                j.snapshot,
                j.copied,
                j.total
            );
        }
    }
    Ok(())
}

/// Fails when snapshot `seq` of volume `volume` has volumes restored from
/// it.
///
/// # Errors
/// `NotEmpty` naming them; the store failed.
pub(crate) fn check_no_dependents<K: Kv + ?Sized>(
    t: &Txn<'_, K>,
    volume: u64,
    seq: u64,
    name: &str,
) -> FsResult<()> {
    let rows = t.scan(&key::dependents_prefix(volume, seq), None, 16)?;
    if rows.is_empty() {
        return Ok(());
    }
    let mut names = Vec::new();
    for (k, _) in rows {
        let id = u64::from_be_bytes(k[17..25].try_into().unwrap_or([0; 8]));
        if let Some(v) = t.get::<Volume>(&key::volume(id))? {
            names.push(v.name);
        }
    }
    fail!(
        NotEmpty,
        "snapshot {name} is the base of restored volume(s) {}: they read its data; remove \
         them first",
        names.join(", ")
    )
}

/// Forgets what volume `id` owes to the snapshot it was restored from
/// (the volume is being removed).
///
/// # Errors
/// The store failed.
pub(crate) fn forget<K: Kv + ?Sized>(t: &mut Txn<'_, K>, id: u64) -> FsResult<()> {
    if let Some((src, seq)) = t.get::<(u64, u64)>(&key::base(id))? {
        t.delete(key::dependent(src, seq, id));
        t.delete(key::base(id));
    }
    Ok(())
}

/// Starts restoring snapshot `snapshot` of volume `volume` into a new
/// volume `to`.
///
/// # Errors
/// `NotFound` (no such volume or ready snapshot), `Exists` (`to` is
/// taken), `Invalid` / `NameTooLong` (a bad name); the store failed.
pub(crate) fn start<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    volume: &str,
    snapshot: &str,
    to: &str,
    now: i64,
) -> FsResult<Reply> {
    if let Err((code, why)) = names::validate(to) {
        return Err(super::FsError::new(code, format!("volume name: {why}")).into());
    }
    let src = namespace::volume_named(t, volume)?;
    let Some(snap) = super::snapshots::records(t, src.id)?
        .into_iter()
        .find(|s| s.name == snapshot && !s.deleting)
    else {
        fail!(NotFound, "volume {volume} has no snapshot {snapshot}");
    };
    if namespace::entry(t, ROOT_INO, to)?.is_some() {
        fail!(Exists, "a volume named {to} already exists");
    }
    check_name_free(t, to)?;
    let view = View::new(t, src.id, snap.seq)?;
    let root = view.inode(t, src.root_ino)?;
    let id = next(t, counter::NEXT_VOLUME, 1)?;
    let ino = next(t, counter::NEXT_INO, ROOT_INO + 1)?;
    let v = Volume {
        id,
        name: to.to_string(),
        root_ino: ino,
        policy: src.policy.clone(),
        snap_seq: 0,
        used_bytes: snap.used_bytes,
        used_inodes: snap.used_inodes,
    };
    t.put(key::volume(id), &v);
    // Shared files keep their salts and key versions, and their packed
    // units: the new volume reads them with the source's keys and
    // compression.
    for k in [key::volume_keys(src.id), key::volume_compression(src.id)] {
        if let Some(b) = t.get_raw(&k)? {
            let mut nk = k.clone();
            nk[1..9].copy_from_slice(&id.to_be_bytes());
            t.put_raw(nk, b);
        }
    }
    let mut r = root.clone();
    r.ino = ino;
    r.volume = id;
    r.parent = ROOT_INO;
    r.ctime = now;
    copy_inode(t, &view, &root, &r)?;
    t.put(key::dependent(src.id, snap.seq, id), &());
    t.put(key::base(id), &(src.id, snap.seq));
    let j = RestoreJob {
        source: src.id,
        seq: snap.seq,
        snapshot: snapshot.to_string(),
        name: to.to_string(),
        queue: vec![(root.ino, ino)],
        after: None,
        copied: 1,
        total: snap.used_inodes.max(1),
        cleaning: false,
    };
    t.put(key::restore(id), &j);
    Ok(Reply::Restore(v, Some(j)))
}

/// Writes copy `n` of source inode `src` (as the snapshot saw it) and its
/// xattrs.
fn copy_inode<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    view: &View,
    src: &Inode,
    n: &Inode,
) -> FsResult<()> {
    t.put(key::inode(n.ino), n);
    let prefix = key::xattr_prefix(src.ino);
    for (k, v) in view.scan(t, &prefix, None, usize::MAX)? {
        let mut nk = key::xattr_prefix(n.ino);
        nk.extend_from_slice(&k[prefix.len()..]);
        t.put_raw(nk, v);
    }
    Ok(())
}

/// Copies the next part of the restore into volume `id`; returns the job
/// as it stands (`None` once done).
///
/// # Errors
/// `NotFound` when no restore into `id` is under way; the store failed.
pub(crate) fn step<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    id: u64,
    limit: usize,
    now: i64,
) -> FsResult<Reply> {
    let Some(mut j) = job(t, id)? else {
        fail!(NotFound, "no restore into volume {id} is under way");
    };
    let Some(v) = t.get::<Volume>(&key::volume(id))? else {
        fail!(Internal, "restore into volume {id}, which has no record");
    };
    let mut budget = limit.max(1);
    if !j.cleaning {
        let view = View::new(t, j.source, j.seq)?;
        while budget > 0 {
            let Some(&(src_dir, new_dir)) = j.queue.first() else {
                j.cleaning = true;
                break;
            };
            let prefix = key::dir_prefix(src_dir);
            let after = j.after.as_ref().map(|a| key::dentry(src_dir, a));
            let rows = view.scan(t, &prefix, after.as_deref(), budget)?;
            let done = rows.len() < budget;
            for (k, val) in rows {
                budget -= 1;
                let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                let (ino, kind): (u64, Kind) = super::store::decode(&k, &val)?;
                copy_entry(t, &view, &mut j, id, new_dir, &name, ino, kind, now)?;
                j.after = Some(name);
            }
            if done {
                j.queue.remove(0);
                j.after = None;
            }
        }
    }
    if j.cleaning {
        let prefix = key::restore_map_prefix(id);
        let rows = t.scan(&prefix, None, budget.max(1))?;
        let more = rows.len() >= budget.max(1);
        for (k, _) in rows {
            t.delete(k);
        }
        if !more {
            // Done: the volume becomes reachable by its name.
            t.delete(key::restore(id));
            namespace::add_volume_entry(t, &v.name, v.root_ino, now)?;
            return Ok(Reply::Restore(v, None));
        }
    }
    t.put(key::restore(id), &j);
    Ok(Reply::Restore(v, Some(j)))
}

/// Copies one directory entry of the snapshot into directory `new_dir` of
/// the restored volume `id`.
#[allow(clippy::too_many_arguments)]
fn copy_entry<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    view: &View,
    j: &mut RestoreJob,
    id: u64,
    new_dir: u64,
    name: &str,
    ino: u64,
    kind: Kind,
    now: i64,
) -> FsResult<()> {
    if let Some(copy) = t.get::<u64>(&key::restore_map(id, ino))? {
        // Another name of an inode already copied.
        t.put(key::dentry(new_dir, name), &(copy, kind));
        return Ok(());
    }
    let src = view.inode(t, ino)?;
    let copy = next(t, counter::NEXT_INO, ROOT_INO + 1)?;
    let mut n = src.clone();
    n.ino = copy;
    n.volume = id;
    n.ctime = now;
    if kind == Kind::Dir {
        n.parent = new_dir;
        j.queue.push((ino, copy));
    }
    if let Some(l) = &src.layout {
        let object_id = next(t, counter::NEXT_OBJECT, 1)?;
        n.layout = Some(Layout {
            object_id,
            ..l.clone()
        });
        if src.size > 0 {
            t.put(
                key::origin(copy),
                &Origin {
                    volume: j.source,
                    seq: j.seq,
                    object: l.object_id,
                    copier: 0,
                    claimed_ns: 0,
                },
            );
        }
    }
    if kind != Kind::Dir && src.nlink > 1 {
        t.put(key::restore_map(id, ino), &copy);
    }
    copy_inode(t, view, &src, &n)?;
    t.put(key::dentry(new_dir, name), &(copy, kind));
    j.copied += 1;
    Ok(())
}

/// [`Op::CopyUp`](super::Op::CopyUp) by session `session`.
///
/// # Errors
/// `NotFound` (no such inode), `Unavailable` (another live session is
/// copying it); the store failed.
pub(crate) fn copy_up<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    session: u64,
    ino: u64,
    discard: bool,
    now: i64,
) -> FsResult<Reply> {
    let mut i = namespace::inode(t, ino)?;
    let Some(mut o) = t.get::<Origin>(&key::origin(ino))? else {
        return Ok(Reply::Origin(None));
    };
    if discard {
        t.delete(key::origin(ino));
        namespace::charge_bytes(t, i.volume, i.ino, i.size, 0)?;
        i.size = 0;
        i.truncate_gen += 1;
        i.mtime = now;
        i.ctime = now;
        namespace::put_inode(t, &mut i);
        return Ok(Reply::Origin(None));
    }
    if o.copier != 0 && o.copier != session && now.saturating_sub(o.claimed_ns) < CLAIM_NS {
        fail!(
            Unavailable,
            "another client is copying this file's data from its snapshot; retry shortly"
        );
    }
    o.copier = session;
    o.claimed_ns = now;
    t.put(key::origin(ino), &o);
    Ok(Reply::Origin(Some(o)))
}

/// [`Op::CopyDone`](super::Op::CopyDone) by session `session`.
///
/// # Errors
/// `StaleSequence` when the session does not hold the copy claim (it
/// expired and another took it); the store failed.
pub(crate) fn copy_done<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    session: u64,
    ino: u64,
) -> FsResult<Reply> {
    let Some(o) = t.get::<Origin>(&key::origin(ino))? else {
        return Ok(Reply::Origin(None));
    };
    if o.copier != session {
        fail!(
            StaleSequence,
            "this client's claim on copying inode {ino} lapsed and another client took it"
        );
    }
    t.delete(key::origin(ino));
    Ok(Reply::Origin(None))
}
