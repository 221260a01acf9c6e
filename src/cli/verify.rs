//! `modelfs verify`: re-hash present blobs; quarantine the ones that lie
//! ([`Store::verify_model`] does it; this picks the models and prints).

use crate::store::verify::Verified;
use crate::store::{Manifest, Store};

use super::{CliError, Globals};

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Models to verify (default: all)
    pub names: Vec<String>,
}

/// Re-hashes the blob of each named (or every) model. A blob whose bytes
/// match gets its stamps recorded (so the mount need not hash it again); one
/// whose bytes do not is moved to quarantine, so the next open fetches it
/// again when the model has a URL, and fails until it is imported or
/// re-added otherwise. Exit 1 if any blob was bad.
pub fn run(g: &Globals, a: &VerifyArgs) -> Result<(), CliError> {
    let store = g.store_for_reading()?;
    let mut bad = Vec::new();
    for m in chosen_manifests(&store, &a.names)? {
        match store
            .verify_model(&m)
            .map_err(|e| CliError::new(e.to_string()))?
        {
            Verified::NotPresent => println!("{}: not present, nothing to verify", m.name),
            Verified::Ok { size } => println!("{}: ok ({size} bytes)", m.name),
            Verified::Quarantined {
                actual,
                quarantined,
                refetchable,
            } => {
                let next = if refetchable {
                    "it will be fetched again on next open or pull"
                } else {
                    "the model has no URL, so it stays pending: import the right file again \
                     (`modelfs import PATH --name NAME`) or re-add it with a URL"
                };
                eprintln!(
                    "modelfs: {}: blob {} hashes to {actual}; moved to {} ({next})",
                    m.name,
                    m.blob,
                    quarantined.display()
                );
                bad.push(m.name.to_string());
            }
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(CliError::new(format!(
            "corrupt blobs quarantined: {}",
            bad.join(", ")
        )))
    }
}

/// The manifests of the named models, or every readable one.
fn chosen_manifests(store: &Store, names: &[String]) -> Result<Vec<Manifest>, CliError> {
    if names.is_empty() {
        return Ok(store
            .list_manifests()?
            .into_iter()
            .filter_map(Result::ok)
            .collect());
    }
    let mut v = Vec::new();
    // A split model's name verifies every shard.
    for name in super::sets::expand(store, names)? {
        v.push(
            store
                .read_manifest(&name)?
                .ok_or_else(|| CliError::new(format!("{name}: no such model")))?,
        );
    }
    Ok(v)
}
