//! `modelfs ls`: what the store pins, and what of it is on disk.

use serde_json::json;

use crate::fetch::error::{human_bytes, redact_url};
use crate::store::{BlobState, Manifest, Store};

use super::{CliError, Globals};

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// One JSON object per model, in an array
    #[arg(long)]
    pub json: bool,
}

/// The state word for a manifest: `present`, `pending`, or `partial NN%`.
pub fn state_of(store: &Store, m: &Manifest) -> (String, u64) {
    match store.blob_state(&m.blob) {
        BlobState::Present(n) => ("present".into(), n),
        BlobState::Partial(n) => {
            let pct = (n.min(m.size_bytes) * 100)
                .checked_div(m.size_bytes)
                .unwrap_or(0);
            (format!("partial {pct}%"), n)
        }
        BlobState::Absent => ("pending".into(), 0),
    }
}

/// Lists every manifest; broken manifests are reported on stderr.
pub fn run(g: &Globals, a: &LsArgs) -> Result<(), CliError> {
    let store = g.store_for_reading()?;
    let mut rows = Vec::new();
    for entry in store.list_manifests()? {
        match entry {
            Ok(m) => rows.push(m),
            Err(e) => eprintln!("modelfs: skipping a manifest: {e}"),
        }
    }
    if a.json {
        let out: Vec<_> = rows
            .iter()
            .map(|m| {
                let (state, on_disk) = state_of(&store, m);
                let state_word = state.split(' ').next().unwrap_or("").to_string();
                json!({
                    "name": m.name.as_str(), "format": m.format, "file": m.file_name(),
                    "size_bytes": m.size_bytes, "state": state_word, "bytes_on_disk": on_disk,
                    "blob": m.blob.to_blob_ref(), "url": m.fetch_url().map(|u| redact_url(&u)),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("JSON values serialise")
        );
        return Ok(());
    }
    println!(
        "{:<40} {:<8} {:>10} {:<12} DIGEST",
        "NAME", "FORMAT", "SIZE", "STATE"
    );
    for m in &rows {
        let (state, _) = state_of(&store, m);
        println!(
            "{:<40} {:<8} {:>10} {:<12} {}",
            m.name.as_str(),
            m.format,
            human_bytes(m.size_bytes),
            state,
            m.blob.short()
        );
    }
    Ok(())
}
