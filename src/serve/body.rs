//! A response body read from a file off the async workers: a blocking
//! task reads chunks with `pread` and hands them over a small channel, so
//! a slow client holds at most a few chunks in memory.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

const CHUNK: usize = 256 << 10;
const DEPTH: usize = 4;

/// Bytes `[start, start + len)` of a file, a short text, or nothing.
pub struct FileBody {
    once: Option<Bytes>,
    rx: Option<mpsc::Receiver<std::io::Result<Bytes>>>,
    left: u64,
}

impl FileBody {
    pub fn empty() -> Self {
        Self {
            once: None,
            rx: None,
            left: 0,
        }
    }

    /// A line of text (what an error answer says).
    pub fn text(s: &str) -> Self {
        let b = Bytes::from(format!("{s}\n"));
        Self {
            left: b.len() as u64,
            once: Some(b),
            rx: None,
        }
    }

    pub fn len(&self) -> u64 {
        self.left
    }

    /// Streams the range; must be called inside the runtime.
    pub fn range(file: Arc<File>, start: u64, len: u64) -> Self {
        let (tx, rx) = mpsc::channel(DEPTH);
        tokio::task::spawn_blocking(move || {
            let mut at = start;
            let end = start + len;
            while at < end {
                let want = CHUNK.min((end - at) as usize);
                let mut buf = vec![0u8; want];
                let sent = match file.read_at(&mut buf, at) {
                    Ok(0) => tx.blocking_send(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the blob file is shorter than it was",
                    ))),
                    Ok(n) => {
                        buf.truncate(n);
                        at += n as u64;
                        tx.blocking_send(Ok(Bytes::from(buf)))
                    }
                    Err(e) => tx.blocking_send(Err(e)),
                };
                // The client went away, or the read failed (sent above).
                if sent.is_err() || at < end && tx.is_closed() {
                    return;
                }
            }
        });
        Self {
            once: None,
            rx: Some(rx),
            left: len,
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
            self.left = 0;
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        match rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => {
                self.left = self.left.saturating_sub(b.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}
