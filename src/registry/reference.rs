//! OCI references: `REGISTRY/REPO[:TAG][@sha256:HEX]`.
//!
//! The registry is always explicit (a host name with a dot or a port, or
//! `localhost`): there is no implied `docker.io`, so a reference never
//! silently names another server than the one typed.

use std::fmt;

use crate::digest::Sha256;

/// The tag a reference without one names.
pub const DEFAULT_TAG: &str = "latest";
/// The Ollama registry and the namespace its short names are in.
pub const OLLAMA_REGISTRY: &str = "registry.ollama.ai";
pub const OLLAMA_NAMESPACE: &str = "library";

/// A manifest in a registry repository, by tag and/or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`, lowercase.
    pub registry: String,
    /// `a/b/c`: lowercase path components.
    pub repo: String,
    pub tag: Option<String>,
    /// The manifest's digest, when pinned by one.
    pub digest: Option<Sha256>,
}

/// Why a reference was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceError {
    pub given: String,
    pub why: &'static str,
}

impl fmt::Display for ReferenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "OCI reference {:?}: {} (expected REGISTRY/REPO[:TAG][@sha256:HEX], \
             e.g. registry.example.com/models/llama:q4)",
            self.given, self.why
        )
    }
}

impl std::error::Error for ReferenceError {}

impl Reference {
    /// Parses `REGISTRY/REPO[:TAG][@sha256:HEX]`.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let given = s.trim();
        let err = |why| ReferenceError {
            given: given.to_string(),
            why,
        };
        let (rest, digest) = match given.split_once('@') {
            Some((r, d)) => (
                r,
                Some(
                    Sha256::from_blob_ref(d)
                        .map_err(|_| err("the digest is not sha256:<64 hex>"))?,
                ),
            ),
            None => (given, None),
        };
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| err("it names no repository"))?;
        if !is_registry(registry) {
            return Err(err(
                "the first component must be a registry host (with a dot or a port, or localhost)",
            ));
        }
        let (repo, tag) = split_tag(path);
        if let Some(t) = tag
            && !is_tag(t)
        {
            return Err(err("the tag is not [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"));
        }
        if !is_repo(repo) {
            return Err(err(
                "the repository is not lowercase path components of [a-z0-9._-]",
            ));
        }
        Ok(Self {
            registry: registry.to_ascii_lowercase(),
            repo: repo.to_string(),
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// An Ollama model `MODEL[:TAG]` or `NAMESPACE/MODEL[:TAG]` in
    /// `registry` (`library/` implied for a bare name).
    pub fn ollama(model: &str, registry: &str) -> Result<Self, ReferenceError> {
        let model = model.trim();
        let path = if model.contains('/') {
            model.to_string()
        } else {
            format!("{OLLAMA_NAMESPACE}/{model}")
        };
        Self::parse(&format!("{registry}/{path}"))
    }

    /// What `/v2/<repo>/manifests/<reference>` is asked for: the digest
    /// when pinned by one, else the tag (`latest` when none).
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_blob_ref(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// The tag, or `latest` when none was given.
    pub fn tag_or_default(&self) -> &str {
        self.tag.as_deref().unwrap_or(DEFAULT_TAG)
    }

    pub fn manifest_url(&self, reference: &str) -> String {
        format!(
            "https://{}/v2/{}/manifests/{reference}",
            self.registry, self.repo
        )
    }

    pub fn blob_url(&self, d: &Sha256) -> String {
        blob_url(&self.registry, &self.repo, d)
    }
}

/// `https://REGISTRY/v2/REPO/blobs/sha256:HEX`.
pub fn blob_url(registry: &str, repo: &str, d: &Sha256) -> String {
    format!("https://{registry}/v2/{repo}/blobs/{}", d.to_blob_ref())
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repo)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{}", d.to_blob_ref())?;
        }
        Ok(())
    }
}

/// `repo[:tag]`: a `:` after the last `/` starts the tag.
fn split_tag(path: &str) -> (&str, Option<&str>) {
    let last = path.rfind('/').map_or(0, |i| i + 1);
    match path[last..].rfind(':') {
        Some(i) => (&path[..last + i], Some(&path[last + i + 1..])),
        None => (path, None),
    }
}

/// A host name with a dot or a port, or `localhost`; an optional port.
pub fn is_registry(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !host.starts_with(['.', '-']);
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok());
    host_ok && port_ok && (host.contains('.') || port.is_some() || host == "localhost")
}

fn is_repo(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
                && c.as_bytes()[0].is_ascii_alphanumeric()
        })
}

fn is_tag(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && (s.as_bytes()[0].is_ascii_alphanumeric() || s.as_bytes()[0] == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_names_registry_repo_tag_and_digest() {
        let r = Reference::parse("Registry.example:5000/models/llama:q4_k_m").unwrap();
        assert_eq!(r.registry, "registry.example:5000");
        assert_eq!(r.repo, "models/llama");
        assert_eq!(r.tag.as_deref(), Some("q4_k_m"));
        assert_eq!(r.reference(), "q4_k_m");
        assert_eq!(
            r.manifest_url("q4_k_m"),
            "https://registry.example:5000/v2/models/llama/manifests/q4_k_m"
        );
        let hex = "ab".repeat(32);
        let r = Reference::parse(&format!("127.0.0.1:5000/a@sha256:{hex}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.reference(), format!("sha256:{hex}"));
        let r = Reference::parse("localhost/a/b").unwrap();
        assert_eq!(r.reference(), "latest");
        assert_eq!(r.to_string(), "localhost/a/b");
        let d = Sha256::from_hex(&hex).unwrap();
        assert_eq!(
            r.blob_url(&d),
            format!("https://localhost/v2/a/b/blobs/sha256:{hex}")
        );
    }

    #[test]
    fn a_reference_without_an_explicit_registry_or_with_bad_parts_is_refused() {
        for bad in [
            "library/llama",
            "llama",
            "registry.example/",
            "registry.example/Models",
            "registry.example/a//b",
            "registry.example/a/../b",
            "registry.example/a:",
            "registry.example/a:-x",
            "registry.example/a@sha256:12",
            "registry.example:x/a",
        ] {
            let e = Reference::parse(bad).unwrap_err();
            assert!(e.to_string().contains("REGISTRY/REPO"), "{bad}: {e}");
        }
    }

    #[test]
    fn an_ollama_name_is_in_the_library_namespace_unless_it_names_one() {
        let r = Reference::ollama("llama3.2:1b", OLLAMA_REGISTRY).unwrap();
        assert_eq!(r.registry, "registry.ollama.ai");
        assert_eq!(r.repo, "library/llama3.2");
        assert_eq!(r.tag.as_deref(), Some("1b"));
        let r = Reference::ollama("someone/model", "127.0.0.1:5000").unwrap();
        assert_eq!(r.repo, "someone/model");
        assert_eq!(r.tag_or_default(), "latest");
    }
}
