//! Client-side metrics in the Prometheus format (issue 18): what a training
//! job's storage looks like from the job's side.
//!
//! Every [`crate::Client`] keeps one [`ClientMetrics`]; a program serves
//! [`ClientMetrics::encode`] (or registers [`ClientMetrics::registry`]'s
//! metrics into its own), and `cairn mount --metrics-listen` serves it at
//! `/metrics`. Built on `prometheus-client`, with the ecosystem's
//! conventions: base units (bytes, seconds) in the names, counters ending
//! in `_total`, histograms for latencies, labels `volume` (the volume's
//! name, or `#ID` before the client learned it) and `tier` (`memory`,
//! `ssd`).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `cairn_client_read_bytes_total` | counter | volume |
//! | `cairn_client_read_seconds` | histogram (per `read_at`) | volume |
//! | `cairn_client_write_bytes_total` | counter | volume |
//! | `cairn_client_write_seconds` | histogram (per `write_at`) | volume |
//! | `cairn_client_checkpoint_save_seconds` | histogram | volume |
//! | `cairn_client_checkpoint_restore_seconds` | histogram | volume |
//! | `cairn_client_checkpoint_saves_total` | counter | volume, result (`ok`, `error`) |
//! | `cairn_client_cache_lookups_total` | counter | tier |
//! | `cairn_client_cache_hits_total` | counter | tier |
//! | `cairn_client_cache_evictions_total` | counter | tier |
//! | `cairn_client_cache_used_bytes`, `_capacity_bytes` | gauge | tier |
//! | `cairn_client_prefetch_blocks_total`, `_prefetch_hits_total` | counter | |
//!
//! The memory tier is asked first, so its lookups are all block lookups;
//! the SSD tier is asked only after a memory miss. The cache counters are
//! read from the cache at scrape time (a collector), so they cost the data
//! path nothing beyond the cache's own counters. The data-path metrics
//! are resolved once per open file ([`FileMetrics`]): a read or write adds
//! to two atomics and one histogram, no map lookup.
//!
//! The eight training signals (`data_read_throughput`, ...) are recording
//! rules over these in `deploy/prometheus/cairn-rules.yml`, with alerts at
//! the thresholds platform teams use.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::collector::Collector;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

use crate::cache::{BlockCache, TierStats};

/// The `volume` label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VolumeLabel {
    /// The volume's name (or `#ID`).
    pub volume: String,
}

/// The labels of a checkpoint save's outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SaveLabels {
    /// The volume's name (or `#ID`).
    pub volume: String,
    /// `ok` or `error`.
    pub result: &'static str,
}

type Histograms = Family<VolumeLabel, AtomicHistogram, fn() -> AtomicHistogram>;

fn io_histogram() -> AtomicHistogram {
    // 50 µs .. ~6.5 s.
    AtomicHistogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

fn checkpoint_histogram() -> AtomicHistogram {
    // 0.1 s .. ~27 min.
    AtomicHistogram::new(exponential_buckets(0.1, 2.0, 15))
}

/// A histogram of seconds observed with atomic adds only:
/// `prometheus-client`'s `Histogram` takes a mutex per observation, which
/// every reader of a volume would contend for on each read. Encoded like
/// it (cumulative `le` buckets, `+Inf` last, `_sum`, `_count`).
#[derive(Debug, Clone)]
pub struct AtomicHistogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug)]
struct HistogramInner {
    /// Upper bounds, ascending; the `+Inf` bucket is `counts`' last.
    bounds: Vec<f64>,
    /// Observations per bucket (not cumulative).
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    /// The sum, in nanoseconds.
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Vec<f64> = bounds.into_iter().filter(|b| b.is_finite()).collect();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self {
            inner: Arc::new(HistogramInner {
                bounds,
                counts,
                count: AtomicU64::new(0),
                sum_nanos: AtomicU64::new(0),
            }),
        }
    }

    /// Records one observation of `d`.
    pub fn observe(&self, d: Duration) {
        let i = &self.inner;
        let secs = d.as_secs_f64();
        let bucket = i.bounds.partition_point(|b| *b < secs);
        i.counts[bucket].fetch_add(1, Ordering::Relaxed);
        i.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        i.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let i = &self.inner;
        let buckets: Vec<(f64, u64)> = i
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(i.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let sum = i.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, i.count.load(Ordering::Relaxed), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// One client's metrics.
pub struct ClientMetrics {
    registry: Mutex<Registry>,
    read_bytes: Family<VolumeLabel, Counter>,
    read_seconds: Histograms,
    write_bytes: Family<VolumeLabel, Counter>,
    write_seconds: Histograms,
    save_seconds: Histograms,
    restore_seconds: Histograms,
    saves: Family<SaveLabels, Counter>,
}

impl std::fmt::Debug for ClientMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientMetrics").finish_non_exhaustive()
    }
}

impl ClientMetrics {
    /// Metrics of a client whose block cache is `cache`.
    pub(crate) fn new(cache: Arc<BlockCache>) -> Self {
        let mut registry = Registry::with_prefix("cairn_client");
        let read_bytes = Family::<VolumeLabel, Counter>::default();
        let read_seconds = Histograms::new_with_constructor(io_histogram);
        let write_bytes = Family::<VolumeLabel, Counter>::default();
        let write_seconds = Histograms::new_with_constructor(io_histogram);
        let save_seconds = Histograms::new_with_constructor(checkpoint_histogram);
        let restore_seconds = Histograms::new_with_constructor(checkpoint_histogram);
        let saves = Family::<SaveLabels, Counter>::default();
        registry.register_with_unit(
            "read",
            "Bytes returned by file reads",
            Unit::Bytes,
            read_bytes.clone(),
        );
        registry.register_with_unit(
            "read",
            "Time of each file read (read_at), cache hits included",
            Unit::Seconds,
            read_seconds.clone(),
        );
        registry.register_with_unit(
            "write",
            "Bytes written to files",
            Unit::Bytes,
            write_bytes.clone(),
        );
        registry.register_with_unit(
            "write",
            "Time of each file write (write_at) until every replica has it",
            Unit::Seconds,
            write_seconds.clone(),
        );
        registry.register_with_unit(
            "checkpoint_save",
            "Time to save a checkpoint (write, fsync, record)",
            Unit::Seconds,
            save_seconds.clone(),
        );
        registry.register_with_unit(
            "checkpoint_restore",
            "Time to load and verify a checkpoint",
            Unit::Seconds,
            restore_seconds.clone(),
        );
        registry.register(
            "checkpoint_saves",
            "Checkpoint saves by result (ok, error)",
            saves.clone(),
        );
        registry.register_collector(Box::new(CacheCollector { cache }));
        Self {
            registry: Mutex::new(registry),
            read_bytes,
            read_seconds,
            write_bytes,
            write_seconds,
            save_seconds,
            restore_seconds,
            saves,
        }
    }

    /// The metrics in the Prometheus text format (what `/metrics` serves).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }

    /// Runs `f` on the registry, e.g. to add a program's own metrics so
    /// that one `/metrics` serves both.
    pub fn registry<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        f(&mut self.registry.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The data-path metrics of files of volume `volume` (a label value).
    pub(crate) fn file(&self, volume: &str) -> FileMetrics {
        let l = VolumeLabel {
            volume: volume.to_string(),
        };
        // The volume's checkpoint series exist from its first file on, at
        // 0: a counter born at its first increment shows Prometheus no
        // increase, so `rate()` would miss the first saves.
        drop(self.save_seconds.get_or_create(&l));
        drop(self.restore_seconds.get_or_create(&l));
        for result in ["ok", "error"] {
            drop(self.saves.get_or_create(&SaveLabels {
                volume: volume.to_string(),
                result,
            }));
        }
        FileMetrics {
            read_bytes: self.read_bytes.get_or_create(&l).clone(),
            read_seconds: self.read_seconds.get_or_create(&l).clone(),
            write_bytes: self.write_bytes.get_or_create(&l).clone(),
            write_seconds: self.write_seconds.get_or_create(&l).clone(),
        }
    }

    /// Records a checkpoint save of `volume` that took `took` and ended
    /// `ok` or not (a failed save's time is not a save time).
    pub fn checkpoint_saved(&self, volume: &str, took: Duration, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.saves
            .get_or_create(&SaveLabels {
                volume: volume.to_string(),
                result,
            })
            .inc();
        if ok {
            self.save_seconds
                .get_or_create(&VolumeLabel {
                    volume: volume.to_string(),
                })
                .observe(took);
        }
    }

    /// Records a checkpoint restore of `volume` that took `took`.
    pub fn checkpoint_restored(&self, volume: &str, took: Duration) {
        self.restore_seconds
            .get_or_create(&VolumeLabel {
                volume: volume.to_string(),
            })
            .observe(took);
    }
}

/// One open file's handles on its volume's data-path metrics.
#[derive(Debug, Clone)]
pub(crate) struct FileMetrics {
    read_bytes: Counter,
    read_seconds: AtomicHistogram,
    write_bytes: Counter,
    write_seconds: AtomicHistogram,
}

impl FileMetrics {
    pub(crate) fn read(&self, bytes: usize, took: Duration) {
        self.read_bytes.inc_by(bytes as u64);
        self.read_seconds.observe(took);
    }

    pub(crate) fn wrote(&self, bytes: usize, took: Duration) {
        self.write_bytes.inc_by(bytes as u64);
        self.write_seconds.observe(took);
    }
}

/// The block cache's counters, read at scrape time.
#[derive(Debug)]
struct CacheCollector {
    cache: Arc<BlockCache>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabel {
    tier: &'static str,
}

fn tier_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    tiers: &[(&'static str, &TierStats)],
    value: impl Fn(&TierStats) -> u64,
    counter: bool,
) -> Result<(), std::fmt::Error> {
    let kind = if counter {
        ConstCounter::new(0u64).metric_type()
    } else {
        ConstGauge::new(0i64).metric_type()
    };
    let mut family = encoder.encode_descriptor(name, help, unit, kind)?;
    for (tier, t) in tiers {
        let labels = TierLabel { tier };
        let m = family.encode_family(&labels)?;
        if counter {
            ConstCounter::new(value(t)).encode(m)?;
        } else {
            ConstGauge::new(i64::try_from(value(t)).unwrap_or(i64::MAX)).encode(m)?;
        }
    }
    Ok(())
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.cache.stats();
        let mut tiers: Vec<(&'static str, &TierStats)> = vec![("memory", &s.memory)];
        if let Some(ssd) = &s.ssd {
            tiers.push(("ssd", ssd));
        }
        let e = &mut encoder;
        tier_family(
            e,
            "cache_lookups",
            "Block lookups per cache tier (the SSD tier is asked after a memory miss)",
            None,
            &tiers,
            |t| t.hits.saturating_add(t.misses),
            true,
        )?;
        tier_family(
            e,
            "cache_hits",
            "Block lookups a cache tier answered",
            None,
            &tiers,
            |t| t.hits,
            true,
        )?;
        tier_family(
            e,
            "cache_evictions",
            "Blocks a cache tier dropped for space",
            None,
            &tiers,
            |t| t.evictions,
            true,
        )?;
        tier_family(
            e,
            "cache_used",
            "Bytes a cache tier holds",
            Some(&Unit::Bytes),
            &tiers,
            |t| t.used_bytes,
            false,
        )?;
        tier_family(
            e,
            "cache_capacity",
            "Configured size of a cache tier",
            Some(&Unit::Bytes),
            &tiers,
            |t| t.capacity_bytes,
            false,
        )?;
        for (name, help, v) in [
            (
                "prefetch_blocks",
                "Blocks read ahead into the cache",
                s.prefetched_blocks,
            ),
            (
                "prefetch_hits",
                "Blocks read ahead that a read then used",
                s.prefetch_hits,
            ),
        ] {
            let c = ConstCounter::new(v);
            let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
            c.encode(m)?;
        }
        Ok(())
    }
}

/// The content type of [`ClientMetrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics` (this client's metrics in the text format) on
/// `addr` until the returned task is aborted or the process exits;
/// returns the bound address. One small response per connection, so an
/// HTTP/1.1 server library would add nothing a scraper needs.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    addr: std::net::SocketAddr,
    metrics: Arc<ClientMetrics>,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let metrics = metrics.clone();
            tokio::spawn(answer(sock, async move { metrics.encode() }));
        }
    });
    Ok((bound, task))
}

/// [`serve`] on a unix socket at `path` (mode 0600, replacing a stale
/// socket file left by an earlier process): what the CSI node plugin
/// scrapes its mounts through, so a node's mounts need no ports.
///
/// # Errors
/// The socket cannot be made at `path`.
pub async fn serve_unix(
    path: &std::path::Path,
    metrics: Arc<ClientMetrics>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let metrics = metrics.clone();
            tokio::spawn(answer(sock, async move { metrics.encode() }));
        }
    }))
}

/// Answers one HTTP request on `sock`: `GET /metrics` with `body` in the
/// OpenMetrics text format (awaited only for that request), anything else
/// with 404.
pub async fn answer<S>(mut sock: S, body: impl std::future::Future<Output = String>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut head = [0u8; 1024];
    let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut head)).await else {
        return;
    };
    let (status, kind, body) = if head[..n].starts_with(b"GET /metrics") {
        ("200 OK", CONTENT_TYPE, body.await)
    } else {
        (
            "404 Not Found",
            "text/plain",
            "this endpoint serves GET /metrics\n".to_string(),
        )
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(reply.as_bytes()).await;
}

/// Merges OpenMetrics expositions of several processes of this binary into
/// one (what the CSI node plugin serves for its mounts): each sample gets
/// the label `label="VALUE"` of its source (first among its labels), each
/// metric family is described once (`# HELP`, `# TYPE`, `# UNIT` from its
/// first source) with the samples of every source under it, and the text
/// ends with one `# EOF`. Sources are `(VALUE, text)`; label values are
/// escaped as the format requires.
pub fn merge_expositions(label: &str, sources: &[(String, String)]) -> String {
    // Family name -> (descriptor lines, samples), in first-seen order.
    let mut order: Vec<String> = Vec::new();
    let mut families: std::collections::HashMap<String, (Vec<String>, Vec<String>)> =
        std::collections::HashMap::new();
    for (value, text) in sources {
        let value = escape_label_value(value);
        let mut current: Option<String> = None;
        for line in text.lines() {
            if line.is_empty() || line == "# EOF" {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let mut f = rest.splitn(3, ' ');
                let (Some(_kind), Some(name)) = (f.next(), f.next()) else {
                    continue;
                };
                let fam = families.entry(name.to_string()).or_insert_with(|| {
                    order.push(name.to_string());
                    (Vec::new(), Vec::new())
                });
                // Descriptors come from the first source that has them.
                if fam.1.is_empty() && !fam.0.iter().any(|d| d == line) {
                    fam.0.push(line.to_string());
                }
                current = Some(name.to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let Some(name) = current.clone() else {
                continue;
            };
            let labelled = match line.find(['{', ' ']) {
                Some(i) if line.as_bytes()[i] == b'{' => {
                    let sep = if line[i + 1..].starts_with('}') {
                        ""
                    } else {
                        ","
                    };
                    format!("{}{{{label}=\"{value}\"{sep}{}", &line[..i], &line[i + 1..])
                }
                Some(i) => format!("{}{{{label}=\"{value}\"}}{}", &line[..i], &line[i..]),
                None => continue,
            };
            if let Some(fam) = families.get_mut(&name) {
                fam.1.push(labelled);
            }
        }
    }
    let mut out = String::new();
    for (descs, samples) in order.iter().filter_map(|n| families.get(n)) {
        for l in descs.iter().chain(samples) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out.push_str("# EOF\n");
    out
}

/// Escapes a label value for the text format (backslash, quote, newline).
pub fn escape_label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheConfig;

    fn metrics() -> ClientMetrics {
        let cache = BlockCache::new(&CacheConfig::default()).unwrap();
        ClientMetrics::new(Arc::new(cache))
    }

    #[test]
    fn expositions_merge_under_one_description_each_with_their_source() {
        let a = metrics();
        a.file("data").read(4096, Duration::from_micros(120));
        let b = metrics();
        b.file("ckpt").wrote(8192, Duration::from_micros(300));
        let merged = merge_expositions(
            "csi_volume",
            &[
                ("pv-a".to_string(), a.encode()),
                ("pv-\"b\"".to_string(), b.encode()),
            ],
        );
        assert!(merged.ends_with("\n# EOF\n"));
        assert_eq!(merged.matches("# EOF").count(), 1);
        // One description per family.
        let types: Vec<&str> = merged
            .lines()
            .filter(|l| l.starts_with("# TYPE "))
            .collect();
        let mut unique = types.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(types.len(), unique.len(), "{merged}");
        for want in [
            "cairn_client_read_bytes_total{csi_volume=\"pv-a\",volume=\"data\"} 4096",
            "cairn_client_write_bytes_total{csi_volume=\"pv-\\\"b\\\"\",volume=\"ckpt\"} 8192",
            "cairn_client_prefetch_blocks_total{csi_volume=\"pv-a\"} 0",
            "cairn_client_cache_used_bytes{csi_volume=\"pv-a\",tier=\"memory\"} 0",
        ] {
            assert!(merged.contains(want), "{want} in\n{merged}");
        }
        // Every sample follows its family's description.
        let read = merged
            .find("# TYPE cairn_client_read_bytes counter")
            .unwrap();
        let sample = merged.find("cairn_client_read_bytes_total{").unwrap();
        assert!(read < sample);
        assert_eq!(merge_expositions("x", &[]), "# EOF\n");
    }

    #[test]
    fn names_follow_the_conventions_and_count() {
        let m = metrics();
        let f = m.file("datasets");
        f.read(4096, Duration::from_micros(120));
        f.read(4096, Duration::from_micros(80));
        f.wrote(1 << 20, Duration::from_millis(3));
        m.checkpoint_saved("ckpt", Duration::from_secs(12), true);
        m.checkpoint_saved("ckpt", Duration::from_secs(1), false);
        m.checkpoint_restored("ckpt", Duration::from_secs(4));
        let text = m.encode();
        for want in [
            "cairn_client_read_bytes_total{volume=\"datasets\"} 8192",
            "cairn_client_read_seconds_count{volume=\"datasets\"} 2",
            "cairn_client_read_seconds_bucket{le=\"0.00005\",volume=\"datasets\"} 0",
            "cairn_client_read_seconds_bucket{le=\"0.0001\",volume=\"datasets\"} 1",
            "cairn_client_read_seconds_bucket{le=\"0.0002\",volume=\"datasets\"} 2",
            "cairn_client_read_seconds_bucket{le=\"+Inf\",volume=\"datasets\"} 2",
            "cairn_client_read_seconds_sum{volume=\"datasets\"} 0.0002",
            "cairn_client_write_bytes_total{volume=\"datasets\"} 1048576",
            "cairn_client_checkpoint_save_seconds_sum{volume=\"ckpt\"} 12.0",
            "cairn_client_checkpoint_save_seconds_count{volume=\"ckpt\"} 1",
            "cairn_client_checkpoint_restore_seconds_count{volume=\"ckpt\"} 1",
            "cairn_client_checkpoint_saves_total{volume=\"ckpt\",result=\"ok\"} 1",
            "cairn_client_checkpoint_saves_total{volume=\"ckpt\",result=\"error\"} 1",
            "cairn_client_checkpoint_saves_total{volume=\"datasets\",result=\"ok\"} 0",
            "cairn_client_cache_lookups_total{tier=\"memory\"} 0",
            "cairn_client_cache_hits_total{tier=\"memory\"} 0",
            "cairn_client_cache_evictions_total{tier=\"memory\"} 0",
            "# TYPE cairn_client_cache_used_bytes gauge",
            "cairn_client_prefetch_hits_total 0",
            "# TYPE cairn_client_read_seconds histogram",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let m = Arc::new(metrics());
        m.file("v").read(10, Duration::from_micros(5));
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), m).await.unwrap();
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(
            ok.contains("cairn_client_read_bytes_total{volume=\"v\"} 10"),
            "{ok}"
        );
        assert!(get("/other").await.starts_with("HTTP/1.1 404"));
        task.abort();
    }
}
