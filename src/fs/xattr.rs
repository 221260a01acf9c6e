//! Extended attributes: each entry's state, readable with
//! `getfattr -d -m user.modelfs /models/x.gguf`.
//!
//! | name | value |
//! |---|---|
//! | `user.modelfs.sha256` | the blob's digest, 64 hex |
//! | `user.modelfs.state` | one word of [`ModelState`]: `present`, `fetching`, `partial`, `pending`, `failed` |
//! | `user.modelfs.progress` | `<done> <total>` bytes |
//! | `user.modelfs.url` | where it is fetched from (query string dropped); absent for an imported model |
//! | `user.modelfs.error` | the last failure; absent when there is none |
//! | `user.modelfs.connections` | connections the running download uses; absent when none runs |
//! | `user.modelfs.source` | where the running fetch takes the bytes from (a mirror or the pinned URL), or where this mount's last fetch got them; absent otherwise |
//! | `user.modelfs.gguf.<fact>` | what the GGUF header says (`architecture`, `parameters`, `file_type`, `context_length`, …), read when the model was added; absent without facts |
//!
//! Values are computed from memory only. URLs are redacted because signed
//! URLs carry credentials in their query.

use crate::coordinator::BlobActivity;
use crate::store::{BlobState, ModelState};
use crate::text::redact_url;

use super::namespace::Entry;

pub const SHA256: &str = "user.modelfs.sha256";
pub const STATE: &str = "user.modelfs.state";
pub const PROGRESS: &str = "user.modelfs.progress";
pub const URL: &str = "user.modelfs.url";
pub const ERROR: &str = "user.modelfs.error";
pub const CONNECTIONS: &str = "user.modelfs.connections";
pub const SOURCE: &str = "user.modelfs.source";
/// Followed by a fact's name, as in the manifest's `gguf` object.
pub const GGUF_PREFIX: &str = "user.modelfs.gguf.";

/// The GGUF fact `key` of an entry, as text.
pub fn gguf_fact(e: &Entry, key: &str) -> Option<String> {
    e.manifest.gguf.as_ref()?.fact(key)
}

/// The xattr names of an entry's GGUF facts.
fn gguf_names(e: &Entry) -> Vec<String> {
    e.manifest.gguf.as_ref().map_or_else(Vec::new, |f| {
        f.names()
            .into_iter()
            .map(|k| format!("{GGUF_PREFIX}{k}"))
            .collect()
    })
}

/// Connections of the download running now, if one is.
fn connections(a: &BlobActivity) -> Option<u16> {
    a.progress
        .filter(|p| a.fetching && p.connections > 0)
        .map(|p| p.connections)
}

/// The state of an entry. Verified bytes that are still being moved into
/// place count as present: an open gets them at once. What this mount
/// does not know itself comes from `disk` (a partial download, or one that
/// another process runs), asked only then.
pub fn state(e: &Entry, a: &BlobActivity, disk: impl FnOnce() -> ModelState) -> ModelState {
    if e.present_size.is_some() || a.verified {
        ModelState::Present
    } else if a.fetching {
        ModelState::Fetching
    } else if a.last_error.is_some() {
        ModelState::Failed
    } else {
        match disk() {
            s @ (ModelState::Partial | ModelState::Fetching) => s,
            _ => ModelState::Pending,
        }
    }
}

/// The value of attribute `name`, or `None` if the entry has none.
pub fn value(
    name: &str,
    e: &Entry,
    a: &BlobActivity,
    url: Option<String>,
    partial: BlobState,
    disk: impl FnOnce() -> ModelState,
) -> Option<String> {
    match name {
        SHA256 => Some(e.manifest.blob.to_hex()),
        STATE => Some(state(e, a, disk).word().to_string()),
        PROGRESS => {
            let total = e.manifest.size_bytes;
            let done = match (e.present_size, a.progress, partial) {
                (Some(n), _, _) => n,
                (None, Some(p), _) => p.done,
                (None, None, BlobState::Partial(n)) => n,
                (None, None, _) => 0,
            };
            Some(format!("{done} {total}"))
        }
        URL => url.map(|u| redact_url(&u)),
        ERROR => a.last_error.clone(),
        CONNECTIONS => connections(a).map(|n| n.to_string()),
        SOURCE => a.source.clone(),
        _ => None,
    }
}

/// The attribute names an entry has now, NUL-separated as listxattr wants.
/// `has_url`: whether the entry has a source to fetch from (an imported
/// model has none, and so no `user.modelfs.url`, not an empty one).
pub fn list(e: &Entry, a: &BlobActivity, has_url: bool) -> Vec<u8> {
    let facts = gguf_names(e);
    let mut names = vec![SHA256, STATE, PROGRESS];
    if has_url {
        names.push(URL);
    }
    if a.last_error.is_some() {
        names.push(ERROR);
    }
    if connections(a).is_some() {
        names.push(CONNECTIONS);
    }
    if a.source.is_some() {
        names.push(SOURCE);
    }
    names.extend(facts.iter().map(String::as_str));
    names
        .iter()
        .flat_map(|n| n.bytes().chain(std::iter::once(0)))
        .collect()
}
