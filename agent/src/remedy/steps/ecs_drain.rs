//! The `ecs-drain` step: this host's ECS container instance set to DRAINING, so ECS moves its
//! tasks elsewhere. A drain a restart interrupted is looked up first, so the call is made once.

use tracing::warn;

use super::{StepResult, aws};
use crate::config::Remediate;
use crate::remedy::identity::Identity;

pub async fn drain(
    rem: &Remediate,
    dry: bool,
    identity: &mut Identity,
    resumed: bool,
) -> StepResult {
    if identity.ecs.is_none() {
        identity.refresh(rem).await;
    }
    let Some(ecs) = identity.ecs.clone() else {
        return StepResult::unknown(
            dry,
            "container instance unknown: the ECS introspection API never answered",
            identity,
        );
    };
    let region = ecs
        .region()
        .map(str::to_owned)
        .or_else(|| rem.asg_unhealthy.region.clone())
        .or_else(|| identity.instance.as_ref().map(|i| i.region.clone()));
    let Some(region) = region else {
        return StepResult::failed("no region: not in the ARN, not configured, no IMDS");
    };
    if dry {
        return StepResult::dry_run(format!(
            "would set container instance {} in cluster {} to DRAINING",
            ecs.container_instance_arn, ecs.cluster
        ));
    }
    let budget = rem.ecs_drain.timeout;
    // An interrupted drain may have reached ECS before the agent died: look before acting,
    // so the call is made once. A failed look falls through to the (idempotent) drain.
    if resumed {
        match tokio::time::timeout(budget, aws::ecs_status(rem, &ecs, &region)).await {
            Ok(Ok(Some(status))) if status == "DRAINING" => {
                return StepResult::done(format!(
                    "container instance {} in cluster {} is already DRAINING (the interrupted call reached ECS; not sent again)",
                    ecs.container_instance_arn, ecs.cluster
                ));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "cannot read the container instance's status; draining again");
            }
            Err(_) => {
                warn!("reading the container instance's status timed out; draining again");
            }
        }
    }
    match tokio::time::timeout(budget, aws::ecs_drain(rem, &ecs, &region)).await {
        Ok(Ok(detail)) => StepResult::done(detail),
        Ok(Err(e)) => StepResult::failed(e.to_string()),
        Err(_) => StepResult::failed(format!("timed out after {budget:?}")),
    }
}
