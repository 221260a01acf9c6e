//! [`StoreError`]: every store failure, naming the path involved.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::ManifestError;
use super::nofollow::is_planted_link;

/// Errors of store operations; each names the path involved.
#[derive(Debug)]
pub enum StoreError {
    /// The store root could not be determined (no `--store`, no env vars).
    NoRoot,
    /// The root is missing or not a directory.
    BadRoot {
        root: PathBuf,
        reason: String,
    },
    Io {
        path: PathBuf,
        source: io::Error,
    },
    Manifest {
        path: PathBuf,
        source: ManifestError,
    },
    /// A path the store would read or write below its top-level folders is
    /// a symlink, or not the kind of file the layout puts there.
    Unsafe {
        path: PathBuf,
    },
    /// A file the store would read or lock is a FIFO, a device, a folder
    /// or a socket: it is never read (that could block forever or never
    /// end).
    NotRegular {
        path: PathBuf,
        kind: &'static str,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoRoot => f.write_str(
                "cannot find the model store: pass --store DIR or set MODELS_HOME (or HOME for the default ~/.local/share/models)",
            ),
            Self::BadRoot { root, reason } => write!(f, "model store {}: {reason}", root.display()),
            Self::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Self::Manifest { path, source } => write!(f, "{}: {source}", path.display()),
            Self::Unsafe { path } => write!(
                f,
                "{}: a symlink or an unexpected kind of file sits on this path; refusing to follow it (remove it)",
                path.display()
            ),
            Self::NotRegular { path, kind } => write!(
                f,
                "{}: is a {kind}, not a regular file; modelfs does not read it (remove it)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            Self::Manifest { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl StoreError {
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// Like [`StoreError::io`], but a planted symlink is [`StoreError::Unsafe`].
    pub fn walking(path: impl Into<PathBuf>, source: io::Error) -> Self {
        if is_planted_link(&source) {
            Self::Unsafe { path: path.into() }
        } else {
            Self::io(path, source)
        }
    }

    /// Whether this says the file is not there (`ENOENT`, or a folder on
    /// its path missing or not a folder), as opposed to not reachable now.
    pub fn is_absent(&self) -> bool {
        matches!(self.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR))
    }

    /// The underlying OS error, if any (for ENOSPC and friends).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}
