//! `ModelFs` (what each kernel request means) over a coordinator with a
//! scripted source: opens of present, pending and failing models, the
//! `O_NONBLOCK` open, the state attribute through a download, and writes
//! refused, without FUSE, network or root.

use std::sync::mpsc;
use std::time::Duration;

use super::*;
use crate::coordinator::fake::{Script, Scripted};
use crate::digest::Sha256;
use crate::store::{Manifest, ModelName, Source, Store};

struct World {
    _dir: tempfile::TempDir,
    store: Store,
    source: Arc<Scripted>,
    fs: Arc<ModelFs>,
}

fn world(script: Script) -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(dir.path()).unwrap();
    let source = Scripted::new(script);
    let c = Coordinator::with_source(store.clone(), source.clone(), 2);
    let fs = Arc::new(ModelFs::new(c, 0, 0));
    World {
        _dir: dir,
        store,
        source,
        fs,
    }
}

/// Pins `bytes` as model `name` and shows it; its inode.
fn pin(w: &World, name: &str, bytes: &[u8]) -> u64 {
    let m = Manifest::new(
        ModelName::parse(name).unwrap(),
        "gguf",
        Sha256::of(bytes),
        bytes.len() as u64,
        Source::default(),
    );
    w.store.write_manifest(&m).unwrap();
    w.fs.refresh();
    w.fs.lookup(ROOT_INO, &format!("{name}.gguf")).unwrap().ino
}

fn open(w: &World, ino: u64, flags: i32) -> mpsc::Receiver<Result<Opened, FsError>> {
    let (tx, rx) = mpsc::channel();
    let caller = Caller { tid: 0, request: 1 };
    w.fs.open(ino, flags, caller, Box::new(move |r| tx.send(r).unwrap()));
    rx
}

fn state(w: &World, ino: u64) -> String {
    String::from_utf8(w.fs.getxattr(ino, xattr::STATE).unwrap()).unwrap()
}

fn read_all(w: &World, o: &Opened, len: usize) -> Vec<u8> {
    w.fs.read(o.fh, 0, len as u32).unwrap()
}

#[test]
fn a_pending_model_opens_once_its_bytes_are_verified_and_reads_them() {
    let data = b"a model".to_vec();
    let w = world(Script::Gated(data.clone()));
    let ino = pin(&w, "m", &data);
    assert_eq!(state(&w, ino), "pending");
    let rx = open(&w, ino, libc::O_RDONLY);
    assert!(rx.recv_timeout(Duration::from_millis(50)).is_err(), "waits");
    assert_eq!(state(&w, ino), "fetching");
    w.source.open_gate();
    let o = rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    assert_eq!(read_all(&w, &o, data.len()), data);
    assert_eq!(state(&w, ino), "present", "verified, still being published");
    w.source.open_gate();
    w.fs.release(o.fh);
    assert_eq!(w.fs.open_handles(), 0);
}

#[test]
fn a_present_model_opens_at_once_without_the_source() {
    let data = b"here already".to_vec();
    let w = world(Script::Fail);
    let ino = pin(&w, "m", &data);
    let mut f = w.store.open_partial(&Sha256::of(&data)).unwrap();
    std::io::Write::write_all(&mut f, &data).unwrap();
    w.store.publish_blob(&Sha256::of(&data), &f).unwrap();
    let o = open(&w, ino, libc::O_RDONLY).try_recv().unwrap().unwrap();
    assert_eq!(read_all(&w, &o, data.len()), data);
    assert_eq!(w.source.calls(), 0);
}

#[test]
fn an_open_during_an_eviction_of_its_blob_waits_off_the_request_loop() {
    let data = b"being evicted".to_vec();
    let d = Sha256::of(&data);
    let w = world(Script::Fail);
    let ino = pin(&w, "m", &data);
    let mut f = w.store.open_partial(&d).unwrap();
    std::io::Write::write_all(&mut f, &data).unwrap();
    w.store.publish_blob(&d, &f).unwrap();
    // What an eviction holds across its unlink.
    let evicting = w
        .store
        .try_evict_lock(&d)
        .unwrap()
        .expect("the lock is free");

    let rx = open(&w, ino, libc::O_RDONLY);
    // `open` returned without an answer: it did not wait on this thread
    // (it used to, up to 2 s, and then failed).
    assert!(matches!(rx.try_recv(), Err(mpsc::TryRecvError::Empty)));
    drop(evicting);
    let o = rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    assert_eq!(read_all(&w, &o, data.len()), data);
    w.fs.release(o.fh);
}

#[test]
fn a_nonblocking_open_of_a_pending_model_starts_the_fetch_and_says_eagain() {
    let data = b"later".to_vec();
    let w = world(Script::Gated(data.clone()));
    let ino = pin(&w, "m", &data);
    let r = open(&w, ino, libc::O_RDONLY | libc::O_NONBLOCK)
        .try_recv()
        .unwrap();
    assert_eq!(r.unwrap_err().errno(), libc::EAGAIN);
    assert_eq!(state(&w, ino), "fetching");
    w.source.open_gate();
    w.source.open_gate();
}

#[test]
fn a_failed_fetch_fails_the_open_with_eio_and_the_state_says_failed() {
    let w = world(Script::Fail);
    let ino = pin(&w, "m", b"never");
    let rx = open(&w, ino, libc::O_RDONLY);
    w.source.open_gate();
    let e = rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap_err();
    assert_eq!(e.errno(), libc::EIO);
    assert_eq!(state(&w, ino), "failed");
    let why = String::from_utf8(w.fs.getxattr(ino, xattr::ERROR).unwrap()).unwrap();
    assert!(why.contains("refused"), "{why}");
}

#[test]
fn writing_opens_and_the_root_are_refused_without_a_fetch() {
    let w = world(Script::Serve(b"x".to_vec()));
    let ino = pin(&w, "m", b"x");
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        let e = open(&w, ino, flags).try_recv().unwrap().unwrap_err();
        assert_eq!(e.errno(), libc::EROFS);
    }
    let e = open(&w, ROOT_INO, libc::O_RDONLY)
        .try_recv()
        .unwrap()
        .unwrap_err();
    assert_eq!(e.errno(), libc::EISDIR);
    assert_eq!(w.source.calls(), 0);
}

#[test]
fn a_model_published_after_its_open_was_answered_reads_present_without_a_refresh() {
    let data = b"published later".to_vec();
    let w = world(Script::Gated(data.clone()));
    let ino = pin(&w, "m", &data);
    let rx = open(&w, ino, libc::O_RDONLY);
    w.source.open_gate();
    let o = rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    w.source.open_gate();
    let d = Sha256::of(&data);
    let c = w.fs.coordinator().clone();
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while c.activity(&d).fetching && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(!c.activity(&d).fetching, "the fetch ended");
    // Its job, which said "verified", is gone; no refresh ran since.
    assert_eq!(state(&w, ino), "present");
    assert_eq!(
        w.fs.namespace().by_ino(ino).unwrap().present_size,
        Some(data.len() as u64)
    );
    assert_eq!(read_all(&w, &o, data.len()), data);
}

#[test]
fn an_inode_whose_blob_file_was_replaced_fails_estale_without_a_fetch() {
    let data = b"replaced".to_vec();
    let w = world(Script::Serve(data.clone()));
    let ino = pin(&w, "m", &data);
    let d = Sha256::of(&data);
    let publish = |w: &World| {
        w.store.publish_bytes(&data);
    };
    publish(&w);
    let o = open(&w, ino, libc::O_RDONLY).try_recv().unwrap().unwrap();
    w.fs.release(o.fh);
    // `modelfs verify` quarantined it and a pull put the bytes back: the
    // same digest in another file.
    w.store.quarantine_blob(&d, "test").unwrap();
    publish(&w);
    let e = open(&w, ino, libc::O_RDONLY)
        .try_recv()
        .unwrap()
        .unwrap_err();
    assert_eq!(e.errno(), libc::ESTALE);
    assert_eq!(w.source.calls(), 0);
    let new = w.fs.lookup(ROOT_INO, "m.gguf").unwrap().ino;
    assert_ne!(new, ino, "the name has a new inode");
    let rx = open(&w, new, libc::O_RDONLY);
    assert!(rx.recv_timeout(Duration::from_secs(10)).unwrap().is_ok());
}

/// A world serving each of `shards` (bytes per shard) under its own digest,
/// the shards pinned as the set `m-0000k-of-0000N`; their inodes.
fn pin_set(shards: &[Vec<u8>]) -> (World, Vec<u64>) {
    let w = world(Script::Each(Arc::new(shards.to_vec())));
    let n = shards.len() as u32;
    let inos = (1..=n)
        .zip(shards)
        .map(|(k, b)| pin(&w, &crate::store::set::ShardName::format("m", k, n), b))
        .collect();
    (w, inos)
}

fn shard_bytes(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|k| format!("shard {k}").into_bytes()).collect()
}

fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn opening_one_shard_fetches_its_missing_siblings_but_waits_only_for_its_own() {
    let shards = shard_bytes(3);
    let (w, inos) = pin_set(&shards);
    // Shard 2 is on disk already: nothing fetches it again.
    w.store.publish_bytes(&shards[1]);
    w.source.hold(Sha256::of(&shards[2]));
    let rx = open(&w, inos[0], libc::O_RDONLY);
    let o = rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    assert_eq!(read_all(&w, &o, shards[0].len()), shards[0]);
    assert!(
        wait_for(|| w.source.calls() == 2),
        "{:?}",
        w.source.asked.lock()
    );
    assert_eq!(
        w.source.asked.lock()[0],
        "m-00001-of-00003",
        "its own first"
    );
    assert_eq!(state(&w, inos[2]), "fetching", "shard 3 is held");
    w.source.release(&Sha256::of(&shards[2]));
    assert!(wait_for(|| state(&w, inos[2]) == "present"));
    let o3 = open(&w, inos[2], libc::O_RDONLY)
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    assert_eq!(read_all(&w, &o3, shards[2].len()), shards[2]);
    assert_eq!(w.source.calls(), 2, "the open found shard 3 fetched");
}

#[test]
fn the_siblings_of_a_large_set_queue_within_the_fetch_concurrency() {
    let shards = shard_bytes(6);
    let (w, inos) = pin_set(&shards);
    for s in &shards {
        w.source.hold(Sha256::of(s));
    }
    let rx = open(&w, inos[3], libc::O_RDONLY);
    // Two workers and the one kept for small blobs.
    assert!(wait_for(|| w.source.running.load(Ordering::SeqCst) == 3));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(w.source.calls(), 3, "the others wait in the queue");
    assert!(rx.try_recv().is_err(), "shard 4 is held");
    for s in &shards {
        w.source.release(&Sha256::of(s));
    }
    rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    assert!(wait_for(|| w.source.calls() == 6));
    assert!(w.source.most_running.load(Ordering::SeqCst) <= 3);
    assert_eq!(w.source.asked.lock()[0], "m-00004-of-00006");
}

#[test]
fn only_shards_of_the_same_set_are_siblings() {
    let bytes = shard_bytes(4);
    let w = world(Script::Each(Arc::new(bytes.clone())));
    let one = pin(&w, "m-00001-of-00002", &bytes[0]);
    pin(&w, "m-00002-of-00003", &bytes[1]);
    pin(&w, "m", &bytes[2]);
    pin(&w, "n-00002-of-00002", &bytes[3]);
    open(&w, one, libc::O_RDONLY)
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(*w.source.asked.lock(), ["m-00001-of-00002"]);
}
