//! Read-only queries of the state machine.
//!
//! The service makes them linearizable by waiting for the read index
//! before calling them ([`crate::service`]); here they only read the
//! applied state.

use cairn_proto::names;

use super::store::{Kv, Txn, key};
use super::{
    Chain, ChunkserverRecord, FsError, FsState, Garbage, Inode, Kind, OpError, ROOT_INO, Session,
    Snapshot, Volume, VolumeCompression, VolumeKeys, chains, compression, fact, namespace,
    snapshots,
};

/// One directory entry of a readdir page.
#[derive(Debug, Clone, PartialEq)]
pub struct DirEntry {
    /// Entry name.
    pub name: String,
    /// Child inode.
    pub ino: u64,
    /// Child kind.
    pub kind: Kind,
    /// Child attributes (readdirplus only).
    pub attr: Option<Inode>,
}

/// Totals for statfs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FsStats {
    /// Inodes in use (in the volume, or in the whole namespace).
    pub files: u64,
    /// Bytes charged to files.
    pub used_bytes: u64,
    /// Inode quota, 0 = unlimited.
    pub quota_inodes: u64,
    /// Byte quota, 0 = unlimited.
    pub quota_bytes: u64,
}

type ReadResult<T> = Result<T, FsError>;

fn flatten<T>(r: Result<T, OpError>) -> ReadResult<T> {
    r.map_err(|e| match e {
        OpError::Fs(e) => e,
        OpError::Store(e) => FsError::new(cairn_proto::ErrorCode::Io, e.to_string()),
    })
}

/// One page of directory `ino` after the name `cookie` (empty: from the
/// start), at most `limit` entries (clamped to 1..=10,000), read through
/// `scan` (the live tree or a snapshot's), with each child's attributes
/// from `attr` when given (readdirplus); and the next page's cookie.
fn dir_page(
    ino: u64,
    cookie: &[u8],
    limit: usize,
    scan: impl FnOnce(&[u8], Option<&[u8]>, usize) -> Result<super::store::Pairs, OpError>,
    mut attr: Option<impl FnMut(u64) -> Result<Inode, OpError>>,
) -> Result<(Vec<DirEntry>, Option<Vec<u8>>), OpError> {
    let limit = limit.clamp(1, 10_000);
    let prefix = key::dir_prefix(ino);
    let after = (!cookie.is_empty()).then(|| key::dentry(ino, &String::from_utf8_lossy(cookie)));
    let rows = scan(&prefix, after.as_deref(), limit + 1)?;
    let more = rows.len() > limit;
    let mut out = Vec::with_capacity(rows.len().min(limit));
    for (k, v) in rows.into_iter().take(limit) {
        let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        let (child, kind): (u64, Kind) = super::store::decode(&k, &v)?;
        let attr = match attr.as_mut() {
            Some(f) => Some(f(child)?),
            None => None,
        };
        out.push(DirEntry {
            name,
            ino: child,
            kind,
            attr,
        });
    }
    let next = if more {
        out.last().map(|e| e.name.as_bytes().to_vec())
    } else {
        None
    };
    Ok((out, next))
}

/// A restored volume, its restore job (`None` once done) and the base
/// snapshot's (volume, seq).
pub type RestoreState = (super::Volume, Option<super::RestoreJob>, (u64, u64));

impl<K: Kv> FsState<K> {
    fn txn(&self) -> Txn<'_, K> {
        Txn::new(self.kv())
    }

    /// Returns the cluster id, if the cluster is initialized.
    pub fn cluster_id(&self) -> ReadResult<Option<String>> {
        flatten(
            self.txn()
                .get::<String>(&key::meta(fact::CLUSTER_ID))
                .map_err(OpError::from),
        )
    }

    /// Returns inode `ino`.
    pub fn getattr(&self, ino: u64) -> ReadResult<Inode> {
        flatten(namespace::inode(&self.txn(), ino))
    }

    /// The quota of directory `ino` if it is a quota directory, else the
    /// quota of the quota directory it is under (`None`: under none).
    pub fn dir_quota(&self, ino: u64) -> ReadResult<Option<super::DirQuota>> {
        let t = self.txn();
        flatten((|| {
            namespace::inode(&t, ino)?;
            if let Some(q) = namespace::dir_quota(&t, ino)? {
                return Ok(Some(q));
            }
            match namespace::quota_member(&t, ino)? {
                Some(q) => namespace::dir_quota(&t, q),
                None => Ok(None),
            }
        })())
    }

    /// F_GETLK: the first lock of another owner than (`session`, `owner`)
    /// that would refuse `kind` on `start..=end`, or `None`.
    pub fn get_lock(
        &self,
        ino: u64,
        session: u64,
        owner: u64,
        range: (u64, u64),
        kind: super::locks::LockKind,
    ) -> ReadResult<Option<super::locks::LockHolder>> {
        let (start, end) = range;
        flatten(super::locks::conflict(
            &self.txn(),
            ino,
            session,
            owner,
            start,
            end,
            kind,
        ))
    }

    /// Returns the inode named `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &str) -> ReadResult<Inode> {
        if let Err((code, why)) = names::validate(name) {
            return Err(FsError::new(code, why));
        }
        let t = self.txn();
        flatten((|| {
            let p = namespace::inode(&t, parent)?;
            if p.kind != Kind::Dir {
                super::fail!(NotDir, "inode {parent} is not a directory");
            }
            match namespace::entry(&t, parent, name)? {
                Some((ino, _)) => namespace::inode(&t, ino),
                None => super::fail!(NotFound, "no entry {name:?} in directory {parent}"),
            }
        })())
    }

    /// Resolves an absolute path without following symlinks.
    pub fn resolve(&self, path: &str) -> ReadResult<Inode> {
        self.resolve_with(path, |_, _| {}, |_| {})
    }

    /// [`Self::resolve`], calling `before(parent, name)` before each name
    /// is read and `walked` with each directory the path goes through (the
    /// root first, the answer's parent last).
    pub fn resolve_with(
        &self,
        path: &str,
        mut before: impl FnMut(u64, &str),
        mut walked: impl FnMut(&Inode),
    ) -> ReadResult<Inode> {
        let parts = names::components(path).map_err(|(c, why)| FsError::new(c, why))?;
        let mut cur = self.getattr(ROOT_INO)?;
        for (i, part) in parts.iter().enumerate() {
            if cur.kind != Kind::Dir {
                let so_far = parts[..i].join("/");
                return Err(FsError::new(
                    cairn_proto::ErrorCode::NotDir,
                    format!("/{so_far} is not a directory"),
                ));
            }
            walked(&cur);
            before(cur.ino, part);
            cur = self.lookup(cur.ino, part).map_err(|e| {
                if e.code == cairn_proto::ErrorCode::NotFound {
                    FsError::new(e.code, format!("/{} does not exist", parts[..=i].join("/")))
                } else {
                    e
                }
            })?;
        }
        Ok(cur)
    }

    /// Returns up to `limit` entries of directory `ino` after the name
    /// `cookie` (empty: from the start), and the cookie of the next page
    /// (`None` when the directory is exhausted).
    pub fn readdir(
        &self,
        ino: u64,
        cookie: &[u8],
        limit: usize,
        plus: bool,
    ) -> ReadResult<(Vec<DirEntry>, Option<Vec<u8>>)> {
        let t = self.txn();
        let d = flatten(namespace::inode(&t, ino))?;
        if d.kind != Kind::Dir {
            return Err(FsError::new(
                cairn_proto::ErrorCode::NotDir,
                format!("inode {ino} is not a directory"),
            ));
        }
        flatten(dir_page(
            ino,
            cookie,
            limit,
            |prefix, after, n| Ok(t.scan(prefix, after, n)?),
            plus.then_some(|child| namespace::inode(&t, child)),
        ))
    }

    /// Returns a symlink's target.
    pub fn readlink(&self, ino: u64) -> ReadResult<String> {
        let i = self.getattr(ino)?;
        i.target.ok_or_else(|| {
            FsError::new(
                cairn_proto::ErrorCode::Invalid,
                format!("inode {ino} is not a symlink"),
            )
        })
    }

    /// Returns an xattr's value.
    pub fn getxattr(&self, ino: u64, name: &str) -> ReadResult<Vec<u8>> {
        self.getattr(ino)?;
        match flatten(
            self.txn()
                .get_raw(&key::xattr(ino, name))
                .map_err(OpError::from),
        )? {
            Some(v) => Ok(v),
            None => Err(FsError::new(
                cairn_proto::ErrorCode::NoData,
                format!("no xattr {name:?}"),
            )),
        }
    }

    /// Returns the names of an inode's xattrs.
    pub fn listxattr(&self, ino: u64) -> ReadResult<Vec<String>> {
        self.getattr(ino)?;
        let prefix = key::xattr_prefix(ino);
        let rows = flatten(
            self.txn()
                .scan(&prefix, None, usize::MAX)
                .map_err(OpError::from),
        )?;
        Ok(rows
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k[prefix.len()..]).into_owned())
            .collect())
    }

    /// Returns volume `volume`'s ready snapshots, oldest first.
    pub fn snapshots(&self, volume: u64) -> ReadResult<Vec<Snapshot>> {
        let all = flatten(snapshots::records(&self.txn(), volume).map_err(OpError::from))?;
        Ok(all.into_iter().filter(|s| !s.deleting).collect())
    }

    /// Returns every restore under way: (the new volume's id, its job).
    pub fn restores(&self) -> ReadResult<Vec<(u64, super::RestoreJob)>> {
        let rows = flatten(
            self.txn()
                .scan(key::RESTORES, None, usize::MAX)
                .map_err(OpError::from),
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            let j: super::RestoreJob =
                flatten(super::store::decode(&k, &v).map_err(OpError::from))?;
            out.push((key::id_of(&k), j));
        }
        Ok(out)
    }

    /// Returns the bytes of the files deleted from volume `volume`'s live
    /// tree that snapshot `seq` keeps (pinned under its seq): each file's
    /// length times its replication.
    pub fn pinned_bytes(&self, volume: u64, seq: u64) -> ReadResult<u64> {
        let rows = flatten(
            self.txn()
                .scan(&key::pinned_prefix(volume, seq), None, usize::MAX)
                .map_err(OpError::from),
        )?;
        let mut sum = 0u64;
        for (k, v) in rows {
            let g: super::Garbage = flatten(super::store::decode(&k, &v).map_err(OpError::from))?;
            sum = sum.saturating_add(
                g.size
                    .saturating_mul(u64::from(g.layout.replication.max(1))),
            );
        }
        Ok(sum)
    }

    /// Returns the cluster's newest snapshot seq (0 before the first).
    pub fn snap_seq(&self) -> ReadResult<u64> {
        let next: Option<u64> = flatten(
            self.txn()
                .get(&key::meta(super::counter::SNAP_SEQ))
                .map_err(OpError::from),
        )?;
        Ok(next.map_or(0, |n| n.saturating_sub(1)))
    }

    /// Returns every ready snapshot's (volume, seq), by ascending seq.
    pub fn ready_snapshots(&self) -> ReadResult<Vec<(u64, u64)>> {
        let rows = flatten(
            self.txn()
                .scan(key::SNAPSHOTS, None, usize::MAX)
                .map_err(OpError::from),
        )?;
        let mut out = Vec::new();
        for (k, v) in rows {
            let s: Snapshot = flatten(super::store::decode(&k, &v).map_err(OpError::from))?;
            if !s.deleting {
                out.push((s.volume, s.seq));
            }
        }
        out.sort_by_key(|(_, seq)| *seq);
        Ok(out)
    }

    /// Returns snapshots being deleted, of every volume (the leader goes on
    /// merging them away).
    pub fn deleting_snapshots(&self) -> ReadResult<Vec<Snapshot>> {
        let t = self.txn();
        let rows = flatten(
            t.scan(super::store::key::SNAPSHOTS, None, usize::MAX)
                .map_err(OpError::from),
        )?;
        let mut out = Vec::new();
        for (k, v) in rows {
            let s: Snapshot = flatten(super::store::decode(&k, &v).map_err(OpError::from))?;
            if s.deleting {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Returns ready snapshot `name` of volume `volume`.
    pub fn snapshot_named(&self, volume: u64, name: &str) -> ReadResult<Snapshot> {
        self.snapshots(volume)?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| {
                FsError::new(
                    cairn_proto::ErrorCode::NotFound,
                    format!("volume {volume} has no snapshot {name:?}"),
                )
            })
    }

    /// Returns inode `ino` as snapshot `seq` of volume `volume` saw it.
    pub fn snapshot_getattr(&self, volume: u64, seq: u64, ino: u64) -> ReadResult<Inode> {
        let t = self.txn();
        flatten((|| snapshots::View::new(&t, volume, seq)?.inode(&t, ino))())
    }

    /// Returns where file `ino` of a restored volume still reads its data
    /// ([`super::Origin`]), as the live tree has it or, with `at` (volume,
    /// seq), as that snapshot of its volume saw it.
    pub fn origin(&self, ino: u64, at: Option<(u64, u64)>) -> ReadResult<Option<super::Origin>> {
        let t = self.txn();
        let k = key::origin(ino);
        flatten((|| -> super::FsResult<Option<super::Origin>> {
            let raw = match at {
                Some((volume, seq)) => snapshots::View::new(&t, volume, seq)?.get_raw(&t, &k)?,
                None => t.get_raw(&k)?,
            };
            Ok(match raw {
                Some(b) => Some(super::store::decode(&k, &b)?),
                None => None,
            })
        })())
    }

    /// Returns the restore into the volume named `name`, under way or done
    /// ([`RestoreState`]):
    /// the volume, its job (`None` once done) and the base snapshot's
    /// (volume, seq).
    pub fn restore_named(&self, name: &str) -> ReadResult<Option<RestoreState>> {
        let t = self.txn();
        flatten((|| -> super::FsResult<_> {
            for (k, v) in t.scan(&key::volume(0)[..1], None, usize::MAX)? {
                let vol: super::Volume = super::store::decode(&k, &v)?;
                if vol.name != name {
                    continue;
                }
                let Some(base) = t.get::<(u64, u64)>(&key::base(vol.id))? else {
                    continue;
                };
                let job = t.get::<super::RestoreJob>(&key::restore(vol.id))?;
                return Ok(Some((vol, job, base)));
            }
            Ok(None)
        })())
    }

    /// Returns the inode named `name` in directory `parent` as snapshot
    /// `seq` of volume `volume` saw it.
    pub fn snapshot_lookup(
        &self,
        volume: u64,
        seq: u64,
        parent: u64,
        name: &str,
    ) -> ReadResult<Inode> {
        if let Err((code, why)) = names::validate(name) {
            return Err(FsError::new(code, why));
        }
        let t = self.txn();
        flatten((|| {
            let view = snapshots::View::new(&t, volume, seq)?;
            let p = view.inode(&t, parent)?;
            if p.kind != Kind::Dir {
                super::fail!(NotDir, "inode {parent} is not a directory");
            }
            match view.entry(&t, parent, name)? {
                Some((ino, _)) => view.inode(&t, ino),
                None => super::fail!(
                    NotFound,
                    "no entry {name:?} in directory {parent} of snapshot {}",
                    view.snapshot.name
                ),
            }
        })())
    }

    /// Returns a page of directory `ino` as snapshot `seq` of volume
    /// `volume` saw it; paged like [`FsState::readdir`].
    pub fn snapshot_readdir(
        &self,
        volume: u64,
        seq: u64,
        ino: u64,
        cookie: &[u8],
        limit: usize,
        plus: bool,
    ) -> ReadResult<(Vec<DirEntry>, Option<Vec<u8>>)> {
        let t = self.txn();
        flatten((|| {
            let view = snapshots::View::new(&t, volume, seq)?;
            let d = view.inode(&t, ino)?;
            if d.kind != Kind::Dir {
                super::fail!(NotDir, "inode {ino} is not a directory");
            }
            dir_page(
                ino,
                cookie,
                limit,
                |prefix, after, n| Ok(view.scan(&t, prefix, after, n)?),
                plus.then_some(|child| view.inode(&t, child)),
            )
        })())
    }

    /// Returns the xattrs of inode `ino` (names and values) as snapshot
    /// `seq` of volume `volume` saw them.
    pub fn snapshot_xattrs(
        &self,
        volume: u64,
        seq: u64,
        ino: u64,
    ) -> ReadResult<Vec<(String, Vec<u8>)>> {
        let t = self.txn();
        flatten((|| {
            let view = snapshots::View::new(&t, volume, seq)?;
            view.inode(&t, ino)?;
            let prefix = key::xattr_prefix(ino);
            Ok(view
                .scan(&t, &prefix, None, 10_000)?
                .into_iter()
                .map(|(k, v)| (String::from_utf8_lossy(&k[prefix.len()..]).into_owned(), v))
                .collect())
        })())
    }

    /// Returns the volumes.
    pub fn volumes(&self) -> ReadResult<Vec<Volume>> {
        let rows = flatten(
            self.txn()
                .scan(b"v", None, usize::MAX)
                .map_err(OpError::from),
        )?;
        rows.iter()
            .map(|(k, v)| flatten(super::store::decode(k, v).map_err(OpError::from)))
            .collect()
    }

    /// Returns the keys of every encrypted volume, by volume id (a volume
    /// not in the map is plain).
    pub fn volume_keys(&self) -> ReadResult<std::collections::BTreeMap<u64, VolumeKeys>> {
        let rows = flatten(
            self.txn()
                .scan(b"y", None, usize::MAX)
                .map_err(OpError::from),
        )?;
        rows.iter()
            .map(|(k, v)| {
                let keys = flatten(super::store::decode(k, v).map_err(OpError::from))?;
                Ok((key::id_of(k), keys))
            })
            .collect()
    }

    /// Returns the compression of every compressed volume, by volume id (a
    /// volume not in the map is uncompressed).
    pub fn volume_compression(
        &self,
    ) -> ReadResult<std::collections::BTreeMap<u64, VolumeCompression>> {
        let rows = flatten(
            self.txn()
                .scan(b"z", None, usize::MAX)
                .map_err(OpError::from),
        )?;
        rows.iter()
            .map(|(k, v)| {
                let c = flatten(super::store::decode(k, v).map_err(OpError::from))?;
                Ok((key::id_of(k), c))
            })
            .collect()
    }

    /// Returns volume `id`'s compression (`None`: uncompressed, or no such
    /// volume).
    pub fn compression_of(&self, id: u64) -> ReadResult<Option<VolumeCompression>> {
        flatten(compression::of(&self.txn(), id))
    }

    /// Returns whether new files in directory `parent` are known to be
    /// plain: it exists in this replica's state and its volume has no keys.
    /// A volume never gains keys after its creation and inode numbers are
    /// never reused, so a replica that is behind answers this right too;
    /// `false` proves nothing (the directory may not be here yet).
    pub fn creates_plain_files(&self, parent: u64) -> bool {
        let t = self.txn();
        namespace::inode(&t, parent)
            .and_then(|p| super::keys::of(&t, p.volume))
            .is_ok_and(|keys| keys.is_none())
    }

    /// Returns usage totals of volume `id`, or of the whole namespace for 0.
    pub fn statfs(&self, volume: u64) -> ReadResult<FsStats> {
        let vols = self.volumes()?;
        if volume != 0 {
            let Some(v) = vols.iter().find(|v| v.id == volume) else {
                return Err(FsError::new(
                    cairn_proto::ErrorCode::NotFound,
                    format!("no volume {volume}"),
                ));
            };
            return Ok(FsStats {
                files: v.used_inodes,
                used_bytes: v.used_bytes,
                quota_inodes: v.policy.quota_inodes,
                quota_bytes: v.policy.quota_bytes,
            });
        }
        let t = self.txn();
        let next_ino: u64 = flatten(
            t.get(&key::meta(super::counter::NEXT_INO))
                .map_err(OpError::from),
        )?
        .unwrap_or(2);
        Ok(FsStats {
            // An upper bound: inode numbers are never reused.
            files: vols
                .iter()
                .map(|v| v.used_inodes)
                .sum::<u64>()
                .max(1)
                .min(next_ino),
            used_bytes: vols.iter().map(|v| v.used_bytes).sum(),
            quota_inodes: 0,
            quota_bytes: 0,
        })
    }

    /// Returns the chain tables as (replication, chains).
    pub fn chain_tables(&self) -> ReadResult<Vec<(u32, Vec<Chain>)>> {
        let t = self.txn();
        chains::REPLICATIONS
            .iter()
            .map(|r| Ok((*r, flatten(chains::table(&t, *r))?)))
            .collect()
    }

    /// Returns the registered chunkservers.
    pub fn chunkservers(&self) -> ReadResult<Vec<ChunkserverRecord>> {
        flatten(chains::chunkservers(&self.txn()))
    }

    /// Returns whether chunkserver `id` is registered: one read, where
    /// [`FsState::chunkservers`] reads them all (a heartbeat asks this of
    /// every chunkserver every interval).
    pub fn chunkserver_registered(&self, id: u64) -> ReadResult<bool> {
        self.has_record(&key::chunkserver(id))
    }

    /// Returns whether session `id` is open.
    pub fn has_session(&self, id: u64) -> ReadResult<bool> {
        self.has_record(&key::session(id))
    }

    /// Returns whether a record is stored under `key`.
    fn has_record(&self, key: &[u8]) -> ReadResult<bool> {
        flatten(
            self.txn()
                .get_raw(key)
                .map(|v| v.is_some())
                .map_err(OpError::from),
        )
    }

    /// Returns the open sessions.
    pub fn sessions(&self) -> ReadResult<Vec<Session>> {
        let rows = flatten(
            self.txn()
                .scan(b"s", None, usize::MAX)
                .map_err(OpError::from),
        )?;
        rows.iter()
            .map(|(k, v)| flatten(super::store::decode(k, v).map_err(OpError::from)))
            .collect()
    }

    /// Returns every object id a file or a pending garbage entry
    /// references: the objects whose chunks are live. A full scan of the inodes (fine for
    /// the chunk-report period; an object index would make it a lookup).
    pub fn referenced_objects(&self) -> ReadResult<std::collections::HashSet<u64>> {
        let t = self.txn();
        let mut out = std::collections::HashSet::new();
        for (k, v) in flatten(t.scan(b"i", None, usize::MAX).map_err(OpError::from))? {
            let inode: super::Inode = flatten(super::store::decode(&k, &v).map_err(OpError::from))?;
            if let Some(l) = inode.layout {
                out.insert(l.object_id);
            }
        }
        for (k, _) in flatten(t.scan(b"g", None, usize::MAX).map_err(OpError::from))? {
            out.insert(super::store::key::id_of(&k));
        }
        // Objects freed from the live tree that snapshots still hold.
        for (k, _) in flatten(t.scan(b"h", None, usize::MAX).map_err(OpError::from))? {
            out.insert(u64::from_be_bytes(k[17..25].try_into().unwrap_or([0; 8])));
        }
        Ok(out)
    }

    /// Returns every chunkserver's maintenance window, by chunkserver id.
    pub fn maintenance(&self) -> ReadResult<std::collections::HashMap<u64, super::Maintenance>> {
        let rows = flatten(
            self.txn()
                .scan(b"w", None, usize::MAX)
                .map_err(OpError::from),
        )?;
        rows.iter()
            .map(|(k, v)| {
                Ok((
                    super::store::key::id_of(k),
                    flatten(super::store::decode(k, v).map_err(OpError::from))?,
                ))
            })
            .collect()
    }

    /// Returns how many bytes of `g`'s object may hold data: its size, or
    /// further where a writer sent data it never reported; `None` when
    /// unknown (a writer died, or the object predates the tracking), see
    /// `session::mark_extent`.
    pub fn garbage_extent(&self, g: &Garbage) -> ReadResult<Option<u64>> {
        let t = self.txn();
        let object = g.layout.object_id;
        let from = flatten(
            t.get::<u64>(&super::store::key::meta(super::counter::EXTENTS_FROM))
                .map_err(OpError::from),
        )?;
        if from.is_none_or(|f| object < f) {
            return Ok(None);
        }
        let extent = flatten(
            t.get::<u64>(&super::store::key::extent(object))
                .map_err(OpError::from),
        )?
        .unwrap_or(0);
        Ok((extent != u64::MAX).then_some(extent.max(g.size)))
    }

    /// Returns how many objects wait for garbage collection.
    pub fn garbage_count(&self) -> ReadResult<usize> {
        let rows = flatten(
            self.txn()
                .scan(b"g", None, usize::MAX)
                .map_err(OpError::from),
        )?;
        Ok(rows.len())
    }

    /// Returns up to `limit` entries waiting for garbage collection, in
    /// object id order, starting after object `after`.
    pub fn garbage(&self, after: Option<u64>, limit: usize) -> ReadResult<Vec<Garbage>> {
        let after = after.map(super::store::key::garbage);
        let rows = flatten(
            self.txn()
                .scan(b"g", after.as_deref(), limit)
                .map_err(OpError::from),
        )?;
        rows.iter()
            .map(|(k, v)| flatten(super::store::decode(k, v).map_err(OpError::from)))
            .collect()
    }
}
