//! ebs-detach-ext4: [`super::ebs_detach`] with ext4 on the dm device instead of XFS. ext4
//! has no `xfs_shutdown`: with the default `errors=continue` the mount must still fail, through
//! whichever comes first of `fs_shutdown` (the journal aborted), `read_only` (the superblock
//! went `ro`), `not_writable` (the write canary, every 2 s: ext4 refuses writes although
//! mountinfo still says `rw`, as 6.12 does after a journal abort) or `io_errors` escalated
//! because the device completes nothing (`detect.io_dead_after`).

use super::*;

/// The mkfs of the scenario: no discard (a TCG guest would zero the whole device).
const MKFS: &str = "mkfs.ext4 -F -q -E nodiscard";

/// What fails the mount: (signal, whether its detail must say the device is dead).
const FAILING: &[(&str, bool)] = &[
    ("fs_shutdown", false),
    ("read_only", false),
    ("not_writable", false),
    ("io_errors", true),
];

/// The critical watch, with the canary the default config puts on /var/lib/docker (30 s
/// there; 2 s here, so the cell stays short).
const WATCH_DATA_CANARY: &str = "[[watch]]\npath = \"/data\"\ncritical = true\ncanary = \"2s\"\n";

/// The reason of `signal` on target `t`, if present.
fn reason<'a>(t: &'a Value, signal: &str) -> Option<&'a str> {
    t["reasons"]
        .as_array()?
        .iter()
        .find(|r| r["signal"] == signal)
        .map(|r| r["detail"].as_str().unwrap_or_default())
}

fn signals(t: &Value) -> String {
    let names: Vec<&str> = t["reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["signal"].as_str())
        .collect();
    names.join("+")
}

/// The failing signals present on a failed /data, with their details.
fn failing(t: &Value) -> Vec<String> {
    FAILING
        .iter()
        .filter_map(|(signal, dead)| {
            let d = reason(t, signal)?;
            (!dead || d.contains("none completed successfully")).then(|| format!("{signal} ({d})"))
        })
        .collect()
}

pub fn ebs_detach_ext4() -> Result<String> {
    let mut dm = DmXfs::with_fs("ext4", Some(MKFS))?;
    let dev = dm.dm_name()?;
    let line = sh("grep ' /data ' /proc/self/mountinfo")?;
    println!("vmtest: /data: {}", line.trim());
    let agent = Agent::start(WATCH_DATA_CANARY)?;
    dm.start_writer()?;
    std::thread::sleep(Duration::from_secs(2));
    wait_for(
        "healthy ext4 /data before the fault",
        Duration::from_secs(10),
        |s| {
            mount_target(s, "/data")
                .filter(|t| t["state"] == "healthy" && t["fstype"] == "ext4")
                .map(|_| String::new())
        },
    )?;
    // The console timeline: kernel uptime (dmesg) at the fault, and the agent's log after it.
    let uptime = fs::read_to_string("/proc/uptime").unwrap_or_default();
    let log_from = fs::metadata("/tmp/agent.log").map_or(0, |m| m.len());
    let t0 = Instant::now();
    sh(&format!(
        "dmsetup load ebs --table '0 {} error' && dmsetup resume ebs",
        dm.sectors
    ))?;
    // Seen at the first poll that finds /data failed: what failed it first.
    let first = wait_for(
        "/data failed by fs_shutdown, read_only, not_writable or dead-device io_errors",
        Duration::from_secs(90),
        |s| {
            let t = mount_target(s, "/data").filter(|t| t["state"] == "failed")?;
            let f = failing(t);
            (!f.is_empty()).then(|| format!("{} [all: {}]", f.join(", "), signals(t)))
        },
    );
    let failed = t0.elapsed();
    timeline(&uptime, log_from);
    let (_, first) = first?;
    let (_, errs) = wait_for("io_errors on the dm device", Duration::from_secs(30), |s| {
        let t = device_target(s, &dev)?;
        has_reason(t, "io_errors").then(|| format!("{dev} {}", t["state"]))
    })?;
    let errs_at = t0.elapsed();
    // For the record: what /data shows once the device has been dead for io_dead_after (10 s).
    let settle = Duration::from_secs(12).saturating_sub(t0.elapsed());
    std::thread::sleep(settle);
    let later = status()
        .ok()
        .and_then(|s| mount_target(&s, "/data").map(signals))
        .unwrap_or_default();
    drop(agent);
    Ok(format!(
        "latency_ms={} (mount failed by {first}; io_errors on {errs} at {} ms; \
         at {} ms: {later})",
        ms(failed),
        ms(errs_at),
        ms(t0.elapsed())
    ))
}

/// For the console log, pass or fail: what the kernel and the agent said after the fault, and
/// the mount table then.
fn timeline(uptime: &str, log_from: u64) {
    println!(
        "vmtest: fault at uptime {}s",
        uptime.split_whitespace().next().unwrap_or("?")
    );
    let agent_after = format!("tail -c +{} /tmp/agent.log | head -16", log_from + 1);
    for (what, cmd) in [
        (
            "dmesg",
            "dmesg | grep -i 'error\\|abort\\|read-only' | grep -v 'writing superblock' | head -6",
        ),
        ("agent", agent_after.as_str()),
        ("mountinfo", "grep ' /data ' /proc/self/mountinfo"),
    ] {
        for l in sh(cmd).unwrap_or_default().lines() {
            println!("vmtest: {what} | {l}");
        }
    }
}
