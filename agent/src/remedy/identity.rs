//! Who this host is, as the ladder's AWS calls need it: the EC2 instance id and region from
//! IMDSv2, and the ECS cluster and container instance ARN from the ECS agent's introspection
//! API. Both are read at start and cached, because by the time the ladder runs the ECS agent
//! may be gone (it is one of the things the ladder stops). [`Identity`] holds what is known and
//! refreshes it. Depends on `config`, `api::client` and the `store` (the ECS cache file).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::dmi;
use super::store;
use crate::api::client::{self as httpc, HttpError};
use crate::config::{Action, Remediate};

const IMDS_TOKEN_TTL: &str = "300";
/// Identity endpoints are asked with this timeout, at start and while unknown every
/// `IDENTITY_RETRY`; known identities are refreshed every `IDENTITY_REFRESH`.
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(2);
pub const IDENTITY_RETRY: Duration = Duration::from_secs(30);
pub const IDENTITY_REFRESH: Duration = Duration::from_secs(300);

/// The identities the enabled actions need, as last read, and why a lookup failed.
#[derive(Debug, Default)]
pub struct Identity {
    pub instance: Option<Instance>,
    pub ecs: Option<EcsInstance>,
    /// One line per failed lookup, shown in /status.
    pub problems: Vec<String>,
    /// IMDS did not answer and DMI says this is no EC2 instance: IMDS is not asked again.
    pub not_ec2: Option<String>,
}

impl Identity {
    /// What the state directory remembers (the ECS identity), before anything is asked.
    pub fn cached(state_dir: &Path) -> Self {
        Identity {
            ecs: store::read_cache(state_dir, store::ECS_CACHE),
            ..Identity::default()
        }
    }

    /// Every identity the enabled actions need is known.
    pub fn known(&self, rem: &Remediate) -> bool {
        (!rem.actions.contains(&Action::EcsDrain) || self.ecs.is_some())
            && (!needs_instance(rem) || self.instance.is_some() || self.not_ec2.is_some())
    }

    /// Reads the identities the enabled actions need; keeps the last known ones on failure
    /// (the ECS agent is gone once stop-units has run).
    pub async fn refresh(&mut self, rem: &Remediate) {
        let wants = |a| rem.actions.contains(&a);
        let mut problems = Vec::new();
        if wants(Action::EcsDrain) {
            match ecs_instance(&rem.ecs_drain.introspection_url, IDENTITY_TIMEOUT).await {
                Ok(ecs) => {
                    if self.ecs.as_ref() != Some(&ecs) {
                        info!(cluster = %ecs.cluster, container_instance = %ecs.container_instance_arn, "ECS container instance identified");
                        let dir = rem.state_dir.clone();
                        let value = ecs.clone();
                        let write = tokio::task::spawn_blocking(move || {
                            store::write_cache(&dir, store::ECS_CACHE, &value)
                        });
                        if let Ok(Ok(Err(e))) = tokio::time::timeout(IDENTITY_TIMEOUT, write).await
                        {
                            warn!(error = %e, "cannot cache the ECS identity");
                        }
                        self.ecs = Some(ecs);
                    }
                }
                Err(e) => {
                    let cached = if self.ecs.is_some() {
                        " (using the cached identity)"
                    } else {
                        ""
                    };
                    problems.push(format!("ECS introspection: {e}{cached}"));
                }
            }
        }
        if let Some(why) = &self.not_ec2 {
            problems.push(why.clone());
        } else if needs_instance(rem) || wants(Action::EcsDrain) {
            match instance(&rem.asg_unhealthy.imds_url, IDENTITY_TIMEOUT).await {
                Ok(i) => {
                    if self.instance.as_ref() != Some(&i) {
                        info!(instance_id = %i.instance_id, region = %i.region, "EC2 instance identified");
                        self.instance = Some(i);
                    }
                }
                Err(e)
                    if self.instance.is_none()
                        && unanswered(&e)
                        && dmi::says_not_ec2().is_some() =>
                {
                    let dmi = dmi::says_not_ec2().unwrap_or_default();
                    let why = format!(
                        "not an EC2 instance ({dmi}; IMDS did not answer: {e}): remediation identity unavailable, IMDS not asked again"
                    );
                    warn!(problem = %why, "remediation identity unavailable");
                    self.not_ec2 = Some(why.clone());
                    if needs_instance(rem) {
                        problems.push(why);
                    }
                }
                Err(e) if needs_instance(rem) => problems.push(format!("IMDS: {e}")),
                Err(_) => {}
            }
        }
        if problems != self.problems {
            for p in problems
                .iter()
                .filter(|p| self.not_ec2.as_ref() != Some(*p))
            {
                warn!(problem = %p, "remediation identity lookup failed; retrying every {IDENTITY_RETRY:?}");
            }
            self.problems = problems;
        }
    }
}

/// The instance id is needed by `asg-unhealthy` and by the budget (its group).
fn needs_instance(rem: &Remediate) -> bool {
    rem.actions.contains(&Action::AsgUnhealthy) || rem.fleet.enabled()
}

/// IMDS gave no answer at all (refused, timed out), as opposed to an error status.
fn unanswered(e: &IdentityError) -> bool {
    matches!(
        e,
        IdentityError::Http(HttpError::Io { .. } | HttpError::Timeout { .. })
    )
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub instance_id: String,
    pub region: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcsInstance {
    pub cluster: String,
    pub container_instance_arn: String,
}

impl EcsInstance {
    /// The region inside the ARN (`arn:aws:ecs:REGION:ACCOUNT:container-instance/...`), so a
    /// drain needs no IMDS.
    pub fn region(&self) -> Option<&str> {
        let mut parts = self.container_instance_arn.split(':');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("arn"), Some(_), Some("ecs"), Some(r)) if !r.is_empty() => Some(r),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("{what}: unexpected answer {body:?}")]
    Invalid { what: &'static str, body: String },
}

/// IMDSv2: a session token (PUT), then the instance id and region (GET with the token).
pub async fn instance(base: &str, timeout: Duration) -> Result<Instance, IdentityError> {
    let token = httpc::request(
        "PUT",
        &format!("{base}/latest/api/token"),
        &[("X-aws-ec2-metadata-token-ttl-seconds", IMDS_TOKEN_TTL)],
        timeout,
    )
    .await?;
    let token = token.trim();
    let get = |path: &'static str| {
        let url = format!("{base}/latest/meta-data/{path}");
        async move { httpc::request("GET", &url, &[("X-aws-ec2-metadata-token", token)], timeout).await }
    };
    let instance_id = get("instance-id").await?.trim().to_owned();
    if !instance_id.starts_with("i-") || instance_id.len() > 19 {
        return Err(IdentityError::Invalid {
            what: "IMDS instance-id",
            body: instance_id,
        });
    }
    let region = get("placement/region").await?.trim().to_owned();
    if region.is_empty()
        || !region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(IdentityError::Invalid {
            what: "IMDS placement/region",
            body: region,
        });
    }
    Ok(Instance {
        instance_id,
        region,
    })
}

#[derive(Deserialize)]
struct Metadata {
    #[serde(rename = "Cluster")]
    cluster: Option<String>,
    #[serde(rename = "ContainerInstanceArn")]
    container_instance_arn: Option<String>,
}

/// `GET {base}/v1/metadata` of the ECS agent. Before the agent has registered, the ARN is
/// missing: that is an error here, so the caller keeps trying.
pub async fn ecs_instance(base: &str, timeout: Duration) -> Result<EcsInstance, IdentityError> {
    let body = httpc::request("GET", &format!("{base}/v1/metadata"), &[], timeout).await?;
    let invalid = || IdentityError::Invalid {
        what: "ECS introspection /v1/metadata",
        body: body.chars().take(200).collect(),
    };
    let m: Metadata = serde_json::from_str(&body).map_err(|_| invalid())?;
    match (m.cluster, m.container_instance_arn) {
        (Some(cluster), Some(arn)) if !cluster.is_empty() && arn.starts_with("arn:") => {
            Ok(EcsInstance {
                cluster,
                container_instance_arn: arn,
            })
        }
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_from_arn() {
        let e = EcsInstance {
            cluster: "c".into(),
            container_instance_arn: "arn:aws:ecs:eu-west-1:123456789012:container-instance/c/abc"
                .into(),
        };
        assert_eq!(e.region(), Some("eu-west-1"));
        let e = EcsInstance {
            cluster: "c".into(),
            container_instance_arn: "arn:aws:s3:::bucket".into(),
        };
        assert_eq!(e.region(), None);
    }
}
