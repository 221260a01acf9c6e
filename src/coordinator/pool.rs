//! The threads that run fetches: a fixed set of workers taking queued jobs
//! in order, so a mount asked for 3,000 blobs at once queues 3,000 jobs
//! instead of starting 3,000 threads (it did: 7 GB of address space).
//!
//! `general` workers take any job; one more takes only small jobs, so
//! slow downloads of large blobs (a trickling origin holds its worker
//! until the minimum rate fails it) never keep a small model waiting.
//! Workers start on first use and end when the pool is dropped.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

/// Runs jobs of type `T` on at most `general + 1` threads.
pub struct Pool<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    run: Arc<dyn Fn(T) + Send + Sync>,
    general: usize,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

struct State<T> {
    /// Jobs not yet taken, oldest first, each with whether it is small.
    queue: VecDeque<(T, bool)>,
    /// Whether the workers are running.
    started: bool,
    closed: bool,
}

impl<T: Send + 'static> Pool<T> {
    /// A pool of `general` workers (at least one) plus one for small jobs,
    /// each running `run` on the jobs it takes.
    pub fn new(general: usize, run: Arc<dyn Fn(T) + Send + Sync>) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    started: false,
                    closed: false,
                }),
                ready: Condvar::new(),
            }),
            run,
            general: general.max(1),
        }
    }

    /// Queues `job`. Fails only if no worker could be started at all.
    pub fn push(&self, job: T, small: bool) -> std::io::Result<()> {
        let start = {
            let mut st = self.shared.state.lock();
            st.queue.push_back((job, small));
            !std::mem::replace(&mut st.started, true)
        };
        self.shared.ready.notify_all();
        if start {
            let mut started = 0;
            let mut last_err = None;
            for i in 0..=self.general {
                let only_small = i == self.general;
                let (shared, run) = (self.shared.clone(), self.run.clone());
                match std::thread::Builder::new()
                    .name(format!("fetch-{i}"))
                    .spawn(move || work(&shared, &*run, only_small))
                {
                    Ok(_) => started += 1,
                    Err(e) => last_err = Some(e),
                }
            }
            if started == 0 {
                self.shared.state.lock().started = false;
                return Err(last_err.expect("no worker started, so one failed"));
            }
        }
        Ok(())
    }

    /// Jobs queued and not yet taken by a worker.
    pub fn queued(&self) -> usize {
        self.shared.state.lock().queue.len()
    }
}

impl<T: Send + 'static> Drop for Pool<T> {
    fn drop(&mut self) {
        self.shared.state.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

/// One worker: takes the oldest job it may run, runs it, and again, until
/// the pool closes.
fn work<T>(shared: &Shared<T>, run: &(dyn Fn(T) + Send + Sync), only_small: bool) {
    loop {
        let job = {
            let mut st = shared.state.lock();
            loop {
                if st.closed {
                    return;
                }
                let pos = st.queue.iter().position(|(_, small)| *small || !only_small);
                if let Some(job) = pos.and_then(|i| st.queue.remove(i)) {
                    break job.0;
                }
                shared.ready.wait(&mut st);
            }
        };
        run(job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn a_thousand_jobs_run_on_at_most_general_plus_one_threads_in_order() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(Mutex::new(Vec::new()));
        let (r, m, d) = (running.clone(), most.clone(), done.clone());
        let pool = Pool::new(
            3,
            Arc::new(move |i: usize| {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_micros(200));
                d.lock().push(i);
                r.fetch_sub(1, Ordering::SeqCst);
            }),
        );
        for i in 0..1000 {
            pool.push(i, i % 2 == 0).unwrap();
        }
        while done.lock().len() < 1000 {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(most.load(Ordering::SeqCst) <= 4);
        let mut all = done.lock().clone();
        all.sort();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn a_small_job_runs_while_every_general_worker_is_busy() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let small_ran = Arc::new(AtomicUsize::new(0));
        let (g, s) = (gate.clone(), small_ran.clone());
        let pool = Pool::new(
            2,
            Arc::new(move |big: bool| {
                if big {
                    let (lock, cv) = &*g;
                    let mut open = lock.lock();
                    while !*open {
                        cv.wait(&mut open);
                    }
                } else {
                    s.fetch_add(1, Ordering::SeqCst);
                }
            }),
        );
        for _ in 0..4 {
            pool.push(true, false).unwrap();
        }
        pool.push(false, true).unwrap();
        let mut waited = 0;
        while small_ran.load(Ordering::SeqCst) == 0 && waited < 500 {
            std::thread::sleep(Duration::from_millis(10));
            waited += 1;
        }
        assert_eq!(small_ran.load(Ordering::SeqCst), 1, "the small job ran");
        assert_eq!(pool.queued(), 2, "two large jobs wait for a general worker");
        *gate.0.lock() = true;
        gate.1.notify_all();
    }
}
