//! `summary` and `description` templates: `{{ client }} sent {{ bytes }} to {{ destination }}`.
//! Placeholders are checked when the policy loads, so a typo fails `check-config`, not an alert.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use super::error::PolicyError;

/// Placeholders an alert can fill in.
pub const FIELDS: &[&str] = &[
    "rule",
    "severity",
    "client",
    "mac",
    "group",
    "vendor",
    "destination",
    "country",
    "asn",
    "bytes",
    "packets",
    "rate",
    "window",
    "for",
];

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Field(String),
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, PolicyError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end =
                after.find("}}").ok_or_else(|| PolicyError::UnclosedPlaceholder(text.into()))?;
            let field = after[..end].trim();
            if !FIELDS.contains(&field) {
                return Err(PolicyError::UnknownPlaceholder {
                    field: field.into(),
                    known: FIELDS.join(", "),
                });
            }
            parts.push(Part::Field(field.to_string()));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    pub fn render(&self, values: &BTreeMap<&str, String>) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.as_str(),
                Part::Field(f) => values.get(f.as_str()).map(String::as_str).unwrap_or(""),
            })
            .collect()
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::values::from_text(d, Template::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_fields_and_refuses_unknown_ones() {
        let t = Template::parse("{{client}} sent {{ bytes }} to {{destination}} in {{ window }}.")
            .unwrap();
        let values = BTreeMap::from([
            ("client", "phone".to_string()),
            ("bytes", "6.0 MB".to_string()),
            ("destination", "xiaomi.net".to_string()),
            ("window", "10m".to_string()),
        ]);
        assert_eq!(t.render(&values), "phone sent 6.0 MB to xiaomi.net in 10m.");
        assert!(
            Template::parse("{{ clinet }}")
                .unwrap_err()
                .to_string()
                .contains("unknown placeholder `{{ clinet }}`")
        );
        assert!(Template::parse("{{ client").is_err());
        assert_eq!(Template::parse("plain").unwrap().render(&values), "plain");
    }
}
