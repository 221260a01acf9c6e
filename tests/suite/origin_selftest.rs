//! Self-test of the test HTTPS origin (tests/suite/common/origin.rs), using real TLS
//! clients: curl (OpenSSL) with `--cacert`, and rustls (webpki), the stack
//! ureq uses.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::origin::{Fault, Origin, TestCa};
use crate::common::random_bytes;
use sha2::{Digest, Sha256};

fn sha256(b: &[u8]) -> Vec<u8> {
    Sha256::digest(b).to_vec()
}

struct CurlOut {
    /// curl's exit code.
    code: i32,
    /// Status of the last response.
    status: u16,
    /// Headers of the last response.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    elapsed: Duration,
}

impl CurlOut {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Run curl trusting `ca_pem`, returning exit code, last status/headers, body.
fn curl_with_ca(ca_pem: &Path, url: &str, extra: &[&str]) -> CurlOut {
    let dir = tempfile::tempdir().unwrap();
    let hdr = dir.path().join("headers");
    let body = dir.path().join("body");
    let t0 = Instant::now();
    let out = Command::new("/usr/bin/curl")
        .arg("-sS")
        .arg("--cacert")
        .arg(ca_pem)
        .args(["--max-time", "20", "-D"])
        .arg(&hdr)
        .arg("-o")
        .arg(&body)
        .args(extra)
        .arg(url)
        .output()
        .expect("run curl");
    let elapsed = t0.elapsed();
    let raw = std::fs::read_to_string(&hdr).unwrap_or_default();
    // With -L there are several header blocks; keep the last one.
    let last = raw
        .split("\r\n\r\n")
        .filter(|b| b.starts_with("HTTP/"))
        .last()
        .unwrap_or("");
    let mut lines = last.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    CurlOut {
        code: out.status.code().unwrap_or(-1),
        status,
        headers,
        body: std::fs::read(&body).unwrap_or_default(),
        elapsed,
    }
}

fn curl(o: &Origin, url: &str, extra: &[&str]) -> CurlOut {
    curl_with_ca(o.ca_pem_path(), url, extra)
}

/// A raw HTTP/1.1 request over a rustls client that trusts `ca`. Returns the
/// raw bytes received and the final read result (Ok or the error kind).
fn rustls_get(
    ca: &TestCa,
    port: u16,
    server_name: &str,
    path: &str,
) -> (Vec<u8>, Result<(), ErrorKind>) {
    rustls_request(ca, port, server_name, "GET", path)
}

fn rustls_request(
    ca: &TestCa,
    port: u16,
    server_name: &str,
    method: &str,
    path: &str,
) -> (Vec<u8>, Result<(), ErrorKind>) {
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(ca.client_config(), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let req = format!(
        "{method} /{path} HTTP/1.1\r\nHost: {server_name}:{port}\r\nConnection: close\r\n\r\n"
    );
    if let Err(e) = tls.write_all(req.as_bytes()) {
        return (Vec::new(), Err(e.kind()));
    }
    let mut buf = Vec::new();
    let res = tls.read_to_end(&mut buf).map(|_| ()).map_err(|e| e.kind());
    (buf, res)
}

fn split_response(raw: &[u8]) -> (String, &[u8]) {
    let pos = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    (
        String::from_utf8_lossy(&raw[..pos]).into_owned(),
        &raw[pos + 4..],
    )
}

#[test]
fn serves_a_full_get_whose_sha256_matches_the_put_bytes() {
    let o = Origin::start();
    let bytes = random_bytes(3 * 1024 * 1024 + 17, 1);
    o.put("models/a.bin", bytes.clone());
    let r = curl(&o, &o.url("models/a.bin"), &[]);
    assert_eq!(r.code, 0);
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), sha256(&bytes));
    assert_eq!(
        r.header("content-length"),
        Some(bytes.len().to_string().as_str())
    );
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("etag").map(str::to_string), o.etag("models/a.bin"));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(r.header("last-modified").unwrap().ends_with(" GMT"));
    assert_eq!(o.stats("models/a.bin").bytes_sent, bytes.len() as u64);
}

#[test]
fn serves_a_range_request_with_206_and_content_range() {
    let o = Origin::start();
    let bytes = random_bytes(200_000, 2);
    o.put("r.bin", bytes.clone());
    let url = o.url("r.bin");

    let r = curl(&o, &url, &["-r", "100-199"]);
    assert_eq!((r.code, r.status), (0, 206));
    assert_eq!(r.body, &bytes[100..200]);
    assert_eq!(r.header("content-range"), Some("bytes 100-199/200000"));
    assert_eq!(r.header("content-length"), Some("100"));

    let r = curl(&o, &url, &["-r", "150000-"]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &bytes[150_000..]);
    assert_eq!(
        r.header("content-range"),
        Some("bytes 150000-199999/200000")
    );

    let r = curl(&o, &url, &["-H", "Range: bytes=-10"]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &bytes[199_990..]);

    // End beyond the file is clamped.
    let r = curl(&o, &url, &["-r", "199000-999999"]);
    assert_eq!(
        r.header("content-range"),
        Some("bytes 199000-199999/200000")
    );
    assert_eq!(r.body, &bytes[199_000..]);

    let r = curl(&o, &url, &["-r", "200000-"]);
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */200000"));

    // If-Range with a stale ETag: full body with 200.
    let r = curl(&o, &url, &["-r", "0-9", "-H", "If-Range: \"stale\""]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), bytes.len());
    let etag = o.etag("r.bin").unwrap();
    let r = curl(&o, &url, &["-r", "0-9", "-H", &format!("If-Range: {etag}")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &bytes[..10]);
}

#[test]
fn answers_404_for_unknown_and_removed_paths_and_put_replaces_content() {
    let o = Origin::start();
    assert_eq!(curl(&o, &o.url("nope"), &[]).status, 404);
    o.put("f", b"first".to_vec());
    let etag1 = o.etag("f").unwrap();
    assert_eq!(curl(&o, &o.url("f"), &[]).body, b"first");
    o.put("f", b"second version".to_vec());
    let r = curl(&o, &o.url("f"), &[]);
    assert_eq!(r.body, b"second version");
    assert_ne!(r.header("etag").unwrap(), etag1);
    o.remove("f");
    assert_eq!(curl(&o, &o.url("f"), &[]).status, 404);
    assert_eq!(o.stats("f").statuses, vec![200, 200, 404]);
}

#[test]
fn head_returns_headers_with_no_body() {
    let o = Origin::start();
    o.put("h.bin", random_bytes(12_345, 3));
    let r = curl(&o, &o.url("h.bin"), &["-I"]);
    assert_eq!((r.code, r.status), (0, 200));
    assert_eq!(r.header("content-length"), Some("12345"));
    assert!(r.header("etag").is_some());
    // On the wire: headers, then the connection ends (cleanly) with no body.
    let (raw, res) = rustls_request(o.ca(), o.port(), "localhost", "HEAD", "h.bin");
    assert_eq!(res, Ok(()));
    let (head, body) = split_response(&raw);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Length: 12345"), "{head}");
    assert!(body.is_empty(), "HEAD sent {} body bytes", body.len());
    let s = o.stats("h.bin");
    assert_eq!((s.heads, s.gets, s.bytes_sent), (2, 0, 0));
}

#[test]
fn drop_at_closes_the_connection_mid_body_so_curl_reports_a_short_transfer() {
    let o = Origin::start();
    let bytes = random_bytes(1_000_000, 4);
    o.put("d.bin", bytes.clone());
    o.push_fault("d.bin", Fault::DropAt(300_001));
    let r = curl(&o, &o.url("d.bin"), &[]);
    assert!(
        r.code == 18 || r.code == 56,
        "curl exit code {} (expected 18 or 56)",
        r.code
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1000000"));
    assert_eq!(
        r.body,
        &bytes[..300_001],
        "exactly the bytes before the drop"
    );
    assert_eq!(o.stats("d.bin").bytes_sent, 300_001);
    // One-shot: the next GET is complete.
    let r = curl(&o, &o.url("d.bin"), &[]);
    assert_eq!(r.code, 0);
    assert_eq!(r.body, bytes);
}

#[test]
fn drop_at_ends_the_tls_stream_without_close_notify_for_a_rustls_client() {
    let o = Origin::start();
    let bytes = random_bytes(100_000, 5);
    o.put("d.bin", bytes.clone());

    let (raw, res) = rustls_get(o.ca(), o.port(), "127.0.0.1", "d.bin");
    assert_eq!(res, Ok(()), "a normal response ends with close_notify");
    assert_eq!(split_response(&raw).1, &bytes[..]);

    o.push_fault("d.bin", Fault::DropAt(4_000));
    let (raw, res) = rustls_get(o.ca(), o.port(), "127.0.0.1", "d.bin");
    assert_eq!(res, Err(ErrorKind::UnexpectedEof));
    assert_eq!(split_response(&raw).1, &bytes[..4_000]);

    // Truncate closes cleanly (close_notify) but early.
    o.push_fault("d.bin", Fault::Truncate(5_000));
    let (raw, res) = rustls_get(o.ca(), o.port(), "localhost", "d.bin");
    assert_eq!(res, Ok(()));
    let (head, body) = split_response(&raw);
    assert!(head.contains("Content-Length: 100000"), "{head}");
    assert_eq!(body, &bytes[..5_000]);
}

#[test]
fn truncate_sends_full_length_headers_then_closes_early_so_curl_reports_partial_file() {
    let o = Origin::start();
    let bytes = random_bytes(500_000, 6);
    o.put("t.bin", bytes.clone());
    o.push_fault("t.bin", Fault::Truncate(70_000));
    let r = curl(&o, &o.url("t.bin"), &[]);
    assert_eq!(r.code, 18, "CURLE_PARTIAL_FILE");
    assert_eq!(r.header("content-length"), Some("500000"));
    assert_eq!(r.body, &bytes[..70_000]);
}

#[test]
fn reset_at_aborts_the_connection_with_an_error_for_curl() {
    let o = Origin::start();
    o.put("x.bin", random_bytes(2_000_000, 7));
    o.push_fault("x.bin", Fault::ResetAt(100_000));
    let r = curl(&o, &o.url("x.bin"), &[]);
    assert_ne!(r.code, 0);
    assert!(r.body.len() <= 100_000);
}

#[test]
fn stall_at_holds_the_connection_open_then_completes_the_body() {
    let o = Origin::start();
    let bytes = random_bytes(300_000, 8);
    o.put("s.bin", bytes.clone());
    o.push_fault(
        "s.bin",
        Fault::StallAt(100_000, Duration::from_millis(1200)),
    );
    let t0 = Instant::now();
    let o_ref = &o;
    let r = std::thread::scope(|sc| {
        let h = sc.spawn(|| curl(o_ref, &o_ref.url("s.bin"), &[]));
        // Mid-stall the server has sent exactly the bytes before the offset.
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(o_ref.stats_now("s.bin").bytes_sent, 100_000);
        h.join().unwrap()
    });
    assert_eq!(r.code, 0);
    assert_eq!(r.body, bytes);
    assert!(
        t0.elapsed() >= Duration::from_millis(1150),
        "{:?}",
        t0.elapsed()
    );
    assert!(r.elapsed < Duration::from_secs(8));
}

#[test]
fn flip_byte_changes_exactly_one_byte_at_the_absolute_offset() {
    let o = Origin::start();
    let bytes = random_bytes(400_000, 9);
    o.put("f.bin", bytes.clone());

    o.push_fault("f.bin", Fault::FlipByte(123_456));
    let r = curl(&o, &o.url("f.bin"), &[]);
    assert_eq!(r.code, 0);
    assert_eq!(r.body.len(), bytes.len());
    let diffs: Vec<usize> = (0..bytes.len())
        .filter(|&i| r.body[i] != bytes[i])
        .collect();
    assert_eq!(diffs, vec![123_456]);
    assert_eq!((r.body[123_456] ^ bytes[123_456]).count_ones(), 1);

    // In a range response the offset is still absolute in the file.
    o.push_fault("f.bin", Fault::FlipByte(123_456));
    let r = curl(&o, &o.url("f.bin"), &["-r", "123000-124000"]);
    let want = &bytes[123_000..=124_000];
    let diffs: Vec<usize> = (0..want.len()).filter(|&i| r.body[i] != want[i]).collect();
    assert_eq!(diffs, vec![456]);
}

#[test]
fn push_fault_is_consumed_after_one_request_in_fifo_order() {
    let o = Origin::start();
    o.put("q", b"payload".to_vec());
    o.push_fault("q", Fault::Status(503));
    o.push_fault("q", Fault::Status(500));
    assert_eq!(o.pending_faults("q"), 2);
    let r = curl(&o, &o.url("q"), &[]);
    assert_eq!(r.status, 503);
    assert!(!r.body.is_empty(), "short error body");
    assert_eq!(curl(&o, &o.url("q"), &[]).status, 500);
    assert_eq!(o.pending_faults("q"), 0);
    let r = curl(&o, &o.url("q"), &[]);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"payload"[..]));
    assert_eq!(o.stats("q").statuses, vec![503, 500, 200]);
}

#[test]
fn head_consumes_a_status_fault_but_leaves_a_body_fault_for_the_next_get() {
    let o = Origin::start();
    o.put("h", random_bytes(50_000, 10));
    o.push_fault("h", Fault::Status(401));
    assert_eq!(curl(&o, &o.url("h"), &["-I"]).status, 401);
    assert_eq!(o.pending_faults("h"), 0);

    o.push_fault("h", Fault::DropAt(10));
    assert_eq!(curl(&o, &o.url("h"), &["-I"]).status, 200);
    assert_eq!(o.pending_faults("h"), 1);
    let r = curl(&o, &o.url("h"), &[]);
    assert_ne!(r.code, 0);
    assert_eq!(r.body.len(), 10);
}

#[test]
fn too_many_requests_carries_retry_after() {
    let o = Origin::start();
    o.put("m", b"x".to_vec());
    o.push_fault(
        "m",
        Fault::TooManyRequests {
            retry_after_secs: 7,
        },
    );
    let r = curl(&o, &o.url("m"), &[]);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(curl(&o, &o.url("m"), &[]).status, 200);
}

#[test]
fn redirect_location_points_at_a_second_origin_trusted_by_the_same_ca() {
    let a = Origin::start();
    let b = Origin::start_with_ca(a.ca());
    assert_ne!(a.port(), b.port());
    assert_eq!(a.ca_pem_path(), b.ca_pem_path());
    let bytes = random_bytes(70_000, 11);
    b.put("blob/x", bytes.clone());
    a.push_fault("model.gguf", Fault::RedirectTo(b.url_localhost("blob/x")));

    let r = curl(&a, &a.url("model.gguf"), &[]);
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location").map(str::to_string),
        Some(b.url_localhost("blob/x"))
    );

    a.push_fault("model.gguf", Fault::RedirectTo(b.url_localhost("blob/x")));
    let r = curl(&a, &a.url("model.gguf"), &["-L"]);
    assert_eq!((r.code, r.status), (0, 200));
    assert_eq!(r.body, bytes);
    assert_eq!(b.stats("blob/x").gets, 1);

    // A redirect to plain http:// (curl follows it; modelfs must not).
    a.push_fault(
        "model.gguf",
        Fault::Redirect {
            status: 307,
            location: b.http_url("blob/x"),
        },
    );
    let r = curl(&a, &a.url("model.gguf"), &[]);
    assert_eq!(r.status, 307);
    assert!(
        r.header("location")
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );
}

#[test]
fn stats_count_gets_heads_range_gets_bytes_and_authorization_headers() {
    let o = Origin::start();
    o.put("s", random_bytes(1000, 12));
    curl(&o, &o.url("s"), &["-H", "Authorization: Bearer hf_secret"]);
    curl(&o, &o.url("s"), &["-r", "10-19"]);
    curl(
        &o,
        &o.url("s"),
        &["-I", "-H", "Authorization: Bearer other"],
    );
    curl(&o, &o.url("other"), &[]);
    let s = o.stats("s");
    assert_eq!((s.gets, s.range_gets, s.heads), (2, 1, 1));
    assert_eq!(s.bytes_sent, 1010);
    assert_eq!(
        s.authorization_headers,
        vec![
            Some("Bearer hf_secret".to_string()),
            None,
            Some("Bearer other".to_string())
        ]
    );
    assert_eq!(
        s.range_headers,
        vec![None, Some("bytes=10-19".to_string()), None]
    );
    assert_eq!(s.plain_http_requests, 0);
    assert!(
        s.request_headers[0]
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("user-agent") && v.starts_with("curl/"))
    );
    assert_eq!(o.total_requests(), 4);
    assert_eq!(o.stats("other").gets, 1);
}

#[test]
fn plain_http_listener_serves_the_same_files() {
    let o = Origin::start();
    let bytes = random_bytes(80_000, 13);
    o.put("p/q.bin", bytes.clone());
    let url = o.http_url("p/q.bin");
    assert!(url.starts_with("http://127.0.0.1:"));
    let r = curl(&o, &url, &[]);
    assert_eq!((r.code, r.status), (0, 200));
    assert_eq!(r.body, bytes);
    let r = curl(&o, &url, &["-r", "5-9"]);
    assert_eq!(r.body, &bytes[5..10]);
    // Speaking TLS to the plain listener fails.
    let r = curl(&o, &url.replace("http://", "https://"), &[]);
    assert_ne!(r.code, 0);
    let s = o.stats("p/q.bin");
    assert_eq!(s.plain_http_requests, 2);
    assert_eq!(s.gets, 2);
}

#[test]
fn certificate_is_valid_for_ip_and_localhost_and_rejected_under_another_ca() {
    let o = Origin::start();
    o.put("c", b"hello".to_vec());
    for name in ["127.0.0.1", "localhost"] {
        let (raw, res) = rustls_get(o.ca(), o.port(), name, "c");
        assert_eq!(res, Ok(()), "rustls with SNI/IP {name}");
        assert_eq!(split_response(&raw).1, b"hello");
    }
    assert_eq!(curl(&o, &o.url_localhost("c"), &[]).body, b"hello");
    assert_eq!(curl(&o, &o.url("c"), &[]).body, b"hello");

    // A client trusting a different CA refuses the certificate.
    let stranger = TestCa::new();
    let (_raw, res) = rustls_get(&stranger, o.port(), "127.0.0.1", "c");
    assert!(res.is_err());
    let r = curl_with_ca(stranger.pem_path(), &o.url("c"), &[]);
    assert_eq!(r.code, 60, "CURLE_PEER_FAILED_VERIFICATION");
    // A host name not in the certificate is refused too.
    let (_raw, res) = rustls_get(o.ca(), o.port(), "example.invalid", "c");
    assert!(res.is_err());
    assert_eq!(o.stats("c").gets, 4, "refused handshakes make no request");
}

#[test]
fn content_length_lie_is_sent_and_the_body_is_cut_to_it() {
    let o = Origin::start();
    let bytes = random_bytes(10_000, 14);
    o.put("cl", bytes.clone());
    o.push_fault("cl", Fault::ContentLength(4_000));
    let r = curl(&o, &o.url("cl"), &[]);
    assert_eq!((r.code, r.header("content-length")), (0, Some("4000")));
    assert_eq!(r.body, &bytes[..4_000]);

    o.push_fault("cl", Fault::ContentLength(20_000));
    let r = curl(&o, &o.url("cl"), &[]);
    assert_eq!(r.code, 18, "longer Content-Length than the body");
    assert_eq!(r.body, bytes);
}

#[test]
fn ignore_range_answers_200_with_the_full_body() {
    let o = Origin::start();
    let bytes = random_bytes(30_000, 15);
    o.put("ir", bytes.clone());
    o.push_fault("ir", Fault::IgnoreRange);
    let r = curl(&o, &o.url("ir"), &["-r", "100-199"]);
    assert_eq!(r.status, 200);
    assert!(r.header("content-range").is_none());
    assert_eq!(r.body, bytes);
    assert_eq!(o.stats("ir").range_gets, 1);
}

#[test]
fn throttle_limits_the_transfer_rate() {
    let o = Origin::start();
    let bytes = random_bytes(100_000, 16);
    o.put("th", bytes.clone());
    o.push_fault("th", Fault::Throttle(200_000));
    let r = curl(&o, &o.url("th"), &[]);
    assert_eq!(r.body, bytes);
    assert!(r.elapsed >= Duration::from_millis(400), "{:?}", r.elapsed);
    assert!(r.elapsed < Duration::from_secs(5), "{:?}", r.elapsed);
}

#[test]
fn persistent_fault_applies_until_cleared_and_star_matches_every_path() {
    let o = Origin::start();
    o.put("a", b"a".to_vec());
    o.put("b", b"b".to_vec());
    o.set_persistent_fault("a", Some(Fault::Status(403)));
    for _ in 0..3 {
        assert_eq!(curl(&o, &o.url("a"), &[]).status, 403);
    }
    assert_eq!(curl(&o, &o.url("b"), &[]).status, 200);
    o.set_persistent_fault("a", None);
    assert_eq!(curl(&o, &o.url("a"), &[]).status, 200);

    o.set_persistent_fault("*", Some(Fault::Status(503)));
    assert_eq!(curl(&o, &o.url("b"), &[]).status, 503);
    o.set_persistent_fault("*", None);
    assert_eq!(curl(&o, &o.url("b"), &[]).status, 200);

    // Multi combines faults in one response.
    o.put("big", random_bytes(200_000, 17));
    o.push_fault(
        "big",
        Fault::Multi(vec![Fault::FlipByte(5), Fault::DropAt(1000)]),
    );
    let r = curl(&o, &o.url("big"), &[]);
    assert_ne!(r.code, 0);
    assert_eq!(r.body.len(), 1000);
    assert_ne!(r.body[5], random_bytes(200_000, 17)[5]);
}

#[test]
fn directory_listing_links_the_files_below_a_path_ending_in_slash() {
    let o = Origin::start();
    o.put("repo/model.gguf", b"m".to_vec());
    o.put("repo/config.json", b"{}".to_vec());
    o.put("repo/sub/tok en.bin", b"t".to_vec());
    o.put("elsewhere", b"e".to_vec());
    let r = curl(&o, &o.url("repo/"), &[]);
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    let html = String::from_utf8(r.body).unwrap();
    assert!(html.contains("<a href=\"model.gguf\">"), "{html}");
    assert!(html.contains("<a href=\"config.json\">"), "{html}");
    assert!(html.contains("<a href=\"sub/\">"), "{html}");
    assert!(!html.contains("elsewhere"));
    let r = curl(&o, &o.url("repo/sub/"), &[]);
    assert!(
        String::from_utf8(r.body)
            .unwrap()
            .contains("href=\"tok%20en.bin\"")
    );
    // The encoded link resolves to the file.
    assert_eq!(curl(&o, &o.url("repo/sub/tok en.bin"), &[]).body, b"t");
    let root = String::from_utf8(curl(&o, &o.url(""), &[]).body).unwrap();
    assert!(root.contains("href=\"repo/\"") && root.contains("href=\"elsewhere\""));
    assert_eq!(curl(&o, &o.url("empty/"), &[]).status, 404);
}

#[test]
fn extra_headers_emulate_hugging_face_linked_etag_and_size() {
    let o = Origin::start();
    let blob = Origin::start_with_ca(o.ca());
    blob.put("xet/abc", random_bytes(4096, 18));
    o.set_extra_headers(
        "org/m/resolve/main/m.gguf",
        vec![
            ("X-Linked-Etag".into(), "\"deadbeef\"".into()),
            ("X-Linked-Size".into(), "4096".into()),
            ("X-Repo-Commit".into(), "0123abcd".into()),
        ],
    );
    o.set_persistent_fault(
        "org/m/resolve/main/m.gguf",
        Some(Fault::RedirectTo(blob.url("xet/abc"))),
    );
    let r = curl(&o, &o.url("org/m/resolve/main/m.gguf"), &["-I"]);
    assert_eq!(r.status, 302);
    assert_eq!(r.header("x-linked-etag"), Some("\"deadbeef\""));
    assert_eq!(r.header("x-linked-size"), Some("4096"));
    assert_eq!(
        r.header("location").map(str::to_string),
        Some(blob.url("xet/abc"))
    );
    let r = curl(&o, &o.url("org/m/resolve/main/m.gguf"), &["-L"]);
    assert_eq!(r.body, random_bytes(4096, 18));
}

#[test]
fn put_file_serves_a_file_from_disk_with_ranges() {
    let o = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.bin");
    let bytes = random_bytes(1_500_000, 19);
    std::fs::write(&p, &bytes).unwrap();
    o.put_file("disk.bin", &p);
    let r = curl(&o, &o.url("disk.bin"), &[]);
    assert_eq!(sha256(&r.body), sha256(&bytes));
    let r = curl(&o, &o.url("disk.bin"), &["-r", "1000000-1000999"]);
    assert_eq!(r.body, &bytes[1_000_000..1_001_000]);
}

#[test]
fn dropping_the_origin_unblocks_a_client_stuck_in_a_stall() {
    let o = Origin::start();
    o.put("z", random_bytes(100_000, 20));
    o.push_fault("z", Fault::StallAt(10, Duration::from_secs(60)));
    let ca = o.ca().clone();
    let url = o.url("z");
    let h = std::thread::spawn(move || {
        let r = curl_with_ca(ca.pem_path(), &url, &[]);
        (r.code, r.body.len(), Instant::now())
    });
    // Wait for the request to arrive, then drop the origin.
    let t0 = Instant::now();
    while o.stats_now("z").bytes_sent < 10 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(o.stats_now("z").bytes_sent, 10);
    let dropped_at = Instant::now();
    drop(o);
    let (code, len, ended) = h.join().unwrap();
    assert_ne!(code, 0);
    assert_eq!(len, 10);
    assert!(ended.duration_since(dropped_at) < Duration::from_secs(3));
}

#[test]
fn a_plain_tcp_connection_that_sends_garbage_does_not_break_the_server() {
    let o = Origin::start();
    o.put("g", b"ok".to_vec());
    {
        let mut s = TcpStream::connect(("127.0.0.1", o.port())).unwrap();
        let _ = s.write_all(b"this is not TLS\r\n\r\n");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    }
    {
        // Disconnect mid-body.
        o.put("big", random_bytes(5_000_000, 21));
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(o.ca().client_config(), name).unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", o.port())).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 1000];
        tls.read_exact(&mut buf).unwrap();
    }
    assert!(o.wait_idle(Duration::from_secs(5)));
    assert_eq!(curl(&o, &o.url("g"), &[]).body, b"ok");
    assert!(o.connections() >= 3);
}

#[test]
fn serves_a_gguf_made_by_the_generator_script_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("demo.gguf");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/make_gguf.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&path)
        .arg("3000000")
        .args(["--seed", "42", "--info"])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(info["size"].as_u64(), Some(bytes.len() as u64));
    assert!(bytes.len() >= 3_000_000 && bytes.len() < 3_000_032);
    assert_eq!(&bytes[..4], b"GGUF");
    assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 3);
    let sha_hex: String = sha256(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(info["sha256"].as_str(), Some(sha_hex.as_str()));

    let o = Origin::start();
    o.put_file("demo.gguf", &path);
    let r = curl(&o, &o.url("demo.gguf"), &[]);
    assert_eq!(r.code, 0);
    assert_eq!(sha256(&r.body), sha256(&bytes));
}

#[test]
fn ureq_trusting_the_ca_pem_fetches_ranges_and_follows_a_redirect_between_origins() {
    let a = Origin::start();
    let b = Origin::start_with_ca(a.ca());
    let bytes = random_bytes(300_000, 22);
    b.put("blob", bytes.clone());
    a.set_persistent_fault("m.gguf", Some(Fault::RedirectTo(b.url_localhost("blob"))));

    let pem = std::fs::read(a.ca_pem_path()).unwrap();
    let ca = ureq::tls::Certificate::from_pem(&pem).unwrap();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&[ca]))
        .build();
    let agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .build()
        .new_agent();

    let mut resp = agent
        .get(&a.url("m.gguf"))
        .header("Range", "bytes=1000-1999")
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 206);
    let body = resp.body_mut().read_to_vec().unwrap();
    assert_eq!(body, &bytes[1000..2000]);
    assert_eq!(a.stats("m.gguf").statuses, vec![302]);
    assert_eq!(
        b.stats("blob").range_headers,
        vec![Some("bytes=1000-1999".to_string())]
    );

    let mut resp = agent.get(&b.url("blob")).call().unwrap();
    assert_eq!(
        resp.body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_vec()
            .unwrap(),
        bytes
    );
}
