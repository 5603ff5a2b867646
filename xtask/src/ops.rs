//! Operations tasks: verify the systemd unit, build the .deb and .rpm, check them.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use crate::{cargo, status, workspace_root};

pub const UNIT: &str = "packaging/systemd/bindsto.service";
/// Where the unit runs the agent from; replaced by a real executable for `verify`, which
/// checks that `ExecStart=` exists.
const UNIT_BINARY: &str = "/usr/bin/bindsto";

/// cargo subcommands that build the packages, pinned and installed by `cargo xtask setup`.
pub const CARGO_TOOLS: &[(&str, &str, &str)] = &[
    // (crate, version, binary)
    ("cargo-deb", "3.8.0", "cargo-deb"),
    ("cargo-generate-rpm", "0.21.1", "cargo-generate-rpm"),
    // `cargo xtask fuzz` (fuzz/): the version pinned in xtask/src/fuzz.rs.
    ("cargo-fuzz", crate::fuzz::CARGO_FUZZ_VERSION, "cargo-fuzz"),
];

/// Amazon Linux 2023 ships glibc 2.34: the binary in the .rpm must not need newer symbols.
const MAX_GLIBC: (u32, u32) = (2, 34);

/// `systemd-analyze verify` on the unit. Warnings count as failures: verify exits 0 on unknown
/// keys and misspelt sections, which is exactly what it should catch here.
pub fn verify_unit() -> Result<()> {
    let root = workspace_root();
    let text =
        std::fs::read_to_string(root.join(UNIT)).with_context(|| format!("reading {UNIT}"))?;
    ensure!(
        text.contains(&format!("ExecStart={UNIT_BINARY} ")),
        "{UNIT}: ExecStart= no longer runs {UNIT_BINARY}"
    );
    let built = root.join("target/debug/bindsto");
    let exe = if built.exists() {
        built
    } else {
        PathBuf::from("/bin/true")
    };
    let dir = root.join("target/xtask");
    std::fs::create_dir_all(&dir)?;
    let copy = dir.join("bindsto.service");
    std::fs::write(&copy, text.replace(UNIT_BINARY, &exe.display().to_string()))?;
    eprintln!("xtask: systemd-analyze verify {UNIT}");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        // Keeps verify from talking to a (possibly absent) running systemd.
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .context("running systemd-analyze (package systemd)")?;
    let mut msg = String::from_utf8_lossy(&out.stdout).into_owned();
    msg.push_str(&String::from_utf8_lossy(&out.stderr));
    ensure!(
        out.status.success() && msg.trim().is_empty(),
        "systemd-analyze verify {UNIT} ({}):\n{msg}",
        out.status
    );
    // The hardening must not regress: systemd's own exposure score (0 best, 10 worst).
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager", "--threshold=40"])
        .arg(&copy)
        .output()
        .context("running systemd-analyze security")?;
    let report = String::from_utf8_lossy(&out.stdout);
    let overall = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("no exposure level reported");
    eprintln!("xtask: {}", overall.trim_start_matches(['→', ' ']));
    ensure!(
        out.status.success(),
        "{UNIT}: exposure above 4.0 ({overall}):\n{report}"
    );
    Ok(())
}

pub struct Packages {
    pub deb: PathBuf,
    pub rpm: PathBuf,
}

/// Builds the release binary once, then both packages from it.
pub fn package() -> Result<Packages> {
    let root = workspace_root();
    verify_unit()?;
    status(cargo().args(["build", "--release", "--locked", "--package", "bindsto"]))?;
    let bin = root.join("target/release/bindsto");
    check_glibc(&bin)?;
    let out = root.join("target/packages");
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    std::fs::create_dir_all(&out)?;
    status(
        cargo()
            .args(["deb", "--package", "bindsto", "--no-build", "--output"])
            .arg(&out),
    )?;
    // generate-rpm resolves asset paths against the current directory (the crate's, where
    // Cargo.toml's paths are relative to), `target/release/` against --target-dir.
    status(
        cargo()
            .current_dir(root.join("agent"))
            .args(["generate-rpm", "--target-dir"])
            .arg(root.join("target"))
            .arg("--output")
            .arg(&out),
    )?;
    let find = |ext: &str| -> Result<PathBuf> {
        let mut found = std::fs::read_dir(&out)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == ext))
            .collect::<Vec<_>>();
        ensure!(
            found.len() == 1,
            "expected one .{ext} in {}, found {found:?}",
            out.display()
        );
        Ok(found.remove(0))
    };
    let p = Packages {
        deb: find("deb")?,
        rpm: find("rpm")?,
    };
    eprintln!("xtask: built {} and {}", p.deb.display(), p.rpm.display());
    Ok(p)
}

/// Runs the package checks (tests/tests/packages.rs) against freshly built packages.
pub fn test_packages(p: &Packages) -> Result<()> {
    status(
        cargo()
            .args([
                "test",
                "--package",
                "bindsto-tests",
                "--test",
                "packages",
                "--",
                "--test-threads=1",
                "--nocapture",
            ])
            .env("BINDSTO_DEB", &p.deb)
            .env("BINDSTO_RPM", &p.rpm),
    )
}

/// The newest `GLIBC_x.y` symbol version the binary needs.
fn check_glibc(bin: &Path) -> Result<()> {
    let out = Command::new("objdump")
        .arg("-T")
        .arg(bin)
        .output()
        .context("running objdump (package binutils)")?;
    ensure!(out.status.success(), "objdump -T {} failed", bin.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let newest = newest_glibc(&text);
    match newest {
        Some(v) if v > MAX_GLIBC => bail!(
            "{} needs GLIBC_{}.{}; Amazon Linux 2023 has {}.{}",
            bin.display(),
            v.0,
            v.1,
            MAX_GLIBC.0,
            MAX_GLIBC.1
        ),
        Some(v) => eprintln!("xtask: {} needs glibc >= {}.{}", bin.display(), v.0, v.1),
        None => eprintln!("xtask: {} links no glibc symbols", bin.display()),
    }
    Ok(())
}

fn newest_glibc(objdump: &str) -> Option<(u32, u32)> {
    objdump
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut it = v.split('.');
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_glibc_version_is_found() {
        let dump = "0000 DF *UND* 0000 (GLIBC_2.2.5) malloc\n\
                    0000 DF *UND* 0000 (GLIBC_2.34) __libc_start_main\n\
                    0000 DF *UND* 0000 GLIBC_2.28  statx\n";
        assert_eq!(newest_glibc(dump), Some((2, 34)));
        assert_eq!(newest_glibc("nothing"), None);
    }

    #[test]
    fn the_unit_passes_systemd_analyze_verify() {
        if Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_err()
        {
            panic!("systemd-analyze missing: run `cargo xtask setup`");
        }
        verify_unit().expect("verify");
    }
}
