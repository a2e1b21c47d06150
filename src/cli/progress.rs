//! Progress on a terminal (indicatif); nothing at all when stderr is not one, so logs,
//! pipes and systemd see no bar.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A spinner with a message, ticking on its own; hidden off a terminal.
pub fn spinner(message: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner().with_message(message.to_string());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// A bar for one pass: cases listed, then checked by the rules (of the mirror's total),
/// then applied; hidden off a terminal. Clear it before printing the summary.
pub fn pass_bar() -> (ProgressBar, crate::pass::Progress) {
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{msg:9} [{bar:32}] {pos}/{len} cases {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let shown = bar.clone();
    let progress = crate::pass::Hook(std::sync::Arc::new(
        move |step: &crate::pass::Step| match *step {
            crate::pass::Step::Synced { cases, full } => {
                shown.set_message(if full { "listing" } else { "syncing" });
                shown.set_length(cases);
                shown.set_position(cases);
            }
            crate::pass::Step::Listed { cases, total } => {
                shown.set_message("checking");
                shown.set_length(total.unwrap_or(cases).max(cases));
                shown.set_position(cases);
            }
            crate::pass::Step::Applied { cases, total } => {
                shown.set_message("applying");
                shown.set_position(cases);
                shown.set_length(total);
            }
        },
    ));
    (bar, progress)
}
