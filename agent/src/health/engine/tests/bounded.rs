//! The bounded tables against the fixture: more mounts than the limit, and the counters.

use super::*;

fn table_full(f: &Fixture, table: &str) -> u64 {
    let text = f.engine.metrics.encode();
    let needle = format!("bindsto_table_full_total{{table=\"{table}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(needle.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {needle} in\n{text}"))
}

#[test]
fn more_mounts_than_the_limit_keeps_the_watched_ones_and_counts_the_rest() {
    let mut f = fixture();
    let mut text = mountinfo(30);
    let extra = limits::MOUNTS_MAX + 50;
    for i in 0..extra {
        text.push_str(&format!(
            "{} 22 0:{} / /a/m{i:05} rw - xfs /dev/fake{i} rw\n",
            1000 + i,
            100 + i
        ));
    }
    f.engine.refresh_topology(&text, &|_| Some(true));
    let s = status(&f);
    let mounts = s.targets.iter().filter(|t| t.kind == "mount").count();
    assert_eq!(mounts, limits::MOUNTS_MAX);
    assert!(target(&s, "mount", "/mnt/data").critical, "the watch stays");
    // 3 fixture mounts + `extra`, MOUNTS_MAX kept.
    let left_out = (extra + 3 - limits::MOUNTS_MAX) as u64;
    assert_eq!(table_full(&f, "mounts"), left_out);
    // Mounts gone: the table and the per-target series shrink back.
    f.engine.refresh_topology(&mountinfo(30), &|_| Some(true));
    let s = status(&f);
    assert_eq!(s.targets.iter().filter(|t| t.kind == "mount").count(), 3);
    let text = f.engine.metrics.encode();
    assert!(!text.contains("/a/m0"), "series of gone mounts removed");
    assert_eq!(table_full(&f, "mounts"), left_out, "nothing more left out");
}

#[tokio::test]
async fn error_series_of_unknown_disks_are_bounded_and_removed_when_they_go() {
    let mut f = fixture();
    let n = limits::DEVICE_SERIES_MAX + 20;
    for minor in 0..n as u32 {
        f.engine.on_event(&KernelEvent::BlockError {
            dev: DevId::new(240, minor),
            error: -5,
            sector: 0,
            ts_ns: 0,
        });
    }
    // The observed disk always gets its series, even with the table full.
    f.engine.on_event(&KernelEvent::BlockError {
        dev: LOOP0,
        error: -5,
        sector: 0,
        ts_ns: 0,
    });
    let text = f.engine.metrics.encode();
    let series = |t: &str| t.matches("bindsto_block_io_errors_total{").count();
    assert_eq!(series(&text), limits::DEVICE_SERIES_MAX + 1, "{text}");
    assert!(text.contains("bindsto_block_io_errors_total{device=\"loop0\"} 1"));
    assert_eq!(table_full(&f, "device_series"), 20);
    // None of the 240:* disks exists in sysfs: their series go at the next refresh.
    f.engine.refresh_topology(&mountinfo(30), &|_| Some(true));
    let text = f.engine.metrics.encode();
    assert_eq!(series(&text), 1, "{text}");
    assert!(f.engine.series_devices.is_empty());
    // The observed disk's series outlives its mount while the disk exists...
    let without_data = "22 1 254:0 / / rw - ext4 /dev/vda rw\n";
    f.engine.refresh_topology(without_data, &|_| Some(true));
    assert_eq!(series(&f.engine.metrics.encode()), 1);
    // ...but not with another disk attached under its name (a new diskseq)...
    let dir = f.sysfs_root.join("devices/virtual/block/loop0");
    fs::write(dir.join("diskseq"), "8\n").unwrap();
    f.engine.refresh_topology(without_data, &|_| Some(true));
    assert_eq!(series(&f.engine.metrics.encode()), 0);
    f.engine.on_event(&KernelEvent::BlockError {
        dev: LOOP0,
        error: -5,
        sector: 0,
        ts_ns: 0,
    });
    f.engine.refresh_topology(without_data, &|_| Some(true));
    assert_eq!(series(&f.engine.metrics.encode()), 1);
    // ...and goes with it (a detached loop device keeps its directory with size 0).
    fs::write(dir.join("size"), "0\n").unwrap();
    f.engine.refresh_topology(without_data, &|_| Some(true));
    assert_eq!(series(&f.engine.metrics.encode()), 0);
    assert!(f.engine.series_devices.is_empty());
}

#[test]
fn the_limit_counters_start_at_zero() {
    let f = fixture();
    for t in BoundedTable::ALL {
        assert_eq!(table_full(&f, t.name()), 0);
    }
}
