//! The words for what a model is doing, defined once: `modelfs ls`,
//! `modelfs status` and a mount's `user.modelfs.state` all say these.
//!
//! | word | meaning |
//! |---|---|
//! | `present` | the verified blob is there; an open is answered at once |
//! | `fetching` | a download runs (in this mount, or a partial file some process holds locked) |
//! | `partial` | part of a download is on disk and nobody is fetching; the next open resumes it |
//! | `pending` | nothing is on disk; the first open fetches it |
//! | `failed` | the last fetch in this mount failed (the mount knows why: `user.modelfs.error`) |

use std::fmt;

use super::{BlobState, Store};
use crate::digest::Sha256;

/// One model's state; [`ModelState::word`] is what users read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelState {
    Present,
    Fetching,
    Partial,
    Pending,
    Failed,
}

impl ModelState {
    pub fn word(self) -> &'static str {
        match self {
            Self::Present => "present",
            Self::Fetching => "fetching",
            Self::Partial => "partial",
            Self::Pending => "pending",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for ModelState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

impl Store {
    /// What the disk says about blob `d`, and how many of its bytes are
    /// there. A partial file whose lock some process holds is a download
    /// running now (the CLI and another mount cannot know more); `failed`
    /// is only ever known to the mount that tried.
    pub fn disk_state(&self, d: &Sha256) -> (ModelState, u64) {
        match self.blob_state(d) {
            BlobState::Present(n) => (ModelState::Present, n),
            BlobState::Partial(n) if self.partial_is_locked(d) => (ModelState::Fetching, n),
            BlobState::Partial(n) => (ModelState::Partial, n),
            BlobState::Absent => (ModelState::Pending, 0),
        }
    }
}
