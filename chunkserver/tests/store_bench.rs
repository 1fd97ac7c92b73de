//! Rough engine-vs-raw-disk figures (ignored by default; run with
//! `cargo test -p cairn-chunkserver --release --test store_bench -- --ignored --nocapture`).
//! Compare the ratios printed in one run, not absolute times.

use std::time::{Duration, Instant};

use cairn_chunkserver::store::{ReadMode, Target, layout};
use cairn_proto::ids::{ChunkId, ObjectId};
use glommio::io::OpenOptions;
use rand::{Rng, SeedableRng};

fn crcs(offset: u64, data: &[u8]) -> Vec<u32> {
    layout::segments(offset, data.len() as u64)
        .map(|s| crc32fast::hash(&data[s.buf_off..s.buf_off + s.len]))
        .collect()
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
#[ignore = "benchmark"]
fn engine_vs_raw_dma() {
    let dir = tempfile::tempdir_in(std::env::var("CAIRN_BENCH_DIR").unwrap_or("/tmp".into()))
        .expect("tempdir");
    Target::format(dir.path(), 1).expect("format");
    let path = dir.path().to_path_buf();
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let t = Target::open(&path).expect("open");
            let s = t.open_shard(0).await.expect("shard");
            const MIB: usize = 1 << 20;
            const N: usize = 256;
            let data: Vec<u8> = (0..MIB).map(|i| (i * 31) as u8).collect();
            let c = crcs(0, &data);

            // Engine: 256 chunks × 1 MiB, write_pending + commit, sequential.
            let start = Instant::now();
            for i in 0..N {
                let chunk = ChunkId { object: ObjectId(i as u64), index: 0 };
                s.write_pending(chunk, 1, 0, &data, &c).await.expect("write");
                s.commit(chunk, 1).await.expect("commit");
            }
            let engine_w = start.elapsed();

            // Raw: the same bytes with DmaFile write_at + fdatasync per MiB.
            let raw = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .dma_open(path.join("raw.dat"))
                .await
                .expect("raw");
            raw.pre_allocate((N * MIB) as u64, false).await.expect("fallocate");
            let start = Instant::now();
            for i in 0..N {
                let mut buf = raw.alloc_dma_buffer(MIB);
                buf.as_bytes_mut().copy_from_slice(&data);
                raw.write_at(buf, (i * MIB) as u64).await.expect("raw write");
                raw.fdatasync().await.expect("sync");
            }
            let raw_w = start.elapsed();

            // 4 KiB random reads, QD1: engine (CleanOnly) vs raw.
            let mut rng = rand::rngs::StdRng::seed_from_u64(1);
            let mut e = Vec::new();
            let mut r = Vec::new();
            for _ in 0..4000 {
                let i = rng.random_range(0..N as u64);
                let b = rng.random_range(0..256u64);
                let chunk = ChunkId { object: ObjectId(i), index: 0 };
                let t0 = Instant::now();
                let out = s.read(chunk, b * 4096, 4096, ReadMode::CleanOnly).await.expect("read");
                e.push(t0.elapsed());
                assert_eq!(out.data.len(), 4096);
                let t0 = Instant::now();
                let res = raw.read_at_aligned(i * MIB as u64 + b * 4096, 4096).await.expect("raw");
                r.push(t0.elapsed());
                assert_eq!(res.len(), 4096);
            }
            let mb = (N * MIB) as f64 / 1e6;
            println!(
                "1 MiB writes, sequential, durable each: engine {:.0} MB/s, raw DmaFile+fdatasync {:.0} MB/s",
                mb / engine_w.as_secs_f64(),
                mb / raw_w.as_secs_f64()
            );
            println!("4 KiB random read QD1 p50: engine {:?}, raw {:?}", p50(e), p50(r));
            let (ds, mf) = s.sync_counts();
            println!("syncs: {ds} fdatasync, {mf} sled flushes");

            // Group commit: 64 concurrent 64 KiB writers.
            let s = std::rc::Rc::new(s);
            let small: Vec<u8> = data[..64 << 10].to_vec();
            let start = Instant::now();
            let mut tasks = Vec::new();
            for w in 0..64u64 {
                let s = s.clone();
                let small = small.clone();
                tasks.push(glommio::spawn_local(async move {
                    let sc = crcs(0, &small);
                    for v in 1..=16u64 {
                        let chunk = ChunkId { object: ObjectId(10_000 + w), index: 0 };
                        s.write_pending(chunk, v, 0, &small, &sc).await.expect("w");
                        s.commit(chunk, v).await.expect("c");
                    }
                }));
            }
            for t in tasks {
                t.await;
            }
            let el = start.elapsed();
            let (ds2, mf2) = s.sync_counts();
            println!(
                "64 writers × 16 × 64 KiB (write+commit): {:.0} MB/s, {:.0} ops/s, {} fdatasync, {} flushes for 1024 writes + 1024 commits",
                (64 * 16 * 64 * 1024) as f64 / 1e6 / el.as_secs_f64(),
                1024.0 / el.as_secs_f64(),
                ds2 - ds,
                mf2 - mf
            );
        })
        .expect("spawn")
        .join()
        .expect("join");
}
