//! `modelfs add`: pin a model by writing a pending manifest. Downloads
//! nothing but, at most, one `HEAD` to learn the size or the digest.

use crate::digest::Sha256;
use crate::fetch::FetchErrorKind;
use crate::store::manifest::{MAX_SIZE_BYTES, validate_format};
use crate::store::{Manifest, Source};
use crate::text::redact_url;

use super::{CliError, Globals, parse_name};

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("origin").required(true).args(["url", "hf"]))]
pub struct AddArgs {
    /// Model name (ASCII letters, digits, '.', '-', '_'); the mount shows NAME.FORMAT
    pub name: String,
    /// https:// URL of the file
    #[arg(long, requires = "sha256")]
    pub url: Option<String>,
    /// Expected SHA-256 of the file (64 lowercase hex characters)
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Size in bytes (without it, a HEAD request asks the server)
    #[arg(long, value_name = "BYTES")]
    pub size: Option<u64>,
    /// A Hugging Face file: OWNER/REPO/FILE[@REVISION]; digest and size come from the Hub
    #[arg(long, value_name = "OWNER/REPO/FILE[@REV]", conflicts_with_all = ["url", "sha256"])]
    pub hf: Option<String>,
    /// File format, also the extension in the mount
    #[arg(long, default_value = "gguf")]
    pub format: String,
    /// SPDX-style license id (informational)
    #[arg(long, value_name = "ID")]
    pub license: Option<String>,
    /// Repoint an existing name at another blob
    #[arg(long)]
    pub force: bool,
}

/// Writes a pending manifest for a URL or a Hugging Face file.
pub fn run(g: &Globals, a: &AddArgs) -> Result<(), CliError> {
    validate_format(&a.format).map_err(|p| CliError::new(format!("--format {p}")))?;
    let name = parse_name(model_name(&a.name, &a.format))?;
    let store = g.store_for_writing()?;
    let fetcher = g.fetcher()?;
    let (blob, size, source) = match (&a.hf, &a.url) {
        (Some(spec), _) => pin_hf(&fetcher, spec, &name.to_string())?,
        (None, Some(url)) => {
            let hex = a.sha256.as_deref().unwrap_or_default();
            let blob = Sha256::from_hex(&hex.to_ascii_lowercase())
                .map_err(|e| CliError::new(format!("--sha256 for {name}: {e}")))?;
            let size = match a.size {
                Some(s) => s,
                None => head_size(&fetcher, url, &name.to_string())?,
            };
            let filename = url
                .split(['?', '#'])
                .next()
                .unwrap_or(url)
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_string();
            let registry = crate::fetch::http::host_of(url).unwrap_or_default();
            (
                blob,
                size,
                Source {
                    registry,
                    filename,
                    url: Some(url.clone()),
                    ..Source::default()
                },
            )
        }
        (None, None) => unreachable!("clap requires --url or --hf"),
    };
    if size > MAX_SIZE_BYTES {
        return Err(CliError::new(format!(
            "{name}: a size of {size} bytes is more than any file can have (at most 2^63 - 1 = {MAX_SIZE_BYTES}); check --size or the server's answer"
        )));
    }
    if let Some(u) = &source.url
        && !u.starts_with("https://")
    {
        return Err(CliError::new(format!(
            "{name}: refusing non-https URL {}; modelfs only downloads over HTTPS",
            redact_url(u)
        )));
    }

    if let crate::store::BlobState::Present(have) = store.blob_state(&blob)
        && have != size
    {
        let given = if a.size.is_some() {
            "--size"
        } else {
            "the server"
        };
        return Err(CliError::new(format!(
            "{name}: the store already holds blob {} with {have} bytes, but {given} says {size}; \
             nothing was added (check --size and --sha256)",
            blob.short()
        )));
    }

    let _lock = store
        .lock_model_waiting(&name, &mut || {
            eprintln!("waiting for another process that holds the lock on {name}...")
        })
        .map_err(|e| CliError::new(format!("{name}: cannot take the store lock: {e}")))?;
    let mut manifest = Manifest::new(name.clone(), &a.format, blob, size, source);
    manifest.license = a.license.clone();
    if let Some(old) = store.read_manifest(&name)? {
        if old.blob == blob {
            println!("{name} already pins {}; nothing to do", blob.short());
            return Ok(());
        }
        if !a.force {
            return Err(CliError::new(format!(
                "{name} already pins blob {}; pass --force to repoint it at {}",
                old.blob.short(),
                blob.short()
            )));
        }
    }
    store.write_manifest(&manifest)?;
    let present = matches!(store.blob_state(&blob), crate::store::BlobState::Present(_));
    println!(
        "added {} ({}, {}) -> {}",
        manifest.file_name(),
        crate::text::human_bytes(size),
        if present {
            "present"
        } else {
            "pending: fetched on first open, or now with `modelfs pull`"
        },
        blob.short()
    );
    Ok(())
}

/// `NAME` as given, or without `.FORMAT` when the user typed the file
/// name the mount shows (`add llama.gguf` pins `llama`, not `llama.gguf`,
/// which the mount would show as `llama.gguf.gguf`).
fn model_name<'a>(given: &'a str, format: &str) -> &'a str {
    match given.strip_suffix(&format!(".{format}")) {
        Some(stem) if !stem.is_empty() => {
            eprintln!("note: taking {stem:?} as the model name; the mount shows it as {given}");
            stem
        }
        _ => given,
    }
}

/// A failed request while pinning: nothing was written, so the hint is
/// about running `add` again, never about a later open.
fn pin_failed(model: &str, url: &str, kind: FetchErrorKind) -> CliError {
    let what = kind.refusal_hint().unwrap_or(match &kind {
        FetchErrorKind::Tls(_) => {
            "check the server's certificate; for a private mirror pass --ca-file or set MODELFS_CA_FILE"
        }
        FetchErrorKind::InsecureUrl(_)
        | FetchErrorKind::BadUrl(_)
        | FetchErrorKind::Redirect(_) => "use an https:// URL whose redirects stay on https://",
        _ => "check the network and the URL",
    });
    CliError::new(format!(
        "pinning {model}: asking {} failed: {kind}; nothing was added ({what}, then run `modelfs add` again)",
        crate::text::redact_url(url)
    ))
}

fn head_size(fetcher: &crate::fetch::Fetcher, url: &str, model: &str) -> Result<u64, CliError> {
    let resp = fetcher
        .http()
        .head(url, true)
        .map_err(|k| pin_failed(model, url, k))?;
    if resp.status != 200 {
        let kind = FetchErrorKind::Status {
            code: resp.status,
            retry_after: None,
        };
        return Err(pin_failed(model, url, kind));
    }
    resp.content_length().ok_or_else(|| {
        CliError::new(format!(
            "{model}: the server did not say how large {} is; pass --size BYTES",
            redact_url(url)
        ))
    })
}

/// Parses `OWNER/REPO/FILE[@REV]` and asks the Hub for digest and size.
fn pin_hf(
    fetcher: &crate::fetch::Fetcher,
    spec: &str,
    model: &str,
) -> Result<(Sha256, u64, Source), CliError> {
    let (path, rev) = match spec.rsplit_once('@') {
        Some((p, r)) if !r.is_empty() => (p, r),
        _ => (spec, "main"),
    };
    let mut parts = path.splitn(3, '/');
    let (Some(owner), Some(repo), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(CliError::new(format!(
            "--hf {spec:?}: expected OWNER/REPO/FILE[@REVISION]"
        )));
    };
    if [owner, repo, file]
        .iter()
        .any(|s| s.is_empty() || s.split('/').any(|c| c == ".." || c.is_empty()))
    {
        return Err(CliError::new(format!(
            "--hf {spec:?}: expected OWNER/REPO/FILE[@REVISION]"
        )));
    }
    let mut source = Source {
        registry: "huggingface.co".into(),
        repo: format!("{owner}/{repo}"),
        revision: rev.into(),
        filename: file.into(),
        url: None,
    };
    let url = fetcher
        .source_url(&source)
        .expect("an hf source always has a URL");
    let resp = fetcher
        .http()
        .head(&url, false)
        .map_err(|k| pin_failed(model, &url, k))?;
    if !matches!(resp.status, 200 | 301 | 302 | 303 | 307 | 308) {
        let kind = FetchErrorKind::Status {
            code: resp.status,
            retry_after: None,
        };
        return Err(pin_failed(model, &url, kind));
    }
    let etag = resp.header("x-linked-etag").map(|e| {
        e.trim()
            .trim_start_matches("W/")
            .trim_matches('"')
            .to_string()
    });
    let Some(Ok(blob)) = etag.map(|e| Sha256::from_hex(&e)) else {
        return Err(CliError::new(format!(
            "{model}: {} has no X-Linked-Etag SHA-256 (not an LFS file?); use --url URL --sha256 HEX instead",
            redact_url(&url)
        )));
    };
    let size = resp
        .header("x-linked-size")
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            CliError::new(format!(
                "{model}: {} has no X-Linked-Size header; use --url with --size",
                redact_url(&url)
            ))
        })?;
    // A branch moves: pinned at the commit it names now, a later push to
    // it cannot turn this pin into a permanent digest mismatch.
    match resp.header("x-repo-commit").map(str::trim) {
        Some(commit) if is_commit(commit) => {
            if commit != rev {
                eprintln!("pinned {owner}/{repo} at commit {commit} ({rev})");
            }
            source.revision = commit.to_string();
        }
        _ if is_commit(rev) => {}
        _ => eprintln!(
            "warning: the Hub did not say which commit {rev:?} is (no X-Repo-Commit); \
             {model} is pinned to {rev:?}, which a later push can move"
        ),
    }
    Ok((blob, size, source))
}

/// A full git commit id: 40 lowercase hex digits.
fn is_commit(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
