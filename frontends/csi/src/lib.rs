//! The Cairn CSI driver: Cairn volumes for Kubernetes pods, speaking the
//! Container Storage Interface v1 (spec 1.12, package `csi.v1`) on a unix
//! socket, thin over the client library like the FUSE frontend.
//!
//! * [`identity`]: plugin name `csi.cairn.io`, its capabilities, and a
//!   probe that asks meta.
//! * [`controller`]: a PersistentVolume is a Cairn volume named after the
//!   PV; the StorageClass parameters ([`params`]) become its policy, the
//!   claim's size its byte quota. Idempotent by name. With `sharedVolume`
//!   it is a directory with a quota of its own in a shared Cairn volume.
//! * [`node`]: NodeStage runs one `cairn mount` per volume per node on the
//!   staging path, NodePublish bind-mounts it into each pod. The mount
//!   processes are not the plugin's children: they outlive a plugin that
//!   is killed or upgraded, a restarted plugin adopts them from its state
//!   directory, and a mount process that dies is started again on the same
//!   staging path. [`cgroup`]: how they outlive the plugin's container.
//!
//! What is not offered yet, and therefore not advertised: cloning a
//! volume (snapshot it and restore the snapshot instead), block volumes. Expansion is a quota change,
//! online.
//!
//! # Topology
//! A node plugin started with `--zone` reports its zone under
//! [`ZONE_KEY`] (the well-known `topology.kubernetes.io/zone`, so
//! StorageClasses' `allowedTopologies` use the usual key), and the
//! controller advertises volume accessibility constraints. A Cairn volume
//! is a network file system every zone reaches, so CreateVolume answers
//! that it is accessible from *every* topology the request requires (or,
//! without requisite ones, every preferred one; without either, from
//! anywhere): a class with `allowedTopologies` confines its volumes to
//! those zones, and nothing else confines them. Zones Kubernetes learns
//! of after a volume was made are not in its node affinity (the CO's rule,
//! not Cairn's), so classes that should follow new zones leave
//! `allowedTopologies` out and the external-provisioner's Topology feature
//! off (the chart's default).

pub mod cgroup;
pub mod controller;
pub mod identity;
pub mod node;
pub mod params;

/// The CSI v1 messages and services, generated from `proto/csi.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("csi.v1");
}

use cairn_client::CairnStatus;
use tonic::Status;

/// The driver's name, as the CSIDriver object and StorageClasses name it.
pub const DRIVER_NAME: &str = "csi.cairn.io";

/// The topology key node plugins report their zone under.
pub const ZONE_KEY: &str = "topology.kubernetes.io/zone";

/// A client error as a gRPC status: the code the project's errors travel
/// under everywhere ([`ErrorCode::grpc_code`]), `what` and the message.
pub fn status(what: &str, e: &CairnStatus) -> Status {
    Status::new(e.code.grpc_code(), format!("{what}: {e}"))
}

/// A required string field, or INVALID_ARGUMENT naming it.
///
/// # Errors
/// The field is empty.
pub fn required<'a>(field: &str, v: &'a str) -> Result<&'a str, Status> {
    if v.is_empty() {
        Err(Status::invalid_argument(format!("{field} is required")))
    } else {
        Ok(v)
    }
}

/// Checks that every capability asks for a file system mount with an
/// access mode Cairn serves (every mode: it is a shared file system).
///
/// # Errors
/// INVALID_ARGUMENT for none, a block volume or an unknown mode.
pub fn check_capabilities(caps: &[pb::VolumeCapability]) -> Result<(), Status> {
    use pb::volume_capability::AccessType;
    use pb::volume_capability::access_mode::Mode;
    if caps.is_empty() {
        return Err(Status::invalid_argument("volume_capabilities is required"));
    }
    for c in caps {
        match &c.access_type {
            Some(AccessType::Mount(m)) => {
                if !m.fs_type.is_empty() && m.fs_type != "fuse.cairn" && m.fs_type != "cairn" {
                    return Err(Status::invalid_argument(format!(
                        "fs_type {:?}: a Cairn volume is mounted as \"cairn\" (leave fs_type empty)",
                        m.fs_type
                    )));
                }
                // Not applied yet, so refused rather than ignored: a
                // StorageClass's or PV's mountOptions, and a pod's fsGroup.
                if !m.mount_flags.is_empty() {
                    return Err(Status::invalid_argument(format!(
                        "mount_flags {:?}: mount options are not supported by the Cairn CSI \
                         driver yet (remove mountOptions from the StorageClass or PV)",
                        m.mount_flags
                    )));
                }
                if !m.volume_mount_group.is_empty() {
                    return Err(Status::invalid_argument(
                        "volume_mount_group: a Cairn mount does not change group ownership \
                         (the CSIDriver says fsGroupPolicy None)",
                    ));
                }
            }
            Some(AccessType::Block(_)) => {
                return Err(Status::invalid_argument(
                    "block volumes are not offered: a Cairn volume is a shared file system",
                ));
            }
            None => return Err(Status::invalid_argument("access_type is required")),
        }
        let mode = c
            .access_mode
            .as_ref()
            .and_then(|m| Mode::try_from(m.mode).ok())
            .unwrap_or(Mode::Unknown);
        if mode == Mode::Unknown {
            return Err(Status::invalid_argument("access_mode is required"));
        }
    }
    Ok(())
}

/// The one capability a node request carries, checked.
///
/// # Errors
/// INVALID_ARGUMENT when it is missing or not served.
pub fn single_capability(c: Option<&pb::VolumeCapability>) -> Result<pb::VolumeCapability, Status> {
    let c = c
        .cloned()
        .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
    check_capabilities(std::slice::from_ref(&c))?;
    Ok(c)
}

/// Whether a capability only reads (the mount is made read-only).
pub fn reader_only(c: Option<&pb::VolumeCapability>) -> bool {
    use pb::volume_capability::access_mode::Mode;
    c.and_then(|c| c.access_mode.as_ref())
        .and_then(|m| Mode::try_from(m.mode).ok())
        .is_some_and(|m| matches!(m, Mode::SingleNodeReaderOnly | Mode::MultiNodeReaderOnly))
}
