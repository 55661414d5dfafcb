//! TLS and authentication of a listener (`metrics_web:` and `api_web:` in sensor.yaml), in the
//! style of Prometheus's web config file (exporter-toolkit): a certificate and key, users with
//! bcrypt hashes, and here also a bearer token. Checked at load (the files are read then, each
//! refusal naming the key and the file), built once when the server starts.

use std::{
    collections::{BTreeMap, VecDeque},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use axum::{
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};

use super::error::ExportError;

/// Most users of `basic_auth_users`.
pub const MAX_USERS: usize = 1_000;
/// bcrypt costs accepted: bcrypt's least, to htpasswd's most (each uncached check of a password
/// costs 2^cost rounds: at 17 about 10 s of a router's CPU).
pub const MIN_BCRYPT_COST: u32 = 4;
pub const MAX_BCRYPT_COST: u32 = 17;
/// Longest bearer token (bytes).
pub const MAX_TOKEN_LEN: usize = 4_096;
/// Successful password checks remembered per listener, so that a scrape does not cost a bcrypt.
pub const VERIFIED_CACHE: usize = 64;
/// Longest `Authorization` header looked at; a longer one is refused without a bcrypt.
const MAX_AUTHORIZATION: usize = 8_192;
/// The realm of the `WWW-Authenticate` challenges.
pub const REALM: &str = "gateway sensor";

/// `metrics_web:` / `api_web:`: all optional; nothing set is plain HTTP without authentication.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// PEM certificate chain (the server's certificate first); with `tls_key_file`, HTTPS.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of the certificate (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// User name → bcrypt hash of the password (`htpasswd -nBC 10 USER`).
    #[serde(default)]
    pub basic_auth_users: Option<BTreeMap<String, String>>,
    /// A file holding a token accepted as `Authorization: Bearer <token>`.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
}

/// A listener's security, built: the TLS acceptor and what authenticates a request.
#[derive(Clone, Default)]
pub struct Web {
    pub tls: Option<TlsAcceptor>,
    pub auth: Option<Arc<Auth>>,
}

impl WebConfig {
    /// Reads the files and checks every value (check-config, startup and SIGHUP alike).
    pub fn load(&self) -> Result<Web, ExportError> {
        let tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsAcceptor::from(Arc::new(server_config(cert, key)?))),
            (Some(_), None) => {
                return Err(ExportError::TlsHalf {
                    present: "tls_cert_file",
                    missing: "tls_key_file",
                });
            }
            (None, Some(_)) => {
                return Err(ExportError::TlsHalf {
                    present: "tls_key_file",
                    missing: "tls_cert_file",
                });
            }
        };
        let users = match &self.basic_auth_users {
            None => BTreeMap::new(),
            Some(users) => check_users(users)?,
        };
        let token = match &self.bearer_token_file {
            None => None,
            Some(path) => Some(read_token(path)?),
        };
        let auth = (!users.is_empty() || token.is_some()).then(|| {
            Arc::new(Auth {
                users,
                token,
                verified: Mutex::new(VecDeque::new()),
                bcrypt: tokio::sync::Semaphore::new(1),
            })
        });
        Ok(Web { tls, auth })
    }

    pub fn is_tls(&self) -> bool {
        self.tls_cert_file.is_some()
    }

    pub fn has_auth(&self) -> bool {
        self.basic_auth_users.is_some() || self.bearer_token_file.is_some()
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, ExportError> {
    std::fs::read(path).map_err(|source| ExportError::WebFile { key, path: path.into(), source })
}

fn server_config(cert: &Path, key: &Path) -> Result<ServerConfig, ExportError> {
    let pem = read("tls_cert_file", cert)?;
    let chain =
        CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| {
            ExportError::Pem { key: "tls_cert_file", path: cert.into(), error: e.to_string() }
        })?;
    if chain.is_empty() {
        return Err(ExportError::Pem {
            key: "tls_cert_file",
            path: cert.into(),
            error: "it holds no CERTIFICATE".into(),
        });
    }
    let pem = read("tls_key_file", key)?;
    let private = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| ExportError::Pem {
        key: "tls_key_file",
        path: key.into(),
        error: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "it holds no PRIVATE KEY".into(),
            e => e.to_string(),
        },
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private))
        .map_err(|error| ExportError::CertKey {
            cert: cert.into(),
            key: key.into(),
            error: error.to_string(),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn check_users(users: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ExportError> {
    if users.is_empty() || users.len() > MAX_USERS {
        return Err(ExportError::UserCount { count: users.len(), max: MAX_USERS });
    }
    for (user, hash) in users {
        if user.is_empty() || user.contains(':') || user.chars().any(char::is_control) {
            return Err(ExportError::UserName { user: user.clone() });
        }
        let parts: bcrypt::HashParts = hash.parse().map_err(|e: bcrypt::BcryptError| {
            ExportError::NotBcrypt { user: user.clone(), error: e.to_string() }
        })?;
        let cost = parts.get_cost();
        if !(MIN_BCRYPT_COST..=MAX_BCRYPT_COST).contains(&cost) {
            return Err(ExportError::BcryptCost {
                user: user.clone(),
                cost,
                min: MIN_BCRYPT_COST,
                max: MAX_BCRYPT_COST,
            });
        }
    }
    Ok(users.clone())
}

fn read_token(path: &Path) -> Result<String, ExportError> {
    let bytes = read("bearer_token_file", path)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| ExportError::Token { path: path.into(), what: "is not UTF-8 text" })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ExportError::Token { path: path.into(), what: "is empty" });
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(ExportError::Token { path: path.into(), what: "holds more than 4096 bytes" });
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ExportError::Token {
            path: path.into(),
            what: "holds spaces or control characters",
        });
    }
    Ok(token.to_string())
}

/// Who may read a listener, and the passwords already checked.
pub struct Auth {
    users: BTreeMap<String, String>,
    token: Option<String>,
    /// (user, password) pairs that matched their hash, newest last, at most [`VERIFIED_CACHE`].
    verified: Mutex<VecDeque<(String, String)>>,
    /// One bcrypt at a time: wrong passwords cannot take more than one CPU.
    bcrypt: tokio::sync::Semaphore,
}

impl Auth {
    /// Whether the request's `Authorization` header is accepted.
    pub async fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(header::AUTHORIZATION) else { return false };
        if value.len() > MAX_AUTHORIZATION {
            return false;
        }
        let Ok(value) = value.to_str() else { return false };
        let Some((scheme, credentials)) = value.trim().split_once(' ') else { return false };
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return self
                .token
                .as_deref()
                .is_some_and(|t| same(t.as_bytes(), credentials.as_bytes()));
        }
        if !scheme.eq_ignore_ascii_case("basic") || self.users.is_empty() {
            return false;
        }
        use base64::Engine as _;
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(credentials) else {
            return false;
        };
        let Ok(decoded) = String::from_utf8(decoded) else { return false };
        let Some((user, password)) = decoded.split_once(':') else { return false };
        self.check_password(user, password).await
    }

    async fn check_password(&self, user: &str, password: &str) -> bool {
        if self.is_verified(user, password) {
            return true;
        }
        // An unknown user costs a bcrypt too (against another user's hash), so that the time
        // of a refusal does not tell which users exist.
        let known = self.users.get(user);
        let Some(hash) = known.or_else(|| self.users.values().next()).cloned() else {
            return false;
        };
        let Ok(_permit) = self.bcrypt.acquire().await else { return false };
        let secret = password.to_string();
        let matched = tokio::task::spawn_blocking(move || bcrypt::verify(secret, &hash))
            .await
            .is_ok_and(|r| r.unwrap_or(false));
        if matched && known.is_some() {
            self.remember(user, password);
            return true;
        }
        false
    }

    fn is_verified(&self, user: &str, password: &str) -> bool {
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        verified.iter().any(|(u, p)| u == user && same(p.as_bytes(), password.as_bytes()))
    }

    fn remember(&self, user: &str, password: &str) {
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.iter().any(|(u, p)| u == user && p == password) {
            return;
        }
        if verified.len() >= VERIFIED_CACHE {
            verified.pop_front();
        }
        verified.push_back((user.to_string(), password.to_string()));
    }

    /// The `WWW-Authenticate` challenges of a 401: Basic when users are configured, Bearer when
    /// a token is.
    pub fn challenges(&self) -> Vec<HeaderValue> {
        let mut out = Vec::new();
        if !self.users.is_empty() {
            out.push(HeaderValue::from_static("Basic realm=\"gateway sensor\", charset=\"UTF-8\""));
        }
        if self.token.is_some() {
            out.push(HeaderValue::from_static("Bearer realm=\"gateway sensor\""));
        }
        out
    }

    #[cfg(test)]
    fn cached(&self) -> usize {
        self.verified.lock().map(|v| v.len()).unwrap_or(0)
    }
}

/// Equal bytes, in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Middleware: the request goes on when authenticated, else 401 with the challenges.
pub async fn require(State(auth): State<Arc<Auth>>, request: Request, next: Next) -> Response {
    if auth.allows(request.headers()).await {
        return next.run(request).await;
    }
    let mut response = (StatusCode::UNAUTHORIZED, "unauthorized\n").into_response();
    for challenge in auth.challenges() {
        response.headers_mut().append(header::WWW_AUTHENTICATE, challenge);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(users: &[(&str, &str)], token: Option<&str>) -> Auth {
        Auth {
            users: users.iter().map(|(u, h)| (u.to_string(), h.to_string())).collect(),
            token: token.map(str::to_string),
            verified: Mutex::new(VecDeque::new()),
            bcrypt: tokio::sync::Semaphore::new(1),
        }
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    fn basic(user: &str, password: &str) -> HeaderMap {
        use base64::Engine as _;
        headers(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        ))
    }

    #[tokio::test]
    async fn basic_auth_checks_bcrypt_once_then_remembers_bounded() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let a = auth(&[("prometheus", &hash)], None);
        assert!(!a.allows(&HeaderMap::new()).await);
        assert!(!a.allows(&basic("prometheus", "wrong")).await);
        assert!(!a.allows(&basic("nobody", "s3cret")).await);
        assert!(!a.allows(&headers("Bearer s3cret")).await, "no token configured");
        assert!(!a.allows(&headers("Basic !!!")).await);
        assert_eq!(a.cached(), 0, "refusals are not remembered");
        assert!(a.allows(&basic("prometheus", "s3cret")).await);
        assert!(a.allows(&basic("prometheus", "s3cret")).await);
        assert_eq!(a.cached(), 1);
        for i in 0..(VERIFIED_CACHE + 10) {
            a.remember("prometheus", &format!("other-{i}"));
        }
        assert_eq!(a.cached(), VERIFIED_CACHE);
        // Evicted from the cache, still accepted through bcrypt.
        assert!(a.allows(&basic("prometheus", "s3cret")).await);
        assert_eq!(
            a.challenges(),
            vec![HeaderValue::from_static("Basic realm=\"gateway sensor\", charset=\"UTF-8\"")]
        );
    }

    #[tokio::test]
    async fn bearer_token_is_compared_whole() {
        let a = auth(&[], Some("tok-123"));
        assert!(a.allows(&headers("Bearer tok-123")).await);
        assert!(a.allows(&headers("bearer tok-123")).await);
        assert!(!a.allows(&headers("Bearer tok-12")).await);
        assert!(!a.allows(&headers("Bearer tok-1234")).await);
        assert!(!a.allows(&basic("u", "tok-123")).await);
        assert_eq!(
            a.challenges(),
            vec![HeaderValue::from_static("Bearer realm=\"gateway sensor\"")]
        );
    }

    #[test]
    fn load_refuses_each_bad_value_naming_the_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("empty"), "\n").unwrap();
        std::fs::write(path("text"), "hello\n").unwrap();
        let load = |yaml: &str| {
            serde_yaml::from_str::<WebConfig>(yaml).unwrap().load().err().map(|e| e.to_string())
        };
        let d = dir.path().display();
        for (yaml, want) in [
            (format!("tls_cert_file: {d}/text"), "tls_cert_file is set without tls_key_file"),
            (
                format!("tls_cert_file: {d}/missing\ntls_key_file: {d}/missing"),
                &format!("tls_cert_file: cannot read {d}/missing"),
            ),
            (
                format!("tls_cert_file: {d}/text\ntls_key_file: {d}/text"),
                &format!("tls_cert_file: {d}/text: it holds no CERTIFICATE"),
            ),
            ("basic_auth_users: {}".into(), "basic_auth_users has 0 users, outside 1 to 1000"),
            (
                "basic_auth_users: {prometheus: plain}".into(),
                "basic_auth_users: the hash of `prometheus` is not a bcrypt hash",
            ),
            (
                // Cost 31: refused before any password is checked against it.
                "basic_auth_users: {p: '$2y$31$JjkvHPOmCQOMaRmQtqBGWOx0mRm3zmUhpW4Jvw7g1wHSGqgvgwCoi'}"
                    .into(),
                "basic_auth_users: the hash of `p` has cost 31, outside 4 to 17",
            ),
            (
                "basic_auth_users: {'a:b': '$2y$04$JjkvHPOmCQOMaRmQtqBGWOx0mRm3zmUhpW4Jvw7g1wHSGqgvgwCoi'}"
                    .into(),
                "basic_auth_users: the user name `a:b`",
            ),
            (format!("bearer_token_file: {d}/empty"), &format!("bearer_token_file: {d}/empty is empty")),
        ] {
            let got = load(&yaml).unwrap_or_default();
            assert!(got.starts_with(want), "{yaml}:\n got {got}\nwant {want}");
        }
        assert!(load("{}").is_none());
        let hash = bcrypt::hash("pw", 4).unwrap();
        let ok = format!("basic_auth_users: {{prometheus: '{hash}'}}\nbearer_token_file: {d}/text");
        let web = serde_yaml::from_str::<WebConfig>(&ok).unwrap().load().unwrap();
        assert!(web.tls.is_none() && web.auth.is_some());
    }
}
