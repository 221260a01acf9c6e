//! Phase 5 of the pipeline: HTTP attempts with retries until a partial is
//! complete (see [`RetryPolicy`] for the budgets). Each attempt is one
//! request from the partial's offset, checked (status, `Content-Range`,
//! `Content-Length`) before its body is streamed into the partial by
//! [`super::stream`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::error::FetchErrorKind;
use super::http::Fetched;
use super::parallel::{PARALLEL_MIN, Parallel};
use super::pipeline::Fetcher;
use super::progress::{Phase, Reporter};
use super::retry::RetryPolicy;
use super::stream::{Stream, WRITEBACK_EVERY};
use crate::store::partial::Partial;
use crate::text::redact_url;

/// A download into one partial.
pub(super) struct Download<'a> {
    pub partial: Partial,
    /// When the download from this source began (for the log).
    pub started: Instant,
    /// How long hashing ran on after the last byte of the last attempt.
    pub hash_tail: Duration,
    /// Start write-back during the download (see [`WRITEBACK_EVERY`]).
    pub start_writeback: bool,
    pub reporter: &'a mut Reporter,
    pub cancel: &'a AtomicBool,
}

impl Fetcher {
    /// Attempts with backoff until the partial is complete, within the
    /// policy's budgets (see [`RetryPolicy`]): attempts in a row without
    /// progress, time without progress, attempts in all. Progress is a byte
    /// beyond the furthest offset reached so far, from an attempt that was
    /// not too slow. A connection the server closed before answering is
    /// retried at once, once, without spending an attempt. Returns the
    /// bytes transferred, or the last error and the number of attempts.
    pub(super) fn download(
        &self,
        url: &str,
        d: &mut Download<'_>,
    ) -> Result<u64, (FetchErrorKind, u32)> {
        let policy: &RetryPolicy = self.policy();
        let (mut transferred, mut whole) = match self.in_ranges(url, d)? {
            Parallel::Done { received } => return Ok(received),
            Parallel::Fallback {
                received, whole, ..
            } => (received, whole),
            Parallel::NotTried => (0, None),
        };
        let mut attempt = 0u32;
        let mut fruitless = 0u32;
        let mut furthest = d.partial.offset();
        let mut last_progress = Instant::now();
        let mut free_retry_taken = false;
        loop {
            attempt += 1;
            let before = d.partial.offset();
            let err = match self.attempt(url, d, &mut transferred, whole.take()) {
                Ok(()) => return Ok(transferred),
                Err(FetchErrorKind::Stalled(_)) => {
                    FetchErrorKind::Stalled(self.http().config().stall_timeout)
                }
                Err(e) => e,
            };
            let offset = d.partial.offset();
            if matches!(err, FetchErrorKind::ClosedBeforeAnswer(_))
                && offset == before
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
            if offset > furthest && !slow {
                fruitless = 1;
                last_progress = Instant::now();
            } else {
                fruitless += 1;
            }
            furthest = furthest.max(offset);
            let left = policy.retry_for.saturating_sub(last_progress.elapsed());
            if !err.is_transient()
                || fruitless >= policy.max_attempts
                || attempt >= policy.max_total_attempts
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
            let pause = policy.backoff(fruitless, retry_after).min(left);
            log::warn!(
                "{}: attempt {attempt} failed at byte {offset} ({err}); retrying in {:.1} s",
                redact_url(url),
                pause.as_secs_f64()
            );
            d.reporter.note(Some(format!(
                "retrying ({fruitless}/{}): {}",
                policy.max_attempts,
                err.brief()
            )));
            let size = d.partial.size();
            d.reporter
                .report(Phase::Retrying, offset, size, transferred);
            if sleep_unless_cancelled(pause, d.cancel) {
                return Err((FetchErrorKind::Cancelled, attempt));
            }
        }
    }

    /// The download in ranges over several connections when the rest is
    /// large enough and more than one is allowed (see [`super::parallel`]);
    /// otherwise, or when the origin cannot serve ranges, a fallback that
    /// has prepared the partial for one stream.
    fn in_ranges(
        &self,
        url: &str,
        d: &mut Download<'_>,
    ) -> Result<Parallel, (FetchErrorKind, u32)> {
        let outcome =
            if self.connections() > 1 && d.partial.size() - d.partial.offset() >= PARALLEL_MIN {
                self.download_parallel(url, d)?
            } else {
                Parallel::NotTried
            };
        if let Parallel::Fallback { why, .. } = &outcome {
            log::info!(
                "{}: {why}; downloading over one connection",
                redact_url(url)
            );
        }
        if !matches!(outcome, Parallel::Done { .. }) {
            // One stream appends from the prefix: pieces an earlier
            // parallel run kept beyond it go.
            d.partial
                .drop_pieces()
                .map_err(|e| (FetchErrorKind::Store(e), 0))?;
        }
        Ok(outcome)
    }

    /// One HTTP request, appending to the partial; `answer`: one already
    /// asked (the whole object a range probe got back).
    fn attempt(
        &self,
        url: &str,
        d: &mut Download<'_>,
        transferred: &mut u64,
        answer: Option<Fetched>,
    ) -> Result<(), FetchErrorKind> {
        let p = &mut d.partial;
        if p.offset() == p.size() {
            return Ok(()); // a complete partial from an earlier run
        }
        let mut resp = match answer {
            Some(a) => a,
            None => self.http().get(url, p.offset())?,
        };
        check_answer(url, &resp, p)?;
        let config = self.http().config();
        let mut stream = Stream {
            reporter: d.reporter,
            cancel: d.cancel,
            transferred,
            writeback_every: if d.start_writeback {
                WRITEBACK_EVERY
            } else {
                u64::MAX
            },
            window: config.stall_timeout,
            min_rate: config.min_rate,
        };
        let (hash_tail, result) = stream.run(&mut resp, p)?;
        d.hash_tail = hash_tail;
        result?;
        if p.offset() < p.size() {
            return Err(FetchErrorKind::Network(format!(
                "connection closed after byte {} of {}",
                p.offset(),
                p.size()
            )));
        }
        Ok(())
    }
}

/// Checks an answer's status and announced range and length against the
/// partial, which is reset when the server starts over from byte 0.
fn check_answer(url: &str, resp: &Fetched, p: &mut Partial) -> Result<(), FetchErrorKind> {
    match resp.status {
        206 => match resp.content_range() {
            Some((start, total)) if start == p.offset() && total.is_none_or(|t| t == p.size()) => {}
            Some((start, Some(total))) if start == p.offset() => {
                return Err(FetchErrorKind::LengthMismatch {
                    expected: p.size(),
                    announced: total,
                });
            }
            other => {
                log::warn!(
                    "{}: unusable Content-Range {other:?}; starting over",
                    redact_url(url)
                );
                p.reset().map_err(FetchErrorKind::Store)?;
                return Err(FetchErrorKind::Network(
                    "server answered a Range request with the wrong range".into(),
                ));
            }
        },
        200 => {
            if p.offset() > 0 {
                log::info!(
                    "{}: server ignored Range; starting over from byte 0",
                    redact_url(url)
                );
                p.reset().map_err(FetchErrorKind::Store)?;
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
        && len != p.size() - p.offset()
    {
        return Err(FetchErrorKind::LengthMismatch {
            expected: p.size(),
            announced: p.offset() + len,
        });
    }
    Ok(())
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
