//! `backstop demo`, the README's first command, runs end to end at a small size: a live
//! SQLite database under a writer, three backups, full verification, restore and the checks.
//! Also the pause hooks as the CLI exposes them.

#![allow(clippy::unwrap_used)]

use assert_cmd::Command;

#[test]
fn demo_passes_all_its_checks_at_a_small_size() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::cargo_bin("backstop")
        .unwrap()
        .args([
            "--json",
            "demo",
            "--accounts",
            "3000",
            "--transfers-between",
            "200",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let result = &doc["result"];
    assert_eq!(doc["command"], "demo");
    assert_eq!(result["passed"], true, "{result:#}");
    assert_eq!(result["backups"].as_array().unwrap().len(), 3);
    let checks = result["checks"].as_array().unwrap();
    assert!(
        checks.len() >= 7 && checks.iter().all(|c| c["passed"] == true),
        "{checks:#?}"
    );
    // The three backups were copied to a second repository, which verified.
    let offsite = checks
        .iter()
        .find(|c| c["name"] == "offsite copy, verify --full")
        .expect("an offsite copy check");
    assert!(
        offsite["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("3 backups copied")),
        "{offsite}"
    );
    assert!(dir.path().join("offsite/config").exists());
    // The second and third backups are incremental: they add less than the first.
    let added: Vec<u64> = result["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["bytes_added"].as_u64().unwrap())
        .collect();
    assert!(added[1] < added[0] && added[2] < added[0], "{added:?}");
    assert!(dir.path().join("restored/bank.db").exists());
}

fn backstop(repo: &std::path::Path) -> Command {
    let mut cmd = Command::cargo_bin("backstop").unwrap();
    cmd.env("BACKSTOP_REPO", repo)
        .env("BACKSTOP_PASSWORD", "pw")
        .env("BACKSTOP_TEST_FAST_KDF", "1")
        .env_remove("BACKSTOP_CONFIG");
    cmd
}

#[test]
fn pause_and_resume_commands_wrap_the_backup_and_a_failed_pause_stores_nothing() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), b"content").unwrap();
    backstop(&repo).arg("init").assert().success();

    let log = work.path().join("hooks.log");
    let pause = format!("echo paused >> {}", log.display());
    let resume = format!("echo resumed >> {}", log.display());
    backstop(&repo)
        .args([
            "backup",
            "--pause-command",
            &pause,
            "--resume-command",
            &resume,
        ])
        .arg(&data)
        .assert()
        .success();
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "paused\nresumed\n");
    let out = backstop(&repo)
        .args(["--json", "info", "latest"])
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        info["result"]["backup"]["pause_window"].is_array(),
        "{info:#}"
    );

    std::fs::write(&log, "").unwrap();
    backstop(&repo)
        .args([
            "backup",
            "--pause-command",
            "echo no >&2; exit 7",
            "--resume-command",
            &resume,
        ])
        .arg(&data)
        .assert()
        .failure()
        .stderr(predicates::str::contains("no"));
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "resumed\n",
        "resume must always run"
    );
    let out = backstop(&repo).args(["--json", "list"]).output().unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        list["result"].as_array().unwrap().len(),
        1,
        "a failed pause stored a backup"
    );
}
