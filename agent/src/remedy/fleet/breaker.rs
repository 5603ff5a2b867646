//! Without a budget table: the Auto Scaling breaker gates every out-of-service step. If more
//! than `fleet_max_unhealthy_percent` of the group's other instances are unhealthy or not
//! InService, the ladder holds and asks again at a jittered time spread over `breaker_retry`.
//! Best effort: hosts that look at the same moment all see the same group, so several may act
//! together; only the table makes the limit exact.

use std::time::SystemTime;

use super::{Gate, jittered};
use crate::config::Remediate;
use crate::remedy::identity::Identity;
use crate::remedy::steps::aws;

/// The breaker's answer. A host that cannot know its instance is in no group the breaker can
/// look at, so it goes on (the AWS steps report the missing identity themselves).
pub async fn check(rem: &Remediate, identity: &mut Identity, dry: bool, now: SystemTime) -> Gate {
    if identity.instance.is_none() {
        identity.refresh(rem).await;
    }
    let Some(me) = identity.instance.clone() else {
        return Gate::Go("no instance identity: no group to look at".into());
    };
    let a = &rem.asg_unhealthy;
    let region = a.region.clone().unwrap_or_else(|| me.region.clone());
    let retry_at = jittered(now, a.breaker_retry);
    let asg = aws::AutoScaling::new(rem, &region).await;
    let fleet = match tokio::time::timeout(a.timeout, asg.fleet(&me)).await {
        Ok(Ok(Some(f))) => f,
        Ok(Ok(None)) => {
            return Gate::Go(format!(
                "instance {} is in no Auto Scaling group",
                me.instance_id
            ));
        }
        // Do not act on a group it cannot see.
        Ok(Err(e)) => {
            return Gate::Wait {
                detail: format!("fleet breaker cannot see the group: {e}"),
                retry_at,
            };
        }
        Err(_) => {
            return Gate::Wait {
                detail: format!(
                    "fleet breaker: Auto Scaling did not answer within {:?}",
                    a.timeout
                ),
                retry_at,
            };
        }
    };
    let view = fleet.view(a.fleet_max_unhealthy_percent);
    if fleet.percent_out() > a.fleet_max_unhealthy_percent {
        if dry {
            return Gate::Go(format!(
                "dry run: the fleet breaker would hold back; {view}"
            ));
        }
        return Gate::Wait {
            detail: format!("held by the fleet breaker; {view}"),
            retry_at,
        };
    }
    Gate::Go(view)
}
