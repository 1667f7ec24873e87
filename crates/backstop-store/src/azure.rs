//! A store on Azure Blob Storage (`az://container/prefix`) through the `object_store` crate's
//! Azure client and the shared adapter in `object.rs`.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::list::PaginatedListStore;

use crate::StoreError;
use crate::object::{
    Capabilities, CloudStoreOptions, ObjectStoreAdapter, config_error, env, forward_store,
    parse_bool, parse_container_url,
};

const SERVICE: &str = "Azure";

/// The URL parameters [`AzureStore::from_url`] understands.
const URL_PARAMETERS: &str = "account, endpoint, use_emulator, max_retries, retry_timeout";

/// The storage account of the Azurite emulator and its well-known key, which Microsoft
/// publishes for every Azurite installation (not a secret).
const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
const EMULATOR_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Blobs in an Azure Blob Storage container under an optional prefix: the key `packs/ab/ab12`
/// of `az://backups/repo` is the blob `repo/packs/ab/ab12` of container `backups`.
///
/// - Puts up to [`CloudStoreOptions::multipart_threshold`] are one Put Blob request;
///   `PutMode::Create` sends `If-None-Match: *`, which Azure enforces atomically.
/// - Larger puts are block uploads (Put Block, then Put Block List), parts in parallel; the blob
///   appears only when the block list is committed, so readers never see part of it. `Create`
///   is then a HEAD check before the upload, which a concurrent writer can race.
/// - Retries and their bound as in [`CloudStoreOptions`]; what still fails is
///   [`StoreErrorKind::Transient`](crate::StoreErrorKind::Transient).
///
/// The methods block the calling thread; calling them from inside an async task is refused.
#[derive(Clone)]
pub struct AzureStore {
    adapter: ObjectStoreAdapter,
    account: Option<String>,
    container: String,
    endpoint: Option<String>,
}

impl std::fmt::Debug for AzureStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("AzureStore")
            .field("account", &self.account)
            .field("container", &self.container)
            .field("prefix", &self.adapter.prefix())
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl AzureStore {
    /// Opens `az://container/prefix` (or `azure://`) with default options.
    ///
    /// URL parameters: `account=NAME` (else `AZURE_STORAGE_ACCOUNT_NAME`), `endpoint=URL` (the
    /// account's blob endpoint, default `https://ACCOUNT.blob.core.windows.net`; else
    /// `AZURE_STORAGE_ENDPOINT`), `use_emulator=true` (Azurite's well-known account and key;
    /// its endpoint is `endpoint=` if given, else `AZURITE_BLOB_STORAGE_URL`, else
    /// `http://127.0.0.1:10000`), and `max_retries`, `retry_timeout` as for S3.
    ///
    /// Credentials come from the environment as `object_store` reads it:
    /// `AZURE_STORAGE_ACCOUNT_KEY` (shared key), `AZURE_STORAGE_SAS_KEY`, `AZURE_STORAGE_TOKEN`,
    /// a service principal (`AZURE_STORAGE_CLIENT_ID`, `AZURE_STORAGE_CLIENT_SECRET`,
    /// `AZURE_STORAGE_TENANT_ID`), workload identity, the Azure CLI
    /// (`AZURE_USE_AZURE_CLI=true`) or the managed identity endpoint.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        Self::from_url_with_options(url, CloudStoreOptions::default())
    }

    /// Like [`AzureStore::from_url`], with explicit options (URL parameters override them).
    pub fn from_url_with_options(
        url: &str,
        mut options: CloudStoreOptions,
    ) -> Result<Self, StoreError> {
        let (parsed, container, prefix) = parse_container_url(url, SERVICE, &["az", "azure"])?;
        let (mut account, mut endpoint, mut use_emulator) = (None, None, false);
        for (name, value) in parsed.query_pairs() {
            match name.as_ref() {
                "account" => account = Some(value.into_owned()),
                "endpoint" => endpoint = Some(value.into_owned()),
                "use_emulator" => use_emulator = parse_bool(url, SERVICE, "use_emulator", &value)?,
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
        let mut builder = MicrosoftAzureBuilder::from_env().with_container_name(&container);
        if use_emulator {
            // object_store's own emulator mode takes its endpoint only from the environment;
            // the same settings by hand let `endpoint=` name an Azurite on any port. Azurite
            // serves accounts path-style: `http://host:port/devstoreaccount1`.
            let base = endpoint
                .or_else(|| env("AZURITE_BLOB_STORAGE_URL"))
                .unwrap_or_else(|| "http://127.0.0.1:10000".to_owned());
            let base = base.trim_end_matches('/');
            let name = account.unwrap_or_else(|| EMULATOR_ACCOUNT.to_owned());
            let with_account = if base.ends_with(&format!("/{name}")) {
                base.to_owned()
            } else {
                format!("{base}/{name}")
            };
            builder = builder
                .with_account(&name)
                .with_access_key(EMULATOR_KEY)
                .with_config(AzureConfigKey::CredentialType, "access_key");
            account = Some(name);
            endpoint = Some(with_account);
        } else if let Some(name) = &account {
            builder = builder.with_account(name);
        }
        let endpoint = endpoint.or_else(|| env("AZURE_STORAGE_ENDPOINT"));
        if let Some(endpoint) = &endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        let account = account.or_else(|| env("AZURE_STORAGE_ACCOUNT_NAME"));
        if account.is_none() {
            return Err(config_error(
                SERVICE,
                url,
                "no storage account; add `?account=NAME` or set AZURE_STORAGE_ACCOUNT_NAME",
            ));
        }
        let client = builder
            .with_retry(options.retry_config())
            .with_client_options(options.client_options(endpoint.as_deref()))
            .build()
            .map_err(|err| {
                StoreError::with_source(
                    crate::StoreErrorKind::Other,
                    "",
                    format!("cannot configure the Azure client for `{url}`"),
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
                list_drops_exact_match: true,
            },
            options,
        )?;
        Ok(Self {
            adapter,
            account,
            container,
            endpoint,
        })
    }

    /// The container name.
    pub fn container(&self) -> &str {
        &self.container
    }

    /// Block uploads started so far (by this store and its clones).
    pub fn multipart_uploads(&self) -> u64 {
        self.adapter.multipart_uploads()
    }

    fn description(&self) -> String {
        format!("az://{}/{}", self.container, self.adapter.prefix())
            .trim_end_matches('/')
            .to_owned()
    }
}

forward_store!(AzureStore);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    #[test]
    fn urls_are_checked() {
        let err = AzureStore::from_url("az://c/p?account=a&colour=red").unwrap_err();
        assert!(
            err.to_string().contains("unknown parameter `colour`"),
            "{err}"
        );
        let err = AzureStore::from_url("az:///p?account=a").unwrap_err();
        assert!(err.to_string().contains("no bucket or container"), "{err}");
        let store =
            AzureStore::from_url("azure://backups/repo/one?use_emulator=true&max_retries=3")
                .unwrap();
        assert_eq!(store.describe(), "az://backups/repo/one");
        assert_eq!(store.adapter.options().max_retries, 3);
        assert_eq!(
            store.endpoint.as_deref(),
            Some("http://127.0.0.1:10000/devstoreaccount1")
        );
        assert!(!format!("{store:?}").contains(EMULATOR_KEY));
    }
}
