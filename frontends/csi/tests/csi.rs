//! The CSI driver against a real cluster (meta and chunkserver processes)
//! over its unix socket, with real FUSE mounts: the required behaviours of
//! each RPC (idempotency, NOT_FOUND, ALREADY_EXISTS, INVALID_ARGUMENT,
//! capability checks), two "pods" sharing a ReadWriteMany volume with
//! close-to-open between them, snapshots, restores and clones, expansion
//! under a writer that hit EDQUOT, a plugin killed with SIGKILL in the
//! middle of a pod's read whose mounts keep serving and are adopted by the
//! next one, and a mount process that
//! dies and is taken over on the same FUSE connection (every pod pauses,
//! readers read on, writers get EIO), or, when the plugin died with it,
//! mounted again (a pod that takes the node's mounts serving again).
//!
//! Needs root and fusermount3/umount (mounts). Modelled on kubernetes-csi's
//! csi-sanity list; written in Rust over tonic.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cairn_csi::pb::controller_client::ControllerClient;
use cairn_csi::pb::identity_client::IdentityClient;
use cairn_csi::pb::node_client::NodeClient;
use cairn_csi::pb::volume_capability::access_mode::Mode;
use cairn_csi::pb::volume_capability::{AccessMode, AccessType, MountVolume};
use cairn_csi::pb::{self, VolumeCapability};
use cairn_jepsen::binary::binary;
use cairn_jepsen::data_cluster::{DataCluster, DataOpts};
use cairn_jepsen::fuse::is_mounted;
use prost::bytes::Bytes;
use tonic::Code;
use tonic::transport::Channel;

mod common;
use common::{class, create_req, mount_cap, record_pid, stage_req, usage, wait_for};

struct Plugin {
    node_id: String,
    child: Option<Child>,
    socket: PathBuf,
    state: PathBuf,
    log: PathBuf,
    meta: String,
    /// Where the plugin serves the node's metrics (`--metrics-listen`).
    metrics: String,
}

impl Plugin {
    fn start(dir: &Path, meta: &str, node_id: &str) -> Result<Plugin> {
        std::fs::create_dir_all(dir)?;
        let mut p = Plugin {
            node_id: node_id.to_string(),
            child: None,
            socket: dir.join("csi.sock"),
            state: dir.join("state"),
            log: dir.join("csi.log"),
            meta: meta.to_string(),
            metrics: format!("127.0.0.1:{}", free_port()?),
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(binary("cairn-csi"))
            .args(["--endpoint", &format!("unix://{}", self.socket.display())])
            .args(["--meta", &self.meta, "--node-id", &self.node_id])
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--cairn")
            .arg(binary("cairn"))
            .args(["--metrics-listen", &self.metrics])
            .env("CSI_NODE_ZONE", format!("zone-{}", self.node_id))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting cairn-csi")?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn channel(&self) -> Result<Channel> {
        common::connect(&self.socket, || self.log_text()).await
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.kill();
        // Leave no mount behind, whatever the test did.
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let root = self
            .state
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let mut points: Vec<String> = text
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(String::from))
            .filter(|p| !root.is_empty() && p.starts_with(&root))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").args(["-l", &p]).status();
        }
    }
}

/// A pod's container: a process in a mount namespace of its own, where a
/// pod path is bind-mounted at the container's path.
struct PodNs {
    child: Child,
    /// The container's path for the volume.
    at: tempfile::TempDir,
}

impl PodNs {
    /// Bind-mounts `target` at the container's path with `propagation`
    /// (`rslave`: HostToContainer, `rprivate`: None).
    fn start(target: &Path, propagation: &str) -> Result<PodNs> {
        let at = tempfile::tempdir()?;
        let script = format!(
            "mount --bind '{}' '{}' && mount --make-{propagation} '{}' && exec sleep 600",
            target.display(),
            at.path().display(),
            at.path().display()
        );
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "slave", "sh", "-c", &script])
            .spawn()
            .context("unshare")?;
        Ok(PodNs { child, at })
    }

    /// `rel` under the container's path, as read in the container, or
    /// what `cat` said.
    fn read(&self, rel: &Path) -> std::result::Result<Vec<u8>, String> {
        let out = Command::new("nsenter")
            .args([
                "--target",
                &self.child.id().to_string(),
                "--mount",
                "--",
                "cat",
            ])
            .arg(self.at.path().join(rel))
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for PodNs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The node's metrics page, once the plugin serves it.
async fn node_metrics(plugin: &Plugin) -> Result<String> {
    let t0 = Instant::now();
    loop {
        match cairn_jepsen::scrape::metrics_page(&plugin.metrics).await {
            Ok(page) => return Ok(page),
            Err(e) if t0.elapsed() > Duration::from_secs(20) => {
                return Err(e.context(plugin.log_text()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The sum of the samples on `page` whose line starts with `prefix`
/// (a metric name and the first of its labels), and how many there are.
fn samples(page: &str, prefix: &str) -> (f64, usize) {
    page.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold((0.0, 0), |(s, n), v| (s + v, n + 1))
}

fn code<T: std::fmt::Debug>(r: std::result::Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

async fn body(dir: &Path, cluster: &DataCluster) -> Result<()> {
    let meta = cluster.meta.addrs().join(",");
    let mut plugin = Plugin::start(dir, &meta, "node-a")?;
    let ch = plugin.channel().await?;
    let mut id = IdentityClient::new(ch.clone());
    let mut ctl = ControllerClient::new(ch.clone());
    let mut node = NodeClient::new(ch.clone());

    // Identity.
    let info = id
        .get_plugin_info(pb::GetPluginInfoRequest {})
        .await?
        .into_inner();
    ensure!(
        info.name == "csi.cairn.io" && !info.vendor_version.is_empty(),
        "{info:?}"
    );
    let probe = id.probe(pb::ProbeRequest {}).await?.into_inner();
    ensure!(probe.ready == Some(true), "probe: {probe:?}");
    let caps = ctl
        .controller_get_capabilities(pb::ControllerGetCapabilitiesRequest {})
        .await?
        .into_inner();
    ensure!(
        caps.capabilities.len() == 6,
        "create/delete, capacity, expansion, snapshots and clones: {caps:?}"
    );

    // CreateVolume: validation, idempotency, conflicts.
    let name = "pvc-0001";
    ensure!(
        code(ctl.create_volume(create_req("", 1 << 30, class())).await) == Code::InvalidArgument
    );
    let mut typo = class();
    typo.insert("replicas".into(), "3".into());
    let e = ctl
        .create_volume(create_req(name, 1 << 30, typo))
        .await
        .unwrap_err();
    ensure!(
        e.code() == Code::InvalidArgument && e.message().contains("replicas"),
        "{e:?}"
    );
    let mut block = create_req(name, 1 << 30, class());
    block.volume_capabilities = vec![VolumeCapability {
        access_type: Some(AccessType::Block(pb::volume_capability::BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }];
    ensure!(code(ctl.create_volume(block).await) == Code::InvalidArgument);
    let mut encrypted = class();
    encrypted.insert("encryption".into(), "true".into());
    let e = ctl
        .create_volume(create_req("pvc-enc", 1 << 30, encrypted))
        .await
        .unwrap_err();
    ensure!(
        e.code() == Code::InvalidArgument && e.message().contains("key"),
        "{e:?}"
    );

    // Topology: advertised; a volume is reachable from every zone the CO
    // requires, and a key no node reports is refused.
    let plugin_caps = id
        .get_plugin_capabilities(pb::GetPluginCapabilitiesRequest {})
        .await?
        .into_inner();
    ensure!(
        plugin_caps.capabilities.iter().any(|c| matches!(
            &c.r#type,
            Some(pb::plugin_capability::Type::Service(s))
                if s.r#type == pb::plugin_capability::service::Type::VolumeAccessibilityConstraints as i32
        )),
        "{plugin_caps:?}"
    );
    let zone = |z: &str| pb::Topology {
        segments: HashMap::from([("topology.kubernetes.io/zone".to_string(), z.to_string())]),
    };
    let mut zoned = create_req("pvc-zoned", 1 << 30, class());
    zoned.accessibility_requirements = Some(pb::TopologyRequirement {
        requisite: vec![zone("zone-a"), zone("zone-b")],
        preferred: vec![zone("zone-b")],
    });
    let got = ctl
        .create_volume(zoned.clone())
        .await?
        .into_inner()
        .volume
        .context("a volume")?;
    ensure!(
        got.accessible_topology == vec![zone("zone-a"), zone("zone-b")],
        "accessible from every requisite zone: {got:?}"
    );
    ctl.delete_volume(pb::DeleteVolumeRequest {
        volume_id: "pvc-zoned".into(),
        secrets: HashMap::new(),
    })
    .await?;
    zoned.accessibility_requirements = Some(pb::TopologyRequirement {
        requisite: vec![pb::Topology {
            segments: HashMap::from([("rack".to_string(), "r1".to_string())]),
        }],
        preferred: Vec::new(),
    });
    let e = ctl.create_volume(zoned).await.unwrap_err();
    ensure!(
        e.code() == Code::InvalidArgument && e.message().contains("rack"),
        "{e:?}"
    );

    let v = ctl
        .create_volume(create_req(name, 1 << 30, class()))
        .await?
        .into_inner();
    let vol = v.volume.context("a volume")?;
    ensure!(
        vol.accessible_topology.is_empty(),
        "no requirements, no constraint: {vol:?}"
    );
    ensure!(
        vol.volume_id == name && vol.capacity_bytes == 1 << 30,
        "{vol:?}"
    );
    ensure!(vol.volume_context.get("cache").map(String::as_str) == Some("true"));
    let again = ctl
        .create_volume(create_req(name, 1 << 30, class()))
        .await?
        .into_inner();
    ensure!(
        again.volume.context("a volume")?.volume_id == name,
        "idempotent"
    );
    ensure!(
        code(ctl.create_volume(create_req(name, 2 << 30, class())).await) == Code::AlreadyExists
    );
    let cap = ctl
        .get_capacity(pb::GetCapacityRequest {
            parameters: class(),
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(cap.available_capacity > 0, "{cap:?}");
    let ok = ctl
        .validate_volume_capabilities(pb::ValidateVolumeCapabilitiesRequest {
            volume_id: name.into(),
            volume_capabilities: vec![mount_cap(Mode::MultiNodeMultiWriter)],
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(ok.confirmed.is_some(), "{ok:?}");
    let mut typo = class();
    typo.insert("prefech".into(), "true".into());
    let not = ctl
        .validate_volume_capabilities(pb::ValidateVolumeCapabilitiesRequest {
            volume_id: name.into(),
            volume_capabilities: vec![mount_cap(Mode::MultiNodeMultiWriter)],
            parameters: typo,
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(
        not.confirmed.is_none() && not.message.contains("prefech"),
        "an unknown parameter is not confirmed: {not:?}"
    );
    ensure!(
        code(
            ctl.validate_volume_capabilities(pb::ValidateVolumeCapabilitiesRequest {
                volume_id: "pvc-none".into(),
                volume_capabilities: vec![mount_cap(Mode::MultiNodeMultiWriter)],
                ..Default::default()
            })
            .await
        ) == Code::NotFound
    );

    // Node: stage once, publish to two pods, write in one, read in the other.
    let info = node
        .node_get_info(pb::NodeGetInfoRequest {})
        .await?
        .into_inner();
    ensure!(info.node_id == "node-a");
    let zone = info.accessible_topology.context("node-a's topology")?;
    ensure!(
        zone.segments
            == HashMap::from([(
                "topology.kubernetes.io/zone".to_string(),
                "zone-node-a".to_string()
            )]),
        "{zone:?}"
    );
    let staging = dir.join("kubelet/plugins/csi.cairn.io/pvc-0001/globalmount");
    let staging_s = staging.display().to_string();
    let stage = stage_req(name, &staging_s, &vol.volume_context);
    ensure!(
        code(
            node.node_stage_volume(pb::NodeStageVolumeRequest {
                volume_id: "pvc-none".into(),
                ..stage.clone()
            })
            .await
        ) == Code::NotFound
    );
    let with_options = VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            mount_flags: vec!["noatime".into()],
            ..Default::default()
        })),
        ..mount_cap(Mode::MultiNodeMultiWriter)
    };
    let e = node
        .node_stage_volume(pb::NodeStageVolumeRequest {
            volume_capability: Some(with_options),
            ..stage.clone()
        })
        .await
        .unwrap_err();
    ensure!(
        e.code() == Code::InvalidArgument && e.message().contains("mount options"),
        "mount options are refused, not ignored: {e:?}"
    );
    node.node_stage_volume(stage.clone()).await?;
    ensure!(is_mounted(&staging), "staged: {staging_s} mounted");
    node.node_stage_volume(stage.clone()).await?; // idempotent
    let pod = |n: &str| {
        dir.join(format!(
            "kubelet/pods/{n}/volumes/kubernetes.io~csi/pvc-0001/mount"
        ))
    };
    let publish = |target: &Path, readonly: bool| pb::NodePublishVolumeRequest {
        volume_id: name.into(),
        staging_target_path: staging_s.clone(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_cap(Mode::MultiNodeMultiWriter)),
        readonly,
        ..Default::default()
    };
    ensure!(
        code(
            node.node_publish_volume(pb::NodePublishVolumeRequest {
                volume_id: "pvc-none".into(),
                ..publish(&pod("x"), false)
            })
            .await
        ) == Code::FailedPrecondition
    );
    let (a, b, r) = (pod("a"), pod("b"), pod("r"));
    node.node_publish_volume(publish(&a, false)).await?;
    node.node_publish_volume(publish(&a, false)).await?; // idempotent
    node.node_publish_volume(publish(&b, false)).await?;
    node.node_publish_volume(publish(&r, true)).await?;
    std::fs::create_dir_all(a.join("ckpt"))?;
    std::fs::write(a.join("ckpt/step-1.pt"), b"weights of step 1")?;
    ensure!(
        std::fs::read(b.join("ckpt/step-1.pt"))? == b"weights of step 1",
        "pod b reads pod a's file"
    );
    ensure!(std::fs::read(r.join("ckpt/step-1.pt"))? == b"weights of step 1");
    ensure!(
        std::fs::write(r.join("nope"), b"x").is_err(),
        "a read-only publish refuses writes"
    );

    // A second node (its own plugin, state and mount root) mounts the same
    // ReadWriteMany volume: close-to-open between the nodes, both ways.
    {
        let other = dir.join("node-b");
        let plugin_b = Plugin::start(&other, &meta, "node-b")?;
        let mut node_b = NodeClient::new(plugin_b.channel().await?);
        let staging_b = other.join("kubelet/plugins/csi.cairn.io/pvc-0001/globalmount");
        node_b
            .node_stage_volume(pb::NodeStageVolumeRequest {
                staging_target_path: staging_b.display().to_string(),
                ..stage.clone()
            })
            .await?;
        let pod_b = other.join("kubelet/pods/c/volumes/kubernetes.io~csi/pvc-0001/mount");
        node_b
            .node_publish_volume(pb::NodePublishVolumeRequest {
                staging_target_path: staging_b.display().to_string(),
                ..publish(&pod_b, false)
            })
            .await?;
        ensure!(
            std::fs::read(pod_b.join("ckpt/step-1.pt"))? == b"weights of step 1",
            "node b reads what node a wrote"
        );
        std::fs::write(pod_b.join("ckpt/from-b"), b"node b's shard")?;
        ensure!(
            std::fs::read(a.join("ckpt/from-b"))? == b"node b's shard",
            "node a reads what node b wrote"
        );
        std::fs::write(a.join("ckpt/step-1.pt"), b"weights of step 1, again")?;
        ensure!(
            std::fs::read(pod_b.join("ckpt/step-1.pt"))? == b"weights of step 1, again",
            "a rewrite on node a is seen on node b's next open"
        );
        node_b
            .node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
                volume_id: name.into(),
                target_path: pod_b.display().to_string(),
            })
            .await?;
        node_b
            .node_unstage_volume(pb::NodeUnstageVolumeRequest {
                volume_id: name.into(),
                staging_target_path: staging_b.display().to_string(),
            })
            .await?;
        std::fs::write(a.join("ckpt/step-1.pt"), b"weights of step 1")?;
    }

    let stats_req = pb::NodeGetVolumeStatsRequest {
        volume_id: name.into(),
        volume_path: a.display().to_string(),
        staging_target_path: staging_s.clone(),
    };
    let stats = node
        .node_get_volume_stats(stats_req.clone())
        .await?
        .into_inner();
    let bytes = usage(&stats, pb::volume_usage::Unit::Bytes)?;
    ensure!(
        bytes.total == 1 << 30,
        "the quota is the volume's size: {stats:?}"
    );
    ensure!(bytes.used > 0, "{stats:?}");

    // The node's metrics: the plugin's own, and the mount's client metrics
    // for what the pods just did, labelled with the volume.
    let page = node_metrics(&plugin).await?;
    let lbl = r#"{csi_volume="pvc-0001""#;
    ensure!(
        page.ends_with("# EOF\n") && page.matches("# EOF").count() == 1,
        "one exposition:\n{page}"
    );
    ensure!(
        cairn_jepsen::scrape::sample(&page, "cairn_csi_staged_volumes") == Some(1.0)
            && cairn_jepsen::scrape::sample(&page, &format!("cairn_csi_mount_up{lbl}}}"))
                == Some(1.0),
        "{page}"
    );
    for (what, min) in [
        ("cairn_client_write_bytes_total", 17.0),
        ("cairn_client_read_bytes_total", 17.0),
        ("cairn_client_read_seconds_count", 1.0),
        ("cairn_client_cache_lookups_total", 0.0),
    ] {
        let (sum, n) = samples(&page, &format!("{what}{lbl}"));
        ensure!(
            n > 0 && sum >= min,
            "{what} of pvc-0001: {sum} in {n} samples\n{page}"
        );
    }
    let mut types: Vec<&str> = page.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    let all = types.len();
    types.sort_unstable();
    types.dedup();
    ensure!(types.len() == all, "each family described once:\n{page}");

    // Expansion: the quota grows online, the mount sees it at once.
    let expand = |volume_id: &str, bytes: i64| pb::ControllerExpandVolumeRequest {
        volume_id: volume_id.into(),
        capacity_range: Some(pb::CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    let grown = ctl
        .controller_expand_volume(expand(name, 3 << 30))
        .await?
        .into_inner();
    ensure!(
        grown.capacity_bytes == 3 << 30 && !grown.node_expansion_required,
        "{grown:?}"
    );
    let stats = node.node_get_volume_stats(stats_req).await?.into_inner();
    ensure!(
        stats
            .usage
            .iter()
            .any(|u| u.unit == pb::volume_usage::Unit::Bytes as i32 && u.total == 3 << 30),
        "{stats:?}"
    );
    ensure!(
        code(
            ctl.controller_expand_volume(expand("pvc-none", 1 << 30))
                .await
        ) == Code::NotFound
    );

    // The plugin dies (SIGKILL) while a pod reads: the read goes on to the
    // end, the pods' mounts keep serving; the next plugin adopts them and
    // unpublishes/unstages normally.
    let shard: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(a.join("shard.bin"), &shard)?;
    let (started, reading_started) = std::sync::mpsc::channel();
    let shard_path = b.join("shard.bin");
    let reading = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let mut f = std::fs::File::open(shard_path)?;
        let (mut got, mut buf) = (Vec::new(), vec![0u8; 256 << 10]);
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                return Ok(got);
            }
            got.extend_from_slice(&buf[..n]);
            let _ = started.send(());
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    reading_started.recv_timeout(Duration::from_secs(10))?;
    let pid = record_pid(&plugin.state, name)?;
    plugin.kill();
    ensure!(
        !reading.is_finished(),
        "the plugin was killed before the read ended"
    );
    let got = reading
        .join()
        .map_err(|_| anyhow::anyhow!("the reader panicked"))??;
    ensure!(
        got.len() == shard.len() && got == shard,
        "a read in progress when the plugin died ends whole ({} of {} bytes)",
        got.len(),
        shard.len()
    );
    std::fs::write(
        b.join("ckpt/step-2.pt"),
        b"written while the plugin was down",
    )?;
    ensure!(std::fs::read(a.join("ckpt/step-2.pt"))? == b"written while the plugin was down");
    plugin.spawn()?;
    plugin.channel().await?;
    ensure!(
        record_pid(&plugin.state, name)? == pid,
        "adopted, not remounted"
    );
    let page = node_metrics(&plugin).await?;
    ensure!(
        cairn_jepsen::scrape::sample(&page, &format!("cairn_csi_mount_up{lbl}}}")) == Some(1.0)
            && samples(&page, &format!("cairn_client_write_bytes_total{lbl}")).0 > 0.0,
        "the next plugin scrapes the mount it adopted:\n{page}"
    );

    // Two running pods using pod a's path, as a container runtime sets
    // them up: a mount namespace of their own, in which the pod path is
    // bind-mounted at the container's path, with the node's mounts
    // received there (mountPropagation HostToContainer: rslave) or not
    // (None, the default: rprivate).
    let (slave, private) = (PodNs::start(&a, "rslave")?, PodNs::start(&a, "rprivate")?);
    let step1 = Path::new("ckpt/step-1.pt");
    wait_for(
        "the pods' mount namespaces",
        Duration::from_secs(10),
        || slave.read(step1).is_ok() && private.read(step1).is_ok(),
    )
    .await?;

    // A reader and a writer open through pod a.
    let mut reader = std::fs::File::open(a.join("ckpt/step-1.pt"))?;
    let mut head = [0u8; 7];
    reader.read_exact(&mut head)?;
    let mut writer = std::fs::File::create(a.join("ckpt/partial.bin"))?;
    writer.write_all(b"half")?;
    let dev = std::fs::metadata(&staging)?.dev();

    // The mount process dies (killed, an OOM kill, a bug). The plugin's
    // copy of its FUSE connection keeps the mount: requests wait (a pause)
    // until a new process serves the same connection, in every pod.
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    let t0 = Instant::now();
    let read_private = private.read(step1);
    ensure!(
        read_private.as_deref() == Ok(b"weights of step 1".as_slice()),
        "a pod with the default propagation waits and reads: {read_private:?}"
    );
    let paused = t0.elapsed();
    ensure!(slave.read(step1).as_deref() == Ok(b"weights of step 1".as_slice()));
    let state = plugin.state.clone();
    wait_for(
        "the new mount process's record",
        Duration::from_secs(10),
        || record_pid(&state, name).is_ok_and(|p| p != pid),
    )
    .await?;
    let taken = record_pid(&plugin.state, name)?;
    ensure!(
        std::fs::metadata(&staging)?.dev() == dev,
        "the same mount, taken over, not a new one"
    );
    // The reader goes on; the writer learns that what it had not published
    // died with the process.
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest)?;
    ensure!(
        [&head[..], &rest].concat() == b"weights of step 1",
        "the reader reads on"
    );
    let w = writer.write_all(b" more").and_then(|()| writer.sync_all());
    ensure!(
        w.as_ref()
            .is_err_and(|e| e.raw_os_error() == Some(libc_eio())),
        "a writer's handle of the dead process fails with EIO: {w:?}"
    );
    drop((reader, writer));
    let page = node_metrics(&plugin).await?;
    ensure!(
        cairn_jepsen::scrape::sample(&page, "cairn_csi_mount_restarts_total") == Some(1.0)
            && cairn_jepsen::scrape::sample(&page, &format!("cairn_csi_mount_up{lbl}}}"))
                == Some(1.0),
        "the takeover is counted and the new process scraped:\n{page}"
    );
    let mount_log = std::fs::read_to_string(plugin.state.join("logs/pvc-0001.log"))?;
    ensure!(
        mount_log.contains("took over the mount") && !mount_log.contains("cannot resend"),
        "the new process took over and the kernel resent what the dead one had taken:\n{mount_log}"
    );
    println!("--- a mount process killed: the pods paused {paused:?}");

    // The plugin and the mount process die together: nobody holds the
    // connection, so the mount dies. The next plugin mounts the volume
    // again and binds it over the pods' dead bind mounts: the
    // HostToContainer pod reads again, the other holds the dead mount.
    plugin.kill();
    Command::new("kill")
        .args(["-9", &taken.to_string()])
        .status()?;
    plugin.spawn()?;
    let ch = plugin.channel().await?;
    let mut node = NodeClient::new(ch.clone());
    let mut ctl = ControllerClient::new(ch);
    wait_for("a new mount process", Duration::from_secs(30), || {
        record_pid(&state, name).is_ok_and(|p| p != taken)
    })
    .await?;
    wait_for(
        "pod a's mount serving again",
        Duration::from_secs(30),
        || std::fs::read(a.join("ckpt/step-1.pt")).is_ok_and(|d| d == b"weights of step 1"),
    )
    .await?;
    wait_for(
        "the HostToContainer pod's mount",
        Duration::from_secs(10),
        || slave.read(step1).is_ok_and(|d| d == b"weights of step 1"),
    )
    .await?;
    let e = private.read(step1).unwrap_err();
    ensure!(
        e.contains("not connected"),
        "a pod without mount propagation keeps the dead mount: {e}"
    );
    drop((slave, private));
    let page = node_metrics(&plugin).await?;
    ensure!(
        cairn_jepsen::scrape::sample(&page, "cairn_csi_mount_restarts_total") == Some(1.0)
            && cairn_jepsen::scrape::sample(&page, &format!("cairn_csi_mount_up{lbl}}}"))
                == Some(1.0)
            && samples(&page, &format!("cairn_client_read_bytes_total{lbl}")).0 >= 17.0,
        "the new mount process is counted and scraped:\n{page}"
    );

    for t in [&a, &b, &r] {
        let req = pb::NodeUnpublishVolumeRequest {
            volume_id: name.into(),
            target_path: t.display().to_string(),
        };
        node.node_unpublish_volume(req.clone()).await?;
        node.node_unpublish_volume(req).await?; // idempotent
        ensure!(!is_mounted(t), "{} unmounted", t.display());
    }
    let unstage = pb::NodeUnstageVolumeRequest {
        volume_id: name.into(),
        staging_target_path: staging_s.clone(),
    };
    node.node_unstage_volume(unstage.clone()).await?;
    node.node_unstage_volume(unstage).await?;
    ensure!(!is_mounted(&staging), "unstaged");
    let page = node_metrics(&plugin).await?;
    ensure!(
        cairn_jepsen::scrape::sample(&page, "cairn_csi_staged_volumes") == Some(0.0)
            && !page.contains("pvc-0001"),
        "an unstaged volume leaves the node's metrics:\n{page}"
    );
    let new_pid = record_pid(&plugin.state, name).ok();
    ensure!(new_pid.is_none(), "the record is gone");

    // DeleteVolume removes the data and is idempotent.
    ctl.delete_volume(pb::DeleteVolumeRequest {
        volume_id: name.into(),
        ..Default::default()
    })
    .await?;
    ctl.delete_volume(pb::DeleteVolumeRequest {
        volume_id: name.into(),
        ..Default::default()
    })
    .await?;
    let client = cluster.client(Default::default()).await?;
    ensure!(
        client
            .meta()
            .list_volumes()
            .await?
            .iter()
            .all(|v| v.name != name),
        "the volume is gone"
    );
    // VolumeSnapshots: Cairn snapshots; a volume from one is a restore.
    ctl.create_volume(create_req("pvc-snap", 1 << 30, class()))
        .await?;
    client
        .write_file("/pvc-snap/data.bin", Bytes::from(vec![7u8; 300_000]))
        .await?;
    let snap_req = |volume: &str, name: &str| pb::CreateSnapshotRequest {
        source_volume_id: volume.into(),
        name: name.into(),
        ..Default::default()
    };
    let snap = ctl
        .create_snapshot(snap_req("pvc-snap", "snapshot-1"))
        .await?
        .into_inner()
        .snapshot
        .context("a snapshot")?;
    ensure!(
        snap.snapshot_id == "pvc-snap/snapshot-1"
            && snap.source_volume_id == "pvc-snap"
            && snap.ready_to_use
            && snap.size_bytes == 300_000
            && snap.creation_time.is_some(),
        "{snap:?}"
    );
    let again = ctl
        .create_snapshot(snap_req("pvc-snap", "snapshot-1"))
        .await?
        .into_inner()
        .snapshot;
    ensure!(again.as_ref() == Some(&snap), "idempotent: {again:?}");
    ctl.create_volume(create_req("pvc-other", 1 << 30, class()))
        .await?;
    ensure!(
        code(
            ctl.create_snapshot(snap_req("pvc-other", "snapshot-1"))
                .await
        ) == Code::AlreadyExists,
        "the same name on another volume"
    );
    ensure!(
        code(
            ctl.create_snapshot(snap_req("pvc-nope", "snapshot-2"))
                .await
        ) == Code::NotFound
    );
    ctl.create_snapshot(snap_req("pvc-other", "snapshot-2"))
        .await?;
    let lister = ctl.clone();
    let list = move |req: pb::ListSnapshotsRequest| {
        let mut ctl = lister.clone();
        async move {
            let r = ctl.list_snapshots(req).await?.into_inner();
            let ids: Vec<String> = r
                .entries
                .iter()
                .filter_map(|e| e.snapshot.as_ref().map(|s| s.snapshot_id.clone()))
                .collect();
            anyhow::Ok((ids, r.next_token))
        }
    };
    let (ids, next) = list(pb::ListSnapshotsRequest::default()).await?;
    ensure!(
        ids == ["pvc-other/snapshot-2", "pvc-snap/snapshot-1"] && next.is_empty(),
        "{ids:?}"
    );
    let (ids, next) = list(pb::ListSnapshotsRequest {
        max_entries: 1,
        ..Default::default()
    })
    .await?;
    ensure!(
        ids == ["pvc-other/snapshot-2"] && next == "1",
        "{ids:?} {next:?}"
    );
    let (ids, _) = list(pb::ListSnapshotsRequest {
        max_entries: 1,
        starting_token: next,
        ..Default::default()
    })
    .await?;
    ensure!(ids == ["pvc-snap/snapshot-1"], "{ids:?}");
    let (ids, _) = list(pb::ListSnapshotsRequest {
        source_volume_id: "pvc-snap".into(),
        ..Default::default()
    })
    .await?;
    ensure!(ids == ["pvc-snap/snapshot-1"], "{ids:?}");
    let (ids, _) = list(pb::ListSnapshotsRequest {
        snapshot_id: "pvc-snap/nope".into(),
        ..Default::default()
    })
    .await?;
    ensure!(ids.is_empty(), "{ids:?}");
    // A volume from the snapshot: the snapshot's files, its own changes.
    client
        .write_file("/pvc-snap/data.bin", Bytes::from_static(b"changed"))
        .await?;
    let from = pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Snapshot(
            pb::volume_content_source::SnapshotSource {
                snapshot_id: "pvc-snap/snapshot-1".into(),
            },
        )),
    };
    let restored = ctl
        .create_volume(pb::CreateVolumeRequest {
            volume_content_source: Some(from.clone()),
            ..create_req("pvc-restored", 1 << 30, class())
        })
        .await?
        .into_inner()
        .volume
        .context("a volume")?;
    ensure!(
        restored.content_source == Some(from.clone()),
        "{restored:?}"
    );
    // Idempotent.
    ctl.create_volume(pb::CreateVolumeRequest {
        volume_content_source: Some(from.clone()),
        ..create_req("pvc-restored", 1 << 30, class())
    })
    .await?;
    ensure!(client.read_file("/pvc-restored/data.bin").await? == vec![7u8; 300_000]);
    let mut other_class = class();
    other_class.insert("replication".into(), "1".into());
    ensure!(
        code(
            ctl.create_volume(pb::CreateVolumeRequest {
                volume_content_source: Some(from.clone()),
                ..create_req("pvc-restored-1", 1 << 30, other_class.clone())
            })
            .await
        ) == Code::InvalidArgument,
        "a restored volume keeps its source's replication"
    );
    // A volume from a volume: a clone of the source as it is now, sharing
    // its data until written; the source cannot go while the clone lives.
    let from_volume = |id: &str| pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Volume(
            pb::volume_content_source::VolumeSource {
                volume_id: id.into(),
            },
        )),
    };
    let clone_req = |name: &str, source: &str, class| pb::CreateVolumeRequest {
        volume_content_source: Some(from_volume(source)),
        ..create_req(name, 1 << 30, class)
    };
    let clone = ctl
        .create_volume(clone_req("pvc-clone", "pvc-snap", class()))
        .await?
        .into_inner()
        .volume
        .context("a clone")?;
    ensure!(
        clone.content_source == Some(from_volume("pvc-snap")),
        "{clone:?}"
    );
    ctl.create_volume(clone_req("pvc-clone", "pvc-snap", class()))
        .await?; // idempotent
    ensure!(client.read_file("/pvc-clone/data.bin").await? == b"changed"[..]);
    client
        .write_file(
            "/pvc-clone/data.bin",
            Bytes::from_static(b"the clone's own"),
        )
        .await?;
    ensure!(
        client.read_file("/pvc-snap/data.bin").await? == b"changed"[..],
        "a clone's writes leave its source alone"
    );
    // A clone of the clone: the source's data read through two snapshots.
    ctl.create_volume(clone_req("pvc-clone-of-clone", "pvc-clone", class()))
        .await?;
    ensure!(
        client.read_file("/pvc-clone-of-clone/data.bin").await? == b"the clone's own"[..],
        "a clone of a clone reads what the clone held"
    );
    ensure!(
        code(
            ctl.delete_volume(pb::DeleteVolumeRequest {
                volume_id: "pvc-clone".into(),
                ..Default::default()
            })
            .await
        ) == Code::FailedPrecondition,
        "a clone with a clone of its own stays"
    );
    ctl.delete_volume(pb::DeleteVolumeRequest {
        volume_id: "pvc-clone-of-clone".into(),
        ..Default::default()
    })
    .await?;
    let meta_snapshots = |v: &'static str| {
        let client = client.clone();
        async move {
            let names: Vec<String> = client
                .meta()
                .list_snapshots(v)
                .await?
                .into_iter()
                .map(|s| s.name)
                .collect();
            anyhow::Ok(names)
        }
    };
    ensure!(meta_snapshots("pvc-snap").await? == ["snapshot-1", "csi-clone-pvc-clone"]);
    let (ids, _) = list(pb::ListSnapshotsRequest::default()).await?;
    ensure!(
        ids == ["pvc-other/snapshot-2", "pvc-snap/snapshot-1"],
        "the clone's snapshot is the driver's, not listed: {ids:?}"
    );
    for (req, want, why) in [
        (
            clone_req("pvc-clone", "pvc-other", class()),
            Code::AlreadyExists,
            "the same clone name from another source",
        ),
        (
            clone_req("pvc-snap", "pvc-other", class()),
            Code::AlreadyExists,
            "a clone named as an existing volume",
        ),
        (
            clone_req("pvc-clone-2", "pvc-none", class()),
            Code::NotFound,
            "a missing source",
        ),
        (
            clone_req("pvc-clone-2", "pvc-snap", other_class.clone()),
            Code::InvalidArgument,
            "a clone keeps its source's replication",
        ),
        (
            // Refused once the snapshot is taken: it is deleted again.
            pb::CreateVolumeRequest {
                volume_content_source: Some(from_volume("pvc-snap")),
                ..create_req("pvc-clone-2", 1, class())
            },
            Code::OutOfRange,
            "a clone smaller than its source holds",
        ),
        (
            pb::CreateVolumeRequest {
                volume_content_source: Some(pb::VolumeContentSource {
                    r#type: Some(pb::volume_content_source::Type::Snapshot(
                        pb::volume_content_source::SnapshotSource {
                            snapshot_id: "pvc-snap/csi-clone-pvc-clone".into(),
                        },
                    )),
                }),
                ..create_req("pvc-clone-2", 1 << 30, class())
            },
            Code::NotFound,
            "a clone's snapshot is no content source",
        ),
    ] {
        ensure!(code(ctl.create_volume(req).await) == want, "{why}");
    }
    ensure!(
        meta_snapshots("pvc-snap").await? == ["snapshot-1", "csi-clone-pvc-clone"],
        "a refused clone leaves no snapshot behind"
    );
    ensure!(
        code(
            ctl.create_snapshot(snap_req("pvc-snap", "csi-clone-x"))
                .await
        ) == Code::InvalidArgument,
        "the clones' snapshot names are the driver's"
    );
    let e = ctl
        .delete_volume(pb::DeleteVolumeRequest {
            volume_id: "pvc-snap".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    ensure!(
        e.code() == Code::FailedPrecondition
            && e.message().contains("clone(s) pvc-clone")
            && e.message().contains("snapshot(s) snapshot-1"),
        "{e:?}"
    );
    ensure!(
        client.read_file("/pvc-snap/data.bin").await? == b"changed"[..],
        "a refused DeleteVolume removes nothing"
    );
    for _ in 0..2 {
        ctl.delete_volume(pb::DeleteVolumeRequest {
            volume_id: "pvc-clone".into(),
            ..Default::default()
        })
        .await?;
    }
    ensure!(
        meta_snapshots("pvc-snap").await? == ["snapshot-1"],
        "deleting the clone deletes its snapshot"
    );
    let delete_snap = |id: &str| pb::DeleteSnapshotRequest {
        snapshot_id: id.into(),
        ..Default::default()
    };
    ensure!(
        code(
            ctl.delete_snapshot(delete_snap("pvc-snap/snapshot-1"))
                .await
        ) == Code::FailedPrecondition,
        "the restored volume's base is in use"
    );
    for v in ["pvc-restored", "pvc-other"] {
        ctl.delete_volume(pb::DeleteVolumeRequest {
            volume_id: v.into(),
            ..Default::default()
        })
        .await
        .ok();
    }
    ctl.delete_snapshot(delete_snap("pvc-snap/snapshot-1"))
        .await?;
    ctl.delete_snapshot(delete_snap("pvc-snap/snapshot-1"))
        .await?;
    ctl.delete_snapshot(delete_snap("not-an-id")).await?;
    ctl.delete_volume(pb::DeleteVolumeRequest {
        volume_id: "pvc-snap".into(),
        ..Default::default()
    })
    .await?;

    // An encrypted class: the key comes from the provisioner secret at
    // creation and from the node-stage secret at mount, into a 0600 file
    // that leaves with the unstage.
    let key = "7f".repeat(32);
    let secrets: HashMap<String, String> = [("key".to_string(), key.clone())].into();
    let mut enc = class();
    enc.insert("encryption".into(), "true".into());
    let v = ctl
        .create_volume(pb::CreateVolumeRequest {
            secrets: secrets.clone(),
            ..create_req("pvc-enc", 1 << 30, enc.clone())
        })
        .await?
        .into_inner()
        .volume
        .context("a volume")?;
    ensure!(v.volume_context.get("encrypted").map(String::as_str) == Some("true"));
    let other_key = "01".repeat(32);
    let other: HashMap<String, String> = [("key".to_string(), other_key.clone())].into();
    let e = ctl
        .create_volume(pb::CreateVolumeRequest {
            secrets: other,
            ..create_req("pvc-enc", 1 << 30, enc)
        })
        .await
        .unwrap_err();
    ensure!(
        e.code() == Code::AlreadyExists && !e.message().contains(&other_key),
        "the same name with another key is another volume, and the error keeps the key: {e:?}"
    );
    let staging = dir.join("kubelet/plugins/csi.cairn.io/pvc-enc/globalmount");
    let stage = pb::NodeStageVolumeRequest {
        volume_id: "pvc-enc".into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(mount_cap(Mode::SingleNodeWriter)),
        volume_context: v.volume_context.clone(),
        ..Default::default()
    };
    ensure!(code(node.node_stage_volume(stage.clone()).await) == Code::InvalidArgument);
    node.node_stage_volume(pb::NodeStageVolumeRequest { secrets, ..stage })
        .await?;
    let key_file = plugin.state.join("keys/pvc-enc.key");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file)?.permissions().mode() & 0o777;
        ensure!(mode == 0o600, "key file mode {mode:o}");
    }
    std::fs::write(staging.join("secret.txt"), b"sealed on the chunkservers")?;
    let back = client.read_file("/pvc-enc/secret.txt").await;
    ensure!(
        back.is_err(),
        "a client without the key cannot read the file"
    );
    ensure!(std::fs::read(staging.join("secret.txt"))? == b"sealed on the chunkservers");
    // Secrets stay out of every log: the plugin's and the mounts'.
    let mut logs = vec![("the plugin's log".to_string(), plugin.log_text())];
    for f in std::fs::read_dir(plugin.state.join("logs"))? {
        let f = f?.path();
        logs.push((f.display().to_string(), std::fs::read_to_string(&f)?));
    }
    for (what, text) in &logs {
        ensure!(
            !text.contains(&key) && !text.contains(&other_key),
            "a volume key in {what}"
        );
    }
    node.node_unstage_volume(pb::NodeUnstageVolumeRequest {
        volume_id: "pvc-enc".into(),
        staging_target_path: staging.display().to_string(),
    })
    .await?;
    ensure!(!key_file.exists(), "the key file leaves with the unstage");
    ensure!(
        !plugin.state.join("cache/pvc-enc").exists()
            && !plugin.state.join("logs/pvc-enc.log").exists(),
        "the volume's cache directory and mount log leave with it"
    );

    dir_volumes(dir, &mut ctl, &mut node).await?;

    println!("--- cairn-csi log:\n{}", plugin.log_text());
    Ok(())
}

/// `df` of `path`: total and available bytes.
fn df(path: &Path) -> Result<(u64, u64)> {
    let out = Command::new("stat")
        .args(["-f", "--format=%b %a %S"])
        .arg(path)
        .output()?;
    ensure!(out.status.success(), "stat -f {}", path.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let n: Vec<u64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()?;
    ensure!(n.len() == 3, "stat -f: {text}");
    Ok((n[0] * n[2], n[1] * n[2]))
}

/// A class with `sharedVolume`: each volume is a directory with a quota of
/// its own in one Cairn volume.
async fn dir_volumes(
    dir: &Path,
    ctl: &mut ControllerClient<Channel>,
    node: &mut NodeClient<Channel>,
) -> Result<()> {
    use std::io::Write;
    let mut shared = class();
    shared.insert("sharedVolume".into(), "team-a".into());
    let create = |name: &str, bytes: i64| create_req(name, bytes, shared.clone());
    let v = ctl
        .create_volume(create("pvc-d1", 1 << 20))
        .await?
        .into_inner()
        .volume
        .context("a volume")?;
    ensure!(v.volume_id == "team-a/pvc-d1", "{v:?}");
    ctl.create_volume(create("pvc-d1", 1 << 20)).await?; // idempotent
    ensure!(
        code(ctl.create_volume(create("pvc-d1", 2 << 20)).await) == Code::AlreadyExists,
        "the same name with another size"
    );
    ctl.create_volume(create("pvc-d2", 1 << 20)).await?;
    let mut other = shared.clone();
    other.insert("replication".into(), "1".into());
    let e = ctl
        .create_volume(create_req("pvc-d3", 1 << 20, other))
        .await
        .unwrap_err();
    ensure!(
        e.code() == Code::InvalidArgument && e.message().contains("sharedVolume"),
        "a class disagreeing with the shared volume's policy: {e:?}"
    );
    let e = ctl
        .create_snapshot(pb::CreateSnapshotRequest {
            source_volume_id: v.volume_id.clone(),
            name: "snap-d1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    ensure!(e.code() == Code::InvalidArgument, "{e:?}");
    let from_snapshot = |id: &str| pb::CreateVolumeRequest {
        volume_content_source: Some(pb::VolumeContentSource {
            r#type: Some(pb::volume_content_source::Type::Snapshot(
                pb::volume_content_source::SnapshotSource {
                    snapshot_id: id.into(),
                },
            )),
        }),
        ..create("pvc-d4", 1 << 20)
    };
    ensure!(
        code(ctl.create_volume(from_snapshot("team-a/nope")).await) == Code::NotFound,
        "a missing source snapshot is NOT_FOUND whatever the class"
    );

    let staging = dir.join("kubelet/plugins/csi.cairn.io/pvc-d1/globalmount");
    let staging_s = staging.display().to_string();
    node.node_stage_volume(stage_req(&v.volume_id, &staging_s, &v.volume_context))
        .await?;
    let pod = dir.join("kubelet/pods/d/volumes/kubernetes.io~csi/pvc-d1/mount");
    node.node_publish_volume(pb::NodePublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        staging_target_path: staging_s.clone(),
        target_path: pod.display().to_string(),
        volume_capability: Some(mount_cap(Mode::MultiNodeMultiWriter)),
        ..Default::default()
    })
    .await?;
    // The pod sees its directory only, and df shows the claim's size.
    ensure!(
        std::fs::read_dir(&pod)?.next().is_none(),
        "a new directory volume is empty"
    );
    let write = |name: &str, len: usize| -> std::io::Result<()> {
        let mut f = std::fs::File::create(pod.join(name))?;
        f.write_all(&vec![7u8; len])?;
        f.sync_all()
    };
    write("a", 512 << 10)?;
    let (total, avail) = df(&pod)?;
    ensure!(
        total == 1 << 20 && avail == 512 << 10,
        "df in the pod: {total} bytes, {avail} available"
    );
    // Past the quota: EDQUOT. The writer keeps its handle open, as a
    // training job's checkpoint writer would while someone grows the claim.
    let mut writer = std::fs::File::create(pod.join("b"))?;
    let e = writer
        .write_all(&vec![7u8; 768 << 10])
        .and_then(|()| writer.sync_all())
        .unwrap_err();
    ensure!(
        e.raw_os_error() == Some(libc_edquot()),
        "over the quota: {e}"
    );
    // Expansion raises the quota at once, and the same writer goes on.
    let grown = ctl
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: v.volume_id.clone(),
            capacity_range: Some(pb::CapacityRange {
                required_bytes: 2 << 20,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(grown.capacity_bytes == 2 << 20, "{grown:?}");
    writer
        .sync_all()
        .context("the writer that hit EDQUOT, after the expansion")?;
    drop(writer);
    ensure!(
        std::fs::read(pod.join("b"))? == vec![7u8; 768 << 10],
        "the writer's bytes, whole"
    );
    let stats = node
        .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
            volume_id: v.volume_id.clone(),
            volume_path: pod.display().to_string(),
            staging_target_path: staging_s.clone(),
        })
        .await?
        .into_inner();
    let bytes = usage(&stats, pb::volume_usage::Unit::Bytes)?;
    let inodes = usage(&stats, pb::volume_usage::Unit::Inodes)?;
    ensure!(
        (bytes.total, bytes.used) == (2 << 20, (512 + 768) << 10) && inodes.used == 2,
        "the directory's own figures: {stats:?}"
    );

    // Deleting it removes its directory, not its neighbour.
    node.node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        target_path: pod.display().to_string(),
    })
    .await?;
    node.node_unstage_volume(pb::NodeUnstageVolumeRequest {
        volume_id: v.volume_id.clone(),
        staging_target_path: staging_s,
    })
    .await?;
    for _ in 0..2 {
        ctl.delete_volume(pb::DeleteVolumeRequest {
            volume_id: v.volume_id.clone(),
            secrets: HashMap::new(),
        })
        .await?;
    }
    let validate = |id: &str| pb::ValidateVolumeCapabilitiesRequest {
        volume_id: id.into(),
        volume_capabilities: vec![mount_cap(Mode::MultiNodeMultiWriter)],
        ..Default::default()
    };
    ensure!(
        code(
            ctl.validate_volume_capabilities(validate("team-a/pvc-d1"))
                .await
        ) == Code::NotFound
    );
    let ok = ctl
        .validate_volume_capabilities(validate("team-a/pvc-d2"))
        .await?
        .into_inner();
    ensure!(ok.confirmed.is_some(), "the neighbour stays: {ok:?}");
    ctl.delete_volume(pb::DeleteVolumeRequest {
        volume_id: "team-a/pvc-d2".into(),
        secrets: HashMap::new(),
    })
    .await?;
    Ok(())
}

/// EDQUOT (122 on Linux).
fn libc_edquot() -> i32 {
    122
}

/// EIO.
fn libc_eio() -> i32 {
    5
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csi_volumes_are_provisioned_mounted_shared_and_survive_plugin_restarts() {
    let _serial = cairn_jepsen::serial().await;
    let cluster = DataCluster::start(DataOpts::default())
        .await
        .expect("a cluster");
    let dir = tempfile::tempdir().unwrap();
    // Shared, as the kubelet's directory is: mounts made under it reach
    // the pods' mount namespaces that take the node's mounts.
    let d = dir.path().display().to_string();
    for args in [["--bind", &d, &d], ["--make-rshared", &d, ""]] {
        let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();
        assert!(
            Command::new("mount")
                .args(&args)
                .status()
                .unwrap()
                .success()
        );
    }
    if let Err(e) = body(dir.path(), &cluster).await {
        let log = std::fs::read_to_string(dir.path().join("csi.log")).unwrap_or_default();
        panic!("{e:#}\n--- cairn-csi log:\n{log}");
    }
}
