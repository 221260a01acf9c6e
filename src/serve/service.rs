//! One HTTPS connection of `modelfs serve`, and the answer to each of its
//! requests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use super::ServeConfig;
use super::answer::{Answer, answer, etag};
use super::body::FileBody;
use super::pins::Pins;
use super::route::{Route, route};
use crate::coordinator::{Blob, Caller, Coordinator, WaitError, Want, describe};
use crate::digest::Sha256;
use crate::store::Store;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// What every request of the server shares.
pub struct State {
    coordinator: Arc<Coordinator>,
    pins: Pins,
    base: String,
    fetch: bool,
}

/// Why a blob is not sent.
enum Refusal {
    /// No manifest of the store pins it.
    NotPinned,
    /// Pinned, not here, and fetching is off.
    NotHere,
    /// It could not be fetched or verified.
    Failed(String),
}

impl State {
    pub fn new(store: Store, coordinator: Arc<Coordinator>, cfg: &ServeConfig) -> Self {
        Self {
            coordinator,
            pins: Pins::new(store),
            base: cfg.base.clone(),
            fetch: cfg.fetch,
        }
    }

    /// The verified file of blob `d`, through the coordinator as a mount's
    /// open gets it (blocks: a recheck or a fetch may run first).
    fn open(&self, d: &Sha256) -> Result<Blob, Refusal> {
        let m = self.pins.manifest_of(d).ok_or(Refusal::NotPinned)?;
        // A blob replaced under us between the look and the open: look again.
        for _ in 0..3 {
            let found = self
                .coordinator
                .find(d)
                .map_err(|e| Refusal::Failed(e.to_string()))?;
            if found.file_id().is_none() && !self.fetch {
                return Err(Refusal::NotHere);
            }
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let want = Want {
                manifest: &m,
                // Nobody the signal watchdog could watch: an HTTP client.
                caller: Caller { tid: 0, request: 0 },
                nonblocking: false,
                pinned_by: &|| self.pins.all_of(d),
            };
            self.coordinator.open(
                found,
                want,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
            // Publications matter to a mount's inodes, not to us.
            let _ = self.coordinator.take_published();
            match rx.recv() {
                Ok(Ok(blob)) => return Ok(blob),
                Ok(Err(WaitError::Changed { .. })) => continue,
                Ok(Err(e)) => return Err(Refusal::Failed(describe(&e))),
                Err(_) => return Err(Refusal::Failed("the open was dropped".into())),
            }
        }
        Err(Refusal::Failed(
            "the blob kept changing on disk while it was opened".into(),
        ))
    }
}

/// Serves one TCP connection: TLS, then HTTP/1.1 with keep-alive.
pub async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return log::debug!("serve: TLS handshake with {peer} failed: {e}"),
        Err(_) => return log::debug!("serve: TLS handshake with {peer} timed out"),
    };
    let svc = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(state, req, peer).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(tls), svc);
    if let Err(e) = conn.await {
        log::debug!("serve: connection with {peer} ended: {e}");
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>, peer: SocketAddr) -> Response<FileBody> {
    let (digest, head) = match route(req.method().as_str(), req.uri().path(), &state.base) {
        Route::Blob { digest, head } => (digest, head),
        Route::MethodNotAllowed => {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET and HEAD are served",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        Route::NotFound => {
            return text(
                StatusCode::NOT_FOUND,
                "not found: this server has only /blobs/sha256/<aa>/<hex>/data",
            );
        }
    };
    let header_of = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let (range, if_range) = (header_of(header::RANGE), header_of(header::IF_RANGE));
    let opener = state.clone();
    let opened = tokio::task::spawn_blocking(move || opener.open(&digest)).await;
    let blob = match opened {
        Ok(Ok(b)) => b,
        Ok(Err(Refusal::NotPinned)) => {
            return text(
                StatusCode::NOT_FOUND,
                "no model of this store pins that blob",
            );
        }
        Ok(Err(Refusal::NotHere)) => {
            return text(StatusCode::NOT_FOUND, "that blob is not on this host yet");
        }
        Ok(Err(Refusal::Failed(why))) => {
            log::warn!("serve: blob {} for {peer}: {why}", digest.short());
            return text(StatusCode::SERVICE_UNAVAILABLE, &why);
        }
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let size = blob.meta.len();
    let tag = etag(&digest.to_hex());
    let a = answer(size, &tag, range.as_deref(), if_range.as_deref());
    log::info!(
        "serve: {} {} {} to {peer}",
        if head { "HEAD" } else { "GET" },
        digest.short(),
        match a {
            Answer::Whole { len } => format!("whole ({len} bytes)"),
            Answer::Part { start, len, .. } => format!("bytes {start}-{}", start + len - 1),
            Answer::Unsatisfiable { .. } => "an unsatisfiable range".into(),
        }
    );
    blob_response(blob, a, &tag, head)
}

fn blob_response(blob: Blob, a: Answer, tag: &str, head: bool) -> Response<FileBody> {
    let (status, start, len, content_range) = match a {
        Answer::Whole { len } => (StatusCode::OK, 0, len, None),
        Answer::Part { start, len, size } => (
            StatusCode::PARTIAL_CONTENT,
            start,
            len,
            Some(format!("bytes {start}-{}/{size}", start + len - 1)),
        ),
        Answer::Unsatisfiable { size } => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            0,
            0,
            Some(format!("bytes */{size}")),
        ),
    };
    let body = if head || len == 0 {
        FileBody::empty()
    } else {
        FileBody::range(blob.file, start, len)
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    let value = |s: &str| HeaderValue::from_str(s).expect("ASCII header value");
    h.insert(header::CONTENT_LENGTH, value(&len.to_string()));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, value(tag));
    // Named by its digest: the bytes at this URL never change.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    if let Some(cr) = content_range {
        h.insert(header::CONTENT_RANGE, value(&cr));
    }
    r
}

fn text(status: StatusCode, s: &str) -> Response<FileBody> {
    let body = FileBody::text(s);
    let len = body.len();
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}
