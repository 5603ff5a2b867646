//! Whether a device whose requests fail still completes any successfully.
//!
//! sysfs counts every completed request, failed ones too, and the probes report each failed
//! one with its kernel time. Both happen in the same completion, the error first, so over an
//! interval ending at a sysfs read the successes are the completions counted minus the errors
//! reported with a time before that read. Errors can reach user space a little after the read
//! (ring buffer), so an interval is settled one scan later; the open one may only confirm a
//! device dead (no success so far), never clear it. Errors the probes lost count as successes:
//! the check can miss a dead device, never fail a live one.

use std::time::Duration;

/// Errors in one interval between scans: how many and the kernel times of the first and last.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Bucket {
    errors: u64,
    first_ns: u64,
    last_ns: u64,
}

impl Bucket {
    fn add(&mut self, ts_ns: u64) {
        if self.errors == 0 {
            self.first_ns = ts_ns;
        }
        self.errors += 1;
        self.first_ns = self.first_ns.min(ts_ns);
        self.last_ns = self.last_ns.max(ts_ns);
    }
}

/// Errors since the last success seen: the kernel times of the first and the latest.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Failing {
    first_ns: u64,
    last_ns: u64,
}

#[derive(Debug, Default)]
pub(super) struct Liveness {
    /// Read time of the last scan: errors before it belong to `closing`, after it to `open`.
    boundary_ns: Option<u64>,
    closing: Bucket,
    open: Bucket,
    /// Completion counters at the last scan and the one before.
    completed: Option<u64>,
    completed_before: Option<u64>,
    failing: Option<Failing>,
    dead: bool,
}

impl Liveness {
    /// A failed request reported by the probes, with its kernel time.
    pub(super) fn on_error(&mut self, ts_ns: u64) {
        match self.boundary_ns {
            Some(b) if ts_ns < b => self.closing.add(ts_ns),
            _ => self.open.add(ts_ns),
        }
    }

    /// One scan's sysfs read; returns how long the device has failed every request (with
    /// requests still failing at the end) once that is at least `dead_after`.
    pub(super) fn on_scan(
        &mut self,
        read_ns: u64,
        completed: u64,
        dead_after: Duration,
    ) -> Option<Duration> {
        // Settle the interval that ended at the previous read: its errors have all arrived.
        if let (Some(c1), Some(c0)) = (self.completed, self.completed_before) {
            let done = c1.wrapping_sub(c0);
            self.settle(done, self.closing);
        }
        // The interval that ends now: errors reported so far (on the first scan, all of them).
        self.closing = self.open;
        self.open = Bucket::default();
        self.boundary_ns = Some(read_ns);
        self.completed_before = self.completed;
        self.completed = Some(completed);
        // The open interval may confirm, never refute: no completion beyond its errors yet.
        let c = self.closing;
        let tentative = match (self.completed, self.completed_before) {
            (Some(c1), Some(c0)) if c.errors > 0 => c1.wrapping_sub(c0) <= c.errors,
            _ => false,
        };
        let candidate = match (self.failing, tentative) {
            (Some(f), true) => Some(Failing {
                first_ns: f.first_ns.min(c.first_ns),
                last_ns: f.last_ns.max(c.last_ns),
            }),
            (None, true) => Some(Failing {
                first_ns: c.first_ns,
                last_ns: c.last_ns,
            }),
            (f, false) => f,
        };
        let span = |f: Failing| Duration::from_nanos(f.last_ns.saturating_sub(f.first_ns));
        if candidate.is_some_and(|f| span(f) >= dead_after) {
            self.dead = true;
        }
        self.dead
            .then(|| candidate.or(self.failing).map_or(dead_after, span))
    }

    /// A settled interval: `done` completions, `b` its errors.
    fn settle(&mut self, done: u64, b: Bucket) {
        if done > b.errors {
            // Something succeeded: the device is alive.
            self.failing = None;
            self.dead = false;
        } else if b.errors > 0 {
            let f = self.failing.get_or_insert(Failing {
                first_ns: b.first_ns,
                last_ns: b.last_ns,
            });
            f.first_ns = f.first_ns.min(b.first_ns);
            f.last_ns = f.last_ns.max(b.last_ns);
        }
    }

    /// The errors aged out (`io_errors` cleared): start over.
    pub(super) fn forget(&mut self) {
        self.failing = None;
        self.dead = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const DEAD: Duration = Duration::from_secs(10);

    /// A device scanned every second for `secs`: `fail` failed and `ok` good completions per
    /// second, the errors reported a little after they happen (as through the ring buffer,
    /// `lag_ns` late). Returns the first second at which it was found dead.
    fn run(secs: u64, fail: u64, ok: u64, lag_ns: u64) -> Option<u64> {
        let mut l = Liveness::default();
        let mut completed = 1000;
        let mut pending: Vec<u64> = Vec::new();
        for t in 1..=secs {
            let start = t * S;
            // Completions in [start - 1 s, start): errors spread over the second.
            for i in 0..fail {
                pending.push(start - S + i * (S / fail.max(1)));
            }
            completed += fail + ok;
            // Errors reported by now (the read happens at `start`).
            pending.sort_unstable();
            let (now, later): (Vec<u64>, Vec<u64>) =
                pending.iter().partition(|ts| **ts + lag_ns < start);
            for ts in now {
                l.on_error(ts);
            }
            pending = later;
            if l.on_scan(start, completed, DEAD).is_some() {
                return Some(t);
            }
        }
        None
    }

    #[test]
    fn a_device_that_only_fails_is_dead_after_the_threshold() {
        let t = run(30, 100, 0, 0).expect("dead");
        // Errors from second 0; the span reaches 10 s in the interval ending at 11 s.
        assert!((11..=12).contains(&t), "{t}");
    }

    #[test]
    fn late_errors_delay_but_do_not_prevent_the_verdict() {
        let t = run(30, 100, 0, S / 2).expect("dead");
        assert!((11..=13).contains(&t), "{t}");
    }

    #[test]
    fn a_device_failing_every_second_request_stays_alive() {
        assert_eq!(run(60, 100, 100, 0), None);
        assert_eq!(run(60, 100, 100, S / 2), None);
        // One success per second among many failures is still alive.
        assert_eq!(run(60, 1000, 1, 0), None);
    }

    #[test]
    fn a_single_error_then_idle_is_not_dead() {
        let mut l = Liveness::default();
        l.on_error(S / 2);
        assert_eq!(l.on_scan(S, 101, DEAD), None);
        for t in 2..40 {
            assert_eq!(l.on_scan(t * S, 101, DEAD), None, "{t}");
        }
    }

    #[test]
    fn one_success_revives_a_dead_device() {
        let mut l = Liveness::default();
        let mut c = 0;
        let mut dead_at = None;
        for t in 1..=15 {
            l.on_error(t * S - S / 2);
            c += 1;
            if l.on_scan(t * S, c, DEAD).is_some() && dead_at.is_none() {
                dead_at = Some(t);
            }
        }
        assert!(dead_at.is_some());
        // A second with a success and no error: settled one scan later.
        c += 1;
        assert!(l.on_scan(16 * S, c, DEAD).is_some(), "not settled yet");
        assert_eq!(l.on_scan(17 * S, c, DEAD), None);
    }

    #[test]
    fn forgetting_starts_over() {
        let mut l = Liveness::default();
        let mut c = 0;
        for t in 1..=15 {
            l.on_error(t * S - S / 2);
            c += 1;
            l.on_scan(t * S, c, DEAD);
        }
        l.forget();
        // No new errors: not dead again.
        assert_eq!(l.on_scan(16 * S, c, DEAD), None);
    }
}
