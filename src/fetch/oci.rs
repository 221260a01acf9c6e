//! Speaking to OCI distribution registries: the authentication every
//! request to one may need, and resolving a reference to what a manifest
//! pins (see [`crate::registry`] for the plain data).
//!
//! Authentication ([`RegistryAuth`], held by [`super::Http`]): a request
//! to `https://HOST/v2/REPO/…` that is answered `401` with a
//! `WWW-Authenticate` challenge is answered once and retried: `Bearer
//! realm=…,service=…,scope=…` asks the realm for a token (anonymously, or
//! with the Basic credential configured for `HOST` in a Docker-style
//! `config.json`), `Basic` sends that credential itself. What was granted
//! is kept per (HOST, REPO) and sent on later requests to that registry's
//! `/v2/REPO/` paths only. Promises: a credential goes only to the registry
//! it is configured for, or to the token realm that registry named; a
//! token goes only to the registry and repository it was granted for;
//! neither ever goes to the host a redirect leads to (blob storage gets the
//! signed URL alone), since every hop is authorised on its own URL.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::OnceLock;

use parking_lot::Mutex;
use ureq::Agent;
use ureq::http::{HeaderMap, Uri};

use super::error::FetchErrorKind;
use super::http::Fetched;
use super::pin::Pin;
use super::pipeline::Fetcher;
use crate::digest::Sha256;
use crate::registry::Reference;
use crate::registry::auth::{Challenge, Credentials, token_of};
use crate::registry::manifest::{self, Descriptor, ManifestError, Parsed};
use crate::store::Source;

/// The largest token answer read.
const MAX_TOKEN_BYTES: u64 = 1 << 20;
/// Index → manifest hops followed at most.
const MAX_INDEX_DEPTH: usize = 2;

/// The registry credentials and tokens of one [`super::Http`].
#[derive(Default)]
pub struct RegistryAuth {
    credentials: OnceLock<Credentials>,
    /// (HOST[:PORT], REPO) → the `Authorization` value granted.
    granted: Mutex<HashMap<(String, String), String>>,
    /// (HOST[:PORT], REPO) → why the last challenge could not be answered.
    refused: Mutex<HashMap<(String, String), String>>,
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RegistryAuth(<redacted>)")
    }
}

/// `https://HOST/v2/REPO/{blobs,manifests,tags}/…` → (HOST, REPO).
pub fn registry_target(url: &str) -> Option<(String, String)> {
    let uri = url.parse::<Uri>().ok()?;
    if !uri.scheme_str()?.eq_ignore_ascii_case("https") {
        return None;
    }
    let path = uri.path().strip_prefix("/v2/")?;
    let repo = ["/blobs/", "/manifests/", "/tags/"]
        .iter()
        .filter_map(|s| path.find(s).map(|i| &path[..i]))
        .min_by_key(|r| r.len())?;
    let host = uri.authority()?.as_str().to_ascii_lowercase();
    (!repo.is_empty()).then(|| (host, repo.to_string()))
}

impl RegistryAuth {
    fn credentials(&self) -> &Credentials {
        self.credentials.get_or_init(|| {
            Credentials::load().unwrap_or_else(|e| {
                log::warn!("registry credentials not used: {e}");
                Credentials::default()
            })
        })
    }

    /// Where credentials are read from, for messages.
    pub fn credentials_path(&self) -> Option<PathBuf> {
        self.credentials().path.clone()
    }

    /// Whether a credential is configured for `registry`.
    pub fn has_credential(&self, registry: &str) -> bool {
        self.credentials().get(registry).is_some()
    }

    /// The `Authorization` granted for this exact URL's registry and
    /// repository, if any.
    pub fn authorization(&self, url: &str) -> Option<String> {
        let key = registry_target(url)?;
        self.granted.lock().get(&key).cloned()
    }

    /// Why the last challenge for this URL's repository got no
    /// credential, if it got none.
    pub fn refusal(&self, url: &str) -> Option<String> {
        let key = registry_target(url)?;
        self.refused.lock().get(&key).cloned()
    }

    /// Answers the challenge of a `401` to `url`: `true` when something
    /// new was granted and the request is worth repeating.
    pub(super) fn answer(&self, agent: &Agent, url: &str, headers: &HeaderMap) -> bool {
        let Some(key) = registry_target(url) else {
            return false;
        };
        let challenge = headers
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(Challenge::parse);
        let result = match challenge {
            None => Err("the 401 carries no Bearer or Basic challenge".to_string()),
            Some(c) => self.grant(agent, &key, &c),
        };
        match result {
            Ok(value) => {
                let mut granted = self.granted.lock();
                let again = granted.get(&key) != Some(&value);
                granted.insert(key.clone(), value);
                self.refused.lock().remove(&key);
                again
            }
            Err(why) => {
                log::warn!("registry {} repository {}: {why}", key.0, key.1);
                self.refused.lock().insert(key, why);
                false
            }
        }
    }

    fn grant(
        &self,
        agent: &Agent,
        (host, repo): &(String, String),
        c: &Challenge,
    ) -> Result<String, String> {
        let cred = self.credentials().get(host);
        let Challenge::Bearer {
            realm,
            service,
            scope,
        } = c
        else {
            return cred.map(|c| c.basic()).ok_or_else(|| {
                format!("it asks for a password and none is configured for {host}")
            });
        };
        if !realm.to_ascii_lowercase().starts_with("https://") {
            return Err(format!("its token realm {realm:?} is not https://"));
        }
        let scope = scope
            .clone()
            .unwrap_or_else(|| format!("repository:{repo}:pull"));
        let mut url = format!("{realm}{}scope={}", sep(realm), query_escape(&scope));
        if let Some(s) = service {
            url.push_str(&format!("&service={}", query_escape(s)));
        }
        let mut req = agent.get(&url);
        if let Some(c) = cred {
            req = req.header("Authorization", c.basic());
        }
        let mut resp = req
            .call()
            .map_err(|e| format!("the token request to {realm} failed: {e}"))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(format!(
                "the token realm {realm} answered HTTP {status}{}",
                if cred.is_some() {
                    " to the configured credentials"
                } else {
                    " to an anonymous request"
                }
            ));
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_TOKEN_BYTES)
            .read_to_vec()
            .map_err(|e| format!("reading the token from {realm}: {e}"))?;
        token_of(&body)
            .map(|t| format!("Bearer {t}"))
            .ok_or_else(|| format!("the token realm {realm} answered no token"))
    }
}

fn sep(url: &str) -> char {
    if url.contains('?') { '&' } else { '?' }
}

/// Percent-encodes a query value (everything but unreserved characters).
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A reference resolved to what manifests pin: one GGUF layer, or the
/// shards of a split set in order.
#[derive(Debug)]
pub struct OciPin {
    pub pins: Vec<Pin>,
    /// The digest of the image manifest the layers are in.
    pub manifest_digest: Sha256,
    pub layers: Vec<Descriptor>,
}

/// Why a reference could not be pinned; nothing was added.
#[derive(Debug)]
pub struct OciError {
    pub model: String,
    pub reference: Reference,
    pub kind: OciErrorKind,
    /// A push failed (else a pin did).
    pub pushing: bool,
}

#[derive(Debug)]
pub enum OciErrorKind {
    Request(FetchErrorKind),
    /// The registry answered a manifest request with this status.
    Status {
        code: u16,
        /// What the authentication step said, when it failed.
        auth: Option<String>,
        credentials: Option<PathBuf>,
        has_credential: bool,
        /// The realm granted a token, and the registry refused it all the
        /// same (it is for other repositories or actions).
        granted: bool,
    },
    Manifest(ManifestError),
    /// A manifest asked for by digest has other bytes.
    DigestMismatch {
        expected: Sha256,
        actual: Sha256,
    },
    TooLarge,
    /// An index that leads to another index, and so on.
    TooDeep,
    /// A push step was answered with this status.
    Refused {
        what: &'static str,
        code: u16,
    },
}

impl fmt::Display for OciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.reference;
        write!(
            f,
            "{}: registry {}, repository {}, {} {}: ",
            self.model,
            r.registry,
            r.repo,
            if r.tag.is_none() && r.digest.is_some() {
                "manifest"
            } else {
                "tag"
            },
            r.tag.clone().unwrap_or_else(|| r.reference()),
        )?;
        match &self.kind {
            OciErrorKind::Request(k) => {
                write!(f, "{k}; check the registry's address and the network")
            }
            OciErrorKind::Status {
                code: code @ (401 | 403),
                ..
            } => {
                write!(f, "HTTP {code} (access denied)")?;
                self.what_to_do_when_denied(f)
            }
            OciErrorKind::Status { code: 404, .. } => write!(
                f,
                "HTTP 404 (no such repository or tag); check the repository name and the tag"
            ),
            OciErrorKind::Status { code, .. } => {
                write!(f, "HTTP {code}; check the registry, or try again later")
            }
            OciErrorKind::Manifest(e) => write!(f, "{e}; pin a reference to a GGUF model artifact"),
            OciErrorKind::DigestMismatch { expected, actual } => write!(
                f,
                "the manifest has digest {actual}, not {expected}; the registry is not to be trusted for it"
            ),
            OciErrorKind::TooLarge => write!(
                f,
                "the manifest is larger than {} MiB; not a model artifact",
                manifest::MAX_MANIFEST_BYTES >> 20
            ),
            OciErrorKind::Refused {
                what,
                code: code @ (401 | 403),
            } => write!(
                f,
                "HTTP {code} to {what}; log in (docker login / podman login {}) with an account that may push to {}",
                r.registry, r.repo
            ),
            OciErrorKind::Refused { what, code } => {
                write!(
                    f,
                    "HTTP {code} to {what}; check the registry and the repository name"
                )
            }
            OciErrorKind::TooDeep => {
                write!(f, "the index leads to more indexes than modelfs follows")
            }
        }?;
        f.write_str(if self.pushing {
            "; the tag was not pushed"
        } else {
            "; nothing was added"
        })
    }
}

impl OciError {
    /// After a 401 or 403: what the authentication step said, and whether
    /// to log in, fix the credentials, or ask for access.
    fn what_to_do_when_denied(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.reference;
        let OciErrorKind::Status {
            auth,
            credentials,
            has_credential,
            granted,
            ..
        } = &self.kind
        else {
            return Ok(());
        };
        if *granted {
            write!(
                f,
                "; the token its realm granted does not allow pulling {}: \
                         check that the account may read this repository",
                r.repo
            )?;
            return Ok(());
        }
        if let Some(a) = auth {
            write!(f, " ({a})")?;
        }
        let file = credentials
            .as_ref()
            .map_or("a Docker-style config.json".into(), |p| {
                p.display().to_string()
            });
        if *has_credential {
            write!(
                f,
                "; the credentials for {} in {file} were refused: log in again (docker login / podman login {0}) or fix them",
                r.registry
            )
        } else {
            write!(
                f,
                "; log in first (docker login / podman login {}, or an auths entry in {file}; REGISTRY_AUTH_FILE names another file)",
                r.registry
            )
        }
    }
}

impl std::error::Error for OciError {}

impl Fetcher {
    /// Resolves `r` to its GGUF weight layer (or the layers of a split
    /// set, [`manifest::split_set`]): the manifest (following an index to
    /// its first image manifest), the layers, and the source to record for
    /// each (registry, repository, tag, the layer's file name, and its blob
    /// URL to fetch).
    pub fn pin_oci(&self, r: &Reference, model: &str) -> Result<OciPin, OciError> {
        let fail = |kind| OciError {
            model: model.to_string(),
            reference: r.clone(),
            kind,
            pushing: false,
        };
        let mut want = r.reference();
        let mut expected = r.digest;
        for _ in 0..=MAX_INDEX_DEPTH {
            let (body, content_type) = self.manifest_body(r, &want).map_err(fail)?;
            let actual = Sha256::of(&body);
            if let Some(e) = expected
                && !actual.ct_eq(&e)
            {
                return Err(fail(OciErrorKind::DigestMismatch {
                    expected: e,
                    actual,
                }));
            }
            match manifest::parse(&body, content_type.as_deref())
                .map_err(|e| fail(OciErrorKind::Manifest(e)))?
            {
                Parsed::Index(entries) => {
                    let next = manifest::index_entry(&entries)
                        .map_err(|e| fail(OciErrorKind::Manifest(e)))?;
                    want = next.digest.to_blob_ref();
                    expected = Some(next.digest);
                }
                Parsed::Image(layers) => {
                    if let Some(set) = manifest::split_set(&layers) {
                        return Ok(oci_pin(r, actual, set));
                    }
                    let layer = manifest::weight_layer(&layers)
                        .map_err(|e| fail(OciErrorKind::Manifest(e)))?
                        .clone();
                    return Ok(oci_pin(r, actual, vec![layer]));
                }
            }
        }
        Err(fail(OciErrorKind::TooDeep))
    }

    /// `GET /v2/REPO/manifests/REFERENCE`: its body and `Content-Type`.
    fn manifest_body(
        &self,
        r: &Reference,
        reference: &str,
    ) -> Result<(Vec<u8>, Option<String>), OciErrorKind> {
        let url = r.manifest_url(reference);
        let mut resp = self
            .http()
            .get_accepting(&url, manifest::ACCEPT)
            .map_err(OciErrorKind::Request)?;
        if resp.status != 200 {
            let auth = self.http().registry_auth();
            return Err(OciErrorKind::Status {
                code: resp.status,
                auth: auth.refusal(&url),
                credentials: auth.credentials_path(),
                has_credential: auth.has_credential(&r.registry),
                granted: auth
                    .authorization(&url)
                    .is_some_and(|a| a.starts_with("Bearer ")),
            });
        }
        let content_type = resp.header("content-type").map(str::to_string);
        let body = read_small(&mut resp, manifest::MAX_MANIFEST_BYTES)?;
        Ok((body, content_type))
    }
}

fn oci_pin(r: &Reference, manifest_digest: Sha256, layers: Vec<Descriptor>) -> OciPin {
    let last = r.repo.rsplit('/').next().unwrap_or(&r.repo);
    let n = layers.len();
    let pins = layers
        .iter()
        .enumerate()
        .map(|(i, layer)| {
            let filename = layer
                .title
                .clone()
                .filter(|t| !t.contains('/') && !t.is_empty())
                .unwrap_or_else(|| match n {
                    1 => format!("{last}.gguf"),
                    _ => format!(
                        "{}.gguf",
                        crate::store::set::ShardName::format(last, i as u32 + 1, n as u32)
                    ),
                });
            let source = Source {
                registry: r.registry.clone(),
                repo: r.repo.clone(),
                revision: r.tag.clone().unwrap_or_else(|| r.reference()),
                filename,
                url: Some(r.blob_url(&layer.digest)),
            };
            Pin {
                blob: layer.digest,
                size: layer.size,
                source,
                note: None,
            }
        })
        .collect();
    OciPin {
        pins,
        manifest_digest,
        layers,
    }
}

/// A body of at most `limit` bytes.
fn read_small(resp: &mut Fetched, limit: usize) -> Result<Vec<u8>, OciErrorKind> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = resp.read(&mut buf).map_err(OciErrorKind::Request)?;
        if n == 0 {
            return Ok(out);
        }
        if out.len() + n > limit {
            return Err(OciErrorKind::TooLarge);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_registry_api_urls_have_a_registry_and_repository() {
        let t = |u| registry_target(u);
        assert_eq!(
            t("https://Reg.example:5000/v2/a/b/blobs/sha256:00"),
            Some(("reg.example:5000".into(), "a/b".into()))
        );
        assert_eq!(
            t("https://reg.example/v2/library/llama/manifests/latest"),
            Some(("reg.example".into(), "library/llama".into()))
        );
        // A repository may itself be called "blobs": the first marker wins.
        assert_eq!(
            t("https://r.example/v2/x/blobs/blobs/sha256:00"),
            Some(("r.example".into(), "x".into()))
        );
        assert_eq!(
            t("https://storage.example/docker/registry/v2/blobs/sha256/aa/x/data"),
            None
        );
        assert_eq!(t("https://r.example/v2/"), None);
        assert_eq!(t("http://r.example/v2/a/blobs/sha256:00"), None);
    }

    #[test]
    fn a_grant_is_sent_only_to_its_registry_and_repository() {
        let auth = RegistryAuth::default();
        auth.granted
            .lock()
            .insert(("reg.example:5000".into(), "a/b".into()), "Bearer t".into());
        let ok = "https://reg.example:5000/v2/a/b/blobs/sha256:00";
        assert_eq!(auth.authorization(ok).as_deref(), Some("Bearer t"));
        for other in [
            "https://reg.example/v2/a/b/blobs/sha256:00",
            "https://reg.example:5000/v2/a/c/blobs/sha256:00",
            "https://blobs.example/v2/a/b/blobs/sha256:00",
            "https://reg.example:5000/a/b/blobs/sha256:00",
        ] {
            assert_eq!(auth.authorization(other), None, "{other}");
        }
        assert_eq!(
            query_escape("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
    }
}
