//! Property tests of the health state machine, on its own (`health::Target`) and as the
//! engine folds kernel events, probe results, remounts and scans into per-mount verdicts.
//! The two properties (issue 7): no order of events makes a target look failed without a
//! failure signal, and every failure signal ends in `failed` unless recovery evidence follows.
//! Both are checked after every step against a model that knows only those two rules.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::{
    collections::BTreeSet,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bindsto::{
    config::Config,
    health::engine::Engine,
    health::{Kind, Signal, State, Target},
    metrics::Metrics,
    probes::dev::DevId,
    probes::events::{CorruptWhat, KernelEvent},
    publish::{shared::Shared, snapshot::StatusPublisher},
    scan::check::{CheckDone, CheckKind, CheckOutcome, Usage},
    topology::Sysfs,
};
use nix::errno::Errno;
use proptest::prelude::*;

// ---- health::Target ----

#[derive(Clone, Debug)]
enum TargetOp {
    Raise(Signal),
    /// Recovery evidence for a signal (a scan or probe that finds it gone).
    Clear(Signal),
    /// Time passes: the same signal refreshed later changes nothing.
    Later(u64),
}

fn signal() -> impl Strategy<Value = Signal> {
    prop::sample::select(Signal::ALL.to_vec())
}

fn target_op() -> impl Strategy<Value = TargetOp> {
    prop_oneof![
        signal().prop_map(TargetOp::Raise),
        signal().prop_map(TargetOp::Clear),
        (1u64..3600).prop_map(TargetOp::Later),
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    prop::sample::select(vec![Kind::Mount, Kind::Device, Kind::Subsystem])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn target_failed_iff_an_unrecovered_failure_signal(
        kind in kind(),
        ops in prop::collection::vec(target_op(), 0..64),
    ) {
        let mut now = SystemTime::UNIX_EPOCH;
        let mut t = Target::new(kind, "t", true, now);
        // Failure signals raised and not (yet) followed by their recovery evidence.
        let mut unrecovered: BTreeSet<Signal> = BTreeSet::new();
        let mut last = None;
        for op in &ops {
            match *op {
                TargetOp::Raise(s) => {
                    t.raise(s, format!("{s:?}"), now);
                    if kind.severity(s) == State::Failed {
                        unrecovered.insert(s);
                    }
                    last = Some(s);
                }
                TargetOp::Clear(s) => {
                    t.clear(s, now);
                    // Latched signals (XFS shutdown) have no recovery evidence but the
                    // target going away.
                    if !s.latched() {
                        unrecovered.remove(&s);
                    }
                }
                TargetOp::Later(secs) => now += Duration::from_secs(secs),
            }
            prop_assert_eq!(
                t.state() == State::Failed,
                !unrecovered.is_empty(),
                "after {:?} (last raised {:?}): state {:?}, unrecovered {:?}",
                op, last, t.state(), unrecovered
            );
        }
        // Without any failure signal at all, never failed.
        if !ops.iter().any(|o| matches!(o, TargetOp::Raise(s) if kind.severity(*s) == State::Failed)) {
            prop_assert_ne!(t.state(), State::Failed);
        }
    }
}

// ---- the engine: events, probes, remounts, scans ----

const ROOT: &str = "/nonexistent-bindsto-props";
const XFS_DEV: DevId = DevId::new(7, 0);
const OTHER_DEV: DevId = DevId::new(7, 1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Xfs,
    Nfs,
}

#[derive(Clone, Debug)]
enum EngineOp {
    /// xfs:xfs_force_shutdown on a device: a failure signal for the XFS mount when it is
    /// that mount's device.
    Shutdown { ours: bool },
    /// Events that only ask for a probe (I/O errors, corruption, log aborts).
    Noise(u8),
    /// A probe result for the current mount, or for the one before a remount (stale).
    Probe {
        which: Which,
        errno: Option<Errno>,
        full: bool,
        stale: bool,
    },
    /// Recovery evidence for any signal: the mount comes back with a new mount id.
    Remount(Which),
    /// The mount table re-read with nothing changed.
    Refresh,
    /// A scanner pass (time passing).
    Scan,
}

fn errno() -> impl Strategy<Value = Option<Errno>> {
    prop::sample::select(vec![
        None,
        Some(Errno::EIO),
        Some(Errno::ETIMEDOUT),
        Some(Errno::ESTALE),
        Some(Errno::EACCES),
        Some(Errno::ENOENT),
        Some(Errno::EINTR),
    ])
}

fn which() -> impl Strategy<Value = Which> {
    prop::sample::select(vec![Which::Xfs, Which::Nfs])
}

fn engine_op() -> impl Strategy<Value = EngineOp> {
    prop_oneof![
        any::<bool>().prop_map(|ours| EngineOp::Shutdown { ours }),
        any::<u8>().prop_map(EngineOp::Noise),
        (which(), errno(), any::<bool>(), prop::bool::weighted(0.2)).prop_map(
            |(which, errno, full, stale)| EngineOp::Probe {
                which,
                errno,
                full,
                stale
            }
        ),
        which().prop_map(EngineOp::Remount),
        Just(EngineOp::Refresh),
        Just(EngineOp::Scan),
    ]
}

struct Harness {
    engine: Engine,
    shared: Arc<Shared>,
    ids: [u32; 2],
    _checks: tokio::sync::mpsc::UnboundedReceiver<CheckDone>,
}

impl Harness {
    fn new(sysfs: &Path) -> Harness {
        let shared = Arc::new(Shared::new(Metrics::new(), SystemTime::now(), true));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let engine = Engine::new(
            Arc::new(Config::default()),
            Sysfs::new(sysfs),
            shared.metrics.clone(),
            Arc::new(StatusPublisher::new(Arc::clone(&shared))),
            tx,
        );
        let mut h = Harness {
            engine,
            shared,
            ids: [100, 200],
            _checks: rx,
        };
        h.refresh();
        h
    }

    fn mount_point(which: Which) -> String {
        match which {
            Which::Xfs => format!("{ROOT}/xfs"),
            Which::Nfs => format!("{ROOT}/nfs"),
        }
    }

    fn refresh(&mut self) {
        let [x, n] = self.ids;
        let text = format!(
            "{x} 1 {XFS_DEV} / {} rw,relatime - xfs /dev/loop0 rw,attr2\n\
             {n} 1 0:77 / {} rw,relatime - nfs4 srv:/export rw,vers=4.2\n",
            Self::mount_point(Which::Xfs),
            Self::mount_point(Which::Nfs),
        );
        self.engine.refresh_topology(&text, &|_| Some(true));
    }

    fn id(&self, which: Which) -> u32 {
        self.ids[which as usize]
    }

    fn state(&self, which: Which) -> State {
        self.engine.publish();
        let mp = Self::mount_point(which);
        let status = self.shared.status();
        let t = status
            .targets
            .iter()
            .find(|t| t.kind == "mount" && t.id == mp);
        match t {
            Some(t) => t.state,
            None => panic!("no target for {mp} in {:?}", status.targets),
        }
    }

    fn apply(&mut self, op: &EngineOp, model: &mut [bool; 2]) {
        match *op {
            EngineOp::Shutdown { ours } => {
                let dev = if ours { XFS_DEV } else { OTHER_DEV };
                self.engine.on_event(&KernelEvent::XfsShutdown {
                    dev,
                    ptag: 0x8,
                    flags: 2,
                    ts_ns: 1,
                });
                if ours {
                    model[Which::Xfs as usize] = true;
                }
            }
            EngineOp::Noise(n) => {
                let ev = match n % 4 {
                    0 => KernelEvent::XfsBufIoError {
                        dev: XFS_DEV,
                        error: -5,
                        ts_ns: 1,
                    },
                    1 => KernelEvent::XfsAilAbort {
                        dev: XFS_DEV,
                        ts_ns: 1,
                    },
                    2 => KernelEvent::XfsCorrupt {
                        dev: XFS_DEV,
                        what: CorruptWhat::Inode(u64::from(n)),
                        flags: 1,
                        ts_ns: 1,
                    },
                    _ => KernelEvent::BlockError {
                        dev: XFS_DEV,
                        error: -5,
                        sector: u64::from(n),
                        ts_ns: 1,
                    },
                };
                self.engine.on_event(&ev);
            }
            EngineOp::Probe {
                which,
                errno,
                full,
                stale,
            } => {
                let mount_id = if stale {
                    self.id(which) - 1
                } else {
                    self.id(which)
                };
                self.engine.on_check_done(CheckDone {
                    mount_point: Self::mount_point(which).into(),
                    mount_id,
                    kind: CheckKind::Mount(CheckOutcome {
                        statx: errno.map_or(Ok(()), Err),
                        usage: Some(Usage {
                            space_used_percent: if full { 99.5 } else { 10.0 },
                            inodes_used_percent: Some(1.0),
                        }),
                        elapsed: Duration::from_millis(1),
                    }),
                });
                if !stale {
                    let i = which as usize;
                    match (which, errno) {
                        // statx EIO on XFS is a shutdown; on NFS these are a stall.
                        (Which::Xfs, Some(Errno::EIO)) => model[i] = true,
                        (Which::Nfs, Some(Errno::EIO | Errno::ETIMEDOUT | Errno::ESTALE)) => {
                            model[i] = true;
                        }
                        // A probe that answers is the NFS stall's recovery evidence.
                        (Which::Nfs, None) => model[i] = false,
                        _ => {}
                    }
                }
            }
            EngineOp::Remount(which) => {
                self.ids[which as usize] += 2;
                self.refresh();
                model[which as usize] = false;
            }
            EngineOp::Refresh => self.refresh(),
            EngineOp::Scan => self.engine.scan(None),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn engine_failed_iff_an_unrecovered_failure_signal(
        ops in prop::collection::vec(engine_op(), 0..40),
    ) {
        // Probes the engine starts run on blocking threads: they need a runtime, and their
        // results (of paths that do not exist) are never delivered, so only `ops` decide.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _guard = rt.enter();
        let sysfs = tempfile::tempdir().expect("tempdir");
        let mut h = Harness::new(sysfs.path());
        let mut model = [false, false];
        for which in [Which::Xfs, Which::Nfs] {
            prop_assert_eq!(h.state(which), State::Healthy);
        }
        for (n, op) in ops.iter().enumerate() {
            h.apply(op, &mut model);
            for which in [Which::Xfs, Which::Nfs] {
                let failed = h.state(which) == State::Failed;
                prop_assert_eq!(
                    failed,
                    model[which as usize],
                    "{:?} after step {} {:?} of {:?}",
                    which, n, op, ops
                );
            }
        }
    }
}

/// The sequences the properties are about, spelled out once.
#[test]
fn shutdown_then_noise_stays_failed_until_remount() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let sysfs = tempfile::tempdir().expect("tempdir");
    let mut h = Harness::new(sysfs.path());
    let mut model = [false, false];
    for op in [
        EngineOp::Shutdown { ours: true },
        EngineOp::Scan,
        EngineOp::Probe {
            which: Which::Xfs,
            errno: None,
            full: false,
            stale: false,
        },
        EngineOp::Refresh,
    ] {
        h.apply(&op, &mut model);
        assert_eq!(h.state(Which::Xfs), State::Failed, "after {op:?}");
    }
    h.apply(&EngineOp::Remount(Which::Xfs), &mut model);
    assert_eq!(h.state(Which::Xfs), State::Healthy);
}
