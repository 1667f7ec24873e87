//! What changed between two backups: paths added, removed, changed in content or type, or
//! changed only in metadata (restic's `diff`). Content is compared by the files' chunk ids,
//! so no data is read, only the two file lists.

use std::collections::BTreeMap;

use crate::Result;
use crate::format::{NODE_DIR, NODE_SYMLINK, Node, Snapshot};
use crate::info::{BackupDiff, Change, ChangeKind};
use crate::repo::Repository;

/// What `diff` keeps of a node: enough to compare, not its chunk list.
#[derive(PartialEq, Eq)]
struct Seen {
    kind: u8,
    size: u64,
    /// BLAKE3 of the chunk ids in order (and the symlink target): equal content, equal digest.
    content: [u8; 32],
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
}

impl Seen {
    fn of(node: &Node) -> Self {
        let mut hasher = blake3::Hasher::new();
        for id in &node.chunks {
            hasher.update(&id.0);
        }
        if let Some(target) = &node.target {
            hasher.update(target.as_bytes());
        }
        Self {
            kind: node.kind,
            size: node.size,
            content: *hasher.finalize().as_bytes(),
            mode: node.mode,
            uid: node.uid,
            gid: node.gid,
            mtime_ns: node.mtime_ns,
        }
    }
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        NODE_DIR => "dir",
        NODE_SYMLINK => "symlink",
        _ => "file",
    }
}

pub(crate) fn diff(repo: &Repository, from: &Snapshot, to: &Snapshot) -> Result<BackupDiff> {
    let mut before: BTreeMap<String, Seen> = BTreeMap::new();
    repo.for_each_node(from, |node| {
        before.insert(node.path.clone(), Seen::of(&node));
        Ok(())
    })?;
    let mut report = BackupDiff {
        from: from.id,
        to: to.id,
        ..BackupDiff::default()
    };
    repo.for_each_node(to, |node| {
        let now = Seen::of(&node);
        let change = match before.remove(&node.path) {
            None => Some((ChangeKind::Added, None)),
            Some(was) if was == now => None,
            Some(was) if was.kind != now.kind => Some((ChangeKind::TypeChanged, Some(was))),
            Some(was) if was.content != now.content || was.size != now.size => {
                Some((ChangeKind::Modified, Some(was)))
            }
            Some(was) => Some((ChangeKind::Metadata, Some(was))),
        };
        if let Some((kind, was)) = change {
            report.changes.push(Change {
                path: node.path,
                change: kind,
                kind: kind_name(now.kind).into(),
                size_before: was.map(|w| w.size),
                size_after: Some(now.size),
            });
        }
        Ok(())
    })?;
    for (path, was) in before {
        report.changes.push(Change {
            path,
            change: ChangeKind::Removed,
            kind: kind_name(was.kind).into(),
            size_before: Some(was.size),
            size_after: None,
        });
    }
    report.changes.sort_by(|a, b| a.path.cmp(&b.path));
    for change in &report.changes {
        let counter = match change.change {
            ChangeKind::Added => &mut report.added,
            ChangeKind::Removed => &mut report.removed,
            ChangeKind::Modified | ChangeKind::TypeChanged => &mut report.modified,
            ChangeKind::Metadata => &mut report.metadata,
        };
        *counter += 1;
    }
    Ok(report)
}
