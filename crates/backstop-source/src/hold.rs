//! Pause hooks: commands that pause writers before a backup and resume them after it, on every
//! path (success, error, cancellation, panic), wrapped around any [`Source`].
//!
//! Two forms, following ScalarDB's "pause the application, back up inside the paused window,
//! resume" procedure:
//!
//! - a **pause command** and a **resume command**, each run with `sh -c`; the pause command must
//!   exit 0 within [`HoldConfig::pause_timeout`];
//! - a **hold command**, a process that lives for exactly the duration of the backup: the backup
//!   begins when it prints its ready line, and it is ended with `SIGTERM` (then `SIGKILL` after a
//!   grace period) once the last phase is stored. A resume command, if given, runs after it.
//!
//! The paused window is bounded by [`HoldConfig::window_timeout`]: a watchdog releases the hold
//! when the window runs out (or when the backup is cancelled), so an application is never left
//! paused by a stuck backup, and the backup then fails. The window's start and end are recorded
//! in [`SessionOutcome::pause_window`] and as `pause.start` / `pause.end` (Unix milliseconds) in
//! `source_meta`.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{CancelToken, Phase, Session, SessionContext, SessionOutcome, Source, SourceError};

/// How writers are paused around a backup. Plain data, so it can come from flags or a config
/// file; durations are written as seconds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HoldConfig {
    /// Run with `sh -c` before the backup begins; must exit 0 within `pause_timeout`.
    pub pause_command: Option<String>,
    /// Run with `sh -c` after the backup, on every path, also when pausing failed.
    pub resume_command: Option<String>,
    /// Spawned with `sh -c` before the backup begins and ended after it: the backup begins when
    /// it prints `ready_line` on stdout.
    pub hold_command: Option<String>,
    /// The stdout line (compared without surrounding whitespace) that means the hold command
    /// has paused the writers; `None` accepts any first line.
    pub ready_line: Option<String>,
    /// How long pausing (and resuming) may take.
    #[serde(with = "seconds")]
    pub pause_timeout: Duration,
    /// How long the writers may stay paused; a backup that needs longer fails, and the hold is
    /// released when the time is up.
    #[serde(with = "seconds")]
    pub window_timeout: Duration,
    /// How long a hold command has to exit after `SIGTERM` before it gets `SIGKILL`.
    #[serde(with = "seconds")]
    pub kill_grace: Duration,
}

impl Default for HoldConfig {
    fn default() -> Self {
        Self {
            pause_command: None,
            resume_command: None,
            hold_command: None,
            ready_line: None,
            pause_timeout: Duration::from_secs(60),
            window_timeout: Duration::from_secs(3600),
            kill_grace: Duration::from_secs(10),
        }
    }
}

impl HoldConfig {
    /// Whether there is nothing to run (the wrapped source then behaves as if unwrapped).
    pub fn is_empty(&self) -> bool {
        self.pause_command.is_none() && self.resume_command.is_none() && self.hold_command.is_none()
    }

    fn validate(&self) -> Result<(), SourceError> {
        if self.pause_command.is_some() && self.hold_command.is_some() {
            return Err(SourceError::Hold(
                "both a pause command and a hold command are set; use one of them (a hold \
                 command pauses by living for the duration of the backup)"
                    .into(),
            ));
        }
        if self.pause_timeout.is_zero() || self.window_timeout.is_zero() {
            return Err(SourceError::Hold(format!(
                "the pause timeout ({:?}) and the window timeout ({:?}) must be longer than zero",
                self.pause_timeout, self.window_timeout
            )));
        }
        Ok(())
    }
}

/// Durations as (fractional) seconds in config files.
mod seconds {
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Duration, D::Error> {
        let secs = <f64 as serde::Deserialize>::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(|_| {
            serde::de::Error::custom(format!("`{secs}` is not a number of seconds >= 0"))
        })
    }
}

/// A source whose sessions run inside a paused window (see the module docs). The kind,
/// identity and restore profile are the inner source's.
pub struct Held<S: ?Sized> {
    config: HoldConfig,
    inner: Box<S>,
}

impl<S: Source> Held<S> {
    /// Wraps `inner` with the pause hooks of `config`.
    pub fn new(inner: S, config: HoldConfig) -> Self {
        Self {
            config,
            inner: Box::new(inner),
        }
    }
}

impl<S: ?Sized> Held<S> {
    /// Wraps an already boxed source (`Held<dyn Source>`).
    pub fn from_box(inner: Box<S>, config: HoldConfig) -> Self {
        Self { config, inner }
    }

    /// The pause hooks.
    pub fn config(&self) -> &HoldConfig {
        &self.config
    }

    /// The wrapped source.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: Source + ?Sized> Source for Held<S> {
    fn kind(&self) -> &str {
        self.inner.kind()
    }

    fn identity(&self) -> String {
        self.inner.identity()
    }

    fn begin(&mut self, ctx: &SessionContext) -> Result<Box<dyn Session + '_>, SourceError> {
        if self.config.is_empty() {
            return self.inner.begin(ctx);
        }
        self.config.validate()?;
        // Pausing comes first: if it fails the inner session is never begun, so nothing is
        // stored from an unpaused database.
        let hold = Hold::acquire(&self.config, &ctx.cancel)?;
        // On an error here `hold` is dropped, which resumes the writers.
        let inner = self.inner.begin(ctx)?;
        Ok(Box::new(HeldSession {
            inner: Some(inner),
            hold,
        }))
    }
}

/// The inner session plus the hold. Field order matters: the inner session is dropped (its
/// own holds released) before the writers are resumed.
struct HeldSession<'a> {
    inner: Option<Box<dyn Session + 'a>>,
    hold: Hold,
}

impl<'a> HeldSession<'a> {
    fn inner(&mut self) -> Result<&mut Box<dyn Session + 'a>, SourceError> {
        self.inner
            .as_mut()
            .ok_or_else(|| SourceError::Procedure("the held session was already finished".into()))
    }
}

impl Session for HeldSession<'_> {
    fn next_phase(&mut self) -> Result<Option<Phase>, SourceError> {
        self.hold.check()?;
        self.inner()?.next_phase()
    }

    fn open(&self, handle: u64) -> Result<Box<dyn Read + Send>, SourceError> {
        self.hold.check()?;
        match &self.inner {
            Some(inner) => inner.open(handle),
            None => Err(SourceError::Procedure(
                "the held session was already finished".into(),
            )),
        }
    }

    fn finish(mut self: Box<Self>) -> Result<SessionOutcome, SourceError> {
        self.hold.check()?;
        let inner = self.inner.take();
        let outcome = match inner {
            Some(inner) => inner.finish(),
            None => Err(SourceError::Procedure(
                "the held session was already finished".into(),
            )),
        };
        // Released whatever the inner outcome: the writers are resumed in every case, and a hold
        // lost before this point (window timeout, hold command gone) fails the backup.
        let window = self.hold.release();
        let mut outcome = outcome?;
        let (start, end, warnings) = window?;
        outcome.warnings.extend(warnings);
        outcome.pause_window = Some((start, end));
        outcome
            .source_meta
            .insert("pause.start".into(), unix_ms(start).to_string());
        outcome
            .source_meta
            .insert("pause.end".into(), unix_ms(end).to_string());
        Ok(outcome)
    }
}

fn unix_ms(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Why a hold ended before the backup released it.
#[derive(Clone, Debug)]
enum Lost {
    WindowTimeout { limit: Duration },
    Cancelled,
    HoldExited(String),
}

/// What keeps the writers paused.
enum Holder {
    /// A pause command succeeded; releasing runs the resume command.
    Paused,
    /// A hold command is running; releasing ends it, then runs the resume command.
    Process(HoldProcess),
}

struct HoldProcess {
    command: String,
    child: Child,
    stderr: Tail,
}

struct HoldState {
    holder: Option<Holder>,
    /// Set once released: the end of the window and what releasing reported.
    released: Option<(SystemTime, Result<(), String>)>,
    lost: Option<Lost>,
    /// Things the user should know that did not break the hold (a hold command needing SIGKILL).
    warnings: Vec<String>,
}

struct Shared {
    state: Mutex<HoldState>,
    wake: Condvar,
    config: HoldConfig,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HoldState> {
        // A panic while holding the lock must not stop the resume from running.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ends the hold once (idempotent) and returns the window's end.
    fn release_locked(&self, state: &mut HoldState) -> SystemTime {
        if let Some((end, _)) = &state.released {
            return *end;
        }
        // The window ends before anything is resumed: up to here the writers were paused.
        let end = SystemTime::now();
        let mut problems = Vec::new();
        if let Some(Holder::Process(mut process)) = state.holder.take() {
            if let Err(e) = terminate(&mut process, self.config.kill_grace) {
                state.warnings.push(e);
            }
        }
        if let Some(resume) = &self.config.resume_command {
            // Resuming ignores cancellation: it is what cancellation must still do.
            if let Err(e) = run_command("resume", resume, self.config.pause_timeout, None) {
                problems.push(e.to_string());
            }
        }
        let result = if problems.is_empty() {
            Ok(())
        } else {
            let message = problems.join("; ");
            tracing::error!(problem = %message, "releasing the pause hold failed");
            Err(message)
        };
        state.released = Some((end, result));
        self.wake.notify_all();
        end
    }
}

/// A paused window in progress, released on drop.
struct Hold {
    shared: Arc<Shared>,
    start: SystemTime,
    watchdog: Option<JoinHandle<()>>,
}

impl Hold {
    fn acquire(config: &HoldConfig, cancel: &CancelToken) -> Result<Self, SourceError> {
        let holder = match (&config.pause_command, &config.hold_command) {
            (Some(pause), _) => {
                match run_command("pause", pause, config.pause_timeout, Some(cancel)) {
                    Ok(()) => Holder::Paused,
                    Err(e) => return Err(resume_after_failed_pause(config, e)),
                }
            }
            (None, Some(hold)) => match spawn_hold(config, hold, cancel) {
                Ok(process) => Holder::Process(process),
                Err(e) => return Err(resume_after_failed_pause(config, e)),
            },
            (None, None) => Holder::Paused,
        };
        let start = SystemTime::now();
        tracing::info!("writers paused; the backup window begins");
        let shared = Arc::new(Shared {
            state: Mutex::new(HoldState {
                holder: Some(holder),
                released: None,
                lost: None,
                warnings: Vec::new(),
            }),
            wake: Condvar::new(),
            config: config.clone(),
        });
        let deadline = Instant::now() + config.window_timeout;
        let watchdog = {
            let shared = Arc::clone(&shared);
            let cancel = cancel.clone();
            std::thread::Builder::new()
                .name("backstop-hold-watchdog".into())
                .spawn(move || watch(&shared, &cancel, deadline))
                .map_err(|e| SourceError::Hold(format!("cannot start the hold watchdog: {e}")))
        };
        let mut hold = Self {
            shared,
            start,
            watchdog: None,
        };
        // On an error `hold` is dropped here, which releases the writers.
        hold.watchdog = Some(watchdog?);
        Ok(hold)
    }

    /// Fails if the hold was lost: the window ran out, the backup was cancelled, or the hold
    /// command exited on its own.
    fn check(&self) -> Result<(), SourceError> {
        let mut state = self.shared.lock();
        if state.lost.is_none() {
            if let Some(Holder::Process(process)) = &mut state.holder {
                if let Ok(Some(status)) = process.child.try_wait() {
                    let message = format!(
                        "the hold command `{}` exited during the backup ({}), so the writers \
                         were no longer paused{}",
                        process.command,
                        status_text(status),
                        process.stderr.describe()
                    );
                    state.lost = Some(Lost::HoldExited(message));
                    self.shared.release_locked(&mut state);
                }
            }
        }
        match &state.lost {
            None => Ok(()),
            Some(Lost::Cancelled) => Err(SourceError::Cancelled),
            Some(Lost::WindowTimeout { limit }) => Err(SourceError::Hold(format!(
                "the paused window exceeded the window timeout of {limit:?}, so the writers were \
                 resumed and the backup was abandoned; raise the window timeout or back up less \
                 at once"
            ))),
            Some(Lost::HoldExited(message)) => Err(SourceError::Hold(message.clone())),
        }
    }

    /// Releases the hold and returns the paused window and any warnings, or why the hold did
    /// not last.
    fn release(&self) -> Result<(SystemTime, SystemTime, Vec<String>), SourceError> {
        self.check()?;
        let mut state = self.shared.lock();
        let end = self.shared.release_locked(&mut state);
        match &state.released {
            Some((_, Err(problem))) => Err(SourceError::Hold(format!(
                "the backup is complete but releasing the writers failed: {problem}; the \
                 application may still be paused, run the resume command by hand"
            ))),
            _ => Ok((self.start, end, std::mem::take(&mut state.warnings))),
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            self.shared.release_locked(&mut state);
        }
        if let Some(watchdog) = self.watchdog.take() {
            // The watchdog wakes on the release above and exits.
            let _ = watchdog.join();
        }
    }
}

/// Releases the hold when the window runs out or the backup is cancelled, even while the
/// engine is busy storing a phase.
fn watch(shared: &Shared, cancel: &CancelToken, deadline: Instant) {
    // Cancellation is a flag without a notification, so it is polled.
    const POLL: Duration = Duration::from_millis(50);
    let mut state = shared.lock();
    loop {
        if state.released.is_some() {
            return;
        }
        let now = Instant::now();
        if cancel.is_cancelled() {
            tracing::warn!("backup cancelled; resuming the writers");
            state.lost = Some(Lost::Cancelled);
            shared.release_locked(&mut state);
            return;
        }
        if now >= deadline {
            tracing::error!("paused window timed out; resuming the writers");
            state.lost = Some(Lost::WindowTimeout {
                limit: shared.config.window_timeout,
            });
            shared.release_locked(&mut state);
            return;
        }
        let wait = POLL.min(deadline - now);
        state = match shared.wake.wait_timeout(state, wait) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        };
    }
}

fn resume_after_failed_pause(config: &HoldConfig, error: SourceError) -> SourceError {
    // A pause that failed or timed out may have paused part of the application.
    if let Some(resume) = &config.resume_command {
        if let Err(e) = run_command("resume", resume, config.pause_timeout, None) {
            tracing::error!(error = %e, "resuming after a failed pause failed too");
            return SourceError::Hold(format!("{error}; resuming afterwards failed as well: {e}"));
        }
    }
    error
}

fn shell(command: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command).stdin(Stdio::null());
    // Its own process group, so a timeout or the end of a hold reaches the children a shell
    // script started too.
    cmd.process_group(0);
    cmd
}

/// Runs `sh -c command` and waits for it to exit 0 within `timeout`.
fn run_command(
    what: &str,
    command: &str,
    timeout: Duration,
    cancel: Option<&CancelToken>,
) -> Result<(), SourceError> {
    let mut child = shell(command)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            SourceError::Hold(format!("cannot run the {what} command `{command}`: {e}"))
        })?;
    let stdout = child.stdout.take().map(Tail::spawn);
    let stderr = child.stderr.take().map(Tail::spawn);
    let describe = |stdout: &Option<Tail>, stderr: &Option<Tail>| {
        let mut text = String::new();
        if let Some(t) = stderr {
            text.push_str(&t.describe());
        }
        if let Some(t) = stdout {
            text.push_str(&t.describe_as("stdout"));
        }
        text
    };
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return if status.success() {
                    tracing::debug!(command, "{what} command done");
                    Ok(())
                } else {
                    Err(SourceError::Hold(format!(
                        "the {what} command `{command}` failed ({}){}",
                        status_text(status),
                        describe(&stdout, &stderr)
                    )))
                };
            }
            Ok(None) => {}
            Err(e) => {
                return Err(SourceError::Hold(format!(
                    "cannot wait for the {what} command `{command}`: {e}"
                )));
            }
        }
        if cancel.is_some_and(CancelToken::is_cancelled) {
            kill_group(&mut child);
            return Err(SourceError::Cancelled);
        }
        if Instant::now() >= deadline {
            kill_group(&mut child);
            return Err(SourceError::Hold(format!(
                "the {what} command `{command}` did not finish within {timeout:?} and was \
                 killed{}",
                describe(&stdout, &stderr)
            )));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Spawns the hold command and waits for its ready line.
fn spawn_hold(
    config: &HoldConfig,
    command: &str,
    cancel: &CancelToken,
) -> Result<HoldProcess, SourceError> {
    let mut child = shell(command)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| SourceError::Hold(format!("cannot run the hold command `{command}`: {e}")))?;
    let stderr = match child.stderr.take() {
        Some(s) => Tail::spawn(s),
        None => Tail::empty(),
    };
    let (ready_tx, ready_rx) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        let ready_line = config.ready_line.clone();
        let spawned = std::thread::Builder::new()
            .name("backstop-hold-stdout".into())
            .spawn(move || watch_for_ready(stdout, ready_line.as_deref(), &ready_tx));
        if let Err(e) = spawned {
            kill_group(&mut child);
            return Err(SourceError::Hold(format!(
                "cannot watch the hold command's output: {e}"
            )));
        }
    }
    let mut process = HoldProcess {
        command: command.to_owned(),
        child,
        stderr,
    };
    let deadline = Instant::now() + config.pause_timeout;
    loop {
        match ready_rx.recv_timeout(Duration::from_millis(20)) {
            Ok(()) => return Ok(process),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = wait_briefly(&mut process.child);
                kill_group(&mut process.child);
                return Err(SourceError::Hold(format!(
                    "the hold command `{command}` closed its output without printing {} ({}){}",
                    ready_text(config),
                    status,
                    process.stderr.describe()
                )));
            }
        }
        if let Ok(Some(status)) = process.child.try_wait() {
            return Err(SourceError::Hold(format!(
                "the hold command `{command}` exited ({}) before printing {}{}",
                status_text(status),
                ready_text(config),
                process.stderr.describe()
            )));
        }
        if cancel.is_cancelled() {
            let _ = terminate(&mut process, config.kill_grace);
            return Err(SourceError::Cancelled);
        }
        if Instant::now() >= deadline {
            let _ = terminate(&mut process, config.kill_grace);
            return Err(SourceError::Hold(format!(
                "the hold command `{command}` did not print {} within {:?} and was ended{}",
                ready_text(config),
                config.pause_timeout,
                process.stderr.describe()
            )));
        }
    }
}

fn ready_text(config: &HoldConfig) -> String {
    match &config.ready_line {
        Some(line) => format!("its ready line `{line}`"),
        None => "a line".into(),
    }
}

/// Reads the hold command's stdout, signals once when the ready line appears, and keeps
/// draining it so the command never blocks on a full pipe.
fn watch_for_ready(stdout: impl Read, ready_line: Option<&str>, ready: &mpsc::Sender<()>) {
    let mut signalled = false;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if signalled {
            tracing::debug!(line = %line, "hold command output");
            continue;
        }
        if ready_line.is_none_or(|want| line.trim() == want.trim()) {
            signalled = true;
            let _ = ready.send(());
        } else {
            tracing::debug!(line = %line, "hold command output before its ready line");
        }
    }
}

/// Ends a hold command: `SIGTERM` to its process group, `SIGKILL` after the grace period.
fn terminate(process: &mut HoldProcess, grace: Duration) -> Result<(), String> {
    if let Ok(Some(status)) = process.child.try_wait() {
        // It ended on its own; the caller that noticed reports it.
        tracing::debug!(%status, "hold command already ended");
        return Ok(());
    }
    signal_group(&process.child, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    loop {
        match process.child.try_wait() {
            Ok(Some(status)) => {
                tracing::debug!(%status, "hold command ended");
                return Ok(());
            }
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => break,
        }
    }
    tracing::warn!(command = %process.command, "hold command ignored SIGTERM; killing it");
    kill_group(&mut process.child);
    Err(format!(
        "the hold command `{}` did not exit within {grace:?} of SIGTERM and was killed",
        process.command
    ))
}

fn signal_group(child: &Child, signal: nix::sys::signal::Signal) {
    let Ok(pid) = i32::try_from(child.id()) else {
        return;
    };
    // ESRCH just means the group is gone already.
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), signal);
}

fn kill_group(child: &mut Child) {
    signal_group(child, nix::sys::signal::Signal::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
}

fn wait_briefly(child: &mut Child) -> String {
    let deadline = Instant::now() + Duration::from_millis(200);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status_text(status);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    "still running".into()
}

fn status_text(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// The last bytes a child wrote to a pipe, for error messages.
struct Tail {
    buf: Arc<Mutex<VecDeque<u8>>>,
    reader: Option<JoinHandle<()>>,
}

impl Tail {
    const KEEP: usize = 2048;

    fn empty() -> Self {
        Self {
            buf: Arc::default(),
            reader: None,
        }
    }

    fn spawn(pipe: impl Read + Send + 'static) -> Self {
        let buf: Arc<Mutex<VecDeque<u8>>> = Arc::default();
        let sink = Arc::clone(&buf);
        let reader = std::thread::Builder::new()
            .name("backstop-hold-tail".into())
            .spawn(move || {
                let mut pipe = pipe;
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                    let mut buf = sink
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    buf.extend(chunk.iter().take(n));
                    let excess = buf.len().saturating_sub(Self::KEEP);
                    buf.drain(..excess);
                }
            })
            .ok();
        Self { buf, reader }
    }

    fn text(&self) -> String {
        // Give the reader a moment to collect what an exited process wrote last; a child of the
        // command may keep the pipe open, so this never waits for the end of the stream.
        if let Some(reader) = &self.reader {
            let deadline = Instant::now() + Duration::from_millis(200);
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let buf = self
            .buf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bytes: Vec<u8> = buf.iter().copied().collect();
        String::from_utf8_lossy(&bytes).trim().to_owned()
    }

    fn describe(&self) -> String {
        self.describe_as("stderr")
    }

    fn describe_as(&self, name: &str) -> String {
        let text = self.text();
        if text.is_empty() {
            String::new()
        } else {
            format!("; {name}: {text}")
        }
    }
}
