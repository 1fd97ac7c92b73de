//! openraft glue: storage in sled and the tonic transport.

pub mod log_store;
pub mod network;
pub mod segments;
pub mod state_machine;
pub mod types;

/// Wires replica `node_id`'s stores and network so that, as leader, it
/// replicates its entries while its own log sync runs: the log
/// acknowledges the leader's own command entries once written, the state
/// machine applies an entry only once the local log has it durable, and the
/// commit index sent to followers is capped the same way (see "Leader
/// appends" in [`log_store`]'s docs). The three go together: any one alone
/// would let a write take effect on fewer than a majority of durable
/// copies, so this is the only way to turn the first on.
pub fn replicate_during_sync(
    node_id: u64,
    log: &log_store::LogStore,
    sm: &state_machine::StateMachineStore,
    network: network::Network,
) -> network::Network {
    sm.apply_durable_only(log.durable());
    let network = network.cap_commit_at(log.durable());
    log.ack_leader_appends_early(node_id);
    network
}
