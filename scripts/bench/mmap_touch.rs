//! mmap_touch PATH TOUCHES SEED: maps PATH read-only, reads one byte from
//! TOUCHES pseudo-random 4 KiB pages (xorshift64*, seeded), unmaps, and
//! prints the elapsed nanoseconds (mmap + touches + munmap) and a checksum.
//! Built by scripts/bench.sh with plain `rustc -O` (no crates needed).
use std::os::unix::io::AsRawFd;
use std::time::Instant;

unsafe extern "C" {
    fn mmap(addr: *mut u8, len: usize, prot: i32, flags: i32, fd: i32, off: i64) -> *mut u8;
    fn munmap(addr: *mut u8, len: usize) -> i32;
}

const PROT_READ: i32 = 1;
const MAP_SHARED: i32 = 1;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: mmap_touch PATH TOUCHES SEED");
        std::process::exit(2);
    }
    let file = std::fs::File::open(&args[1]).expect("open");
    let touches: u64 = args[2].parse().expect("TOUCHES");
    let mut x: u64 = args[3].parse::<u64>().expect("SEED") | 1;
    let len = file.metadata().expect("stat").len() as usize;
    let pages = (len / 4096).max(1) as u64;
    let start = Instant::now();
    // SAFETY: a read-only shared mapping of a file we keep open; only
    // in-bounds page offsets are read, then it is unmapped.
    let sum = unsafe {
        let p = mmap(std::ptr::null_mut(), len, PROT_READ, MAP_SHARED, file.as_raw_fd(), 0);
        if p as isize == -1 {
            eprintln!("mmap failed: {}", std::io::Error::last_os_error());
            std::process::exit(1);
        }
        let mut sum = 0u64;
        for _ in 0..touches {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let page = x.wrapping_mul(0x2545_f491_4f6c_dd1d) % pages;
            sum = sum.wrapping_add(std::ptr::read_volatile(p.add((page * 4096) as usize)) as u64);
        }
        munmap(p, len);
        sum
    };
    println!("{} {}", start.elapsed().as_nanos(), sum);
}
