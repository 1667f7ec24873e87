//! The store conformance suite against real servers of the other object services, started here
//! on loopback ports: Azure Blob Storage (Azurite), WebDAV (`rclone serve webdav`), SFTP
//! (OpenSSH's `sshd`) and Google Cloud Storage (`gcp-storage-emulator`, Google's JSON API). Each
//! store is held to what `LocalStore` promises, except where the service cannot (WebDAV and SFTP
//! have no conditional put, and the GCS emulator ignores preconditions, so their racing creates
//! are held to the best-effort rule, as on Garage). Plus what each does with large objects, bad
//! credentials, missing buckets and outages, that SFTP readers never see a half-written object,
//! and that GCS creates carry the `ifGenerationMatch=0` precondition real GCS enforces (read from
//! the emulator's request log, since the emulator itself does not check it).
//!
//! Without a server on the PATH its tests fail under `CI=true` and skip loudly otherwise
//! (install them with `scripts/install/store.sh`).

#![allow(clippy::unwrap_used, reason = "tests")]
#![allow(clippy::expect_used, reason = "tests")]

use std::time::Duration;

use backstop_store::{
    AzureStore, CloudStoreOptions, CountingStore, GcsStore, PutMode, SftpStore, Store,
    StoreErrorKind, WebDavStore, conformance, open_url,
};

mod support {
    pub(crate) mod services;
    pub(crate) mod sshd;
}
use support::services::{
    AZURITE_ACCOUNT, AZURITE_KEY, GCS_BUCKET, Service, ServiceServer, WEBDAV_PASSWORD, WEBDAV_USER,
    http_request,
};
use support::sshd::SshServer;

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

/// Files under `dir` whose name starts with `.tmp-` (a put's temporary file).
fn temp_files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    backstop_store::test_servers::files_under(dir)
        .into_iter()
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with(".tmp-"))
        })
        .collect()
}

/// This machine's `ssh` processes with their ages and arguments, for a failure's message.
fn ssh_processes() -> String {
    let out = std::process::Command::new("ps")
        .args(["-eo", "pid,ppid,etimes,args"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter(|line| line.contains("ssh "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn sftp_store_conforms_on_sshd() {
    let Some(server) = SshServer::start() else {
        return;
    };
    let store = open_url(&server.url_with_key("repo")).unwrap();
    assert_eq!(
        store.describe(),
        format!(
            "{} (SFTP: create-if-absent is best effort)",
            server.url("repo")
        )
    );
    // SFTP has no conditional put: racing creates can all win; each object stays whole.
    conformance::run_all_without_atomic_create(&store);
    assert!(store.list("").unwrap().is_empty(), "the suite cleans up");
    // The objects are plain files under the repository's directory, with no temp files left.
    store.put("packs/ab/cd", b"bytes", PutMode::Create).unwrap();
    let repo = server.data_dir().join("repo");
    assert_eq!(std::fs::read(repo.join("packs/ab/cd")).unwrap(), b"bytes");
    assert_eq!(temp_files_under(&repo), Vec::<std::path::PathBuf>::new());
    // A temp file left by an interrupted put is never listed, and its name is no key.
    std::fs::write(repo.join("packs/ab/.tmp-0123456789abcdef"), b"torn").unwrap();
    let listed: Vec<String> = store
        .list("packs/")
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(listed, ["packs/ab/cd"]);
    assert_eq!(
        store
            .get("packs/ab/.tmp-0123456789abcdef")
            .unwrap_err()
            .kind(),
        StoreErrorKind::InvalidKey
    );
    // gc's cleanup removes that temp file once it is old enough, and not a fresh one (a put
    // that may still be running), nor any object.
    let old = repo.join("packs/ab/.tmp-0123456789abcdef");
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(120))
        .unwrap();
    let fresh = repo.join(".tmp-00000000000000ff");
    std::fs::write(&fresh, b"being written").unwrap();
    assert_eq!(store.remove_temp_files(Duration::from_secs(60)).unwrap(), 1);
    assert!(!old.exists(), "the old temp file is still there");
    assert!(fresh.exists(), "a fresh temp file was removed");
    assert_eq!(store.get("packs/ab/cd").unwrap(), b"bytes");
    // Dropping the store tells every pooled connection's ssh master to exit: the server sees
    // the connections close (each close takes it a moment).
    assert!(server.open_connections() > 0);
    drop(store);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while server.open_connections() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} SSH connections still open after the store was dropped; ssh processes here:\n{}\n\
             the server's log:\n{}",
            server.open_connections(),
            ssh_processes(),
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Each put's data is on the server's disk before its name appears: the store has the server
/// flush the temp file (`fsync@openssh.com`, which OpenSSH's server answers only once its
/// `fsync(2)` returned) and only then renames it. The count is of the server's confirmations.
#[test]
fn sftp_puts_are_flushed_on_the_server_before_they_are_renamed() {
    let Some(server) = SshServer::start() else {
        return;
    };
    let store = backstop_store::SftpStore::from_url(&server.url_with_key("repo")).unwrap();
    assert_eq!(store.server_flushes(), 0);
    for i in 0..3 {
        store
            .put(&format!("packs/0{i}/p{i}"), b"pack bytes", PutMode::Create)
            .unwrap();
        assert_eq!(store.server_flushes(), i + 1, "put {i}");
    }
    for i in 0..3 {
        assert_eq!(
            store.get(&format!("packs/0{i}/p{i}")).unwrap(),
            b"pack bytes"
        );
    }
    let repo = server.data_dir().join("repo");
    assert_eq!(temp_files_under(&repo), Vec::<std::path::PathBuf>::new());
}

#[test]
fn sftp_readers_never_see_a_half_written_object() {
    let Some(server) = SshServer::start() else {
        return;
    };
    let store = open_url(&server.url_with_key("repo")).unwrap();
    const SIZE: usize = 4 << 20;
    const WRITES: usize = 12;
    store
        .put("locks/lock", &vec![0; SIZE], PutMode::Overwrite)
        .unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let reads = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut reads = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                let bytes = store.get("locks/lock").unwrap();
                let first = bytes.first().copied();
                assert!(
                    bytes.len() == SIZE && bytes.iter().all(|&b| Some(b) == first),
                    "a reader saw {} bytes that are not one whole write",
                    bytes.len()
                );
                reads += 1;
            }
            reads
        });
        // Overwrites with a different byte each time; written in place, a reader would see
        // a truncated file or a mix of two writes.
        for i in 1..=WRITES {
            store
                .put("locks/lock", &vec![i as u8; SIZE], PutMode::Overwrite)
                .unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Release);
        reader.join().unwrap()
    });
    assert!(reads > 0, "the reader never read");
    assert_eq!(store.get("locks/lock").unwrap(), vec![WRITES as u8; SIZE]);
}

#[test]
fn sftp_refusals_and_outages_have_their_kinds() {
    let Some(server) = SshServer::start() else {
        return;
    };
    // The default host key check is strict, and this server's key is known nowhere (or, after
    // an earlier run on the same port, known as a different key).
    let strict = format!(
        "{}?key={}&max_retries=1&retry_timeout=5",
        server.url("repo"),
        server.user_key().display()
    );
    let err = SftpStore::from_url(&strict)
        .unwrap()
        .get("config")
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("known_hosts"), "{err}");

    let stranger = format!(
        "{}?key={}&known_hosts=accept-any&max_retries=1&retry_timeout=5",
        server.url("repo"),
        server.stranger_key().display()
    );
    let err = SftpStore::from_url(&stranger)
        .unwrap()
        .get("config")
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::PermissionDenied, "{err}");

    // Nobody listens on the port any more: a connection failure, tried again, then transient.
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("user_key");
    std::fs::copy(server.user_key(), &key).unwrap();
    let url = format!(
        "{}?key={}&known_hosts=accept-any&max_retries=2&retry_timeout=20",
        server.url("repo"),
        key.display()
    );
    drop(server);
    let started = std::time::Instant::now();
    let err = SftpStore::from_url(&url)
        .unwrap()
        .get("config")
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Transient, "{err}");
    assert!(err.to_string().contains("3 tries"), "{err}");
    // Backing off 0.5 s, then 1 s.
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

/// The request lines of uploads (`POST /upload/storage/v1/…`) the GCS emulator logged for the
/// object `name` (whose `/` the request encodes as `%2F`).
fn gcs_uploads_of(server: &ServiceServer, name: &str) -> Vec<String> {
    let parameter = format!("name={}", name.replace('/', "%2F"));
    server
        .log()
        .lines()
        .filter(|line| line.contains("\"POST /upload/storage/v1/b/"))
        .filter(|line| line.split(['?', '&', ' ']).any(|part| part == parameter))
        .map(str::to_owned)
        .collect()
}

#[test]
fn gcs_store_conforms_on_the_emulator() {
    let Some(server) = ServiceServer::start(Service::GcsEmulator) else {
        return;
    };
    let store = open_url(&server.url(GCS_BUCKET, "repo")).unwrap();
    assert_eq!(store.describe(), format!("gs://{GCS_BUCKET}/repo"));
    // The emulator ignores `ifGenerationMatch=0`, so racing creates can all win there (each
    // object stays whole); on GCS exactly one does. A create of an object that already exists
    // is still refused: the store looks first.
    let started = std::time::Instant::now();
    conformance::run_all_without_atomic_create(&store);
    eprintln!(
        "GCS conformance suite on the emulator: {:?}",
        started.elapsed()
    );
    assert!(store.list("").unwrap().is_empty(), "the suite cleans up");
    // Every request was one of the JSON API's: no XML-API multipart upload (`?uploads`), which
    // the emulator does not serve (it answers 501 to anything it does not know).
    let log = server.log();
    assert!(!log.contains("?uploads"), "{log}");
    assert!(!log.contains("Method not implemented"), "{log}");
}

#[test]
fn gcs_large_objects_go_up_in_one_request() {
    let Some(server) = ServiceServer::start(Service::GcsEmulator) else {
        return;
    };
    // Part options that would split this object into five parts on the other services.
    let store = CountingStore::new(
        GcsStore::from_url_with_options(&server.url(GCS_BUCKET, "big"), small_parts()).unwrap(),
    );
    let big = pattern(24 << 20);
    store.put("packs/big", &big, PutMode::Create).unwrap();
    let uploads = gcs_uploads_of(&server, "big/packs/big");
    assert_eq!(uploads.len(), 1, "{uploads:?}");
    assert!(uploads[0].contains("uploadType=media"), "{uploads:?}");
    assert_eq!(store.head("packs/big").unwrap().size, 24 << 20);
    assert!(
        store.get("packs/big").unwrap() == big,
        "the object came back different"
    );
    // Ranges across where the part boundaries would be, and the last bytes.
    for range in [
        (5 << 20) - 3..(5 << 20) + 3,
        (10 << 20) - 1..(20 << 20) + 1,
        (24 << 20) - 2..24 << 20,
    ] {
        let got = store
            .get_range("packs/big", range.start as u64..range.end as u64)
            .unwrap();
        assert!(
            got == big[range.clone()],
            "range {range:?} came back different"
        );
    }
    assert_eq!(
        store
            .get_range("packs/big", (24 << 20) - 1..(24 << 20) + 1)
            .unwrap_err()
            .kind(),
        StoreErrorKind::InvalidRange
    );
    // One download per read: none was tried again.
    let downloads = server
        .log()
        .lines()
        .filter(|line| {
            line.contains("\"GET /storage/v1/b/backstop-test/o/big%2Fpacks%2Fbig?alt=media")
        })
        .count();
    assert_eq!(downloads, 5);
    eprintln!("GCS store requests: {:?}", store.counts());
}

#[test]
fn gcs_creates_carry_the_generation_precondition() {
    let Some(server) = ServiceServer::start(Service::GcsEmulator) else {
        return;
    };
    let store = GcsStore::from_url(&server.url(GCS_BUCKET, "repo")).unwrap();
    store.put("gen/created", b"one", PutMode::Create).unwrap();
    store
        .put("gen/overwritten", b"one", PutMode::Overwrite)
        .unwrap();
    store
        .put("gen/overwritten", b"two", PutMode::Overwrite)
        .unwrap();
    let created = gcs_uploads_of(&server, "repo/gen/created");
    assert_eq!(created.len(), 1, "{created:?}");
    assert!(created[0].contains("&ifGenerationMatch=0"), "{created:?}");
    let overwritten = gcs_uploads_of(&server, "repo/gen/overwritten");
    assert_eq!(overwritten.len(), 2, "{overwritten:?}");
    assert!(
        overwritten
            .iter()
            .all(|line| !line.contains("ifGenerationMatch")),
        "{overwritten:?}"
    );
    // A create of an existing object is refused before any upload: the emulator would have
    // let it through.
    let err = store
        .put("gen/created", b"two", PutMode::Create)
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::AlreadyExists, "{err}");
    assert_eq!(gcs_uploads_of(&server, "repo/gen/created").len(), 1);
    assert_eq!(store.get("gen/created").unwrap(), b"one");
}

#[test]
fn gcs_missing_bucket_is_named() {
    let Some(server) = ServiceServer::start(Service::GcsEmulator) else {
        return;
    };
    let store = GcsStore::from_url(&server.url("no-such-bucket", "repo")).unwrap();
    let err = store.put("config", b"x", PutMode::Create).unwrap_err();
    assert!(
        err.to_string()
            .contains("the bucket `no-such-bucket` does not exist"),
        "{err}"
    );
    assert_eq!(err.kind(), StoreErrorKind::Other, "{err}");
    let err = store.list("").unwrap_err();
    assert!(err.to_string().contains("`no-such-bucket`"), "{err}");
    // A get cannot tell a missing bucket from a missing object.
    assert_eq!(
        store.get("config").unwrap_err().kind(),
        StoreErrorKind::NotFound
    );
}

#[test]
fn gcs_outage_is_transient_within_the_retry_bound() {
    let Some(server) = ServiceServer::start(Service::GcsEmulator) else {
        return;
    };
    let url = format!(
        "{}&max_retries=2&retry_timeout=20",
        server.url(GCS_BUCKET, "repo")
    );
    let store = GcsStore::from_url(&url).unwrap();
    store.put("config", b"x", PutMode::Create).unwrap();
    // Nobody listens on the port any more: connections are refused, tried again, then
    // transient.
    drop(server);
    let started = std::time::Instant::now();
    let err = store.get("config").unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(err.kind(), StoreErrorKind::Transient, "{err}");
    assert!(err.to_string().contains("3 tries"), "{err}");
    // Backing off 0.5 s, then 1 s; well inside the 20 s bound.
    assert!(elapsed >= Duration::from_millis(1500), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
    eprintln!("GCS outage reported after {elapsed:?}");
}
