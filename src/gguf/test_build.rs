//! Builds GGUF byte buffers by hand for the tests.

/// Little-endian GGUF writer. Values are appended raw, so a test can write
/// exactly the (possibly hostile) bytes it wants.
#[derive(Default, Clone)]
pub struct Gguf {
    pub bytes: Vec<u8>,
}

pub const T_U8: u32 = 0;
pub const T_I8: u32 = 1;
pub const T_U16: u32 = 2;
pub const T_I16: u32 = 3;
pub const T_U32: u32 = 4;
pub const T_I32: u32 = 5;
pub const T_F32: u32 = 6;
pub const T_BOOL: u32 = 7;
pub const T_STRING: u32 = 8;
pub const T_ARRAY: u32 = 9;
pub const T_U64: u32 = 10;
pub const T_I64: u32 = 11;
pub const T_F64: u32 = 12;

impl Gguf {
    /// Magic, version and the two counts.
    pub fn header(version: u32, tensors: u64, kvs: u64) -> Gguf {
        let mut g = Gguf::default();
        g.raw(b"GGUF").u32(version).u64(tensors).u64(kvs);
        g
    }

    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(b);
        self
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.raw(&[v])
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.raw(&v.to_le_bytes())
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.raw(&v.to_le_bytes())
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.raw(&v.to_le_bytes())
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).raw(s.as_bytes())
    }
    /// A key and its value type; the caller appends the value.
    pub fn key(&mut self, k: &str, ty: u32) -> &mut Self {
        self.str(k).u32(ty)
    }
    pub fn kv_u32(&mut self, k: &str, v: u32) -> &mut Self {
        self.key(k, T_U32).u32(v)
    }
    pub fn kv_u64(&mut self, k: &str, v: u64) -> &mut Self {
        self.key(k, T_U64).u64(v)
    }
    pub fn kv_str(&mut self, k: &str, v: &str) -> &mut Self {
        self.key(k, T_STRING).str(v)
    }
    /// A string array of `n` tokens `t0`, `t1`, ...
    pub fn kv_tokens(&mut self, k: &str, n: u64) -> &mut Self {
        self.key(k, T_ARRAY).u32(T_STRING).u64(n);
        for i in 0..n {
            self.str(&format!("t{i}"));
        }
        self
    }
    pub fn tensor(&mut self, name: &str, dims: &[u64], ggml_type: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ggml_type).u64(offset)
    }
}

/// A small valid llama-like header: 9 metadata entries and 3 tensors.
pub fn sample() -> Vec<u8> {
    let mut g = Gguf::header(3, 3, 10);
    g.kv_str("general.architecture", "llama")
        .kv_str("general.name", "Tiny")
        .kv_u32("general.file_type", 15)
        .kv_u32("llama.context_length", 4096)
        .kv_u32("llama.embedding_length", 64)
        .kv_u32("llama.block_count", 2)
        .kv_u32("llama.attention.head_count", 8)
        .kv_u32("llama.attention.head_count_kv", 2)
        .kv_str("tokenizer.ggml.model", "gpt2")
        .kv_tokens("tokenizer.ggml.tokens", 100);
    g.tensor("token_embd.weight", &[64, 100], 12, 0)
        .tensor("output_norm.weight", &[64], 0, 3616)
        .tensor("blk.0.attn_q.weight", &[64, 64], 8, 3872);
    g.bytes
}
