//! Progress reporting: an observer the engine calls; the library itself never prints.

/// Receives progress of a backup or restore. Every method has an empty default, and may be
/// called from several threads.
pub trait Progress: Send + Sync {
    /// A phase of the source's procedure starts, with its entry count and byte total.
    fn phase(&self, _name: &str, _files: u64, _bytes: u64) {}
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
