//! What modelfs verified, kept so that a later open (in this mount or a
//! fresh one) can tell whether a blob file is still the file that matched
//! its digest (`DESIGN.md` §6, "Verified means verified now").
//!
//! ```text
//! $MODELS_HOME/.modelfs/verified/<hex>    one small JSON record per blob
//! ```
//!
//! A [`Record`] holds the stamps of a blob file taken right after its bytes
//! matched the digest: device, inode, size, mtime and ctime. Any write to the
//! file moves its mtime and ctime (and `touch -d` can set mtime back, but
//! never ctime); a file renamed over it, or a `cp` over a hard-linked import,
//! changes the inode or the times. So a file whose stamps equal its record is
//! the verified file, unchanged, and any other must be hashed again before it
//! is served. Records are written where they are taken:
//!
//! - [`Store::publish_blob`] (a fetch or `pull`) and [`Store::adopt_blob`]
//!   (`import`), after the rename that places the blob;
//! - [`Store::recheck_blob`], after hashing the file again (the mount when
//!   the stamps moved, `modelfs verify`);
//! - the mount, at the first open of a blob that has no record ("trust on
//!   first sight": another tool produced it, or a modelfs before records
//!   existed; the convention's producers verify what they publish).
//!
//! `.modelfs/` is modelfs's private folder: other tools of the convention do
//! not know it and never need to. A missing or stale record is never a
//! reason to serve bytes, only to hash them again (or, when there is none at
//! all, to trust the file once as above). Records are written atomically
//! (a temporary file renamed into place) and read without following a
//! symlink, from regular files of bounded size; anything else at a record's
//! path reads as a record that does not match.
//!
//! Not promised: a change made within the same tick of the filesystem's
//! clock as the stamps were taken (milliseconds on a local filesystem)
//! leaves them unchanged and is not seen; `modelfs verify` hashes
//! regardless. A device number that changes across reboots (some network
//! and btrfs set-ups) makes every blob look changed once: each is hashed
//! again at its next open, then recorded anew.

use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::nofollow::Dir;
use super::{Store, StoreError, timestamp};
use crate::digest::{Hasher, Sha256};

/// The record format's version, written into every record.
const RECORD_VERSION: u64 = 1;

/// Records are a few hundred bytes; anything longer is not one.
const MAX_RECORD_BYTES: u64 = 4096;

/// How many times [`Store::recheck_blob`] hashes a file whose stamps move
/// while it is being hashed before it gives up on it.
const RECHECK_ATTEMPTS: u32 = 3;

/// The stamps of a blob file when its bytes last matched its digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Record {
    /// The stamps of the file `m` describes.
    pub fn of(m: &Metadata) -> Self {
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        }
    }

    /// The record as written to disk: one JSON object, `how` saying what
    /// verified the file (for people reading it; readers ignore it).
    pub fn to_json_bytes(&self, d: &Sha256, how: &str) -> Vec<u8> {
        let v = serde_json::json!({
            "schema_version": RECORD_VERSION,
            "blob": d.to_blob_ref(),
            "dev": self.dev,
            "ino": self.ino,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "ctime_ns": self.ctime_ns,
            "how": how,
            "at": timestamp::format_rfc3339(std::time::SystemTime::now()),
        });
        let mut out = serde_json::to_vec(&v).expect("a JSON value serialises");
        out.push(b'\n');
        out
    }

    /// Parses a record of blob `d`; `None` if it is not one (another
    /// version, another blob, a missing or mistyped field).
    pub fn parse(bytes: &[u8], d: &Sha256) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        if v.get("schema_version")?.as_u64()? != RECORD_VERSION
            || v.get("blob")?.as_str()? != d.to_blob_ref()
        {
            return None;
        }
        Some(Self {
            dev: v.get("dev")?.as_u64()?,
            ino: v.get("ino")?.as_u64()?,
            size: v.get("size")?.as_u64()?,
            mtime_ns: v.get("mtime_ns")?.as_i64()?,
            ctime_ns: v.get("ctime_ns")?.as_i64()?,
        })
    }
}

/// What a record on disk says about a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// There is no record: modelfs never verified this blob file.
    Nothing,
    /// The stamps of the file when it was verified.
    Stamps(Record),
    /// Something unreadable sits at the record's path: it proves nothing.
    Unreadable,
}

/// What hashing a present blob again found.
#[derive(Debug)]
pub enum Recheck {
    /// Its bytes match: a read-only handle on the file that was hashed,
    /// whose stamps are now recorded.
    Matched(File),
    /// Its bytes do not match (or kept changing while they were hashed);
    /// the file was moved to `quarantined`.
    Mismatch {
        actual: Sha256,
        quarantined: PathBuf,
    },
    /// There is no blob file (any more).
    Absent,
}

impl Store {
    /// `.modelfs/verified`
    pub fn records_dir(&self) -> PathBuf {
        self.root().join(".modelfs/verified")
    }

    fn records_folder(&self, create: bool) -> io::Result<Dir> {
        let top = if create {
            Dir::open(self.root()).and_then(|r| r.sub_or_create(".modelfs"))
        } else {
            Dir::open(self.root()).and_then(|r| r.sub(".modelfs"))
        }?;
        if create {
            top.sub_or_create("verified")
        } else {
            top.sub("verified")
        }
    }

    /// The record of blob `d`, read without following a symlink and
    /// without blocking on a special file.
    pub fn read_record(&self, d: &Sha256) -> Recorded {
        let file = self
            .records_folder(false)
            .and_then(|dir| dir.open_file(&d.to_hex(), libc::O_RDONLY | libc::O_NONBLOCK, 0));
        let file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Recorded::Nothing,
            Err(e) => {
                log::warn!(
                    "{}: cannot read the verification record ({e}); the blob is hashed again",
                    self.records_dir().join(d.to_hex()).display()
                );
                return Recorded::Unreadable;
            }
        };
        let mut bytes = Vec::new();
        let read = match file.metadata() {
            Ok(m) if m.is_file() => (&file)
                .take(MAX_RECORD_BYTES + 1)
                .read_to_end(&mut bytes)
                .is_ok(),
            _ => false,
        };
        match Record::parse(&bytes, d) {
            Some(r) if read => Recorded::Stamps(r),
            _ => Recorded::Unreadable,
        }
    }

    /// Writes the record of blob `d` atomically (a temporary file renamed
    /// over it). `durable` also fsyncs it and its folder; without, a crash
    /// may lose it, which only makes the blob look unrecorded.
    pub fn write_record(
        &self,
        d: &Sha256,
        r: &Record,
        how: &str,
        durable: bool,
    ) -> Result<(), StoreError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let path = self.records_dir().join(d.to_hex());
        let dir = self
            .records_folder(true)
            .map_err(|e| StoreError::walking(self.records_dir(), e))?;
        let tmp = format!(
            ".{}.tmp-{}-{}",
            d.to_hex(),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let written = dir
            .open_file(&tmp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, 0o644)
            .and_then(|mut f| {
                f.write_all(&r.to_json_bytes(d, how))?;
                if durable {
                    f.sync_all()?;
                }
                Ok(())
            })
            .and_then(|()| dir.rename(&tmp, &dir, &d.to_hex(), false))
            .and_then(|()| if durable { dir.sync() } else { Ok(()) });
        if let Err(e) = written {
            let _ = dir.unlink(&tmp);
            return Err(StoreError::walking(path, e));
        }
        Ok(())
    }

    /// Records the stamps `meta` of the blob file of `d`, just verified;
    /// failures are logged, not returned: without a record the blob is
    /// hashed again, or trusted once, at its next open.
    pub fn record_verified(&self, d: &Sha256, meta: io::Result<Metadata>, how: &str) {
        let recorded = meta
            .map_err(|e| StoreError::io(self.blob_path(d), e))
            .and_then(|m| self.write_record(d, &Record::of(&m), how, true));
        if let Err(e) = recorded {
            log::warn!(
                "blob {}: cannot record that it was verified: {e}",
                d.short()
            );
        }
    }

    /// Removes the records of blobs that are no longer in the store (a
    /// blob deleted by hand or by another tool); returns how many.
    pub fn remove_orphan_records(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(self.records_dir()) else {
            return 0;
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(d) = name.to_str().and_then(|n| Sha256::from_hex(n).ok()) else {
                continue;
            };
            if self.stat_blob(&d).is_none() && self.stat_partial(&d).is_none() {
                self.remove_record(&d);
                removed += 1;
            }
        }
        removed
    }

    /// Removes the record of `d`, if any (its blob went).
    pub fn remove_record(&self, d: &Sha256) {
        if let Ok(dir) = self.records_folder(false) {
            let _ = dir.unlink(&d.to_hex());
        }
    }

    /// Hashes the present blob of `d` again. On a match records its stamps
    /// (`how` says who asked; a record that cannot be written is logged)
    /// and returns the hashed file; on a mismatch, or
    /// when its stamps keep moving while it is hashed, moves it to
    /// quarantine (named after `model`). `progress` is told the bytes hashed so far; `cancel`
    /// abandons the hash (an `Interrupted` error). The caller holds the
    /// producer lock of a model that pins `d`.
    pub fn recheck_blob(
        &self,
        d: &Sha256,
        model: &str,
        how: &str,
        cancel: &AtomicBool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Recheck, StoreError> {
        let path = self.blob_path(d);
        let mut actual = *d;
        for _ in 0..RECHECK_ATTEMPTS {
            let file = match self.open_blob(d) {
                Ok(f) => f,
                Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    return Ok(Recheck::Absent);
                }
                Err(e) => return Err(e),
            };
            let stat = |f: &File| f.metadata().map_err(|e| StoreError::io(&path, e));
            let before = stat(&file)?;
            if !before.is_file() {
                return Err(StoreError::Unsafe { path });
            }
            actual = hash_file(&file, cancel, progress).map_err(|e| StoreError::io(&path, e))?;
            let after = Record::of(&stat(&file)?);
            if after != Record::of(&before) {
                log::warn!(
                    "{}: changed while it was being verified; hashing it again",
                    path.display()
                );
                continue;
            }
            if actual.ct_eq(d) {
                // The bytes are good whether or not the record can be kept.
                if let Err(e) = self.write_record(d, &after, how, true) {
                    log::warn!(
                        "blob {}: cannot record that it was verified: {e}",
                        d.short()
                    );
                }
                return Ok(Recheck::Matched(file));
            }
            break;
        }
        let quarantined = self.quarantine_blob(d, &format!("changed-on-disk-{model}"))?;
        Ok(Recheck::Mismatch {
            actual,
            quarantined,
        })
    }
}

/// SHA-256 of everything in `file` from its start, telling `progress` the
/// bytes hashed so far after each 1 MiB.
fn hash_file(
    file: &File,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> io::Result<Sha256> {
    use std::os::unix::fs::FileExt;
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(io::Error::from(io::ErrorKind::Interrupted));
        }
        let n = match file.read_at(&mut buf, offset) {
            Ok(0) => return Ok(h.finish()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        offset += n as u64;
        progress(offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn store_with_blob(dir: &std::path::Path, bytes: &[u8]) -> (Store, Sha256) {
        let s = Store::create(dir).unwrap();
        let d = Sha256::of(bytes);
        let p = s.blob_path(&d);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, bytes).unwrap();
        (s, d)
    }

    fn never() -> AtomicBool {
        AtomicBool::new(false)
    }

    #[test]
    fn a_record_round_trips_and_refuses_another_blob_or_version() {
        let d = Sha256::of(b"x");
        let r = Record {
            dev: 2049,
            ino: u64::MAX,
            size: 7,
            mtime_ns: -5,
            ctime_ns: 1_700_000_000_123_456_789,
        };
        let bytes = r.to_json_bytes(&d, "fetch");
        assert_eq!(Record::parse(&bytes, &d), Some(r));
        assert_eq!(Record::parse(&bytes, &Sha256::of(b"y")), None);
        let text = String::from_utf8(bytes).unwrap();
        let v2 = text.replace("\"schema_version\":1", "\"schema_version\":2");
        assert_eq!(Record::parse(v2.as_bytes(), &d), None);
        let typo = text.replace("\"ino\"", "\"inode\"");
        assert_eq!(Record::parse(typo.as_bytes(), &d), None);
        assert_eq!(Record::parse(b"{", &d), None);
    }

    #[test]
    fn the_stamps_of_a_file_change_with_a_write_a_touch_and_a_rename_over_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"abc").unwrap();
        let first = Record::of(&fs::metadata(&p).unwrap());
        assert_eq!(Record::of(&fs::metadata(&p).unwrap()), first);
        // A touch to a time in the past: mtime is set, ctime moves to now.
        let f = File::options().write(true).open(&p).unwrap();
        f.set_modified(std::time::UNIX_EPOCH).unwrap();
        let touched = Record::of(&fs::metadata(&p).unwrap());
        assert_ne!(touched, first);
        assert_eq!((touched.ino, touched.size), (first.ino, first.size));
        let other = dir.path().join("g");
        fs::write(&other, b"abc").unwrap();
        fs::rename(&other, &p).unwrap();
        assert_ne!(Record::of(&fs::metadata(&p).unwrap()).ino, first.ino);
    }

    #[test]
    fn a_written_record_is_read_back_and_a_missing_one_is_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (s, d) = store_with_blob(dir.path(), b"blob");
        assert_eq!(s.read_record(&d), Recorded::Nothing);
        let r = Record::of(&s.stat_blob(&d).unwrap());
        s.write_record(&d, &r, "test", false).unwrap();
        assert_eq!(s.read_record(&d), Recorded::Stamps(r));
        let leftovers: Vec<_> = fs::read_dir(s.records_dir()).unwrap().flatten().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file stays behind");
        s.remove_record(&d);
        assert_eq!(s.read_record(&d), Recorded::Nothing);
    }

    #[test]
    fn a_fifo_a_symlink_or_garbage_at_a_record_path_proves_nothing_and_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let (s, d) = store_with_blob(dir.path(), b"blob");
        fs::create_dir_all(s.records_dir()).unwrap();
        let path = s.records_dir().join(d.to_hex());
        let outside = dir.path().join("outside");
        let r = Record::of(&s.stat_blob(&d).unwrap());
        fs::write(&outside, r.to_json_bytes(&d, "planted")).unwrap();
        std::os::unix::fs::symlink(&outside, &path).unwrap();
        assert_eq!(s.read_record(&d), Recorded::Unreadable);
        fs::remove_file(&path).unwrap();
        crate::sys::mkfifo(&path, 0o644).unwrap();
        assert_eq!(s.read_record(&d), Recorded::Unreadable);
        fs::remove_file(&path).unwrap();
        fs::write(&path, vec![b' '; 10_000]).unwrap();
        assert_eq!(s.read_record(&d), Recorded::Unreadable);
        // Writing replaces the garbage, never the symlink's target.
        s.write_record(&d, &r, "test", true).unwrap();
        assert_eq!(s.read_record(&d), Recorded::Stamps(r));
    }

    #[test]
    fn a_recheck_of_intact_bytes_records_their_stamps_and_of_changed_ones_quarantines_them() {
        let dir = tempfile::tempdir().unwrap();
        let (s, d) = store_with_blob(dir.path(), b"pinned bytes");
        let mut hashed = 0;
        let Recheck::Matched(f) = s
            .recheck_blob(&d, "m", "test", &never(), &mut |n| hashed = n)
            .unwrap()
        else {
            panic!("intact bytes match");
        };
        assert_eq!(hashed, 12);
        assert_eq!(
            s.read_record(&d),
            Recorded::Stamps(Record::of(&f.metadata().unwrap()))
        );

        fs::write(s.blob_path(&d), b"PINNED bytes").unwrap();
        match s
            .recheck_blob(&d, "m", "test", &never(), &mut |_| {})
            .unwrap()
        {
            Recheck::Mismatch {
                actual,
                quarantined,
            } => {
                assert_eq!(actual, Sha256::of(b"PINNED bytes"));
                assert_eq!(fs::read(quarantined).unwrap(), b"PINNED bytes");
            }
            other => panic!("{other:?}"),
        }
        assert!(s.stat_blob(&d).is_none());
        assert_eq!(
            s.read_record(&d),
            Recorded::Nothing,
            "the record went with it"
        );
        assert!(matches!(
            s.recheck_blob(&d, "m", "test", &never(), &mut |_| {})
                .unwrap(),
            Recheck::Absent
        ));
    }
}
