//! A volume's snapshots in the mount, read-only, at `VOLUME/.snapshots/
//! NAME/...` (issue 17; `.snapshots` is not listed in the volume's root,
//! as ZFS hides `.zfs`, but it can be entered by name).
//!
//! The kernel needs an inode number for every snapshot node, distinct from
//! the live tree's (the same Cairn inode is a different file in each
//! snapshot and in the live tree): this mount hands out numbers from
//! [`SNAP_INO`] up, one per (snapshot, Cairn inode), remembered for the
//! mount's life. Every change the kernel sends for one (a write open,
//! create, mkdir, unlink, rename, link, setattr, xattr changes) fails
//! with EROFS before it reaches meta (which knows none of these numbers).

use std::collections::HashMap;

use cairn_client::File;
use cairn_proto::ids::InodeId;
use cairn_proto::meta::{Attr, DirEntry, FileType as Kind, SnapshotRef};
use fuser::Errno;

use super::{Inner, R, lock};
use crate::attr::{errno, errno_by_ino};

/// The first inode number of snapshot nodes (Cairn's inode numbers stay far
/// below it).
pub const SNAP_INO: u64 = 1 << 62;

/// The name of the snapshots directory in a volume's root.
pub const DIR: &str = cairn_client::SNAPSHOTS_DIR;

/// A node of the snapshot namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Node {
    /// A volume's `.snapshots`: its snapshots as directories.
    Snapshots {
        /// The volume's name.
        volume: String,
        /// Its root directory's Cairn inode.
        root: u64,
    },
    /// Cairn inode `ino` as snapshot `at` holds it.
    In {
        /// The snapshot.
        at: (u64, u64),
        /// The Cairn inode.
        ino: u64,
    },
}

/// The mount's snapshot inode numbers.
#[derive(Debug, Default)]
pub struct Nodes {
    by_ino: HashMap<u64, Node>,
    by_node: HashMap<Node, u64>,
}

impl Nodes {
    fn number(&mut self, n: Node) -> u64 {
        if let Some(i) = self.by_node.get(&n) {
            return *i;
        }
        let i = SNAP_INO + self.by_ino.len() as u64;
        self.by_ino.insert(i, n.clone());
        self.by_node.insert(n, i);
        i
    }
}

/// Whether `ino` is a snapshot node's number.
pub fn is_snapshot(ino: u64) -> bool {
    ino >= SNAP_INO
}

fn snapshot_ref((volume_id, seq): (u64, u64)) -> Option<SnapshotRef> {
    Some(SnapshotRef { volume_id, seq })
}

impl Inner {
    fn snap_node(&self, ino: u64) -> R<Node> {
        lock(&self.snaps)
            .by_ino
            .get(&ino)
            .cloned()
            .ok_or(Errno::ENOENT)
    }

    /// `a` (as the snapshot holds it) under its snapshot node's number.
    fn as_node(&self, at: (u64, u64), mut a: Attr) -> Attr {
        a.ino = lock(&self.snaps).number(Node::In { at, ino: a.ino });
        a
    }

    /// Looks up `name` in `parent` when either is the snapshot namespace's:
    /// `None` when the live tree answers.
    pub(super) async fn snap_lookup(&self, parent: u64, name: &str) -> Option<R<Attr>> {
        if is_snapshot(parent) {
            return Some(self.lookup_in(parent, name).await);
        }
        if name != DIR {
            return None;
        }
        // `.snapshots` of a volume's root.
        if parent == 1 {
            return None;
        }
        let m = self.client.meta();
        let volume = match m.list_volumes().await {
            Ok(vs) => vs
                .into_iter()
                .find(|v| v.root_ino == parent)
                .map(|v| v.name),
            Err(e) => return Some(Err(errno(&e))),
        };
        let volume = volume?;
        let p = match m.getattr(InodeId(parent)).await {
            Ok(p) => p,
            Err(e) => return Some(Err(errno_by_ino(&e))),
        };
        let mut a = p;
        a.ino = lock(&self.snaps).number(Node::Snapshots {
            volume,
            root: parent,
        });
        a.mode = 0o555;
        a.nlink = 2;
        a.size = 0;
        Some(Ok(a))
    }

    async fn lookup_in(&self, parent: u64, name: &str) -> R<Attr> {
        let m = self.client.meta();
        match self.snap_node(parent)? {
            Node::Snapshots { volume, root } => {
                let s = m
                    .ready_snapshot(&volume, name)
                    .await
                    .map_err(|e| errno(&e))?;
                let at = (s.volume_id, s.seq);
                let a = m
                    .getattr_at(snapshot_ref(at), InodeId(root))
                    .await
                    .map_err(|e| errno(&e))?;
                Ok(self.as_node(at, a))
            }
            Node::In { at, ino } => {
                let a = m
                    .lookup_at(snapshot_ref(at), InodeId(ino), name)
                    .await
                    .map_err(|e| errno(&e))?;
                Ok(self.as_node(at, a))
            }
        }
    }

    /// The attributes of snapshot node `ino`.
    pub(super) async fn snap_getattr(&self, ino: u64) -> R<Attr> {
        let m = self.client.meta();
        match self.snap_node(ino)? {
            Node::Snapshots { root, .. } => {
                let mut a = m.getattr(InodeId(root)).await.map_err(|e| errno(&e))?;
                a.ino = ino;
                a.mode = 0o555;
                a.nlink = 2;
                a.size = 0;
                Ok(a)
            }
            Node::In { at, ino: real } => {
                let mut a = m
                    .getattr_at(snapshot_ref(at), InodeId(real))
                    .await
                    .map_err(|e| errno(&e))?;
                a.ino = ino;
                Ok(a)
            }
        }
    }

    /// The entries of snapshot directory `ino`, under their node numbers.
    pub(super) async fn snap_readdir(&self, ino: u64) -> R<Vec<DirEntry>> {
        let m = self.client.meta();
        let mut out = Vec::new();
        match self.snap_node(ino)? {
            Node::Snapshots { volume, root } => {
                for s in m.list_snapshots(&volume).await.map_err(|e| errno(&e))? {
                    if !s.ready {
                        continue;
                    }
                    let at = (s.volume_id, s.seq);
                    let a = m
                        .getattr_at(snapshot_ref(at), InodeId(root))
                        .await
                        .map_err(|e| errno(&e))?;
                    let a = self.as_node(at, a);
                    out.push(DirEntry {
                        name: s.name,
                        ino: a.ino,
                        kind: Kind::Directory as i32,
                        attr: Some(a),
                    });
                }
            }
            Node::In { at, ino: real } => {
                for e in m
                    .readdir_all_plus_at(snapshot_ref(at), InodeId(real))
                    .await
                    .map_err(|e| errno(&e))?
                {
                    let number = lock(&self.snaps).number(Node::In { at, ino: e.ino });
                    out.push(DirEntry {
                        ino: number,
                        attr: e.attr.map(|mut a| {
                            a.ino = number;
                            a
                        }),
                        ..e
                    });
                }
            }
        }
        Ok(out)
    }

    /// Opens snapshot file `ino` for reading: its attributes (under the
    /// node's number) and a handle reading the snapshot.
    pub(super) async fn snap_open(&self, ino: u64, write: bool) -> R<(Attr, File)> {
        if write {
            return Err(Errno::EROFS);
        }
        let Node::In { at, ino: real } = self.snap_node(ino)? else {
            return Err(Errno::EISDIR);
        };
        let a = self
            .client
            .meta()
            .getattr_at(snapshot_ref(at), InodeId(real))
            .await
            .map_err(|e| errno(&e))?;
        if a.kind == Kind::Directory as i32 {
            return Err(Errno::EISDIR);
        }
        let f = self
            .client
            .open_in_snapshot(a.clone(), at.1)
            .map_err(|e| errno(&e))?;
        let mut shown = a;
        shown.ino = ino;
        Ok((shown, f))
    }

    /// Xattr `name` of snapshot node `ino` (`None`: the list of names, NUL
    /// terminated). `.snapshots` itself has none.
    pub(super) async fn snap_xattr(&self, ino: u64, name: Option<&str>) -> R<Vec<u8>> {
        let Node::In { at, ino: real } = self.snap_node(ino)? else {
            return match name {
                Some(_) => Err(crate::attr::raw(libc::ENODATA)),
                None => Ok(Vec::new()),
            };
        };
        let m = self.client.meta();
        match name {
            Some(n) => m
                .getxattr_at(snapshot_ref(at), InodeId(real), n)
                .await
                .map_err(|e| errno(&e)),
            None => {
                let names = m
                    .listxattr_at(snapshot_ref(at), InodeId(real))
                    .await
                    .map_err(|e| errno(&e))?;
                let mut out = Vec::new();
                for n in names {
                    out.extend_from_slice(n.as_bytes());
                    out.push(0);
                }
                Ok(out)
            }
        }
    }

    /// The target of snapshot symlink `ino`.
    pub(super) async fn snap_readlink(&self, ino: u64) -> R<String> {
        let Node::In { at, ino: real } = self.snap_node(ino)? else {
            return Err(Errno::EINVAL);
        };
        self.client
            .meta()
            .readlink_at(snapshot_ref(at), InodeId(real))
            .await
            .map_err(|e| errno(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_snapshot_inode_gets_one_number_of_its_own() {
        let mut n = Nodes::default();
        let a = n.number(Node::In { at: (1, 5), ino: 9 });
        let b = n.number(Node::In { at: (1, 6), ino: 9 });
        assert!(is_snapshot(a) && is_snapshot(b) && a != b);
        assert_eq!(n.number(Node::In { at: (1, 5), ino: 9 }), a);
        assert!(!is_snapshot(9));
    }
}
