//! Builds the kernel programs in `agent-ebpf` for the BPF target and leaves the object in
//! `$OUT_DIR/bindsto` (and the stack iterator in `$OUT_DIR/stacks`), where
//! `src/probes/loader.rs` (and `src/evidence/stacks.rs`) embed them.
//!
//! The BPF target needs `core` built from source. The machines this project builds on have no
//! nightly rustup toolchain but Debian's rustc-web (1.96, with rust-web-src) under /usr, so the
//! child build runs that toolchain with `RUSTC_BOOTSTRAP=1`, set here so nobody has to export it.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let skip = matches!(env::var("AYA_BUILD_SKIP").as_deref(), Ok("1" | "true"));
    if skip {
        // Tools that only need the userspace types (clippy on a machine without bpf-linker):
        // empty objects (the programs and the stack iterator); loading either fails with a
        // clear error at run time.
        for name in ["bindsto", "stacks"] {
            let obj = out.join(name);
            if !obj.exists() {
                fs::write(obj, [])?;
            }
        }
        return Ok(());
    }
    let ebpf_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?)
        .join("..")
        .join("agent-ebpf");
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    // SAFETY: build scripts are single-threaded; the variable is inherited by the child cargo
    // that aya-build spawns, which is the only reason to set it.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    if let Some(home) = env::var_os("HOME") {
        // bpf-linker is installed by `cargo xtask setup` into cargo's bin directory.
        let cargo_bin = PathBuf::from(home).join(".cargo/bin");
        let path = env::var_os("PATH").unwrap_or_default();
        let mut paths: Vec<PathBuf> = env::split_paths(&path).collect();
        if !paths.contains(&cargo_bin) {
            paths.push(cargo_bin);
            // SAFETY: as above.
            unsafe { env::set_var("PATH", env::join_paths(paths)?) };
        }
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("/usr"),
    )
}
