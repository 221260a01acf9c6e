//! Eviction: deleting the least recently opened verified blobs that are
//! neither pinned nor open anywhere, to keep the store within its limits
//! (`DESIGN.md` §9; the limits are in [`super::settings`]).
//!
//! Two halves:
//! - [`order`] and [`plan`] are pure functions over plain [`Entry`]
//!   records (blob, size, last open, pinned): unpinned blobs, least
//!   recently opened first; among equals the larger first (fewer deletions
//!   for the same room), then by digest (a stable order). They know
//!   nothing of locks or the disk, so they are tested on 10,000 records.
//! - [`Store::evict`] walks that order and deletes, under the same rules
//!   as `gc`: only blobs a manifest names (an unnamed blob is gc's
//!   business), only while it holds the blob's open lock exclusively
//!   ([`Store::try_evict_lock`], taken with `LOCK_NB`: a blob open in any
//!   process or mount is skipped, never waited for) and the producer lock
//!   (`locks/<name>.lock`, also without waiting) of every manifest that
//!   names it (a producer holding one is publishing or checking it). A
//!   partial download is never a candidate: only verified blobs are.
//!   What is deleted is the blob and its verification record; its
//!   manifests stay, and the model shows as pending until its next open
//!   fetches it again.
//!
//! A blob shared by several manifests is one entry: its size counts once,
//! and it is pinned if any of its manifests is.
//!
//! [`Usage`] and [`Limits`] say how many bytes must go before `incoming`
//! more bytes fit: the cache's own limit (`cache_max`, blob and partial
//! bytes) and the free-space floor (`min_free`) of its filesystem.

use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::MetadataExt;

use super::settings::Settings;
use super::{ModelName, Store, StoreError};
use crate::digest::Sha256;
use crate::text::human_bytes;

/// One verified blob as eviction sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub blob: Sha256,
    pub size: u64,
    /// Unix milliseconds of its last open (or of its placement, never opened).
    pub last_open: u64,
    pub pinned: bool,
}

/// The indices of the entries that may be evicted, in the order they go.
pub fn order(entries: &[Entry]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..entries.len()).filter(|&i| !entries[i].pinned).collect();
    idx.sort_unstable_by(|&a, &b| {
        let (a, b) = (&entries[a], &entries[b]);
        a.last_open
            .cmp(&b.last_open)
            .then(b.size.cmp(&a.size))
            .then(a.blob.cmp(&b.blob))
    });
    idx
}

/// The first entries of [`order`] whose sizes add up to at least `need`
/// bytes (all of them if they do not).
pub fn plan(entries: &[Entry], need: u64) -> Vec<usize> {
    let mut freed = 0u64;
    order(entries)
        .into_iter()
        .take_while(|&i| {
            let more = freed < need;
            freed = freed.saturating_add(entries[i].size);
            more
        })
        .collect()
}

/// The store's cache as eviction sees it.
#[derive(Debug, Default)]
pub struct CacheView {
    /// Every verified blob a manifest names.
    pub entries: Vec<Entry>,
    /// The names of each entry's manifests.
    pub names: HashMap<Sha256, Vec<ModelName>>,
    /// Bytes of every verified blob (named or not) and partial download.
    pub usage: Usage,
}

/// What the store's blobs take now.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub blob_bytes: u64,
    pub partial_bytes: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.blob_bytes + self.partial_bytes
    }
}

/// The limits in effect, in bytes, and the filesystem's free bytes now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub cache_max: Option<u64>,
    pub min_free: u64,
    pub available: u64,
}

impl Limits {
    /// The limits of `settings` on the filesystem of the store.
    pub fn of(store: &Store, settings: &Settings) -> Self {
        let (available, total) = crate::sys::fs_space(store.root()).unwrap_or((u64::MAX, 0));
        Self {
            cache_max: settings
                .cache_max
                .filter(|a| !a.is_zero())
                .map(|a| a.bytes_of(total)),
            min_free: settings.min_free_or_default().bytes_of(total),
            available,
        }
    }

    /// Bytes that must be freed before `incoming` more bytes fit, with the
    /// store using `usage` bytes now.
    pub fn need(&self, usage: u64, incoming: u64) -> u64 {
        let over_max = self
            .cache_max
            .map_or(0, |m| usage.saturating_add(incoming).saturating_sub(m));
        let over_floor = self
            .min_free
            .saturating_add(incoming)
            .saturating_sub(self.available);
        over_max.max(over_floor)
    }

    /// Whether nothing is limited (no cache_max, no floor): eviction can
    /// be skipped without a look at the store.
    pub fn unlimited(settings: &Settings) -> bool {
        settings.cache_max.is_none_or(|a| a.is_zero()) && settings.min_free_or_default().is_zero()
    }
}

/// Why a blob was kept or what happened to it, told before it is deleted.
#[derive(Debug, Clone)]
pub enum EvictEvent {
    /// Deleted (or, in a dry run, would be).
    Evicted {
        blob: Sha256,
        size: u64,
        names: Vec<ModelName>,
    },
    /// Open in some process: kept.
    Open {
        blob: Sha256,
        size: u64,
        names: Vec<ModelName>,
    },
    /// A producer holds one of its manifests' locks: kept.
    Busy { blob: Sha256, names: Vec<ModelName> },
}

/// What an eviction did.
#[derive(Debug, Default, Clone)]
pub struct Evicted {
    pub freed: u64,
    /// Bytes still missing after everything evictable was tried.
    pub short: u64,
    /// The blobs kept because they are open, with their names and sizes.
    pub open: Vec<(Vec<ModelName>, u64)>,
    /// The pinned blobs, with their names and sizes.
    pub pinned: Vec<(Vec<ModelName>, u64)>,
}

/// A download that does not fit even after evicting everything evictable;
/// says what holds the space. Its errno is `ENOSPC`.
#[derive(Debug, Clone)]
pub struct NoRoom {
    pub incoming: u64,
    pub short: u64,
    pub limits: Limits,
    pub usage: u64,
    pub open: Vec<(Vec<ModelName>, u64)>,
    pub pinned: Vec<(Vec<ModelName>, u64)>,
}

impl fmt::Display for NoRoom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not enough disk space in the model cache: {} more needed, {} missing after \
             evicting every blob that is neither pinned nor open (the store holds {}",
            human_bytes(self.incoming),
            human_bytes(self.short),
            human_bytes(self.usage)
        )?;
        if let Some(m) = self.limits.cache_max {
            write!(f, " of cache_max {}", human_bytes(m))?;
        }
        write!(
            f,
            "; {} free on its filesystem, min_free {})",
            human_bytes(self.limits.available),
            human_bytes(self.limits.min_free)
        )?;
        for (what, list) in [("pinned", &self.pinned), ("open", &self.open)] {
            if list.is_empty() {
                continue;
            }
            let total: u64 = list.iter().map(|(_, s)| s).sum();
            let named: Vec<String> = list
                .iter()
                .take(5)
                .map(|(n, s)| format!("{} {}", join(n), human_bytes(*s)))
                .collect();
            let more = list.len().saturating_sub(5);
            write!(f, "; {what}: {} ({})", human_bytes(total), named.join(", "))?;
            if more > 0 {
                write!(f, " and {more} more")?;
            }
        }
        Ok(())
    }
}

fn join(names: &[ModelName]) -> String {
    names
        .iter()
        .map(ModelName::as_str)
        .collect::<Vec<_>>()
        .join("+")
}

/// The names of the manifests of each blob, from a caller that has them
/// parsed already (a mount's directory); `None`: read `manifests/`.
pub type Names<'a> = Option<&'a dyn Fn() -> HashMap<Sha256, Vec<ModelName>>>;

/// One verified blob file as [`Store::walk_blobs`] saw it.
struct Walked {
    blob: Sha256,
    size: u64,
    /// Its ctime in unix milliseconds: when it was placed.
    placed: u64,
}

impl Store {
    /// The cache as eviction sees it: every named verified blob with its
    /// size, last open (the store's record, or `recent` of this process
    /// when later, or when it was placed) and pin, and what all blobs
    /// take. `names` gives the manifests' names (else they are read).
    pub fn cache_view(
        &self,
        recent: &HashMap<Sha256, u64>,
        names: Names<'_>,
    ) -> Result<CacheView, StoreError> {
        let (blobs, usage) = self.walk_blobs();
        let pins = self.read_pins().unwrap_or_else(|e| {
            // Unreadable pins must not make everything evictable.
            log::warn!("{e}; evicting nothing until it is fixed");
            self.all_names()
        });
        let names = match names {
            Some(f) => f(),
            None => {
                let mut by_blob: HashMap<Sha256, Vec<ModelName>> = HashMap::new();
                for m in self.list_manifests()?.into_iter().flatten() {
                    by_blob.entry(m.blob).or_default().push(m.name);
                }
                by_blob
            }
        };
        let times = self.read_last_open();
        let entries = blobs
            .into_iter()
            .filter_map(|w| {
                let of = names.get(&w.blob)?;
                let last_open = match (times.get(&w.blob), recent.get(&w.blob)) {
                    (Some(&a), Some(&b)) => a.max(b),
                    (Some(&t), None) | (None, Some(&t)) => t,
                    (None, None) => w.placed,
                };
                Some(Entry {
                    blob: w.blob,
                    size: w.size,
                    last_open,
                    pinned: of.iter().any(|n| pins.contains(n)),
                })
            })
            .collect();
        Ok(CacheView {
            entries,
            names,
            usage,
        })
    }

    /// What the store's blobs and partial downloads take now (a walk of
    /// the blob folders; no manifest is read).
    pub fn usage(&self) -> Result<Usage, StoreError> {
        Ok(self.walk_blobs().1)
    }

    /// Every verified blob file and what blobs and modelfs's partials
    /// take: one `readdir` per folder and one `lstat` per file. Faster
    /// than `list_blobs` (which opens each folder without following a
    /// link, as a deletion must) because it only counts: a symlink planted
    /// on the way can at worst make it count a file outside, and the
    /// deletion of a blob it lists walks safely again
    /// ([`Store::remove_blob`]).
    fn walk_blobs(&self) -> (Vec<Walked>, Usage) {
        let (mut blobs, mut usage) = (Vec::new(), Usage::default());
        let is_dir = |e: &std::fs::DirEntry| e.file_type().is_ok_and(|t| t.is_dir());
        let Ok(fanouts) = std::fs::read_dir(self.blobs_dir()) else {
            return (blobs, usage);
        };
        for fan in fanouts.flatten().filter(is_dir) {
            let Ok(inner) = std::fs::read_dir(fan.path()) else {
                continue;
            };
            for e in inner.flatten().filter(is_dir) {
                let fname = e.file_name();
                let fname = fname.to_string_lossy();
                let (hex, file) = match fname.strip_prefix(".partial-") {
                    Some(h) => (h, super::layout::PARTIAL_FILE),
                    None => (&fname[..], "data"),
                };
                let Ok(blob) = Sha256::from_hex(hex) else {
                    continue;
                };
                let Ok(m) = std::fs::symlink_metadata(e.path().join(file)) else {
                    continue;
                };
                if !m.is_file() {
                    continue;
                }
                if file == "data" {
                    usage.blob_bytes += m.len();
                    let placed =
                        (m.ctime().max(0) as u64) * 1000 + m.ctime_nsec().max(0) as u64 / 1_000_000;
                    blobs.push(Walked {
                        blob,
                        size: m.len(),
                        placed,
                    });
                } else {
                    usage.partial_bytes += m.len();
                }
            }
        }
        (blobs, usage)
    }

    /// Every manifest's name (what is pinned when the pin list is unreadable).
    fn all_names(&self) -> super::pins::Pins {
        self.list_manifests()
            .map(|l| l.into_iter().flatten().map(|m| m.name).collect())
            .unwrap_or_default()
    }

    /// Deletes blobs of `view` in [`order`] until `need` bytes are freed,
    /// skipping those open anywhere or locked by a producer (see the module
    /// doc); telling `report` of each first. `dry_run` deletes nothing (it
    /// still skips the open ones).
    pub fn evict(
        &self,
        view: &CacheView,
        need: u64,
        dry_run: bool,
        report: &mut dyn FnMut(EvictEvent),
    ) -> Result<Evicted, StoreError> {
        let mut out = Evicted::default();
        let names_of = |d: &Sha256| view.names.get(d).cloned().unwrap_or_default();
        for e in view.entries.iter().filter(|e| e.pinned) {
            out.pinned.push((names_of(&e.blob), e.size));
        }
        for i in order(&view.entries) {
            if out.freed >= need {
                break;
            }
            let e = view.entries[i];
            let names = names_of(&e.blob);
            let Some(_open) = self.try_evict_lock(&e.blob)? else {
                report(EvictEvent::Open {
                    blob: e.blob,
                    size: e.size,
                    names: names.clone(),
                });
                out.open.push((names, e.size));
                continue;
            };
            let mut producers = Vec::new();
            for n in &names {
                match self.try_lock_model(n)? {
                    Some(g) => producers.push(g),
                    None => break,
                }
            }
            // Gone meanwhile (another evictor, gc, a user): nothing to free.
            let still = self.stat_blob(&e.blob).map(|m| m.len());
            if producers.len() < names.len() || still.is_none() {
                if still.is_some() {
                    report(EvictEvent::Busy {
                        blob: e.blob,
                        names,
                    });
                }
                continue;
            }
            report(EvictEvent::Evicted {
                blob: e.blob,
                size: e.size,
                names,
            });
            if !dry_run {
                self.remove_blob(&e.blob)?;
            }
            out.freed += e.size;
        }
        out.short = need.saturating_sub(out.freed);
        Ok(out)
    }

    /// Frees room for `incoming` more bytes under `settings` (see
    /// [`Limits::need`]), evicting as needed. `reserved` bytes are counted
    /// as used besides what is on disk (other downloads of the caller,
    /// still to be written); `recent` are last-open times not yet in the
    /// store. [`NoRoom`] when it cannot fit; then nothing is deleted
    /// (unless an open closed between the look and the deletions).
    pub fn make_room(
        &self,
        settings: &Settings,
        incoming: u64,
        reserved: u64,
        recent: &HashMap<Sha256, u64>,
        names: Names<'_>,
        report: &mut dyn FnMut(EvictEvent),
    ) -> Result<Result<Evicted, NoRoom>, StoreError> {
        if Limits::unlimited(settings) {
            return Ok(Ok(Evicted::default()));
        }
        let limits = Limits::of(self, settings);
        // The blob folders only, first: the manifests, pins and times are
        // read when something must go (a mount asks every few seconds,
        // and a store may have 100,000 manifests).
        // Without cache_max only the free space counts: no walk at all.
        let usage = match limits.cache_max {
            Some(_) => self.usage()?.total() + reserved,
            None => 0,
        };
        let need = limits.need(usage, incoming);
        if need == 0 {
            return Ok(Ok(Evicted::default()));
        }
        let view = self.cache_view(recent, names)?;
        let usage = view.usage.total() + reserved;
        let need = limits.need(usage, incoming);
        // A dry run first: evicting what cannot make room anyway would
        // only cost the next opens a download.
        let probe = self.evict(&view, need, true, &mut |_| {})?;
        let done = if probe.short == 0 {
            self.evict(&view, need, false, report)?
        } else {
            probe
        };
        if done.short == 0 {
            return Ok(Ok(done));
        }
        let done = Evicted { freed: 0, ..done };
        Ok(Err(NoRoom {
            incoming,
            short: done.short,
            limits,
            usage: usage - done.freed,
            open: done.open,
            pinned: done.pinned,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Manifest, Source};
    use std::time::Instant;

    fn entry(i: u64, size: u64, last_open: u64, pinned: bool) -> Entry {
        Entry {
            blob: Sha256::of(&i.to_le_bytes()),
            size,
            last_open,
            pinned,
        }
    }

    #[test]
    fn the_least_recently_opened_unpinned_blobs_go_first_and_only_as_many_as_needed() {
        let e = [
            entry(0, 10, 300, false),
            entry(1, 10, 100, true),
            entry(2, 10, 200, false),
            entry(3, 30, 200, false),
            entry(4, 10, 50, false),
        ];
        assert_eq!(
            order(&e),
            [4, 3, 2, 0],
            "pinned never; equal times: larger first"
        );
        assert_eq!(plan(&e, 0), Vec::<usize>::new());
        assert_eq!(plan(&e, 10), [4]);
        assert_eq!(plan(&e, 11), [4, 3]);
        assert_eq!(plan(&e, 1000), [4, 3, 2, 0], "all that may go");
    }

    #[test]
    fn choosing_among_10000_blobs_takes_well_under_100_ms() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let e: Vec<Entry> = (0..10_000)
            .map(|i| entry(i, next() % (8 << 30), next() % 1_000_000, next() % 10 == 0))
            .collect();
        let started = Instant::now();
        let victims = plan(&e, 1 << 40);
        let took = started.elapsed();
        assert!(took.as_millis() < 100, "{took:?}");
        let times: Vec<u64> = victims.iter().map(|&i| e[i].last_open).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "oldest first");
        assert!(victims.iter().all(|&i| !e[i].pinned));
    }

    /// The whole choice on a real store: walking 10,000 blob folders,
    /// parsing their manifests, pins and times, and ordering them.
    #[test]
    fn looking_at_a_store_of_10000_blobs_and_choosing_what_goes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path()).unwrap();
        for i in 0..10_000u32 {
            let bytes = i.to_le_bytes();
            let d = Sha256::of(&bytes);
            let p = s.blob_path(&d);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, bytes).unwrap();
            let name = ModelName::parse(&format!("m{i:05}")).unwrap();
            let m = Manifest::new(name, "gguf", d, 4, Source::default());
            std::fs::write(s.manifest_path(&m.name), m.to_json_bytes()).unwrap();
        }
        let mut took = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            let view = s.cache_view(&HashMap::new(), None).unwrap();
            let victims = plan(&view.entries, 20_000);
            took.push(started.elapsed());
            assert_eq!(victims.len(), 5000);
        }
        took.sort();
        eprintln!(
            "cache_view + plan of 10,000 blobs: {:?} (median of 3)",
            took[1]
        );
        let started = Instant::now();
        s.usage().unwrap();
        eprintln!("usage walk of 10,000 blobs: {:?}", started.elapsed());
        // As a mount asks: the names from its directory, in memory.
        let names = s.cache_view(&HashMap::new(), None).unwrap().names;
        let given = move || names.clone();
        let started = Instant::now();
        let view = s.cache_view(&HashMap::new(), Some(&given)).unwrap();
        plan(&view.entries, 20_000);
        eprintln!("the same with the names given: {:?}", started.elapsed());
    }

    #[test]
    fn limits_count_the_cache_maximum_and_the_free_space_floor() {
        let l = Limits {
            cache_max: Some(100),
            min_free: 10,
            available: 1000,
        };
        assert_eq!(l.need(50, 40), 0);
        assert_eq!(l.need(80, 40), 20);
        let floor = Limits {
            cache_max: None,
            min_free: 10,
            available: 30,
        };
        assert_eq!(floor.need(0, 25), 5);
    }

    fn add(s: &Store, name: &str, bytes: &[u8]) -> Sha256 {
        let d = s.publish_bytes(bytes);
        let m = Manifest::new(
            ModelName::parse(name).unwrap(),
            "gguf",
            d,
            bytes.len() as u64,
            Source::default(),
        );
        s.write_manifest(&m).unwrap();
        d
    }

    #[test]
    fn eviction_skips_what_is_pinned_open_or_locked_and_keeps_the_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path()).unwrap();
        let (old, pinned, open, busy, new) = (
            add(&s, "old", b"o"),
            add(&s, "pinned", b"pp"),
            add(&s, "open", b"ooo"),
            add(&s, "busy", b"bbbb"),
            add(&s, "new", b"nnnnn"),
        );
        let times = HashMap::from([(old, 1), (pinned, 2), (open, 3), (busy, 4), (new, 5)]);
        s.change_pins(&[ModelName::parse("pinned").unwrap()], true)
            .unwrap();
        let locks = std::sync::Arc::new(super::super::openlock::OpenLocks::default());
        let _held = locks.hold(&s, &open).unwrap().unwrap();
        let _producer = s
            .try_lock_model(&ModelName::parse("busy").unwrap())
            .unwrap();
        let view = s.cache_view(&times, None).unwrap();
        assert_eq!(view.usage.total(), 15);
        let mut events = Vec::new();
        let done = s.evict(&view, 100, false, &mut |e| events.push(e)).unwrap();
        assert_eq!(done.freed, 1 + 5);
        assert_eq!(done.short, 94);
        assert_eq!(done.open.len(), 1);
        assert_eq!(done.pinned.len(), 1);
        for (d, there) in [
            (old, false),
            (pinned, true),
            (open, true),
            (busy, true),
            (new, false),
        ] {
            assert_eq!(s.stat_blob(&d).is_some(), there, "{d}");
        }
        assert_eq!(s.list_manifests().unwrap().len(), 5, "manifests stay");
        assert!(matches!(events[1], EvictEvent::Open { .. }), "{events:?}");
        assert!(matches!(events[2], EvictEvent::Busy { .. }), "{events:?}");
    }

    #[test]
    fn a_download_that_cannot_fit_says_what_holds_the_space() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path()).unwrap();
        add(&s, "keep", &[1; 100]);
        s.change_pins(&[ModelName::parse("keep").unwrap()], true)
            .unwrap();
        let mut settings = Settings::default();
        settings.set("cache_max", "150").unwrap();
        settings.set("min_free", "0").unwrap();
        let fits = s
            .make_room(&settings, 50, 0, &HashMap::new(), None, &mut |_| {})
            .unwrap();
        assert!(fits.is_ok());
        let no = s
            .make_room(&settings, 80, 0, &HashMap::new(), None, &mut |_| {})
            .unwrap()
            .unwrap_err();
        assert_eq!(no.short, 30);
        let text = no.to_string();
        assert!(text.contains("pinned: 100 B (keep 100 B)"), "{text}");
        assert!(text.contains("30 B missing"), "{text}");
    }
}
