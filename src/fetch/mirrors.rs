//! Digest-addressed mirrors: servers asked for a blob by its digest before
//! the manifest's own source.
//!
//! A blob is named by its SHA-256, so any server that has those bytes is
//! as good as the origin and none needs to be trusted: the digest check
//! decides. A mirror `https://host/base` is a store directory served over
//! HTTPS (another host's store behind nginx, or `modelfs serve`): the blob
//! `D` is `<base>/blobs/sha256/<aa>/<hex>/data`. A mirror
//! `oci://REGISTRY/REPO` is a repository of an OCI registry (a
//! pull-through cache, Harbor, Spegel, Kraken): the blob `D` is
//! `https://REGISTRY/v2/REPO/blobs/sha256:<hex>`.
//!
//! Failover: a mirror that fails for a reason of its own (refused, timed
//! out, 404, stalled, cut off) is skipped for [`BAD_FOR`] by every fetch
//! of this process, so a dead mirror costs one fetch a few seconds and the
//! others nothing; a mirror whose bytes failed a digest is never asked for
//! that blob again in this process (its bytes went to quarantine like any
//! mismatch). Mirrors are asked with a short connect timeout of their own
//! ([`MIRROR_CONNECT_TIMEOUT`], TLS handshake included, so a dead, silent
//! or unreachable mirror costs at most that) and few retries: the origin
//! is always there as the last resort. A mirror that did connect has the
//! usual stall timeout to answer, since a pull-through mirror (`modelfs
//! serve`) fetches and verifies a pinned blob before its first byte.
//!
//! Credentials: an `https://` mirror gets no `Authorization` header (the
//! Hugging Face token goes only to the Hub's host, [`super::http`]); an
//! `oci://` mirror gets what its registry's token flow grants for that
//! repository ([`super::oci`]), like any registry source.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::error::FetchErrorKind;
use crate::digest::Sha256;
use crate::text::redact_url;

/// How long a failed mirror is left out.
pub const BAD_FOR: Duration = Duration::from_secs(60);
/// Connecting to a mirror (TCP and TLS) gives up after this long.
pub const MIRROR_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A fetch from a mirror retries without progress for at most this long.
pub const MIRROR_RETRY_FOR: Duration = Duration::from_secs(5);

/// A mirror as configured: `-o mirror=URL`, `MODELFS_MIRRORS`, the store's
/// settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// `https://host[:port][/path]`, without a trailing `/`; for an OCI
    /// repository `https://REGISTRY/v2/REPO`.
    base: String,
    /// An `oci://` mirror: blobs are `<base>/blobs/sha256:<hex>`.
    oci: bool,
}

/// Why a mirror's address was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorError {
    pub given: String,
    pub why: &'static str,
}

impl fmt::Display for MirrorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mirror {:?}: {} (a mirror is https://HOST[:PORT][/PATH] of a store directory, \
             or oci://REGISTRY/REPO of a registry)",
            self.given, self.why
        )
    }
}

impl std::error::Error for MirrorError {}

impl Mirror {
    pub fn parse(s: &str) -> Result<Self, MirrorError> {
        let given = s.trim();
        let err = |why| MirrorError {
            given: given.to_string(),
            why,
        };
        if let Some(rest) = given.strip_prefix("oci://") {
            return Self::parse_oci(given, rest.trim_end_matches('/'));
        }
        let Some(rest) = given.strip_prefix("https://") else {
            return Err(err("only https:// mirrors are used"));
        };
        let host = rest.split('/').next().unwrap_or("");
        if host.is_empty() || host.contains('@') {
            return Err(err("it names no host, or carries credentials"));
        }
        if given.contains(['?', '#']) || given.chars().any(|c| c.is_whitespace()) {
            return Err(err("it has a query, a fragment or spaces"));
        }
        Ok(Self {
            base: given.trim_end_matches('/').to_string(),
            oci: false,
        })
    }

    /// `oci://REGISTRY/REPO` (no tag, no digest: blobs are asked by digest).
    fn parse_oci(given: &str, rest: &str) -> Result<Self, MirrorError> {
        let err = |why| MirrorError {
            given: given.to_string(),
            why,
        };
        let r = crate::registry::Reference::parse(rest).map_err(|_| {
            err("it is not oci://REGISTRY/REPO (an explicit registry host, a lowercase repository)")
        })?;
        if r.tag.is_some() || r.digest.is_some() {
            return Err(err(
                "an oci:// mirror names a repository, without a tag or digest",
            ));
        }
        Ok(Self {
            base: format!("https://{}/v2/{}", r.registry, r.repo),
            oci: true,
        })
    }

    /// Every mirror of a list separated by commas or whitespace.
    pub fn parse_list(s: &str) -> Result<Vec<Self>, MirrorError> {
        s.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .map(Self::parse)
            .collect()
    }

    /// Where this mirror has blob `d`.
    pub fn blob_url(&self, d: &Sha256) -> String {
        if self.oci {
            return format!("{}/blobs/{}", self.base, d.to_blob_ref());
        }
        let hex = d.to_hex();
        format!("{}/blobs/sha256/{}/{hex}/data", self.base, &hex[..2])
    }

    pub fn base(&self) -> &str {
        &self.base
    }
}

impl fmt::Display for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.oci {
            let repo = self
                .base
                .trim_start_matches("https://")
                .replacen("/v2/", "/", 1);
            return write!(f, "oci://{repo}");
        }
        f.write_str(&redact_url(&self.base))
    }
}

/// The configured mirrors and what this process learnt about them.
#[derive(Debug, Default)]
pub struct Mirrors {
    list: Vec<Mirror>,
    /// Mirror index → left out until then.
    bad_until: Mutex<HashMap<usize, Instant>>,
    /// (mirror index, blob) whose bytes failed the digest.
    liars: Mutex<HashSet<(usize, Sha256)>>,
}

impl Mirrors {
    pub fn new(list: Vec<Mirror>) -> Self {
        Self {
            list,
            ..Self::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn list(&self) -> &[Mirror] {
        &self.list
    }

    /// The mirrors to ask for `d` now, in their configured order, with
    /// their indexes: those not left out.
    pub fn usable_for(&self, d: &Sha256, now: Instant) -> Vec<(usize, &Mirror)> {
        let bad = self.bad_until.lock();
        let liars = self.liars.lock();
        self.list
            .iter()
            .enumerate()
            .filter(|(i, _)| bad.get(i).is_none_or(|&until| now >= until))
            .filter(|(i, _)| !liars.contains(&(*i, *d)))
            .collect()
    }

    /// Mirror `i` failed a fetch of `d` with `kind`: leaves it out as the
    /// module doc says. A failure that is not the mirror's (cancelled, a
    /// full disk) changes nothing.
    pub fn failed(&self, i: usize, d: &Sha256, kind: &FetchErrorKind, now: Instant) {
        let Some(m) = self.list.get(i) else { return };
        if matches!(kind, FetchErrorKind::DigestMismatch { .. }) {
            log::warn!(
                "mirror {m} sent wrong bytes for blob {}; not asking it for that blob again",
                d.short()
            );
            self.liars.lock().insert((i, *d));
        } else if kind.is_source_error() {
            log::warn!(
                "mirror {m} failed ({kind}); leaving it out for {} s",
                BAD_FOR.as_secs()
            );
            self.bad_until.lock().insert(i, now + BAD_FOR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> Sha256 {
        Sha256::from_hex(&"ab".repeat(32)).unwrap()
    }

    #[test]
    fn a_mirror_is_an_https_base_and_a_blob_is_found_under_it_by_digest() {
        let m = Mirror::parse("https://peer:8443/models/").unwrap();
        assert_eq!(
            m.blob_url(&digest()),
            format!(
                "https://peer:8443/models/blobs/sha256/ab/{}/data",
                "ab".repeat(32)
            )
        );
        for bad in [
            "http://peer/models",
            "https://",
            "https://user:pw@peer/x",
            "https://peer/x?token=1",
            "ftp://peer",
            "oci://registry/repo",
            "oci://reg.example/repo:tag",
            "oci://reg.example/Repo",
        ] {
            let e = Mirror::parse(bad).unwrap_err();
            assert!(e.to_string().contains("https://HOST"), "{e}");
        }
        let list = Mirror::parse_list("https://a, https://b/c\nhttps://d").unwrap();
        assert_eq!(list.len(), 3);
        assert!(Mirror::parse_list("https://a,http://b").is_err());
    }

    #[test]
    fn an_oci_mirror_is_a_registry_repository_asked_for_blobs_by_digest() {
        let m = Mirror::parse("oci://Cache.example:5000/models/shared/").unwrap();
        assert_eq!(
            m.blob_url(&digest()),
            format!(
                "https://cache.example:5000/v2/models/shared/blobs/sha256:{}",
                "ab".repeat(32)
            )
        );
        assert_eq!(m.to_string(), "oci://cache.example:5000/models/shared");
        assert_eq!(
            Mirror::parse_list("oci://r.example/a,https://b")
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn a_failed_mirror_is_left_out_for_a_while_and_a_lying_one_for_that_blob() {
        let ms = Mirrors::new(Mirror::parse_list("https://a,https://b,https://c").unwrap());
        let d = digest();
        let other = Sha256::from_hex(&"cd".repeat(32)).unwrap();
        let t0 = Instant::now();
        let refused = FetchErrorKind::Network("connection refused".into());
        ms.failed(0, &d, &refused, t0);
        let wrong = FetchErrorKind::DigestMismatch {
            expected: d,
            actual: other,
            quarantined: None,
        };
        ms.failed(1, &d, &wrong, t0);
        ms.failed(2, &d, &FetchErrorKind::Cancelled, t0);
        let names = |v: Vec<(usize, &Mirror)>| v.into_iter().map(|(i, _)| i).collect::<Vec<_>>();
        assert_eq!(names(ms.usable_for(&d, t0)), vec![2]);
        assert_eq!(names(ms.usable_for(&other, t0)), vec![1, 2]);
        assert_eq!(names(ms.usable_for(&d, t0 + BAD_FOR)), vec![0, 2]);
    }
}
