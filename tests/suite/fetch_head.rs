//! Reading a remote file's head by ranges, for a parser that asks for more.

use crate::common::Fault;
use crate::fetch::{fetcher, path_of, pending};
use modelfs::fetch::head::{HeadError, HeadStep, MAX_HEAD};

const MIB: usize = 1 << 20;

/// A parser that is done once it has `need` bytes, and checks them.
fn needs(need: usize, want: &[u8]) -> impl FnMut(&[u8]) -> HeadStep<usize> + '_ {
    move |b: &[u8]| {
        if b.len() < need {
            HeadStep::NeedMore(need as u64)
        } else {
            assert!(
                b[..need] == want[..need],
                "the head holds the file's first bytes"
            );
            HeadStep::Done(b.len())
        }
    }
}

#[test]
fn a_head_is_read_in_a_few_growing_ranges_and_never_the_whole_file() {
    let (origin, _ts, bytes, _m) = pending("head", 40 * MIB, 91, vec![]);
    let f = fetcher(&origin);
    let url = origin.url(&path_of("head"));
    let got = f
        .read_head(&url, Some(bytes.len() as u64), needs(3 * MIB, &bytes))
        .expect("head");
    let st = origin.stats(&path_of("head"));
    assert_eq!(st.gets, 2, "1 MiB, then twice what was asked for");
    assert_eq!(got, 6 * MIB);
    assert_eq!(st.bytes_sent, 6 * MIB as u64);
}

#[test]
fn a_head_that_wants_too_much_or_an_origin_without_ranges_is_refused_cheaply() {
    let (origin, _ts, bytes, _m) = pending("big", 40 * MIB, 92, vec![]);
    let f = fetcher(&origin);
    let url = origin.url(&path_of("big"));
    let e = f
        .read_head(
            &url,
            Some(bytes.len() as u64),
            needs(MAX_HEAD as usize + 1, &bytes),
        )
        .unwrap_err();
    assert!(matches!(e, HeadError::TooLarge { .. }), "{e}");
    assert!(origin.stats(&path_of("big")).bytes_sent <= MAX_HEAD);

    origin.set_persistent_fault(&path_of("big"), Some(Fault::IgnoreRange));
    origin.reset_stats();
    let e = f.read_head(&url, None, needs(10, &bytes)).unwrap_err();
    assert!(matches!(e, HeadError::NoRanges(200)), "{e}");
    assert!(e.to_string().contains("byte ranges"), "{e}");
    let sent = origin.stats_now(&path_of("big")).bytes_sent;
    assert!(sent < 8 * MIB as u64, "the whole file was not read: {sent}");
}
