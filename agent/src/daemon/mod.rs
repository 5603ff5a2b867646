//! The daemon: startup (load, attach, privilege drop), the run loop, SIGHUP reload, sd_notify
//! and the service's watchdog and status line.

pub mod privileges;
pub mod reload;
pub mod rt;
pub mod run;
pub mod sdnotify;
pub mod service;
