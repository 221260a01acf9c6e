//! Raw system calls that std does not offer, each behind a safe wrapper,
//! for store, fetch, fs, fuse and cli alike. A leaf: it imports nothing of
//! modelfs. Not here yet: the fd-relative `*at` calls of
//! `store::nofollow` and the `flock` of `store::lock` (each already a
//! small safe API of its own), and the daemon's process calls in
//! `cli::mount`, `cli::daemon_limits`, `cli::logging`, `cli::status`,
//! `cli::import` and `cli::mountpoint`.

use std::ffi::CString;
use std::io;
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
    let c = c_path(path)?;
    // SAFETY: an all-zero stat is valid; fstatat fills it in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and stat buffer.
    if unsafe { libc::fstatat(libc::AT_FDCWD, c.as_ptr(), &mut st, flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_mode)
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
pub fn reflink(input: &std::fs::File, out: &std::fs::File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: FICLONE takes the source descriptor as its argument; both
    // descriptors are open for the duration of the call.
    let rc = unsafe { libc::ioctl(out.as_raw_fd(), libc::FICLONE, input.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
