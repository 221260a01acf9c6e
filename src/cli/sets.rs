//! What a name on the command line means when it names a split model: the
//! set (DESIGN §8). `pull`, `rm` and `verify` take the model of that name
//! if there is one, else every shard of the set it names (`NAME`, or
//! `NAME-*-of-0000N` as `ls` shows it; see `store::set::members`).

use crate::store::set::members;
use crate::store::{ModelName, Store};

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
