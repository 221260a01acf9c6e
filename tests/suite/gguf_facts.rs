//! The GGUF parser agrees with gguf-py: Python's `gguf.GGUFWriter` writes
//! small models (one file, and a split set), `gguf.GGUFReader` dumps what it
//! reads as JSON, and our parser, fed whole files and growing prefixes, must
//! find the same keys, values, tensors and facts.
//!
//! Needs python3 with the `gguf` and `numpy` packages
//! (`scripts/deps.sh --test`); without them the tests fail, never skip.

use std::path::{Path, PathBuf};
use std::process::Command;

use modelfs::gguf::{self, Facts, GgufError, Header, Value};
use serde_json::{Value as Json, json};

use crate::common::{python, require_gguf_py};

/// Writes `single.gguf` (every value type, tensors of four ggml types, a
/// 300-token vocabulary, a chat template) and the split set
/// `split-0000N-of-00003.gguf` (two tensors per shard).
const WRITE: &str = r#"
import sys, numpy as np
from pathlib import Path
from gguf import GGUFWriter, GGMLQuantizationType as Q, LlamaFileType

def model(w):
    w.add_name("Agreement Test")
    w.add_context_length(2048)
    w.add_embedding_length(64)
    w.add_block_count(2)
    w.add_head_count(8)
    w.add_head_count_kv(4)
    w.add_file_type(LlamaFileType.MOSTLY_Q8_0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"tok{i}" for i in range(300)])
    w.add_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}")
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -5)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -300)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 0.5)
    w.add_bool("test.bool", True)
    w.add_uint64("test.u64", 2**63 + 5)
    w.add_int64("test.i64", -2**62)
    w.add_float64("test.f64", -1.25)
    w.add_string("test.string", "héllo")
    w.add_array("test.ints", [1, 2, 3])
    w.add_array("test.strings", ["a", "bc"])
    w.add_array("test.nested", [[1, 2], [3]])
    w.add_tensor("token_embd.weight", np.zeros((300, 64), dtype=np.float16))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(64, dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight", np.zeros((64, 68), dtype=np.uint8), raw_dtype=Q.Q8_0)
    w.add_tensor("blk.0.ffn_up.weight", np.zeros((2, 3, 4, 144), dtype=np.uint8), raw_dtype=Q.Q4_K)
    w.add_tensor("output.weight", np.zeros((300, 64), dtype=np.float16))
    w.add_tensor("rope_freqs", np.ones(8, dtype=np.float32))

def write(path, **kw):
    w = GGUFWriter(path, "llama", **kw)
    model(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

out = Path(sys.argv[1])
write(out / "single.gguf")
write(out / "split.gguf", split_max_tensors=2)
"#;

/// Dumps a GGUF as gguf-py reads it: every field (scalars with their value,
/// arrays with element type and length), every tensor, and the facts
/// computed from gguf-py's view.
const DUMP: &str = r#"
import sys, json
from gguf import GGUFReader, GGUFValueType as T, LlamaFileType

r = GGUFReader(sys.argv[1])
fields = {}
for name, f in r.fields.items():
    if name.startswith("GGUF."):
        continue
    t = f.types[0]
    if t == T.ARRAY:
        fields[name] = {"type": int(t), "element_type": int(f.types[1]), "len": len(f.data)}
    else:
        fields[name] = {"type": int(t), "value": f.contents()}
tensors = [
    {"name": t.name, "dims": [int(d) for d in t.shape], "type": int(t.tensor_type),
     "elements": int(t.n_elements), "offset": int(t.data_offset) - r.data_offset}
    for t in r.tensors
]
def get(key):
    f = r.fields.get(key)
    return None if f is None else f.contents()
facts = {
    "architecture": get("general.architecture"),
    "name": get("general.name"),
    "parameters": sum(int(t.n_elements) for t in r.tensors),
    "context_length": get("llama.context_length"),
    "embedding_length": get("llama.embedding_length"),
    "block_count": get("llama.block_count"),
    "head_count": get("llama.attention.head_count"),
    "head_count_kv": get("llama.attention.head_count_kv"),
    "vocab_size": None if "tokenizer.ggml.tokens" not in r.fields else len(r.fields["tokenizer.ggml.tokens"].data),
    "tokenizer": get("tokenizer.ggml.model"),
    "chat_template": "tokenizer.chat_template" in r.fields,
    "split_no": get("split.no"),
    "split_count": get("split.count"),
    "split_tensors_count": get("split.tensors.count"),
    "tensor_count": len(r.tensors),
    "tensor_data_bytes": sum(int(t.n_bytes) for t in r.tensors),
    "data_offset": r.data_offset,
}
ft = get("general.file_type")
if ft is not None:
    n = LlamaFileType(ft).name
    facts["file_type"] = "F32" if n == "ALL_F32" else n.removeprefix("MOSTLY_")
facts = {k: v for k, v in facts.items() if v is not None}
print(json.dumps({"version": get("GGUF.version"), "alignment": r.alignment,
                  "data_offset": r.data_offset, "fields": fields, "tensors": tensors, "facts": facts}))
"#;

/// Runs gguf-py `code` on `arg`; its standard output.
fn python_out(code: &str, arg: &Path) -> String {
    String::from_utf8(python(code, &[arg]).stdout).unwrap()
}

/// Writes the models; returns the single file and the shards in order.
fn write_models(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    require_gguf_py();
    python(WRITE, &[dir]);
    let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("split-")
        })
        .collect();
    shards.sort();
    (dir.join("single.gguf"), shards)
}

fn dump(path: &Path) -> Json {
    serde_json::from_str(&python_out(DUMP, path)).expect("dump is JSON")
}

/// A scalar value as gguf-py's JSON shows it.
fn scalar_json(v: &Value) -> Json {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::F32(x) => json!(f64::from(*x)),
        Value::Bool(x) => json!(x),
        Value::String(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F64(x) => json!(x),
        Value::Array(_) => unreachable!("arrays are compared by type and length"),
    }
}

/// Every key, value, tensor and fact of `header` matches gguf-py's `dump`.
fn assert_agrees(header: &Header, dump: &Json, file: &Path) {
    let file = file.display();
    assert_eq!(json!(header.version), dump["version"], "{file}: version");
    assert_eq!(json!(header.alignment), dump["alignment"], "{file}");
    assert_eq!(json!(header.data_offset), dump["data_offset"], "{file}");
    let fields = dump["fields"].as_object().unwrap();
    let keys: Vec<&str> = header.metadata.iter().map(|(k, _)| k.as_str()).collect();
    let py_keys: Vec<&str> = fields.keys().map(String::as_str).collect();
    assert_eq!(keys, py_keys, "{file}: keys in file order");
    for (key, value) in &header.metadata {
        let py = &fields[key];
        assert_eq!(
            json!(value.value_type().id()),
            py["type"],
            "{file}: type of {key}"
        );
        match value.as_array() {
            Some(a) => {
                assert_eq!(
                    json!(a.element_type.id()),
                    py["element_type"],
                    "{file}: {key}"
                );
                // gguf-py counts the leaves of a nested array, not its length.
                if a.element_type != gguf::ValueType::Array {
                    assert_eq!(json!(a.len), py["len"], "{file}: length of {key}");
                }
            }
            None => assert_eq!(scalar_json(value), py["value"], "{file}: value of {key}"),
        }
    }
    let tensors: Vec<Json> = header
        .tensors
        .iter()
        .map(|t| {
            json!({"name": t.name, "dims": t.dims, "type": t.ggml_type,
                   "elements": t.elements, "offset": t.offset})
        })
        .collect();
    assert_eq!(Json::from(tensors), dump["tensors"], "{file}: tensors");
    let mut facts = Facts::from_header(header).to_json();
    // gguf-py has no view of these two, which the test model lacks anyway.
    let obj = facts.as_object_mut().unwrap();
    assert!(obj.remove("key_length").is_none() && obj.remove("value_length").is_none());
    assert_eq!(facts, dump["facts"], "{file}: facts");
}

/// Parses `bytes` from an empty prefix on, each time extending the prefix
/// to what `NeedMore` asked for, as a caller using Range requests would.
/// Returns the header and the number of parses.
fn parse_by_growing_prefix(bytes: &[u8]) -> (Header, usize) {
    let mut len = 0usize;
    for round in 1.. {
        match gguf::parse(&bytes[..len]) {
            Ok(h) => return (h, round),
            Err(GgufError::NeedMore { at_least }) => {
                assert!(at_least as usize > len, "NeedMore must ask for more");
                len = (at_least as usize).min(bytes.len());
            }
            Err(e) => panic!("prefix of {len} bytes: {e}"),
        }
    }
    unreachable!()
}

#[test]
fn the_parser_reads_every_key_value_and_tensor_as_gguf_py_does() {
    let dir = tempfile::tempdir().unwrap();
    let (single, _) = write_models(dir.path());
    let bytes = std::fs::read(&single).unwrap();
    let header = gguf::parse_file(&bytes, bytes.len() as u64).unwrap();
    assert_agrees(&header, &dump(&single), &single);
    assert_eq!(header.tensors.len(), 6);
    let f = Facts::from_header(&header);
    assert_eq!(f.file_type.as_deref(), Some("Q8_0"));
    assert_eq!(f.vocab_size, Some(300));
    let tokens = header
        .get("tokenizer.ggml.tokens")
        .unwrap()
        .as_array()
        .unwrap();
    assert!(tokens.items.is_none(), "a vocabulary is skipped, not kept");
    let m = f.memory_estimate(Some(bytes.len() as u64)).unwrap();
    assert_eq!(
        m.weights,
        bytes.len() as u64 - header.data_offset,
        "no padding after the last tensor"
    );
}

#[test]
fn every_prefix_shorter_than_the_header_asks_for_more_and_never_too_much() {
    let dir = tempfile::tempdir().unwrap();
    let (single, _) = write_models(dir.path());
    let bytes = std::fs::read(&single).unwrap();
    let full = gguf::parse(&bytes).unwrap();
    for len in 0..full.header_len as usize {
        match gguf::parse(&bytes[..len]) {
            Err(GgufError::NeedMore { at_least }) => assert!(
                at_least > len as u64 && at_least <= full.header_len,
                "prefix {len}: asked for {at_least}, header is {}",
                full.header_len
            ),
            other => panic!("prefix {len}: {other:?}"),
        }
    }
    assert_eq!(
        gguf::parse(&bytes[..full.header_len as usize]).unwrap(),
        full
    );
    let (grown, rounds) = parse_by_growing_prefix(&bytes);
    assert_eq!(grown, full);
    // NeedMore counts the least size of everything still to come, so
    // following it exactly takes 18 parses here, not one per item.
    assert!(
        rounds <= 24,
        "{rounds} parses for a {}-byte header",
        full.header_len
    );
}

#[test]
fn each_shard_of_a_split_model_agrees_with_gguf_py_and_carries_the_split_info() {
    let dir = tempfile::tempdir().unwrap();
    let (_, shards) = write_models(dir.path());
    assert_eq!(shards.len(), 3, "{shards:?}");
    let mut parameters = 0;
    for (i, shard) in shards.iter().enumerate() {
        let bytes = std::fs::read(shard).unwrap();
        let (header, _) = parse_by_growing_prefix(&bytes);
        assert_agrees(&header, &dump(shard), shard);
        let f = Facts::from_header(&header);
        assert_eq!(
            (f.split_no, f.split_count, f.split_tensors_count),
            (Some(i as u64), Some(3), Some(6)),
            "{}",
            shard.display()
        );
        parameters += f.parameters.unwrap();
    }
    assert_eq!(
        parameters,
        300 * 64 * 2 + 64 + 64 * 64 + 2 * 3 * 4 * 256 + 8
    );
}

/// `modelfs add` reads a remote model's facts from its header alone and
/// records them in the manifest; the mount shows them as xattrs.
#[test]
fn add_records_the_header_facts_without_downloading_the_model_and_the_mount_shows_them() {
    use crate::common::{Mount, Origin, TestStore, hex, sys::getxattr};
    let dir = tempfile::tempdir().unwrap();
    let (single, _) = write_models(dir.path());
    let big = dir.path().join("big.gguf");
    let made = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/make_gguf.py"))
        .arg(&big)
        .arg((32 << 20).to_string())
        .status()
        .unwrap();
    assert!(made.success(), "make_gguf.py failed");
    let origin = Origin::start();
    let ts = TestStore::new();
    for (name, file) in [("rich", &single), ("big", &big)] {
        let bytes = std::fs::read(file).unwrap();
        origin.put_file(&format!("{name}.gguf"), file);
        let out = ts
            .cli(origin.ca_pem_path())
            .args(["add", name, "--url", &origin.url(&format!("{name}.gguf"))])
            .args(["--sha256", &hex(&bytes)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want = Facts::from_header(&gguf::parse(&bytes).unwrap()).to_json();
        let m: Json = serde_json::from_slice(
            &std::fs::read(ts.root.join(format!("manifests/{name}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(
            m["gguf"], want,
            "{name}: the manifest holds the header's facts"
        );
    }
    let st = origin.stats("big.gguf");
    assert!(
        st.bytes_sent <= 1 << 20,
        "32 MiB model: {} bytes read for its facts",
        st.bytes_sent
    );
    assert_eq!(st.gets, st.range_gets, "only ranges");

    let ls = ts.cli(origin.ca_pem_path()).arg("ls").output().unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout).into_owned();
    let line = ls
        .lines()
        .find(|l| l.starts_with("rich "))
        .expect("a line for rich");
    assert!(line.contains("Q8_0") && line.contains("2048"), "{ls}");

    let info = ts
        .cli(origin.ca_pem_path())
        .args(["info", "rich", "--json"])
        .output()
        .unwrap();
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stderr)
    );
    let info: Json = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["gguf"]["file_type"], "Q8_0");
    let memory = &info["memory"];
    assert!(
        memory["total_bytes"].as_u64().unwrap() > memory["weights_bytes"].as_u64().unwrap(),
        "weights plus a KV cache: {memory}"
    );
    let text = ts
        .cli(origin.ca_pem_path())
        .args(["info", "rich"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains("context_length") && text.contains("memory:"),
        "{text}"
    );

    let mount = Mount::start(&ts, origin.ca_pem_path(), &[]);
    let rich = mount.path("rich.gguf");
    assert_eq!(
        getxattr(&rich, "user.modelfs.gguf.file_type").unwrap(),
        "Q8_0"
    );
    assert_eq!(
        getxattr(&rich, "user.modelfs.gguf.context_length").unwrap(),
        "2048"
    );
    assert_eq!(
        getxattr(&rich, "user.modelfs.gguf.chat_template").unwrap(),
        "true"
    );
    assert_eq!(
        getxattr(&mount.path("big.gguf"), "user.modelfs.gguf.architecture").unwrap(),
        "modelfs-demo"
    );
    assert_eq!(
        getxattr(&rich, "user.modelfs.gguf.nothing").unwrap_err(),
        libc::ENODATA
    );
    assert_eq!(
        getxattr(&rich, "user.modelfs.state").unwrap(),
        "pending",
        "nothing was fetched"
    );
}
