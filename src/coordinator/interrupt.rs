//! Noticing that a process waiting in `open` wants to stop.
//!
//! fuser 0.18 answers FUSE_INTERRUPT with ENOSYS, after which the kernel
//! never sends another one, and a task blocked in a FUSE request we have
//! read cannot even be killed until we reply. So we look instead: the
//! request carries the caller's thread id, and `/proc/<tid>/status` shows
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
pub fn waiter_state(tid: u32) -> WaiterState {
    waiter_state_at(&Path::new("/proc").join(tid.to_string()).join("status"))
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
    fn a_zombie_counts_as_stopped() {
        let z = status("0", "0", "0").replace("D (disk sleep)", "Z (zombie)");
        assert!(stop_signal_pending(&z));
    }
}
