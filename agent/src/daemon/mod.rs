//! The daemon: startup (load and attach the kernel programs, drop privileges, wire the
//! engine), the run loop, SIGHUP reload, sd_notify and the service's watchdog and status line.
//! Uses every stage up to `api`; only `cli` and `gameday` use it.

pub mod in_process;
pub mod mountinfo;
pub mod privileges;
pub mod reload;
pub mod rt;
pub mod run;
pub mod sandbox;
pub mod sdnotify;
pub mod service;
pub mod startup;
