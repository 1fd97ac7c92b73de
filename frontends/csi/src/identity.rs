//! The Identity service: who the plugin is, what it serves, and whether
//! it can work (Probe asks meta).

use cairn_client::MetaClient;
use tonic::{Request, Response, Status};

use crate::pb::plugin_capability::{Service, service};
use crate::pb::{self, PluginCapability};

/// The Identity service.
#[derive(Debug, Clone)]
pub struct Identity {
    meta: MetaClient,
    controller: bool,
}

impl Identity {
    /// The service; `controller` says whether this instance serves the
    /// Controller service too.
    pub fn new(meta: MetaClient, controller: bool) -> Self {
        Self { meta, controller }
    }
}

#[tonic::async_trait]
impl pb::identity_server::Identity for Identity {
    async fn get_plugin_info(
        &self,
        _: Request<pb::GetPluginInfoRequest>,
    ) -> Result<Response<pb::GetPluginInfoResponse>, Status> {
        Ok(Response::new(pb::GetPluginInfoResponse {
            name: crate::DRIVER_NAME.into(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<pb::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<pb::GetPluginCapabilitiesResponse>, Status> {
        let mut capabilities = Vec::new();
        if self.controller {
            capabilities.push(PluginCapability {
                r#type: Some(pb::plugin_capability::Type::Service(Service {
                    r#type: service::Type::ControllerService as i32,
                })),
            });
            // Volumes are reachable from every zone; the capability lets
            // a class confine them (see the crate docs, Topology).
            capabilities.push(PluginCapability {
                r#type: Some(pb::plugin_capability::Type::Service(Service {
                    r#type: service::Type::VolumeAccessibilityConstraints as i32,
                })),
            });
            // Expansion is a quota change: online, nothing for the node.
            capabilities.push(PluginCapability {
                r#type: Some(pb::plugin_capability::Type::VolumeExpansion(
                    pb::plugin_capability::VolumeExpansion {
                        r#type: pb::plugin_capability::volume_expansion::Type::Online as i32,
                    },
                )),
            });
        }
        Ok(Response::new(pb::GetPluginCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn probe(
        &self,
        _: Request<pb::ProbeRequest>,
    ) -> Result<Response<pb::ProbeResponse>, Status> {
        // Ready when a meta replica answers; the sidecars' liveness probe
        // then restarts a plugin that lost the cluster for good.
        let ready = self.meta.status().await.is_ok();
        Ok(Response::new(pb::ProbeResponse { ready: Some(ready) }))
    }
}
