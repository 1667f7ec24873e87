//! The `backstop` binary on a real S3-protocol server (`s3s-fs`, started here on a loopback
//! port; it checks signatures, keeps objects as files and survives a restart): an encrypted
//! round trip byte for byte, two backup processes and a `gc` process at once for ten rounds,
//! the request budget of an unchanged incremental backup, the server killed in the middle of a
//! backup, a gc that rewrites a partly used pack, and an offsite copy of a local repository.
//! Plus, without any server, the engine's metadata cache: a second open reads no index or
//! snapshot object from the store.
//!
//! The S3 tests need the `s3` feature (`cargo test -p backstop-cli --features s3 --test s3`);
//! without `s3s-fs` on the PATH they fail under `CI=true` and skip loudly otherwise
//! (`scripts/install/store.sh` installs it).

#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test on any unexpected error"
)]

#[path = "support/files.rs"]
mod files;
use files::{Tree, pseudo_random, tree};

/// The engine's metadata cache, wired by hand (`CachingStore` over a request counter), so this
/// runs whether or not `EngineOptions::cache_dir` is wired yet.
mod metadata_cache {
    use std::sync::{Arc, Mutex};

    use backstop::store::{CachingStore, ObjectMeta};
    use backstop::{
        BackupEngine, DirSource, EngineOptions, InitOptions, LocalStore, PutMode, ReadOnlyEngine,
        RestoreOptions, Store, StoreError,
    };

    /// Records the key of every get that reaches the store below the cache.
    #[derive(Clone, Debug)]
    struct GetLog {
        inner: LocalStore,
        gets: Arc<Mutex<Vec<String>>>,
    }

    impl GetLog {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.gets.lock().unwrap())
        }
    }

    impl Store for GetLog {
        fn put(&self, key: &str, bytes: &[u8], mode: PutMode) -> Result<(), StoreError> {
            self.inner.put(key, bytes, mode)
        }
        fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
            self.gets.lock().unwrap().push(key.to_owned());
            self.inner.get(key)
        }
        fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>, StoreError> {
            self.gets.lock().unwrap().push(key.to_owned());
            self.inner.get_range(key, range)
        }
        fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
            self.inner.list(prefix)
        }
        fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
            self.inner.head(key)
        }
        fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.inner.delete(key)
        }
        fn describe(&self) -> String {
            self.inner.describe()
        }
    }

    fn metadata(keys: &[String]) -> Vec<&String> {
        keys.iter()
            .filter(|k| k.starts_with("index/") || k.starts_with("snapshots/"))
            .collect()
    }

    #[test]
    fn a_second_open_reads_no_index_or_snapshot_object() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::write(data.join("a.bin"), super::pseudo_random(200_000, 1)).unwrap();
        std::fs::write(data.join("sub/b.txt"), b"bee").unwrap();
        let log = GetLog {
            inner: LocalStore::new(dir.path().join("repo")),
            gets: Arc::default(),
        };
        let cache_dir = dir.path().join("cache");
        let options = || EngineOptions::default().with_password("pw");
        let init = InitOptions::default()
            .with_password("pw")
            .with_kdf(8 * 1024, 1);

        let engine =
            BackupEngine::init(CachingStore::new(log.clone(), &cache_dir), init, options())
                .unwrap();
        for _ in 0..3 {
            engine
                .create_backup(&mut DirSource::new(&data), &Default::default())
                .unwrap();
            std::fs::write(data.join("sub/b.txt"), super::pseudo_random(1000, 2)).unwrap();
        }
        drop(engine);
        log.take();

        // A second process: the cache directory is all it shares with the first.
        let engine =
            ReadOnlyEngine::open(CachingStore::new(log.clone(), &cache_dir), options()).unwrap();
        assert_eq!(engine.list_backups().unwrap().len(), 3);
        let gets = log.take();
        assert_eq!(metadata(&gets), Vec::<&String>::new(), "gets: {gets:?}");
        assert!(
            gets.contains(&"config".to_owned()),
            "the config is always read"
        );

        // The cache is not the truth: a backup deleted by another process disappears.
        let other = BackupEngine::open(log.clone(), options()).unwrap();
        other.delete_backup(1).unwrap();
        drop(other);
        log.take();
        let ids: Vec<u64> = engine
            .list_backups()
            .unwrap()
            .iter()
            .map(|b| b.id)
            .collect();
        assert_eq!(ids, vec![2, 3]);
        assert!(metadata(&log.take()).is_empty());
        let target = dir.path().join("restore");
        engine
            .restore(3, &target, &RestoreOptions::default())
            .unwrap();
        assert_eq!(
            std::fs::read(target.join("sub/b.txt")).unwrap(),
            std::fs::read(data.join("sub/b.txt")).unwrap()
        );
    }

    /// The same through `EngineOptions::cache_dir`, once the engine wraps its store with it.
    #[test]
    fn engine_options_cache_dir_caches_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("a"), b"a").unwrap();
        let log = GetLog {
            inner: LocalStore::new(dir.path().join("repo")),
            gets: Arc::default(),
        };
        let options = EngineOptions::default().with_cache_dir(dir.path().join("cache"));
        let engine =
            BackupEngine::init(log.clone(), InitOptions::default(), options.clone()).unwrap();
        engine
            .create_backup(&mut DirSource::new(&data), &Default::default())
            .unwrap();
        drop(engine);
        log.take();
        let engine = ReadOnlyEngine::open(log.clone(), options).unwrap();
        engine.list_backups().unwrap();
        let gets = log.take();
        assert!(metadata(&gets).is_empty(), "gets: {gets:?}");
    }
}

/// The backup-id race of docs/object-storage.md ("Two backups, one id"), made deterministic
/// with a store that holds one backup's snapshot put until the other backup has committed.
mod backup_id_race {
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::{Duration, Instant};

    use backstop::store::ObjectMeta;
    use backstop::{
        BackupEngine, BackupOptions, DirSource, EngineOptions, InitOptions, MemoryStore, PutMode,
        Store, StoreError,
    };

    #[derive(Debug, Default)]
    struct Gate {
        /// (a put is waiting, the gate is open)
        state: Mutex<(bool, bool)>,
        changed: Condvar,
    }

    /// Holds puts of `snapshots/` until the gate opens.
    #[derive(Clone, Debug)]
    struct Gated {
        inner: MemoryStore,
        gate: Arc<Gate>,
    }

    impl Store for Gated {
        fn put(&self, key: &str, bytes: &[u8], mode: PutMode) -> Result<(), StoreError> {
            if key.starts_with("snapshots/") {
                let mut state = self.gate.state.lock().unwrap();
                state.0 = true;
                self.gate.changed.notify_all();
                while !state.1 {
                    state = self.gate.changed.wait(state).unwrap();
                }
            }
            self.inner.put(key, bytes, mode)
        }
        fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
            self.inner.get(key)
        }
        fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>, StoreError> {
            self.inner.get_range(key, range)
        }
        fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
            self.inner.list(prefix)
        }
        fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
            self.inner.head(key)
        }
        fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.inner.delete(key)
        }
        fn describe(&self) -> String {
            self.inner.describe()
        }
    }

    /// B lists the snapshots and picks id N, then waits; A picks N too, writes, lists (sees
    /// only itself) and keeps N; then B writes and lists (sees both). When B's key sorts
    /// first, the current rule ("the larger key moves") lets B keep N as well.
    #[test]
    fn two_backups_never_report_the_same_id() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a", "b"] {
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("file"), name).unwrap();
        }
        // B's random suffix decides whether it sorts first: try until it does (p = 1/2 each).
        for attempt in 0..40 {
            let store = MemoryStore::new();
            BackupEngine::init(
                store.clone(),
                InitOptions::default(),
                EngineOptions::default(),
            )
            .unwrap();
            let gate = Arc::new(Gate::default());
            let a = BackupEngine::open(store.clone(), EngineOptions::default()).unwrap();
            let b = BackupEngine::open(
                Gated {
                    inner: store.clone(),
                    gate: gate.clone(),
                },
                EngineOptions::default(),
            )
            .unwrap();
            let (id_a, id_b) = std::thread::scope(|s| {
                let b_thread = s.spawn(|| {
                    b.create_backup(
                        &mut DirSource::new(dir.path().join("b")),
                        &BackupOptions::default(),
                    )
                    .unwrap()
                    .id
                });
                let deadline = Instant::now() + Duration::from_secs(30);
                while !gate.state.lock().unwrap().0 {
                    assert!(
                        Instant::now() < deadline,
                        "B never reached its snapshot put"
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
                let id_a = a
                    .create_backup(
                        &mut DirSource::new(dir.path().join("a")),
                        &BackupOptions::default(),
                    )
                    .unwrap()
                    .id;
                gate.state.lock().unwrap().1 = true;
                gate.changed.notify_all();
                (id_a, b_thread.join().unwrap())
            });
            let snapshots: Vec<String> = store
                .keys()
                .into_iter()
                .filter(|k| k.starts_with("snapshots/"))
                .collect();
            assert_ne!(
                id_a, id_b,
                "attempt {attempt}: both backups reported id {id_a}; snapshots: {snapshots:?}"
            );
        }
    }
}

/// The test server harness, shared with the store crate's tests.
#[cfg(feature = "s3")]
#[path = "../../backstop-store/tests/support/s3_server.rs"]
mod s3_server;

#[cfg(feature = "s3")]
mod s3 {
    use std::collections::{BTreeMap, HashSet};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Output, Stdio};
    use std::time::{Duration, Instant};

    use serde_json::Value;

    use super::{Tree, pseudo_random, tree};

    use super::s3_server::{ACCESS_KEY, Kind, S3Server, SECRET_KEY};

    const PASSWORD: &str = "correct horse battery staple";
    const BUCKET: &str = "backups";

    /// Variables that would change what the binary does; cleared so the host's cannot leak in.
    const CLEARED: &[&str] = &[
        "BACKSTOP_REPO",
        "BACKSTOP_PASSWORD",
        "BACKSTOP_PASSWORD_FILE",
        "BACKSTOP_PASSWORD_COMMAND",
        "BACKSTOP_CONFIG",
        "BACKSTOP_COMPRESSION",
        "BACKSTOP_THREADS",
        "RUST_LOG",
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT",
    ];

    /// One test's world: a server, a repository URL on it and a scratch directory.
    struct World {
        server: S3Server,
        dir: tempfile::TempDir,
        url: String,
    }

    impl World {
        fn new(prefix: &str) -> Option<Self> {
            let server = S3Server::start(Kind::S3sFs)?;
            server.create_bucket(BUCKET);
            let url = server.url(BUCKET, prefix);
            Some(Self {
                server,
                dir: tempfile::tempdir().unwrap(),
                url,
            })
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// The binary with a clean environment, this world's repository URL, password and
        /// credentials.
        fn cmd_for(&self, url: &str) -> Command {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_backstop"));
            for var in CLEARED {
                cmd.env_remove(var);
            }
            cmd.env("BACKSTOP_REPO", url)
                .env("BACKSTOP_PASSWORD", PASSWORD)
                .env("BACKSTOP_TEST_FAST_KDF", "1")
                .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
                // No profile files of the host.
                .env("AWS_CONFIG_FILE", self.path("no-aws-config"))
                .env(
                    "AWS_SHARED_CREDENTIALS_FILE",
                    self.path("no-aws-credentials"),
                )
                .env("XDG_CONFIG_HOME", self.path("config-home"))
                .env("XDG_CACHE_HOME", self.path("cache-home"))
                .env("NO_COLOR", "1")
                .current_dir(self.dir.path())
                .stdin(Stdio::null());
            cmd
        }

        fn cmd(&self) -> Command {
            self.cmd_for(&self.url)
        }

        /// Runs `args` to completion (with a deadline) and returns its output.
        fn run(&self, args: &[&str]) -> Output {
            let child = self
                .cmd()
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            wait_output(child, Duration::from_secs(300), args)
        }

        /// Runs `args` with `--json`, requires success, and returns the whole envelope.
        fn json(&self, args: &[&str]) -> Value {
            let mut all = vec!["--json"];
            all.extend_from_slice(args);
            let output = self.run(&all);
            assert!(
                output.status.success(),
                "`backstop {}` failed: {}\n{}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
            parse_envelope(&output)
        }

        fn backup(&self, data: &Path) -> u64 {
            let envelope = self.json(&["backup", data.to_str().unwrap()]);
            envelope["result"]["id"].as_u64().unwrap()
        }

        fn restore_and_compare(&self, id: u64, expected: &Tree) {
            let target = self.path(&format!("restore-{id}-{}", rand_suffix()));
            let output = self.run(&["restore", &id.to_string(), target.to_str().unwrap()]);
            assert!(
                output.status.success(),
                "restore of backup {id} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let restored = tree(&target);
            assert!(
                restored == *expected,
                "backup {id} restored different files: {:?} vs {:?}",
                restored.keys().collect::<Vec<_>>(),
                expected.keys().collect::<Vec<_>>()
            );
            std::fs::remove_dir_all(&target).unwrap();
        }

        fn verify_full(&self) {
            let output = self.run(&["verify", "--full"]);
            assert!(
                output.status.success(),
                "verify --full failed: {}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    fn rand_suffix() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
            .into()
    }

    fn parse_envelope(output: &Output) -> Value {
        serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
            panic!(
                "stdout is not JSON ({err}): {}\nstderr: {}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        })
    }

    /// Waits for a child with a deadline (a hung process fails the test instead of hanging it).
    fn wait_output(mut child: Child, limit: Duration, what: &[&str]) -> Output {
        let deadline = Instant::now() + limit;
        loop {
            if child.try_wait().unwrap().is_some() {
                return child.wait_with_output().unwrap();
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let output = child.wait_with_output().unwrap();
                panic!(
                    "`backstop {}` did not finish within {limit:?}:\n{}",
                    what.join(" "),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A tree with text, an empty file, nested directories and incompressible data, with a
    /// marker string in it that must not appear in the stored objects (encryption).
    fn write_tree(root: &Path, marker: &str) {
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        std::fs::write(root.join("hello.txt"), format!("{marker}\n").repeat(100)).unwrap();
        std::fs::write(root.join("sub/deeper/empty"), b"").unwrap();
        std::fs::write(root.join("sub/random.bin"), pseudo_random(3 << 20, 11)).unwrap();
        for i in 0..50 {
            std::fs::write(
                root.join(format!("sub/small-{i}.txt")),
                format!("{marker} {i}"),
            )
            .unwrap();
        }
    }

    #[test]
    fn encrypted_backup_verify_restore_round_trip() {
        let Some(world) = World::new("round-trip") else {
            return;
        };
        let data = world.path("data");
        let marker = "PLAINTEXT-MARKER-7f3a9c";
        write_tree(&data, marker);
        let init = world.json(&["init"]);
        assert_eq!(init["result"]["encrypted"], true, "{init}");
        let id = world.backup(&data);
        world.verify_full();
        world.restore_and_compare(id, &tree(&data));

        // What the server stores is ciphertext: the marker is nowhere in it.
        let stored = super::files::files_under(&world.server.data_dir());
        assert!(stored.len() > 3, "objects on the server: {stored:?}");
        for path in stored {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "{} holds the plaintext marker",
                path.display()
            );
        }
        // A wrong password is refused with the documented exit code.
        let output = world
            .cmd()
            .env("BACKSTOP_PASSWORD", "wrong")
            .arg("list")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(5), "{output:?}");
    }

    /// An offsite copy on S3 of a local repository: `init --from-repo` and `copy --from-repo`
    /// into the bucket, then the copy verifies fully and restores byte for byte from there;
    /// the same copy again uploads nothing but its lock.
    #[test]
    fn a_local_repository_is_copied_to_s3_and_restores_from_there() {
        let Some(world) = World::new("offsite") else {
            return;
        };
        let data = world.path("data");
        write_tree(&data, "offsite");
        let local = world.path("local-repo");
        let local = local.to_str().unwrap();
        let as_local = |args: &[&str]| {
            let output = world.cmd_for(local).args(args).output().unwrap();
            assert!(
                output.status.success(),
                "`backstop {}` on the local repository failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        };
        as_local(&["init"]);
        as_local(&["backup", data.to_str().unwrap()]);
        std::fs::write(data.join("later.bin"), pseudo_random(300_000, 9)).unwrap();
        as_local(&["backup", data.to_str().unwrap()]);

        let from = |args: &[&str]| {
            let mut cmd = world.cmd();
            cmd.env("BACKSTOP_FROM_PASSWORD", PASSWORD)
                .arg("--json")
                .args(args)
                .arg("--from-repo")
                .arg(local);
            let output = cmd.output().unwrap();
            assert!(
                output.status.success(),
                "`backstop {}` into S3 failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
            parse_envelope(&output)
        };
        from(&["init"]);
        let copy = from(&["copy"]);
        assert_eq!(
            copy["result"]["copied"],
            serde_json::json!([[1, 1], [2, 2]])
        );
        // The envelope counts the requests to this repository, the bucket, not the source's.
        assert!(copy["requests"]["puts"].as_u64().unwrap() > 2, "{copy}");
        world.verify_full();
        world.restore_and_compare(2, &tree(&data));

        let again = from(&["copy"]);
        assert_eq!(again["result"]["blobs_copied"], 0);
        let puts = again["requests"]["puts"].as_u64().unwrap();
        assert!(
            puts <= 1,
            "a copy with nothing to copy put {puts} objects: {again}"
        );
    }

    /// gc on a real S3 server: after the first of two backups is deleted, the frames of small
    /// files it shared with the second are mostly unused; gc rewrites their pack, deletes the
    /// old one at once (no grace period), and the second backup verifies and restores.
    #[test]
    fn gc_rewrites_a_partly_used_pack_on_s3_and_the_remaining_backup_restores() {
        let Some(world) = World::new("rewrite") else {
            return;
        };
        world.json(&["init"]);
        let data = world.path("data");
        std::fs::create_dir_all(&data).unwrap();
        for i in 0..40u64 {
            std::fs::write(data.join(format!("f{i}")), pseudo_random(20_000, 70 + i)).unwrap();
        }
        let first = world.backup(&data);
        for i in (0..40).filter(|i| i % 4 != 0) {
            std::fs::remove_file(data.join(format!("f{i}"))).unwrap();
        }
        let second = world.backup(&data);
        world.json(&["delete", &first.to_string()]);

        let gc = world.json(&["gc", "--grace", "0s"]);
        let report = &gc["result"];
        assert!(report["packs_repacked"].as_u64().unwrap() >= 1, "{gc}");
        assert!(
            report["bytes_freed"].as_u64().unwrap() > 500_000,
            "30 of 40 files of 20 KB went: {gc}"
        );
        assert_eq!(report["packs_in_grace"], 0, "{gc}");
        assert!(gc["requests"]["puts"].as_u64().unwrap() >= 2, "{gc}");
        world.verify_full();
        world.restore_and_compare(second, &tree(&data));
        let again = world.json(&["gc", "--dry-run", "--grace", "0s"]);
        assert_eq!(again["result"]["packs_repacked"], 0, "{again}");
        assert_eq!(again["result"]["packs_deleted"], 0, "{again}");
    }

    /// A page file whose chunk list is long enough to live in list blobs, on a real S3 server:
    /// the incremental backup patches some lists and reuses the others, both backups restore
    /// byte for byte, and after the full is deleted and gc rewrites what it can, the
    /// incremental (whose patches name lists of the full as their bases) still verifies and
    /// restores.
    #[test]
    fn chunk_lists_of_a_page_file_are_patched_and_survive_gc_on_s3() {
        let Some(world) = World::new("lists") else {
            return;
        };
        world.json(&["init"]);
        let data = world.path("data");
        std::fs::create_dir_all(&data).unwrap();
        // An SQLite header with 512-byte pages makes the directory source cut the file in
        // pages: 5 lists of 4096 ids and a short sixth.
        let (page, pages) = (512usize, 5 * 4096 + 100);
        let mut bytes = pseudo_random(page * pages, 90);
        bytes[..16].copy_from_slice(b"SQLite format 3\0");
        bytes[16..18].copy_from_slice(&[0x02, 0x00]);
        std::fs::write(data.join("table.db"), &bytes).unwrap();
        let first = world.json(&["backup", data.to_str().unwrap()]);
        assert_eq!(
            first["result"]["blobs_added"].as_u64(),
            Some(pages as u64 + 6 + 1),
            "every page, six lists and the tree: {first}"
        );
        let first_id = first["result"]["id"].as_u64().unwrap();
        let first_tree = tree(&data);

        // 21 pages change, spread over every list.
        let changed = (1..pages).step_by(997).count();
        for p in (1..pages).step_by(997) {
            bytes[p * page] ^= 0xff;
        }
        std::fs::write(data.join("table.db"), &bytes).unwrap();
        let second = world.json(&["backup", data.to_str().unwrap()]);
        let added = second["result"]["bytes_added_raw"].as_u64().unwrap();
        // The pages, six small patches and the tree: not the 660 KB of every id again.
        assert!(
            added < (changed * page) as u64 + 20_000,
            "{changed} pages changed, {added} raw bytes added: {second}"
        );
        let second_id = second["result"]["id"].as_u64().unwrap();
        world.restore_and_compare(first_id, &first_tree);
        world.restore_and_compare(second_id, &tree(&data));

        world.json(&["delete", &first_id.to_string()]);
        let gc = world.json(&["gc", "--grace", "0s", "--repack-unused", "0"]);
        assert!(
            gc["result"]["packs_repacked"].as_u64().unwrap() >= 1,
            "the full's old pages share frames with pages still used: {gc}"
        );
        world.verify_full();
        world.restore_and_compare(second_id, &tree(&data));
    }

    /// Writes this round's state of one backup source: files shared by both sources (so their
    /// blobs are stored twice at once and the index holds duplicates), files of its own, and
    /// one file that changes every round.
    fn write_round(root: &Path, source: u64, round: u64) {
        std::fs::create_dir_all(root.join("own")).unwrap();
        for i in 0..4 {
            std::fs::write(
                root.join(format!("shared-{i}.bin")),
                pseudo_random(96 << 10, 1000 + i + round),
            )
            .unwrap();
        }
        std::fs::write(
            root.join("own/fixed.bin"),
            pseudo_random(128 << 10, 2000 + source),
        )
        .unwrap();
        std::fs::write(
            root.join(format!("own/round-{round}.bin")),
            pseudo_random(256 << 10, 3000 + source * 100 + round),
        )
        .unwrap();
    }

    #[test]
    fn two_backups_and_gc_at_once_never_lose_a_backup() {
        let Some(world) = World::new("concurrent") else {
            return;
        };
        world.json(&["init"]);
        let sources = [world.path("source-a"), world.path("source-b")];
        // Every backup that reported success, with what it must restore to.
        let mut committed: Vec<(u64, Tree)> = Vec::new();
        let mut deleted: HashSet<u64> = HashSet::new();
        let (mut backups_ok, mut backups_locked, mut gcs_ok, mut gcs_locked) = (0, 0, 0, 0);
        for round in 0..10u64 {
            let mut expected = Vec::new();
            for (s, root) in sources.iter().enumerate() {
                write_round(root, s as u64, round);
                expected.push(tree(root));
            }
            let spawn = |args: &[&str]| {
                world
                    .cmd()
                    .arg("--json")
                    .args(args)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            };
            let children: Vec<Child> = vec![
                spawn(&["backup", sources[0].to_str().unwrap()]),
                spawn(&["backup", sources[1].to_str().unwrap()]),
                spawn(&["gc"]),
            ];
            let outputs: Vec<Output> = children
                .into_iter()
                .map(|c| wait_output(c, Duration::from_secs(300), &["round", "process"]))
                .collect();
            for (s, output) in outputs.iter().take(2).enumerate() {
                match output.status.code() {
                    Some(0) => {
                        let id = parse_envelope(output)["result"]["id"].as_u64().unwrap();
                        committed.push((id, expected[s].clone()));
                        backups_ok += 1;
                    }
                    Some(4) => backups_locked += 1,
                    _ => panic!(
                        "round {round}: backup {s} failed: {:?}\n{}",
                        output.status,
                        String::from_utf8_lossy(&output.stderr)
                    ),
                }
            }
            match outputs[2].status.code() {
                Some(0) => gcs_ok += 1,
                Some(4) => gcs_locked += 1,
                _ => panic!(
                    "round {round}: gc failed: {:?}\n{}",
                    outputs[2].status,
                    String::from_utf8_lossy(&outputs[2].stderr)
                ),
            }
            // Give gc something to free: the oldest backup still there goes.
            if round % 3 == 2 {
                if let Some((id, _)) = committed.iter().find(|(id, _)| !deleted.contains(id)) {
                    let id = *id;
                    world.json(&["delete", &id.to_string()]);
                    deleted.insert(id);
                }
            }
        }
        eprintln!(
            "backups: {backups_ok} committed, {backups_locked} locked out; \
             gc: {gcs_ok} ran, {gcs_locked} locked out"
        );
        let ids: Vec<u64> = committed.iter().map(|(id, _)| *id).collect();
        let unique: HashSet<u64> = ids.iter().copied().collect();
        assert_eq!(
            unique.len(),
            ids.len(),
            "two backups reported the same id: {ids:?}"
        );
        let listed: HashSet<u64> = world.json(&["list"])["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_u64().unwrap())
            .collect();
        for (id, expected) in &committed {
            if deleted.contains(id) {
                assert!(!listed.contains(id), "deleted backup {id} is still listed");
                continue;
            }
            assert!(
                listed.contains(id),
                "backup {id} reported success but is not listed"
            );
            world.restore_and_compare(*id, expected);
        }
        world.verify_full();
        assert!(
            backups_ok >= 5,
            "too few backups committed to prove anything"
        );
        // A last gc with nothing running must succeed and leave everything restorable.
        world.json(&["gc"]);
        world.verify_full();
    }

    /// The S3 operations the server saw while `f` ran.
    fn requests_during(server: &S3Server, f: impl FnOnce()) -> Vec<String> {
        let before = server.requests().len();
        f();
        server.requests().split_off(before)
    }

    #[test]
    fn unchanged_incremental_backup_of_10000_files_costs_a_few_dozen_requests() {
        let Some(world) = World::new("budget") else {
            return;
        };
        let data = world.path("data");
        let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        for d in 0..100 {
            let dir = data.join(format!("dir-{d:03}"));
            std::fs::create_dir_all(&dir).unwrap();
            for f in 0..100 {
                let path = dir.join(format!("file-{f:03}"));
                std::fs::write(&path, format!("{d}/{f}\n")).unwrap();
                // Files changed within the last seconds may change again unseen in the same
                // timestamp, so the engine reads them again next time; these are older.
                std::fs::File::options()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_modified(an_hour_ago)
                    .unwrap();
            }
        }
        world.json(&["init"]);
        world.backup(&data);
        let mut envelope = Value::Null;
        let ops = requests_during(&world.server, || {
            envelope = world.json(&["backup", data.to_str().unwrap()]);
        });
        let mut by_op: BTreeMap<&str, usize> = BTreeMap::new();
        for op in &ops {
            *by_op.entry(op.as_str()).or_default() += 1;
        }
        eprintln!(
            "unchanged incremental of 10,000 files: {} requests {by_op:?}",
            ops.len()
        );
        assert_eq!(envelope["result"]["files"], 10_000);
        assert_eq!(envelope["result"]["bytes_added"], 0, "{envelope}");
        assert_eq!(envelope["result"]["bytes_read"], 0, "{envelope}");
        assert!(
            ops.len() <= 40,
            "an unchanged backup made {} requests: {by_op:?}",
            ops.len()
        );
    }

    /// What the lead wires in the CLI: `--json` envelopes carry the store requests the
    /// command made, as `backstop_store::RequestCounts` serializes them.
    #[test]
    fn json_output_reports_the_requests_the_server_saw() {
        let Some(world) = World::new("reported") else {
            return;
        };
        let data = world.path("data");
        write_tree(&data, "x");
        world.json(&["init"]);
        let mut envelope = Value::Null;
        let ops = requests_during(&world.server, || {
            envelope = world.json(&["backup", data.to_str().unwrap()]);
        });
        let requests = &envelope["requests"];
        let field = |name: &str| {
            requests[name]
                .as_u64()
                .unwrap_or_else(|| panic!("{envelope}"))
        };
        let count = |names: &[&str]| ops.iter().filter(|op| names.contains(&op.as_str())).count();
        assert_eq!(field("puts") as usize, count(&["PutObject"]), "{envelope}");
        assert_eq!(field("gets") as usize, count(&["GetObject"]), "{envelope}");
        assert_eq!(
            field("lists") as usize,
            count(&["ListObjectsV2"]),
            "{envelope}"
        );
        // The last request (the lock's delete) may not be in the server's log yet when the
        // command returns: the server logs after it answers.
        assert!(
            field("deletes") as usize >= count(&["DeleteObject"]) && field("deletes") <= 1,
            "{envelope}"
        );
        assert!(field("bytes_up") > 3 << 20, "{envelope}");
    }

    /// Starts a backup, kills the server once the first pack is on its way, and returns the
    /// backup process.
    fn backup_then_kill_server(world: &mut World, url: &str, data: &Path) -> Child {
        let before = world.server.requests().len();
        let child = world
            .cmd_for(url)
            .args(["--json", "backup", data.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        // The lock is the first put; a pack (whole, or its first part) is the next one.
        loop {
            let uploads = world.server.requests()[before..]
                .iter()
                .filter(|op| matches!(op.as_str(), "PutObject" | "UploadPart"))
                .count();
            if uploads >= 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no pack upload started:\n{}",
                world.server.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        world.server.stop();
        child
    }

    #[test]
    fn server_killed_mid_backup_fails_or_retries_clearly_and_the_repository_stays_valid() {
        let Some(mut world) = World::new("faults") else {
            return;
        };
        let small = world.path("small");
        write_tree(&small, "small");
        world.json(&["init"]);
        let first = world.backup(&small);
        let first_tree = tree(&small);

        // 48 MiB of incompressible data: several packs, a few seconds of uploading.
        let big = world.path("big");
        std::fs::create_dir_all(&big).unwrap();
        for i in 0..6 {
            std::fs::write(
                big.join(format!("part-{i}.bin")),
                pseudo_random(8 << 20, 500 + i),
            )
            .unwrap();
        }
        let big_tree = tree(&big);

        // An outage shorter than the retry bound: the backup either rides it out or fails
        // with an error that names the store.
        let url = world.url.clone();
        let child = backup_then_kill_server(&mut world, &url, &big);
        let outage = Duration::from_secs(3);
        std::thread::sleep(outage);
        world.server.restart();
        let output = wait_output(
            child,
            Duration::from_secs(300),
            &["backup", "(short outage)"],
        );
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let rode_out = if output.status.success() {
            let id = parse_envelope(&output)["result"]["id"].as_u64().unwrap();
            Some(id)
        } else {
            assert!(
                stderr.contains("S3") || stderr.contains("s3://"),
                "the failure does not name the store: {stderr}"
            );
            None
        };
        eprintln!("short outage: backup {rode_out:?}; stderr: {stderr}");

        // An outage longer than the retry bound (3 retries within 5 s per request): the
        // backup must fail, within a bounded time, saying what failed.
        std::fs::write(big.join("part-0.bin"), pseudo_random(8 << 20, 999)).unwrap();
        let impatient = format!("{}&max_retries=3&retry_timeout=5", world.url);
        let started = Instant::now();
        let child = backup_then_kill_server(&mut world, &impatient, &big);
        let output = wait_output(
            child,
            Duration::from_secs(180),
            &["backup", "(long outage)"],
        );
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            !output.status.success(),
            "a backup into a dead server succeeded"
        );
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with("error:") && l.contains("kept failing after retries")),
            "the error does not say the store kept failing: {stderr}"
        );
        eprintln!("long outage: failed after {took:?}: {stderr}");

        // The server comes back: everything committed before is intact and restorable, the
        // repository verifies, gc removes the leftovers, and backups work again.
        world.server.restart();
        world.verify_full();
        world.restore_and_compare(first, &first_tree);
        if let Some(id) = rode_out {
            world.restore_and_compare(id, &big_tree);
        }
        let ids: Vec<u64> = world.json(&["list"])["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_u64().unwrap())
            .collect();
        let expected_count = if rode_out.is_some() { 2 } else { 1 };
        assert_eq!(ids.len(), expected_count, "backups listed: {ids:?}");
        world.json(&["gc"]);
        world.verify_full();
        let last = world.backup(&big);
        world.restore_and_compare(last, &tree(&big));
    }
}
