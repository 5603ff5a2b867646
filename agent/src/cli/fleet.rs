//! `bindsto fleet init` (create the budget table) and `bindsto fleet status` (the group's
//! leases and failing hosts): the operator's side of the shared out-of-service budget.

use std::{path::Path, process::ExitCode, time::Duration, time::SystemTime};

use serde::Serialize;

use super::{CliError, emit, load_config, runtime};
use crate::config::Config;
use crate::remedy::fleet::{
    millis,
    report::{FailingView, HolderView, failing, holders},
    table::{Table, TableError},
};
use crate::remedy::{identity, steps::aws};

/// Why a fleet command could not run.
#[derive(Debug, thiserror::Error)]
pub enum FleetCliError {
    #[error("remediate.fleet.table is empty in the config: there is no budget table")]
    NoTable,
    #[error(
        "no region: pass --region, set remediate.asg_unhealthy.region, or run on an EC2 instance (IMDS: {0})"
    )]
    NoRegion(String),
    #[error("no group: pass --group, or run on an instance of the group ({0})")]
    NoGroup(String),
    #[error(transparent)]
    Table(#[from] TableError),
}

/// What `fleet status` prints.
#[derive(Debug, Serialize)]
struct FleetStatus {
    table: String,
    group: String,
    group_size: Option<usize>,
    budget: Option<usize>,
    version: Option<u64>,
    holders: Vec<HolderView>,
    failing: Vec<FailingView>,
}

fn fleet_config(path: Option<&Path>) -> Result<Config, ExitCode> {
    load_config(path)
}

async fn region(cfg: &Config, flag: Option<&str>) -> Result<String, FleetCliError> {
    if let Some(r) = flag
        .map(str::to_owned)
        .or_else(|| cfg.remediate.asg_unhealthy.region.clone())
    {
        return Ok(r);
    }
    identity::instance(
        &cfg.remediate.asg_unhealthy.imds_url,
        Duration::from_secs(2),
    )
    .await
    .map(|i| i.region)
    .map_err(|e| FleetCliError::NoRegion(e.to_string()))
}

pub fn init(config: Option<&Path>, region_flag: Option<&str>) -> Result<ExitCode, CliError> {
    let cfg = match fleet_config(config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let r = runtime()?.block_on(async {
        if !cfg.remediate.fleet.enabled() {
            return Err(FleetCliError::NoTable);
        }
        let region = region(&cfg, region_flag).await?;
        let table = Table::new(&cfg.remediate, &region).await;
        Ok(table.create(Duration::from_secs(120)).await?)
    });
    report(r.map(|created| {
        let t = &cfg.remediate.fleet.table;
        if created {
            println!("bindsto: created table {t} (key group, on-demand billing); it is active");
        } else {
            println!("bindsto: table {t} already exists and is active; nothing changed");
        }
    }))
}

pub fn status(
    config: Option<&Path>,
    group: Option<&str>,
    region_flag: Option<&str>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let cfg = match fleet_config(config) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let r = runtime()?.block_on(read_status(&cfg, group, region_flag));
    match r {
        Ok(s) => {
            emit(&s, json, render)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => report::<()>(Err(e)),
    }
}

async fn read_status(
    cfg: &Config,
    group: Option<&str>,
    region_flag: Option<&str>,
) -> Result<FleetStatus, FleetCliError> {
    let rem = &cfg.remediate;
    if !rem.fleet.enabled() {
        return Err(FleetCliError::NoTable);
    }
    let region = region(cfg, region_flag).await?;
    let (group, size) = match group {
        Some(g) => (g.to_owned(), None),
        None => {
            let me = identity::instance(&rem.asg_unhealthy.imds_url, Duration::from_secs(2))
                .await
                .map_err(|e| FleetCliError::NoGroup(e.to_string()))?;
            let asg = aws::AutoScaling::new(rem, &region).await;
            match asg.fleet(&me).await {
                Ok(Some(f)) => (f.group, Some(f.total.max(1))),
                Ok(None) => (format!("instance/{}", me.instance_id), Some(1)),
                Err(e) => return Err(FleetCliError::NoGroup(e.to_string())),
            }
        }
    };
    let table = Table::new(rem, &region).await;
    let item = table.read(&group).await?;
    let live = item.ledger.live(millis(SystemTime::now()));
    Ok(FleetStatus {
        table: rem.fleet.table.clone(),
        budget: size.map(|n| rem.fleet.budget(n)),
        group,
        group_size: size,
        version: item.version,
        holders: holders(&live),
        failing: failing(&live),
    })
}

fn report<T>(r: Result<T, FleetCliError>) -> Result<ExitCode, CliError> {
    match r {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("bindsto: {e}");
            Ok(ExitCode::from(2))
        }
    }
}

fn render(s: &FleetStatus) -> String {
    use crate::health::timestamp::format_time;
    let mut out = format!("table {}  group {}", s.table, s.group);
    if let (Some(n), Some(b)) = (s.group_size, s.budget) {
        out.push_str(&format!("  size {n}  budget {b}"));
    }
    out.push_str(&format!("\nleases ({}):\n", s.holders.len()));
    for h in &s.holders {
        out.push_str(&format!(
            "  {}  since {}  expires {}  {}\n",
            h.instance,
            format_time(h.since),
            format_time(h.expires_at),
            h.reason
        ));
    }
    out.push_str(&format!("failing ({}):\n", s.failing.len()));
    for f in &s.failing {
        out.push_str(&format!(
            "  {}  {} on {}  since {}  expires {}\n",
            f.instance,
            f.signal,
            f.target,
            format_time(f.since),
            format_time(f.expires_at)
        ));
    }
    out
}
