//! The group tests' application, `crates/backstop-pause/examples/group_app.rs`, as a separate
//! process: built on first use (it embeds `backstop-pause`, which the engine does not depend
//! on), started against a PostgreSQL cluster and a SQLite file, stopped when dropped.

#![allow(
    clippy::unwrap_used,
    reason = "test harness: a failed step fails the test"
)]

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;

/// Both balances add up to this whenever no transfer is half done.
pub(crate) const TOTAL: i64 = 1_000_000;

/// Builds the example once per test process and returns its path. Cargo releases its build
/// lock before it runs the tests, so this nested build does not wait for the outer one.
pub(crate) fn binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            let out = Command::new(env!("CARGO"))
                .current_dir(&workspace)
                .args([
                    "build",
                    "-p",
                    "backstop-pause",
                    "--example",
                    "group_app",
                    "--message-format=json-render-diagnostics",
                ])
                .stderr(Stdio::inherit())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "building the group test application failed"
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            stdout
                .lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .filter(|msg| msg["target"]["name"] == "group_app")
                .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
                .expect("cargo reported no executable for the group_app example")
        })
        .clone()
}

/// The running application; closing its stdin stops it.
pub(crate) struct App {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    url: String,
}

impl App {
    /// Starts the application and waits for its pause endpoint. `gap_ms` is the time between
    /// the two local transactions of a transfer (part of the workload: the longer, the more
    /// often a transfer is half done).
    pub(crate) fn start(pg_conninfo: &str, sqlite: &Path, gap_ms: u64) -> Self {
        let mut child = Command::new(binary())
            .arg("--pg")
            .arg(pg_conninfo)
            .arg("--sqlite")
            .arg(sqlite)
            .args(["--gap-ms", &gap_ms.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("the application did not start: `{line}`"))
            .to_owned();
        Self {
            child,
            stdin,
            stdout,
            url,
        }
    }

    /// The base URL of its pause endpoints.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Stops it and returns the number of transfers it made.
    pub(crate) fn stop(mut self) -> u64 {
        drop(self.stdin.take());
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the application failed: {status}");
        line.trim()
            .strip_prefix("transfers ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected last line from the application: `{line}`"))
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
