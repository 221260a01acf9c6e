//! Issue 6, promises 2 and 4: crashes lose nothing, and a full disk is an
//! error, not corruption.
//!
//! The mount daemon and `modelfs pull` are killed with SIGKILL at random
//! points of a throttled download, again and again, with a remount (or a
//! new pull) each time. After every kill the store must be consistent
//! (every blob hashes to its name, every manifest is whole JSON, a partial
//! is a prefix of the right file), the next run must resume where the last
//! one stopped (the origin's Range headers and byte count show it), and the
//! final file must be right. A crash between a blob's rename and its
//! manifest write, and a store on a tmpfs that fills up mid-download, must
//! converge to a right store as well.
//!
//! Random points come from a seed each test prints; `FAULT_SEED=<n>`
//! replays a run.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::sys::{Rng, open_and_read};
use crate::common::waiter::{Waiter, waiters};
use crate::common::{
    Fault, MIB, Mount, Origin, TestStore, gguf_bytes, is_present, partial_len, random_bytes,
    wait_until,
};
use modelfs::digest::Sha256;
use modelfs::store::{BlobState, ModelName, Store, lock};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// What must hold after any crash: a consistent store, the manifest as it
/// was, a partial that is a prefix of the right bytes, no lock left held.
fn assert_crash_safe(store: &TestStore, name: &str, manifest_bytes: &[u8], data: &[u8]) -> u64 {
    store.assert_consistent();
    let s = store.store();
    let d = Sha256::of(data);
    let path = s.manifest_path(&ModelName::parse(name).unwrap());
    assert_eq!(
        fs::read(&path).unwrap(),
        manifest_bytes,
        "the manifest is whole and unchanged"
    );
    // A parallel download writes ranges beyond its hashed prefix and
    // records that prefix first: only the recorded bytes must be right.
    let len = partial_len(&s, &d);
    let (record, pieces) = prefix_record(&s, &d);
    let partial = record.map_or(len, |r| r.min(len));
    if len > 0 {
        let bytes = fs::read(s.partial_path(&d)).unwrap();
        assert!(bytes.len() <= data.len(), "partial longer than the blob");
        let n = partial as usize;
        assert!(
            bytes[..n] == data[..n],
            "the partial's first {n} bytes (of {}, record {record:?}) are a prefix of the right file",
            bytes.len()
        );
        for (a, b) in pieces {
            let (a, b) = (a as usize, b as usize);
            assert!(
                bytes[a..b] == data[a..b],
                "the recorded piece {a}-{b} holds the right bytes"
            );
        }
    }
    assert!(
        !lock::is_locked(&s.lock_path(&ModelName::parse(name).unwrap())).unwrap(),
        "a killed producer holds no lock"
    );
    if is_present(&s, &d) {
        data.len() as u64
    } else {
        partial
    }
}

/// The partial's prefix record: the prefix, and the pieces beyond it.
fn prefix_record(s: &Store, d: &Sha256) -> (Option<u64>, Vec<(u64, u64)>) {
    let Ok(text) = fs::read_to_string(s.prefix_record_path(d)) else {
        return (None, Vec::new());
    };
    let mut lines = text.lines();
    let prefix = lines.next().and_then(|l| l.trim().parse().ok());
    assert!(
        prefix.is_some(),
        "a prefix record starts with a number: {text:?}"
    );
    let pieces = lines
        .map(|l| {
            let (a, b) = l.split_once(' ').expect("START END");
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    (prefix, pieces)
}

/// `N` of every `Range: bytes=N-` header the origin saw for `path`.
fn range_starts(origin: &Origin, path: &str) -> Vec<u64> {
    origin
        .stats(path)
        .range_headers
        .iter()
        .flatten()
        .filter_map(|h| h.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok())
        .collect()
}

// ---------------------------------------------------------------------------
// Promise 2: kill -9
// ---------------------------------------------------------------------------

#[test]
fn kill_9_of_the_mount_daemon_at_twenty_random_points_loses_nothing_and_every_remount_resumes() {
    let mut rng = Rng::seeded("mount kill -9");
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(8 * MIB, 51);
    let m = store.add_pending("m", &origin, &data);
    let manifest_bytes = fs::read(store.store().manifest_path(&m.name)).unwrap();
    origin.set_persistent_fault("m.gguf", Some(Fault::Throttle(1_500_000)));
    let started = Instant::now();

    let (mut kills, mut mid_download) = (Vec::new(), 0);
    let mut on_disk = 0u64;
    for i in 0..20 {
        // One stream: this test follows its resumes (`bytes=N-`).
        let mount = Mount::start(&store, origin.ca_pem_path(), &["connections=1"]);
        let path = mount.path("m.gguf");
        let reader = Waiter::spawn(&path);
        // Half the kills count from the request (mid-body), half from the
        // open (so some land in the lock, re-hash or connect phases).
        let gets = origin.stats_now("m.gguf").gets;
        if i % 2 == 0 {
            wait_until(Duration::from_secs(10), || {
                origin.stats_now("m.gguf").gets > gets || is_present(&store.store(), &m.blob)
            });
        }
        let delay = rng.range(50, 400);
        std::thread::sleep(Duration::from_millis(delay));
        mount.crash();
        let r = reader.result();
        if let Ok(v) = &r {
            assert!(v == &data, "an open that succeeded read the right bytes");
        }
        let now = assert_crash_safe(&store, "m", &manifest_bytes, &data);
        assert!(
            now >= on_disk,
            "bytes on disk never go back ({on_disk} -> {now})"
        );
        if now > on_disk && now < data.len() as u64 {
            mid_download += 1;
        }
        kills.push(format!("{delay}ms:{now}"));
        on_disk = now;
    }
    eprintln!("kills (delay:bytes on disk): {kills:?}");

    origin.set_persistent_fault("m.gguf", None);
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    assert!(open_and_read(&mount.path("m.gguf")).unwrap() == data);
    drop(mount);
    store.assert_consistent();

    let stats = origin.stats("m.gguf");
    let resumed = range_starts(&origin, "m.gguf")
        .iter()
        .filter(|&&n| n > 0)
        .count();
    eprintln!(
        "{} GETs, {resumed} resumed with bytes=N- (N>0), {} bytes sent for a {} byte file, {mid_download} kills mid-download, {:?} in all",
        stats.gets,
        stats.bytes_sent,
        data.len(),
        started.elapsed()
    );
    assert!(mid_download >= 10, "most kills hit a running download");
    assert!(
        resumed + 1 >= stats.gets as usize * 3 / 4,
        "most requests resumed: {resumed} of {}",
        stats.gets
    );
    assert!(
        stats.bytes_sent < 2 * data.len() as u64,
        "nothing was downloaded twice over: {} bytes sent",
        stats.bytes_sent
    );
}

#[test]
fn kill_9_in_the_middle_of_a_parallel_download_keeps_every_recorded_range_and_the_remount_fetches_the_rest()
 {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(48 * MIB, 52);
    let m = store.add_pending("m", &origin, &data);
    let manifest_bytes = fs::read(store.store().manifest_path(&m.name)).unwrap();
    // About 1 MB/s per connection: several seconds over 8 to 16 ranges.
    origin.set_persistent_fault("m.gguf", Some(Fault::Throttle(1_000_000)));
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let reader = Waiter::spawn(&mount.path("m.gguf"));
    assert!(
        wait_until(Duration::from_secs(20), || origin
            .stats_now("m.gguf")
            .bytes_sent
            > 12 * MIB as u64),
        "the download never got going"
    );
    mount.crash();
    assert!(
        reader.result().is_err(),
        "the open did not outlive its daemon"
    );
    let range_gets = origin.stats("m.gguf").range_gets;
    assert!(range_gets >= 4, "a parallel download ({range_gets} ranges)");
    let kept = assert_crash_safe(&store, "m", &manifest_bytes, &data);
    let (_, pieces) = prefix_record(&store.store(), &m.blob);
    let in_pieces: u64 = pieces.iter().map(|(a, b)| b - a).sum();
    let sent_before = origin.stats("m.gguf").bytes_sent;
    assert!(kept + in_pieces > 0, "written ranges were recorded");

    origin.set_persistent_fault("m.gguf", None);
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    assert!(open_and_read(&mount.path("m.gguf")).unwrap() == data);
    drop(mount);
    store.assert_consistent();
    let sent = origin.stats("m.gguf").bytes_sent;
    let again = sent - data.len() as u64;
    eprintln!(
        "kill -9 after {sent_before} bytes sent, {kept} + {in_pieces} kept: {again} bytes fetched twice"
    );
    // Lost: at most what arrived after the last record (written every
    // 100 ms) and what was in flight: far less than one range per
    // connection (16 connections, 2 MiB ranges here).
    assert!(
        again <= 16 * 2 * MIB as u64,
        "{again} bytes fetched twice after the kill"
    );
}

#[test]
fn kill_9_of_modelfs_pull_at_random_points_loses_nothing_and_the_next_pull_resumes() {
    let mut rng = Rng::seeded("pull kill -9");
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(4 * MIB, 52);
    let m = store.add_pending("m", &origin, &data);
    let manifest_bytes = fs::read(store.store().manifest_path(&m.name)).unwrap();
    origin.set_persistent_fault("m.gguf", Some(Fault::Throttle(MIB as u64)));

    let mut on_disk = 0u64;
    let mut kills = Vec::new();
    for _ in 0..8 {
        let gets = origin.stats_now("m.gguf").gets;
        let mut child = store
            .cli(origin.ca_pem_path())
            .args(["pull", "m"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until(Duration::from_secs(10), || {
            origin.stats_now("m.gguf").gets > gets
        });
        let delay = rng.range(50, 400);
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let now = assert_crash_safe(&store, "m", &manifest_bytes, &data);
        assert!(now >= on_disk);
        kills.push(format!("{delay}ms:{now}"));
        on_disk = now;
    }
    eprintln!("pull kills (delay:bytes on disk): {kills:?}");
    assert!(on_disk > 0 && on_disk < data.len() as u64, "still partial");

    origin.set_persistent_fault("m.gguf", None);
    let out = store
        .cli(origin.ca_pem_path())
        .args(["pull", "m"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("resumed at byte {on_disk}")),
        "{stdout}"
    );
    assert!(fs::read(store.store().blob_path(&m.blob)).unwrap() == data);
    let starts = range_starts(&origin, "m.gguf");
    assert!(starts.iter().filter(|&&n| n > 0).count() >= 6, "{starts:?}");
    assert!(origin.stats("m.gguf").bytes_sent < 2 * data.len() as u64);
    store.assert_consistent();
}

#[test]
fn a_crash_between_the_blob_rename_and_the_manifest_write_converges_through_import_pull_and_mount()
{
    let origin = Origin::start();
    let store = TestStore::new();
    let s = store.store();

    // 1. An importer died after placing the blob, before its manifest, in
    //    the middle of writing the manifest's temp file.
    let imported = gguf_bytes(500_000, 53);
    let d1 = store.put_blob(&imported);
    fs::write(s.manifests_dir().join("imp.json.tmp"), b"{\"schema_vers").unwrap();
    // 2. A pull died after the rename, before removing its partial folder;
    //    the manifest is the pending one `modelfs add` wrote.
    let pulled = random_bytes(400_000, 54);
    let m2 = store.add_pending("pulled", &origin, &pulled);
    store.put_blob(&pulled);
    fs::create_dir_all(s.partial_path(&m2.blob).parent().unwrap()).unwrap();

    store.assert_consistent();
    let gc = store.cli(origin.ca_pem_path()).arg("gc").output().unwrap();
    let gc_out = String::from_utf8_lossy(&gc.stdout);
    assert!(gc.status.success(), "{gc_out}");
    assert!(
        gc_out.contains("placed less than"),
        "gc keeps a fresh blob without a manifest: {gc_out}"
    );
    assert!(is_present(&s, &d1));

    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    assert_eq!(
        fs::read_dir(&mount.mountpoint).unwrap().count(),
        1,
        "only the manifest that exists shows; the temp file does not"
    );
    assert!(open_and_read(&mount.path("pulled.gguf")).unwrap() == pulled);

    // The importer runs again: it finds the blob and writes the manifest.
    let src = store.root.parent().unwrap().join("imp.gguf");
    fs::write(&src, &imported).unwrap();
    let out = store
        .cli(origin.ca_pem_path())
        .arg("import")
        .arg(&src)
        .args(["--name", "imp"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = mount.path("imp.gguf");
    assert!(
        wait_until(Duration::from_secs(5), || p.exists()),
        "imp shows up"
    );
    assert!(open_and_read(&p).unwrap() == imported);

    // A pull of the model whose blob arrived says so and asks nothing.
    let out = store
        .cli(origin.ca_pem_path())
        .args(["pull", "pulled"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("present"));
    assert_eq!(
        origin.stats("pulled.gguf").gets,
        0,
        "no download was needed"
    );
    drop(mount);
    store.assert_consistent();
}

// ---------------------------------------------------------------------------
// Promise 4: a full disk
// ---------------------------------------------------------------------------

/// A small tmpfs mounted over a directory, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "modelfs-test"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount a tmpfs (this test runs as root)");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros to `path` until the filesystem is full.
fn fill(path: &Path) {
    let mut f = File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

#[test]
fn a_disk_that_fills_up_mid_download_fails_with_enospc_keeps_a_right_prefix_and_resumes_once_freed()
{
    let origin = Origin::start();
    let store = TestStore::new();
    let _disk = Tmpfs::mount(&store.root, "8m");
    Store::create(&store.root).unwrap();
    let data = random_bytes(4 * MIB, 55);
    let m = store.add_pending("m", &origin, &data);
    let manifest_bytes = fs::read(store.store().manifest_path(&m.name)).unwrap();
    origin.set_persistent_fault("m.gguf", Some(Fault::Throttle(MIB as u64)));
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let path = mount.path("m.gguf");
    let waiters = waiters(&path, 3);

    let s = store.store();
    assert!(
        wait_until(Duration::from_secs(20), || partial_len(&s, &m.blob)
            >= MIB as u64),
        "the download is under way"
    );
    // Another writer takes every byte left.
    let filler = store.root.join("filler");
    fill(&filler);
    for w in waiters {
        assert_eq!(w.result().err(), Some(libc::ENOSPC));
    }
    let log = mount.log();
    let line = log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("not enough disk space"))
        .unwrap_or_else(|| panic!("the log says the disk is full:\n{log}"));
    assert!(
        line.contains("more needed") && line.contains("available"),
        "and how much was needed: {line}"
    );
    eprintln!("{line}");
    assert!(
        !is_present(&s, &m.blob),
        "nothing half-written at the blob path"
    );
    let kept = assert_crash_safe(&store, "m", &manifest_bytes, &data);
    assert!(kept > 0, "the bytes that fit are kept for resuming");

    fs::remove_file(&filler).unwrap();
    origin.set_persistent_fault("m.gguf", None);
    assert!(
        open_and_read(&path).unwrap() == data,
        "after freeing space the open succeeds"
    );
    let starts = range_starts(&origin, "m.gguf");
    assert!(
        starts.last().is_some_and(|&n| n > 0),
        "and resumed: {starts:?}"
    );
    drop(mount);
    store.assert_consistent();
}

#[test]
fn a_store_too_full_for_even_a_partial_folder_fails_the_open_with_enospc_and_pull_says_why() {
    let origin = Origin::start();
    let store = TestStore::new();
    let _disk = Tmpfs::mount(&store.root, "2m");
    Store::create(&store.root).unwrap();
    // Too big for the disk: refused before a byte is written.
    let big = random_bytes(4 * MIB, 56);
    let mbig = store.add_pending("big", &origin, &big);
    // Would fit, but the disk is full: the partial folder cannot be made.
    let small = random_bytes(100_000, 57);
    let msmall = store.add_pending("small", &origin, &small);

    let out = store
        .cli(origin.ca_pem_path())
        .args(["pull", "big"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not enough disk space") && err.contains("4.0 MiB more needed"),
        "pull says how much space it needs: {err}"
    );
    assert!(err.contains("free disk space"), "and what to do: {err}");
    assert_eq!(origin.stats("big.gguf").gets, 0, "nothing downloaded");
    let s = store.store();
    assert_eq!(
        s.blob_state(&mbig.blob),
        BlobState::Absent,
        "no partial left behind"
    );

    let filler = store.root.join("filler");
    fill(&filler);
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    assert_eq!(
        open_and_read(&mount.path("small.gguf")).unwrap_err(),
        libc::ENOSPC
    );
    assert_eq!(
        open_and_read(&mount.path("big.gguf")).unwrap_err(),
        libc::ENOSPC
    );
    assert!(fs::read_dir(&mount.mountpoint).is_ok(), "the mount answers");
    assert!(!is_present(&s, &msmall.blob));
    store.assert_consistent();

    fs::remove_file(&filler).unwrap();
    assert!(open_and_read(&mount.path("small.gguf")).unwrap() == small);
    drop(mount);
    store.assert_consistent();
}
