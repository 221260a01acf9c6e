//! The one interface between the coordinator and where bytes come from.
//!
//! The coordinator decides *when* a blob is fetched and who waits for it;
//! a [`Source`] decides *how* its verified bytes get into the store. Today
//! the only real source is the HTTPS fetch pipeline ([`Fetcher`]); ranged
//! downloads, mirrors and registries are more sources behind this same
//! seam, and the coordinator's tests run against a scripted one (no
//! network, no TLS, no root).
//!
//! Contract of [`Source::fetch`]: on `Ok`, the blob is present at its path
//! in the store and hashes to its digest; `on_verified`, if called, gets a
//! read-only handle on exactly those verified bytes, before they are
//! published (and at most once); on `Err`, nothing unverified is at the
//! blob path. `job.cancel` asks it to stop (it then answers
//! `FetchErrorKind::Cancelled`).

use std::fs::File;

use crate::fetch::{Candidate, FetchError, FetchJob, FetchOutcome, Fetcher};
use crate::store::{Manifest, Store};

/// Brings verified blobs into the store; see the module doc.
pub trait Source: Send + Sync {
    /// Fetches the blob of `job.manifest` into `store`.
    fn fetch(
        &self,
        store: &Store,
        job: &FetchJob<'_>,
        on_verified: &mut dyn FnMut(File),
    ) -> Result<FetchOutcome, FetchError>;

    /// The places a fetch of `primary`'s blob may try, `primary`'s own
    /// first, then those of `others` that pin the same blob.
    fn candidates(&self, primary: &Manifest, others: &[Manifest]) -> Vec<Candidate>;

    /// Where `m` is fetched from, for attributes and messages.
    fn url_for(&self, m: &Manifest) -> Option<String>;
}

impl Source for Fetcher {
    fn fetch(
        &self,
        store: &Store,
        job: &FetchJob<'_>,
        on_verified: &mut dyn FnMut(File),
    ) -> Result<FetchOutcome, FetchError> {
        self.fetch_handing_over(store, job, on_verified)
    }

    fn candidates(&self, primary: &Manifest, others: &[Manifest]) -> Vec<Candidate> {
        Fetcher::candidates(self, primary, others)
    }

    fn url_for(&self, m: &Manifest) -> Option<String> {
        Fetcher::url_for(self, m)
    }
}
