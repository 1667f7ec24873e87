//! Test support: runs a session to completion by copying its entries into a directory, phase by
//! phase, the way the engine would store them. For tests of a source's procedure against a real
//! database without the repository in between; never used by the engine itself.

use std::io::Read;
use std::path::Path;

use crate::{Content, EntryKind, Session, SessionOutcome, SourceError};

/// What [`copy_session`] did: the phases in order with their entry paths, and the outcome.
#[derive(Debug)]
pub struct CopiedSession {
    /// `(phase name, entry paths)` in the order they were copied.
    pub phases: Vec<(String, Vec<String>)>,
    /// Bytes copied.
    pub bytes: u64,
    /// What `finish` returned.
    pub outcome: SessionOutcome,
}

/// Copies every phase of `session` into `target` (files, directories, symlinks), then finishes
/// the session. Append-only files are copied up to their recorded size; others as they are now.
pub fn copy_session(
    mut session: Box<dyn Session + '_>,
    target: &Path,
) -> Result<CopiedSession, SourceError> {
    let mut phases = Vec::new();
    let mut bytes = 0u64;
    while let Some(phase) = session.next_phase()? {
        let mut paths = Vec::new();
        for entry in &phase.entries {
            let dest = target.join(&entry.path);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| SourceError::io("creating", parent, e))?;
            }
            match &entry.kind {
                EntryKind::Dir => {
                    std::fs::create_dir_all(&dest)
                        .map_err(|e| SourceError::io("creating", &dest, e))?;
                }
                EntryKind::Symlink { target } => {
                    std::os::unix::fs::symlink(target, &dest)
                        .map_err(|e| SourceError::io("creating symlink", &dest, e))?;
                }
                EntryKind::File => {
                    let mut reader: Box<dyn Read + Send> = match &entry.content {
                        Content::None => Box::new(std::io::empty()),
                        Content::File(path) => Box::new(
                            std::fs::File::open(path)
                                .map_err(|e| SourceError::io("opening", path, e))?,
                        ),
                        Content::Bytes(b) => Box::new(std::io::Cursor::new(b.clone())),
                        Content::Session(handle) => session.open(*handle)?,
                    };
                    if entry.change == crate::ChangeModel::AppendOnly {
                        reader = Box::new(reader.take(entry.size));
                    }
                    let mut out = std::fs::File::create(&dest)
                        .map_err(|e| SourceError::io("creating", &dest, e))?;
                    bytes += std::io::copy(&mut reader, &mut out)
                        .map_err(|e| SourceError::io("copying to", &dest, e))?;
                }
            }
            paths.push(entry.path.clone());
        }
        phases.push((phase.name.clone(), paths));
    }
    let outcome = session.finish()?;
    Ok(CopiedSession {
        phases,
        bytes,
        outcome,
    })
}
