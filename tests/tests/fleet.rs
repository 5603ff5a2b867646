//! The shared out-of-service budget end to end: several real agents on this host, each with its
//! own IMDSv2 + ECS introspection fixture naming a different instance of one moto Auto Scaling
//! group, all watching the same critical XFS, so one `xfs_io -x -c shutdown` fails all of them
//! at the same moment. moto (DynamoDB, Auto Scaling, ECS) runs with one request at a time
//! (`tests/aws/moto_serial.py`), because real DynamoDB is linearizable per item and moto's
//! threaded server is not; `serialized_moto_never_over_grants` shows the serialization holds.
//!
//! Needs root and moto (`.ci/run` installs it).

use std::time::{Duration, Instant};

use bindsto_tests::{
    Agent, FaultyDisk, XfsMount,
    aws::Moto,
    faultyfs_bin,
    fleet::{
        GROUP, Group, Host, POLL, TABLE, agent_bin, bindsto_now_ms, fleet, fleet_cli, host, init,
        wait_all,
    },
    ladder::{ENV, metric, outcome, phase},
    privileged,
};
use serde_json::Value;

#[test]
fn serialized_moto_never_over_grants() {
    let moto = Moto::start_serialized().expect("moto");
    let v = moto.ctl(&["race", "race", "20", "12", "2"]).expect("race");
    println!("FLEET moto race: {v}");
    assert_eq!(v["trials"], 20);
    assert_eq!(v["over_granted"], 0, "{v}");
    // Both kinds of conditional write (PutItem as the agent uses, UpdateItem), and no read of
    // a half-written item.
    assert_eq!(v["over_granted_put"], 0, "{v}");
    assert_eq!(v["over_granted_update"], 0, "{v}");
    assert_eq!(v["torn_reads"], 0, "{v}");
}

#[test]
fn budget_grants_exactly_two_of_three_failing_hosts() {
    let _g = privileged();
    let mut over_granted = 0;
    let rounds = 2;
    for round in 0..rounds {
        let g = Group::new(10);
        let disk = FaultyDisk::with_binary(faultyfs_bin!(), 300).expect("disk");
        let xfs = XfsMount::new(&disk).expect("xfs");
        let hosts: Vec<Host> = (0..3).map(|i| host(&g, i, xfs.path(), "5m")).collect();
        if round == 0 {
            let (ok, out) = fleet_cli(&hosts[0].config, &["init", "--region", "us-east-1"]);
            assert!(ok && out.contains("created table"), "{out}");
            let (ok, out) = fleet_cli(&hosts[0].config, &["init", "--region", "us-east-1"]);
            assert!(
                ok && out.contains("already exists"),
                "init is idempotent: {out}"
            );
        } else {
            assert!(fleet_cli(&hosts[0].config, &["init", "--region", "us-east-1"]).0);
        }

        xfs.shutdown().expect("xfs_io shutdown");
        let t0 = Instant::now();
        // Two go out, one waits.
        let deadline = t0 + Duration::from_secs(60);
        loop {
            let phases: Vec<String> = hosts.iter().map(|h| phase(&h.agent.status())).collect();
            let done = phases.iter().filter(|p| *p == "done").count();
            let held = phases.iter().filter(|p| *p == "held").count();
            if done == 2 && held == 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "phases {phases:?}\n{}",
                hosts[0].agent.log()
            );
            std::thread::sleep(POLL);
        }
        println!(
            "FLEET round {round}: 2 out, 1 held after {} ms",
            t0.elapsed().as_millis()
        );
        // Held hosts retry every ~1 s: still exactly two out a while later.
        std::thread::sleep(Duration::from_secs(5));
        let out = g.out_of_service();
        if out > 2 {
            over_granted += 1;
        }
        assert_eq!(out, 2, "moto: {:?}", g.state());
        let mut held = 0;
        for h in &hosts {
            let s = h.agent.status();
            let (code, body) = h.agent.healthz();
            let f = fleet(&s);
            if phase(&s) == "held" {
                held += 1;
                assert_eq!(outcome(&s, "ecs-drain"), "held_by_budget", "{s:#}");
                assert_eq!(outcome(&s, "asg-unhealthy"), "held_by_budget", "{s:#}");
                assert_eq!(f["state"], "held", "{f:#}");
                assert_eq!(f["lease_held"], false);
                assert_eq!(f["holders"].as_array().unwrap().len(), 2, "{f:#}");
                assert!(
                    f["detail"].as_str().unwrap().contains("2 of 2 slots"),
                    "{f:#}"
                );
                assert_eq!(code, 200, "a held host must not ask to be replaced: {body}");
                let b: Value = serde_json::from_str(&body).expect("healthz JSON");
                assert_eq!(b["healthy"], false);
                assert!(
                    b["held"]
                        .as_str()
                        .is_some_and(|h| h.contains("no out-of-service lease")),
                    "{b}"
                );
                assert!(
                    metric(
                        &h.agent,
                        "bindsto_remediations_total{action=\"ecs-drain\",outcome=\"held_by_budget\"}"
                    ) >= 2
                );
                assert_eq!(metric(&h.agent, "bindsto_fleet_lease_held"), 0);
            } else {
                assert_eq!(f["state"], "holding", "{f:#}");
                assert_eq!(f["lease_held"], true);
                assert_eq!(code, 503, "{body}");
                assert_eq!(metric(&h.agent, "bindsto_fleet_lease_held"), 1);
            }
            assert_eq!(f["group"], GROUP);
            assert_eq!(f["budget"], 2);
            assert_eq!(f["failing"].as_array().unwrap().len(), 3, "{f:#}");
        }
        assert_eq!(held, 1);
        let (ok, out) = fleet_cli(
            &hosts[0].config,
            &[
                "status",
                "--group",
                GROUP,
                "--region",
                "us-east-1",
                "--json",
            ],
        );
        assert!(ok, "{out}");
        let j: Value =
            serde_json::from_str(&out[out.find('{').unwrap()..]).expect("fleet status JSON");
        assert_eq!(j["holders"].as_array().unwrap().len(), 2, "{j:#}");
        assert_eq!(j["failing"].as_array().unwrap().len(), 3, "{j:#}");
        drop(hosts);
        drop(xfs);
    }
    println!("FLEET over_granted={over_granted} rounds={rounds}");
    assert_eq!(over_granted, 0);
}

/// Creates the table with `bindsto fleet init`.
#[test]
fn a_fleet_outage_takes_no_host_out() {
    let _g = privileged();
    let g = Group::new(10);
    let disk = FaultyDisk::with_binary(faultyfs_bin!(), 300).expect("disk");
    let xfs = XfsMount::new(&disk).expect("xfs");
    let mut hosts: Vec<Host> = (0..8).map(|i| host(&g, i, xfs.path(), "5m")).collect();
    init(&hosts[0]);
    xfs.shutdown().expect("xfs_io shutdown");
    // 8 of 10 failing > 50%: each failing host says fleet_outage; at most the budget (if one
    // asked before the others had recorded their failure) goes out.
    wait_all(&mut hosts, "fleet_outage", |s| {
        fleet(s)["state"] == "outage"
    });
    std::thread::sleep(Duration::from_secs(3));
    let out = g.out_of_service();
    println!("FLEET outage: {out} of 8 failing hosts out of service (budget 2)");
    assert!(out <= 2, "moto: {:?}", g.state());
    for h in &hosts {
        let s = h.agent.status();
        assert_eq!(fleet(&s)["outage"], true, "{:#}", fleet(&s));
        assert_eq!(metric(&h.agent, "bindsto_fleet_outage"), 1);
        if fleet(&s)["lease_held"] == false {
            assert_eq!(h.agent.healthz().0, 200);
            assert!(
                fleet(&s)["detail"]
                    .as_str()
                    .unwrap()
                    .contains("fleet_outage")
            );
        }
    }
    // Recovery: the shut-down XFS is unmounted and mounted again at the same path (log
    // recovery); once healthy for hold_down every host gives its lease and record back.
    xfs.unmount_in_place().expect("unmount the shut-down XFS");
    xfs.mount_again().expect("mount again");
    wait_all(&mut hosts, "idle", |s| {
        fleet(s)["state"] == "idle" && s["healthy"] == true
    });
    let item = g.moto.ctl(&["item", TABLE, GROUP]).expect("item");
    let state: Value = serde_json::from_str(item["item"]["state"]["S"].as_str().unwrap()).unwrap();
    assert!(
        state["holders"].as_object().unwrap().is_empty(),
        "left held: {state:#}"
    );
    assert!(
        state["failing"].as_object().unwrap().is_empty(),
        "left failing: {state:#}"
    );
}

#[test]
fn an_expired_lease_frees_the_slot_for_a_waiting_host() {
    let _g = privileged();
    let g = Group::new(10);
    let disk = FaultyDisk::with_binary(faultyfs_bin!(), 300).expect("disk");
    let xfs = XfsMount::new(&disk).expect("xfs");
    let mut hosts: Vec<Host> = (0..3).map(|i| host(&g, i, xfs.path(), "6s")).collect();
    init(&hosts[0]);
    xfs.shutdown().expect("xfs_io shutdown");
    let deadline = Instant::now() + Duration::from_secs(60);
    let waiting = loop {
        let held: Vec<usize> = (0..3)
            .filter(|i| phase(&hosts[*i].agent.status()) == "held")
            .collect();
        let done = (0..3)
            .filter(|i| phase(&hosts[*i].agent.status()) == "done")
            .count();
        if held.len() == 1 && done == 2 {
            break held[0];
        }
        assert!(Instant::now() < deadline, "no 2 out + 1 held");
        std::thread::sleep(POLL);
    };
    // kill -9 the holders: nobody renews their leases.
    let holders_at = |g: &Group| -> Value {
        let item = g.moto.ctl(&["item", TABLE, GROUP]).expect("item");
        let st: Value = serde_json::from_str(item["item"]["state"]["S"].as_str().unwrap()).unwrap();
        st["holders"].clone()
    };
    let mut last_renewal = None;
    for i in (0..3).filter(|i| *i != waiting) {
        hosts[i].agent.kill9();
        let t = Instant::now();
        last_renewal = Some(last_renewal.map_or(t, |l: Instant| l.max(t)));
    }
    let killed = last_renewal.unwrap();
    // ... and their instances leave the group (replaced): 8 of 10 remain, a budget of 1.
    let gone: Vec<&str> = (0..3)
        .filter(|i| *i != waiting)
        .map(|i| g.instances[i].as_str())
        .collect();
    let mut detach = vec!["detach"];
    detach.extend(&gone);
    g.moto.ctl(&detach).expect("detach");
    // Read after the kill: the leases as their holders last renewed them.
    let frees_at = holders_at(&g)
        .as_object()
        .unwrap()
        .values()
        .map(|l| l["expires_ms"].as_u64().unwrap())
        .min()
        .unwrap();
    hosts[waiting]
        .agent
        .wait_for(Duration::from_secs(40), POLL, |s| {
            fleet(s)["lease_held"] == true && phase(s) == "done"
        })
        .unwrap_or_else(|e| {
            panic!(
                "the waiting host never acquired: {e}\n{}",
                hosts[waiting].agent.log()
            )
        });
    let took = killed.elapsed();
    let acquired_at = holders_at(&g)[&g.instances[waiting]]["since_ms"]
        .as_u64()
        .unwrap();
    println!(
        "FLEET expired lease: holders killed -> waiting host out after {} ms; slot_free_to_acquire_ms={} (lease 6 s, renewed every 2 s, retry 1 s jittered)",
        took.as_millis(),
        acquired_at.saturating_sub(frees_at)
    );
    assert!(acquired_at >= frees_at, "acquired before the lease expired");
    // A lease is free only after `lease` without renewal.
    assert!(took >= Duration::from_secs(3), "acquired after {took:?}");
    // Never more than the budget out at once: the group is 8 now, a budget of 1, and only
    // the waiting host holds a live lease.
    let item = g.moto.ctl(&["item", TABLE, GROUP]).expect("item");
    let state: Value = serde_json::from_str(item["item"]["state"]["S"].as_str().unwrap()).unwrap();
    let live = state["holders"]
        .as_object()
        .unwrap()
        .values()
        .filter(|l| l["expires_ms"].as_u64().unwrap() > bindsto_now_ms())
        .count();
    assert_eq!(live, 1, "{state:#}");
}

#[test]
fn a_restarted_holder_keeps_its_lease_and_repeats_nothing() {
    let _g = privileged();
    let g = Group::new(5);
    let disk = FaultyDisk::with_binary(faultyfs_bin!(), 300).expect("disk");
    let xfs = XfsMount::new(&disk).expect("xfs");
    let mut h = host(&g, 0, xfs.path(), "5m");
    init(&h);
    xfs.shutdown().expect("xfs_io shutdown");
    h.agent
        .wait_for(Duration::from_secs(60), POLL, |s| phase(s) == "done")
        .unwrap_or_else(|e| panic!("no ladder: {e}\n{}", h.agent.log()));
    let before = g.moto.ctl(&["item", TABLE, GROUP]).expect("item");
    // A crash (kill -9), then a clean stop (SIGTERM, as `systemctl restart` or an upgrade):
    // neither gives the lease back while the storage is failed.
    h.agent.kill9();
    let mut agent = Agent::start_with_env(agent_bin(), &h.config, &[], &ENV).expect("restart");
    for how in ["kill -9", "SIGTERM"] {
        if how == "SIGTERM" {
            agent.stop();
            agent = Agent::start_with_env(agent_bin(), &h.config, &[], &ENV).expect("restart");
        }
        agent
            .wait_for(Duration::from_secs(60), POLL, |s| {
                fleet(s)["lease_held"] == true
            })
            .unwrap_or_else(|e| panic!("{how}: lease not found again: {e}\n{}", agent.log()));
        let s = agent.status();
        assert_eq!(phase(&s), "done", "{how}");
        for a in ["ecs-drain", "asg-unhealthy"] {
            assert_eq!(outcome(&s, a), "done", "{how}");
            assert_eq!(
                metric(
                    &agent,
                    &format!("bindsto_remediations_total{{action=\"{a}\",outcome=\"done\"}}")
                ),
                0,
                "{how}: {a} ran again"
            );
        }
        assert_eq!(agent.healthz().0, 503, "{how}: a holder answers 503");
        let after = g.moto.ctl(&["item", TABLE, GROUP]).expect("item");
        let holders = |v: &Value| -> Value {
            let st: Value =
                serde_json::from_str(v["item"]["state"]["S"].as_str().unwrap()).unwrap();
            st["holders"].clone()
        };
        let (b, a) = (holders(&before), holders(&after));
        assert_eq!(a.as_object().unwrap().len(), 1, "{how}: {a:#}");
        assert_eq!(
            a[&g.instances[0]]["since_ms"], b[&g.instances[0]]["since_ms"],
            "{how}: the same lease"
        );
    }
}
