//! OCI registries as sources and mirrors, against a real one: Debian's
//! `docker-registry` (the CNCF distribution registry) started per test over
//! TLS on loopback with a throwaway CA, anonymous or behind htpasswd.
//! Artifacts are pushed with plain HTTP calls (monolithic blob upload, then
//! the manifest), so no other client is needed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use crate::common::origin::TestCa;
use crate::common::sys::open_and_read;
use crate::common::{Mount, Origin, TestStore, gguf_bytes, output_text, wait_until};
use modelfs::digest::Sha256;
use modelfs::store::ModelName;

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const MIB: usize = 1 << 20;

const SERVICE: &str = "modelfs-test-registry";
const ISSUER: &str = "modelfs-test-issuer";

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A running registry; killed when dropped.
struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`
    host: String,
    dir: tempfile::TempDir,
    ca: TestCa,
    /// The htpasswd user and password, when auth is on.
    login: Option<(String, String)>,
    /// Token auth: the key that signs the tests' own push tokens.
    signer: Option<std::sync::Arc<TokenKey>>,
    agent: ureq::Agent,
}

/// How an artifact is typed.
#[derive(Clone, Copy)]
enum Kind {
    ModelPack,
    DockerModel,
    Ollama,
}

/// How a test registry is set up besides its defaults.
#[derive(Default)]
struct Setup<'a> {
    /// htpasswd with this user and password.
    login: Option<(&'a str, &'a str)>,
    /// Token auth with this token server as its realm.
    token: Option<&'a TokenServer>,
    /// Blob GETs redirect to this base URL (the `redirect` storage
    /// middleware), as registries redirect to blob storage.
    redirect_to: Option<String>,
    /// The CA whose leaf it presents (a new one if none).
    ca: Option<TestCa>,
    /// A pull-through cache of this registry (`proxy.remoteurl`), trusting
    /// its CA.
    proxy_of: Option<&'a Registry>,
    /// Log every request (`registry.log`, see [`Registry::blob_gets`]).
    access_log: bool,
}

impl Registry {
    fn start(login: Option<(&str, &str)>) -> Registry {
        Self::start_with(Setup {
            login,
            ..Setup::default()
        })
    }

    fn start_with(setup: Setup<'_>) -> Registry {
        let login = setup.login;
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: the registry tests need Debian's docker-registry \
             package (scripts/deps.sh --test installs it)"
        );
        let ca = setup.ca.clone().unwrap_or_default();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ca.issue_pem_files(&["127.0.0.1", "localhost"], dir.path());
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let host = format!("127.0.0.1:{port}");
        let config = config_yaml(&setup, dir.path(), &host, &cert, &key);
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let mut cmd = Command::new(REGISTRY_BIN);
        if let Some(up) = setup.proxy_of {
            // Go reads its trust store from SSL_CERT_FILE.
            cmd.env("SSL_CERT_FILE", up.ca_path());
        }
        let child = cmd
            .arg("serve")
            .arg(&config_path)
            // The access log goes to stdout.
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&host).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {host}: {}",
                std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let agent = agent_trusting(&ca);
        Registry {
            child,
            host,
            dir,
            ca,
            login: login.map(|(u, p)| (u.to_string(), p.to_string())),
            signer: setup.token.map(|t| t.key.clone()),
            agent,
        }
    }

    fn ca_path(&self) -> &Path {
        self.ca.pem_path()
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("https://") {
            return path.to_string();
        }
        format!("https://{}{path}", self.host)
    }

    fn auth_header(&self, repo: &str) -> Option<String> {
        if let Some(k) = &self.signer {
            return Some(format!("Bearer {}", k.mint("pusher", repo)));
        }
        let (u, p) = self.login.as_ref()?;
        Some(format!(
            "Basic {}",
            modelfs::registry::auth::base64_encode(format!("{u}:{p}").as_bytes())
        ))
    }

    fn with_auth<B>(
        &self,
        repo: &str,
        mut req: ureq::RequestBuilder<B>,
    ) -> ureq::RequestBuilder<B> {
        if let Some(b) = self.auth_header(repo) {
            req = req.header("Authorization", b);
        }
        req
    }

    /// A monolithic upload: `POST …/blobs/uploads/`, then `PUT ?digest=`.
    fn push_blob(&self, repo: &str, bytes: &[u8]) -> Sha256 {
        let d = Sha256::of(bytes);
        let resp = self
            .with_auth(
                repo,
                self.agent
                    .post(self.url(&format!("/v2/{repo}/blobs/uploads/"))),
            )
            .send_empty()
            .expect("POST upload");
        assert_eq!(resp.status().as_u16(), 202, "POST upload");
        let location = resp.headers()["location"].to_str().unwrap().to_string();
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{}{sep}digest={}", self.url(&location), d.to_blob_ref());
        let resp = self
            .with_auth(repo, self.agent.put(put))
            .header("Content-Type", "application/octet-stream")
            .send(bytes)
            .expect("PUT blob");
        assert_eq!(resp.status().as_u16(), 201, "PUT blob");
        d
    }

    fn push_manifest(&self, repo: &str, tag: &str, media_type: &str, body: &[u8]) -> Sha256 {
        let resp = self
            .with_auth(
                repo,
                self.agent
                    .put(self.url(&format!("/v2/{repo}/manifests/{tag}"))),
            )
            .header("Content-Type", media_type)
            .send(body)
            .expect("PUT manifest");
        let status = resp.status().as_u16();
        let mut text = String::new();
        resp.into_body()
            .into_reader()
            .read_to_string(&mut text)
            .ok();
        assert_eq!(status, 201, "PUT manifest {repo}:{tag}: {text}");
        Sha256::of(body)
    }

    /// A model artifact of `kind` with `gguf` as its weight layer (and a
    /// small other layer); returns the manifest's digest.
    fn push_model(&self, repo: &str, tag: &str, kind: Kind, gguf: &[u8]) -> Sha256 {
        let (manifest_type, config_type, weight, other) = match kind {
            Kind::ModelPack => (
                OCI_MANIFEST,
                "application/vnd.cncf.model.config.v1+json",
                "application/vnd.cncf.model.weight.v1.raw",
                "application/vnd.cncf.model.doc.v1.raw",
            ),
            Kind::DockerModel => (
                OCI_MANIFEST,
                "application/vnd.docker.ai.model.config.v0.1+json",
                "application/vnd.docker.ai.gguf.v3",
                "application/vnd.docker.ai.license",
            ),
            Kind::Ollama => (
                DOCKER_MANIFEST,
                "application/vnd.docker.container.image.v1+json",
                "application/vnd.ollama.image.model",
                "application/vnd.ollama.image.template",
            ),
        };
        let config = br#"{"descriptor":{"name":"test"},"config":{"format":"gguf"}}"#;
        let other_bytes = b"{{ .Prompt }} or a license";
        let cd = self.push_blob(repo, config);
        let wd = self.push_blob(repo, gguf);
        let od = self.push_blob(repo, other_bytes);
        let artifact = match kind {
            Kind::ModelPack => r#""artifactType":"application/vnd.cncf.model.manifest.v1+json","#,
            _ => "",
        };
        let title = match kind {
            Kind::ModelPack => r#","annotations":{"org.opencontainers.image.title":"model.gguf"}"#,
            _ => "",
        };
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{manifest_type}",{artifact}
"config":{{"mediaType":"{config_type}","digest":"{}","size":{}}},
"layers":[{{"mediaType":"{other}","digest":"{}","size":{}}},
{{"mediaType":"{weight}","digest":"{}","size":{}{title}}}]}}"#,
            cd.to_blob_ref(),
            config.len(),
            od.to_blob_ref(),
            other_bytes.len(),
            wd.to_blob_ref(),
            gguf.len(),
        );
        self.push_manifest(repo, tag, manifest_type, body.as_bytes())
    }

    /// How many `GET`s of blob `d` the access log shows (with
    /// [`Setup::access_log`]).
    fn blob_gets(&self, d: &Sha256) -> usize {
        let log = std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default();
        let needle = format!("/blobs/{}", d.to_blob_ref());
        log.lines()
            .filter(|l| l.contains("\"GET ") && l.contains(&needle))
            .count()
    }

    /// Where the registry keeps blob `d`'s bytes.
    fn blob_file(&self, d: &Sha256) -> PathBuf {
        let hex = d.to_hex();
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(&hex)
            .join("data")
    }
}

/// The registry's `config.yml` for `setup`, serving `host` with `cert`.
fn config_yaml(setup: &Setup<'_>, dir: &Path, host: &str, cert: &Path, key: &Path) -> String {
    let login = setup.login;
    let auth = match login {
        Some((user, password)) => {
            let htpasswd = dir.join("htpasswd");
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("htpasswd (apache2-utils; scripts/deps.sh --test installs it)");
            assert!(out.status.success(), "{}", output_text(&out));
            std::fs::write(&htpasswd, &out.stdout).unwrap();
            format!(
                "auth:\n  htpasswd:\n    realm: modelfs-test\n    path: {}\n",
                htpasswd.display()
            )
        }
        None => String::new(),
    };
    let auth = match setup.token {
        Some(t) => {
            let root = dir.join("token-root.pem");
            std::fs::write(&root, &t.key.cert_pem).unwrap();
            format!(
                "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                t.realm,
                root.display()
            )
        }
        None => auth,
    };
    let proxy = setup
        .proxy_of
        .map(|up| format!("proxy:\n  remoteurl: https://{}\n", up.host))
        .unwrap_or_default();
    let auth = match &setup.redirect_to {
        Some(base) => format!(
            "{auth}middleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: {base}\n"
        ),
        None => auth,
    };
    let config = format!(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: {}\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {host}\n  tls:\n    certificate: {}\n    key: {}\n{auth}{proxy}",
        !setup.access_log,
        dir.join("data").display(),
        cert.display(),
        key.display()
    );
    config
}

/// A client that trusts `ca` and returns every status.
fn agent_trusting(ca: &TestCa) -> ureq::Agent {
    let roots: Vec<_> = ureq::tls::parse_pem(ca.pem().as_bytes())
        .filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .build()
        .into()
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `modelfs` command on `ts` trusting the registry's CA, with the
/// registry credentials of `auth_file` (none: a file that does not exist).
fn cli(ts: &TestStore, reg: &Registry, auth_file: Option<&Path>) -> Command {
    let mut c = ts.cli(reg.ca_path());
    c.env_remove("MODELFS_MIRRORS").env_remove("DOCKER_CONFIG");
    match auth_file {
        Some(p) => c.env("REGISTRY_AUTH_FILE", p),
        None => c.env(
            "REGISTRY_AUTH_FILE",
            reg.dir.path().join("no-such-auth.json"),
        ),
    };
    c
}

fn run(mut c: Command) -> Output {
    c.output().expect("run modelfs")
}

fn ok(c: Command) -> String {
    let out = run(c);
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    text
}

fn manifest(ts: &TestStore, name: &str) -> modelfs::store::Manifest {
    ts.store()
        .read_manifest(&ModelName::parse(name).unwrap())
        .unwrap()
        .expect("the manifest was written")
}

/// A Docker-style `config.json` in `dir` (a file of its own for each
/// host and credential) holding one credential for `host`.
fn auth_file(dir: &Path, host: &str, user: &str, password: &str) -> PathBuf {
    let p = dir.join(format!(
        "auth-{}.json",
        Sha256::of(format!("{host} {user}:{password}").as_bytes()).short()
    ));
    let b64 = modelfs::registry::auth::base64_encode(format!("{user}:{password}").as_bytes());
    std::fs::write(
        &p,
        format!(r#"{{"auths":{{"{host}":{{"auth":"{b64}"}}}}}}"#),
    )
    .unwrap();
    p
}

#[test]
fn add_oci_pins_the_gguf_layer_and_a_mount_fetches_it_from_the_registry() {
    crate::common::require_fuse();
    let reg = Registry::start(None);
    // Large enough for parallel ranges (8 MiB and more).
    let bytes = gguf_bytes(12 * MIB + 17, 301);
    let md = reg.push_model("models/tiny", "q4", Kind::DockerModel, &bytes);
    let ts = TestStore::new();
    let mut c = cli(&ts, &reg, None);
    c.args(["add", "tiny", "--no-facts", "--oci"])
        .arg(format!("{}/models/tiny:q4", reg.host));
    let text = ok(c);
    assert!(text.contains("pending"), "{text}");
    let m = manifest(&ts, "tiny");
    let d = Sha256::of(&bytes);
    assert_eq!((m.blob, m.size_bytes), (d, bytes.len() as u64));
    assert_eq!(m.source.registry, reg.host);
    assert_eq!(m.source.repo, "models/tiny");
    assert_eq!(m.source.revision, "q4");
    assert_eq!(m.source.filename, "tiny.gguf");
    assert_eq!(
        m.source.url.as_deref(),
        Some(&*format!(
            "https://{}/v2/models/tiny/blobs/{}",
            reg.host,
            d.to_blob_ref()
        ))
    );
    assert_eq!(m.source_field("oci_manifest"), Some(&*md.to_blob_ref()));

    let mount = Mount::start_with(&ts, reg.ca_path(), &[], |c| {
        c.env("REGISTRY_AUTH_FILE", reg.dir.path().join("none.json"));
    });
    let got = open_and_read(&mount.path("tiny.gguf")).expect("read through the mount");
    assert!(got == bytes, "the mount serves the layer's bytes");
    let log = mount.log();
    assert!(
        !log.contains("downloading over one connection"),
        "the registry's blob answers ranges with a validator: {log}"
    );
    drop(mount);
    ts.assert_consistent();
}

#[test]
fn a_modelpack_artifact_behind_an_index_pins_its_raw_weight_layer_and_pull_fetches_it() {
    let reg = Registry::start(None);
    let bytes = gguf_bytes(3 * MIB, 302);
    let md = reg.push_model("org/pack", "v1-linux", Kind::ModelPack, &bytes);
    let manifest_len = {
        let url = reg.url(&format!("/v2/org/pack/manifests/{}", md.to_blob_ref()));
        let resp = reg
            .agent
            .get(url)
            .header("Accept", OCI_MANIFEST)
            .call()
            .unwrap();
        resp.into_body().read_to_vec().unwrap().len()
    };
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{manifest_len}}}]}}"#,
        md.to_blob_ref()
    );
    reg.push_manifest("org/pack", "v1", OCI_INDEX, index.as_bytes());
    let ts = TestStore::new();
    let mut c = cli(&ts, &reg, None);
    c.args(["add", "pack", "--no-facts", "--oci"])
        .arg(format!("{}/org/pack:v1", reg.host));
    ok(c);
    let m = manifest(&ts, "pack");
    assert_eq!(m.blob, Sha256::of(&bytes));
    assert_eq!(m.source.filename, "model.gguf", "the layer's title");
    assert_eq!(m.source_field("oci_manifest"), Some(&*md.to_blob_ref()));
    // By digest, too.
    let mut c = cli(&ts, &reg, None);
    c.args(["add", "pack2", "--no-facts", "--oci"]).arg(format!(
        "{}/org/pack@{}",
        reg.host,
        md.to_blob_ref()
    ));
    ok(c);
    assert_eq!(manifest(&ts, "pack2").blob, Sha256::of(&bytes));

    let mut c = cli(&ts, &reg, None);
    c.args(["pull", "pack"]);
    ok(c);
    crate::fetch::assert_present(&ts, &m, &bytes);
}

#[test]
fn an_ollama_model_is_pinned_from_the_library_namespace_of_the_registry_given() {
    let reg = Registry::start(None);
    let bytes = gguf_bytes(MIB + 5, 303);
    reg.push_model("library/tinyllama", "1b", Kind::Ollama, &bytes);
    let ts = TestStore::new();
    let mut c = cli(&ts, &reg, None);
    c.args([
        "add",
        "tl",
        "--no-facts",
        "--ollama",
        "tinyllama:1b",
        "--registry",
    ])
    .arg(&reg.host);
    ok(c);
    let m = manifest(&ts, "tl");
    assert_eq!(m.blob, Sha256::of(&bytes));
    assert_eq!(
        (m.source.repo.as_str(), m.source.revision.as_str()),
        ("library/tinyllama", "1b")
    );
    let mut c = cli(&ts, &reg, None);
    c.args(["pull", "tl"]);
    ok(c);
    crate::fetch::assert_present(&ts, &m, &bytes);

    // A manifest with no GGUF layer fails, listing its layers.
    let other = reg.push_blob("library/nogguf", b"not a model");
    let cfg = reg.push_blob("library/nogguf", b"{}");
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"application/vnd.ollama.image.license","digest":"{}","size":11}}]}}"#,
        cfg.to_blob_ref(),
        other.to_blob_ref()
    );
    reg.push_manifest("library/nogguf", "latest", DOCKER_MANIFEST, body.as_bytes());
    let mut c = cli(&ts, &reg, None);
    c.args(["add", "ng", "--ollama", "nogguf", "--registry"])
        .arg(&reg.host);
    let out = run(c);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    for want in [
        "library/nogguf",
        "tag latest",
        "no layer is an uncompressed GGUF",
        "application/vnd.ollama.image.license",
        "nothing was added",
    ] {
        assert!(text.contains(want), "{want:?} missing: {text}");
    }
    // An unknown tag: a 404 named as such.
    let mut c = cli(&ts, &reg, None);
    c.args(["add", "nt", "--ollama", "tinyllama:7b", "--registry"])
        .arg(&reg.host);
    let text = output_text(&run(c));
    assert!(
        text.contains("HTTP 404") && text.contains("tag 7b") && text.contains("check"),
        "{text}"
    );
}

#[test]
fn a_layer_whose_bytes_lie_goes_to_quarantine_and_nothing_is_published() {
    let reg = Registry::start(None);
    let bytes = gguf_bytes(2 * MIB, 304);
    reg.push_model("models/liar", "latest", Kind::ModelPack, &bytes);
    let d = Sha256::of(&bytes);
    let mut wrong = bytes.clone();
    wrong[MIB] ^= 0x40;
    std::fs::write(reg.blob_file(&d), &wrong).unwrap();
    let ts = TestStore::new();
    let mut c = cli(&ts, &reg, None);
    c.args(["add", "liar", "--no-facts", "--oci"])
        .arg(format!("{}/models/liar", reg.host));
    ok(c);
    let mut c = cli(&ts, &reg, None);
    c.args(["pull", "liar"]);
    let out = run(c);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("quarantine") || text.contains("digest"),
        "{text}"
    );
    assert!(!crate::common::is_present(&ts.store(), &d));
    assert_eq!(ts.quarantined().len(), 1, "{text}");
    ts.assert_consistent();
}

#[test]
fn a_registry_that_wants_a_login_gets_the_configured_credentials_and_only_those() {
    let reg = Registry::start(Some(("alice", "correct horse")));
    let bytes = gguf_bytes(5 * MIB, 305);
    reg.push_model("private/model", "v2", Kind::ModelPack, &bytes);
    let ts = TestStore::new();
    let spec = format!("{}/private/model:v2", reg.host);

    // No credentials: the registry, repository, tag, answer, and what to do.
    let mut c = cli(&ts, &reg, None);
    c.args(["add", "p", "--oci", &spec]);
    let out = run(c);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    for want in [
        &*format!("registry {}", reg.host),
        "repository private/model",
        "tag v2",
        "HTTP 401",
        "log in",
        "nothing was added",
    ] {
        assert!(text.contains(want), "{want:?} missing: {text}");
    }
    // Wrong credentials: said to be refused.
    let dir = tempfile::tempdir().unwrap();
    let wrong = auth_file(dir.path(), &reg.host, "alice", "wrong");
    let mut c = cli(&ts, &reg, Some(&wrong));
    c.args(["add", "p", "--oci", &spec]);
    let out = run(c);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("HTTP 401") && text.contains("were refused"),
        "{text}"
    );
    assert!(
        ts.store()
            .read_manifest(&ModelName::parse("p").unwrap())
            .unwrap()
            .is_none()
    );

    // Credentials for another registry only: as good as none.
    let elsewhere = auth_file(dir.path(), "other.example:443", "alice", "correct horse");
    let mut c = cli(&ts, &reg, Some(&elsewhere));
    c.args(["add", "p", "--oci", &spec]);
    assert!(output_text(&run(c)).contains("log in"));

    // The right ones: pinned (its header read by Range), then fetched.
    let right = auth_file(dir.path(), &reg.host, "alice", "correct horse");
    let mut c = cli(&ts, &reg, Some(&right));
    c.args(["add", "p", "--oci", &spec]);
    ok(c);
    let m = manifest(&ts, "p");
    let mut c = cli(&ts, &reg, Some(&right));
    c.args(["pull", "p"]);
    ok(c);
    crate::fetch::assert_present(&ts, &m, &bytes);

    // A pull without them fails naming the registry and the log-in.
    let ts2 = TestStore::new();
    ts2.write_manifest_with_source("p", &bytes, m.source.clone());
    let mut c = cli(&ts2, &reg, None);
    c.args(["pull", "p"]);
    let out = run(c);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("401") && text.contains("log in"), "{text}");
}

#[test]
fn a_registry_repository_serves_as_an_oci_mirror_before_the_origin() {
    let reg = Registry::start(None);
    let origin = Origin::start();
    let bytes = gguf_bytes(4 * MIB, 306);
    let d = reg.push_blob("cache/models", &bytes);
    let ts = TestStore::new();
    let m = ts.add_pending("mirrored", &origin, &bytes);
    assert_eq!(m.blob, d);
    // The test CA of the registry and the origin's, both trusted.
    let cas = reg.dir.path().join("cas.pem");
    std::fs::write(&cas, format!("{}{}", reg.ca.pem(), origin.ca().pem())).unwrap();
    let mut c = ts.cli(&cas);
    c.env("REGISTRY_AUTH_FILE", reg.dir.path().join("none.json"))
        .env(
            "MODELFS_MIRRORS",
            format!("oci://{}/cache/models", reg.host),
        )
        .args(["pull", "mirrored"]);
    ok(c);
    crate::fetch::assert_present(&ts, &m, &bytes);
    assert_eq!(
        origin.stats("mirrored.gguf").gets,
        0,
        "the origin was not asked"
    );

    // A repository without the blob: a 404, and the origin serves it.
    let other = gguf_bytes(MIB, 307);
    let m2 = ts.add_pending("notcached", &origin, &other);
    let mut c = ts.cli(&cas);
    c.env("REGISTRY_AUTH_FILE", reg.dir.path().join("none.json"))
        .env(
            "MODELFS_MIRRORS",
            format!("oci://{}/cache/models", reg.host),
        )
        .args(["pull", "notcached"]);
    ok(c);
    crate::fetch::assert_present(&ts, &m2, &other);
    assert!(origin.stats("notcached.gguf").gets >= 1);
}

/// base64url without padding, as JWTs are.
fn b64url(bytes: &[u8]) -> String {
    modelfs::registry::auth::base64_encode(bytes)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

/// The ES256 key that signs registry tokens, and its self-signed
/// certificate (the registry's `rootcertbundle`, and the JWT's `x5c`).
struct TokenKey {
    pair: ring::signature::EcdsaKeyPair,
    cert_der: Vec<u8>,
    cert_pem: String,
}

impl TokenKey {
    fn new() -> Self {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let kp = rcgen::KeyPair::try_from(pkcs8.as_ref()).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["token-signer".to_string()])
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        TokenKey {
            pair,
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
        }
    }

    /// A token that lets `sub` pull from and push to `repo`.
    fn mint(&self, sub: &str, repo: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = format!(
            r#"{{"typ":"JWT","alg":"ES256","x5c":["{}"]}}"#,
            modelfs::registry::auth::base64_encode(&self.cert_der)
        );
        let claims = format!(
            r#"{{"iss":"{ISSUER}","sub":"{sub}","aud":"{SERVICE}","exp":{},"nbf":{},"iat":{},"jti":"{}","access":[{{"type":"repository","name":"{repo}","actions":["pull","push"]}}]}}"#,
            now + 300,
            now - 10,
            now - 10,
            now ^ (self as *const Self as u64) ^ u64::from(std::process::id())
        );
        let signing_input = format!(
            "{}.{}",
            b64url(header.as_bytes()),
            b64url(claims.as_bytes())
        );
        let sig = self
            .pair
            .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
            .unwrap();
        format!("{signing_input}.{}", b64url(sig.as_ref()))
    }
}

/// What the token server saw and how it answers.
#[derive(Default)]
struct TokenState {
    /// (Authorization header, scope) of each request.
    requests: Vec<(Option<String>, String)>,
    /// Grant tokens for this repository whatever the scope asked.
    grant_only: Option<String>,
}

/// A registry token realm over TLS: `GET /token?scope=…&service=…`
/// answered with a JWT for the scope's repository to the right Basic
/// credential, 401 to anything else. A minimal HTTP/1.0-style server:
/// one request per connection.
struct TokenServer {
    realm: String,
    key: std::sync::Arc<TokenKey>,
    state: std::sync::Arc<parking_lot::Mutex<TokenState>>,
}

impl TokenServer {
    fn start(ca: &TestCa, user: &str, password: &str) -> TokenServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let realm = format!("https://{}/token", listener.local_addr().unwrap());
        let key = std::sync::Arc::new(TokenKey::new());
        let state = std::sync::Arc::new(parking_lot::Mutex::new(TokenState::default()));
        let tls = ca.server_config(&["127.0.0.1"]);
        let want = format!(
            "Basic {}",
            modelfs::registry::auth::base64_encode(format!("{user}:{password}").as_bytes())
        );
        let (k, st) = (key.clone(), state.clone());
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let (tls, k, st, want) = (tls.clone(), k.clone(), st.clone(), want.clone());
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(tls).unwrap();
                    let mut s = rustls::StreamOwned::new(conn, tcp);
                    let _ = answer_token_request(&mut s, &k, &st, &want);
                });
            }
        });
        TokenServer { realm, key, state }
    }
}

fn answer_token_request(
    s: &mut (impl Read + Write),
    key: &TokenKey,
    state: &parking_lot::Mutex<TokenState>,
    want: &str,
) -> std::io::Result<()> {
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 64 << 10 {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&req).to_string();
    let target = text.split_whitespace().nth(1).unwrap_or("").to_string();
    let auth = text
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        })
        .map(|(_, v)| v.trim().to_string());
    let scope = target
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("scope="))
        .map(percent_decode)
        .unwrap_or_default();
    let repo = {
        let mut st = state.lock();
        st.requests.push((auth.clone(), scope.clone()));
        st.grant_only.clone()
    }
    .unwrap_or_else(|| scope.split(':').nth(1).unwrap_or("").to_string());
    let answer = if auth.as_deref() == Some(want) {
        let body = format!(
            r#"{{"token":"{}","expires_in":300}}"#,
            key.mint("alice", &repo)
        );
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
    };
    s.write_all(answer.as_bytes())?;
    s.flush()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

#[test]
fn a_token_registry_gets_a_token_from_its_realm_and_blob_storage_gets_no_credential() {
    let ca = TestCa::new();
    let tokens = TokenServer::start(&ca, "alice", "correct horse");
    // Blob storage: what the registry's blob GETs redirect to.
    let storage = Origin::start();
    let reg = Registry::start_with(Setup {
        token: Some(&tokens),
        // The redirect middleware keeps the scheme and host only.
        redirect_to: Some(storage.url("")),
        ca: Some(ca.clone()),
        ..Setup::default()
    });
    let bytes = gguf_bytes(10 * MIB + 3, 308);
    reg.push_model("team/model", "v1", Kind::ModelPack, &bytes);
    let d = Sha256::of(&bytes);
    let hex = d.to_hex();
    let stored = format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]);
    storage.put(&stored, bytes.clone());
    let dir = tempfile::tempdir().unwrap();
    let cas = dir.path().join("cas.pem");
    std::fs::write(&cas, format!("{}{}", ca.pem(), storage.ca().pem())).unwrap();
    let right = auth_file(dir.path(), &reg.host, "alice", "correct horse");
    let ts = TestStore::new();
    let cli_with = |auth: &Path| {
        let mut c = ts.cli(&cas);
        c.env_remove("MODELFS_MIRRORS")
            .env("REGISTRY_AUTH_FILE", auth);
        c
    };

    let mut c = cli_with(&right);
    c.args(["add", "tm", "--oci"])
        .arg(format!("{}/team/model:v1", reg.host));
    ok(c);
    let m = manifest(&ts, "tm");
    assert_eq!(m.blob, d);
    let mut c = cli_with(&right);
    c.args(["pull", "tm"]);
    ok(c);
    crate::fetch::assert_present(&ts, &m, &bytes);

    let st = storage.stats(&stored);
    assert!(
        st.gets >= 1,
        "the bytes came from blob storage, by the redirect"
    );
    assert!(
        st.authorization_headers.iter().all(Option::is_none),
        "blob storage got a credential: {:?}",
        st.authorization_headers
    );
    {
        let seen = tokens.state.lock();
        assert!(!seen.requests.is_empty());
        let basic = format!(
            "Basic {}",
            modelfs::registry::auth::base64_encode(b"alice:correct horse")
        );
        for (auth, scope) in &seen.requests {
            assert_eq!(
                auth.as_deref(),
                Some(&*basic),
                "the realm gets the registry's credential"
            );
            assert_eq!(scope, "repository:team/model:pull");
        }
    }

    // Wrong credentials: the realm refuses, and the error says so.
    let wrong = auth_file(dir.path(), &reg.host, "alice", "nope");
    let mut c = cli_with(&wrong);
    c.args(["add", "tm2", "--oci"])
        .arg(format!("{}/team/model:v1", reg.host));
    let out = run(c);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("HTTP 401") && text.contains("token realm") && text.contains("were refused"),
        "{text}"
    );

    // A token for another repository: the registry still refuses.
    tokens.state.lock().grant_only = Some("team/other".into());
    let mut c = cli_with(&right);
    c.args(["add", "tm3", "--oci"])
        .arg(format!("{}/team/model:v1", reg.host));
    let out = run(c);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("does not allow pulling team/model")
            && text.contains("repository team/model"),
        "{text}"
    );
}

#[test]
fn a_fleet_uses_a_pull_through_cache_of_the_registry_as_its_oci_mirror() {
    crate::common::require_fuse();
    let upstream = Registry::start_with(Setup {
        access_log: true,
        ..Setup::default()
    });
    let cache = Registry::start_with(Setup {
        proxy_of: Some(&upstream),
        ca: Some(upstream.ca.clone()),
        ..Setup::default()
    });
    // Large enough for parallel ranges: the cache answers a range of a
    // blob it does not hold yet with the whole blob (200).
    let bytes = gguf_bytes(12 * MIB + 5, 309);
    upstream.push_model("library/shared", "latest", Kind::Ollama, &bytes);
    let d = Sha256::of(&bytes);
    let mirror = format!("oci://{}/library/shared", cache.host);
    let stores: Vec<TestStore> = (0..3).map(|_| TestStore::new()).collect();
    for ts in &stores {
        let mut c = cli(ts, &upstream, None);
        c.args([
            "add",
            "shared",
            "--no-facts",
            "--ollama",
            "shared",
            "--registry",
        ])
        .arg(&upstream.host);
        ok(c);
    }
    // The first host opens it through its mount, at the default
    // connection count: the cache's miss.
    let mirror_opt = format!("mirror={mirror}");
    let mount = Mount::start_with(&stores[0], upstream.ca_path(), &[&mirror_opt], |c| {
        c.env("REGISTRY_AUTH_FILE", upstream.dir.path().join("none.json"));
    });
    let got = open_and_read(&mount.path("shared.gguf")).expect("read through the mount");
    assert!(got == bytes, "the mount serves the model's bytes");
    let log = mount.log();
    assert!(
        !log.contains("trying the source"),
        "served by the cache: {log}"
    );
    drop(mount);
    // distribution 2.8's proxy (registry/proxy/proxyblobstore.go,
    // ServeBlob) answers a first miss by pulling the blob twice from
    // upstream: once into its storage (a goroutine) and once for the
    // answer. Asking again before the first copy is stored costs a third;
    // once stored, the cache answers from its storage.
    assert!(
        wait_until(Duration::from_secs(20), || cache.blob_file(&d).exists()),
        "the cache stored the blob"
    );
    // The upstream logs a request once its answer is sent.
    wait_until(Duration::from_secs(10), || upstream.blob_gets(&d) >= 2);
    assert_eq!(
        upstream.blob_gets(&d),
        2,
        "the miss: the cache's copy and its answer, and no request of ours more"
    );
    for (i, ts) in stores.iter().enumerate().skip(1) {
        let mut c = cli(ts, &upstream, None);
        c.env("MODELFS_MIRRORS", &mirror).args(["pull", "shared"]);
        let text = ok(c);
        assert!(
            !text.contains("trying the source"),
            "store {i} was served by the cache: {text}"
        );
        crate::fetch::assert_present(ts, &manifest(ts, "shared"), &bytes);
    }
    let gets = upstream.blob_gets(&d);
    eprintln!("upstream blob GETs for 3 stores through the cache: {gets}");
    assert_eq!(
        gets, 2,
        "the cache serves the other hosts from what it holds"
    );
}

#[test]
fn push_publishes_a_modelpack_artifact_that_add_pins_back_and_mounts_a_blob_the_registry_has() {
    let reg = Registry::start(Some(("bob", "pushpw")));
    let dir = tempfile::tempdir().unwrap();
    let login = auth_file(dir.path(), &reg.host, "bob", "pushpw");
    // A model present in one store (pinned from a URL, then fetched).
    let origin = Origin::start();
    let bytes = gguf_bytes(70 * MIB + 11, 310);
    let ts = TestStore::new();
    let m = ts.add_pending("big", &origin, &bytes);
    let cas = dir.path().join("cas.pem");
    std::fs::write(&cas, format!("{}{}", reg.ca.pem(), origin.ca().pem())).unwrap();
    let cli_on = |ts: &TestStore, auth: &Path| {
        let mut c = ts.cli(&cas);
        c.env_remove("MODELFS_MIRRORS")
            .env("REGISTRY_AUTH_FILE", auth);
        c
    };
    let mut c = cli_on(&ts, &login);
    c.args(["pull", "big"]);
    ok(c);

    // Without a login: refused, saying so.
    let mut c = cli_on(&ts, &dir.path().join("none.json"));
    c.args(["push", "big"])
        .arg(format!("oci://{}/team/big:v1", reg.host));
    let out = run(c);
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("HTTP 401") && text.contains("log in") && text.contains("not pushed"),
        "{text}"
    );

    let mut c = cli_on(&ts, &login);
    c.args(["push", "big"])
        .arg(format!("oci://{}/team/big:v1", reg.host));
    let text = ok(c);
    assert!(
        text.contains("uploaded") && text.contains("70.0 MiB / 70.0 MiB sent"),
        "{text}"
    );

    // Another store pins it back from the registry: the same blob.
    let ts2 = TestStore::new();
    let mut c = cli_on(&ts2, &login);
    c.args(["add", "big", "--no-facts", "--oci"])
        .arg(format!("{}/team/big:v1", reg.host));
    ok(c);
    let back = manifest(&ts2, "big");
    assert_eq!((back.blob, back.size_bytes), (m.blob, m.size_bytes));
    assert_eq!(back.source.filename, "big.gguf");
    let mut c = cli_on(&ts2, &login);
    c.args(["pull", "big"]);
    ok(c);
    crate::fetch::assert_present(&ts2, &back, &bytes);

    // Pushing the model pinned from team/big to another repository of the
    // same registry mounts the blob instead of sending it.
    let mut c = cli_on(&ts2, &login);
    c.args(["push", "big"])
        .arg(format!("oci://{}/team/copy:v1", reg.host));
    let text = ok(c);
    assert!(text.contains("mounted from team/big"), "{text}");
    // And again: the repository has it.
    let mut c = cli_on(&ts2, &login);
    c.args(["push", "big"])
        .arg(format!("oci://{}/team/copy:v2", reg.host));
    assert!(ok(c).contains("the registry had the weights"));
}

/// Runs `script` with Python and the `oras` SDK (PyPI), trusting `ca`.
fn oras(script: &str, ca: &Path, args: &[&str]) -> String {
    let check = Command::new("python3")
        .args(["-c", "import oras.client"])
        .output();
    assert!(
        check.as_ref().is_ok_and(|o| o.status.success()),
        "the interop test needs Python's oras SDK (pip install oras; scripts/deps.sh --test installs it)"
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .env("REQUESTS_CA_BUNDLE", ca)
        .output()
        .expect("python3");
    let text = output_text(&out);
    assert!(out.status.success(), "oras failed: {text}");
    text
}

const ORAS_PUSH: &str = r#"
import sys, oras.client
host, ca, target, path, config = sys.argv[1:6]
c = oras.client.OrasClient(hostname=host, tls_verify=ca)
c.push(target=target, disable_path_validation=True,
       files=[path + ":application/vnd.cncf.model.weight.v1.raw"],
       manifest_config=config + ":application/vnd.cncf.model.config.v1+json")
"#;

const ORAS_PULL: &str = r#"
import sys, oras.client
host, ca, target, outdir = sys.argv[1:5]
c = oras.client.OrasClient(hostname=host, tls_verify=ca)
for p in c.pull(target=target, outdir=outdir):
    print("PULLED", p)
"#;

#[test]
fn oras_pushes_what_modelfs_pins_and_pulls_what_modelfs_pushes() {
    let reg = Registry::start(None);
    let dir = tempfile::tempdir().unwrap();
    let ca = reg.ca_path().to_path_buf();
    let host = reg.host.clone();

    // oras pushes a ModelPack-typed GGUF; modelfs pins and fetches it.
    let bytes = gguf_bytes(2 * MIB + 1, 311);
    let file = dir.path().join("weights.gguf");
    std::fs::write(&file, &bytes).unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, br#"{"config":{"format":"gguf"}}"#).unwrap();
    oras(
        ORAS_PUSH,
        &ca,
        &[
            &host,
            ca.to_str().unwrap(),
            &format!("{host}/oras/model:v1"),
            file.to_str().unwrap(),
            config.to_str().unwrap(),
        ],
    );
    let ts = TestStore::new();
    let mut c = cli(&ts, &reg, None);
    c.args(["add", "fromoras", "--no-facts", "--oci"])
        .arg(format!("{host}/oras/model:v1"));
    ok(c);
    let m = manifest(&ts, "fromoras");
    assert_eq!(m.blob, Sha256::of(&bytes));
    assert_eq!(m.source.filename, "weights.gguf", "oras's title annotation");
    let mut c = cli(&ts, &reg, None);
    c.args(["pull", "fromoras"]);
    ok(c);
    crate::fetch::assert_present(&ts, &m, &bytes);

    // modelfs pushes it elsewhere; oras pulls the same bytes back.
    let mut c = cli(&ts, &reg, None);
    c.args(["push", "fromoras"])
        .arg(format!("oci://{host}/modelfs/model:v1"));
    ok(c);
    let out = dir.path().join("pulled");
    let text = oras(
        ORAS_PULL,
        &ca,
        &[
            &host,
            ca.to_str().unwrap(),
            &format!("{host}/modelfs/model:v1"),
            out.to_str().unwrap(),
        ],
    );
    assert!(text.contains("fromoras.gguf"), "{text}");
    let pulled = std::fs::read(out.join("fromoras.gguf")).unwrap();
    assert!(pulled == bytes, "oras pulls the bytes modelfs pushed");
}

#[test]
fn a_split_model_stored_as_several_layers_is_added_as_a_set() {
    let reg = Registry::start(None);
    let shards = [
        gguf_bytes(MIB, 312),
        gguf_bytes(MIB + 9, 313),
        gguf_bytes(77, 314),
    ];
    let cfg = reg.push_blob("library/split", b"{}");
    let layers: Vec<String> = shards
        .iter()
        .map(|b| {
            let d = reg.push_blob("library/split", b);
            format!(
                r#"{{"mediaType":"application/vnd.ollama.image.model","digest":"{}","size":{}}}"#,
                d.to_blob_ref(),
                b.len()
            )
        })
        .collect();
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{}","size":2}},"layers":[{}]}}"#,
        cfg.to_blob_ref(),
        layers.join(",")
    );
    reg.push_manifest("library/split", "big", DOCKER_MANIFEST, body.as_bytes());
    let ts = TestStore::new();
    let mut c = cli(&ts, &reg, None);
    c.args([
        "add",
        "sp",
        "--no-facts",
        "--ollama",
        "split:big",
        "--registry",
    ])
    .arg(&reg.host);
    ok(c);
    for (k, bytes) in shards.iter().enumerate() {
        let name = format!("sp-{:05}-of-00003", k + 1);
        let m = manifest(&ts, &name);
        assert_eq!(m.blob, Sha256::of(bytes), "{name}");
        assert_eq!(
            m.source.filename,
            format!("split-{:05}-of-00003.gguf", k + 1)
        );
        let mut c = cli(&ts, &reg, None);
        c.args(["pull", &name]);
        ok(c);
        crate::fetch::assert_present(&ts, &m, bytes);
    }
}
