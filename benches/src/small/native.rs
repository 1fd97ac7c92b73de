//! The native side of the `small` workload: the same phases through
//! [`cairn_client::Client`] in this process, as a program using the
//! library writes them — one client (no block cache, so every read
//! reaches a chunkserver) shared by the phase's tokio tasks, each task in
//! its own directory for the namespace phases.
//!
//! Calls, and the meta round trips each makes. Paths are resolved from the
//! client's path cache under meta's lease (`MetaClientOptions::
//! cache_leases`, on in `ClientOptions`' default), so a parent or a file
//! the client resolved or made before costs nothing; the first time, or
//! with `--native-path-cache off`, each costs one resolve on meta:
//!
//! | phase | call | round trips |
//! |---|---|---|
//! | create | `Client::create` + `File::close` | (resolve parent), create (registered open for write); the close's release is batched |
//! | stat | `Client::stat` | (resolve): none for a file this client created |
//! | rename | `Client::rename` | (resolve both parents), rename |
//! | unlink | `Client::remove_file` | (resolve parent), unlink |
//! | mkdir | `MetaClient::parent_dir` + `MetaClient::mkdir` (the client's own is `mkdir -p`) | (resolve parent), mkdir |
//! | rmdir | `Client::remove_dir` | (resolve parent), rmdir |
//! | write, read | `Client::write_file`, `Client::read_file` (the `client` workload's [`cairn::write_small`], [`cairn::read_small`]) | as create and close, plus the data |

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use cairn_client::{Client, Owner};

use super::{Job, Op};
use crate::client::cairn::{self, in_tasks};
use crate::latency::Samples;
use crate::measure::Measured;
use crate::meta::local::dir_name;
use crate::meta::{file_name, renamed_name};
use crate::servers::Servers;

/// The native client and the directories it works in.
#[derive(Clone)]
pub struct Native {
    client: Client,
    /// Directory holding everything the native side makes.
    root: Arc<str>,
    /// Where the read phases read (`root` unless [`Native::reading`]).
    reads: Arc<str>,
}

/// Returns the directory of task `k` of the phases with `threads` tasks.
fn task_dir(root: &str, threads: usize, k: usize) -> String {
    format!("{root}/x{threads}-{k}")
}

impl Native {
    /// Connects a client with no block cache (and its path cache when
    /// `path_cache`) and makes the tasks' directories under `root` (for 1
    /// and for `threads` tasks).
    ///
    /// # Errors
    /// When meta cannot be reached or a directory cannot be made.
    pub async fn new(
        servers: &Servers,
        root: &str,
        threads: usize,
        path_cache: bool,
    ) -> Result<Native> {
        let client = cairn::connect_with(servers, 0, |o| o.meta.cache_leases = path_cache).await?;
        let mut dirs = vec![task_dir(root, 1, 0)];
        if threads > 1 {
            dirs.extend((0..threads).map(|k| task_dir(root, threads, k)));
        }
        for d in &dirs {
            client
                .create_dir_all(d)
                .await
                .with_context(|| format!("creating {d}"))?;
        }
        Ok(Native {
            client,
            root: root.into(),
            reads: root.into(),
        })
    }

    /// The read phases read the small files under `root` instead: those
    /// another client wrote.
    #[must_use]
    pub fn reading(mut self, root: &str) -> Native {
        self.reads = root.into();
        self
    }

    /// Returns the client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Closes the client's session (a failure only warns: the session
    /// expires on meta anyway).
    pub async fn close(&self) {
        if let Err(e) = self.client.close().await {
            eprintln!("warning: closing the native client: {e}");
        }
    }

    /// Runs `job`.
    ///
    /// # Errors
    /// The first failed call, with its path.
    pub async fn run(&self, job: &Job) -> Result<Measured> {
        let dir = format!("{}/{}", self.root, job.small_dir());
        let (client, data) = (&self.client, job.data.clone());
        match job.op {
            Op::Write => cairn::write_small(client, &dir, job.count, job.threads, data).await,
            Op::Read | Op::Reread => {
                let dir = format!("{}/{}", self.reads, job.small_dir());
                cairn::read_small(client, &dir, &job.order, job.threads, data).await
            }
            op => {
                let (n, threads) = (job.count, job.threads);
                let (samples, elapsed) = in_tasks(threads, |k| {
                    let client = client.clone();
                    let dir = task_dir(&self.root, threads, k);
                    let order = job.order.clone();
                    async move { in_dir(&client, &dir, op, n, &order).await }
                })
                .await?;
                Ok(Measured::new(samples, 0, elapsed))
            }
        }
    }
}

/// Runs `n` operations `op` in directory `dir` (`order`: the files to
/// stat), one after the other.
async fn in_dir(client: &Client, dir: &str, op: Op, n: usize, order: &[usize]) -> Result<Samples> {
    let path = |name: String| format!("{dir}/{name}");
    match op {
        Op::Create => {
            Samples::time_each_async(0..n, |i| {
                let p = path(file_name(i));
                async move {
                    let f = client
                        .create(&p)
                        .await
                        .with_context(|| format!("creating {p}"))?;
                    f.close().await.with_context(|| format!("closing {p}"))
                }
            })
            .await
        }
        Op::Stat => {
            Samples::time_each_async(order, |&i| {
                let p = path(file_name(i));
                async move {
                    client
                        .stat(&p)
                        .await
                        .with_context(|| format!("stat of {p}"))?;
                    Ok(())
                }
            })
            .await
        }
        Op::Missing => {
            Samples::time_each_async(order, |&i| {
                let p = path(renamed_name(i));
                async move {
                    match client.stat(&p).await {
                        Err(e) if e.code == cairn_client::ErrorCode::NotFound => Ok(()),
                        Err(e) => Err(e).with_context(|| format!("stat of {p}")),
                        Ok(_) => anyhow::bail!("{p} exists"),
                    }
                }
            })
            .await
        }
        Op::Rename => {
            Samples::time_each_async(0..n, |i| {
                let (from, to) = (path(file_name(i)), path(renamed_name(i)));
                async move {
                    client
                        .rename(&from, &to)
                        .await
                        .with_context(|| format!("renaming {from} to {to}"))
                }
            })
            .await
        }
        Op::Unlink => {
            Samples::time_each_async(0..n, |i| {
                let p = path(renamed_name(i));
                async move {
                    client
                        .remove_file(&p)
                        .await
                        .with_context(|| format!("unlinking {p}"))
                }
            })
            .await
        }
        Op::Mkdir => {
            let (meta, mode, owner) = (client.meta(), client.options().dir_mode, Owner::current());
            Samples::time_each_async(0..n, |i| {
                let p = path(dir_name(i));
                async move {
                    let (parent, name) = meta
                        .parent_dir(&p)
                        .await
                        .with_context(|| format!("resolving the parent of {p}"))?;
                    meta.mkdir(parent, &name, mode, owner)
                        .await
                        .with_context(|| format!("mkdir {p}"))?;
                    Ok(())
                }
            })
            .await
        }
        Op::Rmdir => {
            Samples::time_each_async(0..n, |i| {
                let p = path(dir_name(i));
                async move {
                    client
                        .remove_dir(&p)
                        .await
                        .with_context(|| format!("rmdir {p}"))
                }
            })
            .await
        }
        Op::Write | Op::Read | Op::Reread => {
            bail!("{} is not a namespace operation", op.name())
        }
    }
}
