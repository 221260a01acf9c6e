//! Registry manifests: the OCI image manifest and index, the Docker v2
//! manifest and manifest list, and which layer of one is a GGUF file.
//!
//! A weight layer must be stored uncompressed, so that its digest is the
//! SHA-256 of the GGUF file itself: ModelPack's
//! `application/vnd.cncf.model.weight.v1.raw`, Docker model's
//! `application/vnd.docker.ai.gguf.*`, Ollama's
//! `application/vnd.ollama.image.model`, or any uncompressed layer whose
//! title ends in `.gguf`. Compressed or tarred weights are not GGUF files
//! and are never picked.

use std::fmt;

use serde_json::Value;

use crate::digest::Sha256;
use crate::text::human_bytes;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// What a manifest request accepts.
pub const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";
/// The largest manifest read.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

pub const MODELPACK_WEIGHT_RAW: &str = "application/vnd.cncf.model.weight.v1.raw";
pub const DOCKER_AI_GGUF_PREFIX: &str = "application/vnd.docker.ai.gguf";
pub const OLLAMA_MODEL: &str = "application/vnd.ollama.image.model";
/// The annotation naming a layer's file.
pub const TITLE: &str = "org.opencontainers.image.title";

/// One layer (or an index's manifest entry) as the manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Sha256,
    pub size: u64,
    /// `org.opencontainers.image.title`, when annotated.
    pub title: Option<String>,
}

impl fmt::Display for Descriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ({})",
            self.media_type,
            self.digest.short(),
            human_bytes(self.size)
        )?;
        if let Some(t) = &self.title {
            write!(f, " {t:?}")?;
        }
        Ok(())
    }
}

/// A parsed manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// An index or manifest list: the manifests it lists.
    Index(Vec<Descriptor>),
    /// An image (or artifact) manifest: its layers.
    Image(Vec<Descriptor>),
}

/// Why a manifest cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestError {
    Invalid(String),
    /// No layer is an uncompressed GGUF; the layers there are.
    NoWeightLayer(Vec<Descriptor>),
    /// More than one is.
    SeveralWeightLayers(Vec<Descriptor>),
    /// An index that lists no manifest.
    EmptyIndex,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[Descriptor]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        };
        match self {
            Self::Invalid(why) => write!(f, "the manifest does not parse: {why}"),
            Self::NoWeightLayer(v) if v.is_empty() => write!(f, "the manifest has no layers"),
            Self::NoWeightLayer(v) => write!(
                f,
                "no layer is an uncompressed GGUF file (layers: {})",
                list(v)
            ),
            Self::SeveralWeightLayers(v) => write!(
                f,
                "several layers are GGUF files, and modelfs pins one (layers: {})",
                list(v)
            ),
            Self::EmptyIndex => write!(f, "the index lists no manifest"),
        }
    }
}

impl std::error::Error for ManifestError {}

/// Parses a manifest body; `content_type` is the answer's `Content-Type`
/// (the body's `mediaType` wins when present).
pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Parsed, ManifestError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ManifestError::Invalid(e.to_string()))?;
    let media_type = v
        .get("mediaType")
        .and_then(Value::as_str)
        .or(content_type.map(|c| c.split(';').next().unwrap_or(c).trim()))
        .unwrap_or("");
    let is_index = matches!(media_type, OCI_INDEX | DOCKER_LIST)
        || (media_type.is_empty() && v.get("manifests").is_some());
    if is_index {
        let list = descriptors(&v, "manifests")?;
        if list.is_empty() {
            return Err(ManifestError::EmptyIndex);
        }
        return Ok(Parsed::Index(list));
    }
    if !matches!(media_type, OCI_MANIFEST | DOCKER_MANIFEST | "") {
        return Err(ManifestError::Invalid(format!(
            "media type {media_type:?} is not a manifest modelfs reads"
        )));
    }
    Ok(Parsed::Image(descriptors(&v, "layers")?))
}

fn descriptors(v: &Value, field: &str) -> Result<Vec<Descriptor>, ManifestError> {
    let bad = |why: String| ManifestError::Invalid(format!("{field}: {why}"));
    let Some(items) = v.get(field).and_then(Value::as_array) else {
        return Err(bad("missing or not a list".into()));
    };
    items
        .iter()
        .map(|d| {
            let digest = d
                .get("digest")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("an entry has no digest".into()))?;
            Ok(Descriptor {
                media_type: d
                    .get("mediaType")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                digest: Sha256::from_blob_ref(digest)
                    .map_err(|e| bad(format!("digest {digest:?}: {e}")))?,
                size: d
                    .get("size")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| bad("an entry has no size".into()))?,
                title: d
                    .pointer(&format!("/annotations/{}", TITLE.replace('/', "~1")))
                    .and_then(Value::as_str)
                    .map(str::to_string),
            })
        })
        .collect()
}

/// Whether a layer is an uncompressed GGUF file (see the module doc).
pub fn is_gguf_weight(d: &Descriptor) -> bool {
    let t = d.media_type.as_str();
    if t == MODELPACK_WEIGHT_RAW || t.starts_with(DOCKER_AI_GGUF_PREFIX) || t == OLLAMA_MODEL {
        return true;
    }
    let compressed = ["tar", "gzip", "zstd", "+gz"].iter().any(|c| t.contains(c));
    !compressed
        && d.title
            .as_deref()
            .is_some_and(|n| n.to_ascii_lowercase().ends_with(".gguf"))
}

/// The GGUF weight layers of a manifest that form one split set, in
/// shard order: Ollama model layers without titles (Ollama stores a split
/// model's shards in order), or layers all titled
/// `<stem>-0000k-of-0000N.gguf` with one of each `k` from 1 to `N`. `None`
/// when the layers are not such a set (several quantizations, say).
pub fn split_set(layers: &[Descriptor]) -> Option<Vec<Descriptor>> {
    let weights: Vec<&Descriptor> = layers.iter().filter(|d| is_gguf_weight(d)).collect();
    if weights.len() < 2 {
        return None;
    }
    if weights
        .iter()
        .all(|d| d.media_type == OLLAMA_MODEL && d.title.is_none())
    {
        return Some(weights.into_iter().cloned().collect());
    }
    let n = weights.len();
    let mut by_shard: Vec<Option<Descriptor>> = vec![None; n];
    for d in weights {
        let (k, of) = shard_of(d.title.as_deref()?)?;
        if of != n || k == 0 || k > n || by_shard[k - 1].is_some() {
            return None;
        }
        by_shard[k - 1] = Some(d.clone());
    }
    by_shard.into_iter().collect()
}

/// `x-00002-of-00003.gguf` → (2, 3), by the store's one reading of
/// shard names (`store::set`, as llama.cpp prints them).
fn shard_of(title: &str) -> Option<(usize, usize)> {
    let shard = crate::store::set::ShardName::parse(title.strip_suffix(".gguf")?)?;
    Some((shard.index as usize, shard.count as usize))
}

/// The one GGUF weight layer of an image manifest's layers.
pub fn weight_layer(layers: &[Descriptor]) -> Result<&Descriptor, ManifestError> {
    let mut weights = layers.iter().filter(|d| is_gguf_weight(d));
    match (weights.next(), weights.next()) {
        (Some(one), None) => Ok(one),
        (None, _) => Err(ManifestError::NoWeightLayer(layers.to_vec())),
        (Some(_), Some(_)) => Err(ManifestError::SeveralWeightLayers(
            layers
                .iter()
                .filter(|d| is_gguf_weight(d))
                .cloned()
                .collect(),
        )),
    }
}

/// The manifest of an index to follow: the only one, else the first that
/// is not an attestation (`unknown/unknown` platform entries are).
pub fn index_entry(entries: &[Descriptor]) -> Result<&Descriptor, ManifestError> {
    entries
        .iter()
        .find(|d| matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST | ""))
        .ok_or(ManifestError::EmptyIndex)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn layer(media: &str, c: char, size: u64, title: Option<&str>) -> String {
        let ann = title
            .map(|t| format!(r#","annotations":{{"{TITLE}":"{t}"}}"#))
            .unwrap_or_default();
        format!(
            r#"{{"mediaType":"{media}","digest":"sha256:{}","size":{size}{ann}}}"#,
            hex(c)
        )
    }

    fn image(media: &str, layers: &[String]) -> Vec<u8> {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{media}","config":{},"layers":[{}]}}"#,
            layer("application/vnd.oci.empty.v1+json", '0', 2, None),
            layers.join(",")
        )
        .into_bytes()
    }

    fn pick(body: &[u8]) -> Result<Descriptor, ManifestError> {
        match parse(body, None)? {
            Parsed::Image(l) => weight_layer(&l).cloned(),
            Parsed::Index(_) => panic!("an index"),
        }
    }

    #[test]
    fn the_gguf_layer_of_modelpack_docker_and_ollama_manifests_is_picked() {
        let mp = image(
            OCI_MANIFEST,
            &[
                layer(
                    "application/vnd.cncf.model.doc.v1.raw",
                    'd',
                    10,
                    Some("README.md"),
                ),
                layer(MODELPACK_WEIGHT_RAW, 'a', 1000, Some("m.gguf")),
            ],
        );
        let l = pick(&mp).unwrap();
        assert_eq!(
            (l.digest, l.size),
            (Sha256::from_hex(&hex('a')).unwrap(), 1000)
        );
        assert_eq!(l.title.as_deref(), Some("m.gguf"));
        let docker = image(
            OCI_MANIFEST,
            &[
                layer("application/vnd.docker.ai.gguf.v3", 'b', 5, None),
                layer("application/vnd.docker.ai.license", 'c', 5, None),
            ],
        );
        assert_eq!(
            pick(&docker).unwrap().digest,
            Sha256::from_hex(&hex('b')).unwrap()
        );
        let ollama = image(
            DOCKER_MANIFEST,
            &[
                layer(OLLAMA_MODEL, 'e', 7, None),
                layer("application/vnd.ollama.image.template", 'f', 1, None),
            ],
        );
        assert_eq!(pick(&ollama).unwrap().size, 7);
        let titled = image(
            OCI_MANIFEST,
            &[layer("application/octet-stream", 'a', 3, Some("x.GGUF"))],
        );
        assert!(pick(&titled).is_ok());
    }

    #[test]
    fn no_or_several_gguf_layers_fail_listing_the_layers() {
        let none = image(
            OCI_MANIFEST,
            &[
                layer(
                    "application/vnd.cncf.model.weight.v1.tar+gzip",
                    'a',
                    9,
                    Some("m.gguf"),
                ),
                layer("application/vnd.oci.image.layer.v1.tar", 'b', 9, None),
            ],
        );
        let e = pick(&none).unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(e, ManifestError::NoWeightLayer(ref v) if v.len() == 2),
            "{text}"
        );
        assert!(
            text.contains("weight.v1.tar+gzip") && text.contains("m.gguf"),
            "{text}"
        );
        let two = image(
            OCI_MANIFEST,
            &[
                layer(MODELPACK_WEIGHT_RAW, 'a', 9, None),
                layer(MODELPACK_WEIGHT_RAW, 'b', 9, None),
            ],
        );
        assert!(matches!(pick(&two), Err(ManifestError::SeveralWeightLayers(v)) if v.len() == 2));
    }

    #[test]
    fn shards_of_a_split_model_form_a_set_in_shard_order_but_other_ggufs_do_not() {
        let desc = |c: char, media: &str, title: Option<&str>| Descriptor {
            media_type: media.into(),
            digest: Sha256::from_hex(&hex(c)).unwrap(),
            size: 1,
            title: title.map(str::to_string),
        };
        let titled = [
            desc('b', MODELPACK_WEIGHT_RAW, Some("m-00002-of-00002.gguf")),
            desc(
                'd',
                "application/vnd.cncf.model.doc.v1.raw",
                Some("README.md"),
            ),
            desc('a', MODELPACK_WEIGHT_RAW, Some("m-00001-of-00002.gguf")),
        ];
        let set = split_set(&titled).unwrap();
        assert_eq!(
            set.iter()
                .map(|d| d.title.clone().unwrap())
                .collect::<Vec<_>>(),
            ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"]
        );
        let ollama = [desc('a', OLLAMA_MODEL, None), desc('b', OLLAMA_MODEL, None)];
        assert_eq!(split_set(&ollama).unwrap()[1].digest, ollama[1].digest);
        for not_a_set in [
            vec![
                desc('a', MODELPACK_WEIGHT_RAW, Some("m-q4.gguf")),
                desc('b', MODELPACK_WEIGHT_RAW, Some("m-q8.gguf")),
            ],
            vec![
                desc('a', MODELPACK_WEIGHT_RAW, Some("m-00001-of-00003.gguf")),
                desc('b', MODELPACK_WEIGHT_RAW, Some("m-00002-of-00003.gguf")),
            ],
            vec![
                desc('a', MODELPACK_WEIGHT_RAW, Some("m-00001-of-00002.gguf")),
                desc('b', MODELPACK_WEIGHT_RAW, Some("m-00001-of-00002.gguf")),
            ],
            vec![desc(
                'a',
                MODELPACK_WEIGHT_RAW,
                Some("m-00001-of-00001.gguf"),
            )],
        ] {
            assert_eq!(split_set(&not_a_set), None, "{not_a_set:?}");
        }
    }

    #[test]
    fn an_index_lists_manifests_and_the_first_image_manifest_is_followed() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{},{}]}}"#,
            layer("application/vnd.in-toto+json", '1', 5, None),
            layer(OCI_MANIFEST, '2', 500, None)
        );
        let Parsed::Index(list) = parse(body.as_bytes(), None).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(index_entry(&list).unwrap().size, 500);
        // The media type from the answer when the body has none.
        let bare = r#"{"schemaVersion":2,"layers":[]}"#;
        assert_eq!(
            parse(
                bare.as_bytes(),
                Some("application/vnd.docker.distribution.manifest.v2+json")
            ),
            Ok(Parsed::Image(vec![]))
        );
        assert!(
            parse(
                b"{}",
                Some("application/vnd.docker.distribution.manifest.v1+prettyjws")
            )
            .is_err()
        );
        assert!(parse(b"not json", None).is_err());
    }
}
