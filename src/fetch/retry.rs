//! When to try again: capped exponential backoff, honouring `Retry-After`,
//! within three budgets.
//!
//! A fetch gives up on a source after `max_attempts` attempts in a row
//! without progress, or once it has retried for `retry_for` without
//! progress (a dead origin fails a waiting open in about that long; one
//! retry is always made, so a single attempt that alone outlasted it, a
//! stall or a connect timeout, is tried once more), or
//! after `max_total_attempts` attempts in all, progress or not. Progress
//! means bytes beyond the furthest offset the fetch ever reached: a
//! download that restarts from 0 and drops at the same place again makes
//! none (counting "the partial grew" let a 206 without `Content-Range`
//! plus a drop at a fixed offset alternate 1, 2, 1, 2 for hundreds of
//! requests).

use std::time::Duration;

/// The retry schedule of one fetch.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// The longest `Retry-After` honoured; longer asks are capped.
    pub max_retry_after: Duration,
    /// How long a fetch keeps retrying without progress before it fails
    /// (`-o retry_for=SECS`, `pull --retry-for SECS`).
    pub retry_for: Duration,
    /// Attempts in all for one source, with or without progress.
    pub max_total_attempts: u32,
}

/// The default of [`RetryPolicy::retry_for`].
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(15);

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
            retry_for: DEFAULT_RETRY_FOR,
            max_total_attempts: 100,
        }
    }
}

impl RetryPolicy {
    /// The pause before attempt `attempt + 1`, after `attempt` failures
    /// (1-based): the server's `Retry-After` when it gave one, else
    /// `initial * 2^(attempt-1)` capped at `max_backoff`.
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(self.max_retry_after);
        }
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_until_the_cap() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1, None), Duration::from_millis(500));
        assert_eq!(p.backoff(2, None), Duration::from_secs(1));
        assert_eq!(p.backoff(4, None), Duration::from_secs(4));
        assert_eq!(p.backoff(10, None), Duration::from_secs(30));
        assert_eq!(p.backoff(200, None), Duration::from_secs(30));
    }

    #[test]
    fn retry_after_is_honoured_up_to_its_cap() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(9999))),
            Duration::from_secs(120)
        );
    }
}
