//! The one error type of `export`: serving the metrics and the API, and loading a listener's
//! TLS and authentication.

use std::{net::SocketAddr, path::PathBuf};

/// What can go wrong in serving the metrics and the API, and in loading a listener's TLS and
/// authentication (`metrics_web:` / `api_web:`).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("listening on {addr} for {what} (is another agent running? change `{key}`)")]
    Bind { addr: SocketAddr, key: &'static str, what: &'static str, source: std::io::Error },
    #[error("serving HTTP")]
    Serve { source: std::io::Error },
    #[error("{present} is set without {missing}")]
    TlsHalf { present: &'static str, missing: &'static str },
    #[error("{key}: cannot read {}: {source}", path.display())]
    WebFile { key: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{key}: {}: {error}", path.display())]
    Pem { key: &'static str, path: PathBuf, error: String },
    #[error(
        "tls_cert_file {} and tls_key_file {} are not a usable certificate and key: {error}",
        cert.display(),
        key.display()
    )]
    CertKey { cert: PathBuf, key: PathBuf, error: String },
    #[error("basic_auth_users has {count} users, outside 1 to {max}")]
    UserCount { count: usize, max: usize },
    #[error(
        "basic_auth_users: the user name `{user}` is empty or holds `:` or a control character"
    )]
    UserName { user: String },
    #[error("basic_auth_users: the hash of `{user}` is not a bcrypt hash ({error})")]
    NotBcrypt { user: String, error: String },
    #[error("basic_auth_users: the hash of `{user}` has cost {cost}, outside {min} to {max}")]
    BcryptCost { user: String, cost: u32, min: u32, max: u32 },
    #[error("bearer_token_file: {} {what}", path.display())]
    Token { path: PathBuf, what: &'static str },
}

impl ExportError {
    /// The key of `metrics_web:` / `api_web:` a loading error is about (where it is located).
    pub fn web_key(&self) -> &'static str {
        match self {
            ExportError::TlsHalf { present, .. } => present,
            ExportError::WebFile { key, .. } | ExportError::Pem { key, .. } => key,
            ExportError::CertKey { .. } => "tls_cert_file",
            ExportError::UserCount { .. }
            | ExportError::UserName { .. }
            | ExportError::NotBcrypt { .. }
            | ExportError::BcryptCost { .. } => "basic_auth_users",
            ExportError::Token { .. } => "bearer_token_file",
            ExportError::Bind { key, .. } => key,
            ExportError::Serve { .. } => "",
        }
    }

    /// How to fix it.
    pub fn hint(&self) -> &'static str {
        match self {
            ExportError::TlsHalf { .. } => "set both tls_cert_file and tls_key_file, or neither",
            ExportError::WebFile { .. } => "check the path and that the agent's user can read it",
            ExportError::Pem { .. } | ExportError::CertKey { .. } => {
                "tls_cert_file: PEM certificates, the server's first; tls_key_file: its PEM \
                 private key (openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \
                 -nodes -keyout key.pem -out cert.pem)"
            }
            ExportError::UserCount { .. } | ExportError::UserName { .. } => {
                "write `basic_auth_users: {USER: BCRYPT_HASH}`, user names without `:`"
            }
            ExportError::NotBcrypt { .. } | ExportError::BcryptCost { .. } => {
                "write the bcrypt hash of the password, e.g. from `htpasswd -nBC 10 USER` (the \
                 part after `USER:`), cost 4 to 17"
            }
            ExportError::Token { .. } => {
                "put one token (no spaces, at most 4096 bytes) in the file"
            }
            ExportError::Bind { .. } | ExportError::Serve { .. } => "",
        }
    }
}
