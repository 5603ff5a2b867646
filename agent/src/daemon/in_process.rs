//! The engine in this process, without HTTP, for `bindsto gameday` when no agent runs: it
//! publishes into a `Shared` the caller reads while it runs, and can read tracepoint layouts
//! from elsewhere (as [`crate::daemon::startup::TRACEFS_ENV`] does) to hide tracepoints from this engine only. It is
//! `check` running until `stop`, with both handed in through a task-local so `drive` keeps
//! its signature.

use std::{future::Future, path::PathBuf, sync::Arc, time::Duration};

use crate::daemon::run::{RunError, check};
use crate::{config::Config, publish::shared::Shared};

#[derive(Clone)]
struct Injected {
    shared: Arc<Shared>,
    layouts: Option<PathBuf>,
}

tokio::task_local! {
    static INJECTED: Injected;
}

pub(super) fn shared() -> Option<Arc<Shared>> {
    INJECTED.try_with(|i| Arc::clone(&i.shared)).ok()
}

pub(super) fn layouts() -> Option<PathBuf> {
    INJECTED.try_with(|i| i.layouts.clone()).ok().flatten()
}

/// Runs the engine until `stop` resolves.
pub async fn run(
    cfg: Config,
    shared: Arc<Shared>,
    layouts: Option<PathBuf>,
    stop: impl Future<Output = ()>,
) -> Result<(), RunError> {
    // A year: `stop` ends it; dropping the engine detaches its programs.
    let engine = check(cfg, Duration::from_secs(365 * 24 * 3600));
    INJECTED
        .scope(Injected { shared, layouts }, async {
            tokio::select! {
                r = engine => r.map(|_| ()),
                () = stop => Ok(()),
            }
        })
        .await
}
