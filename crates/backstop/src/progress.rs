//! Progress reporting: an observer the engine calls; the library itself never prints.

/// Receives progress of a backup or restore. Every method has an empty default, and may be
/// called from several threads.
pub trait Progress: Send + Sync {
    /// A phase of the source's procedure starts, with its entry count and byte total.
    fn phase(&self, _name: &str, _files: u64, _bytes: u64) {}
    /// A streamed phase listed more of its entries: `files` more files (0 for a directory or a
    /// symlink) of `bytes` in all. Its `phase` call counted only the entries listed up front.
    fn found(&self, _files: u64, _bytes: u64) {}
    /// Whether totals are worth a second, counting listing of a streamed phase (a scan that
    /// runs ahead of the backup, calling `found`), as they are to a progress bar. Otherwise
    /// `found` follows the backup's own listing.
    fn wants_totals(&self) -> bool {
        false
    }
    /// A file is being stored or restored.
    fn file(&self, _path: &str) {}
    /// `bytes` more were read from the source (backup) or written to the target (restore).
    fn bytes(&self, _bytes: u64) {}
    /// A file was skipped because it is unchanged since the parent backup.
    fn unchanged(&self, _path: &str, _bytes: u64) {}
    /// Something the user should know, which does not stop the work.
    fn warning(&self, _message: &str) {}
}

/// A progress observer that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}
