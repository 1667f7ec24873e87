//! What the test harnesses that start real servers share (`tests/support/`: S3, WebDAV, Azure
//! and GCS emulators, sshd): the rule for a missing program, a free loopback port, and a raw
//! HTTP request to see whether a server answers. Behind the `testing` feature.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

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
