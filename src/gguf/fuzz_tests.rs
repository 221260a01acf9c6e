//! Property test: thousands of mutated and truncated headers per run, each
//! parsed without a panic and within an allocation bound.
//!
//! The bound is measured, not inferred: this test binary's global allocator
//! counts the bytes live on a thread while that thread asks it to (and only
//! then), so a parse that reserves room for a hostile count fails here even
//! when it then gives up with an error.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use super::test_build::*;
use super::*;

/// The system allocator, plus per-thread live/peak byte counts while
/// `TRACKING` is set on that thread.
struct Counting;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note(grown: usize, shrunk: usize) {
    // try_with: the allocator also runs while thread locals are torn down.
    let _ = TRACKING.try_with(|t| {
        if t.get() {
            let live = LIVE.with(|l| {
                let live = l.get().saturating_sub(shrunk).saturating_add(grown);
                l.set(live);
                live
            });
            PEAK.with(|p| p.set(p.get().max(live)));
        }
    });
}

// SAFETY: every call is forwarded to `System` unchanged; the counting
// touches only const-initialised thread locals, which do not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size(), 0);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size(), 0);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded; the caller guarantees ptr came from us.
        unsafe { System.dealloc(ptr, layout) };
        note(0, layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded; the caller guarantees ptr and layout.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(new_size, layout.size());
        }
        p
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Runs `f` and returns its result with the most bytes it had live at once.
pub(super) fn peak_bytes<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    TRACKING.with(|t| t.set(true));
    let out = f();
    TRACKING.with(|t| t.set(false));
    (out, PEAK.with(Cell::get))
}

/// Marsaglia's xorshift64: deterministic, so a failure names its seed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Valid headers that exercise every value type, nesting and long arrays.
fn seeds() -> Vec<Vec<u8>> {
    let mut rich = Gguf::header(3, 2, 6);
    rich.kv_str("general.architecture", "llama")
        .kv_u32("general.alignment", 64)
        .kv_tokens("tokenizer.ggml.tokens", 80);
    rich.key("nested", T_ARRAY).u32(T_ARRAY).u64(2);
    rich.u32(T_F64).u64(1).u64(0).u32(T_BOOL).u64(2).u8(1).u8(0);
    rich.key("i16", T_I16)
        .u16(7)
        .key("scores", T_ARRAY)
        .u32(T_F32)
        .u64(70);
    rich.raw(&[0; 280]);
    rich.tensor("a", &[32, 2, 2, 2], 2, 0)
        .tensor("b", &[3], 99, 64);
    let mut v2 = Gguf::header(2, 1, 1);
    v2.kv_u64("x.block_count", 3).tensor("w", &[4, 4], 1, 0);
    vec![sample(), rich.bytes, v2.bytes]
}

/// One random change: flip bytes, write a hostile number, cut, or splice.
fn mutate(rng: &mut XorShift, input: &mut Vec<u8>) {
    if input.is_empty() {
        return;
    }
    let at = rng.below(input.len());
    match rng.below(6) {
        0 => input[at] ^= 1 << rng.below(8),
        1 => input[at] = rng.next() as u8,
        2 => {
            let hostile = [u64::MAX, u64::MAX / 2, 1 << 32, 0, 5, 13, 65];
            let v = hostile[rng.below(hostile.len())].to_le_bytes();
            let n = (input.len() - at).min(if rng.below(2) == 0 { 4 } else { 8 });
            input[at..at + n].copy_from_slice(&v[..n]);
        }
        3 => input.truncate(at),
        4 => {
            let from = rng.below(input.len());
            let n = rng.below(32).min(input.len() - from);
            let piece = input[from..from + n].to_vec();
            input.splice(at..at, piece);
        }
        _ => {
            let n = rng.below(16).min(input.len() - at);
            input.drain(at..at + n);
        }
    }
}

/// Retained bytes allowed per input byte: the worst case is a kept array of
/// one-byte values, each a `Value` in memory.
const RETAINED_PER_INPUT_BYTE: usize = std::mem::size_of::<Value>() + 8;
/// Peak bytes allowed per input byte while parsing: the retained header plus
/// the sets that find duplicate keys and names.
const PEAK_PER_INPUT_BYTE: usize = 2 * RETAINED_PER_INPUT_BYTE;

/// Parses one input, asserting no panic and the bound; returns the outcome
/// kind (0 ok, 1 need more, 2 other error) so that a test can show it reached
/// every kind.
fn check(input: &[u8], case: &str) -> usize {
    let (result, peak) = peak_bytes(|| std::panic::catch_unwind(|| parse(input)));
    let Ok(result) = result else {
        panic!("parse panicked on {case}: {input:02x?}");
    };
    let peak_bound = PEAK_PER_INPUT_BYTE * input.len() + 4096;
    assert!(
        peak <= peak_bound,
        "{case}: parsing {} bytes had {peak} bytes allocated at once ({result:?})",
        input.len()
    );
    if let Ok(h) = &result {
        let bound = RETAINED_PER_INPUT_BYTE * input.len() + 1024;
        assert!(
            h.retained_bytes() <= bound,
            "{case}: {} retained bytes for {} input bytes",
            h.retained_bytes(),
            input.len()
        );
        let _ = Facts::from_header(h).to_json();
    }
    if let Err(GgufError::NeedMore { at_least }) = result {
        assert!(
            at_least > input.len() as u64,
            "{case}: NeedMore must ask for more"
        );
    }
    match result {
        Ok(_) => 0,
        Err(GgufError::NeedMore { .. }) => 1,
        Err(_) => 2,
    }
}

#[test]
fn mutated_and_truncated_headers_never_panic_and_stay_within_the_allocation_bound() {
    let seeds = seeds();
    for s in &seeds {
        parse(s).expect("seed headers are valid");
    }
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let cases = 20_000;
    let mut outcomes = [0usize; 3];
    for i in 0..cases {
        let mut input = seeds[i % seeds.len()].clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut input);
        }
        outcomes[check(&input, &format!("case {i}"))] += 1;
    }
    // The mutations reach past the first field: many still parse, many
    // stop early, many are refused.
    assert!(outcomes.iter().all(|&n| n > cases / 20), "{outcomes:?}");
}

#[test]
fn random_bytes_after_a_valid_prefix_never_panic() {
    let mut rng = XorShift(42);
    for i in 0..5_000 {
        let mut g = Gguf::header(3, rng.next() % 8, rng.next() % 8);
        for _ in 0..rng.below(200) {
            g.u8(rng.next() as u8);
        }
        let _ = check(&g.bytes, &format!("random {i}"));
    }
}

#[test]
fn a_kept_array_of_bytes_is_the_worst_case_and_stays_within_the_bound() {
    let mut g = Gguf::header(3, 0, 1);
    g.key("k", T_ARRAY).u32(T_U8).u64(MAX_KEPT_ARRAY_LEN);
    g.raw(&vec![1; MAX_KEPT_ARRAY_LEN as usize]);
    assert_eq!(check(&g.bytes, "kept u8 array"), 0);
}

#[test]
fn the_allocation_counter_sees_what_a_thread_allocates() {
    let (v, peak) = peak_bytes(|| vec![7u8; 100_000]);
    assert!(peak >= 100_000, "{peak}");
    drop(v);
    let (_, peak) = peak_bytes(|| Gguf::header(3, u64::MAX, u64::MAX).bytes.len());
    assert!(peak < 1024, "{peak}");
}
