//! The async runtime, and leaving it without waiting for threads stuck on storage.
//!
//! Dropping a tokio runtime waits for every blocking task to finish. A probe or a state write
//! hung on watched storage never finishes, so a plain drop would turn `systemctl stop` into a
//! hang until systemd's stop timeout. The agent gives them a short grace and abandons them.

use std::{future::Future, time::Duration};

/// How long blocking tasks get to finish once the agent's work is done.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The agent's runtime: two workers (the agent's work is light), I/O and timers.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("bindsto")
        .build()
}

/// Runs `fut` to completion, then shuts the runtime down without waiting more than `grace`
/// for blocking tasks (a hung one keeps its thread until the process exits).
pub fn run_to_end<F: Future>(rt: tokio::runtime::Runtime, grace: Duration, fut: F) -> F::Output {
    let out = rt.block_on(fut);
    rt.shutdown_timeout(grace);
    out
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
        time::Instant,
    };

    use super::*;

    /// A blocking task that never returns (as a `statfs` of a hung mount would; the privileged
    /// `never_blocks` tests hang real storage) does not keep the runtime from ending.
    #[test]
    fn a_hung_blocking_task_does_not_hold_the_exit() {
        let release = Arc::new(AtomicBool::new(false));
        let r = Arc::clone(&release);
        let t = Instant::now();
        let out = run_to_end(runtime().unwrap(), Duration::from_millis(100), async move {
            tokio::task::spawn_blocking(move || {
                while !r.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
            7
        });
        assert_eq!(out, 7);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        release.store(true, Ordering::SeqCst);
    }
}
