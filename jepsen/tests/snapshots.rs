//! Volume snapshots through real processes (issue 17): three meta
//! replicas, three chunkservers and a client.
//!
//! What is proven here so far is the fence of DESIGN §3: a snapshot is
//! ready only once every chunkserver refuses writes under an older snapshot
//! seq, and writers that started before it carry on after it (they refresh
//! the chain table and write under the new seq), losing nothing.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use bytes::Bytes;
use cairn_client::data::{DataPool, into_result, write_request};
use cairn_client::{ClientOptions, ErrorCode};
use cairn_jepsen::data_cluster::{DataCluster, DataOpts};
use cairn_proto::chain::ChainView;
use cairn_proto::ids::{ChainId, ChainVersion, ChunkId, ObjectId};
use cairn_proto::meta::VolumePolicy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_ready_once_chunkservers_fence_and_writers_carry_on() -> Result<()> {
    let _serial = cairn_jepsen::serial().await;
    let cluster = DataCluster::start(DataOpts::default()).await?;
    let client = cluster.client(ClientOptions::default()).await?;
    client
        .meta()
        .create_volume("data", VolumePolicy::default())
        .await?;
    // A writer opened before the snapshot and still writing after it.
    let f = client.create("/data/log").await?;
    f.write_at(0, Bytes::from(vec![1u8; 1 << 20])).await?;

    let started = Instant::now();
    let s = client.meta().create_snapshot("data", "before").await?;
    ensure!(s.ready, "a snapshot is answered once ready: {s:?}");
    println!("[test] snapshot ready in {:?}", started.elapsed());
    let listed = client.meta().list_snapshots("data").await?;
    ensure!(
        listed.len() == 1 && listed[0].ready && listed[0].seq == s.seq,
        "{listed:?}"
    );

    // The writer's next writes carry the new seq after one refresh.
    f.write_at(1 << 20, Bytes::from(vec![2u8; 1 << 20])).await?;
    f.set_len(3 << 19).await?;
    f.close().await?;
    let back = client.read_file("/data/log").await?;
    ensure!(back.len() == 3 << 19);
    ensure!(back[..1 << 20].iter().all(|b| *b == 1));
    ensure!(back[1 << 20..].iter().all(|b| *b == 2));

    // Another volume without snapshots writes as before.
    client
        .meta()
        .create_volume("other", VolumePolicy::default())
        .await?;
    client
        .write_file("/other/f", Bytes::from_static(b"no snapshot here"))
        .await?;

    // A second snapshot with the same name answers the first.
    let again = client.meta().create_snapshot("data", "before").await?;
    ensure!(again.seq == s.seq);

    // A write under a stale seq straight to the chunk's head is refused.
    let attr = client.stat("/data/log").await?;
    let layout = attr.layout.expect("a file has a layout");
    let view = ChainView::from_pb(&cluster.chains().await?);
    ensure!(view.snap_seq == s.seq, "the chain table carries the seq");
    let chain = layout.chains[0];
    let c = view.chain(chain).expect("the chain");
    let chunk = ChunkId {
        object: ObjectId(layout.object_id),
        index: 0,
    };
    let head = c.members.first().expect("a head").chunkserver;
    let addr = view.shard_addr(head, chunk).expect("the head's address");
    let req = write_request(
        ChainId(chain),
        ChainVersion(c.version),
        chunk,
        0,
        Bytes::from(vec![9u8; 4096]),
        attr.ino,
        1,
        s.seq - 1,
    );
    let pool = DataPool::new(Duration::from_secs(2));
    let r = pool
        .call(&addr, req, Duration::from_secs(5))
        .await
        .and_then(into_result);
    ensure!(
        matches!(&r, Err(e) if e.code() == ErrorCode::StaleSnapSeq),
        "a write under an older snapshot seq must be refused: {r:?}"
    );
    ensure!(
        client.read_file("/data/log").await? == back,
        "nothing changed"
    );
    Ok(())
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Invariant 7 through the data path: after a snapshot, overwrites,
/// appends, truncates, unlinks and creates in the live tree, and a writer
/// that opened its file before the snapshot, the snapshot's files read
/// back as they were, before and after a chunkserver is killed (its
/// replicas answer) and brought back (it was resynced without clones and
/// serves no old snapshot; the others do).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_reads_back_as_it_was_whatever_the_live_tree_does() -> Result<()> {
    let _serial = cairn_jepsen::serial().await;
    let mut cluster = DataCluster::start(DataOpts::default()).await?;
    let client = cluster.client(ClientOptions::default()).await?;
    client
        .meta()
        .create_volume("ds", VolumePolicy::default())
        .await?;
    let a = pattern(1, 3 << 20);
    let b = pattern(2, 100_000);
    let c = pattern(3, 5000);
    client.write_file("/ds/a", Bytes::from(a.clone())).await?;
    client.write_file("/ds/b", Bytes::from(b.clone())).await?;
    client.create_dir_all("/ds/d").await?;
    client.write_file("/ds/d/c", Bytes::from(c.clone())).await?;
    let early = client.create("/ds/writer").await?;
    early.write_at(0, Bytes::from(pattern(4, 8192))).await?;
    early.fsync().await?;

    client.meta().create_snapshot("ds", "v1").await?;
    let check = |client: cairn_client::Client| {
        let (a, b, c) = (a.clone(), b.clone(), c.clone());
        async move {
            ensure!(
                client.read_file("/ds/.snapshots/v1/a").await? == a,
                "a changed"
            );
            ensure!(
                client.read_file("/ds/.snapshots/v1/b").await? == b,
                "b changed"
            );
            ensure!(
                client.read_file("/ds/.snapshots/v1/d/c").await? == c,
                "d/c changed"
            );
            ensure!(
                client.read_file("/ds/.snapshots/v1/writer").await? == pattern(4, 8192),
                "the early writer's file changed"
            );
            let e = client.stat("/ds/.snapshots/v1/e").await;
            ensure!(
                matches!(&e, Err(s) if s.code == ErrorCode::NotFound),
                "e was created after the snapshot: {e:?}"
            );
            let names: Vec<String> = client
                .read_dir("/ds/.snapshots/v1")
                .await?
                .into_iter()
                .map(|e| e.name)
                .collect();
            ensure!(names == ["a", "b", "d", "writer"], "{names:?}");
            let snaps: Vec<String> = client
                .read_dir("/ds/.snapshots")
                .await?
                .into_iter()
                .map(|e| e.name)
                .collect();
            ensure!(snaps == ["v1"], "{snaps:?}");
            Ok(())
        }
    };

    // The live tree moves on.
    let f = client
        .open("/ds/a", cairn_client::OpenOptions::WRITE)
        .await?;
    f.write_at(4096, Bytes::from(vec![0xEE; 1 << 20])).await?;
    f.write_at(3 << 20, Bytes::from(vec![0xDD; 70_000])).await?;
    f.close().await?;
    let f = client
        .open("/ds/b", cairn_client::OpenOptions::WRITE)
        .await?;
    f.set_len(10).await?;
    f.close().await?;
    client.remove_file("/ds/d/c").await?;
    client
        .write_file("/ds/e", Bytes::from_static(b"new"))
        .await?;
    early.write_at(0, Bytes::from(vec![7u8; 8192])).await?;
    early.close().await?;
    ensure!(client.read_file("/ds/b").await?.len() == 10);
    ensure!(client.read_file("/ds/writer").await? == vec![7u8; 8192]);
    check(client.clone()).await?;

    // What v1 alone holds, all three replicas: the 256 blocks of `a` the
    // first write replaced, the 25 blocks `b` lost to its truncate, the two
    // of `writer`, and `d/c` (5000 bytes) deleted since.
    let want = 3 * ((256 + 25 + 2) * 4096 + 5000);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let all = client.meta().list_snapshots("ds").await?;
        let got = all.first().map_or(0, |s| s.exclusive_bytes);
        if got == want {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "snapshot v1 holds {got} bytes alone, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Snapshots are read-only.
    let w = client
        .open("/ds/.snapshots/v1/a", cairn_client::OpenOptions::WRITE)
        .await;
    ensure!(
        matches!(&w, Err(s) if s.code == ErrorCode::NotPermitted),
        "{:?}",
        w.err()
    );
    let reserved = client.create_dir_all("/ds/.snapshots/x").await;
    ensure!(reserved.is_err(), "nothing is created under .snapshots");

    // A chunkserver killed: the others serve the snapshot; back and
    // resynced, the cluster still does.
    cluster.kill(0);
    check(client.clone()).await?;
    let f = client
        .open("/ds/a", cairn_client::OpenOptions::WRITE)
        .await?;
    f.write_at(0, Bytes::from(vec![0xAB; 8192])).await?;
    f.close().await?;
    check(client.clone()).await?;
    cluster.spawn(0)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = cluster.chains().await?;
        if cairn_proto::chain::fully_serving(&t, 3) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the chunkserver was never resynced"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for _ in 0..3 {
        check(client.clone()).await?;
    }

    // Deleted, it is gone, and the chunkservers free the old versions
    // only it read (at least the 283 blocks counted above, 3 replicas).
    let used = |t: &cairn_proto::meta::ChainTables| -> u64 {
        t.chunkservers.iter().map(|c| c.used_bytes).sum()
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = used(&cluster.chains().await?);
    client.meta().delete_snapshot("ds", "v1").await?;
    let gone = client.read_file("/ds/.snapshots/v1/a").await;
    ensure!(
        matches!(&gone, Err(s) if s.code == ErrorCode::NotFound),
        "{:?}",
        gone.err()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = used(&cluster.chains().await?);
        if now + 3 * 283 * 4096 <= before {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the chunkservers still use {now} bytes, {before} before the snapshot went"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}

/// Snapshots of an encrypted, compressed volume read back like the live
/// tree did when they were taken: the snapshot's inode keeps the file's
/// salt and key version, and its chunks' old sealed, packed blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_compressed_snapshot_reads_back_decrypted() -> Result<()> {
    use std::sync::Arc;

    use cairn_client::crypto::{KeyRing, VolumeKey};
    use cairn_proto::meta::{Compression, VolumeKeyCheck};

    let _serial = cairn_jepsen::serial().await;
    let cluster = DataCluster::start(DataOpts::default()).await?;
    let key = VolumeKey::generate();
    let policy = VolumePolicy {
        compression: Compression::Zstd as i32,
        compression_unit: 16 << 10,
        chunk_size: 1 << 20,
        stripe_width: 2,
        encrypted: true,
        key_checks: vec![VolumeKeyCheck {
            version: 1,
            check: key.check_value().to_vec(),
        }],
        ..VolumePolicy::default()
    };
    let admin = cluster.client(ClientOptions::default()).await?;
    admin.meta().create_volume("sec", policy).await?;
    let ring = Arc::new(KeyRing::single("sec", 1, key.clone()));
    let client = cluster
        .client(ClientOptions {
            keys: vec![ring],
            ..ClientOptions::default()
        })
        .await?;
    // Text-like data (compresses), and random-looking data (does not).
    let text: Vec<u8> = (0..3_000_000u32)
        .flat_map(|i| format!("line {i} epoch loss\n").into_bytes())
        .take(3 << 20)
        .collect();
    let noise = pattern(9, 700_000);
    client
        .write_file("/sec/text", Bytes::from(text.clone()))
        .await?;
    client
        .write_file("/sec/noise", Bytes::from(noise.clone()))
        .await?;
    client.meta().create_snapshot("sec", "s").await?;

    let f = client
        .open("/sec/text", cairn_client::OpenOptions::WRITE)
        .await?;
    f.write_at(100_000, Bytes::from(vec![b'x'; 300_000]))
        .await?;
    f.set_len(1 << 20).await?;
    f.close().await?;
    client
        .write_file("/sec/noise", Bytes::from_static(b"gone"))
        .await?;

    ensure!(
        client.read_file("/sec/.snapshots/s/text").await? == text,
        "the encrypted, compressed text changed in the snapshot"
    );
    ensure!(
        client.read_file("/sec/.snapshots/s/noise").await? == noise,
        "the encrypted noise changed in the snapshot"
    );
    ensure!(client.read_file("/sec/text").await?.len() == 1 << 20);
    ensure!(client.read_file("/sec/noise").await?.as_ref() == b"gone");
    // Without the key, the snapshot's contents stay sealed.
    ensure!(
        admin.read_file("/sec/.snapshots/s/text").await.is_err(),
        "a client without the key must not read the snapshot"
    );

    // Restored, the volume reads the snapshot's sealed, packed units with
    // the same key, and a write copies a file (sealed for its own object).
    admin.meta().restore_snapshot("sec", "s", "sec2").await?;
    restored(&admin, "sec2").await?;
    let client = cluster
        .client(ClientOptions {
            keys: vec![
                Arc::new(KeyRing::single("sec", 1, key.clone())),
                Arc::new(KeyRing::single("sec2", 1, key)),
            ],
            ..ClientOptions::default()
        })
        .await?;
    ensure!(client.read_file("/sec2/text").await? == text);
    ensure!(client.read_file("/sec2/noise").await? == noise);
    ensure!(
        admin.read_file("/sec2/text").await.is_err(),
        "a client without the key must not read the restored volume"
    );
    let f = client
        .open("/sec2/noise", cairn_client::OpenOptions::WRITE)
        .await?;
    f.write_at(10, Bytes::from_static(b"changed")).await?;
    f.close().await?;
    let mut want = noise.clone();
    want[10..17].copy_from_slice(b"changed");
    ensure!(client.read_file("/sec2/noise").await? == want);
    ensure!(client.read_file("/sec/.snapshots/s/noise").await? == noise);
    Ok(())
}

/// A chunkserver SIGKILLed in the middle of the first writes after a
/// snapshot (the writes that make the clones): the writes carry on through
/// the other replicas, and the snapshot reads back as it was from every
/// replica that serves it, before and after the killed one is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunkserver_killed_during_the_first_writes_after_a_snapshot_loses_nothing() -> Result<()>
{
    let _serial = cairn_jepsen::serial().await;
    let mut cluster = DataCluster::start(DataOpts::default()).await?;
    let client = cluster.client(ClientOptions::default()).await?;
    let policy = VolumePolicy {
        chunk_size: 1 << 20,
        stripe_width: 3,
        ..VolumePolicy::default()
    };
    client.meta().create_volume("ck", policy).await?;
    let before = pattern(5, 12 << 20);
    client
        .write_file("/ck/model.pt", Bytes::from(before.clone()))
        .await?;
    client.meta().create_snapshot("ck", "safe").await?;
    // A second snapshot after a few overwrites: chunks then hold two
    // clones, which share the blocks that did not change in between.
    let f = client
        .open("/ck/model.pt", cairn_client::OpenOptions::WRITE)
        .await?;
    let mut mid = before.clone();
    for off in [100_000usize, 3 << 20, (9 << 20) + 5] {
        f.write_at(off as u64, Bytes::from(vec![0x5A; 10_000]))
            .await?;
        mid[off..off + 10_000].fill(0x5A);
    }
    f.close().await?;
    client.meta().create_snapshot("ck", "mid").await?;

    // Overwrite every chunk, 256 KiB at a time; kill a chunkserver a
    // third of the way through.
    let f = client
        .open("/ck/model.pt", cairn_client::OpenOptions::WRITE)
        .await?;
    let step = 256 << 10;
    for (k, off) in (0..before.len()).step_by(step).enumerate() {
        if k == 16 {
            cluster.kill(1);
        }
        f.write_at(off as u64, Bytes::from(vec![k as u8; step]))
            .await?;
    }
    f.close().await?;
    let after = client.read_file("/ck/model.pt").await?;
    ensure!(
        after
            .chunks(step)
            .enumerate()
            .all(|(k, c)| c.iter().all(|b| *b == k as u8))
    );
    // Several reads: they spread over the serving replicas.
    for _ in 0..4 {
        ensure!(
            client.read_file("/ck/.snapshots/safe/model.pt").await? == before,
            "the snapshot changed after the kill"
        );
    }
    cluster.spawn(1)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cairn_proto::chain::fully_serving(&cluster.chains().await?, 3) {
        ensure!(
            Instant::now() < deadline,
            "the chunkserver was never resynced"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for _ in 0..4 {
        ensure!(
            client.read_file("/ck/.snapshots/safe/model.pt").await? == before,
            "the snapshot changed after the resync"
        );
    }
    // The resync carried the clones: with the two chunkservers that kept
    // them down, the rebuilt one alone serves both snapshots and the live
    // file.
    cluster.kill(0);
    cluster.kill(2);
    for _ in 0..2 {
        ensure!(
            client.read_file("/ck/.snapshots/safe/model.pt").await? == before,
            "the rebuilt replica serves another 'safe'"
        );
        ensure!(
            client.read_file("/ck/.snapshots/mid/model.pt").await? == mid,
            "the rebuilt replica serves another 'mid'"
        );
        ensure!(
            client.read_file("/ck/model.pt").await? == after,
            "the rebuilt replica serves another live file"
        );
    }
    Ok(())
}

/// A snapshot through a real `cairn mount`: `VOLUME/.snapshots/NAME` is a
/// read-only tree of the files as they were, beside the live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_shows_snapshots_read_only_under_dot_snapshots() -> Result<()> {
    use std::io::Write as _;

    let _serial = cairn_jepsen::serial().await;
    let cluster = DataCluster::start(DataOpts::default()).await?;
    let client = cluster.client(ClientOptions::default()).await?;
    client
        .meta()
        .create_volume("ds", VolumePolicy::default())
        .await?;
    let mut m = cairn_jepsen::fuse::Mount::start(
        &cluster.meta.addrs(),
        &cluster.meta.dir().join("mnt"),
        &[],
    )?;
    let live = m.path("ds");
    std::fs::create_dir(live.join("train"))?;
    std::fs::write(live.join("train/shard-0"), pattern(6, 300_000))?;
    std::os::unix::fs::symlink("train/shard-0", live.join("latest"))?;
    let shard = client.stat("/ds/train/shard-0").await?;
    let tag = |v: &'static [u8]| {
        let client = client.clone();
        async move {
            client
                .meta()
                .setxattr(
                    cairn_proto::ids::InodeId(shard.ino),
                    "user.tag",
                    v,
                    cairn_client::XattrMode::Upsert,
                )
                .await
        }
    };
    tag(b"v1").await?;
    client.meta().create_snapshot("ds", "v1").await?;
    tag(b"v2").await?;

    // The live tree moves on through the mount.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(live.join("train/shard-0"))?;
    f.write_all(&[0xFF; 4096])?;
    f.sync_all()?;
    drop(f);
    std::fs::write(live.join("train/shard-1"), b"later")?;

    let snap = live.join(".snapshots/v1");
    ensure!(std::fs::read(snap.join("train/shard-0"))? == pattern(6, 300_000));
    ensure!(std::fs::read(live.join("train/shard-0"))?[..4096] == [0xFF; 4096]);
    let mut names: Vec<String> = std::fs::read_dir(snap.join("train"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    ensure!(names == ["shard-0"], "{names:?}");
    ensure!(std::fs::read_link(snap.join("latest"))? == std::path::Path::new("train/shard-0"));
    let listed: Vec<String> = std::fs::read_dir(live.join(".snapshots"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    ensure!(listed == ["v1"], "{listed:?}");
    // Read-only: writing a snapshot file or creating in a snapshot fails
    // and changes nothing.
    let w = std::fs::OpenOptions::new()
        .write(true)
        .open(snap.join("train/shard-0"));
    ensure!(
        w.as_ref().err().and_then(std::io::Error::raw_os_error) == Some(libc::EROFS),
        "{w:?}"
    );
    for attempt in [
        std::fs::write(snap.join("train/new"), b"x"),
        std::fs::create_dir(snap.join("train/d")),
        std::fs::remove_file(snap.join("train/shard-0")),
        std::fs::rename(snap.join("train/shard-0"), snap.join("train/moved")),
    ] {
        ensure!(
            attempt
                .as_ref()
                .err()
                .and_then(std::io::Error::raw_os_error)
                == Some(libc::EROFS),
            "{attempt:?}"
        );
    }
    ensure!(std::fs::read(snap.join("train/shard-0"))? == pattern(6, 300_000));
    m.stop()?;
    Ok(())
}

/// Waits until the restore into `to` is done.
async fn restored(client: &cairn_client::Client, to: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = client.meta().restore_status(to).await?;
        if r.done {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the restore never finished: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `cairn snapshot restore`: a new writable volume holding the snapshot's
/// tree, whose files read the snapshot's data until written; a write copies
/// that file, and neither the snapshot nor the source volume sees it. Also
/// through a mount, and with a compressed source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_volume_reads_the_snapshot_and_writes_its_own() -> Result<()> {
    use std::io::Write as _;

    let _serial = cairn_jepsen::serial().await;
    let cluster = DataCluster::start(DataOpts::default()).await?;
    let client = cluster.client(ClientOptions::default()).await?;
    let policy = VolumePolicy {
        chunk_size: 1 << 20,
        stripe_width: 3,
        ..VolumePolicy::default()
    };
    client.meta().create_volume("src", policy).await?;
    let a = pattern(11, (5 << 20) + 123);
    let b = pattern(12, 100_000);
    client.write_file("/src/a", Bytes::from(a.clone())).await?;
    client.create_dir_all("/src/d").await?;
    client
        .write_file("/src/d/b", Bytes::from(b.clone()))
        .await?;
    client.write_file("/src/empty", Bytes::new()).await?;
    client.meta().create_snapshot("src", "v1").await?;
    // The source moves on.
    let f = client
        .open("/src/a", cairn_client::OpenOptions::WRITE)
        .await?;
    f.write_at(0, Bytes::from(vec![0xAA; 8192])).await?;
    f.close().await?;
    client.remove_file("/src/d/b").await?;

    let r = client.meta().restore_snapshot("src", "v1", "dst").await?;
    ensure!(r.snapshot == "v1" && r.source_volume == "src", "{r:?}");
    let dup = client.meta().restore_snapshot("src", "v1", "dst").await;
    ensure!(dup.is_err(), "the name is taken");
    restored(&client, "dst").await?;
    ensure!(
        client.read_file("/dst/a").await? == a,
        "a as the snapshot had it"
    );
    ensure!(client.read_file("/dst/d/b").await? == b);
    ensure!(client.read_file("/dst/empty").await?.is_empty());
    let sa = client.stat("/dst/a").await?;
    ensure!(sa.origin_seq != 0, "a still reads the snapshot's data");

    // A write copies the file first, then changes only the copy; two
    // handles writing at once copy it once and keep both writes.
    let f = client
        .open("/dst/a", cairn_client::OpenOptions::WRITE)
        .await?;
    let g = client
        .open("/dst/a", cairn_client::OpenOptions::WRITE)
        .await?;
    let (x, y) = tokio::join!(
        f.write_at(4096, Bytes::from(vec![0x77; 100])),
        g.write_at(3 << 20, Bytes::from(vec![0x66; 50]))
    );
    x?;
    y?;
    f.close().await?;
    g.close().await?;
    let mut want = a.clone();
    want[4096..4196].fill(0x77);
    want[3 << 20..(3 << 20) + 50].fill(0x66);
    ensure!(
        client.read_file("/dst/a").await? == want,
        "the restored file changed"
    );
    ensure!(client.stat("/dst/a").await?.origin_seq == 0, "copied");
    ensure!(
        client.read_file("/src/.snapshots/v1/a").await? == a,
        "the snapshot changed"
    );
    let live = client.read_file("/src/a").await?;
    ensure!(live[..8192] == [0xAA; 8192] && live[8192..] == a[8192..]);
    // Truncated and rewritten: nothing is copied.
    client
        .write_file("/dst/d/b", Bytes::from_static(b"new"))
        .await?;
    ensure!(client.read_file("/dst/d/b").await?[..] == b"new"[..]);
    ensure!(client.stat("/dst/d/b").await?.origin_seq == 0);
    // Another client sees the restored volume as the first left it.
    let other = cluster.client(ClientOptions::default()).await?;
    ensure!(other.read_file("/dst/a").await? == want);
    // The snapshot is the restored volume's base.
    let e = client.meta().delete_snapshot("src", "v1").await;
    ensure!(
        matches!(&e, Err(s) if s.code == ErrorCode::NotEmpty),
        "{e:?}"
    );

    // Through a mount: reads the snapshot's data, writes copy the file.
    client.meta().create_snapshot("src", "v2").await?;
    client.meta().restore_snapshot("src", "v2", "dst2").await?;
    restored(&client, "dst2").await?;
    let mut m = cairn_jepsen::fuse::Mount::start(
        &cluster.meta.addrs(),
        &cluster.meta.dir().join("mnt"),
        &[],
    )?;
    let d2 = m.path("dst2");
    ensure!(
        std::fs::read(d2.join("a"))? == live,
        "read through the mount"
    );
    let mut f = std::fs::OpenOptions::new().write(true).open(d2.join("a"))?;
    f.write_all(&[0x55; 10])?;
    f.sync_all()?;
    drop(f);
    let mut want2 = live.to_vec();
    want2[..10].fill(0x55);
    ensure!(
        std::fs::read(d2.join("a"))? == want2,
        "written through the mount"
    );
    ensure!(client.read_file("/src/.snapshots/v2/a").await? == live);
    std::fs::write(d2.join("fresh"), b"x")?;
    ensure!(client.read_file("/dst2/fresh").await?[..] == b"x"[..]);
    m.stop()?;
    Ok(())
}
