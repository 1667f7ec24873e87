//! Allocator tuning for the `backstop` process: the crate's one module with unsafe code.
#![allow(unsafe_code, reason = "mallopt is a C function; audited below")]

/// Allocations at least this large get their own mapping; smaller ones come from the heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 8 << 20;
/// Free memory at the top of the heap is given back to the system once it exceeds this.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 16 << 20;

/// Two settings of glibc's malloc, which the library leaves alone (they are process-wide) and
/// the binary sets first thing in `main`, before any other thread exists.
///
/// - **One arena.** glibc gives each thread that allocates its own arena (up to 8 per core),
///   and freed chunk buffers stay in them, so resident memory grows with the number of arenas,
///   not with what is live. Peak RSS of a backup of the 1 GiB benchmark mix (`bench/run.py`,
///   data kept with `--keep`): 62–72 MiB with two arenas, 55–57 MiB with one, at the same
///   speed within the noise (a backup allocates a few times per 8 KiB page at most, so one
///   arena's lock is rarely contended).
/// - **Chunk buffers from the heap, kept there.** A content-defined chunk is read into a
///   buffer of about 1.25 MiB that travels down the pipeline and is freed by whichever thread
///   is done with it. glibc maps buffers that large on their own at first, and later, once its
///   adaptive thresholds have moved, keeps giving the top of the heap back when a few are free
///   at once; either way the next buffers are fresh pages the kernel faults in and zeroes. With
///   fixed thresholds (mappings from 8 MiB up, trimming above 16 MiB free) they are reused.
///   Against the build before (runs alternating, warm page cache): a backup of a touched
///   1 GiB file (nothing new to store) 1.01–1.03 s with 0.33–0.38 s of system time → 0.77 s
///   with 0.09–0.13 s; of the touched benchmark mix 0.54–0.64 → 0.45–0.57 s; a first backup
///   of the benchmark's SQLite file 0.71–0.72 → 0.65–0.72 s; full backups of the mix and
///   restores the same within the noise, at the same peak RSS (43–59 MiB).
pub(crate) fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets tuning parameters and has no memory-safety preconditions; it
    // is called first thing in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}
