//! A POSIX behaviour suite over a real FUSE mount: `cairn mount` (the
//! built binary) of a volume of a 3-meta, 3-chunkserver cluster, exercised
//! with plain system calls the way training jobs and shell tools use it.
//! Each step checks what a user would check (contents, sizes, link counts,
//! modes, errno values); the first failing step names itself.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_client::ClientOptions;
use cairn_jepsen::data_cluster::{DataCluster, DataOpts, pattern};
use cairn_jepsen::fuse::Mount;
use cairn_proto::meta::VolumePolicy;
use rustix::fs::{CWD, RenameFlags, XattrFlags};

type Step = fn(&Path);

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

#[track_caller]
fn expect_errno<T: std::fmt::Debug>(r: std::io::Result<T>, want: i32, what: &str) {
    match r {
        Ok(v) => panic!("{what}: succeeded ({v:?}), expected errno {want}"),
        Err(e) => assert_eq!(errno(&e), want, "{what}: {e}"),
    }
}

#[track_caller]
fn expect_rustix(r: rustix::io::Result<()>, want: i32, what: &str) {
    match r {
        Ok(()) => panic!("{what}: succeeded, expected errno {want}"),
        Err(e) => assert_eq!(e.raw_os_error(), want, "{what}: {e}"),
    }
}

fn lifecycle(root: &Path) {
    let d = root.join("life");
    fs::create_dir(&d).unwrap();
    expect_errno(
        fs::create_dir(&d),
        libc::EEXIST,
        "mkdir of an existing directory",
    );
    let f = d.join("a");
    fs::write(&f, b"hello, cairn").unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"hello, cairn");
    let m = fs::metadata(&f).unwrap();
    assert!(m.is_file());
    assert_eq!(m.len(), 12);
    assert_eq!(m.nlink(), 1);
    expect_errno(
        OpenOptions::new().write(true).create_new(true).open(&f),
        libc::EEXIST,
        "O_CREAT|O_EXCL of an existing file",
    );
    expect_errno(
        File::open(d.join("missing")),
        libc::ENOENT,
        "open of a missing file",
    );
    expect_errno(
        fs::remove_dir(&d),
        libc::ENOTEMPTY,
        "rmdir of a non-empty directory",
    );
    expect_errno(fs::remove_dir(&f), libc::ENOTDIR, "rmdir of a file");
    expect_errno(fs::remove_file(&d), libc::EISDIR, "unlink of a directory");
    expect_errno(
        fs::create_dir(f.join("sub")),
        libc::ENOTDIR,
        "mkdir under a file",
    );
    fs::remove_file(&f).unwrap();
    expect_errno(fs::metadata(&f), libc::ENOENT, "stat after unlink");
    let names: Vec<_> = fs::read_dir(&d).unwrap().collect();
    assert!(
        names.is_empty(),
        "directory not empty after unlink: {names:?}"
    );
    fs::remove_dir(&d).unwrap();
    expect_errno(fs::metadata(&d), libc::ENOENT, "stat after rmdir");
    // Overwrite in place, through a second handle, and read back.
    let g = root.join("rw");
    let mut h = File::create(&g).unwrap();
    h.write_all(&pattern(1, 300_000)).unwrap();
    h.write_all_at(b"XYZ", 1000).unwrap();
    let mut r = File::open(&g).unwrap();
    let mut all = Vec::new();
    r.read_to_end(&mut all).unwrap();
    let mut want = pattern(1, 300_000).to_vec();
    want[1000..1003].copy_from_slice(b"XYZ");
    assert!(all == want, "read after overwrite differs");
    drop(h);
    r.seek(SeekFrom::Start(299_998)).unwrap();
    let mut tail = Vec::new();
    r.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, &want[299_998..]);
    fs::remove_file(&g).unwrap();
}

fn renames(root: &Path) {
    let d = root.join("ren");
    fs::create_dir_all(d.join("x/y")).unwrap();
    fs::create_dir(d.join("z")).unwrap();
    fs::write(d.join("a"), b"aaa").unwrap();
    fs::write(d.join("b"), b"bbbbbb").unwrap();
    let b_ino = fs::metadata(d.join("b")).unwrap().ino();
    // Over an existing file: atomic replacement.
    fs::rename(d.join("a"), d.join("b")).unwrap();
    assert_eq!(fs::read(d.join("b")).unwrap(), b"aaa");
    assert_ne!(fs::metadata(d.join("b")).unwrap().ino(), b_ino);
    expect_errno(
        fs::metadata(d.join("a")),
        libc::ENOENT,
        "old name after rename",
    );
    // Across directories, keeping the inode.
    let ino = fs::metadata(d.join("b")).unwrap().ino();
    fs::rename(d.join("b"), d.join("z/b")).unwrap();
    assert_eq!(fs::metadata(d.join("z/b")).unwrap().ino(), ino);
    assert_eq!(fs::read(d.join("z/b")).unwrap(), b"aaa");
    // A directory with contents moves whole.
    fs::write(d.join("x/y/f"), b"deep").unwrap();
    fs::rename(d.join("x"), d.join("z/x2")).unwrap();
    assert_eq!(fs::read(d.join("z/x2/y/f")).unwrap(), b"deep");
    // Into its own subtree: EINVAL.
    expect_errno(
        fs::rename(d.join("z"), d.join("z/x2/y/inside")),
        libc::EINVAL,
        "rename of a directory into its own subtree",
    );
    // RENAME_NOREPLACE onto an existing name: EEXIST, nothing changed.
    fs::write(d.join("c"), b"c").unwrap();
    expect_rustix(
        rustix::fs::renameat_with(CWD, d.join("c"), CWD, d.join("z/b"), RenameFlags::NOREPLACE),
        libc::EEXIST,
        "RENAME_NOREPLACE onto an existing file",
    );
    assert_eq!(fs::read(d.join("c")).unwrap(), b"c");
    assert_eq!(fs::read(d.join("z/b")).unwrap(), b"aaa");
    // RENAME_NOREPLACE onto a free name works.
    rustix::fs::renameat_with(CWD, d.join("c"), CWD, d.join("c2"), RenameFlags::NOREPLACE).unwrap();
    assert_eq!(fs::read(d.join("c2")).unwrap(), b"c");
    // RENAME_EXCHANGE swaps.
    rustix::fs::renameat_with(CWD, d.join("c2"), CWD, d.join("z/b"), RenameFlags::EXCHANGE)
        .unwrap();
    assert_eq!(fs::read(d.join("c2")).unwrap(), b"aaa");
    assert_eq!(fs::read(d.join("z/b")).unwrap(), b"c");
    // Kind mismatches and non-empty targets.
    fs::create_dir(d.join("e")).unwrap();
    expect_errno(
        fs::rename(d.join("c2"), d.join("e")),
        libc::EISDIR,
        "file over a directory",
    );
    expect_errno(
        fs::rename(d.join("e"), d.join("c2")),
        libc::ENOTDIR,
        "directory over a file",
    );
    expect_errno(
        fs::rename(d.join("e"), d.join("z")),
        libc::ENOTEMPTY,
        "directory over a non-empty directory",
    );
    // A directory over an empty one replaces it.
    fs::create_dir(d.join("empty")).unwrap();
    fs::rename(d.join("e"), d.join("empty")).unwrap();
    assert!(fs::metadata(d.join("empty")).unwrap().is_dir());
    expect_errno(
        fs::rename(d.join("nope"), d.join("n2")),
        libc::ENOENT,
        "rename of a missing name",
    );
}

fn links(root: &Path) {
    let d = root.join("links");
    fs::create_dir(&d).unwrap();
    assert_eq!(
        fs::metadata(&d).unwrap().nlink(),
        2,
        "a new directory has 2 links"
    );
    fs::create_dir(d.join("s1")).unwrap();
    fs::create_dir(d.join("s2")).unwrap();
    assert_eq!(
        fs::metadata(&d).unwrap().nlink(),
        4,
        "2 + one per subdirectory"
    );
    fs::remove_dir(d.join("s2")).unwrap();
    assert_eq!(fs::metadata(&d).unwrap().nlink(), 3);
    fs::write(d.join("f"), b"shared").unwrap();
    fs::hard_link(d.join("f"), d.join("s1/g")).unwrap();
    let (m1, m2) = (
        fs::metadata(d.join("f")).unwrap(),
        fs::metadata(d.join("s1/g")).unwrap(),
    );
    assert_eq!(m1.ino(), m2.ino());
    assert_eq!(m1.nlink(), 2);
    expect_errno(
        fs::hard_link(d.join("f"), d.join("s1/g")),
        libc::EEXIST,
        "link onto an existing name",
    );
    expect_errno(
        fs::hard_link(d.join("s1"), d.join("s3")),
        libc::EPERM,
        "hard link to a directory",
    );
    fs::remove_file(d.join("f")).unwrap();
    let m = fs::metadata(d.join("s1/g")).unwrap();
    assert_eq!(m.nlink(), 1);
    assert_eq!(fs::read(d.join("s1/g")).unwrap(), b"shared");
    // Symlinks.
    std::os::unix::fs::symlink("s1/g", d.join("sl")).unwrap();
    assert_eq!(fs::read_link(d.join("sl")).unwrap(), Path::new("s1/g"));
    assert!(
        fs::symlink_metadata(d.join("sl"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read(d.join("sl")).unwrap(),
        b"shared",
        "reading through a symlink"
    );
    std::os::unix::fs::symlink("/nowhere/at/all", d.join("dangling")).unwrap();
    expect_errno(
        fs::read(d.join("dangling")),
        libc::ENOENT,
        "a dangling symlink",
    );
}

fn as_nobody(args: &[&str]) -> bool {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(args)
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("setpriv")
        .success()
}

fn permissions(root: &Path) {
    let d = root.join("perm");
    fs::create_dir(&d).unwrap();
    let f = d.join("secret");
    fs::write(&f, b"top secret").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, 0o600);
    let fs_ = f.to_str().unwrap();
    assert!(
        !as_nobody(&["cat", fs_]),
        "another user read a 0600 root file"
    );
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(
        as_nobody(&["cat", fs_]),
        "another user could not read a 0644 file"
    );
    assert!(
        !as_nobody(&["sh", "-c", &format!("echo x >> {fs_}")]),
        "another user wrote a 0644 root file"
    );
    // Ownership.
    std::os::unix::fs::chown(&f, Some(65534), Some(65534)).unwrap();
    let m = fs::metadata(&f).unwrap();
    assert_eq!((m.uid(), m.gid()), (65534, 65534));
    assert!(
        as_nobody(&["sh", "-c", &format!("echo more >> {fs_}")]),
        "the owner could not write"
    );
    assert_eq!(fs::read(&f).unwrap(), b"top secretmore\n");
    // New files belong to their creator; the umask applies.
    fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
    let n = d.join("by-nobody");
    assert!(as_nobody(&[
        "sh",
        "-c",
        &format!("umask 027; echo hi > {}", n.display())
    ]));
    let m = fs::metadata(&n).unwrap();
    assert_eq!((m.uid(), m.gid()), (65534, 65534));
    assert_eq!(m.mode() & 0o777, 0o640);
    // Directories: no search permission, no access below.
    let p = d.join("private");
    fs::create_dir(&p).unwrap();
    fs::write(p.join("x"), b"x").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
    assert!(!as_nobody(&["cat", p.join("x").to_str().unwrap()]));
    // utimens.
    let t = UNIX_EPOCH + Duration::from_secs(1_600_000_000) + Duration::from_nanos(123_456_789);
    File::options()
        .write(true)
        .open(&n)
        .unwrap()
        .set_modified(t)
        .unwrap();
    assert_eq!(fs::metadata(&n).unwrap().modified().unwrap(), t);
    let before = SystemTime::now() - Duration::from_secs(60);
    fs::write(&n, b"touched").unwrap();
    assert!(
        fs::metadata(&n).unwrap().modified().unwrap() > before,
        "a write updates mtime"
    );
}

fn truncation_and_holes(root: &Path) {
    let f = root.join("trunc");
    let data = pattern(7, 200_000);
    fs::write(&f, &data).unwrap();
    let h = OpenOptions::new().read(true).write(true).open(&f).unwrap();
    h.set_len(3000).unwrap();
    assert_eq!(fs::metadata(&f).unwrap().len(), 3000);
    assert_eq!(fs::read(&f).unwrap(), &data[..3000]);
    h.set_len(100_000).unwrap();
    let back = fs::read(&f).unwrap();
    assert_eq!(back.len(), 100_000);
    assert_eq!(&back[..3000], &data[..3000]);
    assert!(
        back[3000..].iter().all(|&b| b == 0),
        "extended region is not zeros"
    );
    drop(h);
    // truncate(1), a separate process.
    let st = Command::new("truncate")
        .args(["-s", "10"])
        .arg(&f)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(fs::read(&f).unwrap(), &data[..10]);
    // O_TRUNC.
    fs::write(&f, b"short").unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"short");
    // Holes, within a chunk and across chunk boundaries (64 MiB chunks).
    let s = root.join("sparse");
    let h = File::create(&s).unwrap();
    h.write_all_at(b"end", 130 << 20).unwrap();
    h.write_all_at(b"mid", 10 << 20).unwrap();
    drop(h);
    assert_eq!(fs::metadata(&s).unwrap().len(), (130 << 20) + 3);
    let r = File::open(&s).unwrap();
    let mut buf = vec![1u8; 8192];
    for off in [0u64, (10 << 20) + 3, 64 << 20, (130 << 20) - 8192] {
        r.read_exact_at(&mut buf, off).unwrap();
        assert!(buf.iter().all(|&b| b == 0), "hole at {off} is not zeros");
    }
    let mut three = [0u8; 3];
    r.read_exact_at(&mut three, 10 << 20).unwrap();
    assert_eq!(&three, b"mid");
    r.read_exact_at(&mut three, 130 << 20).unwrap();
    assert_eq!(&three, b"end");
    fs::remove_file(&s).unwrap();
}

fn append(root: &Path) {
    let f = root.join("log");
    fs::write(&f, b"start\n").unwrap();
    let mut a = OpenOptions::new().append(true).open(&f).unwrap();
    let mut b = OpenOptions::new().append(true).open(&f).unwrap();
    for i in 0..20 {
        let h = if i % 2 == 0 { &mut a } else { &mut b };
        h.write_all(format!("line {i}\n").as_bytes()).unwrap();
    }
    drop((a, b));
    let text = fs::read_to_string(&f).unwrap();
    let mut want = String::from("start\n");
    for i in 0..20 {
        want.push_str(&format!("line {i}\n"));
    }
    assert_eq!(text, want);
    // O_APPEND ignores the file offset.
    let mut c = OpenOptions::new().append(true).open(&f).unwrap();
    c.seek(SeekFrom::Start(0)).unwrap();
    c.write_all(b"tail\n").unwrap();
    drop(c);
    assert!(fs::read_to_string(&f).unwrap().ends_with("line 19\ntail\n"));
}

fn xattrs(root: &Path) {
    let f = root.join("xa");
    fs::write(&f, b"x").unwrap();
    rustix::fs::setxattr(&f, "user.dataset", b"imagenet-v2", XattrFlags::empty()).unwrap();
    rustix::fs::setxattr(&f, "user.step", b"100", XattrFlags::empty()).unwrap();
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::getxattr(&f, "user.dataset", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"imagenet-v2");
    let n = rustix::fs::listxattr(&f, &mut buf[..]).unwrap();
    let mut names: Vec<&[u8]> = buf[..n]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![b"user.dataset".as_slice(), b"user.step".as_slice()]
    );
    expect_rustix(
        rustix::fs::setxattr(&f, "user.step", b"1", XattrFlags::CREATE),
        libc::EEXIST,
        "XATTR_CREATE of an existing attribute",
    );
    expect_rustix(
        rustix::fs::setxattr(&f, "user.nope", b"1", XattrFlags::REPLACE),
        libc::ENODATA,
        "XATTR_REPLACE of a missing attribute",
    );
    let mut small = [0u8; 2];
    match rustix::fs::getxattr(&f, "user.dataset", &mut small[..]) {
        Err(e) => assert_eq!(e.raw_os_error(), libc::ERANGE),
        Ok(n) => panic!("getxattr into 2 bytes returned {n}"),
    }
    rustix::fs::removexattr(&f, "user.step").unwrap();
    match rustix::fs::getxattr(&f, "user.step", &mut buf[..]) {
        Err(e) => assert_eq!(e.raw_os_error(), libc::ENODATA),
        Ok(n) => panic!("removed attribute still there ({n} bytes)"),
    }
    expect_rustix(
        rustix::fs::removexattr(&f, "user.step"),
        libc::ENODATA,
        "removexattr of a missing attribute",
    );
}

fn unlink_open(root: &Path) {
    let f = root.join("open-unlinked");
    let data = pattern(11, 1 << 20);
    fs::write(&f, &data).unwrap();
    let r = File::open(&f).unwrap();
    let mut w = OpenOptions::new().read(true).write(true).open(&f).unwrap();
    fs::remove_file(&f).unwrap();
    expect_errno(fs::metadata(&f), libc::ENOENT, "stat of the unlinked name");
    let mut buf = vec![0u8; data.len()];
    r.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == data, "an open, unlinked file read back wrong");
    w.seek(SeekFrom::End(0)).unwrap();
    w.write_all(b"after unlink").unwrap();
    let mut tail = [0u8; 12];
    r.read_exact_at(&mut tail, data.len() as u64).unwrap();
    assert_eq!(&tail, b"after unlink");
    assert_eq!(
        w.metadata().unwrap().nlink(),
        0,
        "fstat of an unlinked file"
    );
    drop((r, w));
    // A new file may take the name at once.
    fs::write(&f, b"new").unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"new");
}

/// mkfifo, mknod and bind(2) make metadata-only inodes of the right type,
/// mode and device number, which link, rename and unlink like any file;
/// a FIFO in the mount is a working pipe (the kernel serves its I/O).
fn special_files(root: &Path) {
    use rustix::fs::{FileType, Mode, makedev, mknodat};
    let d = root.join("special");
    fs::create_dir(&d).unwrap();
    let fifo = d.join("fifo");
    mknodat(CWD, &fifo, FileType::Fifo, Mode::from_raw_mode(0o640), 0).unwrap();
    let dev = makedev(4, 64);
    mknodat(
        CWD,
        d.join("tty"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o604),
        dev,
    )
    .unwrap();
    mknodat(
        CWD,
        d.join("disk"),
        FileType::BlockDevice,
        Mode::from_raw_mode(0o660),
        makedev(8, 1),
    )
    .unwrap();
    let sock = d.join("sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    // A regular file made by mknod(2) (type 0) is an ordinary empty file.
    mknodat(
        CWD,
        d.join("plain"),
        FileType::RegularFile,
        Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    expect_rustix(
        mknodat(CWD, &fifo, FileType::Fifo, Mode::from_raw_mode(0o640), 0),
        libc::EEXIST,
        "mkfifo over an existing name",
    );

    use std::os::unix::fs::FileTypeExt;
    let m = fs::symlink_metadata(&fifo).unwrap();
    assert!(m.file_type().is_fifo(), "{:?}", m.file_type());
    assert_eq!((m.mode() & 0o7777, m.len(), m.nlink()), (0o640, 0, 1));
    let m = fs::symlink_metadata(d.join("tty")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!((m.rdev(), m.mode() & 0o7777), (dev, 0o604));
    let m = fs::symlink_metadata(d.join("disk")).unwrap();
    assert!(m.file_type().is_block_device());
    assert_eq!(m.rdev(), makedev(8, 1));
    assert!(fs::symlink_metadata(&sock).unwrap().file_type().is_socket());
    let m = fs::symlink_metadata(d.join("plain")).unwrap();
    assert!(m.file_type().is_file());
    assert_eq!((m.mode() & 0o7777, m.len()), (0o600, 0));
    let mut names: Vec<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            let c = if t.is_fifo() {
                'p'
            } else if t.is_char_device() {
                'c'
            } else if t.is_block_device() {
                'b'
            } else if t.is_socket() {
                's'
            } else {
                '-'
            };
            format!("{c}{}", e.file_name().to_string_lossy())
        })
        .collect();
    names.sort();
    assert_eq!(names, ["-plain", "bdisk", "ctty", "pfifo", "ssock"]);

    // The FIFO carries bytes between a writer and a reader.
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut w = OpenOptions::new().write(true).open(&fifo).unwrap();
            w.write_all(b"through the pipe").unwrap();
        })
    };
    let mut got = String::new();
    File::open(&fifo).unwrap().read_to_string(&mut got).unwrap();
    writer.join().unwrap();
    assert_eq!(got, "through the pipe");
    // So does the socket.
    let client = std::thread::spawn({
        let sock = sock.clone();
        move || {
            let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
            c.write_all(b"hello").unwrap();
        }
    });
    let (mut conn, _) = listener.accept().unwrap();
    let mut hello = String::new();
    conn.read_to_string(&mut hello).unwrap();
    client.join().unwrap();
    assert_eq!(hello, "hello");
    drop(listener);

    // Link, rename and unlink as any other non-directory.
    fs::hard_link(d.join("tty"), d.join("tty-link")).unwrap();
    fs::rename(d.join("tty-link"), d.join("console")).unwrap();
    let m = fs::symlink_metadata(d.join("console")).unwrap();
    assert!(m.file_type().is_char_device());
    assert_eq!((m.nlink(), m.rdev()), (2, dev));
    for name in ["fifo", "tty", "console", "disk", "sock", "plain"] {
        fs::remove_file(d.join(name)).unwrap();
    }
    fs::remove_dir(&d).unwrap();
}

/// fallocate grows a file (mode 0) or changes nothing (KEEP_SIZE), the
/// modes Cairn cannot do answer EOPNOTSUPP, and cp(1) copies inside the
/// mount (copy_file_range falls back to reads and writes in the kernel).
fn fallocate_and_copies(root: &Path) {
    use rustix::fs::{FallocateFlags, fallocate};
    let d = root.join("alloc");
    fs::create_dir(&d).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(d.join("f"))
        .unwrap();
    f.write_all_at(b"head", 0).unwrap();
    fallocate(&f, FallocateFlags::empty(), 0, 1 << 20).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    fallocate(&f, FallocateFlags::KEEP_SIZE, 0, 4 << 20).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    let mut tail = [1u8; 16];
    f.read_exact_at(&mut tail, (1 << 20) - 16).unwrap();
    assert_eq!(tail, [0u8; 16], "the allocated range reads as zeros");
    expect_rustix(
        fallocate(
            &f,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            0,
            4096,
        ),
        libc::EOPNOTSUPP,
        "punching a hole",
    );
    drop(f);
    let st = Command::new("cp")
        .arg(d.join("f"))
        .arg(d.join("copy"))
        .status()
        .unwrap();
    assert!(st.success(), "cp inside the mount: {st}");
    let copy = fs::read(d.join("copy")).unwrap();
    assert_eq!((copy.len(), &copy[..4]), (1 << 20, &b"head"[..]));
    fs::remove_dir_all(&d).unwrap();
}

fn statfs_and_misc(root: &Path) {
    let s = rustix::fs::statvfs(root).unwrap();
    assert!(
        s.f_blocks > 0 && s.f_bsize > 0,
        "statfs: {} blocks of {}",
        s.f_blocks,
        s.f_bsize
    );
    assert!(s.f_bfree <= s.f_blocks);
    assert!(
        s.f_ffree <= s.f_files,
        "f_files is the total of inodes, f_ffree the free ones: {} / {}",
        s.f_ffree,
        s.f_files
    );
    assert!(s.f_namemax >= 255);
    let f = root.join("synced");
    let mut h = File::create(&f).unwrap();
    h.write_all(b"durable").unwrap();
    h.sync_all().unwrap();
    h.sync_data().unwrap();
    assert_eq!(fs::metadata(&f).unwrap().len(), 7);
    // An ioctl a file does not support is ENOTTY, as on a local file
    // system (Python's open asks isatty of every file it opens).
    expect_rustix(
        rustix::termios::tcgetattr(&h).map(drop),
        libc::ENOTTY,
        "TCGETS (isatty) on a file",
    );
    expect_errno(
        fs::create_dir(root.join("x".repeat(300))),
        libc::ENAMETOOLONG,
        "a 300-byte name",
    );
    // Directory handles work with std's directory iteration after changes.
    let d = root.join("dir-iter");
    fs::create_dir(&d).unwrap();
    for i in 0..50 {
        fs::write(d.join(format!("f{i:03}")), b"").unwrap();
    }
    let mut names: Vec<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 50);
    assert_eq!(names[0], "f000");
    let kinds: Vec<bool> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_type().unwrap().is_file())
        .collect();
    assert!(kinds.iter().all(|k| *k));
}

/// 10,000 entries listed while other files are being created through
/// the mount: every existing name exactly once in every listing, and
/// afterwards every name. The 10,000 are created beforehand through the
/// native client (32 at a time), which is several times faster than
/// creating them through the kernel one open/close at a time.
fn big_directory(root: &Path) {
    let d = root.join("big");
    let creator = {
        let d = d.clone();
        std::thread::spawn(move || {
            for i in 0..300 {
                File::create(d.join(format!("late{i:03}"))).unwrap();
            }
        })
    };
    let mut listings = 0;
    while !creator.is_finished() || listings == 0 {
        let names: Vec<String> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "a listing returned a name twice");
        let early = names.iter().filter(|n| n.starts_with('e')).count();
        assert_eq!(early, 10_000, "a listing missed existing entries");
        listings += 1;
    }
    creator.join().unwrap();
    let mut all: Vec<String> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    all.sort();
    assert_eq!(all.len(), 10_300);
    assert_eq!(all[0], "e00000");
    assert_eq!(all[10_299], "late299");
    println!("big directory: {listings} listings during concurrent creates");
}

/// Creates /posix/big with 10,000 empty files through the native client.
async fn fill_big_directory(client: &cairn_client::Client) {
    use cairn_client::meta_client::Owner;
    use cairn_proto::ids::InodeId;
    use futures::StreamExt;
    let dir = client.create_dir_all("/posix/big").await.unwrap();
    let t0 = std::time::Instant::now();
    let meta = client.meta().clone();
    futures::stream::iter(0..10_000)
        .map(|i| {
            let meta = meta.clone();
            async move {
                meta.create(
                    InodeId(dir.ino),
                    &format!("e{i:05}"),
                    0o644,
                    Owner::ROOT,
                    true,
                    false,
                )
                .await
                .unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    println!(
        "big directory: 10,000 creates in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posix_suite_over_a_real_mount() {
    let _serial = cairn_jepsen::serial().await;
    let cluster = DataCluster::start(DataOpts::default()).await.unwrap();
    let client = cluster.client(ClientOptions::default()).await.unwrap();
    client
        .meta()
        .create_volume("posix", VolumePolicy::default())
        .await
        .unwrap();
    let dir = cluster.meta.dir().join("mnt");
    let mount = Mount::start(&cluster.meta.addrs(), &dir, &["--volume", "/posix"]).unwrap();
    let root = mount.dir().to_path_buf();
    let only = std::env::var("CAIRN_TEST_STEPS").unwrap_or_default();
    if only.is_empty() || only.contains("10") {
        fill_big_directory(&client).await;
    }
    let steps: [(&str, Step); 12] = [
        ("lifecycle", lifecycle),
        ("renames", renames),
        ("links", links),
        ("permissions", permissions),
        ("truncation and holes", truncation_and_holes),
        ("append", append),
        ("xattrs", xattrs),
        ("unlink of an open file", unlink_open),
        ("special files", special_files),
        ("fallocate and copies", fallocate_and_copies),
        ("statfs and misc", statfs_and_misc),
        ("10,000-entry directory", big_directory),
    ];
    // CAIRN_TEST_STEPS=append,xattrs runs only those steps (debugging).
    for (name, step) in steps {
        if !only.is_empty() && !only.split(',').any(|s| name.starts_with(s)) {
            continue;
        }
        let r = root.clone();
        let t0 = std::time::Instant::now();
        let res = tokio::task::spawn_blocking(move || step(&r)).await;
        if let Err(e) = res {
            panic!(
                "step {name:?} failed: {e}\nmount log:\n{}",
                mount.log_text()
            );
        }
        println!("step {name}: ok in {:.1}s", t0.elapsed().as_secs_f64());
    }
    // What the mount wrote is what the native client reads.
    if !only.is_empty() {
        return;
    }
    let via_client = client.read_file("/posix/ren/z/x2/y/f").await.unwrap();
    assert_eq!(&via_client[..], b"deep");
    let mut mount = mount;
    let st = mount.stop().unwrap();
    assert!(st.success(), "cairn mount exited with {st}");
    assert!(!cairn_jepsen::fuse::is_mounted(&root));
}
