//! `manifests/` as a watcher lists it: which files are manifests, with the
//! [`Stamp`] each had when listed, and which `*.json` entries are ignored
//! and why. Nothing is opened or parsed here (the mount's namespace parses
//! only the manifests whose stamps moved, with [`Store::read_manifest`]);
//! change detection is the caller's.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::time::SystemTime;

use super::nofollow::kind_of;
use super::watch::Stamp;
use super::{ModelName, Store, StoreError};

/// A `*.json` entry of `manifests/` that is not a manifest.
#[derive(Debug, Clone)]
pub struct IgnoredFile {
    /// Its file name in `manifests/`.
    pub file_name: String,
    pub stamp: Stamp,
    /// Why it is ignored, for a log line.
    pub why: String,
}

/// One listing of `manifests/`.
#[derive(Debug, Default)]
pub struct ManifestFiles {
    /// `(stem, stamp)` of every `<valid-name>.json` regular file.
    pub manifests: Vec<(String, Stamp)>,
    /// The other `*.json` entries.
    pub ignored: Vec<IgnoredFile>,
}

impl Store {
    /// The stamp of `manifests/` now, taken no earlier than `now`; `None`
    /// if it cannot be looked at. It may be the operator's symlink, which
    /// is followed here (and only here).
    pub fn manifests_dir_stamp(&self, now: SystemTime) -> Option<Stamp> {
        fs::metadata(self.manifests_dir())
            .ok()
            .map(|m| Stamp::of(&m, now))
    }

    /// Lists `manifests/`; stamps are taken no earlier than `now`. Files
    /// not ending in `.json` (`*.json.tmp` of a writer, notes) are none of
    /// our business and left out. A missing folder lists as empty; one
    /// that exists but cannot be listed now (out of descriptors, not a
    /// folder) is an error.
    pub fn list_manifest_files(&self, now: SystemTime) -> Result<ManifestFiles, StoreError> {
        let mut out = ManifestFiles::default();
        let path = self.manifests_dir();
        let dir = match fs::read_dir(&path) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        for e in dir.flatten() {
            let fname = e.file_name();
            let Some(stem) = fname.to_str().and_then(|f| f.strip_suffix(".json")) else {
                continue;
            };
            // `DirEntry::metadata` is an `fstatat` relative to the listed
            // folder that does not follow a symlink: a planted one is
            // skipped, never followed.
            let Ok(m) = e.metadata() else {
                continue;
            };
            let stamp = Stamp::of(&m, now);
            let ignore = |why: String| IgnoredFile {
                file_name: stem.to_string() + ".json",
                stamp,
                why,
            };
            if let Err(err) = ModelName::parse(stem) {
                out.ignored
                    .push(ignore(format!("not a valid model name: {err}")));
                continue;
            }
            if !m.is_file() {
                let why = if m.file_type().is_symlink() {
                    "a symlink (symlinks in the store are never followed)".to_string()
                } else {
                    // Never opened: a FIFO would block the watcher, a
                    // device could be read without end.
                    format!("a {}, not a regular file", kind_of(m.mode()))
                };
                out.ignored.push(ignore(why));
                continue;
            }
            out.manifests.push((stem.to_string(), stamp));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Sha256;
    use crate::store::{Manifest, Source};

    #[test]
    fn a_listing_names_the_manifests_and_says_why_other_json_entries_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let m = Manifest::new(
            ModelName::parse("good").unwrap(),
            "gguf",
            Sha256::of(b"x"),
            1,
            Source::default(),
        );
        store.write_manifest(&m).unwrap();
        let d = store.manifests_dir();
        fs::write(d.join("Not A Name!.json"), b"{}").unwrap();
        fs::create_dir(d.join("folder.json")).unwrap();
        std::os::unix::fs::symlink(d.join("good.json"), d.join("link.json")).unwrap();
        fs::write(d.join("good.json.tmp"), b"").unwrap();
        fs::write(d.join("notes.txt"), b"").unwrap();

        let got = store.list_manifest_files(SystemTime::now()).unwrap();
        let stems: Vec<&str> = got.manifests.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(stems, ["good"]);
        let mut ignored: Vec<(String, String)> = got
            .ignored
            .into_iter()
            .map(|i| (i.file_name, i.why))
            .collect();
        ignored.sort();
        assert_eq!(ignored.len(), 3, "{ignored:?}");
        assert!(ignored[0].0 == "Not A Name!.json" && ignored[0].1.contains("not a valid"));
        assert!(ignored[1].0 == "folder.json" && ignored[1].1.contains("not a regular file"));
        assert!(ignored[2].0 == "link.json" && ignored[2].1.contains("symlink"));
    }

    #[test]
    fn a_missing_manifests_folder_lists_as_empty_and_a_file_in_its_place_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        fs::remove_dir(store.manifests_dir()).unwrap();
        let got = store.list_manifest_files(SystemTime::now()).unwrap();
        assert!(got.manifests.is_empty() && got.ignored.is_empty());
        fs::write(store.manifests_dir(), b"").unwrap();
        let e = store.list_manifest_files(SystemTime::now()).unwrap_err();
        assert!(
            e.to_string().contains("manifests"),
            "the error names the folder: {e}"
        );
    }
}
