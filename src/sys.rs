//! Raw system calls that std does not offer, each behind a safe wrapper,
//! for store, fetch, fs, fuse and cli alike: the only module of modelfs
//! with `unsafe` code (vendor/ aside). A leaf: it imports nothing of
//! modelfs. Each wrapper is one call (or one short sequence) with its
//! contract in its doc; what to do with the result (EINTR aside, retried
//! here where the caller always retried) is the caller's. Groups: paths
//! and filesystems; descriptors relative to a folder (`store::nofollow`);
//! locks (`store::lock`); hints; mounting; the daemon's process set-up
//! (`cli::mount`, `cli::daemon_limits`, `cli::logging`).

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `path` as a C string; a NUL byte in it is an error.
pub fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("a NUL byte in the path"))
}

/// The `st_mode` of `path`, without triggering an automount placeholder
/// there. `std::fs::metadata` (statx) and `open` both trigger one, and the
/// automounter (systemd) then waits for the very mount we are making.
pub fn stat_no_automount(path: &Path) -> io::Result<u32> {
    fstatat_mode(path, libc::AT_NO_AUTOMOUNT)
}

/// [`stat_no_automount`] of the path itself, not what a symlink there names.
pub fn lstat_no_automount(path: &Path) -> io::Result<u32> {
    fstatat_mode(path, libc::AT_NO_AUTOMOUNT | libc::AT_SYMLINK_NOFOLLOW)
}

fn fstatat_mode(path: &Path, flags: i32) -> io::Result<u32> {
    Ok(fstatat(None, &c_path(path)?, flags)?.st_mode)
}

/// Free bytes for an unprivileged writer on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let c = c_path(path).ok()?;
    // SAFETY: an all-zero statvfs is valid; statvfs fills it in.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and a zeroed out-struct of the right type.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Free bytes for an unprivileged writer and the size, in bytes, of the
/// filesystem holding `path`.
pub fn fs_space(path: &Path) -> Option<(u64, u64)> {
    let c = c_path(path).ok()?;
    // SAFETY: an all-zero statvfs is valid; statvfs fills it in.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and a zeroed out-struct of the right type.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let f = st.f_frsize as u64;
    Some((st.f_bavail as u64 * f, st.f_blocks as u64 * f))
}

/// umount2(2) of `mp` with `flags` (0, or `MNT_DETACH` for a lazy one).
pub fn umount2(mp: &Path, flags: i32) -> io::Result<()> {
    let target = CString::new(mp.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("a NUL byte in the mountpoint"))?;
    // SAFETY: a valid C string.
    if unsafe { libc::umount2(target.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The effective user id of this process is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The real user and group ids of this process.
pub fn ids() -> (u32, u32) {
    // SAFETY: getuid/getgid cannot fail.
    unsafe { (libc::getuid(), libc::getgid()) }
}

/// Whether this process may read and write `path` (access(2)).
pub fn can_read_write(path: &Path) -> bool {
    let Ok(c) = c_path(path) else { return false };
    // SAFETY: a valid C string.
    unsafe { libc::access(c.as_ptr(), libc::R_OK | libc::W_OK) == 0 }
}

/// A hint to start write-back of `fd`'s dirty pages (sync_file_range with
/// `SYNC_FILE_RANGE_WRITE`); failure only loses the hint.
pub fn start_writeback(fd: std::os::fd::RawFd) {
    // SAFETY: plain syscall on an fd the caller keeps open.
    unsafe {
        libc::sync_file_range(fd, 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// A hint that `fd`'s pages in `offset..offset + len` (`len` 0: to the end)
/// will not be read again (posix_fadvise `POSIX_FADV_DONTNEED`); failure
/// only loses the hint.
pub fn drop_cached(fd: std::os::fd::RawFd, offset: u64, len: u64) {
    // SAFETY: plain syscall on an fd the caller keeps open.
    unsafe {
        libc::posix_fadvise(
            fd,
            offset as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        );
    }
}

/// mount(2).
pub fn mount(
    source: &CString,
    target: &CString,
    fstype: &CString,
    flags: libc::c_ulong,
    data: &CString,
) -> io::Result<()> {
    // SAFETY: valid C strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `ioctl(FICLONE)`: makes `out` share the extents of `input`
/// (copy-on-write), so `out` holds the same bytes and an edit of either
/// never reaches the other. Fails with `EOPNOTSUPP`, `EXDEV`, `EINVAL`, …
/// where the filesystem (pair) cannot clone.
pub fn reflink(input: &File, out: &File) -> io::Result<()> {
    // SAFETY: FICLONE takes the source descriptor as its argument; both
    // descriptors are open for the duration of the call.
    let rc = unsafe { libc::ioctl(out.as_raw_fd(), libc::FICLONE, input.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `-1` (and `errno`) as an error, anything else as the value.
fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Retries a syscall interrupted by a signal.
fn retry(mut f: impl FnMut() -> libc::c_int) -> io::Result<libc::c_int> {
    loop {
        match check(f()) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// The folder descriptor of an `*at` call: `None` is the working folder
/// (`AT_FDCWD`).
fn at(dir: Option<BorrowedFd<'_>>) -> RawFd {
    dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd())
}

// Descriptors relative to a folder (`store::nofollow`).

/// `openat(2)` of `name` in `dir` with `flags` (exactly those: add
/// `O_NOFOLLOW`/`O_CLOEXEC` yourself) and `mode` (when `O_CREAT` creates
/// it); retried on `EINTR`. The new descriptor is the caller's.
pub fn openat(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    // SAFETY: a valid dirfd and NUL-terminated name.
    let fd = retry(|| unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags,
            libc::c_uint::from(mode),
        )
    })?;
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `mkdirat(2)`: creates the folder `name` in `dir` with `mode` (less the
/// umask); retried on `EINTR`.
pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: a valid dirfd and NUL-terminated name.
    retry(|| unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(|_| ())
}

/// `fstatat(2)` of `name` in `dir` (`None`: the working folder) with
/// `flags` (`AT_SYMLINK_NOFOLLOW`, `AT_NO_AUTOMOUNT`, …); retried on `EINTR`.
pub fn fstatat(
    dir: Option<BorrowedFd<'_>>,
    name: &CStr,
    flags: libc::c_int,
) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a valid dirfd (or AT_FDCWD), a NUL-terminated name and a
    // buffer of the type fstatat fills.
    retry(|| unsafe { libc::fstatat(at(dir), name.as_ptr(), st.as_mut_ptr(), flags) })?;
    // SAFETY: fstatat succeeded, so it filled the buffer.
    Ok(unsafe { st.assume_init() })
}

/// `renameat2(2)` of `from` in `from_dir` (`None`: the working folder, so
/// `from` may be a path) to `to` in `to_dir`, with `flags`
/// (`RENAME_NOREPLACE` or 0); retried on `EINTR`.
pub fn renameat2(
    from_dir: Option<BorrowedFd<'_>>,
    from: &CStr,
    to_dir: BorrowedFd<'_>,
    to: &CStr,
    flags: libc::c_uint,
) -> io::Result<()> {
    // SAFETY: valid dirfds (or AT_FDCWD) and NUL-terminated names.
    retry(|| unsafe {
        libc::renameat2(
            at(from_dir),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
            flags,
        ) as libc::c_int
    })
    .map(|_| ())
}

/// `unlinkat(2)` of `name` in `dir` (`AT_REMOVEDIR` in `flags`: an empty
/// folder); a symlink is removed, not followed; retried on `EINTR`.
pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: a valid dirfd and NUL-terminated name.
    retry(|| unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(|_| ())
}

/// `fsync(2)` of any descriptor (a folder's too); retried on `EINTR`.
pub fn fsync(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fsync on a valid descriptor.
    retry(|| unsafe { libc::fsync(fd.as_raw_fd()) }).map(|_| ())
}

/// Clears `O_NONBLOCK` on `fd` (`fcntl` `F_GETFL`, then `F_SETFL`).
pub fn set_blocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on a valid descriptor with integer arguments only.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) }).map(|_| ())
}

/// `umask(2)`: sets the process-wide file mode mask, returns the old one.
/// Process-wide: every thread's next create sees it.
pub fn umask(mask: libc::mode_t) -> libc::mode_t {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask) }
}

/// `mkfifo(3)` at `path` with `mode` (tests plant FIFOs where the store
/// expects files).
pub fn mkfifo(path: &Path, mode: libc::mode_t) -> io::Result<()> {
    let c = c_path(path)?;
    // SAFETY: a valid C string.
    check(unsafe { libc::mkfifo(c.as_ptr(), mode) }).map(|_| ())
}

/// `mknod(2)` of a character device `major:minor` at `path` with
/// permissions `perm` (root only; tests plant devices).
pub fn mknod_char(path: &Path, perm: libc::mode_t, major: u32, minor: u32) -> io::Result<()> {
    let c = c_path(path)?;
    let dev = libc::makedev(major, minor);
    // SAFETY: a valid C string.
    check(unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | perm, dev) }).map(|_| ())
}

// Locks (`store::lock`).

/// `flock(2)` of `file` with `op` (`LOCK_EX`, `LOCK_SH`, with `LOCK_NB`),
/// retried on `EINTR`: `Ok(false)` when `LOCK_NB` found it held.
pub fn flock(file: &File, op: libc::c_int) -> io::Result<bool> {
    // SAFETY: flock on a valid owned descriptor has no memory effects.
    match retry(|| unsafe { libc::flock(file.as_raw_fd(), op) }) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e),
    }
}

// Paths and filesystems.

/// `statfs(2)` of `path`, for its side effect: a FUSE mount asks its
/// daemon, so a mount whose daemon ended fails with `ENOTCONN`. The
/// figures are dropped.
pub fn statfs(path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    // SAFETY: an all-zero statfs is valid; statfs fills it in.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and statfs buffer.
    check(unsafe { libc::statfs(c.as_ptr(), &mut st) }).map(|_| ())
}

/// The value of extended attribute `name` of `path` (followed), if it has
/// one of at most `max` bytes; `None` on any error.
pub fn getxattr(path: &Path, name: &str, max: usize) -> Option<Vec<u8>> {
    let p = c_path(path).ok()?;
    let n = CString::new(name).ok()?;
    let mut buf = vec![0u8; max];
    // SAFETY: valid C strings and a buffer of the length we pass.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return None;
    }
    buf.truncate(len as usize);
    Some(buf)
}

// The daemon's process set-up (`cli::mount`, `cli::daemon_limits`,
// `cli::logging`).

/// A pipe: the read end close-on-exec, the write end inheritable (to hand
/// to a child by number).
pub fn pipe_for_child() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid 2-element array.
    check(unsafe { libc::pipe(fds.as_mut_ptr()) })?;
    // SAFETY: two fresh descriptors nothing else owns.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The read end must not leak into the child.
    set_cloexec(r.as_raw_fd());
    Ok((r, w))
}

/// Sets `FD_CLOEXEC` on `fd`, so no program this process starts inherits
/// it. An fd that is not open only fails (ignored: nothing to keep out).
pub fn set_cloexec(fd: RawFd) {
    // SAFETY: fcntl with integer arguments; a bad fd is only EBADF.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
}

/// The descriptor numbered `fd` that this process inherited from its
/// parent, as a file. Contract: nothing else in this process owns or uses
/// `fd` (the readiness pipe, taken once); it is closed when the file is
/// dropped.
pub fn take_inherited_fd(fd: RawFd) -> File {
    // SAFETY: by the contract above, the descriptor is ours alone.
    File::from(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes `cmd`'s child start a new session (`setsid` between fork and
/// exec), detached from our terminal and process group, so a Ctrl-C here
/// does not reach it.
pub fn start_in_new_session(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
}

/// Points descriptor 2 (stderr) at `to` (`dup2`); failure keeps stderr.
pub fn redirect_stderr(to: &File) {
    // SAFETY: dup2 of a valid fd onto 2.
    unsafe { libc::dup2(to.as_raw_fd(), 2) };
}

/// A set of signals blocked in the thread that made it.
#[derive(Clone, Copy)]
pub struct BlockedSignals(libc::sigset_t);

impl BlockedSignals {
    /// Blocks `signals` in this thread (and so in every thread started
    /// after it), for [`BlockedSignals::wait`] to take them instead.
    pub fn block(signals: &[libc::c_int]) -> Self {
        // SAFETY: sigset manipulation on a zeroed, then emptied, set.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &s in signals {
                libc::sigaddset(&mut set, s);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Self(set)
        }
    }

    /// Waits for one of the signals (`sigwait`); `None` if the wait failed.
    pub fn wait(&self) -> Option<libc::c_int> {
        let mut sig = 0;
        // SAFETY: waiting on a valid, initialised signal set.
        (unsafe { libc::sigwait(&self.0, &mut sig) } == 0).then_some(sig)
    }
}

/// Caps glibc's malloc arenas at `n` (`mallopt(M_ARENA_MAX)`); failure
/// keeps the default.
pub fn cap_malloc_arenas(n: libc::c_int) {
    // SAFETY: mallopt with integer arguments.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, n) };
}

/// Raises the soft open-file limit to the hard one; the soft limit now in
/// force (0 when it cannot be read).
pub fn raise_open_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer for getrlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: a valid rlimit; failure keeps the old soft limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    lim.rlim_cur
}

/// `malloc_trim(0)`: gives freed heap pages back to the system.
pub fn malloc_trim() {
    // SAFETY: malloc_trim takes no pointers and cannot fail harmfully.
    unsafe { libc::malloc_trim(0) };
}

/// `openlog(3)` as "modelfs", with the PID, to the daemon facility.
pub fn openlog_daemon() {
    // SAFETY: the ident is a static C string that outlives the process.
    unsafe { libc::openlog(c"modelfs".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
}

/// `syslog(3)` of `msg` at `priority` (passed as "%s", never as a format).
pub fn syslog(priority: libc::c_int, msg: &CStr) {
    // SAFETY: "%s" with a NUL-terminated string.
    unsafe { libc::syslog(priority, c"%s".as_ptr(), msg.as_ptr()) };
}
