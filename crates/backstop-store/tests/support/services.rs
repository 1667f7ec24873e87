//! Real servers of the non-S3 object services for tests, each started on a free loopback port in
//! a temporary directory and killed when dropped (also when the test panics):
//!
//! - Azure Blob Storage: Azurite (`azurite-blob`, npm), objects on disk, shared-key signatures
//!   checked;
//! - WebDAV: `rclone serve webdav` (Debian's `rclone`) over a directory, with basic
//!   authentication;
//! - Google Cloud Storage: `gcp-storage-emulator` (PyPI), Google's JSON API with objects in
//!   memory and one bucket, [`GCS_BUCKET`]; no authentication, and it ignores preconditions
//!   (`ifGenerationMatch`). It logs every request line, which tests read.
//!
//! `scripts/install/store.sh` installs them. Without the program on the PATH a test fails
//! under `CI=true` and skips loudly otherwise.
//!
//! Shared by the store's tests and the CLI's (`#[path]` include), hence the `dead_code` allow.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Azurite's account, which its well-known key opens.
pub(crate) const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known account key (published by Microsoft, the same in every installation).
pub(crate) const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The WebDAV server's user and password.
pub(crate) const WEBDAV_USER: &str = "backstop";
/// The password of [`WEBDAV_USER`].
pub(crate) const WEBDAV_PASSWORD: &str = "backstop-test-password";

/// The bucket the GCS emulator creates at start.
pub(crate) const GCS_BUCKET: &str = "backstop-test";

/// Which service to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Service {
    Azurite,
    RcloneWebDav,
    GcsEmulator,
}

impl Service {
    pub(crate) fn program(self) -> &'static str {
        match self {
            Service::Azurite => "azurite-blob",
            Service::RcloneWebDav => "rclone",
            Service::GcsEmulator => "gcp-storage-emulator",
        }
    }
}

/// A running server.
pub(crate) struct ServiceServer {
    service: Service,
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for ServiceServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[allow(
    unused_imports,
    reason = "for the store's tests; the CLI's include this file too"
)]
pub(crate) use backstop_store::test_servers::http_request;
use backstop_store::test_servers::{free_port, require_programs, spawn_until_answering};

impl ServiceServer {
    /// Starts a server, or returns `None` (after saying so) when it is not installed and this
    /// is not CI.
    pub(crate) fn start(service: Service) -> Option<ServiceServer> {
        if !require_programs(&[service.program()]) {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("data")).expect("server data dir");
        let mut server = ServiceServer {
            service,
            child: None,
            port: free_port(),
            dir,
        };
        server.spawn_and_wait();
        Some(server)
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The directory the server keeps its objects in.
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Everything the server logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A repository URL as a user would write it for `bucket` (ignored by WebDAV, whose
    /// directories need no creating; on the GCS emulator only [`GCS_BUCKET`] exists) and
    /// `prefix`; without credentials (the WebDAV store reads them from `WEBDAV_USERNAME` /
    /// `WEBDAV_PASSWORD`, see [`ServiceServer::url_with_user`]).
    pub(crate) fn url(&self, bucket: &str, prefix: &str) -> String {
        match self.service {
            Service::Azurite => format!(
                "az://{bucket}/{prefix}?use_emulator=true&endpoint={}",
                self.endpoint()
            ),
            Service::RcloneWebDav => format!("webdav+http://{}/{bucket}/{prefix}", self.addr()),
            Service::GcsEmulator => format!(
                "gs://{bucket}/{prefix}?endpoint={}&anonymous=true",
                self.endpoint()
            ),
        }
    }

    /// [`ServiceServer::url`] with the WebDAV user and password in it.
    pub(crate) fn url_with_user(&self, bucket: &str, prefix: &str) -> String {
        assert_eq!(self.service, Service::RcloneWebDav);
        format!(
            "webdav+http://{WEBDAV_USER}:{WEBDAV_PASSWORD}@{}/{bucket}/{prefix}",
            self.addr()
        )
    }

    fn spawn(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("server log");
        let port = self.port.to_string();
        let data = self.data_dir();
        let mut cmd = Command::new(self.service.program());
        match self.service {
            Service::Azurite => {
                cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port])
                    .arg("--location")
                    .arg(&data)
                    .args(["--skipApiVersionCheck", "--disableProductStyleUrl"])
                    .arg("--debug")
                    .arg(self.dir.path().join("azurite-debug.log"));
            }
            Service::RcloneWebDav => {
                cmd.args(["serve", "webdav"])
                    .arg(&data)
                    .args(["--addr", &format!("127.0.0.1:{port}")])
                    .args(["--user", WEBDAV_USER, "--pass", WEBDAV_PASSWORD])
                    // Uploads land in a cache file first and reach the directory whole.
                    .args(["--vfs-cache-mode", "writes", "--vfs-write-back", "0s"])
                    .arg("--cache-dir")
                    .arg(self.dir.path().join("rclone-cache"))
                    .args(["--config", "/dev/null"]);
            }
            Service::GcsEmulator => {
                // Not `--quiet`: the request lines it logs are what tests read.
                cmd.args(["start", "--host", "127.0.0.1", "--port", &port])
                    .args(["--in-memory", "--default-bucket", GCS_BUCKET])
                    .env("PYTHONUNBUFFERED", "1");
            }
        }
        cmd.current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("server log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", self.service.program()))
    }

    /// Starts the process and waits until it answers HTTP.
    fn spawn_and_wait(&mut self) {
        let child = spawn_until_answering(
            self.service.program(),
            self.addr(),
            || self.spawn(),
            || self.log(),
            false,
        );
        self.child = Some(child);
    }
}
