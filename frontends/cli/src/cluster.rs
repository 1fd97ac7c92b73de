//! `cairn admin chunkservers` and `cairn admin chains`: the data side of
//! the cluster as the meta leader sees it — chunkservers (alive, targets,
//! capacity and use) and chains (members in chain order with their states,
//! and which chains are under-replicated).
//!
//! A chain is under-replicated when fewer of its members serve than its
//! replication factor: a member offline (its chunkserver silent past meta's
//! timeout) or syncing (back or newly added, being caught up by the chain's
//! head). `chains` exits 0 either way; the summary line (or
//! `.under_replicated` in `--json`) says how many, and how fast the repair
//! copies (the sum of every chunkserver's copy rate as a sync source, from
//! their heartbeats).

use cairn_client::MetaClient;
use cairn_proto::meta::{ChainTables, ChunkserverInfo, TargetState};
use serde_json::json;

use crate::format::{human_bytes, table};
use crate::report::Context;

/// One chain as `cairn admin chains` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRow {
    /// Chain id.
    pub id: u32,
    /// Replication factor of its table.
    pub replication: u32,
    /// Chain version.
    pub version: u64,
    /// (target id, state name) in chain order.
    pub members: Vec<(u64, &'static str)>,
    /// Members serving reads.
    pub serving: usize,
}

impl ChainRow {
    /// Whether fewer members serve than the replication factor asks.
    pub fn under_replicated(&self) -> bool {
        self.serving < self.replication as usize
    }
}

fn state_name(s: i32) -> &'static str {
    match TargetState::try_from(s) {
        Ok(TargetState::Serving) => "serving",
        Ok(TargetState::Syncing) => "syncing",
        Ok(TargetState::Offline) => "offline",
        _ => "unknown",
    }
}

/// The chains of every table, in table then chain order.
pub fn chain_rows(t: &ChainTables) -> Vec<ChainRow> {
    let mut rows = Vec::new();
    for table in &t.tables {
        for c in &table.chains {
            let members: Vec<(u64, &'static str)> = c
                .targets
                .iter()
                .map(|m| (m.target_id, state_name(m.state)))
                .collect();
            rows.push(ChainRow {
                id: c.id,
                replication: table.replication,
                version: c.version,
                serving: members.iter().filter(|(_, s)| *s == "serving").count(),
                members,
            });
        }
    }
    rows
}

/// `cairn admin chains`.
///
/// # Errors
/// Meta unreachable.
pub async fn chains(c: &MetaClient, only_under: bool, json: bool) -> anyhow::Result<()> {
    let t = c.get_chains().await.op_only("admin chains")?;
    let all = chain_rows(&t);
    let under = all.iter().filter(|r| r.under_replicated()).count();
    let syncing = all
        .iter()
        .filter(|r| r.members.iter().any(|(_, s)| *s == "syncing"))
        .count();
    let (rate, copied) = t
        .chunkservers
        .iter()
        .filter_map(|s| s.repair)
        .fold((0, 0), |(r, c), p| {
            (r + p.bytes_per_sec, c + p.bytes_copied)
        });
    let shown: Vec<&ChainRow> = all
        .iter()
        .filter(|r| !only_under || r.under_replicated())
        .collect();
    if json {
        let chains: Vec<_> = shown
            .iter()
            .map(|r| {
                json!({
                    "id": r.id,
                    "replication": r.replication,
                    "version": r.version,
                    "serving": r.serving,
                    "under_replicated": r.under_replicated(),
                    "members": r.members.iter().map(|(t, s)| json!({"target": t, "state": s})).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "version": t.version, "chains": chains, "total": all.len(),
                "under_replicated": under, "syncing": syncing,
                "repair_bytes_per_sec": rate, "repair_bytes_total": copied,
            })
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.replication.to_string(),
                r.version.to_string(),
                format!("{}/{}", r.serving, r.replication),
                r.members
                    .iter()
                    .map(|(t, s)| format!("{t}:{s}"))
                    .collect::<Vec<_>>()
                    .join(" → "),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "CHAIN",
                "REPL",
                "VERSION",
                "SERVING",
                "MEMBERS (head → tail)"
            ],
            &rows,
            &[0, 1, 2]
        )
    );
    println!(
        "{} chains, {under} under-replicated, {syncing} being repaired at {}/s \
         ({} copied so far; chain table version {})",
        all.len(),
        human_bytes(rate),
        human_bytes(copied),
        t.version
    );
    Ok(())
}

/// A chunkserver's state as the admin commands show it.
fn server_state(s: &ChunkserverInfo) -> &'static str {
    match (s.alive, s.maintenance_until_ms > 0) {
        (true, false) => "alive",
        (false, false) => "down",
        (_, true) => "maintenance",
    }
}

/// `cairn admin maintenance ID [--for D | --off]`.
///
/// # Errors
/// Meta unreachable or no such chunkserver.
pub async fn maintenance(
    c: &MetaClient,
    id: u64,
    duration: Option<std::time::Duration>,
    json: bool,
) -> anyhow::Result<()> {
    c.set_maintenance(id, duration.unwrap_or_default())
        .await
        .op_only("admin maintenance")?;
    if json {
        println!(
            "{}",
            json!({"chunkserver": id, "maintenance": duration.is_some(),
                   "seconds": duration.map(|d| d.as_secs())})
        );
    } else if let Some(d) = duration {
        println!(
            "chunkserver {id} is in maintenance for up to {}: its targets left their chains \
             and will not be replaced; `cairn admin maintenance {id} --off` brings them back",
            humantime::format_duration(d)
        );
    } else {
        println!(
            "chunkserver {id} is out of maintenance: its targets rejoin their chains and resync"
        );
    }
    Ok(())
}

fn server_row(s: &ChunkserverInfo) -> Vec<String> {
    let ports: Vec<String> = s.shard_ports.iter().map(ToString::to_string).collect();
    let targets: Vec<String> = s.target_ids.iter().map(ToString::to_string).collect();
    vec![
        s.id.to_string(),
        format!("{}:{}", s.host, ports.join(",")),
        server_state(s).to_string(),
        if s.zone.is_empty() {
            "-".into()
        } else {
            s.zone.clone()
        },
        targets.join(","),
        human_bytes(s.used_bytes),
        human_bytes(s.capacity_bytes),
        s.repair.map_or_else(
            || "-".into(),
            |p| {
                format!(
                    "{} ({}/s)",
                    human_bytes(p.bytes_copied),
                    human_bytes(p.bytes_per_sec)
                )
            },
        ),
    ]
}

/// `cairn admin chunkservers`.
///
/// # Errors
/// Meta unreachable.
pub async fn chunkservers(c: &MetaClient, json: bool) -> anyhow::Result<()> {
    let t = c.get_chains().await.op_only("admin chunkservers")?;
    if json {
        let list: Vec<_> = t
            .chunkservers
            .iter()
            .map(|s| {
                json!({
                    "id": s.id, "host": s.host, "shard_ports": s.shard_ports, "zone": s.zone,
                    "alive": s.alive, "state": server_state(s), "targets": s.target_ids,
                    "maintenance_until_ms": s.maintenance_until_ms,
                    "used_bytes": s.used_bytes, "capacity_bytes": s.capacity_bytes,
                    "repair": s.repair.map(|p| json!({
                        "chunks_copied": p.chunks_copied, "bytes_copied": p.bytes_copied,
                        "chunks_current": p.chunks_current, "chains_syncing": p.chains_syncing,
                        "bytes_per_sec": p.bytes_per_sec,
                    })),
                })
            })
            .collect();
        println!("{}", json!({ "chunkservers": list }));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = t.chunkservers.iter().map(server_row).collect();
    print!(
        "{}",
        table(
            &[
                "ID",
                "ADDRESS (shard ports)",
                "STATE",
                "ZONE",
                "TARGETS",
                "USED",
                "CAPACITY",
                "REPAIRED (rate)"
            ],
            &rows,
            &[0, 5, 6]
        )
    );
    let alive = t.chunkservers.iter().filter(|s| s.alive).count();
    println!("{} chunkservers, {alive} alive", t.chunkservers.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::meta::{Chain, ChainTable, ChainTarget};

    fn target(id: u64, s: TargetState) -> ChainTarget {
        ChainTarget {
            target_id: id,
            chunkserver_id: id,
            state: s as i32,
        }
    }

    #[test]
    fn under_replicated_chains_are_the_ones_short_of_serving_members() {
        let t = ChainTables {
            version: 7,
            tables: vec![ChainTable {
                replication: 3,
                chains: vec![
                    Chain {
                        id: 1,
                        version: 1,
                        targets: vec![
                            target(1, TargetState::Serving),
                            target(2, TargetState::Serving),
                            target(3, TargetState::Serving),
                        ],
                    },
                    Chain {
                        id: 2,
                        version: 4,
                        targets: vec![
                            target(2, TargetState::Serving),
                            target(3, TargetState::Syncing),
                            target(1, TargetState::Offline),
                        ],
                    },
                ],
            }],
            chunkservers: vec![],
            ..ChainTables::default()
        };
        let rows = chain_rows(&t);
        assert_eq!(rows.len(), 2);
        assert!(!rows[0].under_replicated());
        assert!(rows[1].under_replicated());
        assert_eq!(rows[1].serving, 1);
        assert_eq!(
            rows[1].members,
            vec![(2, "serving"), (3, "syncing"), (1, "offline")]
        );
    }
}
