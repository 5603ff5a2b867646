//! The /proc/self/mountinfo parser: any text gives entries or a TopologyError.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match bindsto::topology::parse_mountinfo(text) {
            Ok(mounts) => {
                // What the engine does with them next: resolve paths to their mount.
                for m in &mounts {
                    let _ = bindsto::topology::mount_for_path(&mounts, &m.mount_point);
                }
                drop(std::hint::black_box(mounts));
            }
            Err(e) => drop(std::hint::black_box(e.to_string())),
        }
    }
});
