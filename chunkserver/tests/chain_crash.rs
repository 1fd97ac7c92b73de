//! kill -9 at many points of a stream of replicated writes: the head, the
//! middle and the tail each abort at each failpoint of the write path
//! (before persisting, before forwarding, before committing, before
//! replying, after replying with the commit still to do) and inside the
//! chunk engine (before the data fdatasync, before the metadata batch
//! references the blocks, before the metadata flush) — 19 scenarios. The writer retries each write with its (client, sequence)
//! until acknowledged, restarting the dead chunkserver; afterwards every
//! acknowledged write is on every replica, byte for byte, and no block
//! reads as anything but its write (no torn block is ever referenced).

mod common;

use std::time::{Duration, Instant};

use cairn_proto::ErrorCode;
use common::{Cluster, chunk, metric, pattern};

/// Writes per scenario; each is one 4 KiB block (plus a straddling write).
const WRITES: u64 = 24;

async fn scenario(c: &mut Cluster, role: usize, point: &str, nth: u32, object: u64) {
    let k = chunk(object, 0);
    let ch = c.chain(3, 0, k).await;
    let victim = c.index_of(&ch.members[role]);
    restart_with_failpoint(c, victim, &format!("{point}:{nth}"));
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
        "chunk.write.after_reply",
    ];
    let mut object = 100;
    for (p, point) in points.iter().enumerate() {
        for role in 0..3 {
            // The tail neither forwards nor commits separately.
            if role == 2 && (p == 1 || p == 2 || p == 7) {
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

/// kill -9 of chunkserver `i`, restarted with failpoint `spec` armed.
fn restart_with_failpoint(c: &mut Cluster, i: usize, spec: &str) {
    c.kill(i);
    c.cs[i].extra_env = vec![("CAIRN_FAILPOINT".into(), spec.into())];
    c.spawn(i);
    c.cs[i].extra_env.clear();
}

/// Writes `d` to block 0 of `k` as (client, seq), retrying until it is
/// acknowledged.
async fn write_until_acknowledged(
    c: &Cluster,
    k: cairn_proto::ids::ChunkId,
    d: &[u8],
    client: u64,
    seq: u64,
    what: &str,
) {
    let ch = c.chain(3, 0, k).await;
    let start = Instant::now();
    loop {
        match c.write(&ch, k, 0, d, client, seq).await {
            Ok(_) => return,
            Err(e) => {
                assert!(e.is_retryable(), "{what}: write failed for good: {e}");
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "{what}: write never acknowledged: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Block 0 of `k` as every replica of its chain reads it.
async fn every_replica(c: &Cluster, k: cairn_proto::ids::ChunkId, what: &str) -> Vec<Vec<u8>> {
    let ch = c.chain(3, 0, k).await;
    let mut out = Vec::new();
    for (i, addr) in ch.members.iter().enumerate() {
        let start = Instant::now();
        let got = loop {
            match c.read(&ch, addr, k, 0, 4096).await {
                Ok(b) => break b,
                Err(e) => {
                    assert!(
                        start.elapsed() < Duration::from_secs(15),
                        "{what}: replica {i} unreadable: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        out.push(got.to_vec());
    }
    out
}

/// A replica forwards a version before storing it (issue 14) and is
/// killed in between, so its successors hold a version it never had. A
/// different write to the same block follows. The head must not give the
/// lost version's number to those other bytes — the successors would take
/// them as already applied — and every replica must end with the new
/// write. Checked for the head and for the middle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_between_forwarding_and_storing_converges() {
    let mut c = Cluster::start(3, &[]).await;
    for (role, object) in [(0usize, 900u64), (1, 901)] {
        let what = if role == 0 { "head" } else { "middle" };
        let k = chunk(object, 0);
        let ch = c.chain(3, 0, k).await;
        let victim = c.index_of(&ch.members[role]);
        let first = pattern(object * 10 + 1, 4096);
        write_until_acknowledged(&c, k, &first, 7, 1, what).await;
        // A non-tail replica's commit record reaches its disk with the
        // next metadata flush (sled's, every 500 ms when idle): let it, so
        // that after the kill the victim holds version 1 committed, not
        // pending — a pending version would send its reads to the tail
        // anyway, and hide what the unclean-start check is for.
        tokio::time::sleep(Duration::from_millis(1500)).await;

        restart_with_failpoint(&mut c, victim, "chunk.write.forwarded_unpersisted:1");
        // Version 2 reaches the successors of the victim, which dies
        // before storing it; the write is never acknowledged.
        let lost = pattern(object * 10 + 2, 4096);
        let start = Instant::now();
        loop {
            let r = c.write(&ch, k, 0, &lost, 7, 2).await;
            assert!(
                r.is_err(),
                "{what}: the write through the failpoint was acknowledged"
            );
            if c.wait_exit(victim, Duration::from_millis(300)) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{what}: the failpoint never fired"
            );
        }
        c.spawn(victim);
        // Before any other write, the restarted victim must not read the
        // version before the one the tail now serves (it never stored it).
        let tail = c
            .read(&ch, &ch.members[2], k, 0, 4096)
            .await
            .expect("tail read");
        assert!(
            tail[..] == lost[..],
            "{what}: the tail serves the forwarded version"
        );
        let start = Instant::now();
        loop {
            match c.read(&ch, &ch.members[role], k, 0, 4096).await {
                Ok(b) => {
                    assert!(
                        b[..] == lost[..],
                        "{what}: the restarted replica read an older version than the tail's"
                    );
                    break;
                }
                Err(e) if e.code() == ErrorCode::Pending => break,
                Err(e) => assert!(
                    start.elapsed() < Duration::from_secs(15),
                    "{what}: restarted replica: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Another client writes other bytes to the same block.
        let next = pattern(object * 10 + 3, 4096);
        write_until_acknowledged(&c, k, &next, 8, 1, what).await;
        for (i, got) in every_replica(&c, k, what).await.iter().enumerate() {
            assert!(
                got[..] == next[..],
                "{what}: replica {i} does not hold the acknowledged write (lost write: {}, first: {})",
                got[..] == lost[..],
                got[..] == first[..]
            );
        }
        if role == 0 {
            let m = c.metrics(victim);
            assert!(
                metric(&m, "cairn_chunkserver_diverged_chunks_total") >= 1.0,
                "the restarted head found the chunk diverged"
            );
        }
    }
}

/// The local store of a forwarded version fails (an I/O error, injected)
/// after the successors stored it: the replica serves no read of the chunk
/// until it has copied it from the tail, which it does in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_local_store_after_forwarding_is_caught_up_from_the_tail() {
    let mut c = Cluster::start(3, &[]).await;
    let k = chunk(950, 0);
    let ch = c.chain(3, 0, k).await;
    let head = c.index_of(&ch.members[0]);
    restart_with_failpoint(&mut c, head, "chunk.write.local_error:2");
    let first = pattern(9501, 4096);
    write_until_acknowledged(&c, k, &first, 7, 1, "first").await;
    let failed = pattern(9502, 4096);
    let e = c
        .write(&ch, k, 0, &failed, 7, 2)
        .await
        .expect_err("a write whose local store failed is not acknowledged");
    assert_eq!(e.code(), ErrorCode::Io, "{e}");
    // The successors hold version 2, the head does not: it sends readers
    // elsewhere instead of answering with version 1, until it has copied
    // the chunk from the tail — on its own, without another write.
    let tail = c.read(&ch, &ch.members[2], k, 0, 4096).await.expect("tail");
    assert!(
        tail[..] == failed[..],
        "the tail holds the forwarded version"
    );
    let start = Instant::now();
    loop {
        match c.read(&ch, &ch.members[0], k, 0, 4096).await {
            Ok(b) => {
                assert!(
                    b[..] == failed[..],
                    "the diverged head read the version before the tail's"
                );
                break;
            }
            Err(e) => assert_eq!(e.code(), ErrorCode::Pending, "{e}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the diverged head never caught up with the tail"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metric(&c.metrics(head), "cairn_chunkserver_diverged_chunks_total") >= 1.0);

    let next = pattern(9503, 4096);
    write_until_acknowledged(&c, k, &next, 8, 1, "next").await;
    for (i, got) in every_replica(&c, k, "after").await.iter().enumerate() {
        assert!(
            got[..] == next[..],
            "replica {i} does not hold the acknowledged write"
        );
    }
}

/// While a replica stores a version its successors already have (writes
/// store and forward at once; the failpoint makes the local store a second
/// late), a reader that saw the new version at the tail never reads the
/// old one at that replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_goes_back_while_a_forwarded_version_is_being_stored() {
    let mut c = Cluster::start(3, &[]).await;
    let k = chunk(970, 0);
    let ch = c.chain(3, 0, k).await;
    let head = c.index_of(&ch.members[0]);
    let first = pattern(9701, 4096);
    write_until_acknowledged(&c, k, &first, 7, 1, "first").await;
    restart_with_failpoint(&mut c, head, "chunk.write.store_late:1");
    // The kill made the start unclean: wait until the head has checked the
    // chunk against the tail and reads it again.
    let start = Instant::now();
    loop {
        if let Ok(b) = c.read(&ch, &ch.members[0], k, 0, 4096).await {
            assert!(b[..] == first[..]);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the head never served reads again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = pattern(9702, 4096);
    let writer = {
        let f = cairn_client::data::write_request(
            ch.id,
            ch.version,
            k,
            0,
            bytes::Bytes::copy_from_slice(&second),
            7,
            2,
            0,
        );
        let pool = cairn_client::data::DataPool::new(Duration::from_secs(10));
        let addr = ch.members[0].clone();
        tokio::spawn(async move { pool.call(&addr, f, Duration::from_secs(10)).await })
    };
    let start = Instant::now();
    loop {
        let t = c.read(&ch, &ch.members[2], k, 0, 4096).await.expect("tail");
        if t[..] == second[..] {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the tail never got the write"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The tail serves the new version; the head is still storing it.
    match c.read(&ch, &ch.members[0], k, 0, 4096).await {
        Ok(b) => assert!(
            b[..] == second[..],
            "the head read the old version after the tail served the new one"
        ),
        Err(e) => assert_eq!(e.code(), ErrorCode::Pending, "{e}"),
    }
    let reply = writer.await.expect("writer task").expect("write call");
    assert!(reply.error_code().is_none(), "the write was acknowledged");
    for (i, got) in every_replica(&c, k, "after").await.iter().enumerate() {
        assert!(got[..] == second[..], "replica {i}");
    }
}
