//! The Cairn side of the `chunk` workload: Cairn's data-plane client
//! ([`cairn_client::data`]) against the head of one chain.
//!
//! One [`DataConn`] per chain head, shared by every worker: requests are
//! pipelined on it as a real client's would be. Writes carry this run's
//! client id and a sequence number from one counter, so each (client,
//! chunk) write is unique and increasing, as the head's retry memory
//! requires. Every read reply is checked against its CRCs
//! ([`verify_read_reply`], part of the timed operation: a real client
//! does it on every read) and its length, and the first piece of every
//! chunk (every random block) is compared with the bytes written.
//!
//! Error replies the client library calls retryable (a chunkserver that
//! has not seen the chain table yet, a lease being renewed) are retried
//! after a pause, with the same sequence number, and counted; anything
//! else fails the run. A dead connection is not reopened: a benchmark
//! whose connection breaks has nothing to report.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use cairn_client::data::{
    DataConn, DataError, into_result, read_request, verify_read_reply, write_request,
};
use cairn_proto::frame::Frame;
use cairn_proto::ids::{ChunkId, ObjectId};

use super::tail::TailSamples;
use crate::layout::{BLOCK, Layout};
use crate::measure::{Measured, join_samples};
use crate::servers::ChainRoute;

/// Longest one request may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Retries of one request that got a retryable error reply.
const RETRIES: u32 = 50;

/// Pause before a retry.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A client of one chain.
#[derive(Debug)]
pub struct ChainClient {
    route: ChainRoute,
    conn: DataConn,
    client_id: u64,
    next_seq: AtomicU64,
    retries: AtomicU64,
}

impl ChainClient {
    /// Connects to the head of `route`.
    ///
    /// # Errors
    /// When the head cannot be reached.
    pub async fn connect(route: &ChainRoute, client_id: u64) -> Result<Arc<ChainClient>> {
        let conn = DataConn::connect(route.head(), Duration::from_secs(5))
            .await
            .with_context(|| format!("connecting to the head of chain {}", route.chain))?;
        Ok(Arc::new(ChainClient {
            route: route.clone(),
            conn,
            client_id,
            next_seq: AtomicU64::new(1),
            retries: AtomicU64::new(0),
        }))
    }

    /// Returns the retries so far, and starts counting again.
    fn take_retries(&self) -> u64 {
        self.retries.swap(0, Ordering::Relaxed)
    }

    /// Sends the frame `make` builds and returns the successful reply,
    /// retrying retryable error replies.
    async fn call(&self, make: impl Fn() -> Frame) -> Result<Frame, DataError> {
        let mut attempt = 0;
        loop {
            let reply = self
                .conn
                .call(make(), CALL_TIMEOUT)
                .await
                .and_then(into_result);
            match reply {
                Err(e @ DataError::Status { .. }) if e.is_retryable() && attempt < RETRIES => {
                    attempt += 1;
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                r => return r,
            }
        }
    }

    /// Writes `data` (one piece) at byte `b` of the data set `object`.
    async fn write_piece(
        &self,
        layout: &Layout,
        object: ObjectId,
        b: u64,
        data: &Bytes,
    ) -> Result<()> {
        let (index, offset) = layout.locate(b);
        let chunk = ChunkId { object, index };
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        self.call(|| {
            write_request(
                self.route.chain,
                self.route.chain_version,
                chunk,
                offset,
                data.clone(),
                self.client_id,
                seq,
                0,
            )
        })
        .await
        .with_context(|| format!("writing {} bytes at {offset} of chunk {chunk}", data.len()))?;
        Ok(())
    }

    /// Reads `len` bytes at byte `b` of the data set `object`, checked
    /// against their CRCs.
    async fn read_range(
        &self,
        layout: &Layout,
        object: ObjectId,
        b: u64,
        len: u32,
    ) -> Result<Bytes> {
        let (index, offset) = layout.locate(b);
        let chunk = ChunkId { object, index };
        let reply = self
            .call(|| {
                read_request(
                    self.route.chain,
                    self.route.chain_version,
                    chunk,
                    offset,
                    len,
                )
            })
            .await
            .with_context(|| format!("reading {len} bytes at {offset} of chunk {chunk}"))?;
        verify_read_reply(&reply)
            .with_context(|| format!("reading {len} bytes at {offset} of chunk {chunk}"))?;
        if reply.payload.len() != len as usize {
            bail!(
                "reading {len} bytes at {offset} of chunk {chunk}: {} bytes came back",
                reply.payload.len()
            );
        }
        Ok(reply.payload)
    }

    /// Writes the data set `object` as `layout` describes, every piece
    /// holding `data`, with `layout.depth` workers.
    ///
    /// # Errors
    /// The first failed write.
    pub async fn write_set(
        self: &Arc<Self>,
        object: ObjectId,
        layout: Layout,
        data: Bytes,
    ) -> Result<Measured> {
        self.per_piece(layout, move |me, b| {
            let data = data.clone();
            async move { me.write_piece(&layout, object, b, &data).await }
        })
        .await
    }

    /// Reads back the data set [`Self::write_set`] wrote, the same way.
    ///
    /// # Errors
    /// The first failed read, or bytes that differ from those written.
    pub async fn read_set(
        self: &Arc<Self>,
        object: ObjectId,
        layout: Layout,
        data: Bytes,
    ) -> Result<Measured> {
        self.per_piece(layout, move |me, b| {
            let data = data.clone();
            async move {
                let got = me
                    .read_range(&layout, object, b, layout.io_size as u32)
                    .await?;
                if layout.locate(b).1 == 0 && got != data {
                    bail!("Cairn returned other bytes at {b} of the data set than were written");
                }
                Ok(())
            }
        })
        .await
    }

    /// Reads one 4 KiB block at each offset of `picks` in the data set
    /// `object`, one at a time; the first `warmup` are not recorded.
    ///
    /// # Errors
    /// The first failed read, or bytes that differ from those written.
    pub async fn random_reads(
        &self,
        object: ObjectId,
        layout: &Layout,
        picks: &[u64],
        warmup: usize,
        data: &[u8],
    ) -> Result<Measured> {
        self.take_retries();
        let mut samples = TailSamples::with_capacity(picks.len().saturating_sub(warmup));
        let mut start = Instant::now();
        for (i, &b) in picks.iter().enumerate() {
            if i == warmup {
                start = Instant::now();
            }
            let t0 = Instant::now();
            let got = self.read_range(layout, object, b, BLOCK as u32).await?;
            let took = t0.elapsed();
            if i >= warmup {
                samples.record(took);
            }
            let at = (b % data.len() as u64) as usize;
            if got[..] != data[at..at + BLOCK as usize] {
                bail!("Cairn returned other bytes at {b} of the data set than were written");
            }
        }
        Ok(Measured {
            ops: samples.len(),
            bytes: samples.len() as u64 * BLOCK,
            elapsed: start.elapsed(),
            samples,
            retries: self.take_retries(),
        })
    }

    /// Waits for the workers and merges what they measured.
    /// Runs `op` on every piece of `layout`, `layout.depth` workers each
    /// taking its pieces in order, timing each call; the first error wins.
    async fn per_piece<F, Fut>(self: &Arc<Self>, layout: Layout, op: F) -> Result<Measured>
    where
        F: Fn(Arc<Self>, u64) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Result<()>> + Send,
    {
        self.take_retries();
        let start = Instant::now();
        let tasks: Vec<_> = (0..layout.depth)
            .map(|w| {
                let (me, op) = (self.clone(), op.clone());
                tokio::spawn(async move {
                    let pieces = layout.worker_pieces(w);
                    let mut samples = TailSamples::with_capacity(pieces.len());
                    for b in pieces {
                        let t0 = Instant::now();
                        op(me.clone(), b).await?;
                        samples.record(t0.elapsed());
                    }
                    anyhow::Ok(samples)
                })
            })
            .collect();
        self.finish(tasks, start, layout.bytes).await
    }

    async fn finish(
        &self,
        tasks: Vec<tokio::task::JoinHandle<Result<TailSamples>>>,
        start: Instant,
        bytes: u64,
    ) -> Result<Measured> {
        let samples = join_samples(tasks).await;
        let elapsed = start.elapsed();
        let samples = samples?;
        Ok(Measured {
            ops: samples.len(),
            bytes,
            elapsed,
            samples,
            retries: self.take_retries(),
        })
    }
}
