//! tracefs format files.
