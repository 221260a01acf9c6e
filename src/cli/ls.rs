//! `modelfs ls`: what the store pins, and what of it is on disk. A split
//! model is one line (`NAME-*-of-0000N`, its total size, the set's state
//! and progress; see `ls_sets`) unless `--shards` asks for each shard.

use serde_json::json;

use crate::store::pins::Pins;
use crate::store::{Manifest, ModelState, Store};
use crate::text::{human_bytes, human_count, redact_url};

use super::import_from::source_label;
use super::ls_sets::{Line, lines};
use super::{CliError, Globals};

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// One JSON object per model, in an array
    #[arg(long)]
    pub json: bool,
    /// One line per shard of a split model, not one per set
    #[arg(long)]
    pub shards: bool,
}

/// The state of a manifest's blob, the bytes of it on disk, and how far
/// a partial download has got (`24%`; empty otherwise).
pub fn state_of(store: &Store, m: &Manifest) -> (ModelState, u64, String) {
    let (state, on_disk) = store.disk_state(&m.blob);
    (state, on_disk, done_word(state, on_disk, m.size_bytes))
}

/// `24%` for a download under way or stopped, else empty.
pub fn done_word(state: ModelState, on_disk: u64, size: u64) -> String {
    match state {
        ModelState::Partial | ModelState::Fetching => {
            let pct = (on_disk.min(size) * 100).checked_div(size).unwrap_or(0);
            format!("{pct}%")
        }
        _ => String::new(),
    }
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
    let lines = lines(&store, &rows, !a.shards);
    if a.json {
        let out: Vec<_> = lines.iter().map(|l| line_json(l, &pins)).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("JSON values serialise")
        );
        return Ok(());
    }
    println!(
        "{:<40} {:<8} {:>10} {:<9} {:>4} {:<12} {:<14} {:>8} {:<8} {:>7} {:<6} FROM",
        "NAME",
        "FORMAT",
        "SIZE",
        "STATE",
        "DONE",
        "DIGEST",
        "ARCH",
        "PARAMS",
        "QUANT",
        "CTX",
        "PIN"
    );
    for l in &lines {
        let f = l.first.gguf.as_deref();
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        println!(
            "{:<40} {:<8} {:>10} {:<9} {:>4} {:<12} {:<14} {:>8} {:<8} {:>7} {:<6} {}",
            l.name,
            l.first.format,
            human_bytes(l.size),
            l.state.word(),
            done_word(l.state, l.on_disk, l.size),
            l.digest(),
            or_dash(f.and_then(|f| f.architecture.clone())),
            or_dash(l.parameters.map(human_count)),
            or_dash(f.and_then(|f| f.file_type.clone())),
            or_dash(f.and_then(|f| f.context_length).map(|c| c.to_string())),
            if pins.contains(&l.first.name) {
                "pinned"
            } else {
                "-"
            },
            source_label(&l.first.source),
        );
    }
    Ok(())
}

fn line_json(l: &Line, pins: &Pins) -> serde_json::Value {
    let m = l.first;
    let mut v = json!({
        "name": l.name, "format": m.format, "file": m.file_name(),
        "size_bytes": l.size, "state": l.state.word(), "bytes_on_disk": l.on_disk,
        "blob": m.blob.to_blob_ref(), "url": m.fetch_url().map(|u| redact_url(&u)),
        "gguf": m.gguf.as_ref().map(|f| f.to_json()),
        "from": source_label(&m.source),
        "pinned": pins.contains(&m.name),
    });
    if let Some(set) = &l.set {
        v["shards"] = json!(set.shards);
        v["missing_shards"] = json!(set.missing);
        v["blob"] = serde_json::Value::Null;
        if let Some(p) = l.parameters {
            v["parameters"] = json!(p);
        }
    }
    v
}
