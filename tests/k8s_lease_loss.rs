//! A worker cut off from the API server mid-download (issue 6, fault matrix): its Lease runs
//! out, so it closes every session (the controller may move its relays); when the API server
//! is reachable again it renews, takes its relays back, and the download must finish with
//! nothing lost. The worker runs in-process and reaches the real kube-apiserver through a
//! fault proxy; the controller is the real binary with a direct connection. Short Leases
//! (4 s, renewed every second) keep it quick. Every wait is bounded.

mod support;

use grasp_sync::api::types::{discovered_name, RelayAllowlist, SyncRelay};
use grasp_sync::core::url::RelayUrl;
use grasp_sync::k8s::worker::{self, WorkerOptions};
use grasp_sync::relay::embedded::{EmbeddedRelay, EmbeddedRelayConfig};
use kube::api::Api;
use kube::ResourceExt;
use nostr::Keys;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::apiserver::TestApiServer;
use support::bed::{announcement, free_addr, scratch_dir};
use support::fault_proxy::FaultProxy;
use support::k8s_bed::{
    create_namespace, create_retrying, install_crds, spawn_controller, wait_for,
};
use support::sync_bed::{
    coordinate, held, publish, tagged, wait_for_ids, RemoteRelay, FAST_SETTINGS, LOOPBACK_ALLOWLIST,
};

const NS: &str = "grasp-lease";

/// A client of the test API server that goes through `proxy`.
async fn proxied_client(server: &TestApiServer, proxy: &FaultProxy) -> kube::Client {
    let kubeconfig =
        kube::config::Kubeconfig::read_from(server.kubeconfig_path()).expect("kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    let addr = proxy.url().trim_start_matches("ws://").to_string();
    config.cluster_url = format!("https://{addr}").parse().expect("uri");
    config.read_timeout = Some(Duration::from_secs(5));
    config.connect_timeout = Some(Duration::from_secs(2));
    kube::Client::try_from(config).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_loses_its_lease_mid_download_loses_nothing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let server = TestApiServer::start();
    let admin = server.client().await;
    let dir = scratch_dir("lease-loss");
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

    let api_addr: SocketAddr = server
        .url()
        .trim_start_matches("https://")
        .parse()
        .expect("api addr");
    let api_proxy = FaultProxy::start_raw(api_addr).await.expect("api proxy");
    let client = proxied_client(&server, &api_proxy).await;
    let mut opts = WorkerOptions::new(RelayUrl::parse(&own_url).expect("url"), "worker-0".into());
    opts.namespace = Some(NS.into());
    opts.lease_namespace = NS.into();
    opts.listen = free_addr();
    opts.lease_duration = Duration::from_secs(4);
    opts.renew_interval = Duration::from_secs(1);
    opts.settings = grasp_sync::config::settings_from_yaml(FAST_SETTINGS).expect("settings");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker_task = tokio::spawn(worker::run(client, opts, async move {
        let _ = stop_rx.await;
    }));

    // A repo whose issues are only on the remote; announced on our relay.
    let remote = RemoteRelay::start().await;
    let keys = Keys::generate();
    let repo = announcement(&keys, "lease", &[&own_url, &remote.url()]);
    let issues: Vec<_> = (0..1200)
        .map(|i| {
            tagged(
                &keys,
                1621,
                "a",
                &coordinate(&keys, "lease"),
                &format!("issue {i}"),
            )
        })
        .collect();
    publish(&remote.url(), std::slice::from_ref(&repo)).await;
    publish(&remote.url(), &issues).await;
    publish(&own_url, &[repo]).await;
    let ids: Vec<_> = issues.iter().map(|e| e.id).collect();
    let relays: Api<SyncRelay> = Api::namespaced(admin.clone(), NS);
    let name = discovered_name(&RelayUrl::parse(&remote.url()).expect("url"));
    wait_for(
        "relay assigned to worker-0",
        Duration::from_secs(30),
        || {
            let relays = relays.clone();
            let name = name.clone();
            async move {
                let r = relays.get_opt(&name).await.ok()??;
                (r.labels().get("sync.grasp.dev/worker").map(String::as_str) == Some("worker-0"))
                    .then_some(())
            }
        },
    )
    .await;

    // Mid-download: the API server becomes unreachable for longer than the Lease.
    let start = Instant::now();
    let partial = loop {
        let n = held(&own_url, &ids).await.len();
        if n > 0 {
            break n;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "nothing arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    api_proxy.refuse(true);
    api_proxy.cut();
    tokio::time::sleep(Duration::from_secs(7)).await;
    api_proxy.refuse(false);
    println!(
        "API unreachable for 7 s with {partial} of {} stored",
        ids.len()
    );
    wait_for_ids(
        &own_url,
        &ids,
        Duration::from_secs(60),
        "after the Lease came back",
    )
    .await;

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), worker_task).await;
    controller.proc.stop_gracefully();
    own.shutdown();
}
