//! Property test: random trees (files of random sizes and contents, nested directories,
//! symlinks, modes and mtimes) come back from a backup byte for byte.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use backstop::{
    BackupEngine, BackupOptions, DirSource, EngineOptions, InitOptions, MemoryStore, RestoreOptions,
};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Item {
    File {
        size: usize,
        seed: u8,
        mode: u32,
        mtime: i64,
    },
    Dir {
        mode: u32,
    },
    Link {
        target: String,
    },
}

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        4 => (0usize..300_000, any::<u8>(), prop::sample::select(vec![0o600u32, 0o644, 0o755, 0o400]), 0i64..2_000_000_000)
            .prop_map(|(size, seed, mode, mtime)| Item::File { size, seed, mode, mtime }),
        1 => prop::sample::select(vec![0o700u32, 0o755, 0o750]).prop_map(|mode| Item::Dir { mode }),
        1 => "[a-z]{1,8}(/[a-z]{1,8}){0,2}".prop_map(|target| Item::Link { target }),
    ]
}

fn tree() -> impl Strategy<Value = Vec<(String, Item)>> {
    prop::collection::vec(("[a-c]{1,2}(/[a-c]{1,2}){0,2}", item()), 1..25)
}

fn build(root: &Path, items: &[(String, Item)]) {
    for (path, item) in items {
        let full = root.join(path);
        // Skip paths that collide with something already created (a file used as a parent).
        if full
            .ancestors()
            .skip(1)
            .any(|a| a.starts_with(root) && a.is_symlink() || a.is_file())
        {
            continue;
        }
        if std::fs::symlink_metadata(&full).is_ok() {
            continue;
        }
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        match item {
            Item::File {
                size,
                seed,
                mode,
                mtime,
            } => {
                let data: Vec<u8> = (0..*size)
                    .map(|i| (i as u8).wrapping_mul(*seed | 1) ^ (i >> 9) as u8)
                    .collect();
                std::fs::write(&full, data).unwrap();
                std::fs::set_permissions(&full, std::fs::Permissions::from_mode(*mode)).unwrap();
                filetime::set_file_mtime(&full, filetime::FileTime::from_unix_time(*mtime, 123))
                    .unwrap();
            }
            Item::Dir { mode } => {
                std::fs::create_dir(&full).unwrap();
                std::fs::set_permissions(&full, std::fs::Permissions::from_mode(*mode)).unwrap();
            }
            Item::Link { target } => std::os::unix::fs::symlink(target, &full).unwrap(),
        }
    }
}

fn describe(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let md = std::fs::symlink_metadata(&path).unwrap();
            let desc = if md.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&path).unwrap().display())
            } else if md.is_dir() {
                stack.push(path.clone());
                format!("dir {:o} {}", md.mode() & 0o7777, md.mtime())
            } else {
                format!(
                    "file {:o} {}.{} {}",
                    md.mode() & 0o7777,
                    md.mtime(),
                    md.mtime_nsec(),
                    blake3::hash(&std::fs::read(&path).unwrap()).to_hex()
                )
            };
            out.insert(rel, desc);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn random_trees_round_trip(items in tree(), encrypted in any::<bool>()) {
        let data = tempfile::tempdir().unwrap();
        build(data.path(), &items);
        let mut init = InitOptions::default().with_kdf(8 * 1024, 1).with_chunk_sizes(4096, 16384, 65536);
        let mut options = EngineOptions::default().with_threads(2);
        if encrypted {
            init = init.with_password("pw");
            options = options.with_password("pw");
        }
        let engine = BackupEngine::init(MemoryStore::new(), init, options).unwrap();
        let info = engine.create_backup(&mut DirSource::new(data.path()), &BackupOptions::default()).unwrap();
        let target = tempfile::tempdir().unwrap();
        engine.restore(info.id, target.path(), &RestoreOptions::default()).unwrap();
        prop_assert_eq!(describe(data.path()), describe(target.path()));
    }
}
