//! `modelfs add` of one shard of a split model pins the whole set
//! (DESIGN §8): every shard `X-0000k-of-0000N.gguf` becomes the manifest
//! `NAME-0000k-of-0000N`, so the mount shows the names llama.cpp rebuilds
//! from shard 1.
//!
//! From the Hub, the shard named is asked first (one `HEAD`) and the commit
//! the Hub resolved its revision to is then used for every other shard (one
//! `HEAD` each), so all shards come from one commit even if the branch
//! moves meanwhile. From a URL, the other shards' URLs are rebuilt by name
//! next to it and each needs its own `--sha256`, given in shard order.
//! Nothing is written until every shard is resolved and none conflicts
//! with an existing manifest (unless `--force`).

use crate::fetch::Fetcher;
use crate::fetch::pin::{Pin, parse_hf_spec, url_source};
use crate::store::set::ShardName;
use crate::store::{ModelName, Store};

use super::add::{AddArgs, check_pin, parse_digest, pin_error, read_facts, write_pin};
use super::{CliError, Globals, parse_name};

/// The shard a `--hf` or `--url` names, when its file name is
/// `<prefix>-%05d-of-%05d.gguf`.
pub fn shard_of(a: &AddArgs) -> Option<ShardName> {
    let file = match (&a.hf, &a.url) {
        (Some(spec), _) => parse_hf_spec(spec).ok()?.filename,
        (None, Some(url)) => url_source(url).filename,
        (None, None) => return None,
    };
    let last = file.rsplit('/').next()?;
    ShardName::parse(last.strip_suffix(".gguf")?)
}

/// Pins every shard of `shard`'s set under `name`.
pub fn run(g: &Globals, a: &AddArgs, name: &str, shard: ShardName) -> Result<(), CliError> {
    if a.size.is_some() {
        return Err(CliError::new(format!(
            "{name}: --size cannot be given for a split model ({} is shard {} of {}); \
             each shard's size is asked of its server",
            shard.set_pattern(),
            shard.index,
            shard.count
        )));
    }
    let prefix = set_prefix(name, &shard);
    let names = shard_model_names(&prefix, &shard)?;
    let store = g.store_for_writing()?;
    let fetcher = g.fetcher()?;
    let pins = match &a.hf {
        Some(spec) => pin_hub_set(&fetcher, spec, &names, &shard)?,
        None => pin_url_set(&fetcher, a, &names, &shard)?,
    };
    for (n, p) in names.iter().zip(&pins) {
        check_pin(&store, a, n, p)?;
    }
    refuse_conflicts(&store, a, &names, &pins)?;
    eprintln!(
        "{prefix}: split model, {} shards ({})",
        shard.count,
        ShardName::format(&prefix, 1, shard.count)
    );
    for (n, p) in names.iter().zip(pins) {
        let facts = read_facts(&fetcher, a, n, &p);
        write_pin(&store, a, n, p, facts, None)?;
    }
    Ok(())
}

/// The set's name: `NAME` as given, or its prefix when the user typed a
/// shard name of this set as `NAME` (`add x-00001-of-00003 …` pins `x`,
/// not `x-00001-of-00003-00001-of-00003`).
fn set_prefix(name: &str, shard: &ShardName) -> String {
    match ShardName::parse(name) {
        Some(s) if s.count == shard.count => {
            eprintln!(
                "note: taking {:?} as the model name of the split set {}",
                s.prefix,
                s.set_pattern()
            );
            s.prefix
        }
        _ => name.to_string(),
    }
}

/// `PREFIX-00001-of-0000N` … as validated model names.
fn shard_model_names(prefix: &str, shard: &ShardName) -> Result<Vec<ModelName>, CliError> {
    (1..=shard.count)
        .map(|k| parse_name(&ShardName::format(prefix, k, shard.count)))
        .collect()
}

/// The Hub file next to `file` (same folder) named as shard `k`.
fn sibling_file(file: &str, shard: &ShardName, k: u32) -> String {
    let sibling = format!("{}.gguf", shard.sibling(k));
    match file.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{sibling}"),
        None => sibling,
    }
}

/// One `HEAD` per shard: the named one first at the revision given, the
/// others at the commit the Hub resolved it to.
fn pin_hub_set(
    fetcher: &Fetcher,
    spec: &str,
    names: &[ModelName],
    shard: &ShardName,
) -> Result<Vec<Pin>, CliError> {
    let source = parse_hf_spec(spec).map_err(pin_error)?;
    let k0 = shard.index;
    let first = fetcher
        .pin_hf(spec, names[k0 as usize - 1].as_str())
        .map_err(pin_error)?;
    if let Some(note) = &first.note {
        eprintln!("{note}");
    }
    let at = first.source.revision.clone();
    let mut pins: Vec<Option<Pin>> = (1..=shard.count).map(|_| None).collect();
    pins[k0 as usize - 1] = Some(first);
    for k in (1..=shard.count).filter(|&k| k != k0) {
        let file = sibling_file(&source.filename, shard, k);
        let sibling = format!("{}/{file}@{at}", source.repo);
        let pin = fetcher
            .pin_hf(&sibling, names[k as usize - 1].as_str())
            .map_err(pin_error)?;
        pins[k as usize - 1] = Some(pin);
    }
    Ok(pins
        .into_iter()
        .map(|p| p.expect("every shard pinned"))
        .collect())
}

/// The shards' URLs rebuilt by name next to the one given, each with its
/// own `--sha256` (in shard order) and its size from a `HEAD`.
fn pin_url_set(
    fetcher: &Fetcher,
    a: &AddArgs,
    names: &[ModelName],
    shard: &ShardName,
) -> Result<Vec<Pin>, CliError> {
    let url = a.url.as_deref().expect("a URL set");
    if a.sha256.len() != shard.count as usize {
        return Err(CliError::new(format!(
            "{}: {} is shard {} of a split model of {} shards: give --sha256 once per shard, \
             in shard order ({} given); nothing was added",
            shard.set_pattern(),
            url_source(url).filename,
            shard.index,
            shard.count,
            a.sha256.len()
        )));
    }
    let mut pins = Vec::with_capacity(names.len());
    for (k, (name, hex)) in (1..=shard.count).zip(names.iter().zip(&a.sha256)) {
        let url = sibling_url(url, shard, k);
        let blob = parse_digest(hex, name)?;
        let size = fetcher.head_size(&url, name.as_str()).map_err(pin_error)?;
        pins.push(Pin {
            blob,
            size,
            source: url_source(&url),
            note: None,
        });
    }
    Ok(pins)
}

/// `url` with its last path component (before any query or fragment)
/// replaced by shard `k`'s file name.
fn sibling_url(url: &str, shard: &ShardName, k: u32) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let (path, rest) = url.split_at(end);
    let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
    format!("{dir}/{}.gguf{rest}", shard.sibling(k))
}

/// Refuses the whole set, before anything is written, when a shard's name
/// pins another blob already and `--force` was not given.
fn refuse_conflicts(
    store: &Store,
    a: &AddArgs,
    names: &[ModelName],
    pins: &[Pin],
) -> Result<(), CliError> {
    if a.force {
        return Ok(());
    }
    for (name, pin) in names.iter().zip(pins) {
        if let Some(old) = store.read_manifest(name)?
            && old.blob != pin.blob
        {
            return Err(CliError::new(format!(
                "{name} already pins blob {}; pass --force to repoint the set at the new shards \
                 (nothing was added)",
                old.blob.short()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard() -> ShardName {
        ShardName::parse("m-00002-of-00003").unwrap()
    }

    #[test]
    fn sibling_urls_replace_only_the_last_path_component() {
        assert_eq!(
            sibling_url(
                "https://h/a/m-00002-of-00003.gguf?download=1#x",
                &shard(),
                1
            ),
            "https://h/a/m-00001-of-00003.gguf?download=1#x"
        );
        assert_eq!(
            sibling_url("https://h/m-00002-of-00003.gguf", &shard(), 3),
            "https://h/m-00003-of-00003.gguf"
        );
    }

    #[test]
    fn sibling_hub_files_stay_in_the_same_folder() {
        assert_eq!(
            sibling_file("Q4/m-00002-of-00003.gguf", &shard(), 1),
            "Q4/m-00001-of-00003.gguf"
        );
        assert_eq!(
            sibling_file("m-00002-of-00003.gguf", &shard(), 3),
            "m-00003-of-00003.gguf"
        );
    }

    #[test]
    fn a_shard_name_given_as_the_model_name_is_taken_as_its_prefix() {
        assert_eq!(set_prefix("m-00001-of-00003", &shard()), "m");
        assert_eq!(set_prefix("qwen", &shard()), "qwen");
        assert_eq!(set_prefix("m-00001-of-00004", &shard()), "m-00001-of-00004");
    }
}
