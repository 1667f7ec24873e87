//! Coordinated groups: several databases backed up as one consistent group, following
//! ScalarDB's procedure — pause every application that writes to them (stop accepting requests,
//! drain the ones in flight), take each database's snapshot point inside the paused window,
//! resume — and the restore that puts every member back to one moment of such a window.
//!
//! # The window, and what has to happen inside it
//! What must lie inside the paused window is each member's **snapshot point**, the moment its
//! restored copy will reflect; copying the data can often happen outside it. Each member gets a
//! [`SnapshotPoint`] from its kind:
//!
//! | kind | snapshot point | inside the window |
//! | --- | --- | --- |
//! | `sqlite` | the read transaction that `begin` opens (or the online-backup copy it makes) | `begin`; the pages are stored after the window |
//! | `postgres` | the end of the backup (`pg_backup_stop`): a restore replays WAL up to that position and stops there (`recovery_target = immediate`) | the step from the data phase to the WAL phase (`pg_backup_stop`); `pg_backup_start` and the data files come before the window, the WAL after it |
//! | anything else (`dir`, `bdb`, `rocksdb`, `eventstore`) | no separate point: the copy is the snapshot | `begin` and every phase |
//!
//! So one group backup runs: begin the `postgres` members and store their data files (the
//! applications still run) → pause every application and confirm it is paused → `begin` the
//! `sqlite` members, stop the `postgres` backups, store the whole-session members → resume → store
//! the rest (SQLite pages, PostgreSQL WAL). The pause lasts about as long as the snapshot points
//! take (milliseconds) unless whole-session members are in the group.
//!
//! # The pause protocol
//! For each application, modelled on scalar-admin: **pause** (it stops accepting new requests and
//! drains those in flight, within a timeout), **check** that it is paused, **resume**. Two forms:
//!
//! - **HTTP** (the `backstop-pause` crate embedded in the application): `POST /pause` with a
//!   lease, `GET /status` to confirm, `POST /unpause`. While the window is open a keeper thread
//!   renews the lease; if the backup process dies the lease runs out and the application resumes
//!   by itself. A lease that ran out before the window closed fails the backup, because the
//!   snapshot points may then lie outside a paused moment.
//! - **Commands**: a [`HoldConfig`] per application (pause/resume commands or a hold command),
//!   run through [`crate::hold`]. The pause command's exit status 0 is the confirmation.
//!
//! Applications are paused in parallel; the window begins when the last one is confirmed paused
//! and ends before the first is resumed. Resuming happens on every path: success, error,
//! cancellation (the keeper and the hold watchdog watch the cancel token), panic (drop).
//!
//! # Storage and restore
//! Member entries are stored under `<member>/…`; member `source_meta` under `<member>/<key>`, and
//! given back to each member as its own `parent_meta`. The restore profile (kind `group`) holds
//! each member's profile as JSON; `restore_fixup` applies each to `<target>/<member>`. With a
//! `target-time` option, every member is restored to that moment, which must lie inside this
//! backup's paused window or inside one of the later windows listed in `group-windows`
//! (`start-end` pairs in Unix milliseconds, comma-separated, as the CLI passes them). Inside its
//! own window no member needs point-in-time recovery (nothing changed while paused); in a later
//! window only `postgres` members can get there (recovery to `target-time` through the WAL
//! archive), so a group with any other member refuses.

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::hold::{Held, HoldConfig};
use crate::{
    Content, Entry, Phase, RestoreParams, RestoreProfile, Session, SessionContext, SessionOutcome,
    Source, SourceError,
};

/// Where a member's snapshot point lies in its session, which decides what of it must happen
/// inside the paused window (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotPoint {
    /// `begin` takes the snapshot; the phases read it and may be stored after the window.
    AtBegin,
    /// The copy becomes consistent when the session moves past its first phase (PostgreSQL's
    /// `pg_backup_stop`): begin and first phase before the window, the next step inside it.
    AfterFirstPhase,
    /// No snapshot point apart from the copy itself: every phase is stored inside the window.
    WholeSession,
}

impl SnapshotPoint {
    /// The snapshot point of a source kind; unknown kinds get the safe [`Self::WholeSession`].
    pub fn for_kind(kind: &str) -> Self {
        match kind {
            "sqlite" => Self::AtBegin,
            "postgres" => Self::AfterFirstPhase,
            _ => Self::WholeSession,
        }
    }
}

/// One database of a group.
pub struct GroupMember {
    name: String,
    source: Box<dyn Source>,
    point: SnapshotPoint,
}

impl std::fmt::Debug for GroupMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupMember")
            .field("name", &self.name)
            .field("kind", &self.source.kind())
            .field("point", &self.point)
            .finish()
    }
}

impl GroupMember {
    /// A member named `name` (letters, digits, `-` and `_`: it becomes a directory of the
    /// backup), with the snapshot point of its kind.
    pub fn new(name: impl Into<String>, source: Box<dyn Source>) -> Result<Self, SourceError> {
        let name = name.into();
        check_name("member", &name)?;
        let point = SnapshotPoint::for_kind(source.kind());
        Ok(Self {
            name,
            source,
            point,
        })
    }

    /// Overrides the snapshot point (for a source kind this module does not know).
    #[must_use]
    pub fn with_snapshot_point(mut self, point: SnapshotPoint) -> Self {
        self.point = point;
        self
    }

    /// The member's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

fn check_name(what: &str, name: &str) -> Result<(), SourceError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(SourceError::Procedure(format!(
            "`{name}` is not a valid {what} name: use 1 to 64 letters, digits, `-` or `_`"
        )))
    }
}

/// How one application is paused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PauseVia {
    /// The HTTP pause protocol at this base URL (`http://127.0.0.1:7411`).
    Http(String),
    /// Pause/resume commands or a hold command.
    Command(HoldConfig),
}

/// An application to pause around the group's snapshot points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupApp {
    /// A name for messages.
    pub name: String,
    /// How to pause it.
    pub via: PauseVia,
}

impl GroupApp {
    /// An application that embeds `backstop-pause`, reached at `base_url`.
    pub fn http(name: impl Into<String>, base_url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            via: PauseVia::Http(base_url.into().trim_end_matches('/').to_owned()),
        }
    }

    /// An application paused by commands.
    pub fn command(name: impl Into<String>, hold: HoldConfig) -> Self {
        Self {
            name: name.into(),
            via: PauseVia::Command(hold),
        }
    }
}

/// Timings of the pause protocol (the lease applies to HTTP applications; command applications
/// have their own timeouts in their [`HoldConfig`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PauseOptions {
    /// How long an application stays paused without a renewal; the keeper renews every third of
    /// it. A crashed backup leaves the application paused at most this long.
    pub lease: Duration,
    /// How long an application may take to drain its requests in flight.
    pub drain_timeout: Duration,
    /// How long the window may stay open; longer fails the backup and resumes everything.
    pub window_timeout: Duration,
}

impl Default for PauseOptions {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            window_timeout: Duration::from_secs(600),
        }
    }
}

/// Several sources backed up as one consistent group (see the module docs). Kind `group`,
/// identity the group's name.
pub struct GroupSource {
    name: String,
    members: Vec<GroupMember>,
    apps: Vec<GroupApp>,
    options: PauseOptions,
    /// The pause hooks of the session in progress, which borrows them.
    hooks: Vec<AppHandle>,
}

impl std::fmt::Debug for GroupSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupSource")
            .field("name", &self.name)
            .field("members", &self.members)
            .field("apps", &self.apps)
            .finish_non_exhaustive()
    }
}

impl GroupSource {
    /// An empty group named `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, SourceError> {
        let name = name.into();
        check_name("group", &name)?;
        Ok(Self {
            name,
            members: Vec::new(),
            apps: Vec::new(),
            options: PauseOptions::default(),
            hooks: Vec::new(),
        })
    }

    /// Adds a member; names must be unique.
    pub fn with_member(mut self, member: GroupMember) -> Result<Self, SourceError> {
        if self.members.iter().any(|m| m.name == member.name) {
            return Err(SourceError::Procedure(format!(
                "group `{}` has two members named `{}`",
                self.name, member.name
            )));
        }
        self.members.push(member);
        Ok(self)
    }

    /// Adds an application to pause.
    #[must_use]
    pub fn with_app(mut self, app: GroupApp) -> Self {
        self.apps.push(app);
        self
    }

    /// Sets the pause protocol's timings.
    #[must_use]
    pub fn with_pause_options(mut self, options: PauseOptions) -> Self {
        self.options = options;
        self
    }

    /// The members.
    pub fn members(&self) -> &[GroupMember] {
        &self.members
    }
}

impl Source for GroupSource {
    fn kind(&self) -> &str {
        "group"
    }

    fn identity(&self) -> String {
        self.name.clone()
    }

    fn begin(&mut self, ctx: &SessionContext) -> Result<Box<dyn Session + '_>, SourceError> {
        if self.members.is_empty() {
            return Err(SourceError::Procedure(format!(
                "group `{}` has no members; add the databases it backs up",
                self.name
            )));
        }
        if ctx.cancel.is_cancelled() {
            return Err(SourceError::Cancelled);
        }
        let options = self.options.clone();
        if options.lease.is_zero() || options.drain_timeout.is_zero() {
            return Err(SourceError::Procedure(
                "the pause lease and drain timeout must be longer than zero".into(),
            ));
        }
        let mut slots = Vec::with_capacity(self.members.len());
        for member in self.members.iter_mut() {
            let member_ctx = SessionContext {
                cancel: ctx.cancel.clone(),
                parent_meta: ctx
                    .parent_meta
                    .as_ref()
                    .map(|meta| member_meta(meta, &member.name)),
                full_read: ctx.full_read,
            };
            let kind = member.source.kind().to_owned();
            let mut slot = Slot {
                name: member.name.clone(),
                kind,
                point: member.point,
                ctx: member_ctx,
                source: Mutex::new(None),
                session: None,
                pending: VecDeque::new(),
                first_taken: false,
                exhausted: false,
            };
            let source: &mut dyn Source = member.source.as_mut();
            if member.point == SnapshotPoint::AfterFirstPhase {
                // Its start (a checkpoint, for PostgreSQL) may take long and is no snapshot
                // point, so it happens before anything is paused.
                let session = source
                    .begin(&slot.ctx)
                    .map_err(|e| member_error(&slot.name, e))?;
                slot.session = Some(session);
            } else {
                slot.source = Mutex::new(Some(source));
            }
            slots.push(slot);
        }
        self.hooks = self
            .apps
            .iter()
            .map(|app| match &app.via {
                PauseVia::Http(url) => AppHandle::Http(HttpApp::new(&app.name, url, &options)),
                PauseVia::Command(hold) => AppHandle::Command {
                    name: app.name.clone(),
                    held: Held::from_box(Box::new(Noop) as Box<dyn Source>, hold.clone()),
                },
            })
            .collect();
        let app_names = self.apps.iter().map(|a| a.name.clone()).collect();
        Ok(Box::new(GroupSession {
            window: None,
            group: self.name.clone(),
            slots,
            apps: Mutex::new(self.hooks.iter_mut().collect()),
            app_names,
            options,
            ctx: ctx.clone(),
            stage: Stage::Roots,
            handles: Mutex::new(Vec::new()),
            snapshot_span: None,
            pause_window: None,
        }))
    }
}

/// The `<member>/` part of a group's source_meta, without the prefix.
fn member_meta(meta: &BTreeMap<String, String>, member: &str) -> BTreeMap<String, String> {
    let prefix = format!("{member}/");
    meta.iter()
        .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_owned(), v.clone())))
        .collect()
}

fn member_error(member: &str, e: SourceError) -> SourceError {
    match e {
        SourceError::Cancelled => SourceError::Cancelled,
        SourceError::Procedure(m) => SourceError::Procedure(format!("member `{member}`: {m}")),
        SourceError::Hold(m) => SourceError::Hold(format!("member `{member}`: {m}")),
        SourceError::Database { context, source } => SourceError::Database {
            context: format!("member `{member}`: {context}"),
            source,
        },
        SourceError::Tool { program, detail } => SourceError::Tool {
            program,
            detail: format!("{detail} (member `{member}`)"),
        },
        other => SourceError::Database {
            context: format!("member `{member}`"),
            source: Box::new(other),
        },
    }
}

/// A source with nothing to store: the command form of the pause protocol reuses
/// [`Held`]'s hooks (pause on begin, resume on finish or drop, watchdog on cancel) around it.
struct Noop;

struct NoopSession;

impl Source for Noop {
    fn kind(&self) -> &str {
        "none"
    }
    fn identity(&self) -> String {
        String::new()
    }
    fn begin(&mut self, _ctx: &SessionContext) -> Result<Box<dyn Session + '_>, SourceError> {
        Ok(Box::new(NoopSession))
    }
}

impl Session for NoopSession {
    fn next_phase(&mut self) -> Result<Option<Phase>, SourceError> {
        Ok(None)
    }
    fn finish(self: Box<Self>) -> Result<SessionOutcome, SourceError> {
        Ok(SessionOutcome::default())
    }
}

/// An application not yet paused.
enum AppHandle {
    Http(HttpApp),
    Command {
        name: String,
        held: Held<dyn Source>,
    },
}

/// The HTTP pause protocol's client side for one application.
#[derive(Clone)]
struct HttpApp {
    name: String,
    base: String,
    agent: ureq::Agent,
    lease: Duration,
    drain_timeout: Duration,
    pause_id: Option<u64>,
    /// How long the application took to drain (its requests waited that long too).
    drained_in_ms: u64,
}

#[derive(serde::Deserialize)]
struct Ticket {
    pause_id: u64,
    drained_in_ms: u64,
}

#[derive(serde::Deserialize)]
struct Status {
    paused: bool,
    drained: bool,
    pause_id: Option<u64>,
}

impl HttpApp {
    fn new(name: &str, base: &str, options: &PauseOptions) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Draining may take the whole drain timeout; a little more for the answer.
            .timeout_global(Some(options.drain_timeout + Duration::from_secs(10)))
            .build()
            .into();
        Self {
            name: name.to_owned(),
            base: base.trim_end_matches('/').to_owned(),
            agent,
            lease: options.lease,
            drain_timeout: options.drain_timeout,
            pause_id: None,
            drained_in_ms: 0,
        }
    }

    /// Sends a request and returns the status and body text.
    fn call(&self, post: bool, path_and_query: &str) -> Result<(u16, String), SourceError> {
        let url = format!("{}{path_and_query}", self.base);
        let result = if post {
            self.agent.post(&url).send_empty()
        } else {
            self.agent.get(&url).call()
        };
        let mut response = result.map_err(|e| {
            SourceError::Hold(format!(
                "application `{}`: cannot reach its pause endpoint `{url}`: {e}; is it running \
                 and serving the pause protocol there?",
                self.name
            ))
        })?;
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().map_err(|e| {
            SourceError::Hold(format!(
                "application `{}`: reading the answer of `{url}`: {e}",
                self.name
            ))
        })?;
        Ok((status, body))
    }

    fn refused(&self, what: &str, status: u16, body: &str) -> SourceError {
        let message = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| body.trim().to_owned());
        SourceError::Hold(format!(
            "application `{}` refused to {what} (HTTP {status}): {message}",
            self.name
        ))
    }

    /// Pauses and confirms through `/status` that this pause is in effect and drained.
    fn pause(&mut self) -> Result<(), SourceError> {
        let (status, body) = self.call(
            true,
            &format!(
                "/pause?lease_ms={}&timeout_ms={}",
                self.lease.as_millis(),
                self.drain_timeout.as_millis()
            ),
        )?;
        if status != 200 {
            return Err(self.refused("pause", status, &body));
        }
        let ticket: Ticket = serde_json::from_str(&body).map_err(|e| {
            SourceError::Hold(format!(
                "application `{}` answered the pause with `{body}`, not a pause ticket: {e}",
                self.name
            ))
        })?;
        self.pause_id = Some(ticket.pause_id);
        self.drained_in_ms = ticket.drained_in_ms;
        let (status, body) = self.call(false, "/status")?;
        let confirmed = status == 200
            && serde_json::from_str::<Status>(&body)
                .is_ok_and(|s| s.paused && s.drained && s.pause_id == Some(ticket.pause_id));
        if !confirmed {
            return Err(SourceError::Hold(format!(
                "application `{}` accepted pause {} but its status does not confirm it (HTTP \
                 {status}: {body})",
                self.name, ticket.pause_id
            )));
        }
        tracing::debug!(app = %self.name, pause_id = ticket.pause_id, "application paused");
        Ok(())
    }

    fn renew(&self) -> Result<(), SourceError> {
        let Some(id) = self.pause_id else {
            return Ok(());
        };
        let (status, body) = self.call(
            true,
            &format!("/pause?pause_id={id}&lease_ms={}", self.lease.as_millis()),
        )?;
        if status == 200 {
            Ok(())
        } else {
            Err(self.refused("renew its pause", status, &body))
        }
    }

    /// Ends our pause; an error if it had already ended (the window was broken).
    fn resume(&mut self) -> Result<(), SourceError> {
        let Some(id) = self.pause_id.take() else {
            return Ok(());
        };
        let (status, body) = self.call(true, &format!("/unpause?pause_id={id}"))?;
        match status {
            200 => Ok(()),
            409 => Err(SourceError::Hold(format!(
                "application `{}` was no longer paused when the window closed ({}); the \
                 snapshots may not agree, so the backup is abandoned: raise the pause lease",
                self.name,
                serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                    .unwrap_or(body)
            ))),
            _ => Err(self.refused("resume", status, &body)),
        }
    }
}

/// Why the window was lost before it was closed.
#[derive(Clone, Debug)]
enum Lost {
    Cancelled,
    Failed(String),
}

struct KeeperState {
    closed: bool,
    lost: Option<Lost>,
}

/// What the HTTP keeper thread shares with the session.
struct HttpShared {
    apps: Mutex<Vec<HttpApp>>,
    state: Mutex<KeeperState>,
    wake: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Resuming must work even after a panic elsewhere.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl HttpShared {
    /// Resumes every HTTP application still paused; returns the problems.
    fn resume_all(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for app in lock(&self.apps).iter_mut() {
            if let Err(e) = app.resume() {
                tracing::error!(app = %app.name, error = %e, "resuming failed");
                problems.push(e.to_string());
            }
        }
        problems
    }
}

/// The paused window: every application paused until [`Window::close`] or drop.
struct Window<'a> {
    http: Arc<HttpShared>,
    keeper: Option<JoinHandle<()>>,
    commands: Vec<(String, Box<dyn Session + 'a>)>,
    start: SystemTime,
    /// The longest drain of an HTTP application before the window started.
    drain_ms: u64,
}

impl<'a> Window<'a> {
    /// Pauses every application in parallel and returns once all are confirmed paused; on any
    /// failure resumes those that were paused.
    fn open(
        apps: Vec<&'a mut AppHandle>,
        options: &PauseOptions,
        cancel: &crate::CancelToken,
    ) -> Result<Self, SourceError> {
        let ctx = SessionContext {
            cancel: cancel.clone(),
            ..SessionContext::default()
        };
        let results: Vec<Result<Paused<'a>, SourceError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = apps
                .into_iter()
                .map(|app| {
                    let ctx = &ctx;
                    scope.spawn(move || -> Result<Paused<'a>, SourceError> {
                        match app {
                            AppHandle::Http(http) => {
                                let mut http = http.clone();
                                match http.pause() {
                                    Ok(()) => Ok(Paused::Http(http)),
                                    Err(e) => {
                                        // A pause granted but not confirmed is ended too.
                                        let _ = http.resume();
                                        Err(e)
                                    }
                                }
                            }
                            AppHandle::Command { name, held } => {
                                let session = held.begin(ctx).map_err(|e| match e {
                                    SourceError::Cancelled => SourceError::Cancelled,
                                    other => {
                                        SourceError::Hold(format!("application `{name}`: {other}"))
                                    }
                                })?;
                                Ok(Paused::Command(name.clone(), session))
                            }
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(SourceError::Hold("pausing an application panicked".into()))
                    })
                })
                .collect()
        });
        let mut http = Vec::new();
        let mut commands = Vec::new();
        let mut errors = Vec::new();
        for result in results {
            match result {
                Ok(Paused::Http(app)) => http.push(app),
                Ok(Paused::Command(name, session)) => commands.push((name, session)),
                Err(e) => errors.push(e),
            }
        }
        let shared = Arc::new(HttpShared {
            apps: Mutex::new(http),
            state: Mutex::new(KeeperState {
                closed: false,
                lost: None,
            }),
            wake: Condvar::new(),
        });
        if !errors.is_empty() {
            // Resume what was paused before reporting.
            shared.resume_all();
            drop(commands);
            if errors.iter().all(|e| matches!(e, SourceError::Cancelled)) {
                return Err(SourceError::Cancelled);
            }
            let messages: Vec<String> = errors
                .iter()
                .filter(|e| !matches!(e, SourceError::Cancelled))
                .map(ToString::to_string)
                .collect();
            return Err(SourceError::Hold(format!(
                "pausing the applications failed, so nothing was backed up and every \
                 application was resumed: {}",
                messages.join("; ")
            )));
        }
        let start = SystemTime::now();
        let drain_ms = lock(&shared.apps)
            .iter()
            .map(|a| a.drained_in_ms)
            .max()
            .unwrap_or(0);
        tracing::info!(
            drain_ms,
            "every application is paused; the group's window begins"
        );
        let keeper = {
            let shared = Arc::clone(&shared);
            let cancel = cancel.clone();
            let lease = options.lease;
            let deadline = Instant::now() + options.window_timeout;
            let window_timeout = options.window_timeout;
            std::thread::Builder::new()
                .name("backstop-group-keeper".into())
                .spawn(move || keep(&shared, &cancel, lease, deadline, window_timeout))
        };
        let mut window = Self {
            http: shared,
            keeper: None,
            commands,
            start,
            drain_ms,
        };
        // On an error `window` is dropped here, which resumes everything.
        window.keeper = Some(keeper.map_err(|e| {
            SourceError::Hold(format!("cannot start the pause keeper thread: {e}"))
        })?);
        Ok(window)
    }

    /// Fails if the window was lost (cancelled, a lease could not be renewed, timed out).
    fn check(&self) -> Result<(), SourceError> {
        match &lock(&self.http.state).lost {
            None => Ok(()),
            Some(Lost::Cancelled) => Err(SourceError::Cancelled),
            Some(Lost::Failed(message)) => Err(SourceError::Hold(message.clone())),
        }
    }

    /// Ends the window: records its end, resumes every application, and fails if any of them
    /// was no longer paused (then the window did not hold).
    fn close(mut self) -> Result<ClosedWindow, SourceError> {
        self.check()?;
        let end = SystemTime::now();
        let mut problems = self.stop_keeper();
        let mut warnings = Vec::new();
        problems.extend(self.http.resume_all());
        for (name, session) in self.commands.drain(..) {
            match session.finish() {
                Ok(outcome) => warnings.extend(outcome.warnings),
                Err(e) => problems.push(format!("application `{name}`: {e}")),
            }
        }
        if problems.is_empty() {
            Ok(ClosedWindow {
                start: self.start,
                end,
                drain_ms: self.drain_ms,
                warnings,
            })
        } else {
            Err(SourceError::Hold(problems.join("; ")))
        }
    }

    fn stop_keeper(&mut self) -> Vec<String> {
        {
            let mut state = lock(&self.http.state);
            state.closed = true;
            self.http.wake.notify_all();
        }
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
        match &lock(&self.http.state).lost {
            Some(Lost::Failed(message)) => vec![message.clone()],
            _ => Vec::new(),
        }
    }
}

impl Drop for Window<'_> {
    fn drop(&mut self) {
        self.stop_keeper();
        self.http.resume_all();
        // Dropping the held sessions runs the resume commands.
        self.commands.clear();
    }
}

/// A window that was closed as planned.
struct ClosedWindow {
    start: SystemTime,
    end: SystemTime,
    drain_ms: u64,
    warnings: Vec<String>,
}

enum Paused<'a> {
    Http(HttpApp),
    Command(String, Box<dyn Session + 'a>),
}

/// Renews the HTTP leases while the window is open; resumes everything on cancellation, on a
/// failed renewal and when the window times out.
fn keep(
    shared: &HttpShared,
    cancel: &crate::CancelToken,
    lease: Duration,
    deadline: Instant,
    window_timeout: Duration,
) {
    // Cancellation is a flag without a notification, so it is polled.
    const POLL: Duration = Duration::from_millis(50);
    let renew_every = (lease / 3).max(Duration::from_millis(10));
    let mut next_renewal = Instant::now() + renew_every;
    let mut state = lock(&shared.state);
    loop {
        if state.closed {
            return;
        }
        let now = Instant::now();
        let lost = if cancel.is_cancelled() {
            tracing::warn!("backup cancelled; resuming the applications");
            Some(Lost::Cancelled)
        } else if now >= deadline {
            Some(Lost::Failed(format!(
                "the paused window exceeded its timeout of {window_timeout:?}, so the \
                 applications were resumed and the backup abandoned; raise the window timeout"
            )))
        } else if now >= next_renewal {
            next_renewal = now + renew_every;
            // Renewing talks to the applications; the session only reads `state` meanwhile.
            drop(state);
            let failed: Vec<String> = lock(&shared.apps)
                .iter()
                .filter_map(|app| app.renew().err().map(|e| e.to_string()))
                .collect();
            state = lock(&shared.state);
            (!failed.is_empty()).then(|| Lost::Failed(failed.join("; ")))
        } else {
            None
        };
        if let Some(lost) = lost {
            state.lost = Some(lost);
            drop(state);
            shared.resume_all();
            return;
        }
        let wait = POLL.min(next_renewal.saturating_duration_since(now));
        state = shared
            .wake
            .wait_timeout(state, wait)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// One member's session in progress.
struct Slot<'a> {
    name: String,
    kind: String,
    point: SnapshotPoint,
    ctx: SessionContext,
    /// The source until its session is begun.
    source: Mutex<Option<&'a mut dyn Source>>,
    session: Option<Box<dyn Session + 'a>>,
    /// Phases taken inside the window and stored after it.
    pending: VecDeque<Phase>,
    first_taken: bool,
    exhausted: bool,
}

impl<'a> Slot<'a> {
    fn begin(&mut self) -> Result<(), SourceError> {
        if self.session.is_some() {
            return Ok(());
        }
        let source = self
            .source
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| {
                SourceError::Procedure(format!("member `{}` has no source to begin", self.name))
            })?;
        let session = source
            .begin(&self.ctx)
            .map_err(|e| member_error(&self.name, e))?;
        self.session = Some(session);
        Ok(())
    }

    fn next(&mut self) -> Result<Option<Phase>, SourceError> {
        if self.exhausted {
            return Ok(None);
        }
        self.begin()?;
        let name = self.name.clone();
        let session = self
            .session
            .as_mut()
            .ok_or_else(|| SourceError::Procedure(format!("member `{name}` has no session")))?;
        let phase = session.next_phase().map_err(|e| member_error(&name, e))?;
        if phase.is_none() {
            self.exhausted = true;
        }
        Ok(phase)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Roots,
    PreWindow(usize),
    OpenWindow,
    InWindow(usize),
    PostWindow(usize),
    Done,
}

struct GroupSession<'a> {
    /// First, so that on an error the applications are resumed before anything else.
    window: Option<Window<'a>>,
    group: String,
    slots: Vec<Slot<'a>>,
    /// Taken by the window when it opens.
    apps: Mutex<Vec<&'a mut AppHandle>>,
    app_names: Vec<String>,
    options: PauseOptions,
    ctx: SessionContext,
    stage: Stage,
    /// Group content handle → (member index, the member's handle).
    handles: Mutex<Vec<(usize, u64)>>,
    /// From the first snapshot point to the last.
    snapshot_span: Option<(SystemTime, SystemTime)>,
    pause_window: Option<ClosedWindow>,
}

impl<'a> GroupSession<'a> {
    /// Puts a member's phase under `<member>/` and remaps its session handles.
    fn prefixed(&mut self, index: usize, phase: Phase) -> Result<Phase, SourceError> {
        let name = self
            .slots
            .get(index)
            .map(|s| s.name.clone())
            .ok_or_else(|| SourceError::Procedure(format!("no member {index}")))?;
        let handles = self
            .handles
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let phase_name = phase.name.clone();
        // A member's streamed entries are listed here, up front: the engine matches a streamed
        // phase against the parent backup in tree order, and a group's phases interleave its
        // members in an order that is not (a member named "z" may be stored before "a").
        let listed = phase
            .into_entries()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| member_error(&name, e))?;
        let entries = listed
            .into_iter()
            // The member's root directory is stored by the `members` phase already.
            .filter(|entry| !(entry.path.is_empty() && entry.kind == crate::EntryKind::Dir))
            .map(|mut entry| {
                entry.path = if entry.path.is_empty() {
                    name.clone()
                } else {
                    format!("{name}/{}", entry.path)
                };
                if let Content::Session(handle) = entry.content {
                    entry.content = Content::Session(handles.len() as u64);
                    handles.push((index, handle));
                }
                entry
            })
            .collect();
        Ok(Phase::new(format!("{name}: {phase_name}"), entries))
    }

    fn check_window(&self) -> Result<(), SourceError> {
        match &self.window {
            Some(window) => window.check(),
            None => Ok(()),
        }
    }

    /// Pauses, takes every snapshot point that needs no storing, and leaves the window open for
    /// the whole-session members.
    fn open_window(&mut self) -> Result<(), SourceError> {
        let apps = std::mem::take(self.apps.get_mut().unwrap_or_else(PoisonError::into_inner));
        if !apps.is_empty() {
            self.window = Some(Window::open(apps, &self.options, &self.ctx.cancel)?);
        }
        let first = SystemTime::now();
        for slot in &mut self.slots {
            match slot.point {
                SnapshotPoint::AtBegin => slot.begin()?,
                SnapshotPoint::AfterFirstPhase => {
                    if let Some(phase) = slot.next()? {
                        slot.pending.push_back(phase);
                    }
                }
                SnapshotPoint::WholeSession => {}
            }
        }
        self.snapshot_span = Some((first, SystemTime::now()));
        tracing::info!(group = %self.group, "snapshot points taken");
        self.check_window()
    }

    fn close_window(&mut self) -> Result<(), SourceError> {
        if let Some(window) = self.window.take() {
            let closed = window.close()?;
            let (start, end) = (closed.start, closed.end);
            let ms = end.duration_since(start).unwrap_or_default().as_millis();
            tracing::info!(group = %self.group, pause_ms = %ms, "applications resumed");
            self.pause_window = Some(closed);
        }
        if let Some((first, _)) = self.snapshot_span {
            // Whole-session members take their snapshot up to here.
            if self
                .slots
                .iter()
                .any(|s| s.point == SnapshotPoint::WholeSession)
            {
                self.snapshot_span = Some((first, SystemTime::now()));
            }
        }
        Ok(())
    }
}

impl Session for GroupSession<'_> {
    fn next_phase(&mut self) -> Result<Option<Phase>, SourceError> {
        if self.ctx.cancel.is_cancelled() {
            return Err(SourceError::Cancelled);
        }
        loop {
            match self.stage {
                Stage::Roots => {
                    self.stage = Stage::PreWindow(0);
                    let now = unix_ns(SystemTime::now());
                    let entries = self
                        .slots
                        .iter()
                        .map(|s| Entry::dir(s.name.clone(), 0o700, now))
                        .collect();
                    return Ok(Some(Phase::new("members", entries)));
                }
                Stage::PreWindow(i) => {
                    let Some(slot) = self.slots.get_mut(i) else {
                        self.stage = Stage::OpenWindow;
                        continue;
                    };
                    if slot.point != SnapshotPoint::AfterFirstPhase || slot.first_taken {
                        self.stage = Stage::PreWindow(i + 1);
                        continue;
                    }
                    slot.first_taken = true;
                    if let Some(phase) = slot.next()? {
                        return self.prefixed(i, phase).map(Some);
                    }
                }
                Stage::OpenWindow => {
                    self.open_window()?;
                    self.stage = Stage::InWindow(0);
                }
                Stage::InWindow(i) => {
                    self.check_window()?;
                    let Some(slot) = self.slots.get_mut(i) else {
                        self.close_window()?;
                        self.stage = Stage::PostWindow(0);
                        continue;
                    };
                    if slot.point != SnapshotPoint::WholeSession {
                        self.stage = Stage::InWindow(i + 1);
                        continue;
                    }
                    match slot.next()? {
                        Some(phase) => return self.prefixed(i, phase).map(Some),
                        None => self.stage = Stage::InWindow(i + 1),
                    }
                }
                Stage::PostWindow(i) => {
                    let Some(slot) = self.slots.get_mut(i) else {
                        self.stage = Stage::Done;
                        continue;
                    };
                    if let Some(phase) = slot.pending.pop_front() {
                        return self.prefixed(i, phase).map(Some);
                    }
                    match slot.next()? {
                        Some(phase) => return self.prefixed(i, phase).map(Some),
                        None => self.stage = Stage::PostWindow(i + 1),
                    }
                }
                Stage::Done => return Ok(None),
            }
        }
    }

    fn open(&self, handle: u64) -> Result<Box<dyn Read + Send>, SourceError> {
        let (index, inner) = usize::try_from(handle)
            .ok()
            .and_then(|h| lock(&self.handles).get(h).copied())
            .ok_or_else(|| {
                SourceError::Procedure(format!("the group session has no content handle {handle}"))
            })?;
        let slot = self
            .slots
            .get(index)
            .ok_or_else(|| SourceError::Procedure(format!("no member {index}")))?;
        let session = slot.session.as_ref().ok_or_else(|| {
            SourceError::Procedure(format!("member `{}` has no open session", slot.name))
        })?;
        session.open(inner).map_err(|e| member_error(&slot.name, e))
    }

    fn finish(mut self: Box<Self>) -> Result<SessionOutcome, SourceError> {
        if self.stage != Stage::Done {
            return Err(SourceError::Procedure(format!(
                "group `{}` was finished before all of its phases were stored; the backup is \
                 incomplete",
                self.group
            )));
        }
        let mut profile = RestoreProfile::new("group").with_param("group", self.group.clone());
        let mut meta = BTreeMap::new();
        let mut warnings = Vec::new();
        let mut names = Vec::new();
        for slot in &mut self.slots {
            let session = slot.session.take().ok_or_else(|| {
                SourceError::Procedure(format!("member `{}` was never begun", slot.name))
            })?;
            let outcome = session.finish().map_err(|e| member_error(&slot.name, e))?;
            let json = serde_json::to_string(&outcome.restore_profile).map_err(|e| {
                SourceError::Procedure(format!(
                    "cannot record the restore profile of member `{}`: {e}",
                    slot.name
                ))
            })?;
            profile = profile
                .with_param(format!("member.{}", slot.name), json)
                .with_param(format!("kind.{}", slot.name), slot.kind.clone());
            meta.insert(format!("{}/kind", slot.name), slot.kind.clone());
            for (k, v) in outcome.source_meta {
                meta.insert(format!("{}/{k}", slot.name), v);
            }
            warnings.extend(
                outcome
                    .warnings
                    .into_iter()
                    .map(|w| format!("member `{}`: {w}", slot.name)),
            );
            names.push(slot.name.clone());
        }
        profile = profile.with_param("members", names.join(","));
        meta.insert("group".into(), self.group.clone());
        meta.insert("members".into(), names.join(","));
        if let Some((first, last)) = self.snapshot_span {
            meta.insert("snapshot.start".into(), unix_ms(first).to_string());
            meta.insert("snapshot.end".into(), unix_ms(last).to_string());
        }
        let mut pause_window = None;
        if let Some(closed) = self.pause_window.take() {
            let ClosedWindow {
                start,
                end,
                drain_ms,
                warnings: app_warnings,
            } = closed;
            let ms = end.duration_since(start).unwrap_or_default().as_millis();
            for (key, value) in [
                ("pause.start", unix_ms(start).to_string()),
                ("pause.end", unix_ms(end).to_string()),
                ("pause.ms", ms.to_string()),
                ("pause.drain_ms", drain_ms.to_string()),
            ] {
                meta.insert(key.into(), value.clone());
                profile = profile.with_param(key, value);
            }
            meta.insert("pause.apps".into(), self.app_names.join(","));
            warnings.extend(app_warnings);
            pause_window = Some((start, end));
        } else {
            warnings.push(format!(
                "group `{}` has no applications to pause: its members were snapshotted one \
                 after the other and may not agree with each other",
                self.group
            ));
        }
        Ok(SessionOutcome {
            restore_profile: profile,
            source_meta: meta,
            pause_window,
            warnings,
        })
    }
}

fn unix_ms(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis())
}

fn unix_ns(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// A recorded paused window, Unix milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PauseWindow {
    /// Every application confirmed paused.
    pub start_ms: u64,
    /// Before the first application was resumed.
    pub end_ms: u64,
}

impl PauseWindow {
    /// Whether `t_ms` lies inside the window (both ends included).
    pub fn contains(&self, t_ms: u64) -> bool {
        self.start_ms <= t_ms && t_ms <= self.end_ms
    }

    /// The window of a group backup's `source_meta` (`pause.start`, `pause.end`), if it has one.
    pub fn from_meta(meta: &BTreeMap<String, String>) -> Option<Self> {
        Some(Self {
            start_ms: meta.get("pause.start")?.parse().ok()?,
            end_ms: meta.get("pause.end")?.parse().ok()?,
        })
    }
}

impl std::fmt::Display for PauseWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} .. {}",
            format_time_ms(self.start_ms),
            format_time_ms(self.end_ms)
        )
    }
}

/// `2026-11-21T21:13:11.123Z`, which PostgreSQL accepts as a recovery target time.
pub fn format_time_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Parses a target time: RFC 3339 / ISO 8601 in UTC (`2026-11-21T21:13:11.5Z`,
/// `2026-11-21 21:13:11+00`), or `@<unix seconds>`; returns Unix milliseconds.
pub fn parse_time_ms(text: &str) -> Result<u64, SourceError> {
    let bad = |why: &str| {
        SourceError::Procedure(format!(
            "`{text}` is not a target time ({why}); write it in UTC as \
             `2026-11-21T21:13:11.5Z` or `2026-11-21 21:13:11+00`, or as `@<unix seconds>`"
        ))
    };
    let text = text.trim();
    if let Some(secs) = text.strip_prefix('@') {
        let secs: f64 = secs.parse().map_err(|_| bad("not a number of seconds"))?;
        let d = Duration::try_from_secs_f64(secs).map_err(|_| bad("out of range"))?;
        return u64::try_from(d.as_millis()).map_err(|_| bad("out of range"));
    }
    let mut utc = text;
    for zero in ["+00:00", "+0000", "+00", "-00:00", "Z", "z"] {
        if let Some(rest) = text.strip_suffix(zero) {
            utc = rest;
            break;
        }
    }
    if utc.len() > 19 && utc.get(19..).is_some_and(|tail| tail.contains(['+', '-'])) {
        return Err(bad("only UTC offsets are accepted"));
    }
    let t = humantime::parse_rfc3339_weak(utc).map_err(|e| bad(&e.to_string()))?;
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis())
        .map_err(|_| bad("out of range"))
}

/// Parses `group-windows` (`start-end,start-end`, Unix milliseconds).
pub fn parse_windows(text: &str) -> Result<Vec<PauseWindow>, SourceError> {
    text.split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(|w| {
            let parsed = w
                .split_once('-')
                .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?)));
            match parsed {
                Some((start_ms, end_ms)) if start_ms <= end_ms => {
                    Ok(PauseWindow { start_ms, end_ms })
                }
                _ => Err(SourceError::Procedure(format!(
                    "`{w}` in group-windows is not `<start ms>-<end ms>`"
                ))),
            }
        })
        .collect()
}

/// Formats windows for `group-windows`.
pub fn format_windows(windows: &[PauseWindow]) -> String {
    windows
        .iter()
        .map(|w| format!("{}-{}", w.start_ms, w.end_ms))
        .collect::<Vec<_>>()
        .join(",")
}

/// A group backup as [`choose_backup_for_time`] sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupBackup {
    /// The backup's id.
    pub id: u64,
    /// Its paused window, if it paused anything.
    pub window: Option<PauseWindow>,
}

/// For `restore --group NAME --target-time T`: the backup whose paused window holds `t_ms`
/// (restored as is: nothing changed inside its window), or an error naming every window.
pub fn choose_backup_for_time(backups: &[GroupBackup], t_ms: u64) -> Result<u64, SourceError> {
    if let Some(backup) = backups
        .iter()
        .rev()
        .find(|b| b.window.is_some_and(|w| w.contains(t_ms)))
    {
        return Ok(backup.id);
    }
    Err(outside_windows(
        t_ms,
        &backups
            .iter()
            .filter_map(|b| b.window.map(|w| (Some(b.id), w)))
            .collect::<Vec<_>>(),
    ))
}

fn outside_windows(t_ms: u64, windows: &[(Option<u64>, PauseWindow)]) -> SourceError {
    let listed = if windows.is_empty() {
        "there is no recorded paused window (the group's backups paused no application)".into()
    } else {
        let list: Vec<String> = windows
            .iter()
            .map(|(id, w)| match id {
                Some(id) => format!("backup {id}: {w}"),
                None => w.to_string(),
            })
            .collect();
        format!("the recorded paused windows are: {}", list.join("; "))
    };
    SourceError::Procedure(format!(
        "target time {} is outside every paused window of the group, and only a moment inside \
         one is consistent across the members; {listed}",
        format_time_ms(t_ms)
    ))
}

/// Restore options each member kind takes when given without a `<member>.` prefix.
fn takes_option(kind: &str, key: &str) -> bool {
    // The options each kind's procedure accepts, minus PostgreSQL's recovery targets, which
    // the group decides (one moment for every member).
    let target = matches!(
        key,
        "target"
            | "target-time"
            | "target-lsn"
            | "target-xid"
            | "target-name"
            | "target-inclusive"
            | "target-timeline"
    );
    crate::restore_profile::takes_option(kind, key) && !(kind == "postgres" && target)
}

/// Checks the group restore's options before anything is restored: the group's own, a
/// member's own as `<member>.<option>`, or an option some member kind takes.
pub(crate) fn check_options(
    profile: &RestoreProfile,
    options: &std::collections::BTreeMap<String, String>,
) -> Result<(), SourceError> {
    let members = members_of(profile);
    // A member's own option must be one its kind takes (a member whose recorded profile does
    // not read is reported when the members are fixed up).
    let member_takes = |member: &str, option: &str| {
        member_profile(profile, member)
            .is_none_or(|p| crate::restore_profile::takes_option(&p.kind, option))
    };
    for key in options.keys() {
        if let Some((member, option)) = key.split_once('.')
            && members.contains(&member)
            && !member_takes(member, option)
        {
            return Err(SourceError::Procedure(format!(
                "restore option `{key}`: member `{member}`'s restore does not take `{option}`"
            )));
        }
        let member_prefixed = key
            .split_once('.')
            .is_some_and(|(m, _)| members.contains(&m));
        // An option some kind takes but no member of this group has (the CLI always passes
        // `restore-command`) is ignored; anything else is a mistake worth stopping for.
        let known = GROUP_OPTIONS.contains(&key.as_str())
            || member_prefixed
            || ["postgres", "sqlite", "bdb"]
                .iter()
                .any(|kind| takes_option(kind, key));
        if !known {
            return Err(SourceError::Procedure(format!(
                "restore option `{key}` is not understood by group `{}`: give one moment for \
                 every member with `target-time`, or a member's own option as \
                 `<member>.{key}` (members: {})",
                profile.params.get("group").map_or("", String::as_str),
                members.join(", ")
            )));
        }
    }
    Ok(())
}

/// The members a group's restore profile lists, in order.
fn members_of(profile: &RestoreProfile) -> Vec<&str> {
    profile
        .params
        .get("members")
        .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
        .unwrap_or_default()
}

/// A member's recorded restore profile, when it is there and reads.
fn member_profile(profile: &RestoreProfile, member: &str) -> Option<RestoreProfile> {
    let json = profile.params.get(&format!("member.{member}"))?;
    serde_json::from_str(json).ok()
}

/// The lock file of a database running on a member's files (see
/// [`crate::restore_profile::running_server`]), each member checked by its own kind.
pub(crate) fn lock_file(
    profile: &RestoreProfile,
    target: &Path,
) -> Option<crate::restore_profile::Running> {
    members_of(profile).into_iter().find_map(|member| {
        let member_profile = member_profile(profile, member)?;
        crate::restored::is_safe_path(member)
            .then(|| crate::restore_profile::lock_file(&member_profile, &target.join(member)))
            .flatten()
    })
}

/// Options the group itself interprets.
const GROUP_OPTIONS: &[&str] = &["target-time", "group-windows"];

/// Applies each member's restore profile to `<target>/<member>`.
///
/// Options: `target-time` (see the module docs), `group-windows`, `<member>.<option>` for one
/// member, and unprefixed options that each member kind takes (`restore-command`,
/// `archive-mode`, `tablespaces`, `target-action` for `postgres`; `integrity-check` for
/// `sqlite`; `db-tools` for `bdb`). Per-member recovery targets (`target-lsn`…) are refused:
/// the members must reach one moment together.
pub(crate) fn restore_fixup(
    profile: &RestoreProfile,
    target: &Path,
    params: &RestoreParams,
) -> Result<Vec<String>, SourceError> {
    let members = members_of(profile);
    if members.is_empty() {
        return Err(SourceError::Procedure(
            "the group restore profile lists no members; restore with `--raw`".into(),
        ));
    }
    check_options(profile, &params.options)?;
    let options = &params.options;
    let own = PauseWindow::from_meta(&profile.params);
    let target_time = options
        .get("target-time")
        .map(|t| parse_time_ms(t))
        .transpose()?;
    let later = options
        .get("group-windows")
        .map(|w| parse_windows(w))
        .transpose()?
        .unwrap_or_default();
    // Whether each postgres member is sent to a later moment through the archive.
    let mut pitr_to: Option<u64> = None;
    let mut steps = Vec::new();
    if let Some(t) = target_time {
        let in_own = own.is_some_and(|w| w.contains(t));
        if in_own {
            steps.push(format!(
                "target time {} lies inside this backup's paused window: every member is \
                 restored to its snapshot point in that window",
                format_time_ms(t)
            ));
        } else {
            let mut windows: Vec<(Option<u64>, PauseWindow)> = Vec::new();
            windows.extend(own.map(|w| (None, w)));
            windows.extend(
                later
                    .iter()
                    .filter(|w| own.is_none_or(|own| w.start_ms >= own.end_ms))
                    .map(|w| (None, *w)),
            );
            if !windows.iter().any(|(_, w)| w.contains(t)) {
                return Err(outside_windows(t, &windows));
            }
            let no_pitr: Vec<String> = members
                .iter()
                .filter_map(|m| {
                    let kind = profile.params.get(&format!("kind.{m}"))?;
                    (kind != "postgres").then(|| format!("`{m}` ({kind})"))
                })
                .collect();
            if !no_pitr.is_empty() {
                return Err(SourceError::Procedure(format!(
                    "target time {} lies in a later paused window, but member(s) {} have no \
                     point-in-time recovery and can only be restored to this backup's own \
                     window{}; restore the group backup whose window holds that time",
                    format_time_ms(t),
                    no_pitr.join(", "),
                    own.map(|w| format!(" ({w})")).unwrap_or_default()
                )));
            }
            if !options.contains_key("restore-command") {
                return Err(SourceError::Procedure(format!(
                    "target time {} lies after this backup: PostgreSQL must replay archived WAL \
                     to reach it, so give `restore-command` (the CLI does)",
                    format_time_ms(t)
                )));
            }
            pitr_to = Some(t);
        }
    }
    // Each member's fix-up runs in `<target>/<member>`: a name from the profile that is not a
    // plain relative path, or a member directory that is a link, would run it on a directory
    // outside the restore (a live database's, say). All are checked before any fix-up runs.
    for member in &members {
        if !crate::restored::is_safe_path(member) {
            return Err(SourceError::Procedure(format!(
                "the group restore profile names member `{member}`, which is not a relative \
                 path inside the restore; the profile is damaged, restore with `--raw`"
            )));
        }
        crate::restored::lookup(target, member, crate::restored::Need::Dir)
            .map_err(|e| member_error(member, e))?;
    }
    for member in &members {
        let json = profile
            .params
            .get(&format!("member.{member}"))
            .ok_or_else(|| {
                SourceError::Procedure(format!(
                    "the group restore profile has no profile for member `{member}`"
                ))
            })?;
        let member_profile: RestoreProfile = serde_json::from_str(json).map_err(|e| {
            SourceError::Procedure(format!(
                "the recorded restore profile of member `{member}` is damaged ({e}); restore \
                 with `--raw`"
            ))
        })?;
        let kind = member_profile.kind.clone();
        let (mut member_options, own_target) = member_options(options, member, &kind);
        if kind == "postgres" && !own_target {
            match pitr_to {
                Some(t) => {
                    member_options.insert("target-time".into(), format_time_ms(t));
                }
                // The end of the backup (pg_backup_stop) lies inside the window; recovery must
                // stop there even when an archive holds later WAL.
                None => {
                    member_options.insert("target".into(), "immediate".into());
                }
            }
        } else if kind == "postgres" && own_target {
            steps.push(format!(
                "member `{member}`: its own recovery target was given; it may not agree with \
                 the other members"
            ));
        }
        let member_target = target.join(member);
        let member_params = RestoreParams {
            raw: false,
            options: member_options,
        };
        let done = crate::restore_profile::apply(&member_profile, &member_target, &member_params)
            .map_err(|e| member_error(member, e))?;
        steps.extend(done.into_iter().map(|s| format!("{member}: {s}")));
        // PostgreSQL's procedure gives its data directory to the cluster's owner itself.
        if kind != "postgres" && nix::unistd::geteuid().is_root() {
            steps.extend(give_to_files_owner(member, &member_target)?);
        }
    }
    Ok(steps)
}

/// The options of one member's procedure: those its kind takes, and the member's own
/// (`<member>.<option>`), which win; and whether a recovery target was among its own.
fn member_options(
    options: &BTreeMap<String, String>,
    member: &str,
    kind: &str,
) -> (BTreeMap<String, String>, bool) {
    let prefix = format!("{member}.");
    let mut chosen: BTreeMap<String, String> = options
        .iter()
        .filter(|(k, _)| takes_option(kind, k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut own_target = false;
    for (key, value) in options {
        if let Some(key) = key.strip_prefix(&prefix) {
            own_target |= key.starts_with("target");
            chosen.insert(key.to_owned(), value.clone());
        }
    }
    (chosen, own_target)
}

/// Readies each member's directory for a delta restore (see
/// [`crate::restore_profile::prepare_delta`]). A member whose name or profile is unusable, or
/// whose directory is not a real one, is passed over: the fix-up refuses it afterwards.
pub(crate) fn prepare_delta(
    profile: &RestoreProfile,
    target: &Path,
    params: &RestoreParams,
) -> Result<Vec<String>, SourceError> {
    let mut steps = Vec::new();
    for member in members_of(profile) {
        let member_target = target.join(member);
        let usable = crate::restored::is_safe_path(member)
            && std::fs::symlink_metadata(&member_target).is_ok_and(|m| m.is_dir());
        let (true, Some(member_profile)) = (usable, member_profile(profile, member)) else {
            continue;
        };
        let (options, _) = member_options(&params.options, member, &member_profile.kind);
        let member_params = RestoreParams {
            raw: false,
            options,
        };
        let done =
            crate::restore_profile::prepare_delta(&member_profile, &member_target, &member_params)
                .map_err(|e| member_error(member, e))?;
        steps.extend(done.into_iter().map(|s| format!("{member}: {s}")));
    }
    Ok(steps)
}

/// Run as root, a restore gives every file its recorded owner, but a member's directory is
/// the group's own (the backup wrote it, so after a root restore it is root's, mode 0700), and
/// the application could not reach its files through it. It goes to the owner of the entries
/// directly in it, when they all have the same one (and not root).
fn give_to_files_owner(member: &str, dir: &Path) -> Result<Vec<String>, SourceError> {
    use std::os::unix::fs::MetadataExt as _;
    let mut owners = std::collections::BTreeSet::new();
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        // A member that stored nothing (restored in part, say) has no directory to give.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SourceError::io("listing", dir, e)),
    };
    for item in listing {
        let item = item.map_err(|e| SourceError::io("listing", dir, e))?;
        let md = item
            .metadata()
            .map_err(|e| SourceError::io("reading", item.path(), e))?;
        owners.insert((md.uid(), md.gid()));
    }
    let mut owners = owners.into_iter();
    let (Some((uid, gid)), None) = (owners.next(), owners.next()) else {
        return Ok(Vec::new());
    };
    if uid == 0 {
        return Ok(Vec::new());
    }
    // `dir` was checked to be a directory inside the target, reached through no symlink.
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
        .map_err(|e| SourceError::io("giving to the owner of its files", dir, e))?;
    Ok(vec![format!(
        "{member}: its directory given to uid {uid}, gid {gid}, the owner of its files"
    )])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use crate::testing::copy_session;

    /// A member that logs when its snapshot point and phases happen.
    struct Fake {
        kind: &'static str,
        log: Log,
        name: &'static str,
    }

    struct FakeSession {
        kind: &'static str,
        log: Log,
        name: &'static str,
        step: usize,
    }

    /// Events, each marked `paused` while the application's marker file exists.
    #[derive(Clone, Default)]
    struct Log {
        events: Arc<Mutex<Vec<String>>>,
        marker: Option<std::path::PathBuf>,
    }

    impl Log {
        fn with_marker(marker: &Path) -> Self {
            Self {
                events: Arc::default(),
                marker: Some(marker.to_path_buf()),
            }
        }
        fn push(&self, event: String) {
            let paused = self.marker.as_ref().is_some_and(|m| m.exists());
            lock(&self.events).push(if paused {
                format!("{event} (paused)")
            } else {
                event
            });
        }
        fn events(&self) -> Vec<String> {
            lock(&self.events).clone()
        }
    }

    impl Source for Fake {
        fn kind(&self) -> &str {
            self.kind
        }
        fn identity(&self) -> String {
            self.name.into()
        }
        fn begin(&mut self, ctx: &SessionContext) -> Result<Box<dyn Session + '_>, SourceError> {
            let parent = ctx
                .parent_meta
                .as_ref()
                .and_then(|m| m.get("seen"))
                .cloned()
                .unwrap_or_default();
            self.log.push(format!("{} begin {parent}", self.name));
            Ok(Box::new(FakeSession {
                kind: self.kind,
                log: self.log.clone(),
                name: self.name,
                step: 0,
            }))
        }
    }

    impl Session for FakeSession {
        fn next_phase(&mut self) -> Result<Option<Phase>, SourceError> {
            self.step += 1;
            if self.step > 2 {
                return Ok(None);
            }
            self.log.push(format!("{} phase{}", self.name, self.step));
            Ok(Some(Phase::new(
                format!("p{}", self.step),
                vec![Entry::bytes(
                    format!("f{}", self.step),
                    b"x".to_vec(),
                    0o600,
                    0,
                )],
            )))
        }
        fn finish(self: Box<Self>) -> Result<SessionOutcome, SourceError> {
            Ok(SessionOutcome {
                restore_profile: RestoreProfile::new(if self.kind == "postgres" {
                    "none"
                } else {
                    self.kind
                }),
                source_meta: BTreeMap::from([("seen".to_owned(), "yes".to_owned())]),
                ..SessionOutcome::default()
            })
        }
    }

    fn fake(kind: &'static str, name: &'static str, log: &Log) -> GroupMember {
        GroupMember::new(
            name,
            Box::new(Fake {
                kind,
                log: log.clone(),
                name,
            }),
        )
        .unwrap()
    }

    fn shell_quote(path: &Path) -> String {
        format!("'{}'", path.display())
    }

    #[test]
    fn snapshot_points_lie_inside_the_window_and_data_outside_it() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("paused");
        let log = Log::with_marker(&marker);
        let hold = HoldConfig {
            pause_command: Some(format!("touch {}", shell_quote(&marker))),
            resume_command: Some(format!("rm {}", shell_quote(&marker))),
            ..HoldConfig::default()
        };
        // The pause state is observed through the marker file whenever a member logs.
        let mut group = GroupSource::new("shop")
            .unwrap()
            .with_member(fake("postgres", "pg", &log))
            .unwrap()
            .with_member(fake("sqlite", "lite", &log))
            .unwrap()
            .with_member(fake("dir", "files", &log))
            .unwrap()
            .with_app(GroupApp::command("app", hold));
        let out = dir.path().join("out");
        let session = group.begin(&SessionContext::default()).unwrap();
        let copied = copy_session(session, &out).unwrap();
        let phases: Vec<&str> = copied.phases.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            phases,
            [
                "members",
                "pg: p1",
                "files: p1",
                "files: p2",
                "pg: p2",
                "lite: p1",
                "lite: p2"
            ]
        );
        assert!(!marker.exists(), "the application was not resumed");
        assert_eq!(
            log.events(),
            [
                "pg begin ",
                "pg phase1",
                "pg phase2 (paused)",
                "lite begin  (paused)",
                "files begin  (paused)",
                "files phase1 (paused)",
                "files phase2 (paused)",
                "lite phase1",
                "lite phase2"
            ]
        );
        assert!(out.join("pg/f1").is_file() && out.join("lite/f2").is_file());
        let outcome = copied.outcome;
        let (start, end) = outcome.pause_window.unwrap();
        assert!(start <= end);
        assert_eq!(outcome.restore_profile.kind, "group");
        assert_eq!(outcome.source_meta.get("pg/seen").unwrap(), "yes");
        assert_eq!(outcome.source_meta.get("members").unwrap(), "pg,lite,files");
        assert!(outcome.source_meta.contains_key("pause.ms"));
    }

    #[test]
    fn the_pause_happens_before_the_snapshot_points_and_resume_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events");
        let log = Log::default();
        let hold = HoldConfig {
            pause_command: Some(format!("echo pause >> {}", shell_quote(&events))),
            resume_command: Some(format!("echo resume >> {}", shell_quote(&events))),
            ..HoldConfig::default()
        };
        let mut group = GroupSource::new("g")
            .unwrap()
            .with_member(fake("sqlite", "lite", &log))
            .unwrap()
            .with_app(GroupApp::command("app", hold));
        let mut session = group.begin(&SessionContext::default()).unwrap();
        assert!(!events.exists(), "paused before any phase was asked for");
        session.next_phase().unwrap(); // members
        let first = session.next_phase().unwrap().unwrap();
        assert_eq!(first.name, "lite: p1");
        // Snapshot taken and resumed before the first data phase is stored.
        assert_eq!(std::fs::read_to_string(&events).unwrap(), "pause\nresume\n");
        assert_eq!(log.events().first().unwrap(), "lite begin ");
        while session.next_phase().unwrap().is_some() {}
        session.finish().unwrap();
    }

    #[test]
    fn a_failed_pause_resumes_and_begins_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events");
        let log = Log::default();
        let ok = HoldConfig {
            pause_command: Some(format!("echo pause-a >> {}", shell_quote(&events))),
            resume_command: Some(format!("echo resume-a >> {}", shell_quote(&events))),
            ..HoldConfig::default()
        };
        let failing = HoldConfig {
            pause_command: Some("exit 3".into()),
            ..HoldConfig::default()
        };
        let mut group = GroupSource::new("g")
            .unwrap()
            .with_member(fake("sqlite", "lite", &log))
            .unwrap()
            .with_app(GroupApp::command("a", ok))
            .with_app(GroupApp::command("b", failing));
        let mut session = group.begin(&SessionContext::default()).unwrap();
        session.next_phase().unwrap();
        let err = session.next_phase().unwrap_err().to_string();
        assert!(err.contains("application `b`"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&events).unwrap(),
            "pause-a\nresume-a\n"
        );
        assert!(
            log.events().is_empty(),
            "a member began: {:?}",
            log.events()
        );
    }

    #[test]
    fn cancelling_inside_the_window_resumes_the_applications() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("paused");
        let log = Log::with_marker(&marker);
        let hold = HoldConfig {
            pause_command: Some(format!("touch {}", shell_quote(&marker))),
            resume_command: Some(format!("rm {}", shell_quote(&marker))),
            ..HoldConfig::default()
        };
        let mut group = GroupSource::new("g")
            .unwrap()
            .with_member(fake("dir", "files", &log))
            .unwrap()
            .with_app(GroupApp::command("app", hold));
        let ctx = SessionContext::default();
        let mut session = group.begin(&ctx).unwrap();
        session.next_phase().unwrap();
        // The whole-session member's first phase: the engine would be storing it now.
        session.next_phase().unwrap().unwrap();
        assert!(marker.exists());
        ctx.cancel.cancel();
        let start = Instant::now();
        while marker.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "not resumed after cancellation"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(matches!(
            session.next_phase().unwrap_err(),
            SourceError::Cancelled
        ));
    }

    #[test]
    fn parent_meta_is_split_per_member() {
        let log = Log::default();
        let mut group = GroupSource::new("g")
            .unwrap()
            .with_member(fake("sqlite", "lite", &log))
            .unwrap();
        let ctx = SessionContext {
            parent_meta: Some(BTreeMap::from([("lite/seen".into(), "before".into())])),
            ..SessionContext::default()
        };
        let mut session = group.begin(&ctx).unwrap();
        while session.next_phase().unwrap().is_some() {}
        let outcome = session.finish().unwrap();
        assert_eq!(log.events().first().unwrap(), "lite begin before");
        assert!(outcome.pause_window.is_none());
        assert!(
            outcome
                .warnings
                .iter()
                .any(|w| w.contains("no applications"))
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(GroupSource::new("a/b").is_err());
        let log = Log::default();
        let group = GroupSource::new("g")
            .unwrap()
            .with_member(fake("sqlite", "x", &log))
            .unwrap();
        assert!(group.with_member(fake("dir", "x", &log)).is_err());
    }

    #[test]
    fn times_parse_and_format() {
        let t = parse_time_ms("2026-11-21T21:13:11.5Z").unwrap();
        assert_eq!(t, parse_time_ms("2026-11-21 21:13:11.500+00").unwrap());
        assert_eq!(t, parse_time_ms("@1795295591.5").unwrap());
        assert_eq!(format_time_ms(t), "2026-11-21T21:13:11.500Z");
        assert!(parse_time_ms("2026-11-21 21:13:11+02").is_err());
        assert!(parse_time_ms("yesterday").is_err());
        let windows = parse_windows("10-20, 30-40").unwrap();
        assert_eq!(format_windows(&windows), "10-20,30-40");
        assert!(parse_windows("20-10").is_err());
    }

    fn group_profile(kinds: &[(&str, &str)], window: (u64, u64)) -> RestoreProfile {
        let mut profile = RestoreProfile::new("group")
            .with_param("group", "g")
            .with_param(
                "members",
                kinds.iter().map(|(m, _)| *m).collect::<Vec<_>>().join(","),
            )
            .with_param("pause.start", window.0.to_string())
            .with_param("pause.end", window.1.to_string());
        for (member, kind) in kinds {
            profile = profile
                .with_param(format!("kind.{member}"), *kind)
                .with_param(
                    format!("member.{member}"),
                    serde_json::to_string(&RestoreProfile::none()).unwrap(),
                );
        }
        profile
    }

    fn params(options: &[(&str, &str)]) -> RestoreParams {
        RestoreParams {
            raw: false,
            options: options
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn target_times_outside_the_windows_are_refused_with_the_windows_named() {
        let dir = tempfile::tempdir().unwrap();
        let profile = group_profile(&[("pg", "postgres"), ("lite", "sqlite")], (1000, 2000));
        let inside = format!("@{}", 1.5);
        let steps =
            restore_fixup(&profile, dir.path(), &params(&[("target-time", &inside)])).unwrap();
        assert!(
            steps[0].contains("inside this backup's paused window"),
            "{steps:?}"
        );

        let err = restore_fixup(&profile, dir.path(), &params(&[("target-time", "@2.5")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("outside every paused window"), "{err}");
        assert!(
            err.contains("1970-01-01T00:00:01.000Z .. 1970-01-01T00:00:02.000Z"),
            "{err}"
        );

        // A later window is reachable only by point-in-time recovery, which SQLite lacks.
        let err = restore_fixup(
            &profile,
            dir.path(),
            &params(&[
                ("target-time", "@3.5"),
                ("group-windows", "3000-4000"),
                ("restore-command", "false"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`lite` (sqlite)"), "{err}");

        // Options of kinds the group lacks are ignored, unknown ones refused.
        let only_files = group_profile(&[("files", "dir")], (1000, 2000));
        restore_fixup(
            &only_files,
            dir.path(),
            &params(&[("restore-command", "x")]),
        )
        .unwrap();
        let err = restore_fixup(&profile, dir.path(), &params(&[("target-lsn", "0/1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not understood"), "{err}");
    }

    /// Before a delta restore, a PostgreSQL member's tablespace that the earlier restore placed
    /// outside (and linked) comes back into its `pg_tblspc`, where the delta compares it; a
    /// member whose link points elsewhere keeps it.
    #[cfg(feature = "postgres")]
    #[test]
    fn a_delta_restore_brings_a_members_tablespace_back_into_its_data_directory() {
        let outer = tempfile::tempdir().unwrap();
        let target = outer.path().join("target");
        let placed = outer.path().join("ts-db");
        let elsewhere = outer.path().join("ts-other");
        for dir in [&placed, &elsewhere] {
            std::fs::create_dir_all(dir.join("PG_15_202209061")).unwrap();
            std::fs::write(dir.join("PG_15_202209061/16384"), b"relation").unwrap();
        }
        for member in ["db", "other"] {
            std::fs::create_dir_all(target.join(member).join("pg_tblspc")).unwrap();
        }
        std::os::unix::fs::symlink(&placed, target.join("db/pg_tblspc/16406")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, target.join("other/pg_tblspc/16406")).unwrap();
        let pg_member = |location: &Path| {
            serde_json::json!({
                "kind": "postgres",
                "params": {"tablespace.16406": location.display().to_string()}
            })
            .to_string()
        };
        let profile = RestoreProfile::new("group")
            .with_param("members", "db,other")
            .with_param("member.db", pg_member(&placed))
            .with_param("member.other", pg_member(&outer.path().join("ts-recorded")));
        let steps = prepare_delta(&profile, &target, &params(&[])).unwrap();
        assert_eq!(steps.len(), 1, "{steps:?}");
        assert!(
            steps[0].starts_with("db: tablespace 16406 brought back"),
            "{steps:?}"
        );
        let back = target.join("db/pg_tblspc/16406");
        assert!(std::fs::symlink_metadata(&back).unwrap().is_dir());
        assert_eq!(
            std::fs::read(back.join("PG_15_202209061/16384")).unwrap(),
            b"relation"
        );
        assert!(!placed.exists());
        let kept = target.join("other/pg_tblspc/16406");
        assert!(
            std::fs::symlink_metadata(&kept)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(elsewhere.join("PG_15_202209061/16384").exists());
    }

    /// Member names come from the profile: one that is absolute, climbs out with `..`, or is a
    /// symlink in the restored tree must not get a fix-up run on a directory outside the
    /// restore (here a live SQLite database whose `-wal` the fix-up would delete).
    #[test]
    fn restore_fixup_refuses_members_outside_the_target() {
        let outer = tempfile::tempdir().unwrap();
        let live = outer.path().join("live-app");
        std::fs::create_dir(&live).unwrap();
        std::fs::write(live.join("app.db"), b"").unwrap();
        std::fs::write(live.join("app.db-wal"), b"committed, not yet checkpointed").unwrap();
        let target = outer.path().join("target");
        std::fs::create_dir(&target).unwrap();
        std::os::unix::fs::symlink(&live, target.join("linked")).unwrap();
        let sqlite_member = serde_json::json!({
            "kind": "sqlite",
            "params": {"file": "app.db", "page_count": "0", "page_size": "4096"}
        })
        .to_string();
        let names = [
            live.display().to_string(),
            "../live-app".to_owned(),
            "linked".to_owned(),
            "x/../../live-app".to_owned(),
        ];
        for name in names {
            let profile = RestoreProfile::new("group")
                .with_param("members", &name)
                .with_param(format!("member.{name}"), &sqlite_member);
            let err = restore_fixup(&profile, &target, &params(&[])).unwrap_err();
            assert!(matches!(err, SourceError::Procedure(_)), "{name}: {err}");
            assert!(
                live.join("app.db-wal").exists(),
                "{name}: the live WAL was removed"
            );
        }
    }

    /// Run as root, a member's directory (root's, from the restore) goes to the owner of its
    /// files when they agree, and stays root's when they do not.
    #[test]
    fn a_root_restore_gives_each_members_directory_to_its_files_owner() {
        use std::os::unix::fs::MetadataExt as _;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: not root; member directory ownership untested");
            return;
        }
        let target = tempfile::tempdir().unwrap();
        let plain = serde_json::to_string(&RestoreProfile::new("dir")).unwrap();
        for (member, owners) in [("app", [4242, 4242]), ("mixed", [4242, 4343])] {
            let dir = target.path().join(member);
            std::fs::create_dir(&dir).unwrap();
            for (i, uid) in owners.into_iter().enumerate() {
                let file = dir.join(format!("f{i}"));
                std::fs::write(&file, b"x").unwrap();
                std::os::unix::fs::lchown(&file, Some(uid), Some(uid)).unwrap();
            }
        }
        let profile = RestoreProfile::new("group")
            .with_param("members", "app,mixed")
            .with_param("member.app", &plain)
            .with_param("member.mixed", &plain);
        let steps = restore_fixup(&profile, target.path(), &params(&[])).unwrap();
        let owner = |m: &str| std::fs::metadata(target.path().join(m)).unwrap().uid();
        assert_eq!(owner("app"), 4242, "{steps:?}");
        assert_eq!(owner("mixed"), 0, "{steps:?}");
        assert!(
            steps
                .iter()
                .any(|s| s.contains("app: its directory given to uid 4242"))
        );
    }

    #[test]
    fn choosing_the_backup_for_a_time() {
        let backups = [
            GroupBackup {
                id: 1,
                window: Some(PauseWindow {
                    start_ms: 10,
                    end_ms: 20,
                }),
            },
            GroupBackup {
                id: 2,
                window: None,
            },
            GroupBackup {
                id: 3,
                window: Some(PauseWindow {
                    start_ms: 30,
                    end_ms: 40,
                }),
            },
        ];
        assert_eq!(choose_backup_for_time(&backups, 35).unwrap(), 3);
        assert_eq!(choose_backup_for_time(&backups, 10).unwrap(), 1);
        let err = choose_backup_for_time(&backups, 25)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("backup 1:") && err.contains("backup 3:"),
            "{err}"
        );
    }
}
