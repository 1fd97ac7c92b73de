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

/// How often meta's leader sends an empty message on a change-feed stream
/// while its read lease holds; a subscriber that hears nothing for a few
/// of these counts the stream as lost and drops what it cached.
pub const CHANGE_FEED_HEARTBEAT: std::time::Duration = std::time::Duration::from_millis(500);

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
