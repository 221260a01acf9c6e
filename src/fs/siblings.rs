//! The shards of a split model are one model for the mount (DESIGN §8):
//! an open of any shard starts the downloads of its missing siblings, so
//! llama.cpp, which opens shard 1 and then each other shard in turn, waits
//! for the whole set at once rather than for one download after another.
//!
//! The siblings are the entries the namespace shows under the names
//! llama.cpp rebuilds (`store::set`), with the opened shard's format; a
//! sibling that is not pinned is simply not there. Their fetches queue with
//! every other job (the fetch concurrency holds) and nobody waits for them
//! here: each open still waits only for its own shard.

use crate::store::Manifest;
use crate::store::set::ShardName;

use super::ModelFs;

impl ModelFs {
    /// Starts fetching every absent sibling shard of `m`, if it is a shard.
    /// Never waits (see `Coordinator::prefetch`).
    pub(super) fn start_siblings(&self, m: &Manifest) {
        let Some(shard) = ShardName::parse(m.name.as_str()) else {
            return;
        };
        for k in (1..=shard.count).filter(|&k| k != shard.index) {
            let file = format!("{}.{}", shard.sibling(k), m.format);
            // A sibling the mount knows is present costs nothing more: this
            // runs on the request thread for every open of a shard, and
            // once a set is fetched every one of them is present.
            let Some(sibling) = self.namespace.lookup(&file) else {
                continue;
            };
            if sibling.present_size.is_some() {
                continue;
            }
            let pinned_by = || self.manifests_pinning(&sibling.manifest.blob);
            self.coordinator.prefetch(&sibling.manifest, &pinned_by);
        }
    }
}
