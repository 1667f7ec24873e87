//! Pause hooks around a source: the writers are paused before the inner session begins and
//! resumed exactly once on every path (success, error, cancellation, panic, window timeout), a
//! failed pause begins nothing, and a hold command lives exactly as long as the backup.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use backstop_source::hold::{Held, HoldConfig};
use backstop_source::testing::copy_session;
use backstop_source::{
    CancelToken, Entry, Phase, RestoreProfile, Session, SessionContext, SessionOutcome, Source,
    SourceError,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Succeed,
    FailInPhase,
    PanicInPhase,
    FailToBegin,
}

/// A source that records whether the writers were paused when it began.
struct Probe {
    state: PathBuf,
    mode: Mode,
    began: Arc<AtomicBool>,
    paused_at_begin: Arc<AtomicBool>,
}

impl Probe {
    fn new(dir: &Path, mode: Mode) -> Self {
        Self {
            state: dir.join("state"),
            mode,
            began: Arc::default(),
            paused_at_begin: Arc::default(),
        }
    }
}

impl Source for Probe {
    fn kind(&self) -> &str {
        "probe"
    }
    fn identity(&self) -> String {
        "probe-identity".into()
    }
    fn begin(&mut self, _ctx: &SessionContext) -> Result<Box<dyn Session + '_>, SourceError> {
        self.began.store(true, Ordering::SeqCst);
        let state = std::fs::read_to_string(&self.state).unwrap_or_default();
        self.paused_at_begin
            .store(state.trim() == "paused", Ordering::SeqCst);
        if self.mode == Mode::FailToBegin {
            return Err(SourceError::Procedure("the database refused".into()));
        }
        Ok(Box::new(ProbeSession {
            mode: self.mode,
            step: 0,
        }))
    }
}

struct ProbeSession {
    mode: Mode,
    step: u8,
}

impl Session for ProbeSession {
    fn next_phase(&mut self) -> Result<Option<Phase>, SourceError> {
        self.step += 1;
        match (self.step, self.mode) {
            (1, _) => Ok(Some(Phase::new(
                "data",
                vec![Entry::bytes("a.txt", b"a".to_vec(), 0o644, 0)],
            ))),
            (2, Mode::FailInPhase) => Err(SourceError::Procedure("disk on fire".into())),
            (2, Mode::PanicInPhase) => panic!("the source panicked"),
            _ => Ok(None),
        }
    }
    fn finish(self: Box<Self>) -> Result<SessionOutcome, SourceError> {
        Ok(SessionOutcome {
            restore_profile: RestoreProfile::new("probe-profile"),
            ..Default::default()
        })
    }
}

/// Pause and resume commands that leave their traces in `dir`: `state` says paused/resumed,
/// `resumes` gets a line per resume.
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

fn state(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("state"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Polls `condition` until it holds or 10 s pass.
fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn success_pauses_before_the_session_and_resumes_after_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let probe = Probe::new(tmp.path(), Mode::Succeed);
    let paused_at_begin = Arc::clone(&probe.paused_at_begin);
    let mut held = Held::new(probe, commands(tmp.path()));
    assert_eq!(held.kind(), "probe");
    assert_eq!(held.identity(), "probe-identity");

    let before = SystemTime::now();
    let session = held.begin(&SessionContext::default()).unwrap();
    assert_eq!(state(tmp.path()), "paused");
    let copied = copy_session(session, &tmp.path().join("copy")).unwrap();
    let after = SystemTime::now();

    assert!(
        paused_at_begin.load(Ordering::SeqCst),
        "the session began before the pause"
    );
    assert_eq!(state(tmp.path()), "resumed");
    assert_eq!(resumes(tmp.path()), 1);
    let outcome = copied.outcome;
    assert_eq!(outcome.restore_profile.kind, "probe-profile");
    let (start, end) = outcome.pause_window.expect("no pause window recorded");
    assert!(before <= start && start <= end && end <= after);
    let ms = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            .to_string()
    };
    assert_eq!(outcome.source_meta["pause.start"], ms(start));
    assert_eq!(outcome.source_meta["pause.end"], ms(end));
}

#[test]
fn a_failing_backup_resumes_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut held = Held::new(
        Probe::new(tmp.path(), Mode::FailInPhase),
        commands(tmp.path()),
    );
    let session = held.begin(&SessionContext::default()).unwrap();
    let err = copy_session(session, &tmp.path().join("copy")).unwrap_err();
    assert!(err.to_string().contains("disk on fire"), "{err}");
    assert_eq!(state(tmp.path()), "resumed");
    assert_eq!(resumes(tmp.path()), 1);
}

#[test]
fn a_source_that_fails_to_begin_is_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut held = Held::new(
        Probe::new(tmp.path(), Mode::FailToBegin),
        commands(tmp.path()),
    );
    let err = held.begin(&SessionContext::default()).err().unwrap();
    assert!(err.to_string().contains("refused"), "{err}");
    assert_eq!(state(tmp.path()), "resumed");
    assert_eq!(resumes(tmp.path()), 1);
}

#[test]
fn a_panicking_source_is_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let result = std::panic::catch_unwind(move || {
        let mut held = Held::new(Probe::new(&dir, Mode::PanicInPhase), commands(&dir));
        let session = held.begin(&SessionContext::default()).unwrap();
        let _ = copy_session(session, &dir.join("copy"));
    });
    assert!(result.is_err(), "the probe should have panicked");
    assert_eq!(state(tmp.path()), "resumed");
    assert_eq!(resumes(tmp.path()), 1);
}

#[test]
fn cancelling_resumes_promptly_and_fails_the_session() {
    let tmp = tempfile::tempdir().unwrap();
    let cancel = CancelToken::new();
    let ctx = SessionContext {
        cancel: cancel.clone(),
        ..SessionContext::default()
    };
    let mut held = Held::new(Probe::new(tmp.path(), Mode::Succeed), commands(tmp.path()));
    let mut session = held.begin(&ctx).unwrap();
    assert!(session.next_phase().unwrap().is_some());
    cancel.cancel();
    // The watchdog resumes the writers without waiting for the engine's next call.
    eventually("resume after cancel", || resumes(tmp.path()) == 1);
    assert!(matches!(session.next_phase(), Err(SourceError::Cancelled)));
    assert!(matches!(session.finish(), Err(SourceError::Cancelled)));
    assert_eq!(resumes(tmp.path()), 1);
}

#[test]
fn a_failing_pause_begins_nothing_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let probe = Probe::new(tmp.path(), Mode::Succeed);
    let began = Arc::clone(&probe.began);
    let config = HoldConfig {
        pause_command: Some("echo 'app refused to pause' >&2; exit 3".into()),
        ..commands(tmp.path())
    };
    let err = Held::new(probe, config)
        .begin(&SessionContext::default())
        .err()
        .unwrap();
    let message = err.to_string();
    assert!(message.contains("exit status 3"), "{message}");
    assert!(message.contains("app refused to pause"), "{message}");
    assert!(
        !began.load(Ordering::SeqCst),
        "the inner session began after a failed pause"
    );
    // A half-done pause is undone.
    assert_eq!(resumes(tmp.path()), 1);
}

#[test]
fn a_pause_that_times_out_is_killed_and_begins_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let probe = Probe::new(tmp.path(), Mode::Succeed);
    let began = Arc::clone(&probe.began);
    let config = HoldConfig {
        pause_command: Some(format!(
            "sleep 30; echo paused > {}/state",
            tmp.path().display()
        )),
        pause_timeout: Duration::from_millis(300),
        ..commands(tmp.path())
    };
    let started = Instant::now();
    let err = Held::new(probe, config)
        .begin(&SessionContext::default())
        .err()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the timeout was not enforced"
    );
    assert!(err.to_string().contains("did not finish within"), "{err}");
    assert!(!began.load(Ordering::SeqCst));
    assert_eq!(state(tmp.path()), "resumed");
}

#[test]
fn the_window_timeout_releases_the_hold_and_fails_the_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let config = HoldConfig {
        window_timeout: Duration::from_millis(200),
        ..commands(tmp.path())
    };
    let mut held = Held::new(Probe::new(tmp.path(), Mode::Succeed), config);
    let mut session = held.begin(&SessionContext::default()).unwrap();
    assert!(session.next_phase().unwrap().is_some());
    // The engine is "busy": nothing calls the session, yet the writers are resumed.
    eventually("resume at the window timeout", || resumes(tmp.path()) == 1);
    let err = session.next_phase().unwrap_err();
    assert!(err.to_string().contains("window timeout"), "{err}");
    assert!(session.finish().is_err());
    assert_eq!(resumes(tmp.path()), 1);
}

/// A hold command that records its pid, pauses, and records SIGTERM.
fn hold_script(dir: &Path, on_term: &str) -> String {
    let d = dir.display();
    format!(
        "echo $$ > {d}/pid; trap '{on_term}' TERM; echo warming up; echo paused > {d}/state; \
         echo READY; while true; do sleep 0.02; done"
    )
}

fn alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn a_hold_command_lives_exactly_for_the_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().display();
    let probe = Probe::new(tmp.path(), Mode::Succeed);
    let paused_at_begin = Arc::clone(&probe.paused_at_begin);
    let config = HoldConfig {
        hold_command: Some(hold_script(
            tmp.path(),
            &format!("echo resumed > {d}/state; exit 0"),
        )),
        ready_line: Some("READY".into()),
        pause_timeout: Duration::from_secs(10),
        ..HoldConfig::default()
    };
    let mut held = Held::new(probe, config);
    let session = held.begin(&SessionContext::default()).unwrap();
    assert!(
        paused_at_begin.load(Ordering::SeqCst),
        "the backup began before the ready line"
    );
    let pid = std::fs::read_to_string(tmp.path().join("pid"))
        .unwrap()
        .trim()
        .to_owned();
    assert!(alive(&pid));
    let copied = copy_session(session, &tmp.path().join("copy")).unwrap();
    assert!(copied.outcome.pause_window.is_some());
    assert_eq!(
        state(tmp.path()),
        "resumed",
        "the hold command did not get SIGTERM"
    );
    assert!(!alive(&pid), "the hold command outlived the backup");
}

#[test]
fn a_hold_command_that_ignores_sigterm_is_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let config = HoldConfig {
        hold_command: Some(hold_script(tmp.path(), "")),
        kill_grace: Duration::from_millis(200),
        ..HoldConfig::default()
    };
    let mut held = Held::new(Probe::new(tmp.path(), Mode::Succeed), config);
    let session = held.begin(&SessionContext::default()).unwrap();
    let pid = std::fs::read_to_string(tmp.path().join("pid"))
        .unwrap()
        .trim()
        .to_owned();
    let copied = copy_session(session, &tmp.path().join("copy")).unwrap();
    assert!(!alive(&pid), "the hold command survived SIGKILL");
    assert!(
        copied
            .outcome
            .warnings
            .iter()
            .any(|w| w.contains("SIGKILL") || w.contains("killed")),
        "{:?}",
        copied.outcome.warnings
    );
}

#[test]
fn a_hold_command_that_dies_fails_the_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let config = HoldConfig {
        hold_command: Some(format!(
            "echo ready; while [ ! -e {}/die ]; do sleep 0.01; done; echo gone >&2; exit 7",
            tmp.path().display()
        )),
        ..HoldConfig::default()
    };
    let mut held = Held::new(Probe::new(tmp.path(), Mode::Succeed), config);
    let mut session = held.begin(&SessionContext::default()).unwrap();
    assert!(session.next_phase().unwrap().is_some());
    std::fs::write(tmp.path().join("die"), b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        match session.next_phase() {
            Err(e) => break e,
            Ok(_) => assert!(Instant::now() < deadline, "the dead hold was not noticed"),
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let message = err.to_string();
    assert!(
        message.contains("exit status 7") && message.contains("gone"),
        "{message}"
    );
}

#[test]
fn a_hold_command_without_its_ready_line_begins_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let probe = Probe::new(tmp.path(), Mode::Succeed);
    let began = Arc::clone(&probe.began);
    let config = HoldConfig {
        hold_command: Some("echo starting; echo 'cannot reach the app' >&2; exit 2".into()),
        ready_line: Some("READY".into()),
        ..HoldConfig::default()
    };
    let err = Held::new(probe, config)
        .begin(&SessionContext::default())
        .err()
        .unwrap();
    let message = err.to_string();
    assert!(
        message.contains("READY") && message.contains("cannot reach the app"),
        "{message}"
    );
    assert!(!began.load(Ordering::SeqCst));
}

#[test]
fn an_empty_config_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut held = Held::new(Probe::new(tmp.path(), Mode::Succeed), HoldConfig::default());
    let session = held.begin(&SessionContext::default()).unwrap();
    let copied = copy_session(session, &tmp.path().join("copy")).unwrap();
    assert!(copied.outcome.pause_window.is_none());
}

#[test]
fn the_config_reads_durations_as_seconds() {
    let config: HoldConfig = serde_json::from_str(
        r#"{"pause_command": "app pause", "resume_command": "app resume",
            "pause_timeout": 2.5, "window_timeout": 600}"#,
    )
    .unwrap();
    assert_eq!(config.pause_timeout, Duration::from_millis(2500));
    assert_eq!(config.window_timeout, Duration::from_secs(600));
    assert_eq!(config.ready_line, None);
    let both = HoldConfig {
        hold_command: Some("x".into()),
        ..config
    };
    let tmp = tempfile::tempdir().unwrap();
    let err = Held::new(Probe::new(tmp.path(), Mode::Succeed), both)
        .begin(&SessionContext::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("use one of them"), "{err}");
}
