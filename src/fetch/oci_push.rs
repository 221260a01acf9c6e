//! Publishing a present model to an OCI registry as a ModelPack artifact:
//! the GGUF as one uncompressed weight layer (so the layer's digest is the
//! blob's), a config carrying the manifest's facts, and an OCI image
//! manifest under a tag.
//!
//! A blob the repository already has is not sent again (`HEAD`); one the
//! registry holds in the repository the model was pinned from is mounted
//! from there (`POST …/uploads/?mount=&from=`); any other is uploaded in
//! chunks of [`CHUNK`] (`PATCH` with `Content-Range`, then `PUT ?digest=`),
//! so the registry checks the digest. Authentication is that of every
//! registry request ([`super::oci`]): the registry's challenge names the
//! push scope it wants.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::http::{Fetched, resolve_location};
use super::oci::{OciError, OciErrorKind};
use super::pipeline::Fetcher;
use crate::digest::Sha256;
use crate::registry::Reference;
use crate::registry::manifest::{MODELPACK_WEIGHT_RAW, OCI_MANIFEST, TITLE};
use crate::store::Manifest;

/// The bytes sent per `PATCH`.
pub const CHUNK: u64 = 64 << 20;
pub const MODELPACK_ARTIFACT: &str = "application/vnd.cncf.model.manifest.v1+json";
pub const MODELPACK_CONFIG: &str = "application/vnd.cncf.model.config.v1+json";

/// How a push went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub manifest_digest: Sha256,
    /// How the weight blob got there.
    pub weights: BlobPushed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobPushed {
    /// The repository had it.
    Existed,
    /// Mounted from the repository the model was pinned from.
    Mounted,
    /// Sent, this many bytes.
    Uploaded(u64),
}

/// What is uploaded: a file (the blob) or a few bytes (the config).
enum Content<'a> {
    File(&'a Path),
    Bytes(&'a [u8]),
}

impl Fetcher {
    /// Pushes `m`, whose blob is present at `blob_path`, to `r` (which
    /// must name a tag); `progress(sent, total)` after each chunk.
    pub fn push_oci(
        &self,
        m: &Manifest,
        blob_path: &Path,
        r: &Reference,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Pushed, OciError> {
        let fail = |kind| OciError {
            model: m.name.to_string(),
            reference: r.clone(),
            kind,
            pushing: true,
        };
        let from = (m.source.registry.eq_ignore_ascii_case(&r.registry)
            && !m.source.repo.is_empty()
            && m.source.repo != r.repo)
            .then_some(m.source.repo.as_str());
        let weights = self
            .push_blob(
                r,
                &m.blob,
                m.size_bytes,
                Content::File(blob_path),
                from,
                progress,
            )
            .map_err(fail)?;
        let config = modelpack_config(m);
        let config_digest = Sha256::of(&config);
        self.push_blob(
            r,
            &config_digest,
            config.len() as u64,
            Content::Bytes(&config),
            None,
            &mut |_, _| {},
        )
        .map_err(fail)?;
        let manifest = modelpack_manifest(m, &config_digest, config.len() as u64);
        let url = r.manifest_url(r.tag_or_default());
        let resp = self
            .http()
            .request(
                "PUT",
                &url,
                &[
                    ("Content-Type", OCI_MANIFEST.to_string()),
                    ("Content-Length", manifest.len().to_string()),
                ],
                &|| {
                    Ok(ureq::SendBody::from_owned_reader(std::io::Cursor::new(
                        manifest.clone(),
                    )))
                },
            )
            .map_err(|k| fail(OciErrorKind::Request(k)))?;
        expect(&resp, 201, "the manifest PUT").map_err(fail)?;
        Ok(Pushed {
            manifest_digest: Sha256::of(&manifest),
            weights,
        })
    }

    /// Makes blob `d` be in the repository: there already, mounted, or
    /// uploaded.
    fn push_blob(
        &self,
        r: &Reference,
        d: &Sha256,
        size: u64,
        content: Content<'_>,
        mount_from: Option<&str>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<BlobPushed, OciErrorKind> {
        let http = self.http();
        let none = || Ok(ureq::SendBody::none());
        let head = http
            .request("HEAD", &r.blob_url(d), &[], &none)
            .map_err(OciErrorKind::Request)?;
        if head.status == 200 {
            return Ok(BlobPushed::Existed);
        }
        let base = format!("https://{}/v2/{}/blobs/uploads/", r.registry, r.repo);
        let start = match mount_from {
            Some(from) => format!("{base}?mount={}&from={from}", d.to_blob_ref()),
            None => base,
        };
        let zero = [("Content-Length", "0".to_string())];
        let resp = http
            .request("POST", &start, &zero, &none)
            .map_err(OciErrorKind::Request)?;
        if mount_from.is_some() && resp.status == 201 {
            return Ok(BlobPushed::Mounted);
        }
        expect(&resp, 202, "starting an upload")?;
        let mut at = next_location(&resp, &start)?;
        let mut sent = 0u64;
        while sent < size {
            let len = CHUNK.min(size - sent);
            let resp = self.patch(&at, &content, sent, len)?;
            expect(&resp, 202, "an upload chunk")?;
            at = next_location(&resp, &at)?;
            sent += len;
            progress(sent, size);
        }
        let sep = if at.contains('?') { '&' } else { '?' };
        let done = format!("{at}{sep}digest={}", d.to_blob_ref());
        let resp = http
            .request("PUT", &done, &zero, &none)
            .map_err(OciErrorKind::Request)?;
        expect(&resp, 201, "finishing the upload")?;
        Ok(BlobPushed::Uploaded(size))
    }

    /// `PATCH` of bytes `[start, start + len)` of `content` to `url`.
    fn patch(
        &self,
        url: &str,
        content: &Content<'_>,
        start: u64,
        len: u64,
    ) -> Result<Fetched, OciErrorKind> {
        let headers = [
            ("Content-Type", "application/octet-stream".to_string()),
            ("Content-Length", len.to_string()),
            ("Content-Range", format!("{start}-{}", start + len - 1)),
        ];
        let body = || -> std::io::Result<ureq::SendBody<'static>> {
            Ok(match content {
                Content::File(p) => {
                    let mut f = File::open(p)?;
                    f.seek(SeekFrom::Start(start))?;
                    ureq::SendBody::from_owned_reader(f.take(len))
                }
                Content::Bytes(b) => {
                    let piece = b[start as usize..(start + len) as usize].to_vec();
                    ureq::SendBody::from_owned_reader(std::io::Cursor::new(piece))
                }
            })
        };
        self.http()
            .request("PATCH", url, &headers, &body)
            .map_err(OciErrorKind::Request)
    }
}

fn expect(resp: &Fetched, code: u16, what: &'static str) -> Result<(), OciErrorKind> {
    if resp.status == code {
        return Ok(());
    }
    Err(OciErrorKind::Refused {
        what,
        code: resp.status,
    })
}

/// Where an upload goes on: the answer's `Location`, resolved.
fn next_location(resp: &Fetched, base: &str) -> Result<String, OciErrorKind> {
    let loc = resp.header("location").ok_or(OciErrorKind::Refused {
        what: "an upload (no Location)",
        code: resp.status,
    })?;
    resolve_location(base, loc).map_err(OciErrorKind::Request)
}

/// The ModelPack config: the model's name and facts, and its one layer.
fn modelpack_config(m: &Manifest) -> Vec<u8> {
    let mut config = serde_json::json!({ "format": m.format });
    if let Some(f) = &m.gguf {
        if let Some(a) = &f.architecture {
            config["architecture"] = a.clone().into();
        }
        if let Some(p) = f.parameters {
            config["paramSize"] = p.to_string().into();
        }
        if let Some(q) = &f.file_type {
            config["quantization"] = q.clone().into();
        }
    }
    let v = serde_json::json!({
        "descriptor": { "name": m.name.as_str(), "createdAt": m.produced_at },
        "config": config,
        "modelfs": { "type": "layers", "diffIds": [m.blob.to_blob_ref()] },
    });
    serde_json::to_vec(&v).expect("a JSON value serialises")
}

/// The OCI image manifest of a ModelPack artifact with one weight layer.
fn modelpack_manifest(m: &Manifest, config: &Sha256, config_size: u64) -> Vec<u8> {
    let v = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": MODELPACK_ARTIFACT,
        "config": { "mediaType": MODELPACK_CONFIG, "digest": config.to_blob_ref(), "size": config_size },
        "layers": [{
            "mediaType": MODELPACK_WEIGHT_RAW,
            "digest": m.blob.to_blob_ref(),
            "size": m.size_bytes,
            "annotations": { TITLE: m.file_name() },
        }],
    });
    serde_json::to_vec(&v).expect("a JSON value serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::manifest::{Parsed, parse, weight_layer};
    use crate::store::{ModelName, Source};

    #[test]
    fn a_pushed_manifest_is_one_that_add_pins_back_to_the_same_blob() {
        let blob = Sha256::of(b"GGUF...");
        let m = Manifest::new(
            ModelName::parse("tiny").unwrap(),
            "gguf",
            blob,
            7,
            Source::default(),
        );
        let config = modelpack_config(&m);
        let body = modelpack_manifest(&m, &Sha256::of(&config), config.len() as u64);
        let Parsed::Image(layers) = parse(&body, None).unwrap() else {
            panic!("an image manifest")
        };
        let l = weight_layer(&layers).unwrap();
        assert_eq!((l.digest, l.size), (blob, 7));
        assert_eq!(l.title.as_deref(), Some("tiny.gguf"));
        let c: serde_json::Value = serde_json::from_slice(&config).unwrap();
        assert_eq!(c["modelfs"]["diffIds"][0], blob.to_blob_ref());
        assert_eq!(c["config"]["format"], "gguf");
    }
}
