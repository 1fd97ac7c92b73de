//! `cairn-chunkserver`: stores chunk replicas on local SSD and serves the
//! data plane (DESIGN §2, §5).
//!
//! * [`chain`]: the chunkserver's view of meta's chain table — routing to a
//!   chain's successor and tail, and the stable chunk-to-shard hash.
//! * [`control`]: the control plane — registration, heartbeats that extend
//!   the serving lease, and the chain-table watch.
//! * [`store`]: the chunk engine — targets, shard stores, block allocator,
//!   group-committed syncs.
//! * [`metrics`]: request, byte, latency, checksum and scrub counters,
//!   rendered for Prometheus.
//! * [`scrub`]: the background scrubber.
//! * [`server`]: a shard's data-plane server — chain replication with CRAQ
//!   reads, fencing, leases.
//! * [`locks`]: per-chunk async locks.
//! * [`node`]: starting a chunkserver (shard executors + control thread).

pub mod chain;
pub mod control;
pub mod failpoint;
pub mod heap;
pub mod locks;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod scrub;
pub mod server;
pub mod stall;
pub mod store;
pub mod wire;
