//! Checkpoints under fire (DESIGN §9 invariant 2): a reader polls
//! `load_latest` while `cairn checkpoint save` processes publish new
//! checkpoints and are killed with SIGKILL at random points of their save.
//! The reader must never observe a partial checkpoint: every checkpoint it
//! loads is whole and byte-identical to what its writer was saving.
//!
//! Run after `cargo build --bins` (scripts/test does).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use cairn_client::{Checkpoints, ClientOptions};
use cairn_jepsen::binary::binary;
use cairn_jepsen::data_cluster::{DataCluster, DataOpts, pattern};
use cairn_jepsen::serial;

/// The bytes of checkpoint `k`: its size varies, its contents are unique.
fn contents(k: u64) -> Bytes {
    pattern(k + 1, (2 << 20) + (k as usize % 5) * 700_001)
}

/// A small deterministic generator for kill delays.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reader_never_sees_a_partial_checkpoint() -> Result<()> {
    let _serial = serial().await;
    let cluster = DataCluster::start(DataOpts::default()).await?;
    let meta = cluster.meta.addrs().join(",");
    let client = cluster.client(ClientOptions::default()).await?;
    let ckpts = Checkpoints::new(client.clone(), "/train/ckpt");
    let local = tempfile::tempdir()?;

    // The reader: polls load_latest and checks every checkpoint it gets.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (stop, seen, ckpts) = (stop.clone(), seen.clone(), ckpts.clone());
        tokio::spawn(async move {
            let mut names = std::collections::BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                match ckpts.load_latest().await {
                    Ok(None) => {}
                    Ok(Some((info, data))) => {
                        let k: u64 = info
                            .name
                            .strip_prefix("step-")
                            .and_then(|s| s.parse().ok())
                            .with_context(|| format!("unexpected checkpoint {:?}", info.name))?;
                        let want = contents(k);
                        if data != want {
                            bail!(
                                "PARTIAL/WRONG checkpoint {}: {} bytes, want {}",
                                info.name,
                                data.len(),
                                want.len()
                            );
                        }
                        names.insert(info.name);
                        seen.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => bail!("load_latest failed: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(names)
        })
    };

    // The writers: one `cairn checkpoint save` process per step, killed at
    // a random point in two runs out of three.
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let (mut completed, mut killed) = (0, 0);
    let t = Instant::now();
    for k in 0..24u64 {
        let file = local.path().join(format!("step-{k}"));
        std::fs::write(&file, contents(k))?;
        let mut child = Command::new(binary("cairn"))
            .args([
                "--meta",
                &meta,
                "checkpoint",
                "save",
                "--quiet",
                "/train/ckpt",
            ])
            .arg(format!("step-{k}"))
            .arg(&file)
            .args(["--metric", &format!("step={k}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting cairn (run cargo build --bins first)")?;
        if k % 3 != 0 {
            tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
            let _ = child.kill();
        }
        let out = child.wait_with_output()?;
        if out.status.success() {
            completed += 1;
        } else if out.status.code().is_none() {
            killed += 1;
        } else {
            bail!(
                "checkpoint save {k} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    println!(
        "{completed} saves completed, {killed} killed in {:?}",
        t.elapsed()
    );
    // Let the reader see the final state, then stop it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let names = reader.await??;
    println!(
        "reader loaded {} checkpoints ({names:?})",
        seen.load(Ordering::Relaxed)
    );
    ensure!(completed >= 8, "every third save ran to completion");
    ensure!(killed > 0, "some saves were killed midway");
    ensure!(!names.is_empty(), "the reader saw checkpoints");

    // Every listed checkpoint is whole; killed saves left no visible file.
    let list = ckpts.list().await?;
    ensure!(list.len() >= completed, "every completed save is listed");
    for info in &list {
        let (_, data) = ckpts.load(&info.name).await?;
        let k: u64 = info.name.trim_start_matches("step-").parse()?;
        ensure!(data == contents(k), "{} is whole", info.name);
        ensure!(
            info.metrics.get("step") == Some(&(k as f64)),
            "{} has its metric",
            info.name
        );
    }
    let latest = ckpts.latest().await?.context("a latest checkpoint")?;
    ensure!(Some(&latest) == list.last(), "latest is the newest listed");
    // Pruning keeps the newest.
    let removed = ckpts.keep_last(2).await?;
    ensure!(
        ckpts.list().await?.len() == 2,
        "keep_last(2) leaves two ({removed:?})"
    );
    Ok(())
}
