//! Conversions between [`ModelFs`](crate::fs::ModelFs)'s answers and
//! fuser's types. The errno of an error is [`FsError::errno`]'s
//! (`fs/error.rs`), never chosen here.

use std::time::Duration;

use fuser::{Errno, FileAttr, FileType, INodeNo};

use crate::fs::{Attr, FsError, Kind};

/// How long the kernel may cache names and attributes. Short, so that a
/// manifest added, removed or repointed shows up within about a second.
pub(super) const TTL: Duration = Duration::from_secs(1);

pub(super) fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

/// Logs a failed request once, at the error's own level.
pub(super) fn fail(op: &str, e: &FsError) -> Errno {
    log::log!(e.log_level(), "{op}: {e}");
    errno(e)
}

pub(super) fn to_file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        flags: 0,
        blksize: 1 << 20,
    }
}

pub(super) fn file_type(k: Kind) -> FileType {
    match k {
        Kind::Directory => FileType::Directory,
        Kind::File => FileType::RegularFile,
    }
}
