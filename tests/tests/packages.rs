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
fn rpm_holds_binary_unit_config_and_scripts() {
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
    let configs = sh(&format!("rpm -qcp {r}"));
    assert_eq!(configs.trim(), "/etc/bindsto/config.toml");
    let scripts = sh(&format!("rpm -qp --scripts {r}"));
    assert!(
        scripts.contains("systemctl enable bindsto.service"),
        "{scripts}"
    );
    assert!(
        scripts.contains("install -d -m 0700 -o root -g root /var/lib/bindsto"),
        "the state directory: {scripts}"
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

    // rpm2cpio exits 1 on zstd payloads it fully extracted (rpm 4.18), so only cpio's status
    // counts; the comparisons below catch a short archive.
    let dir = tempfile::tempdir().expect("tempdir");
    let x = dir.path().display();
    run_cmd(
        "bash",
        &["-c", &format!("cd {x} && rpm2cpio {r} | cpio -idm --quiet")],
        T,
    )
    .expect("rpm2cpio | cpio");
    let unit = std::fs::read_to_string(dir.path().join("usr/lib/systemd/system/bindsto.service"))
        .expect("unit");
    assert_eq!(unit, repo_file("packaging/systemd/bindsto.service"));
    let config =
        std::fs::read_to_string(dir.path().join("etc/bindsto/config.toml")).expect("config");
    assert_eq!(config, repo_file("agent/src/config/default.toml"));
}

/// Runs `body` (bash) in a private mount namespace where `$ROOT` is an overlay of `/` (writes go
/// to a temp dir), `$PKGFILE` is the package's path there, and `inroot CMD...` runs a
/// command chrooted there. Returns the output; fails the test if the script fails.
fn in_scratch_root(pkg: &Path, body: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = format!(
        r#"
        s=$SCRATCH
        mkdir -p $s/upper $s/work $s/root
        mount -t overlay overlay -o lowerdir=/,upperdir=$s/upper,workdir=$s/work $s/root
        mount --bind /dev $s/root/dev
        mount -t proc proc $s/root/proc
        mkdir -p $s/root/tmp/pkg && cp "$PKG" $s/root/tmp/pkg/
        ROOT=$s/root
        PKGFILE=/tmp/pkg/$(basename "$PKG")
        inroot() {{ chroot $s/root "$@"; }}
        {body}
        echo DONE
        "#
    );
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
        &script,
    ])
    .env("SCRATCH", dir.path())
    .env("PKG", pkg);
    let out = run_with_timeout(cmd, T).expect("unshare");
    println!("{}", out.output);
    assert!(
        out.success() && out.output.contains("DONE"),
        "install in the scratch root failed:\n{}",
        out.output
    );
    assert_eq!(
        std::fs::read("/var/lib/dpkg/status").expect("host dpkg status"),
        host_db,
        "the host's dpkg database changed"
    );
    assert!(
        !Path::new("/usr/bin/bindsto").exists() || host_has_bindsto(),
        "the package leaked onto the host"
    );
    out.output
}

fn host_has_bindsto() -> bool {
    Command::new("dpkg")
        .args(["-s", "bindsto"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn line(output: &str, key: &str) -> String {
    output
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key} ")))
        .unwrap_or_else(|| panic!("no {key} line in:\n{output}"))
        .to_string()
}

/// `dpkg -i` (maintainer scripts included) into the scratch root, then `--purge`.
#[test]
fn deb_installs_enables_and_purges_in_a_scratch_root() {
    let _g = privileged();
    let out = in_scratch_root(
        &package("BINDSTO_DEB"),
        r#"
        inroot dpkg -i $PKGFILE
        echo "STATUS $(inroot dpkg-query -W -f '${Status}' bindsto)"
        echo "VERSION $(inroot /usr/bin/bindsto --version)"
        echo "STATEDIR $(inroot stat -c '%a %U' /var/lib/bindsto)"
        echo "ENABLED $(inroot readlink /etc/systemd/system/multi-user.target.wants/bindsto.service)"
        echo "CONFFILES $(inroot dpkg-query -W -f '${Conffiles}' bindsto | tr -s ' \n' ' ')"
        inroot bindsto config default >/dev/null
        inroot systemd-analyze verify --man=no bindsto.service 2>&1 | sed 's/^/VERIFY /'
        inroot dpkg --purge bindsto
        for f in /usr/bin/bindsto /etc/bindsto/config.toml /var/lib/bindsto \
                 /etc/systemd/system/multi-user.target.wants/bindsto.service; do
            if inroot test -e $f; then echo "LEFTOVER $f"; fi
        done
        "#,
    );
    assert_eq!(line(&out, "STATUS"), "install ok installed");
    assert!(line(&out, "VERSION").starts_with("bindsto "));
    assert_eq!(line(&out, "STATEDIR"), "700 root");
    assert!(line(&out, "ENABLED").ends_with("/bindsto.service"));
    assert!(line(&out, "CONFFILES").contains("/etc/bindsto/config.toml"));
    assert!(
        !out.contains("VERIFY "),
        "systemd-analyze verify of the installed unit complained:\n{out}"
    );
    assert!(!out.contains("LEFTOVER"), "{out}");
}

/// `rpm -i` (scriptlets included; `--nodeps` since the scratch root's rpm database knows no
/// glibc) into the scratch root, then `rpm -e`.
#[test]
fn rpm_installs_enables_and_erases_in_a_scratch_root() {
    let _g = privileged();
    let out = in_scratch_root(
        &package("BINDSTO_RPM"),
        r#"
        inroot rpm --initdb
        inroot rpm -i --nodeps $PKGFILE 2>&1 | grep -v 'use Alien\|know what you are doing' || true
        echo "QUERY $(inroot rpm -q bindsto)"
        echo "VERSION $(inroot /usr/bin/bindsto --version)"
        echo "STATEDIR $(inroot stat -c '%a %U' /var/lib/bindsto)"
        echo "ENABLED $(inroot readlink /etc/systemd/system/multi-user.target.wants/bindsto.service)"
        inroot rpm -e --nodeps bindsto 2>&1 | grep -v 'use Alien\|know what you are doing' || true
        for f in /usr/bin/bindsto /usr/lib/systemd/system/bindsto.service \
                 /etc/systemd/system/multi-user.target.wants/bindsto.service; do
            if inroot test -e $f; then echo "LEFTOVER $f"; fi
        done
        echo "AFTER $(inroot rpm -q bindsto || true)"
        "#,
    );
    assert_eq!(line(&out, "QUERY"), "bindsto-0.1.0-1.x86_64");
    assert!(line(&out, "VERSION").starts_with("bindsto "));
    assert_eq!(line(&out, "STATEDIR"), "700 root");
    assert!(line(&out, "ENABLED").ends_with("/bindsto.service"));
    assert!(!out.contains("LEFTOVER"), "{out}");
    assert!(line(&out, "AFTER").contains("not installed"), "{out}");
}
