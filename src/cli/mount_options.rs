//! `-o` options of `modelfs mount`, as written on a command line or in the
//! options column of `/etc/fstab`.
//!
//! Three kinds: FUSE and mount options modelfs honours, markers meant for
//! mount(8) or systemd that it accepts and ignores, and its own options.
//! Anything else fails the mount with a message naming the option: a typo
//! in fstab should not silently mount something else, and neither should a
//! value out of range (each has its bounds below).
//!
//! Values are escaped as libfuse's option parser reads them: `\,` is a
//! comma inside a value (`log_file=/var/log/a\,b.log`), `\\` a backslash,
//! `\NNN` the byte of octal NNN, and `\` before any other character that
//! character. `mount.fuse3` passes such options through unchanged.

use std::path::PathBuf;

use crate::fetch::Mirror;
use std::time::Duration;

use crate::store::settings::Amount;

/// Parsed mount options.
#[derive(Debug, Clone, PartialEq)]
pub struct MountOptions {
    pub allow_other: bool,
    pub allow_root: bool,
    pub default_permissions: bool,
    /// Owner shown for entries (default: the mounting user).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub fsname: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// `None` = automatic, `Some(false)` = forced off.
    pub passthrough: Option<bool>,
    pub stall_timeout: Option<Duration>,
    /// How long a fetch retries without progress (default 15 s).
    pub retry_for: Option<Duration>,
    /// How long opens fail at once after wrong bytes (default 10 min).
    pub mismatch_backoff: Option<Duration>,
    /// Downloads that may run at once.
    pub fetch_threads: usize,
    /// Threads serving kernel requests.
    pub threads: usize,
    /// Connections one download may use at most (1: one stream).
    pub connections: usize,
    /// Digest-addressed mirrors asked before each manifest's source, in
    /// order (`mirror=URL`, repeatable).
    pub mirrors: Vec<Mirror>,
    pub log_file: Option<PathBuf>,
    /// `cache_max=SIZE|PCT`: overrides the store's settings for this mount.
    pub cache_max: Option<Amount>,
    /// `min_free=SIZE|PCT` (`0` off): overrides the store's settings.
    pub min_free: Option<Amount>,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            allow_other: false,
            allow_root: false,
            default_permissions: false,
            uid: None,
            gid: None,
            fsname: None,
            ca_file: None,
            passthrough: None,
            stall_timeout: None,
            retry_for: None,
            mismatch_backoff: None,
            fetch_threads: 4,
            threads: 4,
            connections: crate::fetch::pipeline::DEFAULT_CONNECTIONS,
            mirrors: Vec::new(),
            log_file: None,
            cache_max: None,
            min_free: None,
        }
    }
}

/// Options accepted and ignored: they are for mount(8), systemd or the
/// kernel's generic flags, which FUSE and a read-only mount already imply.
const IGNORED: &[&str] = &[
    "ro",
    "_netdev",
    "nofail",
    "noauto",
    "auto",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "defaults",
    "nodev",
    "nosuid",
    "noexec",
    "dev",
    "suid",
    "exec",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "nodiratime",
    "async",
    "sync",
    "loop",
];

impl MountOptions {
    /// Parses every `-o` value given (each comma-separated).
    pub fn parse<S: AsRef<str>>(values: &[S]) -> Result<Self, String> {
        let mut o = Self::default();
        let opts: Vec<String> = values
            .iter()
            .flat_map(|v| split_options(v.as_ref()))
            .collect();
        for opt in opts.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            match key {
                "rw" => {
                    return Err(
                        "mount option rw: modelfs mounts are read-only; use ro or leave it out"
                            .into(),
                    );
                }
                "allow_other" => o.allow_other = true,
                "allow_root" => o.allow_root = true,
                "default_permissions" => o.default_permissions = true,
                "uid" => o.uid = Some(parse_id(key, need(key, value)?)?),
                "gid" => o.gid = Some(parse_id(key, need(key, value)?)?),
                "fsname" => {
                    let v = need(key, value)?;
                    if v.contains(',') {
                        return Err(format!(
                            "mount option fsname={v}: a comma cannot be part of the name /proc/mounts shows"
                        ));
                    }
                    o.fsname = Some(v.to_string());
                }
                "ca_file" => o.ca_file = Some(PathBuf::from(need(key, value)?)),
                "log_file" => o.log_file = Some(PathBuf::from(need(key, value)?)),
                "passthrough" => {
                    o.passthrough = match need(key, value)? {
                        "on" | "auto" => None,
                        "off" => Some(false),
                        v => {
                            return Err(format!(
                                "mount option passthrough={v}: use passthrough=on or passthrough=off"
                            ));
                        }
                    }
                }
                "stall_timeout" => {
                    let v = need(key, value)?;
                    let secs = parse_in(key, v.strip_suffix('s').unwrap_or(v), STALL_TIMEOUT_SECS)?;
                    o.stall_timeout = Some(Duration::from_secs(secs));
                }
                "retry_for" => o.retry_for = Some(parse_secs(key, need(key, value)?)?),
                "mismatch_backoff" => {
                    o.mismatch_backoff = Some(parse_secs(key, need(key, value)?)?)
                }
                "cache_max" => o.cache_max = Some(parse_amount(key, need(key, value)?)?),
                "min_free" => o.min_free = Some(parse_amount(key, need(key, value)?)?),
                "fetch_threads" => o.fetch_threads = parse_in(key, need(key, value)?, THREADS)?,
                "threads" => o.threads = parse_in(key, need(key, value)?, THREADS)?,
                "connections" => o.connections = parse_in(key, need(key, value)?, THREADS)?,
                "mirror" => o
                    .mirrors
                    .push(Mirror::parse(need(key, value)?).map_err(|e| e.to_string())?),
                // mount.fuse3 and fstab conventions handled elsewhere or not at all.
                "subtype" | "comment" => {}
                k if k.starts_with("x-") || IGNORED.contains(&k) => {}
                _ => {
                    return Err(format!(
                        "unknown mount option {opt:?} (see `modelfs mount --help` for the list)"
                    ));
                }
            }
        }
        Ok(o)
    }
}

fn need<'a>(key: &str, v: Option<&'a str>) -> Result<&'a str, String> {
    v.filter(|v| !v.is_empty())
        .ok_or(format!("mount option {key} needs a value ({key}=...)"))
}

/// `stall_timeout=` bounds, in seconds: a day without a byte is
/// already no download.
pub const STALL_TIMEOUT_SECS: std::ops::RangeInclusive<u64> = 1..=86_400;
/// `threads=` and `fetch_threads=` bounds.
pub const THREADS: std::ops::RangeInclusive<usize> = 1..=64;
/// `retry_for=` and `mismatch_backoff=` bounds, in seconds (zero allowed).
pub const WAIT_SECS: std::ops::RangeInclusive<u64> = 0..=7 * 86_400;

/// `SECS` or `SECSs`, within [`WAIT_SECS`].
fn parse_secs(key: &str, v: &str) -> Result<Duration, String> {
    parse_in(key, v.strip_suffix('s').unwrap_or(v), WAIT_SECS).map(Duration::from_secs)
}

fn parse_num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("mount option {key}={v}: not a number"))
}

/// A number within `range`, or a message naming the option and the range.
fn parse_in<T>(key: &str, v: &str, range: std::ops::RangeInclusive<T>) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let out_of_range = || {
        format!(
            "mount option {key}={v}: out of range, use {}..={}",
            range.start(),
            range.end()
        )
    };
    // A number too large for the type is out of range, not "not a number".
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        let n: T = v.parse().map_err(|_| out_of_range())?;
        return if range.contains(&n) {
            Ok(n)
        } else {
            Err(out_of_range())
        };
    }
    parse_num(key, v)
}

/// A size (`300G`) or a share of the filesystem (`5%`).
fn parse_amount(key: &str, v: &str) -> Result<Amount, String> {
    Amount::parse(v).map_err(|e| format!("mount option {key}={v}: {e}"))
}

/// A user or group id; 4294967295 is `(uid_t)-1`, which chown(2) and the
/// kernel read as "no id".
fn parse_id(key: &str, v: &str) -> Result<u32, String> {
    parse_in(key, v, 0..=u32::MAX - 1)
}

/// Splits one `-o` value at its commas, reading escapes as libfuse does
/// (see the module doc).
fn split_options(s: &str) -> Vec<String> {
    let (mut out, mut cur) = (Vec::new(), Vec::<u8>::new());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b',' => out.push(String::from_utf8_lossy(&std::mem::take(&mut cur)).into_owned()),
            b'\\' if i + 1 < b.len() => {
                i += 1;
                let octal = b.len() > i + 2
                    && (b'0'..=b'3').contains(&b[i])
                    && (b'0'..=b'7').contains(&b[i + 1])
                    && (b'0'..=b'7').contains(&b[i + 2]);
                if octal {
                    cur.push((b[i] - b'0') * 64 + (b[i + 1] - b'0') * 8 + (b[i + 2] - b'0'));
                    i += 2;
                } else {
                    cur.push(b[i]);
                }
            }
            c => cur.push(c),
        }
        i += 1;
    }
    out.push(String::from_utf8_lossy(&cur).into_owned());
    out
}

/// The options reference shown by `modelfs mount --help`.
pub const HELP: &str = "\
Mount options (-o, comma-separated; also the fstab options column):
  ro                     accepted; mounts are always read-only (rw is refused)
  allow_other            let other users read the mount (non-root needs user_allow_other in /etc/fuse.conf)
  allow_root             let root read a user's mount
  default_permissions    let the kernel check file modes
  uid=N, gid=N           owner shown for the files (default: the mounting user)
  fsname=NAME            source shown in /proc/mounts (default: the store path)
  ca_file=PATH           extra PEM CA bundle for private mirrors
  passthrough=on|off     kernel passthrough reads when possible (default on); off forces the page-cache path
  stall_timeout=SECS     give up on a download attempt after this long without data, and retry
                         (default 30, 1 to 86400)
  retry_for=SECS         fail a download that made no progress for this long while retrying (default 15)
  mismatch_backoff=SECS  after wrong bytes, opens fail at once for this long unless the manifest
                         changes or `modelfs pull` fetches the blob (default 600; 0: off)
  fetch_threads=N        downloads that may run at once, plus one for blobs up to 64 MiB
                         (default 4, 1 to 64)
  threads=N              threads serving kernel requests (default 4, 1 to 64)
  connections=N          connections one download of 8 MiB or more may use for byte ranges
                         at once (default up to 16, adapting to the origin; 1: one stream)
  mirror=URL             a digest-addressed mirror (https://HOST[/PATH] serving a store directory,
                         e.g. `modelfs serve`), asked before each model's own source; repeatable,
                         in order; also MODELFS_MIRRORS (comma-separated), after these
  cache_max=SIZE         most bytes the store's blobs may take (300G, 512M, 10%); least recently
                         opened models not pinned or open are evicted (default: the store's settings)
  min_free=SIZE|PCT      free space to keep on the store's filesystem (default 5%; 0: off)
  log_file=PATH          log file, also with -f (default with -f: stderr; as a daemon: syslog,
                         or /var/log/modelfs/<mountpoint>.log where nothing listens on /dev/log)
A comma inside a value is written \\, and a backslash \\\\ (log_file=/var/log/a\\,b.log).
Ignored, for mount(8) and systemd: _netdev, nofail, noauto, auto, user, users, nouser, owner,
  group, defaults, comment=..., x-*, and the generic flags (dev, suid, exec, their no- forms,
  async, sync, atime, ...); the mount is always ro,nodev,nosuid";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fstab_line_of_the_readme_parses() {
        let o = MountOptions::parse(&["ro,allow_other,_netdev,nofail"]).unwrap();
        assert!(o.allow_other);
        assert_eq!(o.passthrough, None);
    }

    #[test]
    fn systemd_and_mount_markers_are_ignored() {
        let o = MountOptions::parse(&[
            "x-systemd.automount,x-systemd.idle-timeout=60,noauto,user,comment=hi,defaults",
        ]);
        assert_eq!(o.unwrap(), MountOptions::default());
    }

    #[test]
    fn modelfs_options_are_read() {
        let o = MountOptions::parse(&[
            "passthrough=off,stall_timeout=7s",
            "fetch_threads=2,ca_file=/etc/ca.pem,uid=1000,gid=100",
        ])
        .unwrap();
        assert_eq!(o.passthrough, Some(false));
        assert_eq!(o.stall_timeout, Some(Duration::from_secs(7)));
        assert_eq!(o.fetch_threads, 2);
        assert_eq!(o.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!((o.uid, o.gid), (Some(1000), Some(100)));
        let o = MountOptions::parse(&["retry_for=40,mismatch_backoff=0"]).unwrap();
        assert_eq!(o.retry_for, Some(Duration::from_secs(40)));
        assert_eq!(o.mismatch_backoff, Some(Duration::ZERO));
        assert_eq!(MountOptions::default().connections, 16);
        assert_eq!(
            MountOptions::parse(&["connections=1"]).unwrap().connections,
            1
        );
        assert!(MountOptions::parse(&["connections=0"]).is_err());
        let o =
            MountOptions::parse(&["mirror=https://peer-a/store,mirror=https://peer-b"]).unwrap();
        assert_eq!(
            o.mirrors.iter().map(|m| m.base()).collect::<Vec<_>>(),
            ["https://peer-a/store", "https://peer-b"]
        );
        let e = MountOptions::parse(&["mirror=http://peer-a"]).unwrap_err();
        assert!(e.contains("only https://"), "{e}");
        assert!(MountOptions::parse(&["connections=65"]).is_err());
    }

    #[test]
    fn cache_limits_are_sizes_or_percentages() {
        let o = MountOptions::parse(&["cache_max=300G,min_free=5%"]).unwrap();
        assert_eq!(o.cache_max, Some(Amount::Bytes(300 << 30)));
        assert_eq!(o.min_free, Some(Amount::Percent(500)));
        let e = MountOptions::parse(&["cache_max=lots"]).unwrap_err();
        assert!(e.contains("cache_max=lots"), "{e}");
    }

    #[test]
    fn a_backslash_escapes_a_comma_a_backslash_or_an_octal_byte_as_in_libfuse() {
        let o = MountOptions::parse(&[r"log_file=/var/log/a\,b.log,ca_file=/etc/c\\d\054e.pem,ro"])
            .unwrap();
        assert_eq!(o.log_file, Some(PathBuf::from("/var/log/a,b.log")));
        assert_eq!(o.ca_file, Some(PathBuf::from(r"/etc/c\d,e.pem")));
        assert_eq!(split_options(r"a\"), [r"a\"], "a trailing backslash stays");
    }

    #[test]
    fn values_out_of_range_are_refused_with_the_range() {
        for (opt, needle) in [
            (
                "stall_timeout=18446744073709551615",
                "stall_timeout=18446744073709551615: out of range, use 1..=86400",
            ),
            ("stall_timeout=99999999999999999999999", "out of range"),
            ("stall_timeout=86401", "1..=86400"),
            ("stall_timeout=0", "1..=86400"),
            ("stall_timeout=-1", "not a number"),
            ("threads=0", "threads=0: out of range, use 1..=64"),
            ("threads=65", "1..=64"),
            ("fetch_threads=100000", "fetch_threads=100000: out of range"),
            ("uid=4294967295", "uid=4294967295: out of range"),
            ("gid=4294967296", "gid=4294967296: out of range"),
            ("fsname=a\\,b", "comma"),
        ] {
            let e = MountOptions::parse(&[opt]).unwrap_err();
            assert!(e.contains(needle), "{opt}: {e}");
        }
        let o = MountOptions::parse(&["stall_timeout=86400s,threads=64,fetch_threads=1,uid=0"])
            .unwrap();
        assert_eq!(o.stall_timeout, Some(Duration::from_secs(86_400)));
        assert_eq!((o.threads, o.fetch_threads, o.uid), (64, 1, Some(0)));
    }

    #[test]
    fn unknown_options_and_rw_fail_with_their_name() {
        assert!(
            MountOptions::parse(&["ro,bogus_thing=1"])
                .unwrap_err()
                .contains("bogus_thing")
        );
        assert!(
            MountOptions::parse(&["rw"])
                .unwrap_err()
                .contains("read-only")
        );
        assert!(
            MountOptions::parse(&["passthrough=maybe"])
                .unwrap_err()
                .contains("passthrough=maybe")
        );
        assert!(
            MountOptions::parse(&["uid=abc"])
                .unwrap_err()
                .contains("uid=abc")
        );
        assert!(
            MountOptions::parse(&["ca_file="])
                .unwrap_err()
                .contains("ca_file")
        );
    }
}
