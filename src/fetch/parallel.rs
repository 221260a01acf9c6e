//! Phase 5 over several connections: the rest of a large blob fetched as
//! byte ranges at once, hashed in order as the prefix grows.
//!
//! The first range is a probe: only an origin that answers it with `206`,
//! the range asked for, the blob's total length and a validator (a strong
//! `ETag` or `Last-Modified`) is asked for more ranges, each with
//! `If-Range` set to that validator, so every byte comes from one version
//! of the object; any other answer to the probe makes the caller download
//! over one stream as before, with nothing written. Workers write their
//! ranges into the partial file where they belong ([`Partial::write_at`]);
//! the hashing thread reads back the contiguous prefix as it grows
//! ([`Ranges::frontier`]) and hashes it, so hashing ends shortly after the
//! last byte and never needs a second pass over the file.
//!
//! Connections: 8 at first (fewer if fewer are allowed), doubled while the
//! aggregate rate keeps growing, halved when the origin throttles (429,
//! 503); never more than the fetcher's `connections`. Each range retries
//! on its own with the policy's backoff; one bad connection gives its range
//! back to the others. A range answered with the whole object (the object
//! changed, or the origin stopped honouring ranges) ends the parallel
//! download: the partial is emptied and the caller starts one stream from
//! byte 0, so no file is ever stitched from two versions.
//!
//! Budgets, as for one stream: failed attempts in all (the policy's total),
//! failures of one range in a row without a byte, and time without a byte
//! written (`retry_for`). On any end other than success the partial keeps
//! exactly its hashed prefix (ranges written beyond it are cut off), so the
//! next run resumes there.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::thread::ScopedJoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::download::Download;
use super::error::FetchErrorKind;
use super::http::Fetched;
use super::pipeline::Fetcher;
use super::progress::{Phase, Reporter};
use super::ranges::{Range, Ranges};
use super::stream::{Filled, RateFloor, fill, no_space};
use crate::digest::Hasher;
use crate::store::partial::Partial;
use crate::text::redact_url;

/// Below this many bytes left, one stream: ranges would only add requests.
pub(super) const PARALLEL_MIN: u64 = 8 << 20;
const START_CONNECTIONS: usize = 8;
const READ_BUF: usize = 256 << 10;
const HASH_BUF: usize = 1 << 20;
const ADAPT_EVERY: Duration = Duration::from_millis(500);
/// After a throttling answer, the count does not grow again for this long.
const THROTTLE_QUIET: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_millis(100);

/// How a parallel download ended, when it did not fail.
pub(super) enum Parallel {
    /// Every byte written and hashed; `received` bytes came over the network.
    Done { received: u64 },
    /// Ranges cannot be used for this blob here (`why`); the partial holds
    /// what it held before, or nothing if the object changed under us.
    /// `whole`: the probe's answer when the origin sent the whole object
    /// (`200`) instead of a range, for the one stream to read, unread: a
    /// second request would fetch it again, and a pull-through cache
    /// (distribution's proxy) pulls it from its upstream once more for
    /// every such request.
    Fallback {
        why: String,
        received: u64,
        whole: Option<Fetched>,
    },
    /// Ranges were not tried: the rest is small, or one connection is
    /// allowed. The partial is as it was.
    NotTried,
}

enum End {
    Failed(FetchErrorKind),
    Fallback { why: String, changed: bool },
}

/// Why one range request failed.
enum RangeError {
    Kind(FetchErrorKind),
    /// The answer was not a piece of the object the probe saw.
    Changed(String),
}

struct Shared<'a> {
    ranges: Mutex<Ranges>,
    /// Signalled whenever the frontier may have moved or work ended.
    wake: Condvar,
    url: Mutex<String>,
    original: &'a str,
    validator: String,
    size: u64,
    partial: &'a Partial,
    cancel: &'a AtomicBool,
    received: AtomicU64,
    /// How far the hashing thread has hashed.
    hashed: AtomicU64,
    /// How far beyond `hashed` a worker may write (see
    /// [`Shared::wait_for_the_hasher`]).
    ahead: u64,
    stop: AtomicBool,
    workers_done: AtomicBool,
    end: Mutex<Option<End>>,
    target: AtomicUsize,
    failures: AtomicU32,
    throttled_at: Mutex<Option<Instant>>,
    last_error: Mutex<Option<FetchErrorKind>>,
    /// When a range last finished, or failed after bytes at a fair rate:
    /// a trickle's bytes are not progress (the time budget runs on).
    last_progress: Mutex<Instant>,
}

impl Shared<'_> {
    fn finish(&self, end: End) {
        let mut slot = self.end.lock();
        if slot.is_none() {
            *slot = Some(end);
        }
        self.stop.store(true, Ordering::SeqCst);
        self.wake.notify_all();
    }

    /// Holds a worker about to write at `pos` while that is more than
    /// `ahead` bytes past what is hashed: on a fast origin the hasher then
    /// keeps pace with the download, as on one stream, instead of hashing
    /// most of the blob after its last byte (and reading it back from the
    /// page cache long after it was written). The worker of the lowest
    /// range never waits: it writes at most a range past the frontier,
    /// and `ahead` is more than a range per connection (smaller, it held
    /// back the connections working further out: 9.2 s instead of about
    /// 5 for 1 GiB at 16 MiB/s per connection).
    fn wait_for_the_hasher(&self, pos: u64) {
        while pos > self.hashed.load(Ordering::Relaxed) + self.ahead && !self.stopped() {
            let mut r = self.ranges.lock();
            if pos <= self.hashed.load(Ordering::Relaxed) + self.ahead {
                break;
            }
            self.wake.wait_for(&mut r, TICK);
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.cancel.load(Ordering::Relaxed)
    }
}

impl Fetcher {
    /// Downloads the rest of `d`'s partial from `url` in ranges; see the
    /// module doc. Errors carry the number of failed attempts.
    pub(super) fn download_parallel(
        &self,
        url: &str,
        d: &mut Download<'_>,
    ) -> Result<Parallel, (FetchErrorKind, u32)> {
        let store_err = |e| (FetchErrorKind::Store(e), 0);
        let (size, start, max) = (d.partial.size(), d.partial.offset(), self.connections());
        // Ranges of up to half a connection's share: few requests (one
        // round trip each) while much is left, shrinking towards the end.
        let chunk = ((size - start) / (2 * max as u64)).clamp(2 << 20, 64 << 20);
        let mut ranges = Ranges::new(size, start, chunk);
        ranges.share_among(max);
        for &(a, b) in d.partial.kept_pieces() {
            ranges.mark_done(a, b);
        }
        let Some(first) = ranges.take() else {
            // A run killed with every range written but its hasher behind
            // recorded the rest as one piece: nothing is left to fetch.
            return hash_kept(d).map_err(store_err);
        };
        let (probe, validator) = match self.probe(url, first, size) {
            Ok(p) => p,
            Err((why, whole)) => {
                return Ok(Parallel::Fallback {
                    why,
                    received: 0,
                    whole,
                });
            }
        };
        let kept = d.partial.kept_pieces().to_vec();
        d.partial.record_prefix(start, &kept).map_err(store_err)?;
        let hasher = d.partial.take_hasher();
        let reader = d.partial.reader().map_err(store_err)?;
        let sh = Shared {
            ranges: Mutex::new(ranges),
            wake: Condvar::new(),
            url: Mutex::new(probe.final_url.clone()),
            original: url,
            validator,
            size,
            partial: &d.partial,
            cancel: d.cancel,
            received: AtomicU64::new(0),
            hashed: AtomicU64::new(start),
            ahead: (max as u64 + 2) * chunk + (32 << 20),
            stop: AtomicBool::new(false),
            workers_done: AtomicBool::new(false),
            end: Mutex::new(None),
            target: AtomicUsize::new(START_CONNECTIONS.min(max)),
            failures: AtomicU32::new(0),
            throttled_at: Mutex::new(None),
            last_error: Mutex::new(None),
            last_progress: Mutex::new(Instant::now()),
        };
        log::info!(
            "{}: fetching in ranges of {} MiB over up to {max} connections",
            redact_url(url),
            chunk >> 20
        );
        let (hasher, hashed, tail) = std::thread::scope(|scope| {
            let hashing = scope.spawn(|| hash_prefix(&sh, reader, hasher, start));
            self.steer(&sh, scope, d.reporter, (first, probe), max);
            sh.workers_done.store(true, Ordering::SeqCst);
            sh.wake.notify_all();
            let last_byte = Instant::now();
            let (h, n) = hashing.join().expect("the hashing thread panicked");
            (h, n, last_byte.elapsed())
        });
        d.hash_tail = tail;
        let ended = sh.ended(hashed);
        settle(ended, d, hasher, hashed)
    }

    /// Asks for the first range; the answer and the object's validator
    /// when the rest can be fetched in ranges, otherwise why not, with the
    /// answer if it is the whole object (`200`).
    fn probe(
        &self,
        url: &str,
        first: Range,
        size: u64,
    ) -> Result<(Fetched, String), (String, Option<Fetched>)> {
        let probe = self
            .http()
            .get_range(url, first.start, first.end, None)
            .map_err(|e| (format!("the first range failed ({e})"), None))?;
        if let Err(why) = usable_probe(&probe, first, size) {
            // Only the whole object itself: an error page answered 200 is
            // asked for again as one stream, which may still resume.
            let whole = probe.status == 200 && probe.content_length() == Some(size);
            return Err((why, whole.then_some(probe)));
        }
        match probe.validator() {
            Some(v) => Ok((probe, v)),
            None => Err((
                "the origin names no version (no ETag or Last-Modified)".into(),
                None,
            )),
        }
    }

    /// The steering loop: keeps `target` workers running while there is
    /// work, reports progress, adapts the connection count and enforces
    /// the time budget. Returns once every worker has ended.
    fn steer<'s, 'env, 'a: 's>(
        &'s self,
        sh: &'s Shared<'a>,
        scope: &'s std::thread::Scope<'s, 'env>,
        reporter: &mut Reporter,
        first: (Range, Fetched),
        max: usize,
    ) {
        let mut slots: Vec<Option<ScopedJoinHandle<'s, ()>>> = Vec::new();
        let mut first = Some(first);
        let mut watch = Watch::new();
        loop {
            let target = sh.target.load(Ordering::Relaxed);
            let can_take = !sh.stopped() && sh.ranges.lock().can_take();
            for i in 0..target.max(slots.len()) {
                if i >= slots.len() {
                    slots.push(None);
                }
                let idle = slots[i].as_ref().is_none_or(|h| h.is_finished());
                if idle && i < target && (can_take || first.is_some()) {
                    if let Some(h) = slots[i].take() {
                        let _ = h.join();
                    }
                    let given = first.take();
                    slots[i] = Some(scope.spawn(move || self.work(sh, i, given)));
                }
            }
            if slots
                .iter()
                .all(|s| s.as_ref().is_none_or(|h| h.is_finished()))
                && first.is_none()
            {
                let r = sh.ranges.lock();
                if r.complete() || sh.stopped() || !r.can_take() {
                    break;
                }
            }
            {
                let mut r = sh.ranges.lock();
                sh.wake.wait_for(&mut r, TICK);
            }
            watch.tick(self, sh, reporter, max);
        }
        for h in slots.into_iter().flatten() {
            let _ = h.join();
        }
        reporter.set_connections(1);
    }

    /// One connection: takes ranges until none is left, the fetch stops,
    /// or its slot is no longer wanted.
    fn work(&self, sh: &Shared<'_>, slot: usize, mut first: Option<(Range, Fetched)>) {
        let mut fruitless = 0u32;
        loop {
            if sh.stopped() || (first.is_none() && slot >= sh.target.load(Ordering::Relaxed)) {
                return;
            }
            let (range, resp) = match first.take() {
                Some((r, resp)) => (r, Some(resp)),
                None => match sh.ranges.lock().take() {
                    Some(r) => (r, None),
                    None => return,
                },
            };
            match self.fetch_range(sh, range, resp) {
                Ok(()) => {
                    fruitless = 0;
                    *sh.last_progress.lock() = Instant::now();
                }
                Err((e, wrote)) => {
                    sh.ranges.lock().give_back(range.id);
                    sh.wake.notify_all();
                    // Bytes from a too slow attempt are not progress, as
                    // for one stream: a trickle must end.
                    let slow = matches!(e, RangeError::Kind(FetchErrorKind::TooSlow { .. }));
                    fruitless = if wrote > 0 && !slow { 1 } else { fruitless + 1 };
                    if wrote > 0 && !slow {
                        *sh.last_progress.lock() = Instant::now();
                    }
                    if !self.after_failure(sh, e, fruitless) {
                        return;
                    }
                }
            }
        }
    }

    /// Decides what a failed range means for the fetch, and waits out the
    /// backoff; `false` when this worker should end.
    fn after_failure(&self, sh: &Shared<'_>, e: RangeError, fruitless: u32) -> bool {
        let policy = self.policy();
        let kind = match e {
            RangeError::Changed(why) => {
                sh.finish(End::Fallback { why, changed: true });
                return false;
            }
            RangeError::Kind(FetchErrorKind::Cancelled) => return false,
            RangeError::Kind(k) => k,
        };
        let failures = sh.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let mut retry_after = None;
        if let FetchErrorKind::Status {
            code,
            retry_after: ra,
        } = &kind
        {
            retry_after = *ra;
            if matches!(code, 429 | 503) {
                *sh.throttled_at.lock() = Some(Instant::now());
                let _ = sh
                    .target
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                        Some((t / 2).max(1))
                    });
            }
            // A signed URL that expired: resolve the original one again.
            if matches!(code, 401 | 403 | 410) && *sh.url.lock() != sh.original {
                log::info!(
                    "{}: the redirected URL stopped working; asking the origin again",
                    redact_url(sh.original)
                );
                *sh.url.lock() = sh.original.to_string();
                return true;
            }
        }
        if !kind.is_transient()
            || failures >= policy.max_total_attempts
            || fruitless >= policy.max_attempts
        {
            sh.finish(End::Failed(kind));
            return false;
        }
        log::warn!(
            "{}: a range failed ({kind}); retrying it",
            redact_url(sh.original)
        );
        *sh.last_error.lock() = Some(kind);
        let pause = policy.backoff(fruitless, retry_after);
        let until = Instant::now() + pause;
        while Instant::now() < until && !sh.stopped() {
            std::thread::sleep(TICK.min(until - Instant::now()));
        }
        !sh.stopped()
    }

    /// Fetches one range into the partial (`resp`: its answer, if asked
    /// already). `Ok` when the range is finished (or was split and its
    /// part done); on an error, how many bytes it wrote.
    fn fetch_range(
        &self,
        sh: &Shared<'_>,
        r: Range,
        resp: Option<Fetched>,
    ) -> Result<(), (RangeError, u64)> {
        let mut resp = match resp {
            Some(x) => x,
            None => {
                let url = sh.url.lock().clone();
                let resp = self
                    .http()
                    .get_range(&url, r.start, r.end, Some(&sh.validator))
                    .map_err(|e| (RangeError::Kind(e), 0))?;
                if resp.final_url != url {
                    // Asked again at the original URL after its redirect
                    // target expired: the new target serves the rest.
                    let mut now = sh.url.lock();
                    if *now == url {
                        *now = resp.final_url.clone();
                    }
                }
                resp
            }
        };
        check_range(&resp, r, sh).map_err(|e| (e, 0))?;
        let config = self.http().config();
        let mut rate = RateFloor::new(config.stall_timeout, config.min_rate);
        let mut buf = vec![0u8; READ_BUF];
        let mut pos = r.start;
        let fail = |e, at: u64| (RangeError::Kind(e), at - r.start);
        let Some(mut end) = sh.ranges.lock().end_of(r.id) else {
            return Ok(());
        };
        loop {
            if pos >= end {
                return Ok(());
            }
            if sh.stopped() {
                return Err((RangeError::Kind(FetchErrorKind::Cancelled), pos - r.start));
            }
            sh.wait_for_the_hasher(pos);
            let want = buf.len().min((end - pos) as usize);
            let (n, step) = fill(&mut resp, &mut buf[..want], &mut rate, |_, _| {});
            if n > 0 {
                sh.received.fetch_add(n as u64, Ordering::Relaxed);
                sh.partial
                    .write_at(pos, &buf[..n])
                    .map_err(|e| fail(no_space(sh.partial, e), pos))?;
                pos += n as u64;
                // A split moved `end` down since the last write at most by
                // this one buffer, whose bytes are the other range's own
                // (one version: If-Range and the validator saw to that).
                let now = sh.ranges.lock().wrote(r.id, pos);
                sh.wake.notify_all();
                match now {
                    Some(e) => end = e,
                    None => {
                        // Finished; a range split under us leaves bytes
                        // unread, and that connection closes.
                        if pos == r.end {
                            resp.finish();
                        }
                        return Ok(());
                    }
                }
            }
            match step {
                Ok(Filled::Full) => {}
                Ok(Filled::Ended) => {
                    let e = FetchErrorKind::Network(format!(
                        "connection closed at byte {pos} in the range {}-{}",
                        r.start,
                        r.end - 1
                    ));
                    return Err(fail(e, pos));
                }
                Err(e) => return Err(fail(e, pos)),
            }
        }
    }
}

/// What the steering loop keeps between its ticks: what it reported and
/// recorded last, and the rate window that decides the connection count.
struct Watch {
    reported: u64,
    recorded: (u64, u64),
    window: Instant,
    window_bytes: u64,
    level_rate: f64,
}

impl Watch {
    fn new() -> Self {
        Self {
            reported: 0,
            recorded: (0, 0),
            window: Instant::now(),
            window_bytes: 0,
            level_rate: 0.0,
        }
    }

    /// One look at the download: progress to the reporter, the resume
    /// record, cancellation, the time budget, and the connection count.
    fn tick(&mut self, f: &Fetcher, sh: &Shared<'_>, reporter: &mut Reporter, max: usize) {
        let received = sh.received.load(Ordering::Relaxed);
        reporter.add(received - self.reported);
        self.reported = received;
        let (written, in_flight) = {
            let r = sh.ranges.lock();
            (r.written(), r.in_flight())
        };
        reporter.set_connections(in_flight);
        reporter.report(Phase::Downloading, written, sh.size, received);
        let hashed = sh.hashed.load(Ordering::Relaxed);
        if (hashed, written) != self.recorded {
            // Only for a resume after a crash: a failure to write it
            // costs that resume some bytes, nothing else.
            let pieces = sh.ranges.lock().written_beyond(hashed);
            match sh.partial.record_prefix(hashed, &pieces) {
                Ok(()) => self.recorded = (hashed, written),
                Err(e) => log::debug!("{e}"),
            }
        }
        if sh.cancel.load(Ordering::Relaxed) {
            sh.finish(End::Failed(FetchErrorKind::Cancelled));
        }
        if sh.last_progress.lock().elapsed() >= f.policy().retry_for
            && let Some(e) = sh.last_error.lock().take()
        {
            sh.finish(End::Failed(e));
        }
        if self.window.elapsed() >= ADAPT_EVERY {
            self.adapt(sh, received, max);
        }
    }

    /// Doubles the connection count while the rate grows by a tenth, unless
    /// the origin throttled lately.
    fn adapt(&mut self, sh: &Shared<'_>, received: u64, max: usize) {
        let rate = (received - self.window_bytes) as f64 / self.window.elapsed().as_secs_f64();
        (self.window, self.window_bytes) = (Instant::now(), received);
        let quiet = sh
            .throttled_at
            .lock()
            .is_none_or(|t| t.elapsed() >= THROTTLE_QUIET);
        let t = sh.target.load(Ordering::Relaxed);
        if quiet && t < max && rate > self.level_rate * 1.1 {
            self.level_rate = rate;
            sh.target.store((t * 2).min(max), Ordering::Relaxed);
        }
    }
}

/// What a parallel download left, read off its shared state once every
/// thread ended.
struct Ended {
    received: u64,
    failures: u32,
    complete: bool,
    /// Pieces written beyond the hashed prefix.
    pieces: Vec<(u64, u64)>,
    end: Option<End>,
}

impl Shared<'_> {
    fn ended(self, hashed: u64) -> Ended {
        let r = self.ranges.lock();
        Ended {
            received: self.received.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            complete: r.complete(),
            pieces: r.written_beyond(hashed),
            end: self.end.lock().take(),
        }
    }
}

/// Keeps in the partial what the next run may resume from, and says how
/// the download ended.
fn settle(
    ended: Ended,
    d: &mut Download<'_>,
    hasher: Hasher,
    hashed: u64,
) -> Result<Parallel, (FetchErrorKind, u32)> {
    let Ended {
        received,
        failures,
        complete,
        pieces,
        end,
    } = ended;
    let kept = match &end {
        Some(End::Fallback { changed: true, .. }) => d.partial.hashed_to(0, Hasher::new()),
        _ => d.partial.keep_written(hashed, hasher, pieces),
    };
    kept.map_err(|e| (FetchErrorKind::Store(e), failures))?;
    match end {
        None if complete && hashed == d.partial.size() => Ok(Parallel::Done { received }),
        None if d.cancel.load(Ordering::Relaxed) => Err((FetchErrorKind::Cancelled, failures)),
        None => Err((
            FetchErrorKind::Network(format!(
                "the download stopped at byte {hashed} of {}",
                d.partial.size()
            )),
            failures,
        )),
        Some(End::Failed(kind)) => Err((kind, failures)),
        Some(End::Fallback { why, .. }) => Ok(Parallel::Fallback {
            why,
            received,
            whole: None,
        }),
    }
}

/// Hashes the partial from its prefix to its end, every byte of which an
/// earlier run recorded as written; the final digest still decides.
fn hash_kept(d: &mut Download<'_>) -> Result<Parallel, crate::store::StoreError> {
    let (start, size) = (d.partial.offset(), d.partial.size());
    let mut hasher = d.partial.take_hasher();
    let file = d.partial.reader()?;
    let io = |e| crate::store::StoreError::io("partial file", e);
    let mut buf = vec![0u8; HASH_BUF];
    let mut at = start;
    while at < size {
        let want = buf.len().min((size - at) as usize);
        match file.read_at(&mut buf[..want], at).map_err(io)? {
            0 => break,
            k => {
                hasher.update(&buf[..k]);
                at += k as u64;
            }
        }
    }
    // A file shorter than its record keeps what was really there.
    d.partial.hashed_to(at, hasher)?;
    if at < size {
        return Ok(Parallel::Fallback {
            why: format!("the partial file ends at byte {at}, before its recorded pieces"),
            received: 0,
            whole: None,
        });
    }
    Ok(Parallel::Done { received: 0 })
}

/// Whether the probe's answer lets the rest be fetched in ranges.
fn usable_probe(resp: &Fetched, first: Range, size: u64) -> Result<(), String> {
    if resp.status != 206 {
        return Err(format!(
            "the origin answered a range request with HTTP {}",
            resp.status
        ));
    }
    match resp.content_range_span() {
        Some((s, e, Some(total))) if s == first.start && e > s && total == size => Ok(()),
        other => Err(format!(
            "the origin answered with an unusable Content-Range {other:?}"
        )),
    }
}

/// Checks a range's answer: a piece of the same object, starting where
/// asked.
fn check_range(resp: &Fetched, r: Range, sh: &Shared<'_>) -> Result<(), RangeError> {
    match resp.status {
        206 => {}
        200 | 416 => {
            return Err(RangeError::Changed(format!(
                "the origin answered a range with HTTP {} (the object changed, or ranges \
                 stopped working)",
                resp.status
            )));
        }
        code => {
            return Err(RangeError::Kind(FetchErrorKind::Status {
                code,
                retry_after: resp.retry_after(),
            }));
        }
    }
    if let Some(v) = resp.validator()
        && v != sh.validator
    {
        return Err(RangeError::Changed(format!(
            "the object changed during the download (validator {} became {v})",
            sh.validator
        )));
    }
    match resp.content_range_span() {
        Some((s, e, total)) if s == r.start && e > s && total.is_none_or(|t| t == sh.size) => {
            Ok(())
        }
        Some((_, _, Some(total))) if total != sh.size => {
            Err(RangeError::Kind(FetchErrorKind::LengthMismatch {
                expected: sh.size,
                announced: total,
            }))
        }
        other => Err(RangeError::Changed(format!(
            "the origin answered the range {}-{} with Content-Range {other:?}",
            r.start,
            r.end - 1
        ))),
    }
}

/// The hashing thread: hashes the written prefix from `hashed` on as it
/// grows, reading it back from the file, until every worker has ended.
/// Returns the hash and how far it reaches.
fn hash_prefix(sh: &Shared<'_>, file: File, mut hasher: Hasher, mut hashed: u64) -> (Hasher, u64) {
    let mut buf = vec![0u8; HASH_BUF];
    loop {
        let frontier = {
            let mut r = sh.ranges.lock();
            loop {
                let f = r.frontier();
                if f > hashed || sh.workers_done.load(Ordering::SeqCst) {
                    break f;
                }
                sh.wake.wait_for(&mut r, TICK);
            }
        };
        if frontier <= hashed {
            return (hasher, hashed);
        }
        while hashed < frontier {
            let want = buf.len().min((frontier - hashed) as usize);
            match file.read_at(&mut buf[..want], hashed) {
                Ok(0) => {
                    sh.finish(End::Failed(FetchErrorKind::Network(format!(
                        "the partial file ends at byte {hashed}, before the bytes written to it"
                    ))));
                    return (hasher, hashed);
                }
                Ok(k) => {
                    hasher.update(&buf[..k]);
                    hashed += k as u64;
                    sh.hashed.store(hashed, Ordering::Relaxed);
                    sh.wake.notify_all();
                }
                Err(e) => {
                    sh.finish(End::Failed(FetchErrorKind::Store(
                        crate::store::StoreError::io("partial file", e),
                    )));
                    return (hasher, hashed);
                }
            }
        }
    }
}
