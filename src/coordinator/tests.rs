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
