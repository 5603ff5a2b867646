//! `bindsto run`: load the config, attach the kernel programs and drop privileges while the
//! process is still single-threaded, then run the agent until SIGTERM or SIGINT.

use std::{path::PathBuf, process::ExitCode};

use super::{CliError, config_exit, runtime};
use crate::daemon::{reload::ConfigSource, rt, run, startup};

pub fn command(config: Option<PathBuf>, dry_run: bool) -> Result<ExitCode, CliError> {
    let source = ConfigSource::new(config, dry_run);
    let cfg = match source.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bindsto: {e}");
            return Ok(config_exit(e.exit_code()));
        }
    };
    // Before the capabilities go: the sandbox's read-only view of canary mounts is lifted.
    crate::daemon::sandbox::writable_canaries(&cfg);
    startup::preload_probes_and_drop_privileges();
    // Threads hung on watched storage must not hold the exit.
    rt::run_to_end(
        runtime()?,
        rt::SHUTDOWN_GRACE,
        run::run_service(cfg, Some(source), shutdown_signal()),
    )?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            // The reloader handles SIGHUP; this stream only keeps its default action (exit)
            // from ever applying, even before the reloader is set up.
            _ = hup.recv() => {}
        }
    }
}
