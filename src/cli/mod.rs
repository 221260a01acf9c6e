//! The command line: one file per subcommand, each with one documented
//! `run` function. This module holds what they share: the global options,
//! opening the store, building the fetcher, and the CLI's error type.

pub mod add;
mod add_set;
pub mod daemon_limits;
pub mod du;
pub mod gc;
pub mod import;
pub mod import_from;
pub mod info;
pub mod logging;
pub mod ls;
mod ls_sets;
pub mod mount;
pub mod mount_options;
pub mod mountpoint;
pub mod pin;
pub mod progress_view;
pub mod pull;
pub mod push;
pub mod rm;
pub mod room;
pub mod serve;
mod sets;
pub mod settings;
pub mod status;
pub mod store_changes;
pub mod verify;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::fetch::{FetchError, Fetcher, Http, HttpConfig, Mirror, RetryPolicy};
use crate::store::{self, ModelName, NameError, Store, StoreError};

/// Options every subcommand accepts, before or after its name. `--help`
/// of a subcommand lists them apart, after the subcommand's own.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Globals {
    /// The model store (default: $MODELS_HOME, else ${XDG_DATA_HOME:-~/.local/share}/models)
    #[arg(long, global = true, value_name = "DIR", help_heading = GLOBAL)]
    pub store: Option<PathBuf>,
    /// Extra PEM CA bundle to trust, for private mirrors (SSL_CERT_FILE replaces the system bundle)
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "MODELFS_CA_FILE",
        help_heading = GLOBAL
    )]
    pub ca_file: Option<PathBuf>,
    /// More log output (-v debug, -vv trace); RUST_LOG overrides
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = GLOBAL)]
    pub verbose: u8,
    /// Only errors
    #[arg(short, long, global = true, help_heading = GLOBAL)]
    pub quiet: bool,
}

/// The `--help` heading of [`Globals`].
const GLOBAL: &str = "Global options";

impl Globals {
    /// The store root as resolved from flags and environment.
    pub fn store_root(&self) -> Result<PathBuf, CliError> {
        Ok(store::resolve_root(self.store.as_deref())?)
    }

    /// Opens the store, creating its folders (commands that write).
    pub fn store_for_writing(&self) -> Result<Store, CliError> {
        Ok(Store::create(self.store_root()?)?)
    }

    /// Opens an existing store (commands that only read).
    pub fn store_for_reading(&self) -> Result<Store, CliError> {
        Ok(Store::open(self.store_root()?)?)
    }

    pub fn http_config(&self) -> HttpConfig {
        HttpConfig::from_env(self.ca_file.clone())
    }

    /// A fetcher for a command on this store: mirrors from the store's
    /// settings, then `MODELFS_MIRRORS`.
    pub fn fetcher(&self) -> Result<Fetcher, CliError> {
        let mirrors = match Store::open(self.store_root()?) {
            Ok(store) => settings_mirrors(&store)?,
            // A command that creates the store has no settings yet.
            Err(_) => Vec::new(),
        };
        fetcher_with(self.http_config(), None, mirrors)
    }
}

/// The mirrors the store's settings file lists (`store::settings`).
pub fn settings_mirrors(store: &Store) -> Result<Vec<Mirror>, CliError> {
    let settings = store
        .read_settings()
        .map_err(|e| CliError::new(e.to_string()))?;
    let path = store.settings_path();
    let list = settings
        .mirrors()
        .map_err(|e| CliError::new(format!("store settings {}: {e}", path.display())))?;
    list.iter()
        .map(|u| {
            Mirror::parse(u)
                .map_err(|e| CliError::new(format!("store settings {}: {e}", path.display())))
        })
        .collect()
}

/// A fetcher with an optional stall timeout override, asking `mirrors`
/// and then those of `MODELFS_MIRRORS` (each once) before each manifest's
/// source.
pub fn fetcher_with(
    mut cfg: HttpConfig,
    stall_timeout: Option<Duration>,
    mut mirrors: Vec<Mirror>,
) -> Result<Fetcher, CliError> {
    if let Some(t) = stall_timeout {
        cfg.stall_timeout = t;
    }
    if let Ok(list) = std::env::var("MODELFS_MIRRORS") {
        mirrors.extend(
            Mirror::parse_list(&list)
                .map_err(|e| CliError::new(format!("MODELFS_MIRRORS: {e}")))?,
        );
    }
    // Each mirror once, where it first stands.
    let mut seen = Vec::new();
    mirrors.retain(|m| {
        let first = !seen.contains(m);
        seen.push(m.clone());
        first
    });
    let https = |e| CliError::new(format!("cannot set up HTTPS: {e}"));
    let mut fetcher = Fetcher::new(Http::new(cfg).map_err(https)?, RetryPolicy::default());
    if !mirrors.is_empty() {
        fetcher.set_mirrors(mirrors).map_err(https)?;
    }
    Ok(fetcher)
}

/// Parses a model name given on the command line.
pub fn parse_name(s: &str) -> Result<ModelName, CliError> {
    ModelName::parse(s)
        .map_err(|e: NameError| CliError::new(format!("invalid model name {s:?}: {e}")))
}

/// A failed command: the message the user sees, and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub code: i32,
}

impl CliError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        Self::new(e.to_string())
    }
}

impl From<FetchError> for CliError {
    fn from(e: FetchError) -> Self {
        Self::new(e.to_string())
    }
}

/// Whether stderr is a terminal (progress bars) or a log (plain lines).
pub fn stderr_is_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}
