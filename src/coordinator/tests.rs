//! The coordinator against a scripted [`Source`]: single flight, parked
//! waits answered at verification, errors, interrupts, the mismatch
//! back-off, shutdown and the bounded workers, in milliseconds, without
//! network, TLS, FUSE or root.

use std::sync::mpsc;

use super::fake::{Script, Scripted};
use super::*;
use crate::store::{ModelName, Source as ManifestSource};

/// Polls `cond` for up to 10 s.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    cond()
}

struct World {
    _dir: tempfile::TempDir,
    store: Store,
    source: Arc<Scripted>,
    c: Arc<Coordinator>,
}

fn world(script: Script, workers: usize) -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(dir.path()).unwrap();
    let source = Scripted::new(script);
    let c = Coordinator::with_source(store.clone(), source.clone(), workers);
    World {
        _dir: dir,
        store,
        source,
        c,
    }
}

fn manifest(name: &str, bytes: &[u8]) -> Manifest {
    Manifest::new(
        ModelName::parse(name).unwrap(),
        "gguf",
        Sha256::of(bytes),
        bytes.len() as u64,
        ManifestSource::default(),
    )
}

/// A caller the watchdog cannot see (pid 0), so only interrupts end it.
fn caller(request: u64) -> Caller {
    Caller { tid: 0, request }
}

/// Starts a wait; its result arrives on the returned channel.
fn wait(
    c: &Arc<Coordinator>,
    m: &Manifest,
    request: u64,
) -> mpsc::Receiver<Result<Ready, WaitError>> {
    let (tx, rx) = mpsc::channel();
    c.wait(
        m,
        JobKind::Fetch,
        caller(request),
        &Vec::new,
        Box::new(move |r| tx.send(r).unwrap()),
    );
    rx
}

fn got(rx: &mpsc::Receiver<Result<Ready, WaitError>>) -> Result<Ready, WaitError> {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the wait was answered")
}

/// The bytes a ready wait can read (with pread: waits share one file).
fn bytes_of(store: &Store, m: &Manifest, r: Ready) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = match r {
        Ready::Verified(f) => f,
        Ready::Published => Arc::new(store.open_blob(&m.blob).unwrap()),
    };
    let mut v = vec![0; f.metadata().unwrap().len() as usize];
    f.read_exact_at(&mut v, 0).unwrap();
    v
}

#[test]
fn many_waits_for_one_blob_share_one_fetch_and_all_get_its_bytes() {
    let data = b"weights".to_vec();
    let w = world(Script::Gated(data.clone()), 4);
    let m = manifest("m", &data);
    let rxs: Vec<_> = (0..20).map(|i| wait(&w.c, &m, i)).collect();
    w.source.open_gate();
    w.source.open_gate();
    for rx in &rxs {
        let r = got(rx).expect("ready");
        assert_eq!(bytes_of(&w.store, &m, r), data);
    }
    assert_eq!(w.source.calls(), 1);
    assert!(eventually(|| !w.c.activity(&m.blob).fetching));
}

#[test]
fn waits_are_answered_at_verification_and_a_late_join_gets_the_same_file_at_once() {
    let data = b"verified early".to_vec();
    let w = world(Script::Gated(data.clone()), 2);
    let m = manifest("m", &data);
    let first = wait(&w.c, &m, 1);
    assert!(
        first.recv_timeout(Duration::from_millis(50)).is_err(),
        "parked"
    );
    assert!(w.c.activity(&m.blob).fetching);
    w.source.open_gate(); // hand over, then hold before publishing
    let Ok(Ready::Verified(a)) = got(&first) else {
        panic!("the first wait gets the verified file")
    };
    assert!(w.c.activity(&m.blob).verified);
    let late = wait(&w.c, &m, 2);
    let Ok(Ok(Ready::Verified(b))) = late.recv_timeout(Duration::from_millis(50)) else {
        panic!("a wait in the window is answered at once")
    };
    assert!(Arc::ptr_eq(&a, &b));
    assert!(!w.store.blob_path(&m.blob).exists(), "not yet published");
    w.source.open_gate();
    assert!(eventually(|| w.store.blob_path(&m.blob).exists()));
    assert_eq!(w.source.calls(), 1);
}

#[test]
fn a_failed_fetch_fails_every_waiter_once_and_the_next_wait_tries_again() {
    let w = world(Script::Fail, 2);
    let m = manifest("m", b"x");
    let rxs: Vec<_> = (0..3).map(|i| wait(&w.c, &m, i)).collect();
    w.source.open_gate();
    for rx in &rxs {
        match got(rx) {
            Err(WaitError::Failed(e)) => assert!(e.to_string().contains("refused"), "{e}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(w.source.calls(), 1);
    assert!(w.c.activity(&m.blob).last_error.is_some());
    *w.source.script.lock() = Script::Serve(b"x".to_vec());
    assert!(got(&wait(&w.c, &m, 9)).is_ok());
    assert_eq!(w.source.calls(), 2);
    assert!(w.c.activity(&m.blob).last_error.is_none());
}

#[test]
fn an_interrupted_wait_ends_alone_and_the_fetch_goes_on_for_the_others() {
    let data = b"long".to_vec();
    let w = world(Script::Gated(data.clone()), 2);
    let m = manifest("m", &data);
    let killed = wait(&w.c, &m, 7);
    let patient = wait(&w.c, &m, 8);
    // The kernel's interrupt of request 7, for a task the daemon cannot
    // see: that wait ends at once.
    assert_eq!(w.c.interrupt(7), Interrupted::Ended);
    assert!(matches!(got(&killed), Err(WaitError::Interrupted)));
    assert_eq!(w.c.interrupt(7), Interrupted::Unknown, "answered already");
    assert_eq!(w.c.interrupt(99), Interrupted::Unknown, "never parked");
    w.source.open_gate();
    w.source.open_gate();
    assert_eq!(bytes_of(&w.store, &m, got(&patient).unwrap()), data);
    assert_eq!(w.source.calls(), 1);
}

#[test]
fn wrong_bytes_fail_later_waits_at_once_until_the_manifest_changes() {
    let w = world(Script::WrongBytes, 2);
    let m = manifest("m", b"pinned");
    assert!(matches!(got(&wait(&w.c, &m, 1)), Err(WaitError::Failed(_))));
    for i in 2..6 {
        assert!(matches!(got(&wait(&w.c, &m, i)), Err(WaitError::Failed(_))));
    }
    assert_eq!(w.source.calls(), 1, "no download while backed off");
    // The same blob under another name is another manifest: tried at once.
    *w.source.script.lock() = Script::Serve(b"pinned".to_vec());
    let other = manifest("other", b"pinned");
    assert!(got(&wait(&w.c, &other, 9)).is_ok());
    assert_eq!(w.source.calls(), 2);
    // And once the blob is published the back-off is history.
    assert!(eventually(|| w.c.backed_off(&m).is_none()));
}

#[test]
fn shutdown_fails_every_parked_wait_and_every_later_one() {
    let w = world(Script::Gated(b"x".to_vec()), 2);
    let m = manifest("m", b"x");
    let parked = wait(&w.c, &m, 1);
    w.c.shutdown();
    assert!(matches!(got(&parked), Err(WaitError::ShuttingDown)));
    assert!(matches!(
        got(&wait(&w.c, &m, 2)),
        Err(WaitError::ShuttingDown)
    ));
}

#[test]
fn fifty_blobs_at_once_run_on_the_bounded_workers() {
    let w = world(Script::Gated(Vec::new()), 2);
    let ms: Vec<_> = (0..50)
        .map(|i| manifest(&format!("m{i}"), format!("blob {i}").as_bytes()))
        .collect();
    let rxs: Vec<_> = ms
        .iter()
        .enumerate()
        .map(|(i, m)| wait(&w.c, m, i as u64))
        .collect();
    assert!(eventually(|| w.source.running.load(Ordering::SeqCst) == 3));
    // Two general workers and the one kept for small blobs (all are).
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(w.source.most_running.load(Ordering::SeqCst), 3);
    for _ in 0..100 {
        w.source.open_gate();
    }
    for rx in &rxs {
        // Empty scripted bytes do not match these digests' sizes; what
        // matters here is that every wait is answered.
        let _ = got(rx);
    }
    assert!(w.source.most_running.load(Ordering::SeqCst) <= 3);
}

#[test]
fn a_stopping_mount_waits_for_verified_bytes_to_be_published_and_not_for_downloads() {
    let data = b"verified, not yet durable".to_vec();
    let w = world(Script::Gated(data.clone()), 2);
    let m = manifest("m", &data);
    let other = manifest("other", b"still downloading");
    let rx = wait(&w.c, &m, 1);
    let _downloading = wait(&w.c, &other, 2);
    assert!(eventually(|| w.source.running.load(Ordering::SeqCst) == 2));
    w.source.open_gate(); // one of the two gets its bytes verified
    let (verified, held) = match rx.recv_timeout(Duration::from_millis(300)) {
        Ok(r) => (r, &m),
        Err(_) => (got(&_downloading), &other),
    };
    assert!(matches!(verified, Ok(Ready::Verified(_))));
    w.c.shutdown();
    assert!(
        !w.c.wait_for_publishing(Duration::from_millis(300)),
        "the verified one is not published yet"
    );
    w.source.open_gate();
    assert!(w.c.wait_for_publishing(Duration::from_secs(10)));
    assert!(w.store.blob_path(&held.blob).exists());
}

// The coordinator's one entry point for opens (`open.rs`).

/// Opens `m` as the mount does: find, then open; the answer arrives on the
/// returned channel.
fn open(
    c: &Arc<Coordinator>,
    m: &Manifest,
    caller: Caller,
    nonblocking: bool,
) -> mpsc::Receiver<Result<Blob, WaitError>> {
    let (tx, rx) = mpsc::channel();
    let found = c.find(&m.blob).expect("the blob path can be looked at");
    let want = Want {
        manifest: m,
        caller,
        nonblocking,
        pinned_by: &Vec::new,
    };
    c.open(found, want, Box::new(move |r| tx.send(r).unwrap()));
    rx
}

fn answer(rx: &mpsc::Receiver<Result<Blob, WaitError>>) -> Result<Blob, WaitError> {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the open was answered")
}

/// Publishes `bytes` as another process (`modelfs pull`) would.
fn put(store: &Store, bytes: &[u8]) {
    store.publish_bytes(bytes);
}

/// The calling thread, as the kernel would name it in an open request.
fn this_task(request: u64) -> Caller {
    // `/proc/thread-self` reads `<pid>/task/<tid>`.
    let link = std::fs::read_link("/proc/thread-self").unwrap();
    let tid = link.file_name().unwrap().to_str().unwrap().parse().unwrap();
    Caller { tid, request }
}

#[test]
fn an_open_answered_before_publication_is_told_so_and_the_publication_is_reported_after() {
    let data = b"handed over early".to_vec();
    let w = world(Script::Gated(data.clone()), 2);
    let m = manifest("m", &data);
    let first = open(&w.c, &m, caller(1), false);
    w.source.open_gate(); // verified; held before publishing
    let early = answer(&first).expect("answered at verification");
    assert!(!early.published, "not at the blob path yet");
    assert!(w.c.take_published().is_empty(), "nothing published yet");
    // An open in the window finds nothing at the path and gets the same
    // file at once.
    let late = answer(&open(&w.c, &m, caller(2), false)).unwrap();
    assert!(Arc::ptr_eq(&early.file, &late.file) && !late.published);

    w.source.open_gate();
    assert!(eventually(|| !w.c.activity(&m.blob).fetching));
    // The job is gone: the publication must be waiting to be taken.
    let published = w.c.take_published();
    assert_eq!(
        published,
        [Published {
            digest: m.blob,
            file_id: early.file_id(),
            size: data.len() as u64,
        }],
        "the published file is the one handed over"
    );
    assert!(w.c.take_published().is_empty(), "taken once");
    let now = answer(&open(&w.c, &m, caller(3), false)).unwrap();
    assert!(now.published, "at its path now");
    assert_eq!(now.file_id(), early.file_id());
    assert_eq!(w.source.calls(), 1);
}

#[test]
fn a_present_blob_is_answered_on_the_calling_thread_and_a_changed_one_is_hashed_first() {
    let data = b"present".to_vec();
    let w = world(Script::Fail, 2);
    let m = manifest("m", &data);
    put(&w.store, &data);
    let rx = open(&w.c, &m, caller(1), false);
    let blob = rx
        .try_recv()
        .expect("answered before open returned")
        .unwrap();
    assert!(blob.published);
    // Its stamps move (bytes unchanged): the next open waits for a hash
    // and gets the file at the path, never the source.
    let f = std::fs::File::options()
        .write(true)
        .open(w.store.blob_path(&m.blob))
        .unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
    let rechecked = answer(&open(&w.c, &m, caller(2), false)).unwrap();
    assert_eq!(rechecked.file_id(), blob.file_id());
    assert_eq!(
        w.source.calls(),
        0,
        "a recheck never downloads intact bytes"
    );
    assert!(
        open(&w.c, &m, caller(3), false).try_recv().unwrap().is_ok(),
        "recorded again: answered at once"
    );
}

#[test]
fn wrong_bytes_are_fetched_again_once_the_back_off_is_over() {
    let w = world(Script::WrongBytes, 2);
    w.c.set_mismatch_backoff(Duration::from_millis(300));
    let m = manifest("m", b"pinned");
    assert!(matches!(
        answer(&open(&w.c, &m, caller(1), false)),
        Err(WaitError::Failed(_))
    ));
    assert!(matches!(
        answer(&open(&w.c, &m, caller(2), false)),
        Err(WaitError::Failed(_))
    ));
    // A non-blocking open during the back-off starts nothing either.
    assert!(matches!(
        answer(&open(&w.c, &m, caller(3), true)),
        Err(WaitError::WouldBlock)
    ));
    assert_eq!(w.source.calls(), 1, "backed off");
    std::thread::sleep(Duration::from_millis(350));
    *w.source.script.lock() = Script::Serve(b"pinned".to_vec());
    assert!(answer(&open(&w.c, &m, caller(4), false)).is_ok());
    assert_eq!(w.source.calls(), 2, "tried again after the back-off");
}

#[test]
fn without_a_back_off_every_open_after_wrong_bytes_downloads_again() {
    let w = world(Script::WrongBytes, 2);
    w.c.set_mismatch_backoff(Duration::ZERO);
    let m = manifest("m", b"pinned");
    for i in 0..3 {
        assert!(matches!(
            answer(&open(&w.c, &m, caller(i), false)),
            Err(WaitError::Failed(_))
        ));
    }
    assert_eq!(w.source.calls(), 3);
}

#[test]
fn a_failure_is_forgotten_once_another_process_published_the_blob() {
    let w = world(Script::WrongBytes, 2);
    let m = manifest("m", b"pinned");
    assert!(answer(&open(&w.c, &m, caller(1), false)).is_err());
    assert!(w.c.activity(&m.blob).last_error.is_some());
    put(&w.store, b"pinned");
    assert!(w.c.activity(&m.blob).last_error.is_none());
    assert!(w.c.backed_off(&m).is_none(), "the back-off is lifted too");
    assert!(answer(&open(&w.c, &m, caller(2), false)).unwrap().published);
    assert_eq!(w.source.calls(), 1);
}

#[test]
fn an_interrupted_open_waiting_for_a_recheck_ends_alone_and_the_hash_goes_on() {
    let data = b"rechecked".to_vec();
    let w = world(Script::Fail, 2);
    let m = manifest("m", &data);
    put(&w.store, &data);
    assert!(answer(&open(&w.c, &m, caller(1), false)).is_ok());
    let path = w.store.blob_path(&m.blob);
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
    // Another process holds the model's lock: the recheck waits for it.
    let held = crate::store::lock::try_lock(&w.store.lock_path(&m.name))
        .unwrap()
        .expect("the lock is free");
    let killed = open(&w.c, &m, caller(7), false);
    let patient = open(&w.c, &m, caller(8), false);
    assert!(eventually(|| w.c.activity(&m.blob).waiters == 2));
    assert_eq!(w.c.interrupt(7), Interrupted::Ended);
    assert!(matches!(answer(&killed), Err(WaitError::Interrupted)));
    assert!(
        patient.recv_timeout(Duration::from_millis(50)).is_err(),
        "still parked"
    );
    drop(held);
    assert!(answer(&patient).is_ok());
    assert_eq!(w.source.calls(), 0);
}

#[test]
fn an_interrupt_for_a_task_without_a_stop_signal_keeps_it_waiting() {
    let data = b"resized terminal".to_vec();
    let w = world(Script::Gated(data.clone()), 2);
    let m = manifest("m", &data);
    let rx = open(&w.c, &m, this_task(5), false);
    assert!(eventually(|| w.c.activity(&m.blob).waiters == 1));
    assert_eq!(w.c.interrupt(5), Interrupted::KeptWaiting);
    std::thread::sleep(2 * WATCHDOG_PERIOD);
    assert!(
        rx.try_recv().is_err(),
        "neither the interrupt nor the watchdog ended it"
    );
    w.source.open_gate();
    assert!(answer(&rx).is_ok());
    w.source.open_gate();
}

#[test]
fn the_watchdog_ends_the_wait_of_a_task_that_is_gone_and_the_fetch_finishes_anyway() {
    let data = b"nobody waits".to_vec();
    let w = world(Script::Gated(data.clone()), 2);
    let m = manifest("m", &data);
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let gone = child.id();
    child.wait().unwrap();
    let rx = open(
        &w.c,
        &m,
        Caller {
            tid: gone,
            request: 1,
        },
        false,
    );
    assert!(matches!(answer(&rx), Err(WaitError::Interrupted)));
    assert!(w.c.activity(&m.blob).fetching, "the fetch goes on");
    w.source.open_gate();
    w.source.open_gate();
    assert!(eventually(|| w.store.blob_path(&m.blob).exists()));
    assert_eq!(w.source.calls(), 1);
}

#[test]
fn shutdown_answers_every_parked_open_and_queued_jobs_never_reach_the_source() {
    // One general worker and the one for small blobs: two run, one queues.
    let w = world(Script::Gated(b"x".to_vec()), 1);
    let ms: Vec<_> = (0..3)
        .map(|i| manifest(&format!("m{i}"), format!("blob {i}").as_bytes()))
        .collect();
    let rxs: Vec<_> = ms
        .iter()
        .enumerate()
        .map(|(i, m)| open(&w.c, m, caller(i as u64), false))
        .collect();
    assert!(eventually(|| w.source.running.load(Ordering::SeqCst) == 2));
    w.c.shutdown();
    for rx in &rxs {
        assert!(matches!(answer(rx), Err(WaitError::ShuttingDown)));
    }
    // The running fetches see the cancel; the queued one ends unstarted.
    assert!(eventually(|| ms
        .iter()
        .all(|m| !w.c.activity(&m.blob).fetching)));
    assert_eq!(w.source.calls(), 2);
    assert!(w.c.wait_for_publishing(Duration::from_secs(1)));
    // Later opens, blocking or not, start nothing.
    assert!(matches!(
        answer(&open(&w.c, &ms[0], caller(9), true)),
        Err(WaitError::WouldBlock)
    ));
    assert!(matches!(
        answer(&open(&w.c, &ms[0], caller(10), false)),
        Err(WaitError::ShuttingDown)
    ));
    assert!(!w.c.activity(&ms[0].blob).fetching);
    assert_eq!(w.source.calls(), 2);
}
