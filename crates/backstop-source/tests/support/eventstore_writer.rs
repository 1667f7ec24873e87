//! Runs `eventstore_writer.py` (the EventStore protocol writer) as a separate process for tests.
//! Shared by the source's tests and the engine's tests (included with `#[path]`).

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The writer script, found from this file's place in the workspace.
pub fn script() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    workspace
        .join(Path::new(file!()).parent().unwrap())
        .join("eventstore_writer.py")
}

/// Whether `python3` can run the writer. Missing: fails under `CI=true`, else skips loudly.
pub fn python_available() -> bool {
    let ok = Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "python3 is missing (needed by the EventStore protocol writer); run scripts/install-test-deps.sh"
            );
        }
        eprintln!("SKIPPED: python3 missing, run scripts/install-test-deps.sh");
    }
    ok
}

/// Runs the writer to completion (`--records` must be given in `args`).
pub fn run(db: &Path, args: &[&str]) {
    let out = Command::new("python3")
        .arg(script())
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .expect("running the EventStore writer");
    assert!(
        out.status.success(),
        "EventStore writer failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A writer running in the background until [`Writer::stop`].
pub struct Writer {
    child: Child,
    stop_file: PathBuf,
    lines: mpsc::Receiver<String>,
}

impl Writer {
    /// Starts the writer on `db` and waits until it says `ready`.
    pub fn start(db: &Path, args: &[&str]) -> Self {
        let stop_file = db.with_extension("stop");
        let _ = std::fs::remove_file(&stop_file);
        let mut child = Command::new("python3")
            .arg(script())
            .arg("--db")
            .arg(db)
            .arg("--stop-file")
            .arg(&stop_file)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the EventStore writer");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("writer never said ready");
        assert_eq!(first, "ready");
        Self {
            child,
            stop_file,
            lines,
        }
    }

    /// Whether the writer is still running (it exits on an assertion of its own).
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the EventStore writer exited early: {status}");
        }
    }

    /// Asks the writer to stop, waits for it, and returns its last line.
    pub fn stop(mut self) -> String {
        std::fs::write(&self.stop_file, b"").unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the EventStore writer did not stop"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(status.success(), "the EventStore writer failed: {status}");
        let mut last = String::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            last = line;
        }
        last
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (polling, up to 30 s) until the live database's `writer.chk` is past `position`, and
/// returns it: backups under load each see new data.
pub fn wait_past(db: &Path, position: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = writer_position(db);
        if now > position {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the writer did not move past {position}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The current writer position of a live database.
pub fn writer_position(db: &Path) -> i64 {
    let bytes = std::fs::read(db.join("writer.chk")).unwrap();
    i64::from_le_bytes(bytes[..8].try_into().unwrap())
}
