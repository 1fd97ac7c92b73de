//! `cairn dev` end to end: the real binary starts 3 meta replicas and 3
//! chunkservers, prints how to reach them, stores data written through a
//! 3-replica chain on every replica, and stops cleanly on SIGINT.

mod common;

use std::time::Duration;

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
