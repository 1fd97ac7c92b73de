//! fio through a real mount with data verification (`--verify=crc32c`):
//! sequential 1 MiB writes read back and checked, random 4 KiB writes read
//! back and checked, then both data sets verified again through a second
//! mount (so the bytes come from the cluster, not the first mount's page
//! cache), the random one with O_DIRECT 4 KiB reads in random order.

use std::path::Path;
use std::process::Command;

use cairn_client::ClientOptions;
use cairn_jepsen::data_cluster::{DataCluster, DataOpts};
use cairn_jepsen::fuse::Mount;
use cairn_proto::meta::VolumePolicy;

/// Runs fio with `args` in `dir`; panics with its output unless it
/// succeeded with no job errors.
fn fio(dir: &Path, args: &[&str]) {
    let out = Command::new("fio")
        .arg(format!("--directory={}", dir.display()))
        .args([
            "--ioengine=psync",
            "--verify=crc32c",
            "--output-format=json",
        ])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("fio: {e} (scripts/test installs it: apt-get install fio)"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "fio {args:?} failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    let json_start = stdout.find('{').unwrap_or(0);
    let v: serde_json::Value = serde_json::from_str(&stdout[json_start..])
        .unwrap_or_else(|e| panic!("fio output is not JSON ({e}):\n{stdout}"));
    for job in v["jobs"].as_array().unwrap() {
        assert_eq!(
            job["error"], 0,
            "fio job {} reported an error:\n{stderr}",
            job["jobname"]
        );
        let (r, w) = (&job["read"], &job["write"]);
        println!(
            "fio {}: read {} MiB at {:.0} MiB/s, write {} MiB at {:.0} MiB/s",
            job["jobname"],
            r["io_bytes"].as_u64().unwrap_or(0) >> 20,
            r["bw_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            w["io_bytes"].as_u64().unwrap_or(0) >> 20,
            w["bw_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fio_with_crc32c_verification_through_the_mount() {
    let _serial = cairn_jepsen::serial().await;
    let cluster = DataCluster::start(DataOpts::default()).await.unwrap();
    let client = cluster.client(ClientOptions::default()).await.unwrap();
    client
        .meta()
        .create_volume("fio", VolumePolicy::default())
        .await
        .unwrap();
    let meta = cluster.meta.addrs();
    let a = Mount::start(
        &meta,
        &cluster.meta.dir().join("mnt-a"),
        &["--volume", "/fio"],
    )
    .unwrap();
    let seq = [
        "--name=seq",
        "--rw=write",
        "--bs=1M",
        "--size=96M",
        "--end_fsync=1",
    ];
    let rand = [
        "--name=rand",
        "--rw=randwrite",
        "--bs=4k",
        "--size=8M",
        "--randseed=42",
    ];
    let da = a.dir().to_path_buf();
    tokio::task::spawn_blocking(move || {
        fio(&da, &seq);
        fio(&da, &rand);
    })
    .await
    .unwrap();

    // A second mount has none of the data cached: verify everything again.
    let b = Mount::start(
        &meta,
        &cluster.meta.dir().join("mnt-b"),
        &["--volume", "/fio"],
    )
    .unwrap();
    let db = b.dir().to_path_buf();
    tokio::task::spawn_blocking(move || {
        fio(
            &db,
            &[
                "--name=seq",
                "--rw=write",
                "--bs=1M",
                "--size=96M",
                "--verify_only",
            ],
        );
        fio(
            &db,
            &[
                "--name=rand",
                "--rw=randwrite",
                "--bs=4k",
                "--size=8M",
                "--randseed=42",
                "--direct=1",
                "--verify_only",
            ],
        );
    })
    .await
    .unwrap();
    let mut a = a;
    let mut b = b;
    assert!(a.stop().unwrap().success());
    assert!(b.stop().unwrap().success());
}
