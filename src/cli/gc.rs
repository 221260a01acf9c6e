//! `modelfs gc`: free blobs no manifest names and abandoned partials
//! ([`crate::store::Store::collect_garbage`] decides and deletes; this prints what it
//! did). The `MODELFS_GC_GRACE_SECS` environment variable overrides the
//! grace period ([`gc::GRACE`]).

use crate::store::gc::{self, GcEvent, GcOptions};
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
    Ok(())
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
