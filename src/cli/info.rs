//! `modelfs info NAME`: what a model's GGUF header says, and the memory it
//! needs, without downloading it. For a split model (`NAME`, or the
//! `NAME-*-of-0000N` that `ls` shows) the set's facts are shard 1's, with
//! the parameters, tensors and tensor bytes summed over every shard.

use serde_json::json;

use crate::text::{human_bytes, human_count};

use super::{CliError, Globals, parse_name};

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// The model
    pub name: String,
    /// One JSON object
    #[arg(long)]
    pub json: bool,
}

/// Prints the model's facts and memory estimate; a model without facts is
/// not an error (exit 0), but the output says why there are none.
pub fn run(g: &Globals, a: &InfoArgs) -> Result<(), CliError> {
    let store = g.store_for_reading()?;
    let (m, shown) = match super::sets::set_summary(&store, &a.name)? {
        Some((set, pattern)) => (set, pattern),
        None => {
            let name = parse_name(&a.name)?;
            let m = store.read_manifest(&name)?.ok_or_else(|| {
                CliError::new(format!(
                    "{name}: no such model in {}; see `modelfs ls`",
                    store.root().display()
                ))
            })?;
            let name = m.name.to_string();
            (m, name)
        }
    };
    let estimate = m
        .gguf
        .as_ref()
        .and_then(|f| f.memory_estimate(Some(m.size_bytes)));
    if a.json {
        let out = json!({
            "name": shown, "file": m.file_name(), "size_bytes": m.size_bytes,
            "gguf": m.gguf.as_ref().map(|f| f.to_json()),
            "memory": estimate.map(|e| json!({
                "weights_bytes": e.weights, "kv_cache_bytes": e.kv_cache, "total_bytes": e.total,
            })),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("JSON values serialise")
        );
        return Ok(());
    }
    let file = if shown == m.name.as_str() {
        m.file_name()
    } else {
        format!("{shown} (from {})", m.file_name())
    };
    println!("{file}: {}", human_bytes(m.size_bytes));
    let Some(facts) = &m.gguf else {
        println!(
            "no model facts recorded: it was added with --no-facts, is not a GGUF, or its \
             header could not be read when it was added (`modelfs add --force` reads it again)"
        );
        return Ok(());
    };
    if let serde_json::Value::Object(map) = facts.to_json() {
        for (k, v) in map {
            let shown = match (k.as_str(), &v) {
                ("parameters", serde_json::Value::Number(n)) => {
                    n.as_u64().map_or(v.to_string(), human_count)
                }
                (_, serde_json::Value::String(s)) => s.clone(),
                _ => v.to_string(),
            };
            println!("  {k:<20} {shown}");
        }
    }
    if let Some(e) = estimate {
        let kv = e.kv_cache.map_or("unknown".to_string(), human_bytes);
        println!(
            "memory: {} (weights {}, f16 KV cache at the full context {kv})",
            human_bytes(e.total),
            human_bytes(e.weights)
        );
    }
    Ok(())
}
