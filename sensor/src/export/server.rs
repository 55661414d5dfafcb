//! HTTP endpoints: `/metrics` for Prometheus, `/healthz` for service managers, and the local
//! JSON API under `/api/v1/` (docs/api.md); and the limits that keep one client from holding
//! the server: connections overall and per client address, a deadline for each request head
//! (idle keep-alive time included) and for a response the client stops reading.

use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use prometheus::{IntCounterVec, IntGauge};
use serde::Deserialize;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::watch,
    task::AbortHandle,
};
use tracing::{debug, warn};

use super::{
    api::LiveView,
    error::ExportError,
    metrics::Metrics,
    web::{self, Web},
};

/// Who may hold the server's connections, and how long (`http:` in sensor.yaml). The file
/// descriptors of the whole agent come from one limit (`LimitNOFILE`): a connection limit
/// keeps clients from taking the ones polling and saving need.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Connections open at once, all clients together; more are closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections open at once from one client address.
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// Time a client has to send a whole request head, from connecting or from the end of its
    /// previous response (so also how long an idle keep-alive connection stays open).
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A response the client reads nothing of for this long is cut and its connection closed.
    #[serde(default = "default_write_timeout", with = "humantime_serde")]
    pub write_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_connections: default_max_connections(),
            max_connections_per_address: default_max_connections_per_address(),
            header_timeout: default_header_timeout(),
            write_timeout: default_write_timeout(),
        }
    }
}

fn default_max_connections() -> usize {
    64
}
fn default_max_connections_per_address() -> usize {
    8
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_write_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The server's own metrics.
#[derive(Clone)]
struct ServerMetrics {
    open: IntGauge,
    closed: IntCounterVec,
}

impl ServerMetrics {
    fn closed(&self, reason: &str) {
        self.closed.with_label_values(&[reason]).inc();
    }
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

/// A JSON body written a chunk at a time as the client reads it (a full flow map is some
/// 20 MB of JSON: never whole in memory).
fn json_stream(chunks: impl Iterator<Item = io::Result<Bytes>> + Send + 'static) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        Body::from_stream(futures_util::stream::iter(chunks)),
    )
        .into_response()
}

async fn clients(State(state): State<AppState>) -> Response {
    json_stream(current(&state.view).clients_json().map(|c| c.map(Bytes::from)))
}

#[derive(Deserialize)]
struct FlowsQuery {
    client: Option<String>,
}

async fn flows(State(state): State<AppState>, Query(q): Query<FlowsQuery>) -> Response {
    json_stream(current(&state.view).flows_json(q.client.as_deref()).map(|c| c.map(Bytes::from)))
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

/// Binds first (so a busy port fails startup with a clear error); `key` is the config key of
/// the address, `what` what is served there.
pub async fn bind(
    addr: SocketAddr,
    key: &'static str,
    what: &'static str,
) -> Result<tokio::net::TcpListener, ExportError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| ExportError::Bind {
        addr,
        key,
        what,
        source,
    })
}

/// A bound listener and its security.
pub struct Listener {
    pub tcp: tokio::net::TcpListener,
    pub web: Web,
}

/// `/metrics` and `/healthz` on `metrics`, the JSON API on `api`, until `stop`. The connection
/// limits (`http:`) hold for both together: one budget of file descriptors.
pub async fn serve(
    metrics_listener: Listener,
    api_listener: Listener,
    metrics: Arc<Metrics>,
    view: SharedView,
    limits: HttpConfig,
    stop: watch::Receiver<bool>,
) -> Result<(), ExportError> {
    let counters = ServerMetrics {
        open: metrics.http_connections.clone(),
        closed: metrics.http_connections_closed.clone(),
    };
    let state = AppState { metrics, view };
    // /healthz stays open to service managers (it says nothing but "ok").
    let metrics_app = protect(
        Router::new().route("/metrics", get(scrape)).with_state(state.clone()),
        &metrics_listener.web,
    )
    .route("/healthz", get(|| async { "ok\n" }));
    let api_app = protect(
        Router::new()
            .route("/api/v1/clients", get(clients))
            .route("/api/v1/flows", get(flows))
            .with_state(state),
        &api_listener.web,
    );
    let slots = Slots::new(limits, counters);
    tokio::join!(
        accept(metrics_listener, metrics_app, Arc::clone(&slots), limits, stop.clone()),
        accept(api_listener, api_app, slots, limits, stop),
    );
    Ok(())
}

/// `router` behind the listener's authentication, when it has one.
fn protect(router: Router, web: &Web) -> Router {
    match &web.auth {
        Some(auth) => {
            router.route_layer(axum::middleware::from_fn_with_state(Arc::clone(auth), web::require))
        }
        None => router,
    }
}

async fn accept(
    listener: Listener,
    app: Router,
    slots: Arc<Slots>,
    limits: HttpConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.tcp.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors (or another transient error): wait for
                    // connections to close instead of spinning on accept.
                    warn!("accepting an HTTP connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Reap finished connections so the set does not grow with them.
        while connections.try_join_next().is_some() {}
        let address = peer.ip();
        slots.admit(address, |slot| {
            let _ = stream.set_nodelay(true);
            let io = WriteDeadline::new(stream, limits.write_timeout);
            let app = app.clone();
            let tls = listener.web.tls.clone();
            connections.spawn(async move {
                let Some(acceptor) = tls else {
                    return serve_connection(TokioIo::new(io), app, limits, slot, peer).await;
                };
                // The handshake is part of the request head's time.
                match tokio::time::timeout(limits.header_timeout, acceptor.accept(io)).await {
                    Ok(Ok(tls)) => {
                        serve_connection(TokioIo::new(tls), app, limits, slot, peer).await
                    }
                    Ok(Err(e)) => {
                        slot.closed("tls_handshake");
                        debug!(%peer, "TLS handshake failed: {e}");
                    }
                    Err(_) => slot.closed("header_timeout"),
                }
            })
        });
    }
    // Stopping: the agent has saved its state; open connections are cut.
    connections.shutdown().await;
}

async fn serve_connection<I>(
    io: TokioIo<I>,
    app: Router,
    limits: HttpConfig,
    slot: Slot,
    peer: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(io, TowerToHyperService::new(app))
        .await;
    if let Err(e) = served {
        if e.is_timeout() {
            slot.closed("header_timeout");
        } else if timed_out_writing(&e) {
            slot.closed("write_timeout");
        }
        debug!(%peer, "HTTP connection ended: {e}");
    }
}

/// Returns once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Whether a connection ended because [`WriteDeadline`] cut it.
fn timed_out_writing(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::TimedOut) {
            return true;
        }
        source = s.source();
    }
    false
}

/// Open connections, by client address, oldest first.
struct Slots {
    limits: HttpConfig,
    metrics: ServerMetrics,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    total: usize,
    by_address: HashMap<IpAddr, VecDeque<(u64, AbortHandle)>>,
}

/// One open connection; frees its place when dropped.
struct Slot {
    slots: Arc<Slots>,
    address: IpAddr,
    id: u64,
}

impl Slot {
    fn closed(&self, reason: &str) {
        self.slots.metrics.closed(reason);
    }
}

impl Slots {
    fn new(limits: HttpConfig, metrics: ServerMetrics) -> Arc<Slots> {
        Arc::new(Slots { limits, metrics, open: Mutex::new(Open::default()) })
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `address` (`start` starts serving it), or refuses it. When
    /// all places are taken, the address holding the most connections gives up its oldest,
    /// if it holds more than the newcomer's: one client cannot lock the others (a Prometheus
    /// scraping from its own address) out.
    fn admit(self: &Arc<Self>, address: IpAddr, start: impl FnOnce(Slot) -> AbortHandle) {
        let mut open = self.lock();
        let mine = open.by_address.get(&address).map_or(0, VecDeque::len);
        if mine >= self.limits.max_connections_per_address {
            self.metrics.closed("address_limit");
            return;
        }
        if open.total >= self.limits.max_connections {
            let hog = open
                .by_address
                .iter()
                .max_by_key(|(_, conns)| conns.len())
                .filter(|(_, conns)| conns.len() > mine + 1)
                .map(|(a, _)| *a);
            let Some(hog) = hog else {
                self.metrics.closed("limit");
                return;
            };
            if let Some((_, handle)) = open.by_address.get_mut(&hog).and_then(VecDeque::pop_front) {
                handle.abort();
                open.total -= 1;
                self.metrics.closed("evicted");
            }
        }
        let id = open.next_id;
        open.next_id += 1;
        // Registered before the lock is released: the connection's Slot, dropped when it
        // ends (even at once), finds itself.
        let handle = start(Slot { slots: Arc::clone(self), address, id });
        open.by_address.entry(address).or_default().push_back((id, handle));
        open.total += 1;
        self.metrics.open.set(open.total as i64);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.lock();
        let Some(conns) = open.by_address.get_mut(&self.address) else { return };
        let Some(i) = conns.iter().position(|(id, _)| *id == self.id) else { return };
        conns.remove(i);
        if conns.is_empty() {
            open.by_address.remove(&self.address);
        }
        open.total -= 1;
        self.slots.metrics.open.set(open.total as i64);
    }
}

/// A connection whose writes fail once the client has accepted nothing for `timeout`: a
/// client that stops reading cannot hold a response (and its connection) forever.
struct WriteDeadline {
    inner: TcpStream,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl WriteDeadline {
    fn new(inner: TcpStream, timeout: Duration) -> WriteDeadline {
        WriteDeadline { inner, timeout, stalled: None }
    }

    /// Passes a write's result through, starting the stall clock when it is pending.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.stalled = None;
            return result;
        }
        let timeout = self.timeout;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stalled.as_mut().poll(cx).is_ready() {
            self.stalled = None;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing of the response for http.write_timeout",
            )));
        }
        Poll::Pending
    }
}

impl AsyncRead for WriteDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, result)
    }
}
