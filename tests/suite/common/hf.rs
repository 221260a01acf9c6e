//! A Hugging Face Hub stand-in on an [`Origin`]: the endpoint to give as
//! `HF_ENDPOINT`, manifests pinned from the Hub (a `huggingface.co` source
//! without `source.url`, resolved through the endpoint), and files served
//! the way the Hub announces LFS files. Tests keep the resolve paths
//! (`org/repo/resolve/<revision>/<filename>`) spelled out, since they
//! assert on what the hub was asked at them.

use modelfs::digest::Sha256;
use modelfs::store::{Manifest, Source};

use super::{Origin, TestStore};

/// The repository every Hub test model lives in.
pub const REPO: &str = "org/repo";

/// The `HF_ENDPOINT` (or `HttpConfig::hf_endpoint`) that points at `hub`.
pub fn endpoint(hub: &Origin) -> String {
    format!("https://127.0.0.1:{}", hub.port())
}

/// Writes a pending manifest for `bytes` pinned from the Hub: [`REPO`] at
/// revision `main`, file `filename`, no `source.url`; so it is fetched from
/// `<endpoint>/org/repo/resolve/main/<filename>`.
pub fn write_manifest(store: &TestStore, name: &str, filename: &str, bytes: &[u8]) -> Manifest {
    let source = Source {
        registry: "huggingface.co".into(),
        repo: REPO.into(),
        revision: "main".into(),
        filename: filename.into(),
        url: None,
    };
    store.write_manifest_with_source(name, bytes, source)
}

/// Serves `bytes` at `resolve` with the headers by which the Hub announces
/// an LFS file's digest and size (`X-Linked-Etag`, `X-Linked-Size`), which
/// `modelfs add --hf` pins.
pub fn serve_lfs_file(hub: &Origin, resolve: &str, bytes: &[u8]) {
    hub.set_extra_headers(
        resolve,
        vec![
            (
                "X-Linked-Etag".into(),
                format!("\"{}\"", Sha256::of(bytes).to_hex()),
            ),
            ("X-Linked-Size".into(), bytes.len().to_string()),
        ],
    );
    hub.put(resolve, bytes.to_vec());
}
