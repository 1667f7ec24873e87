//! A cloneable flag that asks long-running work to stop at the next safe point.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Cancellation shared between the caller (a Ctrl-C handler, say) and the work in progress.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the work to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether cancellation was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}
