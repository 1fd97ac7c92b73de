//! Volume snapshots in the namespace (DESIGN §3, issue 17).
//!
//! Taking a snapshot is one log entry and O(1) in the volume's size: it
//! stores a [`Snapshot`] record under `S` + volume + seq, draws `seq` from
//! the cluster-wide counter `snap_seq` (so chunkservers fence writes with
//! one number for every volume), and makes `seq` the volume's **epoch**
//! (`Volume::snap_seq`: the largest seq among its snapshot records,
//! deleting ones included; 0 without any). Nothing is copied then. It also
//! bumps the chain-table version, so the new seq reaches chunkservers and
//! clients with the tables they watch.
//!
//! # Keeping the past: pre-images
//!
//! A volume's namespace records (its inodes `i`, directory entries `d` and
//! xattrs `x`) are copied on write. Every write of such a record goes
//! through [`keep_pre_image`] (called by [`Txn`] itself, so no operation
//! can forget it): when the record's volume has epoch `e > 0` and the
//! record has no pre-image for `e` yet, its value before the write is kept
//! under `P` + volume + `e` + key (tag 1 and the bytes, or tag 0 for
//! "absent"). A pre-image keyed `e` is therefore the record's value at
//! snapshot `e` (it did not change between the snapshot and its first
//! write), and a record is copied at most once per snapshot however often
//! it changes. Volumes without snapshots pay one lookup per entry.
//!
//! **Reading record `K` in snapshot `s`** ([`View`]): the pre-image of `K`
//! with the smallest epoch `e ≥ s` among the volume's snapshot records,
//! else the live value. If `K` changed between snapshot `s` and the next
//! one, its pre-image keyed `s` holds its value at `s`; if not, its value
//! at `s` is its value at the next snapshot, and so on up to now. A read
//! costs one lookup per later snapshot of the volume, so a volume keeps at
//! most [`MAX_PER_VOLUME`].
//!
//! # Deleting a snapshot
//!
//! Deleting snapshot `s` marks its record `deleting` (gone from listings
//! and reads at once) and merges its pre-images away, [`MERGE_PER_ENTRY`]
//! per log entry ([`merge`]; the leader proposes [`Op::MergeSnapshot`]
//! until the record is gone). With `p` the volume's previous snapshot
//! record: a pre-image keyed `s` of a record with none keyed `p` is moved
//! to `p` (the record did not change between `p` and `s`, so its value at
//! `s` is its value at `p`); otherwise, or without a `p`, it is dropped
//! (no older snapshot reads it; newer ones read keys ≥ theirs).
//!
//! Writes may interleave with a merge spread over several entries. While
//! `s` is deleting it stays in the epoch, so a write in epoch `s` keeps
//! its pre-image under `s` as before: if the record's `s` pre-image was
//! already moved to `p`, the new one is later dropped (a `p` one exists);
//! if the record had none, the new one is its value at `s`, hence at `p`,
//! and is moved. Readers of `p` see `s`'s pre-images until they move,
//! since deleting records stay in [`View`]'s list. Once no pre-image keyed
//! `s` remains the record goes and the epoch falls back to `p`: every
//! record changed since `p` then has a `p` pre-image, which is what the
//! copy-once rule needs.
//!
//! # Data the snapshots hold
//!
//! A file whose last link goes while its inode existed at the start of the
//! volume's epoch is in some snapshot: its object is *pinned* under `h` +
//! volume + epoch + object instead of going to the garbage list, and pins
//! merge like pre-images when snapshots are deleted (to `p`, or to the
//! garbage list when no older snapshot exists). Keeping a pin of an object
//! that `p` never saw is safe and rare (the file was born and freed
//! between `p` and `s`). A file born in the current epoch (its inode's
//! pre-image is "absent") goes to the garbage list at once.
//!
//! Data written in place into an object that a snapshot holds is the
//! chunkservers' part (clones by snap_seq, DESIGN §3), not this module's.

use cairn_proto::names;

use super::store::{Kv, Pairs, StoreError, Txn, key};
use super::{
    FsResult, Garbage, Inode, Kind, Reply, Snapshot, Volume, counter, fail, namespace, next,
};

/// The most snapshots (ready or deleting) a volume keeps: a snapshot read
/// looks up one pre-image per later snapshot.
pub const MAX_PER_VOLUME: usize = 256;

/// Pre-images and pins one log entry merges away at most.
pub const MERGE_PER_ENTRY: usize = 4096;

/// Tag of a pre-image: the record did not exist.
const ABSENT: u8 = 0;
/// Tag of a pre-image: the record's bytes follow.
const PRESENT: u8 = 1;

/// Returns volume `volume`'s snapshot records, deleting ones included, by
/// ascending seq.
pub(crate) fn records<K: Kv + ?Sized>(
    t: &Txn<'_, K>,
    volume: u64,
) -> Result<Vec<Snapshot>, StoreError> {
    t.scan(&key::snapshot_prefix(volume), None, usize::MAX)?
        .iter()
        .map(|(k, v)| super::store::decode(k, v))
        .collect()
}

/// Returns the volume of namespace record `key` (an `i`, `d` or `x` key),
/// `None` for records of the root directory (volume 0) or records whose
/// inode cannot be found.
fn volume_of_key<K: Kv + ?Sized>(
    t: &Txn<'_, K>,
    key: &[u8],
    new: Option<&[u8]>,
) -> Result<Option<u64>, StoreError> {
    let ino = key::id_of(key);
    let ikey = key::inode(ino);
    // The inode as this entry sees it, else as stored (freeing an inode
    // deletes its record before its xattrs), else (a new inode) the value
    // being written.
    let bytes = match t.get_raw(&ikey)? {
        Some(b) => Some(b),
        None => t.stored(&ikey)?,
    };
    let bytes = match (bytes, key.first(), new) {
        (Some(b), _, _) => b,
        (None, Some(b'i'), Some(n)) => n.to_vec(),
        _ => return Ok(None),
    };
    let inode: Inode = super::store::decode(&ikey, &bytes)?;
    Ok((inode.volume != 0).then_some(inode.volume))
}

/// Keeps the pre-image of namespace record `key` before it is written
/// (`new`: its new value, `None` for a delete) when its volume has
/// snapshots and the record has none for the volume's epoch yet. Called by
/// [`Txn`] for every write of an `i`, `d` or `x` key.
///
/// # Errors
/// The store failed or holds a record that does not decode.
pub(crate) fn keep_pre_image<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    key: &[u8],
    new: Option<&[u8]>,
) -> Result<(), StoreError> {
    if !t.snapshots_exist()? {
        return Ok(());
    }
    let Some(volume) = volume_of_key(t, key, new)? else {
        return Ok(());
    };
    let Some(v) = t.get::<Volume>(&key::volume(volume))? else {
        return Ok(());
    };
    if v.snap_seq == 0 {
        return Ok(());
    }
    let pk = key::pre_image(volume, v.snap_seq, key);
    if t.get_raw(&pk)?.is_some() {
        return Ok(());
    }
    let kept = match t.get_raw(key)? {
        Some(old) => {
            let mut b = Vec::with_capacity(old.len() + 1);
            b.push(PRESENT);
            b.extend_from_slice(&old);
            b
        }
        None => vec![ABSENT],
    };
    t.put_raw(pk, kept);
    Ok(())
}

/// Returns the epoch under which inode `i`'s object must be pinned rather
/// than freed: the volume's epoch when the inode existed at its start
/// (call after the inode's record was deleted in this entry, which kept
/// its pre-image), `None` when no snapshot can hold it.
///
/// # Errors
/// The store failed.
pub(crate) fn pin_epoch<K: Kv + ?Sized>(t: &Txn<'_, K>, i: &Inode) -> FsResult<Option<u64>> {
    if i.volume == 0 {
        return Ok(None);
    }
    let Some(v) = t.get::<Volume>(&key::volume(i.volume))? else {
        return Ok(None);
    };
    if v.snap_seq == 0 {
        return Ok(None);
    }
    let born_since = t
        .get_raw(&key::pre_image(i.volume, v.snap_seq, &key::inode(i.ino)))?
        .is_some_and(|p| p.first() == Some(&ABSENT));
    Ok((!born_since).then_some(v.snap_seq))
}

/// Sends a freed file's object to the garbage list, or pins it for the
/// snapshots that hold it.
pub(crate) fn free_object<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    i: &Inode,
    g: &Garbage,
) -> FsResult<()> {
    match pin_epoch(t, i)? {
        Some(epoch) => t.put(key::pinned(i.volume, epoch, g.layout.object_id), g),
        None => t.put(key::garbage(g.layout.object_id), g),
    }
    Ok(())
}

/// Takes snapshot `name` of volume `volume_name`.
///
/// # Errors
/// `NotFound` (no such volume), `Invalid` / `NameTooLong` (a bad name),
/// `Exists` (a snapshot of that name is being deleted), `NoSpace` (the
/// volume has [`MAX_PER_VOLUME`]).
pub(crate) fn create<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    volume_name: &str,
    name: &str,
    now: i64,
) -> FsResult<Reply> {
    if let Err((code, why)) = names::validate(name) {
        return Err(super::FsError::new(code, format!("snapshot name: {why}")).into());
    }
    let mut v = namespace::volume_named(t, volume_name)?;
    let all = records(t, v.id)?;
    if let Some(s) = all.iter().find(|s| s.name == name) {
        if s.deleting {
            fail!(
                Exists,
                "snapshot {name} of volume {volume_name} is being deleted; use another name or \
                 retry when it is gone"
            );
        }
        return Ok(Reply::Snapshot(s.clone()));
    }
    if all.len() >= MAX_PER_VOLUME {
        fail!(
            NoSpace,
            "volume {volume_name} has {} snapshots, the most it keeps; delete some first",
            all.len()
        );
    }
    let seq = next(t, counter::SNAP_SEQ, 1)?;
    let s = Snapshot {
        volume: v.id,
        seq,
        name: name.to_owned(),
        created_ns: now,
        used_bytes: v.used_bytes,
        used_inodes: v.used_inodes,
        deleting: false,
    };
    t.put(key::snapshot(v.id, seq), &s);
    v.snap_seq = seq;
    t.put(key::volume(v.id), &v);
    // The chain tables carry the cluster's snap_seq: their new version
    // reaches every chunkserver and client watching them at once.
    next(t, counter::CHAINS_VERSION, 0)?;
    Ok(Reply::Snapshot(s))
}

/// Deletes snapshot `name` of volume `volume_name` and merges away what
/// one entry may of its records.
///
/// # Errors
/// `NotFound` (no such volume or ready snapshot).
pub(crate) fn delete<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    volume_name: &str,
    name: &str,
) -> FsResult<Reply> {
    let v = namespace::volume_named(t, volume_name)?;
    let Some(mut s) = records(t, v.id)?
        .into_iter()
        .find(|s| s.name == name && !s.deleting)
    else {
        fail!(NotFound, "volume {volume_name} has no snapshot {name}");
    };
    super::restore::check_no_dependents(t, v.id, s.seq, name)?;
    s.deleting = true;
    t.put(key::snapshot(v.id, s.seq), &s);
    merge(t, v.id, s.seq, MERGE_PER_ENTRY)?;
    Ok(Reply::Snapshot(s))
}

/// Merges away up to `limit` pre-images and pins of deleting snapshot
/// `seq` of volume `volume` (see the module docs), and its record once none
/// is left. Returns whether the snapshot is gone.
///
/// # Errors
/// `Invalid` when the snapshot exists and is not being deleted.
pub(crate) fn merge<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    volume: u64,
    seq: u64,
    limit: usize,
) -> FsResult<bool> {
    let all = records(t, volume)?;
    let Some(s) = all.iter().find(|s| s.seq == seq) else {
        return Ok(true);
    };
    if !s.deleting {
        fail!(Invalid, "snapshot {} is not being deleted", s.name);
    }
    let prev = all.iter().map(|s| s.seq).filter(|q| *q < seq).max();
    let mut budget = limit;
    for (k, v) in t.scan(&key::pre_image_prefix(volume, seq), None, budget)? {
        budget -= 1;
        t.delete(k.clone());
        if let Some(p) = prev {
            let to = key::pre_image(volume, p, &k[key::PRE_IMAGE_PREFIX_LEN..]);
            if t.get_raw(&to)?.is_none() {
                t.put_raw(to, v);
            }
        }
    }
    if budget == 0 {
        return Ok(false);
    }
    for (k, v) in t.scan(&key::pinned_prefix(volume, seq), None, budget)? {
        budget -= 1;
        t.delete(k.clone());
        let object =
            u64::from_be_bytes(k[key::PRE_IMAGE_PREFIX_LEN..].try_into().unwrap_or([0; 8]));
        match prev {
            Some(p) => t.put_raw(key::pinned(volume, p, object), v),
            None => t.put_raw(key::garbage(object), v),
        }
    }
    if budget == 0 {
        return Ok(false);
    }
    t.delete(key::snapshot(volume, seq));
    if let Some(mut v) = t.get::<Volume>(&key::volume(volume))? {
        v.snap_seq = all
            .iter()
            .map(|s| s.seq)
            .filter(|q| *q != seq)
            .max()
            .unwrap_or(0);
        t.put(key::volume(volume), &v);
    }
    Ok(true)
}

/// The namespace of one volume as snapshot `seq` saw it.
pub(crate) struct View {
    /// The volume.
    pub volume: u64,
    /// The snapshot.
    pub snapshot: Snapshot,
    /// The seqs whose pre-images a read looks at, in order: the snapshot's
    /// and every later one of the volume (deleting ones included).
    seqs: Vec<u64>,
}

impl View {
    /// Returns the view of volume `volume`'s ready snapshot `seq`.
    ///
    /// # Errors
    /// `NotFound` when there is no such ready snapshot.
    pub(crate) fn new<K: Kv + ?Sized>(t: &Txn<'_, K>, volume: u64, seq: u64) -> FsResult<View> {
        let all = records(t, volume)?;
        let Some(snapshot) = all.iter().find(|s| s.seq == seq && !s.deleting).cloned() else {
            fail!(NotFound, "volume {volume} has no snapshot {seq}");
        };
        Ok(View {
            volume,
            snapshot,
            seqs: all.iter().map(|s| s.seq).filter(|q| *q >= seq).collect(),
        })
    }

    /// Returns namespace record `key` as the snapshot saw it.
    ///
    /// # Errors
    /// The store failed.
    pub(crate) fn get_raw<K: Kv + ?Sized>(
        &self,
        t: &Txn<'_, K>,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        for e in &self.seqs {
            if let Some(mut p) = t.get_raw(&key::pre_image(self.volume, *e, key))? {
                return Ok(match p.first() {
                    Some(&PRESENT) => {
                        p.remove(0);
                        Some(p)
                    }
                    _ => None,
                });
            }
        }
        t.get_raw(key)
    }

    /// Returns inode `ino` as the snapshot saw it.
    ///
    /// # Errors
    /// `NotFound` when it did not exist in the snapshot's volume.
    pub(crate) fn inode<K: Kv + ?Sized>(&self, t: &Txn<'_, K>, ino: u64) -> FsResult<Inode> {
        let k = key::inode(ino);
        if let Some(b) = self.get_raw(t, &k)? {
            let i: Inode = super::store::decode(&k, &b)?;
            if i.volume == self.volume {
                return Ok(i);
            }
        }
        fail!(
            NotFound,
            "inode {ino} is not in snapshot {}",
            self.snapshot.name
        )
    }

    /// Returns the entry `name` of directory `parent` as the snapshot saw
    /// it.
    ///
    /// # Errors
    /// The store failed.
    pub(crate) fn entry<K: Kv + ?Sized>(
        &self,
        t: &Txn<'_, K>,
        parent: u64,
        name: &str,
    ) -> FsResult<Option<(u64, Kind)>> {
        let k = key::dentry(parent, name);
        Ok(match self.get_raw(t, &k)? {
            Some(b) => Some(super::store::decode(&k, &b)?),
            None => None,
        })
    }

    /// Returns up to `limit` records under `prefix` after `after` as the
    /// snapshot saw them, in key order: the live records and every
    /// pre-image of a later snapshot, each key resolved as
    /// [`View::get_raw`] does.
    ///
    /// # Errors
    /// The store failed.
    pub(crate) fn scan<K: Kv + ?Sized>(
        &self,
        t: &Txn<'_, K>,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Pairs, StoreError> {
        let page = limit.clamp(1, 10_000) + 1;
        let mut out = Vec::new();
        let mut cursor = after.map(<[u8]>::to_vec);
        loop {
            let mut keys = std::collections::BTreeSet::new();
            // The smallest last key among the sources that filled a page:
            // keys up to it are complete from every source.
            let mut horizon: Option<Vec<u8>> = None;
            let mut take = |rows: Pairs, strip: usize| {
                let full = rows.len() == page;
                let last = rows.last().map(|(k, _)| k[strip..].to_vec());
                keys.extend(rows.into_iter().map(|(k, _)| k[strip..].to_vec()));
                if full && let Some(l) = last {
                    horizon = Some(horizon.take().map_or(l.clone(), |h: Vec<u8>| h.min(l)));
                }
            };
            for e in &self.seqs {
                let pp = key::pre_image(self.volume, *e, prefix);
                let after = cursor.as_ref().map(|c| key::pre_image(self.volume, *e, c));
                take(
                    t.scan(&pp, after.as_deref(), page)?,
                    key::PRE_IMAGE_PREFIX_LEN,
                );
            }
            take(t.scan(prefix, cursor.as_deref(), page)?, 0);
            for k in keys {
                if horizon.as_ref().is_some_and(|h| k > *h) {
                    break;
                }
                if let Some(v) = self.get_raw(t, &k)? {
                    out.push((k, v));
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
            match horizon {
                Some(h) => cursor = Some(h),
                None => return Ok(out),
            }
        }
    }
}
