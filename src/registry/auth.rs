//! The registry's side of authentication, as plain data: the
//! `WWW-Authenticate` challenge, a Docker-style `config.json`, the token
//! endpoint's answer.
//!
//! Credentials are looked up by the registry's `host[:port]` only, so a
//! credential is used for the registry it was configured for and nothing
//! else (the caller sends it to that registry, or to the token realm that
//! registry named).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// What a `401` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Bearer realm=…,service=…,scope=…`: ask `realm` for a token.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    /// `Basic realm=…`: send the credentials themselves.
    Basic,
}

impl Challenge {
    /// Parses a `WWW-Authenticate` value; `None` for another scheme.
    pub fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Self::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = auth_params(params);
        Some(Self::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        })
    }
}

/// `k=v, k="v, with comma"` → map (keys lowercase).
fn auth_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &q[end.min(q.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.insert(key, value);
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({:?}, <redacted>)", self.user)
    }
}

impl Credential {
    /// The `Authorization` value.
    pub fn basic(&self) -> String {
        format!(
            "Basic {}",
            base64_encode(format!("{}:{}", self.user, self.password).as_bytes())
        )
    }
}

/// The credentials of a Docker-style `config.json`, by registry
/// `host[:port]` (lowercase).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// Where they were read from (for messages).
    pub path: Option<PathBuf>,
    by_registry: HashMap<String, Credential>,
}

impl Credentials {
    /// Parses `{"auths": {"HOST": {"auth": base64(user:pass)}}}`; keys may
    /// also be `https://HOST/v1/` (older Docker) and entries may carry
    /// `username` and `password` instead of `auth`. Entries of another
    /// form (credential helpers, identity tokens) are skipped.
    pub fn parse(json: &[u8], path: Option<PathBuf>) -> Result<Self, String> {
        let v: Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        let mut by_registry = HashMap::new();
        if let Some(auths) = v.get("auths").and_then(Value::as_object) {
            for (key, entry) in auths {
                if let Some(c) = credential_of(entry) {
                    by_registry.insert(registry_key(key), c);
                }
            }
        }
        Ok(Self { path, by_registry })
    }

    /// Reads the file [`config_path`] names; none there: no credentials.
    pub fn load() -> Result<Self, String> {
        let Some(path) = config_path() else {
            return Ok(Self::default());
        };
        match std::fs::read(&path) {
            Ok(bytes) => Self::parse(&bytes, Some(path.clone()))
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self {
                path: Some(path),
                ..Self::default()
            }),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// The credential for `registry` (`host[:port]`).
    pub fn get(&self, registry: &str) -> Option<&Credential> {
        self.by_registry.get(&registry.to_ascii_lowercase())
    }
}

fn credential_of(entry: &Value) -> Option<Credential> {
    if let Some(auth) = entry.get("auth").and_then(Value::as_str)
        && !auth.is_empty()
    {
        let raw = base64_decode(auth.trim())?;
        let text = String::from_utf8(raw).ok()?;
        let (user, password) = text.split_once(':')?;
        return Some(Credential {
            user: user.to_string(),
            password: password.to_string(),
        });
    }
    let user = entry.get("username").and_then(Value::as_str)?;
    let password = entry.get("password").and_then(Value::as_str)?;
    Some(Credential {
        user: user.to_string(),
        password: password.to_string(),
    })
}

/// `https://host:5000/v1/` → `host:5000`.
fn registry_key(key: &str) -> String {
    let k = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    k.split('/').next().unwrap_or(k).to_ascii_lowercase()
}

/// `$REGISTRY_AUTH_FILE`, else `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`.
pub fn config_path() -> Option<PathBuf> {
    let var = |k| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(p) = var("REGISTRY_AUTH_FILE") {
        return Some(p.into());
    }
    if let Some(d) = var("DOCKER_CONFIG") {
        return Some(Path::new(&d).join("config.json"));
    }
    var("HOME").map(|h| Path::new(&h).join(".docker/config.json"))
}

/// The token endpoint's answer: `token`, else `access_token`.
pub fn token_of(json: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(json).ok()?;
    ["token", "access_token"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64, padding optional; `None` when it is not base64.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = B64.iter().position(|&b| b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_challenge_names_realm_service_and_scope() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull".into()),
            }
        );
        let c = Challenge::parse(r#"bearer realm="https://a/t", scope="repository:x:pull,push""#)
            .unwrap();
        assert!(
            matches!(c, Challenge::Bearer { scope: Some(s), .. } if s == "repository:x:pull,push")
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(Challenge::parse(r#"Bearer service="x""#), None);
    }

    #[test]
    fn credentials_come_from_auths_by_registry_host() {
        let json = format!(
            r#"{{"auths":{{"registry.example:5000":{{"auth":"{}"}},
                "https://Other.example/v1/":{{"username":"u","password":"p"}},
                "helper.example":{{"identitytoken":"x"}}}},
              "credHelpers":{{}}}}"#,
            base64_encode(b"alice:s3:cret")
        );
        let c = Credentials::parse(json.as_bytes(), None).unwrap();
        let a = c.get("Registry.Example:5000").unwrap();
        assert_eq!((a.user.as_str(), a.password.as_str()), ("alice", "s3:cret"));
        assert_eq!(
            a.basic(),
            format!("Basic {}", base64_encode(b"alice:s3:cret"))
        );
        assert_eq!(c.get("other.example").unwrap().user, "u");
        assert!(c.get("registry.example").is_none());
        assert!(c.get("helper.example").is_none());
        assert!(!format!("{a:?}").contains("s3:cret"));
    }

    #[test]
    fn base64_round_trips_and_a_token_is_token_or_access_token() {
        for s in ["", "a", "ab", "abc", "abcd", "user:password"] {
            assert_eq!(
                base64_decode(&base64_encode(s.as_bytes())).unwrap(),
                s.as_bytes()
            );
        }
        assert_eq!(base64_encode(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64_decode("not base64!"), None);
        assert_eq!(
            token_of(br#"{"token":"t1","expires_in":60}"#).as_deref(),
            Some("t1")
        );
        assert_eq!(token_of(br#"{"access_token":"t2"}"#).as_deref(), Some("t2"));
        assert_eq!(token_of(br#"{"token":""}"#), None);
    }
}
