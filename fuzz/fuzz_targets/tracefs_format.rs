//! The tracefs `format` file parser: any text gives a format or a FormatError.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match bindsto::probes::format::parse(text) {
            Ok(f) => {
                // Field lookups are what the loader does next.
                for name in ["dev", "error", "flags", "ptag", "sector", "__data_loc"] {
                    let _ = f.require(name);
                }
                drop(std::hint::black_box(f));
            }
            Err(e) => drop(std::hint::black_box(e.to_string())),
        }
    }
});
