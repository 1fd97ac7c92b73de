//! Compressed volumes against a real cluster (meta and chunkserver
//! processes): writes of every shape through the client library and a
//! FUSE mount read back exactly as a plain model says, on lz4, zstd and
//! zstd + encrypted volumes; compressible data takes less disk on the
//! chunkservers and meta reports the ratio; incompressible units and units
//! that mimic a packed header are stored raw and read back as written; two
//! clients merging into one unit lose nothing; a chunkserver killed during
//! writes loses no file whose write returned; the packed marks survive a
//! resync.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cairn_client::crypto::{KeyRing, VolumeKey};
use cairn_client::{Client, ClientOptions, OpenOptions};
use cairn_jepsen::data_cluster::{
    DataCluster, DataOpts, check_alternate_slots, pattern, write_alternate_slots,
};
use cairn_jepsen::disk::files_containing;
use cairn_jepsen::fuse::{Mount, write_patch_cut_append};
use cairn_proto::meta::{Compression, VolumeKeyCheck, VolumePolicy};

/// Creates volume `name` compressed with `algo` in `unit`-byte units
/// (1 MiB chunks, 2 chains per file), encrypted too when `key` is given.
async fn compressed_volume(
    c: &DataCluster,
    name: &str,
    algo: Compression,
    unit: u32,
    key: Option<&VolumeKey>,
) {
    let admin = c.client(ClientOptions::default()).await.unwrap();
    let mut policy = VolumePolicy {
        compression: algo as i32,
        compression_unit: unit,
        chunk_size: 1 << 20,
        stripe_width: 2,
        ..VolumePolicy::default()
    };
    if let Some(k) = key {
        policy.encrypted = true;
        policy.key_checks = vec![VolumeKeyCheck {
            version: 1,
            check: k.check_value().to_vec(),
        }];
    }
    admin.meta().create_volume(name, policy).await.unwrap();
    admin.close().await.unwrap();
}

/// A cluster with volumes `lz` (lz4, 64 KiB units) and `zs` (zstd in
/// 16 KiB units, encrypted), and options of clients that hold zs's key.
async fn lz_and_zs() -> (DataCluster, impl Fn() -> ClientOptions) {
    let c = DataCluster::start(DataOpts::default()).await.unwrap();
    let key = VolumeKey::generate();
    compressed_volume(&c, "lz", Compression::Lz4, 0, None).await;
    compressed_volume(&c, "zs", Compression::Zstd, 16 << 10, Some(&key)).await;
    let ring = Arc::new(KeyRing::single("zs", 1, key));
    let opts = move || ClientOptions {
        keys: vec![ring.clone()],
        ..ClientOptions::default()
    };
    (c, opts)
}

/// Text that compresses about 3-4× (numbered lines of words).
fn text(seed: u64, len: usize) -> Vec<u8> {
    let words = [
        "epoch", "batch", "loss", "shard", "tensor", "gradient", "token", "sample",
    ];
    let mut out = Vec::with_capacity(len + 64);
    let mut i = seed;
    while out.len() < len {
        let w = words[(i % 8) as usize];
        out.extend_from_slice(format!("{i:08} {w} {} ", i * 7919 % 1000).as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// Bytes in use on every chunkserver, as their last heartbeats said.
async fn used(c: &DataCluster) -> u64 {
    let t = c.chains().await.unwrap();
    t.chunkservers.iter().map(|s| s.used_bytes).sum()
}

fn put(model: &mut Vec<u8>, off: usize, data: &[u8]) {
    if model.len() < off + data.len() {
        model.resize(off + data.len(), 0);
    }
    model[off..off + data.len()].copy_from_slice(data);
}

/// Writes of every shape to `path` through `client`, checked against a
/// model after each step; returns the model.
async fn write_shapes(client: &Client, path: &str, seed: u64) -> Vec<u8> {
    let mut model: Vec<u8> = Vec::new();
    let f = client.open(path, OpenOptions::CREATE).await.unwrap();
    let body = text(seed, 3 << 20);
    let noise = pattern(9, 300_000).to_vec();
    let steps: Vec<(usize, Vec<u8>)> = vec![
        (0, body[..100].to_vec()),               // inside the first unit
        (100, body[100..70_000].to_vec()),       // finishes unit 0, part of 1
        (200_000 + 17, body[..9000].to_vec()),   // a hole before it
        (0, body.clone()),                       // whole units over three chunks
        ((1 << 20) - 10, body[..20].to_vec()),   // straddles a chunk boundary
        (5000, noise.clone()),                   // incompressible, unaligned
        (65_536 * 20, noise[..65_536].to_vec()), // one raw unit, aligned
        (77, b"small overwrite".to_vec()),       // inside a packed unit
        (body.len() + 1000, b"tail".to_vec()),   // past the end: a hole
    ];
    for (i, (off, data)) in steps.iter().enumerate() {
        f.write_at(*off as u64, Bytes::from(data.clone()))
            .await
            .unwrap();
        put(&mut model, *off, data);
        let back = f.read_at(0, model.len() + 100).await.unwrap();
        assert!(back == model[..], "{path} step {i}: read back differs");
    }
    // Truncate into the middle of a unit, then extend: the cut-off bytes
    // read as zeros, never as the old ones.
    let cut = 2 * (1 << 20) + 65_536 * 3 + 123;
    f.set_len(cut as u64).await.unwrap();
    model.truncate(cut);
    f.set_len(cut as u64 + 100_000).await.unwrap();
    model.resize(cut + 100_000, 0);
    let back = f.read_at(0, model.len()).await.unwrap();
    assert!(back == model[..], "{path}: after truncate and extend");
    let at = f.append(Bytes::from_static(b"appended")).await.unwrap();
    assert_eq!(at, model.len() as u64);
    model.extend_from_slice(b"appended");
    f.close().await.unwrap();
    model
}

/// Every write shape on lz4 and zstd volumes (the zstd one also
/// encrypted, with 16 KiB units), read back by another client, whole and
/// by 4 KiB random reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_shape_reads_back_on_compressed_volumes() {
    let (c, opts) = lz_and_zs().await;
    let client = c.client(opts()).await.unwrap();
    let mut models = Vec::new();
    for (path, seed) in [("/lz/f", 1), ("/zs/f", 7_000_000)] {
        models.push((path, write_shapes(&client, path, seed).await));
    }
    let other = c.client(opts()).await.unwrap();
    for (path, model) in &models {
        let back = other.read_file(path).await.unwrap();
        assert!(back == model[..], "{path}: another client reads the model");
        let g = other.open_read(path).await.unwrap();
        for off in [0usize, 4096 * 7 + 1000, 65_536 * 20 + 5, (1 << 20) - 3] {
            let r = g.read_at(off as u64, 4096).await.unwrap();
            assert!(r[..] == model[off..off + 4096], "{path}: 4 KiB at {off}");
        }
        g.close().await.unwrap();
    }
    // The encrypted one's text is on no disk, compressed or not.
    let canary = &text(7_000_000, 3 << 20)[1000..1040];
    for i in 0..c.chunkservers() {
        let found = files_containing(c.data_dir(i), canary);
        assert!(found.is_empty(), "zs text on chunkserver {i}: {found:?}");
    }
    client.close().await.unwrap();
    other.close().await.unwrap();
}

/// Compressible data takes a fraction of its size on the chunkservers, and
/// meta's counters give the same ratio; a unit that looks like a packed one
/// but is stored raw reads back as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_data_takes_less_disk_and_reports_its_ratio() {
    let c = DataCluster::start(DataOpts::default()).await.unwrap();
    compressed_volume(&c, "lz", Compression::Lz4, 0, None).await;
    let client = c.client(ClientOptions::default()).await.unwrap();
    let before = used(&c).await;
    let size = 24usize << 20;
    for i in 0..3u64 {
        client
            .write_file(
                &format!("/lz/t{i}"),
                Bytes::from(text(i * 1_000_000, size / 3)),
            )
            .await
            .unwrap();
    }
    // A raw unit whose bytes start like a packed unit: a packed unit of
    // text, then noise to fill 64 KiB (it does not shrink by a block).
    let mut mimic = Vec::new();
    mimic.extend_from_slice(b"Z\x01\x00\x00");
    mimic.extend_from_slice(&3000u32.to_le_bytes());
    mimic.extend_from_slice(&text(5, 3000));
    mimic.extend_from_slice(&pattern(11, 65_536 - mimic.len()));
    client
        .write_file("/lz/mimic", Bytes::from(mimic.clone()))
        .await
        .unwrap();
    assert!(client.read_file("/lz/mimic").await.unwrap() == mimic[..]);

    let vols = client.meta().list_volumes().await.unwrap();
    let v = vols.iter().find(|v| v.name == "lz").unwrap();
    assert!(v.logical_bytes >= size as u64, "{v:?}");
    let ratio = v.logical_bytes as f64 / v.stored_bytes as f64;
    assert!(ratio > 2.0, "lz4 on text: ratio {ratio:.2} ({v:?})");

    // Chunkservers report usage with their heartbeats.
    let mut grown = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        grown = used(&c).await.saturating_sub(before);
        if grown > 0 {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    grown = grown.max(used(&c).await.saturating_sub(before));
    assert!(grown > 0, "no usage reported");
    assert!(
        grown < 3 * size as u64 / 2,
        "3 replicas of {size} bytes of text take {grown} bytes (no compression?)"
    );
    for i in 0..3u64 {
        let back = client.read_file(&format!("/lz/t{i}")).await.unwrap();
        assert!(back == text(i * 1_000_000, size / 3)[..], "t{i}");
    }
    client.close().await.unwrap();
}

/// Two clients writing alternate 100-byte slots of one file: every unit
/// is shared, so each write merges into a unit the other also changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_of_one_unit_lose_nothing() {
    let c = DataCluster::start(DataOpts::default()).await.unwrap();
    compressed_volume(&c, "lz", Compression::Lz4, 16 << 10, None).await;
    let a = c.client(ClientOptions::default()).await.unwrap();
    let b = c.client(ClientOptions::default()).await.unwrap();
    let f = a.open("/lz/shared", OpenOptions::CREATE).await.unwrap();
    f.set_len(64 * 1024).await.unwrap();
    f.close().await.unwrap();
    write_alternate_slots(&a, &b, "/lz/shared", 400)
        .await
        .unwrap();
    let reader = c.client(ClientOptions::default()).await.unwrap();
    let back = reader.read_file("/lz/shared").await.unwrap();
    check_alternate_slots(&back, 400).unwrap();
    for cl in [a, b, reader] {
        cl.close().await.unwrap();
    }
}

/// Through a FUSE mount: unaligned writes, a truncate into a unit, an
/// append, a remount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_reads_and_writes_a_compressed_volume() {
    let tmp = tempfile::tempdir().unwrap();
    let c = DataCluster::start(DataOpts::default()).await.unwrap();
    compressed_volume(&c, "zs", Compression::Zstd, 0, None).await;
    let meta = c.meta.addrs();
    let mnt = tmp.path().join("mnt");
    let mut m = Mount::start(&meta, &mnt, &[]).unwrap();
    let path = m.path("zs/data.txt");
    let mut model = text(3, 500_000);
    write_patch_cut_append(
        &path,
        &mut model,
        (b"patched", 65_533),
        300_001,
        b"appended",
    )
    .unwrap();
    assert!(std::fs::read(&path).unwrap() == model, "through the mount");
    m.stop().unwrap();
    let mut m = Mount::start(&meta, &mnt, &[]).unwrap();
    assert!(
        std::fs::read(m.path("zs/data.txt")).unwrap() == model,
        "after a remount"
    );
    m.stop().unwrap();
}

/// A chunkserver killed while files are written to a compressed volume:
/// every file whose write returned reads back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunkserver_killed_during_writes_loses_no_returned_file() {
    let _serial = cairn_jepsen::serial().await;
    let mut c = DataCluster::start(DataOpts {
        chunkservers: 4,
        ..DataOpts::default()
    })
    .await
    .unwrap();
    compressed_volume(&c, "lz", Compression::Lz4, 0, None).await;
    let client = c.client(ClientOptions::default()).await.unwrap();
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut done = Vec::new();
            for i in 0..40u64 {
                let mut d = text(i * 100_000, 200_000 + i as usize * 1000);
                d.extend_from_slice(&pattern(i, 30_000));
                let r = client
                    .write_file(&format!("/lz/f{i}"), Bytes::from(d.clone()))
                    .await;
                if r.is_ok() {
                    done.push((i, d));
                }
            }
            done
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.kill(1);
    let done = writer.await.unwrap();
    assert!(
        done.len() >= 30,
        "only {} of 40 writes returned",
        done.len()
    );
    let reader = c.client(ClientOptions::default()).await.unwrap();
    for (i, d) in &done {
        let back = reader.read_file(&format!("/lz/f{i}")).await.unwrap();
        assert!(back == d[..], "f{i} differs");
    }
    reader.close().await.unwrap();
    client.close().await.unwrap();
}

/// The packed marks travel with the blocks a resync copies: a chunkserver
/// killed for good is replaced, and once two of the original holders are
/// dead every file still reads whole from the copies (a lost mark would
/// make a packed unit read as its compressed bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resynced_replicas_carry_the_packed_marks() {
    let _serial = cairn_jepsen::serial().await;
    let mut c = DataCluster::start_replacing().await.unwrap();
    compressed_volume(&c, "lz", Compression::Lz4, 0, None).await;
    let client = c.client(ClientOptions::default()).await.unwrap();
    let files: Vec<Vec<u8>> = (0..12u64)
        .map(|i| {
            let mut d = text(i * 50_000, 300_000 + i as usize * 4321);
            d.extend_from_slice(&pattern(i, 70_000));
            d
        })
        .collect();
    for (i, d) in files.iter().enumerate() {
        client
            .write_file(&format!("/lz/f{i}"), Bytes::from(d.clone()))
            .await
            .unwrap();
    }
    client.close().await.unwrap();
    c.lose_all_but_the_resynced().await.unwrap();
    let reader = c.client(ClientOptions::default()).await.unwrap();
    for (i, d) in files.iter().enumerate() {
        let got = reader.read_file(&format!("/lz/f{i}")).await.unwrap();
        assert!(got == d[..], "f{i} differs after the resync");
    }
    reader.close().await.unwrap();
}

/// Two clients that opened a file while it was empty fill disjoint slices
/// of its first unit, one after the other: both keep their bytes (the
/// second reads the unit, though it lies past the end it knew, and its
/// write is conditional on what it read), on lz4 and on zstd + encrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_of_disjoint_slices_of_a_new_unit_keep_both() {
    let (c, opts) = lz_and_zs().await;
    let a = c.client(opts()).await.unwrap();
    let b = c.client(opts()).await.unwrap();
    for (path, cut, unit) in [
        ("/lz/s", 40_000usize, 65_536usize),
        ("/zs/s", 10_000, 16_384),
    ] {
        let fb = b.open(path, OpenOptions::CREATE).await.unwrap();
        let fa = a.open(path, OpenOptions::WRITE).await.unwrap();
        let first = text(1, cut);
        let second = text(2, unit - cut);
        fa.write_at(0, Bytes::from(first.clone())).await.unwrap();
        fa.close().await.unwrap();
        fb.write_at(cut as u64, Bytes::from(second.clone()))
            .await
            .unwrap();
        fb.close().await.unwrap();
        let back = a.read_file(path).await.unwrap();
        assert_eq!(back.len(), unit, "{path}");
        assert!(back[..cut] == first[..], "{path}: the first writer's bytes");
        assert!(
            back[cut..] == second[..],
            "{path}: the second writer's bytes"
        );
    }
    a.close().await.unwrap();
    b.close().await.unwrap();
}
