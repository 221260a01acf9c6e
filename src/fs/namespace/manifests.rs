//! The manifests of `manifests/`, listed (by the store, see
//! [`crate::store::listing`]) and parsed again only when they changed;
//! see the parent module's doc.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use crate::store::listing::{IgnoredFile, ManifestFiles};
use crate::store::watch::Stamp;
use crate::store::{Manifest, ModelName, Store};

/// What a look found different from the one before.
#[derive(Default)]
pub(super) struct Delta {
    /// Manifests, by stem, that appeared or changed, or whose blob file
    /// did: their entries are computed again.
    pub stems: HashSet<String>,
    /// File names that their manifest no longer shows (removed, no longer
    /// parsing, or another format).
    pub gone: Vec<String>,
}

/// The parsed manifests, and what is needed to tell when to look again.
#[derive(Default)]
pub(super) struct ManifestWatch {
    /// `manifests/` when last listed.
    dir: Option<Stamp>,
    /// Manifest files by stem.
    parsed: HashMap<String, Parsed>,
    /// Ignored files of `manifests/`, with the stamp they were logged at.
    ignored: HashMap<String, Stamp>,
    /// Why `manifests/` could not be listed at the last look, if it could
    /// not: logged when it starts, changes and ends, not on every pass.
    unlistable: Option<String>,
    /// Whether the last look listed `manifests/`, and how many manifests it
    /// parsed (logs and tests).
    listed: bool,
    parsed_now: usize,
}

struct Parsed {
    /// The file when it was parsed.
    stamp: Stamp,
    /// `None`: did not parse (logged when its stamp moved).
    manifest: Option<Arc<Manifest>>,
}

impl ManifestWatch {
    /// Lists `manifests/` again if its stamp moved (or with `full`) and
    /// parses the manifests whose stamps moved or had not settled. Returns
    /// the manifests that appeared, went or changed.
    pub fn look(&mut self, store: &Store, full: bool) -> Delta {
        let mut delta = Delta::default();
        // Before any stat; see `Stamp`.
        let now = SystemTime::now();
        // Stamped before it is listed, so a change made while we list moves
        // the stamp. `manifests/` itself may be the operator's symlink.
        let stamp = store.manifests_dir_stamp(now);
        let unchanged =
            !full && matches!((&self.dir, &stamp), (Some(a), Some(b)) if a.unchanged_at(b));
        self.dir = stamp;
        self.listed = !unchanged;
        self.parsed_now = 0;
        if unchanged {
            return delta;
        }
        let Some(ManifestFiles { manifests, ignored }) = self.list(store, now) else {
            return delta;
        };
        self.note_ignored(store, ignored);
        let mut parsed = HashMap::with_capacity(manifests.len());
        for (stem, stamp) in manifests {
            let manifest = self.parse_if_moved(store, &stem, &stamp, &mut delta);
            parsed.insert(stem, Parsed { stamp, manifest });
        }
        // What was not listed again is gone.
        delta.gone.extend(
            self.parsed
                .values()
                .filter_map(|p| Some(p.manifest.as_ref()?.file_name())),
        );
        self.parsed = parsed;
        delta
    }

    /// The store's listing of `manifests/`, or `None` when it cannot be
    /// listed: then what we had stays shown, and the next pass lists
    /// again instead of trusting the stamp.
    fn list(&mut self, store: &Store, now: SystemTime) -> Option<ManifestFiles> {
        match store.list_manifest_files(now) {
            Ok(listing) => {
                if self.unlistable.take().is_some() {
                    log::info!("{} can be listed again", store.manifests_dir().display());
                }
                Some(listing)
            }
            Err(e) => {
                // Out of file descriptors, say: logged once per reason.
                let why = e.to_string();
                if self.unlistable.as_ref() != Some(&why) {
                    log::warn!(
                        "cannot list the manifests ({why}); showing the models as they were, \
                         trying again"
                    );
                }
                self.unlistable = Some(why);
                self.dir = None;
                None
            }
        }
    }

    /// Logs each ignored file once per version of it.
    fn note_ignored(&mut self, store: &Store, ignored: Vec<IgnoredFile>) {
        for i in &ignored {
            if !self
                .ignored
                .get(&i.file_name)
                .is_some_and(|s| s.same(&i.stamp))
            {
                log::warn!(
                    "ignoring {}: {}",
                    store.manifests_dir().join(&i.file_name).display(),
                    i.why
                );
            }
        }
        self.ignored = ignored
            .into_iter()
            .map(|i| (i.file_name, i.stamp))
            .collect();
    }

    /// The manifest `stem` as last parsed if its stamp did not move, else
    /// parsed again, with what that changed recorded in `delta`.
    fn parse_if_moved(
        &mut self,
        store: &Store,
        stem: &str,
        stamp: &Stamp,
        delta: &mut Delta,
    ) -> Option<Arc<Manifest>> {
        let before = match self.parsed.remove(stem) {
            Some(before) if before.stamp.unchanged_at(stamp) => return before.manifest,
            before => before,
        };
        // Parsed again on every pass until its stamp settles: log a bad
        // manifest once per version of the file.
        let log = !before.as_ref().is_some_and(|b| b.stamp.same(stamp));
        let new = parse_one(store, stem, log);
        self.parsed_now += 1;
        match (before.and_then(|b| b.manifest), new) {
            // The same Arc keeps its entry as it is.
            (Some(old), Some(new)) if *old == *new => Some(old),
            (old, new) => {
                let new_name = new.as_ref().map(|m| m.file_name());
                if let Some(old) = old.map(|m| m.file_name())
                    && Some(&old) != new_name.as_ref()
                {
                    delta.gone.push(old);
                }
                if new.is_some() {
                    delta.stems.insert(stem.to_string());
                }
                new
            }
        }
    }

    /// Every manifest that parsed, with its file's stem.
    pub fn all(&self) -> impl Iterator<Item = (&String, &Arc<Manifest>)> {
        self.parsed
            .iter()
            .filter_map(|(stem, p)| Some((stem, p.manifest.as_ref()?)))
    }

    /// The manifest of `manifests/<stem>.json`, if it parsed.
    pub fn get(&self, stem: &str) -> Option<&Arc<Manifest>> {
        self.parsed.get(stem)?.manifest.as_ref()
    }

    pub fn listed(&self) -> bool {
        self.listed
    }

    pub fn parsed_now(&self) -> usize {
        self.parsed_now
    }
}

/// Parses one manifest; a failure is logged if `log`.
fn parse_one(store: &Store, stem: &str, log: bool) -> Option<Arc<Manifest>> {
    let name = ModelName::parse(stem).ok()?;
    match store.read_manifest(&name) {
        Ok(Some(m)) => Some(Arc::new(m)),
        Ok(None) => None,
        Err(e) => {
            if log {
                log::warn!("not showing {stem}: {e}");
            }
            None
        }
    }
}
