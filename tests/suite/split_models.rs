//! Split GGUF models as one model (issue 14, DESIGN §8): gguf-py's
//! `GGUFWriter(..., split_max_tensors=…)` writes a real split set
//! `split-0000k-of-0000N.gguf`; `add` pins every shard from the fake Hub or
//! from a URL, the mount shows them side by side, and a llama.cpp-style
//! loader (a Python script: open shard 1, read `split.count` from its
//! header with gguf-py, rebuild the sibling names as `llama_split_path`
//! does, open and read each) loads them through the mount with every shard
//! fetched lazily.
//!
//! llama.cpp itself is not packaged for Debian 12, so the loader stands in
//! for it; it follows `llama_model_loader`'s order (shard 1's header first,
//! then the others by rebuilt name).
//!
//! Needs python3 with the `gguf` and `numpy` packages
//! (`scripts/deps.sh --test`); without them the tests fail, never skip.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value as Json;

use std::time::Duration;

use crate::common::sys::getxattr;
use crate::common::{Mount, Origin, TestStore, hex, hf, python, require_gguf_py, wait_until};

/// Shards of the set written by [`write_split`].
const SHARDS: usize = 4;

/// Writes `split.gguf` as a set of 4 shards, two f32 tensors of 64 Ki
/// elements (256 KiB) each per shard.
const WRITE: &str = r#"
import sys, numpy as np
from pathlib import Path
from gguf import GGUFWriter

out = Path(sys.argv[1])
w = GGUFWriter(out / "split.gguf", "llama", split_max_tensors=2)
w.add_name("Split Test")
w.add_context_length(1024)
w.add_block_count(4)
for i in range(8):
    w.add_tensor(f"blk.{i // 2}.t{i}.weight", np.full(1 << 16, i, dtype=np.float32))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
"#;

/// The shard file name llama.cpp rebuilds for shard `k` of `n`.
fn shard_file(prefix: &str, k: usize, n: usize) -> String {
    format!("{prefix}-{k:05}-of-{n:05}.gguf")
}

/// Writes the split set into `dir`; returns the shard files in order.
fn write_split(dir: &Path) -> Vec<PathBuf> {
    require_gguf_py();
    python(WRITE, &[dir]);
    let shards: Vec<PathBuf> = (1..=SHARDS)
        .map(|k| dir.join(shard_file("split", k, SHARDS)))
        .collect();
    for s in &shards {
        assert!(s.exists(), "gguf-py wrote {}", s.display());
    }
    shards
}

struct Ran {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn cli(ts: &TestStore, origin: &Origin, env: &[(&str, &str)], args: &[&str]) -> Ran {
    let mut c = ts.cli(origin.ca_pem_path());
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.args(args).stdin(Stdio::null()).output().expect("run");
    Ran {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(r: Ran) -> Ran {
    assert!(r.ok, "command failed:\n{}\n{}", r.stdout, r.stderr);
    r
}

fn manifest_json(ts: &TestStore, name: &str) -> Json {
    let text = std::fs::read(ts.root.join(format!("manifests/{name}.json")))
        .unwrap_or_else(|e| panic!("manifest {name}: {e}"));
    serde_json::from_slice(&text).expect("manifest is JSON")
}

/// The manifest names of set `m` of [`SHARDS`] shards.
fn set_names(m: &str) -> Vec<String> {
    (1..=SHARDS)
        .map(|k| format!("{m}-{k:05}-of-{SHARDS:05}"))
        .collect()
}

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Serves the shards on `hub` under `Q4/` at `main` (only the one named
/// `main_shard`, which says it is at [`COMMIT`]) and at [`COMMIT`] (all).
fn serve_on_hub(hub: &Origin, shards: &[PathBuf], main_shard: usize) {
    for (i, file) in shards.iter().enumerate() {
        let bytes = std::fs::read(file).unwrap();
        let fname = shard_file("split", i + 1, SHARDS);
        let mut revs = vec![COMMIT];
        if i + 1 == main_shard {
            revs.push("main");
        }
        for rev in revs {
            let resolve = format!("{}/resolve/{rev}/Q4/{fname}", hf::REPO);
            hf::serve_lfs_file(hub, &resolve, &bytes);
            hub.set_extra_headers(
                &resolve,
                vec![
                    ("X-Linked-Etag".into(), format!("\"{}\"", hex(&bytes))),
                    ("X-Linked-Size".into(), bytes.len().to_string()),
                    ("X-Repo-Commit".into(), COMMIT.into()),
                ],
            );
        }
    }
}

/// `add --hf` of shard 2 pins the whole set: one HEAD per shard, the
/// others asked at the commit the Hub resolved `main` to, the manifests
/// named as llama.cpp rebuilds them, each with its header's facts.
#[test]
fn add_hf_of_any_shard_pins_every_shard_at_one_commit_with_its_facts() {
    let dir = tempfile::tempdir().unwrap();
    let shards = write_split(dir.path());
    let hub = Origin::start();
    serve_on_hub(&hub, &shards, 2);
    let ts = TestStore::new();
    let endpoint = hf::endpoint(&hub);
    let spec = format!("{}/Q4/{}", hf::REPO, shard_file("split", 2, SHARDS));
    ok(cli(
        &ts,
        &hub,
        &[("HF_ENDPOINT", &endpoint)],
        &["add", "m", "--hf", &spec],
    ));
    for (i, name) in set_names("m").iter().enumerate() {
        let m = manifest_json(&ts, name);
        let bytes = std::fs::read(&shards[i]).unwrap();
        assert_eq!(m["blob"], format!("sha256:{}", hex(&bytes)), "{name}");
        assert_eq!(m["size_bytes"], bytes.len() as u64, "{name}");
        assert_eq!(m["source"]["revision"], COMMIT, "{name}");
        assert_eq!(
            m["source"]["filename"],
            format!("Q4/{}", shard_file("split", i + 1, SHARDS))
        );
        assert_eq!(m["gguf"]["split_no"], i as u64, "{name}: {m}");
        assert_eq!(m["gguf"]["split_count"], SHARDS as u64, "{name}");
        let at_commit = format!(
            "{}/resolve/{COMMIT}/Q4/{}",
            hf::REPO,
            shard_file("split", i + 1, SHARDS)
        );
        let heads =
            hub.stats(&at_commit).heads + hub.stats(&at_commit.replace(COMMIT, "main")).heads;
        assert_eq!(heads, 1, "{name}: one HEAD per shard");
    }
    assert_eq!(
        hub.stats(&format!(
            "{}/resolve/main/Q4/{}",
            hf::REPO,
            shard_file("split", 1, SHARDS)
        ))
        .heads,
        0,
        "the siblings are asked at the commit, not at main"
    );
}

/// `add --url` of shard 1 with one `--sha256` per shard pins the set
/// from the URLs rebuilt by name; the wrong number of digests adds nothing.
#[test]
fn add_url_of_shard_1_with_a_digest_per_shard_pins_the_set_from_rebuilt_urls() {
    let dir = tempfile::tempdir().unwrap();
    let shards = write_split(dir.path());
    let origin = Origin::start();
    let mut digests = Vec::new();
    for (i, file) in shards.iter().enumerate() {
        origin.put_file(&format!("d/{}", shard_file("split", i + 1, SHARDS)), file);
        digests.push(hex(&std::fs::read(file).unwrap()));
    }
    let ts = TestStore::new();
    let url = origin.url(&format!("d/{}", shard_file("split", 1, SHARDS)));
    let mut args = vec!["add", "m", "--url", &url, "--no-facts"];
    for d in &digests[..SHARDS - 1] {
        args.extend(["--sha256", d.as_str()]);
    }
    let short = cli(&ts, &origin, &[], &args);
    assert!(!short.ok, "{}", short.stdout);
    assert!(
        short.stderr.contains("once per shard") && short.stderr.contains("nothing was added"),
        "{}",
        short.stderr
    );
    assert!(
        std::fs::read_dir(ts.root.join("manifests"))
            .unwrap()
            .next()
            .is_none()
    );
    args.extend(["--sha256", digests[SHARDS - 1].as_str()]);
    let out = ok(cli(&ts, &origin, &[], &args));
    for (i, name) in set_names("m").iter().enumerate() {
        let m = manifest_json(&ts, name);
        assert_eq!(m["blob"], format!("sha256:{}", digests[i]));
        assert_eq!(
            m["source"]["url"],
            origin.url(&format!("d/{}", shard_file("split", i + 1, SHARDS)))
        );
        assert!(m.get("gguf").is_none(), "--no-facts");
        assert!(
            out.stdout.contains(&format!("added {name}.gguf ")),
            "{}",
            out.stdout
        );
    }
}

/// Serves the shards at `d/split-0000k-of-0000N.gguf` and adds them as the
/// set `m` with `add --url` of shard 1; the origin paths in shard order.
/// A gguf-py split set written to a temp dir (kept while the first value
/// lives), served by a new origin and pinned in a new store by URL with
/// `extra` flags: `(dir, shard files, origin, store, origin paths)`.
fn set_at_origin(
    extra: &[&str],
) -> (
    tempfile::TempDir,
    Vec<PathBuf>,
    Origin,
    TestStore,
    Vec<String>,
) {
    let dir = tempfile::tempdir().unwrap();
    let shards = write_split(dir.path());
    let origin = Origin::start();
    let ts = TestStore::new();
    let paths = add_by_url(&ts, &origin, &shards, extra);
    (dir, shards, origin, ts, paths)
}

fn add_by_url(ts: &TestStore, origin: &Origin, shards: &[PathBuf], extra: &[&str]) -> Vec<String> {
    let paths: Vec<String> = (1..=shards.len())
        .map(|k| format!("d/{}", shard_file("split", k, shards.len())))
        .collect();
    let digests: Vec<String> = shards
        .iter()
        .map(|f| hex(&std::fs::read(f).unwrap()))
        .collect();
    for (p, f) in paths.iter().zip(shards) {
        origin.put_file(p, f);
    }
    let url = origin.url(&paths[0]);
    let mut args = vec!["add", "m", "--url", &url];
    args.extend(extra);
    for d in &digests {
        args.extend(["--sha256", d.as_str()]);
    }
    ok(cli(ts, origin, &[], &args));
    origin.reset_stats();
    paths
}

/// Through a real mount: reading shard 1 alone fetches every shard.
#[test]
fn reading_one_shard_through_the_mount_fetches_all_its_siblings() {
    let (_dir, shards, origin, ts, paths) = set_at_origin(&[]);
    let mount = Mount::start(&ts, origin.ca_pem_path(), &[]);
    let first = std::fs::read(mount.path(&shard_file("m", 1, SHARDS))).unwrap();
    assert!(first == std::fs::read(&shards[0]).unwrap());
    for (k, p) in paths.iter().enumerate() {
        let file = mount.path(&shard_file("m", k + 1, SHARDS));
        assert!(
            wait_until(Duration::from_secs(20), || getxattr(
                &file,
                "user.modelfs.state"
            )
            .is_ok_and(|s| s == "present")),
            "shard {} is fetched without an open of its own",
            k + 1
        );
        assert!(origin.stats(p).gets >= 1, "{p}");
    }
}

/// `ls`, `status`, `pull`, `info`, `verify` and `rm` treat the set as one model;
/// `pull` records the facts `add --no-facts` left out, from the local files.
#[test]
fn the_cli_treats_a_set_as_one_model_and_pull_fills_its_facts() {
    let dir = tempfile::tempdir().unwrap();
    let shards = write_split(dir.path());
    let total: u64 = shards.iter().map(|f| f.metadata().unwrap().len()).sum();
    let origin = Origin::start();
    let ts = TestStore::new();
    add_by_url(&ts, &origin, &shards, &["--no-facts"]);
    let run = |args: &[&str]| ok(cli(&ts, &origin, &[], args)).stdout;

    let ls = run(&["ls"]);
    let lines: Vec<&str> = ls.lines().skip(1).collect();
    assert_eq!(lines.len(), 1, "{ls}");
    assert!(
        lines[0].starts_with("m-*-of-00004 ") && lines[0].contains("pending"),
        "{ls}"
    );
    assert!(lines[0].contains("4 shards"), "{ls}");
    assert_eq!(run(&["ls", "--shards"]).lines().count(), 1 + SHARDS);
    let json: Json = serde_json::from_str(&run(&["ls", "--json"])).unwrap();
    assert_eq!(json[0]["size_bytes"], total, "{json}");
    assert_eq!(json[0]["shards"].as_array().unwrap().len(), SHARDS);

    let pulled = run(&["pull", "m"]);
    assert_eq!(
        pulled.matches("fetched and verified").count(),
        SHARDS,
        "{pulled}"
    );
    for (i, name) in set_names("m").iter().enumerate() {
        let m = manifest_json(&ts, name);
        assert_eq!(
            m["gguf"]["split_no"], i as u64,
            "pull filled {name}'s facts"
        );
    }
    let ls = run(&["ls"]);
    assert!(ls.contains("present") && ls.contains("llama"), "{ls}");
    let status = run(&["status"]);
    let rows: Vec<&str> = status.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{status}");
    assert!(
        rows[0].starts_with("m-*-of-00004.gguf") && rows[0].contains("present"),
        "{status}"
    );
    let info: Json = serde_json::from_str(&run(&["info", "m", "--json"])).unwrap();
    assert_eq!(info["name"], "m-*-of-00004");
    assert_eq!(info["size_bytes"], total);
    assert_eq!(
        info["gguf"]["parameters"],
        8 * 65536,
        "every shard's tensors: {info}"
    );
    assert_eq!(info["gguf"]["split_count"], SHARDS as u64);
    let verified = run(&["verify", "m-*-of-00004"]);
    assert_eq!(verified.matches(": ok (").count(), SHARDS, "{verified}");
    run(&["rm", "m"]);
    assert!(
        std::fs::read_dir(ts.root.join("manifests"))
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().ends_with(".json")),
        "every shard removed"
    );
    let gone = cli(&ts, &origin, &[], &["pull", "m"]);
    assert!(
        !gone.ok && gone.stderr.contains("no such model"),
        "{}",
        gone.stderr
    );
}

/// A llama.cpp-style loader: opens the file given (shard 1), reads
/// `split.no` and `split.count` from its header with gguf-py, derives the
/// prefix as `llama_split_prefix` does and rebuilds each sibling's name as
/// `llama_split_path` does (`%s-%05d-of-%05d.gguf`), then opens and reads
/// every shard in order. Right after shard 1's open returns (before any
/// sibling is opened) it notes each sibling's `user.modelfs.state`. Prints
/// JSON: the states then, and each shard's path, SHA-256 and tensor names.
const LOAD: &str = r#"
import sys, os, json, hashlib
from gguf import GGUFReader

path = sys.argv[1]
fd = os.open(path, os.O_RDONLY)
os.close(fd)
r = GGUFReader(path)
n = int(r.fields["split.count"].contents())
no = int(r.fields["split.no"].contents())
assert no == 0, f"model must be loaded with the first split, got split.no {no}"
postfix = "-%05d-of-%05d.gguf" % (no + 1, n)
assert path.endswith(postfix) and len(path) > len(postfix), "invalid split file name"
prefix = path[: -len(postfix)]
names = ["%s-%05d-of-%05d.gguf" % (prefix, i + 1, n) for i in range(n)]
states = [os.getxattr(p, "user.modelfs.state").decode() for p in names[1:]]
shards = []
for i, p in enumerate(names):
    rr = r if i == 0 else GGUFReader(p)
    assert int(rr.fields["split.no"].contents()) == i
    with open(p, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    shards.append({"path": p, "sha256": digest, "tensors": [t.name for t in rr.tensors]})
print(json.dumps({"sibling_states_after_first_open": states, "shards": shards}))
"#;

/// A split model loads through the mount from shard 1, llama.cpp's way,
/// with every shard fetched on demand: nothing is on disk before, every
/// sibling's download started when shard 1 was opened, each shard was
/// fetched once, and the bytes are the shards gguf-py wrote.
#[test]
fn a_llama_cpp_style_loader_loads_a_split_model_through_the_mount_fetched_lazily() {
    let (_dir, shards, origin, ts, paths) = set_at_origin(&[]);
    let mount = Mount::start(&ts, origin.ca_pem_path(), &[]);
    for k in 1..=SHARDS {
        let file = mount.path(&shard_file("m", k, SHARDS));
        assert_eq!(getxattr(&file, "user.modelfs.state").unwrap(), "pending");
    }
    assert_eq!(
        origin.total_requests(),
        0,
        "nothing fetched before the load"
    );
    let out = python(LOAD, &[&mount.path(&shard_file("m", 1, SHARDS))]);
    let load: Json = serde_json::from_slice(&out.stdout).unwrap();
    for s in load["sibling_states_after_first_open"].as_array().unwrap() {
        assert!(
            s == "fetching" || s == "present",
            "every sibling's download started with shard 1's open: {load}"
        );
    }
    let loaded = load["shards"].as_array().unwrap();
    assert_eq!(loaded.len(), SHARDS);
    for (k, (shard, p)) in loaded.iter().zip(&paths).enumerate() {
        assert_eq!(
            shard["sha256"],
            hex(&std::fs::read(&shards[k]).unwrap()),
            "shard {} reads as gguf-py wrote it",
            k + 1
        );
        assert_eq!(shard["tensors"].as_array().unwrap().len(), 2);
        assert_eq!(origin.stats(p).gets, 1, "{p} fetched once");
    }
}

/// With every request held at the origin for a while, the siblings'
/// downloads run alongside shard 1's: all of them were asked of the origin
/// before shard 1's open returned, and reading them afterwards fetches
/// nothing more.
#[test]
fn the_siblings_downloads_overlap_the_first_shards_on_a_slow_origin() {
    let (_dir, shards, origin, ts, paths) = set_at_origin(&["--no-facts"]);
    for p in &paths {
        origin.set_persistent_fault(
            p,
            Some(crate::common::Fault::StallHeaders(Duration::from_millis(
                500,
            ))),
        );
    }
    let mount = Mount::start(&ts, origin.ca_pem_path(), &[]);
    let first = std::fs::File::open(mount.path(&shard_file("m", 1, SHARDS))).unwrap();
    let asked: Vec<u64> = paths
        .iter()
        .map(|p| origin.stats_now(p).request_headers.len() as u64)
        .collect();
    assert!(
        asked.iter().all(|&n| n == 1),
        "requests per shard when shard 1's open returned: {asked:?}"
    );
    drop(first);
    for (k, p) in paths.iter().enumerate() {
        let bytes = std::fs::read(mount.path(&shard_file("m", k + 1, SHARDS))).unwrap();
        assert!(bytes == std::fs::read(&shards[k]).unwrap());
        assert_eq!(origin.stats(p).gets, 1, "{p}");
    }
}

/// A set with a shard the Hub does not have adds nothing: every shard is
/// asked before any manifest is written.
#[test]
fn add_hf_of_a_set_with_a_missing_shard_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let shards = write_split(dir.path());
    let hub = Origin::start();
    serve_on_hub(&hub, &shards, 1);
    hub.remove(&format!(
        "{}/resolve/{COMMIT}/Q4/{}",
        hf::REPO,
        shard_file("split", 3, SHARDS)
    ));
    let ts = TestStore::new();
    let endpoint = hf::endpoint(&hub);
    let spec = format!("{}/Q4/{}", hf::REPO, shard_file("split", 1, SHARDS));
    let out = cli(
        &ts,
        &hub,
        &[("HF_ENDPOINT", &endpoint)],
        &["add", "m", "--hf", &spec],
    );
    assert!(!out.ok, "{}", out.stdout);
    assert!(
        out.stderr.contains("m-00003-of-00004") && out.stderr.contains("nothing was added"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_dir(ts.root.join("manifests"))
            .unwrap()
            .count(),
        0
    );
}
