//! The store's settings file: what every mount and command of one store
//! must agree on (`DESIGN.md` §9, last bullet).
//!
//! ```text
//! $MODELS_HOME/modelfs.settings.json
//! {
//!   "schema_version": 1,
//!   "cache_max": "300G",        // SIZE: blob bytes the store may hold; absent or "0": no limit
//!   "min_free": "5%",           // SIZE or PCT of the filesystem to keep free; "0": off; absent: 5%
//!   "mirrors": ["https://peer-a:8443", "https://cache/store"]   // digest-addressed mirrors, in order
//! }
//! ```
//!
//! The file belongs to modelfs; other tools of the convention ignore it
//! (its name is prefixed so that none of theirs collides with it). A
//! missing file means the defaults. Keys modelfs does not know are kept
//! when it rewrites the file, in their order, so a later modelfs (or the
//! operator) can add keys (`mirrors`, `ca_file`) without an older one
//! dropping them. Values are strings as an operator writes them (`300G`,
//! `512M`, `5%`, a plain number of bytes); a number is accepted too.
//! Written as manifests are: a temporary file, fsync, rename, fsync of the
//! root. Read through [`nofollow::read_small_file`] (a regular file of at
//! most [`MAX_SETTINGS_BYTES`], never through a symlink).
//!
//! Mount options (`-o cache_max=`, `-o min_free=`) override the file for
//! that mount only ([`Settings::overridden`]).

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{Store, StoreError, nofollow, sync_dir};

/// The settings file's name in the store root.
pub const SETTINGS_FILE: &str = "modelfs.settings.json";
/// Settings are a few hundred bytes; anything larger is not ours.
pub const MAX_SETTINGS_BYTES: u64 = 1 << 20;
/// The free-space floor when none is set: 5 % of the filesystem.
pub const DEFAULT_MIN_FREE: Amount = Amount::Percent(500);

/// A size as an operator writes it: bytes, or a share of the filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Bytes(u64),
    /// Hundredths of a percent (`5%` is 500, `0.5%` is 50).
    Percent(u32),
}

impl Amount {
    /// Parses `300G`, `300M`, `1.5T`, `4096`, `5%`, `0`. Suffixes are
    /// binary (K = 1024); `B`, `iB` and `b` after them are accepted.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("{s:?}: not a percentage (use e.g. 5%)"))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("{s:?}: a percentage is between 0% and 100%"));
            }
            return Ok(Self::Percent((v * 100.0).round() as u32));
        }
        let lower = t.to_ascii_lowercase();
        let num = lower
            .trim_end_matches("ib")
            .trim_end_matches('b')
            .trim_end();
        let (digits, mult) = match num.chars().last() {
            Some('k') => (&num[..num.len() - 1], 1u64 << 10),
            Some('m') => (&num[..num.len() - 1], 1 << 20),
            Some('g') => (&num[..num.len() - 1], 1 << 30),
            Some('t') => (&num[..num.len() - 1], 1 << 40),
            _ => (num, 1),
        };
        let v: f64 = digits
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: not a size (use e.g. 300G, 512M or 5%)"))?;
        if !v.is_finite() || v < 0.0 {
            return Err(format!("{s:?}: a size cannot be negative"));
        }
        Ok(Self::Bytes((v * mult as f64).min(u64::MAX as f64) as u64))
    }

    /// The bytes this is on a filesystem of `total` bytes.
    pub fn bytes_of(self, total: u64) -> u64 {
        match self {
            Self::Bytes(b) => b,
            Self::Percent(p) => (total as u128 * p as u128 / 10_000) as u64,
        }
    }

    /// Whether it is zero (a limit that is off).
    pub fn is_zero(self) -> bool {
        matches!(self, Self::Bytes(0) | Self::Percent(0))
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Bytes(b) => {
                for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
                    if b != 0 && b % (1u64 << shift) == 0 {
                        return write!(f, "{}{unit}", b >> shift);
                    }
                }
                write!(f, "{b}")
            }
            Self::Percent(p) if p % 100 == 0 => write!(f, "{}%", p / 100),
            Self::Percent(p) => write!(f, "{}.{:02}%", p / 100, p % 100),
        }
    }
}

/// What the settings file says (and what it says beyond modelfs's keys).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    /// The most blob bytes (verified blobs and partial downloads) the
    /// store may hold; `None` (or zero): no limit.
    pub cache_max: Option<Amount>,
    /// Free space to keep on the store's filesystem; `None`:
    /// [`DEFAULT_MIN_FREE`]; zero: off.
    pub min_free: Option<Amount>,
    /// Every key of the file, as read (unknown keys are written back).
    raw: Map<String, Value>,
}

/// The keys [`Settings`] reads; `set`/`get` accept only these.
pub const KEYS: &[&str] = &["cache_max", "min_free", "mirrors"];

/// Why the settings file could not be read or written.
#[derive(Debug)]
pub enum SettingsError {
    /// Reading or writing the file failed.
    Store(StoreError),
    /// The file is not a JSON object, or a value is not a size.
    Invalid { path: PathBuf, reason: String },
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Store(e) => write!(f, "{e}"),
            Self::Invalid { path, reason } => write!(
                f,
                "store settings {}: {reason} (fix the file, or set the value with \
                 `modelfs settings set`)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for SettingsError {}

impl From<StoreError> for SettingsError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl Settings {
    /// Parses the file's bytes.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Self, SettingsError> {
        let invalid = |reason: String| SettingsError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let raw: Map<String, Value> = match serde_json::from_slice(bytes) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(invalid("not a JSON object".into())),
            Err(e) => return Err(invalid(format!("not JSON: {e}"))),
        };
        let amount = |key: &str| -> Result<Option<Amount>, SettingsError> {
            match raw.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Amount::parse(s)
                    .map(Some)
                    .map_err(|e| invalid(format!("{key}: {e}"))),
                Some(Value::Number(n)) => n
                    .as_u64()
                    .map(|b| Some(Amount::Bytes(b)))
                    .ok_or_else(|| invalid(format!("{key}: {n} is not a number of bytes"))),
                Some(v) => Err(invalid(format!("{key}: {v} is not a size"))),
            }
        };
        Ok(Self {
            cache_max: amount("cache_max")?,
            min_free: amount("min_free")?,
            raw,
        })
    }

    /// The file's bytes: every key read, with modelfs's keys updated.
    pub fn to_json(&self) -> Vec<u8> {
        let mut raw = self.raw.clone();
        raw.entry("schema_version").or_insert(Value::from(1));
        for (key, v) in [("cache_max", self.cache_max), ("min_free", self.min_free)] {
            match v {
                Some(a) => raw.insert(key.into(), Value::String(a.to_string())),
                None => raw.remove(key),
            };
        }
        let mut out = serde_json::to_vec_pretty(&Value::Object(raw)).expect("JSON serialises");
        out.push(b'\n');
        out
    }

    /// These settings with a mount's options laid over them.
    pub fn overridden(mut self, cache_max: Option<Amount>, min_free: Option<Amount>) -> Self {
        self.cache_max = cache_max.or(self.cache_max);
        self.min_free = min_free.or(self.min_free);
        self
    }

    /// A key of the file as written, for settings this module does not
    /// parse itself (a later `mirrors` or `ca_file` reads its own key here).
    pub fn value(&self, key: &str) -> Option<&Value> {
        self.raw.get(key)
    }

    /// The free-space floor in effect.
    pub fn min_free_or_default(&self) -> Amount {
        self.min_free.unwrap_or(DEFAULT_MIN_FREE)
    }

    /// The mirrors every mount and command of the store asks, in order
    /// (`mirrors`: an array of URLs, or one string of them separated by
    /// commas). Checking that each is a usable mirror is the fetcher's.
    pub fn mirrors(&self) -> Result<Vec<String>, String> {
        let split = |s: &str| -> Vec<String> {
            s.split(|c: char| c == ',' || c.is_whitespace())
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect()
        };
        match self.raw.get("mirrors") {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(split(s)),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format!("mirrors: {v} is not a URL"))
                })
                .collect(),
            Some(v) => Err(format!("mirrors: {v} is not a list of URLs")),
        }
    }

    /// Sets `key` (one of [`KEYS`]) from its text; `"none"` or `""` removes it.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        if key == "mirrors" {
            let urls: Vec<Value> = value
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|p| !p.is_empty() && *p != "none")
                .map(Value::from)
                .collect();
            if urls.is_empty() {
                self.raw.remove("mirrors");
            } else {
                self.raw.insert("mirrors".into(), Value::Array(urls));
            }
            return Ok(());
        }
        let v = match value.trim() {
            "" | "none" | "default" => None,
            v => Some(Amount::parse(v)?),
        };
        match key {
            "cache_max" => self.cache_max = v,
            "min_free" => self.min_free = v,
            _ => {
                return Err(format!(
                    "unknown setting {key:?} (known: {})",
                    KEYS.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The text of `key` as `get` shows it (`-` when unset).
    pub fn get(&self, key: &str) -> Option<String> {
        let show = |a: Option<Amount>| a.map_or_else(|| "-".into(), |a| a.to_string());
        match key {
            "cache_max" => Some(show(self.cache_max)),
            "mirrors" => Some(match self.mirrors() {
                Ok(m) if m.is_empty() => "-".into(),
                Ok(m) => m.join(","),
                Err(e) => format!("(unreadable: {e})"),
            }),
            "min_free" => Some(match self.min_free {
                Some(a) => a.to_string(),
                None => format!("{DEFAULT_MIN_FREE} (default)"),
            }),
            _ => None,
        }
    }
}

impl Store {
    /// `<root>/modelfs.settings.json`
    pub fn settings_path(&self) -> PathBuf {
        self.root().join(SETTINGS_FILE)
    }

    /// The store's settings; the defaults when there is no file.
    pub fn read_settings(&self) -> Result<Settings, SettingsError> {
        let path = self.settings_path();
        match read_optional(&path, MAX_SETTINGS_BYTES)? {
            Some(bytes) => Settings::from_json(&bytes, &path),
            None => Ok(Settings::default()),
        }
    }

    /// Writes the settings atomically (tmp, fsync, rename, fsync root).
    pub fn write_settings(&self, s: &Settings) -> Result<(), SettingsError> {
        Ok(write_atomic(&self.settings_path(), &s.to_json())?)
    }
}

/// The bytes of a small regular file of modelfs's own (at most `max`),
/// `None` when there is none; never through a symlink, never a FIFO.
pub(super) fn read_optional(path: &Path, max: u64) -> Result<Option<Vec<u8>>, StoreError> {
    use nofollow::SmallFileError as E;
    match nofollow::read_small_file(path, max) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(E::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(E::Io(e)) => Err(StoreError::walking(path, e)),
        Err(E::NotRegular(kind)) => Err(super::refuse(path, kind)),
        Err(E::TooLarge(n)) => Err(StoreError::io(
            path,
            std::io::Error::other(format!("is {n} bytes, more than modelfs ever writes there")),
        )),
    }
}

/// Replaces `path` with `bytes` the way manifests are written: a
/// temporary file next to it, fsync, rename, fsync of the folder. A
/// symlink at `path` is refused, never written through.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    nofollow::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    super::refuse_symlink(path)?;
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| StoreError::io(&tmp, e))?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(StoreError::io(path, e));
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_percentages_parse_as_an_operator_writes_them() {
        assert_eq!(Amount::parse("300G"), Ok(Amount::Bytes(300 << 30)));
        assert_eq!(Amount::parse("300M"), Ok(Amount::Bytes(300 << 20)));
        assert_eq!(Amount::parse("1.5GiB"), Ok(Amount::Bytes(3 << 29)));
        assert_eq!(Amount::parse("4096"), Ok(Amount::Bytes(4096)));
        assert_eq!(Amount::parse(" 5% "), Ok(Amount::Percent(500)));
        assert_eq!(Amount::parse("0.5%"), Ok(Amount::Percent(50)));
        assert_eq!(Amount::parse("0"), Ok(Amount::Bytes(0)));
        assert!(Amount::parse("lots").is_err());
        assert!(Amount::parse("101%").is_err());
        assert!(Amount::parse("-3G").is_err());
        assert_eq!(Amount::Percent(500).bytes_of(1000), 50);
        assert_eq!(Amount::Bytes(300 << 30).to_string(), "300G");
        assert_eq!(Amount::Percent(50).to_string(), "0.50%");
        assert_eq!(Amount::Bytes(1000).to_string(), "1000");
    }

    #[test]
    fn no_file_means_no_limit_and_a_five_percent_floor() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path()).unwrap();
        let got = s.read_settings().unwrap();
        assert_eq!(got.cache_max, None);
        assert_eq!(got.min_free_or_default(), Amount::Percent(500));
    }

    #[test]
    fn rewriting_keeps_unknown_keys_in_order_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path()).unwrap();
        std::fs::write(
            s.settings_path(),
            br#"{"mirrors": ["https://m.example"], "cache_max": "1G", "zeta": {"a": 1}}"#,
        )
        .unwrap();
        let mut got = s.read_settings().unwrap();
        assert_eq!(got.cache_max, Some(Amount::Bytes(1 << 30)));
        got.set("min_free", "0").unwrap();
        got.set("cache_max", "300M").unwrap();
        s.write_settings(&got).unwrap();
        let text = std::fs::read_to_string(s.settings_path()).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            ["mirrors", "cache_max", "zeta", "schema_version", "min_free"]
        );
        assert_eq!(v["cache_max"], "300M");
        assert_eq!(v["zeta"]["a"], 1);
        assert_eq!(got.value("mirrors").unwrap()[0], "https://m.example");
        let again = s.read_settings().unwrap();
        assert_eq!(again.min_free, Some(Amount::Bytes(0)));
        assert!(again.min_free_or_default().is_zero());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn mount_options_win_over_the_file_and_bad_values_name_the_key() {
        let s = Settings {
            cache_max: Some(Amount::Bytes(10)),
            ..Settings::default()
        };
        let o = s.clone().overridden(Some(Amount::Bytes(20)), None);
        assert_eq!(o.cache_max, Some(Amount::Bytes(20)));
        assert_eq!(o.min_free, None);
        let e = Settings::from_json(br#"{"cache_max": "many"}"#, Path::new("/s")).unwrap_err();
        assert!(e.to_string().contains("cache_max"), "{e}");
        assert!(Settings::from_json(b"[1]", Path::new("/s")).is_err());
        let mut s = Settings::default();
        assert!(s.set("ca_bundle", "x").is_err());
    }

    #[test]
    fn mirrors_are_a_list_of_urls_set_from_one_line() {
        let mut s = Settings::default();
        assert_eq!(s.mirrors().unwrap(), Vec::<String>::new());
        s.set("mirrors", "https://a:8443, https://b/store").unwrap();
        assert_eq!(s.mirrors().unwrap(), ["https://a:8443", "https://b/store"]);
        assert_eq!(s.get("mirrors").unwrap(), "https://a:8443,https://b/store");
        let back = Settings::from_json(&s.to_json(), Path::new("/s")).unwrap();
        assert_eq!(back.mirrors().unwrap(), s.mirrors().unwrap());
        s.set("mirrors", "none").unwrap();
        assert_eq!(s.get("mirrors").unwrap(), "-");
        let odd = Settings::from_json(br#"{"mirrors": [1]}"#, Path::new("/s")).unwrap();
        assert!(odd.mirrors().is_err());
    }
}
