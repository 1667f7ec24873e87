//! The conformance suite against every store that needs no server, and through the wrappers,
//! so the engine can rely on the same behaviour whichever store a user picks.

use std::sync::Arc;

use backstop_store::{
    CachingStore, CountingStore, FaultStore, LocalStore, LocalStoreOptions, MemoryStore, PutMode,
    Store, ThrottleLimits, ThrottleStore, conformance,
};

#[test]
fn memory_store_conforms() {
    conformance::run_all(&MemoryStore::new());
}

#[test]
fn local_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    // A root that does not exist yet: the store creates it on the first put.
    conformance::run_all(&LocalStore::new(dir.path().join("not/yet/there")));
}

#[test]
fn local_store_without_sync_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance::run_all(&LocalStore::with_options(
        dir.path(),
        LocalStoreOptions { sync: false },
    ));
}

#[test]
fn wrappers_conform() {
    let counting = CountingStore::new(MemoryStore::new());
    conformance::run_all(&counting);
    assert!(counting.counts().puts > 0 && counting.counts().bytes_down > 0);

    let dir = tempfile::tempdir().unwrap();
    let fault = FaultStore::new(LocalStore::with_options(
        dir.path(),
        LocalStoreOptions { sync: false },
    ));
    conformance::run_all(&fault);
    assert_eq!(fault.faults_injected(), 0);

    let shared: Arc<dyn Store> = Arc::new(MemoryStore::new());
    conformance::run_all(&shared);

    // Limits high enough to cost no time, low enough that the buckets run.
    let throttled = ThrottleStore::new(MemoryStore::new(), ThrottleLimits::new(1 << 30, 1 << 30));
    conformance::run_all(&throttled);
}

#[test]
fn caching_store_conforms_with_every_object_cached() {
    // The suite writes under `conformance/`; caching that prefix puts every check through the
    // cache: overwrites, failed creates, ranges, listings, deletes.
    let dir = tempfile::tempdir().unwrap();
    let remote = CountingStore::new(MemoryStore::new());
    let cache = CachingStore::with_prefixes(
        remote.clone(),
        dir.path().join("cache"),
        ["conformance/".to_owned()],
    );
    conformance::run_all(&cache);
    let stats = cache.stats();
    assert!(stats.hits > 0, "{stats:?}");
    assert_eq!(stats.damaged + stats.errors, 0, "{stats:?}");
    // The suite deleted what it wrote, so the cache holds nothing either.
    let mut left = Vec::new();
    collect_files(&dir.path().join("cache/conformance"), &mut left);
    assert!(left.is_empty(), "left in the cache: {left:?}");
}

fn collect_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().expect("file type").is_dir() {
            collect_files(&entry.path(), out);
        } else {
            out.push(entry.path());
        }
    }
}

#[test]
fn suite_leaves_nothing_behind() {
    let store = MemoryStore::new();
    conformance::run_all(&store);
    assert!(store.is_empty(), "left behind: {:?}", store.keys());
}

#[test]
fn every_wrapper_passes_temp_file_cleanup_to_the_store_beneath() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let local = LocalStore::new(dir.path());
    local
        .put("packs/ab/abcd", b"pack", PutMode::Overwrite)
        .unwrap();
    // What a killed put leaves beside its key, backdated past the minimum age.
    let temp = dir.path().join("packs/ab/.tmp-00000000000000aa");
    std::fs::write(&temp, b"half").unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
    std::fs::File::options()
        .write(true)
        .open(&temp)
        .unwrap()
        .set_modified(old)
        .unwrap();
    // The stack the CLI builds, plus the test wrappers, each forwarding to the next.
    let stack: Arc<dyn Store> = Arc::new(CountingStore::new(ThrottleStore::new(
        CachingStore::new(FaultStore::new(local), cache.path()),
        ThrottleLimits::new(1 << 30, 1 << 30),
    )));
    let minute = std::time::Duration::from_secs(60);
    assert_eq!(stack.remove_temp_files(minute).unwrap(), 1);
    assert!(!temp.exists());
    assert_eq!(stack.get("packs/ab/abcd").unwrap(), b"pack");
    // Stores without temp files have nothing to remove.
    assert_eq!(MemoryStore::new().remove_temp_files(minute).unwrap(), 0);
}
