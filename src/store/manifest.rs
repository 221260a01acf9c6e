//! Manifest schema v1: `manifests/<name>.json`, which names a blob.
//!
//! Parsing is strict about the fields the convention defines (types, digest
//! form, name agreeing with the file name) and lenient about everything else:
//! unknown fields, at the top level and inside `source`, are kept verbatim and
//! written back on rewrite, so that modelfs never strips what another tool
//! put there. Input is bounded ([`MAX_MANIFEST_BYTES`]) before it is parsed.
//!
//! This module does no I/O; [`super::Store`] reads and writes the files.

use std::fmt;

use serde_json::{Map, Value};

use crate::digest::{DigestParseError, Sha256};
use crate::store::name::{ModelName, NameError};

/// The schema version this code reads and writes.
pub const SCHEMA_VERSION: u64 = 1;
/// Largest manifest file accepted. Real ones are well under 2 KiB.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;
/// Largest `size_bytes` accepted: file sizes and offsets are signed 64-bit
/// numbers (`off_t`) in the kernel, so nothing larger can be served.
pub const MAX_SIZE_BYTES: u64 = i64::MAX as u64;
/// Longest string accepted in any known field.
const MAX_FIELD_BYTES: usize = 4096;

/// Where a blob comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Source {
    pub registry: String,
    pub repo: String,
    pub revision: String,
    pub filename: String,
    /// modelfs's addition: the exact `https://` URL to fetch.
    pub url: Option<String>,
}

impl Source {
    /// The URL to fetch the blob from: `source.url`, else the Hugging Face
    /// resolve URL for a `huggingface.co` source, else `None`.
    pub fn fetch_url(&self) -> Option<String> {
        if let Some(u) = &self.url {
            return Some(u.clone());
        }
        if self.registry == "huggingface.co" && !self.repo.is_empty() && !self.filename.is_empty() {
            let rev = if self.revision.is_empty() {
                "main"
            } else {
                &self.revision
            };
            return Some(format!(
                "https://huggingface.co/{}/resolve/{}/{}",
                self.repo, rev, self.filename
            ));
        }
        None
    }
}

/// A parsed manifest. Build new ones with [`Manifest::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub name: ModelName,
    /// `gguf`, `safetensors`, …; also the mounted file's extension.
    pub format: String,
    pub blob: Sha256,
    pub size_bytes: u64,
    pub license: Option<String>,
    pub source: Source,
    pub produced_by: String,
    pub produced_at: String,
    /// What the GGUF header says about the model (`gguf`, an object other
    /// tools keep), read when it was added, without downloading it.
    pub gguf: Option<std::sync::Arc<crate::gguf::Facts>>,
    /// Every field as read, known or not (known ones are overwritten on
    /// write), kept only when the manifest has fields modelfs does not
    /// know: a mount holds every manifest, and a copy of each as JSON
    /// values cost 100,000 manifests a few hundred MB.
    raw: Option<Box<Map<String, Value>>>,
}

/// The fields of schema v1, at the top and in `source`.
const KNOWN: [&str; 10] = [
    "schema_version",
    "name",
    "format",
    "blob",
    "size_bytes",
    "license",
    "source",
    "produced_by",
    "produced_at",
    "gguf",
];
const KNOWN_SOURCE: [&str; 5] = ["registry", "repo", "revision", "filename", "url"];

/// Whether `raw` has a field that [`KNOWN`] or [`KNOWN_SOURCE`] lacks.
fn has_unknown_fields(raw: &Map<String, Value>) -> bool {
    raw.keys().any(|k| !KNOWN.contains(&k.as_str()))
        || matches!(raw.get("source"), Some(Value::Object(src))
            if src.keys().any(|k| !KNOWN_SOURCE.contains(&k.as_str())))
}

/// Why a manifest was refused.
#[derive(Debug)]
pub enum ManifestError {
    /// The file's size in bytes.
    TooLarge(u64),
    Json(serde_json::Error),
    NotAnObject,
    /// A known field is missing or has the wrong type or form.
    Field {
        field: &'static str,
        problem: String,
    },
    UnsupportedVersion(u64),
    BadName(NameError),
    BadDigest(DigestParseError),
    /// The `name` field is not the file's basename.
    NameMismatch {
        file: String,
        field: String,
    },
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge(n) => write!(
                f,
                "manifest is {n} bytes, the limit is {MAX_MANIFEST_BYTES}"
            ),
            Self::Json(e) => write!(f, "manifest is not valid JSON: {e}"),
            Self::NotAnObject => f.write_str("manifest must be a JSON object"),
            Self::Field { field, problem } => write!(f, "manifest field `{field}` {problem}"),
            Self::UnsupportedVersion(v) => {
                write!(
                    f,
                    "manifest schema_version {v} is not supported (this modelfs reads {SCHEMA_VERSION})"
                )
            }
            Self::BadName(e) => write!(f, "manifest name is invalid: {e}"),
            Self::BadDigest(e) => write!(f, "manifest blob is invalid: {e}"),
            Self::NameMismatch { file, field } => {
                write!(
                    f,
                    "manifest file is named {file:?} but its name field says {field:?}"
                )
            }
        }
    }
}

impl std::error::Error for ManifestError {}

/// Formats are file extensions: keep them short and plain.
pub fn validate_format(format: &str) -> Result<(), String> {
    let ok = !format.is_empty()
        && format.len() <= 32
        && format
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be 1-32 lowercase letters, digits, '-' or '_', got {format:?}"
        ))
    }
}

impl Manifest {
    /// A fresh v1 manifest produced by this modelfs now.
    pub fn new(
        name: ModelName,
        format: &str,
        blob: Sha256,
        size_bytes: u64,
        source: Source,
    ) -> Self {
        Self {
            name,
            format: format.to_string(),
            blob,
            size_bytes,
            license: None,
            source,
            produced_by: format!("modelfs/{}", env!("CARGO_PKG_VERSION")),
            produced_at: crate::store::timestamp::format_rfc3339(std::time::SystemTime::now()),
            gguf: None,
            raw: None,
        }
    }

    /// Parses manifest bytes read from `manifests/<file_stem>.json`.
    pub fn parse(bytes: &[u8], file_stem: &str) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(bytes.len() as u64));
        }
        let value: Value = serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
        let Value::Object(raw) = value else {
            return Err(ManifestError::NotAnObject);
        };
        let version = uint(&raw, "schema_version")?;
        if version != SCHEMA_VERSION {
            return Err(ManifestError::UnsupportedVersion(version));
        }
        let name_field = string(&raw, "name")?;
        let name = ModelName::parse(&name_field).map_err(ManifestError::BadName)?;
        if name.as_str() != file_stem {
            return Err(ManifestError::NameMismatch {
                file: file_stem.to_string(),
                field: name_field,
            });
        }
        let format = string(&raw, "format")?;
        validate_format(&format).map_err(|problem| ManifestError::Field {
            field: "format",
            problem,
        })?;
        let blob =
            Sha256::from_blob_ref(&string(&raw, "blob")?).map_err(ManifestError::BadDigest)?;
        let license = match raw.get("license") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(bounded(s, "license")?.to_string()),
            Some(_) => return Err(field_err("license", "must be a string or null")),
        };
        let source = parse_source(raw.get("source"))?;
        Ok(Self {
            name,
            format,
            blob,
            size_bytes: size(&raw)?,
            license,
            source,
            produced_by: string(&raw, "produced_by")?,
            produced_at: string(&raw, "produced_at")?,
            // Facts of another shape (a newer modelfs) read as what fits.
            gguf: raw
                .get("gguf")
                .filter(|v| v.is_object())
                .map(|v| std::sync::Arc::new(crate::gguf::Facts::from_json(v))),
            raw: has_unknown_fields(&raw).then(|| Box::new(raw)),
        })
    }

    /// Serialises the manifest: known fields from the struct, unknown ones as
    /// they were read, in their original order (a manifest without unknown
    /// fields in the schema's order).
    pub fn to_json_bytes(&self) -> Vec<u8> {
        let mut obj = self.raw.as_deref().cloned().unwrap_or_default();
        obj.insert("schema_version".into(), SCHEMA_VERSION.into());
        obj.insert("name".into(), self.name.as_str().into());
        obj.insert("format".into(), self.format.as_str().into());
        obj.insert("blob".into(), self.blob.to_blob_ref().into());
        obj.insert("size_bytes".into(), self.size_bytes.into());
        obj.insert(
            "license".into(),
            self.license.clone().map_or(Value::Null, Value::String),
        );
        let mut src = match obj.get("source") {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        src.insert("registry".into(), self.source.registry.as_str().into());
        src.insert("repo".into(), self.source.repo.as_str().into());
        src.insert("revision".into(), self.source.revision.as_str().into());
        src.insert("filename".into(), self.source.filename.as_str().into());
        match &self.source.url {
            Some(u) => src.insert("url".into(), u.as_str().into()),
            None => src.remove("url"),
        };
        obj.insert("source".into(), Value::Object(src));
        obj.insert("produced_by".into(), self.produced_by.as_str().into());
        obj.insert("produced_at".into(), self.produced_at.as_str().into());
        if let Some(f) = &self.gguf {
            obj.insert("gguf".into(), f.to_json());
        }
        let mut out =
            serde_json::to_vec_pretty(&Value::Object(obj)).expect("a JSON value always serialises");
        out.push(b'\n');
        out
    }

    /// An optional string field of `source` that [`Source`] has no member
    /// for (a source kind's own: `oci_manifest`), as read or set.
    pub fn source_field(&self, key: &str) -> Option<&str> {
        self.raw.as_deref()?.get("source")?.get(key)?.as_str()
    }

    /// Sets such a field; it is written with the manifest and kept by
    /// other tools like any field they do not know.
    pub fn set_source_field(&mut self, key: &str, value: &str) {
        if self.raw.is_none() {
            // The fields in the schema's order, then this one.
            if let Ok(Value::Object(m)) = serde_json::from_slice(&self.to_json_bytes()) {
                self.raw = Some(Box::new(m));
            }
        }
        let raw = self.raw.get_or_insert_with(Box::default);
        if let Some(Value::Object(src)) = raw.get_mut("source") {
            src.insert(key.into(), value.into());
        }
    }

    /// The URL to fetch the blob from; see [`Source::fetch_url`].
    pub fn fetch_url(&self) -> Option<String> {
        self.source.fetch_url()
    }

    /// The name this model has in the mount: `<name>.<format>`.
    pub fn file_name(&self) -> String {
        format!("{}.{}", self.name, self.format)
    }
}

fn field_err(field: &'static str, problem: &str) -> ManifestError {
    ManifestError::Field {
        field,
        problem: problem.to_string(),
    }
}

fn bounded<'a>(s: &'a str, field: &'static str) -> Result<&'a str, ManifestError> {
    if s.len() > MAX_FIELD_BYTES {
        return Err(field_err(
            field,
            &format!("is longer than {MAX_FIELD_BYTES} bytes"),
        ));
    }
    Ok(s)
}

fn string(obj: &Map<String, Value>, field: &'static str) -> Result<String, ManifestError> {
    match obj.get(field) {
        Some(Value::String(s)) => Ok(bounded(s, field)?.to_string()),
        Some(_) => Err(field_err(field, "must be a string")),
        None => Err(field_err(field, "is missing")),
    }
}

fn uint(obj: &Map<String, Value>, field: &'static str) -> Result<u64, ManifestError> {
    match obj.get(field) {
        Some(v) => v
            .as_u64()
            .ok_or_else(|| field_err(field, "must be a non-negative integer")),
        None => Err(field_err(field, "is missing")),
    }
}

/// `size_bytes`, at most [`MAX_SIZE_BYTES`].
fn size(obj: &Map<String, Value>) -> Result<u64, ManifestError> {
    let n = uint(obj, "size_bytes")?;
    if n > MAX_SIZE_BYTES {
        return Err(field_err(
            "size_bytes",
            &format!("is {n}; no file can be larger than 2^63 - 1 = {MAX_SIZE_BYTES} bytes"),
        ));
    }
    Ok(n)
}

fn parse_source(v: Option<&Value>) -> Result<Source, ManifestError> {
    let obj = match v {
        Some(Value::Object(m)) => m,
        Some(_) => return Err(field_err("source", "must be an object")),
        None => return Err(field_err("source", "is missing")),
    };
    // The convention lists these as strings; absent ones read as empty so a
    // sparse source from another producer still mounts.
    let opt = |field: &'static str| -> Result<String, ManifestError> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(bounded(s, field)?.to_string()),
            Some(_) => Err(ManifestError::Field {
                field,
                problem: "must be a string".into(),
            }),
        }
    };
    let url = opt("url")?;
    if !url.is_empty() && !url.starts_with("https://") {
        return Err(field_err("source.url", "must be an https:// URL"));
    }
    Ok(Source {
        registry: opt("registry")?,
        repo: opt("repo")?,
        revision: opt("revision")?,
        filename: opt("filename")?,
        url: (!url.is_empty()).then_some(url),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The manifest of DESIGN.md §1, with every field of schema v1.
    pub(crate) const EXAMPLE: &str = r#"{
  "schema_version": 1,
  "name": "qwen2.5-0.5b-instruct-q4_k_m",
  "format": "gguf",
  "blob": "sha256:74a4da8c9fdbcd15bd1f6d01d621410d31c6fc00986f5eb687824e7b93d7a9db",
  "size_bytes": 491400032,
  "license": "apache-2.0",
  "source": {
    "registry": "huggingface.co",
    "repo": "Qwen/Qwen2.5-0.5B-Instruct-GGUF",
    "revision": "main",
    "filename": "qwen2.5-0.5b-instruct-q4_k_m.gguf"
  },
  "produced_by": "inferd/0.3.1",
  "produced_at": "2026-11-01T12:00:00Z"
}
"#;

    fn example() -> Manifest {
        Manifest::parse(EXAMPLE.as_bytes(), "qwen2.5-0.5b-instruct-q4_k_m").unwrap()
    }

    #[test]
    fn the_design_example_parses_and_round_trips_byte_for_byte() {
        let m = example();
        assert_eq!(m.size_bytes, 491_400_032);
        assert_eq!(m.license.as_deref(), Some("apache-2.0"));
        assert_eq!(m.file_name(), "qwen2.5-0.5b-instruct-q4_k_m.gguf");
        assert_eq!(String::from_utf8(m.to_json_bytes()).unwrap(), EXAMPLE);
    }

    #[test]
    fn a_huggingface_source_without_url_resolves_to_the_resolve_endpoint() {
        assert_eq!(
            example().fetch_url().unwrap(),
            "https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF/resolve/main/qwen2.5-0.5b-instruct-q4_k_m.gguf"
        );
    }

    #[test]
    fn a_source_field_of_a_new_kind_is_written_and_read_back() {
        let name = ModelName::parse("m").unwrap();
        let blob = Sha256::from_hex(&"ab".repeat(32)).unwrap();
        let mut m = Manifest::new(name, "gguf", blob, 5, Source::default());
        assert_eq!(m.source_field("oci_manifest"), None);
        m.set_source_field("oci_manifest", "sha256:00");
        let back = Manifest::parse(&m.to_json_bytes(), "m").unwrap();
        assert_eq!(back.source_field("oci_manifest"), Some("sha256:00"));
        assert_eq!(back, m);
        let text = String::from_utf8(m.to_json_bytes()).unwrap();
        assert!(
            text.find("schema_version") < text.find("oci_manifest"),
            "{text}"
        );
    }

    #[test]
    fn source_url_wins_over_the_registry() {
        let text = EXAMPLE.replace(
            "\"revision\": \"main\",",
            "\"revision\": \"main\", \"url\": \"https://mirror.example/x.gguf\",",
        );
        let m = Manifest::parse(text.as_bytes(), "qwen2.5-0.5b-instruct-q4_k_m").unwrap();
        assert_eq!(m.fetch_url().unwrap(), "https://mirror.example/x.gguf");
    }

    #[test]
    fn the_largest_size_a_file_can_have_is_accepted() {
        let text = EXAMPLE.replace("491400032", "9223372036854775807");
        let m = Manifest::parse(text.as_bytes(), "qwen2.5-0.5b-instruct-q4_k_m").unwrap();
        assert_eq!(m.size_bytes, MAX_SIZE_BYTES);
    }

    #[test]
    fn unknown_fields_survive_a_rewrite() {
        let text = EXAMPLE
            .replace(
                "\"produced_by\"",
                "\"x_other_tool\": {\"k\": [1, 2]},\n  \"produced_by\"",
            )
            .replace(
                "\"filename\": \"qwen2.5-0.5b-instruct-q4_k_m.gguf\"",
                "\"filename\": \"qwen2.5-0.5b-instruct-q4_k_m.gguf\", \"mirror_hint\": \"eu\"",
            );
        let mut m = Manifest::parse(text.as_bytes(), "qwen2.5-0.5b-instruct-q4_k_m").unwrap();
        m.license = None;
        let out: Value = serde_json::from_slice(&m.to_json_bytes()).unwrap();
        assert_eq!(out["x_other_tool"]["k"][1], 2);
        assert_eq!(out["source"]["mirror_hint"], "eu");
        assert_eq!(out["license"], Value::Null);
    }

    #[test]
    fn a_name_that_disagrees_with_the_file_name_is_refused() {
        let err = Manifest::parse(EXAMPLE.as_bytes(), "something-else").unwrap_err();
        assert!(matches!(err, ManifestError::NameMismatch { .. }), "{err}");
    }

    #[test]
    fn traversal_names_in_the_name_field_are_refused() {
        let text = EXAMPLE.replace(
            "\"name\": \"qwen2.5-0.5b-instruct-q4_k_m\"",
            "\"name\": \"../../etc/passwd\"",
        );
        assert!(matches!(
            Manifest::parse(text.as_bytes(), "x").unwrap_err(),
            ManifestError::BadName(_)
        ));
    }

    #[test]
    fn malformed_json_wrong_types_and_bad_digests_are_refused_with_the_field_named() {
        let cases: &[(&str, &str)] = &[
            ("{", "not valid JSON"),
            ("[1]", "JSON object"),
            (&EXAMPLE.replace("491400032", "\"491400032\""), "size_bytes"),
            (&EXAMPLE.replace("491400032", "-1"), "size_bytes"),
            (
                &EXAMPLE.replace("491400032", "9223372036854775808"),
                "size_bytes` is 9223372036854775808; no file can be larger than 2^63 - 1",
            ),
            (
                &EXAMPLE.replace("491400032", "18446744073709551615"),
                "size_bytes",
            ),
            (&EXAMPLE.replace("491400032", "1e30"), "size_bytes"),
            (
                &EXAMPLE.replace("\"schema_version\": 1", "\"schema_version\": 2"),
                "schema_version 2",
            ),
            (&EXAMPLE.replace("sha256:74a4", "sha256:74A4"), "lowercase"),
            (&EXAMPLE.replace("sha256:74a4", "sha256:74a"), "64 hex"),
            (&EXAMPLE.replace("sha256:74a4", "md5:74a4"), "sha256:"),
            (
                &EXAMPLE.replace("\"format\": \"gguf\"", "\"format\": \"../x\""),
                "format",
            ),
            (
                &EXAMPLE.replace(
                    "\"revision\": \"main\",",
                    "\"revision\": \"main\", \"url\": \"http://x/y\",",
                ),
                "https",
            ),
            (
                &EXAMPLE.replace("\"license\": \"apache-2.0\"", "\"license\": 7"),
                "license",
            ),
        ];
        for (text, needle) in cases {
            let err = Manifest::parse(text.as_bytes(), "qwen2.5-0.5b-instruct-q4_k_m")
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
        }
    }

    #[test]
    fn oversize_manifests_and_fields_are_refused_before_use() {
        let huge = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(
            Manifest::parse(&huge, "x").unwrap_err(),
            ManifestError::TooLarge(_)
        ));
        let long = EXAMPLE.replace("inferd/0.3.1", &"x".repeat(MAX_FIELD_BYTES + 1));
        assert!(
            Manifest::parse(long.as_bytes(), "qwen2.5-0.5b-instruct-q4_k_m")
                .unwrap_err()
                .to_string()
                .contains("longer")
        );
    }

    #[test]
    fn deeply_nested_json_is_refused_without_crashing() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(Manifest::parse(deep.as_bytes(), "x").is_err());
        let nested = format!("{{\"a\":{}1{}}}", "[".repeat(20_000), "]".repeat(20_000));
        assert!(Manifest::parse(nested.as_bytes(), "x").is_err());
    }
}
