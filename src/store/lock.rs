//! Advisory `flock(2)` locks, as the store convention uses them.
//!
//! Locks are whole-file `flock`s, released when the guard (the open file)
//! is dropped, and by the kernel when a process dies, so a crashed producer
//! never leaves a stale lock behind. Waiting is done by polling with
//! `LOCK_NB` so that a waiter can give up (shutdown, cancelled open) instead
//! of sitting in an uninterruptible `flock`.
//!
//! Callers outside this module take the store's locks through the
//! [`Store`] methods at the end of it, one per lock the convention has:
//! [`Store::lock_model`] / [`Store::try_lock_model`] (`locks/<name>.lock`,
//! the producer lock of a model name) and [`Store::try_lock_partial`] (the
//! partial file itself; [`Store::partial_is_locked`] asks without taking
//! it). The free functions are the primitive they share.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use super::{ModelName, Store, StoreError};
use crate::digest::Sha256;
use crate::sys::flock;

/// How often a waiter re-tries a lock held by someone else.
pub const LOCK_POLL: Duration = Duration::from_millis(100);

/// A held exclusive lock; dropping it releases the lock.
#[derive(Debug)]
pub struct LockGuard {
    file: File,
}

impl LockGuard {
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Opens (creating if needed, never through a symlink) the lock file.
/// A missing `locks/` folder is created (another tool made the store, or
/// someone removed it), so a fetch does not fail for it. Anything but a
/// regular file there (a FIFO, a device) is refused without blocking: it is
/// `lstat`ed before it is opened, and opened `O_NONBLOCK`.
pub(super) fn open_lock_file(path: &Path) -> io::Result<File> {
    refuse_special(path)?;
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
    };
    let file = match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                super::nofollow::create_dir_all(dir)?;
            }
            open()?
        }
        r => r?,
    };
    check_regular(&file)?;
    Ok(file)
}

/// An error for a lock path that holds a FIFO, a device, a folder…
fn not_regular(mode: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "is a {}, not a regular file; modelfs does not lock through it (remove it)",
            super::nofollow::kind_of(mode)
        ),
    )
}

/// Fails if `path` exists and is neither a regular file nor a symlink (a
/// symlink fails at the `O_NOFOLLOW` open, with its own message).
fn refuse_special(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.is_file() && !m.file_type().is_symlink() => Err(not_regular(m.mode())),
        _ => Ok(()),
    }
}

fn check_regular(file: &File) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = file.metadata()?;
    if m.is_file() {
        Ok(())
    } else {
        Err(not_regular(m.mode()))
    }
}

/// Takes the lock if nobody holds it; `Ok(None)` if someone does.
pub fn try_lock(path: &Path) -> io::Result<Option<LockGuard>> {
    let file = open_lock_file(path)?;
    Ok(flock(&file, libc::LOCK_EX | libc::LOCK_NB)?.then_some(LockGuard { file }))
}

/// Takes an exclusive lock on an already open file if free.
pub fn try_lock_file(file: File) -> io::Result<Option<LockGuard>> {
    Ok(flock(&file, libc::LOCK_EX | libc::LOCK_NB)?.then_some(LockGuard { file }))
}

/// Why waiting for a lock ended without it.
#[derive(Debug)]
pub enum LockWaitError {
    Cancelled,
    Io(io::Error),
}

impl std::fmt::Display for LockWaitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cancelled => f.write_str("gave up waiting for the lock"),
            Self::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for LockWaitError {}

/// Waits for the lock, polling every [`LOCK_POLL`]. `on_contended` is
/// called once when the lock turns out to be held by someone else;
/// `cancelled` is checked between polls.
pub fn lock_waiting(
    path: &Path,
    cancelled: &dyn Fn() -> bool,
    on_contended: &mut dyn FnMut(),
) -> Result<LockGuard, LockWaitError> {
    let file = open_lock_file(path).map_err(LockWaitError::Io)?;
    let mut told = false;
    loop {
        if flock(&file, libc::LOCK_EX | libc::LOCK_NB).map_err(LockWaitError::Io)? {
            return Ok(LockGuard { file });
        }
        if !told {
            on_contended();
            told = true;
        }
        if cancelled() {
            return Err(LockWaitError::Cancelled);
        }
        std::thread::sleep(LOCK_POLL);
    }
}

/// Whether some process holds a lock on `path` right now. A missing file
/// is unlocked.
pub fn is_locked(path: &Path) -> io::Result<bool> {
    refuse_special(path)?;
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    check_regular(&file)?;
    // A shared lock conflicts with any exclusive holder; we drop it at once.
    Ok(!flock(&file, libc::LOCK_SH | libc::LOCK_NB)?)
}

impl Store {
    /// Takes the producer lock of model `name` (`locks/<name>.lock`),
    /// waiting while another process holds it. `on_contended` is called
    /// once, when the lock turns out to be held; `cancelled` is checked
    /// between polls, and `Ok(None)` says it gave up. A lock path that is a
    /// symlink is [`StoreError::Unsafe`], a FIFO or a device an error at
    /// once.
    pub fn lock_model(
        &self,
        name: &ModelName,
        cancelled: &dyn Fn() -> bool,
        on_contended: &mut dyn FnMut(),
    ) -> Result<Option<LockGuard>, StoreError> {
        let path = self.lock_path(name);
        match lock_waiting(&path, cancelled, on_contended) {
            Ok(g) => Ok(Some(g)),
            Err(LockWaitError::Cancelled) => Ok(None),
            // A symlink at the lock path is refused by name, not as a mystery ELOOP.
            Err(LockWaitError::Io(e)) => Err(StoreError::walking(&path, e)),
        }
    }

    /// [`Store::lock_model`] for a caller that never gives up (the
    /// commands): waits as long as it takes.
    pub fn lock_model_waiting(
        &self,
        name: &ModelName,
        on_contended: &mut dyn FnMut(),
    ) -> Result<LockGuard, StoreError> {
        let never = || false;
        Ok(self
            .lock_model(name, &never, on_contended)?
            .expect("a wait that is never cancelled ends with the lock"))
    }

    /// Takes the producer lock of `name` if nobody holds it; `Ok(None)` if
    /// someone does.
    pub fn try_lock_model(&self, name: &ModelName) -> Result<Option<LockGuard>, StoreError> {
        let path = self.lock_path(name);
        try_lock(&path).map_err(|e| StoreError::walking(&path, e))
    }

    /// Locks the partial file of `d` if nobody holds it: `Ok(None)` when a
    /// download holds it. With `create`, a missing partial is created
    /// (a producer); without, a missing one is an error (gc, which must
    /// never create one). The guard's [`LockGuard::file`] is the partial.
    pub fn try_lock_partial(
        &self,
        d: &Sha256,
        create: bool,
    ) -> Result<Option<LockGuard>, StoreError> {
        let file = if create {
            self.open_partial(d)?
        } else {
            self.open_existing_partial(d)?
        };
        try_lock_file(file).map_err(|e| StoreError::io(self.partial_path(d), e))
    }

    /// Whether some process holds the partial file of `d` locked right now
    /// (a download is writing it); `false` when there is none or it cannot
    /// be looked at.
    pub fn partial_is_locked(&self, d: &Sha256) -> bool {
        is_locked(&self.partial_path(d)).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_locker_waits_until_the_first_releases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.lock");
        let first = try_lock(&path).unwrap().expect("free lock");
        assert!(try_lock(&path).unwrap().is_none());
        assert!(is_locked(&path).unwrap());
        let p2 = path.clone();
        let waiter = std::thread::spawn(move || {
            let mut contended = false;
            let g = lock_waiting(&p2, &|| false, &mut || contended = true).unwrap();
            (g, contended)
        });
        std::thread::sleep(Duration::from_millis(250));
        drop(first);
        let (_g, contended) = waiter.join().unwrap();
        assert!(contended);
    }

    #[test]
    fn a_cancelled_waiter_gives_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.lock");
        let _held = try_lock(&path).unwrap().unwrap();
        let r = lock_waiting(&path, &|| true, &mut || {});
        assert!(matches!(r, Err(LockWaitError::Cancelled)));
    }

    /// Runs `f` on a thread; panics if it has not returned within 10 s.
    fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(Duration::from_secs(10))
            .expect("returned within 10 s")
    }

    #[test]
    fn a_fifo_or_a_device_as_a_lock_file_is_refused_at_once_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.lock");
        let dev = dir.path().join("dev.lock");
        // A FIFO and a copy of /dev/null (1, 3).
        crate::sys::mkfifo(&fifo, 0o644).unwrap();
        crate::sys::mknod_char(&dev, 0o644, 1, 3).unwrap();
        for p in [fifo, dev] {
            let q = p.clone();
            let e = within_10s(move || try_lock(&q).map(|g| g.is_some())).unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{e}");
            let q = p.clone();
            let e = within_10s(move || lock_waiting(&q, &|| false, &mut || {}).map(|_| ()))
                .unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{e}");
            let q = p.clone();
            assert!(within_10s(move || is_locked(&q)).is_err());
            assert!(
                !std::fs::symlink_metadata(&p).unwrap().is_file(),
                "left alone"
            );
        }
    }

    #[test]
    fn a_missing_locks_folder_is_created_by_the_first_locker() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks/m.lock");
        let _g = lock_waiting(&path, &|| false, &mut || {}).unwrap();
        assert!(is_locked(&path).unwrap());
    }

    #[test]
    fn a_symlinked_lock_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("m.lock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(try_lock(&link).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }

    #[test]
    fn the_stores_model_lock_gives_up_when_cancelled_and_refuses_a_symlink_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path()).unwrap();
        let name = ModelName::parse("m").unwrap();
        let _held = s.try_lock_model(&name).unwrap().expect("free lock");
        assert!(s.try_lock_model(&name).unwrap().is_none());
        let mut contended = false;
        assert!(
            s.lock_model(&name, &|| true, &mut || contended = true)
                .unwrap()
                .is_none()
        );
        assert!(contended);
        let other = ModelName::parse("other").unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), s.lock_path(&other)).unwrap();
        assert!(matches!(
            s.lock_model_waiting(&other, &mut || {}),
            Err(StoreError::Unsafe { .. })
        ));
    }
}
