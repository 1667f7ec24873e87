//! Opens a store from the URL a user gives: a path, `file://`, `memory://`, or an object
//! service (`s3://`, `gs://`, `az://`, `webdav+https://`, `sftp://`) when this build has its
//! feature.

use std::path::PathBuf;
use std::sync::Arc;

use crate::{LocalStore, MemoryStore, Store, StoreError, StoreErrorKind};

/// The URL schemes [`open_url`] understands in this build (a plain path needs none).
pub const SUPPORTED_SCHEMES: &[&str] = &[
    "file",
    "memory",
    #[cfg(feature = "s3")]
    "s3",
    #[cfg(feature = "gcs")]
    "gs",
    #[cfg(feature = "azure")]
    "az",
    #[cfg(feature = "azure")]
    "azure",
    #[cfg(feature = "webdav")]
    "webdav+http",
    #[cfg(feature = "webdav")]
    "webdav+https",
    #[cfg(feature = "sftp")]
    "sftp",
];

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
/// | `gs://bucket/prefix?endpoint=…&anonymous=…` | `GcsStore` (feature `gcs`) |
/// | `az://container/prefix?account=…&endpoint=…&use_emulator=…`, `azure://…` | `AzureStore` (feature `azure`) |
/// | `webdav+http://host:port/path`, `webdav+https://…` | `WebDavStore` (feature `webdav`) |
/// | `sftp://[user@]host[:port]/path?key=…&known_hosts=…` | `SftpStore` (feature `sftp`) |
///
/// `hdfs://` and `webhdfs://` are refused with an error naming the alternatives: there is no
/// client for them here. `ssh://` is refused with a pointer to `sftp://`.
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
        "s3" => Err(missing_feature(url, "S3", "s3")),
        #[cfg(feature = "gcs")]
        "gs" => Ok(Arc::new(crate::GcsStore::from_url(url)?)),
        #[cfg(not(feature = "gcs"))]
        "gs" => Err(missing_feature(url, "Google Cloud Storage", "gcs")),
        #[cfg(feature = "azure")]
        "az" | "azure" => Ok(Arc::new(crate::AzureStore::from_url(url)?)),
        #[cfg(not(feature = "azure"))]
        "az" | "azure" => Err(missing_feature(url, "Azure Blob Storage", "azure")),
        #[cfg(feature = "webdav")]
        "webdav+http" | "webdav+https" => Ok(Arc::new(crate::WebDavStore::from_url(url)?)),
        #[cfg(not(feature = "webdav"))]
        "webdav+http" | "webdav+https" => Err(missing_feature(url, "WebDAV", "webdav")),
        "webdav" | "dav" | "davs" => Err(url_error(
            url,
            "say which protocol carries WebDAV: webdav+https://host/path or webdav+http://host/path",
        )),
        #[cfg(feature = "sftp")]
        "sftp" => Ok(Arc::new(crate::SftpStore::from_url(url)?)),
        #[cfg(not(feature = "sftp"))]
        "sftp" => Err(missing_feature(url, "SFTP", "sftp")),
        // `ssh://` names a shell login elsewhere (git, borg); Backstop only speaks SFTP, so
        // the scheme says so.
        "ssh" => Err(url_error(
            url,
            "Backstop reaches SSH servers over SFTP: write the repository as \
             sftp://[user@]host[:port]/path",
        )),
        "hdfs" | "webhdfs" => Err(url_error(
            url,
            "HDFS repositories are not supported in this version; alternatives: the HDFS NFS \
             gateway or a FUSE mount (give its path), or an S3-compatible gateway in front of \
             the cluster (s3://…)",
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

/// The error for a service this build left out.
#[cfg_attr(
    all(
        feature = "s3",
        feature = "gcs",
        feature = "azure",
        feature = "webdav",
        feature = "sftp"
    ),
    expect(dead_code, reason = "every service is built in")
)]
fn missing_feature(url: &str, service: &str, feature: &str) -> StoreError {
    url_error(
        url,
        format!("this build has no {service} support; build backstop with the `{feature}` feature"),
    )
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
        let err = open_url("ftp://host/prefix").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("unsupported scheme `ftp://`"), "{message}");
        for scheme in SUPPORTED_SCHEMES {
            assert!(message.contains(&format!("{scheme}://")), "{message}");
        }
        assert!(open_url("").is_err());
    }

    #[test]
    fn hdfs_names_the_alternatives() {
        for url in ["hdfs://namenode/backups", "webhdfs://nn/b"] {
            let message = open_url(url).unwrap_err().to_string();
            assert!(
                message.contains("not supported in this version"),
                "{message}"
            );
            assert!(message.contains("alternatives"), "{message}");
        }
        let message = open_url("webdav://host/x").unwrap_err().to_string();
        assert!(message.contains("webdav+https://"), "{message}");
        let message = open_url("ssh://host/x").unwrap_err().to_string();
        assert!(message.contains("sftp://"), "{message}");
    }

    #[test]
    fn sftp_urls_open_sftp_stores_or_name_the_feature() {
        let opened = open_url("sftp://backup@host:2222/srv/backups");
        #[cfg(feature = "sftp")]
        assert_eq!(
            opened.unwrap().describe(),
            "sftp://backup@host:2222/srv/backups (SFTP: create-if-absent is best effort)"
        );
        #[cfg(not(feature = "sftp"))]
        assert!(
            opened
                .unwrap_err()
                .to_string()
                .contains("build backstop with the `sftp` feature")
        );
    }
}
