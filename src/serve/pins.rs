//! Which digests the store's manifests pin, for `modelfs serve`: read
//! again when a request names a digest not seen pinned, at most once a
//! second, so a scan of every manifest never runs per request.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::digest::Sha256;
use crate::store::{Manifest, Store};

const RESCAN_EVERY: Duration = Duration::from_secs(1);

pub struct Pins {
    store: Store,
    seen: Mutex<(HashMap<Sha256, Manifest>, Option<Instant>)>,
}

impl Pins {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            seen: Mutex::new((HashMap::new(), None)),
        }
    }

    /// A manifest that pins `d`, if one does; blocks on a scan.
    pub fn manifest_of(&self, d: &Sha256) -> Option<Manifest> {
        let mut seen = self.seen.lock();
        if let Some(m) = seen.0.get(d) {
            return Some(m.clone());
        }
        if seen.1.is_some_and(|t| t.elapsed() < RESCAN_EVERY) {
            return None;
        }
        let mut map = HashMap::new();
        match self.store.list_manifests() {
            Ok(list) => {
                for m in list.into_iter().flatten() {
                    map.entry(m.blob).or_insert(m);
                }
            }
            Err(e) => log::warn!("serve: cannot list the store's manifests: {e}"),
        }
        *seen = (map, Some(Instant::now()));
        seen.0.get(d).cloned()
    }

    /// Every manifest that pins `d` (the sources a fetch may use).
    pub fn all_of(&self, d: &Sha256) -> Vec<Manifest> {
        match self.store.list_manifests() {
            Ok(list) => list
                .into_iter()
                .flatten()
                .filter(|m| m.blob == *d)
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}
