//! Any folder of GGUFs (`modelfs import --from DIR`): every `*.gguf` in it
//! and its subfolders, named after its file stem, with `source` =
//! `local`, the folder's absolute path and the file's path in it.

use std::path::Path;

use super::{AdoptError, Candidate, Walk, check_folder, gguf_files, stem_name};
use crate::store::Source;

const TOOL: &str = "model";

/// Lists the GGUFs under `root`.
pub fn walk(root: &Path) -> Result<Walk, AdoptError> {
    check_folder(TOOL, root)?;
    let folder_err = |source| AdoptError::Folder {
        tool: TOOL,
        path: root.to_path_buf(),
        source,
    };
    let abs = std::fs::canonicalize(root).map_err(folder_err)?;
    let files = gguf_files(&abs).map_err(folder_err)?;
    let mut walk = Walk::default();
    for rel in files {
        let path = abs.join(&rel);
        walk.candidates.push(Candidate {
            claimed: None,
            claimed_size: None,
            name: stem_name(&rel),
            source: Source {
                registry: "local".into(),
                repo: abs.to_string_lossy().into_owned(),
                revision: String::new(),
                filename: rel.to_string_lossy().into_owned(),
                url: None,
            },
            label: path.display().to_string(),
            path,
        });
    }
    Ok(walk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn every_gguf_in_the_tree_is_proposed_with_its_folder_and_path() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/a b.gguf"), b"GGUF").unwrap();
        fs::write(dir.path().join("c.bin"), b"x").unwrap();
        let w = walk(dir.path()).unwrap();
        assert_eq!(w.candidates.len(), 1);
        let c = &w.candidates[0];
        assert_eq!(c.name.as_str(), "a-b");
        assert_eq!(c.source.registry, "local");
        assert_eq!(c.source.filename, "sub/a b.gguf");
        let abs = fs::canonicalize(dir.path()).unwrap();
        assert_eq!(c.source.repo, abs.to_string_lossy());
    }
}
