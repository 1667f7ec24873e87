//! Point-in-time recovery of PostgreSQL through the `backstop` binary: the server archives its
//! WAL with `backstop wal-push %p`, a base backup is taken through the engine, and a restore
//! whose `restore_command` is `backstop wal-fetch %f %p` recovers to a moment between two known
//! commits and lands exactly there (the first commit present, the second absent), by time and
//! by restore point name. Fetching a segment the archive lacks fails clearly, as
//! `restore_command` must.
//!
//! Needs the PostgreSQL 15 server (scripts/install/postgres.sh); skipped loudly without it, and
//! failing under `CI=true`.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed step fails the test"
)]

#[path = "../../backstop/tests/support/pg_cluster.rs"]
mod pg_cluster;

use std::path::Path;

use assert_cmd::Command;
use backstop::source::postgres::PostgresSource;
use backstop::{BackupEngine, BackupOptions, EngineOptions, LocalStore, RestoreOptions};
use pg_cluster::PgCluster;

fn backstop(repo: &Path) -> Command {
    let mut cmd = Command::cargo_bin("backstop").unwrap();
    cmd.arg("--repo").arg(repo);
    cmd
}

/// `backstop --repo <repo> <verb> %f %p`-style command line for the server's configuration
/// (paths from tempfile and cargo have no spaces or quotes).
fn server_command(repo: &Path, verb: &str) -> String {
    let bin = assert_cmd::cargo::cargo_bin("backstop");
    format!("{} --repo {} {verb}", bin.display(), repo.display())
}

/// Waits until the archiver has stored every segment up to and including `segment`.
fn wait_archived(primary: &PgCluster, segment: &str) {
    pg_cluster::wait_for(&format!("WAL segment {segment} to be archived"), || {
        let last = primary.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
        let failed = primary.psql("SELECT failed_count FROM pg_stat_archiver");
        assert_eq!(
            failed,
            "0",
            "archive_command failed:\n{}",
            primary.log_tail()
        );
        last.as_str() >= segment
    });
}

/// Restores `backup` into a new cluster under `root` with the recovery `options`, starts it
/// and returns the ids in `marks`.
fn recover(engine: &BackupEngine, backup: u64, root: &Path, options: RestoreOptions) -> String {
    let mut restored = PgCluster::at(root);
    let info = engine
        .restore(backup, restored.data_dir(), &options)
        .unwrap();
    assert!(
        info.fixups.iter().any(|f| f.contains("restore_command")),
        "{:?}",
        info.fixups
    );
    pg_cluster::give_to_server_user(root);
    restored.start(&["-c archive_mode=off"]);
    restored.wait_until_promoted();
    restored.amcheck().unwrap();
    restored.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM marks")
}

#[test]
fn point_in_time_recovery_lands_between_two_commits() {
    if !pg_cluster::require_postgres() {
        return;
    }
    let tmp = pg_cluster::tempdir();
    let repo = tmp.path().join("repo");
    backstop(&repo)
        .args(["init", "--no-encryption"])
        .assert()
        .success();
    // The server's archive_command runs as the server's user and writes into the repository.
    pg_cluster::give_to_server_user(&repo);

    let archive_command = format!(
        "archive_command = '{} %p'",
        server_command(&repo, "wal-push")
    );
    let mut primary = PgCluster::init(
        &tmp.path().join("primary"),
        &["archive_mode = on", &archive_command],
    );
    primary.start(&[]);
    primary.psql("CREATE TABLE marks (id int PRIMARY KEY, note text)");
    primary.pgbench_init(1, &[]);

    let engine = BackupEngine::open(LocalStore::new(&repo), EngineOptions::default()).unwrap();
    let mut source = PostgresSource::new(primary.conninfo()).with_fast_checkpoint(true);
    let base = engine
        .create_backup(&mut source, &BackupOptions::default())
        .unwrap();
    pg_cluster::give_to_server_user(&repo);

    // Some traffic after the backup so recovery has archived WAL to replay.
    primary.pgbench_run(1, 100);
    primary.psql("INSERT INTO marks VALUES (1, 'before the target')");
    let target_time = primary.psql("SELECT clock_timestamp()");
    primary.psql("SELECT pg_create_restore_point('between')");
    primary.psql("INSERT INTO marks VALUES (2, 'after the target')");
    primary.pgbench_run(1, 100);
    let last_segment = primary.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    primary.psql("SELECT pg_switch_wal()");
    wait_archived(&primary, &last_segment);
    let archived = engine.archive_list("wal").unwrap();
    assert!(archived.contains(&last_segment), "{archived:?}");

    let by_time = RestoreOptions::default()
        .with_fixup_option("restore-command", server_command(&repo, "wal-fetch %f %p"))
        .with_fixup_option("target-time", &target_time)
        .with_fixup_option("target-action", "promote");
    assert_eq!(
        recover(&engine, base.id, &tmp.path().join("by-time"), by_time),
        "1"
    );

    let by_name = RestoreOptions::default()
        .with_fixup_option("restore-command", server_command(&repo, "wal-fetch %f %p"))
        .with_fixup_option("target-name", "between");
    assert_eq!(
        recover(&engine, base.id, &tmp.path().join("by-name"), by_name),
        "1"
    );

    // Without a target, recovery replays all archived WAL.
    let to_end = RestoreOptions::default()
        .with_fixup_option("restore-command", server_command(&repo, "wal-fetch %f %p"));
    assert_eq!(
        recover(&engine, base.id, &tmp.path().join("to-end"), to_end),
        "1,2"
    );
}

#[test]
fn wal_fetch_of_a_segment_the_repository_lacks_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    backstop(&repo)
        .args(["init", "--no-encryption"])
        .assert()
        .success();
    let segment = tmp.path().join("000000010000000000000001");
    std::fs::write(&segment, b"not really WAL").unwrap();
    backstop(&repo)
        .arg("wal-push")
        .arg(&segment)
        .assert()
        .success();
    // Pushing the same segment again is harmless.
    backstop(&repo)
        .arg("wal-push")
        .arg(&segment)
        .assert()
        .success();

    let dest = tmp.path().join("RECOVERYXLOG");
    backstop(&repo)
        .args(["wal-fetch", "000000010000000000000001"])
        .arg(&dest)
        .assert()
        .success();
    assert_eq!(std::fs::read(&dest).unwrap(), b"not really WAL");

    let missing = tmp.path().join("missing");
    let out = backstop(&repo)
        .args(["wal-fetch", "0000000100000000000000FF"])
        .arg(&missing)
        .assert()
        .failure()
        .get_output()
        .clone();
    // PostgreSQL reads any exit code below 126 as "not available"; higher ones abort recovery.
    let code = out.status.code().unwrap();
    assert!((1..126).contains(&code), "exit code {code}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("0000000100000000000000FF"), "{stderr}");
    assert!(!missing.exists());
}
