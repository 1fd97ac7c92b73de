//! Crash consistency of the chunk engine under `kill -9`.
//!
//! The parent test re-runs this test binary as a child (selected by an
//! environment variable) that writes random versions to a few chunks
//! (`write_pending` then `commit`, or then a non-durable `commit_through`,
//! or `write_committed`; four chunks concurrently so syncs are
//! group-committed) and prints every acknowledgement on stdout. The parent
//! SIGKILLs it at a random moment, reopens the target and checks:
//!
//! * every acknowledged (durable) commit is there, and the committed bytes
//!   are those of the version the child acknowledged under that number;
//! * every acknowledged pending version is there (pending or committed),
//!   a non-durable commit counting only as pending;
//! * every stored block of every chunk, committed or pending, matches its
//!   CRC: no torn or overwritten block is referenced.
//!
//! Then the next child resumes from what is on disk. Several rounds.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use cairn_chunkserver::store::{ReadMode, ShardStore, Snap, Target, layout};
use cairn_proto::ids::{ChunkId, ObjectId};
use rand::{Rng, SeedableRng};

const CHILD_ENV: &str = "CAIRN_STORE_CRASH_CHILD";
const CHUNKS: u64 = 4;
const ROUNDS: usize = 6;

fn chunk(o: u64) -> ChunkId {
    ChunkId {
        object: ObjectId(o),
        index: 0,
    }
}

/// The client's per-segment CRCs, as the data-plane frame carries them.
fn crcs(offset: u64, data: &[u8]) -> Vec<u32> {
    cairn_proto::frame::segment_crcs(offset, data)
}

fn run<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .spawn(f)
        .expect("spawn executor")
        .join()
        .expect("executor");
}

async fn read_all(s: &ShardStore, c: ChunkId) -> Vec<u8> {
    s.read(c, 0, layout::CHUNK_MAX, ReadMode::Committed)
        .await
        .expect("read whole chunk")
        .data
        .to_vec()
}

fn ack(line: String) {
    let mut out = std::io::stdout().lock();
    // A line per write(2): the parent sees exactly what was printed before
    // the kill.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The child: resume from disk, then write forever (until killed).
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let seed: u64 = std::env::var("CAIRN_STORE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    run(move || async move {
        let t = Target::open(Path::new(&dir)).expect("open");
        let s = Rc::new(t.open_shard(0).await.expect("shard"));
        let mut tasks = Vec::new();
        for o in 1..=CHUNKS {
            let s = s.clone();
            tasks.push(glommio::spawn_local(async move {
                let c = chunk(o);
                let mut version = 0;
                if let Some(st) = s.stat(c).expect("stat") {
                    version = st.committed_version;
                    for v in st.pending_versions {
                        s.commit(c, v).await.expect("commit leftover");
                        version = v;
                    }
                }
                let mut model = if version > 0 {
                    read_all(&s, c).await
                } else {
                    Vec::new()
                };
                ack(format!(
                    "C {o} {version} {} {}",
                    crc32fast::hash(&model),
                    model.len()
                ));
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 100 + o);
                let start = Instant::now();
                while start.elapsed() < Duration::from_secs(30) {
                    version += 1;
                    // 0: write_committed; 1: non-durable commit; else durable.
                    let how = rng.random_range(0..4);
                    if rng.random_range(0..20) == 0 && !model.is_empty() {
                        let new_len = rng.random_range(0..model.len() as u64);
                        model.truncate(new_len as usize);
                        s.truncate(c, version, new_len, Snap::default())
                            .await
                            .expect("truncate");
                    } else {
                        let off = rng.random_range(0..64 * 1024u64);
                        let len = rng.random_range(1..20_000usize);
                        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                        let end = off as usize + len;
                        if model.len() < end {
                            model.resize(end, 0);
                        }
                        model[off as usize..end].copy_from_slice(&data);
                        if how == 0 {
                            s.write_committed(c, version, off, &data, &crcs(off, &data))
                                .await
                                .expect("write committed");
                            let h = crc32fast::hash(&model);
                            ack(format!("C {o} {version} {h} {}", model.len()));
                            continue;
                        }
                        s.write_pending(c, version, off, &data, &crcs(off, &data))
                            .await
                            .expect("write");
                    }
                    let h = crc32fast::hash(&model);
                    ack(format!("P {o} {version} {h} {}", model.len()));
                    if how == 1 {
                        // Visible, not yet durable: a pending-level ack.
                        s.commit_through(c, version, false)
                            .await
                            .expect("non-durable commit");
                        ack(format!("N {o} {version} {h} {}", model.len()));
                    } else {
                        s.commit(c, version).await.expect("commit");
                        ack(format!("C {o} {version} {h} {}", model.len()));
                    }
                }
            }));
        }
        for t in tasks {
            t.await;
        }
    });
}

#[derive(Debug, Default, Clone)]
struct Acks {
    /// Newest acknowledged committed version.
    committed: u64,
    /// Newest acknowledged pending version.
    pending: u64,
    /// Content (crc, len) of each acknowledged version.
    content: HashMap<u64, (u32, usize)>,
}

fn parse(lines: &[String], acks: &mut HashMap<u64, Acks>) -> usize {
    let mut n = 0;
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [kind @ ("P" | "N" | "C"), o, v, h, len] = f[..] else {
            continue;
        };
        let (Ok(o), Ok(v), Ok(h), Ok(len)) = (
            o.parse::<u64>(),
            v.parse::<u64>(),
            h.parse::<u32>(),
            len.parse::<usize>(),
        ) else {
            continue;
        };
        n += 1;
        let a = acks.entry(o).or_default();
        a.content.insert(v, (h, len));
        if kind == "C" {
            a.committed = a.committed.max(v);
        }
        a.pending = a.pending.max(v);
    }
    n
}

fn verify(dir: PathBuf, acks: &HashMap<u64, Acks>) {
    let acks: Vec<(u64, Acks)> = acks.iter().map(|(o, a)| (*o, a.clone())).collect();
    run(move || async move {
        let t = Target::open(&dir).expect("reopen after kill");
        let s = t.open_shard(0).await.expect("shard after kill");
        for (o, a) in acks {
            let Acks {
                committed,
                pending,
                content,
            } = a;
            let c = chunk(o);
            let Some(st) = s.stat(c).expect("stat") else {
                assert_eq!(pending, 0, "chunk {o} lost");
                continue;
            };
            assert!(
                st.committed_version >= committed,
                "chunk {o}: committed {} < acknowledged {committed}",
                st.committed_version
            );
            let newest = st.committed_version + st.pending_versions.len() as u64;
            assert!(
                newest >= pending,
                "chunk {o}: newest {newest} < acked pending {pending}"
            );
            let data = read_all(&s, c).await;
            let want = content.get(&st.committed_version).copied();
            // An unacknowledged version may be durable (killed between the
            // flush and the print) and a resuming child commits leftovers;
            // only such a version, newer than every ack, may be unknown.
            assert!(
                want.is_some() || st.committed_version == 0 || st.committed_version > pending,
                "chunk {o}: committed version {} has no acknowledged content",
                st.committed_version
            );
            if let Some((h, len)) = want {
                assert_eq!(
                    data.len(),
                    len,
                    "chunk {o} v{} length",
                    st.committed_version
                );
                assert_eq!(
                    crc32fast::hash(&data),
                    h,
                    "chunk {o} v{} bytes",
                    st.committed_version
                );
            }
            let report = s.scrub_chunk(c).await.expect("scrub");
            assert!(report.bad_blocks.is_empty(), "chunk {o}: {report:?}");
        }
        s.close().await.expect("close");
    });
}

#[test]
fn kill_9_never_loses_acknowledged_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    Target::format(dir.path(), 1).expect("format");
    let exe = std::env::current_exe().expect("test binary");
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    let mut acks: HashMap<u64, Acks> = HashMap::new();
    let mut total = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env("CAIRN_STORE_CRASH_SEED", (round + 1).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let reader = std::thread::spawn(move || {
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        // Let it start (sled open, resume) and then write for a while.
        std::thread::sleep(Duration::from_millis(rng.random_range(400..1600)));
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        assert!(!status.success(), "child ended on its own: {status}");
        let lines = reader.join().expect("reader");
        let n = parse(&lines, &mut acks);
        total += n;
        eprintln!("round {round}: {n} acknowledgements");
        verify(dir.path().to_path_buf(), &acks);
    }
    assert!(total > 50, "children acknowledged only {total} operations");
}
