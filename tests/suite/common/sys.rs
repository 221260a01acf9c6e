//! Thin wrappers over the syscalls the mount tests make directly, so each
//! test can assert the exact errno a program would see.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub fn c_path(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

pub fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// open(2) with exactly these flags (mode 0644 if it creates); the errno on
/// failure.
pub fn open_flags(p: &Path, flags: i32) -> Result<File, i32> {
    // SAFETY: a valid C path; the fd returned is owned by the File.
    let fd = unsafe { libc::open(c_path(p).as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    if fd < 0 {
        Err(last_errno())
    } else {
        // SAFETY: a fresh fd we own.
        Ok(unsafe { File::from_raw_fd(fd) })
    }
}

/// getxattr(2) as text; the errno on failure.
pub fn getxattr(p: &Path, name: &str) -> Result<String, i32> {
    let name = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a buffer of the length passed.
    let n = unsafe {
        libc::getxattr(
            c_path(p).as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(last_errno());
    }
    buf.truncate(n as usize);
    Ok(String::from_utf8(buf).expect("xattr values are text"))
}

/// Opens read-only and reads everything; the errno of the open on failure.
pub fn open_and_read(p: &Path) -> Result<Vec<u8>, i32> {
    use std::io::Read;
    let mut f = open_flags(p, libc::O_RDONLY)?;
    let mut v = Vec::new();
    f.read_to_end(&mut v).expect("read after a successful open");
    Ok(v)
}

/// A small xorshift generator for fault tests; the seed is printed (and
/// `FAULT_SEED=<n>` replays it) so a failing run can be repeated.
pub struct Rng(u64);

impl Rng {
    pub fn seeded(test: &str) -> Rng {
        let seed = std::env::var("FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{test}: FAULT_SEED={seed}");
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        super::xorshift(&mut self.0)
    }

    /// A number in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}
