//! One module per group of subcommands; each turns its arguments into engine calls and renders
//! the result. No backup logic lives here: whatever a command does, the engine API does.

mod backup;
mod bdb;
mod copy;
mod demo;
mod docs;
pub(crate) mod group;
mod init;
mod inspect;
mod key;
mod repair;
mod restore;
mod retention;
mod select;
mod verify;
mod wal;

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::repo::Settings;

/// Runs the parsed command line.
pub(crate) fn run(cli: &Cli) -> Result<()> {
    // Generated documentation needs no settings, so a broken config file cannot block it.
    match &cli.command {
        Command::Completions(args) => return docs::completions(args),
        Command::Man(args) => return docs::man(args),
        Command::Demo(args) => {
            let printer = crate::output::Printer::new(cli.global.json, cli.global.quiet);
            return demo::run(&printer, args);
        }
        _ => {}
    }
    let settings = &Settings::resolve(&cli.global)?;
    match &cli.command {
        Command::Init(args) => init::run(settings, args),
        Command::Backup(args) if args.group => group::backup(settings, &cli.global, args),
        Command::Backup(args) => backup::run(settings, args),
        Command::List => inspect::list(settings),
        Command::Info(args) => inspect::info(settings, args),
        Command::Diff(args) => inspect::diff(settings, args),
        Command::Dump(args) => inspect::dump(settings, args),
        Command::Verify(args) => verify::run(settings, args),
        Command::Restore(args) if args.group.is_some() => group::restore(settings, args),
        Command::Restore(args) => restore::run(settings, args),
        Command::Purge(args) => retention::purge(settings, args),
        Command::Delete(args) => retention::delete(settings, args),
        Command::Gc(args) => retention::gc(settings, args),
        Command::Copy(args) => copy::run(settings, args),
        Command::Key(command) => key::run(settings, command),
        Command::Repair(crate::cli::RepairCommand::Index(args)) => repair::index(settings, args),
        Command::Standby(args) => bdb::standby(settings, args),
        Command::ArchiveLogs(args) => bdb::archive_logs(settings, args),
        Command::WalPush(args) => wal::push(settings, args),
        Command::WalFetch(args) => wal::fetch(settings, args),
        Command::Completions(_) | Command::Man(_) | Command::Demo(_) => Ok(()),
    }
}
