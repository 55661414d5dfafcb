//! The rules every dashboard of the repository follows: Grafana 9 or later, a `datasource`
//! variable used everywhere instead of a hard-coded data source, the common variables, units,
//! unique panel ids, and no reference to a variable that has no value.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{Vars, fill, is_row, panel_queries, panels, text};

/// The data source every panel and query names: the dashboard's own variable, never a UID.
pub const DATASOURCE: &str = "${datasource}";

/// Variables every dashboard has (beside `datasource`).
pub const COMMON_VARIABLES: [&str; 2] = ["site", "instance"];

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
    // Every variable a query refers to must have a value: an unknown one is a typo or an
    // undefined variable (`$1` in label_replace is PromQL's own).
    let values = Vars { client: "c".into(), ..Vars::default() }.values();
    for q in panel_queries(dashboard) {
        let title = fill(&q.panel, &values).map_or(q.panel.clone(), |(t, _)| t);
        match fill(q.expr.as_deref().unwrap_or(""), &values) {
            Ok((expr, unknown)) => {
                for name in unknown {
                    problems.push(format!("panel {title:?}: unknown variable ${name} in {expr}"));
                }
            }
            Err(e) => problems.push(format!("panel {title:?}: {e:#}")),
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
        let values =
            Vars { client: "redmi-note".into(), instance: "gw:9977".into(), ..Vars::default() }
                .values();
        assert_eq!(
            super::super::filled_queries(&d, &values).unwrap(),
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
