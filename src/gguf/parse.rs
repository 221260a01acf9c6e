//! The GGUF header parser: magic, version, counts, metadata, tensor infos.
//!
//! It reads from a byte prefix and never trusts a count or length from the
//! file to size an allocation: a `Vec` is reserved for at most as many items
//! as the bytes left could encode, so a hostile count costs nothing until the
//! bytes are actually there. Loops run at most once per byte of input (every
//! item encodes to at least one byte), and recursion is bounded by
//! [`MAX_ARRAY_DEPTH`].

use std::collections::HashSet;

use super::error::GgufError;
use super::ggml;
use super::value::{ArrayValue, Value, ValueType};

/// The tensor data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// How deep arrays may nest (gguf-py writes nested arrays; llama.cpp reads
/// none). Deeper nesting is refused as hostile.
pub const MAX_ARRAY_DEPTH: usize = 8;
/// Arrays up to this many elements keep their elements; longer ones
/// (vocabularies, merges, scores) keep only their element type and length.
pub const MAX_KEPT_ARRAY_LEN: u64 = 64;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;

const MAGIC: &[u8; 4] = b"GGUF";
/// version, tensor_count and metadata_kv_count after the magic.
const MIN_FIXED_HEADER: u64 = 4 + 8 + 8;
/// The smallest metadata entry: an empty key, a type, a one-byte value.
const MIN_KV: u64 = 8 + 4 + 1;
/// The smallest tensor info: an empty name, n_dims 0, type, offset.
const MIN_TENSOR: u64 = 8 + 4 + 4 + 8;

/// A parsed GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Every metadata entry, in file order; keys are unique.
    pub metadata: Vec<(String, Value)>,
    /// Every tensor info, in file order; names are unique.
    pub tensors: Vec<TensorInfo>,
    /// `general.alignment`, or [`DEFAULT_ALIGNMENT`].
    pub alignment: u64,
    /// Where the tensor infos end (the header's length without padding).
    pub header_len: u64,
    /// Where tensor data starts: `header_len` rounded up to `alignment`.
    /// Tensor offsets are relative to it.
    pub data_offset: u64,
}

/// One tensor info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the fastest-varying (row length).
    pub dims: Vec<u64>,
    /// The ggml type id, kept even when unknown (see [`ggml::ggml_type_name`]).
    pub ggml_type: u32,
    /// Offset of the tensor's data from [`Header::data_offset`].
    pub offset: u64,
    /// The product of `dims` (1 for no dims); fits in an `i64`.
    pub elements: u64,
}

impl TensorInfo {
    /// The tensor's data size, `None` for an unknown ggml type.
    pub fn bytes(&self) -> Option<u64> {
        ggml::tensor_bytes(self.ggml_type, self.elements)
    }
}

impl Header {
    /// The value of a metadata key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The heap and inline bytes this header holds, for proving the
    /// allocation bound.
    pub fn retained_bytes(&self) -> usize {
        use std::mem::size_of;
        let kvs = self.metadata.capacity() * size_of::<(String, Value)>()
            + self
                .metadata
                .iter()
                .map(|(k, v)| k.capacity() + v.heap_bytes())
                .sum::<usize>();
        let tensors = self.tensors.capacity() * size_of::<TensorInfo>()
            + self
                .tensors
                .iter()
                .map(|t| t.name.capacity() + t.dims.capacity() * size_of::<u64>())
                .sum::<usize>();
        size_of::<Header>() + kvs + tensors
    }
}

/// Parses the header from a prefix of a GGUF file of unknown length.
/// [`GgufError::NeedMore`] asks for a longer prefix.
pub fn parse(prefix: &[u8]) -> Result<Header, GgufError> {
    let mut r = Reader::new(prefix);
    let (version, tensor_count, kv_count) = read_fixed_header(&mut r)?;
    let metadata = read_metadata(&mut r, kv_count, tensor_count)?;
    let alignment = alignment_of(&metadata)?;
    let tensors = read_tensor_infos(&mut r, tensor_count)?;
    let header_len = r.pos_u64();
    let data_offset = header_len
        .checked_next_multiple_of(alignment)
        .ok_or(GgufError::LengthOverflow { offset: header_len })?;
    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        header_len,
        data_offset,
    })
}

/// Parses the header from a prefix of a file known to be `file_len` bytes
/// long (the whole file, or its first bytes): a header that would need
/// bytes past the end is [`GgufError::Truncated`].
pub fn parse_file(prefix: &[u8], file_len: u64) -> Result<Header, GgufError> {
    match parse(prefix) {
        Err(GgufError::NeedMore { at_least }) if at_least > file_len => {
            Err(GgufError::Truncated { at_least, file_len })
        }
        other => other,
    }
}

fn read_fixed_header(r: &mut Reader<'_>) -> Result<(u32, u64, u64), GgufError> {
    r.tail_min = MIN_FIXED_HEADER;
    let magic = r.take(4)?;
    if magic != MAGIC {
        let found = [magic[0], magic[1], magic[2], magic[3]];
        return Err(GgufError::BadMagic { found });
    }
    r.tail_min = MIN_FIXED_HEADER - 4;
    let version = r.u32()?;
    match version {
        2 | 3 => {}
        v if matches!(v.swap_bytes(), 2 | 3) => {
            return Err(GgufError::BigEndian {
                version: v.swap_bytes(),
            });
        }
        v => return Err(GgufError::UnsupportedVersion { version: v }),
    }
    r.tail_min = 8;
    let tensor_count = r.u64()?;
    r.tail_min = 0;
    let kv_count = r.u64()?;
    Ok((version, tensor_count, kv_count))
}

fn read_metadata(
    r: &mut Reader<'_>,
    kv_count: u64,
    tensor_count: u64,
) -> Result<Vec<(String, Value)>, GgufError> {
    let tensors_min = tensor_count.saturating_mul(MIN_TENSOR);
    let mut metadata = Vec::with_capacity(r.capacity_for(kv_count, MIN_KV));
    let mut seen = HashSet::new();
    for i in 0..kv_count {
        r.tail_min = (kv_count - i - 1)
            .saturating_mul(MIN_KV)
            .saturating_add(tensors_min);
        let key = r.name()?;
        if !seen.insert(key) {
            return Err(GgufError::DuplicateKey {
                key: key.to_string(),
            });
        }
        let value_type = r.value_type()?;
        let value = read_value(r, value_type, 0)?;
        metadata.push((key.to_string(), value));
    }
    Ok(metadata)
}

fn alignment_of(metadata: &[(String, Value)]) -> Result<u64, GgufError> {
    match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => Ok(DEFAULT_ALIGNMENT),
        Some((_, Value::U32(a))) if a.is_power_of_two() => Ok(u64::from(*a)),
        Some((_, v)) => Err(GgufError::BadAlignment {
            found: format!("{v} ({})", v.value_type().name()),
        }),
    }
}

fn read_tensor_infos(r: &mut Reader<'_>, tensor_count: u64) -> Result<Vec<TensorInfo>, GgufError> {
    let mut tensors = Vec::with_capacity(r.capacity_for(tensor_count, MIN_TENSOR));
    let mut seen = HashSet::new();
    for i in 0..tensor_count {
        r.tail_min = (tensor_count - i - 1).saturating_mul(MIN_TENSOR);
        let name = r.name()?;
        if !seen.insert(name) {
            return Err(GgufError::DuplicateTensor {
                name: name.to_string(),
            });
        }
        tensors.push(read_tensor_info(r, name)?);
    }
    Ok(tensors)
}

fn read_tensor_info(r: &mut Reader<'_>, name: &str) -> Result<TensorInfo, GgufError> {
    let n_dims = r.u32()?;
    if n_dims as usize > MAX_DIMS {
        return Err(GgufError::TooManyDims {
            tensor: name.to_string(),
            n_dims,
            limit: MAX_DIMS,
        });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    let mut elements: u64 = 1;
    for _ in 0..n_dims {
        let dim = r.u64()?;
        elements = elements
            .checked_mul(dim)
            .filter(|&e| e <= i64::MAX as u64)
            .ok_or_else(|| GgufError::DimsOverflow {
                tensor: name.to_string(),
            })?;
        dims.push(dim);
    }
    let ggml_type = r.u32()?;
    let offset = r.u64()?;
    Ok(TensorInfo {
        name: name.to_string(),
        dims,
        ggml_type,
        offset,
        elements,
    })
}

/// Reads one value of type `ty`; `depth` is the number of arrays around it.
fn read_value(r: &mut Reader<'_>, ty: ValueType, depth: usize) -> Result<Value, GgufError> {
    Ok(match ty {
        ValueType::U8 => Value::U8(r.take(1)?[0]),
        ValueType::I8 => Value::I8(r.take(1)?[0] as i8),
        ValueType::U16 => Value::U16(u16::from_le_bytes(r.array()?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(r.array()?)),
        ValueType::U32 => Value::U32(r.u32()?),
        ValueType::I32 => Value::I32(i32::from_le_bytes(r.array()?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(r.array()?)),
        ValueType::Bool => Value::Bool(r.take(1)?[0] != 0),
        ValueType::String => Value::String(String::from_utf8_lossy(r.string()?).into_owned()),
        ValueType::Array => Value::Array(Box::new(read_array(r, depth + 1)?)),
        ValueType::U64 => Value::U64(r.u64()?),
        ValueType::I64 => Value::I64(i64::from_le_bytes(r.array()?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(r.array()?)),
    })
}

/// Reads an array at nesting level `depth` (1 for a top-level array):
/// its elements when it is short, else just its type and length.
fn read_array(r: &mut Reader<'_>, depth: usize) -> Result<ArrayValue, GgufError> {
    if depth > MAX_ARRAY_DEPTH {
        return Err(GgufError::ArrayTooDeep {
            offset: r.pos_u64(),
            limit: MAX_ARRAY_DEPTH,
        });
    }
    let element_type = r.value_type()?;
    let len = r.u64()?;
    let tail_min = r.tail_min;
    let items = if len <= MAX_KEPT_ARRAY_LEN {
        let mut items = Vec::with_capacity(r.capacity_for(len, element_type.min_size()));
        for i in 0..len {
            r.tail_min = elements_min(len - i - 1, element_type, tail_min);
            items.push(read_value(r, element_type, depth)?);
        }
        Some(items)
    } else {
        skip_elements(r, element_type, len, depth)?;
        None
    };
    r.tail_min = tail_min;
    Ok(ArrayValue {
        element_type,
        len,
        items,
    })
}

/// Moves past `len` elements of type `ty` without keeping them.
fn skip_elements(
    r: &mut Reader<'_>,
    ty: ValueType,
    len: u64,
    depth: usize,
) -> Result<(), GgufError> {
    if let Some(size) = ty.fixed_size() {
        let total = len.checked_mul(size).ok_or(GgufError::LengthOverflow {
            offset: r.pos_u64(),
        })?;
        return r.take(total).map(drop);
    }
    let tail_min = r.tail_min;
    for i in 0..len {
        r.tail_min = elements_min(len - i - 1, ty, tail_min);
        match ty {
            ValueType::String => drop(r.string()?),
            _ => {
                if depth + 1 > MAX_ARRAY_DEPTH {
                    return Err(GgufError::ArrayTooDeep {
                        offset: r.pos_u64(),
                        limit: MAX_ARRAY_DEPTH,
                    });
                }
                let inner = r.value_type()?;
                let inner_len = r.u64()?;
                skip_elements(r, inner, inner_len, depth + 1)?;
            }
        }
    }
    r.tail_min = tail_min;
    Ok(())
}

/// The least bytes that `left` more elements of `ty` and then `tail_min`
/// take.
fn elements_min(left: u64, ty: ValueType, tail_min: u64) -> u64 {
    left.saturating_mul(ty.min_size()).saturating_add(tail_min)
}

/// A cursor over the prefix. `tail_min` is the least number of bytes the
/// items after the current one take, so that `NeedMore` asks for enough.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    tail_min: u64,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            pos: 0,
            tail_min: 0,
        }
    }

    fn pos_u64(&self) -> u64 {
        self.pos as u64
    }

    /// How many items of at least `min_size` bytes to reserve room for: no
    /// more than `count`, and no more than the bytes left could hold.
    fn capacity_for(&self, count: u64, min_size: u64) -> usize {
        let left = (self.buf.len() - self.pos) as u64;
        count.min(left / min_size.max(1)) as usize
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], GgufError> {
        let offset = self.pos_u64();
        let end = offset
            .checked_add(n)
            .ok_or(GgufError::LengthOverflow { offset })?;
        if end > self.buf.len() as u64 {
            let at_least = end.saturating_add(self.tail_min);
            return Err(GgufError::NeedMore { at_least });
        }
        let bytes = &self.buf[self.pos..end as usize];
        self.pos = end as usize;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let bytes = self.take(N as u64)?;
        let mut out = [0; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, GgufError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, GgufError> {
        self.array().map(u64::from_le_bytes)
    }

    /// A GGUF string: a u64 length, then that many bytes.
    fn string(&mut self) -> Result<&'a [u8], GgufError> {
        let len = self.u64()?;
        self.take(len)
    }

    /// A key or tensor name, which must be UTF-8.
    fn name(&mut self) -> Result<&'a str, GgufError> {
        let offset = self.pos_u64();
        let bytes = self.string()?;
        std::str::from_utf8(bytes).map_err(|_| GgufError::InvalidName { offset })
    }

    fn value_type(&mut self) -> Result<ValueType, GgufError> {
        let offset = self.pos_u64();
        let type_id = self.u32()?;
        ValueType::from_id(type_id).ok_or(GgufError::UnknownValueType { type_id, offset })
    }
}
