//! `cairn dev` end to end: the real binary starts 3 meta replicas and 3
//! chunkservers, prints how to reach them, stores data written through a
//! 3-replica chain on every replica, and stops cleanly on SIGINT.

mod common;

use std::time::Duration;

use cairn_jepsen::fuse::is_mounted;
use common::Dev;

use bytes::Bytes;
use cairn_chunkserver::chain::ChainView;
use cairn_client::data::{self, DataPool};
use cairn_proto::ids::{ChainId, ChainVersion, ChunkId, ObjectId};
use cairn_proto::meta as pb;
use cairn_proto::meta::meta_client::MetaClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_stores_data_on_three_replicas_and_stops_cleanly() {
    let mut dev = Dev::start();
    let ready = dev.ready.clone();
    assert!(
        ready.contains("3 meta replicas and 3 chunkservers ready"),
        "{ready}"
    );
    assert!(dev.startup < Duration::from_secs(15), "slow start");
    let meta = dev.meta.clone();
    let first = meta.split(',').next().unwrap().to_string();

    let mut c = MetaClient::connect(format!("http://{first}"))
        .await
        .unwrap();
    // Meta refuses an encrypted volume without the check value of its
    // first key (clients send it when given the key).
    let refused = c
        .create_volume(pb::CreateVolumeRequest {
            name: "sec".into(),
            policy: Some(pb::VolumePolicy {
                encrypted: true,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("an encrypted volume without a key check is refused");
    assert!(
        refused
            .message()
            .contains("needs the check value of its first key"),
        "{refused:?}"
    );
    let volumes = c.list_volumes(pb::Empty {}).await.unwrap().into_inner();
    assert!(volumes.volumes.iter().all(|v| v.name != "sec"));

    let t = c.get_chains(pb::Empty {}).await.unwrap().into_inner();
    let table = t
        .tables
        .iter()
        .find(|tb| tb.replication == 3)
        .expect("a 3-replica table");
    let chain = &table.chains[0];
    let view = ChainView::from_pb(&t);
    let chunk = ChunkId {
        object: ObjectId(7),
        index: 0,
    };
    let members: Vec<String> = chain
        .targets
        .iter()
        .map(|m| view.shard_addr(m.chunkserver_id, chunk).unwrap())
        .collect();
    assert_eq!(members.len(), 3);
    let (id, v) = (ChainId(chain.id), ChainVersion(chain.version));
    let pool = DataPool::new(Duration::from_secs(2));
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let w = data::write_request(id, v, chunk, 4096, Bytes::from(payload.clone()), 1, 1, 0);
    let r = pool
        .call(&members[0], w, Duration::from_secs(10))
        .await
        .unwrap();
    data::into_result(r).expect("write through the dev cluster");
    for m in &members {
        let r = pool
            .call(
                m,
                data::read_request(id, v, chunk, 4096, 20_000),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        let r = data::into_result(r).expect("read");
        data::verify_read_reply(&r).expect("crc");
        assert!(r.payload == payload[..], "replica {m}");
    }

    assert!(dev.stop(), "cairn dev exits 0 on SIGINT");
    for cs in 1..=3 {
        assert!(
            dev.dir_path
                .join(format!("cs{cs}"))
                .join("superblock.json")
                .exists(),
            "chunkserver {cs} data dir"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mount_serves_the_cluster_as_a_directory_and_unmounts_on_exit() {
    let mnt = tempfile::tempdir().unwrap();
    let dir = mnt.path().canonicalize().unwrap();
    let mut dev = Dev::start_with(&[std::ffi::OsStr::new("--mount"), dir.as_os_str()]);
    let t0 = std::time::Instant::now();
    while !is_mounted(&dir) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "cairn dev --mount did not mount {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    dev.ok(["volume", "create", "demo"]);
    // Written through the mount, read with the command line, and back.
    std::fs::create_dir(dir.join("demo/d")).unwrap();
    std::fs::write(dir.join("demo/d/hello.txt"), b"hello from the mount\n").unwrap();
    let out = dev.ok(["cat", "/demo/d/hello.txt"]);
    assert_eq!(out.stdout, b"hello from the mount\n");
    let src = dev.dir_path.join("local.txt");
    std::fs::write(&src, b"put by the cli").unwrap();
    dev.ok([
        std::ffi::OsStr::new("put"),
        src.as_os_str(),
        std::ffi::OsStr::new("/demo/d/put.txt"),
    ]);
    assert_eq!(
        std::fs::read(dir.join("demo/d/put.txt")).unwrap(),
        b"put by the cli"
    );
    let mut names: Vec<String> = std::fs::read_dir(dir.join("demo/d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["hello.txt", "put.txt"]);
    assert!(dev.stop(), "cairn dev did not exit cleanly");
    assert!(
        !is_mounted(&dir),
        "{} still mounted after cairn dev stopped",
        dir.display()
    );
}

/// `cairn k8s plan` on the shipped TFJob and Volcano examples, asking a
/// real `cairn dev` cluster how many chunkservers serve.
#[test]
fn k8s_plan_sizes_the_shipped_examples_against_the_running_cluster() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples");
    let mut dev = Dev::start();
    let out = dev.ok([
        std::ffi::OsStr::new("--json"),
        "k8s".as_ref(),
        "plan".as_ref(),
        examples.join("tfjob/pvcs.yaml").as_os_str(),
        examples.join("tfjob/tfjob.yaml").as_os_str(),
    ]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bw = &plan["bandwidth"];
    assert_eq!(bw["chunkservers"], 3, "{plan:#}");
    assert_eq!(bw["chunkservers_from"], "meta");
    let roles: Vec<(String, u64)> = plan["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["role"].as_str().unwrap().to_string(),
                t["replicas"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(roles.contains(&("Chief".into(), 1)), "{roles:?}");
    assert!(roles.contains(&("Worker".into(), 2)), "{roles:?}");
    let data = plan["claims"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["claim"] == "mnist-training-data")
        .expect("the data claim is planned");
    assert_eq!(data["size_bytes"], 50u64 << 30);
    assert_eq!(data["storage_class"], "distributed-file-ai");
    assert_eq!(data["readers"], 3);
    // CPU-only pods read at --read-per-pod (50 MiB/s by default).
    assert_eq!(
        data["read_bytes_per_sec_first_epoch"],
        3.0 * f64::from(50u32 << 20)
    );
    assert_eq!(bw["verdict"], "OK");

    // The human table names every role and the verdict.
    let out = dev.ok([
        "k8s".as_ref(),
        "plan".as_ref(),
        examples.join("volcano/job.yaml").as_os_str(),
        examples.join("volcano/pvcs.yaml").as_os_str(),
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("master") && text.contains("worker"), "{text}");
    assert!(text.contains("3 chunkservers (meta)"), "{text}");

    // A file with no job in it is an error that says what was expected.
    let bad = dev.cairn([
        "k8s".as_ref(),
        "plan".as_ref(),
        examples.join("tfjob/pvcs.yaml").as_os_str(),
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("no TFJob, PyTorchJob, TrainJob or Volcano Job"),
        "{err}"
    );
    assert!(dev.stop());
}

/// `cairn volume set-quota`: raises and lowers a volume's quotas, which
/// `volume ls` then shows and meta enforces.
#[test]
fn volume_quotas_can_be_changed_and_are_enforced() {
    let mut dev = Dev::start();
    dev.ok(["volume", "create", "q", "--quota-inodes", "2"]);
    dev.ok(["mkdir", "/q/a"]);
    let full = dev.cairn(["mkdir", "/q/b"]);
    assert!(!full.status.success(), "the inode quota is enforced");
    let out = dev.ok([
        "--json",
        "volume",
        "set-quota",
        "q",
        "--inodes",
        "10",
        "--bytes",
        "5GiB",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["policy"]["quota_inodes"], 10, "{v}");
    assert_eq!(v["policy"]["quota_bytes"], 5u64 << 30, "{v}");
    dev.ok(["mkdir", "/q/b"]);
    let none = dev.cairn(["volume", "set-quota", "q"]);
    assert!(
        !none.status.success(),
        "a set-quota without a quota is refused"
    );
    let missing = dev.cairn(["volume", "set-quota", "nope", "--bytes", "1GiB"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("No such file or directory"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    assert!(dev.stop());
}

/// `cairn quota`: a directory's own quota counts its whole subtree, is
/// enforced, shown by `quota get` from anywhere below it, and keeps files
/// from moving across its edge (EXDEV, so `mv` would copy).
#[test]
fn directory_quotas_count_their_subtree_and_are_enforced() {
    let mut dev = Dev::start();
    dev.ok(["volume", "create", "shared"]);
    dev.ok(["mkdir", "-p", "/shared/team/sub", "/shared/other"]);
    let busy = dev.cairn(["quota", "set", "/shared/team", "--inodes", "3"]);
    assert!(
        !busy.status.success(),
        "a quota starts on an empty directory"
    );
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
    dev.ok(["mkdir", "/shared/pv"]);
    let out = dev.ok([
        "--json",
        "quota",
        "set",
        "/shared/pv",
        "--inodes",
        "2",
        "--bytes",
        "1MiB",
    ]);
    let q: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (q["quota_inodes"].as_u64(), q["quota_bytes"].as_u64()),
        (Some(2), Some(1 << 20)),
        "{q}"
    );
    dev.ok(["mkdir", "/shared/pv/d"]);
    dev.ok(["mkdir", "/shared/pv/d/e"]);
    let full = dev.cairn(["mkdir", "/shared/pv/d/f"]);
    assert!(
        !full.status.success(),
        "the inode quota counts the whole subtree"
    );
    let out = dev.ok(["--json", "quota", "get", "/shared/pv/d/e"]);
    let q: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(q["used_inodes"].as_u64(), Some(2), "seen from below: {q}");
    let moved = dev.cairn(["mv", "/shared/pv/d/e", "/shared/other/e"]);
    assert!(
        !moved.status.success(),
        "nothing moves across the quota's edge"
    );
    let out = dev.ok(["quota", "get", "/shared/other"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("under no directory quota"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !dev.cairn(["quota", "set", "/shared/pv"]).status.success(),
        "nothing to set"
    );
    assert!(dev.stop());
}

/// `cairn rm -r` removes a tree depth first (the client's remove_tree, which
/// the CSI driver's DeleteVolume uses too); without -r a directory is
/// refused, and -f makes a missing path fine.
#[test]
fn rm_r_removes_a_whole_tree_and_refuses_without_r() {
    let mut dev = Dev::start();
    dev.ok(["volume", "create", "t"]);
    dev.ok(["mkdir", "-p", "/t/d/a/b", "/t/d/c"]);
    let src = dev.dir_path.join("f.txt");
    std::fs::write(&src, b"x").unwrap();
    for dst in ["/t/d/f", "/t/d/a/f", "/t/d/a/b/f", "/t/d/c/f"] {
        dev.ok([
            std::ffi::OsStr::new("put"),
            src.as_os_str(),
            std::ffi::OsStr::new(dst),
        ]);
    }
    let no_r = dev.cairn(["rm", "/t/d"]);
    assert!(!no_r.status.success());
    assert!(String::from_utf8_lossy(&no_r.stderr).contains("use -r"));
    dev.ok(["rm", "-r", "/t/d"]);
    let gone = dev.cairn(["stat", "/t/d"]);
    assert!(!gone.status.success(), "the tree is gone");
    let listing = dev.ok(["ls", "/t"]);
    assert!(
        listing.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&listing.stdout)
    );
    assert!(!dev.cairn(["rm", "-r", "/t/missing"]).status.success());
    dev.ok(["rm", "-rf", "/t/missing"]);
    assert!(dev.stop());
}
