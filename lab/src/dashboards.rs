//! The Grafana dashboards in `grafana/dashboards/`: structural checks (the rules every dashboard
//! follows) and the PromQL each panel runs, with the dashboard variables filled in, so tests
//! and the demo can run exactly what a person looking at the dashboard would see.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

/// The data source every panel and query names: the dashboard's own variable, never a UID.
pub const DATASOURCE: &str = "${datasource}";

/// Variables every dashboard has (beside `datasource`).
pub const COMMON_VARIABLES: [&str; 2] = ["site", "instance"];

/// Values for the dashboard variables (and Grafana's interval variables) when queries are
/// extracted. `instance` and `site` are regexes (`.*` is Grafana's "All").
#[derive(Debug, Clone)]
pub struct Vars {
    pub client: String,
    pub instance: String,
    pub site: String,
    /// `$__rate_interval`: at least four scrape intervals.
    pub rate_interval: String,
    /// `$__interval`.
    pub interval: String,
}

impl Default for Vars {
    fn default() -> Self {
        Vars {
            client: String::new(),
            instance: ".*".into(),
            site: ".*".into(),
            rate_interval: "2m".into(),
            interval: "30s".into(),
        }
    }
}

/// A dashboard file, parsed.
#[derive(Debug, Clone)]
pub struct Dashboard {
    pub path: PathBuf,
    pub json: Value,
}

/// The repository's `grafana/dashboards` directory.
pub fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../grafana/dashboards")
}

/// Every `*.json` in `dir`, parsed, sorted by file name.
pub fn load_all(dir: &Path) -> anyhow::Result<Vec<Dashboard>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        bail!("no dashboards (*.json) in {}", dir.display());
    }
    paths.iter().map(|p| load(p)).collect()
}

pub fn load(path: &Path) -> anyhow::Result<Dashboard> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let json = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    Ok(Dashboard { path: path.to_path_buf(), json })
}

/// Every panel, rows' nested panels included, in file order.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: Option<&'a Value>, out: &mut Vec<&'a Value>) {
        for p in list.and_then(Value::as_array).into_iter().flatten() {
            out.push(p);
            walk(p.get("panels"), out);
        }
    }
    let mut out = Vec::new();
    walk(dashboard.get("panels"), &mut out);
    out
}

fn is_row(panel: &Value) -> bool {
    panel.get("type").and_then(Value::as_str) == Some("row")
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// (panel title, PromQL) for every query of every panel, variables substituted, in file order.
pub fn panel_queries(dashboard: &Value, vars: &Vars) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in panels(dashboard).into_iter().filter(|p| !is_row(p)) {
        let title = substitute(text(panel, "title"), vars);
        for target in panel.get("targets").and_then(Value::as_array).into_iter().flatten() {
            out.push((title.clone(), substitute(text(target, "expr"), vars)));
        }
    }
    out
}

/// Replaces `$name` and `${name}` for the dashboard variables and Grafana's interval variables.
/// Unknown variables are left as they are (and [`validate`] reports them).
pub fn substitute(text: &str, vars: &Vars) -> String {
    let values: [(&str, &str); 6] = [
        ("__rate_interval", &vars.rate_interval),
        ("__interval", &vars.interval),
        ("__range", "1h"),
        ("client", &vars.client),
        ("instance", &vars.instance),
        ("site", &vars.site),
    ];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = variable_at(after);
        match values.iter().find(|(n, _)| *n == name) {
            Some((_, value)) if len > 0 => out.push_str(value),
            _ => out.push_str(&rest[at..at + 1 + len]),
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// The variable name right after a `$`, and how many bytes its reference takes (`{name}` or
/// `name`); (`""`, 0) when none follows.
fn variable_at(s: &str) -> (&str, usize) {
    if let Some(inner) = s.strip_prefix('{') {
        return match inner.find('}') {
            Some(end) => (inner[..end].split(':').next().unwrap_or(""), end + 2),
            None => ("", 0),
        };
    }
    let len = s.bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'_').count();
    (&s[..len], len)
}

/// The names of the dashboard's template variables.
pub fn variables(dashboard: &Value) -> Vec<&str> {
    dashboard
        .pointer("/templating/list")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|v| text(v, "name"))
        .collect()
}

/// Every rule a dashboard breaks, as readable lines; empty when it is fine.
pub fn validate(dashboard: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if dashboard.get("schemaVersion").and_then(Value::as_u64).is_none_or(|v| v < 36) {
        problems.push("schemaVersion missing or older than 36 (Grafana 9)".into());
    }
    for key in ["uid", "title"] {
        if text(dashboard, key).is_empty() {
            problems.push(format!("no {key}"));
        }
    }
    check_variables(dashboard, &mut problems);
    check_datasources(dashboard, "", &mut problems);

    let mut ids = BTreeSet::new();
    for panel in panels(dashboard) {
        let title = text(panel, "title");
        match panel.get("id").and_then(Value::as_u64) {
            Some(id) if !ids.insert(id) => {
                problems.push(format!("panel {title:?}: id {id} is used twice"))
            }
            Some(_) => {}
            None => problems.push(format!("panel {title:?}: no numeric id")),
        }
        if panel.get("gridPos").is_none() {
            problems.push(format!("panel {title:?}: no gridPos"));
        }
        if is_row(panel) {
            continue;
        }
        if title.is_empty() {
            problems.push("a panel has no title".into());
        }
        if panel.pointer("/datasource/uid").and_then(Value::as_str) != Some(DATASOURCE) {
            problems.push(format!("panel {title:?}: datasource is not {DATASOURCE}"));
        }
        if panel
            .pointer("/fieldConfig/defaults/unit")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            problems.push(format!("panel {title:?}: no unit (fieldConfig.defaults.unit)"));
        }
        let targets =
            panel.get("targets").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel {title:?}: no query"));
        }
        for t in targets {
            let expr = text(t, "expr");
            if expr.trim().is_empty() {
                problems.push(format!("panel {title:?}: query {} is empty", text(t, "refId")));
            }
            if t.pointer("/datasource/uid").and_then(Value::as_str) != Some(DATASOURCE) {
                problems.push(format!(
                    "panel {title:?}: query {} does not use {DATASOURCE}",
                    text(t, "refId")
                ));
            }
        }
    }
    // After substitution no `$name` may be left: it would be a typo or an undefined variable
    // (`$1` in label_replace is PromQL's own).
    let vars = Vars { client: "c".into(), ..Vars::default() };
    for (title, expr) in panel_queries(dashboard, &vars) {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find('$') {
            rest = &rest[at + 1..];
            let (name, _) = variable_at(rest);
            if !name.is_empty() && !name.bytes().all(|b| b.is_ascii_digit()) {
                problems.push(format!("panel {title:?}: unknown variable ${name} in {expr}"));
            }
        }
    }
    problems
}

fn check_variables(dashboard: &Value, problems: &mut Vec<String>) {
    let list = dashboard
        .pointer("/templating/list")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let find = |name: &str| list.iter().find(|v| text(v, "name") == name);
    match find("datasource") {
        Some(v) if text(v, "type") == "datasource" && text(v, "query") == "prometheus" => {}
        _ => problems.push("no `datasource` variable of type datasource (query prometheus)".into()),
    }
    for name in COMMON_VARIABLES {
        if find(name).is_none_or(|v| text(v, "type") != "query") {
            problems.push(format!("no `{name}` query variable"));
        }
    }
    // A variable is used when something other than its own definition refers to it.
    for (i, var) in list.iter().enumerate() {
        let name = text(var, "name");
        let mut others = dashboard.clone();
        if let Some(l) = others.pointer_mut("/templating/list").and_then(Value::as_array_mut) {
            l.remove(i);
        }
        let haystack = others.to_string();
        let braced = format!("${{{name}");
        let plain = format!("${name}");
        let used = haystack.contains(&braced)
            || haystack.match_indices(&plain).any(|(at, _)| {
                haystack[at + plain.len()..]
                    .bytes()
                    .next()
                    .is_none_or(|b| !(b.is_ascii_alphanumeric() || b == b'_'))
            });
        if !used {
            problems.push(format!("variable `{name}` is never used"));
        }
    }
}

/// Any `datasource` object anywhere must name `${datasource}` (the annotation built into every
/// dashboard, `-- Grafana --`, is Grafana's own and allowed).
fn check_datasources(v: &Value, at: &str, problems: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (key, child) in map {
                let here = format!("{at}/{key}");
                if key == "datasource" {
                    let uid = child.get("uid").and_then(Value::as_str).or(child.as_str());
                    let builtin = child.get("type").and_then(Value::as_str) == Some("grafana");
                    if let Some(uid) = uid
                        && uid != DATASOURCE
                        && !builtin
                    {
                        problems.push(format!(
                            "{here}: hard-coded data source {uid:?} (use {DATASOURCE})"
                        ));
                    }
                }
                check_datasources(child, &here, problems);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                check_datasources(child, &format!("{at}/{i}"), problems);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        Vars {
            client: "redmi-note".into(),
            instance: "gw:9977".into(),
            site: "home".into(),
            ..Vars::default()
        }
    }

    #[test]
    fn substitutes_plain_braced_and_interval_variables() {
        assert_eq!(
            substitute(
                r#"rate(x{client="$client", instance=~"${instance}", site=~"${site:regex}"}[$__rate_interval])"#,
                &vars()
            ),
            r#"rate(x{client="redmi-note", instance=~"gw:9977", site=~"home"}[2m])"#
        );
        // Unknown variables, PromQL's $1 and a lone $ stay.
        assert_eq!(
            substitute(r#"label_replace(x, "a", "$1", "b", "(.*)") $nope $"#, &vars()),
            r#"label_replace(x, "a", "$1", "b", "(.*)") $nope $"#
        );
        // A longer name is not its prefix variable.
        assert_eq!(substitute("$clients $client", &vars()), "$clients redmi-note");
    }

    fn minimal(panel_expr: &str, unit: &str, ds_uid: &str) -> Value {
        serde_json::json!({
            "uid": "u", "title": "t", "schemaVersion": 39,
            "templating": {"list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus"},
                {"name": "site", "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"}},
                {"name": "instance", "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"}, "query": "label_values(up{site=~\"$site\"}, instance)"}
            ]},
            "panels": [
                {"id": 1, "type": "row", "title": "r", "gridPos": {}, "panels": []},
                {"id": 2, "type": "stat", "title": "p", "gridPos": {},
                 "datasource": {"type": "prometheus", "uid": ds_uid},
                 "fieldConfig": {"defaults": {"unit": unit}},
                 "targets": [{"refId": "A", "expr": panel_expr, "datasource": {"type": "prometheus", "uid": "${datasource}"}}]}
            ]
        })
    }

    #[test]
    fn a_correct_dashboard_passes_and_yields_its_queries() {
        let d = minimal(r#"sum(up{instance=~"$instance"})"#, "none", DATASOURCE);
        assert_eq!(validate(&d), Vec::<String>::new());
        assert_eq!(
            panel_queries(&d, &vars()),
            vec![("p".to_string(), r#"sum(up{instance=~"gw:9977"})"#.to_string())]
        );
    }

    #[test]
    fn each_broken_rule_is_reported() {
        let d = minimal(r#"sum(up{client="$cleint"})"#, "", "P1809F7CD0C75ACF3");
        assert_eq!(
            validate(&d),
            vec![
                "variable `instance` is never used".to_string(),
                "/panels/1/datasource: hard-coded data source \"P1809F7CD0C75ACF3\" (use ${datasource})".into(),
                "panel \"p\": datasource is not ${datasource}".into(),
                "panel \"p\": no unit (fieldConfig.defaults.unit)".into(),
                "panel \"p\": unknown variable $cleint in sum(up{client=\"$cleint\"})".into(),
            ]
        );
        let mut unused = minimal("sum(up)", "none", DATASOURCE);
        unused["panels"][1]["id"] = 1.into();
        unused["schemaVersion"] = 30.into();
        assert_eq!(
            validate(&unused),
            vec![
                "schemaVersion missing or older than 36 (Grafana 9)".to_string(),
                "variable `instance` is never used".into(),
                "panel \"p\": id 1 is used twice".into(),
            ]
        );
    }
}
