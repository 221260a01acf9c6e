//! The locked fetch → verify → rename pipeline.
//!
//! [`Fetcher::fetch`] is the one entry point every caller uses (the CLI's
//! `pull`, the mount's coordinator). For one manifest it:
//!
//! 1. waits for `LOCK_EX` on `locks/<name>.lock` (polling, cancellable), then
//!    re-checks whether the blob arrived meanwhile, and refuses a blob path
//!    that holds a folder or another non-file (nothing could be published);
//! 2. opens modelfs's own partial file (`Store::partial_path`, a name
//!    other producers never write) and holds a lock on it too, so two
//!    modelfs producers of one blob under different names never write the
//!    same partial (and the second, once it has the lock, uses the blob the
//!    first published); a partial with more than one link (a hard link
//!    planted from outside the store) is never written: its name is
//!    removed and a new file started;
//! 3. keeps a partial's prefix for resuming, re-hashing it, unless it is
//!    longer than the blob;
//! 4. checks there is free space for the rest;
//! 5. streams HTTPS into the partial, hashing in the same pass, resuming with
//!    `Range` after transient failures, with capped exponential backoff,
//!    within the budgets of [`RetryPolicy`] (attempts and time without
//!    progress, attempts in all); an attempt slower than the minimum rate
//!    over a whole stall timeout fails as stalled;
//! 6. compares the digest in constant time; on a mismatch moves the bytes to
//!    quarantine, one copy per (expected, actual) pair (and, if the
//!    download had resumed, starts over once from
//!    byte 0 in case the old prefix was the bad part); on a match hands a
//!    read-only handle on the verified file to the caller of
//!    [`Fetcher::fetch_handing_over`], then `sync_all`s, renames into place
//!    without replacing a blob another producer placed first, and fsyncs
//!    the directory;
//! 7. writes the manifest last when asked to (producer flow).
//!
//! Phases 2-7 run for each of the job's sources in turn (every manifest
//! that pins the digest, the opener's first) while the failures are the
//! source's own (a 404, a refused connection, wrong bytes); each such
//! failure is logged with its model and URL, and the last one is returned.
//!
//! Promise: no path under `blobs/sha256/<aa>/<hex>/` ever holds bytes that
//! do not hash to `<hex>`, and no handle is handed over before its bytes
//! matched the digest. Not promised: that the partial survives a failure
//! other than a transient network one (a digest mismatch quarantines it; an
//! empty one is removed, so a fetch that failed before its first byte leaves
//! the model plainly pending); that a handed-over file is ever published
//! (if the fsync or the rename fails, its readers keep the verified bytes,
//! the partial is removed so that nothing writes to their file again, and
//! the next fetch starts anew).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::download::Download;
use super::error::{FetchError, FetchErrorKind};
use super::http::Http;
use super::mirrors::{MIRROR_CONNECT_TIMEOUT, MIRROR_RETRY_FOR, Mirror, Mirrors};
use super::progress::{Phase, ProgressSink, Reporter};
use super::retry::RetryPolicy;
use crate::digest::Sha256;
use crate::store::partial::{self, Partial};
use crate::store::{BlobState, Manifest, Published, Source, Store};
use crate::text::{human_bytes, redact_url};

/// How a successful fetch went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The blob was already there (possibly produced by another process
    /// whose lock we waited for).
    AlreadyPresent { waited_for_lock: bool },
    /// We downloaded it; `resumed_from` bytes came from an earlier partial.
    Downloaded { transferred: u64, resumed_from: u64 },
}

/// One place a blob may be fetched from: the URL a manifest pins, and the
/// model whose manifest it is (errors and logs name both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub model: String,
    pub url: String,
    /// The configured mirror this is (its index), or `None` for a URL a
    /// manifest pins.
    pub mirror: Option<usize>,
}

impl Candidate {
    /// A URL a manifest pins.
    pub fn pinned(model: &str, url: String) -> Self {
        Self {
            model: model.to_string(),
            url,
            mirror: None,
        }
    }
}

/// What to fetch and how to report.
pub struct FetchJob<'a> {
    /// The manifest the fetch is for: its name's producer lock is taken,
    /// and its digest and size are what the bytes must match.
    pub manifest: &'a Manifest,
    /// Where to fetch from, in order ([`Fetcher::candidates`]): the next is
    /// tried when one fails for a reason of its own (a 404, a refused
    /// connection, wrong bytes; see [`FetchErrorKind::is_source_error`]).
    /// Empty: the manifest's own source only.
    pub sources: Vec<Candidate>,
    /// Write the manifest after the blob is in place (producer flow); off
    /// when the manifest is already on disk as a pending manifest.
    pub write_manifest: bool,
    pub progress: Option<ProgressSink>,
    /// Set to abandon the fetch; the partial is kept for resuming.
    pub cancel: &'a AtomicBool,
}

/// Fetches blobs into one store.
pub struct Fetcher {
    http: Http,
    policy: RetryPolicy,
    connections: usize,
    mirrors: Arc<Mirrors>,
    /// Asks the mirrors: short timeouts and few retries of its own.
    for_mirrors: Option<Box<Fetcher>>,
}

/// Connections one fetch may use at most, unless configured.
pub const DEFAULT_CONNECTIONS: usize = 16;

impl Fetcher {
    pub fn new(http: Http, policy: RetryPolicy) -> Self {
        Self {
            http,
            policy,
            connections: DEFAULT_CONNECTIONS,
            mirrors: Arc::new(Mirrors::default()),
            for_mirrors: None,
        }
    }

    /// Asks `mirrors` for every blob before its manifest's own source (see
    /// [`super::mirrors`]).
    pub fn set_mirrors(&mut self, mirrors: Vec<Mirror>) -> Result<(), FetchErrorKind> {
        let mut cfg = self.http.config().clone();
        cfg.connect_timeout = cfg.connect_timeout.min(MIRROR_CONNECT_TIMEOUT);
        // Nothing of the Hub's goes to a mirror.
        cfg.hf_token = None;
        let mut f = Fetcher::new(Http::new(cfg)?, mirror_policy(&self.policy));
        f.connections = self.connections;
        self.for_mirrors = Some(Box::new(f));
        self.mirrors = Arc::new(Mirrors::new(mirrors));
        Ok(())
    }

    /// The configured mirrors.
    pub fn mirrors(&self) -> &[Mirror] {
        self.mirrors.list()
    }

    /// At most `n` connections per fetch (1: one stream, never ranges).
    pub fn set_connections(&mut self, n: usize) {
        self.connections = n.max(1);
        if let Some(f) = &mut self.for_mirrors {
            f.connections = self.connections;
        }
    }

    pub(super) fn connections(&self) -> usize {
        self.connections
    }

    pub fn http(&self) -> &Http {
        &self.http
    }

    pub(super) fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// How long a fetch retries without progress (see [`RetryPolicy`]).
    pub fn set_retry_for(&mut self, d: Duration) {
        self.policy.retry_for = d;
        if let Some(f) = &mut self.for_mirrors {
            f.policy.retry_for = d.min(MIRROR_RETRY_FOR);
        }
    }

    /// The URL a manifest is fetched from (honouring `HF_ENDPOINT`).
    pub fn url_for(&self, m: &Manifest) -> Option<String> {
        self.source_url(&m.source)
    }

    /// The URL a source is fetched from (honouring `HF_ENDPOINT`).
    pub fn source_url(&self, source: &Source) -> Option<String> {
        let url = source.fetch_url()?;
        let endpoint = self.http.config().hf_endpoint.trim_end_matches('/');
        if source.url.is_none() && endpoint != super::http::DEFAULT_HF_ENDPOINT {
            return Some(url.replacen(super::http::DEFAULT_HF_ENDPOINT, endpoint, 1));
        }
        Some(url)
    }

    /// The sources of a blob: the mirrors not left out, then `primary`'s
    /// own, then those of `others` that pin the same digest and size, in
    /// their order, each URL once.
    pub fn candidates(&self, primary: &Manifest, others: &[Manifest]) -> Vec<Candidate> {
        let same_blob = |o: &&Manifest| {
            o.blob == primary.blob && o.size_bytes == primary.size_bytes && o.name != primary.name
        };
        let mut out: Vec<Candidate> = self
            .mirrors
            .usable_for(&primary.blob, Instant::now())
            .into_iter()
            .map(|(i, m)| Candidate {
                model: primary.name.to_string(),
                url: m.blob_url(&primary.blob),
                mirror: Some(i),
            })
            .collect();
        for m in std::iter::once(primary).chain(others.iter().filter(same_blob)) {
            if let Some(url) = self.url_for(m)
                && !out.iter().any(|c| c.url == url)
            {
                out.push(Candidate::pinned(m.name.as_str(), url));
            }
        }
        out
    }

    /// Runs the pipeline for one manifest. See the module doc.
    pub fn fetch(&self, store: &Store, job: &FetchJob<'_>) -> Result<FetchOutcome, FetchError> {
        self.run(store, job, None)
    }

    /// [`Fetcher::fetch`], and calls `on_verified` with a read-only handle
    /// on the downloaded file as soon as its digest matches, before the
    /// `sync_all` and rename that publish it. The mount answers waiting
    /// opens with it: making 2 GiB durable takes the disk seconds, and a
    /// reader needs the verified bytes, not their durability. Not called
    /// when the blob was already present (open it at its path then), nor
    /// when the verified file cannot be reopened read-only.
    ///
    /// With a reader waiting for the handle, durability is off its path:
    /// the kernel writes the file back on its own schedule (bounded by its
    /// dirty limits) instead of on ours during the download, which cost
    /// the first open 8% on a 2-core machine (BENCHMARKS.md), and the
    /// `sync_all` after the hand-over does the rest.
    pub fn fetch_handing_over(
        &self,
        store: &Store,
        job: &FetchJob<'_>,
        on_verified: &mut dyn FnMut(File),
    ) -> Result<FetchOutcome, FetchError> {
        self.run(store, job, Some(on_verified))
    }

    fn run(
        &self,
        store: &Store,
        job: &FetchJob<'_>,
        mut on_verified: Option<&mut dyn FnMut(File)>,
    ) -> Result<FetchOutcome, FetchError> {
        let m = job.manifest;
        let sources = if job.sources.is_empty() {
            self.candidates(m, &[])
        } else {
            job.sources.clone()
        };
        let Some(first) = sources.first() else {
            return Err(FetchError::new(
                m.name.to_string(),
                None,
                FetchErrorKind::NoSource,
            ));
        };
        let fail = |kind| FetchError::new(m.name.to_string(), Some(&first.url), kind);
        let mut reporter = Reporter::new(job.progress.clone());
        let cancelled = || job.cancel.load(Ordering::Relaxed);

        // Phase 1: the producer lock, then a second look.
        let mut waited = false;
        let name_lock = store
            .lock_model(&m.name, &cancelled, &mut || {
                waited = true;
                log::info!(
                    "{}: another process holds {}, waiting for it",
                    m.name,
                    store.lock_path(&m.name).display()
                );
                reporter.report(Phase::WaitingForLock, 0, m.size_bytes, 0);
            })
            .map_err(|e| fail(FetchErrorKind::Store(e)))?;
        let Some(_name_lock) = name_lock else {
            return Err(fail(FetchErrorKind::Cancelled));
        };
        if let BlobState::Present(_) = store.blob_state(&m.blob) {
            self.write_manifest_if_asked(store, job).map_err(fail)?;
            return Ok(FetchOutcome::AlreadyPresent {
                waited_for_lock: waited,
            });
        }
        store
            .check_blob_slot(&m.blob)
            .map_err(|e| fail(FetchErrorKind::Store(e)))?;

        // Phases 2-7 for each source in turn, while the failures are the
        // source's.
        for (i, source) in sources.iter().enumerate() {
            let by = match source.mirror {
                Some(_) => self.for_mirrors.as_deref().unwrap_or(self),
                None => self,
            };
            reporter.set_source(i);
            let result = by.fetch_from(store, job, source, &mut reporter, &mut on_verified, waited);
            if let (Err(e), Some(k)) = (&result, source.mirror) {
                self.mirrors.failed(k, &m.blob, &e.kind, Instant::now());
            }
            match result {
                Err(e) if e.kind.is_source_error() && i + 1 < sources.len() => {
                    let next = &sources[i + 1];
                    log::warn!(
                        "{e}; trying the source of model {:?} next ({})",
                        next.model,
                        redact_url(&next.url)
                    );
                }
                Err(mut e) => {
                    e.sources_failed_before = i as u32;
                    return Err(e);
                }
                done => return done,
            }
        }
        unreachable!("the last source returns")
    }

    /// Phases 2-7 from one source: at most twice, as a mismatch after a
    /// resume starts over from byte 0.
    fn fetch_from(
        &self,
        store: &Store,
        job: &FetchJob<'_>,
        source: &Candidate,
        reporter: &mut Reporter,
        on_verified: &mut Option<&mut dyn FnMut(File)>,
        waited: bool,
    ) -> Result<FetchOutcome, FetchError> {
        let m = job.manifest;
        let fail = |kind| FetchError::new(&source.model, Some(&source.url), kind);
        let mut may_restart = true;
        loop {
            let partial = match self.open_partial(store, job, source)? {
                Ok(p) => p,
                Err(present) => {
                    self.write_manifest_if_asked(store, job).map_err(fail)?;
                    return Ok(FetchOutcome::AlreadyPresent {
                        waited_for_lock: waited || present,
                    });
                }
            };
            log::info!(
                "{}: downloading {} ({}) from {}{}",
                source.model,
                m.blob.short(),
                human_bytes(m.size_bytes),
                redact_url(&source.url),
                match partial.offset() {
                    0 => String::new(),
                    n => format!(", resuming at {}", human_bytes(n)),
                }
            );
            let mut download = Download {
                started: Instant::now(),
                partial,
                hash_tail: Duration::ZERO,
                start_writeback: on_verified.is_none(),
                reporter: &mut *reporter,
                cancel: job.cancel,
            };
            let transferred = self.download_from(store, m, source, &mut download)?;
            // Read after the download: a server that ignores Range makes it
            // start over, and then nothing of the old partial was used.
            let resumed_from = download.partial.resumed();
            match check_digest(store, m, source, &download.partial, may_restart) {
                Ok(()) => {}
                Err(None) => {
                    may_restart = false;
                    continue;
                }
                Err(Some(e)) => return Err(e),
            }
            let outcome = FetchOutcome::Downloaded {
                transferred,
                resumed_from,
            };
            return self.publish(store, job, source, &mut download, on_verified, outcome);
        }
    }

    /// Phases 6-7 for a verified partial, and the log line of a finished
    /// fetch.
    fn publish(
        &self,
        store: &Store,
        job: &FetchJob<'_>,
        source: &Candidate,
        d: &mut Download<'_>,
        on_verified: &mut Option<&mut dyn FnMut(File)>,
        outcome: FetchOutcome,
    ) -> Result<FetchOutcome, FetchError> {
        let m = job.manifest;
        let (partial, hash_tail, started) = (&d.partial, d.hash_tail, d.started);
        let fail = |kind| FetchError::new(&source.model, Some(&source.url), kind);
        let transferred = match outcome {
            FetchOutcome::Downloaded { transferred, .. } => transferred,
            FetchOutcome::AlreadyPresent { .. } => 0,
        };
        let verified = Instant::now();
        d.reporter
            .report(Phase::Publishing, m.size_bytes, m.size_bytes, transferred);
        let placed = self
            .hand_over_and_publish(store, m, partial, on_verified)
            .map_err(fail)?;
        self.write_manifest_if_asked(store, job).map_err(fail)?;
        // The phases' times, so an operator can see what a slow first
        // open waited for.
        log::info!(
            "{}: verified {} ({} bytes, {} fetched from {} in {:.2} s, hashing done {:.2} s \
             after the last byte; made durable and {} in {:.2} s)",
            m.name,
            m.blob.short(),
            m.size_bytes,
            human_bytes(transferred),
            redact_url(&source.url),
            (verified - started).as_secs_f64(),
            hash_tail.as_secs_f64(),
            published_words(placed),
            verified.elapsed().as_secs_f64(),
        );
        Ok(outcome)
    }

    /// Phase 2: the blob's partial, open and locked; `Err(waited)` instead
    /// when a producer of the same blob under another name held the partial
    /// and published the blob meanwhile.
    fn open_partial(
        &self,
        store: &Store,
        job: &FetchJob<'_>,
        source: &Candidate,
    ) -> Result<Result<Partial, bool>, FetchError> {
        let m = job.manifest;
        let fail = |kind| FetchError::new(&source.model, Some(&source.url), kind);
        let cancelled = || job.cancel.load(Ordering::Relaxed);
        let partial = Partial::open(store, &m.blob, m.size_bytes, &cancelled)
            .map_err(|e| fail(FetchErrorKind::Store(e)))?
            .ok_or_else(|| fail(FetchErrorKind::Cancelled))?;
        if let BlobState::Present(_) = store.blob_state(&m.blob) {
            partial.discard_if_empty(store, &m.blob);
            return Ok(Err(partial.waited()));
        }
        Ok(Ok(partial))
    }

    /// Phases 3-5 into an open partial: re-hash the kept prefix, check the
    /// free space, download the rest. Returns the bytes transferred.
    fn download_from(
        &self,
        store: &Store,
        m: &Manifest,
        source: &Candidate,
        d: &mut Download<'_>,
    ) -> Result<u64, FetchError> {
        let fail = |kind| FetchError::new(&source.model, Some(&source.url), kind);
        if d.partial.offset() > 0 {
            d.reporter.report(Phase::Rehashing, 0, m.size_bytes, 0);
            d.partial
                .rehash_prefix()
                .map_err(|e| fail(FetchErrorKind::Store(e)))?;
        }
        if let Err(kind) = check_free_space(
            &store.partial_path(&m.blob),
            m.size_bytes - d.partial.offset(),
        ) {
            d.partial.discard_if_empty(store, &m.blob);
            return Err(fail(kind));
        }
        self.download(&source.url, d).map_err(|(kind, n)| {
            d.partial.discard_if_empty(store, &m.blob);
            let mut e = fail(kind);
            e.attempts = n;
            e
        })
    }

    /// Phase 6: hands a read-only handle on the verified partial to the
    /// caller that asked for one, then publishes it.
    fn hand_over_and_publish(
        &self,
        store: &Store,
        m: &Manifest,
        partial: &Partial,
        on_verified: &mut Option<&mut dyn FnMut(File)>,
    ) -> Result<Published, FetchErrorKind> {
        let mut handed_over = false;
        if let Some(hand_over) = on_verified.as_mut() {
            match partial.reopen_read_only(store, &m.blob) {
                Ok(file) => {
                    hand_over(file);
                    handed_over = true;
                }
                Err(e) => log::warn!(
                    "{}: cannot reopen the verified download read-only ({e}); \
                     waiting opens are answered once it is published",
                    m.name
                ),
            }
        }
        store.publish_blob(&m.blob, partial.file()).map_err(|e| {
            // Readers hold this inode now, and the next fetch would
            // resume or truncate the partial in place: take it out of
            // the way (they keep reading it; the next fetch starts anew).
            if handed_over && let Err(e) = store.remove_partial(&m.blob) {
                log::warn!("{}: cannot remove the unpublished download: {e}", m.name);
            }
            FetchErrorKind::Store(e)
        })
    }

    fn write_manifest_if_asked(
        &self,
        store: &Store,
        job: &FetchJob<'_>,
    ) -> Result<(), FetchErrorKind> {
        if job.write_manifest {
            store
                .write_manifest(job.manifest)
                .map_err(FetchErrorKind::Store)?;
        }
        Ok(())
    }
}

/// Phase 6's comparison of the digest, in constant time. On a mismatch the
/// bytes go to quarantine, and `Err(None)` asks the caller to start over
/// from byte 0 (once, `may_restart`, when the download had resumed: the old
/// prefix may have been the bad part); `Err(Some(_))` is the failure.
fn check_digest(
    store: &Store,
    m: &Manifest,
    source: &Candidate,
    partial: &Partial,
    may_restart: bool,
) -> Result<(), Option<FetchError>> {
    let actual = partial.hasher().clone().finish();
    if actual.ct_eq(&m.blob) {
        return Ok(());
    }
    let resumed_from = partial.resumed();
    let q = quarantine_bad_partial(store, m, &actual, &source.model);
    // The error returned below carries digests and quarantine path; its
    // caller logs it once. Only a restart is news here.
    if resumed_from > 0 && may_restart {
        log::warn!(
            "{}: bytes from {} hash to {actual}, expected {} (quarantined at {:?}); \
             the download had resumed at byte {resumed_from}, starting over from 0",
            source.model,
            redact_url(&source.url),
            m.blob,
            q
        );
        return Err(None);
    }
    Err(Some(FetchError::new(
        &source.model,
        Some(&source.url),
        FetchErrorKind::DigestMismatch {
            expected: m.blob,
            actual,
            quarantined: q,
        },
    )))
}

/// How a publication ended, for the log line of a finished fetch.
fn published_words(p: Published) -> &'static str {
    match p {
        Published::Placed => "published",
        Published::AlreadyThere => {
            "dropped (another producer had published the blob first; theirs is kept)"
        }
    }
}

/// Moves bytes that failed verification to quarantine, keeping at most one
/// copy per (expected, actual) pair: a source that keeps serving the same
/// wrong file must not fill the disk with copies of it. Without a
/// quarantine (or with a copy there already) the bytes are deleted, never
/// kept to be resumed.
fn quarantine_bad_partial(
    store: &Store,
    m: &Manifest,
    actual: &Sha256,
    model: &str,
) -> Option<PathBuf> {
    let pair = format!(
        "mismatch-{}-{}-",
        &m.blob.to_hex()[..16],
        &actual.to_hex()[..16]
    );
    if let Some(kept) = quarantined_copy(store, &pair) {
        log::info!(
            "{model}: these wrong bytes are in quarantine already ({}); deleting this copy",
            kept.display()
        );
        if let Err(e) = store.remove_partial(&m.blob) {
            log::warn!("{model}: cannot delete the bad bytes: {e}");
        }
        return Some(kept);
    }
    match store.quarantine_partial(&m.blob, &format!("{pair}{model}")) {
        Ok(q) => Some(q),
        Err(e) => {
            log::warn!("{model}: cannot quarantine the bad bytes ({e}); deleting them");
            if let Err(e) = store.remove_partial(&m.blob) {
                log::warn!("{model}: cannot delete the bad bytes either: {e}");
            }
            None
        }
    }
}

/// The quarantined file whose name holds `pair`, if any. A quarantine
/// that is not a real folder (a symlink) is not looked into.
fn quarantined_copy(store: &Store, pair: &str) -> Option<PathBuf> {
    let dir = store.quarantine_dir();
    if !std::fs::symlink_metadata(&dir).ok()?.is_dir() {
        return None;
    }
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().contains(pair))
        .map(|e| e.path())
}

fn check_free_space(partial: &Path, needed: u64) -> Result<(), FetchErrorKind> {
    let dir = partial.parent().unwrap_or(partial);
    match partial::free_bytes(dir) {
        Some(available) if available < needed => Err(FetchErrorKind::NoSpace { needed, available }),
        _ => Ok(()),
    }
}

/// The retry policy for mirrors: `base`'s, with few attempts and a short
/// time without progress, as the next source is there.
fn mirror_policy(base: &RetryPolicy) -> RetryPolicy {
    RetryPolicy {
        max_attempts: base.max_attempts.min(2),
        max_total_attempts: base.max_total_attempts.min(8),
        retry_for: base.retry_for.min(MIRROR_RETRY_FOR),
        ..base.clone()
    }
}
