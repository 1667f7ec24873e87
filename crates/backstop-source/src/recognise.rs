//! Recognising database files inside a plain directory tree, so that a directory backup of a
//! stopped (or otherwise quiesced) database deduplicates page by page, as its own source would.
//!
//! Only the chunking changes: a recognised file is cut at its page size instead of by content.
//! Nothing about consistency is implied; a running database still needs its own source.
//!
//! Recognised (facts from each format's documentation, see `../shared/reference/`):
//! - SQLite: the 100-byte header starts with `SQLite format 3\0`, page size as a big-endian u16 at
//!   offset 16 (1 means 65,536);
//! - Berkeley DB: the meta page holds the access method's magic number as a u32 at offset 12 and
//!   the page size as a u32 at offset 20, both in the byte order of the machine that made it;
//! - PostgreSQL: relation files (`base/<db oid>/<relfilenode>[.n|_fsm|_vm|_init]`, and the same
//!   names under `global/`) of a cluster directory that holds `PG_VERSION`, in 8 KiB pages.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

use crate::own_locks::{Inode, OpenElsewhere};
use crate::{ChangeModel, Content, Entry, EntryKind};

/// Smaller files are one blob however they are cut; reading their headers would cost an open
/// each and save nothing.
const SNIFF_FROM: u64 = 64 * 1024;
/// PostgreSQL's compiled-in block size (`BLCKSZ`); clusters built with another are rare.
const PG_PAGE: u32 = 8192;

/// Berkeley DB access-method magic numbers (btree, hash, queue, heap).
const BDB_MAGICS: [u32; 4] = [0x0005_3162, 0x0006_1561, 0x0004_2253, 0x0007_4582];

/// Gives recognised page files among `entries` [`ChangeModel::Pages`]; others keep theirs.
pub fn mark_page_files(entries: &mut [Entry]) {
    let mut recogniser = PageRecogniser::default();
    recogniser.observe(entries);
    for entry in entries {
        recogniser.mark(entry);
    }
}

/// Recognises page files in a tree listed a directory at a time, parents before children: the
/// cluster directories seen so far are all a PostgreSQL relation file's path needs, because a
/// cluster's `PG_VERSION` is listed with the cluster directory, before anything below it.
#[derive(Debug, Default)]
pub struct PageRecogniser {
    /// Directories holding `PG_VERSION`, each with a trailing `/` (the root as "").
    clusters: HashSet<String>,
    /// Files this process has open: their headers are read without dropping its locks on them.
    open_elsewhere: OpenElsewhere,
}

impl PageRecogniser {
    /// A recogniser that reads a header of a file this process has open (an application's
    /// own database, when it embeds the engine) through [`OpenElsewhere`], so that closing it
    /// drops none of the process's locks; `default()` notes nothing and simply closes.
    pub fn keeping_locks() -> Self {
        Self {
            clusters: HashSet::new(),
            open_elsewhere: OpenElsewhere::now(),
        }
    }

    /// Notes the cluster directories among `entries` (a directory's listing, or a whole tree).
    pub fn observe(&mut self, entries: &[Entry]) {
        let found = entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .filter_map(|e| match e.path.rsplit_once('/') {
                Some((dir, "PG_VERSION")) => Some(format!("{dir}/")),
                None if e.path == "PG_VERSION" => Some(String::new()),
                _ => None,
            });
        self.clusters.extend(found);
    }

    /// Gives `entry` [`ChangeModel::Pages`] if it is a recognised page file, and says which
    /// format it is in.
    pub fn mark(&self, entry: &mut Entry) -> Option<PageFormat> {
        if entry.kind != EntryKind::File || entry.change != ChangeModel::Any {
            return None;
        }
        let (format, page_size) = if is_pg_relation(&entry.path, &self.clusters) {
            (PageFormat::Postgres, PG_PAGE)
        } else if entry.size >= SNIFF_FROM {
            match &entry.content {
                Content::File(path) => {
                    let inode = entry.fs_identity.map(|f| (f.dev, f.ino));
                    sniff_through(&self.open_elsewhere, path, inode)?
                }
                _ => return None,
            }
        } else {
            return None;
        };
        entry.change = ChangeModel::Pages { page_size };
        Some(format)
    }
}

/// The formats of the page files recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageFormat {
    /// An SQLite database.
    Sqlite,
    /// A Berkeley DB database file.
    BerkeleyDb,
    /// A PostgreSQL relation file.
    Postgres,
}

fn is_pg_relation(path: &str, clusters: &HashSet<String>) -> bool {
    clusters.iter().any(|cluster| {
        let Some(inside) = path.strip_prefix(cluster.as_str()) else {
            return false;
        };
        let name = match inside.split('/').collect::<Vec<_>>().as_slice() {
            ["base", db, name] if is_number(db) => *name,
            ["global", name] => *name,
            _ => return false,
        };
        is_relation_file_name(name)
    })
}

/// `<relfilenode>[_fsm|_vm|_init][.<segment>]`.
fn is_relation_file_name(name: &str) -> bool {
    let base = match name.split_once('.') {
        Some((base, segment)) if is_number(segment) => base,
        Some(_) => return false,
        None => name,
    };
    let stem = match base.split_once('_') {
        Some((stem, "fsm" | "vm" | "init")) => stem,
        Some(_) => return false,
        None => base,
    };
    is_number(stem)
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_digit())
}

/// The page size a file's header declares, for the page-based formats recognised here.
pub fn sniff_page_size(path: &Path) -> Option<u32> {
    sniff(path).map(|(_, page_size)| page_size)
}

/// The format and page size a file's header declares.
fn sniff(path: &Path) -> Option<(PageFormat, u32)> {
    sniff_through(&OpenElsewhere::default(), path, None)
}

fn sniff_through(
    open: &OpenElsewhere,
    path: &Path,
    inode: Option<Inode>,
) -> Option<(PageFormat, u32)> {
    let mut header = [0u8; 32];
    let mut file = open.open(path, inode).ok()?;
    file.read_exact(&mut header).ok()?;
    format_from_header(&header)
}

#[allow(
    clippy::big_endian_bytes,
    reason = "SQLite's header is big-endian; a Berkeley DB file has its creator's byte order"
)]
fn format_from_header(header: &[u8; 32]) -> Option<(PageFormat, u32)> {
    let valid = |n: u32| (512..=65_536).contains(&n) && n.is_power_of_two();
    if header.starts_with(b"SQLite format 3\0") {
        let raw = u16::from_be_bytes([header[16], header[17]]);
        let size = if raw == 1 { 65_536 } else { u32::from(raw) };
        return valid(size).then_some((PageFormat::Sqlite, size));
    }
    let word = |at: usize| [header[at], header[at + 1], header[at + 2], header[at + 3]];
    for read in [u32::from_le_bytes, u32::from_be_bytes] {
        if BDB_MAGICS.contains(&read(word(12))) {
            let size = read(word(20));
            return valid(size).then_some((PageFormat::BerkeleyDb, size));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_entry(path: &str, size: u64) -> Entry {
        Entry {
            size,
            content: Content::File(std::path::PathBuf::from("/nonexistent")),
            ..Entry::bytes(path, Vec::new(), 0o644, 0)
        }
    }

    #[test]
    fn postgres_relation_files_are_found_by_path_inside_a_cluster() {
        let mut entries: Vec<Entry> = [
            "pg/PG_VERSION",
            "pg/base/5/16384",
            "pg/base/5/16384.1",
            "pg/base/5/16384_fsm",
            "pg/base/5/16384_vm",
            "pg/global/1262",
            "pg/base/5/PG_VERSION",
            "pg/base/5/pg_filenode.map",
            "pg/pg_wal/000000010000000000000001",
            "other/base/5/16384",
        ]
        .iter()
        .map(|p| file_entry(p, 100))
        .collect();
        mark_page_files(&mut entries);
        let pages: Vec<&str> = entries
            .iter()
            .filter(|e| e.change == ChangeModel::Pages { page_size: 8192 })
            .map(|e| e.path.as_str())
            .collect();
        assert_eq!(
            pages,
            [
                "pg/base/5/16384",
                "pg/base/5/16384.1",
                "pg/base/5/16384_fsm",
                "pg/base/5/16384_vm",
                "pg/global/1262"
            ]
        );
    }

    #[test]
    #[allow(
        clippy::big_endian_bytes,
        reason = "the headers under test are big-endian"
    )]
    fn sqlite_and_berkeley_db_headers_give_their_page_size() {
        let mut sqlite = [0u8; 32];
        sqlite[..16].copy_from_slice(b"SQLite format 3\0");
        sqlite[16..18].copy_from_slice(&4096u16.to_be_bytes());
        assert_eq!(
            format_from_header(&sqlite),
            Some((PageFormat::Sqlite, 4096))
        );
        sqlite[16..18].copy_from_slice(&1u16.to_be_bytes());
        assert_eq!(
            format_from_header(&sqlite),
            Some((PageFormat::Sqlite, 65_536))
        );
        sqlite[16..18].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(format_from_header(&sqlite), None);

        let mut bdb = [0u8; 32];
        bdb[12..16].copy_from_slice(&0x0005_3162u32.to_le_bytes());
        bdb[20..24].copy_from_slice(&16_384u32.to_le_bytes());
        assert_eq!(
            format_from_header(&bdb),
            Some((PageFormat::BerkeleyDb, 16_384))
        );
        bdb[12..16].copy_from_slice(&0x0006_1561u32.to_be_bytes());
        bdb[20..24].copy_from_slice(&4096u32.to_be_bytes());
        assert_eq!(
            format_from_header(&bdb),
            Some((PageFormat::BerkeleyDb, 4096))
        );
        assert_eq!(format_from_header(&[7u8; 32]), None);
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn real_sqlite_files_are_recognised_at_their_page_size() {
        let dir = tempfile::tempdir().unwrap();
        for page_size in [1024u32, 4096, 65_536] {
            let path = dir.path().join(format!("{page_size}.db"));
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(&format!(
                "PRAGMA page_size={page_size}; CREATE TABLE t(x); INSERT INTO t VALUES (1);"
            ))
            .unwrap();
            drop(conn);
            assert_eq!(sniff_page_size(&path), Some(page_size));
        }
    }
}
