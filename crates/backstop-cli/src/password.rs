//! Where the repository password comes from: flags, environment, config file, or a prompt.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::exit::{Code, Exit};

/// One way of getting the password without asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PasswordSource {
    /// The first line of a file.
    File(PathBuf),
    /// The first line a shell command prints.
    Command(String),
    /// The value of `BACKSTOP_PASSWORD`.
    Env,
    /// The value of `BACKSTOP_NEW_PASSWORD` (the new password of `key add` and `key passwd`).
    NewEnv,
    /// The value of `BACKSTOP_FROM_PASSWORD` (the password of the repository `--from-repo`
    /// names).
    FromEnv,
}

/// Chooses the password source, first match wins: `--password-command`, `--password-file`,
/// `BACKSTOP_PASSWORD`, `BACKSTOP_PASSWORD_FILE`, `BACKSTOP_PASSWORD_COMMAND`, the config file's
/// `password_file`, then its `password_command`.
pub(crate) fn choose_source(
    flag_file: Option<&Path>,
    flag_command: Option<&str>,
    config_file: Option<&Path>,
    config_command: Option<&str>,
) -> Option<PasswordSource> {
    let env = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    if let Some(command) = flag_command {
        return Some(PasswordSource::Command(command.to_owned()));
    }
    if let Some(file) = flag_file {
        return Some(PasswordSource::File(file.to_path_buf()));
    }
    if env("BACKSTOP_PASSWORD").is_some() {
        return Some(PasswordSource::Env);
    }
    if let Some(file) = env("BACKSTOP_PASSWORD_FILE") {
        return Some(PasswordSource::File(PathBuf::from(file)));
    }
    if let Some(command) = env("BACKSTOP_PASSWORD_COMMAND") {
        return Some(PasswordSource::Command(
            command.to_string_lossy().into_owned(),
        ));
    }
    if let Some(file) = config_file {
        return Some(PasswordSource::File(file.to_path_buf()));
    }
    config_command.map(|command| PasswordSource::Command(command.to_owned()))
}

impl PasswordSource {
    /// Reads the password.
    pub(crate) fn read(&self) -> Result<String> {
        match self {
            Self::File(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading password file `{}`", path.display()))?;
                Ok(first_line(&text).to_owned())
            }
            Self::Command(command) => {
                let output = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(command)
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .with_context(|| format!("running password command `{command}`"))?;
                if !output.status.success() {
                    bail!("password command `{command}` failed ({})", output.status);
                }
                let text = String::from_utf8(output.stdout).with_context(|| {
                    format!("password command `{command}` printed something that is not UTF-8")
                })?;
                Ok(first_line(&text).to_owned())
            }
            Self::Env => std::env::var("BACKSTOP_PASSWORD")
                .context("reading BACKSTOP_PASSWORD (it must be UTF-8)"),
            Self::NewEnv => std::env::var("BACKSTOP_NEW_PASSWORD")
                .context("reading BACKSTOP_NEW_PASSWORD (it must be UTF-8)"),
            Self::FromEnv => std::env::var("BACKSTOP_FROM_PASSWORD")
                .context("reading BACKSTOP_FROM_PASSWORD (it must be UTF-8)"),
        }
    }
}

fn first_line(text: &str) -> &str {
    let line = text.split('\n').next().unwrap_or_default();
    line.strip_suffix('\r').unwrap_or(line)
}

/// Whether a prompt can be shown (and answered) here.
pub(crate) fn can_prompt() -> bool {
    std::io::stdin().is_terminal()
}

/// Asks for the password of an existing repository, without echo.
pub(crate) fn prompt_existing(repo: &str) -> Result<String> {
    rpassword::prompt_password(format!("password for repository `{repo}`: "))
        .context("reading the password from the terminal")
}

/// Asks for a new password twice, without echo, and checks that both answers agree.
pub(crate) fn prompt_new(what: &str) -> Result<String> {
    let first = rpassword::prompt_password(format!("{what}: "))
        .context("reading the password from the terminal")?;
    let second = rpassword::prompt_password(format!("{what} again: "))
        .context("reading the password from the terminal")?;
    if first != second {
        bail!("the two passwords differ; nothing was changed");
    }
    Ok(first)
}

/// The password for a new key (`init`, `key add`, `key passwd`): from `source` if given, else
/// asked twice on a terminal; `hint` says how to give one without a terminal.
pub(crate) fn new_password(
    source: Option<&PasswordSource>,
    what: &str,
    hint: &str,
) -> Result<String> {
    let password = match source {
        Some(source) => source.read()?,
        None if can_prompt() => prompt_new(what)?,
        None => {
            let message = format!("no {what} given and no terminal to ask on: {hint}");
            return Err(Exit::new(Code::Usage, message).into());
        }
    };
    if password.is_empty() {
        bail!("the {what} is empty; an empty password protects nothing");
    }
    Ok(password)
}

/// The source of a new password for `key add` and `key passwd`: `--new-password-file`, else
/// `BACKSTOP_NEW_PASSWORD`.
pub(crate) fn new_key_source(file: Option<&Path>) -> Option<PasswordSource> {
    if let Some(file) = file {
        return Some(PasswordSource::File(file.to_path_buf()));
    }
    std::env::var_os("BACKSTOP_NEW_PASSWORD")
        .filter(|value| !value.is_empty())
        .map(|_| PasswordSource::NewEnv)
}

/// The source of the password of the repository `--from-repo` names: `--from-password-file`,
/// else `BACKSTOP_FROM_PASSWORD`.
pub(crate) fn from_repo_source(file: Option<&Path>) -> Option<PasswordSource> {
    if let Some(file) = file {
        return Some(PasswordSource::File(file.to_path_buf()));
    }
    std::env::var_os("BACKSTOP_FROM_PASSWORD")
        .filter(|value| !value.is_empty())
        .map(|_| PasswordSource::FromEnv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_drops_the_line_ending_and_the_rest() {
        assert_eq!(first_line("secret\n"), "secret");
        assert_eq!(first_line("secret\r\nnext"), "secret");
        assert_eq!(first_line("secret"), "secret");
        assert_eq!(first_line(""), "");
    }

    #[test]
    fn flags_win_over_config() {
        let chosen = choose_source(
            Some(Path::new("/flag")),
            None,
            Some(Path::new("/config")),
            None,
        );
        assert_eq!(chosen, Some(PasswordSource::File(PathBuf::from("/flag"))));
        let chosen = choose_source(None, None, None, Some("echo x"));
        // Only when the environment names no source does the config's command apply.
        if std::env::var_os("BACKSTOP_PASSWORD").is_none()
            && std::env::var_os("BACKSTOP_PASSWORD_FILE").is_none()
            && std::env::var_os("BACKSTOP_PASSWORD_COMMAND").is_none()
        {
            assert_eq!(chosen, Some(PasswordSource::Command("echo x".into())));
        }
    }

    #[test]
    fn password_command_output_is_read() {
        let source = PasswordSource::Command("printf 'hunter2\\n'".into());
        assert_eq!(source.read().unwrap(), "hunter2");
        let failing = PasswordSource::Command("exit 3".into());
        assert!(failing.read().is_err());
    }
}
