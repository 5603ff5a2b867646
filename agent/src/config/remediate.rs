//! `[remediate]`: the ladder, its actions and its safety rails.

use std::path::{Component, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{DurationText, Problem, Spans, humantime_str};

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

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Remediate {
    pub actions: Vec<Action>,
    #[serde(serialize_with = "humantime_str")]
    pub hold_down: Duration,
    pub max_per_hour: u32,
    pub state_dir: PathBuf,
    pub aws_max_attempts: u32,
    pub ecs_drain: EcsDrain,
    pub stop_units: StopUnits,
    pub asg_unhealthy: AsgUnhealthy,
    pub exec: Exec,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EcsDrain {
    pub introspection_url: String,
    pub endpoint_url: Option<String>,
    #[serde(serialize_with = "humantime_str")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StopUnits {
    pub units: Vec<String>,
    pub mask_units: bool,
    #[serde(serialize_with = "humantime_str")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AsgUnhealthy {
    pub imds_url: String,
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    pub fleet_max_unhealthy_percent: f64,
    #[serde(serialize_with = "humantime_str")]
    pub breaker_retry: Duration,
    pub respect_grace_period: bool,
    #[serde(serialize_with = "humantime_str")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Exec {
    pub command: Vec<String>,
    #[serde(serialize_with = "humantime_str")]
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
            ecs_drain: EcsDrain {
                introspection_url: "http://127.0.0.1:51678".into(),
                endpoint_url: None,
                timeout: Duration::from_secs(30),
            },
            stop_units: StopUnits {
                units: vec!["ecs.service".into()],
                mask_units: false,
                timeout: Duration::from_secs(90),
            },
            asg_unhealthy: AsgUnhealthy {
                imds_url: "http://169.254.169.254".into(),
                endpoint_url: None,
                region: None,
                fleet_max_unhealthy_percent: 20.0,
                breaker_retry: Duration::from_secs(60),
                respect_grace_period: false,
                timeout: Duration::from_secs(30),
            },
            exec: Exec {
                command: Vec::new(),
                timeout: Duration::from_secs(30),
            },
        }
    }
}

// ---- raw layer ----

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawRemediate {
    actions: Option<Spanned<Vec<Spanned<String>>>>,
    hold_down: Option<Spanned<DurationText>>,
    max_per_hour: Option<Spanned<i64>>,
    state_dir: Option<Spanned<String>>,
    aws_max_attempts: Option<Spanned<i64>>,
    ecs_drain: Option<RawEcsDrain>,
    stop_units: Option<RawStopUnits>,
    asg_unhealthy: Option<RawAsgUnhealthy>,
    exec: Option<RawExec>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawEcsDrain {
    introspection_url: Option<Spanned<String>>,
    endpoint_url: Option<Spanned<String>>,
    timeout: Option<Spanned<DurationText>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawStopUnits {
    units: Option<Spanned<Vec<String>>>,
    mask_units: Option<bool>,
    timeout: Option<Spanned<DurationText>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawAsgUnhealthy {
    imds_url: Option<Spanned<String>>,
    endpoint_url: Option<Spanned<String>>,
    region: Option<Spanned<String>>,
    fleet_max_unhealthy_percent: Option<Spanned<f64>>,
    breaker_retry: Option<Spanned<DurationText>>,
    respect_grace_period: Option<bool>,
    timeout: Option<Spanned<DurationText>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawExec {
    command: Option<Spanned<Vec<String>>>,
    timeout: Option<Spanned<DurationText>>,
}

fn url(
    spans: &mut Spans,
    key: &'static str,
    raw: Option<Spanned<String>>,
) -> Result<Option<String>, Problem> {
    let Some(text) = spans.take(key, raw) else {
        return Ok(None);
    };
    // The agent's own HTTP client speaks plain HTTP only (IMDS and the ECS introspection API are
    // link-local); the AWS SDK accepts https too.
    let ok = text.starts_with("http://")
        || (text.starts_with("https://") && key.ends_with("endpoint_url"));
    if !ok || text.len() <= "http://".len() {
        return Err(spans.problem(
            key,
            format!("invalid URL {text:?}; expected http://HOST[:PORT]"),
        ));
    }
    Ok(Some(text.trim_end_matches('/').to_owned()))
}

fn count(
    spans: &mut Spans,
    key: &'static str,
    raw: Option<Spanned<i64>>,
    default: u32,
    min: u32,
) -> Result<u32, Problem> {
    let Some(v) = spans.take(key, raw) else {
        return Ok(default);
    };
    u32::try_from(v).ok().filter(|v| *v >= min).ok_or_else(|| {
        spans.problem(
            key,
            format!("{v} is out of range; expected an integer >= {min}"),
        )
    })
}

impl RawRemediate {
    pub(super) fn resolve(self, spans: &mut Spans) -> Result<Remediate, Problem> {
        let d = Remediate::default();
        let actions = match self.actions {
            None => d.actions,
            Some(list) => {
                spans
                    .keys
                    .insert("remediate.actions", spans.line(list.span()));
                let mut out: Vec<Action> = Vec::new();
                for item in list.into_inner() {
                    let line = spans.line(item.span());
                    let name = item.into_inner();
                    let problem = |message: String| Problem {
                        line: Some(line),
                        key: Some("remediate.actions".into()),
                        message,
                    };
                    let Some(a) = Action::parse(&name) else {
                        return Err(problem(format!(
                            "unknown action {name:?}; expected one of ecs-drain, stop-units, asg-unhealthy, exec"
                        )));
                    };
                    if out.contains(&a) {
                        return Err(problem(format!("action {name:?} is listed twice")));
                    }
                    out.push(a);
                }
                out
            }
        };
        let hold_down = spans.duration("remediate.hold_down", self.hold_down, d.hold_down)?;
        let max_per_hour = count(
            spans,
            "remediate.max_per_hour",
            self.max_per_hour,
            d.max_per_hour,
            1,
        )?;
        let aws_max_attempts = count(
            spans,
            "remediate.aws_max_attempts",
            self.aws_max_attempts,
            d.aws_max_attempts,
            1,
        )?;
        let state_dir = match spans.take("remediate.state_dir", self.state_dir) {
            None => d.state_dir,
            Some(text) => {
                let p = PathBuf::from(&text);
                if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
                    return Err(spans.problem(
                        "remediate.state_dir",
                        format!("{text:?} must be an absolute path without \"..\""),
                    ));
                }
                p
            }
        };

        let e = self.ecs_drain.unwrap_or_default();
        let ecs_drain = EcsDrain {
            introspection_url: url(
                spans,
                "remediate.ecs_drain.introspection_url",
                e.introspection_url,
            )?
            .unwrap_or(d.ecs_drain.introspection_url),
            endpoint_url: url(spans, "remediate.ecs_drain.endpoint_url", e.endpoint_url)?,
            timeout: spans.duration(
                "remediate.ecs_drain.timeout",
                e.timeout,
                d.ecs_drain.timeout,
            )?,
        };

        let s = self.stop_units.unwrap_or_default();
        let units = match spans.take("remediate.stop_units.units", s.units) {
            None => d.stop_units.units,
            Some(units) => {
                if let Some(bad) = units.iter().find(|u| !valid_unit(u)) {
                    return Err(spans.problem(
                        "remediate.stop_units.units",
                        format!("{bad:?} is not a unit name such as \"ecs.service\""),
                    ));
                }
                units
            }
        };
        let stop_units = StopUnits {
            units,
            mask_units: s.mask_units.unwrap_or(d.stop_units.mask_units),
            timeout: spans.duration(
                "remediate.stop_units.timeout",
                s.timeout,
                d.stop_units.timeout,
            )?,
        };

        let a = self.asg_unhealthy.unwrap_or_default();
        let da = d.asg_unhealthy;
        let region = spans.take("remediate.asg_unhealthy.region", a.region);
        if let Some(r) = &region
            && (r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            return Err(spans.problem(
                "remediate.asg_unhealthy.region",
                format!("{r:?} is not a region name such as \"us-east-1\""),
            ));
        }
        let pct = spans
            .take(
                "remediate.asg_unhealthy.fleet_max_unhealthy_percent",
                a.fleet_max_unhealthy_percent,
            )
            .unwrap_or(da.fleet_max_unhealthy_percent);
        if !(0.0..=100.0).contains(&pct) {
            return Err(spans.problem(
                "remediate.asg_unhealthy.fleet_max_unhealthy_percent",
                format!("{pct} is outside 0..=100"),
            ));
        }
        let asg_unhealthy = AsgUnhealthy {
            imds_url: url(spans, "remediate.asg_unhealthy.imds_url", a.imds_url)?
                .unwrap_or(da.imds_url),
            endpoint_url: url(
                spans,
                "remediate.asg_unhealthy.endpoint_url",
                a.endpoint_url,
            )?,
            region,
            fleet_max_unhealthy_percent: pct,
            breaker_retry: spans.duration(
                "remediate.asg_unhealthy.breaker_retry",
                a.breaker_retry,
                da.breaker_retry,
            )?,
            respect_grace_period: a.respect_grace_period.unwrap_or(da.respect_grace_period),
            timeout: spans.duration("remediate.asg_unhealthy.timeout", a.timeout, da.timeout)?,
        };

        let x = self.exec.unwrap_or_default();
        let command = spans
            .take("remediate.exec.command", x.command)
            .unwrap_or_default();
        let exec = Exec {
            command,
            timeout: spans.duration("remediate.exec.timeout", x.timeout, d.exec.timeout)?,
        };
        if actions.contains(&Action::Exec) {
            match exec.command.first() {
                None => {
                    return Err(spans.problem(
                        if spans.keys.contains_key("remediate.exec.command") {
                            "remediate.exec.command"
                        } else {
                            "remediate.actions"
                        },
                        "the exec action needs remediate.exec.command, e.g. [\"/usr/local/bin/notify\"]".into(),
                    ));
                }
                // No shell and no PATH search: what runs is exactly what the file names.
                Some(prog) if !prog.starts_with('/') => {
                    return Err(spans.problem(
                        "remediate.exec.command",
                        format!("program {prog:?} must be an absolute path"),
                    ));
                }
                Some(_) => {}
            }
        }
        for (key, v) in [
            ("remediate.ecs_drain.timeout", ecs_drain.timeout),
            ("remediate.stop_units.timeout", stop_units.timeout),
            ("remediate.asg_unhealthy.timeout", asg_unhealthy.timeout),
            (
                "remediate.asg_unhealthy.breaker_retry",
                asg_unhealthy.breaker_retry,
            ),
            ("remediate.exec.timeout", exec.timeout),
        ] {
            if v.is_zero() {
                return Err(spans.problem(key, "must be greater than 0".into()));
            }
        }
        Ok(Remediate {
            actions,
            hold_down,
            max_per_hour,
            state_dir,
            aws_max_attempts,
            ecs_drain,
            stop_units,
            asg_unhealthy,
            exec,
        })
    }
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
