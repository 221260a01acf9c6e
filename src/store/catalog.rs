//! The catalog: manifests read, listed, written (atomically: tmp, fsync,
//! rename, fsync dir) and removed.

use std::fs;
use std::io;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::nofollow;
use super::{
    Manifest, ManifestError, ModelName, Store, StoreError, create_new_file, manifest,
    refuse_symlink, sync_dir,
};

/// `x.json` → `Some("x")`; anything else (tmp files, dotfiles) → `None`.
pub(super) fn manifest_file_stem(f: &std::ffi::OsStr) -> Option<&str> {
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

impl Store {
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
}
