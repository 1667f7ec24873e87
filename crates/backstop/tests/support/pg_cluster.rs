//! A throwaway PostgreSQL 15 cluster for tests: initdb'd in a temp dir, run as a non-root user
//! when the tests run as root (initdb refuses root), reachable only through a Unix socket in its
//! own directory, stopped when dropped; plus pgbench load, the pgbench invariant and pg_amcheck.
//!
//! Included with `#[path]` by the tests that need it (the engine's, the CLI's and the source
//! crate's), so it uses only std and `tempfile`, and talks SQL through `psql`.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test crate that includes this harness uses a different part of it"
)]
#![allow(
    clippy::unwrap_used,
    reason = "test harness: a failed step fails the test"
)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where Debian puts the PostgreSQL 15 programs.
pub(crate) const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The system user the server runs as when the tests run as root (scripts/install/postgres.sh).
pub(crate) const TEST_USER: &str = "backstop-test";
/// How long to wait for the server to start, stop or promote.
const DEADLINE: Duration = Duration::from_secs(120);

/// Why the PostgreSQL tests cannot run here, if they cannot.
pub(crate) fn missing_tools() -> Option<String> {
    for tool in [
        "initdb",
        "pg_ctl",
        "postgres",
        "pgbench",
        "pg_amcheck",
        "psql",
    ] {
        if !Path::new(PG_BIN).join(tool).is_file() {
            return Some(format!("{PG_BIN}/{tool}"));
        }
    }
    if !Path::new("/usr/share/postgresql/15/extension/amcheck.control").is_file() {
        return Some("the amcheck extension (postgresql-contrib)".into());
    }
    if running_as_root() {
        let known = Command::new("id").args(["-u", TEST_USER]).output();
        if !known.is_ok_and(|out| out.status.success()) {
            return Some(format!("the system user `{TEST_USER}`"));
        }
    }
    None
}

/// `true` when the PostgreSQL tests can run. When they cannot, fails under `CI=true` and
/// otherwise prints a loud skip notice and returns `false`.
pub(crate) fn require_postgres() -> bool {
    match missing_tools() {
        None => true,
        Some(what) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{what} missing, run scripts/install-test-deps.sh"
            );
            eprintln!("SKIPPED: {what} missing, run scripts/install-test-deps.sh");
            false
        }
    }
}

/// The effective user of this process owns `/proc/self`.
pub(crate) fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|md| md.uid() == 0)
}

/// A temp dir every user can traverse (the server's user must reach its directories inside).
pub(crate) fn tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("backstop-pg-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

/// Gives `path` (recursively) to the server's user when running as root. The server may be
/// writing there meanwhile (a repository its `archive_command` pushes WAL into, whose temp
/// files come and go): an entry that vanished while `chown -R` walked is no failure, and what
/// the server creates is its own already.
pub(crate) fn give_to_server_user(path: &Path) {
    if running_as_root() {
        let out = run(Command::new("chown")
            .arg("-R")
            .arg(format!("{TEST_USER}:"))
            .arg(path));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let only_vanished = !stderr.trim().is_empty()
            && stderr
                .lines()
                .all(|line| line.ends_with("No such file or directory"));
        assert!(
            out.status.success() || only_vanished,
            "chown -R {TEST_USER}: {} failed ({}):\n{stderr}",
            path.display(),
            out.status
        );
    }
}

/// Makes a directory owned by the server's user with mode 0700 (a tablespace location, say).
pub(crate) fn server_dir(path: &Path) -> PathBuf {
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).unwrap();
    give_to_server_user(path);
    path.to_path_buf()
}

fn pg(tool: &str) -> PathBuf {
    Path::new(PG_BIN).join(tool)
}

/// `program` run as the server's user (through runuser when we are root).
fn as_server_user(program: &Path) -> Command {
    if running_as_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", TEST_USER, "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `condition` until it holds; panics with `what` after the deadline.
pub(crate) fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One cluster: a directory (owned by the server's user) holding `data/`, `sock/` and `log`.
pub(crate) struct PgCluster {
    root: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    running: bool,
}

impl PgCluster {
    /// A cluster directory at `root` with no data directory yet (for [`Self::init`], or for a
    /// restore into [`Self::data_dir`]).
    pub(crate) fn at(root: &Path) -> Self {
        std::fs::create_dir_all(root.join("sock")).unwrap();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700)).unwrap();
        give_to_server_user(root);
        Self {
            root: root.to_path_buf(),
            data: root.join("data"),
            socket_dir: root.join("sock"),
            log: root.join("log"),
            running: false,
        }
    }

    /// The primary of the base-backup tests, started under `root/primary`: `pgbench -i` at
    /// scale 1, and a table `in_ts` of `rows` rows in a tablespace `ts1` outside the data
    /// directory (`root/ts-primary`), which a backup must follow. Returns the tablespace's oid.
    pub(crate) fn primary_with_tablespace(root: &Path, rows: u32) -> (Self, String) {
        let mut primary = Self::init(&root.join("primary"), &[]);
        primary.start(&[]);
        primary.pgbench_init(1, &[]);
        let ts_dir = server_dir(&root.join("ts-primary"));
        primary.psql(&format!(
            "CREATE TABLESPACE ts1 LOCATION '{}'",
            ts_dir.display()
        ));
        primary.psql(&format!(
            "CREATE TABLE in_ts (id int PRIMARY KEY, v text) TABLESPACE ts1; \
             INSERT INTO in_ts SELECT g, md5(g::text) FROM generate_series(1, {rows}) g"
        ));
        let ts_oid = primary.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'");
        (primary, ts_oid)
    }

    /// initdb (1 MiB WAL segments, page checksums on) and settings for a small, fast test
    /// server, plus `extra_conf` lines; not started.
    pub(crate) fn init(root: &Path, extra_conf: &[&str]) -> Self {
        let cluster = Self::at(root);
        run_ok(
            as_server_user(&pg("initdb"))
                .current_dir(&cluster.root)
                .arg("-D")
                .arg(&cluster.data)
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--no-locale",
                    "-E",
                    "UTF8",
                ])
                .args(["--data-checksums", "--wal-segsize=1", "--no-sync"]),
        );
        let mut conf = String::from(
            "\n# backstop test harness\n\
             listen_addresses = ''\n\
             fsync = off\n\
             shared_buffers = 16MB\n\
             max_connections = 20\n\
             wal_level = replica\n\
             max_replication_slots = 4\n\
             max_wal_size = 64MB\n\
             min_wal_size = 8MB\n",
        );
        for line in extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        let conf_path = cluster.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).unwrap();
        text.push_str(&conf);
        std::fs::write(&conf_path, text).unwrap();
        cluster
    }

    /// The data directory (`<root>/data`).
    pub(crate) fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The cluster's own directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// A libpq connection string for the superuser `postgres`.
    pub(crate) fn conninfo(&self) -> String {
        format!(
            "host={} port=5432 user=postgres dbname=postgres",
            self.socket_dir.display()
        )
    }

    /// Starts the server and waits until it accepts connections. `options` are extra server
    /// options (`-c name=value`), which win over the configuration files.
    pub(crate) fn start(&mut self, options: &[&str]) {
        let mut server_opts = format!(
            "-k '{}' -p 5432 -c listen_addresses=''",
            self.socket_dir.display()
        );
        for opt in options {
            server_opts.push(' ');
            server_opts.push_str(opt);
        }
        let out = run(as_server_user(&pg("pg_ctl"))
            .current_dir(&self.root)
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "120", "-o", &server_opts, "start"]));
        assert!(
            out.status.success(),
            "pg_ctl start failed ({}):\n{}\n--- server log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        self.running = true;
    }

    /// Waits until the server has left recovery (a restored server after promotion).
    pub(crate) fn wait_until_promoted(&self) {
        let start = Instant::now();
        loop {
            if self.try_psql("SELECT pg_is_in_recovery()").as_deref() == Ok("f") {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "the server did not leave recovery in time\n--- server log ---\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (fast shutdown) and waits until it is gone.
    pub(crate) fn stop(&mut self) {
        if self.running {
            run_ok(
                as_server_user(&pg("pg_ctl"))
                    .current_dir(&self.root)
                    .arg("-D")
                    .arg(&self.data)
                    .args(["-w", "-t", "120", "-m", "fast", "stop"]),
            );
            self.running = false;
        }
    }

    /// What stops the server the way a crash would (`pg_ctl -m immediate`: no shutdown
    /// checkpoint, every connection cut), to call from a test's progress hook, which must not
    /// borrow the cluster; `start` brings it back, with crash recovery.
    #[allow(
        dead_code,
        reason = "only some of the tests that share this module crash it"
    )]
    pub(crate) fn crasher(&self) -> impl Fn() + Send + Sync + 'static {
        let (root, data) = (self.root.clone(), self.data.clone());
        move || {
            run_ok(
                as_server_user(&pg("pg_ctl"))
                    .current_dir(&root)
                    .arg("-D")
                    .arg(&data)
                    .args(["-w", "-t", "60", "-m", "immediate", "stop"]),
            );
        }
    }

    /// The last lines of the server log, for failure messages.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn psql_command(&self) -> Command {
        let mut cmd = Command::new(pg("psql"));
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args(["-p", "5432", "-U", "postgres", "-d", "postgres"]);
        cmd
    }

    /// Runs SQL, returning trimmed output or the error text.
    pub(crate) fn try_psql(&self, sql: &str) -> Result<String, String> {
        let out = run(self.psql_command().arg("-c").arg(sql));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs SQL and returns its trimmed output (`-A -t`: unaligned, tuples only).
    pub(crate) fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|e| panic!("psql `{sql}` failed: {e}"))
    }

    /// `pgbench -i` at `scale` (100 000 accounts per unit).
    pub(crate) fn pgbench_init(&self, scale: u32, extra: &[&str]) {
        run_ok(
            Command::new(pg("pgbench"))
                .args(["-i", "-q", "-s", &scale.to_string(), "-h"])
                .arg(&self.socket_dir)
                .args(["-p", "5432", "-U", "postgres"])
                .args(extra)
                .arg("postgres"),
        );
    }

    /// Runs `transactions` pgbench transactions per client to completion.
    pub(crate) fn pgbench_run(&self, clients: u32, transactions: u32) {
        run_ok(
            Command::new(pg("pgbench"))
                .args([
                    "-n",
                    "-c",
                    &clients.to_string(),
                    "-t",
                    &transactions.to_string(),
                    "-h",
                ])
                .arg(&self.socket_dir)
                .args(["-p", "5432", "-U", "postgres", "postgres"]),
        );
    }

    /// Starts `pgbench` (TPC-B-like) with `clients` for at most `seconds` in a separate
    /// process; it stops when the returned guard is dropped.
    pub(crate) fn pgbench_load(&self, clients: u32, seconds: u32, rate: Option<u32>) -> Load {
        let mut cmd = Command::new(pg("pgbench"));
        cmd.args([
            "-n",
            "-j",
            "1",
            "-c",
            &clients.to_string(),
            "-T",
            &seconds.to_string(),
        ]);
        if let Some(rate) = rate {
            cmd.args(["-R", &rate.to_string()]);
        }
        cmd.arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", "5432", "-U", "postgres", "postgres"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().unwrap();
        let load = Load { child };
        let before = self.history_rows();
        wait_for("pgbench to commit transactions", || {
            self.history_rows() > before
        });
        load
    }

    /// Rows in `pgbench_history` (one per committed pgbench transaction).
    pub(crate) fn history_rows(&self) -> u64 {
        self.psql("SELECT count(*) FROM pgbench_history")
            .parse()
            .unwrap()
    }

    /// The pgbench balances: accounts, branches, tellers and the history deltas. They are equal
    /// in any transaction-consistent state.
    pub(crate) fn pgbench_sums(&self) -> [i64; 4] {
        let out = self.psql(
            "SELECT (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts) || ',' || \
                    (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches) || ',' || \
                    (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers) || ',' || \
                    (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
        );
        let sums: Vec<i64> = out.split(',').map(|s| s.parse().unwrap()).collect();
        [sums[0], sums[1], sums[2], sums[3]]
    }

    /// `pg_amcheck --all` (heap and B-tree checks of every database, installing amcheck where
    /// missing); `Err` with its output when it reports corruption or fails.
    pub(crate) fn amcheck(&self) -> Result<(), String> {
        let out = run(Command::new(pg("pg_amcheck"))
            .args(["--all", "--install-missing", "--heapallindexed", "-h"])
            .arg(&self.socket_dir)
            .args(["-p", "5432", "-U", "postgres"]));
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_amcheck exited with {}:\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            // Immediate: the data is thrown away with the temp dir anyway.
            let _ = as_server_user(&pg("pg_ctl"))
                .current_dir(&self.root)
                .arg("-D")
                .arg(&self.data)
                .args(["-w", "-t", "60", "-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A running pgbench; killed when dropped.
pub(crate) struct Load {
    child: Child,
}

impl Load {
    /// Stops the load now.
    pub(crate) fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.kill();
    }
}
