//! Taking over the FUSE connection of a mount process that died.
//!
//! A FUSE mount lives as long as some process holds an open `/dev/fuse`
//! descriptor of its connection. The CSI node plugin keeps a copy of each
//! mount's (`pidfd_getfd`), so when the mount process dies the kernel
//! keeps the mount: the pods' requests wait instead of failing with
//! "transport endpoint is not connected". A new `cairn mount
//! --fuse-fd-on-stdin` then serves the same connection. Requests the dead
//! process had read and not answered: those read through the descriptor
//! the plugin copied are sent again (FUSE_NOTIFY_RESEND, Linux 6.9+);
//! those read through its other descriptors (fuser's per-thread clones)
//! ended with ECONNABORTED when they closed.
//!
//! fuser only serves a connection it negotiated itself (it reads INIT
//! first), and the kernel sends INIT once per connection. So the new
//! process hands fuser one end of a `SOCK_SEQPACKET` socket pair (which
//! keeps message boundaries, as `/dev/fuse` does) whose first message is
//! an INIT made here, drops fuser's answer to it, and relays every other
//! message between the socket and the kernel's descriptor, one thread
//! each way: a copy and a thread hand-off per request, paid only by a
//! mount that was taken over (until its volume is next staged afresh).
//! When the kernel ends the connection (unmounted), fuser gets a DESTROY
//! made here and stops.
//!
//! The kernel goes on using the dead process's file handles; the file
//! system adopts a reader's and fails a writer's with EIO
//! ([`crate::fs`]): what a writer had not yet published died with that
//! process, and its next write, flush or fsync says so.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair, sockopt};
use tracing::{info, warn};

/// FUSE_INIT.
const OP_INIT: u32 = 26;
/// FUSE_DESTROY.
const OP_DESTROY: u32 = 38;
/// The `unique` of the requests made here; the kernel's count up in steps
/// of two from 2 and never come near it.
const OURS: u64 = u64::MAX - 1;
/// Largest message either way (a write request or a read reply with its
/// header is at most a few MiB).
const MAX_MESSAGE: usize = 32 << 20;
/// Size of `fuse_in_header`.
const IN_HEADER: usize = 40;

/// A request header: len, opcode, unique, nodeid, uid, gid, pid,
/// total_extlen, padding.
fn in_header(len: usize, opcode: u32, unique: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    b.extend_from_slice(&opcode.to_le_bytes());
    b.extend_from_slice(&unique.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // nodeid
    b.extend_from_slice(&[0u8; 12]); // uid, gid, pid
    b.extend_from_slice(&[0u8; 4]); // total_extlen, padding
    b
}

/// The INIT fuser reads first: protocol 7.45 (fuser answers with the
/// lower of that and its own, as it did with the kernel) offering every
/// capability, so fuser enables what it enabled before; the kernel never
/// sees the answer.
pub(crate) fn init_request() -> Vec<u8> {
    let len = IN_HEADER + 64;
    let mut b = in_header(len, OP_INIT, OURS);
    for v in [7u32, 45, 128 << 10, u32::MAX, u32::MAX] {
        b.extend_from_slice(&v.to_le_bytes()); // major, minor, max_readahead, flags, flags2
    }
    b.resize(len, 0); // unused[11]
    b
}

/// The DESTROY that stops fuser once the kernel's connection ended.
pub(crate) fn destroy_request() -> Vec<u8> {
    in_header(IN_HEADER, OP_DESTROY, OURS)
}

/// FUSE_NOTIFY_RESEND (Linux 6.9+).
const NOTIFY_RESEND: i32 = 7;

/// Asks the kernel to send again the requests the dead process had read
/// and not answered through the descriptor still open (the one copied
/// from it): without this they would wait forever. Those read through
/// the dead process's other descriptors ended (ECONNABORTED) when they
/// closed. Older kernels refuse the notice; then those requests stay.
fn resend(kernel: &OwnedFd) {
    let mut m = Vec::with_capacity(16);
    m.extend_from_slice(&16u32.to_le_bytes());
    m.extend_from_slice(&NOTIFY_RESEND.to_le_bytes());
    m.extend_from_slice(&0u64.to_le_bytes());
    if let Err(e) = rustix::io::write(kernel, &m) {
        warn!(
            error = %e,
            "the kernel cannot resend the requests the dead process had taken (Linux 6.9+)"
        );
    }
}

/// The `unique` of a reply (`fuse_out_header`: len, error, unique).
fn reply_unique(m: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(m.get(8..16)?.try_into().ok()?))
}

/// Starts relaying between `kernel` (an open `/dev/fuse` of the connection
/// to take over) and the descriptor it returns, which fuser serves as if
/// it were the kernel's with `readers` threads (each gets a DESTROY when
/// the connection ends).
///
/// # Errors
/// The socket pair cannot be made or sized (sizing it past the system's
/// socket buffer limit needs CAP_NET_ADMIN, which the privileged node
/// plugin's processes have).
pub fn relay(kernel: OwnedFd, readers: usize) -> io::Result<OwnedFd> {
    let (ours, fusers) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    for fd in [&ours, &fusers] {
        sockopt::set_socket_send_buffer_size_force(fd, MAX_MESSAGE)
            .and_then(|()| sockopt::set_socket_recv_buffer_size_force(fd, MAX_MESSAGE))
            .map_err(|e| {
                io::Error::other(format!(
                    "sizing the takeover socket ({e}): taking over a FUSE connection needs \
                     CAP_NET_ADMIN (SO_SNDBUFFORCE), as the privileged CSI node plugin has"
                ))
            })?;
    }
    rustix::io::write(&ours, &init_request())?;
    let kernel = Arc::new(kernel);
    let ours = Arc::new(ours);
    let (k, o) = (kernel.clone(), ours.clone());
    std::thread::Builder::new()
        .name("fuse-takeover-in".into())
        .spawn(move || {
            let mut buf = vec![0u8; MAX_MESSAGE];
            loop {
                match rustix::io::read(&*k, &mut buf) {
                    Ok(0) => {}
                    Ok(n) => {
                        if let Err(e) = rustix::io::write(&*o, &buf[..n]) {
                            warn!(error = %e, "relaying a request to the file system");
                            return;
                        }
                    }
                    Err(Errno::INTR | Errno::AGAIN | Errno::NOENT) => {}
                    Err(e) => {
                        if e != Errno::NODEV {
                            warn!(error = %e, "reading the taken-over FUSE connection");
                        }
                        info!("the taken-over FUSE connection ended");
                        for _ in 0..readers.max(1) {
                            let _ = rustix::io::write(&*o, &destroy_request());
                        }
                        return;
                    }
                }
            }
        })?;
    std::thread::Builder::new()
        .name("fuse-takeover-out".into())
        .spawn(move || {
            let mut buf = vec![0u8; MAX_MESSAGE];
            let mut initialized = false;
            loop {
                match rustix::io::read(&*ours, &mut buf) {
                    Ok(0) => return,
                    // Answers to the requests made here stay here.
                    Ok(n) if reply_unique(&buf[..n]) == Some(OURS) => {
                        if !initialized {
                            initialized = true;
                            resend(&kernel);
                        }
                    }
                    Ok(n) => match rustix::io::write(&*kernel, &buf[..n]) {
                        // ENOENT: the request was interrupted meanwhile.
                        Ok(_) | Err(Errno::NOENT) => {}
                        Err(Errno::NODEV) => return,
                        Err(e) => warn!(error = %e, "relaying a reply to the kernel"),
                    },
                    Err(Errno::INTR) => {}
                    Err(_) => return,
                }
            }
        })?;
    Ok(fusers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_made_requests_have_the_kernels_layout() {
        let init = init_request();
        assert_eq!(init.len(), 104, "fuse_in_header + fuse_init_in (7.36+)");
        assert_eq!(u32::from_le_bytes(init[0..4].try_into().unwrap()), 104);
        assert_eq!(u32::from_le_bytes(init[4..8].try_into().unwrap()), OP_INIT);
        assert_eq!(u64::from_le_bytes(init[8..16].try_into().unwrap()), OURS);
        assert_eq!(u32::from_le_bytes(init[40..44].try_into().unwrap()), 7);
        let d = destroy_request();
        assert_eq!(
            (d.len(), u32::from_le_bytes(d[4..8].try_into().unwrap())),
            (40, OP_DESTROY)
        );
        // A reply header: len, error, unique.
        let mut reply = vec![16u8, 0, 0, 0, 0, 0, 0, 0];
        reply.extend_from_slice(&OURS.to_le_bytes());
        assert_eq!(reply_unique(&reply), Some(OURS));
        assert_eq!(reply_unique(&reply[..12]), None);
    }
}
