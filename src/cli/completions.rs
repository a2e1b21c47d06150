//! `casewarden completions SHELL` and `casewarden man`: generated from the same clap
//! definitions as the commands, so they never drift from them.

use clap::{Args, CommandFactory};

use super::Cli;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

pub(super) fn completions(args: &CompletionsArgs) -> anyhow::Result<u8> {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "casewarden", &mut std::io::stdout());
    Ok(0)
}

/// The man page (roff) of casewarden and each of its commands, one after the other.
pub(super) fn man() -> anyhow::Result<u8> {
    let cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("casewarden-{}", sub.get_name());
        clap_mangen::Man::new(sub.clone())
            .title(name)
            .render(&mut out)?;
    }
    Ok(0)
}
