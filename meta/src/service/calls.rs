//! The server side of `Meta.Calls`: a client's unary calls multiplexed on
//! one long-lived HTTP/2 stream (the client side is
//! `cairn_client::meta_client::calls`).
//!
//! # Why
//!
//! A unary gRPC call opens an HTTP/2 stream per call: the client writes
//! HEADERS and DATA separately (hyper sends the body from a task of its
//! own), so the leader woke twice per request in a scheduler trace of
//! single-client creates; the server answers with HEADERS, DATA and
//! trailers, hpack-codes both header blocks, and spawns a task per call.
//! On the stream a call is one DATA frame each way.
//!
//! # Design
//!
//! * The response stream is the one task that serves the stream: polling
//!   it takes the calls that arrived (up to [`MAX_RUNNING`] at once, then
//!   the client waits: HTTP/2 flow control), runs them concurrently in a
//!   `FuturesUnordered`, and yields each reply as it completes, so a slow
//!   call (a linearizable read waiting for its index, a mutation waiting
//!   for its commit) holds up none behind it. Replies carry the call's id;
//!   their order is the order they complete in.
//! * Each call runs the same [`Meta`] handler as its unary twin, so checks,
//!   errors and idempotence (request ids of mutations) are the same. A
//!   handler's error travels as the status fields of its [`pb::CallReply`],
//!   details included, which the client turns back into the status the
//!   unary call would have returned.
//! * Only the methods listed in [`route`] travel here; any other is
//!   answered UNIMPLEMENTED and the client makes it a unary call.
//! * Each call is recorded in the per-method RPC metrics under its gRPC
//!   name, as a unary call is.
//! * The stream ends when the client closes its side and every call it
//!   sent is answered, or at once when the node stops (a graceful server
//!   shutdown waits for open streams; calls still running are dropped,
//!   and the client retries them, mutations under the same request id).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use cairn_proto::meta as pb;
use cairn_proto::meta::meta_server::Meta;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, Stream, StreamExt};
use prost::Message;
use tokio::sync::watch;
use tonic::{Request, Status, Streaming};

use super::MetaService;
use crate::metrics::RpcMetrics;

/// Calls of one stream run at once; the stream reads no more meanwhile.
pub const MAX_RUNNING: usize = 1024;

/// The response stream of `Meta.Calls` (module docs).
pub struct CallsStream {
    svc: MetaService,
    metrics: Option<Arc<RpcMetrics>>,
    /// The client's calls; `None` once it closed its side (or failed).
    inbound: Option<Streaming<pb::Call>>,
    running: FuturesUnordered<BoxFuture<'static, pb::CallReply>>,
    /// Resolves when the node stops.
    stopped: BoxFuture<'static, ()>,
}

impl CallsStream {
    /// Serves the calls of `inbound` with `svc`'s handlers until the client
    /// closes its side or `stop` turns true.
    pub fn new(
        svc: MetaService,
        inbound: Streaming<pb::Call>,
        mut stop: watch::Receiver<bool>,
        metrics: Option<Arc<RpcMetrics>>,
    ) -> Self {
        if let Some(m) = &metrics {
            m.call_stream_opened();
        }
        Self {
            svc,
            metrics,
            inbound: Some(inbound),
            running: FuturesUnordered::new(),
            stopped: Box::pin(async move {
                let _ = stop.wait_for(|s| *s).await;
            }),
        }
    }
}

impl Drop for CallsStream {
    fn drop(&mut self) {
        if let Some(m) = &self.metrics {
            m.call_stream_closed();
        }
    }
}

impl Stream for CallsStream {
    type Item = Result<pb::CallReply, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.stopped.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        while this.running.len() < MAX_RUNNING {
            let Some(inbound) = this.inbound.as_mut() else {
                break;
            };
            match inbound.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(call))) => {
                    this.running
                        .push(Box::pin(run(this.svc.clone(), call, this.metrics.clone())))
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!(error = %e, "a client's call stream failed");
                    this.inbound = None;
                }
                Poll::Ready(None) => this.inbound = None,
                Poll::Pending => break,
            }
        }
        match this.running.poll_next_unpin(cx) {
            Poll::Ready(Some(reply)) => Poll::Ready(Some(Ok(reply))),
            // Nothing running: done once the client closed its side.
            Poll::Ready(None) if this.inbound.is_none() => Poll::Ready(None),
            _ => Poll::Pending,
        }
    }
}

/// Runs one call and packs its outcome.
async fn run(svc: MetaService, call: pb::Call, metrics: Option<Arc<RpcMetrics>>) -> pb::CallReply {
    let started = Instant::now();
    let (name, outcome) = route(&svc, &call.method, &call.request).await;
    if let Some(m) = metrics.filter(|_| !name.is_empty()) {
        m.observe_stream_call(name, started.elapsed().as_secs_f64(), outcome.is_ok());
    }
    match outcome {
        Ok(reply) => pb::CallReply {
            id: call.id,
            reply,
            ..Default::default()
        },
        Err(s) => pb::CallReply {
            id: call.id,
            code: s.code() as i32,
            message: s.message().to_string(),
            details: s.details().to_vec(),
            reply: Vec::new(),
        },
    }
}

/// Dispatches the methods carried on the stream: the client library's name
/// of each (its `MetaClient` method), the gRPC name it is recorded under,
/// the handler and its request type.
macro_rules! routes {
    ($svc:ident, $method:ident, $bytes:ident;
     $($client:literal, $grpc:literal => $handler:ident($req:ty)),* $(,)?) => {
        match $method {
            $($client => ($grpc, match <$req as Message>::decode($bytes) {
                Ok(r) => $svc
                    .$handler(Request::new(r))
                    .await
                    .map(|resp| resp.get_ref().encode_to_vec()),
                Err(e) => Err(Status::invalid_argument(format!(
                    "{}: undecodable request: {e}",
                    $grpc
                ))),
            }),)*
            other => (
                "",
                Err(Status::unimplemented(format!(
                    "method {other:?} is not carried on the Calls stream"
                ))),
            ),
        }
    };
}

/// Runs method `method` of `svc` on the encoded request `bytes`; returns
/// the method's gRPC name ("" for one not carried here) and its encoded
/// reply or status.
async fn route(
    svc: &MetaService,
    method: &str,
    bytes: &[u8],
) -> (&'static str, Result<Vec<u8>, Status>) {
    routes!(svc, method, bytes;
        "lookup", "Lookup" => lookup(pb::LookupRequest),
        "get_attr", "GetAttr" => get_attr(pb::GetAttrRequest),
        "resolve", "Resolve" => resolve(pb::ResolveRequest),
        "read_dir", "ReadDir" => read_dir(pb::ReadDirRequest),
        "read_link", "ReadLink" => read_link(pb::ReadLinkRequest),
        "get_xattr", "GetXattr" => get_xattr(pb::GetXattrRequest),
        "list_xattr", "ListXattr" => list_xattr(pb::ListXattrRequest),
        "stat_fs", "StatFs" => stat_fs(pb::StatFsRequest),
        "mkdir", "Mkdir" => mkdir(pb::MkdirRequest),
        "create", "Create" => create(pb::CreateRequest),
        "symlink", "Symlink" => symlink(pb::SymlinkRequest),
        "mknod", "Mknod" => mknod(pb::MknodRequest),
        "link", "Link" => link(pb::LinkRequest),
        "unlink", "Unlink" => unlink(pb::UnlinkRequest),
        "rmdir", "Rmdir" => rmdir(pb::RmdirRequest),
        "rename", "Rename" => rename(pb::RenameRequest),
        "set_attr", "SetAttr" => set_attr(pb::SetAttrRequest),
        "set_xattr", "SetXattr" => set_xattr(pb::SetXattrRequest),
        "remove_xattr", "RemoveXattr" => remove_xattr(pb::RemoveXattrRequest),
        "open", "Open" => open(pb::OpenRequest),
        "close", "Close" => close(pb::CloseRequest),
        "report_length", "ReportLength" => report_length(pb::ReportLengthRequest),
        "release_files", "ReleaseFiles" => release_files(pb::ReleaseFilesRequest),
        "set_lock", "SetLock" => set_lock(pb::SetLockRequest),
        "get_lock", "GetLock" => get_lock(pb::GetLockRequest),
        "copy_up", "CopyUp" => copy_up(pb::CopyUpRequest),
        "copy_done", "CopyDone" => copy_done(pb::CopyDoneRequest),
        "get_chains", "GetChains" => get_chains(pb::Empty),
        "create_volume", "CreateVolume" => create_volume(pb::CreateVolumeRequest),
        "list_volumes", "ListVolumes" => list_volumes(pb::Empty),
        "rotate_volume_key", "RotateVolumeKey" => rotate_volume_key(pb::RotateVolumeKeyRequest),
        "set_volume_quota", "SetVolumeQuota" => set_volume_quota(pb::SetVolumeQuotaRequest),
        "set_dir_quota", "SetDirQuota" => set_dir_quota(pb::SetDirQuotaRequest),
        "get_dir_quota", "GetDirQuota" => get_dir_quota(pb::GetDirQuotaRequest),
        "create_snapshot", "CreateSnapshot" => create_snapshot(pb::CreateSnapshotRequest),
        "delete_snapshot", "DeleteSnapshot" => delete_snapshot(pb::DeleteSnapshotRequest),
        "list_snapshots", "ListSnapshots" => list_snapshots(pb::ListSnapshotsRequest),
        "restore_snapshot", "RestoreSnapshot" => restore_snapshot(pb::RestoreSnapshotRequest),
        "restore_status", "RestoreStatus" => restore_status(pb::RestoreStatusRequest),
        "open_session", "OpenSession" => open_session(pb::OpenSessionRequest),
        "renew_session", "RenewSession" => renew_session(pb::SessionRequest),
        "close_session", "CloseSession" => close_session(pb::SessionRequest),
    )
}
