//! SHA-256 digests as the store names them.
//!
//! A [`Sha256`] is always 32 bytes; its text forms are the 64-character
//! lowercase hex used in blob paths and the `sha256:<hex>` form used in
//! manifests. Parsing is strict (lowercase only, exact length) because the
//! hex becomes a path component: two spellings of one digest must never name
//! two different directories.
//!
//! Comparison against an expected digest goes through [`Sha256::ct_eq`] so
//! that verification does not leak timing about how many bytes matched.

use std::fmt;

use sha2::Digest as _;
use subtle::ConstantTimeEq;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256([u8; 32]);

/// Why a digest string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestParseError {
    /// Not exactly 64 characters of hex.
    WrongLength(usize),
    /// A character outside `0-9a-f` (uppercase is refused on purpose).
    NotLowercaseHex,
    /// The `sha256:` prefix is missing (another algorithm, or none).
    MissingPrefix,
}

impl fmt::Display for DigestParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongLength(n) => write!(f, "a SHA-256 digest is 64 hex characters, got {n}"),
            Self::NotLowercaseHex => {
                f.write_str("a SHA-256 digest must be lowercase hex (0-9, a-f)")
            }
            Self::MissingPrefix => {
                f.write_str("blob must be written as \"sha256:<64 lowercase hex>\"")
            }
        }
    }
}

impl std::error::Error for DigestParseError {}

impl Sha256 {
    /// Parses 64 lowercase hex characters.
    pub fn from_hex(hex: &str) -> Result<Self, DigestParseError> {
        if hex.len() != 64 {
            return Err(DigestParseError::WrongLength(hex.len()));
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
            out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Ok(Self(out))
    }

    /// Parses the manifest form `sha256:<hex>`.
    pub fn from_blob_ref(s: &str) -> Result<Self, DigestParseError> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or(DigestParseError::MissingPrefix)?;
        Self::from_hex(hex)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        s
    }

    /// The manifest form `sha256:<hex>`.
    pub fn to_blob_ref(&self) -> String {
        format!("sha256:{}", self.to_hex())
    }

    /// The first 12 hex characters, for tables and log lines.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }

    /// Constant-time equality, for verifying downloaded bytes.
    pub fn ct_eq(&self, other: &Sha256) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// Hashes a whole byte slice (tests and small inputs).
    pub fn of(bytes: &[u8]) -> Self {
        let mut h = Hasher::new();
        h.update(bytes);
        h.finish()
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({})", self.to_hex())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn nibble(c: u8) -> Result<u8, DigestParseError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(DigestParseError::NotLowercaseHex),
    }
}

/// Incremental SHA-256.
#[derive(Clone, Default)]
pub struct Hasher(sha2::Sha256);

impl Hasher {
    pub fn new() -> Self {
        Self(sha2::Sha256::new())
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> Sha256 {
        Sha256(self.0.finalize().into())
    }
}

/// Hashes everything a reader yields, in 1 MiB steps.
pub fn hash_reader(mut r: impl std::io::Read) -> std::io::Result<(Sha256, u64)> {
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok((h.finish(), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn hex_round_trips_and_matches_the_known_empty_digest() {
        let d = Sha256::of(b"");
        assert_eq!(d.to_hex(), EMPTY);
        assert_eq!(Sha256::from_hex(EMPTY).unwrap(), d);
        assert_eq!(Sha256::from_blob_ref(&d.to_blob_ref()).unwrap(), d);
    }

    #[test]
    fn uppercase_short_long_and_unprefixed_digests_are_refused() {
        assert_eq!(
            Sha256::from_hex(&EMPTY.to_uppercase()),
            Err(DigestParseError::NotLowercaseHex)
        );
        assert_eq!(
            Sha256::from_hex(&EMPTY[..63]),
            Err(DigestParseError::WrongLength(63))
        );
        assert_eq!(
            Sha256::from_hex(&format!("{EMPTY}0")),
            Err(DigestParseError::WrongLength(65))
        );
        assert_eq!(
            Sha256::from_blob_ref(EMPTY),
            Err(DigestParseError::MissingPrefix)
        );
        assert_eq!(
            Sha256::from_blob_ref(&format!("md5:{EMPTY}")),
            Err(DigestParseError::MissingPrefix)
        );
    }

    #[test]
    fn constant_time_comparison_agrees_with_equality() {
        let a = Sha256::of(b"a");
        let b = Sha256::of(b"b");
        assert!(a.ct_eq(&a));
        assert!(!a.ct_eq(&b));
    }

    #[test]
    fn incremental_hashing_equals_one_shot_hashing() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (d, n) = hash_reader(&data[..]).unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(d, Sha256::of(&data));
    }
}
