//! A store on any S3-compatible object store (AWS S3, MinIO, Garage, Ceph, R2…) through the
//! `object_store` crate, driven from the synchronous [`Store`](crate::Store) trait by an internal tokio runtime.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::list::PaginatedListStore;
use object_store::{ObjectStore, RetryConfig};

use crate::StoreError;
use crate::object::{
    Capabilities, CloudStoreOptions, ObjectStoreAdapter, forward_store, parse_container_url,
};

/// The URL parameters [`S3Store::from_url`] understands.
const URL_PARAMETERS: &str = "endpoint, region, path_style, profile, max_retries, retry_timeout";

/// How an [`S3Store`] talks to the server: the settings every object store shares, plus
/// credentials.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct S3StoreOptions {
    /// Multipart uploads, retries and timeouts (S3 requires parts of at least 5 MiB except the
    /// last; the default retries ride out about a minute of outage).
    pub cloud: CloudStoreOptions,
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

impl S3StoreOptions {
    /// Sets the size above which objects are uploaded in parts.
    pub fn with_multipart_threshold(mut self, bytes: usize) -> Self {
        self.cloud = self.cloud.with_multipart_threshold(bytes);
        self
    }

    /// Sets the part size of multipart uploads (at least 5 MiB on AWS).
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.cloud = self.cloud.with_part_size(bytes);
        self
    }

    /// Sets how many parts of one object are uploaded at once.
    pub fn with_max_concurrent_parts(mut self, parts: usize) -> Self {
        self.cloud = self.cloud.with_max_concurrent_parts(parts);
        self
    }

    /// Sets the retry limits: attempts and total time per request.
    pub fn with_retries(mut self, max_retries: usize, retry_timeout: Duration) -> Self {
        self.cloud = self.cloud.with_retries(max_retries, retry_timeout);
        self
    }

    /// Sets the time limit of one HTTP request.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.cloud = self.cloud.with_request_timeout(timeout);
        self
    }

    /// Uses these credentials instead of the environment and profile files.
    pub fn with_credentials(mut self, credentials: S3Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }
}

/// Objects in an S3 bucket under an optional key prefix: the key `packs/ab/ab12` of
/// `s3://bucket/repo` is the S3 object `repo/packs/ab/ab12`.
///
/// - Puts up to [`CloudStoreOptions::multipart_threshold`] are one PUT request; `PutMode::Create`
///   sends `If-None-Match: *`, which AWS S3, MinIO and R2 honour (some servers, Garage among them,
///   ignore it and overwrite: `Create` is best effort, as the [`Store`](crate::Store) contract says).
/// - Larger puts are multipart uploads with parts sent in parallel; S3 shows the object only
///   once the upload completes, so readers never see a part of it. `Create` is then a HEAD
///   check before the upload, which a concurrent writer can race.
/// - Every request is retried with exponential backoff on throttling, 5xx answers and
///   connection errors, within [`CloudStoreOptions::retry_timeout`]; what still fails is reported
///   as [`StoreErrorKind::Transient`](crate::StoreErrorKind::Transient).
///
/// The methods block the calling thread. Call them from plain threads (or `spawn_blocking`), not
/// from inside an async task: that is refused with an error rather than deadlocking.
#[derive(Clone)]
pub struct S3Store {
    adapter: ObjectStoreAdapter,
    bucket: String,
    endpoint: Option<String>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("prefix", &self.adapter.prefix())
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

const SERVICE: &str = "S3";

fn config_error(url: &str, message: impl Into<String>) -> StoreError {
    crate::object::config_error(SERVICE, url, message)
}

fn parse_bool(url: &str, name: &str, value: &str) -> Result<bool, StoreError> {
    crate::object::parse_bool(url, SERVICE, name, value)
}

use crate::object::env;

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
    pub fn from_url_with_options(url: &str, options: S3StoreOptions) -> Result<Self, StoreError> {
        let (parsed, bucket, prefix) = parse_container_url(url, SERVICE, &["s3"])?;
        let mut cloud = options.cloud.clone();
        let (mut endpoint, mut region, mut path_style, mut profile_name) = (None, None, true, None);
        for (name, value) in parsed.query_pairs() {
            match name.as_ref() {
                "endpoint" => endpoint = Some(value.into_owned()),
                "region" => region = Some(value.into_owned()),
                "path_style" => path_style = parse_bool(url, "path_style", &value)?,
                "profile" => profile_name = Some(value.into_owned()),
                other => {
                    if !cloud.apply_parameter(url, SERVICE, other, &value)? {
                        return Err(config_error(
                            url,
                            format!("unknown parameter `{other}`; supported: {URL_PARAMETERS}"),
                        ));
                    }
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
        if let Some(endpoint) = &endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let retry: RetryConfig = cloud.retry_config();
        let client = builder
            .with_virtual_hosted_style_request(!path_style)
            .with_retry(retry)
            .with_client_options(cloud.client_options(endpoint.as_deref()))
            .build()
            .map_err(|err| {
                StoreError::with_source(
                    crate::StoreErrorKind::Other,
                    "",
                    format!("cannot configure the S3 client for `{url}`"),
                    err,
                )
            })?;
        let client = Arc::new(client);
        let adapter = ObjectStoreAdapter::new(
            SERVICE,
            Arc::clone(&client) as Arc<dyn ObjectStore>,
            Some(client as Arc<dyn PaginatedListStore>),
            &prefix,
            // Multipart `Create` falls back to a HEAD check before the upload.
            Capabilities {
                conditional_put: true,
                multipart: true,
                list_drops_exact_match: false,
            },
            cloud,
        )?;
        Ok(Self {
            adapter,
            bucket,
            endpoint,
        })
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Multipart uploads started so far (by this store and its clones).
    pub fn multipart_uploads(&self) -> u64 {
        self.adapter.multipart_uploads()
    }

    fn description(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.adapter.prefix())
            .trim_end_matches('/')
            .to_owned()
    }
}

forward_store!(S3Store);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Store, StoreErrorKind};

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
        assert_eq!(store.adapter.options().max_retries, 2);
        assert_eq!(
            store.adapter.options().retry_timeout,
            Duration::from_secs(7)
        );
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
        let path = store.adapter.path("packs/ab/cd").unwrap();
        assert_eq!(path.as_ref(), "repo/one/packs/ab/cd");
        assert_eq!(store.adapter.key_of(&path), "packs/ab/cd");
        assert_eq!(
            store.adapter.path("../x").unwrap_err().kind(),
            StoreErrorKind::InvalidKey
        );
        assert!(!format!("{store:?}").contains("secret"));
    }
}
