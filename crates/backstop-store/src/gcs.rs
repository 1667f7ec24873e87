//! A store on Google Cloud Storage (`gs://bucket/prefix`) through OpenDAL's `gcs` service, which
//! speaks Google's JSON API, run by the shared runtime and retry loop in `operator.rs`.

use std::ops::Range;
use std::sync::Arc;

use base64::Engine as _;
use opendal::raw::{Access as _, HttpBody, HttpClient, HttpFetch};
use opendal::{EntryMode, Operator};

use crate::object::{CloudStoreOptions, config_error, env, parse_bool, parse_container_url};
use crate::operator::{Client, RetryLimits, checked_range_read, error_chain};
use crate::{ObjectMeta, PutMode, Store, StoreError, StoreErrorKind, split_prefix, validate_key};

const SERVICE: &str = "GCS";

/// The URL parameters [`GcsStore::from_url`] understands.
const URL_PARAMETERS: &str = "endpoint, anonymous, max_retries, retry_timeout";

/// Where credentials come from, in the error that says none worked.
const CREDENTIAL_SOURCES: &str = "GOOGLE_SERVICE_ACCOUNT, GOOGLE_SERVICE_ACCOUNT_KEY, \
     GOOGLE_APPLICATION_CREDENTIALS, gcloud's application-default credentials or the metadata \
     server";

/// The content type every upload declares.
const CONTENT_TYPE: &str = "application/octet-stream";

/// Objects in a Google Cloud Storage bucket under an optional prefix: the key `packs/ab/ab12`
/// of `gs://backups/repo` is the object `repo/packs/ab/ab12`.
///
/// - **Every put is one upload request** (the JSON API's media upload, up to 5 TiB), whatever
///   its size, so the object appears whole or not at all. OpenDAL's GCS client uploads in
///   parts only through the XML API's multipart uploads, which the emulator this store is
///   tested against does not serve, so it is not used: [`CloudStoreOptions`]'
///   `multipart_threshold`, `part_size` and `max_concurrent_parts` do not apply here, and a
///   failed upload is sent again whole.
/// - **`PutMode::Create`** is a metadata lookup first (an existing object is refused without
///   uploading), then the upload with `ifGenerationMatch=0`. GCS checks that precondition
///   atomically with the write, so of racing creates exactly one wins there. A server that
///   ignores it (gcp-storage-emulator) still refuses a create of an object that existed at the
///   lookup, but racing creates can all win. A create retried after its answer was lost can
///   find its own object and report [`StoreErrorKind::AlreadyExists`].
/// - **Reads** are `alt=media` downloads, ranged ones with a `Range` header; a range past the
///   end is [`StoreErrorKind::InvalidRange`] (the object's size decides, as servers answer
///   such ranges differently).
/// - **Retries**: each operation is tried again on throttling (429), 408 and 5xx answers,
///   connection failures and timeouts, within [`CloudStoreOptions`]' `max_retries` and
///   `retry_timeout`, backing off from 0.5 s, doubling up to 15 s; each try is limited to
///   `request_timeout`. What still fails is [`StoreErrorKind::Transient`].
/// - A missing bucket is reported as such by puts and listings (GCS answers 404 for both);
///   gets and heads cannot tell it from a missing object.
///
/// The methods block the calling thread; calling them from inside an async task is refused.
#[derive(Clone)]
pub struct GcsStore {
    /// A clone of the client's operator; declared before `client` so that it is gone when the
    /// last store drops the client.
    operator: Operator,
    client: Arc<Client>,
    options: CloudStoreOptions,
    bucket: String,
    /// Empty, or the prefix without a trailing `/`.
    prefix: String,
    endpoint: Option<String>,
}

impl std::fmt::Debug for GcsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("GcsStore")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// The HTTP client OpenDAL sends this store's requests with: reqwest, as OpenDAL's own, plus
/// the content type of uploads. A media upload takes the object's content type from the
/// `Content-Type` header, and OpenDAL sends none (it only sets one in a multipart upload's
/// metadata part). GCS then stores `application/octet-stream`; gcp-storage-emulator stores
/// `null`, which OpenDAL cannot read back, so the default is sent explicitly.
struct Fetcher(reqwest::Client);

impl HttpFetch for Fetcher {
    async fn fetch(
        &self,
        mut request: http::Request<opendal::Buffer>,
    ) -> opendal::Result<http::Response<HttpBody>> {
        if request.method() == http::Method::POST
            && request.uri().path().contains("/upload/storage/v1/")
            && !request.headers().contains_key(http::header::CONTENT_TYPE)
        {
            request.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(CONTENT_TYPE),
            );
        }
        HttpFetch::fetch(&self.0, request).await
    }
}

impl GcsStore {
    /// Opens `gs://bucket/prefix` with default options.
    ///
    /// URL parameters: `endpoint=URL` (another GCS-compatible server, such as an emulator:
    /// `http://127.0.0.1:4443`; else `GOOGLE_BASE_URL`, else `STORAGE_EMULATOR_HOST`, which also
    /// turns authentication off as Google's own libraries do), `anonymous=true` (send no
    /// credentials: public buckets and emulators), and `max_retries`, `retry_timeout` as for S3.
    ///
    /// Credentials, unless anonymous (also with `GOOGLE_SKIP_SIGNATURE=true`):
    /// `GOOGLE_BEARER_TOKEN` (an OAuth2 token), else `GOOGLE_SERVICE_ACCOUNT_KEY` (a
    /// service-account key as JSON), else `GOOGLE_SERVICE_ACCOUNT` or
    /// `GOOGLE_SERVICE_ACCOUNT_PATH` (the path of a key file), else what OpenDAL's default chain
    /// finds: `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's application-default credentials file
    /// (`~/.config/gcloud/application_default_credentials.json`), else the instance metadata
    /// server. The HTTP client settings object_store read from `GOOGLE_*` variables (proxy,
    /// timeouts) do not apply.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        Self::from_url_with_options(url, CloudStoreOptions::default())
    }

    /// Like [`GcsStore::from_url`], with explicit options (URL parameters override them).
    pub fn from_url_with_options(
        url: &str,
        mut options: CloudStoreOptions,
    ) -> Result<Self, StoreError> {
        let (parsed, bucket, prefix) = parse_container_url(url, SERVICE, &["gs"])?;
        let (mut endpoint, mut anonymous) = (None, false);
        for (name, value) in parsed.query_pairs() {
            match name.as_ref() {
                "endpoint" => endpoint = Some(value.into_owned()),
                "anonymous" => anonymous = parse_bool(url, SERVICE, "anonymous", &value)?,
                other => {
                    if !options.apply_parameter(url, SERVICE, other, &value)? {
                        return Err(config_error(
                            SERVICE,
                            url,
                            format!("unknown parameter `{other}`; supported: {URL_PARAMETERS}"),
                        ));
                    }
                }
            }
        }
        let endpoint = endpoint.or_else(|| env("GOOGLE_BASE_URL")).or_else(|| {
            // The variable Google's client libraries read to find an emulator; it names a
            // host (and port), with or without scheme.
            env("STORAGE_EMULATOR_HOST").map(|host| {
                anonymous = true;
                if host.contains("://") {
                    host
                } else {
                    format!("http://{host}")
                }
            })
        });
        let endpoint = endpoint.map(|e| e.trim_end_matches('/').to_owned());
        if env("GOOGLE_SKIP_SIGNATURE").is_some_and(|v| matches!(v.as_str(), "true" | "1")) {
            anonymous = true;
        }
        if let Some(endpoint) = &endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(config_error(
                    SERVICE,
                    url,
                    format!("the endpoint `{endpoint}` is not an http:// or https:// URL"),
                ));
            }
        }

        let mut builder = opendal::services::Gcs::default()
            .bucket(&bucket)
            .root(&format!("/{prefix}"));
        if let Some(endpoint) = &endpoint {
            builder = builder.endpoint(endpoint);
        }
        if anonymous {
            builder = builder.skip_signature();
        } else {
            if let Some(key) = env("GOOGLE_SERVICE_ACCOUNT_KEY") {
                // OpenDAL takes the key base64-encoded; the variable holds it as JSON.
                let key = if key.trim_start().starts_with('{') {
                    base64::engine::general_purpose::STANDARD.encode(key)
                } else {
                    key
                };
                builder = builder.credential(&key);
            }
            if let Some(path) =
                env("GOOGLE_SERVICE_ACCOUNT").or_else(|| env("GOOGLE_SERVICE_ACCOUNT_PATH"))
            {
                builder = builder.credential_path(&path);
            }
            if let Some(token) = env("GOOGLE_BEARER_TOKEN") {
                builder = builder.token(token);
            }
        }
        let configure = |err: &dyn std::fmt::Display| {
            config_error(
                SERVICE,
                url,
                format!("cannot configure the GCS client: {err}"),
            )
        };
        let operator = Operator::new(builder)
            .map_err(|err| configure(&err))?
            .finish();
        // The store's own client, so that pooled connections live on its runtime and die with
        // it (OpenDAL's default is one client for the whole process).
        let http = reqwest::Client::builder()
            .build()
            .map_err(|err| configure(&err))?;
        operator
            .inner()
            .info()
            .update_http_client(|_| HttpClient::with(Fetcher(http)));
        Ok(Self {
            operator: operator.clone(),
            client: Arc::new(Client::new(SERVICE, operator)?),
            options,
            bucket,
            prefix,
            endpoint,
        })
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key, after the key rules, as OpenDAL's path under the root.
    ///
    /// OpenDAL 0.57 percent-encodes the object name of an upload twice, so a name with any
    /// other character than these would be stored under a different name than it is read
    /// from. Backstop's own keys (hex, digits, `-`, `.`, `/`) are far inside them.
    fn path(key: &str) -> Result<&str, StoreError> {
        validate_key(key)?;
        let safe = |b: u8| b.is_ascii_alphanumeric() || b"/-_.!~*'()".contains(&b);
        if let Some(bad) = key.bytes().find(|&b| !safe(b)) {
            return Err(StoreError::new(
                StoreErrorKind::InvalidKey,
                key,
                format!(
                    "GCS keys here use only letters, digits and `/-_.!~*'()`, not `{}`",
                    char::from(bad)
                ),
            ));
        }
        Ok(key)
    }

    /// Runs one operation with the retry limits of the options; `what` names it in errors.
    fn run<T, F, Fut>(&self, key: &str, what: &str, operation: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: IntoFuture<Output = opendal::Result<T>>,
    {
        let limits = RetryLimits {
            max_retries: self.options.max_retries,
            retry_timeout: self.options.retry_timeout,
            request_timeout: self.options.request_timeout,
        };
        self.client.run(
            key,
            what,
            limits,
            error_kind,
            |kind, tries, err| self.map_error(key, what, kind, tries, err),
            operation,
        )
    }

    fn map_error(
        &self,
        key: &str,
        what: &str,
        kind: StoreErrorKind,
        tries: usize,
        err: opendal::Error,
    ) -> StoreError {
        let (kind, message) = match kind {
            StoreErrorKind::Transient => (
                kind,
                format!(
                    "{SERVICE} {what} kept failing ({tries} tries); check the endpoint and the \
                     network"
                ),
            ),
            StoreErrorKind::PermissionDenied if is_signing_error(&err) => (
                kind,
                format!(
                    "{SERVICE} {what}: no usable credentials (from {CREDENTIAL_SOURCES}); for a \
                     public bucket or an emulator add `anonymous=true` to the URL"
                ),
            ),
            StoreErrorKind::PermissionDenied => (
                kind,
                format!(
                    "{SERVICE} {what} was refused; check the credentials and the bucket's \
                     permissions"
                ),
            ),
            StoreErrorKind::AlreadyExists => (
                kind,
                "object already exists and the put asked to create it".to_owned(),
            ),
            // An upload or a listing names no object that could be missing, only the bucket.
            StoreErrorKind::NotFound if what == "upload" || what == "list" => (
                StoreErrorKind::Other,
                format!(
                    "{SERVICE} {what}: the bucket `{}` does not exist (or these credentials \
                     cannot see it)",
                    self.bucket
                ),
            ),
            _ => (kind, format!("{SERVICE} {what} failed")),
        };
        StoreError::with_source(kind, key, message, err)
    }

    fn description(&self) -> String {
        format!("gs://{}/{}", self.bucket, self.prefix)
            .trim_end_matches('/')
            .to_owned()
    }
}

/// Whether the request could not be signed: no credentials were found, or the ones found were
/// refused when exchanged for a token.
fn is_signing_error(err: &opendal::Error) -> bool {
    err.message() == "signing http request"
}

/// The HTTP status of a failed request, when there was an answer: OpenDAL keeps the response
/// only as text in the error's context (`response: Parts { status: 401, … }`).
fn http_status(err: &opendal::Error) -> Option<u16> {
    let chain = error_chain(err);
    let at = chain.find("Parts { status: ")? + "Parts { status: ".len();
    chain.get(at..at + 3)?.parse().ok()
}

/// What kind of failure an OpenDAL error is. OpenDAL's GCS service marks the answers worth a
/// retry as temporary (429, 500, 502, 503, 504), and so does its HTTP client for failures to
/// send a request or read an answer (connection refused or reset, timeouts).
fn error_kind(err: &opendal::Error) -> StoreErrorKind {
    use opendal::ErrorKind as K;
    match err.kind() {
        K::NotFound => return StoreErrorKind::NotFound,
        K::PermissionDenied => return StoreErrorKind::PermissionDenied,
        K::AlreadyExists | K::ConditionNotMatch => return StoreErrorKind::AlreadyExists,
        K::RangeNotSatisfied => return StoreErrorKind::InvalidRange,
        K::RateLimited => return StoreErrorKind::Transient,
        _ => {}
    }
    if err.is_temporary() {
        return StoreErrorKind::Transient;
    }
    if is_signing_error(err) {
        // Fetching a token (from Google's token endpoint or the metadata server) can fail on
        // the network; OpenDAL marks that temporary on its HTTP error under the signing error.
        let mut current = std::error::Error::source(err);
        while let Some(error) = current {
            if error
                .downcast_ref::<opendal::Error>()
                .is_some_and(opendal::Error::is_temporary)
            {
                return StoreErrorKind::Transient;
            }
            current = error.source();
        }
        return StoreErrorKind::PermissionDenied;
    }
    match http_status(err) {
        Some(401) => StoreErrorKind::PermissionDenied,
        Some(408) => StoreErrorKind::Transient,
        Some(416) => StoreErrorKind::InvalidRange,
        _ => StoreErrorKind::Other,
    }
}

impl Store for GcsStore {
    fn put(&self, key: &str, bytes: &[u8], mode: PutMode) -> Result<(), StoreError> {
        let path = Self::path(key)?;
        let create = mode == PutMode::Create;
        if create {
            // Also on GCS, which enforces the precondition below by itself: an existing object
            // is refused without uploading it again, and a server that ignores preconditions
            // refuses it too.
            match self.head(key) {
                Ok(_) => {
                    return Err(StoreError::new(
                        StoreErrorKind::AlreadyExists,
                        key,
                        "object already exists and the put asked to create it",
                    ));
                }
                Err(err) if err.kind() == StoreErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        let payload = opendal::Buffer::from(bytes.to_vec());
        // `if_not_exists` is `ifGenerationMatch=0`; one write of the whole buffer is one
        // media upload. An empty object goes as a multipart upload instead (OpenDAL sends one
        // when there is metadata such as the content type): gcp-storage-emulator fails on an
        // empty media upload, and GCS takes either.
        let empty = bytes.is_empty();
        self.run(key, "upload", || {
            let write = self
                .operator
                .write_with(path, payload.clone())
                .if_not_exists(create);
            if empty {
                write.content_type(CONTENT_TYPE)
            } else {
                write
            }
        })
        .map(|_| ())
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let path = Self::path(key)?;
        self.run(key, "get", || self.operator.read(path))
            .map(|buffer| buffer.to_vec())
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
        let path = Self::path(key)?;
        checked_range_read(
            SERVICE,
            key,
            range,
            || self.head(key),
            |range| {
                self.run(key, "ranged get", || {
                    self.operator.read_with(path).range(range.clone())
                })
            },
        )
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        split_prefix(prefix)?;
        // GCS lists by plain name prefix, which may end inside a name; without a delimiter
        // (recursive) it returns objects only.
        let entries = self.run(prefix, "list", || {
            self.operator.list_with(prefix).recursive(true)
        })?;
        Ok(entries
            .into_iter()
            .filter(|entry| {
                entry.metadata().mode() == EntryMode::FILE && entry.path().starts_with(prefix)
            })
            .map(|entry| ObjectMeta {
                key: entry.path().to_owned(),
                size: entry.metadata().content_length(),
                modified_unix: entry
                    .metadata()
                    .last_modified()
                    .map(|time| time.into_inner().as_second()),
            })
            .collect())
    }

    fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let path = Self::path(key)?;
        let meta = self.run(key, "head", || self.operator.stat(path))?;
        Ok(ObjectMeta {
            key: key.to_owned(),
            size: meta.content_length(),
            modified_unix: meta
                .last_modified()
                .map(|time| time.into_inner().as_second()),
        })
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = Self::path(key)?;
        // OpenDAL's GCS service takes 404 as done.
        match self.run(key, "delete", || self.operator.delete(path)) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == StoreErrorKind::NotFound => Ok(()),
            Err(err) => Err(err),
        }
    }

    fn describe(&self) -> String {
        self.description()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let err = GcsStore::from_url("gs://b/p?anonymous=true&colour=red").unwrap_err();
        assert!(
            err.to_string().contains("unknown parameter `colour`"),
            "{err}"
        );
        assert!(err.to_string().contains(URL_PARAMETERS), "{err}");
        let err = GcsStore::from_url("gs://b/p?anonymous=maybe").unwrap_err();
        assert!(err.to_string().contains("not a boolean"), "{err}");
        let err = GcsStore::from_url("gs://b/a//b?anonymous=true").unwrap_err();
        assert!(err.to_string().contains("breaks the key rules"), "{err}");
        let err = GcsStore::from_url("gs://b/p?anonymous=true&endpoint=127.0.0.1:1").unwrap_err();
        assert!(
            err.to_string().contains("not an http:// or https://"),
            "{err}"
        );
        let store = GcsStore::from_url(
            "gs://backups/repo/one?anonymous=true&endpoint=http://127.0.0.1:1/&retry_timeout=7",
        )
        .unwrap();
        assert_eq!(store.describe(), "gs://backups/repo/one");
        assert_eq!(
            store.options.retry_timeout,
            std::time::Duration::from_secs(7)
        );
        assert_eq!(store.bucket(), "backups");
        assert_eq!(store.endpoint.as_deref(), Some("http://127.0.0.1:1"));
        let store = GcsStore::from_url("gs://backups?anonymous=true").unwrap();
        assert_eq!(store.describe(), "gs://backups");
    }

    #[test]
    fn keys_that_opendal_would_rename_are_refused() {
        let store = GcsStore::from_url("gs://b/p?anonymous=true").unwrap();
        for key in ["a b", "a+b", "a:b", "a%20b", "a=b"] {
            assert_eq!(
                store.get(key).unwrap_err().kind(),
                StoreErrorKind::InvalidKey,
                "{key}"
            );
        }
        assert_eq!(
            GcsStore::path("snapshots/0000000001-0a1b.deleted").unwrap(),
            "snapshots/0000000001-0a1b.deleted"
        );
    }

    #[test]
    fn statuses_of_answers_are_read_from_the_error() {
        let err = opendal::Error::new(opendal::ErrorKind::Unexpected, "no")
            .with_context("response", "Parts { status: 401, version: HTTP/1.1 }");
        assert_eq!(http_status(&err), Some(401));
        assert_eq!(error_kind(&err), StoreErrorKind::PermissionDenied);
        let err = opendal::Error::new(opendal::ErrorKind::Unexpected, "no").set_temporary();
        assert_eq!(error_kind(&err), StoreErrorKind::Transient);
        let err = opendal::Error::new(opendal::ErrorKind::ConditionNotMatch, "412");
        assert_eq!(error_kind(&err), StoreErrorKind::AlreadyExists);
        let err = opendal::Error::new(opendal::ErrorKind::Unexpected, "no");
        assert_eq!(error_kind(&err), StoreErrorKind::Other);
    }
}
