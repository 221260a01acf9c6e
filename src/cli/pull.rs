//! `modelfs pull`: fetch models now, with progress.

use std::sync::atomic::AtomicBool;

use crate::fetch::{FetchJob, FetchOutcome};

use super::{CliError, Globals, parse_name, progress_view};

#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// Models to fetch
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// Fetches each named model that is not yet present. Fails (exit 1) if any
/// of them fails; the others are still fetched.
pub fn run(g: &Globals, a: &PullArgs) -> Result<(), CliError> {
    let names = a
        .names
        .iter()
        .map(|n| parse_name(n))
        .collect::<Result<Vec<_>, _>>()?;
    let store = g.store_for_writing()?;
    let fetcher = g.fetcher()?;
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
        let (tx, rx) = crossbeam_channel::bounded(1024);
        let label = name.to_string();
        let view = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || progress_view::render(&label, rx, terminal))
            .map_err(|e| CliError::new(format!("cannot start the progress thread: {e}")))?;
        let job = FetchJob {
            manifest: &manifest,
            sources: Vec::new(),
            write_manifest: false,
            progress: Some(tx.into()),
            cancel: &never,
        };
        let result = fetcher.fetch(&store, &job);
        drop(job);
        let _ = view.join();
        match result {
            Ok(FetchOutcome::AlreadyPresent { .. }) => println!("{name}: present"),
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
                    crate::fetch::error::human_bytes(transferred)
                );
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
