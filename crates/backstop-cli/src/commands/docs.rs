//! `completions` and `man`: documentation generated from the clap definitions.

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;

use crate::cli::{Cli, CompletionsArgs, ManArgs};

pub(super) fn completions(args: &CompletionsArgs) -> Result<()> {
    use std::io::Write as _;
    let mut command = Cli::command();
    // clap_complete panics when its writer fails (`| head` closes the pipe): generate into
    // memory, then write, so a closed pipe is an error the caller treats as such.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "backstop", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .context("writing to stdout")
}

pub(super) fn man(args: &ManArgs) -> Result<()> {
    let command = Cli::command();
    match &args.out_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating man page directory `{}`", dir.display()))?;
            clap_mangen::generate_to(command, dir)
                .with_context(|| format!("writing man pages into `{}`", dir.display()))
        }
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(command)
                .render(&mut out)
                .context("writing to stdout")
        }
    }
}
