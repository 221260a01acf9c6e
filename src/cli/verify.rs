//! `modelfs verify`: re-hash present blobs; quarantine the ones that lie.

use crate::digest::hash_reader;
use crate::store::{BlobState, lock};

use super::{CliError, Globals, parse_name};

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Models to verify (default: all)
    pub names: Vec<String>,
}

/// Re-hashes the blob of each named (or every) model. A blob whose bytes
/// do not match its digest is moved to quarantine, so the next open fetches
/// it again. Exit 1 if any blob was bad.
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
        let _l = lock::lock_waiting(&store.lock_path(&m.name), &|| false, &mut || {})
            .map_err(|e| CliError::new(format!("{}: cannot take the store lock: {e}", m.name)))?;
        let (actual, size) = store
            .open_blob(&m.blob)
            .map_err(|e| CliError::new(format!("{}: {e}", m.name)))
            .and_then(|f| {
                hash_reader(f)
                    .map_err(|e| CliError::new(format!("{}: cannot read its blob: {e}", m.name)))
            })?;
        if actual.ct_eq(&m.blob) {
            println!("{}: ok ({size} bytes)", m.name);
            continue;
        }
        let q = store.quarantine_blob(&m.blob, &format!("verify-failed-{}", m.name))?;
        eprintln!(
            "modelfs: {}: blob {} hashes to {actual}; moved to {} (it will be fetched again on next open or pull)",
            m.name,
            m.blob,
            q.display()
        );
        bad.push(m.name.to_string());
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
