//! Raw gRPC access to one replica: the generated client without retries or
//! redirection (to ask a specific replica, e.g. an isolated leader), and a
//! byte codec to send arbitrary request bodies (garbage protobuf) to any
//! method.

use std::time::Duration;

use anyhow::{Context, Result};
use bytes::{Buf, BufMut, Bytes};
use cairn_proto::CairnStatus;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

/// The generated client of `cairn.meta.v1.Meta` over one channel.
pub type RawMeta = cairn_proto::meta::meta_client::MetaClient<Channel>;

/// Returns a lazily connecting channel to `addr` (`host:port`) with a
/// 500 ms connect timeout and `timeout` per request.
///
/// # Errors
/// When `addr` is not usable in a URI.
pub fn channel(addr: &str, timeout: Duration) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .with_context(|| format!("bad address {addr}"))?
        .connect_timeout(Duration::from_millis(500))
        .timeout(timeout)
        .tcp_nodelay(true)
        .connect_lazy())
}

/// Returns a raw client of the replica at `addr`; see [`channel`].
///
/// # Errors
/// When `addr` is not usable in a URI.
pub fn raw_client(addr: &str, timeout: Duration) -> Result<RawMeta> {
    Ok(RawMeta::new(channel(addr, timeout)?).max_decoding_message_size(64 << 20))
}

/// Decodes a gRPC status into Cairn's error (code, message, leader hint).
pub fn cairn(status: &Status) -> CairnStatus {
    CairnStatus::from_status(status)
}

/// A codec that sends and receives message bodies as they are, so a test
/// can put any bytes on the wire.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;

    fn encoder(&mut self) -> Self::Encoder {
        BytesCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesCodec
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Sends `body` as the request message of the unary method `path` (e.g.
/// `/cairn.meta.v1.Meta/Mkdir`) to the replica at `addr`; returns the raw
/// reply body or the status.
///
/// # Errors
/// The transport error as an `anyhow` error; a gRPC status is returned in
/// `Ok(Err(..))`.
pub async fn unary_bytes(
    addr: &str,
    path: &'static str,
    body: Bytes,
    timeout: Duration,
) -> Result<Result<Bytes, Status>> {
    let mut grpc = tonic::client::Grpc::new(channel(addr, timeout)?);
    grpc.ready()
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let reply = grpc
        .unary(
            tonic::Request::new(body),
            PathAndQuery::from_static(path),
            BytesCodec,
        )
        .await;
    Ok(reply.map(tonic::Response::into_inner))
}
