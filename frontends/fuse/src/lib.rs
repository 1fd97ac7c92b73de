//! FUSE frontend: a Cairn cluster (or one of its volumes) as a local
//! directory that PyTorch, TensorFlow and shell tools use unchanged, and
//! the path the CSI node plugin mounts into training pods.
//!
//! - [`mount()`] mounts a connected [`cairn_client::Client`] and serves it
//!   on the caller's tokio runtime; `cairn mount` and `cairn dev --mount`
//!   are thin shells around it.
//! - [`fs`] maps every kernel request onto the client library (see its
//!   docs for concurrency, open files, caches and close-to-open).
//! - [`feed`] keeps the kernel's entry and attribute caches longer while
//!   meta's change feed invalidates them.
//! - [`checkpoints`] makes marked checkpoint directories manage
//!   themselves (publish records, retention, save/restore metrics).
//! - [`attr`] holds the pure conversions (attributes, inode numbers,
//!   errno), unit-tested.
//!
//! Kernel settings: 1 MiB reads and writes (`FUSE_MAX_PAGES`), 64
//! background requests, readdirplus, parallel directory operations, and a
//! read-ahead raised to 8 MiB when running as root, so a sequential reader
//! keeps several 1 MiB requests in flight on top of the client's own
//! read-ahead.

pub mod attr;
pub mod checkpoints;
pub mod feed;
pub mod fs;
pub mod mount;
pub mod takeover;
pub mod writeback;

pub use fs::FsConfig;
pub use mount::{MountConfig, Mounted, lazy_unmount, mount, resume};
