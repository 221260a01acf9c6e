//! `modelfs import`: put a model file you already have into the store.
//!
//! The file is hashed, placed under its digest (a hard link when it is on
//! the store's filesystem, else a copy hashed as it is written), and its
//! manifest is written last. A symlink is resolved first: the blob is the
//! file it points to. With a hard link the blob shares the file's
//! inode: editing the original in place would change the blob, which
//! `modelfs verify` detects.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::PathBuf;

use crate::digest::{Hasher, hash_reader};
use crate::store::manifest::validate_format;
use crate::store::staging::RemoveOnDrop;
use crate::store::{BlobState, Manifest, Source, device_of, lock};

use super::{CliError, Globals, parse_name};

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The model file to import
    pub path: PathBuf,
    /// Model name to give it
    #[arg(long)]
    pub name: String,
    /// File format, also the extension in the mount
    #[arg(long, default_value = "gguf")]
    pub format: String,
    /// Repoint an existing name at this file's blob
    #[arg(long)]
    pub force: bool,
}

/// Hashes `path`, places it in the store, writes its manifest.
pub fn run(g: &Globals, a: &ImportArgs) -> Result<(), CliError> {
    let name = parse_name(&a.name)?;
    validate_format(&a.format).map_err(|p| CliError::new(format!("--format {p}")))?;
    let store = g.store_for_writing()?;
    let err = |what: &str, e: std::io::Error| {
        CliError::new(format!("{name}: {what} {}: {e}", a.path.display()))
    };
    let meta = fs::metadata(&a.path).map_err(|e| err("cannot read", e))?;
    if !meta.is_file() {
        return Err(CliError::new(format!(
            "{name}: {} is not a regular file",
            a.path.display()
        )));
    }
    super::import_check::check_magic(&name, &a.path, &a.format)?;
    // Place the file itself, not a symlink to it (Hugging Face's cache is
    // made of symlinks): link(2) does not follow one, and a blob must be a
    // regular file.
    let src = fs::canonicalize(&a.path).map_err(|e| err("cannot resolve", e))?;
    let _lock = lock::lock_waiting(&store.lock_path(&name), &|| false, &mut || {})
        .map_err(|e| CliError::new(format!("{name}: cannot take the store lock: {e}")))?;
    let same_fs = device_of(&src).ok() == device_of(store.root()).ok();
    // Stage into a private temp name, then move under the digest once known.
    let staging = store.import_staging_path(&name);
    // Removed on every way out (dropped before `_lock`): a failed import
    // leaves nothing behind; `gc` removes what a killed one left.
    let _staged = RemoveOnDrop::new(&staging);
    let _ = fs::remove_file(&staging);
    let digest = if same_fs && fs::hard_link(&src, &staging).is_ok() {
        File::open(&staging)
            .and_then(hash_reader)
            .map_err(|e| err("cannot hash", e))?
            .0
    } else {
        copy_hashing(&src, &staging).map_err(|e| err("cannot copy", e))?
    };
    if let Some(old) = store.read_manifest(&name)?
        && old.blob != digest
        && !a.force
    {
        let _ = fs::remove_file(&staging);
        return Err(CliError::new(format!(
            "{name} already pins blob {}; pass --force to repoint it at {}",
            old.blob.short(),
            digest.short()
        )));
    }
    if let BlobState::Present(_) = store.blob_state(&digest) {
        let _ = fs::remove_file(&staging);
    } else {
        if let Err(e) = store.adopt_blob(&digest, &staging) {
            let _ = fs::remove_file(&staging);
            return Err(CliError::new(format!("{name}: cannot place the blob: {e}")));
        }
    }
    let filename = a
        .path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let manifest = Manifest::new(
        name.clone(),
        &a.format,
        digest,
        meta.len(),
        Source {
            registry: "local".into(),
            filename,
            ..Source::default()
        },
    );
    store.write_manifest(&manifest)?;
    println!(
        "imported {} as {} ({}, {})",
        a.path.display(),
        manifest.file_name(),
        digest.short(),
        if same_fs { "hard link" } else { "copy" }
    );
    Ok(())
}

fn copy_hashing(
    src: &std::path::Path,
    dst: &std::path::Path,
) -> std::io::Result<crate::digest::Sha256> {
    let mut input = File::open(src)?;
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)?;
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    Ok(h.finish())
}
