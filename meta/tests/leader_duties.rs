//! The leader's duties through the real gRPC service: chunkserver
//! registration builds chain tables, the chain-table watch stream delivers
//! changes, a silent chunkserver's targets go offline after the timeout
//! (and not before a new leader has waited one full timeout), and a session
//! that stops renewing expires and releases what it held open; corrupt
//! replica reports are validated, remembered (merged per replica) and
//! counted on `/metrics`.

use std::time::{Duration, Instant};

use cairn_meta::MetaConfig;
use cairn_proto::ids::{ChunkId, ChunkserverId, ObjectId, TargetId};
use cairn_proto::meta::meta_client::MetaClient;
use cairn_proto::meta::{self as pb, TargetState};
use cairn_proto::{CairnStatus, ErrorCode};
use tokio::sync::watch;
use tonic::transport::Channel;

const CS_TIMEOUT: Duration = Duration::from_millis(1500);
const SESSION_TIMEOUT: Duration = Duration::from_millis(1500);

struct Replica {
    stop: watch::Sender<bool>,
    handle: Option<cairn_meta::MetaHandle>,
    addr: String,
}

/// Fetches the replica's Prometheus page.
async fn scrape(r: &Replica) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = r.handle.as_ref().unwrap().metrics_addr.unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

async fn start(dir: &std::path::Path, listen: &str) -> Replica {
    let cfg = MetaConfig {
        data_dir: dir.to_path_buf(),
        listen: listen.parse().unwrap(),
        bootstrap: true,
        replicas: 1,
        raft_heartbeat: Duration::from_millis(50),
        election_timeout: Duration::from_millis(300),
        chunkserver_timeout: CS_TIMEOUT,
        session_timeout: SESSION_TIMEOUT,
        snapshot_every: 1000,
        cache_bytes: 8 << 20,
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..MetaConfig::default()
    };
    let (stop, rx) = watch::channel(false);
    let mut rx2 = rx.clone();
    let h = cairn_meta::start(cfg, async move {
        let _ = rx2.wait_for(|s| *s).await;
    })
    .await
    .unwrap();
    Replica {
        stop,
        addr: h.addr.to_string(),
        handle: Some(h),
    }
}

impl Replica {
    async fn stop(mut self) {
        self.stop.send_replace(true);
        self.handle.take().unwrap().wait().await.unwrap();
    }
}

async fn client(addr: &str) -> MetaClient<Channel> {
    // The replica may still be electing itself: retry until it leads.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = MetaClient::connect(format!("http://{addr}")).await
            && let Ok(s) = c.status(pb::Empty {}).await
            && s.get_ref().leader_id == s.get_ref().node_id
            && c.list_volumes(pb::Empty {}).await.is_ok()
        {
            return c;
        }
        assert!(Instant::now() < deadline, "no leader at {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn register_req(n: u32) -> pb::RegisterChunkserverRequest {
    pb::RegisterChunkserverRequest {
        host: "127.0.0.1".into(),
        shard_ports: vec![9100 + n, 9200 + n],
        targets: vec![pb::TargetInfo {
            uuid: format!("target-{n}"),
            capacity_bytes: 100 << 30,
            used_bytes: 0,
        }],
        zone: String::new(),
        node_uuid: format!("cs-{n}"),
    }
}

fn states_of(t: &pb::ChainTables, target: u64) -> Vec<i32> {
    t.tables
        .iter()
        .flat_map(|tb| tb.chains.iter())
        .flat_map(|c| c.targets.iter())
        .filter(|m| m.target_id == target)
        .map(|m| m.state)
        .collect()
}

async fn heartbeat(c: &mut MetaClient<Channel>, id: u64) {
    c.chunkserver_heartbeat(pb::ChunkserverHeartbeatRequest {
        chunkserver_id: id,
        targets: vec![],
        chain_table_version: 0,
        ..Default::default()
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_chunkserver_goes_offline_and_watchers_see_it() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(dir.path(), "127.0.0.1:0").await;
    let mut c = client(&r.addr).await;

    let mut ids = Vec::new();
    for n in 1..=3 {
        let reply = c.register_chunkserver(register_req(n)).await.unwrap();
        ids.push((
            reply.get_ref().chunkserver_id,
            reply.get_ref().target_ids[0],
        ));
    }
    // Registering the same chunkserver again keeps its ids.
    let again = c.register_chunkserver(register_req(1)).await.unwrap();
    assert_eq!(again.get_ref().chunkserver_id, ids[0].0);
    assert_eq!(again.get_ref().target_ids[0], ids[0].1);
    // A target claimed by another chunkserver is refused.
    let mut stolen = register_req(9);
    stolen.targets[0].uuid = "target-2".into();
    let err = CairnStatus::from(c.register_chunkserver(stolen).await.unwrap_err());
    assert_eq!(err.code, ErrorCode::Exists);

    let tables = c.get_chains(pb::Empty {}).await.unwrap().into_inner();
    let r3 = tables.tables.iter().find(|t| t.replication == 3).unwrap();
    assert_eq!(r3.chains.len(), 3, "one chain per target");
    for chain in &r3.chains {
        let mut servers: Vec<u64> = chain.targets.iter().map(|t| t.chunkserver_id).collect();
        servers.sort();
        servers.dedup();
        assert_eq!(servers.len(), 3, "members on distinct chunkservers");
    }
    assert_eq!(tables.chunkservers.len(), 3);
    assert_eq!(tables.chunkservers[0].shard_ports.len(), 2);

    let mut stream = c
        .watch_chains(pb::WatchChainsRequest { known_version: 0 })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.version, tables.version);

    // Chunkservers 1 and 2 heartbeat; 3 stays silent.
    let silent_target = ids[2].1;
    let started = Instant::now();
    let mut changed = None;
    while started.elapsed() < CS_TIMEOUT * 4 {
        heartbeat(&mut c, ids[0].0).await;
        heartbeat(&mut c, ids[1].0).await;
        if let Ok(Some(Some(t))) =
            tokio::time::timeout(Duration::from_millis(200), stream.message())
                .await
                .map(|m| m.ok())
        {
            changed = Some((started.elapsed(), t));
            break;
        }
    }
    let (after, update) = changed.expect("the watch stream delivered no change");
    assert!(update.version > first.version);
    assert!(
        after >= CS_TIMEOUT.mul_f32(0.8),
        "declared dead after {after:?}, before the {CS_TIMEOUT:?} timeout"
    );
    let states = states_of(&update, silent_target);
    // Single-replica chains keep their only target serving (meta never
    // removes a chain's last serving target); every other chain marks it.
    let offline = states
        .iter()
        .filter(|s| **s == TargetState::Offline as i32)
        .count();
    assert_eq!(
        offline,
        states.len() - 1,
        "states of the silent target: {states:?}"
    );
    for (_, t) in &ids[..2] {
        assert!(
            states_of(&update, *t)
                .iter()
                .all(|s| *s == TargetState::Serving as i32)
        );
    }
    drop(stream);
    let page = scrape(&r).await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("\ncairn_meta_raft_is_leader 1\n"), "{page}");
    assert!(page.contains("\ncairn_meta_chunkservers 3\n"), "{page}");
    // The silent target's chains are short of a serving member.
    let under: u64 = page
        .lines()
        .find_map(|l| l.strip_prefix("cairn_meta_chains_under_replicated "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no under-replicated gauge: {page}"));
    assert_eq!(under as usize, offline, "{page}");
    assert!(
        page.contains("cairn_meta_repair_bytes_per_second 0"),
        "the repair rate gauge (nothing to repair yet): {page}"
    );
    assert!(
        page.contains("cairn_meta_rpc_duration_seconds_count{method=\"ChunkserverHeartbeat\"}"),
        "{page}"
    );
    assert!(
        page.contains("cairn_meta_rpc_errors_total{method=\"RegisterChunkserver\"} 1"),
        "{page}"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_leader_waits_a_full_timeout_before_declaring_death() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(dir.path(), "127.0.0.1:0").await;
    let addr = r.addr.clone();
    let mut c = client(&addr).await;
    for n in 1..=3 {
        c.register_chunkserver(register_req(n)).await.unwrap();
    }
    let before = c
        .get_chains(pb::Empty {})
        .await
        .unwrap()
        .into_inner()
        .version;
    // Restart: a new leader, and nobody heartbeats any more.
    r.stop().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = start(dir.path(), &addr).await;
    let mut c = client(&addr).await;
    let elected = Instant::now();
    tokio::time::sleep(CS_TIMEOUT.mul_f32(0.6)).await;
    let v = c
        .get_chains(pb::Empty {})
        .await
        .unwrap()
        .into_inner()
        .version;
    assert_eq!(
        v, before,
        "a new leader declared chunkservers dead too early"
    );
    // After the timeout they are declared dead.
    loop {
        let v = c
            .get_chains(pb::Empty {})
            .await
            .unwrap()
            .into_inner()
            .version;
        if v > before {
            break;
        }
        assert!(
            elected.elapsed() < CS_TIMEOUT * 4,
            "silent chunkservers never declared dead"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrenewed_session_expires_and_releases_held_files() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(dir.path(), "127.0.0.1:0").await;
    let mut c = client(&r.addr).await;
    let live = c
        .open_session(pb::OpenSessionRequest {
            client_name: "renewing".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let dead = c
        .open_session(pb::OpenSessionRequest {
            client_name: "silent".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let rid = |seq| {
        Some(pb::RequestId {
            client_id: dead,
            seq,
            ack_below: seq,
        })
    };
    let file = c
        .create(pb::CreateRequest {
            rid: rid(1),
            parent: 1,
            name: "held".into(),
            mode: 0o644,
            exclusive: true,
            open_for_write: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap();
    c.unlink(pb::UnlinkRequest {
        rid: rid(2),
        parent: 1,
        name: "held".into(),
        held_open: true,
    })
    .await
    .unwrap();
    // Unlinked but held open: still there.
    let a = c
        .get_attr(pb::GetAttrRequest {
            ino: file.ino,
            snapshot: None,
            lease_session: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap();
    assert_eq!(a.nlink, 0);

    let started = Instant::now();
    loop {
        c.renew_session(pb::SessionRequest { session_id: live })
            .await
            .unwrap();
        let gone = c
            .get_attr(pb::GetAttrRequest {
                ino: file.ino,
                snapshot: None,
                lease_session: 0,
            })
            .await
            .is_err();
        if gone {
            break;
        }
        assert!(
            started.elapsed() < SESSION_TIMEOUT * 4,
            "the silent session never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() >= SESSION_TIMEOUT.mul_f32(0.8));
    let err = c
        .renew_session(pb::SessionRequest { session_id: dead })
        .await
        .unwrap_err();
    assert_eq!(CairnStatus::from(err).code, ErrorCode::SessionExpired);
    // The renewed one lives on.
    c.renew_session(pb::SessionRequest { session_id: live })
        .await
        .unwrap();
    r.stop().await;
}

/// Returns the value of an unlabelled sample `name` on a metrics page.
fn sample(page: &str, name: &str) -> Option<u64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn report(cs: u64, target: u64, blocks: &[u32]) -> pb::ReportCorruptionRequest {
    pb::ReportCorruptionRequest {
        chunkserver_id: cs,
        target_id: target,
        object_id: 42,
        chunk_index: 3,
        bad_blocks: blocks.to_vec(),
        detail: "scrub".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_reports_are_validated_remembered_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let r = start(dir.path(), "127.0.0.1:0").await;
    let mut c = client(&r.addr).await;
    let h = r.handle.as_ref().unwrap();
    // The leader resets its soft state once when it takes office; report
    // after that, or the reports could be wiped.
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.shared.liveness().leader_since.is_none() {
        assert!(Instant::now() < deadline, "leader never took office");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let reg = c
        .register_chunkserver(register_req(1))
        .await
        .unwrap()
        .into_inner();
    let (cs, target) = (reg.chunkserver_id, reg.target_ids[0]);
    assert_eq!(
        sample(&scrape(&r).await, "cairn_meta_corruption_reports_total"),
        Some(0)
    );

    // Refused: unknown chunkserver, a target it does not own, no blocks.
    let err = c.report_corruption(report(cs + 100, target, &[1])).await;
    assert_eq!(
        CairnStatus::from(err.unwrap_err()).code,
        ErrorCode::NotFound
    );
    let err = c.report_corruption(report(cs, target + 100, &[1])).await;
    assert_eq!(
        CairnStatus::from(err.unwrap_err()).code,
        ErrorCode::NotFound
    );
    let err = c.report_corruption(report(cs, target, &[])).await;
    assert_eq!(
        CairnStatus::from(err.unwrap_err()).code,
        ErrorCode::BadRequest
    );
    assert!(h.shared.corrupt_replicas().is_empty());

    // Two reports of one replica: one entry, blocks merged, two counted.
    c.report_corruption(report(cs, target, &[7, 2]))
        .await
        .unwrap();
    c.report_corruption(report(cs, target, &[2, 9]))
        .await
        .unwrap();
    let known = h.shared.corrupt_replicas();
    assert_eq!(known.len(), 1);
    let entry = &known[0];
    assert_eq!(
        (entry.chunkserver, entry.target, entry.chunk),
        (
            ChunkserverId(cs),
            TargetId(target),
            ChunkId {
                object: ObjectId(42),
                index: 3
            }
        )
    );
    assert_eq!(entry.bad_blocks, vec![2, 7, 9]);
    assert_eq!(entry.reports, 2);
    assert_eq!(h.shared.corruption_reports_total(), 2);

    let page = scrape(&r).await;
    assert!(page.contains("# TYPE cairn_meta_corruption_reports_total counter"));
    assert_eq!(
        sample(&page, "cairn_meta_corruption_reports_total"),
        Some(2)
    );
    assert_eq!(sample(&page, "cairn_meta_corrupt_replicas"), Some(1));

    r.stop().await;
}
