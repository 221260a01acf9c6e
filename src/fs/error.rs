//! Errors of the filesystem layer and their one mapping to errno.
//!
//! [`FsError::errno`] is the only place in modelfs where an error becomes
//! an errno; the FUSE adapter calls it and nothing else. The match has no
//! catch-all arm on purpose: a new error must choose its errno here.

use std::fmt;
use std::sync::Arc;

use crate::coordinator::WaitError;
use crate::fetch::FetchErrorKind;

/// The answer to a FUSE interrupt of a request that is not waiting: an
/// open on its way to the coordinator, or a request answered already.
/// `EAGAIN` makes the kernel ask again in the first case and drop the
/// interrupt in the second. Never `ENOSYS`: after that the kernel sends no
/// interrupts.
pub const INTERRUPT_NOT_WAITING: i32 = libc::EAGAIN;

#[derive(Debug, Clone)]
pub enum FsError {
    /// No such entry (a lookup miss is normal: logged at debug).
    NotFound,
    /// Anything that would write: the mount is read-only.
    ReadOnly,
    IsDir,
    NotDir,
    /// The mode bits do not allow it (executing a model file).
    Denied,
    /// No ioctl applies to a model file (`isatty()` asks with `TCGETS` on
    /// every Python `open()`).
    NoIoctl,
    /// `O_NONBLOCK` open of a blob that is not here yet.
    WouldBlock,
    /// The waiting task received a stop signal.
    Interrupted,
    /// The fetch failed; every waiter of it gets this.
    FetchFailed(Arc<crate::fetch::FetchError>),
    /// The mount is shutting down while the open waited.
    ShuttingDown,
    /// No such extended attribute (or none right now, like `error`).
    NoAttr,
    /// An extended attribute outside `user.`: the mount has no security
    /// labels, ACLs or trusted attributes at all.
    XattrUnsupported,
    /// The caller's xattr buffer is too small.
    XattrRange,
    /// An unknown file handle.
    BadHandle,
    /// Local I/O on the blob failed.
    Io(Arc<std::io::Error>),
    /// The store refused to open the blob (a planted symlink, …).
    Store(Arc<crate::store::StoreError>),
    /// The inode's blob file is gone or was replaced since it was served;
    /// the name has a new inode (see `namespace`).
    Stale,
    /// A bug; the message says where.
    Internal(String),
}

impl FsError {
    /// The errno the kernel gets.
    pub fn errno(&self) -> i32 {
        match self {
            Self::NotFound => libc::ENOENT,
            Self::ReadOnly => libc::EROFS,
            Self::IsDir => libc::EISDIR,
            Self::NotDir => libc::ENOTDIR,
            Self::Denied => libc::EACCES,
            Self::NoIoctl => libc::ENOTTY,
            Self::WouldBlock => libc::EAGAIN,
            Self::Interrupted => libc::EINTR,
            // A full disk is the one fetch failure a caller can act on
            // differently; everything else (network, digest) reads as EIO.
            Self::FetchFailed(e) => match e.kind.raw_os_error() {
                Some(libc::ENOSPC) => libc::ENOSPC,
                _ => match e.kind {
                    FetchErrorKind::Cancelled => libc::EINTR,
                    _ => libc::EIO,
                },
            },
            // ENOTCONN is what users of a FUSE mount see when its daemon
            // goes away; an open cut short by shutdown is the same event.
            Self::ShuttingDown => libc::ENOTCONN,
            Self::NoAttr => libc::ENODATA,
            // Not ENODATA: `ls -l` asks every entry for `security.selinux`
            // and `system.posix_acl_access`, and stops asking for the rest
            // of a filesystem only when told it has no such attributes.
            Self::XattrUnsupported => libc::EOPNOTSUPP,
            Self::XattrRange => libc::ERANGE,
            Self::BadHandle => libc::EBADF,
            Self::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            // A symlink planted in the store is the store's fault, not the
            // caller's: EIO, with the path in the log.
            Self::Store(e) => match e.raw_os_error() {
                Some(libc::ENOSPC) => libc::ENOSPC,
                // Out of descriptors: the caller may retry later (and must
                // not be told the model is broken).
                Some(c @ (libc::EMFILE | libc::ENFILE)) => c,
                _ => libc::EIO,
            },
            // On ESTALE the kernel walks the path again, revalidating the
            // name, and so reaches the new inode: the caller never sees it.
            Self::Stale => libc::ESTALE,
            Self::Internal(_) => libc::EIO,
        }
    }

    /// Whether a failure is worth a log line above debug: misses and
    /// refused writes are normal traffic.
    pub fn log_level(&self) -> log::Level {
        match self {
            Self::NotFound
            | Self::NoAttr
            | Self::XattrUnsupported
            | Self::XattrRange
            | Self::ReadOnly
            | Self::IsDir
            | Self::NotDir
            | Self::Denied
            | Self::NoIoctl
            | Self::WouldBlock
            | Self::Stale
            | Self::Interrupted => log::Level::Debug,
            // The coordinator already logged the fetch failure once.
            Self::FetchFailed(_) | Self::ShuttingDown => log::Level::Debug,
            Self::BadHandle | Self::Io(_) | Self::Store(_) | Self::Internal(_) => log::Level::Warn,
        }
    }
}

impl From<WaitError> for FsError {
    fn from(e: WaitError) -> Self {
        match e {
            WaitError::Failed(f) => Self::FetchFailed(f),
            WaitError::Interrupted => Self::Interrupted,
            WaitError::ShuttingDown => Self::ShuttingDown,
            WaitError::Internal(s) => Self::Internal(s),
            WaitError::WouldBlock => Self::WouldBlock,
            // The caller checks the inode first (see `ModelFs::open`).
            WaitError::Changed { .. } => Self::Stale,
            WaitError::Store(e) => Self::Store(e),
            WaitError::Io(e) => Self::Io(e),
        }
    }
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(Arc::new(e))
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FetchFailed(e) => write!(f, "{e}"),
            Self::Io(e) => write!(f, "I/O error: {e}"),
            Self::Store(e) => write!(f, "{e}"),
            Self::Internal(s) => f.write_str(s),
            Self::NotFound => f.write_str("no such model or folder"),
            Self::ReadOnly => f.write_str("the mount is read-only"),
            Self::IsDir => f.write_str("is a folder"),
            Self::NotDir => f.write_str("is not a folder"),
            Self::Denied => f.write_str("permission denied (model files are not executable)"),
            Self::NoIoctl => f.write_str("no ioctl applies to a model file"),
            Self::WouldBlock => {
                f.write_str("the model is not fetched yet (a non-blocking open does not wait)")
            }
            Self::Interrupted => f.write_str("the waiting open was interrupted"),
            Self::ShuttingDown => f.write_str("the mount is shutting down"),
            Self::NoAttr => f.write_str("no such extended attribute"),
            Self::XattrUnsupported => {
                f.write_str("the mount has only user.modelfs.* extended attributes")
            }
            Self::XattrRange => f.write_str("the extended attribute does not fit the buffer"),
            Self::BadHandle => f.write_str("unknown file handle"),
            Self::Stale => f.write_str("the model's file was replaced; look it up again"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::FetchError;

    #[test]
    fn a_full_disk_is_enospc_and_other_fetch_failures_are_eio() {
        let full = FetchError::new(
            "m",
            None,
            FetchErrorKind::NoSpace {
                needed: 1,
                available: 0,
            },
        );
        assert_eq!(FsError::FetchFailed(Arc::new(full)).errno(), libc::ENOSPC);
        let bad = FetchError::new(
            "m",
            None,
            FetchErrorKind::Status {
                code: 404,
                retry_after: None,
            },
        );
        assert_eq!(FsError::FetchFailed(Arc::new(bad)).errno(), libc::EIO);
    }

    #[test]
    fn a_download_the_cache_cannot_make_room_for_is_enospc() {
        let no_room = crate::store::evict::NoRoom {
            incoming: 10,
            short: 5,
            limits: crate::store::evict::Limits {
                cache_max: Some(10),
                min_free: 0,
                available: 100,
            },
            usage: 5,
            open: Vec::new(),
            pinned: Vec::new(),
        };
        let e = FetchError::new("m", None, FetchErrorKind::NoRoom(no_room));
        assert_eq!(FsError::FetchFailed(Arc::new(e)).errno(), libc::ENOSPC);
    }

    #[test]
    fn executing_is_eacces_and_ioctls_are_enotty() {
        assert_eq!(FsError::Denied.errno(), libc::EACCES);
        assert_eq!(FsError::NoIoctl.errno(), libc::ENOTTY);
        assert_eq!(FsError::NoIoctl.log_level(), log::Level::Debug);
    }

    #[test]
    fn attributes_outside_user_are_unsupported_not_missing() {
        assert_eq!(FsError::XattrUnsupported.errno(), libc::EOPNOTSUPP);
        assert_eq!(FsError::NoAttr.errno(), libc::ENODATA);
    }

    #[test]
    fn writes_are_erofs_and_interrupted_waits_are_eintr() {
        assert_eq!(FsError::ReadOnly.errno(), libc::EROFS);
        assert_eq!(FsError::from(WaitError::Interrupted).errno(), libc::EINTR);
        assert_eq!(FsError::WouldBlock.errno(), libc::EAGAIN);
    }
}
