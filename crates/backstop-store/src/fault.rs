//! A wrapper that fails chosen requests, for crash-safety tests: "what if the Nth put fails?".

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::{ObjectMeta, PutMode, Store, StoreError, StoreErrorKind};

/// Which requests a [`FaultStore`] fails. Rules combine: a request fails if any rule matches.
///
/// Puts and gets are numbered from 0 in the order the store sees them (`get` and `get_range`
/// share one numbering).
///
/// ```
/// use backstop_store::FaultPlan;
/// // The third put fails, and leaves half an object behind as a non-atomic store could.
/// let plan = FaultPlan::new().fail_put(2).leave_torn_object();
/// ```
#[derive(Clone, Debug)]
pub struct FaultPlan {
    fail_put_at: Option<u64>,
    fail_puts_from: Option<u64>,
    fail_get_at: Option<u64>,
    fail_gets_from: Option<u64>,
    fail_put_prefix: Option<String>,
    fail_delete_at: Option<u64>,
    torn: bool,
    apply_then_fail: bool,
    kind: StoreErrorKind,
}

impl Default for FaultPlan {
    fn default() -> Self {
        Self {
            fail_put_at: None,
            fail_puts_from: None,
            fail_get_at: None,
            fail_gets_from: None,
            fail_put_prefix: None,
            fail_delete_at: None,
            torn: false,
            apply_then_fail: false,
            kind: StoreErrorKind::Other,
        }
    }
}

impl FaultPlan {
    /// A plan that fails nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fails put number `n` (counting from 0) and no other.
    pub fn fail_put(mut self, n: u64) -> Self {
        self.fail_put_at = Some(n);
        self
    }

    /// Fails put number `n` and every put after it, as if the process died before put `n`.
    pub fn fail_puts_from(mut self, n: u64) -> Self {
        self.fail_puts_from = Some(n);
        self
    }

    /// Fails get number `n` (counting from 0; `get` and `get_range` together).
    pub fn fail_get(mut self, n: u64) -> Self {
        self.fail_get_at = Some(n);
        self
    }

    /// Fails get number `n` and every get after it.
    pub fn fail_gets_from(mut self, n: u64) -> Self {
        self.fail_gets_from = Some(n);
        self
    }

    /// Fails every put whose key starts with `prefix`.
    pub fn fail_puts_with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.fail_put_prefix = Some(prefix.into());
        self
    }

    /// Fails delete number `n` (counting from 0) and no other: the caller stops there, as if
    /// it had died before that delete.
    pub fn fail_delete(mut self, n: u64) -> Self {
        self.fail_delete_at = Some(n);
        self
    }

    /// A failing put leaves the first half of its bytes under the key, as a torn write on a store
    /// without atomic puts would (unless `PutMode::Create` finds the key taken).
    pub fn leave_torn_object(mut self) -> Self {
        self.torn = true;
        self
    }

    /// A failing put stores the whole object and then reports an error anyway, as when the
    /// connection drops after the server committed the write.
    pub fn apply_then_fail(mut self) -> Self {
        self.apply_then_fail = true;
        self
    }

    /// The kind of the injected errors (default [`StoreErrorKind::Other`]; use `Transient` to
    /// exercise retries, `StorageFull` for a full disk).
    pub fn with_error_kind(mut self, kind: StoreErrorKind) -> Self {
        self.kind = kind;
        self
    }

    fn put_fails(&self, n: u64, key: &str) -> bool {
        self.fail_put_at == Some(n)
            || self.fail_puts_from.is_some_and(|from| n >= from)
            || self
                .fail_put_prefix
                .as_deref()
                .is_some_and(|p| key.starts_with(p))
    }

    fn get_fails(&self, n: u64) -> bool {
        self.fail_get_at == Some(n) || self.fail_gets_from.is_some_and(|from| n >= from)
    }
}

#[derive(Debug, Default)]
struct FaultState {
    puts_seen: AtomicU64,
    gets_seen: AtomicU64,
    deletes_seen: AtomicU64,
    faults: AtomicU64,
}

/// Forwards to an inner store but fails the requests its [`FaultPlan`] names.
///
/// Clones share the plan and the counters. With the default plan nothing fails, which makes it
/// a put counter: run an operation once, read [`FaultStore::puts_seen`], then replay it with
/// `fail_put(n)` for every `n` below that count.
#[derive(Clone, Debug)]
pub struct FaultStore<S> {
    inner: S,
    plan: Arc<Mutex<FaultPlan>>,
    state: Arc<FaultState>,
}

impl<S: Store> FaultStore<S> {
    /// Wraps `inner` with a plan that fails nothing.
    pub fn new(inner: S) -> Self {
        Self::with_plan(inner, FaultPlan::new())
    }

    /// Wraps `inner` with `plan`.
    pub fn with_plan(inner: S, plan: FaultPlan) -> Self {
        Self {
            inner,
            plan: Arc::new(Mutex::new(plan)),
            state: Arc::default(),
        }
    }

    /// Replaces the plan; request numbering continues (see [`FaultStore::reset_counts`]).
    pub fn set_plan(&self, plan: FaultPlan) {
        *self.plan.lock().unwrap_or_else(PoisonError::into_inner) = plan;
    }

    /// Puts seen so far, failed ones included.
    pub fn puts_seen(&self) -> u64 {
        self.state.puts_seen.load(Ordering::SeqCst)
    }

    /// Gets (`get` and `get_range`) seen so far, failed ones included.
    pub fn gets_seen(&self) -> u64 {
        self.state.gets_seen.load(Ordering::SeqCst)
    }

    /// Deletes seen so far, failed ones included.
    pub fn deletes_seen(&self) -> u64 {
        self.state.deletes_seen.load(Ordering::SeqCst)
    }

    /// Requests failed on purpose so far.
    pub fn faults_injected(&self) -> u64 {
        self.state.faults.load(Ordering::SeqCst)
    }

    /// Restarts the put, get and delete numbering at 0 and clears the fault count.
    pub fn reset_counts(&self) {
        self.state.puts_seen.store(0, Ordering::SeqCst);
        self.state.deletes_seen.store(0, Ordering::SeqCst);
        self.state.gets_seen.store(0, Ordering::SeqCst);
        self.state.faults.store(0, Ordering::SeqCst);
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner store.
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn plan(&self) -> FaultPlan {
        self.plan
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn injected(&self, kind: StoreErrorKind, key: &str, what: String) -> StoreError {
        self.state.faults.fetch_add(1, Ordering::SeqCst);
        tracing::debug!(key, what, "injecting a store fault");
        StoreError::new(kind, key, format!("injected fault: {what}"))
    }

    fn before_get(&self, key: &str) -> Result<(), StoreError> {
        let n = self.state.gets_seen.fetch_add(1, Ordering::SeqCst);
        let plan = self.plan();
        if plan.get_fails(n) {
            return Err(self.injected(plan.kind, key, format!("get #{n} failed")));
        }
        Ok(())
    }
}

impl<S: Store> Store for FaultStore<S> {
    fn put(&self, key: &str, bytes: &[u8], mode: PutMode) -> Result<(), StoreError> {
        let n = self.state.puts_seen.fetch_add(1, Ordering::SeqCst);
        let plan = self.plan();
        if !plan.put_fails(n, key) {
            return self.inner.put(key, bytes, mode);
        }
        if plan.apply_then_fail {
            self.inner.put(key, bytes, mode)?;
        } else if plan.torn {
            let taken = mode == PutMode::Create && self.inner.head(key).is_ok();
            if !taken {
                let half = bytes.get(..bytes.len() / 2).unwrap_or_default();
                // The torn object is a side effect of the failure being simulated; if it cannot
                // be written, the put still fails, which is all the test relies on.
                if let Err(err) = self.inner.put(key, half, PutMode::Overwrite) {
                    tracing::warn!(key, error = %err, "cannot leave torn object");
                }
            }
        }
        Err(self.injected(plan.kind, key, format!("put #{n} failed")))
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        self.before_get(key)?;
        self.inner.get(key)
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
        self.before_get(key)?;
        self.inner.get_range(key, range)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.inner.list(prefix)
    }

    fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.inner.head(key)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let n = self.state.deletes_seen.fetch_add(1, Ordering::SeqCst);
        let plan = self.plan();
        if plan.fail_delete_at == Some(n) {
            return Err(self.injected(plan.kind, key, format!("delete #{n} failed")));
        }
        self.inner.delete(key)
    }

    fn describe(&self) -> String {
        format!("fault({})", self.inner.describe())
    }

    fn remove_temp_files(&self, min_age: std::time::Duration) -> Result<u64, StoreError> {
        self.inner.remove_temp_files(min_age)
    }

    fn sequential_read_size(&self) -> u64 {
        self.inner.sequential_read_size()
    }

    fn evict(&self, key: &str) -> bool {
        self.inner.evict(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[test]
    fn fails_the_nth_put_only() {
        let base = MemoryStore::new();
        let store = FaultStore::with_plan(base.clone(), FaultPlan::new().fail_put(1));
        store.put("a", b"1", PutMode::Create).unwrap();
        let err = store.put("b", b"2", PutMode::Create).unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Other);
        store.put("c", b"3", PutMode::Create).unwrap();
        assert_eq!(base.keys(), vec!["a".to_owned(), "c".to_owned()]);
        assert_eq!(store.puts_seen(), 3);
        assert_eq!(store.faults_injected(), 1);
    }

    #[test]
    fn fails_every_put_from_n_and_leaves_torn_objects() {
        let base = MemoryStore::new();
        let store = FaultStore::with_plan(
            base.clone(),
            FaultPlan::new().fail_puts_from(1).leave_torn_object(),
        );
        store.put("a", b"1234", PutMode::Create).unwrap();
        assert!(store.put("b", b"5678", PutMode::Create).is_err());
        assert!(store.put("a", b"abcd", PutMode::Create).is_err());
        assert_eq!(base.raw_get("b").unwrap(), b"56");
        assert_eq!(
            base.raw_get("a").unwrap(),
            b"1234",
            "Create on a taken key tears nothing"
        );
    }

    #[test]
    fn prefix_gets_and_apply_then_fail() {
        let base = MemoryStore::new();
        let store = FaultStore::new(base.clone());
        store.set_plan(
            FaultPlan::new()
                .fail_puts_with_prefix("snapshots/")
                .fail_get(1)
                .apply_then_fail()
                .with_error_kind(StoreErrorKind::Transient),
        );
        store.put("packs/1", b"p", PutMode::Create).unwrap();
        let err = store.put("snapshots/1", b"s", PutMode::Create).unwrap_err();
        assert!(err.is_transient());
        assert_eq!(base.raw_get("snapshots/1").unwrap(), b"s");
        store.get("packs/1").unwrap();
        assert!(store.get_range("packs/1", 0..1).is_err());
        store.get("packs/1").unwrap();
        assert_eq!(store.gets_seen(), 3);
    }
}
