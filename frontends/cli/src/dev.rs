//! `cairn dev`: a 3-replica meta cluster in this process, for a laptop.
//!
//! It calls `cairn_meta::start` three times (replica 1 bootstraps, 2 and 3
//! join it), on 127.0.0.1 ports `--port`, `--port`+1, `--port`+2 (`--port
//! 0` picks free ones), with data under `DIR/meta1..3`, so a second run
//! finds the same cluster again. Timeouts are short (100 ms heartbeat,
//! 500 ms election) so the cluster is usable within the 5 s budget of
//! DESIGN §10. It waits until a leader and three voters show in the
//! leader's status, prints how to use the cluster, and on SIGINT/SIGTERM
//! stops all three replicas through their shutdown futures, waits for them
//! and exits 0. A second signal while stopping exits at once.
//!
//! Then it starts three chunkservers in the same process
//! (`cairn_chunkserver::node::start`: one glommio executor each, data under
//! `DIR/cs1..3`, data-plane ports `--port`+10..12), waits until meta's
//! 3-replica chain table shows all three serving, and stops them before
//! the meta replicas on exit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use cairn_chunkserver::node::{self, Chunkserver, ChunkserverConfig};
use cairn_client::{MetaClient, MetaClientOptions};
use cairn_meta::{MetaConfig, MetaHandle};
use cairn_proto::meta as pb;
use cairn_proto::meta::meta_client::MetaClient as MetaGrpc;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::watch;

use crate::signal::Signals;

/// How long the cluster may take to show a leader and three voters.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// How long the replicas may take to stop.
const STOP_WITHIN: Duration = Duration::from_secs(30);
/// Replicas in the dev cluster.
const REPLICAS: usize = 3;
/// Chunkservers in the dev cluster.
const CHUNKSERVERS: usize = 3;
/// Chunkserver `i` (0-based) listens on `--port + CS_PORT_OFFSET + i`.
const CS_PORT_OFFSET: u16 = 10;

/// Flags of `cairn dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Directory for the replicas' data (DIR/meta1, DIR/meta2, DIR/meta3).
    #[arg(long, default_value = "./cairn-dev")]
    pub dir: PathBuf,
    /// Port of replica 1; replicas 2 and 3 use the next two. 0 picks free
    /// ports.
    #[arg(long, default_value_t = 7001)]
    pub port: u16,
    /// Also mount the cluster on this directory with FUSE (unmounted on
    /// exit), as `cairn mount` would.
    #[arg(long, value_name = "DIR")]
    pub mount: Option<PathBuf>,
}

/// Mounts the dev cluster on `dir` with `cairn mount`'s defaults.
async fn mount_dev(
    addrs: &[String],
    dir: &Path,
) -> anyhow::Result<(cairn_fuse::Mounted, cairn_client::Client)> {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Defaults {
        #[command(flatten)]
        m: crate::mount::MountArgs,
    }
    let args = Defaults::parse_from([std::ffi::OsStr::new("dev"), dir.as_os_str()]).m;
    let client = crate::mount::connect(&addrs.join(","), &args).await?;
    let m = crate::mount::mount(client.clone(), &args).await?;
    Ok((m, client))
}

/// Returns the configuration of replica `i` (1-based).
#[allow(
    clippy::needless_update,
    reason = "MetaConfig grows; new fields keep their defaults"
)]
fn replica_config(dir: &Path, i: usize, port: u16, join: Option<&str>) -> MetaConfig {
    MetaConfig {
        data_dir: dir.join(format!("meta{i}")),
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        advertise: None,
        bootstrap: join.is_none(),
        join: join.map(|a| vec![a.to_string()]).unwrap_or_default(),
        replicas: REPLICAS,
        raft_heartbeat: Duration::from_millis(100),
        election_timeout: Duration::from_millis(500),
        chunkserver_timeout: Duration::from_secs(5),
        session_timeout: Duration::from_secs(30),
        snapshot_every: 1000,
        cache_bytes: 16 << 20,
        ..MetaConfig::default()
    }
}

/// Returns the three ports to listen on.
fn ports(first: u16) -> anyhow::Result<Vec<u16>> {
    if first == 0 {
        // Meta listens on a free port and advertises the port it got.
        return Ok(vec![0; REPLICAS]);
    }
    (0..REPLICAS as u16)
        .map(|i| {
            first
                .checked_add(i)
                .ok_or_else(|| anyhow!("--port {first} leaves no room for {REPLICAS} replicas"))
        })
        .collect()
}

/// Resolves when `stop` turns true (or its sender is gone).
async fn on_stop(mut stop: watch::Receiver<bool>) {
    // Err: the sender was dropped, which also means stop.
    let _ = stop.wait_for(|s| *s).await;
}

/// Starts the replicas one after the other (each joins the first), pushing
/// each handle to `nodes` as soon as it exists so the caller can stop it.
async fn start_all(
    dir: &Path,
    ports: &[u16],
    stop: &watch::Receiver<bool>,
    nodes: &mut Vec<MetaHandle>,
) -> anyhow::Result<Vec<String>> {
    let mut addrs: Vec<String> = Vec::new();
    for (n, port) in ports.iter().enumerate() {
        let i = n + 1;
        let cfg = replica_config(dir, i, *port, addrs.first().map(String::as_str));
        cfg.validate()
            .map_err(|e| anyhow!("replica {i} configuration: {e}"))?;
        std::fs::create_dir_all(&cfg.data_dir)
            .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
        let h = cairn_meta::start(cfg, on_stop(stop.clone()))
            .await
            .map_err(|e| anyhow!("starting meta replica {i} on 127.0.0.1:{port}: {e}"))?;
        addrs.push(h.addr.to_string());
        nodes.push(h);
    }
    Ok(addrs)
}

/// Waits until the leader's status shows a leader and every replica as a
/// voter; returns that status.
async fn wait_ready(addrs: &[String]) -> anyhow::Result<cairn_proto::meta::StatusReply> {
    let opts = MetaClientOptions {
        deadline: Duration::from_secs(2),
        request_timeout: Duration::from_secs(1),
        ..MetaClientOptions::default()
    };
    let client = MetaClient::connect(addrs, opts)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let t0 = Instant::now();
    loop {
        let last = match client.leader_status().await {
            Ok(s) => {
                let voters = s.members.iter().filter(|m| m.voter).count();
                if s.leader_id != 0 && voters >= REPLICAS {
                    return Ok(s);
                }
                format!("leader {}, {voters} voters", s.leader_id)
            }
            Err(e) => e.to_string(),
        };
        if t0.elapsed() > READY_WITHIN {
            bail!("the dev cluster was not ready within {READY_WITHIN:?} (last status: {last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts the chunkservers (each formats its directory on first start).
async fn start_chunkservers(
    dir: &Path,
    port: u16,
    meta: &[String],
    out: &mut Vec<Chunkserver>,
) -> anyhow::Result<()> {
    for i in 0..CHUNKSERVERS {
        let port_base = if port == 0 {
            0
        } else {
            port.checked_add(CS_PORT_OFFSET + i as u16)
                .ok_or_else(|| anyhow!("--port {port} leaves no room for the chunkservers"))?
        };
        let cfg = ChunkserverConfig {
            meta: meta.to_vec(),
            data_dir: dir.join(format!("cs{}", i + 1)),
            port_base,
            shards: 1,
            // A laptop's disk is shared with everything else: cap each.
            capacity_bytes: Some(8 << 30),
            ..ChunkserverConfig::default()
        };
        let cs = tokio::task::spawn_blocking(move || node::start(cfg))
            .await
            .map_err(|e| anyhow!("chunkserver {}: {e}", i + 1))?
            .map_err(|e| anyhow!("starting chunkserver {}: {e}", i + 1))?;
        out.push(cs);
    }
    Ok(())
}

/// Waits until meta's 3-replica chain table has every member serving.
async fn wait_chains(meta: &[String]) -> anyhow::Result<usize> {
    let t0 = Instant::now();
    loop {
        let mut last = String::from("no answer");
        for addr in meta {
            let Ok(mut c) = MetaGrpc::connect(format!("http://{addr}")).await else {
                continue;
            };
            match c.get_chains(pb::Empty {}).await {
                Ok(t) => {
                    let t = t.into_inner();
                    let full = t
                        .tables
                        .iter()
                        .find(|tb| tb.replication as usize == CHUNKSERVERS);
                    if let Some(tb) = full
                        && cairn_proto::chain::fully_serving(&t, CHUNKSERVERS)
                    {
                        return Ok(tb.chains.len());
                    }
                    last = format!("{} chunkservers registered", t.chunkservers.len());
                    break;
                }
                Err(e) => last = e.to_string(),
            }
        }
        if t0.elapsed() > READY_WITHIN {
            bail!("the chunkservers did not join their chains within {READY_WITHIN:?} ({last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn print_usage(
    addrs: &[String],
    cs: &[Chunkserver],
    dir: &Path,
    s: &cairn_proto::meta::StatusReply,
    took: Duration,
) {
    let meta = addrs.join(",");
    println!(
        "cairn dev: {REPLICAS} meta replicas and {CHUNKSERVERS} chunkservers ready in {:.1}s (leader: node {} at {}, term {})",
        took.as_secs_f64(),
        s.leader_id,
        s.leader_addr,
        s.term
    );
    println!(
        "  data:    {}/meta{{1,2,3}} {}/cs{{1,2,3}}",
        dir.display(),
        dir.display()
    );
    println!("  --meta:  {meta}");
    let shards: Vec<String> = cs
        .iter()
        .flat_map(|c| c.shard_addrs.iter().map(ToString::to_string))
        .collect();
    println!("  chunkservers (data plane): {}", shards.join(" "));
    println!();
    println!("In another shell:");
    println!("  export CAIRN_META={meta}");
    println!("  cairn meta status");
    println!("  cairn volume create demo");
    println!("  cairn mkdir -p /demo/datasets/train");
    println!("  cairn ls -l /demo");
    println!("  cairn put ./my-dataset /demo/datasets/train      # upload a tree, in parallel");
    println!("  cairn get /demo/datasets/train ./copy            # download it again");
    println!("  cairn cat /demo/datasets/train/README.md");
    println!("  cairn checkpoint save /demo/ckpt step-100 model.pt --metric loss=0.42");
    println!("  cairn checkpoint list /demo/ckpt");
    println!("  cairn checkpoint load /demo/ckpt -o latest.pt      # the newest, verified");
    println!("Programs use the Rust library: cairn_client::Client::connect(CAIRN_META addresses).");
    println!();
    println!("Stop with Ctrl-C.");
}

/// Waits for every replica in `waits` to stop, up to [`STOP_WITHIN`]; a
/// signal meanwhile aborts the wait. Returns the failures.
async fn drain<F>(waits: &mut FuturesUnordered<F>, signals: &mut Signals) -> Vec<String>
where
    F: Future<Output = (u64, Result<(), String>)>,
{
    let mut errors = Vec::new();
    let all = async {
        while let Some((id, r)) = waits.next().await {
            if let Err(e) = r {
                errors.push(format!("replica {id}: {e}"));
            }
        }
    };
    tokio::select! {
        () = all => {}
        sig = signals.recv() => return vec![format!("{sig} while stopping; exiting without waiting")],
        () = tokio::time::sleep(STOP_WITHIN) => {
            return vec![format!("replicas did not stop within {STOP_WITHIN:?}")];
        }
    }
    errors
}

/// Runs `cairn dev` until a signal; see the module docs.
///
/// # Errors
/// When a replica cannot start, the cluster is not ready in time, a replica
/// stops on its own, or the replicas do not stop cleanly.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut signals = Signals::new().context("installing signal handlers")?;
    let ports = ports(args.port)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut nodes = Vec::new();
    let mut chunkservers = Vec::new();

    let startup = async {
        let addrs = start_all(&args.dir, &ports, &stop_rx, &mut nodes).await?;
        let status = wait_ready(&addrs).await?;
        start_chunkservers(&args.dir, args.port, &addrs, &mut chunkservers).await?;
        wait_chains(&addrs).await?;
        Ok::<_, anyhow::Error>((addrs, status))
    };
    // Err(Some): start-up failed; Err(None): interrupted by a signal.
    let started: Result<_, Option<anyhow::Error>> = tokio::select! {
        r = startup => r.map_err(Some),
        sig = signals.recv() => {
            eprintln!("cairn dev: {sig} during start-up; stopping");
            Err(None)
        }
    };

    let mut waits: FuturesUnordered<_> = nodes
        .into_iter()
        .map(|h| {
            let id = h.node_id;
            async move { (id, h.wait().await.map_err(|e| e.to_string())) }
        })
        .collect();

    let mut failure: Option<anyhow::Error> = None;
    let mut mounted = None;
    let started_ok = started.is_ok();
    match started {
        Ok((addrs, status)) => {
            print_usage(&addrs, &chunkservers, &args.dir, &status, t0.elapsed());
            if let Some(dir) = &args.mount {
                match mount_dev(&addrs, dir).await {
                    Ok(m) => {
                        println!(
                            "  mounted: {} (FUSE; unmounted when this stops)",
                            dir.display()
                        );
                        mounted = Some(m);
                    }
                    Err(e) => failure = Some(e),
                }
            }
        }
        Err(e) => failure = e,
    }
    if failure.is_none() && started_ok {
        tokio::select! {
            sig = signals.recv() => eprintln!("cairn dev: {sig}; stopping the replicas"),
            Some((id, r)) = waits.next() => {
                failure = Some(match r {
                    Ok(()) => anyhow!("meta replica {id} stopped on its own"),
                    Err(e) => anyhow!("meta replica {id} failed: {e}"),
                });
            }
        }
    }
    if let Some((m, client)) = mounted.take() {
        crate::mount::unmount(m, "cairn dev").await;
        crate::data::close(&client).await;
    }

    // Chunkservers first: they flush their stores and stop heartbeating.
    let css = std::mem::take(&mut chunkservers);
    let _ = tokio::task::spawn_blocking(move || css.into_iter().for_each(Chunkserver::stop)).await;
    stop_tx.send_replace(true);
    let errors = drain(&mut waits, &mut signals).await;
    for e in &errors {
        eprintln!("cairn dev: {e}");
    }
    if let Some(f) = failure {
        return Err(f);
    }
    if !errors.is_empty() {
        bail!("the dev cluster did not stop cleanly");
    }
    eprintln!("cairn dev: stopped");
    Ok(())
}
