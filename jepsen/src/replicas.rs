//! Replica-by-replica checks on the data plane: for every chunk of a file,
//! ask each member of its chain directly (Stat, then a Read whose stored
//! blocks the replica checks against their CRCs on disk and whose reply the
//! client checks again), so a test sees the replication a user relies on,
//! not what one read happens to return.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use cairn_client::Client;
use cairn_client::data::{DataPool, into_result, read_request, stat_request, verify_read_reply};
use cairn_proto::chain::{ChainView, MemberState};
use cairn_proto::ids::{ChainId, ChainVersion, ChunkId, ObjectId};

use crate::data_cluster::DataCluster;

/// Bytes per Read (below the frame limit).
const PIECE: u64 = 8 << 20;

/// What [`verify_replicas`] checked.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaCheck {
    /// Chunks checked.
    pub chunks: usize,
    /// Replicas read (chunks × members).
    pub replicas: usize,
    /// The lowest committed version any checked chunk is at.
    pub min_version: u64,
}

/// Checks that every chunk of each file in `paths` has exactly `want`
/// serving replicas, none on a chunkserver in `not_on`, every replica at
/// the same version and length, with identical bytes that pass their CRCs
/// on the replica and on arrival, equal to `expected(path)` where given.
///
/// # Errors
/// The first chunk that falls short, with what was found.
pub async fn verify_replicas(
    cluster: &DataCluster,
    client: &Client,
    paths: &[String],
    want: usize,
    not_on: &[u64],
    expected: impl Fn(&str) -> Option<Bytes>,
) -> Result<ReplicaCheck> {
    let view = ChainView::from_pb(&cluster.chains().await?);
    let pool = DataPool::new(Duration::from_secs(2));
    let mut check = ReplicaCheck::default();
    for path in paths {
        let attr = client.stat(path).await.with_context(|| path.clone())?;
        let layout = attr.layout.context("a file has a layout")?;
        let want_bytes = expected(path);
        let chunk_size = layout.chunk_size.max(1);
        let nchunks = attr.size.div_ceil(chunk_size);
        for i in 0..nchunks {
            let chain_id = layout.chains[(i % layout.chains.len() as u64) as usize];
            let chain = view
                .chain(chain_id)
                .with_context(|| format!("chain {chain_id} is not in the table"))?;
            let serving: Vec<_> = chain
                .members
                .iter()
                .filter(|m| m.state == MemberState::Serving)
                .collect();
            ensure!(
                serving.len() == want && chain.members.len() == want,
                "{path} chunk {i}: chain {chain_id} has {} members, {} serving, want {want}: {:?}",
                chain.members.len(),
                serving.len(),
                chain.members
            );
            let chunk = ChunkId {
                object: ObjectId(layout.object_id),
                index: i,
            };
            let (cid, cv) = (ChainId(chain_id), ChainVersion(chain.version));
            let mut seen: Option<(u64, u64, Bytes)> = None;
            for m in &serving {
                ensure!(
                    !not_on.contains(&m.chunkserver),
                    "{path} chunk {i}: chain {chain_id} still has a member on chunkserver {}",
                    m.chunkserver
                );
                let addr = view
                    .shard_addr(m.chunkserver, chunk)
                    .context("member address")?;
                let st = pool
                    .call(&addr, stat_request(cid, cv, chunk), Duration::from_secs(5))
                    .await
                    .and_then(into_result)
                    .with_context(|| format!("{path} chunk {i}: Stat at target {}", m.target))?;
                let (version, len) = (st.header.version, st.header.offset);
                let mut data = bytes::BytesMut::with_capacity(usize::try_from(len)?);
                let mut off = 0u64;
                while off < len {
                    let n = (len - off).min(PIECE);
                    let r = pool
                        .call(
                            &addr,
                            read_request(cid, cv, chunk, off, u32::try_from(n)?),
                            Duration::from_secs(10),
                        )
                        .await
                        .and_then(into_result)
                        .with_context(|| {
                            format!("{path} chunk {i}: Read at target {}", m.target)
                        })?;
                    verify_read_reply(&r)
                        .with_context(|| format!("{path} chunk {i}: CRC at target {}", m.target))?;
                    ensure!(r.payload.len() as u64 == n, "{path} chunk {i}: short read");
                    data.extend_from_slice(&r.payload);
                    off += n;
                }
                let data = data.freeze();
                match &seen {
                    None => seen = Some((version, len, data)),
                    Some((v0, l0, b0)) => {
                        if (*v0, *l0) != (version, len) || *b0 != data {
                            bail!(
                                "{path} chunk {i}: target {} holds version {version} ({len} bytes), \
                                 another replica version {v0} ({l0} bytes){}",
                                m.target,
                                if *b0 == data { "" } else { " with other bytes" }
                            );
                        }
                    }
                }
                check.replicas += 1;
            }
            if let Some((v, _, _)) = &seen {
                check.min_version = if check.chunks == 0 {
                    *v
                } else {
                    check.min_version.min(*v)
                };
            }
            if let (Some(all), Some((_, _, got))) = (&want_bytes, &seen) {
                let start = (i * chunk_size) as usize;
                let end = (start + chunk_size as usize).min(all.len());
                ensure!(
                    got[..] == all[start..end],
                    "{path} chunk {i}: the replicas agree but differ from what was written"
                );
            }
            check.chunks += 1;
        }
    }
    Ok(check)
}

/// Whether chunkserver `chunkserver` holds chunk `index` of the file laid
/// out as `layout` (a Stat at its shard, on the data plane); the
/// chunkserver must be a member of the chunk's chain in `view`.
///
/// # Errors
/// The chain or the address is unknown, or the Stat failed otherwise
/// than NOT_FOUND.
pub async fn holds(
    view: &ChainView,
    pool: &DataPool,
    chunkserver: u64,
    layout: &cairn_proto::meta::Layout,
    index: u64,
) -> Result<bool> {
    let chain = layout.chains[(index % layout.chains.len() as u64) as usize];
    let c = view.chain(chain).context("chain in the table")?;
    let chunk = ChunkId {
        object: ObjectId(layout.object_id),
        index,
    };
    let addr = view.shard_addr(chunkserver, chunk).context("address")?;
    // A chunkserver that has just restarted may answer its first requests
    // late (its shards open their stores); ask up to three times.
    let mut attempt = 0;
    loop {
        attempt += 1;
        match pool
            .call(
                &addr,
                stat_request(ChainId(chain), ChainVersion(c.version), chunk),
                Duration::from_secs(5),
            )
            .await
            .and_then(into_result)
        {
            Ok(_) => return Ok(true),
            Err(e) if e.code() == cairn_client::ErrorCode::NotFound => return Ok(false),
            Err(e) if attempt < 3 => {
                eprintln!("stat of {chunk} at {addr}: {e}; asking again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => bail!("stat of {chunk} at {addr} ({attempt} tries): {e}"),
        }
    }
}

/// Flips bits (`xor`) of the byte `at` bytes into the stored copy of
/// `needle` in the chunkserver target at `dir`, behind the chunkserver's
/// back (a disk corrupting a block), and syncs it.
///
/// # Errors
/// `needle` is not on that disk, or the file cannot be written.
pub fn corrupt_on_disk(dir: &std::path::Path, needle: &[u8], at: u64, xor: u8) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let (file, pos) = find_on_disk(dir, needle)
        .with_context(|| format!("the block on the disk of {}", dir.display()))?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file)?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, pos + at)?;
    f.write_all_at(&[b[0] ^ xor], pos + at)?;
    f.sync_all()?;
    Ok(())
}

/// Finds `needle` in the shard data files of the chunkserver target at
/// `dir`; returns the file and the offset.
pub fn find_on_disk(dir: &std::path::Path, needle: &[u8]) -> Option<(std::path::PathBuf, u64)> {
    for e in std::fs::read_dir(dir.join("data")).ok()? {
        let p = e.ok()?.path();
        let bytes = std::fs::read(&p).ok()?;
        if let Some(pos) = bytes.windows(needle.len()).position(|w| w == needle) {
            return Some((p, pos as u64));
        }
    }
    None
}
