//! `cairn-csi`: the Cairn CSI driver (Container Storage Interface v1 on a
//! unix socket). See the library docs for what each service does.
//!
//! One binary serves the controller (with the external-provisioner
//! sidecar, in a Deployment) and the node side (with the
//! node-driver-registrar, in a DaemonSet): `--mode controller|node|all`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cairn_client::{MetaClient, MetaClientOptions};
use cairn_csi::cgroup;
use cairn_csi::controller::Controller;
use cairn_csi::identity::Identity;
use cairn_csi::node::{Node, NodeConfig};
use cairn_csi::pb;
use clap::{Parser, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Identity and Controller (volumes: create, delete, capacity).
    Controller,
    /// Identity and Node (mounts on this machine).
    Node,
    /// All three services (a single-machine setup, tests).
    All,
}

/// The Cairn CSI driver: Cairn volumes for Kubernetes pods.
#[derive(Debug, Parser)]
#[command(name = "cairn-csi", version, about, max_term_width = 100)]
struct Args {
    /// The socket to serve on: a path or unix:///path (what the sidecars
    /// are given as --csi-address).
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    endpoint: String,
    /// Which services to serve.
    #[arg(long, value_enum, default_value = "all")]
    mode: Mode,
    /// Meta replicas, comma separated.
    #[arg(long, env = "CAIRN_META", value_name = "HOST:PORT,...")]
    meta: String,
    /// This node's id (NodeGetInfo); default: the host name.
    #[arg(long, env = "CSI_NODE_ID")]
    node_id: Option<String>,
    /// This node's zone, reported by NodeGetInfo as
    /// topology.kubernetes.io/zone (empty: none).
    #[arg(long, env = "CSI_NODE_ZONE")]
    zone: Option<String>,
    /// Where the node side keeps its records of staged volumes, key files,
    /// mount logs and cache directories (keep it on the host: a restarted
    /// plugin adopts the mounts recorded there).
    #[arg(long, default_value = "/var/lib/cairn-csi")]
    state_dir: PathBuf,
    /// Move each volume's mount process into this cgroup at the root of
    /// the node's cgroup hierarchies (made if missing), out of this
    /// container's, so that restarting, upgrading or deleting the node
    /// plugin's container leaves the pods' mounts serving (node mode).
    /// Needs the node's PID namespace (hostPID), privileges and nsenter.
    /// Without it the mounts outlive this process but not its container.
    #[arg(long, env = "CSI_MOUNT_CGROUP", value_name = "NAME")]
    mount_cgroup: Option<String>,
    /// With --mount-cgroup: a process of the node's own (outside every
    /// container) whose cgroup namespace and file system the mounts'
    /// cgroups are reached through. The node's init, PID 1, unless a
    /// sandbox keeps the plugin from it.
    #[arg(
        long,
        env = "CSI_NODE_PID",
        default_value_t = 1,
        value_name = "PID",
        requires = "mount_cgroup"
    )]
    node_pid: u32,
    /// The `cairn` binary that runs each volume's mount (default: the one
    /// beside this binary, else `cairn` on PATH).
    #[arg(long)]
    cairn: Option<PathBuf>,
    /// Serve this node's metrics at http://IP:PORT/metrics (node mode):
    /// every staged volume's client metrics (reads, writes, checkpoints,
    /// cache tiers), labelled csi_volume, and the plugin's own.
    #[arg(long, env = "CSI_METRICS_LISTEN", value_name = "IP:PORT")]
    metrics_listen: Option<std::net::SocketAddr>,
}

fn socket_path(endpoint: &str) -> PathBuf {
    PathBuf::from(endpoint.strip_prefix("unix://").unwrap_or(endpoint))
}

fn default_cairn() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("cairn")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("cairn"))
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Refuses `--mount-cgroup` where it cannot keep mounts alive, before any
/// volume is staged: the name, the PID namespace, and one placement of
/// nothing (the cgroups are made; nsenter and the node's cgroup file
/// system work).
fn check_mount_cgroup(name: &str, node_pid: u32, node_side: bool) -> anyhow::Result<()> {
    if !node_side {
        anyhow::bail!(
            "--mount-cgroup is for the node side's mounts: use it with --mode node or all"
        );
    }
    if !cgroup::valid_name(name) {
        anyhow::bail!(
            "--mount-cgroup {name:?}: a cgroup name is letters, digits, '-', '_' and '.' \
             (at most 64)"
        );
    }
    if !cgroup::in_node_pid_namespace(node_pid) {
        anyhow::bail!(
            "--mount-cgroup needs the node's PID namespace (hostPID: true in the pod, \
             --pid=host under docker): in a PID namespace of the container's own, the \
             mounts end with the container whatever their cgroup"
        );
    }
    cgroup::place_on_node(node_pid, name, None)
        .map_err(|e| anyhow::anyhow!("--mount-cgroup: {e}"))?;
    tracing::info!(
        cgroup = name,
        "mount processes go to this cgroup of the node"
    );
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let opts = MetaClientOptions {
        deadline: Duration::from_secs(30),
        ..MetaClientOptions::default()
    };
    let meta = MetaClient::connect(args.meta.split(','), opts)
        .await
        .map_err(|e| anyhow::anyhow!("--meta {}: {e}", args.meta))?;
    let controller = matches!(args.mode, Mode::Controller | Mode::All);
    let node_side = matches!(args.mode, Mode::Node | Mode::All);
    if args.metrics_listen.is_some() && !node_side {
        anyhow::bail!(
            "--metrics-listen serves the node side's mounts: use it with --mode node or all"
        );
    }
    if let Some(name) = &args.mount_cgroup {
        check_mount_cgroup(name, args.node_pid, node_side)?;
    }
    let node = if node_side {
        let cfg = NodeConfig {
            node_id: args.node_id.clone().unwrap_or_else(host_name),
            zone: args.zone.clone().filter(|z| !z.trim().is_empty()),
            meta: args.meta.clone(),
            cairn: args.cairn.clone().unwrap_or_else(default_cairn),
            state_dir: args.state_dir.clone(),
            mount_cgroup: args.mount_cgroup.clone(),
            node_pid: args.node_pid,
        };
        let n = Node::new(cfg, meta.clone()).await?;
        n.spawn_supervisor();
        if let Some(addr) = args.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: {e}"))?;
            tracing::info!(addr = %listener.local_addr()?, "serving node metrics at /metrics");
            let node = n.clone();
            tokio::spawn(async move {
                while let Ok((sock, _)) = listener.accept().await {
                    let node = node.clone();
                    tokio::spawn(async move {
                        cairn_client::metrics::answer(sock, async { node.metrics().await }).await;
                    });
                }
            });
        }
        Some(n)
    } else {
        None
    };
    let path = socket_path(&args.endpoint);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A socket left by a previous plugin.
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("removing the old socket {}: {e}", path.display()),
    }
    let listener = tokio::net::UnixListener::bind(&path)
        .map_err(|e| anyhow::anyhow!("listening on {}: {e}", path.display()))?;
    tracing::info!(endpoint = %path.display(), mode = ?args.mode, "cairn-csi serving");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    tonic::transport::Server::builder()
        .add_service(pb::identity_server::IdentityServer::new(Identity::new(
            meta.clone(),
            controller,
        )))
        .add_optional_service(
            controller.then(|| {
                pb::controller_server::ControllerServer::new(Controller::new(meta.clone()))
            }),
        )
        .add_optional_service(node.map(pb::node_server::NodeServer::new))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            stop,
        )
        .await?;
    // The mounts stay: they belong to the pods, not to this process.
    let _ = std::fs::remove_file(&path);
    tracing::info!("cairn-csi stopped; the volumes' mounts keep serving");
    Ok(())
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(cgroup::HELPER_ARG) {
        return cgroup::helper_main(&argv[2..]);
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn-csi: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("cairn-csi: {e:#}");
            ExitCode::FAILURE
        }
    }
}
