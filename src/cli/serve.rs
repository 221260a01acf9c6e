//! `modelfs serve`: serve this store's verified blobs to neighbours over
//! HTTPS, so they list this host as a mirror (see [`crate::serve`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::coordinator::Coordinator;
use crate::serve::{ServeConfig, Server};

use super::{CliError, Globals};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address and port to listen on (port 0: any free port, printed)
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// PEM certificate chain of this host
    #[arg(long, value_name = "PATH")]
    pub cert: PathBuf,
    /// PEM private key of the certificate
    #[arg(long, value_name = "PATH")]
    pub key: PathBuf,
    /// Serve the store under this path (a neighbour's mirror is then
    /// https://HOST:PORT/PATH)
    #[arg(long, value_name = "PATH", default_value = "")]
    pub base: String,
    /// Answer 404 for a blob a manifest pins but that is not here, instead
    /// of fetching it first
    #[arg(long)]
    pub no_fetch: bool,
    /// Downloads that may run at once for requests of pinned blobs
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub fetch_threads: u16,
    /// Connections one download may use at most (1: one stream)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub connections: Option<u16>,
}

/// Serves until killed. Prints the address it serves on (one line on
/// stdout) once it listens.
pub fn run(g: &Globals, a: &ServeArgs) -> Result<(), CliError> {
    let store = g.store_for_writing()?;
    let mut fetcher = g.fetcher()?;
    if let Some(n) = a.connections {
        fetcher.set_connections(n.into());
    }
    let coordinator = Coordinator::new(store.clone(), fetcher, a.fetch_threads.into());
    let base = match a.base.trim_matches('/') {
        "" => String::new(),
        b => format!("/{b}"),
    };
    let cfg = ServeConfig {
        listen: a.listen,
        cert: a.cert.clone(),
        key: a.key.clone(),
        base: base.clone(),
        fetch: !a.no_fetch,
    };
    let server = Server::bind(store.clone(), coordinator, &cfg)
        .map_err(|e| CliError::new(format!("serve: {e}")))?;
    let addr = server
        .local_addr()
        .map_err(|e| CliError::new(format!("serve: {e}")))?;
    log::info!(
        "serving the verified blobs of {} on https://{addr}{base}",
        store.root().display()
    );
    println!("https://{addr}{base}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    server
        .run()
        .map_err(|e| CliError::new(format!("serve: {e}")))
}
