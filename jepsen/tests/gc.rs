//! Garbage collection end to end: deleted files' chunks leave every
//! replica's disk after the grace period (checked replica by replica on
//! the data plane), not before; a file unlinked while open stays readable
//! through its handle until it is closed; files created while the
//! collector runs, and files never deleted, keep all their replicas.
//! Files that never held data cost the collector no request, written ones
//! one per chunk, and the collector keeps to its removal rate. A full
//! cluster refuses writes at once with NO_SPACE and loses nothing, and
//! takes writes again once deleted files are collected.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use cairn_client::data::DataPool;
use cairn_client::{Client, ClientOptions, OpenOptions};
use cairn_jepsen::data_cluster::{DataCluster, DataOpts, pattern};
use cairn_jepsen::replicas::holds;
use cairn_proto::chain::ChainView;
use cairn_proto::meta::{Layout, VolumePolicy};
use futures::StreamExt;

const SIZE: usize = 16 << 10;
const GRACE: Duration = Duration::from_secs(3);

/// A cluster started with `opts`, a client, and the volume `/gc`.
async fn start(opts: DataOpts) -> Result<(DataCluster, Client)> {
    let cluster = DataCluster::start(opts).await?;
    let client = cluster.client(ClientOptions::default()).await?;
    client
        .meta()
        .create_volume("gc", VolumePolicy::default())
        .await?;
    Ok((cluster, client))
}

/// How many replicas of the file's first chunk hold it.
async fn replicas_holding(view: &ChainView, pool: &DataPool, l: &Layout) -> Result<usize> {
    let c = view.chain(l.chains[0]).expect("chain in table");
    let mut n = 0;
    for m in &c.members {
        n += usize::from(holds(view, pool, m.chunkserver, l, 0).await?);
    }
    Ok(n)
}

async fn write_files(c: &Client, range: std::ops::Range<u64>) {
    futures::stream::iter(range)
        .map(|i| async move {
            c.write_file(&format!("/gc/f{i}"), pattern(i, SIZE))
                .await
                .unwrap();
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
}

async fn layouts(c: &Client, range: std::ops::Range<u64>) -> Vec<Layout> {
    let mut out = Vec::new();
    for i in range {
        let a = c.stat(&format!("/gc/f{i}")).await.unwrap();
        out.push(a.layout.expect("a file has a layout"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_files_leave_every_disk_after_the_grace_period() -> Result<()> {
    let _serial = cairn_jepsen::serial().await;
    let (cluster, client) = start(DataOpts {
        meta_args: vec!["--gc-grace".into(), format!("{}ms", GRACE.as_millis())],
        ..DataOpts::default()
    })
    .await?;
    write_files(&client, 0..1000).await;
    let all = layouts(&client, 0..1000).await;
    let view = ChainView::from_pb(&cluster.chains().await?);
    let pool = DataPool::new(Duration::from_secs(2));
    for l in &all {
        ensure!(
            replicas_holding(&view, &pool, l).await? == 3,
            "a new file lacks a replica"
        );
    }

    // f0..f9 stay; f10 is unlinked while open; f11..f999 are deleted while
    // f1000..f1099 are being created.
    let held = client.open("/gc/f10", OpenOptions::WRITE).await?;
    client.remove_file("/gc/f10").await?;
    let creator = {
        let c = cluster.client(ClientOptions::default()).await?;
        tokio::spawn(async move { write_files(&c, 1000..1100).await })
    };
    futures::stream::iter(11..1000u64)
        .map(|i| {
            let c = &client;
            async move { c.remove_file(&format!("/gc/f{i}")).await.unwrap() }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let deleted_at = Instant::now();
    // The last ones deleted are still on every replica: the grace period.
    for l in &all[980..1000] {
        let n = replicas_holding(&view, &pool, l).await?;
        ensure!(
            n == 3 || deleted_at.elapsed() >= GRACE,
            "a chunk was removed before the grace period ({n} replicas left)"
        );
    }
    // Then every deleted file leaves every replica.
    let deadline = Instant::now() + GRACE + Duration::from_secs(60);
    loop {
        let mut left = 0;
        for l in &all[11..1000] {
            left += replicas_holding(&view, &pool, l).await?;
        }
        if left == 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{left} replicas of deleted files remain"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "989 deleted files left all 3 replicas {:.1}s after the last delete (grace {GRACE:?})",
        deleted_at.elapsed().as_secs_f64()
    );
    creator.await?;

    // Never-deleted and newly created files: every replica, right bytes.
    let mut live: Vec<(u64, Layout)> = (0..10).map(|i| (i, all[i as usize].clone())).collect();
    live.extend((1000..1100).zip(layouts(&client, 1000..1100).await));
    for (i, l) in &live {
        ensure!(
            replicas_holding(&view, &pool, l).await? == 3,
            "live file f{i} lost a replica"
        );
        let got = client.read_file(&format!("/gc/f{i}")).await?;
        ensure!(got == pattern(*i, SIZE), "live file f{i} reads back wrong");
    }

    // The unlinked-but-open file outlived the grace period.
    let got = held.read_at(0, SIZE).await?;
    ensure!(got == pattern(10, SIZE), "the open, unlinked file changed");
    ensure!(replicas_holding(&view, &pool, &all[10]).await? == 3);
    held.close().await?;
    let closed_at = Instant::now();
    while replicas_holding(&view, &pool, &all[10]).await? > 0 {
        ensure!(
            closed_at.elapsed() < GRACE + Duration::from_secs(60),
            "the closed, unlinked file was never collected"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// The value of the unlabelled sample `name` on the meta replica's
/// Prometheus page at `addr`.
async fn meta_metric(addr: &str, name: &str) -> Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await?;
    let mut page = String::new();
    s.read_to_string(&mut page).await?;
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {name} on {addr}/metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_written_chunks_cost_no_removal_and_the_collector_keeps_its_rate() -> Result<()> {
    let _serial = cairn_jepsen::serial().await;
    let metrics = format!("127.0.0.1:{}", cairn_jepsen::ports::free_port_run(1)?);
    const RATE: u64 = 5;
    let (cluster, client) = start(DataOpts {
        metas: 1,
        meta_args: vec![
            "--gc-grace".into(),
            "1s".into(),
            "--gc-chunks-per-sec".into(),
            RATE.to_string(),
            "--metrics-listen".into(),
            metrics.clone(),
        ],
        ..DataOpts::default()
    })
    .await?;
    // 200 empty files (created, or opened for write and closed unwritten),
    // then 20 written ones.
    const EMPTY: u64 = 200;
    const WRITTEN: u64 = 20;
    futures::stream::iter(0..EMPTY)
        .map(|i| {
            let c = &client;
            async move {
                let f = c.create(&format!("/gc/f{i}")).await.unwrap();
                f.close().await.unwrap();
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    write_files(&client, EMPTY..EMPTY + WRITTEN).await;
    let written = layouts(&client, EMPTY..EMPTY + WRITTEN).await;
    let view = ChainView::from_pb(&cluster.chains().await?);
    let pool = DataPool::new(Duration::from_secs(2));
    for i in 0..EMPTY + WRITTEN {
        client.remove_file(&format!("/gc/f{i}")).await?;
    }
    let deleted_at = Instant::now();

    let total = EMPTY + WRITTEN;
    let mut first_removal = None;
    loop {
        let objects = meta_metric(&metrics, "cairn_meta_gc_objects_collected_total").await?;
        let chunks = meta_metric(&metrics, "cairn_meta_gc_chunk_removals_total").await?;
        if chunks > 0 && first_removal.is_none() {
            first_removal = Some(Instant::now());
        }
        if objects == total {
            // One removal per written chunk (16 KiB files: one chunk each),
            // none for the empty files or for stripe slots never written.
            ensure!(
                chunks == WRITTEN,
                "{chunks} chunk removals for {WRITTEN} one-chunk files and {EMPTY} empty ones"
            );
            break;
        }
        ensure!(
            deleted_at.elapsed() < Duration::from_secs(60),
            "only {objects} of {total} deleted objects collected after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 20 removals at 5 a second take at least 4 rounds, a second apart.
    let spread = first_removal.expect("removals were seen").elapsed();
    ensure!(
        spread >= Duration::from_millis(2500),
        "{WRITTEN} removals at {RATE}/s were done within {spread:?}"
    );
    for l in &written {
        ensure!(
            replicas_holding(&view, &pool, l).await? == 0,
            "a deleted file's chunk is still on a replica"
        );
    }
    Ok(())
}

/// Fills a cluster started with `opts` with 1 MiB files: a write is
/// refused at once with NO_SPACE and a message that says so, no
/// chunkserver exits, every file written before reads back whole, the
/// refused file holds nothing of the refused write, and once the files are
/// deleted and collected, writes succeed again.
async fn fill_check_and_free(opts: DataOpts, what: &str) -> Result<()> {
    const FILE: usize = 1 << 20;
    let (mut cluster, client) = start(DataOpts {
        meta_args: vec!["--gc-grace".into(), "1s".into()],
        ..opts
    })
    .await?;
    let name = |i: usize| format!("/gc/full{i}");
    let mut written = 0;
    let (e, took) = loop {
        ensure!(written < 200, "200 MiB went into {what}");
        let t = Instant::now();
        match client
            .write_file(&name(written), pattern(written as u64, FILE))
            .await
        {
            Ok(()) => written += 1,
            Err(e) => break (e, t.elapsed()),
        }
    };
    println!("[test] {what}: {written} files of 1 MiB written, then refused after {took:?}: {e}");
    ensure!(written > 0, "nothing was written: {e}");
    ensure!(
        e.code == cairn_client::ErrorCode::NoSpace,
        "{what} answered {:?}: {e}",
        e.code
    );
    ensure!(took < Duration::from_secs(10), "the refusal took {took:?}");
    for i in 0..3 {
        ensure!(
            cluster.exited(i).is_none(),
            "chunkserver {i} exited when it filled: {:?}",
            cluster.exited(i)
        );
    }
    for i in 0..written {
        ensure!(
            client.read_file(&name(i)).await? == pattern(i as u64, FILE),
            "{} changed when {what} filled",
            name(i)
        );
    }
    let refused = client.stat(&name(written)).await?;
    ensure!(
        refused.size == 0,
        "the refused write left {} bytes",
        refused.size
    );
    // Space comes back once files are deleted and collected.
    for i in 0..=written {
        client.remove_file(&name(i)).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.write_file(&name(1000), pattern(1000, FILE)).await {
            Ok(()) => break,
            Err(e) if e.code == cairn_client::ErrorCode::NoSpace && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    ensure!(client.read_file(&name(1000)).await? == pattern(1000, FILE));
    Ok(())
}

/// [`fill_check_and_free`] with chunkservers at a 24 MiB capacity (the
/// `--capacity` they were given).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_cluster_refuses_writes_clearly_and_loses_nothing() -> Result<()> {
    let _serial = cairn_jepsen::serial().await;
    let opts = DataOpts {
        capacity: "24MiB".into(),
        ..DataOpts::default()
    };
    fill_check_and_free(opts, "24 MiB chunkservers").await
}

/// Through a mount, a writer filling a full cluster gets ENOSPC from
/// `write(2)` soon after the first background write of its data is
/// refused, and again from `fsync(2)`: before, a refused piece
/// was noticed only once four later pieces had pushed it out of the
/// write-back window, and up to 32 MiB more were taken for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_filling_a_full_cluster_through_a_mount_gets_enospc_from_write() -> Result<()> {
    let _serial = cairn_jepsen::serial().await;
    let (cluster, _client) = start(DataOpts {
        capacity: "24MiB".into(),
        ..DataOpts::default()
    })
    .await?;
    let dir = cluster.meta.dir().join("mnt");
    let mount =
        cairn_jepsen::fuse::Mount::start(&cluster.meta.addrs(), &dir, &["--volume", "/gc"])?;
    let p = mount.path("big");
    let (failed, fsync) = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut f = std::fs::File::create(&p)?;
        let buf = vec![7u8; 1 << 20];
        let mut failed = None;
        for mib in 0..64 {
            if let Err(e) = f.write_all(&buf) {
                failed = Some((mib, e));
                break;
            }
            // A cluster that takes 1 MiB in a few ms: pace the writer so
            // a refused piece has ended before the window fills.
            std::thread::sleep(Duration::from_millis(20));
        }
        anyhow::Ok((failed, f.sync_all()))
    })
    .await??;
    println!("[test] write refused: {failed:?}; then fsync: {fsync:?}");
    let (mib, e) = failed.ok_or_else(|| anyhow::anyhow!("64 MiB went into a 24 MiB cluster"))?;
    ensure!(
        e.raw_os_error() == Some(28),
        "the refused write said {e} (want ENOSPC)"
    );
    ensure!(
        mib < 48,
        "the first refused write(2) came only after {mib} MiB were taken"
    );
    // The writer that goes on to fsync learns it too.
    ensure!(
        fsync.as_ref().err().and_then(std::io::Error::raw_os_error) == Some(28),
        "fsync after the refused write said {fsync:?}"
    );
    Ok(())
}

/// [`fill_check_and_free`] with disks that really fill: each data
/// directory is an ext4 file system of 64 MiB (a loop device) while each
/// chunkserver reports 8 GiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunkservers_whose_disks_fill_refuse_writes_and_lose_nothing() -> Result<()> {
    let _serial = cairn_jepsen::serial().await;
    let opts = DataOpts {
        disk_bytes: Some(64 << 20),
        ..DataOpts::default()
    };
    fill_check_and_free(opts, "64 MiB disks").await
}
