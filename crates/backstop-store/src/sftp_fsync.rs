//! The SFTP store's own connection for what OpenDAL's client never asks of the server: to
//! flush an uploaded file to its disk (`fsync@openssh.com`) before the file is renamed into
//! place.
//!
//! Without it a put returned once the server had the bytes in its page cache, and a server
//! that lost power could come back with a snapshot whose packs were never written: a backup
//! listed but not restorable. With it, every object's data is on the server's disk before its
//! name appears, so the repository's order of puts (packs, then indexes, then the snapshot) is
//! the order in which they become durable. A rename itself cannot be flushed over SFTP (the
//! extension takes a file's handle, never a directory's); journaling file systems (ext4,
//! XFS) commit renames in the order they were made, so a snapshot's name never survives a
//! crash that its packs' names did not.
//!
//! The connection is opened at the first put, with the store's user, key and host key check,
//! and opened again after it breaks. A server without the extension (not OpenSSH's) gets a
//! warning, once, and puts as before.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use openssh_sftp_client::openssh::{KnownHosts, SessionBuilder};
use openssh_sftp_client::{Sftp, SftpOptions};

/// How to reach the server: what the store's OpenDAL client was given too.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    /// `host` or `ssh://host:port`.
    pub(crate) destination: String,
    /// Empty: ssh's default.
    pub(crate) user: String,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) known_hosts: KnownHosts,
}

/// The connection, opened when first needed.
pub(crate) struct Fsyncer {
    endpoint: Endpoint,
    sftp: tokio::sync::Mutex<Option<Arc<Sftp>>>,
    /// The runtime the connection lives on, to close it there when the store goes.
    runtime: Option<tokio::runtime::Handle>,
    /// Files the server has flushed.
    flushed: AtomicU64,
    /// Whether the server was found without the extension (warned of once).
    unsupported: AtomicBool,
}

impl std::fmt::Debug for Fsyncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fsyncer")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Fsyncer {
    pub(crate) fn new(endpoint: Endpoint, runtime: Option<tokio::runtime::Handle>) -> Self {
        Self {
            endpoint,
            sftp: tokio::sync::Mutex::new(None),
            runtime,
            flushed: AtomicU64::new(0),
            unsupported: AtomicBool::new(false),
        }
    }

    /// Files flushed so far.
    pub(crate) fn flushed(&self) -> u64 {
        self.flushed.load(Ordering::Relaxed)
    }

    /// Asks the server to flush the file at `path` (absolute on the server) to its disk.
    /// A failure leaves the connection to be opened again by the next call.
    pub(crate) async fn fsync(&self, path: &str) -> opendal::Result<()> {
        let sftp = self.connection().await?;
        if !sftp.support_fsync() {
            if !self.unsupported.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    server = self.endpoint.destination,
                    "the SFTP server has no fsync@openssh.com extension: uploads are as \
                     durable as its page cache until it writes them back"
                );
            }
            return Ok(());
        }
        let flushed = async {
            // Opened for writing (nothing is written): the client asks fsync only of such.
            let mut file = sftp.options().write(true).open(path).await?;
            file.sync_all().await?;
            file.close().await
        }
        .await;
        match flushed {
            Ok(()) => {
                self.flushed.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(err) => {
                // A server's answer (a status) leaves the connection usable; anything else
                // (a broken channel) means a new one next time.
                if !matches!(err, openssh_sftp_client::Error::SftpError(..)) {
                    let mut slot = self.sftp.lock().await;
                    if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, &sftp)) {
                        *slot = None;
                    }
                }
                Err(opendal::Error::new(
                    opendal::ErrorKind::Unexpected,
                    format!("the server's fsync of `{path}`"),
                )
                .set_source(err))
            }
        }
    }

    async fn connection(&self) -> opendal::Result<Arc<Sftp>> {
        let mut slot = self.sftp.lock().await;
        if let Some(sftp) = slot.as_ref() {
            return Ok(Arc::clone(sftp));
        }
        let mut builder = SessionBuilder::default();
        if !self.endpoint.user.is_empty() {
            builder.user(self.endpoint.user.clone());
        }
        if let Some(key) = &self.endpoint.key_file {
            builder.keyfile(key);
        }
        builder.known_hosts_check(self.endpoint.known_hosts.clone());
        let session = builder
            .connect(&self.endpoint.destination)
            .await
            .map_err(|err| connect_error("ssh connection", err))?;
        let sftp = Sftp::from_session(session, SftpOptions::default())
            .await
            .map_err(|err| connect_error("sftp subsystem", err))?;
        let sftp = Arc::new(sftp);
        *slot = Some(Arc::clone(&sftp));
        Ok(sftp)
    }
}

fn connect_error(
    what: &str,
    err: impl std::error::Error + Send + Sync + 'static,
) -> opendal::Error {
    opendal::Error::new(
        opendal::ErrorKind::Unexpected,
        format!("the fsync connection's {what}"),
    )
    .set_source(err)
}

impl Drop for Fsyncer {
    fn drop(&mut self) {
        let Some(sftp) = self.sftp.get_mut().take() else {
            return;
        };
        // Closing ends the `ssh` master it started; it has to run on the runtime, and cannot
        // be waited for from inside one (the store is then being dropped in a task).
        match (Arc::try_unwrap(sftp), &self.runtime) {
            (Ok(sftp), Some(runtime)) if tokio::runtime::Handle::try_current().is_err() => {
                let _ = runtime.block_on(async {
                    tokio::time::timeout(Duration::from_secs(10), sftp.close()).await
                });
            }
            (Ok(sftp), Some(runtime)) => {
                runtime.spawn(async move {
                    let _ = sftp.close().await;
                });
            }
            _ => {}
        }
    }
}
