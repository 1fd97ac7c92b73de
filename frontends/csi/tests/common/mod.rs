//! What the CSI tests share: a client channel over the plugin's unix
//! socket and the requests every test makes.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cairn_csi::pb::volume_capability::access_mode::Mode;
use cairn_csi::pb::volume_capability::{AccessMode, AccessType, MountVolume};
use cairn_csi::pb::{self, VolumeCapability};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// A channel to the plugin serving on `socket`, once it does (20 s);
/// `log` tells what the plugin printed when it never does.
pub async fn connect(socket: &Path, log: impl Fn() -> String) -> Result<Channel> {
    let t0 = Instant::now();
    loop {
        let path = socket.to_path_buf();
        let ch = Endpoint::try_from("http://csi.invalid")?
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await;
        match ch {
            Ok(ch) => return Ok(ch),
            Err(e) if t0.elapsed() > Duration::from_secs(20) => {
                anyhow::bail!("cairn-csi socket: {e}\n{}", log())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub fn mount_cap(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

pub fn class() -> HashMap<String, String> {
    [
        ("type", "ssd"),
        ("replication", "3"),
        ("cache", "true"),
        ("prefetch", "true"),
        ("compression", "false"),
        ("encryption", "false"),
        ("csi.storage.k8s.io/pvc/name", "data"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

pub fn create_req(
    name: &str,
    bytes: i64,
    params: HashMap<String, String>,
) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(pb::CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_cap(Mode::MultiNodeMultiWriter)],
        parameters: params,
        ..Default::default()
    }
}

pub async fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) -> Result<()> {
    let t0 = Instant::now();
    while !ok() {
        ensure!(t0.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

pub fn record_pid(state: &Path, volume: &str) -> Result<u32> {
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(
        state.join("volumes").join(format!("{volume}.json")),
    )?)?;
    r["pid"]
        .as_u64()
        .map(|p| p as u32)
        .context("pid in the record")
}

/// NodeStage of volume `id` at `staging` for a multi-node writer, with the
/// volume context CreateVolume gave.
pub fn stage_req(
    id: &str,
    staging: &str,
    context: &HashMap<String, String>,
) -> pb::NodeStageVolumeRequest {
    pb::NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.into(),
        volume_capability: Some(mount_cap(Mode::MultiNodeMultiWriter)),
        volume_context: context.clone(),
        ..Default::default()
    }
}

/// The usage figures of `unit` in NodeGetVolumeStats' answer.
pub fn usage(
    stats: &pb::NodeGetVolumeStatsResponse,
    unit: pb::volume_usage::Unit,
) -> Result<&pb::VolumeUsage> {
    stats
        .usage
        .iter()
        .find(|u| u.unit == unit as i32)
        .with_context(|| format!("{unit:?} usage in {stats:?}"))
}
