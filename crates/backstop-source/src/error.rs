//! Errors of hot-backup sessions and restore fix-ups.

use std::path::PathBuf;

/// A failure in a source: the database refused, a file could not be read, a hold failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// A filesystem operation on `path` failed.
    #[error("{action} `{}`", path.display())]
    Io {
        /// What was being done ("reading", "listing", "hard-linking").
        action: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The database client or server reported an error.
    #[error("{context}")]
    Database {
        /// What was being done.
        context: String,
        /// The driver's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The backup or restore procedure cannot go on (with why and what to do).
    #[error("{0}")]
    Procedure(String),
    /// A pause, resume or hold command failed or timed out.
    #[error("{0}")]
    Hold(String),
    /// An external tool (`db5.3_recover`, `pg_ctl`, …) failed.
    #[error("`{program}` failed: {detail}")]
    Tool {
        /// The program run.
        program: String,
        /// Its exit status and the tail of its stderr.
        detail: String,
    },
    /// The work was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl SourceError {
    /// Shorthand for an I/O error on a path.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Shorthand for a database driver error.
    pub fn database(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Database {
            context: context.into(),
            source: Box::new(source),
        }
    }
}
