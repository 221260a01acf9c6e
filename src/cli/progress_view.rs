//! Shows fetch progress: an indicatif bar on a terminal, a plain line every
//! few seconds otherwise (logs, CI, systemd journals).

use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use indicatif::{ProgressBar, ProgressStyle};

use crate::fetch::error::human_bytes;
use crate::fetch::{Phase, Progress};

/// Pause between two plain progress lines.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// Renders the events of one fetch until the sender is dropped.
pub fn render(label: &str, rx: Receiver<Progress>, terminal: bool) {
    if terminal {
        render_bar(label, rx)
    } else {
        render_lines(label, rx)
    }
}

/// A bar with bytes, rate and ETA.
pub fn new_bar(label: &str, total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}

fn render_bar(label: &str, rx: Receiver<Progress>) {
    let mut bar: Option<ProgressBar> = None;
    for p in rx {
        let b = bar.get_or_insert_with(|| new_bar(label, p.total));
        b.set_length(p.total);
        b.set_position(p.done);
        b.set_message(phase_word(p.phase));
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
}

fn render_lines(label: &str, rx: Receiver<Progress>) {
    let mut last: Option<Instant> = None;
    let mut last_phase = None;
    for p in rx {
        let due = last.is_none_or(|t| t.elapsed() >= LINE_EVERY) || last_phase != Some(p.phase);
        if due {
            eprintln!("{label}: {}", describe(&p));
            last = Some(Instant::now());
            last_phase = Some(p.phase);
        }
    }
}

/// `120.0 MiB / 1.0 GiB (12%) at 50.0 MiB/s, downloading`
pub fn describe(p: &Progress) -> String {
    let pct = (p.done * 100).checked_div(p.total).unwrap_or(100);
    format!(
        "{} / {} ({pct}%) at {}/s, {}",
        human_bytes(p.done),
        human_bytes(p.total),
        human_bytes(p.rate as u64),
        phase_word(p.phase)
    )
}

fn phase_word(p: Phase) -> &'static str {
    match p {
        Phase::WaitingForLock => "waiting for another process",
        Phase::Rehashing => "re-hashing the partial download",
        Phase::Rechecking => "hashing the blob again: it changed on disk since it was verified",
        Phase::Downloading => "downloading",
        Phase::Retrying => "retrying",
        Phase::Publishing => "verified; writing to disk and moving into place",
    }
}
