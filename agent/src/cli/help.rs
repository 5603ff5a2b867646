//! `man`-style sections for `--help` (clap's `after_long_help`): examples, files, signals and
//! exit status per subcommand. `-h` stays short; `--help` shows these.

pub const MAIN: &str = "\
EXAMPLES:
    bindsto run --config /etc/bindsto/config.toml
    bindsto status
    bindsto doctor
    bindsto check --json

FILES:
    /etc/bindsto/config.toml   config installed by the packages (see `bindsto config default`)
    /var/lib/bindsto/          state directory (remediation incident records)

ENVIRONMENT:
    BINDSTO_LOG       log filter, like --log-level (e.g. `info,bindsto=debug`)
    NOTIFY_SOCKET     set by systemd (Type=notify): READY, WATCHDOG and STATUS are sent there
    JOURNAL_STREAM    set by systemd: plain log lines without timestamps go to the journal

See docs/ami.md for packaging and AMI setup, docs/alerts.yml for Prometheus alert rules.";

pub const RUN: &str = "\
HTTP API (on `listen`, default 0.0.0.0:9842):
    GET /healthz   200 `ok`, or 503 with a JSON body naming the failed critical targets
    GET /metrics   OpenMetrics text (Prometheus)
    GET /status    JSON: targets, devices, blocked mount calls, probes, the config in effect

SIGNALS:
    SIGHUP           re-read the config file. A bad file is rejected with the key and line
                     (logged, counted in bindsto_config_reloads_total{outcome=\"rejected\"}) and
                     the running config stays. `listen` changes need a restart.
    SIGTERM, SIGINT  stop

SYSTEMD:
    Under Type=notify the agent sends READY=1 once its kernel programs are attached and the
    HTTP server listens, WATCHDOG=1 only while its main loop makes progress (WatchdogSec=),
    a one-line STATUS=, RELOADING=1 around a SIGHUP reload and STOPPING=1 on shutdown.

EXIT STATUS:
    0 stopped by SIGTERM or SIGINT; 2 bad config, cannot listen, or another fatal error.

EXAMPLES:
    bindsto run --config /etc/bindsto/config.toml
    bindsto run --dry-run                 # embedded default config, act on nothing
    systemctl reload bindsto              # SIGHUP: apply an edited config";

pub const CHECK: &str = "\
Runs the same detection as `run` for --duration, without HTTP and without acting, and prints
the verdict as a table (or the /status JSON with --json).

EXIT STATUS:
    0 healthy, 1 unhealthy (a critical target failed), 2 error (bad config, ...).

EXAMPLES:
    bindsto check
    bindsto check --config /etc/bindsto/config.toml --duration 10s --json";

pub const STATUS: &str = "\
Reads GET /status from a running agent and prints its targets (mounts, devices, the mount
subsystem) with state and reasons, its devices with requests in flight, blocked mount calls,
watches that do not apply and probes that are not attached.

EXIT STATUS:
    0 the agent reports healthy, 1 unhealthy, 2 the agent cannot be reached.

EXAMPLES:
    bindsto status
    bindsto status --addr 127.0.0.1:9842 --json | jq '.targets[] | select(.state != \"healthy\")'";

pub const DOCTOR: &str = "\
Checks each requirement and prints ok, WARN (a blind spot; detection goes on) or FAIL, with
the fix for everything that is not ok: privileges and each capability the unit grants,
tracefs, BTF, the mount table and block topology, loading the kernel programs, and every
tracepoint (attached, or missing on this kernel with what replaces it). Loads and attaches
the programs briefly, then detaches everything.

EXIT STATUS:
    0 no requirement failed, 1 at least one FAIL.

EXAMPLES:
    sudo bindsto doctor
    sudo bindsto doctor --json | jq '.checks[] | select(.verdict != \"ok\")'";

pub const GAMEDAY: &str = "\
Breaks storage on purpose, on scratch storage of its own only: a fault-injecting file served
over FUSE by this process, a loop device over it and XFS (or ext4) on that, in a new directory
under --workdir (refused if it is a device, a missing directory or a mount other than tmpfs).
Scenarios: xfs-shutdown (xfs_io shutdown), disk-errors (the disk fails writes; detected through
the log-error path without the shutdown tracepoint), disk-stall (I/O parked), mount-hang (a
mount of the parked disk), recovery (a stall released), unmount (umount -l of the watched XFS:
not_mounted), read-only (remount,ro: read_only), ext4-shutdown (xfs_io shutdown on ext4:
fs_shutdown), ext4-disk-errors (the disk fails under ext4 with a writer: fs_shutdown, read_only
or the device dead for io_dead_after), not-writable (the XFS filled up: the write canary fails
with ENOSPC). unmount, read-only and not-writable always use an engine in this process, whose
critical watch is on the scratch path. Each is injected, the verdict awaited
from the agent at --addr (or, if none answers, an engine in this process), its latency measured,
and everything restored and removed, also on Ctrl-C or SIGTERM.

EXIT STATUS:
    0 every scenario detected, 1 a miss, 2 refused or could not run, 130 interrupted.

EXAMPLES:
    sudo bindsto gameday
    sudo bindsto gameday --scenario disk-stall --repeat 5 --json";

pub const INCIDENT: &str = "\
Every failure of critical storage opens an incident (with or without remediation actions),
and the agent keeps its evidence bundle in <state_dir>/evidence/<id>.json (the newest 50, each
at most 256 KiB): the failing targets with their reasons, the tasks blocked in mount calls or
in uninterruptible sleep with their kernel stacks, the block requests, dm bios, RPC tasks and
mount calls in flight, the kernel log of the incident's window and the last mount checks.
These commands read the state directory; a running agent serves the same at GET /incidents
and GET /incidents/<id>.

EXIT STATUS:
    0 printed, 2 on a bad config or an unknown or unreadable incident.

EXAMPLES:
    bindsto incident list
    bindsto incident show 1764720000000-ip-10-0-1-2.ec2.internal
    bindsto incident show 1764720000000-ip-10-0-1-2.ec2.internal --json | jq '.captures[-1].tasks[0].stack'";

pub const CONFIG_DEFAULT: &str = "\
The output is a complete, commented config file: every key with its default and meaning.

EXAMPLES:
    bindsto config default > /etc/bindsto/config.toml";
