//! `cairn-jepsen`: whole-cluster fault tests of Cairn.
//!
//! System tests start real processes of the built binaries and then kill
//! (`SIGKILL`), pause, restart, wipe and partition them, while clients keep
//! working and record what was acknowledged; afterwards the tests check the
//! invariants of DESIGN §9 against what every replica serves.
//!
//! * [`cluster`]: [`MetaCluster`], a cluster of `cairn-meta` processes
//!   (TiKV `test_raftstore` shape): start, kill, restart, wipe, pause,
//!   isolate/heal, status questions, logs.
//! * [`data_cluster`]: [`data_cluster::DataCluster`], meta replicas plus
//!   `cairn-chunkserver` processes, for data-path tests through the client.
//! * [`netns`]: [`NetLab`], the network namespaces, bridge and nftables
//!   rules behind partitions.
//! * [`raw`]: raw gRPC to one replica, including arbitrary request bodies.
//! * [`namespace`]: recursive listings of the namespace as one replica
//!   serves it, and their differences.
//! * [`fuse`]: `cairn mount` processes ([`fuse::Mount`]) for tests over a
//!   real FUSE mount.
//! * [`binary`]: where the built binaries are (`CAIRN_BIN_DIR`).
//!
//! Tests must run after `cargo build --bins`. They print what they do with
//! plain `println!` (shown by `cargo test -- --nocapture`, and for a failed
//! test always), including the tails of the replicas' logs on failure.
//!
//! The process tests share one machine's CPUs and their timing assertions
//! (a new leader within seconds) need it, so each test holds
//! [`serial`]'s guard: they run one at a time even under the parallel test
//! runner.

pub mod binary;
pub mod cluster;
pub mod data_cluster;
pub mod disk;
pub mod fuse;
pub mod namespace;
pub mod netns;
pub mod ports;
pub mod raw;
pub mod replicas;
pub mod scrape;

pub use cluster::{ClusterOpts, Leader, MetaCluster};
pub use netns::NetLab;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Returns a guard that keeps other process-level tests of this process
/// from running until it is dropped. A test that failed while holding it
/// does not block the others (no poisoning).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}
