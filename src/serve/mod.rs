//! `modelfs serve`: this host's store as a mirror for its neighbours.
//!
//! Serves the verified blobs of one store read-only over HTTPS at
//! `<base>/blobs/sha256/<aa>/<hex>/data`, the layout every digest-addressed
//! mirror has ([`crate::fetch::mirrors`]), so a neighbour lists this host
//! with `-o mirror=https://this-host:PORT[/base]`. Contract:
//!
//! - Only `GET` and `HEAD` of blob paths ([`route`]); no listings, nothing
//!   outside `blobs/`, never a partial file.
//! - Only blobs a manifest of the store pins, answered through the same
//!   [`Coordinator`] open as the mount's: a blob whose stamps moved since
//!   it was verified is hashed again before a byte of it is sent, and one
//!   that no longer matches is never sent.
//! - Pull-through: a blob a manifest pins but that is not here yet is
//!   fetched (one fetch for any number of requests, and shared with this
//!   host's mount through the store's locks), and the request is answered
//!   once it is verified. So N neighbours opening the same pending model
//!   at once cost the origin one download. `--no-fetch` answers 404
//!   instead.
//! - `Range` (one range), `If-Range`, a strong `ETag` (the digest), and
//!   `Content-Length` on every answer ([`answer`]).
//! - HTTP is hyper's, TLS is rustls's; the blocking work (opening,
//!   reading the file, waiting for a fetch) runs off the async workers.

pub mod answer;
mod body;
mod pins;
pub mod route;
mod service;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::coordinator::Coordinator;
use crate::store::Store;

pub use tls::TlsError;

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// PEM certificate chain and private key of this host.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Path prefix the store is served under (`""`: the root).
    pub base: String,
    /// Fetch blobs a manifest pins but that are not here yet.
    pub fetch: bool,
}

/// A running server; see the module doc.
pub struct Server {
    runtime: tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<service::State>,
}

/// Why serving could not start.
#[derive(Debug)]
pub enum ServeError {
    Tls(TlsError),
    Listen {
        addr: SocketAddr,
        err: std::io::Error,
    },
    Runtime(std::io::Error),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tls(e) => write!(f, "{e}"),
            Self::Listen { addr, err } => write!(
                f,
                "cannot listen on {addr}: {err} (is another server on that port? \
                 choose another with --listen)"
            ),
            Self::Runtime(e) => write!(f, "cannot start the server's threads: {e}"),
        }
    }
}

impl std::error::Error for ServeError {}

impl Server {
    /// Binds the address and loads the certificate; serves once
    /// [`Server::run`] is called.
    pub fn bind(
        store: Store,
        coordinator: Arc<Coordinator>,
        cfg: &ServeConfig,
    ) -> Result<Self, ServeError> {
        let acceptor = tls::acceptor(&cfg.cert, &cfg.key).map_err(ServeError::Tls)?;
        let listener =
            std::net::TcpListener::bind(cfg.listen).map_err(|err| ServeError::Listen {
                addr: cfg.listen,
                err,
            })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(64)
            .thread_name("serve")
            .enable_io()
            .enable_time()
            .build()
            .map_err(ServeError::Runtime)?;
        Ok(Self {
            runtime,
            listener,
            acceptor,
            state: Arc::new(service::State::new(store, coordinator, cfg)),
        })
    }

    /// The address it listens on (the port chosen when asked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the process ends.
    pub fn run(self) -> std::io::Result<()> {
        let Server {
            runtime,
            listener,
            acceptor,
            state,
        } = self;
        listener.set_nonblocking(true)?;
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of descriptors and the like: wait, do not spin.
                        log::warn!("serve: cannot accept a connection: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, state) = (acceptor.clone(), state.clone());
                tokio::spawn(async move { service::connection(tcp, peer, acceptor, state).await });
            }
        })
    }
}
