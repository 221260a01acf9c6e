//! `modelfs status`: what every model is doing, read from a mount's
//! extended attributes (live download progress of that mount) or, without a
//! mountpoint, from the store (partial files show downloads by any process).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar};
use serde_json::json;

use crate::fs::xattr;
use crate::store::ModelState;
use crate::store::set::{ShardName, set_state, state_of_word};
use crate::text::human_bytes;

use super::{CliError, Globals, progress_view};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// A modelfs mountpoint (default: the store itself)
    pub mountpoint: Option<PathBuf>,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
    /// Keep updating until no download is in progress
    #[arg(long, short)]
    pub watch: bool,
    /// One row per shard of a split model, not one per set
    #[arg(long)]
    pub shards: bool,
}

/// One model's state.
#[derive(Debug, Clone)]
pub struct ModelStatus {
    pub file: String,
    pub state: String,
    pub done: u64,
    pub total: u64,
    pub sha256: String,
    pub error: Option<String>,
    /// Connections the running download uses (a mount knows; the store
    /// alone does not).
    pub connections: Option<u16>,
    /// Where the running download takes the bytes from, or where the
    /// mount's last fetch got them (a mount knows).
    pub source: Option<String>,
}

/// Prints the state of every model; with `--watch`, until all downloads end.
pub fn run(g: &Globals, a: &StatusArgs) -> Result<(), CliError> {
    let read = || -> Result<Vec<ModelStatus>, CliError> {
        let rows = match &a.mountpoint {
            Some(mp) => from_mount(mp)?,
            None => from_store(g)?,
        };
        Ok(if a.shards { rows } else { grouped(rows) })
    };
    if !a.watch {
        let rows = read()?;
        if a.json {
            print_json(&rows)
        } else {
            print_table(&rows)
        }
        return Ok(());
    }
    if a.json {
        // One JSON document per second, one per line, until idle.
        loop {
            let rows = read()?;
            println!(
                "{}",
                serde_json::to_string(&to_json(&rows)).expect("JSON values serialise")
            );
            if !rows.iter().any(|r| r.state == ModelState::Fetching.word()) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    watch(read, super::stderr_is_terminal())
}

fn watch(
    read: impl Fn() -> Result<Vec<ModelStatus>, CliError>,
    terminal: bool,
) -> Result<(), CliError> {
    let multi = MultiProgress::new();
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    let mut last_lines = Instant::now() - Duration::from_secs(60);
    loop {
        let rows = read()?;
        let fetching: Vec<_> = rows
            .iter()
            .filter(|r| r.state == ModelState::Fetching.word())
            .collect();
        if terminal {
            for r in &fetching {
                // A bar starts where the download is when first seen, so
                // the bytes it had already are not counted as a rate.
                let bar = bars
                    .entry(r.file.clone())
                    .or_insert_with(|| multi.add(progress_view::new_bar(&r.file, r.done, r.total)));
                bar.set_length(r.total);
                bar.set_position(r.done);
                bar.set_message(watched_rate(bar, r.connections));
            }
            // A download that ended leaves no stale bar behind.
            bars.retain(|file, bar| {
                let running = fetching.iter().any(|r| &r.file == file);
                if !running {
                    bar.finish_and_clear();
                }
                running
            });
        } else if last_lines.elapsed() >= Duration::from_secs(5) {
            for r in &fetching {
                eprintln!(
                    "{}: {} / {}, {}",
                    r.file,
                    human_bytes(r.done),
                    human_bytes(r.total),
                    fetching_word(r.connections)
                );
            }
            last_lines = Instant::now();
        }
        if fetching.is_empty() {
            let _ = multi.clear();
            print_table(&rows);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The rate a watched bar has seen, once it has seen one (a mount's
/// attributes carry positions only).
fn watched_rate(bar: &ProgressBar, connections: Option<u16>) -> String {
    let word = fetching_word(connections);
    if bar.elapsed() < Duration::from_secs(2) {
        return word;
    }
    let left = bar.length().unwrap_or(0).saturating_sub(bar.position());
    progress_view::with_rate(bar.per_sec(), left, &word)
}

/// `fetching`, or `fetching over 16 connections`.
fn fetching_word(connections: Option<u16>) -> String {
    match connections {
        Some(n) if n > 1 => format!("fetching over {n} connections"),
        _ => "fetching".into(),
    }
}

/// The filesystem type of the topmost mount at exactly `mp`, or `None`
/// when `mp` is not a mountpoint.
fn fstype_at(mp: &Path) -> Option<String> {
    let canon = mp.canonicalize().ok()?;
    super::mountpoint::mounted_at(&canon).map(|(fstype, _)| fstype)
}

/// Refuses a directory that is not a modelfs mount, naming what it is.
fn check_is_modelfs_mount(mp: &Path) -> Result<(), CliError> {
    match fstype_at(mp) {
        Some(t) if t == "fuse.modelfs" => Ok(()),
        found => {
            let what = match found {
                Some(t) => format!("a {t} mount"),
                None if mp.is_dir() => "not a mountpoint".to_string(),
                None => "not a directory".to_string(),
            };
            Err(CliError::new(format!(
                "status: {} is not a modelfs mount ({what}); give the mountpoint of a \
                 `modelfs mount`, or no argument for the store's own view",
                mp.display()
            )))
        }
    }
}

fn from_mount(mp: &Path) -> Result<Vec<ModelStatus>, CliError> {
    check_is_modelfs_mount(mp)?;
    let dir = std::fs::read_dir(mp)
        .map_err(|e| CliError::new(format!("status: cannot list {}: {e}", mp.display())))?;
    let mut rows = Vec::new();
    for e in dir.flatten() {
        let path = e.path();
        let Some(state) = get_xattr(&path, xattr::STATE) else {
            return Err(CliError::new(format!(
                "status: {} has no {} attribute; is {} a modelfs mount?",
                path.display(),
                xattr::STATE,
                mp.display()
            )));
        };
        let progress = get_xattr(&path, xattr::PROGRESS).unwrap_or_default();
        let mut nums = progress.split(' ').map(|n| n.parse::<u64>().unwrap_or(0));
        rows.push(ModelStatus {
            file: e.file_name().to_string_lossy().into_owned(),
            state,
            done: nums.next().unwrap_or(0),
            total: nums.next().unwrap_or(0),
            sha256: get_xattr(&path, xattr::SHA256).unwrap_or_default(),
            error: get_xattr(&path, xattr::ERROR),
            connections: get_xattr(&path, xattr::CONNECTIONS).and_then(|v| v.parse().ok()),
            source: get_xattr(&path, xattr::SOURCE),
        });
    }
    rows.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(rows)
}

fn from_store(g: &Globals) -> Result<Vec<ModelStatus>, CliError> {
    let store = g.store_for_reading()?;
    let mut rows = Vec::new();
    for m in store.list_manifests()? {
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                eprintln!("modelfs: skipping a manifest: {e}");
                continue;
            }
        };
        let (state, done) = store.disk_state(&m.blob);
        rows.push(ModelStatus {
            file: m.file_name(),
            state: state.word().into(),
            done,
            total: m.size_bytes,
            sha256: m.blob.to_hex(),
            error: None,
            connections: None,
            source: None,
        });
    }
    Ok(rows)
}

/// Split sets as one row each (DESIGN §8): `NAME-*-of-0000N.gguf`, with
/// the shards' bytes summed, the busiest shard's state
/// (`store::set::set_state`), the first error and the connections of all.
fn grouped(rows: Vec<ModelStatus>) -> Vec<ModelStatus> {
    let mut out = Vec::new();
    let mut sets: BTreeMap<(String, u32, String), Vec<ModelStatus>> = BTreeMap::new();
    for r in rows {
        let shard = r.file.rsplit_once('.').and_then(|(stem, ext)| {
            ShardName::parse(stem).map(|s| (s.prefix, s.count, ext.to_string()))
        });
        match shard {
            Some(key) => sets.entry(key).or_default().push(r),
            None => out.push(r),
        }
    }
    for ((prefix, count, ext), shards) in sets {
        let state = set_state(shards.iter().filter_map(|r| state_of_word(&r.state)));
        let connections: u16 = shards.iter().filter_map(|r| r.connections).sum();
        out.push(ModelStatus {
            file: format!("{prefix}-*-of-{count:05}.{ext}"),
            state: state.word().into(),
            done: shards.iter().map(|r| r.done).sum(),
            total: shards.iter().map(|r| r.total).sum(),
            sha256: String::new(),
            error: shards.iter().find_map(|r| r.error.clone()),
            connections: (connections > 0).then_some(connections),
            source: shards.iter().find_map(|r| r.source.clone()),
        });
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    out
}

/// The xattr `name` of `path` as text, if it has one of at most 4 KiB.
fn get_xattr(path: &Path, name: &str) -> Option<String> {
    String::from_utf8(crate::sys::getxattr(path, name, 4096)?).ok()
}

fn to_json(rows: &[ModelStatus]) -> serde_json::Value {
    rows.iter()
        .map(|r| {
            json!({"file": r.file, "state": r.state, "bytes_done": r.done, "bytes_total": r.total,
                   "sha256": r.sha256, "error": r.error, "connections": r.connections,
                   "source": r.source})
        })
        .collect()
}

fn print_json(rows: &[ModelStatus]) {
    println!(
        "{}",
        serde_json::to_string_pretty(&to_json(rows)).expect("JSON values serialise")
    );
}

fn print_table(rows: &[ModelStatus]) {
    println!("{:<44} {:<9} {:>22}  DIGEST", "FILE", "STATE", "PROGRESS");
    for r in rows {
        let progress = format!("{} / {}", human_bytes(r.done), human_bytes(r.total));
        println!(
            "{:<44} {:<9} {:>22}  {}",
            r.file,
            r.state,
            progress,
            r.sha256.get(..12).unwrap_or("")
        );
        if let Some(src) = &r.source {
            let word = if r.state == "fetching" {
                "from"
            } else {
                "fetched from"
            };
            println!("    {word} {src}");
        }
        if let Some(e) = &r.error {
            println!("    last error: {e}");
        }
    }
}
