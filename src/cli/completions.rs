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

/// The man page (roff) of casewarden and each of its commands (and `audit`'s), one after
/// the other, each with its EXIT STATUS.
pub(super) fn man() -> anyhow::Result<u8> {
    let cmd = Cli::command();
    let mut out = std::io::stdout().lock();
    page(&cmd, "casewarden", "", &mut out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name();
        page(sub, &format!("casewarden-{name}"), name, &mut out)?;
        for leaf in sub.get_subcommands().filter(|s| !s.is_hide_set()) {
            let path = format!("{name} {}", leaf.get_name());
            let title = format!("casewarden-{name}-{}", leaf.get_name());
            page(leaf, &title, &path, &mut out)?;
        }
    }
    Ok(0)
}

/// One page: clap's sections, the exit status, then the examples and the version.
fn page(
    cmd: &clap::Command,
    title: &str,
    path: &str,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone())
        .title(title)
        .source(format!("casewarden {}", env!("CARGO_PKG_VERSION")));
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    if cmd.has_subcommands() {
        man.render_subcommands_section(out)?;
    }
    out.write_all(super::exits::roff(path).as_bytes())?;
    if cmd.get_after_help().is_some() {
        man.render_extra_section(out)?;
    }
    if cmd.get_version().is_some() {
        man.render_version_section(out)?;
    }
    Ok(())
}
