//! `modelfs mount`: serve a store at a mountpoint until unmounted or told
//! to stop.
//!
//! By default the command daemonizes the way mount helpers do: it starts
//! itself again in the background with `--foreground`, waits until that
//! child reports the mount live (exit 0) or failed (exit 1 with the child's
//! reason), and returns. Re-executing instead of `fork()`ing keeps the
//! daemon free of the state of a forked multi-threaded process.
//!
//! Shutdown: SIGTERM, SIGINT or SIGHUP fail every waiting open, cancel
//! downloads (their partial files stay, so the next fetch resumes), and
//! unmount; if files are still open the unmount is lazy, like
//! `fusermount3 -u -z`, and the process then exits, which ends the FUSE
//! connection. An external `umount` ends the serving loop the same way.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::logging;
pub use super::logging::LogTarget;
use super::mount_options::MountOptions;
use super::{CliError, Globals};
use crate::coordinator::Coordinator;
use crate::fs::ModelFs;
use crate::fuse::{self, Mounted, ReadMode, SessionOptions, Unmounter, lazy_unmount, mount_hint};
use crate::store::Store;

/// Set in the daemon child: the fd to report readiness on.
const READY_FD_ENV: &str = "MODELFS_READY_FD";
/// How often the watcher looks for changes in the store. A pass over an
/// unchanged store stats its fan-out folders and the folder of each present
/// blob, and takes no lock the FUSE threads wait on; see `fs::namespace`.
const REFRESH_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, clap::Args)]
#[command(after_help = super::mount_options::HELP)]
pub struct MountArgs {
    /// Where to mount (for example /models); must be an existing directory
    pub mountpoint: PathBuf,
    /// Stay in the foreground (systemd Type=simple, debugging)
    #[arg(short, long)]
    pub foreground: bool,
    /// Mount options, comma-separated (see below)
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
}

/// Where the log lines of `modelfs mount` go: in the foreground, to
/// `log_file=` if given, else stderr; in the daemon, to `log_file=` if
/// given, else syslog, else (no syslog on this host) the default file of
/// [`logging::default_log_file`]. The parent that starts the daemon logs to
/// stderr: its errors are for the person or tool running it.
pub fn log_target(a: &MountArgs) -> LogTarget {
    let opts = MountOptions::parse(&a.options).unwrap_or_default();
    let daemon_child = std::env::var_os(READY_FD_ENV).is_some();
    match (opts.log_file, daemon_child || a.foreground, daemon_child) {
        (Some(f), true, _) => LogTarget::File(f),
        (None, _, true) => logging::daemon_target(&a.mountpoint),
        _ => LogTarget::Stderr,
    }
}

/// `modelfs SOURCE MOUNTPOINT [-o OPTS]` (how mount.fuse3 calls a
/// `fuse.modelfs` fstab line) → `modelfs mount MOUNTPOINT --store SOURCE
/// [-o OPTS]`. Other argument lists are returned unchanged.
pub fn rewrite_helper_args(args: Vec<String>, subcommands: &[&str]) -> Vec<String> {
    let (Some(first), Some(second)) = (args.get(1), args.get(2)) else {
        return args;
    };
    if first.starts_with('-') || second.starts_with('-') || subcommands.contains(&first.as_str()) {
        return args;
    }
    let mut out = vec![
        args[0].clone(),
        "mount".into(),
        second.clone(),
        "--store".into(),
        first.clone(),
    ];
    out.extend(args[3..].iter().cloned());
    out
}

/// Mounts and serves (foreground), or starts the daemon and waits for it.
pub fn run(g: &Globals, a: &MountArgs) -> Result<(), CliError> {
    let opts = MountOptions::parse(&a.options).map_err(|e| CliError::new(format!("mount: {e}")))?;
    check_mountpoint(&a.mountpoint)?;
    let root = g.store_root()?;
    let store = Store::open(&root).map_err(|e| CliError::new(format!("mount: {e}")))?;
    // The store's absolute path: it is the mount's source in /proc/mounts
    // and `df`, where a relative one would mean nothing.
    let store = match std::fs::canonicalize(&root) {
        Ok(abs) => Store::open(abs).map_err(|e| CliError::new(format!("mount: {e}")))?,
        Err(_) => store,
    };
    check_apart(&a.mountpoint, store.root())?;
    let daemon_child = ready_fd().is_some();
    if !a.foreground && !daemon_child {
        return daemonize(&mounted_line(a, &opts, store.root()));
    }
    // A store made by another tool may lack folders a fetch needs
    // (`locks/`). A read-only store can still serve what it holds.
    if let Err(e) = store.create_layout() {
        log::warn!(
            "cannot create the store's folders ({e}); serving what the store holds, downloads may fail"
        );
    }
    if let Some(fd) = ready_fd() {
        // Keep the readiness pipe out of anything the daemon starts (the
        // fusermount3 of a user mount): the parent waits for its EOF.
        crate::sys::set_cloexec(fd);
    }
    let result = serve(g, a, &opts, store);
    if let Err(e) = &result {
        // A daemon's stderr is /dev/null once the mount is up (before that
        // the parent prints it): this line in the log is all that remains.
        if daemon_child {
            log::error!("{e}");
        }
    }
    result
}

/// Refuses to mount on the store, inside it, or on a folder that holds it:
/// the daemon reaches the store by path, and through its own mount it
/// would find its own files instead (the models vanish; with `threads=1`
/// it waits on itself for good).
fn check_apart(mountpoint: &Path, store: &Path) -> Result<(), CliError> {
    let mp = resolve_mountpoint(mountpoint);
    let why = if mp == store {
        "is the store itself"
    } else if mp.starts_with(store) {
        "is inside the store"
    } else if store.starts_with(&mp) {
        "holds the store"
    } else {
        return Ok(());
    };
    Err(CliError::new(format!(
        "mount: the mountpoint {} {why} ({}): the mount would hide the store from modelfs itself; \
         mount somewhere outside the store, and keep the store outside the mountpoint",
        mp.display(),
        store.display()
    )))
}

/// The mountpoint as an absolute path with its symlinks resolved, without
/// triggering an automount placeholder at it: its parent is resolved, and
/// its last component only when it is itself a symlink (lstat and
/// readlink do not trigger automounts; `open` and `statx` do).
fn resolve_mountpoint(mountpoint: &Path) -> PathBuf {
    let abs = std::path::absolute(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    // Not std's symlink_metadata: it uses statx, which triggers automounts.
    let is_link =
        crate::sys::lstat_no_automount(&abs).is_ok_and(|m| m & libc::S_IFMT == libc::S_IFLNK);
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) if !is_link => std::fs::canonicalize(parent)
            .map(|p| p.join(name))
            .unwrap_or(abs),
        _ => std::fs::canonicalize(&abs).unwrap_or(abs),
    }
}

/// The readiness fd, in the daemon child only.
fn ready_fd() -> Option<i32> {
    std::env::var(READY_FD_ENV).ok()?.parse().ok()
}

/// The mountpoint is a directory with nothing mounted on it (but an
/// automount placeholder, see [`super::mountpoint`]).
fn check_mountpoint(mp: &Path) -> Result<(), CliError> {
    match crate::sys::stat_no_automount(mp) {
        Ok(mode) if mode & libc::S_IFMT == libc::S_IFDIR => check_not_mounted(mp),
        Ok(_) => Err(CliError::new(format!(
            "mount: {} is not a directory",
            mp.display()
        ))),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Err(dead_mount(mp, &e)),
        Err(e) => Err(CliError::new(format!(
            "mount: mountpoint {}: {e} (create it with `mkdir -p {}`)",
            mp.display(),
            mp.display()
        ))),
    }
}

/// Refuses a mountpoint something is mounted on already, as mount(8)
/// does: a second mount would hide the first one's files.
fn check_not_mounted(mp: &Path) -> Result<(), CliError> {
    match super::mountpoint::mounted_at(&resolve_mountpoint(mp)) {
        Some((fstype, source)) if !super::mountpoint::is_placeholder(&fstype) => {
            // The kernel answers `stat` of a dead FUSE mount's root from
            // its cache for a while; statfs always asks the daemon.
            if let Err(e) = super::mountpoint::statfs(mp)
                && e.raw_os_error() == Some(libc::ENOTCONN)
            {
                return Err(dead_mount(mp, &e));
            }
            Err(CliError::new(format!(
                "mount: {}: already mounted ({fstype} {source}); unmount it first (`umount {}`)",
                mp.display(),
                mp.display()
            )))
        }
        _ => Ok(()),
    }
}

/// The error for a FUSE mount at `mp` whose daemon has ended.
fn dead_mount(mp: &Path, e: &std::io::Error) -> CliError {
    CliError::new(format!(
        "mount: {}: {e}: the daemon of the mount there has ended; \
         detach the dead mount with `umount -l {}`, then mount again",
        mp.display(),
        mp.display()
    ))
}

/// What the parent prints once the daemon is up: where the mount is and
/// where the daemon's log goes (the daemon has no terminal).
fn mounted_line(a: &MountArgs, opts: &MountOptions, store: &Path) -> String {
    let log = match &opts.log_file {
        Some(f) => f.display().to_string(),
        None => match logging::daemon_target(&a.mountpoint) {
            LogTarget::Syslog => "syslog (journalctl -t modelfs)".into(),
            LogTarget::File(p) | LogTarget::Fallback(p) => p.display().to_string(),
            LogTarget::Stderr => {
                "nowhere (no syslog, no home directory; set -o log_file=PATH)".into()
            }
        },
    };
    format!(
        "modelfs: mounted {} at {}; log: {log}",
        store.display(),
        resolve_mountpoint(&a.mountpoint).display()
    )
}

/// Starts `modelfs … --foreground` in a new session and waits for its
/// readiness report, then prints `mounted` on stderr. The child's stderr
/// comes to us until then, so its reason for failing is printed here.
fn daemonize(mounted: &str) -> Result<(), CliError> {
    let (ready_r, ready_w) = crate::sys::pipe_for_child()
        .map_err(|e| CliError::new(format!("mount: cannot create a pipe: {e}")))?;
    let exe = std::env::current_exe()
        .map_err(|e| CliError::new(format!("mount: cannot find my executable: {e}")))?;
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    args.push("--foreground".into());
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args)
        .env(READY_FD_ENV, ready_w.as_raw_fd().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    crate::sys::start_in_new_session(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| CliError::new(format!("mount: cannot start the daemon: {e}")))?;
    // Closing our copy of the write end lets EOF arrive.
    drop(ready_w);
    let mut ready = String::new();
    let mut r = std::fs::File::from(ready_r);
    let _ = r.read_to_string(&mut ready);
    if ready.trim() == "ready" {
        eprintln!("{mounted}");
        return Ok(());
    }
    let mut err = String::new();
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    let status = child.wait().ok();
    eprint!("{err}");
    Err(CliError::new(format!(
        "mount: the daemon did not come up ({})",
        status.map_or("unknown status".into(), |s| s.to_string())
    )))
}

/// In the daemon child: tell the parent the mount is live, then stop
/// writing to its pipe (stderr goes to /dev/null; logs have their target).
fn report_ready() {
    let Some(fd) = ready_fd() else {
        return;
    };
    // The fd was handed to us by the parent for exactly this, and is
    // taken here once.
    let mut f = crate::sys::take_inherited_fd(fd);
    let _ = f.write_all(b"ready\n");
    drop(f);
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        crate::sys::redirect_stderr(&null);
    }
    // Like any daemon, do not keep the directory it was started from busy
    // (every path it still needs is absolute by now).
    let _ = std::env::set_current_dir("/");
}

enum Event {
    Signal(i32),
    SessionEnded(std::io::Result<()>),
}

/// The coordinator and the filesystem the mount serves, with the fetch
/// settings of the mount options.
fn build_fs(
    g: &Globals,
    opts: &MountOptions,
    store: &Store,
) -> Result<(Arc<Coordinator>, Arc<ModelFs>), CliError> {
    let mut http = g.http_config();
    if opts.ca_file.is_some() {
        http.ca_file = opts.ca_file.clone();
    }
    let mut mirrors = opts.mirrors.clone();
    mirrors.extend(super::settings_mirrors(store)?);
    let mut fetcher = super::fetcher_with(http, opts.stall_timeout, mirrors)?;
    if let Some(d) = opts.retry_for {
        fetcher.set_retry_for(d);
    }
    fetcher.set_connections(opts.connections);
    let coordinator = Coordinator::new(store.clone(), fetcher, opts.fetch_threads);
    if let Some(d) = opts.mismatch_backoff {
        coordinator.set_mismatch_backoff(d);
    }
    coordinator.set_quota_overrides(opts.cache_max, opts.min_free);
    let (uid, gid) = crate::sys::ids();
    let fs = Arc::new(ModelFs::new(
        coordinator.clone(),
        opts.uid.unwrap_or(uid),
        opts.gid.unwrap_or(gid),
    ));
    Ok((coordinator, fs))
}

/// The FUSE session's settings from the mount options.
fn session_options(opts: &MountOptions, store: &Store) -> SessionOptions {
    SessionOptions {
        fsname: opts
            .fsname
            .clone()
            .unwrap_or_else(|| store.root().display().to_string()),
        default_permissions: opts.default_permissions,
        allow_other: opts.allow_other,
        allow_root: opts.allow_root,
        threads: opts.threads,
        mode: if opts.passthrough == Some(false) {
            ReadMode::Fallback
        } else {
            ReadMode::Auto
        },
    }
}

fn serve(g: &Globals, a: &MountArgs, opts: &MountOptions, store: Store) -> Result<(), CliError> {
    // Before any thread starts, so every thread inherits the mask and the
    // signals reach only the waiter below.
    let signals = block_stop_signals();
    let max_files = super::daemon_limits::tune();
    // Absolute, without resolving anything (resolving could walk into an
    // automount placeholder): the daemon leaves its working directory, and
    // the unmount at the end must still find the mountpoint.
    let mountpoint = std::path::absolute(&a.mountpoint)
        .map_err(|e| CliError::new(format!("mount: mountpoint {}: {e}", a.mountpoint.display())))?;
    let (coordinator, fs) = build_fs(g, opts, &store)?;
    fs.refresh();
    let session_options = session_options(opts, &store);
    let Mounted {
        session,
        mut unmounter,
    } = fuse::session::mount(fs.clone(), &mountpoint, &session_options).map_err(|e| {
        CliError::new(format!(
            "mount: cannot mount {} at {}: {e} ({})",
            store.root().display(),
            mountpoint.display(),
            mount_hint()
        ))
    })?;
    log::info!(
        "mounted {} at {} with {} model(s); up to about {max_files} files open at once",
        store.root().display(),
        mountpoint.display(),
        fs.namespace().len()
    );
    report_ready();

    coordinator.spawn_quota_keeper();
    let (tx, rx) = crossbeam_channel::unbounded();
    let stop_refresh = Arc::new(AtomicBool::new(false));
    spawn_refresher(fs.clone(), stop_refresh.clone());
    let tx_session = tx.clone();
    std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let _ = tx_session.send(Event::SessionEnded(session.run()));
        })
        .map_err(|e| CliError::new(format!("mount: cannot start the FUSE session thread: {e}")))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                if let Some(sig) = signals.wait() {
                    let _ = tx.send(Event::Signal(sig));
                }
            }
        })
        .map_err(|e| CliError::new(format!("mount: cannot start the signal thread: {e}")))?;

    let result = wait_for_the_end(&rx, &coordinator, &mut unmounter, &mountpoint);
    stop_refresh.store(true, Ordering::Relaxed);
    // A remount orders eviction by what this mount saw opened.
    coordinator.flush_last_open();
    result
}

/// Waits until the session ends (an unmount) or a stop signal arrives
/// (then unmounts), and stops the coordinator, giving verified downloads
/// [`PUBLISH_GRACE`] to be published.
fn wait_for_the_end(
    rx: &crossbeam_channel::Receiver<Event>,
    coordinator: &Coordinator,
    unmounter: &mut Unmounter,
    mountpoint: &Path,
) -> Result<(), CliError> {
    match rx.recv() {
        Ok(Event::SessionEnded(r)) => {
            log::info!("{} was unmounted", mountpoint.display());
            coordinator.shutdown();
            coordinator.wait_for_publishing(PUBLISH_GRACE);
            r.map_err(|e| {
                CliError::new(format!("mount: the FUSE session ended with an error: {e}"))
            })
        }
        Ok(Event::Signal(sig)) => {
            log::info!("signal {sig}: unmounting {}", mountpoint.display());
            coordinator.shutdown();
            if let Err(e) = unmounter.unmount(mountpoint) {
                log::info!("unmount: {e}; detaching lazily (files are still open)");
                lazy_unmount(mountpoint);
            }
            // Give the session a moment to drain; exiting closes /dev/fuse.
            let _ = rx.recv_timeout(Duration::from_secs(2));
            coordinator.wait_for_publishing(PUBLISH_GRACE);
            Ok(())
        }
        Err(_) => Ok(()),
    }
}

/// How long a stopping daemon waits for verified downloads to be made
/// durable and published (an fsync of a large model on a slow disk).
const PUBLISH_GRACE: Duration = Duration::from_secs(60);

/// How often the watcher gives freed memory back even when the store did
/// not change (a directory listing of 100,000 entries frees megabytes).
const TRIM_EVERY: Duration = Duration::from_secs(10);

fn spawn_refresher(fs: Arc<ModelFs>, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("manifest-watch".into())
        .spawn(move || {
            // The first refresh (before the mount came up) parsed every
            // manifest: give back what that freed.
            super::daemon_limits::give_back_freed_memory();
            let mut trimmed = Instant::now();
            let mut full_passes = fs.namespace().full_passes();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(REFRESH_EVERY);
                let c = fs.refresh();
                if !c.is_empty() {
                    log::info!("store changed: {}", super::store_changes::sentence(&c));
                }
                let full = std::mem::replace(&mut full_passes, fs.namespace().full_passes());
                if !c.is_empty() || full != full_passes || trimmed.elapsed() >= TRIM_EVERY {
                    super::daemon_limits::give_back_freed_memory();
                    trimmed = Instant::now();
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot watch the store for changes: {e}");
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (and so in every
/// thread started after) and returns the set, for `sigwait`.
fn block_stop_signals() -> crate::sys::BlockedSignals {
    crate::sys::BlockedSignals::block(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP])
}
