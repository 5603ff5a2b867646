//! Mounts and block devices.
