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
//!   .modelfs/pins.json, last-open.json          modelfs's own: pins, last opens
//!   locks/blobs/<hex>.lock                      shared flock of every served open
//!   modelfs.settings.json                       modelfs's own: cache limits
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
//! The rooms: `layout` (paths), `catalog` (manifests), `blobs` (blobs and
//! modelfs's partial files: open, publish, remove, adopt, list), `partial`
//! (the partial-file protocol of a download), `quarantine`, `error`
//! ([`StoreError`]); this file holds the root, the shared open/refuse
//! rules and the tests of the whole.
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

pub mod adopt_place;
mod blobs;
mod catalog;
mod error;
pub mod evict;
pub mod gc;
pub mod import;
pub mod import_check;
mod layout;
pub mod listing;
pub mod lock;
pub mod manifest;
pub mod name;
pub mod nofollow;
pub mod openlock;
pub mod partial;
pub mod pins;
mod quarantine;
pub mod set;
pub mod settings;
pub mod staging;
pub mod state;
pub mod timestamp;
pub mod verified;
pub mod verify;
pub mod watch;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nofollow::Dir;

pub use blobs::Published;
pub use catalog::read_manifest_bytes;
pub use error::StoreError;
pub use manifest::{Manifest, ManifestError, Source};
pub use name::{ModelName, NameError};
pub use state::ModelState;

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
) -> Result<(File, std::fs::Metadata), StoreError> {
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
    Ok((file, meta))
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
    use crate::digest::Sha256;
    use std::io::Write;

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
        crate::sys::mkfifo(p, 0o644).unwrap();
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
    fn removing_a_partial_removes_its_prefix_record_and_a_half_written_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path()).unwrap();
        let d = Sha256::of(b"hello");
        let mut f = s.open_partial(&d).unwrap();
        f.write_all(b"he").unwrap();
        let record = s.prefix_record_path(&d);
        fs::write(&record, b"2\n").unwrap();
        fs::write(record.with_extension("prefix.tmp"), b"2").unwrap();
        s.remove_partial(&d).unwrap();
        assert!(
            !record.parent().unwrap().exists(),
            "the partial folder is gone"
        );
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
        mkfifo(&partial);
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
