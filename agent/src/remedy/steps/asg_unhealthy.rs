//! The `asg-unhealthy` step: SetInstanceHealth(Unhealthy) for this instance, so Auto Scaling
//! replaces it, unless the fleet breaker finds too much of the group already out of service.
//! With a budget table the lease, taken before the ladder, is what limits the group: the breaker
//! is not asked again here.

use std::time::SystemTime;

use super::{StepResult, aws};
use crate::config::Remediate;
use crate::remedy::identity::Identity;
use crate::remedy::incident::StepOutcome;

pub async fn mark_unhealthy(rem: &Remediate, dry: bool, identity: &mut Identity) -> StepResult {
    if identity.instance.is_none() {
        identity.refresh(rem).await;
    }
    let Some(me) = identity.instance.clone() else {
        return StepResult::unknown(dry, "instance id unknown: IMDS never answered", identity);
    };
    let a = &rem.asg_unhealthy;
    let region = a.region.clone().unwrap_or_else(|| me.region.clone());
    let work = async {
        let asg = aws::AutoScaling::new(rem, &region).await;
        let Some(fleet) = asg.fleet(&me).await? else {
            return Ok(StepResult::new(
                StepOutcome::Skipped,
                format!("instance {} is in no Auto Scaling group", me.instance_id),
            ));
        };
        let view = fleet.view(a.fleet_max_unhealthy_percent);
        if fleet.me_unhealthy && !dry {
            return Ok(StepResult::done(format!(
                "instance {} is already Unhealthy (not sent again); {view}",
                me.instance_id
            )));
        }
        let hold = !rem.fleet.enabled() && fleet.percent_out() > a.fleet_max_unhealthy_percent;
        if dry {
            let verdict = if hold {
                "the fleet breaker would hold back"
            } else {
                "would set"
            };
            return Ok(StepResult::dry_run(format!(
                "{verdict} instance {} Unhealthy; {view}",
                me.instance_id
            )));
        }
        if hold {
            return Ok(StepResult {
                retry_at: Some(SystemTime::now() + a.breaker_retry),
                ..StepResult::new(
                    StepOutcome::HeldByBreaker,
                    format!("not setting instance {} Unhealthy; {view}", me.instance_id),
                )
            });
        }
        asg.set_unhealthy(&me, a.respect_grace_period).await?;
        Ok::<_, aws::AwsError>(StepResult::done(format!(
            "instance {} set Unhealthy; {view}",
            me.instance_id
        )))
    };
    match tokio::time::timeout(a.timeout, work).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => StepResult::failed(e.to_string()),
        Err(_) => StepResult::failed(format!("timed out after {:?}", a.timeout)),
    }
}
