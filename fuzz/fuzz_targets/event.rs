//! The ring-buffer event decoder: any bytes give an event or a DecodeError.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match bindsto::probes::events::KernelEvent::decode(data) {
        Ok(ev) => {
            // The engine formats these for logs and reasons.
            let _ = std::hint::black_box(ev.dev().to_string());
            if let bindsto::probes::events::KernelEvent::XfsShutdown { flags, .. } = ev {
                let _ = std::hint::black_box(bindsto::probes::events::shutdown_flags(flags));
            }
            if let bindsto::probes::events::KernelEvent::BlockError { error, .. }
            | bindsto::probes::events::KernelEvent::XfsBufIoError { error, .. } = ev
            {
                let _ = std::hint::black_box(bindsto::probes::events::errno_name(error));
            }
        }
        Err(e) => drop(std::hint::black_box(e.to_string())),
    }
});
