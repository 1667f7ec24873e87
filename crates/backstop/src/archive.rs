//! Archives: named objects outside backups (WAL segments pushed by `archive_command`), each
//! compressed and sealed on its own, durable when `put` returns.

use backstop_store::{PutMode, StoreErrorKind};

use crate::format::{self, ArchiveObject, ContentId, ObjectType};
use crate::info::ArchivePut;
use crate::repo::{Repository, damaged};
use crate::{Error, ErrorKind, Result};

fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::msg(
            ErrorKind::InvalidInput,
            format!("{what} `{name}` must be letters, digits, `.`, `_` or `-`"),
        ))
    }
}

fn key(archive: &str, name: &str) -> Result<String> {
    check_name("archive", archive)?;
    check_name("archive object name", name)?;
    Ok(format!("archive/{archive}/{name}"))
}

/// The object archived as `name` in `archive` under `key`, if there is one. The name it holds
/// must be `name`, and the archive it names (objects written before 2026-12-06 name none) must
/// be `archive`: sealing proves only that the repository's key holder wrote the object, and
/// whoever can write to the store could otherwise copy one segment's object over another's
/// key, so that `wal-fetch` of the second returned the first's bytes (PostgreSQL would then end
/// its recovery early, without the transactions of the segment it asked for), or one cluster's
/// segment into another cluster's archive under the same name.
fn read(repo: &Repository, key: &str, archive: &str, name: &str) -> Result<Option<ArchiveObject>> {
    match repo.store.get(key) {
        Ok(bytes) => open(repo, key, archive, name, &bytes).map(Some),
        Err(e) if e.kind() == StoreErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Opens the stored bytes of the object `name` of `archive` (under `key`), checking that they
/// are what they should be there ([`read`]).
fn open(
    repo: &Repository,
    key: &str,
    archive: &str,
    name: &str,
    bytes: &[u8],
) -> Result<ArchiveObject> {
    let object: ArchiveObject =
        format::open_object("archive object", ObjectType::Archive, bytes, repo.key())
            .map_err(|e| damaged(key, e))?;
    if object.name != name {
        return Err(Error::new(
            ErrorKind::Corrupt,
            ArchiveError::WrongName {
                key: key.to_owned(),
                found: object.name,
            },
        ));
    }
    if let Some(found) = object.archive.as_ref().filter(|a| *a != archive) {
        return Err(Error::new(
            ErrorKind::Corrupt,
            ArchiveError::WrongArchive {
                key: key.to_owned(),
                found: found.clone(),
            },
        ));
    }
    Ok(object)
}

#[derive(Debug, thiserror::Error)]
enum ArchiveError {
    #[error(
        "object `{key}` is damaged in the repository: it holds `{found}`, another archived object (copied over this one's key)"
    )]
    WrongName { key: String, found: String },
    #[error(
        "object `{key}` is damaged in the repository: it belongs to the archive `{found}` (copied over this one's key)"
    )]
    WrongArchive { key: String, found: String },
}

pub(crate) fn put(repo: &Repository, archive: &str, name: &str, data: &[u8]) -> Result<ArchivePut> {
    let key = key(archive, name)?;
    let hash = ContentId::hash(data);
    if let Some(existing) = read(repo, &key, archive, name)? {
        if existing.hash == hash {
            return Ok(ArchivePut::AlreadyPresent);
        }
        return Err(Error::msg(
            ErrorKind::AlreadyExists,
            format!(
                "`{name}` is already archived in `{archive}` with different content; refusing to overwrite it"
            ),
        ));
    }
    let compressed = zstd::bulk::compress(data, repo.options.compression_level.max(1))
        .map_err(|e| Error::msg(ErrorKind::Io, format!("compressing `{name}`: {e}")))?;
    let object = ArchiveObject {
        name: name.to_owned(),
        archive: Some(archive.to_owned()),
        data: compressed,
        hash,
    };
    let bytes = repo.seal_object(ObjectType::Archive, &object);
    match repo.store.put(&key, &bytes, PutMode::Create) {
        Ok(()) => Ok(ArchivePut::Stored),
        // Someone stored it between our check and our put: same rules as above.
        Err(e) if e.kind() == StoreErrorKind::AlreadyExists => {
            match read(repo, &key, archive, name)? {
                Some(existing) if existing.hash == hash => Ok(ArchivePut::AlreadyPresent),
                _ => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn get(repo: &Repository, archive: &str, name: &str) -> Result<Vec<u8>> {
    let key = key(archive, name)?;
    let object =
        read(repo, &key, archive, name)?.ok_or_else(|| not_archived(repo, archive, name))?;
    decode(&key, &object)
}

fn not_archived(repo: &Repository, archive: &str, name: &str) -> Error {
    Error::msg(
        ErrorKind::NotFound,
        format!(
            "`{name}` is not in the `{archive}` archive of {}",
            repo.store.describe()
        ),
    )
}

/// Copies the object `name` of `archive` into `into`, a repository that shares `from`'s key
/// (`copy`): its stored bytes as they are, once checked as [`get`] checks them. Returns
/// whether it was copied: not when `into` has it already, with the same content.
pub(crate) fn copy(
    from: &Repository,
    into: &Repository,
    archive: &str,
    name: &str,
) -> Result<bool> {
    let key = key(archive, name)?;
    let bytes = match from.store.get(&key) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == StoreErrorKind::NotFound => {
            return Err(not_archived(from, archive, name));
        }
        Err(e) => return Err(e.into()),
    };
    let object = open(from, &key, archive, name, &bytes)?;
    decode(&key, &object)?;
    match into.store.put(&key, &bytes, PutMode::Create) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == StoreErrorKind::AlreadyExists => {
            match read(into, &key, archive, name)? {
                Some(existing) if existing.hash == object.hash => Ok(false),
                _ => Err(Error::msg(
                    ErrorKind::AlreadyExists,
                    format!(
                        "`{name}` is already archived in `{archive}` of {} with different \
                         content; it was not copied over",
                        into.store.describe()
                    ),
                )),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// An archive object's data, decompressed and checked against its hash.
fn decode(key: &str, object: &ArchiveObject) -> Result<Vec<u8>> {
    let data = zstd::stream::decode_all(object.data.as_slice()).map_err(|e| {
        damaged(
            key,
            format::FormatError::Decode {
                what: "archive object",
                detail: e.to_string(),
            },
        )
    })?;
    if ContentId::hash(&data) != object.hash {
        return Err(damaged(
            key,
            format::FormatError::Checksum {
                what: "archive object",
            },
        ));
    }
    Ok(data)
}

pub(crate) fn list(repo: &Repository, archive: &str) -> Result<Vec<String>> {
    check_name("archive", archive)?;
    let prefix = format!("archive/{archive}/");
    let mut names: Vec<String> = repo
        .store
        .list(&prefix)?
        .into_iter()
        .filter_map(|m| m.key.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}

/// The archives that hold objects, sorted.
pub(crate) fn archives(repo: &Repository) -> Result<Vec<String>> {
    let mut archives: Vec<String> = repo
        .store
        .list("archive/")?
        .into_iter()
        .filter_map(|m| {
            m.key
                .strip_prefix("archive/")
                .and_then(|rest| rest.split_once('/'))
                .map(|(archive, _)| archive.to_owned())
        })
        .collect();
    archives.sort();
    archives.dedup();
    Ok(archives)
}

pub(crate) fn delete(repo: &Repository, archive: &str, name: &str) -> Result<()> {
    let key = key(archive, name)?;
    repo.store.delete(&key)?;
    Ok(())
}
