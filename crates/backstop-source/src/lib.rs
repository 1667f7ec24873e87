//! Hot-backup sessions: what a database needs stored, in which order, and how to restore it.
//!
//! A [`Source`] is one database (or a plain directory). [`Source::begin`] opens a hot-backup
//! [`Session`], which holds whatever the database's procedure needs for the duration (a paused
//! application, a `pg_backup_start` session, hard links that keep deleted files alive) and yields
//! the entries to store in **phases**: the engine stores every entry of one phase completely
//! before it asks for the next, so a procedure such as "checkpoints first, then chunks" or "data
//! files, then logs" cannot run in the wrong order. Each entry says how its file may change while
//! it is read ([`ChangeModel`]); the engine chooses chunking and re-read rules from that.
//!
//! [`Session::finish`] returns a [`RestoreProfile`]: the fix-ups a restore must apply once the
//! files are back (`truncate.chk`, catastrophic recovery, `recovery.signal`, …). The profile is
//! stored in the snapshot, so a restore months later applies the same procedure;
//! [`restore_profile::apply`] runs it.
//!
//! Dropping a session releases everything it holds; that is the path taken on errors, on
//! cancellation and on panics, so a hold can never outlive the backup.

mod cancel;
pub mod dir;
mod entry;
mod error;
pub mod eventstore;
pub mod group;
pub mod hold;
pub mod in_use;
pub mod own_locks;
pub mod recognise;
pub mod restore_profile;
mod restored;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(feature = "bdb")]
pub mod bdb;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "rocksdb-dir")]
pub mod rocksdb;
#[cfg(feature = "rocksdb-embedded")]
pub mod rocksdb_embedded;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use cancel::CancelToken;
pub use entry::{
    ChangeModel, Content, Entry, EntryKind, EntryScan, EntryStream, FsIdentity, Phase, tree_order,
};
pub use error::SourceError;
pub use restore_profile::{RestoreParams, RestoreProfile};
pub use restored::is_safe_path;

use std::collections::BTreeMap;
use std::io::Read;
use std::time::SystemTime;

/// One database or directory that can be backed up.
pub trait Source: Send {
    /// The source kind recorded in snapshots: `dir`, `sqlite`, `postgres`, `bdb`, `rocksdb`,
    /// `eventstore`, `group`.
    fn kind(&self) -> &str;

    /// What identifies this source across backups (a canonical path or a URL without password).
    /// The engine uses the latest snapshot with the same kind and identity as the parent of an
    /// incremental backup.
    fn identity(&self) -> String;

    /// Starts a hot-backup session.
    fn begin(&mut self, ctx: &SessionContext) -> Result<Box<dyn Session + '_>, SourceError>;
}

/// What the engine tells a source when a session begins.
#[derive(Clone, Debug, Default)]
pub struct SessionContext {
    /// Set when the user cancels; long waits inside a source must watch it.
    pub cancel: CancelToken,
    /// `source_meta` of the parent snapshot (the previous backup of the same source), if any.
    pub parent_meta: Option<BTreeMap<String, String>>,
    /// Read every file even if its identity says it is unchanged.
    pub full_read: bool,
}

/// A hot-backup session in progress. Dropping it releases every hold.
pub trait Session: Send + Sync {
    /// The next phase to store, asked for only after the previous phase is completely stored;
    /// `None` when there is nothing more.
    fn next_phase(&mut self) -> Result<Option<Phase>, SourceError>;

    /// Opens an entry whose content is [`Content::Session`].
    fn open(&self, handle: u64) -> Result<Box<dyn Read + Send>, SourceError> {
        Err(SourceError::Procedure(format!(
            "this source has no session content (handle {handle})"
        )))
    }

    /// Ends the session after every phase is stored, releasing holds, and returns what the
    /// snapshot must record.
    fn finish(self: Box<Self>) -> Result<SessionOutcome, SourceError>;
}

/// What a finished session hands to the snapshot.
#[derive(Clone, Debug, Default)]
pub struct SessionOutcome {
    /// Fix-ups to apply after a restore.
    pub restore_profile: RestoreProfile,
    /// Facts for the next incremental backup and for restore (log positions, LSNs), recorded
    /// in the snapshot as `source_meta`.
    pub source_meta: BTreeMap<String, String>,
    /// Start and end of the window in which writers were paused, if they were.
    pub pause_window: Option<(SystemTime, SystemTime)>,
    /// Things the user should know (a file that vanished, a log gap that forced a full backup).
    pub warnings: Vec<String>,
}
