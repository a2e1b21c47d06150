//! `casewarden run`: the daemon, from the config (see `daemon`).

use super::{Cli, load_config};

pub(super) async fn run(cli: &Cli) -> anyhow::Result<u8> {
    crate::daemon::run(load_config(cli)?).await
}
