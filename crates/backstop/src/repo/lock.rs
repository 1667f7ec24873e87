//! Repository locks: shared for backups, exclusive for gc, as objects under `locks/`.
//!
//! A lock is a small JSON object with a random name, rewritten every minute while held. A lock
//! not refreshed for [`STALE_AFTER_SECS`], or held by a process of this host that no longer
//! exists, is stale and ignored. Taking a lock writes it first and lists second; two processes
//! that race both see each other and the exclusive one backs off, so gc never deletes a pack a
//! running backup is about to reference.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use backstop_store::{PutMode, Store, StoreErrorKind};
use serde::{Deserialize, Serialize};

use crate::repo::{hostname, now_unix, random_hex};
use crate::{Error, ErrorKind, Result};

/// A lock older than this without a refresh is stale.
pub(crate) const STALE_AFTER_SECS: i64 = 10 * 60;
const REFRESH_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Serialize, Deserialize)]
struct LockInfo {
    exclusive: bool,
    host: String,
    pid: u32,
    time_unix: i64,
    purpose: String,
    /// Boot id and PID namespace of the holder: its pid means something here only when both
    /// match ours (containers may share a host name but not a PID namespace).
    #[serde(default)]
    pid_scope: Option<String>,
}

/// This process's boot id and PID namespace, as one string.
fn pid_scope() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    Some(format!("{} {}", boot.trim(), ns.display()))
}

/// Another process holds a conflicting lock.
#[derive(Debug, thiserror::Error)]
#[error(
    "the repository is locked by {purpose} on {host} (pid {pid}, lock `{key}`); wait for it to \
     finish, or if that process is gone, wait {STALE_AFTER_SECS} s for the lock to become stale"
)]
pub(crate) struct LockedError {
    key: String,
    purpose: String,
    host: String,
    pid: u32,
}

/// A held lock; dropping it stops the refresher and deletes the lock object.
pub(crate) struct LockGuard {
    store: Arc<dyn Store>,
    key: String,
    /// When the lock object was last written successfully (Unix seconds).
    refreshed: Arc<AtomicI64>,
    stop: Option<mpsc::Sender<()>>,
    refresher: Option<std::thread::JoinHandle<()>>,
}

/// The lock was lost while held: a gc may have taken over.
#[derive(Debug, thiserror::Error)]
#[error(
    "the repository lock `{key}` was lost while this operation ran ({why}); a gc may have \
     removed its data, so nothing was committed: run it again"
)]
pub(crate) struct LockLostError {
    key: String,
    why: String,
}

impl LockGuard {
    /// Checks, right before a commit, that the lock is still ours: refreshed recently enough
    /// that nobody treats it as stale, and still in the store.
    pub(crate) fn check_held(&self) -> Result<()> {
        match self.lost()? {
            None => Ok(()),
            Some(why) => Err(Error::new(
                ErrorKind::Locked,
                LockLostError {
                    key: self.key.clone(),
                    why,
                },
            )),
        }
    }

    /// Why the lock may no longer be ours (`None` while it is), for holders that word the
    /// failure themselves.
    pub(crate) fn lost(&self) -> Result<Option<String>> {
        let age = now_unix() - self.refreshed.load(Ordering::SeqCst);
        if age > STALE_AFTER_SECS / 2 {
            return Ok(Some(format!("not refreshed for {age} s")));
        }
        match self.store.head(&self.key) {
            Ok(_) => Ok(None),
            Err(e) if e.kind() == StoreErrorKind::NotFound => Ok(Some("it was removed".into())),
            Err(e) => Err(e.into()),
        }
    }

    /// The lock's key.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(handle) = self.refresher.take() {
            let _ = handle.join();
        }
        if let Err(e) = self.store.delete(&self.key) {
            tracing::warn!(key = %self.key, error = %e, "could not remove lock; it goes stale");
        }
    }
}

/// Whether a lock protects nothing any more. `age` is how long ago it was last written, by
/// the store's clock when the store reports modification times (so hosts with skewed clocks
/// agree), else by the holder's own timestamp.
fn is_stale(info: &LockInfo, age: i64) -> bool {
    if age > STALE_AFTER_SECS {
        return true;
    }
    info.host == hostname()
        && info.pid_scope.is_some()
        && info.pid_scope == pid_scope()
        && info.pid != std::process::id()
        && !std::path::Path::new(&format!("/proc/{}", info.pid)).exists()
}

/// Takes a lock: shared (backups) or exclusive (gc), trying again while a conflicting lock is
/// held, for up to `wait`. The waits grow from half a second to 15 s, with jitter so that
/// several waiters do not retry in step.
pub(crate) fn acquire_waiting(
    store: &Arc<dyn Store>,
    exclusive: bool,
    purpose: &str,
    wait: Duration,
) -> Result<LockGuard> {
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(500);
    loop {
        match acquire(store, exclusive, purpose) {
            Err(e) if e.kind() == ErrorKind::Locked => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(e);
                }
                let jitter = Duration::from_millis(rand::random::<u64>() % 250);
                let sleep = (pause + jitter).min(left);
                tracing::info!(
                    error = %e,
                    retry_in_ms = sleep.as_millis() as u64,
                    left_s = left.as_secs(),
                    "waiting for the repository lock"
                );
                std::thread::sleep(sleep);
                pause = (pause * 2).min(Duration::from_secs(15));
            }
            other => return other,
        }
    }
}

/// Takes a lock: shared (backups) or exclusive (gc).
pub(crate) fn acquire(store: &Arc<dyn Store>, exclusive: bool, purpose: &str) -> Result<LockGuard> {
    let info = LockInfo {
        exclusive,
        host: hostname(),
        pid: std::process::id(),
        time_unix: now_unix(),
        purpose: purpose.to_owned(),
        pid_scope: pid_scope(),
    };
    let key = format!("locks/{}", random_hex(16));
    let bytes = serde_json::to_vec(&info)
        .map_err(|e| Error::msg(ErrorKind::Io, format!("encoding a lock: {e}")))?;
    store.put(&key, &bytes, PutMode::Overwrite)?;
    let refreshed = Arc::new(AtomicI64::new(info.time_unix));
    let mut guard = LockGuard {
        store: Arc::clone(store),
        key: key.clone(),
        refreshed: Arc::clone(&refreshed),
        stop: None,
        refresher: None,
    };
    let listed = store.list("locks/")?;
    // The store's clock, from our own just-written lock, when the store reports mtimes.
    let store_now = listed
        .iter()
        .find(|m| m.key == key)
        .and_then(|m| m.modified_unix);
    let now = now_unix();
    for meta in listed {
        if meta.key == key {
            continue;
        }
        let other: Option<LockInfo> = match store.get(&meta.key) {
            Ok(b) => serde_json::from_slice(&b).ok(),
            Err(e) if e.kind() == StoreErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        // A damaged or stale lock protects nothing; the exclusive locker (gc) removes it.
        let age = |o: &LockInfo| match (store_now, meta.modified_unix) {
            (Some(store_now), Some(written)) => store_now - written,
            _ => now - o.time_unix,
        };
        let Some(other) = other.filter(|o| !is_stale(o, age(o))) else {
            if exclusive {
                store.delete(&meta.key)?;
            }
            continue;
        };
        if exclusive || other.exclusive {
            return Err(Error::new(
                ErrorKind::Locked,
                LockedError {
                    key: meta.key,
                    purpose: other.purpose,
                    host: other.host,
                    pid: other.pid,
                },
            ));
        }
    }
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let store2 = Arc::clone(store);
    let refresher = std::thread::Builder::new()
        .name("backstop-lock".into())
        .spawn(move || {
            let mut info = info;
            while let Err(mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(REFRESH_EVERY) {
                // A lock others may judge stale is never written again: a gc may delete it
                // between our look and our write, and the write would bring it back as if it
                // had been held all along. The holder's `check_held` fails from then on (it
                // allows half the stale age), so it commits nothing.
                let unrefreshed = now_unix() - refreshed.load(Ordering::SeqCst);
                if unrefreshed > STALE_AFTER_SECS / 2 {
                    tracing::warn!(
                        key = %key,
                        unrefreshed_s = unrefreshed,
                        "the repository lock went unrefreshed too long; giving it up"
                    );
                    return;
                }
                // A lock someone removed (a gc that judged it stale) is never recreated: the
                // holder must notice at its next `check_held` instead.
                if store2.head(&key).is_err() {
                    tracing::warn!(key = %key, "the repository lock was removed by another process");
                    return;
                }
                info.time_unix = now_unix();
                if let Ok(bytes) = serde_json::to_vec(&info) {
                    match store2.put(&key, &bytes, PutMode::Overwrite) {
                        Ok(()) => refreshed.store(info.time_unix, Ordering::SeqCst),
                        Err(e) => tracing::warn!(error = %e, "could not refresh the repository lock"),
                    }
                }
            }
        })
        .map_err(|e| Error::msg(ErrorKind::Io, format!("starting the lock refresher: {e}")))?;
    guard.stop = Some(stop_tx);
    guard.refresher = Some(refresher);
    Ok(guard)
}
