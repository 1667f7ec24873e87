//! Opens a store from the URL a user gives: a path, `file://`, `memory://` or `s3://`.

use std::path::PathBuf;
use std::sync::Arc;

use crate::{LocalStore, MemoryStore, Store, StoreError, StoreErrorKind};

/// The URL schemes [`open_url`] understands in this build (a plain path needs none).
#[cfg(feature = "s3")]
pub const SUPPORTED_SCHEMES: &[&str] = &["file", "memory", "s3"];
/// The URL schemes [`open_url`] understands in this build (a plain path needs none).
#[cfg(not(feature = "s3"))]
pub const SUPPORTED_SCHEMES: &[&str] = &["file", "memory"];

fn supported() -> String {
    let schemes: Vec<String> = SUPPORTED_SCHEMES
        .iter()
        .map(|s| format!("{s}://"))
        .collect();
    format!("a path, {}", schemes.join(", "))
}

fn url_error(url: &str, message: impl std::fmt::Display) -> StoreError {
    StoreError::new(
        StoreErrorKind::Other,
        "",
        format!("repository URL `{url}`: {message}"),
    )
}

/// Opens the store a repository URL names:
///
/// | URL | store |
/// | --- | --- |
/// | `/srv/backups`, `backups`, `file:///srv/backups` | [`LocalStore`] (fsync on) |
/// | `memory://` | a new, empty [`MemoryStore`] (tests) |
/// | `s3://bucket/prefix?endpoint=…&region=…&path_style=…&profile=…&max_retries=…&retry_timeout=…` | `S3Store` (feature `s3`) |
///
/// Nothing is contacted or created here; the first request reports an unreachable server or a
/// missing bucket.
pub fn open_url(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    let Some((scheme, rest)) = split_scheme(url) else {
        if url.is_empty() {
            return Err(url_error(url, format!("empty; expected {}", supported())));
        }
        return Ok(Arc::new(LocalStore::new(url)));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "file" => {
            // file:///path or file://localhost/path; anything else names another host.
            let path = rest.strip_prefix("localhost").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err(url_error(
                    url,
                    "a file URL needs an absolute path: file:///path",
                ));
            }
            if path.contains('%') {
                return Err(url_error(
                    url,
                    "percent-encoded file URLs are not supported; give the plain path instead",
                ));
            }
            Ok(Arc::new(LocalStore::new(PathBuf::from(path))))
        }
        "memory" => Ok(Arc::new(MemoryStore::new())),
        #[cfg(feature = "s3")]
        "s3" => Ok(Arc::new(crate::S3Store::from_url(url)?)),
        #[cfg(not(feature = "s3"))]
        "s3" => Err(url_error(
            url,
            "this build has no S3 support; build backstop with the `s3` feature",
        )),
        other => Err(url_error(
            url,
            format!(
                "unsupported scheme `{other}://`; supported: {}",
                supported()
            ),
        )),
    }
}

/// Splits `scheme://rest`; `None` for a plain path (which may contain `:` but not a scheme).
fn split_scheme(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let is_scheme = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    is_scheme.then_some((scheme, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PutMode;

    #[test]
    fn paths_and_file_urls_open_local_stores() {
        let dir = tempfile::tempdir().unwrap();
        let plain = open_url(dir.path().to_str().unwrap()).unwrap();
        plain.put("a/b", b"x", PutMode::Create).unwrap();
        let url = format!("file://{}", dir.path().display());
        let file = open_url(&url).unwrap();
        assert_eq!(file.get("a/b").unwrap(), b"x");
        assert_eq!(file.describe(), format!("local:{}", dir.path().display()));
        assert!(open_url("file://otherhost/x").is_err());
    }

    #[test]
    fn memory_urls_open_fresh_memory_stores() {
        let store = open_url("memory://").unwrap();
        store.put("k", b"v", PutMode::Create).unwrap();
        assert!(open_url("memory://").unwrap().list("").unwrap().is_empty());
    }

    #[test]
    fn unknown_schemes_list_the_supported_ones() {
        let err = open_url("gs://bucket/prefix").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("unsupported scheme `gs://`"), "{message}");
        for scheme in SUPPORTED_SCHEMES {
            assert!(message.contains(&format!("{scheme}://")), "{message}");
        }
        assert!(open_url("").is_err());
    }
}
