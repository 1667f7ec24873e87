//! The conformance suite: what every [`Store`] must do, checked the same way on every store.
//!
//! Call [`run_all`] from a test with a fresh store, or the single checks to narrow a failure.
//! Each check works under its own random prefix (`conformance/<random>/`) and deletes what it
//! wrote, so the suite can also run against a shared bucket. A check panics with the store's
//! description, the key and the error when the store breaks the contract.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::Range;

use crate::{ObjectMeta, PutMode, Store, StoreError, StoreErrorKind};

/// Size of the object [`large_object_round_trip`] writes: larger than the usual multipart part
/// size (5–16 MiB), so object stores exercise multipart upload.
pub const LARGE_OBJECT_SIZE: usize = 20 * 1024 * 1024;

/// Runs every check in turn.
pub fn run_all(store: &dyn Store) {
    run_all_without_atomic_create(store);
    concurrent_create_has_one_winner(store);
}

/// Every check, with the race of creates held only to what a store without real conditional
/// writes promises (Garage, s3s-fs: `If-None-Match: *` is checked before the write, not with
/// it): [`concurrent_creates_leave_one_whole_object`] instead of
/// [`concurrent_create_has_one_winner`]. The repository is built to be safe on such stores.
pub fn run_all_without_atomic_create(store: &dyn Store) {
    concurrent_creates_leave_one_whole_object(store);
    missing_key_is_not_found(store);
    put_then_get_round_trips(store);
    pieced_puts_store_the_pieces_in_order(store);
    empty_object_round_trips(store);
    create_on_existing_is_already_exists(store);
    overwrite_replaces(store);
    ranged_reads(store);
    list_by_prefix(store);
    delete_is_idempotent(store);
    invalid_keys_are_rejected(store);
    large_object_round_trip(store);
    concurrent_puts(store);
}

/// A private namespace for one check, emptied when dropped (also when the check panics).
struct Scratch<'a> {
    store: &'a dyn Store,
    prefix: String,
}

impl<'a> Scratch<'a> {
    fn new(store: &'a dyn Store, check: &str) -> Self {
        let prefix = format!("conformance/{:016x}/{check}/", rand::random::<u64>());
        Self { store, prefix }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        if let Ok(objects) = self.store.list(&self.prefix) {
            for object in objects {
                // Best effort: a failed check already explains itself, and leftovers under a
                // random prefix harm no later check.
                let _ = self.store.delete(&object.key);
            }
        }
    }
}

#[track_caller]
fn ok<T>(store: &dyn Store, what: &str, result: Result<T, StoreError>) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!(
            "{}: {what} failed: {err} ({:?}; {err:?})",
            store.describe(),
            err.kind()
        ),
    }
}

#[track_caller]
fn fails_with<T: Debug>(
    store: &dyn Store,
    what: &str,
    expected: StoreErrorKind,
    result: Result<T, StoreError>,
) {
    match result {
        Ok(value) => panic!(
            "{}: {what} succeeded with {value:?}, expected a {expected:?} error",
            store.describe()
        ),
        Err(err) => assert_eq!(
            err.kind(),
            expected,
            "{}: {what} failed with the wrong kind: {err}",
            store.describe()
        ),
    }
}

/// Bytes that differ at every offset, so a shifted or misplaced range cannot pass as correct.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            // xorshift64: cheap, and no run of equal bytes.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

fn slice(bytes: &[u8], range: Range<usize>) -> &[u8] {
    bytes.get(range).unwrap_or_default()
}

fn sorted(mut objects: Vec<ObjectMeta>) -> Vec<(String, u64)> {
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    objects.into_iter().map(|o| (o.key, o.size)).collect()
}

/// `get`, `get_range` and `head` of a key that was never written fail with `NotFound`.
pub fn missing_key_is_not_found(store: &dyn Store) {
    let scratch = Scratch::new(store, "missing");
    let key = scratch.key("never/written");
    fails_with(
        store,
        "get of a missing key",
        StoreErrorKind::NotFound,
        store.get(&key),
    );
    fails_with(
        store,
        "get_range of a missing key",
        StoreErrorKind::NotFound,
        store.get_range(&key, 0..1),
    );
    fails_with(
        store,
        "empty get_range of a missing key",
        StoreErrorKind::NotFound,
        store.get_range(&key, 0..0),
    );
    fails_with(
        store,
        "head of a missing key",
        StoreErrorKind::NotFound,
        store.head(&key),
    );
}

/// A put is visible to the next get, head and list.
pub fn put_then_get_round_trips(store: &dyn Store) {
    let scratch = Scratch::new(store, "round-trip");
    let key = scratch.key("packs/ab/abcdef");
    let bytes = pattern(4321, 1);
    ok(store, "put", store.put(&key, &bytes, PutMode::Create));
    assert_eq!(
        ok(store, "get", store.get(&key)),
        bytes,
        "{}: get after put",
        store.describe()
    );
    let meta = ok(store, "head", store.head(&key));
    assert_eq!(
        (meta.key.as_str(), meta.size),
        (key.as_str(), 4321),
        "{}: head",
        store.describe()
    );
    let listed = sorted(ok(store, "list", store.list(&scratch.prefix)));
    assert_eq!(
        listed,
        vec![(key, 4321)],
        "{}: list after put",
        store.describe()
    );
}

/// An object written piece by piece ([`Store::put_pieces`]) is stored whole under the key given
/// at the end and nothing is visible before; one dropped unfinished leaves nothing, and one
/// finished with `Create` on an existing key fails with `AlreadyExists` and leaves the object.
pub fn pieced_puts_store_the_pieces_in_order(store: &dyn Store) {
    let scratch = Scratch::new(store, "pieces");
    let key = scratch.key("packs/cd/cdef01");
    let bytes = pattern(300_001, 7);
    let mut pending = ok(
        store,
        "put_pieces",
        store.put_pieces(bytes.len(), Vec::new()),
    );
    for piece in bytes.chunks(65_536) {
        ok(store, "write a piece", pending.write(piece));
    }
    assert_eq!(pending.len(), bytes.len() as u64, "{}", store.describe());
    assert!(
        ok(store, "list", store.list(&scratch.prefix)).is_empty(),
        "{}: an unfinished object is visible",
        store.describe()
    );
    // A store may hand back the memory it gathered the pieces in, still holding them: the
    // next object must start empty all the same.
    let buffer = ok(store, "finish", pending.finish(&key, PutMode::Overwrite));
    assert!(
        ok(store, "get", store.get(&key)) == bytes,
        "{}: the pieces read back differently",
        store.describe()
    );

    let second_key = scratch.key("packs/cd/cdef02");
    let mut second = ok(store, "put_pieces", store.put_pieces(6, buffer));
    ok(store, "write a piece", second.write(b"second"));
    assert_eq!(second.len(), 6, "{}: a reused buffer", store.describe());
    ok(store, "finish", second.finish(&second_key, PutMode::Create));
    assert_eq!(
        ok(store, "get", store.get(&second_key)),
        b"second",
        "{}: an object written in a reused buffer",
        store.describe()
    );

    let mut dropped = ok(store, "put_pieces", store.put_pieces(10, Vec::new()));
    ok(store, "write a piece", dropped.write(b"abandoned"));
    drop(dropped);
    assert_eq!(
        sorted(ok(store, "list", store.list(&scratch.prefix))),
        vec![(key.clone(), bytes.len() as u64), (second_key, 6)],
        "{}: after an abandoned pieced put",
        store.describe()
    );

    let mut again = ok(store, "put_pieces", store.put_pieces(10, Vec::new()));
    ok(store, "write a piece", again.write(b"other"));
    assert_eq!(again.len(), 5, "{}", store.describe());
    fails_with(
        store,
        "a pieced create of an existing key",
        StoreErrorKind::AlreadyExists,
        again.finish(&key, PutMode::Create),
    );
    assert!(
        ok(store, "get", store.get(&key)) == bytes,
        "{}: a failed create changed the object",
        store.describe()
    );
}

/// A zero-length object is an object: it can be read, has size 0 and is listed.
pub fn empty_object_round_trips(store: &dyn Store) {
    let scratch = Scratch::new(store, "empty");
    let key = scratch.key("empty");
    ok(
        store,
        "put of an empty object",
        store.put(&key, b"", PutMode::Create),
    );
    assert!(
        ok(store, "get", store.get(&key)).is_empty(),
        "{}: empty get",
        store.describe()
    );
    assert_eq!(
        ok(store, "head", store.head(&key)).size,
        0,
        "{}: head size",
        store.describe()
    );
    assert!(
        ok(store, "empty range", store.get_range(&key, 0..0)).is_empty(),
        "{}: empty range of an empty object",
        store.describe()
    );
    let listed = sorted(ok(store, "list", store.list(&scratch.prefix)));
    assert_eq!(
        listed,
        vec![(key, 0)],
        "{}: list shows the empty object",
        store.describe()
    );
}

/// `PutMode::Create` on an existing key fails with `AlreadyExists` and keeps the old bytes.
pub fn create_on_existing_is_already_exists(store: &dyn Store) {
    let scratch = Scratch::new(store, "create");
    let key = scratch.key("snapshots/0001");
    ok(
        store,
        "first create",
        store.put(&key, b"first", PutMode::Create),
    );
    fails_with(
        store,
        "create on an existing key",
        StoreErrorKind::AlreadyExists,
        store.put(&key, b"second!", PutMode::Create),
    );
    assert_eq!(
        ok(store, "get", store.get(&key)),
        b"first",
        "{}: a refused create must leave the old bytes",
        store.describe()
    );
}

/// `PutMode::Overwrite` replaces an existing object, size included.
pub fn overwrite_replaces(store: &dyn Store) {
    let scratch = Scratch::new(store, "overwrite");
    let key = scratch.key("obj");
    ok(
        store,
        "overwrite of a missing key",
        store.put(&key, b"one", PutMode::Overwrite),
    );
    ok(
        store,
        "overwrite",
        store.put(&key, b"three", PutMode::Overwrite),
    );
    assert_eq!(
        ok(store, "get", store.get(&key)),
        b"three",
        "{}: overwrite",
        store.describe()
    );
    assert_eq!(
        ok(store, "head", store.head(&key)).size,
        5,
        "{}: head",
        store.describe()
    );
}

/// Ranges inside the object return exactly their bytes; an empty range inside or at the end is
/// empty; a range past the end or reversed is `InvalidRange`.
pub fn ranged_reads(store: &dyn Store) {
    let scratch = Scratch::new(store, "ranges");
    let key = scratch.key("obj");
    let bytes = pattern(1000, 2);
    ok(store, "put", store.put(&key, &bytes, PutMode::Create));
    for (start, end) in [(0, 1000), (0, 1), (10, 20), (999, 1000), (500, 1000)] {
        let got = ok(
            store,
            &format!("get_range {start}..{end}"),
            store.get_range(&key, start..end),
        );
        assert!(
            got == slice(&bytes, start as usize..end as usize),
            "{}: get_range {start}..{end} returned {} wrong bytes",
            store.describe(),
            got.len()
        );
    }
    for (start, end) in [(0, 0), (5, 5), (1000, 1000)] {
        let got = ok(
            store,
            &format!("empty get_range {start}..{end}"),
            store.get_range(&key, start..end),
        );
        assert!(
            got.is_empty(),
            "{}: empty range {start}..{end}",
            store.describe()
        );
    }
    #[expect(
        clippy::reversed_empty_ranges,
        reason = "a reversed range is what is checked"
    )]
    let bad: [Range<u64>; 4] = [0..1001, 999..1001, 1001..1002, 20..10];
    for range in bad {
        let what = format!("get_range {}..{} of 1000 bytes", range.start, range.end);
        fails_with(
            store,
            &what,
            StoreErrorKind::InvalidRange,
            store.get_range(&key, range),
        );
    }
}

/// `list` returns every object under a prefix, also when the prefix ends inside a name, with
/// full keys, sizes, nested keys included, and nothing outside the prefix.
pub fn list_by_prefix(store: &dyn Store) {
    let scratch = Scratch::new(store, "list");
    let names = ["a", "ab", "abc/d", "b/c/d", "bc", "c/x/y/z"];
    let mut sizes = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let key = scratch.key(name);
        ok(
            store,
            &format!("put {key}"),
            store.put(&key, &pattern(i + 1, 3), PutMode::Create),
        );
        sizes.insert(key, i as u64 + 1);
    }
    let expect = |selected: &[&str]| -> Vec<(String, u64)> {
        let mut out: Vec<_> = selected
            .iter()
            .map(|name| {
                let key = scratch.key(name);
                let size = sizes.get(&key).copied().unwrap_or_default();
                (key, size)
            })
            .collect();
        out.sort();
        out
    };
    let cases: [(&str, &[&str]); 9] = [
        ("", &names),
        ("a", &["a", "ab", "abc/d"]),
        ("ab", &["ab", "abc/d"]),
        ("abc/", &["abc/d"]),
        ("b", &["b/c/d", "bc"]),
        ("b/", &["b/c/d"]),
        ("b/c/d", &["b/c/d"]),
        ("c/x/", &["c/x/y/z"]),
        ("zzz", &[]),
    ];
    for (suffix, selected) in cases {
        let prefix = scratch.key(suffix);
        let listed = sorted(ok(store, &format!("list `{prefix}`"), store.list(&prefix)));
        assert_eq!(
            listed,
            expect(selected),
            "{}: list `{prefix}`",
            store.describe()
        );
    }
    let elsewhere = format!("{}nothing/", scratch.prefix);
    let listed = ok(store, "list of an empty prefix", store.list(&elsewhere));
    assert!(
        listed.is_empty(),
        "{}: list `{elsewhere}` found {listed:?}",
        store.describe()
    );
}

/// Deleting a missing key succeeds; a deleted object is gone from get, head and list.
pub fn delete_is_idempotent(store: &dyn Store) {
    let scratch = Scratch::new(store, "delete");
    let key = scratch.key("dir/obj");
    ok(store, "delete of a missing key", store.delete(&key));
    ok(store, "put", store.put(&key, b"bytes", PutMode::Create));
    ok(store, "delete", store.delete(&key));
    fails_with(
        store,
        "get after delete",
        StoreErrorKind::NotFound,
        store.get(&key),
    );
    fails_with(
        store,
        "head after delete",
        StoreErrorKind::NotFound,
        store.head(&key),
    );
    ok(store, "second delete", store.delete(&key));
    let listed = ok(store, "list after delete", store.list(&scratch.prefix));
    assert!(
        listed.is_empty(),
        "{}: deleted object still listed: {listed:?}",
        store.describe()
    );
    ok(
        store,
        "create after delete",
        store.put(&key, b"again", PutMode::Create),
    );
    assert_eq!(
        ok(store, "get", store.get(&key)),
        b"again",
        "{}: recreate",
        store.describe()
    );
}

/// Keys that break the key rules are refused with `InvalidKey` by every operation.
pub fn invalid_keys_are_rejected(store: &dyn Store) {
    let scratch = Scratch::new(store, "invalid");
    let base = scratch.key("x");
    let bad = [
        String::new(),
        format!("/{base}"),
        format!("{base}/"),
        format!("{base}//y"),
        format!("{base}/../y"),
        format!("{base}/./y"),
        "../escape".to_owned(),
        format!("{base}\\y"),
        format!("{base}\ny"),
        format!("{base}é"),
    ];
    for key in &bad {
        let what = |op: &str| format!("{op} of the invalid key {key:?}");
        fails_with(
            store,
            &what("put"),
            StoreErrorKind::InvalidKey,
            store.put(key, b"x", PutMode::Overwrite),
        );
        fails_with(
            store,
            &what("get"),
            StoreErrorKind::InvalidKey,
            store.get(key),
        );
        fails_with(
            store,
            &what("get_range"),
            StoreErrorKind::InvalidKey,
            store.get_range(key, 0..1),
        );
        fails_with(
            store,
            &what("head"),
            StoreErrorKind::InvalidKey,
            store.head(key),
        );
        fails_with(
            store,
            &what("delete"),
            StoreErrorKind::InvalidKey,
            store.delete(key),
        );
    }
    let listed = ok(store, "list", store.list(&scratch.prefix));
    assert!(
        listed.is_empty(),
        "{}: an invalid key was stored: {listed:?}",
        store.describe()
    );
}

/// A [`LARGE_OBJECT_SIZE`] object round-trips, whole and by ranges across part boundaries.
pub fn large_object_round_trip(store: &dyn Store) {
    let scratch = Scratch::new(store, "large");
    let key = scratch.key("pack");
    let bytes = pattern(LARGE_OBJECT_SIZE, 4);
    ok(
        store,
        "put of a large object",
        store.put(&key, &bytes, PutMode::Create),
    );
    assert_eq!(
        ok(store, "head", store.head(&key)).size,
        LARGE_OBJECT_SIZE as u64,
        "{}: large object size",
        store.describe()
    );
    let got = ok(store, "get of a large object", store.get(&key));
    assert!(
        got == bytes,
        "{}: large object came back different",
        store.describe()
    );
    const MIB: usize = 1024 * 1024;
    for (start, end) in [
        (5 * MIB - 10, 5 * MIB + 10),
        (8 * MIB - 1, 16 * MIB + 1),
        (LARGE_OBJECT_SIZE - 3, LARGE_OBJECT_SIZE),
    ] {
        let got = ok(
            store,
            "ranged get",
            store.get_range(&key, start as u64..end as u64),
        );
        assert!(
            got == slice(&bytes, start..end),
            "{}: large object range {start}..{end} came back different",
            store.describe()
        );
    }
}

/// Puts from several threads at once all land, each with its own bytes.
pub fn concurrent_puts(store: &dyn Store) {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 8;
    let scratch = Scratch::new(store, "concurrent");
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let scratch = &scratch;
            scope.spawn(move || {
                for i in 0..PER_THREAD {
                    let key = scratch.key(&format!("{t}/{i}"));
                    let bytes = pattern(1000 + t * 10 + i, (t * 100 + i) as u64);
                    ok(
                        store,
                        "concurrent put",
                        store.put(&key, &bytes, PutMode::Create),
                    );
                }
            });
        }
    });
    let listed = ok(store, "list", store.list(&scratch.prefix));
    assert_eq!(
        listed.len(),
        THREADS * PER_THREAD,
        "{}: objects after concurrent puts",
        store.describe()
    );
    for t in 0..THREADS {
        for i in 0..PER_THREAD {
            let key = scratch.key(&format!("{t}/{i}"));
            let expected = pattern(1000 + t * 10 + i, (t * 100 + i) as u64);
            assert!(
                ok(store, "get", store.get(&key)) == expected,
                "{}: `{key}` has the wrong bytes",
                store.describe()
            );
        }
    }
}

/// Eight threads race `PutMode::Create` on one fresh key; returns the key and the winners
/// (threads whose create succeeded), after checking every loser got `AlreadyExists`. The key's
/// scratch prefix is cleaned up when the returned guard drops.
fn race_creates<'a>(store: &'a dyn Store, name: &str) -> (Scratch<'a>, String, Vec<usize>) {
    const THREADS: usize = 8;
    let scratch = Scratch::new(store, name);
    let key = scratch.key("snapshot");
    let results: Vec<(usize, Result<(), StoreError>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let key = &key;
                scope.spawn(move || {
                    (
                        t,
                        store.put(key, &pattern(10_000 + t, t as u64), PutMode::Create),
                    )
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    assert_eq!(
        results.len(),
        THREADS,
        "{}: a racing thread panicked",
        store.describe()
    );
    let mut winners = Vec::new();
    for (t, result) in results {
        match result {
            Ok(()) => winners.push(t),
            Err(err) => assert_eq!(
                err.kind(),
                StoreErrorKind::AlreadyExists,
                "{}: a losing create failed with the wrong kind: {err}",
                store.describe()
            ),
        }
    }
    (scratch, key, winners)
}

/// Threads racing to create the same key: exactly one wins, the rest get `AlreadyExists`, and
/// the object holds the winner's bytes whole.
pub fn concurrent_create_has_one_winner(store: &dyn Store) {
    let (_scratch, key, winners) = race_creates(store, "race");
    assert_eq!(
        winners.len(),
        1,
        "{}: racing creates, winners {winners:?}",
        store.describe()
    );
    let winner = winners.first().copied().unwrap_or_default();
    let got = ok(store, "get", store.get(&key));
    assert!(
        got == pattern(10_000 + winner, winner as u64),
        "{}: the object is not the winner's",
        store.describe()
    );
}

/// Threads racing to create the same key on a store whose create is best effort: at least one
/// wins, the others get `AlreadyExists`, and the object holds exactly one winner's bytes, whole
/// (puts stay atomic even when they overwrite each other).
pub fn concurrent_creates_leave_one_whole_object(store: &dyn Store) {
    let (_scratch, key, winners) = race_creates(store, "race-best-effort");
    let got = ok(store, "get", store.get(&key));
    assert!(
        winners
            .iter()
            .any(|&t| got == pattern(10_000 + t, t as u64)),
        "{}: racing creates (winners {winners:?}) left an object that is none of theirs whole",
        store.describe()
    );
}
