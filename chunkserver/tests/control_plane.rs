//! The chunkserver control plane against a real meta replica: it
//! registers (keeping its ids across a re-registration), heartbeats extend
//! its serving lease, chain-table changes reach it through the watch
//! stream, and when meta becomes unreachable the lease runs out after half
//! the heartbeat timeout — before meta would declare it dead (invariant 8).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_chunkserver::control::{self, ControlState, Registration, UsageSource};
use cairn_proto::meta as pb;
use cairn_proto::meta::meta_client::MetaClient;
use tokio::sync::watch;

const CS_TIMEOUT: Duration = Duration::from_millis(1200);

struct FixedUsage;

impl UsageSource for FixedUsage {
    fn usage(&self) -> Vec<(String, u64, u64)> {
        vec![("cs-target-0".into(), 10 << 30, 1 << 20)]
    }
}

async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

fn registration(n: u32) -> pb::RegisterChunkserverRequest {
    pb::RegisterChunkserverRequest {
        host: "127.0.0.1".into(),
        shard_ports: vec![9300 + n],
        targets: vec![pb::TargetInfo {
            uuid: format!("other-target-{n}"),
            capacity_bytes: 1 << 30,
            used_bytes: 0,
        }],
        zone: String::new(),
        node_uuid: format!("other-{n}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_heartbeats_watches_and_loses_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, meta_stop) = common::start_meta(dir.path(), CS_TIMEOUT, None).await;
    let meta_addr = meta.addr.to_string();

    let state = Arc::new(ControlState::default());
    assert!(!state.serving(), "no lease before registering");
    let (stop, stop_rx) = watch::channel(false);
    let reg = Registration {
        node_uuid: "cs-under-test".into(),
        host: "127.0.0.1".into(),
        shard_ports: vec![9400, 9401],
        zone: String::new(),
        targets: vec![("cs-target-0".into(), 10 << 30)],
    };
    let task = tokio::spawn(control::run(
        vec![meta_addr.clone()],
        reg,
        Arc::new(FixedUsage),
        state.clone(),
        Arc::new(cairn_chunkserver::metrics::Metrics::default()),
        stop_rx,
    ));

    wait_for("registration", Duration::from_secs(10), || {
        state.chunkserver_id() != 0 && state.serving()
    })
    .await;
    let my_target = state.target_ids()[0];

    // Two more chunkservers join: the 3-replica table appears and reaches
    // the control plane through the watch stream.
    let mut c = MetaClient::connect(format!("http://{meta_addr}"))
        .await
        .unwrap();
    for n in 1..=2 {
        c.register_chunkserver(registration(n)).await.unwrap();
    }
    wait_for("the 3-way chain table", Duration::from_secs(5), || {
        let v = state.view();
        (1..=20).any(|id| {
            v.chain(id).is_some_and(|ch| {
                ch.members.len() == 3 && ch.members.iter().any(|m| m.target == my_target)
            })
        })
    })
    .await;
    let v = state.view();
    let chunk = cairn_proto::ids::ChunkId {
        object: cairn_proto::ids::ObjectId(7),
        index: 3,
    };
    let addr = v.shard_addr(state.chunkserver_id(), chunk).unwrap();
    assert!(
        addr == "127.0.0.1:9400" || addr == "127.0.0.1:9401",
        "{addr}"
    );

    // Heartbeats keep the lease alive well past one timeout...
    tokio::time::sleep(CS_TIMEOUT * 2).await;
    assert!(state.serving(), "lease lapsed while meta was reachable");
    // ...and meta still sees this chunkserver alive (its targets serving).
    let tables = c.get_chains(pb::Empty {}).await.unwrap().into_inner();
    let me = tables
        .chunkservers
        .iter()
        .find(|s| s.id == state.chunkserver_id())
        .unwrap();
    assert!(me.alive);
    assert_eq!(me.used_bytes, 1 << 20, "usage arrives with heartbeats");

    // Meta goes away: the lease ends after about half the timeout.
    meta_stop.send_replace(true);
    meta.wait().await.unwrap();
    let lapsed = wait_for("the lease to lapse", CS_TIMEOUT * 3, || !state.serving()).await;
    assert!(
        lapsed <= CS_TIMEOUT,
        "stopped serving only after {lapsed:?}; meta declares death after {CS_TIMEOUT:?}"
    );

    stop.send_replace(true);
    task.await.unwrap();
}
