//! The Shared Local Model Store on disk (convention schema v1).
//!
//! ```text
//! $MODELS_HOME/
//!   blobs/sha256/<aa>/<hex>/data                verified bytes, never written again
//!   blobs/sha256/<aa>/.partial-<hex>/data.tmp   another producer's download in progress
//!   blobs/sha256/<aa>/.partial-<hex>/modelfs.tmp  modelfs's download in progress
//!   manifests/<name>.json                       name -> blob
//!   locks/<name>.lock                           advisory flock held by a producer
//!   locks/quarantine/<timestamp>-<reason>.bin   bytes that failed verification
//!   .modelfs/verified/<hex>                     modelfs's own: what it verified
//! ```
//!
//! This module owns every path under the root and the file-level rules:
//! names are validated before a path is built ([`ModelName`]), manifests are
//! written atomically (tmp, fsync, rename, fsync dir), a blob appears under
//! its digest only through [`Store::publish_blob`], and everything below
//! `blobs/sha256/` and `locks/` is reached through [`nofollow`], one
//! component at a time, so a symlink planted inside the store can redirect
//! neither a read nor a write outside the root (the top-level folders
//! themselves may be the operator's symlinks). Folders are created 0755 and
//! files 0644 whatever the umask. Files it reads or locks by path
//! (manifests, lock files) are `lstat`ed first and opened `O_NONBLOCK`, and
//! only regular files are read, manifests up to a size cap
//! ([`nofollow::read_small_file`]): a FIFO, a device or a huge file there
//! is an error at once, never a hang or unbounded memory. A missing
//! top-level folder is created when it is needed. It knows nothing about
//! HTTP or FUSE.
//!
//! Blob and partial files are opened with `O_NOFOLLOW | O_NONBLOCK` and
//! used only if `fstat` says they are regular files: a FIFO, device or
//! folder planted there is [`StoreError::Unsafe`] (with one log line), never
//! an `open` that hangs or a file whose reads fail later.
//!
//! modelfs downloads into its own partial file, `.partial-<hex>/modelfs.tmp`,
//! a name no producer that follows the convention touches: those write
//! `data.tmp` under their own name lock only, so a partial they share with
//! modelfs could change after modelfs hashed it. modelfs never opens, serves
//! or publishes `data.tmp` (it leaves it to whoever writes it), guards its
//! own file with a `flock` on it (so two modelfs processes never write it at
//! once and `gc` can tell an abandoned one), and publishes it with a rename
//! that never replaces a blob another producer placed first.

pub mod lock;
pub mod manifest;
pub mod name;
pub mod nofollow;
pub mod partial;
pub mod staging;
pub mod state;
pub mod timestamp;
pub mod verified;
pub mod watch;

use std::fmt;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nofollow::{Dir, is_planted_link};

pub use manifest::{Manifest, ManifestError, Source};
pub use name::{ModelName, NameError};
pub use state::ModelState;

use crate::digest::Sha256;

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

/// What the store holds for one digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobState {
    /// `blobs/.../<hex>/data` exists; its size.
    Present(u64),
    /// A partial download of this many bytes exists.
    Partial(u64),
    Absent,
}

/// Resolves the store root: `explicit`, else `$MODELS_HOME`, else
/// `${XDG_DATA_HOME:-$HOME/.local/share}/models`.
pub fn resolve_root(explicit: Option<&Path>) -> Result<PathBuf, StoreError> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = env("MODELS_HOME") {
        return Ok(p);
    }
    if let Some(p) = env("XDG_DATA_HOME") {
        return Ok(p.join("models"));
    }
    env("HOME")
        .map(|h| h.join(".local/share/models"))
        .ok_or(StoreError::NoRoot)
}

/// A model store rooted at a directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens an existing store root without creating anything.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        match fs::metadata(&root) {
            Ok(m) if m.is_dir() => Ok(Self { root }),
            Ok(_) => Err(StoreError::BadRoot {
                root,
                reason: "is not a directory".into(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::BadRoot {
                root,
                reason: "does not exist (create it, or add a model with `modelfs add`)".into(),
            }),
            Err(e) => Err(StoreError::BadRoot {
                root,
                reason: e.to_string(),
            }),
        }
    }

    /// Opens the store, creating the root and its top-level folders.
    pub fn create(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let store = Self { root: root.into() };
        store.create_layout()?;
        Ok(store)
    }

    /// Creates whichever of the top-level folders (`manifests/`, `locks/`,
    /// `blobs/sha256/`, `locks/quarantine/`) are missing: a store made by
    /// another tool, or one whose `locks/` someone removed.
    pub fn create_layout(&self) -> Result<(), StoreError> {
        for dir in [
            self.manifests_dir(),
            self.locks_dir(),
            self.blobs_dir(),
            self.quarantine_dir(),
        ] {
            nofollow::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn manifests_dir(&self) -> PathBuf {
        self.root.join("manifests")
    }

    pub fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    pub fn quarantine_dir(&self) -> PathBuf {
        self.root.join("locks/quarantine")
    }

    /// `blobs/sha256`
    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    fn fanout_dir(&self, d: &Sha256) -> PathBuf {
        self.blobs_dir().join(&d.to_hex()[..2])
    }

    /// `blobs/sha256/<aa>/<hex>/data`
    pub fn blob_path(&self, d: &Sha256) -> PathBuf {
        self.fanout_dir(d).join(d.to_hex()).join("data")
    }

    /// modelfs's partial file: `blobs/sha256/<aa>/.partial-<hex>/modelfs.tmp`
    /// (see the module doc for why it is not the convention's `data.tmp`).
    pub fn partial_path(&self, d: &Sha256) -> PathBuf {
        self.fanout_dir(d)
            .join(format!(".partial-{}", d.to_hex()))
            .join(PARTIAL_FILE)
    }

    pub fn manifest_path(&self, name: &ModelName) -> PathBuf {
        self.manifests_dir().join(format!("{name}.json"))
    }

    pub fn lock_path(&self, name: &ModelName) -> PathBuf {
        self.locks_dir().join(format!("{name}.lock"))
    }

    /// Reads one manifest; `Ok(None)` if there is none. Bounded: a FIFO, a
    /// device or a symlink there is an error at once, and no more than
    /// [`manifest::MAX_MANIFEST_BYTES`] are read (see
    /// [`nofollow::read_small_file`]).
    pub fn read_manifest(&self, name: &ModelName) -> Result<Option<Manifest>, StoreError> {
        let path = self.manifest_path(name);
        let bytes = match read_manifest_bytes(&path) {
            Ok(b) => b,
            Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        Manifest::parse(&bytes, name.as_str())
            .map(Some)
            .map_err(|source| StoreError::Manifest { path, source })
    }

    /// Every manifest in `manifests/`, sorted by name. Files that are not
    /// `<valid-name>.json` regular files are skipped; manifests that fail to
    /// parse are returned as errors so callers can report them.
    pub fn list_manifests(&self) -> Result<Vec<Result<Manifest, StoreError>>, StoreError> {
        let dir = self.manifests_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io(&dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(&dir, e))?;
            let file_name = entry.file_name();
            let Some(name) = manifest_file_stem(&file_name) else {
                continue;
            };
            let Ok(name) = ModelName::parse(name) else {
                log::warn!(
                    "ignoring manifest {:?}: not a valid model name",
                    entry.path()
                );
                continue;
            };
            match entry.file_type() {
                Ok(t) if t.is_file() => {}
                _ => {
                    log::warn!(
                        "ignoring {}: not a regular file (symlinks are not followed)",
                        entry.path().display()
                    );
                    continue;
                }
            }
            match self.read_manifest(&name) {
                Ok(Some(m)) => out.push(Ok(m)),
                Ok(None) => {} // removed while we listed
                Err(e) => out.push(Err(e)),
            }
        }
        out.sort_by(|a, b| match (a, b) {
            (Ok(a), Ok(b)) => a.name.cmp(&b.name),
            (Ok(_), Err(_)) => std::cmp::Ordering::Less,
            (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
            (Err(a), Err(b)) => a.to_string().cmp(&b.to_string()),
        });
        Ok(out)
    }

    /// Writes a manifest atomically: `<name>.json.tmp`, fsync, rename,
    /// fsync of the directory.
    pub fn write_manifest(&self, m: &Manifest) -> Result<(), StoreError> {
        let dir = self.manifests_dir();
        nofollow::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        let path = self.manifest_path(&m.name);
        refuse_symlink(&path)?;
        let tmp = dir.join(format!("{}.json.tmp", m.name));
        let _ = fs::remove_file(&tmp);
        let mut f = create_new_file(&tmp)?;
        f.write_all(&m.to_json_bytes())
            .map_err(|e| StoreError::io(&tmp, e))?;
        f.sync_all().map_err(|e| StoreError::io(&tmp, e))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))?;
        sync_dir(&dir)
    }

    /// Removes a manifest; `Ok(false)` if there was none.
    pub fn remove_manifest(&self, name: &ModelName) -> Result<bool, StoreError> {
        let path = self.manifest_path(name);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.manifests_dir()).map(|_| true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io(&path, e)),
        }
    }

    /// `blobs/sha256/<aa>`, opened (or created) without following a
    /// symlink at `<aa>`.
    fn fanout(&self, d: &Sha256, create: bool) -> Result<Dir, StoreError> {
        let top = self.blobs_dir();
        let aa = &d.to_hex()[..2];
        let fan = if create {
            Dir::create(&top).and_then(|t| t.sub_or_create(aa))
        } else {
            Dir::open(&top).and_then(|t| t.sub(aa))
        };
        fan.map_err(|e| StoreError::walking(self.fanout_dir(d), e))
    }

    fn partial_dir_name(d: &Sha256) -> String {
        format!(".partial-{}", d.to_hex())
    }

    /// The metadata of `blobs/.../<hex>/data` if it is a regular file
    /// reached without a symlink.
    pub fn stat_blob(&self, d: &Sha256) -> Option<Metadata> {
        let m = self
            .fanout(d, false)
            .ok()?
            .sub(&d.to_hex())
            .ok()?
            .stat("data")
            .ok()?;
        m.is_file().then_some(m)
    }

    /// The metadata of modelfs's partial file, if it is a regular file
    /// reached without a symlink.
    pub fn stat_partial(&self, d: &Sha256) -> Option<Metadata> {
        let m = self
            .fanout(d, false)
            .ok()?
            .sub(&Self::partial_dir_name(d))
            .ok()?
            .stat(PARTIAL_FILE)
            .ok()?;
        m.is_file().then_some(m)
    }

    /// Present, partial (modelfs's own) or absent; never reads the bytes. A symlink
    /// anywhere below `blobs/sha256/` counts as absent.
    pub fn blob_state(&self, d: &Sha256) -> BlobState {
        if let Some(m) = self.stat_blob(d) {
            return BlobState::Present(m.len());
        }
        match self.stat_partial(d) {
            Some(m) => BlobState::Partial(m.len()),
            None => BlobState::Absent,
        }
    }

    /// Opens a present blob for reading, never through a symlink and only
    /// if it is a regular file.
    pub fn open_blob(&self, d: &Sha256) -> Result<File, StoreError> {
        let path = self.blob_path(d);
        let dir = self
            .fanout(d, false)?
            .sub(&d.to_hex())
            .map_err(|e| StoreError::walking(&path, e))?;
        open_regular(&dir, "data", libc::O_RDONLY, &path)
    }

    /// Refuses, before anything is downloaded for it, a blob path that
    /// holds something other than a regular file (a folder, a FIFO): no
    /// download could ever be published there.
    pub fn check_blob_slot(&self, d: &Sha256) -> Result<(), StoreError> {
        let path = self.blob_path(d);
        // Nothing there yet, or a planted link (refused by name later).
        let Some(dir) = self
            .fanout(d, false)
            .ok()
            .and_then(|f| f.sub(&d.to_hex()).ok())
        else {
            return Ok(());
        };
        match dir.lstat("data") {
            // The caller's error is the one log line.
            Ok(st) if st.st_mode & libc::S_IFMT != libc::S_IFREG => {
                Err(StoreError::Unsafe { path })
            }
            _ => Ok(()),
        }
    }

    /// Opens (creating) modelfs's partial file for `d` for appending,
    /// never through a symlink and only if it is a regular file. The caller
    /// checks its link count once it holds its lock.
    pub fn open_partial(&self, d: &Sha256) -> Result<File, StoreError> {
        let path = self.partial_path(d);
        let dir = self
            .fanout(d, true)?
            .sub_or_create(&Self::partial_dir_name(d))
            .map_err(|e| StoreError::walking(&path, e))?;
        open_regular(&dir, PARTIAL_FILE, libc::O_RDWR | libc::O_CREAT, &path)
    }

    /// Removes the partial file and its folder (the caller holds its lock).
    pub fn remove_partial(&self, d: &Sha256) -> Result<(), StoreError> {
        let path = self.partial_path(d);
        let fan = self.fanout(d, false)?;
        let name = Self::partial_dir_name(d);
        match fan.sub(&name).and_then(|dir| dir.unlink(PARTIAL_FILE)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::walking(&path, e)),
        }
        let _ = fan.rmdir(&name);
        Ok(())
    }

    /// Moves a verified partial into place under its digest: `sync_all`,
    /// rename without replacing anything, fsync of both directories,
    /// removal of the partial folder. The caller has checked the digest of
    /// the bytes in `partial`, which must still be the file at the partial
    /// path. When another producer placed the blob first, theirs stays (it
    /// is their verified blob, and readers may hold it) and ours is deleted.
    pub fn publish_blob(&self, d: &Sha256, partial: &File) -> Result<Published, StoreError> {
        let src = self.partial_path(d);
        let dst = self.blob_path(d);
        partial.sync_all().map_err(|e| StoreError::io(&src, e))?;
        let fan = self.fanout(d, true)?;
        let from = fan
            .sub(&Self::partial_dir_name(d))
            .map_err(|e| StoreError::walking(&src, e))?;
        let (ours, there) = (
            partial.metadata().map_err(|e| StoreError::io(&src, e))?,
            from.stat(PARTIAL_FILE)
                .map_err(|e| StoreError::walking(&src, e))?,
        );
        if !there.is_file() || (ours.dev(), ours.ino()) != (there.dev(), there.ino()) {
            return Err(StoreError::io(
                &src,
                io::Error::other("the partial file was replaced while it was being verified"),
            ));
        }
        let to = fan
            .sub_or_create(&d.to_hex())
            .map_err(|e| StoreError::walking(&dst, e))?;
        let published = match from.rename(PARTIAL_FILE, &to, "data", true) {
            Ok(()) => Published::Placed,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                if self.stat_blob(d).is_none() {
                    let kind = to
                        .lstat("data")
                        .map_or("unreadable", |st| kind_of(st.st_mode));
                    return Err(refuse(&dst, kind));
                }
                from.unlink(PARTIAL_FILE)
                    .map_err(|e| StoreError::walking(&src, e))?;
                Published::AlreadyThere
            }
            Err(e) => return Err(StoreError::walking(&dst, e)),
        };
        to.sync().map_err(|e| StoreError::io(&dst, e))?;
        let _ = fan.rmdir(&Self::partial_dir_name(d));
        fan.sync()
            .map_err(|e| StoreError::io(self.fanout_dir(d), e))?;
        // After the rename, which moves the file's ctime. A blob another
        // producer placed first gets no record of ours: it is trusted at
        // first sight, like any blob another tool made.
        if matches!(published, Published::Placed) {
            self.record_verified(d, partial.metadata(), "fetch");
        }
        Ok(published)
    }

    /// Opens modelfs's existing partial file read-only, never creating it,
    /// never through a symlink and only if it is a regular file: for `gc`
    /// (which locks it and must not create partials) and to hand verified
    /// bytes to readers before they are published.
    pub fn open_existing_partial(&self, d: &Sha256) -> Result<File, StoreError> {
        let path = self.partial_path(d);
        let dir = self
            .fanout(d, false)?
            .sub(&Self::partial_dir_name(d))
            .map_err(|e| StoreError::walking(&path, e))?;
        open_regular(&dir, PARTIAL_FILE, libc::O_RDONLY, &path)
    }

    /// Deletes a blob and its folder, never through a symlink. The caller
    /// has made sure no manifest names it.
    pub fn remove_blob(&self, d: &Sha256) -> Result<(), StoreError> {
        let path = self.blob_path(d);
        let fan = self.fanout(d, false)?;
        fan.sub(&d.to_hex())
            .and_then(|dir| dir.unlink("data"))
            .map_err(|e| StoreError::walking(&path, e))?;
        let _ = fan.rmdir(&d.to_hex());
        self.remove_record(d);
        fan.sync()
            .map_err(|e| StoreError::io(self.fanout_dir(d), e))
    }

    /// Places a file the caller has verified to hash to `d` (an import) as
    /// the blob of `d`: `sync_all`, rename without replacing, fsync.
    pub fn adopt_blob(&self, d: &Sha256, src: &Path) -> Result<PathBuf, StoreError> {
        let dst = self.blob_path(d);
        File::open(src)
            .and_then(|f| f.sync_all())
            .map_err(|e| StoreError::io(src, e))?;
        let fan = self.fanout(d, true)?;
        let to = fan
            .sub_or_create(&d.to_hex())
            .map_err(|e| StoreError::walking(&dst, e))?;
        nofollow::rename_into(src, &to, "data").map_err(|e| StoreError::walking(&dst, e))?;
        to.sync().map_err(|e| StoreError::io(&dst, e))?;
        fan.sync()
            .map_err(|e| StoreError::io(self.fanout_dir(d), e))?;
        self.record_verified(d, to.stat("data"), "import");
        Ok(dst)
    }

    /// Moves a present blob into quarantine (see [`Store::quarantine`]),
    /// never through a symlink; `verify` uses it for bytes that lie.
    pub fn quarantine_blob(&self, d: &Sha256, reason: &str) -> Result<PathBuf, StoreError> {
        let src = self.blob_path(d);
        let fan = self.fanout(d, false)?;
        let from = fan
            .sub(&d.to_hex())
            .map_err(|e| StoreError::walking(&src, e))?;
        let q = self.quarantine_with(reason, &src, |q, name| from.rename("data", q, name, true))?;
        let _ = fan.rmdir(&d.to_hex());
        self.remove_record(d);
        Ok(q)
    }

    /// `locks/quarantine`, opened (or created) without following a symlink
    /// at `quarantine`.
    fn quarantine_folder(&self) -> Result<Dir, StoreError> {
        Dir::create(&self.locks_dir())
            .and_then(|l| l.sub_or_create("quarantine"))
            .map_err(|e| StoreError::walking(self.quarantine_dir(), e))
    }

    /// Moves `path` into quarantine as
    /// `<timestamp>-<reason>-<pid>-<seq>.bin` with `RENAME_NOREPLACE`, so
    /// two failures, even in the same nanosecond, keep both files.
    pub fn quarantine(&self, path: &Path, reason: &str) -> Result<PathBuf, StoreError> {
        self.quarantine_with(reason, path, |q, name| nofollow::rename_into(path, q, name))
    }

    /// Moves modelfs's partial file of `d` into quarantine (see
    /// [`Store::quarantine`]), never through a symlink.
    pub fn quarantine_partial(&self, d: &Sha256, reason: &str) -> Result<PathBuf, StoreError> {
        let src = self.partial_path(d);
        let from = self
            .fanout(d, false)?
            .sub(&Self::partial_dir_name(d))
            .map_err(|e| StoreError::walking(&src, e))?;
        self.quarantine_with(reason, &src, |q, name| {
            from.rename(PARTIAL_FILE, q, name, true)
        })
    }

    fn quarantine_with(
        &self,
        reason: &str,
        src: &Path,
        mv: impl Fn(&Dir, &str) -> io::Result<()>,
    ) -> Result<PathBuf, StoreError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let qdir = self.quarantine_dir();
        let q = self.quarantine_folder()?;
        let reason: String = reason
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .take(96)
            .collect();
        let now = std::time::SystemTime::now();
        let stamp = timestamp::format_rfc3339(now).replace([':', '-'], "");
        let nanos = now
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        loop {
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            let name = format!(
                "{stamp}.{nanos:09}-{reason}-{}-{seq}.bin",
                std::process::id()
            );
            match mv(&q, &name) {
                Ok(()) => {
                    q.sync().map_err(|e| StoreError::io(&qdir, e))?;
                    return Ok(qdir.join(name));
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                Err(e) => return Err(StoreError::walking(src, e)),
            }
        }
    }

    /// Every blob digest present under `blobs/sha256`, with its size.
    pub fn list_blobs(&self) -> Result<Vec<(Sha256, u64)>, StoreError> {
        Ok(self.scan_blob_dirs()?.0)
    }

    /// Every partial download of modelfs under `blobs/sha256`, with its
    /// size (other producers' `data.tmp` files are theirs, not listed).
    pub fn list_partials(&self) -> Result<Vec<(Sha256, u64)>, StoreError> {
        Ok(self.scan_blob_dirs()?.1)
    }

    #[allow(clippy::type_complexity)]
    fn scan_blob_dirs(&self) -> Result<(Vec<(Sha256, u64)>, Vec<(Sha256, u64)>), StoreError> {
        let top = self.blobs_dir();
        let (mut blobs, mut partials) = (Vec::new(), Vec::new());
        let Ok(fanouts) = fs::read_dir(&top) else {
            return Ok((blobs, partials));
        };
        // DirEntry::file_type does not follow symlinks: a planted link to a
        // folder outside is never listed, so never deleted by gc.
        let is_dir = |e: &fs::DirEntry| e.file_type().is_ok_and(|t| t.is_dir());
        for fan in fanouts.flatten().filter(is_dir) {
            let Ok(inner) = fs::read_dir(fan.path()) else {
                continue;
            };
            for e in inner.flatten().filter(is_dir) {
                let fname = e.file_name();
                let fname = fname.to_string_lossy();
                let (hex, partial) = match fname.strip_prefix(".partial-") {
                    Some(h) => (h.to_string(), true),
                    None => (fname.to_string(), false),
                };
                let Ok(d) = Sha256::from_hex(&hex) else {
                    continue;
                };
                let meta = if partial {
                    self.stat_partial(&d)
                } else {
                    self.stat_blob(&d)
                };
                if let Some(m) = meta {
                    if partial { &mut partials } else { &mut blobs }.push((d, m.len()));
                }
            }
        }
        blobs.sort();
        partials.sort();
        Ok((blobs, partials))
    }
}

/// The name of modelfs's partial file in `.partial-<hex>/`.
const PARTIAL_FILE: &str = "modelfs.tmp";

/// How [`Store::publish_blob`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Our file is now the blob.
    Placed,
    /// Another producer had placed the blob first; it stays, ours is gone.
    AlreadyThere,
}

/// Opens `name` in `dir` with `flags` (plus `O_NOFOLLOW`, and `O_NONBLOCK`
/// so that a FIFO cannot hang the open), creating it 0644 with `O_CREAT`,
/// and returns it only if `fstat` says it is a regular file; anything else
/// is [`StoreError::Unsafe`], logged once here. `O_NONBLOCK` is cleared
/// again: it means nothing for a regular file, and the file may be handed
/// to readers.
fn open_regular(
    dir: &Dir,
    name: &str,
    flags: libc::c_int,
    path: &Path,
) -> Result<File, StoreError> {
    let file = match dir.open_file(name, flags | libc::O_NONBLOCK, 0o644) {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
            return Err(refuse(path, "a directory"));
        }
        Err(e) => return Err(StoreError::walking(path, e)),
    };
    let meta = file.metadata().map_err(|e| StoreError::io(path, e))?;
    if !meta.file_type().is_file() {
        return Err(refuse(path, kind_of(meta.mode())));
    }
    nofollow::set_blocking(&file).map_err(|e| StoreError::io(path, e))?;
    Ok(file)
}

/// [`StoreError::Unsafe`] for `path`, which holds a `kind` where the store
/// expects a regular file, with the one log line that says so.
fn refuse(path: &Path, kind: &str) -> StoreError {
    log::warn!(
        "ignoring {}: it is {kind}, not a regular file (remove it)",
        path.display()
    );
    StoreError::Unsafe {
        path: path.to_path_buf(),
    }
}

/// "a FIFO", "a directory", … for an `st_mode`.
fn kind_of(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "a regular file",
        libc::S_IFDIR => "a directory",
        libc::S_IFIFO => "a FIFO",
        libc::S_IFSOCK => "a socket",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFLNK => "a symlink",
        _ => "an unknown kind of file",
    }
}

/// `x.json` → `Some("x")`; anything else (tmp files, dotfiles) → `None`.
fn manifest_file_stem(f: &std::ffi::OsStr) -> Option<&str> {
    std::str::from_utf8(f.as_bytes())
        .ok()?
        .strip_suffix(".json")
}

/// The bytes of the file at `path` if it can be a manifest: a regular
/// file of at most [`manifest::MAX_MANIFEST_BYTES`], reached without a
/// symlink, read without ever blocking.
pub fn read_manifest_bytes(path: &Path) -> Result<Vec<u8>, StoreError> {
    use nofollow::SmallFileError as E;
    nofollow::read_small_file(path, manifest::MAX_MANIFEST_BYTES as u64).map_err(|e| match e {
        E::Io(e) => StoreError::walking(path, e),
        E::NotRegular(kind) => StoreError::NotRegular {
            path: path.to_path_buf(),
            kind,
        },
        E::TooLarge(n) => StoreError::Manifest {
            path: path.to_path_buf(),
            source: ManifestError::TooLarge(n),
        },
    })
}

fn create_new_file(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| StoreError::io(path, e))
}

/// Refuses to replace a path that is a symlink or a non-regular file.
fn refuse_symlink(path: &Path) -> Result<(), StoreError> {
    match fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_file() => Err(StoreError::Unsafe {
            path: path.to_path_buf(),
        }),
        _ => Ok(()),
    }
}

/// fsyncs a directory so a rename in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

/// The device id of a path, to tell whether a hard link can reach it.
pub fn device_of(path: &Path) -> io::Result<u64> {
    fs::metadata(path).map(|m| m.dev())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str, data: &[u8]) -> Manifest {
        Manifest::new(
            ModelName::parse(name).unwrap(),
            "gguf",
            Sha256::of(data),
            data.len() as u64,
            Source::default(),
        )
    }

    #[test]
    fn paths_follow_the_convention_exactly() {
        let s = Store {
            root: PathBuf::from("/m"),
        };
        let d = Sha256::of(b"x");
        let hex = d.to_hex();
        assert_eq!(
            s.blob_path(&d),
            PathBuf::from(format!("/m/blobs/sha256/{}/{hex}/data", &hex[..2]))
        );
        assert_eq!(
            s.partial_path(&d),
            PathBuf::from(format!(
                "/m/blobs/sha256/{}/.partial-{hex}/modelfs.tmp",
                &hex[..2]
            ))
        );
        let n = ModelName::parse("llama").unwrap();
        assert_eq!(
            s.manifest_path(&n),
            PathBuf::from("/m/manifests/llama.json")
        );
        assert_eq!(s.lock_path(&n), PathBuf::from("/m/locks/llama.lock"));
        assert_eq!(s.quarantine_dir(), PathBuf::from("/m/locks/quarantine"));
    }

    #[test]
    fn manifests_are_written_atomically_and_listed_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path()).unwrap();
        s.write_manifest(&manifest("b", b"2")).unwrap();
        s.write_manifest(&manifest("a", b"1")).unwrap();
        let names: Vec<_> = s
            .list_manifests()
            .unwrap()
            .into_iter()
            .map(|m| m.unwrap().name.to_string())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert!(!s.manifests_dir().join("a.json.tmp").exists());
        assert!(s.remove_manifest(&ModelName::parse("a").unwrap()).unwrap());
        assert!(!s.remove_manifest(&ModelName::parse("a").unwrap()).unwrap());
    }

    #[test]
    fn listing_reports_bad_manifests_and_skips_symlinks_and_stray_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path()).unwrap();
        s.write_manifest(&manifest("good", b"1")).unwrap();
        fs::write(s.manifests_dir().join("broken.json"), b"{").unwrap();
        fs::write(s.manifests_dir().join("notes.txt"), b"hi").unwrap();
        fs::write(s.manifests_dir().join("..json"), b"{}").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", s.manifests_dir().join("evil.json")).unwrap();
        let listed = s.list_manifests().unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].as_ref().unwrap().name.as_str(), "good");
        assert!(
            listed[1]
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("broken.json")
        );
    }

    /// Runs `f` on a thread; panics if it has not returned within 10 s.
    fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("returned within 10 s")
    }

    fn mkfifo(p: &Path) {
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    }

    #[test]
    fn a_fifo_a_link_to_dev_zero_or_a_sparse_2_gib_file_as_a_manifest_is_an_error_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path()).unwrap();
        s.write_manifest(&manifest("good", b"1")).unwrap();
        let m = s.manifests_dir();
        mkfifo(&m.join("fifo.json"));
        std::os::unix::fs::symlink("/dev/zero", m.join("zero.json")).unwrap();
        File::create(m.join("sparse.json"))
            .unwrap()
            .set_len(2 << 30)
            .unwrap();
        for (stem, needle) in [
            ("fifo", "is a FIFO, not a regular file"),
            ("zero", "symlink"),
            ("sparse", "manifest is 2147483648 bytes"),
        ] {
            let s2 = s.clone();
            let name = ModelName::parse(stem).unwrap();
            let e = within_10s(move || s2.read_manifest(&name).map(|_| ())).unwrap_err();
            assert!(e.to_string().contains(needle), "{stem}: {e}");
        }
        let s2 = s.clone();
        let listed = within_10s(move || s2.list_manifests().unwrap());
        let ok: Vec<_> = listed.iter().filter_map(|m| m.as_ref().ok()).collect();
        assert_eq!(ok.len(), 1, "{listed:?}");
        assert_eq!(ok[0].name.as_str(), "good");
    }

    #[test]
    fn a_symlink_planted_at_a_manifest_path_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path()).unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, b"keep").unwrap();
        std::os::unix::fs::symlink(&outside, s.manifests_dir().join("m.json")).unwrap();
        assert!(matches!(
            s.write_manifest(&manifest("m", b"1")),
            Err(StoreError::Unsafe { .. })
        ));
        assert_eq!(fs::read(&outside).unwrap(), b"keep");
    }

    #[test]
    fn publishing_a_partial_makes_the_blob_present_and_removes_the_partial() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path()).unwrap();
        let d = Sha256::of(b"hello");
        let mut f = s.open_partial(&d).unwrap();
        f.write_all(b"hello").unwrap();
        assert_eq!(s.blob_state(&d), BlobState::Partial(5));
        assert_eq!(s.list_partials().unwrap(), vec![(d, 5)]);
        s.publish_blob(&d, &f).unwrap();
        assert_eq!(s.blob_state(&d), BlobState::Present(5));
        assert_eq!(fs::read(s.blob_path(&d)).unwrap(), b"hello");
        assert!(!s.partial_path(&d).parent().unwrap().exists());
        assert_eq!(s.list_blobs().unwrap(), vec![(d, 5)]);
    }

    #[test]
    fn publishing_never_replaces_a_blob_another_producer_placed_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path()).unwrap();
        let d = Sha256::of(b"hello");
        let mut f = s.open_partial(&d).unwrap();
        f.write_all(b"hello").unwrap();
        // Theirs, placed while ours was verified (its inode is what counts).
        fs::create_dir_all(s.blob_path(&d).parent().unwrap()).unwrap();
        fs::write(s.blob_path(&d), b"hello").unwrap();
        let theirs = fs::metadata(s.blob_path(&d)).unwrap().ino();
        assert_eq!(s.publish_blob(&d, &f).unwrap(), Published::AlreadyThere);
        assert_eq!(fs::metadata(s.blob_path(&d)).unwrap().ino(), theirs);
        assert_eq!(s.blob_state(&d), BlobState::Present(5));
        assert!(!s.partial_path(&d).parent().unwrap().exists());
    }

    #[test]
    fn the_conventions_data_tmp_is_neither_modelfs_partial_nor_touched_by_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path()).unwrap();
        let d = Sha256::of(b"hello");
        let theirs = s.partial_path(&d).with_file_name("data.tmp");
        fs::create_dir_all(theirs.parent().unwrap()).unwrap();
        fs::write(&theirs, b"someone else's").unwrap();
        assert_eq!(s.blob_state(&d), BlobState::Absent);
        assert!(s.list_partials().unwrap().is_empty());
        let mut f = s.open_partial(&d).unwrap();
        f.write_all(b"hello").unwrap();
        s.publish_blob(&d, &f).unwrap();
        assert_eq!(fs::read(s.blob_path(&d)).unwrap(), b"hello");
        assert_eq!(fs::read(&theirs).unwrap(), b"someone else's");
    }

    #[test]
    fn a_fifo_or_a_folder_where_a_blob_or_partial_belongs_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path()).unwrap();
        let d = Sha256::of(b"x");
        let partial = s.partial_path(&d);
        fs::create_dir_all(partial.parent().unwrap()).unwrap();
        let c = std::ffi::CString::new(partial.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        assert!(matches!(s.open_partial(&d), Err(StoreError::Unsafe { .. })));
        assert!(matches!(
            s.open_existing_partial(&d),
            Err(StoreError::Unsafe { .. })
        ));
        fs::create_dir_all(s.blob_path(&d)).unwrap();
        assert!(matches!(s.open_blob(&d), Err(StoreError::Unsafe { .. })));
        assert!(matches!(
            s.check_blob_slot(&d),
            Err(StoreError::Unsafe { .. })
        ));
        assert_eq!(s.blob_state(&d), BlobState::Absent);
    }

    #[test]
    fn two_quarantines_in_the_same_instant_keep_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path()).unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&a, b"A").unwrap();
        fs::write(&b, b"B").unwrap();
        let qa = s.quarantine(&a, "sha256 mismatch/evil").unwrap();
        let qb = s.quarantine(&b, "sha256 mismatch/evil").unwrap();
        assert_ne!(qa, qb);
        assert!(
            qa.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .contains("sha256_mismatch_evil")
        );
        assert_eq!(fs::read(qa).unwrap(), b"A");
        assert_eq!(fs::read(qb).unwrap(), b"B");
    }

    #[test]
    fn the_root_comes_from_the_flag_then_models_home_then_xdg() {
        // Environment is process-global: only the explicit flag is tested here;
        // the env fallbacks are covered by the CLI tests in tests/.
        assert_eq!(
            resolve_root(Some(Path::new("/x"))).unwrap(),
            PathBuf::from("/x")
        );
    }
}

#[cfg(test)]
mod fuzz_tests;
