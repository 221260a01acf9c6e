//! The fetch pipeline against a real HTTPS origin that misbehaves on
//! purpose: every test builds a `Fetcher` the way the CLI does (trusting the
//! origin's throwaway CA, with a short stall timeout and a fast retry
//! policy), runs `Fetcher::fetch` on a store in a temp dir, and checks what a
//! user would notice: the error kind and message, what the origin was asked
//! for, and what ended up in the store.

// `FetchError` is large on purpose (see src/lib.rs); tests pass it around.
#![allow(clippy::result_large_err)]

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Fault, Origin, TestStore, hf, random_bytes, wait_until};
use modelfs::digest::Sha256;
use modelfs::fetch::{
    FetchError, FetchErrorKind, FetchJob, FetchOutcome, Fetcher, Http, HttpConfig, Phase, Progress,
    RetryPolicy,
};
use modelfs::store::{BlobState, Manifest, ModelName, Source, lock};

const STALL: Duration = Duration::from_secs(1);

pub(crate) fn config(origin: &Origin) -> HttpConfig {
    HttpConfig {
        ca_file: Some(origin.ca_pem_path().into()),
        stall_timeout: STALL,
        connect_timeout: Duration::from_secs(5),
        ..HttpConfig::default()
    }
}

/// Retries quickly: a test that waits has a reason to (Retry-After, stalls).
pub(crate) fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        max_retry_after: Duration::from_secs(10),
        ..RetryPolicy::default()
    }
}

pub(crate) fn fetcher(origin: &Origin) -> Fetcher {
    fetcher_with(config(origin))
}

pub(crate) fn fetcher_with(cfg: HttpConfig) -> Fetcher {
    Fetcher::new(Http::new(cfg).expect("http client"), fast_policy())
}

pub(crate) fn fetch(f: &Fetcher, ts: &TestStore, m: &Manifest) -> Result<FetchOutcome, FetchError> {
    let never = AtomicBool::new(false);
    f.fetch(
        &ts.store(),
        &FetchJob {
            manifest: m,
            sources: Vec::new(),
            write_manifest: false,
            progress: None,
            cancel: &never,
        },
    )
}

pub(crate) fn path_of(name: &str) -> String {
    format!("{name}.gguf")
}

/// A fresh origin and store with one pending model `name`: `len` bytes
/// made from `seed`, served at `<name>.gguf`, whose first requests the
/// origin answers with `faults`, one each, in order.
pub(crate) fn pending(
    name: &str,
    len: usize,
    seed: u64,
    faults: Vec<Fault>,
) -> (Origin, TestStore, Vec<u8>, Manifest) {
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = random_bytes(len, seed);
    let m = ts.add_pending(name, &origin, &bytes);
    for fault in faults {
        origin.push_fault(&path_of(name), fault);
    }
    (origin, ts, bytes, m)
}

/// The model's blob is in place, with exactly `bytes`.
pub(crate) fn assert_present(ts: &TestStore, m: &Manifest, bytes: &[u8]) {
    let s = ts.store();
    assert_eq!(
        s.blob_state(&m.blob),
        BlobState::Present(bytes.len() as u64)
    );
    assert!(
        fs::read(s.blob_path(&m.blob)).unwrap() == bytes,
        "blob bytes differ from what the origin serves"
    );
    assert!(
        !s.partial_path(&m.blob).exists(),
        "the partial is gone once the blob is published"
    );
}

/// The model did not arrive: no blob, and the pending manifest is intact.
pub(crate) fn assert_still_pending(ts: &TestStore, m: &Manifest) {
    let s = ts.store();
    assert!(
        !s.blob_path(&m.blob).exists(),
        "no blob may appear at the digest path after a failure"
    );
    let on_disk = s.read_manifest(&m.name).unwrap().expect("manifest kept");
    assert_eq!(
        on_disk.to_json_bytes(),
        m.to_json_bytes(),
        "the pending manifest stays as it was"
    );
    assert_ne!(
        s.blob_state(&m.blob),
        BlobState::Partial(0),
        "a failure before the first byte leaves no empty partial (it reads as a started download)"
    );
}

#[test]
fn a_clean_fetch_downloads_once_and_publishes_the_verified_blob() {
    let (origin, ts, bytes, m) = pending("clean", 1 << 20, 1, vec![]);

    let out = fetch(&fetcher(&origin), &ts, &m).expect("fetch");

    assert_eq!(
        out,
        FetchOutcome::Downloaded {
            transferred: bytes.len() as u64,
            resumed_from: 0
        }
    );
    assert_present(&ts, &m, &bytes);
    let st = origin.stats(&path_of("clean"));
    assert_eq!((st.gets, st.range_gets), (1, 0));
    // A second fetch finds the blob and does not touch the network.
    assert_eq!(
        fetch(&fetcher(&origin), &ts, &m).unwrap(),
        FetchOutcome::AlreadyPresent {
            waited_for_lock: false
        }
    );
    assert_eq!(origin.stats(&path_of("clean")).gets, 1);
    ts.assert_consistent();
}

#[test]
fn a_dropped_connection_resumes_with_a_range_request() {
    let (origin, ts, bytes, m) = pending("dropped", 1 << 20, 2, vec![Fault::DropAt(300_000)]);

    let out = fetch(&fetcher(&origin), &ts, &m).expect("fetch resumes");

    assert_present(&ts, &m, &bytes);
    let st = origin.stats(&path_of("dropped"));
    assert_eq!(st.gets, 2, "one drop, one resume");
    assert_eq!(
        st.range_headers,
        vec![None, Some("bytes=300000-".to_string())]
    );
    assert_eq!(
        st.bytes_sent,
        bytes.len() as u64,
        "only the rest was sent again"
    );
    assert_eq!(
        out,
        FetchOutcome::Downloaded {
            transferred: bytes.len() as u64,
            resumed_from: 0
        }
    );
    ts.assert_consistent();
}

#[test]
fn a_stall_longer_than_the_stall_timeout_is_abandoned_and_retried() {
    let (origin, ts, bytes, m) = pending(
        "stalled",
        1 << 20,
        3,
        vec![Fault::StallAt(200_000, Duration::from_secs(6))],
    );

    let t0 = Instant::now();
    fetch(&fetcher(&origin), &ts, &m).expect("fetch succeeds after the stall");
    let took = t0.elapsed();

    assert_present(&ts, &m, &bytes);
    assert!(
        took >= STALL.mul_f32(0.9),
        "the stall was noticed after the stall timeout, not before ({took:?})"
    );
    let st = origin.stats_now(&path_of("stalled"));
    assert_eq!(st.gets, 2);
    assert_eq!(st.range_headers[1].as_deref(), Some("bytes=200000-"));
    ts.assert_consistent();
}

#[test]
fn a_flipped_byte_fails_with_a_digest_mismatch_and_quarantines_the_bytes() {
    let (origin, ts, bytes, m) = pending("flipped", 1 << 20, 4, vec![Fault::FlipByte(123_456)]);
    let mut served = bytes.clone();
    served[123_456] ^= 1;

    let err = fetch(&fetcher(&origin), &ts, &m).expect_err("a flipped byte must fail");

    let FetchErrorKind::DigestMismatch {
        expected,
        actual,
        quarantined,
    } = &err.kind
    else {
        panic!("expected DigestMismatch, got {err}");
    };
    assert_eq!(*expected, m.blob);
    assert_eq!(*actual, Sha256::of(&served));
    let msg = err.to_string();
    for needle in [
        "\"flipped\"".to_string(),
        origin.url(&path_of("flipped")),
        m.blob.to_hex(),
        Sha256::of(&served).to_hex(),
    ] {
        assert!(msg.contains(&needle), "{msg:?} should mention {needle}");
    }
    let q = quarantined.as_ref().expect("the bytes were quarantined");
    assert!(
        q.starts_with(ts.store().quarantine_dir()),
        "{}",
        q.display()
    );
    assert_eq!(ts.quarantined(), vec![q.clone()]);
    assert!(
        fs::read(q).unwrap() == served,
        "quarantine keeps the bad bytes"
    );
    assert_still_pending(&ts, &m);
    assert_eq!(
        origin.stats(&path_of("flipped")).gets,
        1,
        "a fresh download that mismatches is not retried"
    );
    ts.assert_consistent();
}

#[test]
fn two_mismatches_of_one_model_in_the_same_second_keep_both_quarantined_files() {
    let (origin, ts, bytes, m) = pending(
        "twice",
        256 << 10,
        5,
        vec![Fault::FlipByte(10), Fault::FlipByte(20)],
    );
    let f = fetcher(&origin);

    let a = fetch(&f, &ts, &m).expect_err("first mismatch");
    let b = fetch(&f, &ts, &m).expect_err("second mismatch");

    assert!(matches!(a.kind, FetchErrorKind::DigestMismatch { .. }));
    assert!(matches!(b.kind, FetchErrorKind::DigestMismatch { .. }));
    let q = ts.quarantined();
    assert_eq!(q.len(), 2, "both quarantined files are kept: {q:?}");
    let mut contents: Vec<Vec<u8>> = q.iter().map(|p| fs::read(p).unwrap()).collect();
    contents.sort();
    let (mut one, mut two) = (bytes.clone(), bytes.clone());
    one[10] ^= 1;
    two[20] ^= 1;
    let mut want = vec![one, two];
    want.sort();
    assert!(
        contents == want,
        "each file holds the bytes of its own attempt"
    );
    assert_still_pending(&ts, &m);
    ts.assert_consistent();
}

#[test]
fn a_content_length_other_than_the_manifest_size_fails_fast_after_one_request() {
    let (origin, ts, bytes, m) = pending("wronglen", 512 << 10, 6, vec![]);
    let size = bytes.len() as u64;
    origin.set_persistent_fault(
        &path_of("wronglen"),
        Some(Fault::ContentLength(size - 1000)),
    );

    let err = fetch(&fetcher(&origin), &ts, &m).expect_err("wrong length must fail");

    assert!(
        matches!(
            err.kind,
            FetchErrorKind::LengthMismatch { expected, announced }
                if expected == size && announced == size - 1000
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&size.to_string()), "{err}");
    assert_eq!(origin.stats(&path_of("wronglen")).gets, 1, "not retried");
    assert_still_pending(&ts, &m);
    ts.assert_consistent();
}

#[test]
fn a_server_error_is_retried_and_the_next_answer_succeeds() {
    let (origin, ts, bytes, m) = pending("flaky", 512 << 10, 7, vec![Fault::Status(500)]);

    fetch(&fetcher(&origin), &ts, &m).expect("the retry succeeds");

    assert_present(&ts, &m, &bytes);
    let st = origin.stats(&path_of("flaky"));
    assert_eq!(st.statuses, vec![500, 200]);
    ts.assert_consistent();
}

#[test]
fn a_missing_file_fails_fast_after_exactly_one_request() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = random_bytes(256 << 10, 8);
    // The manifest points at a path the origin does not serve.
    let m = ts.write_manifest("missing", &origin.url("missing.gguf"), &bytes);

    let err = fetch(&fetcher(&origin), &ts, &m).expect_err("404 must fail");

    assert!(
        matches!(err.kind, FetchErrorKind::Status { code: 404, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("404"), "{err}");
    assert_eq!(origin.stats("missing.gguf").gets, 1);
    assert_still_pending(&ts, &m);
    ts.assert_consistent();
}

#[test]
fn unauthorized_and_forbidden_answers_fail_fast_and_suggest_a_token() {
    let origin = Origin::start();
    let ts = TestStore::new();
    for (name, code) in [("gated401", 401u16), ("gated403", 403)] {
        let bytes = random_bytes(256 << 10, u64::from(code));
        let m = ts.add_pending(name, &origin, &bytes);
        origin.set_persistent_fault(&path_of(name), Some(Fault::Status(code)));

        let err = fetch(&fetcher(&origin), &ts, &m).expect_err("must fail");

        assert!(
            matches!(err.kind, FetchErrorKind::Status { code: c, .. } if c == code),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&code.to_string()) && msg.contains("HF_TOKEN"),
            "{msg}"
        );
        assert_eq!(
            origin.stats(&path_of(name)).gets,
            1,
            "{code} is not retried"
        );
        assert_still_pending(&ts, &m);
    }
    ts.assert_consistent();
}

#[test]
fn too_many_requests_waits_for_retry_after_then_succeeds() {
    let (origin, ts, bytes, m) = pending(
        "busy",
        256 << 10,
        9,
        vec![Fault::TooManyRequests {
            retry_after_secs: 2,
        }],
    );

    let t0 = Instant::now();
    fetch(&fetcher(&origin), &ts, &m).expect("succeeds after waiting");
    let took = t0.elapsed();

    // The policy's own backoff is 20 ms: only Retry-After explains a wait.
    assert!(
        took >= Duration::from_millis(1800),
        "waited {took:?}, less than the 2 s the server asked for"
    );
    assert_eq!(origin.stats(&path_of("busy")).statuses, vec![429, 200]);
    assert_present(&ts, &m, &bytes);
    ts.assert_consistent();
}

#[test]
fn a_redirect_to_plain_http_is_refused() {
    let (origin, ts, _, m) = pending("downgrade", 256 << 10, 10, vec![]);
    origin.set_persistent_fault(
        &path_of("downgrade"),
        Some(Fault::RedirectTo(origin.http_url(&path_of("downgrade")))),
    );

    let err = fetch(&fetcher(&origin), &ts, &m).expect_err("http:// must be refused");

    assert!(matches!(err.kind, FetchErrorKind::InsecureUrl(_)), "{err}");
    let st = origin.stats(&path_of("downgrade"));
    assert_eq!(
        st.plain_http_requests, 0,
        "nothing was asked over plain HTTP"
    );
    assert_eq!(st.gets, 1, "an insecure redirect is not retried");
    assert_still_pending(&ts, &m);
    ts.assert_consistent();
}

/// The `Authorization` header of each request one origin saw.
type AuthHeaders = Vec<Option<String>>;

/// Fetches, with the token `secret`, a model pinned from "Hugging Face" (a
/// `hub` origin, as HF_ENDPOINT) whose resolve URL redirects to `lfs/blob`
/// on a second origin (a CDN-like host), at the URL `url_of` gives for it.
/// Checks that the blob arrived whole; returns what the hub and the
/// redirect's target saw as `Authorization` headers.
fn fetch_through_a_hub_redirect(
    url_of: fn(&Origin, &str) -> String,
    bytes: &[u8],
) -> (AuthHeaders, AuthHeaders) {
    let hub = Origin::start();
    let target = Origin::start_with_ca(hub.ca());
    let ts = TestStore::new();
    target.put("lfs/blob", bytes.to_vec());
    let m = hf::write_manifest(&ts, "hfmodel", "model.gguf", bytes);
    hub.set_persistent_fault(
        "org/repo/resolve/main/model.gguf",
        Some(Fault::RedirectTo(url_of(&target, "lfs/blob"))),
    );
    let fetcher = fetcher_with(HttpConfig {
        hf_endpoint: hf::endpoint(&hub),
        hf_token: Some("secret".into()),
        ..config(&hub)
    });

    fetch(&fetcher, &ts, &m).expect("fetch through the redirect");

    assert_present(&ts, &m, bytes);
    ts.assert_consistent();
    (
        hub.stats("org/repo/resolve/main/model.gguf")
            .authorization_headers,
        target.stats("lfs/blob").authorization_headers,
    )
}

#[test]
fn the_hugging_face_token_goes_to_the_hub_and_never_to_the_host_it_redirects_to() {
    let (hub, cdn) =
        fetch_through_a_hub_redirect(Origin::url_localhost, &random_bytes(512 << 10, 11));
    assert_eq!(hub, vec![Some("Bearer secret".to_string())]);
    assert_eq!(cdn, vec![None], "the token must not follow the redirect");
}

#[test]
fn the_hugging_face_token_is_not_sent_to_another_port_of_the_same_host() {
    // Same IP, other port: another origin (another service) as far as
    // credentials go, as browsers and curl treat it.
    let (hub, other) = fetch_through_a_hub_redirect(Origin::url, &random_bytes(256 << 10, 12));
    assert_eq!(hub, vec![Some("Bearer secret".to_string())]);
    assert_eq!(other, vec![None]);
}

#[test]
fn a_server_that_ignores_range_on_resume_makes_the_download_start_over_cleanly() {
    let (origin, ts, bytes, m) = pending(
        "norange",
        1 << 20,
        13,
        vec![Fault::DropAt(400_000), Fault::IgnoreRange],
    );
    let size = bytes.len() as u64;

    let out = fetch(&fetcher(&origin), &ts, &m).expect("fetch");

    assert_present(&ts, &m, &bytes);
    let st = origin.stats(&path_of("norange"));
    assert_eq!(st.range_headers[1].as_deref(), Some("bytes=400000-"));
    assert_eq!(st.statuses, vec![200, 200], "the resume got the whole file");
    assert_eq!(st.bytes_sent, 400_000 + size);
    assert_eq!(
        out,
        FetchOutcome::Downloaded {
            transferred: 400_000 + size,
            resumed_from: 0
        }
    );
    ts.assert_consistent();
}

#[test]
fn a_kept_partial_the_server_will_not_resume_is_not_reported_as_resumed() {
    let (origin, ts, bytes, m) = pending("norange2", 512 << 10, 14, vec![]);
    // A good prefix from an earlier run, and a server that ignores Range.
    let s = ts.store();
    fs::create_dir_all(s.partial_path(&m.blob).parent().unwrap()).unwrap();
    fs::write(s.partial_path(&m.blob), &bytes[..100_000]).unwrap();
    origin.push_fault(&path_of("norange2"), Fault::IgnoreRange);

    let out = fetch(&fetcher(&origin), &ts, &m).expect("fetch");

    assert_present(&ts, &m, &bytes);
    assert_eq!(
        origin.stats(&path_of("norange2")).range_headers,
        vec![Some("bytes=100000-".to_string())]
    );
    // Every byte came over the network again: nothing was resumed.
    assert_eq!(
        out,
        FetchOutcome::Downloaded {
            transferred: bytes.len() as u64,
            resumed_from: 0
        }
    );
    ts.assert_consistent();
}

#[test]
fn a_truncated_body_is_resumed() {
    let (origin, ts, bytes, m) = pending("truncated", 1 << 20, 15, vec![Fault::Truncate(300_000)]);

    fetch(&fetcher(&origin), &ts, &m).expect("fetch resumes");

    assert_present(&ts, &m, &bytes);
    let st = origin.stats(&path_of("truncated"));
    assert_eq!(
        st.range_headers,
        vec![None, Some("bytes=300000-".to_string())]
    );
    assert_eq!(st.bytes_sent, bytes.len() as u64);
    ts.assert_consistent();
}

#[test]
fn progress_events_grow_towards_the_right_total() {
    let (origin, ts, bytes, m) = pending("progress", 1 << 20, 16, vec![]);
    let size = bytes.len() as u64;
    // About half a second, so several throttled events are due.
    origin.set_persistent_fault(&path_of("progress"), Some(Fault::Throttle(2 << 20)));
    let (tx, rx) = crossbeam_channel::unbounded::<Progress>();
    let never = AtomicBool::new(false);

    fetcher(&origin)
        .fetch(
            &ts.store(),
            &FetchJob {
                manifest: &m,
                sources: Vec::new(),
                write_manifest: false,
                progress: Some(tx.into()),
                cancel: &never,
            },
        )
        .expect("fetch");

    let events: Vec<Progress> = rx.try_iter().collect();
    let downloading: Vec<&Progress> = events
        .iter()
        .filter(|p| p.phase == Phase::Downloading)
        .collect();
    assert!(
        downloading.len() >= 2,
        "several download events: {events:?}"
    );
    assert!(events.iter().all(|p| p.total == size), "{events:?}");
    assert!(
        downloading.windows(2).all(|w| w[0].done < w[1].done),
        "done grows: {downloading:?}"
    );
    assert!(downloading.iter().all(|p| p.done <= size));
    assert_eq!(downloading.last().unwrap().done, size);
    assert_eq!(events.last().unwrap().phase, Phase::Publishing);
    assert_present(&ts, &m, &bytes);
    ts.assert_consistent();
}

#[test]
fn progress_during_a_stall_shows_every_byte_received_before_it() {
    // Regression: events were throttled to one per 100 ms and the last one
    // before a stall was never sent, so status showed a stale count for the
    // whole stall.
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = random_bytes(4 << 20, 17);
    let m = ts.add_pending("stalled-progress", &origin, &bytes);
    let stall_at = 3 * (1 << 20) + 12_345;
    origin.push_fault(
        &path_of("stalled-progress"),
        Fault::StallAt(stall_at, Duration::from_secs(3)),
    );
    let (tx, rx) = crossbeam_channel::unbounded::<Progress>();
    let store = ts.store();
    let fetcher = fetcher_with(HttpConfig {
        stall_timeout: Duration::from_secs(30),
        ..config(&origin)
    });
    std::thread::scope(|s| {
        s.spawn(|| {
            let never = AtomicBool::new(false);
            let job = FetchJob {
                manifest: &m,
                sources: Vec::new(),
                write_manifest: false,
                progress: Some(tx.into()),
                cancel: &never,
            };
            fetcher.fetch(&store, &job).expect("fetch after the stall");
        });
        let mut latest = 0;
        let reached = wait_until(Duration::from_secs(2), || {
            latest = rx
                .try_iter()
                .map(|p| p.done)
                .max()
                .unwrap_or(latest)
                .max(latest);
            latest == stall_at
        });
        assert!(
            reached,
            "during the stall the last event said {latest}, {stall_at} bytes had arrived"
        );
    });
    assert_present(&ts, &m, &bytes);
}

#[test]
fn a_cancelled_fetch_keeps_a_resumable_partial_and_the_next_fetch_resumes() {
    let (origin, ts, bytes, m) = pending("cancelled", 2 << 20, 17, vec![]);
    let size = bytes.len() as u64;
    origin.set_persistent_fault(&path_of("cancelled"), Some(Fault::Throttle(512 << 10)));
    let f = fetcher(&origin);
    let cancel = AtomicBool::new(false);
    let store = ts.store();

    let result = std::thread::scope(|s| {
        let h = s.spawn(|| {
            f.fetch(
                &store,
                &FetchJob {
                    manifest: &m,
                    sources: Vec::new(),
                    write_manifest: false,
                    progress: None,
                    cancel: &cancel,
                },
            )
        });
        assert!(
            wait_until(Duration::from_secs(20), || matches!(
                store.blob_state(&m.blob),
                BlobState::Partial(n) if n > 0
            )),
            "the download never started"
        );
        cancel.store(true, Ordering::Relaxed);
        h.join().unwrap()
    });

    let err = result.expect_err("a cancelled fetch fails");
    assert!(matches!(err.kind, FetchErrorKind::Cancelled), "{err}");
    let BlobState::Partial(kept) = store.blob_state(&m.blob) else {
        panic!("the partial must be kept for resuming");
    };
    assert!(kept > 0 && kept < size, "kept {kept} of {size}");
    assert!(fs::read(store.partial_path(&m.blob)).unwrap() == bytes[..kept as usize]);
    assert_still_pending(&ts, &m);

    origin.set_persistent_fault(&path_of("cancelled"), None);
    let out = fetch(&f, &ts, &m).expect("the next fetch completes");

    assert_eq!(
        out,
        FetchOutcome::Downloaded {
            transferred: size - kept,
            resumed_from: kept
        }
    );
    let st = origin.stats(&path_of("cancelled"));
    assert_eq!(
        st.range_headers.last().unwrap().as_deref(),
        Some(format!("bytes={kept}-").as_str())
    );
    assert_present(&ts, &m, &bytes);
    ts.assert_consistent();
}

#[test]
fn a_partial_longer_than_the_blob_is_discarded_and_the_download_starts_from_zero() {
    let (origin, ts, bytes, m) = pending("toolong", 512 << 10, 18, vec![]);
    let s = ts.store();
    fs::create_dir_all(s.partial_path(&m.blob).parent().unwrap()).unwrap();
    fs::write(
        s.partial_path(&m.blob),
        random_bytes(bytes.len() + 4096, 99),
    )
    .unwrap();

    let out = fetch(&fetcher(&origin), &ts, &m).expect("fetch");

    assert_present(&ts, &m, &bytes);
    assert_eq!(
        origin.stats(&path_of("toolong")).range_headers,
        vec![None],
        "one plain GET from byte 0"
    );
    assert_eq!(
        out,
        FetchOutcome::Downloaded {
            transferred: bytes.len() as u64,
            resumed_from: 0
        }
    );
    ts.assert_consistent();
}

#[test]
fn a_corrupt_partial_prefix_is_quarantined_and_the_download_starts_over_once() {
    let (origin, ts, bytes, m) = pending("corrupt", 1 << 20, 19, vec![]);
    let size = bytes.len() as u64;
    let s = ts.store();
    let garbage = random_bytes(100_000, 98);
    fs::create_dir_all(s.partial_path(&m.blob).parent().unwrap()).unwrap();
    fs::write(s.partial_path(&m.blob), &garbage).unwrap();

    let out = fetch(&fetcher(&origin), &ts, &m).expect("fetch recovers");

    assert_present(&ts, &m, &bytes);
    let st = origin.stats(&path_of("corrupt"));
    assert_eq!(
        st.range_headers,
        vec![Some("bytes=100000-".to_string()), None],
        "resume, mismatch, then exactly one fresh download"
    );
    assert_eq!(st.bytes_sent, (size - 100_000) + size);
    assert_eq!(
        out,
        FetchOutcome::Downloaded {
            transferred: size,
            resumed_from: 0
        }
    );
    let q = ts.quarantined();
    assert_eq!(q.len(), 1, "{q:?}");
    let mut want = garbage.clone();
    want.extend_from_slice(&bytes[100_000..]);
    assert!(
        fs::read(&q[0]).unwrap() == want,
        "the bad resumed bytes are kept"
    );
    ts.assert_consistent();
}

#[test]
fn a_fetch_waits_for_another_producers_lock_and_uses_its_blob() {
    let (origin, ts, bytes, m) = pending("locked", 256 << 10, 20, vec![]);
    let store = ts.store();
    let held = lock::try_lock(&store.lock_path(&m.name))
        .unwrap()
        .expect("the lock is free");
    let f = fetcher(&origin);
    let never = AtomicBool::new(false);

    let out = std::thread::scope(|s| {
        let h = s.spawn(|| {
            f.fetch(
                &store,
                &FetchJob {
                    manifest: &m,
                    sources: Vec::new(),
                    write_manifest: false,
                    progress: None,
                    cancel: &never,
                },
            )
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(!h.is_finished(), "the fetch must wait for the lock");
        assert_eq!(origin.stats_now(&path_of("locked")).gets, 0);
        // The other producer finishes: blob in place, lock released.
        ts.put_blob(&bytes);
        drop(held);
        h.join().unwrap()
    });

    assert_eq!(
        out.expect("fetch"),
        FetchOutcome::AlreadyPresent {
            waited_for_lock: true
        }
    );
    assert_eq!(origin.stats(&path_of("locked")).gets, 0);
    assert_present(&ts, &m, &bytes);
    ts.assert_consistent();
}

#[test]
fn the_producer_flow_writes_the_manifest_only_after_the_blob() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = random_bytes(256 << 10, 21);
    origin.put("fresh.gguf", bytes.clone());
    let m = Manifest::new(
        ModelName::parse("fresh").unwrap(),
        "gguf",
        Sha256::of(&bytes),
        bytes.len() as u64,
        Source {
            url: Some(origin.url("fresh.gguf")),
            ..Source::default()
        },
    );
    let never = AtomicBool::new(false);
    // A failing producer leaves no manifest behind.
    origin.push_fault("fresh.gguf", Fault::FlipByte(0));
    let job = FetchJob {
        manifest: &m,
        sources: Vec::new(),
        write_manifest: true,
        progress: None,
        cancel: &never,
    };
    let f = fetcher(&origin);
    assert!(f.fetch(&ts.store(), &job).is_err());
    assert_eq!(ts.store().read_manifest(&m.name).unwrap(), None);

    f.fetch(&ts.store(), &job).expect("fetch");

    assert_present(&ts, &m, &bytes);
    let written = ts
        .store()
        .read_manifest(&m.name)
        .unwrap()
        .expect("manifest");
    assert_eq!(written.to_json_bytes(), m.to_json_bytes());
    ts.assert_consistent();
}

#[test]
fn the_no_space_error_says_how_much_is_needed_and_how_much_is_free() {
    let e = FetchError::new(
        "big",
        Some("https://mirror.example/big.gguf"),
        FetchErrorKind::NoSpace {
            needed: 5 << 30,
            available: 1 << 30,
        },
    );
    let msg = e.to_string();
    assert!(
        msg.contains("\"big\"") && msg.contains("5.0 GiB") && msg.contains("1.0 GiB"),
        "{msg}"
    );
    assert!(msg.contains("free disk space"), "{msg}");
    assert!(!e.kind.is_transient());
    assert_eq!(e.kind.raw_os_error(), Some(libc::ENOSPC));
}

#[test]
fn a_complete_partial_left_by_a_crash_is_published_without_a_request() {
    let (origin, ts, bytes, m) = pending("complete", 300_000, 22, vec![]);
    let s = ts.store();
    fs::create_dir_all(s.partial_path(&m.blob).parent().unwrap()).unwrap();
    fs::write(s.partial_path(&m.blob), &bytes).unwrap();

    let out = fetch(&fetcher(&origin), &ts, &m).expect("fetch");

    assert_eq!(
        out,
        FetchOutcome::Downloaded {
            transferred: 0,
            resumed_from: bytes.len() as u64
        }
    );
    assert_eq!(origin.stats(&path_of("complete")).gets, 0);
    assert_present(&ts, &m, &bytes);
    ts.assert_consistent();
}

#[test]
fn a_server_that_keeps_failing_is_given_up_on_after_the_policys_attempts() {
    let (origin, ts, _, m) = pending("down", 256 << 10, 23, vec![]);
    origin.set_persistent_fault(&path_of("down"), Some(Fault::Status(503)));

    let err = fetch(&fetcher(&origin), &ts, &m).expect_err("must give up");

    assert!(
        matches!(err.kind, FetchErrorKind::Status { code: 503, .. }),
        "{err}"
    );
    assert_eq!(err.attempts, fast_policy().max_attempts);
    assert!(err.to_string().contains("after 5 attempts"), "{err}");
    assert_eq!(origin.stats(&path_of("down")).gets, 5);
    assert_still_pending(&ts, &m);
    ts.assert_consistent();
}

#[test]
fn a_response_whose_headers_stall_is_abandoned_and_retried() {
    let (origin, ts, bytes, m) = pending(
        "slowhead",
        256 << 10,
        24,
        vec![Fault::StallHeaders(Duration::from_secs(6))],
    );

    fetch(&fetcher(&origin), &ts, &m).expect("the retry succeeds");

    assert_eq!(origin.stats_now(&path_of("slowhead")).gets, 2);
    assert_present(&ts, &m, &bytes);
    ts.assert_consistent();
}

#[test]
fn a_connection_reset_mid_body_is_resumed() {
    let (origin, ts, bytes, m) = pending("reset", 1 << 20, 25, vec![Fault::ResetAt(500_000)]);

    fetch(&fetcher(&origin), &ts, &m).expect("fetch resumes");

    assert_present(&ts, &m, &bytes);
    let st = origin.stats(&path_of("reset"));
    assert_eq!((st.gets, st.range_gets), (2, 1));
    ts.assert_consistent();
}

#[test]
fn a_fetch_cancelled_while_waiting_for_the_lock_gives_up_without_a_request() {
    let (origin, ts, _, m) = pending("waiting", 1000, 26, vec![]);
    let store = ts.store();
    let _held = lock::try_lock(&store.lock_path(&m.name)).unwrap().unwrap();
    let cancel = AtomicBool::new(false);
    let f = fetcher(&origin);

    let out = std::thread::scope(|s| {
        let h = s.spawn(|| {
            f.fetch(
                &store,
                &FetchJob {
                    manifest: &m,
                    sources: Vec::new(),
                    write_manifest: false,
                    progress: None,
                    cancel: &cancel,
                },
            )
        });
        std::thread::sleep(Duration::from_millis(200));
        cancel.store(true, Ordering::Relaxed);
        h.join().unwrap()
    });

    let err = out.expect_err("cancelled");
    assert!(matches!(err.kind, FetchErrorKind::Cancelled), "{err}");
    assert_eq!(origin.stats(&path_of("waiting")).gets, 0);
    assert_still_pending(&ts, &m);
    ts.assert_consistent();
}

#[test]
fn two_names_for_one_blob_fetched_at_once_download_it_once() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = random_bytes(1 << 20, 27);
    let a = ts.add_pending("alias-a", &origin, &bytes);
    let b = ts.add_pending("alias-b", &origin, &bytes);
    for p in ["alias-a.gguf", "alias-b.gguf"] {
        origin.set_persistent_fault(p, Some(Fault::Throttle(1 << 20)));
    }
    let f = fetcher(&origin);
    let store = ts.store();
    let never = AtomicBool::new(false);
    let job = |m| FetchJob {
        manifest: m,
        sources: Vec::new(),
        write_manifest: false,
        progress: None,
        cancel: &never,
    };

    let (ra, rb) = std::thread::scope(|s| {
        let ha = s.spawn(|| f.fetch(&store, &job(&a)));
        assert!(wait_until(Duration::from_secs(20), || matches!(
            store.blob_state(&a.blob),
            BlobState::Partial(n) if n > 0
        )));
        let hb = s.spawn(|| f.fetch(&store, &job(&b)));
        (ha.join().unwrap(), hb.join().unwrap())
    });

    assert!(
        matches!(ra.expect("a"), FetchOutcome::Downloaded { .. }),
        "the first fetch downloads"
    );
    assert_eq!(
        rb.expect("b"),
        FetchOutcome::AlreadyPresent {
            waited_for_lock: true
        },
        "the second uses the blob the first produced"
    );
    let gets = origin.stats("alias-a.gguf").gets + origin.stats("alias-b.gguf").gets;
    assert_eq!(gets, 1, "one download for one blob");
    assert_present(&ts, &a, &bytes);
    assert!(
        !store.partial_path(&a.blob).parent().unwrap().exists(),
        "no partial is left behind"
    );
    ts.assert_consistent();
}

/// Runs `fetch_handing_over` and records every handed-over file with what
/// the store looked like at that moment: (file, blob published yet?).
fn fetch_recording_hand_over(
    f: &Fetcher,
    ts: &TestStore,
    m: &Manifest,
) -> (Result<FetchOutcome, FetchError>, Vec<(fs::File, bool)>) {
    let never = AtomicBool::new(false);
    let store = ts.store();
    let mut handed = Vec::new();
    let out = f.fetch_handing_over(
        &store,
        &FetchJob {
            manifest: m,
            sources: Vec::new(),
            write_manifest: false,
            progress: None,
            cancel: &never,
        },
        &mut |file| handed.push((file, store.blob_path(&m.blob).exists())),
    );
    (out, handed)
}

#[test]
fn the_verified_file_is_handed_over_read_only_before_it_is_published() {
    use std::io::{Read, Write};
    use std::os::unix::fs::MetadataExt;
    let (origin, ts, bytes, m) = pending("early", 3 << 20, 40, vec![]);

    let (out, mut handed) = fetch_recording_hand_over(&fetcher(&origin), &ts, &m);

    assert!(
        matches!(out, Ok(FetchOutcome::Downloaded { .. })),
        "{out:?}"
    );
    assert_eq!(handed.len(), 1, "handed over exactly once");
    let (file, published) = &mut handed[0];
    assert!(
        !*published,
        "handed over before the rename that publishes it"
    );
    let mut got = Vec::new();
    file.read_to_end(&mut got).unwrap();
    assert!(
        got == bytes,
        "the handed-over file holds the verified bytes"
    );
    assert!(
        file.write_all(b"x").is_err(),
        "the handed-over file is read-only"
    );
    // It is the file that was then published, so a reader of either sees
    // the same inode.
    let (a, b) = (
        file.metadata().unwrap(),
        fs::metadata(ts.store().blob_path(&m.blob)).unwrap(),
    );
    assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
    assert_present(&ts, &m, &bytes);
}

#[test]
fn bytes_that_fail_verification_are_never_handed_over() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = random_bytes(1 << 20, 41);
    let m = ts.add_pending("never-early", &origin, &bytes);
    origin.push_fault(&path_of("never-early"), Fault::FlipByte(999));

    let (out, handed) = fetch_recording_hand_over(&fetcher(&origin), &ts, &m);

    assert!(
        matches!(&out, Err(e) if matches!(e.kind, FetchErrorKind::DigestMismatch { .. })),
        "{out:?}"
    );
    assert!(handed.is_empty(), "nothing is handed over on a mismatch");
    assert_still_pending(&ts, &m);
}

#[test]
fn a_restart_after_a_bad_resumed_prefix_hands_over_only_the_clean_download() {
    use std::io::Read;
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = random_bytes(1 << 20, 42);
    let m = ts.add_pending("restart-early", &origin, &bytes);
    // A partial left by an earlier run with a bad prefix: the resume
    // completes it, the digest fails, and the fetch starts over from 0.
    let s = ts.store();
    fs::create_dir_all(s.partial_path(&m.blob).parent().unwrap()).unwrap();
    fs::write(s.partial_path(&m.blob), random_bytes(100_000, 97)).unwrap();

    let (out, mut handed) = fetch_recording_hand_over(&fetcher(&origin), &ts, &m);

    assert!(
        matches!(out, Ok(FetchOutcome::Downloaded { .. })),
        "{out:?}"
    );
    assert_eq!(
        handed.len(),
        1,
        "only the download that verified is handed over"
    );
    let mut got = Vec::new();
    handed[0].0.read_to_end(&mut got).unwrap();
    assert!(
        got == bytes,
        "the handed-over file holds the verified bytes"
    );
    assert_present(&ts, &m, &bytes);
}

#[test]
fn a_blob_that_is_already_present_is_not_handed_over() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = random_bytes(64 << 10, 43);
    let m = ts.add_pending("present-early", &origin, &bytes);
    let f = fetcher(&origin);
    fetch(&f, &ts, &m).expect("first fetch");

    let (out, handed) = fetch_recording_hand_over(&f, &ts, &m);

    assert_eq!(
        out.expect("second fetch"),
        FetchOutcome::AlreadyPresent {
            waited_for_lock: false
        }
    );
    assert!(handed.is_empty(), "a present blob is opened at its path");
}

#[test]
fn a_handed_over_file_whose_publication_fails_is_taken_out_of_the_partial_path() {
    use std::io::Read;
    let (origin, ts, bytes, m) = pending("unpublished", 256 << 10, 44, vec![]);
    // A folder where the blob file belongs, made once the bytes verified
    // (one there before is refused before any download): publish_blob
    // refuses it.
    let s = ts.store();
    let never = AtomicBool::new(false);
    let mut handed = Vec::new();
    let out = fetcher(&origin).fetch_handing_over(
        &s,
        &FetchJob {
            manifest: &m,
            sources: Vec::new(),
            write_manifest: false,
            progress: None,
            cancel: &never,
        },
        &mut |file| {
            fs::create_dir_all(s.blob_path(&m.blob)).unwrap();
            handed.push(file);
        },
    );

    assert!(
        matches!(&out, Err(e) if matches!(e.kind, FetchErrorKind::Store(_))),
        "{out:?}"
    );
    assert_eq!(handed.len(), 1);
    assert!(
        !s.partial_path(&m.blob).exists(),
        "nothing can resume into or truncate the file its readers hold"
    );
    let mut got = Vec::new();
    handed[0].read_to_end(&mut got).unwrap();
    assert!(got == bytes, "the reader keeps the verified bytes");
}

#[test]
fn a_fetch_moves_on_from_a_dead_source_and_a_lying_one_to_the_next_that_pins_the_blob() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = random_bytes(200_000, 45);
    let opened = ts.write_manifest("dead", &origin.url("gone.gguf"), &bytes);
    let liar = ts.add_pending("liar", &origin, &bytes);
    origin.set_persistent_fault("liar.gguf", Some(Fault::FlipByte(1234)));
    let good = ts.add_pending("good", &origin, &bytes);
    // Another size cannot be the same bytes: never asked.
    let mut other_size = ts.add_pending("othersize", &origin, &bytes);
    other_size.size_bytes += 1;
    let f = fetcher(&origin);
    let never = AtomicBool::new(false);
    let sources = f.candidates(&opened, &[other_size, liar, good.clone()]);
    assert_eq!(
        sources.iter().map(|c| c.model.as_str()).collect::<Vec<_>>(),
        ["dead", "liar", "good"]
    );

    let out = f.fetch(
        &ts.store(),
        &FetchJob {
            manifest: &opened,
            sources,
            write_manifest: false,
            progress: None,
            cancel: &never,
        },
    );

    assert!(
        matches!(out, Ok(FetchOutcome::Downloaded { .. })),
        "{out:?}"
    );
    assert_present(&ts, &opened, &bytes);
    assert_eq!(
        ts.quarantined().len(),
        1,
        "the liar's bytes are quarantined"
    );
    assert_eq!(origin.stats("othersize.gguf").gets, 0);
}

#[test]
fn a_fetch_whose_every_source_fails_names_the_last_and_counts_the_others() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = random_bytes(10_000, 46);
    let a = ts.write_manifest("a", &origin.url("gone-a.gguf"), &bytes);
    let b = ts.write_manifest("b", &origin.url("gone-b.gguf"), &bytes);
    let f = fetcher(&origin);
    let never = AtomicBool::new(false);

    let e = f
        .fetch(
            &ts.store(),
            &FetchJob {
                manifest: &a,
                sources: f.candidates(&a, &[b]),
                write_manifest: false,
                progress: None,
                cancel: &never,
            },
        )
        .unwrap_err();

    let text = e.to_string();
    assert!(
        text.contains("\"b\"") && text.contains("gone-b.gguf") && text.contains("404"),
        "{text}"
    );
    assert!(text.contains("1 other source"), "{text}");
    assert_still_pending(&ts, &a);
}

#[test]
fn a_fetch_that_keeps_making_a_little_progress_still_ends_within_its_total_attempt_budget() {
    let (origin, ts, _, m) = pending("crawl", 100_000, 90, vec![]);
    // Every answer drops after 1000 bytes: each attempt makes progress, so
    // only the budget of attempts in all ends it.
    origin.set_persistent_fault(&path_of("crawl"), Some(Fault::DropAt(1000)));
    let policy = RetryPolicy {
        max_total_attempts: 6,
        ..fast_policy()
    };
    let f = Fetcher::new(Http::new(config(&origin)).unwrap(), policy);

    let e = fetch(&f, &ts, &m).expect_err("gives up");
    assert_eq!(e.attempts, 6, "{e}");
    assert_eq!(origin.stats(&path_of("crawl")).gets, 6);
    assert!(e.to_string().contains("after 6 attempts"), "{e}");
}
