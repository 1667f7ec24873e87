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
    /// Directories only: stay on the root's file system.
    pub(crate) one_file_system: bool,
    /// Directories only: leave out the contents of tagged cache directories.
    pub(crate) exclude_caches: bool,
    /// PostgreSQL: immediate checkpoint.
    pub(crate) fast_checkpoint: bool,
    /// PostgreSQL: the data directory as this machine sees it.
    pub(crate) pg_data_dir: Option<PathBuf>,
    /// PostgreSQL: the backup label.
    pub(crate) label: Option<String>,
    /// SQLite: the snapshot method.
    pub(crate) sqlite_method: Option<String>,
    /// Berkeley DB: where the utilities are.
    pub(crate) db_tools: Option<PathBuf>,
    /// Berkeley DB: extra data directories.
    pub(crate) data_dirs: Vec<PathBuf>,
    /// Pause hooks wrapped around the source, if any.
    pub(crate) hold: backstop::source::hold::HoldConfig,
}

/// The pause hooks asked for on the command line (empty when none).
pub(crate) fn hold_config(args: &crate::cli::HoldArgs) -> backstop::source::hold::HoldConfig {
    let mut config = backstop::source::hold::HoldConfig {
        pause_command: args.pause_command.clone(),
        resume_command: args.resume_command.clone(),
        hold_command: args.hold_command.clone(),
        ready_line: args.ready_line.clone(),
        ..backstop::source::hold::HoldConfig::default()
    };
    if let Some(timeout) = args.pause_timeout {
        config.pause_timeout = timeout;
    }
    if let Some(timeout) = args.window_timeout {
        config.window_timeout = timeout;
    }
    config
}

/// The source for `spec`.
pub(crate) fn build(spec: SourceSpec) -> Result<Box<dyn Source>> {
    use backstop::source::{bdb, eventstore, postgres, rocksdb, sqlite};

    if spec.kind != SourceKind::Dir && spec.excludes_from_flags {
        return Err(Exit::new(Code::Usage, "--exclude applies to `--source dir` only").into());
    }
    if spec.kind != SourceKind::Dir && (spec.one_file_system || spec.exclude_caches) {
        return Err(Exit::new(
            Code::Usage,
            "--one-file-system and --exclude-caches apply to `--source dir` only",
        )
        .into());
    }
    let path = PathBuf::from(&spec.location);
    let source: Box<dyn Source> = match spec.kind {
        SourceKind::Dir => Box::new(
            backstop::DirSource::new(path)
                .with_excludes(spec.excludes)
                .with_one_file_system(spec.one_file_system)
                .with_exclude_caches(spec.exclude_caches)
                // Writers paused by the hooks leave a consistent copy, open database or not.
                .with_live_database_warnings(spec.hold.is_empty()),
        ),
        SourceKind::Sqlite => {
            let mut source = sqlite::SqliteSource::new(path);
            if let Some(method) = &spec.sqlite_method {
                let method: sqlite::SqliteMethod = method.parse().map_err(|e| {
                    Exit::new(Code::Usage, format!("--sqlite-method {method}: {e}"))
                })?;
                source = source.with_method(method);
            }
            Box::new(source)
        }
        SourceKind::Postgres => {
            let mut source = postgres::PostgresSource::new(spec.location)
                .with_fast_checkpoint(spec.fast_checkpoint);
            if let Some(dir) = spec.pg_data_dir {
                source = source.with_data_dir(dir);
            }
            if let Some(label) = spec.label {
                source = source.with_label(label);
            }
            Box::new(source)
        }
        SourceKind::Bdb => {
            let mut source =
                bdb::BdbSource::new(path).with_tools(bdb_tools(spec.db_tools.as_deref()));
            for dir in spec.data_dirs {
                source = source.with_data_dir(dir);
            }
            Box::new(source)
        }
        SourceKind::Rocksdb => Box::new(rocksdb::RocksDbSource::new(path)),
        SourceKind::Eventstore => Box::new(eventstore::EventStoreSource::new(path)),
    };
    if spec.hold.is_empty() {
        return Ok(source);
    }
    Ok(Box::new(backstop::source::hold::Held::from_box(
        source, spec.hold,
    )))
}

/// The Berkeley DB utilities: in `dir` if given, else on PATH.
pub(crate) fn bdb_tools(dir: Option<&std::path::Path>) -> backstop::source::bdb::BdbTools {
    match dir {
        Some(dir) => backstop::source::bdb::BdbTools::in_dir(dir),
        None => backstop::source::bdb::BdbTools::from_path(),
    }
}
