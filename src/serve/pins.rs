//! Which digests the store's manifests pin, for `modelfs serve`: read
//! again when a request names a digest not seen pinned, at most once a
//! second, so a scan of every manifest never runs per request.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::digest::Sha256;
use crate::store::{Manifest, Store};

type ByDigest = HashMap<Sha256, Vec<Manifest>>;

const RESCAN_EVERY: Duration = Duration::from_secs(1);

pub struct Pins {
    store: Store,
    /// Every manifest of each digest, as last scanned, and when.
    seen: Mutex<(ByDigest, Option<Instant>)>,
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
        self.all_of(d).into_iter().next()
    }

    /// Every manifest that pins `d` (the sources a fetch may use), from
    /// the last scan, or a new one (see the module doc).
    pub fn all_of(&self, d: &Sha256) -> Vec<Manifest> {
        let mut seen = self.seen.lock();
        if let Some(ms) = seen.0.get(d) {
            return ms.clone();
        }
        if seen.1.is_some_and(|t| t.elapsed() < RESCAN_EVERY) {
            return Vec::new();
        }
        let mut map = ByDigest::new();
        match self.store.list_manifests() {
            Ok(list) => {
                for m in list.into_iter().flatten() {
                    map.entry(m.blob).or_default().push(m);
                }
            }
            Err(e) => log::warn!("serve: cannot list the store's manifests: {e}"),
        }
        *seen = (map, Some(Instant::now()));
        seen.0.get(d).cloned().unwrap_or_default()
    }
}
