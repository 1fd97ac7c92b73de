//! Volume snapshots through real processes (issue 17): three meta
//! replicas, three chunkservers and a client.
//!
//! What is proven here so far is the fence of DESIGN §3: a snapshot is
//! ready only once every chunkserver refuses writes under an older snapshot
//! seq, and writers that started before it carry on after it (they refresh
//! the chain table and write under the new seq), losing nothing.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use bytes::Bytes;
use cairn_client::data::{DataPool, into_result, write_request};
use cairn_client::{ClientOptions, ErrorCode};
use cairn_jepsen::data_cluster::{DataCluster, DataOpts};
use cairn_proto::chain::ChainView;
use cairn_proto::ids::{ChainId, ChainVersion, ChunkId, ObjectId};
use cairn_proto::meta::VolumePolicy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_ready_once_chunkservers_fence_and_writers_carry_on() -> Result<()> {
    let _serial = cairn_jepsen::serial().await;
    let cluster = DataCluster::start(DataOpts::default()).await?;
    let client = cluster.client(ClientOptions::default()).await?;
    client
        .meta()
        .create_volume("data", VolumePolicy::default())
        .await?;
    // A writer opened before the snapshot and still writing after it.
    let f = client.create("/data/log").await?;
    f.write_at(0, Bytes::from(vec![1u8; 1 << 20])).await?;

    let started = Instant::now();
    let s = client.meta().create_snapshot("data", "before").await?;
    ensure!(s.ready, "a snapshot is answered once ready: {s:?}");
    println!("[test] snapshot ready in {:?}", started.elapsed());
    let listed = client.meta().list_snapshots("data").await?;
    ensure!(
        listed.len() == 1 && listed[0].ready && listed[0].seq == s.seq,
        "{listed:?}"
    );

    // The writer's next writes carry the new seq after one refresh.
    f.write_at(1 << 20, Bytes::from(vec![2u8; 1 << 20])).await?;
    f.set_len(3 << 19).await?;
    f.close().await?;
    let back = client.read_file("/data/log").await?;
    ensure!(back.len() == 3 << 19);
    ensure!(back[..1 << 20].iter().all(|b| *b == 1));
    ensure!(back[1 << 20..].iter().all(|b| *b == 2));

    // Another volume without snapshots writes as before.
    client
        .meta()
        .create_volume("other", VolumePolicy::default())
        .await?;
    client
        .write_file("/other/f", Bytes::from_static(b"no snapshot here"))
        .await?;

    // A second snapshot with the same name answers the first.
    let again = client.meta().create_snapshot("data", "before").await?;
    ensure!(again.seq == s.seq);

    // A write under a stale seq straight to the chunk's head is refused.
    let attr = client.stat("/data/log").await?;
    let layout = attr.layout.expect("a file has a layout");
    let view = ChainView::from_pb(&cluster.chains().await?);
    ensure!(view.snap_seq == s.seq, "the chain table carries the seq");
    let chain = layout.chains[0];
    let c = view.chain(chain).expect("the chain");
    let chunk = ChunkId {
        object: ObjectId(layout.object_id),
        index: 0,
    };
    let head = c.members.first().expect("a head").chunkserver;
    let addr = view.shard_addr(head, chunk).expect("the head's address");
    let req = write_request(
        ChainId(chain),
        ChainVersion(c.version),
        chunk,
        0,
        Bytes::from(vec![9u8; 4096]),
        attr.ino,
        1,
        s.seq - 1,
    );
    let pool = DataPool::new(Duration::from_secs(2));
    let r = pool
        .call(&addr, req, Duration::from_secs(5))
        .await
        .and_then(into_result);
    ensure!(
        matches!(&r, Err(e) if e.code() == ErrorCode::StaleSnapSeq),
        "a write under an older snapshot seq must be refused: {r:?}"
    );
    ensure!(
        client.read_file("/data/log").await? == back,
        "nothing changed"
    );
    Ok(())
}
