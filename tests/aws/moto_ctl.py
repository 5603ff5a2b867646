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


def fleet_setup(url, n):
    """An Auto Scaling group of N instances, every one a registered ECS container instance."""
    out = setup(url, n, 0)
    ecs = client(url, "ecs")
    arns = [out["container_instance_arn"]]
    for inst in out["instances"][1:]:
        doc = json.dumps({"instanceId": inst, "region": REGION, "accountId": "123456789012"})
        reg = ecs.register_container_instance(cluster=CLUSTER, instanceIdentityDocument=doc)
        arns.append(reg["containerInstance"]["containerInstanceArn"])
    out["arns"] = arns
    return out


def fleet_state(url, arns):
    ecs = client(url, "ecs")
    ci = ecs.describe_container_instances(cluster=CLUSTER, containerInstances=arns)
    status = {c["containerInstanceArn"]: c["status"] for c in ci["containerInstances"]}
    asg = client(url, "autoscaling")
    group = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[GROUP])
    health = {i["InstanceId"]: i["HealthStatus"] for i in group["AutoScalingGroups"][0]["Instances"]}
    return {"container_status": [status.get(a) for a in arns], "health": health}


def race(url, table, trials, clients, budget):
    """CLIENTS threads race read-then-conditional-write for a slot of BUDGET in one item.

    Each trial races twice, on fresh items: with PutItem (what the agent writes) and with
    UpdateItem. Every client has its own boto3 session (the default session is not
    thread-safe) made before the trial, and all start together at a barrier. A trial over-grants
    when more than BUDGET clients saw their conditional write succeed; a torn read is an item
    read without its `state` (half-made by a concurrent write). Measured against moto's threaded
    server (12 clients, budget 2): UpdateItem races over-granted in 1 to 4 of 60 to 150 trials
    and a read saw a half-made item; PutItem over-granted in none of 200. So a pass here is
    weak evidence by itself; serialized (moto_serial.py), neither may ever happen.
    """
    import threading

    def session_client():
        return boto3.session.Session().client(
            "dynamodb",
            endpoint_url=url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    ddb = session_client()
    try:
        ddb.create_table(
            TableName=table,
            AttributeDefinitions=[{"AttributeName": "group", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "group", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
    except ddb.exceptions.ResourceInUseException:
        pass
    cs = [session_client() for _ in range(clients)]

    def write(c, op, key, item, state):
        version = {"N": str(int(item["version"]["N"]) + 1 if item else 1)}
        if item:
            cond = "#v = :v"
            names = {"#v": "version"}
            values = {":v": item["version"]}
        else:
            cond = "attribute_not_exists(#g)"
            names = {"#g": "group"}
            values = {}
        if op == "put":
            args = {"ExpressionAttributeValues": values} if values else {}
            c.put_item(
                TableName=table,
                Item={"group": {"S": key}, "version": version, "state": {"S": state}},
                ConditionExpression=cond,
                ExpressionAttributeNames=names,
                **args,
            )
        else:
            names.update({"#s": "state", "#n": "version"})
            values.update({":s": {"S": state}, ":n": version})
            c.update_item(
                TableName=table,
                Key={"group": {"S": key}},
                UpdateExpression="SET #s = :s, #n = :n",
                ConditionExpression=cond,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )

    def trial(op, key):
        granted, torn, errors = [], [], []
        lock = threading.Lock()
        barrier = threading.Barrier(clients)

        def one(k):
            c, me = cs[k], f"h{k}"
            try:
                barrier.wait()
                while True:
                    item = c.get_item(
                        TableName=table, Key={"group": {"S": key}}, ConsistentRead=True
                    ).get("Item")
                    if item and "state" not in item:
                        with lock:
                            torn.append(me)
                        continue
                    holders = json.loads(item["state"]["S"])["holders"] if item else {}
                    if len(holders) >= budget:
                        return
                    holders[me] = {"reason": "race"}
                    try:
                        write(c, op, key, item, json.dumps({"holders": holders, "failing": {}}))
                    except c.exceptions.ConditionalCheckFailedException:
                        continue
                    with lock:
                        granted.append(me)
                    return
            except Exception as e:  # reported, not swallowed: a broken race proves nothing
                with lock:
                    errors.append(f"{me}: {e!r}")

        threads = [threading.Thread(target=one, args=(k,)) for k in range(clients)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise SystemExit(f"race {op} {key}: {errors}")
        return len(granted), len(torn)

    over = {"put": 0, "update": 0}
    either, torn_reads, max_granted = 0, 0, 0
    for t in range(trials):
        bad = False
        for op in ("put", "update"):
            granted, torn = trial(op, f"race-{op}-{t}")
            max_granted = max(max_granted, granted)
            torn_reads += torn
            if granted > budget:
                over[op] += 1
                bad = True
        either += bad
    return {
        "trials": trials,
        "clients": clients,
        "budget": budget,
        "over_granted": either,
        "over_granted_put": over["put"],
        "over_granted_update": over["update"],
        "torn_reads": torn_reads,
        "max_granted": max_granted,
    }


def main():
    url, cmd, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    if cmd == "setup":
        out = setup(url, int(args[0]), int(args[1]))
    elif cmd == "state":
        out = state(url, *args)
    elif cmd == "fleet-setup":
        out = fleet_setup(url, int(args[0]))
    elif cmd == "fleet-state":
        out = fleet_state(url, args)
    elif cmd == "race":
        out = race(url, args[0], int(args[1]), int(args[2]), int(args[3]))
    elif cmd == "item":
        item = client(url, "dynamodb").get_item(
            TableName=args[0], Key={"group": {"S": args[1]}}, ConsistentRead=True
        ).get("Item")
        out = {"item": item}
    elif cmd == "detach":
        # Instances leave the group (terminated, scaled in): the group shrinks.
        client(url, "autoscaling").detach_instances(
            InstanceIds=args, AutoScalingGroupName=GROUP, ShouldDecrementDesiredCapacity=True
        )
        out = {}
    elif cmd == "set-health":
        client(url, "autoscaling").set_instance_health(InstanceId=args[0], HealthStatus=args[1])
        out = {}
    else:
        raise SystemExit(f"unknown command {cmd}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
