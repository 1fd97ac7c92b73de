//! Chunk clones for snapshots (DESIGN §3, invariant 7) against real files
//! and a real glommio executor: whatever is written, truncated, committed
//! in batches, pruned and reopened, a snapshot's chunk reads back exactly
//! as it was when the snapshot was taken, and freeing every clone and the
//! chunk leaves no block in use.

use std::future::Future;

use cairn_chunkserver::store::{ReadMode, ShardStore, Snap, StoreError, Target, WriteIn, layout};
use cairn_proto::ids::{ChunkId, ObjectId};
use rand::{Rng, SeedableRng};

fn run<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .spawn(f)
        .expect("spawn executor")
        .join()
        .expect("executor");
}

const C: ChunkId = ChunkId {
    object: ObjectId(7),
    index: 0,
};

fn crcs(offset: u64, data: &[u8]) -> Vec<u32> {
    cairn_proto::frame::segment_crcs(offset, data)
}

async fn write(s: &ShardStore, v: u64, off: u64, data: &[u8], seq: u64, commit: bool) {
    let c = crcs(off, data);
    let w = WriteIn {
        offset: off,
        data,
        segment_crcs: &c,
        seals: &[],
        snap: Snap {
            seq,
            no_clone: false,
        },
    };
    s.write_in_chain(9, C, v, w, commit).await.expect("write");
}

async fn live(s: &ShardStore) -> Option<Vec<u8>> {
    match s.read(C, 0, layout::CHUNK_MAX, ReadMode::Committed).await {
        Ok(o) => Some(o.data.to_vec()),
        Err(StoreError::NotFound { .. }) => None,
        Err(e) => panic!("{e}"),
    }
}

async fn snapshot(s: &ShardStore, seq: u64) -> Option<Vec<u8>> {
    match s.read_snapshot(C, seq, 0, layout::CHUNK_MAX).await {
        Ok(o) => {
            assert_eq!(o.block_crcs, crcs(0, &o.data));
            Some(o.data.to_vec())
        }
        Err(StoreError::NotFound { .. }) => None,
        Err(e) => panic!("snapshot {seq}: {e}"),
    }
}

/// One random history: writes, truncates, pending versions committed in
/// batches, snapshots taken and pruned, a reopen.
fn history(seed: u64) {
    run(move || async move {
        let dir = tempfile::tempdir().expect("tempdir");
        Target::format(dir.path(), 1).expect("format");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut t = Target::open(dir.path()).expect("open");
        let mut s = t.open_shard(0).await.expect("shard");
        let mut g = 0u64; // the newest snapshot seq
        let mut version = 0u64;
        let mut committed = 0u64;
        let mut taken: Vec<(u64, Option<Vec<u8>>)> = Vec::new();
        for step in 0..60 {
            match rng.random_range(0..10) {
                0..=4 => {
                    // Offsets across several 256 KiB block groups, so
                    // clones copy some groups and read others through.
                    let off =
                        [0, 3000, 9000, 262_000, 600_000, 1_000_000][rng.random_range(0..6usize)];
                    let len = rng.random_range(1..20_000usize);
                    let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                    version += 1;
                    let commit = rng.random_bool(0.7);
                    write(&s, version, off, &data, g, commit).await;
                    if commit {
                        committed = version;
                    }
                }
                5 if version > 0 => {
                    version += 1;
                    let len = rng.random_range(0..1_100_000u64);
                    s.truncate(
                        C,
                        version,
                        len,
                        Snap {
                            seq: g,
                            no_clone: false,
                        },
                    )
                    .await
                    .expect("truncate");
                }
                6 | 7 => {
                    // A snapshot sees what is committed (meta makes it
                    // ready once writes under older seqs are done).
                    if committed < version {
                        s.commit_through(C, version, true).await.expect("commit");
                        committed = version;
                    }
                    g += 1;
                    taken.push((g, live(&s).await));
                }
                8 if !taken.is_empty() => {
                    let i = rng.random_range(0..taken.len());
                    taken.remove(i);
                    let seqs: Vec<u64> = taken.iter().map(|(q, _)| *q).collect();
                    // A list read before the newest snapshot was taken
                    // frees none of that snapshot's clones.
                    let stale: Vec<u64> = seqs.iter().copied().filter(|q| *q < g).collect();
                    s.prune_clones(&stale, g.saturating_sub(1))
                        .await
                        .expect("prune stale");
                    s.prune_clones(&seqs, g).await.expect("prune");
                }
                _ if rng.random_bool(0.3) => {
                    drop(s);
                    drop(t);
                    t = Target::open(dir.path()).expect("reopen");
                    s = t.open_shard(0).await.expect("shard");
                }
                _ => {}
            }
            if committed < version && rng.random_bool(0.5) {
                let through = rng.random_range(committed + 1..=version);
                s.commit_through(C, through, true).await.expect("commit");
                committed = through;
            }
            for (q, want) in &taken {
                let got = snapshot(&s, *q).await;
                assert_eq!(
                    got.as_ref().map(Vec::len),
                    want.as_ref().map(Vec::len),
                    "seed {seed} step {step}: snapshot {q} changed length"
                );
                assert!(
                    got == *want,
                    "seed {seed} step {step}: snapshot {q} changed"
                );
            }
        }
        // A resync copy of this replica, clones and all, serves every
        // snapshot alike, and keeps clones alike after one more write.
        if committed < version {
            s.commit_through(C, version, true).await.expect("commit");
        }
        let copy_dir = tempfile::tempdir().expect("tempdir");
        Target::format(copy_dir.path(), 1).expect("format");
        let ct = Target::open(copy_dir.path()).expect("open");
        let cs = ct.open_shard(0).await.expect("shard");
        if copy_replica(&s, &cs, g).await {
            // Snapshot g + 1, then a write under it on both replicas.
            taken.push((g + 1, live(&s).await));
            version += 1;
            let data = vec![0xC3; 9000];
            write(&s, version, 2000, &data, g + 1, true).await;
            write(&cs, version, 2000, &data, g + 1, true).await;
            assert!(
                live(&cs).await == live(&s).await,
                "seed {seed}: live differs"
            );
            for (q, want) in &taken {
                assert!(
                    snapshot(&cs, *q).await == *want,
                    "seed {seed}: snapshot {q} differs on the copy"
                );
            }
            let seqs: Vec<u64> = taken.iter().skip(1).map(|(q, _)| *q).collect();
            cs.prune_clones(&seqs, g + 1).await.expect("prune copy");
            for (q, want) in taken.iter().skip(1) {
                assert!(
                    snapshot(&cs, *q).await == *want,
                    "seed {seed}: {q} after prune"
                );
            }
            cs.prune_clones(&[], u64::MAX).await.expect("prune all");
            cs.remove(C).await.expect("remove");
            let u = cs.usage();
            assert_eq!(
                u.used_bytes, u.deferred_bytes,
                "seed {seed}: the copy holds blocks"
            );
        }
        drop(cs);
        drop(ct);
        let ct = Target::open(copy_dir.path()).expect("reopen");
        let cs = ct.open_shard(0).await.expect("shard");
        assert_eq!(
            cs.usage().used_bytes,
            0,
            "seed {seed}: the copy leaked a block"
        );

        // Every clone pruned and the chunk removed: no block stays in use.
        s.prune_clones(&[], u64::MAX).await.expect("prune all");
        s.remove(C).await.expect("remove");
        let u = s.usage();
        assert_eq!(
            u.used_bytes, u.deferred_bytes,
            "seed {seed}: only released blocks may remain counted"
        );
        drop(s);
        drop(t);
        let t = Target::open(dir.path()).expect("reopen");
        let s = t.open_shard(0).await.expect("shard");
        assert_eq!(s.usage().used_bytes, 0, "seed {seed}: a block leaked");
    });
}

/// Copies `from`'s chunk to `to` as a resync does: the committed version
/// (which sets the copy's snapshot floor to `g`), then every clone above
/// `from`'s floor, newest first, in pieces, then the floor. Returns
/// whether there was a chunk to copy.
async fn copy_replica(from: &ShardStore, to: &ShardStore, g: u64) -> bool {
    let Some(st) = from.stat(C).expect("stat") else {
        return false;
    };
    if st.committed_version == 0 {
        return false;
    }
    let out = from
        .read(C, 0, layout::CHUNK_MAX, ReadMode::Committed)
        .await
        .expect("read");
    let piece = WriteIn {
        offset: 0,
        data: &out.data,
        segment_crcs: &out.block_crcs,
        seals: &[],
        snap: Snap {
            seq: g,
            no_clone: false,
        },
    };
    to.install_piece(9, C, st.committed_version, st.committed_len, piece)
        .await
        .expect("install");
    let list = from.clone_list(C).expect("clones").expect("chunk");
    // Pieces of one block group (256 KiB) would be the unit; these chunks
    // are smaller, so each clone goes in a piece, and an empty one too.
    for c in list.clones.iter().rev() {
        let o = from
            .read_clone(C, c.seq, 0, c.len)
            .await
            .expect("read clone");
        let piece = WriteIn {
            offset: 0,
            data: &o.data,
            segment_crcs: &o.block_crcs,
            seals: &[],
            snap: Snap::default(),
        };
        let header = layout::CloneHeader {
            version: c.version,
            len: c.len,
            birth: c.birth,
        };
        match to.install_clone_piece(C, c.seq, header, piece).await {
            Ok(()) => {}
            Err(StoreError::CloneNotMissing { .. }) => assert!(c.seq > g),
            Err(e) => panic!("install clone {}: {e}", c.seq),
        }
    }
    to.set_snap_floor(C, st.committed_version, list.floor, list.birth, list.seq)
        .await
        .expect("floor");
    true
}

#[test]
fn snapshots_read_back_unchanged_through_any_history() {
    for seed in 0..32 {
        history(seed);
    }
}

#[test]
fn a_chunk_born_after_a_snapshot_is_a_hole_in_it_and_a_copy_has_no_old_snapshots() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        Target::format(dir.path(), 1).expect("format");
        let t = Target::open(dir.path()).expect("open");
        let s = t.open_shard(0).await.expect("shard");
        write(&s, 1, 0, &[1u8; 5000], 4, true).await;
        assert_eq!(snapshot(&s, 4).await, None, "born under seq 4");
        assert_eq!(snapshot(&s, 5).await, Some(vec![1u8; 5000]));
        // An unchanged chunk reads its committed version in a later
        // snapshot; a write under seq 6 keeps it for snapshot 6.
        write(&s, 2, 0, &[2u8; 100], 6, true).await;
        assert_eq!(snapshot(&s, 5).await, Some(vec![1u8; 5000]));
        assert_eq!(snapshot(&s, 6).await, Some(vec![1u8; 5000]));
        let mut now = vec![1u8; 5000];
        now[..100].fill(2);
        assert_eq!(snapshot(&s, 7).await, Some(now.clone()));
        assert_eq!(live(&s).await, Some(now));
        // A write asking for no clone keeps none.
        let c = crcs(0, &[3u8; 10]);
        let w = WriteIn {
            offset: 0,
            data: &[3u8; 10],
            segment_crcs: &c,
            seals: &[],
            snap: Snap {
                seq: 9,
                no_clone: true,
            },
        };
        s.write_in_chain(9, C, 3, w, true).await.expect("write");
        let mut now9 = vec![1u8; 5000];
        now9[..100].fill(2);
        now9[..10].fill(3);
        assert_eq!(snapshot(&s, 8).await, Some(now9));

        // A copy installed from another replica carries no clones: no
        // snapshot up to the seq of the copy is served from it.
        let d = vec![5u8; 4096];
        let c = crcs(0, &d);
        let piece = WriteIn {
            offset: 0,
            data: &d,
            segment_crcs: &c,
            seals: &[],
            snap: Snap {
                seq: 9,
                no_clone: false,
            },
        };
        s.install_piece(9, C, 3, 4096, piece)
            .await
            .expect("install");
        assert!(matches!(
            s.read_snapshot(C, 6, 0, 4096).await,
            Err(StoreError::NoClones { floor: 9, .. })
        ));
        assert_eq!(snapshot(&s, 10).await, Some(d));
    });
}

#[test]
fn scrub_checks_the_blocks_only_a_clone_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    Target::format(dir.path(), 1).expect("format");
    let p = dir.path().to_path_buf();
    run(move || async move {
        let t = Target::open(&p).expect("open");
        let s = t.open_shard(0).await.expect("shard");
        // Two blocks; the second is replaced after snapshot 1, so only the
        // clone holds its old bytes (0xB1).
        let mut d = vec![0xB0u8; 4096];
        d.extend(vec![0xB1u8; 4096]);
        write(&s, 1, 0, &d, 0, true).await;
        write(&s, 2, 4096, &[0xC2u8; 4096], 1, true).await;
        let r = s.scrub_chunk(C).await.expect("scrub");
        assert_eq!(
            r.blocks_checked, 3,
            "two current blocks and the clone's own"
        );
        assert!(r.bad_blocks.is_empty() && r.bad_clone_blocks.is_empty());
        s.close().await.expect("close");
    });
    let file = dir.path().join("data/shard-0.dat");
    let mut bytes = std::fs::read(&file).expect("read data file");
    let at = bytes
        .chunks(4096)
        .position(|b| b.iter().all(|x| *x == 0xB1))
        .expect("the clone's block on disk");
    bytes[at * 4096 + 99] ^= 0x08;
    std::fs::write(&file, &bytes).expect("corrupt");
    let p = dir.path().to_path_buf();
    run(move || async move {
        let t = Target::open(&p).expect("open");
        let s = t.open_shard(0).await.expect("shard");
        let r = s.scrub_chunk(C).await.expect("scrub");
        assert!(r.bad_blocks.is_empty(), "the current version is whole");
        assert_eq!(r.bad_clone_blocks, vec![(1, 1)]);
        // The snapshot read fails its CRC rather than return bad bytes.
        assert!(matches!(
            s.read_snapshot(C, 1, 0, 8192).await,
            Err(StoreError::Checksum { block: 1, .. })
        ));
    });
}

#[test]
fn space_held_alone_counts_copies_older_snapshots_read_through_for_both() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        Target::format(dir.path(), 1).expect("format");
        let t = Target::open(dir.path()).expect("open");
        let s = t.open_shard(0).await.expect("shard");
        // Two block groups (256 KiB each): A in the first, B in the second.
        write(&s, 1, 0, &vec![0xA0u8; 300_000], 0, true).await;
        // Snapshot 1; A changes; snapshot 2; B changes.
        write(&s, 2, 0, &[0xA1u8; 4096], 1, true).await;
        write(&s, 3, 262_144, &[0xB1u8; 8192], 2, true).await;
        let space = s.snapshot_space(&[1, 2]).await.expect("space");
        // A's old block is snapshot 1's alone; B's two old blocks are read
        // by snapshot 2 and, through it, by snapshot 1: neither's alone.
        assert_eq!(space.get(&1), Some(&4096), "{space:?}");
        assert_eq!(space.get(&2), None, "{space:?}");
        // With snapshot 1 gone, B's old blocks are snapshot 2's alone.
        s.prune_clones(&[2], 2).await.expect("prune");
        let space = s.snapshot_space(&[2]).await.expect("space");
        assert_eq!(space.get(&2), Some(&8192), "{space:?}");
        let mut v1 = vec![0xA0u8; 300_000];
        v1[..4096].fill(0xA1);
        assert_eq!(snapshot(&s, 2).await, Some(v1));
    });
}
