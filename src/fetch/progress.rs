//! Progress events of a fetch, sent on a channel so a progress bar, the
//! mount's extended attributes and `modelfs status` can all follow along.
//! Sends never block the download: a full or closed channel drops events.
//! Every network read produces an event; consumers coalesce them. (An
//! earlier version sent at most one per 100 ms and so, when the server then
//! stalled, showed a stale count for as long as the stall lasted.)

use std::time::{Duration, Instant};

use std::sync::Arc;

use crossbeam_channel::Sender;
use parking_lot::Mutex;

/// Where progress events go.
#[derive(Clone)]
pub enum ProgressSink {
    /// Every event on a channel (the CLI's progress bar).
    Channel(Sender<Progress>),
    /// The latest event, overwritten in place: readers always see the
    /// newest count, and no thread is woken per network read.
    Latest(Arc<Mutex<Option<Progress>>>),
    /// The latest event, and the retry note ("retrying (3/8): connection
    /// refused") while the fetch waits to try again, `None` otherwise.
    Watched {
        latest: Arc<Mutex<Option<Progress>>>,
        note: Arc<Mutex<Option<String>>>,
    },
}

impl From<Sender<Progress>> for ProgressSink {
    fn from(tx: Sender<Progress>) -> Self {
        Self::Channel(tx)
    }
}

/// What a fetch is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Another process holds `locks/<name>.lock`; we wait for it.
    WaitingForLock,
    /// Re-hashing the part of a partial file kept for resuming.
    Rehashing,
    /// Hashing a present blob again: its file changed since it was
    /// verified (the mount, before it answers an open).
    Rechecking,
    Downloading,
    /// A transient failure; the next attempt starts after a pause.
    Retrying,
    /// The bytes are verified; syncing them and moving them into place.
    Publishing,
}

/// One progress report.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub phase: Phase,
    /// Bytes of the blob on disk so far.
    pub done: u64,
    pub total: u64,
    /// Bytes per second over the last few seconds.
    pub rate: f64,
    /// Bytes this fetch took over the network so far.
    pub transferred: u64,
    /// Connections the download uses now (0 outside downloading).
    pub connections: u16,
    /// Which of the job's sources ([`super::FetchJob::sources`], in
    /// order) the fetch uses now.
    pub source: u8,
}

/// Sends throttled progress events and keeps a moving rate.
pub struct Reporter {
    tx: Option<ProgressSink>,
    window_start: Instant,
    window_bytes: u64,
    rate: f64,
    /// Whether a retry note is set, so the report of every network read
    /// does not take the note's lock to clear it.
    noted: bool,
    connections: u16,
    source: u8,
}

impl Reporter {
    pub fn new(tx: Option<ProgressSink>) -> Self {
        Self {
            tx,
            window_start: Instant::now(),
            window_bytes: 0,
            rate: 0.0,
            noted: false,
            connections: 1,
            source: 0,
        }
    }

    /// Records `n` new bytes from the network.
    pub fn add(&mut self, n: u64) {
        self.add_at(n, Instant::now());
    }

    /// [`Reporter::add`] with the clock already read (the stream reads it
    /// once per network read for this and its rate floor).
    pub fn add_at(&mut self, n: u64, now: Instant) {
        self.window_bytes += n;
        let el = now.saturating_duration_since(self.window_start);
        if el >= Duration::from_secs(1) {
            let recent = self.window_bytes as f64 / el.as_secs_f64();
            self.rate = if self.rate == 0.0 {
                recent
            } else {
                0.5 * self.rate + 0.5 * recent
            };
            self.window_start = now;
            self.window_bytes = 0;
        }
    }

    /// How many connections the download uses from now on.
    pub fn set_connections(&mut self, n: usize) {
        self.connections = n.clamp(1, u16::MAX as usize) as u16;
    }

    /// The fetch goes on from the job's source number `i`.
    pub fn set_source(&mut self, i: usize) {
        self.source = i.min(u8::MAX as usize) as u8;
    }

    /// Sends an event (never blocks; drops it if the channel is full).
    pub fn report(&mut self, phase: Phase, done: u64, total: u64, transferred: u64) {
        let p = Progress {
            phase,
            done,
            total,
            rate: self.rate,
            transferred,
            connections: if phase == Phase::Downloading {
                self.connections
            } else {
                0
            },
            source: self.source,
        };
        match &self.tx {
            Some(ProgressSink::Channel(tx)) => {
                let _ = tx.try_send(p);
            }
            Some(ProgressSink::Latest(cell)) => *cell.lock() = Some(p),
            Some(ProgressSink::Watched { latest, note }) => {
                // A new attempt has bytes flowing again: the note is history.
                if self.noted && phase != Phase::Retrying {
                    *note.lock() = None;
                    self.noted = false;
                }
                *latest.lock() = Some(p);
            }
            None => {}
        }
    }

    /// Sets (or clears) the retry note of a watched sink.
    pub fn note(&mut self, text: Option<String>) {
        if let Some(ProgressSink::Watched { note, .. }) = &self.tx {
            self.noted = text.is_some();
            *note.lock() = text;
        }
    }
}
