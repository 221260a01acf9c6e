//! Garbage collection: free blobs no manifest names, abandoned partials,
//! staging files of imports that are not running, and the quarantine.
//!
//! Safe against concurrent producers: a partial is deleted only while gc
//! itself holds its lock (a fetcher that locks it afterwards notices the
//! file is gone and starts a new one); a blob is deleted only if no manifest
//! names it and it was placed more than the grace period ago ([`GRACE`]),
//! which covers the window between a producer's rename and its manifest
//! write. Partials of models a manifest still names are kept: they are
//! resumable downloads. Unparseable manifests are scanned for digests too,
//! so a manifest gc cannot parse never costs its blob; like every manifest
//! read, that scan reads only regular files of at most `MAX_MANIFEST_BYTES`
//! and never follows a symlink or opens a FIFO or a device, so no file in
//! `manifests/` can make gc hang or fill memory.
//!
//! Staging files of imports that are not running
//! (`blobs/sha256/.import-<pid>-<name>`: a killed `import`) are deleted; an
//! import holds its name's lock while its staging file exists, so gc
//! deletes one only while it holds that lock itself (see
//! [`super::staging`]).
//!
//! Quarantined files (bytes that failed verification, kept for
//! inspection) are deleted too, unless asked to keep them. Only regular
//! files are deleted there (a name is never followed).
//!
//! This module decides and deletes; it prints nothing. Every file it
//! considers is told to the caller as a [`GcEvent`], in order, before it is
//! deleted.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Store, StoreError, read_manifest_bytes};
use crate::digest::Sha256;

/// Blobs placed more recently than this are never collected.
pub const GRACE: Duration = Duration::from_secs(60);

/// [`GRACE`], or `MODELFS_GC_GRACE_SECS` when set to a number of seconds
/// (for tests, and for stores whose producers are known to be idle).
pub fn grace_from_env() -> Duration {
    std::env::var("MODELFS_GC_GRACE_SECS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map_or(GRACE, Duration::from_secs)
}

/// What a collection does.
#[derive(Debug, Clone, Copy)]
pub struct GcOptions {
    /// Decide and report, delete nothing.
    pub dry_run: bool,
    /// Leave the quarantine alone (still reported).
    pub keep_quarantine: bool,
    /// Blobs placed more recently than this are kept.
    pub grace: Duration,
}

/// One file gc considered, told before it is deleted.
#[derive(Debug)]
pub enum GcEvent {
    /// A manifest that could not be read; its digests are kept anyway.
    SkippedManifest(StoreError),
    /// An unreferenced blob placed less than the grace period ago: kept.
    YoungBlob { digest: Sha256, grace_secs: i64 },
    /// An unreferenced blob: deleted (or would be).
    Blob { digest: Sha256, size: u64 },
    /// An unreferenced partial a download holds locked: kept.
    BusyPartial { digest: Sha256 },
    /// An unreferenced partial: deleted (or would be).
    Partial { digest: Sha256, size: u64 },
    /// The staging file of an import that is not running: deleted (or
    /// would be); `freed` is 0 for a hard link to a file that stays.
    StaleImport { file_name: String, freed: u64 },
    /// A quarantined file: deleted (or would be) unless `kept`.
    Quarantined {
        path: PathBuf,
        size: u64,
        kept: bool,
    },
}

/// What a collection freed (or would free).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcSummary {
    pub freed_bytes: u64,
    pub files: usize,
}

impl GcSummary {
    fn add(&mut self, bytes: u64) {
        self.freed_bytes += bytes;
        self.files += 1;
    }
}

/// Why a collection stopped. What was deleted before stays deleted.
#[derive(Debug)]
pub enum GcError {
    /// Listing the store failed.
    Store(StoreError),
    DeleteBlob {
        digest: Sha256,
        source: StoreError,
    },
    DeletePartial {
        digest: Sha256,
        source: StoreError,
    },
    DeleteStaleImport {
        file_name: String,
        source: StoreError,
    },
    DeleteQuarantined {
        path: PathBuf,
        source: io::Error,
    },
}

impl fmt::Display for GcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Store(e) => write!(f, "{e}"),
            Self::DeleteBlob { digest, source } => {
                write!(f, "cannot delete blob {digest}: {source}")
            }
            Self::DeletePartial { digest, source } => {
                write!(f, "cannot delete partial {digest}: {source}")
            }
            Self::DeleteStaleImport { file_name, source } => {
                write!(f, "cannot delete {file_name}: {source}")
            }
            Self::DeleteQuarantined { path, source } => write!(
                f,
                "cannot delete quarantined file {}: {source}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for GcError {}

impl From<StoreError> for GcError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// `d` in whole seconds as an `i64`, saturating: a huge grace period
/// keeps everything rather than wrapping round to a negative one.
fn secs_i64(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl Store {
    /// Collects what nothing needs (see the module doc), telling `report`
    /// of each file first; stops at the first deletion that fails.
    pub fn collect_garbage(
        &self,
        opts: &GcOptions,
        report: &mut dyn FnMut(GcEvent),
    ) -> Result<GcSummary, GcError> {
        let referenced = self.referenced_digests(report)?;
        let mut sum = GcSummary::default();
        self.collect_blobs(&referenced, opts, report, &mut sum)?;
        self.collect_partials(&referenced, opts, report, &mut sum)?;
        self.collect_stale_imports(opts.dry_run, report, &mut sum)?;
        self.collect_quarantine(opts, report, &mut sum)?;
        if !opts.dry_run {
            // Bookkeeping of modelfs's own, not a user's file: not reported.
            self.remove_orphan_records();
        }
        Ok(sum)
    }

    /// Unreferenced blobs placed before the grace period.
    fn collect_blobs(
        &self,
        referenced: &HashSet<Sha256>,
        opts: &GcOptions,
        report: &mut dyn FnMut(GcEvent),
        sum: &mut GcSummary,
    ) -> Result<(), GcError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let grace = secs_i64(opts.grace);
        for (d, size) in self.list_blobs()? {
            if referenced.contains(&d) {
                continue;
            }
            let Some(meta) = self.stat_blob(&d) else {
                continue;
            };
            if now.saturating_sub(meta.ctime()) < grace {
                report(GcEvent::YoungBlob {
                    digest: d,
                    grace_secs: grace,
                });
                continue;
            }
            report(GcEvent::Blob { digest: d, size });
            if !opts.dry_run {
                self.remove_blob(&d)
                    .map_err(|source| GcError::DeleteBlob { digest: d, source })?;
            }
            sum.add(size);
        }
        Ok(())
    }

    /// Unreferenced partials nobody holds locked (deleted under their lock).
    fn collect_partials(
        &self,
        referenced: &HashSet<Sha256>,
        opts: &GcOptions,
        report: &mut dyn FnMut(GcEvent),
        sum: &mut GcSummary,
    ) -> Result<(), GcError> {
        for (d, size) in self.list_partials()? {
            if referenced.contains(&d) {
                continue;
            }
            let Ok(held) = self.try_lock_partial(&d, false) else {
                continue;
            };
            let Some(_held) = held else {
                report(GcEvent::BusyPartial { digest: d });
                continue;
            };
            report(GcEvent::Partial { digest: d, size });
            if !opts.dry_run {
                self.remove_partial(&d)
                    .map_err(|source| GcError::DeletePartial { digest: d, source })?;
            }
            sum.add(size);
        }
        Ok(())
    }

    /// The staging files of imports that are not running.
    fn collect_stale_imports(
        &self,
        dry_run: bool,
        report: &mut dyn FnMut(GcEvent),
        sum: &mut GcSummary,
    ) -> Result<(), GcError> {
        for stale in self.stale_imports() {
            report(GcEvent::StaleImport {
                file_name: stale.file_name.clone(),
                freed: stale.freed,
            });
            sum.add(stale.freed);
            if !dry_run {
                let file_name = stale.file_name.clone();
                self.remove_stale_import(stale)
                    .map_err(|source| GcError::DeleteStaleImport { file_name, source })?;
            }
        }
        Ok(())
    }

    /// The quarantined regular files, deleted unless kept.
    fn collect_quarantine(
        &self,
        opts: &GcOptions,
        report: &mut dyn FnMut(GcEvent),
        sum: &mut GcSummary,
    ) -> Result<(), GcError> {
        let Ok(entries) = fs::read_dir(self.quarantine_dir()) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = path.symlink_metadata() else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            report(GcEvent::Quarantined {
                path: path.clone(),
                size: meta.len(),
                kept: opts.keep_quarantine,
            });
            if opts.keep_quarantine {
                continue;
            }
            if !opts.dry_run {
                fs::remove_file(&path)
                    .map_err(|source| GcError::DeleteQuarantined { path, source })?;
            }
            sum.add(meta.len());
        }
        Ok(())
    }

    /// Digests named by any manifest file, parseable or not.
    fn referenced_digests(
        &self,
        report: &mut dyn FnMut(GcEvent),
    ) -> Result<HashSet<Sha256>, StoreError> {
        let mut set = HashSet::new();
        for m in self.list_manifests()? {
            match m {
                Ok(m) => {
                    set.insert(m.blob);
                }
                Err(e) => report(GcEvent::SkippedManifest(e)),
            }
        }
        // Broken manifests: keep anything that looks like a digest in them.
        // Special files and oversize ones were reported by `list_manifests`
        // when named `*.json`; other names are none of gc's business.
        if let Ok(dir) = fs::read_dir(self.manifests_dir()) {
            for e in dir.flatten() {
                let Ok(bytes) = read_manifest_bytes(&e.path()) else {
                    continue;
                };
                let text = String::from_utf8_lossy(&bytes);
                for (i, _) in text.match_indices("sha256:") {
                    if let Some(hex) = text.get(i + 7..i + 71)
                        && let Ok(d) = Sha256::from_hex(hex)
                    {
                        set.insert(d);
                    }
                }
            }
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BlobState, Manifest, ModelName, Source};
    use std::path::Path;

    fn opts(dry_run: bool, grace: Duration) -> GcOptions {
        GcOptions {
            dry_run,
            keep_quarantine: false,
            grace,
        }
    }

    /// A store with a blob a manifest names, and an unnamed one.
    fn store_with_two_blobs(dir: &Path) -> (Store, Sha256, Sha256) {
        let s = Store::create(dir).unwrap();
        let (kept, loose) = (Sha256::of(b"named"), Sha256::of(b"loose"));
        for bytes in [&b"named"[..], &b"loose"[..]] {
            s.publish_bytes(bytes);
        }
        let m = Manifest::new(
            ModelName::parse("m").unwrap(),
            "gguf",
            kept,
            5,
            Source::default(),
        );
        s.write_manifest(&m).unwrap();
        (s, kept, loose)
    }

    #[test]
    fn the_verification_record_of_a_blob_deleted_by_hand_goes_with_gc() {
        let dir = tempfile::tempdir().unwrap();
        let (s, kept, _) = store_with_two_blobs(dir.path());
        s.record_verified(&kept, fs::metadata(s.blob_path(&kept)), "test");
        let record = s.records_dir().join(kept.to_hex());
        assert!(record.exists());
        s.collect_garbage(&opts(false, Duration::ZERO), &mut |_| {})
            .unwrap();
        assert!(record.exists(), "its blob is there: kept");
        fs::remove_file(s.blob_path(&kept)).unwrap();
        s.collect_garbage(&opts(true, Duration::ZERO), &mut |_| {})
            .unwrap();
        assert!(record.exists(), "a dry run deletes nothing");
        s.collect_garbage(&opts(false, Duration::ZERO), &mut |_| {})
            .unwrap();
        assert!(!record.exists(), "no blob: no record");
    }

    #[test]
    fn an_unnamed_blob_is_freed_and_a_named_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (s, kept, loose) = store_with_two_blobs(dir.path());
        let mut events = Vec::new();
        let sum = s
            .collect_garbage(&opts(false, Duration::ZERO), &mut |e| events.push(e))
            .unwrap();
        assert_eq!(
            sum,
            GcSummary {
                freed_bytes: 5,
                files: 1
            }
        );
        assert!(matches!(events[..], [GcEvent::Blob { digest, size: 5 }] if digest == loose));
        assert_eq!(s.blob_state(&loose), BlobState::Absent);
        assert_eq!(s.blob_state(&kept), BlobState::Present(5));
    }

    #[test]
    fn a_dry_run_or_a_young_blob_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _, loose) = store_with_two_blobs(dir.path());
        let sum = s
            .collect_garbage(&opts(true, Duration::ZERO), &mut |_| {})
            .unwrap();
        assert_eq!(sum.files, 1);
        let mut events = Vec::new();
        let sum = s
            .collect_garbage(&opts(false, GRACE), &mut |e| events.push(e))
            .unwrap();
        assert_eq!(sum, GcSummary::default());
        assert!(matches!(
            events[..],
            [GcEvent::YoungBlob { grace_secs: 60, .. }]
        ));
        assert_eq!(s.blob_state(&loose), BlobState::Present(5));
    }
}
