//! A wrapper that limits upload and download bandwidth, as RocksDB's backup and restore rate
//! limits do: a backup that must not saturate a production uplink, a restore that must share it.
//!
//! Each direction has a token bucket refilled at the configured rate. A request takes its
//! bytes from the bucket and may leave it in debt; the next request waits until the debt is
//! paid. So a request larger than the burst still passes (at the configured average rate), and
//! concurrent requests queue in the order they asked. A crate such as `governor` refuses
//! requests larger than its burst, which a 64 MiB pack always is, hence these few lines.
//!
//! The rate is an average over requests: the store trait hands over whole objects, so each
//! request waits for its share first and then goes at line speed.

use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::{ObjectMeta, PendingObject, PutMode, Store, StoreError};

/// How much a full bucket lets through without waiting, in seconds of the rate.
const BURST_SECS: f64 = 0.25;

/// Bandwidth limits of a [`ThrottleStore`], in bytes per second; 0 means unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleLimits {
    /// Bytes per second sent by puts (0: unlimited).
    pub upload_bytes_per_sec: u64,
    /// Bytes per second received by gets (0: unlimited).
    pub download_bytes_per_sec: u64,
}

impl ThrottleLimits {
    /// Limits uploads and downloads separately; 0 leaves a direction unlimited.
    pub fn new(upload_bytes_per_sec: u64, download_bytes_per_sec: u64) -> Self {
        Self {
            upload_bytes_per_sec,
            download_bytes_per_sec,
        }
    }
}

/// A token bucket with debt: see the module documentation.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    capacity: f64,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    /// Negative while in debt.
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(bytes_per_sec: u64, now: Instant) -> Option<Self> {
        if bytes_per_sec == 0 {
            return None;
        }
        let rate = bytes_per_sec as f64;
        let capacity = (rate * BURST_SECS).max(1.0);
        Some(Self {
            rate,
            capacity,
            state: Mutex::new(BucketState {
                tokens: capacity,
                last: now,
            }),
        })
    }

    /// Takes `bytes` at `now` and returns how long the caller must wait before (or after)
    /// moving them so the average stays at the rate.
    fn reserve(&self, bytes: u64, now: Instant) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(state.last).as_secs_f64();
        state.last = state.last.max(now);
        state.tokens = (state.tokens + elapsed * self.rate).min(self.capacity);
        state.tokens -= bytes as f64;
        if state.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-state.tokens / self.rate)
        }
    }

    fn pay(&self, bytes: u64) {
        let wait = self.reserve(bytes, Instant::now());
        if !wait.is_zero() {
            tracing::trace!(bytes, wait_ms = wait.as_millis() as u64, "bandwidth limit");
            std::thread::sleep(wait);
        }
    }
}

/// Limits the bandwidth of the inner store's puts and gets. Clones share the limits, so every
/// thread of one backup draws from the same budget.
#[derive(Clone, Debug)]
pub struct ThrottleStore<S> {
    inner: S,
    limits: ThrottleLimits,
    upload: Option<Arc<Bucket>>,
    download: Option<Arc<Bucket>>,
}

impl<S: Store> ThrottleStore<S> {
    /// Wraps `inner` with `limits`.
    pub fn new(inner: S, limits: ThrottleLimits) -> Self {
        let now = Instant::now();
        Self {
            inner,
            limits,
            upload: Bucket::new(limits.upload_bytes_per_sec, now).map(Arc::new),
            download: Bucket::new(limits.download_bytes_per_sec, now).map(Arc::new),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> ThrottleLimits {
        self.limits
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner store.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Store> Store for ThrottleStore<S> {
    fn put(&self, key: &str, bytes: &[u8], mode: PutMode) -> Result<(), StoreError> {
        if let Some(bucket) = &self.upload {
            bucket.pay(bytes.len() as u64);
        }
        self.inner.put(key, bytes, mode)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let bytes = self.inner.get(key)?;
        // The size is known only now; waiting afterwards keeps the average all the same.
        if let Some(bucket) = &self.download {
            bucket.pay(bytes.len() as u64);
        }
        Ok(bytes)
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
        if let Some(bucket) = &self.download {
            bucket.pay(range.end.saturating_sub(range.start));
        }
        self.inner.get_range(key, range)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.inner.list(prefix)
    }

    fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.inner.head(key)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key)
    }

    fn describe(&self) -> String {
        self.inner.describe()
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

    fn put_pieces(
        &self,
        size_hint: usize,
        buffer: Vec<u8>,
    ) -> Result<Box<dyn PendingObject + '_>, StoreError> {
        Ok(Box::new(ThrottledObject {
            inner: self.inner.put_pieces(size_hint, buffer)?,
            upload: self.upload.as_deref(),
        }))
    }
}

/// A [`ThrottleStore`]'s pending object: each piece waits for its share of the upload rate.
struct ThrottledObject<'a> {
    inner: Box<dyn PendingObject + 'a>,
    upload: Option<&'a Bucket>,
}

impl PendingObject for ThrottledObject<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        if let Some(bucket) = self.upload {
            bucket.pay(bytes.len() as u64);
        }
        self.inner.write(bytes)
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn finish(self: Box<Self>, key: &str, mode: PutMode) -> Result<Vec<u8>, StoreError> {
        self.inner.finish(key, mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[track_caller]
    fn about(actual: Duration, millis: u64) {
        let expected = Duration::from_millis(millis);
        let off = actual.abs_diff(expected);
        assert!(
            off < Duration::from_micros(10),
            "{actual:?} is not {expected:?}"
        );
    }

    #[test]
    fn bucket_lets_a_burst_through_then_charges_the_rate() {
        let start = Instant::now();
        let bucket = Bucket::new(1000, start).unwrap();
        // Full bucket: 250 bytes pass at once.
        assert_eq!(bucket.reserve(250, start), Duration::ZERO);
        // 500 more: 0.5 s of debt.
        about(bucket.reserve(500, start), 500);
        // The next caller queues behind that debt.
        about(bucket.reserve(100, start), 600);
        // Time pays the debt back; a full bucket holds no more than the burst.
        let later = start + Duration::from_secs(10);
        assert_eq!(bucket.reserve(250, later), Duration::ZERO);
        about(bucket.reserve(1, later), 1);
        // A request larger than the burst passes, at the rate.
        let much_later = later + Duration::from_secs(10);
        about(bucket.reserve(2250, much_later), 2000);
        assert!(Bucket::new(0, start).is_none(), "0 is unlimited");
    }

    const KIB: u64 = 1024;

    #[test]
    fn uploads_take_at_least_their_size_over_the_rate() {
        let store = ThrottleStore::new(MemoryStore::new(), ThrottleLimits::new(400 * KIB, 0));
        let chunk = vec![7u8; 40 * KIB as usize];
        let started = Instant::now();
        for i in 0..10 {
            store
                .put(&format!("packs/{i}"), &chunk, PutMode::Create)
                .unwrap();
        }
        // 400 KiB at 400 KiB/s, less the 100 KiB burst: at least 0.75 s.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(750), "took {elapsed:?}");
        assert_eq!(store.inner().total_bytes(), 400 * KIB);
    }

    #[test]
    fn downloads_take_at_least_their_size_over_the_rate() {
        let inner = MemoryStore::new();
        inner.raw_put("packs/p", vec![1u8; 200 * KIB as usize]);
        let store = ThrottleStore::new(inner, ThrottleLimits::new(0, 400 * KIB));
        let started = Instant::now();
        // Whole gets (charged after) and ranged gets (charged before) share one budget:
        // 200 + 2 × 100 KiB = 400 KiB, less the burst.
        assert_eq!(store.get("packs/p").unwrap().len(), 200 * KIB as usize);
        for half in [0..100 * KIB, 100 * KIB..200 * KIB] {
            assert_eq!(
                store.get_range("packs/p", half).unwrap().len(),
                100 * KIB as usize
            );
        }
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(750), "took {elapsed:?}");
    }

    #[test]
    fn threads_share_one_budget() {
        let store = ThrottleStore::new(MemoryStore::new(), ThrottleLimits::new(400 * KIB, 0));
        let started = Instant::now();
        std::thread::scope(|s| {
            for t in 0..4 {
                let store = store.clone();
                s.spawn(move || {
                    for i in 0..5 {
                        let chunk = vec![t as u8; 20 * KIB as usize];
                        store
                            .put(&format!("packs/{t}/{i}"), &chunk, PutMode::Create)
                            .unwrap();
                    }
                });
            }
        });
        // 4 × 5 × 20 KiB = 400 KiB at 400 KiB/s, less the burst.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(750), "took {elapsed:?}");
        assert_eq!(store.inner().len(), 20);
    }
}
