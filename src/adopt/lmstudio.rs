//! LM Studio's models folder (`~/.lmstudio/models`, or the older
//! `~/.cache/lm-studio/models`): `<publisher>/<model>/<file>.gguf`, files
//! downloaded once and not changed after. Each GGUF is proposed, named
//! after its file stem, with `source` = `lmstudio`, `<publisher>/<model>`
//! and the file's name (LM Studio keeps no digest or commit to check
//! against or fetch from).

use std::path::{Component, Path, PathBuf};

use super::{AdoptError, Candidate, Walk, check_folder, env_path, gguf_files, stem_name};
use crate::store::Source;

const TOOL: &str = "LM Studio";

/// `~/.lmstudio/models` if it exists, else `~/.cache/lm-studio/models` if
/// that does, else the first.
pub fn default_root() -> Option<PathBuf> {
    let home = env_path("HOME")?;
    let new = home.join(".lmstudio/models");
    let old = home.join(".cache/lm-studio/models");
    Some(if !new.is_dir() && old.is_dir() {
        old
    } else {
        new
    })
}

/// Lists the GGUFs of LM Studio's tree at `root`.
pub fn walk(root: &Path) -> Result<Walk, AdoptError> {
    check_folder(TOOL, root)?;
    let files = gguf_files(root).map_err(|source| AdoptError::Folder {
        tool: TOOL,
        path: root.to_path_buf(),
        source,
    })?;
    let mut walk = Walk::default();
    for rel in files {
        let parts: Vec<String> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        let [publisher, model, .., file] = &parts[..] else {
            walk.pass(
                rel.display().to_string(),
                "not in LM Studio's <publisher>/<model>/ folders",
            );
            continue;
        };
        walk.candidates.push(Candidate {
            path: root.join(&rel),
            claimed: None,
            claimed_size: None,
            name: stem_name(&rel),
            source: Source {
                registry: "lmstudio".into(),
                repo: format!("{publisher}/{model}"),
                revision: String::new(),
                filename: file.clone(),
                url: None,
            },
            label: rel.display().to_string(),
        });
    }
    Ok(walk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn each_gguf_under_publisher_and_model_is_proposed_by_its_stem() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("lmstudio-community/Qwen-GGUF");
        fs::create_dir_all(&m).unwrap();
        fs::write(m.join("Qwen-Q4_K_M.gguf"), b"GGUF").unwrap();
        fs::write(m.join("mmproj-Qwen-f16.gguf"), b"GGUF").unwrap();
        fs::write(dir.path().join("stray.gguf"), b"GGUF").unwrap();
        let w = walk(dir.path()).unwrap();
        let names: Vec<_> = w.candidates.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["Qwen-Q4_K_M", "mmproj-Qwen-f16"]);
        let s = &w.candidates[0].source;
        assert_eq!(
            (s.registry.as_str(), s.repo.as_str()),
            ("lmstudio", "lmstudio-community/Qwen-GGUF")
        );
        assert_eq!(s.filename, "Qwen-Q4_K_M.gguf");
        assert_eq!(w.passed.len(), 1);
        assert!(walk(&dir.path().join("nope")).is_err());
    }
}
