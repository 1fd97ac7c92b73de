//! `cairn-chunkserver`: stores chunk replicas of one target (one data
//! directory on one SSD) and serves Cairn's data plane.
//!
//! Only parses flags, sets up logging and calls
//! [`cairn_chunkserver::node::start`]. SIGINT and SIGTERM stop it cleanly
//! (stores flushed); `kill -9` loses nothing acknowledged.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cairn_chunkserver::node::{self, ChunkserverConfig};
use cairn_chunkserver::scrub::ScrubConfig;
use cairn_proto::units::parse_size;
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Counts allocations for the `heap_allocations_total` metric (when
/// `CAIRN_COUNT_ALLOCATIONS=1`).
#[global_allocator]
static ALLOCATOR: cairn_proto::heap::Counting = cairn_proto::heap::Counting;

/// A Cairn chunkserver: chunk replicas on local disk, chain replication,
/// one thread per shard.
///
/// On first start it formats DATA_DIR as a target with --shards shards (the
/// count is fixed from then on), registers with meta and serves the shards
/// on consecutive ports from --port.
#[derive(Debug, Parser)]
#[command(name = "cairn-chunkserver", version, about, max_term_width = 100)]
struct Args {
    /// Meta replicas, comma separated.
    #[arg(
        long,
        env = "CAIRN_META",
        value_delimiter = ',',
        required = true,
        value_name = "HOST:PORT,..."
    )]
    meta: Vec<String>,
    /// The target directory: chunk data and block maps.
    #[arg(long, env = "CAIRN_CHUNKSERVER_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,
    /// Address the shards listen on.
    #[arg(long, env = "CAIRN_CHUNKSERVER_LISTEN", default_value = "127.0.0.1")]
    listen: IpAddr,
    /// Host name or address clients and peers use (default: --listen).
    #[arg(long, env = "CAIRN_CHUNKSERVER_ADVERTISE")]
    advertise: Option<String>,
    /// First shard port; shard k listens on PORT + k. 0 picks free ports.
    #[arg(long, env = "CAIRN_CHUNKSERVER_PORT", default_value_t = 0)]
    port: u16,
    /// Shards (one executor thread each) when formatting a new target.
    #[arg(long, env = "CAIRN_CHUNKSERVER_SHARDS", default_value_t = 1)]
    shards: u32,
    /// Failure domain (rack, zone) for placement.
    #[arg(long, env = "CAIRN_CHUNKSERVER_ZONE", default_value = "")]
    zone: String,
    /// Space the target may use (e.g. "100GiB"); default: the whole file system.
    #[arg(long, env = "CAIRN_CHUNKSERVER_CAPACITY", value_parser = parse_size)]
    capacity: Option<u64>,
    /// Serve Prometheus metrics on http://ADDR/metrics.
    #[arg(long, env = "CAIRN_CHUNKSERVER_METRICS_LISTEN", value_name = "IP:PORT")]
    metrics_listen: Option<SocketAddr>,
    /// Scrubber read rate per shard (e.g. "32MiB"); 0 means unlimited.
    #[arg(long, env = "CAIRN_CHUNKSERVER_SCRUB_RATE", value_parser = parse_size, default_value = "32MiB")]
    scrub_rate: u64,
    /// Pause between two scrub passes (e.g. "1h").
    #[arg(long, env = "CAIRN_CHUNKSERVER_SCRUB_INTERVAL", value_parser = humantime::parse_duration, default_value = "1h")]
    scrub_interval: Duration,
    /// Longest a forward down the chain or a tail query may take.
    #[arg(long, env = "CAIRN_CHUNKSERVER_PEER_TIMEOUT", value_parser = humantime::parse_duration, default_value = "5s")]
    peer_timeout: Duration,
    /// Bytes per second this chunkserver sends to resync or repair other
    /// replicas of its chains (0: unlimited).
    #[arg(long, env = "CAIRN_CHUNKSERVER_RESYNC_RATE", value_parser = parse_size, default_value = "1GiB")]
    resync_rate: u64,
    /// How often to report the chunks held to meta (e.g. "10m"); meta
    /// answers with orphans (confirmed in two reports) to remove.
    #[arg(long, env = "CAIRN_CHUNKSERVER_CHUNK_REPORT_INTERVAL", value_parser = humantime::parse_duration, default_value = "10m")]
    chunk_report_interval: Duration,
    /// How long an idle shard busy-polls before sleeping (e.g. "100us"; use
    /// it only with cores to spare: on 2 shared cores it measured slower):
    /// lower latency for the next request, more CPU while idle. "0s" sleeps
    /// at once.
    #[arg(long, env = "CAIRN_CHUNKSERVER_SPIN", value_parser = humantime::parse_duration, default_value = "0s")]
    spin_before_park: Duration,
}

fn main() -> ExitCode {
    cairn_chunkserver::heap::enable();
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cfg = ChunkserverConfig {
        meta: args.meta,
        data_dir: args.data_dir,
        listen_ip: args.listen,
        advertise_host: args.advertise.unwrap_or_else(|| args.listen.to_string()),
        port_base: args.port,
        shards: args.shards.max(1),
        zone: args.zone,
        capacity_bytes: args.capacity,
        metrics_listen: args.metrics_listen,
        scrub: ScrubConfig {
            bytes_per_sec: args.scrub_rate,
            interval_between_passes: args.scrub_interval,
        },
        peer_timeout: args.peer_timeout,
        resync_rate: args.resync_rate,
        chunk_report_interval: args.chunk_report_interval,
        spin_before_park: args.spin_before_park,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn-chunkserver: {e}");
            return ExitCode::FAILURE;
        }
    };
    let signals = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    });
    let (mut int, mut term) = match signals {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cairn-chunkserver: installing signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cs = match node::start(cfg) {
        Ok(cs) => cs,
        Err(e) => {
            tracing::error!("failed to start: {e}");
            eprintln!("cairn-chunkserver: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ports: Vec<String> = cs.shard_addrs.iter().map(ToString::to_string).collect();
    // One line on stdout for scripts and tests to wait for.
    println!("cairn-chunkserver ready: shards {}", ports.join(","));
    let sig = rt.block_on(async {
        tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    });
    tracing::info!(signal = sig, "shutting down");
    if sig == "SIGTERM" {
        // A restart (rolling update, maintenance): leave the chains first
        // so writes route around this chunkserver at once.
        if cs.leave(Duration::from_secs(5)) {
            tracing::info!("meta took this chunkserver's targets out of their chains");
        } else {
            tracing::warn!("meta did not confirm leaving in time; stopping anyway");
        }
    }
    cs.stop();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
