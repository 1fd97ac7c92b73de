//! Namespace mutations: mkdir, create, symlink, mknod, link, unlink, rmdir,
//! rename, setattr, xattrs and volumes.
//!
//! Rules kept here (POSIX where POSIX applies):
//! * Names are checked by `cairn_proto::names::validate` (no '/', no NUL,
//!   not empty, not '.'/'..', at most 255 bytes).
//! * A directory's nlink is 2 plus its subdirectories; every directory
//!   records its parent so rename can refuse a move into its own subtree.
//! * Volumes are the directories in the root. An entry's volume is the
//!   volume of the directory holding it (entries of the root are in volume
//!   0), and rename/link between different volumes fail with EXDEV.
//! * A new file's encryption salt and key version are decided by
//!   [`keys::for_new_file`] from its volume (see [`super::keys`]).
//! * When a file's last link goes away and no session holds it open its
//!   layout goes to the garbage list (freed by the GC after a grace
//!   period); otherwise it stays as an orphan until the last holder closes.

use cairn_proto::names;

use super::store::{Kv, Txn, key};
use super::{
    DirQuota, FsError, FsResult, Inode, Kind, Layout, OpError, ROOT_INO, Reply, SetAttr, SetTime,
    Volume, VolumePolicy, compression, counter, fact, fail, keys, next, session,
};

/// Longest symlink target, in bytes (PATH_MAX).
const SYMLINK_MAX: usize = 4096;
/// Largest xattr value, in bytes (XATTR_SIZE_MAX).
const XATTR_VALUE_MAX: usize = 64 * 1024;
/// Most hard links to one file.
const LINK_MAX: u32 = 65_000;

/// Returns the inode `ino`.
pub(crate) fn inode<K: Kv + ?Sized>(t: &Txn<'_, K>, ino: u64) -> FsResult<Inode> {
    match t.get::<Inode>(&key::inode(ino))? {
        Some(i) => Ok(i),
        None => fail!(NotFound, "no inode {ino}"),
    }
}

/// Returns the directory `ino`.
fn dir<K: Kv + ?Sized>(t: &Txn<'_, K>, ino: u64) -> FsResult<Inode> {
    let i = inode(t, ino)?;
    if i.kind != Kind::Dir {
        fail!(NotDir, "inode {ino} is not a directory");
    }
    Ok(i)
}

fn check_name(name: &str) -> FsResult<()> {
    names::validate(name).map_err(|(code, why)| {
        let shown: String = name.chars().take(64).collect();
        OpError::Fs(FsError::new(code, format!("{why}: {shown:?}")))
    })
}

/// Returns the child inode number and kind under `parent/name`.
pub(crate) fn entry<K: Kv + ?Sized>(
    t: &Txn<'_, K>,
    parent: u64,
    name: &str,
) -> FsResult<Option<(u64, Kind)>> {
    Ok(t.get::<(u64, Kind)>(&key::dentry(parent, name))?)
}

/// Stores `i`, bumping its version.
pub(crate) fn put_inode<K: Kv + ?Sized>(t: &mut Txn<'_, K>, i: &mut Inode) {
    i.version += 1;
    t.put(key::inode(i.ino), i);
}

pub use cairn_proto::names::SNAPSHOTS_DIR;

/// Writes directory entry `name` → `entry` of `parent`.
///
/// # Errors
/// `NotPermitted` for [`SNAPSHOTS_DIR`] in a volume's root.
fn put_entry<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    parent: u64,
    name: &str,
    entry: &(u64, Kind),
) -> FsResult<()> {
    if name == SNAPSHOTS_DIR && parent != ROOT_INO && inode(t, parent)?.parent == ROOT_INO {
        fail!(
            NotPermitted,
            "{SNAPSHOTS_DIR} is reserved in a volume's root: the volume's snapshots are read \
             there"
        );
    }
    t.put(key::dentry(parent, name), entry);
    Ok(())
}

/// Adds volume root `root` under `name` in the root directory (the end of
/// a restore; the name was reserved for it).
///
/// # Errors
/// `Exists` when the name is taken after all; the store failed.
pub(crate) fn add_volume_entry<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    name: &str,
    root: u64,
    now: i64,
) -> FsResult<()> {
    if entry(t, ROOT_INO, name)?.is_some() {
        fail!(Exists, "{name:?} already exists in the root directory");
    }
    let mut p = dir(t, ROOT_INO)?;
    t.put(key::dentry(ROOT_INO, name), &(root, Kind::Dir));
    p.nlink += 1;
    touch_dir(&mut p, now);
    put_inode(t, &mut p);
    Ok(())
}

fn touch_dir(d: &mut Inode, now: i64) {
    d.mtime = now;
    d.ctime = now;
}

fn volume_of<K: Kv + ?Sized>(t: &Txn<'_, K>, id: u64) -> FsResult<Option<Volume>> {
    if id == 0 {
        return Ok(None);
    }
    Ok(t.get::<Volume>(&key::volume(id))?)
}

/// Returns the volume named `name` (a directory in the root).
pub(crate) fn volume_named<K: Kv + ?Sized>(t: &Txn<'_, K>, name: &str) -> FsResult<Volume> {
    check_name(name)?;
    if let Some((ino, Kind::Dir)) = entry(t, ROOT_INO, name)?
        && let Some(v) = volume_of(t, inode(t, ino)?.volume)?
    {
        return Ok(v);
    }
    fail!(NotFound, "no volume {name}")
}

/// Sets volume `name`'s quotas (`None`: unchanged; 0: unlimited). The
/// reply carries the volume's keys and compression like any volume reply.
pub(crate) fn set_volume_quota<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    name: &str,
    bytes: Option<u64>,
    inodes: Option<u64>,
) -> FsResult<Reply> {
    let mut v = volume_named(t, name)?;
    if let Some(b) = bytes {
        v.policy.quota_bytes = b;
    }
    if let Some(i) = inodes {
        v.policy.quota_inodes = i;
    }
    t.put(key::volume(v.id), &v);
    Ok(Reply::VolumeWith {
        keys: super::keys::of(t, v.id)?,
        compression: super::compression::of(t, v.id)?,
        volume: v,
    })
}

/// Charges one inode (and `bytes`) to volume `id`, refusing past its quota.
fn charge<K: Kv + ?Sized>(t: &mut Txn<'_, K>, id: u64, inodes: i64, bytes: i64) -> FsResult<()> {
    let Some(mut v) = volume_of(t, id)? else {
        return Ok(());
    };
    let new_inodes = v.used_inodes.saturating_add_signed(inodes);
    let new_bytes = v.used_bytes.saturating_add_signed(bytes);
    if inodes > 0 && v.policy.quota_inodes != 0 && new_inodes > v.policy.quota_inodes {
        fail!(
            QuotaExceeded,
            "volume {} is at its inode quota of {}",
            v.name,
            v.policy.quota_inodes
        );
    }
    if bytes > 0 && v.policy.quota_bytes != 0 && new_bytes > v.policy.quota_bytes {
        fail!(
            QuotaExceeded,
            "volume {} would exceed its byte quota of {}",
            v.name,
            v.policy.quota_bytes
        );
    }
    v.used_inodes = new_inodes;
    v.used_bytes = new_bytes;
    t.put(key::volume(id), &v);
    Ok(())
}

/// Charges a size change of file `ino` to its volume and to the quota
/// directory it is under, if any.
pub(crate) fn charge_bytes<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    volume: u64,
    ino: u64,
    old: u64,
    new: u64,
) -> FsResult<()> {
    let delta = i64::try_from(new).unwrap_or(i64::MAX) - i64::try_from(old).unwrap_or(i64::MAX);
    charge(t, volume, 0, delta)?;
    if let Some(q) = quota_member(t, ino)? {
        charge_dir(t, q, 0, delta)?;
    }
    Ok(())
}

// ------------------------------------------------------- directory quotas

/// Directory `ino`'s own quota, if it is a quota directory.
pub(crate) fn dir_quota<K: Kv + ?Sized>(t: &Txn<'_, K>, ino: u64) -> FsResult<Option<DirQuota>> {
    Ok(t.get(&key::dir_quota(ino))?)
}

/// The quota directory inode `ino` is charged to, if any.
pub(crate) fn quota_member<K: Kv + ?Sized>(t: &Txn<'_, K>, ino: u64) -> FsResult<Option<u64>> {
    Ok(t.get_raw(&key::quota_member(ino))?
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map(u64::from_be_bytes))
}

/// The quota directory a new entry of directory `d` is charged to: `d`
/// itself when it is one, else the one `d` is under.
fn quota_for_child<K: Kv + ?Sized>(t: &Txn<'_, K>, d: &Inode) -> FsResult<Option<u64>> {
    if t.get_raw(&key::dir_quota(d.ino))?.is_some() {
        return Ok(Some(d.ino));
    }
    quota_member(t, d.ino)
}

/// Charges `inodes` and `bytes` to quota directory `q`, refusing past its
/// quotas (as [`charge`] does for volumes).
fn charge_dir<K: Kv + ?Sized>(t: &mut Txn<'_, K>, q: u64, inodes: i64, bytes: i64) -> FsResult<()> {
    let Some(mut d) = dir_quota(t, q)? else {
        return Ok(());
    };
    let new_inodes = d.used_inodes.saturating_add_signed(inodes);
    let new_bytes = d.used_bytes.saturating_add_signed(bytes);
    if inodes > 0 && d.quota_inodes != 0 && new_inodes > d.quota_inodes {
        fail!(
            QuotaExceeded,
            "directory {q} is at its inode quota of {}",
            d.quota_inodes
        );
    }
    if bytes > 0 && d.quota_bytes != 0 && new_bytes > d.quota_bytes {
        fail!(
            QuotaExceeded,
            "directory {q} would exceed its byte quota of {}",
            d.quota_bytes
        );
    }
    d.used_inodes = new_inodes;
    d.used_bytes = new_bytes;
    t.put(key::dir_quota(q), &d);
    Ok(())
}

/// Charges new inode `ino`, made in directory `p` of volume `volume`, to
/// the volume and to the quota directory it falls under (recorded).
fn charge_new<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    p: &Inode,
    volume: u64,
    ino: u64,
) -> FsResult<()> {
    charge(t, volume, 1, 0)?;
    if let Some(q) = quota_for_child(t, p)? {
        charge_dir(t, q, 1, 0)?;
        t.put_raw(key::quota_member(ino), q.to_be_bytes().to_vec());
    }
    Ok(())
}

/// Gives back what inode `ino` was charged to its quota directory, if any.
fn uncharge_member<K: Kv + ?Sized>(t: &mut Txn<'_, K>, ino: u64, bytes: u64) -> FsResult<()> {
    if let Some(q) = quota_member(t, ino)? {
        charge_dir(t, q, -1, -(i64::try_from(bytes).unwrap_or(i64::MAX)))?;
        t.delete(key::quota_member(ino));
    }
    Ok(())
}

/// Fails with EXDEV when inode `ino` would move or be linked into
/// directory `dest` under another quota directory than it is charged to.
fn refuse_quota_crossing<K: Kv + ?Sized>(t: &Txn<'_, K>, ino: u64, dest: &Inode) -> FsResult<()> {
    let from = quota_member(t, ino)?;
    let to = quota_for_child(t, dest)?;
    if from != to {
        let name =
            |q: Option<u64>| q.map_or_else(|| "none".to_string(), |q| format!("directory {q}"));
        fail!(
            CrossVolume,
            "inode {ino} is charged to quota {}, the destination to quota {}: moving it \
             across a directory quota is a copy (EXDEV)",
            name(from),
            name(to)
        );
    }
    Ok(())
}

/// Sets directory `ino`'s quotas (`None` keeps one, 0: unlimited), making
/// it a quota directory first if it is not one (see [`DirQuota`]).
pub(crate) fn set_dir_quota<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    ino: u64,
    bytes: Option<u64>,
    inodes: Option<u64>,
) -> FsResult<Reply> {
    let d = dir(t, ino)?;
    let mut q = match dir_quota(t, ino)? {
        Some(q) => q,
        None => {
            if d.ino == ROOT_INO || d.parent == ROOT_INO {
                fail!(
                    Invalid,
                    "directory {ino} is a volume's root: set the volume's quota instead"
                );
            }
            if let Some(outer) = quota_member(t, ino)? {
                fail!(
                    Invalid,
                    "directory {ino} is under quota directory {outer}: directory quotas do not nest"
                );
            }
            if !is_empty_dir(t, ino)? {
                fail!(
                    NotEmpty,
                    "directory {ino} is not empty: a directory quota starts on an empty directory"
                );
            }
            DirQuota {
                ino,
                volume: d.volume,
                quota_bytes: 0,
                quota_inodes: 0,
                used_bytes: 0,
                used_inodes: 0,
            }
        }
    };
    if let Some(b) = bytes {
        q.quota_bytes = b;
    }
    if let Some(i) = inodes {
        q.quota_inodes = i;
    }
    t.put(key::dir_quota(ino), &q);
    Ok(Reply::DirQuota(q))
}

fn new_inode(ino: u64, kind: Kind, mode: u32, uid: u32, gid: u32, now: i64) -> Inode {
    Inode {
        ino,
        kind,
        mode: mode & 0o7777,
        uid,
        gid,
        size: 0,
        nlink: 1,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        volume: 0,
        parent: 0,
        layout: None,
        truncate_gen: 0,
        version: 0,
        target: None,
        salt: Vec::new(),
        key_version: 0,
    }
}

/// Creates the root directory and records the cluster id (first entry).
pub(crate) fn init_cluster<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    cluster_id: &str,
    now: i64,
) -> FsResult<Reply> {
    if t.get_raw(&key::meta(fact::CLUSTER_ID))?.is_some() {
        fail!(Exists, "the cluster is already initialized");
    }
    t.put(key::meta(fact::CLUSTER_ID), &cluster_id.to_string());
    let mut root = new_inode(ROOT_INO, Kind::Dir, 0o755, 0, 0, now);
    root.nlink = 2;
    root.parent = ROOT_INO;
    put_inode(t, &mut root);
    t.put(key::meta(counter::NEXT_INO), &(ROOT_INO + 1));
    Ok(Reply::Attr(root))
}

/// mkdir(2). In the root, a new directory is a new volume with `policy`
/// (the default policy when `None`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn mkdir<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    parent: u64,
    name: &str,
    mode: u32,
    uid: u32,
    gid: u32,
    policy: Option<&VolumePolicy>,
    now: i64,
) -> FsResult<Reply> {
    check_name(name)?;
    let mut p = dir(t, parent)?;
    if entry(t, parent, name)?.is_some() {
        fail!(Exists, "{name:?} already exists in directory {parent}");
    }
    if parent == ROOT_INO {
        super::restore::check_name_free(t, name)?;
    }
    let ino = next(t, counter::NEXT_INO, ROOT_INO + 1)?;
    let mut d = new_inode(ino, Kind::Dir, mode, uid, gid, now);
    d.nlink = 2;
    d.parent = parent;
    if parent == ROOT_INO {
        let id = next(t, counter::NEXT_VOLUME, 1)?;
        let v = Volume {
            id,
            name: name.to_string(),
            root_ino: ino,
            policy: policy.cloned().unwrap_or_default(),
            snap_seq: 0,
            used_bytes: 0,
            used_inodes: 0,
        };
        t.put(key::volume(id), &v);
        d.volume = id;
    } else {
        d.volume = p.volume;
    }
    charge_new(t, &p, d.volume, ino)?;
    put_inode(t, &mut d);
    put_entry(t, parent, name, &(ino, Kind::Dir))?;
    p.nlink += 1;
    touch_dir(&mut p, now);
    put_inode(t, &mut p);
    Ok(Reply::Entry {
        attr: d,
        parent: Some(p),
    })
}

/// Checks a volume policy.
pub(crate) fn validate_policy(p: &VolumePolicy) -> FsResult<()> {
    if !(1..=3).contains(&p.replication) {
        fail!(
            Invalid,
            "replication must be 1, 2 or 3, not {}",
            p.replication
        );
    }
    if !p.chunk_size.is_power_of_two() || !(64 << 10..=4 << 30).contains(&p.chunk_size) {
        fail!(
            Invalid,
            "chunk size must be a power of two from 64 KiB to 4 GiB, not {}",
            p.chunk_size
        );
    }
    if !(1..=256).contains(&p.stripe_width) {
        fail!(
            Invalid,
            "stripe width must be 1 to 256, not {}",
            p.stripe_width
        );
    }
    Ok(())
}

/// Creates a volume: a directory in the root with its own policy.
pub(crate) fn create_volume<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    name: &str,
    policy: &VolumePolicy,
    now: i64,
) -> FsResult<Reply> {
    validate_policy(policy)?;
    let reply = mkdir(t, ROOT_INO, name, 0o755, 0, 0, Some(policy), now)?;
    let Reply::Entry { attr, .. } = reply else {
        fail!(Internal, "mkdir returned no entry");
    };
    match volume_of(t, attr.volume)? {
        Some(v) => Ok(Reply::Volume(v)),
        None => fail!(Internal, "volume {} vanished", attr.volume),
    }
}

/// Arguments of [`create`].
pub(crate) struct NewFile<'a> {
    pub parent: u64,
    pub name: &'a str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub exclusive: bool,
    pub salt: &'a [u8],
}

/// Picks a new file's layout from its volume's policy: a new object id and
/// `stripe_width` consecutive chains of the table, starting at a cursor that
/// advances per file so load spreads evenly.
fn new_layout<K: Kv + ?Sized>(t: &mut Txn<'_, K>, policy: &VolumePolicy) -> FsResult<Layout> {
    let object_id = next(t, counter::NEXT_OBJECT, 1)?;
    let from = key::meta(counter::EXTENTS_FROM);
    if t.get::<u64>(&from)?.is_none() {
        t.put(from, &object_id);
    }
    let table = t.chain_ids(policy.replication)?;
    let mut chains = Vec::new();
    if !table.is_empty() {
        let width = (policy.stripe_width as usize).min(table.len());
        let start = next(t, counter::CREATE_CURSOR, 0)? as usize;
        chains = (0..width)
            .map(|k| table[(start + k) % table.len()])
            .collect();
    }
    Ok(Layout {
        object_id,
        chunk_size: policy.chunk_size,
        chains,
        replication: policy.replication,
    })
}

/// open(O_CREAT) of a regular file.
pub(crate) fn create<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    f: NewFile<'_>,
    now: i64,
) -> FsResult<Reply> {
    check_name(f.name)?;
    let mut p = dir(t, f.parent)?;
    if let Some((ino, kind)) = entry(t, f.parent, f.name)? {
        if f.exclusive {
            fail!(Exists, "{:?} already exists", f.name);
        }
        if kind == Kind::Dir {
            fail!(IsDir, "{:?} is a directory", f.name);
        }
        return Ok(Reply::Entry {
            attr: inode(t, ino)?,
            parent: Some(p),
        });
    }
    let policy = volume_of(t, p.volume)?
        .map(|v| v.policy)
        .unwrap_or_default();
    let (salt, key_version) = keys::for_new_file(t, p.volume, f.salt)?;
    let ino = next(t, counter::NEXT_INO, ROOT_INO + 1)?;
    let mut i = new_inode(ino, Kind::File, f.mode, f.uid, f.gid, now);
    i.volume = p.volume;
    i.layout = Some(new_layout(t, &policy)?);
    i.salt = salt;
    i.key_version = key_version;
    charge_new(t, &p, i.volume, ino)?;
    put_inode(t, &mut i);
    put_entry(t, f.parent, f.name, &(ino, Kind::File))?;
    touch_dir(&mut p, now);
    put_inode(t, &mut p);
    Ok(Reply::Entry {
        attr: i,
        parent: Some(p),
    })
}

/// symlink(2).
pub(crate) fn symlink<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    parent: u64,
    name: &str,
    target: &str,
    uid: u32,
    gid: u32,
    now: i64,
) -> FsResult<Reply> {
    check_name(name)?;
    if target.is_empty() {
        fail!(Invalid, "empty symlink target");
    }
    if target.contains('\0') {
        fail!(Invalid, "symlink target contains a NUL byte");
    }
    if target.len() > SYMLINK_MAX {
        fail!(
            NameTooLong,
            "symlink target longer than {SYMLINK_MAX} bytes"
        );
    }
    let leaf = (Kind::Symlink, 0o777, uid, gid);
    new_leaf(t, parent, name, leaf, now, |i| {
        i.size = target.len() as u64;
        i.target = Some(target.to_string());
    })
}

/// mknod(2): a FIFO, socket or device node. Special files hold no data
/// in Cairn (no layout, size 0): the kernel serves their I/O itself.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mknod<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    parent: u64,
    name: &str,
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    now: i64,
) -> FsResult<Reply> {
    check_name(name)?;
    if !kind.is_special() {
        fail!(
            Invalid,
            "mknod makes FIFOs, sockets and device nodes, not {kind:?} (use create, mkdir or symlink)"
        );
    }
    new_leaf(t, parent, name, (kind, mode, uid, gid), now, |_| {})
}

/// Makes an inode that is neither a directory nor a regular file (a
/// symlink, a special file) of `(kind, mode, uid, gid)`, named `name` in
/// directory `parent`; `fill` sets what its kind adds.
fn new_leaf<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    parent: u64,
    name: &str,
    (kind, mode, uid, gid): (Kind, u32, u32, u32),
    now: i64,
    fill: impl FnOnce(&mut Inode),
) -> FsResult<Reply> {
    let mut p = dir(t, parent)?;
    if entry(t, parent, name)?.is_some() {
        fail!(Exists, "{name:?} already exists");
    }
    let ino = next(t, counter::NEXT_INO, ROOT_INO + 1)?;
    let mut i = new_inode(ino, kind, mode, uid, gid, now);
    i.volume = p.volume;
    fill(&mut i);
    charge_new(t, &p, i.volume, ino)?;
    put_inode(t, &mut i);
    put_entry(t, parent, name, &(ino, kind))?;
    touch_dir(&mut p, now);
    put_inode(t, &mut p);
    Ok(Reply::Entry {
        attr: i,
        parent: Some(p),
    })
}

/// link(2).
pub(crate) fn link<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    ino: u64,
    new_parent: u64,
    new_name: &str,
    now: i64,
) -> FsResult<Reply> {
    check_name(new_name)?;
    let mut i = inode(t, ino)?;
    if i.kind == Kind::Dir {
        fail!(NotPermitted, "hard links to directories are not allowed");
    }
    if i.nlink == 0 {
        fail!(NotFound, "inode {ino} has been unlinked");
    }
    let mut np = dir(t, new_parent)?;
    if np.volume != i.volume {
        fail!(CrossVolume, "cannot link across volumes");
    }
    refuse_quota_crossing(t, ino, &np)?;
    if entry(t, new_parent, new_name)?.is_some() {
        fail!(Exists, "{new_name:?} already exists");
    }
    if i.nlink >= LINK_MAX {
        fail!(TooManyLinks, "inode {ino} has {} links", i.nlink);
    }
    i.nlink += 1;
    i.ctime = now;
    put_inode(t, &mut i);
    put_entry(t, new_parent, new_name, &(ino, i.kind))?;
    touch_dir(&mut np, now);
    put_inode(t, &mut np);
    Ok(Reply::Entry {
        attr: i,
        parent: Some(np),
    })
}

/// Drops one link of a non-directory `i` (its dentry already removed).
/// Returns whether the last link went away.
fn drop_link<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    mut i: Inode,
    holder: Option<u64>,
    now: i64,
) -> FsResult<bool> {
    i.nlink = i.nlink.saturating_sub(1);
    i.ctime = now;
    if i.nlink > 0 {
        put_inode(t, &mut i);
        return Ok(false);
    }
    if let Some(s) = holder {
        session::hold(t, s, i.ino)?;
    }
    if session::is_held(t, i.ino)? {
        put_inode(t, &mut i);
        t.put_raw(key::orphan(i.ino), Vec::new());
    } else {
        free_inode(t, &i, now)?;
    }
    Ok(true)
}

/// Removes an inode with no links and no holders: its record, its xattrs,
/// its quota charge; a file's data goes to the garbage list.
pub(crate) fn free_inode<K: Kv + ?Sized>(t: &mut Txn<'_, K>, i: &Inode, now: i64) -> FsResult<()> {
    t.delete(key::inode(i.ino));
    t.delete(key::orphan(i.ino));
    // A restored file's link to its snapshot's data (the snapshot keeps
    // the data itself).
    if t.get_raw(&key::origin(i.ino))?.is_some() {
        t.delete(key::origin(i.ino));
    }
    for (k, _) in t.scan(&key::xattr_prefix(i.ino), None, usize::MAX)? {
        t.delete(k);
    }
    let bytes = if i.kind == Kind::File { i.size } else { 0 };
    charge(t, i.volume, -1, -(i64::try_from(bytes).unwrap_or(i64::MAX)))?;
    uncharge_member(t, i.ino, bytes)?;
    if let Some(layout) = &i.layout {
        let g = super::Garbage {
            layout: layout.clone(),
            size: i.size,
            since_ns: now,
        };
        super::snapshots::free_object(t, i, &g)?;
    }
    Ok(())
}

/// unlink(2).
pub(crate) fn unlink<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    parent: u64,
    name: &str,
    client: u64,
    held_open: bool,
    now: i64,
) -> FsResult<Reply> {
    check_name(name)?;
    let mut p = dir(t, parent)?;
    let Some((ino, kind)) = entry(t, parent, name)? else {
        fail!(NotFound, "no entry {name:?} in directory {parent}");
    };
    if kind == Kind::Dir {
        fail!(IsDir, "{name:?} is a directory; use rmdir");
    }
    let i = inode(t, ino)?;
    t.delete(key::dentry(parent, name));
    let holder = (held_open && client != 0).then_some(client);
    let freed = drop_link(t, i, holder, now)?;
    touch_dir(&mut p, now);
    put_inode(t, &mut p);
    Ok(Reply::Removed {
        ino,
        freed,
        parent: p,
    })
}

fn is_empty_dir<K: Kv + ?Sized>(t: &Txn<'_, K>, ino: u64) -> FsResult<bool> {
    Ok(t.scan(&key::dir_prefix(ino), None, 1)?.is_empty())
}

/// Removes an empty directory `d` (its dentry already removed), and its
/// volume when it is a volume root.
fn remove_dir<K: Kv + ?Sized>(t: &mut Txn<'_, K>, d: &Inode, parent: u64) -> FsResult<()> {
    t.delete(key::inode(d.ino));
    for (k, _) in t.scan(&key::xattr_prefix(d.ino), None, usize::MAX)? {
        t.delete(k);
    }
    if parent == ROOT_INO {
        t.delete(key::volume(d.volume));
        keys::forget(t, d.volume);
        compression::forget(t, d.volume);
        super::restore::forget(t, d.volume)?;
    } else {
        charge(t, d.volume, -1, 0)?;
        uncharge_member(t, d.ino, 0)?;
        // An empty quota directory takes its quota with it.
        t.delete(key::dir_quota(d.ino));
    }
    Ok(())
}

/// rmdir(2).
pub(crate) fn rmdir<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    parent: u64,
    name: &str,
    now: i64,
) -> FsResult<Reply> {
    check_name(name)?;
    let mut p = dir(t, parent)?;
    let Some((ino, kind)) = entry(t, parent, name)? else {
        fail!(NotFound, "no entry {name:?} in directory {parent}");
    };
    if kind != Kind::Dir {
        fail!(NotDir, "{name:?} is not a directory");
    }
    if !is_empty_dir(t, ino)? {
        fail!(NotEmpty, "directory {name:?} is not empty");
    }
    let d = inode(t, ino)?;
    if parent == ROOT_INO {
        let held = super::snapshots::records(t, d.volume)?.len();
        if held > 0 {
            fail!(
                NotEmpty,
                "volume {name} has {held} snapshots (some may still be being deleted); delete \
                 them first"
            );
        }
    }
    t.delete(key::dentry(parent, name));
    remove_dir(t, &d, parent)?;
    p.nlink = p.nlink.saturating_sub(1);
    touch_dir(&mut p, now);
    put_inode(t, &mut p);
    Ok(Reply::Removed {
        ino,
        freed: true,
        parent: p,
    })
}

/// Arguments of [`rename`].
pub(crate) struct RenameArgs<'a> {
    pub parent: u64,
    pub name: &'a str,
    pub new_parent: u64,
    pub new_name: &'a str,
    pub noreplace: bool,
    pub exchange: bool,
}

/// Fails with EINVAL when directory `moved` is `dest` or one of its
/// ancestors (a move into its own subtree).
fn refuse_subtree_move<K: Kv + ?Sized>(t: &Txn<'_, K>, moved: u64, dest: u64) -> FsResult<()> {
    let mut cur = dest;
    // Depth is bounded by the number of directories; the counter guards
    // against a corrupted parent chain looping forever.
    for _ in 0..100_000 {
        if cur == moved {
            fail!(
                Invalid,
                "cannot move directory {moved} into its own subtree"
            );
        }
        if cur == ROOT_INO {
            return Ok(());
        }
        cur = inode(t, cur)?.parent;
    }
    fail!(
        Internal,
        "directory parent chain of {dest} does not reach the root"
    )
}

/// rename(2) with RENAME_NOREPLACE and RENAME_EXCHANGE.
pub(crate) fn rename<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    a: RenameArgs<'_>,
    now: i64,
) -> FsResult<Reply> {
    check_name(a.name)?;
    check_name(a.new_name)?;
    if a.noreplace && a.exchange {
        fail!(Invalid, "RENAME_NOREPLACE and RENAME_EXCHANGE together");
    }
    let p = dir(t, a.parent)?;
    let np = if a.new_parent == a.parent {
        p.clone()
    } else {
        dir(t, a.new_parent)?
    };
    let Some((src_ino, src_kind)) = entry(t, a.parent, a.name)? else {
        fail!(NotFound, "no entry {:?} in directory {}", a.name, a.parent);
    };
    if a.new_parent == ROOT_INO {
        super::restore::check_name_free(t, a.new_name)?;
    }
    if p.volume != np.volume {
        fail!(CrossVolume, "cannot rename across volumes");
    }
    let mut s = inode(t, src_ino)?;
    let dst = entry(t, a.new_parent, a.new_name)?;
    if a.parent != a.new_parent {
        refuse_quota_crossing(t, src_ino, &np)?;
        if let (true, Some((dst_ino, _))) = (a.exchange, dst) {
            refuse_quota_crossing(t, dst_ino, &p)?;
        }
    }
    if a.parent == a.new_parent && a.name == a.new_name {
        if a.noreplace {
            fail!(Exists, "{:?} already exists", a.new_name);
        }
        return Ok(Reply::Renamed {
            attr: s,
            replaced: None,
        });
    }
    if src_kind == Kind::Dir {
        refuse_subtree_move(t, src_ino, a.new_parent)?;
    }
    if a.exchange {
        return exchange(t, a, s, dst, now);
    }
    let mut replaced = None;
    if let Some((dst_ino, dst_kind)) = dst {
        if a.noreplace {
            fail!(Exists, "{:?} already exists", a.new_name);
        }
        if dst_ino == src_ino {
            // Two links to one inode: POSIX says do nothing.
            return Ok(Reply::Renamed {
                attr: s,
                replaced: None,
            });
        }
        match (src_kind == Kind::Dir, dst_kind == Kind::Dir) {
            (true, false) => fail!(NotDir, "{:?} is not a directory", a.new_name),
            (false, true) => fail!(IsDir, "{:?} is a directory", a.new_name),
            _ => {}
        }
        let d = inode(t, dst_ino)?;
        t.delete(key::dentry(a.new_parent, a.new_name));
        if dst_kind == Kind::Dir {
            if !is_empty_dir(t, dst_ino)? {
                fail!(NotEmpty, "directory {:?} is not empty", a.new_name);
            }
            remove_dir(t, &d, a.new_parent)?;
            replaced = Some((dst_ino, true));
        } else {
            let freed = drop_link(t, d, None, now)?;
            replaced = Some((dst_ino, freed));
        }
    }
    t.delete(key::dentry(a.parent, a.name));
    put_entry(t, a.new_parent, a.new_name, &(src_ino, src_kind))?;
    s.ctime = now;
    // Directory link counts: the new parent loses the replaced directory
    // and gains the moved one; the old parent loses the moved one.
    let dst_was_dir = matches!(dst, Some((_, Kind::Dir)));
    let mut p = inode(t, a.parent)?;
    touch_dir(&mut p, now);
    if src_kind == Kind::Dir {
        s.parent = a.new_parent;
        p.nlink = p.nlink.saturating_sub(1);
    }
    if a.parent == a.new_parent {
        if src_kind == Kind::Dir {
            p.nlink += 1;
        }
        if dst_was_dir {
            p.nlink = p.nlink.saturating_sub(1);
        }
        put_inode(t, &mut p);
    } else {
        put_inode(t, &mut p);
        let mut np = inode(t, a.new_parent)?;
        touch_dir(&mut np, now);
        if src_kind == Kind::Dir {
            np.nlink += 1;
        }
        if dst_was_dir {
            np.nlink = np.nlink.saturating_sub(1);
        }
        put_inode(t, &mut np);
    }
    if a.parent == ROOT_INO && src_kind == Kind::Dir {
        rename_volume(t, s.volume, a.new_name)?;
    }
    put_inode(t, &mut s);
    Ok(Reply::Renamed { attr: s, replaced })
}

fn rename_volume<K: Kv + ?Sized>(t: &mut Txn<'_, K>, id: u64, name: &str) -> FsResult<()> {
    if let Some(mut v) = volume_of(t, id)? {
        v.name = name.to_string();
        t.put(key::volume(id), &v);
    }
    Ok(())
}

/// RENAME_EXCHANGE: swaps two existing entries atomically.
fn exchange<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    a: RenameArgs<'_>,
    mut s: Inode,
    dst: Option<(u64, Kind)>,
    now: i64,
) -> FsResult<Reply> {
    let Some((dst_ino, dst_kind)) = dst else {
        fail!(NotFound, "no entry {:?} to exchange with", a.new_name);
    };
    if dst_kind == Kind::Dir {
        refuse_subtree_move(t, dst_ino, a.parent)?;
    }
    let mut d = inode(t, dst_ino)?;
    put_entry(t, a.parent, a.name, &(dst_ino, dst_kind))?;
    put_entry(t, a.new_parent, a.new_name, &(s.ino, s.kind))?;
    s.ctime = now;
    d.ctime = now;
    if a.parent != a.new_parent {
        let s_dir = i32::from(s.kind == Kind::Dir);
        let d_dir = i32::from(d.kind == Kind::Dir);
        if s.kind == Kind::Dir {
            s.parent = a.new_parent;
        }
        if d.kind == Kind::Dir {
            d.parent = a.parent;
        }
        let mut p = inode(t, a.parent)?;
        p.nlink = p.nlink.saturating_add_signed(d_dir - s_dir);
        touch_dir(&mut p, now);
        put_inode(t, &mut p);
        let mut np = inode(t, a.new_parent)?;
        np.nlink = np.nlink.saturating_add_signed(s_dir - d_dir);
        touch_dir(&mut np, now);
        put_inode(t, &mut np);
    } else {
        let mut p = inode(t, a.parent)?;
        touch_dir(&mut p, now);
        put_inode(t, &mut p);
        if a.parent == ROOT_INO {
            if s.kind == Kind::Dir {
                rename_volume(t, s.volume, a.new_name)?;
            }
            if d.kind == Kind::Dir {
                rename_volume(t, d.volume, a.name)?;
            }
        }
    }
    put_inode(t, &mut d);
    put_inode(t, &mut s);
    Ok(Reply::Renamed {
        attr: s,
        replaced: None,
    })
}

/// setattr: chmod, chown, truncate, utimens.
pub(crate) fn setattr<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    ino: u64,
    attr: &SetAttr,
    now: i64,
) -> FsResult<Reply> {
    let mut i = inode(t, ino)?;
    if let Some(size) = attr.size {
        match i.kind {
            Kind::File => {}
            Kind::Dir => fail!(IsDir, "cannot truncate a directory"),
            Kind::Symlink => fail!(Invalid, "cannot truncate a symlink"),
            k => fail!(Invalid, "cannot truncate a special file ({k:?})"),
        }
        if t.get_raw(&key::origin(ino))?.is_some() {
            // Its data is still the snapshot's: emptied, it no longer is;
            // any other length needs the data copied first.
            if size != 0 {
                fail!(
                    Unavailable,
                    "inode {ino} still reads its data from the snapshot it was restored \
                     from: copy it up (open it for writing) before changing its length"
                );
            }
            t.delete(key::origin(ino));
        }
        charge_bytes(t, i.volume, i.ino, i.size, size)?;
        i.size = size;
        i.truncate_gen += 1;
        i.mtime = now;
    }
    if let Some(mode) = attr.mode {
        i.mode = mode & 0o7777;
    }
    if let Some(uid) = attr.uid {
        i.uid = uid;
    }
    if let Some(gid) = attr.gid {
        i.gid = gid;
    }
    let at = |s: SetTime| match s {
        SetTime::Now => now,
        SetTime::At(ns) => ns,
    };
    if let Some(a) = attr.atime {
        i.atime = at(a);
    }
    if let Some(m) = attr.mtime {
        i.mtime = at(m);
    }
    i.ctime = now;
    put_inode(t, &mut i);
    Ok(Reply::Attr(i))
}

fn check_xattr_name(name: &str) -> FsResult<()> {
    if name.is_empty() {
        fail!(Invalid, "empty xattr name");
    }
    if name.len() > 255 {
        fail!(NameTooLong, "xattr name longer than 255 bytes");
    }
    if name.contains('\0') {
        fail!(Invalid, "xattr name contains a NUL byte");
    }
    Ok(())
}

/// setxattr(2).
pub(crate) fn setxattr<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    ino: u64,
    name: &str,
    value: &[u8],
    create_only: bool,
    replace_only: bool,
    now: i64,
) -> FsResult<Reply> {
    check_xattr_name(name)?;
    if value.len() > XATTR_VALUE_MAX {
        fail!(
            TooBig,
            "xattr value of {} bytes is over {XATTR_VALUE_MAX}",
            value.len()
        );
    }
    let mut i = inode(t, ino)?;
    let k = key::xattr(ino, name);
    let exists = t.get_raw(&k)?.is_some();
    if create_only && exists {
        fail!(Exists, "xattr {name:?} already exists");
    }
    if replace_only && !exists {
        fail!(NoData, "no xattr {name:?}");
    }
    t.put_raw(k, value.to_vec());
    i.ctime = now;
    put_inode(t, &mut i);
    Ok(Reply::Unit)
}

/// removexattr(2).
pub(crate) fn removexattr<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    ino: u64,
    name: &str,
    now: i64,
) -> FsResult<Reply> {
    check_xattr_name(name)?;
    let mut i = inode(t, ino)?;
    let k = key::xattr(ino, name);
    if t.get_raw(&k)?.is_none() {
        fail!(NoData, "no xattr {name:?}");
    }
    t.delete(k);
    i.ctime = now;
    put_inode(t, &mut i);
    Ok(Reply::Unit)
}
