//! The `bindsto` command line. Errors end here as anyhow; exit codes follow the contract:
//! `check` exits 0 healthy, 1 unhealthy, 2 on error; a bad config exits 2 everywhere.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use bindsto::{
    cli::{self, CliError, help},
    config::DEFAULT_TOML,
    gameday::GamedayOptions,
};
use clap::{Parser, Subcommand, ValueEnum};

/// bindsto: a kernel-level storage watchdog for container hosts.
///
/// It watches XFS shutdowns, block I/O errors and stalls, and mount calls that never return,
/// through eBPF tracepoints, and reports a health verdict per mount and device over HTTP
/// (/healthz, /metrics, /status).
#[derive(Parser, Debug)]
#[command(
    name = "bindsto",
    version,
    propagate_version = true,
    after_long_help = help::MAIN
)]
struct Cli {
    /// Log format: human-readable lines (journald-friendly) or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    /// Log filter (tracing env-filter syntax), e.g. `info` or `bindsto=debug`.
    #[arg(long, env = "BINDSTO_LOG", default_value = "info", global = true)]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent: attach the kernel programs and serve /healthz, /metrics and /status.
    ///
    /// The agent loads its eBPF programs (XFS shutdown and errors, block request issue and
    /// completion, mount-family syscalls), watches the mounts and devices named by the config,
    /// and keeps a health verdict per target. It never blocks on the storage it watches: every
    /// probe that touches a mount runs on its own thread with a timeout.
    #[command(after_long_help = help::RUN)]
    Run {
        /// Config file (TOML). Without it the embedded default is used (`bindsto config default`).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Decide and report, but act on nothing (overrides the config).
        #[arg(long)]
        dry_run: bool,
    },
    /// One-shot verdict: observe for a short while, print it, exit 0 healthy, 1 unhealthy, 2 error.
    #[command(after_long_help = help::CHECK)]
    Check {
        /// Config file (TOML). Without it the embedded default is used.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the full status as JSON.
        #[arg(long)]
        json: bool,
        /// How long to observe before answering.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Ask a running agent for its status and print it.
    #[command(after_long_help = help::STATUS)]
    Status {
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
        /// Config of the running agent (to find its listen address).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Address of the agent; overrides the config.
        #[arg(long)]
        addr: Option<SocketAddr>,
    },
    /// Check kernel support and privileges: tracepoints found and attached, BTF, capabilities.
    #[command(after_long_help = help::DOCTOR)]
    Doctor {
        /// Print the report as JSON (kernel, and per check: requirement, verdict, detail, fix).
        #[arg(long)]
        json: bool,
    },
    /// Chaos experiments on scratch storage created for the purpose (loop devices over a
    /// fault-injecting file): inject, measure detection latency, restore, clean up. Exits 1 on
    /// any miss.
    #[command(after_long_help = help::GAMEDAY)]
    Gameday {
        /// A scenario (xfs-shutdown, disk-errors, disk-stall, mount-hang, recovery, unmount,
        /// read-only, ext4-shutdown, ext4-disk-errors, not-writable) or `all`.
        #[arg(long, default_value = "all")]
        scenario: Vec<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Directory in which the scratch directory is created (never an existing mount).
        #[arg(long, default_value = "/tmp")]
        workdir: PathBuf,
        /// The agent to observe; if none answers there, an engine runs in this process.
        #[arg(long, default_value = "127.0.0.1:9842")]
        addr: SocketAddr,
        /// Always use an engine in this process, even if an agent is running.
        #[arg(long)]
        standalone: bool,
        /// Run every scenario this many times.
        #[arg(long, default_value_t = 1)]
        repeat: u32,
        /// With a running agent: how long to wait for each verdict (its thresholds apply).
        #[arg(long, default_value = "150s", value_parser = humantime::parse_duration)]
        agent_timeout: Duration,
    },
    /// Incidents and their evidence, read from the state directory (works after the agent or
    /// the host's storage is gone, as long as the root disk answers).
    #[command(after_long_help = help::INCIDENT)]
    Incident {
        #[command(subcommand)]
        command: IncidentCommand,
    },
    /// Internal: the privileged reader `bindsto run` starts for incident evidence.
    #[command(name = "evidence-helper", hide = true)]
    EvidenceHelper,
    /// The shared out-of-service budget (DynamoDB): create its table, list leases and failing
    /// hosts.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Configuration helpers.
    ///
    /// The config is TOML; every key is optional and unknown keys are errors. A malformed file
    /// is rejected with its line and key (exit 2).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand, Debug)]
enum FleetCommand {
    /// Create the table named by remediate.fleet.table (key `group`, on-demand billing);
    /// idempotent. Needs dynamodb:CreateTable and DescribeTable, which the agent never does.
    Init {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Default: remediate.asg_unhealthy.region, else this instance's (IMDS).
        #[arg(long)]
        region: Option<String>,
    },
    /// List the group's live leases and failing hosts (instance, signal, since, expiry).
    Status {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The Auto Scaling group; default: this instance's.
        #[arg(long)]
        group: Option<String>,
        #[arg(long)]
        region: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum IncidentCommand {
    /// The incidents kept in the state directory, newest first (id, targets, opened, state).
    List {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// One incident's evidence: what failed, the blocked tasks' kernel stacks, what was in
    /// flight, the kernel log of its window.
    Show {
        /// The incident id (`bindsto incident list`).
        id: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the whole bundle as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Print the embedded default configuration (a commented reference of every key).
    #[command(after_long_help = help::CONFIG_DEFAULT)]
    Default,
}

fn init_logging(format: LogFormat, filter: &str) {
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt};
    let filter = bindsto::cli::logging::env_filter(filter);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // The AWS SDK's debug/trace lines carry credentials: capped whatever the filter says.
    let no_secrets = bindsto::cli::logging::no_secrets();
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(no_secrets)
            .init(),
        // journald stamps every line itself: no second timestamp there, and never colour.
        LogFormat::Human if bindsto::cli::logging::stderr_is_journal() => {
            builder
                .with_ansi(false)
                .without_time()
                .finish()
                .with(no_secrets)
                .init();
        }
        LogFormat::Human => builder.with_ansi(false).finish().with(no_secrets).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log_level);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            // The whole chain of causes, as "what: why: why".
            eprintln!("bindsto: {:#}", anyhow::Error::from(e));
            ExitCode::from(2)
        }
    }
}

fn dispatch(command: Command) -> Result<ExitCode, CliError> {
    match command {
        Command::Run { config, dry_run } => cli::run::command(config, dry_run),
        Command::Check {
            config,
            json,
            duration,
        } => cli::check::command(config.as_deref(), json, duration),
        Command::Status { json, config, addr } => {
            cli::status::command(json, config.as_deref(), addr)
        }
        Command::Doctor { json } => cli::doctor::command(json),
        Command::Gameday {
            scenario,
            json,
            workdir,
            addr,
            standalone,
            repeat,
            agent_timeout,
        } => cli::gameday::command(
            &GamedayOptions {
                scenarios: scenario,
                workdir,
                agent: addr,
                standalone,
                repeat,
                agent_timeout,
            },
            json,
        ),
        Command::Fleet {
            command: FleetCommand::Init { config, region },
        } => cli::fleet::init(config.as_deref(), region.as_deref()),
        Command::Fleet {
            command:
                FleetCommand::Status {
                    config,
                    group,
                    region,
                    json,
                },
        } => cli::fleet::status(config.as_deref(), group.as_deref(), region.as_deref(), json),
        Command::Incident {
            command: IncidentCommand::List { config, json },
        } => cli::incident::list(config.as_deref(), json),
        Command::Incident {
            command: IncidentCommand::Show { id, config, json },
        } => cli::incident::show(config.as_deref(), &id, json),
        Command::EvidenceHelper => {
            bindsto::daemon::privileges::drop_for_evidence_helper();
            match bindsto::evidence::helper::serve() {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(_) => Ok(ExitCode::from(1)),
            }
        }
        Command::Config {
            command: ConfigCommand::Default,
        } => {
            print!("{DEFAULT_TOML}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
