//! The mount's side of the cache policy (`store::evict`): the open locks
//! its handles hold, the last-open times it notes, and the room a fetch
//! makes before it downloads.
//!
//! - [`Coordinator::try_hold_open`] runs on the open's path: one table
//!   lookup (and, for the first open of a blob in this process, one `open`
//!   and one non-blocking `flock` of its lock file) and a time noted in
//!   memory. When an eviction holds that lock at the moment, the open
//!   waits for it with [`Coordinator::hold_open`] on a thread of its own.
//! - [`Coordinator::make_room`] runs on a fetch worker before the download
//!   starts: it reads the store's settings (the mount's `-o cache_max=`
//!   and `-o min_free=` win), counts the bytes the download still needs
//!   and those the other downloads of this mount still need, and evicts.
//!   Evictions of one mount run one at a time (they share its count of
//!   bytes in flight); another mount's eviction is kept from this mount's
//!   open blobs by their locks.
//! - [`Coordinator::keep_quota`] is what the mount's quota thread runs
//!   every [`QUOTA_EVERY`]: an eviction for zero incoming bytes (usage
//!   that crossed the limit: a lowered limit, another tool's blobs, a disk
//!   that filled up) and a flush of the last-open times.
//!
//! None of it runs on the FUSE request loop but `try_hold_open`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::Coordinator;
use crate::digest::Sha256;
use crate::fetch::{FetchError, FetchErrorKind};
use crate::store::evict::{EvictEvent, Names};
use crate::store::openlock::{LastOpen, OpenHold, OpenLocks, TryHold};
use crate::store::settings::{Amount, Settings};
use crate::store::{Manifest, ModelName, StoreError};
use crate::text::human_bytes;

/// How often the quota thread checks the limits and flushes open times.
pub const QUOTA_EVERY: Duration = Duration::from_secs(5);

/// The cache policy state of one coordinator.
#[derive(Default)]
pub struct Quota {
    locks: Arc<OpenLocks>,
    last_open: LastOpen,
    /// The mount's `-o cache_max=` and `-o min_free=`.
    overrides: parking_lot::Mutex<(Option<Amount>, Option<Amount>)>,
    /// Downloads this coordinator runs (blob → size); its lock also keeps
    /// evictions of this process one at a time.
    in_flight: parking_lot::Mutex<HashMap<Sha256, u64>>,
    /// The names of each blob's manifests as the mount has them parsed
    /// (see [`Coordinator::set_manifest_names`]).
    names: parking_lot::Mutex<Option<NamesFn>>,
}

/// Gives the names of each blob's manifests.
pub type NamesFn = Arc<dyn Fn() -> HashMap<Sha256, Vec<ModelName>> + Send + Sync>;

/// A download's place among those in flight; dropping it ends it.
pub struct Room<'a> {
    quota: &'a Quota,
    digest: Option<Sha256>,
}

impl Drop for Room<'_> {
    fn drop(&mut self) {
        if let Some(d) = self.digest {
            self.quota.in_flight.lock().remove(&d);
        }
    }
}

impl Coordinator {
    /// Where eviction gets the names of each blob's manifests: the mount's
    /// directory, which has them parsed (else eviction parses every
    /// manifest of the store, 100 ms at 10,000).
    pub fn set_manifest_names(&self, f: NamesFn) {
        *self.quota.names.lock() = Some(f);
    }

    /// [`Store::make_room`] with this coordinator's names and last opens.
    fn room_for(
        &self,
        settings: &Settings,
        incoming: u64,
        reserved: u64,
        why: &str,
    ) -> Result<Result<crate::store::evict::Evicted, crate::store::evict::NoRoom>, StoreError> {
        let recent = self.quota.last_open.unflushed();
        let names = self.quota.names.lock().clone();
        let names: Names<'_> = names
            .as_deref()
            .map(|f| f as &dyn Fn() -> HashMap<Sha256, Vec<ModelName>>);
        self.store
            .make_room(settings, incoming, reserved, &recent, names, &mut |e| {
                log_event(why, &e)
            })
    }

    /// Sets the mount's overrides of the store's settings.
    pub fn set_quota_overrides(&self, cache_max: Option<Amount>, min_free: Option<Amount>) {
        *self.quota.overrides.lock() = (cache_max, min_free);
    }

    /// The store's settings with the mount's overrides; an unreadable file
    /// is logged and read as the defaults plus the overrides.
    pub fn settings(&self) -> Settings {
        let (max, free) = *self.quota.overrides.lock();
        let file = self.store.read_settings().unwrap_or_else(|e| {
            log::warn!("{e}; using the defaults");
            Settings::default()
        });
        file.overridden(max, free)
    }

    /// A share of `d`'s open lock for a handle about to be served (see
    /// `store::openlock`), and the open noted as the blob's last.
    /// `None` when the store cannot hold lock files (see `OpenLocks::hold`).
    pub fn hold_open(&self, d: &Sha256) -> Result<Option<OpenHold>, StoreError> {
        let hold = self.quota.locks.hold(&self.store, d)?;
        self.quota.last_open.touch(d);
        Ok(hold)
    }

    /// [`Coordinator::hold_open`] without waiting for an eviction that
    /// holds the blob's lock (`TryHold::Evicting`): the mount's request
    /// loop calls it, and waits with `hold_open` elsewhere.
    pub fn try_hold_open(&self, d: &Sha256) -> Result<TryHold, StoreError> {
        let hold = self.quota.locks.try_hold(&self.store, d)?;
        if matches!(hold, TryHold::Held(_)) {
            self.quota.last_open.touch(d);
        }
        Ok(hold)
    }

    /// Makes room for the download of `m`'s blob before it starts (see the
    /// module doc); the failure, when even evicting everything evictable
    /// leaves too little, names what holds the space.
    pub(super) fn make_room(&self, m: &Manifest) -> Result<Room<'_>, FetchError> {
        let settings = self.settings();
        let mut in_flight = self.quota.in_flight.lock();
        let remaining = |d: &Sha256, size: u64| self.still_to_write(d, size);
        let incoming = remaining(&m.blob, m.size_bytes);
        let reserved: u64 = in_flight
            .iter()
            .filter(|(d, _)| **d != m.blob)
            .map(|(d, s)| remaining(d, *s))
            .sum();
        let made = self.room_for(&settings, incoming, reserved, m.name.as_str());
        let fail = |kind| FetchError::new(m.name.as_str(), self.url_for(m).as_deref(), kind);
        match made {
            Ok(Ok(_)) => {
                in_flight.insert(m.blob, m.size_bytes);
                Ok(Room {
                    quota: &self.quota,
                    digest: Some(m.blob),
                })
            }
            Ok(Err(no_room)) => Err(fail(FetchErrorKind::NoRoom(no_room))),
            Err(e) => Err(fail(FetchErrorKind::Store(e))),
        }
    }

    /// Bytes a download of `d` (of `size` bytes) has still to write: none
    /// once its blob is published (a download answers its opens before it
    /// publishes, and then still counts as in flight for a moment).
    fn still_to_write(&self, d: &Sha256, size: u64) -> u64 {
        match self.store.stat_partial(d) {
            Some(p) => size.saturating_sub(p.len()),
            None if self.store.stat_blob(d).is_some() => 0,
            None => size,
        }
    }

    /// One pass of the quota thread: evicts what is over the limits now,
    /// and writes the last-open times when they are due (`force`: now).
    pub fn keep_quota(&self, force_flush: bool) {
        if let Err(e) = self.quota.last_open.flush(&self.store, force_flush) {
            log::warn!("cannot record when models were last opened: {e}");
        }
        let settings = self.settings();
        let in_flight = self.quota.in_flight.lock();
        let reserved: u64 = in_flight
            .iter()
            .map(|(d, s)| self.still_to_write(d, *s))
            .sum();
        match self.room_for(&settings, 0, reserved, "the cache limit") {
            Ok(Ok(_)) => {}
            Ok(Err(no_room)) => log::warn!("the store is over its limits: {no_room}"),
            Err(e) => log::warn!("cannot check the store's limits: {e}"),
        }
    }

    /// Starts the thread that runs [`Coordinator::keep_quota`] every
    /// [`QUOTA_EVERY`] until the coordinator shuts down or is dropped.
    pub fn spawn_quota_keeper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("quota".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(QUOTA_EVERY);
                    let Some(c) = weak.upgrade() else { return };
                    if c.shutting_down.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    c.keep_quota(false);
                }
            });
        if let Err(e) = spawned {
            log::error!(
                "cannot start the quota thread (limits are kept before downloads only): {e}"
            );
        }
    }

    /// Writes the last-open times now (at unmount).
    pub fn flush_last_open(&self) {
        if let Err(e) = self.quota.last_open.flush(&self.store, true) {
            log::warn!("cannot record when models were last opened: {e}");
        }
    }
}

/// One log line per blob eviction deleted or had to keep.
fn log_event(why: &str, e: &EvictEvent) {
    let names =
        |n: &[crate::store::ModelName]| n.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ");
    match e {
        EvictEvent::Evicted {
            blob,
            size,
            names: n,
        } => log::info!(
            "evicting {} ({}, blob {}) to make room for {why}; it stays listed and is fetched \
             again on its next open",
            names(n),
            human_bytes(*size),
            blob.short()
        ),
        EvictEvent::Open { names: n, .. } => {
            log::debug!("not evicting {}: it is open", names(n))
        }
        EvictEvent::Busy { names: n, .. } => {
            log::debug!("not evicting {}: a producer holds its lock", names(n))
        }
    }
}
