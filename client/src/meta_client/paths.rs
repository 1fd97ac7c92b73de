//! Path helpers over the inode API: split a path into its parent and last
//! name, and `mkdir -p`. Paths are absolute, `/`-separated, without `..`
//! (meta has no working directory); the rules are
//! [`cairn_proto::names`]'s, checked here before any call so a bad path
//! fails without a round trip.

use cairn_proto::ids::InodeId;
use cairn_proto::meta::{Attr, FileType};
use cairn_proto::{CairnStatus, ErrorCode, names};

use super::{MetaClient, Owner};
use crate::Result;

/// Returns the components of the absolute `path`.
///
/// # Errors
/// [`ErrorCode::Invalid`] / [`ErrorCode::NameTooLong`] naming the path.
pub(crate) fn components(path: &str) -> Result<Vec<&str>> {
    names::components(path).map_err(|(code, why)| CairnStatus::new(code, format!("{path}: {why}")))
}

/// Returns `/c1/c2/...` for `comps` (`/` when empty).
pub(crate) fn join(comps: &[&str]) -> String {
    format!("/{}", comps.join("/"))
}

fn is_dir(a: &Attr) -> bool {
    a.kind() == FileType::Directory
}

fn not_dir(path: &str) -> CairnStatus {
    CairnStatus::new(
        ErrorCode::NotDir,
        format!("{path} exists and is not a directory"),
    )
}

impl MetaClient {
    /// Resolves the parent directory of `path` and returns its attributes
    /// with the last component, e.g. `/a/b/c` → (attributes of `/a/b`,
    /// `"c"`). The last component itself need not exist.
    ///
    /// # Errors
    /// [`ErrorCode::Invalid`] for `/` (it has no parent) or a malformed
    /// path, [`ErrorCode::NotFound`] when the parent does not exist,
    /// [`ErrorCode::NotDir`] when it is not a directory.
    pub async fn resolve_parent(&self, path: &str) -> Result<(Attr, String)> {
        let comps = components(path)?;
        let Some((last, dirs)) = comps.split_last() else {
            return Err(CairnStatus::new(
                ErrorCode::Invalid,
                "/ has no parent directory",
            ));
        };
        let parent_path = join(dirs);
        let parent = self.resolve(&parent_path).await?;
        if !is_dir(&parent) {
            return Err(not_dir(&parent_path));
        }
        Ok((parent, (*last).to_string()))
    }

    /// Creates directory `path` and any missing parents, like `mkdir -p`,
    /// and returns its attributes. Directories that already exist along the
    /// way (including one created concurrently by someone else) are fine;
    /// new ones get `mode` and `owner`.
    ///
    /// # Errors
    /// [`ErrorCode::NotDir`] when a component exists and is not a directory
    /// (a symlink included: it is not followed), [`ErrorCode::Invalid`] for
    /// a malformed path, or the error of a failed `mkdir`.
    pub async fn mkdir_p(&self, path: &str, mode: u32, owner: Owner) -> Result<Attr> {
        let comps = components(path)?;
        // The common case, everything exists, costs one call.
        match self.resolve(path).await {
            Ok(a) if is_dir(&a) => return Ok(a),
            Ok(_) => return Err(not_dir(&join(&comps))),
            Err(e) if matches!(e.code, ErrorCode::NotFound | ErrorCode::NotDir) => {}
            Err(e) => return Err(e),
        }
        let mut cur = self.getattr(InodeId::ROOT).await?;
        for (i, name) in comps.iter().enumerate() {
            let parent = InodeId(cur.ino);
            let next = match self.lookup(parent, name).await {
                Ok(a) => a,
                Err(e) if e.code == ErrorCode::NotFound => {
                    match self.mkdir(parent, name, mode, owner).await {
                        Ok(entry) => entry.attr,
                        // Someone else created it between our lookup and mkdir.
                        Err(e) if e.code == ErrorCode::Exists => self.lookup(parent, name).await?,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
            if !is_dir(&next) {
                return Err(not_dir(&join(&comps[..=i])));
            }
            cur = next;
        }
        Ok(cur)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_and_join() {
        assert_eq!(components("/a//b/").unwrap(), ["a", "b"]);
        assert_eq!(join(&["a", "b"]), "/a/b");
        assert_eq!(join(&[]), "/");
        let e = components("a/b").unwrap_err();
        assert_eq!(e.code, ErrorCode::Invalid);
        assert!(e.message.starts_with("a/b: "), "{}", e.message);
        let e = components(&format!("/{}", "x".repeat(300))).unwrap_err();
        assert_eq!(e.code, ErrorCode::NameTooLong);
    }
}
