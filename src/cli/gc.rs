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
//! cannot parse never costs its blob; like every manifest read, that scan
//! reads only regular files of at most `MAX_MANIFEST_BYTES` and never
//! follows a symlink or opens a FIFO or a device, so no file in
//! `manifests/` can make gc hang or fill memory.
//!
//! Staging files of imports that are not running
//! (`blobs/sha256/.import-<pid>-<name>`: a killed `import`) are deleted; an
//! import holds its name's lock while its staging file exists, so gc
//! deletes one only while it holds that lock itself (see
//! `store::staging`).
//!
//! Quarantined files (bytes that failed verification, kept for
//! inspection) are reported and deleted too, unless `--keep-quarantine` is
//! given.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::digest::Sha256;
use crate::store::{Store, read_manifest_bytes};
use crate::text::human_bytes;

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

/// `d` in whole seconds as an `i64`, saturating: a huge grace period
/// keeps everything rather than wrapping round to a negative one.
fn secs_i64(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
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
    let grace = secs_i64(grace());
    let (mut freed, mut count) = (0u64, 0usize);
    for (d, size) in store.list_blobs()? {
        if referenced.contains(&d) {
            continue;
        }
        let Some(meta) = store.stat_blob(&d) else {
            continue;
        };
        if now.saturating_sub(meta.ctime()) < grace {
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
        let Ok(held) = store.try_lock_partial(&d, false) else {
            continue;
        };
        let Some(_held) = held else {
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
    let (f, c) = collect_stale_imports(&store, a.dry_run)?;
    freed += f;
    count += c;
    let (q_freed, q_count) = collect_quarantine(&store, a)?;
    freed += q_freed;
    count += q_count;
    let verb = if a.dry_run { "would free" } else { "freed" };
    println!("{verb} {} in {count} file(s)", human_bytes(freed));
    Ok(())
}

/// Deletes the staging files of imports that are not running; the bytes
/// freed and how many.
fn collect_stale_imports(store: &Store, dry_run: bool) -> Result<(u64, usize), CliError> {
    let (mut freed, mut count) = (0, 0);
    for stale in store.stale_imports() {
        println!(
            "{} {} (left by an import that is not running, {})",
            if dry_run { "would delete" } else { "deleting" },
            stale.file_name,
            human_bytes(stale.freed)
        );
        freed += stale.freed;
        count += 1;
        if !dry_run {
            let f = stale.file_name.clone();
            store
                .remove_stale_import(stale)
                .map_err(|e| CliError::new(format!("cannot delete {f}: {e}")))?;
        }
    }
    Ok((freed, count))
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
    for m in store.list_manifests()? {
        match m {
            Ok(m) => {
                set.insert(m.blob);
            }
            Err(e) => eprintln!("modelfs: skipping a manifest: {e}"),
        }
    }
    // Broken manifests: keep anything that looks like a digest in them.
    // Special files and oversize ones were reported by `list_manifests`
    // when named `*.json`; other names are none of gc's business.
    if let Ok(dir) = fs::read_dir(store.manifests_dir()) {
        for e in dir.flatten() {
            let Ok(bytes) = read_manifest_bytes(&e.path()) else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes);
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
