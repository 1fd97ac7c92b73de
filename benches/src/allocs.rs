//! Counts the heap allocations of the benchmark process (issue 14: a
//! 4 KiB read should allocate nothing beyond pooled buffers, DESIGN §10).
//!
//! The process's global allocator is `cairn_proto::heap::Counting`, which
//! counts only while [`per_op`] or [`idle_rate`] measures. The counts are process-wide: [`per_op`] subtracts
//! what the process allocates while idle ([`idle_rate`], measured before:
//! session heartbeats, the servers' CPU watch) over as long as the work
//! took, so what remains is what the measured operations allocated.

use std::time::{Duration, Instant};

use cairn_proto::heap::{self, Counting, totals};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations and bytes per second (what [`idle_rate`] returns).
pub type Rate = (f64, f64);

/// Where a workload puts what its measured part allocated per operation,
/// with the idle [`Rate`] to subtract.
pub type Sink<'a> = (Rate, &'a std::sync::Mutex<Option<PerOp>>);

/// Heap use per operation of some work.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PerOp {
    /// Allocations per operation.
    pub allocations: f64,
    /// Bytes allocated per operation.
    pub bytes: f64,
}

/// Allocations and bytes per second the process makes while it does
/// nothing but wait for `over`.
pub async fn idle_rate(over: Duration) -> Rate {
    let _on = heap::on();
    let (a0, b0) = totals();
    let t0 = Instant::now();
    tokio::time::sleep(over).await;
    let (a1, b1) = totals();
    let s = t0.elapsed().as_secs_f64();
    ((a1 - a0) as f64 / s, (b1 - b0) as f64 / s)
}

/// What `work` (`ops` operations) allocated per operation, less what the
/// process allocates at `idle` (per second, from [`idle_rate`]) over as
/// long as `work` took.
pub async fn per_op<T>(ops: usize, idle: (f64, f64), work: impl Future<Output = T>) -> (T, PerOp) {
    let on = heap::on();
    let (a0, b0) = totals();
    let t0 = Instant::now();
    let out = work.await;
    let took = t0.elapsed().as_secs_f64();
    let (a1, b1) = totals();
    drop(on);
    let ops = ops.max(1) as f64;
    let busy = ((a1 - a0) as f64 - idle.0 * took).max(0.0);
    let bytes = ((b1 - b0) as f64 - idle.1 * took).max(0.0);
    (
        out,
        PerOp {
            allocations: busy / ops,
            bytes: bytes / ops,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // Other tests allocate on other threads meanwhile (the counts are
    // process-wide), so only bounds that extra allocations cannot break
    // are asserted.
    #[tokio::test]
    async fn counts_what_the_work_allocates() {
        let (v, per) = per_op(100, (0.0, 0.0), async {
            (0..100).map(|i| vec![0u8; 1000 + i]).collect::<Vec<_>>()
        })
        .await;
        assert_eq!(v.len(), 100);
        // 100 vectors of at least 1,000 bytes, plus the outer one.
        assert!(per.allocations >= 1.0, "{per:?}");
        assert!(per.bytes >= 1000.0, "{per:?}");
    }

    #[tokio::test]
    async fn the_idle_rate_is_subtracted_and_never_goes_below_zero() {
        let work = tokio::time::sleep(Duration::from_millis(1));
        let (_, none) = per_op(10, (1e15, 1e15), work).await;
        assert_eq!(
            none,
            PerOp {
                allocations: 0.0,
                bytes: 0.0
            }
        );
        let (a, _) = idle_rate(Duration::from_millis(5)).await;
        assert!(a >= 0.0);
    }
}
