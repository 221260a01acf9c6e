//! Issue 18: `modelfs import --from ollama|hf-cache|lmstudio|DIR` adopts
//! the GGUFs other tools keep, without copying a byte where that is safe.
//!
//! Every fixture is built by the test in its tool's real layout: Ollama's
//! `manifests/<registry>/<ns>/<model>/<tag>` with several layers and
//! `blobs/sha256-<hex>`; a Hub cache with `refs/main`, two snapshots and a
//! split set, linked into `blobs/`; an LM Studio tree. The tests prove the
//! bytes are right, that nothing is copied on the same filesystem (disk
//! use measured on private loop-mounted ext4 and XFS images: a hard link
//! and a reflink), that provenance is kept, that a second run changes
//! nothing, that a file whose name lies about its digest is rejected, that
//! the mount serves the results, that a hard-linked file changed in place is
//! never served, and that another filesystem (a tmpfs) gets a copy.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::sys::{getxattr, open_and_read};
use crate::common::{MIB, Mount, Origin, TestStore, modelfs_bin, random_bytes};
use modelfs::digest::Sha256;
use modelfs::store::Store;
use serde_json::{Value, json};

const MODEL: &str = "application/vnd.ollama.image.model";
const NEW: &str = "2222222222222222222222222222222222222222";
const OLD: &str = "1111111111111111111111111111111111111111";

/// A GGUF v3 file whose header says `general.architecture = llama`, then
/// `len` bytes in all of pseudo-random data.
fn gguf_model(len: usize, seed: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes()); // tensors
    b.extend(1u64.to_le_bytes()); // key-value pairs
    let key = b"general.architecture";
    b.extend((key.len() as u64).to_le_bytes());
    b.extend(key);
    b.extend(8u32.to_le_bytes()); // a string
    b.extend(5u64.to_le_bytes());
    b.extend(b"llama");
    b.extend(random_bytes(len.saturating_sub(b.len()), seed));
    b
}

/// An Ollama store being built.
struct Ollama {
    root: PathBuf,
}

impl Ollama {
    fn new(root: PathBuf) -> Self {
        fs::create_dir_all(root.join("blobs")).unwrap();
        Self { root }
    }

    /// `blobs/sha256-<hex of claimed>` holding `actual`.
    fn blob_as(&self, claimed: &[u8], actual: &[u8]) -> PathBuf {
        let p = self
            .root
            .join("blobs")
            .join(format!("sha256-{}", Sha256::of(claimed).to_hex()));
        fs::write(&p, actual).unwrap();
        p
    }

    fn blob(&self, bytes: &[u8]) -> PathBuf {
        self.blob_as(bytes, bytes)
    }

    /// Where the blob of `bytes` is (nothing is written).
    fn path_of(&self, bytes: &[u8]) -> PathBuf {
        self.root
            .join("blobs")
            .join(format!("sha256-{}", Sha256::of(bytes).to_hex()))
    }

    /// `manifests/registry.ollama.ai/<path>` naming these layers (whose
    /// blobs are written too) and a config.
    fn manifest(&self, path: &str, layers: &[(&str, &[u8])]) {
        let config = br#"{"model_format":"gguf"}"#;
        self.blob(config);
        let layer = |t: &str, b: &[u8]| json!({"mediaType": t, "digest": Sha256::of(b).to_blob_ref(), "size": b.len()});
        let m = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": layer("application/vnd.docker.container.image.v1+json", config),
            "layers": layers.iter().map(|(t, b)| layer(t, b)).collect::<Vec<_>>(),
        });
        let p = self.root.join("manifests/registry.ollama.ai").join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    }

    /// A model with the weights `w` and the usual small layers, and a
    /// projector `proj`.
    fn model(&self, path: &str, w: &[u8], proj: &[u8]) {
        for b in [w, proj] {
            self.blob(b);
        }
        let small: [&[u8]; 3] = [b"{{ .Prompt }}", br#"{"stop":["<|eot|>"]}"#, b"MIT License"];
        for b in small {
            self.blob(b);
        }
        let layers: [(&str, &[u8]); 5] = [
            (MODEL, w),
            ("application/vnd.ollama.image.template", small[0]),
            ("application/vnd.ollama.image.params", small[1]),
            ("application/vnd.ollama.image.license", small[2]),
            ("application/vnd.ollama.image.projector", proj),
        ];
        self.manifest(path, &layers);
    }
}

/// A Hub cache folder `models--<org>--<repo>` being built.
struct Hub {
    repo: PathBuf,
}

impl Hub {
    fn new(hub: &Path, repo_id: &str, main: &str) -> Self {
        let repo = hub.join(format!("models--{}", repo_id.replace('/', "--")));
        fs::create_dir_all(repo.join("refs")).unwrap();
        fs::create_dir_all(repo.join("blobs")).unwrap();
        fs::write(repo.join("refs/main"), main).unwrap();
        Self { repo }
    }

    /// `snapshots/<commit>/<rel>` → `../../blobs/<sha256 of claimed>`,
    /// which holds `actual`.
    fn file_as(&self, commit: &str, rel: &str, claimed: &[u8], actual: &[u8]) {
        let hex = Sha256::of(claimed).to_hex();
        fs::write(self.repo.join("blobs").join(&hex), actual).unwrap();
        let link = self.repo.join("snapshots").join(commit).join(rel);
        fs::create_dir_all(link.parent().unwrap()).unwrap();
        let up = "../".repeat(rel.matches('/').count() + 2);
        symlink(format!("{up}blobs/{hex}"), link).unwrap();
    }

    fn file(&self, commit: &str, rel: &str, bytes: &[u8]) {
        self.file_as(commit, rel, bytes, bytes)
    }
}

/// What a command did.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `modelfs --store STORE ARGS` with a clean environment.
fn modelfs(store: &Path, args: &[&str]) -> Ran {
    let out = Command::new(modelfs_bin())
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("MODELS_HOME")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `modelfs import --from FROM [--path PATH] EXTRA…`, which must exit 0.
fn import_ok(store: &Path, from: &str, path: Option<&Path>, extra: &[&str]) -> Ran {
    let r = import(store, from, path, extra);
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    r
}

fn import(store: &Path, from: &str, path: Option<&Path>, extra: &[&str]) -> Ran {
    let mut args = vec!["import", "--from", from];
    if let Some(p) = path {
        args.extend(["--path", p.to_str().unwrap()]);
    }
    args.extend(extra);
    modelfs(store, &args)
}

/// How the report says `file` was placed (`hard link`, `reflink, …`,
/// `copy`, …).
fn placed<'a>(stdout: &'a str, file: &str) -> &'a str {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("added") && l.split_whitespace().nth(1) == Some(file))
        .unwrap_or_else(|| panic!("{file} was not added:\n{stdout}"));
    let start = line.rfind('(').unwrap() + 1;
    &line[start..line.len() - 1]
}

fn manifest_json(store: &Path, name: &str) -> Value {
    let p = store.join("manifests").join(format!("{name}.json"));
    serde_json::from_slice(&fs::read(&p).unwrap()).unwrap()
}

fn manifest_names(store: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(store.join("manifests"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().replace(".json", ""))
        .collect();
    v.sort();
    v
}

fn blob_path(store: &Path, bytes: &[u8]) -> PathBuf {
    Store::open(store).unwrap().blob_path(&Sha256::of(bytes))
}

/// Every file of `dir`'s tree, with its bytes (to compare a tree before
/// and after).
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push((e.path(), fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Bytes free on the filesystem holding `p` (statvfs).
fn free_bytes(p: &Path) -> u64 {
    modelfs::sys::free_bytes(p).expect("statvfs")
}

/// A filesystem mounted by the test under a temporary folder, unmounted
/// (and its loop device released) when dropped.
struct PrivateFs {
    _dir: tempfile::TempDir,
    mountpoint: PathBuf,
}

impl PrivateFs {
    /// A tmpfs.
    fn tmpfs() -> Self {
        Self::mount(|mp, _| vec!["-t", "tmpfs", "-o", "size=256m", "tmpfs", mp])
    }

    /// A loop-mounted image made with `mkfs` (`mkfs.ext4 …`, `mkfs.xfs …`).
    fn image(mkfs: &[&str], size: u64) -> Self {
        Self::mount(|mp, img| {
            let f = fs::File::create(img).unwrap();
            f.set_len(size).unwrap();
            let st = Command::new(mkfs[0])
                .args(&mkfs[1..])
                .arg(img)
                .stdout(Stdio::null())
                .status()
                .unwrap_or_else(|e| panic!("this test needs {}: {e}", mkfs[0]));
            assert!(st.success(), "{mkfs:?} failed");
            vec!["-o", "loop", img, mp]
        })
    }

    fn mount(args: impl for<'a> FnOnce(&'a str, &'a str) -> Vec<&'a str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mp = dir.path().join("mnt");
        fs::create_dir(&mp).unwrap();
        let img = dir.path().join("fs.img");
        let (mp_s, img_s) = (mp.to_str().unwrap(), img.to_str().unwrap());
        let out = Command::new("mount")
            .args(args(mp_s, img_s))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test needs to mount a filesystem (as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            _dir: dir,
            mountpoint: mp,
        }
    }
}

impl Drop for PrivateFs {
    fn drop(&mut self) {
        let st = Command::new("umount").arg(&self.mountpoint).status();
        if !st.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
    }
}

#[test]
fn ollama_models_are_named_from_model_and_tag_keep_their_provenance_and_a_second_run_changes_nothing()
 {
    let ts = TestStore::new();
    let ollama = Ollama::new(ts.root.parent().unwrap().join("ollama"));
    let weights = gguf_model(3 * MIB, 1);
    let proj = gguf_model(MIB / 2, 2);
    ollama.model("library/llama3.2/3b", &weights, &proj);
    // Two tags of one model share a blob, as `ollama pull` makes them.
    ollama.model("library/llama3.2/latest", &weights, &proj);
    let tiny = gguf_model(MIB, 3);
    ollama.manifest("me/tiny/q8", &[(MODEL, &tiny)]);
    ollama.blob(&tiny);

    let first = import_ok(&ts.root, "ollama", Some(&ollama.root), &[]);
    assert_eq!(
        manifest_names(&ts.root),
        ["llama3.2-3b", "llama3.2-latest", "me-tiny-q8"],
        "only the weights, never templates, params, licences or projectors:\n{}",
        first.stdout
    );
    assert!(
        first.stdout.contains("3 added, 0 skipped, 0 rejected"),
        "{}",
        first.stdout
    );
    let how = placed(&first.stdout, "llama3.2-3b.gguf");
    eprintln!("an Ollama blob on the store's filesystem was placed by: {how}");
    let blob = blob_path(&ts.root, &weights);
    let theirs = ollama.path_of(&weights);
    assert!(fs::read(&blob).unwrap() == weights, "byte for byte");
    if how == "hard link" {
        assert_eq!(
            fs::metadata(&blob).unwrap().ino(),
            fs::metadata(&theirs).unwrap().ino()
        );
    } else {
        assert!(
            how.starts_with("reflink"),
            "no copy on one filesystem: {how}"
        );
    }
    // The second tag needed no bytes: its blob was there.
    assert!(placed(&first.stdout, "llama3.2-latest.gguf").contains("in the store already"));

    let m = manifest_json(&ts.root, "llama3.2-3b");
    assert_eq!(m["blob"], Sha256::of(&weights).to_blob_ref());
    assert_eq!(m["source"]["registry"], "registry.ollama.ai");
    assert_eq!(m["source"]["repo"], "library/llama3.2");
    assert_eq!(m["source"]["revision"], "3b");
    assert_eq!(
        m["source"]["filename"],
        format!("sha256-{}", Sha256::of(&weights).to_hex())
    );
    assert_eq!(
        m["gguf"]["architecture"], "llama",
        "facts from the local file: {m}"
    );
    assert_eq!(
        manifest_json(&ts.root, "me-tiny-q8")["source"]["repo"],
        "me/tiny"
    );
    let ls = modelfs(&ts.root, &["ls"]);
    assert!(ls.stdout.contains("ollama:llama3.2:3b"), "{}", ls.stdout);
    assert!(ls.stdout.contains("ollama:me/tiny:q8"), "{}", ls.stdout);

    // Again: nothing is written, not even a record's stamps move.
    let store_before = tree(&ts.root);
    let stamps = fs::metadata(&blob).unwrap().ctime_nsec();
    let again = import_ok(&ts.root, "ollama", Some(&ollama.root), &[]);
    assert!(
        again.stdout.contains("0 added, 3 skipped, 0 rejected"),
        "{}",
        again.stdout
    );
    assert!(
        again.stdout.contains("already imported"),
        "{}",
        again.stdout
    );
    assert!(
        tree(&ts.root) == store_before,
        "a second run changed the store"
    );
    assert_eq!(fs::metadata(&blob).unwrap().ctime_nsec(), stamps);

    // The projector when asked, for one model.
    let with = import_ok(
        &ts.root,
        "ollama",
        Some(&ollama.root),
        &["--projector", "llama3.2:3b"],
    );
    assert!(
        with.stdout.contains("added    llama3.2-3b-mmproj.gguf"),
        "{}",
        with.stdout
    );
    assert!(fs::read(blob_path(&ts.root, &proj)).unwrap() == proj);
    // --name for one model; a missing model is an error that says so.
    import_ok(
        &ts.root,
        "ollama",
        Some(&ollama.root),
        &["me/tiny:q8", "--name", "mine"],
    );
    assert_eq!(
        manifest_json(&ts.root, "mine")["blob"],
        Sha256::of(&tiny).to_blob_ref()
    );
    let missing = import(&ts.root, "ollama", Some(&ollama.root), &["llama3.2:70b"]);
    assert_ne!(missing.code, 0);
    assert!(
        missing.stderr.contains("llama3.2:70b: no such model")
            && missing.stderr.contains("it has the tags 3b, latest"),
        "{}",
        missing.stderr
    );
    ts.assert_consistent();
}

#[test]
fn a_file_whose_name_lies_about_its_digest_is_rejected_and_nothing_of_it_is_placed() {
    let ts = TestStore::new();
    let top = ts.root.parent().unwrap();
    let ollama = Ollama::new(top.join("ollama"));
    let good = gguf_model(MIB, 10);
    let claimed = gguf_model(MIB, 11);
    let actual = gguf_model(MIB, 12); // the same size: only the hash can tell
    ollama.manifest("library/good/1", &[(MODEL, &good)]);
    ollama.blob(&good);
    ollama.manifest("library/liar/1", &[(MODEL, &claimed)]);
    ollama.blob_as(&claimed, &actual);
    let hub = Hub::new(&top.join("hub"), "org/Liar-GGUF", NEW);
    hub.file_as(NEW, "liar.gguf", &claimed, &actual);

    for (from, path, name) in [
        ("ollama", ollama.root.clone(), "liar-1"),
        ("hf-cache", top.join("hub"), "liar"),
    ] {
        let r = import(&ts.root, from, Some(&path), &[]);
        assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
        let line = r
            .stdout
            .lines()
            .find(|l| l.starts_with("rejected"))
            .unwrap();
        assert!(
            line.contains(name)
                && line.contains("is named after sha256")
                && line.contains("hash to"),
            "{line}"
        );
        assert!(r.stderr.contains("were not imported"), "{}", r.stderr);
        assert!(!ts.root.join(format!("manifests/{name}.json")).exists());
    }
    // The good model in the same run went in; the lie left nothing.
    assert_eq!(manifest_names(&ts.root), ["good-1"]);
    let blobs = Store::open(&ts.root).unwrap().list_blobs().unwrap();
    assert_eq!(blobs, [(Sha256::of(&good), good.len() as u64)]);
    let stray: Vec<_> = fs::read_dir(ts.root.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".import-"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
    ts.assert_consistent();
}

#[test]
fn the_hub_cache_is_imported_from_the_snapshot_main_names_and_a_split_set_keeps_its_shard_names() {
    let ts = TestStore::new();
    let hub_dir = ts.root.parent().unwrap().join("hub");
    let hub = Hub::new(&hub_dir, "org/Model-GGUF", NEW);
    let old = gguf_model(MIB, 20);
    let new = gguf_model(MIB, 21);
    let shards = [gguf_model(MIB, 22), gguf_model(MIB, 23)];
    hub.file(OLD, "model-q4_k_m.gguf", &old);
    hub.file(NEW, "model-q4_k_m.gguf", &new);
    hub.file(NEW, "big/big-00001-of-00002.gguf", &shards[0]);
    hub.file(NEW, "big/big-00002-of-00002.gguf", &shards[1]);
    hub.file(NEW, "README.md", b"# a model card");
    let other = Hub::new(&hub_dir, "someone/else", OLD);
    other.file(OLD, "else.gguf", &gguf_model(MIB, 24));

    let r = import_ok(&ts.root, "hf-cache", Some(&hub_dir), &["org/Model-GGUF"]);
    assert_eq!(
        manifest_names(&ts.root),
        ["big-00001-of-00002", "big-00002-of-00002", "model-q4_k_m"],
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("skipped  org/Model-GGUF/model-q4_k_m.gguf@1111111: an older snapshot"),
        "{}",
        r.stdout
    );
    assert!(
        fs::read(blob_path(&ts.root, &new)).unwrap() == new,
        "main's bytes"
    );
    for (i, s) in shards.iter().enumerate() {
        let m = manifest_json(&ts.root, &format!("big-0000{}-of-00002", i + 1));
        assert_eq!(m["blob"], Sha256::of(s).to_blob_ref());
        assert_eq!(
            m["source"]["filename"],
            format!("big/big-0000{}-of-00002.gguf", i + 1)
        );
    }
    let m = manifest_json(&ts.root, "model-q4_k_m");
    assert_eq!(m["source"]["registry"], "huggingface.co");
    assert_eq!(m["source"]["repo"], "org/Model-GGUF");
    assert_eq!(m["source"]["revision"], NEW);
    // So it can be fetched from the Hub again, at that commit.
    let ls = modelfs(&ts.root, &["ls", "--json"]);
    let ls: Value = serde_json::from_str(&ls.stdout).unwrap();
    let row = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "model-q4_k_m")
        .unwrap();
    assert_eq!(
        row["url"],
        format!("https://huggingface.co/org/Model-GGUF/resolve/{NEW}/model-q4_k_m.gguf")
    );
    assert_eq!(row["from"], "hf:org/Model-GGUF@2222222/model-q4_k_m.gguf");

    let before = tree(&ts.root);
    let again = import_ok(&ts.root, "hf-cache", Some(&hub_dir), &["org/Model-GGUF"]);
    assert!(again.stdout.contains("0 added"), "{}", again.stdout);
    assert!(tree(&ts.root) == before, "a second run changed the store");
    // $HF_HUB_CACHE is where it looks by default; every repository then.
    let mut c = Command::new(modelfs_bin());
    c.args([
        "--store",
        ts.root.to_str().unwrap(),
        "import",
        "--from",
        "hf-cache",
    ])
    .env("HF_HUB_CACHE", &hub_dir)
    .stdin(Stdio::null());
    let out = c.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("added    else.gguf"),
        "{text}"
    );
    ts.assert_consistent();
}

#[test]
fn lm_studio_and_a_plain_folder_are_imported_by_file_stem_with_where_they_were() {
    let ts = TestStore::new();
    let top = ts.root.parent().unwrap();
    let lms = top.join("lmstudio/models");
    let qwen = gguf_model(MIB, 30);
    let proj = gguf_model(MIB / 4, 31);
    let dir = lms.join("lmstudio-community/Qwen2.5-GGUF");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("Qwen2.5-0.5B-Q4_K_M.gguf"), &qwen).unwrap();
    fs::write(dir.join("mmproj-Qwen2.5-f16.gguf"), &proj).unwrap();
    let r = import_ok(&ts.root, "lmstudio", Some(&lms), &[]);
    assert!(r.stdout.contains("2 added"), "{}", r.stdout);
    let m = manifest_json(&ts.root, "Qwen2.5-0.5B-Q4_K_M");
    assert_eq!(m["source"]["registry"], "lmstudio");
    assert_eq!(m["source"]["repo"], "lmstudio-community/Qwen2.5-GGUF");
    assert_eq!(m["source"]["filename"], "Qwen2.5-0.5B-Q4_K_M.gguf");
    assert!(fs::read(blob_path(&ts.root, &qwen)).unwrap() == qwen);
    let again = import_ok(&ts.root, "lmstudio", Some(&lms), &[]);
    assert!(
        again.stdout.contains("0 added, 2 skipped"),
        "{}",
        again.stdout
    );

    let folder = top.join("my models");
    fs::create_dir_all(folder.join("old")).unwrap();
    let mine = gguf_model(MIB, 32);
    fs::write(folder.join("old/my model.gguf"), &mine).unwrap();
    fs::write(folder.join("notes.txt"), b"not a model").unwrap();
    fs::write(folder.join("fake.gguf"), b"<html>not found</html>").unwrap();
    let r = import(&ts.root, folder.to_str().unwrap(), None, &[]);
    assert_eq!(r.code, 1, "the fake GGUF is rejected:\n{}", r.stdout);
    assert!(
        r.stdout.contains("rejected fake") && r.stdout.contains("is not a GGUF file"),
        "{}",
        r.stdout
    );
    let m = manifest_json(&ts.root, "my-model");
    assert_eq!(m["source"]["registry"], "local");
    assert_eq!(m["source"]["filename"], "old/my model.gguf");
    let ls = modelfs(&ts.root, &["ls"]);
    assert!(
        ls.stdout.contains("my models/old/my model.gguf"),
        "{}",
        ls.stdout
    );
    assert!(
        ls.stdout
            .contains("lmstudio:lmstudio-community/Qwen2.5-GGUF/"),
        "{}",
        ls.stdout
    );
    ts.assert_consistent();
}

#[test]
fn the_mount_serves_imported_models_byte_for_byte_without_the_network() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let top = ts.root.parent().unwrap();
    let ollama = Ollama::new(top.join("ollama"));
    let weights = gguf_model(4 * MIB, 40);
    ollama.model("library/qwen/7b", &weights, &gguf_model(MIB, 41));
    let hub = Hub::new(&top.join("hub"), "org/Split-GGUF", NEW);
    let shards = [gguf_model(2 * MIB, 42), gguf_model(MIB, 43)];
    hub.file(NEW, "s-00001-of-00002.gguf", &shards[0]);
    hub.file(NEW, "s-00002-of-00002.gguf", &shards[1]);
    import_ok(&ts.root, "ollama", Some(&ollama.root), &[]);
    import_ok(&ts.root, "hf-cache", Some(&top.join("hub")), &[]);

    let mount = Mount::start(&ts, origin.ca_pem_path(), &[]);
    for (file, bytes) in [
        ("qwen-7b.gguf", &weights),
        ("s-00001-of-00002.gguf", &shards[0]),
        ("s-00002-of-00002.gguf", &shards[1]),
    ] {
        let got = open_and_read(&mount.path(file));
        assert!(
            got.as_ref().is_ok_and(|v| v == bytes),
            "{file}: {:?}\n{}",
            got.err(),
            mount.log()
        );
    }
    assert_eq!(origin.total_requests(), 0);
    ts.assert_consistent();
}

#[test]
fn a_hard_linked_blob_changed_in_place_after_import_is_verified_again_and_never_served() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let ollama = Ollama::new(ts.root.parent().unwrap().join("ollama"));
    let weights = gguf_model(2 * MIB, 50);
    ollama.manifest("library/m/1", &[(MODEL, &weights)]);
    let theirs = ollama.blob(&weights);
    let r = import_ok(&ts.root, "ollama", Some(&ollama.root), &[]);
    let how = placed(&r.stdout, "m-1.gguf").to_string();
    let mount = Mount::start(&ts, origin.ca_pem_path(), &[]);
    let path = mount.path("m-1.gguf");
    assert!(open_and_read(&path).unwrap() == weights);

    // Someone writes into Ollama's file in place.
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().write(true).open(&theirs).unwrap();
    f.write_all_at(&[weights[777_777] ^ 0xff], 777_777).unwrap();
    drop(f);
    let again = open_and_read(&path);
    if how == "hard link" {
        assert_eq!(
            again.err(),
            Some(libc::EIO),
            "never the changed bytes:\n{}",
            mount.log()
        );
        let why = getxattr(&path, "user.modelfs.error").unwrap();
        assert!(why.contains("changed on disk"), "{why}");
        assert_eq!(ts.quarantined().len(), 1);
        assert!(open_and_read(&path).is_err(), "nor later");
    } else {
        // A reflink shares nothing an edit can reach.
        assert!(again.unwrap() == weights, "{how}");
    }
    assert_eq!(origin.total_requests(), 0);
    ts.assert_consistent();
}

#[test]
fn another_filesystem_gets_a_copy_with_progress() {
    let ts = TestStore::new();
    let other = PrivateFs::tmpfs();
    let ollama = Ollama::new(other.mountpoint.join("ollama"));
    let weights = gguf_model(8 * MIB, 60);
    ollama.manifest("library/m/1", &[(MODEL, &weights)]);
    let theirs = ollama.blob(&weights);
    assert_ne!(
        fs::metadata(&theirs).unwrap().dev(),
        fs::metadata(&ts.root).unwrap().dev(),
        "two filesystems"
    );
    let r = import_ok(&ts.root, "ollama", Some(&ollama.root), &[]);
    assert_eq!(placed(&r.stdout, "m-1.gguf"), "copy");
    assert!(
        r.stderr.contains("m-1: copying: 8.0 MiB done"),
        "progress:\n{}",
        r.stderr
    );
    let blob = blob_path(&ts.root, &weights);
    assert!(fs::read(&blob).unwrap() == weights);
    assert_eq!(fs::metadata(&blob).unwrap().nlink(), 1);
    drop(other);
    // The copy stays when the other filesystem goes.
    assert!(fs::read(&blob).unwrap() == weights);
    ts.assert_consistent();
}

/// Imports a 32 MiB Ollama model on a fresh filesystem made by `mkfs`
/// (store and Ollama folder both on it); how it was placed and the bytes
/// the filesystem used for it.
fn measured_import(mkfs: &[&str], size: u64) -> (String, u64) {
    let fs_ = PrivateFs::image(mkfs, size);
    let store = fs_.mountpoint.join("store");
    let ollama = Ollama::new(fs_.mountpoint.join("ollama"));
    let weights = gguf_model(32 * MIB, 70);
    ollama.manifest("library/m/1", &[(MODEL, &weights)]);
    ollama.blob(&weights);
    Store::create(&store).unwrap();
    let sync = || {
        assert!(
            Command::new("sync")
                .arg("-f")
                .arg(&store)
                .status()
                .unwrap()
                .success()
        )
    };
    sync();
    let before = free_bytes(&store);
    let r = import_ok(&store, "ollama", Some(&ollama.root), &[]);
    sync();
    let used = before.saturating_sub(free_bytes(&store));
    assert!(fs::read(blob_path(&store, &weights)).unwrap() == weights);
    (placed(&r.stdout, "m-1.gguf").to_string(), used)
}

#[test]
fn on_ext4_the_import_is_a_hard_link_and_uses_no_space() {
    let (how, used) = measured_import(&["mkfs.ext4", "-q", "-F"], 128 << 20);
    eprintln!("ext4: {how}; 32 MiB imported, {used} bytes of the filesystem used");
    assert_eq!(how, "hard link");
    assert!(used < MIB as u64, "{used} bytes used");
}

#[test]
fn on_xfs_the_import_is_a_reflink_and_uses_no_space() {
    let (how, used) = measured_import(&["mkfs.xfs", "-q", "-f", "-m", "reflink=1"], 512 << 20);
    eprintln!("xfs: {how}; 32 MiB imported, {used} bytes of the filesystem used");
    assert!(how.starts_with("reflink"), "{how}");
    assert!(used < MIB as u64, "{used} bytes used");
}
