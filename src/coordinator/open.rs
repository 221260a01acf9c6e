//! The one way to the verified file of a blob, for the mount's opens.
//!
//! An open is two calls, so that the caller can check the file at the
//! blob's path against what it served before (an inode whose blob file
//! was replaced must fail at once, before anything is fetched or hashed):
//!
//! 1. [`Coordinator::find`] opens the blob at its path, if it is there
//!    ([`Found::file_id`] says which file that is);
//! 2. [`Coordinator::open`] decides what that takes and answers once with
//!    a [`Blob`] (or a [`WaitError`]):
//!    - present, with the stamps it was verified with: at once, on the
//!      calling thread;
//!    - present, but its stamps moved: once it hashed right again (a
//!      recheck job, see the parent module);
//!    - absent: once a fetch verified its bytes, possibly before they are
//!      published at the path ([`Blob::published`] is `false` then; the
//!      publication is reported later by [`Coordinator::take_published`]);
//!    - `nonblocking`: the job is started and the answer is
//!      [`WaitError::WouldBlock`] at once.
//!
//! Nothing here calls up into the caller except the one answer it passed,
//! and `pinned_by`, which is asked (on the calling thread, with no lock of
//! ours held) only when a new fetch job is created.

use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Weak};

use super::{Caller, Coordinator, Done, JobKind, Ready, WaitError};
use crate::digest::Sha256;
use crate::store::{Manifest, StoreError};

/// What [`Coordinator::find`] saw at a blob's path.
pub struct Found {
    at_path: Option<(File, Metadata)>,
}

impl Found {
    /// The (device, inode) of the file at the blob's path; `None` if the
    /// blob is absent.
    pub fn file_id(&self) -> Option<(u64, u64)> {
        self.at_path.as_ref().map(|(_, m)| (m.dev(), m.ino()))
    }
}

/// What an open asks for.
pub struct Want<'a> {
    pub manifest: &'a Manifest,
    /// The waiting task and its request (see [`Caller`]).
    pub caller: Caller,
    /// `O_NONBLOCK`: start what the blob needs, do not wait for it.
    pub nonblocking: bool,
    /// The manifests that pin the same digest (the opened one may be among
    /// them): the sources a fetch may use besides `manifest`'s own. Asked
    /// only when a fetch job is created, since listing them can cost a
    /// pass over every model.
    pub pinned_by: &'a dyn Fn() -> Vec<Manifest>,
}

/// The verified file of a blob, as an open gets it.
#[derive(Debug, Clone)]
pub struct Blob {
    /// Read-only; read this file, not the path.
    pub file: Arc<File>,
    /// Its metadata (the `fstat` of the open or of the hand-over).
    pub meta: Metadata,
    /// Whether `file` is the one at the blob's path; `false` for bytes
    /// verified and not yet published.
    pub published: bool,
}

impl Blob {
    /// The file's (device, inode).
    pub fn file_id(&self) -> (u64, u64) {
        (self.meta.dev(), self.meta.ino())
    }
}

/// Called once with the answer to an open.
pub type Answer = Box<dyn FnOnce(Result<Blob, WaitError>) + Send>;

/// A blob a fetch of this coordinator published, as its path shows it
/// right after (see [`Coordinator::take_published`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub digest: Sha256,
    /// The (device, inode) of the published file: the same file an open
    /// answered before publication got.
    pub file_id: (u64, u64),
    pub size: u64,
}

impl Coordinator {
    /// Opens the blob `d` at its path, if it is there. Only a blob that is
    /// not there is absent: out of descriptors (EMFILE) or anything else is
    /// an error, and never starts a fetch as if the blob had gone.
    pub fn find(&self, d: &Sha256) -> Result<Found, StoreError> {
        match self.store.open_blob_with_metadata(d) {
            Ok(at) => Ok(Found { at_path: Some(at) }),
            Err(e) if e.is_absent() => Ok(Found { at_path: None }),
            Err(e) => Err(e),
        }
    }

    /// Answers with the verified file of `want.manifest`'s blob, `found`
    /// being what [`Coordinator::find`] saw; see the module doc. Returns
    /// at once; `answer` is called exactly once.
    pub fn open(self: &Arc<Self>, found: Found, want: Want<'_>, answer: Answer) {
        let m = want.manifest;
        let kind = match found.at_path {
            Some((file, meta)) if self.verified_now(&m.blob, &meta) => {
                let file = Arc::new(file);
                return answer(Ok(Blob {
                    file,
                    meta,
                    published: true,
                }));
            }
            // Present, but not the file that was verified: hash it again
            // off this thread, as a fetch would run.
            Some(_) => JobKind::Recheck,
            None => JobKind::Fetch,
        };
        if want.nonblocking {
            self.start(m, kind, want.pinned_by);
            return answer(Err(WaitError::WouldBlock));
        }
        let done = answer_when_ready(Arc::downgrade(self), m.blob, answer);
        self.wait(m, kind, want.caller, want.pinned_by, done);
    }

    /// Starts fetching `m`'s blob for nobody in particular (the sibling
    /// shards of an opened one) when it is absent: queued with the other
    /// jobs, so within the fetch concurrency, and joined by any later open.
    /// Never waits; a blob backed off after wrong bytes is left alone.
    pub fn prefetch(self: &Arc<Self>, m: &Manifest, pinned_by: &dyn Fn() -> Vec<Manifest>) {
        if self.store.stat_blob(&m.blob).is_none() {
            self.start(m, JobKind::Fetch, pinned_by);
        }
    }

    /// The blobs this coordinator published since the last call, oldest
    /// first. An open answered before publication learns of it no other
    /// way; the mount takes them to note the entries as present.
    pub fn take_published(&self) -> Vec<Published> {
        std::mem::take(&mut *self.published.lock())
    }

    /// Notes that a fetch published `d`, before its job ends (so that a
    /// blob is always either still in its job or listed here).
    pub(super) fn note_published(&self, d: &Sha256) {
        if let Some(meta) = self.store.stat_blob(d) {
            self.published.lock().push(Published {
                digest: *d,
                file_id: (meta.dev(), meta.ino()),
                size: meta.len(),
            });
        }
    }

    /// The file an open that waited gets for `ready`.
    fn blob_for(&self, d: &Sha256, ready: Ready) -> Result<Blob, WaitError> {
        match ready {
            Ready::Verified(file) => {
                let meta = file.metadata().map_err(|e| WaitError::Io(Arc::new(e)))?;
                Ok(Blob {
                    file,
                    meta,
                    published: false,
                })
            }
            // Another process produced it while this open waited for its
            // lock: open it there.
            Ready::Published => {
                let (file, meta) = self
                    .store
                    .open_blob_with_metadata(d)
                    .map_err(|e| WaitError::Store(Arc::new(e)))?;
                // Changed since it was verified: the open must start again
                // (and that open hashes it).
                if !self.verified_now(d, &meta) {
                    return Err(WaitError::Changed {
                        file_id: (meta.dev(), meta.ino()),
                    });
                }
                Ok(Blob {
                    file: Arc::new(file),
                    meta,
                    published: true,
                })
            }
        }
    }
}

/// The waiter's completion: turns what the job ended with into the file
/// the open gets. Holds the coordinator weakly: a waiter sits in the
/// coordinator's own tables.
fn answer_when_ready(c: Weak<Coordinator>, d: Sha256, answer: Answer) -> Done {
    Box::new(move |result| {
        let blob = result.and_then(|ready| match c.upgrade() {
            Some(c) => c.blob_for(&d, ready),
            None => Err(WaitError::ShuttingDown),
        });
        answer(blob)
    })
}
