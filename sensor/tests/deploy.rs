//! The deployment files, checked by the tools that will read them: `systemd-analyze` (the
//! unit), `promtool` (Prometheus config, health rules and their unit tests), `amtool`
//! (Alertmanager config and routing), a real Prometheus (every dashboard query must be
//! accepted), and the dashboard rules of `lab::dashboards`.
//!
//! Needs no privileges. A missing tool skips with a loud notice, or fails under CI=true or
//! GWSENSOR_TEST_REQUIRE_PRIVILEGED=1 (`cargo xtask test` installs them).

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use lab::{
    Lab,
    dashboards::{self, Vars},
    prometheus::{self, Prometheus},
};

const SUITE: &str = "deploy checks";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// Runs `cmd` (in `dir`), or None when `tool` is not installed and that may be skipped.
fn run(tool: &str, args: &[&str], dir: &Path) -> Option<Output> {
    match Command::new(tool).args(args).current_dir(dir).stdin(Stdio::null()).output() {
        Ok(out) => Some(out),
        Err(e) => {
            lab::cannot_run(SUITE, &format!("needs `{tool}` ({e}); cargo xtask test installs it"));
            None
        }
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn assert_ok(what: &str, out: &Output) {
    assert!(out.status.success(), "{what} failed ({}):\n{}", out.status, text(out));
}

/// The unit as shipped, with its binary path pointing at the binary under test
/// (`systemd-analyze verify` checks that ExecStart's program exists).
fn unit_under_test(dir: &Path) -> PathBuf {
    let unit =
        std::fs::read_to_string(repo().join("deploy/systemd/gateway-sensor.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/sensor run --config /etc/gateway-sensor/sensor.yaml"),
        "{unit}"
    );
    let path = dir.join("gateway-sensor.service");
    std::fs::write(&path, unit.replace("/usr/bin/sensor", env!("CARGO_BIN_EXE_sensor"))).unwrap();
    path
}

#[test]
fn systemd_unit_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_under_test(dir.path());
    let Some(out) = run("systemd-analyze", &["verify", unit.to_str().unwrap()], dir.path()) else {
        return;
    };
    assert_ok("systemd-analyze verify", &out);
    assert_eq!(text(&out), "", "systemd-analyze verify warned");
}

/// docs/deploy.md states the unit's exposure score; it must be the one systemd computes.
#[test]
fn systemd_exposure_score_is_the_documented_one() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_under_test(dir.path());
    let Some(out) = run(
        "systemd-analyze",
        &["security", "--offline=yes", "--no-pager", unit.to_str().unwrap()],
        dir.path(),
    ) else {
        return;
    };
    assert_ok("systemd-analyze security", &out);
    let report = text(&out);
    let measured = report
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for gateway-sensor.service: "))
        .map(|(_, rest)| rest.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{report}"));
    let docs = std::fs::read_to_string(repo().join("docs/deploy.md")).unwrap();
    let documented = docs
        .split_once("exposure level **")
        .and_then(|(_, rest)| rest.split_once("**"))
        .map(|(score, _)| score.to_string())
        .expect("docs/deploy.md states `exposure level **N.N OK**`");
    assert_eq!(
        measured, documented,
        "systemd-analyze security says {measured}, docs/deploy.md says {documented}"
    );
}

/// The .deb installs what the unit runs and reads.
#[test]
fn deb_package_installs_what_the_unit_uses() {
    let manifest = std::fs::read_to_string(repo().join("sensor/Cargo.toml")).unwrap();
    let deb = manifest
        .split_once("[package.metadata.deb]")
        .expect("sensor/Cargo.toml has [package.metadata.deb]")
        .1;
    for needed in [
        r#"["target/release/sensor", "usr/bin/", "755"]"#,
        r#"["../deploy/sensor.yaml", "etc/gateway-sensor/sensor.yaml", "640"]"#,
        r#"["../deploy/policy.yaml", "etc/gateway-sensor/policy.yaml", "640"]"#,
        r#"conf-files = ["/etc/gateway-sensor/sensor.yaml", "/etc/gateway-sensor/policy.yaml"]"#,
        r#"unit-name = "gateway-sensor""#,
        r#"maintainer-scripts = "../deploy/debian/""#,
    ] {
        assert!(deb.contains(needed), "[package.metadata.deb] lacks {needed}");
    }
    // The installed config's policy (relative to the config) is installed too: without it
    // `systemctl start` after `apt install` fails at once (it did: the package had no policy).
    let config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(repo().join("deploy/sensor.yaml")).unwrap())
            .unwrap();
    let policy = config["policy"].as_str().expect("deploy/sensor.yaml names a policy");
    let installed = format!(r#""etc/gateway-sensor/{policy}""#);
    assert!(deb.contains(&installed), "the package does not install {installed}");
}

#[test]
fn prometheus_config_and_health_rules_pass_promtool() {
    let dir = repo().join("deploy/prometheus");
    let Some(out) = run("promtool", &["check", "config", "prometheus.yml"], &dir) else { return };
    assert_ok("promtool check config", &out);
    assert!(text(&out).contains("SUCCESS: 1 rule files found"), "{}", text(&out));
    let rules = dir.join("rules");
    let out = run("promtool", &["check", "rules", "gateway-sensor-health.yml"], &rules).unwrap();
    assert_ok("promtool check rules", &out);
    assert!(text(&out).contains("SUCCESS: 13 rules found"), "{}", text(&out));
    // Each alert fires for the unhealthy gateway, with exact labels and texts, and not for the
    // healthy one (gateway-sensor-health.test.yml).
    let out =
        run("promtool", &["test", "rules", "gateway-sensor-health.test.yml"], &rules).unwrap();
    assert_ok("promtool test rules", &out);
    assert!(text(&out).contains("SUCCESS"), "{}", text(&out));
}

#[test]
fn alertmanager_config_passes_amtool_and_routes_as_documented() {
    let dir = repo().join("deploy/alertmanager");
    let Some(out) = run("amtool", &["check-config", "alertmanager.yml"], &dir) else { return };
    assert_ok("amtool check-config", &out);
    let cases: [(&[&str], &str); 5] = [
        (&["alertname=TooMuchUpload", "client=redmi-note", "severity=warning"], "household"),
        (&["alertname=NewCountry", "client=redmi-note", "severity=critical"], "household-urgent"),
        (
            &["alertname=GatewaySensorDown", "component=gateway-sensor", "severity=critical"],
            "admin-email",
        ),
        (
            &[
                "alertname=GatewaySensorFlowEvictions",
                "component=gateway-sensor",
                "severity=warning",
            ],
            "admin-email",
        ),
        (&["alertname=SomethingElse"], "admin-email"),
    ];
    for (labels, receiver) in cases {
        let mut args = vec!["config", "routes", "test", "--config.file=alertmanager.yml"];
        args.extend_from_slice(labels);
        let out = run("amtool", &args, &dir).unwrap();
        assert_ok("amtool config routes test", &out);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), receiver, "route for {labels:?}");
    }
}

#[test]
fn dashboards_follow_the_rules() {
    let all = dashboards::load_all(&dashboards::dashboards_dir()).unwrap();
    let names: Vec<String> =
        all.iter().map(|d| d.path.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["device.json", "home-overview.json", "sensor-health.json"]);
    for d in &all {
        let problems = dashboards::validate(&d.json);
        assert!(problems.is_empty(), "{}:\n{}", d.path.display(), problems.join("\n"));
    }
    let vars = |d: &dashboards::Dashboard| {
        dashboards::variables(&d.json).iter().map(|v| v.name.clone()).collect::<Vec<_>>().join(",")
    };
    assert_eq!(vars(&all[0]), "datasource,site,instance,client");
    assert_eq!(vars(&all[1]), "datasource,site,instance");
    assert_eq!(vars(&all[2]), "datasource,site,instance");
    let kinds: Vec<&str> =
        dashboards::panels(&all[1].json).iter().filter_map(|p| p["type"].as_str()).collect();
    assert!(kinds.contains(&"geomap"), "home overview has a world map: {kinds:?}");
    // Unique uids: Grafana keeps one dashboard per uid.
    let mut uids: Vec<&str> = all.iter().map(|d| d.json["uid"].as_str().unwrap()).collect();
    uids.dedup();
    assert_eq!(uids.len(), 3);
}

/// A throwaway Prometheus on the host's loopback with no targets (its lab stops it), or None
/// when `prometheus` is not installed and that may be skipped.
fn start_prometheus(lab: &Lab) -> Option<Prometheus> {
    if let Err(e) = Command::new(prometheus::BINARY).arg("--version").output() {
        lab::cannot_run(SUITE, &format!("needs `prometheus` ({e}); cargo xtask test installs it"));
        return None;
    }
    // A free port: bound and released; Prometheus binds it right after.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    Some(
        Prometheus::start(lab, None, listen, "global:\n  scrape_interval: 15s\n")
            .unwrap_or_else(|e| panic!("{e:#}")),
    )
}

#[test]
fn every_dashboard_query_is_accepted_by_prometheus() {
    let lab = Lab::new("gwdeploy").unwrap();
    let Some(prom) = start_prometheus(&lab) else { return };
    // The checker itself: a broken query must be refused.
    assert!(prom.refuses("sum(rate(gwsensor_client_bytes_total[5m])").is_some());
    let vars = Vars {
        client: "redmi-note".into(),
        instance: "gw1:9977".into(),
        site: "home".into(),
        ..Vars::default()
    };
    let mut checked = 0;
    let mut refused = Vec::new();
    for d in dashboards::load_all(&dashboards::dashboards_dir()).unwrap() {
        for (title, expr) in dashboards::filled_queries(&d.json, &vars.values()).unwrap() {
            if let Some(why) = prom.refuses(&expr) {
                refused.push(format!("{} / {title}: {expr}\n  {why}", d.path.display()));
            }
            checked += 1;
        }
    }
    assert!(
        refused.is_empty(),
        "{} of {checked} queries refused:\n{}",
        refused.len(),
        refused.join("\n")
    );
    assert!(checked >= 50, "only {checked} queries found");
}

/// The compose file mounts files that exist, and the provisioning points at what it mounts.
#[test]
fn compose_stack_and_grafana_provisioning_agree() {
    let compose_dir = repo().join("deploy/compose");
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(compose_dir.join("compose.yml")).unwrap())
            .unwrap();
    let services = compose["services"].as_mapping().unwrap();
    let names: Vec<&str> = services.keys().filter_map(|k| k.as_str()).collect();
    assert_eq!(names, ["prometheus", "alertmanager", "grafana"]);
    let mut mounts = Vec::new();
    for (_, service) in services {
        for volume in service["volumes"].as_sequence().unwrap() {
            let spec = volume.as_str().unwrap();
            let (source, target) = spec.split_once(':').unwrap();
            if source.starts_with('.') {
                let host = compose_dir.join(source);
                assert!(host.exists(), "{spec}: {} does not exist", host.display());
                mounts.push((
                    host.canonicalize().unwrap(),
                    target.trim_end_matches(":ro").to_string(),
                ));
            }
        }
    }
    let target_of =
        |p: &str| mounts.iter().find(|(h, _)| *h == repo().join(p)).map(|(_, t)| t.as_str());
    assert_eq!(target_of("grafana/dashboards"), Some("/var/lib/grafana/dashboards/gateway-sensor"));
    let provider: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("grafana/provisioning/dashboards/gateway-sensor.yml"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        provider["providers"][0]["options"]["path"].as_str(),
        Some("/var/lib/grafana/dashboards/gateway-sensor")
    );
    assert_eq!(provider["providers"][0]["type"].as_str(), Some("file"));
    let datasource: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("grafana/provisioning/datasources/prometheus.yml"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(datasource["datasources"][0]["type"].as_str(), Some("prometheus"));
    assert_eq!(datasource["datasources"][0]["url"].as_str(), Some("http://prometheus:9090"));
    // The rules Prometheus loads in the stack are the ones promtool tests.
    assert_eq!(target_of("deploy/prometheus/rules"), Some("/etc/prometheus/rules"));
}

/// The OpenWrt init script is valid shell and starts what the docs say.
#[test]
fn openwrt_init_script_parses() {
    let script = repo().join("deploy/openwrt/gateway-sensor.init");
    let Some(out) = run("sh", &["-n", script.to_str().unwrap()], &repo()) else { return };
    assert_ok("sh -n", &out);
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(text.contains(r#"procd_set_param command "$PROG" run --config "$CONF""#));
    assert!(
        text.contains("PROG=/usr/bin/sensor")
            && text.contains("CONF=/etc/gateway-sensor/sensor.yaml")
    );
}

/// Every health alert links its runbook section: `runbook_url` is the repository's
/// docs/runbook.md with the alert's name, lower case, as anchor, and that section exists.
#[test]
fn every_health_alert_has_a_runbook_section() {
    let root = repo();
    let cargo = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let repository = cargo
        .lines()
        .find_map(|l| l.strip_prefix("repository = "))
        .map(|v| v.trim().trim_matches('"').to_string())
        .expect("Cargo.toml names the repository");
    let base = format!("{repository}/blob/main/docs/runbook.md#");
    let runbook = std::fs::read_to_string(root.join("docs/runbook.md")).unwrap();
    let sections: Vec<String> =
        runbook.lines().filter_map(|l| l.strip_prefix("## ")).map(|h| h.to_lowercase()).collect();
    let rules: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("deploy/prometheus/rules/gateway-sensor-health.yml"))
            .unwrap(),
    )
    .unwrap();
    let mut alerts = 0;
    let mut wrong = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let Some(name) = rule["alert"].as_str() else { continue };
            alerts += 1;
            let expected = format!("{base}{}", name.to_lowercase());
            match rule["annotations"]["runbook_url"].as_str() {
                Some(url) if url == expected => {}
                other => wrong.push(format!("{name}: runbook_url {other:?}, expected {expected}")),
            }
            if !sections.contains(&name.to_lowercase()) {
                wrong.push(format!("{name}: no `## {name}` section in docs/runbook.md"));
            }
        }
    }
    assert_eq!(alerts, 13, "health alerts in the rules file");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(sections.len(), alerts, "runbook sections without an alert: {sections:?}");
}
