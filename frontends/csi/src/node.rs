//! The Node service: one FUSE mount per volume per node, bind-mounted into
//! each pod.
//!
//! A directory volume (`SHARED/NAME`, a `sharedVolume` class) is mounted
//! the same way with `--volume /SHARED/NAME`: the pod sees its directory
//! only, and `df` there shows the directory's quota. Its files in the
//! state directory are named after the id with `/` percent-encoded.
//!
//! # Mounts that outlive the plugin
//! NodeStageVolume starts `cairn mount --volume /VOL STAGING` as a process
//! of its own (its own process group, output to a log file in the state
//! directory), not as a task of the plugin: killing, upgrading or
//! restarting `cairn-csi` leaves every mount serving. Each staged volume
//! has a record in `STATE/volumes/` (the mount's arguments, its pid, the
//! pod paths it is bind-mounted to), written before NodeStage answers.
//! A plugin that starts reads the records and adopts the mounts whose
//! process still runs; every [`SUPERVISE_EVERY`] (and at once when a
//! mount process exits: a pidfd per process) it checks them.
//!
//! A plugin killed alone leaves its mounts serving by the above. Restarting
//! or replacing its *container* (an upgrade, an OOM kill) would end them
//! too, as the runtime kills every process of the container's cgroup: with
//! [`NodeConfig::mount_cgroup`] (`--mount-cgroup`) each mount process is
//! moved into a cgroup of the node's own right after it starts, so it
//! outlives the container (see [`crate::cgroup`]).
//!
//! # A mount process that dies
//! The plugin holds a copy of each mount's FUSE connection (its
//! `/dev/fuse`, taken with `pidfd_getfd` when it starts or adopts the
//! mount). When the mount process dies (killed, an OOM kill, a bug) the
//! kernel therefore keeps the mount, and the pods' requests wait; the
//! plugin, woken by the process's pidfd, starts `cairn mount
//! --fuse-fd-on-stdin` on the same connection ([`Node::take_over`],
//! `cairn_fuse::takeover`): every pod sees a pause of tens of
//! milliseconds, not an error. Requests the dead process had already
//! taken fail (ECONNABORTED); files open for reading read on; files open
//! for writing fail their next write, flush or fsync with EIO, as what the
//! dead process had not yet published died with it.
//!
//! When the plugin holds no copy (it died with the mount process) the
//! mount is dead: the next plugin detaches it, mounts the volume again on
//! the same staging path and binds that over each pod path *on top of*
//! the pod's dead bind mount ([`Node::remount`]). A pod whose volume mount
//! takes the node's mounts (`mountPropagation: HostToContainer`, as the
//! examples set) then reads and writes again; one with the default
//! propagation holds the dead mount until it restarts.
//!
//! Mount and bind operations use the system's `mount` and `umount` (as
//! kubelet's mount utilities do), so the driver needs no unsafe code.
//!
//! # Metrics
//! Each mount process serves its client metrics (reads, writes,
//! checkpoints, cache tiers: [`cairn_client::metrics`]) on a unix socket,
//! `STATE/metrics/VOL.sock`, and the plugin's `--metrics-listen` endpoint
//! ([`Node::metrics`]) merges them at each scrape, every sample labelled
//! `csi_volume`, beside the plugin's own: staged volumes, whether each
//! mount answered, and mounts started again. One port per node however
//! many volumes it mounts, and a mount that outlives the plugin is scraped
//! by the next one through the same socket.
//!
//! # Keys
//! An encrypted volume's key comes in NodeStage's secrets and is written
//! to `STATE/keys/VOL.key` (mode 0600) for the mount process; it is
//! removed at NodeUnstage. It never appears in logs or errors.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_client::MetaClient;
use cairn_client::crypto::{KeyRing, VolumeKey};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use crate::params::{CTX_CACHE, CTX_ENCRYPTED, CTX_PREFETCH, SECRET_KEY};
use crate::pb::node_service_capability::{Rpc, Type, rpc};
use crate::pb::{self, NodeServiceCapability};
use crate::{reader_only, required, single_capability, status};

/// How often the plugin checks its mount processes.
pub const SUPERVISE_EVERY: Duration = Duration::from_secs(2);

/// How long NodeStage waits for a new mount to appear.
const MOUNT_WITHIN: Duration = Duration::from_secs(30);

/// How long a scrape waits for one mount's metrics.
const SCRAPE_WITHIN: Duration = Duration::from_secs(2);

/// Longest unix socket path (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A staged volume, as kept in the state directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// CSI volume id (the Cairn volume name).
    pub volume_id: String,
    /// Where the volume is mounted on the node.
    pub staging_path: String,
    /// The mount process's arguments (after the `cairn` binary).
    pub args: Vec<String>,
    /// The mount process.
    pub pid: u32,
    /// Pod paths bind-mounted from the staging path, and whether read-only.
    pub targets: Vec<(String, bool)>,
}

/// Configuration of the node service.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id (reported by NodeGetInfo).
    pub node_id: String,
    /// This node's zone, reported by NodeGetInfo under
    /// [`crate::ZONE_KEY`] (none: no topology).
    pub zone: Option<String>,
    /// Meta replicas, comma separated, for the mount processes.
    pub meta: String,
    /// The `cairn` binary the mounts run.
    pub cairn: PathBuf,
    /// Records, keys, logs and cache directories.
    pub state_dir: PathBuf,
    /// The node cgroup each mount process is moved into, out of the
    /// plugin's container (`None`: mounts stay in the plugin's cgroup and
    /// end with its container). Needs the node's PID namespace.
    pub mount_cgroup: Option<String>,
    /// A process in the node's own namespaces, through which the mounts'
    /// cgroups are reached (1: the node's init).
    pub node_pid: u32,
}

/// The Node service.
#[derive(Debug, Clone)]
pub struct Node {
    cfg: NodeConfig,
    meta: MetaClient,
    records: Arc<Mutex<HashMap<String, Record>>>,
    /// One lock per volume, held for a whole stage, unstage, publish,
    /// unpublish or remount of it; `records` is locked only briefly, so a
    /// slow mount of one volume never holds up another's calls.
    volume_locks: Arc<std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>>,
    /// Mount processes started again after they died (since this plugin
    /// started).
    restarts: Arc<std::sync::atomic::AtomicU64>,
    /// A copy of each staged volume's FUSE connection (`/dev/fuse` of its
    /// mount process, by `pidfd_getfd`): while it is held, the mount
    /// outlives its process and is taken over ([`Node::take_over`]).
    fuse_fds: Arc<std::sync::Mutex<HashMap<String, OwnedFd>>>,
    /// Woken when a mount process exits, so the supervisor acts at once
    /// rather than at its next round (the pods' pause is that long).
    exited: Arc<tokio::sync::Notify>,
}

/// The file name stem of CSI volume `id` in the state directory: the id
/// with `%` and `/` (a directory volume's `SHARED/NAME`) percent-encoded,
/// so no two ids share a file.
fn stem(id: &str) -> String {
    id.replace('%', "%25").replace('/', "%2F")
}

fn internal(what: &str, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("{what}: {e}"))
}

/// The mount points of this mount namespace with their file system types,
/// from `/proc/self/mountinfo`.
pub fn mounts() -> Vec<(String, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let point = f.nth(4)?;
            let rest = l.split(" - ").nth(1)?;
            let fstype = rest.split(' ').next()?;
            Some((unescape(point), fstype.to_string()))
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_mounted(path: &str) -> bool {
    mounts().iter().any(|(p, _)| p == path)
}

fn is_fuse_mounted(path: &str) -> bool {
    mounts()
        .iter()
        .any(|(p, t)| p == path && t.starts_with("fuse"))
}

/// Whether `pid` is the mount process of `staging` (not a reused pid).
fn mount_process_alive(pid: u32, staging: &str) -> bool {
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    // A zombie has an empty command line.
    let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
    args.contains(&b"mount".as_slice()) && args.contains(&staging.as_bytes())
}

/// A copy of process `pid`'s open `/dev/fuse` (its FUSE connection).
fn grab_fuse_fd(pid: u32) -> Result<OwnedFd, String> {
    use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags, pidfd_getfd, pidfd_open};
    let dir = format!("/proc/{pid}/fd");
    let num = std::fs::read_dir(&dir)
        .map_err(|e| format!("{dir}: {e}"))?
        .flatten()
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == Path::new("/dev/fuse")))
        .and_then(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .ok_or_else(|| format!("process {pid} holds no /dev/fuse"))?;
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| format!("bad pid {pid}"))?;
    let pidfd = pidfd_open(pid, PidfdFlags::empty()).map_err(|e| format!("pidfd_open: {e}"))?;
    pidfd_getfd(&pidfd, num, PidfdGetfdFlags::empty()).map_err(|e| format!("pidfd_getfd: {e}"))
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// How many mounts stacked on one path [`unmount`] takes off at most.
const MAX_STACKED: usize = 64;

/// Whether the mount at `path` answers "transport endpoint is not
/// connected": its FUSE process is gone.
fn is_dead_mount(path: &str) -> bool {
    std::fs::metadata(path).is_err_and(|e| e.raw_os_error() == Some(107)) // ENOTCONN
}

/// Unmounts everything mounted on `path` (a pod's path can hold a bind
/// mount of a mount that died with the one remade over it: see
/// [`Node::remount`]); `lazy`: detach even when busy. A mount that died is
/// detached lazily either way. Not mounted is success.
fn unmount(path: &str, lazy: bool) -> Result<(), String> {
    for _ in 0..MAX_STACKED {
        if !is_mounted(path) {
            return Ok(());
        }
        let r = if lazy || is_dead_mount(path) {
            run("umount", &["-l", path])
        } else {
            run("umount", &[path])
        };
        if let Err(e) = r {
            if is_mounted(path) && !is_dead_mount(path) {
                return Err(e);
            }
        }
    }
    if is_mounted(path) {
        Err(format!(
            "{path}: still mounted after {MAX_STACKED} unmounts"
        ))
    } else {
        Ok(())
    }
}

/// Bind-mounts `staging` on `target` (read-only when asked), on top of
/// whatever is mounted there already. Paths are not canonicalized: a
/// target holding a mount that died cannot be looked into.
fn bind(staging: &str, target: &str, read_only: bool) -> Result<(), String> {
    if !is_mounted(target) {
        std::fs::create_dir_all(target).map_err(|e| format!("creating {target}: {e}"))?;
    }
    run("mount", &["--no-canonicalize", "--bind", staging, target])?;
    if read_only {
        if let Err(e) = run(
            "mount",
            &["--no-canonicalize", "-o", "remount,bind,ro", target],
        ) {
            let _ = run("umount", &["-l", target]);
            return Err(e);
        }
    }
    Ok(())
}

/// `GET /metrics` over the unix socket at `path`: the body of a 200
/// answer, or `None` (no socket, no answer within [`SCRAPE_WITHIN`], not
/// a 200).
async fn scrape_unix(path: PathBuf) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let ask = async {
        let mut sock = tokio::net::UnixStream::connect(&path).await.ok()?;
        sock.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
            .await
            .ok()?;
        let mut reply = Vec::new();
        sock.read_to_end(&mut reply).await.ok()?;
        let reply = String::from_utf8(reply).ok()?;
        let (head, body) = reply.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_string())
    };
    tokio::time::timeout(SCRAPE_WITHIN, ask)
        .await
        .ok()
        .flatten()
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

impl Node {
    /// The service; reads the records of a previous plugin and adopts (or
    /// restarts) their mounts.
    ///
    /// # Errors
    /// The state directory cannot be made or read.
    pub async fn new(cfg: NodeConfig, meta: MetaClient) -> anyhow::Result<Self> {
        for d in ["volumes", "keys", "logs", "cache", "metrics"] {
            std::fs::create_dir_all(cfg.state_dir.join(d))?;
        }
        let mut records = HashMap::new();
        for e in std::fs::read_dir(cfg.state_dir.join("volumes"))? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "json") {
                match std::fs::read(&p)
                    .map_err(anyhow::Error::from)
                    .and_then(|b| Ok(serde_json::from_slice::<Record>(&b)?))
                {
                    Ok(r) => {
                        records.insert(r.volume_id.clone(), r);
                    }
                    Err(e) => tracing::warn!(record = %p.display(), "unreadable record: {e}"),
                }
            }
        }
        let node = Self {
            cfg,
            meta,
            records: Arc::new(Mutex::new(records)),
            volume_locks: Arc::default(),
            restarts: Arc::default(),
            fuse_fds: Arc::default(),
            exited: Arc::default(),
        };
        node.supervise_once().await;
        Ok(node)
    }

    /// Checks every staged volume once: a dead mount process is started
    /// again and the pods' bind mounts remade.
    pub async fn supervise_once(&self) {
        let ids: Vec<String> = self.records.lock().await.keys().cloned().collect();
        for id in ids {
            let _volume = self.lock_volume(&id).await;
            let Some(r) = self.records.lock().await.get(&id).cloned() else {
                continue; // unstaged meanwhile
            };
            if mount_process_alive(r.pid, &r.staging_path) && is_fuse_mounted(&r.staging_path) {
                self.keep_fuse_fd(&id, r.pid);
                continue;
            }
            let pid = match self.take_over(&r).await {
                Some(pid) => pid,
                None => {
                    tracing::warn!(volume = %id, pid = r.pid, "the mount process is gone: mounting again");
                    match self.remount(&r).await {
                        Ok(pid) => pid,
                        Err(e) => {
                            tracing::error!(volume = %id, "mounting again: {e}");
                            continue;
                        }
                    }
                }
            };
            self.restarts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut r = r;
            r.pid = pid;
            if let Err(e) = self.save(&r) {
                tracing::error!(volume = %id, "saving the record: {e}");
            }
            self.records.lock().await.insert(id, r);
        }
    }

    /// Where volume `id`'s mount serves its metrics.
    fn metrics_socket(&self, id: &str) -> PathBuf {
        self.cfg
            .state_dir
            .join("metrics")
            .join(format!("{}.sock", stem(id)))
    }

    /// This node's metrics in the OpenMetrics text format: the plugin's
    /// own (`cairn_csi_staged_volumes`, `cairn_csi_mount_up{csi_volume}`,
    /// `cairn_csi_mount_restarts_total`), then every staged volume's
    /// client metrics, asked of its mount at this call, each sample
    /// labelled `csi_volume`. A mount that does not answer within
    /// [`SCRAPE_WITHIN`] shows as `cairn_csi_mount_up 0` and adds nothing.
    pub async fn metrics(&self) -> String {
        use cairn_client::metrics::{escape_label_value, merge_expositions};
        let mut ids: Vec<String> = self.records.lock().await.keys().cloned().collect();
        ids.sort();
        let scrapes =
            futures::future::join_all(ids.iter().map(|id| scrape_unix(self.metrics_socket(id))))
                .await;
        let mut own = format!(
            "# HELP cairn_csi_staged_volumes Volumes staged (mounted) on this node.\n\
             # TYPE cairn_csi_staged_volumes gauge\n\
             cairn_csi_staged_volumes {}\n\
             # HELP cairn_csi_mount_up Whether the volume's mount process answered this scrape.\n\
             # TYPE cairn_csi_mount_up gauge\n",
            ids.len()
        );
        let mut sources = Vec::new();
        for (id, text) in ids.iter().zip(scrapes) {
            let up = u8::from(text.is_some());
            own.push_str(&format!(
                "cairn_csi_mount_up{{csi_volume=\"{}\"}} {up}\n",
                escape_label_value(id)
            ));
            if let Some(t) = text {
                sources.push((id.clone(), t));
            }
        }
        own.push_str(&format!(
            "# HELP cairn_csi_mount_restarts Mount processes started again after they died.\n\
             # TYPE cairn_csi_mount_restarts counter\n\
             cairn_csi_mount_restarts_total {}\n",
            self.restarts.load(std::sync::atomic::Ordering::Relaxed)
        ));
        own.push_str(&merge_expositions("csi_volume", &sources));
        own
    }

    /// Takes volume `id`'s lock.
    async fn lock_volume(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .volume_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(id.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// Runs [`Self::supervise_once`] every [`SUPERVISE_EVERY`].
    pub fn spawn_supervisor(&self) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(SUPERVISE_EVERY) => {}
                    () = me.exited.notified() => {}
                }
                me.supervise_once().await;
            }
        })
    }

    /// Mounts a volume whose mount process died again on its staging path,
    /// and binds the new mount over each pod path *on top of* the pod's
    /// dead bind mount rather than in its place: a pod whose volume mount
    /// receives the node's mounts (`mountPropagation: HostToContainer`)
    /// holds a copy of that dead bind mount, and a mount made on top of it
    /// propagates into the pod, so such a pod reads and writes again
    /// without a restart. Pods with the default propagation (None) keep
    /// the dead mount until they restart.
    async fn remount(&self, r: &Record) -> Result<u32, String> {
        unmount(&r.staging_path, true)?;
        let pid = self
            .spawn_mount(&r.volume_id, &r.staging_path, &r.args, None)
            .await?;
        self.keep_fuse_fd(&r.volume_id, pid);
        for (t, ro) in &r.targets {
            bind(&r.staging_path, t, *ro)?;
        }
        Ok(pid)
    }

    /// Wakes the supervisor when process `pid` exits (a pidfd turns
    /// readable then).
    fn watch_exit(&self, pid: u32) {
        use rustix::process::{Pid, PidfdFlags, pidfd_open};
        let Some(p) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
            return;
        };
        let Ok(pidfd) = pidfd_open(p, PidfdFlags::empty()) else {
            return;
        };
        let exited = self.exited.clone();
        // A thread per mount process, asleep until it exits.
        let _ = std::thread::Builder::new()
            .name(format!("watch-{pid}"))
            .spawn(move || {
                use rustix::event::{PollFd, PollFlags, poll};
                let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
                while let Err(rustix::io::Errno::INTR) = poll(&mut fds, None) {}
                exited.notify_one();
            });
    }

    /// Keeps a copy of volume `id`'s FUSE connection from its mount
    /// process `pid`, if not held already, and watches for its exit.
    fn keep_fuse_fd(&self, id: &str, pid: u32) {
        let mut fds = self
            .fuse_fds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if fds.contains_key(id) {
            return;
        }
        match grab_fuse_fd(pid) {
            Ok(fd) => {
                fds.insert(id.to_string(), fd);
                self.watch_exit(pid);
            }
            Err(e) => tracing::warn!(
                volume = %id, pid,
                "no copy of the mount's FUSE connection ({e}): if its process dies, pods \
                 holding the mount need a restart"
            ),
        }
    }

    /// Serves volume `r`'s mount, whose process died, with a new process
    /// on the same FUSE connection (the copy this plugin holds kept it
    /// alive): the pods' requests waited and now go on. `None` when no
    /// copy is held or the takeover failed (the connection then ends and
    /// the caller mounts again).
    async fn take_over(&self, r: &Record) -> Option<u32> {
        let id = &r.volume_id;
        let fd = {
            let fds = self
                .fuse_fds
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            fds.get(id).map(OwnedFd::try_clone)
        };
        let fd = match fd? {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(volume = %id, "copying the FUSE connection: {e}");
                return None;
            }
        };
        tracing::warn!(volume = %id, pid = r.pid, "the mount process is gone: taking over its mount");
        match self
            .spawn_mount(id, &r.staging_path, &r.args, Some(fd))
            .await
        {
            Ok(pid) => {
                tracing::info!(volume = %id, pid, "took over the mount");
                self.watch_exit(pid);
                Some(pid)
            }
            Err(e) => {
                tracing::error!(volume = %id, "taking over the mount: {e}; mounting again");
                // Without this copy nobody holds the connection: it ends,
                // and the mount is made again.
                self.fuse_fds
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(id);
                None
            }
        }
    }

    /// Starts `cairn ARGS` detached and waits until `staging` is mounted;
    /// with `takeover`, a FUSE connection of the mount at `staging`, the
    /// process serves that instead (`--fuse-fd-on-stdin`) and this waits
    /// until the mount answers.
    async fn spawn_mount(
        &self,
        volume: &str,
        staging: &str,
        args: &[String],
        takeover: Option<OwnedFd>,
    ) -> Result<u32, String> {
        use std::os::unix::process::CommandExt;
        std::fs::create_dir_all(staging).map_err(|e| format!("creating {staging}: {e}"))?;
        let log_path = self
            .cfg
            .state_dir
            .join("logs")
            .join(format!("{}.log", stem(volume)));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let taking_over = takeover.is_some();
        let mut cmd = Command::new(&self.cfg.cairn);
        cmd.args(args);
        match takeover {
            Some(fd) => {
                cmd.arg("--fuse-fd-on-stdin").stdin(Stdio::from(fd));
            }
            None => {
                cmd.stdin(Stdio::null());
            }
        }
        let mut child = cmd
            .stdout(log)
            .stderr(err)
            // Its own process group: a signal to the plugin's group (a
            // terminal's ^C, a supervisor stopping the plugin) is not one
            // to the mounts.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.cfg.cairn.display()))?;
        let pid = child.id();
        if let Some(name) = self.cfg.mount_cgroup.clone() {
            let node = self.cfg.node_pid;
            let placed = tokio::task::spawn_blocking(move || {
                crate::cgroup::place_on_node(node, &name, Some(pid))
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            if let Err(e) = placed {
                // A mount that would end with this container is not what
                // the operator asked for: refuse it.
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        }
        let t0 = Instant::now();
        // A taken-over mount is mounted all along: it is up once it
        // answers a statfs, which the kernel never answers from its caches
        // and so waits until the new process serves.
        let answered = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if taking_over {
            let (answered, staging) = (answered.clone(), staging.to_string());
            std::thread::spawn(move || {
                if rustix::fs::statvfs(staging.as_str()).is_ok() {
                    answered.store(true, std::sync::atomic::Ordering::Release);
                }
            });
        }
        let up = || {
            if taking_over {
                answered.load(std::sync::atomic::Ordering::Acquire)
            } else {
                is_fuse_mounted(staging)
            }
        };
        loop {
            if up() {
                // Reaped by a thread of its own once it exits, so a dead
                // mount never lingers as a zombie under a live plugin.
                std::thread::spawn(move || {
                    let _ = child.wait();
                });
                return Ok(pid);
            }
            if let Ok(Some(s)) = child.try_wait() {
                return Err(format!(
                    "the mount process exited ({s}) before mounting: {}",
                    log_tail(&log_path)
                ));
            }
            if t0.elapsed() > MOUNT_WITHIN {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "not mounted within {MOUNT_WITHIN:?}: {}",
                    log_tail(&log_path)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn record_path(&self, volume: &str) -> PathBuf {
        self.cfg
            .state_dir
            .join("volumes")
            .join(format!("{}.json", stem(volume)))
    }

    fn key_path(&self, volume: &str) -> PathBuf {
        self.cfg
            .state_dir
            .join("keys")
            .join(format!("{}.key", stem(volume)))
    }

    /// Writes a record atomically (temporary file, fsync, rename).
    fn save(&self, r: &Record) -> std::io::Result<()> {
        use std::io::Write;
        let path = self.record_path(&r.volume_id);
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(r).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    }

    fn write_key(&self, volume: &str, hex: &str) -> Result<PathBuf, Status> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let key = VolumeKey::from_hex(hex.trim()).ok_or_else(|| {
            Status::invalid_argument(format!(
                "secret {SECRET_KEY:?} is not a key: 64 hexadecimal digits (32 bytes) expected"
            ))
        })?;
        let text = KeyRing::single(crate::params::cairn_volume(volume), 1, key).to_file_text();
        let path = self.key_path(volume);
        let tmp = path.with_extension("key.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| internal("writing the key file", e))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| internal("writing the key file", e))?;
        Ok(path)
    }
}

fn capability(t: rpc::Type) -> NodeServiceCapability {
    NodeServiceCapability {
        r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })),
    }
}

fn flag(ctx: &HashMap<String, String>, key: &str, default: bool) -> bool {
    ctx.get(key).map_or(default, |v| v == "true")
}

#[tonic::async_trait]
impl pb::node_server::Node for Node {
    async fn node_stage_volume(
        &self,
        req: Request<pb::NodeStageVolumeRequest>,
    ) -> Result<Response<pb::NodeStageVolumeResponse>, Status> {
        let req = req.into_inner();
        let volume = required("volume_id", &req.volume_id)?.to_string();
        let staging = required("staging_target_path", &req.staging_target_path)?.to_string();
        let cap = single_capability(req.volume_capability.as_ref())?;
        let _volume = self.lock_volume(&volume).await;
        if let Some(r) = self.records.lock().await.get(&volume) {
            if r.staging_path != staging {
                return Err(Status::already_exists(format!(
                    "volume {volume} is staged at {} already",
                    r.staging_path
                )));
            }
            if mount_process_alive(r.pid, &staging) && is_fuse_mounted(&staging) {
                return Ok(Response::new(pb::NodeStageVolumeResponse {}));
            }
        }
        let ctx = &req.volume_context;
        let mut args: Vec<String> = vec![
            "--meta".into(),
            self.cfg.meta.clone(),
            "mount".into(),
            staging.clone(),
            "--volume".into(),
            format!("/{volume}"),
            "--allow-other".into(),
        ];
        if reader_only(Some(&cap)) {
            args.push("--read-only".into());
        }
        let socket = self.metrics_socket(&volume);
        if socket.as_os_str().len() <= MAX_SOCKET_PATH {
            args.extend(["--metrics-socket".into(), socket.display().to_string()]);
        } else {
            tracing::warn!(
                volume = %volume,
                "the metrics socket path is too long for a unix socket: this volume's \
                 mount is not scraped (shorten --state-dir)"
            );
        }
        if !flag(ctx, CTX_PREFETCH, true) {
            args.extend(["--read-ahead".into(), "0".into()]);
        }
        if flag(ctx, CTX_CACHE, true) {
            let dir = self.cfg.state_dir.join("cache").join(stem(&volume));
            std::fs::create_dir_all(&dir)
                .map_err(|e| internal("creating the cache directory", e))?;
            args.extend(["--cache-dir".into(), dir.display().to_string()]);
        } else {
            args.extend(["--cache-size".into(), "0".into()]);
        }
        if flag(ctx, CTX_ENCRYPTED, false) {
            let hex = req.secrets.get(SECRET_KEY).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "volume {volume} is encrypted: its key is needed in the node-stage secret, \
                     under {SECRET_KEY:?}"
                ))
            })?;
            let path = self.write_key(&volume, hex)?;
            args.extend([
                "--key-file".into(),
                format!(
                    "{}={}",
                    crate::params::cairn_volume(&volume),
                    path.display()
                ),
            ]);
        }
        // The volume must exist before a mount is tried (NOT_FOUND, not a
        // mount process failing later).
        match self.meta.resolve(&format!("/{volume}")).await {
            Ok(_) => {}
            Err(e) if e.code == cairn_client::ErrorCode::NotFound => {
                return Err(Status::not_found(format!("no volume {volume}")));
            }
            Err(e) => return Err(status(&format!("looking up volume {volume}"), &e)),
        }
        unmount(&staging, true).map_err(|e| internal("clearing the staging path", e))?;
        let pid = self
            .spawn_mount(&volume, &staging, &args, None)
            .await
            .map_err(|e| internal(&format!("mounting volume {volume}"), e))?;
        self.keep_fuse_fd(&volume, pid);
        let r = Record {
            volume_id: volume.clone(),
            staging_path: staging,
            args,
            pid,
            targets: Vec::new(),
        };
        self.save(&r)
            .map_err(|e| internal("saving the record", e))?;
        self.records.lock().await.insert(volume.clone(), r);
        tracing::info!(volume = %volume, pid, "staged");
        Ok(Response::new(pb::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        req: Request<pb::NodeUnstageVolumeRequest>,
    ) -> Result<Response<pb::NodeUnstageVolumeResponse>, Status> {
        let req = req.into_inner();
        let volume = required("volume_id", &req.volume_id)?.to_string();
        let staging = required("staging_target_path", &req.staging_target_path)?.to_string();
        let _volume = self.lock_volume(&volume).await;
        let rec = self.records.lock().await.get(&volume).cloned();
        unmount(&staging, false).map_err(|e| internal("unmounting the staging path", e))?;
        if let Some(r) = &rec {
            // The mount process exits once its mount is gone.
            let t0 = Instant::now();
            while mount_process_alive(r.pid, &r.staging_path)
                && t0.elapsed() < Duration::from_secs(10)
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if mount_process_alive(r.pid, &r.staging_path) {
                let _ = run("kill", &["-9", &r.pid.to_string()]);
            }
        }
        self.fuse_fds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&volume);
        // What the node kept for this volume goes with it: the key, the
        // SSD cache tier and the mount's log (a node stages many volumes
        // over its life).
        let _ = std::fs::remove_file(self.key_path(&volume));
        let _ = std::fs::remove_file(self.metrics_socket(&volume));
        let _ = std::fs::remove_dir_all(self.cfg.state_dir.join("cache").join(stem(&volume)));
        let _ = std::fs::remove_file(
            self.cfg
                .state_dir
                .join("logs")
                .join(format!("{}.log", stem(&volume))),
        );
        match std::fs::remove_file(self.record_path(&volume)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(internal("removing the record", e)),
        }
        self.records.lock().await.remove(&volume);
        tracing::info!(volume = %volume, "unstaged");
        Ok(Response::new(pb::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        req: Request<pb::NodePublishVolumeRequest>,
    ) -> Result<Response<pb::NodePublishVolumeResponse>, Status> {
        let req = req.into_inner();
        let volume = required("volume_id", &req.volume_id)?.to_string();
        let target = required("target_path", &req.target_path)?.to_string();
        let staging = required("staging_target_path", &req.staging_target_path)?.to_string();
        let cap = single_capability(req.volume_capability.as_ref())?;
        let read_only = req.readonly || reader_only(Some(&cap));
        let _volume = self.lock_volume(&volume).await;
        let mut recs = self.records.lock().await;
        let Some(r) = recs.get_mut(&volume) else {
            return Err(Status::failed_precondition(format!(
                "volume {volume} is not staged on this node"
            )));
        };
        if r.staging_path != staging {
            return Err(Status::failed_precondition(format!(
                "volume {volume} is staged at {}, not {staging}",
                r.staging_path
            )));
        }
        if let Some((_, ro)) = r.targets.iter().find(|(t, _)| *t == target) {
            if *ro != read_only {
                return Err(Status::already_exists(format!(
                    "{target} is published {} already",
                    if *ro { "read-only" } else { "read-write" }
                )));
            }
            if is_mounted(&target) {
                return Ok(Response::new(pb::NodePublishVolumeResponse {}));
            }
        }
        bind(&staging, &target, read_only).map_err(|e| internal("bind-mounting", e))?;
        if !r.targets.iter().any(|(t, _)| *t == target) {
            r.targets.push((target.clone(), read_only));
        }
        let r = r.clone();
        self.save(&r)
            .map_err(|e| internal("saving the record", e))?;
        tracing::info!(volume = %volume, target = %target, read_only, "published");
        Ok(Response::new(pb::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<pb::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<pb::NodeUnpublishVolumeResponse>, Status> {
        let req = req.into_inner();
        let volume = required("volume_id", &req.volume_id)?.to_string();
        let target = required("target_path", &req.target_path)?.to_string();
        let _volume = self.lock_volume(&volume).await;
        unmount(&target, false).map_err(|e| internal("unmounting", e))?;
        match std::fs::remove_dir(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(internal(&format!("removing {target}"), e)),
        }
        if let Some(r) = self.records.lock().await.get_mut(&volume) {
            r.targets.retain(|(t, _)| *t != target);
            let r = r.clone();
            self.save(&r)
                .map_err(|e| internal("saving the record", e))?;
        }
        tracing::info!(volume = %volume, target = %target, "unpublished");
        Ok(Response::new(pb::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<pb::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<pb::NodeGetVolumeStatsResponse>, Status> {
        use pb::volume_usage::Unit;
        let req = req.into_inner();
        let volume = required("volume_id", &req.volume_id)?;
        let path = required("volume_path", &req.volume_path)?;
        if !is_mounted(path) {
            return Err(Status::not_found(format!("{path} is not a mounted volume")));
        }
        let a = match self.meta.resolve(&format!("/{volume}")).await {
            Ok(a) => a,
            Err(e) if e.code == cairn_client::ErrorCode::NotFound => {
                return Err(Status::not_found(format!("no volume {volume}")));
            }
            Err(e) => return Err(status(&format!("looking up volume {volume}"), &e)),
        };
        let mut s = self
            .meta
            .statfs(cairn_proto::ids::VolumeId(a.volume_id))
            .await
            .map_err(|e| status(&format!("statfs of {volume}"), &e))?;
        // A directory volume: its quota's figures, not the shared volume's.
        if crate::params::split_dir_volume(volume).is_some() {
            if let Some(q) = self
                .meta
                .dir_quota(cairn_proto::ids::InodeId(a.ino))
                .await
                .map_err(|e| status(&format!("quota of {volume}"), &e))?
            {
                MetaClient::narrow_statfs(&mut s, &q);
            }
        }
        let i = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let healthy = self
            .records
            .lock()
            .await
            .get(volume)
            .is_some_and(|r| mount_process_alive(r.pid, &r.staging_path));
        Ok(Response::new(pb::NodeGetVolumeStatsResponse {
            usage: vec![
                pb::VolumeUsage {
                    available: i(s.free_bytes),
                    total: i(s.total_bytes),
                    used: i(s.used_bytes),
                    unit: Unit::Bytes as i32,
                },
                pb::VolumeUsage {
                    available: i(s.files_free),
                    total: i(s.files.saturating_add(s.files_free)),
                    used: i(s.files),
                    unit: Unit::Inodes as i32,
                },
            ],
            volume_condition: Some(pb::VolumeCondition {
                abnormal: !healthy,
                message: if healthy {
                    "mounted".into()
                } else {
                    "the mount process is not running; the plugin is starting it again".into()
                },
            }),
        }))
    }

    async fn node_expand_volume(
        &self,
        _: Request<pb::NodeExpandVolumeRequest>,
    ) -> Result<Response<pb::NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "NodeExpandVolume: not needed, a Cairn volume grows on the controller (its quota) and every mount sees it at once",
        ))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<pb::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<pb::NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(pb::NodeGetCapabilitiesResponse {
            capabilities: vec![
                capability(rpc::Type::StageUnstageVolume),
                capability(rpc::Type::GetVolumeStats),
                capability(rpc::Type::VolumeCondition),
            ],
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<pb::NodeGetInfoRequest>,
    ) -> Result<Response<pb::NodeGetInfoResponse>, Status> {
        Ok(Response::new(pb::NodeGetInfoResponse {
            node_id: self.cfg.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: self.cfg.zone.as_ref().map(|z| pb::Topology {
                segments: [(crate::ZONE_KEY.to_string(), z.clone())].into(),
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/x\\134y"), "/x\\y");
        assert_eq!(unescape("/end\\04"), "/end\\04");
    }

    #[test]
    fn the_root_is_a_mount_point() {
        assert!(is_mounted("/"));
        assert!(!is_mounted("/surely/not/a/mount/point"));
    }
}
