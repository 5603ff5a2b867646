//! `bindsto check`: observe for a short while with an engine in this process (no HTTP, no
//! remediation), print the verdict, exit 0 healthy, 1 unhealthy, 2 on error.

use std::{path::Path, process::ExitCode, time::Duration};

use super::{CliError, load_config, print_status, runtime};
use crate::daemon::{rt, run};

pub fn command(
    config: Option<&Path>,
    json: bool,
    duration: Duration,
) -> Result<ExitCode, CliError> {
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let status = rt::run_to_end(runtime()?, rt::SHUTDOWN_GRACE, run::check(cfg, duration))?;
    print_status(&serde_json::to_value(&*status)?, json)
}
