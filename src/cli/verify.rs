//! `modelfs verify`: re-hash present blobs; quarantine the ones that lie.

use std::sync::atomic::AtomicBool;

use crate::store::BlobState;
use crate::store::verified::Recheck;

use super::{CliError, Globals, parse_name};

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
    let manifests: Vec<_> = if a.names.is_empty() {
        store
            .list_manifests()?
            .into_iter()
            .filter_map(Result::ok)
            .collect()
    } else {
        let mut v = Vec::new();
        for n in &a.names {
            let name = parse_name(n)?;
            v.push(
                store
                    .read_manifest(&name)?
                    .ok_or_else(|| CliError::new(format!("{name}: no such model")))?,
            );
        }
        v
    };
    let mut bad = Vec::new();
    for m in manifests {
        let BlobState::Present(_) = store.blob_state(&m.blob) else {
            println!("{}: not present, nothing to verify", m.name);
            continue;
        };
        // Hold the producer lock so a fetch does not race the quarantine.
        let _l = store
            .lock_model_waiting(&m.name, &mut || {})
            .map_err(|e| CliError::new(format!("{}: cannot take the store lock: {e}", m.name)))?;
        let never = AtomicBool::new(false);
        let rechecked = store
            .recheck_blob(&m.blob, m.name.as_str(), "verify", &never, &mut |_| {})
            .map_err(|e| CliError::new(format!("{}: cannot hash its blob: {e}", m.name)))?;
        match rechecked {
            Recheck::Matched(f) => {
                let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                println!("{}: ok ({size} bytes)", m.name);
            }
            Recheck::Absent => println!("{}: not present, nothing to verify", m.name),
            Recheck::Mismatch {
                actual,
                quarantined,
            } => {
                let next = if m.source.fetch_url().is_some() {
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
