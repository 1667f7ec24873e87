//! Allocator tuning for the `backstop` process: the crate's one module with unsafe code.
#![allow(unsafe_code, reason = "mallopt is a C function; audited below")]

/// glibc gives each thread that allocates its own arena (up to 8 per core), and freed chunk
/// buffers stay in them, so resident memory grows with the number of arenas, not with what is
/// live. Peak RSS of a backup of the 1 GiB benchmark mix (`bench/run.py`, data kept with
/// `--keep`): 62–72 MiB with two arenas, 55–57 MiB with one, at the same speed within the
/// noise (a backup allocates a few times per 8 KiB page at most, so one arena's lock is
/// rarely contended). The library leaves process-wide settings alone; the binary sets this
/// one.
pub(crate) fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tuning parameter and has no memory-safety preconditions; it
    // is called first thing in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
