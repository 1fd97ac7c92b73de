//! The chunkserver's view of the chain table: the shared definition in
//! [`cairn_proto::chain`] (clients route with the same code).

pub use cairn_proto::chain::*;
