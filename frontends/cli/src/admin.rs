//! `cairn meta ...`: the metadata cluster's Raft status and membership
//! changes.
//!
//! `status` shows the leader's view (it asks any replica, then the leader
//! it names), because only the leader knows each member's matched index
//! and whether it answers. Health is OK when a leader exists and a
//! majority of the voters are reachable from it; a replica answering from
//! the wrong side of a partition reports what it knows, which is then not
//! OK. The command exits 0 whenever it got a status, healthy or not; the
//! health line (or `.health.ok` in `--json`) says which.

use cairn_client::MetaClient;
use cairn_proto::ids::NodeId;
use cairn_proto::meta::StatusReply;
use serde_json::json;

use crate::format::table;
use crate::report::Context;

/// The health verdict of a status reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// A leader exists and a majority of voters are reachable.
    pub ok: bool,
    /// Voters in the membership.
    pub voters: usize,
    /// Voters known reachable.
    pub reachable_voters: usize,
    /// One line for people.
    pub summary: String,
}

/// Returns the health verdict of `s`.
pub fn health(s: &StatusReply) -> Health {
    let answered_as_leader = s.leader_id != 0 && s.node_id == s.leader_id;
    let voters: Vec<_> = s.members.iter().filter(|m| m.voter).collect();
    // The leader answered us, so it is reachable whatever it says of itself.
    let reachable = voters
        .iter()
        .filter(|m| m.reachable || (answered_as_leader && m.id == s.node_id))
        .count();
    let majority = voters.len() / 2 + 1;
    let ok = s.leader_id != 0 && !voters.is_empty() && reachable >= majority;
    let summary = if s.leader_id == 0 {
        format!(
            "UNAVAILABLE: no leader ({reachable} of {} voters reachable)",
            voters.len()
        )
    } else if ok {
        format!(
            "OK: leader {}, {reachable} of {} voters reachable",
            s.leader_id,
            voters.len()
        )
    } else {
        format!(
            "DEGRADED: leader {}, only {reachable} of {} voters reachable (a majority is {majority})",
            s.leader_id,
            voters.len()
        )
    };
    Health {
        ok,
        voters: voters.len(),
        reachable_voters: reachable,
        summary,
    }
}

fn status_json(s: &StatusReply) -> serde_json::Value {
    let h = health(s);
    json!({
        "node_id": s.node_id,
        "state": s.state,
        "cluster_id": s.cluster_id,
        "leader_id": s.leader_id,
        "leader_addr": s.leader_addr,
        "term": s.term,
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "last_log_index": s.last_log_index,
        "snapshot_index": s.snapshot_index,
        "log_entries_appended": s.log_entries_appended,
        "log_flushes": s.log_flushes,
        "garbage_objects": s.garbage_objects,
        "gc_objects_collected": s.gc_objects_collected,
        "gc_chunk_removals": s.gc_chunk_removals,
        "members": s.members.iter().map(|m| json!({
            "id": m.id,
            "addr": m.addr,
            "role": if m.voter { "voter" } else { "learner" },
            "matched_index": m.matched_index,
            "reachable": m.reachable,
            "leader": m.id == s.leader_id,
        })).collect::<Vec<_>>(),
        "health": {
            "ok": h.ok,
            "voters": h.voters,
            "reachable_voters": h.reachable_voters,
            "summary": h.summary,
        },
    })
}

fn print_status(s: &StatusReply) {
    let leader = if s.leader_id == 0 {
        "none known".to_string()
    } else {
        format!("{} at {}", s.leader_id, s.leader_addr)
    };
    println!("answered by  node {} ({})", s.node_id, s.state);
    println!("cluster      {}", s.cluster_id);
    println!("leader       {leader}");
    println!("term         {}", s.term);
    println!(
        "log          commit {}, applied {}, last {}, snapshot {}",
        s.commit_index, s.applied_index, s.last_log_index, s.snapshot_index
    );
    if s.log_flushes > 0 {
        println!(
            "log writes   {} entries in {} flushes ({:.1} per flush)",
            s.log_entries_appended,
            s.log_flushes,
            s.log_entries_appended as f64 / s.log_flushes as f64
        );
    }
    println!(
        "garbage      {} deleted objects waiting; collected {} ({} chunk removals) while this replica led",
        s.garbage_objects, s.gc_objects_collected, s.gc_chunk_removals
    );
    let mut members = s.members.clone();
    members.sort_by_key(|m| m.id);
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            let mut role = if m.voter { "voter" } else { "learner" }.to_string();
            if m.id == s.leader_id {
                role.push_str(" (leader)");
            }
            vec![
                m.id.to_string(),
                m.addr.clone(),
                role,
                m.matched_index.to_string(),
                if m.reachable { "yes" } else { "no" }.to_string(),
            ]
        })
        .collect();
    println!("members");
    for line in table(
        &["ID", "ADDRESS", "ROLE", "MATCHED", "REACHABLE"],
        &rows,
        &[0, 3],
    )
    .lines()
    {
        println!("  {line}");
    }
    println!("health       {}", health(s).summary);
}

/// `cairn meta status`.
pub async fn status(c: &MetaClient, json: bool) -> anyhow::Result<()> {
    let s = c.leader_status().await.op_only("meta status")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status_json(&s))?);
    } else {
        print_status(&s);
    }
    Ok(())
}

/// `cairn meta join ADDR`: adds the replica at `addr` as a learner.
pub async fn join(c: &MetaClient, addr: &str) -> anyhow::Result<()> {
    let r = c.join(addr).await.op("meta join", addr)?;
    println!(
        "{addr} joined cluster {} as node {} (a learner until promoted)",
        r.cluster_id, r.node_id
    );
    Ok(())
}

/// `cairn meta promote ID`.
pub async fn promote(c: &MetaClient, id: u64, json: bool) -> anyhow::Result<()> {
    let s = c
        .promote(NodeId(id))
        .await
        .op("meta promote", &id.to_string())?;
    after_change(&s, &format!("node {id} promoted to voter"), json)
}

/// `cairn meta remove ID`.
pub async fn remove(c: &MetaClient, id: u64, json: bool) -> anyhow::Result<()> {
    let s = c
        .remove_member(NodeId(id))
        .await
        .op("meta remove", &id.to_string())?;
    after_change(&s, &format!("node {id} removed"), json)
}

fn after_change(s: &StatusReply, what: &str, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&status_json(s))?);
    } else {
        println!("{what}");
        print_status(s);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use cairn_proto::meta::MetaMember;

    use super::*;

    fn member(id: u64, voter: bool, reachable: bool) -> MetaMember {
        MetaMember {
            id,
            addr: format!("127.0.0.1:700{id}"),
            voter,
            matched_index: 10,
            reachable,
        }
    }

    fn status(node: u64, leader: u64, members: Vec<MetaMember>) -> StatusReply {
        StatusReply {
            node_id: node,
            leader_id: leader,
            members,
            ..StatusReply::default()
        }
    }

    #[test]
    fn healthy_with_a_leader_and_a_majority() {
        let s = status(
            1,
            1,
            vec![
                member(1, true, false),
                member(2, true, true),
                member(3, true, false),
            ],
        );
        let h = health(&s);
        assert!(h.ok, "{h:?}");
        assert_eq!(h.reachable_voters, 2);
    }

    #[test]
    fn degraded_without_a_majority_and_learners_do_not_count() {
        let s = status(
            1,
            1,
            vec![
                member(1, true, true),
                member(2, true, false),
                member(3, true, false),
                member(4, false, true),
            ],
        );
        let h = health(&s);
        assert!(!h.ok);
        assert!(h.summary.starts_with("DEGRADED"), "{}", h.summary);
    }

    #[test]
    fn unavailable_without_a_leader() {
        let s = status(
            2,
            0,
            vec![
                member(1, true, true),
                member(2, true, true),
                member(3, true, true),
            ],
        );
        let h = health(&s);
        assert!(!h.ok);
        assert!(h.summary.starts_with("UNAVAILABLE"), "{}", h.summary);
        // A follower's view: it does not vouch for itself as the leader would.
        let s = status(
            2,
            1,
            vec![
                member(1, true, false),
                member(2, true, false),
                member(3, true, false),
            ],
        );
        assert!(!health(&s).ok);
    }
}
