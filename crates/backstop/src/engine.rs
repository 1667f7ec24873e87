//! The public engine: `BackupEngine` (read-write) and `ReadOnlyEngine` (inspect and restore).

use std::path::Path;
use std::sync::Arc;

use backstop_source::Source;
use backstop_store::Store;

use crate::Result;
use crate::info::{
    ArchivePut, BackupDiff, BackupId, BackupInfo, BackupSelector, CopyReport, FileInfo, GcReport,
    KeyInfo, RepairReport, RepositoryInfo, RestoreInfo, VerifyReport,
};
use crate::options::{
    BackupOptions, CopyOptions, EngineOptions, GcOptions, InitOptions, RepairOptions,
    RestoreOptions, VerifyLevel, VerifyOptions,
};
use crate::repo::Repository;
use crate::retention::{RetentionPlan, RetentionPolicy};

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
/// | delete, purge_old, apply_retention | yes                     | yes                     |
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

/// Mends a repository's index: opens a repository without loading its index (which the other
/// engines need whole, and a damaged index object stops), and rebuilds the index from the
/// packs' own headers.
#[derive(Clone, Debug)]
pub struct RepairEngine {
    repo: Arc<Repository>,
}

impl RepairEngine {
    /// Opens an existing repository (its config and key only). The metadata cache is not
    /// used: the repository's own copies are what a repair must judge (a cached copy can hide
    /// the damage of the store's).
    pub fn open(store: impl Store + 'static, options: EngineOptions) -> Result<Self> {
        let options = EngineOptions {
            cache_dir: None,
            ..options
        };
        Ok(Self {
            repo: Arc::new(Repository::open_unindexed(Arc::new(store), options)?),
        })
    }

    /// Rebuilds the index, under the exclusive lock a gc takes: keeps what readable index
    /// objects say (unless [`RepairOptions::read_all_packs`]), reads the packs no readable
    /// object lists, leaves out packs the store no longer holds, writes the new index and only
    /// then deletes the old objects, damaged ones included. Backups whose blobs are in no pack
    /// stay incomplete: a backup of the same data with
    /// [`BackupOptions::full_read`](crate::BackupOptions::full_read) stores them again.
    pub fn repair_index(&self, options: &RepairOptions) -> Result<RepairReport> {
        crate::repair::repair_index(&self.repo, options)
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
    /// A backup whose snapshot is damaged is a problem of the report; the others are checked.
    pub fn verify_all_with(&self, options: &VerifyOptions) -> Result<VerifyReport> {
        let (snapshots, damaged) = self.repo.load_readable_snapshots()?;
        let mut report = crate::verify::verify(&self.repo, &snapshots, options)?;
        for (id, error) in damaged {
            report.problems.push(format!(
                "backup {id} cannot be read ({error}), so it cannot be restored: delete it \
                 (`backstop delete {id}`) unless the object can be mended from a copy"
            ));
        }
        Ok(report)
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

    /// Writes one file of a backup to `out` (restic's `dump`), a few MiB at a time, every
    /// chunk checked; returns the bytes written. A missing path is
    /// [`crate::ErrorKind::NotFound`]; a directory or symlink is
    /// [`crate::ErrorKind::InvalidInput`], its message naming what it is.
    pub fn dump(
        &self,
        which: impl Into<BackupSelector>,
        path: &str,
        out: &mut dyn std::io::Write,
    ) -> Result<u64> {
        let snapshot = self.repo.load_snapshot(which.into())?;
        crate::restore::write_file(&self.repo, &snapshot, path, out)
    }

    /// What changed from backup `from` to backup `to`: paths added, removed, changed in content
    /// or type, or only in metadata. Reads the two file lists, no file data.
    pub fn diff(
        &self,
        from: impl Into<BackupSelector>,
        to: impl Into<BackupSelector>,
    ) -> Result<BackupDiff> {
        let from = self.repo.load_snapshot(from.into())?;
        let to = self.repo.load_snapshot(to.into())?;
        crate::diff::diff(&self.repo, &from, &to)
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

    /// Which backups `policy` keeps and deletes, per source group; changes nothing. This is the
    /// dry run of [`BackupEngine::apply_retention`]: applying the plan deletes exactly its
    /// `delete` lists. See [`crate::SourceGroup`] for what counts as one source.
    ///
    /// # Errors
    /// [`crate::ErrorKind::InvalidInput`] when the policy keeps nothing (every rule at 0).
    pub fn plan_retention(&self, policy: &RetentionPolicy) -> Result<RetentionPlan> {
        // `plan` validates the policy first.
        policy.plan(&self.repo.list_backups()?)
    }

    /// The archived WAL that [`BackupEngine::prune_wal_archive`] would delete once `plan` is
    /// applied (the dry run of a purge); changes nothing.
    #[cfg(feature = "postgres")]
    pub fn plan_wal_prune(&self, plan: &RetentionPlan) -> Result<Vec<String>> {
        let deleted = plan.delete_ids();
        let mut remaining = self.repo.list_backups()?;
        remaining.retain(|b| !deleted.contains(&b.id));
        self.wal_not_needed(&remaining)
    }

    /// Archived WAL (`archive/name`) that none of `backups` needs: in each cluster's archive,
    /// what comes before the first segment the cluster's oldest kept backup needs (its own
    /// backups and the group backups it is a member of); in the legacy shared archive, before
    /// the first any kept backup needs. An archive whose cluster no kept backup names is kept
    /// whole, and a backup that did not record its cluster counts for every archive.
    #[cfg(feature = "postgres")]
    fn wal_not_needed(&self, backups: &[BackupInfo]) -> Result<Vec<String>> {
        use backstop_source::postgres as pg;
        let needs: Vec<(Option<String>, String)> = backups
            .iter()
            .flat_map(|b| pg::wal_needs(&b.source_kind, &b.source_meta))
            .collect();
        let mut unneeded = Vec::new();
        for archive in crate::archive::archives(&self.repo)? {
            let Some(cluster) = pg::wal_archive_cluster(&archive) else {
                continue;
            };
            let needed_from = pg::earliest_segment(
                needs
                    .iter()
                    .filter(|(of, _)| cluster.is_none() || of.is_none() || of.as_deref() == cluster)
                    .map(|(_, segment)| segment.as_str()),
            );
            let Some(needed_from) = needed_from else {
                continue;
            };
            for name in crate::archive::list(&self.repo, &archive)? {
                if !pg::wal_archive_name_needed(&name, needed_from) {
                    unneeded.push(format!("{archive}/{name}"));
                }
            }
        }
        Ok(unneeded)
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

    /// Creates a new repository in an empty store that shares `from`'s master key, format
    /// version, cipher and chunk sizes: the destination [`BackupEngine::copy_from`] copies
    /// backups into. Its key file wraps that key with `init.password` (required when `from`
    /// is encrypted, refused when it is not); `init`'s pack size and key derivation cost
    /// apply, its chunk sizes and cipher do not.
    pub fn init_from(
        store: impl Store + 'static,
        from: &ReadOnlyEngine,
        init: InitOptions,
        options: EngineOptions,
    ) -> Result<Self> {
        let repo = Repository::init_sharing(Arc::new(store), &from.repo, &init, options)?;
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

    /// Copies backups of `from` into this repository, which must share its key (created with
    /// [`BackupEngine::init_from`]): the stored bytes of the blobs this one lacks, then each
    /// backup, which becomes visible here when its snapshot is written, last. Backups copied
    /// before are skipped, so running it again after new backups copies only those.
    pub fn copy_from(&self, from: &ReadOnlyEngine, options: &CopyOptions) -> Result<CopyReport> {
        crate::copy::copy_backups(&self.repo, &from.repo, options)
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

    /// Keeps the newest `keep_last` backups **of each source** and deletes the others; returns
    /// the deleted ids, oldest first. RocksDB's `PurgeOldBackups`, with a repository of many
    /// sources treated like one RocksDB backup engine per source: backups are grouped by host,
    /// source kind and source identity ([`crate::SourceGroup`]), so a source backed up less
    /// often keeps its own newest `keep_last`. Shorthand for
    /// [`plan_retention`](ReadOnlyEngine::plan_retention) then
    /// [`apply_retention`](Self::apply_retention) with
    /// `RetentionPolicy::default().keep_last(keep_last)`.
    ///
    /// # Errors
    /// Unlike RocksDB, `keep_last == 0` is refused ([`crate::ErrorKind::InvalidInput`]) rather
    /// than deleting every backup; use [`delete_backup`](Self::delete_backup) for that.
    pub fn purge_old(&self, keep_last: usize) -> Result<Vec<BackupId>> {
        let plan = self.plan_retention(&RetentionPolicy::default().keep_last(keep_last))?;
        self.apply_retention(&plan)
    }

    /// Deletes the backups `plan` deletes (their data goes at the next `gc`) and returns their
    /// ids, oldest first. A backup already deleted meanwhile (by another purge, say) is skipped
    /// and not returned; backups created after the plan are untouched.
    pub fn apply_retention(&self, plan: &RetentionPlan) -> Result<Vec<BackupId>> {
        let mut deleted = Vec::new();
        for id in plan.delete_ids() {
            match self.repo.delete_snapshot(id) {
                Ok(()) => deleted.push(id),
                Err(e) if e.kind() == crate::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
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

    /// Deletes archived PostgreSQL WAL that no kept backup needs: in each cluster's archive
    /// (`wal-<system identifier>`, written by `wal-push`), segments before the start segment of
    /// the oldest backup of that cluster still in the repository (a PostgreSQL backup, or a
    /// group backup with the cluster as a member); in the legacy shared `wal` archive, before
    /// the oldest of any cluster. Timeline history files and unrecognised names are kept; a
    /// cluster no kept backup names keeps its whole archive. Returns what was deleted, as
    /// `archive/name`.
    #[cfg(feature = "postgres")]
    pub fn prune_wal_archive(&self) -> Result<Vec<String>> {
        let unneeded = self.wal_not_needed(&self.repo.list_backups()?)?;
        for path in &unneeded {
            if let Some((archive, name)) = path.split_once('/') {
                crate::archive::delete(&self.repo, archive, name)?;
            }
        }
        Ok(unneeded)
    }

    /// Adds a password that opens the same master key; returns the new key's id.
    pub fn add_key(&self, new_password: &str) -> Result<String> {
        self.repo.add_key(new_password)
    }

    /// Removes the key whose id is `id` or starts with it (a unique prefix) and returns its
    /// full id; the key in use and the last key cannot be removed.
    pub fn remove_key(&self, id: &str) -> Result<String> {
        self.repo.remove_key(id)
    }

    /// Replaces the password of the key in use (adds the new key, then removes the old one).
    pub fn change_password(&self, new_password: &str) -> Result<String> {
        self.repo.change_password(new_password)
    }
}
