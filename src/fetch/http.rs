//! The HTTPS transport: one configured `ureq` agent and the few requests
//! the pipeline makes (a ranged GET, a HEAD).
//!
//! Promises: every request and every redirect hop is `https://`; redirects
//! are followed here, hop by hop, so the Hugging Face token is attached only
//! to requests whose host and port are the Hugging Face endpoint's and never
//! forwarded to the host a redirect leads to (CDNs get signed URLs instead);
//! another port of the same host is another service, as for browsers and
//! curl, so it gets no token either; a registry's `401` challenge is
//! answered once per hop by [`super::oci::RegistryAuth`], whose grants are
//! bound the same way (to the registry's host, port and repository);
//! trust is the system's roots (`SSL_CERT_FILE`, else the Debian bundle,
//! else the bundled Mozilla roots) plus an optional CA file; proxies come
//! from `HTTPS_PROXY`/`ALL_PROXY`/`NO_PROXY`; a read that gets no byte for
//! the stall timeout fails. It does not retry: the pipeline decides that.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ureq::Agent;
use ureq::http::{HeaderMap, Response, Uri};
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

use super::error::FetchErrorKind;
use super::oci::RegistryAuth;

/// The Hugging Face endpoint; `HF_ENDPOINT` overrides it (mirrors, tests).
pub const DEFAULT_HF_ENDPOINT: &str = "https://huggingface.co";
/// The default of [`HttpConfig::min_rate`]: 4 KiB/s.
pub const DEFAULT_MIN_RATE: u64 = 4 << 10;
/// Redirect hops followed before giving up.
pub const MAX_REDIRECTS: u32 = 10;
/// Where Debian keeps the system trust store.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How the transport is set up.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// An extra PEM CA bundle to trust (private mirrors).
    pub ca_file: Option<PathBuf>,
    /// Fail a read after this long without a byte.
    pub stall_timeout: Duration,
    /// Fail an attempt that receives fewer bytes per second than this over
    /// a whole `stall_timeout` (0: no floor).
    pub min_rate: u64,
    pub connect_timeout: Duration,
    /// The Hugging Face endpoint whose host may receive `hf_token`.
    pub hf_endpoint: String,
    pub hf_token: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            ca_file: None,
            stall_timeout: Duration::from_secs(30),
            min_rate: DEFAULT_MIN_RATE,
            connect_timeout: Duration::from_secs(15),
            hf_endpoint: DEFAULT_HF_ENDPOINT.to_string(),
            hf_token: None,
        }
    }
}

impl HttpConfig {
    /// Defaults plus `HF_ENDPOINT`, `HF_TOKEN`, and `ca_file`.
    pub fn from_env(ca_file: Option<PathBuf>) -> Self {
        let var = |k| {
            std::env::var(k)
                .ok()
                .filter(|v: &String| !v.trim().is_empty())
        };
        Self {
            ca_file,
            hf_endpoint: var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_HF_ENDPOINT.to_string()),
            hf_token: var("HF_TOKEN").map(|t| t.trim().to_string()),
            ..Self::default()
        }
    }
}

/// A response whose body has not been read yet.
pub struct Fetched {
    pub status: u16,
    /// The URL that answered, after redirects.
    pub final_url: String,
    pub headers: HeaderMap,
    body: Box<dyn Read + Send>,
}

impl Fetched {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length")?.trim().parse().ok()
    }

    /// `Content-Range: bytes START-END/TOTAL` → `(START, TOTAL)`.
    pub fn content_range(&self) -> Option<(u64, Option<u64>)> {
        let v = self
            .header("content-range")?
            .trim()
            .strip_prefix("bytes ")?;
        let (range, total) = v.split_once('/')?;
        let start = range.split_once('-')?.0.trim().parse().ok()?;
        Some((start, total.trim().parse().ok()))
    }

    /// `Content-Range: bytes START-END/TOTAL` → `(START, END + 1, TOTAL)`:
    /// the range as a half-open interval.
    pub fn content_range_span(&self) -> Option<(u64, u64, Option<u64>)> {
        let v = self
            .header("content-range")?
            .trim()
            .strip_prefix("bytes ")?;
        let (range, total) = v.split_once('/')?;
        let (start, end) = range.split_once('-')?;
        let (start, end): (u64, u64) = (start.trim().parse().ok()?, end.trim().parse().ok()?);
        (end >= start).then_some((start, end + 1, total.trim().parse().ok()))
    }

    /// What names this version of the object for `If-Range`: a strong
    /// `ETag`, else `Last-Modified` (a weak ETag may not be used there).
    pub fn validator(&self) -> Option<String> {
        match self.header("etag").map(str::trim) {
            Some(tag) if !tag.starts_with("W/") && !tag.is_empty() => Some(tag.to_string()),
            _ => self.header("last-modified").map(|v| v.trim().to_string()),
        }
    }

    /// `Retry-After` in seconds (the HTTP-date form is rare and ignored).
    pub fn retry_after(&self) -> Option<Duration> {
        self.header("retry-after")?
            .trim()
            .parse()
            .ok()
            .map(Duration::from_secs)
    }

    /// Ends a body whose bytes were all read, so that the agent keeps its
    /// connection for the next request: ureq pools a connection only once
    /// a read has returned 0, and a range reader stops at its last byte.
    /// Without it every range of a parallel download paid a new TCP and
    /// TLS handshake and a new slow start. Any other answer (a byte left,
    /// an error) just lets the connection close when `self` is dropped.
    pub fn finish(&mut self) {
        let _ = self.read(&mut [0u8; 1]);
    }

    /// Reads the body; errors are classified like transport errors.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, FetchErrorKind> {
        loop {
            match self.body.read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(classify_io(&e, None)),
            }
        }
    }
}

/// The configured agent.
pub struct Http {
    agent: Agent,
    config: HttpConfig,
    hf_origin: Option<(String, u16)>,
    registry: RegistryAuth,
}

impl Http {
    pub fn new(config: HttpConfig) -> Result<Self, FetchErrorKind> {
        let roots = load_roots(config.ca_file.as_deref())?;
        let tls = TlsConfig::builder().root_certs(roots).build();
        let agent: Agent = Agent::config_builder()
            .tls_config(tls)
            .https_only(true)
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(config.connect_timeout))
            .timeout_per_read(Some(config.stall_timeout))
            .timeout_recv_response(Some(config.stall_timeout))
            .user_agent(format!("modelfs/{}", env!("CARGO_PKG_VERSION")))
            // A parallel download keeps up to 64 connections to one host
            // busy; ureq's default keeps 3 of them when a range ends, and
            // every other range then paid a TCP and TLS handshake and a
            // fresh slow start (three round trips on a WAN).
            .max_idle_connections(128)
            .max_idle_connections_per_host(64)
            // Ranges reuse a connection within milliseconds; between
            // fetches, a server may have timed out an idle one (Apache's
            // and Node's default is 5 s), and a request on it fails and
            // waits out a backoff. ureq keeps them for 15 s.
            .max_idle_age(Duration::from_secs(4))
            .build()
            .into();
        let hf_origin = origin_of(&config.hf_endpoint);
        Ok(Self {
            agent,
            config,
            hf_origin,
            registry: RegistryAuth::default(),
        })
    }

    pub fn config(&self) -> &HttpConfig {
        &self.config
    }

    /// The registry credentials and tokens this transport uses.
    pub fn registry_auth(&self) -> &RegistryAuth {
        &self.registry
    }

    /// `GET url` with `Accept: accept` (a registry manifest), following
    /// redirects.
    pub fn get_accepting(&self, url: &str, accept: &str) -> Result<Fetched, FetchErrorKind> {
        self.send(url, |agent, hop| {
            let mut req = agent.get(hop).header("Accept", accept);
            if let Some(auth) = self.auth_for(hop) {
                req = req.header("Authorization", auth);
            }
            req.call()
        })
    }

    /// `GET url` from byte `from` on (a `Range` request when `from > 0`),
    /// following redirects. Any status is returned; transport failures are
    /// errors.
    pub fn get(&self, url: &str, from: u64) -> Result<Fetched, FetchErrorKind> {
        self.send(url, |agent, hop| {
            let mut req = agent.get(hop).header("Accept-Encoding", "identity");
            if from > 0 {
                req = req.header("Range", format!("bytes={from}-"));
            }
            if let Some(auth) = self.auth_for(hop) {
                req = req.header("Authorization", auth);
            }
            req.call()
        })
    }

    /// `GET url` of bytes `[start, end)` only, with `If-Range: validator`
    /// when given (a server whose object changed then answers 200 with the
    /// whole new object instead of a piece of it), following redirects.
    pub fn get_range(
        &self,
        url: &str,
        start: u64,
        end: u64,
        validator: Option<&str>,
    ) -> Result<Fetched, FetchErrorKind> {
        self.send(url, |agent, hop| {
            let mut req = agent
                .get(hop)
                .header("Accept-Encoding", "identity")
                .header("Range", format!("bytes={start}-{}", end - 1));
            if let Some(v) = validator {
                req = req.header("If-Range", v);
            }
            if let Some(auth) = self.auth_for(hop) {
                req = req.header("Authorization", auth);
            }
            req.call()
        })
    }

    /// `method url` with `headers` and the body `body` makes (anew for
    /// each try: a registry's `401` is answered and the request tried
    /// again), not following redirects: a registry upload's `Location` is
    /// where its caller goes on.
    pub fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        body: &dyn Fn() -> std::io::Result<ureq::SendBody<'static>>,
    ) -> Result<Fetched, FetchErrorKind> {
        require_https(url)?;
        let call = |agent: &Agent, hop: &str| {
            let mut b = ureq::http::Request::builder().method(method).uri(hop);
            for (k, v) in headers {
                b = b.header(*k, v.as_str());
            }
            if let Some(auth) = self.auth_for(hop) {
                b = b.header("Authorization", auth);
            }
            agent.run(b.body(body().map_err(ureq::Error::Io)?)?)
        };
        let resp = self.call_answering(url, &call)?;
        Ok(into_fetched(resp, url))
    }

    /// `HEAD url`; follows redirects only when `follow` is set (Hugging
    /// Face puts the file's digest on the first, redirecting answer).
    pub fn head(&self, url: &str, follow: bool) -> Result<Fetched, FetchErrorKind> {
        let one = |agent: &Agent, hop: &str| {
            let mut req = agent.head(hop).header("Accept-Encoding", "identity");
            if let Some(auth) = self.auth_for(hop) {
                req = req.header("Authorization", auth);
            }
            req.call()
        };
        if follow {
            self.send(url, one)
        } else {
            require_https(url)?;
            let resp = self.call_answering(url, &one)?;
            Ok(into_fetched(resp, url))
        }
    }

    /// The `Authorization` header for this exact URL, if any: the Hugging
    /// Face token for the Hub's origin, else what a registry granted for
    /// this URL's registry and repository.
    fn auth_for(&self, url: &str) -> Option<String> {
        if let Some(token) = &self.config.hf_token
            && origin_of(url).is_some_and(|o| Some(&o) == self.hf_origin.as_ref())
        {
            return Some(format!("Bearer {token}"));
        }
        self.registry.authorization(url)
    }

    /// One request to `hop`, repeated once when it was a registry's `401`
    /// whose challenge got a new credential.
    fn call_answering(
        &self,
        hop: &str,
        call: &impl Fn(&Agent, &str) -> Result<Response<ureq::Body>, ureq::Error>,
    ) -> Result<Response<ureq::Body>, FetchErrorKind> {
        let resp = call(&self.agent, hop).map_err(|e| classify_ureq(e, hop))?;
        if resp.status().as_u16() == 401 && self.registry.answer(&self.agent, hop, resp.headers()) {
            return call(&self.agent, hop).map_err(|e| classify_ureq(e, hop));
        }
        Ok(resp)
    }

    fn send(
        &self,
        url: &str,
        call: impl Fn(&Agent, &str) -> Result<Response<ureq::Body>, ureq::Error>,
    ) -> Result<Fetched, FetchErrorKind> {
        let mut hop = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            require_https(&hop)?;
            let resp = self.call_answering(&hop, &call)?;
            let status = resp.status().as_u16();
            if !matches!(status, 301 | 302 | 303 | 307 | 308) {
                return Ok(into_fetched(resp, &hop));
            }
            let location = resp
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    FetchErrorKind::Redirect(format!("HTTP {status} without a Location header"))
                })?;
            hop = resolve_location(&hop, location)?;
            log::debug!("redirected to {}", crate::text::redact_url(&hop));
        }
        Err(FetchErrorKind::Redirect(format!(
            "more than {MAX_REDIRECTS} redirects"
        )))
    }
}

fn into_fetched(resp: Response<ureq::Body>, url: &str) -> Fetched {
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    Fetched {
        status,
        final_url: url.to_string(),
        headers: parts.headers,
        body: Box::new(body.into_reader()),
    }
}

fn require_https(url: &str) -> Result<(), FetchErrorKind> {
    if url
        .get(..8)
        .is_some_and(|p| p.eq_ignore_ascii_case("https://"))
    {
        Ok(())
    } else {
        Err(FetchErrorKind::InsecureUrl(crate::text::redact_url(url)))
    }
}

/// The lowercase host of an absolute URL.
pub fn host_of(url: &str) -> Option<String> {
    url.parse::<Uri>().ok()?.host().map(str::to_ascii_lowercase)
}

/// The lowercase host and the port (the scheme's default when absent) of an
/// absolute URL: what a credential is bound to.
fn origin_of(url: &str) -> Option<(String, u16)> {
    let uri = url.parse::<Uri>().ok()?;
    let default = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => 80,
        _ => 443,
    };
    let host = uri.host()?.to_ascii_lowercase();
    Some((host, uri.port_u16().unwrap_or(default)))
}

/// Resolves a `Location` against the URL that sent it.
pub(super) fn resolve_location(base: &str, location: &str) -> Result<String, FetchErrorKind> {
    if location.contains("://") {
        return Ok(location.to_string());
    }
    let uri: Uri = base
        .parse()
        .map_err(|_| FetchErrorKind::BadUrl(crate::text::redact_url(base)))?;
    let origin = format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("https"),
        uri.authority().map(|a| a.as_str()).unwrap_or_default()
    );
    if let Some(rest) = location.strip_prefix("//") {
        return Ok(format!("{}://{rest}", uri.scheme_str().unwrap_or("https")));
    }
    if location.starts_with('/') {
        return Ok(format!("{origin}{location}"));
    }
    let dir = uri.path().rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    Ok(format!("{origin}{dir}/{location}"))
}

fn classify_ureq(e: ureq::Error, url: &str) -> FetchErrorKind {
    use ureq::Error as E;
    match e {
        // Before the status line: a connection the server closed (a
        // kept-alive one it timed out just as it was reused, most often).
        E::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            ) =>
        {
            FetchErrorKind::ClosedBeforeAnswer(io.to_string())
        }
        E::Io(io) => classify_io(&io, Some(url)),
        E::Timeout(t) => match t {
            ureq::Timeout::Connect | ureq::Timeout::Resolve => {
                FetchErrorKind::Network(format!("timed out: {t}"))
            }
            _ => FetchErrorKind::Stalled(Duration::ZERO),
        },
        E::HostNotFound => FetchErrorKind::UnknownHost(format!(
            "{} has no address",
            host_of(url).unwrap_or_default()
        )),
        E::ConnectionFailed => FetchErrorKind::Network("connection failed".into()),
        E::Tls(d) => FetchErrorKind::Tls(d.to_string()),
        E::Rustls(r) => FetchErrorKind::Tls(r.to_string()),
        E::Pem(p) => FetchErrorKind::Tls(format!("bad PEM: {p}")),
        E::RequireHttpsOnly(u) => FetchErrorKind::InsecureUrl(crate::text::redact_url(&u)),
        E::BadUri(u) => FetchErrorKind::BadUrl(crate::text::redact_url(&u)),
        E::TooManyRedirects | E::RedirectFailed => FetchErrorKind::Redirect(e.to_string()),
        E::LargeResponseHeader(got, limit) => FetchErrorKind::BadHeaders(format!(
            "the header block has {got} bytes, more than the {limit} accepted"
        )),
        E::Protocol(p) if p.to_string().contains("too many headers") => {
            FetchErrorKind::BadHeaders(format!("too many headers ({p})"))
        }
        E::Protocol(p) => FetchErrorKind::Network(format!("protocol error: {p}")),
        other => FetchErrorKind::Network(other.to_string()),
    }
}

fn classify_io(e: &std::io::Error, url: Option<&str>) -> FetchErrorKind {
    // ureq wraps its own errors (timeouts, TLS) into io::Error on body reads.
    let text = e.to_string();
    if let Some(url) = url
        && is_name_unknown(&text)
    {
        return FetchErrorKind::UnknownHost(format!(
            "{}: {text}",
            host_of(url).unwrap_or_default()
        ));
    }
    if e.kind() == std::io::ErrorKind::TimedOut || text.contains("timeout") {
        return FetchErrorKind::Stalled(Duration::ZERO);
    }
    if text.contains("certificate") || text.contains("tls") || text.contains("TLS") {
        // A TLS alert mid-stream is a connection problem, not a trust one.
        if url.is_some() && text.contains("certificate") {
            return FetchErrorKind::Tls(text);
        }
    }
    FetchErrorKind::Network(text)
}

/// Whether a resolver error is the DNS's definite "no such name"
/// (`EAI_NONAME`, `EAI_NODATA`), as opposed to a resolver that could not be
/// asked (`EAI_AGAIN`, "Temporary failure in name resolution"), which is
/// worth retrying. std words these with glibc's `gai_strerror`.
fn is_name_unknown(text: &str) -> bool {
    text.contains("failed to lookup address information")
        && (text.contains("Name or service not known")
            || text.contains("No address associated with hostname"))
}

/// System roots plus the optional extra CA file.
fn load_roots(extra: Option<&Path>) -> Result<RootCerts, FetchErrorKind> {
    let mut certs: Vec<Certificate<'static>> = Vec::new();
    let system = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| SYSTEM_CA_BUNDLE.into());
    match std::fs::read(&system) {
        Ok(pem) => certs.extend(parse_certs(&pem)),
        Err(e) => log::debug!("no system CA bundle at {}: {e}", system.display()),
    }
    if let Some(path) = extra {
        let pem = std::fs::read(path).map_err(|e| {
            FetchErrorKind::Tls(format!("cannot read CA file {}: {e}", path.display()))
        })?;
        let found = parse_certs(&pem);
        if found.is_empty() {
            return Err(FetchErrorKind::Tls(format!(
                "CA file {} holds no PEM certificate",
                path.display()
            )));
        }
        certs.extend(found);
    }
    if certs.is_empty() {
        log::debug!("no CA bundle found; using the bundled Mozilla roots");
        return Ok(RootCerts::WebPki);
    }
    Ok(RootCerts::new_with_certs(&certs))
}

fn parse_certs(pem: &[u8]) -> Vec<Certificate<'static>> {
    ureq::tls::parse_pem(pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http_with_token(endpoint: &str) -> Http {
        Http::new(HttpConfig {
            hf_endpoint: endpoint.into(),
            hf_token: Some("tok".into()),
            ..HttpConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn the_token_goes_to_the_hugging_face_host_only() {
        let h = http_with_token("https://huggingface.co");
        assert_eq!(
            h.auth_for("https://huggingface.co/a/b/resolve/main/f")
                .as_deref(),
            Some("Bearer tok")
        );
        assert_eq!(
            h.auth_for("https://HuggingFace.co/a"),
            Some("Bearer tok".into())
        );
        assert_eq!(
            h.auth_for("https://huggingface.co:443/a"),
            Some("Bearer tok".into())
        );
        assert_eq!(h.auth_for("https://huggingface.co:8443/a"), None);
        assert_eq!(h.auth_for("https://cdn-lfs.huggingface.co/a"), None);
        assert_eq!(h.auth_for("https://huggingface.co.evil.example/a"), None);
        assert_eq!(h.auth_for("https://evil.example/huggingface.co"), None);
    }

    #[test]
    fn relative_and_absolute_locations_resolve_against_the_hop() {
        let base = "https://a.example:8443/x/y/file?q=1";
        assert_eq!(
            resolve_location(base, "/z").unwrap(),
            "https://a.example:8443/z"
        );
        assert_eq!(
            resolve_location(base, "other").unwrap(),
            "https://a.example:8443/x/y/other"
        );
        assert_eq!(
            resolve_location(base, "//b.example/p").unwrap(),
            "https://b.example/p"
        );
        assert_eq!(
            resolve_location(base, "http://c.example/p").unwrap(),
            "http://c.example/p"
        );
    }

    #[test]
    fn plain_http_is_refused_before_any_connection() {
        let h = Http::new(HttpConfig::default()).unwrap();
        assert!(matches!(
            h.get("http://127.0.0.1:1/x", 0),
            Err(FetchErrorKind::InsecureUrl(_))
        ));
        assert!(matches!(
            h.head("ftp://127.0.0.1:1/x", false),
            Err(FetchErrorKind::InsecureUrl(_))
        ));
    }

    #[test]
    fn a_host_the_dns_does_not_know_is_permanent_but_an_unreachable_resolver_is_not() {
        let h = Http::new(HttpConfig::default()).unwrap();
        let e = h.get("https://modelfs-test.invalid/x", 0).err().unwrap();
        assert!(matches!(e, FetchErrorKind::UnknownHost(_)), "{e}");
        assert!(!e.is_transient());
        assert!(e.to_string().contains("modelfs-test.invalid"), "{e}");
        let again = std::io::Error::other(
            "failed to lookup address information: Temporary failure in name resolution",
        );
        assert!(classify_io(&again, Some("https://h.example/x")).is_transient());
    }

    #[test]
    fn a_missing_ca_file_is_a_clear_tls_error() {
        let cfg = HttpConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..HttpConfig::default()
        };
        let err = Http::new(cfg).err().unwrap().to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}
