//! The `exec` action: a configured program, the incident as JSON on stdin, a timeout.
//!
//! No shell and a minimal environment: what runs is exactly the argv the config names, and
//! nothing of the agent's environment (AWS credentials included) leaks into it. The program runs
//! in its own process group so the timeout kills everything it started.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::StepResult;
use crate::config::Exec;
use crate::remedy::incident::Incident;

/// Output kept for the step's record.
const OUTPUT_MAX: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{program} did not finish within {timeout:?} and was killed")]
    Timeout { program: String, timeout: Duration },
    #[error("{program} exited with {status}: {stderr}")]
    Failed {
        program: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("waiting for {program}: {source}")]
    Wait {
        program: String,
        source: std::io::Error,
    },
}

/// Runs `argv` with `input` on stdin; returns its (truncated) stdout on exit status 0.
pub async fn run(argv: &[String], input: &[u8], timeout: Duration) -> Result<String, ExecError> {
    run_with(argv, input, timeout, None).await
}

/// [`run`], with `BINDSTO_EVIDENCE` set to the incident's evidence bundle when there is one.
pub async fn run_with(
    argv: &[String],
    input: &[u8],
    timeout: Duration,
    evidence: Option<&str>,
) -> Result<String, ExecError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(ExecError::Spawn {
            program: String::new(),
            source: std::io::Error::other("empty command"),
        });
    };
    let mut cmd = Command::new(program);
    let agent = std::process::id() as libc::pid_t;
    // SAFETY: runs in the forked child before exec and calls only async-signal-safe functions.
    unsafe {
        cmd.pre_exec(move || {
            // An agent killed mid-step (kill -9) takes the command with it, so the step's rerun
            // after the restart never runs beside a leftover of the first attempt.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != agent {
                return Err(std::io::Error::other("the agent exited"));
            }
            Ok(())
        });
    }
    let mut child = cmd
        .args(args)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("LANG", "C.UTF-8")
        .envs(evidence.map(|p| ("BINDSTO_EVIDENCE", p)))
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ExecError::Spawn {
            program: program.clone(),
            source,
        })?;
    let pgid = child.id().and_then(|p| i32::try_from(p).ok());
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let work = async {
        if let Some(mut s) = stdin.take() {
            // A program that does not read its input is not an error.
            let _ = s.write_all(input).await;
            let _ = s.shutdown().await;
        }
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let read_out = async {
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_end(&mut out).await;
            }
        };
        let read_err = async {
            if let Some(s) = stderr.as_mut() {
                let _ = s.read_to_end(&mut err).await;
            }
        };
        let (status, _, _) = tokio::join!(child.wait(), read_out, read_err);
        (status, out, err)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok((status, out, err)) => {
            let status = status.map_err(|source| ExecError::Wait {
                program: program.clone(),
                source,
            })?;
            if status.success() {
                Ok(tail(&out))
            } else {
                Err(ExecError::Failed {
                    program: program.clone(),
                    status,
                    stderr: tail(&err),
                })
            }
        }
        Err(_) => {
            if let Some(pgid) = pgid {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pgid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.kill().await;
            Err(ExecError::Timeout {
                program: program.clone(),
                timeout,
            })
        }
    }
}

/// The `exec` step: the configured command with the incident as JSON on stdin.
pub async fn run_step(x: &Exec, dry: bool, inc: &Incident) -> StepResult {
    if dry {
        return StepResult::dry_run(format!(
            "would run {:?} with the incident on stdin",
            x.command
        ));
    }
    let input = serde_json::to_vec(inc).unwrap_or_default();
    match run_with(&x.command, &input, x.timeout, inc.evidence.as_deref()).await {
        Ok(out) => StepResult::done(format!("{:?} succeeded: {out}", x.command)),
        Err(e) => StepResult::failed(e.to_string()),
    }
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let start = text
        .char_indices()
        .map(|(i, _)| i)
        .find(|&i| text.len() - i <= OUTPUT_MAX)
        .unwrap_or(text.len());
    text[start..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[tokio::test]
    async fn passes_stdin_and_returns_stdout() {
        let out = run(
            &argv(&["/bin/cat"]),
            b"{\"id\":\"x\"}",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(out, "{\"id\":\"x\"}");
    }

    #[tokio::test]
    async fn environment_is_minimal() {
        // SAFETY: test-only; no other thread of this test reads the environment.
        unsafe { std::env::set_var("AWS_SECRET_ACCESS_KEY", "must-not-leak") };
        let out = run(&argv(&["/usr/bin/env"]), b"", Duration::from_secs(5))
            .await
            .unwrap();
        assert!(!out.contains("must-not-leak"), "{out}");
        assert!(out.contains("PATH="), "{out}");
        assert!(!out.contains("BINDSTO_EVIDENCE"), "{out}");
        let out = run_with(
            &argv(&["/usr/bin/env"]),
            b"",
            Duration::from_secs(5),
            Some("/var/lib/bindsto/evidence/1-h.json"),
        )
        .await
        .unwrap();
        assert!(
            out.contains("BINDSTO_EVIDENCE=/var/lib/bindsto/evidence/1-h.json"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn a_hanging_command_is_killed_at_its_timeout() {
        let started = std::time::Instant::now();
        // The child of the shell must die too: the whole process group is killed.
        let e = run(
            &argv(&["/bin/sh", "-c", "sleep 30 & sleep 30"]),
            b"",
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, ExecError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn failure_reports_status_and_stderr() {
        let e = run(
            &argv(&["/bin/sh", "-c", "echo boom >&2; exit 3"]),
            b"",
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("boom") && msg.contains('3'), "{msg}");
        let e = run(&argv(&["/nonexistent/prog"]), b"", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, ExecError::Spawn { .. }), "{e}");
    }
}
