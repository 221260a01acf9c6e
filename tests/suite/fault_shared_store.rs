//! Issue 10, promises 1, 2, 5 (blob and partial files) and 6, through a
//! real mount against the real origin: a store shared with other tools (and
//! with whoever can write into it) never makes modelfs serve or publish a
//! byte it did not hash, write outside the store, or hang on a file that is
//! not what the layout puts there; and a blob two manifests pin is fetched
//! from whichever of their sources works.
//!
//! - Another producer, following the convention for another name with the
//!   same digest, writes into the shared `.partial-<hex>/data.tmp` while
//!   modelfs downloads.
//! - A hard link to a file outside the store is planted as a partial.
//! - A FIFO as a partial (modelfs's and the convention's), a directory and
//!   a FIFO as a blob's `data`.
//! - Two manifests pin one digest; one URL is dead.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use crate::common::sys::open_and_read;
use crate::common::waiter::Waiter;
use crate::common::{Fault, MIB, Mount, Origin, TestStore, random_bytes, wait_until};
use modelfs::digest::Sha256;

/// Liveness bound for anything that must not hang.
const LIVELY: Duration = Duration::from_secs(20);

/// `blobs/sha256/<aa>/.partial-<hex>/` of `bytes`.
fn partial_dir(store: &TestStore, bytes: &[u8]) -> PathBuf {
    let hex = Sha256::of(bytes).to_hex();
    store
        .root
        .join("blobs/sha256")
        .join(&hex[..2])
        .join(format!(".partial-{hex}"))
}

/// The convention's partial file, which every producer may write.
fn shared_partial(store: &TestStore, bytes: &[u8]) -> PathBuf {
    partial_dir(store, bytes).join("data.tmp")
}

/// modelfs's own partial file of `bytes` (whatever the store calls it).
fn modelfs_partial(store: &TestStore, bytes: &[u8]) -> PathBuf {
    store.store().partial_path(&Sha256::of(bytes))
}

fn describe(r: &Result<Vec<u8>, String>, right: &[u8]) -> String {
    match r {
        Ok(v) if v == right => "the right bytes".into(),
        Ok(v) => format!("WRONG BYTES ({} bytes)", v.len()),
        Err(e) => e.clone(),
    }
}

/// Opens and reads `path` on a thread; what it got (the errno of the open
/// or of a read), or `None` if it did not finish within [`LIVELY`].
fn open_read_within(path: &Path) -> Option<Result<Vec<u8>, String>> {
    use std::io::Read;
    let (tx, rx) = mpsc::channel();
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let r = match crate::common::sys::open_flags(&path, libc::O_RDONLY) {
            Err(e) => Err(format!("open: errno {e}")),
            Ok(mut f) => {
                let mut v = Vec::new();
                f.read_to_end(&mut v)
                    .map(|_| v)
                    .map_err(|e| format!("read after a successful open: {e}"))
            }
        };
        let _ = tx.send(r);
    });
    rx.recv_timeout(LIVELY).ok()
}

/// Names of the daemon's threads that run a fetch.
/// The fetch workers of the daemon that used the CPU in the last 300 ms
/// (workers wait idle for the next job; one that spins is busy).
fn busy_fetch_threads(mount: &Mount) -> Vec<String> {
    let sample = || -> Vec<(String, u64)> {
        let Ok(tasks) = fs::read_dir(format!("/proc/{}/task", mount.pid())) else {
            return Vec::new();
        };
        tasks
            .flatten()
            .filter_map(|t| {
                let comm = fs::read_to_string(t.path().join("comm")).ok()?;
                let stat = fs::read_to_string(t.path().join("stat")).ok()?;
                // Fields after the ")" that ends the name: utime is the 12th.
                let rest = stat.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
                Some((comm.trim().to_string(), ticks))
            })
            .filter(|(c, _)| c.starts_with("fetch-"))
            .collect()
    };
    let before = sample();
    std::thread::sleep(Duration::from_millis(300));
    sample()
        .into_iter()
        .filter(|(c, t)| before.iter().any(|(b, bt)| b == c && t - bt > 3))
        .map(|(c, _)| c)
        .collect()
}

// ---------------------------------------------------------------------------
// Promise 1: what is served and published is exactly what was hashed
// ---------------------------------------------------------------------------

#[test]
fn another_producer_writing_the_shared_partial_mid_download_changes_nothing_served_or_published() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(4 * MIB, 1001);
    store.add_pending("ours", &origin, &data);
    // A pause after the first MiB: the window in which the other producer
    // writes.
    origin.push_fault(
        "ours.gguf",
        Fault::StallAt(MIB as u64, Duration::from_secs(2)),
    );
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let reader = Waiter::spawn(&mount.path("ours.gguf"));
    let d = Sha256::of(&data);
    assert!(
        wait_until(LIVELY, || matches!(
            store.store().blob_state(&d),
            modelfs::store::BlobState::Partial(n) if n > 0
        )),
        "the download started"
    );
    // The other producer: the convention's partial name, its own name
    // lock only, 23 bytes at offset 0.
    let theirs = shared_partial(&store, &data);
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&theirs)
        .unwrap();
    f.write_all_at(b"another producer's data", 0).unwrap();
    drop(f);

    let got = reader.result();
    assert!(
        got.as_ref().is_ok_and(|v| *v == data),
        "the reader got {}",
        {
            let r = got.map_err(|e| format!("errno {e}"));
            describe(&r, &data)
        }
    );
    assert!(
        wait_until(LIVELY, || store.store().stat_blob(&d).is_some()),
        "the blob was published"
    );
    assert_eq!(
        Sha256::of(&fs::read(store.store().blob_path(&d)).unwrap()),
        d,
        "the published blob hashes to its name"
    );
    assert_eq!(open_and_read(&mount.path("ours.gguf")).unwrap(), data);
    assert_eq!(
        fs::read(&theirs).unwrap(),
        b"another producer's data",
        "the other producer's partial is left to it"
    );
    store.assert_consistent();
}

// ---------------------------------------------------------------------------
// Promise 2: never write outside the store
// ---------------------------------------------------------------------------

#[test]
fn a_hard_link_planted_as_a_partial_is_never_written_and_the_file_outside_keeps_its_bytes() {
    let origin = Origin::start();
    let store = TestStore::new();
    let outside = store.root.parent().unwrap().join("outside");
    fs::create_dir_all(&outside).unwrap();
    // Shorter than the blob (a resume would append to it), longer (a
    // restart would truncate it), and one planted at the convention's name.
    let short = random_bytes(300_000, 1002);
    let long = random_bytes(300_000, 1003);
    let other = random_bytes(300_000, 1004);
    store.add_pending("short", &origin, &short);
    store.add_pending("long", &origin, &long);
    store.add_pending("other", &origin, &other);
    let plant = |name: &str, content: Vec<u8>, at: PathBuf| {
        let target = outside.join(name);
        fs::write(&target, &content).unwrap();
        fs::create_dir_all(at.parent().unwrap()).unwrap();
        fs::hard_link(&target, &at).unwrap();
        (target, content)
    };
    let planted = [
        plant(
            "short.bin",
            b"a file elsewhere".to_vec(),
            modelfs_partial(&store, &short),
        ),
        plant(
            "long.bin",
            random_bytes(400_000, 1005),
            modelfs_partial(&store, &long),
        ),
        plant(
            "other.bin",
            b"another file elsewhere".to_vec(),
            shared_partial(&store, &other),
        ),
    ];

    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    for (name, data) in [("short", &short), ("long", &long), ("other", &other)] {
        let r = open_read_within(&mount.path(&format!("{name}.gguf")))
            .unwrap_or_else(|| panic!("{name}: the open did not finish"));
        assert!(
            r.as_ref().is_ok_and(|v| v == data),
            "{name}: {}",
            describe(&r, data)
        );
    }
    for (target, content) in &planted {
        assert_eq!(
            fs::read(target).unwrap(),
            *content,
            "{} keeps its bytes",
            target.display()
        );
    }
    let log = mount.log();
    assert!(
        log.contains("links"),
        "the refusal to write a hard-linked partial is logged:\n{log}"
    );
    store.assert_consistent();
}

// ---------------------------------------------------------------------------
// Promise 5: hostile blob and partial files never hang anything
// ---------------------------------------------------------------------------

#[test]
fn a_fifo_as_a_partial_or_a_directory_as_a_blob_fails_the_open_promptly_and_nothing_spins() {
    let origin = Origin::start();
    let store = TestStore::new();
    let fifo = random_bytes(200_000, 1006);
    let shared_fifo = random_bytes(200_000, 1007);
    let dir = random_bytes(200_000, 1008);
    let blob_fifo = random_bytes(200_000, 1011);
    store.add_pending("fifo", &origin, &fifo);
    store.add_pending("sharedfifo", &origin, &shared_fifo);
    store.add_pending("dir", &origin, &dir);
    store.add_pending("blobfifo", &origin, &blob_fifo);
    let mkfifo = |p: PathBuf| {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let c = crate::common::sys::c_path(&p);
        // SAFETY: a valid C path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    };
    mkfifo(modelfs_partial(&store, &fifo));
    mkfifo(shared_partial(&store, &shared_fifo));
    let blob_dir = store.store().blob_path(&Sha256::of(&dir));
    fs::create_dir_all(blob_dir.join("inside")).unwrap();
    let blob_fifo_path = store.store().blob_path(&Sha256::of(&blob_fifo));
    mkfifo(blob_fifo_path.clone());

    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    for name in ["fifo", "dir", "blobfifo"] {
        for attempt in 1..=2 {
            let r = open_read_within(&mount.path(&format!("{name}.gguf")))
                .unwrap_or_else(|| panic!("{name}: open {attempt} did not finish"));
            assert_eq!(
                r,
                Err(format!("open: errno {}", libc::EIO)),
                "{name}: open {attempt} fails at the open, not later"
            );
        }
    }
    // The convention's partial belongs to other tools: a FIFO there changes
    // nothing for modelfs.
    let r = open_read_within(&mount.path("sharedfifo.gguf")).expect("the open finished");
    assert!(
        r.as_ref().is_ok_and(|v| *v == shared_fifo),
        "sharedfifo: {}",
        describe(&r, &shared_fifo)
    );
    assert!(
        wait_until(LIVELY, || busy_fetch_threads(&mount).is_empty()),
        "no fetch is left spinning: {:?}",
        busy_fetch_threads(&mount)
    );
    let log = mount.log();
    for path in [
        modelfs_partial(&store, &fifo),
        blob_dir.clone(),
        blob_fifo_path.clone(),
    ] {
        assert!(
            log.contains(&path.display().to_string()),
            "the log names {}:\n{log}",
            path.display()
        );
    }
    for name in ["dir.gguf", "blobfifo.gguf"] {
        assert_eq!(
            origin.stats(name).gets,
            0,
            "{name}: nothing is downloaded that could never be published"
        );
    }
    assert!(blob_dir.join("inside").is_dir(), "the folder is left alone");
    // Repaired, both are fetched and served.
    fs::remove_file(modelfs_partial(&store, &fifo)).unwrap();
    fs::remove_dir_all(&blob_dir).unwrap();
    fs::remove_file(&blob_fifo_path).unwrap();
    assert_eq!(open_and_read(&mount.path("fifo.gguf")).unwrap(), fifo);
    assert_eq!(open_and_read(&mount.path("dir.gguf")).unwrap(), dir);
    assert_eq!(
        open_and_read(&mount.path("blobfifo.gguf")).unwrap(),
        blob_fifo
    );
    store.assert_consistent();
}

// ---------------------------------------------------------------------------
// Promise 6: two names, one digest, two sources
// ---------------------------------------------------------------------------

#[test]
fn two_names_pinning_one_digest_open_through_the_healthy_source_when_the_other_url_is_dead() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(MIB, 1009);
    // "broken" sorts first and pins the blob at a URL that answers 404,
    // after a pause in which the open of "healthy" joins the same fetch.
    let dead = origin.url("gone/broken.gguf");
    store.write_manifest("broken", &dead, &data);
    store.add_pending("healthy", &origin, &data);
    origin.push_fault(
        "gone/broken.gguf",
        Fault::StallHeaders(Duration::from_secs(1)),
    );
    // Both sources dead: the error names each.
    let lost = random_bytes(MIB, 1010);
    let (dead1, dead2) = (origin.url("gone/lost1.gguf"), origin.url("gone/lost2.gguf"));
    store.write_manifest("lost1", &dead1, &lost);
    store.write_manifest("lost2", &dead2, &lost);

    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let first = Waiter::spawn(&mount.path("broken.gguf"));
    assert!(wait_until(LIVELY, || origin
        .stats_now("gone/broken.gguf")
        .gets
        >= 1));
    let second = Waiter::spawn(&mount.path("healthy.gguf"));
    for (name, w) in [("broken", first), ("healthy", second)] {
        let r = w.result().map_err(|e| format!("errno {e}"));
        assert!(
            r.as_ref().is_ok_and(|v| *v == data),
            "{name}: {}",
            describe(&r, &data)
        );
    }
    assert_eq!(origin.stats("healthy.gguf").gets, 1);
    let log = mount.log();
    let failed = log
        .lines()
        .find(|l| l.contains("\"broken\"") && l.contains("/gone/broken.gguf"))
        .unwrap_or_else(|| panic!("a log line names the failing model and URL:\n{log}"));
    assert!(failed.contains("404"), "{failed}");

    assert_eq!(
        open_and_read(&mount.path("lost1.gguf")).unwrap_err(),
        libc::EIO
    );
    let log = mount.log();
    for (model, url) in [("lost1", "/gone/lost1.gguf"), ("lost2", "/gone/lost2.gguf")] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("\"{model}\"")) && l.contains(url)),
            "the log names {model} and {url}:\n{log}"
        );
    }
    assert!(
        log.contains("so did 1 other source of this blob"),
        "the final error says the other source failed too:\n{log}"
    );
    store.assert_consistent();
}
