//! Invariant 7 at the namespace level: a snapshot's tree never changes,
//! whatever is done to the live tree, to other snapshots and to snapshots
//! being deleted, and deleting every snapshot leaves no record behind.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::super::store::key;
use super::*;

const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

/// One entry of a tree dump: path → (ino, kind, mode, size, nlink,
/// xattrs).
pub(super) type Dump = BTreeMap<String, (u64, Kind, u32, u64, u32, Vec<(String, Vec<u8>)>)>;

/// Reads a tree page by page (2 entries per page, to cross pages).
pub(super) trait Tree {
    fn attr(&self, ino: u64) -> Inode;
    fn page(&self, ino: u64, cookie: &[u8]) -> (Vec<read::DirEntry>, Option<Vec<u8>>);
    fn xattrs(&self, ino: u64) -> Vec<(String, Vec<u8>)>;
}

pub(super) struct Live<'a>(pub(super) &'a FsState<MemKv>);

impl Tree for Live<'_> {
    fn attr(&self, ino: u64) -> Inode {
        self.0.getattr(ino).unwrap()
    }
    fn page(&self, ino: u64, cookie: &[u8]) -> (Vec<read::DirEntry>, Option<Vec<u8>>) {
        self.0.readdir(ino, cookie, 2, true).unwrap()
    }
    fn xattrs(&self, ino: u64) -> Vec<(String, Vec<u8>)> {
        self.0
            .listxattr(ino)
            .unwrap()
            .into_iter()
            .map(|n| {
                let v = self.0.getxattr(ino, &n).unwrap();
                (n, v)
            })
            .collect()
    }
}

pub(super) struct Snap<'a>(
    pub(super) &'a FsState<MemKv>,
    pub(super) u64,
    pub(super) u64,
);

impl Tree for Snap<'_> {
    fn attr(&self, ino: u64) -> Inode {
        self.0.snapshot_getattr(self.1, self.2, ino).unwrap()
    }
    fn page(&self, ino: u64, cookie: &[u8]) -> (Vec<read::DirEntry>, Option<Vec<u8>>) {
        self.0
            .snapshot_readdir(self.1, self.2, ino, cookie, 2, true)
            .unwrap()
    }
    fn xattrs(&self, ino: u64) -> Vec<(String, Vec<u8>)> {
        self.0.snapshot_xattrs(self.1, self.2, ino).unwrap()
    }
}

pub(super) fn dump(tree: &dyn Tree, root: u64) -> Dump {
    let mut out = Dump::new();
    let mut todo = vec![(root, String::new())];
    while let Some((dir, path)) = todo.pop() {
        let mut cookie = Vec::new();
        loop {
            let (entries, next) = tree.page(dir, &cookie);
            for e in entries {
                let a = e.attr.expect("readdirplus");
                assert_eq!(a, tree.attr(e.ino), "readdirplus and getattr agree");
                let p = format!("{path}/{}", e.name);
                if a.kind == Kind::Dir {
                    todo.push((a.ino, p.clone()));
                }
                out.insert(
                    p,
                    (a.ino, a.kind, a.mode, a.size, a.nlink, tree.xattrs(a.ino)),
                );
            }
            match next {
                Some(c) => cookie = c,
                None => break,
            }
        }
    }
    out
}

fn dirs(sm: &Sm, root: u64) -> Vec<u64> {
    let mut out = vec![root];
    out.extend(
        dump(&Live(&sm.fs), root)
            .values()
            .filter(|e| e.1 == Kind::Dir)
            .map(|e| e.0),
    );
    out
}

pub(super) fn snapshot(sm: &mut Sm, name: &str) -> Snapshot {
    match sm.op(Op::CreateSnapshot {
        volume: "v".into(),
        name: name.into(),
    }) {
        Ok(Reply::Snapshot(s)) => s,
        r => panic!("{r:?}"),
    }
}

/// Marks snapshot `seq` deleting without merging anything: what a delete
/// entry leaves when its snapshot holds more than one entry merges.
fn start_slow_delete(sm: &Sm, volume: u64, seq: u64) {
    let mut t = Txn::new(sm.fs.kv());
    let k = key::snapshot(volume, seq);
    let mut s: Snapshot = t.get(&k).unwrap().unwrap();
    s.deleting = true;
    t.put(k, &s);
    t.commit().unwrap();
}

/// One merge step of at most one record; returns whether `seq` is gone.
fn merge_one(sm: &Sm, volume: u64, seq: u64) -> bool {
    let mut t = Txn::new(sm.fs.kv());
    let done = match crate::fs::snapshots::merge(&mut t, volume, seq, 1) {
        Ok(done) => done,
        Err(e) => panic!("{e:?}"),
    };
    t.commit().unwrap();
    done
}

pub(super) fn count(sm: &Sm, prefix: &[u8]) -> usize {
    sm.fs.kv().scan(prefix, None, usize::MAX).unwrap().len()
}

pub(super) fn step(
    sm: &mut Sm,
    vol: &Volume,
    op: (u8, u8, u8, u8),
    taken: &mut Vec<(Snapshot, Dump)>,
) {
    let (kind, a, b, c) = op;
    let ds = dirs(sm, vol.root_ino);
    let dir = |x: u8| ds[x as usize % ds.len()];
    let name = |x: u8| NAMES[x as usize % NAMES.len()].to_string();
    let live = dump(&Live(&sm.fs), vol.root_ino);
    let any = |x: u8| {
        live.values()
            .nth(x as usize % live.len().max(1))
            .map(|e| e.0)
    };
    // Errors (a taken name, a non-empty directory) are part of the game.
    let _ = match kind % 9 {
        0 => create_in(sm, dir(a), &name(b), &[]).map(|_| Reply::Unit),
        1 => sm.op(Op::Mkdir {
            parent: dir(a),
            name: name(b),
            mode: 0o755,
            uid: 0,
            gid: 0,
        }),
        2 => sm.op(Op::Unlink {
            parent: dir(a),
            name: name(b),
            held_open: false,
        }),
        3 => sm.op(Op::Rmdir {
            parent: dir(a),
            name: name(b),
        }),
        4 => sm.op(Op::Rename {
            parent: dir(a),
            name: name(b),
            new_parent: dir(c),
            new_name: name(c / 3),
            noreplace: false,
            exchange: c % 5 == 0,
        }),
        5 => match any(a) {
            Some(ino) => sm.op(Op::SetAttr {
                ino,
                attr: SetAttr {
                    mode: Some(u32::from(b)),
                    size: (c % 2 == 0).then_some(u64::from(c) * 100),
                    ..SetAttr::default()
                },
            }),
            None => Ok(Reply::Unit),
        },
        6 => match any(a) {
            Some(ino) => sm.op(Op::SetXattr {
                ino,
                name: format!("user.{}", name(b)),
                value: vec![c],
                create_only: false,
                replace_only: false,
            }),
            None => Ok(Reply::Unit),
        },
        7 => {
            let s = snapshot(sm, &format!("s{}", sm.index));
            taken.push((s, live.clone()));
            Ok(Reply::Unit)
        }
        _ => {
            if !taken.is_empty() {
                let (s, _) = taken.remove(a as usize % taken.len());
                if b % 2 == 0 {
                    sm.op(Op::DeleteSnapshot {
                        volume: "v".into(),
                        name: s.name.clone(),
                    })
                    .unwrap();
                } else {
                    start_slow_delete(sm, vol.id, s.seq);
                }
            }
            Ok(Reply::Unit)
        }
    };
}

fn check(sm: &Sm, vol: &Volume, taken: &[(Snapshot, Dump)]) {
    for (s, want) in taken {
        let got = dump(&Snap(&sm.fs, vol.id, s.seq), vol.root_ino);
        assert_eq!(&got, want, "snapshot {} changed", s.name);
    }
}

/// Runs one merge step of every snapshot being deleted.
pub(super) fn merge_steps(sm: &Sm) {
    for s in sm.fs.deleting_snapshots().unwrap() {
        merge_one(sm, s.volume, s.seq);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn snapshots_never_change(ops in prop::collection::vec(any::<(u8, u8, u8, u8)>(), 1..70)) {
        let mut sm = Sm::new();
        let vol = plain_volume(&mut sm, "v");
        let mut taken = Vec::new();
        for op in ops {
            step(&mut sm, &vol, op, &mut taken);
            merge_steps(&sm);
            check(&sm, &vol, &taken);
        }
        // Deleting every snapshot leaves no pre-image, pin or record, and
        // every freed object on the garbage list.
        for (s, _) in std::mem::take(&mut taken) {
            sm.op(Op::DeleteSnapshot { volume: "v".into(), name: s.name }).unwrap();
        }
        while !sm.fs.deleting_snapshots().unwrap().is_empty() {
            merge_steps(&sm);
        }
        prop_assert_eq!(count(&sm, b"P"), 0);
        prop_assert_eq!(count(&sm, b"h"), 0);
        prop_assert_eq!(count(&sm, b"S"), 0);
        let v: Volume = Txn::new(sm.fs.kv()).get(&key::volume(vol.id)).unwrap().unwrap();
        prop_assert_eq!(v.snap_seq, 0);
        let live: Vec<u64> = dump(&Live(&sm.fs), vol.root_ino).values().map(|e| e.0).collect();
        let objects = sm.fs.referenced_objects().unwrap();
        let garbage = sm.fs.garbage(None, usize::MAX).unwrap().len();
        let files = live.iter().filter(|i| sm.fs.getattr(**i).unwrap().layout.is_some()).count();
        prop_assert_eq!(objects.len(), files + garbage);
    }
}

#[test]
fn a_snapshot_keeps_what_was_there_and_only_that() {
    let mut sm = Sm::new();
    let vol = plain_volume(&mut sm, "v");
    let d = entry_attr(sm.op(Op::Mkdir {
        parent: vol.root_ino,
        name: "d".into(),
        mode: 0o755,
        uid: 0,
        gid: 0,
    }));
    let a = entry_attr(create_in(&mut sm, d.ino, "a", &[]));
    let s = snapshot(&mut sm, "monday");
    assert_eq!((s.volume, s.used_inodes), (vol.id, 3));
    // Idempotent by name.
    assert_eq!(snapshot(&mut sm, "monday"), s);
    sm.op(Op::Unlink {
        parent: d.ino,
        name: "a".into(),
        held_open: false,
    })
    .unwrap();
    let b = entry_attr(create_in(&mut sm, d.ino, "b", &[]));
    // The snapshot has a and not b; the live tree the other way round.
    assert_eq!(
        sm.fs
            .snapshot_lookup(vol.id, s.seq, d.ino, "a")
            .unwrap()
            .ino,
        a.ino
    );
    let err = sm
        .fs
        .snapshot_lookup(vol.id, s.seq, d.ino, "b")
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    assert!(sm.fs.snapshot_getattr(vol.id, s.seq, b.ino).is_err());
    assert!(sm.fs.lookup(d.ino, "a").is_err());
    // a's data is held for the snapshot, not garbage; b's would not be.
    assert!(sm.fs.garbage(None, 10).unwrap().is_empty());
    let a_obj = a.layout.as_ref().unwrap().object_id;
    assert!(sm.fs.referenced_objects().unwrap().contains(&a_obj));
    sm.op(Op::Unlink {
        parent: d.ino,
        name: "b".into(),
        held_open: false,
    })
    .unwrap();
    let g = sm.fs.garbage(None, 10).unwrap();
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].layout, b.layout.clone().unwrap());
    // A volume with snapshots cannot be removed.
    sm.op(Op::Rmdir {
        parent: d.ino,
        name: "x".into(),
    })
    .unwrap_err();
    sm.op(Op::Rmdir {
        parent: vol.root_ino,
        name: "d".into(),
    })
    .unwrap();
    let err = sm
        .op(Op::Rmdir {
            parent: ROOT_INO,
            name: "v".into(),
        })
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotEmpty);
    assert!(err.message.contains("snapshots"), "{err}");
    // Deleting the snapshot frees a's data and then the volume can go.
    sm.op(Op::DeleteSnapshot {
        volume: "v".into(),
        name: "monday".into(),
    })
    .unwrap();
    let g = sm.fs.garbage(None, 10).unwrap();
    assert_eq!(g.len(), 2, "{g:?}");
    assert!(sm.fs.snapshots(vol.id).unwrap().is_empty());
    let err = sm
        .op(Op::DeleteSnapshot {
            volume: "v".into(),
            name: "monday".into(),
        })
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    sm.op(Op::Rmdir {
        parent: ROOT_INO,
        name: "v".into(),
    })
    .unwrap();
}

#[test]
fn a_snapshot_in_a_batch_sees_the_commands_before_it_only() {
    let mut sm = Sm::new();
    let vol = plain_volume(&mut sm, "v");
    let mut first = create_op("early");
    let mut last = create_op("late");
    for op in [&mut first, &mut last] {
        if let Op::Create { parent, .. } = op {
            *parent = vol.root_ino;
        }
    }
    let batch = Op::Batch(vec![
        Command::internal(1, first),
        Command::internal(
            1,
            Op::CreateSnapshot {
                volume: "v".into(),
                name: "mid".into(),
            },
        ),
        Command::internal(1, last),
    ]);
    sm.op(batch).unwrap();
    let s = sm.fs.snapshot_named(vol.id, "mid").unwrap();
    let (names, _) = sm
        .fs
        .snapshot_readdir(vol.id, s.seq, vol.root_ino, &[], 100, false)
        .unwrap();
    let names: Vec<_> = names.into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["early"]);
}

#[test]
fn snapshot_names_are_checked_and_other_volumes_pay_nothing() {
    let mut sm = Sm::new();
    let vol = plain_volume(&mut sm, "v");
    let other = plain_volume(&mut sm, "w");
    for bad in ["", "a/b", ".."] {
        let err = sm
            .op(Op::CreateSnapshot {
                volume: "v".into(),
                name: bad.into(),
            })
            .unwrap_err();
        assert!(err.message.contains("snapshot name"), "{err}");
    }
    let err = sm
        .op(Op::CreateSnapshot {
            volume: "nope".into(),
            name: "s".into(),
        })
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    let s = snapshot(&mut sm, "s");
    // Writes in another volume keep no pre-images.
    create_in(&mut sm, other.root_ino, "f", &[]).unwrap();
    assert_eq!(count(&sm, b"P"), 0);
    // Snapshot seqs are cluster-wide: a later one of another volume is
    // larger, and reading volume w at v's seq finds nothing.
    let s2 = match sm.op(Op::CreateSnapshot {
        volume: "w".into(),
        name: "s".into(),
    }) {
        Ok(Reply::Snapshot(s)) => s,
        r => panic!("{r:?}"),
    };
    assert!(s2.seq > s.seq);
    assert!(
        sm.fs
            .snapshot_getattr(other.id, s.seq, other.root_ino)
            .is_err()
    );
    // A snapshot view never shows another volume's inodes.
    let f = sm.fs.lookup(other.root_ino, "f").unwrap();
    assert!(sm.fs.snapshot_getattr(vol.id, s.seq, f.ino).is_err());
    assert_eq!(
        sm.fs
            .snapshot_getattr(vol.id, s.seq, vol.root_ino)
            .unwrap()
            .ino,
        vol.root_ino
    );
}
