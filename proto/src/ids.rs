//! Id newtypes shared across crates, so a bare `u64` never crosses a crate
//! boundary with its meaning left to the reader.

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                Self(v)
            }
        }
    };
}

id_type!(
    /// An inode number. The root directory is [`InodeId::ROOT`].
    InodeId(u64)
);
id_type!(
    /// The identity of a file's data, independent of its names.
    ObjectId(u64)
);
id_type!(
    /// A chain of the chain table; stable forever once assigned.
    ChainId(u32)
);
id_type!(
    /// A chain's version, bumped on every membership change.
    ChainVersion(u64)
);
id_type!(
    /// A metadata replica's Raft node id.
    NodeId(u64)
);
id_type!(
    /// A registered chunkserver.
    ChunkserverId(u64)
);
id_type!(
    /// A target: one data directory (one SSD) of one chunkserver.
    TargetId(u64)
);
id_type!(
    /// A volume (a top-level directory with its own policy).
    VolumeId(u64)
);
id_type!(
    /// A client session with meta; also the client id in request ids.
    SessionId(u64)
);

impl InodeId {
    /// The root directory of the namespace.
    pub const ROOT: InodeId = InodeId(1);
}

/// The `index`-th chunk of an object: the unit of placement and replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChunkId {
    /// The file's object.
    pub object: ObjectId,
    /// The chunk's position in the file (offset / chunk size).
    pub index: u64,
}

impl std::fmt::Display for ChunkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.object, self.index)
    }
}
