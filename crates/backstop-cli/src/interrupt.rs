//! Ctrl-C (and SIGTERM, SIGHUP): the first one asks the running work to stop at a safe point,
//! the second one, or one while nothing cancellable runs, exits at once.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use backstop::CancelToken;

use crate::exit::Code;

#[derive(Debug, Default)]
struct Interrupt {
    token: CancelToken,
    /// Whether some work watches `token`; until then an interruption just exits.
    watched: AtomicBool,
    presses: AtomicU32,
}

static INTERRUPT: OnceLock<Interrupt> = OnceLock::new();

fn state() -> &'static Interrupt {
    INTERRUPT.get_or_init(Interrupt::default)
}

/// Installs the handler. Failing to install it is not fatal: Ctrl-C then kills the process,
/// which the repository survives too (only `gc` has more to clean up).
pub(crate) fn install() {
    let result = ctrlc::set_handler(|| {
        let state = state();
        let presses = state.presses.fetch_add(1, Ordering::SeqCst) + 1;
        if presses == 1 && state.watched.load(Ordering::SeqCst) {
            state.token.cancel();
            eprintln!(
                "interrupted: stopping at the next safe point (press Ctrl-C again to quit at once)"
            );
        } else {
            eprintln!("interrupted");
            std::process::exit(i32::from(Code::Interrupted.as_u8()));
        }
    });
    if let Err(err) = result {
        tracing::warn!("cannot install the Ctrl-C handler: {err}");
    }
}

/// The token to hand to the engine; from now on the first Ctrl-C cancels instead of exiting.
pub(crate) fn cancel_token() -> CancelToken {
    let state = state();
    state.watched.store(true, Ordering::SeqCst);
    state.token.clone()
}

/// Whether the user interrupted.
pub(crate) fn interrupted() -> bool {
    state().presses.load(Ordering::SeqCst) > 0
}
