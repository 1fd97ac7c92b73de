//! A chunkserver that was a chain's head goes away while the file is
//! rewritten, then comes back: writes made after its return must land.
//!
//! Before the fix, meta turned the returning target syncing *in place*, so
//! it was the head again; it assigned the next write the version after its
//! own (stale) one, which the serving members already held, so they
//! acknowledged the write as already applied without applying it — the
//! write was acknowledged and silently lost. Returning targets now join at
//! the tail.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use bytes::Bytes;
use cairn_client::{ClientOptions, OpenOptions};
use cairn_jepsen::data_cluster::{DataCluster, DataOpts, pattern};
use cairn_proto::meta::{TargetState, VolumePolicy};

const LEN: usize = 256 << 10;

/// Polls meta's chain table until `ok` accepts the members of `chain`.
async fn wait_members(
    cluster: &DataCluster,
    chain: u32,
    what: &str,
    ok: impl Fn(&[cairn_proto::meta::ChainTarget]) -> bool,
) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let c = cluster.chain(chain).await?;
        if ok(&c.targets) {
            return Ok(());
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "chain {chain} never {what}: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_after_the_old_head_returns_are_not_lost() -> Result<()> {
    let _serial = cairn_jepsen::serial().await;
    let mut cluster = DataCluster::start(DataOpts::default()).await?;
    let client = cluster.client(ClientOptions::default()).await?;
    client
        .meta()
        .create_volume("h", VolumePolicy::default())
        .await?;
    client.write_file("/h/f", pattern(1, LEN)).await?;
    let layout = client.stat("/h/f").await?.layout.expect("layout");
    let chain = layout.chains[0];
    let head = cluster.chain(chain).await?.targets[0].chunkserver_id;
    let victim = cluster.index_of(head).await?;
    println!("chain {chain}: killing its head, chunkserver {head} (index {victim})");
    cluster.kill(victim);
    let offline = TargetState::Offline as i32;
    wait_members(&cluster, chain, "lost its head", |m| {
        m.iter()
            .any(|t| t.chunkserver_id == head && t.state == offline)
    })
    .await?;

    // Rewritten while the old head is away: versions move on without it.
    let f = client.open("/h/f", OpenOptions::WRITE).await?;
    f.write_at(0, pattern(2, LEN)).await?;
    f.close().await?;

    cluster.spawn(victim)?;
    wait_members(&cluster, chain, "took its old head back", |m| {
        m.iter().all(|t| t.state != offline)
    })
    .await?;
    // Give the client's chain table the new version.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Written after the return, acknowledged: it must read back.
    let f = client.open("/h/f", OpenOptions::WRITE).await?;
    f.write_at(0, Bytes::from(vec![0xAB; 4096])).await?;
    f.close().await?;
    let mut want = pattern(2, LEN).to_vec();
    want[..4096].fill(0xAB);
    for c in [
        client.clone(),
        cluster.client(ClientOptions::default()).await?,
    ] {
        let got = c.read_file("/h/f").await?;
        ensure!(got.len() == LEN, "length {}", got.len());
        ensure!(
            got[..4096] == want[..4096],
            "the write made after the old head returned was lost (first byte {:#x})",
            got[0]
        );
        ensure!(got == want, "the file differs elsewhere");
    }
    Ok(())
}
