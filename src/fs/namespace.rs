//! The directory the mount shows: one entry per manifest, kept in memory.
//!
//! [`Namespace::refresh`] brings a snapshot up to date with the store;
//! lookups, getattr and readdir read the last snapshot and never touch the
//! disk. An entry's inode number is bound to (name, format, digest): a
//! manifest repointed at another blob gets a new inode, so the kernel can
//! never serve cached pages of the old bytes for the new ones, while a file
//! opened before keeps its inode and its bytes. Inodes are never reused
//! within a mount.
//!
//! An inode is also retired when the blob file it served goes away or is
//! replaced (`modelfs verify` quarantined it, then a fetch put the pinned
//! bytes back): the kernel may hold that file's pages in its cache under the
//! inode, and they must never be served for the new file. Opening a retired
//! inode fails with `ESTALE`, on which the kernel looks the name up again and
//! gets the new inode. (`open` checks this itself, so it never depends on how
//! recent the last refresh is.)
//!
//! The tables forget an inode once nothing can ask for it any more: the
//! directory no longer shows it and the kernel has forgotten it (every
//! reference a `lookup` or `readdirplus` reply gave it came back in a
//! `forget`). A mount whose manifests are repointed again and again so
//! keeps only what is shown or in use, not every (name, digest) it ever
//! saw; inode numbers are still never reused.
//!
//! Manifest files that are ignored (a name that is not a valid model name,
//! a symlink, a special file) and manifests that do not parse are logged
//! once each, when they appear or change, not on every refresh.
//!
//! # Keeping refreshes cheap
//!
//! The mount refreshes every 500 ms, next to downloads that need the CPU,
//! and every `getattr` and `open` takes the tables a refresh changes. So a
//! refresh first looks at the disk with no lock but its own, then takes the
//! tables briefly, with no system call under them, to apply what it found
//! (not at all if nothing changed). And it looks only where something can
//! have changed:
//!
//! - `manifests/` is listed again only when its own stamp moved, as every
//!   create, rename and delete in it does; a listed manifest is parsed again
//!   only when its (inode, size, mtime, ctime) moved or had not settled.
//! - a blob is stat'ed again only when its folders moved; see
//!   [`crate::store::watch`].
//! - a stamp taken within [`SETTLE`] of its last change is not trusted to
//!   move on the next one (a change in the same clock tick keeps it), so
//!   what changed recently is looked at again on every pass until it
//!   settles.
//! - every [`LOOK_AT_EVERYTHING_EVERY`] a refresh looks at everything, for
//!   what stamps do not show: a manifest rewritten in place (the convention
//!   writes a temporary file and renames it), bytes written into a blob in
//!   place, a network filesystem whose clock is behind ours. On a store so
//!   large that such a pass takes longer than [`FULL_PASS_SHARE`] of that
//!   period (100,000 manifests: about 0.25 s), it runs that much less
//!   often, so an idle mount never spends more than about 1% of a core
//!   on it.
//!
//! So a manifest written the convention's way or removed, and a blob
//! published, quarantined, removed or renamed over, show up at the next
//! refresh; a manifest rewritten in place shows up within
//! [`LOOK_AT_EVERYTHING_EVERY`] (longer on a very large store, as above).
//! A blob's bytes written in place are caught when it is next opened
//! anyway, by its verification record.
//!
//! This file is the inode table (names, inodes, what was served, what the
//! kernel still knows); `refresh` is the pass that brings it up to date and
//! `manifests` the watch on `manifests/` it uses.
//!
//! [`SETTLE`]: crate::store::watch::SETTLE

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Mutex, RwLock};

use crate::digest::Sha256;
use crate::store::Manifest;
use crate::store::watch::BlobWatch;

mod manifests;
mod refresh;

use manifests::ManifestWatch;

/// The root directory's inode.
pub const ROOT_INO: u64 = 1;

/// How often a refresh ignores stamps and looks at every manifest and blob.
pub const LOOK_AT_EVERYTHING_EVERY: Duration = Duration::from_secs(10);

/// The most of the time between two full passes that one may take.
pub const FULL_PASS_SHARE: u32 = 100;

/// One file in the mount.
#[derive(Debug, Clone)]
pub struct Entry {
    pub ino: u64,
    pub manifest: Arc<Manifest>,
    /// `<name>.<format>`; one allocation shared by every table that names
    /// the entry (a mount may show 100,000).
    pub file_name: Arc<str>,
    pub mtime: SystemTime,
    /// The blob's size once it is present and verified.
    pub present_size: Option<u64>,
}

impl Entry {
    /// The size to report: the blob's once present, else the manifest's.
    pub fn size(&self) -> u64 {
        self.present_size.unwrap_or(self.manifest.size_bytes)
    }
}

/// What changed in a refresh (for cache invalidation and logs).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<(String, u64)>,
    /// Repointed at another blob: (file name, old inode).
    pub repointed: Vec<(String, u64)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.repointed.is_empty()
    }
}

/// The inode tables, shared with the FUSE threads.
#[derive(Default)]
struct Tables {
    /// (`<name>.<format>`, digest) → inode, until the inode is forgotten
    /// (formats have no `.`, so the file name is the name and format).
    inos: HashMap<(Arc<str>, Sha256), u64>,
    /// Every entry ever shown, current or retired (open files need them).
    by_ino: HashMap<u64, Arc<Entry>>,
    next_ino: u64,
    /// The blob file each inode has served, by (device, inode).
    served: HashMap<u64, Served>,
    /// Counts what opens told us (`note_served`, `mark_present`,
    /// `is_stale`).
    version: u64,
    /// Inodes opens told us about that a refresh has yet to apply, with
    /// the `version` they were told at; see [`Namespace::apply`].
    told: HashMap<u64, u64>,
    /// References the kernel holds to each inode (lookups not yet
    /// forgotten); an inode absent here is unknown to the kernel.
    lookups: HashMap<u64, u64>,
}

/// What an inode has served.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Served {
    /// This blob file, by (device, inode).
    File(u64, u64),
    /// A verified download handed to an open before it was published at
    /// the blob path (or whose publication failed): only another file at
    /// the path replaces it. Becomes `File` once seen there.
    Verified(u64, u64),
    /// A blob file that has since gone or been replaced: the inode is
    /// retired and its name has a new one.
    Stale,
}

/// What refreshes keep between passes; only they touch it.
#[derive(Default)]
struct Watch {
    manifests: ManifestWatch,
    blobs: BlobWatch,
    last_full: Option<Instant>,
    /// How long the last full pass took.
    full_took: Duration,
    /// Full passes so far (a daemon gives back the memory one freed).
    full_passes: u64,
    /// How long the last apply held `tables` (logs and measurements).
    held: Duration,
}

/// The current entries in name order.
pub type Listing = Arc<Vec<Arc<Entry>>>;

/// The mount's directory; see the module doc.
///
/// Lock order: `watch`, then `tables`, then `current`. `current` is only
/// written with `tables` held, so the two always agree.
pub struct Namespace {
    current: RwLock<Arc<HashMap<Arc<str>, Arc<Entry>>>>,
    /// Counts changes of `current` (bumped under its write lock, by
    /// [`Namespace::edit`]), so a sorted listing is rebuilt only after one.
    generation: AtomicU64,
    /// The last sorted listing and the generation it shows: every
    /// `opendir` wants it, and sorting 100,000 names took longer than
    /// answering the whole `ls -l`.
    listing: Mutex<Option<(u64, Listing)>>,
    tables: Mutex<Tables>,
    /// Refresh state; holding it serialises refreshes (watcher thread
    /// vs. explicit calls).
    watch: Mutex<Watch>,
}

impl Default for Namespace {
    fn default() -> Self {
        Self::new()
    }
}

impl Namespace {
    pub fn new() -> Self {
        Self {
            current: RwLock::new(Arc::new(HashMap::new())),
            generation: AtomicU64::new(0),
            listing: Mutex::new(None),
            tables: Mutex::new(Tables {
                next_ino: ROOT_INO + 1,
                ..Tables::default()
            }),
            watch: Mutex::new(Watch::default()),
        }
    }

    /// The entry named `file_name` now.
    pub fn lookup(&self, file_name: &str) -> Option<Arc<Entry>> {
        self.current.read().get(file_name).cloned()
    }

    /// The entry with this inode, current or retired.
    pub fn by_ino(&self, ino: u64) -> Option<Arc<Entry>> {
        self.tables.lock().by_ino.get(&ino).cloned()
    }

    /// The manifests of the current entries that pin digest `d`.
    pub fn manifests_of(&self, d: &Sha256) -> Vec<Arc<Manifest>> {
        let snap = self.current.read().clone();
        snap.values()
            .filter(|e| e.manifest.blob == *d)
            .map(|e| e.manifest.clone())
            .collect()
    }

    /// Every current entry, sorted by file name (built once per change).
    pub fn entries(&self) -> Listing {
        let (snap, generation) = {
            let cur = self.current.read();
            (cur.clone(), self.generation.load(Ordering::Acquire))
        };
        if let Some((g, list)) = &*self.listing.lock()
            && *g == generation
        {
            return list.clone();
        }
        let mut v: Vec<_> = snap.values().cloned().collect();
        v.sort_by(|a, b| a.file_name.cmp(&b.file_name));
        let list = Arc::new(v);
        let mut cached = self.listing.lock();
        if cached.as_ref().is_none_or(|(g, _)| *g < generation) {
            *cached = Some((generation, list.clone()));
        }
        list
    }

    /// The shown entries, to change: the caller holds `current`'s write
    /// lock; cached listings are from then on out of date.
    fn edit<'a>(
        &self,
        cur: &'a mut Arc<HashMap<Arc<str>, Arc<Entry>>>,
    ) -> &'a mut HashMap<Arc<str>, Arc<Entry>> {
        self.generation.fetch_add(1, Ordering::Release);
        Arc::make_mut(cur)
    }

    pub fn len(&self) -> usize {
        self.current.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records that `ino` serves the blob file `(dev, inode)`, the first
    /// time it serves one.
    pub fn note_served(&self, ino: u64, file: (u64, u64)) {
        let mut t = self.tables.lock();
        if let std::collections::hash_map::Entry::Vacant(v) = t.served.entry(ino) {
            v.insert(Served::File(file.0, file.1));
            told(&mut t, ino);
        }
    }

    /// Records that `ino` serves a verified download that is not (yet) at
    /// the blob path, the first time it serves one.
    pub fn note_verified(&self, ino: u64, file: (u64, u64)) {
        let mut t = self.tables.lock();
        if let std::collections::hash_map::Entry::Vacant(v) = t.served.entry(ino) {
            v.insert(Served::Verified(file.0, file.1));
            told(&mut t, ino);
        }
    }

    /// Records that `file` is now at the blob path of `ino`: a verified
    /// download `ino` served is from now on retired like any blob file
    /// when it goes or is replaced.
    pub fn confirm_published(&self, ino: u64, file: (u64, u64)) {
        let mut t = self.tables.lock();
        if t.served.get(&ino) == Some(&Served::Verified(file.0, file.1)) {
            t.served.insert(ino, Served::File(file.0, file.1));
            // The watcher may never see this file come and go (both
            // between two looks): have the next refresh compare anyway.
            told(&mut t, ino);
        }
    }

    /// Whether `e`'s inode must not be opened because the blob file it
    /// served is gone or replaced (`now` is the file at the blob path
    /// now). Retires the inode if that is news: its name gets a new inode.
    pub fn is_stale(&self, e: &Entry, now: Option<(u64, u64)>) -> bool {
        let mut t = self.tables.lock();
        match t.served.get(&e.ino).copied() {
            Some(Served::Stale) => true,
            Some(_) if served_replaced(&mut t, e.ino, now) => {
                let new = retire(&mut t, &e.manifest, e.ino);
                if let Some(new) = &new {
                    // The next refresh gives it the present blob's size.
                    told(&mut t, new.ino);
                    let mut cur = self.current.write();
                    if cur.get(&new.file_name).is_some_and(|x| x.ino == e.ino) {
                        self.edit(&mut cur)
                            .insert(new.file_name.clone(), new.clone());
                    }
                }
                drop(t);
                if let Some(new) = new {
                    log_retired(&new.file_name, e.ino, new.ino);
                }
                true
            }
            _ => false,
        }
    }

    /// The kernel was given `ino` in a `lookup` or `readdirplus` reply: it
    /// holds one more reference to it until a `forget`.
    pub fn remember(&self, inos: &[u64]) {
        let mut t = self.tables.lock();
        for &ino in inos.iter().filter(|&&i| i != ROOT_INO) {
            *t.lookups.entry(ino).or_default() += 1;
        }
    }

    /// The kernel dropped `n` references to `ino`. Once it holds none and
    /// the directory no longer shows the inode, the tables forget it.
    pub fn forget(&self, ino: u64, n: u64) {
        let mut t = self.tables.lock();
        let Some(count) = t.lookups.get_mut(&ino) else {
            return;
        };
        *count = count.saturating_sub(n);
        if *count == 0 {
            t.lookups.remove(&ino);
            let cur = self.current.read();
            collect(&mut t, &cur, ino);
        }
    }

    /// How many refreshes so far looked at everything (each lists every
    /// manifest: at 100,000 of them, megabytes allocated and freed).
    pub fn full_passes(&self) -> u64 {
        self.watch.lock().full_passes
    }

    /// How many inodes the tables keep, shown or not (tests, status).
    pub fn inodes_kept(&self) -> usize {
        self.tables.lock().by_ino.len()
    }

    /// Records that the blob of `ino` is present with `size` bytes.
    pub fn mark_present(&self, ino: u64, size: u64) {
        let mut t = self.tables.lock();
        let Some(old) = t.by_ino.get(&ino).cloned() else {
            return;
        };
        if old.present_size == Some(size) {
            return;
        }
        let new = Arc::new(Entry {
            present_size: Some(size),
            ..(*old).clone()
        });
        t.by_ino.insert(ino, new.clone());
        told(&mut t, ino);
        let mut cur = self.current.write();
        if cur.get(&new.file_name).is_some_and(|e| e.ino == ino) {
            self.edit(&mut cur).insert(new.file_name.clone(), new);
        }
    }
}

/// Notes that an open changed what the tables know about `ino`.
/// Compares what `ino` served with `now`, the file at its blob path:
/// `true` if that file is gone or replaced (the caller retires the inode).
/// A verified download seen at the path becomes an ordinary blob file.
fn served_replaced(t: &mut Tables, ino: u64, now: Option<(u64, u64)>) -> bool {
    match t.served.get(&ino).copied() {
        Some(Served::File(dev, i)) => now != Some((dev, i)),
        Some(Served::Verified(dev, i)) if now == Some((dev, i)) => {
            t.served.insert(ino, Served::File(dev, i));
            false
        }
        Some(Served::Verified(..)) => now.is_some(),
        Some(Served::Stale) | None => false,
    }
}

fn told(t: &mut Tables, ino: u64) {
    t.version += 1;
    let v = t.version;
    t.told.insert(ino, v);
}

/// Forgets `ino` if the kernel holds no reference to it and `shown` (the
/// directory) does not show it: nothing can ask for it again.
fn collect(t: &mut Tables, shown: &HashMap<Arc<str>, Arc<Entry>>, ino: u64) {
    if t.lookups.contains_key(&ino) {
        return;
    }
    let Some(e) = t.by_ino.get(&ino) else {
        return;
    };
    if shown.get(&e.file_name).is_some_and(|c| c.ino == ino) {
        return;
    }
    let ident = (e.file_name.clone(), e.manifest.blob);
    if t.inos.get(&ident) == Some(&ino) {
        t.inos.remove(&ident);
    }
    t.by_ino.remove(&ino);
    t.served.remove(&ino);
    t.told.remove(&ino);
}

/// Marks `old` stale and gives the manifest's (name, format, digest) a new
/// inode, if `old` is still its inode; returns the new entry.
fn retire(t: &mut Tables, m: &Arc<Manifest>, old: u64) -> Option<Arc<Entry>> {
    t.served.insert(old, Served::Stale);
    let ident: (Arc<str>, Sha256) = (m.file_name().into(), m.blob);
    if t.inos.get(&ident) != Some(&old) {
        return None;
    }
    let ino = t.next_ino;
    t.next_ino += 1;
    t.inos.insert(ident, ino);
    let prev = t.by_ino.get(&old)?;
    let entry = Arc::new(Entry {
        ino,
        present_size: None,
        ..(**prev).clone()
    });
    t.by_ino.insert(ino, entry.clone());
    Some(entry)
}

fn log_retired(file_name: &str, old: u64, new: u64) {
    log::info!("{file_name}: the blob it served is gone or replaced; new inode {new} (was {old})");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ModelName, Source, Store};
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    fn add(store: &Store, name: &str, data: &[u8]) {
        store
            .write_manifest(&manifest(name, "gguf", data, ""))
            .unwrap();
    }

    fn manifest(name: &str, format: &str, data: &[u8], url: &str) -> Manifest {
        let source = Source {
            url: Some(url.to_string()).filter(|u| !u.is_empty()),
            ..Source::default()
        };
        Manifest::new(
            ModelName::parse(name).unwrap(),
            format,
            Sha256::of(data),
            data.len() as u64,
            source,
        )
    }

    /// Repointing churn must not keep every (name, digest) ever seen: an
    /// inode the kernel never got is forgotten when it is no longer shown,
    /// one it got once it also forgot it.
    #[test]
    fn an_unshown_inode_is_forgotten_once_the_kernel_forgot_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let ns = Namespace::new();
        for i in 0..50u32 {
            add(&store, "m", &i.to_le_bytes());
            ns.refresh_pass(&store, true);
        }
        assert_eq!(ns.inodes_kept(), 1, "never looked up: only the shown one");

        let looked = ns.lookup("m.gguf").unwrap().ino;
        ns.remember(&[looked]);
        ns.remember(&[looked]);
        add(&store, "m", b"another");
        ns.refresh_pass(&store, true);
        assert_eq!(ns.inodes_kept(), 2, "the kernel still holds the old one");
        assert!(ns.by_ino(looked).is_some());
        ns.forget(looked, 1);
        assert_eq!(ns.inodes_kept(), 2);
        ns.forget(looked, 1);
        assert_eq!(ns.inodes_kept(), 1);
        assert!(ns.by_ino(looked).is_none());

        // A shown inode stays whatever the kernel forgets.
        let shown = ns.lookup("m.gguf").unwrap().ino;
        ns.remember(&[shown]);
        ns.forget(shown, 1);
        assert!(ns.by_ino(shown).is_some());
        // Back to an earlier digest: a new inode, never a reused one.
        add(&store, "m", &0u32.to_le_bytes());
        ns.refresh_pass(&store, true);
        assert!(ns.lookup("m.gguf").unwrap().ino > shown);
    }

    #[test]
    fn the_sorted_listing_is_built_once_and_again_after_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        add(&store, "b", b"2");
        add(&store, "a", b"1");
        let ns = Namespace::new();
        ns.refresh_pass(&store, true);
        let first = ns.entries();
        let names: Vec<_> = first.iter().map(|e| e.file_name.to_string()).collect();
        assert_eq!(names, ["a.gguf", "b.gguf"]);
        assert!(
            Arc::ptr_eq(&first, &ns.entries()),
            "unchanged: the same listing"
        );

        let a = ns.lookup("a.gguf").unwrap().ino;
        ns.mark_present(a, 7);
        let marked = ns.entries();
        assert_eq!(marked[0].present_size, Some(7), "a change shows at once");

        add(&store, "c", b"3");
        ns.refresh_pass(&store, true);
        assert_eq!(ns.entries().len(), 3);
        assert_eq!(first.len(), 2, "an open directory keeps its snapshot");
    }

    /// A lookup as the kernel makes it: the reply gives it a reference,
    /// which keeps the inode known until a `forget` (the tests below model
    /// files the kernel has looked up and opened).
    fn lookup(ns: &Namespace, file_name: &str) -> Option<Arc<Entry>> {
        let e = ns.lookup(file_name)?;
        ns.remember(&[e.ino]);
        Some(e)
    }

    /// Publishes `data` as its blob the way a fetch does.
    fn publish(store: &Store, data: &[u8]) -> Sha256 {
        store.publish_bytes(data)
    }

    /// What `ModelFs::open` does with a present blob: checks the inode,
    /// then notes the file it serves and its size.
    fn open(ns: &Namespace, store: &Store, file_name: &str) -> Arc<Entry> {
        let e = lookup(ns, file_name).unwrap();
        let m = store.stat_blob(&e.manifest.blob).unwrap();
        assert!(!ns.is_stale(&e, Some((m.dev(), m.ino()))));
        ns.note_served(e.ino, (m.dev(), m.ino()));
        ns.mark_present(e.ino, m.len());
        e
    }

    fn file_of(store: &Store, d: &Sha256) -> Option<(u64, u64)> {
        store.stat_blob(d).map(|m| (m.dev(), m.ino()))
    }

    /// Waits until every stamp taken now counts as settled, then refreshes
    /// once so the namespace holds settled stamps: the next refresh takes
    /// the cheap path wherever nothing changed.
    fn settle(ns: &Namespace, store: &Store) {
        std::thread::sleep(crate::store::watch::SETTLE + Duration::from_millis(100));
        ns.refresh_pass(store, false);
    }

    /// (listed `manifests/`, blob files stat'ed) in the last refresh.
    fn work_done(ns: &Namespace) -> (bool, usize) {
        let w = ns.watch.lock();
        (w.manifests.listed(), w.blobs.stated())
    }

    #[test]
    fn an_unchanged_store_is_neither_listed_nor_stated_again_once_it_settled() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        add(&store, "a", b"1");
        add(&store, "b", b"2");
        publish(&store, b"2");
        let ns = Namespace::new();
        ns.refresh(&store);
        assert_eq!(work_done(&ns), (true, 1));
        settle(&ns, &store);
        ns.refresh_pass(&store, false);
        assert_eq!(work_done(&ns), (false, 0));
        assert_eq!(lookup(&ns, "b.gguf").unwrap().present_size, Some(1));
        // The safety net looks at everything.
        ns.refresh_pass(&store, true);
        assert_eq!(work_done(&ns), (true, 1));
    }

    #[test]
    fn a_blob_published_or_removed_in_a_settled_store_shows_up_at_the_next_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        add(&store, "a", b"hello");
        let ns = Namespace::new();
        ns.refresh(&store);
        let ino = lookup(&ns, "a.gguf").unwrap().ino;
        settle(&ns, &store);

        let d = publish(&store, b"hello");
        assert!(ns.refresh_pass(&store, false).is_empty());
        let e = lookup(&ns, "a.gguf").unwrap();
        assert_eq!((e.ino, e.present_size), (ino, Some(5)));

        settle(&ns, &store);
        store.remove_blob(&d).unwrap();
        ns.refresh_pass(&store, false);
        let e = lookup(&ns, "a.gguf").unwrap();
        assert_eq!((e.ino, e.present_size), (ino, None), "never served: kept");
    }

    /// A store with the pending model `a` and what the mount does with an
    /// open answered at verification: the downloaded partial, noted as a
    /// verified download of `a`'s inode.
    fn served_at_verification(
        dir: &std::path::Path,
    ) -> (Store, Namespace, Arc<Entry>, Sha256, fs::File, (u64, u64)) {
        use std::io::Write;
        let store = Store::create(dir).unwrap();
        add(&store, "a", b"pinned");
        let ns = Namespace::new();
        ns.refresh(&store);
        let e = lookup(&ns, "a.gguf").unwrap();
        let d = Sha256::of(b"pinned");
        let mut partial = store.open_partial(&d).unwrap();
        partial.write_all(b"pinned").unwrap();
        let m = partial.metadata().unwrap();
        ns.note_verified(e.ino, (m.dev(), m.ino()));
        (store, ns, e, d, partial, (m.dev(), m.ino()))
    }

    #[test]
    fn a_verified_download_served_before_it_was_published_retires_its_inode_only_once_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ns, e, d, partial, file) = served_at_verification(dir.path());

        // Not yet at the blob path: not stale, in refreshes or opens.
        ns.refresh_pass(&store, true);
        assert_eq!(lookup(&ns, "a.gguf").unwrap().ino, e.ino);
        assert!(!ns.is_stale(&e, None));

        // Published: from now on an ordinary served blob file...
        store.publish_blob(&d, &partial).unwrap();
        ns.confirm_published(e.ino, file);
        assert!(!ns.is_stale(&e, file_of(&store, &d)));
        // ...so its quarantine retires the inode.
        store.quarantine_blob(&d, "test").unwrap();
        ns.refresh_pass(&store, true);
        assert_ne!(lookup(&ns, "a.gguf").unwrap().ino, e.ino);
        assert!(ns.is_stale(&e, None));
    }

    #[test]
    fn a_verified_download_is_retired_when_another_file_is_published_in_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ns, e, d, _partial, _) = served_at_verification(dir.path());
        // Its publication failed and the partial went; a later fetch
        // publishes another file with the same digest.
        store.remove_partial(&d).unwrap();
        publish(&store, b"pinned");

        assert!(ns.is_stale(&e, file_of(&store, &d)));
        assert_ne!(lookup(&ns, "a.gguf").unwrap().ino, e.ino);
    }

    #[test]
    fn a_manifests_folder_that_cannot_be_listed_keeps_the_models_shown_and_is_listed_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        add(&store, "a", b"1");
        let ns = Namespace::new();
        ns.refresh(&store);
        settle(&ns, &store);
        // Something `stat` accepts and `read_dir` refuses (for the mount:
        // out of file descriptors, EIO).
        let manifests = store.manifests_dir();
        let aside = dir.path().join("manifests.aside");
        fs::rename(&manifests, &aside).unwrap();
        fs::write(&manifests, b"").unwrap();
        let c = ns.refresh_pass(&store, true);
        assert!(c.is_empty(), "{c:?}");
        assert!(
            lookup(&ns, "a.gguf").is_some(),
            "still shown after a failed listing"
        );

        fs::remove_file(&manifests).unwrap();
        fs::rename(&aside, &manifests).unwrap();
        add(&store, "b", b"2");
        ns.refresh_pass(&store, false);
        assert!(lookup(&ns, "a.gguf").is_some() && lookup(&ns, "b.gguf").is_some());
    }

    /// A store whose model `a` has its blob published, opened once (so its
    /// inode served that file) and settled.
    fn served_and_settled(dir: &std::path::Path) -> (Store, Namespace, Sha256, Arc<Entry>) {
        let store = Store::create(dir).unwrap();
        add(&store, "a", b"pinned");
        let d = publish(&store, b"pinned");
        let ns = Namespace::new();
        ns.refresh(&store);
        let served = open(&ns, &store, "a.gguf");
        settle(&ns, &store);
        (store, ns, d, served)
    }

    #[test]
    fn a_served_blob_quarantined_and_fetched_again_as_a_new_file_retires_its_inode() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ns, d, served) = served_and_settled(dir.path());

        // `modelfs verify`, then a fetch, both between two refreshes: the
        // same digest, another file.
        store.quarantine_blob(&d, "test").unwrap();
        publish(&store, b"pinned");
        let c = ns.refresh_pass(&store, false);
        assert_eq!(c.repointed, [("a.gguf".to_string(), served.ino)]);
        let e = lookup(&ns, "a.gguf").unwrap();
        assert_ne!(e.ino, served.ino);
        assert_eq!(e.present_size, Some(6));
        assert!(ns.is_stale(&served, file_of(&store, &d)));
        assert!(
            ns.by_ino(served.ino).is_some(),
            "open files keep their entry"
        );
        // The new inode serves the new file.
        assert_eq!(open(&ns, &store, "a.gguf").ino, e.ino);
    }

    #[test]
    fn a_served_blob_quarantined_shows_pending_under_a_new_inode_that_its_next_fetch_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ns, d, served) = served_and_settled(dir.path());

        store.quarantine_blob(&d, "test").unwrap();
        ns.refresh_pass(&store, false);
        let pending = lookup(&ns, "a.gguf").unwrap();
        assert_ne!(pending.ino, served.ino);
        assert_eq!(pending.present_size, None);

        settle(&ns, &store);
        publish(&store, b"pinned");
        ns.refresh_pass(&store, false);
        let e = lookup(&ns, "a.gguf").unwrap();
        assert_eq!((e.ino, e.present_size), (pending.ino, Some(6)));
    }

    #[test]
    fn a_file_renamed_over_a_served_blob_inside_its_folder_retires_its_inode() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ns, d, served) = served_and_settled(dir.path());

        // Only `<aa>/<hex>/` changes; `<aa>/` keeps its stamp.
        let blob = store.blob_path(&d);
        let tmp = blob.with_file_name("swap");
        fs::write(&tmp, b"garbage-longer").unwrap();
        fs::rename(&tmp, &blob).unwrap();
        ns.refresh_pass(&store, false);
        let e = lookup(&ns, "a.gguf").unwrap();
        assert_ne!(e.ino, served.ino);
        assert_eq!(e.present_size, Some(14));
    }

    #[test]
    fn a_manifest_rewritten_within_the_same_second_at_the_same_size_is_parsed_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let ns = Namespace::new();
        let url = |e: Arc<Entry>| e.manifest.source.url.clone().unwrap();
        store
            .write_manifest(&manifest("a", "gguf", b"1", "https://h/1"))
            .unwrap();
        ns.refresh(&store);
        settle(&ns, &store);
        for u in ["https://h/2", "https://h/3", "https://h/4"] {
            // No wait: likely the same clock tick as the last look.
            store
                .write_manifest(&manifest("a", "gguf", b"1", u))
                .unwrap();
            ns.refresh_pass(&store, false);
            assert_eq!(url(lookup(&ns, "a.gguf").unwrap()), u);
        }
        // Rewritten in place (same inode, same size), right after a look.
        let path = store.manifest_path(&ModelName::parse("a").unwrap());
        let m = manifest("a", "gguf", b"1", "https://h/5");
        fs::write(&path, m.to_json_bytes()).unwrap();
        ns.refresh_pass(&store, false);
        assert_eq!(url(lookup(&ns, "a.gguf").unwrap()), "https://h/5");
        // In place in a settled folder: promised by the next full look.
        settle(&ns, &store);
        let m = manifest("a", "gguf", b"1", "https://h/6");
        fs::write(&path, m.to_json_bytes()).unwrap();
        ns.refresh_pass(&store, true);
        assert_eq!(url(lookup(&ns, "a.gguf").unwrap()), "https://h/6");
    }

    #[test]
    fn manifests_added_removed_repointed_or_reformatted_in_a_settled_store_show_up_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        add(&store, "a", b"1");
        add(&store, "b", b"2");
        let ns = Namespace::new();
        ns.refresh(&store);
        let a = lookup(&ns, "a.gguf").unwrap().ino;
        let b = lookup(&ns, "b.gguf").unwrap().ino;
        settle(&ns, &store);

        add(&store, "a", b"11");
        add(&store, "c", b"3");
        store
            .remove_manifest(&ModelName::parse("b").unwrap())
            .unwrap();
        let c = ns.refresh_pass(&store, false);
        assert_eq!(c.added, ["c.gguf"]);
        assert_eq!(c.removed, [("b.gguf".to_string(), b)]);
        assert_eq!(c.repointed, [("a.gguf".to_string(), a)]);
        assert_eq!(lookup(&ns, "a.gguf").unwrap().size(), 2);

        settle(&ns, &store);
        store
            .write_manifest(&manifest("c", "safetensors", b"3", ""))
            .unwrap();
        fs::write(store.manifests_dir().join("a.json"), b"{broken").unwrap();
        let c = ns.refresh_pass(&store, false);
        assert_eq!(c.added, ["c.safetensors"]);
        assert_eq!(c.removed.len(), 2, "{c:?}");
        let names: Vec<_> = ns
            .entries()
            .iter()
            .map(|e| e.file_name.to_string())
            .collect();
        assert_eq!(names, ["c.safetensors"]);
    }

    #[test]
    fn a_change_right_after_a_look_is_never_missed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        add(&store, "a", b"x");
        let ns = Namespace::new();
        ns.refresh(&store);
        // Each change follows the last look at once, often in the same
        // tick of the filesystem's clock: the stamps look unchanged.
        for round in 0..20 {
            let d = publish(&store, b"x");
            ns.refresh_pass(&store, false);
            assert_eq!(
                lookup(&ns, "a.gguf").unwrap().present_size,
                Some(1),
                "{round}"
            );
            store.remove_blob(&d).unwrap();
            ns.refresh_pass(&store, false);
            assert_eq!(lookup(&ns, "a.gguf").unwrap().present_size, None, "{round}");
        }
    }

    #[test]
    fn an_open_that_serves_a_blob_published_after_the_look_began_keeps_its_inode() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        add(&store, "a", b"new");
        let ns = Namespace::new();
        ns.refresh(&store);
        let before = lookup(&ns, "a.gguf").unwrap();

        // A refresh looks (no blob yet); meanwhile a fetch publishes the
        // blob and an open serves it; then the refresh applies.
        let mut w = ns.watch.lock();
        let (since, delta) = ns.look(&mut w, &store, false);
        let d = publish(&store, b"new");
        open(&ns, &store, "a.gguf");
        ns.apply(&mut w, since, delta);
        drop(w);

        let e = lookup(&ns, "a.gguf").unwrap();
        assert_eq!((e.ino, e.present_size), (before.ino, Some(3)));
        ns.refresh_pass(&store, false);
        let e = lookup(&ns, "a.gguf").unwrap();
        assert_eq!((e.ino, e.present_size), (before.ino, Some(3)));
        assert!(!ns.is_stale(&e, file_of(&store, &d)));
    }

    #[test]
    fn added_removed_and_repointed_manifests_show_up_in_a_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let ns = Namespace::new();
        add(&store, "a", b"1");
        let c = ns.refresh(&store);
        assert_eq!(c.added, ["a.gguf"]);
        let first = lookup(&ns, "a.gguf").unwrap();
        assert_eq!(first.size(), 1);
        assert!(ns.refresh(&store).is_empty());

        add(&store, "a", b"22");
        let c = ns.refresh(&store);
        assert_eq!(c.repointed, [("a.gguf".to_string(), first.ino)]);
        let second = lookup(&ns, "a.gguf").unwrap();
        assert_ne!(second.ino, first.ino);
        assert_eq!(second.size(), 2);
        // The old inode still answers, for files opened before.
        assert_eq!(ns.by_ino(first.ino).unwrap().size(), 1);

        store
            .remove_manifest(&ModelName::parse("a").unwrap())
            .unwrap();
        assert_eq!(
            ns.refresh(&store).removed,
            [("a.gguf".to_string(), second.ino)]
        );
        assert!(lookup(&ns, "a.gguf").is_none());
    }

    #[test]
    fn pointing_back_at_an_earlier_blob_reuses_its_inode() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let ns = Namespace::new();
        add(&store, "a", b"1");
        ns.refresh(&store);
        let ino = lookup(&ns, "a.gguf").unwrap().ino;
        add(&store, "a", b"2");
        ns.refresh(&store);
        add(&store, "a", b"1");
        ns.refresh(&store);
        assert_eq!(lookup(&ns, "a.gguf").unwrap().ino, ino);
    }

    #[test]
    fn a_present_blob_gives_its_own_size_and_bad_manifests_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        add(&store, "a", b"hello");
        let d = Sha256::of(b"hello");
        let p = store.blob_path(&d);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, b"hello").unwrap();
        fs::write(store.manifests_dir().join("bad.json"), b"{nope").unwrap();
        let ns = Namespace::new();
        ns.refresh(&store);
        assert_eq!(ns.len(), 1);
        assert_eq!(lookup(&ns, "a.gguf").unwrap().present_size, Some(5));
    }

    /// Writes `n` manifests without fsync (setup speed); every
    /// `present_every`-th one also gets its blob.
    fn populate(store: &Store, n: usize, present_every: usize) {
        for i in 0..n {
            let data = format!("blob {i}").into_bytes();
            let m = manifest(&format!("m{i:05}"), "gguf", &data, "");
            fs::write(store.manifest_path(&m.name), m.to_json_bytes()).unwrap();
            if present_every > 0 && i % present_every == 0 {
                put_blob(store, &data);
            }
        }
    }

    fn put_blob(store: &Store, data: &[u8]) {
        let p = store.blob_path(&Sha256::of(data));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
    }

    /// One pass: its time and how long it held `tables`, in µs.
    fn pass(ns: &Namespace, store: &Store, full: bool) -> (u128, u128) {
        let t = Instant::now();
        ns.refresh_pass(store, full);
        let took = t.elapsed().as_micros();
        (took, ns.watch.lock().held.as_micros())
    }

    fn median(mut v: Vec<(u128, u128)>) -> (u128, u128) {
        v.sort();
        v[v.len() / 2]
    }

    /// At mount scale (10,000 manifests): a settled, unchanged store is not
    /// listed again and no pending blob is looked up, a full pass looks at
    /// everything, and one change is picked up. Prints each pass's time and
    /// how long it held `tables` (µs), for BENCHMARKS.md; it asserts the
    /// work done, never the time (`cargo test --release --lib
    /// refresh_at_mount_scale -- --nocapture` for representative numbers).
    #[test]
    fn refresh_at_mount_scale_skips_what_did_not_change() {
        for (label, present_every) in [("all pending", 0), ("1 in 4 present", 4)] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::create(dir.path()).unwrap();
            populate(&store, 10_000, present_every);
            let ns = Namespace::new();
            let cold = pass(&ns, &store, true);
            assert_eq!(ns.len(), 10_000);
            settle(&ns, &store);
            let unchanged = median((0..21).map(|_| pass(&ns, &store, false)).collect());
            let (listed, stated) = work_done(&ns);
            assert!(!listed, "{label}: an unchanged manifests/ is not listed");
            assert_eq!(stated, 0, "{label}: no blob file is stat'ed again");
            let full = median((0..5).map(|_| pass(&ns, &store, true)).collect());
            assert!(work_done(&ns).0, "{label}: a full pass lists manifests/");
            settle(&ns, &store);
            add(&store, "m00001", b"another blob");
            let manifest = pass(&ns, &store, false);
            let settling = pass(&ns, &store, false);
            settle(&ns, &store);
            put_blob(&store, b"blob 3");
            let blob = pass(&ns, &store, false);
            assert!(lookup(&ns, "m00003.gguf").unwrap().present_size.is_some());
            assert_eq!(lookup(&ns, "m00001.gguf").unwrap().size(), 12);
            println!(
                "{label}: cold {cold:?}, unchanged {unchanged:?} (median of 21), \
                 full {full:?} (median of 5), after a manifest rewrite {manifest:?} \
                 then {settling:?} while it settles, after a blob appeared {blob:?}"
            );
        }
    }
}
