use std::os::unix::fs::OpenOptionsExt;

use super::*;
use crate::config::Action;
use crate::remedy::incident::{FailedTarget, Phase, Step, StepOutcome};

fn incident(id: &str, started: Option<SystemTime>, phase: Phase) -> Incident {
    Incident {
        id: id.into(),
        phase,
        dry_run: false,
        opened_at: SystemTime::now(),
        ladder_started_at: started,
        closed_at: None,
        hostname: "h".into(),
        targets: vec![FailedTarget {
            kind: "mount".into(),
            id: "/x".into(),
            reasons: vec!["xfs_shutdown".into()],
        }],
        steps: vec![Step {
            action: Action::EcsDrain,
            outcome: StepOutcome::Done,
            detail: "d".into(),
            attempts: 1,
            started_at: SystemTime::now(),
            finished_at: Some(SystemTime::now()),
            retry_at: None,
        }],
        evidence: None,
    }
}

#[tokio::test]
async fn round_trips_through_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, loaded) = Store::open(dir.path()).unwrap();
    assert_eq!(loaded, HistoryLoad::Fresh);
    s.incidents
        .push(incident("a", Some(SystemTime::now()), Phase::Done));
    s.save().await.unwrap();
    let (s2, loaded) = Store::open(dir.path()).unwrap();
    assert_eq!(loaded, HistoryLoad::Read(1));
    assert_eq!(s2.incidents[0].id, "a");
    assert_eq!(s2.incidents[0].steps[0].outcome, StepOutcome::Done);
    // Times survive at the precision written (RFC 3339 with fractions).
    let a = s.incidents[0]
        .opened_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    let b = s2.incidents[0]
        .opened_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    assert!(a.abs_diff(b) < Duration::from_millis(1));
}

#[test]
fn a_corrupt_file_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(FILE), b"{\"incidents\": [ {\"id\": ").unwrap();
    let (s, loaded) = Store::open(dir.path()).unwrap();
    assert!(s.incidents.is_empty());
    let HistoryLoad::MovedAside(aside, why) = loaded else {
        panic!("{loaded:?}")
    };
    assert!(aside.exists(), "{aside:?}");
    assert!(!dir.path().join(FILE).exists());
    assert!(why.contains("EOF"), "{why}");
}

/// A hanging filesystem cannot be made without root (the privileged `never_blocks` test
/// hangs the real one); a FIFO in place of the temporary file blocks `open(2)` for real
/// until a reader comes.
#[tokio::test]
async fn a_hanging_write_is_not_repeated_and_fails_the_next_saves_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = Store::open(dir.path()).unwrap();
    s.write_timeout = Duration::from_millis(200);
    let tmp = dir.path().join("incidents.json.tmp");
    nix::unistd::mkfifo(&tmp, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    s.incidents.push(incident("a", None, Phase::Pending));
    let t = std::time::Instant::now();
    let e = s.save().await.unwrap_err();
    assert!(matches!(e, StoreError::Timeout { .. }), "{e}");
    assert_eq!(e.outcome(), "timeout");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // While it hangs: no wait, no second writer (it would block on the FIFO as well).
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let e = s.save().await.unwrap_err();
        assert!(matches!(e, StoreError::Hung { .. }), "{e}");
        assert!(e.to_string().contains("still hanging"), "{e}");
        assert!(t.elapsed() < Duration::from_millis(50), "{:?}", t.elapsed());
    }
    // Released (a reader opens the FIFO): the hung write returns (a FIFO cannot be synced,
    // so it fails), and with the FIFO gone the next save writes the file.
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&tmp)
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while s.writing.load(Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the write never returned"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(reader);
    std::fs::remove_file(&tmp).unwrap();
    s.save().await.unwrap();
    let (s2, loaded) = Store::open(dir.path()).unwrap();
    assert_eq!(loaded, HistoryLoad::Read(1));
    assert_eq!(s2.incidents[0].id, "a");
}

#[test]
fn rate_window_counts_the_last_hour() {
    let now = SystemTime::now();
    let s = Store {
        path: PathBuf::new(),
        writing: Arc::default(),
        write_timeout: WRITE_TIMEOUT,
        incidents: vec![
            incident(
                "old",
                Some(now - Duration::from_secs(7200)),
                Phase::Resolved,
            ),
            incident("a", Some(now - Duration::from_secs(1800)), Phase::Resolved),
            incident("b", Some(now - Duration::from_secs(600)), Phase::Resolved),
            incident("never", None, Phase::Cancelled),
        ],
    };
    assert_eq!(s.runs_within_hour(now), 2);
    assert_eq!(s.next_run_allowed(now, 3), None);
    assert_eq!(
        s.next_run_allowed(now, 2),
        Some(now - Duration::from_secs(1800) + Duration::from_secs(3600))
    );
}
