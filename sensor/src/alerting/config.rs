//! The `alerting:` section of sensor.yaml: where alerts go, how often they are re-sent, and its
//! validation (messages say what to change).

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use ureq::{http::Uri, tls::Certificate};

use super::{
    error::AlertingError,
    secrets::{read_ca_file, read_secret},
};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertingConfig {
    /// Every alert goes to each of them. Empty: alerts exist only as metrics.
    #[serde(default)]
    pub alertmanagers: Vec<AlertmanagerTarget>,
    /// A firing alert is re-sent this often (Prometheus's `--rules.alert.resend-delay`).
    #[serde(default = "default_resend_interval", with = "humantime_serde")]
    pub resend_interval: Duration,
    /// A resolved alert keeps being re-sent this long (the evaluator keeps passing it).
    #[serde(default = "default_resolved_retention", with = "humantime_serde")]
    pub resolved_retention: Duration,
    /// Per HTTP request to an Alertmanager.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Alerts waiting per Alertmanager; beyond it the oldest are dropped.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// The `site` label of every alert sent (which gateway, when several send to one
    /// Alertmanager), unless the rule's own labels set `site`. Unset: no such label.
    #[serde(default)]
    pub site: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerTarget {
    /// Base URL, e.g. `http://127.0.0.1:9093`; alerts are POSTed to `{url}/api/v2/alerts`.
    pub url: String,
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
    /// File holding a bearer token (re-read for every request, so it can be rotated).
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// PEM file of the CA(s) that signed the Alertmanager's certificate; replaces the built-in
    /// (Mozilla) roots for this target.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    /// File holding the password (re-read for every request).
    pub password_file: PathBuf,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        AlertingConfig {
            alertmanagers: Vec::new(),
            resend_interval: default_resend_interval(),
            resolved_retention: default_resolved_retention(),
            timeout: default_timeout(),
            queue_capacity: default_queue_capacity(),
            site: None,
        }
    }
}

fn default_resend_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_resolved_retention() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_queue_capacity() -> usize {
    10_000
}

impl AlertingConfig {
    /// Checks what serde cannot: URLs, files, and values that would make delivery misbehave.
    pub fn validate(&self) -> Result<(), AlertingError> {
        let setting = |setting, rule| Err(AlertingError::Setting { setting, rule });
        if self.resend_interval.is_zero() {
            return setting("resend_interval", "above 0 (default 1m)");
        }
        if self.timeout.is_zero() {
            return setting("timeout", "above 0 (default 10s)");
        }
        if self.queue_capacity == 0 {
            return setting("queue_capacity", "at least 1 (default 10000)");
        }
        if self.site.as_ref().is_some_and(|site| site.trim().is_empty()) {
            return setting("site", "a name, e.g. `site: home` (leave it out for no site label)");
        }
        let mut seen = HashSet::new();
        for target in &self.alertmanagers {
            target.validate()?;
            if !seen.insert(target.url.as_str()) {
                return Err(AlertingError::DuplicateTarget { url: target.url.clone() });
            }
        }
        Ok(())
    }
}

impl AlertmanagerTarget {
    fn validate(&self) -> Result<(), AlertingError> {
        let url = || self.url.clone();
        let uri: Uri =
            self.url.parse().map_err(|error| AlertingError::NotAUrl { url: url(), error })?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(AlertingError::UrlScheme { url: url() }),
        };
        let Some(authority) = uri.authority() else {
            return Err(AlertingError::UrlHost { url: url() });
        };
        if authority.as_str().contains('@') {
            return Err(AlertingError::UrlCredentials { url: url() });
        }
        if uri.query().is_some() {
            return Err(AlertingError::UrlQuery { url: url() });
        }
        if uri.path().trim_end_matches('/').ends_with("/api/v2/alerts") {
            return Err(AlertingError::UrlPushPath { url: url() });
        }
        if self.basic_auth.is_some() && self.bearer_token_file.is_some() {
            return Err(AlertingError::BothAuth { url: url() });
        }
        if let Some(auth) = &self.basic_auth {
            if auth.username.is_empty() || auth.username.contains(':') {
                return Err(AlertingError::Username { url: url() });
            }
            read_secret(&auth.password_file).map_err(self.file("basic_auth.password_file"))?;
        }
        if let Some(path) = &self.bearer_token_file {
            read_secret(path).map_err(self.file("bearer_token_file"))?;
        }
        if let Some(path) = &self.tls_ca_file {
            if !https {
                return Err(AlertingError::CaOverHttp { url: url() });
            }
            self.ca_certificates(path)?;
        }
        Ok(())
    }

    /// The certificates of `tls_ca_file` (at `path`).
    pub(crate) fn ca_certificates(
        &self,
        path: &Path,
    ) -> Result<Vec<Certificate<'static>>, AlertingError> {
        read_ca_file(path).map_err(self.file("tls_ca_file"))
    }

    /// An error of the file under `key`, said of this target.
    fn file(&self, key: &'static str) -> impl FnOnce(AlertingError) -> AlertingError + '_ {
        move |error| AlertingError::TargetFile {
            url: self.url.clone(),
            key,
            error: Box::new(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> AlertingConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults() {
        let c = parse("alertmanagers: [{url: 'http://127.0.0.1:9093'}]");
        assert_eq!(c.resend_interval, Duration::from_secs(60));
        assert_eq!(c.resolved_retention, Duration::from_secs(900));
        assert_eq!(c.timeout, Duration::from_secs(10));
        assert_eq!(c.queue_capacity, 10_000);
        assert_eq!(c.alertmanagers[0].url, "http://127.0.0.1:9093");
        assert_eq!(c.alertmanagers[0].basic_auth, None);
        c.validate().unwrap();
        assert_eq!(parse("{}"), AlertingConfig::default());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = serde_yaml::from_str::<AlertingConfig>("resend: 1m").unwrap_err();
        assert!(e.to_string().contains("unknown field `resend`"), "{e}");
        let e = serde_yaml::from_str::<AlertingConfig>(
            "alertmanagers: [{url: 'http://a', ca_file: x}]",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `ca_file`"), "{e}");
    }

    #[test]
    fn bad_targets_say_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "secret\n").unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let check = |yaml: String| parse(&yaml).validate().unwrap_err().to_string();
        let pw = pw.display();
        for (yaml, want) in [
            (
                "alertmanagers: [{url: 'ftp://am:9093'}]".to_string(),
                "must start with http:// or https://",
            ),
            (
                "alertmanagers: [{url: '127.0.0.1:9093'}]".to_string(),
                "must start with http:// or https://",
            ),
            ("alertmanagers: [{url: 'http://u:p@am:9093'}]".to_string(), "move them to basic_auth"),
            (
                "alertmanagers: [{url: 'http://am:9093/api/v2/alerts'}]".to_string(),
                "give the base URL",
            ),
            ("alertmanagers: [{url: 'http://am:9093?x=1'}]".to_string(), "query string"),
            (
                "alertmanagers: [{url: 'http://am:9093'}, {url: 'http://am:9093'}]".to_string(),
                "twice",
            ),
            (
                format!(
                    "alertmanagers: [{{url: 'http://am', basic_auth: {{username: u, password_file: {pw}}}, bearer_token_file: {pw}}}]"
                ),
                "keep one",
            ),
            (
                "alertmanagers: [{url: 'http://am', bearer_token_file: /nonexistent/token}]"
                    .to_string(),
                "cannot read /nonexistent/token",
            ),
            (
                format!(
                    "alertmanagers: [{{url: 'http://am', bearer_token_file: {}}}]",
                    empty.display()
                ),
                "is empty",
            ),
            (
                format!(
                    "alertmanagers: [{{url: 'http://am', tls_ca_file: {}}}]",
                    not_pem.display()
                ),
                "use https://",
            ),
            (
                format!(
                    "alertmanagers: [{{url: 'https://am', tls_ca_file: {}}}]",
                    not_pem.display()
                ),
                "no PEM certificate",
            ),
            ("resend_interval: 0s".to_string(), "resend_interval must be above 0"),
            ("queue_capacity: 0".to_string(), "queue_capacity must be at least 1"),
        ] {
            let e = check(yaml.clone());
            assert!(e.contains(want), "{yaml}: {e}");
        }
        let ok = parse(&format!(
            "alertmanagers: [{{url: 'https://am:9093/prefix/', basic_auth: {{username: alice, password_file: {pw}}}}}]"
        ));
        ok.validate().unwrap();
    }
}
