//! The lines of `modelfs ls`: one per model, and one per split set
//! (DESIGN §8), whose size and bytes on disk are its shards' sums, whose
//! state is the busiest shard's (`store::set::set_state`), whose facts are
//! shard 1's, and whose parameters are the sum over its shards when every
//! shard has its facts.

use std::collections::BTreeMap;

use crate::store::set::{ShardName, set_state};
use crate::store::{Manifest, ModelState, Store};

/// One line of the listing.
pub struct Line<'a> {
    /// The model's name, or the set's `NAME-*-of-0000N`.
    pub name: String,
    /// The model, or the set's lowest shard (shard 1 when it is pinned).
    pub first: &'a Manifest,
    pub size: u64,
    pub on_disk: u64,
    pub state: ModelState,
    pub parameters: Option<u64>,
    pub set: Option<SetLine>,
}

/// What a set's line adds.
pub struct SetLine {
    /// The shards' model names, in order.
    pub shards: Vec<String>,
    /// Shard numbers of the set no manifest pins.
    pub missing: Vec<u32>,
    pub count: u32,
}

impl Line<'_> {
    /// The DIGEST column: a model's short digest, a set's shard count.
    pub fn digest(&self) -> String {
        match &self.set {
            None => self.first.blob.short(),
            Some(s) if s.missing.is_empty() => format!("{} shards", s.count),
            Some(s) => format!("{}/{} shards", s.shards.len(), s.count),
        }
    }
}

/// The listing's lines in name order (a set at its first shard's name);
/// shards grouped into sets when `group`.
pub fn lines<'a>(store: &Store, rows: &'a [Manifest], group: bool) -> Vec<Line<'a>> {
    let mut out: Vec<(String, Line<'a>)> = Vec::new();
    let mut sets: BTreeMap<(String, u32), Vec<(u32, &'a Manifest)>> = BTreeMap::new();
    for m in rows {
        match ShardName::parse(m.name.as_str()).filter(|_| group) {
            Some(s) => sets
                .entry((s.prefix, s.count))
                .or_default()
                .push((s.index, m)),
            None => out.push((m.name.to_string(), single(store, m))),
        }
    }
    for ((prefix, count), mut shards) in sets {
        shards.sort_by_key(|(k, _)| *k);
        let line = set_line(store, &prefix, count, &shards);
        out.push((shards[0].1.name.to_string(), line));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.into_iter().map(|(_, l)| l).collect()
}

fn single<'a>(store: &Store, m: &'a Manifest) -> Line<'a> {
    let (state, on_disk) = store.disk_state(&m.blob);
    Line {
        name: m.name.to_string(),
        first: m,
        size: m.size_bytes,
        on_disk,
        state,
        parameters: m.gguf.as_ref().and_then(|f| f.parameters),
        set: None,
    }
}

fn set_line<'a>(
    store: &Store,
    prefix: &str,
    count: u32,
    shards: &[(u32, &'a Manifest)],
) -> Line<'a> {
    let disk: Vec<(ModelState, u64)> = shards
        .iter()
        .map(|(_, m)| store.disk_state(&m.blob))
        .collect();
    let parameters = shards
        .iter()
        .map(|(_, m)| m.gguf.as_ref().and_then(|f| f.parameters))
        .sum::<Option<u64>>()
        .filter(|_| shards.len() == count as usize);
    Line {
        name: format!("{prefix}-*-of-{count:05}"),
        first: shards[0].1,
        size: shards.iter().map(|(_, m)| m.size_bytes).sum(),
        on_disk: disk.iter().map(|(_, n)| n).sum(),
        state: set_state(disk.iter().map(|(s, _)| *s)),
        parameters,
        set: Some(SetLine {
            shards: shards.iter().map(|(_, m)| m.name.to_string()).collect(),
            missing: (1..=count)
                .filter(|k| !shards.iter().any(|(i, _)| i == k))
                .collect(),
            count,
        }),
    }
}
