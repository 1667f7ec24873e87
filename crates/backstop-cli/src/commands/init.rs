//! `init`: create a repository.

use anyhow::Result;

use crate::cli::InitArgs;
use crate::output::quoted;
use crate::password;
use crate::repo::Settings;

pub(super) fn run(settings: &Settings, args: &InitArgs) -> Result<()> {
    let engine = match &args.from_repo {
        Some(from) => {
            let password =
                password::from_repo_source(args.from_password.from_password_file.as_deref());
            let source = settings.open_other(from, password.as_ref())?;
            settings.init_from(&source)?
        }
        None => settings.init(!args.no_encryption, args.cipher.map(backstop::Cipher::from))?,
    };
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
