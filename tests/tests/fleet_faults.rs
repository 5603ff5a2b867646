//! The shared budget when it cannot be used, and off EC2: a missing table, DynamoDB refused or
//! throttled (no host acts, it says why, it acts once DynamoDB answers), and a machine that is
//! no EC2 instance. The world is tests/src/fleet.rs (real agents, serialized moto).
//!
//! Needs root and moto (`.ci/run` installs it).

use std::time::Duration;

use bindsto_tests::{
    Agent, FaultyDisk, XfsMount,
    aws::{Imds, Recorder},
    faultyfs_bin,
    fleet::{Group, POLL, TABLE, agent_bin, config, fleet, fleet_cli, host, init},
    ladder::{ENV, metric, outcome, phase},
    privileged,
};

#[test]
fn an_unusable_table_holds_every_step_and_says_why() {
    let _g = privileged();
    let g = Group::new(5);
    let disk = FaultyDisk::with_binary(faultyfs_bin!(), 300).expect("disk");
    let xfs = XfsMount::new(&disk).expect("xfs");
    // No table yet: ResourceNotFoundException.
    let mut h = host(&g, 0, xfs.path(), "5m");
    xfs.shutdown().expect("xfs_io shutdown");
    h.agent
        .wait_for(Duration::from_secs(60), POLL, |s| {
            fleet(s)["state"] == "unavailable" && phase(s) == "held"
        })
        .unwrap_or_else(|e| panic!("not held: {e}\n{}", h.agent.log()));
    let s = h.agent.status();
    let problem = fleet(&s)["problem"].as_str().unwrap_or_default().to_owned();
    assert!(
        problem.contains("ResourceNotFound") || problem.contains("not found"),
        "{problem}"
    );
    assert_eq!(outcome(&s, "ecs-drain"), "held_by_budget");
    assert_eq!(g.out_of_service(), 0, "acted without the budget");
    assert_eq!(metric(&h.agent, "bindsto_fleet_unavailable"), 1);
    assert_eq!(h.agent.healthz().0, 200);
    // DynamoDB answers again (the table exists): the host acts, after its backoff.
    init(&h);
    h.agent
        .wait_for(Duration::from_secs(60), POLL, |s| phase(s) == "done")
        .unwrap_or_else(|e| panic!("no recovery: {e}\n{}", h.agent.log()));
    assert_eq!(g.out_of_service(), 1);
    drop(h);

    // Refused: an endpoint where nothing listens.
    let g2 = Group::new(5);
    let disk2 = FaultyDisk::with_binary(faultyfs_bin!(), 300).expect("disk");
    let xfs2 = XfsMount::new(&disk2).expect("xfs");
    let imds = Imds::start(&g2.instances[0], "us-east-1", &g2.cluster, &g2.arns[0]).expect("imds");
    let state = tempfile::tempdir().unwrap();
    let closed_port = bindsto_tests::agent::free_port().unwrap();
    let closed = format!("http://127.0.0.1:{closed_port}");
    let direct = config(&g2, &imds, state.path(), xfs2.path(), "5m");
    // The table exists; only the endpoint the agent uses refuses connections.
    let (ok, out) = fleet_cli(&direct, &["init", "--region", "us-east-1"]);
    assert!(ok, "{out}");
    let cfg = direct.replace(
        &format!(
            "[remediate.fleet]\ntable = \"{TABLE}\"\nendpoint_url = \"{}\"",
            g2.moto.url
        ),
        &format!("[remediate.fleet]\ntable = \"{TABLE}\"\nendpoint_url = \"{closed}\""),
    );
    assert!(cfg.contains(&closed));
    let mut agent = Agent::start_with_env(agent_bin(), &cfg, &[], &ENV).expect("agent");
    agent
        .wait_for(Duration::from_secs(20), POLL, |s| {
            !s["remediation"]["instance"].is_null()
        })
        .unwrap_or_else(|e| panic!("{e}"));
    xfs2.shutdown().expect("shutdown");
    agent
        .wait_for(Duration::from_secs(90), POLL, |s| {
            fleet(s)["state"] == "unavailable"
        })
        .unwrap_or_else(|e| panic!("not unavailable: {e}\n{}", agent.log()));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(g2.out_of_service(), 0);
    let s = agent.status();
    assert!(
        fleet(&s)["problem"].as_str().unwrap().contains("dynamodb:"),
        "{:#}",
        fleet(&s)
    );
    assert_eq!(outcome(&s, "ecs-drain"), "held_by_budget");
    assert_eq!(agent.healthz().0, 200, "held, not out of service");
    // DynamoDB comes back at the same address: the host acts after its backoff, once.
    let back = Recorder::start_on(&format!("127.0.0.1:{closed_port}"), g2.moto.addr)
        .expect("recorder on the refused port");
    let t = std::time::Instant::now();
    agent
        .wait_for(Duration::from_secs(90), POLL, |s| phase(s) == "done")
        .unwrap_or_else(|e| panic!("no recovery after refused: {e}\n{}", agent.log()));
    println!(
        "FLEET refused -> recovered: acted {} ms after DynamoDB answered",
        t.elapsed().as_millis()
    );
    assert_eq!(g2.out_of_service(), 1);
    assert!(back.count("GetItem") >= 1, "{:?}", back.names());
    assert_eq!(agent.healthz().0, 503, "holds the lease: out of service");
}

#[test]
fn throttled_dynamodb_holds_every_step_until_it_answers() {
    let _g = privileged();
    let g = Group::new(5);
    let proxy = Recorder::start(g.moto.addr).expect("recorder");
    proxy
        .throttle_dynamodb
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let disk = FaultyDisk::with_binary(faultyfs_bin!(), 300).expect("disk");
    let xfs = XfsMount::new(&disk).expect("xfs");
    let imds = Imds::start(&g.instances[0], "us-east-1", &g.cluster, &g.arns[0]).expect("imds");
    let state = tempfile::tempdir().unwrap();
    let direct = config(&g, &imds, state.path(), xfs.path(), "5m");
    let (ok, out) = fleet_cli(&direct, &["init", "--region", "us-east-1"]);
    assert!(ok, "{out}");
    // DynamoDB through the throttling proxy; ECS and Auto Scaling straight to moto.
    let cfg = direct.replace(
        &format!("table = \"{TABLE}\"\nendpoint_url = \"{}\"", g.moto.url),
        &format!("table = \"{TABLE}\"\nendpoint_url = \"{}\"", proxy.url()),
    );
    assert!(cfg.contains(&proxy.url()));
    let mut agent = Agent::start_with_env(agent_bin(), &cfg, &[], &ENV).expect("agent");
    agent
        .wait_for(Duration::from_secs(20), POLL, |s| {
            !s["remediation"]["instance"].is_null()
        })
        .unwrap_or_else(|e| panic!("{e}"));
    xfs.shutdown().expect("shutdown");
    agent
        .wait_for(Duration::from_secs(60), POLL, |s| {
            fleet(s)["state"] == "unavailable" && phase(s) == "held"
        })
        .unwrap_or_else(|e| panic!("not held while throttled: {e}\n{}", agent.log()));
    let s = agent.status();
    let problem = fleet(&s)["problem"].as_str().unwrap_or_default().to_owned();
    assert!(problem.contains("Throttling"), "{problem}");
    assert_eq!(g.out_of_service(), 0, "acted while DynamoDB throttled");
    assert_eq!(agent.healthz().0, 200);
    // DynamoDB answers again: the host acts after its backoff.
    proxy
        .throttle_dynamodb
        .store(false, std::sync::atomic::Ordering::SeqCst);
    agent
        .wait_for(Duration::from_secs(60), POLL, |s| phase(s) == "done")
        .unwrap_or_else(|e| panic!("no recovery: {e}\n{}", agent.log()));
    assert_eq!(g.out_of_service(), 1);
    assert!(proxy.count("PutItem") >= 1, "{:?}", proxy.names());
}

#[test]
fn not_on_ec2_the_identity_is_unavailable_once_and_imds_not_asked_again() {
    let _g = privileged();
    let vendor = std::fs::read_to_string("/sys/class/dmi/id/sys_vendor").unwrap_or_default();
    if vendor.contains("Amazon EC2") {
        println!("SKIP: this machine is an EC2 instance");
        return;
    }
    // An IMDS that accepts and never answers, counting connections.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&accepted);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        r#"dry_run = true
[[watch]]
path = "{}"
[remediate]
actions = ["asg-unhealthy"]
state_dir = "{}"
[remediate.asg_unhealthy]
imds_url = "http://{addr}"
"#,
        dir.path().display(),
        dir.path().join("state").display()
    );
    let mut agent = Agent::start_with_env(agent_bin(), &cfg, &[], &ENV).expect("agent");
    agent
        .wait_for(Duration::from_secs(20), POLL, |s| {
            s["remediation"]["problems"].as_array().is_some_and(|p| {
                p.iter().any(|x| {
                    x.as_str()
                        .is_some_and(|t| t.contains("not an EC2 instance"))
                })
            })
        })
        .unwrap_or_else(|e| panic!("no not-EC2 problem: {e}\n{}", agent.log()));
    // Past the 30 s identity retry: still the one attempt.
    std::thread::sleep(Duration::from_secs(35));
    let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
    println!("FLEET not on EC2: {n} IMDS connection(s) in 35 s");
    assert_eq!(n, 1, "IMDS asked again");
    let log = agent.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("not an EC2 instance"))
        .count();
    assert_eq!(lines, 1, "one log line, not one per retry: {log}");
}
