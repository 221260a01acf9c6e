//! `modelfs ls`: what the store pins, and what of it is on disk.

use serde_json::json;

use crate::store::{Manifest, ModelState, Store};
use crate::text::{human_bytes, human_count, redact_url};

use super::{CliError, Globals};

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// One JSON object per model, in an array
    #[arg(long)]
    pub json: bool,
}

/// The state of a manifest's blob, the bytes of it on disk, and how far
/// a partial download has got (`24%`; empty otherwise).
pub fn state_of(store: &Store, m: &Manifest) -> (ModelState, u64, String) {
    let (state, on_disk) = store.disk_state(&m.blob);
    let done = match state {
        ModelState::Partial | ModelState::Fetching => {
            let pct = (on_disk.min(m.size_bytes) * 100)
                .checked_div(m.size_bytes)
                .unwrap_or(0);
            format!("{pct}%")
        }
        _ => String::new(),
    };
    (state, on_disk, done)
}

/// Lists every manifest; broken manifests are reported on stderr.
pub fn run(g: &Globals, a: &LsArgs) -> Result<(), CliError> {
    let store = g.store_for_reading()?;
    let pins = store
        .read_pins()
        .map_err(|e| CliError::new(e.to_string()))?;
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
                let (state, on_disk, _) = state_of(&store, m);
                json!({
                    "name": m.name.as_str(), "format": m.format, "file": m.file_name(),
                    "size_bytes": m.size_bytes, "state": state.word(), "bytes_on_disk": on_disk,
                    "blob": m.blob.to_blob_ref(), "url": m.fetch_url().map(|u| redact_url(&u)),
                    "gguf": m.gguf.as_ref().map(|f| f.to_json()),
                    "pinned": pins.contains(&m.name),
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
        "{:<40} {:<8} {:>10} {:<9} {:>4} {:<12} {:<14} {:>8} {:<8} {:>7} PIN",
        "NAME", "FORMAT", "SIZE", "STATE", "DONE", "DIGEST", "ARCH", "PARAMS", "QUANT", "CTX"
    );
    for m in &rows {
        let (state, _, done) = state_of(&store, m);
        let f = m.gguf.as_deref();
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        println!(
            "{:<40} {:<8} {:>10} {:<9} {:>4} {:<12} {:<14} {:>8} {:<8} {:>7} {}",
            m.name.as_str(),
            m.format,
            human_bytes(m.size_bytes),
            state.word(),
            done,
            m.blob.short(),
            or_dash(f.and_then(|f| f.architecture.clone())),
            or_dash(f.and_then(|f| f.parameters).map(human_count)),
            or_dash(f.and_then(|f| f.file_type.clone())),
            or_dash(f.and_then(|f| f.context_length).map(|c| c.to_string())),
            if pins.contains(&m.name) {
                "pinned"
            } else {
                "-"
            },
        );
    }
    Ok(())
}
