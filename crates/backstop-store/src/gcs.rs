//! A store on Google Cloud Storage (`gs://bucket/prefix`) through the `object_store` crate's GCS
//! client and the shared adapter in `object.rs`.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::list::PaginatedListStore;

use crate::StoreError;
use crate::object::{
    Capabilities, CloudStoreOptions, ObjectStoreAdapter, config_error, env, forward_store,
    parse_bool, parse_container_url,
};

const SERVICE: &str = "GCS";

/// The URL parameters [`GcsStore::from_url`] understands.
const URL_PARAMETERS: &str = "endpoint, anonymous, max_retries, retry_timeout";

/// A service-account key that turns authentication off (object_store's emulator switch).
const ANONYMOUS_KEY: &str =
    r#"{"private_key": "", "private_key_id": "", "client_email": "", "disable_oauth": true}"#;

/// Objects in a Google Cloud Storage bucket under an optional prefix: the key `packs/ab/ab12`
/// of `gs://backups/repo` is the object `repo/packs/ab/ab12`.
///
/// - Puts up to [`CloudStoreOptions::multipart_threshold`] are one PUT request;
///   `PutMode::Create` sends `x-goog-if-generation-match: 0`, which GCS enforces atomically.
/// - Larger puts are XML multipart uploads, parts in parallel; the object appears only when the
///   upload completes. `Create` is then a HEAD check before the upload, which a concurrent
///   writer can race.
/// - Retries and their bound as in [`CloudStoreOptions`]; what still fails is
///   [`StoreErrorKind::Transient`](crate::StoreErrorKind::Transient).
///
/// The methods block the calling thread; calling them from inside an async task is refused.
#[derive(Clone)]
pub struct GcsStore {
    adapter: ObjectStoreAdapter,
    bucket: String,
    endpoint: Option<String>,
}

impl std::fmt::Debug for GcsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("GcsStore")
            .field("bucket", &self.bucket)
            .field("prefix", &self.adapter.prefix())
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
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
    /// Credentials come from the environment as `object_store` reads it:
    /// `GOOGLE_SERVICE_ACCOUNT` (path of a service-account key file),
    /// `GOOGLE_SERVICE_ACCOUNT_KEY` (the key as JSON), `GOOGLE_APPLICATION_CREDENTIALS` or the
    /// gcloud application-default credentials file, else the instance metadata server.
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
        let mut builder = GoogleCloudStorageBuilder::from_env().with_bucket_name(&bucket);
        if anonymous {
            // `skip_signature` alone still fetches a token for some requests (conditional and
            // multipart puts), from the instance metadata server; a key with `disable_oauth`
            // makes every request go without one.
            builder = builder
                .with_skip_signature(true)
                .with_service_account_key(ANONYMOUS_KEY);
        }
        if let Some(endpoint) = &endpoint {
            builder = builder.with_base_url(endpoint.trim_end_matches('/'));
        }
        let client = builder
            .with_retry(options.retry_config())
            .with_client_options(options.client_options(endpoint.as_deref()))
            .build()
            .map_err(|err| {
                StoreError::with_source(
                    crate::StoreErrorKind::Other,
                    "",
                    format!("cannot configure the GCS client for `{url}`"),
                    err,
                )
            })?;
        let client = Arc::new(client);
        let adapter = ObjectStoreAdapter::new(
            SERVICE,
            Arc::clone(&client) as Arc<dyn ObjectStore>,
            Some(client as Arc<dyn PaginatedListStore>),
            &prefix,
            Capabilities {
                conditional_put: true,
                multipart: true,
                list_drops_exact_match: false,
            },
            options,
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
        format!("gs://{}/{}", self.bucket, self.adapter.prefix())
            .trim_end_matches('/')
            .to_owned()
    }
}

forward_store!(GcsStore);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

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
        let store = GcsStore::from_url(
            "gs://backups/repo/one?anonymous=true&endpoint=http://127.0.0.1:1&retry_timeout=7",
        )
        .unwrap();
        assert_eq!(store.describe(), "gs://backups/repo/one");
        assert_eq!(
            store.adapter.options().retry_timeout,
            std::time::Duration::from_secs(7)
        );
        assert_eq!(store.bucket(), "backups");
    }
}
