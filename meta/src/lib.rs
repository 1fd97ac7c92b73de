//! `cairn-meta`: the Raft-replicated metadata service of Cairn.
//!
//! * [`fs`]: the deterministic state machine (namespace, layouts, volumes,
//!   sessions, chunkservers, chain table) over sled.
//! * [`raft`]: openraft storage (log and state machine in sled) and the
//!   tonic transport between replicas.
//! * [`proposer`]: group commit of mutations into Raft entries.
//! * [`service`]: the client-facing gRPC service (`cairn.meta.v1.Meta`).
//! * [`node`]: [`start`] — open the store, join or bootstrap the cluster,
//!   serve, and the leader's background duties.
//! * [`metrics`]: Prometheus text on `GET /metrics`.
//! * [`config`]: the replica's configuration, [`MetaConfig`].

pub mod changes;
pub mod config;
pub mod fs;
pub mod gc;
pub mod lease;
pub mod metrics;
pub mod node;
pub mod placement;
pub mod proposer;
pub mod raft;
pub mod service;

pub use config::MetaConfig;
pub use node::{MetaError, MetaHandle, start};
