//! `-o` options of `modelfs mount`, as written on a command line or in the
//! options column of `/etc/fstab`.
//!
//! Three kinds: FUSE and mount options modelfs honours, markers meant for
//! mount(8) or systemd that it accepts and ignores, and its own options.
//! Anything else fails the mount with a message naming the option: a typo
//! in fstab should not silently mount something else.

use std::path::PathBuf;
use std::time::Duration;

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
    pub log_file: Option<PathBuf>,
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
            log_file: None,
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
        for opt in values
            .iter()
            .flat_map(|v| v.as_ref().split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
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
                "uid" => o.uid = Some(parse_num(key, need(key, value)?)?),
                "gid" => o.gid = Some(parse_num(key, need(key, value)?)?),
                "fsname" => o.fsname = Some(need(key, value)?.to_string()),
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
                    let secs: u64 = parse_num(key, need(key, value)?.trim_end_matches('s'))?;
                    if secs == 0 {
                        return Err("mount option stall_timeout must be at least 1 second".into());
                    }
                    o.stall_timeout = Some(Duration::from_secs(secs));
                }
                "retry_for" => o.retry_for = Some(parse_secs(key, need(key, value)?)?),
                "mismatch_backoff" => {
                    o.mismatch_backoff = Some(parse_secs(key, need(key, value)?)?)
                }
                "fetch_threads" => {
                    o.fetch_threads = parse_num::<usize>(key, need(key, value)?)?.clamp(1, 64)
                }
                "threads" => o.threads = parse_num::<usize>(key, need(key, value)?)?.clamp(1, 64),
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

/// `SECS` or `SECSs`, zero allowed.
fn parse_secs(key: &str, v: &str) -> Result<Duration, String> {
    parse_num(key, v.trim_end_matches('s')).map(Duration::from_secs)
}

fn parse_num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("mount option {key}={v}: not a number"))
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
  stall_timeout=SECS     give up on a download attempt after this long without data, and retry (default 30)
  retry_for=SECS         fail a download that made no progress for this long while retrying (default 15)
  mismatch_backoff=SECS  after wrong bytes, opens fail at once for this long unless the manifest
                         changes or `modelfs pull` fetches the blob (default 600; 0: off)
  fetch_threads=N        downloads that may run at once, plus one for blobs up to 64 MiB (default 4)
  threads=N              threads serving kernel requests (default 4)
  log_file=PATH          log file, also with -f (default with -f: stderr; as a daemon: syslog,
                         or /var/log/modelfs/<mountpoint>.log where nothing listens on /dev/log)
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
