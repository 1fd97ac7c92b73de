//! Encrypted volumes against a real cluster (meta and chunkserver
//! processes): writes of every shape through the client library and a
//! FUSE mount (partial blocks, appends, overwrites, truncation) read back
//! exactly as a plain model says; no chunkserver disk holds the plaintext;
//! two clients merging partial blocks of one chunk lose nothing (the
//! read-modify-write is conditional on the chunk version); a block changed
//! on every replica reads as an error, never as data.

use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use cairn_client::crypto::{KeyRing, VolumeKey};
use cairn_client::{ClientOptions, ErrorCode, OpenOptions};
use cairn_jepsen::data_cluster::{
    DataCluster, DataOpts, check_alternate_slots, pattern, write_alternate_slots,
};
use cairn_jepsen::disk::{files_containing, files_under};
use cairn_jepsen::fuse::{Mount, write_patch_cut_append};
use cairn_proto::meta::{VolumeKeyCheck, VolumePolicy};

/// Creates encrypted volume `name` (with `chunk_size`, or the default)
/// under a new key; returns its key ring.
async fn encrypted_volume(c: &DataCluster, name: &str, chunk_size: Option<u64>) -> Arc<KeyRing> {
    let key = VolumeKey::generate();
    let check = key.check_value().to_vec();
    let admin = c.client(ClientOptions::default()).await.unwrap();
    let mut policy = VolumePolicy {
        encrypted: true,
        key_checks: vec![VolumeKeyCheck { version: 1, check }],
        ..VolumePolicy::default()
    };
    if let Some(cs) = chunk_size {
        policy.chunk_size = cs;
        policy.stripe_width = 2;
    }
    admin.meta().create_volume(name, policy).await.unwrap();
    admin.close().await.unwrap();
    Arc::new(KeyRing::single(name, 1, key))
}

/// A cluster with encrypted volume `sec` (1 MiB chunks, 2 chains per
/// file); returns the key ring and the key file written for it.
async fn encrypted_cluster(dir: &Path) -> (DataCluster, Arc<KeyRing>, PathBuf) {
    let c = DataCluster::start(DataOpts::default()).await.unwrap();
    let ring = encrypted_volume(&c, "sec", Some(1 << 20)).await;
    let path = dir.join("sec.key");
    std::fs::write(&path, ring.to_file_text().as_bytes()).unwrap();
    (c, ring, path)
}

fn keyed(ring: &Arc<KeyRing>) -> ClientOptions {
    ClientOptions {
        keys: vec![ring.clone()],
        ..ClientOptions::default()
    }
}

/// Writes of every shape through the library, checked against a model
/// after each step, then the disks searched for the plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_shape_reads_back_and_no_disk_holds_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, ring, _) = encrypted_cluster(tmp.path()).await;
    let client = c.client(keyed(&ring)).await.unwrap();
    let canary = b"CANARY-encrypted-volume-plaintext-must-not-reach-a-disk";
    let mut model: Vec<u8> = Vec::new();
    let f = client.open("/sec/f", OpenOptions::CREATE).await.unwrap();
    let put = |model: &mut Vec<u8>, off: usize, data: &[u8]| {
        if model.len() < off + data.len() {
            model.resize(off + data.len(), 0);
        }
        model[off..off + data.len()].copy_from_slice(data);
    };
    let mut body = Vec::new();
    while body.len() < 3 << 20 {
        body.extend_from_slice(canary);
        body.extend_from_slice(&pattern(body.len() as u64, 77));
    }
    let steps: Vec<(usize, Vec<u8>)> = vec![
        (0, body[..100].to_vec()),              // inside the first block
        (100, body[100..5000].to_vec()),        // finishes block 0, part of 1
        (4096 * 3 + 17, body[..9000].to_vec()), // a hole before it, both ends partial
        (0, body.clone()),                      // whole blocks over three chunks
        ((1 << 20) - 10, body[..20].to_vec()),  // straddles a chunk boundary
        (5, canary.to_vec()),                   // small overwrite
        (body.len() + 1000, canary.to_vec()),   // past the end: a hole in between
    ];
    for (i, (off, data)) in steps.iter().enumerate() {
        f.write_at(*off as u64, Bytes::from(data.clone()))
            .await
            .unwrap();
        put(&mut model, *off, data);
        let back = f.read_at(0, model.len() + 100).await.unwrap();
        assert!(
            back == model[..],
            "step {i}: read back differs from the model"
        );
    }
    // Truncate into the middle of a block, then extend: the cut-off bytes
    // read as zeros, never as the old ones.
    let cut = 2 * (1 << 20) + 4096 * 5 + 123;
    f.set_len(cut as u64).await.unwrap();
    model.truncate(cut);
    f.set_len(cut as u64 + 10_000).await.unwrap();
    model.resize(cut + 10_000, 0);
    let back = f.read_at(0, model.len()).await.unwrap();
    assert!(back == model[..], "after truncate and extend");
    let at = f.append(Bytes::from_static(b"appended")).await.unwrap();
    assert_eq!(at, model.len() as u64);
    model.extend_from_slice(b"appended");
    f.close().await.unwrap();

    // Another client (cold caches) reads the same.
    let other = c.client(keyed(&ring)).await.unwrap();
    let back = other.read_file("/sec/f").await.unwrap();
    assert!(back == model[..], "another client reads the model");
    // A 4 KiB random read at an unaligned offset.
    let g = other.open_read("/sec/f").await.unwrap();
    let r = g.read_at(4096 * 7 + 1000, 4096).await.unwrap();
    assert!(r[..] == model[4096 * 7 + 1000..4096 * 8 + 1000]);
    g.close().await.unwrap();

    // No client can open it without the key, and says which volume.
    let keyless = c.client(ClientOptions::default()).await.unwrap();
    let e = keyless.read_file("/sec/f").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::AccessDenied, "{e}");
    assert!(e.message.contains("'sec'"), "{e}");

    for i in 0..c.chunkservers() {
        let found = files_containing(c.data_dir(i), canary);
        assert!(found.is_empty(), "plaintext on chunkserver {i}: {found:?}");
    }
    for cl in [client, other, keyless] {
        cl.close().await.unwrap();
    }
}

/// With 64 MiB chunks and 8 MiB write pieces, a write whose two partial
/// blocks fall in two pieces of the same chunk: the first piece moves the
/// chunk's version, and the second must be conditional on that new version
/// (not on the one read), or every attempt would fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_across_two_pieces_of_one_chunk_succeeds() {
    let c = DataCluster::start(DataOpts::default()).await.unwrap();
    let ring = encrypted_volume(&c, "big", None).await;
    let client = c.client(keyed(&ring)).await.unwrap();
    let mut model = pattern(9, 16 << 20).to_vec();
    client
        .write_file("/big/f", Bytes::from(model.clone()))
        .await
        .unwrap();
    let f = client.open("/big/f", OpenOptions::WRITE).await.unwrap();
    // 8 MiB - 100 .. 8 MiB + 100: partial blocks on both sides of the
    // boundary between the first two 8 MiB write pieces of chunk 0.
    let at = (8 << 20) - 100;
    f.write_at(at as u64, Bytes::from(vec![0xEE; 200]))
        .await
        .unwrap();
    model[at..at + 200].fill(0xEE);
    f.close().await.unwrap();
    let back = client.read_file("/big/f").await.unwrap();
    assert!(back == model[..], "the merged write reads back");
    client.close().await.unwrap();
}

/// Two clients merge partial blocks of the same chunk at once: every
/// write survives (each read-modify-write is conditional on the chunk
/// version it read, and retried when it lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_partial_block_writers_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, ring, _) = encrypted_cluster(tmp.path()).await;
    let a = c.client(keyed(&ring)).await.unwrap();
    let b = c.client(keyed(&ring)).await.unwrap();
    // A hole: no chunk exists yet, so the first merges race to create it
    // (their writes are conditional on "no chunk" too).
    let f = a.open("/sec/shared", OpenOptions::CREATE).await.unwrap();
    f.set_len(64 * 1024).await.unwrap();
    f.close().await.unwrap();
    // Writer a owns the even 100-byte slots, b the odd ones: many share a
    // 4 KiB block with the other's.
    write_alternate_slots(&a, &b, "/sec/shared", 600)
        .await
        .unwrap();
    let reader = c.client(keyed(&ring)).await.unwrap();
    let back = reader.read_file("/sec/shared").await.unwrap();
    check_alternate_slots(&back, 600).unwrap();
    for cl in [a, b, reader] {
        cl.close().await.unwrap();
    }
}

/// Every replica's copy of the file's blocks altered on disk: reads fail
/// with an error and return no altered data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_blocks_read_as_errors_never_as_data() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut c, ring, _) = encrypted_cluster(tmp.path()).await;
    let client = c.client(keyed(&ring)).await.unwrap();
    let data = pattern(3, 256 * 1024);
    client.write_file("/sec/x", data.clone()).await.unwrap();
    client.close().await.unwrap();
    // Stop the chunkservers, flip one byte in every 4 KiB of every data
    // file, start them again.
    let n = c.chunkservers();
    for i in 0..n {
        c.terminate(i);
    }
    for i in 0..n {
        let files: Vec<PathBuf> = files_under(c.data_dir(i))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|x| x == "dat"))
            .collect();
        assert!(!files.is_empty(), "chunkserver {i} has data files");
        for p in files {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&p)
                .unwrap();
            let len = f.metadata().unwrap().len();
            let mut off = 100;
            while off < len {
                let mut b = [0u8; 1];
                f.read_exact_at(&mut b, off).unwrap();
                b[0] ^= 0x5A;
                f.write_all_at(&b, off).unwrap();
                off += 4096;
            }
        }
    }
    for i in 0..n {
        c.spawn(i).unwrap();
    }
    c.wait_all_serving(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let client = c.client(keyed(&ring)).await.unwrap();
    let e = client.read_file("/sec/x").await.unwrap_err();
    assert!(
        matches!(
            e.code,
            ErrorCode::Checksum | ErrorCode::Io | ErrorCode::Unavailable
        ),
        "{e}"
    );
    client.close().await.unwrap();
}

/// The same through a FUSE mount given the key file: a file written with
/// partial and unaligned writes, appended and truncated reads back as the
/// model, also after a remount; the disks hold no plaintext; a mount
/// without the key answers EACCES.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_with_the_key_reads_and_writes_an_encrypted_volume() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, _ring, key_path) = encrypted_cluster(tmp.path()).await;
    let meta = c.meta.addrs();
    let spec = format!("sec={}", key_path.display());
    let mnt = tmp.path().join("mnt");
    let mut m = Mount::start(&meta, &mnt, &["--key-file", &spec]).unwrap();
    let canary = b"FUSE-CANARY-the-mount-must-seal-this";
    let path = m.path("sec/data.bin");
    let mut model = Vec::new();
    for i in 0..3000u64 {
        model.extend_from_slice(canary);
        model.extend_from_slice(&i.to_le_bytes());
    }
    write_patch_cut_append(&path, &mut model, (b"patched", 4095), 50_001, canary).unwrap();
    assert!(
        std::fs::read(&path).unwrap() == model,
        "read through the mount"
    );
    m.stop().unwrap();

    let mut m = Mount::start(&meta, &mnt, &["--key-file", &spec]).unwrap();
    assert!(
        std::fs::read(m.path("sec/data.bin")).unwrap() == model,
        "after a remount"
    );
    m.stop().unwrap();

    for i in 0..c.chunkservers() {
        let found = files_containing(c.data_dir(i), canary);
        assert!(found.is_empty(), "plaintext on chunkserver {i}: {found:?}");
    }

    let mut keyless = Mount::start(&meta, &mnt, &[]).unwrap();
    let e = std::fs::read(keyless.path("sec/data.bin")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(13), "EACCES without the key: {e}");
    keyless.stop().unwrap();
}

/// Seals travel with the blocks a resync copies: a chunkserver killed for
/// good is replaced, the replacement gets its chains' sealed blocks from
/// the survivors, and once two of the original holders are dead every
/// file still reads whole from what is left (the copied seals verify).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resynced_replicas_carry_the_seals() {
    let _serial = cairn_jepsen::serial().await;
    let mut c = DataCluster::start_replacing().await.unwrap();
    let ring = encrypted_volume(&c, "sec", Some(1 << 20)).await;
    let client = c.client(keyed(&ring)).await.unwrap();
    let files: Vec<Bytes> = (0..16u64)
        .map(|i| pattern(i, 300_000 + i as usize * 4321))
        .collect();
    for (i, d) in files.iter().enumerate() {
        client
            .write_file(&format!("/sec/f{i}"), d.clone())
            .await
            .unwrap();
    }
    client.close().await.unwrap();
    c.lose_all_but_the_resynced().await.unwrap();
    let reader = c.client(keyed(&ring)).await.unwrap();
    for (i, d) in files.iter().enumerate() {
        let got = reader.read_file(&format!("/sec/f{i}")).await.unwrap();
        assert!(got == *d, "f{i} differs after the resync");
    }
    reader.close().await.unwrap();
}

/// Two clients that opened a file while it was empty fill disjoint parts
/// of its first block, one after the other: both keep their bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_of_disjoint_parts_of_a_new_block_keep_both() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, ring, _) = encrypted_cluster(tmp.path()).await;
    let a = c.client(keyed(&ring)).await.unwrap();
    let b = c.client(keyed(&ring)).await.unwrap();
    let fb = b.open("/sec/s", OpenOptions::CREATE).await.unwrap();
    let fa = a.open("/sec/s", OpenOptions::WRITE).await.unwrap();
    fa.write_at(0, Bytes::from(vec![1u8; 1000])).await.unwrap();
    fa.close().await.unwrap();
    fb.write_at(1000, Bytes::from(vec![2u8; 3096]))
        .await
        .unwrap();
    fb.close().await.unwrap();
    let back = a.read_file("/sec/s").await.unwrap();
    assert_eq!(back.len(), 4096);
    assert!(
        back[..1000].iter().all(|x| *x == 1),
        "the first writer's bytes"
    );
    assert!(
        back[1000..].iter().all(|x| *x == 2),
        "the second writer's bytes"
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}
