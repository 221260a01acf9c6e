//! A response body read from a file off the async workers: each chunk is
//! one `pread` on the blocking pool, started when the connection asks for
//! the next frame. A slow client therefore holds one chunk in memory and
//! no thread, and any number of responses share the pool.

use std::fs::File;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::task::JoinHandle;

const CHUNK: usize = 256 << 10;

/// Bytes `[start, start + len)` of a file, a short text, or nothing.
pub struct FileBody {
    once: Option<Bytes>,
    file: Option<Arc<File>>,
    at: u64,
    end: u64,
    reading: Option<JoinHandle<std::io::Result<Bytes>>>,
}

impl FileBody {
    pub fn empty() -> Self {
        Self {
            once: None,
            file: None,
            at: 0,
            end: 0,
            reading: None,
        }
    }

    /// A line of text (what an error answer says).
    pub fn text(s: &str) -> Self {
        Self {
            once: Some(Bytes::from(format!("{s}\n"))),
            ..Self::empty()
        }
    }

    /// The bytes this body has yet to send.
    pub fn len(&self) -> u64 {
        self.once.as_ref().map_or(0, |b| b.len() as u64) + (self.end - self.at)
    }

    /// The range of `file`; polled inside the runtime.
    pub fn range(file: Arc<File>, start: u64, len: u64) -> Self {
        Self {
            file: Some(file),
            at: start,
            end: start + len,
            ..Self::empty()
        }
    }
}

/// Reads the chunk at `at` (at most `want` bytes).
fn read_chunk(file: &File, at: u64, want: usize) -> std::io::Result<Bytes> {
    let mut buf = vec![0u8; want];
    match file.read_at(&mut buf, at)? {
        0 => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the blob file is shorter than it was",
        )),
        n => {
            buf.truncate(n);
            Ok(Bytes::from(buf))
        }
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Some(b) = self.once.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if self.at >= self.end {
            return Poll::Ready(None);
        }
        let Some(file) = self.file.clone() else {
            return Poll::Ready(None);
        };
        let (at, want) = (self.at, CHUNK.min((self.end - self.at) as usize));
        let reading = self.reading.get_or_insert_with(|| {
            tokio::task::spawn_blocking(move || read_chunk(&file, at, want))
        });
        let done = match Pin::new(reading).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r,
        };
        self.reading = None;
        let chunk = match done {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                self.at = self.end;
                return Poll::Ready(Some(Err(e)));
            }
            Err(e) => {
                self.at = self.end;
                return Poll::Ready(Some(Err(std::io::Error::other(e))));
            }
        };
        self.at += chunk.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.once.is_none() && self.at >= self.end
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len())
    }
}
