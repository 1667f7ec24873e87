//! Point-in-time recovery of PostgreSQL through the `backstop` binary: the server archives its
//! WAL with `backstop wal-push %p`, a base backup is taken through the engine, and a restore
//! whose `restore_command` is `backstop wal-fetch %f %p` recovers to a moment between two known
//! commits and lands exactly there (the first commit present, the second absent), by time and
//! by restore point name, and from an offsite copy (`init --from-repo`, `copy`) of the
//! repository. Fetching a segment the archive lacks fails clearly, as `restore_command` must.
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
    // The cluster's own archive, found from its data directory (where PostgreSQL runs the
    // archive_command): nothing goes to the shared one.
    let cluster: u64 = base.source_meta["system-identifier"].parse().unwrap();
    let archived = engine
        .archive_list(&backstop::source::postgres::wal_archive_of(cluster))
        .unwrap();
    assert!(archived.contains(&last_segment), "{archived:?}");
    assert_eq!(engine.archive_list("wal").unwrap(), Vec::<String>::new());

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

    // An offsite copy, made while the server runs on, recovers to the same moment from its own
    // copy of the base backup and of the WAL archive.
    let offsite = tmp.path().join("offsite");
    backstop(&offsite)
        .args(["init", "--from-repo"])
        .arg(&repo)
        .assert()
        .success();
    backstop(&offsite)
        .args(["copy", "--from-repo"])
        .arg(&repo)
        .assert()
        .success();
    pg_cluster::give_to_server_user(&offsite);
    let copy = BackupEngine::open(LocalStore::new(&offsite), EngineOptions::default()).unwrap();
    let copied = copy.list_backups().unwrap();
    assert_eq!(copied.len(), 1);
    let from_offsite = RestoreOptions::default()
        .with_fixup_option(
            "restore-command",
            server_command(&offsite, "wal-fetch %f %p"),
        )
        .with_fixup_option("target-time", &target_time)
        .with_fixup_option("target-action", "promote");
    assert_eq!(
        recover(
            &copy,
            copied[0].id,
            &tmp.path().join("from-offsite"),
            from_offsite
        ),
        "1"
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

/// A fake data directory whose `global/pg_control` names the cluster `system_id`.
fn data_dir(root: &std::path::Path, system_id: u64) -> std::path::PathBuf {
    let dir = root.join(format!("cluster-{system_id}"));
    std::fs::create_dir_all(dir.join("global")).unwrap();
    let mut control = system_id.to_le_bytes().to_vec();
    control.resize(8192, 0);
    std::fs::write(dir.join("global/pg_control"), control).unwrap();
    dir
}

/// A segment's first bytes: a long page header naming the cluster `system_id`, then `fill`.
fn segment(system_id: u64, fill: u8) -> Vec<u8> {
    let mut bytes = vec![fill; 4096];
    bytes[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    bytes[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
    bytes[24..32].copy_from_slice(&system_id.to_le_bytes());
    bytes
}

/// Two clusters archiving into one repository (two PostgreSQL members of a group, or a cluster
/// and its successor after initdb) each get an archive of their own, found from the data
/// directory PostgreSQL runs the commands in: the same segment name with other bytes is not a
/// conflict, and each fetches its own. A segment of another cluster is refused, and a segment
/// archived by a version that shared one archive is still fetched.
#[test]
fn each_cluster_archives_and_fetches_its_own_wal() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    backstop(&repo)
        .args(["init", "--no-encryption"])
        .assert()
        .success();
    let name = "000000010000000000000003";
    for (system_id, fill) in [(7_001_u64, 1_u8), (7_002, 2)] {
        let dir = data_dir(tmp.path(), system_id);
        std::fs::create_dir_all(dir.join("pg_wal")).unwrap();
        std::fs::write(dir.join("pg_wal").join(name), segment(system_id, fill)).unwrap();
        backstop(&repo)
            .current_dir(&dir)
            .arg("wal-push")
            .arg(format!("pg_wal/{name}"))
            .assert()
            .success();
    }
    for (system_id, fill) in [(7_001_u64, 1_u8), (7_002, 2)] {
        let dir = data_dir(tmp.path(), system_id);
        backstop(&repo)
            .current_dir(&dir)
            .args(["wal-fetch", name, "pg_wal/RECOVERYXLOG"])
            .assert()
            .success();
        assert_eq!(
            std::fs::read(dir.join("pg_wal/RECOVERYXLOG")).unwrap(),
            segment(system_id, fill)
        );
    }

    // Another cluster's segment in this data directory is a mistake, not archived.
    let dir = data_dir(tmp.path(), 7_001);
    std::fs::write(
        dir.join("pg_wal/000000010000000000000004"),
        segment(7_002, 3),
    )
    .unwrap();
    backstop(&repo)
        .current_dir(&dir)
        .args(["wal-push", "pg_wal/000000010000000000000004"])
        .assert()
        .failure()
        .stderr(predicates::str::contains("7002"));

    // Pushed outside a data directory (the shared archive of earlier versions): still fetched.
    let old = tmp.path().join("000000010000000000000005");
    std::fs::write(&old, segment(7_001, 5)).unwrap();
    backstop(&repo).arg("wal-push").arg(&old).assert().success();
    backstop(&repo)
        .current_dir(&dir)
        .args(["wal-fetch", "000000010000000000000005", "pg_wal/OLD"])
        .assert()
        .success();
    assert_eq!(
        std::fs::read(dir.join("pg_wal/OLD")).unwrap(),
        segment(7_001, 5)
    );
}
