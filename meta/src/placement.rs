//! Chain placement: which targets form each chain of a chain table.
//!
//! Pure functions, so the policy is tested without a cluster and applied
//! deterministically inside the state machine.
//!
//! Policy (DESIGN §3, §5):
//! * A table of replication `r` exists once there are `r` distinct
//!   chunkservers. It aims at one chain per target, so each target appears
//!   about `r` times, once at each position (head, middle, tail): reads
//!   (all replicas) and writes (which enter at the head) both spread
//!   evenly.
//! * Members of one chain are on distinct chunkservers, and on distinct
//!   zones whenever the known zones allow it.
//! * Existing chains are never rewritten here: new targets get new chains
//!   (chain ids are stable forever); moving existing load onto new targets
//!   is the rebalancer's job.
//! * A fresh table is a rotation (a Latin square): targets are ordered so
//!   that neighbours sit on different chunkservers and zones, and chain `i`
//!   takes `order[(i + p·s) mod T]` at position `p`, for the smallest stride
//!   `s` that keeps every chain's members on distinct chunkservers (and
//!   zones). Every target is then exactly once at every position.
//! * When no stride works (very uneven servers), and when a table grows,
//!   each new chain is built greedily: position by position, the eligible
//!   target that appears least at that position, then least overall, then
//!   with the lowest id.

use std::collections::BTreeMap;

/// A target as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetLoc {
    /// Target id.
    pub id: u64,
    /// Its chunkserver.
    pub chunkserver: u64,
    /// Its zone ("" when unknown).
    pub zone: String,
}

/// Returns the member lists of the chains to add to a table of
/// `replication` whose existing chains have `existing` members (target ids,
/// head first), given all registered `targets`.
pub fn chains_to_add(
    existing: &[Vec<u64>],
    targets: &[TargetLoc],
    replication: usize,
) -> Vec<Vec<u64>> {
    let mut servers: Vec<u64> = targets.iter().map(|t| t.chunkserver).collect();
    servers.sort_unstable();
    servers.dedup();
    if replication == 0 || servers.len() < replication || existing.len() >= targets.len() {
        return Vec::new();
    }
    let mut zones: Vec<&str> = targets
        .iter()
        .map(|t| t.zone.as_str())
        .filter(|z| !z.is_empty())
        .collect();
    zones.sort_unstable();
    zones.dedup();
    let spread_zones = zones.len() >= replication;

    if existing.is_empty()
        && let Some(chains) = rotation(targets, replication, spread_zones)
    {
        return chains;
    }

    // counts[target] = (per-position counts, total)
    let mut counts: BTreeMap<u64, (Vec<usize>, usize)> = targets
        .iter()
        .map(|t| (t.id, (vec![0; replication], 0)))
        .collect();
    for chain in existing {
        for (pos, id) in chain.iter().enumerate() {
            if let Some((per, total)) = counts.get_mut(id) {
                if pos < replication {
                    per[pos] += 1;
                }
                *total += 1;
            }
        }
    }

    let mut out = Vec::new();
    for _ in existing.len()..targets.len() {
        let mut chain: Vec<&TargetLoc> = Vec::with_capacity(replication);
        for pos in 0..replication {
            let best = targets
                .iter()
                .filter(|t| {
                    chain.iter().all(|c| {
                        c.chunkserver != t.chunkserver && (!spread_zones || c.zone != t.zone)
                    })
                })
                .min_by_key(|t| {
                    let (per, total) = &counts[&t.id];
                    (per[pos], *total, t.id)
                });
            match best {
                Some(t) => chain.push(t),
                None => break,
            }
        }
        if chain.len() < replication {
            // Zones or servers too few for another valid chain.
            break;
        }
        for (pos, t) in chain.iter().enumerate() {
            if let Some((per, total)) = counts.get_mut(&t.id) {
                per[pos] += 1;
                *total += 1;
            }
        }
        out.push(chain.iter().map(|t| t.id).collect());
    }
    out
}

/// Orders targets so consecutive ones are on different chunkservers (and
/// zones), by dealing round-robin over servers interleaved by zone.
fn interleave(targets: &[TargetLoc]) -> Vec<&TargetLoc> {
    let mut servers: BTreeMap<u64, Vec<&TargetLoc>> = BTreeMap::new();
    for t in targets {
        servers.entry(t.chunkserver).or_default().push(t);
    }
    let mut by_zone: BTreeMap<&str, Vec<Vec<&TargetLoc>>> = BTreeMap::new();
    for (_, ts) in servers {
        by_zone.entry(ts[0].zone.as_str()).or_default().push(ts);
    }
    // Servers ordered zone-interleaved: first server of each zone, then the
    // second of each zone, ...
    let mut server_order: Vec<Vec<&TargetLoc>> = Vec::new();
    let mut zones: Vec<std::vec::IntoIter<Vec<&TargetLoc>>> =
        by_zone.into_values().map(|v| v.into_iter()).collect();
    loop {
        let before = server_order.len();
        for z in zones.iter_mut() {
            if let Some(s) = z.next() {
                server_order.push(s);
            }
        }
        if server_order.len() == before {
            break;
        }
    }
    let mut out = Vec::with_capacity(targets.len());
    let mut k = 0;
    while out.len() < targets.len() {
        for s in &server_order {
            if let Some(t) = s.get(k) {
                out.push(*t);
            }
        }
        k += 1;
    }
    out
}

/// A perfectly balanced fresh table, if some stride gives valid chains.
fn rotation(
    targets: &[TargetLoc],
    replication: usize,
    spread_zones: bool,
) -> Option<Vec<Vec<u64>>> {
    let order = interleave(targets);
    let n = order.len();
    'stride: for stride in 1..n {
        let mut chains = Vec::with_capacity(n);
        for i in 0..n {
            let members: Vec<&TargetLoc> = (0..replication)
                .map(|p| order[(i + p * stride) % n])
                .collect();
            for (a, x) in members.iter().enumerate() {
                for y in &members[a + 1..] {
                    if x.chunkserver == y.chunkserver || (spread_zones && x.zone == y.zone) {
                        continue 'stride;
                    }
                }
            }
            chains.push(members.iter().map(|t| t.id).collect());
        }
        return Some(chains);
    }
    (replication == 1).then(|| order.iter().map(|t| vec![t.id]).collect())
}

/// Picks a replacement for every offline member of a chain whose
/// chunkserver is `dead_long` (re-replication), one per chain per call:
/// returns (chain, old target, new target, new chunkserver).
///
/// The new target is on a chunkserver that is `alive` and holds no member
/// of the chain, in a zone the chain's other members do not use when one
/// is free, and is the one with the fewest chain memberships (counting the
/// replacements chosen so far). So the chains of one failed chunkserver
/// are rebuilt onto many peers at once rather than one, and each chain's
/// rebuild reads from its own head.
pub fn replacements(
    servers: &[crate::fs::ChunkserverRecord],
    tables: &[(u32, Vec<crate::fs::Chain>)],
    dead_long: impl Fn(u64) -> bool,
    alive: impl Fn(u64) -> bool,
) -> Vec<(u32, u64, u64, u64)> {
    use crate::fs::TargetState;
    let zone_of = |cs: u64| {
        servers
            .iter()
            .find(|s| s.id == cs)
            .map_or("", |s| s.zone.as_str())
    };
    let mut load = target_loads(servers, tables);
    let mut plan = Vec::new();
    for (_, chains) in tables {
        for c in chains {
            let Some(lost) = c
                .members
                .iter()
                .find(|m| m.state == TargetState::Offline && dead_long(m.chunkserver))
            else {
                continue;
            };
            let others: Vec<u64> = c
                .members
                .iter()
                .filter(|m| m.target != lost.target)
                .map(|m| m.chunkserver)
                .collect();
            let zones: Vec<&str> = others
                .iter()
                .map(|cs| zone_of(*cs))
                .filter(|z| !z.is_empty())
                .collect();
            let best = servers
                .iter()
                .filter(|s| s.id != lost.chunkserver && alive(s.id) && !others.contains(&s.id))
                .flat_map(|s| s.targets.iter().map(move |t| (s, t)))
                .min_by_key(|(s, t)| {
                    let clash = !s.zone.is_empty() && zones.contains(&s.zone.as_str());
                    (clash, load.get(&t.id).copied().unwrap_or(0), t.id)
                });
            if let Some((s, t)) = best {
                *load.entry(t.id).or_default() += 1;
                plan.push((c.id, lost.target, t.id, s.id));
            }
        }
    }
    plan
}

/// Picks one chain membership to move for balance (the rebalancer, one
/// move at a time): when the most loaded live target (chain memberships)
/// has at least two more than the least loaded one — a chunkserver just
/// added — returns (chain, new target, its chunkserver) for a chain that
/// holds the most loaded target and no member on the least loaded one's
/// chunkserver (nor, when zones are known, in its zone unless that is the
/// member being moved). Nothing while any chain is repairing (a member
/// offline or syncing): repair goes first, and moves stay gradual.
pub fn rebalance_move(
    servers: &[crate::fs::ChunkserverRecord],
    tables: &[(u32, Vec<crate::fs::Chain>)],
    alive: impl Fn(u64) -> bool,
) -> Option<(u32, u64, u64)> {
    use crate::fs::TargetState;
    if tables
        .iter()
        .flat_map(|(_, cs)| cs.iter())
        .any(|c| c.members.iter().any(|m| m.state != TargetState::Serving))
    {
        return None;
    }
    let zone_of = |cs: u64| {
        servers
            .iter()
            .find(|s| s.id == cs)
            .map_or("", |s| s.zone.as_str())
    };
    // Each table on its own (a table of replication r spreads its chains'
    // r members over the targets), most replicated first: that is where
    // most of the data is.
    for (r, chains) in tables.iter().rev() {
        if chains.is_empty() {
            continue;
        }
        let load = target_loads(servers, std::slice::from_ref(&(*r, chains.clone())));
        let live: Vec<(u64, u64, &str, usize)> = servers
            .iter()
            .filter(|s| alive(s.id))
            .flat_map(|s| {
                s.targets.iter().map(|t| {
                    (
                        t.id,
                        s.id,
                        s.zone.as_str(),
                        load.get(&t.id).copied().unwrap_or(0),
                    )
                })
            })
            .collect();
        let Some(&(to, to_cs, to_zone, min)) = live.iter().min_by_key(|(id, _, _, l)| (*l, *id))
        else {
            continue;
        };
        let Some(&(from, _, _, max)) = live.iter().max_by_key(|(id, _, _, l)| (*l, u64::MAX - *id))
        else {
            continue;
        };
        if max < min + 2 {
            continue;
        }
        let found = chains
            .iter()
            .filter(|c| c.members.iter().any(|m| m.target == from))
            .find(|c| {
                c.members.iter().all(|m| {
                    m.chunkserver != to_cs
                        && (to_zone.is_empty()
                            || m.target == from
                            || zone_of(m.chunkserver) != to_zone)
                })
            });
        if let Some(c) = found {
            return Some((c.id, to, to_cs));
        }
    }
    None
}

/// Chain memberships per target in `tables`.
pub fn target_loads(
    servers: &[crate::fs::ChunkserverRecord],
    tables: &[(u32, Vec<crate::fs::Chain>)],
) -> BTreeMap<u64, usize> {
    let mut load: BTreeMap<u64, usize> = servers
        .iter()
        .flat_map(|s| s.targets.iter().map(|t| (t.id, 0)))
        .collect();
    for (_, chains) in tables {
        for c in chains {
            for m in &c.members {
                *load.entry(m.target).or_default() += 1;
            }
        }
    }
    load
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(servers: u64, per_server: u64, zones: u64) -> Vec<TargetLoc> {
        let mut v = Vec::new();
        for s in 0..servers {
            for k in 0..per_server {
                v.push(TargetLoc {
                    id: s * per_server + k + 1,
                    chunkserver: s + 1,
                    zone: if zones == 0 {
                        String::new()
                    } else {
                        format!("z{}", s % zones)
                    },
                });
            }
        }
        v
    }

    fn server_of(ts: &[TargetLoc], id: u64) -> &TargetLoc {
        ts.iter().find(|t| t.id == id).unwrap()
    }

    #[test]
    fn fresh_table_is_balanced_per_position_and_distinct() {
        for (servers, per, r) in [(3, 1, 3), (5, 2, 3), (6, 4, 3), (4, 3, 2), (3, 2, 1)] {
            let ts = targets(servers, per, 0);
            let chains = chains_to_add(&[], &ts, r);
            assert_eq!(chains.len(), ts.len());
            for c in &chains {
                assert_eq!(c.len(), r);
                let mut s: Vec<_> = c.iter().map(|id| server_of(&ts, *id).chunkserver).collect();
                s.sort();
                s.dedup();
                assert_eq!(s.len(), r, "chain {c:?} repeats a chunkserver");
            }
            for pos in 0..r {
                let mut n: BTreeMap<u64, usize> = ts.iter().map(|t| (t.id, 0)).collect();
                for c in &chains {
                    *n.get_mut(&c[pos]).unwrap() += 1;
                }
                let (min, max) = (n.values().min().unwrap(), n.values().max().unwrap());
                assert!(max - min <= 1, "position {pos} unbalanced: {n:?}");
            }
        }
    }

    #[test]
    fn too_few_servers_build_nothing() {
        assert!(chains_to_add(&[], &targets(2, 4, 0), 3).is_empty());
        assert_eq!(chains_to_add(&[], &targets(2, 4, 0), 2).len(), 8);
    }

    #[test]
    fn zones_are_spread_when_possible() {
        let ts = targets(6, 1, 3);
        for c in chains_to_add(&[], &ts, 3) {
            let mut z: Vec<_> = c
                .iter()
                .map(|id| server_of(&ts, *id).zone.clone())
                .collect();
            z.sort();
            z.dedup();
            assert_eq!(z.len(), 3);
        }
    }

    #[test]
    fn growth_adds_chains_and_keeps_old_ones() {
        let ts = targets(3, 1, 0);
        let first = chains_to_add(&[], &ts, 3);
        assert_eq!(first.len(), 3);
        let ts4 = targets(4, 1, 0);
        let more = chains_to_add(&first, &ts4, 3);
        assert_eq!(more.len(), 1);
        assert!(more[0].contains(&4), "the new target gets the new chain");
        assert!(chains_to_add(&[first.clone(), more].concat(), &ts4, 3).is_empty());
    }

    #[test]
    fn deterministic() {
        let ts = targets(5, 3, 2);
        assert_eq!(chains_to_add(&[], &ts, 3), chains_to_add(&[], &ts, 3));
    }

    #[test]
    fn a_dead_chunkservers_chains_are_rebuilt_on_many_peers_never_twice_on_one() {
        use crate::fs::{Chain, ChainMember, ChunkserverRecord, TargetRecord, TargetState};
        let ts = targets(6, 1, 0);
        let servers: Vec<ChunkserverRecord> = ts
            .iter()
            .map(|t| ChunkserverRecord {
                id: t.chunkserver,
                node_uuid: format!("n{}", t.chunkserver),
                host: "h".into(),
                shard_ports: vec![1],
                zone: String::new(),
                targets: vec![TargetRecord {
                    id: t.id,
                    uuid: format!("t{}", t.id),
                    capacity: 1,
                }],
            })
            .collect();
        let chains: Vec<Chain> = chains_to_add(&[], &ts, 3)
            .into_iter()
            .enumerate()
            .map(|(i, members)| Chain {
                id: i as u32 + 1,
                version: 1,
                members: members
                    .iter()
                    .map(|id| ChainMember {
                        target: *id,
                        chunkserver: ts.iter().find(|t| t.id == *id).unwrap().chunkserver,
                        state: if *id == 1 {
                            TargetState::Offline
                        } else {
                            TargetState::Serving
                        },
                    })
                    .collect(),
            })
            .collect();
        let hit = chains
            .iter()
            .filter(|c| c.members.iter().any(|m| m.target == 1))
            .count();
        assert_eq!(hit, 3);
        let tables = vec![(3, chains.clone())];
        // Not dead long enough: nothing.
        assert!(replacements(&servers, &tables, |_| false, |cs| cs != 1).is_empty());
        let plan = replacements(&servers, &tables, |cs| cs == 1, |cs| cs != 1);
        assert_eq!(plan.len(), hit, "{plan:?}");
        let mut used = Vec::new();
        for (chain, old, new, cs) in &plan {
            assert_eq!(*old, 1);
            assert_ne!(*cs, 1);
            let c = chains.iter().find(|c| c.id == *chain).unwrap();
            assert!(
                c.members.iter().all(|m| m.chunkserver != *cs),
                "replacement {new} is on a chunkserver already in chain {chain}"
            );
            used.push(*new);
        }
        used.sort_unstable();
        used.dedup();
        assert_eq!(used.len(), hit, "one peer took two rebuilds: {plan:?}");
        // A dead chunkserver is never a replacement.
        let plan = replacements(&servers, &tables, |cs| cs == 1, |cs| cs != 1 && cs != 2);
        assert!(plan.iter().all(|(_, _, _, cs)| *cs != 2 && *cs != 1));
    }

    #[test]
    fn an_added_target_takes_chains_from_the_most_loaded_one_at_a_time() {
        use crate::fs::{Chain, ChainMember, ChunkserverRecord, TargetRecord, TargetState};
        let servers: Vec<ChunkserverRecord> = (1..=4)
            .map(|i| ChunkserverRecord {
                id: i,
                node_uuid: format!("n{i}"),
                host: "h".into(),
                shard_ports: vec![1],
                zone: String::new(),
                targets: vec![TargetRecord {
                    id: i,
                    uuid: format!("t{i}"),
                    capacity: 1,
                }],
            })
            .collect();
        let chain = |id: u32, members: &[u64], state: TargetState| Chain {
            id,
            version: 1,
            members: members
                .iter()
                .map(|t| ChainMember {
                    target: *t,
                    chunkserver: *t,
                    state,
                })
                .collect(),
        };
        let serving = TargetState::Serving;
        // Three chains over 1..3, then target 4 arrived with one chain.
        let mut chains = vec![
            chain(1, &[1, 2, 3], serving),
            chain(2, &[2, 3, 1], serving),
            chain(3, &[3, 1, 2], serving),
            chain(4, &[4, 1, 2], serving),
        ];
        let step = rebalance_move(&servers, &[(3, chains.clone())], |_| true);
        let (c, to, cs) = step.expect("a move");
        assert_eq!((to, cs), (4, 4), "the new target gains");
        let moved = chains.iter().find(|x| x.id == c).unwrap();
        assert!(
            moved.members.iter().any(|m| m.target == 1),
            "from the most loaded"
        );
        assert!(moved.members.iter().all(|m| m.chunkserver != 4));
        // Not while a chain repairs, not for a dead target, not when even.
        chains[0].members[2].state = TargetState::Syncing;
        assert!(rebalance_move(&servers, &[(3, chains.clone())], |_| true).is_none());
        chains[0].members[2].state = serving;
        assert!(rebalance_move(&servers, &[(3, chains.clone())], |id| id != 4).is_none());
        let even = vec![
            chain(1, &[1, 2, 3], serving),
            chain(2, &[2, 3, 4], serving),
            chain(3, &[3, 4, 1], serving),
            chain(4, &[4, 1, 2], serving),
        ];
        assert!(rebalance_move(&servers, &[(3, even)], |_| true).is_none());
    }
}
