//! Pause hooks through the engine: the paused window is recorded in the backup, the writers are
//! resumed after a success, a failure and a cancellation, and a pause that times out stores
//! nothing.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use backstop::source::hold::{Held, HoldConfig};
use backstop::{
    BackupEngine, BackupOptions, CancelToken, DirSource, EngineOptions, ErrorKind, InitOptions,
    MemoryStore, Phase, RestoreOptions, Session, SessionContext, SessionOutcome, Source,
    SourceError,
};

fn engine() -> BackupEngine {
    BackupEngine::init(
        MemoryStore::new(),
        InitOptions::default().with_kdf(8 * 1024, 1),
        EngineOptions::default().with_threads(2),
    )
    .unwrap()
}

fn commands(dir: &Path) -> HoldConfig {
    let d = dir.display();
    HoldConfig {
        pause_command: Some(format!("echo paused > {d}/state")),
        resume_command: Some(format!("echo resumed > {d}/state; echo x >> {d}/resumes")),
        pause_timeout: Duration::from_secs(10),
        ..HoldConfig::default()
    }
}

fn resumes(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("resumes"))
        .unwrap_or_default()
        .lines()
        .count()
}

fn data_dir(root: &Path) -> std::path::PathBuf {
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a.txt"), b"hello").unwrap();
    data
}

#[test]
fn the_paused_window_is_recorded_and_the_writers_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = engine();
    let mut held = Held::new(DirSource::new(data_dir(tmp.path())), commands(tmp.path()));
    let info = engine
        .create_backup(&mut held, &BackupOptions::default())
        .unwrap();
    assert_eq!(resumes(tmp.path()), 1);
    assert_eq!(info.source_kind, "dir");
    let (start, end) = info.pause_window.expect("no pause window in the backup");
    assert!(start > 0.0 && start <= end, "{start} {end}");
    assert!(
        info.source_meta.contains_key("pause.start"),
        "{:?}",
        info.source_meta
    );
    assert!(
        info.source_meta.contains_key("pause.end"),
        "{:?}",
        info.source_meta
    );
    let listed = engine.list_backups().unwrap();
    assert_eq!(listed[0].pause_window, info.pause_window);
    let target = tmp.path().join("restore");
    engine
        .restore(info.id, &target, &RestoreOptions::default())
        .unwrap();
    assert_eq!(std::fs::read(target.join("a.txt")).unwrap(), b"hello");
}

#[test]
fn a_pause_that_times_out_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = engine();
    let config = HoldConfig {
        pause_command: Some("sleep 30".into()),
        pause_timeout: Duration::from_millis(300),
        ..commands(tmp.path())
    };
    let mut held = Held::new(DirSource::new(data_dir(tmp.path())), config);
    let err = engine
        .create_backup(&mut held, &BackupOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("did not finish within"), "{err}");
    assert!(engine.list_backups().unwrap().is_empty());
    assert_eq!(
        resumes(tmp.path()),
        1,
        "the resume command did not run after the failed pause"
    );
}

/// A source whose session fails, or cancels the backup (as Ctrl-C would), in its second phase.
struct Failing {
    cancel: Option<CancelToken>,
}

struct FailingSession {
    cancel: Option<CancelToken>,
    step: u8,
}

impl Source for Failing {
    fn kind(&self) -> &str {
        "failing"
    }
    fn identity(&self) -> String {
        "failing".into()
    }
    fn begin(&mut self, _ctx: &SessionContext) -> Result<Box<dyn Session + '_>, SourceError> {
        Ok(Box::new(FailingSession {
            cancel: self.cancel.clone(),
            step: 0,
        }))
    }
}

impl Session for FailingSession {
    fn next_phase(&mut self) -> Result<Option<Phase>, SourceError> {
        self.step += 1;
        if self.step == 1 {
            return Ok(Some(Phase::new(
                "one",
                vec![backstop::Entry::bytes("one.txt", b"1".to_vec(), 0o644, 0)],
            )));
        }
        match &self.cancel {
            Some(cancel) => {
                cancel.cancel();
                Err(SourceError::Cancelled)
            }
            None => Err(SourceError::Procedure("the database went away".into())),
        }
    }
    fn finish(self: Box<Self>) -> Result<SessionOutcome, SourceError> {
        Ok(SessionOutcome::default())
    }
}

#[test]
fn a_failing_backup_resumes_and_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = engine();
    let mut held = Held::new(Failing { cancel: None }, commands(tmp.path()));
    let err = engine
        .create_backup(&mut held, &BackupOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("went away"), "{err}");
    assert_eq!(resumes(tmp.path()), 1);
    assert!(engine.list_backups().unwrap().is_empty());
}

#[test]
fn a_cancelled_backup_resumes_and_stores_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = engine();
    let cancel = CancelToken::new();
    let mut held = Held::new(
        Failing {
            cancel: Some(cancel.clone()),
        },
        commands(tmp.path()),
    );
    let options = BackupOptions::default().with_cancel(cancel);
    let err = engine.create_backup(&mut held, &options).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Cancelled, "{err}");
    assert_eq!(resumes(tmp.path()), 1);
    assert!(engine.list_backups().unwrap().is_empty());
}
