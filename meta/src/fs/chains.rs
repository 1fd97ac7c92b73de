//! Chunkserver registration and the chain tables (DESIGN §3, §5).
//!
//! Registration is a Raft decision (it can add targets and chains);
//! heartbeats and liveness are soft state on the leader
//! ([`crate::node`]), which turns its verdicts into
//! [`Op::SetTargetStates`](super::Op::SetTargetStates) entries. Every
//! change to any chain bumps that chain's version and the global
//! `chains_version` that clients watch.

use super::store::{Kv, Txn, key};
use super::{
    Chain, ChainMember, ChunkserverRecord, FsResult, Reply, TargetRecord, TargetSpec, TargetState,
    counter, fail, next,
};
use crate::placement::{TargetLoc, chains_to_add};

/// Replication factors that get a chain table.
pub const REPLICATIONS: [u32; 3] = [1, 2, 3];

fn bump_version<K: Kv + ?Sized>(t: &mut Txn<'_, K>) -> FsResult<()> {
    next(t, counter::CHAINS_VERSION, 0)?;
    Ok(())
}

/// Returns every registered chunkserver.
pub(crate) fn chunkservers<K: Kv + ?Sized>(t: &Txn<'_, K>) -> FsResult<Vec<ChunkserverRecord>> {
    t.scan(b"k", None, usize::MAX)?
        .iter()
        .map(|(k, v)| Ok(super::store::decode(k, v)?))
        .collect()
}

/// Returns the chains of the table for `replication`, by id.
pub(crate) fn table<K: Kv + ?Sized>(t: &Txn<'_, K>, replication: u32) -> FsResult<Vec<Chain>> {
    t.scan(&key::chain_prefix(replication), None, usize::MAX)?
        .iter()
        .map(|(k, v)| Ok(super::store::decode(k, v)?))
        .collect()
}

/// Registers a chunkserver (or updates a known one, found by its UUID),
/// assigns ids to new targets and adds chains for them.
pub(crate) fn register<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    node_uuid: &str,
    host: &str,
    shard_ports: &[u32],
    zone: &str,
    targets: &[TargetSpec],
) -> FsResult<Reply> {
    if node_uuid.is_empty() || host.is_empty() {
        fail!(
            Invalid,
            "a chunkserver registers with a node uuid and a host"
        );
    }
    if shard_ports.is_empty() || shard_ports.iter().any(|p| *p == 0 || *p > 65535) {
        fail!(
            Invalid,
            "a chunkserver registers with one valid port per shard"
        );
    }
    let all = chunkservers(t)?;
    for spec in targets {
        if let Some(owner) = all
            .iter()
            .find(|c| c.node_uuid != node_uuid && c.targets.iter().any(|x| x.uuid == spec.uuid))
        {
            fail!(
                Exists,
                "target {} is already registered by chunkserver {}",
                spec.uuid,
                owner.id
            );
        }
    }
    let mut rec = match all.iter().find(|c| c.node_uuid == node_uuid) {
        Some(c) => c.clone(),
        None => ChunkserverRecord {
            id: next(t, counter::NEXT_CHUNKSERVER, 1)?,
            node_uuid: node_uuid.to_string(),
            host: String::new(),
            shard_ports: Vec::new(),
            zone: String::new(),
            targets: Vec::new(),
        },
    };
    let before = rec.clone();
    rec.host = host.to_string();
    rec.shard_ports = shard_ports.to_vec();
    rec.zone = zone.to_string();
    let mut ids = Vec::with_capacity(targets.len());
    for spec in targets {
        match rec.targets.iter_mut().find(|x| x.uuid == spec.uuid) {
            Some(x) => {
                x.capacity = spec.capacity;
                ids.push(x.id);
            }
            None => {
                let id = next(t, counter::NEXT_TARGET, 1)?;
                rec.targets.push(TargetRecord {
                    id,
                    uuid: spec.uuid.clone(),
                    capacity: spec.capacity,
                });
                ids.push(id);
            }
        }
    }
    if rec != before {
        t.put(key::chunkserver(rec.id), &rec);
        extend_tables(t)?;
        bump_version(t)?;
    }
    Ok(Reply::Chunkserver {
        id: rec.id,
        target_ids: ids,
    })
}

/// Adds chains to every table for targets that have too few.
fn extend_tables<K: Kv + ?Sized>(t: &mut Txn<'_, K>) -> FsResult<()> {
    let servers = chunkservers(t)?;
    let locs: Vec<TargetLoc> = servers
        .iter()
        .flat_map(|c| {
            c.targets.iter().map(|x| TargetLoc {
                id: x.id,
                chunkserver: c.id,
                zone: c.zone.clone(),
            })
        })
        .collect();
    for r in REPLICATIONS {
        let chains = table(t, r)?;
        let existing: Vec<Vec<u64>> = chains
            .iter()
            .map(|c| c.members.iter().map(|m| m.target).collect())
            .collect();
        for members in chains_to_add(&existing, &locs, r as usize) {
            // Chain ids are unique across all tables, so a chain id alone
            // names a chain on the data path.
            let next_id = u32::try_from(next(t, counter::NEXT_CHAIN, 1)?).unwrap_or(u32::MAX);
            let chain = Chain {
                id: next_id,
                version: 1,
                members: members
                    .iter()
                    .map(|id| ChainMember {
                        target: *id,
                        chunkserver: locs
                            .iter()
                            .find(|l| l.id == *id)
                            .map_or(0, |l| l.chunkserver),
                        state: TargetState::Serving,
                    })
                    .collect(),
            };
            t.put(key::chain(r, next_id), &chain);
        }
    }
    Ok(())
}

/// Sets target states in every chain that holds them. A change that would
/// leave a chain without a serving target is skipped for that member: meta
/// never takes away a chain's last serving replica (changes apply head to
/// tail, so when a whole chain goes silent its tail stays serving; every
/// replica of a chain holds every acknowledged write).
pub(crate) fn set_target_states<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    changes: &[(u64, TargetState)],
) -> FsResult<Reply> {
    let mut changed = false;
    for r in REPLICATIONS {
        for mut chain in table(t, r)? {
            let mut members = chain.members.clone();
            for i in 0..members.len() {
                let Some((_, s)) = changes.iter().find(|(id, _)| *id == members[i].target) else {
                    continue;
                };
                let others_serving = members
                    .iter()
                    .enumerate()
                    .any(|(j, m)| j != i && m.state == TargetState::Serving);
                if *s == TargetState::Serving || others_serving {
                    members[i].state = *s;
                }
            }
            // A target that turned syncing moves to the tail. The head
            // assigns each write's version from its own committed one, so
            // it must be a serving member that saw every write; a syncing
            // head missing writes would reuse versions the others hold,
            // and they would acknowledge those writes as already applied
            // without applying them (new and recovering members join a
            // chain at its tail, as in chain replication).
            let (mut kept, turned): (Vec<_>, Vec<_>) =
                members.into_iter().enumerate().partition(|(i, m)| {
                    !(m.state == TargetState::Syncing
                        && chain.members[*i].state != TargetState::Syncing)
                });
            kept.extend(turned);
            let members: Vec<ChainMember> = kept.into_iter().map(|(_, m)| m).collect();
            if members == chain.members {
                continue;
            }
            chain.members = members;
            chain.version += 1;
            t.put(key::chain(r, chain.id), &chain);
            changed = true;
        }
    }
    if changed {
        bump_version(t)?;
    }
    Ok(Reply::Unit)
}

/// Finds chain `id` in any table: (replication, chain).
fn find_chain<K: Kv + ?Sized>(t: &Txn<'_, K>, id: u32) -> FsResult<Option<(u32, Chain)>> {
    for r in REPLICATIONS {
        if let Some(c) = table(t, r)?.into_iter().find(|c| c.id == id) {
            return Ok(Some((r, c)));
        }
    }
    Ok(None)
}

/// Makes chain `id`'s syncing members serving if the chain is still at
/// `version` (its head synced them at that version); otherwise nothing:
/// the head syncs again at the new version.
pub(crate) fn chain_synced<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    id: u32,
    version: u64,
) -> FsResult<Reply> {
    let Some((r, mut chain)) = find_chain(t, id)? else {
        return Ok(Reply::Unit);
    };
    if chain.version != version
        || !chain
            .members
            .iter()
            .any(|m| m.state == TargetState::Syncing)
    {
        return Ok(Reply::Unit);
    }
    let joined: Vec<u64> = chain
        .members
        .iter()
        .filter(|m| m.state == TargetState::Syncing)
        .map(|m| m.target)
        .collect();
    for m in &mut chain.members {
        if m.state == TargetState::Syncing {
            m.state = TargetState::Serving;
        }
    }
    // A chain the rebalancer grew past its replication sheds the member
    // that was there before with the most chains in this table (ties: the
    // lowest target id).
    if chain.members.len() > r as usize {
        let servers = chunkservers(t)?;
        let load = crate::placement::target_loads(&servers, &[(r, table(t, r)?)]);
        if let Some(pos) = chain
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| !joined.contains(&m.target))
            .max_by_key(|(_, m)| {
                (
                    load.get(&m.target).copied().unwrap_or(0),
                    u64::MAX - m.target,
                )
            })
            .map(|(i, _)| i)
        {
            chain.members.remove(pos);
        }
    }
    chain.version += 1;
    t.put(key::chain(r, chain.id), &chain);
    bump_version(t)?;
    Ok(Reply::Unit)
}

/// Appends `target` to chain `id` as syncing (rebalancing); see
/// [`super::Op::AddMember`].
pub(crate) fn add_member<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    id: u32,
    target: u64,
    chunkserver: u64,
) -> FsResult<Reply> {
    let Some((r, mut chain)) = find_chain(t, id)? else {
        return Ok(Reply::Unit);
    };
    if !holds_target(&chunkservers(t)?, chunkserver, target)
        || chain.members.len() > r as usize
        || chain
            .members
            .iter()
            .any(|m| m.chunkserver == chunkserver || m.state != TargetState::Serving)
    {
        return Ok(Reply::Unit);
    }
    join_syncing(t, r, &mut chain, target, chunkserver);
    bump_version(t)?;
    Ok(Reply::Unit)
}

/// Whether chunkserver `cs` is registered with target `target`.
fn holds_target(servers: &[ChunkserverRecord], cs: u64, target: u64) -> bool {
    servers
        .iter()
        .any(|c| c.id == cs && c.targets.iter().any(|x| x.id == target))
}

/// Appends `target` to `chain` as syncing (new members join at the tail)
/// and stores the chain at its next version.
fn join_syncing<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    replication: u32,
    chain: &mut Chain,
    target: u64,
    chunkserver: u64,
) {
    chain.members.push(ChainMember {
        target,
        chunkserver,
        state: TargetState::Syncing,
    });
    chain.version += 1;
    t.put(key::chain(replication, chain.id), &*chain);
}

/// Replaces offline chain members by new targets, appended at the tail as
/// syncing; see [`super::Op::ReplaceTargets`].
pub(crate) fn replace_targets<K: Kv + ?Sized>(
    t: &mut Txn<'_, K>,
    changes: &[(u32, u64, u64, u64)],
) -> FsResult<Reply> {
    let servers = chunkservers(t)?;
    let mut changed = false;
    for &(id, old, new, new_cs) in changes {
        let Some((r, mut chain)) = find_chain(t, id)? else {
            continue;
        };
        let known = holds_target(&servers, new_cs, new);
        let Some(pos) = chain
            .members
            .iter()
            .position(|m| m.target == old && m.state == TargetState::Offline)
        else {
            continue;
        };
        if !known || chain.members.iter().any(|m| m.chunkserver == new_cs) {
            continue;
        }
        chain.members.remove(pos);
        join_syncing(t, r, &mut chain, new, new_cs);
        changed = true;
    }
    if changed {
        bump_version(t)?;
    }
    Ok(Reply::Unit)
}
