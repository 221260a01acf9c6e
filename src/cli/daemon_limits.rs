//! Process settings a mount daemon needs and a short-lived command does
//! not: enough file descriptors for every open handle, and memory that
//! freed allocations give back.

/// Raises the soft open-file limit to the hard one and caps glibc's
/// malloc arenas. Returns the open-file limit now in force.
///
/// Every open handle of the mount holds one descriptor of the daemon (the
/// blob file it reads), so the usual soft limit of 1024 ended every open
/// after about a thousand with EMFILE; the hard limit (524,288 on systemd
/// hosts, often 1,048,576 in containers) is the ceiling the operator set.
/// glibc gives each thread that allocates its own arena (up to 8 per core)
/// and keeps what is freed in each: with FUSE and fetch threads that held
/// tens of MB of a 100,000-model mount's memory after one `ls -l`.
pub fn tune() -> u64 {
    crate::sys::cap_malloc_arenas(2);
    crate::sys::raise_open_file_limit()
}

/// Returns freed heap memory to the system. glibc keeps what is freed in
/// the middle of its heap: the parse of 100,000 manifests and each full
/// pass over them free megabytes that would otherwise stay resident
/// (measured here: 142 to 136 MB once mounted, release build).
/// `malloc_trim` releases those pages (it walks the free lists; not timed
/// here, it runs a few times a minute at most).
pub fn give_back_freed_memory() {
    let started = std::time::Instant::now();
    crate::sys::malloc_trim();
    log::trace!("malloc_trim took {:?}", started.elapsed());
}
