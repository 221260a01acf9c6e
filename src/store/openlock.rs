//! "Open anywhere": which blobs some process on this host has open, and
//! when each blob was last opened.
//!
//! ```text
//! $MODELS_HOME/locks/blobs/<hex>.lock      shared flock held while a served open lives
//! $MODELS_HOME/.modelfs/last-open.json     {"<hex>": <unix milliseconds>, …}
//! $MODELS_HOME/.modelfs/last-open.lock     flock held while the times are merged
//! ```
//!
//! Every open a mount serves holds a shared `flock` on its blob's lock
//! file for as long as its file handle lives (an mmap keeps the handle,
//! so it keeps the lock). Eviction takes the same lock exclusively with
//! `LOCK_NB` ([`Store::try_evict_lock`]) and deletes the blob only while
//! it holds it: any open in any process or mount keeps the blob. An open
//! takes its lock *before* it opens the blob, so an open that gets the
//! lock after an eviction finds the blob gone and fetches it again; it
//! never holds a file eviction deleted. Lock files stay when their blob
//! goes (removing a lock file someone may be locking would split the lock
//! in two inodes).
//!
//! In one process, the opens of a blob share one locked descriptor
//! ([`OpenLocks`], counted), so a thousand opens of one model cost one
//! descriptor, and no syscall after the first.
//!
//! Last-open times ([`LastOpen`]) are kept in memory when a blob is
//! opened and merged into `last-open.json` (the later time wins for each
//! blob, under `last-open.lock`) when the owner flushes them: at most every
//! [`FLUSH_EVERY`], and at unmount. Never a write per open or per read.
//! A blob without a recorded time counts from when it was placed (its
//! ctime), so a blob fetched by `pull` and never opened is not the first
//! to go just because nobody opened it yet.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::{Map, Value};

use super::lock::{self, LockGuard};
use super::settings::{read_optional, write_atomic};
use super::{Store, StoreError};
use crate::digest::Sha256;
use crate::sys::flock;

/// How often a mount writes its last-open times at most.
pub const FLUSH_EVERY: Duration = Duration::from_secs(30);
/// A time file of 10 MB holds 100,000 blobs.
const MAX_TIMES_BYTES: u64 = 64 << 20;
/// How long an open waits for an eviction holding its blob's lock (it
/// holds it only across an unlink) before it fails.
const EVICTION_WAIT: Duration = Duration::from_secs(2);

/// The counted shared locks of this process, one per open blob.
#[derive(Default)]
pub struct OpenLocks {
    held: Mutex<HashMap<Sha256, (Arc<File>, usize)>>,
    /// Whether a store without write access was logged.
    warned: std::sync::atomic::AtomicBool,
}

/// What [`OpenLocks::try_hold`] found.
#[derive(Debug)]
pub enum TryHold {
    /// The share, or `None` for a store that cannot hold lock files.
    Held(Option<OpenHold>),
    /// An eviction holds the blob's lock exclusively at this moment.
    Evicting,
}

/// One open's share of its blob's lock; dropping it gives the share back.
pub struct OpenHold {
    locks: Arc<OpenLocks>,
    digest: Sha256,
}

impl std::fmt::Debug for OpenHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OpenHold({})", self.digest.short())
    }
}

impl Drop for OpenHold {
    fn drop(&mut self) {
        let last = {
            let mut held = self.locks.held.lock();
            match held.get_mut(&self.digest) {
                Some((_, n)) if *n > 1 => {
                    *n -= 1;
                    None
                }
                Some(_) => held.remove(&self.digest),
                None => None,
            }
        };
        // Closed outside the table's lock: the close releases the flock.
        drop(last);
    }
}

impl OpenLocks {
    /// A share of the shared lock of `d`'s blob, taking it if this process
    /// holds none yet. An eviction holding it exclusively is waited for
    /// (polling, up to [`EVICTION_WAIT`]); it holds it only across an unlink.
    ///
    /// A store this process may not write (a read-only filesystem, a
    /// folder it has no write permission on) cannot hold lock files:
    /// `Ok(None)`, logged once. Nobody can evict from such a store through
    /// this process either; another process that can is not kept out.
    pub fn hold(
        self: &Arc<Self>,
        store: &Store,
        d: &Sha256,
    ) -> Result<Option<OpenHold>, StoreError> {
        self.hold_within(store, d, EVICTION_WAIT)
    }

    /// [`OpenLocks::hold`] without waiting: [`TryHold::Evicting`] when an
    /// eviction holds the lock right now, for the caller to wait with
    /// [`OpenLocks::hold`] on a thread that may block (the mount's request
    /// loop may not).
    pub fn try_hold(self: &Arc<Self>, store: &Store, d: &Sha256) -> Result<TryHold, StoreError> {
        match self.hold_within(store, d, Duration::ZERO) {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(TryHold::Evicting),
            r => r.map(TryHold::Held),
        }
    }

    fn hold_within(
        self: &Arc<Self>,
        store: &Store,
        d: &Sha256,
        wait: Duration,
    ) -> Result<Option<OpenHold>, StoreError> {
        match self.hold_or_fail(store, d, wait) {
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EACCES | libc::EROFS | libc::EPERM)
                ) =>
            {
                if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    log::warn!(
                        "{e}: opens hold no open lock in this store, so an eviction by another \
                         process with write access could delete a blob this mount serves"
                    );
                }
                Ok(None)
            }
            r => r.map(Some),
        }
    }

    fn hold_or_fail(
        self: &Arc<Self>,
        store: &Store,
        d: &Sha256,
        wait: Duration,
    ) -> Result<OpenHold, StoreError> {
        let hold = || OpenHold {
            locks: self.clone(),
            digest: *d,
        };
        if let Some((_, n)) = self.held.lock().get_mut(d) {
            *n += 1;
            return Ok(hold());
        }
        let path = store.open_lock_path(d);
        let file = lock::open_lock_file(&path).map_err(|e| StoreError::walking(&path, e))?;
        let started = Instant::now();
        while !flock(&file, libc::LOCK_SH | libc::LOCK_NB).map_err(|e| StoreError::io(&path, e))? {
            if started.elapsed() >= wait {
                return Err(StoreError::io(
                    &path,
                    std::io::Error::from_raw_os_error(libc::EAGAIN),
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let file = Arc::new(file);
        let mut held = self.held.lock();
        // Another open of this process took one meanwhile: share it; ours
        // (a second shared lock) closes when `file` drops.
        held.entry(*d)
            .and_modify(|(_, n)| *n += 1)
            .or_insert((file, 1));
        Ok(hold())
    }

    /// Blobs this process holds open now.
    pub fn open_blobs(&self) -> Vec<Sha256> {
        self.held.lock().keys().copied().collect()
    }
}

/// Last-open times in memory, flushed into the store now and then.
#[derive(Default)]
pub struct LastOpen {
    times: Mutex<HashMap<Sha256, u64>>,
    flushed: Mutex<Option<Instant>>,
}

/// Milliseconds since the epoch now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

impl LastOpen {
    /// Notes that `d` was opened now. Memory only.
    pub fn touch(&self, d: &Sha256) {
        self.times.lock().insert(*d, now_ms());
    }

    /// The times noted since the last flush (tests, and an eviction in
    /// this process, which must know what it has not written yet).
    pub fn unflushed(&self) -> HashMap<Sha256, u64> {
        self.times.lock().clone()
    }

    /// Writes the noted times into the store if [`FLUSH_EVERY`] passed
    /// since the last flush (or `force`); keeps them on failure.
    pub fn flush(&self, store: &Store, force: bool) -> Result<(), StoreError> {
        {
            let mut at = self.flushed.lock();
            if !force && at.is_some_and(|t| t.elapsed() < FLUSH_EVERY) {
                return Ok(());
            }
            *at = Some(Instant::now());
        }
        let times = std::mem::take(&mut *self.times.lock());
        if times.is_empty() {
            return Ok(());
        }
        if let Err(e) = store.merge_last_open(&times) {
            let mut now = self.times.lock();
            for (d, t) in times {
                let v = now.entry(d).or_insert(t);
                *v = (*v).max(t);
            }
            return Err(e);
        }
        Ok(())
    }
}

impl Store {
    /// `locks/blobs/<hex>.lock`: the lock every served open of `d` shares.
    pub fn open_lock_path(&self, d: &Sha256) -> std::path::PathBuf {
        self.locks_dir()
            .join("blobs")
            .join(format!("{}.lock", d.to_hex()))
    }

    /// The exclusive lock of `d`'s open lock file if no process holds any
    /// share of it (nobody has the blob open through a mount); `None` if
    /// one does. Never waits.
    pub fn try_evict_lock(&self, d: &Sha256) -> Result<Option<LockGuard>, StoreError> {
        let path = self.open_lock_path(d);
        lock::try_lock(&path).map_err(|e| StoreError::walking(&path, e))
    }

    /// `.modelfs/last-open.json`
    pub fn last_open_path(&self) -> std::path::PathBuf {
        self.root().join(".modelfs/last-open.json")
    }

    /// The recorded last-open times (unix milliseconds) by blob. An unreadable
    /// file reads as no times (logged): it only orders eviction.
    pub fn read_last_open(&self) -> HashMap<Sha256, u64> {
        let path = self.last_open_path();
        let parsed = read_optional(&path, MAX_TIMES_BYTES)
            .map(|b| b.and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).ok()));
        match parsed {
            Ok(Some(map)) => map
                .iter()
                .filter_map(|(k, v)| Some((Sha256::from_hex(k).ok()?, v.as_u64()?)))
                .collect(),
            Ok(None) => HashMap::new(),
            Err(e) => {
                log::warn!("{e}; eviction orders blobs by when they were placed");
                HashMap::new()
            }
        }
    }

    /// Merges `times` into the file: the later time wins for each blob;
    /// times of blobs that are gone are dropped.
    pub fn merge_last_open(&self, times: &HashMap<Sha256, u64>) -> Result<(), StoreError> {
        let lock_path = self.root().join(".modelfs/last-open.lock");
        let _guard =
            lock::lock_waiting(&lock_path, &|| false, &mut || {}).map_err(|e| match e {
                lock::LockWaitError::Io(e) => StoreError::walking(&lock_path, e),
                lock::LockWaitError::Cancelled => unreachable!("never cancelled"),
            })?;
        let mut all = self.read_last_open();
        for (d, t) in times {
            let v = all.entry(*d).or_insert(*t);
            *v = (*v).max(*t);
        }
        all.retain(|d, _| self.stat_blob(d).is_some() || times.contains_key(d));
        let mut keys: Vec<_> = all.into_iter().collect();
        keys.sort();
        let map: Map<String, Value> = keys
            .into_iter()
            .map(|(d, t)| (d.to_hex(), Value::from(t)))
            .collect();
        let mut bytes = serde_json::to_vec(&Value::Object(map)).expect("JSON serialises");
        bytes.push(b'\n');
        write_atomic(&self.last_open_path(), &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_anywhere_keeps_eviction_out_until_its_last_handle_goes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path()).unwrap();
        let d = s.publish_bytes(b"model");
        let locks = Arc::new(OpenLocks::default());
        let a = locks.hold(&s, &d).unwrap().unwrap();
        let b = locks.hold(&s, &d).unwrap().unwrap();
        assert!(s.try_evict_lock(&d).unwrap().is_none(), "held open");
        drop(a);
        assert!(s.try_evict_lock(&d).unwrap().is_none(), "one handle left");
        drop(b);
        let g = s.try_evict_lock(&d).unwrap().expect("nobody has it open");
        // While eviction holds it, another process's open waits, then gets
        // it once the eviction lets go.
        let other = Arc::new(OpenLocks::default());
        let (s2, d2) = (s.clone(), d);
        let t = std::thread::spawn(move || other.hold(&s2, &d2).map(|_| ()));
        std::thread::sleep(Duration::from_millis(50));
        drop(g);
        t.join().unwrap().unwrap();
    }

    #[test]
    fn last_open_times_are_merged_so_the_later_wins_and_survive_a_new_handle() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path()).unwrap();
        let (a, b) = (s.publish_bytes(b"a"), s.publish_bytes(b"b"));
        s.merge_last_open(&HashMap::from([(a, 100), (b, 300)]))
            .unwrap();
        s.merge_last_open(&HashMap::from([(a, 200), (b, 50)]))
            .unwrap();
        let got = Store::open(dir.path()).unwrap().read_last_open();
        assert_eq!(got, HashMap::from([(a, 200), (b, 300)]));
        let lo = LastOpen::default();
        lo.touch(&a);
        lo.flush(&s, false).unwrap();
        assert!(lo.unflushed().is_empty());
        assert!(s.read_last_open()[&a] >= now_ms() - 5000);
        lo.touch(&b);
        lo.flush(&s, false).unwrap();
        assert_eq!(lo.unflushed().len(), 1, "flushed at most every 30 s");
    }
}
