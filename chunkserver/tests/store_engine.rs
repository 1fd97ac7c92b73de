//! The chunk engine against real files and real glommio executors.

use std::future::Future;
use std::path::Path;

use cairn_chunkserver::store::{
    PendingData, ReadMode, ShardStore, Snap, StoreError, Target, TargetOptions, layout, shard_of,
};
use cairn_proto::ErrorCode;
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

fn chunk(o: u64) -> ChunkId {
    ChunkId {
        object: ObjectId(o),
        index: 0,
    }
}

/// The client's per-segment CRCs, as the data-plane frame carries them.
fn crcs(offset: u64, data: &[u8]) -> Vec<u32> {
    cairn_proto::frame::segment_crcs(offset, data)
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random()).collect()
}

async fn open(dir: &Path, opts: TargetOptions) -> (Target, ShardStore) {
    let t = Target::open_with(dir, opts).expect("open target");
    let s = t.open_shard(0).await.expect("open shard");
    (t, s)
}

async fn put(s: &ShardStore, c: ChunkId, v: u64, off: u64, data: &[u8]) {
    s.write_pending(c, v, off, data, &crcs(off, data))
        .await
        .expect("write");
    s.commit(c, v).await.expect("commit");
}

async fn read_all(s: &ShardStore, c: ChunkId) -> Vec<u8> {
    let out = s
        .read(c, 0, layout::CHUNK_MAX, ReadMode::Committed)
        .await
        .expect("read");
    assert_eq!(out.data.len() as u64, out.len);
    assert_eq!(out.block_crcs, crcs(0, &out.data));
    out.data.to_vec()
}

fn formatted(shards: u32) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    Target::format(dir.path(), shards).expect("format");
    dir
}

#[test]
fn round_trips_at_awkward_offsets_and_sizes() {
    let dir = formatted(1);
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (_t, s) = open(&path, TargetOptions::default()).await;
        let cases: [(u64, usize); 10] = [
            (0, 1),
            (0, 4095),
            (0, 4096),
            (0, 4097),
            (1, 4095),
            (4095, 2),
            (0, 1 << 20),
            (4097, 1 << 20),
            (12_345, 77_777),
            ((4 << 30) - 4096, 4096),
        ];
        for (i, (off, len)) in cases.into_iter().enumerate() {
            let c = chunk(i as u64 + 1);
            let data = pattern(i as u64, len);
            put(&s, c, 1, off, &data).await;
            let out = s
                .read(c, off, len as u64, ReadMode::CleanOnly)
                .await
                .expect("read");
            assert_eq!(&out.data[..], &data[..], "case {off}+{len}");
            // The CRCs returned are those of the client's segments: end to end.
            assert_eq!(out.block_crcs, crcs(off, &data));
            assert_eq!((out.version, out.len), (1, off + len as u64));
            if off < 1 << 20 {
                // The hole in front reads as zeros.
                let all = read_all(&s, c).await;
                assert!(all[..off as usize].iter().all(|b| *b == 0));
                assert_eq!(&all[off as usize..], &data[..]);
            }
            // Past the end: short reads.
            let past = s
                .read(c, off + len as u64, 10, ReadMode::Committed)
                .await
                .expect("read past end");
            assert!(past.data.is_empty());
        }
        let unknown = s.read(chunk(999), 0, 1, ReadMode::Committed).await;
        assert!(matches!(unknown, Err(StoreError::NotFound { .. })));
    });
}

#[test]
fn partial_block_writes_merge_with_the_newest_version() {
    let dir = formatted(1);
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (_t, s) = open(&path, TargetOptions::default()).await;
        let c = chunk(1);
        let mut model: Vec<u8> = Vec::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for v in 1..=60u64 {
            let off = rng.random_range(0..40_000u64);
            let len = rng.random_range(1..9_000usize);
            let data = pattern(v, len);
            // Half of the versions stack up as pending before committing,
            // so merges must use the newest *pending* block.
            s.write_pending(c, v, off, &data, &crcs(off, &data))
                .await
                .expect("write");
            let end = off as usize + len;
            if model.len() < end {
                model.resize(end, 0);
            }
            model[off as usize..end].copy_from_slice(&data);
            if v % 2 == 0 {
                s.commit(c, v - 1).await.expect("commit");
                s.commit(c, v).await.expect("commit");
                assert_eq!(read_all(&s, c).await, model, "after version {v}");
            }
        }
        let stat = s.stat(c).expect("stat").expect("exists");
        assert_eq!(stat.committed_version, 60);
        assert_eq!(stat.committed_len, model.len() as u64);
        assert!(stat.pending_versions.is_empty());
    });
}

#[test]
fn pending_versions_and_craq_reads() {
    let dir = formatted(1);
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (_t, s) = open(&path, TargetOptions::default()).await;
        let c = chunk(1);
        let old = pattern(1, 3 * 4096);
        put(&s, c, 1, 0, &old).await;
        let new = pattern(2, 4096);
        s.write_pending(c, 2, 0, &new, &crcs(0, &new))
            .await
            .expect("write v2");
        // Dirty range: CleanOnly refuses, Committed serves the old bytes.
        let dirty = s.read(c, 0, 4096, ReadMode::CleanOnly).await;
        assert_eq!(dirty.err().map(|e| e.code()), Some(ErrorCode::Pending));
        let committed = s.read(c, 0, 4096, ReadMode::Committed).await.expect("read");
        assert_eq!(&committed.data[..], &old[..4096]);
        assert_eq!(committed.version, 1);
        // A clean range of the same chunk still reads.
        let clean = s
            .read(c, 8192, 4096, ReadMode::CleanOnly)
            .await
            .expect("clean");
        assert_eq!(&clean.data[..], &old[8192..]);
        // An append makes only the appended range dirty.
        let tail = pattern(3, 100);
        s.write_pending(c, 3, 3 * 4096, &tail, &crcs(3 * 4096, &tail))
            .await
            .expect("append");
        assert!(s.read(c, 4096, 8192, ReadMode::CleanOnly).await.is_ok());
        assert!(s.read(c, 8192, 8192, ReadMode::CleanOnly).await.is_err());
        let stat = s.stat(c).expect("stat").expect("exists");
        assert_eq!(stat.pending_versions, vec![2, 3]);
        s.commit(c, 2).await.expect("commit 2");
        let after = s.read(c, 0, 4096, ReadMode::CleanOnly).await.expect("read");
        assert_eq!(&after.data[..], &new[..]);
        assert_eq!(after.version, 2);
        s.commit(c, 3).await.expect("commit 3");
        let all = read_all(&s, c).await;
        assert_eq!(all.len(), 3 * 4096 + 100);
        assert_eq!(&all[3 * 4096..], &tail[..]);
    });
}

#[test]
fn versions_apply_in_order_and_bad_input_changes_nothing() {
    let dir = formatted(1);
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (_t, s) = open(&path, TargetOptions::default()).await;
        let c = chunk(1);
        let d = pattern(1, 5000);
        let gap = s.write_pending(c, 2, 0, &d, &crcs(0, &d)).await;
        assert!(matches!(
            gap,
            Err(StoreError::VersionGap {
                expected: 1,
                got: 2,
                ..
            })
        ));
        assert_eq!(s.stat(c).expect("stat"), None);
        s.write_pending(c, 1, 0, &d, &crcs(0, &d))
            .await
            .expect("v1");
        // An identical retry of the newest pending version is accepted.
        s.write_pending(c, 1, 0, &d, &crcs(0, &d))
            .await
            .expect("retry");
        // A different write claiming the same version is refused.
        let other = pattern(2, 5000);
        let stale = s.write_pending(c, 1, 0, &other, &crcs(0, &other)).await;
        assert_eq!(
            stale.err().map(|e| e.code()),
            Some(ErrorCode::StaleSequence)
        );
        // Corrupt payload: refused before anything is stored.
        let mut bad = crcs(0, &other);
        bad[1] ^= 1;
        let e = s.write_pending(c, 2, 0, &other, &bad).await;
        assert!(matches!(e, Err(StoreError::Checksum { block: 1, .. })));
        let e = s.write_pending(c, 2, 0, &other, &bad[..1]).await;
        assert_eq!(e.err().map(|e| e.code()), Some(ErrorCode::BadRequest));
        let e = s.write_pending(c, 2, layout::CHUNK_MAX, &other, &[]).await;
        assert!(matches!(e, Err(StoreError::Range { .. })));
        let e = s.write_pending(c, 2, 0, &[], &[]).await;
        assert!(matches!(e, Err(StoreError::Range { .. })));
        assert_eq!(
            s.stat(c).expect("stat").map(|st| st.pending_versions),
            Some(vec![1])
        );
        // Commits: only the oldest pending; re-committing is a no-op.
        let e = s.commit(c, 2).await;
        assert!(matches!(e, Err(StoreError::VersionGap { .. })));
        s.commit(c, 1).await.expect("commit");
        s.commit(c, 1).await.expect("commit again");
        let stale = s.write_pending(c, 1, 0, &d, &crcs(0, &d)).await;
        assert!(matches!(stale, Err(StoreError::Stale { .. })));
        assert_eq!(read_all(&s, c).await, d);
        let e = s.commit(chunk(77), 1).await;
        assert!(matches!(e, Err(StoreError::NotFound { .. })));
    });
}

#[test]
fn a_flipped_byte_fails_only_its_block() {
    let dir = formatted(1);
    let path = dir.path().to_path_buf();
    let p = path.clone();
    let c = chunk(1);
    // Three blocks, each a distinctive pattern we can find in the file.
    let data: Vec<u8> = (0..3u8).flat_map(|b| vec![0xA0 + b; 4096]).collect();
    let d = data.clone();
    run(move || async move {
        let (_t, s) = open(&p, TargetOptions::default()).await;
        put(&s, c, 1, 0, &d).await;
        s.close().await.expect("close");
    });
    let file = path.join("data/shard-0.dat");
    let mut bytes = std::fs::read(&file).expect("read data file");
    let at = bytes
        .chunks(4096)
        .position(|b| b.iter().all(|x| *x == 0xA1))
        .expect("block 1 on disk");
    bytes[at * 4096 + 17] ^= 0x40;
    std::fs::write(&file, &bytes).expect("corrupt");
    let p = path.clone();
    run(move || async move {
        let (_t, s) = open(&p, TargetOptions::default()).await;
        let e = s.read(c, 4096, 4096, ReadMode::Committed).await;
        assert!(
            matches!(e, Err(StoreError::Checksum { block: 1, .. })),
            "{e:?}"
        );
        assert_eq!(e.err().map(|e| e.code()), Some(ErrorCode::Checksum));
        // A read spanning the bad block fails as a whole...
        assert!(s.read(c, 0, 3 * 4096, ReadMode::Committed).await.is_err());
        // ...while the other blocks still read.
        let b0 = s
            .read(c, 0, 4096, ReadMode::Committed)
            .await
            .expect("block 0");
        assert_eq!(&b0.data[..], &data[..4096]);
        let b2 = s
            .read(c, 8192, 4096, ReadMode::CleanOnly)
            .await
            .expect("block 2");
        assert_eq!(&b2.data[..], &data[8192..]);
        // A partial write never merges with the corrupt block.
        let e = s.write_pending(c, 2, 4100, b"x", &crcs(4100, b"x")).await;
        assert!(matches!(e, Err(StoreError::Checksum { block: 1, .. })));
        // The scrubber finds it.
        let report = s.scrub_chunk(c).await.expect("scrub");
        assert_eq!(report.blocks_checked, 3);
        assert_eq!(report.bad_blocks, vec![1]);
        // Rewriting the whole block repairs the chunk.
        let fresh = vec![0x55u8; 4096];
        put(&s, c, 2, 4096, &fresh).await;
        assert!(s.scrub_chunk(c).await.expect("scrub").bad_blocks.is_empty());
    });
}

#[test]
fn capacity_limit_gives_no_space_and_keeps_data() {
    let dir = formatted(1);
    let path = dir.path().to_path_buf();
    run(move || async move {
        let opts = TargetOptions {
            capacity_bytes: Some(1 << 20),
            grow_bytes: 256 << 10,
            ..TargetOptions::default()
        };
        let (_t, s) = open(&path, opts).await;
        let a = pattern(1, 128 * 4096);
        put(&s, chunk(1), 1, 0, &a).await;
        let b = pattern(2, 200 * 4096);
        let e = s.write_pending(chunk(2), 1, 0, &b, &crcs(0, &b)).await;
        assert!(matches!(e, Err(StoreError::NoSpace { .. })), "{e:?}");
        assert_eq!(e.err().map(|e| e.code()), Some(ErrorCode::NoSpace));
        assert_eq!(s.stat(chunk(2)).expect("stat"), None);
        // The tail's write-and-commit fails the same way, new chunk or not.
        let e = s.write_committed(chunk(2), 1, 0, &b, &crcs(0, &b)).await;
        assert!(matches!(e, Err(StoreError::NoSpace { .. })), "{e:?}");
        assert_eq!(s.stat(chunk(2)).expect("stat"), None);
        let e = s.write_committed(chunk(1), 2, 0, &b, &crcs(0, &b)).await;
        assert!(matches!(e, Err(StoreError::NoSpace { .. })), "{e:?}");
        let st = s.stat(chunk(1)).expect("stat").expect("exists");
        assert_eq!((st.committed_version, st.committed_len), (1, 128 * 4096));
        assert!(st.pending_versions.is_empty());
        assert_eq!(read_all(&s, chunk(1)).await, a);
        let u = s.usage();
        assert_eq!(u.used_bytes, 128 * 4096);
        assert!(u.file_bytes <= 1 << 20);
        assert_eq!(u.capacity_bytes, Some(1 << 20));
        // What fits still fits.
        let small = pattern(3, 100 * 4096);
        put(&s, chunk(3), 1, 0, &small).await;
        assert_eq!(read_all(&s, chunk(3)).await, small);
    });
}

#[test]
fn overwrites_reuse_freed_blocks() {
    let dir = formatted(1);
    let path = dir.path().to_path_buf();
    run(move || async move {
        let opts = TargetOptions {
            capacity_bytes: Some(1 << 20),
            grow_bytes: 1 << 20,
            ..TargetOptions::default()
        };
        let (_t, s) = open(&path, opts).await;
        let c = chunk(1);
        // 100 overwrites of 96 blocks = 9600 blocks through a 256-block
        // target: only reuse makes this fit.
        for v in 1..=100u64 {
            let d = pattern(v, 96 * 4096);
            put(&s, c, v, 0, &d).await;
            if v % 25 == 0 {
                assert_eq!(read_all(&s, c).await, d);
            }
        }
        let u = s.usage();
        assert_eq!(u.file_bytes, 1 << 20);
        assert!(u.used_bytes - u.deferred_bytes <= 2 * 96 * 4096, "{u:?}");
        // Remove frees everything (after its flush).
        assert!(s.remove(c).await.expect("remove"));
        assert!(!s.remove(c).await.expect("remove again"));
        assert_eq!(s.usage().used_bytes, 0);
        assert!(matches!(
            s.read(c, 0, 1, ReadMode::Committed).await,
            Err(StoreError::NotFound { .. })
        ));
    });
}

#[test]
fn reopen_keeps_committed_and_pending_versions() {
    let dir = formatted(1);
    let path = dir.path().to_path_buf();
    let p = path.clone();
    run(move || async move {
        let (_t, s) = open(&p, TargetOptions::default()).await;
        for o in 1..=5u64 {
            put(&s, chunk(o), 1, o * 1000, &pattern(o, 10_000)).await;
            let d = pattern(o + 100, 3000);
            s.write_pending(chunk(o), 2, 0, &d, &crcs(0, &d))
                .await
                .expect("pending");
        }
        s.close().await.expect("close");
    });
    run(move || async move {
        let (t, s) = open(&path, TargetOptions::default()).await;
        assert_eq!(t.superblock().shards, 1);
        let mut listed = s.list_chunks().expect("list");
        listed.sort();
        assert_eq!(listed, (1..=5).map(chunk).collect::<Vec<_>>());
        for o in 1..=5u64 {
            let st = s.stat(chunk(o)).expect("stat").expect("exists");
            assert_eq!(st.committed_version, 1);
            assert_eq!(st.pending_versions, vec![2]);
            let all = read_all(&s, chunk(o)).await;
            assert_eq!(&all[(o * 1000) as usize..], &pattern(o, 10_000)[..]);
            s.commit(chunk(o), 2).await.expect("commit after reopen");
            let all = read_all(&s, chunk(o)).await;
            assert_eq!(&all[..3000], &pattern(o + 100, 3000)[..]);
        }
        // The allocator was rebuilt from the block map: a new write does not
        // land on a referenced block.
        put(&s, chunk(9), 1, 0, &pattern(9, 64 * 4096)).await;
        for o in 1..=5u64 {
            assert!(
                s.scrub_chunk(chunk(o))
                    .await
                    .expect("scrub")
                    .bad_blocks
                    .is_empty()
            );
        }
    });
}

#[test]
fn truncate_is_versioned_and_never_exposes_old_bytes() {
    let dir = formatted(1);
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (_t, s) = open(&path, TargetOptions::default()).await;
        let c = chunk(1);
        let d = pattern(1, 20_000);
        put(&s, c, 1, 0, &d).await;
        s.truncate(c, 2, 5000, Snap::default())
            .await
            .expect("truncate");
        // Pending: the committed length still serves, the cut range is dirty.
        assert_eq!(read_all(&s, c).await, d);
        assert!(s.read(c, 0, 5000, ReadMode::CleanOnly).await.is_ok());
        assert!(s.read(c, 4000, 2000, ReadMode::CleanOnly).await.is_err());
        s.commit(c, 2).await.expect("commit");
        assert_eq!(read_all(&s, c).await, &d[..5000]);
        // Extending again reads zeros where the old bytes were.
        put(&s, c, 3, 15_000, b"end").await;
        let all = read_all(&s, c).await;
        assert_eq!(all.len(), 15_003);
        assert_eq!(&all[..5000], &d[..5000]);
        assert!(all[5000..15_000].iter().all(|b| *b == 0));
        s.truncate(c, 4, 30_000, Snap::default())
            .await
            .expect("extend");
        s.commit(c, 4).await.expect("commit");
        assert_eq!(read_all(&s, c).await.len(), 30_000);
        assert!(s.scrub_chunk(c).await.expect("scrub").bad_blocks.is_empty());
    });
}

#[test]
fn concurrent_writers_share_syncs() {
    let dir = formatted(1);
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (_t, s) = open(&path, TargetOptions::default()).await;
        let s = std::rc::Rc::new(s);
        let mut tasks = Vec::new();
        for o in 1..=32u64 {
            let s = s.clone();
            tasks.push(glommio::spawn_local(async move {
                let d = pattern(o, 8192);
                s.write_pending(chunk(o), 1, 0, &d, &crcs(0, &d)).await
            }));
        }
        for t in tasks {
            t.await.expect("write");
        }
        let (data_syncs, meta_flushes) = s.sync_counts();
        assert!(data_syncs < 32, "{data_syncs} fdatasyncs for 32 writes");
        assert!(meta_flushes < 32, "{meta_flushes} flushes for 32 writes");
    });
}

#[test]
fn shards_formats_and_routing() {
    let dir = formatted(4);
    let path = dir.path().to_path_buf();
    assert!(matches!(
        Target::format(&path, 4),
        Err(StoreError::AlreadyFormatted { .. })
    ));
    let other = tempfile::tempdir().expect("tempdir");
    std::fs::write(other.path().join("junk"), b"x").expect("junk");
    assert!(matches!(
        Target::format(other.path(), 4),
        Err(StoreError::NotEmpty { .. })
    ));
    assert!(Target::open(other.path()).is_err());
    // The root of a new ext4 file system: only `lost+found`.
    let fresh = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(fresh.path().join("lost+found")).expect("lost+found");
    Target::format(fresh.path(), 2).expect("a fresh file system's root formats");
    assert!(Target::open(fresh.path()).is_ok());
    let sb = std::fs::read_to_string(path.join("superblock.json")).expect("sb");
    assert!(sb.contains(&format!(
        "\"format_version\": {}",
        cairn_chunkserver::store::FORMAT_VERSION
    )));
    // The engine's placement equals the data plane's routing.
    for o in 0..1000 {
        let c = ChunkId {
            object: ObjectId(o * 7919),
            index: o % 5,
        };
        assert_eq!(shard_of(c, 4), cairn_chunkserver::chain::shard_of(c, 4));
    }
    run(move || async move {
        let t = Target::open(&path).expect("open");
        assert!(t.open_shard(4).await.is_err());
        let s1 = t.open_shard(1).await.expect("shard 1");
        let mine = (0..)
            .map(chunk)
            .find(|c| shard_of(*c, 4) == 1)
            .expect("a chunk");
        let theirs = (0..)
            .map(chunk)
            .find(|c| shard_of(*c, 4) == 2)
            .expect("a chunk");
        put(&s1, mine, 1, 0, b"hello").await;
        let e = s1.write_pending(theirs, 1, 0, b"x", &crcs(0, b"x")).await;
        assert!(matches!(e, Err(StoreError::WrongShard { owner: 2, .. })));
    });
    let bad = formatted(1);
    let sb = bad.path().join("superblock.json");
    let text = std::fs::read_to_string(&sb).expect("sb");
    std::fs::write(
        &sb,
        text.replace("\"format_version\": 2", "\"format_version\": 9"),
    )
    .expect("w");
    assert!(matches!(
        Target::open(bad.path()),
        Err(StoreError::UnsupportedFormat { found: 9 })
    ));
}

#[test]
fn commit_through_commits_every_older_pending_version() {
    let dir = formatted(1);
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (_t, s) = open(&path, TargetOptions::default()).await;
        let c = chunk(1);
        let mut model = pattern(1, 5 * 4096);
        put(&s, c, 1, 0, &model).await;
        // v2 rewrites parts of blocks 0-1, v3 cuts the chunk inside block
        // 3, v4 rewrites blocks 2-3: three pending versions at once.
        let d2 = pattern(2, 6000);
        s.write_pending(c, 2, 100, &d2, &crcs(100, &d2))
            .await
            .expect("v2");
        model[100..6100].copy_from_slice(&d2);
        s.truncate(c, 3, 3 * 4096 + 100, Snap::default())
            .await
            .expect("v3");
        model.truncate(3 * 4096 + 100);
        let d4 = pattern(4, 2 * 4096);
        s.write_pending(c, 4, 2 * 4096, &d4, &crcs(2 * 4096, &d4))
            .await
            .expect("v4");
        model.resize(4 * 4096, 0);
        model[2 * 4096..].copy_from_slice(&d4);
        let gap = s.commit_through(c, 5, true).await;
        assert!(
            matches!(
                gap,
                Err(StoreError::VersionGap {
                    expected: 4,
                    got: 5,
                    ..
                })
            ),
            "{gap:?}"
        );
        assert_eq!(
            s.stat(c).expect("stat").map(|st| st.pending_versions),
            Some(vec![2, 3, 4])
        );
        s.commit_through(c, 4, true)
            .await
            .expect("commit through 4");
        let st = s.stat(c).expect("stat").expect("exists");
        assert_eq!(st.committed_version, 4);
        assert_eq!(st.committed_len, model.len() as u64);
        assert!(st.pending_versions.is_empty());
        assert_eq!(read_all(&s, c).await, model);
        // Every replaced block is free after the flush, also those of v2
        // and v3 that v4 superseded in the same step: only v4's four
        // blocks remain.
        let u = s.usage();
        assert_eq!((u.used_bytes, u.deferred_bytes), (4 * 4096, 0), "{u:?}");
        // Committed versions: no-ops, durable or not.
        s.commit_through(c, 2, true).await.expect("old version");
        s.commit_through(c, 4, false).await.expect("same version");
        assert_eq!(s.stat(c).expect("stat"), Some(st));
        assert!(s.scrub_chunk(c).await.expect("scrub").bad_blocks.is_empty());
        let e = s.commit_through(chunk(77), 1, true).await;
        assert!(matches!(e, Err(StoreError::NotFound { .. })), "{e:?}");
    });
}

#[test]
fn non_durable_commit_is_visible_at_once_and_frees_after_a_later_flush() {
    let dir = formatted(1);
    let path = dir.path().to_path_buf();
    let p = path.clone();
    let c = chunk(1);
    run(move || async move {
        let (_t, s) = open(&p, TargetOptions::default()).await;
        put(&s, c, 1, 0, &pattern(1, 8 * 4096)).await;
        let d2 = pattern(2, 8 * 4096);
        s.write_pending(c, 2, 0, &d2, &crcs(0, &d2))
            .await
            .expect("v2");
        let before = s.sync_counts();
        s.commit_through(c, 2, false).await.expect("commit");
        assert_eq!(s.sync_counts(), before, "a non-durable commit flushed");
        let st = s.stat(c).expect("stat").expect("exists");
        assert_eq!((st.committed_version, st.pending_versions), (2, vec![]));
        assert_eq!(read_all(&s, c).await, d2);
        // v1's blocks wait for a flush that covers the commit.
        let u = s.usage();
        assert_eq!((u.used_bytes, u.deferred_bytes), (16 * 4096, 8 * 4096));
        // The next durable operation's flush (any chunk's) frees them.
        s.write_pending(chunk(2), 1, 0, b"x", &crcs(0, b"x"))
            .await
            .expect("other chunk");
        let u = s.usage();
        assert_eq!((u.used_bytes, u.deferred_bytes), (9 * 4096, 0));
        // Non-durable again, then a clean close: close flushes it.
        let d3 = pattern(3, 4096);
        s.write_pending(c, 3, 0, &d3, &crcs(0, &d3))
            .await
            .expect("v3");
        s.commit_through(c, 3, false).await.expect("commit v3");
        s.close().await.expect("close");
    });
    let p = path.clone();
    run(move || async move {
        let (_t, s) = open(&p, TargetOptions::default()).await;
        let st = s.stat(c).expect("stat").expect("exists");
        assert_eq!((st.committed_version, st.pending_versions), (3, vec![]));
        let mut want = pattern(2, 8 * 4096);
        want[..4096].copy_from_slice(&pattern(3, 4096));
        assert_eq!(read_all(&s, c).await, want);
        // A non-durable commit, then the shard and target are dropped
        // without close: the commit may or may not have survived; either
        // way, committing again gives the committed version.
        let d4 = pattern(4, 3 * 4096);
        s.write_pending(c, 4, 4096, &d4, &crcs(4096, &d4))
            .await
            .expect("v4");
        s.commit_through(c, 4, false).await.expect("commit v4");
    });
    run(move || async move {
        let (_t, s) = open(&path, TargetOptions::default()).await;
        let st = s.stat(c).expect("stat").expect("exists");
        assert!(
            (st.committed_version, &st.pending_versions[..]) == (4, &[][..])
                || (st.committed_version, &st.pending_versions[..]) == (3, &[4][..]),
            "{st:?}"
        );
        s.commit_through(c, 4, true).await.expect("re-commit");
        let mut want = pattern(2, 8 * 4096);
        want[..4096].copy_from_slice(&pattern(3, 4096));
        want[4096..4 * 4096].copy_from_slice(&pattern(4, 3 * 4096));
        assert_eq!(read_all(&s, c).await, want);
        assert!(s.scrub_chunk(c).await.expect("scrub").bad_blocks.is_empty());
    });
}

#[test]
fn blocks_a_non_durable_commit_frees_are_reused_only_after_a_flush() {
    let dir = formatted(1);
    let path = dir.path().to_path_buf();
    let p = path.clone();
    let opts = TargetOptions {
        capacity_bytes: Some(1 << 20),
        grow_bytes: 1 << 20,
        ..TargetOptions::default()
    };
    let o = opts.clone();
    run(move || async move {
        let (_t, s) = open(&p, o).await;
        // 100 + 100 of the 256 blocks; the commit defers 100.
        put(&s, chunk(1), 1, 0, &pattern(1, 100 * 4096)).await;
        let d2 = pattern(2, 100 * 4096);
        s.write_pending(chunk(1), 2, 0, &d2, &crcs(0, &d2))
            .await
            .expect("v2");
        s.commit_through(chunk(1), 2, false).await.expect("commit");
        assert_eq!(s.usage().deferred_bytes, 100 * 4096);
        // 100 more blocks fit only once the deferred ones are free: the
        // allocator flushes (covering the commit) rather than fail.
        let d3 = pattern(3, 100 * 4096);
        s.write_pending(chunk(2), 1, 0, &d3, &crcs(0, &d3))
            .await
            .expect("write needing the freed blocks");
        assert_eq!(s.usage().deferred_bytes, 0);
        // Dropped without close.
    });
    run(move || async move {
        let (_t, s) = open(&path, opts).await;
        // The flush that made the blocks reusable made the commit durable.
        let st = s.stat(chunk(1)).expect("stat").expect("exists");
        assert_eq!((st.committed_version, st.pending_versions), (2, vec![]));
        assert_eq!(read_all(&s, chunk(1)).await, pattern(2, 100 * 4096));
        for c in [chunk(1), chunk(2)] {
            assert!(s.scrub_chunk(c).await.expect("scrub").bad_blocks.is_empty());
        }
    });
}

#[test]
fn write_committed_stores_and_commits_in_one_flush() {
    let dir = formatted(1);
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (_t, s) = open(&path, TargetOptions::default()).await;
        let c = chunk(1);
        let mut model = vec![0u8; 700];
        let d1 = pattern(1, 3 * 4096 + 500);
        model.extend_from_slice(&d1);
        let before = s.sync_counts();
        s.write_committed(c, 1, 700, &d1, &crcs(700, &d1))
            .await
            .expect("v1");
        let after = s.sync_counts();
        assert_eq!((after.0 - before.0, after.1 - before.1), (1, 1));
        let st = s.stat(c).expect("stat").expect("exists");
        assert_eq!(st.committed_version, 1);
        assert_eq!(st.committed_len, model.len() as u64);
        assert!(st.pending_versions.is_empty());
        assert_eq!(read_all(&s, c).await, model);
        // A partial overwrite merges with the committed blocks and releases
        // the ones it replaces once flushed.
        let d2 = pattern(2, 5000);
        s.write_committed(c, 2, 2000, &d2, &crcs(2000, &d2))
            .await
            .expect("v2");
        model[2000..7000].copy_from_slice(&d2);
        assert_eq!(read_all(&s, c).await, model);
        let u = s.usage();
        assert_eq!((u.used_bytes, u.deferred_bytes), (4 * 4096, 0), "{u:?}");
        // A retry of a committed version: Stale ("already applied").
        let e = s.write_committed(c, 2, 2000, &d2, &crcs(2000, &d2)).await;
        assert!(
            matches!(
                e,
                Err(StoreError::Stale {
                    newest: 2,
                    got: 2,
                    ..
                })
            ),
            "{e:?}"
        );
        let e = s.write_committed(c, 1, 700, &d1, &crcs(700, &d1)).await;
        assert!(matches!(e, Err(StoreError::Stale { .. })), "{e:?}");
        let e = s.write_committed(c, 4, 0, b"x", &crcs(0, b"x")).await;
        assert!(
            matches!(
                e,
                Err(StoreError::VersionGap {
                    expected: 3,
                    got: 4,
                    ..
                })
            ),
            "{e:?}"
        );
        assert_eq!(read_all(&s, c).await, model);
        // With a pending version in front: stored pending, then both are
        // committed, still one flush.
        let d3 = pattern(3, 100);
        s.write_pending(c, 3, 50, &d3, &crcs(50, &d3))
            .await
            .expect("v3");
        model[50..150].copy_from_slice(&d3);
        let d4 = pattern(4, 9000);
        let before = s.sync_counts();
        s.write_committed(c, 4, 10_000, &d4, &crcs(10_000, &d4))
            .await
            .expect("v4");
        assert_eq!(s.sync_counts().1 - before.1, 1);
        model.resize(19_000, 0);
        model[10_000..].copy_from_slice(&d4);
        let st = s.stat(c).expect("stat").expect("exists");
        assert_eq!((st.committed_version, st.pending_versions), (4, vec![]));
        assert_eq!(read_all(&s, c).await, model);
        // An identical retry of the newest pending version commits it.
        let d5 = pattern(5, 4096);
        s.write_pending(c, 5, 4096, &d5, &crcs(4096, &d5))
            .await
            .expect("v5");
        s.write_committed(c, 5, 4096, &d5, &crcs(4096, &d5))
            .await
            .expect("v5 as tail");
        model[4096..8192].copy_from_slice(&d5);
        let st = s.stat(c).expect("stat").expect("exists");
        assert_eq!((st.committed_version, st.pending_versions), (5, vec![]));
        assert_eq!(read_all(&s, c).await, model);
        assert!(s.scrub_chunk(c).await.expect("scrub").bad_blocks.is_empty());
    });
}

#[test]
fn read_pending_returns_a_version_exactly_as_written() {
    let dir = formatted(1);
    let path = dir.path().to_path_buf();
    let p = path.clone();
    run(move || async move {
        let (_t, s) = open(&p, TargetOptions::default()).await;
        let c = chunk(1);
        put(&s, c, 1, 0, &pattern(1, 6 * 4096)).await;
        // Unaligned at both ends, three blocks (1, 2, 3), merged with v1.
        let off = 4096 + 1000;
        let d = pattern(2, 2 * 4096 + 500);
        s.write_pending(c, 2, off, &d, &crcs(off, &d))
            .await
            .expect("v2");
        s.truncate(c, 3, 10_000, Snap::default()).await.expect("v3");
        let got = s.read_pending(c, 2).await.expect("read v2");
        assert_eq!(
            got,
            PendingData {
                version: 2,
                offset: off,
                len: d.len() as u64,
                new_len: 6 * 4096,
                data: bytes::Bytes::from(d.clone()),
                segment_crcs: cairn_proto::frame::segment_crcs(off, &d),
                segment_seals: vec![],
                snap: Snap::default(),
            }
        );
        assert_eq!(got.segment_crcs.len(), 3);
        // What it returns is a valid write for another replica.
        put(&s, chunk(2), 1, 0, &pattern(1, 6 * 4096)).await;
        s.write_pending(chunk(2), 2, got.offset, &got.data, &got.segment_crcs)
            .await
            .expect("forwarded write");
        let t = s.read_pending(c, 3).await.expect("read v3");
        assert_eq!(
            t,
            PendingData {
                version: 3,
                offset: 10_000,
                len: 0,
                new_len: 10_000,
                data: bytes::Bytes::new(),
                segment_crcs: vec![],
                segment_seals: vec![],
                snap: Snap::default(),
            }
        );
        for v in [1, 4] {
            let e = s.read_pending(c, v).await;
            assert!(matches!(e, Err(StoreError::NotFound { .. })), "v{v}: {e:?}");
        }
        let e = s.read_pending(chunk(9), 1).await;
        assert!(matches!(e, Err(StoreError::NotFound { .. })), "{e:?}");
        s.commit_through(c, 3, true).await.expect("commit");
        let e = s.read_pending(c, 2).await;
        assert!(matches!(e, Err(StoreError::NotFound { .. })), "{e:?}");
        // A distinctive pending block, to corrupt on disk.
        s.write_pending(chunk(3), 1, 0, &[0xC7; 4096], &crcs(0, &[0xC7; 4096]))
            .await
            .expect("pending block");
        s.close().await.expect("close");
    });
    let file = path.join("data/shard-0.dat");
    let mut bytes = std::fs::read(&file).expect("read data file");
    let at = bytes
        .chunks(4096)
        .position(|b| b.iter().all(|x| *x == 0xC7))
        .expect("pending block on disk");
    bytes[at * 4096 + 99] ^= 1;
    std::fs::write(&file, &bytes).expect("corrupt");
    run(move || async move {
        let (_t, s) = open(&path, TargetOptions::default()).await;
        let e = s.read_pending(chunk(3), 1).await;
        assert!(
            matches!(e, Err(StoreError::Checksum { block: 0, .. })),
            "{e:?}"
        );
        assert_eq!(
            s.read_pending(chunk(2), 2)
                .await
                .expect("intact")
                .data
                .len(),
            2 * 4096 + 500
        );
    });
}

/// Seals (nonce and tag of encrypted blocks) are stored beside each block's
/// CRC, returned with reads of whole blocks and with a pending version,
/// survive a reopen, and are refused where they cannot belong.
#[test]
fn seals_are_stored_with_their_blocks_and_returned() {
    use cairn_chunkserver::store::{NO_SEAL, Seal, WriteIn};
    let dir = formatted(1);
    let path = dir.path().to_path_buf();
    run(move || async move {
        let c = chunk(77);
        let data = pattern(5, 3 * 4096);
        let seals: Vec<Seal> = (1..=3u8).map(|i| [i; 28]).collect();
        {
            let (_t, s) = open(&path, TargetOptions::default()).await;
            let w = WriteIn {
                offset: 4096,
                data: &data,
                segment_crcs: &crcs(4096, &data),
                seals: &seals,
                snap: Snap::default(),
            };
            s.write_in_chain(9, c, 1, w, true)
                .await
                .expect("sealed write");
            // A whole-block read returns one seal per segment; the hole
            // before the data has none.
            let out = s.read(c, 0, 4 * 4096, ReadMode::Committed).await.unwrap();
            assert_eq!(out.block_seals, vec![NO_SEAL, seals[0], seals[1], seals[2]]);
            // A partly read block cannot carry its seal.
            let part = s
                .read(c, 4096 + 1, 8191, ReadMode::Committed)
                .await
                .unwrap();
            assert_eq!(part.block_seals, vec![NO_SEAL, seals[1]]);
            // A plain write over the middle block drops its seal only.
            let plain = pattern(6, 4096);
            s.write_in_chain(
                9,
                c,
                2,
                WriteIn::plain(8192, &plain, &crcs(8192, &plain)),
                false,
            )
            .await
            .unwrap();
            let pending = s.read_pending(c, 2).await.unwrap();
            assert!(pending.segment_seals.is_empty());
            s.commit(c, 2).await.unwrap();
            // A sealed pending version comes back with its seals (the
            // head's re-forward of a version after a failure).
            let w = WriteIn {
                offset: 0,
                data: &data[..4096],
                segment_crcs: &crcs(0, &data[..4096]),
                seals: &seals[..1],
                snap: Snap::default(),
            };
            s.write_in_chain(9, c, 3, w, false).await.unwrap();
            let pending = s.read_pending(c, 3).await.unwrap();
            assert_eq!(pending.segment_seals, vec![seals[0]]);
            s.commit(c, 3).await.unwrap();
        }
        // After a reopen.
        let (_t, s) = open(&path, TargetOptions::default()).await;
        let out = s.read(c, 0, 4 * 4096, ReadMode::Committed).await.unwrap();
        assert_eq!(out.block_seals, vec![seals[0], seals[0], NO_SEAL, seals[2]]);
        assert_eq!(out.block_crcs, crcs(0, &out.data));

        // Seals that do not fit: the wrong count, a seal on a partial
        // block. Nothing changes.
        let w = WriteIn {
            offset: 0,
            data: &data[..8192],
            segment_crcs: &crcs(0, &data[..8192]),
            seals: &seals[..1],
            snap: Snap::default(),
        };
        let e = s.write_in_chain(9, c, 4, w, true).await.unwrap_err();
        assert!(matches!(e, StoreError::Seals { .. }), "{e}");
        assert_eq!(e.code(), ErrorCode::BadRequest);
        let w = WriteIn {
            offset: 10,
            data: &data[..100],
            segment_crcs: &crcs(10, &data[..100]),
            seals: &seals[..1],
            snap: Snap::default(),
        };
        assert!(matches!(
            s.write_in_chain(9, c, 4, w, true).await,
            Err(StoreError::Seals { .. })
        ));
        let again = s.read(c, 0, 4 * 4096, ReadMode::Committed).await.unwrap();
        assert_eq!(again, out);
    });
}

#[test]
fn whole_zero_blocks_are_stored_as_holes() {
    let dir = formatted(1);
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (_t, s) = open(&path, TargetOptions::default()).await;
        let c = chunk(7);
        // Two data blocks, then six of zeros (how a compressed unit ends),
        // then a partial zero block (stored: it is not whole).
        let mut d = pattern(1, 2 * 4096);
        d.extend(vec![0u8; 6 * 4096 + 100]);
        put(&s, c, 1, 0, &d).await;
        assert_eq!(read_all(&s, c).await, d);
        assert_eq!(s.usage().used_bytes, 3 * 4096, "{:?}", s.usage());

        // A pending version with holes is read back whole (the head
        // forwards it again from these blocks) and commits to them.
        let mut e = vec![0u8; 4 * 4096];
        e[..4096].copy_from_slice(&pattern(2, 4096));
        s.write_pending(c, 2, 0, &e, &crcs(0, &e))
            .await
            .expect("pending write");
        let p = s.read_pending(c, 2).await.expect("read pending");
        assert_eq!(p.data.to_vec(), e);
        assert_eq!(p.segment_crcs, crcs(0, &e));
        s.commit(c, 2).await.expect("commit");
        let mut want = d.clone();
        want[..e.len()].copy_from_slice(&e);
        assert_eq!(read_all(&s, c).await, want);
        // The replaced data block is freed once the release is flushed;
        // blocks 0, 8 (partial) and 9 remain.
        s.write_pending(c, 3, 9 * 4096, b"x", &crcs(9 * 4096, b"x"))
            .await
            .expect("flush a later version");
        s.commit(c, 3).await.expect("commit");
        let u = s.usage();
        assert_eq!(u.used_bytes - u.deferred_bytes, 3 * 4096, "{u:?}");
    });
}
