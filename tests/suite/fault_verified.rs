//! Issue 10, promise 3, through real mounts and the real origin: verified
//! means verified now (`DESIGN.md` §6).
//!
//! modelfs records the stamps of every blob file it verified
//! (`.modelfs/verified/<hex>`); a blob file whose stamps moved since (a `cp`
//! over a hard-linked import, a byte written in place, a `touch`) is hashed
//! again before an open is answered, in the same mount and in a fresh one.
//! Bytes that changed are quarantined and never served: the model is
//! fetched again from its URL, or the open fails with `EIO` and the reason
//! in `user.modelfs.error`. Bytes that did not change are served and their
//! new stamps recorded. `import` copies by default (a reflink where the
//! filesystem can), so an edit of the original never reaches the blob.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::sys::{getxattr, open_and_read, open_flags};
use crate::common::{
    Fault, MIB, Mount, Origin, TestStore, gguf_bytes, outcome, output_text, wait_until,
};
use modelfs::digest::Sha256;
use modelfs::store::verified::{Record, Recorded};

/// Runs a `modelfs` command on `store`; its exit code and output.
fn cli(store: &TestStore, origin: &Origin, args: &[&str]) -> (i32, String) {
    let out = store
        .cli(origin.ca_pem_path())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), output_text(&out))
}

/// A user's model file next to the store (on its filesystem).
fn user_file(store: &TestStore, name: &str, bytes: &[u8]) -> PathBuf {
    let p = store.root.parent().unwrap().join(name);
    fs::write(&p, bytes).unwrap();
    p
}

/// `modelfs import --link FILE --name NAME`, which must succeed.
fn import_linked(store: &TestStore, origin: &Origin, file: &Path, name: &str) {
    let (code, text) = cli(
        store,
        origin,
        &["import", "--link", file.to_str().unwrap(), "--name", name],
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("hard link"), "{text}");
}

/// `cp other original`, as a user would: the same inode, new bytes.
fn cp_over(other: &[u8], original: &Path) {
    let src = original.with_file_name("other.gguf");
    fs::write(&src, other).unwrap();
    let st = std::process::Command::new("cp")
        .arg(&src)
        .arg(original)
        .status()
        .unwrap();
    assert!(st.success());
}

/// The record modelfs keeps for `bytes`' blob.
fn record_of(store: &TestStore, bytes: &[u8]) -> Recorded {
    store.store().read_record(&Sha256::of(bytes))
}

/// Waits (generously: the fsyncs of publishing share the disk with
/// whatever else runs) until the mount has published `bytes`' blob and
/// recorded its stamps.
fn published_and_recorded(store: &TestStore, bytes: &[u8], mount: &Mount) {
    assert!(
        wait_until(Duration::from_secs(60), || matches!(
            record_of(store, bytes),
            Recorded::Stamps(_)
        )),
        "the blob was published and recorded:\n{}",
        mount.log()
    );
}

/// Opens `path`, timing the open (and read) for the report.
fn timed_read(path: &Path) -> (Result<Vec<u8>, i32>, Duration) {
    let t = Instant::now();
    let r = open_and_read(path);
    (r, t.elapsed())
}

#[test]
fn a_file_copied_over_a_linked_import_is_never_served_and_the_model_is_fetched_again() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = gguf_bytes(4 * MIB, 1);
    let original = user_file(&store, "mine.gguf", &data);
    import_linked(&store, &origin, &original, "m");
    // The same blob, pinned with a URL (as `modelfs add` would).
    origin.put("m.gguf", data.clone());
    store.write_manifest("m", &origin.url("m.gguf"), &data);
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let path = mount.path("m.gguf");
    assert!(open_and_read(&path).unwrap() == data);
    assert_eq!(origin.stats("m.gguf").gets, 0, "an import is not fetched");

    let other = gguf_bytes(data.len(), 2);
    cp_over(&other, &original);
    let (again, took) = timed_read(&path);
    assert!(
        again.as_ref().is_ok_and(|v| *v == data),
        "the next open in the same mount: {}\n{}",
        outcome(&again, &data),
        mount.log()
    );
    eprintln!(
        "cp over a linked import, same mount: re-verify + quarantine + refetch of 4 MiB took {took:?}"
    );
    assert_eq!(origin.stats("m.gguf").gets, 1, "fetched again once");
    let q = store.quarantined();
    assert_eq!(q.len(), 1, "{q:?}");
    assert!(
        fs::read(&q[0]).unwrap() == other,
        "the new bytes are in quarantine"
    );
    assert!(mount.log().contains("changed on disk"), "{}", mount.log());
    // The user's file is theirs: modelfs moved the blob's name, not it.
    assert!(fs::read(&original).unwrap() == other);
    // And later opens keep serving the fetched blob without hashing it.
    assert!(open_and_read(&path).unwrap() == data);
    assert_eq!(origin.stats("m.gguf").gets, 1);
    store.assert_consistent();
}

#[test]
fn a_file_copied_over_a_linked_import_while_unmounted_is_caught_by_a_fresh_mount() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = gguf_bytes(2 * MIB, 3);
    let original = user_file(&store, "mine.gguf", &data);
    import_linked(&store, &origin, &original, "m");
    origin.put("m.gguf", data.clone());
    store.write_manifest("m", &origin.url("m.gguf"), &data);
    {
        let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
        assert!(open_and_read(&mount.path("m.gguf")).unwrap() == data);
    }

    cp_over(&gguf_bytes(data.len(), 4), &original);
    let mount = Mount::start(&store, origin.ca_pem_path(), &["passthrough=off"]);
    let again = open_and_read(&mount.path("m.gguf"));
    assert!(
        again.as_ref().is_ok_and(|v| *v == data),
        "the first open of a fresh mount: {}\n{}",
        outcome(&again, &data),
        mount.log()
    );
    assert_eq!(origin.stats("m.gguf").gets, 1);
    assert_eq!(store.quarantined().len(), 1);
    store.assert_consistent();
}

#[test]
fn a_file_copied_over_a_linked_import_without_a_url_fails_with_eio_and_says_why() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = gguf_bytes(MIB, 5);
    let original = user_file(&store, "mine.gguf", &data);
    import_linked(&store, &origin, &original, "m");
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let path = mount.path("m.gguf");
    assert!(open_and_read(&path).unwrap() == data);

    cp_over(&gguf_bytes(data.len(), 6), &original);
    assert_eq!(open_and_read(&path).unwrap_err(), libc::EIO);
    let why = getxattr(&path, "user.modelfs.error").expect("the reason is kept");
    assert!(
        why.contains("changed on disk") && why.contains("locks/quarantine/"),
        "{why}"
    );
    assert!(why.contains("import"), "it says what to do: {why}");
    assert_eq!(store.quarantined().len(), 1);
    // Never the new bytes, on any later open either.
    for _ in 0..3 {
        assert!(open_and_read(&path).is_err());
    }
    assert_eq!(origin.total_requests(), 0);
    store.assert_consistent();
}

/// A blob fetched by the mount gets one byte written in place.
fn a_byte_written_into_a_published_blob(options: &[&str]) {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = gguf_bytes(2 * MIB, 7);
    let m = store.add_pending("m", &origin, &data);
    let mount = Mount::start(&store, origin.ca_pem_path(), options);
    let path = mount.path("m.gguf");
    assert!(open_and_read(&path).unwrap() == data);
    let blob = store.store().blob_path(&m.blob);
    published_and_recorded(&store, &data, &mount);
    let second = open_and_read(&path);
    assert!(
        second.as_ref().is_ok_and(|v| *v == data),
        "the open after publication: {}\n{}",
        outcome(&second, &data),
        mount.log()
    );

    let mut w = fs::OpenOptions::new().write(true).open(&blob).unwrap();
    w.seek(SeekFrom::Start(123_457)).unwrap();
    w.write_all(&[data[123_457] ^ 0xff]).unwrap();
    drop(w);
    let again = open_and_read(&path);
    assert!(
        again.as_ref().is_ok_and(|v| *v == data),
        "after a byte was written in place ({options:?}): {}\n{}",
        outcome(&again, &data),
        mount.log()
    );
    assert_eq!(
        origin.stats("m.gguf").gets,
        2,
        "fetched again:\n{}",
        mount.log()
    );
    assert_eq!(store.quarantined().len(), 1, "{}", mount.log());
    store.assert_consistent();
}

#[test]
fn a_byte_written_into_a_published_blob_is_caught_at_the_next_open() {
    a_byte_written_into_a_published_blob(&[]);
}

#[test]
fn a_byte_written_into_a_published_blob_is_caught_at_the_next_open_in_page_cache_mode() {
    a_byte_written_into_a_published_blob(&["passthrough=off"]);
}

#[test]
fn a_touch_is_verified_again_and_served_and_its_new_stamps_are_recorded() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = gguf_bytes(64 * MIB, 8);
    let m = store.add_pending("m", &origin, &data);
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let path = mount.path("m.gguf");
    assert!(open_and_read(&path).unwrap() == data);
    let blob = store.store().blob_path(&m.blob);
    published_and_recorded(&store, &data, &mount);
    let (_, warm) = timed_read(&path);
    // Hashing again needs no network: the origin is down from here on.
    origin.set_persistent_fault("m.gguf", Some(Fault::Status(500)));
    let fetched = origin.stats("m.gguf").gets;

    // Only the mtime, set to a day ago (ctime moves to now by itself).
    let day_ago = std::time::SystemTime::now() - Duration::from_secs(86_400);
    fs::File::options()
        .write(true)
        .open(&blob)
        .unwrap()
        .set_modified(day_ago)
        .unwrap();
    // An O_NONBLOCK open does not wait for the hash: EAGAIN, as for a fetch.
    assert_eq!(
        open_flags(&path, libc::O_RDONLY | libc::O_NONBLOCK).unwrap_err(),
        libc::EAGAIN
    );
    // Several opens at once: one hash, every open waits for it.
    let others = crate::common::waiter::waiters(&path, 3);
    let (again, took) = timed_read(&path);
    assert!(again.unwrap() == data);
    for w in others {
        assert!(w.result().unwrap() == data);
    }
    eprintln!("touch: open + read of 64 MiB after a touch {took:?} (re-verified), before {warm:?}");
    let Recorded::Stamps(r) = record_of(&store, &data) else {
        panic!("a record");
    };
    assert_eq!(
        r,
        Record::of(&fs::metadata(&blob).unwrap()),
        "the new stamps are recorded"
    );
    assert!(store.quarantined().is_empty());
    assert_eq!(
        origin.stats("m.gguf").gets,
        fetched,
        "nothing is fetched again"
    );
    assert!(
        mount.log().contains("the bytes are intact"),
        "{}",
        mount.log()
    );
    // The next open is answered from the record, without hashing.
    assert!(open_and_read(&path).unwrap() == data);
    assert_eq!(mount.log().matches("the bytes are intact").count(), 1);
}

#[test]
fn a_blob_without_a_record_is_trusted_once_recorded_and_then_guarded() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = gguf_bytes(MIB, 9);
    // Placed by another tool: a blob and a manifest, no record.
    let d = store.put_blob(&data);
    origin.put("m.gguf", data.clone());
    store.write_manifest("m", &origin.url("m.gguf"), &data);
    assert_eq!(record_of(&store, &data), Recorded::Nothing);
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let path = mount.path("m.gguf");
    assert!(open_and_read(&path).unwrap() == data);
    let blob = store.store().blob_path(&d);
    assert_eq!(
        record_of(&store, &data),
        Recorded::Stamps(Record::of(&fs::metadata(&blob).unwrap())),
        "recorded at first sight"
    );
    assert!(mount.log().contains("first sight"), "{}", mount.log());

    let mut w = fs::OpenOptions::new().write(true).open(&blob).unwrap();
    w.write_all(b"X").unwrap();
    drop(w);
    assert!(open_and_read(&path).unwrap() == data);
    assert_eq!(origin.stats("m.gguf").gets, 1);
    assert_eq!(store.quarantined().len(), 1);
}

#[test]
fn import_copies_by_default_so_editing_the_original_changes_nothing() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = gguf_bytes(3 * MIB, 10);
    let original = user_file(&store, "mine.gguf", &data);
    let (code, text) = cli(
        &store,
        &origin,
        &["import", original.to_str().unwrap(), "--name", "m"],
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("copy"), "{text}");
    let blob = store.store().blob_path(&Sha256::of(&data));
    assert_ne!(
        fs::metadata(&blob).unwrap().ino(),
        fs::metadata(&original).unwrap().ino(),
        "the blob is a file of its own"
    );
    let mount = Mount::start(&store, origin.ca_pem_path(), &[]);
    let path = mount.path("m.gguf");
    assert!(open_and_read(&path).unwrap() == data);

    cp_over(&gguf_bytes(data.len(), 11), &original);
    let mut w = fs::OpenOptions::new().write(true).open(&original).unwrap();
    w.write_all(b"edited in place").unwrap();
    drop(w);
    assert!(open_and_read(&path).unwrap() == data);
    assert!(store.quarantined().is_empty());
    assert!(!mount.log().contains("hashed again"), "{}", mount.log());
    let (code, text) = cli(&store, &origin, &["verify", "m"]);
    assert_eq!(code, 0, "{text}");
}

#[test]
fn verify_of_a_changed_blob_without_a_url_does_not_promise_a_fetch_and_records_good_ones() {
    let origin = Origin::start();
    let store = TestStore::new();
    let data = gguf_bytes(MIB, 12);
    let original = user_file(&store, "mine.gguf", &data);
    import_linked(&store, &origin, &original, "m");
    // A touch: verify hashes, finds the bytes intact, records the stamps.
    let blob = store.store().blob_path(&Sha256::of(&data));
    fs::File::options()
        .write(true)
        .open(&original)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
        .unwrap();
    let (code, text) = cli(&store, &origin, &["verify", "m"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(
        record_of(&store, &data),
        Recorded::Stamps(Record::of(&fs::metadata(&blob).unwrap()))
    );

    cp_over(&gguf_bytes(data.len(), 13), &original);
    let (code, text) = cli(&store, &origin, &["verify", "m"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("no URL") && text.contains("import"), "{text}");
    assert!(!text.contains("fetched again"), "{text}");
    assert_eq!(store.quarantined().len(), 1);
}
