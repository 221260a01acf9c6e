//! Pins: the models whose blobs eviction never deletes.
//!
//! ```text
//! $MODELS_HOME/.modelfs/pins.json   {"schema_version": 1, "pinned": ["llama", …]}
//! $MODELS_HOME/.modelfs/pins.lock   flock held while the list is rewritten
//! ```
//!
//! A pin names a model, not a blob: a blob is pinned while any manifest
//! that names it is pinned (a blob shared by several manifests is one
//! cache entry), and a pinned model repointed to a new blob pins the new
//! one. The list lives in modelfs's private folder rather than in a
//! manifest field: manifests are the convention's interface, rewritten by
//! other tools (which need not keep a field they do not know, and whose
//! rewrite would then silently unpin a model), while a pin is modelfs's
//! own cache policy, read at every eviction in one small read instead of
//! a parse of every manifest. Every mount and command of the store reads
//! the same file, so a pin holds across mounts, remounts and reboots.
//!
//! Changes are read-modify-write under `pins.lock`, so two `modelfs pin`
//! at once never lose one another's names; the file itself is replaced
//! atomically, so a reader never sees half of it. A pin of a name with no
//! manifest is kept (the model may be added later); `unpin` removes it.
//!
//! A split set (`NAME-00001-of-00003` …) is pinned as one: [`expand_set`]
//! turns a set's prefix into its members.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

use serde_json::{Value, json};

use super::settings::{read_optional, write_atomic};
use super::{ModelName, Store, StoreError, lock};

/// The pin list is a name per line of JSON; a million names is not one.
const MAX_PINS_BYTES: u64 = 64 << 20;

/// Why the pin list could not be read or changed.
#[derive(Debug)]
pub enum PinError {
    Store(StoreError),
    /// The file is not a pin list.
    Invalid {
        path: PathBuf,
        reason: String,
    },
}

impl fmt::Display for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Store(e) => write!(f, "{e}"),
            Self::Invalid { path, reason } => write!(
                f,
                "pin list {}: {reason} (remove the file and pin the models again)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for PinError {}

impl From<StoreError> for PinError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// The pinned model names.
pub type Pins = BTreeSet<ModelName>;

impl Store {
    /// `.modelfs/pins.json`
    pub fn pins_path(&self) -> PathBuf {
        self.root().join(".modelfs/pins.json")
    }

    /// The pinned names; none when there is no list.
    pub fn read_pins(&self) -> Result<Pins, PinError> {
        let path = self.pins_path();
        let Some(bytes) = read_optional(&path, MAX_PINS_BYTES)? else {
            return Ok(Pins::new());
        };
        let invalid = |reason: String| PinError::Invalid {
            path: path.clone(),
            reason,
        };
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        let list = v
            .get("pinned")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("no \"pinned\" list".into()))?;
        let mut pins = Pins::new();
        for n in list {
            let s = n
                .as_str()
                .ok_or_else(|| invalid(format!("{n} is not a name")))?;
            // A name that is not valid cannot name a manifest: skipped.
            if let Ok(name) = ModelName::parse(s) {
                pins.insert(name);
            }
        }
        Ok(pins)
    }

    /// Adds (`pin`) or removes names, under the list's lock; returns the
    /// names whose pin changed.
    pub fn change_pins(&self, names: &[ModelName], pin: bool) -> Result<Vec<ModelName>, PinError> {
        let lock_path = self.root().join(".modelfs/pins.lock");
        let _guard =
            lock::lock_waiting(&lock_path, &|| false, &mut || {}).map_err(|e| match e {
                lock::LockWaitError::Io(e) => StoreError::walking(&lock_path, e),
                lock::LockWaitError::Cancelled => unreachable!("never cancelled"),
            })?;
        let mut pins = self.read_pins()?;
        let changed: Vec<ModelName> = names
            .iter()
            .filter(|n| {
                if pin {
                    pins.insert((*n).clone())
                } else {
                    pins.remove(*n)
                }
            })
            .cloned()
            .collect();
        if !changed.is_empty() {
            let list: Vec<&str> = pins.iter().map(ModelName::as_str).collect();
            let mut bytes = serde_json::to_vec_pretty(&json!({
                "schema_version": 1,
                "pinned": list,
            }))
            .expect("JSON serialises");
            bytes.push(b'\n');
            write_atomic(&self.pins_path(), &bytes)?;
        }
        Ok(changed)
    }
}

/// Whether `name` is shard `k` of a split set: `<prefix>-<5 digits>-of-<5 digits>`;
/// its prefix if so.
pub fn set_prefix(name: &str) -> Option<&str> {
    let (head, total) = name.rsplit_once("-of-")?;
    let (prefix, k) = head.rsplit_once('-')?;
    let five = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    (five(total) && five(k) && !prefix.is_empty()).then_some(prefix)
}

/// The models `given` means, out of the store's `names`: itself if it is a
/// model (and, for a shard, every shard of its set), else the shards of
/// the set it is the prefix of. Empty when it names nothing. (Kept small so
/// that the set naming of `store::set` can replace it.)
pub fn expand_set<'a>(given: &str, names: &'a [ModelName]) -> Vec<&'a ModelName> {
    let prefix = if names.iter().any(|n| n.as_str() == given) {
        match set_prefix(given) {
            Some(p) => p,
            None => return names.iter().filter(|n| n.as_str() == given).collect(),
        }
    } else {
        given
    };
    names
        .iter()
        .filter(|n| set_prefix(n.as_str()) == Some(prefix))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<ModelName> {
        v.iter().map(|n| ModelName::parse(n).unwrap()).collect()
    }

    #[test]
    fn pins_are_kept_in_the_store_and_read_back_by_another_handle() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path()).unwrap();
        assert!(s.read_pins().unwrap().is_empty());
        let changed = s.change_pins(&names(&["b", "a"]), true).unwrap();
        assert_eq!(changed.len(), 2);
        assert!(s.change_pins(&names(&["a"]), true).unwrap().is_empty());
        let other = Store::open(dir.path()).unwrap();
        let got: Vec<_> = other.read_pins().unwrap().into_iter().collect();
        assert_eq!(got, names(&["a", "b"]));
        other.change_pins(&names(&["a", "zz"]), false).unwrap();
        let got: Vec<_> = s.read_pins().unwrap().into_iter().collect();
        assert_eq!(got, names(&["b"]));
    }

    #[test]
    fn two_pinners_at_once_lose_nobodys_names() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path()).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for j in 0..10 {
                        s.change_pins(&names(&[&format!("m{i}-{j}")]), true)
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.read_pins().unwrap().len(), 80);
    }

    #[test]
    fn a_set_is_pinned_by_its_prefix_or_by_any_shard() {
        let all = names(&[
            "big-00001-of-00002",
            "big-00002-of-00002",
            "big",
            "other-00001-of-00001",
        ]);
        let shards =
            |v: Vec<&ModelName>| v.iter().map(|n| n.as_str().to_string()).collect::<Vec<_>>();
        assert_eq!(
            shards(expand_set("big-00002-of-00002", &all)),
            ["big-00001-of-00002", "big-00002-of-00002"]
        );
        assert_eq!(shards(expand_set("big", &all)), ["big"]);
        assert_eq!(shards(expand_set("other", &all)), ["other-00001-of-00001"]);
        assert!(expand_set("none", &all).is_empty());
        assert_eq!(set_prefix("a-1-of-2"), None);
    }
}
