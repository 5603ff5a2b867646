//! Who this host is, as the ladder's AWS calls need it: the EC2 instance id and region from
//! IMDSv2, and the ECS cluster and container instance ARN from the ECS agent's introspection
//! API. Both are read at start and cached, because by the time the ladder runs the ECS agent
//! may be gone (it is one of the things the ladder stops).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::client::{self as httpc, HttpError};

const IMDS_TOKEN_TTL: &str = "300";

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
