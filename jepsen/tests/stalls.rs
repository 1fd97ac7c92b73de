//! A chunkserver whose requests get stuck says so in its log, and clients
//! do not keep asking a connection that has gone silent.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cairn_client::ClientOptions;
use cairn_jepsen::data_cluster::{DataCluster, DataOpts, pattern};
use cairn_proto::meta::VolumePolicy;

const LEN: usize = 256 << 10;

/// The chunkserver indexes of `chain`'s members, head first.
async fn members(cluster: &DataCluster, chain: u32) -> Result<Vec<usize>> {
    let c = cluster.chain(chain).await?;
    let mut out = Vec::new();
    for m in &c.targets {
        out.push(cluster.index_of(m.chunkserver_id).await?);
    }
    Ok(out)
}

/// Waits up to `limit` for chunkserver `i`'s log to hold `needle`.
async fn wait_log(
    cluster: &DataCluster,
    i: usize,
    needle: &str,
    limit: Duration,
) -> Result<String> {
    let t0 = Instant::now();
    loop {
        let log = cluster.log_tail(i, 200);
        if let Some(line) = log.lines().find(|l| l.contains(needle)) {
            return Ok(line.to_string());
        }
        ensure!(
            t0.elapsed() < limit,
            "chunkserver {i} never logged {needle:?} within {limit:?}; its log ends:\n{}",
            cluster.log_tail(i, 20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The chain's tail freezes (SIGSTOP) while a write is forwarded to it:
/// the head's write waits for its peer timeout, and after three seconds
/// the head's watchdog logs which request is stuck and on what; once the
/// tail thaws, the write completes whole and the head says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_write_is_named_in_the_heads_log() -> Result<()> {
    let _serial = cairn_jepsen::serial().await;
    let cluster = DataCluster::start(DataOpts::default()).await?;
    let client = cluster.client(ClientOptions::default()).await?;
    client
        .meta()
        .create_volume("s", VolumePolicy::default())
        .await?;
    client.write_file("/s/f", pattern(1, LEN)).await?;
    let layout = client.stat("/s/f").await?.layout.context("layout")?;
    let m = members(&cluster, layout.chains[0]).await?;
    ensure!(m.len() == 3, "a 3-replica chain: {m:?}");
    let (head, tail) = (m[0], m[2]);

    cluster.pause(tail);
    let writer = {
        let client = client.clone();
        tokio::spawn(async move { client.write_file("/s/f", pattern(2, LEN)).await })
    };
    let line = wait_log(
        &cluster,
        head,
        "has been in flight for",
        Duration::from_secs(15),
    )
    .await;
    cluster.resume(tail);
    let line = line?;
    // write_file truncates first: the stuck request is that truncate or
    // the write after it, of the file's first chunk.
    let chunk = format!("{}:0", layout.object_id);
    ensure!(
        line.contains(" WARN ")
            && (line.contains(&format!("truncate of {chunk}"))
                || line.contains(&format!("write of {chunk}"))),
        "the warning names the stuck request and its chunk {chunk}: {line}"
    );
    writer.await??;
    ensure!(
        client.read_file("/s/f").await? == pattern(2, LEN),
        "the write that waited landed whole"
    );
    wait_log(
        &cluster,
        head,
        "no request is stuck any more",
        Duration::from_secs(5),
    )
    .await?;
    Ok(())
}
