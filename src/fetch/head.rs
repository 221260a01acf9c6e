//! Reading the first bytes of a remote file by `Range` requests, for a
//! parser that says how many more it needs (a GGUF header: its metadata
//! and tensor infos, before any tensor data).
//!
//! Bounded: at most [`MAX_HEAD`] bytes and [`MAX_REQUESTS`] requests, each
//! asking for twice what the parser last said it needs (1 MiB first), so a
//! header of a few MiB (a tokenizer vocabulary) takes two or three round
//! trips and a hostile one can never make us download the model.

use super::error::FetchErrorKind;
use super::pipeline::Fetcher;

/// The most bytes read for one head.
pub const MAX_HEAD: u64 = 16 << 20;
/// The most requests made for one head.
pub const MAX_REQUESTS: u32 = 4;
const FIRST_REQUEST: u64 = 1 << 20;

/// What a parser said about the bytes it was given.
pub enum HeadStep<T> {
    Done(T),
    /// It needs at least this many bytes from the start.
    NeedMore(u64),
    /// The bytes are not what it parses; `String` says why.
    Invalid(String),
}

/// Why a head could not be read.
#[derive(Debug)]
pub enum HeadError {
    Fetch(FetchErrorKind),
    /// The origin does not answer ranges (a 200 with the whole file): the
    /// head is not read rather than the whole model downloaded.
    NoRanges(u16),
    Invalid(String),
    /// The parser wanted more than [`MAX_HEAD`] or [`MAX_REQUESTS`] allow.
    TooLarge {
        wanted: u64,
    },
}

impl std::fmt::Display for HeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fetch(e) => write!(f, "{e}"),
            Self::NoRanges(code) => write!(
                f,
                "the origin does not serve byte ranges (HTTP {code}), so the header was not read"
            ),
            Self::Invalid(why) => write!(f, "the header does not parse: {why}"),
            Self::TooLarge { wanted } => write!(
                f,
                "the header needs more than {} MiB ({wanted} bytes); not read",
                MAX_HEAD >> 20
            ),
        }
    }
}

impl Fetcher {
    /// Reads the head of `url` (of `size` bytes, if known) until `parse`
    /// is done with it; see the module doc.
    pub fn read_head<T>(
        &self,
        url: &str,
        size: Option<u64>,
        mut parse: impl FnMut(&[u8]) -> HeadStep<T>,
    ) -> Result<T, HeadError> {
        let mut bytes: Vec<u8> = Vec::new();
        let mut want = FIRST_REQUEST;
        for _ in 0..MAX_REQUESTS {
            let end = size.map_or(want, |s| want.min(s));
            if end > bytes.len() as u64 {
                self.read_more(url, &mut bytes, end)?;
            }
            match parse(&bytes) {
                HeadStep::Done(t) => return Ok(t),
                HeadStep::Invalid(why) => return Err(HeadError::Invalid(why)),
                HeadStep::NeedMore(n) if n > MAX_HEAD => {
                    return Err(HeadError::TooLarge { wanted: n });
                }
                HeadStep::NeedMore(n) if size.is_some_and(|s| n > s) => {
                    return Err(HeadError::Invalid(format!(
                        "it needs {n} bytes, the file has {}",
                        size.unwrap_or(0)
                    )));
                }
                HeadStep::NeedMore(n) => want = n.saturating_mul(2).clamp(n, MAX_HEAD),
            }
        }
        Err(HeadError::TooLarge {
            wanted: want.max(bytes.len() as u64),
        })
    }

    /// Appends bytes `[bytes.len(), end)` of `url`.
    fn read_more(&self, url: &str, bytes: &mut Vec<u8>, end: u64) -> Result<(), HeadError> {
        let start = bytes.len() as u64;
        let mut resp = self
            .http()
            .get_range(url, start, end, None)
            .map_err(HeadError::Fetch)?;
        match (resp.status, resp.content_range_span()) {
            (206, Some((s, _, _))) if s == start => {}
            (206, _) | (200, _) => return Err(HeadError::NoRanges(resp.status)),
            (code, _) => {
                return Err(HeadError::Fetch(FetchErrorKind::Status {
                    code,
                    retry_after: resp.retry_after(),
                }));
            }
        }
        let mut buf = vec![0u8; 64 << 10];
        while (bytes.len() as u64) < end {
            let room = buf.len().min((end - bytes.len() as u64) as usize);
            match resp.read(&mut buf[..room]).map_err(HeadError::Fetch)? {
                0 => break,
                n => bytes.extend_from_slice(&buf[..n]),
            }
        }
        Ok(())
    }
}

impl Fetcher {
    /// The facts of the remote GGUF at `url` (`size` bytes), from its
    /// header alone; see the module doc for the bounds.
    pub fn gguf_facts(&self, url: &str, size: u64) -> Result<crate::gguf::Facts, HeadError> {
        use crate::gguf::{Facts, GgufError, parse_file};
        self.read_head(url, Some(size), |bytes| match parse_file(bytes, size) {
            Ok(header) => HeadStep::Done(Facts::from_header(&header)),
            // A lower bound: ask for a good deal more (see read_head).
            Err(GgufError::NeedMore { at_least }) => HeadStep::NeedMore(at_least),
            Err(e) => HeadStep::Invalid(e.to_string()),
        })
    }
}
