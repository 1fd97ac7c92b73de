//! The openraft type configuration of the metadata group.
//!
//! Log entries carry a [`Command`](crate::fs::Command) (a namespace or
//! cluster mutation stamped by the leader with the request's time and the
//! client's request id) and produce a [`Response`](crate::fs::Response).
//! Node ids are `u64` allocated by the state machine (never taken from a
//! flag), nodes are known by their gRPC address.

use crate::fs::{Command, Response};

openraft::declare_raft_types!(
    /// Type configuration of the metadata Raft group.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle of a metadata replica.
pub type MetaRaft = openraft::Raft<TypeConfig>;
/// A log id of the metadata group.
pub type LogId = openraft::LogId<u64>;
/// Membership as stored in the state machine.
pub type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
/// A snapshot's metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;
/// Entry type of the log.
pub type Entry = openraft::Entry<TypeConfig>;
