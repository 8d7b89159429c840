//! A fault-injecting plain-HTTP reverse proxy in front of the test API server, for roles that
//! run as processes (their kubeconfig points at the proxy, see [`ApiProxy::write_kubeconfig`]).
//!
//! It listens on 127.0.0.1 and forwards every request to the real kube-apiserver over HTTPS
//! with a `kube::Client` built from the admin kubeconfig; response bodies are streamed through
//! frame by frame, so watches stay live. Requests that match its [`Rule`] are numbered, and the
//! rule decides for each whether the proxy answers it itself (an injected Kubernetes `Status`
//! error) or forwards it. Everything it did is counted and logged for the test.
//!
//! Plain HTTP on the client side keeps the proxy small (no TLS to terminate, no certificate to
//! issue); kube-rs accepts an `http://` cluster URL and sends its bearer token there too.

use super::apiserver::TestApiServer;
use axum::body::Body as AxumBody;
use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{Method, StatusCode};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// An answer the proxy gives instead of forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injected {
    /// HTTP status code (also the `Status` object's `code`).
    pub code: u16,
    /// The `Status` object's `reason`, e.g. `TooManyRequests`.
    pub reason: &'static str,
    /// A `Retry-After` header, in seconds.
    pub retry_after: Option<u32>,
}

type Matcher = dyn Fn(&Method, &str) -> bool + Send + Sync;
type Answerer = dyn Fn(u64) -> Option<Injected> + Send + Sync;

/// Which requests the proxy may answer itself, and how it answers the n-th of them.
pub struct Rule {
    matches: Box<Matcher>,
    answer: Box<Answerer>,
}

impl Rule {
    /// Requests for which `matches(method, path)` holds; the n-th of them (from 0) is answered
    /// with `answer(n)`, or forwarded when that is `None`.
    pub fn new(
        matches: impl Fn(&Method, &str) -> bool + Send + Sync + 'static,
        answer: impl Fn(u64) -> Option<Injected> + Send + Sync + 'static,
    ) -> Rule {
        Rule {
            matches: Box::new(matches),
            answer: Box::new(answer),
        }
    }

    /// PATCHes of the `status` subresource of custom resources `plural` (e.g. `syncrelays`).
    pub fn status_patches(
        plural: &'static str,
        answer: impl Fn(u64) -> Option<Injected> + Send + Sync + 'static,
    ) -> Rule {
        let segment = format!("/{plural}/");
        Rule::new(
            move |method, path| {
                method == Method::PATCH && path.contains(&segment) && path.ends_with("/status")
            },
            answer,
        )
    }
}

/// One matching request: when it arrived (since the proxy started) and what the proxy did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Matched {
    /// Arrival, since the proxy started.
    pub at: Duration,
    /// The injected status code, or `None` when it was forwarded.
    pub answered: Option<u16>,
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    upstream_errors: AtomicU64,
    matched: Mutex<Vec<Matched>>,
}

struct Shared {
    client: kube::Client,
    rule: Rule,
    counts: Counts,
    started: Instant,
}

/// A running proxy; dropping it stops it.
pub struct ApiProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Option<JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Request bodies sent to the API server are small (JSON objects); a limit keeps a runaway one
/// from exhausting memory.
const MAX_REQUEST_BODY: usize = 16 << 20;

/// Headers that describe one HTTP hop, not the message: never copied across the proxy. The
/// admin client sets its own `Authorization` (the same static token the caller sent).
const HOP_HEADERS: [HeaderName; 7] = [
    header::CONNECTION,
    header::HOST,
    header::TRANSFER_ENCODING,
    header::CONTENT_LENGTH,
    header::UPGRADE,
    header::TE,
    header::AUTHORIZATION,
];

impl ApiProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `server` as its admin, applying `rule`.
    pub async fn start(server: &TestApiServer, rule: Rule) -> ApiProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the API proxy on 127.0.0.1");
        let addr = listener.local_addr().expect("API proxy address");
        let shared = Arc::new(Shared {
            client: server.client().await,
            rule,
            counts: Counts::default(),
            started: Instant::now(),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            });
            if let Err(e) = serve.await {
                eprintln!("API proxy stopped: {e}");
            }
        });
        ApiProxy {
            addr,
            shared,
            server: Some(server),
            stop: Some(stop_tx),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig for clients of the proxy to `path`: the server's admin kubeconfig
    /// (same user and static token) with its cluster pointed at [`ApiProxy::url`] and no CA.
    pub fn write_kubeconfig(&self, server: &TestApiServer, path: &Path) -> PathBuf {
        super::k8s_bed::write_kubeconfig_for(server, &self.url(), path)
    }

    /// Requests received (answered or forwarded).
    pub fn requests(&self) -> u64 {
        self.shared.counts.requests.load(Ordering::Relaxed)
    }

    /// Requests that could not be forwarded (answered 502).
    pub fn upstream_errors(&self) -> u64 {
        self.shared.counts.upstream_errors.load(Ordering::Relaxed)
    }

    /// Every request the rule matched, in order of arrival.
    pub fn matched(&self) -> Vec<Matched> {
        lock(&self.shared.counts.matched).clone()
    }

    /// Matching requests answered with `code`.
    pub fn answered(&self, code: u16) -> usize {
        lock(&self.shared.counts.matched)
            .iter()
            .filter(|m| m.answered == Some(code))
            .count()
    }

    /// Matching requests forwarded.
    pub fn forwarded_matching(&self) -> usize {
        lock(&self.shared.counts.matched)
            .iter()
            .filter(|m| m.answered.is_none())
            .count()
    }
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        // Stop accepting and let open connections (watches) end; the task is aborted in case
        // one lingers.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    shared.counts.requests.fetch_add(1, Ordering::Relaxed);
    let (parts, body) = request.into_parts();
    if (shared.rule.matches)(&parts.method, parts.uri.path()) {
        // Numbered and decided under the lock, so that concurrent requests get distinct numbers
        // and the log is in numbering order.
        let injected = {
            let mut matched = lock(&shared.counts.matched);
            let n = matched.len() as u64;
            let injected = (shared.rule.answer)(n);
            matched.push(Matched {
                at: shared.started.elapsed(),
                answered: injected.map(|i| i.code),
            });
            injected
        };
        if let Some(injected) = injected {
            return status_response(injected);
        }
    }
    let body = match axum::body::to_bytes(body, MAX_REQUEST_BODY).await {
        Ok(b) => b,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, &format!("request body: {e}")),
    };
    let mut upstream = http::Request::builder().method(parts.method).uri(
        parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/"),
    );
    for (name, value) in parts.headers.iter() {
        if !HOP_HEADERS.contains(name) {
            upstream = upstream.header(name, value);
        }
    }
    let upstream = match upstream.body(kube::client::Body::from(body)) {
        Ok(r) => r,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, &format!("request: {e}")),
    };
    match shared.client.send(upstream).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            for name in &HOP_HEADERS {
                parts.headers.remove(name);
            }
            // Streamed, not collected: a watch's events pass as they come.
            Response::from_parts(parts, AxumBody::new(body))
        }
        Err(e) => {
            shared
                .counts
                .upstream_errors
                .fetch_add(1, Ordering::Relaxed);
            error_response(StatusCode::BAD_GATEWAY, &format!("upstream: {e}"))
        }
    }
}

/// A Kubernetes `Status` error body, as the API server sends it.
fn status_body(code: u16, reason: &str, message: &str, retry_after: Option<u32>) -> Bytes {
    let mut status = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    });
    // As kube-apiserver does for 429: the delay in the body too, not only in the header.
    if let Some(secs) = retry_after {
        status["details"] = serde_json::json!({ "retryAfterSeconds": secs });
    }
    Bytes::from(status.to_string())
}

fn status_response(injected: Injected) -> Response {
    let body = status_body(
        injected.code,
        injected.reason,
        &format!("injected by the test proxy: {}", injected.reason),
        injected.retry_after,
    );
    let mut response = Response::new(AxumBody::from(body));
    *response.status_mut() =
        StatusCode::from_u16(injected.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if let Some(secs) = injected.retry_after {
        headers.insert(header::RETRY_AFTER, http::HeaderValue::from(secs));
    }
    response
}

fn error_response(code: StatusCode, message: &str) -> Response {
    let reason = code.canonical_reason().unwrap_or("Error");
    let mut response = Response::new(AxumBody::from(status_body(
        code.as_u16(),
        reason,
        message,
        None,
    )));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
