//! File locks across mounts (issue 15): `fcntl` byte-range locks and
//! `flock` taken through one `cairn mount` are honoured by another mount of
//! the same cluster (another machine, for the application): a conflicting
//! lock is refused or waited for, F_GETLK names the holder, a close
//! releases, and a killed mount's locks go when its session expires.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_client::ClientOptions;
use cairn_jepsen::data_cluster::{DataCluster, DataOpts};
use cairn_jepsen::fuse::Mount;
use cairn_proto::meta::VolumePolicy;
use nix::fcntl::{FcntlArg, FlockArg, fcntl};

/// Session timeout of the test cluster: how long a killed mount's locks
/// outlive it.
const SESSION_TIMEOUT: Duration = Duration::from_secs(3);

fn flock_struct(typ: i32, start: i64, len: i64) -> libc::flock {
    libc::flock {
        l_type: typ as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: start,
        l_len: len,
        l_pid: 0,
    }
}

fn io(r: nix::Result<libc::c_int>) -> std::io::Result<()> {
    r.map(|_| ()).map_err(std::io::Error::from)
}

/// fcntl(F_SETLK or F_SETLKW) on `len` bytes at `start` (len 0: to the end).
fn set_lock(f: &File, typ: i32, start: i64, len: i64, wait: bool) -> std::io::Result<()> {
    let fl = flock_struct(typ, start, len);
    let arg = if wait {
        FcntlArg::F_SETLKW(&fl)
    } else {
        FcntlArg::F_SETLK(&fl)
    };
    io(fcntl(f.as_raw_fd(), arg))
}

/// fcntl(F_GETLK): the lock in the way of a `typ` lock, as (type, start,
/// len, pid); type F_UNLCK when none is.
fn get_lock(f: &File, typ: i32, start: i64, len: i64) -> (i32, i64, i64, i32) {
    let mut fl = flock_struct(typ, start, len);
    io(fcntl(f.as_raw_fd(), FcntlArg::F_GETLK(&mut fl))).expect("F_GETLK");
    (i32::from(fl.l_type), fl.l_start, fl.l_len, fl.l_pid)
}

fn flock(f: &File, op: FlockArg) -> std::io::Result<()> {
    nix::fcntl::flock(f.as_raw_fd(), op).map_err(std::io::Error::from)
}

fn would_block(r: std::io::Result<()>, what: &str) {
    let e = r.expect_err(what);
    assert!(
        matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)),
        "{what}: {e}"
    );
}

/// Retries `attempt` until it succeeds (a lock another close frees a
/// moment after close(2) returns); fails with `what` after 5 s.
fn within_5s(what: &str, mut attempt: impl FnMut() -> std::io::Result<()>) {
    let t0 = Instant::now();
    while let Err(e) = attempt() {
        assert!(t0.elapsed() < Duration::from_secs(5), "{what}: {e}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn open_rw(p: &Path) -> File {
    OpenOptions::new().read(true).write(true).open(p).unwrap()
}

/// fcntl locks between two mounts: conflicts, ranges, F_GETLK, waiting,
/// release on close.
fn posix_locks(a: &Path, b: &Path) {
    std::fs::write(a.join("db"), b"sqlite pages").unwrap();
    let fa = open_rw(&a.join("db"));
    let fb = open_rw(&b.join("db"));
    set_lock(&fa, libc::F_WRLCK, 0, 100, false).unwrap();
    would_block(
        set_lock(&fb, libc::F_RDLCK, 50, 10, false),
        "a read lock over another mount's write lock",
    );
    // Bytes outside the range are free.
    set_lock(&fb, libc::F_WRLCK, 100, 0, false).unwrap();
    let (typ, start, len, pid) = get_lock(&fb, libc::F_WRLCK, 0, 10);
    assert_eq!((typ, start, len), (libc::F_WRLCK, 0, 100));
    assert_eq!(pid, std::process::id() as i32);
    let (typ, ..) = get_lock(&fa, libc::F_RDLCK, 0, 10);
    assert_eq!(typ, libc::F_UNLCK, "an owner never conflicts with itself");

    // F_SETLKW waits until the other mount unlocks.
    let waiter = {
        let fb = fb.try_clone().unwrap();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            set_lock(&fb, libc::F_WRLCK, 0, 100, true).unwrap();
            // Returned, not dropped: any close would release the lock.
            (t0.elapsed(), fb)
        })
    };
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        !waiter.is_finished(),
        "F_SETLKW returned while the lock was held"
    );
    set_lock(&fa, libc::F_UNLCK, 0, 0, false).unwrap();
    let (waited, fb2) = waiter.join().unwrap();
    assert!(
        waited >= Duration::from_millis(500),
        "waited only {waited:?}"
    );
    would_block(
        set_lock(&fa, libc::F_RDLCK, 10, 1, false),
        "the waiter's lock, once granted, holds",
    );
    // Closing the holder's file releases its locks (POSIX: any close).
    drop(fb);
    drop(fb2);
    set_lock(&fa, libc::F_WRLCK, 0, 0, false).unwrap();
    set_lock(&fa, libc::F_UNLCK, 0, 0, false).unwrap();

    // Read-only descriptors (whose close the mount answers without a
    // task when it has nothing to do): closing one releases its owner's
    // locks, the one taken through it ...
    let ro = File::open(b.join("db")).unwrap();
    set_lock(&ro, libc::F_RDLCK, 0, 10, false).unwrap();
    would_block(
        set_lock(&fa, libc::F_WRLCK, 0, 10, false),
        "a write lock over another mount's read lock",
    );
    drop(ro);
    set_lock(&fa, libc::F_WRLCK, 0, 10, false).unwrap();
    set_lock(&fa, libc::F_UNLCK, 0, 0, false).unwrap();
    // ... and (POSIX) one taken through another descriptor of the file.
    let fb = open_rw(&b.join("db"));
    set_lock(&fb, libc::F_WRLCK, 0, 10, false).unwrap();
    drop(File::open(b.join("db")).unwrap());
    set_lock(&fa, libc::F_WRLCK, 0, 10, false)
        .expect("closing a read-only descriptor dropped the owner's lock");
    drop(fb);
    drop(fa);
}

/// flock between two mounts: exclusive and shared, release on close.
fn flock_locks(a: &Path, b: &Path) {
    std::fs::write(a.join("rendezvous"), b"").unwrap();
    let fa = File::open(a.join("rendezvous")).unwrap();
    let fb = File::open(b.join("rendezvous")).unwrap();
    flock(&fa, FlockArg::LockExclusiveNonblock).unwrap();
    would_block(
        flock(&fb, FlockArg::LockSharedNonblock),
        "a shared flock over another mount's exclusive one",
    );
    // The last close of the open file releases it: a moment after close(2)
    // returns (FUSE sends the release without waiting for it).
    drop(fa);
    within_5s("still locked", || flock(&fb, FlockArg::LockSharedNonblock));
    let fa = File::open(a.join("rendezvous")).unwrap();
    flock(&fa, FlockArg::LockSharedNonblock).unwrap();
    would_block(
        flock(&fb, FlockArg::LockExclusiveNonblock),
        "an upgrade while another mount shares the lock",
    );
    flock(&fa, FlockArg::Unlock).unwrap();
    flock(&fb, FlockArg::LockExclusiveNonblock).unwrap();
}

/// fcntl(F_OFD_SETLK or F_OFD_SETLKW) over the whole file.
fn ofd_lock(f: &File, typ: i32, wait: bool) -> std::io::Result<()> {
    let fl = flock_struct(typ, 0, 0);
    let arg = if wait {
        FcntlArg::F_OFD_SETLKW(&fl)
    } else {
        FcntlArg::F_OFD_SETLK(&fl)
    };
    io(fcntl(f.as_raw_fd(), arg))
}

/// What a close releases: an OFD lock left at close goes with the open
/// file (the kernel sends no unlock for it), and the late release of an
/// open file never takes a lock a newer open took. The kernel reuses a
/// closed file's address, which is the owner of its flock and OFD locks,
/// and does not wait for the release: each round below closes a flocked
/// file and at once locks through a new open, often with the same owner.
fn closes_release_what_they_should(a: &Path, b: &Path) {
    std::fs::write(a.join("ofd"), b"").unwrap();
    let fb = open_rw(&b.join("ofd"));
    let fa = open_rw(&a.join("ofd"));
    ofd_lock(&fa, libc::F_WRLCK, false).unwrap();
    would_block(ofd_lock(&fb, libc::F_WRLCK, false), "an OFD lock held");
    drop(fa);
    within_5s("an OFD lock outlived its file's close", || {
        ofd_lock(&fb, libc::F_WRLCK, false)
    });
    ofd_lock(&fb, libc::F_UNLCK, false).unwrap();
    for round in 0..30 {
        let f = open_rw(&a.join("ofd"));
        flock(&f, FlockArg::LockExclusive).unwrap();
        drop(f);
        let g = open_rw(&a.join("ofd"));
        ofd_lock(&g, libc::F_WRLCK, true).unwrap();
        // The old file's release has arrived by now.
        std::thread::sleep(Duration::from_millis(30));
        let r = ofd_lock(&fb, libc::F_WRLCK, false);
        if r.is_ok() {
            ofd_lock(&fb, libc::F_UNLCK, false).unwrap();
        }
        would_block(
            r,
            &format!("round {round}: the lock of a new open, after the old open's release"),
        );
        ofd_lock(&g, libc::F_UNLCK, false).unwrap();
    }
    // Every open closed: nothing of theirs is left locked.
    within_5s("a lock outlived the closes", || {
        ofd_lock(&fb, libc::F_WRLCK, false)
    });
}

/// A process on mount `a` unlocks and locks again in a loop while
/// another, on mount `w` (the same mount, or another), waits in F_SETLKW.
/// The waiter's mount wakes it at each unlock (its own, or another's from
/// the change feed) instead of leaving it to its next poll of meta (every
/// 100 ms once it has waited a while), so it gets the lock within a few
/// rounds instead of starving.
fn a_waiter_is_not_starved_by_a_relocker(a: &Path, w: &Path, name: &str) {
    std::fs::write(a.join(name), b"").unwrap();
    let holder = open_rw(&a.join(name));
    ofd_lock(&holder, libc::F_WRLCK, false).unwrap();
    let f = open_rw(&w.join(name));
    let waiter = std::thread::spawn(move || {
        ofd_lock(&f, libc::F_WRLCK, true).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        ofd_lock(&f, libc::F_UNLCK, false).unwrap();
    });
    // Long enough for the waiter's polls to reach their longest interval.
    std::thread::sleep(Duration::from_millis(800));
    let mut rounds = 0;
    while !waiter.is_finished() {
        assert!(
            rounds < 40,
            "the waiter ({name}) did not get the lock in {rounds} unlocks"
        );
        ofd_lock(&holder, libc::F_UNLCK, false).unwrap();
        ofd_lock(&holder, libc::F_WRLCK, true).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        rounds += 1;
    }
    println!("the waiter ({name}) got the lock after {rounds} unlocks");
    waiter.join().unwrap();
    ofd_lock(&holder, libc::F_UNLCK, false).unwrap();
}

/// PyTorch's FileStore pattern: workers on two mounts each open the shared
/// file, lock it, read every record, append theirs and close, many times
/// over. Odd rounds use flock (what FileStore calls), even rounds an
/// open-file fcntl lock released by F_UNLCK before the close. Under the
/// lock each worker must read every record written before it, whichever
/// mount wrote it, and no append may be lost or torn.
fn file_store(mounts: [&Path; 2]) {
    const WORKERS: usize = 4;
    const ROUNDS: usize = 20;
    std::fs::write(mounts[0].join("store"), b"").unwrap();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let path = mounts[w % 2].join("store");
            std::thread::spawn(move || {
                for round in 0..ROUNDS {
                    let mut f = open_rw(&path);
                    let posix = round % 2 == 0;
                    if posix {
                        ofd_lock(&f, libc::F_WRLCK, true).unwrap();
                    } else {
                        flock(&f, FlockArg::LockExclusive).unwrap();
                    }
                    let mut text = String::new();
                    std::io::Read::read_to_string(&mut f, &mut text).unwrap();
                    let mine = text
                        .lines()
                        .filter(|l| l.starts_with(&format!("w{w}:")))
                        .count();
                    assert_eq!(
                        mine, round,
                        "worker {w} round {round} read {mine} of its records:\n{text}"
                    );
                    let at = text.len() as u64;
                    std::os::unix::fs::FileExt::write_all_at(
                        &f,
                        format!("w{w}:{round}\n").as_bytes(),
                        at,
                    )
                    .unwrap();
                    if posix {
                        ofd_lock(&f, libc::F_UNLCK, false).unwrap();
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let text = std::fs::read_to_string(mounts[1].join("store")).unwrap();
    assert_eq!(text.lines().count(), WORKERS * ROUNDS, "{text}");
    for w in 0..WORKERS {
        let seq: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with(&format!("w{w}:")))
            .map(String::from)
            .collect();
        let want: Vec<String> = (0..ROUNDS).map(|r| format!("w{w}:{r}")).collect();
        assert_eq!(seq, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_are_shared_by_every_mount() {
    let _serial = cairn_jepsen::serial().await;
    let timeout = format!("{}s", SESSION_TIMEOUT.as_secs());
    let cluster = DataCluster::start(DataOpts {
        meta_args: vec!["--session-timeout".into(), timeout],
        ..DataOpts::default()
    })
    .await
    .unwrap();
    let client = cluster.client(ClientOptions::default()).await.unwrap();
    client
        .meta()
        .create_volume("locks", VolumePolicy::default())
        .await
        .unwrap();
    let meta = cluster.meta.addrs();
    let base = cluster.meta.dir().to_path_buf();
    let args = ["--volume", "/locks"];
    let ma = Mount::start(&meta, &base.join("a"), &args).unwrap();
    let mb = Mount::start(&meta, &base.join("b"), &args).unwrap();
    let (a, b) = (ma.dir().to_path_buf(), mb.dir().to_path_buf());
    let (a2, b2) = (a.clone(), b.clone());
    tokio::task::spawn_blocking(move || {
        posix_locks(&a2, &b2);
        flock_locks(&a2, &b2);
        closes_release_what_they_should(&a2, &b2);
        a_waiter_is_not_starved_by_a_relocker(&a2, &a2, "busy-here");
        a_waiter_is_not_starved_by_a_relocker(&a2, &b2, "busy-there");
        file_store([&a2, &b2]);
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nmount a:\n{}\nmount b:\n{}",
            ma.log_text(),
            mb.log_text()
        )
    });

    // A mount killed while holding a lock: the lock outlives it until its
    // session expires, then others get it.
    let mut mc = Mount::start(&meta, &base.join("c"), &args).unwrap();
    let c = mc.dir().to_path_buf();
    let held = open_rw(&c.join("db"));
    set_lock(&held, libc::F_WRLCK, 0, 0, false).unwrap();
    let pid = mc.pid().unwrap();
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    drop(held);
    let fa = open_rw(&a.join("db"));
    would_block(
        set_lock(&fa, libc::F_WRLCK, 0, 0, false),
        "the dead mount's lock before its session expired",
    );
    let t0 = Instant::now();
    tokio::task::spawn_blocking(move || set_lock(&fa, libc::F_WRLCK, 0, 0, true))
        .await
        .unwrap()
        .unwrap();
    let freed = t0.elapsed();
    assert!(
        freed < SESSION_TIMEOUT * 4,
        "the dead mount's lock went only after {freed:?}"
    );
    drop(mc.stop());
    drop(ma);
    drop(mb);
}
