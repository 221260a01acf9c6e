//! Ollama's model store (`$OLLAMA_MODELS`, else `~/.ollama/models`):
//!
//! ```text
//! manifests/<registry>/<namespace>/<model>/<tag>   an OCI-style image manifest (JSON)
//! blobs/sha256-<hex>                               every layer, named after its SHA-256
//! ```
//!
//! A manifest's `layers` each have a `mediaType`, a `digest`
//! (`sha256:<hex>`) and a `size`. The weights are the layer of type
//! `application/vnd.ollama.image.model`; templates, parameters, licences and
//! system prompts are small text layers and never imported; a vision
//! model's projector (`…image.projector`, a GGUF too) only when asked, as
//! `<name>-mmproj`. A model with several weight layers gets set names
//! (`<name>-0000k-of-0000N`).

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{AdoptError, Candidate, Walk, check_folder, env_path, sanitize_name};
use crate::digest::Sha256;
use crate::store::{ModelName, Source};

const TOOL: &str = "Ollama";
/// The registry a model name without one refers to.
pub const DEFAULT_REGISTRY: &str = "registry.ollama.ai";
/// The namespace a model name without one refers to.
pub const DEFAULT_NAMESPACE: &str = "library";
const MODEL_LAYER: &str = "application/vnd.ollama.image.model";
const PROJECTOR_LAYER: &str = "application/vnd.ollama.image.projector";
/// Ollama's manifests are a few KiB.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// Where Linux's install script puts the store of its `ollama` service.
const SERVICE_ROOT: &str = "/usr/share/ollama/.ollama/models";

/// `$OLLAMA_MODELS`, else `~/.ollama/models`, else (when that is missing)
/// the Linux service's [`SERVICE_ROOT`] if it exists.
pub fn default_root() -> Option<PathBuf> {
    if let Some(p) = env_path("OLLAMA_MODELS") {
        return Some(p);
    }
    let home = env_path("HOME").map(|h| h.join(".ollama/models"));
    match home {
        Some(h) if h.is_dir() || !Path::new(SERVICE_ROOT).is_dir() => Some(h),
        _ => Some(PathBuf::from(SERVICE_ROOT)),
    }
}

/// A model as Ollama names it: `[registry/][namespace/]model[:tag]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OllamaRef {
    pub registry: String,
    pub namespace: String,
    pub model: String,
    pub tag: String,
}

impl OllamaRef {
    /// Parses a name as `ollama` does: no registry is
    /// [`DEFAULT_REGISTRY`], no namespace [`DEFAULT_NAMESPACE`], no tag
    /// `latest`.
    pub fn parse(s: &str) -> Result<Self, AdoptError> {
        let bad = |why| AdoptError::BadSelector {
            wanted: s.to_string(),
            why,
        };
        let (path, tag) = match s.rsplit_once(':') {
            Some((p, t)) if !t.contains('/') => (p, t),
            _ => (s, "latest"),
        };
        let parts: Vec<&str> = path.split('/').collect();
        if parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == "..")
            || tag.is_empty()
        {
            return Err(bad(
                "not an Ollama model name (say MODEL[:TAG], e.g. llama3.2:3b)",
            ));
        }
        let (registry, namespace, model) = match parts[..] {
            [m] => (DEFAULT_REGISTRY, DEFAULT_NAMESPACE, m),
            [ns, m] => (DEFAULT_REGISTRY, ns, m),
            [r, ns, m] => (r, ns, m),
            _ => {
                return Err(bad(
                    "an Ollama model name has at most registry/namespace/model",
                ));
            }
        };
        Ok(Self {
            registry: registry.into(),
            namespace: namespace.into(),
            model: model.into(),
            tag: tag.into(),
        })
    }

    /// The store name: `model-tag`, or `namespace-model-tag` outside
    /// `library`.
    pub fn store_name(&self) -> ModelName {
        if self.namespace == DEFAULT_NAMESPACE {
            sanitize_name(&format!("{}-{}", self.model, self.tag))
        } else {
            sanitize_name(&format!("{}-{}-{}", self.namespace, self.model, self.tag))
        }
    }

    /// How `ollama list` shows it.
    pub fn label(&self) -> String {
        let short = if self.namespace == DEFAULT_NAMESPACE {
            self.model.clone()
        } else {
            format!("{}/{}", self.namespace, self.model)
        };
        if self.registry == DEFAULT_REGISTRY {
            format!("{short}:{}", self.tag)
        } else {
            format!("{}/{short}:{}", self.registry, self.tag)
        }
    }

    /// "it has the tags 1b, 3b" when the model is there with other tags.
    fn other_tags(&self, root: &Path) -> Option<String> {
        let dir = self.manifest_path(root);
        let mut tags: Vec<String> = fs::read_dir(dir.parent()?)
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        tags.sort();
        (!tags.is_empty()).then(|| format!("it has the tags {}", tags.join(", ")))
    }

    fn manifest_path(&self, root: &Path) -> PathBuf {
        root.join("manifests")
            .join(&self.registry)
            .join(&self.namespace)
            .join(&self.model)
            .join(&self.tag)
    }
}

/// What to take from Ollama's store.
#[derive(Debug, Default)]
pub struct Wanted {
    /// The models (`MODEL[:TAG]`); empty is every model.
    pub models: Vec<String>,
    /// Also each model's projector layer.
    pub projector: bool,
}

/// Lists the models of the Ollama store at `root`.
pub fn walk(root: &Path, wanted: &Wanted) -> Result<Walk, AdoptError> {
    check_folder(TOOL, root)?;
    let mut walk = Walk::default();
    let refs = if wanted.models.is_empty() {
        all_refs(root)?
    } else {
        let mut refs = Vec::new();
        for w in &wanted.models {
            let r = OllamaRef::parse(w)?;
            if !r.manifest_path(root).is_file() {
                return Err(AdoptError::NotFound {
                    tool: TOOL,
                    wanted: w.clone(),
                    path: root.to_path_buf(),
                    hint: r.other_tags(root),
                });
            }
            refs.push(r);
        }
        refs
    };
    for r in refs {
        match layers_of(root, &r) {
            Ok(layers) => add_layers(root, &r, &layers, wanted.projector, &mut walk),
            Err(why) => walk.pass(r.label(), why),
        }
    }
    Ok(walk)
}

/// Every `manifests/<registry>/<namespace>/<model>/<tag>` file, sorted.
fn all_refs(root: &Path) -> Result<Vec<OllamaRef>, AdoptError> {
    let top = root.join("manifests");
    let folder_err = |source| AdoptError::Folder {
        tool: TOOL,
        path: top.clone(),
        source,
    };
    let mut out = Vec::new();
    for registry in subdirs(&top).map_err(folder_err)? {
        for namespace in subdirs(&top.join(&registry)).unwrap_or_default() {
            let ns_dir = top.join(&registry).join(&namespace);
            for model in subdirs(&ns_dir).unwrap_or_default() {
                let Ok(tags) = fs::read_dir(ns_dir.join(&model)) else {
                    continue;
                };
                for t in tags.flatten() {
                    if !t.file_type().is_ok_and(|t| t.is_file()) {
                        continue;
                    }
                    let Some(tag) = t.file_name().to_str().map(str::to_string) else {
                        continue;
                    };
                    out.push(OllamaRef {
                        registry: registry.clone(),
                        namespace: namespace.clone(),
                        model: model.clone(),
                        tag,
                    });
                }
            }
        }
    }
    out.sort_by_key(|r| r.label());
    Ok(out)
}

/// The names of the real (not symlinked) folders in `dir`.
fn subdirs(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir())
            && let Some(n) = e.file_name().to_str()
        {
            out.push(n.to_string());
        }
    }
    Ok(out)
}

/// One layer of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub media_type: String,
    pub digest: Sha256,
    pub size: u64,
}

/// The layers of `r`'s manifest; why not, in words.
fn layers_of(root: &Path, r: &OllamaRef) -> Result<Vec<Layer>, String> {
    let path = r.manifest_path(root);
    let meta = fs::metadata(&path).map_err(|e| format!("cannot read its manifest: {e}"))?;
    if meta.len() > MAX_MANIFEST_BYTES {
        return Err(format!("its manifest is {} bytes, too large", meta.len()));
    }
    let bytes = fs::read(&path).map_err(|e| format!("cannot read its manifest: {e}"))?;
    parse_layers(&bytes).map_err(|why| format!("its manifest {}: {why}", path.display()))
}

/// The `layers` of an Ollama manifest.
pub fn parse_layers(bytes: &[u8]) -> Result<Vec<Layer>, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("is not JSON: {e}"))?;
    let layers = v
        .get("layers")
        .and_then(Value::as_array)
        .ok_or("has no layers")?;
    let mut out = Vec::new();
    for l in layers {
        let media_type = l.get("mediaType").and_then(Value::as_str).unwrap_or("");
        let digest = l
            .get("digest")
            .and_then(Value::as_str)
            .and_then(|d| Sha256::from_blob_ref(d).ok())
            .ok_or("has a layer without a sha256 digest")?;
        out.push(Layer {
            media_type: media_type.to_string(),
            digest,
            size: l.get("size").and_then(Value::as_u64).unwrap_or(0),
        });
    }
    Ok(out)
}

/// Proposes `r`'s weight layers (and projector if asked).
fn add_layers(root: &Path, r: &OllamaRef, layers: &[Layer], projector: bool, walk: &mut Walk) {
    let weights: Vec<&Layer> = layers
        .iter()
        .filter(|l| l.media_type == MODEL_LAYER)
        .collect();
    if weights.is_empty() {
        walk.pass(r.label(), "its manifest has no model layer");
        return;
    }
    let base = r.store_name();
    let n = weights.len();
    for (i, l) in weights.iter().enumerate() {
        let name = if n == 1 {
            base.clone()
        } else {
            sanitize_name(&format!("{base}-{:05}-of-{n:05}", i + 1))
        };
        walk.candidates.push(candidate(root, r, l, name));
    }
    if projector {
        for l in layers.iter().filter(|l| l.media_type == PROJECTOR_LAYER) {
            let name = sanitize_name(&format!("{base}-mmproj"));
            walk.candidates.push(candidate(root, r, l, name));
        }
    }
}

fn candidate(root: &Path, r: &OllamaRef, l: &Layer, name: ModelName) -> Candidate {
    let file = format!("sha256-{}", l.digest.to_hex());
    Candidate {
        path: root.join("blobs").join(&file),
        claimed: Some(l.digest),
        claimed_size: Some(l.size),
        name,
        source: Source {
            registry: r.registry.clone(),
            repo: format!("{}/{}", r.namespace, r.model),
            revision: r.tag.clone(),
            filename: file,
            url: None,
        },
        label: r.label(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest(layers: &[(&str, &[u8])]) -> Vec<u8> {
        let layers: Vec<_> = layers
            .iter()
            .map(|(t, b)| json!({"mediaType": t, "digest": Sha256::of(b).to_blob_ref(), "size": b.len()}))
            .collect();
        serde_json::to_vec(&json!({"schemaVersion": 2, "layers": layers})).unwrap()
    }

    fn put(root: &Path, path: &str, layers: &[(&str, &[u8])]) {
        let p = root.join("manifests").join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, manifest(layers)).unwrap();
    }

    #[test]
    fn names_parse_as_ollama_reads_them_and_become_store_names() {
        let r = OllamaRef::parse("llama3.2:3b").unwrap();
        assert_eq!((r.namespace.as_str(), r.tag.as_str()), ("library", "3b"));
        assert_eq!(r.store_name().as_str(), "llama3.2-3b");
        assert_eq!(r.label(), "llama3.2:3b");
        let r = OllamaRef::parse("library/llama3.2").unwrap();
        assert_eq!(r.store_name().as_str(), "llama3.2-latest");
        let r = OllamaRef::parse("hf.co/bartowski/Qwen-GGUF:Q4_K_M").unwrap();
        assert_eq!(r.registry, "hf.co");
        assert_eq!(r.store_name().as_str(), "bartowski-Qwen-GGUF-Q4_K_M");
        assert_eq!(r.label(), "hf.co/bartowski/Qwen-GGUF:Q4_K_M");
        for bad in ["", "a//b", "../x", "a:", "a/b/c/d"] {
            assert!(OllamaRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_the_model_layer_is_proposed_unless_the_projector_is_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let layers: [(&str, &[u8]); 5] = [
            (MODEL_LAYER, b"GGUF weights"),
            ("application/vnd.ollama.image.template", b"{{ .Prompt }}"),
            ("application/vnd.ollama.image.params", b"{}"),
            ("application/vnd.ollama.image.license", b"MIT"),
            (PROJECTOR_LAYER, b"GGUF projector"),
        ];
        put(root, "registry.ollama.ai/library/llava/7b", &layers);
        put(root, "registry.ollama.ai/me/tiny/latest", &layers[..1]);
        put(root, "registry.ollama.ai/library/textonly/x", &layers[1..2]);
        let w = walk(root, &Wanted::default()).unwrap();
        let names: Vec<_> = w.candidates.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["llava-7b", "me-tiny-latest"]);
        let c = &w.candidates[0];
        let d = Sha256::of(b"GGUF weights");
        assert_eq!(c.claimed, Some(d));
        assert_eq!(c.claimed_size, Some(12));
        assert_eq!(c.path, root.join(format!("blobs/sha256-{}", d.to_hex())));
        assert_eq!(c.source.registry, "registry.ollama.ai");
        assert_eq!(c.source.repo, "library/llava");
        assert_eq!(c.source.revision, "7b");
        assert_eq!(w.passed.len(), 1, "{:?}", w.passed);
        assert!(w.passed[0].why.contains("no model layer"));

        let asked = Wanted {
            models: vec!["llava:7b".into()],
            projector: true,
        };
        let w = walk(root, &asked).unwrap();
        let names: Vec<_> = w.candidates.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["llava-7b", "llava-7b-mmproj"]);
        let missing = Wanted {
            models: vec!["llava:13b".into()],
            projector: false,
        };
        let e = walk(root, &missing).unwrap_err().to_string();
        assert!(e.contains("llava:13b: no such model"), "{e}");
        assert!(e.contains("(it has the tags 7b)"), "{e}");
    }

    #[test]
    fn a_model_of_several_weight_layers_gets_the_names_of_a_set() {
        let dir = tempfile::tempdir().unwrap();
        let layers: [(&str, &[u8]); 2] = [(MODEL_LAYER, b"GGUF 1"), (MODEL_LAYER, b"GGUF 2")];
        put(dir.path(), "registry.ollama.ai/library/big/q4", &layers);
        let w = walk(dir.path(), &Wanted::default()).unwrap();
        let names: Vec<_> = w.candidates.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["big-q4-00001-of-00002", "big-q4-00002-of-00002"]);
    }

    #[test]
    fn a_manifest_that_is_not_json_is_passed_over_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir
            .path()
            .join("manifests/registry.ollama.ai/library/bad/1");
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, b"{").unwrap();
        let w = walk(dir.path(), &Wanted::default()).unwrap();
        assert!(w.candidates.is_empty());
        assert!(w.passed[0].why.contains("is not JSON"), "{:?}", w.passed);
    }
}
