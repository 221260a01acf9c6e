//! `modelfs du [--json]`: what the store's blobs take, its limits, what is
//! pinned or open, and what eviction would delete next.

use std::collections::HashMap;

use serde_json::json;

use crate::store::evict::{self, Limits};
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

/// Prints usage, limits, pinned and open bytes, and the next victims.
pub fn run(g: &Globals, a: &DuArgs) -> Result<(), CliError> {
    if let Some(n) = a.bench_plan {
        bench_plan(n);
        return Ok(());
    }
    let store = g.store_for_reading()?;
    let settings = store
        .read_settings()
        .map_err(|e| CliError::new(e.to_string()))?;
    let limits = Limits::of(&store, &settings);
    let view = store.cache_view(&HashMap::new())?;
    let open: Vec<bool> = view
        .entries
        .iter()
        .map(|e| matches!(store.try_evict_lock(&e.blob), Ok(None)))
        .collect();
    let sum = |f: &dyn Fn(usize) -> bool| -> u64 {
        (0..view.entries.len())
            .filter(|&i| f(i))
            .map(|i| view.entries[i].size)
            .sum()
    };
    let pinned = sum(&|i| view.entries[i].pinned);
    let open_bytes = sum(&|i| open[i] && !view.entries[i].pinned);
    let usage = view.usage.total();
    let next: Vec<usize> = evict::order(&view.entries)
        .into_iter()
        .filter(|&i| !open[i])
        .take(NEXT_SHOWN)
        .collect();
    let names = |i: usize| {
        view.names
            .get(&view.entries[i].blob)
            .map(|n| n.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    };
    if a.json {
        let next: Vec<_> = next
            .iter()
            .map(|&i| {
                let e = view.entries[i];
                json!({"names": names(i), "blob": e.blob.to_blob_ref(), "size_bytes": e.size,
                       "last_open": e.last_open})
            })
            .collect();
        let out = json!({
            "blob_bytes": view.usage.blob_bytes, "partial_bytes": view.usage.partial_bytes,
            "cache_max": limits.cache_max, "min_free": limits.min_free,
            "available": limits.available, "over_by": limits.need(usage, 0),
            "pinned_bytes": pinned, "open_bytes": open_bytes, "next": next,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("JSON serialises")
        );
        return Ok(());
    }
    let max = limits
        .cache_max
        .map_or_else(|| "no limit".into(), human_bytes);
    println!(
        "used      {} ({} in blobs, {} in partial downloads)",
        human_bytes(usage),
        human_bytes(view.usage.blob_bytes),
        human_bytes(view.usage.partial_bytes)
    );
    println!("cache_max {max}");
    println!(
        "min_free  {} ({} free now)",
        human_bytes(limits.min_free),
        human_bytes(limits.available)
    );
    println!("pinned    {}", human_bytes(pinned));
    println!("open      {} (not pinned)", human_bytes(open_bytes));
    let over = limits.need(usage, 0);
    if over > 0 {
        println!(
            "over by   {} (the next mount pass evicts it)",
            human_bytes(over)
        );
    }
    if next.is_empty() {
        println!("nothing can be evicted");
    } else {
        println!("evicted next, first to go first:");
        for i in next {
            println!(
                "  {:<40} {:>10}",
                names(i),
                human_bytes(view.entries[i].size)
            );
        }
    }
    Ok(())
}
