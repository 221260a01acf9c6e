//! Issue 6, promises 6 and 8: concurrency is safe, and permissions hold.
//!
//! Two mounts of one store, `modelfs pull` and `modelfs gc` in a loop all
//! run while opens wait: every blob is downloaded exactly once, every
//! waiter gets the right bytes in bounded time, and gc deletes neither a
//! blob a manifest names nor a partial that a producer is writing (while it
//! does delete what is really unreferenced, so it is seen to work).
//!
//! Every file and folder the daemon and the CLI create in a store is
//! writable by its owner only, under umask 022 and under umask 000; the
//! mount is read-only for every user, and other users are let in only with
//! `allow_other`.

use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::sys::open_and_read;
use crate::common::waiter::Waiter;
use crate::common::{
    Fault, MIB, Mount, Origin, TestStore, is_present, output_text, random_bytes, wait_until,
};
use modelfs::digest::Sha256;
use modelfs::store::BlobState;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// Promise 6: two mounts, pull and gc at once
// ---------------------------------------------------------------------------

#[test]
fn two_mounts_a_pull_and_gc_in_a_loop_download_each_blob_once_and_gc_takes_only_garbage() {
    let origin = Origin::start();
    let store = TestStore::new();
    let names = ["a", "b", "c"];
    let datas: Vec<Vec<u8>> = (0..3).map(|i| random_bytes(2 * MIB, 60 + i)).collect();
    for (name, data) in names.iter().zip(&datas) {
        store.add_pending(name, &origin, data);
        // About two seconds each: everything below overlaps the downloads.
        origin.set_persistent_fault(&format!("{name}.gguf"), Some(Fault::Throttle(MIB as u64)));
    }
    // Garbage gc should take: an old unreferenced blob.
    let orphan = random_bytes(50_000, 63);
    let orphan_d = store.put_blob(&orphan);
    // A model whose manifest is deleted while a pull downloads it: its
    // partial is no longer referenced, but it is being written, so gc must
    // keep it.
    let doomed = random_bytes(2 * MIB, 64);
    store.add_pending("doomed", &origin, &doomed);
    origin.set_persistent_fault("doomed.gguf", Some(Fault::Throttle(300_000)));
    let ca = origin.ca_pem_path();
    let spawn_pull = |args: &[&str]| {
        store
            .cli(ca)
            .arg("pull")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let doomed_pull = spawn_pull(&["doomed"]);
    let dd = Sha256::of(&doomed);
    assert!(
        wait_until(Duration::from_secs(10), || matches!(
            store.store().blob_state(&dd),
            BlobState::Partial(n) if n > 0
        )),
        "the doomed download started"
    );
    // (`modelfs rm` would wait for the pull's lock; a user or another tool
    // deleting the file does not.)
    fs::remove_file(store.root.join("manifests/doomed.json")).unwrap();

    let one = Mount::start(&store, ca, &[]);
    let two = Mount::start(&store, ca, &["passthrough=off"]);
    let started = Instant::now();
    let mut ws = Vec::new();
    for (i, name) in names.iter().enumerate() {
        for mount in [&one, &two] {
            for _ in 0..3 {
                ws.push((i, Waiter::spawn(&mount.path(&format!("{name}.gguf")))));
            }
        }
    }
    let pull = spawn_pull(&names);
    // gc, again and again, with no grace for fresh blobs.
    let stop = Arc::new(AtomicBool::new(false));
    let gc_loop = {
        let (stop, mut cmd) = (stop.clone(), store.cli(ca));
        cmd.arg("gc").env("MODELFS_GC_GRACE_SECS", "0");
        std::thread::spawn(move || {
            let mut outs = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let out = cmd.output().unwrap();
                assert!(out.status.success(), "gc: {}", output_text(&out));
                outs.push(output_text(&out));
                std::thread::sleep(Duration::from_millis(150));
            }
            outs
        })
    };

    let bound = Duration::from_secs(60);
    let mut slowest = Duration::ZERO;
    for (i, w) in ws {
        let (r, took) = w.join();
        assert!(
            matches!(&r, Ok(v) if *v == datas[i]),
            "waiter of {}: {:?}",
            names[i],
            r.err()
        );
        slowest = slowest.max(took);
    }
    let pulled = pull.wait_with_output().unwrap();
    assert!(pulled.status.success(), "pull: {}", output_text(&pulled));
    let doomed_out = doomed_pull.wait_with_output().unwrap();
    stop.store(true, Ordering::Relaxed);
    let gc_runs = gc_loop.join().unwrap();
    eprintln!(
        "18 waiters on 2 mounts + pull + {} gc runs: all done in {:?}, slowest open {slowest:?}",
        gc_runs.len(),
        started.elapsed()
    );
    assert!(slowest < bound, "no waiter hangs: {slowest:?}");
    assert!(
        doomed_out.status.success(),
        "gc left the partial that pull was writing: {}",
        output_text(&doomed_out)
    );
    let gc_all = gc_runs.join("\n");
    assert!(gc_runs.len() >= 3, "gc ran while the opens waited");
    assert!(
        gc_all.contains(&format!("deleting blob {orphan_d}")),
        "gc did collect real garbage:\n{gc_all}"
    );
    assert!(
        gc_all.contains("a download is writing it"),
        "gc saw the doomed partial being written and kept it:\n{gc_all}"
    );
    for (name, data) in names.iter().zip(&datas) {
        let d = Sha256::of(data);
        assert!(
            !gc_all.contains(&d.to_string()) && !gc_all.contains(&format!("partial {}", d.short())),
            "gc never touched {name}'s blob or partial:\n{gc_all}"
        );
        assert!(is_present(&store.store(), &d), "{name} is present");
        let stats = origin.stats(&format!("{name}.gguf"));
        assert_eq!(stats.gets, 1, "{name}: exactly one download: {stats:?}");
        assert_eq!(stats.bytes_sent, data.len() as u64);
        // Both mounts read it again without the network.
        assert!(open_and_read(&one.path(&format!("{name}.gguf"))).unwrap() == *data);
        assert!(open_and_read(&two.path(&format!("{name}.gguf"))).unwrap() == *data);
    }
    assert_eq!(origin.stats("doomed.gguf").gets, 1);
    assert!(!is_present(&store.store(), &orphan_d));
    for name in names {
        assert_eq!(origin.stats(&format!("{name}.gguf")).gets, 1);
    }
    store.assert_consistent();
}

// ---------------------------------------------------------------------------
// Promise 8: permissions
// ---------------------------------------------------------------------------

/// Runs the child with this umask.
fn with_umask(cmd: &mut Command, mask: libc::mode_t) -> &mut Command {
    // SAFETY: umask(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(mask);
            Ok(())
        })
    }
}

/// Every path under `root` (not `root` itself) with its mode.
fn modes_under(root: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let md = fs::symlink_metadata(e.path()).unwrap();
            if md.is_dir() {
                stack.push(e.path());
            }
            out.push((
                e.path().strip_prefix(root).unwrap().to_path_buf(),
                md.permissions().mode() & 0o7777,
            ));
        }
    }
    out.sort();
    out
}

/// Lets the daemon and the CLI build a store under `mask` (the root
/// folder is the test's), with every kind of file the layout has, then
/// checks nothing is writable by group or others.
fn store_files_are_owner_writable_only(mask: libc::mode_t) {
    let origin = Origin::start();
    let store = TestStore::new();
    for top in ["manifests", "locks", "blobs"] {
        fs::remove_dir_all(store.root.join(top)).unwrap();
    }
    let ca = origin.ca_pem_path();
    let good = random_bytes(200_000, 70);
    origin.put("good.gguf", good.clone());
    let bad = random_bytes(200_000, 71);
    origin.put("bad.gguf", bad.clone());
    origin.set_persistent_fault("bad.gguf", Some(Fault::FlipByte(3)));
    let slow = random_bytes(2 * MIB, 72);
    origin.put("slow.gguf", slow.clone());
    origin.set_persistent_fault("slow.gguf", Some(Fault::Throttle(256 * 1024)));
    for (name, data) in [("good", &good), ("bad", &bad), ("slow", &slow)] {
        let out = with_umask(store.cli(ca).arg("add").arg(name), mask)
            .args(["--url", &origin.url(&format!("{name}.gguf"))])
            .args(["--sha256", &Sha256::of(data).to_hex()])
            .args(["--size", &data.len().to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "add {name}: {}", output_text(&out));
    }
    let out = with_umask(store.cli(ca).args(["pull", "good"]), mask)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let mount = Mount::start_with(&store, ca, &[], |c| {
        with_umask(c, mask);
    });
    assert_eq!(
        open_and_read(&mount.path("bad.gguf")).unwrap_err(),
        libc::EIO
    );
    assert_eq!(
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(mount.path("slow.gguf"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EAGAIN),
        "the slow download starts in the background"
    );
    let sd = Sha256::of(&slow);
    assert!(
        wait_until(Duration::from_secs(10), || matches!(
            store.store().blob_state(&sd),
            BlobState::Partial(n) if n > 0
        )),
        "a partial download exists"
    );

    let modes = modes_under(&store.root);
    let kinds = |needle: &str| {
        modes
            .iter()
            .any(|(p, _)| p.to_string_lossy().contains(needle))
    };
    for needle in [
        "manifests/good.json",
        "locks/good.lock",
        "locks/quarantine/",
        "/data",
        ".partial-",
        "modelfs.tmp",
    ] {
        assert!(kinds(needle), "the store has a {needle}: {modes:?}");
    }
    let writable: Vec<_> = modes.iter().filter(|(_, m)| m & 0o022 != 0).collect();
    assert!(
        writable.is_empty(),
        "umask {mask:03o}: writable by group or others: {writable:?}"
    );
    eprintln!("umask {mask:03o}: {modes:?}");
    drop(mount);
}

#[test]
fn every_file_the_daemon_and_cli_create_in_a_store_is_writable_by_its_owner_only_under_umask_022() {
    store_files_are_owner_writable_only(0o022);
}

#[test]
fn every_file_the_daemon_and_cli_create_in_a_store_is_writable_by_its_owner_only_under_umask_000() {
    store_files_are_owner_writable_only(0o000);
}

/// The options `/proc/mounts` shows for a mountpoint.
fn mount_options(mountpoint: &Path) -> Vec<String> {
    let want = mountpoint.canonicalize().unwrap();
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == want.to_str())
        .expect("the mount is in /proc/mounts");
    line.split(' ')
        .nth(3)
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect()
}

/// Runs a shell command as user nobody; its exit status and output.
fn as_nobody(script: &str) -> (bool, String) {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv (util-linux)");
    (out.status.success(), output_text(&out))
}

#[test]
fn the_mount_is_read_only_for_everyone_and_lets_other_users_in_only_with_allow_other() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(100_000, 73);
    store.put_blob(&data);
    store.write_manifest("m", &origin.url("m.gguf"), &data);
    let ca = origin.ca_pem_path();

    let private = Mount::start(&store, ca, &[]);
    // The test's temp folders are 0700: open the way to the mountpoint.
    fs::set_permissions(
        private.mountpoint.parent().unwrap(),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let opts = mount_options(&private.mountpoint);
    assert!(
        ["ro", "nosuid", "nodev"]
            .iter()
            .all(|o| opts.contains(&o.to_string())),
        "{opts:?}"
    );
    assert!(!opts.contains(&"allow_other".to_string()), "{opts:?}");
    let file = private.path("m.gguf");
    let (ok, out) = as_nobody(&format!("cat '{}' > /dev/null", file.display()));
    assert!(!ok, "another user cannot read without allow_other: {out}");
    assert!(out.contains("Permission denied"), "{out}");
    let (ok, out) = as_nobody(&format!("ls '{}'", private.mountpoint.display()));
    assert!(!ok, "nor list: {out}");

    let shared = Mount::start(&store, ca, &["allow_other"]);
    fs::set_permissions(
        shared.mountpoint.parent().unwrap(),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    assert!(mount_options(&shared.mountpoint).contains(&"allow_other".to_string()));
    let file = shared.path("m.gguf");
    let (ok, out) = as_nobody(&format!("sha256sum '{}'", file.display()));
    assert!(ok, "another user reads with allow_other: {out}");
    assert!(out.contains(&Sha256::of(&data).to_hex()), "{out}");
    let md = fs::metadata(&file).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o444);
    assert_eq!(
        fs::metadata(&shared.mountpoint)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o555
    );
    let mp = shared.mountpoint.display().to_string();
    for (what, script) in [
        ("append", format!("echo x >> '{mp}/m.gguf'")),
        ("truncate", format!("truncate -s 0 '{mp}/m.gguf'")),
        ("create", format!("touch '{mp}/new.gguf'")),
        ("remove", format!("rm -f '{mp}/m.gguf'")),
        ("rename", format!("mv '{mp}/m.gguf' '{mp}/x.gguf'")),
        ("chmod", format!("chmod 666 '{mp}/m.gguf'")),
        ("mkdir", format!("mkdir '{mp}/d'")),
    ] {
        let (ok, out) = as_nobody(&script);
        assert!(!ok, "nobody: {what} must fail: {out}");
        let root = Command::new("sh").args(["-c", &script]).output().unwrap();
        assert!(!root.status.success(), "root: {what} must fail");
        let err = String::from_utf8_lossy(&root.stderr);
        assert!(err.contains("Read-only file system"), "root: {what}: {err}");
    }
    assert!(
        open_and_read(&file).unwrap() == data,
        "and the file is intact"
    );
    assert_eq!(fs::metadata(&file).unwrap().ino(), md.ino());
}
