//! Which requests `modelfs serve` answers: `GET` and `HEAD` of
//! `/blobs/sha256/<aa>/<hex>/data` and nothing else (no listings, nothing
//! outside `blobs/`, never a partial), optionally below a base path.

use crate::digest::Sha256;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The blob with this digest (`head`: headers only).
    Blob { digest: Sha256, head: bool },
    /// A method other than GET or HEAD.
    MethodNotAllowed,
    /// Any other path.
    NotFound,
}

/// Routes `method` and `path` (without the query), `base` being the
/// path prefix the store is served under (`""` for the root).
pub fn route(method: &str, path: &str, base: &str) -> Route {
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::MethodNotAllowed,
    };
    let Some(rest) = path.strip_prefix(base.trim_end_matches('/')) else {
        return Route::NotFound;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let ["", "blobs", "sha256", aa, hex, "data"] = parts.as_slice() else {
        return Route::NotFound;
    };
    // The digest parser wants lowercase hex: `%2e%2e`, `..` and uppercase
    // all end here as "not found".
    match Sha256::from_hex(hex) {
        Ok(digest) if hex.get(..2) == Some(*aa) => Route::Blob { digest, head },
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_blob_paths_by_digest_are_served() {
        let hex = "ab".repeat(32);
        let d = Sha256::from_hex(&hex).unwrap();
        let path = format!("/blobs/sha256/ab/{hex}/data");
        assert_eq!(
            route("GET", &path, ""),
            Route::Blob {
                digest: d,
                head: false
            }
        );
        assert_eq!(
            route("HEAD", &format!("/store{path}"), "/store/"),
            Route::Blob {
                digest: d,
                head: true
            }
        );
        assert_eq!(route("PUT", &path, ""), Route::MethodNotAllowed);
        for bad in [
            "/".to_string(),
            "/blobs/".to_string(),
            "/blobs/sha256/ab/".to_string(),
            format!("/blobs/sha256/cd/{hex}/data"),
            format!("/blobs/sha256/ab/.partial-{hex}/data.tmp"),
            format!("/blobs/sha256/ab/{hex}/data/"),
            format!("/blobs/sha256/ab/{hex}/../../../manifests/x.json"),
            format!("/blobs/sha256/AB/{}/data", hex.to_uppercase()),
            format!("/blobs/sha256/ab/{hex}/data"),
            "/manifests/x.json".to_string(),
            "/locks/x.lock".to_string(),
        ] {
            let base = if bad.starts_with("/blobs/sha256/ab/abab") {
                "/other"
            } else {
                ""
            };
            assert_eq!(route("GET", &bad, base), Route::NotFound, "{bad}");
        }
    }
}
