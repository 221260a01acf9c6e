//! Shows fetch progress: an indicatif bar on a terminal, a plain line every
//! few seconds otherwise (logs, CI, systemd journals).
//!
//! The rate shown is the fetch's own (bytes that came over the network in
//! this run, over the last seconds), never indicatif's estimate from the
//! bar's position: a resumed download's position jumps by the kept prefix
//! at once, which an estimate from positions reports as hundreds of GiB/s.
//! No rate is shown before one is known, and the last frame shows where
//! the fetch ended (the full size once verified) without a rate or ETA.

use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use indicatif::{ProgressBar, ProgressStyle};

use crate::fetch::{Phase, Progress};
use crate::text::human_bytes;

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

/// A bar with bytes and a message (rate, ETA and phase), starting at
/// `done`: what is there already is not counted as progress.
pub fn new_bar(label: &str, done: u64, total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total).with_position(done);
    bar.set_style(
        ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}

fn render_bar(label: &str, rx: Receiver<Progress>) {
    let mut bar: Option<ProgressBar> = None;
    let mut last = None;
    for p in rx {
        let b = bar.get_or_insert_with(|| new_bar(label, p.done, p.total));
        b.set_length(p.total);
        b.set_position(p.done);
        b.set_message(rate_and_phase(&p));
        last = Some(p);
    }
    if let (Some(b), Some(p)) = (bar, last) {
        b.set_position(p.done);
        b.finish_with_message(final_word(&p));
    }
}

/// The bar's message: `50.0 MiB/s, ETA 12 s, downloading`, or only the
/// phase while no rate is known or nothing is downloading.
pub fn rate_and_phase(p: &Progress) -> String {
    let word = phase_word(p.phase);
    if p.phase != Phase::Downloading {
        return word.to_string();
    }
    let word = match p.connections {
        0 | 1 => word.to_string(),
        n => format!("{word} over {n} connections"),
    };
    with_rate(p.rate, p.total.saturating_sub(p.done), &word)
}

/// `50.0 MiB/s, ETA 12 s, WORD` for `left` bytes at `rate` bytes per
/// second, or only `WORD` while no rate is known.
pub fn with_rate(rate: f64, left: u64, word: &str) -> String {
    if rate < 1.0 {
        return word.to_string();
    }
    format!(
        "{}/s, ETA {}, {word}",
        human_bytes(rate as u64),
        human_duration(left as f64 / rate)
    )
}

/// What the last frame says.
fn final_word(p: &Progress) -> &'static str {
    match p.phase {
        Phase::Publishing => "verified",
        Phase::Downloading if p.done == p.total => "downloaded",
        _ => "stopped",
    }
}

/// `45 s`, `12 min`, `3.5 h`.
pub fn human_duration(secs: f64) -> String {
    if secs < 90.0 {
        format!("{} s", secs.ceil() as u64)
    } else if secs < 90.0 * 60.0 {
        format!("{} min", (secs / 60.0).round() as u64)
    } else {
        format!("{:.1} h", secs / 3600.0)
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

/// `120.0 MiB / 1.0 GiB (12%), 50.0 MiB/s, ETA 18 s, downloading`
pub fn describe(p: &Progress) -> String {
    let pct = (p.done * 100).checked_div(p.total).unwrap_or(100);
    format!(
        "{} / {} ({pct}%), {}",
        human_bytes(p.done),
        human_bytes(p.total),
        rate_and_phase(p)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn p(phase: Phase, done: u64, total: u64, rate: f64) -> Progress {
        Progress {
            phase,
            done,
            total,
            rate,
            transferred: 0,
            connections: 1,
            source: 0,
        }
    }

    #[test]
    fn no_rate_or_eta_is_shown_before_one_is_known_or_once_the_download_is_over() {
        assert_eq!(
            rate_and_phase(&p(Phase::Downloading, 10, 100, 0.0)),
            "downloading"
        );
        assert_eq!(
            rate_and_phase(&p(Phase::Publishing, 100, 100, 5e6)),
            phase_word(Phase::Publishing)
        );
        assert_eq!(
            rate_and_phase(&p(Phase::Downloading, 0, 100 << 20, (10 << 20) as f64)),
            "10.0 MiB/s, ETA 10 s, downloading"
        );
    }

    #[test]
    fn the_last_frame_says_verified_after_publishing() {
        assert_eq!(final_word(&p(Phase::Publishing, 9, 9, 0.0)), "verified");
        assert_eq!(final_word(&p(Phase::Retrying, 3, 9, 0.0)), "stopped");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(44.2), "45 s");
        assert_eq!(human_duration(600.0), "10 min");
        assert_eq!(human_duration(3.0 * 3600.0), "3.0 h");
    }
}
