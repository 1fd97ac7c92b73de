//! openraft glue: storage in sled and the tonic transport.

pub mod log_store;
pub mod network;
pub mod segments;
pub mod state_machine;
pub mod types;
