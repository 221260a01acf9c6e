//! Shared test support: a real HTTPS origin (`origin`) and a Hugging Face
//! Hub on it (`hf`), throwaway stores, the `modelfs` binary, real FUSE
//! mounts that clean up after themselves, the syscalls tests make directly
//! (`sys`) and threads that wait on an open (`waiter`). Not every test file
//! uses every helper.
#![allow(dead_code)]

pub mod hf;
pub mod origin;
pub mod sys;
pub mod waiter;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use modelfs::digest::Sha256;
use modelfs::store::{BlobState, Manifest, ModelName, Source, Store};

pub use origin::{Fault, Origin};

/// The `modelfs` binary built for these tests.
pub fn modelfs_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_modelfs"))
}

/// What a finished command printed, stdout then stderr, as text: for
/// failure messages and for checking what a user would read.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One step of xorshift64 (13, 7, 17): the generator behind
/// [`random_bytes`] and [`sys::Rng`].
pub fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Deterministic pseudo-random bytes (xorshift), fast enough for 100s of MiB.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&xorshift(&mut x).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The SHA-256 of `bytes` in lowercase hex, as manifests and the CLI
/// write it.
pub fn hex(bytes: &[u8]) -> String {
    Sha256::of(bytes).to_hex()
}

/// Whether the blob `d` is complete in `store`.
pub fn is_present(store: &Store, d: &Sha256) -> bool {
    matches!(store.blob_state(d), BlobState::Present(_))
}

/// How many bytes of `d` a partial holds in `store` (0 when there is none).
pub fn partial_len(store: &Store, d: &Sha256) -> u64 {
    match store.blob_state(d) {
        BlobState::Partial(n) => n,
        _ => 0,
    }
}

/// [`random_bytes`] that start as a GGUF file does (`import` checks).
pub fn gguf_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(random_bytes(len.saturating_sub(4), seed));
    b
}

/// A mebibyte, for sizes.
pub const MIB: usize = 1 << 20;

/// The names in `dir`, sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// What an open gave, in words for assertion messages.
pub fn outcome(r: &Result<Vec<u8>, i32>, right: &[u8]) -> String {
    match r {
        Ok(v) if v == right => "the right bytes".into(),
        Ok(v) => format!("WRONG BYTES ({} bytes)", v.len()),
        Err(e) => format!("errno {e}"),
    }
}

/// Error lines of the mount log that name `model` and contain `reason`.
pub fn failure_lines(log: &str, model: &str, reason: &str) -> usize {
    let named = format!("model \"{model}\"");
    log.lines()
        .filter(|l| l.contains("ERROR") && l.contains(&named) && l.contains(reason))
        .count()
}

/// Runs the test `name` (`module::test`, as this binary lists it) alone in
/// a fresh process of the test binary, failing if it fails there; returns
/// `true` here and `false` in that process, where the caller goes on to
/// run its body.
///
/// For a test whose figures its own process would skew: the peak RSS the
/// kernel reports for a child (`wait4`) starts from its parent's peak at
/// the spawn, and the suite's one process has held the buffers of every
/// test that ran before or beside it.
pub fn rerun_alone(name: &str) -> bool {
    const ALONE: &str = "MODELFS_TEST_ALONE";
    if std::env::var(ALONE).as_deref() == Ok(name) {
        return false;
    }
    let out = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(ALONE, name)
        .stdin(Stdio::null())
        .output()
        .expect("run the test binary");
    let text = output_text(&out);
    eprint!("{text}");
    assert!(
        out.status.success() && text.contains("test result: ok. 1 passed"),
        "{name}, run alone in its own process, failed:\n{text}"
    );
    true
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A store in a temporary directory.
pub struct TestStore {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
}

impl Default for TestStore {
    fn default() -> Self {
        Self::new()
    }
}

impl TestStore {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("store");
        Store::create(&root).expect("create store");
        Self { _dir: dir, root }
    }

    pub fn store(&self) -> Store {
        Store::open(&self.root).expect("open store")
    }

    /// Serves `bytes` at `/<name>.gguf` on the origin and writes a pending
    /// manifest pointing at it.
    pub fn add_pending(&self, name: &str, origin: &Origin, bytes: &[u8]) -> Manifest {
        let path = format!("{name}.gguf");
        origin.put(&path, bytes.to_vec());
        self.write_manifest(name, &origin.url(&path), bytes)
    }

    /// Writes a manifest for `bytes` fetched from `url` (nothing is served).
    pub fn write_manifest(&self, name: &str, url: &str, bytes: &[u8]) -> Manifest {
        let source = Source {
            registry: "test".into(),
            url: Some(url.into()),
            ..Source::default()
        };
        self.write_manifest_with_source(name, bytes, source)
    }

    /// Writes a GGUF manifest for `bytes` with this `source`.
    pub fn write_manifest_with_source(&self, name: &str, bytes: &[u8], source: Source) -> Manifest {
        let m = Manifest::new(
            ModelName::parse(name).unwrap(),
            "gguf",
            Sha256::of(bytes),
            bytes.len() as u64,
            source,
        );
        self.store().write_manifest(&m).expect("write manifest");
        m
    }

    /// Places `bytes` as a present blob (as if fetched earlier).
    pub fn put_blob(&self, bytes: &[u8]) -> Sha256 {
        let d = Sha256::of(bytes);
        let p = self.store().blob_path(&d);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, bytes).unwrap();
        d
    }

    /// A `modelfs` command on this store, with a clean environment.
    pub fn cli(&self, ca: &Path) -> Command {
        let mut c = Command::new(modelfs_bin());
        c.arg("--store").arg(&self.root).arg("--ca-file").arg(ca);
        for v in [
            "MODELS_HOME",
            "HF_TOKEN",
            "HF_ENDPOINT",
            "SSL_CERT_FILE",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
        ] {
            c.env_remove(v);
        }
        c
    }

    /// Every blob under the store hashes to its path's digest, and no
    /// partial or temp file sits at a blob path.
    pub fn assert_consistent(&self) {
        let s = self.store();
        for (d, _) in s.list_blobs().unwrap() {
            let bytes = fs::read(s.blob_path(&d)).unwrap();
            assert_eq!(
                Sha256::of(&bytes),
                d,
                "blob at {} does not hash to its name",
                s.blob_path(&d).display()
            );
        }
        for m in s.list_manifests().unwrap() {
            m.expect("every manifest parses");
        }
    }

    pub fn quarantined(&self) -> Vec<PathBuf> {
        let mut v: Vec<_> = fs::read_dir(self.store().quarantine_dir())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// Runs `python3 -c code args…` with no input; its output, or a panic
/// with its standard error.
pub fn python(code: &str, args: &[&Path]) -> std::process::Output {
    let out = std::process::Command::new("python3")
        .args(["-c", code])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Fails the test, loudly, when python3 cannot import gguf-py (the
/// reference reader and writer of GGUF files).
pub fn require_gguf_py() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import gguf, numpy"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "python3 with the gguf and numpy packages is needed for these tests: run scripts/deps.sh --test"
    );
}

/// Fails the test, loudly, when this machine cannot run real mounts.
pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "this test needs FUSE: /dev/fuse is missing (load the fuse module or run where FUSE works)"
    );
    let has_fusermount = ["/usr/bin/fusermount3", "/bin/fusermount3"]
        .iter()
        .any(|p| Path::new(p).exists());
    assert!(
        has_fusermount,
        "this test needs fusermount3: install the fuse3 package (apt-get install -y fuse3)"
    );
}

/// Whether `path` is a mountpoint right now.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(canon) = path.canonicalize() else {
        return false;
    };
    // This thread's mount namespace, which a test may have made its own
    // (`/proc/self` is the main thread's).
    let Ok(info) = fs::read_to_string("/proc/thread-self/mountinfo") else {
        return false;
    };
    let want = canon.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// A real `modelfs mount --foreground` of a store, unmounted on drop.
pub struct Mount {
    _dir: tempfile::TempDir,
    pub mountpoint: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Mount {
    /// Mounts `store` (trusting `ca`) with extra `-o` options.
    pub fn start(store: &TestStore, ca: &Path, options: &[&str]) -> Mount {
        Self::start_with(store, ca, options, |_| {})
    }

    /// Like [`Mount::start`], letting the caller adjust the command.
    pub fn start_with(
        store: &TestStore,
        ca: &Path,
        options: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Mount {
        Self::start_wrapped(store, ca, options, &[], adjust)
    }

    /// Like [`Mount::start`], with the daemon as pid 1 of a new pid
    /// namespace (`unshare --pid --fork`), as in a container: the kernel
    /// then gives it pid 0 for every opener of this test. Stopping the
    /// mount signals `unshare`, which passes SIGTERM on to the daemon.
    pub fn start_in_pid_namespace(store: &TestStore, ca: &Path, options: &[&str]) -> Mount {
        assert!(
            Command::new("unshare").arg("--version").output().is_ok(),
            "this test needs unshare(1) from util-linux"
        );
        Self::start_wrapped(
            store,
            ca,
            options,
            &["unshare", "--pid", "--fork", "--kill-child=SIGTERM"],
            |_| {},
        )
    }

    fn start_wrapped(
        store: &TestStore,
        ca: &Path,
        options: &[&str],
        wrapper: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> Mount {
        require_fuse();
        let dir = tempfile::tempdir().expect("tempdir");
        let mountpoint = dir.path().join("mnt");
        fs::create_dir(&mountpoint).unwrap();
        let log = dir.path().join("mount.log");
        let mut cmd = store.cli(ca);
        if let Some((program, args)) = wrapper.split_first() {
            let mut wrapped = Command::new(program);
            wrapped
                .args(args)
                .arg(cmd.get_program())
                .args(cmd.get_args());
            for (k, v) in cmd.get_envs() {
                match v {
                    Some(v) => wrapped.env(k, v),
                    None => wrapped.env_remove(k),
                };
            }
            cmd = wrapped;
        }
        cmd.arg("mount").arg(&mountpoint).arg("--foreground");
        if !options.is_empty() {
            cmd.arg("-o").arg(options.join(","));
        }
        cmd.env("RUST_LOG", "modelfs=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        adjust(&mut cmd);
        let mut child = cmd.spawn().expect("spawn modelfs mount");
        let up = wait_until(Duration::from_secs(30), || {
            is_mounted(&mountpoint) || child.try_wait().map(|s| s.is_some()).unwrap_or(true)
        });
        if !up || !is_mounted(&mountpoint) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "modelfs mount did not come up at {}:\n{}",
                mountpoint.display(),
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Mount {
            _dir: dir,
            mountpoint,
            child: Some(child),
            log,
        }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.mountpoint.join(file)
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.stop_inner().expect("mount process was running")
    }

    fn stop_inner(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let st = child.wait().ok();
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(&self.mountpoint)
                    .status();
                return st;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the daemon with SIGKILL (a crash) and detaches the dead mount.
    pub fn crash(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mountpoint)
            .status();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop_inner();
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
    }
}
