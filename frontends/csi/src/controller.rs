//! The Controller service: PersistentVolumes as Cairn volumes.
//!
//! A volume is named after the CSI volume name (the PV name), which makes
//! CreateVolume idempotent without any state of our own: the same name
//! with the same policy answers with the existing volume, the same name
//! with another policy is ALREADY_EXISTS. The claim's size becomes the
//! volume's byte quota (the larger of required and limit bytes, or none).
//! DeleteVolume removes the volume's tree and then the volume; its data
//! leaves the chunkservers through meta's garbage collector.
//!
//! Offered and advertised: CREATE_DELETE_VOLUME, GET_CAPACITY and
//! EXPAND_VOLUME (online: the quota grows, the mounts need nothing). Not
//! advertised (the sidecars then never call them; a direct call answers
//! UNIMPLEMENTED): snapshots, cloning, publish/unpublish
//! (`attachRequired: false`), ListVolumes, ControllerGetVolume,
//! ControllerModifyVolume.

use cairn_client::MetaClient;
use cairn_client::crypto::VolumeKey;
use cairn_proto::ids::InodeId;
use cairn_proto::meta::VolumeKeyCheck;
use tonic::{Request, Response, Status};

use crate::params::{self, SECRET_KEY};
use crate::pb::controller_service_capability::{Rpc, Type, rpc};
use crate::pb::{self, ControllerServiceCapability};
use crate::{check_capabilities, required, status};

/// The Controller service.
#[derive(Debug, Clone)]
pub struct Controller {
    meta: MetaClient,
}

impl Controller {
    /// The service over a meta connection.
    pub fn new(meta: MetaClient) -> Self {
        Self { meta }
    }

    async fn find(&self, name: &str) -> Result<Option<cairn_proto::meta::Volume>, Status> {
        let vols = self
            .meta
            .list_volumes()
            .await
            .map_err(|e| status("listing volumes", &e))?;
        Ok(vols.into_iter().find(|v| v.name == name))
    }
}

fn capability(t: rpc::Type) -> ControllerServiceCapability {
    ControllerServiceCapability {
        r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })),
    }
}

/// The bytes a capacity range asks for: the larger of required and limit
/// (0: no quota).
///
/// # Errors
/// Negative bytes (INVALID_ARGUMENT), required above the limit
/// (OUT_OF_RANGE).
fn capacity_bytes(r: &pb::CapacityRange) -> Result<u64, Status> {
    if r.required_bytes < 0 || r.limit_bytes < 0 {
        return Err(Status::invalid_argument("capacity_range: negative bytes"));
    }
    if r.limit_bytes > 0 && r.required_bytes > r.limit_bytes {
        return Err(Status::out_of_range(format!(
            "capacity_range: required {} bytes exceed the limit of {}",
            r.required_bytes, r.limit_bytes
        )));
    }
    Ok(r.required_bytes.max(r.limit_bytes) as u64)
}

/// Where a new volume is accessible from, given the CO's requirements:
/// every requisite topology (a Cairn volume is reachable from any zone),
/// else every preferred one, else anywhere (none listed). See the crate
/// docs, Topology.
///
/// # Errors
/// INVALID_ARGUMENT for a segment under a key other than [`ZONE_KEY`] (no
/// node reports one) or an empty topology.
///
/// [`ZONE_KEY`]: crate::ZONE_KEY
pub fn accessible_topology(
    req: Option<&pb::TopologyRequirement>,
) -> Result<Vec<pb::Topology>, Status> {
    let Some(req) = req else {
        return Ok(Vec::new());
    };
    let chosen = if req.requisite.is_empty() {
        &req.preferred
    } else {
        &req.requisite
    };
    let mut out: Vec<pb::Topology> = Vec::new();
    for t in chosen {
        if t.segments.is_empty() {
            return Err(Status::invalid_argument(
                "accessibility_requirements: an empty topology",
            ));
        }
        if let Some(k) = t.segments.keys().find(|k| *k != crate::ZONE_KEY) {
            return Err(Status::invalid_argument(format!(
                "accessibility_requirements: unknown topology key {k:?}; Cairn nodes report \
                 only {:?}",
                crate::ZONE_KEY
            )));
        }
        if !out.contains(t) {
            out.push(t.clone());
        }
    }
    Ok(out)
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not offered by the Cairn CSI driver yet"))
}

#[tonic::async_trait]
impl pb::controller_server::Controller for Controller {
    async fn create_volume(
        &self,
        req: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::CreateVolumeResponse>, Status> {
        let req = req.into_inner();
        let name =
            params::volume_name(required("name", &req.name)?).map_err(Status::invalid_argument)?;
        check_capabilities(&req.volume_capabilities)?;
        if req.volume_content_source.is_some() {
            return Err(Status::invalid_argument(
                "volume_content_source: restoring a snapshot or cloning a volume needs Cairn \
                 snapshots, which this driver does not offer yet",
            ));
        }
        let class = params::parse(&req.parameters).map_err(Status::invalid_argument)?;
        if !req.mutable_parameters.is_empty() {
            return Err(Status::invalid_argument(
                "mutable_parameters: volume modification is not offered by the Cairn CSI driver \
                 (no VolumeAttributesClass)",
            ));
        }
        let quota = match &req.capacity_range {
            None => 0,
            Some(r) => capacity_bytes(r)?,
        };
        let mut policy = class.policy(quota);
        let check = if class.encryption {
            let hex = req.secrets.get(SECRET_KEY).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "encryption \"true\" needs the volume key in the provisioner secret, under \
                     {SECRET_KEY:?} (64 hexadecimal digits)"
                ))
            })?;
            let key = VolumeKey::from_hex(hex.trim()).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "secret {SECRET_KEY:?} is not a key: 64 hexadecimal digits (32 bytes) expected"
                ))
            })?;
            let check = key.check_value().to_vec();
            policy.key_checks = vec![VolumeKeyCheck {
                version: 1,
                check: check.clone(),
            }];
            Some(check)
        } else {
            None
        };
        let topology = accessible_topology(req.accessibility_requirements.as_ref())?;
        let answer = |quota: u64| pb::CreateVolumeResponse {
            volume: Some(pb::Volume {
                capacity_bytes: quota as i64,
                volume_id: name.clone(),
                volume_context: class.context(),
                content_source: None,
                accessible_topology: topology.clone(),
            }),
        };
        let existing = |v: &cairn_proto::meta::Volume| -> Result<(), Status> {
            let have = v.policy.clone().unwrap_or_default();
            let same_key = check.as_ref().is_none_or(|c| {
                have.key_checks
                    .iter()
                    .find(|k| k.version == 1)
                    .is_some_and(|k| &k.check == c)
            });
            if params::same_policy(&have, &policy) && same_key {
                Ok(())
            } else {
                Err(Status::already_exists(format!(
                    "volume {name} exists with other parameters (replication {}, encrypted {}, \
                     quota {} bytes, compression {}{})",
                    have.replication,
                    have.encrypted,
                    have.quota_bytes,
                    have.compression,
                    if same_key { "" } else { ", another key" }
                )))
            }
        };
        if let Some(v) = self.find(&name).await? {
            existing(&v)?;
            return Ok(Response::new(answer(quota)));
        }
        match self.meta.create_volume(&name, policy.clone()).await {
            Ok(_) => {
                tracing::info!(volume = %name, quota, "created volume");
                Ok(Response::new(answer(quota)))
            }
            // Created meanwhile (a retry racing its first attempt).
            Err(e) if e.code == cairn_client::ErrorCode::Exists => match self.find(&name).await? {
                Some(v) => existing(&v).map(|()| Response::new(answer(quota))),
                None => Err(status(&format!("creating volume {name}"), &e)),
            },
            Err(e) => Err(status(&format!("creating volume {name}"), &e)),
        }
    }

    async fn delete_volume(
        &self,
        req: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeResponse>, Status> {
        let req = req.into_inner();
        let name = required("volume_id", &req.volume_id)?;
        let Some(v) = self.find(name).await? else {
            return Ok(Response::new(pb::DeleteVolumeResponse {}));
        };
        // The volume is its root directory: gone with the tree. Entries
        // removed meanwhile (a retried DeleteVolume) are not errors.
        self.meta
            .remove_tree(
                InodeId::ROOT,
                name,
                InodeId(v.root_ino),
                &format!("/{name}"),
                true,
            )
            .await
            .map_err(|(at, e)| status(&format!("removing {at}"), &e))?;
        tracing::info!(volume = %name, "deleted volume");
        Ok(Response::new(pb::DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        _: Request<pb::ControllerPublishVolumeRequest>,
    ) -> Result<Response<pb::ControllerPublishVolumeResponse>, Status> {
        Err(unimplemented(
            "ControllerPublishVolume (attachRequired is false)",
        ))
    }

    async fn controller_unpublish_volume(
        &self,
        _: Request<pb::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<pb::ControllerUnpublishVolumeResponse>, Status> {
        Err(unimplemented(
            "ControllerUnpublishVolume (attachRequired is false)",
        ))
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<pb::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<pb::ValidateVolumeCapabilitiesResponse>, Status> {
        let req = req.into_inner();
        let name = required("volume_id", &req.volume_id)?;
        if req.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities is required"));
        }
        if self.find(name).await?.is_none() {
            return Err(Status::not_found(format!("no volume {name}")));
        }
        // Confirmed only when every capability and parameter is one this
        // driver serves.
        let checked = check_capabilities(&req.volume_capabilities).and_then(|()| {
            params::parse(&req.parameters)
                .map(drop)
                .map_err(Status::invalid_argument)
        });
        let reply = match checked {
            Ok(()) => pb::ValidateVolumeCapabilitiesResponse {
                confirmed: Some(pb::validate_volume_capabilities_response::Confirmed {
                    volume_context: req.volume_context,
                    volume_capabilities: req.volume_capabilities,
                    parameters: req.parameters,
                    mutable_parameters: req.mutable_parameters,
                }),
                message: String::new(),
            },
            Err(why) => pb::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: why.message().to_string(),
            },
        };
        Ok(Response::new(reply))
    }

    async fn list_volumes(
        &self,
        _: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        Err(unimplemented("ListVolumes"))
    }

    async fn get_capacity(
        &self,
        req: Request<pb::GetCapacityRequest>,
    ) -> Result<Response<pb::GetCapacityResponse>, Status> {
        let req = req.into_inner();
        let class = params::parse(&req.parameters).map_err(Status::invalid_argument)?;
        let t = self
            .meta
            .get_chains()
            .await
            .map_err(|e| status("listing chunkservers", &e))?;
        let free: u64 = t
            .chunkservers
            .iter()
            .filter(|c| c.alive)
            .map(|c| c.capacity_bytes.saturating_sub(c.used_bytes))
            .sum();
        let available = free / u64::from(class.replication.max(1));
        Ok(Response::new(pb::GetCapacityResponse {
            available_capacity: i64::try_from(available).unwrap_or(i64::MAX),
            maximum_volume_size: None,
            minimum_volume_size: None,
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<pb::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<pb::ControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(pb::ControllerGetCapabilitiesResponse {
            capabilities: vec![
                capability(rpc::Type::CreateDeleteVolume),
                capability(rpc::Type::GetCapacity),
                capability(rpc::Type::ExpandVolume),
            ],
        }))
    }

    async fn create_snapshot(
        &self,
        _: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::CreateSnapshotResponse>, Status> {
        Err(unimplemented("CreateSnapshot (Cairn has no snapshots yet)"))
    }

    async fn delete_snapshot(
        &self,
        _: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        Err(unimplemented("DeleteSnapshot (Cairn has no snapshots yet)"))
    }

    async fn list_snapshots(
        &self,
        _: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        Err(unimplemented("ListSnapshots (Cairn has no snapshots yet)"))
    }

    /// A larger claim is a larger byte quota, at once and online: the
    /// mounts need nothing (`node_expansion_required` false). Never
    /// shrinks: a request below the current quota answers with it.
    async fn controller_expand_volume(
        &self,
        req: Request<pb::ControllerExpandVolumeRequest>,
    ) -> Result<Response<pb::ControllerExpandVolumeResponse>, Status> {
        let req = req.into_inner();
        let name = required("volume_id", &req.volume_id)?;
        let r = req
            .capacity_range
            .ok_or_else(|| Status::invalid_argument("capacity_range is required"))?;
        let want = capacity_bytes(&r)?;
        let v = self
            .find(name)
            .await?
            .ok_or_else(|| Status::not_found(format!("no volume {name}")))?;
        let have = v.policy.unwrap_or_default().quota_bytes;
        // 0 is unlimited: already as large as any request.
        let quota = if have == 0 || have >= want {
            have
        } else {
            self.meta
                .set_volume_quota(name, Some(want), None)
                .await
                .map_err(|e| status(&format!("expanding volume {name}"), &e))?;
            tracing::info!(volume = %name, from = have, to = want, "expanded volume");
            want
        };
        Ok(Response::new(pb::ControllerExpandVolumeResponse {
            capacity_bytes: i64::try_from(quota).unwrap_or(i64::MAX),
            node_expansion_required: false,
        }))
    }

    async fn controller_get_volume(
        &self,
        _: Request<pb::ControllerGetVolumeRequest>,
    ) -> Result<Response<pb::ControllerGetVolumeResponse>, Status> {
        Err(unimplemented("ControllerGetVolume"))
    }

    async fn controller_modify_volume(
        &self,
        _: Request<pb::ControllerModifyVolumeRequest>,
    ) -> Result<Response<pb::ControllerModifyVolumeResponse>, Status> {
        Err(unimplemented("ControllerModifyVolume"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(z: &str) -> pb::Topology {
        pb::Topology {
            segments: [(crate::ZONE_KEY.to_string(), z.to_string())].into(),
        }
    }

    #[test]
    fn volumes_are_accessible_from_every_required_zone() {
        assert_eq!(accessible_topology(None).unwrap(), Vec::new());
        let req = |requisite: Vec<pb::Topology>, preferred: Vec<pb::Topology>| {
            accessible_topology(Some(&pb::TopologyRequirement {
                requisite,
                preferred,
            }))
        };
        assert_eq!(
            req(vec![zone("a"), zone("b"), zone("a")], vec![zone("b")]).unwrap(),
            vec![zone("a"), zone("b")]
        );
        assert_eq!(req(Vec::new(), vec![zone("c")]).unwrap(), vec![zone("c")]);
        assert_eq!(req(Vec::new(), Vec::new()).unwrap(), Vec::new());
        let rack = pb::Topology {
            segments: [("rack".to_string(), "r1".to_string())].into(),
        };
        let e = req(vec![rack], Vec::new()).unwrap_err();
        assert!(e.message().contains("rack"), "{e:?}");
        let empty = pb::Topology::default();
        assert!(req(vec![empty], Vec::new()).is_err());
    }
}
