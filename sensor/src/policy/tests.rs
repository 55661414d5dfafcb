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

fn max_rss_bytes() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    usage.ru_maxrss as u64 * 1024
}

/// An alias bomb in label values (plain strings, nothing to validate them on the way): the
/// deserialization alone would make 2,500 copies of a megabyte, 2.5 GB. It is refused before,
/// quickly, and the process never grows anywhere near that.
#[test]
fn a_megabyte_behind_2500_aliases_is_refused_before_deserializing() {
    let mut text = format!(
        "big: &big \"{}\"\nrules:\n  - name: R\n    condition: {{traffic: {{}}}}\n    labels:\n",
        "x".repeat(1_000_000)
    );
    for i in 0..2_500 {
        text.push_str(&format!("      l{i}: *big\n"));
    }
    let start = std::time::Instant::now();
    let e = error(&text);
    assert!(start.elapsed() < std::time::Duration::from_secs(5), "{:?}", start.elapsed());
    assert!(max_rss_bytes() < 1 << 30, "{} bytes", max_rss_bytes());
    assert_eq!(
        e,
        "policy.yaml:1:6: the YAML expands to more than 2097152 bytes of text (aliases \
         expanded)\n  hint: write the values out, or use fewer aliases (`*name`) to large anchors"
    );
}

/// 100,000 nested `[`: refused at once, at the first level too deep.
#[test]
fn deep_nesting_is_refused_at_once() {
    let start = std::time::Instant::now();
    let e = error(&format!("rules: {}", "[".repeat(100_000)));
    assert!(start.elapsed() < std::time::Duration::from_secs(2), "{:?}", start.elapsed());
    assert_eq!(
        e,
        "policy.yaml:1:72: the YAML nests more than 64 levels deep\n  hint: write it with at \
         most 64 levels of lists and mappings"
    );
}
