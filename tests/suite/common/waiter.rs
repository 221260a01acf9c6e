//! Threads that open and read a file as a program would, so that a test can
//! have several opens wait on one download and then check what each got.
//! A waiter whose open succeeded but whose read failed panics, and joining
//! it fails the test.

use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::sys::open_and_read;

/// What an open and read gave: the bytes, or the errno of the open.
pub type Opened = Result<Vec<u8>, i32>;

/// A thread that opens and reads one file.
pub struct Waiter(JoinHandle<(Opened, Duration)>);

impl Waiter {
    /// Starts a thread that opens and reads `path`.
    pub fn spawn(path: &Path) -> Waiter {
        let path = path.to_path_buf();
        Waiter(std::thread::spawn(move || {
            let started = Instant::now();
            let opened = open_and_read(&path);
            (opened, started.elapsed())
        }))
    }

    /// What the waiter got, and how long its open and read took.
    pub fn join(self) -> (Opened, Duration) {
        self.0.join().expect("the waiter thread panicked")
    }

    /// What the waiter got, and how long it took, if it ended within
    /// `limit` (a test that must not hang when the fix is missing).
    pub fn join_within(self, limit: Duration) -> Option<(Opened, Duration)> {
        let end = Instant::now() + limit;
        while !self.0.is_finished() {
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(self.join())
    }

    /// What the waiter got.
    pub fn result(self) -> Opened {
        self.join().0
    }
}

/// `n` waiters on `path`, started one after the other without a pause.
pub fn waiters(path: &Path, n: usize) -> Vec<Waiter> {
    (0..n).map(|_| Waiter::spawn(path)).collect()
}
