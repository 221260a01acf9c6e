//! `modelfs gc`: free blobs no manifest names and abandoned partials
//! ([`crate::store::Store::collect_garbage`] decides and deletes; this prints what it
//! did). The `MODELFS_GC_GRACE_SECS` environment variable overrides the
//! grace period ([`gc::GRACE`]).

use std::collections::HashMap;

use crate::store::evict::EvictEvent;
use crate::store::gc::{self, GcEvent, GcOptions};
use crate::store::settings::Amount;
use crate::text::human_bytes;

use super::{CliError, Globals};

#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// Report what would be deleted, delete nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Keep the files in quarantine (bytes that failed verification)
    #[arg(long)]
    pub keep_quarantine: bool,
    /// Then evict least recently opened models, neither pinned nor open, until the blobs take at most SIZE (300G, 512M)
    #[arg(long, value_name = "SIZE")]
    pub evict_to: Option<String>,
}

/// Deletes unreferenced blobs and orphaned partials; prints bytes freed.
pub fn run(g: &Globals, a: &GcArgs) -> Result<(), CliError> {
    let store = g.store_for_reading()?;
    let opts = GcOptions {
        dry_run: a.dry_run,
        keep_quarantine: a.keep_quarantine,
        grace: gc::grace_from_env(),
    };
    let sum = store
        .collect_garbage(&opts, &mut |e| print_event(&opts, e))
        .map_err(|e| CliError::new(e.to_string()))?;
    let verb = if a.dry_run { "would free" } else { "freed" };
    println!(
        "{verb} {} in {} file(s)",
        human_bytes(sum.freed_bytes),
        sum.files
    );
    match &a.evict_to {
        Some(size) => evict_to(&store, size, a.dry_run),
        None => Ok(()),
    }
}

/// `--evict-to SIZE`: evicts by the store's rules (`store::evict`) until
/// blobs and partials take at most `size`.
fn evict_to(store: &crate::store::Store, size: &str, dry_run: bool) -> Result<(), CliError> {
    let target = match Amount::parse(size) {
        Ok(Amount::Bytes(b)) => b,
        Ok(Amount::Percent(_)) => {
            return Err(CliError::new(format!(
                "gc --evict-to {size}: give a size (300G, 512M), not a percentage"
            )));
        }
        Err(e) => return Err(CliError::new(format!("gc --evict-to: {e}"))),
    };
    let view = store.cache_view(&HashMap::new(), None)?;
    let need = view.usage.total().saturating_sub(target);
    let verb = if dry_run { "would evict" } else { "evicting" };
    let done = store.evict(&view, need, dry_run, &mut |e| match e {
        EvictEvent::Evicted { size, names, .. } => {
            println!("{verb} {} ({})", join(&names), human_bytes(size))
        }
        EvictEvent::Open { names, .. } => println!("keeping {} (open)", join(&names)),
        EvictEvent::Busy { names, .. } => {
            println!("keeping {} (a producer holds its lock)", join(&names))
        }
    })?;
    let verb = if dry_run { "would evict" } else { "evicted" };
    println!("{verb} {}", human_bytes(done.freed));
    if done.short > 0 {
        let pinned: u64 = done.pinned.iter().map(|(_, s)| s).sum();
        return Err(CliError::new(format!(
            "gc --evict-to {size}: {} still over after evicting everything evictable \
             (pinned: {}; open: {} model(s)); unpin or close models",
            human_bytes(done.short),
            human_bytes(pinned),
            done.open.len()
        )));
    }
    Ok(())
}

fn join(names: &[crate::store::ModelName]) -> String {
    names
        .iter()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line for one file gc considered.
fn print_event(opts: &GcOptions, e: GcEvent) {
    let verb = if opts.dry_run {
        "would delete"
    } else {
        "deleting"
    };
    match e {
        GcEvent::SkippedManifest(e) => eprintln!("modelfs: skipping a manifest: {e}"),
        GcEvent::YoungBlob { digest, grace_secs } => println!(
            "keeping {} (placed less than {grace_secs} s ago)",
            digest.short()
        ),
        GcEvent::Blob { digest, size } => {
            println!("{verb} blob {digest} ({})", human_bytes(size))
        }
        GcEvent::BusyPartial { digest } => println!(
            "keeping partial {} (a download is writing it)",
            digest.short()
        ),
        GcEvent::Partial { digest, size } => {
            println!("{verb} partial {} ({})", digest.short(), human_bytes(size))
        }
        GcEvent::StaleImport { file_name, freed } => println!(
            "{verb} {file_name} (left by an import that is not running, {})",
            human_bytes(freed)
        ),
        GcEvent::Quarantined { path, size, kept } => println!(
            "{} quarantined {} ({})",
            if kept { "keeping" } else { verb },
            path.display(),
            human_bytes(size)
        ),
    }
}
