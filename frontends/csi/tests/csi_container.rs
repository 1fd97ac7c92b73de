//! The node plugin in a container, run the way the chart runs it: the
//! cairn image, privileged, in the node's PID namespace and network, the
//! kubelet's directory shared both ways, `--mount-cgroup`. A pod's mount
//! must keep serving while the plugin's container is killed and then
//! replaced by a new one (an upgrade), and the new plugin must adopt the
//! mount: the same mount process, new pods published from it, a takeover
//! when that process dies, and unpublish and unstage ending it.
//!
//! Needs root, Docker and the image (`deploy/image/build`, `CAIRN_IMAGE`,
//! default `cairn:latest`), so plain `cargo test` skips it; scripts/test
//! runs it once the compose test has built the image:
//! `cargo test -p cairn-csi --test csi_container -- --ignored`.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cairn_csi::pb::controller_client::ControllerClient;
use cairn_csi::pb::node_client::NodeClient;
use cairn_csi::pb::volume_capability::access_mode::Mode;
use cairn_csi::pb::{self};
use cairn_jepsen::data_cluster::{DataCluster, DataOpts};
use cairn_jepsen::fuse::is_mounted;

mod common;
use common::{class, create_req, mount_cap, record_pid, stage_req, wait_for};

/// The plugin's container and the node directory it shares with the host.
struct Node {
    /// Container name, also the name of the node cgroup for its mounts.
    name: String,
    image: String,
    /// Bind-mounted onto itself and made shared, so mounts made in the
    /// container show here as they show to the kubelet.
    base: PathBuf,
    meta: String,
}

fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .context("running docker")?;
    ensure!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn sh(cmd: &str, args: &[&str]) -> Result<()> {
    let st = Command::new(cmd).args(args).status()?;
    ensure!(st.success(), "{cmd} {}: {st}", args.join(" "));
    Ok(())
}

impl Node {
    fn socket(&self) -> PathBuf {
        self.base.join("csi.sock")
    }

    fn state(&self) -> PathBuf {
        self.base.join("state")
    }

    /// Starts the plugin's container (a new one each time, as a new pod
    /// would have).
    fn start(&self) -> Result<()> {
        let _ = std::fs::remove_file(self.socket());
        let base = self.base.display().to_string();
        docker(&[
            "run",
            "-d",
            "--name",
            &self.name,
            // What the chart's `privileged: true` grants that the plugin
            // uses (this machine's Docker refuses --privileged): mounts and
            // setns, /proc/1/root and pidfd_getfd, the takeover socket's
            // size (SO_SNDBUFFORCE), FUSE, no AppArmor confinement.
            "--cap-add=SYS_ADMIN",
            "--cap-add=SYS_PTRACE",
            "--cap-add=NET_ADMIN",
            "--device=/dev/fuse",
            "--security-opt=apparmor:unconfined",
            "--pid=host",
            "--network=host",
            "--user=0",
            "-v",
            &format!("{base}:{base}:rshared"),
            &self.image,
            "cairn-csi",
            "--mode=all",
            &format!("--endpoint=unix://{base}/csi.sock"),
            &format!("--meta={}", self.meta),
            "--node-id=node-a",
            &format!("--state-dir={base}/state"),
            "--cairn=/usr/local/bin/cairn",
            &format!("--mount-cgroup={}", self.name),
            // This machine's PID 1 holds a capability no other process
            // has, so no process may open its namespaces: this test's
            // process stands for the node (it is in the node's).
            &format!("--node-pid={}", std::process::id()),
        ])?;
        Ok(())
    }

    fn logs(&self) -> String {
        Command::new("docker")
            .args(["logs", "--tail", "200", &self.name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr)
            })
            .unwrap_or_default()
    }

    async fn clients(
        &self,
    ) -> Result<(
        ControllerClient<tonic::transport::Channel>,
        NodeClient<tonic::transport::Channel>,
    )> {
        let ch = common::connect(&self.socket(), || self.logs()).await?;
        Ok((ControllerClient::new(ch.clone()), NodeClient::new(ch)))
    }

    fn remove(&self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.remove();
        // Whatever the test left: mount processes (by their records),
        // mounts under the base, the base's own bind mount, the cgroups.
        if let Ok(dir) = std::fs::read_dir(self.state().join("volumes")) {
            for e in dir.flatten() {
                let v = e.path();
                let Some(stem) = v.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
                    continue;
                };
                if let Ok(pid) = record_pid(&self.state(), &stem) {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                }
            }
        }
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let base = self.base.display().to_string();
        let mut points: Vec<String> = text
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(String::from))
            .filter(|p| p.starts_with(&base))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").args(["-l", &p]).status();
        }
        if let Ok(roots) = cairn_csi::cgroup::hierarchy_roots(Path::new("/sys/fs/cgroup")) {
            for r in roots {
                let _ = std::fs::remove_dir(r.join(&self.name));
            }
        }
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

async fn body(node: &Node) -> Result<()> {
    let t0 = std::time::Instant::now();
    let step = |what: &str| println!("--- {:>6.2}s {what}", t0.elapsed().as_secs_f64());
    node.start()?;
    let (mut ctl, mut csi) = node.clients().await?;
    let name = "pvc-ctr";
    let vol = ctl
        .create_volume(create_req(name, 1 << 30, class()))
        .await?
        .into_inner()
        .volume
        .context("a volume")?;
    let staging = node
        .base
        .join("kubelet/plugins/csi.cairn.io/pvc-ctr/globalmount");
    let staging_s = staging.display().to_string();
    let stage = stage_req(name, &staging_s, &vol.volume_context);
    csi.node_stage_volume(stage.clone()).await?;
    let pod = |n: &str| {
        node.base.join(format!(
            "kubelet/pods/{n}/volumes/kubernetes.io~csi/pvc-ctr/mount"
        ))
    };
    let publish = |target: &Path| pb::NodePublishVolumeRequest {
        volume_id: name.into(),
        staging_target_path: staging_s.clone(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_cap(Mode::MultiNodeMultiWriter)),
        ..Default::default()
    };
    csi.node_publish_volume(publish(&pod("a"))).await?;
    ensure!(
        is_mounted(&staging) && is_mounted(&pod("a")),
        "staged and published, seen on the host"
    );
    std::fs::write(pod("a").join("before"), b"written before the kill")?;

    // The mount process left the container's cgroup for the node's.
    let pid = record_pid(&node.state(), name)?;
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    ensure!(
        cgroups
            .lines()
            .all(|l| l.ends_with(&format!("/{}", node.name))),
        "mount process {pid} in the node cgroup {} of every hierarchy: {cgroups}",
        node.name
    );

    step("staged and published");
    // The plugin's container is killed (a crash, an OOM kill): the pod's
    // mount keeps serving, reads and writes.
    docker(&["kill", &node.name])?;
    ensure!(
        docker(&["inspect", "-f", "{{.State.Running}}", &node.name])? == "false",
        "the container stopped"
    );
    ensure!(alive(pid), "the mount process outlived its container");
    ensure!(
        std::fs::read(pod("a").join("before"))? == b"written before the kill",
        "the pod reads through the mount after the kill"
    );
    {
        use std::io::Write;
        let mut f = std::fs::File::create(pod("a").join("during"))?;
        f.write_all(b"written with no plugin")?;
        f.sync_all()?;
    }

    step("container killed, the pod read and wrote");
    // A new container replaces it (an upgrade: a new pod of the
    // DaemonSet). It adopts the mount rather than mounting again.
    node.remove();
    node.start()?;
    let (mut ctl, mut csi) = node.clients().await?;
    csi.node_stage_volume(stage.clone()).await?; // idempotent: adopted
    tokio::time::sleep(cairn_csi::node::SUPERVISE_EVERY * 2).await;
    ensure!(
        record_pid(&node.state(), name)? == pid,
        "the new plugin kept the running mount process"
    );
    let stats = csi
        .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
            volume_id: name.into(),
            volume_path: pod("a").display().to_string(),
            staging_target_path: staging_s.clone(),
        })
        .await?
        .into_inner();
    ensure!(
        !stats.usage.is_empty(),
        "stats of the adopted volume: {stats:?}"
    );
    // A pod started after the upgrade sees what was written across it.
    csi.node_publish_volume(publish(&pod("b"))).await?;
    ensure!(
        std::fs::read(pod("b").join("during"))? == b"written with no plugin"
            && std::fs::read(pod("b").join("before"))? == b"written before the kill",
        "a new pod reads both files"
    );

    step("replaced and adopted");
    // The mount process dies under the new plugin, which took a copy of
    // its FUSE connection when it adopted it: a new process takes the
    // mount over (in the node's cgroup too) and the pod reads on.
    let dev = std::fs::metadata(pod("a"))?.dev();
    docker(&["exec", &node.name, "kill", "-9", &pid.to_string()])?;
    ensure!(
        std::fs::read(pod("a").join("during"))? == b"written with no plugin",
        "the pod reads through the taken-over mount"
    );
    let state = node.state();
    wait_for("the new mount process", Duration::from_secs(10), || {
        record_pid(&state, name).is_ok_and(|p| p != pid)
    })
    .await?;
    let pid = record_pid(&node.state(), name)?;
    ensure!(std::fs::metadata(pod("a"))?.dev() == dev, "the same mount");
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    ensure!(
        cgroups
            .lines()
            .all(|l| l.ends_with(&format!("/{}", node.name))),
        "the new mount process is in the node cgroup too: {cgroups}"
    );

    step("taken over");
    // Unpublish and unstage through the new plugin end the old mount.
    for p in ["a", "b"] {
        csi.node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
            volume_id: name.into(),
            target_path: pod(p).display().to_string(),
        })
        .await?;
        ensure!(!is_mounted(&pod(p)), "pod {p} unpublished");
    }
    csi.node_unstage_volume(pb::NodeUnstageVolumeRequest {
        volume_id: name.into(),
        staging_target_path: staging_s.clone(),
    })
    .await?;
    ensure!(!is_mounted(&staging), "unstaged");
    wait_for("the mount process to end", Duration::from_secs(15), || {
        !alive(pid)
    })
    .await?;
    step("unstaged");
    ctl.delete_volume(pb::DeleteVolumeRequest {
        volume_id: name.into(),
        secrets: Default::default(),
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the cairn image: scripts/test runs it after building the image"]
async fn mounts_outlive_the_node_plugins_container() {
    let _serial = cairn_jepsen::serial().await;
    let image = std::env::var("CAIRN_IMAGE").unwrap_or_else(|_| "cairn:latest".into());
    docker(&["image", "inspect", "-f", "{{.Id}}", &image])
        .unwrap_or_else(|e| panic!("the image {image} (deploy/image/build): {e:#}"));
    let cluster = DataCluster::start(DataOpts::default())
        .await
        .expect("a cluster");
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("node");
    std::fs::create_dir_all(&base).unwrap();
    let b = base.display().to_string();
    sh("mount", &["--bind", &b, &b]).unwrap();
    sh("mount", &["--make-rshared", &b]).unwrap();
    let node = Node {
        name: format!("cairn-csi-test-{}", std::process::id()),
        image,
        base,
        meta: cluster.meta.addrs().join(","),
    };
    if let Err(e) = body(&node).await {
        panic!("{e:#}\n--- cairn-csi container log:\n{}", node.logs());
    }
}
