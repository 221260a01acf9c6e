//! What an import checks of a file before it hashes and places it: that
//! its bytes are of the format the manifest will claim. A GGUF file starts
//! with the four bytes `GGUF`; a file that does not (a safetensors file, a
//! tarball, a download's HTML error page) is refused unless the format
//! named is another one, whose contents are not checked.

use std::io::{self, Read};
use std::path::Path;

/// The first bytes of every GGUF file.
pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// Why `path` is not of the format claimed.
#[derive(Debug)]
pub enum MagicError {
    /// Its first bytes could not be read.
    Read(io::Error),
    /// It does not start with [`GGUF_MAGIC`]; `head` describes what it
    /// starts with instead.
    NotGguf { head: String },
}

/// Refuses `path` as a model of `format` when its first bytes say it is
/// not of that format (checked for `gguf` only).
pub fn check_magic(path: &Path, format: &str) -> Result<(), MagicError> {
    if format != "gguf" {
        return Ok(());
    }
    let mut head = Vec::with_capacity(GGUF_MAGIC.len());
    std::fs::File::open(path)
        .and_then(|f| f.take(GGUF_MAGIC.len() as u64).read_to_end(&mut head))
        .map_err(MagicError::Read)?;
    if head == GGUF_MAGIC {
        return Ok(());
    }
    Err(MagicError::NotGguf {
        head: describe_head(&head),
    })
}

/// The first bytes as text when they are printable ASCII, else as hex.
fn describe_head(head: &[u8]) -> String {
    if head.is_empty() {
        return "nothing: it is empty".into();
    }
    if head.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        return format!("{:?}", String::from_utf8_lossy(head));
    }
    let hex: Vec<String> = head.iter().map(|b| format!("{b:02x}")).collect();
    format!("bytes {}", hex.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_are_described_as_text_or_hex() {
        assert_eq!(describe_head(b"PK\x03\x04"), "bytes 50 4b 03 04");
        assert_eq!(describe_head(b"<htm"), "\"<htm\"");
        assert_eq!(describe_head(b""), "nothing: it is empty");
    }
}
