//! The optional TOML configuration file: defaults that flags and environment variables override.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::Deserialize;

/// The keys of the configuration file; every key is optional. Documented in the README.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    /// Repository location, as `--repo`.
    pub(crate) repo: Option<String>,
    /// File holding the password; relative paths are relative to the config file.
    pub(crate) password_file: Option<PathBuf>,
    /// Command printing the password, run with `sh -c`.
    pub(crate) password_command: Option<String>,
    /// zstd level for new data.
    pub(crate) compression_level: Option<i32>,
    /// Worker threads (0: one per core).
    pub(crate) threads: Option<usize>,
    /// Glob patterns left out of directory backups, in addition to `--exclude`.
    #[serde(default)]
    pub(crate) excludes: Vec<String>,
    /// Directory for the engine's local metadata cache.
    pub(crate) cache_dir: Option<PathBuf>,
    /// Databases backed up together (`[groups.NAME]`, see `commands/group.rs`).
    #[serde(default)]
    pub(crate) groups: std::collections::BTreeMap<String, crate::commands::group::GroupConfig>,
}

/// Where the configuration file is looked for when neither `--config` nor `BACKSTOP_CONFIG`
/// names one: `$XDG_CONFIG_HOME/backstop/config.toml`, else `~/.config/backstop/config.toml`.
pub(crate) fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|home| !home.is_empty())
                .map(|home| PathBuf::from(home).join(".config"))
        })?;
    Some(base.join("backstop").join("config.toml"))
}

/// Loads the configuration: `explicit` must exist; the default location may be absent.
pub(crate) fn load(explicit: Option<&Path>) -> Result<ConfigFile> {
    let (path, required) = match explicit {
        Some(path) => (path.to_path_buf(), true),
        None => match default_path() {
            Some(path) => (path, false),
            None => return Ok(ConfigFile::default()),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !required => {
            return Ok(ConfigFile::default());
        }
        Err(err) => {
            return Err(err).with_context(|| format!("reading config file `{}`", path.display()));
        }
    };
    let mut config =
        parse(&text).with_context(|| format!("parsing config file `{}`", path.display()))?;
    if let (Some(file), Some(dir)) = (&config.password_file, path.parent()) {
        config.password_file = Some(dir.join(file));
    }
    tracing::debug!("using config file `{}`", path.display());
    Ok(config)
}

fn parse(text: &str) -> Result<ConfigFile> {
    let config: ConfigFile = toml::from_str(text)?;
    let levels = crate::cli::MIN_COMPRESSION_LEVEL..=crate::cli::MAX_COMPRESSION_LEVEL;
    if let Some(level) = config.compression_level.filter(|l| !levels.contains(l)) {
        anyhow::bail!(
            "compression_level = {level} is not a zstd level ({} to {})",
            levels.start(),
            levels.end()
        );
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_levels_are_zstd_levels_fast_ones_included() {
        assert_eq!(
            parse("compression_level = -5\n").unwrap().compression_level,
            Some(-5)
        );
        for bad in ["23", "-131073"] {
            let err = parse(&format!("compression_level = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("not a zstd level"), "{bad}: {err}");
        }
    }

    #[test]
    fn every_documented_key_parses() {
        let config = parse(
            r#"
            repo = "/srv/backups"
            password_file = "secret"
            password_command = "pass show backstop"
            compression_level = 9
            threads = 4
            excludes = ["*.tmp", "cache/"]
            cache_dir = "/var/cache/backstop"
            "#,
        )
        .unwrap();
        assert_eq!(config.repo.as_deref(), Some("/srv/backups"));
        assert_eq!(config.compression_level, Some(9));
        assert_eq!(config.threads, Some(4));
        assert_eq!(config.excludes, ["*.tmp", "cache/"]);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = parse("repository = \"/x\"").unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
    }

    #[test]
    fn relative_password_file_is_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "password_file = \"pw\"\n").unwrap();
        let config = load(Some(&path)).unwrap();
        assert_eq!(config.password_file, Some(dir.path().join("pw")));
    }

    #[test]
    fn an_explicit_config_file_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(Some(&dir.path().join("missing.toml"))).unwrap_err();
        assert!(format!("{err:#}").contains("missing.toml"), "{err:#}");
    }
}
