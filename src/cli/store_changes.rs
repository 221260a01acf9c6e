//! The mount log's line for a change in the store, as a sentence:
//! `2 models added: a.gguf, b.gguf; 1 removed: c.gguf`. At most
//! [`NAMES_SHOWN`] names per kind are listed, so a change of 10,000
//! manifests stays one short line.

use crate::fs::namespace::Changes;

/// How many file names each part of the sentence lists.
pub const NAMES_SHOWN: usize = 5;

/// The sentence for `c` (empty when nothing changed).
pub fn sentence(c: &Changes) -> String {
    let parts = [
        (
            "added",
            c.added.iter().map(String::as_str).collect::<Vec<_>>(),
        ),
        (
            "removed",
            c.removed.iter().map(|(n, _)| n.as_str()).collect(),
        ),
        (
            "repointed at another blob",
            c.repointed.iter().map(|(n, _)| n.as_str()).collect(),
        ),
    ];
    let mut out = Vec::new();
    for (what, names) in parts {
        if names.is_empty() {
            continue;
        }
        // Only the first part says "models": the rest read on from it.
        let noun = match (out.is_empty(), names.len()) {
            (true, 1) => " model",
            (true, _) => " models",
            (false, _) => "",
        };
        out.push(format!("{}{noun} {what}: {}", names.len(), list(&names)));
    }
    out.join("; ")
}

/// Up to [`NAMES_SHOWN`] names, then how many more.
fn list(names: &[&str]) -> String {
    let shown = names[..names.len().min(NAMES_SHOWN)].join(", ");
    match names.len().saturating_sub(NAMES_SHOWN) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize, prefix: &str) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}.gguf")).collect()
    }

    #[test]
    fn changes_read_as_a_sentence() {
        let c = Changes {
            added: names(2, "a"),
            removed: vec![("r.gguf".into(), 7)],
            repointed: vec![],
        };
        assert_eq!(
            sentence(&c),
            "2 models added: a0.gguf, a1.gguf; 1 removed: r.gguf"
        );
        let c = Changes {
            repointed: vec![("p.gguf".into(), 3)],
            ..Changes::default()
        };
        assert_eq!(sentence(&c), "1 model repointed at another blob: p.gguf");
    }

    #[test]
    fn ten_thousand_changes_make_a_short_line() {
        let c = Changes {
            added: names(10_000, "a"),
            removed: names(10_000, "r").into_iter().map(|n| (n, 1)).collect(),
            repointed: names(10_000, "p").into_iter().map(|n| (n, 1)).collect(),
        };
        let s = sentence(&c);
        assert!(s.len() < 400, "{} bytes: {s}", s.len());
        assert!(
            s.starts_with(
                "10000 models added: a0.gguf, a1.gguf, a2.gguf, a3.gguf, a4.gguf and 9995 more; "
            ),
            "{s}"
        );
        assert!(!s.contains('"') && !s.contains('['), "no Debug output: {s}");
    }
}
