//! The Grafana dashboards in `grafana/dashboards/`, read once for everyone: the panels and the
//! PromQL each runs, the template variables, the rules every dashboard follows ([`validate`]),
//! and every query run against a real Prometheus ([`check`]), so tests and the demo run
//! exactly what a person looking at the dashboard would see.
//!
//! - `vars`: filling in variable references (`$x`, `${x:regex}`, `[[x]]`, built-ins).
//! - `rules`: the structural checks.
//! - `run`: the queries against Prometheus, variables resolved from its data.

mod rules;
mod run;
mod vars;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde_json::Value;

pub use self::{
    rules::{COMMON_VARIABLES, DATASOURCE, validate},
    run::{Outcome, check, resolve_variables},
    vars::{Range, Values, Vars, fill, substitute},
};

/// A dashboard file, parsed: `json` is the dashboard model (an exported file's
/// `{"dashboard": …}` wrapper taken off).
#[derive(Debug, Clone)]
pub struct Dashboard {
    pub path: PathBuf,
    pub json: Value,
}

impl Dashboard {
    /// The file name, for messages and tables.
    pub fn name(&self) -> String {
        self.path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

/// The repository's `grafana/dashboards` directory.
pub fn dashboards_dir() -> PathBuf {
    let lab = Path::new(env!("CARGO_MANIFEST_DIR"));
    lab.parent().unwrap_or(lab).join("grafana/dashboards")
}

/// Every `*.json` under `dir` (subdirectories included), parsed, sorted by path; none at all is
/// an error (a moved directory must not pass as "no problems").
pub fn load_all(dir: &Path) -> anyhow::Result<Vec<Dashboard>> {
    let mut paths = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "json") {
                paths.push(path);
            }
        }
    }
    paths.sort();
    if paths.is_empty() {
        bail!("no dashboards (*.json) in {}", dir.display());
    }
    paths.iter().map(|p| load(p)).collect()
}

pub fn load(path: &Path) -> anyhow::Result<Dashboard> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut json: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    if json["dashboard"].is_object() {
        json = json["dashboard"].take();
    }
    Ok(Dashboard { path: path.to_path_buf(), json })
}

/// Every panel in display order: the old schema's `rows[].panels[]` first, then `panels[]`
/// with rows' nested (collapsed) panels after their row.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: Option<&'a Value>, out: &mut Vec<&'a Value>) {
        for p in list.and_then(Value::as_array).into_iter().flatten() {
            out.push(p);
            walk(p.get("panels"), out);
        }
    }
    let mut out = Vec::new();
    for row in dashboard.get("rows").and_then(Value::as_array).into_iter().flatten() {
        walk(row.get("panels"), &mut out);
    }
    walk(dashboard.get("panels"), &mut out);
    out
}

fn is_row(panel: &Value) -> bool {
    panel.get("type").and_then(Value::as_str) == Some("row")
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// One `targets[]` entry of a panel, as written (variables not filled in).
#[derive(Debug, Clone, PartialEq)]
pub struct PanelQuery {
    /// The panel's title ("(untitled)" when it has none).
    pub panel: String,
    pub ref_id: String,
    /// None for a target that is not a PromQL query.
    pub expr: Option<String>,
    /// Grafana runs an instant query (at the end of the range) instead of a range query.
    pub instant: bool,
}

/// Every query of every panel (rows hold none of their own), in display order.
pub fn panel_queries(dashboard: &Value) -> Vec<PanelQuery> {
    let mut out = Vec::new();
    for panel in panels(dashboard).into_iter().filter(|p| !is_row(p)) {
        let title = match text(panel, "title") {
            "" => "(untitled)",
            t => t,
        };
        for t in panel.get("targets").and_then(Value::as_array).into_iter().flatten() {
            out.push(PanelQuery {
                panel: title.to_string(),
                ref_id: text(t, "refId").to_string(),
                expr: t.get("expr").and_then(Value::as_str).map(String::from),
                instant: t["instant"] == true && t["range"] != true,
            });
        }
    }
    out
}

/// (panel title, PromQL) of every query, variables filled in from `values` (titles leniently:
/// "Destinations of $client"); an unknown variable or a target without PromQL is an error.
pub fn filled_queries(dashboard: &Value, values: &Values) -> anyhow::Result<Vec<(String, String)>> {
    panel_queries(dashboard)
        .into_iter()
        .map(|q| {
            let title = fill(&q.panel, values).map_or(q.panel.clone(), |(t, _)| t);
            let expr = q
                .expr
                .as_deref()
                .with_context(|| format!("panel {title:?} query {}: no PromQL expr", q.ref_id))?;
            let promql = substitute(expr, values)
                .with_context(|| format!("panel {title:?} query {}", q.ref_id))?;
            Ok((title, promql))
        })
        .collect()
}

/// A `templating.list[]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Variable {
    pub name: String,
    /// `query`, `datasource`, `custom`, `interval`, `constant`, `textbox`, `adhoc`.
    pub kind: String,
    pub query: String,
    pub current: Option<String>,
}

/// The dashboard's template variables, in their order.
pub fn variables(dashboard: &Value) -> Vec<Variable> {
    dashboard
        .pointer("/templating/list")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|v| Variable {
            name: text(v, "name").to_string(),
            kind: v.get("type").and_then(Value::as_str).unwrap_or("query").to_string(),
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
        let values = Vars::default().values();
        assert!(filled_queries(&d, &values).is_err(), "Logs has no PromQL");
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
    }

    #[test]
    fn an_exported_dashboard_is_unwrapped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a.json"), r#"{"dashboard": {"uid": "a"}}"#).unwrap();
        std::fs::write(dir.path().join("b.json"), r#"{"uid": "b"}"#).unwrap();
        let all = load_all(dir.path()).unwrap();
        let uids: Vec<&str> = all.iter().map(|d| text(&d.json, "uid")).collect();
        assert_eq!(uids, ["b", "a"]);
        assert_eq!(all[1].name(), "a.json");
        std::fs::remove_dir_all(dir.path().join("sub")).unwrap();
        std::fs::remove_file(dir.path().join("b.json")).unwrap();
        assert!(load_all(dir.path()).is_err(), "no dashboards is an error");
    }
}
