//! bindsto: a kernel-level storage watchdog for container hosts.
//!
//! Data flow (see DESIGN.md): `probes` load the kernel programs and hand them tracefs field
//! offsets; `events` decodes what they send; `topology` maps devices to mounts; `scanner`
//! ages what is in flight; `confirm` probes mounts off-thread; `health` turns signals into
//! verdicts; `engine` owns them; `remedy` takes the host out of service when critical storage
//! fails; `api` serves them; `run` wires it all together.

pub mod api;
pub mod config;
pub mod confirm;
pub mod doctor;
pub mod engine;
pub mod events;
pub mod file_safety;
pub mod gameday;
pub mod health;
pub mod httpd;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod pathcheck;
pub mod privileges;
pub mod probes;
pub mod reload;
pub mod remedy;
pub mod rt;
pub mod run;
pub mod scanner;
pub mod sdnotify;
pub mod service;
pub mod status;
pub mod status_table;
pub mod target_metrics;
pub mod topology;
