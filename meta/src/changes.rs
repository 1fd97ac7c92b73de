//! The change feed: namespace changes pushed to clients, so that their
//! caches of entries and attributes can be trusted for longer than a short
//! TTL (DESIGN §4).
//!
//! After each mutation the leader commits, it publishes which inodes'
//! attributes changed and which directory entries were added, removed or
//! replaced ([`affected`], derived from the operation and its reply alone).
//! Clients hold a `WatchChanges` stream to the leader and drop what they
//! cached of those (the FUSE mount tells the kernel). Each change carries
//! the session that made it, and a client's own changes are not sent back:
//! it updated its caches when it made them.
//!
//! The feed is best effort by design, and what it promises is bounded:
//! a change reaches a connected client within a stream round trip of its
//! commit, not before the mutation is acknowledged. A client that falls
//! behind (the per-stream buffer overflows), or whose stream starts or
//! restarts (the leader changed), gets `reset` and must drop everything;
//! a client that loses its stream falls back to short TTLs. Close-to-open
//! consistency never depends on the feed: `open` always asks meta.
//!
//! Only the leader publishes: followers refuse the stream with NOT_LEADER,
//! and the leader ends every stream when it loses leadership.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::fs::{Op, ROOT_INO, Reply};

/// How many changes a slow stream may fall behind before it gets a reset.
pub const FEED_BUFFER: usize = 8192;

/// What one committed mutation changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Change {
    /// The session that made it (0 for meta's own operations).
    pub session: u64,
    /// Inodes whose attributes changed, or that were freed.
    pub inos: Vec<u64>,
    /// Directory entries `(parent, name)` added, removed or replaced.
    pub entries: Vec<(u64, String)>,
}

/// Returns what `op`, answered by `reply`, changed in the namespace
/// (`None` for operations no client caches anything of).
pub fn affected(session: u64, op: &Op, reply: &Reply) -> Option<Change> {
    let entry_of = |parent: u64, name: &str| vec![(parent, name.to_string())];
    let (inos, entries) = match (op, reply) {
        (
            Op::Create { parent, name, .. }
            | Op::Mkdir { parent, name, .. }
            | Op::Symlink { parent, name, .. }
            | Op::Mknod { parent, name, .. },
            Reply::Entry { attr, .. },
        ) => (vec![*parent, attr.ino], entry_of(*parent, name)),
        (
            Op::Link {
                ino,
                new_parent,
                new_name,
            },
            _,
        ) => (vec![*ino, *new_parent], entry_of(*new_parent, new_name)),
        (
            Op::Unlink { parent, name, .. } | Op::Rmdir { parent, name },
            Reply::Removed { ino, .. },
        ) => (vec![*parent, *ino], entry_of(*parent, name)),
        (
            Op::Rename {
                parent,
                name,
                new_parent,
                new_name,
                ..
            },
            Reply::Renamed { attr, replaced },
        ) => {
            let mut inos = vec![*parent, *new_parent, attr.ino];
            inos.extend(replaced.map(|(ino, _)| ino));
            let mut entries = entry_of(*parent, name);
            entries.extend(entry_of(*new_parent, new_name));
            (inos, entries)
        }
        (
            Op::SetAttr { ino, .. }
            | Op::SetXattr { ino, .. }
            | Op::RemoveXattr { ino, .. }
            | Op::ReportLength { ino, .. }
            | Op::Close { ino, .. }
            | Op::CloseCounted { ino, .. },
            _,
        ) => (vec![*ino], Vec::new()),
        (Op::CreateVolume { name, .. }, Reply::Volume(v))
        | (Op::CreateEncryptedVolume { name, .. }, Reply::EncryptedVolume { volume: v, .. })
        | (Op::CreateVolumeWith { name, .. }, Reply::VolumeWith { volume: v, .. }) => {
            (vec![ROOT_INO, v.root_ino], entry_of(ROOT_INO, name))
        }
        _ => return None,
    };
    let mut inos = inos;
    inos.sort_unstable();
    inos.dedup();
    Some(Change {
        session,
        inos,
        entries,
    })
}

/// The leader's feed of committed changes.
#[derive(Debug, Clone)]
pub struct ChangeFeed {
    tx: broadcast::Sender<Arc<Change>>,
}

impl Default for ChangeFeed {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(FEED_BUFFER).0,
        }
    }
}

impl ChangeFeed {
    /// Returns whether any stream watches the feed.
    pub fn watched(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Publishes what `op` changed, if anything, to every stream.
    pub fn publish(&self, session: u64, op: &Op, reply: &Reply) {
        if let Some(c) = affected(session, op, reply) {
            let _ = self.tx.send(Arc::new(c));
        }
    }

    /// Returns a receiver of every change published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{Inode, Kind};

    fn inode(ino: u64) -> Inode {
        Inode {
            ino,
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            nlink: 1,
            atime: 0,
            mtime: 0,
            ctime: 0,
            crtime: 0,
            volume: 1,
            parent: 1,
            layout: None,
            truncate_gen: 0,
            version: 1,
            target: None,
            salt: Vec::new(),
            key_version: 0,
        }
    }

    #[test]
    fn creates_renames_and_removals_name_their_entries_and_inodes() {
        let create = Op::Mkdir {
            parent: 5,
            name: "d".into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        };
        let made = Reply::Entry {
            attr: inode(9),
            parent: None,
        };
        let c = affected(3, &create, &made).expect("a change");
        assert_eq!(c.session, 3);
        assert_eq!(c.inos, vec![5, 9]);
        assert_eq!(c.entries, vec![(5, "d".to_string())]);

        let rename = Op::Rename {
            parent: 5,
            name: "a".into(),
            new_parent: 6,
            new_name: "b".into(),
            noreplace: false,
            exchange: false,
        };
        let renamed = Reply::Renamed {
            attr: inode(10),
            replaced: Some((11, true)),
        };
        let c = affected(0, &rename, &renamed).expect("a change");
        assert_eq!(c.inos, vec![5, 6, 10, 11]);
        assert_eq!(c.entries, vec![(5, "a".to_string()), (6, "b".to_string())]);

        let unlink = Op::Unlink {
            parent: 5,
            name: "x".into(),
            held_open: false,
        };
        let removed = Reply::Removed {
            ino: 12,
            freed: true,
            parent: inode(5),
        };
        let c = affected(0, &unlink, &removed).expect("a change");
        assert_eq!(c.inos, vec![5, 12]);
        assert_eq!(c.entries, vec![(5, "x".to_string())]);
    }

    #[test]
    fn attribute_changes_name_the_inode_and_others_nothing() {
        let len = Op::ReportLength {
            ino: 7,
            length: 10,
            truncate_gen: 0,
        };
        let c = affected(1, &len, &Reply::Attr(inode(7))).expect("a change");
        assert_eq!((c.inos, c.entries), (vec![7], vec![]));
        let open = Op::OpenSession {
            client_name: "x".into(),
        };
        assert_eq!(affected(1, &open, &Reply::Session(4)), None);
        // A failed operation publishes nothing: its reply is not matched.
        let create = Op::Create {
            parent: 1,
            name: "f".into(),
            mode: 0,
            uid: 0,
            gid: 0,
            exclusive: true,
            open_for_write: false,
            salt: vec![],
        };
        assert_eq!(affected(1, &create, &Reply::Unit), None);
    }

    #[test]
    fn a_new_encrypted_volume_names_its_root_and_a_rotation_nothing() {
        let volume = crate::fs::Volume {
            id: 2,
            name: "sec".into(),
            root_ino: 8,
            policy: crate::fs::VolumePolicy::default(),
            snap_seq: 0,
            used_bytes: 0,
            used_inodes: 1,
        };
        let made = Reply::EncryptedVolume {
            volume,
            keys: crate::fs::VolumeKeys::first([1; 16]),
        };
        let create = Op::CreateEncryptedVolume {
            name: "sec".into(),
            policy: crate::fs::VolumePolicy::default(),
            check: [1; 16],
        };
        let c = affected(1, &create, &made).expect("a change");
        assert_eq!(c.inos, vec![ROOT_INO, 8]);
        assert_eq!(c.entries, vec![(ROOT_INO, "sec".to_string())]);
        let rotate = Op::RotateVolumeKey {
            name: "sec".into(),
            check: [2; 16],
        };
        assert_eq!(affected(1, &rotate, &made), None);

        // A compressed one too; counting a close's bytes changes nothing
        // a client caches.
        let Reply::EncryptedVolume { volume, keys } = made else {
            unreachable!()
        };
        let made = Reply::VolumeWith {
            volume,
            keys: Some(keys),
            compression: Some(crate::fs::VolumeCompression::new(1, 65536)),
        };
        let create = Op::CreateVolumeWith {
            name: "sec".into(),
            policy: crate::fs::VolumePolicy::default(),
            check: Some([1; 16]),
            compression: 1,
            unit: 65536,
        };
        let c = affected(1, &create, &made).expect("a change");
        assert_eq!(c.inos, vec![ROOT_INO, 8]);
        assert_eq!(c.entries, vec![(ROOT_INO, "sec".to_string())]);
    }
}
