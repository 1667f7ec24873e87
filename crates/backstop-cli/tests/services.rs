//! The `backstop` binary on a real WebDAV server (`rclone serve webdav`, started here on a
//! loopback port with basic authentication), on a real SSH server (OpenSSH's `sshd`, with a
//! temporary host key and user key) and on a Google Cloud Storage emulator
//! (`gcp-storage-emulator`, found through `STORAGE_EMULATOR_HOST`): init, an encrypted backup,
//! `verify --full` and a restore that matches the source byte for byte, the stored objects
//! holding no plaintext; plus the clear error for the service this version does not support
//! (HDFS).
//!
//! Needs the `webdav`, `sftp` and `gcs` features (default ones). Without `rclone`, `sshd` or
//! `gcp-storage-emulator` on the PATH the server tests fail under `CI=true` and skip loudly
//! otherwise (`scripts/install/store.sh` installs them).

#![allow(clippy::unwrap_used, reason = "tests")]

use std::path::Path;
use std::process::{Command, Output, Stdio};

#[path = "support/files.rs"]
mod files;
use files::{files_under, pseudo_random, tree};
#[path = "../../backstop-store/tests/support/services.rs"]
mod services;
use services::{GCS_BUCKET, Service, ServiceServer, WEBDAV_PASSWORD, WEBDAV_USER};
#[path = "../../backstop-store/tests/support/sshd.rs"]
mod sshd;
use sshd::SshServer;

const PASSWORD: &str = "correct horse battery staple";

/// The binary with this repository URL, password and WebDAV credentials, and nothing of the
/// host's configuration.
fn backstop(scratch: &Path, url: &str, args: &[&str]) -> Output {
    backstop_with(scratch, url, args, &[])
}

/// [`backstop`] with more environment variables.
fn backstop_with(
    scratch: &Path,
    url: &str,
    args: &[&str],
    env: &[(&str, std::ffi::OsString)],
) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_backstop"))
        .args(args)
        .envs(env.iter().map(|(name, value)| (name, value)))
        .env("BACKSTOP_REPO", url)
        .env("BACKSTOP_PASSWORD", PASSWORD)
        .env("BACKSTOP_TEST_FAST_KDF", "1")
        .env("WEBDAV_USERNAME", WEBDAV_USER)
        .env("WEBDAV_PASSWORD", WEBDAV_PASSWORD)
        .env("XDG_CONFIG_HOME", scratch.join("config-home"))
        .env("XDG_CACHE_HOME", scratch.join("cache-home"))
        .env("NO_COLOR", "1")
        .current_dir(scratch)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "`backstop {}` failed: {}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The tree the round trips back up: text carrying `marker` (so a plaintext leak to the server
/// shows), an empty file, 3 MiB of pseudo-random bytes (`seed`) and 20 small files.
fn write_marked_tree(data: &Path, marker: &str, seed: u64) {
    std::fs::create_dir_all(data.join("sub/deeper")).unwrap();
    std::fs::write(data.join("hello.txt"), format!("{marker}\n").repeat(100)).unwrap();
    std::fs::write(data.join("sub/deeper/empty"), b"").unwrap();
    std::fs::write(data.join("sub/random.bin"), pseudo_random(3 << 20, seed)).unwrap();
    for i in 0..20 {
        std::fs::write(
            data.join(format!("sub/small-{i}.txt")),
            format!("{marker} {i}"),
        )
        .unwrap();
    }
}

#[test]
fn encrypted_round_trip_on_webdav() {
    let Some(server) = ServiceServer::start(Service::RcloneWebDav) else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let marker = "PLAINTEXT-MARKER-webdav-51c2";
    write_marked_tree(&data, marker, 7);
    // No credentials in the URL: the CLI reads WEBDAV_USERNAME / WEBDAV_PASSWORD.
    let url = server.url("backups", "repo");

    let init: serde_json::Value =
        serde_json::from_slice(&backstop(scratch.path(), &url, &["--json", "init"]).stdout)
            .unwrap();
    assert_eq!(init["result"]["encrypted"], true, "{init}");
    let backup: serde_json::Value = serde_json::from_slice(
        &backstop(
            scratch.path(),
            &url,
            &["--json", "backup", data.to_str().unwrap()],
        )
        .stdout,
    )
    .unwrap();
    let id = backup["result"]["id"].as_u64().unwrap().to_string();
    backstop(scratch.path(), &url, &["verify", "--full"]);
    let target = scratch.path().join("restored");
    backstop(
        scratch.path(),
        &url,
        &["restore", &id, target.to_str().unwrap()],
    );
    assert!(tree(&target) == tree(&data), "the restore differs");

    // What reached the server's directory is ciphertext. rclone moves uploads from its cache
    // into the directory just after they finish, so wait until every listed object is there.
    let store = backstop_store::open_url(&server.url_with_user("backups", "repo")).unwrap();
    let objects = store.list("").unwrap().len();
    assert!(objects > 3, "objects on the server: {objects}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let stored = loop {
        let stored = files_under(&server.data_dir().join("backups/repo"));
        if stored.len() >= objects {
            break stored;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {objects} objects reached the directory",
            stored.len()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    for path in stored {
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "{} holds the plaintext marker",
            path.display()
        );
    }
}

#[test]
fn encrypted_round_trip_on_sftp() {
    let Some(server) = SshServer::start() else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let marker = "PLAINTEXT-MARKER-sftp-7e3a";
    write_marked_tree(&data, marker, 11);
    // ssh checks the host key against the user's ~/.ssh/known_hosts. A wrapper first on the
    // PATH points the real ssh at a file that vouches for the test server instead, so the
    // default strict check is what runs, and the user's own file is left alone.
    let known_hosts = scratch.path().join("known_hosts");
    std::fs::write(&known_hosts, server.known_hosts_line()).unwrap();
    let bin = scratch.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let ssh = sshd::find("ssh").unwrap();
    std::fs::write(
        bin.join("ssh"),
        format!(
            "#!/bin/sh\nexec '{}' -o 'UserKnownHostsFile={}' \"$@\"\n",
            ssh.display(),
            known_hosts.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        bin.join("ssh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut path = std::ffi::OsString::from(&bin);
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    // No key in the URL: the CLI reads BACKSTOP_SFTP_KEY.
    let env = [
        ("PATH", path),
        ("BACKSTOP_SFTP_KEY", server.user_key().into_os_string()),
    ];
    let url = server.url("backups/repo");
    let run = |args: &[&str]| backstop_with(scratch.path(), &url, args, &env);

    let init: serde_json::Value = serde_json::from_slice(&run(&["--json", "init"]).stdout).unwrap();
    assert_eq!(init["result"]["encrypted"], true, "{init}");
    let backup: serde_json::Value =
        serde_json::from_slice(&run(&["--json", "backup", data.to_str().unwrap()]).stdout).unwrap();
    let id = backup["result"]["id"].as_u64().unwrap().to_string();
    run(&["verify", "--full"]);
    let target = scratch.path().join("restored");
    run(&["restore", &id, target.to_str().unwrap()]);
    assert!(tree(&target) == tree(&data), "the restore differs");

    // The repository is plain files on the server: ciphertext only, no temp file left over.
    let stored = files_under(&server.data_dir().join("backups/repo"));
    assert!(stored.len() > 3, "files on the server: {stored:?}");
    for path in stored {
        assert!(
            !path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tmp-"),
            "{} is a temp file left by a put",
            path.display()
        );
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "{} holds the plaintext marker",
            path.display()
        );
    }

    // Every command closed its ssh connections when it ended (the ssh control processes
    // would otherwise live on, one set per command run from cron). They close asynchronously
    // after the command exits, so poll the server's sessions for a while.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while server.open_connections() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        server.open_connections(),
        0,
        "ssh connections outlived the commands that opened them"
    );
}

#[test]
fn encrypted_round_trip_on_gcs_emulator() {
    let Some(server) = ServiceServer::start(Service::GcsEmulator) else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let marker = "PLAINTEXT-MARKER-gcs-3d9b";
    write_marked_tree(&data, marker, 13);
    // The URL names only the bucket and prefix, as for GCS itself: the emulator is found
    // through the variable Google's libraries read, which also turns authentication off.
    let url = format!("gs://{GCS_BUCKET}/backups/repo");
    let env = [(
        "STORAGE_EMULATOR_HOST",
        std::ffi::OsString::from(server.addr().to_string()),
    )];
    let run = |args: &[&str]| backstop_with(scratch.path(), &url, args, &env);

    let started = std::time::Instant::now();
    let init: serde_json::Value = serde_json::from_slice(&run(&["--json", "init"]).stdout).unwrap();
    assert_eq!(init["result"]["encrypted"], true, "{init}");
    let backup: serde_json::Value =
        serde_json::from_slice(&run(&["--json", "backup", data.to_str().unwrap()]).stdout).unwrap();
    let id = backup["result"]["id"].as_u64().unwrap().to_string();
    run(&["verify", "--full"]);
    let target = scratch.path().join("restored");
    run(&["restore", &id, target.to_str().unwrap()]);
    assert!(tree(&target) == tree(&data), "the restore differs");
    eprintln!(
        "GCS emulator: init, backup, verify and restore took {:?}",
        started.elapsed()
    );

    // What reached the emulator is ciphertext.
    let store = backstop_store::open_url(&server.url(GCS_BUCKET, "backups/repo")).unwrap();
    let objects = store.list("").unwrap();
    assert!(objects.len() > 3, "objects on the server: {objects:?}");
    for object in objects {
        let bytes = store.get(&object.key).unwrap();
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "{} holds the plaintext marker",
            object.key
        );
    }
}

#[test]
fn hdfs_urls_say_what_to_use_instead() {
    let scratch = tempfile::tempdir().unwrap();
    for url in [
        "hdfs://namenode:8020/backups",
        "webhdfs://namenode:9870/backups",
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_backstop"))
            .args(["list"])
            .env("BACKSTOP_REPO", url)
            .env("BACKSTOP_PASSWORD", PASSWORD)
            .env("XDG_CONFIG_HOME", scratch.path().join("config-home"))
            .env("XDG_CACHE_HOME", scratch.path().join("cache-home"))
            .env("NO_COLOR", "1")
            .current_dir(scratch.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("not supported in this version"), "{stderr}");
        assert!(stderr.contains("alternatives"), "{stderr}");
    }
}
