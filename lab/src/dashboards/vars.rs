//! Grafana's variable references in panel queries and titles, filled in the way Grafana fills
//! them: `$name`, `${name}`, `${name:format}` and the old `[[name]]`, with the dashboard's own
//! variables and Grafana's built-in interval and range variables.
//!
//! A reference to a variable that has no value is an error (Grafana would send it to
//! Prometheus as it is, which fails to parse). A `$` followed by no name (a regex anchor) or
//! by digits (label_replace's `$1`) is PromQL's own and stays.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};

/// Variable name → value.
pub type Values = BTreeMap<String, String>;

/// Fills every reference in `text` from `values`; an unknown variable or an unclosed `${` is an
/// error.
pub fn substitute(text: &str, values: &Values) -> anyhow::Result<String> {
    let (filled, unknown) = fill(text, values)?;
    if let Some(name) = unknown.first() {
        bail!(
            "unknown variable ${name} in {text:?} (known: {:?})",
            values.keys().collect::<Vec<_>>()
        );
    }
    Ok(filled)
}

/// `text` with the references to known variables filled in and the others left as written,
/// and the names of those others in order. An unclosed `${` is an error.
pub fn fill(text: &str, values: &Values) -> anyhow::Result<(String, Vec<String>)> {
    let mut out = String::with_capacity(text.len());
    let mut unknown = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(['$', '[']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let (name, format, len) = reference_at(tail).with_context(|| format!("in {text:?}"))?;
        // Not a reference, or PromQL's `$1`: the character stays.
        if name.is_empty() || name.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&tail[..1]);
            rest = &tail[1..];
            continue;
        }
        match values.get(name) {
            Some(value) if format == Some("regex") => out.push_str(&escape_regex(value)),
            Some(value) => out.push_str(value),
            None => {
                out.push_str(&tail[..len]);
                unknown.push(name.to_string());
            }
        }
        rest = &tail[len..];
    }
    out.push_str(rest);
    Ok((out, unknown))
}

/// The reference `tail` starts with (at a `$` or `[`): (name, format, bytes it takes); the name
/// is empty when none starts there.
fn reference_at(tail: &str) -> anyhow::Result<(&str, Option<&str>, usize)> {
    if let Some(braced) = tail.strip_prefix("${") {
        let end = braced.find('}').context("unclosed ${")?;
        let inner = &braced[..end];
        let (name, format) = inner.split_once(':').map_or((inner, None), |(n, f)| (n, Some(f)));
        return Ok((name, format, end + 3));
    }
    if let Some(old) = tail.strip_prefix("[[") {
        return Ok(match old.find("]]") {
            Some(end) if end > 0 && old[..end].chars().all(is_name_char) => {
                (&old[..end], None, end + 4)
            }
            _ => ("", None, 1),
        });
    }
    if let Some(plain) = tail.strip_prefix('$') {
        let n = plain.find(|c: char| !is_name_char(c)).unwrap_or(plain.len());
        return Ok((&plain[..n], None, 1 + n));
    }
    Ok(("", None, 1))
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Grafana's `:regex` format: the value with regex metacharacters escaped.
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

/// The time range queries cover, and Grafana's built-in variables for it.
#[derive(Debug, Clone, Copy)]
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

    /// `$__interval`, `$__rate_interval`, `$__range` and the others Grafana sets for a range.
    pub fn builtins(&self) -> Values {
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

/// Fixed values for the dashboard variables, for checks that run without a Prometheus full of
/// data. `instance` and `site` are regexes (`.*` is Grafana's "All").
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

impl Vars {
    /// Every value: the dashboard variables and Grafana's built-ins for the last hour.
    pub fn values(&self) -> Values {
        let mut v = Range { start: 0.0, end: 3600.0, step: 30.0, scrape_interval: 30.0 }.builtins();
        for (name, value) in [
            ("__rate_interval", &self.rate_interval),
            ("__interval", &self.interval),
            ("__range", &"1h".to_string()),
            ("client", &self.client),
            ("instance", &self.instance),
            ("site", &self.site),
        ] {
            v.insert(name.to_string(), value.clone());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Values {
        Vars {
            client: "redmi-note".into(),
            instance: "gw:9977".into(),
            site: "home".into(),
            ..Vars::default()
        }
        .values()
    }

    fn vals(pairs: &[(&str, &str)]) -> Values {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn substitutes_plain_braced_and_interval_variables() {
        assert_eq!(
            substitute(
                r#"rate(x{client="$client", instance=~"${instance}", site=~"${site:regex}"}[$__rate_interval])"#,
                &vars()
            )
            .unwrap(),
            r#"rate(x{client="redmi-note", instance=~"gw:9977", site=~"home"}[2m])"#
        );
        // PromQL's $1 and a lone $ stay; an unknown variable is left by fill, refused by
        // substitute.
        let text = r#"label_replace(x, "a", "$1", "b", "(.*)") $nope $"#;
        assert_eq!(fill(text, &vars()).unwrap(), (text.to_string(), vec!["nope".to_string()]));
        assert!(substitute(text, &vars()).is_err());
        // A longer name is not its prefix variable.
        assert_eq!(
            fill("$clients $client", &vars()).unwrap(),
            ("$clients redmi-note".to_string(), vec!["clients".to_string()])
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
        assert!(substitute("m{site=\"${site\"}", &v).is_err(), "unclosed");
        assert_eq!(fill("[[nope]]", &v).unwrap().1, ["nope"]);
    }

    #[test]
    fn builtins() {
        let r = Range { start: 1000.0, end: 1090.0, step: 2.0, scrape_interval: 1.0 };
        let b = r.builtins();
        assert_eq!(
            (b["__rate_interval"].as_str(), b["__range"].as_str(), b["__interval"].as_str()),
            ("4s", "90s", "2s")
        );
        let fixed = Vars::default().values();
        assert_eq!(
            (
                fixed["__rate_interval"].as_str(),
                fixed["__range"].as_str(),
                fixed["__range_s"].as_str()
            ),
            ("2m", "1h", "3600")
        );
    }
}
