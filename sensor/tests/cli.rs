//! The `sensor` binary's command line, as a user meets it (no privileges needed).

use std::{path::Path, process::Command};

fn sensor(args: &[&str]) -> (bool, String, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_sensor")).args(args).output().expect("running sensor");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn check_config_accepts_the_shipped_example() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/sensor.yaml");
    let (ok, stdout, stderr) = sensor(&["check-config", example.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("sensor.yaml: ok (interface br-lan)\n"), "{stdout}");
    assert!(stdout.ends_with("policy.yaml: ok (7 rules)\n"), "{stdout}");
}

#[test]
fn check_config_validates_the_policy_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sensor.yaml"), "interface: br-lan\npolicy: rules.yaml\n")
        .unwrap();
    let rules = "rules:\n  - name: Up\n    match:\n      destination: {country: [CN, XY]}\n    condition: {volume: {above: 5MB}}\n";
    std::fs::write(dir.path().join("rules.yaml"), rules).unwrap();
    let config = dir.path().join("sensor.yaml");
    let (ok, stdout, stderr) = sensor(&["check-config", config.to_str().unwrap()]);
    assert!(!ok, "a bad policy must fail: {stdout}");
    assert!(
        stderr.starts_with(&format!("{}:4:", dir.path().join("rules.yaml").display())),
        "{stderr}"
    );
    assert!(stderr.contains("unknown country code `XY`"), "{stderr}");
}

#[test]
fn check_config_refuses_a_fifo_as_the_policy_at_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sensor.yaml"), "interface: br-lan\npolicy: rules.yaml\n")
        .unwrap();
    let fifo = dir.path().join("rules.yaml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let config = dir.path().join("sensor.yaml");
    // Without a writer, a blocking open of the FIFO would wait for ever.
    let start = std::time::Instant::now();
    let (ok, stdout, stderr) = sensor(&["check-config", config.to_str().unwrap()]);
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    assert!(!ok, "a FIFO must be refused: {stdout}");
    assert!(
        stderr.starts_with(&format!(
            "{}: the policy file is a FIFO (named pipe), not a regular file\n  hint: point",
            fifo.display()
        )),
        "{stderr}"
    );
}

#[test]
fn check_config_names_file_line_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "interface: br-lan\nlan_prefixes:\n  - 192.168.1.0/24\nflow_capacty: 100\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = sensor(&["check-config", path.to_str().unwrap()]);
    assert!(!ok, "a bad config must fail: {stdout}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("{}:4:1: unknown field `flow_capacty`", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("hint:"), "{stderr}");
}

#[test]
fn check_config_reports_a_missing_file() {
    let (ok, _, stderr) = sensor(&["check-config", "/nonexistent/sensor.yaml"]);
    assert!(!ok);
    assert!(
        stderr.starts_with("/nonexistent/sensor.yaml: cannot read the config file"),
        "{stderr}"
    );
}

#[test]
fn help_explains_the_commands() {
    let (ok, stdout, _) = sensor(&["--help"]);
    assert!(ok);
    for word in ["run", "check-config", "detach", "XDP", "Prometheus"] {
        assert!(stdout.contains(word), "--help lacks {word}: {stdout}");
    }
}

#[test]
fn detach_reports_a_missing_config_without_touching_anything() {
    let (ok, stdout, stderr) = sensor(&["detach", "--maps", "-c", "/nonexistent/sensor.yaml"]);
    assert!(!ok);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.starts_with("/nonexistent/sensor.yaml: cannot read the config file"),
        "{stderr}"
    );
}
