//! One look at a running agent: its scrape and its API's two views (clients, flows), taken
//! together so a failure can show all three as they were.

use serde_json::Value;

use crate::prom::Scrape;

/// The scrape (text and parsed), `/api/v1/clients` and `/api/v1/flows`.
#[derive(Debug, Clone)]
pub struct Observation {
    pub text: String,
    pub scrape: Scrape,
    pub clients: Value,
    pub flows: Value,
}

impl Observation {
    pub fn clients(&self) -> &[Value] {
        self.clients["clients"].as_array().map_or(&[], Vec::as_slice)
    }

    pub fn flows(&self) -> &[Value] {
        self.flows["flows"].as_array().map_or(&[], Vec::as_slice)
    }

    pub fn client_by_mac(&self, mac: &str) -> Option<&Value> {
        self.clients().iter().find(|c| c["mac"] == mac)
    }

    /// The flow of client `mac` to `remote`:`port`/`protocol`.
    pub fn flow(&self, mac: &str, remote: &str, protocol: &str, port: u16) -> Option<&Value> {
        self.flows().iter().find(|f| {
            f["mac"] == mac
                && f["remote_ip"] == remote
                && f["protocol"] == protocol
                && f["port"] == u64::from(port)
        })
    }

    /// The series with exactly these labels (see [`Scrape::get`]).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.scrape.get(name, labels)
    }

    /// Sections for a failure report: the scrape and both API views.
    pub fn sections(&self) -> Vec<(&'static str, String)> {
        vec![
            ("scrape", self.text.clone()),
            ("/api/v1/clients", format!("{:#}", self.clients)),
            ("/api/v1/flows", format!("{:#}", self.flows)),
        ]
    }
}
