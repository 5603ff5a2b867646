//! bindsto: a kernel-level storage watchdog for container hosts.
//!
//! Data flow (see DESIGN.md): `probes` load the kernel programs and hand them tracefs field
//! offsets; `events` decodes what they send; `topology` maps devices to mounts; `scanner`
//! ages what is in flight; `confirm` probes mounts off-thread; `health` turns signals into
//! verdicts; `engine` owns them; `api` serves them; `run` wires it all together.

pub mod api;
pub mod config;
pub mod confirm;
pub mod doctor;
pub mod engine;
pub mod events;
pub mod gameday;
pub mod health;
pub mod metrics;
pub mod probes;
pub mod run;
pub mod scanner;
pub mod status;
pub mod topology;
