//! Latency samples of one benchmark phase and their summary.
//!
//! Every operation's latency is kept (a phase is at most some tens of
//! thousands of operations, a few hundred KiB), so percentiles are exact
//! rather than bucketed: the nearest-rank p50 and p99 of what was measured.
//! Samples are recorded in nanoseconds because a local `stat` takes about a
//! microsecond; summaries are reported in microseconds.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

/// The latencies of one phase (of one client, or merged over all clients).
#[derive(Debug, Default, Clone)]
pub struct Samples {
    ns: Vec<u64>,
}

/// Percentiles and mean of a [`Samples`], in microseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Median (nearest rank).
    pub p50_us: f64,
    /// 99th percentile (nearest rank).
    pub p99_us: f64,
    /// 99.9th percentile (nearest rank); with fewer than 1,000 samples it
    /// is the maximum.
    pub p999_us: f64,
    /// Slowest operation.
    pub max_us: f64,
    /// Arithmetic mean.
    pub mean_us: f64,
}

impl Samples {
    /// Returns an empty set with room for `n` samples.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            ns: Vec::with_capacity(n),
        }
    }

    /// Records one operation's latency.
    pub fn record(&mut self, d: Duration) {
        self.ns
            .push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Calls `op` with each of `items`, one after the other, and records
    /// how long each call took.
    ///
    /// # Errors
    /// The first error `op` returns; no call is made after it.
    pub fn time_each<T>(
        items: impl IntoIterator<Item = T>,
        mut op: impl FnMut(T) -> Result<()>,
    ) -> Result<Samples> {
        let items = items.into_iter();
        let mut samples = Samples::with_capacity(items.size_hint().0);
        for item in items {
            let start = Instant::now();
            op(item)?;
            samples.record(start.elapsed());
        }
        Ok(samples)
    }

    /// [`Self::time_each`] for an asynchronous `op`: each call's future
    /// is timed from its creation until it is ready. (A closure returning
    /// a future rather than an async closure: the futures of async
    /// closures cannot be shown to be `Send` through a generic function
    /// yet, and tasks need that.)
    ///
    /// # Errors
    /// The first error `op` returns; no call is made after it.
    pub async fn time_each_async<T, F>(
        items: impl IntoIterator<Item = T>,
        mut op: impl FnMut(T) -> F,
    ) -> Result<Samples>
    where
        F: Future<Output = Result<()>>,
    {
        let items = items.into_iter();
        let mut samples = Samples::with_capacity(items.size_hint().0);
        for item in items {
            let start = Instant::now();
            op(item).await?;
            samples.record(start.elapsed());
        }
        Ok(samples)
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: Samples) {
        self.ns.extend(other.ns);
    }

    /// Returns the number of samples.
    pub fn len(&self) -> usize {
        self.ns.len()
    }

    /// Returns whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.ns.is_empty()
    }

    /// Returns the summary (all zero when empty).
    pub fn summary(&self) -> LatencySummary {
        if self.ns.is_empty() {
            return LatencySummary::default();
        }
        let mut sorted = self.ns.clone();
        sorted.sort_unstable();
        let us = |ns: u64| ns as f64 / 1_000.0;
        let sum: u128 = sorted.iter().map(|&n| u128::from(n)).sum();
        LatencySummary {
            p50_us: us(nearest_rank(&sorted, 50.0)),
            p99_us: us(nearest_rank(&sorted, 99.0)),
            p999_us: us(nearest_rank(&sorted, 99.9)),
            max_us: us(sorted[sorted.len() - 1]),
            mean_us: sum as f64 / sorted.len() as f64 / 1_000.0,
        }
    }
}

/// Returns the nearest-rank `p`-th percentile of a sorted, non-empty slice:
/// the smallest value with at least `p`% of the values at or below it.
fn nearest_rank(sorted: &[u64], p: f64) -> u64 {
    let n = sorted.len();
    // Rounded before the ceiling so that 99.9 % of 1,000 is rank 999, not
    // 1,000 through floating-point noise.
    let rank = ((p / 100.0 * n as f64 * 1e6).round() / 1e6).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&v, 50.0), 50);
        assert_eq!(nearest_rank(&v, 99.0), 99);
        assert_eq!(nearest_rank(&v, 100.0), 100);
        assert_eq!(nearest_rank(&[7], 50.0), 7);
        assert_eq!(nearest_rank(&[7], 99.0), 7);
        // Two values: the median is the lower one, p99 the upper one.
        assert_eq!(nearest_rank(&[1, 2], 50.0), 1);
        assert_eq!(nearest_rank(&[1, 2], 99.0), 2);
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(nearest_rank(&v, 99.9), 999);
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&v, 99.9), 100);
    }

    #[test]
    fn summary_in_microseconds_and_merge() {
        let mut a = Samples::with_capacity(2);
        a.record(Duration::from_micros(10));
        a.record(Duration::from_micros(30));
        let mut b = Samples::default();
        b.record(Duration::from_micros(20));
        a.merge(b);
        assert_eq!(a.len(), 3);
        let s = a.summary();
        assert_eq!(s.p50_us, 20.0);
        assert_eq!(s.p99_us, 30.0);
        assert_eq!(s.p999_us, 30.0);
        assert_eq!(s.max_us, 30.0);
        assert_eq!(s.mean_us, 20.0);
        assert_eq!(Samples::default().summary(), LatencySummary::default());
    }

    #[test]
    fn time_each_records_one_sample_per_call_and_stops_at_an_error() {
        let s = Samples::time_each(0..5, |_| Ok(())).unwrap();
        assert_eq!(s.len(), 5);
        let mut calls = 0;
        let e = Samples::time_each(0..5, |i| {
            calls += 1;
            anyhow::ensure!(i < 2, "fails at {i}");
            Ok(())
        });
        assert!(e.is_err());
        assert_eq!(calls, 3);
    }
}
