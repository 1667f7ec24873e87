//! Paths below a restore target, reached without following a symlink and without leaving the
//! target, even if someone who can write there swaps a directory for a symlink while the
//! restore runs.
//!
//! Checking each component before use (what the restore did alone before) leaves a window
//! between the check and the use. Here every operation first opens the directory that holds
//! its path with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` relative to the target's
//! descriptor, so the kernel refuses any symlink and any `..` on the way, atomically; the last
//! component is then created, opened or changed relative to that directory, never through a
//! symlink (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, or an open descriptor). Where `openat2` is
//! missing (Linux before 5.6, or a seccomp filter that refuses it), directories are opened one
//! component at a time with `openat(O_NOFOLLOW | O_DIRECTORY)`, each relative to the one
//! before, which refuses a symlink anywhere on the way just as well (the paths hold no `..`).

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;

/// The restore target, open, and the operations on paths below it.
#[derive(Debug)]
pub(crate) struct Beneath {
    root: PathBuf,
    dir: OwnedFd,
    /// `openat2` was refused once: every later directory is opened with `openat`.
    no_openat2: AtomicBool,
}

/// The directory holding a path: the target itself, or one below it.
enum Parent<'a> {
    Root(BorrowedFd<'a>),
    Below(OwnedFd),
}

impl AsFd for Parent<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Root(fd) => *fd,
            Self::Below(fd) => fd.as_fd(),
        }
    }
}

impl Beneath {
    /// Opens the target directory `root` (which the caller chose: a symlink there is followed).
    pub(crate) fn open(root: &Path) -> std::io::Result<Self> {
        let dir = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            root: root.to_path_buf(),
            dir,
            no_openat2: AtomicBool::new(false),
        })
    }

    /// The target directory's path, as given.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// The directory holding `path` (a path below the target) and its last component.
    fn parent<'p>(&self, path: &'p Path) -> std::io::Result<(Parent<'_>, &'p OsStr)> {
        let rel = path.strip_prefix(&self.root).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "`{}` is not below `{}`",
                    path.display(),
                    self.root.display()
                ),
            )
        })?;
        // The target itself is `.` of itself.
        let name = rel.file_name().unwrap_or(OsStr::new("."));
        let dir = match rel.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => Parent::Below(self.open_dir(dir)?),
            _ => Parent::Root(self.dir.as_fd()),
        };
        Ok((dir, name))
    }

    fn open_dir(&self, rel: &Path) -> std::io::Result<OwnedFd> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        if !self.no_openat2.load(Ordering::Relaxed) {
            let resolve =
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(&self.dir, rel, flags, Mode::empty(), resolve) {
                Err(Errno::NOSYS | Errno::PERM) => {
                    tracing::debug!("openat2 is not available; opening directories with openat");
                    self.no_openat2.store(true, Ordering::Relaxed);
                }
                Err(Errno::LOOP | Errno::XDEV) => {
                    return Err(std::io::Error::other(format!(
                        "`{}` below the target holds a symlink now (someone changed the target \
                         while the restore ran); refusing to follow it",
                        rel.display()
                    )));
                }
                other => return Ok(other?),
            }
        }
        // Without openat2, one component at a time, each refused if it is a symlink: what
        // RESOLVE_NO_SYMLINKS does, given paths without `..` (the restore checks every path).
        let mut components = rel.components();
        let Some(first) = components.next() else {
            return Ok(rustix::fs::openat(&self.dir, ".", flags, Mode::empty())?);
        };
        let mut dir = rustix::fs::openat(
            &self.dir,
            first.as_os_str(),
            flags | OFlags::NOFOLLOW,
            Mode::empty(),
        )?;
        for component in components {
            dir = rustix::fs::openat(
                &dir,
                component.as_os_str(),
                flags | OFlags::NOFOLLOW,
                Mode::empty(),
            )?;
        }
        Ok(dir)
    }

    /// Creates a new file at `path` (never through a symlink; an existing entry is an error),
    /// open for writing, and for reading too with `read`.
    pub(crate) fn create_file(&self, path: &Path, mode: u32, read: bool) -> std::io::Result<File> {
        let (dir, name) = self.parent(path)?;
        let access = if read { OFlags::RDWR } else { OFlags::WRONLY };
        let flags = access | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Ok(rustix::fs::openat(&dir, name, flags, Mode::from_raw_mode(mode))?.into())
    }

    /// Opens the existing file at `path` with `flags` (and never through a symlink).
    pub(crate) fn open_file(&self, path: &Path, flags: OFlags) -> std::io::Result<File> {
        let (dir, name) = self.parent(path)?;
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        Ok(rustix::fs::openat(&dir, name, flags, Mode::empty())?.into())
    }

    /// What is at `path`, without following a symlink there.
    pub(crate) fn lstat(&self, path: &Path) -> std::io::Result<rustix::fs::Stat> {
        let (dir, name) = self.parent(path)?;
        Ok(rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)?)
    }

    pub(crate) fn mkdir(&self, path: &Path, mode: u32) -> std::io::Result<()> {
        let (dir, name) = self.parent(path)?;
        Ok(rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(mode))?)
    }

    /// Removes the file or symlink at `path` (not a directory).
    pub(crate) fn unlink(&self, path: &Path) -> std::io::Result<()> {
        let (dir, name) = self.parent(path)?;
        Ok(rustix::fs::unlinkat(&dir, name, AtFlags::empty())?)
    }

    /// Creates the symlink `path` pointing at `target` (whatever it names: it is not followed).
    pub(crate) fn symlink(&self, target: &Path, path: &Path) -> std::io::Result<()> {
        let (dir, name) = self.parent(path)?;
        Ok(rustix::fs::symlinkat(target, &dir, name)?)
    }

    /// Links `path` to the file at `original` (both below the target; neither a symlink).
    pub(crate) fn hard_link(&self, original: &Path, path: &Path) -> std::io::Result<()> {
        let (from_dir, from_name) = self.parent(original)?;
        let (dir, name) = self.parent(path)?;
        Ok(rustix::fs::linkat(
            &from_dir,
            from_name,
            &dir,
            name,
            AtFlags::empty(),
        )?)
    }

    /// Gives the entry at `path` an owner (`None`: leave it), without following a symlink.
    pub(crate) fn chown(
        &self,
        path: &Path,
        uid: Option<rustix::fs::Uid>,
        gid: Option<rustix::fs::Gid>,
    ) -> std::io::Result<()> {
        let (dir, name) = self.parent(path)?;
        Ok(rustix::fs::chownat(
            &dir,
            name,
            uid,
            gid,
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Gives the file or directory at `path` a mode and an mtime (its atime stays). Through
    /// a descriptor of the entry itself, opened without following a symlink; an entry this
    /// user may not open (a directory of mode 0 found by a delta restore) is changed by name,
    /// after checking it is no symlink.
    pub(crate) fn set_mode_and_mtime(
        &self,
        path: &Path,
        mode: u32,
        mtime_ns: i64,
    ) -> std::io::Result<()> {
        let times = mtime_only(mtime_ns);
        let (dir, name) = self.parent(path)?;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        match rustix::fs::openat(&dir, name, flags, Mode::empty()) {
            Ok(fd) => set_mode_and_mtime_of(&fd, mode, mtime_ns)?,
            Err(Errno::ACCESS) => {
                let stat = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
                if rustix::fs::FileType::from_raw_mode(stat.st_mode)
                    == rustix::fs::FileType::Symlink
                {
                    return Err(Errno::LOOP.into());
                }
                rustix::fs::chmodat(&dir, name, Mode::from_raw_mode(mode), AtFlags::empty())?;
                rustix::fs::utimensat(&dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)?;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Gives the symlink at `path` an mtime (its atime too: a symlink's cannot be left alone
    /// portably).
    pub(crate) fn set_symlink_mtime(&self, path: &Path, mtime_ns: i64) -> std::io::Result<()> {
        let (dir, name) = self.parent(path)?;
        let ts = timespec(mtime_ns);
        let times = Timestamps {
            last_access: ts,
            last_modification: ts,
        };
        Ok(rustix::fs::utimensat(
            &dir,
            name,
            &times,
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }
}

/// An entry of a directory listed by [`Beneath::list`]: its name and kind (never followed).
pub(crate) struct Entry {
    pub(crate) name: std::ffi::CString,
    pub(crate) kind: FileType,
}

impl Beneath {
    /// Opens the directory `path` (below the target, or the target itself) and lists it.
    pub(crate) fn list(&self, path: &Path) -> std::io::Result<(OwnedFd, Vec<Entry>)> {
        let (parent, name) = self.parent(path)?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let dir = rustix::fs::openat(&parent, name, flags, Mode::empty())?;
        let entries = entries(&dir)?;
        Ok((dir, entries))
    }
}

/// The entries of the open directory `dir`, without `.` and `..`.
fn entries(dir: &OwnedFd) -> std::io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let kind = match entry.file_type() {
            // Some filesystems do not say in the listing.
            FileType::Unknown => {
                let stat = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
                FileType::from_raw_mode(stat.st_mode)
            }
            kind => kind,
        };
        out.push(Entry {
            name: name.to_owned(),
            kind,
        });
    }
    Ok(out)
}

/// Deletes the entry `name` of the open directory `dir`: a file or a symlink (not followed),
/// or a directory with everything in it, each reached through its parent's descriptor.
pub(crate) fn remove_entry(dir: &OwnedFd, entry: &Entry) -> std::io::Result<()> {
    if entry.kind != FileType::Directory {
        return Ok(rustix::fs::unlinkat(dir, &entry.name, AtFlags::empty())?);
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let child = rustix::fs::openat(dir, &entry.name, flags, Mode::empty())?;
    for inner in entries(&child)? {
        remove_entry(&child, &inner)?;
    }
    Ok(rustix::fs::unlinkat(dir, &entry.name, AtFlags::REMOVEDIR)?)
}

fn timespec(ns: i64) -> Timespec {
    Timespec {
        tv_sec: ns.div_euclid(1_000_000_000),
        tv_nsec: ns.rem_euclid(1_000_000_000),
    }
}

/// Gives the open file or directory `fd` a mode and an mtime (its atime stays).
pub(crate) fn set_mode_and_mtime_of(
    fd: impl AsFd,
    mode: u32,
    mtime_ns: i64,
) -> std::io::Result<()> {
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    Ok(rustix::fs::futimens(&fd, &mtime_only(mtime_ns))?)
}

/// Times that set the mtime to `mtime_ns` (nanoseconds since the epoch) and leave the atime.
fn mtime_only(mtime_ns: i64) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: timespec(mtime_ns),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory on the way swapped for a symlink to a directory outside (what a user who can
    /// write in the target could do while a restore runs) stops every operation there: nothing
    /// outside is created, opened, changed or removed.
    #[test]
    fn a_symlink_on_the_way_is_refused_by_every_operation() {
        let target = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("victim"), b"outside").unwrap();
        std::fs::create_dir(outside.path().join("dir")).unwrap();
        std::os::unix::fs::symlink(outside.path(), target.path().join("sub")).unwrap();
        let beneath = Beneath::open(target.path()).unwrap();
        let via = |name: &str| target.path().join("sub").join(name);

        assert!(beneath.create_file(&via("new"), 0o600, false).is_err());
        assert!(beneath.open_file(&via("victim"), OFlags::RDWR).is_err());
        assert!(beneath.lstat(&via("victim")).is_err());
        assert!(beneath.mkdir(&via("made"), 0o700).is_err());
        assert!(beneath.unlink(&via("victim")).is_err());
        assert!(beneath.symlink(Path::new("/etc"), &via("link")).is_err());
        assert!(
            beneath
                .hard_link(&via("victim"), &target.path().join("stolen"))
                .is_err()
        );
        assert!(beneath.chown(&via("victim"), None, None).is_err());
        assert!(
            beneath
                .set_mode_and_mtime(&via("victim"), 0o777, 0)
                .is_err()
        );
        assert!(beneath.set_mode_and_mtime(&via("dir"), 0o777, 0).is_err());
        assert!(beneath.set_symlink_mtime(&via("victim"), 0).is_err());

        let victim = outside.path().join("victim");
        assert_eq!(std::fs::read(&victim).unwrap(), b"outside");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode();
        assert_ne!(mode & 0o777, 0o777);
        let mut names: Vec<_> = std::fs::read_dir(outside.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["dir", "victim"]);
        assert!(!target.path().join("stolen").exists());
    }

    /// Without `openat2` (kernels before 5.6), a symlink deeper on the way is refused too: the
    /// directories are then opened one component at a time, each with `O_NOFOLLOW`.
    #[test]
    fn without_openat2_a_symlink_deeper_on_the_way_is_refused() {
        let target = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(outside.path().join("dir")).unwrap();
        std::fs::write(outside.path().join("dir/victim"), b"outside").unwrap();
        std::fs::create_dir_all(target.path().join("a/b")).unwrap();
        // `sub` is above the directory that holds the file: a single `openat` of `a/sub/dir`
        // with `O_NOFOLLOW` would check only `dir`, and go through the link.
        std::os::unix::fs::symlink(outside.path(), target.path().join("a/sub")).unwrap();
        let beneath = Beneath::open(target.path()).unwrap();
        beneath.no_openat2.store(true, Ordering::Relaxed);
        let via = |name: &str| target.path().join("a/sub/dir").join(name);
        assert!(beneath.open_file(&via("victim"), OFlags::RDWR).is_err());
        assert!(beneath.create_file(&via("new"), 0o600, false).is_err());
        assert!(beneath.unlink(&via("victim")).is_err());
        assert_eq!(
            std::fs::read(outside.path().join("dir/victim")).unwrap(),
            b"outside"
        );
        assert!(!outside.path().join("dir/new").exists());
        // Real directories below the target still work.
        beneath
            .create_file(&target.path().join("a/b/new"), 0o600, false)
            .unwrap();
        assert!(target.path().join("a/b/new").exists());
    }

    /// Listing and deleting never follow a symlink: a directory deleted with what is in it
    /// loses the symlinks inside, not what they point at, and a symlink on the way to the
    /// directory to list is refused.
    #[test]
    fn listing_and_deleting_do_not_follow_symlinks() {
        let target = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"outside").unwrap();
        let doomed = target.path().join("doomed");
        std::fs::create_dir_all(doomed.join("deeper")).unwrap();
        std::fs::write(doomed.join("deeper/file"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), doomed.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), target.path().join("via")).unwrap();
        let beneath = Beneath::open(target.path()).unwrap();

        assert!(beneath.list(&target.path().join("via")).is_err());
        let (dir, entries) = beneath.list(target.path()).unwrap();
        let mut names: Vec<_> = entries.iter().map(|e| e.name.to_str().unwrap()).collect();
        names.sort_unstable();
        assert_eq!(names, ["doomed", "via"]);
        for entry in &entries {
            remove_entry(&dir, entry).unwrap();
        }
        assert_eq!(std::fs::read_dir(target.path()).unwrap().count(), 0);
        assert_eq!(
            std::fs::read(outside.path().join("keep")).unwrap(),
            b"outside"
        );
    }

    /// The last component is never followed either: a symlink there is not written through,
    /// and its own mtime is what changes.
    #[test]
    fn a_symlink_as_the_last_component_is_not_followed() {
        let target = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"outside").unwrap();
        let link = target.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let beneath = Beneath::open(target.path()).unwrap();

        assert!(beneath.open_file(&link, OFlags::RDWR).is_err());
        assert!(beneath.create_file(&link, 0o600, false).is_err());
        assert!(beneath.set_mode_and_mtime(&link, 0o777, 0).is_err());
        beneath.set_symlink_mtime(&link, 1_000_000_000).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"outside");
        let link_mtime = std::fs::symlink_metadata(&link).unwrap();
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(link_mtime.mtime(), 1);
        assert_ne!(std::fs::metadata(&victim).unwrap().mtime(), 1);

        // And below the target everything works as the plain calls do.
        let sub = target.path().join("sub");
        beneath.mkdir(&sub, 0o700).unwrap();
        let file = sub.join("f");
        use std::io::Write as _;
        beneath
            .create_file(&file, 0o600, false)
            .unwrap()
            .write_all(b"inside")
            .unwrap();
        beneath
            .set_mode_and_mtime(&file, 0o640, 2_000_000_000)
            .unwrap();
        let md = std::fs::metadata(&file).unwrap();
        assert_eq!((md.mode() & 0o777, md.mtime()), (0o640, 2));
        beneath.hard_link(&file, &target.path().join("g")).unwrap();
        assert_eq!(std::fs::read(target.path().join("g")).unwrap(), b"inside");
        beneath.unlink(&target.path().join("g")).unwrap();
        assert!(!target.path().join("g").exists());
    }
}
