//! Verifying a model's blob on demand (`modelfs verify`): hash the present
//! blob again under the model's producer lock, so a fetch does not race
//! the quarantine. A blob whose bytes match gets its stamps recorded (so
//! the mount need not hash it again); one whose bytes do not is moved to
//! quarantine, so the next open fetches it again when the model has a URL,
//! and fails until it is imported or re-added otherwise.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use super::verified::Recheck;
use super::{BlobState, Manifest, ModelName, Store, StoreError};
use crate::digest::Sha256;

/// What verifying one model found.
#[derive(Debug)]
pub enum Verified {
    /// No blob to verify (pending, or gone while we waited for the lock).
    NotPresent,
    /// The bytes match; the blob is `size` bytes.
    Ok { size: u64 },
    /// The bytes hash to `actual`: the blob was moved to `quarantined`.
    /// `refetchable`: the model has a URL to fetch it from again.
    Quarantined {
        actual: Sha256,
        quarantined: PathBuf,
        refetchable: bool,
    },
}

/// Why a model could not be verified.
#[derive(Debug)]
pub enum VerifyError {
    /// Its producer lock could not be taken.
    Lock {
        model: ModelName,
        source: StoreError,
    },
    /// Its blob could not be hashed (or quarantined).
    Hash {
        model: ModelName,
        source: StoreError,
    },
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lock { model, source } => {
                write!(f, "{model}: cannot take the store lock: {source}")
            }
            Self::Hash { model, source } => write!(f, "{model}: cannot hash its blob: {source}"),
        }
    }
}

impl std::error::Error for VerifyError {}

impl Store {
    /// Hashes the blob of `m` again (see the module doc); waits for its
    /// producer lock as long as it takes.
    pub fn verify_model(&self, m: &Manifest) -> Result<Verified, VerifyError> {
        let BlobState::Present(_) = self.blob_state(&m.blob) else {
            return Ok(Verified::NotPresent);
        };
        let _l = self
            .lock_model_waiting(&m.name, &mut || {})
            .map_err(|source| VerifyError::Lock {
                model: m.name.clone(),
                source,
            })?;
        let never = AtomicBool::new(false);
        let rechecked = self
            .recheck_blob(&m.blob, m.name.as_str(), "verify", &never, &mut |_| {})
            .map_err(|source| VerifyError::Hash {
                model: m.name.clone(),
                source,
            })?;
        Ok(match rechecked {
            Recheck::Matched(f) => Verified::Ok {
                size: f.metadata().map(|m| m.len()).unwrap_or(0),
            },
            Recheck::Absent => Verified::NotPresent,
            Recheck::Mismatch {
                actual,
                quarantined,
            } => Verified::Quarantined {
                actual,
                quarantined,
                refetchable: m.source.fetch_url().is_some(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Source;

    fn store_with(dir: &std::path::Path, bytes: &[u8]) -> (Store, Manifest) {
        let s = Store::create(dir).unwrap();
        let d = s.publish_bytes(bytes);
        let m = Manifest::new(
            ModelName::parse("m").unwrap(),
            "gguf",
            d,
            bytes.len() as u64,
            Source::default(),
        );
        (s, m)
    }

    #[test]
    fn a_blob_that_matches_is_ok_and_one_that_lies_is_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let (s, m) = store_with(dir.path(), b"good bytes");
        assert!(matches!(
            s.verify_model(&m).unwrap(),
            Verified::Ok { size: 10 }
        ));
        std::fs::write(s.blob_path(&m.blob), b"evil bytes").unwrap();
        let Verified::Quarantined {
            actual,
            quarantined,
            refetchable,
        } = s.verify_model(&m).unwrap()
        else {
            panic!("the changed blob was not quarantined");
        };
        assert_eq!(actual, Sha256::of(b"evil bytes"));
        assert_eq!(std::fs::read(quarantined).unwrap(), b"evil bytes");
        assert!(!refetchable, "a manifest without a URL");
        assert_eq!(s.blob_state(&m.blob), BlobState::Absent);
        assert!(matches!(s.verify_model(&m).unwrap(), Verified::NotPresent));
    }
}
