//! The `fuser::Filesystem` implementation: convert a kernel request, call
//! [`ModelFs`], convert the answer (see the [`crate::fuse`] module doc).

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use fuser::{
    BackingId, Errno, FileHandle, Filesystem, FopenFlags, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, RequestId, TimeOrNow,
    WriteFlags,
};

use super::ReadMode;
use super::backing::Backings;
use super::convert::{TTL, errno, fail, file_type, to_file_attr};
use crate::fs::{Caller, FsError, ModelFs};

/// The `fuser::Filesystem` over a [`ModelFs`].
pub struct FuseAdapter {
    fs: Arc<ModelFs>,
    mode: ReadMode,
    /// Set in `init` when the kernel accepted passthrough.
    passthrough: Arc<AtomicBool>,
    backing: Arc<Backings<BackingId>>,
    warned_backing: Arc<AtomicBool>,
}

impl FuseAdapter {
    pub fn new(fs: Arc<ModelFs>, mode: ReadMode) -> Self {
        Self {
            fs,
            mode,
            passthrough: Arc::new(AtomicBool::new(false)),
            backing: Arc::new(Backings::default()),
            warned_backing: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether passthrough is active (known after the mount's `init`).
    pub fn passthrough_flag(&self) -> Arc<AtomicBool> {
        self.passthrough.clone()
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Large reads: the kernel caps max_pages at its own limit (1 MiB).
        let _ = config
            .set_max_readahead(u32::MAX)
            .or_else(|max| config.set_max_readahead(max));
        // READDIRPLUS: `ls -l` gets every entry's attributes with the
        // listing instead of one LOOKUP round trip per entry.
        let _ = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS);
        let wants = self.mode == ReadMode::Auto;
        let can = config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH);
        // Registering a backing file needs CAP_SYS_ADMIN; without it every
        // open would fail over, so do not even ask.
        let privileged = crate::sys::is_root();
        if wants
            && can
            && privileged
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
        {
            let _ = config.set_max_stack_depth(1);
            self.passthrough.store(true, Ordering::SeqCst);
            log::info!(
                "read mode: kernel passthrough (reads and mmap go straight to the blob files)"
            );
        } else {
            let why = match (wants, can, privileged) {
                (false, _, _) => "passthrough=off",
                (true, false, _) => "the kernel does not offer FUSE passthrough",
                _ => "passthrough needs root (CAP_SYS_ADMIN)",
            };
            log::info!(
                "read mode: page-cache fallback ({why}); contents stay cached between opens"
            );
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str() else {
            return reply.error(errno(&FsError::NotFound));
        };
        match self.fs.lookup(parent.0, name) {
            Ok(a) => reply.entry(&TTL, &to_file_attr(&a), fuser::Generation(0)),
            Err(e) => reply.error(fail("lookup", &e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &to_file_attr(&a)),
            Err(e) => reply.error(fail("getattr", &e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let passthrough = self.passthrough.load(Ordering::Relaxed);
        let backing = self.backing.clone();
        let warned = self.warned_backing.clone();
        let fs = self.fs.clone();
        self.fs.open(
            ino.0,
            flags.0,
            Caller {
                tid: req.pid(),
                request: req.unique().0,
            },
            Box::new(move |result| match result {
                Err(e) => reply.error(fail("open", &e)),
                Ok(opened) if passthrough => {
                    let id = backing.acquire(ino.0, opened.file_id, opened.fh, || {
                        reply.open_backing(opened.file.as_ref())
                    });
                    match id {
                        Ok(id) => reply.opened_passthrough(
                            FileHandle(opened.fh),
                            FopenFlags::empty(),
                            &id,
                        ),
                        Err(err) if err.raw_os_error() == Some(libc::ESTALE) => {
                            fs.release(opened.fh);
                            reply.error(errno(&FsError::Stale));
                        }
                        Err(err) => {
                            if !warned.swap(true, Ordering::Relaxed) {
                                log::warn!(
                                    "passthrough refused ({err}); serving reads through the page cache"
                                );
                            }
                            reply.opened(FileHandle(opened.fh), FopenFlags::FOPEN_KEEP_CACHE);
                        }
                    }
                }
                Ok(opened) => reply.opened(FileHandle(opened.fh), FopenFlags::FOPEN_KEEP_CACHE),
            }),
        );
    }

    /// A task waiting in a request we have not answered got a signal.
    /// Only parked opens wait; every other request is answered on the
    /// thread that read it, so an unknown id is an open on its way to the
    /// coordinator, or a request answered already: `EAGAIN` makes the
    /// kernel ask again in the first case and drop the interrupt in the
    /// second. Never `ENOSYS`: after that the kernel sends no interrupts.
    fn interrupt(&self, _req: &Request, unique: RequestId) -> Result<(), Errno> {
        if self.fs.interrupt(unique.0) {
            Ok(())
        } else {
            Err(Errno::from_i32(crate::fs::error::INTERRUPT_NOT_WAITING))
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(fail("read", &e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.backing.release(fh.0);
        self.fs.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(fail("opendir", &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let list = match self.fs.readdir(fh.0) {
            Ok(l) => l,
            Err(e) => return reply.error(fail("readdir", &e)),
        };
        for i in offset as usize..list.len() {
            let Some((e, _)) = self.fs.dir_entry(&list, i) else {
                break;
            };
            if reply.add(INodeNo(e.ino), (i + 1) as u64, file_type(e.kind), &*e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: fuser::ReplyDirectoryPlus,
    ) {
        let list = match self.fs.readdir(fh.0) {
            Ok(l) => l,
            Err(e) => return reply.error(fail("readdirplus", &e)),
        };
        let mut given = Vec::new();
        for i in offset as usize..list.len() {
            let Some((e, attr)) = self.fs.dir_entry(&list, i) else {
                break;
            };
            if reply.add(
                INodeNo(e.ino),
                (i + 1) as u64,
                &*e.name,
                &TTL,
                &to_file_attr(&attr),
                fuser::Generation(0),
            ) {
                break;
            }
            given.push(e.ino);
        }
        // The kernel takes a reference to every entry it was given
        // (the namespace ignores the root's, for `.` and `..`); counted
        // before the reply, so that no forget can come first.
        self.fs.remember(&given);
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.fs.namespace().len() as u64;
        reply.statfs(0, 0, 0, files, 0, 1 << 20, 255, 1 << 20);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        match self.fs.access(ino.0, mask.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("access", &e)),
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(errno(&FsError::NoIoctl));
    }

    // Closing or syncing a read-only file has nothing to write back.

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let result = name
            .to_str()
            .ok_or(FsError::NoAttr)
            .and_then(|n| self.fs.getxattr(ino.0, n));
        reply_xattr(result, size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(self.fs.listxattr(ino.0), size, reply);
    }

    // Everything below would write: the mount is read-only.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn mknod(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _d: u32,
        reply: ReplyEntry,
    ) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn mkdir(&self, _r: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, reply: ReplyEntry) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn unlink(&self, _r: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn rmdir(&self, _r: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn symlink(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _t: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn rename(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _np: INodeNo,
        _nn: &OsStr,
        _f: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn link(&self, _r: &Request, _i: INodeNo, _np: INodeNo, _nn: &OsStr, reply: ReplyEntry) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn write(
        &self,
        _r: &Request,
        _i: INodeNo,
        _fh: FileHandle,
        _o: u64,
        _d: &[u8],
        _wf: WriteFlags,
        _f: OpenFlags,
        _l: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn create(
        &self,
        _r: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _f: i32,
        reply: ReplyCreate,
    ) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn setxattr(
        &self,
        _r: &Request,
        _i: INodeNo,
        _n: &OsStr,
        _v: &[u8],
        _f: i32,
        _p: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(errno(&FsError::ReadOnly));
    }

    fn removexattr(&self, _r: &Request, _i: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(errno(&FsError::ReadOnly));
    }
}

fn reply_xattr(result: Result<Vec<u8>, FsError>, size: u32, reply: ReplyXattr) {
    match result {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() <= size as usize => reply.data(&v),
        Ok(_) => reply.error(errno(&FsError::XattrRange)),
        Err(e) => reply.error(fail("xattr", &e)),
    }
}
