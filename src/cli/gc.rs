//! `modelfs gc`: free blobs no manifest names and abandoned partials.
//!
//! Safe against concurrent producers: a partial is deleted only while gc
//! itself holds its lock (a fetcher that locks it afterwards notices the
//! file is gone and starts a new one); a blob is deleted only if no manifest
//! names it and it was placed more than [`GRACE`] ago, which covers the
//! window between a producer's rename and its manifest write (the
//! `MODELFS_GC_GRACE_SECS` environment variable overrides it, for tests and
//! for stores whose producers are known to be idle). Partials of
//! models a manifest still names are kept: they are resumable downloads.
//! Unparseable manifests are scanned for digests too, so a manifest gc
//! cannot read never costs its blob. Quarantined files (bytes that failed
//! verification, kept for inspection) are reported and deleted too, unless
//! `--keep-quarantine` is given.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::digest::Sha256;
use crate::fetch::error::human_bytes;
use crate::store::{Store, lock};

use super::{CliError, Globals};

/// Blobs placed more recently than this are never collected.
pub const GRACE: Duration = Duration::from_secs(60);

/// [`GRACE`], or `MODELFS_GC_GRACE_SECS` when set to a number of seconds.
fn grace() -> Duration {
    std::env::var("MODELFS_GC_GRACE_SECS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map_or(GRACE, Duration::from_secs)
}

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
    let referenced = referenced_digests(&store)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let grace = grace().as_secs() as i64;
    let (mut freed, mut count) = (0u64, 0usize);
    for (d, size) in store.list_blobs()? {
        if referenced.contains(&d) {
            continue;
        }
        let Some(meta) = store.stat_blob(&d) else {
            continue;
        };
        if now - meta.ctime() < grace {
            println!("keeping {} (placed less than {grace} s ago)", d.short());
            continue;
        }
        println!(
            "{} blob {} ({})",
            if a.dry_run {
                "would delete"
            } else {
                "deleting"
            },
            d,
            human_bytes(size)
        );
        if !a.dry_run {
            store
                .remove_blob(&d)
                .map_err(|e| CliError::new(format!("cannot delete blob {d}: {e}")))?;
        }
        freed += size;
        count += 1;
    }
    for (d, size) in store.list_partials()? {
        if referenced.contains(&d) {
            continue;
        }
        let Ok(file) = store.open_existing_partial(&d) else {
            continue;
        };
        let Ok(Some(_held)) = lock::try_lock_file(file) else {
            println!("keeping partial {} (a download is writing it)", d.short());
            continue;
        };
        println!(
            "{} partial {} ({})",
            if a.dry_run {
                "would delete"
            } else {
                "deleting"
            },
            d.short(),
            human_bytes(size)
        );
        if !a.dry_run {
            store
                .remove_partial(&d)
                .map_err(|e| CliError::new(format!("cannot delete partial {d}: {e}")))?;
        }
        freed += size;
        count += 1;
    }
    let (q_freed, q_count) = collect_quarantine(&store, a)?;
    freed += q_freed;
    count += q_count;
    let verb = if a.dry_run { "would free" } else { "freed" };
    println!("{verb} {} in {count} file(s)", human_bytes(freed));
    Ok(())
}

/// Reports the quarantined files and deletes them unless told to keep
/// them. Only regular files are deleted (a name is never followed).
fn collect_quarantine(store: &Store, a: &GcArgs) -> Result<(u64, usize), CliError> {
    let dir = store.quarantine_dir();
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok((0, 0));
    };
    let (mut freed, mut count) = (0u64, 0usize);
    for e in entries.flatten() {
        let Ok(meta) = e.path().symlink_metadata() else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let verb = match (a.keep_quarantine, a.dry_run) {
            (true, _) => "keeping",
            (false, true) => "would delete",
            (false, false) => "deleting",
        };
        println!(
            "{verb} quarantined {} ({})",
            e.path().display(),
            human_bytes(meta.len())
        );
        if a.keep_quarantine {
            continue;
        }
        if !a.dry_run {
            fs::remove_file(e.path()).map_err(|err| {
                CliError::new(format!(
                    "cannot delete quarantined file {}: {err}",
                    e.path().display()
                ))
            })?;
        }
        freed += meta.len();
        count += 1;
    }
    Ok((freed, count))
}

/// Digests named by any manifest file, parseable or not.
fn referenced_digests(store: &Store) -> Result<HashSet<Sha256>, CliError> {
    let mut set = HashSet::new();
    set.extend(
        store
            .list_manifests()?
            .into_iter()
            .flatten()
            .map(|m| m.blob),
    );
    // Broken manifests: keep anything that looks like a digest in them.
    if let Ok(dir) = fs::read_dir(store.manifests_dir()) {
        for e in dir.flatten() {
            let Ok(text) = fs::read_to_string(e.path()) else {
                continue;
            };
            for (i, _) in text.match_indices("sha256:") {
                if let Some(hex) = text.get(i + 7..i + 71)
                    && let Ok(d) = Sha256::from_hex(hex)
                {
                    set.insert(d);
                }
            }
        }
    }
    Ok(set)
}
