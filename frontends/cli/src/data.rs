//! The data-path session of the command line: the flags every command that
//! reads or writes file contents shares (`put`, `get`, `cat`, `cp`,
//! `checkpoint`), the [`ClientOptions`] built from them, and the
//! [`Client`] connected with those options.
//!
//! Namespace and admin commands talk to meta only (a [`cairn_client::MetaClient`]);
//! data commands need the whole [`Client`]: chain table, data-plane
//! connections and the block cache. The cache flags are therefore declared
//! on the data commands only (flattened into each, `global` so that
//! `cairn checkpoint save --cache-dir D ...` works after the subcommand),
//! not on the top-level command where `ls` would show them uselessly.
//!
//! With `--cache-dir` the client publishes its cache counters in that
//! directory (at least every 2 s and when it closes), which is what
//! `cairn cache stats` reads.
//!
//! `--key-file VOLUME=PATH` (or `CAIRN_KEY_FILES`) gives the client the
//! keys of an encrypted volume; they are checked against the volume at
//! connect, so a wrong key fails there, naming the volume.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cairn_client::cache::CacheConfig;
use cairn_client::crypto::KeyRing;
use cairn_client::{Client, ClientOptions, ErrorCode, MetaClientOptions};

/// Flags of the commands that move file contents.
#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// Local directory for the client's SSD cache tier; the client also
    /// publishes its cache counters there for `cairn cache stats`. Without
    /// it only the memory tier is used.
    #[arg(long, global = true, env = "CAIRN_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Size of the client's in-memory block cache (e.g. "64MiB", "1G"; 0
    /// turns the cache and read-ahead off).
    #[arg(
        long,
        global = true,
        default_value = "64MiB",
        value_name = "SIZE",
        value_parser = cairn_proto::units::parse_size
    )]
    pub cache_size: u64,

    /// Key file of an encrypted volume, as VOLUME=PATH (repeat the flag,
    /// or separate with commas in CAIRN_KEY_FILES). `cairn volume create
    /// --encrypted` writes the file; without it the volume's files cannot
    /// be read or written.
    #[arg(
        long = "key-file",
        global = true,
        env = "CAIRN_KEY_FILES",
        value_delimiter = ',',
        value_name = "VOLUME=PATH"
    )]
    pub key_files: Vec<String>,
}

/// Loads the key files of `--key-file VOLUME=PATH`.
///
/// # Errors
/// A malformed flag, or a key file that cannot be read or parsed (the
/// message names the volume and the file, never a key).
pub fn load_keys(specs: &[String]) -> anyhow::Result<Vec<Arc<KeyRing>>> {
    specs
        .iter()
        .filter(|s| !s.is_empty())
        .map(|spec| {
            let (volume, path) = spec
                .split_once('=')
                .filter(|(v, p)| !v.is_empty() && !p.is_empty())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--key-file {spec}: expected VOLUME=PATH, e.g. sec=/etc/cairn/sec.key"
                    )
                })?;
            let ring = KeyRing::from_file(volume, std::path::Path::new(path))
                .with_context(|| format!("--key-file {spec}"))?;
            Ok(Arc::new(ring))
        })
        .collect()
}

/// Returns the client options for `args`, with `timeout` as the deadline of
/// a metadata request across retries (as the namespace commands use it).
///
/// # Errors
/// As [`load_keys`].
pub fn client_options(args: &DataArgs, timeout: Duration) -> anyhow::Result<ClientOptions> {
    Ok(ClientOptions {
        meta: MetaClientOptions {
            deadline: timeout,
            request_timeout: timeout.min(Duration::from_secs(10)),
            ..MetaClientOptions::default()
        },
        cache: CacheConfig {
            memory_bytes: args.cache_size,
            dir: args.cache_dir.clone(),
            ..CacheConfig::default()
        },
        keys: load_keys(&args.key_files)?,
        ..ClientOptions::default()
    })
}

/// Connects a data client to the meta replicas `meta` (comma-separated).
///
/// # Errors
/// Meta unreachable, or the cache directory unusable; the message names
/// `--meta` or the directory.
pub async fn connect(meta: &str, args: &DataArgs, timeout: Duration) -> anyhow::Result<Client> {
    Client::connect(meta.split(','), client_options(args, timeout)?)
        .await
        .map_err(|e| connect_error(meta, &e))
}

/// The message of a failed [`Client::connect`]: which flag to look at.
pub fn connect_error(meta: &str, e: &cairn_client::CairnStatus) -> anyhow::Error {
    // The client names the directory or the volume in its message.
    if e.code == ErrorCode::Io && e.message.starts_with("cache directory") {
        anyhow::anyhow!("--cache-dir: {}", e.message)
    } else if e.message.contains("key given for volume")
        || e.message.contains("key file")
        || e.message.contains("a key was given")
    {
        anyhow::anyhow!("--key-file: {}", e.message)
    } else {
        anyhow::anyhow!("--meta {meta}: {}", e.message)
    }
}

/// Closes `client`'s session (publishing its cache counters); a failure
/// changes nothing for the user, so it is only logged.
pub async fn close(client: &Client) {
    if let Err(e) = client.close().await {
        tracing::debug!(error = %e, "closing the client session");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_follow_the_flags() {
        let args = DataArgs {
            cache_dir: Some(PathBuf::from("/var/cache/cairn")),
            cache_size: 128 << 20,
            key_files: Vec::new(),
        };
        let o = client_options(&args, Duration::from_secs(30)).unwrap();
        assert_eq!(o.meta.deadline, Duration::from_secs(30));
        assert_eq!(o.meta.request_timeout, Duration::from_secs(10));
        assert_eq!(o.cache.memory_bytes, 128 << 20);
        assert_eq!(o.cache.dir, Some(PathBuf::from("/var/cache/cairn")));
        assert_eq!(o.cache.dir_bytes, CacheConfig::default().dir_bytes);
        assert!(o.validate().is_ok());
    }

    #[test]
    fn key_files_are_volume_equals_path() {
        let dir = std::env::temp_dir().join(format!("cairn-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sec.key");
        std::fs::write(&path, format!("1:{}\n", "ab".repeat(32))).unwrap();
        let keys = load_keys(&[format!("sec={}", path.display())]).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].volume(), "sec");
        let bad = load_keys(&["sec".to_string()]).unwrap_err().to_string();
        assert!(bad.contains("VOLUME=PATH"), "{bad}");
        let missing = load_keys(&[format!("sec={}", dir.join("none").display())])
            .unwrap_err()
            .to_string();
        assert!(missing.contains("--key-file sec="), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
