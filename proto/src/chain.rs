//! A view of meta's chain table (DESIGN §3, §5), shared by chunkservers
//! (routing down a chain) and clients (choosing a head or a replica).
//!
//! Built from meta's `ChainTables` (fetched at start, then pushed by the
//! watch stream); pure, so the routing decisions are tested without a
//! cluster. A chain id names one chain across all tables (meta allocates
//! them from one counter). Each shard holds an `Rc`/`Arc` of the current
//! view and swaps it when the published version moves, so the data path
//! reads it without a lock.

use std::collections::HashMap;
use std::sync::Arc;

use crate::ids::ChunkId;
use crate::meta as pb;

/// A chain member's state, as the data path needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Serves reads and writes.
    Serving,
    /// Receives writes, serves no reads.
    Syncing,
    /// Out of the chain's data path.
    Offline,
}

/// One member of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Target id.
    pub target: u64,
    /// The chunkserver holding it.
    pub chunkserver: u64,
    /// Its state.
    pub state: MemberState,
}

/// One chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainInfo {
    /// Chain version (fencing).
    pub version: u64,
    /// Members head to tail, offline ones included.
    pub members: Vec<Member>,
}

impl ChainInfo {
    /// Returns the members that take writes (serving and syncing), head
    /// first: the replication order.
    pub fn write_path(&self) -> impl Iterator<Item = &Member> {
        self.members
            .iter()
            .filter(|m| m.state != MemberState::Offline)
    }
}

/// A chunkserver's data-plane address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddr {
    /// Host.
    pub host: String,
    /// One port per shard.
    pub shard_ports: Vec<u32>,
    /// `host:port` of each shard, built once per view so the data path
    /// does not format an address per request.
    pub shard_addrs: Vec<Arc<str>>,
}

/// Where a request for a chunk goes on one chunkserver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The chunkserver.
    pub chunkserver: u64,
    /// The target on it.
    pub target: u64,
    /// `host:port` of the shard owning the chunk there.
    pub addr: String,
}

/// An immutable snapshot of the chain table.
#[derive(Debug, Clone, Default)]
pub struct ChainView {
    /// Version of the whole table.
    pub version: u64,
    /// The cluster's newest snapshot sequence: every write carries it.
    pub snap_seq: u64,
    /// Volumes with snapshots (volume id → newest seq), as of `snap_seq`
    /// or later.
    volume_epochs: HashMap<u64, u64>,
    chains: HashMap<u32, ChainInfo>,
    servers: HashMap<u64, ServerAddr>,
}

fn member_state(s: i32) -> MemberState {
    match pb::TargetState::try_from(s) {
        Ok(pb::TargetState::Serving) => MemberState::Serving,
        Ok(pb::TargetState::Syncing) => MemberState::Syncing,
        _ => MemberState::Offline,
    }
}

impl ChainView {
    /// Builds the view from meta's tables.
    pub fn from_pb(t: &pb::ChainTables) -> Self {
        let mut chains = HashMap::new();
        for table in &t.tables {
            for c in &table.chains {
                chains.insert(
                    c.id,
                    ChainInfo {
                        version: c.version,
                        members: c
                            .targets
                            .iter()
                            .map(|m| Member {
                                target: m.target_id,
                                chunkserver: m.chunkserver_id,
                                state: member_state(m.state),
                            })
                            .collect(),
                    },
                );
            }
        }
        let servers = t
            .chunkservers
            .iter()
            .map(|c| {
                (
                    c.id,
                    ServerAddr {
                        host: c.host.clone(),
                        shard_ports: c.shard_ports.clone(),
                        shard_addrs: c
                            .shard_ports
                            .iter()
                            .map(|p| Arc::from(format!("{}:{p}", c.host)))
                            .collect(),
                    },
                )
            })
            .collect();
        Self {
            version: t.version,
            snap_seq: t.snap_seq,
            volume_epochs: t
                .volume_epochs
                .iter()
                .map(|e| (e.volume_id, e.seq))
                .collect(),
            chains,
            servers,
        }
    }

    /// Returns whether volume `volume` had snapshots as of this table: a
    /// write to a volume without any asks chunkservers to keep no clone.
    pub fn has_snapshots(&self, volume: u64) -> bool {
        self.volume_epochs.contains_key(&volume)
    }

    /// Returns every chain with its id, in no particular order.
    pub fn chains(&self) -> impl Iterator<Item = (u32, &ChainInfo)> {
        self.chains.iter().map(|(id, c)| (*id, c))
    }

    /// Returns chain `id`.
    pub fn chain(&self, id: u32) -> Option<&ChainInfo> {
        self.chains.get(&id)
    }

    /// Returns the address of the shard owning `chunk` on `chunkserver`.
    pub fn shard_addr(&self, chunkserver: u64, chunk: ChunkId) -> Option<String> {
        self.shard_addr_shared(chunkserver, chunk)
            .map(|a| a.to_string())
    }

    /// [`Self::shard_addr`] without an allocation: the view's own copy.
    pub fn shard_addr_shared(&self, chunkserver: u64, chunk: ChunkId) -> Option<Arc<str>> {
        let s = self.servers.get(&chunkserver)?;
        let shards = u32::try_from(s.shard_addrs.len()).ok().filter(|n| *n > 0)?;
        s.shard_addrs.get(shard_of(chunk, shards) as usize).cloned()
    }

    /// Returns the member after `target` on chain `id`'s write path, if
    /// `target` is not the tail.
    pub fn successor(&self, id: u32, target: u64, chunk: ChunkId) -> Option<Endpoint> {
        let chain = self.chain(id)?;
        let mut path = chain.write_path().skip_while(|m| m.target != target);
        path.next()?;
        let next = path.next()?;
        Some(Endpoint {
            chunkserver: next.chunkserver,
            target: next.target,
            addr: self.shard_addr(next.chunkserver, chunk)?,
        })
    }

    /// Returns the last serving member of chain `id`: the member whose
    /// committed version CRAQ reads trust. Syncing members follow the
    /// serving ones at the end of the write path and may have skipped
    /// chunks they missed versions of, so they never answer for it.
    pub fn tail(&self, id: u32, chunk: ChunkId) -> Option<Endpoint> {
        let m = self
            .chain(id)?
            .write_path()
            .filter(|m| m.state == MemberState::Serving)
            .last()?;
        Some(Endpoint {
            chunkserver: m.chunkserver,
            target: m.target,
            addr: self.shard_addr(m.chunkserver, chunk)?,
        })
    }
}

/// Returns the shard that owns `chunk` on a target of `shards` shards:
/// FNV-1a (64-bit) of the chunk id's 16 big-endian bytes modulo `shards`.
/// Stable across processes, builds and platforms (never std's seeded
/// hasher), as it decides where chunks live on disk; chunkservers place
/// chunks with it and clients and peers route with it. `shards == 0` is
/// treated as 1.
pub fn shard_of(chunk: ChunkId, shards: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in chunk
        .object
        .0
        .to_be_bytes()
        .iter()
        .chain(chunk.index.to_be_bytes().iter())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // The remainder is below `shards`, so it always fits a u32.
    (h % u64::from(shards.max(1))) as u32
}

/// Returns whether `t` has a replication-`n` table with at least one chain
/// and every chain holding `n` members, all serving: the table a cluster
/// that just started (or healed) is waited for.
pub fn fully_serving(t: &pb::ChainTables, n: usize) -> bool {
    t.tables.iter().any(|tb| {
        tb.replication as usize == n
            && !tb.chains.is_empty()
            && tb.chains.iter().all(|c| {
                c.targets.len() == n
                    && c.targets
                        .iter()
                        .all(|m| m.state == pb::TargetState::Serving as i32)
            })
    })
}

#[cfg(test)]
mod tests {
    use crate::ids::ObjectId;

    use super::*;

    fn table() -> pb::ChainTables {
        let m = |t, c, s: pb::TargetState| pb::ChainTarget {
            target_id: t,
            chunkserver_id: c,
            state: s as i32,
        };
        pb::ChainTables {
            version: 7,
            tables: vec![pb::ChainTable {
                replication: 3,
                chains: vec![pb::Chain {
                    id: 5,
                    version: 2,
                    targets: vec![
                        m(1, 1, pb::TargetState::Serving),
                        m(2, 2, pb::TargetState::Offline),
                        m(3, 3, pb::TargetState::Syncing),
                    ],
                }],
            }],
            chunkservers: (1..=3)
                .map(|i| pb::ChunkserverInfo {
                    id: i,
                    host: "127.0.0.1".into(),
                    shard_ports: vec![9000 + 10 * i as u32, 9001 + 10 * i as u32],
                    ..Default::default()
                })
                .collect(),
            snap_seq: 4,
            volume_epochs: vec![pb::VolumeEpoch {
                volume_id: 9,
                seq: 4,
            }],
        }
    }

    #[test]
    fn the_view_knows_the_snap_seq_and_which_volumes_have_snapshots() {
        let v = ChainView::from_pb(&table());
        assert_eq!(v.snap_seq, 4);
        assert!(v.has_snapshots(9));
        assert!(!v.has_snapshots(8));
    }

    #[test]
    fn fully_serving_needs_every_member_serving() {
        let mut t = table();
        assert!(!fully_serving(&t, 3), "one member offline, one syncing");
        for m in &mut t.tables[0].chains[0].targets {
            m.state = pb::TargetState::Serving as i32;
        }
        assert!(fully_serving(&t, 3));
        assert!(!fully_serving(&t, 2), "no 2-replica table");
        t.tables[0].chains[0].targets.pop();
        assert!(!fully_serving(&t, 3), "a chain short of a member");
    }

    #[test]
    fn routes_around_offline_members() {
        let v = ChainView::from_pb(&table());
        let chunk = ChunkId {
            object: ObjectId(1),
            index: 0,
        };
        let next = v.successor(5, 1, chunk).unwrap();
        assert_eq!(next.target, 3, "the offline middle is skipped");
        assert!(v.successor(5, 3, chunk).is_none(), "3 ends the write path");
        assert_eq!(
            v.tail(5, chunk).unwrap().target,
            1,
            "the last serving member answers for commits, not the syncing 3"
        );
        assert_eq!(v.chain(5).unwrap().version, 2);
        let port = v.shard_addr(3, chunk).unwrap();
        assert!(port == "127.0.0.1:9030" || port == "127.0.0.1:9031");
    }

    #[test]
    fn shard_of_is_stable_and_spreads() {
        let c = |i| ChunkId {
            object: ObjectId(42),
            index: i,
        };
        assert_eq!(shard_of(c(0), 4), shard_of(c(0), 4));
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[shard_of(c(i), 4) as usize] += 1;
        }
        assert!(counts.iter().all(|n| *n > 800), "{counts:?}");
        assert_eq!(shard_of(c(9), 1), 0);
        // Pinned: changing these moves every chunk on every target.
        let c = ChunkId {
            object: ObjectId(42),
            index: 7,
        };
        assert_eq!(shard_of(c, 8), 6);
        assert_eq!(shard_of(c, 1000), 630);
    }
}
