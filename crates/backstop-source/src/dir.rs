//! A plain directory tree: files, directories and symlinks, in one phase.

use std::path::{Path, PathBuf};

use crate::{
    ChangeModel, Entry, EntryKind, Phase, RestoreProfile, Session, SessionContext, SessionOutcome,
    Source, SourceError,
};

/// Backs up a directory tree as it is. Files are chunked by content, database page files by
/// page; nothing is held.
#[derive(Clone, Debug)]
pub struct DirSource {
    root: PathBuf,
    excludes: Vec<String>,
    recognise_pages: bool,
}

impl DirSource {
    /// A source for the tree under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            excludes: Vec::new(),
            recognise_pages: true,
        }
    }

    /// Leaves out paths matching these glob patterns (matched against the path inside the tree,
    /// `/`-separated; a matching directory is left out with everything below it).
    #[must_use]
    pub fn with_excludes(mut self, excludes: Vec<String>) -> Self {
        self.excludes = excludes;
        self
    }

    /// Whether database files found in the tree (SQLite and Berkeley DB files by their
    /// headers, PostgreSQL relation files by their place in a cluster directory) are cut at their
    /// page size rather than by content, so that an incremental backup stores about the pages
    /// that changed. On by default; see [`crate::recognise`].
    #[must_use]
    pub fn with_page_recognition(mut self, on: bool) -> Self {
        self.recognise_pages = on;
        self
    }

    /// The tree's root.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Source for DirSource {
    fn kind(&self) -> &str {
        "dir"
    }

    fn identity(&self) -> String {
        std::fs::canonicalize(&self.root)
            .unwrap_or_else(|_| self.root.clone())
            .to_string_lossy()
            .into_owned()
    }

    fn begin(&mut self, ctx: &SessionContext) -> Result<Box<dyn Session + '_>, SourceError> {
        let md = std::fs::metadata(&self.root)
            .map_err(|e| SourceError::io("opening the source directory", &self.root, e))?;
        if !md.is_dir() {
            return Err(SourceError::Procedure(format!(
                "`{}` is not a directory; a directory source backs up a directory tree",
                self.root.display()
            )));
        }
        let excludes = build_globset(&self.excludes)?;
        let mut warnings = Vec::new();
        let mut entries = walk_tree(&self.root, &excludes, ctx, &mut warnings)?;
        if self.recognise_pages {
            crate::recognise::mark_page_files(&mut entries);
        }
        Ok(Box::new(DirSession {
            phase: Some(Phase::unordered("files", entries)),
            warnings,
        }))
    }
}

fn build_globset(patterns: &[String]) -> Result<globset::GlobSet, SourceError> {
    let mut builder = globset::GlobSetBuilder::new();
    for pattern in patterns {
        let glob = globset::Glob::new(pattern)
            .map_err(|e| SourceError::Procedure(format!("bad exclude pattern `{pattern}`: {e}")))?;
        builder.add(glob);
    }
    builder
        .build()
        .map_err(|e| SourceError::Procedure(format!("bad exclude patterns: {e}")))
}

/// Lists a tree depth-first, parents before children, names sorted, as entries with
/// [`ChangeModel::Any`]. Sockets, fifos and devices are skipped with a warning.
pub fn walk_tree(
    root: &Path,
    excludes: &globset::GlobSet,
    ctx: &SessionContext,
    warnings: &mut Vec<String>,
) -> Result<Vec<Entry>, SourceError> {
    let mut entries = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel_dir) = stack.pop() {
        if ctx.cancel.is_cancelled() {
            return Err(SourceError::Cancelled);
        }
        let dir = if rel_dir.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel_dir)
        };
        let read = match std::fs::read_dir(&dir) {
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel_dir.is_empty() => {
                warnings.push(format!("directory `{rel_dir}` vanished while being listed"));
                continue;
            }
            Err(e) => return Err(SourceError::io("listing", &dir, e)),
        };
        let mut names = Vec::new();
        for item in read {
            let item = item.map_err(|e| SourceError::io("listing", &dir, e))?;
            let name = item.file_name();
            let Some(name) = name.to_str() else {
                warnings.push(format!(
                    "skipped `{}`: its name is not UTF-8",
                    item.path().display()
                ));
                continue;
            };
            names.push(name.to_owned());
        }
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let rel = if rel_dir.is_empty() {
                name.clone()
            } else {
                format!("{rel_dir}/{name}")
            };
            if excludes.is_match(&rel) {
                continue;
            }
            let disk = dir.join(&name);
            match Entry::from_path(rel.clone(), &disk, ChangeModel::Any) {
                Ok(Some(entry)) => {
                    if entry.kind == EntryKind::Dir {
                        subdirs.push(rel);
                    }
                    entries.push(entry);
                }
                Ok(None) => warnings.push(format!(
                    "skipped `{rel}`: sockets, fifos and device files are not backed up"
                )),
                Err(SourceError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    warnings.push(format!("`{rel}` vanished while being listed"));
                }
                Err(e) => return Err(e),
            }
        }
        // Reverse so the stack pops subdirectories in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(entries)
}

struct DirSession {
    phase: Option<Phase>,
    warnings: Vec<String>,
}

impl Session for DirSession {
    fn next_phase(&mut self) -> Result<Option<Phase>, SourceError> {
        Ok(self.phase.take())
    }

    fn finish(self: Box<Self>) -> Result<SessionOutcome, SourceError> {
        Ok(SessionOutcome {
            restore_profile: RestoreProfile::none(),
            warnings: self.warnings,
            ..SessionOutcome::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parents_before_children_and_skips_fifos() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/c")).unwrap();
        std::fs::write(dir.path().join("b/c/f"), b"x").unwrap();
        std::fs::write(dir.path().join("a"), b"y").unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("l")).unwrap();
        let status = std::process::Command::new("mkfifo")
            .arg(dir.path().join("fifo"))
            .status()
            .unwrap();
        assert!(status.success());
        let mut src = DirSource::new(dir.path());
        let mut session = src.begin(&SessionContext::default()).unwrap();
        let phase = session.next_phase().unwrap().unwrap();
        let paths: Vec<_> = phase.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a", "b", "l", "b/c", "b/c/f"]);
        assert!(session.next_phase().unwrap().is_none());
        let outcome = session.finish().unwrap();
        assert_eq!(outcome.warnings.len(), 1, "{:?}", outcome.warnings);
        assert!(outcome.warnings[0].contains("fifo"));
    }
}
