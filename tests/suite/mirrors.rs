//! Digest-addressed mirrors against real HTTPS servers: a store directory
//! served by the test origin (`<base>/blobs/sha256/<aa>/<hex>/data`), one
//! that is dead (nothing listens), one that accepts connections and never
//! answers, and one that lies. The digest decides; the manifest's own
//! source is the last resort.

#![allow(clippy::result_large_err)]

use std::net::TcpListener;

use crate::common::{Fault, Origin, TestStore, hf, random_bytes};
use crate::fetch::{assert_present, config, fetch, fetcher, fetcher_with, path_of, pending};
use modelfs::digest::Sha256;
use modelfs::fetch::{Fetcher, Mirror};

const MIB: usize = 1 << 20;

/// Where mirror `base` (a path on `o`) has the blob of `bytes`.
fn blob_path(base: &str, bytes: &[u8]) -> String {
    let hex = Sha256::of(bytes).to_hex();
    format!("{base}/blobs/sha256/{}/{hex}/data", &hex[..2])
}

/// `o` serves a store directory at `/<base>` holding `bytes`.
fn mirror_with(o: &Origin, base: &str, bytes: &[u8]) -> Mirror {
    o.put(&blob_path(base, bytes), bytes.to_vec());
    Mirror::parse(&o.url(base)).unwrap()
}

fn with_mirrors(mut f: Fetcher, mirrors: Vec<Mirror>) -> Fetcher {
    f.set_mirrors(mirrors).unwrap();
    f
}

/// An address where nothing listens: connections are refused.
pub(crate) fn refused() -> Mirror {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    Mirror::parse(&format!("https://127.0.0.1:{port}/store")).unwrap()
}

/// The first byte of each range asked for.
fn ranges_from(headers: &[Option<String>]) -> Vec<u64> {
    headers
        .iter()
        .flatten()
        .filter_map(|h| h.strip_prefix("bytes=")?.split('-').next()?.parse().ok())
        .collect()
}

#[test]
fn a_blob_on_a_mirror_comes_from_the_mirror_and_the_origin_is_not_asked() {
    let (origin, ts, bytes, m) = pending("m1", 300_000, 91, vec![]);
    let peer = Origin::start_with_ca(origin.ca());
    let f = with_mirrors(fetcher(&origin), vec![mirror_with(&peer, "store", &bytes)]);

    fetch(&f, &ts, &m).expect("fetch");

    assert_present(&ts, &m, &bytes);
    assert_eq!(
        origin.stats(&path_of("m1")).gets,
        0,
        "the origin is not asked"
    );
    assert_eq!(peer.stats(&blob_path("store", &bytes)).gets, 1);
    ts.assert_consistent();
}

#[test]
fn dead_silent_and_lying_mirrors_are_passed_over_and_the_lie_is_quarantined() {
    let (origin, ts, bytes, m) = pending("m2", 300_000, 92, vec![]);
    let liar = Origin::start_with_ca(origin.ca());
    let lie = random_bytes(bytes.len(), 93);
    liar.put(&blob_path("store", &bytes), lie.clone());
    let good = Origin::start_with_ca(origin.ca());
    // Accepts the TCP connection (the kernel's backlog) and says nothing.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("https://{}/store", silent.local_addr().unwrap());
    let mirrors = vec![
        refused(),
        Mirror::parse(&silent_url).unwrap(),
        Mirror::parse(&liar.url("store")).unwrap(),
        mirror_with(&good, "store", &bytes),
    ];
    let f = with_mirrors(fetcher(&origin), mirrors);

    fetch(&f, &ts, &m).expect("the good mirror serves it");

    assert_present(&ts, &m, &bytes);
    let q = ts.quarantined();
    assert_eq!(q.len(), 1, "{q:?}");
    assert!(
        std::fs::read(&q[0]).unwrap() == lie,
        "the liar's bytes are in quarantine"
    );
    assert_eq!(
        origin.stats(&path_of("m2")).gets,
        0,
        "the origin is not asked"
    );

    // The next blob: the dead and silent mirrors are left out for a while,
    // the liar is asked again (it lied about another blob only).
    let other = random_bytes(200_000, 94);
    let m2 = ts.add_pending("m2b", &origin, &other);
    liar.put(&blob_path("store", &other), other.clone());
    fetch(&f, &ts, &m2).expect("fetch");
    assert_present(&ts, &m2, &other);
    assert_eq!(liar.stats(&blob_path("store", &other)).gets, 1);
    assert_eq!(good.stats(&blob_path("store", &other)).gets, 0);
    ts.assert_consistent();
}

#[test]
fn when_no_mirror_has_the_blob_the_manifest_source_serves_it() {
    let (origin, ts, bytes, m) = pending("m3", 300_000, 95, vec![]);
    let empty = Origin::start_with_ca(origin.ca());
    let f = with_mirrors(
        fetcher(&origin),
        vec![Mirror::parse(&empty.url("store")).unwrap()],
    );

    fetch(&f, &ts, &m).expect("the origin serves it");

    assert_present(&ts, &m, &bytes);
    assert_eq!(origin.stats(&path_of("m3")).gets, 1);
    ts.assert_consistent();
}

#[test]
fn a_large_blob_comes_from_a_mirror_in_ranges() {
    let (origin, ts, bytes, m) = pending("m4", 24 * MIB, 96, vec![]);
    let peer = Origin::start_with_ca(origin.ca());
    let f = with_mirrors(fetcher(&origin), vec![mirror_with(&peer, "store", &bytes)]);

    fetch(&f, &ts, &m).expect("fetch");

    assert_present(&ts, &m, &bytes);
    let st = peer.stats(&blob_path("store", &bytes));
    assert!(st.range_gets >= 4, "{} range requests", st.range_gets);
    assert_eq!(st.bytes_sent, bytes.len() as u64);
    ts.assert_consistent();
}

#[test]
fn a_mirror_that_breaks_off_is_resumed_from_by_the_origin_and_the_digest_decides() {
    // The mirror drops the connection half way; the origin serves the rest
    // from where the partial ends.
    let (origin, ts, bytes, m) = pending("m5", 2 * MIB, 97, vec![]);
    let peer = Origin::start_with_ca(origin.ca());
    let mirror = mirror_with(&peer, "store", &bytes);
    // Cut off half way, then gone.
    let at = blob_path("store", &bytes);
    peer.push_fault(&at, Fault::DropAt(MIB as u64));
    for _ in 0..4 {
        peer.push_fault(&at, Fault::Status(404));
    }
    let f = with_mirrors(fetcher(&origin), vec![mirror]);

    fetch(&f, &ts, &m).expect("fetch");

    assert_present(&ts, &m, &bytes);
    let st = origin.stats(&path_of("m5"));
    assert_eq!(
        ranges_from(&st.range_headers),
        vec![MIB as u64],
        "the origin is asked for the rest only"
    );
    assert_eq!(st.bytes_sent, MIB as u64);
    ts.assert_consistent();
}

#[test]
fn a_mirror_never_gets_the_hub_token() {
    const TOKEN: &str = "hf_mirror0test0token";
    let hub = Origin::start();
    let peer = Origin::start_with_ca(hub.ca());
    let ts = TestStore::new();
    let bytes = random_bytes(300_000, 98);
    let m = hf::write_manifest(&ts, "gated", "gated.gguf", &bytes);
    // The mirror refuses, so the hub is asked too.
    peer.put(&blob_path("store", &bytes), bytes.clone());
    peer.set_persistent_fault(&blob_path("store", &bytes), Some(Fault::Status(503)));
    hub.put("org/repo/resolve/main/gated.gguf", bytes.clone());
    let mut cfg = config(&hub);
    cfg.hf_endpoint = hf::endpoint(&hub);
    cfg.hf_token = Some(TOKEN.into());
    let f = with_mirrors(
        fetcher_with(cfg),
        vec![Mirror::parse(&peer.url("store")).unwrap()],
    );

    fetch(&f, &ts, &m).expect("the hub serves it");

    assert_present(&ts, &m, &bytes);
    let st = peer.stats(&blob_path("store", &bytes));
    assert!(st.gets >= 1, "the mirror was asked");
    assert!(
        st.request_headers
            .iter()
            .flatten()
            .all(|(_, v)| !v.contains(TOKEN)),
        "no header to the mirror carries the token"
    );
    let hub_st = hub.stats("org/repo/resolve/main/gated.gguf");
    assert!(
        hub_st
            .authorization_headers
            .iter()
            .all(|h| h.as_deref() == Some(&*format!("Bearer {TOKEN}"))),
        "the hub still gets it"
    );
}

#[test]
fn a_lying_mirror_alone_fails_over_to_the_origin_and_the_error_is_not_the_last_word() {
    let (origin, ts, bytes, m) = pending("m6", 300_000, 99, vec![]);
    let liar = Origin::start_with_ca(origin.ca());
    liar.put(&blob_path("store", &bytes), random_bytes(bytes.len(), 100));
    let f = with_mirrors(
        fetcher(&origin),
        vec![Mirror::parse(&liar.url("store")).unwrap()],
    );

    fetch(&f, &ts, &m).expect("the origin serves the right bytes");

    assert_present(&ts, &m, &bytes);
    assert_eq!(ts.quarantined().len(), 1);
    // Asked for the same blob again (a later fetch in this process), the
    // liar is not.
    std::fs::remove_file(ts.store().blob_path(&m.blob)).unwrap();
    fetch(&f, &ts, &m).expect("again from the origin");
    assert_eq!(liar.stats(&blob_path("store", &bytes)).gets, 1);
    ts.assert_consistent();
}

#[test]
fn mirrors_in_the_store_settings_serve_every_command_of_the_store() {
    let (origin, ts, bytes, m) = pending("m7", 300_000, 101, vec![]);
    let peer = Origin::start_with_ca(origin.ca());
    let mirror = mirror_with(&peer, "store", &bytes);
    let run = |args: &[&str]| {
        let out = ts
            .cli(origin.ca_pem_path())
            .env_remove("MODELFS_MIRRORS")
            .args(args)
            .output()
            .unwrap();
        (out.status.success(), crate::common::output_text(&out))
    };
    let (ok, text) = run(&["settings", "set", "mirrors", "http://not-https"]);
    assert!(!ok && text.contains("only https://"), "{text}");
    let (ok, text) = run(&["settings", "set", "mirrors", mirror.base()]);
    assert!(ok, "{text}");
    let (ok, text) = run(&["settings", "get", "mirrors"]);
    assert!(ok && text.contains(mirror.base()), "{text}");

    let (ok, text) = run(&["pull", "m7"]);

    assert!(ok, "{text}");
    assert_present(&ts, &m, &bytes);
    assert_eq!(origin.stats(&path_of("m7")).gets, 0, "the mirror served it");
    assert_eq!(peer.stats(&blob_path("store", &bytes)).gets, 1);
}
