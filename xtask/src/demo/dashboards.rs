//! Every panel query of every Grafana dashboard, run against the demo's Prometheus while the
//! alert fires (lab's dashboard reader resolves the variables the way Grafana would), and the
//! table of what each returned: a panel that returns nothing on a lab full of traffic has a
//! broken query.

use std::{collections::BTreeMap, path::Path};

use anyhow::Result;
use lab::{
    dashboards::{self, Outcome, Range},
    prometheus::Prometheus,
};

use super::{
    home::{self, METRICS},
    monitoring, section,
};

/// Runs the dashboards' panel queries over `range`, preferring the story's phone and this
/// lab's agent for the variables.
pub fn run(dir: &Path, prom: &Prometheus, range: &Range) -> Result<Vec<Outcome>> {
    let preferred: BTreeMap<&str, &str> = [
        ("client", home::PHONE.name),
        ("instance", METRICS),
        ("site", monitoring::SITE),
        ("job", monitoring::JOB),
    ]
    .into_iter()
    .collect();
    dashboards::check(dir, prom, range, &preferred)
}

/// The table of panel → series; returns how many queries ran and the problems (queries
/// without data, or none run because the alert never fired).
pub fn print(dir: &Path, outcomes: Option<&[Outcome]>) -> (usize, Vec<String>) {
    section(&format!("Dashboards ({}/**/*.json) against the demo's Prometheus", dir.display()));
    let Some(outcomes) = outcomes else {
        println!("  not run: the alert never fired");
        return (0, vec!["the dashboards were not checked (the alert never fired)".into()]);
    };
    println!("  {:<28} {:<40} {:<4} {:>6}", "dashboard", "panel", "ref", "series");
    let mut problems = Vec::new();
    for o in outcomes {
        let series = match &o.series {
            Ok(n) => n.to_string(),
            Err(_) => "error".to_string(),
        };
        println!("  {:<28} {:<40} {:<4} {:>6}", o.dashboard, o.query.panel, o.query.ref_id, series);
        if !o.ok() {
            let why = match (&o.sent, &o.series) {
                (Err(e), _) | (_, Err(e)) => e.clone(),
                (Ok(q), Ok(_)) => format!("no data for {q}"),
            };
            println!("      ✗ {why}");
            problems
                .push(format!("{} / {} / {}: {why}", o.dashboard, o.query.panel, o.query.ref_id));
        }
    }
    println!(
        "  {} queries, {} with data",
        outcomes.len(),
        outcomes.iter().filter(|o| o.ok()).count()
    );
    (outcomes.len(), problems)
}
