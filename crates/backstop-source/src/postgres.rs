//! PostgreSQL base backups (a `pg_backup_start` … `pg_backup_stop` session plus the WAL between
//! them) and the restore procedure that turns the copy into a server that recovers to a
//! consistent state or to a chosen point in time.
//!
//! # The procedure
//! One client session is held open from start to stop, because PostgreSQL 15 only has the
//! non-exclusive backup API, which aborts the backup when its session ends (that is also how
//! dropping the session releases everything). In that session:
//!
//! 1. A temporary physical replication slot that reserves WAL is created, so the server cannot
//!    recycle a segment the backup needs before it is stored, whatever `wal_keep_size` says.
//! 2. `pg_backup_start(label, fast)`.
//! 3. Phase `data`: every file of the data directory, skipping what `pg_basebackup` skips
//!    (see [`EXCLUDED_FILES`], [`EXCLUDED_DIR_CONTENTS`], temporary files and relations, the
//!    non-init forks of unlogged relations, the contents of `pg_wal`). Relation files are stored
//!    as pages of the cluster's block size; `global/pg_control` comes last, as in
//!    `pg_basebackup`. Tablespaces are followed and stored under `pg_tblspc/<oid>/`.
//! 4. `pg_backup_stop(wait_for_archive => false)`. On a primary it writes the backup-end record
//!    and switches WAL; if the flushed WAL position is still inside the stop segment we call
//!    `pg_switch_wal()` ourselves, so every segment of the backup is complete and immutable
//!    when it is read.
//! 5. Phase `wal`: `backup_label`, `tablespace_map` (if any) and every WAL segment from the
//!    start LSN's segment to the stop LSN's segment, read from `pg_wal`. A restore therefore
//!    needs no WAL archive to reach consistency.
//!
//! # Restore
//! The `postgres` restore profile writes `recovery.signal` and the recovery settings to
//! `postgresql.auto.conf` (`restore_command`, recovery targets and target action), removes a
//! stale `postmaster.pid`, recreates the directories whose contents were skipped, gives the data
//! directory the mode PostgreSQL demands and puts tablespaces in place. Run as root (when the
//! engine gives every file its recorded owner), it gives the data directory and what it made to
//! the owner of `PG_VERSION`, so the server can start without a `chown -R`. Restore options (all
//! optional):
//!
//! | option | effect |
//! | --- | --- |
//! | `restore-command` | `restore_command`, e.g. `backstop --repo … wal-fetch %f %p`; without it recovery replays only the WAL stored with the backup (the command is `false`) |
//! | `target-time`, `target-lsn`, `target-xid`, `target-name`, `target=immediate` | at most one recovery target |
//! | `target-action` | `promote` (default), `pause` or `shutdown` |
//! | `target-inclusive`, `target-timeline` | `recovery_target_inclusive`, `recovery_target_timeline` |
//! | `archive-mode` | `archive_mode` for the restored server (`off` keeps a copy from archiving into the original's archive) |
//! | `tablespaces` | `original` (default: each tablespace goes back to its recorded location, which must be absent or empty) or `in-place` (kept inside `pg_tblspc`) |
//! | `tablespace-<oid>` | put that tablespace at this absolute path instead |
//!
//! A tablespace location, recorded or given, must be an absolute path without `.` or `..`, not
//! `/`, neither inside the restored data directory nor containing it; tablespace ids in the
//! profile must be OIDs (digits). The recorded locations come from the backup: a restore of a
//! backup you do not trust should keep tablespaces `in-place`. Every file the fix-up reads,
//! writes or removes (`recovery.signal`, `postgresql.auto.conf`, `postmaster.pid`,
//! `tablespace_map`, `pg_tblspc/<oid>`, the directories it creates) must not be, or lie under, a
//! symlink in the restored tree; otherwise the restore stops with an error naming the path.
//!
//! Recovery always runs as archive recovery (`recovery.signal`) and so ends on a new timeline:
//! the restored server never writes WAL under names the original server uses.
//!
//! # Retention
//! [`wal_needed_from`] gives the first WAL segment the oldest kept backup needs, and
//! [`wal_archive_name_needed`] decides for each archived name whether it must stay.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use postgres::{Client, NoTls};

use crate::restored::{self, Need};
use crate::{
    ChangeModel, Content, Entry, EntryKind, Phase, RestoreParams, RestoreProfile, Session,
    SessionContext, SessionOutcome, Source, SourceError,
};

/// Files `pg_basebackup` never copies, matched by name at any depth (PostgreSQL 15,
/// `basebackup.c`, `excludeFiles`), plus leftovers of earlier restores.
pub const EXCLUDED_FILES: &[&str] = &[
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "backup_label",
    "tablespace_map",
    "backup_manifest",
    "postmaster.pid",
    "postmaster.opts",
    "backup_label.old",
    "tablespace_map.old",
];

/// Directories whose contents `pg_basebackup` skips, keeping the (empty) directory itself; the
/// server recreates or does not need what they held.
pub const EXCLUDED_DIR_CONTENTS: &[&str] = &[
    "pg_stat_tmp",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
];

/// Name prefix of temporary files and directories (`PG_TEMP_FILE_PREFIX`).
const TEMP_PREFIX: &str = "pgsql_tmp";
/// The relation cache init file (`RELCACHE_INIT_FILENAME`), rebuilt at startup.
const RELCACHE_INIT: &str = "pg_internal.init";

/// A running PostgreSQL server, reached by a libpq connection string, on this machine.
///
/// The role needs what `pg_basebackup` needs plus reading the data directory: superuser, or the
/// `REPLICATION` attribute with `EXECUTE` on `pg_backup_start`/`pg_backup_stop`, membership in
/// `pg_read_all_settings` and `pg_monitor`, and an operating-system user that can read the data
/// directory.
#[derive(Clone, Debug)]
pub struct PostgresSource {
    conninfo: String,
    data_dir: Option<PathBuf>,
    fast_checkpoint: bool,
    label: Option<String>,
    verify_checksums: bool,
}

impl PostgresSource {
    /// A source for `conninfo` (a `postgres://` URL or `key=value` pairs, as libpq takes them).
    pub fn new(conninfo: impl Into<String>) -> Self {
        Self {
            conninfo: conninfo.into(),
            data_dir: None,
            fast_checkpoint: false,
            label: None,
            verify_checksums: true,
        }
    }

    /// Whether to check every page's checksum as it is read, when the cluster has data
    /// checksums (default on). Failures are reported as warnings of the backup, naming the file
    /// and block; pages written during the backup are skipped (WAL replay rewrites them).
    #[must_use]
    pub fn with_verify_checksums(mut self, verify: bool) -> Self {
        self.verify_checksums = verify;
        self
    }

    /// Reads the data directory at `dir` instead of asking the server (`SHOW data_directory`),
    /// for a role that may not read settings or a directory mounted elsewhere. The directory
    /// must still belong to the server: its `pg_control` is checked against the server's system
    /// identifier.
    #[must_use]
    pub fn with_data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Asks `pg_backup_start` for an immediate checkpoint instead of a spread one: the backup
    /// starts at once, at the price of a burst of I/O on the server.
    #[must_use]
    pub fn with_fast_checkpoint(mut self, fast: bool) -> Self {
        self.fast_checkpoint = fast;
        self
    }

    /// The backup label recorded by the server (default `backstop <time>`).
    #[must_use]
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }
}

impl Source for PostgresSource {
    fn kind(&self) -> &str {
        "postgres"
    }

    fn identity(&self) -> String {
        redact_conninfo(&self.conninfo)
    }

    fn begin(&mut self, ctx: &SessionContext) -> Result<Box<dyn Session + '_>, SourceError> {
        let shown = redact_conninfo(&self.conninfo);
        let mut client = Client::connect(&self.conninfo, NoTls).map_err(|e| {
            SourceError::database(format!("connecting to PostgreSQL at `{shown}`"), e)
        })?;
        let facts = ServerFacts::query(&mut client)?;
        if facts.version_num < 100_000 {
            return Err(SourceError::Procedure(format!(
                "PostgreSQL {} is too old: backups need version 10 or newer (temporary \
                 replication slots, non-exclusive backups)",
                facts.version_num
            )));
        }
        if facts.in_recovery {
            return Err(SourceError::Procedure(format!(
                "`{shown}` is a standby (in recovery); back up the primary, backups taken from a \
                 standby are not supported yet"
            )));
        }
        let data_dir = match &self.data_dir {
            Some(dir) => dir.clone(),
            None => {
                let row = client
                    .query_one("SELECT current_setting('data_directory')", &[])
                    .map_err(|e| {
                        SourceError::database(
                            "reading `data_directory` (grant the role `pg_read_all_settings`, or \
                             give the data directory explicitly)",
                            e,
                        )
                    })?;
                PathBuf::from(get::<String>(&row, 0, "data_directory")?)
            }
        };
        check_system_identifier(&data_dir, facts.system_identifier)?;

        let slot = format!("backstop_{}", facts.backend_pid);
        // Reserve WAL before the backup starts: the slot's restart LSN is the redo pointer of
        // the last checkpoint, which is never after the backup's start LSN.
        client
            .execute(
                "SELECT pg_create_physical_replication_slot($1, true, true)",
                &[&slot],
            )
            .map_err(|e| {
                SourceError::database(
                    format!(
                        "creating the temporary replication slot `{slot}` that keeps the \
                         backup's WAL (needs wal_level replica or logical, a free slot in \
                         max_replication_slots, and the REPLICATION attribute)"
                    ),
                    e,
                )
            })?;

        let label = self
            .label
            .clone()
            .unwrap_or_else(|| format!("backstop {}", unix_ns(SystemTime::now()) / 1_000_000_000));
        let start_sql = if facts.version_num >= 150_000 {
            "SELECT pg_backup_start($1, $2)::text"
        } else {
            "SELECT pg_start_backup($1, $2, false)::text"
        };
        tracing::info!(
            label = %label, fast = self.fast_checkpoint, "starting the PostgreSQL base backup"
        );
        let row = client
            .query_one(start_sql, &[&label, &self.fast_checkpoint])
            .map_err(|e| SourceError::database("starting the backup (`pg_backup_start`)", e))?;
        let start_lsn = parse_lsn(&get::<String>(&row, 0, "start LSN")?)?;

        Ok(Box::new(PgSession {
            client: Mutex::new(Some(client)),
            facts,
            data_dir,
            label,
            start_lsn,
            stage: Stage::Data,
            ctx: ctx.clone(),
            tablespaces: Vec::new(),
            data_dir_mode: 0o700,
            stopped: None,
            warnings: Vec::new(),
            verify_checksums: self.verify_checksums,
            checksum_files: Vec::new(),
            checksum_failures: Arc::new(Mutex::new(Vec::new())),
        }))
    }
}

/// What the server says about itself at the start of a backup.
#[derive(Clone, Debug)]
struct ServerFacts {
    version_num: i32,
    block_size: u32,
    data_checksums: bool,
    system_identifier: u64,
    catalog_version: i32,
    wal_segment_size: u64,
    in_recovery: bool,
    backend_pid: i32,
}

impl ServerFacts {
    fn query(client: &mut Client) -> Result<Self, SourceError> {
        let row = client
            .query_one(
                "SELECT current_setting('server_version_num')::int4, \
                        current_setting('block_size')::int4, \
                        current_setting('data_checksums'), \
                        (SELECT system_identifier::text FROM pg_control_system()), \
                        (SELECT catalog_version_no FROM pg_control_system()), \
                        (SELECT bytes_per_wal_segment FROM pg_control_init()), \
                        pg_is_in_recovery(), \
                        pg_backend_pid()",
                &[],
            )
            .map_err(|e| {
                SourceError::database(
                    "reading the server's settings and control data (the role needs superuser \
                     or pg_monitor and pg_read_all_settings)",
                    e,
                )
            })?;
        let block_size = get::<i32>(&row, 1, "block_size")?;
        let sysid = get::<String>(&row, 3, "system_identifier")?;
        let seg = get::<i32>(&row, 5, "bytes_per_wal_segment")?;
        Ok(Self {
            version_num: get(&row, 0, "server_version_num")?,
            block_size: u32::try_from(block_size).map_err(|_| {
                SourceError::Procedure(format!("the server reports a block size of {block_size}"))
            })?,
            data_checksums: get::<String>(&row, 2, "data_checksums")? == "on",
            system_identifier: sysid.parse().map_err(|_| {
                SourceError::Procedure(format!("the server reports system identifier `{sysid}`"))
            })?,
            catalog_version: get(&row, 4, "catalog_version_no")?,
            wal_segment_size: u64::try_from(seg)
                .ok()
                .filter(|s| s.is_power_of_two())
                .ok_or_else(|| {
                    SourceError::Procedure(format!(
                        "the server reports WAL segments of {seg} bytes"
                    ))
                })?,
            in_recovery: get(&row, 6, "pg_is_in_recovery")?,
            backend_pid: get(&row, 7, "pg_backend_pid")?,
        })
    }

    /// `PG_<major>_<catversion>`, the directory a tablespace holds for this server version.
    fn tablespace_version_dir(&self) -> String {
        format!("PG_{}_{}", self.version_num / 10_000, self.catalog_version)
    }
}

/// An error of a query inside a running backup session. One the server did not report itself
/// is the connection breaking (the server stopped, crashed or cut the session): say so, and
/// what to do, rather than leave the driver's "broken pipe" to explain it.
fn session_error(context: &str, e: postgres::Error) -> SourceError {
    if e.as_db_error().is_some() {
        return SourceError::database(context, e);
    }
    SourceError::database(
        format!(
            "{context}: the connection to PostgreSQL broke during the backup (the server \
             stopped, restarted or ended the session); no backup is recorded, so run it again \
             once the server accepts connections"
        ),
        e,
    )
}

fn get<'a, T: postgres::types::FromSql<'a>>(
    row: &'a postgres::Row,
    index: usize,
    what: &str,
) -> Result<T, SourceError> {
    row.try_get(index)
        .map_err(|e| SourceError::database(format!("reading `{what}`"), e))
}

/// Makes sure `data_dir` is the directory of the server we are connected to: a backup of the
/// wrong directory would look fine and restore someone else's cluster.
fn check_system_identifier(data_dir: &Path, expected: u64) -> Result<(), SourceError> {
    use std::io::Read;
    let control = data_dir.join("global").join("pg_control");
    let mut head = [0u8; 8];
    std::fs::File::open(&control)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|e| {
            SourceError::io(
                "reading the control file (is the server on this machine?)",
                &control,
                e,
            )
        })?;
    // pg_control is written in the server's byte order; every platform we build for is
    // little-endian.
    let found = u64::from_le_bytes(head);
    if found != expected {
        return Err(SourceError::Procedure(format!(
            "`{}` belongs to the cluster with system identifier {found}, but the server we are \
             connected to is {expected}; give the data directory of that server",
            data_dir.display()
        )));
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Data,
    Wal,
    Done,
}

/// What `pg_backup_stop` returned, plus the WAL range derived from it.
#[derive(Clone, Debug)]
struct Stopped {
    stop_lsn: u64,
    timeline: u32,
    start_segment: String,
    stop_segment: String,
}

struct PgSession {
    /// The session that holds the backup open and the temporary slot; `None` once closed.
    /// Closing it (also by dropping) makes the server abort an unfinished backup and drop the
    /// slot, so no hold outlives the session.
    client: Mutex<Option<Client>>,
    facts: ServerFacts,
    data_dir: PathBuf,
    label: String,
    start_lsn: u64,
    stage: Stage,
    ctx: SessionContext,
    /// `(oid, location)` of each tablespace that is a symlink.
    tablespaces: Vec<(String, String)>,
    data_dir_mode: u32,
    stopped: Option<Stopped>,
    warnings: Vec<String>,
    /// Whether to check page checksums (when the cluster has them).
    verify_checksums: bool,
    /// Relation files read through the checksum verifier (see `Lister::checksum_files`).
    checksum_files: Vec<(PathBuf, u32)>,
    /// Pages whose checksum failed, reported as warnings.
    checksum_failures: Arc<Mutex<Vec<String>>>,
}

impl PgSession {
    fn with_client<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, SourceError>,
    ) -> Result<T, SourceError> {
        let mut guard = self.client.lock().map_err(|_| {
            SourceError::Procedure("the PostgreSQL session was poisoned by a panic".into())
        })?;
        let client = guard.as_mut().ok_or_else(|| {
            SourceError::Procedure("the PostgreSQL session is already closed".into())
        })?;
        f(client)
    }

    fn data_phase(&mut self) -> Result<Phase, SourceError> {
        self.data_dir_mode = std::fs::metadata(&self.data_dir)
            .map_err(|e| SourceError::io("reading metadata of", &self.data_dir, e))?
            .permissions()
            .mode()
            & 0o7777;
        let mut lister = Lister {
            block_size: self.facts.block_size,
            version_dir: self.facts.tablespace_version_dir(),
            cancel: &self.ctx,
            entries: Vec::new(),
            pg_control: None,
            tablespaces: Vec::new(),
            warnings: &mut self.warnings,
            checksum_files: (self.facts.data_checksums && self.verify_checksums).then(Vec::new),
        };
        lister.walk_data_dir(&self.data_dir)?;
        let Lister {
            entries,
            tablespaces,
            checksum_files,
            ..
        } = lister;
        self.tablespaces = tablespaces;
        self.checksum_files = checksum_files.unwrap_or_default();

        tracing::info!(files = entries.len(), "PostgreSQL data directory listed");
        Ok(Phase::new("data", entries))
    }

    /// Ends the backup and returns where it stopped, with the label and tablespace map the
    /// server handed back.
    fn stop_backup(&mut self) -> Result<(Stopped, String, String), SourceError> {
        let version = self.facts.version_num;
        let (stop_text, label_file, map_file) = self.with_client(|client| {
            let sql = if version >= 150_000 {
                "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)"
            } else {
                "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)"
            };
            let row = client
                .query_one(sql, &[])
                .map_err(|e| session_error("stopping the backup (`pg_backup_stop`)", e))?;
            Ok((
                get::<String>(&row, 0, "stop LSN")?,
                get::<String>(&row, 1, "labelfile")?,
                get::<Option<String>>(&row, 2, "spcmapfile")?.unwrap_or_default(),
            ))
        })?;
        let stop_lsn = parse_lsn(&stop_text)?;
        let seg = self.facts.wal_segment_size;
        let label = parse_backup_label(&label_file)?;
        // The segment holding the last byte of the backup-end record.
        let stop_segno = stop_lsn.saturating_sub(1) / seg;
        let start_segment = wal_segment_name(label.timeline, self.start_lsn / seg, seg);
        if label
            .start_file
            .as_ref()
            .is_some_and(|file| file != &start_segment)
        {
            return Err(SourceError::Procedure(format!(
                "the backup label names start segment `{}` but the start LSN {} gives \
                 `{start_segment}`; the label and the backup do not match",
                label.start_file.unwrap_or_default(),
                format_lsn(self.start_lsn)
            )));
        }

        // Every segment the backup needs must be complete before it is read, so that it can be
        // stored as immutable. `pg_backup_stop` switches WAL on a primary; check rather than
        // rely on it, and switch if the flushed position is still inside the stop segment.
        self.with_client(|client| {
            if flushed_lsn(client)? / seg <= stop_segno {
                client
                    .execute("SELECT pg_switch_wal()", &[])
                    .map_err(|e| session_error("switching WAL (`pg_switch_wal`)", e))?;
                let flushed = flushed_lsn(client)?;
                if flushed / seg <= stop_segno {
                    return Err(SourceError::Procedure(format!(
                        "WAL was switched but the flushed position {} is still inside the \
                         backup's last segment",
                        format_lsn(flushed)
                    )));
                }
            }
            Ok(())
        })?;

        tracing::info!(
            start = %format_lsn(self.start_lsn), stop = %format_lsn(stop_lsn),
            "PostgreSQL backup stopped"
        );
        let stopped = Stopped {
            stop_lsn,
            timeline: label.timeline,
            start_segment,
            stop_segment: wal_segment_name(label.timeline, stop_segno, seg),
        };
        Ok((stopped, label_file, map_file))
    }

    /// The backup label, the tablespace map and the WAL from start to stop.
    fn wal_phase(
        &self,
        stopped: &Stopped,
        label_file: String,
        map_file: String,
    ) -> Result<Phase, SourceError> {
        let now = unix_ns(SystemTime::now());
        // The server reads these files: they belong to whoever owns the data directory (its
        // files come back with their owners when root restores them).
        let owner = {
            use std::os::unix::fs::MetadataExt as _;
            std::fs::metadata(&self.data_dir)
                .map(|md| (md.uid(), md.gid()))
                .unwrap_or((0, 0))
        };
        let owned = |mut entry: Entry| {
            (entry.uid, entry.gid) = owner;
            entry
        };
        let mut entries = vec![owned(Entry::bytes(
            "backup_label",
            label_file.into_bytes(),
            0o600,
            now,
        ))];
        if !map_file.is_empty() {
            entries.push(owned(Entry::bytes(
                "tablespace_map",
                map_file.into_bytes(),
                0o600,
                now,
            )));
        }
        let pg_wal = self.data_dir.join("pg_wal");
        if stopped.timeline > 1 {
            // The history of the backup's timeline, so a restore can follow it without an
            // archive.
            let name = format!("{:08X}.history", stopped.timeline);
            let disk = pg_wal.join(&name);
            match Entry::from_path(
                format!("pg_wal/{name}"),
                &disk,
                ChangeModel::Immutable { identity: None },
            ) {
                Ok(Some(entry)) => entries.push(entry),
                Ok(None) => {}
                Err(SourceError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let seg = self.facts.wal_segment_size;
        let first = self.start_lsn / seg;
        let last = stopped.stop_lsn.saturating_sub(1) / seg;
        for segno in first..=last {
            let name = wal_segment_name(stopped.timeline, segno, seg);
            let disk = pg_wal.join(&name);
            let entry = Entry::from_path(
                format!("pg_wal/{name}"),
                &disk,
                ChangeModel::Immutable { identity: None },
            )
            .map_err(|e| match e {
                SourceError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                    SourceError::Procedure(format!(
                        "WAL segment `{name}` that the backup needs is missing from `{}` \
                         although a replication slot reserved it; was it removed by hand?",
                        pg_wal.display()
                    ))
                }
                other => other,
            })?;
            match entry {
                Some(entry) if entry.kind == EntryKind::File && entry.size == seg => {
                    entries.push(entry);
                }
                Some(entry) => {
                    return Err(SourceError::Procedure(format!(
                        "WAL segment `{}` is not a regular file of {seg} bytes ({:?}, {} bytes)",
                        disk.display(),
                        entry.kind,
                        entry.size
                    )));
                }
                None => {
                    return Err(SourceError::Procedure(format!(
                        "WAL segment `{}` is not a regular file",
                        disk.display()
                    )));
                }
            }
        }
        tracing::info!(segments = last - first + 1, "PostgreSQL WAL listed");
        Ok(Phase::new("wal", entries))
    }
}

fn flushed_lsn(client: &mut Client) -> Result<u64, SourceError> {
    let row = client
        .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
        .map_err(|e| session_error("reading the flushed WAL position", e))?;
    parse_lsn(&get::<String>(&row, 0, "pg_current_wal_flush_lsn")?)
}

impl Session for PgSession {
    fn open(&self, handle: u64) -> Result<Box<dyn std::io::Read + Send>, SourceError> {
        let (path, first_block) = usize::try_from(handle)
            .ok()
            .and_then(|i| self.checksum_files.get(i))
            .ok_or_else(|| {
                SourceError::Procedure(format!("no relation file with handle {handle}"))
            })?;
        let file = std::fs::File::open(path).map_err(|e| SourceError::io("opening", path, e))?;
        Ok(Box::new(ChecksumReader::new(
            file,
            path.clone(),
            self.facts.block_size as usize,
            *first_block,
            self.start_lsn,
            Arc::clone(&self.checksum_failures),
        )))
    }

    fn next_phase(&mut self) -> Result<Option<Phase>, SourceError> {
        if self.ctx.cancel.is_cancelled() {
            return Err(SourceError::Cancelled);
        }
        match self.stage {
            Stage::Data => {
                let phase = self.data_phase()?;
                self.stage = Stage::Wal;
                Ok(Some(phase))
            }
            Stage::Wal => {
                let (stopped, label_file, map_file) = self.stop_backup()?;
                let phase = self.wal_phase(&stopped, label_file, map_file)?;
                self.stopped = Some(stopped);
                self.stage = Stage::Done;
                Ok(Some(phase))
            }
            Stage::Done => Ok(None),
        }
    }

    fn finish(self: Box<Self>) -> Result<SessionOutcome, SourceError> {
        let mut this = *self;
        let Some(stopped) = this.stopped.take() else {
            return Err(SourceError::Procedure(
                "the PostgreSQL session was finished before its WAL phase was stored; the \
                 backup is incomplete"
                    .into(),
            ));
        };
        // Closing the session drops the temporary replication slot.
        let client = this.client.lock().ok().and_then(|mut guard| guard.take());
        if let Some(client) = client {
            if let Err(e) = client.close() {
                this.warnings.push(format!(
                    "closing the PostgreSQL session failed ({e}); the server drops its \
                     temporary replication slot when it notices"
                ));
            }
        }
        let failures = this
            .checksum_failures
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default();
        let checked_pages = failures.len();
        for failure in failures.iter().take(20) {
            this.warnings.push(failure.clone());
        }
        if checked_pages > 20 {
            this.warnings.push(format!(
                "… and {} more page checksum failures",
                checked_pages - 20
            ));
        }
        let facts = &this.facts;
        let mut meta = BTreeMap::new();
        meta.insert("checksum-failures".to_owned(), checked_pages.to_string());
        meta.insert("start-lsn".to_owned(), format_lsn(this.start_lsn));
        meta.insert("stop-lsn".to_owned(), format_lsn(stopped.stop_lsn));
        meta.insert("timeline".to_owned(), stopped.timeline.to_string());
        meta.insert(
            "wal-start-segment".to_owned(),
            stopped.start_segment.clone(),
        );
        meta.insert("wal-stop-segment".to_owned(), stopped.stop_segment.clone());
        meta.insert(
            "wal-segment-size".to_owned(),
            facts.wal_segment_size.to_string(),
        );
        meta.insert("server-version".to_owned(), facts.version_num.to_string());
        meta.insert(
            "system-identifier".to_owned(),
            facts.system_identifier.to_string(),
        );
        meta.insert(
            "data-checksums".to_owned(),
            if facts.data_checksums { "on" } else { "off" }.to_owned(),
        );
        meta.insert("block-size".to_owned(), facts.block_size.to_string());
        meta.insert("label".to_owned(), this.label.clone());

        let mut profile = RestoreProfile::new("postgres")
            .with_param("data-dir-mode", format!("{:o}", this.data_dir_mode));
        for key in [
            "server-version",
            "system-identifier",
            "timeline",
            "start-lsn",
            "stop-lsn",
            "wal-start-segment",
            "wal-stop-segment",
        ] {
            if let Some(value) = meta.get(key) {
                profile = profile.with_param(key, value.clone());
            }
        }
        for (oid, location) in &this.tablespaces {
            profile = profile.with_param(format!("tablespace.{oid}"), location.clone());
        }
        Ok(SessionOutcome {
            restore_profile: profile,
            source_meta: meta,
            pause_window: None,
            warnings: this.warnings,
        })
    }
}

/// Lists a data directory the way `pg_basebackup` selects files.
struct Lister<'a> {
    block_size: u32,
    /// `PG_<major>_<catversion>`: the only directory of a tablespace that belongs to this server.
    version_dir: String,
    cancel: &'a SessionContext,
    entries: Vec<Entry>,
    /// Copied last, as `pg_basebackup` does.
    pg_control: Option<Entry>,
    tablespaces: Vec<(String, String)>,
    warnings: &'a mut Vec<String>,
    /// With data checksums on: relation files read through the checksum verifier, as
    /// `(path, first block number)`; an entry's `Content::Session` handle indexes this list.
    checksum_files: Option<Vec<(PathBuf, u32)>>,
}

impl Lister<'_> {
    fn walk_data_dir(&mut self, root: &Path) -> Result<(), SourceError> {
        self.walk(root, "")?;
        if let Some(control) = self.pg_control.take() {
            self.entries.push(control);
        } else {
            return Err(SourceError::Procedure(format!(
                "`{}` has no global/pg_control; it is not a PostgreSQL data directory",
                root.display()
            )));
        }
        Ok(())
    }

    /// Sorted names in `dir`, or `None` if the directory vanished (a dropped database).
    fn names(&mut self, dir: &Path) -> Result<Option<Vec<String>>, SourceError> {
        let read = match std::fs::read_dir(dir) {
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SourceError::io("listing", dir, e)),
        };
        let mut names = Vec::new();
        for item in read {
            let item = item.map_err(|e| SourceError::io("listing", dir, e))?;
            match item.file_name().into_string() {
                Ok(name) => names.push(name),
                Err(name) => self.warnings.push(format!(
                    "skipped `{}`: its name is not UTF-8",
                    dir.join(name).display()
                )),
            }
        }
        names.sort();
        Ok(Some(names))
    }

    /// Adds the entry for `disk` unless it vanished; returns it for inspection.
    fn add(
        &mut self,
        rel: String,
        disk: &Path,
        change: ChangeModel,
    ) -> Result<Option<EntryKind>, SourceError> {
        match Entry::from_path(rel.clone(), disk, change) {
            Ok(Some(entry)) => {
                let kind = entry.kind.clone();
                if rel == "global/pg_control" {
                    self.pg_control = Some(entry);
                } else {
                    self.entries.push(entry);
                }
                Ok(Some(kind))
            }
            Ok(None) => {
                self.warnings.push(format!(
                    "skipped `{rel}`: sockets, fifos and device files are not backed up"
                ));
                Ok(None)
            }
            // Dropped relations and databases vanish while we list; the WAL replays the drop.
            Err(SourceError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                tracing::debug!(path = %rel, "vanished while listing");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn walk(&mut self, dir: &Path, rel_dir: &str) -> Result<(), SourceError> {
        if self.cancel.cancel.is_cancelled() {
            return Err(SourceError::Cancelled);
        }
        let Some(names) = self.names(dir)? else {
            return Ok(());
        };
        let db_dir = is_database_dir(rel_dir, &self.version_dir);
        // Unlogged relations are reset from their init fork at startup, so `pg_basebackup`
        // copies only that fork.
        let unlogged: HashSet<&str> = if db_dir {
            names
                .iter()
                .filter_map(|name| parse_relation_file(name))
                .filter(|rel| !rel.temp && rel.fork == "init")
                .map(|rel| rel.node)
                .collect()
        } else {
            HashSet::new()
        };
        for name in &names {
            if is_excluded_name(name) {
                continue;
            }
            let rel = if rel_dir.is_empty() {
                name.clone()
            } else {
                format!("{rel_dir}/{name}")
            };
            let disk = dir.join(name);
            if rel_dir.is_empty() && name == "pg_wal" {
                self.add_pg_wal(&disk)?;
                continue;
            }
            if rel_dir.is_empty() && name == "pg_tblspc" {
                if self.add(rel.clone(), &disk, ChangeModel::Any)?.is_some() {
                    self.walk_tablespaces(&disk)?;
                }
                continue;
            }
            let mut change = ChangeModel::Any;
            if db_dir {
                if let Some(file) = parse_relation_file(name) {
                    if file.temp || (file.fork != "init" && unlogged.contains(file.node)) {
                        continue;
                    }
                    change = ChangeModel::Pages {
                        page_size: self.block_size,
                    };
                    let added = self.add(rel.clone(), &disk, change)?;
                    if added == Some(EntryKind::File) {
                        self.verify_through_session(&disk, name);
                    }
                    continue;
                }
            }
            if self.add(rel.clone(), &disk, change)? == Some(EntryKind::Dir)
                && !EXCLUDED_DIR_CONTENTS.contains(&name.as_str())
            {
                self.walk(&disk, &rel)?;
            }
        }
        Ok(())
    }

    /// Routes the relation file just added through [`ChecksumReader`] when the cluster has data
    /// checksums: the bytes stored are the same, and every page is checked as it streams by.
    fn verify_through_session(&mut self, disk: &Path, name: &str) {
        let Some(files) = self.checksum_files.as_mut() else {
            return;
        };
        let Some(entry) = self.entries.last_mut() else {
            return;
        };
        // Segment N of a relation starts at block N × blocks per 1 GiB segment (RELSEG_SIZE).
        let segment: u32 = name
            .split_once('.')
            .and_then(|(_, seg)| seg.parse().ok())
            .unwrap_or(0);
        let blocks_per_segment = (1u32 << 30) / self.block_size.max(1);
        entry.content = Content::Session(files.len() as u64);
        files.push((
            disk.to_path_buf(),
            segment.saturating_mul(blocks_per_segment),
        ));
    }

    /// `pg_wal` (a directory, even when it is a symlink elsewhere) and its `archive_status`,
    /// without contents: the WAL the backup needs comes in the `wal` phase.
    fn add_pg_wal(&mut self, disk: &Path) -> Result<(), SourceError> {
        let resolved =
            std::fs::canonicalize(disk).map_err(|e| SourceError::io("resolving", disk, e))?;
        self.add("pg_wal".to_owned(), &resolved, ChangeModel::Any)?;
        self.add(
            "pg_wal/archive_status".to_owned(),
            &resolved.join("archive_status"),
            ChangeModel::Any,
        )?;
        Ok(())
    }

    /// Each `pg_tblspc/<oid>` is stored as a directory holding this server's version directory
    /// of the tablespace, wherever its symlink points.
    fn walk_tablespaces(&mut self, pg_tblspc: &Path) -> Result<(), SourceError> {
        let Some(names) = self.names(pg_tblspc)? else {
            return Ok(());
        };
        for oid in names {
            let link = pg_tblspc.join(&oid);
            let md = match std::fs::symlink_metadata(&link) {
                Ok(md) => md,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(SourceError::io("reading metadata of", &link, e)),
            };
            let location = if md.file_type().is_symlink() {
                let target = std::fs::read_link(&link)
                    .map_err(|e| SourceError::io("reading symlink", &link, e))?;
                let location = target.to_string_lossy().into_owned();
                self.tablespaces.push((oid.clone(), location));
                pg_tblspc.join(target)
            } else {
                // An in-place tablespace (`allow_in_place_tablespaces`).
                link.clone()
            };
            let rel = format!("pg_tblspc/{oid}");
            if self.add(rel.clone(), &location, ChangeModel::Any)? != Some(EntryKind::Dir) {
                continue;
            }
            let version_dir = location.join(&self.version_dir);
            let version_rel = format!("{rel}/{}", self.version_dir);
            if self.add(version_rel.clone(), &version_dir, ChangeModel::Any)?
                == Some(EntryKind::Dir)
            {
                self.walk(&version_dir, &version_rel)?;
            }
        }
        Ok(())
    }
}

/// Whether relation files live directly in `rel_dir`: `global`, `base/<oid>`, or
/// `pg_tblspc/<oid>/<version dir>/<oid>`.
fn is_database_dir(rel_dir: &str, version_dir: &str) -> bool {
    let parts: Vec<&str> = rel_dir.split('/').collect();
    match parts.as_slice() {
        ["global"] => true,
        ["base", db] => all_digits(db),
        ["pg_tblspc", oid, version, db] => {
            all_digits(oid) && *version == version_dir && all_digits(db)
        }
        _ => false,
    }
}

fn is_excluded_name(name: &str) -> bool {
    EXCLUDED_FILES.contains(&name)
        || name.starts_with(TEMP_PREFIX)
        || name.starts_with(RELCACHE_INIT)
}

/// A relation file name: `<node>[_<fork>][.<segment>]`, or `t<backend>_<node>…` for a
/// temporary relation.
#[derive(Debug, PartialEq, Eq)]
struct RelationFile<'a> {
    node: &'a str,
    fork: &'a str,
    temp: bool,
}

fn parse_relation_file(name: &str) -> Option<RelationFile<'_>> {
    let base = match name.split_once('.') {
        Some((base, segment)) if all_digits(segment) => base,
        Some(_) => return None,
        None => name,
    };
    let (temp, rest) = match base.strip_prefix('t') {
        Some(after) => match after.split_once('_') {
            Some((backend, rest)) if all_digits(backend) => (true, rest),
            _ => return None,
        },
        None => (false, base),
    };
    let (node, fork) = match rest.split_once('_') {
        Some((node, fork)) if matches!(fork, "fsm" | "vm" | "init") => (node, fork),
        Some(_) => return None,
        None => (rest, "main"),
    };
    all_digits(node).then_some(RelationFile { node, fork, temp })
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn unix_ns(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Parses an LSN as PostgreSQL prints it (`16/B374D848`).
pub fn parse_lsn(text: &str) -> Result<u64, SourceError> {
    let bad = || SourceError::Procedure(format!("`{text}` is not an LSN (expected `X/Y` in hex)"));
    let (hi, lo) = text.trim().split_once('/').ok_or_else(bad)?;
    let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
    let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
    Ok((u64::from(hi) << 32) | u64::from(lo))
}

/// Prints an LSN the way PostgreSQL does.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// The file name of WAL segment number `segno` on `timeline` (`XLogFileName`).
pub fn wal_segment_name(timeline: u32, segno: u64, segment_size: u64) -> String {
    let per_id = 0x1_0000_0000 / segment_size.max(1);
    format!("{timeline:08X}{:08X}{:08X}", segno / per_id, segno % per_id)
}

/// What `backup_label` says about where the backup starts.
#[derive(Debug, PartialEq, Eq)]
struct BackupLabel {
    timeline: u32,
    start_file: Option<String>,
}

fn parse_backup_label(text: &str) -> Result<BackupLabel, SourceError> {
    let mut timeline = None;
    let mut start_file = None;
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("START TIMELINE:") {
            timeline = value.trim().parse::<u32>().ok();
        } else if let Some(value) = line.strip_prefix("START WAL LOCATION:") {
            start_file = value
                .split_once("(file ")
                .and_then(|(_, rest)| rest.strip_suffix(')'))
                .map(|file| file.trim().to_owned());
        }
    }
    let timeline = timeline.ok_or_else(|| {
        SourceError::Procedure(format!(
            "the backup label from `pg_backup_stop` has no START TIMELINE line:\n{text}"
        ))
    })?;
    Ok(BackupLabel {
        timeline,
        start_file,
    })
}

/// A connection string without its password, to name the source in snapshots and messages.
pub fn redact_conninfo(conninfo: &str) -> String {
    let trimmed = conninfo.trim();
    if let Some((scheme, rest)) = trimmed.split_once("://") {
        let (authority, tail) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let authority = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => {
                let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
                format!("{user}@{hosts}")
            }
            None => authority.to_owned(),
        };
        let tail = match tail.split_once('?') {
            Some((path, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|kv| !kv.starts_with("password="))
                    .collect();
                if kept.is_empty() {
                    path.to_owned()
                } else {
                    format!("{path}?{}", kept.join("&"))
                }
            }
            None => tail.to_owned(),
        };
        return format!("{scheme}://{authority}{tail}");
    }
    // key=value pairs; values may be single-quoted with backslash escapes.
    let mut out = Vec::new();
    let mut chars = trimmed.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        if key.is_empty() {
            break;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut raw = String::new();
        if chars.next_if_eq(&'=').is_some() {
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            if chars.next_if_eq(&'\'').is_some() {
                raw.push('\'');
                while let Some(c) = chars.next() {
                    raw.push(c);
                    if c == '\\' {
                        if let Some(escaped) = chars.next() {
                            raw.push(escaped);
                        }
                    } else if c == '\'' {
                        break;
                    }
                }
            } else {
                while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                    raw.push(c);
                }
            }
        }
        if key != "password" {
            out.push(format!("{key}={raw}"));
        }
    }
    out.join(" ")
}

/// The first WAL segment the backup with `source_meta` needs (its start segment): archived
/// segments before it are not needed by that backup, so if it is the oldest backup kept, the
/// WAL archive can drop them (see [`wal_archive_name_needed`]).
pub fn wal_needed_from(source_meta: &BTreeMap<String, String>) -> Option<String> {
    source_meta
        .get("wal-start-segment")
        .filter(|name| name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit()))
        .cloned()
}

/// The archive that held every cluster's WAL before archives were kept per cluster; still
/// read by `wal-fetch` and pruned.
pub const LEGACY_WAL_ARCHIVE: &str = "wal";

/// The archive of the cluster with `system_identifier`: each cluster's WAL has its own, so that
/// clusters sharing a repository (two members of a group, an old cluster and its successor
/// after `initdb`) never collide on a segment name, and a restore never fetches another
/// cluster's segment.
pub fn wal_archive_of(system_identifier: u64) -> String {
    format!("wal-{system_identifier}")
}

/// The cluster an archive holds the WAL of: `Some(Some(id))` for a cluster's archive,
/// `Some(None)` for the legacy shared one, `None` for an archive that is not WAL.
pub fn wal_archive_cluster(archive: &str) -> Option<Option<&str>> {
    if archive == LEGACY_WAL_ARCHIVE {
        return Some(None);
    }
    archive
        .strip_prefix("wal-")
        .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        .map(Some)
}

/// The system identifier in the long header that begins every WAL segment file (`None` for a
/// file without one: a history file, a backup history file, something short).
pub fn wal_segment_system_identifier(bytes: &[u8]) -> Option<u64> {
    // XLogLongPageHeaderData, in the server's byte order (every platform we build for is
    // little-endian): xlp_magic u16, xlp_info u16 (XLP_LONG_HEADER = 0x0002), xlp_tli
    // u32, xlp_pageaddr u64, xlp_rem_len u32, padding, xlp_sysid u64 at offset 24.
    let info = u16::from_le_bytes(bytes.get(2..4)?.try_into().ok()?);
    if info & 0x0002 == 0 {
        return None;
    }
    Some(u64::from_le_bytes(bytes.get(24..32)?.try_into().ok()?))
}

/// The first WAL segment a backup needs, with the cluster it is of (`None` where the backup did
/// not record its system identifier): one for a PostgreSQL backup, one for each PostgreSQL
/// member of a group backup (whose `source_meta` keys are `<member>/…`).
pub fn wal_needs(
    source_kind: &str,
    source_meta: &BTreeMap<String, String>,
) -> Vec<(Option<String>, String)> {
    let need = |prefix: &str| {
        let meta = |key: &str| source_meta.get(&format!("{prefix}{key}"));
        let start = meta("wal-start-segment")
            .filter(|name| name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit()))?;
        Some((meta("system-identifier").cloned(), start.clone()))
    };
    match source_kind {
        "postgres" => need("").into_iter().collect(),
        "group" => source_meta
            .iter()
            .filter(|(key, value)| key.ends_with("/kind") && value.as_str() == "postgres")
            .filter_map(|(key, _)| need(&key[..key.len() - "kind".len()]))
            .collect(),
        _ => Vec::new(),
    }
}

/// The earliest of WAL segment names by position (timelines aside: a later timeline may branch
/// off anywhere after its parent's segment).
pub fn earliest_segment<'a>(segments: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    segments
        .into_iter()
        .min_by_key(|s| s.get(8..24).map(str::to_ascii_uppercase))
}

/// Whether the archived WAL file `name` must be kept when `needed_from` (from
/// [`wal_needed_from`] of the oldest backup kept) is the first segment needed. Timeline history
/// files are always kept (they are tiny and needed to follow timelines); segments, partial
/// segments and backup history files are kept from `needed_from`'s position on, on every
/// timeline, because a later timeline may branch off anywhere after it. Names this function
/// does not recognise are kept.
pub fn wal_archive_name_needed(name: &str, needed_from: &str) -> bool {
    let is_hex = |s: &str| s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_hex(needed_from) {
        return true;
    }
    let segment = name.get(..24).unwrap_or("");
    let rest = name.get(24..).unwrap_or("");
    let recognised = is_hex(segment)
        && (rest.is_empty()
            || rest == ".partial"
            || (rest.ends_with(".backup") && rest.len() == ".00000000.backup".len()));
    if !recognised {
        return true;
    }
    // Timeline first (8 hex digits), then the position (16 hex digits); compare positions.
    let position = |s: &str| s.get(8..24).map(str::to_ascii_uppercase);
    position(segment) >= position(needed_from)
}

/// Applies the postgres restore fix-ups to the restored data directory `target`.
///
/// Options (all optional): `restore-command` (e.g. `backstop --repo … wal-fetch %f %p`;
/// without it, recovery replays only the WAL stored with the backup); one of `target-time`,
/// `target-lsn`, `target-xid`, `target-name` or `target=immediate`; `target-action`
/// (`promote`, the default, `pause` or `shutdown`); `target-inclusive`; `target-timeline`;
/// `archive-mode` (e.g. `off`, so a restored copy does not archive into the original's
/// archive); `tablespaces` (`original`, the default: each tablespace goes back to its recorded
/// location, which must be absent or empty; or `in-place`: kept inside `pg_tblspc`); and
/// `tablespace-<oid>=<path>` to put one tablespace elsewhere.
pub(crate) fn restore_fixup(
    profile: &RestoreProfile,
    target: &Path,
    params: &RestoreParams,
) -> Result<Vec<String>, SourceError> {
    let options = &params.options;
    // Validate everything before touching the restored tree.
    let mut settings = recovery_settings(options)?;
    let tablespace_plan = plan_tablespaces(profile, target, options)?;
    // Every path below is in the tree the backup brought back, and none is followed through a
    // symlink (see `restored`).
    for file in ["PG_VERSION", "backup_label"] {
        if restored::lookup(target, file, Need::File)?.1.is_none() {
            return Err(SourceError::Procedure(format!(
                "`{}` has no `{file}`: this is not a complete restore of a PostgreSQL base backup",
                target.display()
            )));
        }
    }

    let mut steps = Vec::new();
    for stale in ["postmaster.pid", "postmaster.opts", "recovery.done"] {
        if restored::remove_file(target, stale)? {
            steps.push(format!("removed stale `{stale}`"));
        }
    }
    // Directories whose contents the backup skipped must exist for the server to start.
    for dir in dirs_made_for_the_server() {
        if restored::create_dir_all(target, dir, 0o700)? {
            steps.push(format!("created `{dir}`"));
        }
    }

    let mut in_place = false;
    for (oid, destination) in &tablespace_plan {
        match destination {
            Some(dest) => {
                place_tablespace(target, oid, dest)?;
                steps.push(format!("tablespace {oid} restored to `{}`", dest.display()));
            }
            None => {
                in_place = true;
                steps.push(format!("tablespace {oid} kept inside the data directory"));
            }
        }
    }
    if !tablespace_plan.is_empty() {
        // The links are in place now; a tablespace_map would make the server re-link every
        // tablespace to its original location.
        restored::remove_file(target, "tablespace_map")?;
    }
    if in_place {
        // PostgreSQL 15 refuses directories in pg_tblspc at the end of recovery otherwise.
        settings.push(("allow_in_place_tablespaces".into(), "on".into()));
    }

    restored::write(target, "recovery.signal", b"", 0o600)?;
    steps.push("wrote `recovery.signal`".into());

    let auto_conf = "postgresql.auto.conf";
    let mut conf = match restored::read(target, auto_conf)? {
        Some(bytes) => String::from_utf8(bytes).map_err(|_| {
            SourceError::Procedure(format!(
                "the restored `{}` is not UTF-8 text",
                target.join(auto_conf).display()
            ))
        })?,
        None => String::new(),
    };
    if !conf.is_empty() && !conf.ends_with('\n') {
        conf.push('\n');
    }
    // Later lines win, so appending overrides whatever the original cluster had.
    conf.push_str("# Recovery settings written by backstop restore\n");
    for (key, value) in &settings {
        conf.push_str(&format!("{key} = '{}'\n", quote_conf_value(value)));
        steps.push(format!("set {key} = '{value}'"));
    }
    restored::write(target, auto_conf, conf.as_bytes(), 0o600)?;

    // PostgreSQL refuses to start unless the data directory is 0700 (or 0750 with group access).
    let mode = profile
        .params
        .get("data-dir-mode")
        .and_then(|m| u32::from_str_radix(m, 8).ok())
        .filter(|m| *m == 0o750)
        .unwrap_or(0o700);
    set_mode(target, mode)?;
    steps.push(format!("data directory mode {mode:o}"));
    if nix::unistd::geteuid().is_root() {
        let mut made = vec![("recovery.signal", Need::File), (auto_conf, Need::File)];
        made.extend(
            dirs_made_for_the_server()
                .into_iter()
                .map(|d| (d, Need::Dir)),
        );
        steps.extend(give_to_data_owner(target, &made)?);
    }
    Ok(steps)
}

/// The directories `restore_fixup` creates when the backup skipped them.
fn dirs_made_for_the_server() -> Vec<&'static str> {
    let mut dirs = vec!["pg_wal", "pg_wal/archive_status", "pg_tblspc"];
    dirs.extend_from_slice(EXCLUDED_DIR_CONTENTS);
    dirs
}

/// Run as root, the restore gives every file its recorded owner, but what the fix-up wrote
/// (and the data directory itself, when a group's member directory holds it) would be
/// root's, and the server, which runs as the owner of its files, could not read or write
/// them. They go to the owner of `PG_VERSION`.
fn give_to_data_owner(target: &Path, made: &[(&str, Need)]) -> Result<Vec<String>, SourceError> {
    use std::os::unix::fs::MetadataExt as _;
    let Some(version) = restored::lookup(target, "PG_VERSION", Need::File)?.1 else {
        return Ok(Vec::new());
    };
    let (uid, gid) = (version.uid(), version.gid());
    if uid == 0 {
        return Ok(Vec::new());
    }
    let mut paths = vec![target.to_path_buf()];
    for (rel, need) in made {
        if let (path, Some(_)) = restored::lookup(target, rel, *need)? {
            paths.push(path);
        }
    }
    for path in &paths {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .map_err(|e| SourceError::io("giving to the data directory's owner", path, e))?;
    }
    Ok(vec![format!(
        "gave the data directory and the {} files the restore made to uid {uid}",
        paths.len() - 1
    )])
}

/// The recovery settings for `postgresql.auto.conf`, from the restore options.
fn recovery_settings(
    options: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, SourceError> {
    let checked = RestoreParams {
        raw: false,
        options: options.clone(),
    };
    crate::restore_profile::check_options(&RestoreProfile::new("postgres"), &checked)?;
    let value_ok = |key: &str, value: &str| {
        if value.contains(['\n', '\r', '\0']) {
            Err(SourceError::Procedure(format!(
                "restore option `{key}` must be one line"
            )))
        } else {
            Ok(())
        }
    };
    let mut settings = Vec::new();
    // Without an archive, the command fails for every file and recovery reads pg_wal, where the
    // backup's own WAL was restored; archive recovery still ends on a new timeline, so the
    // restored server never writes WAL under names the original server uses.
    let restore_command = options
        .get("restore-command")
        .map_or("false", String::as_str)
        .to_owned();
    value_ok("restore-command", &restore_command)?;
    settings.push(("restore_command".to_owned(), restore_command));

    let targets: Vec<(&str, &str)> = [
        ("target", "recovery_target"),
        ("target-time", "recovery_target_time"),
        ("target-lsn", "recovery_target_lsn"),
        ("target-xid", "recovery_target_xid"),
        ("target-name", "recovery_target_name"),
    ]
    .into_iter()
    .filter(|(option, _)| options.contains_key(*option))
    .collect();
    if targets.len() > 1 {
        let names: Vec<&str> = targets.iter().map(|(option, _)| *option).collect();
        return Err(SourceError::Procedure(format!(
            "give at most one recovery target; got {}",
            names.join(", ")
        )));
    }
    if let Some((option, setting)) = targets.first() {
        let value = options.get(*option).map_or("", String::as_str);
        value_ok(option, value)?;
        match *option {
            "target" if value != "immediate" => {
                return Err(SourceError::Procedure(format!(
                    "`target` can only be `immediate` (stop as soon as the backup is \
                     consistent), not `{value}`"
                )));
            }
            "target-lsn" => {
                parse_lsn(value)?;
            }
            "target-xid" if !all_digits(value) => {
                return Err(SourceError::Procedure(format!(
                    "`target-xid` must be a transaction id (digits), not `{value}`"
                )));
            }
            _ => {}
        }
        settings.push(((*setting).to_owned(), value.to_owned()));
        let action = options
            .get("target-action")
            .map_or("promote", String::as_str);
        if !matches!(action, "promote" | "pause" | "shutdown") {
            return Err(SourceError::Procedure(format!(
                "`target-action` must be promote, pause or shutdown, not `{action}`"
            )));
        }
        settings.push(("recovery_target_action".to_owned(), action.to_owned()));
        if let Some(inclusive) = options.get("target-inclusive") {
            if !matches!(inclusive.as_str(), "true" | "false" | "on" | "off") {
                return Err(SourceError::Procedure(format!(
                    "`target-inclusive` must be true or false, not `{inclusive}`"
                )));
            }
            settings.push(("recovery_target_inclusive".to_owned(), inclusive.clone()));
        }
    } else {
        for option in ["target-action", "target-inclusive"] {
            if options.contains_key(option) {
                return Err(SourceError::Procedure(format!(
                    "`{option}` needs a recovery target (target-time, target-lsn, target-xid, \
                     target-name or target=immediate)"
                )));
            }
        }
    }
    if let Some(timeline) = options.get("target-timeline") {
        value_ok("target-timeline", timeline)?;
        settings.push(("recovery_target_timeline".to_owned(), timeline.clone()));
    }
    if let Some(mode) = options.get("archive-mode") {
        if !matches!(mode.as_str(), "on" | "off" | "always") {
            return Err(SourceError::Procedure(format!(
                "`archive-mode` must be on, off or always, not `{mode}`"
            )));
        }
        settings.push(("archive_mode".to_owned(), mode.clone()));
    }
    Ok(settings)
}

/// Doubles quotes and backslashes for a single-quoted value in a PostgreSQL configuration file.
fn quote_conf_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\'', "''")
}

/// Where each tablespace of the backup goes: `Some(path)` to link it there, `None` to keep it
/// inside `pg_tblspc`.
fn plan_tablespaces(
    profile: &RestoreProfile,
    target: &Path,
    options: &BTreeMap<String, String>,
) -> Result<Vec<(String, Option<PathBuf>)>, SourceError> {
    let in_place = match options.get("tablespaces").map(String::as_str) {
        None | Some("original") => false,
        Some("in-place") => true,
        Some(other) => {
            return Err(SourceError::Procedure(format!(
                "`tablespaces` must be `original` or `in-place`, not `{other}`"
            )));
        }
    };
    let recorded: BTreeMap<&str, &str> = profile
        .params
        .iter()
        .filter_map(|(key, location)| {
            key.strip_prefix("tablespace.")
                .map(|oid| (oid, location.as_str()))
        })
        .collect();
    for key in options.keys() {
        if let Some(oid) = key.strip_prefix("tablespace-") {
            if !recorded.contains_key(oid) {
                let known: Vec<&str> = recorded.keys().copied().collect();
                return Err(SourceError::Procedure(format!(
                    "the backup has no tablespace {oid} (it has: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                )));
            }
        }
    }
    let mut plan = Vec::new();
    for (oid, original) in recorded {
        // The id names `pg_tblspc/<oid>` in the restored tree; anything but an OID could name
        // a path outside it (`tablespace./home/alice`).
        if !all_digits(oid) {
            return Err(SourceError::Procedure(format!(
                "the backup's restore profile names tablespace `{oid}`, which is not an OID \
                 (digits); the profile is damaged, restore with `--raw`"
            )));
        }
        let destination = match options.get(&format!("tablespace-{oid}")) {
            Some(path) => Some(PathBuf::from(path)),
            None if in_place => None,
            None => Some(PathBuf::from(original)),
        };
        if let Some(dest) = &destination {
            check_tablespace_location(oid, dest, target)?;
        }
        plan.push((oid.to_owned(), destination));
    }
    Ok(plan)
}

/// Moves each tablespace an earlier restore placed outside the data directory back to
/// `pg_tblspc/<oid>`, ahead of a delta restore over that restore (see
/// [`crate::restore_profile::prepare_delta`]). Only a tablespace whose link in the target names
/// exactly where this restore's plan puts it, a real directory, is moved: anything else stays,
/// and the delta replaces the link with the backup's directory.
pub(crate) fn gather_tablespaces(
    profile: &RestoreProfile,
    target: &Path,
    options: &BTreeMap<String, String>,
) -> Result<Vec<String>, SourceError> {
    let pg_tblspc = target.join("pg_tblspc");
    if !std::fs::symlink_metadata(&pg_tblspc).is_ok_and(|m| m.is_dir()) {
        return Ok(Vec::new());
    }
    let mut steps = Vec::new();
    for (oid, destination) in plan_tablespaces(profile, target, options)? {
        let Some(dest) = destination else { continue };
        let link = pg_tblspc.join(&oid);
        let linked = std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink())
            && std::fs::read_link(&link).is_ok_and(|to| to == dest);
        if !linked || !std::fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        std::fs::remove_file(&link).map_err(|e| SourceError::io("removing the link", &link, e))?;
        move_dir(&dest, &link)?;
        steps.push(format!(
            "tablespace {oid} brought back from `{}` into the data directory for the delta restore",
            dest.display()
        ));
    }
    Ok(steps)
}

/// Where a tablespace may be placed: a plain absolute path (no `.` or `..`, not `/`) that
/// neither lies inside the restored data directory nor contains it. The recorded location is
/// where the original server kept the tablespace (PostgreSQL requires an absolute path); it
/// comes from the backup, so it is held to the same rule as one given on the command line.
fn check_tablespace_location(oid: &str, dest: &Path, target: &Path) -> Result<(), SourceError> {
    use std::path::Component;
    let plain = dest.is_absolute()
        && dest.components().count() > 1
        && dest
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && !dest.as_os_str().as_encoded_bytes().contains(&0);
    if !plain {
        return Err(SourceError::Procedure(format!(
            "tablespace {oid} must go to an absolute path without `.` or `..` (and not `/`), \
             not `{}`",
            dest.display()
        )));
    }
    let data_dir = std::path::absolute(target)
        .map_err(|e| SourceError::io("resolving the restore target", target, e))?;
    let data_dir = std::fs::canonicalize(&data_dir).unwrap_or(data_dir);
    let dest_resolved = canonical_prefix(dest);
    if dest_resolved.starts_with(&data_dir) || data_dir.starts_with(&dest_resolved) {
        return Err(SourceError::Procedure(format!(
            "tablespace {oid} cannot be placed at `{}`: it would be inside the restored data \
             directory `{}` or contain it; give another place with tablespace-{oid}=PATH, or \
             keep it inside the data directory with tablespaces=in-place",
            dest.display(),
            target.display()
        )));
    }
    Ok(())
}

/// `path` with its longest existing prefix resolved (symlinks and all) and the rest appended.
fn canonical_prefix(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut prefix = path;
    loop {
        if let Ok(resolved) = std::fs::canonicalize(prefix) {
            return rest.iter().rev().fold(resolved, |p, name| p.join(name));
        }
        match (prefix.parent(), prefix.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                prefix = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// Moves the restored `pg_tblspc/<oid>` to `dest` and links it back.
fn place_tablespace(target: &Path, oid: &str, dest: &Path) -> Result<(), SourceError> {
    // Neither `pg_tblspc` nor `pg_tblspc/<oid>` may be a link: the move must take the restored
    // tablespace, never a directory the backup's tree points to.
    let restored = restored::existing(target, &format!("pg_tblspc/{oid}"), Need::Dir)?;
    match std::fs::read_dir(dest) {
        Ok(mut items) => {
            if items.next().is_some() {
                return Err(SourceError::Procedure(format!(
                    "tablespace {oid} cannot be restored to `{}`: it is not empty (is the \
                     original server still using it?); give another place with \
                     tablespace-{oid}=PATH, or keep it inside the data directory with \
                     tablespaces=in-place",
                    dest.display()
                )));
            }
            std::fs::remove_dir(dest).map_err(|e| SourceError::io("replacing", dest, e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| SourceError::io("creating", parent, e))?;
            }
        }
        Err(e) => return Err(SourceError::io("listing", dest, e)),
    }
    move_dir(&restored, dest)?;
    set_mode(dest, 0o700)?;
    std::os::unix::fs::symlink(dest, &restored)
        .map_err(|e| SourceError::io("linking the tablespace at", &restored, e))?;
    Ok(())
}

/// Renames `from` to `to`, copying when they are on different filesystems.
fn move_dir(from: &Path, to: &Path) -> Result<(), SourceError> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            copy_tree(from, to)?;
            std::fs::remove_dir_all(from).map_err(|e| SourceError::io("removing", from, e))
        }
        Err(e) => Err(SourceError::io("moving the tablespace to", to, e)),
    }
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), SourceError> {
    std::fs::create_dir(to).map_err(|e| SourceError::io("creating", to, e))?;
    for item in std::fs::read_dir(from).map_err(|e| SourceError::io("listing", from, e))? {
        let item = item.map_err(|e| SourceError::io("listing", from, e))?;
        let src = item.path();
        let dst = to.join(item.file_name());
        let kind = item
            .file_type()
            .map_err(|e| SourceError::io("reading metadata of", &src, e))?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            let link = std::fs::read_link(&src)
                .map_err(|e| SourceError::io("reading symlink", &src, e))?;
            std::os::unix::fs::symlink(link, &dst)
                .map_err(|e| SourceError::io("creating symlink", &dst, e))?;
        } else {
            std::fs::copy(&src, &dst).map_err(|e| SourceError::io("copying to", &dst, e))?;
        }
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), SourceError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| SourceError::io("setting permissions of", path, e))
}

#[cfg(test)]
#[path = "../../backstop/tests/support/pg_cluster.rs"]
mod pg_cluster;

/// PostgreSQL's page checksum (`pg_checksum_page`): 32 parallel FNV-1a-like lanes over the page
/// as little-endian u32 words, with `pd_checksum` taken as zero, two extra rounds of zeros, the
/// lanes XORed together, the block number XORed in, then reduced to 1..=65535. Reimplemented from
/// the algorithm's description in PostgreSQL's `checksum_impl.h`; the lane seeds are the
/// constants that format fixes.
pub fn page_checksum(page: &[u8], block_number: u32) -> u16 {
    const BASE_OFFSETS: [u32; 32] = [
        0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2,
        0x83E13D2C, 0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C,
        0xF718902A, 0x0B1C9CDB, 0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979,
        0xCCA6C0B2, 0x304A0979, 0x85AA43D4, 0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E,
        0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
    ];
    const FNV_PRIME: u32 = 16_777_619;
    fn round(sum: &mut u32, value: u32) {
        let tmp = *sum ^ value;
        *sum = tmp.wrapping_mul(FNV_PRIME) ^ (tmp >> 17);
    }
    let mut sums = BASE_OFFSETS;
    for (i, word) in page.chunks_exact(4).enumerate() {
        // Bytes 8..10 are pd_checksum itself, counted as zero.
        let mut bytes = [word[0], word[1], word[2], word[3]];
        if i == 2 {
            bytes[0] = 0;
            bytes[1] = 0;
        }
        if let Some(sum) = sums.get_mut(i % 32) {
            round(sum, u32::from_le_bytes(bytes));
        }
    }
    for _ in 0..2 {
        for sum in &mut sums {
            round(sum, 0);
        }
    }
    let folded = sums.iter().fold(0u32, |acc, s| acc ^ s) ^ block_number;
    (folded % 65535 + 1) as u16
}

/// Streams a relation file unchanged while checking each whole page's checksum. Pages that are
/// new (all header zero), or whose LSN is at or past the backup's start (written during the
/// backup, possibly torn; WAL replay rewrites them) are not checked, as `pg_basebackup` does.
struct ChecksumReader {
    inner: std::fs::File,
    path: PathBuf,
    page: Vec<u8>,
    filled: usize,
    block_size: usize,
    block: u32,
    start_lsn: u64,
    failures: Arc<Mutex<Vec<String>>>,
}

impl ChecksumReader {
    fn new(
        inner: std::fs::File,
        path: PathBuf,
        block_size: usize,
        first_block: u32,
        start_lsn: u64,
        failures: Arc<Mutex<Vec<String>>>,
    ) -> Self {
        Self {
            inner,
            path,
            page: vec![0; block_size],
            filled: 0,
            block_size,
            block: first_block,
            start_lsn,
            failures,
        }
    }

    fn check_page(&mut self) {
        let page = &self.page;
        let header_u16 = |at: usize| {
            page.get(at..at + 2)
                .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]))
        };
        let lsn_hi = page
            .get(0..4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let lsn_lo = page
            .get(4..8)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let lsn = (u64::from(lsn_hi) << 32) | u64::from(lsn_lo);
        let stored = header_u16(8);
        let pd_upper = header_u16(14);
        let is_new = pd_upper == 0;
        if !is_new && lsn < self.start_lsn {
            let computed = page_checksum(page, self.block);
            if computed != stored {
                let message = format!(
                    "page checksum failure in `{}` block {}: stored {stored:#06x}, computed \
                     {computed:#06x} (the page was not modified during the backup: this is \
                     damage in the live cluster)",
                    self.path.display(),
                    self.block
                );
                tracing::warn!("{message}");
                if let Ok(mut failures) = self.failures.lock() {
                    failures.push(message);
                }
            }
        }
        self.block = self.block.wrapping_add(1);
    }
}

impl std::io::Read for ChecksumReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut rest = buf.get(..n).unwrap_or_default();
        while !rest.is_empty() {
            let take = (self.block_size - self.filled).min(rest.len());
            if let (Some(dst), Some(src)) = (
                self.page.get_mut(self.filled..self.filled + take),
                rest.get(..take),
            ) {
                dst.copy_from_slice(src);
            }
            self.filled += take;
            rest = rest.get(take..).unwrap_or_default();
            if self.filled == self.block_size {
                self.check_page();
                self.filled = 0;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::pg_cluster::{self, PgCluster};
    use super::*;

    #[test]
    fn lsn_round_trips_and_names_segments() {
        assert_eq!(parse_lsn("16/B374D848").unwrap(), 0x16_B374_D848);
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(format_lsn(0), "0/0");
        assert!(parse_lsn("B374D848").is_err());
        assert!(parse_lsn("1/2/3").is_err());
        let mib16 = 16 * 1024 * 1024;
        assert_eq!(
            wal_segment_name(1, parse_lsn("0/2000028").unwrap() / mib16, mib16),
            "000000010000000000000002"
        );
        assert_eq!(
            wal_segment_name(3, parse_lsn("16/B374D848").unwrap() / mib16, mib16),
            "0000000300000016000000B3"
        );
        // 1 MiB segments: 4096 per "xlogid".
        let mib = 1024 * 1024;
        assert_eq!(
            wal_segment_name(1, parse_lsn("1/00A00000").unwrap() / mib, mib),
            "00000001000000010000000A"
        );
    }

    #[test]
    fn recognises_relation_files_like_pg_basebackup() {
        let rel = |name| parse_relation_file(name);
        assert_eq!(
            rel("16384"),
            Some(RelationFile {
                node: "16384",
                fork: "main",
                temp: false
            })
        );
        assert_eq!(rel("16384.2").map(|r| r.fork), Some("main"));
        assert_eq!(rel("16384_vm").map(|r| r.fork), Some("vm"));
        assert_eq!(rel("16384_init").map(|r| r.fork), Some("init"));
        assert_eq!(rel("16384_fsm.1").map(|r| r.fork), Some("fsm"));
        assert_eq!(rel("t3_16384").map(|r| r.temp), Some(true));
        assert_eq!(
            rel("t3_16384_fsm.4").map(|r| (r.node, r.temp)),
            Some(("16384", true))
        );
        for not_a_relation in [
            "PG_VERSION",
            "pg_filenode.map",
            "16384_foo",
            "16384.x",
            "t_1",
            "",
        ] {
            assert_eq!(rel(not_a_relation), None, "{not_a_relation}");
        }
        assert!(is_database_dir("base/5", "PG_15_1"));
        assert!(is_database_dir("global", "PG_15_1"));
        assert!(is_database_dir("pg_tblspc/16390/PG_15_1/5", "PG_15_1"));
        assert!(!is_database_dir("pg_tblspc/16390/PG_14_1/5", "PG_15_1"));
        assert!(!is_database_dir("base", "PG_15_1"));
        assert!(!is_database_dir("pg_xact", "PG_15_1"));
        assert!(is_excluded_name("pgsql_tmp12.3"));
        assert!(is_excluded_name("pg_internal.init"));
        assert!(is_excluded_name("postmaster.pid"));
        assert!(!is_excluded_name("postgresql.conf"));
    }

    #[test]
    fn parses_the_backup_label() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                     CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\n\
                     BACKUP FROM: primary\nSTART TIME: 2024-01-01 00:00:00 UTC\n\
                     LABEL: x\nSTART TIMELINE: 1\n";
        assert_eq!(
            parse_backup_label(label).unwrap(),
            BackupLabel {
                timeline: 1,
                start_file: Some("000000010000000000000002".into())
            }
        );
        assert!(parse_backup_label("LABEL: x\n").is_err());
    }

    #[test]
    fn identity_never_contains_the_password() {
        assert_eq!(
            redact_conninfo("postgres://backup:s3cret@db1:5432/orders?sslmode=require&password=x"),
            "postgres://backup@db1:5432/orders?sslmode=require"
        );
        assert_eq!(
            redact_conninfo("postgresql://db1/orders"),
            "postgresql://db1/orders"
        );
        assert_eq!(
            redact_conninfo("host=/tmp/s port=5432 password='it\\'s \\\\ secret' user=postgres"),
            "host=/tmp/s port=5432 user=postgres"
        );
        assert_eq!(redact_conninfo("host = db1 password = x"), "host=db1");
    }

    #[test]
    fn wal_retention_keeps_what_the_oldest_backup_needs() {
        let meta: BTreeMap<String, String> = [(
            "wal-start-segment".to_owned(),
            "000000010000000000000005".to_owned(),
        )]
        .into();
        let from = wal_needed_from(&meta).unwrap();
        assert_eq!(from, "000000010000000000000005");
        assert!(!wal_archive_name_needed("000000010000000000000004", &from));
        assert!(wal_archive_name_needed("000000010000000000000005", &from));
        assert!(wal_archive_name_needed("000000020000000000000007", &from));
        assert!(!wal_archive_name_needed(
            "000000020000000000000003.partial",
            &from
        ));
        assert!(!wal_archive_name_needed(
            "000000010000000000000002.00000028.backup",
            &from
        ));
        assert!(wal_archive_name_needed("00000002.history", &from));
        assert!(wal_archive_name_needed("something-else", &from));
        assert!(wal_needed_from(&BTreeMap::new()).is_none());
    }

    #[test]
    fn each_cluster_has_its_wal_archive_and_backups_name_the_clusters_they_need() {
        assert_eq!(wal_archive_of(7_001), "wal-7001");
        assert_eq!(wal_archive_cluster("wal-7001"), Some(Some("7001")));
        assert_eq!(wal_archive_cluster(LEGACY_WAL_ARCHIVE), Some(None));
        assert_eq!(wal_archive_cluster("wal-x"), None);
        assert_eq!(wal_archive_cluster("other"), None);

        let meta = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let one = meta(&[
            ("system-identifier", "7001"),
            ("wal-start-segment", "000000010000000000000009"),
        ]);
        assert_eq!(
            wal_needs("postgres", &one),
            [(
                Some("7001".to_owned()),
                "000000010000000000000009".to_owned()
            )]
        );
        // A group backup: each PostgreSQL member, by its own prefix; other members need none.
        let group = meta(&[
            ("pg/kind", "postgres"),
            ("pg/system-identifier", "7001"),
            ("pg/wal-start-segment", "000000010000000000000004"),
            ("other/kind", "postgres"),
            ("other/wal-start-segment", "000000020000000000000006"),
            ("lite/kind", "sqlite"),
            ("lite/wal-start-segment", "000000010000000000000001"),
        ]);
        let mut needs = wal_needs("group", &group);
        needs.sort();
        assert_eq!(
            needs,
            [
                (None, "000000020000000000000006".to_owned()),
                (
                    Some("7001".to_owned()),
                    "000000010000000000000004".to_owned()
                ),
            ]
        );
        assert!(wal_needs("sqlite", &one).is_empty());
        // Earliest by position, whatever the timeline.
        assert_eq!(
            earliest_segment(["000000030000000000000005", "000000010000000000000007"]),
            Some("000000030000000000000005")
        );
        assert_eq!(earliest_segment([]), None);
    }

    #[test]
    fn a_segments_long_header_names_its_cluster() {
        let mut segment = vec![0u8; 64];
        segment[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
        segment[24..32].copy_from_slice(&7_001u64.to_le_bytes());
        assert_eq!(wal_segment_system_identifier(&segment), Some(7_001));
        segment[2..4].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(wal_segment_system_identifier(&segment), None);
        assert_eq!(
            wal_segment_system_identifier(b"1\t0/3000000\tno recovery"),
            None
        );
        assert_eq!(wal_segment_system_identifier(&[0, 0, 2]), None);
    }

    fn options(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn recovery_settings_follow_the_options_and_refuse_nonsense() {
        let settings = recovery_settings(&options(&[
            ("restore-command", "backstop --repo '/r' wal-fetch %f %p"),
            ("target-time", "2024-01-01 10:00:00+00"),
        ]))
        .unwrap();
        assert_eq!(
            settings,
            vec![
                (
                    "restore_command".to_owned(),
                    "backstop --repo '/r' wal-fetch %f %p".to_owned()
                ),
                (
                    "recovery_target_time".to_owned(),
                    "2024-01-01 10:00:00+00".to_owned()
                ),
                ("recovery_target_action".to_owned(), "promote".to_owned()),
            ]
        );
        assert_eq!(quote_conf_value(r"a'b\c"), r"a''b\\c");
        let plain = recovery_settings(&BTreeMap::new()).unwrap();
        assert_eq!(
            plain,
            vec![("restore_command".to_owned(), "false".to_owned())]
        );
        for bad in [
            options(&[("target-time", "x"), ("target-lsn", "0/1")]),
            options(&[("target-lsn", "nope")]),
            options(&[("target-xid", "12a")]),
            options(&[("target", "latest")]),
            options(&[("target-action", "pause")]),
            options(&[("target-name", "a"), ("target-action", "explode")]),
            options(&[("target-tme", "2024-01-01")]),
            options(&[("restore-command", "a\nb")]),
        ] {
            assert!(recovery_settings(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn restore_fixup_writes_recovery_settings_and_places_tablespaces() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("data");
        std::fs::create_dir_all(target.join("pg_tblspc/16400/PG_15_1/5")).unwrap();
        std::fs::write(target.join("pg_tblspc/16400/PG_15_1/5/16401"), b"page").unwrap();
        std::fs::write(target.join("PG_VERSION"), b"15\n").unwrap();
        std::fs::write(target.join("backup_label"), b"START TIMELINE: 1\n").unwrap();
        std::fs::write(target.join("tablespace_map"), b"16400 /nowhere\n").unwrap();
        std::fs::write(target.join("postmaster.pid"), b"42\n").unwrap();
        std::fs::write(target.join("postgresql.auto.conf"), b"work_mem = '8MB'").unwrap();
        let profile = RestoreProfile::new("postgres")
            .with_param("tablespace.16400", "/nowhere/ts")
            .with_param("data-dir-mode", "700");
        let elsewhere = dir.path().join("ts-new");
        let params = RestoreParams {
            raw: false,
            options: options(&[
                ("restore-command", "fetch %f %p"),
                ("target-lsn", "0/3000000"),
                ("target-action", "pause"),
                ("tablespace-16400", elsewhere.to_str().unwrap()),
            ]),
        };
        let steps = crate::restore_profile::apply(&profile, &target, &params).unwrap();
        assert!(!steps.is_empty());
        assert!(target.join("recovery.signal").is_file());
        assert!(!target.join("postmaster.pid").exists());
        assert!(!target.join("tablespace_map").exists());
        assert!(target.join("pg_wal/archive_status").is_dir());
        assert!(target.join("pg_replslot").is_dir());
        let conf = std::fs::read_to_string(target.join("postgresql.auto.conf")).unwrap();
        assert!(conf.starts_with("work_mem = '8MB'\n"), "{conf}");
        assert!(conf.contains("restore_command = 'fetch %f %p'\n"), "{conf}");
        assert!(
            conf.contains("recovery_target_lsn = '0/3000000'\n"),
            "{conf}"
        );
        assert!(
            conf.contains("recovery_target_action = 'pause'\n"),
            "{conf}"
        );
        let link = std::fs::read_link(target.join("pg_tblspc/16400")).unwrap();
        assert_eq!(link, elsewhere);
        assert_eq!(
            std::fs::read(elsewhere.join("PG_15_1/5/16401")).unwrap(),
            b"page"
        );
        let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);

        // A tablespace cannot land on a directory that is in use.
        let busy = tempfile::tempdir().unwrap();
        std::fs::write(busy.path().join("x"), b"x").unwrap();
        let target2 = dir.path().join("data2");
        std::fs::create_dir_all(target2.join("pg_tblspc/16400")).unwrap();
        std::fs::write(target2.join("PG_VERSION"), b"15\n").unwrap();
        std::fs::write(target2.join("backup_label"), b"x").unwrap();
        let profile = RestoreProfile::new("postgres")
            .with_param("tablespace.16400", busy.path().to_str().unwrap());
        let err = restore_fixup(&profile, &target2, &RestoreParams::default()).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        assert!(!target2.join("recovery.signal").exists());
    }

    /// A restored data directory with the files the fix-up needs.
    fn minimal_data_dir(parent: &Path) -> PathBuf {
        let target = parent.join("data");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(target.join("PG_VERSION"), b"15\n").unwrap();
        std::fs::write(target.join("backup_label"), b"START TIMELINE: 1\n").unwrap();
        target
    }

    /// `recovery.signal` or `postgresql.auto.conf` stored as symlinks: the fix-up refuses and
    /// neither truncates, chmods nor appends to what they point to.
    #[test]
    fn restore_fixup_never_writes_through_a_stored_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        for name in ["recovery.signal", "postgresql.auto.conf", "postmaster.pid"] {
            std::fs::write(&victim, b"precious data\n").unwrap();
            std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
            let target = minimal_data_dir(&dir.path().join(name));
            std::os::unix::fs::symlink(&victim, target.join(name)).unwrap();
            let err = restore_fixup(
                &RestoreProfile::new("postgres"),
                &target,
                &RestoreParams::default(),
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains("symlink") && err.contains(name), "{err}");
            assert_eq!(
                std::fs::read(&victim).unwrap(),
                b"precious data\n",
                "{name}"
            );
            let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o644, "{name}");
        }
        // A directory the fix-up creates in, stored as a link to one outside.
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let target = minimal_data_dir(&dir.path().join("wal"));
        std::os::unix::fs::symlink(&outside, target.join("pg_wal")).unwrap();
        let err = restore_fixup(
            &RestoreProfile::new("postgres"),
            &target,
            &RestoreParams::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(!outside.join("archive_status").exists());
    }

    /// A tablespace id from the profile that is not an OID, or a recorded location that is not
    /// a plain absolute path outside the data directory, is refused before anything moves.
    #[test]
    fn restore_fixup_refuses_tablespace_ids_and_locations_that_escape() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home-alice");
        std::fs::create_dir(&home).unwrap();
        std::fs::write(home.join("thesis.tex"), b"years of work").unwrap();
        let elsewhere = dir.path().join("gone");
        let target = minimal_data_dir(dir.path());
        let hostile = [
            (
                format!("tablespace.{}", home.display()),
                elsewhere.display().to_string(),
            ),
            (
                "tablespace.../../home-alice".to_owned(),
                elsewhere.display().to_string(),
            ),
            ("tablespace.16400".to_owned(), "/".to_owned()),
            (
                "tablespace.16400".to_owned(),
                format!("{}/../x", dir.path().display()),
            ),
            (
                "tablespace.16400".to_owned(),
                target.join("base").display().to_string(),
            ),
            (
                "tablespace.16400".to_owned(),
                dir.path().display().to_string(),
            ),
        ];
        for (key, location) in hostile {
            let profile = RestoreProfile::new("postgres").with_param(&key, &location);
            let err = restore_fixup(&profile, &target, &RestoreParams::default()).unwrap_err();
            assert!(
                matches!(err, SourceError::Procedure(_)),
                "{key}={location}: {err}"
            );
            assert!(home.join("thesis.tex").exists(), "{key}={location}");
            assert!(!elsewhere.exists(), "{key}={location}");
            assert!(!target.join("recovery.signal").exists(), "{key}={location}");
        }
        // `pg_tblspc` itself a link to a directory outside: the tablespace is not taken from it.
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(outside.join("16400/PG_15_1")).unwrap();
        std::os::unix::fs::symlink(&outside, target.join("pg_tblspc")).unwrap();
        let profile = RestoreProfile::new("postgres")
            .with_param("tablespace.16400", elsewhere.display().to_string());
        let err = restore_fixup(&profile, &target, &RestoreParams::default()).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert!(outside.join("16400/PG_15_1").is_dir());
        assert!(!elsewhere.exists());
    }

    /// Dropping a session (an error, a cancel or a panic in the engine) ends the backup and
    /// drops the replication slot, so the server keeps no hold and a new backup can start.
    #[test]
    fn dropping_a_session_releases_the_backup_and_the_slot() {
        if !pg_cluster::require_postgres() {
            return;
        }
        let tmp = pg_cluster::tempdir();
        let mut primary = PgCluster::init(&tmp.path().join("primary"), &[]);
        primary.start(&[]);
        let mut source = PostgresSource::new(primary.conninfo()).with_fast_checkpoint(true);
        let mut session = source.begin(&SessionContext::default()).unwrap();
        assert!(session.next_phase().unwrap().is_some());
        assert_eq!(
            primary.psql("SELECT count(*) FROM pg_replication_slots"),
            "1"
        );
        drop(session);
        pg_cluster::wait_for("the server to drop the slot", || {
            primary.psql("SELECT count(*) FROM pg_replication_slots") == "0"
        });

        // Finishing before the WAL phase is stored is refused: that backup is incomplete.
        let session = source.begin(&SessionContext::default()).unwrap();
        assert!(session.finish().is_err());

        let cancel = crate::CancelToken::new();
        let ctx = SessionContext {
            cancel: cancel.clone(),
            ..SessionContext::default()
        };
        let mut session = source.begin(&ctx).unwrap();
        cancel.cancel();
        assert!(matches!(session.next_phase(), Err(SourceError::Cancelled)));
        drop(session);

        let copy = tmp.path().join("copy");
        let session = source.begin(&SessionContext::default()).unwrap();
        let copied = crate::testing::copy_session(session, &copy).unwrap();
        assert_eq!(copied.phases.len(), 2);
    }

    /// The whole procedure against a real server under pgbench load, copied with
    /// `copy_session` (no repository in between), then restored and checked by PostgreSQL.
    #[test]
    fn base_backup_under_load_restores_consistent() {
        if !pg_cluster::require_postgres() {
            return;
        }
        let tmp = pg_cluster::tempdir();
        let (primary, ts_oid) = PgCluster::primary_with_tablespace(tmp.path(), 5000);
        primary.psql("CREATE UNLOGGED TABLE scratch (id int); INSERT INTO scratch VALUES (1)");

        let load = primary.pgbench_load(2, 120, Some(300));
        let committed_before = primary.history_rows();
        let mut source = PostgresSource::new(primary.conninfo()).with_fast_checkpoint(true);
        let session = source.begin(&SessionContext::default()).unwrap();
        let restored_root = tmp.path().join("restored");
        let mut restored = PgCluster::at(&restored_root);
        let copied = crate::testing::copy_session(session, restored.data_dir()).unwrap();
        load.stop();

        let names: Vec<&str> = copied
            .phases
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(names, ["data", "wal"]);
        let data = &copied.phases[0].1;
        let wal = &copied.phases[1].1;
        assert_eq!(data.last().map(String::as_str), Some("global/pg_control"));
        assert!(data.iter().any(|p| p == "pg_wal/archive_status"));
        assert!(
            !data.iter().any(|p| p.starts_with("pg_wal/0")),
            "WAL in the data phase"
        );
        assert!(
            !data
                .iter()
                .any(|p| p == "postmaster.pid" || p == "postmaster.opts")
        );
        assert!(
            data.iter()
                .any(|p| p.starts_with(&format!("pg_tblspc/{ts_oid}/PG_15_")))
        );
        let unlogged = primary.psql("SELECT pg_relation_filepath('scratch')");
        assert!(
            !data.contains(&unlogged),
            "unlogged main fork {unlogged} was copied"
        );
        assert!(data.contains(&format!("{unlogged}_init")));
        assert_eq!(wal.first().map(String::as_str), Some("backup_label"));
        assert!(wal.iter().any(|p| p == "tablespace_map"));
        let meta = &copied.outcome.source_meta;
        let start = meta["wal-start-segment"].clone();
        let stop = meta["wal-stop-segment"].clone();
        assert!(
            wal.contains(&format!("pg_wal/{start}")) && wal.contains(&format!("pg_wal/{stop}"))
        );
        assert_eq!(meta["data-checksums"], "on");
        assert_eq!(meta["timeline"], "1");
        assert_eq!(
            meta["system-identifier"],
            primary.psql("SELECT system_identifier FROM pg_control_system()")
        );
        assert!(parse_lsn(&meta["stop-lsn"]).unwrap() > parse_lsn(&meta["start-lsn"]).unwrap());
        // The temporary slot went with the session.
        assert_eq!(
            primary.psql("SELECT count(*) FROM pg_replication_slots"),
            "0"
        );

        let ts_restored = tmp.path().join("ts-restored");
        let params = RestoreParams {
            raw: false,
            options: options(&[
                (
                    &format!("tablespace-{ts_oid}"),
                    ts_restored.to_str().unwrap(),
                ),
                ("archive-mode", "off"),
            ]),
        };
        crate::restore_profile::apply(
            &copied.outcome.restore_profile,
            restored.data_dir(),
            &params,
        )
        .unwrap();
        pg_cluster::give_to_server_user(&restored_root);
        pg_cluster::give_to_server_user(&ts_restored);
        restored.start(&[]);
        restored.wait_until_promoted();
        restored.amcheck().unwrap();
        let sums = restored.pgbench_sums();
        assert!(
            sums.iter().all(|s| *s == sums[0]),
            "pgbench invariant broken: {sums:?}"
        );
        let restored_rows = restored.history_rows();
        eprintln!(
            "restored: WAL {start}..{stop}, {} bytes copied, {restored_rows} pgbench \
             transactions (>= {committed_before} committed before the backup), sums {sums:?}",
            copied.bytes
        );
        assert!(restored_rows >= committed_before);
        assert_eq!(restored.psql("SELECT count(*) FROM in_ts"), "5000");
        assert_eq!(restored.psql("SELECT count(*) FROM scratch"), "0");
    }
}
