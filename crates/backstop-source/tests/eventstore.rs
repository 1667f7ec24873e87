//! The EventStore procedure against a writer that follows EventStore's file protocol (a separate
//! process): the order of the phases as observed through the session, what each entry's change
//! model is, held files surviving a scavenge, and copies taken under load that restore to a
//! directory meeting the protocol's invariants.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

#[path = "support/eventstore_check.rs"]
mod eventstore_check;
#[path = "support/eventstore_writer.rs"]
mod eventstore_writer;

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

use backstop_source::eventstore::EventStoreSource;
use backstop_source::testing::{CopiedSession, copy_session};
use backstop_source::{
    ChangeModel, Content, Phase, RestoreParams, Session, SessionContext, SessionOutcome, Source,
    SourceError, restore_profile,
};
use eventstore_check::check_db;

const CHUNK_SIZE: i64 = 256 * 1024;

/// Logs every read of an entry's bytes in the order it happens: `Bytes` entries are read by the
/// source when it builds the phase, `Session` entries when the consumer opens them.
struct Recording<'a> {
    inner: Box<dyn Session + 'a>,
    log: Arc<Mutex<Vec<String>>>,
    handles: Mutex<HashMap<u64, String>>,
}

impl Session for Recording<'_> {
    fn next_phase(&mut self) -> Result<Option<Phase>, SourceError> {
        let phase = self.inner.next_phase()?;
        if let Some(phase) = &phase {
            for entry in &phase.entries {
                match &entry.content {
                    Content::Bytes(_) => self.log.lock().unwrap().push(entry.path.clone()),
                    Content::Session(handle) => {
                        self.handles
                            .lock()
                            .unwrap()
                            .insert(*handle, entry.path.clone());
                    }
                    _ => {}
                }
            }
        }
        Ok(phase)
    }

    fn open(&self, handle: u64) -> Result<Box<dyn Read + Send>, SourceError> {
        let path = self.handles.lock().unwrap()[&handle].clone();
        self.log.lock().unwrap().push(path);
        self.inner.open(handle)
    }

    fn finish(self: Box<Self>) -> Result<SessionOutcome, SourceError> {
        self.inner.finish()
    }
}

fn copy(source: &mut EventStoreSource, target: &Path) -> (CopiedSession, Vec<String>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let session = source.begin(&SessionContext::default()).unwrap();
    let recording = Recording {
        inner: session,
        log: Arc::clone(&log),
        handles: Mutex::new(HashMap::new()),
    };
    let copied = copy_session(Box::new(recording), target).unwrap();
    let log = log.lock().unwrap().clone();
    (copied, log)
}

fn restore(copied: &CopiedSession, target: &Path) {
    let steps = restore_profile::apply(
        &copied.outcome.restore_profile,
        target,
        &RestoreParams::default(),
    )
    .unwrap();
    assert!(
        steps.iter().any(|s| s.contains("truncate.chk")),
        "{steps:?}"
    );
}

fn fixture(records: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    eventstore_writer::run(
        &tmp.path().join("db"),
        &[
            "--records",
            records,
            "--batch",
            "100",
            "--interval-ms",
            "0",
            "--seed",
            "7",
        ],
    );
    tmp
}

#[test]
fn phases_read_checkpoints_before_data_and_chunks_last() {
    if !eventstore_writer::python_available() {
        return;
    }
    let tmp = fixture("2600");
    let db = tmp.path().join("db");
    let writer = eventstore_writer::writer_position(&db);
    assert!(
        writer / CHUNK_SIZE >= 10,
        "the fixture should have 10 completed chunks"
    );
    let target = tmp.path().join("copy");
    let (copied, log) = copy(&mut EventStoreSource::new(&db), &target);

    let names: Vec<&str> = copied.phases.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "index checkpoints",
            "index",
            "checkpoints",
            "chunks",
            "other files"
        ]
    );

    // Every read, classified; each class must be read wholly before the next begins.
    let class = |path: &str| -> u8 {
        if path.starts_with("index/") && (path.ends_with(".chk") || path == "index/indexmap") {
            0
        } else if path.starts_with("index/") {
            1
        } else if path.ends_with(".chk") {
            2
        } else if path.starts_with("chunk-") {
            3
        } else {
            panic!("unexpected read of {path}")
        }
    };
    let classes: Vec<u8> = log.iter().map(|p| class(p)).collect();
    assert!(
        classes.windows(2).all(|w| w[0] <= w[1]),
        "reads out of order: {log:?}"
    );
    for c in 0..=3 {
        assert!(classes.contains(&c), "no read of class {c}: {log:?}");
    }
    let last_chk = log.iter().rposition(|p| p.ends_with(".chk")).unwrap();
    let first_chunk = log.iter().position(|p| p.starts_with("chunk-")).unwrap();
    assert!(last_chk < first_chunk, "{log:?}");
    for name in ["writer.chk", "chaser.chk", "epoch.chk", "truncate.chk"] {
        assert!(log.iter().any(|p| p == name), "{name} not copied: {log:?}");
    }

    restore(&copied, &target);
    let checked = check_db(&target).unwrap();
    assert_eq!(checked.writer, writer);
    assert!(checked.records >= 2600 - 100, "{checked:?}");
    assert!(checked.tables > 0, "{checked:?}");
    let chaser = std::fs::read(target.join("chaser.chk")).unwrap();
    assert_eq!(std::fs::read(target.join("truncate.chk")).unwrap(), chaser);
}

#[test]
fn completed_chunks_are_immutable_and_only_the_newest_version_is_stored() {
    if !eventstore_writer::python_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    eventstore_writer::run(
        &db,
        &[
            "--records",
            "2600",
            "--batch",
            "100",
            "--interval-ms",
            "0",
            "--scavenge-every",
            "4",
        ],
    );
    let writer = eventstore_writer::writer_position(&db);
    let active = u32::try_from(writer / CHUNK_SIZE).unwrap();
    let on_disk: Vec<String> = std::fs::read_dir(&db)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("chunk-"))
        .collect();
    assert!(
        on_disk.iter().any(|n| !n.ends_with(".000000")),
        "no scavenged chunk: {on_disk:?}"
    );
    // Leave an older version beside a newer one, as a scavenge interrupted before its delete
    // would.
    let scavenged = on_disk.iter().find(|n| !n.ends_with(".000000")).unwrap();
    let stale = format!("{}.000000", scavenged.rsplit_once('.').unwrap().0);
    std::fs::write(db.join(&stale), b"an older version").unwrap();

    let mut source = EventStoreSource::new(&db);
    let mut session = source.begin(&SessionContext::default()).unwrap();
    let chunks = loop {
        let phase = session.next_phase().unwrap().expect("no chunks phase");
        if phase.name == "chunks" {
            break phase;
        }
    };
    let paths: Vec<&str> = chunks.entries.iter().map(|e| e.path.as_str()).collect();
    assert!(
        !paths.contains(&stale.as_str()),
        "the older version was stored: {paths:?}"
    );
    assert!(paths.contains(&scavenged.as_str()), "{paths:?}");
    assert_eq!(chunks.entries.len(), active as usize + 1, "{paths:?}");
    for entry in &chunks.entries {
        let number: u32 = entry.path["chunk-".len()..][..6].parse().unwrap();
        if number < active {
            let ChangeModel::Immutable {
                identity: Some(identity),
            } = &entry.change
            else {
                panic!("{} is completed but {:?}", entry.path, entry.change);
            };
            assert!(
                identity.starts_with(&format!("{}:{}:", entry.path, entry.size)),
                "{identity}"
            );
        } else {
            assert_eq!(entry.change, ChangeModel::Any, "{}", entry.path);
        }
        assert!(matches!(entry.content, Content::Session(_)));
    }
}

#[test]
fn held_chunks_stay_readable_when_a_scavenge_deletes_them() {
    if !eventstore_writer::python_available() {
        return;
    }
    let tmp = fixture("1200");
    let db = tmp.path().join("db");
    let mut source = EventStoreSource::new(&db);
    let mut session = source.begin(&SessionContext::default()).unwrap();
    let chunks = loop {
        let phase = session.next_phase().unwrap().expect("no chunks phase");
        if phase.name == "chunks" {
            break phase;
        }
    };
    let mut originals = HashMap::new();
    for entry in &chunks.entries {
        originals.insert(
            entry.path.clone(),
            std::fs::read(db.join(&entry.path)).unwrap(),
        );
        std::fs::remove_file(db.join(&entry.path)).unwrap();
    }
    for entry in &chunks.entries {
        let Content::Session(handle) = entry.content else {
            panic!("{entry:?}")
        };
        let mut bytes = Vec::new();
        session
            .open(handle)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        assert!(bytes == originals[&entry.path], "{} differs", entry.path);
    }
}

#[test]
fn copies_under_load_with_scavenges_restore_consistent() {
    if !eventstore_writer::python_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let mut writer = eventstore_writer::Writer::start(
        &db,
        &[
            "--interval-ms",
            "1",
            "--batch",
            "8",
            "--scavenge-every",
            "10",
            "--index-every",
            "32",
        ],
    );
    let mut source = EventStoreSource::new(&db);
    let mut positions = Vec::new();
    let mut seen = 0;
    for i in 0..10 {
        writer.assert_running();
        // Each copy starts after the writer moved on from what the previous one captured.
        eventstore_writer::wait_past(&db, seen + 32 * 1024);
        let target = tmp.path().join(format!("copy{i}"));
        let (copied, _) = copy(&mut source, &target);
        seen = copied.outcome.source_meta["eventstore.writer"]
            .parse()
            .unwrap();
        restore(&copied, &target);
        let checked = check_db(&target).unwrap_or_else(|e| panic!("copy {i}: {e}"));
        assert_eq!(checked.writer, seen);
        positions.push(checked.writer);
        std::fs::remove_dir_all(&target).unwrap();
    }
    let last = writer.stop();
    assert!(last.starts_with("stopped"), "{last}");
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "the writer barely moved between copies: {positions:?}"
    );
}

#[test]
fn the_checker_rejects_broken_copies() {
    if !eventstore_writer::python_available() {
        return;
    }
    let tmp = fixture("700");
    let db = tmp.path().join("db");
    let fresh = |name: &str| {
        let target = tmp.path().join(name);
        let (copied, _) = copy(&mut EventStoreSource::new(&db), &target);
        restore(&copied, &target);
        check_db(&target).unwrap();
        target
    };

    let t = fresh("truncate");
    std::fs::write(t.join("truncate.chk"), (-1i64).to_le_bytes()).unwrap();
    assert!(check_db(&t).unwrap_err().contains("truncate.chk"));

    let t = fresh("flipped");
    let chunk = t.join("chunk-000000.000000");
    let mut bytes = std::fs::read(&chunk).unwrap();
    bytes[128 + 2000] ^= 0x40;
    std::fs::write(&chunk, bytes).unwrap();
    assert!(check_db(&t).is_err());

    let t = fresh("beyond");
    let writer = eventstore_writer::writer_position(&t);
    std::fs::write(
        t.join("writer.chk"),
        (writer + 5 * CHUNK_SIZE).to_le_bytes(),
    )
    .unwrap();
    let err = check_db(&t).unwrap_err();
    assert!(err.contains("writer.chk"), "{err}");
}

#[test]
fn a_directory_without_writer_chk_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let err = EventStoreSource::new(tmp.path())
        .begin(&SessionContext::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("writer.chk"), "{err}");
}

#[test]
fn restore_fixup_copies_chaser_to_truncate_and_needs_chaser() {
    let tmp = tempfile::tempdir().unwrap();
    let profile = backstop_source::RestoreProfile::new("eventstore");
    let err = restore_profile::apply(&profile, tmp.path(), &RestoreParams::default()).unwrap_err();
    assert!(err.to_string().contains("chaser.chk"), "{err}");

    std::fs::write(tmp.path().join("chaser.chk"), 4242i64.to_le_bytes()).unwrap();
    std::fs::write(tmp.path().join("truncate.chk"), (-1i64).to_le_bytes()).unwrap();
    let steps = restore_profile::apply(&profile, tmp.path(), &RestoreParams::default()).unwrap();
    assert_eq!(
        std::fs::read(tmp.path().join("truncate.chk")).unwrap(),
        4242i64.to_le_bytes()
    );
    assert!(steps[0].contains("4242"), "{steps:?}");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 2, "a temporary file was left behind");
}

#[test]
fn copying_data_before_checkpoints_is_caught_by_the_checker() {
    if !eventstore_writer::python_available() {
        return;
    }
    // The wrong order on purpose: chunks first, then the writer moves on, then the checkpoints.
    let tmp = fixture("700");
    let db = tmp.path().join("db");
    let target = tmp.path().join("wrong");
    std::fs::create_dir_all(&target).unwrap();
    for entry in std::fs::read_dir(&db).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.starts_with("chunk-") {
            std::fs::copy(db.join(&name), target.join(&name)).unwrap();
        }
    }
    eventstore_writer::run(
        &db,
        &["--records", "400", "--batch", "100", "--interval-ms", "0"],
    );
    let (copied, _) = copy(&mut EventStoreSource::new(&db), &tmp.path().join("right"));
    for entry in std::fs::read_dir(&db).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".chk") {
            std::fs::copy(db.join(&name), target.join(&name)).unwrap();
        }
    }
    let index = tmp.path().join("right/index");
    std::fs::rename(&index, target.join("index")).unwrap();
    restore(&copied, &target);
    assert!(
        check_db(&target).is_err(),
        "the checker accepted data older than its checkpoints"
    );
}

#[test]
fn beyond_the_open_file_budget_a_scavenged_chunk_fails_with_a_clear_error() {
    if !eventstore_writer::python_available() {
        return;
    }
    let tmp = fixture("700");
    let db = tmp.path().join("db");
    let mut source = EventStoreSource::new(&db).with_max_open_files(0);
    let mut session = source.begin(&SessionContext::default()).unwrap();
    let chunks = loop {
        let phase = session.next_phase().unwrap().expect("no chunks phase");
        if phase.name == "chunks" {
            break phase;
        }
    };
    let first = &chunks.entries[0];
    std::fs::remove_file(db.join(&first.path)).unwrap();
    let Content::Session(handle) = first.content else {
        panic!("{first:?}")
    };
    let err = session.open(handle).err().unwrap().to_string();
    assert!(
        err.contains(&first.path) && err.contains("scavenge"),
        "{err}"
    );
}
