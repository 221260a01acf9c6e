//! Errors of the fetch pipeline.
//!
//! Every [`FetchError`] names the model and, once known, the URL; its
//! [`FetchErrorKind`] says what went wrong and [`FetchError::hint`] what the
//! user can do. [`FetchErrorKind::is_transient`] is the single place that
//! decides what the retry loop retries.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::digest::Sha256;
use crate::store::StoreError;

/// What went wrong while fetching a blob.
#[derive(Debug)]
pub enum FetchErrorKind {
    /// The manifest has no `source.url` and no resolvable registry source.
    NoSource,
    /// A URL (given, or reached by a redirect) is not `https://`.
    InsecureUrl(String),
    /// The URL could not be parsed.
    BadUrl(String),
    /// The server answered with this status.
    Status {
        code: u16,
        retry_after: Option<Duration>,
    },
    /// Connecting, resolving or reading failed (resets, refused, a DNS
    /// server that did not answer).
    Network(String),
    /// The DNS answered that the host name does not exist: retrying will
    /// not help (a resolver that cannot be reached is `Network`).
    UnknownHost(String),
    /// No byte arrived for the stall timeout.
    Stalled(Duration),
    /// Bytes arrived, but fewer over the stall timeout than its minimum
    /// rate allows: a trickle that holds a fetch slot for hours.
    TooSlow {
        received: u64,
        window: Duration,
        min_rate: u64,
    },
    /// The server closed the connection before it answered: usually a
    /// kept-alive connection it had timed out just as we reused it.
    ClosedBeforeAnswer(String),
    /// The response's header block is too large or has too many headers:
    /// a broken server or proxy that will answer the same way again.
    BadHeaders(String),
    /// Certificate or handshake failure.
    Tls(String),
    /// Too many redirects, or one without a usable `Location`.
    Redirect(String),
    /// The server announced a length other than the manifest's size.
    LengthMismatch { expected: u64, announced: u64 },
    /// The server sent more bytes than the manifest's size.
    TooLong { expected: u64 },
    /// The bytes hash to another digest; they were moved to quarantine.
    DigestMismatch {
        expected: Sha256,
        actual: Sha256,
        quarantined: Option<PathBuf>,
    },
    /// A present blob file changed on disk since modelfs verified it, and
    /// its bytes no longer match; it was moved to quarantine. (With a URL
    /// the mount fetches the blob again; this is the failure without one.)
    ChangedOnDisk {
        expected: Sha256,
        actual: Sha256,
        quarantined: PathBuf,
    },
    /// Not enough free space for the rest of the file.
    NoSpace { needed: u64, available: u64 },
    /// The model cache cannot make room for the blob even after evicting
    /// everything evictable (what holds the space is in it).
    NoRoom(crate::store::evict::NoRoom),
    /// Reading or writing the store failed.
    Store(StoreError),
    /// The caller gave up (shutdown, every waiter left).
    Cancelled,
}

impl FetchErrorKind {
    /// What to check when the server refused the file outright (no
    /// access, no such file): the same whether fetching or pinning.
    pub fn refusal_hint(&self) -> Option<&'static str> {
        match self {
            Self::Status {
                code: 401 | 403, ..
            } => Some("the server refused access: for gated Hugging Face models set HF_TOKEN"),
            Self::Status {
                code: 404 | 410, ..
            } => Some("check the URL, repository, revision and file name"),
            _ => None,
        }
    }

    /// Whether trying again later may succeed without anyone changing
    /// anything: the retry loop retries exactly these.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Status { code, .. } => matches!(code, 408 | 425 | 429 | 500..=599),
            Self::Network(_)
            | Self::Stalled(_)
            | Self::TooSlow { .. }
            | Self::ClosedBeforeAnswer(_) => true,
            Self::NoSource
            | Self::BadHeaders(_)
            | Self::InsecureUrl(_)
            | Self::BadUrl(_)
            | Self::UnknownHost(_)
            | Self::Tls(_)
            | Self::Redirect(_)
            | Self::LengthMismatch { .. }
            | Self::TooLong { .. }
            | Self::DigestMismatch { .. }
            | Self::ChangedOnDisk { .. }
            | Self::NoSpace { .. }
            | Self::NoRoom(_)
            | Self::Store(_)
            | Self::Cancelled => false,
        }
    }

    /// Whether the failure is the source's own (what it answered, or that
    /// it could not be reached, or that its bytes were wrong), so another
    /// source of the same blob may do better; the fetch tries the next
    /// one for exactly these. Local trouble (space, the store) and a
    /// cancelled fetch are the same whatever the source.
    pub fn is_source_error(&self) -> bool {
        match self {
            Self::InsecureUrl(_)
            | Self::BadUrl(_)
            | Self::Status { .. }
            | Self::Network(_)
            | Self::UnknownHost(_)
            | Self::Stalled(_)
            | Self::TooSlow { .. }
            | Self::ClosedBeforeAnswer(_)
            | Self::BadHeaders(_)
            | Self::Tls(_)
            | Self::Redirect(_)
            | Self::LengthMismatch { .. }
            | Self::TooLong { .. }
            | Self::DigestMismatch { .. } => true,
            Self::NoSource
            | Self::NoSpace { .. }
            | Self::NoRoom(_)
            | Self::Store(_)
            | Self::ChangedOnDisk { .. }
            | Self::Cancelled => false,
        }
    }

    /// A few words for "retrying (3/8): connection refused" in the
    /// extended attributes and `modelfs status`.
    pub fn brief(&self) -> String {
        match self {
            Self::Network(d) | Self::ClosedBeforeAnswer(d) => {
                let d = d.split(" (os error").next().unwrap_or(d);
                d.to_lowercase()
            }
            Self::Status { code, .. } => format!("HTTP {code}"),
            Self::Stalled(t) => format!("no data for {} s", t.as_secs()),
            Self::TooSlow { .. } => "too slow".into(),
            other => other.to_string(),
        }
    }

    /// The OS error behind a store failure (ENOSPC, EACCES, …).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::NoSpace { .. } | Self::NoRoom(_) => Some(libc::ENOSPC),
            Self::Store(e) => e.raw_os_error(),
            _ => None,
        }
    }
}

impl fmt::Display for FetchErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSource => f.write_str(
                "the manifest has no source.url and no Hugging Face source to fetch from",
            ),
            Self::InsecureUrl(u) => write!(f, "refusing non-https URL {u}"),
            Self::BadUrl(u) => write!(f, "cannot parse URL {u:?}"),
            Self::Status { code, .. } => write!(f, "server answered HTTP {code}"),
            Self::Network(d) => write!(f, "network error: {d}"),
            Self::UnknownHost(d) => write!(f, "host not found (DNS): {d}"),
            Self::Stalled(t) => write!(f, "no data received for {} s", t.as_secs()),
            Self::TooSlow {
                received,
                window,
                min_rate,
            } => write!(
                f,
                "only {received} bytes received in {} s, below the minimum of {}/s",
                window.as_secs(),
                human_bytes(*min_rate)
            ),
            Self::ClosedBeforeAnswer(d) => {
                write!(f, "the server closed the connection before answering: {d}")
            }
            Self::BadHeaders(d) => write!(f, "unusable response headers: {d}"),
            Self::Tls(d) => write!(f, "TLS error: {d}"),
            Self::Redirect(d) => write!(f, "bad redirect: {d}"),
            Self::LengthMismatch {
                expected,
                announced,
            } => {
                write!(
                    f,
                    "server announced {announced} bytes but the manifest says {expected}"
                )
            }
            Self::TooLong { expected } => {
                write!(f, "server sent more than the manifest's {expected} bytes")
            }
            Self::DigestMismatch {
                expected,
                actual,
                quarantined,
            } => {
                write!(f, "SHA-256 mismatch: expected {expected}, got {actual}")?;
                if let Some(q) = quarantined {
                    write!(f, " (bytes moved to {})", q.display())?;
                }
                Ok(())
            }
            Self::ChangedOnDisk {
                expected,
                actual,
                quarantined,
            } => write!(
                f,
                "the blob file changed on disk since it was verified: expected {expected}, \
                 it now hashes to {actual} (moved to {})",
                quarantined.display()
            ),
            Self::NoSpace { needed, available } => write!(
                f,
                "not enough disk space: {} more needed, {} available",
                human_bytes(*needed),
                human_bytes(*available)
            ),
            Self::NoRoom(e) => write!(f, "{e}"),
            Self::Store(e) => write!(f, "store error: {e}"),
            Self::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// A failed fetch of one model.
#[derive(Debug)]
pub struct FetchError {
    pub model: String,
    pub url: Option<String>,
    pub kind: FetchErrorKind,
    /// How many HTTP attempts were made.
    pub attempts: u32,
    /// How many other sources of the same blob failed before this one
    /// (each is in the log with its model and URL).
    pub sources_failed_before: u32,
}

impl FetchError {
    pub fn new(model: impl Into<String>, url: Option<&str>, kind: FetchErrorKind) -> Self {
        Self {
            model: model.into(),
            url: url.map(str::to_string),
            kind,
            attempts: 0,
            sources_failed_before: 0,
        }
    }

    /// What the user can do about it.
    pub fn hint(&self) -> &'static str {
        if let FetchErrorKind::Status {
            code: 401 | 403, ..
        } = self.kind
            && self
                .url
                .as_deref()
                .is_some_and(|u| super::oci::registry_target(u).is_some())
        {
            return "the registry refused access: log in (docker login / podman login REGISTRY, or an auths entry in $REGISTRY_AUTH_FILE, $DOCKER_CONFIG/config.json or ~/.docker/config.json)";
        }
        if let Some(h) = self.kind.refusal_hint() {
            return h;
        }
        match &self.kind {
            FetchErrorKind::NoSource => {
                "re-add the model with `modelfs add NAME --url URL --sha256 HEX`"
            }
            FetchErrorKind::InsecureUrl(_) | FetchErrorKind::BadUrl(_) => {
                "use an https:// URL (modelfs never downloads over plain HTTP)"
            }
            FetchErrorKind::Status { .. }
            | FetchErrorKind::Network(_)
            | FetchErrorKind::Stalled(_)
            | FetchErrorKind::TooSlow { .. }
            | FetchErrorKind::ClosedBeforeAnswer(_) => {
                "check the network and the server; the next open or `modelfs pull` resumes the download"
            }
            FetchErrorKind::UnknownHost(_) => {
                "check the host name in the URL (and HF_ENDPOINT) and the DNS set-up; the next open or `modelfs pull` tries again"
            }
            FetchErrorKind::Tls(_) => {
                "check the server's certificate; for a private mirror pass --ca-file (or -o ca_file=) or set SSL_CERT_FILE"
            }
            FetchErrorKind::Redirect(_) => "check the URL; redirects must stay on https://",
            FetchErrorKind::BadHeaders(_) => {
                "the server (or a proxy on the way) sends a broken answer: check the URL and the proxy"
            }
            FetchErrorKind::LengthMismatch { .. } | FetchErrorKind::TooLong { .. } => {
                "the server's file is not the one the manifest pins: check the URL and the manifest's size_bytes"
            }
            FetchErrorKind::DigestMismatch { .. } => {
                "the server's file is not the one the manifest pins: check the URL and sha256, or re-add the model"
            }
            FetchErrorKind::ChangedOnDisk { .. } => {
                "the model is pending and has no URL to fetch it from: import the right file again (`modelfs import PATH --name NAME`) or re-add it with `modelfs add NAME --url URL --sha256 HEX`"
            }
            FetchErrorKind::NoSpace { .. } => "free disk space in the store and try again",
            FetchErrorKind::NoRoom(_) => {
                "unpin models (`modelfs unpin`), close open ones, raise cache_max or lower min_free \
                 (`modelfs settings`), or free disk space, and open it again"
            }
            FetchErrorKind::Store(StoreError::Unsafe { .. }) => {
                "remove what sits on that path; the next open or `modelfs pull` fetches the blob anew"
            }
            FetchErrorKind::Store(_) => "check permissions and space of the store directory",
            FetchErrorKind::Cancelled => "open the file again or run `modelfs pull` to continue",
        }
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fetching model {:?}", self.model)?;
        if let Some(u) = &self.url {
            write!(f, " from {}", redact_url(u))?;
        }
        write!(f, " failed: {}", self.kind)?;
        if self.attempts > 1 {
            write!(f, " (after {} attempts)", self.attempts)?;
        }
        match self.sources_failed_before {
            0 => {}
            1 => f.write_str(", and so did 1 other source of this blob (see the log)")?,
            n => write!(
                f,
                ", and so did {n} other sources of this blob (see the log)"
            )?,
        }
        write!(f, "; {}", self.hint())
    }
}

impl std::error::Error for FetchError {}

/// Moved to [`crate::text`]; re-exported here for the callers of the old
/// path.
pub use crate::text::{human_bytes, redact_url};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_and_stalls_are_retried_but_client_errors_are_not() {
        let st = |code| FetchErrorKind::Status {
            code,
            retry_after: None,
        };
        assert!(st(500).is_transient() && st(503).is_transient() && st(429).is_transient());
        assert!(!st(404).is_transient() && !st(401).is_transient() && !st(403).is_transient());
        assert!(FetchErrorKind::Stalled(Duration::from_secs(1)).is_transient());
        assert!(!FetchErrorKind::Tls("bad cert".into()).is_transient());
        assert!(
            !FetchErrorKind::NoSpace {
                needed: 1,
                available: 0
            }
            .is_transient()
        );
    }

    #[test]
    fn a_source_that_fails_on_its_own_lets_the_next_be_tried_but_local_trouble_does_not() {
        let st = |code| FetchErrorKind::Status {
            code,
            retry_after: None,
        };
        assert!(st(404).is_source_error() && st(503).is_source_error());
        assert!(FetchErrorKind::Network("refused".into()).is_source_error());
        assert!(
            FetchErrorKind::DigestMismatch {
                expected: Sha256::of(b"a"),
                actual: Sha256::of(b"b"),
                quarantined: None,
            }
            .is_source_error()
        );
        assert!(!FetchErrorKind::Cancelled.is_source_error());
        assert!(
            !FetchErrorKind::NoSpace {
                needed: 1,
                available: 0
            }
            .is_source_error()
        );
    }

    #[test]
    fn messages_name_the_model_the_url_and_what_to_do() {
        let e = FetchError::new(
            "llama",
            Some("https://u:p@h.example/f.gguf?sig=secret"),
            FetchErrorKind::NoSpace {
                needed: 3 << 30,
                available: 1 << 20,
            },
        );
        let s = e.to_string();
        assert!(
            s.contains("\"llama\"")
                && s.contains("https://h.example/f.gguf")
                && s.contains("3.0 GiB"),
            "{s}"
        );
        assert!(s.contains("free disk space"), "{s}");
        assert!(!s.contains("secret") && !s.contains("u:p"), "{s}");
    }

    #[test]
    fn urls_lose_their_userinfo_query_and_fragment_however_they_are_written() {
        for (url, shown) in [
            ("https://h.example/a/f.gguf", "https://h.example/a/f.gguf"),
            (
                "https://user:pw@h.example:8443/f?x=1",
                "https://h.example:8443/f",
            ),
            ("https://user@h.example/f", "https://h.example/f"),
            (
                "https://b.s3.amazonaws.com/f.gguf?X-Amz-Credential=AK&X-Amz-Signature=ff",
                "https://b.s3.amazonaws.com/f.gguf",
            ),
            (
                "https://cdn.example/f?sig=s3cr3t&se=1#frag",
                "https://cdn.example/f",
            ),
            ("https://h.example/f#token=s3cr3t", "https://h.example/f"),
            ("https://h.example?token=s3cr3t", "https://h.example/"),
            // Malformed: a '/' in the password, a space.
            ("https://u:pa/ss@h.example/f", "https://h.example/f"),
            ("https://u:p w@h.example/f", "https://h.example/f"),
            ("u:pw@h.example/f", "h.example/f"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
