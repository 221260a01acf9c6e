//! The refresh: bringing a [`Namespace`]'s snapshot up to date with the
//! store, looking only where something changed (see the module doc of
//! [`super`]); the inode table it updates is the parent's.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::manifests::Delta;
use super::{
    Changes, Entry, FULL_PASS_SHARE, LOOK_AT_EVERYTHING_EVERY, Namespace, Tables, Watch, collect,
    log_retired, retire, served_replaced,
};
use crate::digest::Sha256;
use crate::store::watch::BlobFile;
use crate::store::{Manifest, Store, timestamp};

impl Namespace {
    /// Brings the snapshot up to date with the store's manifests and
    /// blobs, looking only where something changed (see the module doc).
    pub fn refresh(&self, store: &Store) -> Changes {
        let full = {
            let w = self.watch.lock();
            let every = LOOK_AT_EVERYTHING_EVERY.max(w.full_took * FULL_PASS_SHARE);
            w.last_full.is_none_or(|t| t.elapsed() >= every)
        };
        self.refresh_pass(store, full)
    }

    /// One refresh; `full` ignores every stamp.
    pub(super) fn refresh_pass(&self, store: &Store, full: bool) -> Changes {
        let started = Instant::now();
        let mut w = self.watch.lock();
        let (since, delta) = self.look(&mut w, store, full);
        let changed = delta.stems.len() + delta.gone.len();
        let (changes, retired) = self.apply(&mut w, since, delta);
        // A pass that parsed manifests (the first, or after many changed)
        // says nothing about what looking costs.
        if full && w.manifests.parsed_now() == 0 {
            w.full_took = started.elapsed();
        }
        if full {
            w.full_passes += 1;
        }
        for (file_name, old, new) in retired {
            log_retired(&file_name, old, new);
        }
        log::trace!(
            "refresh: full {full}, listed manifests {}, parsed {}, stat'ed {} blob files, \
             {changed} entries changed, took {:?}, held the tables {:?}",
            w.manifests.listed(),
            w.manifests.parsed_now(),
            w.blobs.stated(),
            started.elapsed(),
            w.held
        );
        changes
    }

    /// Looks at the store, with no lock but `watch` held. Returns the
    /// tables' version before the look, and what differs from the last.
    pub(super) fn look(&self, w: &mut Watch, store: &Store, full: bool) -> (u64, Delta) {
        if full {
            w.last_full = Some(Instant::now());
        }
        // Whatever an open tells the tables after this is at least as new
        // as what the look below sees; see `apply`.
        let since = self.tables.lock().version;
        let mut delta = w.manifests.look(store, full);
        let digests = w.manifests.all().map(|(_, m)| m.blob);
        let digests_changed = !delta.stems.is_empty() || !delta.gone.is_empty();
        let changed: HashSet<Sha256> = w
            .blobs
            .look(store, digests, digests_changed, full)
            .into_iter()
            .collect();
        if !changed.is_empty() {
            for (stem, m) in w.manifests.all() {
                if changed.contains(&m.blob) {
                    delta.stems.insert(stem.clone());
                }
            }
        }
        (since, delta)
    }

    /// Applies what a look found to the tables and the snapshot: the
    /// entries of the manifests in `delta`, and of the inodes opens told
    /// us about since the last apply. Pure computation under `tables`, and
    /// nothing at all when there is nothing to do.
    ///
    /// Races with opens, which may run between the look and this apply
    /// (`since` is the tables' version before the look began):
    ///
    /// - an inode an open told us about at or before `since`: the open
    ///   got its blob file before the look, so if the look found another
    ///   file or none, that file was replaced or removed after the open, and
    ///   the inode is retired, as it must be.
    /// - an inode an open told us about after `since` (`note_served` of a
    ///   blob that was published after the look saw it absent, a
    ///   `mark_present`): the open may know a newer file than the look, so
    ///   comparing could retire an inode whose blob is fine, and taking the
    ///   look's size could undo `mark_present`. Its served file and size
    ///   stay as the open set them, and it stays in `told`, so the next
    ///   apply compares it with a look that began after. A replaced blob is
    ///   never served meanwhile: `open` checks for itself (`is_stale`).
    pub(super) fn apply(
        &self,
        w: &mut Watch,
        since: u64,
        delta: Delta,
    ) -> (Changes, Vec<(String, u64, u64)>) {
        let mut t = self.tables.lock();
        let locked = Instant::now();
        w.held = Duration::ZERO;
        if delta.stems.is_empty() && delta.gone.is_empty() && t.told.is_empty() {
            return (Changes::default(), Vec::new());
        }
        let mut stems = delta.stems;
        for ino in t.told.keys() {
            if let Some(e) = t.by_ino.get(ino) {
                // A manifest's name is its file's stem.
                stems.insert(e.manifest.name.to_string());
            }
        }
        let mut retired = Vec::new();
        let updated: Vec<Arc<Entry>> = stems
            .iter()
            .filter_map(|stem| w.manifests.get(stem))
            .map(|m| entry_for(&mut t, m, w.blobs.file(&m.blob), since, &mut retired))
            .collect();
        t.told.retain(|_, v| *v > since);

        let mut changes = Changes::default();
        let mut cur = self.current.write();
        let shown = self.edit(&mut cur);
        for name in delta.gone {
            if let Some(e) = shown.remove(name.as_str()) {
                changes.removed.push((name, e.ino));
            }
        }
        for e in updated {
            match shown.insert(e.file_name.clone(), e.clone()) {
                None => changes.added.push(e.file_name.to_string()),
                Some(old) if old.ino != e.ino => {
                    changes.repointed.push((e.file_name.to_string(), old.ino))
                }
                Some(_) => {}
            }
        }
        let unshown = changes.removed.iter().chain(&changes.repointed);
        let olds: Vec<u64> = unshown
            .map(|(_, ino)| *ino)
            .chain(retired.iter().map(|(_, old, _)| *old))
            .collect();
        for ino in olds {
            collect(&mut t, shown, ino);
        }
        drop(cur);
        drop(t);
        w.held = locked.elapsed();
        changes.added.sort();
        changes.removed.sort();
        changes.repointed.sort();
        (changes, retired)
    }
}

/// The entry of manifest `m` (whose blob file the look found to be
/// `blob`), recorded in `t`. Retires the inode if the blob file it served
/// is gone or replaced; see [`Namespace::apply`] for `since`.
fn entry_for(
    t: &mut Tables,
    m: &Arc<Manifest>,
    blob: Option<BlobFile>,
    since: u64,
    retired: &mut Vec<(String, u64, u64)>,
) -> Arc<Entry> {
    let ident: (Arc<str>, Sha256) = (m.file_name().into(), m.blob);
    let mut ino = match t.inos.get(&ident) {
        Some(i) => *i,
        None => {
            let i = t.next_ino;
            t.next_ino += 1;
            t.inos.insert(ident.clone(), i);
            i
        }
    };
    let open_knows_better = t.told.get(&ino).is_some_and(|v| *v > since);
    if !open_knows_better
        && served_replaced(t, ino, blob.map(|b| (b.dev, b.ino)))
        && let Some(new) = retire(t, m, ino)
    {
        retired.push((new.file_name.to_string(), ino, new.ino));
        ino = new.ino;
    }
    let present_size = if open_knows_better {
        t.by_ino.get(&ino).and_then(|e| e.present_size)
    } else {
        blob.map(|b| b.size)
    };
    let entry = match t.by_ino.get(&ino) {
        Some(e) if e.present_size == present_size && Arc::ptr_eq(&e.manifest, m) => e.clone(),
        _ => Arc::new(Entry {
            ino,
            manifest: m.clone(),
            file_name: t.by_ino.get(&ino).map_or(ident.0, |e| e.file_name.clone()),
            mtime: timestamp::parse_rfc3339(&m.produced_at).unwrap_or(SystemTime::UNIX_EPOCH),
            present_size,
        }),
    };
    t.by_ino.insert(ino, entry.clone());
    entry
}
