//! The public error: one opaque type with a kind callers can match on.

use std::fmt;

use backstop_source::SourceError;
use backstop_store::{StoreError, StoreErrorKind};

/// What went wrong, in terms a caller can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A backup, object or key is missing (or the repository does not exist).
    NotFound,
    /// Something already exists (`init` on an initialised repository, a non-empty restore target).
    AlreadyExists,
    /// Another process holds the repository lock.
    Locked,
    /// Stored bytes fail their checksum, MAC or decoding.
    Corrupt,
    /// The password cannot open any key of the repository.
    WrongKey,
    /// The repository (or an object in it) has a newer format than this build understands.
    Incompatible,
    /// Timeouts, throttling, server errors: a retry may succeed.
    Transient,
    /// The database refused or broke the hot-backup session.
    Source,
    /// A path in a backup would escape the restore target, or other unsafe input.
    Unsafe,
    /// The caller asked for something that cannot be done (bad options).
    InvalidInput,
    /// The storage is full.
    StorageFull,
    /// The work was cancelled.
    Cancelled,
    /// Any other I/O failure.
    Io,
}

/// An error of the Backstop engine: a kind plus the precise failure, with its context.
pub struct Error {
    kind: ErrorKind,
    inner: Box<dyn std::error::Error + Send + Sync>,
}

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a precise error under a kind.
    pub fn new(
        kind: ErrorKind,
        inner: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            kind,
            inner: inner.into(),
        }
    }

    /// An error with a plain message.
    pub fn msg(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            inner: message.into().into(),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether a retry may succeed.
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("inner", &self.inner)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source()
    }
}

impl From<StoreError> for Error {
    fn from(err: StoreError) -> Self {
        let kind = match err.kind() {
            StoreErrorKind::NotFound => ErrorKind::NotFound,
            StoreErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            StoreErrorKind::Transient => ErrorKind::Transient,
            StoreErrorKind::StorageFull => ErrorKind::StorageFull,
            StoreErrorKind::InvalidRange => ErrorKind::Corrupt,
            _ => ErrorKind::Io,
        };
        Self::new(kind, err)
    }
}

impl From<SourceError> for Error {
    fn from(err: SourceError) -> Self {
        let kind = match &err {
            SourceError::Cancelled => ErrorKind::Cancelled,
            SourceError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
                ErrorKind::StorageFull
            }
            _ => ErrorKind::Source,
        };
        Self::new(kind, err)
    }
}

/// An error with the path it concerns, for I/O outside the store (restore targets, sources).
#[derive(Debug, thiserror::Error)]
#[error("{action} `{}`", path.display())]
pub(crate) struct PathError {
    pub(crate) action: &'static str,
    pub(crate) path: std::path::PathBuf,
    #[source]
    pub(crate) source: std::io::Error,
}

/// Builds an engine error from an I/O error on a path, keeping the path.
pub(crate) fn io_error(
    action: &'static str,
    path: impl Into<std::path::PathBuf>,
    source: std::io::Error,
) -> Error {
    let kind = match source.kind() {
        std::io::ErrorKind::NotFound => ErrorKind::NotFound,
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            ErrorKind::StorageFull
        }
        std::io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
        _ => ErrorKind::Io,
    };
    Error::new(
        kind,
        PathError {
            action,
            path: path.into(),
            source,
        },
    )
}
