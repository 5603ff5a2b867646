//! The real Prometheus (Debian's `prometheus` package) scraping the real agent, with the
//! alert rules of docs/ loaded; promtool on the rules, their unit tests and the agent's metrics.
//!
//! Needs root (the agent loads BPF). Run: `cargo xtask test` (or `cargo test -p bindsto-tests
//! --test prometheus -- --test-threads=1` after `cargo build -p bindsto`).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use bindsto_tests::{
    Agent, BgProcess, agent::free_port, http_get, privileged, run_cmd, run_with_timeout,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

fn query_json(addr: SocketAddr, path: &str) -> Option<Value> {
    let (code, body) = http_get(addr, path, Duration::from_secs(5)).ok()?;
    if code != 200 {
        return None;
    }
    serde_json::from_str(&body).ok()
}

/// Polls `path` on Prometheus until `pred` holds; returns the last document.
fn wait_api(
    prom: &mut BgProcess,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    let mut last = Value::Null;
    while start.elapsed() < timeout {
        assert!(
            prom.is_running(),
            "prometheus exited; output:\n{}",
            prom.output()
        );
        if let Some(v) = query_json(addr, path) {
            if pred(&v) {
                return v;
            }
            last = v;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!(
        "GET {path} on Prometheus: condition not met within {timeout:?}; last answer: {last}\n\
         prometheus output:\n{}",
        prom.output()
    );
}

#[test]
fn prometheus_scrapes_the_agent_with_the_alert_rules_loaded() {
    let _g = privileged();
    let agent = Agent::start("listen = \"127.0.0.1:9842\"\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("alerts.yml");
    std::fs::copy(docs().join("alerts.yml"), &rules).expect("copy alerts.yml");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: bindsto\n    static_configs:\n      - targets: ['{}']\n",
            rules.display(),
            agent.addr()
        ),
    )
    .expect("write prometheus.yml");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port().expect("port")));
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--log.level=warn");
    let mut prom = BgProcess::spawn(cmd).expect("starting prometheus (package prometheus)");
    let t0 = Instant::now();

    let targets = wait_api(
        &mut prom,
        addr,
        "/api/v1/targets",
        Duration::from_secs(60),
        |v| {
            v["data"]["activeTargets"]
                .as_array()
                .is_some_and(|ts| ts.iter().any(|t| t["health"] == "up"))
        },
    );
    let target = &targets["data"]["activeTargets"][0];
    assert_eq!(target["labels"]["job"], "bindsto");
    assert_eq!(target["lastError"], "", "{target}");
    println!("LATENCY prometheus_target_up: {}", t0.elapsed().as_millis());

    let healthy = wait_api(
        &mut prom,
        addr,
        "/api/v1/query?query=bindsto_target_healthy",
        Duration::from_secs(30),
        |v| {
            v["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
        },
    );
    let series = healthy["data"]["result"].as_array().expect("result");
    assert!(
        series.iter().any(|s| s["metric"]["kind"] == "subsystem"
            && s["metric"]["target"] == "mount"
            && s["value"][1] == "1"),
        "{healthy}"
    );
    // Counters keep their _total, the build info and the host verdict are there.
    for q in [
        "bindsto_events_lost_total",
        "bindsto_build_info",
        "bindsto_healthy",
        "bindsto_probe_attached",
    ] {
        let v = wait_api(
            &mut prom,
            addr,
            &format!("/api/v1/query?query={q}"),
            Duration::from_secs(10),
            |v| {
                v["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty())
            },
        );
        println!("{q}: {}", v["data"]["result"]);
    }

    // The rules loaded and evaluate without errors against live data.
    let rules = wait_api(
        &mut prom,
        addr,
        "/api/v1/rules",
        Duration::from_secs(30),
        |v| {
            v["data"]["groups"].as_array().is_some_and(|gs| {
                gs.iter().any(|g| {
                    g["name"] == "bindsto"
                        && g["rules"].as_array().is_some_and(|rs| {
                            !rs.is_empty()
                                && rs.iter().all(|r| {
                                    r["health"] == "ok"
                                        && !r["lastEvaluation"]
                                            .as_str()
                                            .unwrap_or("")
                                            .starts_with("0001")
                                })
                        })
                })
            })
        },
    );
    let group = &rules["data"]["groups"][0];
    println!(
        "{} rules loaded, all healthy",
        group["rules"].as_array().map_or(0, Vec::len)
    );

    // Every query of the Grafana dashboard is valid PromQL against the live data.
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(docs().join("grafana-dashboard.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut checked = 0;
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            let expr = t["expr"]
                .as_str()
                .expect("expr")
                .replace("$instance", ".*")
                .replace("$__rate_interval", "1m");
            let path = format!("/api/v1/query?query={}", percent_encode(&expr));
            let v = query_json(addr, &path)
                .unwrap_or_else(|| panic!("panel {}: query {expr} failed", panel["title"]));
            assert_eq!(v["status"], "success", "{expr}: {v}");
            checked += 1;
        }
    }
    println!("{checked} dashboard queries valid");

    // Stopped by PID: SIGTERM, then the BgProcess drop (SIGKILL) if it lingers.
    prom.signal(nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM prometheus");
    assert!(
        prom.wait_timeout(Duration::from_secs(20)).is_some(),
        "prometheus did not stop on SIGTERM"
    );
    drop(agent);
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    let d = docs();
    let out = run_cmd(
        "promtool",
        &["check", "rules", &d.join("alerts.yml").to_string_lossy()],
        T,
    )
    .expect("promtool check rules");
    assert!(out.contains("SUCCESS"), "{out}");
    let mut cmd = Command::new("promtool");
    cmd.args(["test", "rules", "alerts_test.yml"])
        .current_dir(&d);
    let out = run_with_timeout(cmd, T).expect("promtool test rules");
    assert!(out.success(), "promtool test rules failed:\n{}", out.output);
    assert!(out.output.contains("SUCCESS"), "{}", out.output);
}

/// The agent's /metrics pass promtool's lint (naming, units, `_total`, help texts). promtool
/// lints the classic text format, so the OpenMetrics families of counters are renamed to their
/// sample names (`x` -> `x_total`), as Prometheus itself stores them.
#[test]
fn agent_metrics_pass_promtool_lint() {
    let _g = privileged();
    let agent = Agent::start("listen = \"127.0.0.1:9842\"\n");
    let om = agent.metrics();
    let classic = openmetrics_to_classic(&om);
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("metrics.txt");
    std::fs::write(&f, &classic).expect("write");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("promtool check metrics < '{}'", f.display()));
    let out = run_with_timeout(cmd, T).expect("promtool check metrics");
    assert!(
        out.success() && out.output.trim().is_empty(),
        "promtool check metrics:\n{}\non:\n{classic}",
        out.output
    );
    // And no counter sample lacks its _total (families without children have no samples).
    for line in om
        .lines()
        .filter(|l| l.starts_with("# TYPE ") && l.ends_with(" counter"))
    {
        let name = line.split_whitespace().nth(2).unwrap_or("");
        assert!(
            !om.lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "counter {name} has samples without _total:\n{om}"
        );
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn openmetrics_to_classic(om: &str) -> String {
    let counters: Vec<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::new();
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let mut l = line.to_string();
        for kind in ["# HELP ", "# TYPE "] {
            if let Some(rest) = line.strip_prefix(kind) {
                let name = rest.split_whitespace().next().unwrap_or("");
                if counters.contains(&name) {
                    l = format!("{kind}{name}_total{}", &rest[name.len()..]);
                }
            }
        }
        out.push_str(&l);
        out.push('\n');
    }
    out
}
