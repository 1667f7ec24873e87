//! Where a Backstop repository keeps its bytes: a minimal contract for immutable objects.
//!
//! A [`Store`] holds objects under slash-separated keys (`packs/ab/ab12…`, `snapshots/0000000001-…`).
//! Objects are written once and never modified; the repository layer on top relies on nothing
//! else, so the same code runs on a local directory, in memory, or on an object store that has
//! no appends, no renames, slow listings and no read-after-list consistency.
//!
//! Implementations here: [`MemoryStore`] (tests, examples), [`LocalStore`] (a directory) and,
//! each behind the feature of the same name, `S3Store` (`s3`: any S3-compatible object store),
//! `AzureStore` (`azure`: Azure Blob Storage) and `WebDavStore` (`webdav`: a WebDAV server), all
//! through the `object_store` crate, and `GcsStore` (`gcs`: Google Cloud Storage) and `SftpStore`
//! (`sftp`: an SSH server), through OpenDAL's GCS and SFTP services.
//! [`open_url`] picks one from a URL such as `/srv/backups`, `file:///srv/backups`,
//! `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`,
//! `webdav+https://host/path` or `sftp://user@host/path`.
//! Wrappers compose: [`FaultStore`] injects failures for crash-safety tests, [`CountingStore`]
//! counts requests and bytes, [`CachingStore`] keeps the immutable metadata objects in a local
//! directory, [`ThrottleStore`] limits upload and download bandwidth.

#[cfg(feature = "azure")]
mod azure;
mod cache;
mod counting;
mod error;
mod fault;
#[cfg(feature = "gcs")]
mod gcs;
mod local;
mod memory;
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure", feature = "webdav"))]
#[cfg_attr(
    not(any(feature = "s3", feature = "azure", feature = "webdav")),
    expect(
        dead_code,
        unused_imports,
        unused_macros,
        reason = "the GCS store uses only the options and URL helpers, not the object_store adapter"
    )
)]
mod object;
#[cfg(any(feature = "sftp", feature = "gcs"))]
mod operator;
#[cfg(feature = "s3")]
mod s3;
#[cfg(feature = "sftp")]
mod sftp;
#[cfg(feature = "sftp")]
mod sftp_fsync;
mod throttle;
mod url;
#[cfg(feature = "webdav")]
mod webdav;

#[cfg(feature = "testing")]
pub mod conformance;
#[cfg(feature = "testing")]
pub mod test_servers;

#[cfg(feature = "azure")]
pub use azure::AzureStore;
pub use cache::{CacheStats, CachingStore, is_cacheable, remove_unused_caches};
pub use counting::{CountingStore, RequestCounter, RequestCounts};
pub use error::{StoreError, StoreErrorKind};
pub use fault::{FaultPlan, FaultStore};
#[cfg(feature = "gcs")]
pub use gcs::GcsStore;
pub use local::{LocalStore, LocalStoreOptions};
pub use memory::{MemorySnapshot, MemoryStore};
#[cfg(any(feature = "s3", feature = "gcs", feature = "azure", feature = "webdav"))]
pub use object::CloudStoreOptions;
#[cfg(feature = "s3")]
pub use s3::{S3Credentials, S3Store, S3StoreOptions};
#[cfg(feature = "sftp")]
pub use sftp::{HostKeyCheck, SFTP_KEY_ENV, SftpStore, SftpStoreOptions};
pub use throttle::{ThrottleLimits, ThrottleStore};
pub use url::{SUPPORTED_SCHEMES, open_url};
#[cfg(feature = "webdav")]
pub use webdav::WebDavStore;

use std::ops::Range;

/// How a put treats an object that already exists under the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Replace whatever is there (for content-addressed keys the bytes are the same anyway).
    Overwrite,
    /// Fail with [`StoreErrorKind::AlreadyExists`] if the key exists. Best effort on stores that
    /// do not honour conditional writes; the repository never relies on it for safety alone.
    /// An object store whose client retried a create that had landed (its answer lost) finds
    /// the key taken; when the object there holds exactly these bytes, the put succeeds.
    Create,
}

/// One object as a listing reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The full key, including the listed prefix.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, seconds since the Unix epoch, when the store knows it.
    pub modified_unix: Option<i64>,
}

/// Storage for immutable objects.
///
/// # Contract
/// - `put` is atomic: a reader sees either no object or the whole object, never a prefix, and a
///   crash during `put` leaves no object (at most an invisible temporary). When `put` returns `Ok`, the object is durable to the degree the store promises
///   (`LocalStore` with `sync` on: fsynced, directory entry included).
/// - Read-after-write: a `get` after a successful `put` of the same key returns the new bytes.
/// - `get_range` returns exactly the requested bytes or an error; a range past the end is
///   [`StoreErrorKind::InvalidRange`]; a missing key is [`StoreErrorKind::NotFound`].
/// - `list` returns every object whose key starts with `prefix`, in no particular order; it may
///   miss objects written concurrently.
/// - `delete` of a missing key succeeds (deletes are idempotent).
/// - Keys are ASCII, `/`-separated, without `..`, leading `/` or empty segments; a store may
///   reject others with [`StoreErrorKind::InvalidKey`].
///
/// # Clone
/// Stores are used from several threads at once through `&self`; wrap one in an `Arc` to share it.
///
/// # Wrappers
/// A wrapper implements `Store` over an inner store and forwards what it does not change:
/// [`FaultStore`], [`CountingStore`], [`CachingStore`], [`ThrottleStore`].
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Stores `bytes` under `key`.
    fn put(&self, key: &str, bytes: &[u8], mode: PutMode) -> Result<(), StoreError>;

    /// Reads the whole object.
    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError>;

    /// Reads `range` of the object.
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError>;

    /// Lists objects whose key starts with `prefix`.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError>;

    /// Size of one object, or `NotFound`.
    fn head(&self, key: &str) -> Result<ObjectMeta, StoreError>;

    /// Removes an object; missing objects are not an error.
    fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// A short human description, such as `local:/srv/backups` or `s3://bucket/prefix`.
    fn describe(&self) -> String;

    /// Removes what interrupted puts left behind and is older than `min_age` (the temp files
    /// of stores that write one and rename it into place); returns how many were removed.
    /// Stores whose unfinished puts leave nothing that costs space do nothing: the default.
    /// Wrappers must forward it.
    fn remove_temp_files(&self, min_age: std::time::Duration) -> Result<u64, StoreError> {
        let _ = min_age;
        Ok(0)
    }

    /// How many bytes a reader of a whole object asks for at a time (gc's rewrite and a full
    /// verify read packs front to back, holding one such piece): small where a ranged read
    /// costs little (a local file), so that memory stays small; large where each request costs
    /// a round trip (an object store, SFTP), so that a pack of the default 8 MiB takes one
    /// request. The default is the latter. Wrappers must forward it.
    fn sequential_read_size(&self) -> u64 {
        16 << 20
    }

    /// Drops whatever copy of `key` a wrapper keeps on the way (a cache), because the caller
    /// found the bytes it read bad (they fail authentication or do not decode); returns whether
    /// a copy was dropped, and so whether reading `key` again may give other bytes. The object
    /// in the store itself stays. Why: a cache that kept the bytes of a damaged copy would
    /// serve them after the repository's copy was mended, and one cache entry serves every
    /// copy of a repository. Stores that keep no copies do nothing and return `false`: the
    /// default. Wrappers must forward it (and may drop a copy of their own).
    fn evict(&self, key: &str) -> bool {
        let _ = key;
        false
    }

    /// Starts an object that is written piece by piece and named only when it is complete (a
    /// pack's key is the hash of its bytes), with `put`'s guarantees once
    /// [`PendingObject::finish`] returns; dropping it unfinished stores nothing. `size_hint` is
    /// about how large it will be, and `buffer` memory that a store which gathers the pieces
    /// may use; `finish` hands it back for the next object, so that a writer of many objects
    /// allocates it once.
    ///
    /// The default gathers the pieces in memory and `put`s them at the end. [`LocalStore`]
    /// writes them to a temp file as they come, so that a backup does not hold a whole pack in
    /// memory. Wrappers that act on puts may keep the default, which hands them the whole
    /// object through their own `put`; [`CountingStore`] forwards it and counts.
    fn put_pieces(
        &self,
        size_hint: usize,
        buffer: Vec<u8>,
    ) -> Result<Box<dyn PendingObject + '_>, StoreError> {
        let mut bytes = buffer;
        bytes.clear();
        bytes.reserve(size_hint);
        Ok(Box::new(GatheredObject { store: self, bytes }))
    }
}

/// An object being written by [`Store::put_pieces`].
pub trait PendingObject: Send {
    /// Appends `bytes`.
    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError>;

    /// How many bytes were written so far.
    fn len(&self) -> u64;

    /// Whether nothing was written yet.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores what was written under `key`, as [`Store::put`] would; returns the buffer given
    /// to [`Store::put_pieces`] (or an empty one) for the next object.
    fn finish(self: Box<Self>, key: &str, mode: PutMode) -> Result<Vec<u8>, StoreError>;
}

/// [`Store::put_pieces`]'s default: the pieces in memory, one `put` at the end.
struct GatheredObject<'a, S: ?Sized> {
    store: &'a S,
    bytes: Vec<u8>,
}

impl<S: Store + ?Sized> PendingObject for GatheredObject<'_, S> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn finish(self: Box<Self>, key: &str, mode: PutMode) -> Result<Vec<u8>, StoreError> {
        self.store.put(key, &self.bytes, mode)?;
        Ok(self.bytes)
    }
}

/// Implements [`Store`] for pointer types by forwarding every method, from one list: a method
/// with a default that a pointer type failed to forward would run the default instead of the
/// pointee's own (a store's `put_pieces` or `remove_temp_files`), silently.
macro_rules! forward_store {
    ($($pointer:ty),+) => {$(
        impl<S: Store + ?Sized> Store for $pointer {
            fn put(&self, key: &str, bytes: &[u8], mode: PutMode) -> Result<(), StoreError> {
                (**self).put(key, bytes, mode)
            }
            fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
                (**self).get(key)
            }
            fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
                (**self).get_range(key, range)
            }
            fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
                (**self).list(prefix)
            }
            fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
                (**self).head(key)
            }
            fn delete(&self, key: &str) -> Result<(), StoreError> {
                (**self).delete(key)
            }
            fn describe(&self) -> String {
                (**self).describe()
            }
            fn remove_temp_files(&self, min_age: std::time::Duration) -> Result<u64, StoreError> {
                (**self).remove_temp_files(min_age)
            }
            fn sequential_read_size(&self) -> u64 {
                (**self).sequential_read_size()
            }
            fn evict(&self, key: &str) -> bool {
                (**self).evict(key)
            }
            fn put_pieces(
                &self,
                size_hint: usize,
                buffer: Vec<u8>,
            ) -> Result<Box<dyn PendingObject + '_>, StoreError> {
                (**self).put_pieces(size_hint, buffer)
            }
        }
    )+};
}

forward_store!(std::sync::Arc<S>, Box<S>);

/// Checks a key against the contract's rules; stores call it before touching anything.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.ends_with('/')
        || !key.is_ascii()
        || key
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        || key.bytes().any(|b| b.is_ascii_control() || b == b'\\');
    if bad {
        return Err(StoreError::new(
            StoreErrorKind::InvalidKey,
            key,
            "key breaks the key rules",
        ));
    }
    Ok(())
}

/// Checks a listing prefix and splits it into its complete segments (`packs/ab/`) and the
/// possibly partial last one (`ab12`), which only filters names. The complete segments follow
/// the key rules, so a prefix cannot climb out of a store's root.
pub(crate) fn split_prefix(prefix: &str) -> Result<(&str, &str), StoreError> {
    let (dir_part, name_part) = match prefix.rfind('/') {
        Some(at) => prefix.split_at(at + 1),
        None => ("", prefix),
    };
    let bad = prefix.starts_with('/')
        || !prefix.is_ascii()
        || prefix.bytes().any(|b| b.is_ascii_control() || b == b'\\')
        || dir_part
            .strip_suffix('/')
            .is_some_and(|d| d.split('/').any(|s| s.is_empty() || s == "." || s == ".."));
    if bad {
        return Err(StoreError::new(
            StoreErrorKind::InvalidKey,
            prefix,
            "listing prefix breaks the key rules",
        ));
    }
    Ok((dir_part, name_part))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A wrapper that did not forward `sequential_read_size` would give gc and verify the
    /// default's 16 MiB pieces over a local store, silently.
    #[test]
    fn every_wrapper_forwards_the_read_size_of_the_store_it_wraps() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("a temp dir: {e}"));
        let local = LocalStore::new(dir.path().join("repo"));
        let expected = local.sequential_read_size();
        assert_ne!(expected, MemoryStore::new().sequential_read_size());
        let cache_dir = dir.path().join("cache");
        let wrapped = Arc::new(ThrottleStore::new(
            FaultStore::new(CachingStore::new(
                CountingStore::new(Box::new(local) as Box<dyn Store>),
                cache_dir,
            )),
            ThrottleLimits::new(0, 0),
        ));
        assert_eq!(wrapped.sequential_read_size(), expected);
        let shared: Arc<dyn Store> = wrapped;
        assert_eq!(shared.sequential_read_size(), expected);
    }
}
