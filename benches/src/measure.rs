//! The figures of the data-path workloads (`chunk`, `client`): what one
//! system did in one phase ([`Measured`]), its figures as reported
//! ([`SystemResult`]), a phase's systems side by side ([`PhaseResult`]),
//! and the ratios between Cairn and its baselines.
//!
//! Each workload names the systems it compares with its own enum (Cairn
//! and the baselines that fit its phases) and describes them through
//! [`Compared`]. That is a trait because the two workloads have different
//! closed sets of systems while everything here — figures, ratios, the
//! JSON shape — needs only a system's label, its description and whether
//! it is Cairn.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde::Serialize;

use crate::latency::{LatencySummary, Samples};
use crate::watch::{ProcessCpu, ServerTime};

/// What one system did in one phase: operations, bytes, wall time and
/// every operation's latency.
#[derive(Debug)]
pub struct Measured {
    /// Operations recorded.
    pub ops: usize,
    /// Payload bytes they moved.
    pub bytes: u64,
    /// Wall time from the first recorded operation's start to the last
    /// one's end (a final sync included).
    pub elapsed: Duration,
    /// Every recorded operation's latency.
    pub samples: Samples,
    /// Requests retried after a retryable error reply (Cairn only).
    pub retries: u64,
}

impl Measured {
    /// Returns what `samples` (one per operation) recorded, `bytes` moved in
    /// `elapsed`, without retries.
    pub fn new(samples: Samples, bytes: u64, elapsed: Duration) -> Self {
        Self {
            ops: samples.len(),
            bytes,
            elapsed,
            samples,
            retries: 0,
        }
    }
}

/// A system a workload measures: Cairn, or one of its baselines.
pub trait Compared: Copy + PartialEq {
    /// Returns the label used in tables.
    fn label(self) -> &'static str;
    /// Returns what the system is, in one line.
    fn description(self) -> &'static str;
    /// Returns whether this is Cairn (rather than a baseline).
    fn is_cairn(self) -> bool;
}

/// The figures of one system in one phase.
#[derive(Debug, Clone, Serialize)]
pub struct SystemResult<S> {
    /// Which system.
    pub system: S,
    /// What it is, in words.
    pub description: &'static str,
    /// Operations recorded.
    pub ops: usize,
    /// Payload bytes moved.
    pub bytes: u64,
    /// Wall time of the recorded operations.
    pub seconds: f64,
    /// `ops / seconds`.
    pub ops_per_sec: f64,
    /// `bytes / seconds` in MiB/s.
    pub mib_per_sec: f64,
    /// Per-operation latency; `None` for a derived baseline.
    pub latency: Option<LatencySummary>,
    /// Cairn's rate ÷ this system's (baselines of rate phases only).
    pub cairn_over_this: Option<f64>,
    /// Whether the figures are computed from another system's rather than
    /// measured.
    pub derived: bool,
    /// Requests Cairn retried after a retryable error reply (normally 0).
    pub retries: u64,
}

impl<S: Compared> SystemResult<S> {
    /// Returns the result of `system` from what it measured.
    pub fn new(system: S, m: &Measured) -> Self {
        let seconds = m.elapsed.as_secs_f64();
        let per_sec = |x: f64| if seconds > 0.0 { x / seconds } else { 0.0 };
        Self {
            system,
            description: system.description(),
            ops: m.ops,
            bytes: m.bytes,
            seconds,
            ops_per_sec: per_sec(m.ops as f64),
            mib_per_sec: per_sec(m.bytes as f64 / f64::from(1 << 20)),
            latency: Some(m.samples.summary()),
            cairn_over_this: None,
            derived: false,
            retries: m.retries,
        }
    }

    /// Returns the baseline `system` derived from `of`: its rates divided
    /// by `by` (3 for three copies of every byte on one disk).
    pub fn divided(of: &Self, system: S, by: f64) -> Self {
        Self {
            system,
            description: system.description(),
            ops: of.ops,
            bytes: of.bytes,
            seconds: of.seconds * by,
            ops_per_sec: of.ops_per_sec / by,
            mib_per_sec: of.mib_per_sec / by,
            latency: None,
            cairn_over_this: None,
            derived: true,
            retries: 0,
        }
    }
}

/// The rate a phase compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rate {
    /// Bytes per second (sequential phases).
    MibPerSec,
    /// Operations per second (IOPS, files/s).
    OpsPerSec,
}

impl Rate {
    /// Returns `r`'s figure in this rate.
    pub fn of<S>(self, r: &SystemResult<S>) -> f64 {
        match self {
            Rate::MibPerSec => r.mib_per_sec,
            Rate::OpsPerSec => r.ops_per_sec,
        }
    }
}

/// Everything measured in one phase `P` of a workload with systems `S`.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult<P, S> {
    /// Which phase.
    pub phase: P,
    /// What ran, in words.
    pub what: String,
    /// Cairn first, then the baselines.
    pub systems: Vec<SystemResult<S>>,
    /// The phase's ratio of Cairn to its reference baseline.
    pub ratio: Option<f64>,
    /// How the ratio is computed.
    pub ratio_of: &'static str,
    /// The chunkservers' handling times during Cairn's part (empty when
    /// their metrics could not be read).
    pub server_time: Vec<ServerTime>,
    /// CPU the servers and the benchmark (the client) used during Cairn's
    /// part, warm-up included.
    pub cpu: Vec<ProcessCpu>,
}

impl<P, S: Compared> PhaseResult<P, S> {
    /// Returns the result of `system`, if it ran.
    pub fn system(&self, system: S) -> Option<&SystemResult<S>> {
        self.systems.iter().find(|s| s.system == system)
    }
}

/// Returns `a / b` when both are known and `b` is positive.
pub fn over(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Fills in `cairn_over_this` of every baseline (the first Cairn system's
/// `rate` ÷ the baseline's) and returns it for `reference`.
pub fn rate_ratios<S: Compared>(
    systems: &mut [SystemResult<S>],
    reference: S,
    rate: Rate,
) -> Option<f64> {
    let cairn = systems
        .iter()
        .find(|s| s.system.is_cairn())
        .map(|s| rate.of(s));
    for s in systems.iter_mut() {
        if !s.system.is_cairn() {
            s.cairn_over_this = over(cairn, Some(rate.of(s)));
        }
    }
    systems
        .iter()
        .find(|s| s.system == reference)
        .and_then(|s| s.cairn_over_this)
}

/// Returns `of`'s p50 ÷ the sum of the p50s of `floors` (what Cairn adds
/// to, say, one disk read plus one network round trip); `None` when any
/// of them did not run.
pub fn p50_over_sum<S: Compared>(systems: &[SystemResult<S>], of: S, floors: &[S]) -> Option<f64> {
    let p50 = |sys: S| {
        systems
            .iter()
            .find(|s| s.system == sys)
            .and_then(|s| s.latency)
            .map(|l| l.p50_us)
    };
    let floor = floors
        .iter()
        .try_fold(0.0, |sum, &f| p50(f).map(|p| sum + p));
    over(p50(of), floor)
}

/// Waits for every task and merges the samples they return; the first
/// error (or panic) wins, reported once all have ended.
///
/// # Errors
/// The first task's error.
pub async fn join_samples(tasks: Vec<tokio::task::JoinHandle<Result<Samples>>>) -> Result<Samples> {
    let mut samples = Samples::default();
    let mut first_err = None;
    for t in tasks {
        match t.await.map_err(|e| anyhow!("a worker task failed: {e}")) {
            Ok(Ok(s)) => samples.merge(s),
            Ok(Err(e)) | Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(samples),
    }
}

/// Runs blocking baseline work on a blocking thread.
///
/// # Errors
/// `f`'s error, or a panic in it.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("a baseline thread failed")?
}
