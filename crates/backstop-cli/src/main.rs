//! The `backstop` command: argument parsing, logging, and turning errors into exit codes.
//!
//! Every subcommand is a thin client of `backstop::BackupEngine`; see `commands/`.

mod cli;
mod commands;
mod config;
mod exit;
mod interrupt;
mod malloc;
mod orphans;
mod output;
mod password;
mod progress;
mod repo;
mod sources;

use std::process::ExitCode;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, GlobalArgs};
use crate::exit::Code;
use crate::output::Printer;

fn main() -> ExitCode {
    malloc::tune();
    // clap prints usage errors itself and exits with code 2.
    let cli = Cli::parse();
    init_logging(&cli.global);
    interrupt::install();
    orphans::adopt();

    let result = commands::run(&cli);
    // Every store is closed by now: an `ssh` still our child is a leaked connection master.
    orphans::end_leftover_ssh();
    if cli.global.verbose > 0 {
        if let Some(c) = output::request_counts() {
            eprintln!(
                "store requests: {} put, {} get ({} ranged), {} list, {} head, {} delete; {} up, {} down",
                c.puts,
                c.gets,
                c.range_gets,
                c.lists,
                c.heads,
                c.deletes,
                output::size(c.bytes_up),
                output::size(c.bytes_down)
            );
        }
    }
    let Err(err) = result else {
        return ExitCode::SUCCESS;
    };
    let code = exit::code_for(&err, interrupt::interrupted());
    if code == Code::Success {
        return ExitCode::SUCCESS;
    }
    eprintln!("error: {err:#}");
    if cli.global.json {
        let printer = Printer::new(true, cli.global.quiet);
        // stdout may be the very thing that failed; stderr already has the message.
        let _ = printer.json_error(cli.command.name(), &format!("{err:#}"), code.as_u8());
    }
    ExitCode::from(code.as_u8())
}

/// Logs go to stderr through `tracing`: warnings by default, `-v` info, `-vv` debug, `-vvv`
/// trace, `-q` errors only; `RUST_LOG` overrides all of that.
fn init_logging(global: &GlobalArgs) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::new(directives),
        _ => {
            let level = match (global.quiet, global.verbose) {
                (true, _) => "error",
                (false, 0) => "warn",
                (false, 1) => "info",
                (false, 2) => "debug",
                (false, _) => "trace",
            };
            let others = if global.verbose >= 3 { "trace" } else { "warn" };
            EnvFilter::new(format!(
                "{others},backstop={level},backstop_source={level},backstop_store={level}"
            ))
        }
    };
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
    let ansi = !no_color && std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(progress::LogWriter)
        .with_ansi(ansi)
        .with_target(global.verbose >= 3)
        .without_time()
        .init();
}
