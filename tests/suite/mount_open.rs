//! Opening entries of a real mount: one download however many processes,
//! mounts and `modelfs pull`s want a blob; waiters that can always be
//! stopped; failures that reach every waiter and leave nothing bad
//! readable; `O_NONBLOCK`; other producers' locks; shutdown mid-download.
//!
//! Every test mounts the real binary (`Mount::start`) over a throwaway store
//! and fetches from the real HTTPS test origin on loopback.

use std::fs::File;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::sys::open_and_read;
use crate::common::sys::{getxattr, open_flags};
use crate::common::waiter::waiters;
use crate::common::{
    Fault, MIB, Mount, Origin, TestStore, failure_lines, hex, is_present, partial_len,
    random_bytes, wait_until,
};
use modelfs::store::ModelName;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Undoes an inherited "ignore SIGINT" (a test run started in the
/// background by a shell has SIGINT and SIGQUIT ignored, and children
/// inherit that): the signal tests need children that heed signals.
fn heed_signals(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: signal(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            for s in [libc::SIGINT, libc::SIGQUIT, libc::SIGTERM] {
                libc::signal(s, libc::SIG_DFL);
            }
            Ok(())
        })
    }
}

/// `sha256sum PATH` in a child process.
fn sha256sum(path: &Path) -> Child {
    heed_signals(&mut Command::new("sha256sum"))
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sha256sum")
}

/// Waits for a `sha256sum` child; its digest, or its stderr as the error.
fn digest_of(child: Child) -> Result<String, String> {
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        let text = String::from_utf8(out.stdout).unwrap();
        Ok(text.split_whitespace().next().unwrap_or("").to_string())
    } else {
        Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The thread ids of process `pid`.
fn threads_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The thread of process `pid` that is inside open/openat right now.
fn thread_in_open(pid: u32) -> Option<u32> {
    threads_of(pid).into_iter().find(|tid| {
        std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<i64>().ok())
            .is_some_and(|nr| nr == libc::SYS_openat || nr == libc::SYS_open)
    })
}

/// Whether a thread of process `pid` is inside open/openat right now.
fn in_open_syscall(pid: u32) -> bool {
    thread_in_open(pid).is_some()
}

/// Waits up to `limit` for the child to end.
fn reaped_within(child: &mut Child, limit: Duration) -> Option<(ExitStatus, Duration)> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Some(st) = child.try_wait().unwrap() {
            return Some((st, t.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

// ---------------------------------------------------------------------------
// One download, many openers
// ---------------------------------------------------------------------------

#[test]
fn thirty_two_processes_opening_one_pending_entry_share_one_download() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(4 * MIB, 1);
    let m = store.add_pending("m", &origin, &data);
    // ~3 s, so that every opener arrives while the download runs.
    origin.set_persistent_fault("m.gguf", Some(Fault::Throttle(1_500_000)));
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let path = mount.path("m.gguf");

    let readers: Vec<Child> = (0..32).map(|_| sha256sum(&path)).collect();
    assert!(
        !is_present(&store.store(), &m.blob),
        "all 32 opened before the download ended (else raise the throttle)"
    );
    let want = hex(&data);
    for (i, r) in readers.into_iter().enumerate() {
        assert_eq!(
            digest_of(r),
            Ok(want.clone()),
            "reader {i}: {}",
            mount.log()
        );
    }
    let stats = origin.stats("m.gguf");
    assert_eq!(stats.gets, 1, "one download for 32 openers: {stats:?}");
    assert_eq!(stats.bytes_sent, data.len() as u64);
    store.assert_consistent();
}

#[test]
fn an_open_answered_at_verification_keeps_reading_its_file_after_it_is_published() {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::MetadataExt;
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(4 * MIB, 6);
    let m = store.add_pending("m", &origin, &data);
    origin.set_persistent_fault("m.gguf", Some(Fault::Throttle(8_000_000)));
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let path = mount.path("m.gguf");
    let ino_before = std::fs::metadata(&path).unwrap().ino();

    // The open returns once the digest matches, possibly before the blob
    // is made durable and renamed into place.
    let mut f = File::open(&path).expect("open waits for the verified bytes");
    let mut got = Vec::new();
    f.read_to_end(&mut got).unwrap();
    assert!(got == data, "the first open reads the verified bytes");
    assert!(
        wait_until(Duration::from_secs(10), || is_present(
            &store.store(),
            &m.blob
        )),
        "the blob is published after the open returned"
    );
    assert_eq!(getxattr(&path, "user.modelfs.state").unwrap(), "present");

    // The same handle, the same inode and a new open all read the blob.
    f.seek(SeekFrom::Start(0)).unwrap();
    got.clear();
    f.read_to_end(&mut got).unwrap();
    assert!(got == data, "the early handle reads on after the rename");
    assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino_before);
    assert!(open_and_read(&path).unwrap() == data);
    let log = mount.log();
    assert!(
        !log.contains("gone or replaced"),
        "publishing the handed-over file must not retire its inode:\n{log}"
    );
    assert_eq!(origin.stats("m.gguf").gets, 1);
    store.assert_consistent();
}

#[test]
fn two_mounts_and_a_pull_wanting_one_pending_model_download_it_once() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(4 * MIB, 2);
    store.add_pending("m", &origin, &data);
    origin.set_persistent_fault("m.gguf", Some(Fault::Throttle(1_000_000)));
    let one = Mount::start(&store, origin.ca_pem_path(), &[]);
    let two = Mount::start(&store, origin.ca_pem_path(), &["passthrough=off"]);

    let a = sha256sum(&one.path("m.gguf"));
    let b = sha256sum(&two.path("m.gguf"));
    let pull = store
        .cli(origin.ca_pem_path())
        .args(["pull", "m"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let a2 = sha256sum(&one.path("m.gguf"));

    let want = hex(&data);
    assert_eq!(digest_of(a), Ok(want.clone()), "reader on mount one");
    assert_eq!(digest_of(b), Ok(want.clone()), "reader on mount two");
    assert_eq!(
        digest_of(a2),
        Ok(want.clone()),
        "second reader on mount one"
    );
    let out = pull.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "modelfs pull: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = origin.stats("m.gguf");
    assert_eq!(stats.gets, 1, "one download in all: {stats:?}");
    // Each mount can read it again without the network.
    assert_eq!(open_and_read(&two.path("m.gguf")).unwrap(), data);
    assert_eq!(origin.stats("m.gguf").gets, 1);
    store.assert_consistent();
}

// ---------------------------------------------------------------------------
// Waiters can be stopped
// ---------------------------------------------------------------------------

#[test]
fn sigint_sigterm_and_sigkill_end_a_waiting_open_at_once_while_another_waiter_gets_the_whole_file()
{
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(2 * MIB, 3);
    store.add_pending("m", &origin, &data);
    // The download delivers 256 KiB, then nothing for 20 s, then the rest.
    origin.set_persistent_fault(
        "m.gguf",
        Some(Fault::StallAt(256 * 1024, Duration::from_secs(20))),
    );
    // At the default log level, as a user runs it.
    let mount = Mount::start_with(&store, origin.ca_pem_path(), &["stall_timeout=60"], |c| {
        c.env_remove("RUST_LOG");
    });
    let path = mount.path("m.gguf");

    let mut by_sigint = sha256sum(&path);
    let mut by_sigterm = sha256sum(&path);
    let mut by_sigkill = sha256sum(&path);
    // Python handles SIGINT itself (KeyboardInterrupt): the signal stays
    // pending instead of killing the process outright.
    let mut python_sigint = heed_signals(&mut Command::new("python3"))
        .args(["-c", "import sys; open(sys.argv[1], 'rb').read()"])
        .arg(&path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A multi-threaded process whose main thread exits on SIGINT while
    // another thread waits in open: the exit must not hang on that thread.
    let mut python_thread = heed_signals(&mut Command::new("python3"))
        .args([
            "-c",
            "import sys, threading, time\n\
             t = threading.Thread(target=lambda: open(sys.argv[1], 'rb').read(), daemon=True)\n\
             t.start()\n\
             while True: time.sleep(0.05)\n",
        ])
        .arg(&path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let survivor = sha256sum(&path);

    assert!(
        wait_until(Duration::from_secs(10), || {
            origin.stats_now("m.gguf").bytes_sent >= 256 * 1024
                && [
                    &by_sigint,
                    &by_sigterm,
                    &by_sigkill,
                    &python_sigint,
                    &python_thread,
                ]
                .iter()
                .all(|c| in_open_syscall(c.id()))
        }),
        "the download stalls and every victim waits in open"
    );
    let opener_thread = thread_in_open(python_thread.id()).unwrap();
    assert_ne!(opener_thread, python_thread.id(), "not the main thread");
    std::thread::sleep(Duration::from_millis(300));
    for c in [
        &mut by_sigint,
        &mut by_sigterm,
        &mut by_sigkill,
        &mut python_sigint,
        &mut python_thread,
    ] {
        assert!(
            c.try_wait().unwrap().is_none(),
            "still waiting before the signal"
        );
    }
    let started = Instant::now();
    // SAFETY: signalling our own children.
    unsafe {
        libc::kill(by_sigint.id() as i32, libc::SIGINT);
        libc::kill(by_sigterm.id() as i32, libc::SIGTERM);
        libc::kill(by_sigkill.id() as i32, libc::SIGKILL);
        libc::kill(python_sigint.id() as i32, libc::SIGINT);
        libc::kill(python_thread.id() as i32, libc::SIGINT);
    }
    let limit = Duration::from_secs(5);
    for (name, c, sig) in [
        ("sha256sum (SIGINT)", &mut by_sigint, Some(libc::SIGINT)),
        ("sha256sum (SIGTERM)", &mut by_sigterm, Some(libc::SIGTERM)),
        ("sha256sum (SIGKILL)", &mut by_sigkill, Some(libc::SIGKILL)),
        ("python (SIGINT)", &mut python_sigint, None),
        ("python thread (SIGINT)", &mut python_thread, None),
    ] {
        let pid = c.id();
        let (status, took) = reaped_within(c, limit).unwrap_or_else(|| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let stack = std::fs::read_to_string(format!("/proc/{pid}/stack")).unwrap_or_default();
            panic!(
                "{name} (pid {pid}) still waits {limit:?} after the signal\n{status}\n{stack}\nmount log:\n{}",
                mount.log()
            )
        });
        eprintln!("{name} ended {took:?} after its signal ({status})");
        assert!(!status.success(), "{name} did not read the file");
        if let Some(sig) = sig {
            assert_eq!(status.signal(), Some(sig), "{name} died of its signal");
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the waits ended long before the stall did"
    );
    // The watchdog, not the end of the download, released them.
    let log = mount.log();
    let tasks = [
        by_sigint.id(),
        by_sigterm.id(),
        by_sigkill.id(),
        python_sigint.id(),
        opener_thread,
    ];
    for tid in tasks {
        assert!(
            log.contains(&format!("open by task {tid} interrupted")),
            "the mount noticed task {tid}'s signal:\n{log}"
        );
    }
    // Answering an open whose caller is gone is normal, not an error
    // (fuser says `ERROR fuser::reply` when the kernel refuses the reply).
    assert!(!log.contains("ERROR"), "no error was logged:\n{log}");

    // The download goes on for the one left.
    assert_eq!(digest_of(survivor), Ok(hex(&data)), "the survivor");
    let stats = origin.stats("m.gguf");
    assert_eq!(stats.gets, 1, "the download was not restarted: {stats:?}");
    store.assert_consistent();
}

/// A daemon in a container (its own pid namespace) is told pid 0 for every
/// host process that opens a file, so `/proc` cannot show that the opener
/// was killed; the kernel's FUSE_INTERRUPT names the request instead. Before
/// modelfs handled it, a killed `sha256sum` hung in open until the stall
/// ended (here 30 s; with a trickling origin, for ever).
#[test]
fn sigkill_and_sigterm_end_a_waiting_open_when_the_daemon_runs_in_another_pid_namespace() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(2 * MIB, 4);
    store.add_pending("m", &origin, &data);
    origin.set_persistent_fault(
        "m.gguf",
        Some(Fault::StallAt(256 * 1024, Duration::from_secs(30))),
    );
    let mount = Mount::start_in_pid_namespace(&store, origin.ca_pem_path(), &["stall_timeout=60"]);
    let path = mount.path("m.gguf");
    let mut by_sigkill = sha256sum(&path);
    let mut by_sigterm = sha256sum(&path);
    assert!(
        wait_until(Duration::from_secs(10), || {
            origin.stats_now("m.gguf").bytes_sent >= 256 * 1024
                && in_open_syscall(by_sigkill.id())
                && in_open_syscall(by_sigterm.id())
        }),
        "the download stalls and both victims wait in open"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(by_sigkill.try_wait().unwrap().is_none());
    assert!(by_sigterm.try_wait().unwrap().is_none());
    // SAFETY: signalling our own children.
    unsafe {
        libc::kill(by_sigkill.id() as i32, libc::SIGKILL);
        libc::kill(by_sigterm.id() as i32, libc::SIGTERM);
    }
    for (name, c, sig) in [
        ("sha256sum (SIGKILL)", &mut by_sigkill, libc::SIGKILL),
        ("sha256sum (SIGTERM)", &mut by_sigterm, libc::SIGTERM),
    ] {
        let pid = c.id();
        let (status, took) = reaped_within(c, Duration::from_secs(5)).unwrap_or_else(|| {
            let stack = std::fs::read_to_string(format!("/proc/{pid}/stack")).unwrap_or_default();
            panic!(
                "{name} (pid {pid}) still waits 5 s after the signal\n{stack}\nmount log:\n{}",
                mount.log()
            )
        });
        eprintln!("{name} ended {took:?} after its signal ({status})");
        assert_eq!(status.signal(), Some(sig), "{name} died of its signal");
    }
    let log = mount.log();
    assert_eq!(
        log.matches("open by a task outside this daemon's pid namespace interrupted")
            .count(),
        2,
        "the daemon saw pid 0 and ended both waits on the kernel's interrupt:\n{log}"
    );
    assert!(!log.contains("ERROR"), "no error was logged:\n{log}");
    // The download goes on for nobody, so the next open is fast.
    assert_eq!(
        getxattr(&path, "user.modelfs.state").as_deref(),
        Ok("fetching")
    );
}

/// A signal a program handles and carries on after (SIGWINCH on a resize)
/// reaches the mount as an interrupt too, but must not end a visible
/// task's open: only stop signals do.
#[test]
fn a_handled_sigwinch_does_not_end_a_waiting_open() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(2 * MIB, 5);
    store.add_pending("m", &origin, &data);
    origin.set_persistent_fault(
        "m.gguf",
        Some(Fault::StallAt(256 * 1024, Duration::from_secs(3))),
    );
    let mount = Mount::start(&store, origin.ca_pem_path(), &["stall_timeout=60"]);
    let path = mount.path("m.gguf");
    let mut python = heed_signals(&mut Command::new("python3"))
        .args([
            "-c",
            "import hashlib, signal, sys\n\
             signal.signal(signal.SIGWINCH, lambda *a: None)\n\
             print(hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest())\n",
        ])
        .arg(&path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || {
            origin.stats_now("m.gguf").bytes_sent >= 256 * 1024 && in_open_syscall(python.id())
        }),
        "the download stalls and python waits in open"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(python.id() as i32, libc::SIGWINCH) };
    let (status, _) = reaped_within(&mut python, Duration::from_secs(30)).expect("python ends");
    let mut out = String::new();
    python
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success());
    assert_eq!(out.trim(), hex(&data));
    let log = mount.log();
    assert!(
        !log.contains("interrupted"),
        "a SIGWINCH ended no open (Python would have retried it):\n{log}"
    );
}

// ---------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------

#[test]
fn a_corrupted_origin_fails_every_waiter_with_eio_quarantines_the_bytes_and_a_later_open_succeeds()
{
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(2 * MIB, 4);
    let m = store.add_pending("m", &origin, &data);
    let flip_at = 1_000_003u64;
    origin.set_persistent_fault(
        "m.gguf",
        Some(Fault::Multi(vec![
            Fault::FlipByte(flip_at),
            Fault::Throttle(1_000_000),
        ])),
    );
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let path = mount.path("m.gguf");

    let waiters = waiters(&path, 6);
    let cat = Command::new("cat")
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for (i, w) in waiters.into_iter().enumerate() {
        assert_eq!(w.result().map(|v| v.len()), Err(libc::EIO), "waiter {i}");
    }
    let out = cat.wait_with_output().unwrap();
    assert!(!out.status.success(), "cat fails");
    assert!(out.stdout.is_empty(), "cat read no byte of the bad file");
    assert_eq!(
        origin.stats("m.gguf").gets,
        1,
        "all waiters shared one download"
    );

    // Nothing bad is readable, now or later.
    assert!(!is_present(&store.store(), &m.blob));
    // The bytes are in quarantine, one flipped bit away from the right ones.
    let q = store.quarantined();
    assert_eq!(q.len(), 1, "quarantine: {q:?}");
    let bad = std::fs::read(&q[0]).unwrap();
    assert_eq!(bad.len(), data.len());
    let diffs: Vec<usize> = (0..bad.len()).filter(|&i| bad[i] != data[i]).collect();
    assert_eq!(diffs, [flip_at as usize]);

    // The failure is visible.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut state = String::new();
    while Instant::now() < deadline {
        state = getxattr(&path, "user.modelfs.state").unwrap();
        if state == "failed" {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(state, "failed");
    let err = getxattr(&path, "user.modelfs.error").unwrap();
    assert!(
        err.contains("SHA-256 mismatch"),
        "user.modelfs.error: {err}"
    );
    assert!(
        err.contains(&m.blob.to_hex()),
        "names the expected digest: {err}"
    );
    let log = mount.log();
    assert_eq!(
        failure_lines(&log, "m", "SHA-256 mismatch"),
        1,
        "one log line (not one per waiter) names the model and the reason:\n{log}"
    );

    // Fix the origin: opens still fail at once during the back-off after
    // wrong bytes, without a request; `modelfs pull` fetches now, and then
    // the file reads right.
    origin.set_persistent_fault("m.gguf", None);
    assert_eq!(open_and_read(&path).unwrap_err(), libc::EIO);
    assert_eq!(
        origin.stats("m.gguf").gets,
        1,
        "no download during the back-off"
    );
    let out = store
        .cli(origin.ca_pem_path())
        .args(["pull", "m"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", crate::common::output_text(&out));
    assert!(
        open_and_read(&path).unwrap() == data,
        "after the fix the file reads right"
    );
    assert_eq!(origin.stats("m.gguf").gets, 2);
    assert_eq!(getxattr(&path, "user.modelfs.state").unwrap(), "present");
    assert_eq!(
        getxattr(&path, "user.modelfs.error").unwrap_err(),
        libc::ENODATA
    );
    store.assert_consistent();
}

#[test]
fn a_failed_fetch_fails_the_open_with_eio_and_the_next_open_after_the_origin_is_fixed_succeeds() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(MIB, 5);
    // The manifest points at a file the origin does not have (404).
    store.write_manifest("m", &origin.url("m.gguf"), &data);
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let path = mount.path("m.gguf");

    assert_eq!(open_and_read(&path).unwrap_err(), libc::EIO);
    assert_eq!(origin.stats("m.gguf").statuses, [404]);
    assert_eq!(getxattr(&path, "user.modelfs.state").unwrap(), "failed");
    let err = getxattr(&path, "user.modelfs.error").unwrap();
    assert!(err.contains("404"), "user.modelfs.error: {err}");
    assert_eq!(
        failure_lines(&mount.log(), "m", "404"),
        1,
        "{}",
        mount.log()
    );
    // Trying again without a fix fails again (and asks again).
    assert_eq!(open_and_read(&path).unwrap_err(), libc::EIO);
    assert_eq!(origin.stats("m.gguf").gets, 2);

    origin.put("m.gguf", data.clone());
    assert!(open_and_read(&path).unwrap() == data);
    assert_eq!(origin.stats("m.gguf").gets, 3);
    assert_eq!(getxattr(&path, "user.modelfs.state").unwrap(), "present");
    store.assert_consistent();
}

/// A small tmpfs mounted over a directory, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "modelfs-test"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount a tmpfs (this test runs as root)");
        Tmpfs(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_the_open_with_enospc_and_after_space_is_freed_the_next_open_succeeds() {
    let origin = Origin::start();
    let store = TestStore::new();
    let disk = Tmpfs::mount(&store.root, "1m");
    modelfs::store::Store::create(&store.root).unwrap();
    let data = random_bytes(4 * MIB, 11);
    store.add_pending("m", &origin, &data);
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let path = mount.path("m.gguf");

    assert_eq!(open_and_read(&path).unwrap_err(), libc::ENOSPC);
    assert_eq!(getxattr(&path, "user.modelfs.state").unwrap(), "failed");
    let err = getxattr(&path, "user.modelfs.error").unwrap();
    assert!(err.contains("disk space"), "user.modelfs.error: {err}");
    assert_eq!(
        failure_lines(&mount.log(), "m", "disk space"),
        1,
        "{}",
        mount.log()
    );

    disk.resize("16m");
    assert!(open_and_read(&path).unwrap() == data);
    assert_eq!(origin.stats("m.gguf").gets, 1);
    store.assert_consistent();
    drop(mount);
}

// ---------------------------------------------------------------------------
// Opens that do not wait, or need no download
// ---------------------------------------------------------------------------

#[test]
fn an_o_nonblock_open_of_a_pending_entry_fails_with_eagain_at_once_and_starts_the_fetch() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(4 * MIB, 6);
    let m = store.add_pending("m", &origin, &data);
    // ~8 s: an open that waited would be obvious.
    origin.set_persistent_fault("m.gguf", Some(Fault::Throttle(500_000)));
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let path = mount.path("m.gguf");

    let t = Instant::now();
    let r = open_flags(&path, libc::O_RDONLY | libc::O_NONBLOCK);
    let took = t.elapsed();
    assert_eq!(r.unwrap_err(), libc::EAGAIN);
    assert!(
        took < Duration::from_secs(2),
        "EAGAIN came at once ({took:?})"
    );
    assert!(
        wait_until(Duration::from_secs(5), || origin.stats_now("m.gguf").gets
            == 1),
        "the fetch started in the background"
    );
    assert_eq!(getxattr(&path, "user.modelfs.state").unwrap(), "fetching");
    // Another non-blocking open joins rather than starting a second fetch.
    assert_eq!(
        open_flags(&path, libc::O_RDONLY | libc::O_NONBLOCK).unwrap_err(),
        libc::EAGAIN
    );
    assert!(
        wait_until(Duration::from_secs(30), || is_present(
            &store.store(),
            &m.blob
        )),
        "the blob arrives without any blocking open"
    );
    // Now even a non-blocking open succeeds, without the network.
    let mut f = open_flags(&path, libc::O_RDONLY | libc::O_NONBLOCK).unwrap();
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    assert!(v == data);
    assert_eq!(origin.stats("m.gguf").gets, 1);
    store.assert_consistent();
}

#[test]
fn a_present_blob_opens_at_once_even_with_the_origin_gone() {
    let origin = Origin::start();
    let ca = origin.ca().clone();
    let store = TestStore::new();
    let data = random_bytes(3 * MIB, 7);
    store.put_blob(&data);
    store.write_manifest("m", &origin.url("m.gguf"), &data);
    drop(origin); // connections to it are refused from now on
    let mount = Mount::start(&store, ca.pem_path(), &[]);
    let path = mount.path("m.gguf");

    let t = Instant::now();
    let f = open_flags(&path, libc::O_RDONLY).unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "opened at once");
    drop(f);
    assert!(open_and_read(&path).unwrap() == data);
    assert_eq!(getxattr(&path, "user.modelfs.state").unwrap(), "present");
}

// ---------------------------------------------------------------------------
// Other producers
// ---------------------------------------------------------------------------

#[test]
fn an_open_waits_for_another_process_holding_the_model_lock_without_blocking_the_mount() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(2 * MIB, 8);
    let m = store.add_pending("m", &origin, &data);
    let other = random_bytes(1000, 9);
    store.put_blob(&other);
    store.write_manifest("other", &origin.url("other.gguf"), &other);
    let lock_path = store.store().lock_path(&ModelName::parse("m").unwrap());
    let held = modelfs::store::lock::try_lock(&lock_path)
        .unwrap()
        .expect("the lock is free");

    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let path = mount.path("m.gguf");
    let mut reader = sha256sum(&path);
    assert!(
        wait_until(Duration::from_secs(10), || in_open_syscall(reader.id())),
        "the reader waits in open"
    );

    // The mount keeps answering while the open waits for the lock.
    let bound = Duration::from_secs(2);
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let t = Instant::now();
        let md = std::fs::metadata(&path).unwrap();
        assert_eq!(md.len(), data.len() as u64);
        let out = Command::new("ls")
            .arg("-l")
            .arg(&mount.mountpoint)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("m.gguf"));
        assert!(open_and_read(&mount.path("other.gguf")).unwrap() == other);
        assert!(t.elapsed() < bound, "metadata took {:?}", t.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(reader.try_wait().unwrap().is_none(), "the open still waits");
    assert_eq!(getxattr(&path, "user.modelfs.state").unwrap(), "fetching");

    // The other producer finishes: the blob is placed, the lock released.
    store.put_blob(&data);
    drop(held);
    assert_eq!(digest_of(reader), Ok(hex(&data)));
    assert_eq!(origin.stats("m.gguf").gets, 0, "the produced blob was used");
    assert!(is_present(&store.store(), &m.blob));
    store.assert_consistent();
}

// ---------------------------------------------------------------------------
// Shutdown mid-download
// ---------------------------------------------------------------------------

#[test]
fn sigterm_during_a_download_unmounts_cleanly_and_a_new_mount_resumes_with_a_range_request() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(4 * MIB, 10);
    let m = store.add_pending("m", &origin, &data);
    origin.set_persistent_fault("m.gguf", Some(Fault::Throttle(250_000)));
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let mountpoint = mount.mountpoint.clone();
    let mut reader = sha256sum(&mount.path("m.gguf"));
    assert!(
        wait_until(Duration::from_secs(15), || partial_len(
            &store.store(),
            &m.blob
        ) >= 512 * 1024),
        "the download is under way"
    );

    let status = mount.stop();
    assert!(
        status.success(),
        "the mount exits cleanly on SIGTERM: {status}"
    );
    assert!(!crate::common::is_mounted(&mountpoint), "and is unmounted");
    let (st, _) = reaped_within(&mut reader, Duration::from_secs(5))
        .expect("the waiting reader is released by the shutdown");
    assert!(!st.success());

    let kept = partial_len(&store.store(), &m.blob);
    assert!(
        kept >= 512 * 1024,
        "a resumable partial is left ({kept} bytes)"
    );
    assert!(kept < data.len() as u64);
    assert!(!is_present(&store.store(), &m.blob));

    origin.set_persistent_fault("m.gguf", None);
    let again = Mount::start(&store, origin.ca_pem_path(), &[]);
    assert!(open_and_read(&again.path("m.gguf")).unwrap() == data);
    let stats = origin.stats("m.gguf");
    assert_eq!(stats.gets, 2, "{stats:?}");
    assert_eq!(
        stats.range_headers.last().cloned().flatten(),
        Some(format!("bytes={kept}-")),
        "the new mount resumed where the old one stopped"
    );
    store.assert_consistent();
}

/// The FUSE connection number of the mount at `mp` (its device minor, the
/// name of its folder in /sys/fs/fuse/connections), from mountinfo.
fn fuse_connection(mp: &Path) -> String {
    let want = mp.to_string_lossy().into_owned();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .expect("the mount is in mountinfo");
    let dev = line.split(' ').nth(2).unwrap();
    dev.split(':').nth(1).unwrap().to_string()
}

/// The fusectl filesystem at /sys/fs/fuse/connections, mounted for the
/// test when the host has not (systemd hosts have), and then unmounted.
struct Fusectl {
    mounted_here: bool,
}

impl Fusectl {
    const AT: &str = "/sys/fs/fuse/connections";

    fn mount() -> Self {
        let present = std::fs::read_dir(Self::AT).is_ok_and(|mut d| d.next().is_some());
        if !present {
            let st = Command::new("mount")
                .args(["-t", "fusectl", "fusectl", Self::AT])
                .status()
                .unwrap();
            assert!(st.success(), "this test needs fusectl at {}", Self::AT);
        }
        Self {
            mounted_here: !present,
        }
    }
}

impl Drop for Fusectl {
    fn drop(&mut self) {
        if self.mounted_here {
            let _ = Command::new("umount").arg(Self::AT).status();
        }
    }
}

/// An aborted connection (the README's cure for a stuck daemon) with an
/// open waiting: the daemon answers that open into a connection that is
/// gone, which fuser reports as `ERROR … Failed to send FUSE reply`. The
/// waiter got its error from the kernel already; nothing failed in modelfs.
#[test]
fn an_aborted_connection_with_a_waiting_open_logs_no_error_at_the_default_level() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(2 * MIB, 11);
    let m = store.add_pending("m", &origin, &data);
    origin.set_persistent_fault(
        "m.gguf",
        Some(Fault::StallAt(256 * 1024, Duration::from_secs(20))),
    );
    let mount = Mount::start_with(&store, origin.ca_pem_path(), &["stall_timeout=60"], |c| {
        c.env_remove("RUST_LOG");
    });
    let mut reader = sha256sum(&mount.path("m.gguf"));
    assert!(
        wait_until(Duration::from_secs(10), || partial_len(
            &store.store(),
            &m.blob
        ) >= 256 * 1024
            && in_open_syscall(reader.id())),
        "the download stalls and the reader waits in open"
    );
    let conn = fuse_connection(&mount.mountpoint);
    let _fusectl = Fusectl::mount();
    std::fs::write(format!("/sys/fs/fuse/connections/{conn}/abort"), "1").unwrap();
    let (st, _) = reaped_within(&mut reader, Duration::from_secs(5))
        .expect("the abort ends the waiting open");
    assert!(!st.success());
    // The session ends, the daemon stops and fails the open it still
    // holds: its answer goes into the aborted connection.
    let pid = mount.pid();
    let exited = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    };
    assert!(
        wait_until(Duration::from_secs(15), exited),
        "the daemon exits"
    );
    let log = mount.log();
    assert!(log.contains("was unmounted"), "{log}");
    assert!(!log.contains("ERROR"), "no error was logged:\n{log}");
}

#[test]
fn a_daemon_stopped_right_after_a_first_open_publishes_the_verified_blob_before_it_exits() {
    let origin = Origin::start();
    let store = TestStore::new();
    // Large enough that making it durable takes a while after the open
    // was answered at verification.
    let data = random_bytes(48 * MIB, 13);
    let m = store.add_pending("m", &origin, &data);
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);

    drop(File::open(mount.path("m.gguf")).expect("first open"));
    let status = mount.stop();

    assert!(status.success(), "clean exit: {status}");
    assert!(
        is_present(&store.store(), &m.blob),
        "the verified bytes were published before the daemon exited"
    );
    assert_eq!(partial_len(&store.store(), &m.blob), 0, "no partial left");
    assert!(std::fs::read(store.store().blob_path(&m.blob)).unwrap() == data);
    store.assert_consistent();
}

#[test]
fn an_external_umount_during_a_background_download_ends_the_daemon_and_keeps_the_partial() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(4 * MIB, 12);
    let m = store.add_pending("m", &origin, &data);
    origin.set_persistent_fault("m.gguf", Some(Fault::Throttle(250_000)));
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let mountpoint = mount.mountpoint.clone();
    assert_eq!(
        open_flags(&mount.path("m.gguf"), libc::O_RDONLY | libc::O_NONBLOCK).unwrap_err(),
        libc::EAGAIN
    );
    assert!(
        wait_until(Duration::from_secs(15), || partial_len(
            &store.store(),
            &m.blob
        ) >= 256 * 1024),
        "the background download is under way"
    );

    let st = Command::new("umount").arg(&mountpoint).status().unwrap();
    assert!(st.success(), "umount");
    assert!(
        wait_until(Duration::from_secs(10), || mount
            .log()
            .contains("was unmounted")),
        "the daemon noticed:\n{}",
        mount.log()
    );
    let status = mount.stop();
    assert!(
        status.success(),
        "the daemon exits cleanly after umount: {status}"
    );
    assert!(!crate::common::is_mounted(&mountpoint));
    let kept = partial_len(&store.store(), &m.blob);
    assert!(
        kept >= 256 * 1024 && kept < data.len() as u64,
        "partial of {kept} bytes kept"
    );

    origin.set_persistent_fault("m.gguf", None);
    let again = Mount::start(&store, origin.ca_pem_path(), &[]);
    assert!(open_and_read(&again.path("m.gguf")).unwrap() == data);
    let stats = origin.stats("m.gguf");
    assert_eq!(
        stats.range_headers.last().cloned().flatten(),
        Some(format!("bytes={kept}-"))
    );
    store.assert_consistent();
}

#[test]
fn sigterm_with_a_file_still_open_detaches_the_mount_and_exits_cleanly() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(MIB, 13);
    store.put_blob(&data);
    store.write_manifest("m", &origin.url("m.gguf"), &data);
    let mount = Mount::start(&store, origin.ca_pem_path(), &["passthrough=off"]);
    let mountpoint = mount.mountpoint.clone();
    let held = File::open(mount.path("m.gguf")).unwrap();

    let t = Instant::now();
    let status = mount.stop();
    assert!(status.success(), "exit status {status}");
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        !crate::common::is_mounted(&mountpoint),
        "detached though busy"
    );
    drop(held);
}
