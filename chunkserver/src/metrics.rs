//! The chunkserver's Prometheus metrics, served as text on `GET /metrics`
//! (DESIGN §8).
//!
//! One [`Metrics`] per process, shared through an `Arc` by every shard
//! executor (glommio threads) and the control thread (tokio): it holds
//! atomics only, updated with relaxed ordering, so recording never blocks
//! or allocates. What it counts:
//!
//! * per data-plane opcode: requests, error replies, payload bytes in and
//!   out, and a latency histogram (fixed exponential buckets from 10 µs to
//!   about 10 s, stored per bucket and made cumulative when rendered);
//! * error replies by stable error code;
//! * checksums: stored blocks failing their CRC (reads and scrub) and
//!   client payloads failing theirs on arrival;
//! * connections, protocol errors, CRAQ `pending` answers, tail queries,
//!   forwarded writes;
//! * the scrubber: chunks, blocks, bytes and bad blocks checked, finished
//!   passes, and the progress of the passes under way;
//! * per-target used and capacity bytes, set by whoever polls the stores.
//!
//! Labels are bounded: an opcode, an error code or a target slot, never a
//! chunk or an address. Contention: the shards share these cache lines; a
//! request costs at most four relaxed `fetch_add`s (each opcode's counters
//! sit on their own cache lines), which is small beside a request's
//! syscalls. Per-shard copies summed at render time would remove even that
//! if profiles ever show it.
//!
//! [`serve`] is the same minimal HTTP/1.1 responder meta uses: it reads one
//! request, answers it and closes the connection, so no HTTP dependency is
//! needed.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cairn_proto::ErrorCode;
use cairn_proto::frame::Opcode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Every metric name starts with this.
const PREFIX: &str = "cairn_chunkserver_";

/// Finite latency buckets: `10 µs · 2^k` for `k` in `0..20`, up to about
/// 10.5 s; one more slot counts what is slower.
pub const LATENCY_BUCKETS: usize = 21;

/// Upper bound of the first latency bucket, in nanoseconds.
const FIRST_BUCKET_NS: u64 = 10_000;

/// How many targets [`Metrics::set_target_usage`] can describe.
pub const MAX_TARGETS: usize = 16;

/// Size of the error-code table, indexed by wire value.
const CODES: usize = 32;

// Every error code has a slot in the table.
const _: () = {
    let mut i = 0;
    while i < ErrorCode::ALL.len() {
        assert!((ErrorCode::ALL[i] as usize) < CODES);
        i += 1;
    }
};

/// Returns the upper bound of latency bucket `k`, in nanoseconds.
pub fn bucket_bound_ns(k: usize) -> u64 {
    FIRST_BUCKET_NS << k
}

/// Returns the latency bucket of `latency`: the smallest `k` with
/// `latency <= bucket_bound_ns(k)`, or [`LATENCY_BUCKETS`] when it is
/// slower than every bound.
pub fn bucket_of(latency: Duration) -> usize {
    let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
    if ns <= FIRST_BUCKET_NS {
        return 0;
    }
    // ceil(log2(ceil(ns / first))).
    let q = ns.div_ceil(FIRST_BUCKET_NS);
    let k = (u64::BITS - (q - 1).leading_zeros()) as usize;
    k.min(LATENCY_BUCKETS)
}

// `Metrics::op` indexes by wire value - 1: prove here that this covers
// every opcode and nothing else.
const _: () = {
    let mut i = 0;
    while i < Opcode::ALL.len() {
        assert!(Opcode::ALL[i] as usize == i + 1);
        i += 1;
    }
};

/// One opcode's counters and latency histogram. Aligned to cache lines so
/// shards busy with different opcodes do not contend.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct OpMetrics {
    /// Per bucket (not cumulative); the last slot is "slower than all".
    buckets: [AtomicU64; LATENCY_BUCKETS + 1],
    sum_ns: AtomicU64,
    errors: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl OpMetrics {
    /// Records one request that took `latency`, succeeded or not, and
    /// carried `bytes_in` payload bytes in and `bytes_out` out.
    pub fn observe(&self, latency: Duration, ok: bool, bytes_in: u64, bytes_out: u64) {
        self.buckets[bucket_of(latency)].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if bytes_in > 0 {
            self.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
        }
        if bytes_out > 0 {
            self.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
        }
    }

    /// Returns how many requests were recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Returns how many recorded requests failed.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Returns the cumulative bucket counts (`le` each finite bound, then
    /// `+Inf`), as rendered.
    pub fn cumulative(&self) -> [u64; LATENCY_BUCKETS + 1] {
        let mut out = [0; LATENCY_BUCKETS + 1];
        let mut acc = 0u64;
        for (o, b) in out.iter_mut().zip(&self.buckets) {
            acc = acc.saturating_add(b.load(Ordering::Relaxed));
            *o = acc;
        }
        out
    }
}

#[derive(Debug, Default)]
struct TargetGauges {
    used: AtomicU64,
    capacity: AtomicU64,
}

/// Every counter of the chunkserver; see the module docs.
#[derive(Debug, Default)]
pub struct Metrics {
    ops: [OpMetrics; Opcode::ALL.len()],
    error_codes: [AtomicU64; CODES],
    crc_failures: AtomicU64,
    client_crc_failures: AtomicU64,
    connections_open: AtomicU64,
    connections: AtomicU64,
    protocol_errors: AtomicU64,
    pending_replies: AtomicU64,
    tail_queries: AtomicU64,
    diverged: AtomicU64,
    forwarded: AtomicU64,
    sync_gaps: AtomicU64,
    stale_installs: AtomicU64,
    repair_chunks: AtomicU64,
    repair_bytes: AtomicU64,
    repair_current: AtomicU64,
    installed_bytes: AtomicU64,
    repair_chains: AtomicU64,
    scrub_chunks: AtomicU64,
    scrub_blocks: AtomicU64,
    scrub_bytes: AtomicU64,
    scrub_bad_blocks: AtomicU64,
    scrub_errors: AtomicU64,
    scrub_passes: AtomicU64,
    /// Chunks in the passes under way, and how many of them are checked.
    scrub_pass_chunks: AtomicU64,
    scrub_pass_done: AtomicU64,
    scrub_running: AtomicU64,
    /// Bit `i` set: target slot `i` has been described.
    targets_set: AtomicU64,
    targets: [TargetGauges; MAX_TARGETS],
}

impl Metrics {
    /// Returns the counters of opcode `op`.
    pub fn op(&self, op: Opcode) -> &OpMetrics {
        // In bounds: checked for every opcode at compile time above.
        &self.ops[op as usize - 1]
    }

    /// Counts an error reply with `code` (beside the opcode's error count).
    pub fn error_reply(&self, code: ErrorCode) {
        if let Some(c) = self.error_codes.get(code as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Returns how many error replies carried `code`.
    pub fn error_replies(&self, code: ErrorCode) -> u64 {
        self.error_codes
            .get(code as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Counts a stored block that failed its CRC on a read.
    pub fn crc_failure(&self) {
        self.crc_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Returns how many stored blocks failed their CRC (reads and scrub).
    pub fn crc_failures(&self) -> u64 {
        self.crc_failures.load(Ordering::Relaxed)
    }

    /// Counts an incoming write payload that failed its CRC.
    pub fn client_crc_failure(&self) {
        self.client_crc_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an accepted connection (pair with
    /// [`Metrics::connection_closed`]).
    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a closed connection. Never goes below zero.
    pub fn connection_closed(&self) {
        let _ = self
            .connections_open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Returns how many connections are open.
    pub fn connections_open(&self) -> u64 {
        self.connections_open.load(Ordering::Relaxed)
    }

    /// Counts a malformed frame (the connection is closed).
    pub fn protocol_error(&self) {
        self.protocol_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a CRAQ "pending" answer (the client retries elsewhere).
    pub fn pending_reply(&self) {
        self.pending_replies.fetch_add(1, Ordering::Relaxed);
    }

    /// A chunk found diverged: a forwarded version this replica failed to
    /// store, or a version number a sender reused for other bytes.
    pub fn diverged(&self) {
        self.diverged.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a query to the chain's tail for the committed version.
    pub fn tail_query(&self) {
        self.tail_queries.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a mutation forwarded to the successor.
    pub fn forwarded(&self) {
        self.forwarded.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a write a syncing replica could not store (it missed earlier
    /// versions of the chunk).
    pub fn sync_gap(&self) {
        self.sync_gaps.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a resync copy refused because this replica changed after
    /// the source compared it (a copy delivered late).
    pub fn stale_install(&self) {
        self.stale_installs.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a chunk copied to a syncing or repaired replica (`bytes`
    /// sent), as its sync source.
    pub fn repair_copied(&self, bytes: u64) {
        self.repair_chunks.fetch_add(1, Ordering::Relaxed);
        self.repair_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts a chunk a syncing replica already held current (not copied).
    pub fn repair_current(&self) {
        self.repair_current.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts bytes this replica stored from a sync source.
    pub fn installed(&self, bytes: u64) {
        self.installed_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Marks a chain sync started (`+1`) or ended (`-1`) here.
    pub fn repair_chain(&self, started: bool) {
        if started {
            self.repair_chains.fetch_add(1, Ordering::Relaxed);
        } else {
            self.repair_chains.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Returns (chunks copied, bytes copied, chunks found current, chains
    /// being synced) as a sync source, and bytes stored from sources.
    pub fn repair_counts(&self) -> (u64, u64, u64, u64, u64) {
        (
            self.repair_chunks.load(Ordering::Relaxed),
            self.repair_bytes.load(Ordering::Relaxed),
            self.repair_current.load(Ordering::Relaxed),
            self.repair_chains.load(Ordering::Relaxed),
            self.installed_bytes.load(Ordering::Relaxed),
        )
    }

    /// Counts one scrubbed chunk: `blocks` blocks (`bytes` bytes) checked,
    /// `bad` of them failing their CRC (also counted as CRC failures).
    pub fn scrubbed_chunk(&self, blocks: u64, bytes: u64, bad: u64) {
        self.scrub_chunks.fetch_add(1, Ordering::Relaxed);
        self.scrub_blocks.fetch_add(blocks, Ordering::Relaxed);
        self.scrub_bytes.fetch_add(bytes, Ordering::Relaxed);
        if bad > 0 {
            self.scrub_bad_blocks.fetch_add(bad, Ordering::Relaxed);
            self.crc_failures.fetch_add(bad, Ordering::Relaxed);
        }
    }

    /// Counts a chunk the scrubber could not check (an I/O or metadata
    /// error, not a bad CRC).
    pub fn scrub_error(&self) {
        self.scrub_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Starts tracking a scrub pass over `chunks` chunks for the progress
    /// gauge; the pass leaves the gauge when the returned value drops.
    pub fn scrub_pass(&self, chunks: u64) -> ScrubPass<'_> {
        self.scrub_running.fetch_add(1, Ordering::Relaxed);
        self.scrub_pass_chunks.fetch_add(chunks, Ordering::Relaxed);
        ScrubPass {
            metrics: self,
            chunks,
            done: 0,
        }
    }

    /// Returns the (chunks, bad blocks, finished passes) the scrubber counted.
    pub fn scrub_counts(&self) -> (u64, u64, u64) {
        (
            self.scrub_chunks.load(Ordering::Relaxed),
            self.scrub_bad_blocks.load(Ordering::Relaxed),
            self.scrub_passes.load(Ordering::Relaxed),
        )
    }

    /// Returns the fraction (0..=1) of the chunks of the scrub passes under
    /// way that are checked; 0 when no pass is running.
    pub fn scrub_progress(&self) -> f64 {
        let total = self.scrub_pass_chunks.load(Ordering::Relaxed);
        let done = self.scrub_pass_done.load(Ordering::Relaxed);
        if total == 0 {
            0.0
        } else {
            (done as f64 / total as f64).min(1.0)
        }
    }

    /// Sets the used and capacity bytes of target slot `slot` (the
    /// target's position in the configuration); slots from
    /// [`MAX_TARGETS`] on are ignored.
    pub fn set_target_usage(&self, slot: usize, used_bytes: u64, capacity_bytes: u64) {
        let Some(t) = self.targets.get(slot) else {
            return;
        };
        t.used.store(used_bytes, Ordering::Relaxed);
        t.capacity.store(capacity_bytes, Ordering::Relaxed);
        self.targets_set.fetch_or(1 << slot, Ordering::Relaxed);
    }

    /// Renders every metric in the Prometheus text format (0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(24 << 10);
        self.render_ops(&mut out);

        header(
            &mut out,
            "error_replies_total",
            "counter",
            "Error replies by stable error code.",
        );
        for code in ErrorCode::ALL {
            let n = self.error_replies(code);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "{PREFIX}error_replies_total{{code=\"{}\"}} {n}",
                    code.name()
                );
            }
        }

        let counters: [(&str, &str, &AtomicU64); 23] = [
            (
                "crc_failures_total",
                "Stored blocks that failed their CRC, on a read or a scrub.",
                &self.crc_failures,
            ),
            (
                "client_crc_failures_total",
                "Incoming write payload segments that failed their CRC.",
                &self.client_crc_failures,
            ),
            (
                "connections_total",
                "Data-plane connections accepted.",
                &self.connections,
            ),
            (
                "protocol_errors_total",
                "Malformed frames (each closes its connection).",
                &self.protocol_errors,
            ),
            (
                "pending_replies_total",
                "CRAQ pending answers (a dirty range whose tail could not confirm).",
                &self.pending_replies,
            ),
            (
                "tail_queries_total",
                "Queries to a chain's tail for the committed version.",
                &self.tail_queries,
            ),
            (
                "diverged_chunks_total",
                "Chunks found diverged: a forwarded version a replica failed to store, or a \
                 version number reused for other bytes; the replica copies them from the tail.",
                &self.diverged,
            ),
            (
                "forwarded_writes_total",
                "Mutations forwarded to the chain successor.",
                &self.forwarded,
            ),
            (
                "sync_gap_writes_total",
                "Writes a syncing replica acknowledged without storing: it missed earlier versions of the chunk, which resync must copy whole.",
                &self.sync_gaps,
            ),
            (
                "stale_installs_total",
                "Resync copies refused because this replica changed after the sync source compared it (a copy delivered after its sender gave up on it).",
                &self.stale_installs,
            ),
            (
                "repair_chunks_copied_total",
                "Chunks this chunkserver copied, as a chain's sync source, to syncing or repaired replicas.",
                &self.repair_chunks,
            ),
            (
                "repair_bytes_total",
                "Bytes this chunkserver copied as a sync source (under-replicated data repaired).",
                &self.repair_bytes,
            ),
            (
                "repair_chunks_current_total",
                "Chunks a resync found already current on the syncing replica (compared by version, not copied).",
                &self.repair_current,
            ),
            (
                "repair_installed_bytes_total",
                "Bytes this replica stored from a sync source.",
                &self.installed_bytes,
            ),
            (
                "repair_chains_active",
                "Chain syncs running on this chunkserver as the source (a gauge).",
                &self.repair_chains,
            ),
            (
                "chunks_scrubbed_total",
                "Chunks the scrubber checked.",
                &self.scrub_chunks,
            ),
            (
                "blocks_scrubbed_total",
                "Stored blocks the scrubber checked.",
                &self.scrub_blocks,
            ),
            (
                "scrub_bytes_total",
                "Bytes the scrubber read and checked.",
                &self.scrub_bytes,
            ),
            (
                "scrub_bad_blocks_total",
                "Stored blocks the scrubber found failing their CRC.",
                &self.scrub_bad_blocks,
            ),
            (
                "scrub_errors_total",
                "Chunks the scrubber could not check (I/O or metadata errors).",
                &self.scrub_errors,
            ),
            (
                "scrub_passes_total",
                "Scrub passes finished (one per shard per pass).",
                &self.scrub_passes,
            ),
            (
                "scrub_pass_chunks",
                "Chunks in the scrub passes under way.",
                &self.scrub_pass_chunks,
            ),
            (
                "scrubs_running",
                "Scrub passes under way.",
                &self.scrub_running,
            ),
        ];
        for (name, help, v) in counters {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{PREFIX}{name} {}", v.load(Ordering::Relaxed));
        }
        if let Some(n) = crate::heap::allocations() {
            header(
                &mut out,
                "heap_allocations_total",
                "counter",
                "Heap allocations (and reallocations) this process made since it started.",
            );
            let _ = writeln!(out, "{PREFIX}heap_allocations_total {n}");
        }
        header(
            &mut out,
            "connections_open",
            "gauge",
            "Data-plane connections open.",
        );
        let _ = writeln!(out, "{PREFIX}connections_open {}", self.connections_open());
        header(
            &mut out,
            "scrub_progress_ratio",
            "gauge",
            "Fraction of the chunks of the scrub passes under way already checked (0 when idle).",
        );
        let _ = writeln!(
            out,
            "{PREFIX}scrub_progress_ratio {}",
            self.scrub_progress()
        );

        let set = self.targets_set.load(Ordering::Relaxed);
        for (name, help, used) in [
            (
                "target_used_bytes",
                "Bytes of blocks in use on a target.",
                true,
            ),
            (
                "target_capacity_bytes",
                "Capacity of a target in bytes.",
                false,
            ),
        ] {
            header(&mut out, name, "gauge", help);
            for (i, t) in self.targets.iter().enumerate() {
                if set & (1 << i) == 0 {
                    continue;
                }
                let v = if used { &t.used } else { &t.capacity };
                let _ = writeln!(
                    out,
                    "{PREFIX}{name}{{target=\"{i}\"}} {}",
                    v.load(Ordering::Relaxed)
                );
            }
        }
        out
    }

    fn render_ops(&self, out: &mut String) {
        header(
            out,
            "requests_total",
            "counter",
            "Data-plane requests by opcode.",
        );
        for op in Opcode::ALL {
            let _ = writeln!(
                out,
                "{PREFIX}requests_total{{op=\"{}\"}} {}",
                op.name(),
                self.op(op).count()
            );
        }
        header(
            out,
            "request_errors_total",
            "counter",
            "Data-plane requests answered with an error, by opcode.",
        );
        for op in Opcode::ALL {
            let _ = writeln!(
                out,
                "{PREFIX}request_errors_total{{op=\"{}\"}} {}",
                op.name(),
                self.op(op).errors()
            );
        }
        for (name, help, inbound) in [
            (
                "received_bytes_total",
                "Payload bytes received in requests, by opcode.",
                true,
            ),
            (
                "sent_bytes_total",
                "Payload bytes sent in replies, by opcode.",
                false,
            ),
        ] {
            header(out, name, "counter", help);
            for op in Opcode::ALL {
                let m = self.op(op);
                let v = if inbound { &m.bytes_in } else { &m.bytes_out };
                let _ = writeln!(
                    out,
                    "{PREFIX}{name}{{op=\"{}\"}} {}",
                    op.name(),
                    v.load(Ordering::Relaxed)
                );
            }
        }
        let h = "request_duration_seconds";
        header(out, h, "histogram", "Data-plane request latency by opcode.");
        for op in Opcode::ALL {
            let m = self.op(op);
            let name = op.name();
            let cum = m.cumulative();
            for (k, n) in cum.iter().take(LATENCY_BUCKETS).enumerate() {
                let le = bucket_bound_ns(k) as f64 / 1e9;
                let _ = writeln!(out, "{PREFIX}{h}_bucket{{op=\"{name}\",le=\"{le}\"}} {n}");
            }
            let count = cum[LATENCY_BUCKETS];
            let _ = writeln!(
                out,
                "{PREFIX}{h}_bucket{{op=\"{name}\",le=\"+Inf\"}} {count}"
            );
            let sum = m.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "{PREFIX}{h}_sum{{op=\"{name}\"}} {sum}");
            let _ = writeln!(out, "{PREFIX}{h}_count{{op=\"{name}\"}} {count}");
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {PREFIX}{name} {help}");
    let _ = writeln!(out, "# TYPE {PREFIX}{name} {kind}");
}

/// A scrub pass under way, counted in the progress gauge until dropped.
#[derive(Debug)]
pub struct ScrubPass<'a> {
    metrics: &'a Metrics,
    chunks: u64,
    done: u64,
}

impl ScrubPass<'_> {
    /// Advances the pass by one chunk (checked or skipped).
    pub fn advance(&mut self) {
        if self.done < self.chunks {
            self.done += 1;
            self.metrics.scrub_pass_done.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Ends the pass as finished (counted in `scrub_passes_total`).
    pub fn finish(self) {
        self.metrics.scrub_passes.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for ScrubPass<'_> {
    fn drop(&mut self) {
        let m = self.metrics;
        m.scrub_pass_done.fetch_sub(self.done, Ordering::Relaxed);
        m.scrub_pass_chunks
            .fetch_sub(self.chunks, Ordering::Relaxed);
        m.scrub_running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `GET /metrics` on `addr` until `stop` turns true (or its sender
/// is dropped); returns the bound address. Must be called on a tokio
/// runtime, which runs the listener.
///
/// # Errors
/// The listen address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Readiness,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let conn = tokio::select! {
                c = listener.accept() => c,
                _ = stop.wait_for(|s| *s) => return,
            };
            let Ok((sock, _)) = conn else { continue };
            tokio::spawn(answer(sock, metrics.clone(), ready.clone()));
        }
    });
    Ok(local)
}

/// Answers `GET /ready`: `Ok` when the chunkserver is ready for traffic,
/// else why not (a Kubernetes readiness probe).
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads one HTTP request (its head, at most 4 KiB) and answers it.
async fn answer(mut sock: tokio::net::TcpStream, metrics: Arc<Metrics>, ready: Readiness) {
    let mut buf = [0u8; 4096];
    let mut n = 0;
    let read_head = async {
        while n < buf.len() {
            match sock.read(&mut buf[n..]).await {
                Ok(0) | Err(_) => break,
                Ok(m) => n += m,
            }
            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    };
    if tokio::time::timeout(REQUEST_TIMEOUT, read_head)
        .await
        .is_err()
        || n == 0
    {
        return;
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", metrics.render()),
        ("GET" | "HEAD", "/ready") => match ready() {
            Ok(()) => ("200 OK", "ready\n".to_string()),
            Err(why) => ("503 Service Unavailable", format!("not ready: {why}\n")),
        },
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "try GET /metrics or GET /ready\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "try GET /metrics or GET /ready\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = sock.write_all(head.as_bytes()).await;
    if method != "HEAD" {
        let _ = sock.write_all(body.as_bytes()).await;
    }
    let _ = sock.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns the value of the sample whose name and labels are `series`.
    fn sample(page: &str, series: &str) -> Option<f64> {
        page.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn bucket_of_matches_a_linear_scan() {
        let linear = |d: Duration| {
            (0..LATENCY_BUCKETS)
                .find(|k| d.as_nanos() <= u128::from(bucket_bound_ns(*k)))
                .unwrap_or(LATENCY_BUCKETS)
        };
        let mut probes = vec![0u64, 1, 9_999, 10_000, 10_001, 20_000, 20_001, u64::MAX];
        for k in 0..LATENCY_BUCKETS {
            let b = bucket_bound_ns(k);
            probes.extend([b - 1, b, b + 1]);
        }
        for ns in probes {
            let d = Duration::from_nanos(ns);
            assert_eq!(bucket_of(d), linear(d), "{ns} ns");
        }
        assert_eq!(bucket_of(Duration::from_secs(3600)), LATENCY_BUCKETS);
        // About 10 s at the top, 10 µs at the bottom.
        assert_eq!(bucket_bound_ns(0), 10_000);
        assert_eq!(bucket_bound_ns(LATENCY_BUCKETS - 1), 10_485_760_000);
    }

    #[test]
    fn render_has_the_counters_after_observations() {
        let m = Metrics::default();
        let w = m.op(Opcode::Write);
        w.observe(Duration::from_micros(150), true, 4096, 0);
        w.observe(Duration::from_millis(3), false, 100, 0);
        m.op(Opcode::Read)
            .observe(Duration::from_micros(5), true, 0, 8192);
        m.error_reply(ErrorCode::Checksum);
        m.crc_failure();
        m.client_crc_failure();
        m.connection_opened();
        m.connection_opened();
        m.connection_closed();
        m.pending_reply();
        m.forwarded();
        m.tail_query();
        m.protocol_error();
        m.scrubbed_chunk(3, 3 * 4096, 1);
        m.set_target_usage(0, 1 << 20, 1 << 30);
        m.set_target_usage(MAX_TARGETS, 1, 1); // ignored

        let page = m.render();
        let p = |s: &str| sample(&page, &format!("{PREFIX}{s}"));
        assert_eq!(p("requests_total{op=\"write\"}"), Some(2.0));
        assert_eq!(p("request_errors_total{op=\"write\"}"), Some(1.0));
        assert_eq!(p("received_bytes_total{op=\"write\"}"), Some(4196.0));
        assert_eq!(p("sent_bytes_total{op=\"read\"}"), Some(8192.0));
        assert_eq!(p("requests_total{op=\"ping\"}"), Some(0.0));
        assert_eq!(p("request_duration_seconds_count{op=\"write\"}"), Some(2.0));
        let sum = p("request_duration_seconds_sum{op=\"write\"}").unwrap();
        assert!((sum - 0.00315).abs() < 1e-9, "{sum}");
        assert_eq!(
            p("request_duration_seconds_bucket{op=\"read\",le=\"0.00001\"}"),
            Some(1.0)
        );
        assert_eq!(p("error_replies_total{code=\"checksum\"}"), Some(1.0));
        assert_eq!(p("error_replies_total{code=\"not_found\"}"), None);
        // One read failure and one bad block found by the scrubber.
        assert_eq!(p("crc_failures_total"), Some(2.0));
        assert_eq!(p("client_crc_failures_total"), Some(1.0));
        assert_eq!(p("connections_open"), Some(1.0));
        assert_eq!(p("connections_total"), Some(2.0));
        assert_eq!(p("pending_replies_total"), Some(1.0));
        assert_eq!(p("forwarded_writes_total"), Some(1.0));
        assert_eq!(p("tail_queries_total"), Some(1.0));
        assert_eq!(p("protocol_errors_total"), Some(1.0));
        assert_eq!(p("chunks_scrubbed_total"), Some(1.0));
        assert_eq!(p("blocks_scrubbed_total"), Some(3.0));
        assert_eq!(p("scrub_bytes_total"), Some(12288.0));
        assert_eq!(p("scrub_bad_blocks_total"), Some(1.0));
        assert_eq!(p("target_used_bytes{target=\"0\"}"), Some(1048576.0));
        assert_eq!(p("target_capacity_bytes{target=\"0\"}"), Some(1073741824.0));
        assert!(!page.contains(&format!("target=\"{MAX_TARGETS}\"")));
        for l in page.lines().filter(|l| l.starts_with('#')) {
            assert!(
                l.starts_with("# HELP cairn_chunkserver_")
                    || l.starts_with("# TYPE cairn_chunkserver_"),
                "{l}"
            );
        }
        assert!(page.contains("# TYPE cairn_chunkserver_request_duration_seconds histogram\n"));
        // Every sample line parses as `name{labels} value`.
        for l in page.lines().filter(|l| !l.starts_with('#')) {
            let (series, v) = l.rsplit_once(' ').unwrap();
            assert!(series.starts_with(PREFIX), "{l}");
            assert!(v.parse::<f64>().is_ok(), "{l}");
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_monotone() {
        let m = Metrics::default();
        let r = m.op(Opcode::Read);
        let latencies_us = [1u64, 10, 11, 30, 500, 500, 9_000, 2_000_000, 60_000_000];
        for us in latencies_us {
            r.observe(Duration::from_micros(us), true, 0, 0);
        }
        let page = m.render();
        let mut last = 0.0;
        let mut buckets = Vec::new();
        for l in page.lines() {
            let Some(rest) = l.strip_prefix(
                "cairn_chunkserver_request_duration_seconds_bucket{op=\"read\",le=\"",
            ) else {
                continue;
            };
            let (le, v) = rest.split_once("\"} ").unwrap();
            let v: f64 = v.parse().unwrap();
            assert!(v >= last, "{l}");
            last = v;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            // Exactly the observations at or under the bound.
            let expect = latencies_us
                .iter()
                .filter(|us| (**us as f64) / 1e6 <= le + 1e-12)
                .count();
            assert_eq!(v as usize, expect, "{l}");
            buckets.push(le);
        }
        assert_eq!(buckets.len(), LATENCY_BUCKETS + 1);
        assert!(buckets.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(last as usize, latencies_us.len());
        assert_eq!(
            sample(
                &page,
                "cairn_chunkserver_request_duration_seconds_count{op=\"read\"}"
            ),
            Some(latencies_us.len() as f64)
        );
    }

    #[test]
    fn scrub_progress_follows_passes() {
        let m = Metrics::default();
        assert_eq!(m.scrub_progress(), 0.0);
        let mut a = m.scrub_pass(4);
        let mut b = m.scrub_pass(4);
        a.advance();
        b.advance();
        b.advance();
        assert_eq!(m.scrub_progress(), 3.0 / 8.0);
        a.finish();
        assert_eq!(m.scrub_progress(), 2.0 / 4.0);
        drop(b); // stopped mid-pass: not counted as finished
        assert_eq!(m.scrub_progress(), 0.0);
        assert_eq!(m.scrub_counts().2, 1);
        let page = m.render();
        assert_eq!(sample(&page, "cairn_chunkserver_scrubs_running"), Some(0.0));
        assert_eq!(
            sample(&page, "cairn_chunkserver_scrub_passes_total"),
            Some(1.0)
        );
        // Connections never go negative.
        m.connection_closed();
        assert_eq!(m.connections_open(), 0);
    }

    async fn http(addr: SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let m = Arc::new(Metrics::default());
        m.op(Opcode::Stat)
            .observe(Duration::from_micros(20), true, 0, 0);
        let (tx, rx) = tokio::sync::watch::channel(false);
        let ok = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ok.clone();
        let ready: Readiness = Arc::new(move || {
            if flag.load(std::sync::atomic::Ordering::Relaxed) {
                Ok(())
            } else {
                Err("chain 3: syncing".into())
            }
        });
        let addr = serve("127.0.0.1:0".parse().unwrap(), m.clone(), ready, rx)
            .await
            .unwrap();
        let reply = http(addr, "GET /ready HTTP/1.1\r\n\r\n").await;
        assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
        assert!(reply.contains("not ready: chain 3: syncing"), "{reply}");
        ok.store(true, std::sync::atomic::Ordering::Relaxed);
        let reply = http(addr, "GET /ready HTTP/1.1\r\n\r\n").await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        let reply = http(addr, "GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("text/plain; version=0.0.4"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(body.contains("cairn_chunkserver_requests_total{op=\"stat\"} 1\n"));

        let reply = http(addr, "GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
        let reply = http(addr, "POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(reply.starts_with("HTTP/1.1 405"), "{reply}");

        tx.send_replace(true);
        // The listener closes once it sees the stop.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            assert!(std::time::Instant::now() < deadline, "still listening");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
