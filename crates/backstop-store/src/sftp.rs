//! A store on an SSH server over SFTP (`sftp://user@host:port/path`) through OpenDAL's `sftp`
//! service, which runs the system's OpenSSH client (`ssh`) as a connection master and speaks
//! SFTP over it; puts go to a temporary file that is renamed into place.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use opendal::{EntryMode, Operator};

use crate::operator::{Client, RetryLimits, checked_range_read, error_chain};
use crate::sftp_fsync::{Endpoint, Fsyncer};
use crate::{ObjectMeta, PutMode, Store, StoreError, StoreErrorKind, split_prefix, validate_key};
use openssh_sftp_client::openssh::KnownHosts;

const SERVICE: &str = "SFTP";

/// The URL parameters [`SftpStore::from_url`] understands.
const URL_PARAMETERS: &str = "key, known_hosts, max_retries, retry_timeout";

/// The environment variable naming the private key file when the URL has no `key` parameter.
pub const SFTP_KEY_ENV: &str = "BACKSTOP_SFTP_KEY";

/// Puts write `<dir>/.tmp-<random>` first; listings never show such names and keys may not
/// use them (as in `LocalStore`).
const TEMP_PREFIX: &str = ".tmp-";

/// The step of a put that moves the temp file over the key, in errors.
const RENAME: &str = "rename of the uploaded temp file into place";

/// How the server's host key is checked against `~/.ssh/known_hosts` (ssh's
/// `StrictHostKeyChecking`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostKeyCheck {
    /// The host key must already be known (`StrictHostKeyChecking=yes`, the default).
    #[default]
    Strict,
    /// An unknown host's key is added and trusted from then on; a changed key is refused
    /// (`StrictHostKeyChecking=accept-new`).
    AcceptNew,
    /// Any key is accepted, changed ones included (`StrictHostKeyChecking=no`): no protection
    /// against a man in the middle; for throwaway test servers.
    AcceptAny,
}

impl HostKeyCheck {
    /// The same for the openssh crate, which the fsync connection uses.
    fn known_hosts(self) -> KnownHosts {
        match self {
            HostKeyCheck::Strict => KnownHosts::Strict,
            HostKeyCheck::AcceptNew => KnownHosts::Add,
            HostKeyCheck::AcceptAny => KnownHosts::Accept,
        }
    }

    /// The value OpenDAL's `known_hosts_strategy` takes.
    fn strategy(self) -> &'static str {
        match self {
            HostKeyCheck::Strict => "strict",
            HostKeyCheck::AcceptNew => "add",
            HostKeyCheck::AcceptAny => "accept",
        }
    }
}

/// How an [`SftpStore`] connects: the key, the host key check, retries and timeouts.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SftpStoreOptions {
    /// The private key file (`ssh -i`, and only that key is offered). Without one, ssh uses its
    /// own configuration: `~/.ssh/config`, the agent, `~/.ssh/id_*`.
    pub key_file: Option<PathBuf>,
    /// How the server's host key is checked (default [`HostKeyCheck::Strict`]).
    pub host_key_check: HostKeyCheck,
    /// Retries of one operation on connection failures and timeouts (default 10), backing off
    /// from 0.5 s, doubling up to 15 s between tries.
    pub max_retries: usize,
    /// Time after which an operation is not retried any more (default 2 minutes).
    pub retry_timeout: Duration,
    /// Time limit of one try of an operation, connecting included (default 2 minutes).
    pub request_timeout: Duration,
}

impl Default for SftpStoreOptions {
    fn default() -> Self {
        Self {
            key_file: None,
            host_key_check: HostKeyCheck::Strict,
            max_retries: 10,
            retry_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(120),
        }
    }
}

impl SftpStoreOptions {
    /// Sets the private key file.
    pub fn with_key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.key_file = Some(path.into());
        self
    }

    /// Sets how the server's host key is checked.
    pub fn with_host_key_check(mut self, check: HostKeyCheck) -> Self {
        self.host_key_check = check;
        self
    }

    /// Sets the retry limits: attempts and total time per operation.
    pub fn with_retries(mut self, max_retries: usize, retry_timeout: Duration) -> Self {
        self.max_retries = max_retries;
        self.retry_timeout = retry_timeout;
        self
    }

    /// Sets the time limit of one try of an operation.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
}

/// Files under a directory of an SSH server, reached over SFTP: the key `packs/ab/ab12` of
/// `sftp://backup@host/srv/backups` is the file `/srv/backups/packs/ab/ab12`; directories are
/// created as needed. The path in the URL is absolute on the server.
///
/// What SFTP gives and does not give, and what that means:
/// - **Atomic puts.** A put writes `.tmp-<random>` in the object's directory, then renames it
///   over the key with OpenSSH's `posix-rename@openssh.com` extension (rename(2) on the
///   server), so readers see the old object, no object, or the whole new one, never a part. A
///   crash leaves at most a temp file, which [`Store::list`] never shows and
///   [`Store::remove_temp_files`] (run by `gc`) removes once it is old. A server without that
///   extension cannot replace
///   an existing object (plain SFTP rename refuses an existing target): such overwrites fail.
/// - **No conditional put.** `PutMode::Create` is a check before the put, which a concurrent
///   writer can race: best effort, as the [`Store`] contract allows and the repository
///   tolerates. OpenSSH's exclusive open would make the create atomic but not the write, and a
///   reader must never see a half object.
/// - **Flushed before it is named.** OpenDAL's client sends no fsync, so the store keeps an
///   SFTP connection of its own and asks the server to flush each temp file
///   (`fsync@openssh.com`) before the rename: a put that returned has its data on the server's
///   disk (see `sftp_fsync.rs`; [`SftpStore::server_flushes`] counts the confirmations). The
///   rename itself cannot be flushed over SFTP; a journaling file system on the server commits
///   renames in order. A server without the extension is warned of once, and its puts are as
///   durable as its page cache.
/// - **Listing walks the directories**, one `readdir` per directory under the listed one.
/// - A key cannot be both an object and a directory of other objects (`a` and `a/b`), as on
///   a local disk.
///
/// Authentication is ssh's: a key file (`?key=` or `BACKSTOP_SFTP_KEY`), else ssh's own
/// configuration (`~/.ssh/config`, the agent, `~/.ssh/id_*`); never a password. Each pooled
/// connection runs one `ssh` master process on this machine (up to 64), and the flushing
/// connection one more.
///
/// The methods block the calling thread; calling them from inside an async task is refused.
#[derive(Clone)]
pub struct SftpStore {
    /// A clone of the client's operator (clones share one connection pool); declared before
    /// `client` so that it is gone when the last store drops the client.
    operator: Operator,
    /// Declared before `client` too: its connection is closed on the client's runtime.
    fsyncer: Arc<Fsyncer>,
    client: Arc<Client>,
    options: SftpStoreOptions,
    /// The repository's directory on the server, absolute (`/srv/backups`; `/` for the root).
    root: String,
    /// `sftp://[user@]host[:port]/path`, without parameters.
    base: String,
}

impl std::fmt::Debug for SftpStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpStore")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

fn config_error(url: &str, message: impl Into<String>) -> StoreError {
    StoreError::new(
        StoreErrorKind::Other,
        "",
        format!("{SERVICE} URL `{url}`: {}", message.into()),
    )
}

fn parse_number(url: &str, name: &str, value: &str) -> Result<usize, StoreError> {
    value.parse().map_err(|_| {
        config_error(
            url,
            format!("`{name}={value}` is not a whole number (retry_timeout is in seconds)"),
        )
    })
}

/// `~/…` in a key path, expanded with `HOME` (ssh would expand it, but the file is checked
/// here first).
fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

impl SftpStore {
    /// Opens `sftp://[user@]host[:port]/path` with default options.
    ///
    /// URL parameters: `key` (private key file; else `BACKSTOP_SFTP_KEY`, else ssh's own
    /// configuration), `known_hosts` (`strict`, the default; `accept-new`; `accept-any`),
    /// `max_retries`, `retry_timeout` (seconds). A password in the URL is refused.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        Self::from_url_with_options(url, SftpStoreOptions::default())
    }

    /// Like [`SftpStore::from_url`], with explicit options (the URL and `BACKSTOP_SFTP_KEY`
    /// override them).
    pub fn from_url_with_options(
        url: &str,
        mut options: SftpStoreOptions,
    ) -> Result<Self, StoreError> {
        let parsed = ::url::Url::parse(url).map_err(|err| {
            config_error(
                url,
                format!("not a URL ({err}); expected sftp://user@host/path"),
            )
        })?;
        if parsed.scheme() != "sftp" {
            return Err(config_error(url, "the scheme must be sftp://"));
        }
        // `url` keeps the brackets of an IPv6 address, which ssh does not take.
        let host = parsed
            .host_str()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(config_error(url, "no host; expected sftp://user@host/path"));
        }
        // ssh takes the host as its last argument: one starting with `-` would be an option.
        if host.starts_with('-') || host.contains('%') {
            return Err(config_error(url, format!("`{host}` is not a host name")));
        }
        if parsed.password().is_some() {
            // Not `config_error`: the message must not repeat the password.
            return Err(StoreError::new(
                StoreErrorKind::Other,
                "",
                format!(
                    "{SERVICE} URL for `{host}`: passwords in the URL are not accepted; use a \
                     key (`?key=/path/to/key` or {SFTP_KEY_ENV}) or ssh's own configuration"
                ),
            ));
        }
        let user = parsed.username();
        if user.starts_with('-') || user.contains('%') {
            return Err(config_error(url, format!("`{user}` is not a user name")));
        }
        let path = parsed.path();
        if path.starts_with("/~") {
            return Err(config_error(
                url,
                "the path is absolute on the server; write the home directory out \
                 (sftp://host/home/user/backups)",
            ));
        }
        if path.contains('%') {
            return Err(config_error(
                url,
                "percent-encoded paths are not supported; give the plain path",
            ));
        }
        let prefix = path.trim_matches('/');
        if !prefix.is_empty() {
            validate_key(prefix).map_err(|_| {
                config_error(
                    url,
                    format!("the path `/{prefix}` has empty, `.` or `..` segments"),
                )
            })?;
        }
        if let Some(key) = std::env::var(SFTP_KEY_ENV).ok().filter(|v| !v.is_empty()) {
            options.key_file = Some(expand_home(&key));
        }
        for (name, value) in parsed.query_pairs() {
            match &*name {
                "key" => options.key_file = Some(expand_home(&value)),
                "known_hosts" => {
                    options.host_key_check = match &*value {
                        "strict" => HostKeyCheck::Strict,
                        "accept-new" => HostKeyCheck::AcceptNew,
                        "accept-any" => HostKeyCheck::AcceptAny,
                        _ => {
                            return Err(config_error(
                                url,
                                format!(
                                    "`known_hosts={value}`: use strict, accept-new or accept-any"
                                ),
                            ));
                        }
                    };
                }
                "max_retries" => options.max_retries = parse_number(url, &name, &value)?,
                "retry_timeout" => {
                    options.retry_timeout =
                        Duration::from_secs(parse_number(url, &name, &value)? as u64);
                }
                _ => {
                    return Err(config_error(
                        url,
                        format!("unknown parameter `{name}`; supported: {URL_PARAMETERS}"),
                    ));
                }
            }
        }
        if let Some(key) = &options.key_file {
            if !key.is_file() {
                return Err(config_error(
                    url,
                    format!(
                        "the key file `{}` does not exist (from the `key` parameter or \
                         {SFTP_KEY_ENV})",
                        key.display()
                    ),
                ));
            }
        }

        // OpenDAL hands the endpoint to the openssh crate, which reads `ssh://host:port`.
        let port = parsed.port();
        let endpoint = match port {
            Some(port) => format!("ssh://{host}:{port}"),
            None => host.to_owned(),
        };
        let fsync_endpoint = Endpoint {
            destination: endpoint.clone(),
            user: user.to_owned(),
            key_file: options.key_file.clone(),
            known_hosts: options.host_key_check.known_hosts(),
        };
        let root = format!("/{prefix}");
        let mut builder = opendal::services::Sftp::default()
            .endpoint(&endpoint)
            .root(&root)
            .known_hosts_strategy(options.host_key_check.strategy());
        if !user.is_empty() {
            builder = builder.user(user);
        }
        if let Some(key) = &options.key_file {
            let key = key.to_str().ok_or_else(|| {
                config_error(
                    url,
                    format!("the key file name `{}` is not UTF-8", key.display()),
                )
            })?;
            builder = builder.key(key);
        }
        let operator = Operator::new(builder)
            .map_err(|err| {
                StoreError::with_source(
                    StoreErrorKind::Other,
                    "",
                    format!("cannot configure the SFTP client for `{url}`"),
                    err,
                )
            })?
            .finish();
        let mut base = String::from("sftp://");
        if !user.is_empty() {
            base.push_str(user);
            base.push('@');
        }
        base.push_str(parsed.host_str().unwrap_or_default());
        if let Some(port) = port {
            base.push_str(&format!(":{port}"));
        }
        base.push('/');
        base.push_str(prefix);
        let client = Client::new(SERVICE, operator.clone())?;
        Ok(Self {
            operator,
            fsyncer: Arc::new(Fsyncer::new(fsync_endpoint, client.handle())),
            client: Arc::new(client),
            options,
            root,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    /// How many uploads the server has confirmed on its disk (`fsync@openssh.com`) before
    /// they were renamed into place; stays 0 on a server without that extension.
    pub fn server_flushes(&self) -> u64 {
        self.fsyncer.flushed()
    }

    /// The options in force (URL parameters applied).
    pub fn options(&self) -> &SftpStoreOptions {
        &self.options
    }

    /// The key as a path under the root, after the key rules and the reserved temp names.
    fn path(key: &str) -> Result<&str, StoreError> {
        validate_key(key)?;
        if key
            .split('/')
            .any(|segment| segment.starts_with(TEMP_PREFIX))
        {
            return Err(StoreError::new(
                StoreErrorKind::InvalidKey,
                key,
                format!("key segments starting with `{TEMP_PREFIX}` are reserved for temp files"),
            ));
        }
        Ok(key)
    }

    /// Runs one operation on the runtime, trying again on connection failures and timeouts
    /// within the retry limits; `what` names it in errors.
    fn run<T, F, Fut>(&self, key: &str, what: &str, operation: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: IntoFuture<Output = opendal::Result<T>>,
    {
        self.run_with_retries(key, what, self.options.max_retries, operation)
    }

    /// [`SftpStore::run`] with at most `max_retries` retries.
    fn run_with_retries<T, F, Fut>(
        &self,
        key: &str,
        what: &str,
        max_retries: usize,
        operation: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: IntoFuture<Output = opendal::Result<T>>,
    {
        let limits = RetryLimits {
            max_retries,
            retry_timeout: self.options.retry_timeout,
            request_timeout: self.options.request_timeout,
        };
        self.client.run(
            key,
            what,
            limits,
            error_kind,
            |kind, tries, err| map_error(key, what, kind, tries, err),
            operation,
        )
    }

    fn description(&self) -> String {
        format!("{} (SFTP: create-if-absent is best effort)", self.base)
    }
}

/// What kind of failure an OpenDAL error is. OpenDAL marks every unexplained SFTP status as
/// temporary, including a server's plain refusals (`SSH_FX_FAILURE`), so only failures of the
/// connection itself count as transient here: retrying a refusal would only delay the error.
fn error_kind(err: &opendal::Error) -> StoreErrorKind {
    use opendal::ErrorKind as K;
    match err.kind() {
        K::NotFound => return StoreErrorKind::NotFound,
        K::PermissionDenied => return StoreErrorKind::PermissionDenied,
        K::AlreadyExists | K::ConditionNotMatch => return StoreErrorKind::AlreadyExists,
        K::RangeNotSatisfied => return StoreErrorKind::InvalidRange,
        _ => {}
    }
    let mut current: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(error) = current {
        if let Some(sftp) = error.downcast_ref::<openssh_sftp_error::Error>() {
            use openssh_sftp_error::Error as E;
            return match sftp {
                // The server answered (a status such as SSH_FX_FAILURE), so the connection
                // works and asking again would get the same answer.
                E::SftpError(..)
                | E::UnsupportedSftpProtocol { .. }
                | E::UnsupportedExtension(_)
                | E::BufferTooLong(_) => StoreErrorKind::Other,
                // The channel broke: I/O, the background tasks, the sftp subsystem.
                _ => StoreErrorKind::Transient,
            };
        }
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            // ssh's own messages: refused keys and unknown or changed host keys.
            let text = io.to_string();
            if io.kind() == std::io::ErrorKind::PermissionDenied
                || text.contains("Permission denied")
                || text.contains("Host key verification failed")
            {
                return StoreErrorKind::PermissionDenied;
            }
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::Interrupted => StoreErrorKind::Transient,
                _ => StoreErrorKind::Other,
            };
        }
        current = error.source();
    }
    // No cause to inspect: OpenDAL's own timeouts (waiting for a pooled connection) and ours.
    if err.is_temporary() {
        StoreErrorKind::Transient
    } else {
        StoreErrorKind::Other
    }
}

fn map_error(
    key: &str,
    what: &str,
    kind: StoreErrorKind,
    tries: usize,
    err: opendal::Error,
) -> StoreError {
    let chain = error_chain(&err);
    let message = match kind {
        StoreErrorKind::Transient => format!(
            "{SERVICE} {what} kept failing ({tries} tries); check that the server is up and \
             reachable"
        ),
        StoreErrorKind::PermissionDenied if chain.contains("Host key verification failed") => {
            format!(
                "{SERVICE} {what}: the server's host key is not the one in ~/.ssh/known_hosts; \
                 connect once with `ssh` to check and record it, or add `known_hosts=accept-new` \
                 to the URL"
            )
        }
        StoreErrorKind::PermissionDenied => format!(
            "{SERVICE} {what} was refused; check the user, the key (`key` parameter or \
             {SFTP_KEY_ENV}) and the permissions on the server"
        ),
        StoreErrorKind::AlreadyExists => {
            "object already exists and the put asked to create it".to_owned()
        }
        // Plain SFTP rename refuses an existing target; only the extension replaces it.
        _ if what == RENAME => format!(
            "{SERVICE} {what} failed (replacing an existing object needs the server's \
             posix-rename@openssh.com extension)"
        ),
        _ => format!("{SERVICE} {what} failed"),
    };
    StoreError::with_source(kind, key, message, err)
}

/// Whether a listed path is a put's temporary file.
fn is_temp(path: &str) -> bool {
    path.split('/')
        .any(|segment| segment.starts_with(TEMP_PREFIX))
}

impl Store for SftpStore {
    fn put(&self, key: &str, bytes: &[u8], mode: PutMode) -> Result<(), StoreError> {
        let path = Self::path(key)?;
        if mode == PutMode::Create {
            // Best effort, as the Store contract allows: a concurrent writer can slip in
            // between this check and the rename.
            match self.head(key) {
                Ok(_) => {
                    return Err(StoreError::new(
                        StoreErrorKind::AlreadyExists,
                        key,
                        "object already exists and the put asked to create it",
                    ));
                }
                Err(err) if err.kind() == StoreErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        let dir = path
            .rfind('/')
            .map_or("", |at| path.get(..=at).unwrap_or(""));
        let temp = format!("{dir}{TEMP_PREFIX}{:016x}", rand::random::<u64>());
        let payload = opendal::Buffer::from(bytes.to_vec());
        let written = self.run(key, "upload", || {
            self.operator.write(&temp, payload.clone())
        });
        let on_server = format!("{}/{temp}", self.root.trim_end_matches('/'));
        let flushed = written.and_then(|_| {
            self.run(key, "fsync of the uploaded temp file", || {
                self.fsyncer.fsync(&on_server)
            })
        });
        let renamed =
            flushed.and_then(|()| self.run(key, RENAME, || self.operator.rename(&temp, path)));
        if renamed.is_err() {
            // Best effort and tried once, so a server that is down does not double the wait:
            // listings never show the temp file either way.
            if let Err(err) =
                self.run_with_retries(key, "temp file removal", 0, || self.operator.delete(&temp))
            {
                tracing::warn!(temp, error = %err, "cannot remove SFTP temp file");
            }
        }
        renamed
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let path = Self::path(key)?;
        self.run(key, "get", || self.operator.read(path))
            .map(|buffer| buffer.to_vec())
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
        let path = Self::path(key)?;
        checked_range_read(
            SERVICE,
            key,
            range,
            || self.head(key),
            |range| {
                self.run(key, "ranged get", || {
                    self.operator.read_with(path).range(range.clone())
                })
            },
        )
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let (dir_part, _) = split_prefix(prefix)?;
        // SFTP lists directories, so the directory part is walked and the partial last
        // segment filters names.
        let dir = if dir_part.is_empty() { "/" } else { dir_part };
        let entries = self.run(prefix, "list", || {
            self.operator.list_with(dir).recursive(true)
        })?;
        Ok(entries
            .into_iter()
            .filter(|entry| {
                entry.metadata().mode() == EntryMode::FILE
                    && entry.path().starts_with(prefix)
                    && !is_temp(entry.path())
            })
            .map(|entry| ObjectMeta {
                key: entry.path().to_owned(),
                size: entry.metadata().content_length(),
                modified_unix: entry
                    .metadata()
                    .last_modified()
                    .map(|time| time.into_inner().as_second()),
            })
            .collect())
    }

    fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let path = Self::path(key)?;
        let meta = self.run(key, "head", || self.operator.stat(path))?;
        if meta.mode() != EntryMode::FILE {
            // A directory of other objects is not an object.
            return Err(StoreError::new(
                StoreErrorKind::NotFound,
                key,
                "no object under the key (the server has a directory there)",
            ));
        }
        Ok(ObjectMeta {
            key: key.to_owned(),
            size: meta.content_length(),
            modified_unix: meta
                .last_modified()
                .map(|time| time.into_inner().as_second()),
        })
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = Self::path(key)?;
        match self.run(key, "delete", || self.operator.delete(path)) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == StoreErrorKind::NotFound => Ok(()),
            Err(err) => Err(err),
        }
    }

    fn describe(&self) -> String {
        self.description()
    }

    fn remove_temp_files(&self, min_age: Duration) -> Result<u64, StoreError> {
        let entries = self.run("", "temp file listing", || {
            self.operator.list_with("/").recursive(true)
        })?;
        // The server's clock stamped the files, so the age is read against the present here;
        // a skew between the two clocks shortens or lengthens the wait, and `min_age` is long.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let mut removed = 0;
        for entry in entries {
            let meta = entry.metadata();
            if meta.mode() != EntryMode::FILE || !is_temp(entry.path()) {
                continue;
            }
            // A file without a time cannot be shown to be old: it stays.
            let Some(modified) = meta.last_modified() else {
                continue;
            };
            let stamped = u64::try_from(modified.into_inner().as_second()).unwrap_or(u64::MAX);
            if now.saturating_sub(stamped) < min_age.as_secs() {
                continue;
            }
            let path = entry.path();
            match self.run(path, "temp file removal", || self.operator.delete(path)) {
                Ok(()) => removed += 1,
                Err(err) if err.kind() == StoreErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let err = SftpStore::from_url("sftp://h/p?colour=red").unwrap_err();
        assert!(
            err.to_string().contains("unknown parameter `colour`"),
            "{err}"
        );
        let err = SftpStore::from_url("sftp://user:secret@h/p").unwrap_err();
        assert!(err.to_string().contains("passwords in the URL"), "{err}");
        assert!(!err.to_string().contains("secret"), "{err}");
        let err = SftpStore::from_url("sftp://h/a//b").unwrap_err();
        assert!(err.to_string().contains("empty, `.` or `..`"), "{err}");
        let err = SftpStore::from_url("sftp://h/~/backups").unwrap_err();
        assert!(err.to_string().contains("absolute on the server"), "{err}");
        let err = SftpStore::from_url("sftp://-oProxyCommand=x/p").unwrap_err();
        assert!(err.to_string().contains("not a host name"), "{err}");
        let err = SftpStore::from_url("sftp:///p").unwrap_err();
        assert!(err.to_string().contains("no host"), "{err}");
        let err = SftpStore::from_url("sftp://h/p?known_hosts=maybe").unwrap_err();
        assert!(err.to_string().contains("accept-new"), "{err}");
        let err = SftpStore::from_url("sftp://h/p?key=/nonexistent/key").unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn parameters_and_description() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_ed25519");
        std::fs::write(&key, b"not read here").unwrap();
        let url = format!(
            "sftp://backup@[::1]:2222/srv/backups/repo/?key={}&known_hosts=accept-new&max_retries=1&retry_timeout=5",
            key.display()
        );
        let store = SftpStore::from_url(&url).unwrap();
        assert_eq!(store.options().key_file.as_deref(), Some(key.as_path()));
        assert_eq!(store.options().host_key_check, HostKeyCheck::AcceptNew);
        assert_eq!(store.options().max_retries, 1);
        assert_eq!(store.options().retry_timeout, Duration::from_secs(5));
        assert_eq!(
            store.describe(),
            "sftp://backup@[::1]:2222/srv/backups/repo (SFTP: create-if-absent is best effort)"
        );
        assert!(!format!("{store:?}").contains("id_ed25519"));
        let store = SftpStore::from_url("sftp://host/").unwrap();
        assert!(
            store.describe().starts_with("sftp://host "),
            "{}",
            store.describe()
        );
    }

    #[test]
    fn temp_names_are_reserved() {
        let store = SftpStore::from_url("sftp://host/srv").unwrap();
        let err = store.get("packs/.tmp-0123").unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::InvalidKey);
        assert!(is_temp("packs/ab/.tmp-0123"));
        assert!(!is_temp("packs/ab/x.tmp-0123"));
    }
}
