//! Who may use restored files: owners come back when root restores, set-id bits only with the
//! owner they were recorded for, and nothing restored is open to others before it has its
//! recorded mode.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use backstop::{
    BackupEngine, BackupOptions, BackupSelector, DirSource, EngineOptions, InitOptions,
    MemoryStore, Progress, RestoreOptions,
};

fn engine() -> BackupEngine {
    BackupEngine::init(
        MemoryStore::new(),
        InitOptions::default().with_chunk_sizes(16 * 1024, 64 * 1024, 256 * 1024),
        EngineOptions::default(),
    )
    .unwrap()
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|md| md.uid() == 0)
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Run as root, a restore gives files and directories their recorded owners and then their
/// modes, set-id bits included: a set-user-id program of `nobody` comes back as `nobody`'s,
/// never as a set-user-id program of root.
#[test]
fn root_restores_owners_and_set_id_bits_with_them() {
    if !running_as_root() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "this test needs root under CI"
        );
        eprintln!("SKIPPED root_restores_owners_and_set_id_bits_with_them: not root");
        return;
    }
    let nobody = 65534;
    let source = tempfile::tempdir().unwrap();
    std::fs::create_dir(source.path().join("home")).unwrap();
    std::fs::write(source.path().join("home/tool"), b"#!/bin/sh\n").unwrap();
    std::fs::write(source.path().join("root-tool"), b"#!/bin/sh\n").unwrap();
    for path in ["home", "home/tool"] {
        std::os::unix::fs::chown(source.path().join(path), Some(nobody), Some(nobody)).unwrap();
    }
    // chown clears set-id bits: the modes go on after it, as on any system.
    chmod(&source.path().join("home/tool"), 0o4750);
    chmod(&source.path().join("root-tool"), 0o6755);
    std::os::unix::fs::symlink("tool", source.path().join("home/link")).unwrap();
    std::os::unix::fs::lchown(source.path().join("home/link"), Some(nobody), Some(nobody)).unwrap();

    let engine = engine();
    engine
        .create_backup(
            &mut DirSource::new(source.path()),
            &BackupOptions::default(),
        )
        .unwrap();
    let target = tempfile::tempdir().unwrap();
    let restored = target.path().join("r");
    engine
        .restore(
            BackupSelector::Latest,
            &restored,
            &RestoreOptions::default(),
        )
        .unwrap();

    let md = |p: &str| std::fs::symlink_metadata(restored.join(p)).unwrap();
    assert_eq!((md("home").uid(), md("home").gid()), (nobody, nobody));
    assert_eq!(
        (md("home/tool").uid(), md("home/tool").gid()),
        (nobody, nobody)
    );
    assert_eq!(md("home/tool").mode() & 0o7777, 0o4750);
    assert_eq!(
        (md("home/link").uid(), md("home/link").gid()),
        (nobody, nobody)
    );
    assert_eq!((md("root-tool").uid(), md("root-tool").gid()), (0, 0));
    assert_eq!(md("root-tool").mode() & 0o7777, 0o6755);
}

/// Looks at the target the first time bytes are written: every file and directory restored so
/// far, and their modes.
struct Snoop {
    target: std::path::PathBuf,
    seen: Mutex<Option<Vec<(String, bool, u32)>>>,
}

impl Progress for Snoop {
    fn bytes(&self, _bytes: u64) {
        let mut seen = self.seen.lock().unwrap();
        if seen.is_some() {
            return;
        }
        let mut found = Vec::new();
        let mut stack = vec![self.target.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let md = std::fs::symlink_metadata(&path).unwrap();
                let rel = path.strip_prefix(&self.target).unwrap();
                let rel = rel.to_string_lossy().into_owned();
                if md.is_dir() {
                    stack.push(path.clone());
                }
                found.push((rel, md.is_dir(), md.mode() & 0o7777));
            }
        }
        *seen = Some(found);
    }
}

/// Files of mode 0600 in a directory of mode 0700 must not be readable by others at any time:
/// while a restore runs, what it created is private (files 0600, directories 0700), and the
/// recorded modes (here 0644 and 0755, and 0600 in 0700) come only when it is written.
#[test]
fn restored_files_and_directories_are_private_until_they_get_their_modes() {
    let source = tempfile::tempdir().unwrap();
    std::fs::create_dir(source.path().join("open")).unwrap();
    std::fs::create_dir(source.path().join("secret")).unwrap();
    for (path, mode) in [("open/a", 0o644), ("open/b", 0o644), ("secret/key", 0o600)] {
        std::fs::write(source.path().join(path), vec![7u8; 300_000]).unwrap();
        chmod(&source.path().join(path), mode);
    }
    chmod(&source.path().join("open"), 0o755);
    chmod(&source.path().join("secret"), 0o700);

    let engine = engine();
    engine
        .create_backup(
            &mut DirSource::new(source.path()),
            &BackupOptions::default(),
        )
        .unwrap();
    let target = tempfile::tempdir().unwrap();
    let restored = target.path().join("r");
    let snoop = Arc::new(Snoop {
        target: restored.clone(),
        seen: Mutex::new(None),
    });
    engine
        .restore(
            BackupSelector::Latest,
            &restored,
            &RestoreOptions::default().with_progress(snoop.clone()),
        )
        .unwrap();

    let seen = snoop.seen.lock().unwrap().take().unwrap();
    assert!(
        seen.iter().filter(|(_, dir, _)| *dir).count() == 2
            && seen
                .iter()
                .any(|(path, dir, _)| !dir && path.starts_with("open/")),
        "no restored file existed when bytes were written: {seen:?}"
    );
    for (path, dir, mode) in &seen {
        if path == ".backstop-restore-incomplete" {
            continue;
        }
        let private = if *dir { 0o700 } else { 0o600 };
        assert_eq!(
            mode & !private,
            0,
            "`{path}` had mode {mode:o} while the restore ran"
        );
    }
    let mode = |p: &str| std::fs::metadata(restored.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(
        [
            mode("open"),
            mode("open/a"),
            mode("secret"),
            mode("secret/key")
        ],
        [0o755, 0o644, 0o700, 0o600]
    );
}
