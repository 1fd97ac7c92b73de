//! Prometheus metrics of a metadata replica, served as text on
//! `GET /metrics` (DESIGN §8).
//!
//! * Per-RPC counters and latency histograms, recorded by a tower layer
//!   around the gRPC server, labelled by method (a bounded set) and status
//!   class (ok / error).
//! * Raft state (term, leader, commit and applied index, role), Raft log
//!   appends and fsyncs (their ratio is the group-commit factor), and
//!   counts from the state machine (sessions, chunkservers, chains).
//! * Corruption reports from chunkservers and the corrupt replicas the
//!   leader knows of (soft state, see `service::CorruptReplicas`).
//!
//! No path, inode or client id is ever a label.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::service::Shared;

/// Upper bounds of the latency histogram buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    5.0,
];

/// One method's latency histogram and counts.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    errors: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    fn observe(&self, seconds: f64, ok: bool) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }
}

/// Per-RPC metrics, keyed by gRPC method name.
#[derive(Default)]
pub struct RpcMetrics {
    methods: Mutex<BTreeMap<String, Arc<Histogram>>>,
    /// Calls answered on a Calls stream (they are in `methods` too).
    stream_calls: AtomicU64,
    /// Calls streams open now (about one per connected client).
    open_call_streams: AtomicU64,
}

impl RpcMetrics {
    /// Counts a Calls stream opened; [`Self::call_stream_closed`] when it
    /// ends.
    pub fn call_stream_opened(&self) {
        self.open_call_streams.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a Calls stream ended.
    pub fn call_stream_closed(&self) {
        self.open_call_streams.fetch_sub(1, Ordering::Relaxed);
    }

    /// Records one call of `method` (its gRPC name) made on a Calls
    /// stream that took `seconds`.
    pub fn observe_stream_call(&self, method: &str, seconds: f64, ok: bool) {
        self.histogram(method).observe(seconds, ok);
        self.stream_calls.fetch_add(1, Ordering::Relaxed);
    }

    fn histogram(&self, method: &str) -> Arc<Histogram> {
        let mut m = self.methods.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = m.get(method) {
            return h.clone();
        }
        // Methods come from our own services' paths; cap the map anyway so a
        // client sending random paths cannot grow it without bound.
        if m.len() >= 128 {
            return m
                .entry("other".to_string())
                .or_insert_with(|| Arc::new(Histogram::default()))
                .clone();
        }
        m.entry(method.to_string())
            .or_insert_with(|| Arc::new(Histogram::default()))
            .clone()
    }

    fn render(&self, out: &mut String) {
        let m = self.methods.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str("# HELP cairn_meta_rpc_duration_seconds gRPC request latency by method.\n");
        out.push_str("# TYPE cairn_meta_rpc_duration_seconds histogram\n");
        for (name, h) in m.iter() {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "cairn_meta_rpc_duration_seconds_bucket{{method=\"{name}\",le=\"{b}\"}} {}",
                    h.buckets[i].load(Ordering::Relaxed)
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "cairn_meta_rpc_duration_seconds_bucket{{method=\"{name}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "cairn_meta_rpc_duration_seconds_sum{{method=\"{name}\"}} {}",
                h.sum_us.load(Ordering::Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "cairn_meta_rpc_duration_seconds_count{{method=\"{name}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP cairn_meta_rpc_stream_calls_total Of the requests above, those made on a client's Calls stream.\n\
             # TYPE cairn_meta_rpc_stream_calls_total counter\n\
             cairn_meta_rpc_stream_calls_total {}\n\
             # HELP cairn_meta_call_streams Clients' Calls streams open on this replica.\n\
             # TYPE cairn_meta_call_streams gauge\n\
             cairn_meta_call_streams {}",
            self.stream_calls.load(Ordering::Relaxed),
            self.open_call_streams.load(Ordering::Relaxed)
        );
        out.push_str("# HELP cairn_meta_rpc_errors_total gRPC requests answered with an error.\n");
        out.push_str("# TYPE cairn_meta_rpc_errors_total counter\n");
        for (name, h) in m.iter() {
            let _ = writeln!(
                out,
                "cairn_meta_rpc_errors_total{{method=\"{name}\"}} {}",
                h.errors.load(Ordering::Relaxed)
            );
        }
    }
}

/// A tower layer that records every gRPC request in [`RpcMetrics`].
#[derive(Clone)]
pub struct RpcMetricsLayer(pub Arc<RpcMetrics>);

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// The service [`RpcMetricsLayer`] wraps around the gRPC router.
#[derive(Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Arc<RpcMetrics>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or("unknown")
            .to_string();
        let h = self.metrics.histogram(&method);
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            // A gRPC error travels in the grpc-status header (trailers-only
            // responses) or trailer; headers catch the common error path.
            let ok = match &res {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .is_none_or(|v| v.as_bytes() == b"0"),
                Err(_) => false,
            };
            h.observe(started.elapsed().as_secs_f64(), ok);
            res
        })
    }
}

/// Raft log I/O counters, shared with the log store.
#[derive(Debug, Default)]
pub struct LogIoCounters {
    /// Entries appended to the log.
    pub entries_appended: AtomicU64,
    /// fsyncs that made appends or votes durable.
    pub flushes: AtomicU64,
    /// Of those, syncs an append ran on its own task, the flusher idle.
    pub inline_syncs: AtomicU64,
}

/// Garbage collection counters (leader side).
#[derive(Debug, Default)]
pub struct GcCounters {
    /// Deleted objects collected and forgotten.
    pub objects: AtomicU64,
    /// Chunk removals sent (each removes the chunk on every replica of its
    /// chain).
    pub chunks: AtomicU64,
}

fn gauge(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    let _ = writeln!(out, "{name} {value}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    let _ = writeln!(out, "{name} {value}");
}

/// Renders every metric of the replica in Prometheus text format.
pub fn render(shared: &Shared, rpc: &RpcMetrics) -> String {
    let mut out = String::with_capacity(8 << 10);
    let m = shared.raft.metrics().borrow().clone();
    gauge(
        &mut out,
        "cairn_meta_raft_term",
        "Current Raft term.",
        m.current_term,
    );
    gauge(
        &mut out,
        "cairn_meta_raft_leader_id",
        "Node id of the leader this replica follows (0: none).",
        m.current_leader.unwrap_or(0),
    );
    gauge(
        &mut out,
        "cairn_meta_raft_is_leader",
        "1 when this replica is the leader.",
        u8::from(shared.is_leader()),
    );
    gauge(
        &mut out,
        "cairn_meta_raft_last_log_index",
        "Index of the last entry in this replica's log.",
        m.last_log_index.unwrap_or(0),
    );
    gauge(
        &mut out,
        "cairn_meta_raft_applied_index",
        "Index of the last entry applied to the state machine.",
        m.last_applied.map_or(0, |l| l.index),
    );
    gauge(
        &mut out,
        "cairn_meta_raft_snapshot_index",
        "Index covered by the latest snapshot.",
        m.snapshot.map_or(0, |l| l.index),
    );
    gauge(
        &mut out,
        "cairn_meta_raft_voters",
        "Voting members of the metadata group.",
        m.membership_config.membership().voter_ids().count(),
    );
    let io = &shared.log_io;
    counter(
        &mut out,
        "cairn_meta_raft_log_entries_appended_total",
        "Raft log entries appended on this replica.",
        io.entries_appended.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "cairn_meta_raft_log_flushes_total",
        "fsyncs of the Raft log (one covers a batch of appends).",
        io.flushes.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "cairn_meta_raft_log_inline_syncs_total",
        "Of the Raft log fsyncs, those an append ran itself (nothing queued for the flusher thread).",
        io.inline_syncs.load(Ordering::Relaxed),
    );
    if let Ok(s) = shared.fs.sessions() {
        gauge(
            &mut out,
            "cairn_meta_sessions",
            "Open client sessions.",
            s.len(),
        );
    }
    if let Ok(c) = shared.fs.chunkservers() {
        gauge(
            &mut out,
            "cairn_meta_chunkservers",
            "Registered chunkservers.",
            c.len(),
        );
    }
    if let Ok(tables) = shared.fs.chain_tables() {
        let (mut total, mut under) = (0usize, 0usize);
        for (replication, chains) in &tables {
            for c in chains {
                total += 1;
                let serving = c
                    .members
                    .iter()
                    .filter(|m| m.state == crate::fs::TargetState::Serving)
                    .count();
                if serving < *replication as usize {
                    under += 1;
                }
            }
        }
        gauge(
            &mut out,
            "cairn_meta_chains",
            "Chains in all chain tables.",
            total,
        );
        gauge(
            &mut out,
            "cairn_meta_chains_under_replicated",
            "Chains with fewer serving members than their replication factor (a member offline or syncing).",
            under,
        );
    }
    if let Ok(n) = shared.fs.garbage_count() {
        gauge(
            &mut out,
            "cairn_meta_garbage_objects",
            "Deleted objects waiting for garbage collection.",
            n,
        );
    }
    counter(
        &mut out,
        "cairn_meta_gc_objects_collected_total",
        "Deleted objects whose data this replica, as leader, removed and forgot.",
        shared.gc.objects.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "cairn_meta_gc_chunk_removals_total",
        "Chunk removals the garbage collector sent (each to every replica of a chain).",
        shared.gc.chunks.load(Ordering::Relaxed),
    );
    let (reports, replicas, repair_rate, repaired) = {
        let live = shared.liveness();
        (
            live.corrupt.reports(),
            live.corrupt.len(),
            live.repair
                .values()
                .map(|(_, p)| p.bytes_per_sec)
                .sum::<u64>(),
            live.repair
                .values()
                .map(|(_, p)| p.bytes_copied)
                .sum::<u64>(),
        )
    };
    gauge(
        &mut out,
        "cairn_meta_repair_bytes_per_second",
        "Bytes per second chunkservers are copying to syncing members (resync, re-replication, rebalancing), summed from their heartbeats.",
        repair_rate,
    );
    gauge(
        &mut out,
        "cairn_meta_repair_bytes_copied",
        "Bytes chunkservers have copied as sync sources since they started, as last reported.",
        repaired,
    );
    counter(
        &mut out,
        "cairn_meta_corruption_reports_total",
        "Corrupt-replica reports from chunkservers received since this replica last became leader.",
        reports,
    );
    gauge(
        &mut out,
        "cairn_meta_corrupt_replicas",
        "Distinct corrupt chunk replicas this leader knows of (bounded soft state).",
        replicas,
    );
    rpc.render(&mut out);
    out
}

/// Answers `GET /ready`: ready when this replica belongs to a cluster (it
/// serves only then), has applied the log, and either follows a leader or
/// is a leader that a quorum acknowledged within two election timeouts.
/// So a Kubernetes readiness probe keeps out of the client Service a
/// replica that is still electing, and a former leader restarted alone
/// that believes it leads but cannot commit anything.
///
/// # Errors
/// Why the replica is not ready.
pub fn readiness(shared: &Shared) -> Result<(), String> {
    let m = shared.raft.metrics().borrow().clone();
    if m.current_leader.is_none() {
        return Err(format!("no leader known (term {})", m.current_term));
    }
    if m.last_applied.is_none() {
        return Err("nothing applied yet".into());
    }
    if m.state != openraft::ServerState::Leader {
        return Ok(());
    }
    let voters = m.membership_config.membership().voter_ids().count();
    let limit = u64::try_from(shared.config.election_timeout.as_millis() * 2).unwrap_or(u64::MAX);
    match m.millis_since_quorum_ack {
        _ if voters <= 1 => Ok(()),
        Some(ms) if ms <= limit => Ok(()),
        Some(ms) => Err(format!(
            "leader without a quorum's acknowledgment for {ms} ms"
        )),
        None => Err("leader not acknowledged by a quorum yet".into()),
    }
}

/// Serves `GET /metrics` and `GET /ready` on `addr` until `stop` resolves.
///
/// # Errors
/// The listen address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    shared: Arc<Shared>,
    rpc: Arc<RpcMetrics>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        tokio::pin!(stop);
        loop {
            let conn = tokio::select! {
                c = listener.accept() => c,
                () = &mut stop => return,
            };
            let Ok((mut sock, _)) = conn else { continue };
            let shared = shared.clone();
            let rpc = rpc.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let n = match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    sock.read(&mut buf),
                )
                .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let req = String::from_utf8_lossy(&buf[..n]);
                let (status, body) = if req.starts_with("GET /metrics") {
                    ("200 OK", render(&shared, &rpc))
                } else if req.starts_with("GET /ready") {
                    match readiness(&shared) {
                        Ok(()) => ("200 OK", "ready\n".to_string()),
                        Err(why) => ("503 Service Unavailable", format!("not ready: {why}\n")),
                    }
                } else {
                    (
                        "404 Not Found",
                        "try GET /metrics or GET /ready\n".to_string(),
                    )
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
            });
        }
    });
    Ok(local)
}
