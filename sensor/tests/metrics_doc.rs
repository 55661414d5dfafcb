//! docs/metrics.md and the agent agree: every family the agent can export (registered health
//! metrics, the alert notifier's, the traffic families written per scrape) has a row in the
//! reference with its type, and every documented family exists. A family with no series yet
//! does not show in a scrape, so this reads the agent's catalogue, not a scrape.

use std::{collections::BTreeMap, path::Path, time::Duration};

use sensor::{
    alerting::{AlertingConfig, Notifier},
    export::metrics::Metrics,
};

fn documented() -> BTreeMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md");
    lab::docs::metric_reference(&path).unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn every_metric_is_documented_with_its_type_and_every_documented_one_exists() {
    let metrics = Metrics::new().expect("registering the agent's metrics");
    let _notifier = Notifier::start(&AlertingConfig::default(), Duration::from_secs(5), &|c| {
        metrics.register(c)
    })
    .expect("starting the notifier (no Alertmanager configured)");
    let exported: BTreeMap<String, String> =
        metrics.catalogue().into_iter().map(|f| (f.name, f.kind.to_string())).collect();
    let documented = documented();

    let undocumented: Vec<&String> =
        exported.keys().filter(|n| !documented.contains_key(*n)).collect();
    let missing: Vec<&String> = documented.keys().filter(|n| !exported.contains_key(*n)).collect();
    let wrong_type: Vec<String> = exported
        .iter()
        .filter_map(|(n, kind)| {
            let doc = documented.get(n)?;
            (doc != kind).then(|| format!("{n}: exported as {kind}, documented as {doc}"))
        })
        .collect();
    assert!(undocumented.is_empty(), "exported but not in docs/metrics.md: {undocumented:?}");
    assert!(missing.is_empty(), "documented in docs/metrics.md but not exported: {missing:?}");
    assert!(wrong_type.is_empty(), "{}", wrong_type.join("\n"));
    // The reference has 48 families today; a family added on both sides still passes, one
    // lost on both sides (a row and its registration deleted together) shows here.
    assert_eq!(exported.len(), 48, "families exported: {:?}", exported.keys());
}
