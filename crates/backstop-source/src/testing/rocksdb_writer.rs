//! The RocksDB writers that the source's own tests and the engine's tests run while they back a
//! database up (`rocksdb_writer.py`, on the `rocksdict` binding): `stress` commits numbered
//! batches and publishes the last one; `fill` builds a database of a given size and flushes one
//! more table on demand. And the check of a restored copy: RocksDB's `ldb checkconsistency`,
//! then a checksum-verified scan proving that the keys are exactly batches `0..=last`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{PipedWriter, WriterProcess, python, python_has, require};

/// The writer script, kept with the engine's test support.
pub const WRITER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../backstop/tests/support/rocksdb_writer.py"
);

/// Whether python3 with `rocksdict` is here (see [`require`]).
pub fn rocksdict_available(test: &str) -> bool {
    require(test, "python3 with rocksdict", python_has("rocksdict"))
}

/// RocksDB's `ldb` tool, if installed.
pub fn ldb() -> Option<PathBuf> {
    ["/usr/bin/ldb", "/usr/bin/rocksdb_ldb", "/usr/local/bin/ldb"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// How the check must read a database's values.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Keys per batch.
    pub batch_keys: u64,
    /// Bytes per value.
    pub value_size: u64,
    /// `pattern` or `random`.
    pub values: &'static str,
}

impl Layout {
    /// The stress writer's layout (the script's defaults).
    pub const STRESS: Layout = Layout {
        batch_keys: 50,
        value_size: 64,
        values: "pattern",
    };
}

/// Checks a restored database with RocksDB's own tools and returns its last batch: `ldb
/// checkconsistency` (the MANIFEST's files are there with the right sizes), then an open with
/// paranoid checks and a checksum-verified scan proving the keys are exactly batches
/// `0..=last_batch` (no gap, no torn batch).
pub fn check_restored(dir: &Path, layout: &Layout) -> u64 {
    // ldb first: the scan's open writes files in the newer format ldb 7.8 cannot read.
    let ldb = ldb();
    if require("ldb checkconsistency", "ldb (rocksdb-tools)", ldb.is_some())
        && let Some(ldb) = ldb
    {
        let out = Command::new(ldb)
            .arg(format!("--db={}", dir.display()))
            .args(["--ignore_unknown_options", "checkconsistency"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run ldb: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("OK"),
            "ldb checkconsistency of {}: {stdout} {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new(python())
        .arg(WRITER)
        .args(["check".as_ref(), dir.as_os_str()])
        .args(["--batch-keys", &layout.batch_keys.to_string()])
        .args(["--value-size", &layout.value_size.to_string()])
        .args(["--values", layout.values])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {WRITER}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "restored database {} is not exactly a prefix of the batches: {stdout} {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the check's report {stdout:?} is not JSON: {e}"));
    report["last_batch"]
        .as_u64()
        .unwrap_or_else(|| panic!("the check's report has no last_batch: {report}"))
}

/// The stress writer: commits numbered batches and writes the last one to a status file.
pub struct StressWriter {
    process: WriterProcess,
    status: PathBuf,
}

impl StressWriter {
    /// Starts it on `db`, publishing to `status`, for at most `max_seconds`.
    pub fn start(db: &Path, status: &Path, max_seconds: u32) -> Self {
        let process = WriterProcess::spawn(
            Command::new(python())
                .arg(WRITER)
                .args(["stress".as_ref(), db.as_os_str(), status.as_os_str()])
                .args(["--max-seconds", &max_seconds.to_string()]),
        );
        Self {
            process,
            status: status.to_path_buf(),
        }
    }

    /// Waits until batch `at_least` has committed; returns the last committed batch.
    pub fn wait_committed(&mut self, at_least: u64) -> u64 {
        self.process
            .wait_counter(&self.status, at_least, Duration::from_secs(60))
    }
}

/// The `fill` writer: a database of `mib` batches of 1 MiB that flushes one more on demand.
pub struct Filler {
    process: PipedWriter,
    /// Keys per batch, as the writer reported.
    pub batch_keys: u64,
}

impl Filler {
    /// Starts it and waits until the database is built.
    pub fn start(db: &Path, mib: u32) -> Self {
        let process = PipedWriter::spawn(
            Command::new(python())
                .arg(WRITER)
                .args(["fill".as_ref(), db.as_os_str()])
                .args(["--mib", &mib.to_string()]),
        );
        let mut filler = Self {
            process,
            batch_keys: 0,
        };
        let ready = filler.line();
        let words: Vec<&str> = ready.split_whitespace().collect();
        assert_eq!(words.first(), Some(&"ready"), "{ready}");
        filler.batch_keys = words
            .get(2)
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no batch size in {ready:?}"));
        filler
    }

    fn line(&mut self) -> String {
        let line = self.process.read_line();
        assert!(!line.is_empty(), "the fill writer exited");
        line
    }

    /// Writes and flushes one more batch; returns its number.
    pub fn flush(&mut self) -> u64 {
        self.process.send_line("flush");
        let line = self.line();
        line.trim()
            .strip_prefix("flushed ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected reply {line:?}"))
    }
}
