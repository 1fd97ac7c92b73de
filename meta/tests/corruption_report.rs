//! `ReportCorruption` through the real gRPC service of an in-process meta:
//! a registered chunkserver's report is validated, remembered by the
//! leader (merged per replica) and counted on `/metrics`; reports naming an
//! unknown chunkserver or a target it does not own are refused.

use std::time::{Duration, Instant};

use cairn_meta::MetaConfig;
use cairn_proto::ids::{ChunkId, ChunkserverId, ObjectId, TargetId};
use cairn_proto::meta::meta_client::MetaClient;
use cairn_proto::meta::{self as pb};
use cairn_proto::{CairnStatus, ErrorCode};
use tokio::sync::watch;
use tonic::transport::Channel;

async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Returns the value of an unlabelled sample `name` on a metrics page.
fn sample(page: &str, name: &str) -> Option<u64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

async fn leader_client(addr: &str) -> MetaClient<Channel> {
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
    let cfg = MetaConfig {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        bootstrap: true,
        replicas: 1,
        raft_heartbeat: Duration::from_millis(50),
        election_timeout: Duration::from_millis(300),
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
    let mut c = leader_client(&h.addr.to_string()).await;
    // The leader resets its soft state once when it takes office; report
    // after that, or the reports could be wiped.
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.shared.liveness().leader_since.is_none() {
        assert!(Instant::now() < deadline, "leader never took office");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let reg = c
        .register_chunkserver(pb::RegisterChunkserverRequest {
            host: "127.0.0.1".into(),
            shard_ports: vec![9100],
            targets: vec![pb::TargetInfo {
                uuid: "target-1".into(),
                capacity_bytes: 100 << 30,
                used_bytes: 0,
            }],
            zone: String::new(),
            node_uuid: "cs-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let (cs, target) = (reg.chunkserver_id, reg.target_ids[0]);
    let metrics = h.metrics_addr.unwrap();
    assert_eq!(
        sample(
            &scrape(metrics).await,
            "cairn_meta_corruption_reports_total"
        ),
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
    let r = &known[0];
    assert_eq!(
        (r.chunkserver, r.target, r.chunk),
        (
            ChunkserverId(cs),
            TargetId(target),
            ChunkId {
                object: ObjectId(42),
                index: 3
            }
        )
    );
    assert_eq!(r.bad_blocks, vec![2, 7, 9]);
    assert_eq!(r.reports, 2);
    assert_eq!(h.shared.corruption_reports_total(), 2);

    let page = scrape(metrics).await;
    assert!(page.contains("# TYPE cairn_meta_corruption_reports_total counter"));
    assert_eq!(
        sample(&page, "cairn_meta_corruption_reports_total"),
        Some(2)
    );
    assert_eq!(sample(&page, "cairn_meta_corrupt_replicas"), Some(1));

    stop.send_replace(true);
    h.wait().await.unwrap();
}
