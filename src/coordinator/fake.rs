//! A scripted [`Source`] for tests of the coordinator and the filesystem
//! semantics above it: it writes the bytes it is given into the store the
//! way the fetch pipeline does (partial, hand-over, publish), or fails as
//! told, and can be held at two gates (before the hand-over, before the
//! publication) to look at the states in between.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::Source;
use crate::digest::Sha256;
use crate::fetch::{Candidate, FetchError, FetchErrorKind, FetchJob, FetchOutcome};
use crate::store::{Manifest, Store};

/// What the scripted source does when asked for a blob.
#[derive(Clone)]
pub enum Script {
    /// Write the bytes, hand them over, then publish.
    Serve(Vec<u8>),
    /// As `Serve`, but wait for the gate before handing over, and again
    /// before publishing.
    Gated(Vec<u8>),
    /// Fail with a network error, once through the gate.
    Fail,
    /// Fail as if the bytes hashed to another digest.
    WrongBytes,
    /// Serve, for each blob, the bytes of that digest; a blob
    /// [`Scripted::hold`] holds waits before its hand-over until released.
    Each(Arc<Vec<Vec<u8>>>),
}

/// A source that follows a script, counts its calls and how many run at
/// once, and can be held at two gates.
pub struct Scripted {
    pub script: Mutex<Script>,
    calls: AtomicUsize,
    pub running: AtomicUsize,
    pub most_running: AtomicUsize,
    gate: (Mutex<u32>, Condvar),
    /// The models asked for, in order.
    pub asked: Mutex<Vec<String>>,
    held: (Mutex<Vec<Sha256>>, Condvar),
}

impl Scripted {
    pub fn new(script: Script) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(script),
            calls: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            most_running: AtomicUsize::new(0),
            gate: (Mutex::new(0), Condvar::new()),
            asked: Mutex::new(Vec::new()),
            held: (Mutex::new(Vec::new()), Condvar::new()),
        })
    }

    /// Lets a gated fetch pass one more gate.
    pub fn open_gate(&self) {
        *self.gate.0.lock() += 1;
        self.gate.1.notify_all();
    }

    fn pass_gate(&self, cancel: &AtomicBool) -> bool {
        let mut open = self.gate.0.lock();
        while *open == 0 {
            if cancel.load(Ordering::Relaxed) {
                return false;
            }
            self.gate.1.wait_for(&mut open, Duration::from_millis(10));
        }
        *open -= 1;
        true
    }

    /// Holds fetches of `d` (under [`Script::Each`]) before the hand-over.
    pub fn hold(&self, d: Sha256) {
        self.held.0.lock().push(d);
    }

    /// Lets held fetches of `d` go on.
    pub fn release(&self, d: &Sha256) {
        self.held.0.lock().retain(|h| h != d);
        self.held.1.notify_all();
    }

    fn wait_while_held(&self, d: &Sha256, cancel: &AtomicBool) -> bool {
        let mut held = self.held.0.lock();
        while held.contains(d) {
            if cancel.load(Ordering::Relaxed) {
                return false;
            }
            self.held.1.wait_for(&mut held, Duration::from_millis(10));
        }
        true
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Source for Scripted {
    fn fetch(
        &self,
        store: &Store,
        job: &FetchJob<'_>,
        on_verified: &mut dyn FnMut(File),
    ) -> Result<FetchOutcome, FetchError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.asked.lock().push(job.manifest.name.to_string());
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now, Ordering::SeqCst);
        let result = self.run(store, job, on_verified);
        self.running.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn candidates(&self, primary: &Manifest, _others: &[Manifest]) -> Vec<Candidate> {
        vec![Candidate::pinned(
            primary.name.as_str(),
            "https://scripted.invalid/".into(),
        )]
    }

    fn url_for(&self, _m: &Manifest) -> Option<String> {
        Some("https://scripted.invalid/".into())
    }
}

impl Scripted {
    fn run(
        &self,
        store: &Store,
        job: &FetchJob<'_>,
        on_verified: &mut dyn FnMut(File),
    ) -> Result<FetchOutcome, FetchError> {
        let m = job.manifest;
        let fail = |kind| Err(FetchError::new(m.name.as_str(), None, kind));
        let (bytes, gated) = match self.script.lock().clone() {
            Script::Serve(b) => (b, false),
            Script::Gated(b) => (b, true),
            Script::Fail => {
                self.pass_gate(job.cancel);
                return fail(FetchErrorKind::Network("refused".into()));
            }
            Script::Each(all) => {
                let bytes = all.iter().find(|b| Sha256::of(b) == m.blob).cloned();
                let bytes = bytes.expect("Script::Each has the bytes of every blob asked for");
                if !self.wait_while_held(&m.blob, job.cancel) {
                    return fail(FetchErrorKind::Cancelled);
                }
                (bytes, false)
            }
            Script::WrongBytes => {
                return fail(FetchErrorKind::DigestMismatch {
                    expected: m.blob,
                    actual: Sha256::of(b"other"),
                    quarantined: None,
                });
            }
        };
        let mut f = store.open_partial(&m.blob).expect("partial");
        f.write_all(&bytes).unwrap();
        if gated && !self.pass_gate(job.cancel) {
            return fail(FetchErrorKind::Cancelled);
        }
        on_verified(store.open_existing_partial(&m.blob).expect("reopen"));
        // Verified bytes are published whatever a cancel says, as the
        // pipeline does.
        if gated {
            self.pass_gate(&AtomicBool::new(false));
        }
        store.publish_blob(&m.blob, &f).expect("publish");
        Ok(FetchOutcome::Downloaded {
            transferred: bytes.len() as u64,
            resumed_from: 0,
        })
    }
}
