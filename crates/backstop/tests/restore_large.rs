//! Restore of files large enough to be cut into segments that workers write in parallel: the
//! file comes back byte for byte with its metadata, and a cancelled restore stays marked.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use backstop::{
    BackupEngine, BackupOptions, BackupSelector, CancelToken, DirSource, EngineOptions, ErrorKind,
    InitOptions, LocalStore, Progress, RestoreOptions,
};

const MARKER: &str = ".backstop-restore-incomplete";

/// 40 MiB: random bytes, then text-like bytes, then 8 KiB pages with repeated structure, so the
/// file spans several segments and both compressed and stored blobs.
fn large_file() -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::with_capacity(40 << 20);
    while out.len() < 14 << 20 {
        out.extend_from_slice(&next().to_le_bytes());
    }
    while out.len() < 27 << 20 {
        out.extend_from_slice(
            format!("update accounts set balance = {} ", next() % 1000).as_bytes(),
        );
    }
    while out.len() < 40 << 20 {
        let mut page = vec![0u8; 8192];
        for (i, b) in page.iter_mut().enumerate().take(1024) {
            *b = ((next() % 5) as u8).wrapping_add(i as u8);
        }
        out.extend_from_slice(&page);
    }
    out.truncate(40 << 20);
    out
}

fn backed_up(source: &Path, repo: &Path) -> BackupEngine {
    let engine = BackupEngine::init(
        LocalStore::new(repo),
        InitOptions::default()
            .with_kdf(8 * 1024, 1)
            .with_password("pw"),
        EngineOptions::default().with_password("pw").with_threads(3),
    )
    .unwrap();
    engine
        .create_backup(&mut DirSource::new(source), &BackupOptions::default())
        .unwrap();
    engine
}

#[test]
fn a_large_file_restores_byte_exact_with_its_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    std::fs::create_dir(&source).unwrap();
    let data = large_file();
    let path = source.join("base.db");
    std::fs::write(&path, &data).unwrap();
    std::fs::write(source.join("small"), b"a small file beside it").unwrap();
    // Read-only: the restore must still write every segment before it sets the mode.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
    filetime::set_file_mtime(&path, filetime::FileTime::from_unix_time(1_600_000_000, 5)).unwrap();
    let engine = backed_up(&source, &dir.path().join("repo"));

    let target = dir.path().join("target");
    let info = engine
        .restore(BackupSelector::Latest, &target, &RestoreOptions::default())
        .unwrap();
    assert_eq!(info.bytes, data.len() as u64 + 22);
    let restored = std::fs::read(target.join("base.db")).unwrap();
    let first_difference = restored.iter().zip(&data).position(|(a, b)| a != b);
    assert_eq!((restored.len(), first_difference), (data.len(), None));
    let meta = std::fs::metadata(target.join("base.db")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o440);
    assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_600_000_000, 5));
    assert_eq!(
        std::fs::read(target.join("small")).unwrap(),
        b"a small file beside it"
    );
    assert!(!target.join(MARKER).exists());
}

/// Cancels the restore once `after` bytes have been written.
struct CancelAfter {
    token: CancelToken,
    written: AtomicU64,
    after: u64,
}

impl Progress for CancelAfter {
    fn bytes(&self, bytes: u64) {
        if self.written.fetch_add(bytes, Ordering::Relaxed) + bytes >= self.after {
            self.token.cancel();
        }
    }
}

#[test]
fn a_restore_cancelled_inside_a_large_file_stays_marked() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    std::fs::create_dir(&source).unwrap();
    std::fs::write(source.join("base.db"), large_file()).unwrap();
    let engine = backed_up(&source, &dir.path().join("repo"));

    let token = CancelToken::new();
    let progress = Arc::new(CancelAfter {
        token: token.clone(),
        written: AtomicU64::new(0),
        after: 5 << 20,
    });
    let target = dir.path().join("target");
    let err = engine
        .restore(
            BackupSelector::Latest,
            &target,
            &RestoreOptions::default()
                .with_cancel(token)
                .with_progress(progress),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert!(target.join(MARKER).exists());
}
