//! Berkeley DB: hot backup of a transactional environment (data files, then every log file),
//! restore by catastrophic recovery, log archival that never outruns the backups, and a hot
//! standby kept in sync by copying logs and recovering, all through the `db_*` utilities.
//!
//! The procedure is Berkeley DB's own ("Hot backup" and "Hot failover" in the Reference Guide):
//!
//! 1. copy the database files (`db_archive -s`, plus every file of a separate data directory,
//!    because `db_archive` omits databases not opened during the lifetime of the current logs);
//!    pages may be torn, which is expected;
//! 2. only then list and copy every log file up to the current end (`db_archive -l`): the logs
//!    hold every change that any copied page could be missing;
//! 3. make the copy consistent with catastrophic recovery, `db_recover -c`.
//!
//! The phases `data` and `logs` make the order impossible to get wrong: the engine stores the
//! whole first phase before the session lists the logs. A log file is append-only until the next
//! one exists and immutable after that, so full logs carry an identity and are never read twice.
//!
//! Berkeley DB preallocates each log file to its full size, so the current log's length says
//! nothing about how much of it is written: it is stored as it is read, and recovery finds its
//! end by the records' checksums, exactly as for a `cp` of the file.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{
    ChangeModel, Entry, EntryKind, Phase, RestoreParams, RestoreProfile, Session, SessionContext,
    SessionOutcome, Source, SourceError,
};

/// Version of the `bdb.*` facts recorded in `source_meta`.
const META_FORMAT: &str = "1";
/// How much of a full log file is hashed to recognise it again in the next backup.
const HEAD_BYTES: u64 = 4096;
/// The standby's own bookkeeping, kept in the standby directory.
const STANDBY_STATE: &str = ".backstop-standby.json";
/// Suffix of files being copied; renamed into place only when complete.
const TMP_SUFFIX: &str = ".backstop-tmp";

/// Applies the bdb restore fix-ups to `target`: catastrophic recovery with `db_recover -c`, then,
/// when the option `verify=true` is given, `db_verify` of every database file.
pub(crate) fn restore_fixup(
    profile: &RestoreProfile,
    target: &Path,
    params: &RestoreParams,
) -> Result<Vec<String>, SourceError> {
    let tools = BdbTools::from_option(params.options.get("db-tools").map(String::as_str));
    // `db_recover` opens, writes and creates whatever the environment's files and DB_CONFIG
    // lead it to: the restored copy must be self-contained, with no link out of it and no
    // directory setting that names a place outside it (the original environment's, say).
    crate::restored::check_tree(target)?;
    if let Some(bytes) = crate::restored::read(target, "DB_CONFIG")? {
        check_restored_config(&String::from_utf8_lossy(&bytes), &target.join("DB_CONFIG"))?;
    }
    let mut steps = Vec::new();
    for stale in region_files(target)? {
        // Never stored, but a target reused by hand may hold a dead environment's regions,
        // which recovery must not join.
        remove_file(&stale)?;
        steps.push(format!("removed stale region file `{}`", stale.display()));
    }
    steps.extend(recover(&tools, target, true)?);
    let verify = params
        .options
        .get("verify")
        .is_some_and(|v| v == "true" || v == "1");
    if verify {
        let files: Vec<String> = profile
            .params
            .get("data_files")
            .map(|s| {
                s.lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        steps.extend(verify_files(&tools, target, &files)?);
    }
    Ok(steps)
}

/// Where the Berkeley DB command-line utilities are: on `PATH` (as `db5.3_recover`,
/// `db_recover`, or another versioned name), or in one configured directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BdbTools {
    dir: Option<PathBuf>,
}

impl BdbTools {
    /// Utilities found on `PATH`.
    pub fn from_path() -> Self {
        Self { dir: None }
    }

    /// Utilities in `dir` only.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: Some(dir.into()),
        }
    }

    /// From an optional directory setting (the restore option `db-tools`, say).
    pub fn from_option(dir: Option<&str>) -> Self {
        match dir {
            Some(dir) if !dir.is_empty() => Self::in_dir(dir),
            _ => Self::from_path(),
        }
    }

    /// The path of utility `tool` (`recover`, `archive`, `verify`, `hotbackup`…).
    pub fn find(&self, tool: &str) -> Result<PathBuf, SourceError> {
        let dirs: Vec<PathBuf> = match &self.dir {
            Some(dir) => vec![dir.clone()],
            None => std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect())
                .unwrap_or_default(),
        };
        // Debian names the utilities after the library version; upstream installs `db_*`.
        for name in [format!("db5.3_{tool}"), format!("db_{tool}")] {
            for dir in &dirs {
                let path = dir.join(&name);
                if is_executable(&path) {
                    return Ok(path);
                }
            }
        }
        for dir in &dirs {
            if let Some(path) = versioned_tool(dir, tool) {
                return Ok(path);
            }
        }
        let place = match &self.dir {
            Some(dir) => format!("in `{}`", dir.display()),
            None => "on PATH".to_owned(),
        };
        Err(SourceError::Procedure(format!(
            "the Berkeley DB utility `db_{tool}` (or `db5.3_{tool}`) was not found {place}; \
             install Debian's `db5.3-util` package, or name the directory that holds the \
             utilities (restore option `db-tools=DIR`, `BdbSource::with_tools`), or restore the \
             raw files with `--raw` and run `db_recover -c` yourself"
        )))
    }

    /// Runs `tool` with `args`; returns its standard output, or an error with its stderr.
    fn run(&self, tool: &str, args: &[OsString]) -> Result<String, SourceError> {
        let program = self.find(tool)?;
        tracing::debug!(program = %program.display(), ?args, "running a Berkeley DB utility");
        let output = std::process::Command::new(&program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| SourceError::io("running", &program, e))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(SourceError::Tool {
                program: format!("{} {}", program.display(), join_args(args)),
                detail: format!("{}; stderr: {}", output.status, tail.join(" | ")),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

fn join_args(args: &[OsString]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|md| md.is_file() && md.permissions().mode() & 0o111 != 0)
}

/// `db<version>_<tool>` in `dir` (`db6.2_recover`, `db4.8_recover`), newest name first.
fn versioned_tool(dir: &Path, tool: &str) -> Option<PathBuf> {
    let suffix = format!("_{tool}");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|item| {
            let name = item.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix("db")
                .and_then(|rest| rest.strip_suffix(suffix.as_str()))
                .is_some_and(|version| {
                    !version.is_empty() && version.chars().all(|c| c.is_ascii_digit() || c == '.')
                })
        })
        .map(|item| item.path())
        .filter(|path| is_executable(path))
        .collect();
    found.sort();
    found.pop()
}

/// A transactional Berkeley DB environment, backed up while its applications read and write.
///
/// The environment must use transactions and logging (`DB_INIT_TXN | DB_INIT_LOG`). Backstop
/// only runs `db_archive` against it, which joins the environment without recovering it; it
/// never removes a log file unless asked to ([`remove_archived_logs`]).
#[derive(Clone, Debug)]
pub struct BdbSource {
    env_home: PathBuf,
    tools: BdbTools,
    data_dirs: Vec<PathBuf>,
    log_dir: Option<PathBuf>,
}

impl BdbSource {
    /// A source for the environment in `env_home`.
    pub fn new(env_home: impl Into<PathBuf>) -> Self {
        Self {
            env_home: env_home.into(),
            tools: BdbTools::from_path(),
            data_dirs: Vec::new(),
            log_dir: None,
        }
    }

    /// Uses the Berkeley DB utilities described by `tools` instead of those on `PATH`.
    #[must_use]
    pub fn with_tools(mut self, tools: BdbTools) -> Self {
        self.tools = tools;
        self
    }

    /// Adds a data directory the application sets in code (`DB_ENV->set_data_dir`) rather than
    /// in `DB_CONFIG`; relative to the home, or absolute inside it. Every file in it is stored.
    #[must_use]
    pub fn with_data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dirs.push(dir.into());
        self
    }

    /// Sets the log directory when the application sets it in code (`DB_ENV->set_lg_dir`);
    /// only needed if `DB_CONFIG` does not say it.
    #[must_use]
    pub fn with_log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.log_dir = Some(dir.into());
        self
    }

    /// The environment's home directory.
    pub fn env_home(&self) -> &Path {
        &self.env_home
    }

    /// The utilities this source runs.
    pub fn tools(&self) -> &BdbTools {
        &self.tools
    }

    fn layout(&self) -> Result<Layout, SourceError> {
        Layout::read(&self.env_home, &self.data_dirs, self.log_dir.as_deref())
    }

    /// Brings `standby_dir` up to date with this environment; see [`refresh_standby`].
    pub fn refresh_standby(&self, standby_dir: &Path) -> Result<StandbyReport, SourceError> {
        standby::refresh(self, standby_dir)
    }
}

impl Source for BdbSource {
    fn kind(&self) -> &str {
        "bdb"
    }

    fn identity(&self) -> String {
        std::fs::canonicalize(&self.env_home)
            .unwrap_or_else(|_| self.env_home.clone())
            .to_string_lossy()
            .into_owned()
    }

    fn begin(&mut self, ctx: &SessionContext) -> Result<Box<dyn Session + '_>, SourceError> {
        if ctx.cancel.is_cancelled() {
            return Err(SourceError::Cancelled);
        }
        let layout = self.layout()?;
        let mut warnings = Vec::new();
        // Listed before the data files are read: the logs the data copy may need.
        let logs = list_logs(&self.tools, &layout)?;
        let needed_from = needed_from(&self.tools, &layout, &logs)?;
        let parent = ctx.parent_meta.as_ref().and_then(ParentMeta::parse);
        let chain = judge_chain(parent.as_ref(), &logs, &layout)?;
        let full = match &chain {
            Chain::First => true,
            Chain::Continues => ctx.full_read,
            Chain::Broken(why) => {
                tracing::warn!(home = %layout.home.display(), "{why}");
                warnings.push(why.clone());
                true
            }
        };
        // Log identities carry the epoch: a new one makes the engine read every log again.
        let epoch = match (&parent, full) {
            (Some(parent), false) => parent.epoch.clone(),
            _ => new_epoch(),
        };
        // Reusing a parent's copy of an unchanged data file is sound only while every log that
        // copy may need is still in the environment (and so in this backup).
        let reuse_data = !full
            && parent
                .as_ref()
                .is_some_and(|p| first_number(&logs) <= p.needed_from);
        let (data_entries, data_files) =
            data_phase(&layout, &self.tools, reuse_data, &mut warnings)?;
        Ok(Box::new(BdbSession {
            tools: self.tools.clone(),
            layout,
            cancel: ctx.cancel.clone(),
            step: Step::Data(data_entries),
            data_files,
            logs_at_begin: logs,
            needed_from,
            full,
            epoch,
            warnings,
            stored: None,
        }))
    }
}

/// Where an environment keeps its files, from `DB_CONFIG` and the source's settings.
#[derive(Clone, Debug)]
struct Layout {
    /// Canonical home.
    home: PathBuf,
    /// Canonical data directories; the home when none is configured.
    data_dirs: Vec<PathBuf>,
    /// Canonical log directory (the home by default).
    log_dir: PathBuf,
}

impl Layout {
    fn read(
        home: &Path,
        extra_data: &[PathBuf],
        log_dir: Option<&Path>,
    ) -> Result<Self, SourceError> {
        let home = std::fs::canonicalize(home)
            .map_err(|e| SourceError::io("opening the Berkeley DB environment home", home, e))?;
        if !home.is_dir() {
            return Err(SourceError::Procedure(format!(
                "`{}` is not a directory; a Berkeley DB source needs the environment's home",
                home.display()
            )));
        }
        let config = read_db_config(&home)?;
        let mut data_dirs = Vec::new();
        for dir in config.data_dirs.iter().chain(extra_data) {
            let dir = canonical_inside(&home, dir, "data directory")?;
            if !data_dirs.contains(&dir) {
                data_dirs.push(dir);
            }
        }
        if data_dirs.is_empty() {
            data_dirs.push(home.clone());
        }
        let log_dir = match log_dir.or(config.log_dir.as_deref()) {
            Some(dir) => canonical_inside(&home, dir, "log directory")?,
            None => home.clone(),
        };
        Ok(Self {
            home,
            data_dirs,
            log_dir,
        })
    }

    /// `path` relative to the home, `/`-separated.
    fn relative(&self, path: &Path) -> Result<String, SourceError> {
        let rel = path.strip_prefix(&self.home).map_err(|_| {
            SourceError::Procedure(format!(
                "`{}` is outside the environment home `{}`; Backstop stores an environment's \
                 files relative to its home, so keep data and log directories inside it",
                path.display(),
                self.home.display()
            ))
        })?;
        let mut parts = Vec::new();
        for part in rel.components() {
            parts.push(part.as_os_str().to_str().ok_or_else(|| {
                SourceError::Procedure(format!("`{}` has a name that is not UTF-8", path.display()))
            })?);
        }
        Ok(parts.join("/"))
    }
}

/// What `DB_CONFIG` says about directories.
#[derive(Debug, Default, PartialEq, Eq)]
struct DbConfig {
    data_dirs: Vec<PathBuf>,
    log_dir: Option<PathBuf>,
}

fn read_db_config(home: &Path) -> Result<DbConfig, SourceError> {
    let path = home.join("DB_CONFIG");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(parse_db_config(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DbConfig::default()),
        Err(e) => Err(SourceError::io("reading", path, e)),
    }
}

fn parse_db_config(text: &str) -> DbConfig {
    let mut config = DbConfig::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        match name {
            // `set_create_dir` must name one of the data directories, so it adds nothing.
            "set_data_dir" | "add_data_dir" => config.data_dirs.push(PathBuf::from(value)),
            "set_lg_dir" => config.log_dir = Some(PathBuf::from(value)),
            _ => {}
        }
    }
    config
}

fn canonical_inside(home: &Path, dir: &Path, what: &str) -> Result<PathBuf, SourceError> {
    let joined = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        home.join(dir)
    };
    let canonical = std::fs::canonicalize(&joined).map_err(|e| {
        SourceError::io(
            "opening the environment's data or log directory",
            &joined,
            e,
        )
    })?;
    if !canonical.starts_with(home) {
        return Err(SourceError::Procedure(format!(
            "the {what} `{}` is outside the environment home `{}`; Backstop stores an \
             environment relative to its home, so a restore recreates it in one directory. Move \
             the directory inside the home and name it relative in DB_CONFIG",
            canonical.display(),
            home.display()
        )));
    }
    Ok(canonical)
}

/// The `DB_CONFIG` directives that name a directory (Berkeley DB 5.3 and 6.x).
const DIR_DIRECTIVES: &[&str] = &[
    "set_data_dir",
    "add_data_dir",
    "set_create_dir",
    "set_lg_dir",
    "set_tmp_dir",
    "set_metadata_dir",
    "set_blob_dir",
    "set_ext_file_dir",
    "set_region_dir",
];

/// `DB_CONFIG` as a backup stores it: every directory it names relative to the home, so that
/// recovery of the restored copy (`db_recover -c -h TARGET`) opens the copy's files and never
/// the original environment's. A directory outside the home (a `set_tmp_dir /var/tmp`, say,
/// which holds no data) is commented out; returns the text and a warning per such line.
fn self_contained_config(text: &str, home: &Path) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len());
    let mut warnings = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(value)) = (words.next(), words.next()) else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        if !DIR_DIRECTIVES.contains(&name) || is_relative_inside(value) {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let joined = home.join(value);
        let rel = std::fs::canonicalize(&joined)
            .ok()
            .and_then(|dir| {
                dir.strip_prefix(home)
                    .ok()
                    .map(|rel| rel.to_str().map(str::to_owned))
            })
            .flatten();
        match rel {
            Some(rel) => {
                let rel = if rel.is_empty() { ".".to_owned() } else { rel };
                out.push_str(&format!("{name} {rel}\n"));
            }
            None => {
                warnings.push(format!(
                    "DB_CONFIG line `{}` names a directory outside the environment home; the \
                     stored DB_CONFIG has it commented out, so a restored copy never uses it",
                    line.trim()
                ));
                out.push_str(&format!(
                    "# backstop: outside the environment home, not restored: {}\n",
                    line.trim()
                ));
            }
        }
    }
    (out, warnings)
}

/// Whether a `DB_CONFIG` directory value is relative and stays below the home.
fn is_relative_inside(value: &str) -> bool {
    use std::path::Component;
    let path = Path::new(value);
    path.is_relative()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Refuses a restored `DB_CONFIG` whose directory settings are absolute or climb out of the
/// restored environment: `db_recover` would open the original environment's files read-write.
fn check_restored_config(text: &str, path: &Path) -> Result<(), SourceError> {
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(name), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        if DIR_DIRECTIVES.contains(&name) && !is_relative_inside(value) {
            return Err(SourceError::Procedure(format!(
                "the restored `{}` says `{name} {value}`, a directory outside the restored \
                 environment: recovery would open the files there (the original \
                 environment's) instead of the restored copy's. Restore with `--raw`, make the \
                 directories in DB_CONFIG relative to the environment home, then run \
                 `db_recover -c -h` on the copy",
                path.display()
            )));
        }
    }
    Ok(())
}

/// `DB_CONFIG` as a backup or a standby stores it.
struct StoredConfig {
    bytes: Vec<u8>,
    /// A line per directory setting left out (outside the home).
    warnings: Vec<String>,
}

/// The stored form of the live environment's `DB_CONFIG` (see [`self_contained_config`]), or
/// `None` when it has none.
fn stored_config(home: &Path) -> Result<Option<StoredConfig>, SourceError> {
    let path = home.join("DB_CONFIG");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let (text, warnings) = self_contained_config(&text, home);
            Ok(Some(StoredConfig {
                bytes: text.into_bytes(),
                warnings,
            }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SourceError::io("reading", path, e)),
    }
}

/// A log file of the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LogFile {
    number: u32,
    path: PathBuf,
}

impl LogFile {
    fn name(&self) -> String {
        log_name(self.number)
    }
}

fn log_name(number: u32) -> String {
    format!("log.{number:010}")
}

/// The number of a log file name `log.NNNNNNNNNN`.
fn log_number(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("log.")?;
    (digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn first_number(logs: &[LogFile]) -> u32 {
    logs.first().map_or(0, |l| l.number)
}

fn last_number(logs: &[LogFile]) -> u32 {
    logs.last().map_or(0, |l| l.number)
}

/// Every log file of the environment, oldest first (`db_archive -l`).
fn list_logs(tools: &BdbTools, layout: &Layout) -> Result<Vec<LogFile>, SourceError> {
    let out = tools.run("archive", &archive_args(&layout.home, &["-l", "-a"]))?;
    let mut logs = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = PathBuf::from(line);
        let path = if path.is_absolute() {
            path
        } else {
            layout.log_dir.join(path)
        };
        let Some(number) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(log_number)
        else {
            continue;
        };
        logs.push(LogFile { number, path });
    }
    logs.sort_by_key(|l| l.number);
    logs.dedup_by_key(|l| l.number);
    if logs.is_empty() {
        return Err(SourceError::Procedure(format!(
            "`db_archive -l` lists no log file in `{}`: this is not a transactional environment \
             with logging (DB_INIT_TXN | DB_INIT_LOG), or its logs live elsewhere (set \
             `set_lg_dir` in DB_CONFIG or `BdbSource::with_log_dir`)",
            layout.home.display()
        )));
    }
    Ok(logs)
}

fn archive_args(home: &Path, flags: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = flags.iter().map(OsString::from).collect();
    args.push("-h".into());
    args.push(home.as_os_str().to_owned());
    args
}

/// The log files `db_archive` (no flags) says are no longer needed, by number.
fn archivable_numbers(tools: &BdbTools, home: &Path) -> Result<BTreeSet<u32>, SourceError> {
    let out = tools.run("archive", &archive_args(home, &["-a"]))?;
    Ok(out
        .lines()
        .filter_map(|l| {
            Path::new(l.trim())
                .file_name()?
                .to_str()
                .and_then(log_number)
        })
        .collect())
}

/// The oldest log the environment still needs for its own recovery: copies of data files made
/// from now on never need an older one.
fn needed_from(tools: &BdbTools, layout: &Layout, logs: &[LogFile]) -> Result<u32, SourceError> {
    let archivable = archivable_numbers(tools, &layout.home)?;
    Ok(logs
        .iter()
        .map(|l| l.number)
        .find(|n| !archivable.contains(n))
        .unwrap_or(last_number(logs)))
}

/// Whether this backup continues the parent's log sequence.
#[derive(Debug, PartialEq, Eq)]
enum Chain {
    First,
    Continues,
    Broken(String),
}

fn judge_chain(
    parent: Option<&ParentMeta>,
    logs: &[LogFile],
    layout: &Layout,
) -> Result<Chain, SourceError> {
    let Some(parent) = parent else {
        return Ok(Chain::First);
    };
    let (first, last) = (first_number(logs), last_number(logs));
    if last < parent.last_log {
        return Ok(Chain::Broken(format!(
            "the log sequence of `{}` went back from {} (previous backup) to {}: the \
             environment was recreated or restored, so this backup starts a new full chain",
            layout.home.display(),
            log_name(parent.last_log),
            log_name(last)
        )));
    }
    if first > parent.last_log {
        let missing = if first - 1 > parent.last_log {
            format!(
                "{} (whose end the previous backup lacks) to {}",
                log_name(parent.last_log),
                log_name(first - 1)
            )
        } else {
            format!(
                "{} (whose end the previous backup lacks)",
                log_name(parent.last_log)
            )
        };
        return Ok(Chain::Broken(format!(
            "log gap in `{}`: log files {missing} were removed from the environment before \
             Backstop stored them, so the backups cannot be replayed across that gap; this backup \
             is a new full one. Remove log files only after they are stored (Backstop's \
             remove-archived-logs does this) instead of `db_archive -d` or DB_LOG_AUTO_REMOVE",
            layout.home.display()
        )));
    }
    if let Some((number, expected)) = &parent.head {
        if let Some(log) = logs.iter().find(|l| l.number == *number) {
            let actual = head_hash(&log.path)?;
            if &actual != expected {
                return Ok(Chain::Broken(format!(
                    "{} in `{}` is not the file the previous backup stored (its first {HEAD_BYTES} \
                     bytes differ): the environment was recreated or restored, so this backup \
                     starts a new full chain",
                    log.name(),
                    layout.home.display()
                )));
            }
        }
    }
    Ok(Chain::Continues)
}

/// BLAKE3 of the first bytes of a full log file, to recognise it in the next backup.
fn head_hash(path: &Path) -> Result<String, SourceError> {
    let file = std::fs::File::open(path).map_err(|e| SourceError::io("reading", path, e))?;
    let mut head = Vec::new();
    file.take(HEAD_BYTES)
        .read_to_end(&mut head)
        .map_err(|e| SourceError::io("reading", path, e))?;
    Ok(blake3::hash(&head).to_hex().to_string())
}

fn new_epoch() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}")
}

/// What the previous backup of the same environment recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ParentMeta {
    epoch: String,
    last_log: u32,
    needed_from: u32,
    /// The newest full log's number and head hash.
    head: Option<(u32, String)>,
    /// Full logs stored, as `name:size`.
    stored_logs: BTreeSet<String>,
}

impl ParentMeta {
    fn parse(meta: &BTreeMap<String, String>) -> Option<Self> {
        if meta.get("bdb.format").map(String::as_str) != Some(META_FORMAT) {
            return None;
        }
        let number = |key: &str| meta.get(key).and_then(|v| v.parse::<u32>().ok());
        let head = meta.get("bdb.head").and_then(|v| {
            let (name, hash) = v.split_once(':')?;
            Some((log_number(name)?, hash.to_owned()))
        });
        Some(Self {
            epoch: meta.get("bdb.epoch")?.clone(),
            last_log: number("bdb.last_log")?,
            needed_from: number("bdb.needed_from")?,
            head,
            stored_logs: meta
                .get("bdb.stored_logs")
                .map(|v| {
                    v.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

/// Lists the data files: what `db_archive -s` names, every file of a separate data directory,
/// and Berkeley DB files lying in the home itself.
fn data_phase(
    layout: &Layout,
    tools: &BdbTools,
    reuse_unchanged: bool,
    warnings: &mut Vec<String>,
) -> Result<(Vec<Entry>, Vec<String>), SourceError> {
    let files = data_files(layout, tools, warnings)?;
    let mut entries = Vec::new();
    let mut dirs = BTreeSet::new();
    for (rel, _) in &files {
        let mut prefix = String::new();
        for part in rel
            .split('/')
            .rev()
            .skip(1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            dirs.insert(prefix.clone());
        }
    }
    for dir in &dirs {
        if let Some(entry) =
            Entry::from_path(dir.clone(), &layout.home.join(dir), ChangeModel::Any)?
        {
            entries.push(entry);
        }
    }
    let mut names = Vec::new();
    for (rel, path) in files {
        let change = match page_size(&path)? {
            Some(page_size) => ChangeModel::Pages { page_size },
            None => ChangeModel::Any,
        };
        match Entry::from_path(rel.clone(), &path, change) {
            Ok(Some(mut entry)) if entry.kind == EntryKind::File => {
                if !reuse_unchanged {
                    entry.fs_identity = None;
                }
                entries.push(entry);
                names.push(rel);
            }
            Ok(_) => {}
            Err(SourceError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                // A database removed while the backup runs; its removal is in the logs.
                warnings.push(format!("data file `{rel}` vanished before it was stored"));
            }
            Err(e) => return Err(e),
        }
    }
    Ok((entries, names))
}

/// `(path in backup, path on disk)` of every data file, sorted by path in the backup.
fn data_files(
    layout: &Layout,
    tools: &BdbTools,
    warnings: &mut Vec<String>,
) -> Result<Vec<(String, PathBuf)>, SourceError> {
    let mut found: BTreeMap<String, PathBuf> = BTreeMap::new();
    let listed = tools.run("archive", &archive_args(&layout.home, &["-s", "-a"]))?;
    for line in listed.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = PathBuf::from(line);
        let path = if path.is_absolute() {
            path
        } else {
            layout
                .data_dirs
                .first()
                .map_or_else(|| layout.home.join(&path), |d| d.join(&path))
        };
        match std::fs::canonicalize(&path) {
            Ok(path) => {
                found.insert(layout.relative(&path)?, path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                warnings.push(format!(
                    "`db_archive -s` listed `{}`, which no longer exists",
                    path.display()
                ));
            }
            Err(e) => return Err(SourceError::io("reading metadata of", path, e)),
        }
    }
    // The reference guide warns that `db_archive` omits databases without an open handle during
    // the current logs' lifetime, and recommends copying a separate data directory whole.
    for dir in &layout.data_dirs {
        let whole = dir != &layout.home && dir != &layout.log_dir;
        for path in files_under(dir, whole)? {
            if !whole && page_size(&path)?.is_none() {
                continue;
            }
            let rel = layout.relative(&path)?;
            if is_environment_file(&rel) {
                continue;
            }
            found.entry(rel).or_insert(path);
        }
    }
    Ok(found.into_iter().collect())
}

/// Regular files in `dir` (and below it when `recursive`), skipping files being copied.
fn files_under(dir: &Path, recursive: bool) -> Result<Vec<PathBuf>, SourceError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let read = std::fs::read_dir(&dir).map_err(|e| SourceError::io("listing", &dir, e))?;
        for item in read {
            let item = item.map_err(|e| SourceError::io("listing", &dir, e))?;
            let Ok(file_type) = item.file_type() else {
                continue;
            };
            if file_type.is_dir() && recursive {
                stack.push(item.path());
            } else if file_type.is_file()
                && !item.file_name().to_string_lossy().ends_with(TMP_SUFFIX)
            {
                out.push(item.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Files of the environment itself, never data: regions, logs, DB_CONFIG, a standby's state.
fn is_environment_file(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    name.starts_with("__db.")
        || log_number(name).is_some()
        || name == "DB_CONFIG"
        || name == STANDBY_STATE
        || name.ends_with(TMP_SUFFIX)
}

/// The page size from a database file's metadata page, or `None` if it is not a Berkeley DB
/// database (btree, hash, recno, queue or heap).
fn page_size(path: &Path) -> Result<Option<u32>, SourceError> {
    let mut header = [0u8; 24];
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(SourceError::io("reading the header of", path, e)),
    };
    if file.read_exact(&mut header).is_err() {
        return Ok(None);
    }
    Ok(page_size_from_header(&header))
}

/// Reads the generic metadata page header: LSN (8 bytes), page number (4), magic (4), version
/// (4), page size (4), in the byte order of the machine that created the file.
fn page_size_from_header(header: &[u8; 24]) -> Option<u32> {
    // btree (and recno), hash, queue, heap.
    const MAGICS: [u32; 4] = [0x0005_3162, 0x0006_1561, 0x0004_2253, 0x0007_4582];
    let word = |at: usize| -> Option<[u8; 4]> { header.get(at..at + 4)?.try_into().ok() };
    let (magic, size) = (word(12)?, word(20)?);
    let (magic, size) = if MAGICS.contains(&u32::from_le_bytes(magic)) {
        (u32::from_le_bytes(magic), u32::from_le_bytes(size))
    } else {
        // A file from a machine of the other byte order.
        (
            u32::from_le_bytes(magic).swap_bytes(),
            u32::from_le_bytes(size).swap_bytes(),
        )
    };
    (MAGICS.contains(&magic) && size.is_power_of_two() && (512..=65536).contains(&size))
        .then_some(size)
}

/// The region files (`__db.NNN`) directly in `dir`.
fn region_files(dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SourceError::io("listing", dir, e)),
    };
    let mut out = Vec::new();
    for item in read {
        let item = item.map_err(|e| SourceError::io("listing", dir, e))?;
        if item.file_name().to_string_lossy().starts_with("__db.") {
            out.push(item.path());
        }
    }
    out.sort();
    Ok(out)
}

fn remove_file(path: &Path) -> Result<(), SourceError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SourceError::io("removing", path, e)),
    }
}

/// Runs `db_recover` (catastrophic with `-c`) in `home`; returns the steps taken.
fn recover(tools: &BdbTools, home: &Path, catastrophic: bool) -> Result<Vec<String>, SourceError> {
    let mut args: Vec<OsString> = Vec::new();
    if catastrophic {
        args.push("-c".into());
    }
    args.push("-v".into());
    args.push("-h".into());
    args.push(home.as_os_str().to_owned());
    let started = std::time::Instant::now();
    let out = tools.run("recover", &args)?;
    let mut steps = vec![format!(
        "ran {} recovery (db_recover{}) in `{}` in {} ms",
        if catastrophic {
            "catastrophic"
        } else {
            "normal"
        },
        if catastrophic { " -c" } else { "" },
        home.display(),
        started.elapsed().as_millis()
    )];
    steps.extend(
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("db_recover: {}", l.trim())),
    );
    Ok(steps)
}

/// Runs `db_verify` on each data file (paths relative to `home`); returns a step per file.
fn verify_files(
    tools: &BdbTools,
    home: &Path,
    files: &[String],
) -> Result<Vec<String>, SourceError> {
    let mut steps = Vec::new();
    for rel in files {
        let (path, found) = crate::restored::lookup(home, rel, crate::restored::Need::File)?;
        if found.is_none() || page_size(&path)?.is_none() {
            continue;
        }
        let args: Vec<OsString> = vec![
            "-h".into(),
            home.as_os_str().to_owned(),
            path.as_os_str().to_owned(),
        ];
        tools.run("verify", &args)?;
        steps.push(format!("db_verify: `{rel}` is sound"));
    }
    Ok(steps)
}

/// Checks a restored, recovered environment with `db_verify`: every Berkeley DB file among the
/// data files it finds (as a backup would list them). For `backstop verify` restoring to a
/// scratch directory.
pub fn verify_environment(home: &Path, tools: &BdbTools) -> Result<Vec<String>, SourceError> {
    let layout = Layout::read(home, &[], None)?;
    let mut rels = Vec::new();
    for dir in &layout.data_dirs {
        for path in files_under(dir, dir != &layout.home)? {
            let rel = layout.relative(&path)?;
            if !is_environment_file(&rel) {
                rels.push(rel);
            }
        }
    }
    verify_files(tools, &layout.home, &rels)
}

enum Step {
    Data(Vec<Entry>),
    Logs,
    Done,
}

/// What the logs phase handed to the engine, for `finish`.
struct StoredLogs {
    first: u32,
    last: u32,
    full_logs: Vec<String>,
    head: Option<(u32, String)>,
}

struct BdbSession {
    tools: BdbTools,
    layout: Layout,
    cancel: crate::CancelToken,
    step: Step,
    data_files: Vec<String>,
    logs_at_begin: Vec<LogFile>,
    needed_from: u32,
    full: bool,
    epoch: String,
    warnings: Vec<String>,
    stored: Option<StoredLogs>,
}

impl BdbSession {
    /// Lists the logs after the data files are stored, checking that nothing the data copy may
    /// need was removed meanwhile.
    fn logs_phase(&mut self) -> Result<Phase, SourceError> {
        let logs = list_logs(&self.tools, &self.layout)?;
        let present: BTreeSet<u32> = logs.iter().map(|l| l.number).collect();
        let last_at_begin = last_number(&self.logs_at_begin);
        if let Some(missing) = (self.needed_from..=last_at_begin).find(|n| !present.contains(n)) {
            return Err(SourceError::Procedure(format!(
                "{} was removed from `{}` while the backup ran, after the data files were \
                 copied; the copy cannot be recovered without it. Something archives logs \
                 behind Backstop (db_archive -d, DB_LOG_AUTO_REMOVE): remove logs only after \
                 they are stored, then run the backup again",
                log_name(missing),
                self.layout.home.display()
            )));
        }
        let mut entries = Vec::new();
        if self.layout.log_dir != self.layout.home {
            let rel = self.layout.relative(&self.layout.log_dir)?;
            if let Some(entry) = Entry::from_path(rel, &self.layout.log_dir, ChangeModel::Any)? {
                entries.push(entry);
            }
        }
        let last = last_number(&logs);
        let mut full_logs = Vec::new();
        for log in &logs {
            let rel = self.layout.relative(&log.path)?;
            let current = log.number == last;
            let change = if current {
                ChangeModel::AppendOnly
            } else {
                ChangeModel::Immutable { identity: None }
            };
            let Some(mut entry) = Entry::from_path(rel, &log.path, change)? else {
                continue;
            };
            if current {
                // Preallocated: size and mtime say nothing certain about what is written.
                entry.fs_identity = None;
            } else {
                let id = format!("{}:{}", log.name(), entry.size);
                entry.change = ChangeModel::Immutable {
                    identity: Some(format!("{id}:{}", self.epoch)),
                };
                full_logs.push(id);
            }
            entries.push(entry);
        }
        let config = self.layout.home.join("DB_CONFIG");
        if let Some(StoredConfig { bytes, warnings }) = stored_config(&self.layout.home)? {
            use std::os::unix::fs::MetadataExt;
            let md = std::fs::metadata(&config)
                .map_err(|e| SourceError::io("reading metadata of", &config, e))?;
            let mtime_ns = md
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(md.mtime_nsec());
            let mut entry = Entry::bytes("DB_CONFIG", bytes, md.mode() & 0o7777, mtime_ns);
            entry.uid = md.uid();
            entry.gid = md.gid();
            entries.push(entry);
            self.warnings.extend(warnings);
        }
        let newest_full = logs.iter().rev().find(|l| l.number != last);
        let head = match newest_full {
            Some(log) => Some((log.number, head_hash(&log.path)?)),
            None => None,
        };
        self.stored = Some(StoredLogs {
            first: first_number(&logs),
            last,
            full_logs,
            head,
        });
        Ok(Phase::new("logs", entries))
    }
}

impl Session for BdbSession {
    fn next_phase(&mut self) -> Result<Option<Phase>, SourceError> {
        if self.cancel.is_cancelled() {
            return Err(SourceError::Cancelled);
        }
        match std::mem::replace(&mut self.step, Step::Done) {
            Step::Data(entries) => {
                self.step = Step::Logs;
                Ok(Some(Phase::new("data", entries)))
            }
            Step::Logs => Ok(Some(self.logs_phase()?)),
            Step::Done => Ok(None),
        }
    }

    fn finish(self: Box<Self>) -> Result<SessionOutcome, SourceError> {
        let Some(stored) = self.stored else {
            return Err(SourceError::Procedure(
                "the Berkeley DB session was finished before its log files were listed; the \
                 backup is incomplete"
                    .into(),
            ));
        };
        let mut meta = BTreeMap::new();
        meta.insert("bdb.format".to_owned(), META_FORMAT.to_owned());
        meta.insert("bdb.epoch".to_owned(), self.epoch.clone());
        meta.insert("bdb.first_log".to_owned(), stored.first.to_string());
        meta.insert("bdb.last_log".to_owned(), stored.last.to_string());
        meta.insert("bdb.needed_from".to_owned(), self.needed_from.to_string());
        meta.insert("bdb.full".to_owned(), self.full.to_string());
        meta.insert("bdb.stored_logs".to_owned(), stored.full_logs.join(","));
        if let Some((number, hash)) = &stored.head {
            meta.insert(
                "bdb.head".to_owned(),
                format!("{}:{hash}", log_name(*number)),
            );
        }
        let profile = RestoreProfile::new("bdb")
            .with_param("recovery", "catastrophic")
            .with_param("data_files", self.data_files.join("\n"))
            .with_param("first_log", log_name(stored.first))
            .with_param("last_log", log_name(stored.last));
        Ok(SessionOutcome {
            restore_profile: profile,
            source_meta: meta,
            pause_window: None,
            warnings: self.warnings,
        })
    }
}

/// The log files that may be removed from the live environment now: those `db_archive` (no
/// flags) says are no longer needed **and** that the latest backup holds in full (by name and
/// size). A log that no backup holds is never among them, so archival cannot outrun the backups.
///
/// `latest_backup_source_meta` is the `source_meta` of the latest backup of this environment.
pub fn archivable_logs(
    env_home: &Path,
    latest_backup_source_meta: &BTreeMap<String, String>,
    tools: &BdbTools,
) -> Result<Vec<PathBuf>, SourceError> {
    let Some(meta) = ParentMeta::parse(latest_backup_source_meta) else {
        return Err(SourceError::Procedure(
            "the backup given is not a Berkeley DB backup (its source_meta has no `bdb.*` \
             facts); pass the latest backup of this environment"
                .into(),
        ));
    };
    let layout = Layout::read(env_home, &[], None)?;
    let out = tools.run("archive", &archive_args(&layout.home, &["-a"]))?;
    let mut paths = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = PathBuf::from(line);
        let path = if path.is_absolute() {
            path
        } else {
            layout.log_dir.join(path)
        };
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        let size = match std::fs::metadata(&path) {
            Ok(md) => md.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(SourceError::io("reading metadata of", path, e)),
        };
        if meta.stored_logs.contains(&format!("{name}:{size}")) {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// Removes [`archivable_logs`] from the live environment and returns what it removed. The safe
/// replacement for `db_archive -d`: only logs the latest backup holds are removed.
pub fn remove_archived_logs(
    env_home: &Path,
    latest_backup_source_meta: &BTreeMap<String, String>,
    tools: &BdbTools,
) -> Result<Vec<PathBuf>, SourceError> {
    let logs = archivable_logs(env_home, latest_backup_source_meta, tools)?;
    for log in &logs {
        remove_file(log)?;
        tracing::info!(log = %log.display(), "removed a log file the latest backup holds");
    }
    Ok(logs)
}

/// Brings the hot standby in `standby_dir` up to date with the live environment in `env_home`
/// (settings from its `DB_CONFIG`). See [`standby`] for the procedure and the failover.
pub fn refresh_standby(
    env_home: &Path,
    standby_dir: &Path,
    tools: &BdbTools,
) -> Result<StandbyReport, SourceError> {
    BdbSource::new(env_home)
        .with_tools(tools.clone())
        .refresh_standby(standby_dir)
}

pub use standby::{StandbyReport, promote_standby, remove_standby_logs};

pub mod standby {
    //! A hot standby: a directory kept in close sync with a live environment by Berkeley DB's
    //! "Hot failover" procedure, without disturbing the environment.
    //!
    //! The first refresh copies the data files, then every log file, then runs `db_recover -c`
    //! in the standby. Each later refresh copies the log files that are new or still growing
    //! (every log from the previous refresh's last one on: recovery in the standby writes to
    //! that one, so it is always replaced), removes the standby's logs that the previous recovery
    //! no longer needed, and runs `db_recover -c` again, which is idempotent. Files are copied to
    //! temporary names and renamed, and the standby's state is written last, so a crash at any
    //! point leaves a standby that the next refresh repairs. If the live environment removed a
    //! log file before the standby copied it, the standby is seeded again from scratch.
    //!
    //! Failover: stop refreshing, [`promote_standby`] (after which refreshes refuse to touch the
    //! directory), and start the application on the standby directory with its usual flags plus
    //! `DB_RECOVER`; the standby was left consistent by the last `db_recover -c`.

    use std::ffi::OsString;
    use std::path::{Path, PathBuf};

    use super::{BdbSource, LogFile, STANDBY_STATE, TMP_SUFFIX};
    use crate::SourceError;

    /// What one standby refresh did.
    #[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    pub struct StandbyReport {
        /// Whether the data files were copied (the first refresh, or after a log gap).
        pub seeded: bool,
        /// Why the data files were copied again, when it was not the first refresh.
        pub reseed_reason: Option<String>,
        /// Data files copied.
        pub data_files_copied: u64,
        /// Log files copied, by name.
        pub logs_copied: Vec<String>,
        /// Log files removed from the standby (no longer needed, or written by its recovery).
        pub logs_removed: Vec<String>,
        /// Bytes copied.
        pub bytes_copied: u64,
        /// The first and last log files the standby holds now.
        pub first_log: u32,
        /// The last log file the standby holds now (the live environment's current one).
        pub last_log: u32,
        /// What recovery reported.
        pub recovery: Vec<String>,
    }

    /// The standby's bookkeeping, written last by each refresh.
    #[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    struct State {
        version: u32,
        /// Canonical home of the live environment.
        primary: String,
        /// Whether the first full copy and recovery completed.
        seeded: bool,
        /// Whether the standby became a primary; refreshes then refuse.
        promoted: bool,
        /// The live environment's current log at the last refresh.
        last_log: u32,
        /// Logs older than this were not needed by the last refresh's recovery.
        keep_from: u32,
    }

    fn state_path(standby: &Path) -> PathBuf {
        standby.join(STANDBY_STATE)
    }

    fn read_state(standby: &Path) -> Result<Option<State>, SourceError> {
        let path = state_path(standby);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                SourceError::Procedure(format!(
                    "the standby state `{}` is unreadable ({e}); remove the standby directory \
                     and refresh again to seed it anew",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SourceError::io("reading", path, e)),
        }
    }

    fn write_state(standby: &Path, state: &State) -> Result<(), SourceError> {
        let path = state_path(standby);
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| SourceError::Procedure(format!("encoding the standby state: {e}")))?;
        write_atomically(&path, &bytes)
    }

    fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SourceError> {
        use std::io::Write;
        let tmp = tmp_path(path);
        let mut file =
            std::fs::File::create(&tmp).map_err(|e| SourceError::io("creating", &tmp, e))?;
        file.write_all(bytes)
            .map_err(|e| SourceError::io("writing", &tmp, e))?;
        file.sync_all()
            .map_err(|e| SourceError::io("syncing", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| SourceError::io("renaming into place", path, e))
    }

    fn tmp_path(path: &Path) -> PathBuf {
        let mut name = path.file_name().map(OsString::from).unwrap_or_default();
        name.push(TMP_SUFFIX);
        path.with_file_name(name)
    }

    /// Copies `from` to `to` through a temporary name; returns the bytes copied.
    fn copy_file(from: &Path, to: &Path) -> Result<u64, SourceError> {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| SourceError::io("creating", parent, e))?;
        }
        let tmp = tmp_path(to);
        let bytes = std::fs::copy(from, &tmp).map_err(|e| SourceError::io("copying", from, e))?;
        let file = std::fs::File::open(&tmp).map_err(|e| SourceError::io("opening", &tmp, e))?;
        file.sync_all()
            .map_err(|e| SourceError::io("syncing", &tmp, e))?;
        std::fs::rename(&tmp, to).map_err(|e| SourceError::io("renaming into place", to, e))?;
        Ok(bytes)
    }

    /// Log files in the standby's log directory, by number.
    fn standby_logs(log_dir: &Path) -> Result<Vec<LogFile>, SourceError> {
        let read = match std::fs::read_dir(log_dir) {
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(SourceError::io("listing", log_dir, e)),
        };
        let mut logs = Vec::new();
        for item in read {
            let item = item.map_err(|e| SourceError::io("listing", log_dir, e))?;
            if let Some(number) = item.file_name().to_str().and_then(super::log_number) {
                logs.push(LogFile {
                    number,
                    path: item.path(),
                });
            }
        }
        logs.sort_by_key(|l| l.number);
        Ok(logs)
    }

    /// Leftovers of a copy interrupted by a crash.
    fn remove_temporaries(dir: &Path) -> Result<(), SourceError> {
        let read = match std::fs::read_dir(dir) {
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(SourceError::io("listing", dir, e)),
        };
        for item in read {
            let item = item.map_err(|e| SourceError::io("listing", dir, e))?;
            let path = item.path();
            if item.file_type().is_ok_and(|t| t.is_dir()) {
                remove_temporaries(&path)?;
            } else if item.file_name().to_string_lossy().ends_with(TMP_SUFFIX) {
                super::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Marks `standby_dir` as promoted to primary: every later refresh refuses to touch it, so
    /// the old primary's logs can never overwrite the new primary's. Then start the application
    /// on the directory with `DB_RECOVER`.
    pub fn promote_standby(standby_dir: &Path) -> Result<(), SourceError> {
        let Some(mut state) = read_state(standby_dir)? else {
            return Err(SourceError::Procedure(format!(
                "`{}` is not a Backstop standby (no `{STANDBY_STATE}`)",
                standby_dir.display()
            )));
        };
        if !state.seeded {
            return Err(SourceError::Procedure(format!(
                "the standby `{}` was never completely seeded (its first refresh was \
                 interrupted); it cannot become a primary. Refresh it first",
                standby_dir.display()
            )));
        }
        state.promoted = true;
        write_state(standby_dir, &state)
    }

    /// Removes the log and region files of a standby directory, before a restore from the
    /// repository overwrites it (the repository-based standby path): logs written by the
    /// standby's own recovery must not be replayed with the restored ones. Returns what it
    /// removed.
    pub fn remove_standby_logs(standby_dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
        let layout = standby_layout(standby_dir)?;
        let mut removed = Vec::new();
        for log in standby_logs(&layout.1)? {
            super::remove_file(&log.path)?;
            removed.push(log.path);
        }
        for region in super::region_files(standby_dir)? {
            super::remove_file(&region)?;
            removed.push(region);
        }
        Ok(removed)
    }

    /// The standby's home and log directory, as its own DB_CONFIG says.
    fn standby_layout(standby: &Path) -> Result<(PathBuf, PathBuf), SourceError> {
        // The standby's logs are removed by name from this directory: it must be the standby's.
        if let Ok(text) = std::fs::read_to_string(standby.join("DB_CONFIG")) {
            super::check_restored_config(&text, &standby.join("DB_CONFIG"))?;
        }
        let config = super::read_db_config(standby)?;
        let log_dir = config
            .log_dir
            .map_or_else(|| standby.to_path_buf(), |d| standby.join(d));
        Ok((standby.to_path_buf(), log_dir))
    }

    pub(super) fn refresh(
        source: &BdbSource,
        standby: &Path,
    ) -> Result<StandbyReport, SourceError> {
        let layout = source.layout()?;
        let primary = layout.home.to_string_lossy().into_owned();
        std::fs::create_dir_all(standby)
            .map_err(|e| SourceError::io("creating the standby directory", standby, e))?;
        let standby = std::fs::canonicalize(standby)
            .map_err(|e| SourceError::io("opening the standby directory", standby, e))?;
        if standby == layout.home
            || standby.starts_with(&layout.home)
            || layout.home.starts_with(&standby)
        {
            return Err(SourceError::Procedure(format!(
                "the standby `{}` and the environment `{}` must not contain each other",
                standby.display(),
                layout.home.display()
            )));
        }
        if let Some(region) = super::region_files(&standby)?.first() {
            return Err(SourceError::Procedure(format!(
                "the standby `{}` has region file `{}`: a process has it open as an environment \
                 (after a failover it is a primary). Refusing to refresh it",
                standby.display(),
                region.display()
            )));
        }
        let state = match read_state(&standby)? {
            Some(state) if state.promoted => {
                return Err(SourceError::Procedure(format!(
                    "the standby `{}` was promoted to primary; refreshing it would destroy it",
                    standby.display()
                )));
            }
            Some(state) if state.primary != primary => {
                return Err(SourceError::Procedure(format!(
                    "`{}` is the standby of `{}`, not of `{primary}`",
                    standby.display(),
                    state.primary
                )));
            }
            Some(state) => Some(state),
            None => {
                let mut items = std::fs::read_dir(&standby)
                    .map_err(|e| SourceError::io("listing", &standby, e))?;
                if items.next().is_some() {
                    return Err(SourceError::Procedure(format!(
                        "`{}` is not empty and is not a Backstop standby; give an empty or new \
                         directory",
                        standby.display()
                    )));
                }
                None
            }
        };
        remove_temporaries(&standby)?;
        match state {
            Some(state) if state.seeded => incremental(source, &layout, &standby, state),
            _ => seed(source, &layout, &standby, None),
        }
    }

    /// The first full copy: data files, then every log, then catastrophic recovery.
    fn seed(
        source: &BdbSource,
        layout: &super::Layout,
        standby: &Path,
        reason: Option<String>,
    ) -> Result<StandbyReport, SourceError> {
        let tools = &source.tools;
        let primary = layout.home.to_string_lossy().into_owned();
        write_state(
            standby,
            &State {
                version: 1,
                primary,
                seeded: false,
                promoted: false,
                last_log: 0,
                keep_from: 0,
            },
        )?;
        let mut report = StandbyReport {
            seeded: true,
            reseed_reason: reason,
            ..StandbyReport::default()
        };
        copy_config(layout, standby, &mut report)?;
        let (_, standby_log_dir) = standby_layout(standby)?;
        for log in standby_logs(&standby_log_dir)? {
            super::remove_file(&log.path)?;
            report.logs_removed.push(
                log.path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
        }
        let logs_before = super::list_logs(tools, layout)?;
        let needed_from = super::needed_from(tools, layout, &logs_before)?;
        let mut warnings = Vec::new();
        for (rel, path) in super::data_files(layout, tools, &mut warnings)? {
            match copy_file(&path, &standby.join(&rel)) {
                Ok(bytes) => {
                    report.bytes_copied += bytes;
                    report.data_files_copied += 1;
                }
                Err(SourceError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        for warning in warnings {
            tracing::warn!("{warning}");
        }
        let logs = super::list_logs(tools, layout)?;
        check_still_present(layout, &logs, needed_from, super::last_number(&logs_before))?;
        copy_logs(layout, standby, &logs, |_| true, &mut report)?;
        report.recovery = super::recover(tools, standby, true)?;
        finish(layout, standby, &logs, needed_from, report)
    }

    /// A later refresh: new and growing logs, then catastrophic recovery again.
    fn incremental(
        source: &BdbSource,
        layout: &super::Layout,
        standby: &Path,
        state: State,
    ) -> Result<StandbyReport, SourceError> {
        let tools = &source.tools;
        let needed_from = super::needed_from(tools, layout, &super::list_logs(tools, layout)?)?;
        let logs = super::list_logs(tools, layout)?;
        let (first, last) = (super::first_number(&logs), super::last_number(&logs));
        if first > state.last_log {
            let why = format!(
                "the live environment removed {} before the standby copied all of it; the \
                 standby was seeded again",
                super::log_name(state.last_log)
            );
            tracing::warn!(standby = %standby.display(), "{why}");
            return seed(source, layout, standby, Some(why));
        }
        if last < state.last_log {
            let why = format!(
                "the live environment's log went back from {} to {} (recreated or restored); the \
                 standby was seeded again",
                super::log_name(state.last_log),
                super::log_name(last)
            );
            tracing::warn!(standby = %standby.display(), "{why}");
            return seed(source, layout, standby, Some(why));
        }
        let mut report = StandbyReport::default();
        copy_config(layout, standby, &mut report)?;
        let (_, standby_log_dir) = standby_layout(standby)?;
        let have: Vec<LogFile> = standby_logs(&standby_log_dir)?;
        for log in &have {
            // Older logs were not needed by the last recovery; newer ones than the live current
            // log can only have been written by the standby's own recovery.
            if log.number < state.keep_from || log.number > last {
                super::remove_file(&log.path)?;
                report.logs_removed.push(log.name());
            }
        }
        let have: std::collections::BTreeSet<u32> = have.iter().map(|l| l.number).collect();
        copy_logs(
            layout,
            standby,
            &logs,
            |log| {
                log.number >= state.last_log
                    || (log.number >= state.keep_from && !have.contains(&log.number))
            },
            &mut report,
        )?;
        report.recovery = super::recover(tools, standby, true)?;
        finish(layout, standby, &logs, needed_from, report)
    }

    fn finish(
        layout: &super::Layout,
        standby: &Path,
        logs: &[LogFile],
        needed_from: u32,
        mut report: StandbyReport,
    ) -> Result<StandbyReport, SourceError> {
        let last_log = super::last_number(logs);
        write_state(
            standby,
            &State {
                version: 1,
                primary: layout.home.to_string_lossy().into_owned(),
                seeded: true,
                promoted: false,
                last_log,
                keep_from: needed_from.min(last_log),
            },
        )?;
        let (_, standby_log_dir) = standby_layout(standby)?;
        report.first_log = standby_logs(&standby_log_dir)?
            .first()
            .map_or(0, |l| l.number);
        report.last_log = last_log;
        Ok(report)
    }

    fn check_still_present(
        layout: &super::Layout,
        logs: &[LogFile],
        needed_from: u32,
        last_before: u32,
    ) -> Result<(), SourceError> {
        let present: std::collections::BTreeSet<u32> = logs.iter().map(|l| l.number).collect();
        match (needed_from..=last_before).find(|n| !present.contains(n)) {
            Some(missing) => Err(SourceError::Procedure(format!(
                "{} was removed from `{}` while the standby was being seeded; run the refresh \
                 again (and remove logs only after they are stored)",
                super::log_name(missing),
                layout.home.display()
            ))),
            None => Ok(()),
        }
    }

    fn copy_config(
        layout: &super::Layout,
        standby: &Path,
        report: &mut StandbyReport,
    ) -> Result<(), SourceError> {
        // Rewritten like a backup's copy: recovery in the standby must open the standby's files,
        // never the live environment's (an absolute `set_data_dir` would name those).
        if let Some(super::StoredConfig { bytes, warnings }) = super::stored_config(&layout.home)? {
            for warning in warnings {
                tracing::warn!(standby = %standby.display(), "{warning}");
            }
            write_atomically(&standby.join("DB_CONFIG"), &bytes)?;
            report.bytes_copied += bytes.len() as u64;
        }
        Ok(())
    }

    fn copy_logs(
        layout: &super::Layout,
        standby: &Path,
        logs: &[LogFile],
        wanted: impl Fn(&LogFile) -> bool,
        report: &mut StandbyReport,
    ) -> Result<(), SourceError> {
        for log in logs.iter().filter(|l| wanted(l)) {
            let rel = layout.relative(&log.path)?;
            report.bytes_copied += copy_file(&log.path, &standby.join(rel))?;
            report.logs_copied.push(log.name());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Pure parsing, and the procedure against a real environment under a writer process,
    //! copied with `testing::copy_session` (no repository in between).

    use super::*;
    use crate::testing::bdb_bank::{BankState, BankWriter, check_state, prerequisites};
    use std::process::Command;

    #[test]
    fn parses_db_config_directories() {
        let config = parse_db_config(
            "# comment\nset_lg_max 262144\nset_data_dir data\nadd_data_dir more\n  set_lg_dir  logs \n",
        );
        assert_eq!(
            config.data_dirs,
            vec![PathBuf::from("data"), PathBuf::from("more")]
        );
        assert_eq!(config.log_dir, Some(PathBuf::from("logs")));
        assert_eq!(parse_db_config("set_data_dir\n"), DbConfig::default());
    }

    /// Directory settings are stored relative to the home; one outside it is commented out.
    #[test]
    fn stored_db_config_names_directories_relative_to_the_home() {
        let root = tempfile::tempdir().unwrap();
        let home = std::fs::canonicalize(root.path()).unwrap().join("env");
        std::fs::create_dir_all(home.join("data")).unwrap();
        std::fs::create_dir_all(home.join("logs")).unwrap();
        let text = format!(
            "set_lg_max 262144\nset_data_dir {h}/data\nset_lg_dir {h}/logs\nadd_data_dir \
             more\nset_tmp_dir /var/tmp\nset_create_dir {h}\n",
            h = home.display()
        );
        let (stored, warnings) = self_contained_config(&text, &home);
        assert_eq!(
            stored,
            "set_lg_max 262144\nset_data_dir data\nset_lg_dir logs\nadd_data_dir more\n\
             # backstop: outside the environment home, not restored: set_tmp_dir /var/tmp\n\
             set_create_dir .\n"
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        check_restored_config(&stored, Path::new("DB_CONFIG")).unwrap();
    }

    /// A restored tree whose DB_CONFIG names directories outside it (a backup taken before
    /// DB_CONFIG was stored self-contained, or a forged one), or that holds a symlink, is
    /// refused before `db_recover` runs: recovery would open the files they lead to.
    #[test]
    fn restore_fixup_refuses_a_config_or_tree_that_leads_outside() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("restored");
        std::fs::create_dir_all(target.join("data")).unwrap();
        let no_tools = root.path().join("no-tools");
        std::fs::create_dir(&no_tools).unwrap();
        let params = RestoreParams {
            raw: false,
            options: [("db-tools".to_owned(), no_tools.display().to_string())].into(),
        };
        let profile = RestoreProfile::new("bdb");
        for line in [
            "set_data_dir /srv/app/env/data",
            "set_lg_dir ../env/logs",
            "add_data_dir data/../../x",
            "set_tmp_dir /tmp",
        ] {
            std::fs::write(target.join("DB_CONFIG"), format!("{line}\n")).unwrap();
            let err = restore_fixup(&profile, &target, &params)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(line) && err.contains("outside"),
                "{line}: {err}"
            );
        }
        // Relative directories pass the check (and then fail for want of the tools here).
        std::fs::write(target.join("DB_CONFIG"), "set_data_dir data\n").unwrap();
        let err = restore_fixup(&profile, &target, &params)
            .unwrap_err()
            .to_string();
        assert!(err.contains("db_recover"), "{err}");
        // A data file (or DB_CONFIG) that is a link out of the tree.
        let outside = root.path().join("live.db");
        std::fs::write(&outside, b"live").unwrap();
        std::os::unix::fs::symlink(&outside, target.join("data/accounts.db")).unwrap();
        let err = restore_fixup(&profile, &target, &params)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("symlink") && err.contains("accounts.db"),
            "{err}"
        );
        assert_eq!(std::fs::read(&outside).unwrap(), b"live");
    }

    #[test]
    fn log_names_round_trip() {
        assert_eq!(log_number("log.0000000012"), Some(12));
        assert_eq!(log_name(12), "log.0000000012");
        assert_eq!(log_number("log.12"), None);
        assert_eq!(log_number("log.000000001x"), None);
        assert_eq!(log_number("__db.001"), None);
    }

    #[test]
    fn page_size_comes_from_the_metadata_page_in_either_byte_order() {
        let mut header = [0u8; 24];
        header[12..16].copy_from_slice(&0x0005_3162u32.to_le_bytes());
        header[20..24].copy_from_slice(&8192u32.to_le_bytes());
        assert_eq!(page_size_from_header(&header), Some(8192));
        header[12..16].copy_from_slice(&0x0006_1561u32.swap_bytes().to_le_bytes());
        header[20..24].copy_from_slice(&4096u32.swap_bytes().to_le_bytes());
        assert_eq!(page_size_from_header(&header), Some(4096));
        header[12..16].copy_from_slice(&0x1234_5678u32.to_le_bytes());
        assert_eq!(page_size_from_header(&header), None);
    }

    #[test]
    fn parent_meta_round_trips_through_source_meta() {
        let mut meta = BTreeMap::new();
        meta.insert("bdb.format".to_owned(), META_FORMAT.to_owned());
        meta.insert("bdb.epoch".to_owned(), "e1".to_owned());
        meta.insert("bdb.last_log".to_owned(), "7".to_owned());
        meta.insert("bdb.needed_from".to_owned(), "5".to_owned());
        meta.insert("bdb.head".to_owned(), "log.0000000006:abcd".to_owned());
        meta.insert(
            "bdb.stored_logs".to_owned(),
            "log.0000000005:10,log.0000000006:10".to_owned(),
        );
        let parent = ParentMeta::parse(&meta).unwrap();
        assert_eq!(parent.last_log, 7);
        assert_eq!(parent.head, Some((6, "abcd".to_owned())));
        assert!(parent.stored_logs.contains("log.0000000006:10"));
        meta.insert("bdb.format".to_owned(), "0".to_owned());
        assert_eq!(ParentMeta::parse(&meta), None);
    }

    #[test]
    fn missing_tools_are_reported_with_what_to_do() {
        let empty = tempfile::tempdir().unwrap();
        let err = BdbTools::in_dir(empty.path())
            .find("recover")
            .unwrap_err()
            .to_string();
        assert!(err.contains("db5.3-util"), "{err}");
        assert!(err.contains("db-tools"), "{err}");
    }

    #[test]
    fn finds_versioned_tool_names() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("db6.2_archive");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(BdbTools::in_dir(dir.path()).find("archive").unwrap(), tool);
    }

    // ---- against a real environment ----

    const ACCOUNTS: u64 = 200;

    fn start_writer(root: &Path, data_dir: Option<&str>) -> BankWriter {
        BankWriter::start(
            &root.join("env"),
            root.join("committed"),
            ACCOUNTS,
            data_dir,
            120,
        )
    }

    /// Applies the restore profile (recovery + db_verify) and checks the invariant.
    fn recover_and_check(profile: &RestoreProfile, dir: &Path) -> BankState {
        let params = RestoreParams {
            raw: false,
            options: [("verify".to_owned(), "true".to_owned())].into(),
        };
        let steps = crate::restore_profile::apply(profile, dir, &params).unwrap();
        assert!(
            steps.iter().any(|s| s.contains("catastrophic")),
            "{steps:?}"
        );
        assert!(
            steps.iter().filter(|s| s.starts_with("db_verify")).count() >= 2,
            "{steps:?}"
        );
        check_state(dir, ACCOUNTS)
    }

    fn backup_to(
        source: &mut BdbSource,
        parent: Option<&SessionOutcome>,
        dir: &Path,
    ) -> crate::testing::CopiedSession {
        let ctx = SessionContext {
            parent_meta: parent.map(|o| o.source_meta.clone()),
            ..SessionContext::default()
        };
        let session = source.begin(&ctx).unwrap();
        crate::testing::copy_session(session, dir).unwrap()
    }

    #[test]
    fn hot_copies_with_a_data_directory_recover_consistent() {
        if !prerequisites("bdb") {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let mut writer = start_writer(root.path(), Some("data"));
        let mut source = BdbSource::new(&writer.home);
        let mut parent: Option<SessionOutcome> = None;
        for round in 0..3 {
            let before = writer.committed();
            let dir = root.path().join(format!("copy{round}"));
            let copied = backup_to(&mut source, parent.as_ref(), &dir);
            let names: Vec<&str> = copied.phases.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["data", "logs"]);
            let (_, data) = &copied.phases[0];
            assert!(data.contains(&"data/accounts.db".to_owned()), "{data:?}");
            assert!(data.contains(&"data/history.db".to_owned()), "{data:?}");
            assert!(data.iter().all(|p| !p.contains("log.")), "{data:?}");
            let (_, logs) = &copied.phases[1];
            assert!(logs.iter().any(|p| p == "DB_CONFIG"), "{logs:?}");
            assert_eq!(
                copied.outcome.source_meta["bdb.full"],
                (round == 0).to_string()
            );
            assert!(
                copied.outcome.warnings.is_empty(),
                "{:?}",
                copied.outcome.warnings
            );
            let state = recover_and_check(&copied.outcome.restore_profile, &dir);
            assert!(
                state.seq >= before,
                "backup {round} lost commits: {} < {before}",
                state.seq
            );
            parent = Some(copied.outcome);
            let next = writer.committed() + 100;
            writer.wait_until("more commits", |w| w.committed() >= next);
        }
    }

    #[test]
    fn log_gap_makes_a_full_backup_and_safe_archival_keeps_the_chain() {
        if !prerequisites("bdb") {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let mut writer = start_writer(root.path(), None);
        let tools = BdbTools::from_path();
        let mut source = BdbSource::new(&writer.home);
        let first = backup_to(&mut source, None, &root.path().join("b1"));
        let last1: u32 = first.outcome.source_meta["bdb.last_log"].parse().unwrap();

        // Safe archival: only logs the latest backup holds are removed, so the chain continues.
        writer.wait_until("two more log files", |w| {
            w.log_numbers().last().is_some_and(|&l| l >= last1 + 2)
        });
        let removed =
            remove_archived_logs(&writer.home, &first.outcome.source_meta, &tools).unwrap();
        for log in &removed {
            let name = log.file_name().unwrap().to_str().unwrap();
            assert!(
                log_number(name).unwrap() < last1,
                "{name} was not fully stored by the backup"
            );
        }
        let second = backup_to(&mut source, Some(&first.outcome), &root.path().join("b2"));
        assert!(
            second.outcome.warnings.is_empty(),
            "{:?}",
            second.outcome.warnings
        );
        assert_eq!(second.outcome.source_meta["bdb.full"], "false");
        let last2: u32 = second.outcome.source_meta["bdb.last_log"].parse().unwrap();

        // Unsafe archival (db_archive -d) removes logs no backup holds: a gap.
        writer.wait_until("two more log files", |w| {
            w.log_numbers().last().is_some_and(|&l| l >= last2 + 2)
        });
        let archive = tools.find("archive").unwrap();
        let home = writer.home.clone();
        writer.wait_until(
            "db_archive -d removes the previous backup's last log",
            |w| {
                let ok = Command::new(&archive)
                    .arg("-d")
                    .arg("-h")
                    .arg(&home)
                    .status()
                    .unwrap()
                    .success();
                ok && w.log_numbers().first().is_some_and(|&f| f > last2)
            },
        );
        let before = writer.committed();
        let third = backup_to(&mut source, Some(&second.outcome), &root.path().join("b3"));
        assert_eq!(third.outcome.source_meta["bdb.full"], "true");
        assert_ne!(
            third.outcome.source_meta["bdb.epoch"],
            second.outcome.source_meta["bdb.epoch"]
        );
        assert_eq!(
            third.outcome.warnings.len(),
            1,
            "{:?}",
            third.outcome.warnings
        );
        assert!(
            third.outcome.warnings[0].contains("log gap"),
            "{:?}",
            third.outcome.warnings
        );
        assert!(
            third.outcome.warnings[0].contains(&log_name(last2)),
            "{:?}",
            third.outcome.warnings
        );
        let state = recover_and_check(&third.outcome.restore_profile, &root.path().join("b3"));
        assert!(state.seq >= before);
    }

    #[test]
    fn standby_refreshes_under_load_and_refuses_after_promotion() {
        if !prerequisites("bdb") {
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let mut writer = start_writer(root.path(), Some("data"));
        let tools = BdbTools::from_path();
        let standby = root.path().join("standby");
        for round in 0..3 {
            let before = writer.committed();
            let report = refresh_standby(&writer.home, &standby, &tools).unwrap();
            assert_eq!(report.seeded, round == 0, "{report:?}");
            assert!(!report.logs_copied.is_empty());
            let state = check_state(&standby, ACCOUNTS);
            assert!(
                state.seq >= before,
                "refresh {round}: {} < {before}",
                state.seq
            );
            let next = writer.committed() + 200;
            writer.wait_until("more commits", |w| w.committed() >= next);
        }
        promote_standby(&standby).unwrap();
        let err = refresh_standby(&writer.home, &standby, &tools)
            .unwrap_err()
            .to_string();
        assert!(err.contains("promoted"), "{err}");
    }
}
