//! A real S3-protocol server for tests, started on a free loopback port in a temporary
//! directory and killed when dropped (also when the test panics).
//!
//! Two servers: `moto_server` (PyPI, starts in a second, keeps objects in memory, accepts any
//! credentials) and `s3s-fs` (crates.io, keeps objects as files, checks signatures, logs every
//! request it serves, and can be killed and restarted on the same port with its data intact).
//! Both are installed by `scripts/install/store.sh`. Without the server on the PATH a test
//! fails under `CI=true` and skips loudly otherwise.
//!
//! Shared by the store's tests and the CLI's (`#[path]` include), hence the `dead_code` allow.

#![allow(dead_code)]

use std::net::SocketAddr;

use backstop_store::test_servers::{require_programs, spawn_until_answering};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The credentials the servers accept (s3s-fs checks them; moto takes anything).
pub(crate) const ACCESS_KEY: &str = "backstop-test";
/// The secret of [`ACCESS_KEY`].
pub(crate) const SECRET_KEY: &str = "backstop-test-secret";
/// Any region works with both servers; the signature needs one.
pub(crate) const REGION: &str = "us-east-1";

/// Which server to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `moto_server`: in memory, no signature checks.
    Moto,
    /// `s3s-fs`: objects in files, signatures checked, restartable.
    S3sFs,
}

impl Kind {
    fn program(self) -> &'static str {
        match self {
            Kind::Moto => "moto_server",
            Kind::S3sFs => "s3s-fs",
        }
    }
}

/// A running (or stopped, between [`S3Server::stop`] and [`S3Server::restart`]) server.
pub(crate) struct S3Server {
    kind: Kind,
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) use backstop_store::test_servers::{free_port, http_status};

impl S3Server {
    /// Starts a server, or returns `None` (after saying so) when it is not installed and this
    /// is not CI.
    pub(crate) fn start(kind: Kind) -> Option<S3Server> {
        if !require_programs(&[kind.program()]) {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("data")).expect("server data dir");
        let mut server = S3Server {
            kind,
            child: None,
            port: free_port(),
            dir,
        };
        server.spawn_and_wait();
        Some(server)
    }

    /// Which server this is.
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    /// The server's address.
    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The repository URL of `prefix` in `bucket`, as a user would write it.
    pub(crate) fn url(&self, bucket: &str, prefix: &str) -> String {
        format!(
            "s3://{bucket}/{prefix}?endpoint={}&region={REGION}&path_style=true",
            self.endpoint()
        )
    }

    /// Where s3s-fs keeps the objects (a bucket is a directory in it).
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Everything the server logged so far, over all restarts.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Creates a bucket (names need at least three characters).
    pub(crate) fn create_bucket(&self, bucket: &str) {
        match self.kind {
            // moto needs no signature to create a bucket.
            Kind::Moto => assert_eq!(
                http_status(self.addr(), "PUT", &format!("/{bucket}")),
                Some(200),
                "create bucket {bucket}"
            ),
            Kind::S3sFs => {
                std::fs::create_dir(self.data_dir().join(bucket)).expect("create bucket dir")
            }
        }
    }

    /// The S3 operations the server resolved so far (`GetObject`, `PutObject`,
    /// `ListObjectsV2`…), in order; s3s-fs only, from its debug log.
    pub(crate) fn requests(&self) -> Vec<String> {
        assert_eq!(self.kind, Kind::S3sFs, "only s3s-fs logs its requests");
        self.log()
            .lines()
            .filter_map(|line| line.split_once("resolved route, op: "))
            .map(|(_, rest)| rest.split([',', ' ']).next().unwrap_or_default().to_owned())
            .collect()
    }

    /// Kills the server at once (SIGKILL: whatever it was doing is cut off).
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same data (s3s-fs only: moto keeps
    /// nothing).
    pub(crate) fn restart(&mut self) {
        assert_eq!(
            self.kind,
            Kind::S3sFs,
            "only s3s-fs keeps data over a restart"
        );
        self.stop();
        self.spawn_and_wait();
    }

    fn spawn(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("server log");
        let port = self.port.to_string();
        let mut cmd = Command::new(self.kind.program());
        match self.kind {
            Kind::Moto => {
                cmd.args(["-H", "127.0.0.1", "-p", &port]);
            }
            Kind::S3sFs => {
                cmd.args(["--host", "127.0.0.1", "--port", &port])
                    .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                    .arg(self.data_dir())
                    // One line per request served ("resolved route, op: …"); nothing else.
                    .env("RUST_LOG", "s3s::ops=debug,s3s=warn,s3s_fs=warn");
            }
        }
        cmd.current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("server log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", self.kind.program()))
    }

    /// Starts the process and waits until it answers; a restart may find the port still held
    /// for a moment, so a server that exits early is started again until the deadline.
    fn spawn_and_wait(&mut self) {
        let child = spawn_until_answering(
            self.kind.program(),
            self.addr(),
            || self.spawn(),
            || self.log(),
            true,
        );
        self.child = Some(child);
    }
}
