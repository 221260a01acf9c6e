//! `modelfs pull`: fetch models now, with progress.

use std::sync::atomic::AtomicBool;

use crate::fetch::{FetchJob, FetchOutcome};
use crate::store::{Manifest, Store};

use super::{CliError, Globals, parse_name, progress_view};

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// Models to fetch
    #[arg(required = true)]
    pub names: Vec<String>,
    /// Fail a download that made no progress for this long while retrying
    /// (default 15)
    #[arg(long, value_name = "SECS")]
    pub retry_for: Option<u64>,
    /// Connections one download may use at most for byte ranges (default
    /// up to 16, adapting to the origin; 1: one stream)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub connections: Option<u16>,
}

/// Fetches each named model that is not yet present, from its own source
/// and then from those of the other manifests that pin the same blob.
/// Fails (exit 1) if any of them fails; the others are still fetched. A
/// mount's back-off after wrong bytes does not apply here.
pub fn run(g: &Globals, a: &PullArgs) -> Result<(), CliError> {
    for n in a.names.iter().filter(|n| !n.contains("-*-of-")) {
        parse_name(n)?;
    }
    let store = g.store_for_writing()?;
    // A split model's name pulls every shard.
    let names = super::sets::expand(&store, &a.names)?;
    let mut fetcher = g.fetcher()?;
    if let Some(secs) = a.retry_for {
        fetcher.set_retry_for(std::time::Duration::from_secs(secs));
    }
    if let Some(n) = a.connections {
        fetcher.set_connections(n.into());
    }
    let others = store
        .list_manifests()?
        .into_iter()
        .flatten()
        .collect::<Vec<_>>();
    let terminal = super::stderr_is_terminal();
    let never = AtomicBool::new(false);
    let mut failed = Vec::new();
    for name in names {
        let Some(manifest) = store.read_manifest(&name)? else {
            eprintln!(
                "modelfs: {name}: no such model in {}; add it with `modelfs add`",
                store.root().display()
            );
            failed.push(name.to_string());
            continue;
        };
        if let Err(e) = super::room::make_room(&store, &manifest) {
            eprintln!("modelfs: {e}");
            failed.push(name.to_string());
            continue;
        }
        let (tx, rx) = crossbeam_channel::bounded(1024);
        let label = name.to_string();
        let view = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || progress_view::render(&label, rx, terminal))
            .map_err(|e| CliError::new(format!("cannot start the progress thread: {e}")))?;
        let job = FetchJob {
            manifest: &manifest,
            sources: fetcher.candidates(&manifest, &others),
            write_manifest: false,
            progress: Some(tx.into()),
            cancel: &never,
        };
        let result = fetcher.fetch(&store, &job);
        drop(job);
        let _ = view.join();
        match result {
            Ok(FetchOutcome::AlreadyPresent { .. }) => {
                println!("{name}: present");
                fill_facts(&store, &manifest);
            }
            Ok(FetchOutcome::Downloaded {
                transferred,
                resumed_from,
            }) => {
                let resumed = if resumed_from > 0 {
                    format!(", resumed at byte {resumed_from}")
                } else {
                    String::new()
                };
                println!(
                    "{name}: fetched and verified {} ({} transferred{resumed})",
                    manifest.blob.short(),
                    crate::text::human_bytes(transferred)
                );
                fill_facts(&store, &manifest);
            }
            Err(e) => {
                eprintln!("modelfs: {e}");
                failed.push(name.to_string());
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::new(format!(
            "could not fetch: {}",
            failed.join(", ")
        )))
    }
}

/// Records the GGUF facts of a pulled model read from its local file, when
/// its manifest has none (added with `--no-facts`, or its header could not
/// be read remotely), as `import` does. Only a note when that fails: the
/// pull itself succeeded.
fn fill_facts(store: &Store, m: &Manifest) {
    if m.format != "gguf" || m.gguf.is_some() {
        return;
    }
    let name = &m.name;
    let facts = store
        .open_blob(&m.blob)
        .map_err(|e| e.to_string())
        .and_then(|f| crate::gguf::facts_of_file(&f, m.size_bytes).map_err(|e| e.to_string()));
    let facts = match facts {
        Ok(f) => f,
        Err(e) => return eprintln!("note: {name}: no model facts from the local file ({e})"),
    };
    let written = store
        .lock_model_waiting(name, &mut || {})
        .map_err(|e| e.to_string())
        .and_then(|_lock| match store.read_manifest(name) {
            // Still the manifest that was pulled, still without facts.
            Ok(Some(mut now)) if now.blob == m.blob && now.gguf.is_none() => {
                now.gguf = Some(std::sync::Arc::new(facts));
                store.write_manifest(&now).map_err(|e| e.to_string())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        });
    if let Err(e) = written {
        eprintln!("note: {name}: could not record its model facts ({e})");
    }
}
