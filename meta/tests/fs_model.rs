//! Model test of the namespace state machine.
//!
//! Random sequences of namespace operations (rename edge cases, hard links,
//! bad names, volumes) run against `FsState` over sled, through the same
//! `apply` path Raft uses, and against a small in-memory model written from
//! POSIX semantics. Every step must give the same result (success or the
//! same error code) and leave the same tree (names, kinds, link counts,
//! sizes). A `Reboot` step closes sled and reopens it from disk, so state
//! that lived only in memory would show up as a divergence.

use std::collections::BTreeMap;

use cairn_meta::fs::store::SledKv;
use cairn_meta::fs::{Command, FsState, Kind, Op, SetAttr};
use cairn_proto::ErrorCode;
use openraft::{CommittedLeaderId, EntryPayload, LogId};
use proptest::prelude::*;

// ---------------------------------------------------------------- the model

#[derive(Debug, Clone)]
struct MNode {
    kind: Kind,
    children: BTreeMap<String, usize>,
    size: u64,
}

#[derive(Debug, Clone)]
struct Model {
    nodes: Vec<MNode>,
}

const ROOT: usize = 0;

type MResult = Result<(), ErrorCode>;

fn check_name(name: &str) -> MResult {
    cairn_proto::names::validate(name).map_err(|(c, _)| c)
}

impl Model {
    fn new() -> Self {
        Self {
            nodes: vec![MNode {
                kind: Kind::Dir,
                children: BTreeMap::new(),
                size: 0,
            }],
        }
    }

    /// Resolves a path of components; errors as the server's resolve.
    fn resolve(&self, path: &[String]) -> Result<usize, ErrorCode> {
        let mut cur = ROOT;
        for c in path {
            if self.nodes[cur].kind != Kind::Dir {
                return Err(ErrorCode::NotDir);
            }
            cur = *self.nodes[cur].children.get(c).ok_or(ErrorCode::NotFound)?;
        }
        Ok(cur)
    }

    fn dir(&self, path: &[String]) -> Result<usize, ErrorCode> {
        let d = self.resolve(path)?;
        if self.nodes[d].kind != Kind::Dir {
            return Err(ErrorCode::NotDir);
        }
        Ok(d)
    }

    /// Volume of entries inside the directory at `path`.
    fn volume(path: &[String]) -> Option<&String> {
        path.first()
    }

    fn alloc(&mut self, kind: Kind) -> usize {
        self.nodes.push(MNode {
            kind,
            children: BTreeMap::new(),
            size: 0,
        });
        self.nodes.len() - 1
    }

    /// Paths that name node `n` (for link counts of files).
    fn links(&self, n: usize) -> u32 {
        self.nodes
            .iter()
            .map(|d| d.children.values().filter(|c| **c == n).count() as u32)
            .sum()
    }

    fn nlink(&self, n: usize) -> u32 {
        match self.nodes[n].kind {
            Kind::Dir => {
                2 + self.nodes[n]
                    .children
                    .values()
                    .filter(|c| self.nodes[**c].kind == Kind::Dir)
                    .count() as u32
            }
            _ => self.links(n),
        }
    }

    fn is_ancestor_or_self(&self, a: usize, mut d_path: Vec<String>) -> bool {
        // Walk the destination directory's path upwards.
        loop {
            if let Ok(n) = self.resolve(&d_path)
                && n == a
            {
                return true;
            }
            if d_path.pop().is_none() {
                return false;
            }
        }
    }

    fn apply(&mut self, op: &MOp) -> MResult {
        match op {
            MOp::Mkdir(p, name) => {
                check_name(name)?;
                let d = self.dir(p)?;
                if self.nodes[d].children.contains_key(name) {
                    return Err(ErrorCode::Exists);
                }
                let n = self.alloc(Kind::Dir);
                self.nodes[d].children.insert(name.clone(), n);
                Ok(())
            }
            MOp::Create(p, name, excl) => {
                check_name(name)?;
                let d = self.dir(p)?;
                if let Some(c) = self.nodes[d].children.get(name) {
                    if *excl {
                        return Err(ErrorCode::Exists);
                    }
                    if self.nodes[*c].kind == Kind::Dir {
                        return Err(ErrorCode::IsDir);
                    }
                    return Ok(());
                }
                let n = self.alloc(Kind::File);
                self.nodes[d].children.insert(name.clone(), n);
                Ok(())
            }
            MOp::Symlink(p, name) => {
                check_name(name)?;
                let d = self.dir(p)?;
                if self.nodes[d].children.contains_key(name) {
                    return Err(ErrorCode::Exists);
                }
                let n = self.alloc(Kind::Symlink);
                self.nodes[n].size = 6; // "target"
                self.nodes[d].children.insert(name.clone(), n);
                Ok(())
            }
            MOp::Mknod(p, name, kind) => {
                check_name(name)?;
                let d = self.dir(p)?;
                if self.nodes[d].children.contains_key(name) {
                    return Err(ErrorCode::Exists);
                }
                let n = self.alloc(*kind);
                self.nodes[d].children.insert(name.clone(), n);
                Ok(())
            }
            MOp::Link(src, p, name) => {
                let s = self.resolve(src)?;
                check_name(name)?;
                if self.nodes[s].kind == Kind::Dir {
                    return Err(ErrorCode::NotPermitted);
                }
                let d = self.dir(p)?;
                let src_parent = &src[..src.len() - 1];
                if Self::volume(src_parent) != Self::volume(p) {
                    return Err(ErrorCode::CrossVolume);
                }
                if self.nodes[d].children.contains_key(name) {
                    return Err(ErrorCode::Exists);
                }
                self.nodes[d].children.insert(name.clone(), s);
                Ok(())
            }
            MOp::Unlink(p, name) => {
                check_name(name)?;
                let d = self.dir(p)?;
                let c = *self.nodes[d]
                    .children
                    .get(name)
                    .ok_or(ErrorCode::NotFound)?;
                if self.nodes[c].kind == Kind::Dir {
                    return Err(ErrorCode::IsDir);
                }
                self.nodes[d].children.remove(name);
                Ok(())
            }
            MOp::Rmdir(p, name) => {
                check_name(name)?;
                let d = self.dir(p)?;
                let c = *self.nodes[d]
                    .children
                    .get(name)
                    .ok_or(ErrorCode::NotFound)?;
                if self.nodes[c].kind != Kind::Dir {
                    return Err(ErrorCode::NotDir);
                }
                if !self.nodes[c].children.is_empty() {
                    return Err(ErrorCode::NotEmpty);
                }
                self.nodes[d].children.remove(name);
                Ok(())
            }
            MOp::Rename(p, name, np, new_name, noreplace) => {
                check_name(name)?;
                check_name(new_name)?;
                let d = self.dir(p)?;
                let nd = self.dir(np)?;
                let s = *self.nodes[d]
                    .children
                    .get(name)
                    .ok_or(ErrorCode::NotFound)?;
                if Self::volume(p) != Self::volume(np) {
                    return Err(ErrorCode::CrossVolume);
                }
                if d == nd && name == new_name {
                    return if *noreplace {
                        Err(ErrorCode::Exists)
                    } else {
                        Ok(())
                    };
                }
                let s_dir = self.nodes[s].kind == Kind::Dir;
                if s_dir && self.is_ancestor_or_self(s, np.clone()) {
                    return Err(ErrorCode::Invalid);
                }
                if let Some(&t) = self.nodes[nd].children.get(new_name) {
                    if *noreplace {
                        return Err(ErrorCode::Exists);
                    }
                    if t == s {
                        return Ok(());
                    }
                    let t_dir = self.nodes[t].kind == Kind::Dir;
                    match (s_dir, t_dir) {
                        (true, false) => return Err(ErrorCode::NotDir),
                        (false, true) => return Err(ErrorCode::IsDir),
                        _ => {}
                    }
                    if t_dir && !self.nodes[t].children.is_empty() {
                        return Err(ErrorCode::NotEmpty);
                    }
                }
                self.nodes[d].children.remove(name);
                self.nodes[nd].children.insert(new_name.clone(), s);
                Ok(())
            }
            MOp::Truncate(path, size) => {
                let n = self.resolve(path)?;
                match self.nodes[n].kind {
                    Kind::Dir => return Err(ErrorCode::IsDir),
                    Kind::File => {}
                    _ => return Err(ErrorCode::Invalid),
                }
                self.nodes[n].size = *size;
                Ok(())
            }
            MOp::Reboot => Ok(()),
        }
    }

    fn tree(&self) -> BTreeMap<String, (Kind, u32, u64)> {
        let mut out = BTreeMap::new();
        out.insert("/".to_string(), (Kind::Dir, self.nlink(ROOT), 0));
        let mut stack = vec![(String::new(), ROOT)];
        while let Some((path, n)) = stack.pop() {
            for (name, c) in &self.nodes[n].children {
                let p = format!("{path}/{name}");
                let node = &self.nodes[*c];
                out.insert(p.clone(), (node.kind, self.nlink(*c), node.size));
                if node.kind == Kind::Dir {
                    stack.push((p, *c));
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------- operations

#[derive(Debug, Clone)]
enum MOp {
    Mkdir(Vec<String>, String),
    Create(Vec<String>, String, bool),
    Symlink(Vec<String>, String),
    Mknod(Vec<String>, String, Kind),
    Link(Vec<String>, Vec<String>, String),
    Unlink(Vec<String>, String),
    Rmdir(Vec<String>, String),
    Rename(Vec<String>, String, Vec<String>, String, bool),
    Truncate(Vec<String>, u64),
    Reboot,
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop_oneof![Just("a"), Just("b"), Just("c"), Just("f"), Just("g")]
            .prop_map(String::from),
        1 => prop_oneof![
            Just(String::new()),
            Just("x/y".to_string()),
            Just("nul\0".to_string()),
            Just("..".to_string()),
            Just("n".repeat(256)),
        ],
    ]
}

fn path() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop_oneof![Just("a"), Just("b"), Just("c"), Just("f")].prop_map(String::from),
        0..3,
    )
}

fn nonempty_path() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        prop_oneof![Just("a"), Just("b"), Just("f"), Just("g")].prop_map(String::from),
        1..4,
    )
}

fn special() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Fifo),
        Just(Kind::Socket),
        any::<u32>().prop_map(Kind::CharDevice),
        any::<u32>().prop_map(Kind::BlockDevice),
    ]
}

fn op() -> impl Strategy<Value = MOp> {
    prop_oneof![
        4 => (path(), name()).prop_map(|(p, n)| MOp::Mkdir(p, n)),
        4 => (path(), name(), any::<bool>()).prop_map(|(p, n, e)| MOp::Create(p, n, e)),
        1 => (path(), name()).prop_map(|(p, n)| MOp::Symlink(p, n)),
        1 => (path(), name(), special()).prop_map(|(p, n, k)| MOp::Mknod(p, n, k)),
        2 => (nonempty_path(), path(), name()).prop_map(|(s, p, n)| MOp::Link(s, p, n)),
        2 => (path(), name()).prop_map(|(p, n)| MOp::Unlink(p, n)),
        2 => (path(), name()).prop_map(|(p, n)| MOp::Rmdir(p, n)),
        5 => (path(), name(), path(), name(), prop::bool::weighted(0.2))
            .prop_map(|(p, n, q, m, nr)| MOp::Rename(p, n, q, m, nr)),
        1 => (nonempty_path(), 0u64..10_000).prop_map(|(p, s)| MOp::Truncate(p, s)),
        1 => Just(MOp::Reboot),
    ]
}

// ---------------------------------------------------------------- the system

struct System {
    dir: tempfile::TempDir,
    db: Option<sled::Db>,
    fs: Option<FsState>,
    index: u64,
}

impl System {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Self {
            dir,
            db: None,
            fs: None,
            index: 0,
        };
        s.open();
        s.cmd(Op::InitCluster {
            cluster_id: "model".into(),
        })
        .unwrap();
        s
    }

    fn open(&mut self) {
        // After a reopen, sled's background flusher of the dropped handle
        // may hold the directory lock a moment longer (seen on a loaded
        // CI machine): retry briefly.
        let mut tries = 0;
        let db = loop {
            match sled::Config::new().path(self.dir.path()).open() {
                Ok(db) => break db,
                Err(e) if tries < 100 && e.to_string().contains("could not acquire lock") => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("opening sled: {e}"),
            }
        };
        self.fs = Some(FsState::open(SledKv::new(db.open_tree("fs").unwrap())).unwrap());
        self.db = Some(db);
    }

    fn reboot(&mut self) {
        self.fs = None;
        if let Some(db) = self.db.take() {
            db.flush().unwrap();
        }
        self.open();
    }

    fn fs(&self) -> &FsState {
        self.fs.as_ref().unwrap()
    }

    fn cmd(&mut self, op: Op) -> Result<cairn_meta::fs::Reply, ErrorCode> {
        self.index += 1;
        let log_id = LogId::new(CommittedLeaderId::new(1, 1), self.index);
        let cmd = Command::internal(1_000 + self.index as i64, op);
        self.fs()
            .apply(&log_id, &EntryPayload::Normal(cmd))
            .unwrap()
            .map_err(|e| e.code)
    }

    fn ino(&self, path: &[String]) -> Result<u64, ErrorCode> {
        let p = format!("/{}", path.join("/"));
        self.fs().resolve(&p).map(|i| i.ino).map_err(|e| e.code)
    }

    fn apply(&mut self, op: &MOp) -> MResult {
        let o = match op {
            MOp::Reboot => {
                self.reboot();
                return Ok(());
            }
            MOp::Mkdir(p, n) => Op::Mkdir {
                parent: self.ino(p)?,
                name: n.clone(),
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
            MOp::Create(p, n, excl) => Op::Create {
                parent: self.ino(p)?,
                name: n.clone(),
                mode: 0o644,
                uid: 0,
                gid: 0,
                exclusive: *excl,
                open_for_write: false,
                salt: vec![],
            },
            MOp::Symlink(p, n) => Op::Symlink {
                parent: self.ino(p)?,
                name: n.clone(),
                target: "target".into(),
                uid: 0,
                gid: 0,
            },
            MOp::Mknod(p, n, k) => Op::Mknod {
                parent: self.ino(p)?,
                name: n.clone(),
                kind: *k,
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
            MOp::Link(s, p, n) => Op::Link {
                ino: self.ino(s)?,
                new_parent: self.ino(p)?,
                new_name: n.clone(),
            },
            MOp::Unlink(p, n) => Op::Unlink {
                parent: self.ino(p)?,
                name: n.clone(),
                held_open: false,
            },
            MOp::Rmdir(p, n) => Op::Rmdir {
                parent: self.ino(p)?,
                name: n.clone(),
            },
            MOp::Rename(p, n, q, m, nr) => Op::Rename {
                parent: self.ino(p)?,
                name: n.clone(),
                new_parent: self.ino(q)?,
                new_name: m.clone(),
                noreplace: *nr,
                exchange: false,
            },
            MOp::Truncate(p, size) => Op::SetAttr {
                ino: self.ino(p)?,
                attr: SetAttr {
                    size: Some(*size),
                    ..SetAttr::default()
                },
            },
        };
        self.cmd(o).map(|_| ())
    }

    fn tree(&self) -> BTreeMap<String, (Kind, u32, u64)> {
        let mut out = BTreeMap::new();
        let root = self.fs().getattr(cairn_meta::fs::ROOT_INO).unwrap();
        out.insert("/".to_string(), (root.kind, root.nlink, root.size));
        let mut stack = vec![(String::new(), cairn_meta::fs::ROOT_INO)];
        while let Some((path, ino)) = stack.pop() {
            let mut cookie = Vec::new();
            loop {
                let (entries, next) = self.fs().readdir(ino, &cookie, 3, true).unwrap();
                for e in entries {
                    let a = e.attr.unwrap();
                    let p = format!("{path}/{}", e.name);
                    out.insert(p.clone(), (a.kind, a.nlink, a.size));
                    if a.kind == Kind::Dir {
                        stack.push((p, e.ino));
                    }
                }
                match next {
                    Some(c) => cookie = c,
                    None => break,
                }
            }
        }
        out
    }
}

/// Link-path resolution in the model must fail the way the system's
/// resolve does before it gets to the operation.
fn model_apply(model: &mut Model, op: &MOp) -> MResult {
    if let MOp::Link(s, p, _) = op {
        model.resolve(s)?;
        model.resolve(p)?;
    }
    let parent_paths: Vec<&Vec<String>> = match op {
        MOp::Mkdir(p, _)
        | MOp::Create(p, _, _)
        | MOp::Symlink(p, _)
        | MOp::Mknod(p, _, _)
        | MOp::Unlink(p, _)
        | MOp::Rmdir(p, _) => vec![p],
        MOp::Rename(p, _, q, _, _) => vec![p, q],
        MOp::Truncate(p, _) => vec![p],
        MOp::Link(..) | MOp::Reboot => vec![],
    };
    for p in parent_paths {
        model.resolve(p)?;
    }
    model.apply(op)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

    #[test]
    fn namespace_matches_model(ops in prop::collection::vec(op(), 1..80)) {
        let mut sys = System::new();
        let mut model = Model::new();
        for (i, op) in ops.iter().enumerate() {
            let want = model_apply(&mut model, op);
            let got = sys.apply(op);
            prop_assert_eq!(got, want, "step {} {:?}", i, op);
            prop_assert_eq!(sys.tree(), model.tree(), "tree after step {} {:?}", i, op);
        }
        // Volumes are exactly the top-level directories, under their
        // current names.
        let mut vols: Vec<String> = sys.fs().volumes().unwrap().into_iter().map(|v| v.name).collect();
        vols.sort();
        let mut top: Vec<String> = model.nodes[ROOT]
            .children
            .iter()
            .filter(|(_, c)| model.nodes[**c].kind == Kind::Dir)
            .map(|(n, _)| n.clone())
            .collect();
        top.sort();
        prop_assert_eq!(vols, top);
    }
}

#[test]
fn rename_edge_cases() {
    let mut sys = System::new();
    let mut model = Model::new();
    let s = |x: &str| x.to_string();
    let v = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let script = vec![
        MOp::Mkdir(v(&[]), s("a")),
        MOp::Mkdir(v(&["a"]), s("b")),
        MOp::Mkdir(v(&["a", "b"]), s("c")),
        // Into its own subtree.
        MOp::Rename(v(&["a"]), s("b"), v(&["a", "b", "c"]), s("x"), false),
        MOp::Rename(v(&["a"]), s("b"), v(&["a", "b"]), s("x"), false),
        // Replace an empty directory, then a non-empty one.
        MOp::Mkdir(v(&["a"]), s("e")),
        MOp::Rename(v(&["a", "b"]), s("c"), v(&["a"]), s("e"), false),
        MOp::Create(v(&["a"]), s("f"), true),
        MOp::Rename(v(&["a"]), s("f"), v(&["a"]), s("b"), false),
        MOp::Rename(v(&["a"]), s("e"), v(&["a"]), s("f"), false),
        // Replace a file; noreplace.
        MOp::Create(v(&["a"]), s("g"), true),
        MOp::Rename(v(&["a"]), s("g"), v(&["a"]), s("f"), true),
        MOp::Rename(v(&["a"]), s("g"), v(&["a"]), s("f"), false),
        // Hard links: rename onto another link of the same file.
        MOp::Link(v(&["a", "f"]), v(&["a"]), s("h")),
        MOp::Rename(v(&["a"]), s("f"), v(&["a"]), s("h"), false),
        // Across volumes.
        MOp::Mkdir(v(&[]), s("b")),
        MOp::Rename(v(&["a"]), s("h"), v(&["b"]), s("h"), false),
        MOp::Rename(v(&[]), s("a"), v(&[]), s("c"), false),
        MOp::Reboot,
    ];
    let mut results = Vec::new();
    for op in &script {
        let want = model_apply(&mut model, op);
        let got = sys.apply(op);
        assert_eq!(got, want, "{op:?}");
        assert_eq!(sys.tree(), model.tree(), "{op:?}");
        results.push(got);
    }
    assert_eq!(results[3], Err(ErrorCode::Invalid));
    assert_eq!(results[4], Err(ErrorCode::Invalid));
    assert_eq!(results[8], Err(ErrorCode::IsDir));
    assert_eq!(results[9], Err(ErrorCode::NotDir));
    assert_eq!(results[11], Err(ErrorCode::Exists));
    assert_eq!(results[16], Err(ErrorCode::CrossVolume));
    let names: Vec<String> = sys
        .fs()
        .volumes()
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert!(
        names.contains(&"c".to_string()),
        "volume renamed: {names:?}"
    );
}
