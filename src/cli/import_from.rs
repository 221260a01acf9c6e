//! `modelfs import --from TOOL|DIR`: adopt the GGUFs another tool keeps
//! (the walks are [`crate::adopt`], the placement
//! [`crate::store::Store::adopt_file`]); this picks the walk, names the
//! models, and reports each file as added, skipped (and why) or rejected.

use std::path::{Path, PathBuf};

use crate::adopt::{self, Candidate, Walk, hf_cache, lmstudio, ollama};
use crate::store::adopt_place::{AdoptFileError, AdoptRequest, Adopted};
use crate::store::import::{ImportError, ImportProgress};
use crate::store::{ModelName, Source, Store};

use super::import::{ImportArgs, Progress, placed_word};
use super::{CliError, Globals, parse_name};

/// The naming rule, for `modelfs import --help`.
pub const NAMING_HELP: &str = "\
With --from, models are named:
  Ollama library/MODEL:TAG         MODEL-TAG            (llama3.2:3b -> llama3.2-3b)
  Ollama NAMESPACE/MODEL:TAG       NAMESPACE-MODEL-TAG
  hf-cache, lmstudio, a folder     the file's name without .gguf; the shards of a
                                   split set keep their -0000k-of-0000N names
Characters a model name cannot hold become '-'. --name renames the one model
found (a split set's shards keep their suffixes). Where each model came from
is kept in its manifest's source and shown by `modelfs ls`: for hf-cache the
repository, snapshot commit and file, so it can be fetched from the Hub again.
A digest in a file name is checked against its bytes: a file that disagrees
is rejected. Running the same import again changes nothing.

Examples:
  modelfs import --from ollama llama3.2:3b
  modelfs import --from hf-cache Qwen/Qwen2.5-0.5B-Instruct-GGUF
  modelfs import --from lmstudio
  modelfs import --from ~/models";

/// How many files went which way.
#[derive(Debug, Default)]
struct Tally {
    added: usize,
    skipped: usize,
    rejected: usize,
}

/// Walks the tool's folder, then places every file found.
pub fn run(g: &Globals, a: &ImportArgs, from: &str) -> Result<(), CliError> {
    if a.format != "gguf" {
        return Err(CliError::new(
            "--from imports GGUF files only; leave out --format",
        ));
    }
    let walk = walk(a, from)?;
    let candidates = renamed(walk.candidates, a.name.as_deref())?;
    let store = g.store_for_writing()?;
    let mut tally = Tally::default();
    for p in &walk.passed {
        println!("skipped  {}: {}", p.what, p.why);
        tally.skipped += 1;
    }
    for c in &candidates {
        adopt_one(&store, g, a.force, c, &mut tally);
    }
    println!(
        "{} added, {} skipped, {} rejected",
        tally.added, tally.skipped, tally.rejected
    );
    if tally.rejected > 0 {
        return Err(CliError::new(format!(
            "{} file(s) were not imported (see the lines above)",
            tally.rejected
        )));
    }
    Ok(())
}

/// The walk `--from` names.
fn walk(a: &ImportArgs, from: &str) -> Result<Walk, CliError> {
    let items: Vec<String> = a
        .items
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let root = |default: Option<PathBuf>| {
        a.path.clone().or(default).ok_or_else(|| {
            CliError::new(format!(
                "--from {from}: HOME is not set; say where with --path"
            ))
        })
    };
    let no_items = || {
        if items.is_empty() {
            Ok(())
        } else {
            Err(CliError::new(format!(
                "--from {from} takes no model names; it imports every GGUF there"
            )))
        }
    };
    let walked = match from {
        "ollama" => {
            let wanted = ollama::Wanted {
                models: items,
                projector: a.projector,
            };
            ollama::walk(&root(ollama::default_root())?, &wanted)
        }
        "hf-cache" => hf_cache::walk(&root(hf_cache::default_root())?, &items),
        "lmstudio" => {
            no_items()?;
            lmstudio::walk(&root(lmstudio::default_root())?)
        }
        dir => {
            no_items()?;
            if a.path.is_some() {
                return Err(CliError::new(
                    "--path goes with --from ollama|hf-cache|lmstudio; a folder is --from DIR",
                ));
            }
            adopt::folder::walk(Path::new(dir))
        }
    };
    walked.map_err(|e| CliError::new(e.to_string()))
}

/// The candidates, renamed after `--name` when it is given: allowed for one
/// model, or for the shards of one split set (which keep their suffixes).
fn renamed(mut cands: Vec<Candidate>, name: Option<&str>) -> Result<Vec<Candidate>, CliError> {
    let Some(name) = name else { return Ok(cands) };
    let base = parse_name(name)?;
    if let [one] = &mut cands[..] {
        one.name = base;
        return Ok(cands);
    }
    let stems: Vec<Option<(&str, &str)>> = cands.iter().map(|c| split_shard(&c.name)).collect();
    let one_set = !cands.is_empty()
        && stems
            .iter()
            .all(|s| s.is_some_and(|(b, _)| Some(b) == stems[0].map(|(b, _)| b)));
    if !one_set {
        return Err(CliError::new(format!(
            "--name names one model, and {} were found: say which to import (for example \
             MODEL:TAG for Ollama, ORG/REPO for the Hugging Face cache)",
            cands.len()
        )));
    }
    let suffixes: Vec<String> = stems
        .iter()
        .map(|s| s.expect("checked above").1.to_string())
        .collect();
    for (c, suffix) in cands.iter_mut().zip(suffixes) {
        c.name = parse_name(&format!("{base}{suffix}"))?;
    }
    Ok(cands)
}

/// `x-00001-of-00003` → (`x`, `-00001-of-00003`).
fn split_shard(name: &ModelName) -> Option<(&str, &str)> {
    let s = name.as_str();
    let at = s.len().checked_sub("-00001-of-00003".len())?;
    let (base, suffix) = s.split_at(at);
    let b = suffix.as_bytes();
    let ok = b[0] == b'-'
        && b[1..6].iter().all(u8::is_ascii_digit)
        && &suffix[6..10] == "-of-"
        && b[10..].iter().all(u8::is_ascii_digit);
    (ok && !base.is_empty()).then_some((base, suffix))
}

/// Places one file and prints what happened.
fn adopt_one(store: &Store, g: &Globals, force: bool, c: &Candidate, tally: &mut Tally) {
    let mut shown = (!g.quiet).then(|| Progress::new(c.name.as_str()));
    let progress = shown.as_mut().map(|p| p as &mut dyn ImportProgress);
    let req = AdoptRequest {
        name: &c.name,
        path: &c.path,
        claimed: c.claimed,
        claimed_size: c.claimed_size,
        source: &c.source,
        force,
    };
    match store.adopt_file(&req, progress) {
        Ok(Adopted::Added { manifest, placed }) => {
            tally.added += 1;
            println!(
                "added    {} <- {} ({})",
                manifest.file_name(),
                c.label,
                placed_word(placed)
            );
        }
        Ok(Adopted::Unchanged { why }) => {
            tally.skipped += 1;
            println!("skipped  {} <- {}: {why}", c.name, c.label);
        }
        Err(e @ AdoptFileError::Import(ImportError::AlreadyPins { .. })) => {
            tally.skipped += 1;
            println!("skipped  {} <- {}: {e}", c.name, c.label);
        }
        Err(e) => {
            tally.rejected += 1;
            println!("rejected {} <- {}: {e}", c.name, c.label);
        }
    }
}

/// Where a model came from, in a few words, for `modelfs ls`:
/// `hf:ORG/REPO@COMMIT/FILE`, `ollama:MODEL:TAG`, `lmstudio:…`, a path.
pub fn source_label(s: &Source) -> String {
    let short = |r: &str| r.get(..7).unwrap_or(r).to_string();
    match s.registry.as_str() {
        "huggingface.co" => format!("hf:{}@{}/{}", s.repo, short(&s.revision), s.filename),
        "lmstudio" => format!("lmstudio:{}/{}", s.repo, s.filename),
        "local" if !s.repo.is_empty() => format!("{}/{}", s.repo, s.filename),
        "local" => format!("local:{}", s.filename),
        r if s.filename.starts_with("sha256-") => {
            let r = ollama::OllamaRef {
                registry: r.to_string(),
                namespace: s.repo.split_once('/').map_or("", |p| p.0).to_string(),
                model: s
                    .repo
                    .rsplit_once('/')
                    .map_or(&*s.repo, |p| p.1)
                    .to_string(),
                tag: s.revision.clone(),
            };
            format!("ollama:{}", r.label())
        }
        "" => "-".into(),
        r => r.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(name: &str) -> Candidate {
        Candidate {
            path: PathBuf::from("/x"),
            claimed: None,
            claimed_size: None,
            name: ModelName::parse(name).unwrap(),
            source: Source::default(),
            label: name.into(),
        }
    }

    #[test]
    fn name_renames_one_model_or_the_shards_of_one_set() {
        let one = renamed(vec![cand("a")], Some("b")).unwrap();
        assert_eq!(one[0].name.as_str(), "b");
        let set = vec![cand("q-00001-of-00002"), cand("q-00002-of-00002")];
        let set = renamed(set, Some("mine")).unwrap();
        let names: Vec<_> = set.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["mine-00001-of-00002", "mine-00002-of-00002"]);
        assert!(renamed(vec![cand("a"), cand("b")], Some("x")).is_err());
        assert!(renamed(vec![cand("a"), cand("a-00001-of-00002")], Some("x")).is_err());
    }

    #[test]
    fn sources_are_shown_in_a_few_words() {
        let s = |registry: &str, repo: &str, revision: &str, filename: &str| Source {
            registry: registry.into(),
            repo: repo.into(),
            revision: revision.into(),
            filename: filename.into(),
            url: None,
        };
        let rev = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            source_label(&s("huggingface.co", "org/r", rev, "m.gguf")),
            "hf:org/r@0123456/m.gguf"
        );
        let hex = format!("sha256-{}", "a".repeat(64));
        assert_eq!(
            source_label(&s("registry.ollama.ai", "library/llama3.2", "3b", &hex)),
            "ollama:llama3.2:3b"
        );
        assert_eq!(
            source_label(&s("lmstudio", "pub/m", "", "f.gguf")),
            "lmstudio:pub/m/f.gguf"
        );
        assert_eq!(
            source_label(&s("local", "/srv/m", "", "a/f.gguf")),
            "/srv/m/a/f.gguf"
        );
        assert_eq!(source_label(&s("local", "", "", "f.gguf")), "local:f.gguf");
    }
}
