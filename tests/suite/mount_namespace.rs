//! What a real mount shows and how it reads: entries, their attributes and
//! extended attributes, changes to the store while mounted, refused writes,
//! metadata that never waits for a download, and reads (`cat`, `cp`,
//! `sha256sum`, `mmap`, the Python `gguf` reader) in both read modes.
//!
//! Every test mounts the real binary (`Mount::start`) over a throwaway store
//! and fetches from the real HTTPS test origin on loopback.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use crate::common::sys::{c_path, getxattr, last_errno, open_flags};
use crate::common::{
    Fault, MIB, Mount, Origin, TestStore, hex, names_in, random_bytes, wait_until,
};
use modelfs::digest::Sha256;
use modelfs::store::{Manifest, ModelName, Source};

// ---------------------------------------------------------------------------
// Helpers: real syscalls through libc, timing, small store edits.
// ---------------------------------------------------------------------------

/// listxattr(2): the attribute names.
fn listxattr(p: &Path) -> Result<Vec<String>, i32> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: a valid C path and a buffer of the length passed.
    let n = unsafe { libc::listxattr(c_path(p).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(last_errno());
    }
    buf.truncate(n as usize);
    Ok(buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8(s.to_vec()).unwrap())
        .collect())
}

/// The errno of a libc call that returns -1 on failure, or 0.
fn rc_errno(rc: i32) -> i32 {
    if rc < 0 { last_errno() } else { 0 }
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

/// Writes a manifest with a chosen format, size and `produced_at`.
fn write_manifest_with(
    store: &TestStore,
    name: &str,
    format: &str,
    bytes: &[u8],
    size_bytes: u64,
    url: &str,
    produced_at: &str,
) -> Manifest {
    let source = Source {
        registry: "test".into(),
        url: Some(url.into()),
        ..Source::default()
    };
    let mut m = Manifest::new(
        ModelName::parse(name).unwrap(),
        format,
        Sha256::of(bytes),
        size_bytes,
        source,
    );
    m.produced_at = produced_at.into();
    store.store().write_manifest(&m).unwrap();
    m
}

fn remove_manifest(store: &TestStore, name: &str) {
    store
        .store()
        .remove_manifest(&ModelName::parse(name).unwrap())
        .unwrap();
}

/// Runs a command; panics with its stderr unless it succeeds; its stdout.
fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

// ---------------------------------------------------------------------------
// The namespace
// ---------------------------------------------------------------------------

#[test]
fn each_manifest_is_a_read_only_file_sized_from_its_manifest_then_its_blob_and_dated_by_produced_at()
 {
    let origin = Origin::start();
    let store = TestStore::new();
    let at = "2024-03-01T12:34:56Z";
    let at_epoch = 1_709_296_496;

    // Pending: the manifest's size.
    let pending = random_bytes(300_000, 1);
    origin.put("pending.gguf", pending.clone());
    write_manifest_with(
        &store,
        "pending",
        "gguf",
        &pending,
        pending.len() as u64,
        &origin.url("pending.gguf"),
        at,
    );
    // Present, with a manifest that states the wrong size: the blob's wins.
    let present = random_bytes(123_457, 2);
    store.put_blob(&present);
    write_manifest_with(
        &store,
        "present",
        "gguf",
        &present,
        present.len() as u64 + 1000,
        &origin.url("present.gguf"),
        at,
    );
    // Another format keeps its extension.
    let st = random_bytes(4096, 3);
    store.put_blob(&st);
    write_manifest_with(
        &store,
        "weights",
        "safetensors",
        &st,
        st.len() as u64,
        &origin.url("weights.safetensors"),
        at,
    );

    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    assert_eq!(
        names_in(&mount.mountpoint),
        ["pending.gguf", "present.gguf", "weights.safetensors"]
    );

    let expected_mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(at_epoch);
    for (file, size) in [
        ("pending.gguf", pending.len()),
        ("present.gguf", present.len()),
        ("weights.safetensors", st.len()),
    ] {
        let md = std::fs::metadata(mount.path(file)).unwrap();
        assert!(md.is_file(), "{file} is a regular file");
        assert_eq!(md.permissions().mode() & 0o7777, 0o444, "{file} mode");
        assert_eq!(md.len(), size as u64, "{file} size");
        assert_eq!(md.nlink(), 1, "{file} nlink");
        assert_eq!(md.modified().unwrap(), expected_mtime, "{file} mtime");
    }
    let root = std::fs::metadata(&mount.mountpoint).unwrap();
    assert!(root.is_dir());
    assert_eq!(root.permissions().mode() & 0o7777, 0o555);

    // Reading the wrongly sized entry gives the whole blob, not the
    // manifest's length.
    assert_eq!(std::fs::read(mount.path("present.gguf")).unwrap(), present);
    // Looking at an entry fetched nothing.
    assert_eq!(origin.stats("pending.gguf").gets, 0);

    // A blob placed by another tool while mounted: the size follows it
    // even when the manifest said otherwise (the kernel is told).
    let late = random_bytes(200_000, 4);
    write_manifest_with(
        &store,
        "late",
        "gguf",
        &late,
        late.len() as u64 + 77,
        &origin.url("late.gguf"),
        at,
    );
    let late_path = mount.path("late.gguf");
    assert!(
        wait_until(Duration::from_secs(3), || std::fs::metadata(&late_path)
            .is_ok_and(|m| m.len() == late.len() as u64 + 77)),
        "a new pending entry shows its manifest's size"
    );
    store.put_blob(&late);
    assert!(
        wait_until(Duration::from_secs(3), || std::fs::metadata(&late_path)
            .is_ok_and(|m| m.len() == late.len() as u64)),
        "once the blob is present the entry has the blob's size"
    );
    assert_eq!(std::fs::read(&late_path).unwrap(), late);
    assert_eq!(origin.stats("late.gguf").gets, 0);
}

/// The source and type `/proc/thread-self/mountinfo` shows for `mountpoint`.
fn mount_source(mountpoint: &Path) -> Option<(String, String)> {
    let want = mountpoint.canonicalize().ok()?;
    let info = std::fs::read_to_string("/proc/thread-self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if left.split(' ').nth(4)? != want.to_str()? {
            return None;
        }
        let mut r = right.split(' ');
        let fstype = r.next()?.to_string();
        Some((r.next()?.to_string(), fstype))
    })
}

#[test]
fn the_mount_source_is_the_absolute_store_path_even_when_given_relative() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(1000, 5);
    store.put_blob(&data);
    store.write_manifest("m", &origin.url("m.gguf"), &data);
    let parent = store.root.parent().unwrap().to_path_buf();
    let name = store.root.file_name().unwrap().to_os_string();
    let mount = Mount::start_with(&store, origin.ca_pem_path(), &[], |c| {
        c.current_dir(&parent).arg("--store").arg(&name);
    });
    let (source, fstype) = mount_source(&mount.mountpoint).expect("in mountinfo");
    assert_eq!(source, store.root.canonicalize().unwrap().to_str().unwrap());
    assert!(fstype.starts_with("fuse"), "{fstype}");
    assert_eq!(std::fs::read(mount.path("m.gguf")).unwrap(), data);
}

#[test]
fn ls_stat_and_getxattr_answer_at_once_while_downloads_of_the_same_and_another_entry_hang() {
    let origin = Origin::start();
    let store = TestStore::new();
    let a = random_bytes(2 * MIB, 10);
    let b = random_bytes(2 * MIB, 11);
    let c = random_bytes(MIB, 12);
    store.add_pending("a", &origin, &a);
    store.add_pending("b", &origin, &b);
    store.add_pending("c", &origin, &c);
    // Both downloads deliver 64 KiB and then hang for 30 s.
    for p in ["a.gguf", "b.gguf"] {
        origin.set_persistent_fault(p, Some(Fault::StallAt(64 * 1024, Duration::from_secs(30))));
    }
    let mount = Mount::start(&store, origin.ca_pem_path(), &["stall_timeout=120"]);
    let mut readers: Vec<_> = ["a.gguf", "b.gguf"]
        .iter()
        .map(|f| {
            Command::new("cat")
                .arg(mount.path(f))
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(10), || {
            origin.stats_now("a.gguf").bytes_sent >= 64 * 1024
                && origin.stats_now("b.gguf").bytes_sent >= 64 * 1024
        }),
        "both downloads started"
    );
    std::thread::sleep(Duration::from_millis(300));

    let bound = Duration::from_secs(2);
    let mut slowest = Duration::ZERO;
    for round in 0..3 {
        let (out, t) = timed(|| {
            Command::new("ls")
                .arg("-l")
                .arg(&mount.mountpoint)
                .output()
                .unwrap()
        });
        assert!(out.status.success(), "ls -l: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        for f in ["a.gguf", "b.gguf", "c.gguf"] {
            assert!(text.contains(f), "ls -l lists {f}: {text}");
        }
        assert!(t < bound, "ls -l took {t:?} in round {round}");
        slowest = slowest.max(t);
        for (f, len) in [
            ("a.gguf", a.len()),
            ("b.gguf", b.len()),
            ("c.gguf", c.len()),
        ] {
            let (md, t) = timed(|| std::fs::metadata(mount.path(f)).unwrap());
            assert_eq!(md.len(), len as u64);
            assert!(t < bound, "stat {f} took {t:?} while downloads hang");
            slowest = slowest.max(t);
        }
        let (state, t) = timed(|| getxattr(&mount.path("a.gguf"), "user.modelfs.state"));
        assert_eq!(state.unwrap(), "fetching");
        assert!(t < bound, "getxattr took {t:?}");
        let progress = getxattr(&mount.path("a.gguf"), "user.modelfs.progress").unwrap();
        let (done, total) = progress.split_once(' ').expect("`done total`");
        let (done, total): (u64, u64) = (done.parse().unwrap(), total.parse().unwrap());
        assert_eq!(total, a.len() as u64, "progress {progress}");
        assert!(
            done > 0 && done <= 64 * 1024,
            "progress shows the bytes received so far: {progress}"
        );
        assert_eq!(
            getxattr(&mount.path("c.gguf"), "user.modelfs.state").unwrap(),
            "pending"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("slowest metadata operation during the downloads: {slowest:?}");
    // The readers are still waiting: the downloads really were in progress.
    for r in &mut readers {
        assert!(r.try_wait().unwrap().is_none(), "a reader finished early");
    }
    for r in &mut readers {
        let _ = r.kill();
        let _ = r.wait();
    }
}

/// Polls until `path` has another inode than `old`, or gives up.
fn wait_for_new_inode(path: &Path, old: u64) -> Option<u64> {
    let mut ino = None;
    wait_until(Duration::from_secs(3), || {
        ino = std::fs::metadata(path)
            .ok()
            .map(|m| m.ino())
            .filter(|i| *i != old);
        ino.is_some()
    });
    ino
}

fn manifests_change_while_mounted(options: &[&str]) {
    let origin = Origin::start();
    let store = TestStore::new();
    let v1 = random_bytes(3 * MIB, 20);
    let v2 = random_bytes(3 * MIB, 21); // same size: only the inode tells them apart
    store.put_blob(&v1);
    store.write_manifest("x", &origin.url("x-v1.gguf"), &v1);
    let mount = Mount::start(&store, origin.ca_pem_path(), options);
    let x = mount.path("x.gguf");

    // Added after mounting: appears and opens (fetched on open).
    let added = random_bytes(MIB, 22);
    store.add_pending("added", &origin, &added);
    assert!(
        wait_until(Duration::from_secs(3), || mount.path("added.gguf").exists()),
        "an added manifest appears within 3 s"
    );
    assert!(names_in(&mount.mountpoint).contains(&"added.gguf".to_string()));
    assert_eq!(std::fs::read(mount.path("added.gguf")).unwrap(), added);
    assert_eq!(origin.stats("added.gguf").gets, 1);

    // Removed: disappears from lookups and listings.
    remove_manifest(&store, "added");
    assert!(
        wait_until(Duration::from_secs(3), || !mount
            .path("added.gguf")
            .exists()),
        "a removed manifest disappears within 3 s"
    );
    assert_eq!(names_in(&mount.mountpoint), ["x.gguf"]);
    assert_eq!(
        open_flags(&mount.path("added.gguf"), libc::O_RDONLY).unwrap_err(),
        libc::ENOENT
    );

    // Repointed: a file opened before keeps its bytes; new opens get the
    // new ones, under a new inode.
    let old_file = File::open(&x).unwrap();
    let old_ino = old_file.metadata().unwrap().ino();
    let mut head = vec![0u8; 64 * 1024];
    old_file.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head, v1[..head.len()]);
    origin.put("x-v2.gguf", v2.clone());
    store.write_manifest("x", &origin.url("x-v2.gguf"), &v2);
    let new_ino = wait_for_new_inode(&x, old_ino).expect("the repointed entry gets a new inode");
    assert_ne!(new_ino, old_ino);
    let mut old_all = vec![0u8; v1.len()];
    old_file.read_exact_at(&mut old_all, 0).unwrap();
    assert!(
        old_all == v1,
        "the file opened before the repoint reads the old bytes"
    );
    let new_all = std::fs::read(&x).unwrap();
    assert_eq!(new_all.len(), v2.len());
    assert!(new_all == v2, "a new open reads the new bytes");
    assert_eq!(File::open(&x).unwrap().metadata().unwrap().ino(), new_ino);
    // And the old handle still reads the old bytes after the new ones were read.
    old_file.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head, v1[..head.len()]);
    assert_eq!(origin.stats("x-v2.gguf").gets, 1);
    assert_eq!(origin.stats("x-v1.gguf").gets, 0);

    // The mount log says so in sentences, not Debug output.
    let log = mount.log();
    for line in [
        "store changed: 1 model added: added.gguf",
        "store changed: 1 model removed: added.gguf",
        "store changed: 1 model repointed at another blob: x.gguf",
    ] {
        assert!(log.contains(line), "{line:?} missing:\n{log}");
    }
    assert!(
        !log.contains("added [") && !log.contains("removed [(\""),
        "{log}"
    );
}

#[test]
fn manifests_added_removed_and_repointed_while_mounted_show_up_and_open_files_keep_their_bytes() {
    manifests_change_while_mounted(&[]);
}

#[test]
fn manifests_added_removed_and_repointed_show_up_in_page_cache_mode_too() {
    manifests_change_while_mounted(&["passthrough=off"]);
}

#[test]
fn everything_that_writes_fails_with_erofs_and_fetches_nothing() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(100_000, 30);
    store.add_pending("m", &origin, &data);
    let present = random_bytes(50_000, 31);
    store.put_blob(&present);
    store.write_manifest("p", &origin.url("p.gguf"), &present);
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let m = mount.path("m.gguf");
    let p = mount.path("p.gguf");
    let new = mount.path("new.gguf");

    for (path, flags, what) in [
        (&m, libc::O_WRONLY, "O_WRONLY of a pending entry"),
        (&m, libc::O_RDWR, "O_RDWR of a pending entry"),
        (&p, libc::O_WRONLY, "O_WRONLY of a present entry"),
        (&p, libc::O_RDWR, "O_RDWR of a present entry"),
        (&p, libc::O_RDONLY | libc::O_TRUNC, "O_TRUNC"),
        (
            &new,
            libc::O_WRONLY | libc::O_CREAT,
            "O_CREAT of a new name",
        ),
        (
            &new,
            libc::O_RDONLY | libc::O_CREAT,
            "O_RDONLY|O_CREAT of a new name",
        ),
    ] {
        assert_eq!(open_flags(path, flags).unwrap_err(), libc::EROFS, "{what}");
    }
    let c = |p: &PathBuf| c_path(p);
    // SAFETY (all below): valid C strings and buffers.
    unsafe {
        assert_eq!(
            rc_errno(libc::unlink(c(&p).as_ptr())),
            libc::EROFS,
            "unlink"
        );
        assert_eq!(
            rc_errno(libc::rename(
                c(&p).as_ptr(),
                c(&mount.path("q.gguf")).as_ptr()
            )),
            libc::EROFS,
            "rename"
        );
        assert_eq!(
            rc_errno(libc::mkdir(c(&mount.path("dir")).as_ptr(), 0o755)),
            libc::EROFS,
            "mkdir"
        );
        assert_eq!(
            rc_errno(libc::chmod(c(&p).as_ptr(), 0o644)),
            libc::EROFS,
            "chmod"
        );
        assert_eq!(
            rc_errno(libc::truncate(c(&p).as_ptr(), 0)),
            libc::EROFS,
            "truncate"
        );
        assert_eq!(
            rc_errno(libc::utimes(c(&p).as_ptr(), std::ptr::null())),
            libc::EROFS,
            "utimes"
        );
        assert_eq!(
            rc_errno(libc::symlink(c(&p).as_ptr(), c(&mount.path("l")).as_ptr())),
            libc::EROFS,
            "symlink"
        );
        assert_eq!(
            rc_errno(libc::link(c(&p).as_ptr(), c(&mount.path("h")).as_ptr())),
            libc::EROFS,
            "link"
        );
        let name = CString::new("user.modelfs.state").unwrap();
        assert_eq!(
            rc_errno(libc::setxattr(
                c(&p).as_ptr(),
                name.as_ptr(),
                b"present".as_ptr().cast(),
                7,
                0
            )),
            libc::EROFS,
            "setxattr"
        );
        assert_eq!(
            rc_errno(libc::removexattr(c(&p).as_ptr(), name.as_ptr())),
            libc::EROFS,
            "removexattr"
        );
    }
    // access(2): readable, never writable, model files not executable.
    let access = |p: &Path, mode: i32| {
        // SAFETY: a valid C path.
        rc_errno(unsafe { libc::access(c_path(p).as_ptr(), mode) })
    };
    assert_eq!(access(&p, libc::R_OK), 0);
    assert_eq!(access(&m, libc::R_OK), 0);
    assert_eq!(access(&p, libc::W_OK), libc::EROFS);
    assert_eq!(
        access(&p, libc::X_OK),
        libc::EACCES,
        "a model file is not executable"
    );
    assert_eq!(access(&mount.mountpoint, libc::R_OK | libc::X_OK), 0);
    assert_eq!(access(&new, libc::F_OK), libc::ENOENT);

    // Nothing changed: same entries, same bytes, nothing fetched.
    assert_eq!(names_in(&mount.mountpoint), ["m.gguf", "p.gguf"]);
    assert_eq!(std::fs::read(&p).unwrap(), present);
    assert_eq!(origin.stats("m.gguf").gets, 0);
    assert_eq!(
        getxattr(&m, "user.modelfs.state").unwrap(),
        "pending",
        "a refused write-open starts no fetch"
    );
    store.assert_consistent();
}

/// An imported model has no source: it has no `user.modelfs.url` at all,
/// where it used to list one whose value could not be read (`getfattr -d`
/// showed it as empty).
#[test]
fn an_imported_model_lists_no_url_attribute() {
    let origin = Origin::start();
    let store = TestStore::new();
    let bytes = crate::common::gguf_bytes(40_000, 43);
    let src = store.root.parent().unwrap().join("mine.gguf");
    std::fs::write(&src, &bytes).unwrap();
    let out = store
        .cli(origin.ca_pem_path())
        .args(["import", src.to_str().unwrap(), "--name", "mine"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let p = mount.path("mine.gguf");
    let mut names = listxattr(&p).unwrap();
    names.sort();
    assert_eq!(
        names,
        [
            "user.modelfs.progress",
            "user.modelfs.sha256",
            "user.modelfs.state"
        ]
    );
    assert_eq!(getxattr(&p, "user.modelfs.url").unwrap_err(), libc::ENODATA);
    assert_eq!(getxattr(&p, "user.modelfs.state").unwrap(), "present");
}

#[test]
fn listxattr_names_the_modelfs_attributes_and_their_values_describe_present_and_pending_entries() {
    let origin = Origin::start();
    let store = TestStore::new();
    let present = random_bytes(70_000, 40);
    store.put_blob(&present);
    store.write_manifest("p", &origin.url("p.gguf"), &present);
    let pending = random_bytes(90_000, 41);
    // A signed URL: its query must never be shown.
    let signed = origin.url("q.gguf?X-Amz-Signature=sekrit&token=hunter2");
    let qm = store.write_manifest("q", &signed, &pending);
    // An earlier partial download of 1234 bytes.
    let partial = store.store().partial_path(&qm.blob);
    std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
    std::fs::write(&partial, &pending[..1234]).unwrap();
    let fresh = random_bytes(5_000, 42);
    store.write_manifest("r", &origin.url("r.gguf"), &fresh);

    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let (p, q, r) = (
        mount.path("p.gguf"),
        mount.path("q.gguf"),
        mount.path("r.gguf"),
    );

    let want = [
        "user.modelfs.progress",
        "user.modelfs.sha256",
        "user.modelfs.state",
        "user.modelfs.url",
    ];
    for f in [&p, &q, &r] {
        let mut names = listxattr(f).unwrap();
        names.sort();
        assert_eq!(names, want, "listxattr {}", f.display());
    }

    assert_eq!(getxattr(&p, "user.modelfs.sha256").unwrap(), hex(&present));
    assert_eq!(getxattr(&p, "user.modelfs.state").unwrap(), "present");
    assert_eq!(
        getxattr(&p, "user.modelfs.progress").unwrap(),
        format!("{0} {0}", present.len())
    );
    assert_eq!(
        getxattr(&p, "user.modelfs.url").unwrap(),
        origin.url("p.gguf")
    );
    assert_eq!(
        getxattr(&p, "user.modelfs.error").unwrap_err(),
        libc::ENODATA
    );

    assert_eq!(getxattr(&q, "user.modelfs.sha256").unwrap(), hex(&pending));
    // Issue 11: one word per state everywhere; `ls` says `partial` too.
    assert_eq!(getxattr(&q, "user.modelfs.state").unwrap(), "partial");
    assert_eq!(
        getxattr(&q, "user.modelfs.progress").unwrap(),
        format!("1234 {}", pending.len()),
        "an entry with a partial shows the partial's length"
    );
    let url = getxattr(&q, "user.modelfs.url").unwrap();
    assert_eq!(url, origin.url("q.gguf"), "the query string is dropped");
    assert!(!url.contains("sekrit") && !url.contains("hunter2"));

    assert_eq!(getxattr(&r, "user.modelfs.state").unwrap(), "pending");
    assert_eq!(
        getxattr(&r, "user.modelfs.progress").unwrap(),
        format!("0 {}", fresh.len())
    );

    assert_eq!(
        getxattr(&p, "user.modelfs.nonsense").unwrap_err(),
        libc::ENODATA
    );
    assert_eq!(getxattr(&p, "user.other").unwrap_err(), libc::ENODATA);
    assert_eq!(listxattr(&mount.mountpoint).unwrap(), Vec::<String>::new());
    // A buffer too small is ERANGE, as getxattr(2) promises.
    let name = CString::new("user.modelfs.sha256").unwrap();
    let mut small = [0u8; 8];
    // SAFETY: valid C strings and a buffer of the length passed.
    let n = unsafe {
        libc::getxattr(
            c_path(&p).as_ptr(),
            name.as_ptr(),
            small.as_mut_ptr().cast(),
            small.len(),
        )
    };
    assert_eq!((n, last_errno()), (-1, libc::ERANGE));

    // The `getfattr` tool, where installed, sees the same.
    if let Ok(out) = Command::new("getfattr")
        .args(["-d", "-m", "user.modelfs"])
        .arg(&q)
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("user.modelfs.state=\"partial\""), "{text}");
    }
    // Looking fetched nothing.
    assert_eq!(origin.stats("q.gguf").gets, 0);
    assert_eq!(origin.stats("r.gguf").gets, 0);
}

/// `ls -l` asks every entry for `security.selinux` and
/// `system.posix_acl_access`. Answered "no data", it asked again for each of
/// 100,000 entries: two FUSE round trips per entry, 7.5 s instead of 0.4 s.
/// "Not supported" makes it stop asking for the rest of the mount.
#[test]
fn attributes_outside_user_are_unsupported_so_ls_l_asks_once_not_per_entry() {
    let origin = Origin::start();
    let store = TestStore::new();
    for i in 0..40 {
        let bytes = random_bytes(100, 500 + i);
        store.write_manifest(&format!("m{i:02}"), &origin.url("x.gguf"), &bytes);
    }
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let one = mount.path("m07.gguf");
    for name in ["security.selinux", "system.posix_acl_access", "trusted.x"] {
        assert_eq!(
            getxattr(&one, name).unwrap_err(),
            libc::EOPNOTSUPP,
            "{name}"
        );
        assert_eq!(
            getxattr(&mount.mountpoint, name).unwrap_err(),
            libc::EOPNOTSUPP,
            "{name} on /"
        );
    }
    assert_eq!(getxattr(&one, "user.other").unwrap_err(), libc::ENODATA);
    assert_eq!(getxattr(&one, "user.modelfs.state").unwrap(), "pending");

    let scratch = tempfile::tempdir().unwrap();
    let trace = scratch.path().join("ls.strace");
    let out = Command::new("strace")
        .arg("-o")
        .arg(&trace)
        .args(["-e", "trace=getxattr,lgetxattr", "ls", "-l"])
        .arg(&mount.mountpoint)
        .output()
        .expect("strace is missing: scripts/deps.sh --test installs it (apt-get install strace)");
    assert!(
        out.status.success(),
        "ls -l: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(".gguf"))
        .count();
    assert_eq!(listed, 40);
    let asked = std::fs::read_to_string(&trace).unwrap();
    let calls = asked.lines().filter(|l| l.contains("getxattr(")).count();
    assert!(
        calls <= 2,
        "ls -l of 40 entries made {calls} xattr calls:\n{asked}"
    );
}

// ---------------------------------------------------------------------------
// Reads, in both read modes
// ---------------------------------------------------------------------------

fn make_gguf(dir: &Path, size: usize) -> (PathBuf, usize) {
    let out = dir.join("small.gguf");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make_gguf.py");
    let info = run_ok(
        Command::new("python3")
            .arg(script)
            .arg(&out)
            .arg(size.to_string())
            .args(["--seed", "7", "--info"]),
    );
    let info = String::from_utf8(info).unwrap();
    // The summary lists one `"name": "blk.N.weight"` per tensor.
    let tensors = info.matches("\"name\": \"blk.").count();
    assert!(tensors >= 1, "make_gguf.py --info: {info}");
    (out, tensors)
}

/// Tensor count and SHA-256 of all tensor data, as the Python gguf reader
/// (which maps the file with numpy) sees them.
fn gguf_reader_digest(path: &Path) -> (usize, String) {
    let code = "import sys, hashlib\n\
                from gguf import GGUFReader\n\
                r = GGUFReader(sys.argv[1])\n\
                h = hashlib.sha256()\n\
                for t in r.tensors:\n    h.update(t.data.tobytes())\n\
                print(len(r.tensors), h.hexdigest())\n";
    let out = run_ok(Command::new("python3").args(["-c", code]).arg(path));
    let out = String::from_utf8(out).unwrap();
    let (n, h) = out.trim().split_once(' ').expect("count and digest");
    (n.parse().unwrap(), h.to_string())
}

/// Maps the whole file shared read-only and compares every page, visited
/// in a pseudo-random order, with `expected`.
fn mmap_matches(path: &Path, expected: &[u8], seed: u64) {
    let f = File::open(path).unwrap();
    let len = expected.len();
    // SAFETY: mapping an open fd read-only; unmapped below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        ptr,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the mapping is `len` readable bytes while it lives.
    let map = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
    let page = 4096;
    let pages = len.div_ceil(page);
    let mut order: Vec<usize> = (0..pages).collect();
    let mut x = seed | 1;
    for i in (1..pages).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    for &pg in &order {
        let (a, b) = (pg * page, ((pg + 1) * page).min(len));
        assert!(
            map[a..b] == expected[a..b],
            "mapped page {pg} (bytes {a}..{b}) differs from the blob"
        );
    }
    assert!(map == expected, "the whole mapping equals the blob");
    // SAFETY: unmapping what we mapped.
    unsafe { libc::munmap(ptr, len) };
}

fn reads_match_the_blob(options: &[&str], mode_line: &str) {
    let origin = Origin::start();
    let store = TestStore::new();
    let work = tempfile::tempdir().unwrap();
    let (gguf_path, tensors) = make_gguf(work.path(), 3 * MIB + 12_345);
    let gguf = std::fs::read(&gguf_path).unwrap();
    store.add_pending("small", &origin, &gguf);
    let big = random_bytes(9 * MIB + 4321, 50);
    store.put_blob(&big);
    store.write_manifest("big", &origin.url("big.gguf"), &big);

    // fuser's own warnings too: an operation it had to refuse for us shows.
    let mount = Mount::start_with(&store, origin.ca_pem_path(), options, |c| {
        c.env("RUST_LOG", "modelfs=debug,fuser=warn");
    });
    assert!(
        wait_until(Duration::from_secs(5), || mount.log().contains(mode_line)),
        "the mount says which read mode is active ({mode_line:?}):\n{}",
        mount.log()
    );
    let (small, bigp) = (mount.path("small.gguf"), mount.path("big.gguf"));
    // A reader that keeps the present file open, and mapped, all along
    // (as an inference server does): every other open below overlaps it.
    let held = File::open(&bigp).unwrap();
    mmap_matches(&bigp, &big, 0x5eed);

    // cat (the first open fetches `small`), twice: the second read may come
    // from the page cache and must be just as right.
    for round in 0..2 {
        assert!(
            run_ok(Command::new("cat").arg(&small)) == gguf,
            "cat small, round {round}"
        );
        assert!(
            run_ok(Command::new("cat").arg(&bigp)) == big,
            "cat big, round {round}"
        );
    }
    assert_eq!(origin.stats("small.gguf").gets, 1);
    assert_eq!(origin.stats("big.gguf").gets, 0);

    // cp and sha256sum
    let copy = work.path().join("copy.gguf");
    run_ok(Command::new("cp").arg(&bigp).arg(&copy));
    assert!(std::fs::read(&copy).unwrap() == big, "cp copies the blob");
    for (path, bytes) in [(&small, &gguf), (&bigp, &big)] {
        let out = String::from_utf8(run_ok(Command::new("sha256sum").arg(path))).unwrap();
        assert_eq!(out.split_whitespace().next(), Some(hex(bytes).as_str()));
    }

    // A shared read-only mapping of the whole file, pages in random order.
    mmap_matches(&bigp, &big, 0xfeed);
    mmap_matches(&small, &gguf, 0xbeef);

    // The Python gguf reader maps the file with numpy.
    let from_mount = gguf_reader_digest(&small);
    let from_source = gguf_reader_digest(&gguf_path);
    assert_eq!(from_mount.0, tensors, "tensor count through the mount");
    assert_eq!(from_mount, from_source, "tensor data through the mount");

    let mut tail = vec![0u8; 4096];
    held.read_exact_at(&mut tail, big.len() as u64 - 4096)
        .unwrap();
    assert!(
        tail == big[big.len() - 4096..],
        "the long-held file still reads right"
    );
    drop(held);

    let log = mount.log();
    assert!(
        !log.contains("passthrough refused"),
        "no open fell back from passthrough:\n{log}"
    );
    assert!(
        !log.contains("Not Implemented"),
        "every operation the kernel sent was answered by modelfs:\n{log}"
    );
}

#[test]
fn cat_cp_sha256sum_mmap_and_the_gguf_reader_read_the_blob_through_kernel_passthrough() {
    reads_match_the_blob(&[], "read mode: kernel passthrough");
}

#[test]
fn cat_cp_sha256sum_mmap_and_the_gguf_reader_read_the_blob_with_passthrough_off() {
    reads_match_the_blob(&["passthrough=off"], "read mode: page-cache fallback");
}

/// An overlayfs mounted over a directory (as a container's root is),
/// unmounted on drop.
struct Overlay {
    merged: PathBuf,
    _layers: tempfile::TempDir,
}

impl Overlay {
    fn mount(merged: &Path) -> Overlay {
        let layers = tempfile::tempdir().unwrap();
        for d in ["lower", "upper", "work"] {
            std::fs::create_dir(layers.path().join(d)).unwrap();
        }
        let l = layers.path();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            l.join("lower").display(),
            l.join("upper").display(),
            l.join("work").display()
        );
        let st = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(merged)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount an overlayfs (this test runs as root)");
        Overlay {
            merged: merged.to_path_buf(),
            _layers: layers,
        }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.merged).status();
    }
}

#[test]
fn a_store_on_overlayfs_where_passthrough_is_refused_still_reads_right_through_the_page_cache() {
    let origin = Origin::start();
    let store = TestStore::new();
    let _overlay = Overlay::mount(&store.root);
    modelfs::store::Store::create(&store.root).unwrap();
    let present = random_bytes(5 * MIB + 3, 60);
    store.put_blob(&present);
    store.write_manifest("p", &origin.url("p.gguf"), &present);
    let pending = random_bytes(2 * MIB, 61);
    store.add_pending("q", &origin, &pending);
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let (p, q) = (mount.path("p.gguf"), mount.path("q.gguf"));

    // Several opens at once, one of them held and mapped meanwhile.
    let held = File::open(&p).unwrap();
    let readers: Vec<_> = (0..4)
        .map(|_| Command::new("sha256sum").arg(&p).output().unwrap())
        .collect();
    for out in readers {
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(text.split_whitespace().next(), Some(hex(&present).as_str()));
    }
    mmap_matches(&p, &present, 0x0ea1);
    let mut tail = vec![0u8; 3];
    held.read_exact_at(&mut tail, present.len() as u64 - 3)
        .unwrap();
    assert_eq!(tail, present[present.len() - 3..]);
    assert!(std::fs::read(&q).unwrap() == pending, "a fetched blob too");
    mmap_matches(&q, &pending, 7);

    let log = mount.log();
    assert!(
        log.contains("passthrough refused"),
        "the kernel refuses a backing file on overlayfs (stack depth), and says so:\n{log}"
    );
}
