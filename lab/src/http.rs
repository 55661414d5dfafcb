//! The one HTTP client of the lab: GETs to the agent, Prometheus and Alertmanager, from inside a
//! lab namespace (where they listen on its loopback) or from the host, over plain HTTP or TLS
//! with a test CA and basic auth (a secured Alertmanager).

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, bail};

use crate::netns::in_netns;

/// A client bound to where its connections start from.
#[derive(Clone)]
pub struct Client {
    ns: Option<String>,
    agent: ureq::Agent,
    authorization: Option<String>,
}

/// A response: its status, headers and whole body (any status; [`Client::get_ok`] wants a
/// 200).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

impl Client {
    /// Plain HTTP from namespace `ns`, or from the host when None.
    pub fn new(ns: Option<&str>) -> Client {
        Client::with_tls(ns, ureq::tls::TlsConfig::default())
    }

    /// HTTPS trusting only `ca_pem` (PEM text): a lab service's own certificate authority.
    pub fn trusting(ns: Option<&str>, ca_pem: &[u8]) -> anyhow::Result<Client> {
        let ca =
            ureq::tls::Certificate::from_pem(ca_pem).context("reading the CA certificate (PEM)")?;
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![ca])))
            .build();
        Ok(Client::with_tls(ns, tls))
    }

    fn with_tls(ns: Option<&str>, tls: ureq::tls::TlsConfig) -> Client {
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            // The lab's services are local: a proxy from the environment must not be used.
            .proxy(None)
            .http_status_as_error(false)
            .max_redirects(0)
            // Connect fast or not at all (a service not up yet); then allow a slow body (a
            // large /metrics is written as the agent renders it) while data keeps coming.
            .timeout_connect(Some(Duration::from_secs(2)))
            .timeout_per_read(Some(Duration::from_secs(10)))
            .build()
            .into();
        Client { ns: ns.map(str::to_string), agent, authorization: None }
    }

    /// Sends `user`:`password` as HTTP basic auth with every request.
    pub fn basic_auth(mut self, user: &str, password: &str) -> Client {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.authorization = Some(format!("Basic {token}"));
        self
    }

    /// Where requests start from, for messages.
    fn place(&self) -> &str {
        self.ns.as_deref().unwrap_or("the host")
    }

    /// GET `url`, whatever the status.
    pub fn get(&self, url: &str) -> anyhow::Result<Response> {
        let call = || -> Result<Response, ureq::Error> {
            let mut request = self.agent.get(url);
            if let Some(a) = &self.authorization {
                request = request.header("Authorization", a);
            }
            let mut response = request.call()?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(n, v)| {
                    (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into())
                })
                .collect();
            // No size limit: a scrape of many clients is larger than ureq's default 10 MB.
            let body = response.body_mut().with_config().limit(u64::MAX).read_to_string()?;
            Ok(Response { status, headers, body })
        };
        let result = match &self.ns {
            // Sockets made inside the namespace's thread belong to it for their whole life.
            Some(ns) => in_netns(ns, call)?,
            None => call(),
        };
        result.with_context(|| format!("GET {url} from {}", self.place()))
    }

    /// GET `url`: the body of a 200, an error with the status and body otherwise.
    pub fn get_ok(&self, url: &str) -> anyhow::Result<String> {
        let r = self.get(url)?;
        if r.status != 200 {
            bail!("GET {url} from {}: HTTP {}\n{}", self.place(), r.status, r.body);
        }
        Ok(r.body)
    }
}

/// `s` encoded for a URL's query string (PromQL has braces, quotes and spaces).
pub fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
