//! A store on a WebDAV server (`webdav+https://host/path`) through the `object_store` crate's
//! HTTP client, which speaks WebDAV (PUT, GET with ranges, PROPFIND, DELETE, MKCOL), and the
//! shared adapter in `object.rs`.

use std::sync::Arc;

use base64::Engine as _;
use object_store::ObjectStore;
use object_store::http::HttpBuilder;

use crate::StoreError;
use crate::object::{
    Capabilities, CloudStoreOptions, ObjectStoreAdapter, check_prefix, config_error, env,
    forward_store,
};

const SERVICE: &str = "WebDAV";

/// The URL parameters [`WebDavStore::from_url`] understands.
const URL_PARAMETERS: &str = "max_retries, retry_timeout";

/// Files on a WebDAV server under a base URL: the key `packs/ab/ab12` of
/// `webdav+https://dav.example.com/backups/repo` is `https://dav.example.com/backups/repo/packs/ab/ab12`;
/// directories are created as needed (MKCOL).
///
/// What WebDAV does not give, and what that means:
/// - **No conditional put.** `PutMode::Create` is a HEAD check before the PUT, which a
///   concurrent writer can race: best effort, as the [`Store`](crate::Store) contract allows
///   and the repository tolerates.
/// - **Atomic puts only if the server makes them so.** A PUT is one request; whether a reader
///   or a crash can see a partly written file is up to the server. nginx (`dav_methods`),
///   Apache `mod_dav` and `rclone serve webdav` with `--vfs-cache-mode writes` write to a
///   temporary file and rename it; servers writing in place (wsgidav's filesystem provider,
///   rclone without a write cache) can leave a truncated file after a crash, which `verify`
///   reports and `gc` removes if nothing refers to it.
/// - **No multipart uploads**: each object is one PUT, however large.
/// - **Listing is one `PROPFIND` with `Depth: infinity`**, which some servers refuse or limit.
///
/// The methods block the calling thread; calling them from inside an async task is refused.
#[derive(Clone)]
pub struct WebDavStore {
    adapter: ObjectStoreAdapter,
    /// The base URL with the `webdav+` scheme and without credentials.
    base: String,
}

impl std::fmt::Debug for WebDavStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebDavStore")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl WebDavStore {
    /// Opens `webdav+http://host:port/path` or `webdav+https://host/path` with default options.
    ///
    /// Credentials: `WEBDAV_USERNAME` and `WEBDAV_PASSWORD` (HTTP basic authentication), or a
    /// user and password in the URL (`webdav+https://user:pass@host/path`, visible to anyone
    /// who sees the command line). URL parameters: `max_retries`, `retry_timeout` as for S3.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        Self::from_url_with_options(url, CloudStoreOptions::default())
    }

    /// Like [`WebDavStore::from_url`], with explicit options (URL parameters override them).
    pub fn from_url_with_options(
        url: &str,
        mut options: CloudStoreOptions,
    ) -> Result<Self, StoreError> {
        let parsed = ::url::Url::parse(url).map_err(|err| {
            config_error(
                SERVICE,
                url,
                format!("not a URL ({err}); expected webdav+https://host/path"),
            )
        })?;
        let http_scheme = match parsed.scheme() {
            "webdav+http" => "http",
            "webdav+https" => "https",
            _ => {
                return Err(config_error(
                    SERVICE,
                    url,
                    "the scheme must be webdav+http:// or webdav+https://",
                ));
            }
        };
        if parsed.host_str().unwrap_or_default().is_empty() {
            return Err(config_error(
                SERVICE,
                url,
                "no host; expected webdav+https://host/path",
            ));
        }
        let prefix = parsed.path().trim_matches('/');
        check_prefix(url, SERVICE, prefix)?;
        for (name, value) in parsed.query_pairs() {
            if !options.apply_parameter(url, SERVICE, &name, &value)? {
                return Err(config_error(
                    SERVICE,
                    url,
                    format!("unknown parameter `{name}`; supported: {URL_PARAMETERS}"),
                ));
            }
        }
        let user = match (parsed.username(), parsed.password()) {
            ("", None) => env("WEBDAV_USERNAME").map(|u| (u, env("WEBDAV_PASSWORD"))),
            (user, password) => Some((user.to_owned(), password.map(str::to_owned))),
        };
        // The server root is the object_store base URL and the path is the key prefix, so a
        // repository's own directory is created on the first put like any other.
        let mut root = parsed.clone();
        root.set_path("/");
        root.set_query(None);
        let _ = root.set_username("");
        let _ = root.set_password(None);
        let http_root = format!(
            "{http_scheme}{}",
            root.as_str()
                .strip_prefix(parsed.scheme())
                .unwrap_or_default()
        );
        let mut client_options = options.client_options(Some(&http_root));
        if let Some((user, password)) = user {
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{}", password.unwrap_or_default()));
            let mut value =
                http::HeaderValue::from_str(&format!("Basic {token}")).map_err(|_| {
                    config_error(
                        SERVICE,
                        url,
                        "the user name or password is not a valid header",
                    )
                })?;
            value.set_sensitive(true);
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::AUTHORIZATION, value);
            client_options = client_options.with_default_headers(headers);
        }
        let client = HttpBuilder::new()
            .with_url(&http_root)
            .with_retry(options.retry_config())
            .with_client_options(client_options)
            .build()
            .map_err(|err| {
                StoreError::with_source(
                    crate::StoreErrorKind::Other,
                    "",
                    format!("cannot configure the WebDAV client for `{url}`"),
                    err,
                )
            })?;
        let adapter = ObjectStoreAdapter::new(
            SERVICE,
            Arc::new(client) as Arc<dyn ObjectStore>,
            None,
            prefix,
            Capabilities {
                conditional_put: false,
                multipart: false,
                list_drops_exact_match: false,
            },
            options,
        )?;
        let base = format!("{}{prefix}", root.as_str())
            .trim_end_matches('/')
            .to_owned();
        Ok(Self { adapter, base })
    }

    fn description(&self) -> String {
        format!("{} (WebDAV: create-if-absent is best effort)", self.base)
    }
}

forward_store!(WebDavStore);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    #[test]
    fn urls_are_checked() {
        let err = WebDavStore::from_url("webdav+http://h/p?colour=red").unwrap_err();
        assert!(
            err.to_string().contains("unknown parameter `colour`"),
            "{err}"
        );
        let err = WebDavStore::from_url("webdav+ftp://h/p").unwrap_err();
        assert!(err.to_string().contains("the scheme must be"), "{err}");
        let err = WebDavStore::from_url("webdav+http://h/a//b").unwrap_err();
        assert!(err.to_string().contains("breaks the key rules"), "{err}");
        let store =
            WebDavStore::from_url("webdav+http://user:secret@127.0.0.1:1/dav/repo?max_retries=1")
                .unwrap();
        assert!(!format!("{store:?}").contains("secret"));
        assert!(!store.describe().contains("secret"), "{}", store.describe());
        assert!(
            store
                .describe()
                .starts_with("webdav+http://127.0.0.1:1/dav/repo"),
            "{}",
            store.describe()
        );
        assert_eq!(store.adapter.path("k").unwrap().as_ref(), "dav/repo/k");
    }
}
