//! The Cairn side of the `client` workload: what a program does through
//! the client library ([`cairn_client::Client`], [`cairn_client::File`],
//! [`Checkpoints`]), timed per call.
//!
//! Each operation that runs concurrently is a tokio task on the
//! benchmark's runtime (two worker threads on a two-core machine), as a
//! data loader's would be. Every byte read back is checked against the
//! pattern it was written with — the whole first read of a stream, the
//! first 4 KiB of every other read, every random block, every small file
//! — since a file that reads as zeros (a hole, a lost write) is fast and
//! wrong; the library has already checked every block's CRC by then.
//! Checks happen after the operation's clock stops.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;

use cairn_client::crypto::KeyRing;
use cairn_client::{Checkpoints, Client, ClientOptions, File};
use tokio::io::{AsyncRead, ReadBuf};

use crate::latency::Samples;
use crate::layout::BLOCK;
use crate::measure::{Measured, join_samples};
use crate::meta::file_name;
use crate::servers::Servers;

/// The key of the encrypted benchmark volume (`--encrypted`), given to
/// every client connected after [`use_key`].
static KEY: std::sync::OnceLock<Arc<KeyRing>> = std::sync::OnceLock::new();

/// Gives every client connected from now on `ring` (the benchmark
/// volume's key).
pub fn use_key(ring: Arc<KeyRing>) {
    let _ = KEY.set(ring);
}

/// Returns a new client of the servers' meta cluster with a memory block
/// cache of `memory_cache` bytes (0: none, which also turns read-ahead
/// off), no cache directory, and the volume key of [`use_key`].
///
/// # Errors
/// When meta cannot be reached.
pub async fn connect(servers: &Servers, memory_cache: u64) -> Result<Client> {
    connect_with(servers, memory_cache, |_| {}).await
}

/// [`connect`] with the options changed by `adjust`.
///
/// # Errors
/// When meta cannot be reached.
pub async fn connect_with(
    servers: &Servers,
    memory_cache: u64,
    adjust: impl FnOnce(&mut ClientOptions),
) -> Result<Client> {
    let mut opts = ClientOptions::default();
    adjust(&mut opts);
    opts.cache.memory_bytes = memory_cache;
    opts.cache.dir = None;
    opts.keys = KEY.get().cloned().into_iter().collect();
    Client::connect(servers.meta_addrs(), opts)
        .await
        .context("connecting a Cairn client")
}

/// Runs `work(i)` for `i` in `0..n` as tokio tasks and returns their
/// merged samples and the wall time until the last one ended.
pub(crate) async fn in_tasks<F, Fut>(n: usize, work: F) -> Result<(Samples, Duration)>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<Samples>> + Send + 'static,
{
    let start = Instant::now();
    let tasks = (0..n).map(|i| tokio::spawn(work(i))).collect();
    let samples = join_samples(tasks).await;
    let elapsed = start.elapsed();
    Ok((samples?, elapsed))
}

/// Runs `work(client, path, data)` for each of `paths` in its own task;
/// `size` bytes per file go into the figures.
async fn per_file<F, Fut>(
    client: &Client,
    paths: &[String],
    size: u64,
    data: Bytes,
    work: F,
) -> Result<Measured>
where
    F: Fn(Client, String, Bytes) -> Fut,
    Fut: Future<Output = Result<Samples>> + Send + 'static,
{
    let (samples, elapsed) = in_tasks(paths.len(), |i| {
        work(client.clone(), paths[i].clone(), data.clone())
    })
    .await?;
    Ok(Measured::new(samples, size * paths.len() as u64, elapsed))
}

/// Fails unless `got` is `data[at..]` (as long as `got`).
fn check(got: &[u8], data: &[u8], at: usize, what: impl FnOnce() -> String) -> Result<()> {
    if data.get(at..at + got.len()) != Some(got) {
        bail!("{} holds other bytes than were written", what());
    }
    Ok(())
}

/// Creates each file of `paths` and writes it front to back with
/// `write_at` calls of `data` (its size a multiple of `data`'s length),
/// one task per file, then fsyncs and closes it; the time includes the
/// create, the fsync and the close.
///
/// # Errors
/// The first failed call.
pub async fn write_files(
    client: &Client,
    paths: &[String],
    size: u64,
    data: Bytes,
) -> Result<Measured> {
    per_file(
        client,
        paths,
        size,
        data,
        move |client, path, data| async move {
            let path = &path;
            let f = client
                .create(path)
                .await
                .with_context(|| format!("creating {path}"))?;
            let step = data.len() as u64;
            let mut samples = Samples::with_capacity((size / step) as usize);
            for at in (0..size).step_by(step as usize) {
                let t0 = Instant::now();
                f.write_at(at, data.clone())
                    .await
                    .with_context(|| format!("writing {step} bytes at {at} of {path}"))?;
                samples.record(t0.elapsed());
            }
            f.fsync()
                .await
                .with_context(|| format!("fsync of {path}"))?;
            f.close().await.with_context(|| format!("closing {path}"))?;
            Ok(samples)
        },
    )
    .await
}

/// Reads each file of `paths` (`size` bytes, written by [`write_files`]
/// with `data`) front to back in `read_at` calls of `data.len()` bytes,
/// one task per file; the time includes the open and the close.
///
/// # Errors
/// The first failed call, a short file, or other bytes than written.
pub async fn read_files(
    client: &Client,
    paths: &[String],
    size: u64,
    data: Bytes,
) -> Result<Measured> {
    per_file(
        client,
        paths,
        size,
        data,
        move |client, path, data| async move {
            let path = &path;
            let f = client
                .open_read(path)
                .await
                .with_context(|| format!("opening {path}"))?;
            if f.len() != size {
                bail!("{path} is {} bytes long, not {size}", f.len());
            }
            let step = data.len();
            let mut samples = Samples::with_capacity((size / step as u64) as usize);
            for at in (0..size).step_by(step) {
                let t0 = Instant::now();
                let got = f
                    .read_at(at, step)
                    .await
                    .with_context(|| format!("reading {step} bytes at {at} of {path}"))?;
                samples.record(t0.elapsed());
                if got.len() != step {
                    bail!(
                        "a read of {step} bytes at {at} of {path} returned {}",
                        got.len()
                    );
                }
                let checked = if at == 0 { step } else { BLOCK as usize };
                check(&got[..checked], &data, 0, || format!("{path} at {at}"))?;
            }
            f.close().await.with_context(|| format!("closing {path}"))?;
            Ok(samples)
        },
    )
    .await
}

/// Reads the 4 KiB block at `off` of `f` and checks it against `data`
/// (the pattern the file repeats); returns how long the read took.
async fn read_block(f: &File, off: u64, data: &[u8]) -> Result<Duration> {
    let t0 = Instant::now();
    let got = f
        .read_at(off, BLOCK as usize)
        .await
        .with_context(|| format!("reading 4 KiB at {off}"))?;
    let took = t0.elapsed();
    if got.len() != BLOCK as usize {
        bail!("a read of 4 KiB at {off} returned {} bytes", got.len());
    }
    check(&got, data, (off % data.len() as u64) as usize, || {
        format!("the block at {off}")
    })?;
    Ok(took)
}

/// Reads one 4 KiB block at each offset of `picks` in the file at `path`
/// (written with `data` repeated): the first `warmup` one at a time,
/// unrecorded, then the rest by `tasks` tasks sharing one open file, each
/// taking every `tasks`-th of them one at a time (queue depth 1 per task).
/// With `allocs`, what the recorded reads allocated per read goes there.
///
/// # Errors
/// The first failed read, or other bytes than written.
pub async fn random_reads(
    client: &Client,
    path: &str,
    picks: &[u64],
    warmup: usize,
    tasks: usize,
    data: Bytes,
    allocs: Option<crate::allocs::Sink<'_>>,
) -> Result<Measured> {
    let f = Arc::new(
        client
            .open_read(path)
            .await
            .with_context(|| format!("opening {path}"))?,
    );
    let (warm, recorded) = picks.split_at(warmup.min(picks.len()));
    for &off in warm {
        read_block(&f, off, &data).await?;
    }
    let recorded: Arc<[u64]> = recorded.into();
    let tasks = tasks.max(1);
    let (result, per_op) = crate::allocs::per_op(
        recorded.len(),
        allocs.map_or((0.0, 0.0), |(idle, _)| idle),
        in_tasks(tasks, |t| {
            let (f, recorded, data) = (f.clone(), recorded.clone(), data.clone());
            async move {
                let mut samples = Samples::with_capacity(recorded.len() / tasks + 1);
                for &off in recorded.iter().skip(t).step_by(tasks) {
                    samples.record(read_block(&f, off, &data).await?);
                }
                Ok(samples)
            }
        }),
    )
    .await;
    let (samples, elapsed) = result.with_context(|| format!("random reads of {path}"))?;
    if let Some((_, cell)) = allocs {
        *cell
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(per_op);
    }
    if let Ok(f) = Arc::try_unwrap(f) {
        f.close().await.with_context(|| format!("closing {path}"))?;
    }
    let bytes = samples.len() as u64 * BLOCK;
    Ok(Measured::new(samples, bytes, elapsed))
}

/// An [`AsyncRead`] yielding `size` bytes of `data` repeated: a
/// checkpoint's contents without holding all of it in memory.
struct PatternReader {
    data: Bytes,
    pos: u64,
    size: u64,
}

impl AsyncRead for PatternReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let at = (self.pos % self.data.len() as u64) as usize;
        let n = (self.size - self.pos)
            .min((self.data.len() - at) as u64)
            .min(buf.remaining() as u64) as usize;
        buf.put_slice(&self.data[at..at + n]);
        self.pos += n as u64;
        Poll::Ready(Ok(()))
    }
}

/// Saves a checkpoint `name` of `size` bytes (`data` repeated) in `dir`
/// with [`Checkpoints::save_reader`], which writes it in 8 MiB `write_at`
/// calls under a temporary name, fsyncs and closes it, records its size
/// and CRC in an xattr and renames it into place. One sample per write
/// (from the progress callback: the first includes creating the
/// directory and the file, each includes reading its 8 MiB from the
/// reader and the CRC over them); the time is the whole call.
///
/// # Errors
/// A failed save, or a checkpoint of another size.
pub async fn save_checkpoint(
    client: &Client,
    dir: &str,
    name: &str,
    size: u64,
    data: Bytes,
) -> Result<Measured> {
    let checkpoints = Checkpoints::new(client.clone(), dir);
    let mut reader = PatternReader { data, pos: 0, size };
    let samples = RefCell::new(Samples::default());
    let last = Cell::new(Instant::now());
    let start = Instant::now();
    last.set(start);
    let info = checkpoints
        .save_reader(name, &mut reader, BTreeMap::new(), |_| {
            let now = Instant::now();
            samples.borrow_mut().record(now - last.get());
            last.set(now);
        })
        .await
        .with_context(|| format!("saving checkpoint {name} in {dir}"))?;
    let elapsed = start.elapsed();
    if info.size != size {
        bail!(
            "checkpoint {name} was saved with {} bytes, not {size}",
            info.size
        );
    }
    Ok(Measured::new(samples.into_inner(), size, elapsed))
}

/// Writes `n` files `f0000000`, … of `data` into directory `dir` (created
/// first) with [`Client::write_file`] (create, one `write_at`, close), by
/// `tasks` tasks, task `t` writing files `t, t + tasks, …`.
///
/// # Errors
/// The first failed call.
pub async fn write_small(
    client: &Client,
    dir: &str,
    n: usize,
    tasks: usize,
    data: Bytes,
) -> Result<Measured> {
    client
        .create_dir_all(dir)
        .await
        .with_context(|| format!("creating {dir}"))?;
    let dir: Arc<str> = dir.into();
    let (samples, elapsed) = in_tasks(tasks, |t| {
        let (client, dir, data) = (client.clone(), dir.clone(), data.clone());
        async move {
            let mut samples = Samples::with_capacity(n / tasks + 1);
            for i in (t..n).step_by(tasks) {
                let path = format!("{dir}/{}", file_name(i));
                let t0 = Instant::now();
                client
                    .write_file(&path, data.clone())
                    .await
                    .with_context(|| format!("writing {path}"))?;
                samples.record(t0.elapsed());
            }
            Ok(samples)
        }
    })
    .await?;
    Ok(Measured::new(samples, (n * data.len()) as u64, elapsed))
}

/// Reads the files [`write_small`] wrote in `dir`, in the order of
/// `order` (file numbers), with [`Client::read_file`] (open, one
/// `read_at`, close), by `tasks` tasks, task `t` reading every
/// `tasks`-th file of `order` from the `t`-th on.
///
/// # Errors
/// The first failed call, or other bytes than written.
pub async fn read_small(
    client: &Client,
    dir: &str,
    order: &[usize],
    tasks: usize,
    data: Bytes,
) -> Result<Measured> {
    let dir: Arc<str> = dir.into();
    let order: Arc<[usize]> = order.into();
    let (samples, elapsed) = in_tasks(tasks, |t| {
        let (client, dir, order, data) = (client.clone(), dir.clone(), order.clone(), data.clone());
        async move {
            let mut samples = Samples::with_capacity(order.len() / tasks + 1);
            for &i in order.iter().skip(t).step_by(tasks) {
                let path = format!("{dir}/{}", file_name(i));
                let t0 = Instant::now();
                let got = client
                    .read_file(&path)
                    .await
                    .with_context(|| format!("reading {path}"))?;
                samples.record(t0.elapsed());
                if got.len() != data.len() {
                    bail!("{path} is {} bytes long, not {}", got.len(), data.len());
                }
                check(&got, &data, 0, || path.clone())?;
            }
            Ok(samples)
        }
    })
    .await?;
    Ok(Measured::new(
        samples,
        (order.len() * data.len()) as u64,
        elapsed,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn the_pattern_reader_repeats_its_data_for_size_bytes() {
        let data = Bytes::from_static(b"abcdefgh");
        let mut r = PatternReader {
            data,
            pos: 0,
            size: 20,
        };
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"abcdefghabcdefghabcd");
    }
}
