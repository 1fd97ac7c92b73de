//! `cairn volume create` and `cairn volume ls`. A volume is a top-level
//! directory `/NAME` with its own replication, chunk size, stripe width,
//! quotas (DESIGN §3); meta validates the policy.
//!
//! `--encrypted` volumes: the key is the user's. `volume create
//! --encrypted --key-file PATH` uses the key in PATH (version 1) or, when
//! PATH does not exist, generates one and writes it there (mode 0600,
//! never overwriting a file). Meta receives only the key's check value.
//! `volume rotate-key` adds a version: new files use it, old files keep
//! theirs, so the key file keeps every version. The new version is written
//! to the key file before meta learns of it (a crash in between leaves an
//! extra line, refused with a clear message, never a volume whose key was
//! lost), and the file is restored when meta refuses it.
//!
//! `--compression lz4|zstd` volumes: clients compress file contents in
//! units of `--compression-unit` bytes (before encryption); meta validates
//! the unit and counts what closes report, and `volume ls` shows the
//! algorithm, the unit and the ratio of bytes written to bytes stored.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use cairn_client::MetaClient;
use cairn_client::crypto::{KeyRing, VolumeKey};
use cairn_proto::meta::{self as pb, Volume, VolumeKeyCheck, VolumePolicy};
use serde_json::json;

use crate::format::{human_bytes, table};
use crate::report::Context;

/// `--compression`: how clients compress a new volume's file contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    /// Stored as written.
    None,
    /// LZ4: fast, for data that compresses somewhat.
    Lz4,
    /// Zstandard: smaller, at a higher CPU cost.
    Zstd,
}

impl Compression {
    fn pb(self) -> pb::Compression {
        match self {
            Compression::None => pb::Compression::None,
            Compression::Lz4 => pb::Compression::Lz4,
            Compression::Zstd => pb::Compression::Zstd,
        }
    }
}

/// Returns `policy` with the compression of `--compression` and
/// `--compression-unit` (0, meta's default of 64 KiB, when not given).
/// Meta checks the unit.
///
/// # Errors
/// `--compression-unit` without a compression, or too large to be one.
pub fn with_compression(
    name: &str,
    policy: VolumePolicy,
    compression: Compression,
    unit: Option<u64>,
) -> anyhow::Result<VolumePolicy> {
    if compression == Compression::None && unit.is_some() {
        anyhow::bail!(
            "--compression-unit needs --compression lz4 or zstd; volume {name} was not created"
        );
    }
    let unit = match unit.map(u32::try_from) {
        None => 0,
        Some(Ok(u)) => u,
        Some(Err(_)) => {
            anyhow::bail!("--compression-unit is at most 1MiB; volume {name} was not created")
        }
    };
    Ok(VolumePolicy {
        compression: compression.pb() as i32,
        compression_unit: unit,
        ..policy
    })
}

/// Returns a volume's compression for people: "lz4/64KiB", "zstd/1MiB" or
/// "none".
fn compression_label(p: &VolumePolicy) -> String {
    let algo = match pb::Compression::try_from(p.compression) {
        Ok(pb::Compression::None) => return "none".to_string(),
        Ok(pb::Compression::Lz4) => "lz4".to_string(),
        Ok(pb::Compression::Zstd) => "zstd".to_string(),
        // A compression this build does not know (a newer meta).
        Err(_) => format!("compression-{}", p.compression),
    };
    format!(
        "{algo}/{}",
        human_bytes(u64::from(p.compression_unit)).replace(' ', "")
    )
}

/// Returns the compression ratio of a compressed volume: bytes written
/// over bytes stored (`None`: uncompressed, or nothing written yet).
fn ratio(v: &Volume) -> Option<f64> {
    let compressed = v
        .policy
        .as_ref()
        .is_some_and(|p| p.compression != pb::Compression::None as i32);
    // Precision loss is fine: two decimals are shown.
    (compressed && v.stored_bytes > 0).then(|| v.logical_bytes as f64 / v.stored_bytes as f64)
}

/// Returns [`ratio`] for people: "2.41x", or "-".
fn ratio_label(v: &Volume) -> String {
    ratio(v).map_or_else(|| "-".to_string(), |r| format!("{r:.2}x"))
}

fn volume_json(v: &Volume) -> serde_json::Value {
    let p = v.policy.clone().unwrap_or_default();
    json!({
        "id": v.id,
        "name": v.name,
        "root_ino": v.root_ino,
        "policy": {
            "replication": p.replication,
            "chunk_size": p.chunk_size,
            "stripe_width": p.stripe_width,
            "encrypted": p.encrypted,
            "key_version": p.key_version,
            "compression": compression_label(&p),
            "compression_unit": p.compression_unit,
            "quota_bytes": p.quota_bytes,
            "quota_inodes": p.quota_inodes,
        },
        "snap_seq": v.snap_seq,
        "used_bytes": v.used_bytes,
        "used_inodes": v.used_inodes,
        "logical_bytes": v.logical_bytes,
        "stored_bytes": v.stored_bytes,
        // Two decimals, as in the table; null when there is none.
        "compression_ratio": ratio(v).map(|r| (r * 100.0).round() / 100.0),
    })
}

fn limit(n: u64, bytes: bool) -> String {
    match (n, bytes) {
        (0, _) => "-".to_string(),
        (n, true) => human_bytes(n),
        (n, false) => n.to_string(),
    }
}

/// Writes `text` to a new file `path` readable by its owner only; never
/// replaces a file.
fn write_new_key_file(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating key file {}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing key file {}", path.display()))
}

/// Replaces the key file `path` with `text` atomically (a temporary file
/// beside it, fsynced, renamed over it), keeping it owner-only.
fn replace_key_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    write_new_key_file(&tmp, text)?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing key file {}", path.display()))
}

/// The key of a new encrypted volume `name`: version 1 of the key file at
/// `path`, or a new key written there. Returns the key's check value and
/// whether the file is new.
fn first_key(name: &str, path: &Path) -> anyhow::Result<(Vec<u8>, bool)> {
    if path.exists() {
        let ring = KeyRing::from_file(name, path)?;
        let key = ring
            .get(1)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        return Ok((key.check_value().to_vec(), false));
    }
    let key = VolumeKey::generate();
    let check = key.check_value().to_vec();
    let ring = KeyRing::single(name, 1, key);
    write_new_key_file(path, &ring.to_file_text())?;
    Ok((check, true))
}

/// Whether meta surely refused a request (rather than perhaps applied it
/// with the answer lost): only then may a key written for it be undone.
fn refused(e: &cairn_client::CairnStatus) -> bool {
    use cairn_client::ErrorCode as C;
    matches!(
        e.code,
        C::Invalid | C::NotFound | C::Exists | C::NotPermitted | C::AccessDenied | C::BadRequest
    )
}

/// `cairn volume create NAME ...`; `key_file` with `policy.encrypted`.
pub async fn create(
    c: &MetaClient,
    name: &str,
    mut policy: VolumePolicy,
    key_file: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    let mut new_key = None;
    if policy.encrypted {
        let path = key_file.ok_or_else(|| {
            anyhow::anyhow!(
                "--encrypted needs --key-file PATH: the volume's key is read from PATH, or \
                 generated and written there when PATH does not exist (keep it safe: without \
                 it the volume's data cannot be read)"
            )
        })?;
        let (check, created) = first_key(name, path)?;
        policy.key_checks = vec![VolumeKeyCheck { version: 1, check }];
        if created {
            new_key = Some(path);
        }
    } else if key_file.is_some() {
        anyhow::bail!("--key-file is for --encrypted volumes; volume {name} was not created");
    }
    let v = match c.create_volume(name, policy).await {
        Ok(v) => v,
        Err(e) => {
            if let Some(path) = new_key
                && refused(&e)
            {
                // The key of a volume that does not exist. After an
                // ambiguous failure the volume may exist: the key stays.
                let _ = std::fs::remove_file(path);
            }
            return Err(e).op("volume create", name);
        }
    };
    if let Some(path) = new_key {
        eprintln!(
            "a new key for volume {name} was written to {}: keep it safe (without it the \
             volume's data cannot be read) and give it to clients with --key-file {name}={}",
            path.display(),
            path.display()
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&volume_json(&v))?);
        return Ok(());
    }
    let p = v.policy.clone().unwrap_or_default();
    println!(
        "created volume {} (id {}) at /{}: replication {}, chunk size {}, stripe width {}, {}, {}, quota {} / {} inodes",
        v.name,
        v.id,
        v.name,
        p.replication,
        human_bytes(p.chunk_size),
        p.stripe_width,
        if p.encrypted {
            "encrypted (AES-256-GCM)"
        } else {
            "not encrypted"
        },
        match compression_label(&p).as_str() {
            "none" => "not compressed".to_string(),
            c => format!("compressed ({c})"),
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

/// `cairn volume rotate-key NAME --key-file PATH`: a new key version for
/// new files, appended to the key file.
pub async fn rotate_key(
    c: &MetaClient,
    name: &str,
    key_file: &Path,
    json: bool,
) -> anyhow::Result<()> {
    let vols = c.list_volumes().await.op_only("volume rotate-key")?;
    let v = vols
        .iter()
        .find(|v| v.name == name)
        .ok_or_else(|| anyhow::anyhow!("volume rotate-key {name}: no such volume"))?;
    let p = v.policy.clone().unwrap_or_default();
    if !p.encrypted {
        anyhow::bail!("volume rotate-key {name}: the volume is not encrypted");
    }
    let old_text = std::fs::read_to_string(key_file)
        .with_context(|| format!("reading key file {}", key_file.display()))?;
    let mut ring = KeyRing::parse(name, &old_text)?;
    // The file must hold the volume's current key: rotating from a wrong
    // file would leave the volume's files split over two key files.
    let current = ring
        .get(p.key_version)
        .map_err(|e| anyhow::anyhow!("{}: {e}", key_file.display()))?;
    let check = p.key_checks.iter().find(|k| k.version == p.key_version);
    if check.is_none_or(|k| k.check[..] != current.check_value()[..]) {
        anyhow::bail!(
            "{}: key version {} there is not volume {name}'s key",
            key_file.display(),
            p.key_version
        );
    }
    let version = p.key_version + 1;
    let key = VolumeKey::generate();
    let check = key.check_value();
    ring.insert(version, key.clone());
    replace_key_file(key_file, &ring.to_file_text())?;
    let v = match c.rotate_volume_key(name, check).await {
        Ok(v) => v,
        Err(e) if refused(&e) => {
            replace_key_file(key_file, &old_text)?;
            return Err(e).op("volume rotate-key", name);
        }
        Err(e) => {
            // Meta may have taken the key with the answer lost: the key
            // file keeps it.
            eprintln!(
                "volume rotate-key {name}: the outcome is unknown; {} keeps the new key as \
                 version {version} (check `cairn volume ls`: if the volume is still at version \
                 {}, rotating again is safe)",
                key_file.display(),
                p.key_version
            );
            return Err(e).op("volume rotate-key", name);
        }
    };
    // The version meta gave the key (another rotation may have come
    // first): the key file must hold it under that number.
    let given = v
        .policy
        .as_ref()
        .and_then(|p| p.key_checks.iter().find(|k| k.check[..] == check[..]))
        .map(|k| k.version);
    let version = match given {
        Some(g) if g != version => {
            let mut fixed = KeyRing::parse(name, &old_text)?;
            fixed.insert(g, key);
            replace_key_file(key_file, &fixed.to_file_text())?;
            g
        }
        _ => version,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&volume_json(&v))?);
    } else {
        println!(
            "volume {name}: new files use key version {version}; files written before keep \
             theirs, so {} now holds versions 1 to {version}: give the whole file to clients",
            key_file.display()
        );
    }
    Ok(())
}

/// `cairn volume set-quota NAME [--bytes SIZE] [--inodes N]`.
pub async fn set_quota(
    c: &MetaClient,
    name: &str,
    bytes: Option<u64>,
    inodes: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    if bytes.is_none() && inodes.is_none() {
        anyhow::bail!("volume set-quota {name}: give --bytes SIZE, --inodes N or both");
    }
    let v = c
        .set_volume_quota(name, bytes, inodes)
        .await
        .op("volume set-quota", name)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&volume_json(&v))?);
        return Ok(());
    }
    let p = v.policy.clone().unwrap_or_default();
    println!(
        "volume {name}: quota {} ({} used), inodes {} ({} used)",
        limit(p.quota_bytes, true),
        human_bytes(v.used_bytes),
        limit(p.quota_inodes, false),
        v.used_inodes
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
            let p = v.policy.clone().unwrap_or_default();
            vec![
                v.id.to_string(),
                v.name.clone(),
                p.replication.to_string(),
                human_bytes(p.chunk_size),
                p.stripe_width.to_string(),
                if p.encrypted {
                    format!("yes (key v{})", p.key_version)
                } else {
                    "no".to_string()
                },
                compression_label(&p),
                ratio_label(v),
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
                "COMPRESSION",
                "RATIO",
                "USED",
                "QUOTA",
                "INODES",
                "INODE-QUOTA",
                "SNAP"
            ],
            &rows,
            &[0, 2, 4, 7, 10, 12],
        )
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(compression: pb::Compression, unit: u32, logical: u64, stored: u64) -> Volume {
        Volume {
            policy: Some(VolumePolicy {
                compression: compression as i32,
                compression_unit: unit,
                ..VolumePolicy::default()
            }),
            logical_bytes: logical,
            stored_bytes: stored,
            ..Volume::default()
        }
    }

    #[test]
    fn volumes_show_their_compression_and_ratio() {
        let plain = volume(pb::Compression::None, 0, 0, 0);
        let p = plain.policy.clone().unwrap();
        assert_eq!(
            (compression_label(&p), ratio_label(&plain)),
            ("none".into(), "-".into())
        );
        let fresh = volume(pb::Compression::Lz4, 64 << 10, 0, 0);
        let p = fresh.policy.clone().unwrap();
        assert_eq!(
            (compression_label(&p), ratio_label(&fresh)),
            ("lz4/64KiB".into(), "-".into())
        );
        let used = volume(pb::Compression::Zstd, 1 << 20, 241_000, 100_000);
        let p = used.policy.clone().unwrap();
        assert_eq!(
            (compression_label(&p), ratio_label(&used)),
            ("zstd/1MiB".into(), "2.41x".into())
        );
        let j = volume_json(&used);
        assert_eq!(j["compression_ratio"], json!(2.41));
        assert_eq!(j["policy"]["compression"], "zstd/1MiB");
        assert_eq!(
            (j["logical_bytes"].as_u64(), j["stored_bytes"].as_u64()),
            (Some(241_000), Some(100_000))
        );
        assert!(volume_json(&fresh)["compression_ratio"].is_null());
    }

    #[test]
    fn the_compression_flags_become_the_policy() {
        let base = VolumePolicy::default();
        let p = with_compression("v", base.clone(), Compression::Lz4, None).unwrap();
        assert_eq!(
            (p.compression(), p.compression_unit),
            (pb::Compression::Lz4, 0)
        );
        let p = with_compression("v", base.clone(), Compression::Zstd, Some(256 << 10)).unwrap();
        assert_eq!(
            (p.compression(), p.compression_unit),
            (pb::Compression::Zstd, 256 << 10)
        );
        let p = with_compression("v", base.clone(), Compression::None, None).unwrap();
        assert_eq!(p, base);
        let e = with_compression("v", base.clone(), Compression::None, Some(64 << 10));
        let e = e.unwrap_err().to_string();
        assert!(e.contains("--compression-unit needs --compression"), "{e}");
        let e = with_compression("v", base, Compression::Lz4, Some(1 << 40)).unwrap_err();
        assert!(e.to_string().contains("at most 1MiB"), "{e}");
    }
}
