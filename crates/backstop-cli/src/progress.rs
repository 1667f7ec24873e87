//! Progress of a backup or restore: a bar on a terminal, log lines otherwise.
//!
//! The engine reports through [`backstop::Progress`]; this observer draws an indicatif bar on
//! stderr when a person is watching, and otherwise turns the same events into `tracing` lines
//! (`-v` shows phases, `-vv` every file), which is also what scripts and tests can follow.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output;

/// The bar being drawn, if any, so log lines can be printed above it instead of through it.
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn active_bar() -> Option<ProgressBar> {
    ACTIVE_BAR
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

fn set_active_bar(bar: Option<ProgressBar>) {
    *ACTIVE_BAR.lock().unwrap_or_else(PoisonError::into_inner) = bar;
}

/// Observes a backup or restore.
#[derive(Debug)]
pub(crate) struct CliProgress {
    bar: Option<ProgressBar>,
    /// `storing` or `restoring`, for log lines.
    verb: &'static str,
    /// What the work goes through one by one: `files`, or `packs` for verify and gc.
    noun: &'static str,
    files_done: AtomicU64,
    files_total: AtomicU64,
    /// Totals given up front (restore knows them from the backup); phases then add nothing.
    totals_fixed: AtomicBool,
    /// The bar is drawn only from the first phase on ([`CliProgress::from_first_phase`]).
    hidden: AtomicBool,
}

impl CliProgress {
    /// A bar when `show_bar`, log lines otherwise.
    pub(crate) fn new(show_bar: bool, verb: &'static str) -> Self {
        let progress = Self::hidden(show_bar, verb);
        progress.show();
        progress
    }

    /// Like [`new`](Self::new), but the bar appears only when the work announces a phase: for
    /// commands that may have nothing to show (a gc that rewrites no pack).
    pub(crate) fn from_first_phase(show_bar: bool, verb: &'static str) -> Self {
        Self::hidden(show_bar, verb)
    }

    fn hidden(show_bar: bool, verb: &'static str) -> Self {
        let bar = show_bar.then(|| {
            // Two lines, so a long path never pushes the numbers off a narrow terminal.
            let style = ProgressStyle::with_template(
                "{spinner} {wide_msg}\n  [{elapsed_precise}] [{wide_bar}] {binary_bytes}/\
                 {binary_total_bytes}  {binary_bytes_per_sec}  ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden()).with_style(style)
        });
        Self {
            bar,
            verb,
            noun: "files",
            files_done: AtomicU64::new(0),
            files_total: AtomicU64::new(0),
            totals_fixed: AtomicBool::new(false),
            hidden: AtomicBool::new(true),
        }
    }

    /// Counts `noun` (plural) instead of files.
    pub(crate) fn counting(mut self, noun: &'static str) -> Self {
        self.noun = noun;
        self
    }

    /// Draws the bar from now on (once), and prints log lines above it.
    fn show(&self) {
        if let Some(bar) = &self.bar
            && self.hidden.swap(false, Ordering::Relaxed)
        {
            bar.set_draw_target(ProgressDrawTarget::stderr());
            bar.enable_steady_tick(Duration::from_millis(200));
            set_active_bar(Some(bar.clone()));
        }
    }

    /// Sets the totals when they are known before the work starts.
    pub(crate) fn set_totals(&self, files: u64, bytes: u64) {
        self.totals_fixed.store(true, Ordering::Relaxed);
        self.files_total.store(files, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_length(bytes);
        }
    }

    /// Removes the bar; the summary follows on stdout.
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        set_active_bar(None);
    }

    fn file_done(&self, path: &str) {
        let done = self.files_done.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(bar) = &self.bar {
            let total = self.files_total.load(Ordering::Relaxed);
            bar.set_message(format!("{done}/{total} {}  `{path}`", self.noun));
        }
    }
}

impl Drop for CliProgress {
    fn drop(&mut self) {
        self.finish();
    }
}

impl CliProgress {
    fn add_to_totals(&self, files: u64, bytes: u64) {
        if !self.totals_fixed.load(Ordering::Relaxed) {
            self.files_total.fetch_add(files, Ordering::Relaxed);
            if let Some(bar) = &self.bar {
                bar.inc_length(bytes);
            }
        }
    }
}

impl backstop::Progress for CliProgress {
    fn phase(&self, name: &str, files: u64, bytes: u64) {
        self.show();
        self.add_to_totals(files, bytes);
        if files == 0 && bytes == 0 {
            // A streamed phase (a directory walk): its entries are counted as they are found.
            tracing::info!("phase `{name}`");
        } else {
            tracing::info!(
                "phase `{name}`: {files} {}, {}",
                self.noun,
                output::size(bytes)
            );
        }
    }

    fn found(&self, files: u64, bytes: u64) {
        self.add_to_totals(files, bytes);
    }

    fn wants_totals(&self) -> bool {
        // Only a bar shows them; log lines name each phase and file as it comes.
        self.bar.is_some()
    }

    fn file(&self, path: &str) {
        self.file_done(path);
        tracing::debug!("{} `{path}`", self.verb);
    }

    fn bytes(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    fn unchanged(&self, path: &str, bytes: u64) {
        // `file` already counted it: the engine announces every file, then says it skipped it.
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
        tracing::debug!("unchanged `{path}`");
    }

    fn warning(&self, message: &str) {
        tracing::warn!("{message}");
    }
}

/// A `tracing` writer for stderr that hides the progress bar while a line is printed.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine(Vec::new())
    }
}

/// One formatted log event, written to stderr as a whole when dropped.
#[derive(Debug)]
pub(crate) struct LogLine(Vec<u8>);

impl std::io::Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let write = || {
            // Nowhere to report a failed write of a log line to stderr.
            let _ = std::io::stderr().lock().write_all(&self.0);
        };
        match active_bar() {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}
