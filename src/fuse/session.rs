//! The FUSE session set-up: mount options → fuser's config, the mount
//! itself (mount(2) as root, fusermount3 otherwise), the [`fuser::Session`]
//! over a [`FuseAdapter`], and the unmount. The daemon's lifecycle
//! (daemonizing, signals, the refresher, shutdown) is the CLI's.

use std::io;
use std::path::Path;
use std::sync::Arc;

use fuser::{Config, MountOption, SessionACL};

use super::{FuseAdapter, ReadMode};
use crate::fs::ModelFs;
use crate::sys;

/// How to mount, from the mount options.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// The mount's source name (`fsname=`; the store root by default).
    pub fsname: String,
    pub default_permissions: bool,
    pub allow_other: bool,
    pub allow_root: bool,
    /// Threads serving requests.
    pub threads: usize,
    pub mode: ReadMode,
}

/// A live mount: the session to run, and how to end it.
pub struct Mounted {
    pub session: fuser::Session<FuseAdapter>,
    pub unmounter: Unmounter,
}

/// fuser's config for `o`.
fn config(o: &SessionOptions) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::FSName(o.fsname.clone()),
        MountOption::Subtype("modelfs".into()),
    ];
    if o.default_permissions {
        config.mount_options.push(MountOption::DefaultPermissions);
    }
    config.acl = match (o.allow_other, o.allow_root) {
        (true, _) => SessionACL::All,
        (false, true) => SessionACL::RootAndOwner,
        (false, false) => SessionACL::Owner,
    };
    config.n_threads = Some(o.threads);
    config.clone_fd = true;
    config
}

/// Mounts `fs` at `mountpoint` (absolute). Root mounts with mount(2)
/// itself; a user (or root without the right to, in some containers) goes
/// through fuser and fusermount3. On an error, nothing stays mounted; add
/// [`mount_hint`] to its message.
pub fn mount(fs: Arc<ModelFs>, mountpoint: &Path, o: &SessionOptions) -> io::Result<Mounted> {
    let adapter = FuseAdapter::new(fs, o.mode);
    let config = config(o);
    let direct = if sys::is_root() {
        direct::mount(mountpoint, &config)?
    } else {
        None
    };
    match direct {
        Some(fd) => {
            let session = fuser::Session::from_fd(adapter, fd, config.acl, config.clone())
                .inspect_err(|_| lazy_unmount(mountpoint))?;
            Ok(Mounted {
                session,
                unmounter: Unmounter::Direct,
            })
        }
        None => {
            let mut session = fuser::Session::new(adapter, mountpoint, &config)?;
            let unmounter = Unmounter::Fuser(session.unmount_callable());
            Ok(Mounted { session, unmounter })
        }
    }
}

/// How the daemon unmounts when told to stop.
pub enum Unmounter {
    /// A mount made by [`direct::mount`].
    Direct,
    /// A mount made by fuser (through fusermount3).
    Fuser(fuser::SessionUnmounter),
}

impl Unmounter {
    /// Unmounts, not lazily: fails (EBUSY) while files are open.
    pub fn unmount(&mut self, mp: &Path) -> io::Result<()> {
        match self {
            Self::Direct => sys::umount2(mp, 0),
            Self::Fuser(u) => u.unmount(),
        }
    }
}

/// Detaches the mount at `mp` lazily, like `fusermount3 -u -z` (which it
/// falls back to); files still open keep working until closed.
pub fn lazy_unmount(mp: &Path) {
    if sys::umount2(mp, libc::MNT_DETACH).is_ok() {
        return;
    }
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(mp)
        .status();
    if !matches!(status, Ok(s) if s.success()) {
        log::warn!(
            "could not detach {}; unmount it with `fusermount3 -u -z {}`",
            mp.display(),
            mp.display()
        );
    }
}

/// What to check when the mount itself failed.
pub fn mount_hint() -> &'static str {
    let user = !sys::is_root();
    let denied = !sys::can_read_write(Path::new("/dev/fuse"));
    if user && Path::new("/dev/fuse").exists() && denied {
        // fusermount3 opens the device with the user's rights too, so this
        // is the host's policy, not something fusermount3 works around.
        "/dev/fuse is not open to this user: FUSE mounts by users need it read-write \
         for them (the fuse3 package's default is mode 0666)"
    } else {
        "is the fuse3 package installed and /dev/fuse available?"
    }
}

/// Mounting with mount(2), as root. fuser 0.18 would `open()` the
/// mountpoint first, which triggers an automount placeholder there (systemd's
/// `.automount`, `x-systemd.automount`) and then waits for the mount that
/// is waiting for it. This `stat()`s it with `AT_NO_AUTOMOUNT` instead;
/// mount(2) then mounts on top of the placeholder without triggering it.
mod direct {
    use std::ffi::CString;
    use std::io;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::Path;

    use fuser::{Config, MountOption, SessionACL};

    use crate::sys;

    /// Mounts at `mp`; the /dev/fuse fd of the new mount, or `None` when
    /// mount(2) is not permitted (fuser then tries fusermount3).
    pub fn mount(mp: &Path, config: &Config) -> io::Result<Option<OwnedFd>> {
        let kind = sys::stat_no_automount(mp)? & libc::S_IFMT;
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/fuse")
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open /dev/fuse: {e}")))?;
        let (uid, gid) = sys::ids();
        let mut data = format!(
            "fd={},rootmode={kind:o},user_id={uid},group_id={gid}",
            dev.as_raw_fd()
        );
        let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
        let mut source = "modelfs".to_string();
        let mut fstype = "fuse".to_string();
        for o in &config.mount_options {
            match o {
                MountOption::RO => flags |= libc::MS_RDONLY,
                MountOption::DefaultPermissions => data.push_str(",default_permissions"),
                MountOption::FSName(n) => source = n.clone(),
                MountOption::Subtype(t) => fstype = format!("fuse.{t}"),
                _ => {}
            }
        }
        // allow_root is allow_other in the kernel, narrowed by fuser.
        if config.acl != SessionACL::Owner {
            data.push_str(",allow_other");
        }
        let c = |s: &[u8]| {
            CString::new(s).map_err(|_| io::Error::other("a NUL byte in a mount argument"))
        };
        let (source, target, fstype, data) = (
            c(source.as_bytes())?,
            c(mp.as_os_str().as_bytes())?,
            c(fstype.as_bytes())?,
            c(data.as_bytes())?,
        );
        match sys::mount(&source, &target, &fstype, flags, &data) {
            Ok(()) => Ok(Some(dev.into())),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
