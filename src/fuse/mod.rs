//! The fuser adapter: convert a kernel request, call [`ModelFs`], convert
//! the answer. No filesystem logic lives here, and no handler waits: an
//! open that needs a download passes its reply to the coordinator inside a
//! callback and returns, so the request loop keeps serving `ls` and `stat`.
//!
//! Reads: with kernel FUSE passthrough (kernel ≥ 6.9, `CAP_SYS_ADMIN`) an
//! open registers the blob file as a backing file and the kernel reads and
//! maps it directly. The kernel allows one backing file per inode at a
//! time (a second one for an inode that is open fails that open with EIO),
//! so every open of an inode shares one `BackingId`, dropped when the last
//! of them is released (see [`Backings`]). Otherwise
//! opens reply with `FOPEN_KEEP_CACHE`: the contents of an inode never
//! change (a new blob gets a new inode), so the page cache may keep them
//! across opens.

mod adapter;
mod backing;
mod convert;
pub mod session;

pub use adapter::FuseAdapter;
pub use backing::{Backings, FileId};
pub use session::{Mounted, SessionOptions, Unmounter, lazy_unmount, mount_hint};

/// Which read path the mount uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Try kernel passthrough; fall back if the kernel or privileges refuse.
    Auto,
    /// Never use passthrough (`-o passthrough=off`).
    Fallback,
}
