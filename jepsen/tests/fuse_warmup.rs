//! `cairn warmup` through a real `cairn mount`: the mount itself loads the
//! files, so a job's first reads through that mount are served from its
//! block cache; paths that are not on a Cairn mount are refused.

use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use cairn_client::ClientOptions;
use cairn_jepsen::binary::binary;
use cairn_jepsen::data_cluster::{DataCluster, DataOpts, pattern};
use cairn_jepsen::fuse::Mount;
use cairn_jepsen::scrape::{metrics_page, sample};
use cairn_proto::meta::VolumePolicy;

fn value(page: &str, name: &str) -> f64 {
    sample(page, name).unwrap_or_else(|| panic!("no {name} in\n{page}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_fills_the_mounts_cache_so_first_reads_hit() -> Result<()> {
    let _serial = cairn_jepsen::serial().await;
    let cluster = DataCluster::start(DataOpts::default()).await?;
    let client = cluster.client(ClientOptions::default()).await?;
    client
        .meta()
        .create_volume("w", VolumePolicy::default())
        .await?;
    client.create_dir_all("/w/data/small").await?;
    let big = pattern(1, 24 << 20);
    client.write_file("/w/data/big.bin", big.clone()).await?;
    for i in 0..3u64 {
        client
            .write_file(&format!("/w/data/small/s{i}"), pattern(10 + i, 100_000))
            .await?;
    }
    let total = (24 << 20) + 3 * 100_000;

    let metrics = format!("127.0.0.1:{}", cairn_jepsen::ports::free_port_run(1)?);
    let meta = cluster.meta.addrs();
    let mut m = Mount::start(
        &meta,
        &cluster.meta.dir().join("mnt"),
        &["--metrics-listen", &metrics, "--cache-size", "256MiB"],
    )?;
    let used = "cairn_client_cache_used_bytes{tier=\"memory\"}";
    let before = value(&metrics_page(&metrics).await?, used);

    let out = Command::new(binary("cairn"))
        .args(["--json", "warmup", "-j", "4"])
        .arg(m.path("w/data"))
        .output()?;
    ensure!(out.status.success(), "warmup failed: {out:?}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(summary["bytes"] == total, "{summary}");
    ensure!(summary["files"] == 4 && summary["failed"] == 0, "{summary}");

    let page = metrics_page(&metrics).await?;
    let after = value(&page, used);
    ensure!(
        after - before >= (24 << 20) as f64,
        "the mount's memory tier grew by {} bytes",
        after - before
    );
    let lookups = "cairn_client_cache_lookups_total{tier=\"memory\"}";
    let hits = "cairn_client_cache_hits_total{tier=\"memory\"}";
    let misses = |p: &str| value(p, lookups) - value(p, hits);
    let (misses0, hits0) = (misses(&page), value(&page, hits));

    // The job's first read through the mount: every block from the cache.
    ensure!(std::fs::read(m.path("w/data/big.bin"))? == big);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let page = metrics_page(&metrics).await?;
    ensure!(
        value(&page, hits) - hits0 >= ((24 << 20) / 4096) as f64,
        "the read was served by the cache"
    );
    ensure!(
        misses(&page) - misses0 == 0.0,
        "{} blocks were fetched from the chunkservers after the warm-up",
        misses(&page) - misses0
    );

    // Not a Cairn mount: refused, naming the file system.
    let out = Command::new(binary("cairn"))
        .args(["warmup"])
        .arg(cluster.meta.dir())
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1), "{out:?}");
    ensure!(err.contains("not on a Cairn mount"), "{err}");
    m.stop()?;
    Ok(())
}
