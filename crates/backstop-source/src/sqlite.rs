//! SQLite: a consistent snapshot of a live database while other connections keep writing.
//!
//! Two methods, both recorded in `source_meta` as `sqlite.method`:
//!
//! - **`dbpage`** (preferred): one read transaction on a private connection (`BEGIN`, then a read
//!   that takes the snapshot), and the page images of that snapshot read through the
//!   `sqlite_dbpage` virtual table while the engine stores them. No temporary copy. The stored
//!   file is the database as of the snapshot: `page_count` pages from the snapshot, whatever the
//!   file on disk has grown to meanwhile. In WAL mode a reader never blocks writers, but it
//!   keeps checkpoints from passing its snapshot: the `-wal` file grows by whatever the writers
//!   commit during the backup, and the first automatic checkpoint after it copies all of that
//!   back, inside some writer's commit (`bench/sqlite_compare.sh`, 91 MB database, ~15 000
//!   transfers/s: one commit stalled 0.8 s after a 4 s backup). A faster backup, a smaller stall.
//! - **`backup-api`** (fallback): SQLite's online backup API copies the database into a
//!   temporary file in one step, and the engine stores that file. In rollback-journal mode any
//!   reader holds a SHARED lock that stops writers from committing, so `dbpage` would block them
//!   for the whole time the engine spends storing the file; the backup API blocks them only for a
//!   local copy. It is also used when the linked SQLite lacks `sqlite_dbpage` (built without
//!   `SQLITE_ENABLE_DBPAGE_VTAB`) and for in-memory databases.
//!
//! [`SqliteMethod::Auto`] picks `dbpage` in WAL mode and `backup-api` otherwise. Either way the
//! file is stored with [`ChangeModel::Pages`], so an incremental backup stores about the pages
//! that changed. The restore procedure (kind `sqlite`) removes stale `-wal`, `-shm` and
//! `-journal` files beside the restored database and checks it with `PRAGMA integrity_check`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

/// The rusqlite this source is built against; pass connections of this version to
/// [`SqliteSource::from_connection`].
pub use rusqlite;

use rusqlite::{Connection, OpenFlags};

use crate::{
    ChangeModel, Content, Entry, EntryKind, Phase, RestoreParams, RestoreProfile, Session,
    SessionContext, SessionOutcome, Source, SourceError,
};

/// Reads one page image of the snapshot; `sqlite_dbpage` only plans `pgno = ?` efficiently.
const DBPAGE_SQL: &str = "SELECT data FROM sqlite_dbpage WHERE pgno = ?1";

/// How much a page reader fetches per lock of the connection.
const READ_BATCH_BYTES: usize = 256 * 1024;

/// How the snapshot is taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SqliteMethod {
    /// `dbpage` in WAL mode when `sqlite_dbpage` is available, `backup-api` otherwise.
    #[default]
    Auto,
    /// Always read pages inside one read transaction. In rollback-journal mode this blocks
    /// writers' commits for the whole backup; fails if `sqlite_dbpage` is missing.
    DbPage,
    /// Always copy through the online backup API into a temporary file first.
    BackupApi,
}

impl std::fmt::Display for SqliteMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::DbPage => "dbpage",
            Self::BackupApi => "backup-api",
        })
    }
}

impl std::str::FromStr for SqliteMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "dbpage" => Ok(Self::DbPage),
            "backup-api" | "backup" => Ok(Self::BackupApi),
            other => Err(format!(
                "`{other}` is not a SQLite backup method; use `auto`, `dbpage` or `backup-api`"
            )),
        }
    }
}

#[derive(Clone, Debug)]
enum Origin {
    Path(PathBuf),
    Connection(Arc<Mutex<Connection>>),
}

/// A live SQLite database: a file other processes keep writing, or a connection the caller holds.
///
/// ```no_run
/// use std::sync::{Arc, Mutex};
/// use backstop_source::sqlite::{rusqlite::Connection, SqliteSource};
///
/// // A database file, by path:
/// let mut by_path = SqliteSource::new("/var/lib/app/app.db");
///
/// // The database behind a connection the application already holds:
/// let conn = Arc::new(Mutex::new(Connection::open("/var/lib/app/app.db")?));
/// let mut by_connection = SqliteSource::from_connection(conn.clone());
/// // `engine.create_backup(&mut by_connection, &options)` then takes the snapshot.
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct SqliteSource {
    origin: Origin,
    method: SqliteMethod,
    busy_timeout: Duration,
    temp_dir: Option<PathBuf>,
    file_name: Option<String>,
}

impl SqliteSource {
    /// A source for the database file at `db_path`. The backup opens its own connection.
    pub fn new(db_path: impl Into<PathBuf>) -> Self {
        Self::with_origin(Origin::Path(db_path.into()))
    }

    /// A source for the database behind a connection the caller already holds.
    ///
    /// For a database file the connection is locked only for a moment, to learn the file's
    /// path; the snapshot is then read through a private connection to the same file, so the
    /// application keeps using its connection (even inside its own transactions) during the
    /// backup, and the backup holds only committed data. For an in-memory or temporary database,
    /// which no other connection can open, the online backup API copies it from this connection
    /// into a temporary file while the mutex is held.
    pub fn from_connection(conn: Arc<Mutex<Connection>>) -> Self {
        Self::with_origin(Origin::Connection(conn))
    }

    fn with_origin(origin: Origin) -> Self {
        Self {
            origin,
            method: SqliteMethod::Auto,
            busy_timeout: Duration::from_secs(30),
            temp_dir: None,
            file_name: None,
        }
    }

    /// Chooses how the snapshot is taken (default [`SqliteMethod::Auto`]).
    #[must_use]
    pub fn with_method(mut self, method: SqliteMethod) -> Self {
        self.method = method;
        self
    }

    /// How long to wait for a writer's lock before giving up (default 30 s).
    #[must_use]
    pub fn with_busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Where the `backup-api` method writes its temporary copy (default: the system's temporary
    /// directory). It needs room for the whole database.
    #[must_use]
    pub fn with_temp_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.temp_dir = Some(dir.into());
        self
    }

    /// The file name inside the backup (default: the database file's name; `memory.db` for an
    /// in-memory database).
    #[must_use]
    pub fn with_file_name(mut self, name: impl Into<String>) -> Self {
        self.file_name = Some(name.into());
        self
    }

    fn file_name_for(&self, path: Option<&Path>) -> Result<String, SourceError> {
        let name = match (&self.file_name, path) {
            (Some(name), _) => name.clone(),
            (None, Some(path)) => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| {
                    SourceError::Procedure(format!(
                        "`{}` does not name a database file",
                        path.display()
                    ))
                })?,
            (None, None) => "memory.db".to_owned(),
        };
        check_file_name(&name)?;
        Ok(name)
    }
}

/// The name of the database inside the backup must be one plain path segment, because the
/// restore procedure looks for `-wal`, `-shm` and `-journal` files beside it.
fn check_file_name(name: &str) -> Result<(), SourceError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(SourceError::Procedure(format!(
            "`{name}` is not a plain file name for the SQLite database inside the backup"
        )));
    }
    Ok(())
}

impl Source for SqliteSource {
    fn kind(&self) -> &str {
        "sqlite"
    }

    fn identity(&self) -> String {
        let path = match &self.origin {
            Origin::Path(path) => path.clone(),
            Origin::Connection(conn) => {
                match lock(conn).ok().as_deref().and_then(Connection::path) {
                    Some(path) if !path.is_empty() => PathBuf::from(path),
                    _ => return format!("memory:{}", self.file_name.as_deref().unwrap_or("")),
                }
            }
        };
        std::fs::canonicalize(&path)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }

    fn begin(&mut self, ctx: &SessionContext) -> Result<Box<dyn Session + '_>, SourceError> {
        if ctx.cancel.is_cancelled() {
            return Err(SourceError::Cancelled);
        }
        let path = match &self.origin {
            Origin::Path(path) => path.clone(),
            Origin::Connection(shared) => {
                let conn = lock(shared)?;
                match conn.path() {
                    Some(path) if !path.is_empty() => PathBuf::from(path),
                    _ => {
                        // No other connection can open an in-memory database: copy it from the
                        // caller's connection while we hold its mutex.
                        let name = self.file_name_for(None)?;
                        let mut session = backup_api_snapshot(
                            &conn,
                            &name,
                            None,
                            self.temp_dir.as_deref(),
                            ctx,
                            self.busy_timeout,
                        )?;
                        drop(conn);
                        session.warn_page_size_change(ctx);
                        return Ok(Box::new(session));
                    }
                }
            }
        };
        let name = self.file_name_for(Some(&path))?;
        let conn = open_private(&path)?;
        // Asked of an in-memory database of the same SQLite library: preparing against the file
        // would wait for a lock to read its schema.
        let has_dbpage = Connection::open_in_memory().is_ok_and(|m| m.prepare(DBPAGE_SQL).is_ok());
        if self.method == SqliteMethod::DbPage && !has_dbpage {
            return Err(SourceError::Procedure(format!(
                "SQLite {} was built without the sqlite_dbpage table, so `dbpage` cannot back up \
                 `{}`; use the `backup-api` or `auto` method, or build with \
                 LIBSQLITE3_FLAGS=-DSQLITE_ENABLE_DBPAGE_VTAB",
                rusqlite::version(),
                path.display()
            )));
        }
        // A lock-free look at the header saves an Auto backup of a rollback-journal database a
        // second wait for its lock; the read transaction checks the mode again.
        let rollback_journal = peek_is_wal(&path) == Some(false);
        let try_dbpage = match self.method {
            SqliteMethod::DbPage => true,
            SqliteMethod::Auto => has_dbpage && !rollback_journal,
            SqliteMethod::BackupApi => false,
        };
        if try_dbpage {
            let allow_rollback = self.method == SqliteMethod::DbPage;
            match DbPageSession::begin(conn, &path, &name, allow_rollback, self.busy_timeout, ctx)?
            {
                Ok(session) => return Ok(Box::new(session)),
                Err(conn) => {
                    let mut session = backup_api_snapshot(
                        &conn,
                        &name,
                        Some(&path),
                        self.temp_dir.as_deref(),
                        ctx,
                        self.busy_timeout,
                    )?;
                    session.warn_page_size_change(ctx);
                    return Ok(Box::new(session));
                }
            }
        }
        let mut session = backup_api_snapshot(
            &conn,
            &name,
            Some(&path),
            self.temp_dir.as_deref(),
            ctx,
            self.busy_timeout,
        )?;
        session.warn_page_size_change(ctx);
        Ok(Box::new(session))
    }
}

fn lock(conn: &Mutex<Connection>) -> Result<MutexGuard<'_, Connection>, SourceError> {
    conn.lock().map_err(|_| {
        SourceError::Procedure(
            "the SQLite connection's mutex is poisoned (a thread panicked while using it); \
             open a new connection"
                .into(),
        )
    })
}

/// Opens the private connection a backup reads through: read-write so SQLite can use the WAL
/// index and roll back a hot journal as any reader must, but `query_only`, and never creating a
/// database that is not there.
fn open_private(path: &Path) -> Result<Connection, SourceError> {
    let md = std::fs::metadata(path)
        .map_err(|e| SourceError::io("opening the SQLite database", path, e))?;
    if !md.is_file() {
        return Err(SourceError::Procedure(format!(
            "`{}` is not a file; a SQLite source backs up one database file",
            path.display()
        )));
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| {
        SourceError::database(format!("opening SQLite database `{}`", path.display()), e)
    })?;
    // No busy handler: `retry_busy` retries lock waits itself, every millisecond, because
    // SQLite's own handler backs off to 100 ms sleeps and a reader of a rollback-journal
    // database under a busy writer then rarely finds the moment between two commits.
    conn.busy_timeout(Duration::ZERO)
        .and_then(|()| conn.execute_batch("PRAGMA query_only = ON"))
        .map_err(|e| {
            SourceError::database(
                format!("configuring the connection to `{}`", path.display()),
                e,
            )
        })?;
    Ok(conn)
}

fn db_err(path: Option<&Path>, what: &str) -> impl FnOnce(rusqlite::Error) -> SourceError {
    let context = match path {
        Some(path) => format!("{what} of SQLite database `{}`", path.display()),
        None => format!("{what} of the in-memory SQLite database"),
    };
    move |e| SourceError::database(context, e)
}

/// Runs `op` until it stops failing with `SQLITE_BUSY`/`SQLITE_LOCKED`, sleeping a millisecond
/// between tries, for at most `busy_timeout`; stops early when the backup is cancelled.
fn retry_busy<T>(
    busy_timeout: Duration,
    ctx: &SessionContext,
    path: Option<&Path>,
    what: &str,
    mut op: impl FnMut() -> rusqlite::Result<T>,
) -> Result<T, SourceError> {
    let deadline = Instant::now() + busy_timeout;
    loop {
        match op() {
            Ok(value) => return Ok(value),
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                ) =>
            {
                if ctx.cancel.is_cancelled() {
                    return Err(SourceError::Cancelled);
                }
                if Instant::now() >= deadline {
                    let which = path.map_or_else(
                        || "the in-memory SQLite database".to_owned(),
                        |p| format!("SQLite database `{}`", p.display()),
                    );
                    return Err(SourceError::Procedure(format!(
                        "{which} stayed locked by writers for {busy_timeout:?} while {what}; try \
                         again, raise the busy timeout, or switch the database to WAL mode, \
                         where readers never wait for writers"
                    )));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(db_err(path, what)(e)),
        }
    }
}

/// Whether the file's header says WAL mode (bytes 18 and 19 are 2), without taking a lock;
/// `None` when the file is empty or not a SQLite database (yet).
fn peek_is_wal(path: &Path) -> Option<bool> {
    let mut header = [0u8; 100];
    std::fs::File::open(path)
        .ok()?
        .read_exact(&mut header)
        .ok()?;
    if !header.starts_with(b"SQLite format 3\0") {
        return None;
    }
    Some(header.get(18..20) == Some(&[2, 2]))
}

fn pragma_string(
    conn: &Connection,
    pragma: &str,
    path: Option<&Path>,
) -> Result<String, SourceError> {
    conn.query_row(&format!("PRAGMA {pragma}"), [], |row| {
        row.get::<_, String>(0)
    })
    .map_err(db_err(path, &format!("reading PRAGMA {pragma}")))
}

fn pragma_u64(conn: &Connection, pragma: &str, path: Option<&Path>) -> Result<u64, SourceError> {
    conn.query_row(&format!("PRAGMA {pragma}"), [], |row| row.get::<_, i64>(0))
        .map_err(db_err(path, &format!("reading PRAGMA {pragma}")))
        .and_then(|v| {
            u64::try_from(v).map_err(|_| {
                SourceError::Procedure(format!("PRAGMA {pragma} returned a negative value {v}"))
            })
        })
}

/// Facts about a snapshot, shared by both methods.
struct SnapshotFacts {
    file_name: String,
    page_size: u32,
    page_count: u64,
    journal_mode: String,
    schema_version: u64,
    method: &'static str,
    source_path: Option<PathBuf>,
    taken_at: SystemTime,
}

impl SnapshotFacts {
    fn read(
        conn: &Connection,
        file_name: &str,
        path: Option<&Path>,
        method: &'static str,
    ) -> Result<Self, SourceError> {
        let page_size = pragma_u64(conn, "page_size", path)?;
        let page_size = u32::try_from(page_size)
            .ok()
            .filter(|s| s.is_power_of_two() && (512..=65536).contains(s))
            .ok_or_else(|| {
                SourceError::Procedure(format!(
                    "SQLite reports an impossible page size {page_size}"
                ))
            })?;
        Ok(Self {
            file_name: file_name.to_owned(),
            page_size,
            page_count: pragma_u64(conn, "page_count", path)?,
            journal_mode: pragma_string(conn, "journal_mode", path)?.to_ascii_lowercase(),
            schema_version: pragma_u64(conn, "schema_version", path)?,
            method,
            source_path: path.map(Path::to_path_buf),
            taken_at: SystemTime::now(),
        })
    }

    fn size(&self) -> u64 {
        self.page_count.saturating_mul(u64::from(self.page_size))
    }

    fn entry(&self, content: Content) -> Entry {
        use std::os::unix::fs::MetadataExt;
        let md = self
            .source_path
            .as_deref()
            .and_then(|p| std::fs::metadata(p).ok());
        let now_ns = self
            .taken_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Entry {
            path: self.file_name.clone(),
            kind: EntryKind::File,
            mode: md.as_ref().map_or(0o644, |m| m.mode() & 0o7777),
            // The snapshot's time: the file's own mtime may be later than the snapshot.
            mtime_ns: now_ns,
            uid: md.as_ref().map_or(0, MetadataExt::uid),
            gid: md.as_ref().map_or(0, MetadataExt::gid),
            size: self.size(),
            change: ChangeModel::Pages {
                page_size: self.page_size,
            },
            content,
            // The stored bytes are the snapshot, not the file on disk: never skip by identity.
            fs_identity: None,
        }
    }

    fn restore_profile(&self) -> RestoreProfile {
        RestoreProfile::new("sqlite")
            .with_param("file", self.file_name.clone())
            .with_param("page_size", self.page_size.to_string())
            .with_param("page_count", self.page_count.to_string())
            .with_param("journal_mode", self.journal_mode.clone())
    }

    fn source_meta(&self, hold: Duration, blocks_writers: bool) -> BTreeMap<String, String> {
        let mut meta = BTreeMap::new();
        meta.insert("sqlite.method".into(), self.method.into());
        meta.insert("sqlite.file".into(), self.file_name.clone());
        meta.insert("sqlite.page_size".into(), self.page_size.to_string());
        meta.insert("sqlite.page_count".into(), self.page_count.to_string());
        meta.insert("sqlite.journal_mode".into(), self.journal_mode.clone());
        meta.insert(
            "sqlite.schema_version".into(),
            self.schema_version.to_string(),
        );
        meta.insert("sqlite.sqlite_version".into(), rusqlite::version().into());
        meta.insert("sqlite.hold_ms".into(), hold.as_millis().to_string());
        meta.insert(
            "sqlite.hold_blocks_writers".into(),
            blocks_writers.to_string(),
        );
        meta
    }
}

fn page_size_warning(ctx: &SessionContext, facts: &SnapshotFacts) -> Option<String> {
    let parent = ctx.parent_meta.as_ref()?.get("sqlite.page_size")?;
    (parent != &facts.page_size.to_string()).then(|| {
        format!(
            "the SQLite page size changed from {parent} to {} since the previous backup; this \
             backup stores the whole database again",
            facts.page_size
        )
    })
}

/// The private connection of a `dbpage` session and whether its read transaction is open.
struct SnapshotConn {
    conn: Connection,
    in_txn: bool,
}

impl SnapshotConn {
    fn end(&mut self) -> Result<(), rusqlite::Error> {
        if !self.in_txn {
            return Ok(());
        }
        self.in_txn = false;
        self.conn.execute_batch("ROLLBACK")
    }
}

/// A `dbpage` session: one read transaction held from `begin` to `finish` (or drop).
struct DbPageSession {
    shared: Arc<Mutex<SnapshotConn>>,
    facts: SnapshotFacts,
    change_counter: u32,
    data_version: u64,
    phase: Option<Phase>,
    held_since: Instant,
    blocks_writers: bool,
    warnings: Vec<String>,
}

impl DbPageSession {
    /// Opens the read transaction and takes the snapshot. Gives the connection back (with no
    /// transaction open) when the database is not in WAL mode and `allow_rollback` is false.
    fn begin(
        conn: Connection,
        path: &Path,
        file_name: &str,
        allow_rollback: bool,
        busy_timeout: Duration,
        ctx: &SessionContext,
    ) -> Result<Result<Self, Connection>, SourceError> {
        conn.execute_batch("BEGIN DEFERRED")
            .map_err(db_err(Some(path), "beginning a read"))?;
        let mut shared = SnapshotConn { conn, in_txn: true };
        // A deferred transaction takes its snapshot at its first read.
        let snapshot = retry_busy(
            busy_timeout,
            ctx,
            Some(path),
            "taking a read snapshot",
            || {
                shared
                    .conn
                    .query_row("SELECT count(*) FROM sqlite_schema", [], |row| {
                        row.get::<_, i64>(0)
                    })
            },
        );
        let held_since = Instant::now();
        if let Err(e) = snapshot {
            let _ = shared.end();
            return Err(e);
        }
        let facts = match SnapshotFacts::read(&shared.conn, file_name, Some(path), "dbpage") {
            Ok(facts) => facts,
            Err(e) => {
                let _ = shared.end();
                return Err(e);
            }
        };
        // Inside a read transaction of a WAL database nobody can leave WAL mode, so this answer
        // holds for the whole session.
        let blocks_writers = facts.journal_mode != "wal";
        if blocks_writers && !allow_rollback {
            tracing::debug!(
                path = %path.display(),
                journal_mode = %facts.journal_mode,
                "rollback-journal database: a read transaction would block writers, using the \
                 online backup API"
            );
            shared
                .end()
                .map_err(db_err(Some(path), "ending the read transaction"))?;
            return Ok(Err(shared.conn));
        }
        let header = read_header(&shared.conn, facts.page_count, path);
        let data_version = pragma_u64(&shared.conn, "data_version", Some(path));
        let (change_counter, data_version) = match (header, data_version) {
            (Ok(h), Ok(d)) => (h, d),
            (Err(e), _) | (_, Err(e)) => {
                let _ = shared.end();
                return Err(e);
            }
        };
        let mut warnings = Vec::new();
        warnings.extend(page_size_warning(ctx, &facts));
        if blocks_writers {
            warnings.push(format!(
                "`{}` is in `{}` journal mode: the `dbpage` method held a SHARED lock that kept \
                 writers from committing for the whole backup",
                path.display(),
                facts.journal_mode
            ));
        }
        tracing::debug!(
            path = %path.display(),
            page_size = facts.page_size,
            page_count = facts.page_count,
            journal_mode = %facts.journal_mode,
            "sqlite snapshot taken through sqlite_dbpage"
        );
        let entry = facts.entry(Content::Session(0));
        Ok(Ok(Self {
            shared: Arc::new(Mutex::new(shared)),
            facts,
            change_counter,
            data_version,
            phase: Some(Phase::new("database", vec![entry])),
            held_since,
            blocks_writers,
            warnings,
        }))
    }
}

/// The file change counter (header offset 24) of the snapshot's page 1: together with the page
/// count it identifies a rollback-journal snapshot (WAL databases may not bump it per commit).
fn read_header(conn: &Connection, page_count: u64, path: &Path) -> Result<u32, SourceError> {
    if page_count == 0 {
        return Ok(0);
    }
    let page: Vec<u8> = conn
        .query_row(DBPAGE_SQL, [1], |row| row.get(0))
        .map_err(db_err(Some(path), "reading page 1"))?;
    page.get(24..28)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| {
            SourceError::Procedure(format!(
                "page 1 of `{}` is {} bytes, too short for a SQLite header",
                path.display(),
                page.len()
            ))
        })
}

impl Session for DbPageSession {
    fn next_phase(&mut self) -> Result<Option<Phase>, SourceError> {
        Ok(self.phase.take())
    }

    fn open(&self, handle: u64) -> Result<Box<dyn Read + Send>, SourceError> {
        if handle != 0 {
            return Err(SourceError::Procedure(format!(
                "the SQLite session has no content handle {handle}"
            )));
        }
        let page_size = usize::try_from(self.facts.page_size).unwrap_or(4096);
        Ok(Box::new(PageReader {
            shared: self.shared.clone(),
            next_pgno: 1,
            page_count: self.facts.page_count,
            page_size,
            batch_pages: (READ_BATCH_BYTES / page_size).max(1) as u64,
            buf: Vec::new(),
            pos: 0,
            file_name: self.facts.file_name.clone(),
        }))
    }

    fn finish(self: Box<Self>) -> Result<SessionOutcome, SourceError> {
        {
            let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            shared.end().map_err(db_err(
                self.facts.source_path.as_deref(),
                "ending the read transaction",
            ))?;
        }
        let hold = self.held_since.elapsed();
        let mut meta = self.facts.source_meta(hold, self.blocks_writers);
        meta.insert(
            "sqlite.change_counter".into(),
            self.change_counter.to_string(),
        );
        // Connection-local: tells whether two reads on this connection saw the same data.
        meta.insert("sqlite.data_version".into(), self.data_version.to_string());
        Ok(SessionOutcome {
            restore_profile: self.facts.restore_profile().with_param("method", "dbpage"),
            source_meta: meta,
            pause_window: None,
            warnings: self.warnings.clone(),
        })
    }
}

impl Drop for DbPageSession {
    fn drop(&mut self) {
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = shared.end() {
            tracing::warn!(error = %e, "could not end the SQLite read transaction");
        }
    }
}

/// Streams the snapshot's pages in order, `batch_pages` per lock of the connection.
struct PageReader {
    shared: Arc<Mutex<SnapshotConn>>,
    next_pgno: u64,
    page_count: u64,
    page_size: usize,
    batch_pages: u64,
    buf: Vec<u8>,
    pos: usize,
    file_name: String,
}

impl PageReader {
    fn fill(&mut self) -> std::io::Result<()> {
        self.buf.clear();
        self.pos = 0;
        let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if !shared.in_txn {
            return Err(std::io::Error::other(format!(
                "the read transaction of SQLite database `{}` has ended (the session finished \
                 or was dropped), so its pages can no longer be read consistently",
                self.file_name
            )));
        }
        let mut stmt = shared
            .conn
            .prepare_cached(DBPAGE_SQL)
            .map_err(std::io::Error::other)?;
        let last = self
            .page_count
            .min(self.next_pgno.saturating_add(self.batch_pages - 1));
        for pgno in self.next_pgno..=last {
            // The page is copied from SQLite's row straight into the batch.
            let buf = &mut self.buf;
            let len = stmt
                .query_row([pgno], |row| {
                    let page = row.get_ref(0)?.as_blob()?;
                    buf.extend_from_slice(page);
                    Ok(page.len())
                })
                .map_err(|e| {
                    std::io::Error::other(format!(
                        "reading page {pgno} of {} of SQLite database `{}`: {e}",
                        self.page_count, self.file_name
                    ))
                })?;
            if len != self.page_size {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "page {pgno} of SQLite database `{}` is {len} bytes, expected {}",
                        self.file_name, self.page_size
                    ),
                ));
            }
        }
        self.next_pgno = last + 1;
        Ok(())
    }
}

impl Read for PageReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.buf.len() {
            if self.next_pgno > self.page_count {
                return Ok(0);
            }
            self.fill()?;
        }
        let available = self.buf.get(self.pos..).unwrap_or_default();
        let n = available.len().min(out.len());
        if let (Some(dst), Some(src)) = (out.get_mut(..n), available.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.pos += n;
        Ok(n)
    }
}

/// A `backup-api` session: the snapshot is a temporary file, removed when the session ends.
struct BackupApiSession {
    facts: SnapshotFacts,
    phase: Option<Phase>,
    hold: Duration,
    blocks_writers: bool,
    warnings: Vec<String>,
    // Dropped with the session: the temporary copy goes with it.
    _temp: tempfile::TempDir,
}

impl BackupApiSession {
    fn warn_page_size_change(&mut self, ctx: &SessionContext) {
        self.warnings.extend(page_size_warning(ctx, &self.facts));
    }
}

/// Copies the database behind `src` into a temporary file with the online backup API, in one
/// step: a step is one read transaction, so the copy is a snapshot; smaller steps would restart
/// from the beginning every time another connection writes.
fn backup_api_snapshot(
    src: &Connection,
    file_name: &str,
    path: Option<&Path>,
    temp_dir: Option<&Path>,
    ctx: &SessionContext,
    busy_timeout: Duration,
) -> Result<BackupApiSession, SourceError> {
    let temp_parent = temp_dir.map_or_else(std::env::temp_dir, Path::to_path_buf);
    let temp = tempfile::Builder::new()
        .prefix("backstop-sqlite-")
        .tempdir_in(&temp_parent)
        .map_err(|e| SourceError::io("creating a temporary directory in", &temp_parent, e))?;
    let copy_path = temp.path().join(file_name);
    let mut dest = Connection::open(&copy_path).map_err(|e| {
        SourceError::database(
            format!("creating the temporary copy `{}`", copy_path.display()),
            e,
        )
    })?;
    // The copy only has to live until the engine has stored it.
    dest.execute_batch("PRAGMA synchronous = OFF")
        .map_err(|e| {
            SourceError::database(
                format!("configuring the temporary copy `{}`", copy_path.display()),
                e,
            )
        })?;
    let journal_mode = retry_busy(
        busy_timeout,
        ctx,
        path,
        "reading PRAGMA journal_mode",
        || src.query_row("PRAGMA journal_mode", [], |row| row.get::<_, String>(0)),
    )?
    .to_ascii_lowercase();
    let started = Instant::now();
    let mut hold = Duration::ZERO;
    {
        let backup = rusqlite::backup::Backup::new(src, &mut dest)
            .map_err(db_err(path, "starting the online backup"))?;
        retry_busy(
            busy_timeout,
            ctx,
            path,
            "copying with the online backup API",
            || {
                let step_started = Instant::now();
                // `step` reports a lock it cannot get as a result, not as an error; turn it into
                // one so `retry_busy` waits and tries again.
                let code = match backup.step(-1)? {
                    rusqlite::backup::StepResult::Done => {
                        // Only the step that succeeded held the lock; failed ones held nothing.
                        hold = step_started.elapsed();
                        return Ok(());
                    }
                    rusqlite::backup::StepResult::Busy => rusqlite::ffi::SQLITE_BUSY,
                    // `Locked`, or `More`, which a step of all pages (-1) does not return.
                    _ => rusqlite::ffi::SQLITE_LOCKED,
                };
                Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(code),
                    None,
                ))
            },
        )?;
    }
    tracing::debug!(elapsed = ?started.elapsed(), "sqlite snapshot copied with the online backup API");
    let mut facts = SnapshotFacts::read(&dest, file_name, path, "backup-api")?;
    // The copy's own journal mode is the temporary file's; the source's is what restore needs.
    facts.journal_mode = journal_mode;
    facts.source_path = path.map(Path::to_path_buf);
    dest.close().map_err(|(_, e)| {
        SourceError::database(
            format!("closing the temporary copy `{}`", copy_path.display()),
            e,
        )
    })?;
    let copy_len = std::fs::metadata(&copy_path)
        .map_err(|e| SourceError::io("reading metadata of", &copy_path, e))?
        .len();
    if copy_len != facts.size() {
        return Err(SourceError::Procedure(format!(
            "the temporary copy `{}` is {copy_len} bytes, expected {} pages of {} bytes",
            copy_path.display(),
            facts.page_count,
            facts.page_size
        )));
    }
    let blocks_writers = facts.journal_mode != "wal";
    let entry = facts.entry(Content::File(copy_path));
    Ok(BackupApiSession {
        facts,
        phase: Some(Phase::new("database", vec![entry])),
        hold,
        blocks_writers,
        warnings: Vec::new(),
        _temp: temp,
    })
}

impl Session for BackupApiSession {
    fn next_phase(&mut self) -> Result<Option<Phase>, SourceError> {
        Ok(self.phase.take())
    }

    fn finish(self: Box<Self>) -> Result<SessionOutcome, SourceError> {
        Ok(SessionOutcome {
            restore_profile: self
                .facts
                .restore_profile()
                .with_param("method", "backup-api"),
            source_meta: self.facts.source_meta(self.hold, self.blocks_writers),
            pause_window: None,
            warnings: self.warnings.clone(),
        })
    }
}

/// How thoroughly the restore procedure checks the database (fix-up option `integrity-check`).
fn integrity_pragma(params: &RestoreParams) -> Result<Option<&'static str>, SourceError> {
    match params.options.get("integrity-check").map(String::as_str) {
        None | Some("full") => Ok(Some("integrity_check")),
        Some("quick") => Ok(Some("quick_check")),
        Some("off") => Ok(None),
        Some(other) => Err(SourceError::Procedure(format!(
            "`integrity-check={other}` is not understood; use `full`, `quick` or `off`"
        ))),
    }
}

/// Applies the sqlite restore fix-ups to `target`: removes stale `-wal`, `-shm` and `-journal`
/// files beside the restored database (they belong to some other state of the database, and
/// SQLite would replay them), checks the file's size, and runs `PRAGMA integrity_check`.
pub(crate) fn restore_fixup(
    profile: &RestoreProfile,
    target: &Path,
    params: &RestoreParams,
) -> Result<Vec<String>, SourceError> {
    let file_name = profile.params.get("file").ok_or_else(|| {
        SourceError::Procedure(
            "the backup's sqlite restore profile names no database file; restore with `--raw` \
             and check the database by hand"
                .into(),
        )
    })?;
    check_file_name(file_name)?;
    let mut steps = Vec::new();
    let removed = remove_side_files(target, file_name)?;
    if !removed.is_empty() {
        steps.push(format!("removed stale {}", removed.join(", ")));
    }
    // The database is opened read-write below: never through a link the backup brought.
    let (db_path, md) = crate::restored::lookup(target, file_name, crate::restored::Need::File)?;
    let md = md.ok_or_else(|| {
        SourceError::io(
            "opening the restored SQLite database",
            &db_path,
            std::io::ErrorKind::NotFound.into(),
        )
    })?;
    let expected = profile
        .params
        .get("page_count")
        .zip(profile.params.get("page_size"))
        .and_then(|(count, size)| Some(count.parse::<u64>().ok()? * size.parse::<u64>().ok()?));
    if let Some(expected) = expected {
        if md.len() != expected {
            return Err(SourceError::Procedure(format!(
                "the restored SQLite database `{}` is {} bytes, but the backup recorded {} \
                 (page_count × page_size); the restore is incomplete",
                db_path.display(),
                md.len(),
                expected
            )));
        }
    }
    if let Some(pragma) = integrity_pragma(params)? {
        check_integrity(&db_path, pragma)?;
        // Opening a WAL database creates `-wal` and `-shm`; a clean close removes them, but
        // leave nothing behind whatever the SQLite build does.
        remove_side_files(target, file_name)?;
        steps.push(format!("PRAGMA {pragma} of `{file_name}`: ok"));
    }
    Ok(steps)
}

/// Removes `-wal`, `-shm` and `-journal` beside `target/file_name`; returns the names removed.
fn remove_side_files(target: &Path, file_name: &str) -> Result<Vec<String>, SourceError> {
    let mut removed = Vec::new();
    for suffix in ["-wal", "-shm", "-journal"] {
        let side = format!("{file_name}{suffix}");
        if crate::restored::remove_file(target, &side)? {
            removed.push(side);
        }
    }
    Ok(removed)
}

fn check_integrity(db_path: &Path, pragma: &str) -> Result<(), SourceError> {
    let conn = Connection::open_with_flags(
        db_path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .map_err(|e| {
        SourceError::database(
            format!("opening the restored database `{}`", db_path.display()),
            e,
        )
    })?;
    let checked = (|| -> rusqlite::Result<Vec<String>> {
        let mut stmt = conn.prepare(&format!("PRAGMA {pragma}"))?;
        let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
        rows.take(20).collect()
    })();
    let problems = match checked {
        Ok(problems) => problems,
        // Damage bad enough that the check itself cannot run is a failed check too.
        Err(e)
            if matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
            ) =>
        {
            vec![e.to_string()]
        }
        Err(e) => {
            return Err(SourceError::database(
                format!(
                    "running PRAGMA {pragma} on the restored database `{}`",
                    db_path.display()
                ),
                e,
            ));
        }
    };
    conn.close().map_err(|(_, e)| {
        SourceError::database(
            format!("closing the restored database `{}`", db_path.display()),
            e,
        )
    })?;
    if problems.len() == 1 && problems.first().is_some_and(|p| p == "ok") {
        return Ok(());
    }
    Err(SourceError::Procedure(format!(
        "the restored SQLite database `{}` fails PRAGMA {pragma}: {}; the backup is damaged or \
         was not taken from a consistent snapshot; restore an earlier backup, or restore with \
         `--raw` to inspect the file",
        db_path.display(),
        problems.join("; ")
    )))
}

/// The bank workload of the tests, the benchmark and `backstop demo`: accounts whose balances
/// always sum to `accounts × INITIAL_BALANCE`, and a `transfers` log whose `seq` grows by one
/// per committed transfer, written in the same transaction. A restored copy that breaks the sum
/// or lacks a transfer committed before the backup started is not a consistent snapshot.
/// `crates/backstop/tests/support/sqlite_writer.py` runs the same transaction from another
/// process.
pub mod bank {
    use super::{Connection, SourceError};

    /// Every account's balance when the bank is created.
    pub const INITIAL_BALANCE: i64 = 1000;

    /// The state of a bank database.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct BankState {
        /// Number of accounts.
        pub accounts: i64,
        /// Sum of all balances; always `accounts × INITIAL_BALANCE`.
        pub total: i64,
        /// The last committed transfer's sequence number (0 before the first).
        pub max_seq: i64,
    }

    impl BankState {
        /// Whether the balances sum to what they started with.
        pub fn invariant_holds(&self) -> bool {
            self.total == self.accounts * INITIAL_BALANCE
        }
    }

    fn err(what: &'static str) -> impl FnOnce(rusqlite::Error) -> SourceError {
        move |e| SourceError::database(format!("{what} of the bank database"), e)
    }

    /// Creates the schema and `accounts` accounts, each with a `pad_bytes` blob (to give the
    /// database a realistic number of pages), in one transaction.
    pub fn create(
        conn: &mut Connection,
        accounts: u32,
        pad_bytes: usize,
    ) -> Result<(), SourceError> {
        let tx = conn.transaction().map_err(err("creating the schema"))?;
        tx.execute_batch(
            "CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL, \
                                   pad BLOB NOT NULL);
             CREATE TABLE transfers(seq INTEGER PRIMARY KEY, from_id INTEGER NOT NULL, \
                                    to_id INTEGER NOT NULL, amount INTEGER NOT NULL);",
        )
        .map_err(err("creating the schema"))?;
        {
            let mut insert = tx
                .prepare("INSERT INTO accounts(id, balance, pad) VALUES (?1, ?2, randomblob(?3))")
                .map_err(err("creating accounts"))?;
            for id in 1..=accounts {
                insert
                    .execute(rusqlite::params![id, INITIAL_BALANCE, pad_bytes as i64])
                    .map_err(err("creating accounts"))?;
            }
        }
        tx.commit().map_err(err("creating accounts"))
    }

    /// Moves `amount` from account `from` to account `to` and logs it, in one immediate
    /// transaction; returns the transfer's sequence number.
    pub fn transfer(
        conn: &mut Connection,
        from: u32,
        to: u32,
        amount: i64,
    ) -> Result<i64, SourceError> {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err("beginning a transfer"))?;
        tx.execute(
            "UPDATE accounts SET balance = balance - ?1 WHERE id = ?2",
            (amount, from),
        )
        .map_err(err("debiting an account"))?;
        tx.execute(
            "UPDATE accounts SET balance = balance + ?1 WHERE id = ?2",
            (amount, to),
        )
        .map_err(err("crediting an account"))?;
        tx.execute(
            "INSERT INTO transfers(from_id, to_id, amount) VALUES (?1, ?2, ?3)",
            (from, to, amount),
        )
        .map_err(err("logging a transfer"))?;
        let seq = tx.last_insert_rowid();
        tx.commit().map_err(err("committing a transfer"))?;
        Ok(seq)
    }

    /// Reads the accounts, their total and the last sequence number in one read transaction.
    pub fn state(conn: &mut Connection) -> Result<BankState, SourceError> {
        let tx = conn.transaction().map_err(err("reading the state"))?;
        let (accounts, total) = tx
            .query_row(
                "SELECT count(*), coalesce(sum(balance), 0) FROM accounts",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(err("summing the balances"))?;
        let max_seq = tx
            .query_row("SELECT coalesce(max(seq), 0) FROM transfers", [], |r| {
                r.get(0)
            })
            .map_err(err("reading the last sequence number"))?;
        tx.commit().map_err(err("reading the state"))?;
        Ok(BankState {
            accounts,
            total,
            max_seq,
        })
    }
}

#[cfg(test)]
mod tests {
    //! The procedure against real databases under a writer process, without the engine:
    //! `copy_session` stores the session's bytes the way the engine would.

    use super::bank::{self, BankState};
    use super::*;
    use crate::testing::copy_session;
    use crate::testing::sqlite_bank::{self, BankWriter as Writer, WriterStats, state, wait_past};

    fn create_bank(path: &Path, journal_mode: &str) {
        sqlite_bank::create_bank(path, journal_mode, 2000, 200);
    }

    /// Opens a copied database and checks it the way a restore must.
    fn check_copy(path: &Path, committed_before: i64) -> BankState {
        let conn = Connection::open(path).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok", "{}", path.display());
        drop(conn);
        let got = state(path);
        assert!(got.invariant_holds(), "torn snapshot: {got:?}");
        assert_eq!(got.accounts, 2000);
        assert!(
            got.max_seq >= committed_before,
            "copy misses transfers: has {} but {committed_before} was committed before",
            got.max_seq
        );
        got
    }

    /// Backs `db` up `rounds` times into fresh directories while the writer runs; returns the
    /// sessions' source_meta and the writer's statistics.
    fn hot_copies(
        journal_mode: &str,
        method: SqliteMethod,
        rounds: usize,
    ) -> Option<(Vec<BTreeMap<String, String>>, WriterStats)> {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("bank.db");
        create_bank(&db, journal_mode);
        let writer = Writer::start(&db)?;
        let mut metas = Vec::new();
        let mut seq = 0;
        for round in 0..rounds {
            seq = wait_past(&db, seq);
            let committed_before = state(&db).max_seq;
            let mut source = SqliteSource::new(&db).with_method(method);
            let session = source.begin(&SessionContext::default()).unwrap();
            let target = dir.path().join(format!("copy{round}"));
            let copied = copy_session(session, &target).unwrap();
            assert_eq!(
                copied.phases,
                vec![("database".to_string(), vec!["bank.db".to_string()])]
            );
            assert_eq!(copied.outcome.restore_profile.kind, "sqlite");
            let meta = copied.outcome.source_meta;
            let page_size: u64 = meta["sqlite.page_size"].parse().unwrap();
            let page_count: u64 = meta["sqlite.page_count"].parse().unwrap();
            assert_eq!(copied.bytes, page_size * page_count);
            let got = check_copy(&target.join("bank.db"), committed_before);
            assert!(got.max_seq > 0);
            metas.push(meta);
        }
        let stats = writer.stop();
        assert!(stats.transactions > 0);
        // The writer kept the invariant on the live database too.
        assert!(state(&db).invariant_holds());
        Some((metas, stats))
    }

    #[test]
    fn bundled_sqlite_has_dbpage() {
        let conn = Connection::open_in_memory().unwrap();
        conn.prepare(DBPAGE_SQL).expect(
            "sqlite_dbpage missing: build with LIBSQLITE3_FLAGS=-DSQLITE_ENABLE_DBPAGE_VTAB \
             (.cargo/config.toml sets it)",
        );
    }

    #[test]
    fn wal_copies_under_writer_are_consistent_and_use_dbpage() {
        let Some((metas, stats)) = hot_copies("wal", SqliteMethod::Auto, 5) else {
            return;
        };
        for meta in &metas {
            assert_eq!(meta["sqlite.method"], "dbpage");
            assert_eq!(meta["sqlite.journal_mode"], "wal");
            assert_eq!(meta["sqlite.hold_blocks_writers"], "false");
        }
        eprintln!(
            "wal/dbpage: {} transfers, longest {:.1} ms",
            stats.transactions, stats.max_txn_ms
        );
    }

    #[test]
    fn rollback_copies_under_writer_are_consistent_and_use_backup_api() {
        let Some((metas, stats)) = hot_copies("delete", SqliteMethod::Auto, 5) else {
            return;
        };
        for meta in &metas {
            assert_eq!(meta["sqlite.method"], "backup-api");
            assert_eq!(meta["sqlite.journal_mode"], "delete");
        }
        eprintln!(
            "delete/backup-api: {} transfers, longest {:.1} ms, holds {:?} ms",
            stats.transactions,
            stats.max_txn_ms,
            metas
                .iter()
                .map(|m| m["sqlite.hold_ms"].clone())
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn rollback_copies_with_forced_dbpage_are_consistent() {
        let Some((metas, stats)) = hot_copies("delete", SqliteMethod::DbPage, 3) else {
            return;
        };
        for meta in &metas {
            assert_eq!(meta["sqlite.method"], "dbpage");
            assert_eq!(meta["sqlite.hold_blocks_writers"], "true");
        }
        eprintln!(
            "delete/dbpage: {} transfers, longest {:.1} ms, holds {:?} ms",
            stats.transactions,
            stats.max_txn_ms,
            metas
                .iter()
                .map(|m| m["sqlite.hold_ms"].clone())
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn wal_copy_with_forced_backup_api_is_consistent() {
        let Some((metas, _)) = hot_copies("wal", SqliteMethod::BackupApi, 2) else {
            return;
        };
        assert!(metas.iter().all(|m| m["sqlite.method"] == "backup-api"));
    }

    #[test]
    fn snapshot_is_fixed_at_begin() {
        // Writes committed after `begin` are not in the copy, even though they land before the
        // pages are read; the stored size is the snapshot's, not the grown file's.
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("bank.db");
        create_bank(&db, "wal");
        let mut conn = Connection::open(&db).unwrap();
        bank::transfer(&mut conn, 1, 2, 5).unwrap();
        let mut source = SqliteSource::new(&db);
        let session = source.begin(&SessionContext::default()).unwrap();
        // Grow the database well past the snapshot while the session is open.
        conn.execute_batch(
            "CREATE TABLE grow(x BLOB); INSERT INTO grow SELECT randomblob(4000) \
             FROM (WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<500) \
             SELECT i FROM c);",
        )
        .unwrap();
        bank::transfer(&mut conn, 3, 4, 7).unwrap();
        let target = dir.path().join("copy");
        let copied = copy_session(session, &target).unwrap();
        let copy = target.join("bank.db");
        let got = check_copy(&copy, 1);
        assert_eq!(got.max_seq, 1);
        let tables: i64 = Connection::open(&copy)
            .unwrap()
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'grow'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0);
        assert!(copied.bytes < 500 * 4000);
    }

    #[test]
    fn reader_refuses_after_session_ends() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("bank.db");
        create_bank(&db, "wal");
        let mut source = SqliteSource::new(&db);
        let session = source.begin(&SessionContext::default()).unwrap();
        let mut reader = session.open(0).unwrap();
        drop(session);
        let err = std::io::copy(&mut reader, &mut std::io::sink()).unwrap_err();
        assert!(err.to_string().contains("has ended"), "{err}");
        // The read transaction is gone: a checkpoint can reset the whole WAL.
        let conn = Connection::open(&db).unwrap();
        let busy: i64 = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .unwrap();
        assert_eq!(busy, 0);
    }

    #[test]
    fn dropping_a_rollback_session_releases_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("bank.db");
        create_bank(&db, "delete");
        let mut source = SqliteSource::new(&db).with_method(SqliteMethod::DbPage);
        let session = source.begin(&SessionContext::default()).unwrap();
        let mut writer = Connection::open(&db).unwrap();
        writer.busy_timeout(Duration::from_millis(50)).unwrap();
        // The SHARED lock of the read transaction keeps this writer from committing.
        assert!(bank::transfer(&mut writer, 1, 2, 3).is_err());
        drop(session);
        assert_eq!(bank::transfer(&mut writer, 1, 2, 3).unwrap(), 1);
    }

    #[test]
    fn from_connection_backs_up_file_and_memory_databases() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        create_bank(&db, "wal");
        let shared = Arc::new(Mutex::new(Connection::open(&db).unwrap()));
        // The application is inside its own (uncommitted) transaction during the backup.
        lock(&shared)
            .unwrap()
            .execute_batch("BEGIN; UPDATE accounts SET balance = 0;")
            .unwrap();
        let mut source = SqliteSource::from_connection(shared.clone());
        assert_eq!(
            source.identity(),
            std::fs::canonicalize(&db).unwrap().to_string_lossy()
        );
        let copied = copy_session(
            source.begin(&SessionContext::default()).unwrap(),
            &dir.path().join("c"),
        )
        .unwrap();
        assert_eq!(copied.outcome.source_meta["sqlite.method"], "dbpage");
        check_copy(&dir.path().join("c/app.db"), 0);
        lock(&shared).unwrap().execute_batch("ROLLBACK").unwrap();

        let mut memory = Connection::open_in_memory().unwrap();
        bank::create(&mut memory, 2000, 10).unwrap();
        bank::transfer(&mut memory, 5, 6, 9).unwrap();
        let mut source = SqliteSource::from_connection(Arc::new(Mutex::new(memory)));
        let copied = copy_session(
            source.begin(&SessionContext::default()).unwrap(),
            &dir.path().join("m"),
        )
        .unwrap();
        assert_eq!(copied.outcome.source_meta["sqlite.method"], "backup-api");
        assert_eq!(check_copy(&dir.path().join("m/memory.db"), 1).max_seq, 1);
    }

    fn copy_once(db: &Path, target: &Path) -> RestoreProfile {
        let mut source = SqliteSource::new(db);
        let session = source.begin(&SessionContext::default()).unwrap();
        copy_session(session, target)
            .unwrap()
            .outcome
            .restore_profile
    }

    #[test]
    fn restore_fixup_removes_stale_files_and_checks_integrity() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("bank.db");
        create_bank(&db, "wal");
        let target = dir.path().join("restored");
        let profile = copy_once(&db, &target);
        for side in ["bank.db-wal", "bank.db-shm", "bank.db-journal"] {
            std::fs::write(target.join(side), b"stale garbage").unwrap();
        }
        let steps = restore_fixup(&profile, &target, &RestoreParams::default()).unwrap();
        assert!(steps.iter().any(|s| s.contains("bank.db-wal")), "{steps:?}");
        assert!(
            steps
                .iter()
                .any(|s| s.contains("integrity_check") && s.ends_with("ok"))
        );
        let mut left: Vec<_> = std::fs::read_dir(&target)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["bank.db"]);
        check_copy(&target.join("bank.db"), 0);
    }

    #[test]
    fn restore_fixup_fails_on_a_damaged_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("bank.db");
        create_bank(&db, "delete");
        let target = dir.path().join("restored");
        let profile = copy_once(&db, &target);
        // Scribble over the middle of an interior page region.
        let copy = target.join("bank.db");
        let mut bytes = std::fs::read(&copy).unwrap();
        let page_size: usize = profile.params["page_size"].parse().unwrap();
        for b in bytes.iter_mut().skip(page_size * 3).take(page_size) {
            *b = 0x5a;
        }
        std::fs::write(&copy, &bytes).unwrap();
        let err = restore_fixup(&profile, &target, &RestoreParams::default()).unwrap_err();
        assert!(
            err.to_string().contains("fails PRAGMA integrity_check"),
            "{err}"
        );

        // A short file is named as an incomplete restore before SQLite even looks at it.
        std::fs::write(&copy, &bytes[..page_size]).unwrap();
        let err = restore_fixup(&profile, &target, &RestoreParams::default()).unwrap_err();
        assert!(err.to_string().contains("incomplete"), "{err}");
    }

    #[test]
    fn restore_profile_without_file_is_refused() {
        let err = restore_fixup(
            &RestoreProfile::new("sqlite"),
            Path::new("/nonexistent"),
            &RestoreParams::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("names no database file"), "{err}");
        let bad = RestoreProfile::new("sqlite").with_param("file", "../escape.db");
        assert!(restore_fixup(&bad, Path::new("/tmp"), &RestoreParams::default()).is_err());
    }

    /// The database or a side file stored as a symlink: the fix-up neither opens the file it
    /// points to read-write nor removes anything through it.
    #[test]
    fn restore_fixup_refuses_a_database_or_side_file_that_is_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live.db");
        create_bank(&live, "wal");
        let before = std::fs::read(&live).unwrap();
        let profile = RestoreProfile::new("sqlite").with_param("file", "bank.db");
        let target = dir.path().join("restored");
        std::fs::create_dir(&target).unwrap();
        std::os::unix::fs::symlink(&live, target.join("bank.db")).unwrap();
        let err = restore_fixup(&profile, &target, &RestoreParams::default()).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(std::fs::read(&live).unwrap(), before);

        std::fs::remove_file(target.join("bank.db")).unwrap();
        std::fs::copy(&live, target.join("bank.db")).unwrap();
        let outside = dir.path().join("precious-wal");
        std::fs::write(&outside, b"x").unwrap();
        std::os::unix::fs::symlink(&outside, target.join("bank.db-wal")).unwrap();
        let err = restore_fixup(&profile, &target, &RestoreParams::default()).unwrap_err();
        assert!(err.to_string().contains("bank.db-wal"), "{err}");
        assert!(outside.exists());
    }
}
