//! The systemd guest (systemd-ecs-stop, unmount-critical): a debootstrap bookworm root with
//! real systemd and dbus, the project's `.deb` installed with `dpkg -i` (binary, unit, default
//! config, maintainer scripts), a dummy `ecs.service`, and the agent with `stop-units` (mask)
//! as its ladder. The scenarios differ only in the fault done to the critical watch ([`Fault`]).
use super::*;
use bindsto_vm_tests::scenario::DEB_IN_INITRAMFS;

const ECS_UNIT: &str = "[Unit]\nDescription=dummy ECS agent\n\n[Service]\n\
    ExecStart=/bin/sleep infinity\n\n[Install]\nWantedBy=multi-user.target\n";
// Straight to the console: through the journal (journal+console) the end line could still
// be queued in journald when the runner powers the guest off.
const VMTEST_UNIT: &str = "[Unit]\nDescription=vm-tests scenario runner\n\
    After=bindsto.service ecs.service data.mount\n\n[Service]\nType=simple\n\
    ExecStart=/usr/local/bin/vm-guest\nStandardOutput=tty\nStandardError=tty\n\
    TTYPath=/dev/console\n\n[Install]\nWantedBy=multi-user.target\n";
const CONFIG: &str = "listen = \"127.0.0.1:9842\"\ndry_run = false\n\n[detect]\n\
    scan_interval = \"250ms\"\n\n[[watch]]\npath = \"/data\"\ncritical = true\n\n\
    [remediate]\nactions = [\"stop-units\"]\nhold_down = \"0s\"\n\n\
    [remediate.stop_units]\nunits = [\"ecs.service\"]\nmask_units = true\n";
/// What the package installs (agent/Cargo.toml's [package.metadata.deb]).
const PKG_BIN: &str = "/usr/bin/bindsto";
const PKG_UNIT: &str = "/usr/lib/systemd/system/bindsto.service";
const PKG_CONFIG: &str = "/etc/bindsto/config.toml";
/// The .deb inside the new root while dpkg installs it.
const DEB_IN_ROOT: &str = "/var/cache/vmtest-bindsto.deb";
/// md5 of the binary inside the .deb, for stage 2.
const DEB_MD5: &str = "/var/cache/vmtest-bindsto.md5";

/// `dpkg -i` of the project's package into the root at `r`, as an AMI bake would: chrooted,
/// with no systemd running there, so the postinst enables bindsto.service (the symlink in
/// multi-user.target.wants) and leaves starting it to the boot.
fn install_package(r: &str) -> Result<()> {
    fs::copy(DEB_IN_INITRAMFS, format!("{r}{DEB_IN_ROOT}"))
        .with_context(|| format!("{DEB_IN_INITRAMFS} (the host's cargo xtask package)"))?;
    sh(&format!("mount -t proc proc {r}/proc"))?;
    let t = Instant::now();
    // PID 1 has no PATH, and dpkg refuses to run without one. The package carries no
    // md5sums: the binary's md5 is taken from the .deb itself for stage 2 to compare with
    // what runs.
    let r_dpkg = sh(&format!(
        "chroot {r} /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin /bin/sh -ec '\
         dpkg-deb --fsys-tarfile {DEB_IN_ROOT} | tar -xOf - .{PKG_BIN} | md5sum > {DEB_MD5}; \
         dpkg -i {DEB_IN_ROOT}' 2>&1"
    ));
    let _ = sh(&format!("umount {r}/proc"));
    let _ = fs::remove_file(format!("{r}{DEB_IN_ROOT}"));
    let out = r_dpkg.context("dpkg -i bindsto.deb in the guest root")?;
    for l in out.lines() {
        println!("vmtest: dpkg | {l}");
    }
    println!("vmtest: dpkg -i took {:.1}s", t.elapsed().as_secs_f64());
    for f in [PKG_BIN, PKG_UNIT, PKG_CONFIG] {
        if !std::path::Path::new(&format!("{r}{f}")).is_file() {
            bail!("the package did not install {f}");
        }
    }
    Ok(())
}

/// Stage 1 (PID 1 in the initramfs): install the package, the dummy ECS unit and the test
/// config into the root filesystem on /dev/vda, then become systemd there.
pub fn switch_root() -> Result<()> {
    let r = "/newroot";
    fs::create_dir_all(r)?;
    sh(&format!("mount -t ext4 /dev/vda {r}"))?;
    let put = |path: &str, text: &str| -> Result<()> {
        let p = format!("{r}{path}");
        if let Some(d) = std::path::Path::new(&p).parent() {
            fs::create_dir_all(d)?;
        }
        fs::write(&p, text).with_context(|| p.clone())
    };
    install_package(r)?;
    fs::create_dir_all(format!("{r}/usr/local/bin"))?;
    fs::copy("/init", format!("{r}/usr/local/bin/vm-guest"))?;
    // Where ecs-init installs it on the ECS AMIs. In /etc a runtime mask (in /run) would
    // not take effect: /etc/systemd/system has precedence over /run/systemd/system.
    put("/usr/lib/systemd/system/ecs.service", ECS_UNIT)?;
    put("/etc/systemd/system/vmtest.service", VMTEST_UNIT)?;
    // The test config over the package's conffile, as cloud-init would write it.
    put(PKG_CONFIG, CONFIG)?;
    // The minbase root has no udev, so no device units: mount the watched XFS here (it
    // moves along with the new root) and mask the gettys that wait for a tty device.
    fs::create_dir_all(format!("{r}/data"))?;
    sh(&format!("mount -t xfs /dev/vdb {r}/data"))?;
    for u in ["serial-getty@ttyS0.service", "getty@tty1.service"] {
        let link = format!("{r}/etc/systemd/system/{u}");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/null", &link)?;
    }
    let wants = format!("{r}/etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants)?;
    // bindsto.service is enabled by the package's postinst (asserted in stage 2).
    for (u, dir) in [
        ("ecs.service", "/usr/lib/systemd/system"),
        ("vmtest.service", "/etc/systemd/system"),
    ] {
        let link = format!("{wants}/{u}");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("{dir}/{u}"), &link)?;
    }
    for m in [
        "/sys/fs/cgroup",
        "/sys/fs/bpf",
        "/sys/kernel/debug",
        "/sys/kernel/tracing",
        "/run",
        "/tmp",
        "/sys",
        "/proc",
    ] {
        let _ = sh(&format!("umount {m}"));
    }
    println!("vmtest: switching root to systemd");
    let _ = std::io::stdout().flush();
    use std::os::unix::process::CommandExt;
    // exec keeps PID 1. /dev stays mounted for switch_root's console.
    let e = Command::new("/bin/busybox")
        .args(["switch_root", r, "/lib/systemd/systemd"])
        .exec();
    Err(anyhow!("exec switch_root: {e}"))
}

fn systemctl(args: &str) -> String {
    Command::new("systemctl")
        .args(args.split_whitespace())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn wait_unit(unit: &str, states: &[&str], limit: Duration) -> Result<Duration> {
    let t = Instant::now();
    let mut last = String::new();
    while t.elapsed() < limit {
        last = systemctl(&format!("is-active {unit}"));
        if states.contains(&last.as_str()) {
            return Ok(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "{unit} is {last:?}, not {states:?}, after {}s",
        limit.as_secs()
    )
}

fn status_line(unit: &str) -> String {
    let out = systemctl(&format!("status {unit} --no-pager --lines=0"));
    out.lines()
        .filter(|l| l.trim_start().starts_with("Active:") || l.trim_start().starts_with("Status:"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The running service is the package's: dpkg has it installed, systemd loaded the
/// package's unit, enabled by its postinst, and the main process runs the package's binary
/// (same md5 as dpkg recorded), not some other copy.
fn package_in_use() -> Result<String> {
    let status = sh("dpkg-query -W -f='${Status} ${Version}' bindsto")?;
    let version = status
        .strip_prefix("install ok installed ")
        .with_context(|| format!("dpkg-query says bindsto is {status:?}, not installed"))?
        .trim()
        .to_string();
    let conffiles = sh("dpkg-query -W -f='${Conffiles}' bindsto")?;
    if !conffiles.contains(PKG_CONFIG) {
        bail!("{PKG_CONFIG} is not a conffile of the package: {conffiles:?}");
    }
    let fragment = systemctl("show -p FragmentPath --value bindsto.service");
    // Merged /usr: systemd may name it /lib/systemd/system/bindsto.service.
    if fs::canonicalize(&fragment).ok() != fs::canonicalize(PKG_UNIT).ok() {
        bail!("bindsto.service is loaded from {fragment:?}, not the package's {PKG_UNIT}");
    }
    let enabled = systemctl("is-enabled bindsto.service");
    if enabled != "enabled" {
        bail!("bindsto.service is {enabled:?} after dpkg -i, not enabled by the postinst");
    }
    let pid = systemctl("show -p MainPID --value bindsto.service");
    let exe = fs::read_link(format!("/proc/{pid}/exe"))
        .with_context(|| format!("bindsto.service MainPID {pid:?}"))?;
    if exe != std::path::Path::new(PKG_BIN) {
        bail!("bindsto.service runs {}, not {PKG_BIN}", exe.display());
    }
    let owner = sh(&format!("dpkg -S {PKG_BIN}"))?;
    if owner.trim() != format!("bindsto: {PKG_BIN}") {
        bail!("dpkg -S {PKG_BIN}: {owner:?}");
    }
    let running = sh(&format!("md5sum /proc/{pid}/exe"))?;
    let running = running.split_whitespace().next().unwrap_or_default();
    let sums = fs::read_to_string(DEB_MD5).with_context(|| DEB_MD5.to_string())?;
    let packaged = sums.split_whitespace().next().unwrap_or_default();
    if running != packaged {
        bail!("running {PKG_BIN} has md5 {running}, the package's is {packaged}");
    }
    Ok(format!(
        "package bindsto {version} installed by dpkg -i, unit {PKG_UNIT} {enabled}, \
         pid {pid} runs {PKG_BIN} (md5 as packaged)"
    ))
}

/// What a systemd scenario does to the critical watch /data once all is healthy.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// `xfs_io -x -c shutdown`: the mount fails with `xfs_shutdown`.
    XfsShutdown,
    /// `umount -l`: the watch fails with `not_mounted`.
    Unmount,
}

impl Fault {
    pub fn of(scenario: &str) -> Option<Self> {
        match scenario {
            "systemd-ecs-stop" => Some(Self::XfsShutdown),
            "unmount-critical" => Some(Self::Unmount),
            _ => None,
        }
    }

    fn inject(self) -> Result<String> {
        match self {
            Self::XfsShutdown => sh("xfs_io -x -c shutdown /data"),
            Self::Unmount => sh("umount -l /data"),
        }
    }

    fn what(self) -> &'static str {
        match self {
            Self::XfsShutdown => "xfs_io shutdown",
            Self::Unmount => "umount -l /data",
        }
    }

    /// The signal /status must show on /data afterwards.
    fn signal(self) -> &'static str {
        match self {
            Self::XfsShutdown => "xfs_shutdown",
            Self::Unmount => "not_mounted",
        }
    }
}

/// Stage 2 (vmtest.service under systemd).
pub fn inside(scenario: &str) -> Result<String> {
    let fault =
        Fault::of(scenario).with_context(|| format!("{scenario:?} is not a systemd scenario"))?;
    let r = ecs_stop(fault);
    if r.is_err()
        && let Ok(j) = sh("journalctl -u bindsto.service --no-pager -n 60 2>&1")
    {
        for l in j.lines() {
            println!("vmtest: journal | {l}");
        }
    }
    r
}

fn ecs_stop(fault: Fault) -> Result<String> {
    wait_unit("bindsto.service", &["active"], Duration::from_secs(120))?;
    let package = package_in_use()?;
    wait_unit("ecs.service", &["active"], Duration::from_secs(60))?;
    wait_for("/data healthy in /status", Duration::from_secs(120), |s| {
        (s["healthy"] == true && mount_target(s, "/data").is_some_and(|t| t["state"] == "healthy"))
            .then(String::new)
    })?;
    let before = status_line("bindsto.service");
    if !before.contains("active (running)") {
        bail!("systemctl status bindsto before the fault: {before}");
    }
    let t0 = Instant::now();
    fault.inject()?;
    wait_unit(
        "ecs.service",
        &["inactive", "failed"],
        Duration::from_secs(60),
    )?;
    let stopped = t0.elapsed();
    let enabled = systemctl("is-enabled ecs.service");
    if !enabled.starts_with("masked") {
        bail!("ecs.service stopped but is-enabled says {enabled:?}, not masked");
    }
    // Masked: starting it again (as a docker restart would) must fail, and it stays down.
    if sh("systemctl start ecs.service").is_ok() {
        bail!("systemctl start ecs.service succeeded although it is masked");
    }
    std::thread::sleep(Duration::from_secs(2));
    let state = systemctl("is-active ecs.service");
    if state == "active" {
        bail!("ecs.service came back");
    }
    let s = status()?;
    let signal = fault.signal();
    let data =
        mount_target(&s, "/data").filter(|t| t["state"] == "failed" && has_reason(t, signal));
    let Some(data) = data.filter(|_| s["healthy"] == false) else {
        bail!(
            "/status does not show /data failed with {signal}: {}",
            s["targets"]
        );
    };
    let detail = data["reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["signal"] == signal)
        .and_then(|r| r["detail"].as_str())
        .unwrap_or_default()
        .to_string();
    let after = status_line("bindsto.service");
    if !after.contains("active (running)") {
        bail!("systemctl status bindsto after the fault: {after}");
    }
    Ok(format!(
        "latency_ms={} ({} -> /data {signal} ({detail}) -> ecs.service {state} and {enabled} \
         over D-Bus; bindsto before: {before}; after: {after}; {package})",
        ms(stopped),
        fault.what()
    ))
}
