//! bindsto: a kernel-level storage watchdog for container hosts.
//!
//! Data flow (see DESIGN.md): `probes` load the kernel programs and hand them tracefs field
//! offsets; `events` decodes what they send; `topology` maps devices to mounts; `scanner` ages
//! what is in flight; `health` turns signals into verdicts; `api` serves them.

pub mod config;
pub mod probes;
pub mod topology;
