//! Issue 10, promises 5 and 7: hostile files in the store never hang or
//! exhaust anything, and the store sets itself up and cannot be mounted on
//! itself.
//!
//! FIFOs, devices, a symlink to `/dev/zero` and a 2 GiB sparse file are
//! planted where the store keeps manifests, locks, blobs and quarantined
//! files; the mount and every command must go on (each refusal with a log
//! line), in bounded time and memory: each command run here must end
//! within [`LIVENESS`], a generous bound, not a performance threshold.
//! Every figure a test measures is printed (`--nocapture`).

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::sys::open_and_read;
use crate::common::{
    Fault, Mount, Origin, TestStore, gguf_bytes, is_mounted, random_bytes, wait_until,
};
use modelfs::digest::Sha256;
use modelfs::store::{ModelName, lock};

/// How long any one command may take before the test calls it hung.
const LIVENESS: Duration = Duration::from_secs(20);

/// A command that ended: exit code, what it printed, how long it took and
/// its peak memory (an upper bound: the kernel counts the memory of the
/// test process it was spawned from, too).
struct Ran {
    code: i32,
    text: String,
    secs: f64,
    max_rss_kib: i64,
}

/// Runs `cmd` to its end, failing the test if it is still running after
/// [`LIVENESS`] (it is killed then). Output goes to files, so a chatty
/// command cannot block on a full pipe.
fn run_bounded(cmd: &mut Command, what: &str) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let started = Instant::now();
    // Reaped below with wait4(2), which also gives its peak memory.
    #[allow(clippy::zombie_processes)]
    let child = cmd
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let (mut status, mut ru) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    loop {
        // SAFETY: waiting for our own child with valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            break;
        }
        if started.elapsed() > LIVENESS {
            // SAFETY: killing our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
            panic!(
                "{what}: still running after {LIVENESS:?} (killed):\n{}{}",
                fs::read_to_string(&out).unwrap_or_default(),
                fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Ran {
        code,
        text: format!(
            "{}{}",
            fs::read_to_string(&out).unwrap_or_default(),
            fs::read_to_string(&err).unwrap_or_default()
        ),
        secs: started.elapsed().as_secs_f64(),
        max_rss_kib: ru.ru_maxrss,
    }
}

fn c_path(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn mkfifo(p: &Path) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    // SAFETY: a valid C path.
    assert_eq!(
        unsafe { libc::mkfifo(c_path(p).as_ptr(), 0o644) },
        0,
        "{p:?}"
    );
}

/// A character device node with the numbers of `/dev/null` (1, 3) or
/// `/dev/zero` (1, 5).
fn mkchar(p: &Path, minor: u32) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    // SAFETY: a valid C path; we are root.
    let rc = unsafe {
        libc::mknod(
            c_path(p).as_ptr(),
            libc::S_IFCHR | 0o644,
            libc::makedev(1, minor),
        )
    };
    assert_eq!(rc, 0, "mknod {p:?} (the fault suites run as root)");
}

fn is_special(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

fn import_files(store: &TestStore) -> Vec<String> {
    fs::read_dir(store.root.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with(".import-"))
        .collect()
}

fn lock_held(store: &TestStore, name: &str) -> bool {
    let p = store.store().lock_path(&ModelName::parse(name).unwrap());
    lock::is_locked(&p).unwrap_or(false)
}

// ---------------------------------------------------------------------------
// Promise 5: a manifest that is a FIFO, a link to /dev/zero, a sparse 2 GiB
// file
// ---------------------------------------------------------------------------

/// Plants `kind` as `manifests/m.json`.
fn plant_manifest(store: &TestStore, kind: &str) {
    let p = store.root.join("manifests/m.json");
    let _ = fs::remove_file(&p);
    match kind {
        "FIFO" => mkfifo(&p),
        "link to /dev/zero" => std::os::unix::fs::symlink("/dev/zero", &p).unwrap(),
        "sparse 2 GiB file" => fs::File::create(&p).unwrap().set_len(2 << 30).unwrap(),
        _ => unreachable!(),
    }
}

#[test]
fn a_fifo_a_link_to_dev_zero_or_a_sparse_2_gib_manifest_never_hangs_a_command_or_fills_memory() {
    // Each command's peak RSS is measured: not from the suite's process.
    if crate::common::rerun_alone(
        "fault_store_files::a_fifo_a_link_to_dev_zero_or_a_sparse_2_gib_manifest_never_hangs_a_command_or_fills_memory",
    ) {
        return;
    }
    let origin = Origin::start();
    let store = TestStore::new();
    let good = random_bytes(100_000, 1);
    store.add_pending("good", &origin, &good);
    let mine = store.root.parent().unwrap().join("mine.gguf");
    fs::write(&mine, gguf_bytes(50_000, 2)).unwrap();
    let hex = Sha256::of(b"x").to_hex();
    let url = origin.url("x.gguf");
    let mut report = Vec::new();
    for kind in ["FIFO", "link to /dev/zero", "sparse 2 GiB file"] {
        plant_manifest(&store, kind);
        let commands: Vec<(&str, Vec<&str>, bool)> = vec![
            ("gc", vec!["gc"], true),
            ("ls", vec!["ls", "--json"], true),
            ("status", vec!["status"], true),
            ("verify", vec!["verify"], true),
            ("verify m", vec!["verify", "m"], false),
            ("pull m", vec!["pull", "m"], false),
            (
                "add m",
                vec!["add", "m", "--url", &url, "--sha256", &hex, "--size", "1"],
                false,
            ),
            (
                "import",
                vec!["import", mine.to_str().unwrap(), "--name", "m"],
                false,
            ),
        ];
        for (what, args, succeeds) in commands {
            let r = run_bounded(
                store.cli(origin.ca_pem_path()).args(&args),
                &format!("{what} with a {kind} as manifest"),
            );
            report.push(format!(
                "{kind}: {what} exit {} in {:.2} s, peak RSS {} MiB",
                r.code,
                r.secs,
                r.max_rss_kib / 1024
            ));
            assert_eq!(r.code == 0, succeeds, "{kind}: {what}: {}", r.text);
            assert!(!r.text.contains("panicked"), "{kind}: {what}: {}", r.text);
            assert!(
                r.max_rss_kib < 200 * 1024,
                "{kind}: {what} used {} KiB",
                r.max_rss_kib
            );
            if !succeeds {
                assert!(
                    r.text.contains("m.json"),
                    "{kind}: {what} names the file: {}",
                    r.text
                );
            }
            assert!(!lock_held(&store, "m"), "{kind}: {what} let go of the lock");
            assert!(
                import_files(&store).is_empty(),
                "{kind}: {what} left {:?}",
                import_files(&store)
            );
        }
        assert!(
            fs::symlink_metadata(store.root.join("manifests/m.json")).is_ok(),
            "{kind}: left where it is"
        );
    }
    for line in &report {
        eprintln!("{line}");
    }
    // The good model was never disturbed.
    let r = run_bounded(
        store.cli(origin.ca_pem_path()).args(["pull", "good"]),
        "pull good",
    );
    assert_eq!(r.code, 0, "{}", r.text);
}

#[test]
fn a_fifo_swapped_in_for_a_manifest_never_stops_the_watcher_and_a_fifo_left_there_is_logged_once() {
    let origin = Origin::start();
    let store = TestStore::new();
    let good = random_bytes(100_000, 3);
    store.put_blob(&good);
    store.write_manifest("good", &origin.url("good.gguf"), &good);
    // Many manifests, so that each pass of the watcher has many chances to
    // stat one while it is a regular file and open it once it is a FIFO.
    const SWAPPED: usize = 40;
    let names: Vec<String> = (0..SWAPPED).map(|i| format!("swap{i:02}")).collect();
    for (i, n) in names.iter().enumerate() {
        store.write_manifest(n, &origin.url("swap.gguf"), &random_bytes(100, i as u64));
    }
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let dir = store.root.join("manifests");
    let texts: Vec<Vec<u8>> = names
        .iter()
        .map(|n| fs::read(dir.join(format!("{n}.json"))).unwrap())
        .collect();

    // Swap a FIFO and the manifest in and out of each name as fast as
    // renames go, for 3 s.
    let (fifo, real) = (dir.join(".fifo"), dir.join(".real"));
    let started = Instant::now();
    let mut swaps = 0u64;
    while started.elapsed() < Duration::from_secs(3) {
        for (n, text) in names.iter().zip(&texts) {
            let target = dir.join(format!("{n}.json"));
            mkfifo(&fifo);
            fs::rename(&fifo, &target).unwrap();
            fs::write(&real, text).unwrap();
            fs::rename(&real, &target).unwrap();
            swaps += 1;
        }
    }
    // Leave a FIFO in place of each for good.
    for n in &names {
        mkfifo(&fifo);
        fs::rename(&fifo, dir.join(format!("{n}.json"))).unwrap();
    }

    // The watcher still sees new models.
    let late = random_bytes(1000, 5);
    store.write_manifest("late", &origin.url("late.gguf"), &late);
    let seen = Instant::now();
    assert!(
        wait_until(LIVENESS, || mount.path("late.gguf").exists()),
        "a model added after the swaps shows up:\n{}",
        mount.log()
    );
    let shown_after = seen.elapsed();
    assert!(!mount.path("swap00.gguf").exists(), "a FIFO is not a model");
    assert!(open_and_read(&mount.path("good.gguf")).unwrap() == good);

    // The FIFO left there: one line, however many refreshes pass.
    let count = |log: &str| {
        log.lines()
            .filter(|l| l.contains("swap00.json") && l.contains("FIFO"))
            .count()
    };
    std::thread::sleep(Duration::from_secs(2));
    let first = count(&mount.log());
    std::thread::sleep(Duration::from_secs(3));
    let log = mount.log();
    assert!(first >= 1, "the FIFO is logged:\n{log}");
    assert_eq!(count(&log), first, "and not again on every refresh:\n{log}");
    eprintln!(
        "{swaps} swaps over {SWAPPED} manifests in 3 s; a model added afterwards shown in {:.2} s; \
         lines for one FIFO left in place: {first}",
        shown_after.as_secs_f64()
    );
}

#[test]
fn a_fifo_in_place_of_the_manifests_folder_is_logged_once_and_the_models_stay_shown() {
    let origin = Origin::start();
    let store = TestStore::new();
    let good = random_bytes(1000, 6);
    store.put_blob(&good);
    store.write_manifest("good", &origin.url("good.gguf"), &good);
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let dir = store.root.join("manifests");
    let aside = store.root.join("manifests.aside");
    fs::rename(&dir, &aside).unwrap();
    mkfifo(&dir);
    // Six refreshes and more, one of them looking at everything.
    std::thread::sleep(Duration::from_secs(3));
    let lines = mount
        .log()
        .lines()
        .filter(|l| l.contains("cannot list"))
        .count();
    assert_eq!(
        lines,
        1,
        "logged once, not on every refresh:\n{}",
        mount.log()
    );
    assert!(open_and_read(&mount.path("good.gguf")).unwrap() == good);
    fs::remove_file(&dir).unwrap();
    fs::rename(&aside, &dir).unwrap();
    store.write_manifest("late", &origin.url("late.gguf"), b"late");
    assert!(wait_until(LIVENESS, || mount.path("late.gguf").exists()));
    assert!(
        mount.log().contains("can be listed again"),
        "{}",
        mount.log()
    );
}

// ---------------------------------------------------------------------------
// Promise 5: FIFOs and devices in every folder of the store
// ---------------------------------------------------------------------------

#[test]
fn fifos_and_devices_in_every_store_folder_hang_neither_the_mount_nor_a_command() {
    let origin = Origin::start();
    let store = TestStore::new();
    let root = store.root.clone();
    let datas: Vec<Vec<u8>> = (0..5).map(|i| random_bytes(200_000, 10 + i)).collect();
    let names = ["good", "fifolock", "devlock", "hexfifo", "bad"];
    for (n, d) in names.iter().zip(&datas) {
        store.add_pending(n, &origin, d);
    }
    origin.set_persistent_fault("bad.gguf", Some(Fault::FlipByte(7)));
    let hex = |d: &[u8]| Sha256::of(d).to_hex();
    let fan = |d: &[u8]| root.join("blobs/sha256").join(&hex(d)[..2]);
    // manifests/: special files with and without a manifest's name.
    mkfifo(&root.join("manifests/fifo.json"));
    mkchar(&root.join("manifests/null.json"), 3);
    mkchar(&root.join("manifests/zero.json"), 5);
    mkfifo(&root.join("manifests/notes"));
    // locks/: a FIFO and a device as lock files of two models.
    mkfifo(&root.join("locks/fifolock.lock"));
    mkchar(&root.join("locks/devlock.lock"), 5);
    mkfifo(&root.join("locks/stray"));
    // blobs/sha256/<aa>/: strays next to where good's blob goes, and a FIFO
    // where hexfifo's blob folder goes.
    mkfifo(&fan(&datas[0]).join("stray-fifo"));
    mkchar(&fan(&datas[0]).join("stray-zero"), 5);
    mkfifo(&fan(&datas[3]).join(hex(&datas[3])));
    mkfifo(&root.join("blobs/sha256/ff-fifo"));
    // A FIFO as a dead import's staging file.
    mkfifo(&root.join("blobs/sha256/.import-999999-gone"));
    // locks/quarantine/: where bad's bytes go.
    mkfifo(&root.join("locks/quarantine/fifo.bin"));
    mkchar(&root.join("locks/quarantine/zero.bin"), 5);

    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let mut report = Vec::new();
    for (n, d) in names.iter().zip(&datas) {
        let started = Instant::now();
        let r = open_and_read(&mount.path(&format!("{n}.gguf")));
        report.push(format!(
            "open {n}: {} in {:.3} s",
            match &r {
                Ok(_) => "read".to_string(),
                Err(e) => format!("errno {e}"),
            },
            started.elapsed().as_secs_f64()
        ));
        assert!(started.elapsed() < LIVENESS, "{n}");
        match *n {
            "good" => assert!(r.unwrap() == *d, "good reads right"),
            // Verified bytes may be handed to the waiting open before the
            // publish that the FIFO makes fail.
            "hexfifo" => assert!(
                r.as_ref().map_or_else(|e| *e == libc::EIO, |v| v == d),
                "hexfifo: {:?}",
                r.as_ref().map(Vec::len)
            ),
            _ => assert_eq!(r.err(), Some(libc::EIO), "{n}"),
        }
    }
    let log = mount.log();
    for needle in [
        "fifolock.lock",
        "devlock.lock",
        "fifo.json",
        "null.json",
        "zero.json",
    ] {
        assert!(log.contains(needle), "a log line names {needle}:\n{log}");
    }
    assert!(log.contains("not a regular file"), "{log}");
    assert!(
        store.quarantined().len() > 2,
        "bad's bytes were quarantined next to the planted files: {:?}",
        store.quarantined()
    );

    for args in [
        &["ls"][..],
        &["status"],
        &["status", mount.mountpoint.to_str().unwrap()],
        &["verify"],
        &["gc"],
        &["pull", "good", "fifolock"],
        &["rm", "devlock"],
    ] {
        let r = run_bounded(
            store.cli(origin.ca_pem_path()).args(args),
            &format!("{args:?}"),
        );
        report.push(format!("{args:?}: exit {} in {:.2} s", r.code, r.secs));
        assert!(!r.text.contains("panicked"), "{args:?}: {}", r.text);
        if args == ["pull", "good", "fifolock"] || args == ["rm", "devlock"] {
            assert_eq!(r.code, 1, "{args:?}: {}", r.text);
            assert!(
                r.text.contains("not a regular file"),
                "{args:?}: {}",
                r.text
            );
        }
    }
    for line in &report {
        eprintln!("{line}");
    }
    // gc removed the dead import's FIFO (without opening it) and nothing
    // else that is not its own.
    assert!(!root.join("blobs/sha256/.import-999999-gone").exists());
    for p in [
        "manifests/fifo.json",
        "manifests/zero.json",
        "locks/fifolock.lock",
        "locks/devlock.lock",
        "locks/quarantine/fifo.bin",
        "blobs/sha256/ff-fifo",
    ] {
        assert!(is_special(&root.join(p)), "{p} left alone");
    }
    assert!(mount.path("good.gguf").exists());
    store.assert_consistent();
}

// ---------------------------------------------------------------------------
// Promise 7: the store sets itself up
// ---------------------------------------------------------------------------

#[test]
fn a_store_without_locks_or_quarantine_folders_is_set_up_by_the_mount_and_by_every_command() {
    let origin = Origin::start();
    let store = TestStore::new();
    let datas: Vec<Vec<u8>> = (0..4).map(|i| random_bytes(150_000, 20 + i)).collect();
    for (i, d) in datas.iter().enumerate() {
        store.add_pending(&format!("m{i}"), &origin, d);
    }
    origin.set_persistent_fault("m1.gguf", Some(Fault::FlipByte(3)));
    fs::remove_dir_all(store.root.join("locks")).unwrap();

    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    assert!(
        store.root.join("locks/quarantine").is_dir(),
        "the mount made them"
    );
    assert!(open_and_read(&mount.path("m0.gguf")).unwrap() == datas[0]);
    // Removed under a running mount: the next fetch makes them again.
    fs::remove_dir_all(store.root.join("locks")).unwrap();
    assert_eq!(
        open_and_read(&mount.path("m1.gguf")).unwrap_err(),
        libc::EIO
    );
    assert_eq!(
        store.quarantined().len(),
        1,
        "quarantined into a new folder"
    );
    fs::remove_dir_all(store.root.join("locks")).unwrap();
    assert!(open_and_read(&mount.path("m2.gguf")).unwrap() == datas[2]);
    let log = mount.log();
    assert!(!log.contains("permission"), "no permission hint:\n{log}");
    drop(mount);

    // And every command, on a store another tool made without them.
    for args in [
        &["pull", "m3"][..],
        &["verify", "m3"],
        &["rm", "m0"],
        &["gc"],
        &["ls"],
        &["status"],
    ] {
        let _ = fs::remove_dir_all(store.root.join("locks"));
        let r = run_bounded(
            store.cli(origin.ca_pem_path()).args(args),
            &format!("{args:?}"),
        );
        assert_eq!(r.code, 0, "{args:?}: {}", r.text);
    }
    let _ = fs::remove_dir_all(store.root.join("locks"));
    let src = store.root.parent().unwrap().join("mine.gguf");
    fs::write(&src, b"GGUF a local model").unwrap();
    let r = run_bounded(
        store
            .cli(origin.ca_pem_path())
            .args(["import", src.to_str().unwrap(), "--name", "mine"]),
        "import",
    );
    assert_eq!(r.code, 0, "{}", r.text);
    store.assert_consistent();
}

// ---------------------------------------------------------------------------
// Promise 7: the store cannot be mounted on itself
// ---------------------------------------------------------------------------

#[test]
fn mounting_on_the_store_inside_it_or_on_a_folder_that_holds_it_is_refused_with_exit_1() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(1000, 30);
    store.add_pending("m", &origin, &data);
    let parent = store.root.parent().unwrap().to_path_buf();
    let link = parent.join("link-to-store");
    std::os::unix::fs::symlink(&store.root, &link).unwrap();
    let cases: Vec<(PathBuf, &str)> = vec![
        (store.root.clone(), "is the store itself"),
        (store.root.join("blobs"), "is inside the store"),
        (store.root.join("manifests"), "is inside the store"),
        (parent.clone(), "holds the store"),
        (link.clone(), "is the store itself"),
    ];
    for (mp, why) in &cases {
        for foreground in [true, false] {
            let mut cmd = store.cli(origin.ca_pem_path());
            cmd.arg("mount").arg(mp);
            if foreground {
                cmd.arg("-f");
            }
            let r = run_bounded(&mut cmd, &format!("mount on {mp:?}"));
            assert_eq!(r.code, 1, "mount on {mp:?}: {}", r.text);
            assert!(r.text.contains(why), "mount on {mp:?}: {}", r.text);
            assert!(!is_mounted(mp), "{mp:?} is not mounted");
            eprintln!(
                "mount on {mp:?} (-f: {foreground}): exit 1 in {:.3} s",
                r.secs
            );
        }
    }
    // The store given through a symlink, the mountpoint inside it.
    let r = run_bounded(
        Command::new(crate::common::modelfs_bin())
            .arg("--store")
            .arg(&link)
            .args(["mount", "-f"])
            .arg(store.root.join("locks")),
        "mount inside via a linked store",
    );
    assert_eq!(r.code, 1, "{}", r.text);
    assert!(r.text.contains("is inside the store"), "{}", r.text);
}

// ---------------------------------------------------------------------------
// Promise 7: imports leave nothing behind
// ---------------------------------------------------------------------------

#[test]
fn a_failed_import_leaves_no_staging_file_and_gc_removes_what_a_killed_one_left() {
    let origin = Origin::start();
    let store = TestStore::new();
    let big = store.root.parent().unwrap().join("big.gguf");
    // Written a MiB at a time: the peak memory figures of the other tests
    // count this process's memory at the time it spawned the command.
    {
        use std::io::Write;
        let mut f = fs::File::create(&big).unwrap();
        for i in 0..256 {
            f.write_all(&random_bytes(1 << 20, 40 + i)).unwrap();
        }
        std::os::unix::fs::FileExt::write_all_at(&f, b"GGUF", 0).unwrap();
    }
    let small = store.root.parent().unwrap().join("small.gguf");
    fs::write(&small, b"GGUF small model").unwrap();
    let cli = || store.cli(origin.ca_pem_path());

    // Fails after staging: the name pins another blob.
    let r = run_bounded(
        cli().args(["import", small.to_str().unwrap(), "--name", "taken"]),
        "import",
    );
    assert_eq!(r.code, 0, "{}", r.text);
    let other = store.root.parent().unwrap().join("other.gguf");
    fs::write(&other, b"GGUF other bytes").unwrap();
    let r = run_bounded(
        cli().args(["import", other.to_str().unwrap(), "--name", "taken"]),
        "import over a pinned name",
    );
    assert_eq!(r.code, 1, "{}", r.text);
    assert!(
        import_files(&store).is_empty(),
        "{:?}",
        import_files(&store)
    );

    // Killed with SIGKILL while it hashes: its staging file stays.
    let mut child = cli()
        .args(["import", big.to_str().unwrap(), "--name", "big"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(LIVENESS, || !import_files(&store).is_empty()),
        "the import staged its file"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let left = import_files(&store);
    assert_eq!(left.len(), 1, "a killed import leaves its staging file");

    // While an import of that name holds its lock, gc keeps the file.
    let held = lock::try_lock(&store.store().lock_path(&ModelName::parse("big").unwrap()))
        .unwrap()
        .unwrap();
    let r = run_bounded(cli().arg("gc"), "gc during an import");
    assert_eq!(r.code, 0, "{}", r.text);
    assert_eq!(import_files(&store), left, "kept while locked: {}", r.text);
    drop(held);

    let r = run_bounded(cli().args(["gc", "--dry-run"]), "gc --dry-run");
    assert!(
        r.text.contains(&format!("would delete {}", left[0])),
        "{}",
        r.text
    );
    assert_eq!(import_files(&store).len(), 1);
    let r = run_bounded(cli().arg("gc"), "gc");
    assert_eq!(r.code, 0, "{}", r.text);
    assert!(r.text.contains(&left[0]), "{}", r.text);
    assert!(import_files(&store).is_empty(), "gc removed it");
    assert_eq!(
        fs::metadata(&big).unwrap().len(),
        256 << 20,
        "the user's file is untouched"
    );
    eprintln!(
        "gc after a killed import: {} in {:.2} s",
        r.text.trim(),
        r.secs
    );
    store.assert_consistent();
}
