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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(&err),
    };
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

/// Arguments clap refused (or `--help`, `--version`, which it "refuses" too): its message on
/// stderr, and with `--json` among the arguments also the JSON error document on stdout, as for
/// any other failure; exit code 2.
fn usage_error(err: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind as K;
    if matches!(
        err.kind(),
        K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        err.exit();
    }
    let _ = err.print();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--json") {
        let printer = Printer::new(true, false);
        let message = err.render().to_string();
        let message = message.trim().trim_start_matches("error: ");
        let _ = printer.json_error(&command_word(&args), message, Code::Usage.as_u8());
    }
    ExitCode::from(Code::Usage.as_u8())
}

/// The subcommand named in `args` (`key remove`, say), as the JSON document names commands,
/// or "" when none is recognisable.
fn command_word(args: &[String]) -> String {
    use clap::CommandFactory as _;
    let command = Cli::command();
    for (at, arg) in args.iter().enumerate() {
        let Some(sub) = command.find_subcommand(arg) else {
            continue;
        };
        let name = sub.get_name().to_owned();
        let nested = args
            .get(at + 1)
            .and_then(|next| sub.find_subcommand(next))
            .map(|s| s.get_name().to_owned());
        return match nested {
            Some(nested) => format!("{name} {nested}"),
            None => name,
        };
    }
    String::new()
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
