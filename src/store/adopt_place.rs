//! Placing a model file another tool holds (Ollama's store, the Hugging
//! Face cache, LM Studio's tree, a folder: see [`crate::adopt`]) in the
//! store, with no copy where that is safe.
//!
//! One rule for every such file: a reflink (`FICLONE`, the blob shares the
//! file's extents copy-on-write) where the filesystem can; else, on the same
//! filesystem, a hard link: these tools write a file once and never change
//! it in place, and the stamps of the linked file are recorded
//! ([`super::verified`]), so a later change is caught at the next open (the
//! blob is hashed again and quarantined, never served changed); else (another
//! filesystem, or a link the kernel refuses) a copy. Each way reads the file
//! once, hashing it (the copy as it is written), with progress.
//!
//! A digest the tool's layout claims (Ollama's `sha256-<hex>`, a Hub cache
//! blob name) is compared with the hash: a file that disagrees is rejected
//! and nothing of it is placed. A claimed blob that is in the store already
//! needs no bytes of the file: only the manifest is written.
//!
//! Idempotent: when the name already pins the file's blob (the same inode,
//! the claimed digest, or, with no claim, the same bytes), nothing is
//! written, and the report says why. The staging, locking and manifest
//! rules are `modelfs import`'s ([`super::import`]).

use std::fmt;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::import::{
    ImportError, ImportProgress, ImportRequest, Placed, hash_linked, hash_with_progress,
    reflink_unsupported,
};
use super::staging::RemoveOnDrop;
use super::{BlobState, Manifest, ModelName, Source, Store};
use crate::digest::Sha256;

/// A file of another tool to place.
#[derive(Debug, Clone, Copy)]
pub struct AdoptRequest<'a> {
    pub name: &'a ModelName,
    /// The file (a symlink is resolved).
    pub path: &'a Path,
    /// The digest its tool claims for it.
    pub claimed: Option<Sha256>,
    /// The size its tool claims for it.
    pub claimed_size: Option<u64>,
    /// Where it came from.
    pub source: &'a Source,
    /// Repoint a name that pins another blob.
    pub force: bool,
}

/// What placing a file did.
#[derive(Debug)]
pub enum Adopted {
    /// The manifest was written; how the bytes reached the store (`None`:
    /// the blob was in the store already).
    Added {
        manifest: Box<Manifest>,
        placed: Option<Placed>,
    },
    /// Nothing was written: the name pins this file's blob already.
    Unchanged { why: &'static str },
}

/// Why a file was not placed; nothing of it is left in the store.
#[derive(Debug)]
pub enum AdoptFileError {
    /// Its size is not the one its tool's manifest gives.
    WrongSize {
        model: ModelName,
        path: PathBuf,
        claimed: u64,
        actual: u64,
    },
    /// Its bytes do not hash to the digest its name claims.
    WrongDigest {
        model: ModelName,
        path: PathBuf,
        claimed: Sha256,
        actual: Sha256,
    },
    /// Reading, placing or recording it failed, or the name pins another
    /// blob (see [`ImportError`]).
    Import(ImportError),
}

impl fmt::Display for AdoptFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongSize {
                model,
                path,
                claimed,
                actual,
            } => write!(
                f,
                "{model}: {} is {actual} bytes but its tool's manifest says {claimed}; \
                 not imported (the file is damaged or incomplete: download it again with its tool)",
                path.display()
            ),
            Self::WrongDigest {
                model,
                path,
                claimed,
                actual,
            } => write!(
                f,
                "{model}: {} is named after sha256 {} but its bytes hash to {}; \
                 not imported (the file is damaged: download it again with its tool)",
                path.display(),
                claimed.short(),
                actual.short()
            ),
            Self::Import(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for AdoptFileError {}

impl From<ImportError> for AdoptFileError {
    fn from(e: ImportError) -> Self {
        Self::Import(e)
    }
}

impl AdoptRequest<'_> {
    fn as_import(&self) -> ImportRequest<'_> {
        ImportRequest {
            name: self.name,
            path: self.path,
            format: "gguf",
            force: self.force,
            link: false,
        }
    }
}

impl Store {
    /// Places another tool's GGUF file and writes its manifest (see the
    /// module doc), under the name's producer lock.
    pub fn adopt_file(
        &self,
        req: &AdoptRequest,
        mut progress: Option<&mut dyn ImportProgress>,
    ) -> Result<Adopted, AdoptFileError> {
        let ireq = req.as_import();
        let meta = ireq.check_file()?;
        if let Some(claimed) = req.claimed_size.filter(|n| *n != meta.len()) {
            return Err(AdoptFileError::WrongSize {
                model: req.name.clone(),
                path: req.path.to_path_buf(),
                claimed,
                actual: meta.len(),
            });
        }
        let src = fs::canonicalize(req.path).map_err(|e| ireq.file_error("cannot resolve", e))?;
        let _lock = self
            .lock_model_waiting(req.name, &mut || {})
            .map_err(|source| ImportError::Lock {
                model: req.name.clone(),
                source,
            })?;
        let existing = self.read_manifest(req.name).map_err(ImportError::Store)?;
        let reborrow = progress
            .as_mut()
            .map(|p| &mut **p as &mut dyn ImportProgress);
        if let Some(why) = self.already_pinned(req, existing.as_ref(), &src, &meta, reborrow)? {
            return Ok(Adopted::Unchanged { why });
        }
        if let Some(d) = req.claimed
            && self.blob_state(&d) == BlobState::Present(meta.len())
        {
            // The store has these bytes, verified: the file is not needed.
            refuse_repoint(req, existing.as_ref(), &d)?;
            let manifest = Box::new(self.write_adopted(req, d, meta.len())?);
            return Ok(Adopted::Added {
                manifest,
                placed: None,
            });
        }
        let staging = self.import_staging_path(req.name);
        // Removed on every way out: a rejected file leaves nothing behind.
        let _staged = RemoveOnDrop::new(&staging);
        let _ = fs::remove_file(&staging);
        let (digest, placed) = stage_zero_copy(&src, &staging, progress)
            .map_err(|e| ireq.file_error("cannot place", e))?;
        if let Some(claimed) = req.claimed.filter(|c| !c.ct_eq(&digest)) {
            return Err(AdoptFileError::WrongDigest {
                model: req.name.clone(),
                path: req.path.to_path_buf(),
                claimed,
                actual: digest,
            });
        }
        let placed = self
            .place_staged(&ireq, digest, &staging)?
            .then_some(placed);
        let manifest = match existing {
            // A pending manifest of these bytes (`modelfs add`) is kept as
            // it is: its source says where to fetch them again.
            Some(m) if m.blob == digest => m,
            _ => self.write_adopted(req, digest, meta.len())?,
        };
        Ok(Adopted::Added {
            manifest: Box::new(manifest),
            placed,
        })
    }

    /// Why the name pins the file's blob already, if it does: the blob is
    /// the file itself (a hard link), or has the digest the file claims,
    /// or (with no claim) the bytes the file hashes to.
    fn already_pinned(
        &self,
        req: &AdoptRequest,
        existing: Option<&Manifest>,
        src: &Path,
        meta: &Metadata,
        progress: Option<&mut dyn ImportProgress>,
    ) -> Result<Option<&'static str>, AdoptFileError> {
        let Some(m) = existing else { return Ok(None) };
        let Some(blob) = self.stat_blob(&m.blob) else {
            return Ok(None);
        };
        if (blob.dev(), blob.ino()) == (meta.dev(), meta.ino()) {
            return Ok(Some("already imported (the store's blob is this file)"));
        }
        if req.claimed == Some(m.blob) {
            return Ok(Some("already imported (the name pins its digest)"));
        }
        if req.claimed.is_some() || blob.len() != meta.len() {
            return Ok(None);
        }
        let file = File::open(src).map_err(|e| req.as_import().file_error("cannot read", e))?;
        let d = hash_with_progress(&file, None, meta.len(), progress, "hashing")
            .map_err(|e| req.as_import().file_error("cannot read", e))?;
        Ok(d.ct_eq(&m.blob)
            .then_some("already imported (the name pins these bytes)"))
    }

    /// Writes the manifest of an adopted file whose blob `d` is in place.
    fn write_adopted(
        &self,
        req: &AdoptRequest,
        d: Sha256,
        len: u64,
    ) -> Result<Manifest, AdoptFileError> {
        let mut manifest = Manifest::new(req.name.clone(), "gguf", d, len, req.source.clone());
        manifest.gguf = self.local_facts(&req.as_import(), &d, len);
        self.write_manifest(&manifest).map_err(ImportError::Store)?;
        Ok(manifest)
    }
}

/// Refuses to repoint a name at `d` without `force`.
fn refuse_repoint(
    req: &AdoptRequest,
    existing: Option<&Manifest>,
    d: &Sha256,
) -> Result<(), ImportError> {
    match existing {
        Some(old) if old.blob != *d && !req.force => Err(ImportError::AlreadyPins {
            model: req.name.clone(),
            old: old.blob,
            new: *d,
        }),
        _ => Ok(()),
    }
}

/// Creates `dst` as `src` by the first way that works: a reflink, a hard
/// link, a copy; and hashes it (once).
fn stage_zero_copy(
    src: &Path,
    dst: &Path,
    progress: Option<&mut dyn ImportProgress>,
) -> io::Result<(Sha256, Placed)> {
    let input = File::open(src)?;
    let total = input.metadata()?.len();
    let create = || {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(dst)
    };
    let out = create()?;
    match crate::sys::reflink(&input, &out) {
        Ok(()) => {
            let what = "hashing the reflinked copy";
            let d = hash_with_progress(&out, None, total, progress, what)?;
            return Ok((d, Placed::Reflink));
        }
        Err(e) if reflink_unsupported(&e) => {}
        Err(e) => return Err(e),
    }
    drop(out);
    fs::remove_file(dst)?;
    match fs::hard_link(src, dst) {
        Ok(()) => return hash_linked(dst, progress).map(|d| (d, Placed::HardLink)),
        Err(e) if link_unsupported(&e) => {
            log::debug!("{}: no hard link ({e}); copying", src.display());
        }
        Err(e) => return Err(e),
    }
    let out = create()?;
    let d = hash_with_progress(&input, Some(&out), total, progress, "copying")?;
    Ok((d, Placed::Copy))
}

/// Whether a failed `link(2)` means "copy instead": another filesystem,
/// one without hard links, too many links, or `protected_hardlinks`
/// refusing a file the user does not own.
fn link_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EXDEV | libc::EPERM | libc::EMLINK | libc::EOPNOTSUPP | libc::EACCES)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(
        name: &'a ModelName,
        path: &'a Path,
        claimed: Option<Sha256>,
        source: &'a Source,
    ) -> AdoptRequest<'a> {
        AdoptRequest {
            name,
            path,
            claimed,
            claimed_size: None,
            source,
            force: false,
        }
    }

    #[test]
    fn a_file_is_placed_once_and_a_second_adoption_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path().join("store")).unwrap();
        let file = dir.path().join("sha256-x");
        fs::write(&file, b"GGUF bytes").unwrap();
        let d = Sha256::of(b"GGUF bytes");
        let name = ModelName::parse("m").unwrap();
        let src = Source::default();
        let r = req(&name, &file, Some(d), &src);
        let Adopted::Added { manifest, placed } = s.adopt_file(&r, None).unwrap() else {
            panic!("added");
        };
        assert_eq!(manifest.blob, d);
        assert!(placed.is_some());
        assert_eq!(fs::read(s.blob_path(&d)).unwrap(), b"GGUF bytes");
        let before = fs::read(s.manifest_path(&name)).unwrap();
        assert!(matches!(
            s.adopt_file(&r, None).unwrap(),
            Adopted::Unchanged { .. }
        ));
        let no_claim = req(&name, &file, None, &src);
        assert!(matches!(
            s.adopt_file(&no_claim, None).unwrap(),
            Adopted::Unchanged { .. }
        ));
        assert_eq!(
            fs::read(s.manifest_path(&name)).unwrap(),
            before,
            "not rewritten"
        );
        assert!(s.stale_imports().is_empty());
    }

    #[test]
    fn a_file_whose_name_lies_about_its_digest_is_rejected_and_nothing_is_placed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path().join("store")).unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"GGUF other bytes").unwrap();
        let name = ModelName::parse("m").unwrap();
        let src = Source::default();
        let r = req(&name, &file, Some(Sha256::of(b"GGUF claimed")), &src);
        let e = s.adopt_file(&r, None).unwrap_err();
        assert!(matches!(e, AdoptFileError::WrongDigest { .. }), "{e}");
        assert!(e.to_string().contains("is named after sha256"), "{e}");
        assert!(s.read_manifest(&name).unwrap().is_none());
        assert!(s.list_blobs().unwrap().is_empty());
        assert!(s.stale_imports().is_empty());
        let sized = AdoptRequest {
            claimed_size: Some(3),
            ..r
        };
        assert!(matches!(
            s.adopt_file(&sized, None).unwrap_err(),
            AdoptFileError::WrongSize { actual: 16, .. }
        ));
    }

    #[test]
    fn a_pending_manifest_of_the_same_bytes_gets_its_blob_and_keeps_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path().join("store")).unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"GGUF pinned").unwrap();
        let d = Sha256::of(b"GGUF pinned");
        let name = ModelName::parse("m").unwrap();
        let pinned = Source {
            url: Some("https://example.org/m.gguf".into()),
            ..Source::default()
        };
        s.write_manifest(&Manifest::new(name.clone(), "gguf", d, 11, pinned.clone()))
            .unwrap();
        let local = Source {
            registry: "local".into(),
            ..Source::default()
        };
        let Adopted::Added { placed, .. } = s
            .adopt_file(&req(&name, &file, None, &local), None)
            .unwrap()
        else {
            panic!("added");
        };
        assert!(placed.is_some());
        assert_eq!(s.blob_state(&d), BlobState::Present(11));
        assert_eq!(s.read_manifest(&name).unwrap().unwrap().source, pinned);
    }

    #[test]
    fn a_claimed_blob_already_in_the_store_needs_only_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path().join("store")).unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"GGUF shared").unwrap();
        let d = Sha256::of(b"GGUF shared");
        let src = Source::default();
        let a = ModelName::parse("a").unwrap();
        s.adopt_file(&req(&a, &file, Some(d), &src), None).unwrap();
        let b = ModelName::parse("b").unwrap();
        let Adopted::Added { placed, .. } =
            s.adopt_file(&req(&b, &file, Some(d), &src), None).unwrap()
        else {
            panic!("added");
        };
        assert_eq!(placed, None);
        assert_eq!(s.read_manifest(&b).unwrap().unwrap().blob, d);
    }
}
