//! Walking the store below its top-level folders without following a
//! symlink, one path component at a time.
//!
//! The top-level folders (`blobs/sha256`, `manifests`, `locks`) are opened
//! by path: an operator may make them symlinks, for example to keep blobs on
//! another disk. Below them, every folder and file is reached with
//! `openat(…, O_NOFOLLOW)` relative to its parent's descriptor, so a symlink
//! planted inside the store (a fan-out folder, a blob or partial folder, a
//! blob, a partial, the quarantine folder) makes the operation fail with
//! [`is_planted_link`] instead of leading a read or a write outside the
//! root. `O_NOFOLLOW` on a whole path only guards its last component; this
//! guards each of them, and working from descriptors leaves no window
//! between a check and the use.
//!
//! Folders are created with mode 0755 and files by the callers with 0644,
//! whatever the process umask (a daemon started with umask 000 must not make
//! its store writable by others); a umask can only take bits away.

use std::ffi::CString;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use crate::sys;

/// Mode of every folder the store creates.
pub const DIR_MODE: libc::mode_t = 0o755;

/// An open folder of the store.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

fn cstr(name: &str) -> io::Result<CString> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a single path component"),
        ));
    }
    CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Whether an error means a symlink (or another non-folder) sat where the
/// store expects a folder or a regular file.
pub fn is_planted_link(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR))
}

impl Dir {
    /// Opens a top-level folder by path (symlinks in `path` are followed:
    /// they are the operator's).
    pub fn open(path: &Path) -> io::Result<Dir> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(path)?;
        Ok(Dir { fd: f.into() })
    }

    /// Opens a top-level folder by path, creating it (and its parents) with
    /// [`DIR_MODE`] if missing.
    pub fn create(path: &Path) -> io::Result<Dir> {
        create_dir_all(path)?;
        Self::open(path)
    }

    /// The sub-folder `name`; a symlink there fails with `ELOOP`/`ENOTDIR`.
    pub fn sub(&self, name: &str) -> io::Result<Dir> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let fd = sys::openat(self.fd.as_fd(), &cstr(name)?, flags, 0)?;
        Ok(Dir { fd })
    }

    /// The sub-folder `name`, created with [`DIR_MODE`] if missing.
    pub fn sub_or_create(&self, name: &str) -> io::Result<Dir> {
        match sys::mkdirat(self.fd.as_fd(), &cstr(name)?, DIR_MODE) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        self.sub(name)
    }

    /// Opens the file `name` with `flags` (`O_NOFOLLOW` and `O_CLOEXEC` are
    /// added); `mode` applies when `O_CREAT` creates it.
    pub fn open_file(
        &self,
        name: &str,
        flags: libc::c_int,
        mode: libc::mode_t,
    ) -> io::Result<File> {
        let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        Ok(sys::openat(self.fd.as_fd(), &cstr(name)?, flags, mode)?.into())
    }

    /// The metadata of `name` itself (a symlink is reported as one).
    pub fn stat(&self, name: &str) -> io::Result<Metadata> {
        self.open_file(name, libc::O_PATH, 0)?.metadata()
    }

    /// `fstatat(2)` of `name` itself (a symlink is reported as one): one
    /// system call and no descriptor, for watchers that stat many names.
    pub fn lstat(&self, name: &str) -> io::Result<libc::stat> {
        sys::fstatat(
            Some(self.fd.as_fd()),
            &cstr(name)?,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    }

    /// Renames `name` here to `to_name` in `to`; with `noreplace`, fails
    /// with `EEXIST` rather than replace anything.
    pub fn rename(&self, name: &str, to: &Dir, to_name: &str, noreplace: bool) -> io::Result<()> {
        let (a, b) = (cstr(name)?, cstr(to_name)?);
        let flags = if noreplace { libc::RENAME_NOREPLACE } else { 0 };
        sys::renameat2(Some(self.fd.as_fd()), &a, to.fd.as_fd(), &b, flags)
    }

    /// Removes the file `name` (a symlink there is removed, not followed).
    pub fn unlink(&self, name: &str) -> io::Result<()> {
        sys::unlinkat(self.fd.as_fd(), &cstr(name)?, 0)
    }

    /// Removes the empty folder `name`.
    pub fn rmdir(&self, name: &str) -> io::Result<()> {
        sys::unlinkat(self.fd.as_fd(), &cstr(name)?, libc::AT_REMOVEDIR)
    }

    /// fsyncs the folder, so renames in it survive a crash.
    pub fn sync(&self) -> io::Result<()> {
        sys::fsync(self.fd.as_fd())
    }
}

/// Clears `O_NONBLOCK` on an open file (opened so to keep a FIFO from
/// blocking the open, then found to be a regular file).
pub fn set_blocking(file: &File) -> io::Result<()> {
    sys::set_blocking(file.as_fd())
}

/// Why [`read_small_file`] returned no bytes.
#[derive(Debug)]
pub enum SmallFileError {
    Io(io::Error),
    /// Not a regular file (a FIFO, a device, a folder, a socket); it was
    /// never read.
    NotRegular(&'static str),
    /// Larger than the cap: its size (at least cap + 1).
    TooLarge(u64),
}

/// What a file of mode `mode` is, in words for a log line.
pub fn kind_of(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "regular file",
        libc::S_IFDIR => "folder",
        libc::S_IFIFO => "FIFO",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFSOCK => "socket",
        libc::S_IFLNK => "symlink",
        _ => "file of unknown kind",
    }
}

/// Reads a small regular file whole, in bounded time and memory, whatever
/// sits at `path` (its last component is never followed).
///
/// The entry is `lstat`ed first, so a FIFO or a device is not even opened;
/// it is then opened `O_RDONLY|O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC` (a FIFO
/// swapped in after the `lstat` opens at once instead of waiting for a
/// writer, and reads as empty instead of blocking) and `fstat`ed: anything
/// but a regular file is [`SmallFileError::NotRegular`]. A file larger
/// than `max` bytes, or that grows past it while read, is
/// [`SmallFileError::TooLarge`]; at most `max + 1` bytes are read.
pub fn read_small_file(path: &Path, max: u64) -> Result<Vec<u8>, SmallFileError> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let seen = std::fs::symlink_metadata(path).map_err(SmallFileError::Io)?;
    if seen.file_type().is_symlink() {
        return Err(SmallFileError::Io(io::Error::from_raw_os_error(
            libc::ELOOP,
        )));
    }
    if !seen.is_file() {
        return Err(SmallFileError::NotRegular(kind_of(seen.mode())));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(SmallFileError::Io)?;
    let m = f.metadata().map_err(SmallFileError::Io)?;
    if !m.is_file() {
        return Err(SmallFileError::NotRegular(kind_of(m.mode())));
    }
    if m.len() > max {
        return Err(SmallFileError::TooLarge(m.len()));
    }
    let mut buf = Vec::with_capacity(m.len() as usize);
    f.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(SmallFileError::Io)?;
    if buf.len() as u64 > max {
        return Err(SmallFileError::TooLarge(buf.len() as u64));
    }
    Ok(buf)
}

/// `create_dir_all` with [`DIR_MODE`] for every folder it creates.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Renames the file at `src` (a path) to `to_name` in `to`, never
/// replacing anything there.
pub fn rename_into(src: &Path, to: &Dir, to_name: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let a = CString::new(src.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let b = cstr(to_name)?;
    sys::renameat2(None, &a, to.fd.as_fd(), &b, libc::RENAME_NOREPLACE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    #[test]
    fn a_symlink_below_a_top_level_folder_is_refused_as_folder_and_as_file() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("f"), b"keep").unwrap();
        let top = Dir::create(&dir.path().join("top")).unwrap();
        symlink(&outside, dir.path().join("top/linkdir")).unwrap();
        symlink(outside.join("f"), dir.path().join("top/linkfile")).unwrap();

        let e = top.sub("linkdir").unwrap_err();
        assert!(is_planted_link(&e), "{e}");
        let e = top.sub_or_create("linkdir").unwrap_err();
        assert!(is_planted_link(&e), "{e}");
        let e = top
            .open_file("linkfile", libc::O_RDWR | libc::O_CREAT, 0o644)
            .unwrap_err();
        assert!(is_planted_link(&e), "{e}");
        assert!(top.stat("linkfile").unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(outside.join("f")).unwrap(), b"keep");
        assert!(top.sub("../outside").is_err());
    }

    #[test]
    fn folders_are_0755_even_under_umask_000() {
        let dir = tempfile::tempdir().unwrap();
        // umask is process-wide: this test restores it at once, and the
        // modes it checks are of folders it creates itself.
        let old = crate::sys::umask(0);
        let top = Dir::create(&dir.path().join("a/b"));
        let sub = top.as_ref().map(|t| t.sub_or_create("c"));
        crate::sys::umask(old);
        sub.unwrap().unwrap();
        for p in ["a", "a/b", "a/b/c"] {
            let mode = std::fs::metadata(dir.path().join(p))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o755, "{p}");
        }
    }
}
