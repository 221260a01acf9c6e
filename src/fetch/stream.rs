//! The hashing pipe: one HTTP body streamed into a partial file.
//!
//! SHA-256 runs on a second thread while the calling thread reads the
//! socket (TLS decryption) and writes the partial: on two cores, one thread
//! doing all three is the bottleneck of the whole download. The hasher only
//! gets bytes that reached the file, in order, so the digest still covers
//! exactly the file's bytes.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::error::FetchErrorKind;
use super::http::Fetched;
use super::progress::{Phase, Reporter};
use crate::digest::Hasher;
use crate::store::StoreError;
use crate::store::partial::Partial;

/// One handover to the hashing thread (small enough to stay in cache), and
/// how many may wait for it.
const PIPE_CHUNK: usize = 64 << 10;
const PIPE_DEPTH: usize = 8;

/// Start write-back every this many bytes when the caller waits for the
/// blob to be published (`modelfs pull`), so the final `sync_all` before
/// the rename has little left to do and dirty pages do not pile up.
pub(super) const WRITEBACK_EVERY: u64 = 64 << 20;

/// How one body is streamed.
pub(super) struct Stream<'a> {
    pub reporter: &'a mut Reporter,
    pub cancel: &'a AtomicBool,
    /// Bytes received in all attempts so far (grows as bytes arrive).
    pub transferred: &'a mut u64,
    /// Start write-back every this many bytes (`u64::MAX`: never).
    pub writeback_every: u64,
    /// The attempt fails below `min_rate` bytes/s over a whole `window`.
    pub window: Duration,
    pub min_rate: u64,
}

impl Stream<'_> {
    /// Streams `resp` into `p` until the body ends, the partial is full,
    /// or an error; the partial's hash state covers its bytes afterwards
    /// either way. Returns how long hashing ran on after the last byte,
    /// and the result.
    pub fn run(
        &mut self,
        resp: &mut Fetched,
        p: &mut Partial,
    ) -> Result<(Duration, Result<(), FetchErrorKind>), FetchErrorKind> {
        let (full_tx, full_rx) = crossbeam_channel::bounded::<(Vec<u8>, usize)>(PIPE_DEPTH);
        let (free_tx, free_rx) = crossbeam_channel::bounded::<Vec<u8>>(PIPE_DEPTH + 2);
        for _ in 0..PIPE_DEPTH + 2 {
            let _ = free_tx.send(vec![0u8; PIPE_CHUNK]);
        }
        // The hasher moves to the thread only once it runs, so a failed
        // spawn leaves the partial's hash state untouched.
        let (start_tx, start_rx) = crossbeam_channel::bounded::<Hasher>(1);
        let fd = p.file().as_raw_fd();
        let writeback_every = self.writeback_every;
        std::thread::scope(|scope| {
            let hashing = std::thread::Builder::new()
                .name("hash".into())
                .spawn_scoped(scope, move || {
                    hash_chunks(start_rx, full_rx, free_tx, fd, writeback_every)
                })
                .map_err(|e| {
                    FetchErrorKind::Network(format!("cannot start the hashing thread: {e}"))
                })?;
            let _ = start_tx.send(p.take_hasher());
            let result = self.read_body(resp, p, &free_rx, &full_tx);
            drop(full_tx);
            let body_ended = Instant::now();
            p.set_hasher(
                hashing
                    .join()
                    .expect("the hashing thread panicked")
                    .expect("the hashing thread got the hasher"),
            );
            Ok((body_ended.elapsed(), result))
        })
    }

    /// The reading side of the pipe.
    fn read_body(
        &mut self,
        resp: &mut Fetched,
        p: &mut Partial,
        free_rx: &Receiver<Vec<u8>>,
        full_tx: &Sender<(Vec<u8>, usize)>,
    ) -> Result<(), FetchErrorKind> {
        let mut rate = RateFloor::new(self.window, self.min_rate);
        loop {
            // Fill one chunk, then write it and hand it to the hasher: one
            // write(2) per TLS record (16 KiB) cost a third more CPU.
            let mut buf = free_rx.recv().unwrap_or_else(|_| vec![0u8; PIPE_CHUNK]);
            let room = PIPE_CHUNK.min((p.size() - p.offset()) as usize + 1);
            let (n, mut step) = {
                let (reporter, transferred) = (&mut *self.reporter, &mut *self.transferred);
                let (from, size) = (p.offset(), p.size());
                let mut got = 0u64;
                // Progress after every read, counting bytes received: a
                // stall never hides bytes that arrived before it.
                fill(resp, &mut buf[..room], &mut rate, |k, now| {
                    got += k;
                    *transferred += k;
                    reporter.add_at(k, now);
                    let done = (from + got).min(size);
                    reporter.report(Phase::Downloading, done, size, *transferred);
                })
            };
            // The server sent more than the blob's size.
            let keep = n.min((p.size() - p.offset()) as usize);
            if keep < n {
                step = Err(FetchErrorKind::TooLong { expected: p.size() });
            }
            if keep > 0 {
                append(p, &buf[..keep])?;
                let _ = full_tx.send((buf, keep));
            }
            match step {
                Ok(Filled::Full) if self.cancel.load(Ordering::Relaxed) => {
                    return Err(FetchErrorKind::Cancelled);
                }
                Ok(Filled::Full) => {}
                Ok(Filled::Ended) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

/// The hashing thread: hashes chunks in order and hands their buffers back.
fn hash_chunks(
    start: Receiver<Hasher>,
    full: Receiver<(Vec<u8>, usize)>,
    free: Sender<Vec<u8>>,
    fd: RawFd,
    writeback_every: u64,
) -> Option<Hasher> {
    let mut hasher = start.recv().ok()?;
    let mut unsynced = 0u64;
    for (buf, len) in full {
        hasher.update(&buf[..len]);
        let _ = free.send(buf);
        // Start write-back here, not on the thread that reads the socket:
        // submitting it costs CPU.
        unsynced += len as u64;
        if unsynced >= writeback_every {
            unsynced = 0;
            // The partial keeps the fd open; failure only loses a hint.
            crate::sys::start_writeback(fd);
        }
    }
    Some(hasher)
}

/// Appends to the partial; a full disk is told as such, with the free space.
fn append(p: &mut Partial, bytes: &[u8]) -> Result<(), FetchErrorKind> {
    p.append_unhashed(bytes).map_err(|e| no_space(p, e))
}

/// A write error of the partial as the fetch tells it: a full disk with
/// the space needed and free, anything else as the store's error.
pub(super) fn no_space(p: &Partial, e: StoreError) -> FetchErrorKind {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        FetchErrorKind::NoSpace {
            needed: p.size() - p.offset(),
            available: p.free_bytes().unwrap_or(0),
        }
    } else {
        FetchErrorKind::Store(e)
    }
}

/// How [`fill`] ended, when no read failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Filled {
    Full,
    /// The body ended (the buffer may hold bytes before its end).
    Ended,
}

/// Reads into `buf` until it is full, the body ends or a read fails;
/// `on_read` sees each read's byte count and time. Every read counts
/// towards the rate floor, so a trickle fails within its window even when
/// it never fills a buffer.
pub(super) fn fill(
    resp: &mut Fetched,
    buf: &mut [u8],
    rate: &mut RateFloor,
    mut on_read: impl FnMut(u64, Instant),
) -> (usize, Result<Filled, FetchErrorKind>) {
    let mut n = 0;
    while n < buf.len() {
        match resp.read(&mut buf[n..]) {
            Ok(0) => return (n, Ok(Filled::Ended)),
            Ok(k) => {
                n += k;
                let now = Instant::now();
                on_read(k as u64, now);
                if let Err(e) = rate.add(k as u64, now) {
                    return (n, Err(e));
                }
            }
            Err(e) => return (n, Err(e)),
        }
    }
    (n, Ok(Filled::Full))
}

/// Fails an attempt whose source sends fewer than `min_rate` bytes per
/// second over a whole `window` (the stall timeout): a trickle never
/// trips the per-read timeout, and would hold its fetch slot for hours.
pub(super) struct RateFloor {
    window: Duration,
    min_rate: u64,
    started: Instant,
    bytes: u64,
}

impl RateFloor {
    pub(super) fn new(window: Duration, min_rate: u64) -> Self {
        Self {
            window,
            min_rate,
            started: Instant::now(),
            bytes: 0,
        }
    }

    /// Counts `n` bytes that arrived at `now`.
    pub(super) fn add(&mut self, n: u64, now: Instant) -> Result<(), FetchErrorKind> {
        self.bytes += n;
        let elapsed = now.saturating_duration_since(self.started);
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
        self.started = now;
        self.bytes = 0;
        Ok(())
    }
}
