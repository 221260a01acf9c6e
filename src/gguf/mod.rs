//! GGUF headers: a parser for the metadata and tensor infos at the start of a
//! GGUF file, and the model facts (architecture, parameters, quantization,
//! context length, ...) derived from them.
//!
//! # Contract
//!
//! - [`parse`] takes a *prefix* of a file (any length, from byte 0) and
//!   returns the [`Header`]: version, every metadata key/value in file order,
//!   every tensor info, the data alignment and the offset where tensor data
//!   starts. When the prefix ends before the tensor infos are complete it
//!   returns [`GgufError::NeedMore`] with the smallest prefix length that can
//!   make progress; the caller fetches at least that much (one Range request)
//!   and calls again. `at_least` is a lower bound (the end of the item that
//!   did not fit plus the least size of every item still announced), so a
//!   remote caller should fetch generously past it (e.g. start with 1 MiB
//!   and at least double) to stay within a few round trips; following it
//!   exactly still converges in a few dozen parses. [`parse_file`] is the same for a file whose length is
//!   known: running past its end is [`GgufError::Truncated`], not `NeedMore`.
//! - Versions 2 and 3, little-endian only (a big-endian file is named as such
//!   in the error). Unknown ggml tensor types are kept as their number.
//! - Hostile input gives a typed error, never a panic, and allocation stays
//!   bounded by a small multiple of the input length: counts from the file
//!   never size an allocation beyond what the remaining bytes could hold,
//!   arrays nest at most [`MAX_ARRAY_DEPTH`] deep, and arrays longer than
//!   [`MAX_KEPT_ARRAY_LEN`] (tokenizer vocabularies, merges) are skipped over
//!   and kept only as their element type and length.
//! - [`Facts`] are plain data derived from a header, stored in a manifest as
//!   a JSON object ([`Facts::to_json`], [`Facts::from_json`]);
//!   [`Facts::memory_estimate`] adds the weights and an f16 KV cache.
//!
//! This module does no I/O: fetching the prefix (local read or HTTP Range)
//! and storing the facts belong to the caller.

mod error;
mod facts;
mod ggml;
mod parse;
mod value;

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod parse_tests;
#[cfg(test)]
pub(crate) mod test_build;

pub use error::GgufError;
pub use facts::{Facts, MemoryEstimate};
pub use ggml::{file_type_name, ggml_type_name, tensor_bytes};
pub use parse::{
    DEFAULT_ALIGNMENT, Header, MAX_ARRAY_DEPTH, MAX_DIMS, MAX_KEPT_ARRAY_LEN, TensorInfo, parse,
    parse_file,
};
pub use value::{ArrayValue, Value, ValueType};

/// The most of a local file [`facts_of_file`] reads: a header is rarely
/// more than a few MiB (the tokenizer), and never worth reading a model.
pub const MAX_LOCAL_HEAD: u64 = 16 << 20;

/// The facts of the GGUF file at `file` (of `len` bytes), from its header
/// alone: reads 1 MiB, then twice what the parser says it still needs, up
/// to [`MAX_LOCAL_HEAD`].
pub fn facts_of_file(file: &std::fs::File, len: u64) -> Result<Facts, GgufError> {
    use std::os::unix::fs::FileExt;
    let mut want = (1u64 << 20).min(len);
    let mut bytes = Vec::new();
    loop {
        let have = bytes.len() as u64;
        bytes.resize(want as usize, 0);
        let mut at = have;
        while at < want {
            match file.read_at(&mut bytes[at as usize..], at) {
                Ok(0) => break,
                Ok(n) => at += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(GgufError::Io(e.to_string())),
            }
        }
        bytes.truncate(at as usize);
        match parse_file(&bytes, len) {
            Ok(header) => return Ok(Facts::from_header(&header)),
            Err(GgufError::NeedMore { at_least }) if at_least <= MAX_LOCAL_HEAD && at == want => {
                want = at_least
                    .saturating_mul(2)
                    .clamp(at_least, MAX_LOCAL_HEAD)
                    .min(len);
            }
            Err(e) => return Err(e),
        }
    }
}
