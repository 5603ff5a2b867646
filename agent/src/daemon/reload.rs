//! Config reload on SIGHUP. The running config lives in a `tokio::sync::watch` channel that
//! components subscribe to (the drive loop, and anything else that wants the current config);
//! a reload publishes a new `Arc<Config>` only once the file has been read and validated in
//! full, so a bad file never replaces a good config.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::{
    config::{Config, ConfigError},
    daemon::service::Service,
    metrics::OutcomeLabels,
    publish::shared::Shared,
};

/// The running config, shared by everyone who needs it.
pub type ConfigTx = Arc<watch::Sender<Arc<Config>>>;

/// Where the config came from, so it can be read again the same way.
#[derive(Clone, Debug, Default)]
pub struct ConfigSource {
    /// `--config`; `None` is the embedded default (nothing to re-read).
    pub path: Option<PathBuf>,
    /// `--dry-run` on the command line wins over the file, on every reload too.
    pub dry_run_override: bool,
}

impl ConfigSource {
    pub fn new(path: Option<PathBuf>, dry_run_override: bool) -> Self {
        ConfigSource {
            path,
            dry_run_override,
        }
    }

    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut cfg = Config::load(self.path.as_deref())?;
        cfg.dry_run |= self.dry_run_override;
        Ok(cfg)
    }

    fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

/// Keys that cannot change in a running agent: the new value is logged and ignored (the old
/// one stays in the applied config, so `/status` shows what is really in effect).
fn keep_restart_only(old: &Config, new: &mut Config) {
    if old.listen != new.listen {
        warn!(
            running = %old.listen, new = %new.listen,
            "listen changed; restart bindsto to apply it (still serving on the old address)"
        );
        new.listen = old.listen;
    }
}

/// What changed, for the log line.
fn changed_sections(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.dry_run != new.dry_run {
        out.push("dry_run");
    }
    if old.detect != new.detect {
        out.push("detect");
    }
    if old.watch != new.watch {
        out.push("watch");
    }
    if old.remediate != new.remediate {
        out.push("remediate");
    }
    out
}

/// Re-reads the config and publishes it when valid. Returns whether it was applied.
pub fn reload(source: &ConfigSource, tx: &watch::Sender<Arc<Config>>, shared: &Shared) -> bool {
    let origin = source.path().map_or_else(
        || "the embedded default".to_string(),
        |p| p.display().to_string(),
    );
    match source.load() {
        Ok(mut new) => {
            let old = Arc::clone(&tx.borrow());
            keep_restart_only(&old, &mut new);
            let changed = changed_sections(&old, &new);
            if changed.is_empty() {
                info!(config = %origin, "config reloaded; nothing changed");
            } else {
                info!(config = %origin, changed = ?changed, "config reloaded and applied");
            }
            tx.send_replace(Arc::new(new));
            count_reload(shared, true)
        }
        Err(e) => {
            error!(
                config = %origin, error = %e,
                "config reload rejected; the running config stays in effect"
            );
            count_reload(shared, false)
        }
    }
}

/// Counts a reload by its outcome and sets the last-reload gauge; returns whether it applied.
fn count_reload(shared: &Shared, applied: bool) -> bool {
    let outcome = if applied { "applied" } else { "rejected" };
    shared
        .metrics
        .config_reloads
        .get_or_create(&OutcomeLabels {
            outcome: outcome.to_string(),
        })
        .inc();
    shared
        .metrics
        .config_last_reload_successful
        .set(i64::from(applied));
    applied
}

/// Reloads on every SIGHUP until the process ends, telling systemd around each reload.
pub fn spawn_on_sighup(
    source: ConfigSource,
    tx: ConfigTx,
    shared: Arc<Shared>,
    service: Service,
) -> Option<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot handle SIGHUP; config reload is unavailable");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            info!("SIGHUP: reloading the config");
            service.reloading();
            // Reading a small file from the root filesystem; off the runtime anyway, since
            // nothing on the main paths may block on a filesystem.
            let (source2, tx2, shared2) = (source.clone(), Arc::clone(&tx), Arc::clone(&shared));
            let joined =
                tokio::task::spawn_blocking(move || reload(&source2, &tx2, &shared2)).await;
            if let Err(e) = joined {
                error!(error = %e, "config reload task failed");
            }
            service.reloaded(&shared.status());
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::metrics::Metrics;

    fn shared() -> Shared {
        Shared::new(Metrics::new(), SystemTime::now(), true)
    }

    #[test]
    fn good_file_is_applied_bad_file_keeps_the_old_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1\"\n[detect]\nio_stall_after = \"30s\"\n",
        )
        .expect("write");
        let source = ConfigSource::new(Some(path.clone()), false);
        let (tx, rx) = watch::channel(Arc::new(source.load().expect("load")));
        let shared = shared();

        std::fs::write(
            &path,
            "listen = \"127.0.0.1:2\"\n[detect]\nio_stall_after = \"7s\"\n",
        )
        .expect("write");
        assert!(reload(&source, &tx, &shared));
        let cur = Arc::clone(&rx.borrow());
        assert_eq!(cur.detect.io_stall_after, std::time::Duration::from_secs(7));
        // listen needs a restart: the running address stays.
        assert_eq!(cur.listen.to_string(), "127.0.0.1:1");

        std::fs::write(&path, "[detect]\nio_stall_after = \"soon\"\n").expect("write");
        assert!(!reload(&source, &tx, &shared));
        assert_eq!(
            rx.borrow().detect.io_stall_after,
            std::time::Duration::from_secs(7)
        );

        let text = shared.metrics.encode();
        assert!(
            text.contains("bindsto_config_reloads_total{outcome=\"applied\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("bindsto_config_reloads_total{outcome=\"rejected\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("bindsto_config_last_reload_successful 0"),
            "{text}"
        );
    }

    #[test]
    fn dry_run_override_survives_reloads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "dry_run = false\n").expect("write");
        let source = ConfigSource::new(Some(path), true);
        assert!(source.load().expect("load").dry_run);
    }
}
