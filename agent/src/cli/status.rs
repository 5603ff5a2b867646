//! `bindsto status`: ask a running agent for its `/status`, print it, exit 0 healthy,
//! 1 unhealthy, 2 when the agent cannot be asked.

use std::{net::SocketAddr, path::Path, process::ExitCode, time::Duration};

use super::{CliError, load_config, print_status};

/// How long the agent gets to answer; it serves `/status` from memory.
const TIMEOUT: Duration = Duration::from_secs(5);

pub fn command(
    json: bool,
    config: Option<&Path>,
    addr: Option<SocketAddr>,
) -> Result<ExitCode, CliError> {
    let addr = match addr {
        Some(a) => a,
        None => match load_config(config) {
            Ok(cfg) => local_addr(cfg.listen),
            Err(code) => return Ok(code),
        },
    };
    let (code, body) = crate::api::client::get(addr, "/status", TIMEOUT)
        .map_err(|source| CliError::Unreachable { addr, source })?;
    if code != 200 {
        return Err(CliError::Http { addr, code, body });
    }
    let doc: serde_json::Value = serde_json::from_str(&body).map_err(CliError::NotJson)?;
    print_status(&doc, json)
}

/// The address to reach a local agent: a wildcard listen address means loopback.
fn local_addr(listen: SocketAddr) -> SocketAddr {
    if listen.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), listen.port())
    } else {
        listen
    }
}
