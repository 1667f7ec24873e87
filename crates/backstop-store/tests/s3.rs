//! The store conformance suite against a real S3-protocol server (moto's `moto_server`), started
//! here on a free loopback port, so `S3Store` is held to exactly what `LocalStore` and
//! `MemoryStore` promise: NotFound, AlreadyExists, ranges, listings, multipart, concurrency.
//!
//! Without `moto_server` on the PATH the tests fail under `CI=true` and skip loudly otherwise
//! (install it with `scripts/install/store.sh`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backstop_store::{
    CountingStore, PutMode, S3Credentials, S3Store, S3StoreOptions, Store, StoreErrorKind,
    conformance,
};

const SERVER: &str = "moto_server";

/// A running server, killed when the test ends, also when it panics.
struct Server {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_installed() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(SERVER).is_file()))
}

/// Starts the server, or returns `None` (after saying so) when it is not installed and this is
/// not CI.
fn start_server() -> Option<Server> {
    if !server_installed() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{SERVER} is missing; run scripts/install-test-deps.sh");
        }
        eprintln!("SKIPPED: {SERVER} missing, run scripts/install-test-deps.sh");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    // Port 0 lets the kernel choose a free port; it is released just before the server binds
    // it, a window another process would have to hit exactly.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let child = Command::new(SERVER)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut server = Server {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            let log = std::fs::read_to_string(server._dir.path().join("server.log")).unwrap();
            panic!("{SERVER} exited with {status} before answering:\n{log}");
        }
        if http_status(server.addr, "GET", "/").is_some() {
            return Some(server);
        }
        assert!(
            Instant::now() < deadline,
            "{SERVER} did not answer on {} within 60 s",
            server.addr
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends a bodiless HTTP/1.1 request and returns the status code, or `None` if nobody answers.
fn http_status(addr: SocketAddr, method: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(head.get(9..12)?).ok()?.parse().ok()
}

/// Creates a bucket (moto needs no signature for that) and opens a store under `prefix` in it.
fn open_store(server: &Server, bucket: &str, prefix: &str, options: S3StoreOptions) -> S3Store {
    assert_eq!(
        http_status(server.addr, "PUT", &format!("/{bucket}")),
        Some(200),
        "create bucket"
    );
    let url = format!(
        "s3://{bucket}/{prefix}?endpoint=http://{}&region=us-east-1&path_style=true",
        server.addr
    );
    S3Store::from_url_with_options(
        &url,
        options.with_credentials(S3Credentials::new("backstop-test", "backstop-test-secret")),
    )
    .unwrap()
}

#[test]
fn s3_store_conforms() {
    let Some(server) = start_server() else { return };
    let store = open_store(&server, "conformance", "repo", S3StoreOptions::default());
    conformance::run_all(&store);
    assert!(
        store.list("").unwrap().is_empty(),
        "the suite cleans up after itself"
    );
}

#[test]
fn large_objects_go_up_in_parts_and_small_ones_in_one_request() {
    let Some(server) = start_server() else { return };
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
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
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
