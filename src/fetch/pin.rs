//! What `add` asks a server before it writes a pending manifest: the size
//! of a URL's file (one `HEAD`), or a Hugging Face file's digest, size and
//! commit (one `HEAD` of its `resolve` URL, not followed: the Hub answers it
//! with `X-Linked-Etag`, `X-Linked-Size` and `X-Repo-Commit`). Nothing is
//! downloaded and nothing is written; every failure says that nothing was
//! added.

use std::fmt;

use super::http::{Fetched, host_of};
use super::{FetchErrorKind, Fetcher};
use crate::digest::Sha256;
use crate::store::Source;
use crate::text::redact_url;

/// A file resolved to what a manifest pins.
#[derive(Debug)]
pub struct Pin {
    pub blob: Sha256,
    pub size: u64,
    pub source: Source,
    /// What the caller should tell the user about the revision pinned.
    pub note: Option<PinNote>,
}

/// What became of the revision a Hub file was asked at.
#[derive(Debug, PartialEq, Eq)]
pub enum PinNote {
    /// `rev` (a branch or a tag) named `commit`; the pin holds the commit.
    AtCommit {
        repo: String,
        rev: String,
        commit: String,
    },
    /// The Hub did not say which commit `rev` is: the pin holds `rev`,
    /// which a later push can move.
    Movable { model: String, rev: String },
}

impl fmt::Display for PinNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AtCommit { repo, rev, commit } => {
                write!(f, "pinned {repo} at commit {commit} ({rev})")
            }
            Self::Movable { model, rev } => write!(
                f,
                "warning: the Hub did not say which commit {rev:?} is (no X-Repo-Commit); \
                 {model} is pinned to {rev:?}, which a later push can move"
            ),
        }
    }
}

/// Why a file could not be pinned; nothing was added.
#[derive(Debug)]
pub enum PinError {
    /// An `--hf` spec that is not `OWNER/REPO/FILE[@REVISION]`.
    BadHfSpec { spec: String },
    /// The request failed or the server refused it.
    Request {
        model: String,
        url: String,
        kind: FetchErrorKind,
    },
    /// The server did not say how large the file is.
    NoLength { model: String, url: String },
    /// The Hub gave no SHA-256 for the file (not an LFS file).
    NoLinkedEtag { model: String, url: String },
    /// The Hub gave no size for the file.
    NoLinkedSize { model: String, url: String },
}

impl fmt::Display for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadHfSpec { spec } => {
                write!(f, "--hf {spec:?}: expected OWNER/REPO/FILE[@REVISION]")
            }
            Self::Request { model, url, kind } => write!(
                f,
                "pinning {model}: asking {} failed: {kind}; nothing was added ({}, then run `modelfs add` again)",
                redact_url(url),
                request_hint(kind)
            ),
            Self::NoLength { model, url } => write!(
                f,
                "{model}: the server did not say how large {} is; pass --size BYTES",
                redact_url(url)
            ),
            Self::NoLinkedEtag { model, url } => write!(
                f,
                "{model}: {} has no X-Linked-Etag SHA-256 (not an LFS file?); use --url URL --sha256 HEX instead",
                redact_url(url)
            ),
            Self::NoLinkedSize { model, url } => write!(
                f,
                "{model}: {} has no X-Linked-Size header; use --url with --size",
                redact_url(url)
            ),
        }
    }
}

impl std::error::Error for PinError {}

/// What to check after a failed request while pinning: nothing was
/// written, so the hint is about running `add` again, never a later open.
fn request_hint(kind: &FetchErrorKind) -> &'static str {
    kind.refusal_hint().unwrap_or(match kind {
        FetchErrorKind::Tls(_) => {
            "check the server's certificate; for a private mirror pass --ca-file or set MODELFS_CA_FILE"
        }
        FetchErrorKind::InsecureUrl(_)
        | FetchErrorKind::BadUrl(_)
        | FetchErrorKind::Redirect(_) => "use an https:// URL whose redirects stay on https://",
        _ => "check the network and the URL",
    })
}

/// The source of a plain URL: its host as the registry, its last path
/// component (without query or fragment) as the file name.
pub fn url_source(url: &str) -> Source {
    let filename = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_string();
    Source {
        registry: host_of(url).unwrap_or_default(),
        filename,
        url: Some(url.to_string()),
        ..Source::default()
    }
}

/// Parses `OWNER/REPO/FILE[@REV]` (`REV` defaults to `main`) into a Hub
/// source; no component may be empty or `..`.
pub fn parse_hf_spec(spec: &str) -> Result<Source, PinError> {
    let bad = || PinError::BadHfSpec {
        spec: spec.to_string(),
    };
    let (path, rev) = match spec.rsplit_once('@') {
        Some((p, r)) if !r.is_empty() => (p, r),
        _ => (spec, "main"),
    };
    let mut parts = path.splitn(3, '/');
    let (Some(owner), Some(repo), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    if [owner, repo, file]
        .iter()
        .any(|s| s.is_empty() || s.split('/').any(|c| c == ".." || c.is_empty()))
    {
        return Err(bad());
    }
    Ok(Source {
        registry: "huggingface.co".into(),
        repo: format!("{owner}/{repo}"),
        revision: rev.into(),
        filename: file.into(),
        url: None,
    })
}

impl Fetcher {
    /// The size of the file at `url`, from a `HEAD` (redirects followed).
    pub fn head_size(&self, url: &str, model: &str) -> Result<u64, PinError> {
        let resp = self.head_for_pin(url, model, true, &[200])?;
        resp.content_length().ok_or_else(|| PinError::NoLength {
            model: model.to_string(),
            url: url.to_string(),
        })
    }

    /// Asks the Hub for the digest, size and commit of the file `spec`
    /// names (`OWNER/REPO/FILE[@REV]`). A branch moves: pinned at the
    /// commit it names now, a later push to it cannot turn this pin into a
    /// permanent digest mismatch.
    pub fn pin_hf(&self, spec: &str, model: &str) -> Result<Pin, PinError> {
        let mut source = parse_hf_spec(spec)?;
        let url = self
            .source_url(&source)
            .expect("an hf source always has a URL");
        let resp = self.head_for_pin(&url, model, false, &[200, 301, 302, 303, 307, 308])?;
        let missing = |make: fn(String, String) -> PinError| make(model.to_string(), url.clone());
        let blob = linked_etag(&resp)
            .ok_or_else(|| missing(|model, url| PinError::NoLinkedEtag { model, url }))?;
        let size = resp
            .header("x-linked-size")
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| missing(|model, url| PinError::NoLinkedSize { model, url }))?;
        let note = pin_commit(&mut source, resp.header("x-repo-commit"), model);
        Ok(Pin {
            blob,
            size,
            source,
            note,
        })
    }

    /// One `HEAD` of `url`; a status outside `ok` is a refusal.
    fn head_for_pin(
        &self,
        url: &str,
        model: &str,
        follow: bool,
        ok: &[u16],
    ) -> Result<Fetched, PinError> {
        let failed = |kind| PinError::Request {
            model: model.to_string(),
            url: url.to_string(),
            kind,
        };
        let resp = self.http().head(url, follow).map_err(failed)?;
        if !ok.contains(&resp.status) {
            return Err(failed(FetchErrorKind::Status {
                code: resp.status,
                retry_after: None,
            }));
        }
        Ok(resp)
    }
}

/// The SHA-256 the Hub gives as `X-Linked-Etag` (quoted, maybe weak).
fn linked_etag(resp: &Fetched) -> Option<Sha256> {
    let etag = resp.header("x-linked-etag")?;
    let hex = etag.trim().trim_start_matches("W/").trim_matches('"');
    Sha256::from_hex(hex).ok()
}

/// Replaces `source.revision` by the commit the Hub named, when it named
/// one; what to tell the user about it.
fn pin_commit(source: &mut Source, commit: Option<&str>, model: &str) -> Option<PinNote> {
    let rev = source.revision.clone();
    match commit.map(str::trim) {
        Some(commit) if is_commit(commit) => {
            source.revision = commit.to_string();
            (commit != rev).then(|| PinNote::AtCommit {
                repo: source.repo.clone(),
                rev,
                commit: commit.to_string(),
            })
        }
        _ if is_commit(&rev) => None,
        _ => Some(PinNote::Movable {
            model: model.to_string(),
            rev,
        }),
    }
}

/// A full git commit id: 40 lowercase hex digits.
fn is_commit(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_hf_spec_names_owner_repo_file_and_revision_or_main() {
        let s = parse_hf_spec("o/r/dir/f.gguf@v1").unwrap();
        assert_eq!(
            (s.repo.as_str(), s.filename.as_str()),
            ("o/r", "dir/f.gguf")
        );
        assert_eq!(s.revision, "v1");
        assert_eq!(parse_hf_spec("o/r/f.gguf").unwrap().revision, "main");
        for bad in ["o/r", "o//f", "o/r/../f", "o/r/f/"] {
            assert!(matches!(
                parse_hf_spec(bad),
                Err(PinError::BadHfSpec { .. })
            ));
        }
    }

    #[test]
    fn a_branch_is_pinned_at_the_commit_the_hub_names() {
        let commit = "a".repeat(40);
        let mut s = parse_hf_spec("o/r/f.gguf").unwrap();
        let note = pin_commit(&mut s, Some(&commit), "m");
        assert_eq!(s.revision, commit);
        assert!(matches!(note, Some(PinNote::AtCommit { .. })));
        let mut s = parse_hf_spec("o/r/f.gguf").unwrap();
        assert!(matches!(
            pin_commit(&mut s, None, "m"),
            Some(PinNote::Movable { .. })
        ));
        assert_eq!(s.revision, "main");
        let mut s = parse_hf_spec(&format!("o/r/f.gguf@{commit}")).unwrap();
        assert_eq!(pin_commit(&mut s, None, "m"), None);
    }

    #[test]
    fn a_urls_source_is_its_host_and_last_component() {
        let s = url_source("https://Example.org/a/b/m.gguf?download=1#x");
        assert_eq!(s.filename, "m.gguf");
        assert_eq!(
            s.url.as_deref(),
            Some("https://Example.org/a/b/m.gguf?download=1#x")
        );
    }
}
