//! Backup and restore throughput of the engine on a generated mixed dataset, next to `cp -a`
//! of the same data in the same run.
//!
//! ```text
//! cargo run --release -p backstop --example throughput -- [SIZE_MIB] [WORK_DIR] [--plain] [--restore-only]
//! ```
//! SIZE_MIB defaults to 1024. `--plain` uses an unencrypted repository. `--restore-only` keeps the
//! dataset and repository of an earlier run in WORK_DIR and times only the restore (and `cp -a`),
//! for comparing restore changes without waiting for a backup. The dataset is a third incompressible bytes, a third text-like
//! compressible bytes and a third 8 KiB "pages" with repeated structure, in files from 4 KiB to
//! 256 MiB. Peak RSS is the process's high-water mark (VmHWM) measured separately for backup and
//! restore (each runs in a child process of this example so the marks do not mix), with the child's
//! CPU time (user + system), which is steadier than wall time on a shared machine.

#![allow(clippy::print_stdout, reason = "an example reports on stdout")]

use std::path::{Path, PathBuf};
use std::time::Instant;

use backstop::{
    BackupEngine, BackupOptions, DirSource, EngineOptions, InitOptions, LocalStore, RestoreOptions,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let all: Vec<String> = std::env::args().collect();
    if all.get(1).map(String::as_str) == Some("--child") {
        return child(&all[2..]);
    }
    let flag = |name: &str| all.iter().any(|a| a == name);
    let (plain, restore_only) = (flag("--plain"), flag("--restore-only"));
    let args: Vec<&String> = all.iter().filter(|a| !a.starts_with("--")).collect();
    let size_mib: u64 = args.get(1).map_or(Ok(1024), |s| s.parse())?;
    let work = match args.get(2) {
        Some(dir) => PathBuf::from(dir),
        None => std::env::temp_dir().join("backstop-throughput"),
    };
    let data = work.join("data");
    if restore_only {
        for dir in ["restored", "cp-copy-false", "cp-copy-true"] {
            let _ = std::fs::remove_dir_all(work.join(dir));
        }
    } else {
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        generate(&data, size_mib << 20)?;
    }
    let bytes = size_mib << 20;
    println!(
        "dataset: {size_mib} MiB in {} ({} repository)",
        data.display(),
        if plain { "unencrypted" } else { "encrypted" }
    );

    let exe = std::env::current_exe()?;
    let mut rows = Vec::new();
    let steps: &[&str] = if restore_only {
        &["restore"]
    } else {
        &["backup", "restore"]
    };
    for step in steps {
        let started = Instant::now();
        let out = std::process::Command::new(&exe)
            .args(["--child", step, if plain { "plain" } else { "encrypted" }])
            .arg(&work)
            .output()?;
        if !out.status.success() {
            return Err(format!("{step} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        let secs = started.elapsed().as_secs_f64();
        let report = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let (rss, cpu) = report.split_once(' ').unwrap_or((&report, "-"));
        rows.push((
            format!("backstop {step}"),
            secs,
            rss.to_owned(),
            cpu.to_owned(),
        ));
    }
    // The restore ends with a sync of the filesystem (a restore must be durable), so `cp -a` is
    // timed alone and followed by `sync`.
    for (name, sync) in [("cp -a", false), ("cp -a + sync", true)] {
        let copy = work.join(format!("cp-copy-{sync}"));
        let started = Instant::now();
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(&data)
            .arg(&copy)
            .status()?;
        if !status.success() {
            return Err("cp -a failed".into());
        }
        if sync {
            std::process::Command::new("sync").status()?;
        }
        rows.push((
            name.into(),
            started.elapsed().as_secs_f64(),
            "-".into(),
            "-".into(),
        ));
    }
    let repo_bytes = du(&work.join("repo"))?;

    println!(
        "\n| step | seconds | MiB/s | CPU seconds (user + sys) | peak RSS (MiB) |\n|---|---|---|---|---|"
    );
    for (name, secs, rss, cpu) in &rows {
        println!(
            "| {name} | {secs:.2} | {:.0} | {cpu} | {rss} |",
            bytes as f64 / 1048576.0 / secs
        );
    }
    let cp = rows.last().map_or(1.0, |r| r.1); // cp -a + sync
    println!(
        "\nrepository: {:.1} MiB ({:.0}% of the data)",
        repo_bytes as f64 / 1048576.0,
        100.0 * repo_bytes as f64 / bytes as f64
    );
    for (name, secs, _, _) in rows.iter().filter(|r| r.0.starts_with("backstop")) {
        println!("{name} / (cp -a + sync): {:.2}x the time", secs / cp);
    }
    Ok(())
}

fn child(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let work = PathBuf::from(&args[2]);
    let store = LocalStore::new(work.join("repo"));
    let plain = args[1] == "plain";
    let options = if plain {
        EngineOptions::default()
    } else {
        EngineOptions::default().with_password("bench")
    };
    match args[0].as_str() {
        "backup" => {
            let init = if plain {
                InitOptions::default()
            } else {
                InitOptions::default().with_password("bench")
            };
            let engine = BackupEngine::init(store, init, options)?;
            engine.create_backup(
                &mut DirSource::new(work.join("data")),
                &BackupOptions::default(),
            )?;
        }
        _ => {
            let engine = BackupEngine::open(store, options)?;
            engine.restore(
                backstop::BackupSelector::Latest,
                &work.join("restored"),
                &RestoreOptions::default(),
            )?;
        }
    }
    println!("{:.1} {:.2}", peak_rss_mib(), cpu_seconds());
    Ok(())
}

/// User plus system CPU time of this process so far, from `/proc/self/stat` (in clock ticks of
/// 1/100 s, the value on every Linux architecture Rust supports).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    (ticks(11) + ticks(12)) / 100.0
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn du(path: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let md = entry.metadata()?;
        total += if md.is_dir() {
            du(&entry.path())?
        } else {
            md.len()
        };
    }
    Ok(total)
}

/// Writes about `total` bytes of mixed data.
fn generate(root: &Path, total: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(root)?;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let words = [
        "select", "insert", "account", "balance", "backup", "page", "row", "commit", "index",
    ];
    let mut written = 0u64;
    let mut n = 0;
    while written < total {
        let size = match n % 10 {
            0 => 256 << 20,
            1..=3 => 16 << 20,
            4..=6 => 1 << 20,
            _ => 4096 * (1 + next() % 64),
        }
        .min(total - written) as usize;
        let mut buf = Vec::with_capacity(size);
        match n % 3 {
            0 => {
                while buf.len() < size {
                    buf.extend_from_slice(&next().to_le_bytes());
                }
            }
            1 => {
                while buf.len() < size {
                    let w = words[(next() % words.len() as u64) as usize];
                    buf.extend_from_slice(w.as_bytes());
                    buf.extend_from_slice(format!(" {} ", next() % 100_000).as_bytes());
                }
            }
            _ => {
                while buf.len() < size {
                    let mut page = vec![0u8; 8192];
                    for (i, b) in page.iter_mut().enumerate().take(2048) {
                        *b = ((next() % 7) as u8).wrapping_add(i as u8);
                    }
                    buf.extend_from_slice(&page);
                }
            }
        }
        buf.truncate(size);
        let dir = root.join(format!("d{}", n % 7));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("f{n}")), &buf)?;
        written += size as u64;
        n += 1;
    }
    Ok(())
}
