//! The pause protocol over HTTP on a loopback address (the table in the crate docs).

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{PauseController, PauseError};

/// The HTTP endpoints of a [`PauseController`]; stops serving when dropped (the pause state
/// stays with the controller).
pub struct PauseServer {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PauseServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PauseServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// The drain timeout when a pause request names none.
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

impl PauseServer {
    pub(crate) fn start(
        controller: PauseController,
        addr: impl ToSocketAddrs,
    ) -> std::io::Result<Self> {
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
        let Some(addr) = addrs.first().copied() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the pause endpoint's address resolves to nothing",
            ));
        };
        // The endpoints have no authentication: anyone who reaches them can stop the
        // application, so they are never exposed beyond this machine.
        if let Some(open) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "the pause endpoint must listen on a loopback address (127.0.0.1 or ::1), \
                     not {open}: it has no authentication"
                ),
            ));
        }
        let server = tiny_http::Server::http(addr).map_err(|e| {
            std::io::Error::other(format!("cannot listen for pause requests on {addr}: {e}"))
        })?;
        let addr = server.server_addr().to_ip().unwrap_or(addr);
        let server = Arc::new(server);
        let thread = {
            let server = Arc::clone(&server);
            std::thread::Builder::new()
                .name("backstop-pause-http".into())
                .spawn(move || accept(&server, &controller))?
        };
        tracing::info!(%addr, "pause endpoints listening");
        Ok(Self {
            server,
            addr,
            thread: Some(thread),
        })
    }

    /// The address the endpoints listen on (with the port chosen when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<address>`, the base URL a backup's group configuration names.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for PauseServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept(server: &tiny_http::Server, controller: &PauseController) {
    for request in server.incoming_requests() {
        // A pause request blocks while draining; status and unpause must still be answered
        // meanwhile, so each request gets its own thread (callers are few: backups on this
        // machine).
        let controller = controller.clone();
        let spawned = std::thread::Builder::new()
            .name("backstop-pause-request".into())
            .spawn(move || handle(request, &controller));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a thread for a pause request");
        }
    }
}

fn handle(request: tiny_http::Request, controller: &PauseController) {
    let url = request.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let query = parse_query(query);
    let (status, body) = match (request.method(), path) {
        (tiny_http::Method::Post, "/pause") => pause(controller, &query),
        (tiny_http::Method::Post, "/unpause") => unpause(controller, &query),
        (tiny_http::Method::Get, "/status") => (200, to_json(&controller.status())),
        (_, "/pause" | "/unpause" | "/status") => (
            405,
            error_json("use POST for /pause and /unpause, GET for /status"),
        ),
        _ => (
            404,
            error_json(&format!(
                "no endpoint `{path}`: the pause protocol has POST /pause, POST /unpause and \
                 GET /status"
            )),
        ),
    };
    let content_type =
        tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).ok();
    let mut response = tiny_http::Response::from_string(body).with_status_code(status);
    if let Some(header) = content_type {
        response = response.with_header(header);
    }
    if let Err(e) = request.respond(response) {
        tracing::warn!(error = %e, path, "could not answer a pause request");
    }
}

fn pause(controller: &PauseController, query: &BTreeMap<String, String>) -> (u16, String) {
    let lease = match millis_param(query, "lease_ms") {
        Ok(Some(lease)) => lease,
        Ok(None) => return (400, error_json("`lease_ms` is required")),
        Err(e) => return (400, error_json(&e)),
    };
    let result = match millis_param(query, "pause_id") {
        Err(e) => return (400, error_json(&e)),
        Ok(Some(id)) => controller.renew(millis(id), lease),
        Ok(None) => {
            let timeout = match millis_param(query, "timeout_ms") {
                Ok(t) => t.unwrap_or(DEFAULT_DRAIN_TIMEOUT),
                Err(e) => return (400, error_json(&e)),
            };
            controller.pause(lease, timeout)
        }
    };
    match result {
        Ok(ticket) => (200, to_json(&ticket)),
        Err(e) => (error_status(&e), error_json(&e.to_string())),
    }
}

fn unpause(controller: &PauseController, query: &BTreeMap<String, String>) -> (u16, String) {
    let id = match millis_param(query, "pause_id") {
        Ok(id) => id.map(millis),
        Err(e) => return (400, error_json(&e)),
    };
    match controller.resume(id) {
        Ok(Some(resumed)) => (200, to_json(&resumed)),
        Ok(None) => (200, "{\"pause_id\":null,\"paused_ms\":0}".to_owned()),
        Err(e) => (error_status(&e), error_json(&e.to_string())),
    }
}

fn error_status(e: &PauseError) -> u16 {
    match e {
        PauseError::AlreadyPaused { .. } | PauseError::Ended { .. } => 409,
        PauseError::DrainTimeout { .. } => 504,
        _ => 400,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A non-negative integer parameter, as a duration in milliseconds (ids reuse it).
fn millis_param(query: &BTreeMap<String, String>, key: &str) -> Result<Option<Duration>, String> {
    query
        .get(key)
        .map(|v| {
            v.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| format!("`{key}={v}` is not a non-negative integer"))
        })
        .transpose()
}

/// `a=1&b=2`; the protocol's values are plain integers, so no percent-decoding is needed.
fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| error_json(&e.to_string()))
}

fn error_json(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use crate::{PauseStatus, PauseTicket, WhilePaused};

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into()
    }

    fn call(agent: &ureq::Agent, post: bool, url: &str) -> (u16, serde_json::Value) {
        let mut response = if post {
            agent.post(url).send_empty().unwrap()
        } else {
            agent.get(url).call().unwrap()
        };
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap())
    }

    #[test]
    fn the_endpoints_pause_renew_report_and_resume() {
        let gate = PauseController::with_options(WhilePaused::Reject, Duration::from_secs(60));
        let server = gate.serve("127.0.0.1:0").unwrap();
        let base = server.url();
        let agent = agent();

        let (status, body) = call(&agent, true, &format!("{base}/pause?lease_ms=5000"));
        assert_eq!(status, 200, "{body}");
        let ticket: PauseTicket = serde_json::from_value(body).unwrap();
        assert!(gate.enter().is_err());

        let (status, body) = call(&agent, true, &format!("{base}/pause?lease_ms=5000"));
        assert_eq!(status, 409, "{body}");

        let (status, _) = call(
            &agent,
            true,
            &format!("{base}/pause?pause_id={}&lease_ms=8000", ticket.pause_id),
        );
        assert_eq!(status, 200);

        let (status, body) = call(&agent, false, &format!("{base}/status"));
        assert_eq!(status, 200);
        let state: PauseStatus = serde_json::from_value(body).unwrap();
        assert!(state.paused && state.drained);
        assert!(state.lease_remaining_ms.unwrap() > 5000);

        let (status, _) = call(
            &agent,
            true,
            &format!("{base}/unpause?pause_id={}", ticket.pause_id),
        );
        assert_eq!(status, 200);
        assert!(gate.enter().is_ok());
        let (status, body) = call(
            &agent,
            true,
            &format!("{base}/unpause?pause_id={}", ticket.pause_id),
        );
        assert_eq!(status, 409, "{body}");

        let (status, _) = call(&agent, true, &format!("{base}/pause?lease_ms=x"));
        assert_eq!(status, 400);
        let (status, _) = call(&agent, false, &format!("{base}/nothing"));
        assert_eq!(status, 404);
    }

    #[test]
    fn only_loopback_addresses_are_served() {
        let gate = PauseController::new();
        let err = gate.serve("0.0.0.0:0").unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
    }
}
