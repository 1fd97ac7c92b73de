//! `cairn volume create` and `cairn volume ls`. A volume is a top-level
//! directory `/NAME` with its own replication, chunk size, stripe width,
//! quotas (DESIGN §3); meta validates the policy. Encryption is refused
//! until client-side encryption exists (meta says why).

use cairn_client::MetaClient;
use cairn_proto::meta::{Volume, VolumePolicy};
use serde_json::json;

use crate::format::{human_bytes, table};
use crate::report::Context;

fn volume_json(v: &Volume) -> serde_json::Value {
    let p = v.policy.unwrap_or_default();
    json!({
        "id": v.id,
        "name": v.name,
        "root_ino": v.root_ino,
        "policy": {
            "replication": p.replication,
            "chunk_size": p.chunk_size,
            "stripe_width": p.stripe_width,
            "encrypted": p.encrypted,
            "quota_bytes": p.quota_bytes,
            "quota_inodes": p.quota_inodes,
        },
        "snap_seq": v.snap_seq,
        "used_bytes": v.used_bytes,
        "used_inodes": v.used_inodes,
    })
}

fn limit(n: u64, bytes: bool) -> String {
    match (n, bytes) {
        (0, _) => "-".to_string(),
        (n, true) => human_bytes(n),
        (n, false) => n.to_string(),
    }
}

/// `cairn volume create NAME ...`.
pub async fn create(
    c: &MetaClient,
    name: &str,
    policy: VolumePolicy,
    json: bool,
) -> anyhow::Result<()> {
    let v = c
        .create_volume(name, policy)
        .await
        .op("volume create", name)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&volume_json(&v))?);
        return Ok(());
    }
    let p = v.policy.unwrap_or_default();
    println!(
        "created volume {} (id {}) at /{}: replication {}, chunk size {}, stripe width {}, {}, quota {} / {} inodes",
        v.name,
        v.id,
        v.name,
        p.replication,
        human_bytes(p.chunk_size),
        p.stripe_width,
        if p.encrypted {
            "encrypted"
        } else {
            "not encrypted"
        },
        if p.quota_bytes == 0 {
            "unlimited".to_string()
        } else {
            human_bytes(p.quota_bytes)
        },
        if p.quota_inodes == 0 {
            "unlimited".to_string()
        } else {
            p.quota_inodes.to_string()
        },
    );
    Ok(())
}

/// `cairn volume ls`.
pub async fn ls(c: &MetaClient, json: bool) -> anyhow::Result<()> {
    let mut vols = c.list_volumes().await.op_only("volume ls")?;
    vols.sort_by(|a, b| a.name.cmp(&b.name));
    if json {
        let out: Vec<_> = vols.iter().map(volume_json).collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = vols
        .iter()
        .map(|v| {
            let p = v.policy.unwrap_or_default();
            vec![
                v.id.to_string(),
                v.name.clone(),
                p.replication.to_string(),
                human_bytes(p.chunk_size),
                p.stripe_width.to_string(),
                if p.encrypted { "yes" } else { "no" }.to_string(),
                human_bytes(v.used_bytes),
                limit(p.quota_bytes, true),
                v.used_inodes.to_string(),
                limit(p.quota_inodes, false),
                v.snap_seq.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "ID",
                "NAME",
                "REPL",
                "CHUNK",
                "STRIPE",
                "ENCRYPTED",
                "USED",
                "QUOTA",
                "INODES",
                "INODE-QUOTA",
                "SNAP"
            ],
            &rows,
            &[0, 2, 4, 8, 10],
        )
    );
    Ok(())
}
