//! `modelfs add`: pin a model by writing a pending manifest. Downloads
//! nothing but, at most, one `HEAD` to learn the size or the digest
//! (asked by `fetch::pin`), or a registry's manifest (`--oci`, `--ollama`,
//! asked by `fetch::oci`), and the GGUF header by `Range`. A shard of a
//! split model (`X-0000k-of-0000N.gguf`) pins its whole set instead
//! (`add_set`).

use crate::digest::Sha256;
use crate::fetch::Fetcher;
use crate::fetch::oci::OciPin;
use crate::fetch::pin::{Pin, PinError, url_source};
use crate::gguf::Facts;
use crate::registry::Reference;
use crate::registry::reference::OLLAMA_REGISTRY;
use crate::store::manifest::{MAX_SIZE_BYTES, validate_format};
use crate::store::{BlobState, Manifest, ModelName, Store};
use crate::text::{human_bytes, human_count, redact_url};

use super::{CliError, Globals, parse_name};

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("origin").required(true).args(["url", "hf", "oci", "ollama"]))]
pub struct AddArgs {
    /// Model name (ASCII letters, digits, '.', '-', '_'); the mount shows NAME.FORMAT
    pub name: String,
    /// https:// URL of the file
    #[arg(long, requires = "sha256")]
    pub url: Option<String>,
    /// Expected SHA-256 of the file (64 lowercase hex characters); for a
    /// shard of a split model, once per shard, in shard order
    #[arg(long, value_name = "HEX")]
    pub sha256: Vec<String>,
    /// Size in bytes (without it, a HEAD request asks the server)
    #[arg(long, value_name = "BYTES")]
    pub size: Option<u64>,
    /// A Hugging Face file: OWNER/REPO/FILE[@REVISION]; digest and size come from the Hub
    #[arg(long, value_name = "OWNER/REPO/FILE[@REV]", conflicts_with_all = ["url", "sha256"])]
    pub hf: Option<String>,
    /// An OCI registry artifact (ModelPack, Docker model): its GGUF layer is pinned
    #[arg(long, value_name = "REGISTRY/REPO[:TAG|@sha256:HEX]", conflicts_with_all = ["url", "sha256", "size"])]
    pub oci: Option<String>,
    /// An Ollama model (in the library/ namespace unless one is named)
    #[arg(long, value_name = "MODEL[:TAG]", conflicts_with_all = ["url", "sha256", "size"])]
    pub ollama: Option<String>,
    /// The registry --ollama asks
    #[arg(long, value_name = "HOST[:PORT]", requires = "ollama", default_value = OLLAMA_REGISTRY)]
    pub registry: String,
    /// File format, also the extension in the mount
    #[arg(long, default_value = "gguf")]
    pub format: String,
    /// SPDX-style license id (informational)
    #[arg(long, value_name = "ID")]
    pub license: Option<String>,
    /// Repoint an existing name at another blob
    #[arg(long)]
    pub force: bool,
    /// Do not read the GGUF header (architecture, parameters, quantization,
    /// context length) with a few Range requests
    #[arg(long)]
    pub no_facts: bool,
}

/// Writes a pending manifest for a URL or a Hugging Face file.
pub fn run(g: &Globals, a: &AddArgs) -> Result<(), CliError> {
    validate_format(&a.format).map_err(|p| CliError::new(format!("--format {p}")))?;
    let given = model_name(&a.name, &a.format);
    if a.format == "gguf"
        && let Some(shard) = super::add_set::shard_of(a)
    {
        return super::add_set::run(g, a, given, shard);
    }
    let name = parse_name(given)?;
    let store = g.store_for_writing()?;
    let fetcher = g.fetcher()?;
    let (pins, oci_manifest) = match registry_reference(a)? {
        Some(r) => {
            let OciPin {
                pins,
                manifest_digest,
                layers,
            } = fetcher
                .pin_oci(&r, name.as_str())
                .map_err(|e| CliError::new(e.to_string()))?;
            for layer in &layers {
                eprintln!("{name}: {r} is manifest {manifest_digest}, layer {layer}");
            }
            (pins, Some(manifest_digest))
        }
        None => (vec![resolve(&fetcher, a, &name)?], None),
    };
    let names = member_names(&name, pins.len())?;
    for (n, pin) in names.iter().zip(&pins) {
        check_pin(&store, a, n, pin)?;
    }
    for (n, pin) in names.into_iter().zip(pins) {
        let facts = read_facts(&fetcher, a, &n, &pin);
        write_pin(&store, a, &n, pin, facts, oci_manifest)?;
    }
    Ok(())
}

/// `NAME` for one file; `NAME-0000k-of-0000N` for the shards of a split
/// set (the names llama.cpp rebuilds from shard 1).
fn member_names(name: &ModelName, n: usize) -> Result<Vec<ModelName>, CliError> {
    if n == 1 {
        return Ok(vec![name.clone()]);
    }
    (1..=n)
        .map(|k| parse_name(&format!("{name}-{k:05}-of-{n:05}")))
        .collect()
}

/// The registry reference `--oci` or `--ollama` names, if one does.
fn registry_reference(a: &AddArgs) -> Result<Option<Reference>, CliError> {
    let r = match (&a.oci, &a.ollama) {
        (Some(oci), _) => Reference::parse(oci),
        (None, Some(model)) => Reference::ollama(model, &a.registry),
        (None, None) => return Ok(None),
    };
    r.map(Some).map_err(|e| CliError::new(e.to_string()))
}

/// The model's facts from its GGUF header, read by Range requests; `None`
/// (said on stderr, and the model is added anyway) when they cannot be.
pub(super) fn read_facts(
    fetcher: &Fetcher,
    a: &AddArgs,
    name: &ModelName,
    pin: &Pin,
) -> Option<Facts> {
    if a.no_facts || a.format != "gguf" {
        return None;
    }
    let url = fetcher.source_url(&pin.source)?;
    match fetcher.gguf_facts(&url, pin.size) {
        Ok(f) => {
            eprintln!("{name}: {}", facts_line(&f));
            Some(f)
        }
        Err(e) => {
            eprintln!("note: {name}: no model facts ({e}); added without them");
            None
        }
    }
}

/// `llama, 8.0 B parameters, Q4_K_M, context 8192`.
fn facts_line(f: &Facts) -> String {
    let mut parts = vec![
        f.architecture
            .clone()
            .unwrap_or_else(|| "unknown architecture".into()),
    ];
    if let Some(p) = f.parameters {
        parts.push(format!("{} parameters", human_count(p)));
    }
    if let Some(t) = &f.file_type {
        parts.push(t.clone());
    }
    if let Some(c) = f.context_length {
        parts.push(format!("context {c}"));
    }
    parts.join(", ")
}

/// What the origin option names: a Hub file asked of the Hub, or a URL
/// with the digest given and the size given or asked of its server.
fn resolve(fetcher: &Fetcher, a: &AddArgs, name: &ModelName) -> Result<Pin, CliError> {
    let model = name.to_string();
    match (&a.hf, &a.url) {
        (Some(spec), _) => {
            let pin = fetcher.pin_hf(spec, &model).map_err(pin_error)?;
            if let Some(note) = &pin.note {
                eprintln!("{note}");
            }
            Ok(pin)
        }
        (None, Some(url)) => {
            if a.sha256.len() > 1 {
                return Err(CliError::new(format!(
                    "{name}: --sha256 given {} times; only a shard of a split model \
                     (X-00001-of-0000N.gguf) takes one per shard",
                    a.sha256.len()
                )));
            }
            let hex = a.sha256.first().map(String::as_str).unwrap_or_default();
            let blob = parse_digest(hex, name)?;
            let size = match a.size {
                Some(s) => s,
                None => fetcher.head_size(url, &model).map_err(pin_error)?,
            };
            Ok(Pin {
                blob,
                size,
                source: url_source(url),
                note: None,
            })
        }
        (None, None) => unreachable!("clap requires an origin"),
    }
}

pub(super) fn pin_error(e: PinError) -> CliError {
    CliError::new(e.to_string())
}

/// The digest `--sha256` gave for `name`.
pub(super) fn parse_digest(hex: &str, name: &ModelName) -> Result<Sha256, CliError> {
    Sha256::from_hex(&hex.to_ascii_lowercase())
        .map_err(|e| CliError::new(format!("--sha256 for {name}: {e}")))
}

/// Refuses a pin no file can match: an impossible size, a URL that is not
/// https, or a size other than the one the store's blob of that digest has.
pub(super) fn check_pin(
    store: &Store,
    a: &AddArgs,
    name: &ModelName,
    pin: &Pin,
) -> Result<(), CliError> {
    let (blob, size) = (pin.blob, pin.size);
    if size > MAX_SIZE_BYTES {
        return Err(CliError::new(format!(
            "{name}: a size of {size} bytes is more than any file can have (at most 2^63 - 1 = {MAX_SIZE_BYTES}); check --size or the server's answer"
        )));
    }
    if let Some(u) = &pin.source.url
        && !u.starts_with("https://")
    {
        return Err(CliError::new(format!(
            "{name}: refusing non-https URL {}; modelfs only downloads over HTTPS",
            redact_url(u)
        )));
    }
    if let BlobState::Present(have) = store.blob_state(&blob)
        && have != size
    {
        let given = if a.size.is_some() {
            "--size"
        } else {
            "the server"
        };
        return Err(CliError::new(format!(
            "{name}: the store already holds blob {} with {have} bytes, but {given} says {size}; \
             nothing was added (check --size and --sha256)",
            blob.short()
        )));
    }
    Ok(())
}

/// Writes the manifest under the name's lock, unless the name pins that
/// blob already, or another one and `--force` was not given.
pub(super) fn write_pin(
    store: &Store,
    a: &AddArgs,
    name: &ModelName,
    pin: Pin,
    facts: Option<Facts>,
    oci_manifest: Option<Sha256>,
) -> Result<(), CliError> {
    let (blob, size) = (pin.blob, pin.size);
    let _lock = store
        .lock_model_waiting(name, &mut || {
            eprintln!("waiting for another process that holds the lock on {name}...")
        })
        .map_err(|e| CliError::new(format!("{name}: cannot take the store lock: {e}")))?;
    let mut manifest = Manifest::new(name.clone(), &a.format, blob, size, pin.source);
    manifest.license = a.license.clone();
    manifest.gguf = facts.map(std::sync::Arc::new);
    if let Some(d) = oci_manifest {
        // The image manifest the layer was found in: which artifact this
        // pin is, whatever the tag points at later.
        manifest.set_source_field("oci_manifest", &d.to_blob_ref());
    }
    if let Some(old) = store.read_manifest(name)? {
        if old.blob == blob {
            println!("{name} already pins {}; nothing to do", blob.short());
            return Ok(());
        }
        if !a.force {
            return Err(CliError::new(format!(
                "{name} already pins blob {}; pass --force to repoint it at {}",
                old.blob.short(),
                blob.short()
            )));
        }
    }
    store.write_manifest(&manifest)?;
    let present = matches!(store.blob_state(&blob), BlobState::Present(_));
    println!(
        "added {} ({}, {}) -> {}",
        manifest.file_name(),
        human_bytes(size),
        if present {
            "present"
        } else {
            "pending: fetched on first open, or now with `modelfs pull`"
        },
        blob.short()
    );
    Ok(())
}

/// `NAME` as given, or without `.FORMAT` when the user typed the file
/// name the mount shows (`add llama.gguf` pins `llama`, not `llama.gguf`,
/// which the mount would show as `llama.gguf.gguf`).
fn model_name<'a>(given: &'a str, format: &str) -> &'a str {
    match given.strip_suffix(&format!(".{format}")) {
        Some(stem) if !stem.is_empty() => {
            eprintln!("note: taking {stem:?} as the model name; the mount shows it as {given}");
            stem
        }
        _ => given,
    }
}
