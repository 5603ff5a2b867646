//! The BindsTo= signals against the fixture: `not_mounted`, `must_be_mounted`, `read_only`.

use super::*;

fn reasons(t: &TargetStatus) -> Vec<Signal> {
    t.reasons.iter().map(|r| r.signal).collect()
}

fn with_watch(f: &mut Fixture, watch: Watch) {
    let cfg = Config {
        watch: vec![watch],
        ..Config::default()
    };
    f.engine.set_config(Arc::new(cfg));
}

#[test]
fn a_critical_mount_point_that_goes_away_fails_until_mounted_again() {
    let mut f = fixture();
    assert!(status(&f).healthy);
    // /mnt/data unmounted: the watch now lies on /, which is no substitute.
    let without = "22 1 254:0 / / rw - ext4 /dev/vda rw\n";
    f.engine.refresh_topology(without, &|_| Some(true));
    let s = status(&f);
    assert!(!s.healthy);
    let t = target(&s, "mount", "/mnt/data");
    assert_eq!((t.state, t.device.as_deref()), (State::Failed, None));
    assert_eq!(reasons(t), vec![Signal::NotMounted]);
    assert!(
        t.reasons[0].detail.contains("unmounted while watched"),
        "{t:?}"
    );
    assert!(!target(&s, "mount", "/").critical);
    // Held while unmounted.
    f.engine.refresh_topology(without, &|_| Some(true));
    assert!(!status(&f).healthy);
    // Mounted again: a fresh, healthy target.
    f.engine.refresh_topology(&mountinfo(44), &|_| Some(true));
    let s = status(&f);
    assert!(s.healthy, "{:?}", s.targets);
    let t = target(&s, "mount", "/mnt/data");
    assert_eq!(t.device.as_deref(), Some("7:0"));
    assert!(t.reasons.is_empty());
    assert_eq!(s.targets.iter().filter(|t| t.id == "/mnt/data").count(), 1);
}

#[test]
fn must_be_mounted_fails_from_the_start_and_require_mountpoint_waits() {
    let mut f = fixture();
    let watch = |must: bool| Watch {
        path: "/srv/docker".into(),
        critical: true,
        require_mountpoint: !must,
        must_be_mounted: must,
        read_only_ok: false,
        canary: Duration::ZERO,
    };
    with_watch(&mut f, watch(false));
    f.engine.refresh_topology(&mountinfo(30), &|_| Some(true));
    let s = status(&f);
    assert!(s.healthy);
    assert!(!s.targets.iter().any(|t| t.id == "/srv/docker"));
    with_watch(&mut f, watch(true));
    f.engine.refresh_topology(&mountinfo(30), &|_| Some(true));
    let s = status(&f);
    assert!(!s.healthy);
    let t = target(&s, "mount", "/srv/docker");
    assert_eq!(reasons(t), vec![Signal::NotMounted]);
    assert!(t.reasons[0].detail.contains("must_be_mounted"), "{t:?}");
    assert!(s.watches[0].not_mounted.is_some());
}

#[test]
fn a_read_only_critical_mount_fails_unless_read_only_ok() {
    let mut f = fixture();
    // Read-only per mount only, as the unit's ProtectSystem=strict shows every mount: writable.
    let sandboxed = mountinfo(30).replace("/mnt/data rw", "/mnt/data ro");
    f.engine.refresh_topology(&sandboxed, &|_| Some(true));
    assert!(status(&f).healthy);
    // remount,ro: both the mount and the superblock.
    let ro = sandboxed.replace("/dev/loop0 rw", "/dev/loop0 ro");
    f.engine.refresh_topology(&ro, &|_| Some(true));
    let s = status(&f);
    assert!(!s.healthy);
    assert_eq!(
        reasons(target(&s, "mount", "/mnt/data")),
        vec![Signal::ReadOnly]
    );
    // Back to rw (same mount id): cleared.
    f.engine.refresh_topology(&mountinfo(30), &|_| Some(true));
    assert!(status(&f).healthy);
    // Read-only underneath (superblock) counts too.
    let sb_ro = mountinfo(30).replace("/dev/loop0 rw", "/dev/loop0 ro");
    f.engine.refresh_topology(&sb_ro, &|_| Some(true));
    assert!(!status(&f).healthy);
    with_watch(
        &mut f,
        Watch {
            path: "/mnt/data".into(),
            critical: true,
            require_mountpoint: false,
            must_be_mounted: false,
            read_only_ok: true,
            canary: Duration::ZERO,
        },
    );
    f.engine.refresh_topology(&ro, &|_| Some(true));
    let s = status(&f);
    assert!(s.healthy);
    assert_eq!(target(&s, "mount", "/mnt/data").state, State::Healthy);
}
