//! Repairing the index: a lost index object must not let gc delete the packs it listed, and
//! `repair index` indexes them again; a damaged index object stops every command with a
//! pointer to `repair index`, which replaces it; with `read_all_packs`, a damaged pack's intact
//! blobs are copied into new packs and the damaged ones left for a full-read backup to store
//! again.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::path::Path;

use backstop::{
    BackupEngine, BackupInfo, BackupOptions, BackupSelector, DirSource, EngineOptions, ErrorKind,
    GcOptions, InitOptions, MemoryStore, RepairEngine, RepairOptions, RepairReport, RestoreOptions,
    Store, VerifyLevel,
};

const PASSWORD: &str = "repair me";

fn options_with_password() -> EngineOptions {
    EngineOptions::default().with_password(PASSWORD)
}

#[path = "support/data.rs"]
mod data;
use data::incompressible;

/// A source of large files (blobs of their own, named in pack headers by id) and small ones
/// (framed, named in headers by place only), so that a rebuild needs both kinds of entry.
fn write_source(dir: &Path, round: u64) {
    for i in 0..3 {
        std::fs::write(
            dir.join(format!("big{i}")),
            incompressible(400_000, round * 10 + i),
        )
        .unwrap();
    }
    for i in 0..40 {
        std::fs::write(
            dir.join(format!("small{i}")),
            incompressible(3_000 + i as usize, round * 100 + i),
        )
        .unwrap();
    }
}

fn new_repository(store: &MemoryStore, pack_size: u32) -> BackupEngine {
    BackupEngine::init(
        store.clone(),
        InitOptions::default()
            .with_password(PASSWORD)
            .with_kdf(8 * 1024, 1)
            .with_chunk_sizes(16 * 1024, 64 * 1024, 256 * 1024)
            .with_pack_size(pack_size),
        options_with_password(),
    )
    .unwrap()
}

/// Backs up `dir` into `engine`.
fn back_up(engine: &BackupEngine, dir: &Path) -> BackupInfo {
    engine
        .create_backup(&mut DirSource::new(dir), &BackupOptions::default())
        .unwrap()
}

/// Runs `repair index` on the repository in `store`.
fn repair(store: &MemoryStore, options: &RepairOptions) -> RepairReport {
    RepairEngine::open(store.clone(), options_with_password())
        .unwrap()
        .repair_index(options)
        .unwrap()
}

/// Opens the repository in `store` and checks that a full verify finds nothing wrong.
fn open_and_verify(store: &MemoryStore) -> BackupEngine {
    let engine = BackupEngine::open(store.clone(), options_with_password()).unwrap();
    let verified = engine.verify_all(VerifyLevel::Full).unwrap();
    assert!(verified.is_ok(), "{:?}", verified.problems);
    engine
}

fn keys(store: &MemoryStore, prefix: &str) -> Vec<String> {
    store
        .keys()
        .into_iter()
        .filter(|k| k.starts_with(prefix))
        .collect()
}

/// Restores backup `id` and compares it with `expected`, a copy of the source as it was.
fn assert_restores(engine: &BackupEngine, id: u64, expected: &Path) {
    let target = tempfile::tempdir().unwrap();
    let into = target.path().join("r");
    engine
        .restore(BackupSelector::Id(id), &into, &RestoreOptions::default())
        .unwrap();
    let mut names: Vec<_> = std::fs::read_dir(expected)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for name in names {
        assert_eq!(
            std::fs::read(into.join(&name)).unwrap(),
            std::fs::read(expected.join(&name)).unwrap(),
            "{name:?} of backup {id}"
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// The whole index lost (say, the `index/` directory of a local repository): every backup's
/// file list is in no index, so gc refuses, changing nothing, and says what mends it;
/// `repair index` indexes every pack again, after which both backups verify and restore.
#[test]
fn a_lost_index_is_rebuilt_from_the_packs_and_gc_refuses_until_then() {
    let source = tempfile::tempdir().unwrap();
    let copies = tempfile::tempdir().unwrap();
    let store = MemoryStore::new();
    let engine = new_repository(&store, 512 * 1024);
    let mut ids = Vec::new();
    for round in 1..=2 {
        write_source(source.path(), round);
        copy_dir(source.path(), &copies.path().join(round.to_string()));
        let backup = back_up(&engine, source.path());
        ids.push(backup.id);
    }
    for key in keys(&store, "index/") {
        store.delete(&key).unwrap();
    }
    let packs = keys(&store, "packs/");

    let engine = BackupEngine::open(store.clone(), options_with_password()).unwrap();
    let err = engine.gc(false).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains("backstop repair index"), "{err}");
    assert_eq!(keys(&store, "packs/"), packs);

    // A dry run says what it would do and changes nothing.
    let before = store.keys();
    let dry = repair(&store, &RepairOptions::default().dry_run(true));
    assert_eq!(dry.packs_added, packs.len() as u64, "{dry:?}");
    assert_eq!(store.keys(), before);

    let report = repair(&store, &RepairOptions::default());
    assert_eq!(report.packs_added, packs.len() as u64, "{report:?}");
    assert_eq!(report.blobs_indexed, dry.blobs_indexed, "{report:?}");
    assert_eq!(report.index_objects_read, 0, "{report:?}");
    assert!(report.packs_unreadable.is_empty() && report.packs_damaged.is_empty());

    let engine = open_and_verify(&store);
    for (id, round) in ids.iter().zip(1..) {
        assert_restores(&engine, *id, &copies.path().join(round.to_string()));
    }
    let gc = engine.gc(false).unwrap();
    assert_eq!((gc.blobs_unindexed, gc.packs_deleted), (0, 0), "{gc:?}");

    // Rebuilt again from every pack, read whole, the index lists the same blobs.
    let all = repair(&store, &RepairOptions::default().read_all_packs(true));
    assert_eq!(all.blobs_indexed, report.blobs_indexed, "{all:?}");
    assert_eq!((all.blobs_damaged, all.packs_read), (0, packs.len() as u64));
    assert_eq!((all.index_objects_read, all.packs_added), (1, 0), "{all:?}");
}

/// An index object lost that lists only data the remaining backup uses (the first backup's,
/// since deleted; the second reused its blobs): the backup's file list reads, its data blobs
/// are in no index, and the packs holding them look like leftovers of an interrupted backup.
/// gc must keep them (before, it deleted them, and the backup was gone for good), and
/// `repair index` indexes them again.
#[test]
fn gc_keeps_packs_no_index_lists_while_backups_use_blobs_no_index_lists() {
    let source = tempfile::tempdir().unwrap();
    let store = MemoryStore::new();
    let engine = new_repository(&store, 512 * 1024);
    write_source(source.path(), 1);
    let first = back_up(&engine, source.path());
    let first_index = keys(&store, "index/");
    std::fs::write(source.path().join("new"), b"one more file").unwrap();
    let second = back_up(&engine, source.path());
    engine.delete_backup(first.id).unwrap();
    store.delete(&first_index[0]).unwrap();
    let packs = keys(&store, "packs/");

    let engine = BackupEngine::open(store.clone(), options_with_password()).unwrap();
    let gc = engine
        .gc_with(&GcOptions::default().with_superseded_grace(std::time::Duration::ZERO))
        .unwrap();
    assert!(gc.blobs_unindexed > 40, "{gc:?}");
    assert!(gc.packs_unindexed_kept >= 2, "{gc:?}");
    assert_eq!(gc.packs_deleted, 0, "{gc:?}");
    assert_eq!(keys(&store, "packs/"), packs);

    let report = repair(&store, &RepairOptions::default());
    assert_eq!(report.index_objects_read, 1, "{report:?}");
    assert_eq!(report.packs_added, gc.packs_unindexed_kept, "{report:?}");
    let engine = open_and_verify(&store);
    assert_restores(&engine, second.id, source.path());
}

/// A damaged index object stops every command that loads the index, with the way out in the
/// message; `repair index` replaces it without reading more than the packs it listed.
#[test]
fn a_damaged_index_object_names_the_way_out_and_repair_index_replaces_it() {
    let source = tempfile::tempdir().unwrap();
    let store = MemoryStore::new();
    let engine = new_repository(&store, 512 * 1024);
    write_source(source.path(), 1);
    let backup = back_up(&engine, source.path());
    let index = keys(&store, "index/").pop().unwrap();
    let mut bytes = store.raw_get(&index).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    store.raw_put(&index, bytes);

    let err = BackupEngine::open(store.clone(), options_with_password()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    let message = err.to_string();
    assert!(
        message.contains(&index) && message.contains("backstop repair index"),
        "{message}"
    );

    let report = repair(&store, &RepairOptions::default());
    assert_eq!(report.index_objects_damaged.len(), 1, "{report:?}");
    assert!(report.index_objects_damaged[0].starts_with(&index));
    assert_eq!(report.packs_added, report.packs_in_store, "{report:?}");
    assert_eq!((report.indexes_deleted, report.indexes_written), (1, 1));
    assert!(!store.keys().contains(&index));

    let engine = open_and_verify(&store);
    assert_restores(&engine, backup.id, source.path());
}

/// A pack damaged in place: `repair index --read-all-packs` copies its intact blobs into a new
/// pack and leaves it out of the index; verify then reports only the blobs it lost, which a
/// full-read backup of the same data stores again, and gc deletes the damaged pack.
#[test]
fn read_all_packs_salvages_a_damaged_packs_intact_blobs() {
    let source = tempfile::tempdir().unwrap();
    let store = MemoryStore::new();
    let engine = new_repository(&store, 512 * 1024);
    write_source(source.path(), 1);
    let backup = back_up(&engine, source.path());
    // A pack of several units, damaged near its start: its first unit is lost, the rest intact.
    let pack = keys(&store, "packs/")
        .into_iter()
        .max_by_key(|k| store.raw_get(k).unwrap().len())
        .unwrap();
    let mut bytes = store.raw_get(&pack).unwrap();
    bytes[100] ^= 1;
    store.raw_put(&pack, bytes);
    let verified = engine.verify_all(VerifyLevel::Full).unwrap();
    assert!(!verified.is_ok());
    // Verify names the files the damage costs: those of the damaged blobs.
    assert_eq!(verified.damaged_files.len(), 1, "{verified:?}");
    assert_eq!(verified.damaged_files[0].backup, backup.id);
    assert!(verified.damaged_files[0].files >= 1);

    let report = repair(&store, &RepairOptions::default().read_all_packs(true));
    assert_eq!(report.packs_damaged.len(), 1, "{report:?}");
    assert!(report.packs_damaged[0].starts_with(&pack), "{report:?}");
    assert!(report.blobs_damaged >= 1, "{report:?}");
    assert!(report.blobs_salvaged >= 1, "{report:?}");

    let engine = BackupEngine::open(store.clone(), options_with_password()).unwrap();
    let verified = engine.verify_all(VerifyLevel::Full).unwrap();
    assert!(!verified.problems.is_empty());
    assert!(
        verified
            .problems
            .iter()
            .all(|p| p.contains("no index lists it")),
        "{:?}",
        verified.problems
    );
    assert_eq!(verified.problems.len() as u64, report.blobs_damaged);

    let again = engine
        .create_backup(
            &mut DirSource::new(source.path()),
            &BackupOptions::default().with_full_read(true),
        )
        .unwrap();
    assert_eq!(again.blobs_added, report.blobs_damaged, "{again:?}");
    let verified = engine.verify_all(VerifyLevel::Full).unwrap();
    assert!(verified.is_ok(), "{:?}", verified.problems);
    assert_restores(&engine, backup.id, source.path());
    engine.gc(false).unwrap();
    assert!(!store.keys().contains(&pack), "the damaged pack stayed");
}
