//! Rendering results on stdout: the `--json` envelope, human units, and aligned tables.

use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, Result};
use serde::Serialize;

/// Writes results to stdout, as JSON or for humans.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Printer {
    /// `--json`: one JSON document per command, nothing else on stdout.
    pub(crate) json: bool,
    /// `-q`: no summaries, only results a command exists to print.
    pub(crate) quiet: bool,
    /// Bold headers and coloured verdicts.
    pub(crate) color: bool,
}

/// Whether a `--json` result went out; a failure after it (verify's problems) then adds no second
/// document, so stdout always holds exactly one.
static JSON_RESULT_PRINTED: AtomicBool = AtomicBool::new(false);

/// The `--json` envelope: `{"command": "list", "result": ..., "requests": {...}}`.
#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    command: &'a str,
    result: &'a T,
    /// Store requests the command made (absent for commands that open no repository).
    #[serde(skip_serializing_if = "Option::is_none")]
    requests: Option<backstop_store::RequestCounts>,
}

/// The counters of the repository's store, once a command opened one. Only the counters: a
/// static is never dropped, and the store must be (an SFTP store's ssh processes exit then).
static REQUEST_COUNTER: std::sync::OnceLock<backstop_store::RequestCounter> =
    std::sync::OnceLock::new();

/// Remembers the store's request counter for the `--json` envelope (the first one wins: a
/// command opens one repository).
pub(crate) fn record_request_counter(counter: backstop_store::RequestCounter) {
    let _ = REQUEST_COUNTER.set(counter);
}

/// Requests made so far, if a repository was opened.
pub(crate) fn request_counts() -> Option<backstop_store::RequestCounts> {
    REQUEST_COUNTER.get().map(|c| c.counts())
}

/// The `--json` envelope of a failure: `{"command": "list", "error": {...}}`.
#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    command: &'a str,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
    exit_code: u8,
}

impl Printer {
    pub(crate) fn new(json: bool, quiet: bool) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
        let dumb = std::env::var_os("TERM").is_some_and(|term| term == "dumb");
        let color = !json && !no_color && !dumb && std::io::stdout().is_terminal();
        Self { json, quiet, color }
    }

    /// Whether `-q` is on.
    pub(crate) fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// Whether `--json` is on.
    pub(crate) fn is_json(&self) -> bool {
        self.json
    }

    /// Prints a command's result as the `--json` envelope.
    pub(crate) fn json<T: Serialize>(&self, command: &str, result: &T) -> Result<()> {
        JSON_RESULT_PRINTED.store(true, Ordering::SeqCst);
        let mut out = std::io::stdout().lock();
        let requests = request_counts();
        serde_json::to_writer_pretty(
            &mut out,
            &Envelope {
                command,
                result,
                requests,
            },
        )
        .map_err(std::io::Error::from)
        .context("writing to stdout")?;
        writeln!(out).context("writing to stdout")?;
        Ok(())
    }

    /// Prints a failure as the `--json` envelope, so scripts always get a document.
    pub(crate) fn json_error(&self, command: &str, message: &str, exit_code: u8) -> Result<()> {
        if JSON_RESULT_PRINTED.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        let body = ErrorEnvelope {
            command,
            error: ErrorBody { message, exit_code },
        };
        serde_json::to_writer_pretty(&mut out, &body)
            .map_err(std::io::Error::from)
            .context("writing to stdout")?;
        writeln!(out).context("writing to stdout")?;
        Ok(())
    }

    /// Prints a line that is the point of the command (a listing, say).
    pub(crate) fn line(&self, text: impl std::fmt::Display) -> Result<()> {
        writeln!(std::io::stdout().lock(), "{text}").context("writing to stdout")
    }

    /// Prints a summary line, unless `-q`.
    pub(crate) fn status(&self, text: impl std::fmt::Display) -> Result<()> {
        if self.quiet { Ok(()) } else { self.line(text) }
    }

    /// Prints a warning of a command's result: with its summary, or with `-q` (no summary) on
    /// stderr, since a warning may mean the result is not what the user thinks it is (a file
    /// that vanished, a running database copied as plain files).
    pub(crate) fn warning(&self, text: impl std::fmt::Display) -> Result<()> {
        if self.quiet {
            writeln!(std::io::stderr().lock(), "warning: {text}").context("writing to stderr")
        } else {
            self.line(format_args!("  warning: {text}"))
        }
    }

    /// `text` in bold, when colour is on.
    pub(crate) fn bold(&self, text: &str) -> String {
        self.styled(anstyle::Style::new().bold(), text)
    }

    /// `text` in green (good news), when colour is on.
    pub(crate) fn good(&self, text: &str) -> String {
        self.styled(anstyle::AnsiColor::Green.on_default().bold(), text)
    }

    /// `text` in red (bad news), when colour is on.
    pub(crate) fn bad(&self, text: &str) -> String {
        self.styled(anstyle::AnsiColor::Red.on_default().bold(), text)
    }

    fn styled(&self, style: anstyle::Style, text: &str) -> String {
        if self.color {
            format!("{style}{text}{style:#}")
        } else {
            text.to_owned()
        }
    }

    /// Prints `table` with columns aligned.
    pub(crate) fn table(&self, table: &Table) -> Result<()> {
        let mut out = std::io::stdout().lock();
        for line in table.render(self) {
            writeln!(out, "{line}").context("writing to stdout")?;
        }
        Ok(())
    }
}

/// Column alignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    Right,
}

/// A table with a header row; cells are plain text (styling is applied to the header only,
/// so widths stay right).
#[derive(Debug)]
pub(crate) struct Table {
    headers: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(headers: &[(&'static str, Align)]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, printer: &Printer) -> Vec<String> {
        let width = |text: &str| text.chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(|(name, _)| width(name)).collect();
        for row in &self.rows {
            for (column, cell) in row.iter().enumerate() {
                if let Some(slot) = widths.get_mut(column) {
                    *slot = (*slot).max(width(cell));
                }
            }
        }
        let last = self.headers.len().saturating_sub(1);
        let pad = |text: &str, column: usize, align: Align| {
            let fill = widths
                .get(column)
                .copied()
                .unwrap_or(0)
                .saturating_sub(width(text));
            match align {
                // The last left-aligned column is not padded, so lines carry no trailing blanks.
                Align::Left if column == last => text.to_owned(),
                Align::Left => format!("{text}{}", " ".repeat(fill)),
                Align::Right => format!("{}{text}", " ".repeat(fill)),
            }
        };
        let mut lines = Vec::with_capacity(self.rows.len() + 1);
        let header: Vec<String> = self
            .headers
            .iter()
            .enumerate()
            .map(|(column, (name, align))| printer.bold(&pad(name, column, *align)))
            .collect();
        lines.push(header.join("  "));
        for row in &self.rows {
            let cells: Vec<String> = self
                .headers
                .iter()
                .enumerate()
                .map(|(column, (_, align))| {
                    pad(row.get(column).map_or("", String::as_str), column, *align)
                })
                .collect();
            lines.push(cells.join("  "));
        }
        lines
    }
}

/// A byte count in binary units: `512 B`, `1.5 KiB`, `12.3 MiB`, `2.00 GiB`.
pub(crate) fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    #[expect(clippy::cast_precision_loss, reason = "display only")]
    let mut value = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    let decimals = if value < 10.0 {
        2
    } else if value < 100.0 {
        1
    } else {
        0
    };
    format!("{value:.decimals$} {unit}")
}

/// A duration in milliseconds for humans: `850 ms`, `12.3 s`, `4 min 05 s`, `2 h 03 min`.
pub(crate) fn duration_ms(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms} ms");
    }
    if ms < 60_000 {
        #[expect(clippy::cast_precision_loss, reason = "display only")]
        let seconds = ms as f64 / 1000.0;
        return format!("{seconds:.1} s");
    }
    let seconds = ms / 1000;
    if seconds < 3600 {
        return format!("{} min {:02} s", seconds / 60, seconds % 60);
    }
    format!("{} h {:02} min", seconds / 3600, (seconds % 3600) / 60)
}

/// Throughput of `bytes` in `ms`, as `123 MiB/s`.
pub(crate) fn rate(bytes: u64, ms: u64) -> String {
    let per_second = u128::from(bytes) * 1000 / u128::from(ms.max(1));
    format!("{}/s", size(u64::try_from(per_second).unwrap_or(u64::MAX)))
}

/// A Unix time in seconds as UTC, `2024-05-01 12:00:00 UTC`.
pub(crate) fn time(unix: i64) -> String {
    let Ok(seconds) = u64::try_from(unix) else {
        return format!("{unix} (before 1970)");
    };
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds);
    let text = humantime::format_rfc3339_seconds(at).to_string();
    // `2024-05-01T12:00:00Z` -> `2024-05-01 12:00:00 UTC`: easier to read in a table.
    format!("{} UTC", text.trim_end_matches('Z').replacen('T', " ", 1))
}

/// `n` of a thing, in the singular for one: `1 file`, `3 files` (`noun` takes an `s`).
pub(crate) fn count(n: impl Into<u64>, noun: &str) -> String {
    match n.into() {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

/// A backup's time as its host's clock showed it: `2024-05-01 14:00:00 +02:00`, or
/// [`time`]'s UTC form for an offset of 0 or none recorded.
pub(crate) fn local_time(unix: i64, utc_offset_secs: Option<i32>) -> String {
    let offset = utc_offset_secs.unwrap_or(0);
    if offset == 0 {
        return time(unix);
    }
    let shown = time(unix.saturating_add(i64::from(offset)));
    let sign = if offset < 0 { '-' } else { '+' };
    let minutes = offset.unsigned_abs() / 60;
    format!(
        "{} {sign}{:02}:{:02}",
        shown.trim_end_matches(" UTC"),
        minutes / 60,
        minutes % 60
    )
}

/// An identifier or path as human output shows it: in backticks.
pub(crate) fn quoted(text: impl std::fmt::Display) -> String {
    format!("`{text}`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1536), "1.50 KiB");
        assert_eq!(size(10 * 1024 * 1024 + 300 * 1024), "10.3 MiB");
        assert_eq!(size(300 * 1024 * 1024), "300 MiB");
        assert_eq!(size(2 * 1024 * 1024 * 1024), "2.00 GiB");
    }

    #[test]
    fn durations_use_human_units() {
        assert_eq!(duration_ms(850), "850 ms");
        assert_eq!(duration_ms(12_345), "12.3 s");
        assert_eq!(duration_ms(245_000), "4 min 05 s");
        assert_eq!(duration_ms(7_380_000), "2 h 03 min");
    }

    #[test]
    fn counts_of_one_are_singular() {
        assert_eq!(count(0u64, "file"), "0 files");
        assert_eq!(count(1u64, "file"), "1 file");
        assert_eq!(count(2u32, "backup"), "2 backups");
    }

    #[test]
    fn rate_divides_by_seconds() {
        assert_eq!(rate(10 * 1024 * 1024, 2000), "5.00 MiB/s");
        assert_eq!(rate(5, 0), "4.88 KiB/s");
    }

    #[test]
    fn a_backups_time_is_its_hosts_local_time() {
        assert_eq!(local_time(0, None), "1970-01-01 00:00:00 UTC");
        assert_eq!(local_time(0, Some(0)), "1970-01-01 00:00:00 UTC");
        assert_eq!(local_time(0, Some(3600)), "1970-01-01 01:00:00 +01:00");
        assert_eq!(
            local_time(86_400, Some(-(5 * 3600 + 30 * 60))),
            "1970-01-01 18:30:00 -05:30"
        );
    }

    #[test]
    fn time_is_utc() {
        assert_eq!(time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(time(1_714_564_800), "2024-05-01 12:00:00 UTC");
    }

    #[test]
    fn tables_align_columns() {
        let printer = Printer {
            json: false,
            quiet: false,
            color: false,
        };
        let mut table = Table::new(&[("ID", Align::Right), ("NAME", Align::Left)]);
        table.row(vec!["7".into(), "short".into()]);
        table.row(vec!["123".into(), "a longer one".into()]);
        assert_eq!(
            table.render(&printer),
            [" ID  NAME", "  7  short", "123  a longer one"]
        );
    }
}
