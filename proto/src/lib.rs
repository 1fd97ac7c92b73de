//! `cairn-proto`: the wire contracts of Cairn.
//!
//! * [`meta`]: the metadata service (namespace, layouts, volumes, sessions,
//!   chunkservers, chain table, admin) as tonic gRPC.
//! * [`raft`]: the Raft transport between metadata replicas.
//! * [`error`]: stable error codes shared by every crate, with errno and
//!   `io::ErrorKind` mappings and the gRPC status encoding.
//! * [`frame`]: the data-plane binary protocol (DESIGN §6): 128-byte
//!   header with CRC, payload, per-4 KiB segment CRCs; a zero-copy decoder.
//! * [`heap`]: a global allocator that counts allocations (benchmarks,
//!   the chunkserver's metric).
//! * [`ids`]: id newtypes.
//! * [`names`]: validation of file names, shared by servers and clients.
//! * [`units`]: sizes on command lines.

pub mod chain;
pub mod error;
pub mod frame;
pub mod heap;
pub mod ids;
pub mod names;
pub mod units;

pub use error::{CairnStatus, ErrorCode};

/// How often a change-feed subscriber asks to renew its cache lease; the
/// leader answers each renewal while its own read lease holds, so a
/// subscriber that hears nothing for a few of these counts the stream as
/// lost and drops what it cached.
pub const CHANGE_FEED_HEARTBEAT: std::time::Duration = std::time::Duration::from_millis(250);

/// How long a client's cache lease runs from the moment it sent the
/// renewal that the leader granted (DESIGN §4, `meta/src/changes.rs`).
pub const CLIENT_LEASE: std::time::Duration = std::time::Duration::from_secs(1);

/// How long meta's leader counts a client's lease as running after it
/// granted it: [`CLIENT_LEASE`] plus a tenth for clock-rate drift between
/// the machines, and 10 ms for reading the clocks late. A new leader
/// acknowledges no mutation before this much time has passed since it
/// took office, so leases its predecessors granted have run out.
pub const CLIENT_LEASE_BOUND: std::time::Duration = std::time::Duration::from_millis(1110);

/// A connection to a meta replica (from a client or a chunkserver) silent
/// this long gets an HTTP/2 PING. With [`META_KEEPALIVE_TIMEOUT`], a
/// replica that froze or was cut off with its connections open is left
/// within 3 s, about when a new leader is in office (DESIGN §10: under
/// 3 s). It was 3 s + 3 s for clients, and nothing at all for the
/// chunkservers' chain watch.
pub const META_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A PING to a meta replica unanswered this long closes the connection,
/// and fails the calls and streams on it.
pub const META_KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Generated gRPC code for the metadata service.
#[allow(clippy::all, missing_docs)]
pub mod meta {
    tonic::include_proto!("cairn.meta.v1");
}

/// Generated gRPC code for the Raft transport.
#[allow(clippy::all, missing_docs)]
pub mod raft {
    tonic::include_proto!("cairn.raft.v1");
}
