//! The Berkeley DB bank that the source's own tests and the engine's tests load while they back
//! it up: `bdb_writer.py` moves money between accounts in a transactional environment (one
//! history record and one sequence number per transaction, synchronous commits, fast-rotating
//! logs), and its `check` command opens an environment and reports the bank's state.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{WriterProcess, python, python_has, read_counter, require};
use crate::bdb::BdbTools;

/// The writer script, kept with the engine's test support.
pub const WRITER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../backstop/tests/support/bdb_writer.py"
);

/// How long a wait for the writer may take before the test fails.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// Whether the Berkeley DB tools and the Python binding are here (see [`require`]).
pub fn prerequisites(test: &str) -> bool {
    let tools = BdbTools::from_path();
    let mut missing: Vec<String> = ["recover", "archive", "verify"]
        .iter()
        .filter(|t| tools.find(t).is_err())
        .map(|t| format!("db5.3_{t}"))
        .collect();
    if !python_has("berkeleydb") {
        missing.push("the python3 module berkeleydb".to_owned());
    }
    require(test, &missing.join(", "), missing.is_empty())
}

/// The writer process, killed when dropped (declare it after the temporary directory).
pub struct BankWriter {
    process: WriterProcess,
    seq_file: PathBuf,
    /// The environment's home directory.
    pub home: PathBuf,
}

impl BankWriter {
    /// Starts a writer on the environment at `home` (created if missing) with `accounts`
    /// accounts, keeping its data files in `data_dir` (relative to `home`) if given, writing
    /// the last committed sequence number to `seq_file` and stopping by itself after
    /// `max_seconds`; returns once 20 transactions have committed.
    pub fn start(
        home: &Path,
        seq_file: PathBuf,
        accounts: u64,
        data_dir: Option<&str>,
        max_seconds: u32,
    ) -> Self {
        let mut cmd = Command::new(python());
        cmd.arg(WRITER)
            .args(["run", "--home"])
            .arg(home)
            .arg("--seq-file")
            .arg(&seq_file)
            .args(["--accounts", &accounts.to_string()])
            .args(["--max-seconds", &max_seconds.to_string()]);
        if let Some(dir) = data_dir {
            cmd.args(["--data-dir", dir]);
        }
        let mut writer = Self {
            process: WriterProcess::spawn(&mut cmd),
            seq_file,
            home: home.to_owned(),
        };
        writer.wait_for_commits(20);
        writer
    }

    /// The sequence number of the last committed transaction.
    pub fn committed(&self) -> u64 {
        read_counter(&self.seq_file)
    }

    /// The numbers of the environment's log files, in order.
    pub fn log_numbers(&self) -> Vec<u32> {
        let mut logs: Vec<u32> = std::fs::read_dir(&self.home)
            .unwrap_or_else(|e| panic!("listing `{}`: {e}", self.home.display()))
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                name.strip_prefix("log.")?.parse().ok()
            })
            .collect();
        logs.sort_unstable();
        logs
    }

    /// Waits until `done` holds; fails the test if the writer exits first or a minute passes.
    pub fn wait_until(&mut self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + WAIT_LIMIT;
        while !done(self) {
            if let Some(status) = self.process.child().try_wait().ok().flatten() {
                panic!("the writer exited ({status}) while waiting until {what}");
            }
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `n` more transactions have committed.
    pub fn wait_for_commits(&mut self, n: u64) {
        let target = self.committed() + n;
        self.process
            .wait_counter(&self.seq_file, target, WAIT_LIMIT);
    }

    /// Waits for the writer to stop by itself (after its `max_seconds`) and checks that it
    /// succeeded.
    pub fn wait_exit(mut self) {
        let child = self.process.child();
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            if let Some(status) = child.try_wait().ok().flatten() {
                assert!(status.success(), "the writer failed: {status}");
                return;
            }
            assert!(Instant::now() < deadline, "the writer did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What the writer's `check` reports of an environment.
#[derive(Debug, serde::Deserialize)]
pub struct BankState {
    /// The sequence number of the last committed transaction.
    pub seq: u64,
    /// The sum of the balances.
    pub total: i64,
    /// The number of accounts.
    pub accounts: u64,
    /// What the sum must be.
    pub expected_total: i64,
    /// The number of history records.
    pub history: u64,
}

/// Opens the (recovered) environment at `home` with the writer's checker and asserts the
/// bank's invariants: `accounts` accounts, the total unchanged by transfers, and one history
/// record per transaction.
pub fn check_state(home: &Path, accounts: u64) -> BankState {
    let out = Command::new(python())
        .arg(WRITER)
        .args(["check", "--home"])
        .arg(home)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {WRITER}: {e}"));
    assert!(
        out.status.success(),
        "check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state: BankState = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("the checker's report is not JSON: {e}"));
    assert_eq!(state.accounts, accounts, "{state:?}");
    assert_eq!(
        state.total, state.expected_total,
        "the transfers' invariant is broken: {state:?}"
    );
    assert_eq!(
        state.history, state.seq,
        "one history record per transaction: {state:?}"
    );
    state
}
