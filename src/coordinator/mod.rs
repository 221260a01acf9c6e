//! One fetch per blob, and the opens that wait for it.
//!
//! The mount hands every open to [`Coordinator::open`] (see [`open`])
//! together with a completion callback: a present, verified blob is
//! answered at once; an open of an absent blob waits, and the mount returns
//! to the kernel at once.
//! The coordinator runs at most one fetch per digest in this process (other
//! processes are kept out by the store's producer lock, which the fetch
//! waits for), queues the callbacks of every open that joins it, and calls
//! them all as soon as the downloaded bytes match the digest, with a
//! read-only handle on the verified file, while the fetch goes on to make
//! it durable and publish it; an open that joins in that window is answered
//! at once with the same file. The kernel's interrupt of an open request
//! ([`Coordinator::interrupt`]) and a watchdog both look at the waiter's
//! pending signals (see [`interrupt`]) and end the wait of a task that was
//! told to stop with [`WaitError::Interrupted`] (a task the daemon cannot
//! see, at the kernel's word alone); the fetch carries on for the others
//! and, if nobody waits any more, finishes anyway so the next open is fast.
//!
//! A fetch may use every source of its blob: every manifest that pins the
//! digest when its job is created (the first open's `pinned_by`), the
//! first opener's first (see [`FetchJob::sources`]). A fetch that published
//! its blob says so through [`Coordinator::take_published`], which the
//! mount asks; nothing here calls up into the mount.
//!
//! A present blob whose file no longer has the stamps it was verified with
//! (`Coordinator::verified_now`, which keeps the records in memory once
//! read) is hashed again the same way: one job per digest, the opens
//! parked until it ends. Its bytes intact, they get the hashed file;
//! changed, the blob is quarantined and fetched again when the manifest
//! has a URL, else every waiter fails with the reason.
//!
//! A fetch whose bytes hashed to another digest is not tried again on
//! every open: for [`DEFAULT_MISMATCH_BACKOFF`] (`-o mismatch_backoff=SECS`)
//! opens of that blob fail at once with the same error, unless the opened
//! manifest is not the one whose fetch failed (it was edited, or another
//! name pins the same blob) or the blob arrived (`modelfs pull`, which
//! ignores the back-off, fetched it).
//!
//! Jobs queue for a fixed set of workers ([`pool`]): `max_fetches` run at
//! once, and a blob of at most [`SMALL_BLOB_BYTES`] may also take one
//! worker beyond those, so slow downloads of large blobs (a trickling
//! origin holds its worker until the minimum rate fails it) never keep a
//! small model waiting, and thousands of pending opens are thousands of
//! queued jobs, not threads.
//!
//! Before a fetch downloads its first byte, it makes room for it under
//! the store's limits ([`quota`]): it evicts least recently opened blobs
//! that are neither pinned nor open anywhere, or fails with
//! `FetchErrorKind::NoRoom` (ENOSPC) and nothing evicted.
//!
//! Invariants: every callback is called exactly once; no lock of ours is
//! held while a callback runs or while the network or disk is used; a
//! failure is logged once here, not by each waiter.

pub mod interrupt;
pub mod open;
pub mod pool;
pub mod quota;
pub mod source;

pub use open::{Answer, Blob, Found, Published, Want};
pub use source::Source;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::File;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::digest::Sha256;
use crate::fetch::{FetchError, FetchErrorKind, FetchJob, Fetcher, Phase, Progress, ProgressSink};
use crate::store::verified::{Recheck, Record, Recorded};
use crate::store::{BlobState, Manifest, Store, StoreError, lock};
use crate::text::redact_url;

/// How long opens of a blob fail at once after its bytes did not match.
pub const DEFAULT_MISMATCH_BACKOFF: Duration = Duration::from_secs(600);
/// Blobs up to this size may use the worker kept free of large downloads.
pub const SMALL_BLOB_BYTES: u64 = 64 << 20;

/// How often the watchdog looks at waiting tasks.
pub const WATCHDOG_PERIOD: Duration = Duration::from_millis(200);

/// Why a wait ended without the blob.
#[derive(Debug, Clone)]
pub enum WaitError {
    /// The fetch failed; every waiter gets the same error.
    Failed(Arc<FetchError>),
    /// The waiting task received a stop signal or went away.
    Interrupted,
    /// The mount is shutting down.
    ShuttingDown,
    /// The fetch thread panicked (a bug); the message says where.
    Internal(String),
    /// An `O_NONBLOCK` open: the fetch (or the hash) was started, nobody
    /// waits for it.
    WouldBlock,
    /// The blob another process published while the open waited changed
    /// since it was verified: the open must start again (and that open
    /// hashes it). `file_id` is the file at the blob's path.
    Changed { file_id: (u64, u64) },
    /// The blob another process published cannot be opened.
    Store(Arc<StoreError>),
    /// Local I/O on the verified file failed.
    Io(Arc<std::io::Error>),
}

/// What a job's waiter gets (the coordinator turns it into a [`Blob`]).
#[derive(Debug, Clone)]
enum Ready {
    /// The verified bytes, read-only, possibly before they are published
    /// at the blob's path: read this file, not the path.
    Verified(Arc<File>),
    /// The blob is at its path (it was there already, or another process
    /// produced it): open it there.
    Published,
}

/// Called once when a wait ends.
type Done = Box<dyn FnOnce(Result<Ready, WaitError>) + Send>;

/// What a blob is doing, for extended attributes and status.
#[derive(Debug, Clone, Default)]
pub struct BlobActivity {
    /// A fetch is running (or queued) in this process.
    pub fetching: bool,
    pub progress: Option<Progress>,
    pub waiters: usize,
    /// The bytes are verified and opens are answered at once, while the
    /// fetch makes them durable and publishes them.
    pub verified: bool,
    /// The last failure, until a fetch succeeds.
    pub last_error: Option<String>,
    /// Where the running fetch takes the bytes from, or where the last
    /// fetch in this process got them (URL, query dropped).
    pub source: Option<String>,
}

/// Who waits: the task (watched in `/proc`) and the kernel's id of its
/// open request (named by FUSE_INTERRUPT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The calling task as the daemon's pid namespace sees it; 0 when it
    /// cannot see it (a caller outside a container the daemon runs in).
    pub tid: u32,
    /// The FUSE request's `unique`.
    pub request: u64,
}

/// What [`Coordinator::interrupt`] did with an interrupted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupted {
    /// The wait ended with [`WaitError::Interrupted`].
    Ended,
    /// The task is visible and no stop signal is pending (a resized
    /// terminal, a child that exited): it keeps waiting, and the watchdog
    /// keeps watching it for a stop signal that comes later.
    KeptWaiting,
    /// No open waits under this request: it was answered already, or it
    /// has not reached the coordinator yet.
    Unknown,
}

struct Waiter {
    id: u64,
    caller: Caller,
    done: Done,
}

/// What a job does before the blob can be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobKind {
    /// The blob is absent: fetch it.
    Fetch,
    /// The blob file's stamps differ from its record: hash it again; if
    /// its bytes changed, quarantine it and fetch it (when there is a URL).
    Recheck,
}

struct Job {
    waiters: Vec<Waiter>,
    /// Set once the bytes are verified; later waiters get it at once.
    verified: Option<Arc<File>>,
    shared: Shared,
}

/// What a job and the worker running it share.
#[derive(Clone, Default)]
struct Shared {
    cancel: Arc<AtomicBool>,
    progress: Arc<Mutex<Option<Progress>>>,
    /// "retrying (3/8): connection refused" while the fetch waits to retry.
    note: Arc<Mutex<Option<String>>>,
    /// The fetch's sources in order (URLs, query dropped), which
    /// [`Progress::source`] indexes.
    sources: Arc<Mutex<Vec<String>>>,
}

/// A queued job, as a worker runs it.
struct Queued {
    manifest: Manifest,
    /// The other manifests that pinned the digest when the job was created.
    others: Vec<Manifest>,
    kind: JobKind,
    shared: Shared,
}

/// A fetch that ended in a digest mismatch, and the manifest it was for.
struct Mismatch {
    at: Instant,
    manifest: Manifest,
    error: Arc<FetchError>,
}

/// Runs fetches for the mount; see the module doc.
pub struct Coordinator {
    store: Store,
    /// Where verified bytes come from (see [`source`]).
    source: Arc<dyn Source>,
    jobs: Mutex<HashMap<Sha256, Job>>,
    last_errors: Mutex<HashMap<Sha256, String>>,
    /// Where each blob fetched by this process came from.
    served_by: Mutex<HashMap<Sha256, String>>,
    mismatches: Mutex<HashMap<Sha256, Mismatch>>,
    mismatch_backoff: Mutex<Duration>,
    shutting_down: AtomicBool,
    next_waiter: AtomicU64,
    /// The workers and their queue.
    workers: pool::Pool<Queued>,
    /// What fetches published since the mount last asked (see
    /// [`Coordinator::take_published`]).
    published: Mutex<Vec<Published>>,
    /// The verification records of the blobs opened so far, as read from
    /// or written to the store (see [`Coordinator::verified_now`]).
    records: Mutex<HashMap<Sha256, Record>>,
    /// Open locks, last opens and room for downloads (see [`quota`]).
    quota: quota::Quota,
}

impl Coordinator {
    /// Creates the coordinator and its watchdog thread, which ends when
    /// the coordinator is dropped or shut down.
    pub fn new(store: Store, fetcher: Fetcher, max_fetches: usize) -> Arc<Self> {
        Self::with_source(store, Arc::new(fetcher), max_fetches)
    }

    /// [`Coordinator::new`] with any [`Source`] (tests use a scripted one).
    pub fn with_source(store: Store, source: Arc<dyn Source>, max_fetches: usize) -> Arc<Self> {
        let c = Arc::new_cyclic(|me: &Weak<Self>| {
            let me = me.clone();
            let run = move |q: Queued| {
                if let Some(c) = me.upgrade() {
                    c.run_job(q);
                }
            };
            Self {
                store,
                source,
                jobs: Mutex::new(HashMap::new()),
                last_errors: Mutex::new(HashMap::new()),
                served_by: Mutex::new(HashMap::new()),
                mismatches: Mutex::new(HashMap::new()),
                mismatch_backoff: Mutex::new(DEFAULT_MISMATCH_BACKOFF),
                shutting_down: AtomicBool::new(false),
                next_waiter: AtomicU64::new(1),
                workers: pool::Pool::new(max_fetches, Arc::new(run)),
                published: Mutex::new(Vec::new()),
                records: Mutex::new(HashMap::new()),
                quota: quota::Quota::default(),
            }
        });
        let weak = Arc::downgrade(&c);
        std::thread::Builder::new()
            .name("open-watchdog".into())
            .spawn(move || watchdog(weak))
            .expect("cannot start the watchdog thread");
        c
    }

    /// How long opens fail at once after a digest mismatch (see the
    /// module doc); zero turns the back-off off.
    pub fn set_mismatch_backoff(&self, d: Duration) {
        *self.mismatch_backoff.lock() = d;
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where `m` is fetched from (attributes, messages).
    pub fn url_for(&self, m: &Manifest) -> Option<String> {
        self.source.url_for(m)
    }

    /// Calls `done` once the blob of `m` is there, joining its job or
    /// starting one of `kind`: a fetch of an absent blob, a recheck of a
    /// present one whose stamps moved since it was verified (`done` gets
    /// the file once its bytes hashed right again, or, if they changed,
    /// once the blob was quarantined and fetched again, or the failure
    /// when it has no URL). `caller` is the waiting task, watched for
    /// signals, and its request, which an interrupt names. Returns at once.
    fn wait(
        self: &Arc<Self>,
        m: &Manifest,
        kind: JobKind,
        caller: Caller,
        pinned_by: &dyn Fn() -> Vec<Manifest>,
        done: Done,
    ) {
        if self.shutting_down.load(Ordering::Relaxed) {
            done(Err(WaitError::ShuttingDown));
            return;
        }
        if kind == JobKind::Fetch
            && let Some(e) = self.backed_off(m)
        {
            done(Err(WaitError::Failed(e)));
            return;
        }
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        self.ensure_job(m, Some(Waiter { id, caller, done }), kind, pinned_by);
    }

    /// Starts a job nobody waits for (an `O_NONBLOCK` open).
    fn start(self: &Arc<Self>, m: &Manifest, kind: JobKind, pinned_by: &dyn Fn() -> Vec<Manifest>) {
        if self.shutting_down.load(Ordering::Relaxed)
            || (kind == JobKind::Fetch && self.backed_off(m).is_some())
        {
            return;
        }
        self.ensure_job(m, None, kind, pinned_by);
    }

    /// Whether the present blob file of `d`, whose metadata is `meta`, is
    /// the file that was verified: its stamps equal its record (in memory,
    /// else on disk). A blob with no record at all is trusted at first
    /// sight and its stamps are recorded (see `store::verified`). Never
    /// hashes; `false` means the open must wait for a recheck.
    fn verified_now(&self, d: &Sha256, meta: &std::fs::Metadata) -> bool {
        let now = Record::of(meta);
        if self.records.lock().get(d) == Some(&now) {
            return true;
        }
        match self.store.read_record(d) {
            Recorded::Stamps(r) => {
                self.records.lock().insert(*d, r);
                r == now
            }
            Recorded::Unreadable => false,
            Recorded::Nothing => {
                log::info!(
                    "blob {}: no record that modelfs verified it (another tool placed it, or an \
                     earlier modelfs); trusting it at first sight and recording its stamps",
                    d.short()
                );
                if let Err(e) = self.store.write_record(d, &now, "first-sight", false) {
                    log::warn!("blob {}: cannot record its stamps: {e}", d.short());
                }
                self.records.lock().insert(*d, now);
                true
            }
        }
    }

    /// The mismatch error to answer an open of `m` with at once, while the
    /// back-off lasts, `m` is the manifest whose fetch failed and the blob
    /// has not arrived meanwhile. No disk access but one `stat`, and only
    /// for a blob with a recorded mismatch: this runs on the open's path.
    fn backed_off(&self, m: &Manifest) -> Option<Arc<FetchError>> {
        let backoff = *self.mismatch_backoff.lock();
        let error = {
            let mut map = self.mismatches.lock();
            let r = map.get(&m.blob)?;
            if r.at.elapsed() >= backoff {
                map.remove(&m.blob);
                return None;
            }
            if r.manifest != *m {
                return None;
            }
            r.error.clone()
        };
        if matches!(self.store.blob_state(&m.blob), BlobState::Present(_)) {
            self.mismatches.lock().remove(&m.blob);
            return None;
        }
        log::debug!("{}: open refused, its last fetch had wrong bytes", m.name);
        Some(error)
    }

    /// What the blob is doing now. Memory only, but for a blob with a
    /// recorded failure and no fetch, which is looked for on disk: another
    /// process (`modelfs pull`) may have fetched it, and then the failure
    /// is history.
    pub fn activity(&self, d: &Sha256) -> BlobActivity {
        let mut a = BlobActivity {
            last_error: self.last_errors.lock().get(d).cloned(),
            source: self.served_by.lock().get(d).cloned(),
            ..BlobActivity::default()
        };
        // The jobs lock is not held across the look at the disk.
        let idle = a.last_error.is_some() && !self.jobs.lock().contains_key(d);
        if idle && matches!(self.store.blob_state(d), BlobState::Present(_)) {
            self.last_errors.lock().remove(d);
            self.mismatches.lock().remove(d);
            a.last_error = None;
        }
        if let Some(job) = self.jobs.lock().get(d) {
            a.fetching = true;
            a.waiters = job.waiters.len();
            a.verified = job.verified.is_some();
            a.progress = *job.shared.progress.lock();
            if let Some(p) = a.progress
                && let Some(url) = job.shared.sources.lock().get(usize::from(p.source))
            {
                a.source = Some(url.clone());
            }
            if let Some(note) = job.shared.note.lock().clone() {
                a.last_error = Some(note);
            }
        }
        a
    }

    /// Fails every waiter with [`WaitError::ShuttingDown`] and cancels
    /// every fetch (partials stay for resuming). Later waits fail at once.
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let mut dones = Vec::new();
        for job in self.jobs.lock().values_mut() {
            job.shared.cancel.store(true, Ordering::SeqCst);
            dones.extend(job.waiters.drain(..).map(|w| w.done));
        }
        for done in dones {
            done(Err(WaitError::ShuttingDown));
        }
    }

    /// Waits up to `limit` for the fetches whose bytes are verified to
    /// finish making them durable and publishing them: [`shutdown`] does not
    /// stop those (there is nothing left to download), and a daemon that
    /// exited meanwhile would leave a complete partial to be re-hashed by
    /// the next fetch. Cancelled downloads get a short while to end too, in
    /// case one had just received its last byte and is about to be
    /// verified. Returns whether none is left.
    ///
    /// [`shutdown`]: Coordinator::shutdown
    pub fn wait_for_publishing(&self, limit: Duration) -> bool {
        const CANCELLED_GRACE: Duration = Duration::from_secs(2);
        let started = Instant::now();
        loop {
            let (publishing, others) = {
                let jobs = self.jobs.lock();
                // Handed over means verified: what is left is making the
                // bytes durable and publishing them, which a cancel does
                // not stop. (The moment between the digest matching and
                // the hand-over is covered by the grace for the others.)
                let publishing = jobs.values().filter(|j| j.verified.is_some()).count();
                (publishing, jobs.len() - publishing)
            };
            if publishing == 0 && (others == 0 || started.elapsed() >= CANCELLED_GRACE) {
                return true;
            }
            if started.elapsed() >= limit {
                log::warn!(
                    "{publishing} verified download(s) not yet published; \
                     the next fetch re-hashes and publishes them"
                );
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Joins the job of `m`'s blob, whatever its kind (a fetch and a
    /// recheck both end with verified bytes), or starts one of `kind`,
    /// with the sources `pinned_by` lists (asked with no lock held, and
    /// only when a job is created).
    fn ensure_job(
        self: &Arc<Self>,
        m: &Manifest,
        mut waiter: Option<Waiter>,
        kind: JobKind,
        pinned_by: &dyn Fn() -> Vec<Manifest>,
    ) {
        let mut others = None;
        let queued = loop {
            let mut jobs = self.jobs.lock();
            if let Some(job) = jobs.get_mut(&m.blob) {
                match (&job.verified, waiter) {
                    (Some(file), Some(w)) => {
                        let file = file.clone();
                        drop(jobs);
                        (w.done)(Ok(Ready::Verified(file)));
                    }
                    (None, w) => job.waiters.extend(w),
                    (Some(_), None) => {}
                }
                return;
            }
            let Some(others) = others.take() else {
                drop(jobs);
                let all = pinned_by();
                others = Some(all.into_iter().filter(|o| o.name != m.name).collect());
                continue;
            };
            let job = Job {
                waiters: waiter.take().into_iter().collect(),
                verified: None,
                shared: Shared::default(),
            };
            let queued = Queued {
                manifest: m.clone(),
                others,
                kind,
                shared: job.shared.clone(),
            };
            jobs.insert(m.blob, job);
            break queued;
        };
        if let Err(e) = self.workers.push(queued, m.size_bytes <= SMALL_BLOB_BYTES) {
            self.finish(
                &m.blob,
                Err(WaitError::Internal(format!(
                    "cannot start a fetch thread: {e}"
                ))),
            );
        }
    }

    /// Runs one queued job on a worker.
    fn run_job(self: Arc<Self>, q: Queued) {
        let Queued {
            manifest: m,
            others,
            kind,
            shared,
        } = q;
        let (cancel, progress) = (&shared.cancel, &shared.progress);
        // Cancelled while queued (the mount is stopping): nothing to start.
        if cancel.load(Ordering::Relaxed) {
            let e = FetchError::new(m.name.as_str(), None, FetchErrorKind::Cancelled);
            return self.finish(&m.blob, Err(WaitError::Failed(Arc::new(e))));
        }
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            if kind == JobKind::Recheck
                && let Some(rechecked) = self.recheck(&m, cancel, progress)
            {
                return rechecked;
            }
            // Before the first byte: evict to fit it, or fail with ENOSPC.
            let _room = self
                .make_room(&m)
                .map_err(|e| WaitError::Failed(Arc::new(e)))?;
            self.fetch(&m, &others, &shared)
        }));
        let result = match outcome {
            Ok(r) => r,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                log::error!("{}: fetch thread panicked: {what}", m.name);
                Err(WaitError::Internal(format!(
                    "fetch of {} panicked: {what}",
                    m.name
                )))
            }
        };
        if let Err(WaitError::Failed(e)) = &result
            && !matches!(e.kind, FetchErrorKind::Cancelled)
        {
            log::error!("{e}");
            self.record_mismatch(&m, e);
        }
        self.finish(&m.blob, result);
    }

    /// Runs the fetch pipeline for `m`, handing the verified file over.
    /// `others` are the other manifests of its blob (the job is one per
    /// digest, so an open of any of those names may have joined it): their
    /// sources come after `m`'s own.
    fn fetch(
        &self,
        m: &Manifest,
        others: &[Manifest],
        shared: &Shared,
    ) -> Result<Ready, WaitError> {
        let Shared {
            cancel,
            progress: latest,
            note,
            sources,
        } = shared;
        let job = FetchJob {
            manifest: m,
            sources: self.source.candidates(m, others),
            write_manifest: false,
            progress: Some(ProgressSink::Watched {
                latest: latest.clone(),
                note: note.clone(),
            }),
            cancel,
        };
        *sources.lock() = job.sources.iter().map(|c| redact_url(&c.url)).collect();
        match self
            .source
            .fetch(&self.store, &job, &mut |file| self.hand_over(&m.blob, file))
        {
            Ok(_) => {
                let i = latest.lock().map_or(0, |p| usize::from(p.source));
                if let Some(url) = sources.lock().get(i) {
                    self.served_by.lock().insert(m.blob, url.clone());
                }
                self.note_published(&m.blob);
                Ok(Ready::Published)
            }
            Err(e) => Err(WaitError::Failed(Arc::new(e))),
        }
    }

    /// Hashes the present blob of `m` again, under its producer lock. Its
    /// bytes intact: answers the waiters with the hashed file. Changed: the
    /// store quarantined it; `None` (a fetch follows) when `m` has a URL,
    /// else the failure. `None` too when the blob went meanwhile.
    fn recheck(
        &self,
        m: &Manifest,
        cancel: &AtomicBool,
        progress: &Mutex<Option<Progress>>,
    ) -> Option<Result<Ready, WaitError>> {
        let url = self.source.url_for(m);
        let fail = |kind| {
            let e = FetchError::new(m.name.as_str(), url.as_deref(), kind);
            Some(Err(WaitError::Failed(Arc::new(e))))
        };
        let report = |phase, done| {
            *progress.lock() = Some(Progress {
                phase,
                done,
                total: m.size_bytes,
                rate: 0.0,
                transferred: 0,
                connections: 0,
                source: 0,
            })
        };
        let cancelled = || cancel.load(Ordering::Relaxed);
        let _guard =
            match self.producer_lock(m, &cancelled, &mut || report(Phase::WaitingForLock, 0)) {
                Ok(g) => g,
                Err(kind) => return fail(kind),
            };
        let started = Instant::now();
        let rechecked =
            self.store
                .recheck_blob(&m.blob, m.name.as_str(), "recheck", cancel, &mut |n| {
                    report(Phase::Rechecking, n)
                });
        match rechecked {
            Ok(Recheck::Matched(file)) => {
                log::info!(
                    "{}: blob {} changed its stamps since it was verified; hashed again in \
                     {:.2} s: the bytes are intact",
                    m.name,
                    m.blob.short(),
                    started.elapsed().as_secs_f64()
                );
                if let Ok(meta) = file.metadata() {
                    self.records.lock().insert(m.blob, Record::of(&meta));
                }
                self.hand_over(&m.blob, file);
                Some(Ok(Ready::Published))
            }
            Ok(Recheck::Absent) => None,
            Ok(Recheck::Mismatch {
                actual,
                quarantined,
            }) => {
                self.records.lock().remove(&m.blob);
                if url.is_none() {
                    return fail(FetchErrorKind::ChangedOnDisk {
                        expected: m.blob,
                        actual,
                        quarantined,
                    });
                }
                log::error!(
                    "{}: blob {} changed on disk since it was verified and now hashes to {actual} \
                     (moved to {}); fetching it again",
                    m.name,
                    m.blob.short(),
                    quarantined.display()
                );
                None
            }
            Err(_) if cancelled() => fail(FetchErrorKind::Cancelled),
            Err(e) => fail(FetchErrorKind::Store(e)),
        }
    }

    /// Waits for `locks/<name>.lock` of `m`, as a producer would.
    fn producer_lock(
        &self,
        m: &Manifest,
        cancelled: &dyn Fn() -> bool,
        on_contended: &mut dyn FnMut(),
    ) -> Result<lock::LockGuard, FetchErrorKind> {
        self.store
            .lock_model(&m.name, cancelled, on_contended)
            .map_err(FetchErrorKind::Store)?
            .ok_or(FetchErrorKind::Cancelled)
    }

    /// Answers every waiter with the verified file, and keeps it for the
    /// opens that join before the fetch ends.
    fn hand_over(&self, d: &Sha256, file: File) {
        let file = Arc::new(file);
        // The last failure is history once bytes verified; a failure to
        // publish them is recorded anew when the fetch ends.
        self.last_errors.lock().remove(d);
        let waiters = match self.jobs.lock().get_mut(d) {
            Some(job) => {
                job.verified = Some(file.clone());
                std::mem::take(&mut job.waiters)
            }
            None => return,
        };
        for w in waiters {
            (w.done)(Ok(Ready::Verified(file.clone())));
        }
    }

    /// Removes the job and calls every waiter's callback, outside the lock.
    fn finish(&self, d: &Sha256, result: Result<Ready, WaitError>) {
        match &result {
            Ok(_) => {
                self.last_errors.lock().remove(d);
            }
            Err(WaitError::Failed(e)) if matches!(e.kind, FetchErrorKind::Cancelled) => {}
            Err(e) => {
                let mut text = describe(e);
                if self.mismatches.lock().contains_key(d) {
                    text.push_str(&format!(
                        " (opens fail at once for {} s unless the manifest changes; \
                         `modelfs pull` tries again now)",
                        self.mismatch_backoff.lock().as_secs()
                    ));
                }
                self.last_errors.lock().insert(*d, text);
            }
        }
        let waiters = self
            .jobs
            .lock()
            .remove(d)
            .map(|j| j.waiters)
            .unwrap_or_default();
        for w in waiters {
            (w.done)(result.clone());
        }
    }

    /// Remembers a fetch that ended in wrong bytes, so that opens fail at
    /// once for a while instead of downloading them again.
    fn record_mismatch(&self, m: &Manifest, e: &Arc<FetchError>) {
        if !matches!(e.kind, FetchErrorKind::DigestMismatch { .. })
            || self.mismatch_backoff.lock().is_zero()
        {
            return;
        }
        self.mismatches.lock().insert(
            m.blob,
            Mismatch {
                at: Instant::now(),
                manifest: m.clone(),
                error: e.clone(),
            },
        );
    }

    /// The kernel says the task waiting in open request `request` got a
    /// signal (FUSE_INTERRUPT). A task we can see is looked at as the
    /// watchdog would: only a stop signal (or a task that is gone) ends its
    /// wait. A task we cannot see (tid 0: it lives outside the daemon's pid
    /// namespace) is taken at its word: any signal that reached it ends
    /// its wait, since nothing else could ever tell a SIGKILL from a
    /// SIGWINCH, and a killed task must not hang until the download ends.
    pub fn interrupt(&self, request: u64) -> Interrupted {
        let tid = {
            let jobs = self.jobs.lock();
            let found = jobs
                .values()
                .flat_map(|j| j.waiters.iter())
                .find(|w| w.caller.request == request);
            match found {
                Some(w) => w.caller.tid,
                None => return Interrupted::Unknown,
            }
        };
        if tid != 0 && interrupt::waiter_state(tid) == interrupt::WaiterState::Waiting {
            return Interrupted::KeptWaiting;
        }
        let mut ended = None;
        for job in self.jobs.lock().values_mut() {
            if let Some(i) = job.waiters.iter().position(|w| w.caller.request == request) {
                ended = Some(job.waiters.remove(i));
                break;
            }
        }
        // Answered meanwhile (the fetch ended): nothing left to interrupt.
        let Some(w) = ended else {
            return Interrupted::Unknown;
        };
        log::info!(
            "open by {} interrupted; the download continues",
            task_name(tid)
        );
        (w.done)(Err(WaitError::Interrupted));
        Interrupted::Ended
    }

    /// One watchdog pass: ends the waits of tasks told to stop.
    fn check_waiters(&self) {
        let watched: Vec<(u64, u32)> = self
            .jobs
            .lock()
            .values()
            .flat_map(|j| j.waiters.iter().map(|w| (w.id, w.caller.tid)))
            .collect();
        let stopped: Vec<(u64, u32)> = watched
            .into_iter()
            .filter(|(_, tid)| interrupt::waiter_state(*tid) != interrupt::WaiterState::Waiting)
            .collect();
        if stopped.is_empty() {
            return;
        }
        let mut dones = Vec::new();
        for job in self.jobs.lock().values_mut() {
            let (gone, kept): (Vec<_>, Vec<_>) = job
                .waiters
                .drain(..)
                .partition(|w| stopped.iter().any(|(id, _)| *id == w.id));
            job.waiters = kept;
            dones.extend(gone.into_iter().map(|w| (w.caller.tid, w.done)));
        }
        for (tid, done) in dones {
            log::info!(
                "open by {} interrupted by a signal; the download continues",
                task_name(tid)
            );
            done(Err(WaitError::Interrupted));
        }
    }
}

/// A one-line description for `user.modelfs.error` and status.
pub fn describe(e: &WaitError) -> String {
    match e {
        WaitError::Failed(f) => f.to_string(),
        WaitError::Interrupted => "interrupted by a signal".into(),
        WaitError::ShuttingDown => "the mount is shutting down".into(),
        WaitError::Internal(s) => s.clone(),
        WaitError::WouldBlock => "not fetched yet (a non-blocking open does not wait)".into(),
        WaitError::Changed { .. } => {
            "the blob changed on disk since it was verified; open it again".into()
        }
        WaitError::Store(e) => e.to_string(),
        WaitError::Io(e) => format!("I/O error on the verified file: {e}"),
    }
}

/// How a log line names a waiting task.
fn task_name(tid: u32) -> String {
    if tid == 0 {
        "a task outside this daemon's pid namespace".into()
    } else {
        format!("task {tid}")
    }
}

fn watchdog(c: Weak<Coordinator>) {
    let started = Instant::now();
    loop {
        std::thread::sleep(WATCHDOG_PERIOD);
        let Some(c) = c.upgrade() else { return };
        if c.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        c.check_waiters();
        log::trace!("watchdog pass at {:?}", started.elapsed());
    }
}
