//! Room for a download a command runs itself (`pull`): the same eviction
//! a mount runs before it downloads (`store::evict`), under the store's
//! settings, with the last-open times the mounts have flushed.

use std::collections::HashMap;

use crate::store::{Manifest, Store};

/// Evicts what `m`'s download needs; the message (naming what holds the
/// space) when even that is not enough, or the store cannot be looked at.
pub fn make_room(store: &Store, m: &Manifest) -> Result<(), String> {
    if store.stat_blob(&m.blob).is_some() {
        return Ok(());
    }
    let settings = store.read_settings().map_err(|e| e.to_string())?;
    let written = store.stat_partial(&m.blob).map_or(0, |p| p.len());
    let incoming = m.size_bytes.saturating_sub(written);
    let made = store
        .make_room(&settings, incoming, 0, &HashMap::new(), None, &mut |e| {
            if let crate::store::evict::EvictEvent::Evicted { names, size, .. } = e {
                let names: Vec<_> = names.iter().map(|n| n.as_str()).collect();
                eprintln!(
                    "modelfs: evicting {} ({}) to make room for {}",
                    names.join(", "),
                    crate::text::human_bytes(size),
                    m.name
                );
            }
        })
        .map_err(|e| e.to_string())?;
    made.map(|_| ()).map_err(|no| {
        format!(
            "fetching model {:?} failed: {no} (unpin models with `modelfs unpin`, close open \
             ones, raise cache_max or lower min_free with `modelfs settings set`, or free disk \
             space, and try again)",
            m.name.as_str()
        )
    })
}
