//! Every panel query of every Grafana dashboard (grafana/*.json), run against the demo's
//! Prometheus with the dashboard's variables filled in the way Grafana would: a dashboard
//! whose panel returns nothing on a lab full of traffic has a broken query.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::monitoring::Prometheus;

/// One `targets[]` entry of a panel.
#[derive(Debug, Clone, PartialEq)]
pub struct PanelQuery {
    pub panel: String,
    pub ref_id: String,
    /// None for a target that is not a PromQL query.
    pub expr: Option<String>,
    /// Grafana runs an instant query (at the end of the range) instead of a range query.
    pub instant: bool,
}

/// A `templating.list[]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Variable {
    pub name: String,
    pub kind: String,
    pub query: String,
    pub current: Option<String>,
}

/// Every query of the dashboard's panels, rows' nested panels included, in display order.
pub fn panel_queries(dashboard: &Value) -> Vec<PanelQuery> {
    let mut out = Vec::new();
    let mut panels: Vec<&Value> = Vec::new();
    // Old schema: rows[].panels[]; current: panels[], collapsed rows keep theirs in panels[].
    for row in dashboard["rows"].as_array().into_iter().flatten() {
        panels.extend(row["panels"].as_array().into_iter().flatten());
    }
    panels.extend(dashboard["panels"].as_array().into_iter().flatten());
    walk(&panels, &mut out);
    out
}

fn walk(panels: &[&Value], out: &mut Vec<PanelQuery>) {
    for p in panels {
        let title = p["title"].as_str().unwrap_or("(untitled)").to_string();
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(PanelQuery {
                panel: title.clone(),
                ref_id: t["refId"].as_str().unwrap_or("").to_string(),
                expr: t["expr"].as_str().map(String::from),
                instant: t["instant"] == true && t["range"] != true,
            });
        }
        let nested: Vec<&Value> = p["panels"].as_array().into_iter().flatten().collect();
        walk(&nested, out);
    }
}

pub fn variables(dashboard: &Value) -> Vec<Variable> {
    dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| Variable {
            name: v["name"].as_str().unwrap_or_default().to_string(),
            kind: v["type"].as_str().unwrap_or("query").to_string(),
            // Newer Grafana stores a query variable's query as {query, refId}.
            query: v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .or(v["definition"].as_str())
                .unwrap_or_default()
                .to_string(),
            current: match &v["current"]["value"] {
                Value::String(s) => Some(s.clone()),
                Value::Array(a) => a.first().and_then(Value::as_str).map(String::from),
                _ => None,
            },
        })
        .collect()
}

/// Fills `$var`, `${var}`, `${var:format}` and `[[var]]` from `values`. An unknown variable is
/// an error (Grafana would send it to Prometheus as is, which fails to parse). A `$` not
/// followed by a name (a regex anchor) or by digits (label_replace's `$1`) stays.
pub fn substitute(expr: &str, values: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(i) = rest.find(['$', '[']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let (name, format, len) = if let Some(braced) = tail.strip_prefix("${") {
            let end = braced.find('}').with_context(|| format!("unclosed ${{ in {expr:?}"))?;
            let inner = &braced[..end];
            let (n, f) = inner.split_once(':').map_or((inner, None), |(n, f)| (n, Some(f)));
            (n, f, end + 3)
        } else if let Some(old) = tail.strip_prefix("[[") {
            match old.find("]]") {
                Some(end) if old[..end].chars().all(is_name_char) && end > 0 => {
                    (&old[..end], None, end + 4)
                }
                _ => ("", None, 1),
            }
        } else if let Some(plain) = tail.strip_prefix('$') {
            let n = plain.find(|c: char| !is_name_char(c)).unwrap_or(plain.len());
            (&plain[..n], None, 1 + n)
        } else {
            ("", None, 1)
        };
        // `$1` in label_replace is PromQL's own, not a variable.
        if name.is_empty() || name.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&tail[..1]);
            rest = &tail[1..];
            continue;
        }
        let value = values.get(name).with_context(|| {
            format!(
                "unknown variable ${name} in {expr:?} (known: {:?})",
                values.keys().collect::<Vec<_>>()
            )
        })?;
        match format {
            Some("regex") => out.push_str(&escape_regex(value)),
            _ => out.push_str(value),
        }
        rest = &tail[len..];
    }
    out.push_str(rest);
    Ok(out)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn escape_regex(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

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

/// The time range the queries cover, and Grafana's built-in variables for it.
pub struct Range {
    pub start: f64,
    pub end: f64,
    pub step: f64,
    pub scrape_interval: f64,
}

impl Range {
    /// [start, end] at `step`, with `start` moved back to a whole number of steps before `end`:
    /// a range query evaluates at start + k × step, and the last evaluation must be `end`
    /// itself, or the freshest samples (the alert firing now) fall between two steps.
    pub fn ending_at(start: f64, end: f64, step: f64, scrape_interval: f64) -> Range {
        let steps = ((end - start) / step).ceil().max(1.0);
        Range { start: end - steps * step, end, step, scrape_interval }
    }

    fn builtins(&self) -> BTreeMap<String, String> {
        let range = (self.end - self.start).round().max(1.0) as u64;
        // Grafana: max($__interval + scrape interval, 4 × scrape interval).
        let rate = (self.step + self.scrape_interval).max(4.0 * self.scrape_interval);
        [
            ("__interval", format!("{}s", self.step)),
            ("__interval_ms", format!("{}", (self.step * 1000.0) as u64)),
            ("__rate_interval", format!("{rate}s")),
            ("__range", format!("{range}s")),
            ("__range_s", range.to_string()),
            ("__range_ms", (range * 1000).to_string()),
            ("__from", ((self.start * 1000.0) as u64).to_string()),
            ("__to", ((self.end * 1000.0) as u64).to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// Values for a dashboard's variables, in their order (later ones may use earlier ones): a
/// query variable takes `preferred[name]` when Prometheus has it, else its first value.
pub fn resolve_variables(
    vars: &[Variable],
    prom: &Prometheus,
    range: &Range,
    preferred: &BTreeMap<&str, &str>,
) -> Result<BTreeMap<String, String>> {
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
    pub dashboard: String,
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

/// Every `*.json` under `dir` (grafana/dashboards/ and the like), sorted.
pub fn dashboard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if !d.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Runs every panel query of every dashboard in `dir` over `range`.
pub fn check(
    dir: &Path,
    prom: &Prometheus,
    range: &Range,
    preferred: &BTreeMap<&str, &str>,
) -> Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    for file in dashboard_files(dir)? {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let doc: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
        // An exported dashboard may wrap the model in {"dashboard": ...}.
        let dash = if doc["dashboard"].is_object() { &doc["dashboard"] } else { &doc };
        let name = file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let queries = panel_queries(dash);
        if queries.is_empty() {
            bail!("{}: no panel queries found", file.display());
        }
        let values = resolve_variables(&variables(dash), prom, range, preferred)
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
            outcomes.push(Outcome { dashboard: name.clone(), query: q, sent, series });
        }
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vals(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn queries_of_panels_and_rows() {
        let d = json!({
            "panels": [
                {"title": "Upload", "type": "timeseries", "targets": [
                    {"refId": "A", "expr": "rate(x[5m])"},
                    {"refId": "B", "expr": "y", "instant": true}
                ]},
                {"title": "Details", "type": "row", "collapsed": true, "panels": [
                    {"title": "Nested", "targets": [{"refId": "A", "expr": "z", "instant": true, "range": true}]}
                ]},
                {"title": "Notes", "type": "text"},
                {"title": "Logs", "targets": [{"refId": "A"}]}
            ],
            "rows": [{"panels": [{"title": "Old", "targets": [{"refId": "A", "expr": "w"}]}]}]
        });
        let got: Vec<(String, String, Option<String>, bool)> =
            panel_queries(&d).into_iter().map(|q| (q.panel, q.ref_id, q.expr, q.instant)).collect();
        let s = |x: &str| x.to_string();
        assert_eq!(
            got,
            vec![
                (s("Old"), s("A"), Some(s("w")), false),
                (s("Upload"), s("A"), Some(s("rate(x[5m])")), false),
                (s("Upload"), s("B"), Some(s("y")), true),
                (s("Nested"), s("A"), Some(s("z")), false),
                (s("Logs"), s("A"), None, false),
            ]
        );
    }

    #[test]
    fn variables_in_all_syntaxes() {
        let v = vals(&[
            ("client", "redmi-note"),
            ("instance", "127.0.0.1:9977"),
            ("__rate_interval", "4s"),
        ]);
        assert_eq!(
            substitute(
                r#"rate(m{client="$client",instance=~"${instance:regex}"}[$__rate_interval])"#,
                &v
            )
            .unwrap(),
            r#"rate(m{client="redmi-note",instance=~"127\.0\.0\.1:9977"}[4s])"#
        );
        assert_eq!(substitute("m{client=\"[[client]]\"}", &v).unwrap(), "m{client=\"redmi-note\"}");
        // Regex anchors and PromQL brackets are not variables.
        assert_eq!(
            substitute(r#"m{client=~"^a.*$"}[5m]"#, &v).unwrap(),
            r#"m{client=~"^a.*$"}[5m]"#
        );
        assert_eq!(
            substitute(r#"label_replace(m, "a", "$1", "b", "(.*)")"#, &v).unwrap(),
            r#"label_replace(m, "a", "$1", "b", "(.*)")"#
        );
        assert!(substitute("m{site=\"$site\"}", &v).is_err());
    }

    #[test]
    fn variable_definitions() {
        let d = json!({"templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus"},
            {"name": "site", "type": "query", "query": {"query": "label_values(gwsensor_build_info, site)", "refId": "x"}},
            {"name": "client", "type": "query", "query": "label_values(gwsensor_client_info{site=\"$site\"}, client)", "current": {"value": ["$__all"]}},
            {"name": "top", "type": "custom", "query": "5,10,20", "current": {"value": "10"}}
        ]}});
        let v = variables(&d);
        assert_eq!(
            v.iter().map(|v| v.kind.as_str()).collect::<Vec<_>>(),
            ["datasource", "query", "query", "custom"]
        );
        assert_eq!(v[1].query, "label_values(gwsensor_build_info, site)");
        assert_eq!(v[2].current.as_deref(), Some("$__all"));
        assert_eq!(v[3].current.as_deref(), Some("10"));
        assert_eq!(
            parse_label_values(&v[2].query),
            Some((Some("gwsensor_client_info{site=\"$site\"}".to_string()), "client".to_string()))
        );
        assert_eq!(parse_label_values("label_values(job)"), Some((None, "job".to_string())));
        assert_eq!(parse_label_values("query_result(up)"), None);
    }

    #[test]
    fn builtins() {
        let r = Range { start: 1000.0, end: 1090.0, step: 2.0, scrape_interval: 1.0 };
        let b = r.builtins();
        assert_eq!(
            (b["__rate_interval"].as_str(), b["__range"].as_str(), b["__interval"].as_str()),
            ("4s", "90s", "2s")
        );
    }
}
