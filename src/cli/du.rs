//! `modelfs du [--json]`: what the store's blobs take, its limits, what is
//! pinned or open, and what eviction would delete next.

use std::collections::HashMap;

use serde_json::json;

use crate::digest::Sha256;
use crate::store::Store;
use crate::store::evict::{self, Limits, Usage};
use crate::text::human_bytes;

use super::{CliError, Globals};

/// How many of the next victims `du` names.
const NEXT_SHOWN: usize = 10;

#[derive(Debug, clap::Args)]
pub struct DuArgs {
    /// One JSON object
    #[arg(long)]
    pub json: bool,
    /// Time choosing victims among N made-up blobs and print the nanoseconds (bench row 15)
    #[arg(long, hide = true, value_name = "N")]
    pub bench_plan: Option<usize>,
}

/// Times [`evict::plan`] over `n` made-up entries (random sizes, times,
/// one in ten pinned) asked to free all but the last one's worth; prints
/// `plan_ns <ns> victims <count> blobs <n>`.
fn bench_plan(n: usize) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let entries: Vec<evict::Entry> = (0..n as u64)
        .map(|i| evict::Entry {
            blob: crate::digest::Sha256::of(&i.to_le_bytes()),
            size: next() % (8 << 30),
            last_open: next() % 100_000_000,
            pinned: next() % 10 == 0,
        })
        .collect();
    let total: u64 = entries.iter().map(|e| e.size).sum();
    let started = std::time::Instant::now();
    let victims = evict::plan(&entries, total / 2);
    let ns = started.elapsed().as_nanos();
    println!("plan_ns {ns} victims {} blobs {n}", victims.len());
}

/// What `du` shows, gathered once.
struct Report {
    usage: Usage,
    limits: Limits,
    pinned: u64,
    /// Open and not pinned.
    open: u64,
    /// The next victims: names, blob, size, last open.
    next: Vec<(String, Sha256, u64, u64)>,
}

/// Prints usage, limits, pinned and open bytes, and the next victims.
pub fn run(g: &Globals, a: &DuArgs) -> Result<(), CliError> {
    if let Some(n) = a.bench_plan {
        bench_plan(n);
        return Ok(());
    }
    let store = g.store_for_reading()?;
    let r = look(&store)?;
    if a.json {
        print_json(&r);
    } else {
        print_text(&r);
    }
    Ok(())
}

/// Reads the store's cache: the blobs open now are those whose open lock
/// cannot be taken (it is let go at once).
fn look(store: &Store) -> Result<Report, CliError> {
    let settings = store
        .read_settings()
        .map_err(|e| CliError::new(e.to_string()))?;
    let limits = Limits::of(store, &settings);
    let view = store.cache_view(&HashMap::new(), None)?;
    let e = &view.entries;
    let open: Vec<bool> = e
        .iter()
        .map(|e| matches!(store.try_evict_lock(&e.blob), Ok(None)))
        .collect();
    let sum = |f: &dyn Fn(usize) -> bool| -> u64 {
        (0..e.len()).filter(|&i| f(i)).map(|i| e[i].size).sum()
    };
    let names = |i: usize| {
        view.names
            .get(&e[i].blob)
            .map(|n| n.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    };
    let next = evict::order(e)
        .into_iter()
        .filter(|&i| !open[i])
        .take(NEXT_SHOWN)
        .map(|i| (names(i), e[i].blob, e[i].size, e[i].last_open))
        .collect();
    Ok(Report {
        usage: view.usage,
        limits,
        pinned: sum(&|i| e[i].pinned),
        open: sum(&|i| open[i] && !e[i].pinned),
        next,
    })
}

fn print_json(r: &Report) {
    let next: Vec<_> = r
        .next
        .iter()
        .map(|(names, blob, size, last_open)| {
            json!({"names": names, "blob": blob.to_blob_ref(), "size_bytes": size,
                   "last_open": last_open})
        })
        .collect();
    let out = json!({
        "blob_bytes": r.usage.blob_bytes, "partial_bytes": r.usage.partial_bytes,
        "cache_max": r.limits.cache_max, "min_free": r.limits.min_free,
        "available": r.limits.available, "over_by": r.limits.need(r.usage.total(), 0),
        "pinned_bytes": r.pinned, "open_bytes": r.open, "next": next,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&out).expect("JSON serialises")
    );
}

fn print_text(r: &Report) {
    let max = r
        .limits
        .cache_max
        .map_or_else(|| "no limit".into(), human_bytes);
    println!(
        "used      {} ({} in blobs, {} in partial downloads)",
        human_bytes(r.usage.total()),
        human_bytes(r.usage.blob_bytes),
        human_bytes(r.usage.partial_bytes)
    );
    println!("cache_max {max}");
    println!(
        "min_free  {} ({} free now)",
        human_bytes(r.limits.min_free),
        human_bytes(r.limits.available)
    );
    println!("pinned    {}", human_bytes(r.pinned));
    println!("open      {} (not pinned)", human_bytes(r.open));
    let over = r.limits.need(r.usage.total(), 0);
    if over > 0 {
        println!(
            "over by   {} (a mount evicts it within 5 s)",
            human_bytes(over)
        );
    }
    if r.next.is_empty() {
        println!("nothing can be evicted");
        return;
    }
    println!("evicted next, first to go first:");
    for (names, _, size, _) in &r.next {
        println!("  {names:<40} {:>10}", human_bytes(*size));
    }
}
