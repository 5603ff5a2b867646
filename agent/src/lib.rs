//! bindsto: a kernel-level storage watchdog for container hosts.
//!
//! The folders are the data flow (see `docs/architecture.md`): `probes` load the kernel
//! programs and decode what they send; `topology` maps devices to mounts; `scan` reads what is
//! in flight and checks mounts off-thread; `health` turns evidence into verdicts; `publish`
//! turns the engine's view into `/status` and the per-target series; `metrics` is the registry
//! the stages count into; `remedy` takes the host out of service when critical
//! storage fails; `api` is HTTP; `daemon` wires it together; `cli` and `gameday` are commands.

pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod evidence;
pub mod gameday;
pub mod health;
pub mod metrics;
pub mod probes;
pub mod publish;
pub mod remedy;
pub mod scan;
pub mod topology;
