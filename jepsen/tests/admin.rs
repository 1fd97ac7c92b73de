//! `cairn admin chunkservers` and `cairn admin chains` (the built binary)
//! against a real cluster while a chunkserver is killed and restarted:
//! what an operator sees is what happened.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use cairn_jepsen::binary::binary;
use cairn_jepsen::data_cluster::{DataCluster, DataOpts};
use serde_json::Value;

fn admin(cluster: &DataCluster, what: &[&str]) -> Result<Value> {
    let out = Command::new(binary("cairn"))
        .args(["--meta", &cluster.meta.addrs().join(","), "--json", "admin"])
        .args(what)
        .output()?;
    ensure!(
        out.status.success(),
        "cairn admin {what:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Polls `cairn admin chains` until `want` accepts it.
fn wait_chains(cluster: &DataCluster, what: &str, want: impl Fn(&Value) -> bool) -> Result<Value> {
    let t0 = Instant::now();
    loop {
        let v = admin(cluster, &["chains"])?;
        if want(&v) {
            return Ok(v);
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("admin chains never showed {what}: {v}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn any_offline(v: &Value) -> bool {
    v["chains"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["members"].as_array().unwrap().iter())
        .any(|m| m["state"] == "offline")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_show_a_dead_and_a_returning_chunkserver() -> Result<()> {
    let _serial = cairn_jepsen::serial().await;
    let mut cluster = DataCluster::start(DataOpts::default()).await?;
    let servers = admin(&cluster, &["chunkservers"])?;
    let list = servers["chunkservers"].as_array().unwrap();
    ensure!(list.len() == 3, "{servers}");
    ensure!(list.iter().all(|s| s["alive"] == true), "{servers}");
    let v = admin(&cluster, &["chains"])?;
    ensure!(
        v["under_replicated"] == 0,
        "a fresh cluster shows under-replicated chains: {v}"
    );
    ensure!(v["total"].as_u64().unwrap() > 0);

    // Kill one chunkserver: its target goes offline in its chains.
    let victim = 1;
    cluster.kill(victim);
    let v = wait_chains(&cluster, "a target offline", any_offline)?;
    let under = v["under_replicated"].as_u64().unwrap();
    ensure!(
        under > 0,
        "a dead chunkserver left no chain under-replicated: {v}"
    );
    let only = admin(&cluster, &["chains", "--under-replicated"])?;
    ensure!(
        only["chains"].as_array().unwrap().len() as u64 == under,
        "--under-replicated lists {} of {under}",
        only["chains"].as_array().unwrap().len()
    );
    let servers = admin(&cluster, &["chunkservers"])?;
    let down = servers["chunkservers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["alive"] == false)
        .count();
    ensure!(down == 1, "{servers}");

    // It returns: alive again, syncing until its chains' heads have caught
    // it up, then serving, and no chain is under-replicated.
    cluster.spawn(victim)?;
    let v = wait_chains(&cluster, "every chain serving again", |v| {
        v["under_replicated"] == 0
    })?;
    ensure!(v["syncing"] == 0, "{v}");
    let servers = admin(&cluster, &["chunkservers"])?;
    ensure!(
        servers["chunkservers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["alive"] == true),
        "{servers}"
    );
    Ok(())
}

/// The targets of each 3-replica chain (as a set: a target that rejoins
/// moves to the tail).
fn members(v: &Value) -> Vec<Vec<u64>> {
    v["chains"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["replication"] == 3)
        .map(|c| {
            c["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["target"].as_u64().unwrap())
                .collect::<std::collections::BTreeSet<u64>>()
                .into_iter()
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_maintenance_keeps_a_chunkserver_out_and_unreplaced_until_lifted() -> Result<()> {
    let _serial = cairn_jepsen::serial().await;
    // A spare and replacement after 1 s: only the maintenance window keeps
    // the chunkserver's targets in their chains.
    let mut cluster = DataCluster::start(DataOpts {
        chunkservers: 4,
        meta_args: vec!["--replace-after".into(), "1s".into()],
        ..DataOpts::default()
    })
    .await?;
    let client = cluster
        .client(cairn_client::ClientOptions::default())
        .await?;
    let data = cairn_jepsen::data_cluster::pattern(5, 3 << 20);
    client.write_file("/kept", data.clone()).await?;
    // Settled: the rebalancer has nothing left to move.
    let mut before = members(&admin(&cluster, &["chains"])?);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = members(&admin(&cluster, &["chains"])?);
        if now == before {
            break;
        }
        before = now;
    }
    let servers = admin(&cluster, &["chunkservers"])?;
    let victim = servers["chunkservers"][1]["id"].as_u64().unwrap();
    let v = admin(
        &cluster,
        &["maintenance", &victim.to_string(), "--for", "1h"],
    )?;
    ensure!(v["maintenance"] == true, "{v}");
    let servers = admin(&cluster, &["chunkservers"])?;
    let shown = servers["chunkservers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == victim)
        .unwrap()
        .clone();
    ensure!(shown["state"] == "maintenance", "{shown}");
    wait_chains(&cluster, "the chunkserver's targets offline", any_offline)?;
    // Its machine goes down for a while and comes back: still out, never
    // replaced.
    let index = cluster.index_of(victim).await?;
    cluster.kill(index);
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.spawn(index)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let v = admin(&cluster, &["chains"])?;
    ensure!(any_offline(&v), "left its maintenance by itself: {v}");
    ensure!(members(&v) == before, "replaced during maintenance: {v}");
    ensure!(
        client.read_file("/kept").await? == data,
        "reads go on during the maintenance"
    );
    // Lifted: it rejoins, is resynced and serves.
    let v = admin(&cluster, &["maintenance", &victim.to_string(), "--off"])?;
    ensure!(v["maintenance"] == false, "{v}");
    let v = wait_chains(&cluster, "every chain serving again", |v| {
        v["under_replicated"] == 0
    })?;
    ensure!(members(&v) == before, "{v}");
    ensure!(client.read_file("/kept").await? == data);
    Ok(())
}
