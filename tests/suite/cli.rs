//! The `modelfs` binary, run as a user runs it, against a store in a temp
//! dir and a real HTTPS origin: what it prints, how it exits, and what it
//! leaves in the store and asks of the origin.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::{
    Fault, Origin, TestStore, gguf_bytes, hex, hf, modelfs_bin, random_bytes, wait_until,
};
use modelfs::digest::Sha256;
use modelfs::store::{BlobState, ModelName, lock};
use serde_json::Value;

/// What a finished command said and how it exited.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "command failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    fn failed(self) -> Self {
        assert_ne!(
            self.code, 0,
            "command should fail:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

fn ran(out: Output) -> Ran {
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `modelfs --store <ts> --ca-file <ca> ARGS...` to the end.
fn cli(ts: &TestStore, origin: &Origin, args: &[&str]) -> Ran {
    ran(ts
        .cli(origin.ca_pem_path())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run modelfs"))
}

/// `modelfs` with no `--store` and a controlled environment.
fn bare(env: &[(&str, &Path)]) -> Command {
    let mut c = Command::new(modelfs_bin());
    for v in [
        "MODELS_HOME",
        "XDG_DATA_HOME",
        "HOME",
        "HF_TOKEN",
        "HF_ENDPOINT",
        "SSL_CERT_FILE",
    ] {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(Stdio::null());
    c
}

fn manifest_json(ts: &TestStore, name: &str) -> Value {
    let text = fs::read(ts.root.join(format!("manifests/{name}.json"))).expect("manifest");
    serde_json::from_slice(&text).expect("manifest is JSON")
}

fn ls_json(ts: &TestStore, origin: &Origin) -> Vec<Value> {
    let out = cli(ts, origin, &["ls", "--json"]).ok();
    let v: Value = serde_json::from_str(&out.stdout).expect("ls --json prints JSON");
    v.as_array().expect("an array").clone()
}

fn state_of(ts: &TestStore, origin: &Origin, name: &str) -> String {
    ls_json(ts, origin)
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("{name} is listed"))["state"]
        .as_str()
        .unwrap()
        .to_string()
}

fn blob_bytes(ts: &TestStore, bytes: &[u8]) -> Vec<u8> {
    fs::read(ts.store().blob_path(&Sha256::of(bytes))).expect("blob present")
}

#[test]
fn add_with_url_and_sha256_writes_a_pending_manifest_and_downloads_nothing() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = random_bytes(300_000, 1);
    origin.put("files/llama.gguf", bytes.clone());
    let url = origin.url("files/llama.gguf");

    let out = cli(
        &ts,
        &origin,
        &["add", "llama", "--url", &url, "--sha256", &hex(&bytes)],
    )
    .ok();

    assert!(out.stdout.contains("llama.gguf"), "{}", out.stdout);
    let st = origin.stats("files/llama.gguf");
    assert_eq!(st.heads, 1, "one HEAD learns the size");
    // One Range request for the GGUF header (these bytes are not one:
    // the model is added without facts), never the model.
    assert_eq!((st.gets, st.range_gets), (1, 1), "add reads only a header");
    assert!(st.bytes_sent <= 1 << 20, "{} bytes read", st.bytes_sent);
    assert!(out.stderr.contains("no model facts"), "{}", out.stderr);
    let m = manifest_json(&ts, "llama");
    assert_eq!(m["schema_version"], 1);
    assert_eq!(m["name"], "llama");
    assert_eq!(m["format"], "gguf");
    assert_eq!(m["blob"], format!("sha256:{}", hex(&bytes)));
    assert_eq!(m["size_bytes"], bytes.len() as u64);
    assert_eq!(m["license"], Value::Null);
    for field in ["registry", "repo", "revision", "filename"] {
        assert!(m["source"][field].is_string(), "source.{field}: {m}");
    }
    assert_eq!(m["source"]["filename"], "llama.gguf");
    assert_eq!(m["source"]["url"], url.as_str());
    assert!(m["produced_by"].as_str().unwrap().starts_with("modelfs/"));
    let at = m["produced_at"].as_str().unwrap();
    assert!(
        modelfs::store::timestamp::parse_rfc3339(at).is_some() && at.ends_with('Z'),
        "{at}"
    );
    assert_eq!(
        ts.store().blob_state(&Sha256::of(&bytes)),
        BlobState::Absent
    );
    assert_eq!(state_of(&ts, &origin, "llama"), "pending");

    // With --size there is not even a HEAD.
    cli(
        &ts,
        &origin,
        &[
            "add",
            "sized",
            "--url",
            &url,
            "--sha256",
            &hex(&bytes),
            "--size",
            &bytes.len().to_string(),
            "--no-facts",
        ],
    )
    .ok();
    let st = origin.stats("files/llama.gguf");
    assert_eq!(
        (st.gets, st.heads),
        (1, 1),
        "no HEAD, and with --no-facts no header read"
    );
}

#[test]
fn add_refuses_to_repoint_a_name_without_force_and_accepts_with_it() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let (a, b) = (random_bytes(1000, 2), random_bytes(2000, 3));
    let url = origin.url("x.gguf");
    let add = |bytes: &[u8], force: bool| {
        let (hex, size) = (hex(bytes), bytes.len().to_string());
        let mut args = vec![
            "add", "model", "--url", &url, "--sha256", &hex, "--size", &size,
        ];
        if force {
            args.push("--force");
        }
        cli(&ts, &origin, &args)
    };

    add(&a, false).ok();
    let refused = add(&b, false).failed();

    assert!(
        refused.stderr.contains("--force") && refused.stderr.contains("model"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        manifest_json(&ts, "model")["blob"],
        format!("sha256:{}", hex(&a)),
        "the refused add changed nothing"
    );
    add(&b, true).ok();
    let m = manifest_json(&ts, "model");
    assert_eq!(m["blob"], format!("sha256:{}", hex(&b)));
    assert_eq!(m["size_bytes"], 2000);
}

#[test]
fn add_hf_pins_the_digest_and_size_the_hub_announces_and_pull_fetches_it() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = random_bytes(400_000, 4);
    let resolve = "org/repo/resolve/rev1/model.gguf";
    // Like the Hub: the resolve URL answers 302 to a CDN with the LFS
    // file's digest and size in X-Linked-* headers.
    origin.push_fault(
        resolve,
        Fault::Redirect {
            status: 302,
            location: origin.url("cdn/model.gguf"),
        },
    );
    hf::serve_lfs_file(&origin, resolve, &bytes);
    let endpoint = hf::endpoint(&origin);

    cli_env(
        &ts,
        &origin,
        &[("HF_ENDPOINT", &endpoint), ("HF_TOKEN", "hf_tok")],
        &["add", "qwen", "--hf", "org/repo/model.gguf@rev1"],
    )
    .ok();

    let m = manifest_json(&ts, "qwen");
    assert_eq!(m["blob"], format!("sha256:{}", hex(&bytes)));
    assert_eq!(m["size_bytes"], bytes.len() as u64);
    assert_eq!(m["source"]["registry"], "huggingface.co");
    assert_eq!(m["source"]["repo"], "org/repo");
    assert_eq!(m["source"]["revision"], "rev1");
    assert_eq!(m["source"]["filename"], "model.gguf");
    assert!(m["source"].get("url").is_none(), "{m}");
    let st = origin.stats(resolve);
    assert_eq!(
        (st.heads, st.gets),
        (1, 1),
        "add asks HEAD, then one Range request for the header"
    );
    assert_eq!(
        st.authorization_headers,
        vec![Some("Bearer hf_tok".to_string()); 2]
    );

    let out = cli_env(
        &ts,
        &origin,
        &[("HF_ENDPOINT", &endpoint)],
        &["pull", "qwen"],
    )
    .ok();
    assert!(out.stdout.contains("verified"), "{}", out.stdout);
    assert!(blob_bytes(&ts, &bytes) == bytes);
    ts.assert_consistent();
}

/// A push to a branch after `add --hf` must not turn the pin into a
/// permanent mismatch: the pin names the commit the Hub resolved.
#[test]
fn add_hf_pins_the_commit_the_hub_resolved_so_a_later_push_to_the_branch_changes_nothing() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = random_bytes(100_000, 41);
    let commit = "0123456789abcdef0123456789abcdef01234567";
    for rev in ["main", commit] {
        let resolve = format!("org/repo/resolve/{rev}/model.gguf");
        hf::serve_lfs_file(&origin, &resolve, &bytes);
        let mut headers = vec![
            ("X-Linked-Etag".to_string(), format!("\"{}\"", hex(&bytes))),
            ("X-Linked-Size".to_string(), bytes.len().to_string()),
        ];
        headers.push(("X-Repo-Commit".into(), commit.into()));
        origin.set_extra_headers(&resolve, headers);
    }
    let endpoint = hf::endpoint(&origin);
    let out = cli_env(
        &ts,
        &origin,
        &[("HF_ENDPOINT", &endpoint)],
        &["add", "m", "--hf", "org/repo/model.gguf"],
    )
    .ok();
    assert!(out.stderr.contains(commit), "{}", out.stderr);
    assert_eq!(manifest_json(&ts, "m")["source"]["revision"], commit);
    // Somebody pushes another file to main.
    origin.put(
        "org/repo/resolve/main/model.gguf",
        random_bytes(100_000, 42),
    );
    cli_env(&ts, &origin, &[("HF_ENDPOINT", &endpoint)], &["pull", "m"]).ok();
    assert!(blob_bytes(&ts, &bytes) == bytes);
    assert_eq!(origin.stats("org/repo/resolve/main/model.gguf").gets, 0);
}

#[test]
fn add_of_the_file_name_the_mount_shows_pins_the_model_name() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = random_bytes(1000, 43);
    origin.put("x.gguf", bytes.clone());
    let url = origin.url("x.gguf");
    let hex = hex(&bytes);
    let out = cli(
        &ts,
        &origin,
        &["add", "llama.gguf", "--url", &url, "--sha256", &hex],
    )
    .ok();
    assert!(out.stdout.contains("added llama.gguf "), "{}", out.stdout);
    assert!(ts.store().manifests_dir().join("llama.json").exists());
    assert!(!ts.store().manifests_dir().join("llama.gguf.json").exists());
}

#[test]
fn add_with_a_size_that_contradicts_the_present_blob_is_refused() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = random_bytes(1000, 44);
    ts.put_blob(&bytes);
    let url = origin.url("x.gguf");
    let hex = hex(&bytes);
    let out = cli(
        &ts,
        &origin,
        &["add", "m", "--url", &url, "--sha256", &hex, "--size", "999"],
    )
    .failed();
    assert!(
        out.stderr.contains("1000 bytes") && out.stderr.contains("--size says 999"),
        "{}",
        out.stderr
    );
    assert!(!ts.store().manifests_dir().join("m.json").exists());
}

#[test]
fn a_failed_add_says_nothing_was_added_and_never_promises_a_later_open() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let hex = hex(b"x");
    for url in [
        origin.url("missing.gguf"),
        // Nothing listens on port 1: refused, a network error.
        "https://127.0.0.1:1/x.gguf".to_string(),
    ] {
        let out = cli(&ts, &origin, &["add", "m", "--url", &url, "--sha256", &hex]).failed();
        assert!(out.stderr.contains("nothing was added"), "{}", out.stderr);
        assert!(!out.stderr.contains("next open"), "{}", out.stderr);
        assert!(!ts.store().manifests_dir().join("m.json").exists());
    }
}

#[test]
fn modelfs_ca_file_in_the_environment_is_trusted_like_ca_file() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = random_bytes(1000, 45);
    origin.put("x.gguf", bytes.clone());
    let url = origin.url("x.gguf");
    let hex = hex(&bytes);
    let run = |ca: Option<&std::path::Path>| {
        let mut c = std::process::Command::new(modelfs_bin());
        c.arg("--store").arg(&ts.root).env_remove("SSL_CERT_FILE");
        match ca {
            Some(ca) => c.env("MODELFS_CA_FILE", ca),
            None => c.env_remove("MODELFS_CA_FILE"),
        };
        ran(c
            .args(["add", "m", "--url", &url, "--sha256", &hex, "--force"])
            .stdin(Stdio::null())
            .output()
            .unwrap())
    };
    // Without it the HEAD that asks for the size fails on the test CA.
    run(None).failed();
    run(Some(origin.ca_pem_path())).ok();
    assert_eq!(manifest_json(&ts, "m")["size_bytes"], 1000);
}

#[test]
fn a_subcommands_help_lists_its_own_options_first_and_the_global_ones_apart() {
    let out = std::process::Command::new(modelfs_bin())
        .args(["add", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let (own, global) = help
        .split_once("Global options:")
        .unwrap_or_else(|| panic!("no 'Global options:' section:\n{help}"));
    assert!(
        own.contains("--sha256") && !own.contains("--store"),
        "{help}"
    );
    assert!(
        global.contains("--store") && global.contains("MODELFS_CA_FILE"),
        "{help}"
    );
}

#[test]
fn status_of_a_directory_that_is_not_a_modelfs_mount_says_so_and_fails() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let d = dir.path().to_str().unwrap();
    for (path, what) in [(d, "not a mountpoint"), ("/proc", "a proc mount")] {
        let out = cli(&ts, &origin, &["status", path]).failed();
        assert_eq!(out.code, 1);
        assert!(
            out.stderr.contains("is not a modelfs mount") && out.stderr.contains(what),
            "{}",
            out.stderr
        );
        assert!(!out.stderr.contains("sub"), "{}", out.stderr);
    }
}

fn cli_env(ts: &TestStore, origin: &Origin, env: &[(&str, &str)], args: &[&str]) -> Ran {
    let mut c = ts.cli(origin.ca_pem_path());
    for (k, v) in env {
        c.env(k, v);
    }
    ran(c.args(args).stdin(Stdio::null()).output().expect("run"))
}

#[test]
fn pull_fetches_a_pending_model_and_prints_a_verified_line() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = random_bytes(1 << 20, 5);
    ts.add_pending("phi", &origin, &bytes);

    let out = cli(&ts, &origin, &["pull", "phi"]).ok();

    assert!(
        out.stdout.contains("phi") && out.stdout.contains("verified"),
        "{}",
        out.stdout
    );
    assert!(blob_bytes(&ts, &bytes) == bytes);
    assert_eq!(state_of(&ts, &origin, "phi"), "present");
    // A second pull does not download again.
    let again = cli(&ts, &origin, &["pull", "phi"]).ok();
    assert!(again.stdout.contains("present"), "{}", again.stdout);
    assert_eq!(origin.stats("phi.gguf").gets, 1);
    ts.assert_consistent();
}

#[test]
fn pull_of_an_unknown_model_fails_naming_it_and_what_to_do() {
    let origin = Origin::start();
    let ts = TestStore::new();

    let out = cli(&ts, &origin, &["pull", "nosuchmodel"]).failed();

    assert!(
        out.stderr.contains("nosuchmodel") && out.stderr.contains("modelfs add"),
        "{}",
        out.stderr
    );
}

#[test]
fn pull_reports_a_corrupt_download_and_exits_non_zero() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = random_bytes(300_000, 6);
    let m = ts.add_pending("bad", &origin, &bytes);
    origin.push_fault("bad.gguf", Fault::FlipByte(7));

    let out = cli(&ts, &origin, &["pull", "bad"]).failed();

    assert!(
        out.stderr.contains("mismatch") && out.stderr.contains(&m.blob.to_hex()),
        "{}",
        out.stderr
    );
    assert_eq!(ts.quarantined().len(), 1);
    assert_eq!(state_of(&ts, &origin, "bad"), "pending");
    ts.assert_consistent();
}

#[test]
fn pull_of_a_url_the_server_does_not_have_fails_and_the_model_stays_pending() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = random_bytes(1000, 25);
    ts.write_manifest("typo", &origin.url("no-such-file.gguf"), &bytes);

    let out = cli(&ts, &origin, &["pull", "typo"]).failed();

    assert!(
        out.stderr.contains("404") && out.stderr.contains("typo"),
        "{}",
        out.stderr
    );
    assert_eq!(origin.stats("no-such-file.gguf").gets, 1);
    assert_eq!(state_of(&ts, &origin, "typo"), "pending");
}

#[test]
fn pull_of_several_models_fetches_the_good_ones_when_one_fails() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let (a, b) = (random_bytes(100_000, 27), random_bytes(100_000, 28));
    ts.add_pending("first", &origin, &a);
    ts.write_manifest("broken", &origin.url("gone.gguf"), &random_bytes(10, 29));
    ts.add_pending("third", &origin, &b);

    let out = cli(&ts, &origin, &["pull", "first", "broken", "third"]).failed();

    let summary = out
        .stderr
        .lines()
        .find(|l| l.starts_with("modelfs: error:"))
        .unwrap_or_else(|| panic!("a closing error line: {}", out.stderr));
    assert!(
        summary.contains("broken") && !summary.contains("first") && !summary.contains("third"),
        "{summary}"
    );
    assert!(blob_bytes(&ts, &a) == a && blob_bytes(&ts, &b) == b);
    assert_eq!(state_of(&ts, &origin, "broken"), "pending");
}

#[test]
fn add_refuses_a_plain_http_url() {
    let origin = Origin::start();
    let ts = TestStore::new();

    let out = cli(
        &ts,
        &origin,
        &[
            "add",
            "plain",
            "--url",
            &origin.http_url("x.gguf"),
            "--sha256",
            &hex(b"x"),
            "--size",
            "1",
        ],
    )
    .failed();

    assert!(out.stderr.contains("https"), "{}", out.stderr);
    assert!(!ts.root.join("manifests/plain.json").exists());
    assert_eq!(origin.total_requests(), 0);
}

#[test]
fn ls_shows_present_pending_and_partial_models_in_text_and_json() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let (p, q, r) = (
        random_bytes(1000, 7),
        random_bytes(2000, 8),
        random_bytes(4000, 9),
    );
    ts.add_pending("here", &origin, &p);
    ts.put_blob(&p);
    ts.add_pending("later", &origin, &q);
    let half = ts.add_pending("half", &origin, &r);
    let s = ts.store();
    fs::create_dir_all(s.partial_path(&half.blob).parent().unwrap()).unwrap();
    fs::write(s.partial_path(&half.blob), &r[..2000]).unwrap();

    let text = cli(&ts, &origin, &["ls"]).ok().stdout;
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} in {text}"))
            .to_string()
    };
    assert!(line("here").contains("present"), "{text}");
    assert!(line("later").contains("pending"), "{text}");
    assert!(
        line("half").contains(" partial ") && line("half").contains(" 50% "),
        "{text}"
    );

    let json = ls_json(&ts, &origin);
    let by_name = |n: &str| json.iter().find(|e| e["name"] == n).unwrap().clone();
    assert_eq!(by_name("here")["state"], "present");
    assert_eq!(by_name("later")["state"], "pending");
    assert_eq!(by_name("half")["state"], "partial");
    assert_eq!(by_name("half")["bytes_on_disk"], 2000);
    assert_eq!(by_name("half")["size_bytes"], 4000);
    assert_eq!(by_name("here")["file"], "here.gguf");
    assert_eq!(json.len(), 3);
}

#[test]
fn verify_passes_good_blobs_and_quarantines_a_corrupted_one() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = random_bytes(500_000, 10);
    let m = ts.add_pending("checked", &origin, &bytes);
    cli(&ts, &origin, &["pull", "checked"]).ok();

    let good = cli(&ts, &origin, &["verify"]).ok();
    assert!(good.stdout.contains("checked: ok"), "{}", good.stdout);

    // Same size, wrong bytes: only hashing can tell.
    let blob = ts.store().blob_path(&m.blob);
    fs::write(&blob, random_bytes(bytes.len(), 11)).unwrap();

    let bad = cli(&ts, &origin, &["verify", "checked"]).failed();

    assert!(bad.stderr.contains("checked"), "{}", bad.stderr);
    assert!(!blob.exists(), "the corrupt blob left its digest path");
    let q = ts.quarantined();
    assert_eq!(q.len(), 1);
    assert!(fs::read(&q[0]).unwrap() == random_bytes(bytes.len(), 11));
    assert_eq!(state_of(&ts, &origin, "checked"), "pending");
    ts.assert_consistent();

    // The next pull fetches it again.
    cli(&ts, &origin, &["pull", "checked"]).ok();
    cli(&ts, &origin, &["verify"]).ok();
    assert!(blob_bytes(&ts, &bytes) == bytes);
}

#[test]
fn import_with_link_hard_links_a_local_file_and_writes_its_manifest() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = gguf_bytes(700_000, 12);
    let src = ts.root.parent().unwrap().join("local-model.gguf");
    fs::write(&src, &bytes).unwrap();

    let out = cli(
        &ts,
        &origin,
        &["import", "--link", src.to_str().unwrap(), "--name", "local"],
    )
    .ok();

    assert!(out.stdout.contains("hard link"), "{}", out.stdout);
    let blob = ts.store().blob_path(&Sha256::of(&bytes));
    assert_eq!(
        fs::metadata(&blob).unwrap().ino(),
        fs::metadata(&src).unwrap().ino(),
        "--link: the blob is a hard link"
    );
    let m = manifest_json(&ts, "local");
    assert_eq!(m["blob"], format!("sha256:{}", hex(&bytes)));
    assert_eq!(m["size_bytes"], bytes.len() as u64);
    assert_eq!(m["source"]["filename"], "local-model.gguf");
    assert_eq!(state_of(&ts, &origin, "local"), "present");
    cli(&ts, &origin, &["verify", "local"]).ok();
    assert_eq!(origin.total_requests(), 0);
    ts.assert_consistent();
}

#[test]
fn import_of_a_file_that_is_not_gguf_is_refused_unless_format_says_what_it_is() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let dir = ts.root.parent().unwrap();
    let html = dir.join("error-page.gguf");
    fs::write(&html, b"<html>404 Not Found</html>").unwrap();
    let st = dir.join("model.safetensors");
    fs::write(&st, random_bytes(10_000, 14)).unwrap();

    for (file, starts) in [(&html, "\"<htm\""), (&st, "bytes ")] {
        let out = cli(
            &ts,
            &origin,
            &["import", file.to_str().unwrap(), "--name", "x"],
        )
        .failed();
        assert_eq!(out.code, 1);
        assert!(
            out.stderr
                .contains(&format!("{} is not a GGUF file", file.display()))
                && out.stderr.contains(&format!("it starts with {starts}"))
                && out.stderr.contains("--format safetensors"),
            "{}",
            out.stderr
        );
    }
    assert!(!ts.root.join("manifests/x.json").exists());
    let blobs: Vec<_> = fs::read_dir(ts.root.join("blobs/sha256"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(blobs.is_empty(), "nothing was placed: {blobs:?}");

    // Another format is not checked.
    let st_arg = st.to_str().unwrap();
    let args = ["import", st_arg, "--name", "st", "--format", "safetensors"];
    cli(&ts, &origin, &args).ok();
    assert_eq!(manifest_json(&ts, "st")["format"], "safetensors");
    ts.assert_consistent();
}

#[test]
fn import_of_a_symlink_places_the_file_it_points_to_not_the_link() {
    // Hugging Face's cache is made of such symlinks (snapshots/ -> blobs/).
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = gguf_bytes(200_000, 13);
    let dir = ts.root.parent().unwrap();
    fs::write(dir.join("real-blob"), &bytes).unwrap();
    let link = dir.join("model.gguf");
    std::os::unix::fs::symlink(dir.join("real-blob"), &link).unwrap();

    cli(
        &ts,
        &origin,
        &["import", link.to_str().unwrap(), "--name", "linked"],
    )
    .ok();

    let blob = ts.store().blob_path(&Sha256::of(&bytes));
    let meta = fs::symlink_metadata(&blob).expect("blob placed");
    assert!(
        meta.file_type().is_file(),
        "a blob must be a regular file, not a symlink"
    );
    assert_eq!(state_of(&ts, &origin, "linked"), "present");
    assert_eq!(
        manifest_json(&ts, "linked")["source"]["filename"],
        "model.gguf"
    );
    cli(&ts, &origin, &["verify", "linked"]).ok();
    ts.assert_consistent();
}

#[test]
fn import_from_another_filesystem_copies_the_file() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = gguf_bytes(300_000, 26);
    // /dev/shm is a tmpfs on Linux, so not the store's filesystem.
    let other = tempfile::tempdir_in("/dev/shm").expect("a tmpfs at /dev/shm");
    let src = other.path().join("copied.gguf");
    fs::write(&src, &bytes).unwrap();
    assert_ne!(
        fs::metadata(&src).unwrap().dev(),
        fs::metadata(&ts.root).unwrap().dev(),
        "the test needs two filesystems"
    );

    let out = cli(
        &ts,
        &origin,
        &["import", src.to_str().unwrap(), "--name", "copied"],
    )
    .ok();

    assert!(out.stdout.contains("copy"), "{}", out.stdout);
    assert!(blob_bytes(&ts, &bytes) == bytes);
    assert_eq!(state_of(&ts, &origin, "copied"), "present");
    // A hard link cannot cross filesystems: --link says so.
    let linked = cli(
        &ts,
        &origin,
        &[
            "import",
            "--link",
            src.to_str().unwrap(),
            "--name",
            "linked",
        ],
    )
    .failed();
    assert!(
        linked.stderr.contains("leave out --link"),
        "{}",
        linked.stderr
    );
    cli(&ts, &origin, &["verify", "copied"]).ok();
    let stray: Vec<_> = fs::read_dir(ts.root.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".import-"))
        .collect();
    assert!(stray.is_empty(), "no staging file is left: {stray:?}");
    ts.assert_consistent();
}

#[test]
fn rm_removes_the_manifest_and_keeps_the_blob_until_gc() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = random_bytes(1000, 14);
    let m = ts.add_pending("gone", &origin, &bytes);
    ts.put_blob(&bytes);

    cli(&ts, &origin, &["rm", "gone"]).ok();

    assert!(!ts.store().manifest_path(&m.name).exists());
    assert!(ts.store().blob_path(&m.blob).exists());
    assert!(ls_json(&ts, &origin).is_empty());
    let again = cli(&ts, &origin, &["rm", "gone"]).failed();
    assert!(again.stderr.contains("gone"), "{}", again.stderr);
}

#[test]
fn gc_deletes_only_unreferenced_old_blobs_and_unlocked_orphan_partials() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let s = ts.store();
    let kept = random_bytes(1000, 15);
    ts.add_pending("kept", &origin, &kept);
    ts.put_blob(&kept);
    let unref = ts.put_blob(&random_bytes(2000, 16));
    let partial = |seed| {
        let d = Sha256::of(&random_bytes(8, seed));
        fs::create_dir_all(s.partial_path(&d).parent().unwrap()).unwrap();
        fs::write(s.partial_path(&d), random_bytes(500, seed)).unwrap();
        d
    };
    let orphan = partial(17);
    let busy = partial(18);
    let held = lock::try_lock(&s.partial_path(&busy))
        .unwrap()
        .expect("free");
    // A pending model's partial is a resumable download, not garbage.
    let resumable = random_bytes(3000, 19);
    let rm = ts.add_pending("resumable", &origin, &resumable);
    fs::create_dir_all(s.partial_path(&rm.blob).parent().unwrap()).unwrap();
    fs::write(s.partial_path(&rm.blob), &resumable[..1000]).unwrap();
    let gc = |args: &[&str]| {
        let mut c = ts.cli(origin.ca_pem_path());
        c.env("MODELFS_GC_GRACE_SECS", "0").arg("gc").args(args);
        ran(c.output().unwrap())
    };
    let everything_there = || {
        s.blob_path(&Sha256::of(&kept)).exists()
            && s.blob_path(&unref).exists()
            && s.partial_path(&orphan).exists()
            && s.partial_path(&busy).exists()
            && s.partial_path(&rm.blob).exists()
    };

    let dry = gc(&["--dry-run"]).ok();
    assert!(everything_there(), "--dry-run deletes nothing");
    assert!(dry.stdout.contains(&unref.to_hex()), "{}", dry.stdout);

    gc(&[]).ok();

    assert!(!s.blob_path(&unref).exists(), "unreferenced blob deleted");
    assert!(!s.partial_path(&orphan).exists(), "orphan partial deleted");
    assert!(
        s.blob_path(&Sha256::of(&kept)).exists(),
        "referenced blob kept"
    );
    assert!(s.partial_path(&busy).exists(), "a locked partial is kept");
    assert!(
        s.partial_path(&rm.blob).exists(),
        "a resumable partial is kept"
    );
    drop(held);
    ts.assert_consistent();
}

#[test]
fn gc_keeps_a_blob_placed_less_than_the_grace_period_ago() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let d = ts.put_blob(&random_bytes(2000, 20));

    let out = cli(&ts, &origin, &["gc"]).ok();

    assert!(ts.store().blob_path(&d).exists(), "{}", out.stdout);
    assert!(out.stdout.contains("keeping"), "{}", out.stdout);
}

#[test]
fn global_flags_are_accepted_after_the_subcommand() {
    let origin = Origin::start();
    let ts = TestStore::new();
    ts.add_pending("after", &origin, &random_bytes(100, 21));

    let out = ran(bare(&[])
        .arg("ls")
        .arg("--store")
        .arg(&ts.root)
        .arg("--ca-file")
        .arg(origin.ca_pem_path())
        .arg("-q")
        .output()
        .unwrap())
    .ok();

    assert!(out.stdout.contains("after"), "{}", out.stdout);
}

#[test]
fn the_store_is_found_through_models_home_then_xdg_data_home_then_home() {
    let dir = tempfile::tempdir().unwrap();
    let (mh, xdg, home) = (
        dir.path().join("mh"),
        dir.path().join("xdg"),
        dir.path().join("home"),
    );
    let hex = hex(b"x");
    let add = |env: &[(&str, &Path)], name: &str| {
        ran(bare(env)
            .args([
                "add",
                name,
                "--url",
                "https://127.0.0.1:9/x.gguf",
                "--sha256",
                &hex,
                "--size",
                "1",
            ])
            .output()
            .unwrap())
        .ok()
    };

    add(
        &[
            ("MODELS_HOME", &mh),
            ("XDG_DATA_HOME", &xdg),
            ("HOME", &home),
        ],
        "one",
    );
    add(&[("XDG_DATA_HOME", &xdg), ("HOME", &home)], "two");
    add(&[("HOME", &home)], "three");
    // An empty MODELS_HOME counts as unset.
    add(
        &[("MODELS_HOME", Path::new("")), ("XDG_DATA_HOME", &xdg)],
        "four",
    );

    assert!(mh.join("manifests/one.json").is_file());
    assert!(xdg.join("models/manifests/two.json").is_file());
    assert!(
        home.join(".local/share/models/manifests/three.json")
            .is_file()
    );
    assert!(xdg.join("models/manifests/four.json").is_file());
    let listed = ran(bare(&[("MODELS_HOME", &mh)]).arg("ls").output().unwrap()).ok();
    assert!(listed.stdout.contains("one"), "{}", listed.stdout);
    let nowhere = ran(bare(&[]).arg("ls").output().unwrap()).failed();
    assert!(nowhere.stderr.contains("--store"), "{}", nowhere.stderr);
}

#[test]
fn invalid_model_names_are_refused_with_a_clear_message() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let long = "x".repeat(129);
    let hex = hex(b"x");
    for (name, needle) in [
        ("../x", "'/'"),
        ("a/b", "'/'"),
        (long.as_str(), "128"),
        (".hidden", "'.'"),
        ("NUL", "device"),
    ] {
        let out = cli(
            &ts,
            &origin,
            &[
                "add",
                name,
                "--url",
                &origin.url("x"),
                "--sha256",
                &hex,
                "--size",
                "1",
            ],
        )
        .failed();
        assert!(
            out.stderr.contains("invalid model name") && out.stderr.contains(needle),
            "{name}: {}",
            out.stderr
        );
    }
    let written: Vec<_> = fs::read_dir(ts.root.join("manifests")).unwrap().collect();
    assert!(written.is_empty(), "{written:?}");
    assert!(!ts.root.parent().unwrap().join("x.json").exists());
    assert_eq!(origin.total_requests(), 0);
}

#[test]
fn a_manifest_whose_name_disagrees_with_its_file_is_reported_and_not_listed() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let real = ts.add_pending("real", &origin, &random_bytes(100, 22));
    fs::write(
        ts.store()
            .manifest_path(&ModelName::parse("alias").unwrap()),
        real.to_json_bytes(),
    )
    .unwrap();

    let out = cli(&ts, &origin, &["ls"]).ok();

    assert!(
        out.stderr.contains("alias") && out.stderr.contains("name field"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("alias"), "{}", out.stdout);
    assert!(out.stdout.contains("real"), "{}", out.stdout);
    let json = ls_json(&ts, &origin);
    assert_eq!(json.len(), 1);
    assert_eq!(json[0]["name"], "real");
}

#[test]
fn two_pulls_of_one_model_at_once_download_it_once_and_both_succeed() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = random_bytes(2 << 20, 23);
    ts.add_pending("shared", &origin, &bytes);
    // About two seconds per full download, so the pulls overlap.
    origin.set_persistent_fault("shared.gguf", Some(Fault::Throttle(1 << 20)));
    let spawn = || {
        ts.cli(origin.ca_pem_path())
            .args(["pull", "shared"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    let (a, b) = (spawn(), spawn());
    let (a, b) = (
        ran(a.wait_with_output().unwrap()).ok(),
        ran(b.wait_with_output().unwrap()).ok(),
    );

    let st = origin.stats("shared.gguf");
    assert_eq!(st.gets, 1, "exactly one download");
    assert_eq!(st.bytes_sent, bytes.len() as u64);
    let outs = format!("{}\n{}", a.stdout, b.stdout);
    assert!(
        outs.contains("verified") && outs.contains("present"),
        "{outs}"
    );
    let errs = format!("{}\n{}", a.stderr, b.stderr);
    assert!(
        errs.contains("waiting for"),
        "the pulls overlapped and one waited for the other's lock: {errs}"
    );
    assert!(blob_bytes(&ts, &bytes) == bytes);
    ts.assert_consistent();
}

#[test]
fn a_pull_killed_half_way_is_resumed_by_the_next_pull_with_a_range_request() {
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = random_bytes(4 << 20, 24);
    let m = ts.add_pending("killed", &origin, &bytes);
    origin.set_persistent_fault("killed.gguf", Some(Fault::Throttle(512 << 10)));
    let mut child = ts
        .cli(origin.ca_pem_path())
        .args(["pull", "killed"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let s = ts.store();
    let started = wait_until(
        Duration::from_secs(30),
        || matches!(s.blob_state(&m.blob), BlobState::Partial(n) if n > 0),
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(started, "the download never started");
    let BlobState::Partial(kept) = s.blob_state(&m.blob) else {
        panic!("a killed pull leaves its partial");
    };
    assert!(kept < bytes.len() as u64, "killed before the end");
    origin.set_persistent_fault("killed.gguf", None);

    let out = cli(&ts, &origin, &["pull", "killed"]).ok();

    let st = origin.stats("killed.gguf");
    assert_eq!(
        st.range_headers.last().unwrap().as_deref(),
        Some(format!("bytes={kept}-").as_str())
    );
    assert!(
        out.stdout.contains(&format!("resumed at byte {kept}")),
        "{}",
        out.stdout
    );
    assert!(blob_bytes(&ts, &bytes) == bytes);
    ts.assert_consistent();
}

#[test]
fn gc_verify_and_import_never_follow_a_symlink_planted_under_blobs() {
    // Regression: gc deleted, verify quarantined and import wrote by path,
    // so a symlinked blob folder led them outside the store.
    let origin = Origin::start();
    let ts = TestStore::new();
    let outside = tempfile::tempdir().unwrap();
    let store = ts.store();

    // An unreferenced "blob" whose folder is a symlink to an outside folder.
    let orphan = random_bytes(4096, 90);
    let d = Sha256::of(&orphan);
    fs::write(outside.path().join("data"), &orphan).unwrap();
    let fan = store
        .blob_path(&d)
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    fs::create_dir_all(&fan).unwrap();
    std::os::unix::fs::symlink(outside.path(), fan.join(d.to_hex())).unwrap();
    let mut gc = ts.cli(origin.ca_pem_path());
    gc.env("MODELFS_GC_GRACE_SECS", "0").arg("gc");
    ran(gc.output().unwrap()).ok();
    assert_eq!(
        fs::read(outside.path().join("data")).unwrap(),
        orphan,
        "gc deleted a file outside the store"
    );

    // A named model whose blob folder is a planted link to garbage.
    let good = gguf_bytes(8192, 91);
    let m = ts.add_pending("planted", &origin, &good);
    let fan = store
        .blob_path(&m.blob)
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    fs::create_dir_all(&fan).unwrap();
    let garbage = tempfile::tempdir().unwrap();
    fs::write(garbage.path().join("data"), random_bytes(8192, 92)).unwrap();
    std::os::unix::fs::symlink(garbage.path(), fan.join(m.blob.to_hex())).unwrap();
    cli(&ts, &origin, &["verify", "planted"]).ok();
    assert!(
        garbage.path().join("data").exists(),
        "verify moved a file from outside the store"
    );
    assert!(ts.quarantined().is_empty(), "{:?}", ts.quarantined());

    // import refuses to place a blob through the planted link.
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("model.gguf");
    fs::write(&file, &good).unwrap();
    cli(
        &ts,
        &origin,
        &[
            "import",
            file.to_str().unwrap(),
            "--name",
            "planted",
            "--force",
        ],
    )
    .failed();
    assert_ne!(
        fs::read(garbage.path().join("data")).unwrap(),
        good,
        "import wrote outside the store"
    );
}

#[test]
fn the_token_stays_out_of_the_log_even_at_trace_level() {
    // Regression: at RUST_LOG=trace the HTTP library dumped each request,
    // Authorization header included, as hex rows.
    let origin = Origin::start();
    let ts = TestStore::new();
    let bytes = random_bytes(10_000, 93);
    let resolve = "org/repo/resolve/main/m.gguf";
    hf::serve_lfs_file(&origin, resolve, &bytes);
    let endpoint = hf::endpoint(&origin);
    let token = "hf_SeCrEtToKeN";
    let out = cli_env(
        &ts,
        &origin,
        &[
            ("HF_ENDPOINT", &endpoint),
            ("HF_TOKEN", token),
            ("RUST_LOG", "trace"),
        ],
        &["add", "m", "--hf", "org/repo/m.gguf"],
    )
    .ok();
    let hex: String = token.bytes().map(|b| format!("{b:02x}")).collect();
    let log = format!("{}{}", out.stdout, out.stderr);
    assert!(log.contains("TRACE"), "trace logging was on: {log}");
    assert!(
        !log.contains(token) && !log.contains(&hex[..12]),
        "the token leaked:\n{log}"
    );
    assert!(
        !log.contains("ureq_proto::util"),
        "the wire dump is capped:\n{log}"
    );
    assert_eq!(
        origin.stats(resolve).authorization_headers,
        vec![Some(format!("Bearer {token}")); 2],
        "the HEAD and the header's Range request"
    );
}

/// How a user asks for less (or the usual) log output.
#[derive(Debug, Clone, Copy)]
enum Quietness {
    Default,
    QuietFlag,
    RustLogError,
}

impl Quietness {
    fn apply(self, c: &mut Command) {
        c.env_remove("RUST_LOG");
        match self {
            Self::Default => {}
            Self::QuietFlag => {
                c.arg("-q");
            }
            Self::RustLogError => {
                c.env("RUST_LOG", "error");
            }
        }
    }
}

#[test]
fn no_http_library_line_is_logged_by_add_pull_or_mount_and_a_mount_logs_each_download_start() {
    for q in [
        Quietness::Default,
        Quietness::QuietFlag,
        Quietness::RustLogError,
    ] {
        let origin = Origin::start();
        let ts = TestStore::new();
        let bytes = random_bytes(200_000, 90);
        origin.put("files/a.gguf", bytes.clone());
        origin.put("files/b.gguf", bytes[..150_000].to_vec());
        let url = origin.url("files/a.gguf");
        let run = |args: &[&str]| {
            let mut c = ts.cli(origin.ca_pem_path());
            c.args(args).stdin(Stdio::null());
            q.apply(&mut c);
            ran(c.output().expect("run modelfs")).ok()
        };
        let add = run(&["add", "a", "--url", &url, "--sha256", &hex(&bytes)]);
        let pull = run(&["pull", "a"]);
        let b_url = origin.url("files/b.gguf");
        let b_hex = hex(&bytes[..150_000]);
        run(&["add", "b", "--url", &b_url, "--sha256", &b_hex]);
        let mount =
            crate::common::Mount::start_with(&ts, origin.ca_pem_path(), &[], |c| q.apply(c));
        assert_eq!(fs::read(mount.path("b.gguf")).unwrap(), bytes[..150_000]);
        let log = mount.log();
        for (what, text) in [
            ("add", &add.stderr),
            ("pull", &pull.stderr),
            ("mount", &log),
        ] {
            assert!(
                !text.contains("ureq"),
                "{q:?}: {what} logged the HTTP library's lines:\n{text}"
            );
        }
        match q {
            Quietness::Default => assert!(
                log.contains("b: downloading ")
                    && log.contains(&format!("(146.5 KiB) from {b_url}")),
                "a download logs its start, size and URL:\n{log}"
            ),
            _ => assert!(!log.contains("INFO"), "{q:?} logs only errors:\n{log}"),
        }
    }
}
