//! What a name on the command line means when it names a split model: the
//! set (DESIGN §8). `pull`, `rm` and `verify` take the model of that name
//! if there is one, else every shard of the set it names (`NAME`, or
//! `NAME-*-of-0000N` as `ls` shows it; see `store::set::members`).

use std::sync::Arc;

use crate::gguf::Facts;
use crate::store::set::{ShardName, members};
use crate::store::{Manifest, ModelName, Store};

use super::{CliError, parse_name};

/// The models `given` means, in order; each name once. A name that means
/// none is an error saying so.
pub fn expand(store: &Store, given: &[String]) -> Result<Vec<ModelName>, CliError> {
    let mut all: Option<Vec<String>> = None;
    let mut out: Vec<ModelName> = Vec::new();
    for g in given {
        // The common case, a model of that name, costs no listing.
        if let Ok(name) = ModelName::parse(g)
            && store.read_manifest(&name)?.is_some()
        {
            push_once(&mut out, name);
            continue;
        }
        let names = match &mut all {
            Some(names) => names,
            None => all.insert(manifest_names(store)?),
        };
        let found = members(g, names.iter().map(String::as_str));
        if found.is_empty() && g.contains("-*-of-") {
            return Err(CliError::new(format!(
                "{g}: no such split model in {}; `modelfs ls` lists the sets",
                store.root().display()
            )));
        }
        if found.is_empty() {
            // Not a set: the command's own "no such model" (or a bad name).
            push_once(&mut out, parse_name(g)?);
        }
        for n in found {
            push_once(&mut out, parse_name(&n)?);
        }
    }
    Ok(out)
}

fn push_once(out: &mut Vec<ModelName>, name: ModelName) {
    if !out.contains(&name) {
        out.push(name);
    }
}

/// The names of every readable manifest.
fn manifest_names(store: &Store) -> Result<Vec<String>, CliError> {
    Ok(store
        .list_manifests()?
        .into_iter()
        .flatten()
        .map(|m| m.name.to_string())
        .collect())
}

/// The split set `given` names, as one manifest for `info`: shard 1's,
/// with the set's total size and facts summed over the shards (none unless
/// every shard has them), and the set's name (`NAME-*-of-0000N`). `None`
/// when `given` is a model or names no single complete set.
pub fn set_summary(store: &Store, given: &str) -> Result<Option<(Manifest, String)>, CliError> {
    if let Ok(name) = ModelName::parse(given)
        && store.read_manifest(&name)?.is_some()
    {
        return Ok(None);
    }
    let names = manifest_names(store)?;
    let found = members(given, names.iter().map(String::as_str));
    let shards: Vec<ShardName> = found.iter().filter_map(|n| ShardName::parse(n)).collect();
    let Some(first) = shards.first() else {
        return Ok(None);
    };
    if shards.len() != first.count as usize || shards.iter().any(|s| s.count != first.count) {
        return Ok(None);
    }
    let mut manifests = Vec::new();
    for n in &found {
        if let Some(m) = store.read_manifest(&parse_name(n)?)? {
            manifests.push(m);
        }
    }
    let Some(mut set) = manifests.first().cloned() else {
        return Ok(None);
    };
    set.size_bytes = manifests.iter().map(|m| m.size_bytes).sum();
    set.gguf = summed_facts(&manifests).map(Arc::new);
    Ok(Some((set, first.set_pattern())))
}

/// Shard 1's facts with the per-shard counts summed over the set.
fn summed_facts(shards: &[Manifest]) -> Option<Facts> {
    let all: Vec<&Facts> = shards
        .iter()
        .map(|m| m.gguf.as_deref())
        .collect::<Option<_>>()?;
    let sum = |f: fn(&Facts) -> Option<u64>| all.iter().map(|x| f(x)).sum::<Option<u64>>();
    let mut facts = all[0].clone();
    facts.parameters = sum(|f| f.parameters);
    facts.tensor_count = sum(|f| f.tensor_count);
    facts.tensor_data_bytes = sum(|f| f.tensor_data_bytes);
    facts.data_offset = None;
    Some(facts)
}
