//! The quarantine (`locks/quarantine/`): bytes that failed verification,
//! moved aside under a timestamped name, never overwritten.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::layout::PARTIAL_FILE;
use super::nofollow::{self, Dir};
use super::{Store, StoreError, timestamp};
use crate::digest::Sha256;

impl Store {
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
    pub(super) fn quarantine_folder(&self) -> Result<Dir, StoreError> {
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

    pub(super) fn quarantine_with(
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
}
