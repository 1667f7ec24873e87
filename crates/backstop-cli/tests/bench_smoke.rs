//! Runs the benchmark harness (bench/run.py) in smoke mode against the `backstop` binary built
//! for the tests, so the harness cannot rot: every step of every installed tool must run, every
//! restore must come back byte for byte, deleting the full backup must give space back, and the
//! report and chart must be written. Measures nothing: timings of a few MiB under a parallel
//! test run mean nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Fails under CI=true, otherwise skips loudly: the tool is installed by scripts/install/.
fn missing(what: &str) {
    assert!(
        !in_ci(),
        "{what} is missing under CI=true: run scripts/install-test-deps.sh"
    );
    eprintln!("SKIPPED: {what} missing, run scripts/install-test-deps.sh");
}

fn have(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The path of a script in bench/, or None (having skipped loudly) without python3.
fn bench_script(name: &str) -> Option<PathBuf> {
    if !have("python3", "--version") {
        missing("python3");
        return None;
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../bench")
        .join(name);
    assert!(path.is_file(), "no {name} at {}", path.display());
    Some(path)
}

#[test]
fn bench_harness_smoke_mode_runs_every_tool_and_verifies_every_restore() {
    let Some(harness) = bench_script("run.py") else {
        return;
    };
    let out = tempfile::tempdir().expect("temporary directory");

    let mut cmd = Command::new("python3");
    cmd.arg(&harness)
        .arg("--smoke")
        .arg("--backstop")
        .arg(env!("CARGO_BIN_EXE_backstop"))
        .arg("--out")
        .arg(out.path());
    if in_ci() {
        // Every peer and database that scripts/install/ provides must take part.
        cmd.arg("--strict");
    }
    let run = cmd.output().expect("running bench/run.py");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "bench/run.py --smoke failed ({}):\n{stderr}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stdout)
    );

    let report_path = out.path().join("report.json");
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(&report_path).expect("report.json was written"),
    )
    .expect("report.json is JSON");
    let failures = report["failures"].as_array().expect("failures list");
    assert!(failures.is_empty(), "harness failures: {failures:?}");

    let results = report["results"].as_array().expect("results list");
    let row = |tool: &str, step: &str| {
        results
            .iter()
            .find(|r| r["tool"] == tool && r["step"] == step)
            .cloned()
    };
    let mut tools = vec!["backstop", "tar+zstd", "cp-a"];
    for peer in ["restic", "borg"] {
        if have(peer, "--help") {
            tools.push(peer);
        } else {
            missing(peer);
        }
    }
    for tool in &tools {
        for step in ["full", "incremental", "restore", "restore-nosync"] {
            let r = row(tool, step).unwrap_or_else(|| panic!("no {step} row for {tool}"));
            assert!(
                r["wall_s"].as_f64().is_some_and(|w| w > 0.0),
                "{tool} {step}: no wall time in {r}"
            );
            if step.starts_with("restore") {
                assert_eq!(r["verified"], true, "{tool} {step}: restore differs: {r}");
            } else {
                assert!(
                    r["bytes_added"].as_u64().is_some_and(|b| b > 0),
                    "{tool} {step}: nothing added to the repository: {r}"
                );
            }
        }
        // Backstop restores over a copy of version 1 (`--delta`) and gets version 2.
        if *tool == "backstop" {
            let r = row(tool, "over").expect("no over row for backstop");
            assert_eq!(r["verified"], true, "backstop over: restore differs: {r}");
        }
        // Backstop and restic copy both backups into a second repository made from the first.
        if ["backstop", "restic"].contains(tool) {
            let r = row(tool, "copy").unwrap_or_else(|| panic!("no copy row for {tool}"));
            assert_eq!(r["copied_backups"], 2, "{tool} copy: {r}");
            assert!(
                r["repo_bytes"].as_u64().is_some_and(|b| b > 0),
                "{tool} copy: an empty copy: {r}"
            );
        }
        // Every tool but `cp -a` reads its repository back and checks it, changing nothing.
        if *tool != "cp-a" {
            let r = row(tool, "check").unwrap_or_else(|| panic!("no check row for {tool}"));
            assert!(
                r["wall_s"].as_f64().is_some_and(|w| w > 0.0),
                "{tool} check: no wall time in {r}"
            );
            assert_eq!(
                r["bytes_added"], 0,
                "{tool} check changed its repository: {r}"
            );
        }
        // Deleting the full backup gives space back (tar's incremental needs its full).
        if *tool != "tar+zstd" {
            let r = row(tool, "prune").unwrap_or_else(|| panic!("no prune row for {tool}"));
            assert!(
                r["bytes_added"].as_i64().is_some_and(|b| b < 0),
                "{tool} prune: no space given back: {r}"
            );
        }
    }

    let parts = report["meta"]["parts_v1"]
        .as_object()
        .expect("data set parts");
    for part in ["pg", "sqlite", "rocksdb", "files"] {
        if !parts.contains_key(part) {
            missing(&format!("the {part} part of the data set (see the notes)"));
        }
    }
    let lower = &report["lower_bound"]["total"];
    assert!(
        lower["pages4k"].as_u64().is_some_and(|b| b > 0),
        "the workload changed no page: {lower}"
    );

    let markdown = std::fs::read_to_string(out.path().join("report.md")).expect("report.md");
    assert!(markdown.contains("| backstop | full |"), "{markdown}");
    assert!(
        markdown.contains("## Reading back every byte"),
        "{markdown}"
    );
    // What else the machine did while the tools ran, from /proc/stat (this test runs on Linux).
    let busy = &report["meta"]["interference"];
    let timed_runs: usize = results
        .iter()
        .map(|r| r["wall_runs"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(
        busy["runs"]
            .as_u64()
            .is_some_and(|n| n as usize == timed_runs),
        "interference measured for other than every timed run ({timed_runs}): {busy}"
    );
    for key in ["other_cpu_s", "steal_s"] {
        assert!(
            busy[key].as_f64().is_some_and(|s| s >= 0.0),
            "no {key} in {busy}"
        );
    }
    assert!(
        markdown.contains("CPU-seconds outside the measured tools"),
        "the report does not say what else the machine did: {markdown}"
    );
    // Smoke mode never drops caches, so it never prefaults, and the report says only what ran.
    let prefaults = &report["meta"]["prefaults"];
    assert!(
        prefaults["steps"].as_u64() == Some(0) && prefaults["native"].as_u64() == Some(0),
        "smoke mode prefaulted, or did not record it: {prefaults}"
    );
    assert!(
        !markdown.contains("touches and frees"),
        "the report describes a prefault that did not run: {markdown}"
    );
    let png = out.path().join("chart.png");
    if in_ci() {
        // scripts/install/bench.sh installs matplotlib, so the PNG path cannot rot unseen.
        let bytes = std::fs::read(&png).expect("chart.png written under CI");
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "chart.png is not a PNG"
        );
    } else {
        assert!(
            png.is_file() || out.path().join("chart.svg").is_file(),
            "no chart written"
        );
    }
    for note in report["notes"].as_array().into_iter().flatten() {
        eprintln!("bench note: {note}");
    }
}

/// bench/ab.py, the A/B script the notes' measurements come from, runs both builds the asked
/// number of times and the commands really run: the backups make a repository whose restore,
/// run through the script too, gives the data back.
#[test]
fn ab_script_runs_both_builds_alternately_and_their_commands_take_effect() {
    let Some(script) = bench_script("ab.py") else {
        return;
    };
    let work = tempfile::tempdir().expect("temporary directory");
    let data = work.path().join("data");
    std::fs::create_dir(&data).expect("data directory");
    let content: Vec<u8> = (0u32..50_000).flat_map(|i| i.to_le_bytes()).collect();
    std::fs::write(data.join("numbers"), &content).expect("data file");
    let repo = work.path().join("repo");
    let target = work.path().join("target");
    let bin = env!("CARGO_BIN_EXE_backstop");

    let ab = |extra: &[&str], command: &[&str]| {
        let run = Command::new("python3")
            .arg(&script)
            .args(["--a", bin, "--b", bin, "--no-drop", "--no-prefault"])
            .arg("--repo")
            .arg(&repo)
            .args(extra)
            .arg("--")
            .args(command)
            .env("BACKSTOP_PASSWORD", "ab-test")
            .output()
            .expect("running bench/ab.py");
        let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
        assert!(
            run.status.success(),
            "bench/ab.py failed ({}):\n{}\n{stdout}",
            run.status,
            String::from_utf8_lossy(&run.stderr)
        );
        stdout
    };

    let data_arg = data.to_str().expect("UTF-8 path");
    let out = ab(
        &["--fresh", "--warm", data_arg, "-n", "2"],
        &["backup", data_arg],
    );
    let order: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("round "))
        .map(|l| l.split(':').next().unwrap_or_default())
        .collect();
    assert_eq!(
        order,
        ["round 1 A", "round 1 B", "round 2 B", "round 2 A"],
        "{out}"
    );
    for line in ["A: wall mean", "B: wall mean", "B/A wall: "] {
        assert!(out.contains(line), "no `{line}` in:\n{out}");
    }

    let target_arg = target.to_str().expect("UTF-8 path");
    let out = ab(
        &["--clean", target_arg, "--sync", "-n", "1"],
        &["restore", "latest", target_arg],
    );
    assert_eq!(out.lines().filter(|l| l.starts_with("round ")).count(), 2);
    let restored = std::fs::read(target.join("numbers")).expect("the restore through ab.py");
    assert_eq!(restored, content);
}
