//! The staging files of `modelfs import`: `blobs/sha256/.import-<pid>-<name>`.
//!
//! `import` takes `locks/<name>.lock`, then links or copies the user's file
//! to its staging name, hashes it, and renames it to its digest path; the
//! lock is held the whole time. So a staging file whose name's lock nobody
//! holds belongs to an import that is over: it failed (every way out of
//! `import` removes it, see [`RemoveOnDrop`]) or it was killed. `gc` removes
//! those ([`Store::stale_imports`]). The lock, not the PID in the name,
//! decides: a PID says nothing about an import running in another PID
//! namespace (a container sharing the store), and PIDs are reused.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::lock::LockGuard;
use super::nofollow::Dir;
use super::{ModelName, Store, StoreError};

/// How the staging files' names start.
pub const IMPORT_PREFIX: &str = ".import-";

/// A staging file left by an import that is not running.
#[derive(Debug)]
pub struct StaleImport {
    /// Its name in `blobs/sha256/`.
    pub file_name: String,
    /// Bytes it holds on disk of its own (0 when it is a hard link to a
    /// file that stays: removing it frees nothing).
    pub freed: u64,
    /// The lock of its model name, held until the file is removed, so no
    /// import of that name starts meanwhile.
    _lock: LockGuard,
}

impl Store {
    /// Where `import` stages a file for `name`.
    pub fn import_staging_path(&self, name: &ModelName) -> PathBuf {
        self.blobs_dir()
            .join(format!("{IMPORT_PREFIX}{}-{name}", std::process::id()))
    }

    /// The staging files in `blobs/sha256/` whose model name's lock nobody
    /// holds, each with that lock taken. Folders and names that are not
    /// `.import-<pid>-<valid name>` are left alone.
    pub fn stale_imports(&self) -> Vec<StaleImport> {
        let Ok(entries) = fs::read_dir(self.blobs_dir()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let Some(file_name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Some(name) = staged_name(&file_name) else {
                continue;
            };
            // `DirEntry::metadata` does not follow a symlink.
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                continue;
            }
            let Ok(Some(held)) = self.try_lock_model(&name) else {
                continue; // an import of this name is running
            };
            let freed = if m.is_file() && m.nlink() == 1 {
                m.len()
            } else {
                0
            };
            out.push(StaleImport {
                file_name,
                freed,
                _lock: held,
            });
        }
        out.sort_by(|a, b| a.file_name.cmp(&b.file_name));
        out
    }

    /// Removes a stale staging file (a symlink or a FIFO there is removed,
    /// never followed or opened).
    pub fn remove_stale_import(&self, s: StaleImport) -> Result<(), StoreError> {
        let dir = self.blobs_dir();
        let path = dir.join(&s.file_name);
        Dir::open(&dir)
            .and_then(|d| d.unlink(&s.file_name))
            .map_err(|e| StoreError::walking(&path, e))
    }
}

/// `.import-<pid>-<name>` → the model name.
fn staged_name(file_name: &str) -> Option<ModelName> {
    let (pid, name) = file_name.strip_prefix(IMPORT_PREFIX)?.split_once('-')?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ModelName::parse(name).ok()
}

/// Removes a file when dropped, whatever way its owner's function returns:
/// `import` keeps its staging file in one, so a failed import leaves
/// nothing behind. A file already renamed away is no error.
#[derive(Debug)]
pub struct RemoveOnDrop(PathBuf);

impl RemoveOnDrop {
    pub fn new(path: &Path) -> Self {
        Self(path.to_path_buf())
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        match fs::remove_file(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("cannot remove {}: {e}", self.0.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_staging_files_of_names_nobody_locks_are_stale() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path()).unwrap();
        let top = dir.path().join("blobs/sha256");
        for f in [
            ".import-1-gone",
            ".import-2-running",
            ".import-x-bad",
            ".import-3-",
        ] {
            fs::write(top.join(f), b"bytes").unwrap();
        }
        fs::create_dir(top.join(".import-4-folder")).unwrap();
        let running = s
            .try_lock_model(&ModelName::parse("running").unwrap())
            .unwrap()
            .unwrap();
        let stale = s.stale_imports();
        let names: Vec<_> = stale.iter().map(|s| s.file_name.as_str()).collect();
        assert_eq!(names, [".import-1-gone"]);
        for st in stale {
            s.remove_stale_import(st).unwrap();
        }
        assert!(!top.join(".import-1-gone").exists());
        assert!(top.join(".import-2-running").exists());
        drop(running);
        assert_eq!(s.stale_imports().len(), 1, "no longer locked");
    }
}
