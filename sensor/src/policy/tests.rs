//! Policy loading: errors with file:line:column and a fix, and the shipped example.

use std::path::Path;

use super::Policy;

fn error(yaml: &str) -> String {
    Policy::parse(yaml, Path::new("policy.yaml")).unwrap_err().to_string()
}

#[test]
fn errors_name_line_column_and_fix() {
    let e = error(
        "rules:\n  - name: Up\n    condition: {volume: {above: 5MB}}\n    match: {destination: {country: XX}}\n",
    );
    assert!(e.starts_with("policy.yaml:4:"), "{e}");
    assert!(e.contains("unknown country code `XX`"), "{e}");
    let e = error(
        "rules:\n  - name: Up\n    condition: {volume: {above: 5MB}}\n    match: {destination: {cidr: 10.0.0.0/40}}\n",
    );
    assert!(e.starts_with("policy.yaml:4:") && e.contains("is not a CIDR"), "{e}");
    let e =
        error("rules:\n  - name: Up\n    condition: {volume: {above: 5MB, window: 10 parsecs}}\n");
    assert!(e.starts_with("policy.yaml:3:") && e.contains("durations look like"), "{e}");
    let e = error(
        "rules:\n  - name: Up\n    condition: {traffic: {}}\n    match: {destination: {domain: \"*.x[\"}}\n",
    );
    assert!(e.starts_with("policy.yaml:4:") && e.contains("invalid glob"), "{e}");
    let e = error("rules:\n  - name: Up\n    condition: {trafic: {}}\n");
    assert!(
        e.starts_with("policy.yaml:3:")
            && e.contains("unknown field `trafic`")
            && e.contains("docs/policy.md"),
        "{e}"
    );
    let e = error(
        "rules:\n  - name: Up\n    condition: {traffic: {}}\n    summary: \"{{ clinet }}\"\n",
    );
    assert!(e.starts_with("policy.yaml:4:") && e.contains("unknown placeholder"), "{e}");
    let e = error(
        "rules:\n  - name: A\n    condition: {traffic: {}}\n  - name: A\n    condition: {traffic: {}}\n",
    );
    assert!(e.starts_with("policy.yaml:2:5: two rules are named `A`"), "{e}");
    let e = error("rules:\n  - name: Both\n    condition: {traffic: {}, volume: {above: 1MB}}\n");
    assert!(e.starts_with("policy.yaml:2:5: rule `Both`: a rule has exactly one condition"), "{e}");
    let e = error("rules:\n  - name: R\n    condition: {rate: {window: 1m}}\n");
    assert!(e.contains("exactly one of bytes_per_second and packets_per_second"), "{e}");
    let e = error("rules:\n  - name: R\n    labels: {client: x}\n    condition: {traffic: {}}\n");
    assert!(e.starts_with("policy.yaml:3:") && e.contains("set by the sensor itself"), "{e}");
    let e = error("exceptions: [{}]\n");
    assert!(e.contains("names no client and no destination"), "{e}");
}

#[test]
fn shipped_example_policy_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policy.yaml");
    let p = Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        p.rules.iter().any(|r| r.name == "PhoneCloudUploadWhileSyncOff"),
        "{:?}",
        p.rules.iter().map(|r| &r.name).collect::<Vec<_>>()
    );
}
