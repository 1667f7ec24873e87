//! The SQLite bank that the source's own tests and the engine's tests load while they back it
//! up: `sqlite_writer.py` moves money between accounts ([`crate::sqlite::bank`]) in a loop
//! until its stdin closes, then reports what it did; and the checks of a copy's state.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::{PipedWriter, python, python_has, require};
use crate::sqlite::bank::{self, BankState};

/// The writer script, kept with the engine's test support.
pub const WRITER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../backstop/tests/support/sqlite_writer.py"
);

/// The writer process; closing its stdin stops it. Declare it after the test's temporary
/// directory, so that a failing test kills it before the database goes.
pub struct BankWriter {
    process: PipedWriter,
}

/// What the writer reports when it stops.
#[derive(Debug, serde::Deserialize)]
pub struct WriterStats {
    /// Transactions committed.
    pub transactions: u64,
    /// The longest transaction, busy waits included: how long a backup blocked the writer.
    pub max_txn_ms: f64,
}

impl BankWriter {
    /// Starts the writer on the bank at `db`, or `None` (the test skips) when python3 with
    /// sqlite3 is missing (see [`require`]).
    pub fn start(db: &Path) -> Option<Self> {
        if !require(
            "sqlite",
            "python3 with the sqlite3 module",
            python_has("sqlite3"),
        ) {
            return None;
        }
        let mut process = PipedWriter::spawn(Command::new(python()).arg(WRITER).arg(db));
        let ready = process.read_line();
        assert!(
            ready.contains("ready"),
            "the writer did not start: {ready:?}"
        );
        Some(Self { process })
    }

    /// Stops the writer and returns its report.
    pub fn stop(self) -> WriterStats {
        let line = self.process.close();
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the writer's report {line:?} is not JSON: {e}"))
    }
}

/// Waits for locks a millisecond at a time (30 s at most), as the source does, so that a
/// reader of a rollback-journal database finds the moments between the writer's commits.
pub fn patient(attempt: i32) -> bool {
    std::thread::sleep(Duration::from_millis(1));
    attempt < 30_000
}

/// Opens the database at `path`, waiting for locks with [`patient`].
pub fn open(path: &Path) -> Connection {
    let conn =
        Connection::open(path).unwrap_or_else(|e| panic!("opening `{}`: {e}", path.display()));
    conn.busy_handler(Some(patient))
        .unwrap_or_else(|e| panic!("setting a busy handler: {e}"));
    conn
}

/// Creates a bank of `accounts` accounts (rows padded with `pad` bytes) at `path` in the
/// journal mode `journal_mode`.
pub fn create_bank(path: &Path, journal_mode: &str, accounts: u32, pad: usize) {
    let mut conn = open(path);
    let mode: String = conn
        .query_row(&format!("PRAGMA journal_mode = {journal_mode}"), [], |r| {
            r.get(0)
        })
        .unwrap_or_else(|e| panic!("setting the journal mode: {e}"));
    assert_eq!(mode, journal_mode);
    bank::create(&mut conn, accounts, pad).unwrap_or_else(|e| panic!("creating the bank: {e}"));
}

/// The bank's state at `path`.
pub fn state(path: &Path) -> BankState {
    bank::state(&mut open(path))
        .unwrap_or_else(|e| panic!("reading the bank at `{}`: {e}", path.display()))
}

/// Polls until the writer has committed past `seq`; returns the new last sequence number.
pub fn wait_past(path: &Path, seq: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = state(path).max_seq;
        if now > seq {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the writer made no progress past {seq}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}
