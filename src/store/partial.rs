//! The partial-file protocol: modelfs's own download file of a blob
//! (`Store::partial_path`, a name other producers never write).
//!
//! A [`Partial`] is open and locked: two modelfs producers of one blob under
//! different names never write the same partial, and gc (which deletes a
//! partial only while holding its lock) never deletes one being written. A
//! partial with more than one link (a hard link planted from outside the
//! store) is never written: its name is removed and a new file started. A
//! partial longer than its blob is started over. The kept prefix is
//! re-hashed before it is resumed, and appended bytes are hashed by the
//! caller only once they reached the file, so the hash covers exactly the
//! file's bytes.

use std::fs::{File, Metadata};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::lock::{self, LockGuard};
use super::{Store, StoreError};
use crate::digest::{Hasher, Sha256};

/// Size of one read when re-hashing a kept prefix.
const REHASH_CHUNK: usize = 1 << 20;

/// The partial file of one blob, locked, with the hash of its prefix.
pub struct Partial {
    file: File,
    /// The prefix record (see [`Partial::record_prefix`]).
    record: std::path::PathBuf,
    /// Written ranges beyond the prefix that a parallel download recorded
    /// before it ended (`[start, end)`, ascending, disjoint).
    pieces: Vec<(u64, u64)>,
    _lock: LockGuard,
    offset: u64,
    size: u64,
    resumed: u64,
    waited: bool,
    hasher: Hasher,
}

impl Partial {
    /// Opens and locks the partial of `d` (a blob of `size` bytes), waiting
    /// for another producer that holds it. `Ok(None)`: `cancelled` said so
    /// while waiting. The hash state is empty: call
    /// [`Partial::rehash_prefix`] before appending to a kept prefix.
    pub fn open(
        store: &Store,
        d: &Sha256,
        size: u64,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<Self>, StoreError> {
        let path = store.partial_path(d);
        let mut waited = false;
        let lock = loop {
            match store.try_lock_partial(d, true)? {
                // gc deletes a partial while holding its lock: if ours is no
                // longer the file at the path, open the new one instead.
                Some(g) if still_linked(g.file(), store, d) => {
                    if refuse_shared_inode(&g, store, d, &path)? {
                        if cancelled() {
                            return Ok(None);
                        }
                        continue;
                    }
                    break g;
                }
                Some(_) => continue,
                None if cancelled() => return Ok(None),
                None => {
                    waited = true;
                    std::thread::sleep(lock::LOCK_POLL)
                }
            }
        };
        let file = lock
            .file()
            .try_clone()
            .map_err(|e| StoreError::io(&path, e))?;
        let mut len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        let record = store.prefix_record_path(d);
        // A parallel download that ended without cleaning up (killed) left
        // ranges beyond its hashed prefix, with holes between them: only
        // the recorded prefix and pieces are known to be the blob's bytes.
        let mut pieces = Vec::new();
        if let Some(r) = read_prefix_record(&record, len.min(size)) {
            if r.prefix < len {
                log::info!(
                    "{}: keeping the {} bytes the last download recorded as written",
                    path.display(),
                    r.prefix + r.pieces.iter().map(|(a, b)| b - a).sum::<u64>()
                );
            }
            if r.pieces.is_empty() && r.prefix < len {
                file.set_len(r.prefix)
                    .map_err(|e| StoreError::io(&path, e))?;
            }
            len = r.prefix.min(len);
            pieces = r.pieces;
        }
        if pieces.is_empty() {
            // The file is a plain prefix: the record's job is done.
            let _ = std::fs::remove_file(&record);
        }
        let mut p = Self {
            record,
            pieces,
            file,
            _lock: lock,
            offset: len,
            size,
            resumed: len,
            waited,
            hasher: Hasher::new(),
        };
        if len > size {
            log::warn!(
                "{}: partial is longer than the blob; starting over",
                path.display()
            );
            p.reset()?;
        }
        Ok(Some(p))
    }

    /// The open file (for publishing it, and for write-back hints).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Bytes in the file so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The blob's size: the partial is complete at this offset.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes kept from an earlier run that this download builds on; zero
    /// once the partial is reset.
    pub fn resumed(&self) -> u64 {
        self.resumed
    }

    /// Whether another producer held the partial's lock when we came.
    pub fn waited(&self) -> bool {
        self.waited
    }

    /// The hash of the bytes in the file (once they are all hashed).
    pub fn hasher(&self) -> &Hasher {
        &self.hasher
    }

    /// Takes the hash state out, for a hashing thread to continue it; give
    /// it back with [`Partial::set_hasher`].
    pub fn take_hasher(&mut self) -> Hasher {
        std::mem::take(&mut self.hasher)
    }

    pub fn set_hasher(&mut self, h: Hasher) {
        self.hasher = h;
    }

    /// The partial file again, read-only: the same inode, never through a
    /// symlink, and never another file that took its name.
    pub fn reopen_read_only(&self, store: &Store, d: &Sha256) -> std::io::Result<File> {
        use std::os::unix::fs::MetadataExt;
        let again = store
            .open_existing_partial(d)
            .map_err(std::io::Error::other)?;
        let (a, b) = (self.file.metadata()?, again.metadata()?);
        if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
            return Err(std::io::Error::other(
                "the partial file was replaced while it was being verified",
            ));
        }
        Ok(again)
    }

    /// Hashes the kept prefix, so the final digest covers every byte.
    pub fn rehash_prefix(&mut self) -> Result<(), StoreError> {
        let io = |e| StoreError::io("partial file", e);
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut h = Hasher::new();
        let mut left = self.offset;
        let mut buf = vec![0u8; REHASH_CHUNK];
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = self.file.read(&mut buf[..want]).map_err(io)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            left -= n as u64;
        }
        self.offset -= left;
        self.resumed = self.offset;
        if left > 0 || self.pieces.is_empty() {
            self.clear_prefix_record();
            self.file.set_len(self.offset).map_err(io)?;
        }
        self.file.seek(SeekFrom::Start(self.offset)).map_err(io)?;
        self.hasher = h;
        Ok(())
    }

    /// Removes the partial file and its folder if not one byte reached it,
    /// so a fetch that failed before the first byte (404, refused redirect,
    /// no space) leaves the model pending instead of looking like a started
    /// download. Safe because we hold the partial's lock, as gc does.
    pub fn discard_if_empty(&self, store: &Store, d: &Sha256) {
        // Pieces written out of order are finished work, even before a
        // byte of the prefix is hashed.
        if self.offset == 0 && self.pieces.is_empty() && still_linked(&self.file, store, d) {
            let _ = store.remove_partial(d);
        }
    }

    /// Records that the first `n` bytes are written and hashed and that
    /// `pieces` beyond them are written, before anything is written out of
    /// order: a run killed then resumes from here, not from the file's
    /// length (a file with holes). Written to a temporary name and renamed,
    /// so it is whole or absent. Format: the prefix on the first line, then
    /// one `START END` line per piece.
    pub fn record_prefix(&self, n: u64, pieces: &[(u64, u64)]) -> Result<(), StoreError> {
        let tmp = self.record.with_extension("prefix.tmp");
        let mut text = format!("{n}\n");
        for (a, b) in pieces {
            text.push_str(&format!("{a} {b}\n"));
        }
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &self.record))
            .map_err(|e| StoreError::io(&self.record, e))
    }

    /// The file is a plain prefix again: no record needed.
    fn clear_prefix_record(&mut self) {
        self.pieces.clear();
        let _ = std::fs::remove_file(&self.record);
    }

    /// Ranges beyond the prefix kept from an earlier parallel download.
    pub fn kept_pieces(&self) -> &[(u64, u64)] {
        &self.pieces
    }

    /// Gives up the kept pieces, for a download over one stream that
    /// appends from the prefix: the file is cut back to the prefix.
    pub fn drop_pieces(&mut self) -> Result<(), StoreError> {
        if self.pieces.is_empty() {
            return Ok(());
        }
        self.file
            .set_len(self.offset)
            .map_err(|e| StoreError::io("partial file", e))?;
        self.clear_prefix_record();
        Ok(())
    }

    /// Empties the partial, to start over from byte 0.
    pub fn reset(&mut self) -> Result<(), StoreError> {
        self.clear_prefix_record();
        let io = |e| StoreError::io("partial file", e);
        self.file.set_len(0).map_err(io)?;
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        self.offset = 0;
        self.resumed = 0;
        self.hasher = Hasher::new();
        Ok(())
    }

    /// Writes `bytes` at the end of the partial. The caller hashes them
    /// (on the hashing thread), and only once they are written. On a full
    /// disk (`raw_os_error() == ENOSPC`) the file is left as it is;
    /// otherwise it is cut back to what was there, so the hash still
    /// covers the file exactly.
    pub fn append_unhashed(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        if let Err(e) = self.file.write_all(bytes) {
            if e.raw_os_error() != Some(libc::ENOSPC) {
                let _ = self.file.set_len(self.offset);
                let _ = self.file.seek(SeekFrom::Start(self.offset));
            }
            return Err(StoreError::io("partial file", e));
        }
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Writes `bytes` at `pos`, at or beyond the hashed prefix, without
    /// moving it: a parallel download's ranges arrive out of order, and
    /// the hasher reads them back once the prefix reaches them (see
    /// [`Partial::hashed_to`]). Several threads may write at once.
    pub fn write_at(&self, pos: u64, bytes: &[u8]) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt;
        debug_assert!(pos >= self.offset && pos + bytes.len() as u64 <= self.size);
        self.file
            .write_all_at(bytes, pos)
            .map_err(|e| StoreError::io("partial file", e))
    }

    /// The first `offset` bytes are written and `hasher` covers exactly
    /// them, and `pieces` beyond are written too: kept in the file and in
    /// the prefix record, for the next download to build on.
    pub fn keep_written(
        &mut self,
        offset: u64,
        hasher: Hasher,
        pieces: Vec<(u64, u64)>,
    ) -> Result<(), StoreError> {
        if pieces.is_empty() {
            return self.hashed_to(offset, hasher);
        }
        self.record_prefix(offset, &pieces)?;
        self.file
            .seek(SeekFrom::Start(offset))
            .map_err(|e| StoreError::io("partial file", e))?;
        self.offset = offset;
        self.hasher = hasher;
        self.pieces = pieces;
        Ok(())
    }

    /// A second handle on the file, for the thread that reads written
    /// ranges back to hash them.
    pub fn reader(&self) -> Result<File, StoreError> {
        self.file
            .try_clone()
            .map_err(|e| StoreError::io("partial file", e))
    }

    /// The first `offset` bytes are written and `hasher` covers exactly
    /// them. Bytes written beyond are cut off: a later run resumes from the
    /// hashed prefix, never from a file length that spans holes.
    pub fn hashed_to(&mut self, offset: u64, hasher: Hasher) -> Result<(), StoreError> {
        let io = |e| StoreError::io("partial file", e);
        let len = self.file.metadata().map_err(io)?.len();
        if len != offset {
            self.file.set_len(offset).map_err(io)?;
        }
        self.file.seek(SeekFrom::Start(offset)).map_err(io)?;
        self.clear_prefix_record();
        self.offset = offset;
        self.hasher = hasher;
        Ok(())
    }

    /// Free bytes for an unprivileged writer on the partial's filesystem.
    pub fn free_bytes(&self) -> Option<u64> {
        use std::os::fd::AsRawFd;
        free_bytes(
            Path::new("/proc/self/fd")
                .join(self.file.as_raw_fd().to_string())
                .as_path(),
        )
    }
}

/// A partial with more than one link shares its inode with a name outside
/// the partial folder (a hard link planted there, perhaps to a file outside
/// the store): writing, truncating or even resuming from it would change
/// that file. Removes our name for it (never touching the file itself) and
/// says so; `true` when the caller must open a new partial. The caller
/// holds the partial's lock.
fn refuse_shared_inode(
    held: &LockGuard,
    store: &Store,
    d: &Sha256,
    path: &Path,
) -> Result<bool, StoreError> {
    use std::os::unix::fs::MetadataExt;
    let links = held
        .file()
        .metadata()
        .map_err(|e| StoreError::io(path, e))?
        .nlink();
    if links <= 1 {
        return Ok(false);
    }
    log::warn!(
        "{}: the partial file has {links} links (another name shares it, perhaps outside \
         the store); not writing to it: removing this name and starting a new download",
        path.display()
    );
    store.remove_partial(d)?;
    Ok(true)
}

/// Whether `file` is still the partial file of `d` in the store.
fn still_linked(file: &File, store: &Store, d: &Sha256) -> bool {
    use std::os::unix::fs::MetadataExt;
    let at_path: Option<Metadata> = store.stat_partial(d);
    match (file.metadata(), at_path) {
        (Ok(a), Some(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

/// A prefix record as read back.
struct PrefixRecord {
    prefix: u64,
    pieces: Vec<(u64, u64)>,
}

/// The record at `path`, if there is a readable one; pieces not inside
/// `(prefix, len]`, out of order or overlapping make it unreadable but
/// for its prefix.
fn read_prefix_record(path: &Path, len: u64) -> Option<PrefixRecord> {
    let bytes = super::nofollow::read_small_file(path, 1 << 20).ok()?;
    let text = std::str::from_utf8(&bytes).ok()?;
    let mut lines = text.lines();
    let prefix: u64 = lines.next()?.trim().parse().ok()?;
    let mut pieces = Vec::new();
    let mut last = prefix;
    for line in lines {
        let mut it = line.split_whitespace().map(str::parse::<u64>);
        match (it.next(), it.next(), it.next()) {
            (Some(Ok(a)), Some(Ok(b)), None) if a >= last && b > a && b <= len => {
                pieces.push((a, b));
                last = b;
            }
            _ => {
                pieces.clear();
                break;
            }
        }
    }
    Some(PrefixRecord { prefix, pieces })
}

/// Free bytes for an unprivileged writer on the filesystem holding `path`.
pub use crate::sys::free_bytes;
