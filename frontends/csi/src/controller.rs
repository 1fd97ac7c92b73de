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
//! A class with `sharedVolume: NAME` makes directory volumes instead: the
//! volume `NAME/PV` is directory PV of Cairn volume NAME (made with the
//! class's policy when missing) with the claim's size as its directory
//! quota (`cairn quota`); expansion raises that quota, deletion removes
//! the directory's tree, and snapshots (of whole Cairn volumes) are
//! refused for them.
//!
//! Offered and advertised: CREATE_DELETE_VOLUME, GET_CAPACITY,
//! EXPAND_VOLUME (online: the quota grows, the mounts need nothing),
//! CREATE_DELETE_SNAPSHOT and LIST_SNAPSHOTS. A VolumeSnapshot is a Cairn
//! volume snapshot (issue 17) with the id `VOLUME/NAME`, named after the
//! CSI snapshot name; a volume whose content source is a snapshot is
//! `cairn snapshot restore` (its files share the snapshot's data until
//! written; it keeps the source's replication, compression and keys), and
//! the snapshot cannot be deleted while such a volume exists
//! (FAILED_PRECONDITION).
//!
//! CLONE_VOLUME: a volume whose content source is another volume is a
//! restore of a snapshot the driver takes of the source for it, named
//! `csi-clone-CLONE` ([`clone_snapshot`]; hidden from ListSnapshots, a
//! name CreateSnapshot refuses). That is how ZFS clones and how Cairn's
//! restore already works: taking it costs one Raft entry and a fence
//! (~20 ms), the clone is consistent at one instant even while pods write
//! the source, and its files share the source's chunks until written,
//! where a byte copy would take time in the size of the volume and read
//! a source that is changing. The price is the dependency ZFS has too:
//! the source cannot be deleted while a clone of it exists, so
//! DeleteVolume of a volume with snapshots or clones is
//! FAILED_PRECONDITION naming them, checked before anything is removed.
//! Deleting the clone deletes its snapshot.
//!
//! Not advertised (the sidecars then never call them; a direct call
//! answers UNIMPLEMENTED): publish/unpublish (`attachRequired: false`),
//! ListVolumes, ControllerGetVolume, ControllerModifyVolume.

use cairn_client::crypto::VolumeKey;
use cairn_client::meta_client::Owner;
use cairn_client::{ErrorCode, MetaClient};
use cairn_proto::ids::InodeId;
use cairn_proto::meta::{FileType, VolumeKeyCheck, VolumePolicy};
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

    /// Whether CSI volume `id` exists: a Cairn volume, or a directory
    /// volume's directory.
    async fn exists(&self, id: &str) -> Result<bool, Status> {
        match self.meta.resolve(&format!("/{id}")).await {
            Ok(_) => Ok(true),
            Err(e) if e.code == ErrorCode::NotFound => Ok(false),
            Err(e) => Err(status(&format!("looking up volume {id}"), &e)),
        }
    }

    /// Makes directory volume `shared/name`: directory `name` of Cairn
    /// volume `shared` with `quota` as its byte quota (0: unlimited, still
    /// counted). The shared volume is made with the class's `policy` (less
    /// the quota) when missing; an existing one must have the class's
    /// replication, compression, encryption and key. Idempotent; the same
    /// name with another quota is ALREADY_EXISTS.
    async fn create_dir_volume(
        &self,
        shared: &str,
        name: &str,
        policy: &VolumePolicy,
        check: Option<&Vec<u8>>,
        quota: u64,
    ) -> Result<(), Status> {
        let want = VolumePolicy {
            quota_bytes: 0,
            ..policy.clone()
        };
        let v = match self.find(shared).await? {
            Some(v) => v,
            None => match self.meta.create_volume(shared, want.clone()).await {
                Ok(v) => {
                    tracing::info!(volume = shared, "created shared volume");
                    v
                }
                Err(e) if e.code == ErrorCode::Exists => self
                    .find(shared)
                    .await?
                    .ok_or_else(|| status(&format!("creating shared volume {shared}"), &e))?,
                Err(e) => return Err(status(&format!("creating shared volume {shared}"), &e)),
            },
        };
        let have = v.policy.clone().unwrap_or_default();
        let same_key = check.is_none_or(|c| {
            have.key_checks
                .iter()
                .find(|k| k.version == 1)
                .is_some_and(|k| &k.check == c)
        });
        if have.replication != want.replication
            || have.encrypted != want.encrypted
            || have.compression != want.compression
            || !same_key
        {
            return Err(Status::invalid_argument(format!(
                "parameter sharedVolume: volume {shared} exists with replication {}, encrypted \
                 {}, compression {}{}; the class asks for replication {}, encrypted {}, \
                 compression {}",
                have.replication,
                have.encrypted,
                have.compression,
                if same_key { "" } else { " and another key" },
                want.replication,
                want.encrypted,
                want.compression
            )));
        }
        let root = InodeId(v.root_ino);
        let path = format!("/{shared}/{name}");
        let dir = match self.meta.lookup(root, name).await {
            Ok(a) => a,
            Err(e) if e.code == ErrorCode::NotFound => {
                match self.meta.mkdir(root, name, 0o755, Owner::ROOT).await {
                    Ok(entry) => entry.attr,
                    // Made meanwhile (a retry racing its first attempt).
                    Err(e) if e.code == ErrorCode::Exists => self
                        .meta
                        .lookup(root, name)
                        .await
                        .map_err(|e| status(&format!("looking up {path}"), &e))?,
                    Err(e) => return Err(status(&format!("making {path}"), &e)),
                }
            }
            Err(e) => return Err(status(&format!("looking up {path}"), &e)),
        };
        if dir.kind != FileType::Directory as i32 {
            return Err(Status::already_exists(format!(
                "{path} exists and is not a directory"
            )));
        }
        let ino = InodeId(dir.ino);
        match self
            .meta
            .dir_quota(ino)
            .await
            .map_err(|e| status(&format!("quota of {path}"), &e))?
        {
            Some(q) if q.ino == dir.ino && q.quota_bytes == quota => Ok(()),
            Some(q) if q.ino == dir.ino => Err(Status::already_exists(format!(
                "volume {shared}/{name} exists with a quota of {} bytes",
                q.quota_bytes
            ))),
            _ => {
                self.meta
                    .set_dir_quota(ino, Some(quota), None)
                    .await
                    .map_err(|e| status(&format!("setting the quota of {path}"), &e))?;
                tracing::info!(volume = %path, quota, "created directory volume");
                Ok(())
            }
        }
    }
}

impl Controller {
    /// ControllerExpandVolume of directory volume `id`: its directory's
    /// byte quota grows to `want` (never shrinks; 0 is unlimited).
    async fn expand_dir_volume(
        &self,
        id: &str,
        want: u64,
    ) -> Result<Response<pb::ControllerExpandVolumeResponse>, Status> {
        let a = match self.meta.resolve(&format!("/{id}")).await {
            Ok(a) => a,
            Err(e) if e.code == ErrorCode::NotFound => {
                return Err(Status::not_found(format!("no volume {id}")));
            }
            Err(e) => return Err(status(&format!("looking up volume {id}"), &e)),
        };
        let q = self
            .meta
            .dir_quota(InodeId(a.ino))
            .await
            .map_err(|e| status(&format!("quota of volume {id}"), &e))?
            .filter(|q| q.ino == a.ino)
            .ok_or_else(|| Status::not_found(format!("/{id} has no quota of its own")))?;
        let have = q.quota_bytes;
        let quota = if have == 0 || have >= want {
            have
        } else {
            self.meta
                .set_dir_quota(InodeId(a.ino), Some(want), None)
                .await
                .map_err(|e| status(&format!("expanding volume {id}"), &e))?;
            tracing::info!(volume = %id, from = have, to = want, "expanded directory volume");
            want
        };
        Ok(Response::new(pb::ControllerExpandVolumeResponse {
            capacity_bytes: i64::try_from(quota).unwrap_or(i64::MAX),
            node_expansion_required: false,
        }))
    }
}

/// How long CreateVolume waits for a restore's tree to be copied before it
/// answers ABORTED (the provisioner retries, and the retry waits on).
const RESTORE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl Controller {
    /// Snapshot `id` (`VOLUME/NAME`) and its volume, or NOT_FOUND.
    async fn find_snapshot(
        &self,
        id: &str,
    ) -> Result<(cairn_proto::meta::Volume, cairn_proto::meta::Snapshot), Status> {
        let missing = || Status::not_found(format!("no snapshot {id}"));
        let (src, snap) = parse_snapshot_id(id).ok_or_else(missing)?;
        let source = self.find(src).await?.ok_or_else(missing)?;
        let s = self
            .all_snapshots(Some(src))
            .await?
            .into_iter()
            .map(|(_, s)| s)
            .find(|s| s.name == snap)
            .ok_or_else(missing)?;
        Ok((source, s))
    }

    /// Makes volume `name` from snapshot `id` (`cairn snapshot restore`):
    /// it keeps the source's replication, compression and keys, so the
    /// class must ask for the same; `quota` becomes its byte quota.
    /// Idempotent: a volume restored from the same snapshot is waited for.
    async fn restore(
        &self,
        name: &str,
        id: &str,
        policy: &cairn_proto::meta::VolumePolicy,
        check: Option<&Vec<u8>>,
        quota: u64,
    ) -> Result<(), Status> {
        let (source, s) = self.find_snapshot(id).await?;
        let (src, snap) = (source.name.as_str(), s.name.as_str());
        let have = shares_data_with(&source, policy, check, &format!("snapshot {id}"))?;
        if quota != 0 && quota < s.used_bytes {
            return Err(Status::out_of_range(format!(
                "capacity_range: {quota} bytes is less than snapshot {id} holds ({} bytes)",
                s.used_bytes
            )));
        }
        match self.meta.restore_snapshot(src, snap, name).await {
            Ok(_) => tracing::info!(volume = name, snapshot = id, "restoring volume"),
            Err(e) if e.code == cairn_client::ErrorCode::Exists => {
                // Ours from a previous attempt, or another volume.
                let r = self.meta.restore_status(name).await;
                if !r.is_ok_and(|r| r.source_volume == src && r.snapshot == snap) {
                    return Err(Status::already_exists(format!(
                        "volume {name} exists and was not restored from snapshot {id}"
                    )));
                }
            }
            Err(e) => return Err(status(&format!("restoring {id} into {name}"), &e)),
        }
        let started = std::time::Instant::now();
        loop {
            let r = self
                .meta
                .restore_status(name)
                .await
                .map_err(|e| status(&format!("restoring {id} into {name}"), &e))?;
            if r.done {
                break;
            }
            if started.elapsed() > RESTORE_WAIT {
                return Err(Status::aborted(format!(
                    "volume {name} is still being restored from {id} ({} of {} inodes); retry",
                    r.copied, r.total
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        if quota != have.quota_bytes {
            self.meta
                .set_volume_quota(name, Some(quota), None)
                .await
                .map_err(|e| status(&format!("setting the quota of {name}"), &e))?;
        }
        Ok(())
    }

    /// Makes volume `name` a clone of volume `source`: a restore of the
    /// snapshot [`clone_snapshot`] takes of it (see the module docs).
    /// Idempotent; `name` taken by anything else is ALREADY_EXISTS.
    async fn clone_volume(
        &self,
        name: &str,
        source: &str,
        policy: &VolumePolicy,
        check: Option<&Vec<u8>>,
        quota: u64,
    ) -> Result<(), Status> {
        if let Some((shared, _)) = params::split_dir_volume(source) {
            if !self.exists(source).await? {
                return Err(Status::not_found(format!("no volume {source}")));
            }
            return Err(Status::invalid_argument(format!(
                "volume_content_source: {source} is a directory of Cairn volume {shared} (a \
                 sharedVolume class); only whole Cairn volumes can be cloned"
            )));
        }
        let snap = clone_snapshot(name);
        let taken = self
            .all_snapshots(None)
            .await?
            .into_iter()
            .find(|(_, s)| s.name == snap);
        match taken {
            Some((of, _)) if of != source => {
                return Err(Status::already_exists(format!(
                    "volume {name} exists, as a clone of volume {of}"
                )));
            }
            Some(_) => {} // a previous attempt's
            None => {
                let src = self
                    .find(source)
                    .await?
                    .ok_or_else(|| Status::not_found(format!("no volume {source}")))?;
                if self.find(name).await?.is_some() {
                    return Err(Status::already_exists(format!(
                        "volume {name} exists and is not a clone of volume {source}"
                    )));
                }
                // Checked before the snapshot is taken, so a refusal leaves
                // nothing behind.
                shares_data_with(&src, policy, check, &format!("volume {source}"))?;
                match self.meta.create_snapshot(source, &snap).await {
                    Ok(_) => tracing::info!(volume = name, source, "cloning volume"),
                    // Made meanwhile by a concurrent attempt, or the
                    // snapshot of an earlier clone of this name is still
                    // being deleted (meta lists it no more).
                    Err(e) if e.code == ErrorCode::Exists => {
                        let listed = self
                            .all_snapshots(Some(source))
                            .await?
                            .iter()
                            .any(|(_, s)| s.name == snap);
                        if !listed {
                            return Err(Status::aborted(format!(
                                "the snapshot of an earlier clone {name} of {source} is still \
                                 being deleted; retry"
                            )));
                        }
                    }
                    Err(e) => return Err(status(&format!("snapshot {snap} of {source}"), &e)),
                }
            }
        }
        let made = self
            .restore(name, &snapshot_id(source, &snap), policy, check, quota)
            .await;
        let Err(e) = made else { return Ok(()) };
        if matches!(
            e.code(),
            tonic::Code::Aborted | tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ) {
            return Err(e); // retried: still restoring, or meta unreachable
        }
        // Refused for good (a capacity below what the source holds, or
        // the name taken meanwhile): unless a restore of the snapshot into
        // `name` exists, the snapshot would only keep the source from ever
        // being deleted, so it goes, or the refusal becomes retryable.
        let restoring = self
            .meta
            .restore_status(name)
            .await
            .is_ok_and(|r| r.source_volume == source && r.snapshot == snap);
        if !restoring {
            match self.meta.delete_snapshot(source, &snap).await {
                Ok(_) => {}
                Err(d) if d.code == ErrorCode::NotFound => {}
                Err(d) => {
                    return Err(Status::unavailable(format!(
                        "{}; and the snapshot taken for the clone could not be deleted yet \
                         ({d}): retry",
                        e.message()
                    )));
                }
            }
        }
        Err(e)
    }

    /// Deletes the snapshot clone `name` was made from, if any, wherever
    /// its source is (the clone is gone: nothing reads it any more).
    async fn forget_clone(&self, name: &str) -> Result<(), Status> {
        let snap = clone_snapshot(name);
        for (source, s) in self.all_snapshots(None).await? {
            if s.name != snap {
                continue;
            }
            match self.meta.delete_snapshot(&source, &snap).await {
                Ok(_) => tracing::info!(volume = name, source, "deleted the clone's snapshot"),
                Err(e) if e.code == ErrorCode::NotFound => {}
                Err(e) => return Err(status(&format!("deleting snapshot {source}/{snap}"), &e)),
            }
        }
        Ok(())
    }

    /// Every snapshot of volume `only` (or of every volume) as (volume,
    /// snapshot).
    async fn all_snapshots(
        &self,
        only: Option<&str>,
    ) -> Result<Vec<(String, cairn_proto::meta::Snapshot)>, Status> {
        let names: Vec<String> = match only {
            Some(v) => vec![v.to_string()],
            None => self
                .meta
                .list_volumes()
                .await
                .map_err(|e| status("listing volumes", &e))?
                .into_iter()
                .map(|v| v.name)
                .collect(),
        };
        let mut out = Vec::new();
        for v in names {
            match self.meta.list_snapshots(&v).await {
                Ok(all) => out.extend(all.into_iter().map(|s| (v.clone(), s))),
                // Removed meanwhile.
                Err(e) if e.code == cairn_client::ErrorCode::NotFound => {}
                Err(e) => return Err(status(&format!("listing snapshots of {v}"), &e)),
            }
        }
        Ok(out)
    }
}

/// What names the snapshots the driver takes for clones begins with.
const CLONE_PREFIX: &str = "csi-clone-";

/// The snapshot of its source that clone `name` reads its data through.
pub fn clone_snapshot(name: &str) -> String {
    format!("{CLONE_PREFIX}{name}")
}

/// Checks that a volume made from `source`'s data (a restore or a clone),
/// which keeps the source's replication, compression and keys, is what the
/// class asks for; returns the source's policy.
fn shares_data_with(
    source: &cairn_proto::meta::Volume,
    policy: &VolumePolicy,
    check: Option<&Vec<u8>>,
    what: &str,
) -> Result<VolumePolicy, Status> {
    let have = source.policy.clone().unwrap_or_default();
    if have.replication != policy.replication
        || have.encrypted != policy.encrypted
        || have.compression != policy.compression
    {
        return Err(Status::invalid_argument(format!(
            "a volume made from {what} keeps its replication ({}), encryption ({}) and \
             compression ({}): use a class that asks for the same",
            have.replication, have.encrypted, have.compression
        )));
    }
    if let Some(c) = check
        && !have.key_checks.iter().any(|k| &k.check == c)
    {
        return Err(Status::invalid_argument(format!(
            "the provisioner secret's key is not the key of {what}"
        )));
    }
    Ok(have)
}

/// The CSI id of snapshot `name` of volume `volume`: `VOLUME/NAME` (neither
/// may contain a '/').
pub fn snapshot_id(volume: &str, name: &str) -> String {
    format!("{volume}/{name}")
}

/// Splits a [`snapshot_id`]; `None` for an id this driver never made.
pub fn parse_snapshot_id(id: &str) -> Option<(&str, &str)> {
    let (v, n) = id.split_once('/')?;
    (!v.is_empty() && !n.is_empty() && !n.contains('/')).then_some((v, n))
}

fn snapshot_pb(volume: &str, s: &cairn_proto::meta::Snapshot) -> pb::Snapshot {
    pb::Snapshot {
        size_bytes: i64::try_from(s.used_bytes).unwrap_or(i64::MAX),
        snapshot_id: snapshot_id(volume, &s.name),
        source_volume_id: volume.to_string(),
        creation_time: Some(prost_types::Timestamp {
            seconds: s.created_ns.div_euclid(1_000_000_000),
            nanos: i32::try_from(s.created_ns.rem_euclid(1_000_000_000)).unwrap_or(0),
        }),
        ready_to_use: s.ready,
        group_snapshot_id: String::new(),
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
        use pb::volume_content_source::Type as Source;
        let source = req
            .volume_content_source
            .as_ref()
            .and_then(|c| c.r#type.clone());
        let class = params::parse(&req.parameters).map_err(Status::invalid_argument)?;
        if let (Some(shared), Some(source)) = (&class.shared_volume, &source) {
            // A missing source is NOT_FOUND whatever the class.
            let what = match source {
                Source::Snapshot(s) => {
                    self.find_snapshot(&s.snapshot_id).await?;
                    "restored from a snapshot"
                }
                Source::Volume(v) => {
                    if !self.exists(&v.volume_id).await? {
                        return Err(Status::not_found(format!("no volume {}", v.volume_id)));
                    }
                    "a clone"
                }
            };
            return Err(Status::invalid_argument(format!(
                "volume_content_source: a volume of a sharedVolume class is a directory of Cairn \
                 volume {shared}, and snapshots and clones are of whole Cairn volumes: it cannot \
                 be {what}"
            )));
        }
        let volume_id = class
            .shared_volume
            .as_deref()
            .map_or_else(|| name.clone(), |s| params::dir_volume_id(s, &name));
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
                volume_id: volume_id.clone(),
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
        if let Some(shared) = &class.shared_volume {
            self.create_dir_volume(shared, &name, &policy, check.as_ref(), quota)
                .await?;
            return Ok(Response::new(answer(quota)));
        }
        if let Some(source) = source {
            let made = match &source {
                Source::Snapshot(s) => {
                    // The snapshots clones read are the driver's, not a
                    // content source the CO could name.
                    if parse_snapshot_id(&s.snapshot_id)
                        .is_some_and(|(_, n)| n.starts_with(CLONE_PREFIX))
                    {
                        return Err(Status::not_found(format!("no snapshot {}", s.snapshot_id)));
                    }
                    self.restore(&name, &s.snapshot_id, &policy, check.as_ref(), quota)
                        .await
                }
                Source::Volume(v) => {
                    let from = required("volume_content_source.volume.volume_id", &v.volume_id)?;
                    self.clone_volume(&name, from, &policy, check.as_ref(), quota)
                        .await
                }
            };
            return made.map(|()| {
                let mut a = answer(quota);
                if let Some(v) = a.volume.as_mut() {
                    v.content_source = req.volume_content_source.clone();
                }
                Response::new(a)
            });
        }
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
        if let Some((shared, dir)) = params::split_dir_volume(name) {
            // A directory volume: its directory and tree go, with its quota.
            let Some(v) = self.find(shared).await? else {
                return Ok(Response::new(pb::DeleteVolumeResponse {}));
            };
            let root = InodeId(v.root_ino);
            let a = match self.meta.lookup(root, dir).await {
                Ok(a) => a,
                Err(e) if e.code == ErrorCode::NotFound => {
                    return Ok(Response::new(pb::DeleteVolumeResponse {}));
                }
                Err(e) => return Err(status(&format!("looking up /{name}"), &e)),
            };
            self.meta
                .remove_tree(root, dir, InodeId(a.ino), &format!("/{name}"), true)
                .await
                .map_err(|(at, e)| status(&format!("removing {at}"), &e))?;
            tracing::info!(volume = %name, "deleted directory volume");
            return Ok(Response::new(pb::DeleteVolumeResponse {}));
        }
        let Some(v) = self.find(name).await? else {
            // Gone; a retry may still owe the clone's snapshot.
            self.forget_clone(name).await?;
            return Ok(Response::new(pb::DeleteVolumeResponse {}));
        };
        // A volume with snapshots cannot go (they read its data), so say so
        // before removing anything rather than half-way.
        let held = self.all_snapshots(Some(name)).await?;
        if !held.is_empty() {
            let (clones, snaps): (Vec<_>, Vec<_>) = held
                .iter()
                .map(|(_, s)| s.name.as_str())
                .partition(|s| s.starts_with(CLONE_PREFIX));
            let clones: Vec<_> = clones.iter().map(|c| &c[CLONE_PREFIX.len()..]).collect();
            return Err(Status::failed_precondition(format!(
                "volume {name} is the source of {} and {}: delete them first; nothing was \
                 deleted",
                if snaps.is_empty() {
                    "no snapshots".to_string()
                } else {
                    format!("snapshot(s) {}", snaps.join(", "))
                },
                if clones.is_empty() {
                    "no clones".to_string()
                } else {
                    format!("clone(s) {}", clones.join(", "))
                },
            )));
        }
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
        self.forget_clone(name).await?;
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
        if !self.exists(name).await? {
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
                capability(rpc::Type::CreateDeleteSnapshot),
                capability(rpc::Type::ListSnapshots),
                capability(rpc::Type::CloneVolume),
            ],
        }))
    }

    async fn create_snapshot(
        &self,
        req: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::CreateSnapshotResponse>, Status> {
        let req = req.into_inner();
        let volume = required("source_volume_id", &req.source_volume_id)?;
        let name = params::volume_name(required("name", &req.name)?)
            .map_err(|e| Status::invalid_argument(format!("name: {e}")))?;
        if let Some(k) = req.parameters.keys().next() {
            return Err(Status::invalid_argument(format!(
                "parameters: the Cairn CSI driver takes no snapshot parameters ({k:?} given)"
            )));
        }
        if let Some((shared, _)) = params::split_dir_volume(volume) {
            return Err(Status::invalid_argument(format!(
                "source_volume_id: {volume} is a directory of Cairn volume {shared} (a \
                 sharedVolume class), and snapshots are of whole Cairn volumes"
            )));
        }
        if name.starts_with(CLONE_PREFIX) {
            return Err(Status::invalid_argument(format!(
                "name: snapshot names beginning with {CLONE_PREFIX:?} are the driver's own (the \
                 snapshots clones are made from)"
            )));
        }
        if self.find(volume).await?.is_none() {
            return Err(Status::not_found(format!("no volume {volume}")));
        }
        // CSI snapshot names are cluster-wide, Cairn's per volume: the same
        // name on another volume is another snapshot.
        for (v, s) in self.all_snapshots(None).await? {
            if s.name == name && v != volume {
                return Err(Status::already_exists(format!(
                    "snapshot {name} exists, of volume {v}"
                )));
            }
        }
        let s = self
            .meta
            .create_snapshot(volume, &name)
            .await
            .map_err(|e| status(&format!("snapshot {name} of {volume}"), &e))?;
        tracing::info!(volume, snapshot = %name, "created snapshot");
        Ok(Response::new(pb::CreateSnapshotResponse {
            snapshot: Some(snapshot_pb(volume, &s)),
        }))
    }

    async fn delete_snapshot(
        &self,
        req: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        let req = req.into_inner();
        let id = required("snapshot_id", &req.snapshot_id)?;
        // An id this driver never made names no snapshot: deleted already.
        let Some((volume, name)) = parse_snapshot_id(id) else {
            return Ok(Response::new(pb::DeleteSnapshotResponse {}));
        };
        match self.meta.delete_snapshot(volume, name).await {
            Ok(_) => {
                tracing::info!(volume, snapshot = name, "deleted snapshot");
                Ok(Response::new(pb::DeleteSnapshotResponse {}))
            }
            Err(e) if e.code == cairn_client::ErrorCode::NotFound => {
                Ok(Response::new(pb::DeleteSnapshotResponse {}))
            }
            // The base of a volume restored from it.
            Err(e) if e.code == cairn_client::ErrorCode::NotEmpty => Err(
                Status::failed_precondition(format!("snapshot {id} is in use: {}", e.message)),
            ),
            Err(e) => Err(status(&format!("deleting snapshot {id}"), &e)),
        }
    }

    async fn list_snapshots(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let req = req.into_inner();
        if req.max_entries < 0 {
            return Err(Status::invalid_argument("max_entries: negative"));
        }
        let mut all = if !req.snapshot_id.is_empty() {
            match parse_snapshot_id(&req.snapshot_id) {
                Some((v, _)) if self.find(v).await?.is_some() => {
                    self.all_snapshots(Some(v)).await?
                }
                _ => Vec::new(),
            }
        } else if !req.source_volume_id.is_empty() {
            if self.find(&req.source_volume_id).await?.is_some() {
                self.all_snapshots(Some(&req.source_volume_id)).await?
            } else {
                Vec::new()
            }
        } else {
            self.all_snapshots(None).await?
        };
        // The snapshots clones are made from are the driver's, not the CO's.
        all.retain(|(v, s)| {
            !s.name.starts_with(CLONE_PREFIX)
                && (req.snapshot_id.is_empty() || req.snapshot_id == snapshot_id(v, &s.name))
                && (req.source_volume_id.is_empty() || req.source_volume_id == *v)
        });
        all.sort_by(|a, b| (a.0.as_str(), a.1.seq).cmp(&(b.0.as_str(), b.1.seq)));
        let start = if req.starting_token.is_empty() {
            0
        } else {
            req.starting_token
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= all.len())
                .ok_or_else(|| {
                    Status::aborted(format!(
                        "starting_token {:?} is not one this driver gave",
                        req.starting_token
                    ))
                })?
        };
        let n = if req.max_entries == 0 {
            all.len()
        } else {
            req.max_entries as usize
        };
        let end = start.saturating_add(n).min(all.len());
        let entries = all[start..end]
            .iter()
            .map(|(v, s)| pb::list_snapshots_response::Entry {
                snapshot: Some(snapshot_pb(v, s)),
            })
            .collect();
        Ok(Response::new(pb::ListSnapshotsResponse {
            entries,
            next_token: if end < all.len() {
                end.to_string()
            } else {
                String::new()
            },
        }))
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
        if params::split_dir_volume(name).is_some() {
            return self.expand_dir_volume(name, want).await;
        }
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
