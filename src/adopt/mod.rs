//! Readers of other tools' model folders: Ollama's store, the Hugging Face
//! cache, LM Studio's tree and any folder of GGUFs. Each walks its tool's
//! layout and lists [`Candidate`]s (the file, the digest its name claims if
//! any, the model name to give it, where it came from); placing them in the
//! store is [`crate::store::Store::adopt_file`]'s job (`store::adopt_place`).
//!
//! These modules only read: they never write, rename or link anything, and
//! never follow a symlinked folder (a loop, or a walk out of the tree). A
//! symlinked *file* is listed (the Hugging Face cache is made of them); the
//! placement resolves it. A digest taken from a file name is a claim, not a
//! proof: every candidate is hashed when it is placed, and one whose bytes
//! disagree with its claim is rejected.
//!
//! Naming (also in `modelfs import --help`): Ollama's `library/MODEL:TAG`
//! becomes `MODEL-TAG`, another namespace `NS-MODEL-TAG`; a GGUF of the
//! Hugging Face cache, LM Studio or a folder is named after its file's stem
//! (so the shards of a split set keep their `-0000k-of-0000N` names, which
//! is what makes them a set, `DESIGN.md` §8). Every name is then
//! [`sanitize_name`]d to the store's rules.

pub mod folder;
pub mod hf_cache;
pub mod lmstudio;
pub mod ollama;

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::digest::Sha256;
use crate::store::name::MAX_NAME_BYTES;
use crate::store::{ModelName, Source};

/// How deep a walk of a folder tree goes; model trees are a few levels.
pub const MAX_DEPTH: usize = 8;

/// One file another tool holds, proposed for import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The file (a symlink to it for the Hugging Face cache).
    pub path: PathBuf,
    /// The digest the tool's own layout gives the file (Ollama's
    /// `sha256-<hex>` blob names, a Hub cache blob named after its LFS
    /// SHA-256); checked against the bytes when placed.
    pub claimed: Option<Sha256>,
    /// The size the tool's manifest gives it (Ollama), checked first.
    pub claimed_size: Option<u64>,
    /// The model name to give it.
    pub name: ModelName,
    /// Where it came from, for the manifest's `source`.
    pub source: Source,
    /// What the user calls it, for the report (`library/llama3.2:3b`, a
    /// path, …).
    pub label: String,
}

/// Something a walk found and does not propose, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passed {
    pub what: String,
    pub why: String,
}

/// What a walk found.
#[derive(Debug, Default)]
pub struct Walk {
    pub candidates: Vec<Candidate>,
    pub passed: Vec<Passed>,
}

impl Walk {
    fn pass(&mut self, what: impl Into<String>, why: impl Into<String>) {
        self.passed.push(Passed {
            what: what.into(),
            why: why.into(),
        });
    }
}

/// Why a walk could not start or was asked for something absent.
#[derive(Debug)]
pub enum AdoptError {
    /// The tool's folder is missing or unreadable.
    Folder {
        tool: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A model or repository asked for by name is not there.
    NotFound {
        tool: &'static str,
        wanted: String,
        path: PathBuf,
        /// What there is instead (`it has the tags 1b, 3b`), if known.
        hint: Option<String>,
    },
    /// A selector on the command line is malformed.
    BadSelector { wanted: String, why: &'static str },
}

impl fmt::Display for AdoptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Folder { tool, path, source } => write!(
                f,
                "cannot read the {tool} folder {}: {source} (say where it is with --path)",
                path.display()
            ),
            Self::NotFound {
                tool,
                wanted,
                path,
                hint,
            } => {
                write!(
                    f,
                    "{wanted}: no such model in the {tool} folder {}",
                    path.display()
                )?;
                match hint {
                    Some(h) => write!(f, " ({h})"),
                    None => f.write_str(" (check the name, or --path)"),
                }
            }
            Self::BadSelector { wanted, why } => write!(f, "{wanted:?}: {why}"),
        }
    }
}

impl std::error::Error for AdoptError {}

/// `raw` made into a valid model name: every byte the store does not allow
/// becomes `-`, `..` becomes `.`, leading dots and dashes go, it is cut to
/// [`MAX_NAME_BYTES`]; a Windows device name gets an `m-` in front; nothing
/// left is `model`.
pub fn sanitize_name(raw: &str) -> ModelName {
    let mut s: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '-'
            }
        })
        .collect();
    while s.contains("..") {
        s = s.replace("..", ".");
    }
    let mut s = s.trim_start_matches(['.', '-']).to_string();
    s.truncate(MAX_NAME_BYTES);
    if s.is_empty() {
        s = "model".into();
    }
    ModelName::parse(&s)
        .or_else(|_| {
            let mut prefixed = format!("m-{s}");
            prefixed.truncate(MAX_NAME_BYTES);
            ModelName::parse(&prefixed)
        })
        .unwrap_or_else(|_| ModelName::parse("model").expect("a valid name"))
}

/// Whether `p` names a GGUF file (by its extension, in any case).
pub fn is_gguf_name(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// The file's stem (its name without `.gguf`) as a model name.
pub fn stem_name(p: &Path) -> ModelName {
    sanitize_name(&p.file_stem().unwrap_or_default().to_string_lossy())
}

/// Every GGUF file under `dir` (regular files and symlinks to files), as
/// paths relative to `dir`, sorted; symlinked folders are not entered, and
/// the walk stops [`MAX_DEPTH`] levels down.
pub fn gguf_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    walk_into(dir, Path::new(""), 0, &mut out)?;
    out.sort();
    Ok(out)
}

fn walk_into(top: &Path, rel: &Path, depth: usize, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for e in fs::read_dir(top.join(rel))? {
        let e = e?;
        let rel = rel.join(e.file_name());
        // `DirEntry::file_type` does not follow a symlink.
        let t = e.file_type()?;
        if t.is_dir() {
            if depth + 1 < MAX_DEPTH {
                // A folder that cannot be read is skipped, not fatal.
                let _ = walk_into(top, &rel, depth + 1, out);
            }
        } else if (t.is_file() || t.is_symlink()) && is_gguf_name(&rel) {
            if t.is_symlink() && !fs::metadata(top.join(&rel)).is_ok_and(|m| m.is_file()) {
                continue; // dangling, or a link to something else
            }
            out.push(rel);
        }
    }
    Ok(())
}

/// The folder `dir`, read, or [`AdoptError::Folder`].
fn check_folder(tool: &'static str, dir: &Path) -> Result<(), AdoptError> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(AdoptError::Folder {
            tool,
            path: dir.to_path_buf(),
            source: io::Error::other("it is not a folder"),
        }),
        Err(source) => Err(AdoptError::Folder {
            tool,
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// `$name` if set and not empty.
fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_valid_for_the_store() {
        let n = |s: &str| sanitize_name(s).to_string();
        assert_eq!(n("llama3.2-3b"), "llama3.2-3b");
        assert_eq!(n("a b/c:d"), "a-b-c-d");
        assert_eq!(n("..hidden"), "hidden");
        assert_eq!(n("x..y"), "x.y");
        assert_eq!(n("NUL"), "m-NUL");
        assert_eq!(n("ïï"), "model");
        assert_eq!(n(&"x".repeat(300)).len(), MAX_NAME_BYTES);
    }

    #[test]
    fn a_walk_lists_ggufs_and_links_to_files_but_not_linked_folders() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("a/b")).unwrap();
        fs::write(d.join("a/b/one.gguf"), b"GGUF").unwrap();
        fs::write(d.join("a/two.GGUF"), b"GGUF").unwrap();
        fs::write(d.join("a/notes.txt"), b"").unwrap();
        std::os::unix::fs::symlink(d.join("a/b/one.gguf"), d.join("link.gguf")).unwrap();
        std::os::unix::fs::symlink(d.join("nowhere"), d.join("dangling.gguf")).unwrap();
        std::os::unix::fs::symlink(d.join("a"), d.join("loop")).unwrap();
        let found = gguf_files(d).unwrap();
        let found: Vec<_> = found.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(found, ["a/b/one.gguf", "a/two.GGUF", "link.gguf"]);
    }
}
