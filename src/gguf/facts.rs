//! Model facts from a parsed header, as stored in a manifest's `gguf` object,
//! and the memory a model needs to run.
//!
//! A fact the header does not have is `None` (absent from the JSON), never
//! guessed. For a split model each shard has its own facts: shard 1 holds
//! the metadata, and `parameters`/`tensor_data_bytes` count only the
//! shard's own tensors (the caller sums them over the set).

use serde_json::{Map, Value as Json};

use super::ggml::file_type_name;
use super::parse::Header;
use super::value::Value;

/// What a GGUF header says about its model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// `general.architecture`, e.g. "llama".
    pub architecture: Option<String>,
    /// `general.name`.
    pub name: Option<String>,
    /// Sum over tensors of their element counts.
    pub parameters: Option<u64>,
    /// `general.file_type` as llama.cpp names it, e.g. "Q4_K_M".
    pub file_type: Option<String>,
    /// `<arch>.context_length`: the context the model was trained for.
    pub context_length: Option<u64>,
    /// `<arch>.embedding_length`.
    pub embedding_length: Option<u64>,
    /// `<arch>.block_count`: the number of layers.
    pub block_count: Option<u64>,
    /// `<arch>.attention.head_count` (the largest, if given per layer).
    pub head_count: Option<u64>,
    /// `<arch>.attention.head_count_kv` (the largest, if given per layer).
    pub head_count_kv: Option<u64>,
    /// `<arch>.attention.key_length`: per-head K size when it is not
    /// `embedding_length / head_count` (Gemma, DeepSeek).
    pub key_length: Option<u64>,
    /// `<arch>.attention.value_length`, likewise for V.
    pub value_length: Option<u64>,
    /// The length of `tokenizer.ggml.tokens`.
    pub vocab_size: Option<u64>,
    /// `tokenizer.ggml.model`, e.g. "gpt2" or "llama".
    pub tokenizer: Option<String>,
    /// Whether `tokenizer.chat_template` is present.
    pub chat_template: bool,
    /// `split.no`: this shard's index, from 0.
    pub split_no: Option<u64>,
    /// `split.count`: how many shards the model has.
    pub split_count: Option<u64>,
    /// `split.tensors.count`: tensors over all shards.
    pub split_tensors_count: Option<u64>,
    /// Tensors in this file.
    pub tensor_count: Option<u64>,
    /// Bytes of this file's tensor data (from ggml block sizes); `None`
    /// when a tensor has a type this parser does not know.
    pub tensor_data_bytes: Option<u64>,
    /// Where tensor data starts in the file.
    pub data_offset: Option<u64>,
}

/// The memory a model needs to run, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// The tensor data.
    pub weights: u64,
    /// An f16 K and V cache for the model's full context, when the header
    /// has the numbers for it.
    pub kv_cache: Option<u64>,
    /// `weights + kv_cache`.
    pub total: u64,
}

/// The JSON names of the numeric facts, in the order of `numbers_mut`.
const NUMBER_NAMES: [&str; 15] = [
    "parameters",
    "context_length",
    "embedding_length",
    "block_count",
    "head_count",
    "head_count_kv",
    "key_length",
    "value_length",
    "vocab_size",
    "split_no",
    "split_count",
    "split_tensors_count",
    "tensor_count",
    "tensor_data_bytes",
    "data_offset",
];

/// Bytes per element of an f16 K/V cache.
const F16_BYTES: u64 = 2;

impl Facts {
    /// The facts of a parsed header.
    pub fn from_header(header: &Header) -> Facts {
        let string = |key: &str| header.get(key).and_then(Value::as_str).map(str::to_string);
        let architecture = string("general.architecture");
        let arch = |suffix: &str| {
            let arch = architecture.as_deref()?;
            header
                .get(&format!("{arch}.{suffix}"))
                .and_then(largest_uint)
        };
        let uint = |key: &str| header.get(key).and_then(Value::as_u64);
        Facts {
            name: string("general.name"),
            parameters: parameters(header),
            file_type: uint("general.file_type").map(file_type_name),
            context_length: arch("context_length"),
            embedding_length: arch("embedding_length"),
            block_count: arch("block_count"),
            head_count: arch("attention.head_count"),
            head_count_kv: arch("attention.head_count_kv"),
            key_length: arch("attention.key_length"),
            value_length: arch("attention.value_length"),
            vocab_size: header
                .get("tokenizer.ggml.tokens")
                .and_then(Value::as_array)
                .map(|a| a.len),
            tokenizer: string("tokenizer.ggml.model"),
            chat_template: header.get("tokenizer.chat_template").is_some(),
            split_no: uint("split.no"),
            split_count: uint("split.count"),
            split_tensors_count: uint("split.tensors.count"),
            tensor_count: Some(header.tensors.len() as u64),
            tensor_data_bytes: tensor_data_bytes(header),
            data_offset: Some(header.data_offset),
            architecture,
        }
    }

    /// The memory estimate: the weights (this file's tensor data, or
    /// `file_len - data_offset` when a tensor type is unknown) plus an f16
    /// KV cache at the model's context length:
    /// `2 bytes × block_count × context_length × head_count_kv × (K + V
    /// per-head size)`, the per-head size being `key_length`/`value_length`
    /// or else `embedding_length / head_count` (so `2 × 2 × ... × head_dim`
    /// for the common case). `head_count_kv` defaults to `head_count`, as in
    /// llama.cpp. `None` when the weights are unknown.
    pub fn memory_estimate(&self, file_len: Option<u64>) -> Option<MemoryEstimate> {
        let weights = self
            .tensor_data_bytes
            .or_else(|| file_len?.checked_sub(self.data_offset?))?;
        let kv_cache = self.kv_cache_bytes();
        let total = weights.saturating_add(kv_cache.unwrap_or(0));
        Some(MemoryEstimate {
            weights,
            kv_cache,
            total,
        })
    }

    fn kv_cache_bytes(&self) -> Option<u64> {
        let heads = self.head_count.filter(|&h| h > 0)?;
        let head_dim = self.embedding_length.map(|e| e / heads);
        let k = self.key_length.or(head_dim)?;
        let v = self.value_length.or(head_dim)?;
        let kv_heads = self.head_count_kv.unwrap_or(heads);
        F16_BYTES
            .checked_mul(self.block_count?)?
            .checked_mul(self.context_length?)?
            .checked_mul(kv_heads)?
            .checked_mul(k.checked_add(v)?)
    }

    /// The facts as a JSON object: one member per known fact, named as the
    /// field (`chat_template` always present).
    pub fn to_json(&self) -> Json {
        let mut m = Map::new();
        let mut s = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                m.insert(k.into(), Json::from(v.as_str()));
            }
        };
        s("architecture", &self.architecture);
        s("name", &self.name);
        s("file_type", &self.file_type);
        s("tokenizer", &self.tokenizer);
        for (k, v) in NUMBER_NAMES.iter().zip(self.numbers()) {
            if let Some(v) = v {
                m.insert((*k).into(), Json::from(v));
            }
        }
        m.insert("chat_template".into(), Json::from(self.chat_template));
        Json::Object(m)
    }

    /// One fact as text, by its name in [`Facts::to_json`]'s object,
    /// without building the object (the mount answers a getxattr with it).
    pub fn fact(&self, key: &str) -> Option<String> {
        match key {
            "architecture" => self.architecture.clone(),
            "name" => self.name.clone(),
            "file_type" => self.file_type.clone(),
            "tokenizer" => self.tokenizer.clone(),
            "chat_template" => Some(self.chat_template.to_string()),
            k => {
                let i = NUMBER_NAMES.iter().position(|n| *n == k)?;
                self.numbers()[i].map(|v| v.to_string())
            }
        }
    }

    /// The names of the facts present, in [`Facts::to_json`]'s order.
    pub fn names(&self) -> Vec<&'static str> {
        let strings = [
            ("architecture", &self.architecture),
            ("name", &self.name),
            ("file_type", &self.file_type),
            ("tokenizer", &self.tokenizer),
        ];
        let mut out: Vec<&'static str> = strings
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| *k)
            .collect();
        out.extend(
            NUMBER_NAMES
                .iter()
                .zip(self.numbers())
                .filter(|(_, v)| v.is_some())
                .map(|(k, _)| *k),
        );
        out.push("chat_template");
        out
    }

    fn numbers(&self) -> [Option<u64>; 15] {
        let mut copy = self.clone();
        copy.numbers_mut().map(|v| *v)
    }

    /// Facts read back from [`Facts::to_json`]'s object; members that are
    /// missing or of the wrong type are `None` (a manifest written by an
    /// older or newer modelfs still reads).
    pub fn from_json(json: &Json) -> Facts {
        let s = |k: &str| json.get(k).and_then(Json::as_str).map(str::to_string);
        let mut facts = Facts {
            architecture: s("architecture"),
            name: s("name"),
            file_type: s("file_type"),
            tokenizer: s("tokenizer"),
            chat_template: json.get("chat_template").and_then(Json::as_bool) == Some(true),
            ..Facts::default()
        };
        for (k, slot) in NUMBER_NAMES.iter().zip(facts.numbers_mut()) {
            *slot = json.get(*k).and_then(Json::as_u64);
        }
        facts
    }

    /// The numeric facts, in the order of [`NUMBER_NAMES`], so that
    /// `to_json` and `from_json` cannot disagree.
    fn numbers_mut(&mut self) -> [&mut Option<u64>; 15] {
        [
            &mut self.parameters,
            &mut self.context_length,
            &mut self.embedding_length,
            &mut self.block_count,
            &mut self.head_count,
            &mut self.head_count_kv,
            &mut self.key_length,
            &mut self.value_length,
            &mut self.vocab_size,
            &mut self.split_no,
            &mut self.split_count,
            &mut self.split_tensors_count,
            &mut self.tensor_count,
            &mut self.tensor_data_bytes,
            &mut self.data_offset,
        ]
    }
}

/// Sum of the tensors' element counts; `None` if it overflows.
fn parameters(header: &Header) -> Option<u64> {
    header
        .tensors
        .iter()
        .try_fold(0u64, |sum, t| sum.checked_add(t.elements))
}

/// Sum of the tensors' data sizes; `None` if a type is unknown.
fn tensor_data_bytes(header: &Header) -> Option<u64> {
    header
        .tensors
        .iter()
        .try_fold(0u64, |sum, t| sum.checked_add(t.bytes()?))
}

/// An unsigned integer value, or the largest of a kept array of them (some
/// architectures give head counts per layer).
fn largest_uint(value: &Value) -> Option<u64> {
    match value {
        Value::Array(a) => a.items.as_ref()?.iter().filter_map(Value::as_u64).max(),
        v => v.as_u64(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse;
    use super::super::test_build::{Gguf, T_ARRAY, T_U32, sample};
    use super::*;

    #[test]
    fn facts_come_from_the_architecture_keys_and_the_tensors() {
        let f = Facts::from_header(&parse(&sample()).unwrap());
        assert_eq!(f.architecture.as_deref(), Some("llama"));
        assert_eq!(f.name.as_deref(), Some("Tiny"));
        assert_eq!(f.file_type.as_deref(), Some("Q4_K_M"));
        assert_eq!(f.parameters, Some(6400 + 64 + 4096));
        assert_eq!(f.context_length, Some(4096));
        assert_eq!(f.embedding_length, Some(64));
        assert_eq!(f.block_count, Some(2));
        assert_eq!((f.head_count, f.head_count_kv), (Some(8), Some(2)));
        assert_eq!(f.vocab_size, Some(100));
        assert_eq!(f.tokenizer.as_deref(), Some("gpt2"));
        assert!(!f.chat_template);
        assert_eq!((f.split_no, f.split_count), (None, None));
        assert_eq!(f.tensor_count, Some(3));
        // Q4_K 25 blocks of 144, F32 64 × 4, Q8_0 128 blocks of 34.
        assert_eq!(f.tensor_data_bytes, Some(3600 + 256 + 4352));
    }

    #[test]
    fn absent_keys_are_none_and_the_architecture_prefix_is_required() {
        let mut g = Gguf::header(3, 0, 2);
        g.kv_u32("llama.context_length", 8)
            .kv_str("tokenizer.chat_template", "{{ x }}");
        let f = Facts::from_header(&parse(&g.bytes).unwrap());
        assert_eq!(f.architecture, None);
        assert_eq!(f.context_length, None, "no architecture, no arch keys");
        assert!(f.chat_template);
        assert_eq!(f.parameters, Some(0));
        assert_eq!(f.file_type, None);
    }

    #[test]
    fn split_info_and_per_layer_head_counts_are_read() {
        let mut g = Gguf::header(3, 0, 5);
        g.kv_str("general.architecture", "x")
            .kv_u32("split.no", 1)
            .kv_u32("split.count", 4)
            .kv_u32("split.tensors.count", 300);
        g.key("x.attention.head_count_kv", T_ARRAY)
            .u32(T_U32)
            .u64(3);
        g.u32(2).u32(8).u32(4);
        let f = Facts::from_header(&parse(&g.bytes).unwrap());
        assert_eq!(
            (f.split_no, f.split_count, f.split_tensors_count),
            (Some(1), Some(4), Some(300))
        );
        assert_eq!(f.head_count_kv, Some(8));
    }

    #[test]
    fn unknown_tensor_types_leave_the_data_size_unknown() {
        let mut g = Gguf::header(3, 1, 0);
        g.tensor("t", &[8], 999, 0);
        let f = Facts::from_header(&parse(&g.bytes).unwrap());
        assert_eq!((f.parameters, f.tensor_data_bytes), (Some(8), None));
    }

    #[test]
    fn json_has_one_member_per_known_fact_and_reads_back() {
        let f = Facts::from_header(&parse(&sample()).unwrap());
        let json = f.to_json();
        assert_eq!(json["architecture"], "llama");
        assert_eq!(json["file_type"], "Q4_K_M");
        assert_eq!(json["context_length"], 4096);
        assert_eq!(json["chat_template"], false);
        assert!(json.get("split_count").is_none());
        assert_eq!(Facts::from_json(&json), f);
        assert_eq!(
            Facts::from_json(&serde_json::json!("junk")),
            Facts::default()
        );
    }

    #[test]
    fn memory_estimate_is_weights_plus_an_f16_kv_cache_at_full_context() {
        let f = Facts::from_header(&parse(&sample()).unwrap());
        let m = f.memory_estimate(None).unwrap();
        assert_eq!(m.weights, 3600 + 256 + 4352);
        // 2 bytes × (K + V) × 2 blocks × 4096 ctx × 2 kv heads × 64/8 dims.
        assert_eq!(m.kv_cache, Some(2 * 2 * 2 * 4096 * 2 * 8));
        assert_eq!(m.total, m.weights + m.kv_cache.unwrap());
    }

    #[test]
    fn memory_estimate_uses_key_and_value_lengths_and_the_file_size() {
        let f = Facts {
            block_count: Some(10),
            context_length: Some(100),
            head_count: Some(4),
            embedding_length: Some(64),
            key_length: Some(32),
            value_length: Some(16),
            data_offset: Some(1000),
            ..Facts::default()
        };
        let m = f.memory_estimate(Some(5000)).unwrap();
        assert_eq!(m.weights, 4000, "file size minus data offset");
        assert_eq!(
            m.kv_cache,
            Some(2 * 10 * 100 * 4 * (32 + 16)),
            "kv heads default to heads"
        );
        assert_eq!(f.memory_estimate(None), None, "weights unknown");
        let no_heads = Facts {
            head_count: Some(0),
            tensor_data_bytes: Some(1),
            ..f.clone()
        };
        assert_eq!(no_heads.memory_estimate(None).unwrap().kv_cache, None);
        let huge = Facts {
            context_length: Some(u64::MAX),
            tensor_data_bytes: Some(1),
            ..f
        };
        assert_eq!(
            huge.memory_estimate(None).unwrap().kv_cache,
            None,
            "overflow"
        );
    }
}
