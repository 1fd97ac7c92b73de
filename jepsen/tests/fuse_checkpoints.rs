//! Checkpoint directories that manage themselves (issue 18), through a real
//! `cairn mount`: a program saves the usual way (temporary file, fsync,
//! rename into place) into a directory marked with `--keep 2`; the mount
//! records each published file as a checkpoint, keeps the newest two
//! (never one it has open), counts a save abandoned with an unlink as a
//! failure, and times saves and whole-file restores in its metrics. The
//! `Checkpoints` API keeps the same directory to the same rule.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use cairn_client::{Checkpoints, ClientOptions};
use cairn_jepsen::data_cluster::{DataCluster, DataOpts};
use cairn_jepsen::fuse::Mount;
use cairn_jepsen::scrape::{metrics_page, sample};
use cairn_proto::meta::VolumePolicy;

fn names(dir: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// Saves `name` the way torch.save-with-rename does.
fn save(dir: &std::path::Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.partial"));
    let mut f = std::fs::File::create(&tmp).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::rename(&tmp, dir.join(name)).unwrap();
    // Records are ordered by their millisecond creation time.
    std::thread::sleep(Duration::from_millis(5));
}

async fn wait_for(dir: &std::path::Path, want: &[&str]) -> Result<()> {
    let want: BTreeSet<String> = want.iter().map(|s| (*s).to_string()).collect();
    let start = Instant::now();
    loop {
        let got = names(dir);
        if got == want {
            return Ok(());
        }
        ensure!(
            start.elapsed() < Duration::from_secs(15),
            "the directory holds {got:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marked_directory_keeps_its_newest_checkpoints_and_times_them() -> Result<()> {
    let _serial = cairn_jepsen::serial().await;
    let cluster = DataCluster::start(DataOpts::default()).await?;
    let client = cluster.client(ClientOptions::default()).await?;
    client
        .meta()
        .create_volume("ck", VolumePolicy::default())
        .await?;
    let cps = Checkpoints::new(client.clone(), "/ck/run");
    cps.set_keep(2).await?;
    ensure!(cps.keep().await? == Some(2));
    ensure!(cps.set_keep(0).await.is_err(), "keep 0 is refused");

    let metrics = format!("127.0.0.1:{}", cairn_jepsen::ports::free_port_run(1)?);
    let meta = cluster.meta.addrs();
    let mut m = Mount::start(
        &meta,
        &cluster.meta.dir().join("mnt"),
        &["--metrics-listen", &metrics],
    )?;
    let dir = m.path("ck/run");
    let body = |i: u8| vec![i; 300_000];

    // Four saves: the newest two stay.
    for i in 1..=4u8 {
        save(&dir, &format!("step-{i}.pt"), &body(i));
    }
    wait_for(&dir, &["step-3.pt", "step-4.pt"]).await?;
    let listed = cps.list().await?;
    let listed: Vec<(String, u64, Option<u32>)> = listed
        .into_iter()
        .map(|c| (c.name, c.size, c.crc32))
        .collect();
    ensure!(
        listed
            == [
                ("step-3.pt".to_string(), 300_000, None),
                ("step-4.pt".to_string(), 300_000, None)
            ],
        "published files are listed as checkpoints: {listed:?}"
    );

    // A save abandoned with an unlink is a failed save.
    let tmp = dir.join(".step-x.partial");
    std::fs::write(&tmp, b"half a checkpoint").unwrap();
    std::fs::remove_file(&tmp).unwrap();

    // A restore: the newest read whole through the mount.
    ensure!(std::fs::read(dir.join("step-4.pt"))? == body(4));

    // One this mount has open is not removed (it stays beyond the two
    // newest); once closed it goes with the next save.
    let held = std::fs::File::open(dir.join("step-3.pt"))?;
    save(&dir, "step-5.pt", &body(5));
    wait_for(&dir, &["step-3.pt", "step-4.pt", "step-5.pt"]).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(
        names(&dir).contains("step-3.pt"),
        "the open checkpoint was removed"
    );
    drop(held);
    save(&dir, "step-6.pt", &body(6));
    wait_for(&dir, &["step-5.pt", "step-6.pt"]).await?;

    // The API follows the same rule in the same directory.
    cps.save("api", bytes::Bytes::from(body(7)), Default::default())
        .await?;
    wait_for(&dir, &["step-6.pt", "api"]).await?;
    ensure!(cps.load("api").await?.1 == body(7));

    let page = metrics_page(&metrics).await?;
    let ok = sample(
        &page,
        "cairn_client_checkpoint_saves_total{volume=\"ck\",result=\"ok\"}",
    );
    let failed = sample(
        &page,
        "cairn_client_checkpoint_saves_total{volume=\"ck\",result=\"error\"}",
    );
    let timed = sample(
        &page,
        "cairn_client_checkpoint_save_seconds_count{volume=\"ck\"}",
    );
    let restored = sample(
        &page,
        "cairn_client_checkpoint_restore_seconds_count{volume=\"ck\"}",
    );
    ensure!(
        ok == Some(6.0) && timed == Some(6.0) && failed == Some(1.0),
        "six saves timed and one failure: ok {ok:?}, timed {timed:?}, failed {failed:?}\n{page}"
    );
    ensure!(
        restored >= Some(1.0),
        "the restore was timed: {restored:?}\n{page}"
    );
    m.stop()?;
    Ok(())
}
