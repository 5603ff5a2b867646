//! The .deb and .rpm built by `cargo xtask package`: their contents, and a real `dpkg -i`
//! (maintainer scripts included) into a scratch root, then a purge.
//!
//! The scratch root is an overlay of the host's `/` in a private mount namespace
//! (`unshare --mount`): dpkg and the scripts run chrooted into it, every write lands in the
//! overlay's upper directory, and all mounts vanish with the namespace even if the test dies.
//! The host's own dpkg database and /etc are never touched. No systemd runs there, so the
//! postinst enables the unit (a symlink) without starting it; the systemd guest of `vm-tests`
//! starts it for real.
//!
//! Not part of the plain test run (`test = false` in Cargo.toml): `cargo xtask package` builds
//! the packages and runs this with BINDSTO_DEB and BINDSTO_RPM set.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use bindsto_tests::{privileged, run_cmd, run_with_timeout};

const T: Duration = Duration::from_secs(120);

fn package(env: &str) -> PathBuf {
    let p = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{env} is not set: run `cargo xtask package`, which builds the packages first")
    });
    assert!(p.is_file(), "{env}={} does not exist", p.display());
    p
}

fn repo_file(rel: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn sh(script: &str) -> String {
    run_cmd("bash", &["-euo", "pipefail", "-c", script], T).expect("command")
}

#[test]
fn deb_holds_binary_unit_config_and_scripts() {
    let deb = package("BINDSTO_DEB");
    let d = deb.display();
    let list = run_cmd("dpkg-deb", &["-c", &deb.to_string_lossy()], T).expect("dpkg-deb -c");
    println!("{list}");
    let has = |path: &str, mode: &str| {
        list.lines()
            .any(|l| l.starts_with(mode) && l.ends_with(path))
    };
    assert!(has("./usr/bin/bindsto", "-rwxr-xr-x"), "{list}");
    assert!(has("./etc/bindsto/config.toml", "-rw-r--r--"), "{list}");
    assert!(
        has("/systemd/system/bindsto.service", "-rw-r--r--"),
        "no unit in {list}"
    );
    assert!(
        has("./usr/share/doc/bindsto/alerts.yml", "-rw-r--r--"),
        "{list}"
    );

    let control = sh(&format!("dpkg-deb -f {d} Package Depends"));
    assert!(control.contains("Package: bindsto"), "{control}");
    assert!(
        control.contains("libc6"),
        "Depends must name glibc: {control}"
    );
    let conffiles = sh(&format!(
        "dpkg-deb --ctrl-tarfile {d} | tar -xO ./conffiles"
    ));
    assert!(
        conffiles.lines().any(|l| l == "/etc/bindsto/config.toml"),
        "{conffiles}"
    );
    let postinst = sh(&format!("dpkg-deb --ctrl-tarfile {d} | tar -xO ./postinst"));
    assert!(postinst.contains("/var/lib/bindsto"), "{postinst}");
    assert!(postinst.contains("deb-systemd-helper"), "{postinst}");

    // Byte-for-byte the repository's unit and default config.
    let unit = sh(&format!(
        "dpkg-deb --fsys-tarfile {d} | tar -xO --wildcards '*/systemd/system/bindsto.service'"
    ));
    assert_eq!(unit, repo_file("packaging/systemd/bindsto.service"));
    let config = sh(&format!(
        "dpkg-deb --fsys-tarfile {d} | tar -xO ./etc/bindsto/config.toml"
    ));
    assert_eq!(config, repo_file("agent/src/config/default.toml"));
}

#[test]
fn rpm_holds_binary_unit_config_state_dir_and_scripts() {
    let rpm = package("BINDSTO_RPM");
    let r = rpm.display();
    let list = sh(&format!("rpm -qlvp {r}"));
    println!("{list}");
    let has = |path: &str, mode: &str| {
        list.lines()
            .any(|l| l.starts_with(mode) && l.ends_with(path))
    };
    assert!(has(" /usr/bin/bindsto", "-rwxr-xr-x"), "{list}");
    assert!(has(" /etc/bindsto/config.toml", "-rw-r--r--"), "{list}");
    assert!(
        has(" /usr/lib/systemd/system/bindsto.service", "-rw-r--r--"),
        "{list}"
    );
    assert!(has(" /var/lib/bindsto", "drwx------"), "{list}");
    let configs = sh(&format!("rpm -qcp {r}"));
    assert_eq!(configs.trim(), "/etc/bindsto/config.toml");
    let scripts = sh(&format!("rpm -qp --scripts {r}"));
    assert!(
        scripts.contains("systemctl enable bindsto.service"),
        "{scripts}"
    );
    assert!(
        scripts.contains("disable --now bindsto.service"),
        "{scripts}"
    );
    // %config(noreplace): an edited config survives upgrades.
    let flags = sh(&format!(
        "rpm -qp --qf '[%{{FILENAMES}} %{{FILEFLAGS:fflags}}\\n]' {r}"
    ));
    assert!(
        flags.contains("/etc/bindsto/config.toml cn"),
        "config must be %config(noreplace): {flags}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let x = dir.path().display();
    sh(&format!("cd {x} && rpm2cpio {r} | cpio -idm --quiet"));
    let unit = std::fs::read_to_string(dir.path().join("usr/lib/systemd/system/bindsto.service"))
        .expect("unit");
    assert_eq!(unit, repo_file("packaging/systemd/bindsto.service"));
    let version = run_cmd(&format!("{x}/usr/bin/bindsto"), &["--version"], T).expect("bindsto");
    assert!(version.starts_with("bindsto "), "{version}");
}

/// `dpkg -i` into an overlay of `/`, chrooted, with the maintainer scripts; then `--purge`.
#[test]
fn deb_installs_enables_and_purges_in_a_scratch_root() {
    let _g = privileged();
    let deb = package("BINDSTO_DEB");
    let dir = tempfile::tempdir().expect("tempdir");
    let script = r#"
        s=$SCRATCH
        mkdir -p $s/upper $s/work $s/root
        mount -t overlay overlay -o lowerdir=/,upperdir=$s/upper,workdir=$s/work $s/root
        mount --bind /dev $s/root/dev
        mount -t proc proc $s/root/proc
        mkdir -p $s/root/tmp/pkg && cp "$DEB" $s/root/tmp/pkg/bindsto.deb
        in() { chroot $s/root "$@"; }
        in dpkg -i /tmp/pkg/bindsto.deb
        echo "STATUS $(in dpkg-query -W -f '${Status}' bindsto)"
        echo "VERSION $(in /usr/bin/bindsto --version)"
        echo "STATEDIR $(in stat -c '%a %U' /var/lib/bindsto)"
        echo "ENABLED $(in readlink /etc/systemd/system/multi-user.target.wants/bindsto.service)"
        echo "CONFFILES $(in dpkg-query -W -f '${Conffiles}' bindsto | tr -s ' \n' ' ')"
        in bindsto config default >/dev/null
        in systemd-analyze verify --man=no bindsto.service 2>&1 | sed 's/^/VERIFY /'
        in dpkg --purge bindsto
        echo "PURGED $(in dpkg-query -W -f '${Status}' bindsto 2>&1 || true)"
        for f in /usr/bin/bindsto /etc/bindsto/config.toml /var/lib/bindsto \
                 /etc/systemd/system/multi-user.target.wants/bindsto.service; do
            if in test -e $f; then echo "LEFTOVER $f"; fi
        done
        echo DONE
    "#;
    let host_db = std::fs::read("/var/lib/dpkg/status").expect("host dpkg status");
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "bash",
        "-euo",
        "pipefail",
        "-c",
        script,
    ])
    .env("SCRATCH", dir.path())
    .env("DEB", &deb);
    let out = run_with_timeout(cmd, T).expect("unshare");
    println!("{}", out.output);
    assert!(
        out.success(),
        "install in the scratch root failed:\n{}",
        out.output
    );
    let line = |key: &str| -> String {
        out.output
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} line in:\n{}", out.output))
            .to_string()
    };
    assert_eq!(line("STATUS"), "install ok installed");
    assert!(line("VERSION").starts_with("bindsto "));
    assert_eq!(line("STATEDIR"), "700 root");
    assert!(line("ENABLED").ends_with("/bindsto.service"));
    assert!(line("CONFFILES").contains("/etc/bindsto/config.toml"));
    assert!(
        !out.output.contains("VERIFY "),
        "systemd-analyze verify of the installed unit complained:\n{}",
        out.output
    );
    assert!(!out.output.contains("LEFTOVER"), "{}", out.output);
    assert!(out.output.contains("DONE"));
    assert_eq!(
        std::fs::read("/var/lib/dpkg/status").expect("host dpkg status"),
        host_db,
        "the host's dpkg database changed"
    );
}
