//! Why a GGUF header could not be parsed.

use std::fmt;

/// A GGUF header that could not be parsed (yet). Offsets are byte offsets
/// from the start of the file. The caller adds which model it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GgufError {
    /// The prefix ended before the tensor infos were complete: parse again
    /// with a prefix of at least `at_least` bytes. `at_least` already counts
    /// the smallest possible size of the items still to come, so a caller
    /// with a byte budget can give up early.
    NeedMore { at_least: u64 },
    /// The whole file was given and it ends before the header does.
    Truncated { at_least: u64, file_len: u64 },
    /// The file does not start with `GGUF`.
    BadMagic { found: [u8; 4] },
    /// A version this parser does not read (only 2 and 3 are).
    UnsupportedVersion { version: u32 },
    /// The version reads correctly byte-swapped: a big-endian GGUF.
    BigEndian { version: u32 },
    /// A metadata value type id that GGUF does not define.
    UnknownValueType { type_id: u32, offset: u64 },
    /// Arrays nested deeper than [`crate::gguf::MAX_ARRAY_DEPTH`].
    ArrayTooDeep { offset: u64, limit: usize },
    /// A length or count whose end does not fit in 64 bits.
    LengthOverflow { offset: u64 },
    /// A key or tensor name that is not UTF-8.
    InvalidName { offset: u64 },
    /// The same metadata key twice.
    DuplicateKey { key: String },
    /// The same tensor name twice.
    DuplicateTensor { name: String },
    /// A tensor with more dimensions than ggml supports.
    TooManyDims {
        tensor: String,
        n_dims: u32,
        limit: usize,
    },
    /// A tensor whose element count does not fit in a signed 64-bit integer.
    DimsOverflow { tensor: String },
    /// `general.alignment` is not a non-zero power of two of type u32.
    BadAlignment { found: String },
    /// The local file could not be read (`facts_of_file`).
    Io(String),
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GgufError::NeedMore { at_least } => write!(
                f,
                "GGUF header continues past the bytes read: read at least the first {at_least} bytes and parse again"
            ),
            GgufError::Truncated { at_least, file_len } => write!(
                f,
                "GGUF header is truncated: it needs at least {at_least} bytes but the file has {file_len}; the file is damaged or incomplete, download it again"
            ),
            GgufError::BadMagic { found } => write!(
                f,
                "not a GGUF file: it starts with bytes {:02x} {:02x} {:02x} {:02x}, not \"GGUF\"",
                found[0], found[1], found[2], found[3]
            ),
            GgufError::UnsupportedVersion { version } => write!(
                f,
                "GGUF version {version} is not supported (only versions 2 and 3 are); convert the model with a current llama.cpp"
            ),
            GgufError::BigEndian { version } => write!(
                f,
                "big-endian GGUF (version {version}) is not supported; use the little-endian file"
            ),
            GgufError::UnknownValueType { type_id, offset } => write!(
                f,
                "GGUF metadata at byte {offset} has unknown value type {type_id}: the file is damaged or from a newer GGUF"
            ),
            GgufError::ArrayTooDeep { offset, limit } => write!(
                f,
                "GGUF metadata at byte {offset} nests arrays deeper than {limit} levels: the file is damaged or hostile"
            ),
            GgufError::LengthOverflow { offset } => write!(
                f,
                "GGUF length at byte {offset} is larger than any file: the file is damaged or hostile"
            ),
            GgufError::InvalidName { offset } => write!(
                f,
                "GGUF key or tensor name at byte {offset} is not UTF-8: the file is damaged"
            ),
            GgufError::DuplicateKey { key } => {
                write!(
                    f,
                    "GGUF metadata key {key:?} appears twice: the file is damaged"
                )
            }
            GgufError::DuplicateTensor { name } => {
                write!(f, "GGUF tensor {name:?} appears twice: the file is damaged")
            }
            GgufError::TooManyDims {
                tensor,
                n_dims,
                limit,
            } => write!(
                f,
                "GGUF tensor {tensor:?} has {n_dims} dimensions, more than ggml's {limit}: the file is damaged"
            ),
            GgufError::DimsOverflow { tensor } => write!(
                f,
                "GGUF tensor {tensor:?} has more elements than fit in 63 bits: the file is damaged or hostile"
            ),
            GgufError::Io(e) => write!(f, "cannot read the GGUF header: {e}"),
            GgufError::BadAlignment { found } => write!(
                f,
                "GGUF general.alignment is {found}, not a non-zero power of two (u32): the file is damaged"
            ),
        }
    }
}

impl std::error::Error for GgufError {}
