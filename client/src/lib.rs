//! `cairn-client`: the library programs, the FUSE and CSI frontends and the
//! `cairn` command line use to talk to a Cairn cluster (DESIGN §7).
//!
//! Start with [`Client::connect`], then [`Client::open`] / [`Client::create`]
//! for a [`File`] (`read_at`, `write_at`, `append`, `fsync`, `set_len`,
//! `close`), the namespace methods of [`Client`] (or [`Client::meta`] for
//! the full metadata API), and [`Checkpoints`] for checkpoint publication.
//!
//! * [`client`]: [`Client`], its options, open flags and open-file
//!   bookkeeping.
//! * [`file`]: [`File`]: striped, cached, read-ahead reads and writes.
//! * [`layout`]: the striping math (chunk ids and chains from a layout).
//! * [`chains`]: the chain-table cache, kept current by meta's watch stream.
//! * [`chunk_io`]: one chunk request made reliable: replica choice,
//!   fail-over, retries with backoff, chain-version refreshes.
//! * [`cache`]: the block cache (memory tier, optional local SSD tier).
//! * [`readahead`]: sequential-stream detection.
//! * [`checkpoint`]: atomic checkpoint save / load / list / prune.
//! * [`meta_client`]: [`MetaClient`], the gRPC client of the metadata
//!   service — leader tracking, retries, sessions and request ids, path
//!   helpers.
//! * [`data`]: pipelined connections to chunkserver shards over the binary
//!   data-plane protocol, request builders and the end-to-end CRC check of
//!   read replies.
//!
//! Errors are [`CairnStatus`] throughout: a stable [`ErrorCode`] plus a
//! message, convertible into `std::io::Error` (its `ErrorKind` follows the
//! code) and to an errno through [`ErrorCode::errno`]. There is
//! deliberately no second error type: what meta or a chunkserver says and
//! what the client concludes travel the same way.

#![warn(missing_docs)]

pub mod cache;
pub mod chains;
pub mod checkpoint;
pub mod chunk_io;
pub mod client;
pub mod compress;
pub mod crypto;
pub mod data;
pub mod file;
pub mod layout;
pub mod leased;
pub mod meta_client;
pub mod metrics;
pub mod readahead;

pub use cairn_proto::{CairnStatus, ErrorCode};
pub use checkpoint::{CheckpointInfo, Checkpoints};
pub use client::{Client, ClientOptions, OpenOptions, SNAPSHOTS_DIR};
pub use file::{File, ReadLater, ReadNow};
pub use meta_client::{
    Entry, LockRequest, MetaClient, MetaClientOptions, Owner, RenameFlags, SetAttrChanges, SetTime,
    SnapshotPath, XattrMode,
};

/// The result type of this crate.
pub type Result<T, E = CairnStatus> = std::result::Result<T, E>;
