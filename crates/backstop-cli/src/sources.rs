//! Builds the engine's source for `backup --source KIND`; the one place to add a source kind
//! or a source option.

use std::path::PathBuf;

use anyhow::Result;
use backstop::Source;

use crate::cli::SourceKind;
use crate::exit::{Code, Exit};

/// What `backup` was asked to read.
#[derive(Debug)]
pub(crate) struct SourceSpec {
    pub(crate) kind: SourceKind,
    /// A path, or a connection string for PostgreSQL.
    pub(crate) location: String,
    /// Glob patterns to leave out (directories only).
    pub(crate) excludes: Vec<String>,
    /// Whether the excludes came from the command line (an error for other kinds) rather than
    /// the config file (ignored for other kinds).
    pub(crate) excludes_from_flags: bool,
}

/// The source for `spec`.
pub(crate) fn build(spec: SourceSpec) -> Result<Box<dyn Source>> {
    use backstop::source::{bdb, eventstore, postgres, rocksdb, sqlite};

    if spec.kind != SourceKind::Dir && spec.excludes_from_flags {
        return Err(Exit::new(Code::Usage, "--exclude applies to `--source dir` only").into());
    }
    let path = PathBuf::from(&spec.location);
    Ok(match spec.kind {
        SourceKind::Dir => Box::new(backstop::DirSource::new(path).with_excludes(spec.excludes)),
        SourceKind::Sqlite => Box::new(sqlite::SqliteSource::new(path)),
        SourceKind::Postgres => Box::new(postgres::PostgresSource::new(spec.location)),
        SourceKind::Bdb => Box::new(bdb::BdbSource::new(path)),
        SourceKind::Rocksdb => Box::new(rocksdb::RocksDbSource::new(path)),
        SourceKind::Eventstore => Box::new(eventstore::EventStoreSource::new(path)),
    })
}
