//! HTTP endpoints: `/metrics` for Prometheus, `/healthz` for service managers, and the local
//! JSON API under `/api/v1/` (docs/api.md).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, RwLock},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use tokio::sync::watch;

use super::{api::LiveView, metrics::Metrics};

/// What can go wrong in serving the metrics and the API.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("listening on {addr} for /metrics (is another agent running? change `metrics_listen`)")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("serving HTTP")]
    Serve { source: std::io::Error },
}

/// The latest API view, replaced whole after each poll.
pub type SharedView = Arc<RwLock<Arc<LiveView>>>;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    view: SharedView,
}

fn current(view: &SharedView) -> Arc<LiveView> {
    view.read().map(|v| v.clone()).unwrap_or_default()
}

async fn clients(State(state): State<AppState>) -> impl IntoResponse {
    let view = current(&state.view);
    Json(serde_json::json!({ "updated": view.updated, "clients": view.clients }))
}

#[derive(Deserialize)]
struct FlowsQuery {
    client: Option<String>,
}

async fn flows(State(state): State<AppState>, Query(q): Query<FlowsQuery>) -> impl IntoResponse {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        updated: u64,
        flows: super::api::Flows<'a>,
    }
    let view = current(&state.view);
    // Serialized straight from the compact view: no list of flow structs or JSON tree between.
    match serde_json::to_vec(&Body {
        updated: view.updated,
        flows: view.flows_of(q.client.as_deref()),
    }) {
        Ok(body) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("{e}\n").into_bytes(),
        ),
    }
}

async fn scrape(State(state): State<AppState>) -> Response {
    match state.metrics.exposition() {
        Ok((health, traffic)) => {
            // The traffic text is written as the scrape reads it (chunked): never whole in memory.
            let chunks = std::iter::once(Bytes::from(health)).chain(traffic.map(Bytes::from));
            let body =
                Body::from_stream(futures_util::stream::iter(chunks.map(Ok::<_, Infallible>)));
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, HeaderValue::from_static(prometheus::TEXT_FORMAT))],
                body,
            )
                .into_response()
        }
        Err(e) => {
            let text = format!("rendering metrics failed: {e}\n");
            (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], text)
                .into_response()
        }
    }
}

/// Binds first (so a busy port fails startup with a clear error), then serves until `stop`.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ExportError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| ExportError::Bind { addr, source })
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    view: SharedView,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ExportError> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/v1/clients", get(clients))
        .route("/api/v1/flows", get(flows))
        .with_state(AppState { metrics, view });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
        .map_err(|source| ExportError::Serve { source })
}
