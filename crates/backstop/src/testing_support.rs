//! Support for the engine's examples and benchmarks (not part of the stable API).

use backstop_store::{PutMode, Store};

use crate::format::{
    self, BlobKind, Config, ContentId, IndexFile, IndexPack, ObjectType, PackEntry,
};

/// Writes unencrypted index objects listing `blobs` synthetic blobs, `per_object` per index
/// object, in packs of 1,000 blobs; the packs themselves are not written. With `short_ids` the
/// blobs have 16-byte ids, as an encrypted repository of format 6 names them.
pub fn write_synthetic_index(
    store: &dyn Store,
    blobs: usize,
    per_object: usize,
    short_ids: bool,
) -> crate::Result<()> {
    let id_of = |b: usize| {
        let id = ContentId::hash(&(b as u64).to_le_bytes());
        if short_ids {
            ContentId::from_significant(&id.0[..ContentId::SHORT]).unwrap_or(id)
        } else {
            id
        }
    };
    let mut n = 0usize;
    while n < blobs {
        let mut file = IndexFile::default();
        let end = (n + per_object).min(blobs);
        while n < end {
            let pack_end = (n + 1000).min(end);
            let entries = (n..pack_end)
                .enumerate()
                .map(|(i, b)| PackEntry {
                    id: id_of(b),
                    kind: BlobKind::Data,
                    offset: (i * 16384) as u32,
                    length: 16384,
                    raw_length: 16384,
                    compressed: false,
                    within: None,
                })
                .collect();
            file.packs.push(IndexPack {
                id: ContentId::hash(format!("pack {n}").as_bytes()),
                size: 16384 * 1000,
                entries,
            });
            n = pack_end;
        }
        let bytes = format::seal_object(ObjectType::Index, &file, None);
        store.put(
            &format!("index/{}", ContentId::hash(&bytes).to_hex()),
            &bytes,
            PutMode::Create,
        )?;
    }
    Ok(())
}

/// Rewrites a repository's config to say format `version`, as a build of that version would
/// have written it: for tests of how this build treats repositories created before its own
/// version (it keeps writing their version into them).
pub fn set_config_version(store: &dyn Store, version: u32) -> crate::Result<()> {
    let bytes = store.get("config")?;
    let mut config: Config = format::open_object("config", ObjectType::Config, &bytes, None)
        .map_err(|e| crate::repo::damaged("config", e))?;
    config.version = version;
    let bytes = format::seal_object_as(ObjectType::Config, &config, None, version);
    store.put("config", &bytes, PutMode::Overwrite)?;
    Ok(())
}
