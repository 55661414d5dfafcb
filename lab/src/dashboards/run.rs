//! Every panel query of the dashboards run against a real Prometheus, with the variables
//! resolved from its data the way Grafana resolves them: a panel that returns nothing on a lab
//! full of traffic has a broken query.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, bail};

use super::{PanelQuery, Range, Values, Variable, load_all, panel_queries, substitute, variables};
use crate::prometheus::Prometheus;

/// `label_values(label)` or `label_values(selector, label)`: (selector, label).
fn parse_label_values(query: &str) -> Option<(Option<String>, String)> {
    let inner = query.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    match inner.rsplit_once(',') {
        Some((selector, label)) => {
            Some((Some(selector.trim().to_string()), label.trim().to_string()))
        }
        None => Some((None, inner.trim().to_string())),
    }
}

/// Values for a dashboard's variables, in their order (later ones may use earlier ones), with
/// Grafana's built-ins for `range`: a query variable takes `preferred[name]` when Prometheus
/// has it, else its first value.
pub fn resolve_variables(
    vars: &[Variable],
    prom: &Prometheus,
    range: &Range,
    preferred: &BTreeMap<&str, &str>,
) -> anyhow::Result<Values> {
    let mut values = range.builtins();
    for v in vars {
        let value = match v.kind.as_str() {
            "datasource" => "prometheus".to_string(),
            "query" => {
                let query = substitute(&v.query, &values)?;
                let (selector, label) = parse_label_values(&query).with_context(|| {
                    format!(
                        "variable ${}: only label_values(...) queries are supported, not {query:?}",
                        v.name
                    )
                })?;
                let found =
                    prom.label_values(selector.as_deref(), &label, range.start, range.end)?;
                match preferred.get(v.name.as_str()) {
                    Some(p) if found.iter().any(|f| f == p) => p.to_string(),
                    _ => found.into_iter().next().with_context(|| {
                        format!("variable ${}: {query} has no values in Prometheus", v.name)
                    })?,
                }
            }
            "custom" | "interval" => match &v.current {
                Some(c) if !c.starts_with('$') => c.clone(),
                _ => v.query.split(',').next().unwrap_or_default().trim().to_string(),
            },
            "constant" | "textbox" => v.current.clone().unwrap_or_else(|| v.query.clone()),
            // Ad hoc filters add no text to queries.
            _ => continue,
        };
        values.insert(v.name.clone(), value);
    }
    Ok(values)
}

/// One query's outcome.
pub struct Outcome {
    /// The dashboard's file name.
    pub dashboard: String,
    /// The query, its panel title filled in.
    pub query: PanelQuery,
    /// The query as sent, or why it could not be.
    pub sent: Result<String, String>,
    /// Series (range query) or samples (instant) returned; an error as text.
    pub series: Result<usize, String>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        matches!(self.series, Ok(n) if n > 0)
    }
}

/// Runs every panel query of every dashboard under `dir` over `range`. No dashboard, or one
/// without queries, is an error.
pub fn check(
    dir: &Path,
    prom: &Prometheus,
    range: &Range,
    preferred: &BTreeMap<&str, &str>,
) -> anyhow::Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    for d in load_all(dir)? {
        let queries = panel_queries(&d.json);
        if queries.is_empty() {
            bail!("{}: no panel queries found", d.path.display());
        }
        let values = resolve_variables(&variables(&d.json), prom, range, preferred)
            .map_err(|e| format!("{e:#}"));
        for mut q in queries {
            // Titles use variables too ("Destinations of $client").
            if let Ok(v) = &values {
                q.panel = substitute(&q.panel, v).unwrap_or(q.panel);
            }
            let sent = match (&q.expr, &values) {
                (None, _) => Err("the target has no PromQL expr".to_string()),
                (_, Err(e)) => Err(e.clone()),
                (Some(expr), Ok(values)) => substitute(expr, values).map_err(|e| format!("{e:#}")),
            };
            let series = match &sent {
                Err(e) => Err(e.clone()),
                Ok(promql) if q.instant => {
                    prom.query_at(promql, range.end).map(|r| r.len()).map_err(|e| format!("{e:#}"))
                }
                Ok(promql) => prom
                    .query_range(promql, range.start, range.end, range.step)
                    .map(|r| r.len())
                    .map_err(|e| format!("{e:#}")),
            };
            outcomes.push(Outcome { dashboard: d.name(), query: q, sent, series });
        }
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_queries() {
        assert_eq!(
            parse_label_values("label_values(gwsensor_client_info{site=\"$site\"}, client)"),
            Some((Some("gwsensor_client_info{site=\"$site\"}".to_string()), "client".to_string()))
        );
        assert_eq!(parse_label_values("label_values(job)"), Some((None, "job".to_string())));
        assert_eq!(parse_label_values("query_result(up)"), None);
    }
}
