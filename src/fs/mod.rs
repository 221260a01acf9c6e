//! Filesystem semantics on plain types: what each kernel request means for
//! modelfs, without any fuser type. The FUSE adapter (`crate::fuse`) only
//! converts arguments, calls one method here and converts the result.
//!
//! Promises kept here:
//! - `lookup`, `getattr`, `readdir`, `getxattr`, `listxattr` read the
//!   in-memory [`Namespace`] and the coordinator's activity; they never
//!   wait for the network or a lock.
//! - `open` asks the [`Coordinator`] for the verified file of the entry's
//!   blob (see `coordinator::open`) and keeps the namespace's side: an
//!   inode whose blob file was replaced fails with `ESTALE` before anything
//!   is fetched, and each answer notes which file the inode serves. A
//!   present blob whose stamps match its verification record (see
//!   `store::verified`) completes on the calling thread; an absent one, or
//!   a present one whose stamps moved (it must be hashed again), completes
//!   later; an `O_NONBLOCK` open of either starts the fetch (or the hash)
//!   and fails with `EAGAIN` at once. Every opened handle reads the
//!   verified blob file it opened, whatever happens to the manifest later.
//! - Every open first takes a share of its blob's open lock
//!   (`store::openlock`, through the coordinator), before the blob is
//!   opened, and its handle keeps it until `release`: eviction, in any
//!   process, never deletes a blob a handle of this mount serves.
//! - Blobs the coordinator published after their opens were answered
//!   (`Coordinator::take_published`) are noted as present before a refresh
//!   and before any `user.modelfs.*` attribute is read.
//! - An open of a shard of a split model starts fetching its missing
//!   siblings (see `siblings`); it waits only for its own shard.
//! - Anything that writes fails with `EROFS`.

pub mod error;
pub mod namespace;
mod siblings;
pub mod xattr;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;

pub use error::FsError;
pub use namespace::{Changes, Entry, Namespace, ROOT_INO};

pub use crate::coordinator::Caller;
use crate::coordinator::{Answer, Blob, Coordinator, Interrupted, WaitError, Want};
use crate::store::openlock::{OpenHold, TryHold};

/// An open waiting for its blob's lock, taken once.
type OpenJob = Mutex<Option<(Arc<Entry>, OpenDone)>>;

/// What kind of node an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Directory,
    File,
}

/// Attributes of a node, in plain types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
}

/// One directory entry.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    pub name: Arc<str>,
}

/// An open directory as `opendir` saw it: `.`, `..`, then the files in
/// name order (offsets are indices into this).
#[derive(Clone)]
pub struct DirList {
    files: Arc<Vec<Arc<Entry>>>,
}

impl DirList {
    pub fn len(&self) -> usize {
        self.files.len() + 2
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// A successful open: the handle number and the verified blob behind it.
#[derive(Debug, Clone)]
pub struct Opened {
    pub fh: u64,
    pub file: Arc<File>,
    /// The file's (device, inode).
    pub file_id: (u64, u64),
}

/// Called once when an open completes.
pub type OpenDone = Box<dyn FnOnce(Result<Opened, FsError>) + Send>;

/// The mounted filesystem's state.
pub struct ModelFs {
    coordinator: Arc<Coordinator>,
    namespace: Arc<Namespace>,
    handles: Mutex<HashMap<u64, Arc<File>>>,
    /// Each handle's share of its blob's open lock (`store::openlock`),
    /// released with the handle.
    holds: Mutex<HashMap<u64, Option<OpenHold>>>,
    /// Held while publications are taken from the coordinator and noted,
    /// so that a reader who finds none taken is never ahead of one being
    /// noted.
    noting_published: Mutex<()>,
    dirs: Mutex<HashMap<u64, DirList>>,
    next_fh: AtomicU64,
    uid: u32,
    gid: u32,
    mounted_at: SystemTime,
}

impl ModelFs {
    /// A filesystem over the coordinator's store; call [`ModelFs::refresh`]
    /// before mounting and then periodically.
    pub fn new(coordinator: Arc<Coordinator>, uid: u32, gid: u32) -> Self {
        let namespace = Arc::new(Namespace::new());
        let shown = Arc::downgrade(&namespace);
        // Eviction names blobs from what the directory shows (one pass
        // over memory); a blob it does not show is never evicted.
        coordinator.set_manifest_names(Arc::new(move || {
            let mut by_blob: HashMap<_, Vec<_>> = HashMap::new();
            if let Some(ns) = shown.upgrade() {
                for e in ns.entries().iter() {
                    by_blob
                        .entry(e.manifest.blob)
                        .or_default()
                        .push(e.manifest.name.clone());
                }
            }
            by_blob
        }));
        Self {
            coordinator,
            namespace,
            handles: Mutex::new(HashMap::new()),
            holds: Mutex::new(HashMap::new()),
            noting_published: Mutex::new(()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            uid,
            gid,
            mounted_at: SystemTime::now(),
        }
    }

    pub fn coordinator(&self) -> &Arc<Coordinator> {
        &self.coordinator
    }

    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// Re-reads the store's manifests; see [`Namespace::refresh`].
    pub fn refresh(&self) -> Changes {
        self.note_published();
        self.namespace.refresh(self.coordinator.store())
    }

    /// Notes the blobs the coordinator published since the last call: an
    /// open answered before publication noted a verified download, not a
    /// served blob; once it is at its path, it is one, and every entry of
    /// the digest is present.
    fn note_published(&self) {
        let _noting = self.noting_published.lock();
        let published = self.coordinator.take_published();
        if published.is_empty() {
            return;
        }
        let entries = self.namespace.entries();
        for p in published {
            for e in entries.iter().filter(|e| e.manifest.blob == p.digest) {
                self.namespace.confirm_published(e.ino, p.file_id);
                self.namespace.mark_present(e.ino, p.size);
            }
        }
    }

    fn root_attr(&self) -> Attr {
        Attr {
            ino: ROOT_INO,
            kind: Kind::Directory,
            size: 0,
            perm: 0o555,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            mtime: self.mounted_at,
        }
    }

    fn file_attr(&self, e: &Entry) -> Attr {
        Attr {
            ino: e.ino,
            kind: Kind::File,
            size: e.size(),
            perm: 0o444,
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            mtime: e.mtime,
        }
    }

    fn entry(&self, ino: u64) -> Result<Arc<Entry>, FsError> {
        self.namespace.by_ino(ino).ok_or(FsError::NotFound)
    }

    pub fn lookup(&self, parent: u64, name: &str) -> Result<Attr, FsError> {
        if parent != ROOT_INO {
            return Err(FsError::NotDir);
        }
        let e = self.namespace.lookup(name).ok_or(FsError::NotFound)?;
        // The reply gives the kernel a reference until it forgets it.
        self.namespace.remember(&[e.ino]);
        Ok(self.file_attr(&e))
    }

    /// A `readdirplus` reply gave the kernel a reference to each of
    /// `inos`, as a lookup does.
    pub fn remember(&self, inos: &[u64]) {
        self.namespace.remember(inos);
    }

    /// The kernel dropped `n` references to `ino` (FUSE `forget`).
    pub fn forget(&self, ino: u64, n: u64) {
        self.namespace.forget(ino, n);
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        if ino == ROOT_INO {
            return Ok(self.root_attr());
        }
        let e = self.entry(ino)?;
        Ok(self.file_attr(&e))
    }

    /// Snapshots the directory for one `opendir`; returns its handle.
    pub fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        if ino != ROOT_INO {
            return Err(if self.namespace.by_ino(ino).is_some() {
                FsError::NotDir
            } else {
                FsError::NotFound
            });
        }
        let list = DirList {
            files: self.namespace.entries(),
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.lock().insert(fh, list);
        Ok(fh)
    }

    /// The open directory `fh`.
    pub fn readdir(&self, fh: u64) -> Result<DirList, FsError> {
        self.dirs.lock().get(&fh).cloned().ok_or(FsError::BadHandle)
    }

    /// Entry `i` of an open directory, with its attributes as `opendir`
    /// saw them (a `readdirplus` answers from the listing, not with a
    /// lookup per entry).
    pub fn dir_entry(&self, list: &DirList, i: usize) -> Option<(DirEntry, Attr)> {
        let dot = |name: &str| DirEntry {
            ino: ROOT_INO,
            kind: Kind::Directory,
            name: Arc::from(name),
        };
        match i {
            0 => Some((dot("."), self.root_attr())),
            1 => Some((dot(".."), self.root_attr())),
            _ => list.files.get(i - 2).map(|e| {
                let entry = DirEntry {
                    ino: e.ino,
                    kind: Kind::File,
                    name: e.file_name.clone(),
                };
                (entry, self.file_attr(e))
            }),
        }
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
    }

    /// Opens an entry for reading; see the module doc. `flags` are the
    /// open(2) flags, `caller` the calling task and its request (watched
    /// for signals, named by interrupts).
    pub fn open(self: &Arc<Self>, ino: u64, flags: i32, caller: Caller, done: OpenDone) {
        if ino == ROOT_INO {
            return done(Err(FsError::IsDir));
        }
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return done(Err(FsError::ReadOnly));
        }
        let e = match self.entry(ino) {
            Ok(e) => e,
            Err(err) => return done(Err(err)),
        };
        // Before the blob is opened: an eviction that deletes it must
        // have finished, so this open finds it gone and fetches it.
        match self.coordinator.try_hold_open(&e.manifest.blob) {
            Ok(TryHold::Held(hold)) => self.open_held(e, hold, flags, caller, done),
            Ok(TryHold::Evicting) => self.open_after_eviction(e, flags, caller, done),
            Err(err) => done(Err(FsError::Store(Arc::new(err)))),
        }
    }

    /// An eviction holds the blob's lock across its unlink: the open waits
    /// for it on a thread of its own, never on the request loop (on this
    /// one if no thread can be had).
    fn open_after_eviction(
        self: &Arc<Self>,
        e: Arc<Entry>,
        flags: i32,
        caller: Caller,
        done: OpenDone,
    ) {
        // A failed spawn drops its closure: the open stays here to be
        // answered on this thread.
        let job = Arc::new(Mutex::new(Some((e, done))));
        let (this, theirs) = (self.clone(), job.clone());
        let spawned = std::thread::Builder::new()
            .name("open-wait".into())
            .spawn(move || this.wait_then_open(&theirs, flags, caller));
        if spawned.is_err() {
            self.wait_then_open(&job, flags, caller);
        }
    }

    /// Waits for the blob's lock, then the rest of the open (whoever takes
    /// the job first).
    fn wait_then_open(self: &Arc<Self>, job: &OpenJob, flags: i32, caller: Caller) {
        let Some((e, done)) = job.lock().take() else {
            return;
        };
        match self.coordinator.hold_open(&e.manifest.blob) {
            Ok(hold) => self.open_held(e, hold, flags, caller, done),
            Err(err) => done(Err(FsError::Store(Arc::new(err)))),
        }
    }

    /// The rest of an open, its blob's lock held.
    fn open_held(
        self: &Arc<Self>,
        e: Arc<Entry>,
        hold: Option<OpenHold>,
        flags: i32,
        caller: Caller,
        done: OpenDone,
    ) {
        let found = match self.coordinator.find(&e.manifest.blob) {
            Ok(found) => found,
            Err(err) => return done(Err(FsError::Store(Arc::new(err)))),
        };
        if self.namespace.is_stale(&e, found.file_id()) {
            return done(Err(FsError::Stale));
        }
        let pinned_by = || self.manifests_pinning(&e.manifest.blob);
        let want = Want {
            manifest: &e.manifest,
            caller,
            nonblocking: flags & libc::O_NONBLOCK != 0,
            pinned_by: &pinned_by,
        };
        let answer = self.when_answered(e.clone(), hold, done);
        self.coordinator.open(found, want, answer);
        // After the shard's own job, so that it is queued first.
        self.start_siblings(&e.manifest);
    }

    /// Every manifest of digest `d`, the sources a fetch of it may use:
    /// the namespace holds them all, parsed (listing the store's would
    /// parse them all again, 2 s at 100,000 models). Asked only when a
    /// fetch job is created.
    fn manifests_pinning(&self, d: &crate::digest::Sha256) -> Vec<crate::store::Manifest> {
        self.namespace
            .manifests_of(d)
            .iter()
            .map(|m| (**m).clone())
            .collect()
    }

    /// The completion of an open of `e`: a handle on the coordinator's
    /// answer, unless the inode served another file before.
    fn when_answered(
        self: &Arc<Self>,
        e: Arc<Entry>,
        hold: Option<OpenHold>,
        done: OpenDone,
    ) -> Answer {
        let this = self.clone();
        Box::new(move |answer| {
            let opened = match answer {
                Ok(blob) => this.serve(&e, blob, hold),
                // Published by another process while this open waited for
                // its lock, and changed since it was verified: on ESTALE
                // the kernel opens again, and that open hashes it.
                Err(WaitError::Changed { file_id }) => {
                    this.namespace.is_stale(&e, Some(file_id));
                    Err(FsError::Stale)
                }
                Err(err) => Err(err.into()),
            };
            done(opened)
        })
    }

    /// A handle on `blob` for `e`'s inode, noted as what it serves; `Stale`
    /// if the inode served another file before (whose bytes changed, and
    /// were quarantined): never this one.
    fn serve(&self, e: &Entry, blob: Blob, hold: Option<OpenHold>) -> Result<Opened, FsError> {
        let id = blob.file_id();
        if self.namespace.is_stale(e, Some(id)) {
            return Err(FsError::Stale);
        }
        if blob.published {
            self.namespace.note_served(e.ino, id);
            self.namespace.mark_present(e.ino, blob.meta.len());
        } else {
            // Not yet at the blob's path: the namespace must not retire
            // the inode for that, but must once another file is there (the
            // kernel may hold this file's pages, or use it as the inode's
            // passthrough backing file).
            self.namespace.note_verified(e.ino, id);
        }
        Ok(self.add_handle(blob.file, id, hold))
    }

    /// The kernel interrupted request `request` (FUSE_INTERRUPT); `false`
    /// when no open waits under that id (answered already, or not parked
    /// yet: the kernel asks again while it is unanswered).
    pub fn interrupt(&self, request: u64) -> bool {
        self.coordinator.interrupt(request) != Interrupted::Unknown
    }

    /// A new handle on `file`.
    fn add_handle(&self, file: Arc<File>, file_id: (u64, u64), hold: Option<OpenHold>) -> Opened {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, file.clone());
        self.holds.lock().insert(fh, hold);
        Opened { fh, file, file_id }
    }

    /// Reads up to `size` bytes at `offset` from an open handle (used when
    /// the kernel does not read the blob directly through passthrough).
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let file = self
            .handles
            .lock()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)?;
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(filled);
        drop_behind(&file, offset, filled < size as usize);
        Ok(buf)
    }

    pub fn release(&self, fh: u64) {
        self.handles.lock().remove(&fh);
        // After the file: the lock goes once nothing here can read it.
        let hold = self.holds.lock().remove(&fh);
        drop(hold);
    }

    /// Open handles now (tests and status).
    pub fn open_handles(&self) -> usize {
        self.handles.lock().len()
    }

    /// access(2): `mask` is `R_OK | W_OK | X_OK` bits (0 for `F_OK`).
    /// Writing is never allowed; executing only the directory.
    pub fn access(&self, ino: u64, mask: i32) -> Result<(), FsError> {
        let attr = self.getattr(ino)?;
        if mask & libc::W_OK != 0 {
            return Err(FsError::ReadOnly);
        }
        if mask & libc::X_OK != 0 && attr.perm & 0o111 == 0 {
            return Err(FsError::Denied);
        }
        Ok(())
    }

    pub fn getxattr(&self, ino: u64, name: &str) -> Result<Vec<u8>, FsError> {
        if ino == ROOT_INO {
            return Err(if name.starts_with("user.") {
                FsError::NoAttr
            } else {
                FsError::XattrUnsupported
            });
        }
        // `ls -l` asks every entry for security.selinux and
        // system.posix_acl_access: "not supported" makes it stop asking
        // for the rest of the mount (one round trip per entry fewer, two
        // for an `ls -l` of 100,000 models), and names we never have are
        // answered without the coordinator's lock or a look at the disk.
        if !name.starts_with("user.") {
            self.entry(ino)?;
            return Err(FsError::XattrUnsupported);
        }
        if let Some(key) = name.strip_prefix(xattr::GGUF_PREFIX) {
            let e = self.entry(ino)?;
            return xattr::gguf_fact(&e, key)
                .map(String::into_bytes)
                .ok_or(FsError::NoAttr);
        }
        if !matches!(
            name,
            xattr::SHA256
                | xattr::STATE
                | xattr::PROGRESS
                | xattr::URL
                | xattr::ERROR
                | xattr::CONNECTIONS
                | xattr::SOURCE
        ) {
            self.entry(ino)?;
            return Err(FsError::NoAttr);
        }
        // A blob published since the open that fetched it ended is present
        // (its job, which said so, is gone).
        self.note_published();
        let e = self.entry(ino)?;
        let activity = self.coordinator.activity(&e.manifest.blob);
        let partial = if name != xattr::PROGRESS || activity.fetching || e.present_size.is_some() {
            crate::store::BlobState::Absent
        } else {
            self.coordinator.store().blob_state(&e.manifest.blob)
        };
        let url = self.coordinator.url_for(&e.manifest);
        let store = self.coordinator.store();
        xattr::value(name, &e, &activity, url, partial, || {
            store.disk_state(&e.manifest.blob).0
        })
        .map(String::into_bytes)
        .ok_or(FsError::NoAttr)
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        if ino == ROOT_INO {
            return Ok(Vec::new());
        }
        let e = self.entry(ino)?;
        let has_url = self.coordinator.url_for(&e.manifest).is_some();
        Ok(xattr::list(
            &e,
            &self.coordinator.activity(&e.manifest.blob),
            has_url,
        ))
    }
}

/// The largest folio the page cache uses for a file (PMD size on x86-64).
/// `POSIX_FADV_DONTNEED` drops only folios wholly inside its range, and
/// ext4 caches a sequentially read file in large folios, so the dropped
/// range must be aligned to this.
const DROP_WINDOW: u64 = 2 << 20;

/// Fallback reads: the kernel keeps what we return in the FUSE file's page
/// cache (FOPEN_KEEP_CACHE), so drop the blob's own copy behind the reader
/// instead of caching the model twice. Drops the aligned window two windows
/// behind `offset` (reads arrive slightly out of order from several
/// threads), and at end of file everything from there on. A hint only.
fn drop_behind(file: &File, offset: u64, at_eof: bool) {
    let window = offset / DROP_WINDOW * DROP_WINDOW;
    let fd = file.as_raw_fd();
    if at_eof {
        let from = window.saturating_sub(2 * DROP_WINDOW);
        crate::sys::drop_cached(fd, from, 0);
    } else if window >= 2 * DROP_WINDOW {
        crate::sys::drop_cached(fd, window - 2 * DROP_WINDOW, DROP_WINDOW);
    }
}
