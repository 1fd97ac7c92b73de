//! Namespace commands: `ls`, `mkdir`, `mv`, `rm`, `stat`, `ln`.
//!
//! Each is a thin layer over [`MetaClient`]: paths are absolute and
//! resolved on meta; symlinks are never followed (there is no client-side
//! path walk). Commands over several paths behave like coreutils: they
//! report each failure, go on, and exit 1 at the end.
//!
//! `rm -r` deletes depth-first: it lists a directory with `readdir_all`,
//! unlinks its files, descends into its subdirectories and removes each
//! directory once it is empty. It walks with an explicit stack, so a deep
//! tree cannot overflow ours; it is not atomic (a concurrent writer can make
//! the final `rmdir` fail with "not empty").

use cairn_client::{ErrorCode, MetaClient, Owner, RenameFlags};
use cairn_proto::ids::InodeId;
use cairn_proto::meta::{Attr, FileType};
use serde_json::{Value, json};

use crate::format::{
    basename, full_time, hex, human_bytes, kind_long_name, kind_name, mode_string, short_time,
    table,
};
use crate::report::{self, Context, Reported, op_error};

fn is_dir(a: &Attr) -> bool {
    a.kind() == FileType::Directory
}

/// Returns every attribute of `a` as JSON (times in ns and RFC 3339).
pub fn attr_json(a: &Attr) -> Value {
    let layout = a.layout.as_ref().map(|l| {
        json!({
            "object_id": l.object_id,
            "chunk_size": l.chunk_size,
            "chains": l.chains,
            "replication": l.replication,
        })
    });
    json!({
        "ino": a.ino,
        "kind": kind_name(a.kind()),
        "mode": format!("{:04o}", a.mode),
        "mode_string": mode_string(a.kind(), a.mode),
        "uid": a.uid,
        "gid": a.gid,
        "size": a.size,
        "nlink": a.nlink,
        "atime_ns": a.atime_ns,
        "mtime_ns": a.mtime_ns,
        "ctime_ns": a.ctime_ns,
        "crtime_ns": a.crtime_ns,
        "atime": full_time(a.atime_ns),
        "mtime": full_time(a.mtime_ns),
        "ctime": full_time(a.ctime_ns),
        "crtime": full_time(a.crtime_ns),
        "volume_id": a.volume_id,
        "layout": layout,
        "truncate_gen": a.truncate_gen,
        "version": a.version,
        "encryption_salt": hex(&a.encryption_salt),
        "key_version": a.key_version,
    })
}

/// Runs `f` for each path, printing failures as they happen; fails with
/// [`Reported`] if any did.
async fn each_path<F, Fut>(paths: &[String], mut f: F) -> anyhow::Result<()>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut failed = false;
    for p in paths {
        if let Err(e) = f(p.clone()).await {
            report::print(&e);
            failed = true;
        }
    }
    if failed { Err(Reported.into()) } else { Ok(()) }
}

/// `cairn ls [-l] PATH`: lists a directory (or shows a single entry).
/// Resolves `path` in the live tree, or in a snapshot's tree when it lies
/// under a volume's `.snapshots` (then also returns the snapshot to read
/// it at; `None` for `.snapshots` itself).
async fn resolve_any(
    c: &MetaClient,
    path: &str,
    op: &str,
) -> anyhow::Result<(Attr, Option<cairn_proto::meta::SnapshotRef>)> {
    match cairn_client::SnapshotPath::parse(path) {
        Some(sp) => {
            let (s, a) = c.resolve_in_snapshot(&sp, path).await.op(op, path)?;
            let at = (s.seq != 0).then_some(cairn_proto::meta::SnapshotRef {
                volume_id: s.volume_id,
                seq: s.seq,
            });
            Ok((a, at))
        }
        None => Ok((c.resolve(path).await.op(op, path)?, None)),
    }
}

pub async fn ls(c: &MetaClient, path: &str, long: bool, json: bool) -> anyhow::Result<()> {
    // A path under a volume's `.snapshots` lists the snapshot's tree.
    let snap = cairn_client::SnapshotPath::parse(path);
    let (attr, at) = resolve_any(c, path, "ls").await?;
    // (name, attributes)
    let mut entries: Vec<(String, Attr)> = Vec::new();
    if is_dir(&attr)
        && let Some(sp) = &snap
    {
        for e in c.read_snapshot_dir(sp, path).await.op("ls", path)? {
            let a = match e.attr {
                Some(a) => a,
                None => c.getattr_at(at, InodeId(e.ino)).await.op("ls", path)?,
            };
            entries.push((e.name, a));
        }
    } else if is_dir(&attr) {
        if long || json {
            for e in c.readdir_all_plus(InodeId(attr.ino)).await.op("ls", path)? {
                let a = match e.attr {
                    Some(a) => a,
                    // A meta that does not fill readdirplus: ask.
                    None => c.getattr(InodeId(e.ino)).await.op("ls", path)?,
                };
                entries.push((e.name, a));
            }
        } else {
            for e in c.readdir_all(InodeId(attr.ino)).await.op("ls", path)? {
                println!("{}", e.name);
            }
            return Ok(());
        }
    } else {
        entries.push((path.to_string(), attr));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    if json {
        let mut out = Vec::with_capacity(entries.len());
        for (name, a) in &entries {
            let mut v = attr_json(a);
            v["name"] = json!(name);
            if a.kind() == FileType::Symlink {
                v["target"] = json!(c.readlink_at(at, InodeId(a.ino)).await.op("ls", name)?);
            }
            out.push(v);
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if !long {
        for (name, _) in &entries {
            println!("{name}");
        }
        return Ok(());
    }
    let mut rows = Vec::with_capacity(entries.len());
    for (name, a) in &entries {
        let shown = if a.kind() == FileType::Symlink {
            let target = c.readlink_at(at, InodeId(a.ino)).await.op("ls", name)?;
            format!("{name} -> {target}")
        } else {
            name.clone()
        };
        rows.push(vec![
            mode_string(a.kind(), a.mode),
            a.nlink.to_string(),
            a.uid.to_string(),
            a.gid.to_string(),
            a.size.to_string(),
            short_time(a.mtime_ns),
            shown,
        ]);
    }
    // `ls -l` has no header line: empty headers (which take no width),
    // and the empty first line dropped.
    let t = table(&[""; 7], &rows, &[1, 2, 3, 4]);
    for line in t.lines().skip(1) {
        println!("{line}");
    }
    Ok(())
}

/// `cairn mkdir [-p] [-m MODE] PATH...`.
pub async fn mkdir(
    c: &MetaClient,
    paths: &[String],
    parents: bool,
    mode: u32,
) -> anyhow::Result<()> {
    let owner = Owner::current();
    each_path(paths, |p| async move {
        if parents {
            c.mkdir_p(&p, mode, owner).await.op("mkdir", &p)?;
        } else {
            let (parent, name) = c.resolve_parent(&p).await.op("mkdir", &p)?;
            c.mkdir(InodeId(parent.ino), &name, mode, owner)
                .await
                .op("mkdir", &p)?;
        }
        Ok(())
    })
    .await
}

/// `cairn mv [-n] SRC DST`: renames atomically; when `dst` is an existing
/// directory, moves `src` into it, like mv(1).
pub async fn mv(c: &MetaClient, src: &str, dst: &str, no_clobber: bool) -> anyhow::Result<()> {
    let (sparent, sname) = c.resolve_parent(src).await.op("mv", src)?;
    let (dparent, dname) = match c.resolve(dst).await {
        Ok(a) if is_dir(&a) => (a, sname.clone()),
        Ok(_) => c.resolve_parent(dst).await.op("mv", dst)?,
        Err(e) if e.code == ErrorCode::NotFound => c.resolve_parent(dst).await.op("mv", dst)?,
        Err(e) => return Err(e).op("mv", dst),
    };
    let flags = if no_clobber {
        RenameFlags::NOREPLACE
    } else {
        RenameFlags::NONE
    };
    c.rename(
        InodeId(sparent.ino),
        &sname,
        InodeId(dparent.ino),
        &dname,
        flags,
    )
    .await
    .op("mv", &format!("{src} {dst}"))?;
    Ok(())
}

/// `cairn rm [-r] [-f] PATH...`.
pub async fn rm(
    c: &MetaClient,
    paths: &[String],
    recursive: bool,
    force: bool,
) -> anyhow::Result<()> {
    each_path(
        paths,
        |p| async move { rm_one(c, &p, recursive, force).await },
    )
    .await
}

fn ignore_missing(r: anyhow::Result<()>, force: bool) -> anyhow::Result<()> {
    match r {
        Err(e)
            if force
                && e.downcast_ref::<report::OpError>()
                    .is_some_and(|o| o.status.code == ErrorCode::NotFound) =>
        {
            Ok(())
        }
        r => r,
    }
}

async fn rm_one(c: &MetaClient, path: &str, recursive: bool, force: bool) -> anyhow::Result<()> {
    let comps = cairn_proto::names::components(path)
        .map_err(|(code, why)| op_error("rm", path, code, why))?;
    if comps.is_empty() {
        return Err(op_error(
            "rm",
            path,
            ErrorCode::NotPermitted,
            "refusing to remove '/'",
        ));
    }
    let found = async {
        let (parent, name) = c.resolve_parent(path).await.op("rm", path)?;
        let attr = c.lookup(InodeId(parent.ino), &name).await.op("rm", path)?;
        Ok::<_, anyhow::Error>((parent, name, attr))
    }
    .await;
    let (parent, name, attr) = match found {
        Ok(f) => f,
        Err(e) => return ignore_missing(Err(e), force),
    };
    if !is_dir(&attr) {
        let r = c
            .unlink(InodeId(parent.ino), &name)
            .await
            .op("rm", path)
            .map(drop);
        return ignore_missing(r, force);
    }
    if !recursive {
        return Err(op_error(
            "rm",
            path,
            ErrorCode::IsDir,
            format!("{path} is a directory (use -r to remove it and its contents)"),
        ));
    }
    let path = path.trim_end_matches('/');
    c.remove_tree(InodeId(parent.ino), &name, InodeId(attr.ino), path, force)
        .await
        .map_err(|(at, status)| {
            anyhow::Error::new(report::OpError {
                op: "rm".into(),
                path: Some(at),
                status,
            })
        })
}

/// `cairn stat PATH`: every attribute, including the layout.
pub async fn stat(c: &MetaClient, path: &str, json: bool) -> anyhow::Result<()> {
    let (a, at) = resolve_any(c, path, "stat").await?;
    let target = if a.kind() == FileType::Symlink {
        Some(c.readlink_at(at, InodeId(a.ino)).await.op("stat", path)?)
    } else {
        None
    };
    if json {
        let mut v = attr_json(&a);
        v["path"] = json!(path);
        if let Some(t) = &target {
            v["target"] = json!(t);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    match &target {
        Some(t) => println!("  File: {path} -> {t}"),
        None => println!("  File: {path}"),
    }
    println!("  Type: {:<16}Inode: {}", kind_long_name(a.kind()), a.ino);
    println!(
        "  Mode: {:04o} ({})  Uid: {}  Gid: {}",
        a.mode,
        mode_string(a.kind(), a.mode),
        a.uid,
        a.gid
    );
    println!("  Size: {:<16}Links: {}", a.size, a.nlink);
    println!(
        "Volume: {:<16}Version: {}  Truncate gen: {}",
        a.volume_id, a.version, a.truncate_gen
    );
    println!("Access: {}", full_time(a.atime_ns));
    println!("Modify: {}", full_time(a.mtime_ns));
    println!("Change: {}", full_time(a.ctime_ns));
    println!(" Birth: {}", full_time(a.crtime_ns));
    if let Some(l) = &a.layout {
        let chains: Vec<String> = l.chains.iter().map(u32::to_string).collect();
        println!(
            "Layout: object {}, chunk size {}, replication {}, {} chains [{}]",
            l.object_id,
            human_bytes(l.chunk_size),
            l.replication,
            l.chains.len(),
            chains.join(", ")
        );
    }
    if !a.encryption_salt.is_empty() {
        println!(
            "Crypto: key version {}, salt {}",
            a.key_version,
            hex(&a.encryption_salt)
        );
    }
    Ok(())
}

/// `cairn ln [-s] TARGET LINKPATH`: a symlink (with `-s`; `target` is
/// stored as given) or a hard link to the absolute path `target`. When
/// `link_path` is an existing directory, the link goes inside it under
/// `target`'s last name, like ln(1).
pub async fn ln(
    c: &MetaClient,
    target: &str,
    link_path: &str,
    symbolic: bool,
) -> anyhow::Result<()> {
    let (parent, name) = match c.resolve(link_path).await {
        Ok(a) if is_dir(&a) => {
            let base = basename(target);
            if base.is_empty() || base == "." || base == ".." {
                return Err(op_error(
                    "ln",
                    link_path,
                    ErrorCode::Exists,
                    format!(
                        "{link_path} is a directory and {target:?} names no entry to create in it"
                    ),
                ));
            }
            (a, base.to_string())
        }
        Ok(_) => {
            return Err(op_error(
                "ln",
                link_path,
                ErrorCode::Exists,
                format!("{link_path} exists"),
            ));
        }
        Err(e) if e.code == ErrorCode::NotFound => {
            c.resolve_parent(link_path).await.op("ln", link_path)?
        }
        Err(e) => return Err(e).op("ln", link_path),
    };
    if symbolic {
        c.symlink(InodeId(parent.ino), &name, target, Owner::current())
            .await
            .op("ln", link_path)?;
    } else {
        let t = c.resolve(target).await.op("ln", target)?;
        c.link(InodeId(t.ino), InodeId(parent.ino), &name)
            .await
            .op("ln", link_path)?;
    }
    Ok(())
}
