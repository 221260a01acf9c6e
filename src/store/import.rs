//! Importing a model file someone already has into the store.
//!
//! The blob must be a file nobody edits, so by default the store gets its
//! own copy of the bytes: a reflink (`FICLONE`: the filesystem shares the
//! extents copy-on-write, so it takes no time and no space, and an edit of
//! the original never reaches the blob) where the filesystem can, else a
//! plain copy, hashed as it is written. Both are staged in
//! `blobs/sha256/.import-<pid>-<name>` (see [`super::staging`]) under the
//! name's producer lock, then placed under their digest, and the manifest
//! is written last. A symlink is resolved first: the blob is the file it
//! points to.
//!
//! [`ImportRequest::link`] hard-links the file instead (same filesystem
//! only): no copy, but the blob *is* the original. The file's stamps are
//! recorded, so an in-place edit or a `cp` over the original is caught at
//! the next open of the model (the file is hashed again and, if its bytes
//! changed, quarantined); a file already open may see the edit.
//!
//! This module prints nothing: progress goes to an [`ImportProgress`].

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::import_check::{MagicError, check_magic};
use super::staging::RemoveOnDrop;
use super::{BlobState, Manifest, ModelName, Source, Store, StoreError};
use crate::digest::{Hasher, Sha256};

/// What to import.
#[derive(Debug, Clone, Copy)]
pub struct ImportRequest<'a> {
    /// The model name to give it.
    pub name: &'a ModelName,
    /// The file (a symlink is resolved).
    pub path: &'a Path,
    /// Its format (already validated); `gguf` files are checked for it.
    pub format: &'a str,
    /// Repoint a name that pins another blob.
    pub force: bool,
    /// Hard-link the file instead of copying it.
    pub link: bool,
}

/// How the bytes reached the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    Reflink,
    Copy,
    HardLink,
}

/// A finished import.
#[derive(Debug)]
pub struct Imported {
    /// The manifest written.
    pub manifest: Manifest,
    /// How the bytes were placed; `None` when the blob was in the store
    /// already (the staged bytes were dropped).
    pub placed: Option<Placed>,
}

/// Told how hashing the file goes: `start` once per pass (`what` says
/// which: "hashing", "copying", …), then `at` as bytes are read, `finish`
/// at the end.
pub trait ImportProgress {
    fn start(&mut self, what: &str, total: u64);
    fn at(&mut self, done: u64);
    fn finish(&mut self, done: u64);
}

/// Why an import failed; nothing of it is left in the store.
#[derive(Debug)]
pub enum ImportError {
    /// The file could not be read, resolved, linked or copied (`what` is
    /// "cannot read", "cannot copy", …).
    File {
        model: ModelName,
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The path is a folder, a FIFO, a device….
    NotRegular { model: ModelName, path: PathBuf },
    /// The format is `gguf` but the file does not start with `GGUF`.
    NotGguf {
        model: ModelName,
        path: PathBuf,
        head: String,
    },
    /// The name's producer lock could not be taken.
    Lock {
        model: ModelName,
        source: StoreError,
    },
    /// The name pins another blob and `force` was not given.
    AlreadyPins {
        model: ModelName,
        old: Sha256,
        new: Sha256,
    },
    /// The staged file could not be placed under its digest.
    Place {
        model: ModelName,
        source: StoreError,
    },
    /// Reading or writing the manifest failed.
    Store(StoreError),
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File {
                model,
                what,
                path,
                source,
            } => write!(f, "{model}: {what} {}: {source}", path.display()),
            Self::NotRegular { model, path } => {
                write!(f, "{model}: {} is not a regular file", path.display())
            }
            Self::NotGguf { model, path, head } => write!(
                f,
                "{model}: {} is not a GGUF file (it starts with {head}, a GGUF file with \"GGUF\"); \
                 if it is a model of another format, say which with --format (for example --format safetensors)",
                path.display()
            ),
            Self::Lock { model, source } => {
                write!(f, "{model}: cannot take the store lock: {source}")
            }
            Self::AlreadyPins { model, old, new } => write!(
                f,
                "{model} already pins blob {}; pass --force to repoint it at {}",
                old.short(),
                new.short()
            ),
            Self::Place { model, source } => {
                write!(f, "{model}: cannot place the blob: {source}")
            }
            Self::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ImportError {}

impl ImportRequest<'_> {
    pub(super) fn file_error(&self, what: &'static str, source: io::Error) -> ImportError {
        ImportError::File {
            model: self.name.clone(),
            what,
            path: self.path.to_path_buf(),
            source,
        }
    }

    /// Checks the file is a regular file of its format; its metadata.
    pub(super) fn check_file(&self) -> Result<fs::Metadata, ImportError> {
        let meta = fs::metadata(self.path).map_err(|e| self.file_error("cannot read", e))?;
        if !meta.is_file() {
            return Err(ImportError::NotRegular {
                model: self.name.clone(),
                path: self.path.to_path_buf(),
            });
        }
        check_magic(self.path, self.format).map_err(|e| match e {
            MagicError::Read(e) => self.file_error("cannot read", e),
            MagicError::NotGguf { head } => ImportError::NotGguf {
                model: self.name.clone(),
                path: self.path.to_path_buf(),
                head,
            },
        })?;
        Ok(meta)
    }
}

impl Store {
    /// Hashes the file of `req`, places it in the store, writes its
    /// manifest (see the module doc). Holds the name's producer lock
    /// throughout, waiting for it as long as it takes.
    pub fn import_file(
        &self,
        req: &ImportRequest,
        progress: Option<&mut dyn ImportProgress>,
    ) -> Result<Imported, ImportError> {
        let meta = req.check_file()?;
        // Place the file itself, not a symlink to it (Hugging Face's cache is
        // made of symlinks): link(2) does not follow one, and a blob must be a
        // regular file.
        let src = fs::canonicalize(req.path).map_err(|e| req.file_error("cannot resolve", e))?;
        let _lock = self
            .lock_model_waiting(req.name, &mut || {})
            .map_err(|source| ImportError::Lock {
                model: req.name.clone(),
                source,
            })?;
        // Stage into a private temp name, then move under the digest once known.
        let staging = self.import_staging_path(req.name);
        // Removed on every way out (dropped before `_lock`): a failed import
        // leaves nothing behind; `gc` removes what a killed one left.
        let _staged = RemoveOnDrop::new(&staging);
        let _ = fs::remove_file(&staging);
        let staged = if req.link {
            link_hashing(&src, &staging, progress)
        } else {
            copy_hashing(&src, &staging, progress)
        };
        let (digest, placed) = staged.map_err(|e| {
            let _ = fs::remove_file(&staging);
            req.file_error(
                if req.link {
                    "cannot hard-link"
                } else {
                    "cannot copy"
                },
                e,
            )
        })?;
        let placed = self.place_staged(req, digest, &staging)?.then_some(placed);
        let filename = req
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let source = Source {
            registry: "local".into(),
            filename,
            ..Source::default()
        };
        let mut manifest = Manifest::new(req.name.clone(), req.format, digest, meta.len(), source);
        manifest.gguf = self.local_facts(req, &digest, meta.len());
        self.write_manifest(&manifest).map_err(ImportError::Store)?;
        Ok(Imported { manifest, placed })
    }

    /// The facts of an imported GGUF from its header (read from the blob
    /// now in place); `None`, logged, when it does not parse.
    pub(super) fn local_facts(
        &self,
        req: &ImportRequest,
        d: &Sha256,
        len: u64,
    ) -> Option<std::sync::Arc<crate::gguf::Facts>> {
        if req.format != "gguf" {
            return None;
        }
        let file = self.open_blob(d).ok()?;
        match crate::gguf::facts_of_file(&file, len) {
            Ok(f) => Some(std::sync::Arc::new(f)),
            Err(e) => {
                log::info!("{}: no model facts ({e})", req.name);
                None
            }
        }
    }

    /// Moves the staged file under its digest, refusing to repoint an
    /// existing name without `force`; `false` if that blob was there
    /// already (the staged file is dropped).
    pub(super) fn place_staged(
        &self,
        req: &ImportRequest,
        digest: Sha256,
        staging: &Path,
    ) -> Result<bool, ImportError> {
        let refuse = match self.read_manifest(req.name) {
            Ok(Some(old)) if old.blob != digest && !req.force => Some(ImportError::AlreadyPins {
                model: req.name.clone(),
                old: old.blob,
                new: digest,
            }),
            Ok(_) => None,
            Err(e) => Some(ImportError::Store(e)),
        };
        if let Some(e) = refuse {
            let _ = fs::remove_file(staging);
            return Err(e);
        }
        if let BlobState::Present(_) = self.blob_state(&digest) {
            let _ = fs::remove_file(staging);
            return Ok(false);
        }
        self.adopt_blob(&digest, staging).map_err(|source| {
            let _ = fs::remove_file(staging);
            ImportError::Place {
                model: req.name.clone(),
                source,
            }
        })?;
        Ok(true)
    }
}

/// Hard-links `src` at `dst` and hashes it. Refuses a file whose bytes
/// changed while it was hashed (its size or mtime moved).
fn link_hashing(
    src: &Path,
    dst: &Path,
    progress: Option<&mut dyn ImportProgress>,
) -> io::Result<(Sha256, Placed)> {
    fs::hard_link(src, dst).map_err(|e| {
        if e.raw_os_error() == Some(libc::EXDEV) {
            io::Error::new(
                e.kind(),
                "--link needs the file on the store's filesystem; leave out --link to copy it",
            )
        } else {
            e
        }
    })?;
    hash_linked(dst, progress).map(|d| (d, Placed::HardLink))
}

/// Hashes the hard link `dst`. Refuses a file whose bytes changed while it
/// was hashed (its size or mtime moved).
pub(super) fn hash_linked(
    dst: &Path,
    progress: Option<&mut dyn ImportProgress>,
) -> io::Result<Sha256> {
    let file = File::open(dst)?;
    let before = file.metadata()?;
    let digest = hash_with_progress(&file, None, before.len(), progress, "hashing")?;
    let after = file.metadata()?;
    if (after.size(), after.mtime(), after.mtime_nsec())
        != (before.size(), before.mtime(), before.mtime_nsec())
    {
        return Err(io::Error::other(
            "the file changed while it was being hashed; import it again once nothing writes it",
        ));
    }
    Ok(digest)
}

/// Creates `dst` as a copy of `src`: a reflink where the filesystem can
/// (then hashed), else a byte copy hashed as it is written.
fn copy_hashing(
    src: &Path,
    dst: &Path,
    progress: Option<&mut dyn ImportProgress>,
) -> io::Result<(Sha256, Placed)> {
    let input = File::open(src)?;
    let total = input.metadata()?.len();
    let out = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(dst)?;
    match crate::sys::reflink(&input, &out) {
        Ok(()) => {
            // The clone is ours alone: what is hashed here is what the
            // store keeps, whatever happens to the original.
            let what = "hashing the reflinked copy";
            let d = hash_with_progress(&out, None, total, progress, what)?;
            return Ok((d, Placed::Reflink));
        }
        Err(e) if reflink_unsupported(&e) => {}
        Err(e) => return Err(e),
    }
    let d = hash_with_progress(&input, Some(&out), total, progress, "copying")?;
    Ok((d, Placed::Copy))
}

/// Whether a failed `FICLONE` means "this filesystem (pair) cannot clone",
/// so a plain copy is the answer.
pub(super) fn reflink_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL | libc::ENOTTY | libc::ENOSYS)
    )
}

/// Reads `file` from its start to its end, hashing, and writes every byte
/// to `copy_to` if given; tells `progress` if given.
pub(super) fn hash_with_progress(
    mut file: &File,
    mut copy_to: Option<&File>,
    total: u64,
    mut progress: Option<&mut dyn ImportProgress>,
    what: &str,
) -> io::Result<Sha256> {
    if let Some(p) = progress.as_mut() {
        p.start(what, total);
    }
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        if let Some(out) = copy_to.as_mut() {
            out.write_all(&buf[..n])?;
        }
        done += n as u64;
        if let Some(p) = progress.as_mut() {
            p.at(done);
        }
    }
    if let Some(p) = progress {
        p.finish(done);
    }
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Importing `file` as the GGUF model `name`, copied, not forced.
    fn gguf_request<'a>(name: &'a ModelName, file: &'a Path) -> ImportRequest<'a> {
        ImportRequest {
            name,
            path: file,
            format: "gguf",
            force: false,
            link: false,
        }
    }

    #[test]
    fn an_imported_file_is_placed_under_its_digest_and_a_second_import_finds_it_there() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path().join("store")).unwrap();
        let file = dir.path().join("m.gguf");
        fs::write(&file, b"GGUF and the rest").unwrap();
        let name = ModelName::parse("m").unwrap();
        let req = gguf_request(&name, &file);
        let first = s.import_file(&req, None).unwrap();
        assert!(matches!(first.placed, Some(Placed::Copy | Placed::Reflink)));
        let d = Sha256::of(b"GGUF and the rest");
        assert_eq!(first.manifest.blob, d);
        assert_eq!(s.blob_state(&d), BlobState::Present(17));
        assert_eq!(s.read_manifest(&name).unwrap().unwrap().blob, d);
        assert!(s.import_file(&req, None).unwrap().placed.is_none());
        assert!(s.stale_imports().is_empty(), "no staging file left");
    }

    #[test]
    fn an_imported_gguf_gets_the_facts_of_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path().join("store")).unwrap();
        let file = dir.path().join("tiny.gguf");
        // The header, then tensor data (what follows is never read).
        let mut bytes = crate::gguf::test_build::sample();
        bytes.resize(bytes.len() + 8192, 7);
        fs::write(&file, &bytes).unwrap();
        let name = ModelName::parse("tiny").unwrap();
        let done = s.import_file(&gguf_request(&name, &file), None).unwrap();
        let facts = done.manifest.gguf.expect("facts");
        assert_eq!(facts.architecture.as_deref(), Some("llama"));
        assert_eq!(facts.context_length, Some(4096));
        let again = s.read_manifest(&name).unwrap().unwrap();
        assert_eq!(
            again.gguf.as_deref(),
            Some(&*facts),
            "written to the manifest"
        );
    }

    #[test]
    fn a_file_that_is_not_gguf_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path().join("store")).unwrap();
        let file = dir.path().join("page.html");
        fs::write(&file, b"<html>").unwrap();
        let name = ModelName::parse("m").unwrap();
        let req = gguf_request(&name, &file);
        let e = s.import_file(&req, None).unwrap_err();
        assert!(e.to_string().contains("is not a GGUF file"), "{e}");
        assert!(s.read_manifest(&name).unwrap().is_none());
        assert!(s.list_blobs().unwrap().is_empty());
    }
}
