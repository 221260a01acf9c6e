//! Parallel ranged downloads against the misbehaving origin: each fault
//! hits one range, and the fetch must end with the right bytes or one
//! clear error, a consistent store, and no more bytes fetched again than
//! the fault cost.

#![allow(clippy::result_large_err)]

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::{Fault, wait_until};
use crate::fetch::{assert_present, assert_still_pending, fetch, fetcher, path_of, pending};
use modelfs::fetch::{FetchErrorKind, FetchJob, FetchOutcome};
use modelfs::store::BlobState;

const MIB: usize = 1 << 20;
/// Large enough for ranges (8 MiB and up), small enough for a quick test.
const SIZE: usize = 24 * MIB;

/// A placeholder fault: the request it is consumed by is answered normally.
fn none() -> Fault {
    Fault::Multi(Vec::new())
}

/// The requested ranges, as `(start, end)` half-open intervals.
fn ranges_asked(headers: &[Option<String>]) -> Vec<(u64, u64)> {
    headers
        .iter()
        .flatten()
        .filter_map(|h| {
            let (a, b) = h.strip_prefix("bytes=")?.split_once('-')?;
            Some((a.parse().ok()?, b.parse::<u64>().ok()? + 1))
        })
        .collect()
}

#[test]
fn a_large_blob_arrives_over_several_ranges_with_each_byte_sent_once() {
    let (origin, ts, bytes, m) = pending("par", SIZE, 71, vec![]);

    let out = fetch(&fetcher(&origin), &ts, &m).expect("fetch");

    assert_present(&ts, &m, &bytes);
    assert_eq!(
        out,
        FetchOutcome::Downloaded {
            transferred: SIZE as u64,
            resumed_from: 0
        }
    );
    let st = origin.stats(&path_of("par"));
    assert!(st.range_gets >= 4, "{} range requests", st.range_gets);
    assert_eq!(st.gets, st.range_gets, "every request is a range");
    assert_eq!(st.bytes_sent, SIZE as u64, "no byte sent twice");
    let mut asked = ranges_asked(&st.range_headers);
    asked.sort();
    assert_eq!(asked.first().unwrap().0, 0);
    assert!(
        asked.windows(2).all(|w| w[0].1 == w[1].0),
        "ranges tile the blob: {asked:?}"
    );
    assert_eq!(asked.last().unwrap().1, SIZE as u64);
    // Every range after the probe names the version the probe saw.
    let etag = origin.etag(&path_of("par")).unwrap();
    let if_range: Vec<_> = st
        .request_headers
        .iter()
        .skip(1)
        .map(|h| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("if-range"))
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert!(
        if_range.iter().all(|v| v.as_deref() == Some(etag.as_str())),
        "{if_range:?}"
    );
    ts.assert_consistent();
}

#[test]
fn the_ranges_of_a_parallel_fetch_reuse_their_connections() {
    let (origin, ts, bytes, m) = pending("reuse", SIZE, 79, vec![]);
    origin.set_keep_alive(true);

    fetch(&fetcher(&origin), &ts, &m).expect("fetch");

    assert_present(&ts, &m, &bytes);
    let st = origin.stats(&path_of("reuse"));
    let conns = origin.connections();
    eprintln!("{} requests over {conns} connections", st.gets + st.heads);
    // Every range on a new connection cost a TCP and TLS handshake and a
    // new slow start each: on a 40 ms link, a fifth of the download time.
    assert!(st.range_gets >= 8, "{} range requests", st.range_gets);
    assert!(
        conns < st.range_gets,
        "{} range requests opened {conns} connections: none was reused",
        st.range_gets
    );
    ts.assert_consistent();
}

#[test]
fn one_dropped_range_is_fetched_again_from_where_it_broke_and_the_rest_is_untouched() {
    let (origin, ts, bytes, m) = pending("drop", SIZE, 72, vec![none(), Fault::DropAt(700_000)]);

    fetch(&fetcher(&origin), &ts, &m).expect("fetch recovers");

    assert_present(&ts, &m, &bytes);
    let st = origin.stats(&path_of("drop"));
    let extra = st.bytes_sent.saturating_sub(SIZE as u64);
    assert!(
        extra < 4 * MIB as u64,
        "{extra} bytes sent again for one drop"
    );
    ts.assert_consistent();
}

#[test]
fn an_origin_that_ignores_range_is_downloaded_over_one_stream() {
    let (origin, ts, bytes, m) = pending("norange", SIZE, 73, vec![]);
    origin.set_persistent_fault(&path_of("norange"), Some(Fault::IgnoreRange));

    fetch(&fetcher(&origin), &ts, &m).expect("fetch");

    assert_present(&ts, &m, &bytes);
    let st = origin.stats(&path_of("norange"));
    // The probe's answer is the whole object: the one stream reads it
    // instead of asking again (a pull-through cache would pull a second
    // copy from its upstream for that second request).
    assert_eq!(st.gets, 1, "the probe's whole answer is the stream");
    assert_eq!(st.bytes_sent, SIZE as u64, "no byte sent twice");
    ts.assert_consistent();
}

#[test]
fn a_probe_answered_with_a_short_whole_body_keeps_the_prefix_and_the_rest_resumes() {
    // The probe's answer: 200 and a body that is not the object's length
    // (an error page, a truncated copy). It is not the one stream.
    let probe = Fault::Multi(vec![Fault::IgnoreRange, Fault::ContentLength(4096)]);
    let (origin, ts, bytes, m) = pending("shortwhole", SIZE, 80, vec![probe]);
    let prefix = 3 * MIB;
    let s = ts.store();
    fs::create_dir_all(s.partial_path(&m.blob).parent().unwrap()).unwrap();
    fs::write(s.partial_path(&m.blob), &bytes[..prefix]).unwrap();

    let out = fetch(&fetcher(&origin), &ts, &m).expect("the rest resumes");

    assert_present(&ts, &m, &bytes);
    assert_eq!(
        out,
        FetchOutcome::Downloaded {
            transferred: (SIZE - prefix) as u64,
            resumed_from: prefix as u64
        },
        "the prefix was kept"
    );
    ts.assert_consistent();
}

#[test]
fn server_errors_on_some_ranges_are_retried_by_those_ranges_alone() {
    let faults = vec![none(), Fault::Status(503), none(), Fault::Status(500)];
    let (origin, ts, bytes, m) = pending("flaky", SIZE, 74, faults);

    fetch(&fetcher(&origin), &ts, &m).expect("fetch");

    assert_present(&ts, &m, &bytes);
    let st = origin.stats(&path_of("flaky"));
    assert_eq!(
        st.bytes_sent, SIZE as u64,
        "an error answer sends no body bytes"
    );
    ts.assert_consistent();
}

#[test]
fn a_range_with_the_wrong_content_range_never_reaches_the_blob() {
    let (origin, ts, bytes, m) = pending("badcr", SIZE, 75, vec![none(), Fault::NoContentRange]);

    fetch(&fetcher(&origin), &ts, &m).expect("the fetch starts over on one stream");

    assert_present(&ts, &m, &bytes);
    ts.assert_consistent();
}

#[test]
fn an_object_replaced_mid_download_is_never_stitched_from_two_versions() {
    let (origin, ts, bytes, m) = pending("changed", SIZE, 76, vec![]);
    let path = path_of("changed");
    origin.set_persistent_fault(&path, Some(Fault::Throttle(8 << 20)));
    let f = fetcher(&origin);
    let other = crate::common::random_bytes(SIZE, 77);

    let result = std::thread::scope(|s| {
        let h = s.spawn(|| fetch(&f, &ts, &m));
        assert!(
            wait_until(Duration::from_secs(20), || origin
                .stats_now(&path)
                .bytes_sent
                > 0),
            "the download never started"
        );
        origin.put(&path, other.clone());
        h.join().unwrap()
    });

    let err = result.expect_err("the pinned bytes are gone from the origin");
    assert!(
        matches!(err.kind, FetchErrorKind::DigestMismatch { .. }),
        "{err}"
    );
    assert_still_pending(&ts, &m);
    // What failed the digest is the new object whole, not a mix.
    let q = ts.quarantined();
    assert_eq!(q.len(), 1, "{q:?}");
    assert!(
        fs::read(&q[0]).unwrap() == other,
        "the quarantined bytes are one version"
    );
    drop(bytes);
    ts.assert_consistent();
}

#[test]
fn a_cancelled_parallel_fetch_keeps_every_written_range_and_the_next_one_fetches_only_the_rest() {
    let (origin, ts, bytes, m) = pending("cancel", SIZE, 78, vec![]);
    let path = path_of("cancel");
    origin.set_persistent_fault(&path, Some(Fault::Throttle(1 << 20)));
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
            wait_until(Duration::from_secs(20), || origin
                .stats_now(&path)
                .bytes_sent
                > 4 * MIB as u64),
            "the download never got going"
        );
        cancel.store(true, Ordering::Relaxed);
        h.join().unwrap()
    });

    let err = result.expect_err("a cancelled fetch fails");
    assert!(matches!(err.kind, FetchErrorKind::Cancelled), "{err}");
    let BlobState::Partial(len) = store.blob_state(&m.blob) else {
        panic!("the partial must be kept for resuming");
    };
    let file = fs::read(store.partial_path(&m.blob)).unwrap();
    let record = fs::read_to_string(store.prefix_record_path(&m.blob)).expect("a prefix record");
    let mut lines = record.lines();
    let prefix: u64 = lines.next().unwrap().parse().unwrap();
    let mut kept = prefix;
    assert!(
        file[..prefix as usize] == bytes[..prefix as usize],
        "the prefix is right"
    );
    for l in lines {
        let (a, b) = l.split_once(' ').unwrap();
        let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
        assert!(file[a..b] == bytes[a..b], "the piece {a}-{b} is right");
        kept += (b - a) as u64;
    }
    assert!(
        kept > 4 * MIB as u64 / 2 && len < SIZE as u64,
        "kept {kept} of {len}"
    );
    let sent = origin.stats(&path).bytes_sent;

    origin.set_persistent_fault(&path, None);
    let out = fetch(&f, &ts, &m).expect("the next fetch completes");
    assert_eq!(
        out,
        FetchOutcome::Downloaded {
            transferred: SIZE as u64 - kept,
            resumed_from: prefix
        },
        "nothing written before is fetched again"
    );
    assert_eq!(origin.stats(&path).bytes_sent - sent, SIZE as u64 - kept);
    assert_present(&ts, &m, &bytes);
    ts.assert_consistent();
}

#[test]
fn many_openers_of_a_large_model_share_one_parallel_download() {
    let origin = crate::common::Origin::start();
    let store = crate::common::TestStore::new();
    let bytes = crate::common::random_bytes(SIZE, 79);
    store.add_pending("shared", &origin, &bytes);
    origin.set_persistent_fault("shared.gguf", Some(Fault::Throttle(4 << 20)));
    let mount = crate::common::Mount::start(&store, origin.ca_pem_path(), &[]);

    let readers = crate::common::waiter::waiters(&mount.path("shared.gguf"), 12);
    // The attribute says how many connections the download uses.
    let conns = || {
        crate::common::sys::getxattr(&mount.path("shared.gguf"), "user.modelfs.connections")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
    };
    assert!(
        wait_until(Duration::from_secs(20), || conns().is_some_and(|n| n > 1)),
        "user.modelfs.connections never showed more than one: {:?}",
        conns()
    );
    for r in readers {
        assert!(r.result().expect("every opener reads the model") == bytes);
    }
    let st = origin.stats("shared.gguf");
    let from_zero = ranges_asked(&st.range_headers)
        .iter()
        .filter(|r| r.0 == 0)
        .count();
    assert_eq!(from_zero, 1, "one download: {:?}", st.range_headers);
    assert_eq!(st.bytes_sent, SIZE as u64, "every byte sent once");
    assert!(st.range_gets >= 4, "over several connections");
}

/// Leaves the partial a killed parallel download would: `file` as the
/// partial's bytes and `record` as its prefix record.
fn leave_partial(
    ts: &crate::common::TestStore,
    m: &modelfs::store::Manifest,
    file: &[u8],
    record: &str,
) {
    let s = ts.store();
    fs::create_dir_all(s.partial_path(&m.blob).parent().unwrap()).unwrap();
    fs::write(s.partial_path(&m.blob), file).unwrap();
    fs::write(s.prefix_record_path(&m.blob), record).unwrap();
}

#[test]
fn a_run_killed_after_its_last_range_but_before_hashing_caught_up_is_finished_without_a_request() {
    // The steering loop records the piece from the hashed prefix to the
    // frontier; killed with every range written but the hasher behind,
    // the record covers the whole rest of the blob.
    let (origin, ts, bytes, m) = pending("allkept", SIZE, 80, vec![]);
    leave_partial(&ts, &m, &bytes, &format!("0\n0 {SIZE}\n"));

    fetch(&fetcher(&origin), &ts, &m).expect("the kept bytes are hashed and published");

    assert_present(&ts, &m, &bytes);
    let st = origin.stats(&path_of("allkept"));
    assert_eq!(st.bytes_sent, 0, "every byte was already written");
    ts.assert_consistent();
}

#[test]
fn a_stalled_range_is_asked_again_from_where_it_stopped_and_the_rest_goes_on() {
    // The stall outlasts any test: only giving up on that connection ends
    // the fetch.
    let stall = Fault::StallAt(MIB as u64, Duration::from_secs(3600));
    let (origin, ts, bytes, m) = pending("stall", SIZE, 81, vec![none(), stall]);

    fetch(&fetcher(&origin), &ts, &m).expect("the stalled range is fetched again");

    assert_present(&ts, &m, &bytes);
    let st = origin.stats_now(&path_of("stall"));
    let asked = ranges_asked(&st.range_headers);
    let stalled = asked[1];
    assert!(
        asked[2..].iter().any(|r| r.0 == stalled.0 + MIB as u64),
        "the rest of the stalled range was asked for from its first missing byte: {asked:?}"
    );
    ts.assert_consistent();
}

#[test]
fn a_slow_range_is_split_so_the_tail_does_not_wait_for_it() {
    // Two connections, so ranges are large enough to split; the second
    // range crawls for the whole fetch.
    const BIG: usize = 64 * MIB;
    let slow = Fault::Throttle(256 << 10);
    let (origin, ts, bytes, m) = pending("slow", BIG, 82, vec![none(), slow]);
    let mut f = fetcher(&origin);
    f.set_connections(2);

    fetch(&f, &ts, &m).expect("fetch");

    assert_present(&ts, &m, &bytes);
    let st = origin.stats_now(&path_of("slow"));
    let asked = ranges_asked(&st.range_headers);
    let slow = asked[1];
    assert!(
        asked[2..].iter().any(|r| r.0 > slow.0 && r.0 < slow.1),
        "another connection took over part of the slow range: {asked:?}"
    );
    let extra = st.bytes_sent.saturating_sub(BIG as u64);
    assert!(
        extra <= 2 * MIB as u64,
        "{extra} bytes sent twice for one slow range"
    );
    ts.assert_consistent();
}

#[test]
fn a_range_answered_with_another_range_is_never_written_where_it_was_asked() {
    let shifted = Fault::ShiftRange(MIB as u64);
    let (origin, ts, bytes, m) = pending("shifted", SIZE, 83, vec![none(), shifted]);

    fetch(&fetcher(&origin), &ts, &m).expect("the fetch starts over on one stream");

    assert_present(&ts, &m, &bytes);
    assert!(ts.quarantined().is_empty(), "no wrong byte was hashed");
    ts.assert_consistent();
}

#[test]
fn a_range_that_is_not_found_fails_the_fetch_once_with_the_answer_and_keeps_the_prefix() {
    let (origin, ts, _bytes, m) = pending("gone", SIZE, 84, vec![none(), Fault::Status(404)]);
    let mut f = fetcher(&origin);
    f.set_connections(2);

    let err = fetch(&f, &ts, &m).expect_err("a 404 is not retried");

    assert!(
        matches!(err.kind, FetchErrorKind::Status { code: 404, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("404"), "{err}");
    assert_still_pending(&ts, &m);
    let st = origin.stats_now(&path_of("gone"));
    assert_eq!(
        st.statuses.iter().filter(|&&c| c == 404).count(),
        1,
        "asked once: {:?}",
        st.statuses
    );
    ts.assert_consistent();
}

#[test]
fn an_expired_signed_url_is_resolved_again_at_the_hub_and_the_token_never_goes_to_the_cdn() {
    const TOKEN: &str = "hf_ranges0token0for0the0hub";
    let hub = crate::common::Origin::start();
    let cdn = crate::common::Origin::start_with_ca(hub.ca());
    let ts = crate::common::TestStore::new();
    let bytes = crate::common::random_bytes(SIZE, 85);
    let m = crate::common::hf::write_manifest(&ts, "signed", "signed.gguf", &bytes);
    cdn.put("blob/signed.gguf", bytes.clone());
    let resolve = "org/repo/resolve/main/signed.gguf";
    hub.set_persistent_fault(
        resolve,
        Some(Fault::RedirectTo(format!(
            "{}?X-Amz-Expires=1",
            cdn.url("blob/signed.gguf")
        ))),
    );
    // The signed URL serves the probe and two ranges, then has expired.
    for f in [none(), none(), none(), Fault::Status(403)] {
        cdn.push_fault("blob/signed.gguf", f);
    }
    let mut cfg = crate::fetch::config(&hub);
    cfg.hf_endpoint = crate::common::hf::endpoint(&hub);
    cfg.hf_token = Some(TOKEN.into());
    let mut f = crate::fetch::fetcher_with(cfg);
    f.set_connections(2);

    fetch(&f, &ts, &m).expect("the hub hands out a fresh URL");

    assert_present(&ts, &m, &bytes);
    let hub_st = hub.stats_now(resolve);
    assert!(
        hub_st.gets >= 2,
        "asked the hub again: {} GETs",
        hub_st.gets
    );
    let bearer = format!("Bearer {TOKEN}");
    assert!(
        hub_st
            .authorization_headers
            .iter()
            .all(|h| h.as_deref() == Some(bearer.as_str())),
        "{:?}",
        hub_st.authorization_headers
    );
    let cdn_st = cdn.stats_now("blob/signed.gguf");
    assert!(
        cdn_st
            .request_headers
            .iter()
            .flatten()
            .all(|(_, v)| !v.contains(TOKEN)),
        "no header to the CDN carries the token"
    );
    // Once per connection at most: the fresh URL serves the rest.
    assert!(
        hub_st.gets <= 3,
        "ranges go to the fresh CDN URL, not through the hub each time: hub {}, cdn {}",
        hub_st.gets,
        cdn_st.gets
    );
    ts.assert_consistent();
}
