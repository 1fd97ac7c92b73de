//! kill -9 at many points of a stream of replicated writes: the head, the
//! middle and the tail each abort at each failpoint of the write path
//! (before persisting, before forwarding, before committing, before
//! replying) and inside the chunk engine (before the data fdatasync, before
//! the metadata batch references the blocks, before the metadata flush) —
//! 17 scenarios. The writer retries each write with its (client, sequence)
//! until acknowledged, restarting the dead chunkserver; afterwards every
//! acknowledged write is on every replica, byte for byte, and no block
//! reads as anything but its write (no torn block is ever referenced).

mod common;

use std::time::{Duration, Instant};

use cairn_proto::ErrorCode;
use common::{Cluster, chunk, pattern};

/// Writes per scenario; each is one 4 KiB block (plus a straddling write).
const WRITES: u64 = 24;

async fn scenario(c: &mut Cluster, role: usize, point: &str, nth: u32, object: u64) {
    let k = chunk(object, 0);
    let ch = c.chain(3, 0, k).await;
    let victim = c.index_of(&ch.members[role]);
    c.kill(victim);
    c.cs[victim].extra_env = vec![("CAIRN_FAILPOINT".into(), format!("{point}:{nth}"))];
    c.spawn(victim);
    c.cs[victim].extra_env.clear();
    let mut crashed = false;
    for seq in 1..=WRITES {
        let off = (seq - 1) * 4096;
        let d = pattern(object * 1000 + seq, 4096);
        let start = Instant::now();
        loop {
            match c.write(&ch, k, off, &d, 42, seq).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(
                        e.is_retryable() || e.code() == ErrorCode::Unavailable,
                        "{point}@{role}: write {seq} failed for good: {e}"
                    );
                    if !crashed && c.wait_exit(victim, Duration::from_millis(500)) {
                        crashed = true;
                        c.spawn(victim);
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(30),
                        "{point}@{role}: write {seq} never acknowledged: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    assert!(crashed, "{point}@{role}: the failpoint fired");
    // Every acknowledged write, on every replica (a restarted replica may
    // first have to learn the chain again).
    for (i, addr) in ch.members.iter().enumerate() {
        let start = Instant::now();
        let got = loop {
            match c.read(&ch, addr, k, 0, (WRITES * 4096) as u32).await {
                Ok(b) => break b,
                Err(e) => {
                    assert!(
                        start.elapsed() < Duration::from_secs(15),
                        "{point}@{role}: replica {i} unreadable: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        assert_eq!(
            got.len() as u64,
            WRITES * 4096,
            "{point}@{role}: replica {i} length"
        );
        for seq in 1..=WRITES {
            let off = ((seq - 1) * 4096) as usize;
            assert!(
                got[off..off + 4096] == pattern(object * 1000 + seq, 4096)[..],
                "{point}@{role}: replica {i} block {seq}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_every_write_step_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3, &[]).await;
    let points = [
        "chunk.write.before_local",
        "chunk.write.before_forward",
        "chunk.write.before_commit",
        "chunk.write.before_reply",
        "chunk.store.before_data_sync",
        "chunk.store.before_meta_batch",
        "chunk.store.before_meta_flush",
    ];
    let mut object = 100;
    for (p, point) in points.iter().enumerate() {
        for role in 0..3 {
            // The tail neither forwards nor commits separately.
            if role == 2 && (p == 1 || p == 2) {
                continue;
            }
            // Only the head replies to the client.
            if role != 0 && p == 3 {
                continue;
            }
            // Store steps: on every role (head, middle, tail).
            object += 1;
            let nth = 3 + (object as u32 * 7) % 11;
            scenario(&mut c, role, point, nth, object).await;
        }
    }
}
