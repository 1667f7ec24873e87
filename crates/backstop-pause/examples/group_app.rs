//! The test application of the group backup tests (crates/backstop/tests/group.rs): it moves
//! money between an account in PostgreSQL and an account in SQLite, one local transaction in
//! each database per transfer (debit in one, credit in the other), so the two balances add up to
//! `TOTAL` only when no transfer is half done. Each transfer is one "request" through the
//! embedded `backstop-pause` gate, so a pause waits for a half-done transfer to finish.
//!
//! ```text
//! group_app --pg CONNINFO --sqlite PATH [--gap-ms N] [--listen 127.0.0.1:0]
//! ```
//!
//! Creates both accounts if missing, prints `ready <pause endpoint URL>` on stdout, transfers
//! until stdin closes, then prints `transfers <count>` and exits.

use std::io::{BufRead as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use backstop_pause::PauseController;

/// The sum of both balances whenever no transfer is half done.
const TOTAL: i64 = 1_000_000;

struct Args {
    pg: String,
    sqlite: String,
    gap: Duration,
    listen: String,
}

fn parse_args() -> Result<Args, String> {
    let mut pg = None;
    let mut sqlite = None;
    let mut gap = Duration::from_millis(5);
    let mut listen = "127.0.0.1:0".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--pg" => pg = Some(value),
            "--sqlite" => sqlite = Some(value),
            "--gap-ms" => {
                gap = Duration::from_millis(
                    value
                        .parse()
                        .map_err(|_| format!("--gap-ms {value}: not a number"))?,
                );
            }
            "--listen" => listen = value,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        pg: pg.ok_or("--pg is required")?,
        sqlite: sqlite.ok_or("--sqlite is required")?,
        gap,
        listen,
    })
}

type AppResult<T> = Result<T, Box<dyn std::error::Error>>;

fn setup(pg: &mut postgres::Client, sqlite: &rusqlite::Connection) -> AppResult<()> {
    pg.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS account(id int PRIMARY KEY, balance bigint NOT NULL, \
                                            ops bigint NOT NULL DEFAULT 0);
         INSERT INTO account(id, balance) VALUES (1, {TOTAL}) ON CONFLICT DO NOTHING;"
    ))?;
    sqlite.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE IF NOT EXISTS account(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL, \
                                            ops INTEGER NOT NULL DEFAULT 0);
         INSERT OR IGNORE INTO account(id, balance) VALUES (1, 0);",
    )?;
    Ok(())
}

/// One transfer: two local transactions, with `gap` between them (the window in which the
/// databases disagree, as in any application without distributed transactions).
fn transfer(
    n: u64,
    pg: &mut postgres::Client,
    sqlite: &rusqlite::Connection,
    gap: Duration,
) -> AppResult<()> {
    let amount = i64::try_from(n % 97 + 1)?;
    let pg_sql = "UPDATE account SET balance = balance + $1, ops = ops + 1 WHERE id = 1";
    let sqlite_sql = "UPDATE account SET balance = balance + ?1, ops = ops + 1 WHERE id = 1";
    if n % 2 == 0 {
        pg.execute(pg_sql, &[&-amount])?;
        std::thread::sleep(gap);
        sqlite.execute(sqlite_sql, [amount])?;
    } else {
        sqlite.execute(sqlite_sql, [-amount])?;
        std::thread::sleep(gap);
        pg.execute(pg_sql, &[&amount])?;
    }
    Ok(())
}

fn main() -> AppResult<()> {
    let args = parse_args()?;
    let mut pg = postgres::Client::connect(&args.pg, postgres::NoTls)?;
    let sqlite = rusqlite::Connection::open(&args.sqlite)?;
    sqlite.busy_timeout(Duration::from_secs(30))?;
    setup(&mut pg, &sqlite)?;

    let controller = PauseController::new();
    let server = controller.serve(args.listen.as_str())?;
    writeln!(std::io::stdout().lock(), "ready {}", server.url())?;

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                if line.is_err() {
                    break;
                }
            }
            stop.store(true, Ordering::SeqCst);
        });
    }
    let count = AtomicU64::new(0);
    while !stop.load(Ordering::SeqCst) {
        // The whole transfer is one request: a pause cannot begin while it is half done. A
        // request turned away after waiting out a long pause is retried, as a client would.
        let Ok(guard) = controller.enter() else {
            continue;
        };
        let n = count.fetch_add(1, Ordering::SeqCst);
        transfer(n, &mut pg, &sqlite, args.gap)?;
        drop(guard);
    }
    drop(server);
    writeln!(
        std::io::stdout().lock(),
        "transfers {}",
        count.load(Ordering::SeqCst)
    )?;
    Ok(())
}
