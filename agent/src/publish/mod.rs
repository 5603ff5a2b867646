//! Publish: what the agent tells the world. The `/status` snapshot built from the engine's
//! view ([`snapshot`]: the engine's `health::view::Publisher`, and [`status`]), the per-target
//! series ([`target_metrics`]) and [`shared::Shared`], where the HTTP side reads it all with
//! the metrics registry.
//!
//! May depend on `config`, `metrics`, `probes`, `topology`, `scan` and `health` (its state
//! types and view); nothing below it depends on this stage.

pub mod shared;
pub mod snapshot;
pub mod status;
pub mod target_metrics;
