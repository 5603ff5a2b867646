//! The AWS side of the ladder, through the official SDK: ECS drain, the fleet breaker and
//! Auto Scaling SetInstanceHealth. Retries with exponential backoff on throttling and transient
//! errors are the SDK's standard retry mode, capped at `aws_max_attempts`.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, retry::RetryConfig, timeout::TimeoutConfig};
use aws_sdk_autoscaling::types::LifecycleState;
use aws_sdk_ecs::{error::DisplayErrorContext, types::ContainerInstanceStatus};

use crate::config::Remediate;

use crate::remedy::identity::{EcsInstance, Instance};

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error("{call}: {message}")]
    Call { call: &'static str, message: String },
    #[error("{call}: {arn}: {reason}")]
    Failure {
        call: &'static str,
        arn: String,
        reason: String,
    },
}

pub fn call_error<E: std::error::Error>(call: &'static str, e: E) -> AwsError {
    AwsError::Call {
        call,
        message: DisplayErrorContext(e).to_string(),
    }
}

pub async fn sdk_config(
    cfg: &Remediate,
    region: &str,
    attempt_timeout: Duration,
) -> aws_config::SdkConfig {
    let mut creds = aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
        .region(Region::new(region.to_owned()));
    // Instance-role credentials come from the same IMDS the identity comes from.
    if let Ok(client) = aws_config::imds::Client::builder().endpoint(&cfg.asg_unhealthy.imds_url) {
        creds = creds.imds_client(client.build());
    }
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .credentials_provider(creds.build().await)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(cfg.aws_max_attempts)
                .with_initial_backoff(Duration::from_millis(200)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(attempt_timeout)
                .connect_timeout(Duration::from_secs(5))
                .build(),
        )
        .load()
        .await
}

/// The ECS client of the `ecs-drain` step: its timeout and endpoint.
async fn ecs_client(cfg: &Remediate, region: &str) -> aws_sdk_ecs::Client {
    let sdk = sdk_config(cfg, region, cfg.ecs_drain.timeout).await;
    let mut conf = aws_sdk_ecs::config::Builder::from(&sdk);
    if let Some(url) = &cfg.ecs_drain.endpoint_url {
        conf = conf.endpoint_url(url);
    }
    aws_sdk_ecs::Client::from_conf(conf.build())
}

/// UpdateContainerInstancesState(DRAINING) for this host's container instance.
pub async fn ecs_drain(
    cfg: &Remediate,
    ecs: &EcsInstance,
    region: &str,
) -> Result<String, AwsError> {
    let client = ecs_client(cfg, region).await;
    let out = client
        .update_container_instances_state()
        .cluster(&ecs.cluster)
        .container_instances(&ecs.container_instance_arn)
        .status(ContainerInstanceStatus::Draining)
        .send()
        .await
        .map_err(|e| call_error("ecs:UpdateContainerInstancesState", e))?;
    if let Some(f) = out.failures().first() {
        return Err(AwsError::Failure {
            call: "ecs:UpdateContainerInstancesState",
            arn: f.arn().unwrap_or_default().to_owned(),
            reason: format!(
                "{}{}",
                f.reason().unwrap_or("unknown reason"),
                f.detail().map(|d| format!(": {d}")).unwrap_or_default()
            ),
        });
    }
    let status = out
        .container_instances()
        .first()
        .and_then(|c| c.status())
        .unwrap_or("DRAINING");
    Ok(format!(
        "container instance {} in cluster {} is {status}",
        ecs.container_instance_arn, ecs.cluster
    ))
}

/// The container instance's status (`DescribeContainerInstances`), asked before repeating a
/// drain that a restart interrupted: if the first call reached ECS, it is not sent again.
pub async fn ecs_status(
    cfg: &Remediate,
    ecs: &EcsInstance,
    region: &str,
) -> Result<Option<String>, AwsError> {
    let client = ecs_client(cfg, region).await;
    let out = client
        .describe_container_instances()
        .cluster(&ecs.cluster)
        .container_instances(&ecs.container_instance_arn)
        .send()
        .await
        .map_err(|e| call_error("ecs:DescribeContainerInstances", e))?;
    Ok(out
        .container_instances()
        .first()
        .and_then(|c| c.status())
        .map(str::to_owned))
}

/// The fleet breaker's view of this instance's Auto Scaling group.
#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    pub group: String,
    pub total: usize,
    /// Other instances that are unhealthy or not InService.
    pub out_of_service: usize,
    /// This instance is already marked unhealthy (a SetInstanceHealth that an agent restart
    /// interrupted reached Auto Scaling, or its own health check did): nothing to send.
    pub me_unhealthy: bool,
}

impl Fleet {
    /// The breaker's view in one line, as the step and the gate report it.
    pub fn view(&self, limit: f64) -> String {
        format!(
            "group {}: {} of {} other instances unhealthy or not InService ({:.0}%, limit {limit}%)",
            self.group,
            self.out_of_service,
            self.total.saturating_sub(1),
            self.percent_out()
        )
    }

    pub fn percent_out(&self) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        self.out_of_service as f64 * 100.0 / self.total as f64
    }
}

pub struct AutoScaling {
    client: aws_sdk_autoscaling::Client,
}

impl AutoScaling {
    pub async fn new(cfg: &Remediate, region: &str) -> Self {
        let sdk = sdk_config(cfg, region, cfg.asg_unhealthy.timeout).await;
        let mut conf = aws_sdk_autoscaling::config::Builder::from(&sdk);
        if let Some(url) = &cfg.asg_unhealthy.endpoint_url {
            conf = conf.endpoint_url(url);
        }
        AutoScaling {
            client: aws_sdk_autoscaling::Client::from_conf(conf.build()),
        }
    }

    /// The group this instance belongs to and how many of its instances are already out of
    /// service; `None` when the instance is in no group.
    pub async fn fleet(&self, me: &Instance) -> Result<Option<Fleet>, AwsError> {
        let out = self
            .client
            .describe_auto_scaling_instances()
            .instance_ids(&me.instance_id)
            .send()
            .await
            .map_err(|e| call_error("autoscaling:DescribeAutoScalingInstances", e))?;
        let me_unhealthy = out
            .auto_scaling_instances()
            .iter()
            .filter(|i| i.instance_id() == Some(me.instance_id.as_str()))
            .any(|i| {
                i.health_status()
                    .is_some_and(|h| h.eq_ignore_ascii_case("unhealthy"))
            });
        let Some(group) = out
            .auto_scaling_instances()
            .iter()
            .find_map(|i| i.auto_scaling_group_name())
            .map(str::to_owned)
        else {
            return Ok(None);
        };
        let out = self
            .client
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(&group)
            .send()
            .await
            .map_err(|e| call_error("autoscaling:DescribeAutoScalingGroups", e))?;
        let instances = out
            .auto_scaling_groups()
            .iter()
            .find(|g| g.auto_scaling_group_name() == Some(group.as_str()))
            .map(aws_sdk_autoscaling::types::AutoScalingGroup::instances)
            .unwrap_or_default();
        let out_of_service = instances
            .iter()
            .filter(|i| i.instance_id() != Some(me.instance_id.as_str()))
            .filter(|i| {
                i.health_status()
                    .is_some_and(|h| !h.eq_ignore_ascii_case("healthy"))
                    || i.lifecycle_state() != Some(&LifecycleState::InService)
            })
            .count();
        Ok(Some(Fleet {
            group,
            total: instances.len(),
            out_of_service,
            me_unhealthy,
        }))
    }

    pub async fn set_unhealthy(
        &self,
        me: &Instance,
        respect_grace_period: bool,
    ) -> Result<(), AwsError> {
        self.client
            .set_instance_health()
            .instance_id(&me.instance_id)
            .health_status("Unhealthy")
            .should_respect_grace_period(respect_grace_period)
            .send()
            .await
            .map_err(|e| call_error("autoscaling:SetInstanceHealth", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_percentages() {
        let f = Fleet {
            group: "g".into(),
            total: 5,
            out_of_service: 1,
            me_unhealthy: false,
        };
        assert_eq!(f.percent_out(), 20.0);
        let f = Fleet {
            group: "g".into(),
            total: 0,
            out_of_service: 0,
            me_unhealthy: false,
        };
        assert_eq!(f.percent_out(), 0.0);
    }
}
