//! Latency samples of the data-path phases: the shared
//! [`crate::latency`] types, whose summary includes p99.9 (the data path's
//! goal names it), under the names this workload uses.

pub use crate::latency::{LatencySummary as TailSummary, Samples as TailSamples};
