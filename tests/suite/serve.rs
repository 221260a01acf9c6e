//! `modelfs serve` as a program, and stores that use it as their mirror:
//! what it answers (blob paths only, ranges, HEAD, ETag), what it never
//! sends (a partial, a changed blob, anything outside `blobs/`), and the
//! fleet: several stores and mounts behind one origin that share one
//! download through one host's server, past a dead and a lying mirror.

#![allow(clippy::result_large_err)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

use crate::common::sys::open_and_read;
use crate::common::{Mount, Origin, TestStore, random_bytes};
use crate::fetch::{assert_present, config, fetch, fetcher};
use modelfs::digest::Sha256;
use modelfs::fetch::{Http, Mirror};

const MIB: usize = 1 << 20;

/// A running `modelfs serve` of a store; killed when dropped.
struct Serve {
    child: Child,
    /// `https://127.0.0.1:PORT`
    url: String,
    _tls: tempfile::TempDir,
}

impl Serve {
    fn start(ts: &TestStore, origin: &Origin, extra: &[&str]) -> Serve {
        let tls = tempfile::tempdir().unwrap();
        let (cert, key) = origin
            .ca()
            .issue_pem_files(&["127.0.0.1", "localhost"], tls.path());
        let mut child = ts
            .cli(origin.ca_pem_path())
            .env("RUST_LOG", "info")
            .env_remove("MODELFS_MIRRORS")
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--cert"])
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start modelfs serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("modelfs serve prints its address");
        let url = line.trim().to_string();
        assert!(url.starts_with("https://127.0.0.1:"), "{url:?}");
        Serve {
            child,
            url,
            _tls: tls,
        }
    }

    fn mirror(&self) -> Mirror {
        Mirror::parse(&self.url).unwrap()
    }

    fn blob_url(&self, d: &Sha256) -> String {
        self.mirror().blob_url(d)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client(origin: &Origin) -> Http {
    Http::new(config(origin)).unwrap()
}

fn body(mut r: modelfs::fetch::http::Fetched) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match r.read(&mut buf).unwrap() {
            0 => return out,
            n => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn header(r: &modelfs::fetch::http::Fetched, name: &str) -> Option<String> {
    r.header(name).map(str::to_string)
}

#[test]
fn serve_answers_blob_paths_with_ranges_and_nothing_else() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = random_bytes(3 * MIB, 111);
    let m = ts.add_pending("served", &origin, &bytes);
    fetch(&fetcher(&origin), &ts, &m).expect("fetch");
    let pending = ts.add_pending("notyet", &origin, &random_bytes(1000, 112));
    let s = Serve::start(&ts, &origin, &["--no-fetch"]);
    let http = client(&origin);

    let whole = http.get_range(&s.blob_url(&m.blob), 0, bytes.len() as u64, None);
    let r = whole.expect("GET");
    assert_eq!(r.status, 206);
    let tag = header(&r, "etag").expect("an ETag");
    assert_eq!(tag, format!("\"sha256:{}\"", m.blob.to_hex()));
    assert!(body(r) == bytes);

    let r = http
        .get_range(&s.blob_url(&m.blob), 1000, 2000, Some(&tag))
        .unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(
        header(&r, "content-range").as_deref(),
        Some(&*format!("bytes 1000-1999/{}", bytes.len()))
    );
    assert!(body(r) == bytes[1000..2000]);
    // Another version named by If-Range: the whole blob.
    let r = http
        .get_range(&s.blob_url(&m.blob), 1000, 2000, Some("\"other\""))
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(body(r).len(), bytes.len());
    let r = http.head(&s.blob_url(&m.blob), false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        header(&r, "content-length").as_deref(),
        Some(&*bytes.len().to_string())
    );

    let hex = m.blob.to_hex();
    for path in [
        "/".to_string(),
        "/manifests/served.json".to_string(),
        format!("/blobs/sha256/{}/", &hex[..2]),
        format!("/blobs/sha256/{}/.partial-{hex}/data.tmp", &hex[..2]),
        format!(
            "/blobs/sha256/{}/{hex}/data/../../../../manifests/served.json",
            &hex[..2]
        ),
        "/locks/served.lock".to_string(),
    ] {
        let r = http.get_range(&format!("{}{path}", s.url), 0, 10, None);
        match r {
            Ok(r) => assert_eq!(r.status, 404, "{path}"),
            Err(e) => assert!(e.to_string().contains("404"), "{path}: {e}"),
        }
    }
    // Pinned but not here, with fetching off: not found, nothing fetched.
    let r = http.get_range(&s.blob_url(&pending.blob), 0, 10, None);
    assert!(
        r.map(|r| r.status == 404)
            .unwrap_or_else(|e| e.to_string().contains("404"))
    );
    assert_eq!(origin.stats("notyet.gguf").gets, 0);
}

#[test]
fn a_blob_changed_on_disk_after_it_was_verified_is_never_served() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = random_bytes(MIB, 113);
    let m = ts.add_pending("changed", &origin, &bytes);
    fetch(&fetcher(&origin), &ts, &m).expect("fetch");
    let s = Serve::start(&ts, &origin, &[]);
    // Someone writes into the verified blob in place.
    let path = ts.store().blob_path(&m.blob);
    let mut changed = bytes.clone();
    changed[500] ^= 1;
    std::fs::write(&path, &changed).unwrap();

    let r = client(&origin)
        .get_range(&s.blob_url(&m.blob), 0, bytes.len() as u64, None)
        .expect("served after a recheck and a fetch");
    assert!(body(r) == bytes, "the right bytes, never the changed ones");
    assert_eq!(
        ts.quarantined().len(),
        1,
        "the changed file went to quarantine"
    );
    assert!(origin.stats("changed.gguf").gets >= 1, "fetched again");
    ts.assert_consistent();
}

#[test]
fn stores_using_one_hosts_server_as_mirror_share_its_single_download() {
    let origin = Origin::start();
    let size = 24 * MIB;
    let bytes = random_bytes(size, 114);
    let host_a = TestStore::new();
    let m = host_a.add_pending("shared", &origin, &bytes);
    origin.set_persistent_fault("shared.gguf", Some(crate::common::Fault::Throttle(8 << 20)));
    let s = Serve::start(&host_a, &origin, &[]);
    let others: Vec<TestStore> = (0..3).map(|_| TestStore::new()).collect();
    for o in &others {
        o.write_manifest("shared", &origin.url("shared.gguf"), &bytes);
    }

    std::thread::scope(|sc| {
        for o in &others {
            let (mirror, origin, m) = (s.mirror(), &origin, &m);
            sc.spawn(move || {
                let mut f = fetcher(origin);
                f.set_mirrors(vec![mirror]).unwrap();
                fetch(&f, o, m).expect("fetch through host A");
            });
        }
    });

    for o in &others {
        assert_present(o, &m, &bytes);
    }
    assert_present(&host_a, &m, &bytes);
    let st = origin.stats("shared.gguf");
    assert_eq!(st.bytes_sent, size as u64, "the origin sent the model once");
}

fn blob_path(base: &str, d: &Sha256) -> String {
    let hex = d.to_hex();
    format!("{base}/blobs/sha256/{}/{hex}/data", &hex[..2])
}

#[test]
fn a_fleet_of_mounts_gets_the_model_once_from_the_origin_past_a_dead_and_a_lying_mirror() {
    crate::common::require_fuse();
    let origin = Origin::start();
    let size = 12 * MIB;
    let bytes = random_bytes(size, 115);
    let host_a = TestStore::new();
    let m = host_a.add_pending("fleet", &origin, &bytes);
    let s = Serve::start(&host_a, &origin, &[]);
    let liar = Origin::start_with_ca(origin.ca());
    liar.put(&blob_path("store", &m.blob), random_bytes(size, 116));
    let mirrors = [
        crate::mirrors::refused().base().to_string(),
        liar.url("store"),
        s.url.clone(),
    ];
    let opts: Vec<String> = mirrors.iter().map(|u| format!("mirror={u}")).collect();
    let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
    let hosts: Vec<TestStore> = (0..3).map(|_| TestStore::new()).collect();
    let mounts: Vec<Mount> = hosts
        .iter()
        .map(|h| {
            h.write_manifest("fleet", &origin.url("fleet.gguf"), &bytes);
            Mount::start(h, origin.ca_pem_path(), &opts)
        })
        .collect();

    let results: Vec<Result<Vec<u8>, i32>> = std::thread::scope(|sc| {
        let handles: Vec<_> = mounts
            .iter()
            .map(|mnt| sc.spawn(move || open_and_read(&mnt.path("fleet.gguf"))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    for r in results {
        assert!(r.expect("every host reads the model") == bytes);
    }
    assert_eq!(
        origin.stats("fleet.gguf").bytes_sent,
        size as u64,
        "the origin sent the model once"
    );
    for (h, mnt) in hosts.iter().zip(&mounts) {
        let q = h.quarantined();
        assert_eq!(
            q.len(),
            1,
            "the liar's bytes are in each host's quarantine: {q:?}"
        );
        let source = crate::common::sys::getxattr(&mnt.path("fleet.gguf"), "user.modelfs.source")
            .expect("user.modelfs.source");
        assert!(source.starts_with(&s.url), "{source}");
        h.assert_consistent();
    }
}
