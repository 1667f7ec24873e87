//! Copying backups into a second repository created from the first (`init_from`, `copy_from`):
//! what is copied restores and verifies there, only what is new is copied again, and a
//! repository that does not share the key, or a damaged source, is refused with nothing
//! visible left behind.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

#[path = "support/data.rs"]
mod data;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use backstop::store::{FaultPlan, FaultStore};

use backstop::{
    BackupEngine, BackupOptions, BackupSelector, CopyOptions, DirSource, EngineOptions, ErrorKind,
    InitOptions, MemoryStore, ReadOnlyEngine, RestoreOptions, VerifyLevel,
};
use data::incompressible;

fn fast_init() -> InitOptions {
    InitOptions::default()
        .with_kdf(8 * 1024, 1)
        .with_chunk_sizes(16 * 1024, 64 * 1024, 256 * 1024)
}

fn engine_options(password: Option<&str>) -> EngineOptions {
    let options = EngineOptions::default().with_threads(2);
    match password {
        Some(p) => options.with_password(p),
        None => options,
    }
}

fn init_options(password: Option<&str>) -> InitOptions {
    match password {
        Some(p) => fast_init().with_password(p),
        None => fast_init(),
    }
}

/// Each file's bytes by relative path (directories as empty entries).
fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if path.is_dir() {
                stack.push(path);
                out.insert(rel, Vec::new());
            } else {
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn restored(engine: &ReadOnlyEngine, which: BackupSelector) -> BTreeMap<String, Vec<u8>> {
    let target = tempfile::tempdir().unwrap();
    engine
        .restore(which, target.path(), &RestoreOptions::default())
        .unwrap();
    files(target.path())
}

/// Large files (blobs of their own) and many small ones (which share frames).
fn write_version(root: &Path, version: u64) {
    std::fs::create_dir_all(root.join("small")).unwrap();
    std::fs::write(root.join("big.bin"), incompressible(600_000, 1)).unwrap();
    let text: String = (0..20_000)
        .map(|i| format!("row {i} v{version}\n"))
        .collect();
    std::fs::write(root.join("text.log"), text).unwrap();
    for i in 0..40u64 {
        // A quarter of the small files change with each version.
        let v = if i % 4 == 0 { version } else { 0 };
        std::fs::write(
            root.join(format!("small/{i}")),
            incompressible(3_000 + i as usize, i * 1000 + v),
        )
        .unwrap();
    }
}

/// A new repository in `store`, encrypted under `password` if there is one.
fn repository(store: MemoryStore, password: Option<&str>) -> BackupEngine {
    BackupEngine::init(store, init_options(password), engine_options(password)).unwrap()
}

/// A new repository in `store` made from `source` (`init_from`), under `password`.
fn copy_of(store: MemoryStore, source: &BackupEngine, password: Option<&str>) -> BackupEngine {
    BackupEngine::init_from(
        store,
        source,
        init_options(password),
        engine_options(password),
    )
    .unwrap()
}

/// Backs up versions 1 and 2 of the data tree in `root`.
fn two_backups(source: &BackupEngine, root: &Path) {
    for version in [1, 2] {
        write_version(root, version);
        backup(source, root);
    }
}

fn backup(engine: &BackupEngine, root: &Path) -> u64 {
    engine
        .create_backup(&mut DirSource::new(root), &BackupOptions::default())
        .unwrap()
        .id
}

fn pack_bytes(store: &MemoryStore) -> usize {
    store
        .keys()
        .iter()
        .filter(|k| k.starts_with("packs/"))
        .map(|k| store.raw_get(k).unwrap().len())
        .sum()
}

#[test]
fn backups_copied_into_a_repository_made_from_the_source_restore_the_same_and_only_new_ones_are_copied_again()
 {
    for password in [Some("secret"), None] {
        let data = tempfile::tempdir().unwrap();
        let source = repository(MemoryStore::new(), password);
        two_backups(&source, data.path());

        // The copy has a password of its own; the source's does not open it.
        let dest_password = password.map(|_| "offsite");
        let dest_store = MemoryStore::new();
        let dest = copy_of(dest_store.clone(), &source, dest_password);
        let report = dest.copy_from(&source, &CopyOptions::default()).unwrap();
        assert_eq!(report.copied, [(1, 1), (2, 2)], "{password:?}");
        assert!(report.already_there.is_empty());
        assert!(report.blobs_copied > 40 && report.packs_written > 0);
        assert!(dest.verify_all(VerifyLevel::Full).unwrap().is_ok());
        for id in [1, 2] {
            assert_eq!(
                restored(&dest, BackupSelector::Id(id)),
                restored(&source, BackupSelector::Id(id)),
                "backup {id}, password {password:?}"
            );
        }
        let (here, there) = (source.list_backups().unwrap(), dest.list_backups().unwrap());
        for (a, b) in here.iter().zip(&there) {
            assert_eq!(
                (a.time_unix, &a.source, a.files),
                (b.time_unix, &b.source, b.files)
            );
        }
        if password.is_some() {
            let wrong = BackupEngine::open(dest_store.clone(), engine_options(password));
            assert_eq!(wrong.unwrap_err().kind(), ErrorKind::WrongKey);
        }

        // Again: nothing to copy.
        let again = dest.copy_from(&source, &CopyOptions::default()).unwrap();
        assert!(again.copied.is_empty());
        assert_eq!(again.already_there, [(1, 1), (2, 2)]);
        assert_eq!((again.blobs_copied, again.packs_written), (0, 0));

        // A third backup: only what it adds is copied.
        write_version(data.path(), 3);
        std::fs::write(data.path().join("new.bin"), incompressible(200_000, 77)).unwrap();
        let third = source
            .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
            .unwrap();
        let before = pack_bytes(&dest_store);
        let next = dest.copy_from(&source, &CopyOptions::default()).unwrap();
        assert_eq!(next.copied, [(3, 3)]);
        assert_eq!(
            next.blobs_copied, third.blobs_added,
            "the blobs backup 3 added"
        );
        assert_eq!(
            pack_bytes(&dest_store) - before,
            next.bytes_written as usize
        );
        assert!(next.bytes_written < report.bytes_written / 2);
        assert_eq!(
            restored(&dest, BackupSelector::Latest),
            files(data.path()),
            "{password:?}"
        );
        assert!(dest.verify_all(VerifyLevel::Full).unwrap().is_ok());
    }
}

/// Copying one backup takes only its blobs: the small files it shares frames with in the source
/// are framed anew without the others' blobs.
#[test]
fn copying_one_backup_takes_only_its_blobs() {
    let data = tempfile::tempdir().unwrap();
    let source = repository(MemoryStore::new(), Some("s"));
    two_backups(&source, data.path());

    let dest_store = MemoryStore::new();
    let dest = copy_of(dest_store.clone(), &source, Some("d"));
    let report = dest
        .copy_from(
            &source,
            &CopyOptions::default().backups([BackupSelector::Latest]),
        )
        .unwrap();
    assert_eq!(report.copied, [(2, 1)]);
    assert_eq!(restored(&dest, BackupSelector::Latest), files(data.path()));
    assert!(dest.verify_all(VerifyLevel::Full).unwrap().is_ok());
    // Version 1's ten changed small files and its text stay behind (the frames they shared with
    // version 2's files are built anew without them).
    let full = copy_of(MemoryStore::new(), &source, Some("d"))
        .copy_from(&source, &CopyOptions::default())
        .unwrap();
    assert!(full.blobs_copied > report.blobs_copied + 10);
    assert!(pack_bytes(&dest_store) < full.bytes_written as usize);
}

#[test]
fn a_repository_that_does_not_share_the_key_is_refused_and_left_as_it_was() {
    let data = tempfile::tempdir().unwrap();
    write_version(data.path(), 1);
    let source = repository(MemoryStore::new(), Some("s"));
    backup(&source, data.path());

    // Same password, own key: the same bytes have other ids there.
    let other_store = MemoryStore::new();
    let other = repository(other_store.clone(), Some("s"));
    let keys_before = other_store.keys();
    let err = other
        .copy_from(&source, &CopyOptions::default())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Incompatible);
    assert!(err.to_string().contains("init --from-repo"), "{err}");
    assert_eq!(other_store.keys(), keys_before);

    let err = source
        .copy_from(&source, &CopyOptions::default())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);

    // An encrypted source's copy needs a password; a plain one's must not have one.
    let err = BackupEngine::init_from(
        MemoryStore::new(),
        &source,
        init_options(None),
        engine_options(None),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let plain = repository(MemoryStore::new(), None);
    let err = BackupEngine::init_from(
        MemoryStore::new(),
        &plain,
        init_options(Some("x")),
        engine_options(Some("x")),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[test]
fn a_damaged_source_pack_stops_the_copy_before_any_backup_is_visible() {
    let data = tempfile::tempdir().unwrap();
    write_version(data.path(), 1);
    let source_store = MemoryStore::new();
    let source = repository(source_store.clone(), Some("s"));
    backup(&source, data.path());
    let dest = copy_of(MemoryStore::new(), &source, Some("d"));

    let packs: Vec<String> = source_store
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("packs/"))
        .collect();
    for pack in &packs {
        let original = source_store.raw_get(pack).unwrap();
        let middle = original.len() / 2;
        source_store.corrupt(pack, |b| b[middle] ^= 1);
        let err = dest
            .copy_from(&source, &CopyOptions::default())
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{pack}: {err}");
        assert!(dest.list_backups().unwrap().is_empty(), "{pack}");
        source_store.raw_put(pack, original);
    }
    // What the failed copies wrote is left unindexed, and does not stop the next copy.
    let report = dest.copy_from(&source, &CopyOptions::default()).unwrap();
    assert_eq!(report.copied, [(1, 1)]);
    assert_eq!(restored(&dest, BackupSelector::Latest), files(data.path()));
}

#[test]
fn archives_are_copied_unless_left_out() {
    let source_store = MemoryStore::new();
    let source = repository(source_store.clone(), Some("s"));
    // Two clusters' archives, several segments each (the copy shares them among its threads).
    let segment = |archive: usize, n: usize| incompressible(50_000 + n, (archive * 100 + n) as u64);
    let name = |n: usize| format!("0000000100000000000000{n:02}");
    for archive in [1, 2] {
        for n in 0..5 {
            source
                .archive_put(&format!("wal-{archive}"), &name(n), &segment(archive, n))
                .unwrap();
        }
    }
    let dest = copy_of(MemoryStore::new(), &source, Some("d"));
    // One segment is there already: it is not copied again.
    dest.archive_put("wal-1", &name(0), &segment(1, 0)).unwrap();
    let report = dest.copy_from(&source, &CopyOptions::default()).unwrap();
    assert_eq!(report.archive_objects_copied, 9);
    for archive in [1, 2] {
        for n in 0..5 {
            assert_eq!(
                dest.archive_get(&format!("wal-{archive}"), &name(n))
                    .unwrap(),
                segment(archive, n)
            );
        }
    }
    let again = dest.copy_from(&source, &CopyOptions::default()).unwrap();
    assert_eq!(again.archive_objects_copied, 0);

    let without = copy_of(MemoryStore::new(), &source, Some("d"));
    without
        .copy_from(&source, &CopyOptions::default().with_archives(false))
        .unwrap();
    assert!(without.archive_list("wal-1").unwrap().is_empty());

    // A damaged object in the source is not copied: the copy stops, saying which.
    let key = format!("archive/wal-2/{}", name(3));
    let middle = source_store.raw_get(&key).unwrap().len() / 2;
    source_store.corrupt(&key, |b| b[middle] ^= 1);
    let err = copy_of(MemoryStore::new(), &source, Some("d"))
        .copy_from(&source, &CopyOptions::default())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(err.to_string().contains(&key), "{err}");
}

/// A copy that fails at any put (a full disk, a lost connection) leaves the destination valid:
/// its earlier backup verifies and restores, no copied backup is there unless whole, and the
/// next copy completes; gc then removes what the failed one left, so that a second gc finds
/// nothing unused.
#[test]
fn a_failure_at_any_put_of_a_copy_leaves_the_destination_valid() {
    let data = tempfile::tempdir().unwrap();
    let source = repository(MemoryStore::new(), Some("s"));
    write_version(data.path(), 1);
    backup(&source, data.path());
    let base = MemoryStore::new();
    let dest = BackupEngine::init_from(
        base.clone(),
        &source,
        init_options(Some("d")).with_pack_size(256 * 1024),
        engine_options(Some("d")),
    )
    .unwrap();
    dest.copy_from(&source, &CopyOptions::default()).unwrap();
    write_version(data.path(), 2);
    backup(&source, data.path());
    source
        .archive_put(
            "wal",
            "000000010000000000000001",
            &incompressible(50_000, 9),
        )
        .unwrap();
    let pristine = base.snapshot();
    let reset = || base.restore(&pristine);

    let counting = Arc::new(FaultStore::new(base.clone()));
    BackupEngine::open(Arc::clone(&counting), engine_options(Some("d")))
        .unwrap()
        .copy_from(&source, &CopyOptions::default())
        .unwrap();
    let puts = counting.puts_seen();
    assert!(puts >= 4, "expected several puts, saw {puts}");
    let expected = files(data.path());

    for fail_at in 0..puts {
        reset();
        let faulty = Arc::new(FaultStore::with_plan(
            base.clone(),
            FaultPlan::new().fail_put(fail_at),
        ));
        let failed = BackupEngine::open(Arc::clone(&faulty), engine_options(Some("d")))
            .unwrap()
            .copy_from(&source, &CopyOptions::default());
        assert!(
            failed.is_err(),
            "fail_at={fail_at}: the failed put went unnoticed"
        );
        let dest = BackupEngine::open(base.clone(), engine_options(Some("d"))).unwrap();
        let listed: Vec<u64> = dest.list_backups().unwrap().iter().map(|b| b.id).collect();
        assert!(
            listed == [1] || listed == [1, 2],
            "fail_at={fail_at}: {listed:?}"
        );
        assert!(
            dest.verify_all(VerifyLevel::Full).unwrap().is_ok(),
            "fail_at={fail_at}"
        );
        if listed == [1, 2] {
            assert_eq!(restored(&dest, BackupSelector::Latest), expected);
        }

        let report = dest.copy_from(&source, &CopyOptions::default()).unwrap();
        assert_eq!(report.copied.len() + report.already_there.len(), 2);
        assert_eq!(
            restored(&dest, BackupSelector::Latest),
            expected,
            "fail_at={fail_at}"
        );
        assert_eq!(
            dest.archive_get("wal", "000000010000000000000001").unwrap(),
            incompressible(50_000, 9)
        );
        let gc = dest
            .gc_with(
                &backstop::GcOptions::default()
                    .with_repack_unused_percent(0)
                    .with_superseded_grace(std::time::Duration::ZERO),
            )
            .unwrap();
        assert!(
            gc.packs_missing == 0 && gc.blobs_unindexed == 0,
            "fail_at={fail_at}"
        );
        let after = dest
            .gc_with(
                &backstop::GcOptions::default()
                    .with_repack_unused_percent(0)
                    .dry_run(true),
            )
            .unwrap();
        assert_eq!(
            (after.packs_deleted, after.packs_repacked),
            (0, 0),
            "fail_at={fail_at}"
        );
        assert!(dest.verify_all(VerifyLevel::Full).unwrap().is_ok());
        assert_eq!(restored(&dest, BackupSelector::Id(1)).len(), expected.len());
    }
}

/// A copy takes a shared lock on its source, as a backup does: while a gc runs there (its
/// exclusive lock) the copy is refused before anything is written, instead of reading packs
/// the gc deletes; afterwards it copies and leaves no lock behind. A source it may not write
/// to (read-only credentials) is copied without a lock.
#[test]
fn a_copy_locks_its_source_against_gc_and_copies_a_read_only_one_without() {
    use backstop::Store as _;
    let data = tempfile::tempdir().unwrap();
    let source_store = MemoryStore::new();
    let source = repository(source_store.clone(), Some("secret"));
    two_backups(&source, data.path());
    let dest = copy_of(MemoryStore::new(), &source, Some("secret"));

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let gc_lock = "locks/00000000000000000000000000000000";
    let info = format!(
        r#"{{"exclusive":true,"host":"other-host","pid":1,"time_unix":{now},"purpose":"gc"}}"#
    );
    source_store
        .put(gc_lock, info.as_bytes(), backstop::PutMode::Overwrite)
        .unwrap();
    let err = dest
        .copy_from(&source, &CopyOptions::default())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Locked, "{err}");
    assert!(dest.list_backups().unwrap().is_empty());

    source_store.delete(gc_lock).unwrap();
    let report = dest.copy_from(&source, &CopyOptions::default()).unwrap();
    assert_eq!(report.copied, [(1, 1), (2, 2)]);
    let locks = |store: &MemoryStore| {
        store
            .keys()
            .into_iter()
            .filter(|k| k.starts_with("locks/"))
            .count()
    };
    assert_eq!(
        locks(&source_store),
        0,
        "the copy left its lock in the source"
    );

    // Read-only: every put to the source is refused.
    let read_only = FaultStore::with_plan(
        source_store.clone(),
        FaultPlan::new()
            .fail_puts_from(0)
            .with_error_kind(backstop::store::StoreErrorKind::PermissionDenied),
    );
    let source = ReadOnlyEngine::open(read_only.clone(), engine_options(Some("secret"))).unwrap();
    let third = copy_of(MemoryStore::new(), &dest, Some("secret"));
    let report = third.copy_from(&source, &CopyOptions::default()).unwrap();
    assert_eq!(report.copied, [(1, 1), (2, 2)]);
    assert!(
        read_only.faults_injected() > 0,
        "the copy never tried to lock"
    );
    assert_eq!(locks(&source_store), 0);
}
