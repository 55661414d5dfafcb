//! What can go wrong in alerting before a POST: the `alerting:` section (each message says
//! what to change), the secret and CA files it names, and starting the notifier. A failed POST
//! is a `client::SendError`, which says whether to retry.
//!
//! The messages are whole on their own (`{}`): they become the config checker's located
//! message and the SIGHUP refusal in the log, and their advice follows the cause. So each
//! variant writes its cause (an OS error, a URL or PEM parser's) into its message and exposes
//! no `source()`, which would print it twice under `{:#}`.

use std::{io, path::PathBuf};

use ureq::http::uri::InvalidUri;

const URL_EXAMPLE: &str = "http://127.0.0.1:9093";

#[derive(Debug, thiserror::Error)]
pub enum AlertingError {
    /// A number that must be positive; `rule` e.g. "above 0 (default 1m)".
    #[error("alerting.{setting} must be {rule}")]
    Setting { setting: &'static str, rule: &'static str },
    #[error("alerting.alertmanagers lists {url} twice: give each Alertmanager once")]
    DuplicateTarget { url: String },

    #[error("alertmanager url {url:?} is not a URL ({error}): write e.g. {URL_EXAMPLE}")]
    NotAUrl { url: String, error: InvalidUri },
    #[error("alertmanager url {url:?} must start with http:// or https://, e.g. {URL_EXAMPLE}")]
    UrlScheme { url: String },
    #[error("alertmanager url {url:?} has no host: write e.g. {URL_EXAMPLE}")]
    UrlHost { url: String },
    /// The URL is a metric label and appears in logs: credentials do not belong in it.
    #[error(
        "alertmanager url {url:?} holds credentials: move them to basic_auth (username, \
         password_file)"
    )]
    UrlCredentials { url: String },
    #[error("alertmanager url {url:?} has a query string: give the base URL only")]
    UrlQuery { url: String },
    #[error(
        "alertmanager url {url:?} includes /api/v2/alerts: give the base URL (e.g. \
         {URL_EXAMPLE}); the path is appended"
    )]
    UrlPushPath { url: String },

    #[error("alertmanager {url}: basic_auth and bearer_token_file are both set: keep one")]
    BothAuth { url: String },
    #[error("alertmanager {url}: basic_auth.username must be non-empty and without ':'")]
    Username { url: String },
    #[error(
        "alertmanager {url}: tls_ca_file is set but the URL is http://: use https:// or drop \
         tls_ca_file"
    )]
    CaOverHttp { url: String },
    /// A file the target names (`key`: e.g. "bearer_token_file") is unusable: `error` says why.
    #[error("alertmanager {url}: {key}: {error}")]
    TargetFile { url: String, key: &'static str, error: Box<AlertingError> },

    #[error("cannot read {}: {error} (check the path and that the agent may read it)", path.display())]
    ReadFile { path: PathBuf, error: io::Error },
    #[error("{} is empty: write the secret into it", path.display())]
    EmptySecret { path: PathBuf },
    #[error("{} is not valid PEM: {error}", path.display())]
    NotPem { path: PathBuf, error: ureq::Error },
    #[error(
        "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----): give the CA certificate that \
         signed the Alertmanager's",
        path.display()
    )]
    NoCertificate { path: PathBuf },

    #[error("registering the alert notifier's metrics: {error}")]
    Metrics { error: prometheus::Error },
    #[error("starting the sender thread for Alertmanager {url}: {error}")]
    SpawnSender { url: String, error: io::Error },
}
