//! `init`: create a repository.

use anyhow::Result;

use crate::cli::InitArgs;
use crate::output::quoted;
use crate::repo::Settings;

pub(super) fn run(settings: &Settings, args: &InitArgs) -> Result<()> {
    let engine = settings.init(!args.no_encryption, args.cipher.map(backstop::Cipher::from))?;
    let info = engine.repository_info();
    let printer = settings.printer;
    if printer.json {
        return printer.json("init", &info);
    }
    let encryption = match info.cipher {
        Some(cipher) => format!("encrypted ({cipher})"),
        None => "unencrypted".to_owned(),
    };
    printer.status(format!(
        "created {encryption} repository {} (id {})",
        quoted(settings.repo()?),
        quoted(&info.id)
    ))
}
