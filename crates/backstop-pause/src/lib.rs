//! The pause helper an application embeds so that Backstop can back up all of its databases as
//! one consistent group (ScalarDB's scalar-admin procedure).
//!
//! Every request handler passes through a [`PauseController`] gate
//! (`let _guard = controller.enter()?;`) for as long as it works on the databases. A pause closes
//! the gate (new requests wait, or are rejected), waits for the requests in flight to drain, and
//! reports success only when none is left: from then on no transaction of the application is
//! half done, so a snapshot of each database taken now agrees with the others.
//!
//! A pause is held under a **lease**: when the backup that asked for it neither renews nor ends
//! it in time (it crashed, was killed, lost the network), the pause ends by itself and the
//! application goes on. [`PauseController::serve`] exposes the protocol on a loopback address:
//!
//! | request | effect | answers |
//! | --- | --- | --- |
//! | `POST /pause?lease_ms=L&timeout_ms=T` | close the gate, drain within `T` ms, hold for `L` ms | `200` [`PauseTicket`]; `409` already paused; `504` drain timed out (the gate is open again) |
//! | `POST /pause?pause_id=N&lease_ms=L` | renew pause `N` for `L` ms from now | `200` [`PauseTicket`]; `409` pause `N` already ended (and why) |
//! | `POST /unpause?pause_id=N` | end pause `N` (without `pause_id`: whichever pause is on) | `200` [`Resumed`]; `409` pause `N` already ended (and why) |
//! | `GET /status` | | `200` [`PauseStatus`] |
//!
//! Error answers are JSON objects with an `error` field.
//!
//! ```no_run
//! use std::time::Duration;
//! use backstop_pause::PauseController;
//!
//! let controller = PauseController::new();
//! let server = controller.serve("127.0.0.1:7411")?;
//! // In each request handler:
//! let _guard = controller.enter()?;
//! // ... the transaction(s) of this request ...
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod server;

pub use server::PauseServer;

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// What [`PauseController::enter`] does with a request that arrives while the application is
/// paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhilePaused {
    /// Wait up to this long for the pause to end, then reject with [`Rejected`].
    Wait(Duration),
    /// Reject at once.
    Reject,
}

impl Default for WhilePaused {
    fn default() -> Self {
        // Long enough for a backup's snapshot points, short enough that a caller sees an error
        // rather than a hang if something goes wrong.
        Self::Wait(Duration::from_secs(30))
    }
}

/// Why a pause ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndReason {
    /// The backup asked for it (`unpause`).
    Resumed,
    /// Nobody renewed the lease in time; the application resumed by itself.
    LeaseExpired,
    /// The requests in flight did not finish within the drain timeout.
    DrainTimeout,
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Resumed => "it was resumed",
            Self::LeaseExpired => "its lease expired",
            Self::DrainTimeout => "the requests in flight did not drain in time",
        })
    }
}

/// A pause in effect, as granted or renewed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PauseTicket {
    /// Identifies this pause in renewals and in `unpause`.
    pub pause_id: u64,
    /// The lease granted from now, in milliseconds.
    pub lease_ms: u64,
    /// How long draining took, in milliseconds (0 for a renewal).
    pub drained_in_ms: u64,
}

/// A pause that was ended by `unpause`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resumed {
    /// The pause that ended.
    pub pause_id: u64,
    /// How long the application was paused (drained to resumed), in milliseconds.
    pub paused_ms: u64,
}

/// The state of the gate.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PauseStatus {
    /// Whether new requests are held back.
    pub paused: bool,
    /// Whether the gate is closed and every request in flight has finished.
    pub drained: bool,
    /// The pause in effect.
    pub pause_id: Option<u64>,
    /// Requests inside the gate now.
    pub in_flight: u64,
    /// Requests waiting at the closed gate.
    pub waiting: u64,
    /// Milliseconds left on the lease of the pause in effect.
    pub lease_remaining_ms: Option<u64>,
    /// The last pause that ended, and why.
    pub last_ended: Option<(u64, EndReason)>,
}

/// A failed pause, renewal or resume.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PauseError {
    /// Another pause is in effect; only one backup may hold the application at a time.
    #[error("the application is already paused (pause {pause_id}); only one pause at a time")]
    AlreadyPaused {
        /// The pause in effect.
        pause_id: u64,
    },
    /// Requests were still in flight when the drain timeout ran out; the gate is open again.
    #[error(
        "{in_flight} request(s) were still in flight after {timeout_ms} ms, so the pause was \
         abandoned and the application resumed; raise the drain timeout or retry when the \
         application is less busy"
    )]
    DrainTimeout {
        /// Requests left in flight.
        in_flight: u64,
        /// The drain timeout.
        timeout_ms: u64,
    },
    /// The pause named has already ended.
    #[error("pause {pause_id} has already ended: {reason}")]
    Ended {
        /// The pause asked about.
        pause_id: u64,
        /// Why it ended, if it is the last one that did.
        reason: EndedHow,
    },
    /// A lease or timeout of zero, or longer than the controller allows.
    #[error("{0}")]
    Invalid(String),
}

/// How an ended pause ended, as far as the controller remembers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndedHow {
    /// It is the last pause that ended, for this reason.
    Known(EndReason),
    /// It is older than the last pause, or never existed.
    Unknown,
}

impl std::fmt::Display for EndedHow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Known(reason) => reason.fmt(f),
            Self::Unknown => f.write_str("it is not the latest pause, or never existed"),
        }
    }
}

/// A request turned away because the application is paused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the application is paused for a backup (pause {pause_id}); retry shortly")]
pub struct Rejected {
    /// The pause in effect.
    pub pause_id: u64,
}

#[derive(Debug)]
struct Pause {
    id: u64,
    /// Set once every request in flight has finished.
    drained_at: Option<Instant>,
    /// The pause ends by itself at this moment (set once drained).
    lease_until: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    in_flight: u64,
    /// Requests held at the closed gate.
    waiting: u64,
    pause: Option<Pause>,
    last_id: u64,
    last_ended: Option<(u64, EndReason)>,
}

impl State {
    /// Ends a pause whose lease has run out. Every operation calls this first, so an expired
    /// lease takes effect at the latest when someone next looks (and waiters wake for it).
    fn expire(&mut self, now: Instant) -> bool {
        let expired = self
            .pause
            .as_ref()
            .and_then(|p| p.lease_until)
            .is_some_and(|until| now >= until);
        if expired {
            if let Some(pause) = self.pause.take() {
                tracing::warn!(
                    pause_id = pause.id,
                    "pause lease expired; the application resumes by itself"
                );
                self.last_ended = Some((pause.id, EndReason::LeaseExpired));
            }
        }
        expired
    }

    fn ended(&self, pause_id: u64) -> PauseError {
        let reason = match self.last_ended {
            Some((id, reason)) if id == pause_id => EndedHow::Known(reason),
            _ => EndedHow::Unknown,
        };
        PauseError::Ended { pause_id, reason }
    }
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    changed: Condvar,
    while_paused: WhilePaused,
    max_lease: Duration,
}

/// The gate every request handler passes through, and the pause protocol on top of it.
/// Cheap to clone; clones share the gate.
#[derive(Clone, Debug)]
pub struct PauseController {
    inner: Arc<Inner>,
}

impl Default for PauseController {
    fn default() -> Self {
        Self::new()
    }
}

/// Held by a request inside the gate; the request counts as in flight until it is dropped.
#[derive(Debug)]
#[must_use = "the request is in flight only while the guard lives"]
pub struct RequestGuard {
    inner: Arc<Inner>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut state = lock(&self.inner.state);
        state.in_flight = state.in_flight.saturating_sub(1);
        self.inner.changed.notify_all();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panicking request handler must not wedge the gate: the counter stays right because
    // guards are dropped during unwinding.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl PauseController {
    /// A gate that lets requests wait up to 30 s while paused, with leases of at most an hour.
    pub fn new() -> Self {
        Self::with_options(WhilePaused::default(), Duration::from_secs(3600))
    }

    /// A gate with a policy for requests that arrive while paused, and the longest lease a
    /// pause may ask for.
    pub fn with_options(while_paused: WhilePaused, max_lease: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
                while_paused,
                max_lease,
            }),
        }
    }

    /// Lets a request in. While the application is paused this waits for the pause to end (or
    /// rejects at once), as [`WhilePaused`] says.
    pub fn enter(&self) -> Result<RequestGuard, Rejected> {
        let mut state = lock(&self.inner.state);
        let give_up = match self.inner.while_paused {
            WhilePaused::Wait(limit) => Some(Instant::now() + limit),
            WhilePaused::Reject => None,
        };
        loop {
            let now = Instant::now();
            state.expire(now);
            let Some(pause) = &state.pause else {
                state.in_flight += 1;
                return Ok(RequestGuard {
                    inner: Arc::clone(&self.inner),
                });
            };
            let rejected = Rejected { pause_id: pause.id };
            let Some(give_up) = give_up.filter(|g| now < *g) else {
                return Err(rejected);
            };
            // Wake at the lease's end even if nobody notifies: expiry is noticed, not pushed.
            let wake = pause.lease_until.map_or(give_up, |l| l.min(give_up));
            let wait = wake
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            state.waiting += 1;
            state = self
                .inner
                .changed
                .wait_timeout(state, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            state.waiting -= 1;
        }
    }

    /// Pauses: closes the gate, waits up to `drain_timeout` for the requests in flight to
    /// finish, and holds the gate closed for `lease` from then on unless renewed. When draining
    /// times out the gate opens again and the pause fails.
    pub fn pause(
        &self,
        lease: Duration,
        drain_timeout: Duration,
    ) -> Result<PauseTicket, PauseError> {
        self.check_lease(lease)?;
        let started = Instant::now();
        let mut state = lock(&self.inner.state);
        state.expire(started);
        if let Some(pause) = &state.pause {
            return Err(PauseError::AlreadyPaused { pause_id: pause.id });
        }
        state.last_id += 1;
        let id = state.last_id;
        state.pause = Some(Pause {
            id,
            drained_at: None,
            lease_until: None,
        });
        tracing::info!(
            pause_id = id,
            in_flight = state.in_flight,
            "pausing: draining requests"
        );
        let deadline = started + drain_timeout;
        while state.in_flight > 0 {
            let now = Instant::now();
            if now >= deadline {
                let in_flight = state.in_flight;
                state.pause = None;
                state.last_ended = Some((id, EndReason::DrainTimeout));
                self.inner.changed.notify_all();
                tracing::warn!(pause_id = id, in_flight, "drain timed out; resuming");
                return Err(PauseError::DrainTimeout {
                    in_flight,
                    timeout_ms: millis(drain_timeout),
                });
            }
            state = self
                .inner
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let now = Instant::now();
        match state.pause.as_mut() {
            Some(pause) if pause.id == id => {
                pause.drained_at = Some(now);
                pause.lease_until = Some(now + lease);
                // Requests waiting at the gate sleep until the lease's end, which they learn
                // only now.
                self.inner.changed.notify_all();
            }
            // Resumed by someone else while draining.
            _ => return Err(state.ended(id)),
        }
        tracing::info!(pause_id = id, drained_in = ?now - started, "paused");
        Ok(PauseTicket {
            pause_id: id,
            lease_ms: millis(lease),
            drained_in_ms: millis(now - started),
        })
    }

    /// Extends pause `pause_id` to `lease` from now. Fails if that pause has ended (its lease
    /// expired, say): the caller's window is then broken.
    pub fn renew(&self, pause_id: u64, lease: Duration) -> Result<PauseTicket, PauseError> {
        self.check_lease(lease)?;
        let now = Instant::now();
        let mut state = lock(&self.inner.state);
        state.expire(now);
        match state.pause.as_mut() {
            Some(pause) if pause.id == pause_id && pause.drained_at.is_some() => {
                pause.lease_until = Some(now + lease);
                self.inner.changed.notify_all();
                Ok(PauseTicket {
                    pause_id,
                    lease_ms: millis(lease),
                    drained_in_ms: 0,
                })
            }
            Some(pause) if pause.id == pause_id => Err(PauseError::Invalid(format!(
                "pause {pause_id} is still draining; renew it once it is granted"
            ))),
            _ => Err(state.ended(pause_id)),
        }
    }

    /// Ends pause `pause_id` (or whichever pause is on, with `None`) and opens the gate.
    /// Resuming an application that is not paused with `None` is not an error.
    pub fn resume(&self, pause_id: Option<u64>) -> Result<Option<Resumed>, PauseError> {
        let now = Instant::now();
        let mut state = lock(&self.inner.state);
        state.expire(now);
        let current = state.pause.as_ref().map(|p| p.id);
        match (pause_id, current) {
            (Some(asked), Some(id)) if asked != id => Err(state.ended(asked)),
            (Some(asked), None) => Err(state.ended(asked)),
            (_, None) => Ok(None),
            (_, Some(id)) => {
                let drained_at = state.pause.take().and_then(|p| p.drained_at);
                state.last_ended = Some((id, EndReason::Resumed));
                self.inner.changed.notify_all();
                let paused_ms = drained_at.map_or(0, |at| millis(now - at));
                tracing::info!(pause_id = id, paused_ms, "resumed");
                Ok(Some(Resumed {
                    pause_id: id,
                    paused_ms,
                }))
            }
        }
    }

    /// The state of the gate now.
    pub fn status(&self) -> PauseStatus {
        let now = Instant::now();
        let mut state = lock(&self.inner.state);
        if state.expire(now) {
            self.inner.changed.notify_all();
        }
        let pause = state.pause.as_ref();
        PauseStatus {
            paused: pause.is_some(),
            drained: pause.is_some_and(|p| p.drained_at.is_some()),
            pause_id: pause.map(|p| p.id),
            in_flight: state.in_flight,
            waiting: state.waiting,
            lease_remaining_ms: pause
                .and_then(|p| p.lease_until)
                .map(|until| millis(until.saturating_duration_since(now))),
            last_ended: state.last_ended,
        }
    }

    /// Serves the pause protocol on `addr`, which must be a loopback address (`127.0.0.1:0`
    /// picks a free port; see [`PauseServer::local_addr`]). The server stops when the returned
    /// handle is dropped.
    pub fn serve(&self, addr: impl std::net::ToSocketAddrs) -> std::io::Result<PauseServer> {
        PauseServer::start(self.clone(), addr)
    }

    fn check_lease(&self, lease: Duration) -> Result<(), PauseError> {
        if lease.is_zero() || lease > self.inner.max_lease {
            return Err(PauseError::Invalid(format!(
                "a lease of {} ms is not allowed: it must be longer than zero and at most {} ms",
                millis(lease),
                millis(self.inner.max_lease)
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn pause_waits_for_requests_in_flight_and_blocks_new_ones() {
        let gate = PauseController::with_options(WhilePaused::Reject, Duration::from_secs(60));
        let guard = gate.enter().unwrap();
        let pauser = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.pause(Duration::from_secs(10), Duration::from_secs(10)))
        };
        // The gate closes at once, before draining is done.
        let start = Instant::now();
        while gate.enter().is_ok() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the gate never closed"
            );
            std::thread::yield_now();
        }
        assert!(!gate.status().drained);
        drop(guard);
        let ticket = pauser.join().unwrap().unwrap();
        let status = gate.status();
        assert!(status.paused && status.drained);
        assert_eq!(status.in_flight, 0);
        assert_eq!(gate.enter().unwrap_err().pause_id, ticket.pause_id);
        let resumed = gate.resume(Some(ticket.pause_id)).unwrap().unwrap();
        assert_eq!(resumed.pause_id, ticket.pause_id);
        assert!(gate.enter().is_ok());
    }

    #[test]
    fn drain_timeout_fails_and_reopens_the_gate() {
        let gate = PauseController::with_options(WhilePaused::Reject, Duration::from_secs(60));
        let _stuck = gate.enter().unwrap();
        let err = gate
            .pause(Duration::from_secs(10), Duration::from_millis(50))
            .unwrap_err();
        assert!(
            matches!(err, PauseError::DrainTimeout { in_flight: 1, .. }),
            "{err}"
        );
        assert!(!gate.status().paused);
        assert!(gate.enter().is_ok());
    }

    #[test]
    fn an_expired_lease_resumes_and_the_late_resume_is_told() {
        let gate = PauseController::with_options(
            WhilePaused::Wait(Duration::from_secs(10)),
            Duration::from_secs(60),
        );
        let ticket = gate
            .pause(Duration::from_millis(100), Duration::from_secs(1))
            .unwrap();
        // A request waiting at the gate gets in when the lease runs out, without anyone
        // resuming.
        let start = Instant::now();
        let guard = gate.enter().unwrap();
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(50),
            "entered after {waited:?}"
        );
        assert!(waited < Duration::from_secs(5), "entered after {waited:?}");
        drop(guard);
        assert_eq!(
            gate.status().last_ended,
            Some((ticket.pause_id, EndReason::LeaseExpired))
        );
        let err = gate.resume(Some(ticket.pause_id)).unwrap_err();
        assert_eq!(
            err,
            PauseError::Ended {
                pause_id: ticket.pause_id,
                reason: EndedHow::Known(EndReason::LeaseExpired)
            }
        );
        assert!(gate.renew(ticket.pause_id, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn a_request_that_waited_through_the_drain_gets_in_when_the_lease_ends() {
        let gate = PauseController::with_options(
            WhilePaused::Wait(Duration::from_secs(60)),
            Duration::from_secs(60),
        );
        let in_flight = gate.enter().unwrap();
        let pauser = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                gate.pause(Duration::from_millis(200), Duration::from_secs(10))
            })
        };
        let start = Instant::now();
        while !gate.status().paused {
            assert!(start.elapsed() < Duration::from_secs(10), "never paused");
            std::thread::yield_now();
        }
        // This request arrives while the pause is still draining, before any lease exists.
        let waiter = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                drop(gate.enter().unwrap());
                start.elapsed()
            })
        };
        while gate.status().waiting == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the request never waited"
            );
            std::thread::yield_now();
        }
        drop(in_flight);
        pauser.join().unwrap().unwrap();
        let waited = waiter.join().unwrap();
        assert!(
            waited < Duration::from_secs(5),
            "waited {waited:?} for a 200 ms lease"
        );
    }

    #[test]
    fn one_pause_at_a_time_and_leases_are_bounded() {
        let gate = PauseController::with_options(WhilePaused::Reject, Duration::from_secs(60));
        let first = gate
            .pause(Duration::from_secs(10), Duration::from_secs(1))
            .unwrap();
        assert_eq!(
            gate.pause(Duration::from_secs(10), Duration::from_secs(1)),
            Err(PauseError::AlreadyPaused {
                pause_id: first.pause_id
            })
        );
        assert!(
            gate.renew(first.pause_id, Duration::from_secs(3600))
                .is_err()
        );
        assert!(gate.renew(first.pause_id, Duration::from_secs(30)).is_ok());
        assert!(gate.resume(Some(first.pause_id + 1)).is_err());
        assert!(gate.resume(None).unwrap().is_some());
        assert_eq!(gate.resume(None).unwrap(), None);
    }
}
