//! The `stop-units` action: systemd over the system D-Bus.
//!
//! StopUnit(unit, "replace"), then the unit's ActiveState is followed until it is `inactive` or
//! `failed`; a unit still running at the deadline gets KillUnit(SIGKILL). With masking, the unit
//! is runtime-masked (until reboot) before it is stopped, so nothing that starts docker can start
//! it again in between.

use std::time::Duration;

use tokio::time::Instant;
use zbus::zvariant::OwnedObjectPath;

use super::StepResult;
use crate::config::StopUnits;

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1",
    gen_blocking = false
)]
pub trait Manager {
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn mask_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;
    fn reload(&self) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1",
    gen_blocking = false
)]
pub trait Unit {
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;
}

/// How often the unit's state is read while waiting for it to stop.
const POLL: Duration = Duration::from_millis(200);
/// After SIGKILL, how long the unit gets to reach `inactive`/`failed`.
const AFTER_KILL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("D-Bus: {0}")]
    Bus(#[from] zbus::Error),
    #[error("{unit} is still {state} after StopUnit, SIGKILL and {waited:?}")]
    StillRunning {
        unit: String,
        state: String,
        waited: Duration,
    },
}

/// What happened to one unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    pub unit: String,
    /// Its ActiveState at the end (`inactive`, `failed`), or `not-found`.
    pub state: String,
    pub killed: bool,
    pub masked: bool,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.unit, self.state)?;
        if self.killed {
            f.write_str(" (SIGKILL)")?;
        }
        if self.masked {
            f.write_str(" (masked)")?;
        }
        Ok(())
    }
}

pub struct Systemd {
    conn: zbus::Connection,
}

impl Systemd {
    /// The system bus (`DBUS_SYSTEM_BUS_ADDRESS` or /run/dbus/system_bus_socket).
    pub async fn system() -> Result<Self, SystemdError> {
        Ok(Self::with_connection(zbus::Connection::system().await?))
    }

    /// Any connection to a peer that serves systemd's interfaces (tests use a private one).
    pub fn with_connection(conn: zbus::Connection) -> Self {
        Systemd { conn }
    }

    /// Stops `unit` and waits up to `timeout` for it to be down, escalating to SIGKILL.
    pub async fn stop(
        &self,
        unit: &str,
        mask: bool,
        timeout: Duration,
    ) -> Result<Stopped, SystemdError> {
        let manager = ManagerProxy::new(&self.conn).await?;
        // LoadUnit (unlike GetUnit) answers for units that are not loaded yet, with LoadState
        // telling whether the unit exists at all.
        let path = manager.load_unit(unit).await?;
        let proxy = UnitProxy::builder(&self.conn)
            .path(path)?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?;
        let mut masked = false;
        if mask {
            manager.mask_unit_files(&[unit], true, true).await?;
            manager.reload().await?;
            masked = true;
        }
        if proxy.load_state().await? == "not-found" && is_down(&proxy.active_state().await?) {
            return Ok(Stopped {
                unit: unit.into(),
                state: "not-found".into(),
                killed: false,
                masked,
            });
        }
        manager.stop_unit(unit, "replace").await?;
        let deadline = Instant::now() + timeout;
        if let Some(state) = wait_down(&proxy, deadline).await? {
            return Ok(Stopped {
                unit: unit.into(),
                state,
                killed: false,
                masked,
            });
        }
        tracing::warn!(unit, ?timeout, "unit did not stop in time; sending SIGKILL");
        manager.kill_unit(unit, "all", libc::SIGKILL).await?;
        match wait_down(&proxy, Instant::now() + AFTER_KILL).await? {
            Some(state) => Ok(Stopped {
                unit: unit.into(),
                state,
                killed: true,
                masked,
            }),
            None => Err(SystemdError::StillRunning {
                unit: unit.into(),
                state: proxy.active_state().await?,
                waited: timeout + AFTER_KILL,
            }),
        }
    }
}

/// The `stop-units` step: every configured unit stopped (and masked, if configured) in turn.
pub async fn stop_units(s: &StopUnits, dry: bool) -> StepResult {
    if dry {
        let mask = if s.mask_units {
            " and mask (runtime)"
        } else {
            ""
        };
        return StepResult::dry_run(format!("would stop{mask} {}", s.units.join(", ")));
    }
    let budget = s.timeout + Duration::from_secs(15);
    let work = async {
        let systemd = Systemd::system().await?;
        let mut done = Vec::new();
        let mut failed = Vec::new();
        for unit in &s.units {
            match systemd.stop(unit, s.mask_units, s.timeout).await {
                Ok(r) => done.push(r.to_string()),
                Err(e) => failed.push(format!("{unit}: {e}")),
            }
        }
        Ok::<_, SystemdError>((done, failed))
    };
    match tokio::time::timeout(budget * s.units.len().max(1) as u32, work).await {
        Ok(Ok((done, failed))) if failed.is_empty() => StepResult::done(done.join("; ")),
        Ok(Ok((done, failed))) => StepResult::failed(
            failed
                .into_iter()
                .chain(done)
                .collect::<Vec<_>>()
                .join("; "),
        ),
        Ok(Err(e)) => StepResult::failed(e.to_string()),
        Err(_) => StepResult::failed(format!("timed out after {budget:?} per unit")),
    }
}

fn is_down(state: &str) -> bool {
    state == "inactive" || state == "failed"
}

async fn wait_down(
    proxy: &UnitProxy<'_>,
    deadline: Instant,
) -> Result<Option<String>, SystemdError> {
    loop {
        let state = proxy.active_state().await?;
        if is_down(&state) {
            return Ok(Some(state));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests;
