//! Test support, never used by the engine itself: runs a session to completion by copying its
//! entries into a directory, phase by phase, the way the engine would store them (for tests of
//! a source's procedure against a real database without the repository in between); and the
//! pieces every real-database test needs: the rule for a missing component, and the writer
//! process that loads the database while it is backed up.

use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Content, EntryKind, Session, SessionOutcome, SourceError};

#[cfg(feature = "bdb")]
pub mod bdb_bank;
#[cfg(feature = "rocksdb-dir")]
pub mod rocksdb_writer;
#[cfg(feature = "sqlite")]
pub mod sqlite_bank;

/// What [`copy_session`] did: the phases in order with their entry paths, and the outcome.
#[derive(Debug)]
pub struct CopiedSession {
    /// `(phase name, entry paths)` in the order they were copied.
    pub phases: Vec<(String, Vec<String>)>,
    /// Bytes copied.
    pub bytes: u64,
    /// What `finish` returned.
    pub outcome: SessionOutcome,
}

/// Copies every phase of `session` into `target` (files, directories, symlinks), then finishes
/// the session. Append-only files are copied up to their recorded size; others as they are now.
pub fn copy_session(
    mut session: Box<dyn Session + '_>,
    target: &Path,
) -> Result<CopiedSession, SourceError> {
    let mut phases = Vec::new();
    let mut bytes = 0u64;
    while let Some(phase) = session.next_phase()? {
        let mut paths = Vec::new();
        let name = phase.name.clone();
        for entry in phase.into_entries() {
            let entry = entry?;
            let dest = target.join(&entry.path);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| SourceError::io("creating", parent, e))?;
            }
            match &entry.kind {
                EntryKind::Dir => {
                    std::fs::create_dir_all(&dest)
                        .map_err(|e| SourceError::io("creating", &dest, e))?;
                }
                EntryKind::Symlink { target } => {
                    std::os::unix::fs::symlink(target, &dest)
                        .map_err(|e| SourceError::io("creating symlink", &dest, e))?;
                }
                EntryKind::File => {
                    let mut reader: Box<dyn Read + Send> = match &entry.content {
                        Content::None => Box::new(std::io::empty()),
                        Content::File(path) => Box::new(
                            std::fs::File::open(path)
                                .map_err(|e| SourceError::io("opening", path, e))?,
                        ),
                        Content::Bytes(b) => Box::new(std::io::Cursor::new(b.clone())),
                        Content::Session(handle) => session.open(*handle)?,
                    };
                    if entry.change == crate::ChangeModel::AppendOnly {
                        reader = Box::new(reader.take(entry.size));
                    }
                    let mut out = std::fs::File::create(&dest)
                        .map_err(|e| SourceError::io("creating", &dest, e))?;
                    bytes += std::io::copy(&mut reader, &mut out)
                        .map_err(|e| SourceError::io("copying to", &dest, e))?;
                }
            }
            paths.push(entry.path.clone());
        }
        phases.push((name, paths));
    }
    let outcome = session.finish()?;
    Ok(CopiedSession {
        phases,
        bytes,
        outcome,
    })
}

/// Whether a real component a test needs (a database tool, a Python module) is here. Under CI
/// (`CI=true`) a missing one fails the test, so CI cannot pass by skipping; elsewhere the test
/// skips, and says so.
pub fn require(test: &str, what: &str, present: bool) -> bool {
    if !present {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: {what} is missing; run scripts/install-test-deps.sh"
        );
        eprintln!("SKIPPED: {test}: {what} missing, run scripts/install-test-deps.sh");
    }
    present
}

/// The Python interpreter the writers run under: `$BACKSTOP_PYTHON`, or `python3`.
pub fn python() -> String {
    std::env::var("BACKSTOP_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Whether `python3 -c "import MODULE"` works.
pub fn python_has(module: &str) -> bool {
    Command::new(python())
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A writer process that loads a database during a test: killed and reaped when dropped, so a
/// failing test leaves no writer behind. Declare it after the test's temporary directory, so
/// it goes first.
pub struct WriterProcess {
    child: Child,
}

impl WriterProcess {
    /// Starts `command`.
    pub fn spawn(command: &mut Command) -> Self {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the writer {command:?}: {e}"));
        Self { child }
    }

    /// Waits until `done` holds, polling; fails the test if the writer exits first or `limit`
    /// passes.
    pub fn wait_until(&mut self, what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !done() {
            if let Some(status) = self.child.try_wait().ok().flatten() {
                panic!("the writer exited ({status}) while waiting until {what}");
            }
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the counter file at `path` ([`read_counter`]) reaches `at_least`; returns
    /// the value it read then.
    pub fn wait_counter(&mut self, path: &Path, at_least: u64, limit: Duration) -> u64 {
        let mut value = 0;
        self.wait_until(
            &format!("`{}` reaches {at_least}", path.display()),
            limit,
            || {
                value = read_counter(path);
                value >= at_least
            },
        );
        value
    }

    /// The process, for what the writer's protocol needs beyond waiting.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for WriterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A writer process driven a line at a time over its stdin and stdout. Dropped, it is killed
/// unless [`PipedWriter::close`] ended it, and reaped either way; declare it after the test's
/// temporary directory, so that it goes first.
pub struct PipedWriter {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl PipedWriter {
    /// Starts `command` with piped stdin and stdout.
    pub fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the writer {command:?}: {e}"));
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .unwrap_or_else(|| panic!("the writer {command:?} has no stdout"));
        Self {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        }
    }

    /// The writer's next line; empty when it has closed its stdout.
    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("reading the writer's output: {e}"));
        line
    }

    /// Sends `line` to the writer.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self
            .stdin
            .as_mut()
            .unwrap_or_else(|| panic!("the writer's stdin is closed"));
        writeln!(stdin, "{line}").unwrap_or_else(|e| panic!("writing to the writer: {e}"));
    }

    /// Closes the writer's stdin, its signal to stop; returns its last line once it has exited
    /// successfully.
    pub fn close(mut self) -> String {
        drop(self.stdin.take());
        let line = self.read_line();
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("waiting for the writer: {e}"));
        assert!(status.success(), "the writer failed: {status}");
        line
    }
}

impl Drop for PipedWriter {
    fn drop(&mut self) {
        if self.stdin.take().is_some() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The number a writer keeps in a counter file (the last committed batch or sequence number),
/// or 0 while the file is missing or being rewritten.
pub fn read_counter(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}
