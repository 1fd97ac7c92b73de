//! `MetaClient` against a real 3-replica meta cluster started in this
//! process (`cairn_meta::start`, as `cairn dev` does): the namespace calls,
//! the path helpers, paging, sessions, encrypted volumes' key checks and
//! file salts, compressed volumes' settings and counters, and a leader
//! failover in the middle of a workload.

use std::time::{Duration, Instant};

use cairn_client::{ErrorCode, MetaClient, MetaClientOptions, Owner, RenameFlags, XattrMode};
use cairn_meta::{MetaConfig, MetaHandle};
use cairn_proto::ids::InodeId;
use cairn_proto::meta::{Compression, FileType, StatusReply, VolumeKeyCheck, VolumePolicy};
use tokio::sync::watch;

struct Replica {
    stop: watch::Sender<bool>,
    handle: Option<MetaHandle>,
}

struct Cluster {
    _dir: tempfile::TempDir,
    replicas: Vec<Replica>,
    addrs: Vec<String>,
}

impl Cluster {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut replicas = Vec::new();
        let mut addrs: Vec<String> = Vec::new();
        for i in 1..=3 {
            let cfg = MetaConfig {
                data_dir: dir.path().join(format!("meta{i}")),
                listen: "127.0.0.1:0".parse().unwrap(),
                bootstrap: i == 1,
                join: addrs.first().cloned().into_iter().collect(),
                replicas: 3,
                raft_heartbeat: Duration::from_millis(100),
                election_timeout: Duration::from_millis(500),
                chunkserver_timeout: Duration::from_secs(5),
                session_timeout: Duration::from_secs(30),
                snapshot_every: 1000,
                cache_bytes: 8 << 20,
                metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
                ..MetaConfig::default()
            };
            let (stop, rx) = watch::channel(false);
            let mut rx2 = rx.clone();
            let h = cairn_meta::start(cfg, async move {
                let _ = rx2.wait_for(|s| *s).await;
            })
            .await
            .unwrap();
            drop(rx);
            addrs.push(h.addr.to_string());
            replicas.push(Replica {
                stop,
                handle: Some(h),
            });
        }
        Self {
            _dir: dir,
            replicas,
            addrs,
        }
    }

    /// Stops replica `node_id` and waits until it is down.
    async fn stop(&mut self, node_id: u64) {
        let r = self
            .replicas
            .iter_mut()
            .find(|r| r.handle.as_ref().is_some_and(|h| h.node_id == node_id))
            .unwrap();
        r.stop.send_replace(true);
        r.handle.take().unwrap().wait().await.unwrap();
    }
}

/// The value of the counter `name` on replica `node_id`'s metrics page.
async fn counter(cluster: &Cluster, node_id: u64, name: &str) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = cluster
        .replicas
        .iter()
        .filter_map(|r| r.handle.as_ref())
        .find(|h| h.node_id == node_id)
        .unwrap();
    let mut s = tokio::net::TcpStream::connect(h.metrics_addr.unwrap())
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut page = String::new();
    s.read_to_string(&mut page).await.unwrap();
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} on the metrics page:\n{page}"))
}

/// Waits until `node_id` has no client's Calls stream open; panics naming
/// `what` after `within`.
async fn wait_no_call_streams(cluster: &Cluster, node_id: u64, within: Duration, what: &str) {
    let t = Instant::now();
    while counter(cluster, node_id, "cairn_meta_call_streams").await != 0 {
        assert!(t.elapsed() < within, "{what}: a call stream is still open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A started cluster, a client of it, and the status once it is ready.
async fn ready_cluster() -> (Cluster, MetaClient, StatusReply) {
    let cluster = Cluster::start().await;
    let c = MetaClient::connect(&cluster.addrs, client_opts())
        .await
        .unwrap();
    let s = wait_ready(&c).await;
    (cluster, c, s)
}

fn client_opts() -> MetaClientOptions {
    MetaClientOptions {
        deadline: Duration::from_secs(10),
        request_timeout: Duration::from_secs(2),
        ..MetaClientOptions::default()
    }
}

async fn wait_ready(c: &MetaClient) -> StatusReply {
    let t0 = Instant::now();
    loop {
        if let Ok(s) = c.leader_status().await
            && s.leader_id != 0
            && s.members.iter().filter(|m| m.voter).count() == 3
        {
            return s;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "cluster not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn policy() -> VolumePolicy {
    VolumePolicy {
        replication: 3,
        chunk_size: 64 << 20,
        stripe_width: 8,
        encrypted: false,
        quota_bytes: 0,
        quota_inodes: 0,
        key_version: 0,
        key_checks: Vec::new(),
        compression: Compression::None as i32,
        compression_unit: 0,
    }
}

fn key_checks(checks: &[[u8; 16]]) -> Vec<VolumeKeyCheck> {
    (1..)
        .zip(checks)
        .map(|(version, check)| VolumeKeyCheck {
            version,
            check: check.to_vec(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn encrypted_volumes_hold_key_checks_and_their_files_salts() {
    let cluster = Cluster::start().await;
    let c = MetaClient::connect(&cluster.addrs, client_opts())
        .await
        .unwrap();
    wait_ready(&c).await;
    let me = Owner::current();

    // Without the check value of its first key: refused, and not created.
    let encrypted = VolumePolicy {
        encrypted: true,
        ..policy()
    };
    let e = c.create_volume("sec", encrypted.clone()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Invalid, "{e}");
    assert!(
        e.message
            .contains("check value of its first key (version 1)"),
        "{e}"
    );
    assert!(
        c.list_volumes()
            .await
            .unwrap()
            .iter()
            .all(|v| v.name != "sec")
    );
    let e = c
        .create_volume(
            "sec",
            VolumePolicy {
                key_checks: key_checks(&[[1; 16]]),
                ..policy()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.code,
        ErrorCode::Invalid,
        "a plain volume with a key check: {e}"
    );

    let v = c
        .create_volume(
            "sec",
            VolumePolicy {
                key_checks: key_checks(&[[1; 16]]),
                ..encrypted
            },
        )
        .await
        .unwrap();
    let p = v.policy.clone().unwrap();
    assert!(p.encrypted);
    assert_eq!((p.key_version, p.key_checks), (1, key_checks(&[[1; 16]])));
    let listed = c.list_volumes().await.unwrap();
    let sec = listed.iter().find(|l| l.name == "sec").unwrap();
    assert_eq!(sec.policy, v.policy);
    let plain = c.create_volume("plain", policy()).await.unwrap();
    let pp = plain.policy.unwrap();
    assert!(!pp.encrypted && pp.key_version == 0 && pp.key_checks.is_empty());

    // Files of the encrypted volume get their own 16-byte salt and the
    // current key version; files of a plain volume neither.
    let root = InodeId(v.root_ino);
    let one = c.create(root, "one", 0o644, me, true, false).await.unwrap();
    let two = c.create(root, "two", 0o644, me, true, false).await.unwrap();
    for f in [&one.attr, &two.attr] {
        assert_eq!((f.encryption_salt.len(), f.key_version), (16, 1), "{f:?}");
    }
    assert_ne!(one.attr.encryption_salt, two.attr.encryption_salt);
    let stored = c.getattr(InodeId(one.attr.ino)).await.unwrap();
    assert_eq!(stored.encryption_salt, one.attr.encryption_salt);
    let f = c
        .create(InodeId(plain.root_ino), "f", 0o644, me, true, false)
        .await
        .unwrap();
    assert!(f.attr.encryption_salt.is_empty() && f.attr.key_version == 0);

    // Rotation: refused for a key the volume has and for a plain volume;
    // then new files use version 2 and old ones keep version 1.
    let e = c.rotate_volume_key("sec", [1; 16]).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Invalid, "{e}");
    assert!(e.message.contains("that key is already version 1"), "{e}");
    let e = c.rotate_volume_key("plain", [2; 16]).await.unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (ErrorCode::Invalid, "volume plain is not encrypted")
    );
    let e = c.rotate_volume_key("nope", [2; 16]).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound, "{e}");
    let rotated = c.rotate_volume_key("sec", [2; 16]).await.unwrap();
    let p = rotated.policy.unwrap();
    assert_eq!(
        (p.key_version, p.key_checks),
        (2, key_checks(&[[1; 16], [2; 16]]))
    );
    let three = c
        .create(root, "three", 0o644, me, true, false)
        .await
        .unwrap();
    assert_eq!(
        (three.attr.encryption_salt.len(), three.attr.key_version),
        (16, 2)
    );
    let old = c.getattr(InodeId(one.attr.ino)).await.unwrap();
    assert_eq!(
        (old.encryption_salt, old.key_version),
        (one.attr.encryption_salt, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compressed_volumes_keep_their_settings_and_count_what_closes_report() {
    let cluster = Cluster::start().await;
    let c = MetaClient::connect(&cluster.addrs, client_opts())
        .await
        .unwrap();
    wait_ready(&c).await;
    let me = Owner::current();
    let lz4 = |unit| VolumePolicy {
        compression: Compression::Lz4 as i32,
        compression_unit: unit,
        ..policy()
    };

    // Refused, naming the volume, and not created.
    for (p, want) in [
        (
            lz4(3 << 10),
            "volume bad: compression unit 3072 bytes is not a power of two",
        ),
        (
            VolumePolicy {
                compression_unit: 64 << 10,
                ..policy()
            },
            "volume bad: compression_unit needs a compression",
        ),
        (
            VolumePolicy {
                chunk_size: 64 << 10,
                ..lz4(128 << 10)
            },
            "larger than its chunk size",
        ),
    ] {
        let e = c.create_volume("bad", p).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Invalid, "{e}");
        assert!(e.message.contains(want), "{e}");
    }
    assert!(c.list_volumes().await.unwrap().is_empty());

    // The default unit; zstd and encryption together.
    let lz = c.create_volume("lz", lz4(0)).await.unwrap();
    let p = lz.policy.clone().unwrap();
    assert_eq!(
        (p.compression(), p.compression_unit),
        (Compression::Lz4, 65536)
    );
    assert!(!p.encrypted);
    let both = c
        .create_volume(
            "both",
            VolumePolicy {
                encrypted: true,
                key_checks: key_checks(&[[1; 16]]),
                compression: Compression::Zstd as i32,
                compression_unit: 1 << 20,
                ..policy()
            },
        )
        .await
        .unwrap();
    let p = both.policy.clone().unwrap();
    assert_eq!(
        (p.compression(), p.compression_unit),
        (Compression::Zstd, 1 << 20)
    );
    assert!(p.encrypted && p.key_version == 1);
    let plain = c.create_volume("plain", policy()).await.unwrap();
    assert_eq!(plain.policy.unwrap().compression(), Compression::None);

    // Closes report what their handles wrote; the volume adds it up.
    let f = c
        .create(InodeId(lz.root_ino), "f", 0o644, me, true, true)
        .await
        .unwrap();
    let ino = InodeId(f.attr.ino);
    c.close_file(ino, Some((1 << 20, 0)), 0, (1 << 20, 256 << 10))
        .await
        .unwrap();
    c.open_file(ino, true).await.unwrap();
    c.close_file(ino, Some((2 << 20, 0)), 0, (1 << 20, 384 << 10))
        .await
        .unwrap();
    let g = c
        .create(InodeId(plain.root_ino), "g", 0o644, me, true, true)
        .await
        .unwrap();
    c.close_file(InodeId(g.attr.ino), Some((10, 0)), 0, (10, 4096))
        .await
        .unwrap();
    let listed = c.list_volumes().await.unwrap();
    let by_name = |n: &str| listed.iter().find(|v| v.name == n).unwrap().clone();
    let l = by_name("lz");
    assert_eq!((l.logical_bytes, l.stored_bytes), (2 << 20, 640 << 10));
    assert_eq!(l.policy, lz.policy);
    let p = by_name("plain");
    assert_eq!((p.logical_bytes, p.stored_bytes), (0, 0));
    let b = by_name("both");
    assert_eq!((b.logical_bytes, b.stored_bytes), (0, 0));

    // A key rotation answers with the volume's compression too.
    let rotated = c.rotate_volume_key("both", [2; 16]).await.unwrap();
    let p = rotated.policy.unwrap();
    assert_eq!(
        (p.compression(), p.compression_unit, p.key_version),
        (Compression::Zstd, 1 << 20, 2)
    );
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn namespace_calls_and_path_helpers() {
    let cluster = Cluster::start().await;
    let c = MetaClient::connect(&cluster.addrs, client_opts())
        .await
        .unwrap();
    let t0 = Instant::now();
    let s = wait_ready(&c).await;
    eprintln!(
        "ready in {:?}: leader {} term {}",
        t0.elapsed(),
        s.leader_id,
        s.term
    );
    let me = Owner::current();
    let on_stream = counter(&cluster, s.leader_id, "cairn_meta_rpc_stream_calls_total").await;

    let vol = c.create_volume("v", policy()).await.unwrap();
    assert_eq!(vol.name, "v");
    assert!(
        c.list_volumes()
            .await
            .unwrap()
            .iter()
            .any(|v| v.name == "v")
    );

    // mkdir -p: creates, is idempotent, refuses to go through a file.
    let b = c.mkdir_p("/v/a/b", 0o750, me).await.unwrap();
    assert_eq!(b.kind(), FileType::Directory);
    assert_eq!(b.mode & 0o7777, 0o750);
    assert_eq!(c.mkdir_p("/v/a/b", 0o755, me).await.unwrap().ino, b.ino);
    let (a, name) = c.resolve_parent("/v/a/f").await.unwrap();
    assert_eq!(name, "f");
    let f = c
        .create(InodeId(a.ino), "f", 0o644, me, true, false)
        .await
        .unwrap();
    assert_eq!(f.attr.kind(), FileType::Regular);
    let e = c
        .create(InodeId(a.ino), "f", 0o644, me, true, false)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Exists);
    let e = c.mkdir_p("/v/a/f/x", 0o755, me).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotDir, "{e}");
    let e = c.resolve_parent("/").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Invalid);
    let e = c.resolve_parent("/v/nope/x").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);

    // Paging: more entries than one ReadDir page.
    let many = c.mkdir_p("/v/many", 0o755, me).await.unwrap();
    let n = cairn_client::meta_client::READDIR_PAGE as usize + 20;
    for i in 0..n {
        c.create(
            InodeId(many.ino),
            &format!("f{i:04}"),
            0o644,
            me,
            true,
            false,
        )
        .await
        .unwrap();
    }
    let all = c.readdir_all(InodeId(many.ino)).await.unwrap();
    assert_eq!(all.len(), n);
    let mut names: Vec<_> = all.iter().map(|e| e.name.clone()).collect();
    names.dedup();
    assert_eq!(names.len(), n, "a page boundary repeated an entry");
    let plus = c.readdir_all_plus(InodeId(a.ino)).await.unwrap();
    let listed: Vec<_> = plus
        .iter()
        .map(|e| (e.name.as_str(), e.attr.is_some()))
        .collect();
    assert_eq!(listed, [("b", true), ("f", true)]);

    // rename: noreplace refuses, a plain rename moves.
    c.create(InodeId(a.ino), "g", 0o644, me, true, false)
        .await
        .unwrap();
    let e = c
        .rename(
            InodeId(a.ino),
            "g",
            InodeId(a.ino),
            "f",
            RenameFlags::NOREPLACE,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Exists);
    c.rename(InodeId(a.ino), "g", InodeId(b.ino), "g2", RenameFlags::NONE)
        .await
        .unwrap();
    assert_eq!(
        c.resolve("/v/a/b/g2").await.unwrap().kind(),
        FileType::Regular
    );

    // symlink, xattrs, unlink, rmdir.
    let l = c.symlink(InodeId(a.ino), "l", "/v/a/f", me).await.unwrap();
    assert_eq!(c.readlink(InodeId(l.attr.ino)).await.unwrap(), "/v/a/f");
    c.setxattr(InodeId(f.attr.ino), "user.k", b"v", XattrMode::CreateOnly)
        .await
        .unwrap();
    assert_eq!(
        c.getxattr(InodeId(f.attr.ino), "user.k").await.unwrap(),
        b"v"
    );
    assert_eq!(c.listxattr(InodeId(f.attr.ino)).await.unwrap(), ["user.k"]);
    c.removexattr(InodeId(f.attr.ino), "user.k").await.unwrap();
    let e = c.rmdir(InodeId(a.ino), "b").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotEmpty);
    c.unlink(InodeId(b.ino), "g2").await.unwrap();
    c.rmdir(InodeId(a.ino), "b").await.unwrap();
    let e = c.lookup(InodeId(a.ino), "b").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);

    // Those calls travelled on the client's Calls stream (one DATA frame
    // each way), their errors included: the codes above came back from it.
    let calls =
        counter(&cluster, s.leader_id, "cairn_meta_rpc_stream_calls_total").await - on_stream;
    assert!(calls >= 25, "{calls} calls on the stream");

    let sid = c.session_id().await.unwrap();
    assert_ne!(sid.0, 0);
    c.close().await.unwrap();

    // A dropped client's stream ends on the server too (its reading task
    // does not keep it open).
    assert!(counter(&cluster, s.leader_id, "cairn_meta_call_streams").await >= 1);
    drop(c);
    wait_no_call_streams(
        &cluster,
        s.leader_id,
        Duration::from_secs(10),
        "a dropped client",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutations_survive_a_leader_failover() {
    let mut cluster = Cluster::start().await;
    let c = MetaClient::connect(&cluster.addrs, client_opts())
        .await
        .unwrap();
    let s = wait_ready(&c).await;
    c.create_volume("w", policy()).await.unwrap();
    let dir = c.mkdir_p("/w/d", 0o755, Owner::ROOT).await.unwrap();
    for i in 0..20 {
        c.mkdir(InodeId(dir.ino), &format!("before{i}"), 0o755, Owner::ROOT)
            .await
            .unwrap();
    }
    cluster.stop(s.leader_id).await;
    let t0 = Instant::now();
    c.mkdir(InodeId(dir.ino), "after", 0o755, Owner::ROOT)
        .await
        .unwrap();
    let took = t0.elapsed();
    eprintln!("first mutation after the leader stopped took {took:?}");
    assert!(took < Duration::from_secs(5), "failover took {took:?}");
    assert_ne!(c.leader_addr(), s.leader_addr);
    let names = c.readdir_all(InodeId(dir.ino)).await.unwrap();
    assert_eq!(names.len(), 21);
    c.close().await.unwrap();
}

/// Write opens closed unwritten are released in the background, batched;
/// a later write open of the same file is never undone by such a release.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unwritten_closes_are_released_in_the_background_and_never_undo_a_reopen() {
    let cluster = Cluster::start().await;
    let c = MetaClient::connect(&cluster.addrs, client_opts())
        .await
        .unwrap();
    wait_ready(&c).await;
    let vol = c.create_volume("r", policy()).await.unwrap();
    let root = InodeId(vol.root_ino);
    let me = Owner::current();

    // 50 files created open for write and released unwritten.
    let mut inos = Vec::new();
    for k in 0..50 {
        let e = c
            .create(root, &format!("f{k}"), 0o644, me, true, true)
            .await
            .unwrap();
        inos.push(InodeId(e.attr.ino));
        c.release_later(InodeId(e.attr.ino)).await;
    }
    // Released within RELEASE_DELAY (100 ms): an unlink now frees each one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for k in 0..50 {
        c.unlink(root, &format!("f{k}")).await.unwrap();
    }
    for ino in &inos {
        let e = c.getattr(*ino).await.expect_err("freed at unlink");
        assert_eq!(e.code, ErrorCode::NotFound);
    }

    // Released, then opened for write again at once: the second open's
    // hold survives the release, so an unlink keeps the data until close.
    let e = c
        .create(root, "again", 0o644, me, true, true)
        .await
        .unwrap();
    let ino = InodeId(e.attr.ino);
    c.release_later(ino).await;
    c.open_file(ino, true).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.unlink(root, "again").await.unwrap();
    assert!(c.getattr(ino).await.is_ok(), "held by the second open");
    c.close_file(ino, None, 0, (0, 0)).await.unwrap();
    assert_eq!(
        c.getattr(ino).await.expect_err("freed at close").code,
        ErrorCode::NotFound
    );
    c.close().await.unwrap();
}

/// The Calls stream refuses what it cannot serve call by call, answering
/// each with its id, and goes on serving: an undecodable request is
/// INVALID_ARGUMENT, an unknown method UNIMPLEMENTED, a handler's error
/// keeps its Cairn details, and a good call after them is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_calls_stream_answers_bad_calls_and_goes_on() {
    use cairn_proto::meta::meta_client::MetaClient as Grpc;
    use cairn_proto::meta::{AttrReply, Call, GetAttrRequest, LookupRequest};
    use prost::Message;

    let (_cluster, _c, s) = ready_cluster().await;
    let mut grpc = Grpc::connect(format!("http://{}", s.leader_addr))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let mut replies = grpc
        .calls(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let root = InodeId::ROOT.0;
    let calls = [
        (1, "get_attr", vec![0xff, 0xff, 0xff]),
        (2, "no_such_method", Vec::new()),
        (
            3,
            "lookup",
            LookupRequest {
                parent: root,
                name: "missing".into(),
                ..LookupRequest::default()
            }
            .encode_to_vec(),
        ),
        (
            4,
            "get_attr",
            GetAttrRequest {
                ino: root,
                ..GetAttrRequest::default()
            }
            .encode_to_vec(),
        ),
    ];
    let mut got = std::collections::BTreeMap::new();
    for (id, method, request) in calls {
        tx.send(Call {
            id,
            method: method.into(),
            request,
        })
        .await
        .unwrap();
        // One at a time: each is answered before the next is sent.
        let r = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(r.id, id);
        got.insert(id, r);
    }
    assert_eq!(
        got[&1].code,
        tonic::Code::InvalidArgument as i32,
        "{:?}",
        got[&1]
    );
    assert!(got[&1].message.contains("undecodable"), "{:?}", got[&1]);
    assert_eq!(
        got[&2].code,
        tonic::Code::Unimplemented as i32,
        "{:?}",
        got[&2]
    );
    assert_eq!(cairn_code(&got[&3]), ErrorCode::NotFound, "{:?}", got[&3]);
    assert_eq!(got[&4].code, 0, "{:?}", got[&4]);
    let attr = AttrReply::decode(got[&4].reply.as_slice())
        .unwrap()
        .attr
        .unwrap();
    assert_eq!(attr.ino, root);
    assert_eq!(attr.kind, FileType::Directory as i32);

    // Closing the request side ends the stream once everything is answered.
    drop(tx);
    let end = tokio::time::timeout(Duration::from_secs(5), replies.message())
        .await
        .unwrap();
    assert!(matches!(end, Ok(None)), "{end:?}");
}

/// The Cairn error code a [`cairn_proto::meta::CallReply`] carries.
fn cairn_code(r: &cairn_proto::meta::CallReply) -> ErrorCode {
    let s = tonic::Status::with_details(
        tonic::Code::from(r.code),
        r.message.clone(),
        r.details.clone().into(),
    );
    cairn_proto::CairnStatus::from_status(&s).code
}

/// A client whose connection goes silent (frozen, partitioned, half-open)
/// does not keep its stream on the leader: the server's HTTP/2 keepalive
/// drops the connection and the stream with it. The client talks through
/// a proxy that stops forwarding, holding both sockets open.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_clients_stream_is_dropped_by_the_leader() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (cluster, probe, s) = ready_cluster().await;
    drop(probe);
    wait_no_call_streams(
        &cluster,
        s.leader_id,
        Duration::from_secs(10),
        "earlier clients",
    )
    .await;

    // The proxy: forwards both ways until `frozen`, then reads nothing and
    // writes nothing, with both sockets left open.
    let frozen = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap().to_string();
    let leader = s.leader_addr.clone();
    let f = frozen.clone();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = tokio::net::TcpStream::connect(leader).await.unwrap();
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        let pipe = |mut r: tokio::net::tcp::OwnedReadHalf,
                    mut w: tokio::net::tcp::OwnedWriteHalf,
                    f: Arc<AtomicBool>| async move {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if f.load(Ordering::SeqCst) {
                    // Silent from now on; keep both halves open.
                    std::future::pending::<()>().await;
                }
                if w.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            drop((r, w));
        };
        let a = tokio::spawn(pipe(cr, sw, f.clone()));
        let b = tokio::spawn(pipe(sr, cw, f));
        let _ = (a.await, b.await);
    });

    let c = MetaClient::connect([proxy_addr.as_str()], client_opts())
        .await
        .unwrap();
    c.list_volumes().await.unwrap();
    assert_eq!(
        counter(&cluster, s.leader_id, "cairn_meta_call_streams").await,
        1,
        "the client's stream is open on the leader"
    );
    frozen.store(true, Ordering::SeqCst);
    let t = Instant::now();
    wait_no_call_streams(
        &cluster,
        s.leader_id,
        Duration::from_secs(20),
        "a silent client",
    )
    .await;
    eprintln!("dropped after {:?}", t.elapsed());
}
