//! `cairn-client`: the library programs, the FUSE and CSI frontends and the
//! `cairn` command line use to talk to a Cairn cluster.
//!
//! * [`meta_client`]: [`MetaClient`], the gRPC client of the metadata
//!   service — leader tracking, retries, sessions and request ids, path
//!   helpers.
//! * [`data`]: pipelined connections to chunkserver shards over the binary
//!   data-plane protocol, request builders and the end-to-end CRC check of
//!   read replies; its [`data::DataError`] carries the same [`ErrorCode`]s.
//!
//! Metadata errors are [`CairnStatus`] throughout: a stable [`ErrorCode`] plus a
//! message, convertible into `std::io::Error` (and to an errno through
//! [`ErrorCode::errno`]). There is deliberately no second error type: what
//! meta says and what the client concludes travel the same way.

#![warn(missing_docs)]

pub mod data;
pub mod meta_client;

pub use cairn_proto::{CairnStatus, ErrorCode};
pub use meta_client::{
    Entry, MetaClient, MetaClientOptions, Owner, RenameFlags, SetAttrChanges, SetTime, XattrMode,
};

/// The result type of this crate.
pub type Result<T, E = CairnStatus> = std::result::Result<T, E>;
