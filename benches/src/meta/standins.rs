//! Stand-in chunkservers for `cairn-bench meta --targets N`: registered with
//! meta and kept alive by heartbeats, with no data plane, so that meta
//! builds the chain tables of a cluster of that size (one chain per
//! target, `meta::placement`) and every create picks its layout from them,
//! as on a real cluster. Their data-plane address (port 9 on loopback)
//! serves nothing: the `meta` workload's files never hold data, so no
//! client and no garbage collection ever sends them a request.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use cairn_proto::meta as pb;
use cairn_proto::meta::meta_client::MetaClient;

/// Targets per stand-in chunkserver (a server with 8 SSDs).
pub const TARGETS_PER_SERVER: usize = 8;

/// The registered stand-ins, heartbeating until dropped.
pub struct Standins {
    /// Targets registered.
    pub targets: usize,
    /// Chunkservers registered.
    pub servers: usize,
    heartbeats: tokio::task::JoinHandle<()>,
}

impl Drop for Standins {
    fn drop(&mut self) {
        self.heartbeats.abort();
    }
}

/// Opens a gRPC client to the replica of `addrs` that leads, trying each.
async fn leader(addrs: &[String]) -> Result<MetaClient<tonic::transport::Channel>> {
    let mut last = String::new();
    for _ in 0..50 {
        for a in addrs {
            let mut c = match MetaClient::connect(format!("http://{a}")).await {
                Ok(c) => c,
                Err(e) => {
                    last = format!("{a}: {e}");
                    continue;
                }
            };
            // Only the leader accepts a registration.
            match c.status(pb::Empty {}).await {
                Ok(s) if s.get_ref().state == "Leader" => return Ok(c),
                Ok(_) => last = format!("{a}: not the leader"),
                Err(e) => last = format!("{a}: {}", e.message()),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no meta replica leads (last: {last})")
}

/// Registers `targets` targets on `ceil(targets / 8)` stand-in
/// chunkservers (at least the 3 a 3-replica table needs) and heartbeats
/// them every interval meta asks for.
///
/// # Errors
/// No replica leads, or meta refuses a registration.
pub async fn register(addrs: &[String], targets: usize) -> Result<Standins> {
    let servers = targets.div_ceil(TARGETS_PER_SERVER).max(3);
    let mut c = leader(addrs).await?;
    let mut registered = Vec::with_capacity(servers);
    let mut interval = Duration::from_secs(1);
    for s in 0..servers {
        // Spread the targets as evenly as 8 per server allows.
        let n = targets / servers + usize::from(s < targets % servers);
        let infos: Vec<pb::TargetInfo> = (0..n.max(1))
            .map(|t| pb::TargetInfo {
                uuid: format!("bench-standin-{s}-target-{t}"),
                capacity_bytes: 4 << 40,
                used_bytes: 0,
            })
            .collect();
        let reply = c
            .register_chunkserver(pb::RegisterChunkserverRequest {
                host: "127.0.0.1".into(),
                shard_ports: vec![9],
                targets: infos.clone(),
                zone: String::new(),
                node_uuid: format!("bench-standin-{s}"),
            })
            .await
            .with_context(|| format!("registering stand-in chunkserver {s}"))?
            .into_inner();
        interval = Duration::from_millis(reply.heartbeat_interval_ms.max(100));
        registered.push((reply.chunkserver_id, infos));
    }
    let total = registered.iter().map(|(_, t)| t.len()).sum();
    let heartbeats = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            let mut failed = 0;
            let mut first = None;
            for (id, infos) in &registered {
                let r = c
                    .chunkserver_heartbeat(pb::ChunkserverHeartbeatRequest {
                        chunkserver_id: *id,
                        targets: infos.clone(),
                        ..Default::default()
                    })
                    .await;
                if let Err(e) = r {
                    failed += 1;
                    first.get_or_insert_with(|| format!("chunkserver {id}: {}", e.message()));
                }
            }
            // One line per round, not one per stand-in (a leader change
            // fails them all).
            if let Some(first) = first {
                eprintln!(
                    "meta: {failed} of {} stand-in heartbeats failed ({first})",
                    registered.len()
                );
            }
        }
    });
    Ok(Standins {
        targets: total,
        servers,
        heartbeats,
    })
}
