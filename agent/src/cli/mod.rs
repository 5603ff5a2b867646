//! The commands: each `bindsto` subcommand's body, from its parsed flags to its output and
//! exit code (`main` only parses and dispatches), plus `doctor`, the `status` table, the manual
//! pages and log setup. May use every stage; nothing but `main` uses it.

pub mod check;
pub mod doctor;
pub mod fleet;
pub mod gameday;
pub mod help;
pub mod incident;
pub mod logging;
pub mod run;
pub mod status;
pub mod status_table;

use std::{net::SocketAddr, path::Path, process::ExitCode};

use crate::config::Config;

/// Why a command could not run (exit 2); a bad config is reported and exits on its own code
/// before any of these.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("starting the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Run(#[from] crate::daemon::run::RunError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("asking the agent at {addr} (is it running?)")]
    Unreachable {
        addr: SocketAddr,
        #[source]
        source: crate::api::client::HttpError,
    },
    #[error("agent at {addr} answered HTTP {code}: {body}")]
    Http {
        addr: SocketAddr,
        code: u16,
        body: String,
    },
    #[error("the agent's /status is not JSON")]
    NotJson(#[source] serde_json::Error),
    #[error(transparent)]
    Gameday(#[from] crate::gameday::GamedayError),
}

/// Loads the config; a bad one is printed and becomes the exit code its error carries.
pub fn load_config(path: Option<&Path>) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("bindsto: {e}");
        config_exit(e.exit_code())
    })
}

/// The exit code of a config error (2 when it does not fit an exit status).
pub fn config_exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(2))
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    crate::daemon::rt::runtime().map_err(CliError::Runtime)
}

/// Prints a `/status` document (JSON or the table) and turns its verdict into the exit code:
/// 0 healthy, 1 otherwise.
fn print_status(doc: &serde_json::Value, json: bool) -> Result<ExitCode, CliError> {
    emit(doc, json, status_table::render)?;
    let healthy = doc.get("healthy").and_then(serde_json::Value::as_bool);
    Ok(verdict(healthy == Some(true)))
}

/// Prints `value` as pretty JSON with `--json`, else as `text` renders it.
fn emit<T: serde::Serialize>(
    value: &T,
    json: bool,
    text: impl FnOnce(&T) -> String,
) -> Result<(), CliError> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", text(value));
    }
    Ok(())
}

/// 0 when all is well, 1 otherwise.
fn verdict(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
