//! The public engine: `BackupEngine` (read-write) and `ReadOnlyEngine` (inspect and restore).

use std::path::Path;
use std::sync::Arc;

use backstop_source::Source;
use backstop_store::Store;

use crate::Result;
use crate::info::{
    ArchivePut, BackupId, BackupInfo, BackupSelector, FileInfo, GcReport, KeyInfo, RepositoryInfo,
    RestoreInfo, VerifyReport,
};
use crate::options::{
    BackupOptions, EngineOptions, GcOptions, InitOptions, RestoreOptions, VerifyLevel,
    VerifyOptions,
};
use crate::repo::Repository;

/// Lists, inspects, verifies and restores backups; never writes to the repository.
#[derive(Clone, Debug)]
pub struct ReadOnlyEngine {
    pub(crate) repo: Arc<Repository>,
}

/// Everything [`ReadOnlyEngine`] does, plus creating backups, deleting them, gc and keys.
///
/// # Concurrency
/// | operation                      | same process, other threads | another process or host |
/// |--------------------------------|-----------------------------|-------------------------|
/// | list, info, verify, restore    | yes                         | yes                     |
/// | create_backup                  | yes (each takes its own lock) | yes (shared locks)    |
/// | delete, purge_old              | yes                         | yes                     |
/// | gc                             | refused while a backup holds a lock (`Locked`) | refused likewise |
#[derive(Clone, Debug)]
pub struct BackupEngine {
    ro: ReadOnlyEngine,
}

impl std::ops::Deref for BackupEngine {
    type Target = ReadOnlyEngine;
    fn deref(&self) -> &ReadOnlyEngine {
        &self.ro
    }
}

impl ReadOnlyEngine {
    /// Opens an existing repository for reading.
    pub fn open(store: impl Store + 'static, options: EngineOptions) -> Result<Self> {
        Ok(Self {
            repo: Arc::new(Repository::open(Arc::new(store), options)?),
        })
    }

    /// What the repository is.
    pub fn repository_info(&self) -> RepositoryInfo {
        self.repo.info()
    }

    /// Every backup, oldest first.
    pub fn list_backups(&self) -> Result<Vec<BackupInfo>> {
        self.repo.list_backups()
    }

    /// One backup.
    pub fn backup_info(&self, which: impl Into<BackupSelector>) -> Result<BackupInfo> {
        Ok(self.repo.load_snapshot(which.into())?.info())
    }

    /// The entries of one backup.
    pub fn backup_files(&self, which: impl Into<BackupSelector>) -> Result<Vec<FileInfo>> {
        let snapshot = self.repo.load_snapshot(which.into())?;
        self.repo.file_infos(&snapshot)
    }

    /// Checks one backup at `level`; problems are listed in the report (not an `Err`).
    pub fn verify(
        &self,
        which: impl Into<BackupSelector>,
        level: VerifyLevel,
    ) -> Result<VerifyReport> {
        self.verify_with(which, &VerifyOptions::new(level))
    }

    /// [`verify`](Self::verify) with progress and cancellation.
    pub fn verify_with(
        &self,
        which: impl Into<BackupSelector>,
        options: &VerifyOptions,
    ) -> Result<VerifyReport> {
        let snapshot = self.repo.load_snapshot(which.into())?;
        crate::verify::verify(&self.repo, &[snapshot], options)
    }

    /// Checks every backup at `level`.
    pub fn verify_all(&self, level: VerifyLevel) -> Result<VerifyReport> {
        self.verify_all_with(&VerifyOptions::new(level))
    }

    /// [`verify_all`](Self::verify_all) with progress and cancellation.
    pub fn verify_all_with(&self, options: &VerifyOptions) -> Result<VerifyReport> {
        let snapshots = self.repo.load_all_snapshots()?;
        crate::verify::verify(&self.repo, &snapshots, options)
    }

    /// Restores a backup into `target`, checking every byte against its hash, then applies the
    /// backup's restore procedure.
    pub fn restore(
        &self,
        which: impl Into<BackupSelector>,
        target: &Path,
        options: &RestoreOptions,
    ) -> Result<RestoreInfo> {
        let snapshot = self.repo.load_snapshot(which.into())?;
        crate::restore::restore(&self.repo, &snapshot, target, options)
    }

    /// Reads one file of a backup into memory (for small files such as labels and positions).
    pub fn read_file(&self, which: impl Into<BackupSelector>, path: &str) -> Result<Vec<u8>> {
        let snapshot = self.repo.load_snapshot(which.into())?;
        crate::restore::read_file(&self.repo, &snapshot, path)
    }

    /// Reads a named object of an archive (a WAL segment from the `wal` archive, say).
    /// A missing object is [`crate::ErrorKind::NotFound`].
    pub fn archive_get(&self, archive: &str, name: &str) -> Result<Vec<u8>> {
        crate::archive::get(&self.repo, archive, name)
    }

    /// Names of the objects in an archive, sorted.
    pub fn archive_list(&self, archive: &str) -> Result<Vec<String>> {
        crate::archive::list(&self.repo, archive)
    }

    /// The keys of an encrypted repository.
    pub fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        self.repo.list_keys()
    }
}

impl BackupEngine {
    /// Creates a new repository in an empty store.
    pub fn init(
        store: impl Store + 'static,
        init: InitOptions,
        options: EngineOptions,
    ) -> Result<Self> {
        let repo = Repository::init(Arc::new(store), &init, options)?;
        Ok(Self {
            ro: ReadOnlyEngine {
                repo: Arc::new(repo),
            },
        })
    }

    /// Opens an existing repository.
    pub fn open(store: impl Store + 'static, options: EngineOptions) -> Result<Self> {
        Ok(Self {
            ro: ReadOnlyEngine::open(store, options)?,
        })
    }

    /// Opens the repository, creating it with `init` if the store holds none.
    pub fn open_or_init(
        store: impl Store + 'static,
        init: InitOptions,
        options: EngineOptions,
    ) -> Result<Self> {
        let store: Arc<dyn Store> = Arc::new(store);
        if Repository::exists(&*store)? {
            Self::open(store, options)
        } else {
            Self::init(store, init, options)
        }
    }

    /// A read-only view of the same repository.
    pub fn read_only(&self) -> ReadOnlyEngine {
        self.ro.clone()
    }

    /// Takes a backup of `source`, following its hot-backup procedure. The backup becomes
    /// visible only when its snapshot is written, last.
    pub fn create_backup(
        &self,
        source: &mut dyn Source,
        options: &BackupOptions,
    ) -> Result<BackupInfo> {
        crate::backup::create_backup(&self.repo, source, options)
    }

    /// Deletes one backup's snapshot (its data goes at the next `gc`).
    pub fn delete_backup(&self, id: BackupId) -> Result<()> {
        self.repo.delete_snapshot(id)
    }

    /// Keeps the newest `keep_last` backups and deletes the others; returns the deleted ids.
    pub fn purge_old(&self, keep_last: usize) -> Result<Vec<BackupId>> {
        let backups = self.repo.list_backups()?;
        let delete = backups.len().saturating_sub(keep_last);
        let mut deleted = Vec::new();
        for info in backups.iter().take(delete) {
            self.repo.delete_snapshot(info.id)?;
            deleted.push(info.id);
        }
        Ok(deleted)
    }

    /// Removes packs no backup references and the leftovers of interrupted backups, and
    /// rewrites packs that are mostly unused, with the default [`GcOptions`].
    pub fn gc(&self, dry_run: bool) -> Result<GcReport> {
        self.gc_with(&GcOptions::default().dry_run(dry_run))
    }

    /// [`BackupEngine::gc`] with explicit options.
    pub fn gc_with(&self, options: &GcOptions) -> Result<GcReport> {
        crate::gc::gc(&self.repo, options)
    }

    /// Stores `data` as the named object `name` of `archive` (compressed, encrypted, durable
    /// when this returns). Storing the same bytes again is harmless and reports
    /// [`ArchivePut::AlreadyPresent`]; different bytes under an existing name are refused with
    /// [`crate::ErrorKind::AlreadyExists`], as PostgreSQL's `archive_command` contract asks.
    pub fn archive_put(&self, archive: &str, name: &str, data: &[u8]) -> Result<ArchivePut> {
        crate::archive::put(&self.repo, archive, name, data)
    }

    /// Deletes a named object of an archive (retention of WAL, say).
    pub fn archive_delete(&self, archive: &str, name: &str) -> Result<()> {
        crate::archive::delete(&self.repo, archive, name)
    }

    /// Deletes archived PostgreSQL WAL (the `wal` archive) that no kept backup needs: segments
    /// before the start segment of the oldest PostgreSQL backup still in the repository.
    /// Timeline history files and unrecognised names are kept; with no PostgreSQL backup,
    /// nothing is deleted. Returns the names deleted.
    #[cfg(feature = "postgres")]
    pub fn prune_wal_archive(&self) -> Result<Vec<String>> {
        let oldest = self
            .repo
            .list_backups()?
            .into_iter()
            .find(|b| b.source_kind == "postgres");
        let Some(needed_from) =
            oldest.and_then(|b| backstop_source::postgres::wal_needed_from(&b.source_meta))
        else {
            return Ok(Vec::new());
        };
        let mut deleted = Vec::new();
        for name in crate::archive::list(&self.repo, "wal")? {
            if !backstop_source::postgres::wal_archive_name_needed(&name, &needed_from) {
                crate::archive::delete(&self.repo, "wal", &name)?;
                deleted.push(name);
            }
        }
        Ok(deleted)
    }

    /// Adds a password that opens the same master key; returns the new key's id.
    pub fn add_key(&self, new_password: &str) -> Result<String> {
        self.repo.add_key(new_password)
    }

    /// Removes a key; the key in use and the last key cannot be removed.
    pub fn remove_key(&self, id: &str) -> Result<()> {
        self.repo.remove_key(id)
    }

    /// Replaces the password of the key in use (adds the new key, then removes the old one).
    pub fn change_password(&self, new_password: &str) -> Result<String> {
        self.repo.change_password(new_password)
    }
}
