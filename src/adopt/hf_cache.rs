//! The Hugging Face Hub cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`), as `huggingface_hub` writes it:
//!
//! ```text
//! models--<org>--<repo>/
//!   blobs/<sha256 of an LFS file | git sha1 of a small one>
//!   refs/main                          the commit `main` resolved to (also refs/pr/1, …)
//!   snapshots/<commit>/<path>          a symlink to ../../blobs/<name>
//! ```
//!
//! Every `*.gguf` of a snapshot is proposed, named after its file stem, with
//! `source` = `huggingface.co`, the repository, the snapshot's commit and
//! the file's path in it, so the model can be fetched from the Hub again.
//! A GGUF is stored with Git LFS, so its blob is named after its SHA-256:
//! that name is the claim the bytes are checked against. When several
//! snapshots hold the same path, the one a ref (`main` first) points to is
//! taken, else the newest; the others are passed over and reported.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{AdoptError, Candidate, Walk, check_folder, env_path, gguf_files, stem_name};
use crate::digest::Sha256;
use crate::store::Source;

const TOOL: &str = "Hugging Face cache";
const REPO_PREFIX: &str = "models--";

/// `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn default_root() -> Option<PathBuf> {
    env_path("HF_HUB_CACHE")
        .or_else(|| env_path("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| env_path("HOME").map(|h| h.join(".cache/huggingface/hub")))
}

/// Lists the GGUFs of the cache at `root`, of the repositories `repos`
/// (`org/repo`; empty is all).
pub fn walk(root: &Path, repos: &[String]) -> Result<Walk, AdoptError> {
    check_folder(TOOL, root)?;
    let all = cached_repos(root).map_err(|source| AdoptError::Folder {
        tool: TOOL,
        path: root.to_path_buf(),
        source,
    })?;
    let mut chosen = Vec::new();
    if repos.is_empty() {
        chosen = all;
    } else {
        for want in repos {
            match all.iter().find(|(id, _)| id.eq_ignore_ascii_case(want)) {
                Some(found) => chosen.push(found.clone()),
                None => {
                    return Err(AdoptError::NotFound {
                        tool: TOOL,
                        wanted: want.clone(),
                        path: root.to_path_buf(),
                        hint: None,
                    });
                }
            }
        }
    }
    let mut walk = Walk::default();
    for (id, dir) in chosen {
        walk_repo(&id, &dir, &mut walk);
    }
    Ok(walk)
}

/// Every `models--…` folder: its repository id and path, sorted.
fn cached_repos(root: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(root)?.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(REPO_PREFIX)) else {
            continue;
        };
        if e.file_type().is_ok_and(|t| t.is_dir()) && !rest.is_empty() {
            // The Hub forbids `--` in names: the cache's separator is unambiguous.
            out.push((rest.replace("--", "/"), e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// A snapshot: its commit, the refs that point at it, its folder's mtime.
struct Snapshot {
    commit: String,
    refs: Vec<String>,
    mtime: SystemTime,
}

impl Snapshot {
    /// Which to take of several holding a path: `main`'s, another ref's,
    /// the newest.
    fn rank(&self) -> (bool, bool, SystemTime) {
        (
            self.refs.iter().any(|r| r == "main"),
            !self.refs.is_empty(),
            self.mtime,
        )
    }
}

fn walk_repo(id: &str, dir: &Path, walk: &mut Walk) {
    let refs = read_refs(&dir.join("refs"));
    let Ok(entries) = fs::read_dir(dir.join("snapshots")) else {
        walk.pass(id, "it has no snapshots folder");
        return;
    };
    let blobs = fs::canonicalize(dir.join("blobs")).ok();
    // path in the repository -> the snapshots that hold it
    let mut by_path: BTreeMap<PathBuf, Vec<Snapshot>> = BTreeMap::new();
    for e in entries.flatten() {
        let Some(commit) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let mtime = e
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let snap_refs: Vec<String> = refs
            .iter()
            .filter(|(_, c)| *c == commit)
            .map(|(r, _)| r.clone())
            .collect();
        for rel in gguf_files(&e.path()).unwrap_or_default() {
            by_path.entry(rel).or_default().push(Snapshot {
                commit: commit.clone(),
                refs: snap_refs.clone(),
                mtime,
            });
        }
    }
    for (rel, mut snaps) in by_path {
        snaps.sort_by_key(|s| std::cmp::Reverse(s.rank()));
        let best = &snaps[0];
        let path = dir.join("snapshots").join(&best.commit).join(&rel);
        let filename = rel.to_string_lossy().into_owned();
        for other in &snaps[1..] {
            walk.pass(
                format!("{id}/{filename}@{}", short(&other.commit)),
                format!(
                    "an older snapshot; the one at {} is imported",
                    short(&best.commit)
                ),
            );
        }
        walk.candidates.push(Candidate {
            claimed: claimed_digest(&path, blobs.as_deref()),
            claimed_size: None,
            name: stem_name(&rel),
            source: Source {
                registry: "huggingface.co".into(),
                repo: id.to_string(),
                revision: best.commit.clone(),
                filename: filename.clone(),
                url: None,
            },
            label: format!("{id}/{filename}@{}", short(&best.commit)),
            path,
        });
    }
}

/// The first 7 characters of a commit, as git shows it.
fn short(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

/// `refs/<name>` files (also `refs/pr/<n>`): (ref name, commit).
fn read_refs(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut read = |d: &Path, prefix: &str| {
        for e in fs::read_dir(d).into_iter().flatten().flatten() {
            if !e.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let (Some(name), Ok(text)) = (
                e.file_name().to_str().map(str::to_string),
                fs::read_to_string(e.path()),
            ) else {
                continue;
            };
            out.push((format!("{prefix}{name}"), text.trim().to_string()));
        }
    };
    read(dir, "");
    read(&dir.join("pr"), "pr/");
    out
}

/// The SHA-256 a snapshot file's blob is named after, when it is a
/// symlink into the repository's `blobs/` with a 64-hex name.
fn claimed_digest(path: &Path, blobs: Option<&Path>) -> Option<Sha256> {
    let meta = fs::symlink_metadata(path).ok()?;
    if !meta.file_type().is_symlink() {
        return None;
    }
    let target = fs::canonicalize(path).ok()?;
    if target.parent()? != blobs? {
        return None;
    }
    Sha256::from_hex(target.file_name()?.to_str()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const OLD: &str = "1111111111111111111111111111111111111111";
    const NEW: &str = "2222222222222222222222222222222222222222";

    /// A blob in `repo`'s `blobs/`, linked from `snapshots/<commit>/<rel>`.
    fn put(repo: &Path, commit: &str, rel: &str, bytes: &[u8]) {
        let blob = repo.join("blobs").join(Sha256::of(bytes).to_hex());
        fs::create_dir_all(blob.parent().unwrap()).unwrap();
        fs::write(&blob, bytes).unwrap();
        let link = repo.join("snapshots").join(commit).join(rel);
        fs::create_dir_all(link.parent().unwrap()).unwrap();
        let up = "../".repeat(rel.matches('/').count() + 2);
        symlink(format!("{up}blobs/{}", Sha256::of(bytes).to_hex()), link).unwrap();
    }

    #[test]
    fn the_snapshot_main_points_to_is_taken_with_its_commit_and_blob_digest() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("models--org--Model-GGUF");
        put(&repo, OLD, "m-q4.gguf", b"GGUF old");
        put(&repo, NEW, "m-q4.gguf", b"GGUF new");
        put(&repo, NEW, "split/m-00001-of-00002.gguf", b"GGUF 1");
        put(&repo, NEW, "split/m-00002-of-00002.gguf", b"GGUF 2");
        put(&repo, NEW, "README.md", b"# hi");
        fs::create_dir_all(repo.join("refs")).unwrap();
        fs::write(repo.join("refs/main"), NEW).unwrap();
        fs::create_dir_all(dir.path().join("datasets--x--y")).unwrap();

        let w = walk(dir.path(), &[]).unwrap();
        let names: Vec<_> = w.candidates.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["m-q4", "m-00001-of-00002", "m-00002-of-00002"]);
        let c = &w.candidates[0];
        assert_eq!(c.claimed, Some(Sha256::of(b"GGUF new")));
        assert_eq!(c.source.registry, "huggingface.co");
        assert_eq!(c.source.repo, "org/Model-GGUF");
        assert_eq!(c.source.revision, NEW);
        assert_eq!(c.source.filename, "m-q4.gguf");
        assert_eq!(
            w.candidates[1].source.filename,
            "split/m-00001-of-00002.gguf"
        );
        assert_eq!(w.passed.len(), 1);
        assert!(w.passed[0].what.contains("@1111111"), "{:?}", w.passed);

        let e = walk(dir.path(), &["org/other".into()]).unwrap_err();
        assert!(e.to_string().contains("no such model"), "{e}");
        assert_eq!(
            walk(dir.path(), &["ORG/model-gguf".into()])
                .unwrap()
                .candidates
                .len(),
            3
        );
    }

    #[test]
    fn a_plain_file_in_a_snapshot_claims_no_digest() {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("models--gpt2/snapshots").join(OLD);
        fs::create_dir_all(&snap).unwrap();
        fs::write(snap.join("gpt2.gguf"), b"GGUF").unwrap();
        let w = walk(dir.path(), &[]).unwrap();
        assert_eq!(w.candidates.len(), 1);
        assert_eq!(w.candidates[0].claimed, None);
        assert_eq!(w.candidates[0].source.repo, "gpt2");
    }
}
