//! The directory the mount shows: one entry per manifest, kept in memory.
//!
//! [`Namespace::refresh`] re-reads `manifests/` (re-parsing only files whose
//! inode, size or times changed) and stats each blob; lookups, getattr and
//! readdir read the last snapshot and never touch the disk. An entry's inode
//! number is bound to (name, format, digest): a manifest repointed at another
//! blob gets a new inode, so the kernel can never serve cached pages of the
//! old bytes for the new ones, while a file opened before keeps its inode
//! and its bytes. Inodes are never reused within a mount.
//!
//! An inode is also retired when the blob file it served goes away or is
//! replaced (`modelfs verify` quarantined it, then a fetch put the pinned
//! bytes back): the kernel may hold that file's pages in its cache under the
//! inode, and they must never be served for the new file. Opening a retired
//! inode fails with `ESTALE`, on which the kernel looks the name up again and
//! gets the new inode.
//!
//! Manifest files that are ignored (a name that is not a valid model name,
//! a symlink, a special file) and manifests that do not parse are logged
//! once each, when they appear or change, not on every refresh.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::{Mutex, RwLock};

use crate::digest::Sha256;
use crate::store::{Manifest, ModelName, Store, timestamp};

/// The root directory's inode.
pub const ROOT_INO: u64 = 1;

/// One file in the mount.
#[derive(Debug, Clone)]
pub struct Entry {
    pub ino: u64,
    pub manifest: Arc<Manifest>,
    /// `<name>.<format>`
    pub file_name: String,
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

/// Identity of a manifest file on disk, to skip re-parsing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct FileKey {
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

#[derive(Default)]
struct Tables {
    /// (name, format, digest) → inode, for the life of the mount.
    inos: HashMap<(String, String, Sha256), u64>,
    /// Every entry ever shown, current or retired (open files need them).
    by_ino: HashMap<u64, Arc<Entry>>,
    next_ino: u64,
    /// Parsed manifests by file, with the key they were parsed at.
    parsed: HashMap<String, (FileKey, Option<Arc<Manifest>>)>,
    /// Ignored files of `manifests/`, with the key they were logged at.
    ignored: HashMap<String, FileKey>,
    /// The blob file each inode has served, by (device, inode).
    served: HashMap<u64, Served>,
}

/// What an inode has served.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Served {
    /// This blob file, by (device, inode).
    File(u64, u64),
    /// A blob file that has since gone or been replaced: the inode is
    /// retired and its name has a new one.
    Stale,
}

/// The mount's directory; see the module doc.
pub struct Namespace {
    current: RwLock<Arc<HashMap<String, Arc<Entry>>>>,
    tables: Mutex<Tables>,
    /// Serialises refreshes (watcher thread vs. explicit calls).
    refreshing: Mutex<()>,
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
            tables: Mutex::new(Tables {
                next_ino: ROOT_INO + 1,
                ..Tables::default()
            }),
            refreshing: Mutex::new(()),
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

    /// Every current entry, sorted by file name.
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        let snap = self.current.read().clone();
        let mut v: Vec<_> = snap.values().cloned().collect();
        v.sort_by(|a, b| a.file_name.cmp(&b.file_name));
        v
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
        self.tables
            .lock()
            .served
            .entry(ino)
            .or_insert(Served::File(file.0, file.1));
    }

    /// Whether `e`'s inode must not be opened because the blob file it
    /// served is gone or replaced (`now` is the file at the blob path
    /// now). Retires the inode if that is news: its name gets a new inode.
    pub fn is_stale(&self, e: &Entry, now: Option<(u64, u64)>) -> bool {
        let mut t = self.tables.lock();
        match t.served.get(&e.ino) {
            Some(Served::Stale) => true,
            Some(Served::File(dev, ino)) if Some((*dev, *ino)) != now => {
                let new = retire(&mut t, &e.manifest, e.ino);
                drop(t);
                if let Some(new) = new {
                    let mut cur = self.current.write();
                    if cur.get(&new.file_name).is_some_and(|x| x.ino == e.ino) {
                        Arc::make_mut(&mut cur).insert(new.file_name.clone(), new);
                    }
                }
                true
            }
            _ => false,
        }
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
        drop(t);
        let mut cur = self.current.write();
        if cur.get(&new.file_name).is_some_and(|e| e.ino == ino) {
            Arc::make_mut(&mut cur).insert(new.file_name.clone(), new);
        }
    }

    /// Re-reads the store's manifests and blob states into a new snapshot.
    pub fn refresh(&self, store: &Store) -> Changes {
        let _one_at_a_time = self.refreshing.lock();
        let (files, ignored) = scan_manifest_files(store);
        let mut t = self.tables.lock();
        for (fname, key, why) in &ignored {
            if t.ignored.get(fname) != Some(key) {
                log::warn!(
                    "ignoring {}: {why}",
                    store.manifests_dir().join(fname).display()
                );
            }
        }
        t.ignored = ignored.into_iter().map(|(f, k, _)| (f, k)).collect();
        let mut next: HashMap<String, Arc<Entry>> = HashMap::with_capacity(files.len());
        let mut seen_files = std::collections::HashSet::with_capacity(files.len());
        for (stem, key) in files {
            let manifest = match t.parsed.get(&stem) {
                Some((k, m)) if *k == key => m.clone(),
                _ => {
                    let m = parse_one(store, &stem);
                    t.parsed.insert(stem.clone(), (key, m.clone()));
                    m
                }
            };
            seen_files.insert(stem);
            let Some(m) = manifest else { continue };
            let file_name = m.file_name();
            let ident = (m.name.to_string(), m.format.clone(), m.blob);
            let mut ino = match t.inos.get(&ident) {
                Some(i) => *i,
                None => {
                    let i = t.next_ino;
                    t.next_ino += 1;
                    t.inos.insert(ident, i);
                    i
                }
            };
            let blob = store.stat_blob(&m.blob);
            let present_size = blob.as_ref().map(|b| b.len());
            let file = blob.as_ref().map(|b| (b.dev(), b.ino()));
            if let Some(Served::File(dev, i)) = t.served.get(&ino).copied()
                && Some((dev, i)) != file
                && let Some(new) = retire(&mut t, &m, ino)
            {
                ino = new.ino;
            }
            let mtime = timestamp::parse_rfc3339(&m.produced_at).unwrap_or(SystemTime::UNIX_EPOCH);
            let entry = match t.by_ino.get(&ino) {
                Some(e) if e.present_size == present_size && Arc::ptr_eq(&e.manifest, &m) => {
                    e.clone()
                }
                _ => Arc::new(Entry {
                    ino,
                    manifest: m,
                    file_name: file_name.clone(),
                    mtime,
                    present_size,
                }),
            };
            t.by_ino.insert(ino, entry.clone());
            next.insert(file_name, entry);
        }
        t.parsed.retain(|stem, _| seen_files.contains(stem));
        drop(t);

        let mut cur = self.current.write();
        let changes = diff(&cur, &next);
        *cur = Arc::new(next);
        changes
    }
}

/// Marks `old` stale and gives the manifest's (name, format, digest) a new
/// inode, if `old` is still its inode; returns the new entry.
fn retire(t: &mut Tables, m: &Arc<Manifest>, old: u64) -> Option<Arc<Entry>> {
    t.served.insert(old, Served::Stale);
    let ident = (m.name.to_string(), m.format.clone(), m.blob);
    if t.inos.get(&ident) != Some(&old) {
        return None;
    }
    let ino = t.next_ino;
    t.next_ino += 1;
    t.inos.insert(ident, ino);
    log::info!(
        "{}: the blob it served is gone or replaced; new inode {ino} (was {old})",
        m.file_name()
    );
    let prev = t.by_ino.get(&old)?;
    let entry = Arc::new(Entry {
        ino,
        present_size: None,
        ..(**prev).clone()
    });
    t.by_ino.insert(ino, entry.clone());
    Some(entry)
}

fn diff(old: &HashMap<String, Arc<Entry>>, new: &HashMap<String, Arc<Entry>>) -> Changes {
    let mut c = Changes::default();
    for (name, e) in new {
        match old.get(name) {
            None => c.added.push(name.clone()),
            Some(o) if o.ino != e.ino => c.repointed.push((name.clone(), o.ino)),
            Some(_) => {}
        }
    }
    for (name, e) in old {
        if !new.contains_key(name) {
            c.removed.push((name.clone(), e.ino));
        }
    }
    c.added.sort();
    c.removed.sort();
    c.repointed.sort();
    c
}

/// An ignored file of `manifests/`: its name, key and why.
type Ignored = (String, FileKey, String);

/// `(stem, key)` of every `<valid-name>.json` regular file, and the other
/// `*.json` entries, ignored, with the reason. Other files (`*.json.tmp`
/// of a writer, notes) are none of our business.
fn scan_manifest_files(store: &Store) -> (Vec<(String, FileKey)>, Vec<Ignored>) {
    let (mut out, mut ignored) = (Vec::new(), Vec::new());
    let Ok(dir) = fs::read_dir(store.manifests_dir()) else {
        return (out, ignored);
    };
    for e in dir.flatten() {
        let fname = e.file_name();
        let Some(stem) = fname.to_str().and_then(|f| f.strip_suffix(".json")) else {
            continue;
        };
        // symlink_metadata: a planted symlink is skipped, never followed.
        let Ok(m) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        let key = FileKey {
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        };
        if let Err(err) = ModelName::parse(stem) {
            ignored.push((
                stem.to_string() + ".json",
                key,
                format!("not a valid model name: {err}"),
            ));
            continue;
        }
        if !m.is_file() {
            let what = if m.file_type().is_symlink() {
                "a symlink (symlinks in the store are never followed)"
            } else {
                "not a regular file"
            };
            ignored.push((stem.to_string() + ".json", key, what.to_string()));
            continue;
        }
        out.push((stem.to_string(), key));
    }
    (out, ignored)
}

fn parse_one(store: &Store, stem: &str) -> Option<Arc<Manifest>> {
    let name = ModelName::parse(stem).ok()?;
    match store.read_manifest(&name) {
        Ok(Some(m)) => Some(Arc::new(m)),
        Ok(None) => None,
        Err(e) => {
            log::warn!("not showing {stem}: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Source;

    fn add(store: &Store, name: &str, data: &[u8]) {
        let m = Manifest::new(
            ModelName::parse(name).unwrap(),
            "gguf",
            Sha256::of(data),
            data.len() as u64,
            Source::default(),
        );
        store.write_manifest(&m).unwrap();
    }

    #[test]
    fn added_removed_and_repointed_manifests_show_up_in_a_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let ns = Namespace::new();
        add(&store, "a", b"1");
        let c = ns.refresh(&store);
        assert_eq!(c.added, ["a.gguf"]);
        let first = ns.lookup("a.gguf").unwrap();
        assert_eq!(first.size(), 1);
        assert!(ns.refresh(&store).is_empty());

        add(&store, "a", b"22");
        let c = ns.refresh(&store);
        assert_eq!(c.repointed, [("a.gguf".to_string(), first.ino)]);
        let second = ns.lookup("a.gguf").unwrap();
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
        assert!(ns.lookup("a.gguf").is_none());
    }

    #[test]
    fn pointing_back_at_an_earlier_blob_reuses_its_inode() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let ns = Namespace::new();
        add(&store, "a", b"1");
        ns.refresh(&store);
        let ino = ns.lookup("a.gguf").unwrap().ino;
        add(&store, "a", b"2");
        ns.refresh(&store);
        add(&store, "a", b"1");
        ns.refresh(&store);
        assert_eq!(ns.lookup("a.gguf").unwrap().ino, ino);
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
        assert_eq!(ns.lookup("a.gguf").unwrap().present_size, Some(5));
    }
}
