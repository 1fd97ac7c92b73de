//! `cairn-chunkserver`: stores chunk replicas on local SSD and serves the
//! data plane (DESIGN §2, §5).
//!
//! Landed so far:
//! * [`chain`]: the chunkserver's view of meta's chain table — routing to a
//!   chain's successor and tail, and the stable chunk-to-shard hash.
//! * [`control`]: the control plane — registration, heartbeats that extend
//!   the serving lease, and the chain-table watch.
//! * [`store`]: the chunk engine — targets, shard stores, block allocator,
//!   group-committed syncs.
//!
//! The chunk engine (glommio `DmaFile` + sled), the shard servers and chain
//! replication follow (issue 3).

pub mod chain;
pub mod control;
pub mod store;
