//! Mounting like any other filesystem (issue 4): an fstab line through
//! mount(8) and mount.fuse3, the helper calling form, the daemon mode of
//! `modelfs mount` and where its logs go (log_file=, syslog, the default
//! file when there is no syslog), a non-root user's mount through
//! fusermount3, `-o` options, and `modelfs status`.
//!
//! Every test runs the real binary against real FUSE mounts and, where a
//! model is fetched, the real HTTPS test origin on loopback. They run as
//! root and change host state (a link in /usr/sbin, a socket at /dev/log, a
//! user account, files in /var/log/modelfs); each change is undone by a
//! guard's Drop, so a failing assertion leaves nothing behind.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::common::{
    Fault, MIB, Mount, Origin, TestStore, hex, modelfs_bin, random_bytes, require_fuse, wait_until,
};
use modelfs::digest::Sha256;
use modelfs::store::{Manifest, ModelName, Source, Store};
use serde_json::Value;

const KIB: usize = 1 << 10;

// ---------------------------------------------------------------------------
// Running commands
// ---------------------------------------------------------------------------

/// Runs `cmd` to completion (stdin from /dev/null, output captured); a
/// command still running after `limit` is killed and fails the test.
fn run_within(cmd: &mut Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let shown = format!("{cmd:?}");
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for a command"),
        Err(_) => {
            // SAFETY: our own child, by its pid.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{shown} did not finish within {limit:?}");
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    run_within(cmd, Duration::from_secs(30))
}

/// Runs `cmd` and fails the test, showing its output, unless it exits 0.
/// `modelfs mount MNT --store STORE`, for more arguments to be added.
fn mount_cmd(mnt: impl AsRef<std::ffi::OsStr>, store: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(modelfs_bin());
    c.arg("mount").arg(mnt).arg("--store").arg(store);
    c
}

fn run_ok(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh temporary directory that any user may traverse (tempdirs are
/// 0700; a path through one would stop a non-root daemon or helper).
fn open_tempdir() -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// `parent/name`, created, canonical (mountinfo shows canonical paths).
fn make_dir(parent: &Path, name: &str) -> PathBuf {
    let p = parent.join(name);
    fs::create_dir_all(&p).unwrap();
    p.canonicalize().unwrap()
}

// ---------------------------------------------------------------------------
// Mounts and daemons
// ---------------------------------------------------------------------------

/// A path as the kernel escapes it in /proc/mounts and mountinfo.
fn mount_escaped(p: &Path) -> String {
    p.to_string_lossy()
        .replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('\t', "\\011")
        .replace('\n', "\\012")
}

/// How many mounts /proc/thread-self/mountinfo lists at `mp` (an absolute,
/// canonical path; nothing under it is touched, so this works for a user's
/// mount that root may not enter).
fn mounts_at(mp: &Path) -> usize {
    let want = mount_escaped(mp);
    fs::read_to_string("/proc/thread-self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .count()
}

/// (source, type) of each /proc/mounts entry at `mp`.
fn proc_mounts_at(mp: &Path) -> Vec<(String, String)> {
    proc_mounts_rows(mp)
        .into_iter()
        .map(|f| (f[0].clone(), f[2].clone()))
        .collect()
}

/// The mount options /proc/mounts shows for the one mount at `mp`.
fn proc_mount_options(mp: &Path) -> Vec<String> {
    let rows = proc_mounts_rows(mp);
    assert_eq!(rows.len(), 1, "one mount at {}: {rows:?}", mp.display());
    rows[0][3].split(',').map(str::to_string).collect()
}

fn proc_mounts_rows(mp: &Path) -> Vec<Vec<String>> {
    let want = mount_escaped(mp);
    fs::read_to_string("/proc/thread-self/mounts")
        .unwrap()
        .lines()
        .map(|l| l.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter(|f| f.get(1) == Some(&want))
        .collect()
}

/// The pid of the modelfs daemon serving `mp`: the process whose command
/// line has `--foreground` (the daemon is `modelfs … --foreground`,
/// started by the command that returned) and `mp` as an argument.
fn daemon_pid(mp: &Path) -> Option<u32> {
    let want = mp.as_os_str().as_encoded_bytes();
    let me = std::process::id();
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        if pid == me {
            return None;
        }
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let ours = args.contains(&b"--foreground".as_slice()) && args.contains(&want);
        (ours && !process_gone(pid)).then_some(pid)
    })
}

/// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
fn process_gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // "pid (comm) S …": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X"),
    }
}

/// Ends what a test left mounted at a mountpoint, even when it fails
/// half-way: a lazy unmount, then SIGTERM (SIGKILL if needed) to the
/// daemon found by its command line.
struct MountGuard {
    mp: PathBuf,
}

impl MountGuard {
    fn new(mp: &Path) -> Self {
        Self {
            mp: mp.to_path_buf(),
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let pid = daemon_pid(&self.mp);
        if mounts_at(&self.mp) > 0 {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mp)
                .stderr(Stdio::null())
                .status();
        }
        if let Some(pid) = pid {
            // SAFETY: signalling the daemon this test started, by its pid.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            if !wait_until(Duration::from_secs(5), || process_gone(pid)) {
                // SAFETY: as above.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

/// Removes a file on drop (log files the daemon writes outside tempdirs).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Reads a whole file through a mount and returns its digest.
fn sha_through(path: &Path) -> String {
    hex(&fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())))
}

// ---------------------------------------------------------------------------
// Host state shared between tests
// ---------------------------------------------------------------------------

/// Exclusive use of some host-wide state: within the test binary by a
/// static Mutex (cargo runs the tests of the whole suite on parallel
/// threads of one process), and across processes by an flock on a file in /tmp (another `cargo test`
/// of this or another checkout may run these tests at the same time).
struct HostLock {
    _file: fs::File,
    _guard: MutexGuard<'static, ()>,
}

fn host_lock(mutex: &'static Mutex<()>, name: &str) -> HostLock {
    // A test that failed while holding the lock poisons it; the state it
    // guards was restored by that test's guards, so carry on.
    let guard = mutex.lock().unwrap_or_else(|e| e.into_inner());
    let path = format!("/tmp/modelfs-tests-{name}.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: flock on an fd we own; released when the file is closed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {path}: {}", std::io::Error::last_os_error());
    HostLock {
        _file: file,
        _guard: guard,
    }
}

const SBIN_MODELFS: &str = "/usr/sbin/modelfs";

/// Held by the tests that need `/usr/sbin/modelfs` (see [`SbinLink`]): one
/// test's Drop removes the link, which must not happen under another test's
/// `mount`, so they take turns.
static SBIN: Mutex<()> = Mutex::new(());

/// `/usr/sbin/modelfs` → the binary under test, while this lives.
///
/// mount(8) runs its helpers with a fixed PATH (util-linux 2.38:
/// /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin), and
/// mount.fuse3 runs `modelfs SOURCE MOUNTPOINT -o …` with it, so the binary
/// just built has to be reachable there. An existing
/// `/usr/sbin/modelfs` is only replaced when it is a link to a test build
/// (a leftover of an interrupted run); an installed modelfs is left alone
/// and the test fails saying so.
struct SbinLink {
    _lock: HostLock,
}

impl SbinLink {
    fn install() -> SbinLink {
        let lock = host_lock(&SBIN, "usr-sbin-modelfs");
        let me = modelfs_bin();
        if let Ok(meta) = fs::symlink_metadata(SBIN_MODELFS) {
            let target = fs::read_link(SBIN_MODELFS).ok();
            let test_build = meta.file_type().is_symlink()
                && target.as_ref().is_some_and(|t| {
                    t == &me
                        || (t.file_name() == Some("modelfs".as_ref())
                            && t.components().any(|c| c.as_os_str() == "target"))
                });
            assert!(
                test_build,
                "{SBIN_MODELFS} exists and is not a link to a test build of modelfs \
                 (it points to {target:?}); this test will not replace an installed modelfs. \
                 Move it away to run the test."
            );
            fs::remove_file(SBIN_MODELFS).unwrap();
        }
        std::os::unix::fs::symlink(&me, SBIN_MODELFS)
            .unwrap_or_else(|e| panic!("symlink {SBIN_MODELFS} -> {}: {e}", me.display()));
        SbinLink { _lock: lock }
    }
}

impl Drop for SbinLink {
    fn drop(&mut self) {
        if fs::read_link(SBIN_MODELFS).ok() == Some(modelfs_bin()) {
            let _ = fs::remove_file(SBIN_MODELFS);
        }
    }
}

/// Held by every test whose daemon chooses its own log target (no
/// `log_file=`): on a host without `/dev/log` one test puts a socket
/// there, which the others must not see.
static DEV_LOG: Mutex<()> = Mutex::new(());

/// The `/dev/log` a test's daemons see. Where the host has one (a syslog
/// daemon, journald's link to `/run/systemd/journal/dev-log`), this test's
/// thread moves to a private mount namespace whose `/dev/log` is a socket
/// of the test's own: the children it starts (mount(8), the daemon,
/// fusermount3, umount) inherit that namespace, and the host's syslog is
/// neither used nor changed. Where the host has none (a bare container),
/// the socket is made at `/dev/log` itself and removed on drop.
struct DevLog {
    _lock: HostLock,
    dir: tempfile::TempDir,
    /// Where the socket was made on the host, to remove on drop.
    made_at: Option<PathBuf>,
}

impl DevLog {
    /// `/dev/log` accepts no connection: as on a host without syslog.
    fn silent() -> DevLog {
        let dev_log = Self::take();
        if Path::new("/dev/log").symlink_metadata().is_ok() {
            // A socket file nobody listens on: connecting is refused.
            let dead = dev_log.dir.path().join("dead.sock");
            drop(UnixDatagram::bind(&dead).expect("bind a socket in a tempdir"));
            over_dev_log(&dead);
        }
        dev_log
    }

    /// A socket at `/dev/log` that receives what syslog(3) sends, as
    /// journald or rsyslog would.
    fn listening() -> (DevLog, FakeSyslog) {
        let mut dev_log = Self::take();
        let sock = if Path::new("/dev/log").symlink_metadata().is_ok() {
            let path = dev_log.dir.path().join("log.sock");
            let sock = UnixDatagram::bind(&path).expect("bind a socket in a tempdir");
            over_dev_log(&path);
            sock
        } else {
            dev_log.made_at = Some(PathBuf::from("/dev/log"));
            UnixDatagram::bind("/dev/log").expect("bind /dev/log")
        };
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        (dev_log, FakeSyslog { sock })
    }

    fn take() -> DevLog {
        DevLog {
            _lock: host_lock(&DEV_LOG, "dev-log"),
            dir: open_tempdir(),
            made_at: None,
        }
    }
}

impl Drop for DevLog {
    fn drop(&mut self) {
        if let Some(p) = &self.made_at {
            let _ = fs::remove_file(p);
        }
    }
}

/// Moves this thread to a private mount namespace (mounts made in it
/// propagate nowhere) and bind-mounts `socket` over `/dev/log` (the
/// mount follows a link at `/dev/log` to the socket it names).
fn over_dev_log(socket: &Path) {
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: plain syscalls with valid NUL-terminated paths.
    unsafe {
        assert_eq!(
            libc::unshare(libc::CLONE_NEWNS),
            0,
            "this test needs to make a private mount namespace (root, CAP_SYS_ADMIN): {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ),
            0,
            "make / private in the test's mount namespace: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::mount(
                c(socket).as_ptr(),
                c"/dev/log".as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null()
            ),
            0,
            "bind {} over /dev/log: {}",
            socket.display(),
            std::io::Error::last_os_error()
        );
    }
}

/// What a test's `/dev/log` received.
struct FakeSyslog {
    sock: UnixDatagram,
}

impl FakeSyslog {
    /// Messages received until one contains `needle` or `limit` passes.
    fn wait_for(&self, needle: &str, limit: Duration) -> Vec<String> {
        let end = Instant::now() + limit;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 8192];
        while Instant::now() < end {
            if let Ok(n) = self.sock.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                if got.last().unwrap().contains(needle) {
                    break;
                }
            }
        }
        got
    }
}

/// `systemd-escape --path` for paths made of `[A-Za-z0-9._-]` components
/// whose first one does not start with a dot: `/` → `-`, `-` → `\x2d`.
fn escaped_for_log_name(p: &Path) -> String {
    let comps: Vec<String> = p
        .components()
        .skip(1)
        .map(|c| {
            let s = c.as_os_str().to_str().unwrap();
            assert!(
                s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
                "keep test paths simple: {s:?}"
            );
            s.replace('-', "\\x2d")
        })
        .collect();
    assert!(!comps[0].starts_with('.'));
    comps.join("-")
}

/// A user account made for one test (`useradd`), removed with its home on
/// drop, after its mounts are detached and its processes ended.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
}

impl TestUser {
    fn create() -> TestUser {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "mfst{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run_ok(
            Command::new("useradd")
                .args(["--create-home", "--user-group", "--shell", "/bin/sh"])
                .arg(&name),
        );
        let c = std::ffi::CString::new(name.clone()).unwrap();
        // SAFETY: getpwnam with a valid C string; the entry is copied at once.
        let (uid, gid, home) = unsafe {
            let pw = libc::getpwnam(c.as_ptr());
            assert!(!pw.is_null(), "useradd made no passwd entry for {name}");
            let home = std::ffi::CStr::from_ptr((*pw).pw_dir)
                .to_string_lossy()
                .into_owned();
            ((*pw).pw_uid, (*pw).pw_gid, PathBuf::from(home))
        };
        let user = TestUser {
            name,
            uid,
            gid,
            home,
        };
        // The home must be reachable from / by the user (it is; /home is
        // 0755) and owned by them.
        assert!(user.home.is_dir(), "useradd made no home for {}", user.name);
        user
    }

    /// `runuser -u USER -- env -i HOME=… PATH=… ARGS…`: the user's own
    /// clean environment.
    fn cmd(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", &self.name, "--", "env", "-i"])
            .arg(format!("HOME={}", self.home.display()))
            .arg("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin");
        for a in args {
            c.arg(a);
        }
        c
    }

    /// The user's processes, by scanning /proc.
    fn pids(&self) -> Vec<u32> {
        let me = format!("Uid:\t{}\t", self.uid);
        fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                        status.lines().any(|l| l.starts_with(&me)).then_some(pid)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let home = mount_escaped(&self.home);
        let info = fs::read_to_string("/proc/thread-self/mountinfo").unwrap_or_default();
        for mp in info.lines().filter_map(|l| l.split(' ').nth(4)) {
            if mp.starts_with(&format!("{home}/")) {
                let _ = Command::new("umount").args(["-l", mp]).status();
            }
        }
        // Every process of this user was started by this test.
        for pid in self.pids() {
            // SAFETY: killing, by pid, a process of the account made here.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let uid = self.uid;
        let _ = wait_until(Duration::from_secs(5), || {
            self.pids().iter().all(|p| process_gone(*p))
        });
        let out = Command::new("userdel")
            .args(["-r", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!(
                "warning: userdel -r {} (uid {uid}) failed: {:?}",
                self.name, out
            );
        }
    }
}

static DEV_FUSE: Mutex<()> = Mutex::new(());

/// Lets `user` open /dev/fuse while this lives, if it cannot already.
///
/// A user's mount needs /dev/fuse read-write for that user: fusermount3
/// opens it with the user's rights on purpose, so the device's mode is the
/// host's policy on who may mount FUSE. The fuse3 package makes it 0666;
/// some containers (this CI's among them) leave it 0600. Then the device's
/// group is set to the user's own group with g+rw, and owner, group and
/// mode are put back on drop.
struct DevFuseAccess {
    _lock: HostLock,
    restore: Option<(u32, u32)>,
}

impl DevFuseAccess {
    fn grant(user: &TestUser) -> DevFuseAccess {
        use std::os::unix::fs::MetadataExt;
        let lock = host_lock(&DEV_FUSE, "dev-fuse");
        let can = run(&mut user.cmd(&[&"test", &"-r", &"/dev/fuse", &"-a", &"-w", &"/dev/fuse"]))
            .status
            .success();
        if can {
            return DevFuseAccess {
                _lock: lock,
                restore: None,
            };
        }
        let meta = fs::metadata("/dev/fuse").unwrap();
        let (mode, gid) = (meta.mode() & 0o7777, meta.gid());
        std::os::unix::fs::chown("/dev/fuse", None, Some(user.gid)).unwrap();
        fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(mode | 0o060)).unwrap();
        DevFuseAccess {
            _lock: lock,
            restore: Some((mode, gid)),
        }
    }
}

impl Drop for DevFuseAccess {
    fn drop(&mut self) {
        if let Some((mode, gid)) = self.restore {
            let _ = std::os::unix::fs::chown("/dev/fuse", None, Some(gid));
            let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(mode));
        }
    }
}

// ---------------------------------------------------------------------------
// fstab and the mount.fuse3 calling form
// ---------------------------------------------------------------------------

#[test]
fn an_fstab_line_mounts_through_mount_fuse3_fetches_on_first_read_and_umount_ends_the_daemon() {
    require_fuse();
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(256 * KIB, 41);
    store.add_pending("fstab-model", &origin, &data);
    let dir = open_tempdir();
    let mnt = make_dir(dir.path(), "models");
    let log = dir.path().join("mount.log");
    let fstab = dir.path().join("fstab");
    let store_root = store.root.canonicalize().unwrap();
    fs::write(
        &fstab,
        format!(
            "# a test fstab\n{}  {}  fuse.modelfs  ro,allow_other,_netdev,nofail,ca_file={},log_file={}  0  0\n",
            store_root.display(),
            mnt.display(),
            origin.ca_pem_path().display(),
            log.display()
        ),
    )
    .unwrap();

    let _link = SbinLink::install();
    let _guard = MountGuard::new(&mnt);
    run_ok(Command::new("mount").arg("-T").arg(&fstab).arg(&mnt));
    assert_eq!(
        mounts_at(&mnt),
        1,
        "mount -T returned before the mount was live"
    );
    assert_eq!(
        proc_mounts_at(&mnt),
        vec![(store_root.display().to_string(), "fuse.modelfs".to_string())],
        "/proc/mounts should show the store as the source"
    );
    let opts = proc_mount_options(&mnt);
    for o in ["ro", "nosuid", "nodev", "allow_other"] {
        assert!(
            opts.iter().any(|x| x == o),
            "{o} missing from the mount's options {opts:?}"
        );
    }
    let pid = daemon_pid(&mnt).expect("a modelfs daemon serving the fstab mount");
    assert_eq!(
        origin.stats("fstab-model.gguf").gets,
        0,
        "mounting must not download anything"
    );

    // The first read fetches from the origin and verifies.
    assert_eq!(sha_through(&mnt.join("fstab-model.gguf")), hex(&data));
    assert_eq!(origin.stats("fstab-model.gguf").gets, 1);

    // `mount -a` sees it is mounted already.
    run_ok(Command::new("mount").arg("-a").arg("-T").arg(&fstab));
    assert_eq!(
        mounts_at(&mnt),
        1,
        "mount -a mounted the fstab line a second time"
    );

    run_ok(Command::new("umount").arg(&mnt));
    assert_eq!(mounts_at(&mnt), 0);
    assert!(
        wait_until(Duration::from_secs(10), || process_gone(pid)),
        "the daemon (pid {pid}) is still running after umount"
    );
    let log = fs::read_to_string(&log).unwrap();
    assert!(log.contains("was unmounted"), "daemon log:\n{log}");

    // A line whose store is missing fails `mount` with modelfs's reason.
    let missing = dir.path().join("missing-store");
    let bad_fstab = dir.path().join("fstab.bad");
    fs::write(
        &bad_fstab,
        format!(
            "{}  {}  fuse.modelfs  ro,_netdev,nofail  0  0\n",
            missing.display(),
            mnt.display()
        ),
    )
    .unwrap();
    let out = run(Command::new("mount").arg("-T").arg(&bad_fstab).arg(&mnt));
    assert!(!out.status.success(), "mount of a missing store succeeded");
    assert!(
        stderr_of(&out).contains(&format!("model store {}", missing.display())),
        "mount should pass on modelfs's message: {}",
        stderr_of(&out)
    );
    assert_eq!(mounts_at(&mnt), 0);
}

/// Like mount(8), `modelfs mount` and an fstab `mount` refuse a mountpoint
/// with a live mount on it instead of hiding it under a second one, while
/// `mount -a` (which skips mounted lines itself) keeps succeeding; a dead
/// FUSE mount gets the `umount -l` hint. Before, a second modelfs mount
/// was stacked on the first and a dead one was answered with `mkdir -p`.
#[test]
fn a_live_mountpoint_is_refused_like_mount_8_does_and_a_dead_one_gets_the_umount_l_hint() {
    require_fuse();
    let store = TestStore::new();
    let data = random_bytes(16 * KIB, 52);
    store.put_blob(&data);
    store.write_manifest("m", "https://example.invalid/m.gguf", &data);
    let store_root = store.root.canonicalize().unwrap();
    let dir = open_tempdir();
    let mnt = make_dir(dir.path(), "models");
    let log = dir.path().join("mount.log");
    let _guard = MountGuard::new(&mnt);

    let out = run_ok(
        mount_cmd(&mnt, &store.root)
            .arg("-o")
            .arg(format!("log_file={}", log.display())),
    );
    assert_eq!(
        stderr_of(&out).trim(),
        format!(
            "modelfs: mounted {} at {}; log: {}",
            store_root.display(),
            mnt.display(),
            log.display()
        ),
        "the mount says where it is and where its log goes"
    );
    let already = format!(
        "mount: {}: already mounted (fuse.modelfs {})",
        mnt.display(),
        store_root.display()
    );

    // `modelfs mount` again.
    let out = run(&mut mount_cmd(&mnt, &store.root));
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains(&already), "{}", stderr_of(&out));
    assert_eq!(mounts_at(&mnt), 1, "nothing was stacked");

    // An fstab line for it, mounted by name: mount(8) runs the helper,
    // which refuses; `mount -a` skips the mounted line and succeeds.
    let fstab = dir.path().join("fstab");
    fs::write(
        &fstab,
        format!(
            "{}  {}  fuse.modelfs  ro,_netdev,nofail  0  0\n",
            store_root.display(),
            mnt.display()
        ),
    )
    .unwrap();
    let _link = SbinLink::install();
    let out = run(Command::new("mount").arg("-T").arg(&fstab).arg(&mnt));
    assert!(
        !out.status.success(),
        "an fstab mount over a live one succeeded"
    );
    assert!(stderr_of(&out).contains(&already), "{}", stderr_of(&out));
    assert_eq!(mounts_at(&mnt), 1, "nothing was stacked");
    run_ok(Command::new("mount").arg("-a").arg("-T").arg(&fstab));
    assert_eq!(mounts_at(&mnt), 1, "mount -a skipped the mounted line");

    // Any other mount there.
    let other = make_dir(dir.path(), "tmp");
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "scratch"])
            .arg(&other),
    );
    let _other_guard = MountGuard::new(&other);
    let out = run(&mut mount_cmd(&other, &store.root));
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains(&format!(
            "mount: {}: already mounted (tmpfs scratch)",
            other.display()
        )),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(mounts_at(&other), 1);

    // A dead mount: its daemon was killed.
    let pid = daemon_pid(&mnt).expect("the daemon");
    // SAFETY: killing the daemon this test started, by its pid.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(wait_until(Duration::from_secs(10), || process_gone(pid)));
    let out = run(&mut mount_cmd(&mnt, &store.root));
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("Transport endpoint is not connected")
            && err.contains(&format!("umount -l {}", mnt.display()))
            && !err.contains("mkdir"),
        "a dead mount gets the umount -l hint: {err}"
    );
    assert_eq!(mounts_at(&mnt), 1, "nothing was stacked on the dead mount");
}

/// `Key=value` settings of a systemd unit file (comments skipped).
fn unit_settings(path: &Path) -> Vec<(String, String)> {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn setting<'a>(settings: &'a [(String, String)], key: &str) -> &'a str {
    settings
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
}

#[test]
fn the_systemd_mount_unit_mounts_through_mount_8_the_way_systemd_runs_it() {
    require_fuse();
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    let mount_unit = unit_settings(&contrib.join("models.mount"));
    let automount_unit = unit_settings(&contrib.join("models.automount"));
    // systemd requires a mount unit's name to be its escaped Where=.
    assert_eq!(setting(&mount_unit, "Where"), "/models");
    assert_eq!(setting(&automount_unit, "Where"), "/models");
    let (ty, options) = (
        setting(&mount_unit, "Type"),
        setting(&mount_unit, "Options"),
    );
    assert_eq!(ty, "fuse.modelfs");

    // The unit's Type= and Options= with this test's store and mountpoint:
    // systemd runs `mount WHAT WHERE -t TYPE -o OPTIONS`.
    let store = TestStore::new();
    let data = random_bytes(32 * KIB, 48);
    store.put_blob(&data);
    store.write_manifest("unit-model", "https://example.invalid/u.gguf", &data);
    let dir = open_tempdir();
    let mnt = make_dir(dir.path(), "models");
    let log = dir.path().join("unit.log");
    let _link = SbinLink::install();
    let _guard = MountGuard::new(&mnt);
    run_ok(
        Command::new("mount")
            .arg(&store.root)
            .arg(&mnt)
            .args(["-t", ty, "-o"])
            .arg(format!("{options},log_file={}", log.display())),
    );
    assert_eq!(mounts_at(&mnt), 1);
    assert_eq!(sha_through(&mnt.join("unit-model.gguf")), hex(&data));
    let pid = daemon_pid(&mnt).expect("the daemon of the unit's mount");
    run_ok(Command::new("umount").arg(&mnt));
    assert_eq!(mounts_at(&mnt), 0);
    assert!(wait_until(Duration::from_secs(10), || process_gone(pid)));
}

/// A direct autofs mount at a directory, as systemd's `.automount` (or
/// `x-systemd.automount`) puts at `/models`, with this test process as
/// the automount daemon that never answers: anything that triggers it would
/// hang. The pipe shows whether the kernel asked for a mount. Detached on
/// drop.
struct AutofsPlaceholder {
    mp: PathBuf,
    read_end: fs::File,
    _write_end: fs::File,
}

impl AutofsPlaceholder {
    fn mount(mp: &Path) -> AutofsPlaceholder {
        use std::os::fd::FromRawFd;
        let mut fds = [0; 2];
        // SAFETY: a valid 2-element array; O_NONBLOCK so that the check
        // below does not wait.
        assert_eq!(
            unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) },
            0
        );
        // SAFETY: fresh fds we own.
        let (read_end, write_end) =
            unsafe { (fs::File::from_raw_fd(fds[0]), fs::File::from_raw_fd(fds[1])) };
        // SAFETY: getpgrp cannot fail.
        let pgrp = unsafe { libc::getpgrp() };
        let data = std::ffi::CString::new(format!(
            "fd={},pgrp={pgrp},minproto=5,maxproto=5,direct",
            write_end.as_raw_fd()
        ))
        .unwrap();
        let target = std::ffi::CString::new(mp.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid C strings.
        let rc = unsafe {
            libc::mount(
                c"modelfs-test-autofs".as_ptr(),
                target.as_ptr(),
                c"autofs".as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "cannot mount an autofs placeholder (is the autofs module available?): {}",
            std::io::Error::last_os_error()
        );
        AutofsPlaceholder {
            mp: mp.to_path_buf(),
            read_end,
            _write_end: write_end,
        }
    }

    /// Whether the kernel asked the automount daemon for a mount.
    fn triggered(&self) -> bool {
        use std::io::Read;
        let mut buf = [0u8; 512];
        matches!((&self.read_end).read(&mut buf), Ok(n) if n > 0)
    }
}

impl Drop for AutofsPlaceholder {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mp)
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn a_mount_over_an_automount_placeholder_neither_triggers_it_nor_is_refused() {
    require_fuse();
    let store = TestStore::new();
    let data = random_bytes(32 * KIB, 49);
    store.put_blob(&data);
    store.write_manifest("auto-model", "https://example.invalid/a.gguf", &data);
    let dir = open_tempdir();
    let mnt = make_dir(dir.path(), "models");
    let log = dir.path().join("auto.log");
    let placeholder = AutofsPlaceholder::mount(&mnt);
    let _guard = MountGuard::new(&mnt);
    assert_eq!(mounts_at(&mnt), 1);

    // What systemd does once the placeholder is accessed: `mount WHAT
    // WHERE -t fuse.modelfs -o …`, from outside the automounter's process
    // group (here, a new session), so anything along the way that opened
    // or statx()ed the placeholder would trigger it and wait forever.
    let _link = SbinLink::install();
    let mut cmd = Command::new("mount");
    cmd.arg(&store.root)
        .arg(&mnt)
        .args(["-t", "fuse.modelfs", "-o"])
        .arg(format!("ro,_netdev,log_file={}", log.display()));
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let out = run_within(&mut cmd, Duration::from_secs(15));
    assert!(
        out.status.success(),
        "mounting over the placeholder failed: {}",
        stderr_of(&out)
    );
    assert!(
        !placeholder.triggered(),
        "mounting triggered the automount (it opened the mountpoint)"
    );
    assert_eq!(
        mounts_at(&mnt),
        2,
        "modelfs should sit on top of the placeholder"
    );
    assert_eq!(sha_through(&mnt.join("auto-model.gguf")), hex(&data));
    let pid = daemon_pid(&mnt).expect("the daemon");
    run_ok(Command::new("umount").arg(&mnt));
    assert_eq!(mounts_at(&mnt), 1, "only the placeholder should remain");
    assert!(wait_until(Duration::from_secs(10), || process_gone(pid)));
    assert!(!placeholder.triggered());
}

#[test]
fn the_helper_calling_form_with_relative_paths_mounts_the_store_as_the_source() {
    require_fuse();
    let store = TestStore::new();
    let data = random_bytes(64 * KIB, 42);
    let digest = store.put_blob(&data);
    store.write_manifest("present-model", "https://example.invalid/p.gguf", &data);
    assert_eq!(digest.to_hex(), hex(&data));
    let dir = open_tempdir();
    // Relative paths, unique to this test so the daemon is found by them.
    let tag = dir
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let store_link = format!("store{tag}");
    std::os::unix::fs::symlink(&store.root, dir.path().join(&store_link)).unwrap();
    let mnt_rel = format!("mnt{tag}");
    let mnt = make_dir(dir.path(), &mnt_rel);
    let log = dir.path().join("helper.log");
    let _guard = MountGuard::new(Path::new(&mnt_rel));
    let _guard_abs = MountGuard::new(&mnt);

    // Exactly how mount.fuse3 runs us.
    run_ok(
        Command::new(modelfs_bin())
            .current_dir(dir.path())
            .arg(&store_link)
            .arg(&mnt_rel)
            .arg("-o")
            .arg(format!(
                "ro,nodev,nosuid,dev,suid,log_file={}",
                log.display()
            )),
    );
    assert_eq!(
        mounts_at(&mnt),
        1,
        "the helper form returned before the mount was live"
    );
    assert_eq!(
        proc_mounts_at(&mnt),
        vec![(
            store.root.canonicalize().unwrap().display().to_string(),
            "fuse.modelfs".to_string()
        )],
        "the source must be the store's absolute, resolved path"
    );
    assert_eq!(sha_through(&mnt.join("present-model.gguf")), hex(&data));

    // The daemon does not keep the directory it was started from busy.
    let pid = daemon_pid(Path::new(&mnt_rel)).expect("the daemon of the helper form");
    assert_eq!(
        fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        Path::new("/")
    );
    run_ok(Command::new("umount").arg(&mnt));
    assert!(wait_until(Duration::from_secs(10), || process_gone(pid)));
}

// ---------------------------------------------------------------------------
// Daemon mode
// ---------------------------------------------------------------------------

#[test]
fn mount_returns_only_once_the_mount_is_live_logs_to_log_file_and_sigterm_unmounts() {
    require_fuse();
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(200 * KIB, 43);
    store.add_pending("daemon-model", &origin, &data);
    let dir = open_tempdir();
    let mnt = make_dir(dir.path(), "mnt");
    let log = dir.path().join("daemon.log");
    let _guard = MountGuard::new(&mnt);

    let started = Instant::now();
    let out = run_ok(mount_cmd(&mnt, &store.root).arg("-o").arg(format!(
        "ca_file={},log_file={}",
        origin.ca_pem_path().display(),
        log.display()
    )));
    // No polling: the mount is there the moment the command has returned.
    assert_eq!(
        mounts_at(&mnt),
        1,
        "`modelfs mount` exited 0 before the mount was visible"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the parent should return as soon as the daemon is up"
    );
    assert!(
        out.stdout.is_empty(),
        "a successful mount prints nothing on stdout"
    );
    let pid = daemon_pid(&mnt).expect("the daemon process");
    assert_eq!(sha_through(&mnt.join("daemon-model.gguf")), hex(&data));

    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!("at {} with 1 model(s)", mnt.display())),
        "log_file= should receive the daemon's lines:\n{text}"
    );
    assert!(text.contains("read mode:"), "log:\n{text}");

    // SAFETY: signalling the daemon this test started, by its pid.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    assert!(
        wait_until(Duration::from_secs(10), || mounts_at(&mnt) == 0),
        "SIGTERM did not unmount"
    );
    assert!(
        wait_until(Duration::from_secs(10), || process_gone(pid)),
        "the daemon did not exit after SIGTERM"
    );
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!("signal 15: unmounting {}", mnt.display())),
        "log:\n{text}"
    );
    assert!(
        !text.contains("WARN") && !text.contains("ERROR"),
        "a clean stop logs no warnings:\n{text}"
    );
}

#[test]
fn mount_fails_with_a_message_naming_a_bad_store_a_missing_mountpoint_or_an_unusable_log_file() {
    require_fuse();
    let store = TestStore::new();
    let dir = open_tempdir();
    let mnt = make_dir(dir.path(), "mnt");
    let _guard = MountGuard::new(&mnt);

    let missing_store = dir.path().join("no-such-store");
    let out = run(&mut mount_cmd(&mnt, &missing_store));
    assert!(!out.status.success(), "a missing store must fail the mount");
    assert!(
        stderr_of(&out).contains(&missing_store.display().to_string()),
        "the message should name the store: {}",
        stderr_of(&out)
    );
    assert_eq!(mounts_at(&mnt), 0);

    // A store path that is a file, not a directory.
    let file_store = dir.path().join("a-file");
    fs::write(&file_store, b"not a store").unwrap();
    let out = run(&mut mount_cmd(&mnt, &file_store));
    assert!(
        !out.status.success(),
        "a file as the store must fail the mount"
    );
    assert!(
        stderr_of(&out).contains(&file_store.display().to_string()),
        "the message should name the store: {}",
        stderr_of(&out)
    );
    assert_eq!(mounts_at(&mnt), 0);

    // A log file that cannot be opened: the daemon would log nowhere.
    let bad_log = dir.path().join("no-such-dir").join("m.log");
    let out = run(mount_cmd(&mnt, &store.root)
        .arg("-o")
        .arg(format!("log_file={}", bad_log.display())));
    assert!(
        !out.status.success(),
        "an unopenable log_file= must fail the mount"
    );
    assert!(
        stderr_of(&out).contains(&format!("cannot open log file {}", bad_log.display())),
        "the message should name the log file: {}",
        stderr_of(&out)
    );
    assert_eq!(mounts_at(&mnt), 0);

    let missing_mnt = dir.path().join("no-such-mountpoint");
    let out = run(&mut mount_cmd(&missing_mnt, &store.root));
    assert!(
        !out.status.success(),
        "a missing mountpoint must fail the mount"
    );
    let err = stderr_of(&out);
    assert!(
        err.contains(&missing_mnt.display().to_string()) && err.contains("mkdir -p"),
        "the message should name the mountpoint and say what to do: {err}"
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_daemon_without_log_file_logs_to_syslog_when_dev_log_listens() {
    require_fuse();
    let (_dev_log, syslog) = DevLog::listening();
    let store = TestStore::new();
    let data = random_bytes(16 * KIB, 44);
    store.put_blob(&data);
    store.write_manifest("syslog-model", "https://example.invalid/s.gguf", &data);
    let dir = open_tempdir();
    let mnt = make_dir(dir.path(), "syslog-mnt");
    let fallback =
        PathBuf::from("/var/log/modelfs").join(format!("{}.log", escaped_for_log_name(&mnt)));
    let _rm = RemoveOnDrop(fallback.clone());
    let _guard = MountGuard::new(&mnt);

    run_ok(&mut mount_cmd(&mnt, &store.root));
    assert_eq!(mounts_at(&mnt), 1);
    let pid = daemon_pid(&mnt).expect("the daemon");
    let msgs = syslog.wait_for("mounted", Duration::from_secs(10));
    let line = msgs
        .iter()
        .find(|m| m.contains("mounted"))
        .unwrap_or_else(|| panic!("no 'mounted' line reached syslog; got {msgs:?}"));
    assert!(
        line.contains(&format!("modelfs[{pid}]: INFO: mounted")),
        "syslog line should carry the ident, pid and level: {line:?}"
    );
    assert!(line.contains(&mnt.display().to_string()), "{line:?}");
    assert!(
        !fallback.exists(),
        "with syslog listening, no fallback file should be written"
    );
    run_ok(Command::new("umount").arg(&mnt));
    let msgs = syslog.wait_for("was unmounted", Duration::from_secs(10));
    assert!(
        msgs.iter().any(|m| m.contains("was unmounted")),
        "the unmount should be logged: {msgs:?}"
    );
    assert!(wait_until(Duration::from_secs(10), || process_gone(pid)));
}

#[test]
fn a_daemon_without_log_file_or_syslog_logs_to_the_documented_default_file() {
    require_fuse();
    let _dev_log = DevLog::silent();
    let store = TestStore::new();
    let data = random_bytes(16 * KIB, 45);
    store.put_blob(&data);
    store.write_manifest("fallback-model", "https://example.invalid/f.gguf", &data);
    let dir = open_tempdir();
    // A dash in the name: escaped as \x2d, like systemd-escape --path.
    let mnt = make_dir(dir.path(), "my-models");
    let log = PathBuf::from("/var/log/modelfs").join(format!("{}.log", escaped_for_log_name(&mnt)));
    assert!(log.to_str().unwrap().ends_with("-my\\x2dmodels.log"));
    let _rm = RemoveOnDrop(log.clone());
    let _guard = MountGuard::new(&mnt);

    run_ok(&mut mount_cmd(&mnt, &store.root));
    assert_eq!(mounts_at(&mnt), 1);
    let pid = daemon_pid(&mnt).expect("the daemon");
    let text = fs::read_to_string(&log)
        .unwrap_or_else(|e| panic!("no log at the default path {}: {e}", log.display()));
    assert!(
        text.contains(&format!(
            "no syslog listens on /dev/log; logging to {}",
            log.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "mounted {}",
            store.root.canonicalize().unwrap().display()
        )),
        "{text}"
    );
    let mode = fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "the log file should not be world-readable");

    // SAFETY: signalling the daemon this test started, by its pid.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(wait_until(Duration::from_secs(10), || process_gone(pid)));
    assert_eq!(mounts_at(&mnt), 0);
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains("signal 15: unmounting"), "{text}");
}

// ---------------------------------------------------------------------------
// A user's own mount
// ---------------------------------------------------------------------------

#[test]
fn a_user_mounts_their_store_through_fusermount3_reads_a_pending_model_and_unmounts() {
    require_fuse();
    let _dev_log = DevLog::silent();
    let origin = Origin::start();
    let user = TestUser::create();
    let _fuse = DevFuseAccess::grant(&user);
    let home = user.home.clone();

    // Everything the user needs lives in their home: the binary (the build
    // tree may sit under a directory they cannot enter), the CA, the store.
    let bin = home.join("modelfs");
    fs::copy(modelfs_bin(), &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let ca = home.join("ca.pem");
    fs::copy(origin.ca_pem_path(), &ca).unwrap();
    let store_root = home.join("store");
    let store = Store::create(&store_root).unwrap();
    let data = random_bytes(300 * KIB, 46);
    origin.put("user-model.gguf", data.clone());
    let source = Source {
        registry: "test".into(),
        url: Some(origin.url("user-model.gguf")),
        ..Source::default()
    };
    let m = Manifest::new(
        ModelName::parse("user-model").unwrap(),
        "gguf",
        Sha256::of(&data),
        data.len() as u64,
        source,
    );
    store.write_manifest(&m).unwrap();
    let mnt = home.join("mnt");
    fs::create_dir(&mnt).unwrap();
    run_ok(
        Command::new("chown")
            .arg("-R")
            .arg(format!("{0}:{0}", user.name))
            .arg(&home),
    );

    let out = run(&mut user.cmd(&[
        &bin,
        &"--store",
        &store_root,
        &"--ca-file",
        &ca,
        &"mount",
        &mnt,
    ]));
    assert!(
        out.status.success(),
        "the user's mount failed: {}",
        stderr_of(&out)
    );
    assert_eq!(mounts_at(&mnt), 1, "the user's mount is not live");
    let entries = proc_mounts_at(&mnt);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0, store_root.display().to_string());
    assert_eq!(entries[0].1, "fuse.modelfs");
    let pid = daemon_pid(&mnt).expect("the user's daemon");
    let owner = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        owner
            .lines()
            .any(|l| l.starts_with(&format!("Uid:\t{}\t", user.uid))),
        "the daemon should run as the user"
    );

    // The user reads the model (the mount is theirs alone: no allow_other).
    let out = run_ok(&mut user.cmd(&[&"sha256sum", &mnt.join("user-model.gguf")]));
    let got = String::from_utf8_lossy(&out.stdout);
    assert_eq!(got.split_whitespace().next(), Some(hex(&data).as_str()));
    assert_eq!(origin.stats("user-model.gguf").gets, 1);

    // No syslog here, so the documented default file in the user's state
    // directory; it says the reads go through the page cache.
    let log = home
        .join(".local/state/modelfs")
        .join(format!("{}.log", escaped_for_log_name(&mnt)));
    let text = fs::read_to_string(&log)
        .unwrap_or_else(|e| panic!("no log at the user's default path {}: {e}", log.display()));
    assert!(
        text.contains("read mode: page-cache fallback"),
        "a user's mount cannot use passthrough:\n{text}"
    );
    assert!(!text.contains("read mode: kernel passthrough"), "{text}");

    // The mount is the user's alone: not even root may look inside.
    let err = fs::read_dir(&mnt).expect_err("root listed a user's mount without allow_root");
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");

    run_ok(&mut user.cmd(&[&"fusermount3", &"-u", &mnt]));
    assert_eq!(mounts_at(&mnt), 0);
    assert!(
        wait_until(Duration::from_secs(10), || process_gone(pid)),
        "the user's daemon did not exit after fusermount3 -u"
    );

    // SIGTERM to a user's daemon unmounts too (through fusermount3).
    run_ok(&mut user.cmd(&[&bin, &"--store", &store_root, &"mount", &mnt]));
    assert_eq!(mounts_at(&mnt), 1);
    let pid = daemon_pid(&mnt).expect("the user's second daemon");
    // SAFETY: signalling the daemon this test started, by its pid.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(
        wait_until(Duration::from_secs(10), || mounts_at(&mnt) == 0),
        "SIGTERM did not unmount the user's mount"
    );
    assert!(
        wait_until(Duration::from_secs(10), || process_gone(pid)),
        "the user's daemon did not exit after SIGTERM"
    );
}

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

#[test]
fn an_unknown_option_fails_naming_it_rw_is_refused_and_mount_and_systemd_markers_are_ignored() {
    require_fuse();
    let store = TestStore::new();
    let dir = open_tempdir();
    let mnt = make_dir(dir.path(), "mnt");
    let log = dir.path().join("opts.log");
    let _guard = MountGuard::new(&mnt);
    let mount = |opts: &str| run(mount_cmd(&mnt, &store.root).arg("-o").arg(opts));

    let out = mount("ro,allow_other,cache_everything=yes");
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("unknown mount option \"cache_everything=yes\""),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(mounts_at(&mnt), 0);

    let out = mount("rw");
    assert!(!out.status.success(), "rw must be refused");
    assert!(
        stderr_of(&out).contains("mount option rw") && stderr_of(&out).contains("read-only"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(mounts_at(&mnt), 0);

    let out = mount(&format!(
        "_netdev,nofail,noauto,x-systemd.automount,comment=x,log_file={}",
        log.display()
    ));
    assert!(
        out.status.success(),
        "markers for mount(8) and systemd must be ignored: {}",
        stderr_of(&out)
    );
    assert_eq!(mounts_at(&mnt), 1);
    run_ok(Command::new("umount").arg(&mnt));
    assert_eq!(mounts_at(&mnt), 0);
}

// ---------------------------------------------------------------------------
// modelfs status
// ---------------------------------------------------------------------------

/// `modelfs status [MNT] --json` as parsed JSON.
fn status_json(store: &TestStore, mnt: Option<&Path>) -> Vec<Value> {
    let mut cmd = Command::new(modelfs_bin());
    cmd.arg("--store")
        .arg(&store.root)
        .arg("status")
        .arg("--json");
    if let Some(m) = mnt {
        cmd.arg(m);
    }
    let out = run_ok(&mut cmd);
    match serde_json::from_slice(&out.stdout) {
        Ok(Value::Array(rows)) => rows,
        other => panic!("status --json printed {other:?}"),
    }
}

/// The row of `file` in a status listing: (state, bytes_done, bytes_total).
fn row(rows: &[Value], file: &str) -> (String, u64, u64) {
    let r = rows
        .iter()
        .find(|r| r["file"] == file)
        .unwrap_or_else(|| panic!("no {file} in {rows:?}"));
    (
        r["state"].as_str().unwrap().to_string(),
        r["bytes_done"].as_u64().unwrap(),
        r["bytes_total"].as_u64().unwrap(),
    )
}

/// One download, one word: the mount's attribute, `status` of the mount,
/// `status` of the store and `ls` agree while it runs and after the daemon
/// died mid-way (they said `fetching`, `partial 24%` and `pending` before).
#[test]
fn one_download_has_one_state_word_in_xattrs_status_and_ls() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(2 * MIB, 48);
    store.add_pending("m", &origin, &data);
    origin.set_persistent_fault(
        "m.gguf",
        Some(Fault::StallAt(512 * KIB as u64, Duration::from_secs(30))),
    );
    let words = |mnt: &Path| {
        let ls = run_ok(
            Command::new(modelfs_bin())
                .arg("--store")
                .arg(&store.root)
                .args(["ls", "--json"]),
        );
        let ls: Value = serde_json::from_slice(&ls.stdout).unwrap();
        [
            crate::common::sys::getxattr(&mnt.join("m.gguf"), "user.modelfs.state").unwrap(),
            row(&status_json(&store, Some(mnt)), "m.gguf").0,
            row(&status_json(&store, None), "m.gguf").0,
            ls[0]["state"].as_str().unwrap().to_string(),
        ]
    };
    let mount = Mount::start(&store, origin.ca_pem_path(), &["stall_timeout=60"]);
    let mut reader = Command::new("cat")
        .arg(mount.path("m.gguf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        origin.stats_now("m.gguf").bytes_sent >= 512 * KIB as u64
    }));
    assert_eq!(words(&mount.mountpoint), ["fetching"; 4]);
    mount.crash();
    let _ = reader.wait();
    let mount = Mount::start(&store, origin.ca_pem_path(), &["stall_timeout=60"]);
    assert_eq!(words(&mount.mountpoint), ["partial"; 4]);
}

#[test]
fn status_json_shows_a_download_growing_then_present_for_the_mount_and_for_the_store() {
    let origin = Origin::start();
    let store = TestStore::new();
    let size = 3 * MIB;
    let data = random_bytes(size, 47);
    store.add_pending("slow", &origin, &data);
    // About 6 s: long enough to look at it several times.
    origin.set_persistent_fault("slow.gguf", Some(Fault::Throttle(512 * KIB as u64)));
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let file = "slow.gguf";
    assert_eq!(
        row(&status_json(&store, Some(&mount.mountpoint)), file).0,
        "pending"
    );

    let reader = Command::new("sha256sum")
        .arg(mount.path(file))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Two samples from the mount: fetching, and growing.
    let mut first = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            let r = row(&status_json(&store, Some(&mount.mountpoint)), file);
            first = Some(r.clone());
            r.0 == "fetching" && r.1 > 0
        }),
        "the mount never reported the download in progress: {first:?}"
    );
    let (_, done1, total1) = first.unwrap();
    assert_eq!(total1, size as u64);
    let mut second = None;
    assert!(
        wait_until(Duration::from_secs(5), || {
            let r = row(&status_json(&store, Some(&mount.mountpoint)), file);
            second = Some(r.clone());
            r.0 == "fetching" && r.1 > done1
        }),
        "the byte count did not grow past {done1}: {second:?}"
    );
    assert!(second.unwrap().1 < size as u64);

    // The same from the store alone: a locked partial is a download.
    let mut s1 = None;
    assert!(
        wait_until(Duration::from_secs(5), || {
            let r = row(&status_json(&store, None), file);
            s1 = Some(r.clone());
            r.0 == "fetching" && r.1 > 0
        }),
        "the store never showed the download: {s1:?}"
    );
    let (_, sdone1, stotal) = s1.unwrap();
    assert_eq!(stotal, size as u64);
    assert!(
        wait_until(Duration::from_secs(5), || {
            let r = row(&status_json(&store, None), file);
            r.0 == "fetching" && r.1 > sdone1
        }),
        "the store's partial did not grow past {sdone1}"
    );

    // --watch --json: one document per line until nothing is fetching.
    let out = run_within(
        Command::new(modelfs_bin())
            .arg("--store")
            .arg(&store.root)
            .args(["status", "--watch", "--json"])
            .arg(&mount.mountpoint),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    let lines: Vec<Vec<Value>> = BufReader::new(&out.stdout[..])
        .lines()
        .map(|l| match serde_json::from_str(&l.unwrap()) {
            Ok(Value::Array(rows)) => rows,
            other => panic!("--watch --json line is not a JSON array: {other:?}"),
        })
        .collect();
    assert!(lines.len() >= 2, "expected several lines, got {lines:?}");
    assert_eq!(row(&lines[0], file).0, "fetching");
    let dones: Vec<u64> = lines.iter().map(|l| row(l, file).1).collect();
    assert!(
        dones.windows(2).all(|w| w[0] <= w[1]),
        "progress went backwards: {dones:?}"
    );
    assert_eq!(
        row(lines.last().unwrap(), file),
        ("present".to_string(), size as u64, size as u64)
    );

    let out = reader.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next(),
        Some(hex(&data).as_str())
    );
    assert_eq!(
        row(&status_json(&store, Some(&mount.mountpoint)), file),
        ("present".to_string(), size as u64, size as u64)
    );
    assert_eq!(
        row(&status_json(&store, None), file),
        ("present".to_string(), size as u64, size as u64)
    );
}

#[test]
fn status_shows_a_failed_download_with_its_last_error_and_exits_zero() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(64 * KIB, 50);
    store.add_pending("broken", &origin, &data);
    origin.set_persistent_fault("broken.gguf", Some(Fault::Status(404)));
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let file = "broken.gguf";

    let err = fs::read(mount.path(file)).expect_err("a 404 must not be readable");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let rows = status_json(&store, Some(&mount.mountpoint));
    let r = rows.iter().find(|r| r["file"] == file).unwrap();
    assert_eq!(r["state"], "failed", "{rows:?}");
    let error = r["error"].as_str().unwrap_or_default();
    assert!(error.contains("404"), "the last error should say why: {r}");

    // The table shows it too, and `status` itself succeeds.
    let out = run_ok(
        Command::new(modelfs_bin())
            .arg("status")
            .arg(&mount.mountpoint),
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("failed") && table.contains("last error:") && table.contains("404"),
        "{table}"
    );
}
