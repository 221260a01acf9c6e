//! Whether a mountpoint is free to mount on, from `/proc/self/mountinfo`
//! (nothing at the mountpoint is opened or `statx`ed: that would trigger an
//! automount placeholder there).
//!
//! A mount is not stacked on another: like mount(8), `modelfs mount` on a
//! live mountpoint fails. The exception is an autofs placeholder (a
//! systemd `.automount`): it is there to be mounted over, by this mount.

use std::path::Path;

/// The topmost mount at `mp` (absolute, symlinks resolved), as (type,
/// source), or `None` when nothing is mounted there.
pub fn mounted_at(mp: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    top_mount(&info, &mp.to_string_lossy())
}

/// The last line of `info` (later mounts are listed after earlier ones)
/// whose mount point is `mp`.
fn top_mount(info: &str, mp: &str) -> Option<(String, String)> {
    info.lines()
        .rev()
        .filter_map(parse_line)
        .find(|(at, _, _)| at == mp)
        .map(|(_, t, s)| (t, s))
}

/// (mount point, type, source) of one mountinfo line.
fn parse_line(line: &str) -> Option<(String, String, String)> {
    let (left, right) = line.split_once(" - ")?;
    let at = left.split(' ').nth(4)?;
    let mut r = right.split(' ');
    let (fstype, source) = (r.next()?, r.next()?);
    Some((unescape(at), unescape(fstype), unescape(source)))
}

/// The kernel's octal escapes (`\040` for a space) undone.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// statfs(2) of `mp`, which a FUSE mount always asks its daemon about:
/// `ENOTCONN` when the daemon has ended. Only for a live mount that is not
/// an automount placeholder (statfs would trigger one).
pub fn statfs(mp: &Path) -> std::io::Result<()> {
    crate::sys::statfs(mp)
}

/// Whether a mount of type `fstype` at the mountpoint is one to mount
/// over: an automount placeholder.
pub fn is_placeholder(fstype: &str) -> bool {
    fstype == "autofs"
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
40 22 0:35 / /srv/my\\040models rw,relatime shared:9 - autofs systemd-1 rw,fd=60
41 40 0:36 / /srv/my\\040models ro,nosuid,nodev - fuse.modelfs /var/lib/models ro,user_id=0
";

    #[test]
    fn the_topmost_mount_at_a_path_is_found_with_its_escapes_undone() {
        assert_eq!(
            top_mount(INFO, "/srv/my models"),
            Some(("fuse.modelfs".into(), "/var/lib/models".into()))
        );
        assert_eq!(
            top_mount(INFO, "/proc"),
            Some(("proc".into(), "proc".into()))
        );
        assert_eq!(top_mount(INFO, "/srv"), None);
        let only_placeholder: String = INFO.lines().take(2).map(|l| format!("{l}\n")).collect();
        assert_eq!(
            top_mount(&only_placeholder, "/srv/my models"),
            Some(("autofs".into(), "systemd-1".into()))
        );
    }
}
