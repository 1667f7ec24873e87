//! `demo`: Backstop's main job end to end on a built-in example: a live SQLite bank database
//! under a concurrent writer, three hot backups (the second and third incremental), full
//! verification, an offsite copy (a second repository made from the first, verified), a
//! restore of the latest, and the database's own checks on the restored copy.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use backstop::source::sqlite::{SqliteSource, bank};
use backstop::{
    BackupEngine, BackupInfo, BackupOptions, CopyOptions, EngineOptions, InitOptions, LocalStore,
    RestoreOptions, VerifyLevel,
};
use serde::Serialize;

use crate::cli::DemoArgs;
use crate::interrupt;
use crate::output::{self, Align, Printer, Table};

/// What the demo found, printed as a table or as JSON.
#[derive(Debug, Serialize)]
struct DemoReport {
    work_dir: String,
    repository: String,
    database_bytes: u64,
    backups: Vec<BackupInfo>,
    /// Logical bytes of all backups divided by the bytes they added to the repository.
    dedup_ratio: f64,
    restore_ms: u64,
    restored_bytes: u64,
    checks: Vec<Check>,
    passed: bool,
}

#[derive(Debug, Serialize)]
struct Check {
    name: String,
    passed: bool,
    detail: String,
}

/// A writer thread with its own connection, running bank transfers until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicI64>,
    handle: Option<std::thread::JoinHandle<Result<u64>>>,
}

impl Writer {
    fn start(db: &Path, accounts: u32) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicI64::new(0));
        let mut conn = rusqlite::Connection::open(db).context("opening the demo database")?;
        conn.busy_timeout(Duration::from_secs(10))?;
        let (stop2, committed2) = (Arc::clone(&stop), Arc::clone(&committed));
        let handle = std::thread::Builder::new()
            .name("demo-writer".into())
            .spawn(move || {
                let mut x: u64 = 0x2545_F491_4F6C_DD1D;
                let mut count = 0u64;
                while !stop2.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Like most real workloads, a few hot rows take most of the writes: nine in ten
                    // transfers stay among the first 1% of accounts.
                    let span = if x % 10 == 0 {
                        u64::from(accounts)
                    } else {
                        u64::from(accounts / 100).max(2)
                    };
                    let from = (x % span) as u32 + 1;
                    let to = ((x >> 20) % span) as u32 + 1;
                    let seq = bank::transfer(&mut conn, from, to, (x % 50) as i64 + 1)
                        .context("a transfer of the demo writer failed")?;
                    committed2.store(seq, Ordering::SeqCst);
                    count += 1;
                }
                Ok(count)
            })?;
        Ok(Self {
            stop,
            committed,
            handle: Some(handle),
        })
    }

    fn committed(&self) -> i64 {
        self.committed.load(Ordering::SeqCst)
    }

    /// Waits until `more` transfers were committed after `since` (with a deadline).
    fn wait_for(&self, since: i64, more: i64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.committed() < since + more {
            if self
                .handle
                .as_ref()
                .is_some_and(std::thread::JoinHandle::is_finished)
            {
                bail!("the demo writer stopped unexpectedly");
            }
            if Instant::now() > deadline {
                bail!("the demo writer made no progress for 60 s");
            }
            std::thread::yield_now();
        }
        Ok(())
    }

    fn stop(mut self) -> Result<u64> {
        self.stop.store(true, Ordering::SeqCst);
        match self.handle.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => bail!("the demo writer panicked"),
            None => Ok(0),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

pub(super) fn run(printer: &Printer, args: &DemoArgs) -> Result<()> {
    let temp;
    let work: PathBuf = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating `{}`", dir.display()))?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("backstop-demo-")
                .tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let db = work.join("bank.db");
    let restored = work.join("restored");
    let offsite = work.join("offsite");
    for stale in [&db, &work.join("bank.db-wal"), &work.join("bank.db-shm")] {
        let _ = std::fs::remove_file(stale);
    }
    let _ = std::fs::remove_dir_all(&restored);
    let _ = std::fs::remove_dir_all(&offsite);

    note(
        printer,
        format!(
            "creating a bank of {} accounts in `{}`",
            args.accounts,
            db.display()
        ),
    )?;
    let mut conn = rusqlite::Connection::open(&db)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    bank::create(&mut conn, args.accounts, args.pad_bytes)?;
    drop(conn);

    let repo_location = match &args.repo {
        Some(url) => url.clone(),
        None => work.join("repo").display().to_string(),
    };
    let store = open_store(&repo_location)?;
    let password = std::env::var("BACKSTOP_PASSWORD").unwrap_or_else(|_| "backstop-demo".into());
    let init = || {
        InitOptions::default()
            .with_password(password.clone())
            .with_kdf(16 * 1024, 2)
    };
    let engine_options = EngineOptions::default().with_password(password.clone());
    let engine = BackupEngine::init(store, init(), engine_options.clone())
        .with_context(|| format!("creating the demo repository at `{repo_location}`"))?;

    let writer = Writer::start(&db, args.accounts)?;
    writer.wait_for(0, 100)?;
    let mut backups = Vec::new();
    let mut committed_before = Vec::new();
    for round in 1..=3 {
        let before = writer.committed();
        note(
            printer,
            format!(
                "backup {round} of 3 while the writer runs ({before} transfers committed so far)"
            ),
        )?;
        let options = BackupOptions::default()
            .with_tag("demo")
            .with_metadata("round", round.to_string())
            .with_cancel(interrupt::cancel_token());
        let info = engine.create_backup(&mut SqliteSource::new(&db), &options)?;
        committed_before.push(before);
        backups.push(info);
        writer.wait_for(writer.committed(), args.transfers_between)?;
    }
    let transfers = writer.stop()?;

    let mut checks = Vec::new();
    for info in &backups {
        let report = engine.verify(info.id, VerifyLevel::Full)?;
        checks.push(Check {
            name: format!("verify --full backup {}", info.id),
            passed: report.is_ok(),
            detail: if report.is_ok() {
                format!(
                    "{} blobs in {} packs read and hashed",
                    report.blobs, report.packs
                )
            } else {
                report.problems.join("; ")
            },
        });
    }
    // The offsite copy: a second repository made from the first, which takes its backups.
    note(
        printer,
        format!("copying the backups to `{}`", offsite.display()),
    )?;
    let copy = BackupEngine::init_from(
        LocalStore::new(&offsite),
        &engine,
        init(),
        engine_options.clone(),
    )?;
    let copied = copy.copy_from(&engine, &CopyOptions::default())?;
    let report = copy.verify_all(VerifyLevel::Full)?;
    checks.push(Check {
        name: "offsite copy, verify --full".into(),
        passed: copied.copied.len() == backups.len() && report.is_ok(),
        detail: format!(
            "{} backups copied ({} in {} packs), {}",
            copied.copied.len(),
            output::size(copied.bytes_written),
            copied.packs_written,
            if report.is_ok() {
                format!("{} blobs read and hashed", report.blobs)
            } else {
                report.problems.join("; ")
            }
        ),
    });
    let latest = backups
        .last()
        .map(|b| b.id)
        .context("no backup was taken")?;
    let started = Instant::now();
    let restore = engine.restore(latest, &restored, &RestoreOptions::default())?;
    let restore_ms = started.elapsed().as_millis() as u64;
    checks.push(Check {
        name: "PRAGMA integrity_check".into(),
        passed: true,
        detail: restore.fixups.join("; "),
    });
    let restored_db = restored.join("bank.db");
    let mut conn = rusqlite::Connection::open(&restored_db)
        .with_context(|| format!("opening the restored `{}`", restored_db.display()))?;
    let integrity: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if let Some(check) = checks.last_mut() {
        check.passed = integrity == "ok";
        check.detail = format!("integrity_check says `{integrity}`");
    }
    let state = bank::state(&mut conn)?;
    checks.push(Check {
        name: "balances sum to the initial total".into(),
        passed: state.invariant_holds(),
        detail: format!(
            "{} accounts, total {} (expected {})",
            state.accounts,
            state.total,
            state.accounts * bank::INITIAL_BALANCE
        ),
    });
    let needed = committed_before.last().copied().unwrap_or(0);
    checks.push(Check {
        name: "every transfer committed before the backup is there".into(),
        passed: state.max_seq >= needed,
        detail: format!(
            "restored sequence {} >= {needed} committed before the backup began",
            state.max_seq
        ),
    });

    let logical: u64 = backups.iter().map(|b| b.size).sum();
    let added: u64 = backups.iter().map(|b| b.bytes_added).sum();
    let report = DemoReport {
        work_dir: work.display().to_string(),
        repository: repo_location,
        database_bytes: std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0),
        dedup_ratio: if added == 0 {
            0.0
        } else {
            logical as f64 / added as f64
        },
        backups,
        restore_ms,
        restored_bytes: restore.bytes,
        passed: checks.iter().all(|c| c.passed),
        checks,
    };
    render(printer, &report, transfers)?;
    if args.keep || args.dir.is_some() {
        note(printer, format!("kept everything in `{}`", work.display()))?;
    }
    if !report.passed {
        bail!("the demo found a problem: see the failed checks above");
    }
    Ok(())
}

/// A progress line on stderr, so stdout stays the report (or the JSON document).
fn note(printer: &Printer, text: String) -> Result<()> {
    if !printer.is_quiet() {
        eprintln!("{text}");
    }
    Ok(())
}

fn open_store(location: &str) -> Result<Arc<dyn backstop::Store>> {
    if !location.contains("://") {
        std::fs::create_dir_all(location)?;
    }
    crate::orphans::opening_store(location);
    backstop::store::open_url(location).with_context(|| format!("opening `{location}`"))
}

fn render(printer: &Printer, report: &DemoReport, transfers: u64) -> Result<()> {
    if printer.is_json() {
        return printer.json("demo", report);
    }
    printer.line(format!(
        "\nBackstop demo: a {} SQLite database under a writer ({transfers} transfers during the backups)\n",
        output::size(report.database_bytes)
    ))?;
    let mut table = Table::new(&[
        ("backup", Align::Right),
        ("size", Align::Right),
        ("read", Align::Right),
        ("added", Align::Right),
        ("time", Align::Right),
        ("throughput", Align::Right),
    ]);
    for b in &report.backups {
        table.row(vec![
            b.id.to_string(),
            output::size(b.size),
            output::size(b.bytes_read),
            output::size(b.bytes_added),
            output::duration_ms(b.duration_ms),
            output::rate(b.size, b.duration_ms),
        ]);
    }
    printer.table(&table)?;
    printer.line(format!(
        "\ndedup ratio {:.1}x (logical bytes of all backups / bytes stored); restore of the latest: {} in {} ({})\n",
        report.dedup_ratio,
        output::size(report.restored_bytes),
        output::duration_ms(report.restore_ms),
        output::rate(report.restored_bytes, report.restore_ms)
    ))?;
    for check in &report.checks {
        let mark = if check.passed {
            printer.good("ok")
        } else {
            printer.bad("FAILED")
        };
        printer.line(format!("  {mark:>6}  {}: {}", check.name, check.detail))?;
    }
    Ok(())
}
