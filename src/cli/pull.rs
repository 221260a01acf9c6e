//! `modelfs pull`: fetch models now, with progress.

use std::sync::atomic::AtomicBool;

use crate::fetch::{FetchJob, FetchOutcome};

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
    let names = a
        .names
        .iter()
        .map(|n| parse_name(n))
        .collect::<Result<Vec<_>, _>>()?;
    let store = g.store_for_writing()?;
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
                    crate::text::human_bytes(transferred)
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
