//! The files an Alertmanager target names: password and token files, and CA certificates.
//! Read when the config is checked and again when used (secrets for every request, so that
//! they can be rotated; CA files when the target is (re)built).

use std::path::Path;

use ureq::tls::{Certificate, PemItem};

use super::error::AlertingError;

/// A password or token file's content without surrounding whitespace (editors add a newline).
pub(crate) fn read_secret(path: &Path) -> Result<String, AlertingError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| AlertingError::ReadFile { path: path.into(), error })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(AlertingError::EmptySecret { path: path.into() });
    }
    Ok(secret.to_string())
}

/// Reads a PEM file of CA certificates.
pub(crate) fn read_ca_file(path: &Path) -> Result<Vec<Certificate<'static>>, AlertingError> {
    let pem = std::fs::read(path)
        .map_err(|error| AlertingError::ReadFile { path: path.into(), error })?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(error) => return Err(AlertingError::NotPem { path: path.into(), error }),
        }
    }
    if certs.is_empty() {
        return Err(AlertingError::NoCertificate { path: path.into() });
    }
    Ok(certs)
}
