//! The store conformance suite against real S3-protocol servers started here on loopback
//! ports (moto's `moto_server`, and `s3s-fs`, which checks signatures and keeps objects as
//! files), so `S3Store` is held to exactly what `LocalStore` and `MemoryStore` promise:
//! NotFound, AlreadyExists, ranges, listings, multipart, concurrency. Plus retries, the bound on
//! them, and a server killed in the middle of a multipart upload.
//!
//! Without the servers on the PATH the tests fail under `CI=true` and skip loudly otherwise
//! (install them with `scripts/install/store.sh`).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use backstop_store::{
    CountingStore, PutMode, S3Credentials, S3Store, S3StoreOptions, Store, StoreErrorKind,
    conformance,
};

mod support {
    pub(crate) mod s3_server;
}
use support::s3_server::{ACCESS_KEY, Kind, S3Server, SECRET_KEY, free_port};

/// Creates a bucket and opens a store under `prefix` in it.
fn open_store(server: &S3Server, bucket: &str, prefix: &str, options: S3StoreOptions) -> S3Store {
    server.create_bucket(bucket);
    S3Store::from_url_with_options(
        &server.url(bucket, prefix),
        options.with_credentials(S3Credentials::new(ACCESS_KEY, SECRET_KEY)),
    )
    .expect("S3 store from a valid URL")
}

#[test]
fn s3_store_conforms() {
    let Some(server) = S3Server::start(Kind::Moto) else {
        return;
    };
    let store = open_store(&server, "conformance", "repo", S3StoreOptions::default());
    conformance::run_all(&store);
    assert!(
        store.list("").unwrap().is_empty(),
        "the suite cleans up after itself"
    );
}

#[test]
fn large_objects_go_up_in_parts_and_small_ones_in_one_request() {
    let Some(server) = S3Server::start(Kind::Moto) else {
        return;
    };
    let options = S3StoreOptions::default()
        .with_multipart_threshold(6 << 20)
        .with_part_size(5 << 20);
    let store = CountingStore::new(open_store(&server, "multipart", "", options));
    let big: Vec<u8> = (0..(12u32 << 20)).map(|i| (i % 251) as u8).collect();
    store.put("packs/big", &big, PutMode::Create).unwrap();
    store.put("packs/small", b"small", PutMode::Create).unwrap();
    assert_eq!(
        store.inner().multipart_uploads(),
        1,
        "only the large object goes up in parts"
    );
    assert_eq!(store.get("packs/big").unwrap(), big);
    assert_eq!(
        store.inner().head("packs/big").unwrap().size,
        big.len() as u64
    );
    // A multipart Create checks for the object first.
    let err = store.put("packs/big", &big, PutMode::Create).unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::AlreadyExists);
    assert_eq!(store.counts().bytes_up, big.len() as u64 + 5);
}

#[test]
fn unreachable_server_is_a_transient_error_within_the_retry_bound() {
    // A port nobody listens on: connection refused on every attempt.
    let port = free_port();
    let url = format!("s3://bucket?endpoint=http://127.0.0.1:{port}&region=us-east-1");
    let options = S3StoreOptions::default()
        .with_retries(3, Duration::from_secs(5))
        .with_credentials(S3Credentials::new("id", "secret"));
    let store = S3Store::from_url_with_options(&url, options).unwrap();
    let started = Instant::now();
    let err = store.put("k", b"v", PutMode::Overwrite).unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Transient, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn server_errors_are_retried_then_reported_as_transient() {
    // A server that answers every request with 503, counting them.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // Read the request head (the body of a small put arrives with it or is ignored).
            let mut buf = [0u8; 64 * 1024];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    let url = format!("s3://bucket?endpoint=http://127.0.0.1:{port}&region=us-east-1");
    let options = S3StoreOptions::default()
        .with_retries(2, Duration::from_secs(10))
        .with_credentials(S3Credentials::new("id", "secret"));
    let store = S3Store::from_url_with_options(&url, options).unwrap();
    let started = Instant::now();
    let err = store.get("packs/x").unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Transient, "{err}");
    assert_eq!(
        requests.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "one try and two retries"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn called_from_an_async_task_is_an_error_not_a_deadlock() {
    let url = "s3://bucket?endpoint=http://127.0.0.1:1&region=us-east-1";
    let options = S3StoreOptions::default().with_credentials(S3Credentials::new("id", "secret"));
    let store = S3Store::from_url_with_options(url, options).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let err = runtime.block_on(async { store.get("k") }).unwrap_err();
    assert!(err.to_string().contains("async runtime"), "{err}");
}

#[test]
fn s3_store_conforms_on_a_signature_checking_server() {
    let Some(server) = S3Server::start(Kind::S3sFs) else {
        return;
    };
    let store = open_store(&server, "conformance", "repo", S3StoreOptions::default());
    // s3s-fs checks `If-None-Match: *` before it writes, so racing creates can all win, as on
    // Garage: the suite holds it to what such a store promises.
    conformance::run_all_without_atomic_create(&store);
    assert!(
        store.list("").unwrap().is_empty(),
        "the suite cleans up after itself"
    );
    // Wrong credentials are refused, and say so.
    let wrong = S3Store::from_url_with_options(
        &server.url("conformance", "repo"),
        S3StoreOptions::default()
            .with_retries(1, Duration::from_secs(5))
            .with_credentials(S3Credentials::new(ACCESS_KEY, "not-the-secret")),
    )
    .unwrap();
    let err = wrong.get("config").unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::PermissionDenied, "{err}");
}

#[test]
fn a_server_killed_mid_upload_leaves_no_object_and_comes_back() {
    let Some(mut server) = S3Server::start(Kind::S3sFs) else {
        return;
    };
    let options = S3StoreOptions::default()
        .with_multipart_threshold(6 << 20)
        .with_part_size(5 << 20)
        .with_max_concurrent_parts(1)
        .with_retries(2, Duration::from_secs(3))
        .with_request_timeout(Duration::from_secs(5));
    let store = open_store(&server, "killed", "repo", options);
    store.put("packs/before", b"kept", PutMode::Create).unwrap();
    let big: Vec<u8> = (0..(60u32 << 20)).map(|i| (i % 253) as u8).collect();

    let outcome = std::thread::scope(|s| {
        let upload = s.spawn(|| store.put("packs/big", &big, PutMode::Create));
        // Kill the server once the upload is under way (its first part has arrived).
        let deadline = Instant::now() + Duration::from_secs(60);
        while !server.requests().iter().any(|op| op == "UploadPart") {
            assert!(
                Instant::now() < deadline,
                "no part arrived:\n{}",
                server.log()
            );
            assert!(!upload.is_finished(), "the upload finished before the kill");
            std::thread::sleep(Duration::from_millis(20));
        }
        server.stop();
        upload.join().unwrap()
    });
    let err = outcome.expect_err("the put cannot succeed with the server gone");
    assert_eq!(err.kind(), StoreErrorKind::Transient, "{err}");
    assert!(err.to_string().contains("packs/big"), "{err}");

    server.restart();
    assert_eq!(store.get("packs/before").unwrap(), b"kept");
    assert_eq!(
        store.get("packs/big").unwrap_err().kind(),
        StoreErrorKind::NotFound,
        "a cut multipart upload leaves no object"
    );
    let keys: Vec<String> = store.list("").unwrap().into_iter().map(|m| m.key).collect();
    assert_eq!(keys, vec!["packs/before".to_owned()]);
    // And the same store works again without being reopened.
    store.put("packs/big", &big, PutMode::Create).unwrap();
    assert_eq!(store.get("packs/big").unwrap().len(), big.len());
}

/// Reads one HTTP message (head and a `Content-Length` body) from `stream`.
fn read_message(stream: &mut std::net::TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf)
}

/// A create whose first try reached the server but whose answer was lost: the client tries
/// again, and the server refuses the repeat (412, the object exists). The object is the one
/// this put wrote, so the put succeeds; a create over different bytes still fails.
#[test]
fn a_create_retried_after_its_first_try_landed_succeeds() {
    let Some(server) = S3Server::start(Kind::Moto) else {
        return;
    };
    server.create_bucket("retried");
    let backend = server.addr();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let puts_answered_503 = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let lost = puts_answered_503.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut client) = stream else { return };
            let lost = lost.clone();
            std::thread::spawn(move || {
                while let Some(request) = read_message(&mut client) {
                    let mut server = std::net::TcpStream::connect(backend).unwrap();
                    server.write_all(&request).unwrap();
                    let Some(answer) = read_message(&mut server) else {
                        return;
                    };
                    // The first PUT lands on the server, and its answer is lost.
                    let is_put = request.starts_with(b"PUT ");
                    if is_put && lost.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                        let _ = client.write_all(
                            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
                        );
                        continue;
                    }
                    if client.write_all(&answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let url = server
        .url("retried", "repo")
        .replace(&server.endpoint(), &format!("http://127.0.0.1:{port}"));
    let store = S3Store::from_url_with_options(
        &url,
        S3StoreOptions::default().with_credentials(S3Credentials::new(ACCESS_KEY, SECRET_KEY)),
    )
    .unwrap();
    store
        .put("snapshots/0000000001-ab", b"the snapshot", PutMode::Create)
        .expect("the retried create of our own bytes");
    assert!(
        puts_answered_503.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the put was not tried again"
    );
    assert_eq!(
        store.get("snapshots/0000000001-ab").unwrap(),
        b"the snapshot"
    );
    let err = store
        .put("snapshots/0000000001-ab", b"another", PutMode::Create)
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::AlreadyExists, "{err}");
}
