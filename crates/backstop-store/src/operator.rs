//! What every store built on OpenDAL (SFTP, GCS) shares: the tokio runtime that drives an
//! `Operator` behind the synchronous [`Store`](crate::Store) trait, and one loop that runs an
//! operation with a time limit per try and bounded retries with backoff. Which failures are
//! worth a retry, and what the final error says, is each service's own.

use std::ops::Range;
use std::time::{Duration, Instant};

use opendal::Operator;

use crate::memory::check_range;
use crate::{ObjectMeta, StoreError, StoreErrorKind};

/// How often and how long one operation is tried.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryLimits {
    /// Retries after the first try.
    pub(crate) max_retries: usize,
    /// Time after which an operation is not retried any more.
    pub(crate) retry_timeout: Duration,
    /// Time limit of one try.
    pub(crate) request_timeout: Duration,
}

/// The runtime that drives OpenDAL, and the operator whose pool holds the connections; dropped
/// with the last clone of the store.
#[derive(Debug)]
pub(crate) struct Client {
    operator: Option<Operator>,
    runtime: Option<tokio::runtime::Runtime>,
    /// `SFTP`, `GCS`: in messages.
    service: &'static str,
}

impl Drop for Client {
    fn drop(&mut self) {
        let operator = self.operator.take();
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            // Blocking inside another runtime would panic: the connections' tasks are dropped
            // whenever the runtime's threads get to it, and a process that exits first leaves
            // their resources behind (SFTP: its ssh masters keep running).
            drop(operator);
            runtime.shutdown_background();
            return;
        }
        // A connection's task can own more than a socket: each SFTP connection's task owns an
        // openssh session, whose drop tells the `ssh` master to exit. Those tasks only end
        // inside the runtime, so the pool is dropped there and the shutdown waits for the
        // tasks; otherwise every pooled SFTP connection would leave an `ssh` process (and the
        // server its session) behind for good.
        {
            let _inside = runtime.enter();
            drop(operator);
        }
        runtime.shutdown_timeout(Duration::from_secs(10));
    }
}

impl Client {
    /// Starts the runtime (two worker threads named `backstop-<service>`) for `operator`.
    pub(crate) fn new(service: &'static str, operator: Operator) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("backstop-{}", service.to_ascii_lowercase()))
            .enable_all()
            .build()
            .map_err(|err| {
                StoreError::from_io(
                    "",
                    format!("cannot start the {service} client's runtime"),
                    err,
                )
            })?;
        Ok(Self {
            operator: Some(operator),
            runtime: Some(runtime),
            service,
        })
    }

    /// The runtime's handle, for what must end on it (a connection's close), if it still runs.
    #[cfg(feature = "sftp")]
    pub(crate) fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.runtime.as_ref().map(|r| r.handle().clone())
    }

    /// Runs one operation on the runtime, trying again while `classify` calls its failure
    /// [`StoreErrorKind::Transient`] and the limits allow: backing off from 0.5 s, doubling up
    /// to 15 s. `report` turns the last failure, its kind and the number of tries into the
    /// store's error; `what` names the operation in the log.
    pub(crate) fn run<T, F, Fut>(
        &self,
        key: &str,
        what: &str,
        limits: RetryLimits,
        classify: impl Fn(&opendal::Error) -> StoreErrorKind,
        report: impl FnOnce(StoreErrorKind, usize, opendal::Error) -> StoreError,
        mut operation: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: IntoFuture<Output = opendal::Result<T>>,
    {
        let service = self.service;
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(StoreError::new(
                StoreErrorKind::Other,
                key,
                format!(
                    "the {service} store was called from inside an async runtime, where blocking \
                     would stall it; call it from a plain thread or tokio::task::spawn_blocking"
                ),
            ));
        }
        let runtime = self.runtime.as_ref().ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Other,
                key,
                format!("the {service} client's runtime is shut down"),
            )
        })?;
        let started = Instant::now();
        let mut pause = Duration::from_millis(500);
        let mut tries = 0;
        loop {
            tries += 1;
            let attempt = operation();
            let limit = limits.request_timeout;
            // The timer is made inside the runtime, which it needs.
            let result = runtime
                .block_on(async move { tokio::time::timeout(limit, attempt).await })
                .unwrap_or_else(|_| {
                    Err(opendal::Error::new(
                        opendal::ErrorKind::Unexpected,
                        format!("no answer within {} s", limit.as_secs()),
                    )
                    .set_temporary())
                });
            let err = match result {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            let kind = classify(&err);
            let retry = kind == StoreErrorKind::Transient
                && tries <= limits.max_retries
                && started.elapsed() + pause < limits.retry_timeout;
            if !retry {
                return Err(report(kind, tries, err));
            }
            tracing::debug!(service, key, what, error = %err, "operation failed, trying again");
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(15));
        }
    }
}

/// The error's message and every cause under it, one per line: what the classifications search
/// for words that OpenDAL keeps in text only (ssh's messages, an HTTP status).
pub(crate) fn error_chain(err: &opendal::Error) -> String {
    let mut text = err.to_string();
    let mut current = std::error::Error::source(err);
    while let Some(error) = current {
        text.push('\n');
        text.push_str(&error.to_string());
        current = error.source();
    }
    text
}

/// A ranged read that the object's size judges, as the [`Store`](crate::Store) contract wants
/// whatever the server answered: an empty or reversed range reads nothing (after `head` shows
/// it valid); a short read, or a failure other than a missing object, is
/// [`StoreErrorKind::InvalidRange`] when the range runs past the end (servers answer such ranges
/// with 416, a short 206 or, on SFTP, a short read).
pub(crate) fn checked_range_read(
    service: &str,
    key: &str,
    range: Range<u64>,
    head: impl Fn() -> Result<ObjectMeta, StoreError>,
    read: impl FnOnce(Range<u64>) -> Result<opendal::Buffer, StoreError>,
) -> Result<Vec<u8>, StoreError> {
    if range.start >= range.end {
        check_range(key, &range, head()?.size)?;
        return Ok(Vec::new());
    }
    let requested = range.end - range.start;
    match read(range.clone()) {
        Ok(buffer) if buffer.len() as u64 == requested => Ok(buffer.to_vec()),
        Ok(buffer) => {
            let size = head()?.size;
            check_range(key, &range, size)?;
            Err(StoreError::new(
                StoreErrorKind::Other,
                key,
                format!(
                    "{service} returned {} bytes for range {}..{} of an object of {size} bytes",
                    buffer.len(),
                    range.start,
                    range.end
                ),
            ))
        }
        Err(err) if err.kind() == StoreErrorKind::NotFound => Err(err),
        Err(err) => {
            if let Ok(meta) = head() {
                check_range(key, &range, meta.size)?;
            }
            Err(err)
        }
    }
}
