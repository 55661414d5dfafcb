//! Just enough of the Prometheus text exposition format to assert on exact samples: tests
//! compare numbers for one series identified by its full label set, and the demo sums series.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// The label's value, "" when absent (Prometheus treats both the same).
    pub fn label(&self, key: &str) -> &str {
        self.labels.get(key).map(String::as_str).unwrap_or("")
    }

    /// Whether every given label has the given value (other labels may exist).
    pub fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels.iter().all(|(k, v)| self.label(k) == *v)
    }
}

/// A parsed scrape.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

impl Scrape {
    pub fn parse(text: &str) -> anyhow::Result<Scrape> {
        let mut samples = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            samples.push(parse_line(line).with_context(|| format!("line {}: {line}", n + 1))?);
        }
        Ok(Scrape { samples })
    }

    /// The value of the series with exactly this name and label set (order-insensitive;
    /// a series with an extra label does not match), or None.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> =
            labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples.iter().find(|s| s.name == name && s.labels == want).map(|s| s.value)
    }

    /// Like [`Scrape::get`], but a missing series is an error listing the series that do
    /// exist under that name, which is usually enough to see a label mismatch.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        if let Some(v) = self.get(name, labels) {
            return Ok(v);
        }
        let present: Vec<String> =
            self.series(name).map(|s| format!("  {}", format_sample(s))).collect();
        bail!(
            "no sample {}{}; present under that name:\n{}",
            name,
            format_labels(labels.iter().map(|(k, v)| (*k, *v))),
            if present.is_empty() { "  (none)".to_string() } else { present.join("\n") }
        )
    }

    /// Every sample of metric `name`.
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// Samples of `name` whose labels include `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.series(name).filter(move |s| s.has(labels))
    }

    /// Sum over [`Scrape::matching`] (0 when none match).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }
}

/// `name{a="1",b="2"} value`, for messages.
pub fn format_sample(s: &Sample) -> String {
    format!(
        "{}{} {}",
        s.name,
        format_labels(s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
        s.value
    )
}

fn format_labels<'a>(labels: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut sorted: Vec<_> = labels.collect();
    sorted.sort();
    let inner: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(","))
}

fn parse_line(line: &str) -> anyhow::Result<Sample> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).context("no value")?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        let end;
        loop {
            while matches!(chars.peek(), Some((_, c)) if *c == ',' || c.is_whitespace()) {
                chars.next();
            }
            match chars.peek() {
                None => bail!("unterminated label set"),
                Some((i, '}')) => {
                    end = *i + 1;
                    break;
                }
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                bail!("label {key}: value must be quoted");
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    None => bail!("label {key}: unterminated value"),
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => bail!("label {key}: dangling escape"),
                    },
                    Some((_, c)) => value.push(c),
                }
            }
            labels.insert(key.trim().to_string(), value);
        }
        rest = &r[end..];
    }
    let value_text = rest.split_whitespace().next().context("no value")?;
    let value = match value_text {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().with_context(|| format!("bad value {v:?}"))?,
    };
    Ok(Sample { name, labels, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP gwsensor_client_bytes_total Bytes.
# TYPE gwsensor_client_bytes_total counter
gwsensor_client_bytes_total{client="64:09:80:00:00:01",direction="upload",mac="64:09:80:00:00:01"} 10420
gwsensor_client_bytes_total{client="64:09:80:00:00:01",direction="download",mac="64:09:80:00:00:01"} 7452
gwsensor_remote_bytes_total{client="x",mac="x",direction="upload",remote="other",protocol="",port=""} 5
weird{a="q\"uo\\te, }",b="x\ny"} 1.5e3 1700000000
gwsensor_poll_duration_seconds_bucket{le="+Inf"} 3
no_labels 42
"#;

    #[test]
    fn exact_label_set_order_insensitive() {
        let s = Scrape::parse(TEXT).unwrap();
        let labels = [
            ("mac", "64:09:80:00:00:01"),
            ("direction", "upload"),
            ("client", "64:09:80:00:00:01"),
        ];
        assert_eq!(s.get("gwsensor_client_bytes_total", &labels), Some(10420.0));
        // A subset of the labels is not the series.
        assert_eq!(s.get("gwsensor_client_bytes_total", &labels[..2]), None);
        assert_eq!(s.sum("gwsensor_client_bytes_total", &[("mac", "64:09:80:00:00:01")]), 17872.0);
        let err =
            s.value("gwsensor_client_bytes_total", &[("mac", "nope")]).unwrap_err().to_string();
        assert!(err.contains("direction=\"download\""), "{err}");
    }

    #[test]
    fn empty_labels_escapes_and_specials() {
        let s = Scrape::parse(TEXT).unwrap();
        let other = [
            ("client", "x"),
            ("mac", "x"),
            ("direction", "upload"),
            ("remote", "other"),
            ("protocol", ""),
            ("port", ""),
        ];
        assert_eq!(s.get("gwsensor_remote_bytes_total", &other), Some(5.0));
        assert_eq!(s.get("weird", &[("a", "q\"uo\\te, }"), ("b", "x\ny")]), Some(1500.0));
        assert_eq!(s.get("gwsensor_poll_duration_seconds_bucket", &[("le", "+Inf")]), Some(3.0));
        assert_eq!(s.get("no_labels", &[]), Some(42.0));
        assert!(Scrape::parse("bad{a=1} 2").is_err());
    }
}
