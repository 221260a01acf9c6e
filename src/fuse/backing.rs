//! The table of backing ids: one kernel passthrough registration per inode,
//! shared by every open of it (see [`Backings`]).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use parking_lot::Mutex;

/// The backing files registered with the kernel: one per inode while any
/// open file of that inode reads through it, shared by all of them.
///
/// Registering (`FUSE_DEV_IOC_BACKING_OPEN`) and closing
/// (`FUSE_DEV_IOC_BACKING_CLOSE`, run when the last `Arc` of a
/// [`BackingId`] drops) are ioctls, so neither runs under the table's lock:
/// [`Backings::acquire`] looks up under the lock, registers without it, and
/// re-checks under it; an id the table lets go of is dropped after the lock
/// is released. Generic over the id so that the bookkeeping, and the races,
/// can be tested without a kernel.
#[derive(Debug)]
pub struct Backings<Id> {
    table: Mutex<BackingTable<Id>>,
}

/// The bookkeeping behind [`Backings`]; only ever touched under its lock.
#[derive(Debug)]
struct BackingTable<Id> {
    /// inode → (its backing id, open handles using it, the backing file's
    /// (device, inode))
    by_ino: HashMap<u64, (Arc<Id>, usize, FileId)>,
    /// handle → inode, for the handles that use a backing id
    fh_ino: HashMap<u64, u64>,
}

impl<Id> Default for Backings<Id> {
    fn default() -> Self {
        Self {
            table: Mutex::new(BackingTable {
                by_ino: HashMap::new(),
                fh_ino: HashMap::new(),
            }),
        }
    }
}

/// A file's (device, inode).
pub type FileId = (u64, u64);

impl<Id> Backings<Id> {
    /// The backing id of `ino` for the new handle `fh` on the file `file`:
    /// the one already registered for the inode, else a new one from
    /// `register`, which runs without the lock held. When another open of
    /// the inode registered an id while `register` ran, `fh` shares that
    /// one and the id `register` made is dropped, after the lock is
    /// released; when registering failed, `fh` shares one that appeared
    /// meanwhile if there is one (the kernel refuses a cached open of an
    /// inode open in passthrough).
    ///
    /// An inode's id is shared only by handles on the same file: a handle
    /// on another file gets `ESTALE`, never the old file's bytes. (The
    /// namespace retires an inode whose blob file was replaced, so this
    /// only guards against a bug there.)
    pub fn acquire(
        &self,
        ino: u64,
        file: FileId,
        fh: u64,
        register: impl FnOnce() -> std::io::Result<Id>,
    ) -> std::io::Result<Arc<Id>> {
        if let Some(id) = self.table.lock().join(ino, file, fh)? {
            return Ok(id);
        }
        let fresh = match register() {
            Ok(fresh) => fresh,
            Err(e) => return self.table.lock().join(ino, file, fh)?.ok_or(e),
        };
        let (id, redundant) = self.table.lock().adopt(ino, file, fh, fresh);
        drop(redundant);
        id
    }

    /// Handle `fh` is closed; the inode's id goes when its last user does,
    /// dropped after the lock is released.
    pub fn release(&self, fh: u64) {
        let last = self.table.lock().release(fh);
        drop(last);
    }

    /// Inodes with a registered backing id now.
    pub fn registered(&self) -> usize {
        self.table.lock().by_ino.len()
    }

    /// Whether the table's lock is held right now (for the tests that
    /// prove no ioctl runs under it).
    #[cfg(test)]
    fn is_locked(&self) -> bool {
        self.table.is_locked()
    }
}

impl<Id> BackingTable<Id> {
    /// Counts `fh` as a user of the id already registered for `ino`, if
    /// there is one and it is for `file`.
    fn join(&mut self, ino: u64, file: FileId, fh: u64) -> std::io::Result<Option<Arc<Id>>> {
        let Some((id, users, backing)) = self.by_ino.get_mut(&ino) else {
            return Ok(None);
        };
        if *backing != file {
            log::error!(
                "inode {ino}: an open of file {file:?} while its backing file is {backing:?}; \
                 refusing it (ESTALE) rather than serving the other file's bytes"
            );
            return Err(std::io::Error::from_raw_os_error(libc::ESTALE));
        }
        *users += 1;
        let id = id.clone();
        self.fh_ino.insert(fh, ino);
        Ok(Some(id))
    }

    /// Counts `fh` as a user of `fresh`, registered for `ino` without the
    /// lock, unless an id for `ino` appeared meanwhile: then `fh` uses that
    /// one and `fresh` comes back for the caller to drop outside the lock.
    fn adopt(
        &mut self,
        ino: u64,
        file: FileId,
        fh: u64,
        fresh: Id,
    ) -> (std::io::Result<Arc<Id>>, Option<Id>) {
        match self.join(ino, file, fh) {
            Ok(Some(id)) => return (Ok(id), Some(fresh)),
            Err(e) => return (Err(e), Some(fresh)),
            Ok(None) => {}
        }
        let id = Arc::new(fresh);
        self.by_ino.insert(ino, (id.clone(), 1, file));
        self.fh_ino.insert(fh, ino);
        (Ok(id), None)
    }

    /// Uncounts `fh`; returns the inode's id when `fh` was its last user,
    /// for the caller to drop outside the lock.
    fn release(&mut self, fh: u64) -> Option<Arc<Id>> {
        let ino = self.fh_ino.remove(&fh)?;
        let Entry::Occupied(mut e) = self.by_ino.entry(ino) else {
            return None;
        };
        e.get_mut().1 -= 1;
        (e.get().1 == 0).then(|| e.remove().0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use super::*;

    /// The backing file of the opens in these tests.
    const F: FileId = (1, 10);

    #[test]
    fn every_open_of_an_inode_shares_one_backing_id_until_the_last_release() {
        let b = Backings::<u32>::default();
        let mut next = 0;
        let mut register = || {
            next += 1;
            Ok(next)
        };
        let first = b.acquire(7, F, 100, &mut register).unwrap();
        let second = b.acquire(7, F, 101, &mut register).unwrap();
        assert_eq!((*first, *second), (1, 1), "one id for the inode");
        let other = b.acquire(8, F, 102, &mut register).unwrap();
        assert_eq!(*other, 2);
        b.release(100);
        assert_eq!(b.registered(), 2, "still used by handle 101");
        assert_eq!(*b.acquire(7, F, 103, &mut register).unwrap(), 1);
        b.release(101);
        b.release(103);
        b.release(999); // not a passthrough handle: ignored
        assert_eq!(b.registered(), 1);
        b.release(102);
        assert_eq!(b.registered(), 0);
        assert_eq!(
            *b.acquire(7, F, 104, &mut register).unwrap(),
            3,
            "a new id after all closed"
        );
    }

    #[test]
    fn a_refused_registration_leaves_nothing_behind() {
        let b = Backings::<u32>::default();
        let r = b.acquire(7, F, 1, || {
            Err(std::io::Error::from_raw_os_error(libc::EPERM))
        });
        assert!(r.is_err());
        assert_eq!(b.registered(), 0);
        b.release(1);
        assert_eq!(*b.acquire(7, F, 2, || Ok(5)).unwrap(), 5);
    }

    /// A stand-in for the kernel's side of backing ids: it hands out
    /// [`Probe`]s, fails a registration made under the table's lock, and
    /// notes every close and whether the lock was held while it ran.
    struct FakeKernel {
        table: Arc<Backings<Probe>>,
        closed: Arc<Mutex<Vec<u32>>>,
        closed_under_lock: Arc<AtomicBool>,
    }

    /// A backing id; dropping it is the close ioctl.
    #[derive(Debug)]
    struct Probe {
        n: u32,
        table: std::sync::Weak<Backings<Probe>>,
        closed: Arc<Mutex<Vec<u32>>>,
        closed_under_lock: Arc<AtomicBool>,
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            if self.table.upgrade().is_some_and(|t| t.is_locked()) {
                self.closed_under_lock.store(true, Ordering::SeqCst);
            }
            self.closed.lock().push(self.n);
        }
    }

    impl FakeKernel {
        fn new() -> Self {
            Self {
                table: Arc::new(Backings::default()),
                closed: Arc::default(),
                closed_under_lock: Arc::default(),
            }
        }

        /// Fails the test at once (rather than deadlocking it) when the
        /// table is locked where another open must be able to run.
        fn assert_table_unlocked(&self) {
            assert!(
                !self.table.is_locked(),
                "the table is locked during a registration"
            );
        }

        /// The open ioctl: a new id numbered `n`.
        fn register(&self, n: u32) -> std::io::Result<Probe> {
            self.assert_table_unlocked();
            Ok(Probe {
                n,
                table: Arc::downgrade(&self.table),
                closed: self.closed.clone(),
                closed_under_lock: self.closed_under_lock.clone(),
            })
        }

        fn closed(&self) -> Vec<u32> {
            self.closed.lock().clone()
        }

        fn assert_no_close_ran_under_the_lock(&self) {
            assert!(
                !self.closed_under_lock.load(Ordering::SeqCst),
                "a backing id was closed with the table locked"
            );
        }
    }

    #[test]
    fn an_open_that_loses_the_registration_race_uses_the_winners_id_and_closes_its_own() {
        let k = FakeKernel::new();
        let b = &k.table;
        let id = b
            .acquire(7, F, 100, || {
                k.assert_table_unlocked();
                // Another open of inode 7 registers and replies meanwhile.
                let theirs = b.acquire(7, F, 200, || k.register(2)).unwrap();
                assert_eq!(theirs.n, 2);
                k.register(1)
            })
            .unwrap();
        assert_eq!(id.n, 2, "the id already in the table wins");
        assert_eq!(k.closed(), [1], "the spare registration is closed at once");
        assert_eq!(b.registered(), 1);
        drop(id);
        b.release(100);
        assert_eq!(k.closed(), [1], "still used by handle 200");
        b.release(200);
        assert_eq!(k.closed(), [1, 2], "closed with its last handle");
        assert_eq!(b.registered(), 0);
        k.assert_no_close_ran_under_the_lock();
    }

    #[test]
    fn an_id_registered_while_another_open_came_and_went_is_kept() {
        let k = FakeKernel::new();
        let b = &k.table;
        let id = b
            .acquire(7, F, 100, || {
                k.assert_table_unlocked();
                b.acquire(7, F, 200, || k.register(2)).unwrap();
                b.release(200);
                k.register(1)
            })
            .unwrap();
        assert_eq!(id.n, 1);
        assert_eq!(k.closed(), [2]);
        assert_eq!(b.registered(), 1);
        assert_eq!(b.acquire(7, F, 101, || k.register(3)).unwrap().n, 1);
        drop(id);
        b.release(100);
        b.release(101);
        assert_eq!(k.closed(), [2, 1]);
        k.assert_no_close_ran_under_the_lock();
    }

    #[test]
    fn a_refused_registration_shares_the_id_another_open_registered_meanwhile() {
        let k = FakeKernel::new();
        let b = &k.table;
        let r = b.acquire(7, F, 100, || {
            k.assert_table_unlocked();
            b.acquire(7, F, 200, || k.register(2)).unwrap();
            Err(std::io::Error::from_raw_os_error(libc::EPERM))
        });
        // The kernel would refuse a cached open of an inode open in
        // passthrough, so handle 100 uses the id that appeared.
        assert_eq!(r.unwrap().n, 2);
        b.release(100);
        assert_eq!(b.registered(), 1, "handle 200 still uses its id");
        b.release(200);
        assert_eq!((b.registered(), k.closed()), (0, vec![2]));
    }

    #[test]
    fn an_open_of_another_file_never_shares_an_inodes_backing_id() {
        let k = FakeKernel::new();
        let b = &k.table;
        let first = b.acquire(7, F, 100, || k.register(1)).unwrap();
        let other = b.acquire(7, (1, 11), 101, || k.register(2));
        assert_eq!(other.unwrap_err().raw_os_error(), Some(libc::ESTALE));
        assert!(k.closed().is_empty(), "the inode's id is kept");

        // Nor when the other file's open registers while one for F wins.
        let raced = b.acquire(8, (1, 11), 200, || {
            b.acquire(8, F, 201, || k.register(3)).unwrap();
            k.register(4)
        });
        assert_eq!(raced.unwrap_err().raw_os_error(), Some(libc::ESTALE));
        assert_eq!(k.closed(), [4], "its own registration is closed");

        drop(first);
        for fh in [100, 101, 200, 201] {
            b.release(fh);
        }
        assert_eq!(b.registered(), 0);
        assert_eq!(k.closed(), [4, 1, 3]);
        k.assert_no_close_ran_under_the_lock();
    }

    #[test]
    fn first_opens_racing_on_two_threads_share_one_id_and_close_the_spare() {
        let k = Arc::new(FakeKernel::new());
        let in_register = Arc::new(AtomicUsize::new(0));
        let opens: Vec<_> = [(100, 1), (101, 2)]
            .into_iter()
            .map(|(fh, n)| {
                let (k, in_register) = (k.clone(), in_register.clone());
                std::thread::spawn(move || {
                    let id = k
                        .table
                        .acquire(7, F, fh, || {
                            let id = k.register(n);
                            // Both threads are inside `register` at once,
                            // which only works when neither holds the lock.
                            in_register.fetch_add(1, Ordering::SeqCst);
                            let deadline = Instant::now() + Duration::from_secs(5);
                            while in_register.load(Ordering::SeqCst) < 2 {
                                assert!(
                                    Instant::now() < deadline,
                                    "the other open never registered"
                                );
                                std::thread::yield_now();
                            }
                            id
                        })
                        .unwrap();
                    id.n
                })
            })
            .collect();
        let ids: Vec<u32> = opens.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(ids[0], ids[1], "both handles read through one id");
        assert_eq!(k.table.registered(), 1);
        let spare = 3 - ids[0];
        assert_eq!(k.closed(), [spare]);
        k.table.release(100);
        k.table.release(101);
        assert_eq!(k.closed(), [spare, ids[0]]);
        k.assert_no_close_ran_under_the_lock();
    }
}
