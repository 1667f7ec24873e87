//! The restored tree as the fix-ups touch it: files and directories inside the restore target,
//! never reached through a symlink.
//!
//! The tree comes from the backup, and a backup's file list is data: a damaged or forged
//! snapshot may hold a symlink where a procedure expects `chaser.chk`, `recovery.signal` or a
//! member's directory. The engine never follows symlinks while it writes the tree, and the
//! fix-ups must not either, or a restore (often run as root) would read, write, truncate or
//! remove whatever such a link points to. Every path a fix-up touches therefore goes through
//! these functions: each checks that no directory above the path inside the target, and not the
//! path itself, is a symlink (or anything but a directory or regular file), and then does what
//! it does relative to the directory that holds the path, opened one component at a time from
//! the target with `O_NOFOLLOW` ([`parent_dir`]), and opens files with `O_NOFOLLOW`: a
//! directory or file swapped for a link after the check is refused by the kernel, not followed.
//! (Paths handed to a database's own tools, such as `db_recover`, are opened by the tool.)

use std::fs::{File, Metadata};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::SourceError;

/// What a procedure needs at a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

impl Need {
    fn noun(self) -> &'static str {
        match self {
            Self::File => "a regular file",
            Self::Dir => "a directory",
        }
    }

    fn matches(self, md: &Metadata) -> bool {
        match self {
            Self::File => md.file_type().is_file(),
            Self::Dir => md.file_type().is_dir(),
        }
    }
}

/// Whether `rel` is a path a backup may hold: relative, `/`-separated, without empty, `.` or
/// `..` segments, without NUL. The engine checks every path of a backup's tree with it, and
/// the fix-ups every name they take from a restore profile.
pub fn is_safe_path(rel: &str) -> bool {
    !rel.is_empty()
        && !rel.starts_with('/')
        && !rel.contains('\0')
        && rel
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

fn what(md: &Metadata) -> &'static str {
    let kind = md.file_type();
    if kind.is_symlink() {
        "a symlink"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

fn odd_entry(path: &Path, found: &'static str, need: Need) -> SourceError {
    SourceError::Procedure(format!(
        "the backup's tree has {found} at `{}` where the restore procedure needs {}; a restore \
         never follows links from the backup. Restore with `--raw` and inspect the files",
        path.display(),
        need.noun()
    ))
}

/// `target/rel`, after checking that every directory above it inside `target` is a real
/// directory and that the path itself, if it exists, is `need` (never a symlink). Returns the
/// path and its metadata, `None` when it (or a directory above it) does not exist.
pub(crate) fn lookup(
    target: &Path,
    rel: &str,
    need: Need,
) -> Result<(PathBuf, Option<Metadata>), SourceError> {
    if !is_safe_path(rel) {
        return Err(SourceError::Procedure(format!(
            "`{rel}` is not a relative path inside the restored tree `{}`",
            target.display()
        )));
    }
    let mut path = target.to_path_buf();
    let mut segments = rel.split('/').peekable();
    while let Some(segment) = segments.next() {
        path.push(segment);
        let last = segments.peek().is_none();
        let md = match std::fs::symlink_metadata(&path) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Nothing below a missing directory exists either.
                path.extend(segments);
                return Ok((path, None));
            }
            Err(e) => return Err(SourceError::io("reading metadata of", &path, e)),
        };
        let wanted = if last { need } else { Need::Dir };
        if !wanted.matches(&md) {
            return Err(odd_entry(&path, what(&md), wanted));
        }
        if last {
            return Ok((path, Some(md)));
        }
    }
    Ok((path, None))
}

/// Like [`lookup`], but the path must exist.
pub(crate) fn existing(target: &Path, rel: &str, need: Need) -> Result<PathBuf, SourceError> {
    match lookup(target, rel, need)? {
        (path, Some(_)) => Ok(path),
        (path, None) => Err(SourceError::Procedure(format!(
            "the restored tree has no `{}`; the restore procedure needs {} there",
            path.display(),
            need.noun()
        ))),
    }
}

/// The directory that holds `target/rel` (a path [`lookup`] accepted), opened one component at
/// a time from `target`, each with `O_NOFOLLOW | O_DIRECTORY`, and the last component's name.
fn parent_dir<'r>(target: &Path, rel: &'r str) -> Result<(OwnedFd, &'r str), SourceError> {
    let (parents, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut dir = nix::fcntl::open(target, flags, Mode::empty())
        .map_err(|e| SourceError::io("opening", target, e.into()))?;
    let mut path = target.to_path_buf();
    for segment in parents.split('/').filter(|s| !s.is_empty()) {
        path.push(segment);
        dir = nix::fcntl::openat(&dir, segment, flags, Mode::empty())
            .map_err(|e| SourceError::io("opening the directory", &path, e.into()))?;
    }
    Ok((dir, name))
}

/// Opens `name` in `dir` with `flags`, never through a symlink, and never blocking on a FIFO.
fn open_in(
    dir: &OwnedFd,
    name: &str,
    flags: OFlag,
    mode: u32,
    path: &Path,
) -> Result<File, SourceError> {
    let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::openat(dir, name, flags, Mode::from_bits_truncate(mode))
        .map_err(|e| SourceError::io("opening", path, e.into()))?;
    Ok(File::from(fd))
}

/// The contents of the regular file `target/rel`, `None` when it does not exist.
pub(crate) fn read(target: &Path, rel: &str) -> Result<Option<Vec<u8>>, SourceError> {
    let (path, md) = lookup(target, rel, Need::File)?;
    if md.is_none() {
        return Ok(None);
    }
    let (dir, name) = parent_dir(target, rel)?;
    let mut file = open_in(&dir, name, OFlag::O_RDONLY, 0, &path)?;
    check_opened(&file, &path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| SourceError::io("reading", &path, e))?;
    Ok(Some(bytes))
}

fn check_opened(file: &File, path: &Path) -> Result<(), SourceError> {
    let md = file
        .metadata()
        .map_err(|e| SourceError::io("reading metadata of", path, e))?;
    if md.file_type().is_file() {
        Ok(())
    } else {
        Err(odd_entry(path, what(&md), Need::File))
    }
}

/// Writes `bytes` to the regular file `target/rel` (created with `mode` or truncated), and
/// syncs it. Returns the path.
pub(crate) fn write(
    target: &Path,
    rel: &str,
    bytes: &[u8],
    mode: u32,
) -> Result<PathBuf, SourceError> {
    let (path, _) = lookup(target, rel, Need::File)?;
    let (dir, name) = parent_dir(target, rel)?;
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC;
    let mut file = open_in(&dir, name, flags, mode, &path)?;
    check_opened(&file, &path)?;
    // `mode` applies to a new file only; an existing one gets it too.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| SourceError::io("setting permissions of", &path, e))?;
    file.write_all(bytes)
        .map_err(|e| SourceError::io("writing", &path, e))?;
    file.sync_all()
        .map_err(|e| SourceError::io("syncing", &path, e))?;
    Ok(path)
}

/// Removes the regular file `target/rel`; returns whether it existed.
pub(crate) fn remove_file(target: &Path, rel: &str) -> Result<bool, SourceError> {
    let (path, md) = lookup(target, rel, Need::File)?;
    if md.is_none() {
        return Ok(false);
    }
    let (dir, name) = parent_dir(target, rel)?;
    // Never follows a link in the name's place, and refuses a directory there.
    match nix::unistd::unlinkat(&dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::ENOENT) => Ok(false),
        Err(e) => Err(SourceError::io("removing", &path, e.into())),
    }
}

/// Renames the regular file `target/from` over `target/to` (which, if it exists, must be a
/// regular file too).
pub(crate) fn rename(target: &Path, from: &str, to: &str) -> Result<PathBuf, SourceError> {
    existing(target, from, Need::File)?;
    let (to_path, _) = lookup(target, to, Need::File)?;
    let (from_dir, from_name) = parent_dir(target, from)?;
    let (to_dir, to_name) = parent_dir(target, to)?;
    nix::fcntl::renameat(&from_dir, from_name, &to_dir, to_name)
        .map_err(|e| SourceError::io("renaming into place", &to_path, e.into()))?;
    Ok(to_path)
}

/// Creates the directory `target/rel` and any missing directory above it inside `target`, each
/// with `mode`; returns whether anything was created.
pub(crate) fn create_dir_all(target: &Path, rel: &str, mode: u32) -> Result<bool, SourceError> {
    let mut created = false;
    let mut prefix = String::new();
    for segment in rel.split('/') {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(segment);
        let (path, md) = lookup(target, &prefix, Need::Dir)?;
        if md.is_none() {
            let (dir, name) = parent_dir(target, &prefix)?;
            nix::sys::stat::mkdirat(&dir, name, Mode::from_bits_truncate(mode))
                .map_err(|e| SourceError::io("creating", &path, e.into()))?;
            // `mode` as given, not as the umask left it.
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY;
            open_in(&dir, name, flags, 0, &path)?
                .set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| SourceError::io("setting permissions of", &path, e))?;
            created = true;
        }
    }
    Ok(created)
}

/// Syncs the directory `target` itself (after a rename into it).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), SourceError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SourceError::io("syncing", dir, e))
}

/// Refuses a tree holding any symlink or special file below `target`: for procedures that hand
/// the whole tree to a database tool, which follows whatever it finds (`db_recover`).
pub(crate) fn check_tree(target: &Path) -> Result<(), SourceError> {
    let mut stack = vec![target.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let items = std::fs::read_dir(&dir).map_err(|e| SourceError::io("listing", &dir, e))?;
        for item in items {
            let item = item.map_err(|e| SourceError::io("listing", &dir, e))?;
            let path = item.path();
            let md = std::fs::symlink_metadata(&path)
                .map_err(|e| SourceError::io("reading metadata of", &path, e))?;
            if md.is_dir() {
                stack.push(path);
            } else if !md.is_file() {
                return Err(odd_entry(&path, what(&md), Need::File));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use std::os::unix::fs::symlink;

    /// A target with a symlink `link` to a file outside and `dir` to a directory outside.
    fn hostile_tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let outer = tempfile::tempdir().unwrap();
        let outside = outer.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"precious").unwrap();
        let target = outer.path().join("target");
        std::fs::create_dir(&target).unwrap();
        symlink(outside.join("victim"), target.join("link")).unwrap();
        symlink(&outside, target.join("dir")).unwrap();
        (outer, target, outside)
    }

    fn refused(result: Result<impl std::fmt::Debug, SourceError>) -> String {
        let e = result.unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        e
    }

    #[test]
    fn links_are_never_followed() {
        let (_outer, target, outside) = hostile_tree();
        refused(read(&target, "link"));
        refused(read(&target, "dir/victim"));
        refused(write(&target, "link", b"x", 0o600));
        refused(write(&target, "dir/victim", b"x", 0o600));
        refused(write(&target, "dir/new", b"x", 0o600));
        refused(remove_file(&target, "link"));
        refused(remove_file(&target, "dir/victim"));
        refused(create_dir_all(&target, "dir/sub", 0o700));
        refused(existing(&target, "dir", Need::Dir));
        refused(check_tree(&target));
        std::fs::write(target.join("a"), b"a").unwrap();
        refused(rename(&target, "a", "dir/victim"));
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"precious");
        assert!(!outside.join("new").exists() && !outside.join("sub").exists());
    }

    /// What a fix-up does once [`lookup`] accepted a path goes through the directories as
    /// opened one by one with `O_NOFOLLOW`: a directory swapped for a link to the outside after
    /// the check (by someone who can write in the target) is refused, not followed.
    #[test]
    fn a_directory_swapped_for_a_link_after_the_check_is_not_followed() {
        let (_outer, target, outside) = hostile_tree();
        std::fs::create_dir(target.join("real")).unwrap();
        lookup(&target, "real/victim", Need::File).unwrap();
        let (dir, name) = parent_dir(&target, "real/victim").unwrap();
        assert_eq!(name, "victim");
        drop(dir);
        std::fs::rename(target.join("real"), target.join("moved")).unwrap();
        symlink(&outside, target.join("real")).unwrap();
        let err = parent_dir(&target, "real/victim").unwrap_err().to_string();
        assert!(err.contains("real"), "{err}");
        // The path-based calls the fix-ups made before would have gone through the link.
        assert!(target.join("real/victim").exists());
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"precious");
    }

    #[test]
    fn regular_files_and_directories_work() {
        let target = tempfile::tempdir().unwrap();
        let target = target.path();
        assert!(create_dir_all(target, "a/b", 0o700).unwrap());
        assert!(!create_dir_all(target, "a/b", 0o700).unwrap());
        assert_eq!(read(target, "a/b/f").unwrap(), None);
        write(target, "a/b/f", b"one", 0o600).unwrap();
        write(target, "a/b/f", b"two", 0o640).unwrap();
        assert_eq!(read(target, "a/b/f").unwrap().unwrap(), b"two");
        let md = std::fs::metadata(target.join("a/b/f")).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o640);
        rename(target, "a/b/f", "g").unwrap();
        assert!(remove_file(target, "g").unwrap());
        assert!(!remove_file(target, "g").unwrap());
        check_tree(target).unwrap();
        for bad in ["", "/etc", "../x", "a/../b", "a//b", "./a"] {
            assert!(lookup(target, bad, Need::File).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_directory_where_a_file_is_needed_is_refused() {
        let target = tempfile::tempdir().unwrap();
        std::fs::create_dir(target.path().join("d")).unwrap();
        let e = read(target.path(), "d").unwrap_err().to_string();
        assert!(
            e.contains("a directory at") && e.contains("needs a regular file"),
            "{e}"
        );
    }
}
