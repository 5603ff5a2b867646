//! The config parser: any text gives a config or a ConfigError, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        // The error's Display (line/column excerpts) is part of the parser's output too.
        match bindsto::config::Config::from_toml(text, "fuzz.toml") {
            Ok(cfg) => drop(std::hint::black_box(cfg)),
            Err(e) => drop(std::hint::black_box(e.to_string())),
        }
    }
});
