//! Noticing that a process waiting in `open` wants to stop.
//!
//! A task blocked in a FUSE request we have read cannot even be killed
//! until we reply. The kernel sends FUSE_INTERRUPT when such a task gets a
//! signal (our patched fuser passes it to [`super::Coordinator::interrupt`]),
//! but not which signal, and only once per request; a watchdog looks every
//! [`super::WATCHDOG_PERIOD`] as well. Both decide from what `/proc` says
//! about the task: the request carries the caller's thread id, and
//! `/proc/<tid>/status` shows
//! its pending signals (`SigPnd` for the thread, `ShdPnd` for the process)
//! and its blocked set (`SigBlk`). A deliverable SIGINT, SIGTERM, SIGHUP,
//! SIGQUIT or SIGKILL, or a task that is gone, means the open should end
//! with EINTR. Other signals (SIGWINCH, SIGCHLD…) do not: ending an open
//! because a terminal was resized would surprise every program.

use std::path::Path;

/// Signals that end a wait: the ones users send to stop a program.
const STOP_SIGNALS: [i32; 5] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGKILL,
    libc::SIGTERM,
];

fn mask_of(signals: &[i32]) -> u64 {
    signals.iter().fold(0, |m, s| m | 1u64 << (s - 1))
}

/// What `/proc/<tid>/status` says about a waiter.
#[derive(Debug, PartialEq, Eq)]
pub enum WaiterState {
    Waiting,
    /// A stop signal is pending and not blocked.
    Signalled,
    /// The task no longer exists.
    Gone,
}

/// Reads the state of task `tid`.
///
/// A task that cannot be watched counts as waiting, never as gone (which
/// would fail its open at once): the kernel gives tid 0 for a caller
/// outside the mount daemon's pid namespace (a host process opening a
/// mount served from a container), and without `/proc` no task can be
/// looked at.
pub fn waiter_state(tid: u32) -> WaiterState {
    waiter_state_in(Path::new("/proc"), tid)
}

fn waiter_state_in(proc_root: &Path, tid: u32) -> WaiterState {
    if tid == 0 {
        return WaiterState::Waiting;
    }
    match waiter_state_at(&proc_root.join(tid.to_string()).join("status")) {
        WaiterState::Gone if !proc_root.join("self/status").exists() => WaiterState::Waiting,
        s => s,
    }
}

fn waiter_state_at(path: &Path) -> WaiterState {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            if stop_signal_pending(&text) {
                WaiterState::Signalled
            } else {
                WaiterState::Waiting
            }
        }
        Err(_) => WaiterState::Gone,
    }
}

/// Whether a status text shows a deliverable stop signal, or a task that
/// is already exiting (a zombie or dead task cannot be waiting).
pub fn stop_signal_pending(status: &str) -> bool {
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let state = status
        .lines()
        .find_map(|l| l.strip_prefix("State:"))
        .unwrap_or("")
        .trim_start();
    if state.starts_with('Z') || state.starts_with('X') {
        return true;
    }
    let pending = field("SigPnd:") | field("ShdPnd:");
    let blocked = field("SigBlk:") & !mask_of(&[libc::SIGKILL]);
    pending & !blocked & mask_of(&STOP_SIGNALS) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(sigpnd: &str, shdpnd: &str, blk: &str) -> String {
        format!(
            "Name:\tcat\nState:\tD (disk sleep)\nPid:\t42\nSigQ:\t1/1000\nSigPnd:\t{sigpnd}\nShdPnd:\t{shdpnd}\nSigBlk:\t{blk}\nSigIgn:\t0000000000000000\n"
        )
    }

    #[test]
    fn a_pending_sigint_or_sigterm_or_sigkill_is_noticed() {
        assert!(stop_signal_pending(&status(
            "0000000000000000",
            "0000000000000002",
            "0"
        )));
        assert!(stop_signal_pending(&status(
            "0000000000004000",
            "0000000000000000",
            "0"
        )));
        assert!(stop_signal_pending(&status(
            "0000000000000100",
            "0000000000000000",
            "0"
        )));
    }

    #[test]
    fn no_signal_or_an_unrelated_one_keeps_waiting() {
        assert!(!stop_signal_pending(&status(
            "0000000000000000",
            "0000000000000000",
            "0"
        )));
        // SIGWINCH (28) and SIGCHLD (17)
        assert!(!stop_signal_pending(&status(
            "0000000008010000",
            "0000000000000000",
            "0"
        )));
    }

    #[test]
    fn a_blocked_sigint_does_not_count_but_sigkill_cannot_be_blocked() {
        assert!(!stop_signal_pending(&status(
            "0",
            "0000000000000002",
            "0000000000000002"
        )));
        assert!(stop_signal_pending(&status(
            "0000000000000100",
            "0",
            "ffffffffffffffff"
        )));
    }

    #[test]
    fn a_missing_task_is_gone_and_this_process_is_waiting() {
        assert_eq!(
            waiter_state_at(Path::new("/proc/0/status")),
            WaiterState::Gone
        );
        assert_eq!(waiter_state(std::process::id()), WaiterState::Waiting);
    }

    #[test]
    fn a_task_outside_our_pid_namespace_or_without_proc_is_never_gone() {
        // The kernel reports tid 0 for a caller it cannot name for us.
        assert_eq!(waiter_state(0), WaiterState::Waiting);
        let fake = tempfile::tempdir().unwrap();
        assert_eq!(
            waiter_state_in(fake.path(), 4242),
            WaiterState::Waiting,
            "no /proc: cannot tell, keep waiting"
        );
        std::fs::create_dir_all(fake.path().join("self")).unwrap();
        std::fs::write(fake.path().join("self/status"), status("0", "0", "0")).unwrap();
        assert_eq!(waiter_state_in(fake.path(), 4242), WaiterState::Gone);
        std::fs::create_dir_all(fake.path().join("4242")).unwrap();
        std::fs::write(fake.path().join("4242/status"), status("0", "2", "0")).unwrap();
        assert_eq!(waiter_state_in(fake.path(), 4242), WaiterState::Signalled);
    }

    #[test]
    fn a_zombie_counts_as_stopped() {
        let z = status("0", "0", "0").replace("D (disk sleep)", "Z (zombie)");
        assert!(stop_signal_pending(&z));
    }
}
