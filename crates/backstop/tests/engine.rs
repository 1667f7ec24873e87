//! The engine core end to end on in-memory and local stores: round trips, deduplication,
//! corruption, crash safety, passwords and format versions. These are the properties every
//! database source relies on, so they are tested here without any database.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use backstop::store::{FaultPlan, FaultStore};
use backstop::{
    BackupEngine, BackupInfo, BackupOptions, ChangeModel, DirSource, EngineOptions, ErrorKind,
    ExistingTarget, InitOptions, MemoryStore, ReadOnlyEngine, RestoreOptions, RetentionPolicy,
    Session, SessionContext, SessionOutcome, Source, SourceError, VerifyLevel,
};

fn fast_init() -> InitOptions {
    InitOptions::default()
        .with_kdf(8 * 1024, 1)
        .with_chunk_sizes(16 * 1024, 64 * 1024, 256 * 1024)
}

fn encrypted() -> InitOptions {
    fast_init().with_password("secret")
}

fn opts() -> EngineOptions {
    EngineOptions::default()
        .with_password("secret")
        .with_threads(2)
}

/// A file's content, mode and mtime, or a symlink's target, by relative path.
fn describe_tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let md = std::fs::symlink_metadata(&path).unwrap();
            let desc = if md.file_type().is_symlink() {
                format!("link->{}", std::fs::read_link(&path).unwrap().display())
            } else if md.is_dir() {
                stack.push(path.clone());
                format!("dir {:o} {}", md.mode() & 0o7777, md.mtime())
            } else {
                let data = std::fs::read(&path).unwrap();
                format!(
                    "file {:o} {}.{} {}",
                    md.mode() & 0o7777,
                    md.mtime(),
                    md.mtime_nsec(),
                    blake3::hash(&data).to_hex()
                )
            };
            out.insert(rel, desc);
        }
    }
    out
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sample_tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::write(root.join("small.txt"), b"hello").unwrap();
    std::fs::write(root.join("sub/random.bin"), pseudo_random(700_000, 1)).unwrap();
    std::fs::write(root.join("sub/deeper/zeros"), vec![0u8; 300_000]).unwrap();
    std::fs::write(root.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("sub/random.bin", root.join("link")).unwrap();
    std::fs::set_permissions(
        root.join("small.txt"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
}

/// Restores the latest backup into a fresh directory and compares it with `source`.
fn assert_latest_restores_as(engine: &ReadOnlyEngine, source: &Path) {
    let target = tempfile::tempdir().unwrap();
    engine
        .restore(
            backstop::BackupSelector::Latest,
            target.path(),
            &RestoreOptions::default(),
        )
        .unwrap();
    assert_eq!(describe_tree(source), describe_tree(target.path()));
}

#[test]
fn backup_verify_restore_round_trip_encrypted() {
    let data = tempfile::tempdir().unwrap();
    sample_tree(data.path());
    let store = MemoryStore::new();
    let engine = BackupEngine::init(store.clone(), encrypted(), opts()).unwrap();
    let info = engine
        .create_backup(
            &mut DirSource::new(data.path()),
            &BackupOptions::default()
                .with_tag("t1")
                .with_metadata("k", "v")
                .with_message("m"),
        )
        .unwrap();
    assert_eq!(info.id, 1);
    assert_eq!(info.files, 4);
    assert_eq!(info.tags, ["t1"]);
    assert_eq!(info.metadata.get("k").map(String::as_str), Some("v"));
    assert!(engine.verify(1, VerifyLevel::Full).unwrap().is_ok());

    // A fresh read-only engine on the same store sees the same backup.
    let ro = ReadOnlyEngine::open(store, opts()).unwrap();
    assert_latest_restores_as(&ro, data.path());

    // Without the final flush the same files come back, and the restore still removes its
    // marker of an unfinished restore (describe_tree lists every file, the marker included).
    let scratch = tempfile::tempdir().unwrap();
    ro.restore(
        backstop::BackupSelector::Latest,
        scratch.path(),
        &RestoreOptions::default().with_sync(false),
    )
    .unwrap();
    assert_eq!(describe_tree(data.path()), describe_tree(scratch.path()));
}

/// Each cipher backs up, verifies and restores, and every object carries the version this build
/// writes (6: 16-byte blob ids in an encrypted repository), so that older builds refuse them
/// rather than misread.
#[test]
fn both_ciphers_round_trip_and_write_the_current_version() {
    use backstop::{Cipher, Store};
    let data = tempfile::tempdir().unwrap();
    sample_tree(data.path());
    for (cipher, version) in [(Cipher::XChaCha20Poly1305, 6u8), (Cipher::Xaes256Gcm, 6)] {
        let store = MemoryStore::new();
        let init = encrypted().with_cipher(cipher);
        let engine = BackupEngine::init(store.clone(), init, opts()).unwrap();
        engine
            .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
            .unwrap();
        let ro = ReadOnlyEngine::open(store.clone(), opts()).unwrap();
        let info = ro.repository_info();
        assert_eq!(info.cipher, Some(cipher));
        assert_eq!(info.version, u32::from(version), "{cipher}");
        assert!(ro.verify(1, VerifyLevel::Full).unwrap().is_ok());
        assert_latest_restores_as(&ro, data.path());
        // Every envelope carries the version: the config, index and snapshot objects.
        let mut envelopes = 0;
        for prefix in ["config", "index/", "snapshots/"] {
            for meta in store.list(prefix).unwrap() {
                let bytes = store.get(&meta.key).unwrap();
                assert_eq!(bytes[5], version, "{cipher}: {}", meta.key);
                envelopes += 1;
            }
        }
        assert!(envelopes >= 3, "{envelopes}");
    }
    // An unencrypted repository records no cipher.
    let engine =
        BackupEngine::init(MemoryStore::new(), fast_init(), EngineOptions::default()).unwrap();
    let info = engine.repository_info();
    assert_eq!((info.cipher, info.version), (None, 6));
}

#[test]
fn unchanged_tree_adds_no_pack_bytes_and_is_not_reread() {
    let data = tempfile::tempdir().unwrap();
    sample_tree(data.path());
    // Make the files old enough that their timestamps prove them unchanged.
    for f in ["small.txt", "sub/random.bin", "sub/deeper/zeros", "empty"] {
        let t = filetime::FileTime::from_unix_time(1_600_000_000, 0);
        filetime::set_file_mtime(data.path().join(f), t).unwrap();
    }
    let engine = BackupEngine::init(MemoryStore::new(), encrypted(), opts()).unwrap();
    let first = engine
        .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
        .unwrap();
    let second = engine
        .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
        .unwrap();
    assert!(first.bytes_added > 0);
    assert_eq!(second.bytes_added, 0, "an unchanged tree added pack bytes");
    assert_eq!(second.bytes_read, 0, "unchanged files were read again");
    assert_eq!(second.parent, Some(first.id));
    let full = engine
        .create_backup(
            &mut DirSource::new(data.path()),
            &BackupOptions::default().with_full_read(true),
        )
        .unwrap();
    assert_eq!(full.bytes_read, first.bytes_read);
    assert_eq!(full.bytes_added, 0);
}

/// Counts what a streamed phase reports it listed; `wants_totals` asks for the scan.
#[derive(Default)]
struct FoundCount {
    wants_totals: bool,
    files: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

impl backstop::Progress for FoundCount {
    fn found(&self, files: u64, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.files.fetch_add(files, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
    }
    fn wants_totals(&self) -> bool {
        self.wants_totals
    }
}

#[test]
fn a_changed_tree_rereads_only_new_and_changed_files_whatever_their_names_sort_like() {
    let data = tempfile::tempdir().unwrap();
    let old = filetime::FileTime::from_unix_time(1_600_000_000, 0);
    let write = |path: &str, len: usize, seed: u64| {
        let file = data.path().join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, pseudo_random(len, seed)).unwrap();
        filetime::set_file_mtime(&file, old).unwrap();
    };
    // Byte order puts "a-b" before "a/x/1" and "ab/z0" before "ab/z/…"; the walk lists a
    // directory's own entries before entering any subdirectory.
    let first_tree = [
        ("a/x/1", 1_000),
        ("a-b", 2_000),
        ("a.c/2", 3_000),
        ("ab/z/deep/3", 4_000),
        ("ab/z0", 4_500),
        ("b", 5_000),
        ("z/9", 6_000),
    ];
    for (seed, (path, len)) in first_tree.iter().enumerate() {
        write(path, *len, seed as u64);
    }
    let engine = BackupEngine::init(MemoryStore::new(), fast_init(), opts()).unwrap();
    let first = engine
        .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
        .unwrap();
    assert_eq!(first.bytes_read, 25_500);

    std::fs::remove_file(data.path().join("a-b")).unwrap();
    std::fs::remove_dir_all(data.path().join("z")).unwrap();
    write("a-a", 700, 100);
    write("ab/z/deep/2", 800, 101);
    write("a.c/2", 3_100, 102);
    write("zz/1", 900, 103);
    let found = Arc::new(FoundCount::default());
    let second = engine
        .create_backup(
            &mut DirSource::new(data.path()),
            &BackupOptions::default().with_progress(found.clone()),
        )
        .unwrap();
    assert_eq!(second.parent, Some(first.id));
    assert_eq!(
        second.bytes_read,
        700 + 800 + 3_100 + 900,
        "only the new and the changed files are read"
    );
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(found.files.load(Relaxed), second.files);
    assert_eq!(found.bytes.load(Relaxed), second.size);
    assert_eq!(second.files, 8);
    // A progress bar's totals come from a scan ahead of the backup, which counts the same.
    let scanned = Arc::new(FoundCount {
        wants_totals: true,
        ..FoundCount::default()
    });
    let third = engine
        .create_backup(
            &mut DirSource::new(data.path()),
            &BackupOptions::default().with_progress(scanned.clone()),
        )
        .unwrap();
    assert_eq!(third.bytes_read, 0);
    assert_eq!(
        (scanned.files.load(Relaxed), scanned.bytes.load(Relaxed)),
        (third.files, third.size)
    );

    let target = tempfile::tempdir().unwrap();
    engine
        .restore(second.id, target.path(), &RestoreOptions::default())
        .unwrap();
    assert_eq!(describe_tree(target.path()), describe_tree(data.path()));
}

/// Marks every file of a directory as a page file of pages of the given size.
struct PagedDir(DirSource, u32);

impl Source for PagedDir {
    fn kind(&self) -> &str {
        "paged-dir"
    }
    fn identity(&self) -> String {
        self.0.identity()
    }
    fn begin(&mut self, ctx: &SessionContext) -> Result<Box<dyn Session + '_>, SourceError> {
        let mut inner = self.0.begin(ctx)?;
        let mut phase = inner.next_phase()?.unwrap_or_default();
        let page_size = self.1;
        phase.stream = phase.stream.map(|stream| {
            stream.map_entries(move |mut e| {
                e.change = ChangeModel::Pages { page_size };
                Ok(e)
            })
        });
        Ok(Box::new(OnePhase(Some(phase))))
    }
}

struct OnePhase(Option<backstop::Phase>);

impl Session for OnePhase {
    fn next_phase(&mut self) -> Result<Option<backstop::Phase>, SourceError> {
        Ok(self.0.take())
    }
    fn finish(self: Box<Self>) -> Result<SessionOutcome, SourceError> {
        Ok(SessionOutcome::default())
    }
}

/// Deletes a backup, then runs a gc that rewrites every pack with anything unused in it and a
/// second one that deletes the packs the first superseded.
fn delete_and_rewrite_every_pack(engine: &BackupEngine, id: u64) {
    engine.delete_backup(id).unwrap();
    let rewrite_all = backstop::GcOptions::default()
        .with_repack_unused_percent(0)
        .with_superseded_grace(std::time::Duration::ZERO);
    let report = engine.gc_with(&rewrite_all).unwrap();
    assert!(report.packs_repacked >= 1, "{report:?}");
    engine.gc_with(&rewrite_all).unwrap();
}

#[test]
fn one_changed_page_of_a_100_mib_page_file_adds_one_block_and_a_small_patch() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("table.db");
    let mut bytes = pseudo_random(100 << 20, 7);
    std::fs::write(&file, &bytes).unwrap();
    let engine = BackupEngine::init(
        MemoryStore::new(),
        fast_init(),
        EngineOptions::default().with_compression_level(0),
    )
    .unwrap();
    let mut source = PagedDir(DirSource::new(data.path()), 8192);
    let first = engine
        .create_backup(&mut source, &BackupOptions::default())
        .unwrap();
    assert_eq!(
        first.blobs_added,
        12_800 + 4 + 1,
        "100 MiB in 8 KiB blocks, their ids in four lists of 4096, and the tree"
    );
    let change_page = |bytes: &mut Vec<u8>, page: usize| {
        for b in &mut bytes[page * 8192..(page + 1) * 8192] {
            *b = b.wrapping_add(1);
        }
        std::fs::write(&file, &*bytes).unwrap();
    };
    change_page(&mut bytes, 4_321);
    let second = engine
        .create_backup(&mut source, &BackupOptions::default())
        .unwrap();
    // The block, a patch of its list (the other three lists are reused) and the tree: not the
    // 400 KB of all the file's ids again.
    assert_eq!(second.blobs_added, 3);
    assert!(
        second.bytes_added_raw < 8192 + 2_000,
        "{}",
        second.bytes_added_raw
    );
    let restored = |id: u64| {
        let target = tempfile::tempdir().unwrap();
        engine
            .restore(id, target.path(), &RestoreOptions::default())
            .unwrap();
        std::fs::read(target.path().join("table.db")).unwrap()
    };
    assert_eq!(restored(second.id), bytes);

    // The patch's base is the first backup's list: deleting that backup must keep it, even
    // when gc rewrites every pack with anything unused in it.
    delete_and_rewrite_every_pack(&engine, first.id);
    let verified = engine.verify(second.id, VerifyLevel::Full).unwrap();
    assert!(verified.is_ok(), "{verified:?}");
    assert_eq!(restored(second.id), bytes);

    // A third backup patches the same base again, carrying the earlier change.
    change_page(&mut bytes, 4_000);
    let third = engine
        .create_backup(&mut source, &BackupOptions::default())
        .unwrap();
    assert_eq!(third.blobs_added, 3);
    assert_eq!(restored(third.id), bytes);
}

/// Backs `file` (holding `bytes`, cut into 4 KiB pages) up into a fresh repository that `init`
/// creates and that is then set to format `version`, and again with a byte of `page` changed;
/// checks that a fresh engine restores and verifies both, and that the config and every index
/// and snapshot object carry `version`. Returns the store and both backups; `bytes` ends as it
/// began.
fn two_backups_in_version(
    init: InitOptions,
    options: EngineOptions,
    version: u32,
    file: &Path,
    bytes: &mut [u8],
    page: usize,
) -> (MemoryStore, BackupInfo, BackupInfo) {
    let store = MemoryStore::new();
    BackupEngine::init(store.clone(), init, options.clone()).unwrap();
    backstop::testing_support::set_config_version(&store, version).unwrap();
    let engine = BackupEngine::open(store.clone(), options.clone()).unwrap();
    assert_eq!(engine.repository_info().version, version);
    std::fs::write(file, &*bytes).unwrap();
    let mut source = PagedDir(DirSource::new(file.parent().unwrap()), 4096);
    let first = engine
        .create_backup(&mut source, &BackupOptions::default())
        .unwrap();
    let original = bytes.to_vec();
    bytes[page * 4096] ^= 1;
    std::fs::write(file, &*bytes).unwrap();
    let second = engine
        .create_backup(&mut source, &BackupOptions::default())
        .unwrap();
    // A fresh engine reads the index back from the store.
    let engine = BackupEngine::open(store.clone(), options).unwrap();
    for (id, expected) in [(first.id, &original[..]), (second.id, &*bytes)] {
        let target = tempfile::tempdir().unwrap();
        engine
            .restore(id, target.path(), &RestoreOptions::default())
            .unwrap();
        assert!(std::fs::read(target.path().join(file.file_name().unwrap())).unwrap() == expected);
    }
    assert!(engine.verify_all(VerifyLevel::Full).unwrap().is_ok());
    for prefix in ["config", "index/", "snapshots/"] {
        for meta in backstop::Store::list(&store, prefix).unwrap() {
            let object = backstop::Store::get(&store, &meta.key).unwrap();
            assert_eq!(u32::from(object[5]), version, "{}", meta.key);
        }
    }
    bytes[page * 4096] ^= 1;
    (store, first, second)
}

/// A repository created as version 5 stores 16 bytes an id in its chunk lists; one created
/// before keeps full ids there (and its version in every object), so that the builds of its
/// version go on reading it. Both restore what they stored.
#[test]
fn chunk_lists_hold_short_ids_only_in_a_repository_of_version_5() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("table.db");
    let pages = 3 * 4096;
    let mut bytes = pseudo_random(pages * 4096, 11);
    std::fs::write(&file, &bytes).unwrap();
    let options = || EngineOptions::default().with_compression_level(0);
    let mut added = BTreeMap::new();
    for version in [4u32, 5] {
        let (_, first, second) =
            two_backups_in_version(fast_init(), options(), version, &file, &mut bytes, 5000);
        added.insert(version, (first.bytes_added_raw, second.bytes_added_raw));
    }
    // The full lists: 16 bytes less an id, less a digest and its key per list.
    let saved = added[&4].0 - added[&5].0;
    let expected = pages as u64 * 16;
    assert!(
        (expected - 200..=expected).contains(&saved),
        "{saved} bytes saved, {expected} expected: {added:?}"
    );
    // A patch of one page gains a digest and loses 16 bytes.
    assert!(added[&5].1.abs_diff(added[&4].1) < 64, "{added:?}");
}

/// An encrypted repository created as version 6 names its blobs by the first 16 bytes of
/// their keyed hash, so each blob costs 16 bytes less in the index; an unencrypted one (whose
/// ids anyone can compute, and so search for collisions) keeps 32. Both restore and verify
/// what they stored, find the unchanged pages of a second backup, and write their own version.
#[test]
fn an_encrypted_repository_of_version_6_names_blobs_by_16_bytes() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("table.db");
    let pages = 2 * 4096;
    let mut bytes = pseudo_random(pages * 4096, 12);
    let index_bytes = |store: &MemoryStore| -> u64 {
        backstop::Store::list(store, "index/")
            .unwrap()
            .iter()
            .map(|m| m.size)
            .sum()
    };
    let mut index = BTreeMap::new();
    for encrypted_repo in [true, false] {
        for version in [5u32, 6] {
            let (init, options) = if encrypted_repo {
                (encrypted(), opts())
            } else {
                (fast_init(), EngineOptions::default().with_threads(2))
            };
            let (store, first, second) =
                two_backups_in_version(init, options, version, &file, &mut bytes, 4321);
            assert_eq!(
                first.blobs_added,
                pages as u64 + 2 + 1,
                "pages, lists, tree"
            );
            assert_eq!(
                second.blobs_added, 3,
                "the page, a patch of its list, the tree"
            );
            index.insert(
                (encrypted_repo, version),
                (index_bytes(&store), first.blobs_added + second.blobs_added),
            );
        }
    }
    let (v5, blobs) = index[&(true, 5)];
    let (v6, _) = index[&(true, 6)];
    let saved = v5 - v6;
    assert!(
        (15 * blobs..=17 * blobs).contains(&saved),
        "an encrypted index saved {saved} bytes for {blobs} blobs: {index:?}"
    );
    let (plain5, _) = index[&(false, 5)];
    let (plain6, _) = index[&(false, 6)];
    assert!(
        plain5.abs_diff(plain6) < plain5 / 100,
        "an unencrypted index keeps its full ids: {index:?}"
    );
}

#[test]
fn wrong_password_is_refused_with_wrong_key() {
    let store = MemoryStore::new();
    BackupEngine::init(store.clone(), encrypted(), opts()).unwrap();
    let err = BackupEngine::open(
        store.clone(),
        EngineOptions::default().with_password("nope"),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongKey, "{err}");
    let err = BackupEngine::open(store, EngineOptions::default()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongKey, "{err}");
}

#[test]
fn missing_repository_is_not_found() {
    let err = BackupEngine::open(MemoryStore::new(), opts()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("backstop init"), "{err}");
}

#[test]
fn init_twice_is_refused() {
    let store = MemoryStore::new();
    BackupEngine::init(store.clone(), encrypted(), opts()).unwrap();
    let err = BackupEngine::init(store, encrypted(), opts()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
}

#[test]
fn newer_format_is_refused_not_misread() {
    let store = MemoryStore::new();
    BackupEngine::init(store.clone(), encrypted(), opts()).unwrap();
    // One past the newest version this build reads (6).
    assert!(store.corrupt("config", |b| b[5] = 7));
    let err = BackupEngine::open(store, opts()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Incompatible, "{err}");
    let message = std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    assert!(
        message.contains("`config` was written by a newer Backstop"),
        "{err}"
    );
    assert!(message.contains("upgrade backstop"), "{message}");
    assert!(!message.contains("damaged"), "{message}");
}

#[test]
fn keys_can_be_added_changed_and_removed() {
    let store = MemoryStore::new();
    let engine = BackupEngine::init(store.clone(), encrypted(), opts()).unwrap();
    let second = engine.add_key("other").unwrap();
    assert_eq!(engine.list_keys().unwrap().len(), 2);
    let by_other = BackupEngine::open(
        store.clone(),
        EngineOptions::default().with_password("other"),
    )
    .unwrap();
    let keys = by_other.list_keys().unwrap();
    assert!(keys.iter().any(|k| k.id == second && k.current));
    let err = by_other.remove_key(&second).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    // Nor by the start of its id (the key in use is found first, then refused).
    let err = by_other.remove_key(&second[..8]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert_eq!(
        by_other.remove_key("").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let first = keys.iter().find(|k| !k.current).unwrap().id.clone();
    // A unique prefix names a key, as `key list` shows ids in full and people copy the start.
    assert_eq!(by_other.remove_key(&first[..8]).unwrap(), first);
    assert_eq!(
        BackupEngine::open(store.clone(), opts())
            .unwrap_err()
            .kind(),
        ErrorKind::WrongKey
    );
    by_other.change_password("third").unwrap();
    BackupEngine::open(store, EngineOptions::default().with_password("third")).unwrap();
}

#[test]
fn restore_refuses_a_non_empty_target_unless_told() {
    let data = tempfile::tempdir().unwrap();
    sample_tree(data.path());
    let engine = BackupEngine::init(MemoryStore::new(), encrypted(), opts()).unwrap();
    let info = engine
        .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
        .unwrap();
    let target = tempfile::tempdir().unwrap();
    std::fs::write(target.path().join("precious"), b"keep").unwrap();
    let err = engine
        .restore(info.id, target.path(), &RestoreOptions::default())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert_eq!(
        std::fs::read(target.path().join("precious")).unwrap(),
        b"keep"
    );
    engine
        .restore(
            info.id,
            target.path(),
            &RestoreOptions::default().with_existing(ExistingTarget::Overwrite),
        )
        .unwrap();
    assert_eq!(
        std::fs::read(target.path().join("small.txt")).unwrap(),
        b"hello"
    );
    assert_eq!(
        std::fs::read(target.path().join("precious")).unwrap(),
        b"keep"
    );
}

/// A target in the way is refused before the backup's tree is read from the store (which
/// takes a while for a large backup, only to be told to pick another directory).
#[test]
fn a_non_empty_target_is_refused_before_the_tree_is_read() {
    let data = tempfile::tempdir().unwrap();
    sample_tree(data.path());
    let store = Arc::new(backstop::store::CountingStore::new(MemoryStore::new()));
    let engine = BackupEngine::init(store.clone(), encrypted(), opts()).unwrap();
    let info = engine
        .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
        .unwrap();
    let target = tempfile::tempdir().unwrap();
    std::fs::write(target.path().join("precious"), b"keep").unwrap();
    let before = store.counts();
    let err = engine
        .restore(info.id, target.path(), &RestoreOptions::default())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    let read = store.counts().since(&before);
    // The snapshot object only: trees live in packs, and reading one is another request.
    assert_eq!((read.gets, read.range_gets), (1, 0), "{read:?}");
}

/// An option the backup's restore procedure does not take (a misspelling, or one meant for
/// another kind of database) is refused before anything is written: it used to be ignored,
/// and the user got a restore without what they asked for.
#[test]
fn a_restore_option_the_procedure_does_not_take_is_refused_before_anything_is_written() {
    let data = tempfile::tempdir().unwrap();
    sample_tree(data.path());
    let engine = BackupEngine::init(MemoryStore::new(), encrypted(), opts()).unwrap();
    let info = engine
        .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
        .unwrap();
    let outer = tempfile::tempdir().unwrap();
    let target = outer.path().join("r");
    let err = engine
        .restore(
            info.id,
            &target,
            &RestoreOptions::default().with_fixup_option("integrity-check", "full"),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("`integrity-check`"), "{err}");
    assert!(!target.exists(), "the target was created");
    // The option every restore is given (only PostgreSQL's uses it) passes.
    engine
        .restore(
            info.id,
            &target,
            &RestoreOptions::default().with_fixup_option("restore-command", "true"),
        )
        .unwrap();
}

/// Paths that are hard links of one file come back as hard links of one file (they came back
/// as separate copies); a file with the same content that was not linked stays separate, and a
/// partial restore of one link writes it as a file.
#[test]
fn hard_links_come_back_as_hard_links() {
    use std::os::unix::fs::MetadataExt as _;
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir(data.path().join("sub")).unwrap();
    let bytes = pseudo_random(200_000, 5);
    std::fs::write(data.path().join("a"), &bytes).unwrap();
    std::fs::hard_link(data.path().join("a"), data.path().join("sub/b")).unwrap();
    std::fs::write(data.path().join("c"), &bytes).unwrap();
    let engine = BackupEngine::init(MemoryStore::new(), encrypted(), opts()).unwrap();
    let info = engine
        .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
        .unwrap();

    let target = tempfile::tempdir().unwrap();
    let into = target.path().join("r");
    let restored = engine
        .restore(info.id, &into, &RestoreOptions::default())
        .unwrap();
    assert_eq!(
        (restored.files, restored.hard_links),
        (3, 1),
        "{restored:?}"
    );
    let meta = |p: &str| std::fs::metadata(into.join(p)).unwrap();
    assert_eq!(meta("a").ino(), meta("sub/b").ino());
    assert_eq!(meta("a").nlink(), 2);
    assert_ne!(meta("a").ino(), meta("c").ino());
    for path in ["a", "sub/b", "c"] {
        assert_eq!(std::fs::read(into.join(path)).unwrap(), bytes, "{path}");
    }
    assert_eq!(describe_tree(&into), describe_tree(data.path()));

    let part = target.path().join("part");
    let restored = engine
        .restore(
            info.id,
            &part,
            &RestoreOptions::default().with_include(vec!["sub".into()]),
        )
        .unwrap();
    assert_eq!(
        (restored.files, restored.hard_links),
        (1, 0),
        "{restored:?}"
    );
    assert_eq!(std::fs::read(part.join("sub/b")).unwrap(), bytes);
}

/// A delta restore over a copy that diverged makes it the backup again: a file with a few
/// changed bytes gets only the chunks around them written, in place (same inode), a missing
/// file comes back, a file whose mode alone changed gets its mode, and what the backup does not
/// have goes (an extra file, an extra directory tree, a file where the backup has a directory,
/// a regular file where it has a symlink).
#[test]
fn a_delta_restore_writes_only_what_differs_and_deletes_what_the_backup_lacks() {
    let data = tempfile::tempdir().unwrap();
    sample_tree(data.path());
    let big = pseudo_random(2_000_000, 7);
    std::fs::write(data.path().join("big.bin"), &big).unwrap();
    std::fs::create_dir(data.path().join("d")).unwrap();
    std::fs::write(data.path().join("d/inside"), b"in d").unwrap();
    let engine = BackupEngine::init(MemoryStore::new(), encrypted(), opts()).unwrap();
    let info = engine
        .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
        .unwrap();
    let target = tempfile::tempdir().unwrap();
    let t = |p: &str| target.path().join(p);
    engine
        .restore(info.id, target.path(), &RestoreOptions::default())
        .unwrap();
    let big_inode = std::fs::metadata(t("big.bin")).unwrap().ino();

    // The copy diverges.
    let mut changed = big.clone();
    changed[1_000_000..1_000_100].fill(0xAB);
    std::fs::write(t("big.bin"), &changed).unwrap();
    std::fs::write(t("small.txt"), b"hello, but longer now").unwrap();
    std::fs::remove_file(t("sub/deeper/zeros")).unwrap();
    std::fs::set_permissions(t("empty"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(t("extra.txt"), b"not in the backup").unwrap();
    std::fs::create_dir_all(t("junk/deep")).unwrap();
    std::fs::write(t("junk/deep/file"), b"junk").unwrap();
    std::fs::remove_dir_all(t("d")).unwrap();
    std::fs::write(t("d"), b"a file where the backup has a directory").unwrap();
    std::fs::remove_file(t("link")).unwrap();
    std::fs::write(t("link"), b"a file where the backup has a symlink").unwrap();
    // What fsck keeps at the top of a filesystem is left alone.
    std::fs::create_dir(t("lost+found")).unwrap();

    let restored = engine
        .restore(
            info.id,
            target.path(),
            &RestoreOptions::default().with_existing(ExistingTarget::Delta),
        )
        .unwrap();
    assert!(t("lost+found").is_dir());
    std::fs::remove_dir(t("lost+found")).unwrap();
    assert_eq!(describe_tree(target.path()), describe_tree(data.path()));
    assert_eq!(
        std::fs::metadata(t("big.bin")).unwrap().ino(),
        big_inode,
        "big.bin was rewritten, not mended in place"
    );
    assert_eq!(restored.removed, 4, "{restored:?}");
    // Chunks are at most 256 KiB: the changed bytes touch one or two of big.bin's, and the
    // other files written are small; the rest of big.bin and random.bin were kept.
    assert!(restored.bytes <= 2 * 256 * 1024 + 400_000, "{restored:?}");
    assert!(
        restored.bytes_kept >= 2_000_000 + 700_000 - 2 * 256 * 1024,
        "{restored:?}"
    );
    assert!(!t(".backstop-restore-incomplete").exists());

    // Run again on what it made: nothing differs, nothing is written or deleted.
    let again = engine
        .restore(
            info.id,
            target.path(),
            &RestoreOptions::default().with_existing(ExistingTarget::Delta),
        )
        .unwrap();
    assert_eq!((again.bytes, again.removed), (0, 0), "{again:?}");
    assert_eq!(describe_tree(target.path()), describe_tree(data.path()));
}

/// Delta restores over copies mangled at random (bytes flipped, files cut, grown, deleted,
/// added, turned into directories or symlinks to a file outside, directories turned into
/// files or into symlinks to a directory outside, modes changed, files hard-linked from
/// outside) always give back the backup exactly, and never change anything outside.
#[test]
fn delta_restores_over_randomly_mangled_copies_give_back_the_backup() {
    let data = tempfile::tempdir().unwrap();
    sample_tree(data.path());
    std::fs::create_dir_all(data.path().join("a/b")).unwrap();
    for (i, len) in [0usize, 10, 5_000, 70_000, 600_000, 1_300_000]
        .iter()
        .enumerate()
    {
        let dir = ["", "a/", "a/b/"][i % 3];
        std::fs::write(
            data.path().join(format!("{dir}f{i}")),
            pseudo_random(*len, 40 + i as u64),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("../f1", data.path().join("a/up")).unwrap();
    let engine = BackupEngine::init(MemoryStore::new(), encrypted(), opts()).unwrap();
    let info = engine
        .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
        .unwrap();
    let want = describe_tree(data.path());
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, b"outside the target").unwrap();
    // A directory outside holding files of the names the backup's directories hold.
    let decoy = outside.path().join("decoy");
    std::fs::create_dir_all(decoy.join("b")).unwrap();
    for name in ["f1", "f4", "b/f2", "b/f5", "up"] {
        std::fs::write(decoy.join(name), b"outside the target").unwrap();
    }

    let target = tempfile::tempdir().unwrap();
    let root = target.path();
    engine
        .restore(info.id, root, &RestoreOptions::default())
        .unwrap();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut rand = move |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n as u64) as usize
    };
    let mut kinds = [0u32; 11];
    for round in 0..40 {
        let mut done = Vec::new();
        for _ in 0..1 + rand(4) {
            let (files, dirs) = walk(root);
            let file = files.get(rand(files.len().max(1))).cloned();
            let dir = dirs[rand(dirs.len())].clone();
            let kind = rand(11);
            let before = done.len();
            match (kind, file) {
                (0, Some(f)) => {
                    let mut bytes = std::fs::read(&f).unwrap();
                    if !bytes.is_empty() {
                        let at = rand(bytes.len());
                        bytes[at] ^= 0x5A;
                        std::fs::write(&f, bytes).unwrap();
                        done.push(format!("flip {}", f.display()));
                    }
                }
                (1, Some(f)) => {
                    let len = std::fs::metadata(&f).unwrap().len();
                    let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
                    file.set_len(rand(len as usize + 1) as u64).unwrap();
                    done.push(format!("cut {}", f.display()));
                }
                (2, Some(f)) => {
                    use std::io::Write as _;
                    let mut file = std::fs::OpenOptions::new().append(true).open(&f).unwrap();
                    file.write_all(&pseudo_random(1 + rand(100_000), round))
                        .unwrap();
                    done.push(format!("grow {}", f.display()));
                }
                (3, Some(f)) => {
                    std::fs::remove_file(&f).unwrap();
                    done.push(format!("delete {}", f.display()));
                }
                (4, _) => {
                    let new = dir.join(format!("new{round}"));
                    std::fs::write(&new, pseudo_random(rand(50_000), round)).unwrap();
                    done.push(format!("add {}", new.display()));
                }
                (5, Some(f)) => {
                    std::fs::remove_file(&f).unwrap();
                    std::fs::create_dir(&f).unwrap();
                    std::fs::write(f.join("inside"), b"x").unwrap();
                    done.push(format!("file to dir {}", f.display()));
                }
                (6, _) if dir != root => {
                    std::fs::remove_dir_all(&dir).unwrap();
                    std::fs::write(&dir, b"was a directory").unwrap();
                    done.push(format!("dir to file {}", dir.display()));
                }
                (7, Some(f)) => {
                    std::fs::remove_file(&f).unwrap();
                    std::os::unix::fs::symlink(&victim, &f).unwrap();
                    done.push(format!("file to symlink {}", f.display()));
                }
                (8, Some(f)) => {
                    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o604)).unwrap();
                    done.push(format!("chmod {}", f.display()));
                }
                (9, Some(f)) => {
                    std::fs::remove_file(&f).unwrap();
                    std::fs::hard_link(&victim, &f).unwrap();
                    done.push(format!("hard link {}", f.display()));
                }
                (10, _) if dir != root => {
                    std::fs::remove_dir_all(&dir).unwrap();
                    std::os::unix::fs::symlink(&decoy, &dir).unwrap();
                    done.push(format!("dir to symlink {}", dir.display()));
                }
                _ => {}
            }
            if done.len() > before {
                kinds[kind] += 1;
            }
        }
        let restored = engine
            .restore(
                info.id,
                root,
                &RestoreOptions::default().with_existing(ExistingTarget::Delta),
            )
            .unwrap_or_else(|e| panic!("round {round} after {done:?}: {e}"));
        assert_eq!(describe_tree(root), want, "round {round} after {done:?}");
        assert_eq!(
            std::fs::read(&victim).unwrap(),
            b"outside the target",
            "round {round} after {done:?}: {restored:?}"
        );
        for name in ["f1", "f4", "b/f2", "b/f5", "up"] {
            assert_eq!(
                std::fs::read(decoy.join(name)).unwrap(),
                b"outside the target",
                "round {round} after {done:?}: {name} outside was written"
            );
        }
    }
    assert!(
        kinds.iter().all(|n| *n > 0),
        "some change never made: {kinds:?}"
    );
}

/// The regular files and the directories (`root` first) under `root`, symlinks not followed.
fn walk(root: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut files, mut dirs) = (Vec::new(), vec![root.to_path_buf()]);
    let mut at = 0;
    while let Some(dir) = dirs.get(at).cloned() {
        at += 1;
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let kind = std::fs::symlink_metadata(&path).unwrap().file_type();
            if kind.is_dir() {
                dirs.push(path);
            } else if kind.is_file() {
                files.push(path);
            }
        }
    }
    (files, dirs)
}

/// A delta restore never writes through a name that leads outside the target: a file there
/// that is a hard link of a file outside, or a symlink to one, is replaced, and the file
/// outside keeps its bytes.
#[test]
fn a_delta_restore_does_not_write_through_links_to_files_outside_the_target() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("a.bin"), pseudo_random(300_000, 8)).unwrap();
    std::fs::write(data.path().join("b.bin"), pseudo_random(300_000, 9)).unwrap();
    let engine = BackupEngine::init(MemoryStore::new(), encrypted(), opts()).unwrap();
    let info = engine
        .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
        .unwrap();
    let outside = tempfile::tempdir().unwrap();
    let victim_a = outside.path().join("victim-a");
    let victim_b = outside.path().join("victim-b");
    std::fs::write(&victim_a, b"must stay").unwrap();
    std::fs::write(&victim_b, b"must stay too").unwrap();
    let target = tempfile::tempdir().unwrap();
    std::fs::hard_link(&victim_a, target.path().join("a.bin")).unwrap();
    std::os::unix::fs::symlink(&victim_b, target.path().join("b.bin")).unwrap();

    engine
        .restore(
            info.id,
            target.path(),
            &RestoreOptions::default().with_existing(ExistingTarget::Delta),
        )
        .unwrap();
    assert_eq!(std::fs::read(&victim_a).unwrap(), b"must stay");
    assert_eq!(std::fs::read(&victim_b).unwrap(), b"must stay too");
    assert_eq!(std::fs::metadata(&victim_a).unwrap().nlink(), 1);
    assert_eq!(describe_tree(target.path()), describe_tree(data.path()));
}

/// A delta restore deletes what the backup lacks, so it refuses to restore only some paths
/// (the rest would go), before touching the target; into a missing target it is a plain
/// restore.
#[test]
fn a_delta_restore_of_some_paths_is_refused_and_into_nothing_is_a_plain_restore() {
    let data = tempfile::tempdir().unwrap();
    sample_tree(data.path());
    let engine = BackupEngine::init(MemoryStore::new(), encrypted(), opts()).unwrap();
    let info = engine
        .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
        .unwrap();
    let target = tempfile::tempdir().unwrap();
    std::fs::write(target.path().join("precious"), b"keep").unwrap();
    let err = engine
        .restore(
            info.id,
            target.path(),
            &RestoreOptions::default()
                .with_existing(ExistingTarget::Delta)
                .with_include(vec!["sub".into()]),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert_eq!(
        std::fs::read_dir(target.path()).unwrap().count(),
        1,
        "the target was touched"
    );

    let fresh = target.path().join("fresh");
    let restored = engine
        .restore(
            info.id,
            &fresh,
            &RestoreOptions::default().with_existing(ExistingTarget::Delta),
        )
        .unwrap();
    assert_eq!((restored.bytes_kept, restored.removed), (0, 0));
    assert_eq!(describe_tree(&fresh), describe_tree(data.path()));
}

/// A sparse restore leaves a sparse file's holes unwritten (the file takes about the space its
/// data does, and reads back the same); a default restore writes the zeros.
#[test]
fn a_sparse_restore_leaves_chunks_of_zeros_as_holes() {
    use std::io::{Seek, SeekFrom, Write};
    let data = tempfile::tempdir().unwrap();
    let image = data.path().join("disk.img");
    let mut file = std::fs::File::create(&image).unwrap();
    file.set_len(12 << 20).unwrap();
    file.write_all(&pseudo_random(1 << 20, 11)).unwrap();
    file.seek(SeekFrom::Start(6 << 20)).unwrap();
    file.write_all(&pseudo_random(1 << 20, 12)).unwrap();
    drop(file);
    std::fs::write(data.path().join("small.txt"), b"not sparse").unwrap();
    let engine = BackupEngine::init(MemoryStore::new(), encrypted(), opts()).unwrap();
    let info = engine
        .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
        .unwrap();
    let allocated = |root: &Path| std::fs::metadata(root.join("disk.img")).unwrap().blocks() * 512;

    let target = tempfile::tempdir().unwrap();
    let sparse = target.path().join("sparse");
    let restored = engine
        .restore(
            info.id,
            &sparse,
            &RestoreOptions::default().with_sparse(true),
        )
        .unwrap();
    assert_eq!(describe_tree(&sparse), describe_tree(data.path()));
    // 2 MiB of data; chunks (at most 256 KiB) at the edges of the holes hold zeros too.
    assert!(
        allocated(&sparse) < 3 << 20,
        "{} bytes allocated: {restored:?}",
        allocated(&sparse)
    );
    assert!(restored.bytes_sparse >= 8 << 20, "{restored:?}");

    let dense = target.path().join("dense");
    let restored = engine
        .restore(info.id, &dense, &RestoreOptions::default())
        .unwrap();
    assert_eq!(describe_tree(&dense), describe_tree(data.path()));
    assert_eq!(restored.bytes_sparse, 0);
    assert!(allocated(&dense) >= 12 << 20, "{}", allocated(&dense));
}

/// `dump` writes one file, several batches of chunks long, byte for byte, and `read_file` the
/// same into memory; a missing path is not found, and a directory is refused as one.
#[test]
fn dump_writes_one_file_of_a_backup() {
    let data = tempfile::tempdir().unwrap();
    let big = pseudo_random(20 << 20, 21);
    std::fs::write(data.path().join("big"), &big).unwrap();
    std::fs::create_dir(data.path().join("dir")).unwrap();
    let engine = BackupEngine::init(MemoryStore::new(), encrypted(), opts()).unwrap();
    let info = engine
        .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
        .unwrap();
    let mut out = Vec::new();
    assert_eq!(
        engine.dump(info.id, "big", &mut out).unwrap(),
        big.len() as u64
    );
    assert!(out == big, "the dumped bytes differ");
    assert!(engine.read_file(info.id, "big").unwrap() == big);
    let err = engine.dump(info.id, "nope", &mut Vec::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = engine.dump(info.id, "dir", &mut Vec::new()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(
        err.to_string().contains("is a directory, not a file"),
        "{err}"
    );
}

/// `diff` names each path added, removed, changed in content or type, or only in metadata,
/// from the file lists alone; the same backup twice differs in nothing.
#[test]
fn diff_names_what_changed_between_two_backups() {
    use backstop::ChangeKind;
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    for name in ["same", "edited", "gone", "chmodded", "becomes-dir"] {
        std::fs::write(d.join(name), name.repeat(1000)).unwrap();
    }
    let engine = BackupEngine::init(MemoryStore::new(), encrypted(), opts()).unwrap();
    let first = engine
        .create_backup(&mut DirSource::new(d), &BackupOptions::default())
        .unwrap();
    let mtime = std::fs::metadata(d.join("edited"))
        .unwrap()
        .modified()
        .unwrap();
    std::fs::write(d.join("edited"), "edited".repeat(999) + "EDITED").unwrap();
    std::fs::File::options()
        .write(true)
        .open(d.join("edited"))
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::remove_file(d.join("gone")).unwrap();
    std::fs::write(d.join("new"), b"new").unwrap();
    std::fs::set_permissions(d.join("chmodded"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_file(d.join("becomes-dir")).unwrap();
    std::fs::create_dir(d.join("becomes-dir")).unwrap();
    let second = engine
        .create_backup(
            &mut DirSource::new(d),
            &BackupOptions::default().with_full_read(true),
        )
        .unwrap();

    let diff = engine.diff(first.id, second.id).unwrap();
    let changes: Vec<(&str, ChangeKind)> = diff
        .changes
        .iter()
        .map(|c| (c.path.as_str(), c.change))
        .filter(|(path, _)| !path.is_empty())
        .collect();
    assert_eq!(
        changes,
        [
            ("becomes-dir", ChangeKind::TypeChanged),
            ("chmodded", ChangeKind::Metadata),
            ("edited", ChangeKind::Modified),
            ("gone", ChangeKind::Removed),
            ("new", ChangeKind::Added),
        ],
        "{diff:?}"
    );
    assert_eq!((diff.added, diff.removed, diff.modified), (1, 1, 2));
    // Same size, other content: found by the chunks, not the size (or the mtime, kept).
    let edited = diff.changes.iter().find(|c| c.path == "edited").unwrap();
    assert_eq!(edited.size_before, edited.size_after);
    assert!(
        engine
            .diff(second.id, second.id)
            .unwrap()
            .changes
            .is_empty()
    );
}

/// A restore of part of a backup writes the matching paths, all that is under them and the
/// directories above them (with the backup's modes and times), and nothing else. `*` stays
/// within one component of a path, `**` crosses them.
#[test]
fn a_restore_of_some_paths_writes_those_and_the_directories_above_them() {
    let data = tempfile::tempdir().unwrap();
    sample_tree(data.path());
    std::fs::write(data.path().join("sub/inner.txt"), b"not at the top").unwrap();
    std::fs::set_permissions(
        data.path().join("sub"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    let engine = BackupEngine::init(MemoryStore::new(), encrypted(), opts()).unwrap();
    let backup = engine
        .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
        .unwrap();
    let whole = describe_tree(data.path());

    let target = tempfile::tempdir().unwrap();
    let only = RestoreOptions::default().with_include(vec!["sub/deeper".into(), "*.txt".into()]);
    let info = engine.restore(backup.id, target.path(), &only).unwrap();
    let expected: BTreeMap<String, String> = whole
        .iter()
        .filter(|(path, _)| {
            ["sub", "sub/deeper", "sub/deeper/zeros", "small.txt"].contains(&path.as_str())
        })
        .map(|(p, d)| (p.clone(), d.clone()))
        .collect();
    assert_eq!(describe_tree(target.path()), expected);
    assert_eq!(
        (info.files, info.dirs, info.symlinks),
        (2, 2, 0),
        "{info:?}"
    );

    let deep = tempfile::tempdir().unwrap();
    let any_depth = RestoreOptions::default().with_include(vec!["**/*.txt".into()]);
    engine.restore(backup.id, deep.path(), &any_depth).unwrap();
    let restored: Vec<String> = describe_tree(deep.path()).into_keys().collect();
    assert_eq!(restored, ["small.txt", "sub", "sub/inner.txt"]);
}

/// What a partial restore refuses, it refuses before the target is touched: patterns that
/// match nothing, a bad pattern, and a part of a database backup without `raw`.
#[test]
fn a_partial_restore_that_cannot_be_done_leaves_the_target_untouched() {
    let data = tempfile::tempdir().unwrap();
    sample_tree(data.path());
    let engine = BackupEngine::init(MemoryStore::new(), encrypted(), opts()).unwrap();
    let dir = engine
        .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
        .unwrap();
    let entries = vec![
        backstop::Entry::bytes("main.db", b"pages".to_vec(), 0o644, 0),
        backstop::Entry::bytes("main.db-wal", b"frames".to_vec(), 0o644, 0),
    ];
    let database = engine
        .create_backup(&mut Profiled(entries, "sqlite"), &BackupOptions::default())
        .unwrap();
    let target = tempfile::tempdir().unwrap();
    let refused = |id: u64, include: &[&str], raw: bool| {
        let options = RestoreOptions::default()
            .with_include(include.iter().map(|p| p.to_string()).collect())
            .with_raw(raw);
        let err = engine.restore(id, target.path(), &options).unwrap_err();
        assert_eq!(
            std::fs::read_dir(target.path()).unwrap().count(),
            0,
            "{include:?}: the target was touched"
        );
        err
    };
    let err = refused(dir.id, &["nothing*", "sub/none"], false);
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("`nothing*`, `sub/none`"), "{err}");
    let err = refused(dir.id, &["sub/[z"], false);
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("sub/[z"), "{err}");
    let err = refused(database.id, &["main.db"], false);
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("--raw"), "{err}");

    // The raw files of a database can be had in part.
    let raw = RestoreOptions::default()
        .with_include(vec!["main.db".into()])
        .with_raw(true);
    engine.restore(database.id, target.path(), &raw).unwrap();
    let restored: Vec<String> = describe_tree(target.path()).into_keys().collect();
    assert_eq!(restored, ["main.db"]);
}

/// A source of given entries whose backups carry a restore procedure of `kind`.
struct Profiled(Vec<backstop::Entry>, &'static str);

impl Source for Profiled {
    fn kind(&self) -> &str {
        self.1
    }
    fn identity(&self) -> String {
        "test".into()
    }
    fn begin(&mut self, _: &SessionContext) -> Result<Box<dyn Session + '_>, SourceError> {
        Ok(Box::new(ProfiledSession(
            Some(backstop::Phase::new("all", self.0.clone())),
            self.1,
        )))
    }
}

struct ProfiledSession(Option<backstop::Phase>, &'static str);

impl Session for ProfiledSession {
    fn next_phase(&mut self) -> Result<Option<backstop::Phase>, SourceError> {
        Ok(self.0.take())
    }
    fn finish(self: Box<Self>) -> Result<SessionOutcome, SourceError> {
        Ok(SessionOutcome {
            restore_profile: backstop::RestoreProfile::new(self.1),
            ..SessionOutcome::default()
        })
    }
}

/// A source of one small file whose backups record `meta` as a source of `kind` would (the
/// WAL positions of a PostgreSQL backup, say), to test what the engine does with them.
struct Recorded(&'static str, BTreeMap<String, String>);

impl Source for Recorded {
    fn kind(&self) -> &str {
        self.0
    }
    fn identity(&self) -> String {
        format!("{:?}", self.1)
    }
    fn begin(&mut self, _: &SessionContext) -> Result<Box<dyn Session + '_>, SourceError> {
        Ok(Box::new(RecordedSession(
            Some(backstop::Phase::new(
                "all",
                vec![backstop::Entry::bytes("f", b"x".to_vec(), 0o644, 0)],
            )),
            self.1.clone(),
        )))
    }
}

struct RecordedSession(Option<backstop::Phase>, BTreeMap<String, String>);

impl Session for RecordedSession {
    fn next_phase(&mut self) -> Result<Option<backstop::Phase>, SourceError> {
        Ok(self.0.take())
    }
    fn finish(self: Box<Self>) -> Result<SessionOutcome, SourceError> {
        Ok(SessionOutcome {
            source_meta: self.1,
            ..SessionOutcome::default()
        })
    }
}

/// WAL pruning keeps each cluster's archive from the first segment the oldest backup of that
/// cluster needs (its PostgreSQL backups and the group backups it is a member of); the shared
/// archive of earlier versions from the first any backup needs; a cluster no backup names
/// keeps everything.
#[cfg(feature = "postgres")]
#[test]
fn wal_is_pruned_per_cluster_from_what_its_oldest_backup_needs() {
    let engine = BackupEngine::init(MemoryStore::new(), encrypted(), opts()).unwrap();
    let segment = |n: u32| format!("00000001000000000000000{n}");
    for archive in ["wal-7001", "wal-7002", "wal-7003", "wal"] {
        for n in 1..=6 {
            engine
                .archive_put(archive, &segment(n), format!("{archive} {n}").as_bytes())
                .unwrap();
        }
    }
    let meta = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let pg = meta(&[
        ("system-identifier", "7001"),
        ("wal-start-segment", &segment(4)),
    ]);
    let group = meta(&[
        ("db/kind", "postgres"),
        ("db/system-identifier", "7002"),
        ("db/wal-start-segment", &segment(3)),
    ]);
    for (kind, meta) in [("postgres", pg), ("group", group)] {
        engine
            .create_backup(&mut Recorded(kind, meta), &BackupOptions::default())
            .unwrap();
    }
    let mut pruned = engine.prune_wal_archive().unwrap();
    pruned.sort();
    let expected: Vec<String> = [
        "wal-7001/1",
        "wal-7001/2",
        "wal-7001/3",
        "wal-7002/1",
        "wal-7002/2",
        "wal/1",
        "wal/2",
    ]
    .iter()
    .map(|s| {
        let (archive, n) = s.split_once('/').unwrap();
        format!("{archive}/{}", segment(n.parse().unwrap()))
    })
    .collect();
    assert_eq!(pruned, expected);
    assert_eq!(engine.archive_list("wal-7003").unwrap().len(), 6);
    assert_eq!(engine.archive_list("wal-7001").unwrap()[0], segment(4));
}

/// A source whose entries are given by the test, to build hostile backups.
struct Entries(Vec<backstop::Entry>);

impl Source for Entries {
    fn kind(&self) -> &str {
        "test"
    }
    fn identity(&self) -> String {
        "test".into()
    }
    fn begin(&mut self, _: &SessionContext) -> Result<Box<dyn Session + '_>, SourceError> {
        Ok(Box::new(OnePhase(Some(backstop::Phase::new(
            "all",
            self.0.clone(),
        )))))
    }
}

/// A directory of the target swapped for a symlink to a directory outside while the restore
/// runs (what another user who can write in the target could do, between the restore's check
/// of the directory and its use) stops the restore: nothing is written outside. The swap is
/// made when the restore reports the file as planned, before any worker opens it.
#[test]
fn a_directory_swapped_for_a_symlink_during_the_restore_is_not_written_through() {
    struct Swapper {
        target: PathBuf,
        outside: PathBuf,
    }
    impl backstop::Progress for Swapper {
        fn file(&self, path: &str) {
            if path == "sub/secret" {
                let sub = self.target.join("sub");
                std::fs::rename(&sub, self.target.join("sub.moved")).unwrap();
                std::os::unix::fs::symlink(&self.outside, &sub).unwrap();
            }
        }
    }
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir(data.path().join("sub")).unwrap();
    std::fs::write(data.path().join("sub/secret"), pseudo_random(50_000, 8)).unwrap();
    let engine = BackupEngine::init(MemoryStore::new(), encrypted(), opts()).unwrap();
    engine
        .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let target = root.path().join("target");
    let outside = root.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let swapper = Arc::new(Swapper {
        target: target.clone(),
        outside: outside.clone(),
    });
    let err = engine
        .restore(
            backstop::BackupSelector::Latest,
            &target,
            &RestoreOptions::default().with_progress(swapper),
        )
        .unwrap_err();
    assert!(err.to_string().contains("sub/secret"), "{err}");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "written outside"
    );
}

/// A symlink planted in a target under the name of the incomplete-restore marker, pointing at
/// a file outside, stops a restore over the target (`--force`) before anything is written, and
/// the file outside keeps its bytes: the marker is never written through a symlink.
#[test]
fn a_symlink_under_the_markers_name_is_not_written_through() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("file"), b"restored").unwrap();
    let engine = BackupEngine::init(MemoryStore::new(), encrypted(), opts()).unwrap();
    let info = engine
        .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let target = root.path().join("target");
    std::fs::create_dir(&target).unwrap();
    let outside = root.path().join("precious");
    std::fs::write(&outside, b"must stay").unwrap();
    std::os::unix::fs::symlink(&outside, target.join(".backstop-restore-incomplete")).unwrap();
    let err = engine
        .restore(
            info.id,
            &target,
            &RestoreOptions::default().with_existing(ExistingTarget::Overwrite),
        )
        .unwrap_err();
    assert!(
        err.to_string().contains(".backstop-restore-incomplete"),
        "{err}"
    );
    assert_eq!(std::fs::read(&outside).unwrap(), b"must stay");
    assert!(!target.join("file").exists());
}

#[test]
fn a_symlink_pointing_out_cannot_carry_a_file_beneath_it() {
    let outside = tempfile::tempdir().unwrap();
    let mut link = backstop::Entry::dir("escape", 0o755, 0);
    link.kind = backstop::EntryKind::Symlink {
        target: outside.path().display().to_string(),
    };
    let file = backstop::Entry::bytes("escape/planted", b"gotcha".to_vec(), 0o644, 0);
    let engine = BackupEngine::init(MemoryStore::new(), encrypted(), opts()).unwrap();
    let info = engine
        .create_backup(&mut Entries(vec![link, file]), &BackupOptions::default())
        .unwrap();
    let target = tempfile::tempdir().unwrap();
    let result = engine.restore(info.id, target.path(), &RestoreOptions::default());
    assert!(
        result.is_err(),
        "a restore that puts a symlink over a directory must fail"
    );
    assert!(
        !outside.path().join("planted").exists(),
        "a file was written outside the target"
    );
    assert!(target.path().join(".backstop-restore-incomplete").exists());
}

#[test]
fn a_source_path_with_dot_dot_is_refused_at_backup() {
    let engine = BackupEngine::init(MemoryStore::new(), encrypted(), opts()).unwrap();
    let evil = backstop::Entry::bytes("../evil", b"x".to_vec(), 0o644, 0);
    let err = engine
        .create_backup(&mut Entries(vec![evil]), &BackupOptions::default())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Source);
    assert!(engine.list_backups().unwrap().is_empty());
}

/// Flip one byte at many places of every stored object: verify(Full) must report it and a
/// restore must refuse it (or the object must be one no check needs, which we list).
#[test]
fn flipped_bytes_in_any_object_are_detected() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("a"), pseudo_random(100_000, 3)).unwrap();
    std::fs::write(data.path().join("b"), b"small file").unwrap();
    for password in [Some("secret"), None] {
        let store = MemoryStore::new();
        let (init, eo) = match password {
            Some(_) => (encrypted(), opts()),
            None => (fast_init(), EngineOptions::default()),
        };
        let engine = BackupEngine::init(store.clone(), init, eo.clone()).unwrap();
        engine
            .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
            .unwrap();
        for key in store.keys() {
            if key.starts_with("keys/") || key.starts_with("locks/") {
                continue; // key files are checked by the password test
            }
            let original = store.raw_get(&key).unwrap();
            let len = original.len();
            let positions: Vec<usize> = if len <= 400 {
                (0..len).collect()
            } else {
                (0..len)
                    .step_by(len / 97)
                    .chain([len - 1, len - 5, len - 9])
                    .collect()
            };
            for pos in positions {
                store.corrupt(&key, |b| b[pos] ^= 0x20);
                let detected = match BackupEngine::open(store.clone(), eo.clone()) {
                    Err(_) => true, // config or index damage is refused at open
                    Ok(engine) => {
                        let report = engine.verify_all(VerifyLevel::Full);
                        let verify_found = match report {
                            Ok(r) => !r.is_ok(),
                            Err(_) => true,
                        };
                        let target = tempfile::tempdir().unwrap();
                        let restored = engine.restore(
                            backstop::BackupSelector::Latest,
                            target.path(),
                            &RestoreOptions::default(),
                        );
                        // A restore may succeed only with every byte right (damage to a pack
                        // header leaves the blobs themselves intact); never with wrong bytes.
                        match restored {
                            Ok(_) => assert_eq!(
                                describe_tree(data.path()),
                                describe_tree(target.path()),
                                "{key}@{pos}: a restore succeeded with wrong content"
                            ),
                            Err(_) => assert!(
                                verify_found,
                                "{key}@{pos}: restore failed, verify saw nothing"
                            ),
                        }
                        verify_found
                    }
                };
                assert!(
                    detected,
                    "flip of byte {pos} of `{key}` went unnoticed (password {password:?})"
                );
                store.raw_put(&key, original.clone());
            }
        }
    }
}

#[test]
fn a_missing_pack_is_reported_by_quick_verify() {
    let data = tempfile::tempdir().unwrap();
    sample_tree(data.path());
    let store = MemoryStore::new();
    let engine = BackupEngine::init(store.clone(), encrypted(), opts()).unwrap();
    engine
        .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
        .unwrap();
    let pack = store
        .keys()
        .into_iter()
        .find(|k| k.starts_with("packs/"))
        .unwrap();
    store.raw_remove(&pack);
    let report = engine.verify_all(VerifyLevel::Quick).unwrap();
    assert!(
        report.problems.iter().any(|p| p.contains(&pack)),
        "{report:?}"
    );
    let target = tempfile::tempdir().unwrap();
    let err = engine
        .restore(1, target.path(), &RestoreOptions::default())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
}

/// A full verify reads every pack once, on all worker threads, and reports each damaged pack
/// in the order of the packs' names, whichever thread read it.
#[test]
fn full_verify_reads_each_pack_once_and_reports_every_damaged_one_in_order() {
    let (store, _kept) = repository_with_mostly_unused_packs();
    let engine = BackupEngine::open(store.clone(), opts()).unwrap();
    let clean = engine.verify_all(VerifyLevel::Full).unwrap();
    assert!(clean.is_ok(), "{:?}", clean.problems);
    let packs: Vec<String> = store
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("packs/"))
        .collect();
    // Packs no backup needs are not read.
    assert!(
        clean.packs_read > 2 && clean.packs_read <= packs.len() as u64,
        "{clean:?}"
    );
    assert_eq!(clean.packs_read, clean.packs);

    // Damage, in its first byte, every needed pack that holds no part of the file list (which
    // would hide the blobs it names), so that each yields problems.
    let (mut needed, mut tree) = (Vec::new(), 0);
    for key in &packs {
        let original = store.raw_get(key).unwrap();
        store.raw_remove(key);
        let missing = engine.verify_all(VerifyLevel::Quick).unwrap();
        store.raw_put(key, original);
        if missing.problems.iter().any(|p| p.contains("file list")) {
            tree += 1;
        } else if !missing.is_ok() {
            needed.push(key);
        }
    }
    assert!(needed.len() >= 2, "{needed:?}");
    assert_eq!(needed.len() as u64 + tree, clean.packs, "{needed:?}");
    for key in &needed {
        let mut bytes = store.raw_get(key).unwrap();
        bytes[0] ^= 1;
        store.raw_put(key, bytes);
    }
    let damaged = engine.verify_all(VerifyLevel::Full).unwrap();
    assert_eq!(damaged.packs_read, clean.packs_read);
    assert_eq!(damaged.bytes_read, clean.bytes_read);
    let mut named: Vec<&String> = Vec::new();
    for problem in &damaged.problems {
        let pack = needed.iter().find(|k| problem.contains(k.as_str()));
        let pack = pack.unwrap_or_else(|| panic!("a problem names no damaged pack: {problem}"));
        if named.last() != Some(pack) {
            named.push(pack);
        }
    }
    // `store.keys()` and the report both go in the order of the keys, which is that of the ids.
    assert_eq!(named, needed, "{:?}", damaged.problems);
}

/// What a verify or gc reports to its progress observer, and a cancellation after the first
/// bytes.
#[derive(Default)]
struct ProgressWatch {
    phases: std::sync::Mutex<Vec<(String, u64, u64)>>,
    packs: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
    cancel_on_bytes: Option<backstop::CancelToken>,
}

impl backstop::Progress for ProgressWatch {
    fn phase(&self, name: &str, files: u64, bytes: u64) {
        self.phases
            .lock()
            .unwrap()
            .push((name.to_owned(), files, bytes));
    }
    fn file(&self, path: &str) {
        assert!(path.starts_with("packs/"), "{path}");
        self.packs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn bytes(&self, bytes: u64) {
        self.bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        if let Some(token) = &self.cancel_on_bytes {
            token.cancel();
        }
    }
}

/// A verify that reads packs announces them and their bytes up front, counts every byte it
/// reads, and stops when cancelled, with an error rather than a report that looks clean.
#[test]
fn a_verify_reports_its_progress_and_stops_when_cancelled() {
    let (store, _kept) = repository_with_mostly_unused_packs();
    let engine = BackupEngine::open(store, opts()).unwrap();
    let watch = Arc::new(ProgressWatch::default());
    let full = backstop::VerifyOptions::new(VerifyLevel::Full).with_progress(watch.clone());
    let report = engine.verify_all_with(&full).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert!(report.packs_read >= 2, "{report:?}");
    let phases = watch.phases.lock().unwrap().clone();
    assert_eq!(
        phases,
        [("verify".to_owned(), report.packs_read, report.bytes_read)]
    );
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(watch.packs.load(Relaxed), report.packs_read);
    assert_eq!(watch.bytes.load(Relaxed), report.bytes_read);

    // A quick verify reads no pack and says nothing.
    let quiet = Arc::new(ProgressWatch::default());
    let quick = backstop::VerifyOptions::new(VerifyLevel::Quick).with_progress(quiet.clone());
    assert!(engine.verify_all_with(&quick).unwrap().is_ok());
    assert!(quiet.phases.lock().unwrap().is_empty());

    let token = backstop::CancelToken::new();
    let stopper = Arc::new(ProgressWatch {
        cancel_on_bytes: Some(token.clone()),
        ..ProgressWatch::default()
    });
    let cancelled = backstop::VerifyOptions::new(VerifyLevel::Full)
        .with_progress(stopper.clone())
        .with_cancel(token);
    let err = engine.verify_all_with(&cancelled).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert!(
        stopper.bytes.load(Relaxed) < report.bytes_read,
        "the cancelled verify read everything"
    );
}

/// Without the index object that lists its blobs, a backup does not verify: each needed blob no
/// index lists is reported by id (the tree's first, since its file list cannot be read then).
#[test]
fn a_missing_index_object_is_reported_by_verify() {
    let data = tempfile::tempdir().unwrap();
    sample_tree(data.path());
    let store = MemoryStore::new();
    let engine = BackupEngine::init(store.clone(), encrypted(), opts()).unwrap();
    let backup = engine
        .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
        .unwrap();
    let index_objects: Vec<String> = store
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("index/"))
        .collect();
    assert!(!index_objects.is_empty());
    for key in &index_objects {
        store.raw_remove(key);
    }
    let engine = BackupEngine::open(store.clone(), opts()).unwrap();
    for level in [VerifyLevel::Quick, VerifyLevel::Full] {
        let report = engine.verify(backup.id, level).unwrap();
        let unlisted: Vec<&String> = report
            .problems
            .iter()
            .filter(|p| p.contains("no index lists it"))
            .collect();
        assert!(!unlisted.is_empty(), "{level:?}: {:?}", report.problems);
        assert!(report.blobs >= unlisted.len() as u64, "{report:?}");
        assert_eq!(report.packs_read, 0, "{report:?}");
    }
}

/// Crash safety: fail every store write of a backup in turn. The failed backup must not be
/// visible, the two earlier ones must verify and restore, and gc must remove the leftovers.
#[test]
fn a_failure_at_any_put_of_a_backup_leaves_the_repository_valid() {
    let data = tempfile::tempdir().unwrap();
    sample_tree(data.path());
    let more = tempfile::tempdir().unwrap();
    for i in 0..6 {
        std::fs::write(
            more.path().join(format!("f{i}")),
            pseudo_random(200_000, 100 + i),
        )
        .unwrap();
    }
    let base = MemoryStore::new();
    let small_packs = fast_init().with_pack_size(256 * 1024);
    let engine = BackupEngine::init(base.clone(), small_packs, opts()).unwrap();
    engine
        .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
        .unwrap();
    engine
        .create_backup(&mut DirSource::new(more.path()), &BackupOptions::default())
        .unwrap();
    let pristine = base.snapshot();

    // Count the puts of a successful third backup.
    let counting = Arc::new(FaultStore::new(base.clone()));
    let third = tempfile::tempdir().unwrap();
    for i in 0..4 {
        std::fs::write(
            third.path().join(format!("g{i}")),
            pseudo_random(300_000, 200 + i),
        )
        .unwrap();
    }
    BackupEngine::open(Arc::clone(&counting), opts())
        .unwrap()
        .create_backup(&mut DirSource::new(third.path()), &BackupOptions::default())
        .unwrap();
    let puts = counting.puts_seen();
    assert!(puts >= 4, "expected several puts, saw {puts}");

    for fail_at in 0..puts {
        // Stores promise atomic puts (a torn object never becomes visible), so only clean
        // failures are injected here.
        for torn in [false] {
            // Back to the state with two backups.
            base.restore(&pristine);
            let mut plan = FaultPlan::new().fail_put(fail_at);
            if torn {
                plan = plan.leave_torn_object();
            }
            let faulty = Arc::new(FaultStore::with_plan(base.clone(), plan));
            let engine = BackupEngine::open(Arc::clone(&faulty), opts()).unwrap();
            let result =
                engine.create_backup(&mut DirSource::new(third.path()), &BackupOptions::default());
            let committed = result.is_ok();
            let engine = BackupEngine::open(base.clone(), opts()).unwrap();
            let listed = engine.list_backups();
            let backups = match listed {
                Ok(b) => b,
                Err(e) => panic!("fail_at={fail_at} torn={torn}: list failed: {e}"),
            };
            assert!(
                backups.len() == 2 || (committed && backups.len() == 3),
                "fail_at={fail_at}"
            );
            let report = engine.verify_all(VerifyLevel::Full).unwrap();
            assert!(
                report.is_ok(),
                "fail_at={fail_at} torn={torn}: {:?}",
                report.problems
            );
            for b in &backups {
                let target = tempfile::tempdir().unwrap();
                engine
                    .restore(b.id, target.path(), &RestoreOptions::default())
                    .unwrap();
            }
            let gc = engine.gc(false).unwrap();
            assert!(engine.verify_all(VerifyLevel::Full).unwrap().is_ok());
            if !committed {
                let packs = |keys: Vec<String>| -> Vec<String> {
                    keys.into_iter()
                        .filter(|k| k.starts_with("packs/"))
                        .collect()
                };
                let before: Vec<String> = packs(pristine.keys());
                assert_eq!(
                    packs(base.keys()),
                    before,
                    "fail_at={fail_at} torn={torn}: gc left the failed backup's packs ({gc:?})"
                );
            }
            assert!(
                base.keys().iter().all(|k| !k.starts_with("locks/")),
                "a lock was left behind"
            );
        }
    }
}

/// A script that deletes backup 3 must never delete a newer backup that took its id.
#[test]
fn ids_of_deleted_backups_are_never_given_out_again() {
    let store = MemoryStore::new();
    let engine = BackupEngine::init(store.clone(), fast_init(), opts()).unwrap();
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("f"), b"one").unwrap();
    let backup = |engine: &BackupEngine| {
        engine
            .create_backup(&mut DirSource::new(d.path()), &BackupOptions::default())
            .unwrap()
            .id
    };
    assert_eq!(backup(&engine), 1);
    assert_eq!(backup(&engine), 2);
    engine.delete_backup(2).unwrap();
    assert_eq!(
        backup(&engine),
        3,
        "the id of the deleted latest backup came back"
    );
    engine.delete_backup(3).unwrap();
    engine.delete_backup(1).unwrap();
    assert!(engine.list_backups().unwrap().is_empty());
    // Another process (a fresh open) sees the same: the repository remembers, not the engine.
    let reopened = BackupEngine::open(store.clone(), opts()).unwrap();
    assert_eq!(backup(&reopened), 4);
    // Only the tombstone of the largest id is kept while it is the largest.
    let tombstones: Vec<String> = store
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("snapshots/") && k.ends_with(".deleted"))
        .collect();
    assert!(tombstones.len() <= 1, "tombstones pile up: {tombstones:?}");
    reopened.delete_backup(4).unwrap();
    let tombstones: Vec<String> = store
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("snapshots/") && k.ends_with(".deleted"))
        .collect();
    assert_eq!(tombstones.len(), 1, "{tombstones:?}");
    assert!(
        tombstones[0].starts_with("snapshots/0000000004-"),
        "{tombstones:?}"
    );
    assert_eq!(backup(&reopened), 5);
}

#[test]
fn delete_purge_and_gc_free_space_and_keep_the_rest_restorable() {
    let engine = BackupEngine::init(MemoryStore::new(), encrypted(), opts()).unwrap();
    // One source whose content changes: retention counts backups per source.
    let d = tempfile::tempdir().unwrap();
    for i in 0..4 {
        std::fs::write(d.path().join("f"), pseudo_random(150_000, 500 + i)).unwrap();
        engine
            .create_backup(&mut DirSource::new(d.path()), &BackupOptions::default())
            .unwrap();
    }
    let deleted = engine.purge_old(2).unwrap();
    assert_eq!(deleted, vec![1, 2]);
    engine.delete_backup(3).unwrap();
    assert_eq!(
        engine.delete_backup(3).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let report = engine.gc(false).unwrap();
    assert!(
        report.packs_deleted >= 1 && report.bytes_freed > 300_000,
        "{report:?}"
    );
    let ids: Vec<u64> = engine
        .list_backups()
        .unwrap()
        .iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(ids, [4]);
    let target = tempfile::tempdir().unwrap();
    engine
        .restore(4, target.path(), &RestoreOptions::default())
        .unwrap();
    assert_eq!(
        std::fs::read(target.path().join("f")).unwrap(),
        pseudo_random(150_000, 503)
    );
    // Ids keep increasing after deletions.
    let next = engine
        .create_backup(&mut DirSource::new(d.path()), &BackupOptions::default())
        .unwrap();
    assert_eq!(next.id, 5);
}

/// Backs up `dirs[i]` for each `i` in `order`, changing its file first; returns the ids.
fn interleaved_backups(engine: &BackupEngine, dirs: &[&Path], order: &[usize]) -> Vec<u64> {
    order
        .iter()
        .enumerate()
        .map(|(round, &i)| {
            std::fs::write(dirs[i].join("f"), pseudo_random(20_000, 900 + round as u64)).unwrap();
            engine
                .create_backup(&mut DirSource::new(dirs[i]), &BackupOptions::default())
                .unwrap()
                .id
        })
        .collect()
}

fn backup_ids(engine: &BackupEngine) -> Vec<u64> {
    engine
        .list_backups()
        .unwrap()
        .iter()
        .map(|b| b.id)
        .collect()
}

// Regression: `purge --keep-last N` counted every backup of the repository together, so a
// source backed up less often than another lost all its backups.
#[test]
fn purge_keeps_the_newest_backups_of_each_source() {
    let engine = BackupEngine::init(MemoryStore::new(), encrypted(), opts()).unwrap();
    let (hourly, weekly) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dirs = [hourly.path(), weekly.path()];
    // hourly, weekly, hourly, hourly, weekly, hourly, hourly
    let ids = interleaved_backups(&engine, &dirs, &[0, 1, 0, 0, 1, 0, 0]);
    assert_eq!(ids, [1, 2, 3, 4, 5, 6, 7]);

    let deleted = engine.purge_old(1).unwrap();
    assert_eq!(deleted, [1, 2, 3, 4, 6]);
    assert_eq!(backup_ids(&engine), [5, 7], "the newest of each directory");
    let weekly_info = engine.backup_info(5).unwrap();
    assert_eq!(
        Path::new(&weekly_info.source),
        std::fs::canonicalize(weekly.path()).unwrap()
    );
    // Applying the same policy again deletes nothing more.
    assert!(engine.purge_old(1).unwrap().is_empty());
    let target = tempfile::tempdir().unwrap();
    engine
        .restore(5, target.path(), &RestoreOptions::default())
        .unwrap();
    assert_eq!(
        std::fs::read(target.path().join("f")).unwrap(),
        pseudo_random(20_000, 904)
    );
}

#[test]
fn retention_dry_run_changes_nothing_and_shows_the_plan_applied() {
    let engine = BackupEngine::init(MemoryStore::new(), encrypted(), opts()).unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ids = interleaved_backups(&engine, &[a.path(), b.path()], &[0, 1, 0, 1, 0]);
    let policy = RetentionPolicy::default().keep_last(1);

    let plan = engine.plan_retention(&policy).unwrap();
    assert_eq!(backup_ids(&engine), ids, "a plan deletes nothing");
    assert_eq!(engine.read_only().plan_retention(&policy).unwrap(), plan);
    assert_eq!(plan.groups.len(), 2, "{plan}");
    let source_of = |dir: &Path| {
        std::fs::canonicalize(dir)
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    let group_a = plan
        .groups
        .iter()
        .find(|g| g.group.source == source_of(a.path()))
        .unwrap();
    assert_eq!(
        (group_a.keep.as_slice(), group_a.delete.as_slice()),
        (&[5][..], &[1, 3][..])
    );
    assert_eq!(group_a.group.source_kind, "dir");
    let group_b = plan
        .groups
        .iter()
        .find(|g| g.group.source == source_of(b.path()))
        .unwrap();
    assert_eq!(
        (group_b.keep.as_slice(), group_b.delete.as_slice()),
        (&[4][..], &[2][..])
    );

    assert_eq!(engine.apply_retention(&plan).unwrap(), [1, 2, 3]);
    assert_eq!(backup_ids(&engine), plan.keep_ids());
    // Applied again (another purge got there first): nothing left to delete, no error.
    assert!(engine.apply_retention(&plan).unwrap().is_empty());

    // Restricted to one source, the other is not even considered.
    let c = interleaved_backups(&engine, &[a.path()], &[0]);
    let only_a = engine
        .plan_retention(&policy.clone().with_source(source_of(a.path())))
        .unwrap();
    assert_eq!(only_a.groups.len(), 1);
    assert_eq!(only_a.delete_ids(), [5]);
    assert_eq!(only_a.keep_ids(), c);
}

#[test]
fn a_retention_policy_that_keeps_nothing_is_refused() {
    let engine = BackupEngine::init(MemoryStore::new(), encrypted(), opts()).unwrap();
    let a = tempfile::tempdir().unwrap();
    let ids = interleaved_backups(&engine, &[a.path()], &[0, 0]);
    let err = engine.purge_old(0).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("keeps no backup"), "{err}");
    let err = engine
        .plan_retention(&RetentionPolicy::default())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(backup_ids(&engine), ids, "nothing deleted");
}

#[test]
fn archive_objects_round_trip_and_refuse_different_bytes() {
    let engine = BackupEngine::init(MemoryStore::new(), encrypted(), opts()).unwrap();
    let seg = pseudo_random(1 << 20, 9);
    assert_eq!(
        engine
            .archive_put("wal", "000000010000000000000001", &seg)
            .unwrap(),
        backstop::ArchivePut::Stored
    );
    assert_eq!(
        engine
            .archive_put("wal", "000000010000000000000001", &seg)
            .unwrap(),
        backstop::ArchivePut::AlreadyPresent
    );
    let err = engine
        .archive_put("wal", "000000010000000000000001", b"other")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    assert_eq!(
        engine
            .archive_get("wal", "000000010000000000000001")
            .unwrap(),
        seg
    );
    assert_eq!(
        engine
            .archive_get("wal", "000000010000000000000002")
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        engine.archive_list("wal").unwrap(),
        ["000000010000000000000001"]
    );
    assert!(engine.archive_put("wal", "../x", b"x").is_err());
}

/// A WAL segment's object copied over another's key is refused, not returned as the other
/// segment: PostgreSQL would take it for the segment it asked for and end recovery early,
/// without that segment's transactions.
#[test]
fn an_archive_object_copied_to_another_name_is_refused() {
    let store = MemoryStore::new();
    let engine = BackupEngine::init(store.clone(), encrypted(), opts()).unwrap();
    let (first, second) = ("000000010000000000000001", "000000010000000000000002");
    let first_bytes = pseudo_random(64 << 10, 11);
    engine.archive_put("wal", first, &first_bytes).unwrap();
    engine
        .archive_put("wal", second, &pseudo_random(64 << 10, 12))
        .unwrap();
    let copied = store.raw_get(&format!("archive/wal/{first}")).unwrap();
    store.raw_put(&format!("archive/wal/{second}"), copied);
    let err = engine.archive_get("wal", second).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&format!("archive/wal/{second}")) && message.contains(first),
        "{message}"
    );
    // Pushing the segment again does not take the copy for an older push of it.
    let err = engine
        .archive_put("wal", second, &pseudo_random(64 << 10, 12))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert_eq!(engine.archive_get("wal", first).unwrap(), first_bytes);
}

/// One cluster's WAL segment copied into another cluster's archive under the same name is
/// refused there: the object names its archive.
#[test]
fn an_archive_object_copied_to_another_archive_is_refused() {
    let store = MemoryStore::new();
    let engine = BackupEngine::init(store.clone(), encrypted(), opts()).unwrap();
    let segment = "000000010000000000000001";
    let ours = pseudo_random(64 << 10, 21);
    engine.archive_put("wal-1", segment, &ours).unwrap();
    let copied = store.raw_get(&format!("archive/wal-1/{segment}")).unwrap();
    store.raw_put(&format!("archive/wal-2/{segment}"), copied);
    let err = engine.archive_get("wal-2", segment).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&format!("archive/wal-2/{segment}")) && message.contains("`wal-1`"),
        "{message}"
    );
    assert_eq!(engine.archive_get("wal-1", segment).unwrap(), ours);
}

/// An old snapshot copied to a key with a larger id would pass for the latest backup (its
/// seal is sound: the key holder wrote it); the id it holds must be its key's.
#[test]
fn a_snapshot_copied_to_another_id_is_refused() {
    let data = tempfile::tempdir().unwrap();
    sample_tree(data.path());
    let store = MemoryStore::new();
    let engine = BackupEngine::init(store.clone(), encrypted(), opts()).unwrap();
    for _ in 0..2 {
        engine
            .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
            .unwrap();
    }
    let first = store
        .keys()
        .into_iter()
        .find(|k| k.starts_with("snapshots/0000000001-"))
        .unwrap();
    let replayed = "snapshots/0000000003-00112233445566778899aabbccddeeff";
    store.raw_put(replayed, store.raw_get(&first).unwrap());
    // The list leaves it out (with a warning); verify reports it; reading it is an error.
    assert_eq!(engine.list_backups().unwrap().len(), 2);
    let report = engine.verify_all(VerifyLevel::Quick).unwrap();
    assert!(
        report.problems.iter().any(|p| p.contains("backup 3")),
        "{:?}",
        report.problems
    );
    // `latest` passes over it, to the newest genuine backup (not the replayed old one).
    assert_eq!(
        engine
            .backup_info(backstop::BackupSelector::Latest)
            .unwrap()
            .id,
        2
    );
    let err = engine.backup_info(3).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    let message = err.to_string();
    assert!(
        message.contains(replayed) && message.contains("backup 1") && message.contains("backup 3"),
        "{message}"
    );
    // The backups under their own keys still read.
    assert_eq!(engine.backup_info(2).unwrap().id, 2);
    store.raw_remove(replayed);
    assert_eq!(engine.list_backups().unwrap().len(), 2);
}

/// A cache keeps what it fetched: a copy fetched while the repository's object was damaged
/// must not outlive the object's repair (one cache entry serves every copy of a repository
/// with the same id). Regression: `list` kept failing with "index fails authentication" after
/// the original index file was put back, until `--no-cache`.
#[test]
fn a_damaged_copy_in_the_metadata_cache_is_read_again_once_the_repository_is_mended() {
    use backstop::Store as _;

    let data = tempfile::tempdir().unwrap();
    sample_tree(data.path());
    let cache = tempfile::tempdir().unwrap();
    let store = MemoryStore::new();
    let engine = BackupEngine::init(store.clone(), encrypted(), opts()).unwrap();
    engine
        .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
        .unwrap();
    let repository_id = engine.repository_info().id;
    drop(engine);
    let cached = opts().with_cache_dir(cache.path());
    for prefix in ["index/", "snapshots/"] {
        let key = store
            .keys()
            .into_iter()
            .find(|k| k.starts_with(prefix))
            .unwrap();
        let original = store.raw_get(&key).unwrap();
        store.corrupt(&key, |b| *b.last_mut().unwrap() ^= 1);
        // A run (of this build or an older one) fetched the damaged copy into the cache.
        let entry = cache.path().join(&repository_id).join(&key);
        let _ = std::fs::remove_file(&entry);
        let filler =
            backstop::store::CachingStore::new(store.clone(), cache.path().join(&repository_id));
        filler.get(&key).unwrap();
        // While the repository's copy is damaged, that is what is reported, and no cache
        // entry is left holding it.
        // (`list` leaves a damaged backup out; reading the one backup reports it.)
        let err = BackupEngine::open(store.clone(), cached.clone())
            .and_then(|engine| engine.backup_info(backstop::BackupSelector::Latest))
            .expect_err(prefix);
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{prefix}: {err}");
        let message = err.to_string();
        assert!(
            message.contains(&key) && message.contains("damaged in the repository"),
            "{message}"
        );
        assert!(!entry.exists(), "{key}");
        // Fetched into the cache again, then the repository is mended.
        filler.get(&key).unwrap();
        store.raw_put(&key, original);
        let engine = BackupEngine::open(store.clone(), cached.clone()).unwrap();
        assert_eq!(engine.list_backups().unwrap().len(), 1, "{prefix}");
        assert_latest_restores_as(&engine.read_only(), data.path());
    }
}

/// The sample tree (first directory) backed up once into an encrypted repository on a local
/// disk (second directory).
fn local_repository_with_one_backup() -> (tempfile::TempDir, tempfile::TempDir, BackupEngine) {
    let data = tempfile::tempdir().unwrap();
    sample_tree(data.path());
    let repo = tempfile::tempdir().unwrap();
    let engine =
        BackupEngine::init(backstop::LocalStore::new(repo.path()), encrypted(), opts()).unwrap();
    engine
        .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
        .unwrap();
    (data, repo, engine)
}

#[test]
fn local_store_repository_round_trip() {
    let (data, repo, _) = local_repository_with_one_backup();
    let engine = ReadOnlyEngine::open(backstop::LocalStore::new(repo.path()), opts()).unwrap();
    assert!(engine.verify_all(VerifyLevel::Full).unwrap().is_ok());
    let target = tempfile::tempdir().unwrap();
    engine
        .restore(1, target.path(), &RestoreOptions::default())
        .unwrap();
    assert_eq!(describe_tree(data.path()), describe_tree(target.path()));
}

#[test]
fn gc_removes_temp_files_of_interrupted_writes_once_they_are_an_hour_old() {
    let (_data, repo, engine) = local_repository_with_one_backup();
    // What a put killed between writing its temp file and the rename leaves: one from two
    // hours ago, one from now (a put that may still be running).
    let pack_dir = std::fs::read_dir(repo.path().join("packs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let old = pack_dir.join(".tmp-00000000000000aa");
    let fresh = repo.path().join("snapshots").join(".tmp-00000000000000bb");
    std::fs::write(&old, b"half a pack").unwrap();
    std::fs::write(&fresh, b"half a snapshot").unwrap();
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();

    let report = engine.gc(true).unwrap();
    assert_eq!(report.temp_files_removed, 0, "a dry run removes nothing");
    assert!(old.exists());
    let report = engine.gc(false).unwrap();
    assert_eq!(report.temp_files_removed, 1, "{report:?}");
    assert!(!old.exists(), "the old temp file is still there");
    assert!(
        fresh.exists(),
        "a temp file of a put that may be running was removed"
    );
    assert!(engine.verify_all(VerifyLevel::Full).unwrap().is_ok());
}

#[test]
fn a_damaged_key_file_is_reported_as_corrupt_not_as_a_wrong_password() {
    let store = MemoryStore::new();
    BackupEngine::init(store.clone(), encrypted(), opts()).unwrap();
    let key = store
        .keys()
        .into_iter()
        .find(|k| k.starts_with("keys/"))
        .unwrap();
    store.corrupt(&key, |b| {
        let i = b.len() / 2;
        b[i] ^= 0x01;
    });
    let err = BackupEngine::open(store, opts()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert!(
        err.to_string().contains(&key),
        "the message must name the key object: {err}"
    );
}

#[test]
fn a_full_disk_fails_the_backup_with_storage_full_and_keeps_earlier_backups() {
    let data = tempfile::tempdir().unwrap();
    sample_tree(data.path());
    let base = MemoryStore::new();
    let engine = BackupEngine::init(base.clone(), encrypted(), opts()).unwrap();
    engine
        .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
        .unwrap();
    std::fs::write(data.path().join("new"), pseudo_random(500_000, 77)).unwrap();
    let full = Arc::new(FaultStore::with_plan(
        base.clone(),
        FaultPlan::new()
            .fail_puts_with_prefix("packs/")
            .with_error_kind(backstop::StoreErrorKind::StorageFull),
    ));
    let err = BackupEngine::open(Arc::clone(&full), opts())
        .unwrap()
        .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::StorageFull, "{err}");
    assert!(
        err.to_string().contains("packs/"),
        "the message must name the object: {err}"
    );
    let engine = BackupEngine::open(base, opts()).unwrap();
    assert_eq!(engine.list_backups().unwrap().len(), 1);
    assert!(engine.verify_all(VerifyLevel::Full).unwrap().is_ok());
}

/// After an incremental backup a page file's blocks alternate between old and new frames; the
/// restore must not read and decode an old frame again at every return to it.
#[test]
fn restoring_pages_that_alternate_between_frames_reads_each_frame_about_once() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("table.db");
    // Incompressible pages, so bytes read measure frames read.
    let mut bytes = pseudo_random(2048 * 8192, 11);
    std::fs::write(&file, &bytes).unwrap();
    let store = Arc::new(backstop::store::CountingStore::new(MemoryStore::new()));
    let engine = BackupEngine::init(store.clone(), encrypted(), opts()).unwrap();
    let mut source = PagedDir(DirSource::new(data.path()), 8192);
    engine
        .create_backup(&mut source, &BackupOptions::default())
        .unwrap();
    // Every fifth page changes: each old frame of 16 pages is interrupted three or four
    // times, and the runs of unchanged pages between often cross from one frame to the next.
    for p in (0..2048).step_by(5) {
        bytes[p * 8192] = b'#';
    }
    std::fs::write(&file, &bytes).unwrap();
    let second = engine
        .create_backup(&mut source, &BackupOptions::default())
        .unwrap();
    let target = tempfile::tempdir().unwrap();
    let before = store.counts();
    engine
        .restore(
            backstop::BackupSelector::Latest,
            target.path(),
            &RestoreOptions::default(),
        )
        .unwrap();
    let read = store.counts().since(&before);
    assert_eq!(
        std::fs::read(target.path().join("table.db")).unwrap(),
        bytes
    );
    let stored: u64 = second.bytes_added + engine.list_backups().unwrap()[0].bytes_added;
    // Every frame once, plus the snapshot, index and tree reads (without the cache each old
    // frame was read five times; reading a run whole, with the cached frame it starts in,
    // read 1.3 times the stored bytes).
    assert!(
        read.bytes_down * 10 < stored * 11,
        "read {} bytes for {stored} stored",
        read.bytes_down
    );
}

/// A run of blobs is read only where the frame cache lacks its frames; a frame that was cached
/// when the run began and is pushed out while the run is decoded is read again on its own.
#[test]
fn a_file_that_returns_to_frames_the_cache_let_go_restores_intact() {
    let data = tempfile::tempdir().unwrap();
    // Twenty frames of 64 incompressible pages, then the same pages again: the second pass
    // finds the last sixteen frames cached (4 MiB a worker) and the first four gone, and
    // decoding those four pushes out the cached ones the run still needs.
    let half = pseudo_random(20 * 64 * 4096, 3);
    let bytes = [half.clone(), half].concat();
    std::fs::write(data.path().join("twice.db"), &bytes).unwrap();
    let engine = BackupEngine::init(MemoryStore::new(), encrypted(), opts()).unwrap();
    let backup = engine
        .create_backup(
            &mut PagedDir(DirSource::new(data.path()), 4096),
            &BackupOptions::default(),
        )
        .unwrap();
    assert!(
        backup.bytes_added < bytes.len() as u64 / 2 + 100_000,
        "{backup:?}"
    );
    let target = tempfile::tempdir().unwrap();
    engine
        .restore(backup.id, target.path(), &RestoreOptions::default())
        .unwrap();
    assert!(std::fs::read(target.path().join("twice.db")).unwrap() == bytes);
}

/// On an object store every read is a round trip: the chunk lists of a large page file, and the
/// bases its patches need, are fetched with a few joined reads, not one request per list blob.
#[test]
fn reading_the_chunk_lists_of_a_large_page_file_takes_few_requests() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("table.db");
    // 40 lists of 4096 ids: pages of 128 bytes keep the file at 20 MiB.
    let (page, segments) = (128usize, 40usize);
    let mut bytes = pseudo_random(page * 4096 * segments, 5);
    std::fs::write(&file, &bytes).unwrap();
    let store = Arc::new(backstop::store::CountingStore::new(MemoryStore::new()));
    let engine = BackupEngine::init(store.clone(), encrypted(), opts()).unwrap();
    let mut source = PagedDir(DirSource::new(data.path()), page as u32);
    let first = engine
        .create_backup(&mut source, &BackupOptions::default())
        .unwrap();
    // One page in each of ten segments changes: ten patches, each against a list of the
    // first backup, beside thirty lists reused as they are.
    for segment in (0..segments).step_by(4) {
        bytes[segment * 4096 * page] ^= 0xff;
    }
    std::fs::write(&file, &bytes).unwrap();
    let second = engine
        .create_backup(&mut source, &BackupOptions::default())
        .unwrap();
    for (id, lists_read) in [(first.id, segments), (second.id, segments + 10)] {
        let before = store.counts();
        let files = engine.backup_files(id).unwrap();
        let gets = store.counts().since(&before).gets;
        let table = files.iter().find(|f| f.path == "table.db").unwrap();
        assert_eq!(table.chunks, (4096 * segments) as u64);
        // The snapshot object, the tree, then the lists and the bases in a few joined reads:
        // 4 and 7 requests (with a request per list blob, the first took 42).
        assert!(
            gets <= 8,
            "{gets} requests to read backup {id}, whose lists take {lists_read} blobs"
        );
    }
    let target = tempfile::tempdir().unwrap();
    engine
        .restore(second.id, target.path(), &RestoreOptions::default())
        .unwrap();
    assert_eq!(
        std::fs::read(target.path().join("table.db")).unwrap(),
        bytes
    );
}

/// Writes `files` files of `size` pseudo-random bytes under `root`, spread over `dirs`
/// directories.
fn write_files(root: &Path, files: u64, dirs: u64, size: usize, seed: u64) {
    for i in 0..files {
        let dir = root.join(format!("d{}", i % dirs));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}")), pseudo_random(size, i + seed)).unwrap();
    }
}

/// Restores the latest backup, checks it against `data`, and returns the store reads it made.
fn restore_reads(
    engine: &BackupEngine,
    store: &backstop::store::CountingStore<MemoryStore>,
    data: &Path,
) -> u64 {
    let target = tempfile::tempdir().unwrap();
    let before = store.counts();
    engine
        .restore(
            backstop::BackupSelector::Latest,
            target.path(),
            &RestoreOptions::default(),
        )
        .unwrap();
    let used = store.counts().since(&before);
    assert_eq!(describe_tree(target.path()), describe_tree(data));
    used.gets
}

/// On an object store every request costs a round trip: the small files of a directory, stored
/// side by side, must not cost a request each when restored.
/// Files under 128 KiB share frames; one worker restores a run of them and keeps the frames.
#[test]
fn restoring_many_small_files_takes_few_requests() {
    let (files, size) = (2000u64, 3000);
    let data = tempfile::tempdir().unwrap();
    write_files(data.path(), files, 20, size, 1);
    let store = Arc::new(backstop::store::CountingStore::new(MemoryStore::new()));
    let engine = BackupEngine::init(store.clone(), encrypted(), opts()).unwrap();
    engine
        .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
        .unwrap();
    let gets = restore_reads(&engine, &store, data.path());
    // 6 MB in frames of 256 KiB: the snapshot, the tree and each frame once make 25. When the
    // files went to the two workers one by one, both fetched most frames: 48.
    assert!(
        gets < 35,
        "{gets} requests to restore {files} files of {size} bytes"
    );
}

/// Files too large to share frames (140 KB, one blob each at the default chunk sizes) but
/// stored one after another in a pack are fetched together, not with a request each.
#[test]
fn restoring_many_medium_files_takes_few_requests() {
    let (files, size) = (150u64, 140_000);
    let data = tempfile::tempdir().unwrap();
    write_files(data.path(), files, 7, size, 7);
    std::fs::write(data.path().join("empty"), b"").unwrap();
    let store = Arc::new(backstop::store::CountingStore::new(MemoryStore::new()));
    let init = InitOptions::default()
        .with_kdf(8 * 1024, 1)
        .with_password("secret");
    // One thread backs up, so the files lie in the packs in restore order and the count
    // does not depend on how the test machine schedules threads (several reading threads
    // interleave files; the restore tolerates gaps of up to 2 MiB, but how far apart they
    // end up varies from run to run).
    let backup = BackupEngine::init(store.clone(), init, opts().with_threads(1)).unwrap();
    backup
        .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
        .unwrap();
    let engine = BackupEngine::open(store.clone(), opts()).unwrap();
    let gets = restore_reads(&engine, &store, data.path());
    // 21 MB in 8 MiB packs: a handful of joined reads, plus the snapshot and its trees
    // (152 requests before files were fetched together).
    assert!(
        gets < 20,
        "{gets} requests to restore {files} files of {size} bytes"
    );
}

/// A store that tells a test how often another process's lock was read (once per attempt to
/// take a lock while it exists; the attempt decides after the read).
#[derive(Clone, Debug)]
struct LockWatch {
    inner: MemoryStore,
    attempts: Arc<(std::sync::Mutex<usize>, std::sync::Condvar)>,
}

impl LockWatch {
    fn wait_for_attempts(&self, n: usize) {
        let (count, changed) = &*self.attempts;
        let mut count = count.lock().unwrap();
        while *count < n {
            count = changed.wait(count).unwrap();
        }
    }
}

impl backstop::Store for LockWatch {
    fn put(
        &self,
        key: &str,
        bytes: &[u8],
        mode: backstop::PutMode,
    ) -> Result<(), backstop::StoreError> {
        self.inner.put(key, bytes, mode)
    }
    fn get(&self, key: &str) -> Result<Vec<u8>, backstop::StoreError> {
        let got = self.inner.get(key);
        if key.starts_with("locks/") {
            let (count, changed) = &*self.attempts;
            *count.lock().unwrap() += 1;
            changed.notify_all();
        }
        got
    }
    fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<u8>, backstop::StoreError> {
        self.inner.get_range(key, range)
    }
    fn list(&self, prefix: &str) -> Result<Vec<backstop::store::ObjectMeta>, backstop::StoreError> {
        self.inner.list(prefix)
    }
    fn head(&self, key: &str) -> Result<backstop::store::ObjectMeta, backstop::StoreError> {
        self.inner.head(key)
    }
    fn delete(&self, key: &str) -> Result<(), backstop::StoreError> {
        self.inner.delete(key)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// A gc of another host holds the repository: a backup told to wait takes the lock once the
/// gc is done; one told not to wait fails at once; one whose wait runs out fails after it.
#[test]
fn a_backup_waits_for_a_gc_lock_when_told_to() {
    use backstop::Store as _;
    let store = LockWatch {
        inner: MemoryStore::new(),
        attempts: Arc::default(),
    };
    BackupEngine::init(store.clone(), fast_init(), opts()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let gc_lock = "locks/00000000000000000000000000000000";
    let plant = || {
        let info = format!(
            r#"{{"exclusive":true,"host":"other-host","pid":1,"time_unix":{now},"purpose":"gc"}}"#
        );
        store
            .put(gc_lock, info.as_bytes(), backstop::PutMode::Overwrite)
            .unwrap();
    };
    plant();
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("f"), b"data").unwrap();
    let backup = |wait: std::time::Duration| {
        let engine = BackupEngine::open(store.clone(), opts().with_lock_wait(wait)).unwrap();
        engine.create_backup(&mut DirSource::new(d.path()), &BackupOptions::default())
    };

    let err = backup(std::time::Duration::ZERO).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Locked, "{err}");

    let started = std::time::Instant::now();
    let err = backup(std::time::Duration::from_secs(1)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Locked, "{err}");
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));

    // The "gc" ends after the waiting backup was refused once.
    let before = *store.attempts.0.lock().unwrap();
    let releaser = {
        let store = store.clone();
        std::thread::spawn(move || {
            store.wait_for_attempts(before + 1);
            store.delete(gc_lock).unwrap();
        })
    };
    let info = backup(std::time::Duration::from_secs(60)).unwrap();
    releaser.join().unwrap();
    // Its first attempt read the gc's lock (the releaser waited for that), so it succeeded by
    // trying again.
    assert_eq!(info.id, 1);
    assert!(
        store.inner.keys().iter().all(|k| !k.starts_with("locks/")),
        "a lock was left behind"
    );
}

/// Pack bytes in the store, and the number of packs.
fn pack_bytes(store: &MemoryStore) -> (u64, usize) {
    let packs: Vec<String> = store
        .keys()
        .into_iter()
        .filter(|k| k.starts_with("packs/"))
        .collect();
    let bytes = packs
        .iter()
        .map(|k| store.raw_get(k).unwrap().len() as u64)
        .sum();
    (bytes, packs.len())
}

/// Backup 1 of 24 files, backup 2 of 4 of them; backup 1 deleted. Most of backup 1's packs
/// are then unused, and those holding the 4 kept files mostly so.
fn repository_with_mostly_unused_packs() -> (MemoryStore, tempfile::TempDir) {
    let store = MemoryStore::new();
    let init = encrypted().with_pack_size(1024 * 1024);
    // One worker, so that which frames the kept files' chunks share with the others', and so
    // how much a gc copies, does not depend on how two workers interleave.
    let engine = BackupEngine::init(store.clone(), init, opts().with_threads(1)).unwrap();
    let all = tempfile::tempdir().unwrap();
    write_files(all.path(), 24, 1, 150_000, 900);
    engine
        .create_backup(&mut DirSource::new(all.path()), &BackupOptions::default())
        .unwrap();
    let kept = tempfile::tempdir().unwrap();
    let mut names: Vec<_> = std::fs::read_dir(all.path().join("d0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    std::fs::create_dir(kept.path().join("d0")).unwrap();
    for (i, path) in names.iter().enumerate().filter(|(i, _)| i % 6 == 0) {
        let to = kept.path().join("d0").join(format!("k{i}"));
        std::fs::copy(path, to).unwrap();
    }
    engine
        .create_backup(&mut DirSource::new(kept.path()), &BackupOptions::default())
        .unwrap();
    engine.delete_backup(1).unwrap();
    (store, kept)
}

/// gc copies the used blobs of mostly unused packs into new packs; the old packs stay for
/// readers that loaded the old index until the grace period is over, and a later gc deletes
/// them. The space comes back, and the backup verifies and restores throughout.
#[test]
fn gc_rewrites_mostly_unused_packs_and_deletes_them_after_the_grace_period() {
    use backstop::GcOptions;
    let (store, kept) = repository_with_mostly_unused_packs();
    let engine = BackupEngine::open(store.clone(), opts()).unwrap();
    let (before, _) = pack_bytes(&store);

    // 100 % never rewrites: only wholly unused packs would go.
    let never = GcOptions::default()
        .dry_run(true)
        .with_repack_unused_percent(100);
    assert_eq!(engine.gc_with(&never).unwrap().packs_repacked, 0);
    let planned = engine.gc_with(&GcOptions::default().dry_run(true)).unwrap();
    assert!(planned.packs_repacked >= 1, "{planned:?}");
    assert_eq!(pack_bytes(&store).0, before, "a dry run changed the packs");

    // A reader that loaded the index before the gc.
    let early_reader = ReadOnlyEngine::open(store.clone(), opts()).unwrap();
    let report = engine.gc(false).unwrap();
    assert_eq!(report.packs_repacked, planned.packs_repacked, "{report:?}");
    // The dry run counts the index objects it would replace, at most what the gc replaced.
    assert!(
        report.indexes_rewritten > 0 && planned.indexes_rewritten >= report.indexes_rewritten,
        "{planned:?} then {report:?}"
    );
    assert!(
        report.bytes_repacked >= 4 * 150_000 && report.bytes_repacked < before / 2,
        "{report:?}"
    );
    let target = tempfile::tempdir().unwrap();
    early_reader
        .restore(2, target.path(), &RestoreOptions::default())
        .unwrap();
    assert_eq!(describe_tree(target.path()), describe_tree(kept.path()));
    assert!(engine.verify_all(VerifyLevel::Full).unwrap().is_ok());

    // Within the grace period a second gc keeps the rewritten packs.
    let again = engine.gc(false).unwrap();
    assert_eq!(again.packs_in_grace, report.packs_repacked, "{again:?}");
    assert_eq!(again.packs_repacked, 0, "{again:?}");

    // Once it is over, they go, and so does the record.
    let no_grace = GcOptions::default().with_superseded_grace(std::time::Duration::ZERO);
    let last = engine.gc_with(&no_grace).unwrap();
    assert_eq!(last.packs_deleted, report.packs_repacked, "{last:?}");
    assert_eq!(last.packs_in_grace, 0);
    assert!(store.keys().iter().all(|k| !k.starts_with("superseded/")));
    let (after, _) = pack_bytes(&store);
    // What stays is the 4 files (random, stored as they are) and backup 2's tree: the unused
    // blobs that shared frames with used ones went too.
    assert!(
        after <= 4 * 150_000 + 20_000,
        "pack bytes {before} -> {after}: the space did not come back"
    );
    // Converged: nothing more to do.
    let settled = engine.gc_with(&no_grace.dry_run(true)).unwrap();
    assert_eq!(
        (settled.packs_repacked, settled.packs_deleted),
        (0, 0),
        "{settled:?}"
    );
    let target = tempfile::tempdir().unwrap();
    engine
        .restore(2, target.path(), &RestoreOptions::default())
        .unwrap();
    assert_eq!(describe_tree(target.path()), describe_tree(kept.path()));
    assert!(engine.verify_all(VerifyLevel::Full).unwrap().is_ok());
}

/// A gc cut short after it wrote its new index, before it deleted the old one, leaves every
/// blob listed twice (in the old pack and in its rewritten copy). The next gc keeps one copy
/// of each and finds the other pack unused; if that is the old pack, it must still wait out
/// the grace period for readers that loaded the old index. Which copy wins depends on the
/// index objects' (random) keys, so several repositories are tried.
#[test]
fn a_gc_after_one_cut_short_at_its_index_still_waits_out_the_grace_period() {
    use backstop::GcOptions;
    for round in 0..4 {
        let (store, kept) = repository_with_mostly_unused_packs();
        let early_reader = ReadOnlyEngine::open(store.clone(), opts()).unwrap();
        // Deletes of a gc: the old index objects first.
        let cut_short = Arc::new(FaultStore::with_plan(
            store.clone(),
            FaultPlan::new().fail_delete(0),
        ));
        let result = BackupEngine::open(Arc::clone(&cut_short), opts())
            .unwrap()
            .gc_with(&GcOptions::default());
        assert!(result.is_err(), "round {round}: the gc was not cut short");
        let engine = BackupEngine::open(store.clone(), opts()).unwrap();
        // It may rewrite packs again (each blob's copy that it keeps leaves both packs
        // partly used), and deletes packs no reader of either index reads.
        engine.gc(false).unwrap();
        let target = tempfile::tempdir().unwrap();
        early_reader
            .restore(2, target.path(), &RestoreOptions::default())
            .unwrap_or_else(|e| panic!("round {round}: the early reader lost a pack: {e}"));
        assert_eq!(describe_tree(target.path()), describe_tree(kept.path()));
        assert!(engine.verify_all(VerifyLevel::Full).unwrap().is_ok());
        // Once the grace period is over the old packs go, and the repository settles.
        let no_grace = GcOptions::default().with_superseded_grace(std::time::Duration::ZERO);
        engine.gc_with(&no_grace).unwrap();
        let settled = engine.gc_with(&no_grace.dry_run(true)).unwrap();
        assert_eq!(
            (
                settled.packs_repacked,
                settled.packs_deleted,
                settled.packs_in_grace
            ),
            (0, 0, 0),
            "round {round}: {settled:?}"
        );
        assert!(store.keys().iter().all(|k| !k.starts_with("superseded/")));
        let target = tempfile::tempdir().unwrap();
        engine
            .restore(2, target.path(), &RestoreOptions::default())
            .unwrap();
        assert_eq!(describe_tree(target.path()), describe_tree(kept.path()));
    }
}

/// A pack that gc is to rewrite but that does not match its id stops the gc before anything
/// changes: no index object, pack or backup goes, the error names the pack, and once the pack
/// is mended the gc runs. gc reads such a pack in pieces and copies its used units as it goes,
/// so a byte changed in a part it does not copy (here the pack's last byte) must still be found.
#[test]
fn gc_stops_at_a_damaged_pack_it_would_rewrite_and_changes_nothing() {
    let (store, kept) = repository_with_mostly_unused_packs();
    let engine = BackupEngine::open(store.clone(), opts()).unwrap();
    assert!(
        engine
            .gc_with(&backstop::GcOptions::default().dry_run(true))
            .unwrap()
            .packs_repacked
            >= 1
    );
    let before: BTreeMap<String, Vec<u8>> = store
        .keys()
        .into_iter()
        .map(|k| (k.clone(), store.raw_get(&k).unwrap()))
        .collect();
    for (key, bytes) in before.iter().filter(|(k, _)| k.starts_with("packs/")) {
        let mut bad = bytes.clone();
        *bad.last_mut().unwrap() ^= 0x40;
        store.raw_put(key, bad);
    }

    let error = engine.gc(false).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::Corrupt, "{error}");
    let named = before
        .keys()
        .find(|k| k.starts_with("packs/") && error.to_string().contains(k.as_str()));
    assert!(named.is_some(), "the error names no pack: {error}");
    let after: Vec<String> = store.keys();
    for key in before.keys() {
        assert!(after.contains(key), "the failed gc removed {key}");
    }
    for key in after.iter().filter(|k| !k.starts_with("packs/")) {
        assert!(before.contains_key(key), "the failed gc left {key}");
    }

    for (key, bytes) in &before {
        store.raw_put(key, bytes.clone());
    }
    let report = engine.gc(false).unwrap();
    assert!(report.packs_repacked >= 1, "{report:?}");
    let target = tempfile::tempdir().unwrap();
    engine
        .restore(2, target.path(), &RestoreOptions::default())
        .unwrap();
    assert_eq!(describe_tree(target.path()), describe_tree(kept.path()));
}

/// A gc that rewrites packs reports them and their bytes, and a cancelled one stops before it
/// changes any index: every backup restores, and the next gc finishes the job.
#[test]
fn a_rewriting_gc_reports_progress_and_a_cancelled_one_changes_no_index() {
    use std::sync::atomic::Ordering::Relaxed;
    let (store, kept) = repository_with_mostly_unused_packs();
    let engine = BackupEngine::open(store.clone(), opts()).unwrap();
    let index_keys = |store: &MemoryStore| -> Vec<String> {
        store
            .keys()
            .into_iter()
            .filter(|k| k.starts_with("index/"))
            .collect()
    };
    let before_index = index_keys(&store);
    let before_packs = pack_bytes(&store);

    let token = backstop::CancelToken::new();
    let stopper = Arc::new(ProgressWatch {
        cancel_on_bytes: Some(token.clone()),
        ..ProgressWatch::default()
    });
    let cancelled = backstop::GcOptions::default()
        .with_progress(stopper.clone())
        .with_cancel(token);
    let err = engine.gc_with(&cancelled).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert_eq!(
        index_keys(&store),
        before_index,
        "a cancelled gc changed the index"
    );
    assert!(store.keys().iter().all(|k| !k.starts_with("superseded/")));
    let after_cancel = pack_bytes(&store);
    assert!(
        after_cancel.1 >= before_packs.1,
        "a cancelled gc deleted packs"
    );
    let target = tempfile::tempdir().unwrap();
    engine
        .restore(2, target.path(), &RestoreOptions::default())
        .unwrap();
    assert_eq!(describe_tree(target.path()), describe_tree(kept.path()));

    let watch = Arc::new(ProgressWatch::default());
    let report = engine
        .gc_with(&backstop::GcOptions::default().with_progress(watch.clone()))
        .unwrap();
    assert!(report.packs_repacked >= 1, "{report:?}");
    let phases = watch.phases.lock().unwrap().clone();
    assert_eq!(phases.len(), 1, "{phases:?}");
    let (name, packs, bytes) = &phases[0];
    assert_eq!((name.as_str(), *packs), ("rewrite", report.packs_repacked));
    assert_eq!(watch.packs.load(Relaxed), report.packs_repacked);
    assert_eq!(watch.bytes.load(Relaxed), *bytes);
    assert!(*bytes > report.bytes_repacked, "{bytes} {report:?}");
    assert!(engine.verify_all(VerifyLevel::Full).unwrap().is_ok());
}

/// A gc cancelled while it reads the backups' file lists stops there and changes nothing,
/// also when it would only have deleted packs (and so never reached a rewrite to stop in).
#[test]
fn a_gc_cancelled_while_it_reads_the_file_lists_changes_nothing() {
    let first = tempfile::tempdir().unwrap();
    sample_tree(first.path());
    let second = tempfile::tempdir().unwrap();
    std::fs::write(second.path().join("other.bin"), pseudo_random(900_000, 7)).unwrap();
    let store = MemoryStore::new();
    let engine = BackupEngine::init(store.clone(), encrypted(), opts()).unwrap();
    for data in [&first, &second] {
        engine
            .create_backup(&mut DirSource::new(data.path()), &BackupOptions::default())
            .unwrap();
    }
    engine.delete_backup(1).unwrap();
    let before = store.keys();

    let token = backstop::CancelToken::new();
    token.cancel();
    let err = engine
        .gc_with(&backstop::GcOptions::default().with_cancel(token))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert!(err.to_string().contains("changed nothing"), "{err}");
    assert_eq!(
        store.keys(),
        before,
        "a cancelled gc changed the repository"
    );

    let report = engine.gc_with(&backstop::GcOptions::default()).unwrap();
    assert!(report.packs_deleted >= 1, "nothing to delete: {report:?}");
    assert_eq!(report.packs_repacked, 0, "{report:?}");
}

/// Crash safety of a rewriting gc: fail each of its puts and deletes in turn (the gc stops
/// there, as if killed). The backup must verify and restore after every failure, and two
/// clean gcs must bring the repository to the state a clean run reaches.
#[test]
fn a_failure_at_any_step_of_a_rewriting_gc_leaves_the_repository_valid() {
    use backstop::GcOptions;
    let (base, kept) = repository_with_mostly_unused_packs();
    let pristine = base.snapshot();
    let reset = || base.restore(&pristine);
    let no_grace = GcOptions::default().with_superseded_grace(std::time::Duration::ZERO);
    let counting = Arc::new(FaultStore::new(base.clone()));
    let clean = BackupEngine::open(Arc::clone(&counting), opts())
        .unwrap()
        .gc_with(&no_grace)
        .unwrap();
    assert!(clean.packs_repacked >= 1, "{clean:?}");
    let (puts, deletes) = (counting.puts_seen(), counting.deletes_seen());
    assert!(puts >= 3 && deletes >= 3, "puts {puts}, deletes {deletes}");
    let settle = |what: &str| {
        let engine = BackupEngine::open(base.clone(), opts()).unwrap();
        let report = engine.verify_all(VerifyLevel::Full).unwrap();
        assert!(report.is_ok(), "{what}: {:?}", report.problems);
        let target = tempfile::tempdir().unwrap();
        engine
            .restore(2, target.path(), &RestoreOptions::default())
            .unwrap();
        assert_eq!(
            describe_tree(target.path()),
            describe_tree(kept.path()),
            "{what}"
        );
        engine.gc_with(&no_grace).unwrap();
        engine.gc_with(&no_grace).unwrap();
        let settled = engine.gc_with(&no_grace.clone().dry_run(true)).unwrap();
        assert_eq!(
            (settled.packs_repacked, settled.packs_deleted),
            (0, 0),
            "{what}: {settled:?}"
        );
        assert!(
            engine.verify_all(VerifyLevel::Full).unwrap().is_ok(),
            "{what}"
        );
        assert!(
            base.keys()
                .iter()
                .all(|k| !k.starts_with("locks/") && !k.starts_with("superseded/")),
            "{what}: {:?}",
            base.keys()
        );
        pack_bytes(&base)
    };
    reset();
    let reference = settle("no failure");
    // The last delete releases the gc's lock: a lock left by a live process is another matter
    // (it blocks the next gc until it is stale), not this test's.
    let plans = (0..puts)
        .map(|n| (format!("put #{n} failed"), FaultPlan::new().fail_put(n)))
        .chain((0..deletes - 1).map(|n| {
            (
                format!("delete #{n} failed"),
                FaultPlan::new().fail_delete(n),
            )
        }));
    for (what, plan) in plans {
        reset();
        let faulty = Arc::new(FaultStore::with_plan(base.clone(), plan));
        let result = BackupEngine::open(Arc::clone(&faulty), opts())
            .unwrap()
            .gc_with(&no_grace);
        assert!(result.is_err(), "{what}: the gc did not fail");
        assert_eq!(faulty.faults_injected(), 1, "{what}");
        let (bytes, packs) = settle(&what);
        // Rewritten packs differ from run to run in their sealed headers, and in where the
        // units are cut into packs when the index lists the old packs in another order.
        assert!(
            packs.abs_diff(reference.1) <= 1,
            "{what}: {packs} packs vs {}",
            reference.1
        );
        assert!(
            bytes.abs_diff(reference.0) < 4096,
            "{what}: {bytes} pack bytes vs {} after a clean gc",
            reference.0
        );
    }
}

/// The files the fixture of format `version` backed up (tests/fixtures/format-v*/README.md);
/// version 5's add `table.db`, whose page ids fill a chunk list.
fn fixture_source(root: &Path, version: u32) {
    let sqlite_file = |pages: usize, step: usize, modulus: usize| {
        let mut bytes: Vec<u8> = (0..pages * 4096)
            .map(|j| ((j / 4096) * step + j % modulus) as u8)
            .collect();
        bytes[..16].copy_from_slice(b"SQLite format 3\0");
        // The page size, 4096, big-endian as SQLite stores it.
        bytes[16..18].copy_from_slice(&[0x10, 0x00]);
        bytes
    };
    std::fs::write(root.join("app.db"), sqlite_file(20, 7, 251)).unwrap();
    let big: Vec<u8> = (0..300 * 1024usize).map(|j| (j * 31 / 97) as u8).collect();
    std::fs::write(root.join("big.bin"), big).unwrap();
    std::fs::write(
        root.join("notes.txt"),
        format!("a repository written by backstop format version {version}\n"),
    )
    .unwrap();
    if version >= 5 {
        std::fs::write(root.join("table.db"), sqlite_file(1100, 13, 239)).unwrap();
    }
}

/// A copy of the repository a build of format `version` wrote (tests/fixtures), opened with
/// its password, and the files it backed up.
struct Fixture {
    fixture: PathBuf,
    repo: tempfile::TempDir,
    source: tempfile::TempDir,
    engine: BackupEngine,
}

fn open_fixture(version: u32) -> Fixture {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/format-v{version}/repo"));
    let repo = tempfile::tempdir().unwrap();
    copy_dir(&fixture, repo.path());
    let engine = BackupEngine::open(
        backstop::LocalStore::new(repo.path()),
        EngineOptions::default().with_password("pw"),
    )
    .unwrap();
    let source = tempfile::tempdir().unwrap();
    fixture_source(source.path(), version);
    Fixture {
        fixture,
        repo,
        source,
        engine,
    }
}

/// The files of backup `id`, restored into a fresh directory.
fn restored_files(engine: &BackupEngine, id: u64) -> BTreeMap<String, Vec<u8>> {
    let target = tempfile::tempdir().unwrap();
    engine
        .restore(id, target.path(), &RestoreOptions::default())
        .unwrap();
    file_contents(target.path())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn file_contents(root: &Path) -> BTreeMap<String, Vec<u8>> {
    walk_files(root)
        .into_iter()
        .map(|f| {
            let name = f.strip_prefix(root).unwrap().display().to_string();
            (name, std::fs::read(&f).unwrap())
        })
        .collect()
}

/// The format version of each object under `index/`, `snapshots/` and `packs/` of `repo` that
/// its `fixture` does not have (a pack's: its header's), by relative path.
fn versions_written(repo: &Path, fixture: &Path) -> BTreeMap<String, u8> {
    let mut versions = BTreeMap::new();
    for dir in ["index", "snapshots", "packs"] {
        for file in walk_files(&repo.join(dir)) {
            let relative = file.strip_prefix(repo).unwrap().to_owned();
            if fixture.join(&relative).exists() {
                continue;
            }
            let bytes = std::fs::read(&file).unwrap();
            // A pack's header envelope sits before its length and magic at the end.
            let version = if dir == "packs" {
                let len = u32::from_le_bytes(bytes[bytes.len() - 8..][..4].try_into().unwrap());
                bytes[bytes.len() - 8 - len as usize + 5]
            } else {
                bytes[5]
            };
            versions.insert(relative.display().to_string(), version);
        }
    }
    versions
}

#[test]
fn a_version_1_repository_reads_verifies_and_takes_new_backups() {
    let Fixture {
        fixture,
        repo,
        source,
        engine,
    } = open_fixture(1);
    let restored = |id: u64| restored_files(&engine, id);

    // Version 1 pack headers name framed pages by id; version 2 ones do not.
    let verified = engine.verify_all(VerifyLevel::Full).unwrap();
    assert!(verified.is_ok(), "{verified:?}");
    assert_eq!(restored(1), file_contents(source.path()));

    // A version 2 backup into it shares the unchanged pages with the version 1 one.
    let mut app = std::fs::read(source.path().join("app.db")).unwrap();
    for b in &mut app[5 * 4096..6 * 4096] {
        *b = b.wrapping_add(1);
    }
    std::fs::write(source.path().join("app.db"), &app).unwrap();
    let second = engine
        .create_backup(
            &mut DirSource::new(source.path()),
            &BackupOptions::default(),
        )
        .unwrap();
    assert_eq!(second.blobs_added, 2, "the changed page and the tree");
    assert_eq!(restored(second.id), file_contents(source.path()));
    // What this build wrote into the repository is version 2 (index entries as maps), which
    // builds from before version 4 read: a repository is not upgraded behind their back.
    let written_versions = || versions_written(repo.path(), &fixture);
    let versions = written_versions();
    assert!(
        versions.keys().any(|k| k.starts_with("index/")),
        "{versions:?}"
    );
    assert!(
        versions.keys().any(|k| k.starts_with("packs/")),
        "{versions:?}"
    );
    assert!(versions.values().all(|v| *v == 2), "{versions:?}");

    // gc rewrites the version 1 pack once the first backup is gone; the second still restores.
    delete_and_rewrite_every_pack(&engine, 1);
    let verified = engine.verify_all(VerifyLevel::Full).unwrap();
    assert!(verified.is_ok(), "{verified:?}");
    assert_eq!(restored(second.id), file_contents(source.path()));
    let versions = written_versions();
    assert!(versions.values().all(|v| *v == 2), "after gc: {versions:?}");
}

/// A repository the last version 5 build wrote (full 32-byte ids everywhere, short ids only in
/// chunk lists) verifies and restores, and this build's backups into it name blobs as that
/// build did: the unchanged pages are found, the chunk list is patched, and every object it
/// writes is version 5 again, with full ids.
#[test]
fn a_version_5_repository_reads_verifies_and_takes_new_backups() {
    let Fixture {
        fixture,
        repo,
        source,
        engine,
    } = open_fixture(5);
    assert_eq!(engine.repository_info().version, 5);
    let verified = engine.verify_all(VerifyLevel::Full).unwrap();
    assert!(verified.is_ok(), "{verified:?}");
    assert_eq!(restored_files(&engine, 1), file_contents(source.path()));

    let mut table = std::fs::read(source.path().join("table.db")).unwrap();
    table[1050 * 4096 + 9] ^= 0x40;
    std::fs::write(source.path().join("table.db"), &table).unwrap();
    let second = engine
        .create_backup(
            &mut DirSource::new(source.path()),
            &BackupOptions::default(),
        )
        .unwrap();
    // Had this build named the blobs by 16 bytes here, none would match the fixture's ids
    // and every page would be stored again.
    assert_eq!(
        second.blobs_added, 3,
        "the changed page, a patch of the version 5 list, the tree"
    );
    let versions = versions_written(repo.path(), &fixture);
    assert!(
        versions.keys().any(|k| k.starts_with("index/")),
        "{versions:?}"
    );
    assert!(versions.values().all(|v| *v == 5), "{versions:?}");
    // A fresh engine reads both versions' objects back from the store.
    let engine = BackupEngine::open(
        backstop::LocalStore::new(repo.path()),
        EngineOptions::default().with_password("pw"),
    )
    .unwrap();
    let verified = engine.verify_all(VerifyLevel::Full).unwrap();
    assert!(verified.is_ok(), "{verified:?}");
    assert_eq!(
        restored_files(&engine, second.id),
        file_contents(source.path())
    );
}

/// Every file under `dir`, recursively.
fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}
