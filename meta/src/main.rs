//! `cairn-meta`: one replica of the Cairn metadata service.
//!
//! Only parses flags, loads the configuration, sets up tracing and calls
//! [`cairn_meta::start`]; everything else lives in the library.
//!
//! Configuration is layered: [`MetaConfig::default`], then the JSON file of
//! `--config` (kebab-case keys as in `MetaConfig`, durations as "500ms";
//! unknown keys are warned about, not rejected, so an older binary still
//! reads a newer file), then `CAIRN_META_*` environment variables, then
//! flags. JSON rather than TOML keeps the dependency list as it is.
//!
//! SIGINT and SIGTERM resolve the shutdown future given to `start`; the
//! process exits 0 once the replica has stopped cleanly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cairn_meta::MetaConfig;
use cairn_proto::units::parse_size;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

/// Log filter when `RUST_LOG` is not set: our info lines, and only
/// openraft's warnings and errors (its info level is per-entry chatter).
const DEFAULT_LOG: &str = "info,openraft=warn";

/// One replica of the Cairn metadata service (Raft-replicated namespace,
/// layouts, sessions and chain table).
#[derive(Debug, Parser)]
#[command(name = "cairn-meta", version, about, max_term_width = 100)]
struct Args {
    /// JSON configuration file; environment variables and flags override it.
    #[arg(long, env = "CAIRN_META_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory of the sled database (Raft log, state machine, identity).
    #[arg(long, env = "CAIRN_META_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address the gRPC server listens on.
    #[arg(long, env = "CAIRN_META_LISTEN", value_name = "IP:PORT")]
    listen: Option<SocketAddr>,
    /// Address peers and clients reach this replica at (default: --listen).
    #[arg(long, env = "CAIRN_META_ADVERTISE", value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// Bootstrap a new cluster when the data directory is empty and no join
    /// peer knows one (only the first replica).
    #[arg(
        long,
        env = "CAIRN_META_BOOTSTRAP",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL"
    )]
    bootstrap: Option<bool>,
    /// Bootstrap (as --bootstrap) only on the StatefulSet pod of this
    /// ordinal, read from the host name ("cairn-meta-0" is ordinal 0): one
    /// pod spec for every replica, and only the first may found a cluster.
    #[arg(
        long,
        env = "CAIRN_META_BOOTSTRAP_ORDINAL",
        conflicts_with = "bootstrap",
        value_name = "N"
    )]
    bootstrap_ordinal: Option<u32>,
    /// Existing replicas to join when the data directory is empty.
    #[arg(
        long,
        env = "CAIRN_META_JOIN",
        value_delimiter = ',',
        value_name = "ADDRS"
    )]
    join: Option<Vec<String>>,
    /// Voters the cluster grows to by promoting caught-up learners.
    #[arg(long, env = "CAIRN_META_REPLICAS")]
    replicas: Option<usize>,
    /// Raft heartbeat interval (e.g. "100ms").
    #[arg(long, env = "CAIRN_META_RAFT_HEARTBEAT", value_parser = humantime::parse_duration)]
    raft_heartbeat: Option<Duration>,
    /// Raft election timeout, the minimum (e.g. "1s").
    #[arg(long, env = "CAIRN_META_ELECTION_TIMEOUT", value_parser = humantime::parse_duration)]
    election_timeout: Option<Duration>,
    /// A chunkserver silent this long is declared dead (e.g. "10s").
    #[arg(long, env = "CAIRN_META_CHUNKSERVER_TIMEOUT", value_parser = humantime::parse_duration)]
    chunkserver_timeout: Option<Duration>,
    /// Keep a deleted file's data this long before removing it from the
    /// chunkservers (e.g. "10m"); longer than any client cache TTL.
    #[arg(long, env = "CAIRN_META_GC_GRACE", value_parser = humantime::parse_duration)]
    gc_grace: Option<Duration>,
    /// Remove at most this many chunks per second when collecting deleted
    /// files' data (each removal touches every replica of a chain), so
    /// that mass deletes never starve foreground I/O.
    #[arg(long, env = "CAIRN_META_GC_CHUNKS_PER_SEC")]
    gc_chunks_per_sec: Option<u64>,
    /// Replace a chunkserver's targets in their chains (re-replicating
    /// their data onto other chunkservers) once it has been dead this long
    /// (e.g. "5m"); a shorter outage is caught up by version instead.
    #[arg(long, env = "CAIRN_META_REPLACE_AFTER", value_parser = humantime::parse_duration)]
    replace_after: Option<Duration>,
    /// A chunkserver that announced a restart (SIGTERM) is not replaced
    /// in its chains before this long (e.g. "30m"); back sooner, it is
    /// resynced by version.
    #[arg(long, env = "CAIRN_META_MAINTENANCE_WINDOW", value_parser = humantime::parse_duration)]
    maintenance_window: Option<Duration>,
    /// A client session not renewed this long expires (e.g. "60s").
    #[arg(long, env = "CAIRN_META_SESSION_TIMEOUT", value_parser = humantime::parse_duration)]
    session_timeout: Option<Duration>,
    /// Snapshot the state machine (and compact the log) every N entries.
    #[arg(long, env = "CAIRN_META_SNAPSHOT_EVERY", value_name = "N")]
    snapshot_every: Option<u64>,
    /// sled page-cache size (e.g. "64MiB").
    #[arg(long, env = "CAIRN_META_CACHE_BYTES", value_parser = parse_size, value_name = "SIZE")]
    cache_bytes: Option<u64>,
    /// Threads of the async runtime. A replica's mutations are serialized
    /// through Raft and its state machine anyway; with more threads they
    /// mostly wake each other: on a 2-core machine one thread measured
    /// twice the mutations per second of two, at half the CPU each. Raise
    /// it for many concurrent readers on a machine of its own.
    #[arg(long, env = "CAIRN_META_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    worker_threads: u16,
    /// Serve Prometheus metrics on http://ADDR/metrics (e.g. "127.0.0.1:9101").
    #[arg(long, env = "CAIRN_META_METRICS_LISTEN", value_name = "IP:PORT")]
    metrics_listen: Option<std::net::SocketAddr>,
}

/// Warns about keys of the config file that `MetaConfig` does not know.
fn warn_unknown_keys(file: &serde_json::Value) {
    let known = serde_json::to_value(MetaConfig::default()).unwrap_or_default();
    if let (Some(file), Some(known)) = (file.as_object(), known.as_object()) {
        for k in file.keys().filter(|k| !known.contains_key(*k)) {
            warn!(key = %k, "unknown key in the configuration file; ignored");
        }
    }
}

/// Returns the configuration: defaults, then the file, then environment
/// and flags (clap already merged those two).
fn load(args: Args) -> Result<MetaConfig, String> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| format!("{} is not valid JSON: {e}", path.display()))?;
            warn_unknown_keys(&value);
            serde_json::from_value(value).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => MetaConfig::default(),
    };
    let Args {
        config: _,
        worker_threads: _,
        data_dir,
        listen,
        advertise,
        bootstrap,
        bootstrap_ordinal,
        join,
        replicas,
        raft_heartbeat,
        election_timeout,
        chunkserver_timeout,
        gc_grace,
        gc_chunks_per_sec,
        replace_after,
        maintenance_window,
        session_timeout,
        snapshot_every,
        cache_bytes,
        metrics_listen,
    } = args;
    if let Some(v) = data_dir {
        cfg.data_dir = v;
    }
    if let Some(v) = listen {
        cfg.listen = v;
    }
    if let Some(v) = advertise {
        cfg.advertise = Some(v).filter(|a| !a.trim().is_empty());
    }
    if let Some(v) = bootstrap {
        cfg.bootstrap = v;
    }
    if let Some(want) = bootstrap_ordinal {
        let host = host_name()?;
        let Some(ordinal) = cairn_meta::config::statefulset_ordinal(&host) else {
            return Err(format!(
                "--bootstrap-ordinal: the host name {host:?} does not end in a StatefulSet \
                 ordinal (\"-N\"); use --bootstrap on the one replica that may found the cluster"
            ));
        };
        cfg.bootstrap = ordinal == want;
    }
    if let Some(v) = join {
        cfg.join = v
            .into_iter()
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
    }
    if let Some(v) = replicas {
        cfg.replicas = v;
    }
    if let Some(v) = raft_heartbeat {
        cfg.raft_heartbeat = v;
    }
    if let Some(v) = election_timeout {
        cfg.election_timeout = v;
    }
    if let Some(v) = chunkserver_timeout {
        cfg.chunkserver_timeout = v;
    }
    if let Some(v) = gc_grace {
        cfg.gc_grace = v;
    }
    if let Some(v) = gc_chunks_per_sec {
        cfg.gc_chunks_per_sec = v;
    }
    if let Some(v) = replace_after {
        cfg.replace_after = v;
    }
    if let Some(v) = maintenance_window {
        cfg.maintenance_window = v;
    }
    if let Some(v) = session_timeout {
        cfg.session_timeout = v;
    }
    if let Some(v) = snapshot_every {
        cfg.snapshot_every = v;
    }
    if let Some(v) = cache_bytes {
        cfg.cache_bytes = v;
    }
    if let Some(v) = metrics_listen {
        cfg.metrics_listen = Some(v);
    }
    cfg.validate()?;
    Ok(cfg)
}

/// The host name: `$HOSTNAME` (what Kubernetes sets to the pod name), else
/// the kernel's.
fn host_name() -> Result<String, String> {
    if let Ok(h) = std::env::var("HOSTNAME")
        && !h.trim().is_empty()
    {
        return Ok(h.trim().to_string());
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .map_err(|e| format!("reading the host name: {e}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.worker_threads))
        .enable_all()
        .build();
    match runtime {
        Ok(rt) => {
            let code = rt.block_on(run(args));
            // A task stuck in I/O (a full or failing disk) must not keep
            // a stopped replica's process alive.
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
            code
        }
        Err(e) => {
            eprintln!("cairn-meta: starting the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();

    let cfg = match load(args) {
        Ok(c) => c,
        Err(e) => {
            error!("configuration: {e}");
            eprintln!("cairn-meta: configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Install the handlers before starting, so an early signal is not lost.
    let (mut int, mut term) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("cairn-meta: installing signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = async move {
        let sig = tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        };
        info!(signal = sig, "shutting down");
    };

    info!(version = env!("CARGO_PKG_VERSION"), config = ?cfg, "starting cairn-meta");
    let handle = match cairn_meta::start(cfg, shutdown).await {
        Ok(h) => h,
        Err(e) => {
            error!(error = %e, "cairn-meta failed to start");
            eprintln!("cairn-meta: {e}");
            return ExitCode::FAILURE;
        }
    };
    info!(node_id = handle.node_id, addr = %handle.addr, "cairn-meta serving");
    match handle.wait().await {
        Ok(()) => {
            info!("cairn-meta stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(error = %e, "cairn-meta stopped with an error");
            eprintln!("cairn-meta: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_sizes_parse() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("meta.json");
        std::fs::write(
            &file,
            r#"{"election-timeout":"2s","replicas":5,"bootstrap":true,"no-such-key":1}"#,
        )
        .unwrap();
        let args = Args::try_parse_from([
            "cairn-meta",
            "--config",
            file.to_str().unwrap(),
            "--replicas=3",
            "--join",
            "a:1,b:2",
            "--cache-bytes",
            "16MiB",
        ])
        .unwrap();
        let cfg = load(args).unwrap();
        assert_eq!(cfg.election_timeout, Duration::from_secs(2));
        assert_eq!(cfg.replicas, 3);
        assert!(cfg.bootstrap);
        assert_eq!(cfg.join, ["a:1", "b:2"]);
        assert_eq!(cfg.cache_bytes, 16 << 20);
        let args = Args::try_parse_from(["cairn-meta", "--bootstrap"]).unwrap();
        assert_eq!(args.bootstrap, Some(true));
        let args = Args::try_parse_from(["cairn-meta", "--bootstrap=false"]).unwrap();
        assert_eq!(args.bootstrap, Some(false));
        assert!(parse_size("1.5G").is_err());
        assert_eq!(parse_size("2g"), Ok(2 << 30));
    }
}
