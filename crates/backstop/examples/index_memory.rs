//! Measures the engine's in-memory blob index: bytes of resident memory per indexed blob.
//!
//! ```text
//! cargo run --release -p backstop --example index_memory -- [BLOBS] [full|short]
//! ```
//! It creates a repository whose index lists BLOBS blobs (default 2,000,000: one index object
//! per 100,000 blobs, as a large repository would have), then opens it in a fresh engine and
//! reports the growth of the resident set while the index loads. The blobs have 32-byte ids
//! (`full`, the default: an unencrypted repository) or 16-byte ones (`short`: an encrypted
//! repository of format 6 and later); one kind per run, so that memory the first freed does
//! not hide what the second takes. The blobs' packs are not
//! written (verify would report them missing); only the index matters here.

#![allow(clippy::print_stdout, reason = "an example reports on stdout")]

use backstop::{EngineOptions, InitOptions, MemoryStore, ReadOnlyEngine};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let blobs: usize = std::env::args()
        .nth(1)
        .map_or(Ok(2_000_000), |s| s.parse())?;
    let short_ids = match std::env::args().nth(2).as_deref() {
        None | Some("full") => false,
        Some("short") => true,
        Some(other) => return Err(format!("expected `full` or `short`, not `{other}`").into()),
    };
    let store = MemoryStore::new();
    backstop::BackupEngine::init(
        store.clone(),
        InitOptions::default(),
        EngineOptions::default(),
    )?;
    backstop::testing_support::write_synthetic_index(&store, blobs, 100_000, short_ids)?;
    let before = rss_kib();
    let engine = ReadOnlyEngine::open(store, EngineOptions::default())?;
    let after = rss_kib();
    let per_blob = (after.saturating_sub(before) as f64 * 1024.0) / blobs as f64;
    println!(
        "{blobs} blobs with {} ids indexed: resident set grew {} KiB, {per_blob:.1} bytes per blob",
        if short_ids { "16-byte" } else { "32-byte" },
        after - before
    );
    drop(engine);
    Ok(())
}
