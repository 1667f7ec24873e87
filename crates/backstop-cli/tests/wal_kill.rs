//! A `wal-push` killed at any moment (PostgreSQL retries a failed `archive_command`) loses
//! nothing: the segment is either archived whole or not at all, and the retry succeeds with the
//! same bytes. The kills are spread over the duration of a push; the timing only picks where
//! the process dies, and every outcome is checked.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt as _;

fn backstop(repo: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::cargo_bin("backstop").unwrap();
    cmd.env("BACKSTOP_REPO", repo)
        .env("BACKSTOP_PASSWORD", "pw")
        .env("BACKSTOP_TEST_FAST_KDF", "1")
        .env_remove("BACKSTOP_CONFIG");
    cmd
}

#[test]
fn a_killed_wal_push_loses_nothing_and_the_retry_archives_the_segment() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    assert!(backstop(&repo).arg("init").status().unwrap().success());
    let mut x = 7u64;
    let segment: Vec<u8> = (0..16 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();

    // How long a whole push takes, to spread the kills over it.
    let path = work.path().join("000000010000000000000001");
    std::fs::write(&path, &segment).unwrap();
    let started = Instant::now();
    assert!(
        backstop(&repo)
            .arg("wal-push")
            .arg(&path)
            .status()
            .unwrap()
            .success()
    );
    let full = started.elapsed();

    for i in 0..12u32 {
        let name = format!("0000000100000000000000{:02X}", i + 2);
        let path = work.path().join(&name);
        std::fs::write(&path, &segment).unwrap();
        let mut child = backstop(&repo).arg("wal-push").arg(&path).spawn().unwrap();
        let kill_after = full.mul_f64(f64::from(i) / 12.0);
        let deadline = Instant::now() + kill_after;
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = child.kill();
        let _ = child.wait();
        // The archive holds the whole segment or nothing: fetching gives the bytes or "missing".
        let dest = work.path().join(format!("fetched-{i}"));
        let fetched = backstop(&repo)
            .arg("wal-fetch")
            .arg(&name)
            .arg(&dest)
            .output()
            .unwrap();
        if fetched.status.success() {
            assert_eq!(
                std::fs::read(&dest).unwrap(),
                segment,
                "kill {i}: a partial segment"
            );
        } else {
            assert_eq!(
                fetched.status.code(),
                Some(1),
                "kill {i}: {}",
                String::from_utf8_lossy(&fetched.stderr)
            );
            assert!(
                !dest.exists(),
                "kill {i}: wal-fetch left a file for a missing segment"
            );
        }
        // PostgreSQL retries: the retry succeeds, whatever the kill left.
        let retry = backstop(&repo).arg("wal-push").arg(&path).output().unwrap();
        assert!(
            retry.status.success(),
            "kill {i}: retry failed: {}",
            String::from_utf8_lossy(&retry.stderr)
        );
        let dest = work.path().join(format!("refetched-{i}"));
        assert!(
            backstop(&repo)
                .arg("wal-fetch")
                .arg(&name)
                .arg(&dest)
                .status()
                .unwrap()
                .success()
        );
        assert_eq!(std::fs::read(&dest).unwrap(), segment);
    }
}
