//! What to send for a blob request, from its `Range` and `If-Range`
//! headers: plain decisions on plain values.
//!
//! A blob never changes (its name is its digest), so its `ETag` is the
//! digest itself, strong, and an `If-Range` naming anything else asks for
//! another version: the whole blob is sent. One range gets `206` with
//! `Content-Range`; several ranges get the whole blob (RFC 9110 lets a
//! server ignore `Range`, and no client of ours asks for several); a range
//! past the end gets `416` with `Content-Range: bytes */<size>`; a header
//! that does not parse is ignored.

use http_range_header::{RangeUnsatisfiableError, parse_range_header};

/// The answer's status and the bytes `[start, start + len)` of the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Whole { len: u64 },
    Part { start: u64, len: u64, size: u64 },
    Unsatisfiable { size: u64 },
}

/// The strong ETag of a blob with this hex digest.
pub fn etag(hex: &str) -> String {
    format!("\"sha256:{hex}\"")
}

/// Decides the answer for a blob of `size` bytes whose ETag is `etag`.
pub fn answer(size: u64, etag: &str, range: Option<&str>, if_range: Option<&str>) -> Answer {
    let whole = Answer::Whole { len: size };
    let Some(range) = range else { return whole };
    if if_range.is_some_and(|v| v.trim() != etag) {
        return whole;
    }
    let parsed = match parse_range_header(range) {
        Ok(p) => p,
        Err(_) => return whole,
    };
    match parsed.validate(size) {
        Ok(ranges) if ranges.len() == 1 => {
            let r = &ranges[0];
            Answer::Part {
                start: *r.start(),
                len: r.end() - r.start() + 1,
                size,
            }
        }
        // A start at or past the end.
        Err(RangeUnsatisfiableError::RangeReversed) => Answer::Unsatisfiable { size },
        // Several ranges, overlapping ones, a suffix longer than the blob.
        _ => whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_answered_as_a_download_client_expects() {
        let e = etag("ab");
        assert_eq!(answer(100, &e, None, None), Answer::Whole { len: 100 });
        assert_eq!(
            answer(100, &e, Some("bytes=10-19"), None),
            Answer::Part {
                start: 10,
                len: 10,
                size: 100
            }
        );
        assert_eq!(
            answer(100, &e, Some("bytes=90-"), Some(&e)),
            Answer::Part {
                start: 90,
                len: 10,
                size: 100
            }
        );
        assert_eq!(
            answer(100, &e, Some("bytes=-5"), None),
            Answer::Part {
                start: 95,
                len: 5,
                size: 100
            }
        );
        assert_eq!(
            answer(100, &e, Some("bytes=10-19"), Some("\"other\"")),
            Answer::Whole { len: 100 },
            "another version asked for: the whole blob"
        );
        assert_eq!(
            answer(100, &e, Some("bytes=0-1,5-6"), None),
            Answer::Whole { len: 100 }
        );
        assert_eq!(
            answer(100, &e, Some("bytes=100-"), None),
            Answer::Unsatisfiable { size: 100 }
        );
        assert_eq!(
            answer(100, &e, Some("bytes=-500"), None),
            Answer::Whole { len: 100 }
        );
        assert_eq!(
            answer(100, &e, Some("items=1-2"), None),
            Answer::Whole { len: 100 }
        );
        // A range past the end is cut to the end.
        assert_eq!(
            answer(100, &e, Some("bytes=50-500"), None),
            Answer::Part {
                start: 50,
                len: 50,
                size: 100
            }
        );
    }
}
