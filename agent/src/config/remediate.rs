//! `[remediate]`: the ladder, its actions and its safety rails.

use std::path::{Component, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::Problem;
use super::de::{BadValue, checked_str, duration, nonzero, percent, positive};
use super::locate::KeyLines;

/// One rung of the ladder, in the order the config lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    EcsDrain,
    StopUnits,
    AsgUnhealthy,
    Exec,
}

impl Action {
    pub const ALL: [Action; 4] = [
        Action::EcsDrain,
        Action::StopUnits,
        Action::AsgUnhealthy,
        Action::Exec,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::EcsDrain => "ecs-drain",
            Action::StopUnits => "stop-units",
            Action::AsgUnhealthy => "asg-unhealthy",
            Action::Exec => "exec",
        }
    }

    fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == s)
    }
}

/// `[remediate]`: the ladder and its rails; one sub-table per step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
pub struct Remediate {
    #[serde(deserialize_with = "actions")]
    pub actions: Vec<Action>,
    #[serde(with = "duration")]
    pub hold_down: Duration,
    #[serde(deserialize_with = "positive")]
    pub max_per_hour: u32,
    #[serde(deserialize_with = "state_dir")]
    pub state_dir: PathBuf,
    #[serde(deserialize_with = "positive")]
    pub aws_max_attempts: u32,
    pub ecs_drain: EcsDrain,
    pub stop_units: StopUnits,
    pub asg_unhealthy: AsgUnhealthy,
    pub exec: Exec,
    pub fleet: super::fleet::Fleet,
}

/// A step of the ladder; see `default.toml` for what it does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
pub struct EcsDrain {
    #[serde(deserialize_with = "http_url")]
    pub introspection_url: String,
    #[serde(deserialize_with = "endpoint_url")]
    pub endpoint_url: Option<String>,
    #[serde(with = "nonzero")]
    pub timeout: Duration,
}

/// A step of the ladder; see `default.toml` for what it does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
pub struct StopUnits {
    #[serde(deserialize_with = "units")]
    pub units: Vec<String>,
    pub mask_units: bool,
    #[serde(with = "nonzero")]
    pub timeout: Duration,
}

/// A step of the ladder; see `default.toml` for what it does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
pub struct AsgUnhealthy {
    #[serde(deserialize_with = "http_url")]
    pub imds_url: String,
    #[serde(deserialize_with = "endpoint_url")]
    pub endpoint_url: Option<String>,
    #[serde(deserialize_with = "region")]
    pub region: Option<String>,
    #[serde(deserialize_with = "fleet_percent")]
    pub fleet_max_unhealthy_percent: f64,
    #[serde(with = "nonzero")]
    pub breaker_retry: Duration,
    pub respect_grace_period: bool,
    #[serde(with = "nonzero")]
    pub timeout: Duration,
}

/// A step of the ladder; see `default.toml` for what it does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a table")]
pub struct Exec {
    pub command: Vec<String>,
    #[serde(with = "nonzero")]
    pub timeout: Duration,
}

impl Default for Remediate {
    fn default() -> Self {
        Remediate {
            actions: vec![Action::EcsDrain, Action::StopUnits, Action::AsgUnhealthy],
            hold_down: Duration::from_secs(30),
            max_per_hour: 2,
            state_dir: PathBuf::from("/var/lib/bindsto"),
            aws_max_attempts: 4,
            ecs_drain: EcsDrain::default(),
            stop_units: StopUnits::default(),
            asg_unhealthy: AsgUnhealthy::default(),
            exec: Exec::default(),
            fleet: super::fleet::Fleet::default(),
        }
    }
}

impl Default for EcsDrain {
    fn default() -> Self {
        EcsDrain {
            introspection_url: "http://127.0.0.1:51678".into(),
            endpoint_url: None,
            timeout: Duration::from_secs(30),
        }
    }
}

impl Default for StopUnits {
    fn default() -> Self {
        StopUnits {
            units: vec!["ecs.service".into()],
            mask_units: false,
            timeout: Duration::from_secs(90),
        }
    }
}

impl Default for AsgUnhealthy {
    fn default() -> Self {
        AsgUnhealthy {
            imds_url: "http://169.254.169.254".into(),
            endpoint_url: None,
            region: None,
            fleet_max_unhealthy_percent: 20.0,
            breaker_retry: Duration::from_secs(60),
            respect_grace_period: false,
            timeout: Duration::from_secs(30),
        }
    }
}

impl Default for Exec {
    fn default() -> Self {
        Exec {
            command: Vec::new(),
            timeout: Duration::from_secs(30),
        }
    }
}

/// The exec action runs `remediate.exec.command`: it must be set, to an absolute program.
pub(super) fn validate(r: &Remediate, lines: &KeyLines) -> Result<(), Problem> {
    const COMMAND: &str = "remediate.exec.command";
    if !r.actions.contains(&Action::Exec) {
        return Ok(());
    }
    match r.exec.command.first() {
        None => Err(lines.problem(
            if lines.is_set(COMMAND) {
                COMMAND
            } else {
                "remediate.actions"
            },
            "the exec action needs remediate.exec.command, e.g. [\"/usr/local/bin/notify\"]".into(),
        )),
        // No shell and no PATH search: what runs is exactly what the file names.
        Some(prog) if !prog.starts_with('/') => Err(lines.problem(
            COMMAND,
            format!("program {prog:?} must be an absolute path"),
        )),
        Some(_) => Ok(()),
    }
}

// ---- field deserializers: a value that cannot be right is refused where the file says it ----

fn actions<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Action>, D::Error> {
    /// One list element, checked on its own so an unknown name is reported at its line.
    struct ActionName(Action);

    impl<'de> Deserialize<'de> for ActionName {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            checked_str(d, |s| {
                Action::parse(s).map(ActionName).ok_or_else(|| {
                    BadValue(format!(
                        "unknown action {s:?}; expected one of ecs-drain, stop-units, asg-unhealthy, exec"
                    ))
                })
            })
        }
    }

    let mut out: Vec<Action> = Vec::new();
    for ActionName(a) in Vec::<ActionName>::deserialize(d)? {
        if out.contains(&a) {
            return Err(serde::de::Error::custom(format!(
                "action {:?} is listed twice",
                a.name()
            )));
        }
        out.push(a);
    }
    Ok(out)
}

fn state_dir<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    checked_str(d, |text| {
        let p = PathBuf::from(text);
        if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
            return Err(BadValue(format!(
                "{text:?} must be an absolute path without \"..\""
            )));
        }
        Ok(p)
    })
}

/// The agent's own HTTP client speaks plain HTTP only (IMDS and the ECS introspection API are
/// link-local).
fn http_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    checked_str(d, |text| url(text, false))
}

/// The AWS SDK's endpoints accept https too.
pub(super) fn endpoint_url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked_str(d, |text| url(text, true).map(Some))
}

fn url(text: &str, https: bool) -> Result<String, BadValue> {
    let ok = text.starts_with("http://") || (https && text.starts_with("https://"));
    if !ok || text.len() <= "http://".len() {
        return Err(BadValue(format!(
            "invalid URL {text:?}; expected http://HOST[:PORT]"
        )));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

fn region<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    checked_str(d, |r| {
        if r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(BadValue(format!(
                "{r:?} is not a region name such as \"us-east-1\""
            )));
        }
        Ok(Some(r.to_owned()))
    })
}

fn fleet_percent<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    percent(d, "")
}

fn units<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let units = Vec::<String>::deserialize(d)?;
    if let Some(bad) = units.iter().find(|u| !valid_unit(u)) {
        return Err(serde::de::Error::custom(format!(
            "{bad:?} is not a unit name such as \"ecs.service\""
        )));
    }
    Ok(units)
}

/// systemd unit names: a name, a dot and a known suffix; no slashes or spaces.
fn valid_unit(u: &str) -> bool {
    const SUFFIXES: [&str; 6] = [
        ".service", ".socket", ".target", ".mount", ".timer", ".scope",
    ];
    SUFFIXES.iter().any(|s| u.len() > s.len() && u.ends_with(s))
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c))
}
