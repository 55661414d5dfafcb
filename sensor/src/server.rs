//! HTTP endpoints: `/metrics` for Prometheus and `/healthz` for service managers.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use axum::{Router, extract::State, http::{StatusCode, header}, response::IntoResponse, routing::get};
use tokio::sync::watch;

use crate::metrics::Metrics;

async fn scrape(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    match metrics.render() {
        Ok(body) => (StatusCode::OK, [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], format!("rendering metrics failed: {e}\n")),
    }
}

/// Binds first (so a busy port fails startup with a clear error), then serves until `stop`.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr} for /metrics (is another agent running? change `metrics_listen`)"))
}

pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
        .context("serving HTTP")
}
