#!/usr/bin/env python3
"""Sets up and reads the AWS side of the remediation tests in a moto server.

Used by tests/src/aws.rs; talks to moto with boto3 (installed with moto). Every command prints
one JSON object on stdout.

  moto_ctl.py URL setup N_INSTANCES N_UNHEALTHY   -> {"instances": [...], "me": ..., "group": ...,
                                                      "cluster": ..., "container_instance_arn": ...}
  moto_ctl.py URL state ME CLUSTER ARN            -> {"container_status": ..., "health": ...,
                                                      "group_health": {...}}
  moto_ctl.py URL set-health INSTANCE STATUS      -> {}
"""

import json
import sys

import boto3

REGION = "us-east-1"
GROUP = "bindsto-test-asg"
CLUSTER = "bindsto-test-cluster"
TEMPLATE = "bindsto-test-template"


def client(url, service):
    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def setup(url, n, n_unhealthy):
    ec2 = client(url, "ec2")
    image = ec2.describe_images()["Images"][0]["ImageId"]
    ec2.create_launch_template(
        LaunchTemplateName=TEMPLATE,
        LaunchTemplateData={"ImageId": image, "InstanceType": "t3.micro"},
    )
    asg = client(url, "autoscaling")
    asg.create_auto_scaling_group(
        AutoScalingGroupName=GROUP,
        LaunchTemplate={"LaunchTemplateName": TEMPLATE, "Version": "$Latest"},
        MinSize=n,
        MaxSize=n,
        DesiredCapacity=n,
        AvailabilityZones=[REGION + "a"],
    )
    group = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])
    instances = [i["InstanceId"] for i in group["AutoScalingGroups"][0]["Instances"]]
    assert len(instances) == n, instances
    me = instances[0]
    for other in instances[1 : 1 + n_unhealthy]:
        asg.set_instance_health(InstanceId=other, HealthStatus="Unhealthy")
    ecs = client(url, "ecs")
    ecs.create_cluster(clusterName=CLUSTER)
    doc = json.dumps({"instanceId": me, "region": REGION, "accountId": "123456789012"})
    reg = ecs.register_container_instance(cluster=CLUSTER, instanceIdentityDocument=doc)
    arn = reg["containerInstance"]["containerInstanceArn"]
    return {
        "instances": instances,
        "me": me,
        "group": GROUP,
        "cluster": CLUSTER,
        "container_instance_arn": arn,
    }


def state(url, me, cluster, arn):
    ecs = client(url, "ecs")
    ci = ecs.describe_container_instances(cluster=cluster, containerInstances=[arn])
    asg = client(url, "autoscaling")
    group = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])
    health = {i["InstanceId"]: i["HealthStatus"] for i in group["AutoScalingGroups"][0]["Instances"]}
    return {
        "container_status": ci["containerInstances"][0]["status"],
        "health": health.get(me),
        "group_health": health,
    }


def main():
    url, cmd, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    if cmd == "setup":
        out = setup(url, int(args[0]), int(args[1]))
    elif cmd == "state":
        out = state(url, *args)
    elif cmd == "set-health":
        client(url, "autoscaling").set_instance_health(InstanceId=args[0], HealthStatus=args[1])
        out = {}
    else:
        raise SystemExit(f"unknown command {cmd}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
