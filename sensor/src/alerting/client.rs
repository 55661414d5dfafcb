//! One Alertmanager's HTTP side: the API v2 body (postable alerts), the client with its TLS
//! roots and credentials, and what a failed POST means. Blocking (ureq): run on the worker's
//! own thread.

use std::{
    collections::BTreeMap,
    io::Read as _,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use base64::Engine as _;
use serde::Serialize;
use ureq::tls::{RootCerts, TlsConfig};

use super::{
    config::AlertmanagerTarget, error::AlertingError, schedule::ends_at, secrets::read_secret,
};
use crate::types::alert::Alert;

const USER_AGENT: &str = concat!("gwsensor/", env!("CARGO_PKG_VERSION"));
/// How much of an error response goes into the log.
const BODY_EXCERPT: u64 = 512;

/// Alertmanager API v2 `postableAlert`.
#[derive(Debug, Serialize)]
struct PostableAlert<'a> {
    labels: BTreeMap<&'a str, &'a str>,
    annotations: BTreeMap<&'a str, &'a str>,
    #[serde(rename = "startsAt")]
    starts_at: String,
    #[serde(rename = "endsAt")]
    ends_at: String,
    #[serde(rename = "generatorURL", skip_serializing_if = "str::is_empty")]
    generator_url: &'a str,
}

/// Timings an `endsAt` depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Validity {
    pub poll_interval: Duration,
    pub resend_interval: Duration,
}

/// The JSON body for `alerts`, with `endsAt` computed for `send_time`.
pub(crate) fn body<'a>(
    alerts: impl IntoIterator<Item = &'a Alert>,
    send_time: SystemTime,
    validity: Validity,
) -> Vec<u8> {
    let postable: Vec<PostableAlert<'_>> = alerts
        .into_iter()
        .map(|a| PostableAlert {
            // An empty value is the same as no label in Prometheus; Alertmanager would keep it.
            labels: non_empty(&a.labels),
            annotations: non_empty(&a.annotations),
            starts_at: rfc3339(a.starts_at),
            ends_at: rfc3339(ends_at(
                a,
                send_time,
                validity.poll_interval,
                validity.resend_interval,
            )),
            generator_url: &a.generator_url,
        })
        .collect();
    // Serializing string maps and strings cannot fail.
    serde_json::to_vec(&postable).unwrap_or_default()
}

fn non_empty(map: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    map.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// RFC 3339 in UTC with milliseconds, what Alertmanager itself writes.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    // humantime panics before 1970; a router without a clock can start at 1970, not before.
    humantime::format_rfc3339_millis(t.max(SystemTime::UNIX_EPOCH)).to_string()
}

#[derive(Debug, Clone, PartialEq)]
enum Auth {
    None,
    Basic { username: String, password_file: PathBuf },
    Bearer { token_file: PathBuf },
}

impl Auth {
    /// The `Authorization` header, reading the secret now (files may be rotated).
    fn header(&self) -> Result<Option<String>, AlertingError> {
        Ok(match self {
            Auth::None => None,
            Auth::Basic { username, password_file } => {
                let password = read_secret(password_file)?;
                Some(basic_auth_header(username, &password))
            }
            Auth::Bearer { token_file } => Some(format!("Bearer {}", read_secret(token_file)?)),
        })
    }
}

fn basic_auth_header(username: &str, password: &str) -> String {
    let raw = format!("{username}:{password}");
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
}

/// Why a POST failed: the delivery outcome, which decides between retrying and dropping
/// ([`SendError::retryable`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// The password or token file could not be read (retried: it may be fixed meanwhile).
    #[error("{0}")]
    Credentials(AlertingError),
    #[error("{0}")]
    Transport(ureq::Error),
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
}

impl SendError {
    /// Whether retrying the same alerts can succeed. Alertmanager answers 400 (and its API
    /// layer 422) when it rejects alerts as invalid; it still stores the valid ones of the
    /// batch, and the rejected ones would be rejected forever, blocking the queue.
    pub fn retryable(&self) -> bool {
        !matches!(self, SendError::Status { status: 400 | 422, .. })
    }
}

/// How to reach one Alertmanager.
pub(crate) struct Endpoint {
    agent: ureq::Agent,
    push_url: String,
    auth: Auth,
    timeout: Duration,
}

impl Endpoint {
    pub fn new(target: &AlertmanagerTarget, timeout: Duration) -> Result<Endpoint, AlertingError> {
        let roots = match &target.tls_ca_file {
            Some(path) => RootCerts::Specific(Arc::new(target.ca_certificates(path)?)),
            None => RootCerts::WebPki,
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(TlsConfig::builder().root_certs(roots).build())
            // Alertmanager is reached directly: an HTTP(S)_PROXY set for other tools must not
            // divert alerts.
            .proxy(None)
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(USER_AGENT)
            .timeout_global(Some(timeout))
            .build()
            .into();
        let auth = match (&target.basic_auth, &target.bearer_token_file) {
            (Some(b), _) => {
                Auth::Basic { username: b.username.clone(), password_file: b.password_file.clone() }
            }
            (None, Some(t)) => Auth::Bearer { token_file: t.clone() },
            (None, None) => Auth::None,
        };
        Ok(Endpoint {
            agent,
            push_url: format!("{}/api/v2/alerts", target.url.trim_end_matches('/')),
            auth,
            timeout,
        })
    }

    /// POSTs a body from [`body`], waiting at most `limit` (and at most the configured timeout).
    pub fn post(&self, body: &[u8], limit: Option<Duration>) -> Result<(), SendError> {
        let timeout = limit.map_or(self.timeout, |l| l.min(self.timeout));
        let mut request = self
            .agent
            .post(&self.push_url)
            .header("Content-Type", "application/json")
            .config()
            .timeout_global(Some(timeout))
            .build();
        if let Some(value) = self.auth.header().map_err(SendError::Credentials)? {
            request = request.header("Authorization", value);
        }
        let mut response = request.send(body).map_err(SendError::Transport)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let mut excerpt = Vec::new();
        let _ = response.body_mut().as_reader().take(BODY_EXCERPT).read_to_end(&mut excerpt);
        Err(SendError::Status {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&excerpt).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerting::config::BasicAuth;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn api_v2_body() {
        let firing = Alert {
            labels: BTreeMap::from([
                ("alertname".into(), "TooMuchUpload".into()),
                ("client".into(), "redmi-note".into()),
                ("empty".into(), String::new()),
            ]),
            annotations: BTreeMap::from([("summary".into(), "5 MB \"up\"".into())]),
            generator_url: "http://router:9977/policy#upload".into(),
            starts_at: t(1_700_000_000) + Duration::from_millis(123),
            resolved_at: None,
        };
        let resolved = Alert {
            labels: BTreeMap::from([("alertname".into(), "NewCountry".into())]),
            annotations: BTreeMap::new(),
            generator_url: String::new(),
            starts_at: t(1_700_000_000),
            resolved_at: Some(t(1_700_000_030)),
        };
        let validity = Validity {
            poll_interval: Duration::from_secs(5),
            resend_interval: Duration::from_secs(60),
        };
        let json =
            String::from_utf8(body([&firing, &resolved], t(1_700_000_100), validity)).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"[{"labels":{"alertname":"TooMuchUpload","client":"redmi-note"},"annotations":{"summary":"5 MB \"up\""},"#,
                r#""startsAt":"2023-11-14T22:13:20.123Z","endsAt":"2023-11-14T22:19:00.000Z","generatorURL":"http://router:9977/policy#upload"},"#,
                r#"{"labels":{"alertname":"NewCountry"},"annotations":{},"startsAt":"2023-11-14T22:13:20.000Z","endsAt":"2023-11-14T22:13:50.000Z"}]"#
            )
        );
    }

    #[test]
    fn credentials_headers() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "secret\n").unwrap();
        let basic = Auth::Basic { username: "alice".into(), password_file: pw.clone() };
        assert_eq!(basic.header().unwrap().as_deref(), Some("Basic YWxpY2U6c2VjcmV0"));
        let bearer = Auth::Bearer { token_file: pw.clone() };
        assert_eq!(bearer.header().unwrap().as_deref(), Some("Bearer secret"));
        // Rotated on disk: the next request uses the new secret.
        std::fs::write(&pw, "rotated").unwrap();
        assert_eq!(bearer.header().unwrap().as_deref(), Some("Bearer rotated"));
        assert_eq!(Auth::None.header().unwrap(), None);

        let target = AlertmanagerTarget {
            url: "https://am.lan:9093/alertmanager/".into(),
            basic_auth: Some(BasicAuth { username: "alice".into(), password_file: pw }),
            bearer_token_file: None,
            tls_ca_file: None,
        };
        let ep = Endpoint::new(&target, Duration::from_secs(10)).unwrap();
        assert_eq!(ep.push_url, "https://am.lan:9093/alertmanager/api/v2/alerts");
        assert!(matches!(ep.auth, Auth::Basic { .. }));
    }

    #[test]
    fn an_unusable_ca_file_names_the_target_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "hello").unwrap();
        let target = AlertmanagerTarget {
            url: "https://am.lan:9093".into(),
            basic_auth: None,
            bearer_token_file: None,
            tls_ca_file: Some(ca.clone()),
        };
        // Read again when the target is built (after validation, or on SIGHUP): said alike.
        let Err(e) = Endpoint::new(&target, Duration::from_secs(10)) else { panic!("built") };
        assert_eq!(
            e.to_string(),
            format!(
                "alertmanager https://am.lan:9093: tls_ca_file: {} holds no PEM certificate \
                 (-----BEGIN CERTIFICATE-----): give the CA certificate that signed the \
                 Alertmanager's",
                ca.display()
            )
        );
    }

    #[test]
    fn only_rejections_are_final() {
        let status = |status| SendError::Status { status, body: String::new() };
        assert!(!status(400).retryable());
        assert!(!status(422).retryable());
        for s in [401, 403, 404, 429, 500, 503] {
            assert!(status(s).retryable(), "{s}");
        }
        assert!(
            SendError::Credentials(AlertingError::EmptySecret { path: "x".into() }).retryable()
        );
    }
}
