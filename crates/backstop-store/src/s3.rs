//! A store on any S3-compatible object store (AWS S3, MinIO, Garage, Ceph, R2…) through the
//! `object_store` crate, driven from the synchronous [`Store`] trait by an internal tokio runtime.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions,
    PutPayload, RetryConfig, WriteMultipart,
};

use crate::memory::check_range;
use crate::{ObjectMeta, PutMode, Store, StoreError, StoreErrorKind, split_prefix, validate_key};

const MIB: usize = 1024 * 1024;

/// The URL parameters [`S3Store::from_url`] understands.
const URL_PARAMETERS: &str = "endpoint, region, path_style, profile, max_retries, retry_timeout";

/// How an [`S3Store`] talks to the server.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct S3StoreOptions {
    /// Objects larger than this are uploaded in parts (default 16 MiB).
    pub multipart_threshold: usize,
    /// Size of each part (default 8 MiB; S3 requires at least 5 MiB except for the last).
    pub part_size: usize,
    /// Parts uploaded at once per object (default 4).
    pub max_concurrent_parts: usize,
    /// Retries of one request on throttling, 5xx answers and connection errors (default 10),
    /// backing off from 0.5 s, doubling up to 15 s between tries (with jitter): the default
    /// rides out about a minute of outage.
    pub max_retries: usize,
    /// Time after which a request is not retried any more (default 2 minutes): the bound on how
    /// long a put or get may keep trying before it reports a `Transient` error.
    pub retry_timeout: Duration,
    /// Time limit of one HTTP request (default 2 minutes).
    pub request_timeout: Duration,
    /// Credentials to use instead of the environment, profile files and instance metadata.
    pub credentials: Option<S3Credentials>,
}

/// A static access key, for embedders that do not configure credentials through the
/// environment. Its `Debug` output hides the secret.
#[derive(Clone)]
pub struct S3Credentials {
    /// The access key id (`AKIA…`).
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// A session token for temporary credentials.
    pub session_token: Option<String>,
}

impl S3Credentials {
    /// A long-term access key without session token.
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
        }
    }
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Default for S3StoreOptions {
    fn default() -> Self {
        Self {
            multipart_threshold: 16 * MIB,
            part_size: 8 * MIB,
            max_concurrent_parts: 4,
            max_retries: 10,
            retry_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(120),
            credentials: None,
        }
    }
}

impl S3StoreOptions {
    /// Sets the size above which objects are uploaded in parts.
    pub fn with_multipart_threshold(mut self, bytes: usize) -> Self {
        self.multipart_threshold = bytes;
        self
    }

    /// Sets the part size of multipart uploads (at least 5 MiB on AWS).
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

    /// Uses these credentials instead of the environment and profile files.
    pub fn with_credentials(mut self, credentials: S3Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Sets the time limit of one HTTP request.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
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

/// Objects in an S3 bucket under an optional key prefix: the key `packs/ab/ab12` of
/// `s3://bucket/repo` is the S3 object `repo/packs/ab/ab12`.
///
/// - Puts up to [`S3StoreOptions::multipart_threshold`] are one PUT request; `PutMode::Create`
///   sends `If-None-Match: *`, which AWS S3, MinIO and R2 honour (some servers, Garage among them,
///   ignore it and overwrite: `Create` is best effort, as the [`Store`] contract says).
/// - Larger puts are multipart uploads with parts sent in parallel; S3 shows the object only
///   once the upload completes, so readers never see a part of it. `Create` is then a HEAD
///   check before the upload, which a concurrent writer can race.
/// - Every request is retried with exponential backoff on throttling, 5xx answers and
///   connection errors, within [`S3StoreOptions::retry_timeout`]; what still fails is reported
///   as [`StoreErrorKind::Transient`].
///
/// The methods block the calling thread. Call them from plain threads (or `spawn_blocking`), not
/// from inside an async task: that is refused with an error rather than deadlocking.
#[derive(Clone)]
pub struct S3Store {
    client: Arc<AmazonS3>,
    runtime: Arc<Runtime>,
    bucket: String,
    /// Empty, or the bucket prefix with a trailing `/`.
    prefix: String,
    endpoint: Option<String>,
    options: S3StoreOptions,
    multipart_uploads: Arc<AtomicU64>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

fn config_error(url: &str, message: impl Into<String>) -> StoreError {
    StoreError::new(
        StoreErrorKind::Other,
        "",
        format!("S3 URL `{url}`: {}", message.into()),
    )
}

fn parse_bool(url: &str, name: &str, value: &str) -> Result<bool, StoreError> {
    match value {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(config_error(
            url,
            format!("`{name}={value}` is not a boolean; use true or false"),
        )),
    }
}

fn parse_number(url: &str, name: &str, value: &str) -> Result<usize, StoreError> {
    value.parse().map_err(|_| {
        config_error(
            url,
            format!("`{name}={value}` is not a whole number (retry_timeout is in seconds)"),
        )
    })
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Settings from the AWS shared config and credentials files, which `object_store` does not
/// read: `~/.aws/credentials` (`[name]`) and `~/.aws/config` (`[profile name]`, `[default]`).
#[derive(Debug, Default)]
struct Profile {
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
    region: Option<String>,
    endpoint_url: Option<String>,
}

impl Profile {
    fn load(name: &str) -> Self {
        let home = env("HOME").map(std::path::PathBuf::from);
        let credentials_file = env("AWS_SHARED_CREDENTIALS_FILE")
            .map(std::path::PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws/credentials")));
        let config_file = env("AWS_CONFIG_FILE")
            .map(std::path::PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws/config")));
        Self::load_from(name, config_file, credentials_file)
    }

    fn load_from(
        name: &str,
        config_file: Option<std::path::PathBuf>,
        credentials_file: Option<std::path::PathBuf>,
    ) -> Self {
        let config_section = if name == "default" {
            "default".to_owned()
        } else {
            format!("profile {name}")
        };
        let mut profile = Profile::default();
        // The credentials file wins over the config file, as in the AWS CLI.
        for (file, section) in [
            (config_file, config_section.as_str()),
            (credentials_file, name),
        ] {
            let Some(file) = file else { continue };
            let ini = match ini::Ini::load_from_file(&file) {
                Ok(ini) => ini,
                Err(ini::Error::Io(err)) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => {
                    tracing::warn!(file = %file.display(), error = %err, "cannot read AWS profile file");
                    continue;
                }
            };
            let Some(props) = ini.section(Some(section)) else {
                continue;
            };
            let get = |key: &str| props.get(key).map(str::to_owned);
            profile.access_key_id = get("aws_access_key_id").or(profile.access_key_id);
            profile.secret_access_key = get("aws_secret_access_key").or(profile.secret_access_key);
            profile.session_token = get("aws_session_token").or(profile.session_token);
            profile.region = get("region").or(profile.region);
            profile.endpoint_url = get("endpoint_url").or(profile.endpoint_url);
        }
        profile
    }
}

impl S3Store {
    /// Opens `s3://bucket/prefix?endpoint=…&region=…&path_style=true&profile=…` with default
    /// options. `max_retries=N` and `retry_timeout=SECONDS` bound the retries of one request
    /// (defaults 10 and 120): how long a command keeps trying through an outage before it
    /// fails with a clear error.
    ///
    /// Settings come from, in order: the URL parameters; the environment (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`/`AWS_DEFAULT_REGION`,
    /// `AWS_ENDPOINT_URL`, and whatever else `object_store` reads from `AWS_*`); the profile
    /// named by `profile=` or `AWS_PROFILE` (default `default`) in `~/.aws/credentials` and
    /// `~/.aws/config`; then the instance metadata service. Requests use path-style addressing
    /// (`endpoint/bucket/key`) unless `path_style=false`; an `http://` endpoint is allowed.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        Self::from_url_with_options(url, S3StoreOptions::default())
    }

    /// Like [`S3Store::from_url`], with explicit options.
    /// URL parameters override the matching `options` (`max_retries`, `retry_timeout`).
    pub fn from_url_with_options(
        url: &str,
        mut options: S3StoreOptions,
    ) -> Result<Self, StoreError> {
        let parsed = ::url::Url::parse(url).map_err(|err| {
            config_error(
                url,
                format!("not a URL ({err}); expected s3://bucket/prefix"),
            )
        })?;
        if parsed.scheme() != "s3" {
            return Err(config_error(url, "the scheme must be s3://"));
        }
        let bucket = parsed.host_str().unwrap_or_default().to_owned();
        if bucket.is_empty() {
            return Err(config_error(url, "no bucket; expected s3://bucket/prefix"));
        }
        let prefix = parsed.path().trim_matches('/');
        if !prefix.is_empty() {
            validate_key(prefix).map_err(|_| {
                config_error(url, format!("the prefix `{prefix}` breaks the key rules"))
            })?;
        }
        let (mut endpoint, mut region, mut path_style, mut profile_name) = (None, None, true, None);
        for (name, value) in parsed.query_pairs() {
            match name.as_ref() {
                "endpoint" => endpoint = Some(value.into_owned()),
                "region" => region = Some(value.into_owned()),
                "path_style" => path_style = parse_bool(url, "path_style", &value)?,
                "profile" => profile_name = Some(value.into_owned()),
                "max_retries" => options.max_retries = parse_number(url, "max_retries", &value)?,
                "retry_timeout" => {
                    options.retry_timeout =
                        Duration::from_secs(parse_number(url, "retry_timeout", &value)? as u64);
                }
                other => {
                    return Err(config_error(
                        url,
                        format!("unknown parameter `{other}`; supported: {URL_PARAMETERS}"),
                    ));
                }
            }
        }
        let profile_name = profile_name
            .or_else(|| env("AWS_PROFILE"))
            .unwrap_or_else(|| "default".to_owned());
        let profile = Profile::load(&profile_name);

        // Explicit credentials must not mix with a session token from the environment.
        let mut builder = if options.credentials.is_some() {
            AmazonS3Builder::new()
        } else {
            AmazonS3Builder::from_env()
        }
        .with_bucket_name(&bucket);
        if let Some(credentials) = &options.credentials {
            builder = builder
                .with_access_key_id(&credentials.access_key_id)
                .with_secret_access_key(&credentials.secret_access_key);
            if let Some(token) = &credentials.session_token {
                builder = builder.with_token(token);
            }
        } else if env("AWS_ACCESS_KEY_ID").is_none() {
            if let (Some(id), Some(secret)) = (&profile.access_key_id, &profile.secret_access_key) {
                builder = builder
                    .with_access_key_id(id)
                    .with_secret_access_key(secret);
                if let Some(token) = &profile.session_token {
                    builder = builder.with_token(token);
                }
            }
        }
        let region = region
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or(profile.region);
        if let Some(region) = &region {
            builder = builder.with_region(region);
        }
        let endpoint = endpoint
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .or_else(|| env("AWS_ENDPOINT"))
            .or(profile.endpoint_url);
        let mut client_options = ClientOptions::new().with_timeout(options.request_timeout);
        if let Some(endpoint) = &endpoint {
            builder = builder.with_endpoint(endpoint);
            // Plain HTTP only when the user's endpoint says so (a local MinIO or test server).
            client_options = client_options.with_allow_http(endpoint.starts_with("http://"));
        }
        let retry = RetryConfig {
            max_retries: options.max_retries,
            retry_timeout: options.retry_timeout,
            // object_store starts at 100 ms, so its 10 retries are spent within about 2 s of
            // connection refusals: a server restart would fail every backup. From 0.5 s,
            // doubling up to 15 s, the default retries ride out about a minute of outage.
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(500),
                max_backoff: Duration::from_secs(15),
                base: 2.0,
            },
        };
        let client = builder
            .with_virtual_hosted_style_request(!path_style)
            .with_retry(retry)
            .with_client_options(client_options)
            .build()
            .map_err(|err| {
                StoreError::with_source(
                    StoreErrorKind::Other,
                    "",
                    format!("cannot configure the S3 client for `{url}`"),
                    err,
                )
            })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("backstop-s3")
            .enable_all()
            .build()
            .map_err(|err| StoreError::from_io("", "cannot start the S3 client's runtime", err))?;
        Ok(Self {
            client: Arc::new(client),
            runtime: Arc::new(Runtime(Some(runtime))),
            bucket,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            endpoint,
            options,
            multipart_uploads: Arc::default(),
        })
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Multipart uploads started so far (by this store and its clones).
    pub fn multipart_uploads(&self) -> u64 {
        self.multipart_uploads.load(Ordering::Relaxed)
    }

    fn block_on<F: Future>(&self, key: &str, future: F) -> Result<F::Output, StoreError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(StoreError::new(
                StoreErrorKind::Other,
                key,
                "S3Store was called from inside an async runtime, where blocking would stall it; \
                 call it from a plain thread or tokio::task::spawn_blocking",
            ));
        }
        let runtime = self.runtime.0.as_ref().ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Other,
                key,
                "the S3 client's runtime is shut down",
            )
        })?;
        Ok(runtime.block_on(future))
    }

    fn path(&self, key: &str) -> Result<Path, StoreError> {
        validate_key(key)?;
        Path::parse(format!("{}{key}", self.prefix)).map_err(|err| {
            StoreError::with_source(
                StoreErrorKind::InvalidKey,
                key,
                "key is not a valid S3 path",
                err,
            )
        })
    }

    fn key_of(&self, location: &Path) -> String {
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
        let mut writer =
            WriteMultipart::new_with_chunk_size(upload, self.options.part_size.max(5 * MIB));
        for chunk in bytes.chunks(self.options.part_size.max(5 * MIB)) {
            if let Err(err) = writer
                .wait_for_capacity(self.options.max_concurrent_parts.max(1))
                .await
            {
                // S3 keeps the parts of an unfinished upload (and bills them) until it is
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
}

/// Whether a failure that outlived the client's own retries may still go away: throttling,
/// 5xx answers, timeouts, connection errors.
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
        // object_store keeps the HTTP status of a failed request in a private type, so the
        // status is read from its message ("…non-2xx status code: 503 Service Unavailable…").
        let text = error.to_string();
        if let Some(at) = text.find("status code: ") {
            let code = text.get(at + 13..at + 16).unwrap_or_default();
            return code.starts_with('5') || code == "429";
        }
        current = error.source();
    }
    false
}

fn map_error(key: &str, what: &str, err: object_store::Error) -> StoreError {
    use object_store::Error as E;
    let kind = match &err {
        E::NotFound { .. } => StoreErrorKind::NotFound,
        // Precondition and NotModified only answer the `If-None-Match: *` of a Create.
        E::AlreadyExists { .. } | E::Precondition { .. } | E::NotModified { .. } => {
            StoreErrorKind::AlreadyExists
        }
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => StoreErrorKind::PermissionDenied,
        E::InvalidPath { .. } => StoreErrorKind::InvalidKey,
        _ if is_transient(&err) => StoreErrorKind::Transient,
        _ => StoreErrorKind::Other,
    };
    let message = match kind {
        StoreErrorKind::Transient => {
            format!("S3 {what} kept failing after retries; check the endpoint and the network")
        }
        StoreErrorKind::PermissionDenied => {
            format!("S3 {what} was refused; check the credentials and the bucket policy")
        }
        StoreErrorKind::AlreadyExists => {
            "object already exists and the put asked to create it".to_owned()
        }
        _ => format!("S3 {what} failed"),
    };
    StoreError::with_source(kind, key, message, err)
}

impl Store for S3Store {
    fn put(&self, key: &str, bytes: &[u8], mode: PutMode) -> Result<(), StoreError> {
        let path = self.path(key)?;
        if bytes.len() > self.options.multipart_threshold {
            if mode == PutMode::Create {
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
            return self
                .block_on(key, self.put_multipart(&path, bytes))?
                .map_err(|err| map_error(key, "multipart upload", err));
        }
        let opts = PutOptions {
            mode: match mode {
                PutMode::Overwrite => object_store::PutMode::Overwrite,
                PutMode::Create => object_store::PutMode::Create,
            },
            ..PutOptions::default()
        };
        let payload = PutPayload::from(bytes.to_vec());
        self.block_on(key, self.client.put_opts(&path, payload, opts))?
            .map(|_| ())
            .map_err(|err| map_error(key, "put", err))
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path(key)?;
        self.block_on(key, async {
            let result = self.client.get(&path).await?;
            result.bytes().await
        })?
        .map(Vec::from)
        .map_err(|err| map_error(key, "get", err))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
        let path = self.path(key)?;
        // S3 cannot express an empty range, and clamps or refuses ranges past the end in ways
        // that differ between servers, so the size decides those cases.
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
                        "S3 returned {} bytes for range {}..{} of an object of {size} bytes",
                        bytes.len(),
                        range.start,
                        range.end
                    ),
                ))
            }
            Err(err @ object_store::Error::NotFound { .. }) => {
                Err(map_error(key, "ranged get", err))
            }
            Err(err) => {
                // A range past the end is refused (416) or reported as a bad range by the
                // client; the object's size tells that apart from a real failure.
                if let Ok(meta) = self.head(key) {
                    check_range(key, &range, meta.size)?;
                }
                Err(map_error(key, "ranged get", err))
            }
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        split_prefix(prefix)?;
        let full = format!("{}{prefix}", self.prefix);
        let full_prefix = if full.is_empty() {
            None
        } else {
            Some(full.as_str())
        };
        let mut out = Vec::new();
        let mut page_token = None;
        loop {
            let opts = PaginatedListOptions {
                page_token: page_token.take(),
                ..Default::default()
            };
            let page = self
                .block_on(prefix, self.client.list_paginated(full_prefix, opts))?
                .map_err(|err| map_error(prefix, "list", err))?;
            out.extend(
                page.result
                    .objects
                    .into_iter()
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
            .map_err(|err| map_error(key, "head", err))
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match self.block_on(key, self.client.delete(&path))? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(map_error(key, "delete", err)),
        }
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
            .trim_end_matches('/')
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parameters_are_checked() {
        let err =
            S3Store::from_url("s3://bucket/p?endpoint=http://127.0.0.1:1&colour=red").unwrap_err();
        assert!(
            err.to_string().contains("unknown parameter `colour`"),
            "{err}"
        );
        assert!(err.to_string().contains(URL_PARAMETERS), "{err}");
        let err = S3Store::from_url("s3:///prefix").unwrap_err();
        assert!(err.to_string().contains("no bucket"), "{err}");
        let err = S3Store::from_url("s3://bucket/a//b?endpoint=http://127.0.0.1:1").unwrap_err();
        assert!(err.to_string().contains("breaks the key rules"), "{err}");
        let err = S3Store::from_url("s3://bucket/p?path_style=maybe").unwrap_err();
        assert!(err.to_string().contains("not a boolean"), "{err}");
        let err = S3Store::from_url("s3://bucket/p?retry_timeout=5s").unwrap_err();
        assert!(err.to_string().contains("not a whole number"), "{err}");
        let store = S3Store::from_url(
            "s3://bucket/p?endpoint=http://127.0.0.1:1&region=us-east-1&max_retries=2&retry_timeout=7",
        )
        .unwrap();
        assert_eq!(store.options.max_retries, 2);
        assert_eq!(store.options.retry_timeout, Duration::from_secs(7));
    }

    #[test]
    fn profiles_come_from_config_and_credentials_files() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        let credentials = dir.path().join("credentials");
        std::fs::write(
            &config,
            "[default]\nregion = eu-west-1\n[profile backup]\nregion = eu-central-1\n\
             endpoint_url = http://127.0.0.1:9000\naws_access_key_id = from-config\n",
        )
        .unwrap();
        std::fs::write(
            &credentials,
            "[backup]\naws_access_key_id = AKIDBACKUP\naws_secret_access_key = s3cr3t\n",
        )
        .unwrap();
        let profile = Profile::load_from("backup", Some(config.clone()), Some(credentials.clone()));
        assert_eq!(profile.access_key_id.as_deref(), Some("AKIDBACKUP"));
        assert_eq!(profile.secret_access_key.as_deref(), Some("s3cr3t"));
        assert_eq!(profile.region.as_deref(), Some("eu-central-1"));
        assert_eq!(
            profile.endpoint_url.as_deref(),
            Some("http://127.0.0.1:9000")
        );
        let default = Profile::load_from("default", Some(config), Some(credentials));
        assert_eq!(default.region.as_deref(), Some("eu-west-1"));
        assert_eq!(default.access_key_id, None);
        let missing = Profile::load_from("x", Some(dir.path().join("nope")), None);
        assert_eq!(missing.region, None);
    }

    #[test]
    fn keys_map_under_the_prefix() {
        let store = S3Store::from_url(
            "s3://bucket/repo/one?endpoint=http://127.0.0.1:1&region=us-east-1&path_style=true",
        )
        .unwrap();
        assert_eq!(store.describe(), "s3://bucket/repo/one");
        let path = store.path("packs/ab/cd").unwrap();
        assert_eq!(path.as_ref(), "repo/one/packs/ab/cd");
        assert_eq!(store.key_of(&path), "packs/ab/cd");
        assert_eq!(
            store.path("../x").unwrap_err().kind(),
            StoreErrorKind::InvalidKey
        );
        assert!(!format!("{store:?}").contains("secret"));
    }
}
