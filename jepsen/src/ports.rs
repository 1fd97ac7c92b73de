//! Free loopback ports for the processes a test starts.
//!
//! Ports are chosen *below* the kernel's ephemeral range
//! (`net.ipv4.ip_local_port_range`, 32768–60999 by default). A port taken
//! with `bind(:0)` comes from that range, and between the moment we release
//! it and the moment the server binds it, any outgoing connection on the
//! machine (another test's client, a replica dialing a peer) may be given
//! it as its local port; the server then fails to start with "address in
//! use". A full CI run saw exactly that once. Ports below the range are
//! never handed out implicitly, so only another explicit `bind` can race,
//! and the bind check below catches those.
//!
//! The check binds *without* `SO_REUSEADDR` (which `std` always sets):
//! with it, a port still held by a closed connection in TIME_WAIT looks
//! free, yet a chunkserver's glommio listener (which sets only
//! `SO_REUSEPORT`) cannot bind it — a full run saw exactly that.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};

/// The lowest port we hand out.
const LOW: u32 = 20_000;

/// One past the highest port we may use: the start of the ephemeral range.
fn high() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|&lo| lo > LOW + 2_000)
        .unwrap_or(32_768)
}

/// Binds `port` on loopback the strict way: no `SO_REUSEADDR`, so a
/// TIME_WAIT connection on it makes the bind fail.
fn bind_strict(port: u32) -> Option<socket2::Socket> {
    let port = u16::try_from(port).ok()?;
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    s.bind(&addr.into()).ok()?;
    s.listen(1).ok()?;
    Some(s)
}

/// The next candidate start: a per-process cursor seeded by the clock and
/// pid, so concurrent test binaries start far apart and threads of one
/// binary never try the same run.
fn next_candidate(n: u32, span: u32) -> u32 {
    static CURSOR: AtomicU32 = AtomicU32::new(u32::MAX);
    let seed = || {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        nanos ^ std::process::id().wrapping_mul(2_654_435_761)
    };
    let _ = CURSOR.compare_exchange(
        u32::MAX,
        seed() % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    let at = CURSOR.fetch_add(n, Ordering::Relaxed);
    LOW + at % span
}

/// Returns the first of `n` consecutive free loopback ports.
///
/// # Errors
/// No such run found after many tries.
pub fn free_port_run(n: u16) -> Result<u16> {
    let n = u32::from(n.max(1));
    let span = high() - LOW - n;
    for _ in 0..500 {
        let first = next_candidate(n, span);
        let held: Option<Vec<socket2::Socket>> = (first..first + n).map(bind_strict).collect();
        if held.is_some() {
            return Ok(u16::try_from(first)?);
        }
    }
    bail!("no run of {n} free loopback ports below the ephemeral range")
}

/// Returns `n` distinct free loopback ports.
///
/// # Errors
/// Not enough free ports.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    (0..n).map(|_| free_port_run(1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn ports_are_free_distinct_and_below_the_ephemeral_range() {
        let ports = free_ports(50).unwrap();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 50, "ports repeat: {ports:?}");
        for p in ports {
            assert!(u32::from(p) >= LOW && u32::from(p) < high(), "{p}");
            TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
        let run = free_port_run(4).unwrap();
        for p in run..run + 4 {
            TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }
}
