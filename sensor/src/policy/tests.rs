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

/// Errors about a rule as a whole, in full: located at the rule's name, with their hint.
#[test]
fn rule_errors_read_in_full_with_their_hint() {
    let rule = |body: &str| error(&format!("rules:\n  - name: R\n{body}"));
    assert_eq!(
        rule("    condition: {volume: {above: 0}}\n"),
        "policy.yaml:2:5: rule `R`: `volume.above` is 0\n  hint: for any traffic at all use the `traffic` condition"
    );
    assert_eq!(
        rule("    condition: {}\n"),
        "policy.yaml:2:5: rule `R`: the condition is empty\n  hint: conditions: traffic, volume, rate, new_destination, new_device, dns_bypass (docs/policy.md)"
    );
    assert_eq!(
        rule("    condition: {traffic: {window: 0s}}\n"),
        "policy.yaml:2:5: rule `R`: the condition's window is shorter than 1s\n  hint: use e.g. `window: 10m`"
    );
    assert_eq!(
        rule("    condition: {traffic: {}}\n    except: [{client: {name: tv}}, {}]\n"),
        "policy.yaml:2:5: rule `R`: exception 2 names no client and no destination\n  hint: an empty exception would silence the rule; give it a `client` or a `destination`"
    );
    assert_eq!(
        rule("    condition: {traffic: {}}\n    schedule: {windows: []}\n"),
        "policy.yaml:2:5: rule `R`: the schedule has no windows\n  hint: e.g. `schedule: {windows: [{days: [mon, tue], from: \"22:00\", to: \"06:00\"}]}`"
    );
    assert_eq!(
        error("exceptions: [{}]\n"),
        "policy.yaml: global exception 1 names no client and no destination\n  hint: an empty exception would silence every rule; give it a `client` or a `destination`"
    );
    let e = rule("    condition: {traffic: {}}\n    summary: \"{{ client\"\n");
    assert!(e.contains(": `{{` without `}}` in template `{{ client`"), "{e}");
    let e = rule("    condition: {traffic: {}}\n    summary: \"{{ clinet }}\"\n");
    assert!(
        e.contains(": unknown placeholder `{{ clinet }}`; known: rule, severity, client,"),
        "{e}"
    );
}
