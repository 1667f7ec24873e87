//! Backstop: hot, consistent, incremental, verified backups of live databases.
//!
//! The engine stores backups of a [`Source`] (a directory, or a database following its own
//! hot-backup procedure) in a deduplicated, checksummed, optionally compressed and encrypted
//! repository on any [`Store`], and restores them so that the database opens consistent.
//!
//! - [`BackupEngine`] creates backups, deletes them, collects garbage and manages keys;
//!   [`ReadOnlyEngine`] lists, verifies and restores; [`RepairEngine`] rebuilds a lost or
//!   damaged index from the packs.
//! - [`RetentionPolicy`] says which backups to keep of each source ([`SourceGroup`]);
//!   [`ReadOnlyEngine::plan_retention`] turns it into a [`RetentionPlan`] (the dry run) and
//!   [`BackupEngine::apply_retention`] deletes what the plan deletes.
//! - [`Store`] is where bytes live: [`LocalStore`], [`MemoryStore`], object stores.
//! - [`Source`] is a hot-backup session of one database; [`DirSource`] backs up a directory.
//!
//! ```
//! use backstop::{BackupEngine, BackupOptions, DirSource, EngineOptions, InitOptions};
//! use backstop::{MemoryStore, RestoreOptions, VerifyLevel};
//!
//! let data = tempfile::tempdir()?;
//! std::fs::write(data.path().join("hello.txt"), b"hello, backup")?;
//!
//! let engine = BackupEngine::init(
//!     MemoryStore::new(),
//!     InitOptions::default().with_password("correct horse").with_kdf(8 * 1024, 1),
//!     EngineOptions::default(),
//! )?;
//! let info = engine.create_backup(
//!     &mut DirSource::new(data.path()),
//!     &BackupOptions::default().with_tag("nightly"),
//! )?;
//! assert_eq!(engine.list_backups()?.len(), 1);
//! assert!(engine.verify(info.id, VerifyLevel::Full)?.is_ok());
//!
//! let target = tempfile::tempdir()?;
//! engine.restore(info.id, target.path(), &RestoreOptions::default())?;
//! assert_eq!(std::fs::read(target.path().join("hello.txt"))?, b"hello, backup");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod archive;
mod backup;
mod beneath;
mod blob_set;
mod budget;
mod chunk;
mod compress;
mod copy;
mod crypto;
mod diff;
mod engine;
mod entry_table;
mod error;
mod format;
mod gc;
mod info;
mod options;
mod pack_reader;
mod pack_writer;
mod page_list;
mod parent;
mod progress;
mod repair;
mod repo;
mod restore;
mod retention;
mod verify;

#[doc(hidden)]
pub mod testing_support;

pub use backstop_source::{
    self as source, CancelToken, ChangeModel, Content, Entry, EntryKind, Phase, RestoreProfile,
    Session, SessionContext, SessionOutcome, Source, SourceError, dir::DirSource,
};
pub use backstop_store::{
    self as store, LocalStore, LocalStoreOptions, MemoryStore, PutMode, Store, StoreError,
    StoreErrorKind,
};
pub use engine::{BackupEngine, ReadOnlyEngine, RepairEngine};
pub use error::{Error, ErrorKind, Result};
pub use info::{
    ArchivePut, BackupDiff, BackupId, BackupInfo, BackupSelector, Change, ChangeKind, CopyReport,
    DamagedFiles, FileInfo, GcReport, KeyInfo, RepairReport, RepositoryInfo, RestoreInfo,
    VerifyReport,
};
pub use options::{
    BackupOptions, Cipher, CopyOptions, EngineOptions, ExistingTarget, GcOptions, InitOptions,
    RepairOptions, RestoreOptions, VerifyLevel, VerifyOptions,
};
pub use progress::{NoProgress, Progress};
pub use retention::{GroupPlan, RetentionPlan, RetentionPolicy, SourceGroup};
