//! Publish: what the agent tells the world. The `/status` snapshot, the Prometheus metrics and
//! their series, and the bounded tables with the counters of what did not fit.

pub mod limits;
pub mod metrics;
pub mod shared;
pub mod status;
pub mod target_metrics;
