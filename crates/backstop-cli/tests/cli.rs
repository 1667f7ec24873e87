//! End-to-end tests of the `backstop` binary: every command's normal path on a temporary
//! repository, the `--json` shapes scripts rely on, the documented exit codes and messages for
//! the failures users meet (wrong password, missing repository, corrupted pack, non-empty restore
//! target), and Ctrl-C in the middle of a large backup, which must leave a valid repository
//! without the interrupted backup.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test on any unexpected error"
)]

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::Value;

#[path = "support/files.rs"]
mod files;
use files::{Tree, files_under, pseudo_random, tree};

const PASSWORD: &str = "correct horse battery staple";

/// Environment variables the binary reads; tests clear them so the host's cannot leak in.
const BACKSTOP_VARS: &[&str] = &[
    "BACKSTOP_REPO",
    "BACKSTOP_PASSWORD",
    "BACKSTOP_PASSWORD_FILE",
    "BACKSTOP_PASSWORD_COMMAND",
    "BACKSTOP_NEW_PASSWORD",
    "BACKSTOP_FROM_PASSWORD",
    "BACKSTOP_CONFIG",
    "BACKSTOP_COMPRESSION",
    "BACKSTOP_THREADS",
    "RUST_LOG",
];

/// One test's world: a temporary directory with a repository path, a data tree and a config
/// home of its own.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        let world = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(world.config_home()).unwrap();
        write_small_tree(&world.data());
        world
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    fn data(&self) -> PathBuf {
        self.path("data")
    }

    fn config_home(&self) -> PathBuf {
        self.path("config-home")
    }

    /// The binary with a clean environment: this world's repository and password, cheap key
    /// derivation, no colour, no config file unless a test writes one.
    fn cmd(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_backstop"));
        for var in BACKSTOP_VARS {
            cmd.env_remove(var);
        }
        cmd.env("BACKSTOP_REPO", self.repo())
            .env("BACKSTOP_PASSWORD", PASSWORD)
            .env("BACKSTOP_TEST_FAST_KDF", "1")
            .env("XDG_CONFIG_HOME", self.config_home())
            .env("NO_COLOR", "1")
            .current_dir(self.dir.path())
            .timeout(Duration::from_secs(120));
        cmd
    }

    /// Runs `args` with `--json`, checks success and the envelope, and returns `result`.
    fn json(&self, args: &[&str]) -> Value {
        self.json_with(&mut self.cmd(), args)
    }

    fn json_with(&self, cmd: &mut Command, args: &[&str]) -> Value {
        let output = cmd.arg("--json").args(args).output().unwrap();
        assert!(
            output.status.success(),
            "`backstop {}` failed: {}\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let value: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
            panic!(
                "stdout is not JSON ({err}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        });
        let expected = match args {
            ["key" | "repair", sub, ..] => format!("{} {sub}", args[0]),
            // An alias reports under the command's own name, so scripts match one string.
            ["snapshots", ..] => "list".to_owned(),
            [first, ..] => (*first).to_owned(),
            [] => unreachable!(),
        };
        assert_eq!(
            value["command"],
            expected.as_str(),
            "envelope names the command"
        );
        value["result"].clone()
    }

    fn init(&self) {
        self.cmd().arg("init").assert().success();
    }

    /// Backs up the data tree and returns the new backup's id.
    fn backup(&self) -> u64 {
        let data = self.data();
        let result = self.json(&["backup", data.to_str().unwrap()]);
        result["id"]
            .as_u64()
            .expect("backup result has a numeric id")
    }

    fn list_ids(&self) -> Vec<u64> {
        let result = self.json(&["list"]);
        result
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_u64().unwrap())
            .collect()
    }
}

/// The paths of an `info --files --json` result.
fn file_paths(info: &Value) -> Vec<String> {
    info["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_owned())
        .collect()
}

/// A small tree: text files, a nested directory, a binary file of a few hundred KiB.
fn write_small_tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::write(root.join("hello.txt"), b"hello, backup\n").unwrap();
    std::fs::write(root.join("sub/notes.md"), b"# notes\nsome text\n").unwrap();
    std::fs::write(root.join("sub/deeper/empty"), b"").unwrap();
    std::fs::write(root.join("skip.tmp"), b"temporary").unwrap();
    std::fs::write(root.join("blob.bin"), pseudo_random(300 * 1024, 7)).unwrap();
}

#[test]
fn backup_list_info_and_restore_round_trip() {
    let world = World::new();
    let init = world.json(&["init"]);
    assert_eq!(init["encrypted"], true);
    assert!(init["id"].as_str().is_some_and(|id| !id.is_empty()));

    let data = world.data();
    let backup = world.json(&[
        "backup",
        data.to_str().unwrap(),
        "--tag",
        "nightly",
        "--meta",
        "app=orders",
        "--message",
        "first one",
    ]);
    let id = backup["id"].as_u64().unwrap();
    assert_eq!(backup["tags"], serde_json::json!(["nightly"]));
    assert_eq!(backup["metadata"]["app"], "orders");
    assert_eq!(backup["message"], "first one");
    assert_eq!(backup["source_kind"], "dir");
    assert_eq!(backup["files"], 5);
    assert!(backup["bytes_read"].as_u64().unwrap() >= 300 * 1024);

    let list = world.json(&["list"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id);
    let alias = world.json(&["snapshots"]);
    assert_eq!(alias, list, "`snapshots` is `list`");

    world
        .cmd()
        .arg("list")
        .assert()
        .success()
        .stdout(predicate::str::contains("ID").and(predicate::str::contains("nightly")));

    let info = world.json(&["info", &id.to_string(), "--files"]);
    assert_eq!(info["backup"]["id"], id);
    let paths = file_paths(&info);
    assert!(
        paths.iter().any(|p| p.ends_with("sub/notes.md")),
        "{paths:?}"
    );
    let without_files = world.json(&["info", "latest"]);
    assert!(
        without_files.get("files").is_none(),
        "`files` only with --files"
    );
    world
        .cmd()
        .args(["info", "latest"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("`{}`", data.display())));

    let target = world.path("restored");
    let restored = world.json(&["restore", &id.to_string(), target.to_str().unwrap()]);
    assert_eq!(restored["id"], id);
    assert_eq!(restored["files"], 5);
    assert_eq!(
        tree(&target),
        tree(&data),
        "restored tree equals the original"
    );

    let latest = world.path("restored-latest");
    world
        .cmd()
        .args(["restore", "latest", latest.to_str().unwrap()])
        .assert()
        .success();
    assert_eq!(tree(&latest), tree(&data));
}

/// `restore --include` restores the matching paths with what is under them; patterns that
/// match nothing exit 6 with where to look, and leave the target alone.
#[test]
fn diff_lists_what_changed_between_two_backups() {
    let world = World::new();
    world.init();
    let first = world.backup();
    std::fs::write(world.data().join("added.txt"), b"new").unwrap();
    std::fs::remove_file(world.data().join("hello.txt")).unwrap();
    std::fs::write(world.data().join("blob.bin"), pseudo_random(1000, 8)).unwrap();
    let second = world.backup();
    world
        .cmd()
        .args(["diff", &first.to_string(), &second.to_string()])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("+ added.txt")
                .and(predicate::str::contains("- hello.txt"))
                .and(predicate::str::contains("M blob.bin  (300 KiB → 1000 B)"))
                .and(predicate::str::contains("1 added, 1 removed")),
        );
    let diff = world.json(&["diff", &first.to_string(), "latest"]);
    assert_eq!(diff["to"], second, "{diff}");
    assert_eq!(diff["added"], 1, "{diff}");
}

#[test]
fn dump_writes_one_file_to_stdout() {
    let world = World::new();
    world.init();
    world.backup();
    let out = world
        .cmd()
        .args(["dump", "latest", "blob.bin"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == std::fs::read(world.data().join("blob.bin")).unwrap());
    world
        .cmd()
        .args(["dump", "latest", "no-such-file"])
        .assert()
        .code(6)
        .stderr(predicate::str::contains("has no file `no-such-file`"));
    // A directory is there, but is not a file to write out: say so, and how to get it.
    world
        .cmd()
        .args(["dump", "latest", "sub"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "`sub` of backup 1 is a directory, not a file",
        ))
        .stderr(predicate::str::contains("--include 'sub'"));
    world
        .cmd()
        .args(["--json", "dump", "latest", "blob.bin"])
        .assert()
        .code(2);
}

#[test]
fn restore_include_restores_only_the_matching_paths() {
    let world = World::new();
    world.init();
    let id = world.backup().to_string();
    let target = world.path("part");
    let restored = world.json(&[
        "restore",
        &id,
        target.to_str().unwrap(),
        "--include",
        "sub/deeper",
        "--include",
        "*.txt",
    ]);
    assert_eq!(restored["files"], 2, "{restored}");
    let expected: Tree = tree(&world.data())
        .into_iter()
        .filter(|(path, _)| {
            ["sub", "sub/deeper", "sub/deeper/empty", "hello.txt"].contains(&path.as_str())
        })
        .collect();
    assert_eq!(tree(&target), expected);

    let untouched = world.path("untouched");
    world
        .cmd()
        .args(["restore", &id, untouched.to_str().unwrap()])
        .args(["--include", "no/such/path"])
        .assert()
        .code(6)
        .stderr(
            predicate::str::contains("`no/such/path`")
                .and(predicate::str::contains(format!("info {id} --files"))),
        );
    assert!(!untouched.exists(), "a refused restore created its target");
}

#[test]
fn verify_quick_subset_and_full() {
    let world = World::new();
    world.init();
    let id = world.backup();

    let quick = world.json(&["verify"]);
    assert_eq!(quick["backups"], serde_json::json!([id]));
    assert_eq!(quick["problems"], serde_json::json!([]));
    let full = world.json(&["verify", "--all", "--full"]);
    assert_eq!(full["problems"], serde_json::json!([]));
    assert!(
        full["packs_read"].as_u64().unwrap() >= 1,
        "full verify reads packs: {full}"
    );
    assert!(full["bytes_read"].as_u64().unwrap() > 0);
    world.json(&["verify", &id.to_string(), "--read-data-subset", "50"]);

    world
        .cmd()
        .args(["verify", "latest", "--full"])
        .assert()
        .success()
        .stdout(predicate::str::contains("no problems found"));
    world
        .cmd()
        .args(["verify", "--full", "--read-data-subset", "5"])
        .assert()
        .code(2);
}

#[test]
fn restore_refuses_a_non_empty_target_unless_forced() {
    let world = World::new();
    world.init();
    let id = world.backup();
    let target = world.path("busy");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("precious.txt"), b"keep me").unwrap();
    std::fs::write(target.join("hello.txt"), b"stale").unwrap();

    world
        .cmd()
        .args(["restore", &id.to_string(), target.to_str().unwrap()])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("not empty").and(predicate::str::contains("--force")));
    assert_eq!(
        std::fs::read(target.join("hello.txt")).unwrap(),
        b"stale",
        "nothing written"
    );

    world
        .cmd()
        .args([
            "restore",
            &id.to_string(),
            target.to_str().unwrap(),
            "--force",
        ])
        .assert()
        .success();
    assert_eq!(
        std::fs::read(target.join("hello.txt")).unwrap(),
        b"hello, backup\n"
    );
    assert_eq!(
        std::fs::read(target.join("precious.txt")).unwrap(),
        b"keep me"
    );
}

/// `restore --delta` makes a diverged copy the backup again: what differs is written, what
/// the backup lacks is deleted, and the summary says how much was already in place; with
/// `--include` it is refused as a usage error, before anything is touched.
#[test]
fn restore_delta_mends_a_diverged_copy() {
    let world = World::new();
    world.init();
    let id = world.backup();
    let target = world.path("copy");
    world
        .cmd()
        .args(["restore", &id.to_string(), target.to_str().unwrap()])
        .assert()
        .success();
    let mut blob = std::fs::read(target.join("blob.bin")).unwrap();
    blob[1000] ^= 0xFF;
    std::fs::write(target.join("blob.bin"), &blob).unwrap();
    std::fs::write(target.join("stray.txt"), b"not in the backup").unwrap();

    world
        .cmd()
        .args(["restore", "--delta", "--include", "sub"])
        .args([&id.to_string(), target.to_str().unwrap()])
        .assert()
        .code(2);
    assert!(
        target.join("stray.txt").exists(),
        "a refused delta touched the target"
    );

    world
        .cmd()
        .args([
            "restore",
            "--delta",
            &id.to_string(),
            target.to_str().unwrap(),
        ])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("already in place").and(predicate::str::contains(
                "1 path the backup does not have deleted",
            )),
        );
    assert!(!target.join("stray.txt").exists());
    assert_eq!(
        std::fs::read(target.join("blob.bin")).unwrap(),
        std::fs::read(world.data().join("blob.bin")).unwrap()
    );
    let restored = world.json(&[
        "restore",
        "--delta",
        &id.to_string(),
        target.to_str().unwrap(),
    ]);
    assert_eq!(restored["bytes"], 0, "{restored}");
    assert_eq!(restored["removed"], 0, "{restored}");
    assert!(
        restored["bytes_kept"].as_u64().unwrap() > 300 * 1024,
        "{restored}"
    );
}

/// `restore --sparse` leaves a sparse file's holes as holes and says how many bytes of zeros
/// it did not write; the file reads back the same.
#[test]
fn restore_sparse_keeps_a_sparse_file_sparse() {
    use std::os::unix::fs::MetadataExt as _;
    let world = World::new();
    world.init();
    let image = world.data().join("disk.img");
    let file = std::fs::File::create(&image).unwrap();
    file.set_len(64 << 20).unwrap();
    file.write_all_at(&pseudo_random(1 << 20, 3), 32 << 20)
        .unwrap();
    drop(file);
    let id = world.backup();
    let target = world.path("sparse");
    world
        .cmd()
        .args([
            "restore",
            "--sparse",
            &id.to_string(),
            target.to_str().unwrap(),
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains("of zeros left as holes"));
    let restored = target.join("disk.img");
    assert_eq!(
        std::fs::read(&restored).unwrap(),
        std::fs::read(&image).unwrap()
    );
    let allocated = std::fs::metadata(&restored).unwrap().blocks() * 512;
    assert!(
        allocated < 16 << 20,
        "{allocated} bytes allocated for 1 MiB of data"
    );
}

#[test]
fn purge_delete_and_gc() {
    let world = World::new();
    world.init();
    let mut ids = Vec::new();
    for round in 0..3u64 {
        std::fs::write(
            world.data().join("round.bin"),
            pseudo_random(200 * 1024, 100 + round),
        )
        .unwrap();
        ids.push(world.backup());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");

    let purged = world.json(&["purge", "--keep-last", "2"]);
    assert_eq!(purged["deleted"], serde_json::json!([ids[0]]));
    assert_eq!(world.list_ids(), ids[1..]);

    let deleted = world.json(&["delete", &ids[1].to_string()]);
    assert_eq!(deleted["deleted"], serde_json::json!([ids[1]]));
    assert_eq!(world.list_ids(), [ids[2]]);

    let dry = world.json(&["gc", "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    let gc = world.json(&["gc"]);
    assert_eq!(gc["dry_run"], false);
    for field in [
        "packs_deleted",
        "bytes_freed",
        "indexes_rewritten",
        "packs_kept",
        "packs_repacked",
        "bytes_repacked",
        "packs_in_grace",
    ] {
        assert!(gc[field].is_u64(), "gc report has {field}: {gc}");
    }
    // The first backup's packs hold the deleted rounds' data beside data still in use: gc
    // rewrites them (the default threshold, or asked to here), and a gc without a grace period
    // deletes the old packs at once, its own and the first gc's.
    let rewrite = world.json(&["gc", "--repack-unused", "0", "--grace", "0s"]);
    let repacked = gc["packs_repacked"].as_u64().unwrap();
    let rewritten_now = rewrite["packs_repacked"].as_u64().unwrap();
    assert!(repacked + rewritten_now >= 1, "{gc}\n{rewrite}");
    assert_eq!(
        rewrite["packs_deleted"].as_u64().unwrap(),
        repacked + rewritten_now,
        "{rewrite}"
    );
    let after = world.json(&["gc", "--grace", "0s", "--dry-run"]);
    assert_eq!(after["packs_deleted"], 0, "{after}");
    assert_eq!(after["packs_in_grace"], 0, "{after}");
    world
        .cmd()
        .args(["gc", "--repack-unused", "101"])
        .assert()
        .code(2);

    world.json(&["verify", "--all", "--full"]);
    let target = world.path("after-gc");
    world
        .cmd()
        .args(["restore", "latest", target.to_str().unwrap()])
        .assert()
        .success();
    assert_eq!(tree(&target), tree(&world.data()));

    world.cmd().args(["delete", "999"]).assert().code(6);
}

// Regression: `purge --keep-last N` counted the backups of every source together, so the
// README's tour (a database, PostgreSQL, Berkeley DB and directories in one repository, then
// `purge --keep-last 7`) deleted every backup of a source backed up less often.
#[test]
fn purge_keeps_the_newest_backups_of_each_source() {
    let world = World::new();
    world.init();
    let other = world.path("other");
    std::fs::create_dir_all(&other).unwrap();
    let mut ids = Vec::new();
    // data, other, data, data: `other` is backed up less often.
    for (round, dir) in [world.data(), other.clone(), world.data(), world.data()]
        .iter()
        .enumerate()
    {
        std::fs::write(dir.join("round.bin"), pseudo_random(10_000, round as u64)).unwrap();
        let backup = world.json(&["backup", dir.to_str().unwrap()]);
        ids.push(backup["id"].as_u64().unwrap());
    }
    assert_eq!(ids, [1, 2, 3, 4]);
    let other_source = std::fs::canonicalize(&other)
        .unwrap()
        .to_string_lossy()
        .into_owned();

    // A policy that keeps nothing is a usage error, and nothing goes.
    world
        .cmd()
        .args(["purge", "--keep-last", "0"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("keeps no backup"));
    assert_eq!(world.list_ids(), ids);

    // No rule at all is a usage error too.
    world
        .cmd()
        .args(["purge", "--dry-run"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no --keep rule given"));
    // A tag alone would delete every untagged backup.
    world
        .cmd()
        .args(["purge", "--keep-tag", "release", "--dry-run"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--keep-tag release"));

    // Rules add up: the backups of the last hour are all kept, and say why.
    let within = world.json(&[
        "purge",
        "--keep-last",
        "1",
        "--keep-within",
        "1h",
        "--dry-run",
    ]);
    assert_eq!(within["deleted"], serde_json::json!([]), "{within}");
    let reasons: Vec<&serde_json::Value> = within["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["reasons"].as_object().unwrap().values())
        .collect();
    assert_eq!(reasons.len(), ids.len(), "{within}");
    assert!(
        reasons
            .iter()
            .all(|why| why.as_array().unwrap().contains(&"within".into())),
        "{within}"
    );

    // The dry run shows the plan per source and changes nothing.
    let dry = world.json(&["purge", "--keep-last", "1", "--dry-run"]);
    assert_eq!(dry["dry_run"], true, "{dry}");
    assert_eq!(dry["deleted"], serde_json::json!([ids[0], ids[2]]), "{dry}");
    let groups = dry["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{dry}");
    let other_group = groups
        .iter()
        .find(|g| g["source"] == other_source.as_str())
        .unwrap();
    assert_eq!(other_group["source_kind"], "dir");
    assert_eq!(other_group["kept"], serde_json::json!([ids[1]]));
    assert_eq!(other_group["deleted"], serde_json::json!([]));
    assert_eq!(world.list_ids(), ids);
    world
        .cmd()
        .args(["purge", "--keep-last", "1", "--dry-run"])
        .assert()
        .success()
        .stdout(
            predicate::str::contains(format!("dir `{other_source}`"))
                .and(predicate::str::contains("keep 2; delete none"))
                .and(predicate::str::contains("keep 4; delete 1, 3"))
                .and(predicate::str::contains("nothing changed")),
        );
    assert_eq!(world.list_ids(), ids);

    // `--source-path` picks one source; an unknown one is an error, not a silent no-op.
    world
        .cmd()
        .args([
            "purge",
            "--keep-last",
            "1",
            "--source-path",
            "/no/such/source",
        ])
        .assert()
        .code(6);
    let only_data = world.json(&[
        "purge",
        "--keep-last",
        "2",
        "--source-path",
        world.data().to_str().unwrap(),
    ]);
    assert_eq!(
        only_data["deleted"],
        serde_json::json!([ids[0]]),
        "{only_data}"
    );
    assert_eq!(only_data["groups"].as_array().unwrap().len(), 1);

    // `latest` of a repository of two sources is the newest of either, with a warning that
    // says whose; `--source-path` picks one source's newest, and refuses another's id.
    world
        .cmd()
        .args(["info", "latest"])
        .assert()
        .success()
        .stderr(predicate::str::contains("--source-path"));
    let other_latest = world.json(&["info", "latest", "--source-path", other.to_str().unwrap()]);
    assert_eq!(other_latest["backup"]["id"], ids[1], "{other_latest}");
    world
        .cmd()
        .args([
            "info",
            &ids[2].to_string(),
            "--source-path",
            other.to_str().unwrap(),
        ])
        .assert()
        .code(6)
        .stderr(predicate::str::contains("not of"));
    let into = world.path("other-restored");
    let restored = world.json(&[
        "restore",
        "latest",
        into.to_str().unwrap(),
        "--source-path",
        &other_source,
    ]);
    assert_eq!(restored["id"], ids[1], "{restored}");
    assert!(into.join("round.bin").exists());

    let purged = world.json(&["purge", "--keep-last", "1"]);
    assert_eq!(purged["dry_run"], false);
    assert_eq!(purged["deleted"], serde_json::json!([ids[2]]), "{purged}");
    assert_eq!(purged["wal_deleted"], serde_json::json!([]));
    assert_eq!(world.list_ids(), [ids[1], ids[3]]);
}

#[test]
fn key_add_list_passwd_remove() {
    let world = World::new();
    world.init();
    world.backup();

    let keys = world.json(&["key", "list"]);
    assert_eq!(keys.as_array().unwrap().len(), 1);
    assert_eq!(keys[0]["current"], true);
    let first_key = keys[0]["id"].as_str().unwrap().to_owned();

    let added = world.json_with(
        world.cmd().env("BACKSTOP_NEW_PASSWORD", "second"),
        &["key", "add"],
    );
    let second_key = added["id"].as_str().unwrap().to_owned();
    assert_ne!(first_key, second_key);

    // The new password opens the repository, and sees both keys, its own as current.
    let mut as_second = world.cmd();
    as_second.env("BACKSTOP_PASSWORD", "second");
    let keys = world.json_with(&mut as_second, &["key", "list"]);
    assert_eq!(keys.as_array().unwrap().len(), 2);
    let current: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["current"] == true)
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(current, [second_key.as_str()]);

    let removed = world.json_with(
        world.cmd().env("BACKSTOP_PASSWORD", "second"),
        &["key", "remove", &first_key],
    );
    assert_eq!(removed["removed"], first_key.as_str());
    world.cmd().arg("list").assert().code(5);

    // Change the password from a file.
    let new_password_file = world.path("third.txt");
    std::fs::write(&new_password_file, "third\n").unwrap();
    world
        .cmd()
        .env("BACKSTOP_PASSWORD", "second")
        .args(["key", "passwd", "--new-password-file"])
        .arg(&new_password_file)
        .assert()
        .success();
    world
        .cmd()
        .env("BACKSTOP_PASSWORD", "second")
        .arg("list")
        .assert()
        .code(5);
    world
        .cmd()
        .env("BACKSTOP_PASSWORD", "third")
        .arg("list")
        .assert()
        .success();

    // Without a new password and without a terminal, `key add` says how to give one.
    world
        .cmd()
        .env("BACKSTOP_PASSWORD", "third")
        .args(["key", "add"])
        .write_stdin("")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("BACKSTOP_NEW_PASSWORD"));
}

#[test]
fn wal_push_and_fetch_round_trip() {
    let world = World::new();
    world.init();
    let segment = world.path("000000010000000000000001");
    let bytes = pseudo_random(64 * 1024, 42);
    std::fs::write(&segment, &bytes).unwrap();

    world
        .cmd()
        .args(["wal-push"])
        .arg(&segment)
        .assert()
        .success()
        .stdout(predicate::str::is_empty());
    // PostgreSQL retries archiving after a crash: the same bytes again are fine.
    let again = world.json(&["wal-push", segment.to_str().unwrap()]);
    assert_eq!(again["outcome"], "AlreadyPresent");
    assert_eq!(again["bytes"], 64 * 1024);

    let dest_dir = world.path("pg_wal");
    std::fs::create_dir_all(&dest_dir).unwrap();
    world
        .cmd()
        .args([
            "wal-fetch",
            "000000010000000000000001",
            "pg_wal/RECOVERYXLOG",
        ])
        .assert()
        .success()
        .stdout(predicate::str::is_empty());
    assert_eq!(std::fs::read(dest_dir.join("RECOVERYXLOG")).unwrap(), bytes);
    assert_eq!(
        std::fs::read_dir(&dest_dir).unwrap().count(),
        1,
        "no temporary file left"
    );

    world
        .cmd()
        .args([
            "wal-fetch",
            "000000010000000000000002",
            "pg_wal/RECOVERYXLOG",
        ])
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("000000010000000000000002")
                .and(predicate::str::contains("not in the archive")),
        );

    // Different bytes under an archived name are refused, so PostgreSQL sees the failure.
    std::fs::write(&segment, pseudo_random(64 * 1024, 43)).unwrap();
    world.cmd().arg("wal-push").arg(&segment).assert().failure();
}

/// An offsite copy: `init --from-repo` makes a repository with its own password that can take
/// the first one's backups, `copy` brings them over (again: only new ones), and they restore
/// from there byte for byte. A repository made without `--from-repo` is refused.
#[test]
fn copy_brings_backups_into_a_repository_made_from_the_first() {
    let world = World::new();
    world.init();
    world.backup();
    std::fs::write(world.data().join("hello.txt"), b"changed\n").unwrap();
    world.backup();
    let offsite = world.path("offsite");
    let offsite = offsite.to_str().unwrap();
    let as_offsite = || {
        let mut cmd = world.cmd();
        cmd.env("BACKSTOP_REPO", offsite)
            .env("BACKSTOP_PASSWORD", "offsite password");
        cmd
    };

    // The source's password is its own: without it, `init --from-repo` says how to give it.
    as_offsite()
        .args(["init", "--from-repo", world.repo().to_str().unwrap()])
        .assert()
        .failure()
        .stderr(predicate::str::contains("BACKSTOP_FROM_PASSWORD"));
    let source = world.repo();
    let source = source.to_str().unwrap();
    let init = world.json_with(
        as_offsite().env("BACKSTOP_FROM_PASSWORD", PASSWORD),
        &["init", "--from-repo", source],
    );
    assert_eq!(init["encrypted"], true);

    let copy = world.json_with(
        as_offsite().env("BACKSTOP_FROM_PASSWORD", PASSWORD),
        &["copy", "--from-repo", source],
    );
    assert_eq!(copy["copied"], serde_json::json!([[1, 1], [2, 2]]));
    assert!(copy["blobs_copied"].as_u64().unwrap() > 0);
    let again = world.json_with(
        as_offsite().env("BACKSTOP_FROM_PASSWORD", PASSWORD),
        &["copy", "--from-repo", source],
    );
    assert_eq!(again["copied"], serde_json::json!([]));
    assert_eq!(again["blobs_copied"], 0);

    let target = world.path("restored");
    as_offsite()
        .args(["restore", "latest", target.to_str().unwrap()])
        .assert()
        .success();
    for file in ["hello.txt", "blob.bin", "sub/notes.md"] {
        assert_eq!(
            std::fs::read(target.join(file)).unwrap(),
            std::fs::read(world.data().join(file)).unwrap(),
            "{file}"
        );
    }
    as_offsite().args(["verify", "--all"]).assert().success();

    // A repository of its own key cannot take them, and is left as it was.
    let other = world.path("other");
    let mut cmd = world.cmd();
    cmd.env("BACKSTOP_REPO", &other)
        .arg("init")
        .assert()
        .success();
    world
        .cmd()
        .env("BACKSTOP_REPO", &other)
        .env("BACKSTOP_FROM_PASSWORD", PASSWORD)
        .args(["copy", "--from-repo", source])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("init --from-repo"));
    let listed = world.json_with(world.cmd().env("BACKSTOP_REPO", &other), &["list"]);
    assert_eq!(listed, serde_json::json!([]));
}

/// `copy --source-path` copies the backups of those sources only; a source with none is
/// "not found".
#[test]
fn copy_of_one_source_leaves_the_others_behind() {
    let world = World::new();
    world.init();
    let other = world.path("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("x"), b"another source").unwrap();
    let source = world.repo();
    let source = source.to_str().unwrap();
    let first = world.backup();
    let theirs = world.json(&["backup", other.to_str().unwrap()])["id"]
        .as_u64()
        .unwrap();
    let second = world.backup();
    let offsite = world.path("offsite");
    let as_offsite = || {
        let mut cmd = world.cmd();
        cmd.env("BACKSTOP_REPO", &offsite)
            .env("BACKSTOP_FROM_PASSWORD", PASSWORD);
        cmd
    };
    as_offsite()
        .args(["init", "--from-repo", source])
        .assert()
        .success();
    let data = world.data();
    let copy = world.json_with(
        &mut as_offsite(),
        &[
            "copy",
            "--from-repo",
            source,
            "--source-path",
            data.to_str().unwrap(),
        ],
    );
    assert_eq!(copy["copied"], serde_json::json!([[first, 1], [second, 2]]));
    // With an id, it must be of that source.
    as_offsite()
        .args(["copy", "--from-repo", source, "--source-path"])
        .arg(&data)
        .arg(theirs.to_string())
        .assert()
        .code(6);
    as_offsite()
        .args([
            "copy",
            "--from-repo",
            source,
            "--source-path",
            "/no/such/source",
        ])
        .assert()
        .code(6)
        .stderr(predicate::str::contains("no backups of"));
    let listed = world.json_with(&mut as_offsite(), &["list"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
}

#[test]
fn wrong_password_exits_5() {
    let world = World::new();
    world.init();
    world
        .cmd()
        .env("BACKSTOP_PASSWORD", "not the password")
        .arg("list")
        .assert()
        .code(5)
        .stderr(predicate::str::starts_with("error:"));

    // With --json the failure is also a document on stdout.
    let output = world
        .cmd()
        .env("BACKSTOP_PASSWORD", "not the password")
        .args(["--json", "list"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(5));
    let value: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(value["command"], "list");
    assert_eq!(value["error"]["exit_code"], 5);
    assert!(
        value["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[test]
fn password_flags_win_over_the_environment() {
    let world = World::new();
    world.init();
    let password_file = world.path("pw.txt");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    world
        .cmd()
        .env("BACKSTOP_PASSWORD", "wrong")
        .arg("--password-file")
        .arg(&password_file)
        .arg("list")
        .assert()
        .success();
    world
        .cmd()
        .env("BACKSTOP_PASSWORD", "wrong")
        .args(["--password-command", &format!("echo '{PASSWORD}'"), "list"])
        .assert()
        .success();
    world
        .cmd()
        .env("BACKSTOP_PASSWORD", "wrong")
        .env("BACKSTOP_PASSWORD_FILE", &password_file)
        .arg("list")
        .assert()
        .code(5);
    world
        .cmd()
        .env_remove("BACKSTOP_PASSWORD")
        .env("BACKSTOP_PASSWORD_FILE", &password_file)
        .arg("list")
        .assert()
        .success();
    // Without any password and without a terminal, the error says how to give one.
    world
        .cmd()
        .env_remove("BACKSTOP_PASSWORD")
        .arg("list")
        .write_stdin("")
        .assert()
        .code(5)
        .stderr(predicate::str::contains("--password-file"));
}

#[test]
fn init_twice_and_missing_backups_are_reported() {
    let world = World::new();
    world.init();
    world
        .cmd()
        .arg("init")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("already exists"));
    world.cmd().args(["info", "999"]).assert().code(6);
    world
        .cmd()
        .args(["restore", "latest", "target"])
        .assert()
        .code(6);
    world.cmd().args(["info", "nonsense"]).assert().code(2);
}

#[test]
fn missing_repository_exits_6() {
    let world = World::new();
    world.cmd().arg("list").assert().code(6).stderr(
        predicate::str::contains("no repository at")
            .and(predicate::str::contains(world.repo().to_str().unwrap())),
    );
    // A directory that exists but holds no repository is missing too.
    std::fs::create_dir_all(world.repo()).unwrap();
    world.cmd().arg("list").assert().code(6);
}

#[test]
fn no_repository_given_is_a_usage_error() {
    let world = World::new();
    world
        .cmd()
        .env_remove("BACKSTOP_REPO")
        .arg("list")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("BACKSTOP_REPO"));
    world.cmd().args(["restore"]).assert().code(2);
    world.cmd().args(["frobnicate"]).assert().code(2);
}

#[test]
fn corrupted_pack_is_found_by_verify_and_refused_by_restore() {
    let world = World::new();
    world.init();
    let id = world.backup();

    let packs = files_under(&world.repo().join("packs"));
    let pack = packs
        .iter()
        .max_by_key(|path| std::fs::metadata(path).unwrap().len())
        .expect("the repository has a pack");
    let mut bytes = std::fs::read(pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(pack, &bytes).unwrap();

    let output = world
        .cmd()
        .args(["--json", "verify", "--full"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(!value["result"]["problems"].as_array().unwrap().is_empty());

    world
        .cmd()
        .args(["verify", "--all", "--full"])
        .assert()
        .code(3)
        .stdout(
            predicate::str::contains("problem:").and(predicate::str::contains(
                "cannot be restored whole: `blob.bin`",
            )),
        )
        .stderr(predicate::str::contains("verify found"));

    let target = world.path("restored");
    world
        .cmd()
        .args(["restore", &id.to_string(), target.to_str().unwrap()])
        .assert()
        .code(3)
        .stderr(predicate::str::starts_with("error:"));
}

/// The index lost (its directory deleted): restore and gc stop and name `repair index`, which
/// rebuilds it from the packs; then a damaged pack: `repair index --read-all-packs` copies its
/// intact blobs, a full-read backup stores the rest again, and both backups verify and restore.
#[test]
fn repair_index_rebuilds_a_lost_index_and_salvages_a_damaged_pack() {
    let world = World::new();
    world.init();
    let id = world.backup();
    std::fs::remove_dir_all(world.repo().join("index")).unwrap();
    std::fs::create_dir(world.repo().join("index")).unwrap();
    let target = world.path("restored");
    for args in [
        vec!["restore", "latest", target.to_str().unwrap()],
        vec!["gc"],
    ] {
        world
            .cmd()
            .args(&args)
            .assert()
            .code(3)
            .stderr(predicate::str::contains("backstop repair index"));
    }
    let report = world.json(&["repair", "index"]);
    assert!(report["packs_added"].as_u64().unwrap() >= 1, "{report}");
    world
        .cmd()
        .args(["verify", "--all", "--full"])
        .assert()
        .success();
    world
        .cmd()
        .args(["repair", "index"])
        .assert()
        .success()
        .stdout(predicate::str::contains("nothing to mend"));

    let pack = files_under(&world.repo().join("packs"))
        .into_iter()
        .max_by_key(|path| std::fs::metadata(path).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[10] ^= 0x40;
    std::fs::write(&pack, &bytes).unwrap();
    let report = world.json(&["repair", "index", "--read-all-packs"]);
    assert_eq!(
        report["packs_damaged"].as_array().unwrap().len(),
        1,
        "{report}"
    );
    assert!(report["blobs_damaged"].as_u64().unwrap() >= 1, "{report}");
    world
        .cmd()
        .args(["verify", "--all"])
        .assert()
        .code(3)
        .stdout(predicate::str::contains("no index lists it"));
    let data = world.data();
    world.json(&["backup", "--full-read", data.to_str().unwrap()]);
    world
        .cmd()
        .args(["verify", "--all", "--full"])
        .assert()
        .success();
    world
        .cmd()
        .args(["restore", &id.to_string(), target.to_str().unwrap()])
        .assert()
        .success();
    assert_eq!(
        std::fs::read(target.join("blob.bin")).unwrap(),
        std::fs::read(data.join("blob.bin")).unwrap()
    );
    world.cmd().arg("gc").assert().success();
    assert!(!pack.exists(), "gc deletes the damaged pack");
}

#[test]
fn unencrypted_repository_needs_no_password() {
    let world = World::new();
    let init = world.json_with(
        world.cmd().env_remove("BACKSTOP_PASSWORD"),
        &["init", "--no-encryption"],
    );
    assert_eq!(init["encrypted"], false);
    let data = world.data();
    let mut cmd = world.cmd();
    cmd.env_remove("BACKSTOP_PASSWORD").write_stdin("");
    world.json_with(&mut cmd, &["backup", data.to_str().unwrap()]);
    let mut cmd = world.cmd();
    cmd.env_remove("BACKSTOP_PASSWORD").write_stdin("");
    let list = world.json_with(&mut cmd, &["list"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[test]
fn init_seals_with_the_cipher_asked_for_and_records_its_version() {
    for (cipher, version) in [("xchacha20-poly1305", 6u8), ("xaes-256-gcm", 6)] {
        let world = World::new();
        let init = world.json(&["init", "--cipher", cipher]);
        assert_eq!(init["cipher"], cipher);
        assert_eq!(init["version"], u64::from(version));
        let config = std::fs::read(world.repo().join("config")).unwrap();
        assert_eq!(
            config[5], version,
            "{cipher}: the config's envelope version"
        );
        world.backup();
        let target = world.path("restored");
        world.json(&["restore", "latest", target.to_str().unwrap()]);
        assert_eq!(tree(&world.data()), tree(&target), "{cipher}");
        world
            .cmd()
            .args(["init", "--cipher", cipher])
            .env("BACKSTOP_REPO", world.path("text"))
            .assert()
            .success()
            .stdout(predicate::str::contains(format!(
                "created encrypted ({cipher}) repository"
            )));
    }
    World::new()
        .cmd()
        .args(["init", "--no-encryption", "--cipher", "xaes-256-gcm"])
        .assert()
        .code(2);
}

#[test]
fn init_without_a_password_or_terminal_says_how_to_give_one() {
    let world = World::new();
    world
        .cmd()
        .env_remove("BACKSTOP_PASSWORD")
        .arg("init")
        .write_stdin("")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("BACKSTOP_PASSWORD"));
    assert!(
        !world.repo().exists(),
        "nothing is created without a password"
    );
}

#[test]
fn config_file_supplies_defaults_and_flags_override_it() {
    let world = World::new();
    let password_file = world.path("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let config_dir = world.config_home().join("backstop");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("config.toml"),
        format!(
            "repo = {:?}\npassword_file = {:?}\ncompression_level = 1\nexcludes = [\"*.tmp\"]\n",
            world.repo().to_str().unwrap(),
            password_file.to_str().unwrap()
        ),
    )
    .unwrap();

    let bare = || {
        let mut cmd = world.cmd();
        cmd.env_remove("BACKSTOP_REPO")
            .env_remove("BACKSTOP_PASSWORD");
        cmd
    };
    world.json_with(&mut bare(), &["init"]);
    let data = world.data();
    world.json_with(&mut bare(), &["backup", data.to_str().unwrap()]);
    let info = world.json_with(&mut bare(), &["info", "latest", "--files"]);
    let paths = file_paths(&info);
    assert!(
        !paths.iter().any(|p| p.ends_with("skip.tmp")),
        "excluded by config: {paths:?}"
    );
    assert!(paths.iter().any(|p| p.ends_with("hello.txt")), "{paths:?}");

    // --repo beats the config file.
    let other = world.path("other-repo");
    bare()
        .arg("--repo")
        .arg(&other)
        .arg("list")
        .assert()
        .code(6);

    // An explicit config file must exist and must not have unknown keys.
    bare()
        .args(["--config", "nope.toml", "list"])
        .assert()
        .code(1);
    let bad = world.path("bad.toml");
    std::fs::write(&bad, "repository = \"x\"\n").unwrap();
    bare()
        .env("BACKSTOP_CONFIG", &bad)
        .arg("list")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("unknown field"));
}

#[test]
fn fast_compression_levels_store_more_and_restore_the_same_and_bad_levels_are_refused() {
    let world = World::new();
    let data = world.data();
    let rows: String = (0u32..40_000)
        .map(|i| {
            format!(
                "{i},{},paid,{:08x}\n",
                i % 977,
                i.wrapping_mul(2_654_435_761)
            )
        })
        .collect();
    std::fs::write(data.join("rows.csv"), rows).unwrap();

    let added_at = |level: &str| {
        let repo = world.path(&format!("repo{level}"));
        let in_repo = || {
            let mut cmd = world.cmd();
            cmd.arg("--repo").arg(&repo);
            cmd
        };
        world.json_with(&mut in_repo(), &["init"]);
        // `-3` is taken as the level, not as a flag.
        let mut cmd = in_repo();
        cmd.args(["--compression", level]);
        let backup = world.json_with(&mut cmd, &["backup", data.to_str().unwrap()]);
        let target = world.path(&format!("restored{level}"));
        world.json_with(
            &mut in_repo(),
            &["restore", "latest", target.to_str().unwrap()],
        );
        assert_eq!(tree(&target), tree(&data), "restored at level {level}");
        let added = |key: &str| backup[key].as_u64().expect(key);
        (added("bytes_added"), added("bytes_added_raw"))
    };
    let ((default, raw), (fast, _)) = (added_at("3"), added_at("-3"));
    // Compressed, but less than at level 3: neither the default nor "off" was used.
    assert!(
        default < fast && fast < raw * 3 / 4,
        "level -3 stored {fast} bytes, level 3 {default}, of {raw}"
    );

    for bad in ["23", "-131073"] {
        world
            .cmd()
            .args(["--compression", bad, "list"])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(bad));
    }
}

#[test]
fn completions_and_man_page() {
    let world = World::new();
    world
        .cmd()
        .args(["completions", "bash"])
        .assert()
        .success()
        .stdout(predicate::str::contains("backstop"));
    world
        .cmd()
        .arg("man")
        .assert()
        .success()
        .stdout(predicate::str::contains(".TH"));
    world
        .cmd()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("Exit codes:").and(predicate::str::contains("130")));
}

/// A recovery target given for a backup that is not replayed to a point in time is a usage
/// error that names the backup's kind, and nothing is restored: otherwise the user gets the
/// latest state while believing they asked for an earlier one.
#[test]
fn a_recovery_target_for_a_directory_backup_is_refused() {
    let world = World::new();
    world.init();
    let id = world.backup();
    let target = world.path("restored");
    for option in ["--target-time=2026-01-01 00:00:00+00", "--target-lsn=0/1"] {
        world
            .cmd()
            .args(["restore", &id.to_string(), target.to_str().unwrap(), option])
            .assert()
            .code(2)
            .stderr(predicate::str::contains("a directory backup"));
        assert!(!target.exists(), "{option}: something was restored");
    }
}

/// With `--json`, arguments clap refuses give the same error document as any other failure
/// (scripts parse stdout), with exit code 2 and clap's message on stderr too.
#[test]
fn a_usage_error_with_json_is_a_json_error_document() {
    let world = World::new();
    let output = world
        .cmd()
        .args(["--json", "restore", "not-a-number", "target"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let doc: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(doc["command"], "restore", "{doc}");
    assert_eq!(doc["error"]["exit_code"], 2, "{doc}");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not-a-number"),
        "{doc}"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("not-a-number"));
    let output = world
        .cmd()
        .args(["key", "remove", "--json", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let doc: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(doc["command"], "key remove", "{doc}");
    // Without --json, stdout stays empty.
    let output = world.cmd().args(["restore", "x", "t"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
}

/// Output piped into a reader that stops early (`| head`): the command ends quietly with exit
/// code 0, as the CLI README promises, even where a library writes the output (the bash
/// completion script, 70 KB, is more than a pipe holds).
#[test]
fn a_closed_pipe_ends_completions_quietly() {
    let world = World::new();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(["completions", "bash"])
        .current_dir(world.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Ctrl-C in the middle of a 300 MiB backup: the command exits 130, the interrupted backup
/// is not listed, the repository verifies in full, and gc plus a new backup work afterwards.
#[test]
fn sigint_during_a_large_backup_leaves_a_valid_repository() {
    let world = World::new();
    world.init();
    let first = world.backup();

    let large = world.path("large");
    std::fs::create_dir_all(&large).unwrap();
    for index in 0..75u64 {
        let bytes = pseudo_random(4 * 1024 * 1024, 1000 + index);
        std::fs::write(large.join(format!("file-{index:03}.bin")), bytes).unwrap();
    }

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_backstop"));
    for var in BACKSTOP_VARS {
        child.env_remove(var);
    }
    let mut child = child
        .env("BACKSTOP_REPO", world.repo())
        .env("BACKSTOP_PASSWORD", PASSWORD)
        .env("NO_COLOR", "1")
        .env("XDG_CONFIG_HOME", world.config_home())
        .args(["-vv", "backup"])
        .arg(&large)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Follow stderr on a thread (so the pipe never fills) and wait until the backup says it is
    // storing files.
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = lines_tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match lines_rx.recv_timeout(remaining) {
            Ok(line) => {
                let storing = line.contains("storing `");
                seen.push(line);
                if storing {
                    break;
                }
            }
            Err(err) => {
                let _ = child.kill();
                panic!("no progress from the backup ({err}); stderr so far: {seen:#?}");
            }
        }
    }

    let pid = child.id().to_string();
    let kill = std::process::Command::new("sh")
        .args(["-c", &format!("kill -INT {pid}")])
        .status()
        .unwrap();
    assert!(kill.success());

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("backup did not stop within 60 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    reader.join().unwrap();
    seen.extend(lines_rx.try_iter());
    assert_eq!(
        status.code(),
        Some(130),
        "exit code after SIGINT; stderr: {seen:#?}"
    );
    assert!(
        seen.iter().any(|line| line.contains("interrupted")),
        "{seen:#?}"
    );

    assert_eq!(
        world.list_ids(),
        [first],
        "the interrupted backup is not listed"
    );
    let verify = world.json(&["verify", "--all", "--full"]);
    assert_eq!(verify["problems"], serde_json::json!([]));

    // The next run cleans up and works.
    world.json(&["gc"]);
    world.json(&["verify", "--all", "--full"]);
    let second = world.backup();
    assert!(second > first);
}

/// A tmpfs of a given size, unmounted when dropped, to fill up for real.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    /// `None`, after a loud note, where this process may not mount one (not root, or a
    /// container without the capability): what is tested is our message for the kernel's
    /// ENOSPC, which only a real full filesystem gives.
    fn mount(bytes: u64) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        mount_tmpfs(dir.path(), bytes, "full-disk messages").then_some(Self { dir })
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

/// Mounts a tmpfs of `bytes` on `dir`; false, after a loud note that `untested` goes untested,
/// where this process may not (not root, or a container without the capability).
fn mount_tmpfs(dir: &Path, bytes: u64, untested: &str) -> bool {
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
        .arg(dir)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root); {untested} untested");
    }
    mounted
}

/// A tmpfs mounted on an existing directory, unmounted when dropped.
struct MountedTmpfs(PathBuf);

impl MountedTmpfs {
    /// `None`, after a loud note, where this process may not mount one.
    fn on(dir: &Path) -> Option<Self> {
        mount_tmpfs(dir, 1 << 20, "--one-file-system").then(|| Self(dir.to_path_buf()))
    }
}

impl Drop for MountedTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// `--one-file-system` stores a mount point below the tree as an empty directory, with a
/// warning, and not what is mounted there; without it, the mounted files are backed up too.
/// A plain directory backup of a directory with an SQLite database open in WAL mode (by this
/// test's own connection, which holds the lock every WAL connection holds) warns that the copy
/// is not consistent and names `--source sqlite`: in the summary, on stderr with `-q`, in the
/// JSON result; with pause hooks, which make the copy consistent, it does not.
#[test]
fn a_directory_backup_warns_of_a_database_open_in_it() {
    let world = World::new();
    world.init();
    let db = world.data().join("app.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    let data = world.data();
    let data = data.to_str().unwrap();
    let warning = "holds a running SQLite database";
    world
        .cmd()
        .args(["backup", data])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("warning: `.` {warning}")))
        .stdout(predicate::str::contains("--source sqlite"));
    world
        .cmd()
        .args(["-q", "backup", data])
        .assert()
        .success()
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::contains(format!("warning: `.` {warning}")));
    let json = world.json(&["backup", data]);
    assert!(
        json["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains(warning)),
        "{json}"
    );
    world
        .cmd()
        .args([
            "backup",
            "--pause-command",
            "true",
            "--resume-command",
            "true",
            data,
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains(warning).not());
    drop(conn);
    world
        .cmd()
        .args(["-q", "backup", data])
        .assert()
        .success()
        .stderr(predicate::str::contains(warning).not());
}

#[test]
fn one_file_system_stores_a_mount_point_as_an_empty_directory() {
    let world = World::new();
    world.init();
    let mnt = world.data().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let Some(_mounted) = MountedTmpfs::on(&mnt) else {
        return;
    };
    std::fs::write(mnt.join("elsewhere.txt"), b"on another file system").unwrap();
    let data = world.data();
    let paths = |id: &Value| file_paths(&world.json(&["info", &id.to_string(), "--files"]));
    let staying = world.json(&["backup", "--one-file-system", data.to_str().unwrap()]);
    let stayed = paths(&staying["id"]);
    assert!(stayed.contains(&"mnt".to_owned()), "{stayed:?}");
    assert!(!stayed.iter().any(|p| p.starts_with("mnt/")), "{stayed:?}");
    assert!(stayed.contains(&"blob.bin".to_owned()), "{stayed:?}");
    assert!(
        staying["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("`mnt` is on another file system")),
        "{staying}"
    );
    let crossing = world.json(&["backup", data.to_str().unwrap()]);
    assert!(paths(&crossing["id"]).contains(&"mnt/elsewhere.txt".to_owned()));
    // Only directories have a file system to stay on.
    world
        .cmd()
        .args(["backup", "--source", "sqlite", "-x", "x.db"])
        .assert()
        .code(2);
}

/// `--exclude-caches` keeps a tagged cache directory and its tag, not what else is in it.
#[test]
fn exclude_caches_keeps_only_the_tag_of_a_cache_directory() {
    let world = World::new();
    world.init();
    let cache = world.data().join("build-cache");
    std::fs::create_dir(&cache).unwrap();
    std::fs::write(
        cache.join("CACHEDIR.TAG"),
        "Signature: 8a477f597d28d172789f06886806bc55\n",
    )
    .unwrap();
    std::fs::write(cache.join("object.o"), pseudo_random(50_000, 4)).unwrap();
    let data = world.data();
    let backup = world.json(&["backup", "--exclude-caches", data.to_str().unwrap()]);
    let paths = file_paths(&world.json(&["info", &backup["id"].to_string(), "--files"]));
    assert!(
        paths.contains(&"build-cache/CACHEDIR.TAG".to_owned()),
        "{paths:?}"
    );
    assert!(
        !paths.contains(&"build-cache/object.o".to_owned()),
        "{paths:?}"
    );
    assert!(paths.contains(&"blob.bin".to_owned()), "{paths:?}");
    world
        .cmd()
        .args(["backup", "--source", "sqlite", "--exclude-caches", "x.db"])
        .assert()
        .code(2);
}

/// Running out of space, in a restore target or in the repository, names the path and says
/// what to do; a backup that ran out records nothing and leaves a repository that opens.
#[test]
fn running_out_of_space_says_so_and_what_to_do() {
    let Some(small) = SmallFs::mount(2 << 20) else {
        return;
    };
    let world = World::new();
    world.init();
    std::fs::write(world.data().join("big.bin"), pseudo_random(4 << 20, 3)).unwrap();
    let id = world.backup().to_string();

    let target = small.dir.path().join("restore");
    // Files are written in parallel: whichever meets the full disk first is named (big.bin
    // fills it, but blob.bin, written beside it, may be the one refused).
    world
        .cmd()
        .args(["restore", &id, target.to_str().unwrap()])
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("ran out of space")
                .and(predicate::str::contains("holds a partial restore"))
                .and(predicate::str::contains(format!(
                    "writing `{}/",
                    target.display()
                )))
                .and(predicate::str::contains("No space left on device")),
        );
    std::fs::remove_dir_all(&target).unwrap();

    let repo = small.dir.path().join("repo");
    let data = world.data();
    world
        .cmd()
        .env("BACKSTOP_REPO", &repo)
        .arg("init")
        .assert()
        .success();
    world
        .cmd()
        .env("BACKSTOP_REPO", &repo)
        .args(["backup", data.to_str().unwrap()])
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("ran out of space")
                .and(predicate::str::contains("no backup was recorded"))
                .and(predicate::str::contains("No space left on device")),
        );
    let listed = world.json_with(world.cmd().env("BACKSTOP_REPO", &repo), &["list"]);
    assert_eq!(listed, serde_json::json!([]), "a backup was recorded");
}

/// A backup records its host's UTC offset, and `list` and `info` show its time as that host's
/// clock did; `TZ` is the host's time zone (a POSIX rule here: no time zone database needed).
#[test]
fn a_backup_shows_the_local_time_of_the_host_that_took_it() {
    let world = World::new();
    world.init();
    let data = world.data();
    let json = world.json_with(
        world.cmd().env("TZ", "XYZ-2"),
        &["backup", data.to_str().unwrap()],
    );
    assert_eq!(json["utc_offset_secs"], 7200, "{json}");
    let utc = json["time_unix"].as_i64().unwrap();
    let listed = world.cmd().env("TZ", "UTC").arg("list").output().unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    // Shown as recorded, whatever the zone of the host that lists it.
    let local = std::time::UNIX_EPOCH + Duration::from_secs((utc + 7200) as u64);
    let local = humantime::format_rfc3339_seconds(local).to_string();
    let expected = format!(
        "{} +02:00",
        local.trim_end_matches('Z').replacen('T', " ", 1)
    );
    assert!(listed.contains(&expected), "{expected:?} not in:\n{listed}");
    world
        .cmd()
        .args(["info", "1"])
        .assert()
        .success()
        .stdout(predicate::str::contains(expected));
}
