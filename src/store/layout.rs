//! Where everything lives under the root (convention schema v1; the
//! module doc of [`crate::store`] draws the tree). Paths only: nothing here
//! touches the disk.

use std::path::{Path, PathBuf};

use super::{ModelName, Store};
use crate::digest::Sha256;

/// The name of modelfs's partial file in `.partial-<hex>/`.
pub(super) const PARTIAL_FILE: &str = "modelfs.tmp";
/// Next to the partial file: how long its hashed prefix is, while a
/// parallel download writes ranges beyond it (see `partial`).
pub(super) const PREFIX_RECORD: &str = "modelfs.prefix";

impl Store {
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn manifests_dir(&self) -> PathBuf {
        self.root.join("manifests")
    }

    pub fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    pub fn quarantine_dir(&self) -> PathBuf {
        self.root.join("locks/quarantine")
    }

    /// `blobs/sha256`
    pub(super) fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    pub(super) fn fanout_dir(&self, d: &Sha256) -> PathBuf {
        self.blobs_dir().join(&d.to_hex()[..2])
    }

    /// `blobs/sha256/<aa>/<hex>/data`
    pub fn blob_path(&self, d: &Sha256) -> PathBuf {
        self.fanout_dir(d).join(d.to_hex()).join("data")
    }

    /// modelfs's partial file: `blobs/sha256/<aa>/.partial-<hex>/modelfs.tmp`
    /// (see the module doc for why it is not the convention's `data.tmp`).
    pub fn partial_path(&self, d: &Sha256) -> PathBuf {
        self.fanout_dir(d)
            .join(format!(".partial-{}", d.to_hex()))
            .join(PARTIAL_FILE)
    }

    /// The partial's prefix record: `.partial-<hex>/modelfs.prefix`.
    pub fn prefix_record_path(&self, d: &Sha256) -> PathBuf {
        self.partial_path(d).with_file_name(PREFIX_RECORD)
    }

    pub fn manifest_path(&self, name: &ModelName) -> PathBuf {
        self.manifests_dir().join(format!("{name}.json"))
    }

    pub fn lock_path(&self, name: &ModelName) -> PathBuf {
        self.locks_dir().join(format!("{name}.lock"))
    }

    pub(super) fn partial_dir_name(d: &Sha256) -> String {
        format!(".partial-{}", d.to_hex())
    }
}
