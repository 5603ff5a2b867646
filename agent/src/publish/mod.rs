//! Publish: what the agent tells the world. The `/status` snapshot ([`snapshot`], [`status`]),
//! the Prometheus metrics and the lifetime of their series ([`metrics`], [`series`],
//! [`target_metrics`]), the fixed table limits ([`limits`]) and [`shared::Shared`], where the
//! HTTP side reads it all.
//!
//! May depend on `config`, `probes`, `topology`, `scan` and `health`.

pub mod limits;
pub mod metrics;
pub mod series;
pub mod shared;
pub mod snapshot;
pub mod status;
pub mod target_metrics;
