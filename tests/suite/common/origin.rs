//! A real HTTPS origin on 127.0.0.1 for integration tests.
//!
//! `Origin::start()` creates a throw-away certificate authority (rcgen), a leaf
//! certificate signed by it for `localhost`, `127.0.0.1` and `127.0.0.2`, and
//! serves HTTP/1.1 over TLS (rustls, ring provider) on `127.0.0.1:<random port>`
//! with one thread per connection. A second, plain-HTTP listener serves the same
//! files (`Origin::http_url`).
//!
//! Every response carries `Connection: close` (one request per connection),
//! unless `Origin::set_keep_alive` asked for persistent connections: then a
//! whole, cleanly sent answer keeps its connection for the next request, as
//! nginx does.
//! GET and HEAD are supported, with `Range: bytes=N-`, `bytes=N-M` and
//! `bytes=-S` (206 + `Content-Range`, 416 when N >= length), `If-Range`,
//! `Accept-Ranges: bytes`, `ETag`, `Last-Modified`. A path ending in `/` (or
//! the root) returns an HTML directory listing of the files below it.
//!
//! Faults (`Fault`) are injected per path, either one-shot (FIFO queue,
//! `push_fault`) or persistent (`set_persistent_fault`). The special path `"*"`
//! matches every path that has no fault of its own. One-shot and persistent
//! faults that both apply are combined (see `Fault::Multi`).
//!
//! Dropping the `Origin` stops both listeners and shuts down every open
//! connection, so clients blocked on it see an error instead of hanging.
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Body bytes are written in chunks of at most this size (fault offsets split
/// chunks further so that they are honoured exactly).
const CHUNK: usize = 64 * 1024;
/// How long `Origin::stats` waits for in-flight responses on the path to finish.
const STATS_SETTLE: Duration = Duration::from_secs(2);

fn ring_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------------------
// Certificate authority
// ---------------------------------------------------------------------------

/// A throw-away certificate authority. Cloning is cheap (shared); the CA PEM
/// file lives in a temporary directory until the last clone is dropped.
#[derive(Clone)]
pub struct TestCa {
    inner: Arc<CaInner>,
}

struct CaInner {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    pem: String,
    pem_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("pem_path", &self.inner.pem_path)
            .finish()
    }
}

impl TestCa {
    /// A new CA (ECDSA P-256, `CA:TRUE`), its PEM written to `pem_path()`.
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().expect("generate CA key");
        let mut params = rcgen::CertificateParams::default();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "modelfs test CA");
        dn.push(rcgen::DnType::OrganizationName, "modelfs tests");
        params.distinguished_name = dn;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign CA");
        let pem = cert.pem();
        let dir = tempfile::Builder::new()
            .prefix("modelfs-test-ca-")
            .tempdir()
            .expect("tempdir for CA");
        let pem_path = dir.path().join("ca.pem");
        std::fs::write(&pem_path, &pem).expect("write CA PEM");
        TestCa {
            inner: Arc::new(CaInner {
                cert,
                key,
                pem,
                pem_path,
                _dir: dir,
            }),
        }
    }

    /// Path of a file holding the CA certificate in PEM form.
    pub fn pem_path(&self) -> &Path {
        &self.inner.pem_path
    }

    /// The CA certificate in PEM form.
    pub fn pem(&self) -> &str {
        &self.inner.pem
    }

    /// The CA certificate in DER form.
    pub fn der(&self) -> CertificateDer<'static> {
        self.inner.cert.der().clone()
    }

    /// Issue a server (leaf) certificate for `names` (DNS names or IP
    /// addresses), signed by this CA. Returns the chain (leaf, CA) and the key.
    pub fn issue(&self, names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let (leaf, key) = self.leaf(names);
        let chain = vec![leaf.der().clone(), self.der()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (chain, key)
    }

    /// [`TestCa::issue`] as PEM files in `dir`: `(chain, key)` paths, for
    /// a server started as a program (`modelfs serve --cert --key`).
    pub fn issue_pem_files(&self, names: &[&str], dir: &Path) -> (PathBuf, PathBuf) {
        let (leaf, key) = self.leaf(names);
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, format!("{}{}", leaf.pem(), self.pem())).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    fn leaf(&self, names: &[&str]) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().expect("generate leaf key");
        let sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(sans).expect("leaf params");
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or("localhost"),
        );
        params.distinguished_name = dn;
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let leaf = params
            .signed_by(&key, &self.inner.cert, &self.inner.key)
            .expect("sign leaf");
        (leaf, key)
    }

    /// A rustls server config presenting a leaf for `names` signed by this CA.
    pub fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let (chain, key) = self.issue(names);
        let mut cfg = rustls::ServerConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server cert");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }

    /// A rustls client config that trusts exactly this CA (ring provider).
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der()).expect("add CA root");
        let cfg = rustls::ClientConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(cfg)
    }
}

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// Per-path request statistics. `gets` counts every GET, including those
/// with a Range header (which are also counted in `range_gets`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OriginStats {
    pub gets: u64,
    pub heads: u64,
    pub range_gets: u64,
    /// Body bytes actually written to the client (GET responses only).
    pub bytes_sent: u64,
    /// One entry per request (any method), in arrival order.
    pub authorization_headers: Vec<Option<String>>,
    /// One entry per request (any method), in arrival order.
    pub range_headers: Vec<Option<String>>,
    /// All request headers (names as sent), one entry per request.
    pub request_headers: Vec<Vec<(String, String)>>,
    /// Requests with another method than GET/HEAD (answered with 405).
    pub other_methods: u64,
    /// Requests that arrived over the plain-HTTP listener.
    pub plain_http_requests: u64,
    /// Status code of each response, in arrival order.
    pub statuses: Vec<u16>,
}

/// An injected misbehaviour. Offsets in `DropAt`, `StallAt`, `Truncate`,
/// `ResetAt` count body bytes of *this response*; `FlipByte` is an absolute
/// offset in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// After this many body bytes, close the TCP connection (FIN) without a
    /// TLS close_notify. Everything before the offset is delivered.
    DropAt(u64),
    /// After this many body bytes, send nothing for the duration, then continue.
    StallAt(u64, Duration),
    /// Flip the lowest bit of the body byte at this absolute file offset.
    FlipByte(u64),
    /// Send this Content-Length (a lie), then the real bytes up to that
    /// length, then close cleanly (possibly early, if the file is shorter).
    ContentLength(u64),
    /// Answer with this status and a short text body.
    Status(u16),
    /// 429 with `Retry-After: <secs>`.
    TooManyRequests { retry_after_secs: u64 },
    /// 302 with `Location: <url>`.
    RedirectTo(String),
    /// Answer a Range request with 200 and the full body.
    IgnoreRange,
    /// Correct headers for the full length, but only this many body bytes,
    /// then a clean close (TLS close_notify + FIN).
    Truncate(u64),
    /// Limit the body to about this many bytes per second.
    Throttle(u64),
    // ---- extras -------------------------------------------------------
    /// A redirect with a chosen status (301, 302, 303, 307, 308).
    Redirect { status: u16, location: String },
    /// After this many body bytes, abort with a TCP RST (SO_LINGER 0). Data
    /// still in the server's send buffer may be lost.
    ResetAt(u64),
    /// Sleep this long before sending the status line (applies to HEAD too).
    StallHeaders(Duration),
    /// Answer a Range request with 206 and the range's bytes, but without
    /// a `Content-Range` header.
    NoContentRange,
    /// Answer a Range request with 206 and the bytes of another range: the
    /// one asked for moved this many bytes on (`Content-Range` says so).
    ShiftRange(u64),
    /// Add this many extra headers of about 100 bytes each to the response
    /// head (a broken proxy: too many headers, or a head too large).
    ExtraHeaders(usize),
    /// Answer with `Connection: keep-alive`, then wait on the connection
    /// for the next request and close it without answering (a server that
    /// timed out an idle kept-alive connection just as it was reused).
    KeepAliveThenClose,
    /// Several faults applied to the same response.
    Multi(Vec<Fault>),
}

impl Fault {
    /// Whether a one-shot fault is consumed by a HEAD request.
    fn meaningful_for_head(&self) -> bool {
        match self {
            Fault::Status(_)
            | Fault::TooManyRequests { .. }
            | Fault::RedirectTo(_)
            | Fault::Redirect { .. }
            | Fault::StallHeaders(_) => true,
            Fault::Multi(v) => v.iter().any(Fault::meaningful_for_head),
            _ => false,
        }
    }
}

/// The running origin. Stops (listeners and open connections) when dropped.
pub struct Origin {
    shared: Arc<Shared>,
    ca: TestCa,
    https_addr: SocketAddr,
    http_addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

// ---------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------

#[derive(Clone)]
enum Body {
    Mem(Arc<Vec<u8>>),
    Disk(Arc<File>, u64),
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Mem(v) => v.len() as u64,
            Body::Disk(_, len) => *len,
        }
    }

    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        match self {
            Body::Mem(v) => {
                let start = off as usize;
                buf.copy_from_slice(&v[start..start + buf.len()]);
                Ok(())
            }
            Body::Disk(f, _) => f.read_exact_at(buf, off),
        }
    }
}

struct Resource {
    body: Body,
    etag: String,
    modified: SystemTime,
    content_type: &'static str,
}

#[derive(Default)]
struct State {
    files: HashMap<String, Arc<Resource>>,
    one_shot: HashMap<String, VecDeque<Fault>>,
    persistent: HashMap<String, Fault>,
    stats: HashMap<String, OriginStats>,
    extra_headers: HashMap<String, Vec<(String, String)>>,
    in_flight: HashMap<String, u64>,
    total_requests: u64,
    generation: u64,
}

struct Shared {
    state: Mutex<State>,
    settled: Condvar,
    shutdown: AtomicBool,
    connections: AtomicU64,
    next_conn_id: AtomicU64,
    open: Mutex<HashMap<u64, TcpStream>>,
    tls: Arc<rustls::ServerConfig>,
    keep_alive: AtomicBool,
}

impl Shared {
    fn sleep(&self, d: Duration) {
        let deadline = Instant::now() + d;
        while !self.shutdown.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            thread::sleep((deadline - now).min(Duration::from_millis(10)));
        }
    }
}

// ---------------------------------------------------------------------------
// Origin API
// ---------------------------------------------------------------------------

impl Origin {
    /// A new origin with its own new CA.
    pub fn start() -> Origin {
        Origin::start_with_ca(&TestCa::new())
    }

    /// A new origin (new port, so a different host:port) whose certificate is
    /// signed by `ca`.
    pub fn start_with_ca(ca: &TestCa) -> Origin {
        let tls = ca.server_config(&["localhost", "127.0.0.1", "127.0.0.2"]);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            settled: Condvar::new(),
            shutdown: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            next_conn_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
            tls,
            keep_alive: AtomicBool::new(false),
        });
        let https = TcpListener::bind("127.0.0.1:0").expect("bind https listener");
        let http = TcpListener::bind("127.0.0.1:0").expect("bind http listener");
        let https_addr = https.local_addr().expect("https addr");
        let http_addr = http.local_addr().expect("http addr");
        let mut threads = Vec::new();
        for (listener, tls) in [(https, true), (http, false)] {
            let sh = shared.clone();
            threads.push(
                thread::Builder::new()
                    .name(format!(
                        "origin-accept-{}",
                        if tls { "https" } else { "http" }
                    ))
                    .spawn(move || accept_loop(sh, listener, tls))
                    .expect("spawn accept thread"),
            );
        }
        Origin {
            shared,
            ca: ca.clone(),
            https_addr,
            http_addr,
            threads,
        }
    }

    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    pub fn ca_pem_path(&self) -> &Path {
        self.ca.pem_path()
    }

    /// Port of the HTTPS listener.
    pub fn port(&self) -> u16 {
        self.https_addr.port()
    }

    /// Port of the plain-HTTP listener.
    pub fn http_port(&self) -> u16 {
        self.http_addr.port()
    }

    /// `https://127.0.0.1:{port}/{path}`
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}/{}", self.port(), encode_path(path))
    }

    /// `https://localhost:{port}/{path}`
    pub fn url_localhost(&self, path: &str) -> String {
        format!("https://localhost:{}/{}", self.port(), encode_path(path))
    }

    /// `http://127.0.0.1:{http_port}/{path}` (plain HTTP, same files).
    pub fn http_url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.http_port(),
            encode_path(path)
        )
    }

    /// Serve `bytes` at `/path`, replacing any previous content (new ETag).
    pub fn put(&self, path: &str, bytes: Vec<u8>) {
        self.insert(path, Body::Mem(Arc::new(bytes)));
    }

    /// Serve the content of a file on disk at `/path` (read lazily, so large
    /// files need not be held in memory). The file must not change size.
    pub fn put_file(&self, path: &str, file: &Path) {
        let f = File::open(file).expect("open file to serve");
        let len = f.metadata().expect("stat file to serve").len();
        self.insert(path, Body::Disk(Arc::new(f), len));
    }

    fn insert(&self, path: &str, body: Body) {
        let key = normalize(path);
        let mut st = self.shared.state.lock();
        st.generation += 1;
        let etag = format!("\"g{}-{}\"", st.generation, body.len());
        st.files.insert(
            key,
            Arc::new(Resource {
                body,
                etag,
                modified: SystemTime::now(),
                content_type: "application/octet-stream",
            }),
        );
    }

    /// Stop serving `/path` (404 from now on). Stats are kept.
    pub fn remove(&self, path: &str) {
        self.shared.state.lock().files.remove(&normalize(path));
    }

    /// The ETag currently served for `/path`, if it exists.
    pub fn etag(&self, path: &str) -> Option<String> {
        let st = self.shared.state.lock();
        st.files.get(&normalize(path)).map(|r| r.etag.clone())
    }

    /// Queue a one-shot fault for the next request of `/path` (GET; HEAD only
    /// for Status, TooManyRequests, redirects, StallHeaders). FIFO.
    pub fn push_fault(&self, path: &str, fault: Fault) {
        let mut st = self.shared.state.lock();
        st.one_shot
            .entry(normalize(path))
            .or_default()
            .push_back(fault);
    }

    /// Number of one-shot faults still queued for `/path`.
    pub fn pending_faults(&self, path: &str) -> usize {
        let st = self.shared.state.lock();
        st.one_shot.get(&normalize(path)).map_or(0, VecDeque::len)
    }

    /// Drop all queued one-shot faults for `/path`.
    pub fn clear_faults(&self, path: &str) {
        self.shared.state.lock().one_shot.remove(&normalize(path));
    }

    /// A fault applied to every request of `/path` until cleared with `None`.
    pub fn set_persistent_fault(&self, path: &str, fault: Option<Fault>) {
        let mut st = self.shared.state.lock();
        let key = normalize(path);
        match fault {
            Some(f) => {
                st.persistent.insert(key, f);
            }
            None => {
                st.persistent.remove(&key);
            }
        }
    }

    /// Statistics for `/path`. Waits (up to 2 s) for responses on that path
    /// still being written, so that `bytes_sent` is settled; use `stats_now`
    /// to read without waiting.
    pub fn stats(&self, path: &str) -> OriginStats {
        let key = normalize(path);
        let deadline = Instant::now() + STATS_SETTLE;
        let mut st = self.shared.state.lock();
        while st.in_flight.get(&key).copied().unwrap_or(0) > 0 {
            if self
                .shared
                .settled
                .wait_until(&mut st, deadline)
                .timed_out()
            {
                break;
            }
        }
        st.stats.get(&key).cloned().unwrap_or_default()
    }

    /// Statistics for `/path` without waiting for in-flight responses.
    pub fn stats_now(&self, path: &str) -> OriginStats {
        let st = self.shared.state.lock();
        st.stats.get(&normalize(path)).cloned().unwrap_or_default()
    }

    /// Forget all statistics (not files or faults).
    pub fn reset_stats(&self) {
        let mut st = self.shared.state.lock();
        st.stats.clear();
        st.total_requests = 0;
    }

    /// Number of HTTP requests parsed (all paths, both listeners).
    pub fn total_requests(&self) -> u64 {
        self.shared.state.lock().total_requests
    }

    /// Keep each connection for the next request after a whole answer
    /// (`Connection: keep-alive`), instead of one request per connection.
    pub fn set_keep_alive(&self, on: bool) {
        self.shared.keep_alive.store(on, Ordering::SeqCst);
    }

    /// Number of TCP connections accepted (both listeners), including ones
    /// whose TLS handshake failed.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Wait until no response is being written (any path). True if idle.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.state.lock();
        while st.in_flight.values().any(|&n| n > 0) {
            if self
                .shared
                .settled
                .wait_until(&mut st, deadline)
                .timed_out()
            {
                return !st.in_flight.values().any(|&n| n > 0);
            }
        }
        true
    }

    /// Extra response headers for `/path` (all responses, including faults
    /// and 404). They replace default headers of the same name, except that
    /// Content-Length / Content-Range / Connection / Transfer-Encoding are
    /// only replaced on HEAD responses (where no body has to match them).
    pub fn set_extra_headers(&self, path: &str, headers: Vec<(String, String)>) {
        let mut st = self.shared.state.lock();
        st.extra_headers.insert(normalize(path), headers);
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        // Wake the accept loops.
        for addr in [self.https_addr, self.http_addr] {
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for (_, s) in self.shared.open.lock().drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

// ---------------------------------------------------------------------------
// Connection handling
// ---------------------------------------------------------------------------

fn accept_loop(shared: Arc<Shared>, listener: TcpListener, tls: bool) {
    for stream in listener.incoming() {
        if shared.shutdown.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let sh = shared.clone();
        let _ = thread::Builder::new()
            .name("origin-conn".into())
            .spawn(move || serve_connection(sh, stream, tls));
    }
}

/// Removes the connection from the open set when the thread ends.
struct OpenGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.shared.open.lock().remove(&self.id);
    }
}

/// Marks a response on a path as in flight (for `Origin::stats`).
struct InFlight<'a> {
    shared: &'a Shared,
    key: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.state.lock();
        if let Some(n) = st.in_flight.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
        self.shared.settled.notify_all();
    }
}

enum Stream {
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
    Plain(TcpStream),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tls(s) => &s.sock,
            Stream::Plain(s) => s,
        }
    }

    fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// TLS close_notify (if TLS), FIN, then drain what the client still sends.
    fn close_clean(mut self) {
        if let Stream::Tls(s) = &mut self {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
        self.close_fin();
    }

    /// FIN without a TLS close_notify, then drain (avoids an RST that could
    /// destroy data the client has not read yet).
    fn close_fin(self) {
        let tcp = self.tcp();
        let _ = tcp.shutdown(Shutdown::Write);
        let _ = tcp.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 4096];
        let mut tcp_ref = tcp;
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            match tcp_ref.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    /// Abortive close: SO_LINGER 0, so close() sends an RST.
    fn close_rst(self) {
        let fd = self.tcp().as_raw_fd();
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: fd is a valid socket owned by self; linger is a valid
        // struct of the size passed.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        drop(self);
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tls(s) => s.read(buf),
            Stream::Plain(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tls(s) => s.write(buf),
            Stream::Plain(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tls(s) => s.flush(),
            Stream::Plain(s) => s.flush(),
        }
    }
}

fn serve_connection(shared: Arc<Shared>, tcp: TcpStream, tls: bool) {
    let id = shared.next_conn_id.fetch_add(1, Ordering::SeqCst);
    if let Ok(clone) = tcp.try_clone() {
        shared.open.lock().insert(id, clone);
    }
    let _open = OpenGuard {
        shared: &shared,
        id,
    };
    if shared.shutdown.load(Ordering::SeqCst) {
        return;
    }
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = tcp.set_write_timeout(Some(Duration::from_secs(30)));
    let stream = if tls {
        match rustls::ServerConnection::new(shared.tls.clone()) {
            Ok(conn) => Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))),
            Err(_) => return,
        }
    } else {
        Stream::Plain(tcp)
    };
    handle(&shared, stream);
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(stream: &mut Stream) -> Option<Request> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut tmp).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        // Not HTTP (e.g. a TLS ClientHello on the plain listener): give up
        // at once instead of waiting for a blank line that never comes.
        if !buf[0].is_ascii_uppercase() {
            return None;
        }
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let headers = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    // Absolute-form targets (proxies) are reduced to their path.
    let target = match target.find("://") {
        Some(i) => {
            let rest = &target[i + 3..];
            rest.find('/')
                .map_or("/".to_string(), |j| rest[j..].to_string())
        }
        None => target,
    };
    let path_only = target.split(['?', '#']).next().unwrap_or("");
    let path = normalize(&percent_decode(path_only));
    Some(Request {
        method,
        path,
        headers,
    })
}

/// What to do to one response, built from the applicable faults.
#[derive(Default)]
struct Plan {
    response: Option<Fault>,
    ignore_range: bool,
    stall_headers: Option<Duration>,
    drop_at: Option<u64>,
    reset_at: Option<u64>,
    stalls: Vec<(u64, Duration)>,
    flips: Vec<u64>,
    content_length: Option<u64>,
    truncate: Option<u64>,
    throttle: Option<u64>,
    no_content_range: bool,
    shift_range: u64,
    extra_headers: usize,
    keep_alive_then_close: bool,
}

fn min_opt(a: Option<u64>, b: u64) -> Option<u64> {
    Some(a.map_or(b, |a| a.min(b)))
}

impl Plan {
    fn add(&mut self, f: &Fault, head: bool) {
        if head && !f.meaningful_for_head() {
            return;
        }
        match f {
            Fault::Status(_)
            | Fault::TooManyRequests { .. }
            | Fault::RedirectTo(_)
            | Fault::Redirect { .. } => {
                if self.response.is_none() {
                    self.response = Some(f.clone());
                }
            }
            Fault::StallHeaders(d) => {
                self.stall_headers = Some(self.stall_headers.unwrap_or_default() + *d)
            }
            Fault::IgnoreRange => self.ignore_range = true,
            Fault::DropAt(n) => self.drop_at = min_opt(self.drop_at, *n),
            Fault::ResetAt(n) => self.reset_at = min_opt(self.reset_at, *n),
            Fault::StallAt(n, d) => self.stalls.push((*n, *d)),
            Fault::FlipByte(off) => self.flips.push(*off),
            Fault::ContentLength(n) => self.content_length = Some(*n),
            Fault::Truncate(n) => self.truncate = min_opt(self.truncate, *n),
            Fault::Throttle(bps) => self.throttle = min_opt(self.throttle, (*bps).max(1)),
            Fault::NoContentRange => self.no_content_range = true,
            Fault::ShiftRange(n) => self.shift_range += n,
            Fault::ExtraHeaders(n) => self.extra_headers += n,
            Fault::KeepAliveThenClose => self.keep_alive_then_close = true,
            Fault::Multi(v) => {
                for f in v {
                    self.add(f, head);
                }
            }
        }
    }
}

struct Prepared {
    plan: Plan,
    resource: Option<Arc<Resource>>,
    extra: Vec<(String, String)>,
}

fn prepare(shared: &Shared, req: &Request, tls: bool) -> Prepared {
    let mut st = shared.state.lock();
    st.total_requests += 1;
    let head = req.method == "HEAD";
    let get = req.method == "GET";
    {
        let s = st.stats.entry(req.path.clone()).or_default();
        match req.method.as_str() {
            "GET" => {
                s.gets += 1;
                if req.header("range").is_some() {
                    s.range_gets += 1;
                }
            }
            "HEAD" => s.heads += 1,
            _ => s.other_methods += 1,
        }
        if !tls {
            s.plain_http_requests += 1;
        }
        s.authorization_headers
            .push(req.header("authorization").map(str::to_string));
        s.range_headers
            .push(req.header("range").map(str::to_string));
        s.request_headers.push(req.headers.clone());
    }
    *st.in_flight.entry(req.path.clone()).or_default() += 1;

    let mut plan = Plan::default();
    if get || head {
        let key = if st.one_shot.get(&req.path).is_some_and(|q| !q.is_empty()) {
            Some(req.path.clone())
        } else if st.one_shot.get("*").is_some_and(|q| !q.is_empty()) {
            Some("*".to_string())
        } else {
            None
        };
        if let Some(key) = key {
            let q = st.one_shot.get_mut(&key).expect("queue exists");
            let applies = get || q.front().is_some_and(Fault::meaningful_for_head);
            if applies && let Some(f) = q.pop_front() {
                plan.add(&f, head);
            }
        }
        let persistent = st
            .persistent
            .get(&req.path)
            .or_else(|| st.persistent.get("*"))
            .cloned();
        if let Some(f) = persistent {
            plan.add(&f, head);
        }
    }

    let resource = match st.files.get(&req.path) {
        Some(r) => Some(r.clone()),
        None if req.path.is_empty() || req.path.ends_with('/') => listing(&st, &req.path),
        None => None,
    };
    let extra = st.extra_headers.get(&req.path).cloned().unwrap_or_default();
    Prepared {
        plan,
        resource,
        extra,
    }
}

fn listing(st: &State, dir: &str) -> Option<Arc<Resource>> {
    let mut files = BTreeSet::new();
    let mut dirs = BTreeSet::new();
    let mut newest = UNIX_EPOCH;
    for (key, res) in &st.files {
        let Some(rest) = key.strip_prefix(dir) else {
            continue;
        };
        if rest.is_empty() {
            continue;
        }
        newest = newest.max(res.modified);
        match rest.split_once('/') {
            Some((d, _)) => {
                dirs.insert(format!("{d}/"));
            }
            None => {
                files.insert(rest.to_string());
            }
        }
    }
    if files.is_empty() && dirs.is_empty() {
        return None;
    }
    let title = html_escape(&format!("Index of /{dir}"));
    let mut html = format!(
        "<!DOCTYPE html>\n<html>\n<head><title>{title}</title></head>\n<body>\n<h1>{title}</h1>\n<ul>\n"
    );
    for name in dirs.iter().chain(files.iter()) {
        html.push_str(&format!(
            "<li><a href=\"{}\">{}</a></li>\n",
            html_escape(&encode_path(name)),
            html_escape(name)
        ));
    }
    html.push_str("</ul>\n</body>\n</html>\n");
    let etag = format!("\"l{:016x}\"", fnv1a(html.as_bytes()));
    Some(Arc::new(Resource {
        body: Body::Mem(Arc::new(html.into_bytes())),
        etag,
        modified: newest,
        content_type: "text/html; charset=utf-8",
    }))
}

fn handle(shared: &Shared, mut stream: Stream) {
    let Some(req) = read_request(&mut stream) else {
        return;
    };
    let Prepared {
        plan,
        resource,
        extra,
    } = prepare(shared, &req, stream.is_tls());
    let in_flight = InFlight {
        shared,
        key: req.path.clone(),
    };
    let head = req.method == "HEAD";

    if let Some(d) = plan.stall_headers {
        shared.sleep(d);
    }

    let record_status = |code: u16| {
        let mut st = shared.state.lock();
        st.stats
            .entry(req.path.clone())
            .or_default()
            .statuses
            .push(code);
    };

    if req.method != "GET" && !head {
        record_status(405);
        let headers = vec![("Allow".to_string(), "GET, HEAD".to_string())];
        simple_response(&mut stream, 405, headers, &extra, false);
        drop(in_flight);
        stream.close_clean();
        return;
    }

    if let Some(resp) = &plan.response {
        let (code, headers) = match resp {
            Fault::Status(code) => (*code, vec![]),
            Fault::TooManyRequests { retry_after_secs } => (
                429,
                vec![("Retry-After".to_string(), retry_after_secs.to_string())],
            ),
            Fault::RedirectTo(loc) => (302, vec![("Location".to_string(), loc.clone())]),
            Fault::Redirect { status, location } => {
                (*status, vec![("Location".to_string(), location.clone())])
            }
            _ => (500, vec![]),
        };
        record_status(code);
        simple_response(&mut stream, code, headers, &extra, head);
        drop(in_flight);
        stream.close_clean();
        return;
    }

    let Some(res) = resource else {
        record_status(404);
        simple_response(&mut stream, 404, vec![], &extra, head);
        drop(in_flight);
        stream.close_clean();
        return;
    };

    let total = res.body.len();
    let mut range = None;
    if !plan.ignore_range
        && let Some(r) = req.header("range")
    {
        let if_range_ok = req.header("if-range").is_none_or(|v| v == res.etag);
        if if_range_ok {
            match parse_range(r, total) {
                RangeSpec::None => {}
                RangeSpec::Unsatisfiable => {
                    record_status(416);
                    let headers = vec![("Content-Range".to_string(), format!("bytes */{total}"))];
                    simple_response(&mut stream, 416, headers, &extra, head);
                    drop(in_flight);
                    stream.close_clean();
                    return;
                }
                RangeSpec::Range(a, b) => {
                    let last = total.saturating_sub(1);
                    let shift = plan.shift_range;
                    range = Some(((a + shift).min(last), (b + shift).min(last)));
                }
            }
        }
    }
    let (code, start, end) = match range {
        Some((a, b)) => (206, a, b + 1),
        None => (200, 0, total),
    };
    record_status(code);
    let body_len = end - start;
    let declared = plan.content_length.unwrap_or(body_len);

    let mut headers = vec![
        ("Content-Type".to_string(), res.content_type.to_string()),
        ("Content-Length".to_string(), declared.to_string()),
        ("Accept-Ranges".to_string(), "bytes".to_string()),
        ("ETag".to_string(), res.etag.clone()),
        ("Last-Modified".to_string(), http_date(res.modified)),
    ];
    if code == 206 && !plan.no_content_range {
        headers.push((
            "Content-Range".to_string(),
            format!("bytes {}-{}/{}", start, end - 1, total),
        ));
    }
    for i in 0..plan.extra_headers {
        headers.push((format!("X-Filler-{i}"), "f".repeat(90)));
    }
    let keep = !plan.keep_alive_then_close && shared.keep_alive.load(Ordering::SeqCst);
    if plan.keep_alive_then_close || keep {
        headers.push(("Connection".to_string(), "keep-alive".to_string()));
    }
    if write_head(&mut stream, code, headers, &extra, head).is_err() {
        return;
    }
    if head {
        drop(in_flight);
        if keep {
            return handle(shared, stream);
        }
        stream.close_clean();
        return;
    }

    // Body.
    enum End {
        Clean,
        Fin,
        Rst,
    }
    let mut limit = body_len.min(declared);
    let mut end_mode = End::Clean;
    if let Some(t) = plan.truncate {
        limit = limit.min(t);
    }
    if let Some(d) = plan.drop_at
        && d <= limit
    {
        limit = d;
        end_mode = End::Fin;
    }
    if let Some(r) = plan.reset_at
        && r <= limit
    {
        limit = r;
        end_mode = End::Rst;
    }
    let mut stalls = plan.stalls.clone();
    stalls.sort_by_key(|s| s.0);
    let mut stalls: VecDeque<_> = stalls.into();
    let chunk_max = match plan.throttle {
        Some(bps) => (bps / 20).clamp(1, CHUNK as u64) as usize,
        None => CHUNK,
    };
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    let t0 = Instant::now();
    loop {
        while let Some(&(at, d)) = stalls.front() {
            if at > sent {
                break;
            }
            stalls.pop_front();
            if at == sent {
                shared.sleep(d);
            }
        }
        if sent >= limit || shared.shutdown.load(Ordering::SeqCst) {
            break;
        }
        let mut n = (limit - sent).min(chunk_max as u64);
        if let Some(&(at, _)) = stalls.front() {
            n = n.min(at - sent);
        }
        let n = n as usize;
        let chunk = &mut buf[..n];
        if res.body.read_at(start + sent, chunk).is_err() {
            stream.close_rst();
            return;
        }
        let abs = start + sent;
        for &f in &plan.flips {
            if f >= abs && f < abs + n as u64 {
                chunk[(f - abs) as usize] ^= 0x01;
            }
        }
        if stream.write_all(chunk).is_err() || stream.flush().is_err() {
            return; // client went away
        }
        sent += n as u64;
        {
            let mut st = shared.state.lock();
            st.stats.entry(req.path.clone()).or_default().bytes_sent += n as u64;
        }
        if let Some(bps) = plan.throttle {
            let due = Duration::from_secs_f64(sent as f64 / bps as f64);
            let elapsed = t0.elapsed();
            if due > elapsed {
                shared.sleep(due - elapsed);
            }
        }
    }
    drop(in_flight);
    if plan.keep_alive_then_close && matches!(end_mode, End::Clean) {
        // The client may reuse the connection: take its next request and
        // hang up without a word.
        if read_request(&mut stream).is_some() {
            shared.state.lock().total_requests += 1;
        }
        stream.close_fin();
        return;
    }
    if keep && matches!(end_mode, End::Clean) && sent == declared {
        // The whole answer went out: the next request may come on this
        // connection.
        return handle(shared, stream);
    }
    match end_mode {
        End::Clean => stream.close_clean(),
        End::Fin => stream.close_fin(),
        End::Rst => stream.close_rst(),
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        410 => "Gone",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn write_head(
    stream: &mut Stream,
    code: u16,
    mut headers: Vec<(String, String)>,
    extra: &[(String, String)],
    head: bool,
) -> io::Result<()> {
    const FRAMING: [&str; 4] = [
        "content-length",
        "content-range",
        "connection",
        "transfer-encoding",
    ];
    for (k, v) in extra {
        let framing = FRAMING.iter().any(|f| k.eq_ignore_ascii_case(f));
        if framing && !head {
            continue;
        }
        headers.retain(|(dk, _)| !dk.eq_ignore_ascii_case(k));
        headers.push((k.clone(), v.clone()));
    }
    let mut out = format!("HTTP/1.1 {} {}\r\n", code, reason(code));
    out.push_str(&format!("Date: {}\r\n", http_date(SystemTime::now())));
    out.push_str("Server: modelfs-test-origin\r\n");
    for (k, v) in &headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("connection"))
    {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    stream.write_all(out.as_bytes())?;
    stream.flush()
}

fn simple_response(
    stream: &mut Stream,
    code: u16,
    mut headers: Vec<(String, String)>,
    extra: &[(String, String)],
    head: bool,
) {
    let body = format!("{} {}\n", code, reason(code));
    headers.push((
        "Content-Type".to_string(),
        "text/plain; charset=utf-8".to_string(),
    ));
    headers.push(("Content-Length".to_string(), body.len().to_string()));
    if write_head(stream, code, headers, extra, head).is_err() {
        return;
    }
    if !head {
        let _ = stream.write_all(body.as_bytes());
        let _ = stream.flush();
    }
}

enum RangeSpec {
    None,
    Unsatisfiable,
    /// Inclusive bounds.
    Range(u64, u64),
}

fn parse_range(value: &str, total: u64) -> RangeSpec {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeSpec::None;
    };
    if spec.contains(',') {
        return RangeSpec::None; // multiple ranges: serve the whole body
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeSpec::None;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // Suffix range: the last N bytes.
        let Ok(n) = b.parse::<u64>() else {
            return RangeSpec::None;
        };
        if n == 0 || total == 0 {
            return RangeSpec::Unsatisfiable;
        }
        return RangeSpec::Range(total.saturating_sub(n), total - 1);
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeSpec::None;
    };
    let end = if b.is_empty() {
        u64::MAX
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e,
            _ => return RangeSpec::None,
        }
    };
    if start >= total {
        return RangeSpec::Unsatisfiable;
    }
    RangeSpec::Range(start, end.min(total - 1))
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// Path key: no leading slash (a lone "/" is the root listing, key "").
fn normalize(path: &str) -> String {
    path.trim_start_matches('/').to_string()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex_val(bytes[i + 1]), hex_val(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Percent-encode what may not appear raw in a URL path (spaces, controls,
/// non-ASCII, `"<>\^`{|}`); `?`, `#`, `%` are kept so callers can pass queries
/// and pre-encoded text.
fn encode_path(path: &str) -> String {
    let path = path.trim_start_matches('/');
    let mut out = String::with_capacity(path.len());
    for &b in path.as_bytes() {
        let raw = b.is_ascii_graphic() && !b"\"<>\\^`{|}".contains(&b);
        if raw {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil-from-days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        WD[days.rem_euclid(7) as usize],
        d,
        MON[(month - 1) as usize],
        year,
        h,
        m,
        s
    )
}
