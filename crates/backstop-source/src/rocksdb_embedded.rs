//! A `rocksdb::DB` that the application itself holds open, backed up through RocksDB's
//! checkpoint API: what RocksDB's `BackupEngine::CreateNewBackup(db, flush_before_backup)` does,
//! with the engine's compression, encryption, deduplication and stores.
//!
//! A checkpoint is a directory RocksDB fills with hard links to the live table and blob files and
//! with copies of the MANIFEST, `CURRENT`, OPTIONS and WAL files, all taken at one moment while
//! file deletions are held off; it opens as the database at that moment. The checkpoint is made
//! in a hidden directory on the database's filesystem (hard links), stored in the same two phases
//! as the outside source ([`crate::rocksdb`]): the table and blob files first, as immutable files
//! with the same identity (so a file either source stored is never read again, and both share one
//! parent chain: the kind is `rocksdb`, the identity the canonical database path), then the small
//! files. The checkpoint directory is removed when the session ends or is dropped.
//!
//! rust-rocksdb's `Checkpoint::create_checkpoint` asks RocksDB to flush the memtables whenever
//! any WAL exists (`log_size_for_flush = 0`), so the WAL of a checkpoint is small already;
//! [`EmbeddedRocksDb::with_flush_before_backup`] adds an explicit, synced flush of the WAL and
//! every column family's memtable before it, as `flush_before_backup` does in RocksDB.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::DB;
use rocksdb::checkpoint::Checkpoint;

/// The rust-rocksdb crate this source is built against (0.20, linking the system librocksdb):
/// open the database with it so the types match.
pub use rocksdb;

use crate::{
    ChangeModel, Entry, Phase, RestoreProfile, Session, SessionContext, SessionOutcome, Source,
    SourceError,
};

/// Names of checkpoint directories start with this (the outside source and RocksDB ignore it).
pub const CHECKPOINT_PREFIX: &str = ".backstop-checkpoint-";

/// A `rocksdb::DB` held by the application, as a backup source.
pub struct EmbeddedRocksDb {
    db: Arc<DB>,
    db_path: PathBuf,
    flush_before_backup: bool,
    checkpoint_dir: Option<PathBuf>,
}

impl std::fmt::Debug for EmbeddedRocksDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedRocksDb")
            .field("db_path", &self.db_path)
            .field("flush_before_backup", &self.flush_before_backup)
            .field("checkpoint_dir", &self.checkpoint_dir)
            .finish_non_exhaustive()
    }
}

impl EmbeddedRocksDb {
    /// A source for `db`, which the application opened at `db_path`.
    pub fn new(db: Arc<DB>, db_path: impl Into<PathBuf>) -> Self {
        Self {
            db,
            db_path: db_path.into(),
            flush_before_backup: false,
            checkpoint_dir: None,
        }
    }

    /// Flushes the WAL (synced) and every memtable before the checkpoint (default: off; the
    /// checkpoint itself flushes the memtables, see the module documentation).
    #[must_use]
    pub fn with_flush_before_backup(mut self, flush: bool) -> Self {
        self.flush_before_backup = flush;
        self
    }

    /// Makes checkpoints in hidden directories under `dir`, which must be on the database's
    /// filesystem (default: beside the database directory).
    #[must_use]
    pub fn with_checkpoint_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.checkpoint_dir = Some(dir.into());
        self
    }

    fn canonical_path(&self) -> Result<PathBuf, SourceError> {
        std::fs::canonicalize(&self.db_path)
            .map_err(|e| SourceError::io("opening the RocksDB directory", &self.db_path, e))
    }

    fn flush(&self) -> Result<(), SourceError> {
        self.db.flush_wal(true).map_err(|e| {
            SourceError::database(
                format!("flushing the WAL of `{}`", self.db_path.display()),
                e,
            )
        })?;
        // `DB::flush` covers only the default column family.
        let mut names = DB::list_cf(&rocksdb::Options::default(), self.db.path())
            .unwrap_or_else(|_| vec![rocksdb::DEFAULT_COLUMN_FAMILY_NAME.to_owned()]);
        names.retain(|n| n != rocksdb::DEFAULT_COLUMN_FAMILY_NAME);
        self.db.flush().map_err(|e| {
            SourceError::database(
                format!("flushing the memtable of `{}`", self.db_path.display()),
                e,
            )
        })?;
        for name in names {
            if let Some(cf) = self.db.cf_handle(&name) {
                self.db.flush_cf(cf).map_err(|e| {
                    SourceError::database(
                        format!(
                            "flushing column family `{name}` of `{}`",
                            self.db_path.display()
                        ),
                        e,
                    )
                })?;
            }
        }
        Ok(())
    }
}

impl Source for EmbeddedRocksDb {
    fn kind(&self) -> &str {
        "rocksdb"
    }

    fn identity(&self) -> String {
        self.canonical_path()
            .unwrap_or_else(|_| self.db_path.clone())
            .to_string_lossy()
            .into_owned()
    }

    fn begin(&mut self, _ctx: &SessionContext) -> Result<Box<dyn Session + '_>, SourceError> {
        let db_path = self.canonical_path()?;
        let opened = std::fs::canonicalize(self.db.path())
            .map_err(|e| SourceError::io("opening the RocksDB directory", self.db.path(), e))?;
        if opened != db_path {
            return Err(SourceError::Procedure(format!(
                "the database was opened at `{}` but the source names `{}`; pass the path the \
                 database was opened with",
                opened.display(),
                db_path.display()
            )));
        }
        if self.flush_before_backup {
            self.flush()?;
        }
        let parent = match &self.checkpoint_dir {
            Some(dir) => dir.clone(),
            None => db_path.parent().unwrap_or(&db_path).to_path_buf(),
        };
        let db_name = db_path
            .file_name()
            .map_or_else(|| "db".into(), |n| n.to_string_lossy());
        let holder = tempfile::Builder::new()
            .prefix(&format!("{CHECKPOINT_PREFIX}{db_name}-"))
            .tempdir_in(&parent)
            .map_err(|e| {
                SourceError::io(
                    "creating a checkpoint directory (it must be on the database's filesystem) in",
                    &parent,
                    e,
                )
            })?;
        // RocksDB creates the checkpoint directory itself and refuses one that exists.
        let checkpoint = holder.path().join("checkpoint");
        Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(&checkpoint))
            .map_err(|e| {
                SourceError::database(
                    format!(
                        "creating a RocksDB checkpoint of `{}` in `{}` (it must be on the \
                         database's filesystem; choose another with `with_checkpoint_dir`)",
                        db_path.display(),
                        checkpoint.display()
                    ),
                    e,
                )
            })?;
        let session = EmbeddedSession::new(&checkpoint, holder, self.flush_before_backup)?;
        tracing::debug!(db = %db_path.display(), checkpoint = %checkpoint.display(), "rocksdb checkpoint taken");
        Ok(Box::new(session))
    }
}

/// A checkpoint being stored; dropping it removes the checkpoint directory.
#[derive(Debug)]
struct EmbeddedSession {
    phases: VecDeque<Phase>,
    outcome: SessionOutcome,
    holder: Option<tempfile::TempDir>,
}

impl EmbeddedSession {
    fn new(
        checkpoint: &Path,
        holder: tempfile::TempDir,
        flushed: bool,
    ) -> Result<Self, SourceError> {
        let mut names = Vec::new();
        let read = std::fs::read_dir(checkpoint)
            .map_err(|e| SourceError::io("listing the checkpoint", checkpoint, e))?;
        for item in read {
            let item =
                item.map_err(|e| SourceError::io("listing the checkpoint", checkpoint, e))?;
            names.push(item.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        let (mut tables, mut logs) = (Vec::<Entry>::new(), Vec::<Entry>::new());
        for name in &names {
            match crate::rocksdb::checkpoint_entry(name, &checkpoint.join(name))? {
                Some(e) if matches!(e.change, ChangeModel::Immutable { .. }) => tables.push(e),
                Some(e) => logs.push(e),
                None => {}
            }
        }
        let current_path = checkpoint.join("CURRENT");
        let current = std::fs::read_to_string(&current_path)
            .map_err(|e| SourceError::io("reading CURRENT of the checkpoint", &current_path, e))?;
        let manifest = current.trim_end().to_owned();
        let wal_bytes: u64 = logs
            .iter()
            .filter(|e| e.path.ends_with(".log"))
            .map(|e| e.size)
            .sum();
        let mut meta = BTreeMap::new();
        meta.insert("manifest".to_owned(), manifest.clone());
        meta.insert("table_files".to_owned(), tables.len().to_string());
        meta.insert("wal_bytes".to_owned(), wal_bytes.to_string());
        meta.insert("flush_before_backup".to_owned(), flushed.to_string());
        meta.insert("method".to_owned(), "checkpoint".to_owned());
        let outcome = SessionOutcome {
            restore_profile: RestoreProfile::new("rocksdb").with_param("manifest", manifest),
            source_meta: meta,
            pause_window: None,
            warnings: Vec::new(),
        };
        Ok(Self {
            phases: VecDeque::from([Phase::new("sst", tables), Phase::new("manifest+wal", logs)]),
            outcome,
            holder: Some(holder),
        })
    }
}

impl Session for EmbeddedSession {
    fn next_phase(&mut self) -> Result<Option<Phase>, SourceError> {
        Ok(self.phases.pop_front())
    }

    fn finish(mut self: Box<Self>) -> Result<SessionOutcome, SourceError> {
        let mut outcome = std::mem::take(&mut self.outcome);
        if let Some(holder) = self.holder.take() {
            let path = holder.path().to_path_buf();
            if let Err(e) = holder.close() {
                outcome.warnings.push(format!(
                    "could not remove the checkpoint directory `{}`: {e}; remove it by hand",
                    path.display()
                ));
            }
        }
        Ok(outcome)
    }
}
