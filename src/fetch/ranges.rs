//! The range scheduler of a parallel download: which byte ranges of a blob
//! are done, which are being fetched, and which to hand out next.
//!
//! Plain types, no I/O. The blob `[0, size)` starts with a prefix that is
//! already in the partial file and hashed (`start`). The rest is cut into
//! ranges of at most `chunk` bytes, handed out lowest first so that the
//! contiguous prefix, which the hasher follows, grows as the bytes arrive.
//! Shared among `n` connections ([`Ranges::share_among`]), a range is at
//! most half of each connection's share of what is left, so the last
//! ranges shrink towards [`MIN_SPLIT`] and the connections finish about
//! together: splitting a range late costs the bytes its server already
//! had in flight, and a new connection.
//! A worker reports each write; a range whose worker failed goes back to
//! the pool from the first byte it did not write. When nothing is left to
//! hand out, an idle worker takes the upper half of the in-flight range
//! with the most bytes left (a straggler would otherwise decide the
//! download's end): the range's owner sees its end moved down and stops
//! there.
//!
//! Promise: every byte of `[start, size)` is handed out until it is written
//! exactly once as far as the scheduler knows (two workers may briefly
//! fetch the same bytes after a split; only the owner of a byte may report
//! writing it), and [`Ranges::frontier`] never passes a byte not reported
//! written.

use std::collections::BTreeMap;

/// Ranges smaller than this are never split again: the second connection
/// would spend longer starting than the first needs to finish.
pub const MIN_SPLIT: u64 = 2 << 20;

/// One range handed to a worker: `[start, end)`, with `id` naming it in
/// later reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub id: u64,
    pub start: u64,
    pub end: u64,
}

/// What the scheduler knows about one blob.
#[derive(Debug)]
pub struct Ranges {
    size: u64,
    chunk: u64,
    /// Bytes at or above this have never been handed out.
    next: u64,
    /// Handed back after a failure: `start → end`, handed out again first.
    pool: BTreeMap<u64, u64>,
    /// In flight: `id → (written up to, end)`.
    active: BTreeMap<u64, (u64, u64)>,
    /// Written: disjoint `start → end`, adjacent ones merged.
    done: BTreeMap<u64, u64>,
    next_id: u64,
    /// Connections the rest is shared among (0: ranges of `chunk`).
    share: u64,
}

impl Ranges {
    /// A blob of `size` bytes whose first `start` bytes are done.
    pub fn new(size: u64, start: u64, chunk: u64) -> Self {
        let mut done = BTreeMap::new();
        if start > 0 {
            done.insert(0, start.min(size));
        }
        Self {
            size,
            chunk: chunk.max(1),
            next: start.min(size),
            pool: BTreeMap::new(),
            active: BTreeMap::new(),
            done,
            next_id: 0,
            share: 0,
        }
    }

    /// Sizes new ranges for `n` connections (see the module doc).
    pub fn share_among(&mut self, n: usize) {
        self.share = n as u64;
    }

    /// Marks `[start, end)` as already written (kept from an earlier run).
    pub fn mark_done(&mut self, start: u64, end: u64) {
        let end = end.min(self.size);
        if start >= end || start < self.next {
            return;
        }
        if start > self.next {
            self.pool.insert(self.next, start);
        }
        self.next = end;
        self.add_done(start, end);
    }

    /// The next range to fetch, or `None` when every byte is done or in
    /// flight and no in-flight range is worth splitting.
    pub fn take(&mut self) -> Option<Range> {
        let (start, end) = if let Some((&s, &e)) = self.pool.iter().next() {
            self.pool.remove(&s);
            let e2 = e.min(s + self.chunk);
            if e2 < e {
                self.pool.insert(e2, e);
            }
            (s, e2)
        } else if self.next < self.size {
            let s = self.next;
            let e = match self.share {
                0 => (s + self.chunk).min(self.size),
                n => {
                    let left = self.size - s;
                    let len = (left / (2 * n)).clamp(MIN_SPLIT, self.chunk.max(MIN_SPLIT));
                    // No range smaller than a split is left behind.
                    if left - len.min(left) < MIN_SPLIT {
                        self.size
                    } else {
                        s + len
                    }
                }
            };
            self.next = e;
            (s, e)
        } else {
            return self.split();
        };
        Some(self.activate(start, end))
    }

    /// Takes the upper half of the in-flight range with the most left.
    fn split(&mut self) -> Option<Range> {
        let (&id, &(pos, end)) = self.active.iter().max_by_key(|(_, (pos, end))| end - pos)?;
        if end - pos < 2 * MIN_SPLIT {
            return None;
        }
        let mid = pos + (end - pos) / 2;
        self.active.insert(id, (pos, mid));
        Some(self.activate(mid, end))
    }

    fn activate(&mut self, start: u64, end: u64) -> Range {
        let id = self.next_id;
        self.next_id += 1;
        self.active.insert(id, (start, end));
        Range { id, start, end }
    }

    /// Whether [`Ranges::take`] would hand out a range now.
    pub fn can_take(&self) -> bool {
        !self.pool.is_empty()
            || self.next < self.size
            || self
                .active
                .values()
                .any(|(pos, end)| end - pos >= 2 * MIN_SPLIT)
    }

    /// Where range `id` ends now (a split moves it down); `None` once it
    /// is finished or was given back.
    pub fn end_of(&self, id: u64) -> Option<u64> {
        self.active.get(&id).map(|&(_, end)| end)
    }

    /// Range `id` wrote `[pos, to)`, `pos` being where it had got to.
    /// Bytes past its current end are not counted (after a split they
    /// belong to another range). Returns where the range ends now (a split
    /// moves it down), or `None` once it is finished: the worker learns
    /// both from the one lock it takes per write.
    pub fn wrote(&mut self, id: u64, to: u64) -> Option<u64> {
        let &(pos, end) = self.active.get(&id)?;
        let to = to.min(end);
        if to > pos {
            self.add_done(pos, to);
        }
        if to >= end {
            self.active.remove(&id);
            None
        } else {
            self.active.insert(id, (to.max(pos), end));
            Some(end)
        }
    }

    /// Range `id` failed: what it did not write goes back to the pool.
    pub fn give_back(&mut self, id: u64) {
        if let Some((pos, end)) = self.active.remove(&id)
            && pos < end
        {
            self.pool.insert(pos, end);
        }
    }

    /// The end of the contiguous prefix of written bytes.
    pub fn frontier(&self) -> u64 {
        match self.done.get(&0) {
            Some(&end) => end,
            None => 0,
        }
    }

    /// Bytes written so far (the prefix and every finished piece).
    pub fn written(&self) -> u64 {
        self.done.iter().map(|(s, e)| e - s).sum()
    }

    /// Every byte written.
    pub fn complete(&self) -> bool {
        self.frontier() >= self.size
    }

    /// Ranges in flight.
    pub fn in_flight(&self) -> usize {
        self.active.len()
    }

    /// The written pieces from `from` on (a prefix up to `from` being
    /// accounted for elsewhere), for a resume record.
    pub fn written_beyond(&self, from: u64) -> Vec<(u64, u64)> {
        self.done
            .iter()
            .filter(|&(_, &e)| e > from)
            .map(|(&s, &e)| (s.max(from), e))
            .collect()
    }

    fn add_done(&mut self, mut start: u64, mut end: u64) {
        // Merge with a piece ending at or after `start` that begins before.
        if let Some((&s, &e)) = self.done.range(..=start).next_back()
            && e >= start
        {
            start = s;
            end = end.max(e);
            self.done.remove(&s);
        }
        while let Some((&s, &e)) = self.done.range(start..=end).next() {
            end = end.max(e);
            self.done.remove(&s);
        }
        self.done.insert(start, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    #[test]
    fn ranges_are_handed_out_lowest_first_and_the_frontier_follows_in_order() {
        let mut r = Ranges::new(10 * M, 0, 4 * M);
        let a = r.take().unwrap();
        let b = r.take().unwrap();
        let c = r.take().unwrap();
        assert_eq!(
            (a.start, a.end, b.start, c.start, c.end),
            (0, 4 * M, 4 * M, 8 * M, 10 * M)
        );
        assert_eq!(r.wrote(b.id, 8 * M), None);
        assert_eq!(r.frontier(), 0, "a hole before b");
        r.wrote(a.id, M);
        assert_eq!(r.frontier(), M);
        assert_eq!(r.wrote(a.id, 4 * M), None);
        assert_eq!(r.frontier(), 8 * M, "a joins b");
        assert!(!r.complete());
        r.wrote(c.id, 10 * M);
        assert!(r.complete());
        assert_eq!(r.written(), 10 * M);
    }

    #[test]
    fn a_failed_range_goes_back_from_its_first_unwritten_byte_and_is_taken_first() {
        let mut r = Ranges::new(12 * M, 0, 4 * M);
        let a = r.take().unwrap();
        let _b = r.take().unwrap();
        r.wrote(a.id, 3 * M);
        r.give_back(a.id);
        let again = r.take().unwrap();
        assert_eq!((again.start, again.end), (3 * M, 4 * M));
        assert_eq!(r.end_of(a.id), None);
        // A late write of the failed range counts for nothing.
        assert_eq!(r.wrote(a.id, 4 * M), None);
        assert_eq!(r.frontier(), 3 * M);
    }

    #[test]
    fn an_idle_worker_takes_the_upper_half_of_the_slowest_range() {
        let mut r = Ranges::new(16 * M, 0, 8 * M);
        let a = r.take().unwrap();
        let b = r.take().unwrap();
        assert_eq!(r.wrote(b.id, 16 * M), None);
        r.wrote(a.id, 2 * M);
        let s = r.take().unwrap();
        assert_eq!((s.start, s.end), (5 * M, 8 * M));
        assert_eq!(r.end_of(a.id), Some(5 * M), "the straggler stops halfway");
        // The straggler's bytes past its new end are not its own.
        assert_eq!(r.wrote(a.id, 6 * M), None);
        assert_eq!(r.frontier(), 5 * M);
        assert_eq!(r.wrote(s.id, 8 * M), None);
        assert!(r.complete());
    }

    #[test]
    fn shared_among_connections_the_last_ranges_shrink_so_they_end_together() {
        let mut r = Ranges::new(256 * M, 0, 8 * M);
        r.share_among(8);
        let mut sizes = Vec::new();
        while let Some(x) = r.take() {
            sizes.push((x.end - x.start) / M);
            r.wrote(x.id, x.end);
        }
        assert_eq!(&sizes[..4], [8, 8, 8, 8], "large while much is left");
        assert!(sizes.windows(2).all(|w| w[1] <= w[0]), "{sizes:?}");
        assert!((2..4).contains(sizes.last().unwrap()), "{sizes:?}");
        assert!(r.complete());
    }

    #[test]
    fn small_remainders_are_not_split() {
        let mut r = Ranges::new(3 * M, 0, 3 * M);
        let a = r.take().unwrap();
        r.wrote(a.id, M);
        assert_eq!(r.take(), None, "2 MiB left: not worth a second connection");
    }

    #[test]
    fn a_kept_prefix_and_kept_pieces_are_not_fetched_again() {
        let mut r = Ranges::new(20 * M, 5 * M, 4 * M);
        r.mark_done(9 * M, 13 * M);
        assert_eq!(r.frontier(), 5 * M);
        let mut got = Vec::new();
        while let Some(x) = r.take() {
            got.push((x.start, x.end));
            r.wrote(x.id, x.end);
        }
        assert_eq!(got, [(5 * M, 9 * M), (13 * M, 17 * M), (17 * M, 20 * M)]);
        assert!(r.complete());
        assert_eq!(r.written_beyond(20 * M), []);
    }

    #[test]
    fn the_resume_record_lists_what_is_written_beyond_the_frontier() {
        let mut r = Ranges::new(12 * M, 0, 4 * M);
        let _a = r.take().unwrap();
        let b = r.take().unwrap();
        let c = r.take().unwrap();
        r.wrote(b.id, 6 * M);
        r.wrote(c.id, 12 * M);
        assert_eq!(r.written_beyond(0), [(4 * M, 6 * M), (8 * M, 12 * M)]);
        r.wrote(0, M);
        assert_eq!(
            r.written_beyond(M / 2),
            [(M / 2, M), (4 * M, 6 * M), (8 * M, 12 * M)]
        );
    }
}
