//! Allocator tuning for the `backstop` process: the crate's one module with unsafe code.
#![allow(unsafe_code, reason = "mallopt is a C function; audited below")]

/// glibc gives each thread that allocates its own arena (up to 8 per core), and freed chunk
/// buffers stay in them: a backup's resident memory measured 78 MiB with the default and 70 MiB
/// with two arenas, at the same speed (`MALLOC_ARENA_MAX=2` on
/// `crates/backstop/examples/throughput.rs`, 512 MiB). The library leaves process-wide settings
/// alone; the binary sets this one.
pub(crate) fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tuning parameter and has no memory-safety preconditions; it
    // is called first thing in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
