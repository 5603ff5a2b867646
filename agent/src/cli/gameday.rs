//! `bindsto gameday`: exit 0 when every scenario passed, 1 on a miss, 2 when it could not run,
//! 130 when interrupted (after cleaning up).

use std::process::ExitCode;

use super::{CliError, emit, verdict};
use crate::gameday::{self, GamedayError, GamedayOptions};

pub fn command(opts: &GamedayOptions, json: bool) -> Result<ExitCode, CliError> {
    match gameday::run(opts) {
        Ok(report) => {
            emit(&report, json, gameday::render)?;
            Ok(verdict(report.passed))
        }
        Err(e @ GamedayError::Interrupted) => {
            eprintln!("bindsto: {e}");
            Ok(ExitCode::from(130))
        }
        Err(e) => Err(e.into()),
    }
}
