//! Blobs and modelfs's partial files: stat, open (regular files only,
//! never through a symlink), publish (a rename that never replaces a blob
//! another producer placed first), remove, adopt, list.

use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::layout::PARTIAL_FILE;
use super::nofollow::{self, Dir};
use super::{BlobState, Store, StoreError, kind_of, open_regular, refuse};
use crate::digest::Sha256;

/// How [`Store::publish_blob`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Our file is now the blob.
    Placed,
    /// Another producer had placed the blob first; it stays, ours is gone.
    AlreadyThere,
}

impl Store {
    /// `blobs/sha256/<aa>`, opened (or created) without following a
    /// symlink at `<aa>`.
    pub(super) fn fanout(&self, d: &Sha256, create: bool) -> Result<Dir, StoreError> {
        let top = self.blobs_dir();
        let aa = &d.to_hex()[..2];
        let fan = if create {
            Dir::create(&top).and_then(|t| t.sub_or_create(aa))
        } else {
            Dir::open(&top).and_then(|t| t.sub(aa))
        };
        fan.map_err(|e| StoreError::walking(self.fanout_dir(d), e))
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
        self.open_blob_with_metadata(d).map(|(f, _)| f)
    }

    /// [`Store::open_blob`], with the metadata of the file it opened (the
    /// `fstat` that checked it is a regular file; an open needs it too).
    pub fn open_blob_with_metadata(
        &self,
        d: &Sha256,
    ) -> Result<(File, std::fs::Metadata), StoreError> {
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
        open_regular(&dir, PARTIAL_FILE, libc::O_RDWR | libc::O_CREAT, &path).map(|(f, _)| f)
    }

    /// Removes the partial file and its folder (the caller holds its lock).
    /// Publishes `bytes` as their blob the way a fetch does (tests).
    #[cfg(test)]
    pub(crate) fn publish_bytes(&self, bytes: &[u8]) -> Sha256 {
        use std::io::Write;
        let d = Sha256::of(bytes);
        let mut f = self.open_partial(&d).unwrap();
        f.write_all(bytes).unwrap();
        self.publish_blob(&d, &f).unwrap();
        d
    }

    pub fn remove_partial(&self, d: &Sha256) -> Result<(), StoreError> {
        let path = self.partial_path(d);
        let fan = self.fanout(d, false)?;
        let name = Self::partial_dir_name(d);
        if let Ok(dir) = fan.sub(&name) {
            let _ = dir.unlink(super::layout::PREFIX_RECORD);
            // Left by a run killed while it rewrote the record.
            let _ = dir.unlink(&format!("{}.tmp", super::layout::PREFIX_RECORD));
        }
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
        open_regular(&dir, PARTIAL_FILE, libc::O_RDONLY, &path).map(|(f, _)| f)
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
    pub(super) fn scan_blob_dirs(
        &self,
    ) -> Result<(Vec<(Sha256, u64)>, Vec<(Sha256, u64)>), StoreError> {
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
