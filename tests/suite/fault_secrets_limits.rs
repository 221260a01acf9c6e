//! Issue 10, promise 8: secrets and limits.
//!
//! URL passwords and signed query strings never reach `ls --json`, a log
//! at any level (`RUST_LOG=trace` included, where the HTTP library prints
//! full request paths unless stopped), an xattr or an error message; a
//! manifest `size_bytes` of 2^63 or more is refused when it is read; mount
//! options out of range are refused at mount; paths with a comma can be
//! given to `log_file=` and `ca_file=` with `\,`. Commands run here must
//! end within [`LIVENESS`], a generous bound, not a performance threshold.

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::sys::{getxattr, open_and_read};
use crate::common::{Mount, Origin, TestStore, is_mounted, output_text, random_bytes, wait_until};
use modelfs::digest::Sha256;

const LIVENESS: Duration = Duration::from_secs(20);

/// Every secret the URLs below carry; none may ever be printed.
const SECRETS: &[&str] = &["hunter2", "SIGSECRET", "TOKSECRET", "CREDSECRET"];

fn assert_no_secret(what: &str, text: &str) {
    for s in SECRETS {
        assert!(!text.contains(s), "{what} shows {s}:\n{text}");
    }
}

/// Runs `cmd` to its end within [`LIVENESS`] (killed and failed after).
fn run_bounded(cmd: &mut Command, what: &str) -> (i32, String, f64) {
    let started = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        let end = Instant::now() + LIVENESS;
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return false;
            }
        }
        // SAFETY: signalling the child we started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        true
    });
    let out: Output = child.wait_with_output().unwrap();
    let secs = started.elapsed().as_secs_f64();
    let killed = started.elapsed() >= LIVENESS && watchdog.join().unwrap_or(false);
    let text = output_text(&out);
    assert!(!killed, "{what}: still running after {LIVENESS:?}:\n{text}");
    (out.status.code().unwrap_or(-1), text, secs)
}

/// A URL on the origin with a password and a signed query.
fn signed(origin: &Origin, path: &str) -> String {
    let plain = origin.url(path);
    let with_user = plain.replacen("https://", "https://user:hunter2@", 1);
    format!("{with_user}?X-Amz-Credential=CREDSECRET&X-Amz-Signature=SIGSECRET&token=TOKSECRET")
}

#[test]
fn no_password_or_signed_query_reaches_ls_json_logs_at_trace_xattrs_or_errors() {
    let origin = Origin::start();
    let store = TestStore::new();
    let sec = random_bytes(200_000, 1);
    origin.put("sec.gguf", sec.clone());
    store.write_manifest("sec", &signed(&origin, "sec.gguf"), &sec);
    // A redirect to a signed CDN URL.
    let redir = random_bytes(200_000, 2);
    origin.put("cdn.gguf", redir.clone());
    origin.set_persistent_fault(
        "redir.gguf",
        Some(crate::common::Fault::RedirectTo(signed(
            &origin, "cdn.gguf",
        ))),
    );
    store.write_manifest("redir", &origin.url("redir.gguf"), &redir);
    // A URL that fails, so that it reaches an error message.
    store.write_manifest("missing", &signed(&origin, "missing.gguf"), b"none");

    let mount = Mount::start_with(&store, origin.ca_pem_path(), &[], |c| {
        c.env("RUST_LOG", "trace");
    });
    assert!(open_and_read(&mount.path("sec.gguf")).unwrap() == sec);
    assert!(open_and_read(&mount.path("redir.gguf")).unwrap() == redir);
    assert_eq!(
        open_and_read(&mount.path("missing.gguf")).unwrap_err(),
        libc::EIO
    );
    let log = mount.log();
    assert!(log.contains(" TRACE "), "trace logging is on:\n{log}");
    assert!(
        log.contains("/******"),
        "the HTTP library's debug lines hide paths:\n{log}"
    );
    assert!(log.contains("HTTP 404"), "the failure is logged:\n{log}");
    assert_no_secret("the mount's log at trace", &log);
    for f in ["sec.gguf", "redir.gguf", "missing.gguf"] {
        for x in ["user.modelfs.url", "user.modelfs.error"] {
            if let Ok(v) = getxattr(&mount.path(f), x) {
                assert_no_secret(&format!("{x} of {f}"), &v);
            }
        }
    }
    let cli = || store.cli(origin.ca_pem_path());
    let (_, text, _) = run_bounded(cli().args(["ls", "--json"]), "ls --json");
    assert_no_secret("ls --json", &text);
    let shown = format!("\"{}\"", origin.url("sec.gguf"));
    assert!(
        text.contains(&shown),
        "ls --json shows the URL without its secrets: {text}"
    );
    for args in [
        &["ls"][..],
        &["status", "--json"],
        &["status", "--json", mount.mountpoint.to_str().unwrap()],
        &["-vv", "pull", "missing"],
    ] {
        let (_, text, _) = run_bounded(
            cli().args(args).env("RUST_LOG", "trace"),
            &format!("{args:?}"),
        );
        assert_no_secret(&format!("{args:?}"), &text);
    }
    drop(mount);

    // A pull at trace level, from scratch, with a redirect.
    let fresh = TestStore::new();
    fresh.write_manifest("sec", &signed(&origin, "sec.gguf"), &sec);
    fresh.write_manifest("redir", &origin.url("redir.gguf"), &redir);
    let (code, text, _) = run_bounded(
        fresh
            .cli(origin.ca_pem_path())
            .args(["-vv", "pull", "sec", "redir"])
            .env("RUST_LOG", "trace"),
        "pull at trace",
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("TRACE"), "{text}");
    assert_no_secret("pull at trace", &text);

    // add: a HEAD that fails, and a plain-http URL with a password.
    let hex = Sha256::of(b"x").to_hex();
    for url in [
        signed(&origin, "nothing.gguf"),
        signed(&origin, "x").replacen("https://", "http://", 1),
    ] {
        let (code, text, _) = run_bounded(
            fresh
                .cli(origin.ca_pem_path())
                .args(["add", "x", "--url", &url, "--sha256", &hex])
                .env("RUST_LOG", "trace"),
            "add",
        );
        assert_eq!(code, 1, "{text}");
        assert_no_secret("add", &text);
    }
}

#[test]
fn a_manifest_size_of_2_pow_63_or_more_is_refused_when_read_and_the_largest_one_stats() {
    let origin = Origin::start();
    let store = TestStore::new();
    let good = random_bytes(1000, 3);
    store.put_blob(&good);
    store.write_manifest("good", &origin.url("good.gguf"), &good);
    store.write_manifest("huge", &origin.url("huge.gguf"), b"huge");
    store.write_manifest("largest", &origin.url("largest.gguf"), b"largest");
    let set_size = |name: &str, size: &str| {
        let p = store.root.join(format!("manifests/{name}.json"));
        let text = fs::read_to_string(&p).unwrap();
        let len = match name {
            "huge" => "4",
            _ => "7",
        };
        let text = text.replace(
            &format!("\"size_bytes\": {len}"),
            &format!("\"size_bytes\": {size}"),
        );
        assert!(text.contains(size));
        fs::write(&p, text).unwrap();
    };
    set_size("huge", "9223372036854775808");
    set_size("largest", "9223372036854775807");
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);

    assert!(
        wait_until(Duration::from_secs(5), || mount
            .log()
            .contains("not showing huge")),
        "one log line names it:\n{}",
        mount.log()
    );
    let log = mount.log();
    assert!(log.contains("size_bytes"), "{log}");
    assert_eq!(
        fs::metadata(mount.path("huge.gguf"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOENT),
        "not shown, rather than an EIO at stat"
    );
    let m = fs::metadata(mount.path("largest.gguf")).unwrap();
    assert_eq!(m.len(), i64::MAX as u64);
    assert!(fs::read_dir(&mount.mountpoint).unwrap().count() == 2);

    let cli = || store.cli(origin.ca_pem_path());
    let (code, text, _) = run_bounded(cli().arg("ls"), "ls");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("huge.json") && text.contains("2^63 - 1"),
        "{text}"
    );
    let (code, text, _) = run_bounded(cli().args(["pull", "huge"]), "pull huge");
    assert_eq!(code, 1);
    assert!(text.contains("size_bytes"), "{text}");
    let hex = Sha256::of(b"x").to_hex();
    let url = origin.url("x.gguf");
    let (code, text, _) = run_bounded(
        cli().args([
            "add",
            "x",
            "--url",
            &url,
            "--sha256",
            &hex,
            "--size",
            "9223372036854775808",
        ]),
        "add --size 2^63",
    );
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("2^63 - 1"), "{text}");
    assert!(!store.root.join("manifests/x.json").exists());
}

#[test]
fn mount_options_out_of_range_are_refused_at_mount_with_a_clear_message() {
    let origin = Origin::start();
    let store = TestStore::new();
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    for (opt, needle) in [
        ("stall_timeout=18446744073709551615", "1..=86400"),
        ("stall_timeout=0", "1..=86400"),
        ("threads=0", "1..=64"),
        ("fetch_threads=1000", "1..=64"),
        ("uid=4294967295", "out of range"),
    ] {
        for foreground in [true, false] {
            let mut cmd = store.cli(origin.ca_pem_path());
            cmd.arg("mount").arg(&mp).arg("-o").arg(opt);
            if foreground {
                cmd.arg("-f");
            }
            let (code, text, secs) = run_bounded(&mut cmd, opt);
            assert_eq!(code, 1, "{opt}: {text}");
            assert!(text.contains(opt) && text.contains(needle), "{opt}: {text}");
            assert!(!is_mounted(&mp));
            eprintln!(
                "-o {opt} (-f: {foreground}): exit 1 in {secs:.3} s: {}",
                text.trim()
            );
        }
    }
}

#[test]
fn a_log_file_and_a_ca_file_with_commas_in_their_paths_are_given_with_backslash_comma() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = random_bytes(100_000, 4);
    store.add_pending("m", &origin, &data);
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    let log = dir.path().join("a,b.log");
    let ca = dir.path().join("c,a.pem");
    fs::copy(origin.ca_pem_path(), &ca).unwrap();
    let esc = |p: &Path| p.to_str().unwrap().replace(',', "\\,");
    // The global --ca-file does not exist: only the option's can be used.
    let mut child = Command::new(crate::common::modelfs_bin())
        .arg("--store")
        .arg(&store.root)
        .arg("--ca-file")
        .arg(dir.path().join("absent.pem"))
        .arg("mount")
        .arg(&mp)
        .arg("-f")
        .arg("-o")
        .arg(format!("ro,log_file={},ca_file={}", esc(&log), esc(&ca)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let up = wait_until(LIVENESS, || {
        is_mounted(&mp) || child.try_wait().map(|s| s.is_some()).unwrap_or(true)
    });
    let mounted = up && is_mounted(&mp);
    let result = mounted.then(|| open_and_read(&mp.join("m.gguf")));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    if is_mounted(&mp) {
        let _ = Command::new("umount").arg("-l").arg(&mp).status();
    }
    assert!(mounted, "the mount came up: {}", output_text(&out));
    assert!(result.unwrap().unwrap() == data, "fetched trusting c,a.pem");
    let text = fs::read_to_string(&log).expect("the log is at a,b.log");
    assert!(text.contains("mounted"), "{text}");
}
