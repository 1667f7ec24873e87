//! The store conformance suite against real servers of the other object services, started here
//! on loopback ports: Azure Blob Storage (Azurite) and WebDAV (`rclone serve webdav`). Each store is held to what `LocalStore` promises, except
//! where the service cannot (WebDAV has no conditional put, so its racing creates are held to
//! the best-effort rule, as on Garage). Plus what each does with large objects and bad
//! credentials. Google Cloud Storage has no test server here: no installable emulator serves
//! what object_store's client sends (fake-gcs-server has no XML-API PUT, gcp-storage-emulator
//! no HEAD), so `GcsStore` is covered by its unit tests only (see docs/object-storage.md).
//!
//! Without a server on the PATH its tests fail under `CI=true` and skip loudly otherwise
//! (install them with `scripts/install/store.sh`).

#![allow(clippy::unwrap_used, reason = "tests")]
#![allow(clippy::expect_used, reason = "tests")]

use std::time::Duration;

use backstop_store::{
    AzureStore, CloudStoreOptions, CountingStore, PutMode, Store, StoreErrorKind, WebDavStore,
    conformance, open_url,
};

mod support {
    pub(crate) mod services;
}
use support::services::{
    AZURITE_ACCOUNT, AZURITE_KEY, Service, ServiceServer, WEBDAV_PASSWORD, WEBDAV_USER,
    http_request,
};

/// Creates a container on Azurite with a Shared Key signed request
/// (<https://learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key>): eleven
/// empty standard headers for a bodiless PUT, then the `x-ms-` headers and the resource, with
/// the account doubled as Azurite's path-style URLs have it.
fn create_container(server: &ServiceServer, container: &str) {
    use base64::Engine as _;
    use hmac::{KeyInit as _, Mac as _};
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let version = "2021-08-06";
    let string_to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n\
         /{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{container}\nrestype:container"
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(AZURITE_KEY)
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(string_to_sign.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let answer = http_request(
        server.addr(),
        "PUT",
        &format!("/{AZURITE_ACCOUNT}/{container}?restype=container"),
        &[
            ("x-ms-date", date),
            ("x-ms-version", version.to_owned()),
            (
                "Authorization",
                format!("SharedKey {AZURITE_ACCOUNT}:{signature}"),
            ),
        ],
        b"",
    );
    assert!(
        matches!(answer, Some((201, _))),
        "create container {container}: {answer:?}\n{}",
        server.log()
    );
}

fn small_parts() -> CloudStoreOptions {
    CloudStoreOptions::default()
        .with_multipart_threshold(6 << 20)
        .with_part_size(5 << 20)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn azure_store_conforms_on_azurite() {
    let Some(server) = ServiceServer::start(Service::Azurite) else {
        return;
    };
    create_container(&server, "conformance");
    let store = open_url(&server.url("conformance", "repo")).unwrap();
    assert_eq!(store.describe(), "az://conformance/repo");
    conformance::run_all(&store);
    assert!(store.list("").unwrap().is_empty(), "the suite cleans up");
}

#[test]
fn azure_large_objects_go_up_in_blocks() {
    let Some(server) = ServiceServer::start(Service::Azurite) else {
        return;
    };
    create_container(&server, "blocks");
    let store = CountingStore::new(
        AzureStore::from_url_with_options(&server.url("blocks", ""), small_parts()).unwrap(),
    );
    let big = pattern(12 << 20);
    store.put("packs/big", &big, PutMode::Create).unwrap();
    store.put("packs/small", b"small", PutMode::Create).unwrap();
    assert_eq!(store.inner().multipart_uploads(), 1);
    assert_eq!(store.get("packs/big").unwrap(), big);
    assert_eq!(
        store
            .put("packs/big", &big, PutMode::Create)
            .unwrap_err()
            .kind(),
        StoreErrorKind::AlreadyExists
    );
}

#[test]
fn webdav_store_conforms_on_rclone() {
    let Some(server) = ServiceServer::start(Service::RcloneWebDav) else {
        return;
    };
    let store = open_url(&server.url_with_user("dav", "repo")).unwrap();
    assert!(
        store.describe().contains("create-if-absent is best effort"),
        "{}",
        store.describe()
    );
    assert!(!store.describe().contains(WEBDAV_PASSWORD));
    // WebDAV has no conditional put: racing creates can all win; each object stays whole.
    conformance::run_all_without_atomic_create(&store);
    assert!(store.list("").unwrap().is_empty(), "the suite cleans up");
    // The objects become plain files under the served directory (rclone writes its cache
    // back a few seconds after the upload).
    store.put("packs/ab/cd", b"bytes", PutMode::Create).unwrap();
    let file = server.data_dir().join("dav/repo/packs/ab/cd");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::read(&file).ok().as_deref() != Some(b"bytes".as_slice()) {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never appeared",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn webdav_wrong_password_is_permission_denied() {
    let Some(server) = ServiceServer::start(Service::RcloneWebDav) else {
        return;
    };
    let url = format!(
        "webdav+http://{WEBDAV_USER}:wrong@{}/dav/repo?max_retries=1&retry_timeout=5",
        server.addr()
    );
    let store = WebDavStore::from_url_with_options(
        &url,
        CloudStoreOptions::default().with_retries(1, Duration::from_secs(5)),
    )
    .unwrap();
    let err = store.get("config").unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::PermissionDenied, "{err}");
}
