//! The command line as clap sees it: global options, subcommands and their arguments.
//!
//! These structs only describe the syntax; `commands/` turns them into engine options.

use std::path::PathBuf;

use backstop::{BackupId, BackupSelector};
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

/// zstd's levels: its fastest (`ZSTD_minCLevel`, `zstd --fast=131072`) to its smallest.
pub(crate) const MIN_COMPRESSION_LEVEL: i32 = -131_072;
pub(crate) const MAX_COMPRESSION_LEVEL: i32 = 22;

/// The `--help` footer; the same table is in the crate's README.
const EXIT_CODES: &str = "\
Exit codes:
  0    success
  1    failure (anything not listed below)
  2    usage error (bad arguments, no repository given)
  3    corruption found (a stored object fails its checksum, or `verify` reported problems)
  4    the repository is locked by another process
  5    wrong password (no key of the repository opens with it)
  6    not found (no repository at the location, or no such backup)
  130  interrupted (Ctrl-C); the repository stays valid, `backstop gc` removes leftovers

Environment: BACKSTOP_REPO, BACKSTOP_PASSWORD, BACKSTOP_PASSWORD_FILE, BACKSTOP_PASSWORD_COMMAND,
BACKSTOP_FROM_PASSWORD,
BACKSTOP_CONFIG, BACKSTOP_COMPRESSION, BACKSTOP_THREADS, NO_COLOR, RUST_LOG";

/// Hot, consistent, incremental, verified backups of live databases.
#[derive(Debug, Parser)]
#[command(name = "backstop", version, after_help = EXIT_CODES, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every subcommand accepts. Their own heading keeps a subcommand's help readable:
/// its options first, then these.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub(crate) struct GlobalArgs {
    /// Repository location: a directory, or a URL (`s3://BUCKET/PREFIX?endpoint=…`, `gs://`,
    /// `az://`, `webdav+https://`, `sftp://`; see `docs/object-storage.md`)
    #[arg(
        short = 'r',
        long,
        env = "BACKSTOP_REPO",
        global = true,
        value_name = "PATH_OR_URL"
    )]
    pub(crate) repo: Option<String>,

    /// Read the repository password from the first line of FILE
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        conflicts_with = "password_command"
    )]
    pub(crate) password_file: Option<PathBuf>,

    /// Run COMMAND with `sh -c` and use its output as the repository password
    #[arg(long, global = true, value_name = "COMMAND")]
    pub(crate) password_command: Option<String>,

    /// Configuration file [default: $XDG_CONFIG_HOME/backstop/config.toml]
    #[arg(long, env = "BACKSTOP_CONFIG", global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// zstd level for new data: 1 to 22, or -1 and below for zstd's fast levels (less
    /// compression, less CPU); 0 stores uncompressed. Frames of pages and small files use a
    /// level-1 setting instead where it stores them smaller [default: 3]
    #[arg(
        long,
        env = "BACKSTOP_COMPRESSION",
        global = true,
        value_name = "LEVEL",
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(i32)
            .range(i64::from(MIN_COMPRESSION_LEVEL)..=i64::from(MAX_COMPRESSION_LEVEL))
    )]
    pub(crate) compression: Option<i32>,

    /// Worker threads for chunking, hashing, compressing and encrypting [default: one per core]
    #[arg(long, env = "BACKSTOP_THREADS", global = true, value_name = "N")]
    pub(crate) threads: Option<usize>,

    /// Local cache of repository metadata [default: $XDG_CACHE_HOME/backstop]
    #[arg(long, env = "BACKSTOP_CACHE_DIR", global = true, value_name = "DIR")]
    pub(crate) cache_dir: Option<PathBuf>,

    /// Use no local metadata cache
    #[arg(long, global = true, conflicts_with = "cache_dir")]
    pub(crate) no_cache: bool,

    /// How long `backup` and `gc` wait for a conflicting lock (a running gc, or the backups a
    /// gc must wait for), e.g. `5m`; without it they fail at once with exit code 4
    #[arg(long, env = "BACKSTOP_RETRY_LOCK", global = true, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) retry_lock: Option<std::time::Duration>,

    /// Limit uploads to the repository, e.g. `50MiB` per second (0: no limit)
    #[arg(long, global = true, value_name = "BYTES_PER_SEC", value_parser = parse_rate)]
    pub(crate) limit_upload: Option<u64>,

    /// Limit downloads from the repository, e.g. `100MiB` per second (0: no limit)
    #[arg(long, global = true, value_name = "BYTES_PER_SEC", value_parser = parse_rate)]
    pub(crate) limit_download: Option<u64>,

    /// Print results as JSON on stdout: {"command": NAME, "result": ...}
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// Print only results, errors and warnings (on stderr): no progress bars, no summaries
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,

    /// Log more on stderr (-v: what is done, -vv: every file, -vvv: everything)
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub(crate) verbose: u8,
}

/// The subcommands. Source-specific commands (`demo`, `standby`, `bench`) join this enum as
/// their sources land; `Command::name` and `commands::run` are the two places to extend.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create a new repository
    Init(InitArgs),
    /// Back up a directory or a live database
    Backup(BackupArgs),
    /// List the backups in the repository
    #[command(visible_alias = "snapshots")]
    List,
    /// Show one backup
    Info(InfoArgs),
    /// Show what changed between two backups (paths added, removed, modified)
    Diff(DiffArgs),
    /// Write one file of a backup to stdout
    Dump(DumpArgs),
    /// Check that backups are complete and intact
    Verify(VerifyArgs),
    /// Restore a backup into a directory
    Restore(RestoreArgs),
    /// Delete the backups that no --keep rule keeps (newest N, daily, weekly…; per source)
    Purge(PurgeArgs),
    /// Delete one backup (its data is freed by `gc`)
    Delete(DeleteArgs),
    /// Remove data no backup references, and leftovers of interrupted backups
    Gc(GcArgs),
    /// Copy backups from another repository into this one (an offsite copy; create this one
    /// with `init --from-repo` first)
    Copy(CopyArgs),
    /// Manage the passwords of an encrypted repository
    #[command(subcommand)]
    Key(KeyCommand),
    /// Mend a damaged repository
    #[command(subcommand)]
    Repair(RepairCommand),
    /// Archive a WAL segment (PostgreSQL `archive_command = 'backstop wal-push %p'`)
    WalPush(WalPushArgs),
    /// Fetch an archived WAL segment (PostgreSQL `restore_command`)
    WalFetch(WalFetchArgs),
    /// Keep a Berkeley DB hot standby in sync (copy new logs, run recovery), or promote it
    Standby(StandbyArgs),
    /// Remove Berkeley DB log files that the latest backup holds and the environment no longer
    /// needs (the safe `db_archive -d`)
    ArchiveLogs(ArchiveLogsArgs),
    /// Run the main job on a built-in example: a live SQLite database under a writer, backed
    /// up three times, verified, copied to a second repository, restored and checked
    Demo(DemoArgs),
    /// Print a shell completion script
    Completions(CompletionsArgs),
    /// Print the man page
    Man(ManArgs),
}

impl Command {
    /// The name used in `--json` output and messages.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Init(_) => "init",
            Self::Demo(_) => "demo",
            Self::Standby(_) => "standby",
            Self::ArchiveLogs(_) => "archive-logs",
            Self::Backup(_) => "backup",
            Self::List => "list",
            Self::Info(_) => "info",
            Self::Diff(_) => "diff",
            Self::Dump(_) => "dump",
            Self::Verify(_) => "verify",
            Self::Restore(_) => "restore",
            Self::Purge(_) => "purge",
            Self::Delete(_) => "delete",
            Self::Gc(_) => "gc",
            Self::Copy(_) => "copy",
            Self::Key(KeyCommand::Add(_)) => "key add",
            Self::Key(KeyCommand::List) => "key list",
            Self::Key(KeyCommand::Remove(_)) => "key remove",
            Self::Key(KeyCommand::Passwd(_)) => "key passwd",
            Self::Repair(RepairCommand::Index(_)) => "repair index",
            Self::WalPush(_) => "wal-push",
            Self::WalFetch(_) => "wal-fetch",
            Self::Completions(_) => "completions",
            Self::Man(_) => "man",
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// Store data unencrypted (no password)
    #[arg(long, conflicts_with = "cipher")]
    pub(crate) no_encryption: bool,

    /// How to encrypt [default: xaes-256-gcm on CPUs with AES instructions, else
    /// xchacha20-poly1305]
    #[arg(long, value_enum, value_name = "CIPHER")]
    pub(crate) cipher: Option<CipherArg>,

    /// Share the key, cipher and chunking of the repository at LOCATION, so that `copy` can
    /// copy its backups here (encrypted if it is, under this repository's own password)
    #[arg(long, value_name = "LOCATION", conflicts_with_all = ["no_encryption", "cipher"])]
    pub(crate) from_repo: Option<String>,

    #[command(flatten)]
    pub(crate) from_password: FromPasswordArgs,
}

/// The password of the repository `--from-repo` names.
#[derive(Debug, Args)]
pub(crate) struct FromPasswordArgs {
    /// Read the password of the --from-repo repository from the first line of FILE (else
    /// BACKSTOP_FROM_PASSWORD, else a prompt)
    #[arg(long, value_name = "FILE")]
    pub(crate) from_password_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct CopyArgs {
    /// The repository to copy from
    #[arg(long, value_name = "LOCATION")]
    pub(crate) from_repo: String,

    #[command(flatten)]
    pub(crate) from_password: FromPasswordArgs,

    /// Backups of the source to copy: numbers, or `latest` [default: all; those copied
    /// before are skipped]
    #[arg(value_name = "ID")]
    pub(crate) backups: Vec<BackupSelector>,

    /// Only backups of this source (its path, URL or group name as `list` shows it;
    /// repeatable): with IDs, refuse one of another source, and `latest` is the newest of these
    #[arg(long, value_name = "PATH_OR_URL")]
    pub(crate) source_path: Vec<String>,

    /// Leave the source's archives (WAL segments) behind
    #[arg(long)]
    pub(crate) no_archives: bool,
}

/// The AEAD of a new encrypted repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum CipherArg {
    /// AES-256-GCM with 192-bit nonces: fastest with AES instructions; format version 3
    #[value(name = "xaes-256-gcm")]
    Xaes256Gcm,
    /// XChaCha20-Poly1305: fast on any CPU; readable by builds of format version 2
    #[value(name = "xchacha20-poly1305")]
    XChaCha20Poly1305,
}

impl From<CipherArg> for backstop::Cipher {
    fn from(arg: CipherArg) -> Self {
        match arg {
            CipherArg::Xaes256Gcm => Self::Xaes256Gcm,
            CipherArg::XChaCha20Poly1305 => Self::XChaCha20Poly1305,
        }
    }
}

/// What `backup` reads from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum SourceKind {
    /// A directory tree
    Dir,
    /// An SQLite database file (WAL mode recommended)
    Sqlite,
    /// A PostgreSQL server, given as a connection string or URL
    Postgres,
    /// A Berkeley DB environment directory
    Bdb,
    /// A RocksDB database directory
    Rocksdb,
    /// An EventStore database directory
    Eventstore,
}

#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    /// What to back up
    #[arg(long = "source", value_enum, default_value_t = SourceKind::Dir, value_name = "KIND")]
    pub(crate) kind: SourceKind,

    /// A path, or for `--source postgres` a connection string
    #[arg(value_name = "PATH_OR_URL")]
    pub(crate) location: String,

    /// Back up the group named PATH_OR_URL (`[groups.NAME]` in the config file): its databases
    /// as one consistent group, with its applications paused around the snapshot points
    #[arg(long)]
    pub(crate) group: bool,

    /// Tag the backup (repeatable)
    #[arg(long, value_name = "TAG")]
    pub(crate) tag: Vec<String>,

    /// Record KEY=VALUE metadata with the backup (repeatable)
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub(crate) meta: Vec<(String, String)>,

    /// A free-text message stored with the backup
    #[arg(long, short = 'm')]
    pub(crate) message: Option<String>,

    /// Read every file, even those unchanged since the previous backup
    #[arg(long)]
    pub(crate) full_read: bool,

    /// Leave out paths matching GLOB (repeatable; `--source dir` only)
    #[arg(long, value_name = "GLOB")]
    pub(crate) exclude: Vec<String>,

    /// Stay on the file system of the directory backed up: a mount point below it (`/proc`,
    /// another disk) is stored as an empty directory (`--source dir` only)
    #[arg(long, short = 'x')]
    pub(crate) one_file_system: bool,

    /// Leave out the contents of cache directories, those tagged with a `CACHEDIR.TAG`; the
    /// directory and its tag are kept (`--source dir` only)
    #[arg(long)]
    pub(crate) exclude_caches: bool,

    /// PostgreSQL: ask for an immediate checkpoint at the start (default: a spread one, as
    /// `pg_basebackup` does)
    #[arg(long, help_heading = "Source options")]
    pub(crate) fast_checkpoint: bool,

    /// PostgreSQL: the data directory, when the server's own path is not how this machine
    /// sees it
    #[arg(long, value_name = "DIR", help_heading = "Source options")]
    pub(crate) pg_data_dir: Option<PathBuf>,

    /// PostgreSQL: the backup label
    #[arg(long, value_name = "LABEL", help_heading = "Source options")]
    pub(crate) label: Option<String>,

    /// SQLite: how the snapshot is taken (`auto`, `dbpage`, `backup-api`)
    #[arg(long, value_name = "METHOD", help_heading = "Source options")]
    pub(crate) sqlite_method: Option<String>,

    /// Berkeley DB: directory of the db5.3_* utilities (default: found on PATH)
    #[arg(long, value_name = "DIR", help_heading = "Source options")]
    pub(crate) db_tools: Option<PathBuf>,

    /// Berkeley DB: a data directory of the environment (`set_data_dir`; repeatable; those in
    /// DB_CONFIG are found by themselves)
    #[arg(long, value_name = "DIR", help_heading = "Source options")]
    pub(crate) data_dir: Vec<PathBuf>,

    #[command(flatten)]
    pub(crate) hold: HoldArgs,
}

/// Pause hooks: pause the applications that write to the source for the whole backup.
#[derive(Debug, Args, Default)]
pub(crate) struct HoldArgs {
    /// Shell command that pauses writers before the backup (must exit 0)
    #[arg(long, value_name = "CMD", help_heading = "Pause hooks")]
    pub(crate) pause_command: Option<String>,

    /// Shell command that resumes writers after the backup (always runs)
    #[arg(long, value_name = "CMD", help_heading = "Pause hooks")]
    pub(crate) resume_command: Option<String>,

    /// Shell command that holds writers paused while it runs; the backup starts when it
    /// prints its ready line and it is ended after the last file is stored
    #[arg(long, value_name = "CMD", help_heading = "Pause hooks")]
    pub(crate) hold_command: Option<String>,

    /// The line the hold command prints when writers are paused (default: any line)
    #[arg(long, value_name = "TEXT", help_heading = "Pause hooks")]
    pub(crate) ready_line: Option<String>,

    /// How long pausing may take, e.g. `30s`
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, help_heading = "Pause hooks")]
    pub(crate) pause_timeout: Option<std::time::Duration>,

    /// How long writers may stay paused before the backup is abandoned, e.g. `10m`
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, help_heading = "Pause hooks")]
    pub(crate) window_timeout: Option<std::time::Duration>,
}

/// Runs Backstop's main job on a built-in example.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Work in this directory and keep it (default: a temporary directory, removed at the end)
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,

    /// Keep the temporary directory
    #[arg(long)]
    pub(crate) keep: bool,

    /// Put the demo repository here (any repository URL this build supports) instead of
    /// `DIR/repo`
    #[arg(long = "demo-repo", value_name = "URL")]
    pub(crate) repo: Option<String>,

    /// Number of bank accounts (the database grows with it)
    #[arg(long, default_value_t = 50_000)]
    pub(crate) accounts: u32,

    /// Padding bytes per account row
    #[arg(long, default_value_t = 400)]
    pub(crate) pad_bytes: usize,

    /// Transfers the writer commits between two backups
    #[arg(long, default_value_t = 2_000)]
    pub(crate) transfers_between: i64,
}

/// `1048576`, `512KiB`, `50MiB`, `1GiB` (per second).
fn parse_rate(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a byte rate"))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => return Err(format!("unknown unit `{other}` (use KiB, MiB or GiB)")),
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too large"))
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

#[derive(Debug, Args)]
pub(crate) struct InfoArgs {
    /// Backup number, or `latest`
    #[arg(value_name = "ID")]
    pub(crate) backup: BackupSelector,

    /// Also list the backup's files
    #[arg(long)]
    pub(crate) files: bool,

    /// With `latest`: the newest backup of this source (its path, URL or group name as `list`
    /// shows it; repeatable); with an id: refuse a backup of another source
    #[arg(long, value_name = "PATH_OR_URL")]
    pub(crate) source_path: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct DumpArgs {
    /// Backup number, or `latest`
    #[arg(value_name = "ID")]
    pub(crate) backup: BackupSelector,

    /// The file's path inside the backup, as `info ID --files` lists it
    #[arg(value_name = "PATH")]
    pub(crate) path: String,

    /// With `latest`: the newest backup of this source (as for `restore`)
    #[arg(long, value_name = "PATH_OR_URL")]
    pub(crate) source_path: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct DiffArgs {
    /// The older backup: a number, or `latest`
    #[arg(value_name = "FROM")]
    pub(crate) from: BackupSelector,

    /// The newer backup: a number, or `latest`
    #[arg(value_name = "TO")]
    pub(crate) to: BackupSelector,

    /// Also list paths whose mode, owner or modification time changed, and nothing else
    #[arg(long)]
    pub(crate) metadata: bool,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// Backup number, or `latest` [default: all backups]
    #[arg(value_name = "ID", conflicts_with = "all")]
    pub(crate) backup: Option<BackupSelector>,

    /// Verify every backup (the default without ID)
    #[arg(long)]
    pub(crate) all: bool,

    /// Read, decrypt and hash every byte (default: check that every object exists)
    #[arg(long, conflicts_with = "read_data_subset")]
    pub(crate) full: bool,

    /// Read, decrypt and hash PERCENT of the packs (at least one; another part each run)
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(1..=100))]
    pub(crate) read_data_subset: Option<u8>,
}

#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// Backup number, or `latest`
    #[arg(value_name = "ID")]
    pub(crate) backup: BackupSelector,

    /// Directory to restore into; must be empty unless --force or --delta
    #[arg(value_name = "TARGET")]
    pub(crate) target: PathBuf,

    /// Write into a non-empty target, replacing files the backup has
    #[arg(long)]
    pub(crate) force: bool,

    /// Make a non-empty target what the backup holds, writing only what differs: each file
    /// there is read and hashed chunk by chunk, the chunks that differ are written in place,
    /// and whatever the backup does not have is deleted (pgBackRest's --delta). For restoring
    /// a database over its own diverged or damaged copy
    #[arg(long, conflicts_with_all = ["force", "include"])]
    pub(crate) delta: bool,

    /// Leave the chunks of zeros (4 KiB and more) of new files unwritten, as holes, so that a
    /// sparse file (a virtual disk, an EventStore chunk, a file sized with `truncate`) takes
    /// about the space it did. Off by default: a database may count on the blocks it filled
    /// with zeros (PostgreSQL's WAL segments) being allocated
    #[arg(long)]
    pub(crate) sparse: bool,

    /// With `latest`: the newest backup of this source (its path, URL or group name as `list`
    /// shows it; repeatable); with an id: refuse a backup of another source
    #[arg(long, value_name = "PATH_OR_URL", conflicts_with = "group")]
    pub(crate) source_path: Vec<String>,

    /// Restore the files only, without the source's fix-ups (recovery settings, …)
    #[arg(long)]
    pub(crate) raw: bool,

    /// Restore only the paths matching GLOB, as `info ID --files` lists them, with all that is
    /// under them (repeatable; `*` matches within one component, `**/` any directories). A
    /// database backup only with --raw
    #[arg(long, value_name = "GLOB", conflicts_with = "group")]
    pub(crate) include: Vec<String>,

    /// Do not flush the restored files to disk at the end: faster, but a machine crash soon
    /// after can lose or tear them while the restore looks complete. For scratch restores only
    #[arg(long)]
    pub(crate) no_sync: bool,

    /// Point-in-time recovery: replay up to this time (PostgreSQL `recovery_target_time`)
    #[arg(long, value_name = "TIME")]
    pub(crate) target_time: Option<String>,

    /// Point-in-time recovery: replay up to this LSN
    #[arg(long, value_name = "LSN")]
    pub(crate) target_lsn: Option<String>,

    /// Point-in-time recovery: replay up to this transaction id
    #[arg(long, value_name = "XID")]
    pub(crate) target_xid: Option<String>,

    /// Point-in-time recovery: replay up to this named restore point
    #[arg(long, value_name = "NAME")]
    pub(crate) target_name: Option<String>,

    /// What the database does once the recovery target is reached
    #[arg(long, value_name = "ACTION", value_parser = ["pause", "promote", "shutdown"])]
    pub(crate) target_action: Option<String>,

    /// Directory of the Berkeley DB utilities used by the restore's catastrophic recovery
    #[arg(long, value_name = "DIR")]
    pub(crate) db_tools: Option<PathBuf>,

    /// Any other option for the source's restore procedure (repeatable), e.g. `verify=true`
    /// for Berkeley DB; one the backup's procedure does not take is refused before anything
    /// is restored
    #[arg(long = "fixup", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub(crate) fixups: Vec<(String, String)>,

    /// Restore the group NAME to --target-time, which must lie inside one of its paused
    /// windows; ID `latest` picks the group backup whose window holds that time
    #[arg(long, value_name = "NAME", requires = "target_time")]
    pub(crate) group: Option<String>,
}

/// Keeps a Berkeley DB hot standby in sync with a live environment.
#[derive(Debug, Args)]
pub(crate) struct StandbyArgs {
    /// The standby directory
    #[arg(value_name = "STANDBY_DIR")]
    pub(crate) standby: PathBuf,

    /// The live environment's home directory, to refresh from
    #[arg(long = "env", value_name = "ENV_HOME", required_unless_present_any = ["promote", "from_repo"])]
    pub(crate) env_home: Option<PathBuf>,

    /// Refresh from the repository's latest backup instead of the live environment
    #[arg(long, conflicts_with = "promote")]
    pub(crate) from_repo: bool,

    /// Fail over: mark the standby as the new primary (later refreshes refuse to touch it)
    #[arg(long)]
    pub(crate) promote: bool,

    /// Directory of the Berkeley DB utilities (default: found on PATH)
    #[arg(long, value_name = "DIR")]
    pub(crate) db_tools: Option<PathBuf>,
}

/// Removes Berkeley DB log files that are no longer needed and that the latest backup holds.
#[derive(Debug, Args)]
pub(crate) struct ArchiveLogsArgs {
    /// The live environment's home directory
    #[arg(value_name = "ENV_HOME")]
    pub(crate) env_home: PathBuf,

    /// Only list the log files that would be removed
    #[arg(long)]
    pub(crate) dry_run: bool,

    /// Directory of the Berkeley DB utilities (default: found on PATH)
    #[arg(long, value_name = "DIR")]
    pub(crate) db_tools: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct PurgeArgs {
    /// How many of the newest backups of each source to keep. A source is a host, source kind
    /// and path/URL/group name: each keeps its own. The --keep rules add up: a backup any
    /// rule keeps is kept; at least one rule must keep something
    #[arg(long, value_name = "N")]
    pub(crate) keep_last: Option<usize>,

    /// Keep the newest backup of each of the N most recent hours that have backups
    #[arg(long, value_name = "N")]
    pub(crate) keep_hourly: Option<usize>,

    /// Keep the newest backup of each of the N most recent days (the backup host's local days)
    /// that have backups
    #[arg(long, value_name = "N")]
    pub(crate) keep_daily: Option<usize>,

    /// Keep the newest backup of each of the N most recent weeks (local, from Monday) that
    /// have backups
    #[arg(long, value_name = "N")]
    pub(crate) keep_weekly: Option<usize>,

    /// Keep the newest backup of each of the N most recent months (local) that have backups
    #[arg(long, value_name = "N")]
    pub(crate) keep_monthly: Option<usize>,

    /// Keep the newest backup of each of the N most recent years (local) that have backups
    #[arg(long, value_name = "N")]
    pub(crate) keep_yearly: Option<usize>,

    /// Keep every backup taken within DURATION (`36h`, `30days`) before the source's newest
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) keep_within: Option<std::time::Duration>,

    /// Keep every backup tagged TAG (repeatable), beside what the other rules keep
    #[arg(long, value_name = "TAG")]
    pub(crate) keep_tag: Vec<String>,

    /// Only purge backups of this source: its path, URL or group name as `list` shows it
    /// (repeatable); others are left alone
    #[arg(long, value_name = "PATH_OR_URL")]
    pub(crate) source_path: Vec<String>,

    /// List what would be deleted and kept, per source, and change nothing
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DeleteArgs {
    /// Backup number
    #[arg(value_name = "ID")]
    pub(crate) backup: BackupId,
}

#[derive(Debug, Args)]
pub(crate) struct GcArgs {
    /// Report what would be removed and rewritten, change nothing
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Rewrite packs of which at least this percentage is unused (their used data is copied
    /// into new packs); 100 only deletes wholly unused packs
    #[arg(long, value_name = "PERCENT", default_value_t = 25, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub(crate) repack_unused: u8,
    /// How long rewritten packs stay for restores and verifies that started before; a later
    /// gc deletes them (0s: this one, when no reader is running)
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub(crate) grace: std::time::Duration,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Add a password that opens the repository
    Add(NewPasswordArgs),
    /// List the repository's keys
    List,
    /// Remove a key (not the one in use, not the last one)
    Remove(KeyRemoveArgs),
    /// Change the password in use
    Passwd(NewPasswordArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum RepairCommand {
    /// Rebuild the index from the packs' own headers: after an index object was lost or
    /// damaged (every command stops at a damaged one), or with --read-all-packs to check every
    /// blob and copy a damaged pack's intact blobs into new packs
    Index(RepairIndexArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RepairIndexArgs {
    /// Report what would be done, change nothing
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Read every pack whole and check every blob, instead of keeping what readable index
    /// objects say and reading only the packs they do not list
    #[arg(long)]
    pub(crate) read_all_packs: bool,
}

#[derive(Debug, Args)]
pub(crate) struct NewPasswordArgs {
    /// Read the new password from FILE (else BACKSTOP_NEW_PASSWORD, else a prompt)
    #[arg(long, value_name = "FILE")]
    pub(crate) new_password_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct KeyRemoveArgs {
    /// Key id, as `key list` shows it, or a unique start of it
    #[arg(value_name = "ID")]
    pub(crate) id: String,
}

#[derive(Debug, Args)]
pub(crate) struct WalPushArgs {
    /// The WAL segment file (PostgreSQL's `%p`)
    #[arg(value_name = "PATH")]
    pub(crate) path: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct WalFetchArgs {
    /// The segment's name (PostgreSQL's `%f`)
    #[arg(value_name = "NAME")]
    pub(crate) name: String,

    /// Where to write it (PostgreSQL's `%p`)
    #[arg(value_name = "DEST")]
    pub(crate) dest: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to generate completions for
    #[arg(value_enum)]
    pub(crate) shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub(crate) struct ManArgs {
    /// Write one page per subcommand into DIR instead of printing the main page
    #[arg(long, value_name = "DIR")]
    pub(crate) out_dir: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn key_value_needs_a_key_and_an_equals_sign() {
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_key_value("a="), Ok(("a".into(), String::new())));
        assert!(parse_key_value("=b").is_err());
        assert!(parse_key_value("ab").is_err());
    }
}
