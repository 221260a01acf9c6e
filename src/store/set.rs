//! Split-model sets: the names llama.cpp gives the shards of one model.
//!
//! llama.cpp loads a split model from shard 1 and finds the others by
//! rebuilding their names next to it (`llama_split_path`):
//! `<prefix>-%05d-of-%05d.gguf`, with the 1-based shard number and the shard
//! count, both printed `%05d` (at least five digits, zero-padded). A store
//! set is the N manifests `<name>-00001-of-0000N` … `<name>-0000N-of-0000N`
//! (DESIGN §8); the mount adds `.gguf`, which gives llama.cpp's names.
//!
//! Parsing accepts exactly what formatting produces ([`ShardName::parse`]
//! round-trips through [`ShardName::format`]): shard 0, a shard past the
//! count, a count of 0 or more than llama.cpp's `u16`, `+`, spaces, or extra
//! leading zeros are not shard names, so a name that parses is one
//! llama.cpp itself would rebuild. This module works on plain strings and
//! knows nothing of files.

use std::collections::BTreeMap;
use std::fmt;

use super::ModelState;

/// Most shards a set can have: llama.cpp stores `split.count` as a `u16`.
pub const MAX_SHARDS: u32 = u16::MAX as u32;

/// A name of the form `<prefix>-%05d-of-%05d`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardName {
    /// What llama.cpp calls the split prefix (non-empty).
    pub prefix: String,
    /// This shard's number, from 1.
    pub index: u32,
    /// How many shards the set has.
    pub count: u32,
}

impl ShardName {
    /// `<prefix>-%05d-of-%05d`, as `llama_split_path` prints it (without
    /// `.gguf`).
    pub fn format(prefix: &str, index: u32, count: u32) -> String {
        format!("{prefix}-{index:05}-of-{count:05}")
    }

    /// The shard a name is, or `None` when it is not one (see the module
    /// doc for what is refused).
    pub fn parse(name: &str) -> Option<ShardName> {
        let (rest, count) = name.rsplit_once("-of-")?;
        let (prefix, index) = rest.rsplit_once('-')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if prefix.is_empty() || !digits(index) || !digits(count) {
            return None;
        }
        let (index, count) = (index.parse::<u32>().ok()?, count.parse::<u32>().ok()?);
        if index == 0 || count == 0 || index > count || count > MAX_SHARDS {
            return None;
        }
        let shard = ShardName {
            prefix: prefix.to_string(),
            index,
            count,
        };
        (shard.to_string() == name).then_some(shard)
    }

    /// The name of shard `index` of this shard's set.
    pub fn sibling(&self, index: u32) -> String {
        Self::format(&self.prefix, index, self.count)
    }

    /// The names of every shard of this shard's set, in order.
    pub fn all_names(&self) -> impl Iterator<Item = String> + '_ {
        (1..=self.count).map(|k| self.sibling(k))
    }

    /// What `ls` shows for the set: `<prefix>-*-of-%05d`.
    pub fn set_pattern(&self) -> String {
        pattern(&self.prefix, self.count)
    }
}

impl fmt::Display for ShardName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&Self::format(&self.prefix, self.index, self.count))
    }
}

/// One set found among names: its prefix and count, and which shard
/// numbers are there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetGroup {
    pub prefix: String,
    pub count: u32,
    /// The shard numbers present, ascending.
    pub present: Vec<u32>,
}

impl SetGroup {
    /// The shard numbers of the set that no name gave.
    pub fn missing(&self) -> Vec<u32> {
        (1..=self.count).filter(|k| !self.has(*k)).collect()
    }

    pub fn is_complete(&self) -> bool {
        self.present.len() == self.count as usize
    }

    fn has(&self, k: u32) -> bool {
        self.present.binary_search(&k).is_ok()
    }

    /// What `ls` shows for the set.
    pub fn pattern(&self) -> String {
        pattern(&self.prefix, self.count)
    }

    /// The names of every shard of the set, in order.
    pub fn names(&self) -> Vec<String> {
        (1..=self.count)
            .map(|k| ShardName::format(&self.prefix, k, self.count))
            .collect()
    }
}

fn pattern(prefix: &str, count: u32) -> String {
    format!("{prefix}-*-of-{count:05}")
}

/// One item of a listing: a name that is no shard, or a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grouped {
    Single(String),
    Set(SetGroup),
}

/// Groups `names` into sets by `(prefix, count)`: shards of one prefix
/// with different counts are different sets (neither is complete), and a
/// set with shards missing is still a set. Names that are not shards come
/// out as [`Grouped::Single`]. Output is sorted by name (a set by its
/// shard 1's name), duplicates counted once.
pub fn group<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<Grouped> {
    let mut singles = Vec::new();
    let mut sets: BTreeMap<(String, u32), Vec<u32>> = BTreeMap::new();
    for name in names {
        match ShardName::parse(name) {
            Some(s) => sets.entry((s.prefix, s.count)).or_default().push(s.index),
            None => singles.push(name.to_string()),
        }
    }
    singles.sort();
    singles.dedup();
    let mut out: Vec<(String, Grouped)> = singles
        .into_iter()
        .map(|n| (n.clone(), Grouped::Single(n)))
        .collect();
    for ((prefix, count), mut present) in sets {
        present.sort_unstable();
        present.dedup();
        let key = ShardName::format(&prefix, 1, count);
        out.push((
            key,
            Grouped::Set(SetGroup {
                prefix,
                count,
                present,
            }),
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.into_iter().map(|(_, g)| g).collect()
}

/// The manifest names a name given to `pull`, `rm` or `verify` means:
/// the model of that name if there is one; else, for `PREFIX-*-of-%05d`
/// (what `ls` shows), every present shard of that set; else every shard
/// whose prefix is the name, of any count (in name order). Empty when
/// none matches.
pub fn members<'a>(given: &str, names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let names: Vec<&str> = names.into_iter().collect();
    if names.contains(&given) {
        return vec![given.to_string()];
    }
    let wanted = |s: &ShardName| match given.rsplit_once("-*-of-") {
        Some((prefix, count)) => s.prefix == prefix && format!("{:05}", s.count) == count,
        None => s.prefix == given,
    };
    let mut out: Vec<String> = names
        .iter()
        .filter(|n| ShardName::parse(n).is_some_and(|s| wanted(&s)))
        .map(|n| n.to_string())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// One state for a set, from its shards': a failure or a download running
/// shows first; present when all are; pending when none has bytes on disk;
/// else partial.
pub fn set_state(states: impl IntoIterator<Item = ModelState>) -> ModelState {
    let states: Vec<ModelState> = states.into_iter().collect();
    let any = |s| states.contains(&s);
    let all = |s| states.iter().all(|x| *x == s);
    if any(ModelState::Failed) {
        ModelState::Failed
    } else if any(ModelState::Fetching) {
        ModelState::Fetching
    } else if all(ModelState::Present) {
        ModelState::Present
    } else if all(ModelState::Pending) {
        ModelState::Pending
    } else {
        ModelState::Partial
    }
}

/// The state a word names (see [`ModelState::word`]).
pub fn state_of_word(word: &str) -> Option<ModelState> {
    [
        ModelState::Present,
        ModelState::Fetching,
        ModelState::Partial,
        ModelState::Pending,
        ModelState::Failed,
    ]
    .into_iter()
    .find(|s| s.word() == word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_means_its_model_else_every_shard_of_its_set() {
        let names = [
            "m-00001-of-00002",
            "m-00002-of-00002",
            "m-00001-of-00003",
            "x",
            "x-00001-of-00002",
        ];
        assert_eq!(members("x", names), ["x"]);
        assert_eq!(
            members("m", names),
            ["m-00001-of-00002", "m-00001-of-00003", "m-00002-of-00002"]
        );
        assert_eq!(
            members("m-*-of-00002", names),
            ["m-00001-of-00002", "m-00002-of-00002"]
        );
        assert_eq!(members("m-00001-of-00003", names), ["m-00001-of-00003"]);
        assert!(members("m-*-of-2", names).is_empty());
        assert!(members("nothing", names).is_empty());
    }

    #[test]
    fn a_sets_state_is_its_busiest_shards() {
        use ModelState::*;
        assert_eq!(set_state([Present, Present]), Present);
        assert_eq!(set_state([Pending, Pending]), Pending);
        assert_eq!(set_state([Present, Pending]), Partial);
        assert_eq!(set_state([Present, Fetching, Pending]), Fetching);
        assert_eq!(set_state([Fetching, Failed]), Failed);
        assert_eq!(state_of_word("partial"), Some(Partial));
        assert_eq!(state_of_word("nonsense"), None);
    }

    #[test]
    fn shard_names_are_printed_as_llama_split_path_prints_them() {
        assert_eq!(ShardName::format("m", 1, 3), "m-00001-of-00003");
        assert_eq!(
            ShardName::format("a-b.Q4", 12, 65535),
            "a-b.Q4-00012-of-65535"
        );
        let s = ShardName::parse("qwen-00002-of-00004").unwrap();
        assert_eq!((s.prefix.as_str(), s.index, s.count), ("qwen", 2, 4));
        assert_eq!(
            s.all_names().collect::<Vec<_>>(),
            [
                "qwen-00001-of-00004",
                "qwen-00002-of-00004",
                "qwen-00003-of-00004",
                "qwen-00004-of-00004"
            ]
        );
        assert_eq!(s.set_pattern(), "qwen-*-of-00004");
    }

    #[test]
    fn a_prefix_that_looks_like_a_shard_keeps_its_own_dashes() {
        let s = ShardName::parse("x-00001-of-00002-00001-of-00003").unwrap();
        assert_eq!(
            (s.prefix.as_str(), s.index, s.count),
            ("x-00001-of-00002", 1, 3)
        );
    }

    #[test]
    fn names_llama_cpp_would_never_rebuild_are_not_shards() {
        for bad in [
            "m-00000-of-00003",  // shard 0
            "m-00004-of-00003",  // past the count
            "m-00000-of-00000",  // empty set
            "m-00001-of-99999",  // more than a u16 count
            "m-0001-of-00003",   // too few digits
            "m-000001-of-00003", // extra leading zero
            "m-00001-of-3",
            "m-+0001-of-00003",
            "m- 0001-of-00003",
            "-00001-of-00003", // empty prefix
            "m-00001-of-00003.gguf",
            "m-00001-0f-00003",
            "m00001-of-00003",
            "m-00001-of-",
            "m",
            "",
            "m-99999999999999999999-of-00003",
        ] {
            assert_eq!(ShardName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_are_grouped_into_sets_by_prefix_and_count() {
        let g = group([
            "b",
            "m-00002-of-00003",
            "m-00001-of-00003",
            "m-00003-of-00003",
            "m-00001-of-00003",
            "a",
        ]);
        assert_eq!(
            g,
            [
                Grouped::Single("a".into()),
                Grouped::Single("b".into()),
                Grouped::Set(SetGroup {
                    prefix: "m".into(),
                    count: 3,
                    present: vec![1, 2, 3]
                }),
            ]
        );
        let Grouped::Set(s) = &g[2] else { panic!() };
        assert!(s.is_complete());
        assert!(s.missing().is_empty());
        assert_eq!(s.pattern(), "m-*-of-00003");
    }

    #[test]
    fn a_count_mismatch_makes_two_incomplete_sets_and_gaps_are_reported() {
        let g = group(["m-00001-of-00003", "m-00002-of-00004", "m-00000-of-00003"]);
        assert_eq!(g.len(), 3);
        assert_eq!(g[0], Grouped::Single("m-00000-of-00003".into()));
        let (Grouped::Set(three), Grouped::Set(four)) = (&g[1], &g[2]) else {
            panic!("{g:?}")
        };
        assert_eq!((three.count, three.missing()), (3, vec![2, 3]));
        assert_eq!((four.count, four.missing()), (4, vec![1, 3, 4]));
        assert!(!three.is_complete() && !four.is_complete());
    }
}
