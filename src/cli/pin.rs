//! `modelfs pin NAME…` / `modelfs unpin NAME…`: models eviction never
//! deletes (the list is the store's, `store::pins`). A split set is named
//! by its prefix or any shard, and pinned as one.

use crate::store::pins::expand_set;
use crate::store::{ModelName, Store};

use super::{CliError, Globals, parse_name};

#[derive(Debug, clap::Args)]
pub struct PinArgs {
    /// Models (a split set by its name without -0000k-of-0000N, or any shard)
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

/// Pins the models; every name must be a model (or a set) of the store.
pub fn run_pin(g: &Globals, a: &PinArgs) -> Result<(), CliError> {
    change(g, a, true, |changed, n| {
        let how = if changed { "pinned" } else { "already pinned" };
        format!("{how} {n} (never evicted)")
    })
}

/// Unpins the models; a name that is pinned but has no manifest any more
/// can be unpinned too.
pub fn run_unpin(g: &Globals, a: &PinArgs) -> Result<(), CliError> {
    change(g, a, false, |changed, n| {
        let how = if changed {
            "unpinned"
        } else {
            "was not pinned:"
        };
        format!("{how} {n}")
    })
}

/// Pins (`pin`) or unpins the named models and prints `line` for each,
/// told whether that call changed it. Only pinning needs a manifest.
fn change(
    g: &Globals,
    a: &PinArgs,
    pin: bool,
    line: impl Fn(bool, &ModelName) -> String,
) -> Result<(), CliError> {
    let store = g.store_for_writing()?;
    let names = resolve(&store, &a.names, pin)?;
    let changed = store
        .change_pins(&names, pin)
        .map_err(|e| CliError::new(e.to_string()))?;
    for n in &names {
        println!("{}", line(changed.contains(n), n));
    }
    Ok(())
}

/// The model names `given` means (sets expanded); with `must_exist`, a
/// name that is neither a model nor a set is an error.
fn resolve(store: &Store, given: &[String], must_exist: bool) -> Result<Vec<ModelName>, CliError> {
    let all: Vec<ModelName> = store
        .list_manifests()?
        .into_iter()
        .flatten()
        .map(|m| m.name)
        .collect();
    let mut out = Vec::new();
    for g in given {
        let g = g.strip_suffix(".gguf").unwrap_or(g);
        let found = expand_set(g, &all);
        if found.is_empty() {
            if must_exist {
                return Err(CliError::new(format!(
                    "no model {g:?} in the store {} (see `modelfs ls`)",
                    store.root().display()
                )));
            }
            out.push(parse_name(g)?);
        }
        out.extend(found.into_iter().cloned());
    }
    out.dedup();
    Ok(out)
}
