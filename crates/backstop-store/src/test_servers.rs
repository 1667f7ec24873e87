//! What the test harnesses that start real servers share (`tests/support/`: S3, WebDAV, Azure
//! and GCS emulators, sshd): the rule for a missing program, a free loopback port, and a raw
//! HTTP request to see whether a server answers. Behind the `testing` feature.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// Where `program` is on the `PATH`, if it is.
pub fn find_program(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    })
}

/// Whether every program in `programs` is on the `PATH` (see [`require`]).
pub fn require_programs(programs: &[&str]) -> bool {
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| find_program(p).is_none())
        .collect();
    require(&missing.join(", "), missing.is_empty())
}

/// Whether `what` a test needs is here. Under CI (`CI=true`) a missing one fails the test, so
/// that CI cannot pass by skipping; elsewhere the test skips, and says so.
pub fn require(what: &str, present: bool) -> bool {
    if !present {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{what} missing; run scripts/install-test-deps.sh"
        );
        eprintln!("SKIPPED: {what} missing, run scripts/install-test-deps.sh");
    }
    present
}

/// A loopback port nobody listens on right now. It is released before the server binds it, a
/// window another process would have to hit exactly.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("bound address").port()
}

/// Sends one HTTP/1.1 request and returns the status code and the whole response, or `None`
/// if nobody answers.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.get(9..12)?.parse().ok()?;
    Some((status, text))
}

/// [`http_request`] without headers or body; the status code only.
pub fn http_status(addr: SocketAddr, method: &str, path: &str) -> Option<u16> {
    http_request(addr, method, path, &[], b"").map(|(status, _)| status)
}

/// Starts a server with `spawn` and waits (a minute at most) until it answers HTTP at `addr`;
/// returns the running process. A server that exits before it answers is started again when
/// `retry_exits` (a restart may find its port still held for a moment), and otherwise fails the
/// test, as does the deadline; both failures show `log()`, what the server logged.
pub fn spawn_until_answering(
    name: &str,
    addr: SocketAddr,
    mut spawn: impl FnMut() -> Child,
    log: impl Fn() -> String,
    retry_exits: bool,
) -> Child {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut child = spawn();
    loop {
        if let Some(status) = child.try_wait().expect("server status") {
            assert!(
                retry_exits && Instant::now() < deadline,
                "{name} exited with {status} before answering:\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(100));
            child = spawn();
            continue;
        }
        if http_status(addr, "GET", "/").is_some() {
            return child;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} did not answer on {addr} within 60 s:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every regular file under `dir`, recursively (what a server stores, where it keeps objects
/// as files). Directories that vanish while it looks (a server moving uploads into place) are
/// skipped, so callers assert on what they expect to find.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}
