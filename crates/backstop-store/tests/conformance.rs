//! The conformance suite against every store that needs no server, and through the wrappers,
//! so the engine can rely on the same behaviour whichever store a user picks.

use std::sync::Arc;

use backstop_store::{
    CountingStore, FaultStore, LocalStore, LocalStoreOptions, MemoryStore, Store, conformance,
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
}

#[test]
fn suite_leaves_nothing_behind() {
    let store = MemoryStore::new();
    conformance::run_all(&store);
    assert!(store.is_empty(), "left behind: {:?}", store.keys());
}
