//! Fetching blobs over HTTPS into the store.
//!
//! `http` is the transport (TLS trust, redirects, credentials, proxies);
//! `pipeline` is the locked fetch → verify → rename sequence built on it,
//! `download` its HTTP attempts and retries, `stream` the hashing pipe from
//! a body into the store's partial file (`store::partial`), `parallel` the
//! same over several connections with byte ranges scheduled by `ranges`;
//! `retry` and `progress` are its policy and its reporting; `pin` resolves
//! a Hugging Face file to what a manifest pins; `mirrors` are the
//! digest-addressed servers asked before a manifest's own source; `oci`
//! speaks to OCI registries (their token flow, resolving a reference). Nothing here knows about
//! FUSE; nothing in `store` knows about HTTP.

mod download;
pub mod error;
pub mod head;
pub mod http;
pub mod mirrors;
pub mod oci;
pub mod oci_push;
mod parallel;
pub mod pin;
pub mod pipeline;
pub mod progress;
mod ranges;
pub mod retry;
mod stream;

pub use error::{FetchError, FetchErrorKind};
pub use http::{Http, HttpConfig};
pub use mirrors::{Mirror, MirrorError};
pub use pipeline::{Candidate, FetchJob, FetchOutcome, Fetcher};
pub use progress::{Phase, Progress, ProgressSink};
pub use retry::RetryPolicy;
