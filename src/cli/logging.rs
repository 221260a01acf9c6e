//! Log setup: `env_logger` everywhere, writing to stderr, a file, or
//! syslog (a mount daemon has no terminal). `RUST_LOG` overrides the level
//! chosen by `-v`/`-q`.
//!
//! A mount daemon's lines are never silently dropped: without `log_file=`
//! they go to syslog only when something listens on `/dev/log`; otherwise
//! (containers, minimal hosts) to a default file, [`default_log_file`].

use std::io::Write;
use std::path::{Path, PathBuf};

use super::Globals;

/// The socket syslog(3) writes to.
pub const SYSLOG_SOCKET: &str = "/dev/log";

/// Where log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Stderr,
    /// A file the operator chose (`log_file=`).
    File(PathBuf),
    Syslog,
    /// The default file of a daemon on a host without syslog.
    Fallback(PathBuf),
}

/// The target of a mount daemon without `log_file=`: syslog when
/// `/dev/log` accepts connections, else [`default_log_file`].
pub fn daemon_target(mountpoint: &Path) -> LogTarget {
    if syslog_listens() {
        return LogTarget::Syslog;
    }
    match default_log_file(mountpoint) {
        Some(p) => LogTarget::Fallback(p),
        // No home directory to put it in: stderr, which the daemon keeps
        // pointing at its parent until the mount is up, and then at
        // /dev/null. Rare enough (no $HOME, no passwd entry) to accept.
        None => LogTarget::Stderr,
    }
}

/// Whether a syslog daemon (journald, rsyslog, syslog-ng) listens on
/// `/dev/log`. Datagram first, then stream, as glibc's syslog(3) does.
pub fn syslog_listens() -> bool {
    use std::os::unix::net::{UnixDatagram, UnixStream};
    let dgram = UnixDatagram::unbound().and_then(|s| s.connect(SYSLOG_SOCKET));
    match dgram {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::EPROTOTYPE) => {
            UnixStream::connect(SYSLOG_SOCKET).is_ok()
        }
        Err(_) => false,
    }
}

/// The log file of a daemon mounted at `mountpoint` when there is no
/// syslog: `/var/log/modelfs/<escaped mountpoint>.log` for root, else
/// `${XDG_STATE_HOME:-~/.local/state}/modelfs/<escaped mountpoint>.log`.
/// The escaping is `systemd-escape --path`'s (`/models` → `models`,
/// `/srv/ai-models` → `srv-ai\x2dmodels`).
pub fn default_log_file(mountpoint: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    let name = format!("{}.log", escape_path(&abs));
    if crate::sys::is_root() {
        return Some(Path::new("/var/log/modelfs").join(name));
    }
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let state = env("XDG_STATE_HOME").or_else(|| Some(env("HOME")?.join(".local/state")))?;
    Some(state.join("modelfs").join(name))
}

/// `systemd-escape --path`: the path without leading, trailing and
/// repeated slashes, `/` → `-`, and every byte other than ASCII letters,
/// digits, `:`, `_` and a non-leading `.` as `\xNN`. `/` itself is `-`.
pub fn escape_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let parts: Vec<&[u8]> = path
        .as_os_str()
        .as_bytes()
        .split(|b| *b == b'/')
        .filter(|p| !p.is_empty() && *p != b".")
        .collect();
    if parts.is_empty() {
        return "-".into();
    }
    let mut out = String::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push('-');
        }
        for (j, &b) in part.iter().enumerate() {
            let leading_dot = b == b'.' && i == 0 && j == 0;
            if (b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'.') && !leading_dot {
                out.push(b as char);
            } else {
                out.push_str(&format!("\\x{b:02x}"));
            }
        }
    }
    out
}

/// Initialises the global logger once. Fails when a log file cannot be
/// opened: a daemon that cannot log should not start and log nowhere.
pub fn init(g: &Globals, target: &LogTarget) -> Result<(), String> {
    let level = match (g.quiet, g.verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    // fuser warns "Failed to umount filesystem" whenever the mount was
    // already unmounted from outside (`umount`, `fusermount3 -u`), which is
    // the normal way to stop a mount; its errors still show.
    let mut b = env_logger::Builder::from_env(
        env_logger::Env::default()
            .default_filter_or(format!("warn,fuser::session=error,modelfs={level}")),
    );
    b.format_timestamp_millis();
    match target {
        LogTarget::Stderr => {}
        LogTarget::File(path) => {
            let f = open_log(path, false)
                .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
            b.target(env_logger::Target::Pipe(Box::new(f)));
        }
        LogTarget::Fallback(path) => {
            let f = open_log(path, true).map_err(|e| {
                format!(
                    "no syslog listens on {SYSLOG_SOCKET} and the default log file {} cannot be opened: {e} \
                     (set one with -o log_file=PATH)",
                    path.display()
                )
            })?;
            b.target(env_logger::Target::Pipe(Box::new(f)));
        }
        LogTarget::Syslog => {
            b.format(|buf, record| writeln!(buf, "{}: {}", record.level(), record.args()));
            b.target(env_logger::Target::Pipe(Box::new(Syslog::open())));
        }
    }
    let logger = b.build();
    let max = logger.filter();
    log::set_boxed_logger(Box::new(NoWireSecrets(logger)))
        .map_err(|e| format!("cannot set up logging: {e}"))?;
    log::set_max_level(max);
    if let LogTarget::Fallback(path) = target {
        log::info!(
            "no syslog listens on {SYSLOG_SOCKET}; logging to {}",
            path.display()
        );
    }
    Ok(())
}

/// The logger, with the HTTP library's trace level cut off whatever
/// `RUST_LOG` says (`ureq=trace`, `ureq::util=trace`, `trace`): at trace,
/// `ureq` logs each request's full path and query (a signed URL's
/// signature) and the `Location` of each redirect, and `ureq_proto` dumps
/// the bytes on the wire, `Authorization` header included. Their debug
/// lines show `/******` for paths and redact headers, so they pass. This
/// answers `enabled` too, which is what `ureq` asks before it decides to
/// print a path.
struct NoWireSecrets(env_logger::Logger);

/// Whether `target` is a module of the HTTP library.
fn is_http_library(target: &str) -> bool {
    ["ureq", "ureq_proto"].iter().any(|c| {
        target
            .strip_prefix(c)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

impl log::Log for NoWireSecrets {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        !(m.level() > log::Level::Debug && is_http_library(m.target())) && self.0.enabled(m)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        self.0.log(record);
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// Opens `path` for appending (mode 0640 when created); with
/// `create_dirs`, creates its directory first (0755 for root's
/// /var/log/modelfs, 0700 for a user's state directory).
fn open_log(path: &Path, create_dirs: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if create_dirs && let Some(dir) = path.parent() {
        let mode = if crate::sys::is_root() { 0o755 } else { 0o700 };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// Sends each log line to syslog(3) (journald on systemd hosts).
struct Syslog {
    line: Vec<u8>,
}

impl Syslog {
    fn open() -> Self {
        crate::sys::openlog_daemon();
        Self { line: Vec::new() }
    }
}

impl Write for Syslog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        while let Some(pos) = self.line.iter().position(|b| *b == b'\n') {
            let mut msg: Vec<u8> = self.line.drain(..=pos).collect();
            msg.pop();
            msg.retain(|b| *b != 0);
            let prio = if msg.starts_with(b"ERROR") {
                libc::LOG_ERR
            } else if msg.starts_with(b"WARN") {
                libc::LOG_WARNING
            } else {
                libc::LOG_INFO
            };
            // NULs were removed above, so this cannot fail.
            if let Ok(msg) = std::ffi::CString::new(msg) {
                crate::sys::syslog(prio, &msg);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountpoints_are_escaped_like_systemd_escape_path() {
        assert_eq!(escape_path(Path::new("/models")), "models");
        assert_eq!(escape_path(Path::new("/")), "-");
        assert_eq!(
            escape_path(Path::new("//srv//ai-models/")),
            "srv-ai\\x2dmodels"
        );
        assert_eq!(
            escape_path(Path::new("/tmp/.hidden/my models")),
            "tmp-.hidden-my\\x20models"
        );
        assert_eq!(escape_path(Path::new("/.x")), "\\x2ex");
        assert_eq!(escape_path(Path::new("/a/./b")), "a-b");
    }

    #[test]
    fn the_http_librarys_trace_level_is_never_enabled() {
        use log::Log;
        let inner = env_logger::Builder::new()
            .parse_filters("trace,ureq::util=trace")
            .build();
        let l = NoWireSecrets(inner);
        let md = |target, level| log::Metadata::builder().target(target).level(level).build();
        for t in ["ureq", "ureq::util", "ureq_proto::util"] {
            assert!(!l.enabled(&md(t, log::Level::Trace)), "{t}");
            assert!(l.enabled(&md(t, log::Level::Debug)), "{t}");
        }
        assert!(l.enabled(&md("modelfs::fetch", log::Level::Trace)));
        assert!(l.enabled(&md("ureqish", log::Level::Trace)));
    }

    #[test]
    fn the_default_log_file_is_named_after_the_mountpoint() {
        let p = default_log_file(Path::new("/models")).unwrap();
        assert_eq!(p.file_name().unwrap(), "models.log");
        assert_eq!(p.parent().unwrap().file_name().unwrap(), "modelfs");
    }
}
