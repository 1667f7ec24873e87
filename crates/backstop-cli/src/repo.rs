//! Settings from flags, environment and config file, and opening the repository with them.

use std::io::IsTerminal as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use backstop::{
    BackupEngine, EngineOptions, ErrorKind, InitOptions, ReadOnlyEngine, RepairEngine, Store,
};

use crate::cli::GlobalArgs;
use crate::config::{self, ConfigFile};
use crate::exit::{Code, Exit};
use crate::output::Printer;
use crate::password::{self, PasswordSource};

/// Testing knob: `BACKSTOP_TEST_FAST_KDF=1` makes `init` use very low Argon2 costs so tests
/// run fast. Never set it for a real repository: it makes the password cheap to guess.
const FAST_KDF_VAR: &str = "BACKSTOP_TEST_FAST_KDF";

/// Everything a command needs besides its own arguments, resolved once: a flag wins over its
/// environment variable, which wins over the config file.
#[derive(Debug)]
pub(crate) struct Settings {
    repo: Option<String>,
    password: Option<PasswordSource>,
    engine: EngineOptions,
    /// Excludes from the config file, added to `--exclude` for directory backups.
    pub(crate) config_excludes: Vec<String>,
    pub(crate) printer: Printer,
    /// Progress bars on stderr: only when a person watches and asked for no JSON or quiet.
    pub(crate) show_progress: bool,
    limit_upload: Option<u64>,
    limit_download: Option<u64>,
}

/// `$XDG_CACHE_HOME/backstop`, or `~/.cache/backstop`.
fn default_cache_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
        .map(|d| d.join("backstop"))
}

impl Settings {
    pub(crate) fn resolve(global: &GlobalArgs) -> Result<Self> {
        let config = config::load(global.config.as_deref())?;
        Ok(Self::from_parts(global, config))
    }

    fn from_parts(global: &GlobalArgs, config: ConfigFile) -> Self {
        let password = password::choose_source(
            global.password_file.as_deref(),
            global.password_command.as_deref(),
            config.password_file.as_deref(),
            config.password_command.as_deref(),
        );
        let mut engine = EngineOptions::default();
        if let Some(level) = global.compression.or(config.compression_level) {
            engine = engine.with_compression_level(level);
        }
        if let Some(threads) = global.threads.or(config.threads) {
            engine = engine.with_threads(threads);
        }
        if let Some(wait) = global.retry_lock {
            engine = engine.with_lock_wait(wait);
        }
        if !global.no_cache {
            let dir = global
                .cache_dir
                .clone()
                .or(config.cache_dir)
                .or_else(default_cache_dir);
            if let Some(dir) = dir {
                engine = engine.with_cache_dir(dir);
            }
        }
        let printer = Printer::new(global.json, global.quiet);
        let show_progress = !global.json && !global.quiet && std::io::stderr().is_terminal();
        Self {
            repo: global.repo.clone().or(config.repo),
            password,
            engine,
            config_excludes: config.excludes,
            printer,
            show_progress,
            limit_upload: global.limit_upload,
            limit_download: global.limit_download,
        }
    }

    /// The repository location, or a usage error naming the ways to give one.
    pub(crate) fn repo(&self) -> Result<&str> {
        self.repo.as_deref().ok_or_else(|| {
            Exit::new(
                Code::Usage,
                "no repository given: pass --repo, set BACKSTOP_REPO, or set `repo` in the \
                 config file",
            )
            .into()
        })
    }

    /// How child processes (PostgreSQL's `restore_command`) can get the password, if the
    /// password came from somewhere they can read again.
    pub(crate) fn password_source(&self) -> Option<&PasswordSource> {
        self.password.as_ref()
    }

    fn store(&self, must_exist: bool) -> Result<Arc<dyn Store>> {
        self.store_at(self.repo()?, must_exist)
    }

    fn store_at(&self, repo: &str, must_exist: bool) -> Result<Arc<dyn Store>> {
        let store = raw_store(repo, must_exist)?;
        // Every request is counted for the `--json` envelope and the verbose summary (those of
        // the command's own repository, not of the one `--from-repo` names), then throttled if
        // asked.
        let counting = Arc::new(backstop_store::CountingStore::new(store));
        if self.repo.as_deref() == Some(repo) {
            crate::output::record_request_counter(counting.counter());
        }
        let store: Arc<dyn Store> = counting;
        if self.limit_upload.is_some() || self.limit_download.is_some() {
            let limits = backstop_store::ThrottleLimits::new(
                self.limit_upload.unwrap_or(0),
                self.limit_download.unwrap_or(0),
            );
            return Ok(Arc::new(backstop_store::ThrottleStore::new(store, limits)));
        }
        Ok(store)
    }

    /// Opens the repository for writing.
    pub(crate) fn open(&self) -> Result<BackupEngine> {
        self.open_with(BackupEngine::open)
    }

    /// Opens the repository without loading its index, to repair it.
    pub(crate) fn open_for_repair(&self) -> Result<RepairEngine> {
        self.open_with(RepairEngine::open)
    }

    /// Opens the repository for reading only.
    pub(crate) fn open_read_only(&self) -> Result<ReadOnlyEngine> {
        self.open_with(ReadOnlyEngine::open)
    }

    /// Opens with the password from its source; without one, tries without a password (an
    /// unencrypted repository needs none) and asks on a terminal if the repository wants one.
    fn open_with<E>(
        &self,
        open: impl Fn(Arc<dyn Store>, EngineOptions) -> backstop::Result<E>,
    ) -> Result<E> {
        let hint = "set BACKSTOP_PASSWORD, or pass --password-file or --password-command";
        self.open_at(self.repo()?, self.password.as_ref(), hint, open)
    }

    /// Opens another repository (what `--from-repo` names) for reading only, with these
    /// settings and `password`: its password, not this repository's.
    pub(crate) fn open_other(
        &self,
        repo: &str,
        password: Option<&PasswordSource>,
    ) -> Result<ReadOnlyEngine> {
        let hint = "set BACKSTOP_FROM_PASSWORD, or pass --from-password-file";
        self.open_at(repo, password, hint, ReadOnlyEngine::open)
    }

    fn open_at<E>(
        &self,
        repo: &str,
        password: Option<&PasswordSource>,
        hint: &str,
        open: impl Fn(Arc<dyn Store>, EngineOptions) -> backstop::Result<E>,
    ) -> Result<E> {
        let given = password.map(PasswordSource::read).transpose()?;
        let mut options = self.engine.clone();
        if let Some(password) = &given {
            options = options.with_password(password.clone());
        }
        let context = || format!("opening repository `{repo}`");
        match open(self.store_at(repo, true)?, options) {
            Ok(engine) => Ok(engine),
            Err(err) if given.is_none() && wants_password(&err) => {
                if !password::can_prompt() {
                    return Err(anyhow::Error::new(err).context(format!(
                        "repository `{repo}` is encrypted and no password was given: {hint}"
                    )));
                }
                let password = password::prompt_existing(repo)?;
                let options = self.engine.clone().with_password(password);
                open(self.store_at(repo, true)?, options).with_context(context)
            }
            Err(err) => Err(err).with_context(context),
        }
    }

    /// Creates a repository; `encrypted` asks for a password (twice on a terminal), and seals
    /// with `cipher` (`None`: the fastest on this machine).
    pub(crate) fn init(
        &self,
        encrypted: bool,
        cipher: Option<backstop::Cipher>,
    ) -> Result<BackupEngine> {
        self.init_with(encrypted, cipher, None)
    }

    /// Creates a repository that shares `from`'s key (`init --from-repo`), encrypted (under a
    /// password of its own) when `from` is.
    pub(crate) fn init_from(&self, from: &ReadOnlyEngine) -> Result<BackupEngine> {
        let encrypted = from.repository_info().cipher.is_some();
        self.init_with(encrypted, None, Some(from))
    }

    fn init_with(
        &self,
        encrypted: bool,
        cipher: Option<backstop::Cipher>,
        from: Option<&ReadOnlyEngine>,
    ) -> Result<BackupEngine> {
        let repo = self.repo()?;
        let mut init = InitOptions::default();
        if let Some(cipher) = cipher {
            init = init.with_cipher(cipher);
        }
        if encrypted {
            let password = password::new_password(
                self.password.as_ref(),
                "new repository password",
                "set BACKSTOP_PASSWORD, pass --password-file, or pass --no-encryption",
            )?;
            init = init.with_password(password);
        }
        if std::env::var_os(FAST_KDF_VAR).is_some_and(|value| value == "1") {
            tracing::warn!("{FAST_KDF_VAR}=1: weak key derivation, for tests only");
            init = init.with_kdf(8 * 1024, 1);
        }
        if !repo.contains("://") {
            std::fs::create_dir_all(repo)
                .with_context(|| format!("creating repository directory `{repo}`"))?;
        }
        let store = self.store(false)?;
        match from {
            Some(from) => BackupEngine::init_from(store, from, init, self.engine.clone()),
            None => BackupEngine::init(store, init, self.engine.clone()),
        }
        .with_context(|| format!("creating repository `{repo}`"))
    }
}

/// The store at `repo` (a path or a URL); `must_exist` refuses a path that does not exist.
fn raw_store(repo: &str, must_exist: bool) -> Result<Arc<dyn Store>> {
    // A plain path that does not exist is no repository; saying so here gives a clearer
    // message than the engine's missing config object. URLs are left to the engine.
    if must_exist && !repo.contains("://") && !Path::new(repo).exists() {
        return Err(Exit::new(
            Code::NotFound,
            format!(
                "no repository at `{repo}`: the directory does not exist (create a \
                 repository with `backstop init`)"
            ),
        )
        .into());
    }
    crate::orphans::opening_store(repo);
    backstop::store::open_url(repo).with_context(|| format!("opening repository `{repo}`"))
}

/// Whether opening failed because the repository needs a password we did not give.
fn wants_password(err: &backstop::Error) -> bool {
    matches!(err.kind(), ErrorKind::WrongKey | ErrorKind::InvalidInput)
}
