//! The policy (docs/policy.md): what each device may do. Loaded from YAML with errors that
//! name the file, line and column, then evaluated on every poll by [`eval::Evaluator`].

pub mod condition;
pub mod countries;
pub mod error;
pub mod eval;
pub mod matcher;
pub mod schedule;
pub mod spec;
pub mod template;
pub mod values;

use std::{collections::BTreeMap, path::Path, time::Duration};

use crate::types::{LocatedError, user_file};
use condition::Condition;
pub use error::PolicyError;
use matcher::DnsBypass;
use spec::{MatchSpec, PolicySpec, RuleSpec};
use template::Template;
use values::GroupBy;

/// A validated policy, ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub rules: Vec<Rule>,
    /// Global exceptions: traffic matching one never counts for any rule.
    pub exceptions: Vec<MatchSpec>,
    pub dns: DnsBypass,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub matches: MatchSpec,
    pub condition: Condition,
    pub for_: Duration,
    pub severity: String,
    pub labels: BTreeMap<String, String>,
    pub summary: Template,
    pub description: Template,
    pub group_by: GroupBy,
    pub schedule: Option<schedule::Schedule>,
    pub except: Vec<MatchSpec>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            rules: Vec::new(),
            exceptions: Vec::new(),
            dns: DnsBypass::new(&Default::default()),
        }
    }
}

impl Policy {
    /// The LAN's own hosts (the router, a Pi-hole) are always allowed resolvers for
    /// `dns_bypass`, whatever the file lists; `lan_prefixes` replace the ones set before.
    pub fn allow_lan_resolvers(&mut self, lan_prefixes: &[ipnet::IpNet]) {
        self.dns.allow_networks(lan_prefixes);
    }

    /// Whether any rule counts flows: with none, a poll's flows need not be named for the
    /// policy.
    pub fn needs_flows(&self) -> bool {
        self.rules.iter().any(|r| r.condition.needs_flows())
    }

    pub fn load(path: &Path) -> Result<Policy, LocatedError> {
        let text = user_file::read_user_file(
            path,
            "policy file",
            "point `policy:` in the config at a policy YAML, e.g. deploy/policy.yaml",
        )?;
        Policy::parse(&text, path)
    }

    /// Parses and validates policy text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Policy, LocatedError> {
        user_file::check_yaml(text, path)?;
        let spec: PolicySpec =
            serde_yaml::from_str(text).map_err(|e| LocatedError::from_yaml(&e, path, hint_for))?;
        let fail = |rule: Option<&str>, message: String, e: &PolicyError| LocatedError {
            path: path.to_owned(),
            location: rule.and_then(|name| locate_rule(text, name)),
            message,
            hint: hint(e).map(str::to_string),
        };
        if let Some(i) = spec.exceptions.iter().position(MatchSpec::is_empty) {
            let e = PolicyError::EmptyGlobalException(i + 1);
            return Err(fail(None, e.to_string(), &e));
        }
        let mut rules: Vec<Rule> = Vec::with_capacity(spec.rules.len());
        for r in &spec.rules {
            let name = r.name.0.as_str();
            if rules.iter().any(|x| x.name == name) {
                let e = PolicyError::DuplicateRule(name.to_string());
                return Err(fail(Some(name), e.to_string(), &e));
            }
            rules
                .push(compile(r).map_err(|e| fail(Some(name), format!("rule `{name}`: {e}"), &e))?);
        }
        Ok(Policy { rules, exceptions: spec.exceptions, dns: DnsBypass::new(&spec.dns) })
    }
}

fn compile(r: &RuleSpec) -> Result<Rule, PolicyError> {
    let condition = r.condition.single()?;
    condition.validate()?;
    if let Some(i) = r.except.iter().position(MatchSpec::is_empty) {
        return Err(PolicyError::EmptyException(i + 1));
    }
    if let Some(s) = &r.schedule
        && s.windows.is_empty()
    {
        return Err(PolicyError::EmptySchedule);
    }
    let (summary, description) = condition.default_texts();
    Ok(Rule {
        name: r.name.0.clone(),
        matches: r.matches.clone(),
        group_by: r.group_by.unwrap_or_else(|| condition.default_group_by()),
        condition,
        for_: r.for_,
        severity: r.severity.clone(),
        labels: r.labels.iter().map(|(k, v)| (k.0.clone(), v.clone())).collect(),
        summary: r.summary.clone().unwrap_or_else(|| template(summary)),
        description: r.description.clone().unwrap_or_else(|| template(description)),
        schedule: r.schedule.clone(),
        except: r.except.clone(),
    })
}

fn template(text: &str) -> Template {
    // The built-in texts only use known placeholders (a unit test parses each).
    Template::parse(text)
        .unwrap_or_else(|_| Template::parse("{{ rule }}").expect("a plain placeholder parses"))
}

/// How to fix an error about a rule, or the policy, as a whole. A bad value has none: its
/// message says what a good one looks like.
fn hint(e: &PolicyError) -> Option<&'static str> {
    match e {
        PolicyError::NoCondition | PolicyError::TwoConditions => Some(condition::KINDS_HINT),
        PolicyError::ShortWindow => Some("use e.g. `window: 10m`"),
        PolicyError::VolumeZero => Some("for any traffic at all use the `traffic` condition"),
        PolicyError::RateThreshold => Some("e.g. `rate: {bytes_per_second: 1MB, window: 1m}`"),
        PolicyError::EmptyException(_) => {
            Some("an empty exception would silence the rule; give it a `client` or a `destination`")
        }
        PolicyError::EmptySchedule => {
            Some("e.g. `schedule: {windows: [{days: [mon, tue], from: \"22:00\", to: \"06:00\"}]}`")
        }
        PolicyError::EmptyGlobalException(_) => Some(
            "an empty exception would silence every rule; give it a `client` or a `destination`",
        ),
        PolicyError::DuplicateRule(_) => {
            Some("rule names become the alert's alertname and must be unique")
        }
        PolicyError::Glob { .. }
        | PolicyError::EmptyDomain
        | PolicyError::Domain(_)
        | PolicyError::Cidr(_)
        | PolicyError::Country(_)
        | PolicyError::Asn(_)
        | PolicyError::PortRange(_)
        | PolicyError::Protocol(_)
        | PolicyError::Mac(_)
        | PolicyError::Size(_)
        | PolicyError::LabelName(_)
        | PolicyError::ReservedLabel(_)
        | PolicyError::TimeZone(_)
        | PolicyError::Day(_)
        | PolicyError::TimeOfDay(_)
        | PolicyError::UnclosedPlaceholder(_)
        | PolicyError::UnknownPlaceholder { .. } => None,
    }
}

fn hint_for(message: &str) -> Option<String> {
    if message.contains("unknown field") {
        Some("check the spelling; docs/policy.md lists every key".into())
    } else if message.contains("missing field `condition`") {
        Some(
            "every rule needs a condition, e.g. `condition: {volume: {above: 5MB, window: 10m}}`"
                .into(),
        )
    } else if message.contains("missing field `name`") {
        Some("every rule needs a `name` (it becomes the alert's alertname)".into())
    } else if message.contains("duration") || message.contains("time unit") {
        Some("durations look like 30s, 10m, 1h or 7d".into())
    } else if message.contains("unknown variant") {
        Some("docs/policy.md lists the allowed values".into())
    } else {
        None
    }
}

/// Line and column of a rule's `name:` entry, for errors about the rule as a whole.
fn locate_rule(text: &str, name: &str) -> Option<(usize, usize)> {
    text.lines().enumerate().find_map(|(i, line)| {
        let t = line.trim_start().trim_start_matches("- ").trim_start();
        let rest = t.strip_prefix("name:")?;
        (rest.trim().trim_matches(['"', '\'']) == name).then_some((i + 1, line.len() - t.len() + 1))
    })
}

#[cfg(test)]
mod tests;
