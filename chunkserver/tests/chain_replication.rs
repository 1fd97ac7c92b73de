//! Chain replication through real `cairn-chunkserver` processes and a real
//! meta: writes reach every replica, stale chain versions are refused
//! everywhere, a corrupt replica is detected on read and by the scrubber
//! while the other replicas serve correct bytes, bad frames cost only their
//! own connection, a removal list removes its chunks from every replica
//! (and a bad list nothing), and a chunkserver cut off from meta stops
//! serving.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_client::data::{self, DataError};
use cairn_proto::ErrorCode;
use cairn_proto::chain::shard_of;
use cairn_proto::frame::{Frame, FrameDecoder, HEADER_LEN, Header, Opcode};
use cairn_proto::ids::ChainVersion;
use common::{Cluster, chunk, find_in_file, metric, pattern};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn code(r: Result<Frame, DataError>) -> ErrorCode {
    match r {
        Ok(f) => panic!("expected an error, got {:?}", f.header),
        Err(e) => e.code(),
    }
}

fn put(model: &mut Vec<u8>, off: u64, d: &[u8]) {
    let end = off as usize + d.len();
    if model.len() < end {
        model.resize(end, 0);
    }
    model[off as usize..end].copy_from_slice(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_every_replica_identically() {
    let c = Cluster::start(3, &[]).await;
    let k = chunk(1, 0);
    let ch = c.chain(3, 0, k).await;
    assert_eq!(ch.members.len(), 3, "a 3-replica chain");
    let mut model = Vec::new();
    let writes: [(u64, usize); 6] = [
        (0, 4096),
        (4096, 32 << 10),
        (100, 10),
        (50_000, 70_000),
        (1 << 20, 4096),
        (3, 1 << 20),
    ];
    for (i, (off, len)) in writes.iter().enumerate() {
        let d = pattern(i as u64, *len);
        let r = c
            .write(&ch, k, *off, &d, 7, i as u64 + 1)
            .await
            .unwrap_or_else(|e| panic!("write {i}: {e}"));
        assert_eq!(
            r.header.version,
            i as u64 + 1,
            "head assigns versions in order"
        );
        put(&mut model, *off, &d);
    }
    for addr in &ch.members {
        let got = c
            .read(&ch, addr, k, 0, model.len() as u32 + 8192)
            .await
            .unwrap_or_else(|e| panic!("read from {addr}: {e}"));
        assert!(got == model[..], "replica {addr} differs");
        let got = c.read(&ch, addr, k, 50_001, 4096).await.unwrap();
        assert_eq!(
            got,
            model[50_001..50_001 + 4096],
            "4 KiB unaligned read at {addr}"
        );
    }

    // A retry of an applied write (same client, same sequence) is answered
    // with its version and not applied again.
    let d = pattern(0, 4096);
    let r = c.write(&ch, k, 0, &d, 7, 1).await.unwrap();
    assert_eq!(r.header.version, 1, "retry answered with the first version");
    let s = data::into_result(
        c.call(&ch.members[2], data::stat_request(ch.id, ch.version, k))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        s.header.version,
        writes.len() as u64,
        "retry not re-applied"
    );
    assert_eq!(s.header.offset, model.len() as u64, "tail's chunk length");

    // 16 concurrent writers into one chunk and into 4 others.
    let futs = (0..16u64).map(|w| {
        let c = &c;
        let ch = &ch;
        async move {
            let d = pattern(100 + w, 8192);
            let k2 = if w % 2 == 0 {
                chunk(2, 0)
            } else {
                chunk(3 + w % 4, 0)
            };
            c.write(ch, k2, w * 8192, &d, 9, w + 1)
                .await
                .map(|_| (k2, w, d))
        }
    });
    let done = futures::future::join_all(futs).await;
    for r in done {
        let (k2, w, d) = r.expect("concurrent write");
        for addr in &ch.members {
            let got = c.read(&ch, addr, k2, w * 8192, 8192).await.unwrap();
            assert!(got == d[..], "concurrent write {w} on {addr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_list_removes_its_chunks_on_every_replica_and_a_bad_one_nothing() {
    let c = Cluster::start(3, &["--shards", "2"]).await;
    // Chunks of one chain whose head shard is the same (a list goes to one
    // shard); the others of the same chain for the wrong-shard check.
    let first = c.chain(3, 0, chunk(100, 0)).await;
    let mut same = Vec::new();
    let mut other = Vec::new();
    for o in 100..140u64 {
        let k = chunk(o, o % 3);
        let ch = c.chain(3, 0, k).await;
        if ch.members[0] == first.members[0] {
            same.push((k, ch));
        } else {
            other.push((k, ch));
        }
    }
    assert!(
        same.len() >= 4 && !other.is_empty(),
        "chunks spread over shards"
    );
    for (i, (k, ch)) in same.iter().chain(other.iter()).enumerate() {
        c.write(ch, *k, 0, &pattern(i as u64, 8192), 3, i as u64 + 1)
            .await
            .unwrap_or_else(|e| panic!("write {k}: {e}"));
    }
    let c = &c;
    let stat = |ch: &common::Chain, addr: &str, k| {
        let f = data::stat_request(ch.id, ch.version, k);
        let addr = addr.to_string();
        async move { data::into_result(c.call(&addr, f).await.unwrap()) }
    };
    let head = first.members[0].clone();

    // A list with a chunk of another shard, a stale chain version, a torn
    // body: refused, and nothing is removed.
    let mut mixed: Vec<_> = same.iter().map(|(k, _)| *k).collect();
    mixed.push(other[0].0);
    let r = c
        .call(
            &head,
            data::remove_many_request(first.id, first.version, &mixed),
        )
        .await
        .unwrap();
    assert_eq!(code(data::into_result(r)), ErrorCode::Invalid);
    let listed: Vec<_> = same.iter().map(|(k, _)| *k).collect();
    let stale = ChainVersion(first.version.0 - 1);
    let r = c
        .call(&head, data::remove_many_request(first.id, stale, &listed))
        .await
        .unwrap();
    assert_eq!(code(data::into_result(r)), ErrorCode::StaleChainVersion);
    let torn = Frame::with_payload(
        Header {
            chunk: listed[0],
            chain: first.id,
            chain_version: first.version,
            ..Header::request(Opcode::RemoveMany, 1)
        },
        Bytes::from_static(&[1, 2, 3]),
    )
    .unwrap();
    assert_eq!(
        code(data::into_result(c.call(&head, torn).await.unwrap())),
        ErrorCode::BadRequest
    );
    for (k, ch) in same.iter().chain(other.iter()) {
        for addr in &ch.members {
            stat(ch, addr, *k)
                .await
                .unwrap_or_else(|e| panic!("{k} at {addr} after refused lists: {e}"));
        }
    }

    // The list of one shard's chunks (and one never written): gone from
    // every replica; the other chunks stay, whole.
    let mut list = listed.clone();
    let never_written = (200..300u64)
        .map(|o| chunk(o, 0))
        .find(|&k| shard_of(k, 2) == shard_of(listed[0], 2))
        .expect("a chunk of the same shard");
    list.push(never_written);
    let r = c
        .call(
            &head,
            data::remove_many_request(first.id, first.version, &list),
        )
        .await
        .unwrap();
    data::into_result(r).expect("removal list");
    for (k, ch) in &same {
        for addr in &ch.members {
            let e = code(stat(ch, addr, *k).await);
            assert_eq!(e, ErrorCode::NotFound, "{k} still at {addr}");
        }
    }
    for (i, (k, ch)) in other.iter().enumerate() {
        let i = same.len() + i;
        for addr in &ch.members {
            let got = c.read(ch, addr, *k, 0, 8192).await.unwrap();
            assert!(got == pattern(i as u64, 8192)[..], "{k} at {addr} changed");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_newer_chain_versions_are_refused_on_every_replica() {
    let c = Cluster::start(3, &[]).await;
    let k = chunk(10, 0);
    let ch = c.chain(3, 1, k).await;
    assert!(ch.version.0 >= 1, "chain versions start at 1");
    let d = pattern(1, 4096);
    c.write(&ch, k, 0, &d, 1, 1).await.expect("current version");

    for (v, want) in [
        (ch.version.0 - 1, ErrorCode::StaleChainVersion),
        (ch.version.0 + 1, ErrorCode::NewerChainVersion),
    ] {
        let old = common::Chain {
            id: ch.id,
            version: ChainVersion(v),
            members: ch.members.clone(),
            chunkservers: ch.chunkservers.clone(),
        };
        let e = code(c.write(&old, k, 0, &pattern(2, 4096), 1, 2).await);
        assert_eq!(e, want, "head, chain version {v}");
        for (i, addr) in ch.members.iter().enumerate().skip(1) {
            let f = Frame::with_payload(
                Header {
                    chunk: k,
                    chain: ch.id,
                    chain_version: ChainVersion(v),
                    version: 2,
                    ..Header::request(Opcode::Forward, 1)
                },
                Bytes::from(pattern(2, 4096)),
            )
            .unwrap();
            let e = code(data::into_result(c.call(addr, f).await.unwrap()));
            assert_eq!(e, want, "replica {i}, chain version {v}");
        }
        for addr in &ch.members {
            let e = code(data::into_result(
                c.call(addr, data::read_request(ch.id, ChainVersion(v), k, 0, 4096))
                    .await
                    .unwrap(),
            ));
            assert_eq!(e, want, "read at {addr}, chain version {v}");
        }
    }
    for addr in &ch.members {
        let got = c.read(&ch, addr, k, 0, 4096).await.unwrap();
        assert!(got == d[..], "no fenced write reached {addr}");
    }
}

/// Flips one byte of the stored copy of `needle` in `file`.
fn flip_byte_of(file: &std::path::Path, needle: &[u8]) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let at = find_in_file(file, needle).expect("block on disk");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    f.seek(SeekFrom::Start(at + 10)).unwrap();
    let mut b = [0u8; 1];
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at + 10)).unwrap();
    f.write_all(&[b[0] ^ 0x40]).unwrap();
    f.sync_all().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_is_caught_on_read_and_by_the_scrubber_and_repaired() {
    let c = Cluster::start(3, &["--scrub-interval", "200ms"]).await;
    let k = chunk(20, 0);
    let ch = c.chain(3, 0, k).await;
    let d = pattern(77, 16384);
    c.write(&ch, k, 0, &d, 1, 1).await.expect("write");
    let victim = c.index_of(&ch.members[1]);
    let file = c.data_file(victim);
    // The third block's first bytes, somewhere in the victim's data file.
    flip_byte_of(&file, &d[8192..8192 + 64]);
    let e = c
        .read(&ch, &ch.members[1], k, 8192, 4096)
        .await
        .expect_err("corrupt block served");
    assert_eq!(e.code(), ErrorCode::Checksum, "{e}");
    // What a client does on a checksum error: read another replica.
    for i in [0, 2] {
        let got = c.read(&ch, &ch.members[i], k, 0, 16384).await.unwrap();
        assert!(got == d[..], "replica {i} serves the right bytes");
    }
    // The read queued a repair: the replica is rewritten from a healthy
    // one and serves the right bytes again.
    let start = Instant::now();
    loop {
        if let Ok(got) = c.read(&ch, &ch.members[1], k, 0, 16384).await
            && got == d[..]
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the corrupt replica was never repaired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = c.metrics(victim);
    assert!(metric(&m, "cairn_chunkserver_repair_installed_bytes_total") >= 16384.0);

    // A chunk nobody reads: the scrubber finds its bad block, and it is
    // repaired the same way.
    let k2 = chunk(21, 0);
    let ch2 = c.chain(3, 0, k2).await;
    let d2 = pattern(78, 16384);
    c.write(&ch2, k2, 0, &d2, 1, 2).await.expect("write");
    let victim2 = c.index_of(&ch2.members[1]);
    flip_byte_of(&c.data_file(victim2), &d2[4096..4096 + 64]);
    let start = Instant::now();
    loop {
        let m = c.metrics(victim2);
        if metric(&m, "cairn_chunkserver_scrub_bad_blocks_total") >= 1.0 {
            assert!(metric(&m, "cairn_chunkserver_crc_failures_total") >= 1.0);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the scrubber never reported the block:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let start = Instant::now();
    loop {
        if let Ok(got) = c.read(&ch2, &ch2.members[1], k2, 0, 16384).await
            && got == d2[..]
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the scrubbed corrupt replica was never repaired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = common::http_metrics(&c.meta_metrics);
    assert!(
        metric(&m, "cairn_meta_corruption_reports_total") >= 1.0,
        "meta heard of the corrupt replica:\n{m}"
    );
    for i in [0, 2] {
        let m = c.metrics(c.index_of(&ch2.members[i]));
        assert_eq!(
            metric(&m, "cairn_chunkserver_scrub_bad_blocks_total"),
            0.0,
            "healthy replica {i} reported nothing"
        );
    }
}

async fn raw_reply(addr: &str, bytes: &[u8], close_write: bool) -> (Option<Frame>, bool) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if close_write {
        s.shutdown().await.unwrap();
    }
    let mut buf = bytes::BytesMut::new();
    let mut dec = FrameDecoder::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut frame = None;
    loop {
        if frame.is_none()
            && let Ok(Some(f)) = dec.decode(&mut buf)
        {
            frame = Some(f);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read_buf(&mut buf)).await {
            Ok(Ok(0)) => return (frame, true),
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return (frame, true),
            Err(_) => return (frame, false),
        }
    }
}

fn with_crc(mut h: [u8; HEADER_LEN]) -> Vec<u8> {
    let crc = crc32fast::hash(&h[..124]);
    h[124..].copy_from_slice(&crc.to_le_bytes());
    h.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_their_connection() {
    let c = Cluster::start(3, &[]).await;
    let k = chunk(30, 0);
    let ch = c.chain(3, 0, k).await;
    let head = ch.members[0].clone();
    let d = pattern(5, 8192);
    c.write(&ch, k, 0, &d, 1, 1).await.unwrap();

    let good = Header {
        chunk: k,
        chain: ch.id,
        chain_version: ch.version,
        ..Header::request(Opcode::Read, 1)
    };
    let mut huge = good.encode();
    huge[36..40].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut unknown = good.encode();
    unknown[5] = 0x42;
    let mut badcrc = good.encode();
    badcrc[60] ^= 1;
    let mut write_hdr = Header {
        flags: cairn_proto::frame::Flags::BODY,
        length: 4096,
        ..Header::request(Opcode::Write, 3)
    }
    .encode();
    write_hdr[8] = 3;
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), true),
        ("huge length", with_crc(huge), true),
        ("unknown opcode", with_crc(unknown), true),
        ("bad header crc", badcrc.to_vec(), true),
        ("zeros", vec![0u8; 300], true),
    ];
    // Another client keeps reading while the bad ones come and go.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let head = head.clone();
        let (id, v) = (ch.id, ch.version);
        let d = d.clone();
        tokio::spawn(async move {
            let pool = data::DataPool::new(Duration::from_secs(2));
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = pool
                    .call(
                        &head,
                        data::read_request(id, v, k, 0, 8192),
                        common::TIMEOUT,
                    )
                    .await
                    .expect("good client served");
                let r = data::into_result(r).expect("good read");
                assert!(r.payload == d[..]);
                n += 1;
            }
            n
        })
    };
    for (name, bytes, expect_error_frame) in &cases {
        let (frame, closed) = raw_reply(&head, bytes, false).await;
        assert!(closed, "{name}: connection closed");
        if *expect_error_frame {
            let f = frame.unwrap_or_else(|| panic!("{name}: an error frame first"));
            assert_eq!(f.header.request_id, 0, "{name}: protocol error frame");
            assert_ne!(f.header.status, 0, "{name}: error status");
        }
    }
    // Half a header, then the client goes away; a body cut short.
    let (f, closed) = raw_reply(&head, &good.encode()[..50], true).await;
    assert!(
        closed && f.is_none(),
        "truncated header: closed without reply"
    );
    let mut cut = with_crc(write_hdr);
    cut.extend_from_slice(&[1u8; 1000]);
    let (f, closed) = raw_reply(&head, &cut, true).await;
    assert!(
        closed && f.is_none(),
        "truncated body: closed without reply"
    );
    // A well-formed frame with a bad payload CRC fails only that request.
    let mut w = data::write_request(
        ch.id,
        ch.version,
        k,
        0,
        Bytes::from(pattern(6, 4096)),
        2,
        1,
        0,
    );
    w.payload = Bytes::from(pattern(7, 4096));
    let e = code(data::into_result(c.call(&head, w).await.unwrap()));
    assert_eq!(e, ErrorCode::Checksum, "bad payload refused");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = reader.await.expect("reader task");
    assert!(n > 0, "the good client was served throughout");
    for addr in &ch.members {
        let got = c.read(&ch, addr, k, 0, 8192).await.unwrap();
        assert!(got == d[..], "{addr} unchanged");
    }
    let m = c.metrics(c.index_of(&head));
    assert!(metric(&m, "cairn_chunkserver_protocol_errors_total") >= cases.len() as f64);
    // The binary counts its heap allocations (cairn-bench divides them by
    // the requests served); the count only grows.
    let before = metric(&m, "cairn_chunkserver_heap_allocations_total");
    assert!(before > 0.0, "no allocation count in:\n{m}");
    c.read(&ch, &head, k, 0, 4096).await.unwrap();
    let after = metric(
        &c.metrics(c.index_of(&head)),
        "cairn_chunkserver_heap_allocations_total",
    );
    assert!(after > before, "{before} -> {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunkserver_cut_off_from_meta_stops_serving() {
    let mut c = Cluster::start(3, &[]).await;
    let k = chunk(40, 0);
    let ch = c.chain(3, 0, k).await;
    let d = pattern(9, 4096);
    c.write(&ch, k, 0, &d, 1, 1).await.unwrap();
    let victim = c.index_of(&ch.members[2]);
    // Ready once its own view has every member it holds serving (the view
    // reaches it with a heartbeat, so on a loaded machine that can trail
    // the table the cluster waited for).
    let start = Instant::now();
    loop {
        let ready = c.ready(victim);
        if ready.starts_with("HTTP/1.0 200") || ready.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never ready: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.stop_meta().await;
    let start = Instant::now();
    loop {
        match c.read(&ch, &ch.members[2], k, 0, 4096).await {
            Ok(got) => assert!(got == d[..]),
            Err(e) => {
                assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "still serving 8 s after meta went away (lease is 5 s)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = c.ready(victim);
    assert!(
        ready.contains(" 503 ") && ready.contains("no lease"),
        "{ready}"
    );
    // Each member's lease counts from its own last heartbeat: once the
    // head's has run out too, a write is refused as well.
    let head = c.index_of(&ch.members[0]);
    while !c.ready(head).contains("no lease") {
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "the head still holds a lease 8 s after meta went away"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = code(c.write(&ch, k, 0, &d, 1, 2).await);
    assert_eq!(e, ErrorCode::Unavailable, "writes refused too");
}

/// A resync copy delivered after its sender gave up on it must not put old
/// bytes back. The sender (a chain's head) compares a syncing replica by
/// Stat, then Installs under the chunk's lock; if that call times out the
/// lock is released, a removal and a new write — which restarts at
/// version 1 — can reach the replica, and only then the late Install. It
/// carries the replica's state as the sender saw it, so the replica
/// refuses it instead of holding the old bytes under the new version 1
/// (what the self-healing fault test caught as "two replicas at version 1
/// with other bytes").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_resync_copy_is_refused_and_changes_nothing() {
    use cairn_chunkserver::server::{STAT_DIGEST, replica_state_tag};
    use cairn_proto::ids::SessionId;

    let c = Cluster::start(3, &[]).await;
    let k = chunk(9, 0);
    let ch = c.chain(3, 0, k).await;
    let tail = ch.members[2].clone();
    let old = pattern(1, 64 << 10);
    c.write(&ch, k, 0, &old, 7, 1).await.unwrap();

    // What a sync source's Stat sees at the tail.
    let stat = || {
        Frame::new(Header {
            chunk: k,
            chain: ch.id,
            chain_version: ch.version,
            client_seq: STAT_DIGEST,
            ..Header::request(Opcode::Stat, 0)
        })
    };
    let s = data::into_result(c.call(&tail, stat()).await.unwrap()).unwrap();
    let seen = replica_state_tag(s.header.version, s.header.offset, s.header.client_seq);

    // Meanwhile the file is truncated away and written again.
    data::into_result(
        c.call(&ch.members[0], data::remove_request(ch.id, ch.version, k))
            .await
            .unwrap(),
    )
    .unwrap();
    let new = pattern(2, 64 << 10);
    let r = c.write(&ch, k, 0, &new, 7, 2).await.unwrap();
    assert_eq!(
        r.header.version, 1,
        "a chunk written again restarts at version 1"
    );

    let install = |expect: u64| {
        Frame::with_payload(
            Header {
                chunk: k,
                chain: ch.id,
                chain_version: ch.version,
                version: 1,
                offset: 0,
                client_seq: old.len() as u64,
                client_id: SessionId(expect),
                ..Header::request(Opcode::Install, 0)
            },
            Bytes::copy_from_slice(&old),
        )
        .unwrap()
    };
    // The late copy of the old version 1: refused, the new bytes stay.
    assert_eq!(
        code(
            c.call(&tail, install(seen))
                .await
                .and_then(data::into_result)
        ),
        ErrorCode::StaleSequence
    );
    let got = c.read(&ch, &tail, k, 0, new.len() as u32).await.unwrap();
    assert!(got == new[..], "the late copy changed the replica");
    assert!(
        metric(
            &c.metrics(c.index_of(&tail)),
            "cairn_chunkserver_stale_installs_total"
        ) >= 1.0,
        "the refusal is counted"
    );

    // A copy made against the replica's current state is installed.
    let s = data::into_result(c.call(&tail, stat()).await.unwrap()).unwrap();
    let now = replica_state_tag(s.header.version, s.header.offset, s.header.client_seq);
    data::into_result(c.call(&tail, install(now)).await.unwrap()).unwrap();
    let got = c.read(&ch, &tail, k, 0, old.len() as u32).await.unwrap();
    assert!(got == old[..], "an up-to-date copy is installed");
}
