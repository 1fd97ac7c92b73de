//! The StatefulSet start-up of the metadata service, with real processes
//! on loopback: three `cairn-meta` given one and the same pod spec (every
//! ordinal in `--join`, `--bootstrap-ordinal 0`), told apart only by their
//! host names (`HOSTNAME=cairn-meta-N`, as Kubernetes sets it), started
//! at once as `podManagementPolicy: Parallel` does.
//!
//! What an operator relies on: exactly one cluster forms, founded by
//! ordinal 0; `/ready` tells a replica that can serve from one that cannot
//! (a leader that lost its quorum goes unready); after a full stop the
//! replicas come back; ordinal 0 with a wiped volume joins the existing
//! cluster as a learner instead of founding a second one.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use cairn_client::{MetaClient, MetaClientOptions};
use cairn_jepsen::binary::binary;
use cairn_jepsen::ports::free_port_run;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One pod of the StatefulSet.
struct Pod {
    ordinal: usize,
    grpc: String,
    metrics: String,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Pod {
    fn start(&mut self, join: &str) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(binary("cairn-meta"))
            .env("HOSTNAME", format!("cairn-meta-{}", self.ordinal))
            .env("RUST_LOG", "info,openraft=warn")
            .args([
                "--data-dir",
                &self.data.display().to_string(),
                "--listen",
                &self.grpc,
                "--join",
                join,
                "--bootstrap-ordinal",
                "0",
                "--replicas",
                "3",
                "--metrics-listen",
                &self.metrics,
                "--raft-heartbeat",
                "100ms",
                "--election-timeout",
                "500ms",
            ])
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("starting cairn-meta")?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct StatefulSet {
    _dir: tempfile::TempDir,
    pods: Vec<Pod>,
    join: String,
}

impl StatefulSet {
    fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let first = free_port_run(6)?;
        let pods: Vec<Pod> = (0..3)
            .map(|i| Pod {
                ordinal: i,
                grpc: format!("127.0.0.1:{}", first + i as u16),
                metrics: format!("127.0.0.1:{}", first + 3 + i as u16),
                data: dir.path().join(format!("meta-{i}")),
                log: dir.path().join(format!("meta-{i}.log")),
                child: None,
            })
            .collect();
        let join = pods
            .iter()
            .map(|p| p.grpc.clone())
            .collect::<Vec<_>>()
            .join(",");
        Ok(Self {
            _dir: dir,
            pods,
            join,
        })
    }

    fn start(&mut self, i: usize) -> Result<()> {
        let join = self.join.clone();
        self.pods[i].start(&join)
    }

    fn logs(&self) -> String {
        self.pods
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(&p.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(25).collect();
                format!(
                    "--- cairn-meta-{}:\n{}",
                    p.ordinal,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for StatefulSet {
    fn drop(&mut self) {
        for p in &mut self.pods {
            p.kill();
        }
    }
}

/// `GET path` on `addr`: the status code, or `None` when nothing answers.
async fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut page = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut page))
        .await
        .ok()?
        .ok()?;
    page.split_whitespace().nth(1)?.parse().ok()
}

async fn wait_ready(pod: &Pod, want: bool, within: Duration) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let ready = http_status(&pod.metrics, "/ready").await == Some(200);
        if ready == want {
            return Ok(());
        }
        if t0.elapsed() > within {
            bail!(
                "cairn-meta-{} still {} after {within:?}",
                pod.ordinal,
                if want { "not ready" } else { "ready" }
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn client(addrs: &str) -> Result<MetaClient> {
    let opts = MetaClientOptions {
        deadline: Duration::from_secs(10),
        ..MetaClientOptions::default()
    };
    MetaClient::connect(addrs.split(','), opts)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// (node id, cluster id) of each pod, asked directly.
async fn identities(c: &MetaClient, set: &StatefulSet) -> Result<Vec<(u64, String)>> {
    let mut out = Vec::new();
    for p in &set.pods {
        let s = c
            .status_at(&p.grpc)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.grpc))?;
        out.push((s.node_id, s.cluster_id));
    }
    Ok(out)
}

async fn body(set: &mut StatefulSet) -> Result<()> {
    // Parallel start: all three at once, one spec.
    for i in 0..3 {
        set.start(i)?;
    }
    for p in &set.pods {
        wait_ready(p, true, Duration::from_secs(40)).await?;
    }
    let c = client(&set.join).await?;
    let ids = identities(&c, set).await?;
    ensure!(
        ids[0].0 == 1,
        "ordinal 0 founds the cluster as node 1: {ids:?}"
    );
    ensure!(
        ids.iter().all(|(_, cluster)| *cluster == ids[0].1),
        "one cluster, not several: {ids:?}"
    );
    // The joiners come in as learners; the leader promotes them once they
    // have caught up, up to --replicas voters.
    let t0 = Instant::now();
    let status = loop {
        let s = c.leader_status().await?;
        if s.members.iter().filter(|m| m.voter).count() == 3 {
            break s;
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(20),
            "three voters: {:?}",
            s.members
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let cluster_id = ids[0].1.clone();
    c.create_volume("vol", Default::default())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    // A leader whose followers are gone cannot commit: it goes unready.
    let leader = set
        .pods
        .iter()
        .position(|p| p.grpc == status.leader_addr)
        .context("the leader is one of the pods")?;
    for i in (0..3).filter(|i| *i != leader) {
        set.pods[i].kill();
    }
    wait_ready(&set.pods[leader], false, Duration::from_secs(5)).await?;
    for i in (0..3).filter(|i| *i != leader) {
        set.start(i)?;
    }
    for p in &set.pods {
        wait_ready(p, true, Duration::from_secs(30)).await?;
    }

    // A full stop, then ordinal 0 alone: no quorum, not ready (which is why
    // the chart does not use OrderedReady); the others come, all are ready.
    for p in &mut set.pods {
        p.kill();
    }
    set.start(0)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_ready(&set.pods[0], false, Duration::from_secs(1)).await?;
    set.start(1)?;
    set.start(2)?;
    for p in &set.pods {
        wait_ready(p, true, Duration::from_secs(30)).await?;
    }
    let ids = identities(&c, set).await?;
    ensure!(
        ids.iter().all(|(_, cl)| *cl == cluster_id),
        "same cluster after the restart: {ids:?}"
    );

    // Ordinal 0 loses its volume: it must join the cluster its peers hold
    // (as a learner under a new node id), never found a new one.
    set.pods[0].kill();
    std::fs::remove_dir_all(&set.pods[0].data)?;
    set.start(0)?;
    let t0 = Instant::now();
    let rejoined = loop {
        if let Ok(s) = c.status_at(&set.pods[0].grpc).await
            && s.node_id != 0
        {
            break s;
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "the wiped ordinal 0 did not come back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(
        rejoined.cluster_id == cluster_id,
        "the wiped ordinal 0 founded cluster {} instead of joining {cluster_id}",
        rejoined.cluster_id
    );
    ensure!(
        rejoined.node_id > 3,
        "a wiped replica comes back under a new id: {}",
        rejoined.node_id
    );
    let t0 = Instant::now();
    loop {
        let status = c.leader_status().await?;
        if let Some(m) = status.members.iter().find(|m| m.id == rejoined.node_id) {
            ensure!(!m.voter, "it rejoins as a learner: {:?}", status.members);
            break;
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(10),
            "the rejoined replica {} is not a member: {status:?}",
            rejoined.node_id
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let vols = c.list_volumes().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(
        vols.iter().any(|v| v.name == "vol"),
        "the namespace survived"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pod_spec_forms_one_cluster_and_readiness_follows_the_quorum() {
    let _serial = cairn_jepsen::serial().await;
    let mut set = StatefulSet::new().expect("a temporary directory and ports");
    if let Err(e) = body(&mut set).await {
        panic!("{e:#}\n{}", set.logs());
    }
}
