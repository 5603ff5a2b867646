//! Remediation: turns a failed critical target into a host taken out of service.
//!
//! The remedy task follows the engine's published status. When a critical target fails it opens
//! an incident; once the failure has lasted `hold_down` it runs the ladder (`actions`, in order)
//! exactly once for that incident, within the safety rails: `dry_run`, `max_per_hour`, the
//! `fleet` gate before any out-of-service step (the shared budget in DynamoDB, or the Auto
//! Scaling breaker without one), and a persisted history so a restart neither repeats nor
//! forgets a run. Recovery before the ladder runs cancels the incident.
//!
//! The ladder never touches the failed filesystem: it talks to HTTP endpoints, D-Bus and AWS,
//! and writes only under the state directory on the root filesystem (under a timeout).
//!
//! `task` (the run loop) drives the `ladder` (the incident state machine), which runs `steps`,
//! keeps `incident`s in the `store`, asks the `fleet` gate, and `record`s each change (the
//! store on disk, the `report`, `/healthz`'s hold, the metrics);
//! `identity` says who this host is; `evidence` has each incident's bundle captured (every
//! incident opens one, with or without actions). May use `config`, `topology`, `health`,
//! `publish`, `evidence` and `api::client`; `publish` shows the report as JSON and knows none
//! of these types.

mod dmi;
mod evidence;
pub mod fleet;
mod hold;
pub mod identity;
pub mod incident;
pub mod ladder;
mod record;
pub mod report;
pub mod steps;
pub mod store;
pub mod task;

pub use report::RemediationReport;
pub use task::{Remedy, RemedyError};
