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
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::error::{FetchError, FetchErrorKind, redact_url};
use super::http::Http;
use super::progress::{Phase, ProgressSink, Reporter};
use super::retry::RetryPolicy;
use crate::digest::{Hasher, Sha256};
use crate::store::lock::{self, LockGuard, LockWaitError};
use crate::store::{BlobState, Manifest, Published, Source, Store};

/// Size of one read from the network and one write to the partial.
const CHUNK_BYTES: usize = 1 << 20;
/// One handover to the hashing thread (small enough to stay in cache), and
/// how many may wait for it.
const PIPE_CHUNK: usize = 64 << 10;
const PIPE_DEPTH: usize = 8;

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
}

impl Fetcher {
    pub fn new(http: Http, policy: RetryPolicy) -> Self {
        Self { http, policy }
    }

    pub fn http(&self) -> &Http {
        &self.http
    }

    /// How long a fetch retries without progress (see [`RetryPolicy`]).
    pub fn set_retry_for(&mut self, d: Duration) {
        self.policy.retry_for = d;
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

    /// The sources of a blob: `primary`'s own, then those of `others` that
    /// pin the same digest and size, in their order, each URL once.
    pub fn candidates(&self, primary: &Manifest, others: &[Manifest]) -> Vec<Candidate> {
        let same_blob = |o: &&Manifest| {
            o.blob == primary.blob && o.size_bytes == primary.size_bytes && o.name != primary.name
        };
        let mut out: Vec<Candidate> = Vec::new();
        for m in std::iter::once(primary).chain(others.iter().filter(same_blob)) {
            if let Some(url) = self.url_for(m)
                && !out.iter().any(|c| c.url == url)
            {
                out.push(Candidate {
                    model: m.name.to_string(),
                    url,
                });
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
        let _name_lock = lock::lock_waiting(&store.lock_path(&m.name), &cancelled, &mut || {
            waited = true;
            log::info!(
                "{}: another process holds {}, waiting for it",
                m.name,
                store.lock_path(&m.name).display()
            );
            reporter.report(Phase::WaitingForLock, 0, m.size_bytes, 0);
        })
        .map_err(|e| fail(lock_error(store.lock_path(&m.name).as_path(), e)))?;
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
            match self.fetch_from(store, job, source, &mut reporter, &mut on_verified, waited) {
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
        let cancelled = || job.cancel.load(Ordering::Relaxed);
        let mut may_restart = true;
        loop {
            let mut partial =
                Partial::open(store, &m.blob, m.size_bytes, &cancelled).map_err(fail)?;
            partial.start_writeback = on_verified.is_none();
            // A producer of the same blob under another name held the
            // partial and may have published it meanwhile.
            if let BlobState::Present(_) = store.blob_state(&m.blob) {
                partial.discard_if_empty(store, &m.blob);
                self.write_manifest_if_asked(store, job).map_err(fail)?;
                return Ok(FetchOutcome::AlreadyPresent {
                    waited_for_lock: waited || partial.waited,
                });
            }
            log::info!(
                "{}: downloading {} ({}) from {}{}",
                source.model,
                m.blob.short(),
                super::error::human_bytes(m.size_bytes),
                redact_url(&source.url),
                match partial.offset {
                    0 => String::new(),
                    n => format!(", resuming at {}", super::error::human_bytes(n)),
                }
            );
            let started = Instant::now();
            let transferred = self.download_from(store, m, source, &mut partial, reporter, job)?;
            // Read after the download: a server that ignores Range makes it
            // start over, and then nothing of the old partial was used.
            let resumed_from = partial.resumed;
            let actual = partial.hasher.clone().finish();
            if !actual.ct_eq(&m.blob) {
                let q = quarantine_bad_partial(store, m, &actual, &source.model);
                // The error returned below carries digests and quarantine
                // path; its caller logs it once. Only a restart is news here.
                if resumed_from > 0 && may_restart {
                    log::warn!(
                        "{}: bytes from {} hash to {actual}, expected {} (quarantined at {:?}); \
                         the download had resumed at byte {resumed_from}, starting over from 0",
                        source.model,
                        redact_url(&source.url),
                        m.blob,
                        q
                    );
                    may_restart = false;
                    continue;
                }
                return Err(fail(FetchErrorKind::DigestMismatch {
                    expected: m.blob,
                    actual,
                    quarantined: q,
                }));
            }
            let verified = Instant::now();
            reporter.report(Phase::Publishing, m.size_bytes, m.size_bytes, transferred);
            let placed = self
                .hand_over_and_publish(store, m, &partial, on_verified)
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
                super::error::human_bytes(transferred),
                redact_url(&source.url),
                (verified - started).as_secs_f64(),
                partial.hash_tail.as_secs_f64(),
                published_words(placed),
                verified.elapsed().as_secs_f64(),
            );
            return Ok(FetchOutcome::Downloaded {
                transferred,
                resumed_from,
            });
        }
    }

    /// Phases 3-5 into an open partial: re-hash the kept prefix, check the
    /// free space, download the rest. Returns the bytes transferred.
    fn download_from(
        &self,
        store: &Store,
        m: &Manifest,
        source: &Candidate,
        partial: &mut Partial,
        reporter: &mut Reporter,
        job: &FetchJob<'_>,
    ) -> Result<u64, FetchError> {
        let fail = |kind| FetchError::new(&source.model, Some(&source.url), kind);
        if partial.offset > 0 {
            reporter.report(Phase::Rehashing, 0, m.size_bytes, 0);
            partial.rehash_prefix().map_err(fail)?;
        }
        if let Err(kind) =
            check_free_space(&store.partial_path(&m.blob), m.size_bytes - partial.offset)
        {
            partial.discard_if_empty(store, &m.blob);
            return Err(fail(kind));
        }
        self.download(&source.url, partial, reporter, job.cancel)
            .map_err(|(kind, n)| {
                partial.discard_if_empty(store, &m.blob);
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
        store.publish_blob(&m.blob, &partial.file).map_err(|e| {
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

    /// Phase 5: attempts with backoff until the partial is complete,
    /// within the policy's budgets (see [`RetryPolicy`]): attempts in a row
    /// without progress, time without progress, attempts in all. Progress
    /// is a byte beyond the furthest offset reached so far, from an attempt
    /// that was not too slow. A connection the server closed before
    /// answering is retried at once, once, without spending an attempt.
    /// Returns the bytes transferred, or the last error and the number of
    /// attempts.
    fn download(
        &self,
        url: &str,
        p: &mut Partial,
        reporter: &mut Reporter,
        cancel: &AtomicBool,
    ) -> Result<u64, (FetchErrorKind, u32)> {
        let mut transferred = 0u64;
        let mut attempt = 0u32;
        let mut fruitless = 0u32;
        let mut furthest = p.offset;
        let mut last_progress = Instant::now();
        let mut free_retry_taken = false;
        loop {
            attempt += 1;
            let before = p.offset;
            let err = match self.attempt(url, p, reporter, cancel, &mut transferred) {
                Ok(()) => return Ok(transferred),
                Err(FetchErrorKind::Stalled(_)) => {
                    FetchErrorKind::Stalled(self.http.config().stall_timeout)
                }
                Err(e) => e,
            };
            if matches!(err, FetchErrorKind::ClosedBeforeAnswer(_))
                && p.offset == before
                && !std::mem::replace(&mut free_retry_taken, true)
            {
                log::info!(
                    "{}: {err}; retrying at once on a new connection",
                    redact_url(url)
                );
                attempt -= 1;
                continue;
            }
            free_retry_taken = false;
            let slow = matches!(err, FetchErrorKind::TooSlow { .. });
            if p.offset > furthest && !slow {
                fruitless = 1;
                last_progress = Instant::now();
            } else {
                fruitless += 1;
            }
            furthest = furthest.max(p.offset);
            let left = self
                .policy
                .retry_for
                .saturating_sub(last_progress.elapsed());
            if !err.is_transient()
                || fruitless >= self.policy.max_attempts
                || attempt >= self.policy.max_total_attempts
                // One retry at least, even after an attempt that alone
                // took longer than retry_for (a stall of stall_timeout).
                || (left.is_zero() && fruitless >= 2)
            {
                return Err((err, attempt));
            }
            let retry_after = match &err {
                FetchErrorKind::Status { retry_after, .. } => *retry_after,
                _ => None,
            };
            let pause = self.policy.backoff(fruitless, retry_after).min(left);
            log::warn!(
                "{}: attempt {attempt} failed at byte {} ({err}); retrying in {:.1} s",
                redact_url(url),
                p.offset,
                pause.as_secs_f64()
            );
            reporter.note(Some(format!(
                "retrying ({fruitless}/{}): {}",
                self.policy.max_attempts,
                err.brief()
            )));
            reporter.report(Phase::Retrying, p.offset, p.size, transferred);
            if sleep_unless_cancelled(pause, cancel) {
                return Err((FetchErrorKind::Cancelled, attempt));
            }
        }
    }

    /// One HTTP request, appending to the partial.
    fn attempt(
        &self,
        url: &str,
        p: &mut Partial,
        reporter: &mut Reporter,
        cancel: &AtomicBool,
        transferred: &mut u64,
    ) -> Result<(), FetchErrorKind> {
        if p.offset == p.size {
            return Ok(()); // a complete partial from an earlier run
        }
        let mut resp = self.http.get(url, p.offset)?;
        match resp.status {
            206 => match resp.content_range() {
                Some((start, total)) if start == p.offset && total.is_none_or(|t| t == p.size) => {}
                Some((start, Some(total))) if start == p.offset => {
                    return Err(FetchErrorKind::LengthMismatch {
                        expected: p.size,
                        announced: total,
                    });
                }
                other => {
                    log::warn!(
                        "{}: unusable Content-Range {other:?}; starting over",
                        redact_url(url)
                    );
                    p.reset()?;
                    return Err(FetchErrorKind::Network(
                        "server answered a Range request with the wrong range".into(),
                    ));
                }
            },
            200 => {
                if p.offset > 0 {
                    log::info!(
                        "{}: server ignored Range; starting over from byte 0",
                        redact_url(url)
                    );
                    p.reset()?;
                }
            }
            code => {
                return Err(FetchErrorKind::Status {
                    code,
                    retry_after: resp.retry_after(),
                });
            }
        }
        if let Some(len) = resp.content_length()
            && len != p.size - p.offset
        {
            return Err(FetchErrorKind::LengthMismatch {
                expected: p.size,
                announced: p.offset + len,
            });
        }
        // SHA-256 runs on a second thread while this one reads the socket
        // (TLS decryption) and writes the partial: on two cores, one
        // thread doing all three is the bottleneck of the whole download.
        // The hasher only gets bytes that reached the file, in order, so
        // the digest still covers exactly the file's bytes.
        let (full_tx, full_rx) = crossbeam_channel::bounded::<(Vec<u8>, usize)>(PIPE_DEPTH);
        let (free_tx, free_rx) = crossbeam_channel::bounded::<Vec<u8>>(PIPE_DEPTH + 2);
        for _ in 0..PIPE_DEPTH + 2 {
            let _ = free_tx.send(vec![0u8; PIPE_CHUNK]);
        }
        // The hasher moves to the thread only once it runs, so a failed
        // spawn leaves the partial's hash state untouched.
        let (start_tx, start_rx) = crossbeam_channel::bounded::<Hasher>(1);
        let fd = p.file.as_raw_fd();
        let writeback_every = if p.start_writeback {
            WRITEBACK_EVERY
        } else {
            u64::MAX
        };
        std::thread::scope(|scope| {
            let hashing = std::thread::Builder::new()
                .name("hash".into())
                .spawn_scoped(scope, move || {
                    let mut hasher = start_rx.recv().ok()?;
                    let mut unsynced = 0u64;
                    for (buf, len) in full_rx {
                        hasher.update(&buf[..len]);
                        let _ = free_tx.send(buf);
                        // Start write-back here, not on the thread that
                        // reads the socket: submitting it costs CPU.
                        unsynced += len as u64;
                        if unsynced >= writeback_every {
                            unsynced = 0;
                            // SAFETY: plain syscall on an fd the partial
                            // keeps open; failure only loses a hint.
                            unsafe {
                                libc::sync_file_range(fd, 0, 0, libc::SYNC_FILE_RANGE_WRITE);
                            }
                        }
                    }
                    Some(hasher)
                })
                .map_err(|e| {
                    FetchErrorKind::Network(format!("cannot start the hashing thread: {e}"))
                })?;
            let _ = start_tx.send(std::mem::take(&mut p.hasher));
            let mut rate = RateFloor::new(
                self.http.config().stall_timeout,
                self.http.config().min_rate,
            );
            let result = (|| -> Result<(), FetchErrorKind> {
                loop {
                    // Fill one chunk, then write it and hand it to the
                    // hasher: one write(2) per TLS record (16 KiB) cost a
                    // third more CPU. Progress is reported after every
                    // read and counts the bytes received, so a stall never
                    // hides bytes that arrived before it.
                    let mut buf = free_rx.recv().unwrap_or_else(|_| vec![0u8; PIPE_CHUNK]);
                    let room = PIPE_CHUNK.min((p.size - p.offset) as usize + 1);
                    let mut n = 0;
                    let mut step = Ok(true);
                    while n < room {
                        match resp.read(&mut buf[n..room]) {
                            Ok(0) => {
                                step = Ok(false);
                                break;
                            }
                            Ok(k) => {
                                n += k;
                                *transferred += k as u64;
                                reporter.add(k as u64);
                                let done = (p.offset + n as u64).min(p.size);
                                reporter.report(Phase::Downloading, done, p.size, *transferred);
                                if let Err(e) = rate.add(k as u64) {
                                    step = Err(e);
                                    break;
                                }
                            }
                            Err(e) => {
                                step = Err(e);
                                break;
                            }
                        }
                    }
                    // The server sent more than the blob's size.
                    let keep = n.min((p.size - p.offset) as usize);
                    if keep < n {
                        step = Err(FetchErrorKind::TooLong { expected: p.size });
                    }
                    if keep > 0 {
                        p.append_unhashed(&buf[..keep])?;
                        let _ = full_tx.send((buf, keep));
                    }
                    match step {
                        Ok(true) if cancel.load(Ordering::Relaxed) => {
                            return Err(FetchErrorKind::Cancelled);
                        }
                        Ok(true) => {}
                        Ok(false) => return Ok(()), // end of the body
                        Err(e) => return Err(e),
                    }
                }
            })();
            drop(full_tx);
            let body_ended = Instant::now();
            p.hasher = hashing
                .join()
                .expect("the hashing thread panicked")
                .expect("the hashing thread got the hasher");
            p.hash_tail = body_ended.elapsed();
            result
        })?;
        if p.offset < p.size {
            return Err(FetchErrorKind::Network(format!(
                "connection closed after byte {} of {}",
                p.offset, p.size
            )));
        }
        Ok(())
    }
}

/// Fails an attempt whose source sends fewer than `min_rate` bytes per
/// second over a whole `window` (the stall timeout): a trickle never
/// trips the per-read timeout, and would hold its fetch slot for hours.
struct RateFloor {
    window: Duration,
    min_rate: u64,
    started: Instant,
    bytes: u64,
}

impl RateFloor {
    fn new(window: Duration, min_rate: u64) -> Self {
        Self {
            window,
            min_rate,
            started: Instant::now(),
            bytes: 0,
        }
    }

    fn add(&mut self, n: u64) -> Result<(), FetchErrorKind> {
        self.bytes += n;
        let elapsed = self.started.elapsed();
        if elapsed < self.window {
            return Ok(());
        }
        let floor = (self.min_rate as f64 * elapsed.as_secs_f64()) as u64;
        if self.min_rate > 0 && self.bytes < floor {
            return Err(FetchErrorKind::TooSlow {
                received: self.bytes,
                window: elapsed,
                min_rate: self.min_rate,
            });
        }
        self.started = Instant::now();
        self.bytes = 0;
        Ok(())
    }
}

/// The partial file of one blob, locked, with the hash of its prefix.
struct Partial {
    file: File,
    _lock: LockGuard,
    offset: u64,
    size: u64,
    /// Bytes kept from an earlier run that this download builds on; zero
    /// once the partial is reset.
    resumed: u64,
    /// Whether another producer held the partial's lock when we came.
    waited: bool,
    hasher: Hasher,
    /// How long hashing ran on after the last byte of the last attempt.
    hash_tail: Duration,
    /// Start write-back during the download (see [`WRITEBACK_EVERY`]).
    start_writeback: bool,
}

/// Start write-back every this many bytes when the caller waits for the
/// blob to be published (`modelfs pull`), so the final `sync_all` before
/// the rename has little left to do and dirty pages do not pile up.
const WRITEBACK_EVERY: u64 = 64 << 20;

impl Partial {
    fn open(
        store: &Store,
        d: &Sha256,
        size: u64,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Self, FetchErrorKind> {
        let path = store.partial_path(d);
        let mut waited = false;
        let lock = loop {
            let file = store.open_partial(d).map_err(FetchErrorKind::Store)?;
            match lock::try_lock_file(file) {
                // gc deletes a partial while holding its lock: if ours is no
                // longer the file at the path, open the new one instead.
                Ok(Some(g)) if still_linked(g.file(), store, d) => {
                    if refuse_shared_inode(&g, store, d, &path)? {
                        if cancelled() {
                            return Err(FetchErrorKind::Cancelled);
                        }
                        continue;
                    }
                    break g;
                }
                Ok(Some(_)) => continue,
                Ok(None) if cancelled() => return Err(FetchErrorKind::Cancelled),
                Ok(None) => {
                    waited = true;
                    std::thread::sleep(lock::LOCK_POLL)
                }
                Err(e) => {
                    return Err(FetchErrorKind::Store(crate::store::StoreError::io(
                        &path, e,
                    )));
                }
            }
        };
        let file = lock
            .file()
            .try_clone()
            .map_err(|e| FetchErrorKind::Store(crate::store::StoreError::io(&path, e)))?;
        let len = file
            .metadata()
            .map_err(|e| FetchErrorKind::Store(crate::store::StoreError::io(&path, e)))?
            .len();
        let mut p = Self {
            file,
            _lock: lock,
            offset: len,
            size,
            resumed: len,
            waited,
            hasher: Hasher::new(),
            hash_tail: Duration::ZERO,
            start_writeback: true,
        };
        if len > size {
            log::warn!(
                "{}: partial is longer than the blob; starting over",
                path.display()
            );
            p.reset()?;
        }
        Ok(p)
    }

    /// The partial file again, read-only: the same inode, never through a
    /// symlink, and never another file that took its name.
    fn reopen_read_only(&self, store: &Store, d: &Sha256) -> std::io::Result<File> {
        use std::os::unix::fs::MetadataExt;
        let again = store
            .open_existing_partial(d)
            .map_err(std::io::Error::other)?;
        let (a, b) = (self.file.metadata()?, again.metadata()?);
        if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
            return Err(std::io::Error::other(
                "the partial file was replaced while it was being verified",
            ));
        }
        Ok(again)
    }

    /// Hashes the kept prefix, so the final digest covers every byte.
    fn rehash_prefix(&mut self) -> Result<(), FetchErrorKind> {
        let io = |e| FetchErrorKind::Store(crate::store::StoreError::io("partial file", e));
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut h = Hasher::new();
        let mut left = self.offset;
        let mut buf = vec![0u8; CHUNK_BYTES];
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = self.file.read(&mut buf[..want]).map_err(io)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            left -= n as u64;
        }
        self.offset -= left;
        self.resumed = self.offset;
        self.file.set_len(self.offset).map_err(io)?;
        self.file.seek(SeekFrom::Start(self.offset)).map_err(io)?;
        self.hasher = h;
        Ok(())
    }

    /// Removes the partial file and its folder if not one byte reached it,
    /// so a fetch that failed before the first byte (404, refused redirect,
    /// no space) leaves the model pending instead of looking like a started
    /// download. Safe because we hold the partial's lock, as gc does.
    fn discard_if_empty(&self, store: &Store, d: &Sha256) {
        if self.offset == 0 && still_linked(&self.file, store, d) {
            let _ = store.remove_partial(d);
        }
    }

    fn reset(&mut self) -> Result<(), FetchErrorKind> {
        let io = |e| FetchErrorKind::Store(crate::store::StoreError::io("partial file", e));
        self.file.set_len(0).map_err(io)?;
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        self.offset = 0;
        self.resumed = 0;
        self.hasher = Hasher::new();
        Ok(())
    }

    /// Writes `bytes` at the end of the partial. The caller hashes them
    /// (on the hashing thread), and only once they are written.
    fn append_unhashed(&mut self, bytes: &[u8]) -> Result<(), FetchErrorKind> {
        if let Err(e) = self.file.write_all(bytes) {
            if e.raw_os_error() == Some(libc::ENOSPC) {
                let available = free_bytes(
                    Path::new("/proc/self/fd")
                        .join(self.file.as_raw_fd().to_string())
                        .as_path(),
                )
                .unwrap_or(0);
                return Err(FetchErrorKind::NoSpace {
                    needed: self.size - self.offset,
                    available,
                });
            }
            // Keep only what reached the file: the hash must cover the file exactly.
            let _ = self.file.set_len(self.offset);
            let _ = self.file.seek(SeekFrom::Start(self.offset));
            return Err(FetchErrorKind::Store(crate::store::StoreError::io(
                "partial file",
                e,
            )));
        }
        self.offset += bytes.len() as u64;
        Ok(())
    }
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

/// A partial with more than one link shares its inode with a name outside
/// the partial folder (a hard link planted there, perhaps to a file outside
/// the store): writing, truncating or even resuming from it would change
/// that file. Removes our name for it (never touching the file itself) and
/// says so; `true` when the caller must open a new partial. The caller
/// holds the partial's lock.
fn refuse_shared_inode(
    held: &LockGuard,
    store: &Store,
    d: &Sha256,
    path: &Path,
) -> Result<bool, FetchErrorKind> {
    use std::os::unix::fs::MetadataExt;
    let links = held
        .file()
        .metadata()
        .map_err(|e| FetchErrorKind::Store(crate::store::StoreError::io(path, e)))?
        .nlink();
    if links <= 1 {
        return Ok(false);
    }
    log::warn!(
        "{}: the partial file has {links} links (another name shares it, perhaps outside \
         the store); not writing to it: removing this name and starting a new download",
        path.display()
    );
    store.remove_partial(d).map_err(FetchErrorKind::Store)?;
    Ok(true)
}

/// Whether `file` is still the partial file of `d` in the store.
fn still_linked(file: &File, store: &Store, d: &Sha256) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), store.stat_partial(d)) {
        (Ok(a), Some(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

fn lock_error(path: &Path, e: LockWaitError) -> FetchErrorKind {
    match e {
        LockWaitError::Cancelled => FetchErrorKind::Cancelled,
        // A symlink at the lock path is refused by name, not as a mystery ELOOP.
        LockWaitError::Io(e) => FetchErrorKind::Store(crate::store::StoreError::walking(path, e)),
    }
}

/// Free bytes for an unprivileged writer on the filesystem holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and a zeroed out-struct of the right type.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

fn check_free_space(partial: &Path, needed: u64) -> Result<(), FetchErrorKind> {
    let dir = partial.parent().unwrap_or(partial);
    match free_bytes(dir) {
        Some(available) if available < needed => Err(FetchErrorKind::NoSpace { needed, available }),
        _ => Ok(()),
    }
}

/// Sleeps `d` in short steps; `true` if cancelled meanwhile.
fn sleep_unless_cancelled(d: Duration, cancel: &AtomicBool) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if cancel.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(100)));
    }
    cancel.load(Ordering::Relaxed)
}
