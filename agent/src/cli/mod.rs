//! The command line's own work beyond the daemon: `doctor`, the `status` table, the manual
//! pages and log setup.

pub mod doctor;
pub mod help;
pub mod logging;
pub mod status_table;
