//! Fault-matrix row: status writes answered 409 and 429 (issue 6). The worker runs in-process
//! with a kube client whose HTTP service answers two of every three status PATCHes itself: 429
//! Too Many Requests (with `Retry-After`) and 409 Conflict, in turn. Everything else reaches the
//! real kube-apiserver. Forwarding must not notice (nothing lost), the status must still
//! converge to `Synced` with the right counts, and the refusals must be counted by result.
//! The controller is the real binary with a direct connection. Every wait is bounded.

mod support;

use bytes::Bytes;
use grasp_sync::api::types::{discovered_name, RelayAllowlist, SyncRelay};
use grasp_sync::core::url::RelayUrl;
use grasp_sync::k8s::worker::{self, WorkerOptions};
use grasp_sync::relay::embedded::{EmbeddedRelay, EmbeddedRelayConfig};
use http::{Method, Request, Response};
use http_body::Frame;
use kube::api::Api;
use kube::client::{Body, ClientBuilder, DynBody};
use nostr::Keys;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use support::apiserver::TestApiServer;
use support::bed::{announcement, free_addr, scratch_dir};
use support::k8s_bed::{
    condition_status, create_namespace, create_retrying, http_get, install_crds, spawn_controller,
    wait_for,
};
use support::sync_bed::{
    coordinate, metric, publish, tagged, wait_for_ids, RemoteRelay, FAST_SETTINGS,
    LOOPBACK_ALLOWLIST,
};
use tower::{Layer, Service};

const NS: &str = "grasp-status-faults";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Counts of what the fault layer did.
#[derive(Clone, Default)]
struct StatusFaults {
    status_patches: Arc<AtomicU64>,
    throttled: Arc<AtomicU64>,
    conflicts: Arc<AtomicU64>,
}

impl<S> Layer<S> for StatusFaults {
    type Service = FaultService<S>;
    fn layer(&self, inner: S) -> FaultService<S> {
        FaultService {
            inner,
            faults: self.clone(),
        }
    }
}

struct FaultService<S> {
    inner: S,
    faults: StatusFaults,
}

/// The real response's body, or an injected one.
enum FaultBody {
    Inner(Box<DynBody>),
    Fixed(Option<Bytes>),
}

impl http_body::Body for FaultBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            FaultBody::Inner(b) => Pin::new(b).poll_frame(cx),
            FaultBody::Fixed(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }
}

/// A Kubernetes `Status` error body, as the API server sends it.
fn status_body(code: u16, reason: &str) -> Bytes {
    Bytes::from(
        serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("injected by the test: {reason}"), "reason": reason, "code": code,
        })
        .to_string(),
    )
}

impl<S> Service<Request<Body>> for FaultService<S>
where
    S: Service<Request<Body>, Response = Response<Box<DynBody>>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<FaultBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<FaultBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let status_patch = req.method() == Method::PATCH
            && req.uri().path().contains("/syncrelays/")
            && req.uri().path().ends_with("/status");
        if status_patch {
            let n = self.faults.status_patches.fetch_add(1, Ordering::Relaxed);
            let injected = match n % 3 {
                0 => {
                    self.faults.throttled.fetch_add(1, Ordering::Relaxed);
                    Some((429, "TooManyRequests"))
                }
                1 => {
                    self.faults.conflicts.fetch_add(1, Ordering::Relaxed);
                    Some((409, "Conflict"))
                }
                _ => None,
            };
            if let Some((code, reason)) = injected {
                let response = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .header("retry-after", "1")
                    .body(FaultBody::Fixed(Some(status_body(code, reason))));
                return Box::pin(async move { response.map_err(Into::into) });
            }
        }
        let call = self.inner.call(req);
        Box::pin(async move {
            call.await
                .map(|r| r.map(FaultBody::Inner))
                .map_err(Into::into)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_writes_answered_409_and_429_still_converge_and_lose_nothing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let server = TestApiServer::start();
    let admin = server.client().await;
    let dir = scratch_dir("status-faults");
    std::fs::create_dir_all(&dir).expect("scratch");
    std::fs::write(dir.join("settings.yaml"), FAST_SETTINGS).expect("settings");
    let own = EmbeddedRelay::start(EmbeddedRelayConfig::new(free_addr(), dir.join("own")))
        .await
        .expect("own relay");
    let own_url = own.url().to_string();
    create_namespace(&admin, NS).await;
    install_crds(&admin).await;
    let allowlists: Api<RelayAllowlist> = Api::namespaced(admin.clone(), NS);
    let allowlist: RelayAllowlist = serde_yaml::from_str(LOOPBACK_ALLOWLIST).expect("allowlist");
    create_retrying(&allowlists, &allowlist).await;

    let settings = dir.join("settings.yaml").display().to_string();
    let mut controller = spawn_controller(
        &server,
        &dir,
        "controller",
        "controller-0",
        &own_url,
        NS,
        Some(&settings),
    );
    controller.wait_ready(Duration::from_secs(30)).await;

    // The worker's client: the server's admin kubeconfig, with the fault layer in front.
    let kubeconfig =
        kube::config::Kubeconfig::read_from(server.kubeconfig_path()).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    let faults = StatusFaults::default();
    let client = ClientBuilder::try_from(config)
        .expect("client builder")
        .with_layer(&faults)
        .build();
    let mut opts = WorkerOptions::new(RelayUrl::parse(&own_url).expect("url"), "worker-0".into());
    opts.namespace = Some(NS.into());
    opts.lease_namespace = NS.into();
    let metrics_addr = free_addr();
    opts.listen = metrics_addr;
    opts.settings = grasp_sync::config::settings_from_yaml(FAST_SETTINGS).expect("settings");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker_task = tokio::spawn(worker::run(client, opts, async move {
        let _ = stop_rx.await;
    }));

    // A repo whose 300 issues are only on the remote; announced on our relay.
    let remote = RemoteRelay::start().await;
    let keys = Keys::generate();
    let repo = announcement(&keys, "faulty-status", &[&own_url, &remote.url()]);
    let issues: Vec<_> = (0..300)
        .map(|i| {
            tagged(
                &keys,
                1621,
                "a",
                &coordinate(&keys, "faulty-status"),
                &format!("issue {i}"),
            )
        })
        .collect();
    publish(&remote.url(), std::slice::from_ref(&repo)).await;
    publish(&remote.url(), &issues).await;
    publish(&own_url, &[repo]).await;
    let ids: Vec<_> = issues.iter().map(|e| e.id).collect();

    // Nothing lost: forwarding does not depend on status writes.
    wait_for_ids(
        &own_url,
        &ids,
        Duration::from_secs(60),
        "with status writes refused",
    )
    .await;

    // The status converges anyway: Connected and Synced, one repo desired and confirmed.
    let relays: Api<SyncRelay> = Api::namespaced(admin.clone(), NS);
    let name = discovered_name(&RelayUrl::parse(&remote.url()).expect("url"));
    let synced = wait_for(
        "status Synced despite 409/429",
        Duration::from_secs(60),
        || {
            let relays = relays.clone();
            let name = name.clone();
            async move {
                let r = relays.get_opt(&name).await.ok()??;
                let sync = &r.status.as_ref()?.sync;
                let done = condition_status(&r, "Connected").as_deref() == Some("True")
                    && condition_status(&r, "Synced").as_deref() == Some("True")
                    && sync.desired_repos == 1
                    && sync.confirmed_repos == 1;
                done.then_some(r)
            }
        },
    )
    .await;
    assert_eq!(
        synced.status.as_ref().map(|s| s.sync.confirmed_repos),
        Some(1)
    );

    // The refusals were answered and counted by result, and the worker kept retrying.
    let throttled = faults.throttled.load(Ordering::Relaxed);
    let conflicts = faults.conflicts.load(Ordering::Relaxed);
    let attempts = faults.status_patches.load(Ordering::Relaxed);
    assert!(throttled > 0 && conflicts > 0, "both faults were injected");
    let (_, text) = http_get(metrics_addr, "/metrics")
        .await
        .expect("worker metrics");
    let counted_throttled = metric(
        &text,
        "grasp_sync_status_patches_total{result=\"throttled\"}",
    );
    let counted_errors = metric(&text, "grasp_sync_status_patches_total{result=\"error\"}");
    let applied = metric(&text, "grasp_sync_status_patches_total{result=\"applied\"}");
    assert!(
        counted_throttled >= 1.0,
        "429s counted as throttled:\n{text}"
    );
    assert!(counted_errors >= 1.0, "409s counted as errors:\n{text}");
    assert!(applied >= 1.0, "writes still applied");
    println!(
        "status faults: {attempts} status PATCHes, {throttled} answered 429 and {conflicts} \
         answered 409 by the test; the worker counted {counted_throttled} throttled, \
         {counted_errors} errors, {applied} applied; all {} events stored; Synced with 1/1 repos",
        ids.len()
    );

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), worker_task).await;
    controller.proc.stop_gracefully();
    own.shutdown();
}
