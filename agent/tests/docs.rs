//! docs/ stays true: the config in the AMI recipe parses with the agent's own loader, and the
//! IAM policy grants exactly the actions the remediation ladder uses.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::path::Path;

use bindsto::config::Config;

fn doc(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The fenced block of `lang` that contains `needle`.
fn fenced<'a>(text: &'a str, lang: &str, needle: &str) -> &'a str {
    let open = format!("```{lang}\n");
    text.split(open.as_str())
        .skip(1)
        .filter_map(|rest| rest.split("\n```").next())
        .find(|block| block.contains(needle))
        .unwrap_or_else(|| panic!("no ```{lang} block with {needle:?}"))
}

/// The `content: |` of the cloud-init `write_files` entry for `path`, dedented.
fn write_files_content(yaml: &str, path: &str) -> String {
    let mut lines = yaml
        .lines()
        .skip_while(|l| !l.contains(&format!("path: {path}")));
    lines
        .by_ref()
        .find(|l| l.trim() == "content: |")
        .expect("content: |");
    let body: Vec<&str> = lines
        .take_while(|l| l.is_empty() || l.starts_with("      "))
        .collect();
    body.iter()
        .map(|l| l.get(6..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn cloud_init_config_is_valid_and_makes_docker_critical() {
    let ami = doc("ami.md");
    let yaml = fenced(&ami, "yaml", "#cloud-config");
    let toml = write_files_content(yaml, "/etc/bindsto/config.toml");
    let cfg = Config::from_toml(&toml, "docs/ami.md cloud-init")
        .unwrap_or_else(|e| panic!("{e}\n---\n{toml}"));
    assert!(!cfg.dry_run, "the recipe enables the ladder");
    assert!(
        cfg.watch
            .iter()
            .any(|w| w.path == Path::new("/var/lib/docker") && w.critical),
        "{toml}"
    );
    assert_eq!(cfg.listen.port(), 9842);
}

#[test]
fn iam_policy_grants_exactly_the_ladder_actions() {
    let ami = doc("ami.md");
    let json = fenced(&ami, "json", "\"Statement\"");
    let policy: serde_json::Value = serde_json::from_str(json).expect("policy JSON");
    let mut actions: Vec<String> = policy["Statement"]
        .as_array()
        .expect("statements")
        .iter()
        .flat_map(|s| s["Action"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    actions.sort();
    assert_eq!(
        actions,
        [
            "autoscaling:DescribeAutoScalingGroups",
            "autoscaling:DescribeAutoScalingInstances",
            "autoscaling:SetInstanceHealth",
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "ecs:DescribeContainerInstances",
            "ecs:UpdateContainerInstancesState",
        ]
    );
    assert!(
        policy["Statement"]
            .as_array()
            .expect("statements")
            .iter()
            .all(|s| s["Effect"] == "Allow")
    );
}

#[test]
fn grafana_dashboard_is_json_with_queries() {
    let dash: serde_json::Value =
        serde_json::from_str(&doc("grafana-dashboard.json")).expect("dashboard JSON");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    for p in panels {
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            assert!(
                t["expr"].as_str().is_some_and(|e| e.contains("bindsto_")),
                "{}",
                p["title"]
            );
        }
    }
}
