//! `modelfs import`: put a model file you already have into the store.
//!
//! The blob must be a file nobody edits, so by default the store gets its
//! own copy of the bytes: a reflink (`FICLONE`: the filesystem shares the
//! extents copy-on-write, so it takes no time and no space, and an edit of
//! the original never reaches the blob) where the filesystem can, else a
//! plain copy, hashed as it is written, with progress. Both are staged in
//! `blobs/sha256/.import-<pid>-<name>`, then placed under their digest, and
//! the manifest is written last. A symlink is resolved first: the blob is
//! the file it points to.
//!
//! `--link` hard-links the file instead (same filesystem only): no copy, but
//! the blob *is* the original. modelfs records the file's stamps, so an
//! in-place edit or a `cp` over the original is caught at the next open of
//! the model (the file is hashed again and, if its bytes changed,
//! quarantined); a file already open may see the edit.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::digest::{Hasher, Sha256};
use crate::store::manifest::validate_format;
use crate::store::staging::RemoveOnDrop;
use crate::store::{BlobState, Manifest, Source, Store};
use crate::text::human_bytes;

use super::{CliError, Globals, parse_name, progress_view};

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
    /// Hard-link the file into the store instead of copying it (same
    /// filesystem only; no space used). The blob is then your file: an
    /// in-place edit of it is caught before the next open (the blob is
    /// hashed again and quarantined if it changed), but a program that has
    /// the model open already may read the edited bytes.
    #[arg(long)]
    pub link: bool,
}

/// How the bytes reached the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placed {
    Reflink,
    Copy,
    HardLink,
}

impl Placed {
    fn word(self) -> &'static str {
        match self {
            Self::Reflink => "reflink, a copy-on-write copy",
            Self::Copy => "copy",
            Self::HardLink => "hard link",
        }
    }
}

/// Hashes `path`, places it in the store, writes its manifest.
pub fn run(g: &Globals, a: &ImportArgs) -> Result<(), CliError> {
    let name = parse_name(&a.name)?;
    validate_format(&a.format).map_err(|p| CliError::new(format!("--format {p}")))?;
    let store = g.store_for_writing()?;
    let err = |what: &str, e: io::Error| {
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
    let _lock = store
        .lock_model_waiting(&name, &mut || {})
        .map_err(|e| CliError::new(format!("{name}: cannot take the store lock: {e}")))?;
    // Stage into a private temp name, then move under the digest once known.
    let staging = store.import_staging_path(&name);
    // Removed on every way out (dropped before `_lock`): a failed import
    // leaves nothing behind; `gc` removes what a killed one left.
    let _staged = RemoveOnDrop::new(&staging);
    let _ = fs::remove_file(&staging);
    // Progress on stderr, unless -q.
    let label = (!g.quiet).then(|| name.to_string());
    let label = label.as_deref();
    let staged = if a.link {
        link_hashing(&src, &staging, label)
    } else {
        copy_hashing(&src, &staging, label)
    };
    let (digest, placed) = match staged {
        Ok(s) => s,
        Err(e) => {
            let _ = fs::remove_file(&staging);
            return Err(err(
                if a.link {
                    "cannot hard-link"
                } else {
                    "cannot copy"
                },
                e,
            ));
        }
    };
    let placed = if place(&store, a, &name, digest, &staging)? {
        placed.word()
    } else {
        "the blob was in the store already"
    };
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
        placed
    );
    Ok(())
}

/// Moves the staged file under its digest, refusing to repoint an
/// existing name without `--force`; `false` if that blob was there already
/// (the staged file is dropped).
fn place(
    store: &Store,
    a: &ImportArgs,
    name: &crate::store::ModelName,
    digest: Sha256,
    staging: &Path,
) -> Result<bool, CliError> {
    let refuse = match store.read_manifest(name) {
        Ok(Some(old)) if old.blob != digest && !a.force => Some(CliError::new(format!(
            "{name} already pins blob {}; pass --force to repoint it at {}",
            old.blob.short(),
            digest.short()
        ))),
        Ok(_) => None,
        Err(e) => Some(e.into()),
    };
    if let Some(e) = refuse {
        let _ = fs::remove_file(staging);
        return Err(e);
    }
    if let BlobState::Present(_) = store.blob_state(&digest) {
        let _ = fs::remove_file(staging);
        return Ok(false);
    }
    store.adopt_blob(&digest, staging).map_err(|e| {
        let _ = fs::remove_file(staging);
        CliError::new(format!("{name}: cannot place the blob: {e}"))
    })?;
    Ok(true)
}

/// `--link`: hard-links `src` at `dst` and hashes it. Refuses a file whose
/// bytes changed while it was hashed (its size or mtime moved).
fn link_hashing(src: &Path, dst: &Path, label: Option<&str>) -> io::Result<(Sha256, Placed)> {
    fs::hard_link(src, dst).map_err(|e| {
        if e.raw_os_error() == Some(libc::EXDEV) {
            io::Error::new(
                e.kind(),
                "--link needs the file on the store's filesystem; leave out --link to copy it",
            )
        } else {
            e
        }
    })?;
    let file = File::open(dst)?;
    let before = file.metadata()?;
    let digest = hash_with_progress(&file, None, before.len(), label, "hashing")?;
    let after = file.metadata()?;
    if (after.size(), after.mtime(), after.mtime_nsec())
        != (before.size(), before.mtime(), before.mtime_nsec())
    {
        return Err(io::Error::other(
            "the file changed while it was being hashed; import it again once nothing writes it",
        ));
    }
    Ok((digest, Placed::HardLink))
}

/// Creates `dst` as a copy of `src`: a reflink where the filesystem can
/// (then hashed), else a byte copy hashed as it is written.
fn copy_hashing(src: &Path, dst: &Path, label: Option<&str>) -> io::Result<(Sha256, Placed)> {
    let input = File::open(src)?;
    let total = input.metadata()?.len();
    let out = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(dst)?;
    match reflink(&input, &out) {
        Ok(()) => {
            // The clone is ours alone: what is hashed here is what the
            // store keeps, whatever happens to the original.
            let d = hash_with_progress(&out, None, total, label, "hashing the reflinked copy")?;
            return Ok((d, Placed::Reflink));
        }
        Err(e) if reflink_unsupported(&e) => {}
        Err(e) => return Err(e),
    }
    let d = hash_with_progress(&input, Some(&out), total, label, "copying")?;
    Ok((d, Placed::Copy))
}

/// `ioctl(FICLONE)`: makes `out` share the extents of `input`.
fn reflink(input: &File, out: &File) -> io::Result<()> {
    // SAFETY: FICLONE takes the source descriptor as its argument; both
    // descriptors are open for the duration of the call.
    let rc = unsafe { libc::ioctl(out.as_raw_fd(), libc::FICLONE, input.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether a failed `FICLONE` means "this filesystem (pair) cannot clone",
/// so a plain copy is the answer.
fn reflink_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::EXDEV | libc::EINVAL | libc::ENOTTY | libc::ENOSYS)
    )
}

/// Reads `file` from its start to its end, hashing, and writes every byte
/// to `copy_to` if given; shows progress on stderr under `label` if given.
fn hash_with_progress(
    mut file: &File,
    mut copy_to: Option<&File>,
    total: u64,
    label: Option<&str>,
    what: &str,
) -> io::Result<Sha256> {
    let mut shown = label.map(|l| Shown::new(l, what, total));
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        if let Some(out) = copy_to.as_mut() {
            out.write_all(&buf[..n])?;
        }
        done += n as u64;
        if let Some(s) = shown.as_mut() {
            s.at(done);
        }
    }
    if let Some(s) = shown {
        s.finish(done);
    }
    Ok(h.finish())
}

/// Progress of one import on stderr: a bar on a terminal, a line every few
/// seconds otherwise (logs, CI).
struct Shown {
    label: String,
    what: String,
    total: u64,
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_line: Instant,
}

impl Shown {
    const LINE_EVERY: Duration = Duration::from_secs(5);

    fn new(label: &str, what: &str, total: u64) -> Self {
        let bar = super::stderr_is_terminal().then(|| {
            let b = progress_view::new_bar(label, 0, total);
            b.set_message(what.to_string());
            b
        });
        Self {
            label: label.to_string(),
            what: what.to_string(),
            total,
            bar,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    fn at(&mut self, done: u64) {
        match &self.bar {
            Some(b) => b.set_position(done),
            None if self.last_line.elapsed() >= Self::LINE_EVERY => {
                self.last_line = Instant::now();
                eprintln!(
                    "{}: {}: {} / {}",
                    self.label,
                    self.what,
                    human_bytes(done),
                    human_bytes(self.total)
                );
            }
            None => {}
        }
    }

    fn finish(self, done: u64) {
        match self.bar {
            Some(b) => b.finish_and_clear(),
            None => eprintln!(
                "{}: {}: {} done in {:.1} s",
                self.label,
                self.what,
                human_bytes(done),
                self.started.elapsed().as_secs_f64()
            ),
        }
    }
}
