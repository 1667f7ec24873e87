//! The one error type every store returns, with a kind the repository layer can act on.

use std::fmt;

/// What kind of failure a store reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// No object under the key.
    NotFound,
    /// `PutMode::Create` found an object under the key.
    AlreadyExists,
    /// A range that is not inside the object.
    InvalidRange,
    /// The key breaks the key rules.
    InvalidKey,
    /// Timeouts, throttling, server errors: a retry may succeed.
    Transient,
    /// Credentials were refused.
    PermissionDenied,
    /// No space left on the device or quota exceeded.
    StorageFull,
    /// Anything else (I/O errors, protocol errors).
    Other,
}

/// A store failure: the kind, the key it concerns and what happened.
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    key: String,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// A new error without an underlying cause.
    pub fn new(kind: StoreErrorKind, key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind,
            key: key.into(),
            message: message.into(),
            source: None,
        }
    }

    /// A new error caused by `source`.
    pub fn with_source(
        kind: StoreErrorKind,
        key: impl Into<String>,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind,
            key: key.into(),
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// Maps an I/O error on `key` to a store error of the matching kind.
    pub fn from_io(
        key: impl Into<String>,
        message: impl Into<String>,
        err: std::io::Error,
    ) -> Self {
        let kind = match err.kind() {
            std::io::ErrorKind::NotFound => StoreErrorKind::NotFound,
            std::io::ErrorKind::AlreadyExists => StoreErrorKind::AlreadyExists,
            std::io::ErrorKind::PermissionDenied => StoreErrorKind::PermissionDenied,
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                StoreErrorKind::StorageFull
            }
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted => {
                StoreErrorKind::Transient
            }
            _ => StoreErrorKind::Other,
        };
        Self::with_source(kind, key, message, err)
    }

    /// The kind of failure.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// The key the failure concerns (empty for store-wide failures).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether a retry may succeed.
    pub fn is_transient(&self) -> bool {
        self.kind == StoreErrorKind::Transient
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{} (object `{}`)", self.message, self.key)
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
