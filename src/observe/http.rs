//! The HTTP endpoints every role serves: `/metrics` (Prometheus text), `/livez` (the process
//! runs; never depends on relays), `/readyz` (the role finished starting), and, in standalone
//! mode, `/status` (a JSON list of SyncRelay-shaped objects).

use super::metrics::Metrics;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::future::BoxFuture;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;

/// Produces the `/status` document on request.
pub type StatusFn = Arc<dyn Fn() -> BoxFuture<'static, serde_json::Value> + Send + Sync>;

/// What the endpoints read.
#[derive(Clone)]
pub struct HttpState {
    /// The registry behind `/metrics`.
    pub metrics: Metrics,
    /// `/readyz` answers 200 once this is set.
    pub ready: Arc<AtomicBool>,
    /// `/status`, when the role has one.
    pub status: Option<StatusFn>,
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState")
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .finish()
    }
}

impl HttpState {
    /// State with no `/status`, not yet ready.
    pub fn new(metrics: Metrics) -> Self {
        HttpState {
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
            status: None,
        }
    }
}

async fn metrics(State(s): State<HttpState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<HttpState>) -> Response {
    if s.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn status(State(s): State<HttpState>) -> Response {
    match &s.status {
        Some(f) => axum::Json(f().await).into_response(),
        None => (StatusCode::NOT_FOUND, "no /status in this role\n").into_response(),
    }
}

/// The router (exposed for tests).
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(state)
}

/// Binds `addr` (so a taken port fails at start-up, not later).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves `state` on `listener` in a task until `stop` turns true; a failure is logged.
pub fn spawn_until(
    listener: TcpListener,
    state: HttpState,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = serve(listener, state, stopped).await {
            tracing::error!(error = %e, "http server failed");
        }
    })
}
