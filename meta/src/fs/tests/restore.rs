//! Restoring a snapshot into a new volume (`fs::restore`): the new volume
//! holds the snapshot's tree (new inode numbers, the same shape, modes,
//! sizes, links and xattrs), its files read the snapshot's data through
//! their origins until copied, and it and the snapshot then go their own
//! ways.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::super::store::key;
use super::snapshots::count as records_under;
use super::snapshots::{Dump, Live, Snap, Tree, dump, merge_steps, snapshot, step};
use super::*;

/// A dump without inode numbers: path → (kind, mode, size, nlink,
/// xattrs), plus the groups of paths that share an inode.
type Shape = (
    BTreeMap<String, (Kind, u32, u64, u32, Vec<(String, Vec<u8>)>)>,
    Vec<Vec<String>>,
);

fn shape(d: &Dump) -> Shape {
    let entries = d
        .iter()
        .map(|(p, e)| (p.clone(), (e.1, e.2, e.3, e.4, e.5.clone())))
        .collect();
    let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (p, e) in d {
        by_ino.entry(e.0).or_default().push(p.clone());
    }
    let mut groups: Vec<Vec<String>> = by_ino.into_values().filter(|g| g.len() > 1).collect();
    groups.sort();
    (entries, groups)
}

fn restore(sm: &mut Sm, snapshot: &str, to: &str) -> (Volume, RestoreJob) {
    match sm.op(Op::RestoreSnapshot {
        volume: "v".into(),
        snapshot: snapshot.into(),
        to: to.into(),
    }) {
        Ok(Reply::Restore(v, Some(j))) => (v, j),
        r => panic!("{r:?}"),
    }
}

/// Runs restore steps of at most `limit` entries until the restore into
/// `id` is done; returns how many it took.
fn finish(sm: &Sm, id: u64, limit: usize) -> usize {
    for n in 1..100_000 {
        let mut t = Txn::new(sm.fs.kv());
        let r = crate::fs::restore::step(&mut t, id, limit, 7).unwrap();
        t.commit().unwrap();
        if matches!(r, Reply::Restore(_, None)) {
            return n;
        }
    }
    panic!("the restore never finished");
}

fn origin(sm: &Sm, ino: u64) -> Option<Origin> {
    Txn::new(sm.fs.kv()).get(&key::origin(ino)).unwrap()
}

/// Checks the restored volume `w` against the snapshot's dump `want` of
/// volume `v`: the same shape, every file with data reads it from its
/// source object at the snapshot's seq, and every file has an object of
/// its own.
fn check_restored(sm: &Sm, v: &Volume, seq: u64, w: &Volume, want: &Dump) {
    let got = dump(&Live(&sm.fs), w.root_ino);
    assert_eq!(
        shape(&got),
        shape(want),
        "the restored tree is the snapshot's"
    );
    let snap = Snap(&sm.fs, v.id, seq);
    for (path, e) in &got {
        let a = sm.fs.getattr(e.0).unwrap();
        assert_eq!(a.volume, w.id);
        let Some(l) = &a.layout else { continue };
        let src = snap.attr(want[path].0);
        let sl = src.layout.unwrap();
        assert_ne!(l.object_id, sl.object_id, "{path} has an object of its own");
        assert_eq!((l.chains.clone(), l.chunk_size), (sl.chains, sl.chunk_size));
        match origin(sm, e.0) {
            Some(o) => {
                assert_eq!((o.volume, o.seq, o.object), (v.id, seq, sl.object_id));
                assert!(a.size > 0);
            }
            None => assert_eq!(a.size, 0, "{path}: only empty files need no origin"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn a_restored_volume_is_the_snapshot_and_then_its_own(
        before in prop::collection::vec(any::<(u8, u8, u8, u8)>(), 1..40),
        after in prop::collection::vec(any::<(u8, u8, u8, u8)>(), 0..30),
        limit in 1usize..5,
    ) {
        let mut sm = Sm::new();
        let v = plain_volume(&mut sm, "v");
        let mut taken = Vec::new();
        for op in before {
            step(&mut sm, &v, op, &mut taken);
            merge_steps(&sm);
        }
        let base = snapshot(&mut sm, "base");
        let want = dump(&Live(&sm.fs), v.root_ino);
        // The live tree moves on while the restore runs.
        let (w, job) = restore(&mut sm, "base", "w");
        prop_assert!(sm.fs.lookup(ROOT_INO, "w").is_err(), "hidden while restoring");
        prop_assert_eq!(
            sm.op(Op::CreateVolume { name: "w".into(), policy: VolumePolicy::default() })
                .unwrap_err()
                .code,
            ErrorCode::Exists
        );
        prop_assert_eq!(job.total, base.used_inodes);
        for op in after.iter().take(after.len() / 2) {
            step(&mut sm, &v, *op, &mut taken);
        }
        finish(&sm, w.id, limit);
        prop_assert_eq!(sm.fs.lookup(ROOT_INO, "w").unwrap().ino, w.root_ino);
        prop_assert_eq!(records_under(&sm, b"M"), 0);
        prop_assert_eq!(records_under(&sm, b"R"), 0);
        check_restored(&sm, &v, base.seq, &w, &want);
        // Changes to the restored volume leave the snapshot as it was.
        // (Snapshots are `step`'s of volume v: kinds 7 and 8 are skipped.)
        let mut none = Vec::new();
        for op in after.iter().skip(after.len() / 2).filter(|o| !matches!(o.0 % 9, 7 | 8)) {
            step(&mut sm, &w, *op, &mut none);
        }
        let snap_now = dump(&Snap(&sm.fs, v.id, base.seq), v.root_ino);
        prop_assert_eq!(&snap_now, &want);
        // The snapshot cannot go while the restored volume reads it.
        let e = sm.op(Op::DeleteSnapshot { volume: "v".into(), name: "base".into() });
        prop_assert_eq!(e.unwrap_err().code, ErrorCode::NotEmpty);
    }
}

#[test]
fn hard_links_symlinks_and_xattrs_are_restored_and_the_volume_goes_with_its_base() {
    let mut sm = Sm::new();
    let v = plain_volume(&mut sm, "v");
    let d = entry_attr(sm.op(Op::Mkdir {
        parent: v.root_ino,
        name: "d".into(),
        mode: 0o750,
        uid: 3,
        gid: 4,
    }));
    let a = entry_attr(create_in(&mut sm, d.ino, "a", &[]));
    sm.op(Op::SetAttr {
        ino: a.ino,
        attr: SetAttr {
            size: Some(5000),
            ..SetAttr::default()
        },
    })
    .unwrap();
    sm.op(Op::Link {
        ino: a.ino,
        new_parent: v.root_ino,
        new_name: "a2".into(),
    })
    .unwrap();
    sm.op(Op::Symlink {
        parent: d.ino,
        name: "s".into(),
        target: "../a2".into(),
        uid: 0,
        gid: 0,
    })
    .unwrap();
    sm.op(Op::SetXattr {
        ino: d.ino,
        name: "user.k".into(),
        value: b"v".to_vec(),
        create_only: false,
        replace_only: false,
    })
    .unwrap();
    let base = snapshot(&mut sm, "base");
    let want = dump(&Live(&sm.fs), v.root_ino);
    let (w, _) = restore(&mut sm, "base", "w");
    assert_eq!(finish(&sm, w.id, 1), 6, "one entry per step, then the map");
    check_restored(&sm, &v, base.seq, &w, &want);
    let got = dump(&Live(&sm.fs), w.root_ino);
    assert_eq!(got["/a2"].0, got["/d/a"].0, "one inode, two names");
    assert_eq!(got["/a2"].4, 2);
    let s = sm
        .fs
        .lookup(sm.fs.lookup(w.root_ino, "d").unwrap().ino, "s")
        .unwrap();
    assert_eq!(sm.fs.readlink(s.ino).unwrap(), "../a2");
    assert_eq!(sm.fs.getattr(w.root_ino).unwrap().parent, ROOT_INO);
    let wv: Volume = Txn::new(sm.fs.kv())
        .get(&key::volume(w.id))
        .unwrap()
        .unwrap();
    assert_eq!(
        (wv.used_bytes, wv.used_inodes),
        (base.used_bytes, base.used_inodes)
    );

    // Removing the restored volume frees the snapshot; its files' own
    // objects go to garbage, the source's stay with the snapshot.
    let wd = sm.fs.lookup(w.root_ino, "d").unwrap();
    for (p, n) in [(wd.ino, "a"), (wd.ino, "s"), (w.root_ino, "a2")] {
        sm.op(Op::Unlink {
            parent: p,
            name: n.into(),
            held_open: false,
        })
        .unwrap();
    }
    sm.op(Op::Rmdir {
        parent: w.root_ino,
        name: "d".into(),
    })
    .unwrap();
    assert_eq!(records_under(&sm, b"b"), 0, "no origin left");
    sm.op(Op::Rmdir {
        parent: ROOT_INO,
        name: "w".into(),
    })
    .unwrap();
    assert_eq!(records_under(&sm, b"Q") + records_under(&sm, b"B"), 0);
    sm.op(Op::DeleteSnapshot {
        volume: "v".into(),
        name: "base".into(),
    })
    .unwrap();
}

fn run_as(sm: &mut Sm, session: u64, time_ns: i64, op: Op) -> Response {
    sm.index += 1;
    sm.run(Command {
        client_id: session,
        seq: sm.index,
        ack_below: 0,
        time_ns,
        op,
    })
}

#[test]
fn one_session_copies_a_file_up_and_a_truncate_to_zero_drops_the_origin() {
    let mut sm = Sm::new();
    let v = plain_volume(&mut sm, "v");
    for n in ["a", "b"] {
        let f = entry_attr(create_in(&mut sm, v.root_ino, n, &[]));
        sm.op(Op::SetAttr {
            ino: f.ino,
            attr: SetAttr {
                size: Some(100),
                ..SetAttr::default()
            },
        })
        .unwrap();
    }
    snapshot(&mut sm, "base");
    let (w, _) = restore(&mut sm, "base", "w");
    finish(&sm, w.id, 100);
    let a = sm.fs.lookup(w.root_ino, "a").unwrap();
    let b = sm.fs.lookup(w.root_ino, "b").unwrap();
    let (s1, s2) = (sm.session(), sm.session());
    let t0 = 1_000_000_000_000;
    // Another length than 0 needs the data first.
    let e = sm.op(Op::SetAttr {
        ino: a.ino,
        attr: SetAttr {
            size: Some(10),
            ..SetAttr::default()
        },
    });
    assert_eq!(e.unwrap_err().code, ErrorCode::Unavailable);
    // s1 claims; s2 waits while the claim is fresh, then takes it over.
    let up = |discard| Op::CopyUp {
        ino: a.ino,
        discard,
    };
    let o = match run_as(&mut sm, s1, t0, up(false)) {
        Ok(Reply::Origin(Some(o))) => o,
        r => panic!("{r:?}"),
    };
    assert_eq!(o.copier, s1);
    let busy = run_as(&mut sm, s2, t0 + 1_000, up(false)).unwrap_err();
    assert_eq!(busy.code, ErrorCode::Unavailable);
    // s1 renews; later s2 finds the claim lapsed and takes it.
    run_as(&mut sm, s1, t0 + 10_000_000_000, up(false)).unwrap();
    let late = t0 + 10_000_000_000 + crate::fs::restore::CLAIM_NS;
    assert!(matches!(
        run_as(&mut sm, s2, late, up(false)),
        Ok(Reply::Origin(Some(Origin { copier, .. }))) if copier == s2
    ));
    let stale = run_as(&mut sm, s1, late + 1, Op::CopyDone { ino: a.ino }).unwrap_err();
    assert_eq!(stale.code, ErrorCode::StaleSequence);
    assert!(origin(&sm, a.ino).is_some());
    run_as(&mut sm, s2, late + 2, Op::CopyDone { ino: a.ino }).unwrap();
    assert!(origin(&sm, a.ino).is_none());
    assert!(matches!(
        run_as(&mut sm, s1, late + 3, up(false)),
        Ok(Reply::Origin(None))
    ));
    assert_eq!(
        sm.fs.getattr(a.ino).unwrap().size,
        100,
        "copied, not emptied"
    );
    // A truncate to nothing drops the origin without a copy.
    let r = run_as(
        &mut sm,
        s1,
        late + 4,
        Op::CopyUp {
            ino: b.ino,
            discard: true,
        },
    );
    assert!(matches!(r, Ok(Reply::Origin(None))));
    assert!(origin(&sm, b.ino).is_none());
    assert_eq!(sm.fs.getattr(b.ino).unwrap().size, 0);
    let wv: Volume = Txn::new(sm.fs.kv())
        .get(&key::volume(w.id))
        .unwrap()
        .unwrap();
    assert_eq!(wv.used_bytes, 100, "b's 100 bytes are no longer charged");
}

#[test]
fn a_snapshot_of_a_restored_volume_keeps_its_files_origins() {
    let mut sm = Sm::new();
    let v = plain_volume(&mut sm, "v");
    let f = entry_attr(create_in(&mut sm, v.root_ino, "f", &[]));
    sm.op(Op::SetAttr {
        ino: f.ino,
        attr: SetAttr {
            size: Some(100),
            ..SetAttr::default()
        },
    })
    .unwrap();
    snapshot(&mut sm, "base");
    let (w, _) = restore(&mut sm, "base", "w");
    finish(&sm, w.id, 100);
    let wf = sm.fs.lookup(w.root_ino, "f").unwrap();
    let s = match sm.op(Op::CreateSnapshot {
        volume: "w".into(),
        name: "early".into(),
    }) {
        Ok(Reply::Snapshot(s)) => s,
        r => panic!("{r:?}"),
    };
    let sid = sm.session();
    run_as(
        &mut sm,
        sid,
        5,
        Op::CopyUp {
            ino: wf.ino,
            discard: false,
        },
    )
    .unwrap();
    run_as(&mut sm, sid, 6, Op::CopyDone { ino: wf.ino }).unwrap();
    assert!(origin(&sm, wf.ino).is_none());
    let t = Txn::new(sm.fs.kv());
    let view = crate::fs::snapshots::View::new(&t, w.id, s.seq).unwrap();
    let kept = view.get_raw(&t, &key::origin(wf.ino)).unwrap();
    assert!(
        kept.is_some(),
        "the snapshot still reads f through its origin"
    );
}
