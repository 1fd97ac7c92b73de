//! Whole-namespace snapshots read from one replica, for "every replica
//! holds the same namespace" and "the namespace did not change" checks.
//!
//! A [`Tree`] maps every path to the attributes the replica returns for it
//! (readdirplus), the root included. The state machine is deterministic
//! (DESIGN §4: inode numbers, object ids and times come from the log), so
//! replicas that applied the same log return equal trees, attributes and
//! all.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use cairn_proto::meta::{Attr, DirEntry, FileType, GetAttrRequest, ReadDirRequest};

use crate::raw::{RawMeta, cairn};

/// Entries asked for per `ReadDir` page.
const PAGE: u32 = 256;

/// A recursive listing: path → attributes.
pub type Tree = BTreeMap<String, Attr>;

/// Returns every entry of directory `ino` as replica `client` serves it,
/// following cookies; with `plus`, each entry's attributes too.
///
/// # Errors
/// The replica's error, decoded to a Cairn code in the message.
pub async fn list_dir(client: &mut RawMeta, ino: u64, plus: bool) -> Result<Vec<DirEntry>> {
    let mut out = Vec::new();
    let mut cookie = Vec::new();
    loop {
        let page = client
            .read_dir(ReadDirRequest {
                ino,
                cookie: cookie.clone(),
                limit: PAGE,
                plus,
                snapshot: None,
                lease_session: 0,
                paged: false,
            })
            .await
            .map_err(|s| {
                let e = cairn(&s);
                anyhow::anyhow!("ReadDir of inode {ino}: {} ({})", e.message, e.code)
            })?
            .into_inner();
        out.extend(page.entries);
        if page.next_cookie.is_empty() {
            return Ok(out);
        }
        if page.next_cookie == cookie {
            bail!("ReadDir of inode {ino} returned the same cookie twice");
        }
        cookie = page.next_cookie;
    }
}

/// Returns the whole namespace as replica `client` serves it.
///
/// # Errors
/// Any read error, or an entry without attributes.
pub async fn tree(client: &mut RawMeta) -> Result<Tree> {
    let root = client
        .get_attr(GetAttrRequest {
            ino: 1,
            snapshot: None,
            lease_session: 0,
        })
        .await
        .map_err(|s| anyhow::anyhow!("GetAttr of the root: {}", cairn(&s)))?
        .into_inner()
        .attr
        .context("GetAttr of the root returned no attributes")?;
    let mut out = Tree::new();
    out.insert("/".to_string(), root);
    let mut dirs = vec![("/".to_string(), 1u64)];
    while let Some((path, ino)) = dirs.pop() {
        for e in list_dir(client, ino, true).await? {
            let child = if path == "/" {
                format!("/{}", e.name)
            } else {
                format!("{path}/{}", e.name)
            };
            let attr = e
                .attr
                .with_context(|| format!("readdirplus gave no attributes for {child}"))?;
            if attr.ino != e.ino {
                bail!(
                    "{child}: entry names inode {} but its attributes inode {}",
                    e.ino,
                    attr.ino
                );
            }
            if e.kind == FileType::Directory as i32 {
                dirs.push((child.clone(), e.ino));
            }
            out.insert(child, attr);
        }
    }
    Ok(out)
}

/// Returns the differences between two trees, one line each (at most
/// `max` lines, then a count of the rest); empty when they are equal.
pub fn diff(a: &Tree, b: &Tree, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    for (p, x) in a {
        match b.get(p) {
            None => out.push(format!("only in the first: {p} (ino {})", x.ino)),
            Some(y) if x != y => out.push(format!("differs: {p}: {x:?} vs {y:?}")),
            Some(_) => {}
        }
    }
    for (p, y) in b {
        if !a.contains_key(p) {
            out.push(format!("only in the second: {p} (ino {})", y.ino));
        }
    }
    if out.len() > max {
        let rest = out.len() - max;
        out.truncate(max);
        out.push(format!("... and {rest} more"));
    }
    out
}

/// Returns the names in the directory at `dir` (a path like `/vol`) of a
/// tree.
pub fn names_in(tree: &Tree, dir: &str) -> Vec<String> {
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    tree.keys()
        .filter_map(|p| p.strip_prefix(&prefix))
        .filter(|rest| !rest.is_empty() && !rest.contains('/'))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ino: u64) -> Attr {
        Attr {
            ino,
            ..Attr::default()
        }
    }

    #[test]
    fn diff_and_names() {
        let a: Tree = [
            ("/".into(), attr(1)),
            ("/v".into(), attr(2)),
            ("/v/f".into(), attr(3)),
        ]
        .into();
        let mut b = a.clone();
        assert!(diff(&a, &b, 10).is_empty());
        b.insert("/v/g".into(), attr(4));
        b.insert("/v/f".into(), attr(5));
        let d = diff(&a, &b, 10);
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(diff(&a, &b, 1).len(), 2);
        assert_eq!(names_in(&b, "/v"), vec!["f", "g"]);
        assert_eq!(names_in(&b, "/"), vec!["v"]);
    }
}
