//! Whether a watched path exists, asked from the engine's loop without ever blocking it.
//!
//! A watch below a mount point (`/var/lib/docker/volumes` on `/var/lib/docker`) needs a
//! `stat` of the path, which hangs when the filesystem under it hangs. The check runs on its
//! own thread; the loop waits for it only briefly (a healthy filesystem answers in
//! microseconds) and otherwise goes on with the last answer it had. A path whose check is
//! still hanging gets no second thread until the first returns: at most one per path.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

/// How long the loop waits for a check. Scans run every `scan_interval` (1 s by default,
/// 250 ms in tests); waiting longer would delay them.
pub const WAIT: Duration = Duration::from_millis(100);

type Check = Arc<dyn Fn(&Path) -> bool + Send + Sync>;

#[derive(Default)]
struct Entry {
    /// A check of this path is running (possibly hung).
    busy: bool,
    /// The last answer a check gave.
    last: Option<bool>,
}

#[derive(Clone)]
pub struct PathChecker {
    entries: Arc<Mutex<HashMap<PathBuf, Entry>>>,
    check: Check,
    wait: Duration,
}

impl Default for PathChecker {
    fn default() -> Self {
        Self::with_check(WAIT, |p| std::fs::symlink_metadata(p).is_ok())
    }
}

impl PathChecker {
    /// A checker running `check` (instead of `symlink_metadata`) and waiting `wait` for it.
    pub fn with_check(
        wait: Duration,
        check: impl Fn(&Path) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self {
            entries: Arc::default(),
            check: Arc::new(check),
            wait,
        }
    }

    /// `Some(exists)` when a check answered now, else the last answer (`None` if there never
    /// was one): the path's filesystem is slow or hanging.
    pub fn exists(&self, path: &Path) -> Option<bool> {
        let last = {
            let Ok(mut m) = self.entries.lock() else {
                return None;
            };
            let e = m.entry(path.to_path_buf()).or_default();
            if e.busy {
                return e.last;
            }
            e.busy = true;
            e.last
        };
        let (tx, rx) = mpsc::channel();
        let p = path.to_path_buf();
        let entries = Arc::clone(&self.entries);
        let check = Arc::clone(&self.check);
        let spawned = std::thread::Builder::new()
            .name("pathcheck".into())
            .spawn(move || {
                let r = check(&p);
                if let Ok(mut m) = entries.lock() {
                    let e = m.entry(p).or_default();
                    e.busy = false;
                    e.last = Some(r);
                }
                let _ = tx.send(r);
            });
        if spawned.is_err() {
            if let Ok(mut m) = self.entries.lock()
                && let Some(e) = m.get_mut(path)
            {
                e.busy = false;
            }
            return last;
        }
        rx.recv_timeout(self.wait).ok().or(last)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicBool, AtomicUsize, Ordering},
        time::Instant,
    };

    use super::*;

    #[test]
    fn real_paths() {
        let dir = tempfile::tempdir().unwrap();
        let c = PathChecker::default();
        assert_eq!(c.exists(dir.path()), Some(true));
        assert_eq!(c.exists(&dir.path().join("missing")), Some(false));
    }

    /// A hanging filesystem cannot be made without root; the privileged `never_blocks` test
    /// does it for real. Here a check that blocks until released stands in for one.
    #[test]
    fn a_hanging_check_costs_the_caller_one_short_wait_and_one_thread() {
        let release = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicUsize::new(0));
        let (r, s) = (Arc::clone(&release), Arc::clone(&started));
        let c = PathChecker::with_check(Duration::from_millis(50), move |_| {
            s.fetch_add(1, Ordering::SeqCst);
            while !r.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            true
        });
        let p = Path::new("/hung/watch");
        let t = Instant::now();
        assert_eq!(c.exists(p), None, "no answer yet");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        // While hanging: no wait at all, no second thread.
        for _ in 0..10 {
            let t = Instant::now();
            assert_eq!(c.exists(p), None);
            assert!(t.elapsed() < Duration::from_millis(20), "{:?}", t.elapsed());
        }
        assert_eq!(started.load(Ordering::SeqCst), 1);
        release.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.exists(p) != Some(true) {
            assert!(Instant::now() < deadline, "the answer never arrived");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
