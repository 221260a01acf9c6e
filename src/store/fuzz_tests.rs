//! Property tests for the two parsers that see untrusted input: model names
//! and manifest JSON. A seeded generator (no extra crate: a few lines of
//! xorshift) produces thousands of cases per run, mixing valid inputs,
//! near-misses and garbage; every case checks invariants rather than a
//! fixed answer, so a new bug anywhere in the parsers shows up.

use super::manifest::{MAX_MANIFEST_BYTES, Manifest};
use super::name::{MAX_NAME_BYTES, ModelName};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

const NAME_ALPHABET: &[&str] = &[
    "a", "Z", "0", "9", ".", "-", "_", "/", "\\", "..", " ", "\0", "\n", "é", "%2e", "CON", "nul",
    "COM1", ":", "*",
];

fn random_name(r: &mut Rng) -> String {
    let len = r.below(12);
    let mut s: String = (0..len).map(|_| *r.pick(NAME_ALPHABET)).collect();
    if r.below(20) == 0 {
        s = "x".repeat(MAX_NAME_BYTES - 2 + r.below(5));
    }
    s
}

#[test]
fn every_accepted_name_is_a_single_safe_path_component() {
    let mut r = Rng(0x5eed_0001);
    let mut accepted = 0;
    for _ in 0..20_000 {
        let s = random_name(&mut r);
        let Ok(n) = ModelName::parse(&s) else {
            continue;
        };
        accepted += 1;
        let n = n.as_str();
        assert!(!n.is_empty() && n.len() <= MAX_NAME_BYTES, "{n:?}");
        assert!(
            n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "{n:?}"
        );
        assert!(!n.starts_with('.') && !n.contains(".."), "{n:?}");
        let p = std::path::Path::new("/store/manifests").join(format!("{n}.json"));
        assert_eq!(
            p.parent(),
            Some(std::path::Path::new("/store/manifests")),
            "{n:?} escapes its folder"
        );
    }
    assert!(
        accepted > 1_000,
        "the generator should also produce valid names ({accepted})"
    );
}

fn random_manifest(r: &mut Rng) -> (String, Vec<u8>) {
    let name = if r.below(4) == 0 {
        random_name(r)
    } else {
        "m".to_string()
    };
    let stem = if r.below(10) == 0 {
        "other".to_string()
    } else {
        name.clone()
    };
    let hex: String = (0..64)
        .map(|_| *r.pick(&['0', 'a', 'f', '9', 'A', 'g']))
        .collect();
    let blob = match r.below(10) {
        0 => format!("sha256:{}", &hex[..r.below(64)]),
        1 => format!("md5:{hex}"),
        2 => hex.clone(),
        _ => format!("sha256:{}", hex.to_lowercase().replace(['g', 'A'], "b")),
    };
    let values = [
        "1".to_string(),
        "-1".into(),
        "1e99".into(),
        "\"7\"".into(),
        "null".into(),
        "[]".into(),
        "{}".into(),
        "18446744073709551615".into(),
        "18446744073709551616".into(),
        format!("\"{}\"", "y".repeat(r.below(6000))),
    ];
    let mut fields = vec![
        format!(
            "\"schema_version\": {}",
            if r.below(8) == 0 {
                r.pick(&values).clone()
            } else {
                "1".into()
            }
        ),
        format!("\"name\": {}", serde_json::to_string(&name).unwrap()),
        format!(
            "\"format\": {}",
            if r.below(4) == 0 {
                r.pick(&["\"\"", "\"../x\"", "7", "\"GGUF\""])
            } else {
                r.pick(&["\"gguf\"", "\"safetensors\""])
            }
        ),
        format!("\"blob\": \"{blob}\""),
        format!(
            "\"size_bytes\": {}",
            if r.below(5) == 0 {
                r.pick(&values).clone()
            } else {
                "42".into()
            }
        ),
        format!(
            "\"license\": {}",
            r.pick(&["null", "\"mit\"", "\"apache-2.0\"", "[]"])
        ),
        format!(
            "\"source\": {}",
            r.pick(&[
                "{}",
                "{\"url\": \"https://h/x\"}",
                "{\"url\": \"http://h/x\"}",
                "{\"url\": 5}",
                "[]",
                "{\"registry\": \"huggingface.co\", \"repo\": \"a/b\", \"filename\": \"f\"}",
            ])
        ),
        format!(
            "\"produced_by\": {}",
            if r.below(5) == 0 {
                r.pick(&values).clone()
            } else {
                "\"t/1\"".into()
            }
        ),
        "\"produced_at\": \"2026-01-01T00:00:00Z\"".to_string(),
        format!("\"x_unknown\": {}", {
            // Balanced nesting, sometimes past serde_json's depth limit.
            let depth = r.below(160);
            "[".repeat(depth) + &"]".repeat(depth)
        }),
    ];
    let drop = r.below(fields.len() * 3);
    if drop < fields.len() {
        fields.remove(drop);
    }
    let mut text = format!("{{{}}}", fields.join(", "));
    match r.below(12) {
        0 => text.truncate(r.below(text.len() + 1)),
        1 => text = text.replace(':', ""),
        2 => text.push_str(&" ".repeat(MAX_MANIFEST_BYTES)),
        _ => {}
    }
    let mut bytes = text.into_bytes();
    if r.below(15) == 0 && !bytes.is_empty() {
        let i = r.below(bytes.len());
        bytes[i] = r.next() as u8;
    }
    (stem, bytes)
}

#[test]
fn the_manifest_parser_never_panics_and_what_it_accepts_is_well_formed() {
    let mut r = Rng(0x5eed_0002);
    let mut accepted = 0;
    for _ in 0..10_000 {
        let (stem, bytes) = random_manifest(&mut r);
        let Ok(m) = Manifest::parse(&bytes, &stem) else {
            continue;
        };
        accepted += 1;
        assert_eq!(m.name.as_str(), stem);
        assert!(bytes.len() <= MAX_MANIFEST_BYTES);
        assert!(
            m.format
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b))
        );
        if let Some(u) = m.fetch_url() {
            assert!(u.starts_with("https://"), "{u}");
        }
        // What we accept, we write back in a form we accept again, and a
        // second rewrite changes nothing (known fields and unknown ones).
        let written = m.to_json_bytes();
        let again = Manifest::parse(&written, &stem).expect("a rewrite parses");
        assert_eq!(
            (&again.name, again.blob, again.size_bytes, &again.source),
            (&m.name, m.blob, m.size_bytes, &m.source)
        );
        assert_eq!(again.to_json_bytes(), written);
    }
    assert!(
        accepted > 100,
        "the generator should also produce valid manifests ({accepted})"
    );
}
