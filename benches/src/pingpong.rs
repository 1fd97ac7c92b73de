//! The network baseline of the random-read phase: a bare loopback TCP
//! ping-pong with the byte counts of a Cairn 4 KiB read, and nothing else.
//!
//! The client sends a 128-byte request (a data-plane frame header) and
//! waits for a 4,228-byte answer (header, one 4 KiB block, its CRC); the
//! server answers each request with the same prepared bytes. Both sockets
//! have `TCP_NODELAY`, as every data-plane socket does. The client is a
//! tokio task on the benchmark's runtime, like Cairn's data client, so the
//! difference to Cairn is the chunkserver and the protocol rather than
//! the client's runtime; the server is a plain thread blocked in `read`,
//! the cheapest server there is.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpListener;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use cairn_proto::frame::HEADER_LEN;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::latency::Samples;
use crate::layout::BLOCK;
use crate::measure::Measured;

/// What the baseline is, in one line, for tables.
pub const DESCRIPTION: &str =
    "loopback TCP round trip, 128 B out, 4 KiB + header + CRC back, TCP_NODELAY";

/// Bytes of a request: one frame header.
pub const REQUEST_BYTES: usize = HEADER_LEN;

/// Bytes of an answer: a header, one 4 KiB block and its CRC32.
pub const REPLY_BYTES: usize = HEADER_LEN + BLOCK as usize + 4;

/// Runs `warmup + n` round trips, one at a time, and records the last `n`.
///
/// # Errors
/// When the loopback connection fails.
pub async fn run(n: usize, warmup: usize) -> Result<Measured> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding the echo server")?;
    let addr = listener.local_addr()?;
    let server = std::thread::Builder::new()
        .name("bench-echo".into())
        .spawn(move || -> std::io::Result<()> {
            let (mut s, _) = listener.accept()?;
            s.set_nodelay(true)?;
            let mut req = [0u8; REQUEST_BYTES];
            let reply = vec![0x5a_u8; REPLY_BYTES];
            loop {
                match s.read_exact(&mut req) {
                    Ok(()) => s.write_all(&reply)?,
                    Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        })
        .context("starting the echo server thread")?;
    let result = async {
        let mut c = tokio::net::TcpStream::connect(addr)
            .await
            .context("connecting to the echo server")?;
        c.set_nodelay(true)?;
        let req = [0xa5_u8; REQUEST_BYTES];
        let mut reply = vec![0u8; REPLY_BYTES];
        let mut samples = Samples::with_capacity(n);
        let mut start = Instant::now();
        for i in 0..warmup + n {
            if i == warmup {
                start = Instant::now();
            }
            let t0 = Instant::now();
            c.write_all(&req).await.context("ping")?;
            c.read_exact(&mut reply).await.context("pong")?;
            if i >= warmup {
                samples.record(t0.elapsed());
            }
        }
        let elapsed = start.elapsed();
        anyhow::Ok(Measured {
            ops: samples.len(),
            bytes: (samples.len() * REPLY_BYTES) as u64,
            elapsed,
            samples,
            retries: 0,
        })
    }
    .await;
    // The client's socket is closed by now (dropped with the block above),
    // so the server sees end of stream and returns. If the client never
    // connected, one throwaway connection gets the server out of accept.
    if result.is_err() {
        let _ = std::net::TcpStream::connect(addr);
    }
    let joined = tokio::task::spawn_blocking(move || server.join())
        .await
        .context("joining the echo server")?
        .map_err(|_| anyhow!("the echo server thread panicked"))?;
    let measured = result?;
    joined.context("the echo server failed")?;
    Ok(measured)
}
