//! Telling cheaply whether part of the store changed since it was last
//! looked at, for the mount's manifest watcher (`fs::namespace`).
//!
//! A blob file appears, goes or is replaced only by changing an entry of a
//! folder, and every such change moves that folder's mtime and ctime:
//!
//! | operation | entries that change |
//! |---|---|
//! | [`Store::publish_blob`] (fetch, pull) | `<hex>/` created and `.partial-<hex>/` removed in `<aa>/`; `data` renamed into `<hex>/` |
//! | [`Store::adopt_blob`] (import) | `<hex>/` created in `<aa>/` unless it was there; `data` renamed into `<hex>/` |
//! | [`Store::quarantine_blob`] (verify) | `data` renamed out of `<hex>/`; `<hex>/` removed from `<aa>/` |
//! | [`Store::remove_blob`] (gc) | `data` unlinked from `<hex>/`; `<hex>/` removed from `<aa>/` |
//! | anyone renaming a file over `data` | `data` in `<hex>/` |
//!
//! (`<aa>/` is `blobs/sha256/<aa>/`, `<hex>/` is `<aa>/<hex>/`.) So
//! [`BlobWatch`] keeps, per digest, the [`Stamp`] of `<hex>/` and the blob
//! file it found under it, per fan-out the stamp of `<aa>/`, and looks again
//! only below a folder whose stamp moved: a pending digest costs nothing
//! while its `<aa>/` keeps its stamp, and a present one costs one `fstatat`
//! of its `<hex>/`. Each folder is stamped before what is below it is read, so a
//! change made while we look moves a stamp we compare next time.
//!
//! A stamp proves nothing while it is young; see [`SETTLE`].
//!
//! What stamps cannot show, and callers cover by looking at everything now
//! and then (`full`): bytes written into an existing `data` in place (the
//! store never does that; its size would be stale), and folders on a
//! filesystem whose clock is more than [`SETTLE`] behind ours (a network
//! filesystem served from another host).

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Store;
use super::nofollow::Dir;
use crate::digest::Sha256;

/// How old a stamp must be to prove, when it has not moved, that nothing
/// changed. The kernel stamps a change with a coarse clock (one tick is a
/// few milliseconds; some filesystems keep whole seconds), so a change in
/// the same tick as our look leaves the stamp as we saw it ("racily
/// clean"). A stamp whose times were within this of our clock when we took
/// it is looked behind again next time, whatever it says then.
///
/// Unit tests run on a local filesystem, whose clock ticks in milliseconds;
/// a shorter margin there keeps tests that wait for stamps to settle quick.
pub const SETTLE: Duration = if cfg!(test) {
    Duration::from_millis(200)
} else {
    Duration::from_secs(2)
};

/// What a file or folder looked like: identity, size and change times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    /// Its times were older than [`SETTLE`] when it was taken: any later
    /// change makes them differ.
    settled: bool,
}

impl Stamp {
    /// The stamp of `m`, looked at no earlier than `now`.
    pub fn of(m: &Metadata, now: SystemTime) -> Self {
        Self::new(
            (m.dev(), m.ino(), m.size()),
            (m.mtime(), m.mtime_nsec()),
            (m.ctime(), m.ctime_nsec()),
            now,
        )
    }

    // The field types of `libc::stat` differ between targets.
    #[allow(clippy::unnecessary_cast)]
    fn of_stat(st: &libc::stat, now: SystemTime) -> Self {
        Self::new(
            (st.st_dev as u64, st.st_ino as u64, st.st_size as u64),
            (st.st_mtime as i64, st.st_mtime_nsec as i64),
            (st.st_ctime as i64, st.st_ctime_nsec as i64),
            now,
        )
    }

    fn new(
        (dev, ino, size): (u64, u64, u64),
        mtime: (i64, i64),
        ctime: (i64, i64),
        now: SystemTime,
    ) -> Self {
        let ns = |(s, n): (i64, i64)| s.saturating_mul(1_000_000_000).saturating_add(n);
        let now_ns = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let (mtime_ns, ctime_ns) = (ns(mtime), ns(ctime));
        // ctime cannot be set from user space, mtime can (touch -d): a
        // change moves both, and either one being young is reason enough.
        // A time in the future is never settled.
        let newest = mtime_ns.max(ctime_ns);
        let settled = newest.saturating_add(SETTLE.as_nanos() as i64) < now_ns;
        Self {
            dev,
            ino,
            size,
            mtime_ns,
            ctime_ns,
            settled,
        }
    }

    /// Same file, size and times as `other` (settled or not).
    pub fn same(&self, other: &Stamp) -> bool {
        (self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns)
            == (
                other.dev,
                other.ino,
                other.size,
                other.mtime_ns,
                other.ctime_ns,
            )
    }

    /// Whether this (earlier) stamp proves that nothing changed between it
    /// and `later`: it was settled when taken, and `later` is the same.
    pub fn unchanged_at(&self, later: &Stamp) -> bool {
        self.settled && self.same(later)
    }
}

/// The blob file of a digest: which file, and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobFile {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
}

impl BlobFile {
    fn of(m: &Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
        }
    }
}

/// What was found for one digest: the stamp of `<hex>/` (`None`: absent,
/// or not a folder) and the blob file below it.
type Seen = (Option<Stamp>, Option<BlobFile>);

/// A [`Seen`] as kept: `None` for an absent `<hex>/` (most blobs of a big
/// store of pending models), else boxed, so an absent blob costs its key
/// and a pointer, not 88 bytes.
type Kept = Option<Box<(Stamp, Option<BlobFile>)>>;

fn keep(s: Seen) -> Kept {
    s.0.map(|stamp| Box::new((stamp, s.1)))
}

fn unkeep(k: &Kept) -> Seen {
    match k {
        Some(b) => (Some(b.0), b.1),
        None => (None, None),
    }
}

/// The blob files of a set of digests, kept up to date by looking only
/// below folders that changed; see the module doc.
#[derive(Default)]
pub struct BlobWatch {
    /// Fan-out byte → stamp of `blobs/sha256/<aa>/` at the last look.
    fanouts: HashMap<u8, Option<Stamp>>,
    blobs: HashMap<Sha256, Kept>,
    /// The digests watched, by fan-out byte; rebuilt only when the set
    /// changes, so a look at a store where nothing moved touches no
    /// per-blob state at all (at 100,000 manifests, rebuilding it twice a
    /// second cost a tenth of a core).
    index: HashMap<u8, Vec<Sha256>>,
    /// Fan-outs none of whose watched digests had a `<hex>/` folder at the
    /// last look: while their stamp holds, nothing below them is looked at.
    all_absent: std::collections::HashSet<u8>,
    /// How many blob files the last look stat'ed (logs and tests).
    stated: usize,
}

impl BlobWatch {
    /// Looks at the blobs of `digests`, only below folders whose stamps
    /// moved or were not settled, or at all of them with `full`, and
    /// forgets the others. `digests` is read only when `digests_changed`
    /// (or on the first look): otherwise the set of the last look is
    /// watched. Returns the digests whose blob file differs from the last
    /// look (appeared, went, replaced, resized), and those new to the watch.
    pub fn look(
        &mut self,
        store: &Store,
        digests: impl IntoIterator<Item = Sha256>,
        digests_changed: bool,
        full: bool,
    ) -> Vec<Sha256> {
        // Taken before any stat: a change after a stat gets a time no
        // earlier than `now` minus a clock tick.
        let now = SystemTime::now();
        if digests_changed || self.index.is_empty() {
            self.reindex(digests);
        }
        let top = Dir::open(&store.blobs_dir()).ok();
        let mut changed = Vec::new();
        self.stated = 0;
        let index = std::mem::take(&mut self.index);
        for (aa, ds) in &index {
            let name = format!("{aa:02x}");
            let stamp = top
                .as_ref()
                .and_then(|t| t.lstat(&name).ok())
                .filter(is_dir)
                .map(|st| Stamp::of_stat(&st, now));
            // No entry of `<aa>/` was created, removed or renamed since
            // the last look.
            let fanout_same = !full
                && matches!((self.fanouts.get(aa), &stamp), (Some(Some(a)), Some(b)) if a.unchanged_at(b));
            // Still missing (or still unchanged) and every digest below it
            // absent at the last look: nothing can have appeared.
            let still_missing =
                !full && stamp.is_none() && matches!(self.fanouts.get(aa), Some(None));
            if (fanout_same || still_missing) && self.all_absent.contains(aa) {
                continue;
            }
            let mut fan: Option<Option<Dir>> = None;
            let mut fan_unreadable = false;
            let mut any_folder = false;
            for d in ds {
                let prev = self.blobs.get(d).map(unkeep);
                let seen = match prev {
                    // Absent, and nothing to say it appeared.
                    Some((None, None)) if stamp.is_none() || fanout_same => continue,
                    _ if stamp.is_none() => (None, None),
                    _ => match fan
                        .get_or_insert_with(|| top.as_ref().and_then(|t| t.sub(&name).ok()))
                    {
                        Some(fan) => look_below(fan, d, prev, full, now, &mut self.stated),
                        None => {
                            fan_unreadable = true;
                            (None, None)
                        }
                    },
                };
                any_folder |= seen.0.is_some();
                if prev.map(|p| p.1) != Some(seen.1) {
                    changed.push(*d);
                }
                if prev != Some(seen) {
                    self.blobs.insert(*d, keep(seen));
                }
            }
            // Every digest of `<aa>/` is absent now: those skipped above
            // were, and no other had a folder.
            if !any_folder && !fan_unreadable {
                self.all_absent.insert(*aa);
            } else {
                self.all_absent.remove(aa);
            }
            // A fan-out that vanished between its stat and its open is
            // looked at again next time.
            self.fanouts
                .insert(*aa, if fan_unreadable { None } else { stamp });
        }
        self.index = index;
        changed
    }

    /// Watches exactly `digests` from now on: the fan-out index is built
    /// again and what is known of other digests is forgotten.
    fn reindex(&mut self, digests: impl IntoIterator<Item = Sha256>) {
        let mut index: HashMap<u8, Vec<Sha256>> = HashMap::new();
        let mut keep = std::collections::HashSet::new();
        for d in digests {
            // A digest named by more than one manifest is watched once.
            if keep.insert(d) {
                index.entry(d.as_bytes()[0]).or_default().push(d);
            }
        }
        self.blobs.retain(|d, _| keep.contains(d));
        self.fanouts.retain(|aa, _| index.contains_key(aa));
        // A fan-out's digests changed: look below it again.
        self.all_absent.clear();
        self.index = index;
    }

    /// The blob file of `d` at the last look; `None` if absent (what
    /// [`Store::stat_blob`] would have said) or never looked at.
    pub fn file(&self, d: &Sha256) -> Option<BlobFile> {
        self.blobs.get(d).and_then(|k| unkeep(k).1)
    }

    /// How many blob files the last look stat'ed.
    pub fn stated(&self) -> usize {
        self.stated
    }
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Looks at `<hex>/` in the open fan-out `fan`, and at its `data` unless
/// `<hex>/` kept a settled stamp since `prev`. Symlinks are never followed:
/// one at `<hex>` or `data` makes the blob absent, as for
/// [`Store::stat_blob`].
fn look_below(
    fan: &Dir,
    d: &Sha256,
    prev: Option<Seen>,
    full: bool,
    now: SystemTime,
    stated: &mut usize,
) -> Seen {
    let hex = d.to_hex();
    let Some(stamp) = fan
        .lstat(&hex)
        .ok()
        .filter(is_dir)
        .map(|st| Stamp::of_stat(&st, now))
    else {
        return (None, None);
    };
    if !full
        && let Some((Some(before), file)) = prev
        && before.unchanged_at(&stamp)
    {
        return (Some(stamp), file);
    }
    *stated += 1;
    let file = fan
        .sub(&hex)
        .and_then(|h| h.stat("data"))
        .ok()
        .filter(Metadata::is_file)
        .map(|m| BlobFile::of(&m));
    (Some(stamp), file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::symlink;

    const SEC: i64 = 1_000_000_000;

    fn at(secs: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    }

    fn stamp(mtime: i64, ctime: i64, now: SystemTime) -> Stamp {
        Stamp::new((1, 2, 3), (mtime, 0), (ctime, 0), now)
    }

    #[test]
    fn a_stamp_taken_within_settle_of_its_last_change_proves_nothing() {
        let young = stamp(1000, 1000, at(1000) + SETTLE / 2);
        assert!(!young.settled);
        assert!(young.same(&stamp(1000, 1000, at(2000))));
        assert!(!young.unchanged_at(&stamp(1000, 1000, at(2000))));

        let old = stamp(1000, 1000, at(1000) + SETTLE * 2);
        assert!(old.unchanged_at(&stamp(1000, 1000, at(2000))));
        assert!(!old.unchanged_at(&stamp(1000, 1001, at(2000))));
        // ctime young, mtime set back (touch -d): still young.
        assert!(!stamp(10, 1000, at(1000)).settled);
        // A clock behind the filesystem's: never settled.
        assert!(!stamp(5000, 5000, at(1000)).settled);
        assert_eq!(old.mtime_ns, 1000 * SEC);
    }

    /// Writes `<dir>/data`, creating `dir`.
    fn write_blob_at(dir: &std::path::Path, data: &[u8]) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("data"), data).unwrap();
    }

    #[test]
    fn a_symlink_at_a_fan_out_or_a_blob_folder_makes_the_blob_absent_as_for_stat_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path().join("store")).unwrap();
        let outside = dir.path().join("outside");
        let d = Sha256::of(b"x");
        let hex = d.to_hex();
        let fan = store
            .blob_path(&d)
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();

        write_blob_at(&outside.join(&hex), b"x");
        std::fs::create_dir_all(&fan).unwrap();
        symlink(outside.join(&hex), fan.join(&hex)).unwrap();
        let mut w = BlobWatch::default();
        w.look(&store, [d], true, true);
        assert_eq!((w.file(&d), store.stat_blob(&d).is_some()), (None, false));

        std::fs::remove_file(fan.join(&hex)).unwrap();
        std::fs::remove_dir(&fan).unwrap();
        symlink(&outside, &fan).unwrap();
        w.look(&store, [d], true, true);
        assert_eq!((w.file(&d), store.stat_blob(&d).is_some()), (None, false));

        std::fs::remove_file(&fan).unwrap();
        write_blob_at(&fan.join(&hex), b"x");
        assert_eq!(w.look(&store, [d], true, false), [d]);
        assert_eq!(w.file(&d).map(|f| f.size), Some(1));
    }

    #[test]
    fn bytes_written_into_a_blob_in_place_show_at_the_next_full_look() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let d = Sha256::of(b"x");
        write_blob_at(store.blob_path(&d).parent().unwrap(), b"x");
        let mut w = BlobWatch::default();
        assert_eq!(w.look(&store, [d], true, false), [d]);
        std::thread::sleep(SETTLE + Duration::from_millis(100));
        w.look(&store, [d], true, false);
        assert!(w.look(&store, [d], true, false).is_empty());
        assert_eq!(w.stated(), 0, "settled and unchanged: not stat'ed");

        // The store never does this; no folder changes.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(store.blob_path(&d))
            .unwrap();
        f.write_all(b"more").unwrap();
        assert_eq!(w.look(&store, [d], true, true), [d]);
        assert_eq!(w.file(&d).map(|f| f.size), Some(5));
    }
}
