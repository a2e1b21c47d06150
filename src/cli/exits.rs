//! What each command's exit codes mean (INTERFACE.md's contract, per command): shown under
//! "Exit status" in `--help` and as EXIT STATUS in the man pages, from this one table.

const HELD: (u8, &str) = (
    4,
    "another casewarden pass holds the audit store (see --wait)",
);
const CONFIG: (u8, &str) = (
    2,
    "a config, rule or usage error (named with its file and place)",
);
const SERVER: (u8, &str) = (3, "the server could not be reached or refused the key");
const READ: (u8, &str) = (
    2,
    "a usage error, or the audit log cannot be opened or read",
);

type Codes = &'static [(u8, &'static str)];

/// Each command (`audit verify` for a subcommand) and its codes.
const TABLE: &[(&[&str], Codes)] = &[
    (
        &["run"],
        &[
            (
                0,
                "stopped on SIGTERM or SIGINT after the running passes finished",
            ),
            CONFIG,
            SERVER,
            (
                130,
                "a second signal stopped it before the running passes finished",
            ),
        ],
    ),
    (
        &["once"],
        &[
            (
                0,
                "the pass was ok (dry run: also when changes are pending)",
            ),
            (
                1,
                "degraded: a change failed, a rule was halted by the guard or failed on a case; with several servers also one that could not be reached (the others still run)",
            ),
            CONFIG,
            (
                3,
                "the server could not be reached or refused the key (one server)",
            ),
            HELD,
            (0, "with --detailed-exitcode: nothing would change"),
            (2, "with --detailed-exitcode: changes are pending"),
            (1, "with --detailed-exitcode: any error or degraded pass"),
        ],
    ),
    (
        &["check"],
        &[
            (
                0,
                "the config, every rule and (unless --offline) every server are fine",
            ),
            (
                2,
                "a config or rule error, or a value a server refutes (user, customer, flavour)",
            ),
            (
                3,
                "a server could not be reached or refused the key (each server is still probed; the worst code wins)",
            ),
        ],
    ),
    (
        &["test-rule"],
        &[
            (0, "the rules ran on every case of the file"),
            (
                2,
                "a rule or the case file is bad, or a case in it could not be read",
            ),
        ],
    ),
    (
        &["apply", "revert"],
        &[
            (
                0,
                "every change was applied, or was already in place, or was left as a person set it",
            ),
            (1, "a change failed"),
            (
                2,
                "refused (an edited, expired or foreign plan; a pass already done), or a config error",
            ),
            SERVER,
            HELD,
        ],
    ),
    (
        &["diff"],
        &[
            (
                0,
                "the comparison ran (with --detailed-exitcode: no case decided differently)",
            ),
            (
                2,
                "with --detailed-exitcode: a case decided differently, or a rule added or removed; without it: a config or rule error",
            ),
            (1, "with --detailed-exitcode: any error"),
            SERVER,
        ],
    ),
    (
        &["test"],
        &[
            (0, "every expectation held"),
            (1, "an expectation failed"),
            CONFIG,
        ],
    ),
    (
        &["audit", "audit show"],
        &[(0, "the rows were printed"), READ],
    ),
    (
        &["audit verify"],
        &[
            (0, "intact: every row, pass and recorded head checked"),
            (
                1,
                "a break (a row or pass edited, inserted or deleted, a recorded head missing), or keyed rows whose key was not given (NOT PROVEN)",
            ),
            READ,
        ],
    ),
    (
        &["audit migrate"],
        &[
            (0, "copied, and both chains verified to the same head"),
            (1, "the copy's chain does not verify to the source's head"),
            READ,
        ],
    ),
    (
        &["report"],
        &[
            (0, "written, over an intact chain"),
            (
                1,
                "written, but the chain does not verify (the report says where)",
            ),
            READ,
        ],
    ),
    (
        &["status"],
        &[
            (0, "printed"),
            (
                1,
                "the log is in PostgreSQL and no replica leads (for monitoring)",
            ),
            READ,
        ],
    ),
    (
        &["simulate", "demo"],
        &[(0, "ran until stopped, or to its end"), CONFIG],
    ),
];

/// What casewarden itself exits with (INTERFACE.md's codes for every command).
const ANY: Codes = &[
    (0, "ok"),
    (
        1,
        "some change failed, a rule was halted or errored, or audit verify found a break",
    ),
    CONFIG,
    SERVER,
    HELD,
];

/// The codes of the command at `path` (`once`, `audit verify`; empty: the top level).
pub(super) fn of(path: &str) -> Codes {
    TABLE
        .iter()
        .find(|(names, _)| names.contains(&path))
        .map_or(ANY, |(_, codes)| codes)
}

/// The codes as `--help` prints them after the options.
pub(super) fn help_text(path: &str) -> String {
    let lines: Vec<String> = of(path)
        .iter()
        .map(|(code, what)| format!("  {code:>3}  {what}"))
        .collect();
    format!("Exit status:\n{}", lines.join("\n"))
}

/// The EXIT STATUS section of a man page (roff).
pub(super) fn roff(path: &str) -> String {
    let mut out = String::from(".SH \"EXIT STATUS\"\n");
    for (code, what) in of(path) {
        out.push_str(&format!(
            ".TP\n\\fB{code}\\fR\n{}\n",
            what.replace('\\', "\\e").replace('-', "\\-")
        ));
    }
    out
}

/// `Cli::command()` with each command's exit status after its help.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let mut cmd = with_status(super::Cli::command(), "");
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in names {
        cmd = cmd.mut_subcommand(&name, |sub| {
            let mut sub = with_status(sub, &name);
            let inner: Vec<String> = sub
                .get_subcommands()
                .map(|s| s.get_name().to_string())
                .collect();
            for leaf in inner.iter().filter(|l| l.as_str() != "help") {
                let path = format!("{name} {leaf}");
                sub = sub.mut_subcommand(leaf, |c| with_status(c, &path));
            }
            sub
        });
    }
    cmd
}

fn with_status(cmd: clap::Command, path: &str) -> clap::Command {
    let before = cmd
        .get_after_long_help()
        .or(cmd.get_after_help())
        .map(|h| format!("{h}\n\n"))
        .unwrap_or_default();
    cmd.after_long_help(format!("{before}{}", help_text(path)))
}
