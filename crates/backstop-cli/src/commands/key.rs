//! `key add|list|remove|passwd`: the passwords of an encrypted repository.

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::cli::{KeyCommand, NewPasswordArgs};
use crate::output::{self, Align, Table, quoted};
use crate::password;
use crate::repo::Settings;

/// The `--json` result of `key add` and `key passwd`: the new key's id.
#[derive(Serialize)]
struct NewKey {
    id: String,
}

/// The `--json` result of `key remove`.
#[derive(Serialize)]
struct RemovedKey {
    removed: String,
}

pub(super) fn run(settings: &Settings, command: &KeyCommand) -> Result<()> {
    match command {
        KeyCommand::Add(args) => add(settings, args),
        KeyCommand::List => list(settings),
        KeyCommand::Remove(args) => remove(settings, &args.id),
        KeyCommand::Passwd(args) => passwd(settings, args),
    }
}

fn new_password(args: &NewPasswordArgs) -> Result<String> {
    let source = password::new_key_source(args.new_password_file.as_deref());
    password::new_password(
        source.as_ref(),
        "new password",
        "set BACKSTOP_NEW_PASSWORD or pass --new-password-file",
    )
}

fn add(settings: &Settings, args: &NewPasswordArgs) -> Result<()> {
    let engine = settings.open()?;
    let password = new_password(args)?;
    let id = engine.add_key(&password).context("adding a key")?;
    let printer = settings.printer;
    if printer.json {
        return printer.json("key add", &NewKey { id });
    }
    printer.status(format!("added key {}", quoted(&id)))
}

fn list(settings: &Settings) -> Result<()> {
    let engine = settings.open_read_only()?;
    let keys = engine.list_keys()?;
    let printer = settings.printer;
    if printer.json {
        return printer.json("key list", &keys);
    }
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("CREATED", Align::Left),
        ("HOST", Align::Left),
        ("IN USE", Align::Left),
    ]);
    for key in &keys {
        table.row(vec![
            key.id.clone(),
            output::time(key.created_unix),
            key.host.clone(),
            if key.current {
                "yes".to_owned()
            } else {
                String::new()
            },
        ]);
    }
    printer.table(&table)
}

fn remove(settings: &Settings, id: &str) -> Result<()> {
    let engine = settings.open()?;
    let removed = engine
        .remove_key(id)
        .with_context(|| format!("removing key {}", quoted(id)))?;
    let printer = settings.printer;
    if printer.json {
        return printer.json("key remove", &RemovedKey { removed });
    }
    printer.status(format!("removed key {}", quoted(&removed)))
}

fn passwd(settings: &Settings, args: &NewPasswordArgs) -> Result<()> {
    let engine = settings.open()?;
    let password = new_password(args)?;
    let id = engine
        .change_password(&password)
        .context("changing the password")?;
    let printer = settings.printer;
    if printer.json {
        return printer.json("key passwd", &NewKey { id });
    }
    printer.status(format!(
        "changed the password; the new key is {}",
        quoted(&id)
    ))
}
