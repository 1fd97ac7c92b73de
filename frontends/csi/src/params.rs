//! StorageClass parameters → a Cairn volume policy and the node-side mount
//! options.
//!
//! The platform teams' classes carry `type`, `replication`, `cache`,
//! `prefetch`, `compression` and `encryption`; the external-provisioner
//! adds `csi.storage.k8s.io/*` keys (secret references, PVC and PV names)
//! which are its own and ignored here. Anything else is refused with
//! INVALID_ARGUMENT naming the parameter: a typo in a class must not
//! silently give a volume other than the one asked for.
//!
//! `sharedVolume: NAME` makes each volume of the class a directory with a
//! quota of its own inside Cairn volume NAME (id `NAME/PV`), for clusters
//! with many small claims: one Cairn volume, its policy set once, each
//! claim's size its directory's byte quota (see `cairn quota`).
//!
//! What reaches the node: `cache` and `prefetch` are client settings, not
//! volume properties, so they travel in the volume context CreateVolume
//! returns (Kubernetes stores it in the PV and hands it to NodeStage).
//! The encryption key never does: the provisioner's secret gives it to
//! CreateVolume (meta keeps only its check value) and the node-stage
//! secret to NodeStage (the mount reads it from a 0600 file).

use std::collections::HashMap;

use cairn_proto::meta::{Compression, VolumePolicy};

/// Prefix of the parameters the Kubernetes sidecars add for themselves.
const SIDECAR_PREFIX: &str = "csi.storage.k8s.io/";

/// Volume-context key: the client's block cache on ("true") or off.
pub const CTX_CACHE: &str = "cache";
/// Volume-context key: kernel read-ahead on ("true") or off.
pub const CTX_PREFETCH: &str = "prefetch";
/// Volume-context key: the volume is encrypted ("true").
pub const CTX_ENCRYPTED: &str = "encrypted";

/// Secret key holding an encrypted volume's key: 64 hexadecimal digits
/// (32 bytes).
pub const SECRET_KEY: &str = "key";

/// What a StorageClass asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassParams {
    /// Copies of each chunk.
    pub replication: u32,
    /// Client block cache on the node.
    pub cache: bool,
    /// Kernel read-ahead on the node.
    pub prefetch: bool,
    /// Client-side compression.
    pub compression: Compression,
    /// Client-side encryption (the key comes from a secret).
    pub encryption: bool,
    /// `sharedVolume`: each volume of the class is a directory with a
    /// quota of its own in this Cairn volume (made with the class's
    /// policy when missing), not a Cairn volume of its own.
    pub shared_volume: Option<String>,
}

impl Default for ClassParams {
    fn default() -> Self {
        Self {
            replication: 3,
            cache: true,
            prefetch: true,
            compression: Compression::None,
            encryption: false,
            shared_volume: None,
        }
    }
}

fn boolean(key: &str, v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err(format!("parameter {key}: {v:?} is not true or false")),
    }
}

/// Parses a StorageClass's parameters.
///
/// # Errors
/// The first unknown or invalid parameter, named.
pub fn parse(params: &HashMap<String, String>) -> Result<ClassParams, String> {
    let mut p = ClassParams::default();
    let mut keys: Vec<&String> = params.keys().collect();
    keys.sort();
    for key in keys {
        let v = &params[key];
        match key.as_str() {
            k if k.starts_with(SIDECAR_PREFIX) => {}
            "type" => {
                if v != "ssd" {
                    return Err(format!(
                        "parameter type: {v:?} is not offered (Cairn stores chunks on SSD: type \"ssd\")"
                    ));
                }
            }
            "replication" => {
                p.replication = match v.trim().parse() {
                    Ok(n @ 1..=3) => n,
                    _ => return Err(format!("parameter replication: {v:?} is not 1, 2 or 3")),
                }
            }
            "sharedVolume" => {
                p.shared_volume = Some(
                    volume_name(v.trim()).map_err(|e| format!("parameter sharedVolume: {e}"))?,
                );
            }
            "cache" => p.cache = boolean(key, v)?,
            "prefetch" => p.prefetch = boolean(key, v)?,
            "encryption" => p.encryption = boolean(key, v)?,
            "compression" => {
                p.compression = match v.trim().to_ascii_lowercase().as_str() {
                    "false" | "no" | "none" => Compression::None,
                    // "true" picks the fast codec; name zstd for smaller output.
                    "true" | "yes" | "lz4" => Compression::Lz4,
                    "zstd" => Compression::Zstd,
                    _ => {
                        return Err(format!(
                            "parameter compression: {v:?} is not false, true, lz4 or zstd"
                        ));
                    }
                }
            }
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    Ok(p)
}

impl ClassParams {
    /// The volume policy for these parameters and a byte quota (0 =
    /// unlimited); the caller adds the key check of an encrypted volume.
    pub fn policy(&self, quota_bytes: u64) -> VolumePolicy {
        VolumePolicy {
            replication: self.replication,
            encrypted: self.encryption,
            quota_bytes,
            compression: self.compression as i32,
            ..VolumePolicy::default()
        }
    }

    /// The volume context NodeStage receives.
    pub fn context(&self) -> HashMap<String, String> {
        HashMap::from([
            (CTX_CACHE.to_string(), self.cache.to_string()),
            (CTX_PREFETCH.to_string(), self.prefetch.to_string()),
            (CTX_ENCRYPTED.to_string(), self.encryption.to_string()),
        ])
    }
}

/// Whether an existing volume's policy is what `want` asks for (the
/// fields a class sets; meta fills in the rest).
pub fn same_policy(have: &VolumePolicy, want: &VolumePolicy) -> bool {
    have.replication == want.replication
        && have.encrypted == want.encrypted
        && have.quota_bytes == want.quota_bytes
        && have.compression == want.compression
}

/// The CSI volume id of a volume carved out of shared volume `shared`
/// as directory `name`: `SHARED/NAME` (a Cairn volume's id is its name,
/// which holds no '/').
pub fn dir_volume_id(shared: &str, name: &str) -> String {
    format!("{shared}/{name}")
}

/// The shared volume and directory a CSI volume id names, when it is a
/// directory volume ([`dir_volume_id`]).
pub fn split_dir_volume(id: &str) -> Option<(&str, &str)> {
    let (shared, name) = id.split_once('/')?;
    (volume_name(shared).is_ok() && volume_name(name).is_ok()).then_some((shared, name))
}

/// The Cairn volume a CSI volume id lives in: the id itself, or a
/// directory volume's shared volume.
pub fn cairn_volume(id: &str) -> &str {
    split_dir_volume(id).map_or(id, |(shared, _)| shared)
}

/// A Cairn volume name for a CSI volume name (the PV name, e.g.
/// "pvc-0b6c…"): kept as it is when it is a valid name, else refused.
///
/// # Errors
/// Empty, too long, or with characters a path component cannot hold.
pub fn volume_name(name: &str) -> Result<String, String> {
    cairn_proto::names::validate(name)
        .map_err(|(_, why)| format!("volume name {name:?}: {why}"))?;
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_platform_class_parses_and_maps_to_a_policy() {
        let p = parse(&map(&[
            ("type", "ssd"),
            ("replication", "3"),
            ("cache", "true"),
            ("prefetch", "true"),
            ("compression", "false"),
            ("encryption", "true"),
            ("csi.storage.k8s.io/provisioner-secret-name", "cairn-key"),
            ("csi.storage.k8s.io/pvc/name", "data"),
        ]))
        .unwrap();
        assert_eq!(
            p,
            ClassParams {
                replication: 3,
                cache: true,
                prefetch: true,
                compression: Compression::None,
                encryption: true,
                shared_volume: None,
            }
        );
        let pol = p.policy(50 << 30);
        assert_eq!(
            (pol.replication, pol.encrypted, pol.quota_bytes),
            (3, true, 50 << 30)
        );
        assert_eq!(p.context()[CTX_CACHE], "true");
        let p = parse(&map(&[
            ("compression", "zstd"),
            ("replication", "1"),
            ("cache", "no"),
        ]))
        .unwrap();
        assert_eq!(
            (p.compression, p.replication, p.cache),
            (Compression::Zstd, 1, false)
        );
    }

    #[test]
    fn unknown_and_invalid_parameters_are_named() {
        for (kv, named) in [
            (("replicas", "3"), "replicas"),
            (("replication", "4"), "replication"),
            (("replication", "three"), "replication"),
            (("cache", "maybe"), "cache"),
            (("type", "hdd"), "type"),
            (("compression", "gzip"), "compression"),
        ] {
            let e = parse(&map(&[kv])).unwrap_err();
            assert!(e.contains(named), "{kv:?}: {e}");
        }
    }

    #[test]
    fn a_shared_volume_class_names_directory_volumes_inside_it() {
        let p = parse(&map(&[("sharedVolume", "team-a"), ("replication", "2")])).unwrap();
        assert_eq!(p.shared_volume.as_deref(), Some("team-a"));
        let id = dir_volume_id("team-a", "pvc-1");
        assert_eq!(split_dir_volume(&id), Some(("team-a", "pvc-1")));
        assert_eq!(cairn_volume(&id), "team-a");
        assert_eq!(
            (split_dir_volume("pvc-1"), cairn_volume("pvc-1")),
            (None, "pvc-1")
        );
        assert_eq!(split_dir_volume("a/b/c"), None);
        let e = parse(&map(&[("sharedVolume", "a/b")])).unwrap_err();
        assert!(e.contains("sharedVolume"), "{e}");
    }

    #[test]
    fn volume_names_must_be_path_components() {
        assert_eq!(volume_name("pvc-0b6c").unwrap(), "pvc-0b6c");
        assert!(volume_name("a/b").is_err());
        assert!(volume_name("").is_err());
        assert!(volume_name("..").is_err());
        assert!(volume_name(&"x".repeat(300)).is_err());
    }
}
