//! The adapter shared by every store built on the `object_store` crate (S3, GCS, Azure Blob,
//! WebDAV): an internal tokio runtime behind the synchronous [`Store`] trait, retries with a
//! bounded total time, multipart uploads for large objects, ranged reads, and one mapping of
//! `object_store` errors to [`StoreErrorKind`].

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::TryStreamExt as _;
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions,
    PutPayload, RetryConfig, WriteMultipart,
};

use crate::memory::check_range;
use crate::{ObjectMeta, PutMode, Store, StoreError, StoreErrorKind, split_prefix, validate_key};

pub(crate) const MIB: usize = 1024 * 1024;

/// How a store on an object service talks to it: upload sizes, parallelism, retries and
/// timeouts. Used by the GCS, Azure and WebDAV stores (the S3 store has `S3StoreOptions`, which
/// adds credentials).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CloudStoreOptions {
    /// Objects larger than this are uploaded in parts (default 16 MiB), where the service has
    /// multipart uploads (not WebDAV; not GCS, where every put is one upload request).
    pub multipart_threshold: usize,
    /// Size of each part (default 8 MiB, at least 5 MiB).
    pub part_size: usize,
    /// Parts uploaded at once per object (default 4).
    pub max_concurrent_parts: usize,
    /// Retries of one request on throttling, 5xx answers and connection errors (default 10),
    /// backing off from 0.5 s, doubling up to 15 s between tries (with jitter).
    pub max_retries: usize,
    /// Time after which a request is not retried any more (default 2 minutes).
    pub retry_timeout: Duration,
    /// Time limit of one HTTP request (default 2 minutes).
    pub request_timeout: Duration,
}

impl Default for CloudStoreOptions {
    fn default() -> Self {
        Self {
            multipart_threshold: 16 * MIB,
            part_size: 8 * MIB,
            max_concurrent_parts: 4,
            max_retries: 10,
            retry_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(120),
        }
    }
}

impl CloudStoreOptions {
    /// Sets the size above which objects are uploaded in parts.
    pub fn with_multipart_threshold(mut self, bytes: usize) -> Self {
        self.multipart_threshold = bytes;
        self
    }

    /// Sets the part size of multipart uploads.
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes;
        self
    }

    /// Sets how many parts of one object are uploaded at once.
    pub fn with_max_concurrent_parts(mut self, parts: usize) -> Self {
        self.max_concurrent_parts = parts;
        self
    }

    /// Sets the retry limits: attempts and total time per request.
    pub fn with_retries(mut self, max_retries: usize, retry_timeout: Duration) -> Self {
        self.max_retries = max_retries;
        self.retry_timeout = retry_timeout;
        self
    }

    /// Sets the time limit of one HTTP request.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The retry policy every service's client gets.
    pub(crate) fn retry_config(&self) -> RetryConfig {
        RetryConfig {
            max_retries: self.max_retries,
            retry_timeout: self.retry_timeout,
            // object_store starts at 100 ms, so its 10 retries are spent within about 2 s of
            // connection refusals: a server restart would fail every backup. From 0.5 s,
            // doubling up to 15 s, the default retries ride out about a minute of outage.
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(500),
                max_backoff: Duration::from_secs(15),
                base: 2.0,
            },
        }
    }

    /// HTTP client settings; plain `http://` only when the endpoint the user gave says so.
    pub(crate) fn client_options(&self, endpoint: Option<&str>) -> ClientOptions {
        ClientOptions::new()
            .with_timeout(self.request_timeout)
            .with_allow_http(endpoint.is_some_and(|e| e.starts_with("http://")))
    }

    /// Applies the URL parameters every service understands (`max_retries`, `retry_timeout` in
    /// seconds); returns `false` for a parameter that is not one of them.
    pub(crate) fn apply_parameter(
        &mut self,
        url: &str,
        service: &str,
        name: &str,
        value: &str,
    ) -> Result<bool, StoreError> {
        match name {
            "max_retries" => self.max_retries = parse_number(url, service, name, value)?,
            "retry_timeout" => {
                self.retry_timeout =
                    Duration::from_secs(parse_number(url, service, name, value)? as u64);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// An error in a repository URL of `service` (`S3`, `GCS`…).
pub(crate) fn config_error(service: &str, url: &str, message: impl Into<String>) -> StoreError {
    StoreError::new(
        StoreErrorKind::Other,
        "",
        format!("{service} URL `{url}`: {}", message.into()),
    )
}

#[cfg_attr(
    not(any(feature = "s3", feature = "gcs", feature = "azure")),
    expect(dead_code, reason = "only the bucket services use it")
)]
pub(crate) fn parse_bool(
    url: &str,
    service: &str,
    name: &str,
    value: &str,
) -> Result<bool, StoreError> {
    match value {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(config_error(
            service,
            url,
            format!("`{name}={value}` is not a boolean; use true or false"),
        )),
    }
}

fn parse_number(url: &str, service: &str, name: &str, value: &str) -> Result<usize, StoreError> {
    value.parse().map_err(|_| {
        config_error(
            service,
            url,
            format!("`{name}={value}` is not a whole number (retry_timeout is in seconds)"),
        )
    })
}

/// An environment variable, unless unset or empty.
pub(crate) fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Parses `scheme://container/prefix?…`: the URL, the container (bucket) and the prefix, which
/// must follow the key rules.
#[cfg_attr(
    not(any(feature = "s3", feature = "gcs", feature = "azure")),
    expect(dead_code, reason = "only the bucket services use it")
)]
pub(crate) fn parse_container_url(
    url: &str,
    service: &str,
    schemes: &[&str],
) -> Result<(::url::Url, String, String), StoreError> {
    let example = format!(
        "{}://{}/prefix",
        schemes.first().copied().unwrap_or_default(),
        if service == "Azure" {
            "container"
        } else {
            "bucket"
        }
    );
    let parsed = ::url::Url::parse(url).map_err(|err| {
        config_error(
            service,
            url,
            format!("not a URL ({err}); expected {example}"),
        )
    })?;
    if !schemes.contains(&parsed.scheme()) {
        let schemes: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
        return Err(config_error(
            service,
            url,
            format!("the scheme must be {}", schemes.join(" or ")),
        ));
    }
    let container = parsed.host_str().unwrap_or_default().to_owned();
    if container.is_empty() {
        return Err(config_error(
            service,
            url,
            format!("no bucket or container; expected {example}"),
        ));
    }
    let prefix = parsed.path().trim_matches('/').to_owned();
    check_prefix(url, service, &prefix)?;
    Ok((parsed, container, prefix))
}

/// A repository prefix inside a bucket follows the key rules, so keys cannot climb out of it.
pub(crate) fn check_prefix(url: &str, service: &str, prefix: &str) -> Result<(), StoreError> {
    if !prefix.is_empty() {
        validate_key(prefix).map_err(|_| {
            config_error(
                service,
                url,
                format!("the prefix `{prefix}` breaks the key rules"),
            )
        })?;
    }
    Ok(())
}

/// The runtime that drives the async client; shut down without blocking, so dropping the store
/// inside some other async context does not panic.
#[derive(Debug)]
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// What a service can do beyond plain put/get/list/delete.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Capabilities {
    /// The service has create-if-absent puts (`If-None-Match: *`); without it `PutMode::Create` is a HEAD check before the put, which a concurrent
    /// writer can race.
    pub(crate) conditional_put: bool,
    /// The service has multipart uploads.
    pub(crate) multipart: bool,
    /// The paginated listing leaves out an object whose name equals the prefix (object_store's
    /// Azure client does), so such a prefix is listed one character shorter and filtered here.
    pub(crate) list_drops_exact_match: bool,
}

/// One `object_store` client under a key prefix, used synchronously.
#[derive(Clone)]
pub(crate) struct ObjectStoreAdapter {
    client: Arc<dyn ObjectStore>,
    /// The same client, when it lists page by page with explicit tokens (S3, GCS, Azure).
    paginated: Option<Arc<dyn PaginatedListStore>>,
    runtime: Arc<Runtime>,
    /// `S3`, `GCS`, `Azure`, `WebDAV`: in messages.
    service: &'static str,
    /// Empty, or the prefix with a trailing `/`.
    prefix: String,
    capabilities: Capabilities,
    options: CloudStoreOptions,
    multipart_uploads: Arc<AtomicU64>,
}

impl std::fmt::Debug for ObjectStoreAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client's Debug could show credentials; the service and prefix say enough.
        f.debug_struct("ObjectStoreAdapter")
            .field("service", &self.service)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl ObjectStoreAdapter {
    /// Wraps `client`; `paginated` is the same client when it supports paginated listing.
    pub(crate) fn new(
        service: &'static str,
        client: Arc<dyn ObjectStore>,
        paginated: Option<Arc<dyn PaginatedListStore>>,
        prefix: &str,
        capabilities: Capabilities,
        options: CloudStoreOptions,
    ) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("backstop-{}", service.to_ascii_lowercase()))
            .enable_all()
            .build()
            .map_err(|err| {
                StoreError::from_io(
                    "",
                    format!("cannot start the {service} client's runtime"),
                    err,
                )
            })?;
        Ok(Self {
            client,
            paginated,
            runtime: Arc::new(Runtime(Some(runtime))),
            service,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            capabilities,
            options,
            multipart_uploads: Arc::default(),
        })
    }

    /// Empty, or the prefix with a trailing `/`.
    #[cfg_attr(
        not(any(feature = "s3", feature = "gcs", feature = "azure")),
        expect(dead_code, reason = "only the bucket services use it")
    )]
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    #[cfg(test)]
    #[cfg_attr(
        not(any(feature = "s3", feature = "gcs", feature = "azure")),
        expect(dead_code, reason = "only the bucket services' tests use it")
    )]
    pub(crate) fn options(&self) -> &CloudStoreOptions {
        &self.options
    }

    /// Multipart uploads started so far (by this adapter and its clones).
    #[cfg_attr(
        not(any(feature = "s3", feature = "gcs", feature = "azure")),
        expect(dead_code, reason = "only the bucket services use it")
    )]
    pub(crate) fn multipart_uploads(&self) -> u64 {
        self.multipart_uploads.load(Ordering::Relaxed)
    }

    fn block_on<F: Future>(&self, key: &str, future: F) -> Result<F::Output, StoreError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(StoreError::new(
                StoreErrorKind::Other,
                key,
                format!(
                    "the {} store was called from inside an async runtime, where blocking would \
                     stall it; call it from a plain thread or tokio::task::spawn_blocking",
                    self.service
                ),
            ));
        }
        let runtime = self.runtime.0.as_ref().ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Other,
                key,
                format!("the {} client's runtime is shut down", self.service),
            )
        })?;
        Ok(runtime.block_on(future))
    }

    pub(crate) fn path(&self, key: &str) -> Result<Path, StoreError> {
        validate_key(key)?;
        Path::parse(format!("{}{key}", self.prefix)).map_err(|err| {
            StoreError::with_source(
                StoreErrorKind::InvalidKey,
                key,
                format!("key is not a valid {} path", self.service),
                err,
            )
        })
    }

    pub(crate) fn key_of(&self, location: &Path) -> String {
        let full: &str = location.as_ref();
        full.strip_prefix(&self.prefix).unwrap_or(full).to_owned()
    }

    fn meta_of(&self, meta: object_store::ObjectMeta) -> ObjectMeta {
        ObjectMeta {
            key: self.key_of(&meta.location),
            size: meta.size,
            modified_unix: Some(meta.last_modified.timestamp()),
        }
    }

    async fn put_multipart(&self, path: &Path, bytes: &[u8]) -> Result<(), object_store::Error> {
        let upload = self
            .client
            .put_multipart_opts(path, PutMultipartOptions::default())
            .await?;
        self.multipart_uploads.fetch_add(1, Ordering::Relaxed);
        let part_size = self.options.part_size.max(5 * MIB);
        let mut writer = WriteMultipart::new_with_chunk_size(upload, part_size);
        for chunk in bytes.chunks(part_size) {
            if let Err(err) = writer
                .wait_for_capacity(self.options.max_concurrent_parts.max(1))
                .await
            {
                // Services keep the parts of an unfinished upload (and bill them) until it is
                // aborted; if the abort fails too, a bucket lifecycle rule is the backstop.
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(path = %path, error = %abort, "cannot abort multipart upload");
                }
                return Err(err);
            }
            writer.write(chunk);
        }
        writer.finish().await.map(|_| ())
    }

    fn map_error(&self, key: &str, what: &str, err: object_store::Error) -> StoreError {
        map_error(self.service, key, what, err)
    }

    fn already_exists(key: &str) -> StoreError {
        StoreError::new(
            StoreErrorKind::AlreadyExists,
            key,
            "object already exists and the put asked to create it",
        )
    }
}

/// The HTTP status of a failed request, when there was an answer. object_store keeps it in a
/// private type, so it is read from the message ("…non-2xx status code: 503 Service…").
fn http_status(err: &object_store::Error) -> Option<u16> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(error) = current {
        let text = error.to_string();
        if let Some(at) = text.find("status code: ") {
            return text
                .get(at + 13..at + 16)
                .and_then(|code| code.parse().ok());
        }
        current = error.source();
    }
    None
}

/// How long a put answered with 423 Locked (WebDAV) is tried again.
const LOCKED_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(3);

/// Whether a failure that outlived the client's own retries may still go away: throttling,
/// 5xx answers, timeouts, connection errors, and WebDAV's 423 Locked (another client is
/// writing the same file).
fn is_transient(err: &object_store::Error) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(error) = current {
        if let Some(http) = error.downcast_ref::<object_store::client::HttpError>() {
            use object_store::client::HttpErrorKind as K;
            return matches!(
                http.kind(),
                K::Connect | K::Request | K::Timeout | K::Interrupted
            );
        }
        current = error.source();
    }
    http_status(err).is_some_and(|code| code >= 500 || code == 429 || code == 423)
}

fn map_error(service: &str, key: &str, what: &str, err: object_store::Error) -> StoreError {
    use object_store::Error as E;
    let kind = match &err {
        E::NotFound { .. } => StoreErrorKind::NotFound,
        // Precondition and NotModified only answer the create-if-absent condition of a Create.
        E::AlreadyExists { .. } | E::Precondition { .. } | E::NotModified { .. } => {
            StoreErrorKind::AlreadyExists
        }
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => StoreErrorKind::PermissionDenied,
        E::InvalidPath { .. } => StoreErrorKind::InvalidKey,
        _ if is_transient(&err) => StoreErrorKind::Transient,
        _ => StoreErrorKind::Other,
    };
    let message = match kind {
        StoreErrorKind::Transient => format!(
            "{service} {what} kept failing after retries; check the endpoint and the network"
        ),
        StoreErrorKind::PermissionDenied => format!(
            "{service} {what} was refused; check the credentials and the bucket's permissions"
        ),
        StoreErrorKind::AlreadyExists => {
            "object already exists and the put asked to create it".to_owned()
        }
        _ => format!("{service} {what} failed"),
    };
    StoreError::with_source(kind, key, message, err)
}

impl ObjectStoreAdapter {
    /// A create-if-absent put that found the key taken. The client retries a put that timed
    /// out or got a 5xx answer, and when the first try did land, the retry is refused with
    /// 412: the object is then exactly ours. Identical bytes count as created; anything else
    /// is `exists`.
    fn created_by_an_earlier_try(
        &self,
        key: &str,
        bytes: &[u8],
        exists: StoreError,
    ) -> Result<(), StoreError> {
        match self.get(key) {
            Ok(stored) if stored == bytes => Ok(()),
            _ => Err(exists),
        }
    }
}

impl Store for ObjectStoreAdapter {
    fn put(&self, key: &str, bytes: &[u8], mode: PutMode) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let multipart =
            self.capabilities.multipart && bytes.len() > self.options.multipart_threshold;
        if mode == PutMode::Create && (multipart || !self.capabilities.conditional_put) {
            // Best effort, as the Store contract allows: a concurrent writer can slip in
            // between this check and the upload.
            match self.head(key) {
                Ok(_) => return Err(Self::already_exists(key)),
                Err(err) if err.kind() == StoreErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        if multipart {
            return self
                .block_on(key, self.put_multipart(&path, bytes))?
                .map_err(|err| self.map_error(key, "multipart upload", err));
        }
        let conditional = mode == PutMode::Create && self.capabilities.conditional_put;
        let opts = PutOptions {
            mode: if conditional {
                object_store::PutMode::Create
            } else {
                object_store::PutMode::Overwrite
            },
            ..PutOptions::default()
        };
        let payload = PutPayload::from(bytes.to_vec());
        // A WebDAV server answers 423 Locked while another client writes the same file or
        // creates the same parent collection (MKCOL); both pass within moments, so a locked put
        // is tried again for a bounded time before the lock is taken as the answer.
        let locked_until = std::time::Instant::now() + LOCKED_RETRY_FOR;
        let mut pause = std::time::Duration::from_millis(10);
        loop {
            let put = self.client.put_opts(&path, payload.clone(), opts.clone());
            match self.block_on(key, put)? {
                Ok(_) => return Ok(()),
                Err(err)
                    if http_status(&err) == Some(423)
                        && std::time::Instant::now() < locked_until =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(200));
                }
                // Still locked: for a create, another writer is creating the same key, which is
                // what `AlreadyExists` reports.
                Err(err) if mode == PutMode::Create && http_status(&err) == Some(423) => {
                    return Err(StoreError::with_source(
                        StoreErrorKind::AlreadyExists,
                        key,
                        "another client is creating the object and the put asked to create it",
                        err,
                    ));
                }
                Err(err) => {
                    let err = self.map_error(key, "put", err);
                    if conditional && err.kind() == StoreErrorKind::AlreadyExists {
                        return self.created_by_an_earlier_try(key, bytes, err);
                    }
                    return Err(err);
                }
            }
        }
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path(key)?;
        self.block_on(key, async {
            let result = self.client.get(&path).await?;
            result.bytes().await
        })?
        .map(Vec::from)
        .map_err(|err| self.map_error(key, "get", err))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
        let path = self.path(key)?;
        // HTTP cannot express an empty range, and servers clamp or refuse ranges past the end
        // in different ways, so the size decides those cases.
        if range.start >= range.end {
            let meta = self.head(key)?;
            check_range(key, &range, meta.size)?;
            return Ok(Vec::new());
        }
        let requested = range.end - range.start;
        match self.block_on(key, self.client.get_range(&path, range.clone()))? {
            Ok(bytes) if bytes.len() as u64 == requested => Ok(Vec::from(bytes)),
            Ok(bytes) => {
                let size = self.head(key)?.size;
                check_range(key, &range, size)?;
                Err(StoreError::new(
                    StoreErrorKind::Other,
                    key,
                    format!(
                        "{} returned {} bytes for range {}..{} of an object of {size} bytes",
                        self.service,
                        bytes.len(),
                        range.start,
                        range.end
                    ),
                ))
            }
            Err(err @ object_store::Error::NotFound { .. }) => {
                Err(self.map_error(key, "ranged get", err))
            }
            Err(err) => {
                // A range past the end is refused (416) or reported as a bad range by the
                // client; the object's size tells that apart from a real failure.
                if let Ok(meta) = self.head(key) {
                    check_range(key, &range, meta.size)?;
                }
                Err(self.map_error(key, "ranged get", err))
            }
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let (dir_part, _) = split_prefix(prefix)?;
        let full = format!("{}{prefix}", self.prefix);
        let Some(paginated) = &self.paginated else {
            // The streaming list takes whole path segments, so it lists the directory part
            // and the partial last segment filters names.
            let dir = format!("{}{dir_part}", self.prefix);
            let dir = dir.trim_end_matches('/');
            let dir_path = (!dir.is_empty()).then(|| Path::from(dir));
            let objects: Vec<object_store::ObjectMeta> = match self.block_on(
                prefix,
                self.client.list(dir_path.as_ref()).try_collect::<Vec<_>>(),
            )? {
                Ok(objects) => objects,
                // WebDAV answers 404 for a directory nobody wrote into yet.
                Err(object_store::Error::NotFound { .. }) => Vec::new(),
                Err(err) => return Err(self.map_error(prefix, "list", err)),
            };
            return Ok(objects
                .into_iter()
                .filter(|meta| meta.location.as_ref().starts_with(&full))
                .map(|meta| self.meta_of(meta))
                .collect());
        };
        let widened = if self.capabilities.list_drops_exact_match && !full.ends_with('/') {
            // Keys are ASCII, so dropping one byte stays on a character boundary.
            full.get(..full.len().saturating_sub(1)).unwrap_or_default()
        } else {
            full.as_str()
        };
        let full_prefix = (!widened.is_empty()).then_some(widened);
        let mut out = Vec::new();
        let mut page_token = None;
        loop {
            let opts = PaginatedListOptions {
                page_token: page_token.take(),
                ..Default::default()
            };
            let page = self
                .block_on(prefix, paginated.list_paginated(full_prefix, opts))?
                .map_err(|err| self.map_error(prefix, "list", err))?;
            out.extend(
                page.result
                    .objects
                    .into_iter()
                    .filter(|meta| meta.location.as_ref().starts_with(&full))
                    .map(|meta| self.meta_of(meta)),
            );
            match page.page_token {
                Some(token) => page_token = Some(token),
                None => break,
            }
        }
        Ok(out)
    }

    fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let path = self.path(key)?;
        self.block_on(key, self.client.head(&path))?
            .map(|meta| ObjectMeta {
                key: key.to_owned(),
                ..self.meta_of(meta)
            })
            .map_err(|err| self.map_error(key, "head", err))
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match self.block_on(key, self.client.delete(&path))? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(self.map_error(key, "delete", err)),
        }
    }

    fn describe(&self) -> String {
        // Each service's store describes itself; the adapter is never exposed.
        format!("{} store under `{}`", self.service, self.prefix)
    }
}

/// Implements [`Store`] for a service's store type by forwarding to its `adapter` field, except
/// `describe`, which the type provides as `fn description(&self) -> String`.
macro_rules! forward_store {
    ($type:ty) => {
        impl $crate::Store for $type {
            fn put(
                &self,
                key: &str,
                bytes: &[u8],
                mode: $crate::PutMode,
            ) -> Result<(), $crate::StoreError> {
                self.adapter.put(key, bytes, mode)
            }
            fn get(&self, key: &str) -> Result<Vec<u8>, $crate::StoreError> {
                self.adapter.get(key)
            }
            fn get_range(
                &self,
                key: &str,
                range: std::ops::Range<u64>,
            ) -> Result<Vec<u8>, $crate::StoreError> {
                self.adapter.get_range(key, range)
            }
            fn list(&self, prefix: &str) -> Result<Vec<$crate::ObjectMeta>, $crate::StoreError> {
                self.adapter.list(prefix)
            }
            fn head(&self, key: &str) -> Result<$crate::ObjectMeta, $crate::StoreError> {
                self.adapter.head(key)
            }
            fn delete(&self, key: &str) -> Result<(), $crate::StoreError> {
                self.adapter.delete(key)
            }
            fn describe(&self) -> String {
                self.description()
            }
        }
    };
}
pub(crate) use forward_store;
