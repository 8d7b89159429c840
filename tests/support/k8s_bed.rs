//! Helpers for tests against the real kube-apiserver (`apiserver.rs`): bounded polling, the
//! CRDs installed and Established, a namespace, plain HTTP GETs of a role's endpoints, and the
//! `grasp-sync controller` / `grasp-sync worker` binaries as guarded child processes.

use super::apiserver::TestApiServer;
use super::bed::{free_addr, scratch_dir};
use super::guarded::Guarded;
use grasp_sync::api::crd::crd_files;
use grasp_sync::api::types::{RelayAllowlist, SyncRelay};
use grasp_sync::relay::embedded::{EmbeddedRelay, EmbeddedRelayConfig};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use serde_json::json;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A typed object from JSON (test fixtures).
pub fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("valid object")
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET path` over plain HTTP/1.0: the status code and the whole response.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, text))
}

/// The value of the first sample of `name` (with labels, e.g.
/// `grasp_sync_status_patches_total{result="applied"}`) on a role's `/metrics`; 0 if absent.
pub async fn scrape(addr: SocketAddr, name: &str) -> f64 {
    let Some((200, text)) = http_get(addr, "/metrics").await else {
        return 0.0;
    };
    text.lines()
        .filter(|l| l.starts_with(name))
        .find_map(|l| l[name.len()..].trim().parse().ok())
        .unwrap_or(0.0)
}

/// `"True"` / `"False"` / `"Unknown"` of a condition, if present.
pub fn condition_status(r: &SyncRelay, t: &str) -> Option<String> {
    r.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| format!("{:?}", c.status))
}

/// The condition's reason, if present.
pub fn condition_reason(r: &SyncRelay, t: &str) -> Option<String> {
    r.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| c.reason.clone())
}

/// Creates namespace `ns`.
pub async fn create_namespace(client: &kube::Client, ns: &str) {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": ns}})),
        )
        .await
        .expect("namespace");
}

/// Creates both CRDs exactly as `grasp-sync crd` renders them and waits until they are
/// Established and served (a first create through the new endpoint can lag a moment).
pub async fn install_crds(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (file, yaml) in crd_files() {
        let crd: CustomResourceDefinition = serde_yaml::from_str(&yaml).expect(file);
        crds.create(&PostParams::default(), &crd)
            .await
            .unwrap_or_else(|e| panic!("create CRD {file}: {e}"));
    }
    for name in [
        "syncrelays.sync.grasp.dev",
        "relayallowlists.sync.grasp.dev",
    ] {
        wait_for("CRD Established", Duration::from_secs(20), || {
            let crds = crds.clone();
            async move {
                let crd = crds.get(name).await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            }
        })
        .await;
    }
}

/// Creates `obj`, retrying while the just-Established CRD's endpoint is not served yet.
pub async fn create_retrying<K>(api: &Api<K>, obj: &K) -> K
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    wait_for("object created", Duration::from_secs(20), || {
        let (api, obj) = (api.clone(), obj.clone());
        async move { api.create(&PostParams::default(), &obj).await.ok() }
    })
    .await
}

/// The `grasp-sync` binary under test.
pub fn grasp_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_grasp-sync"))
}

/// A `grasp-sync` role running as a guarded child process, with its HTTP address.
pub struct Role {
    /// The process.
    pub proc: Guarded,
    /// Its `--listen` address (/metrics, /livez, /readyz).
    pub http: SocketAddr,
}

impl Role {
    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&mut self, limit: Duration) {
        let http = self.http;
        let name = self.proc.name();
        let start = Instant::now();
        loop {
            if let Some((200, _)) = http_get(http, "/readyz").await {
                return;
            }
            if let Some(status) = self.proc.exited() {
                panic!("{name} exited ({status}):\n{}", self.proc.log_tail(40));
            }
            assert!(
                start.elapsed() < limit,
                "{name} not ready within {limit:?}:\n{}",
                self.proc.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Starts `grasp-sync <args…> --listen <free port>` with the server's admin kubeconfig,
/// logging to `<dir>/<name>.log`.
pub fn spawn_role(server: &TestApiServer, dir: &Path, name: &'static str, args: &[&str]) -> Role {
    spawn_role_with_kubeconfig(server.kubeconfig_path(), dir, name, args)
}

/// `grasp-sync controller` as role `name` with Lease identity `identity`, for our relay `own`,
/// watching namespace `ns` and keeping its Lease there; `config` is its `--config` file.
pub fn spawn_controller(
    server: &TestApiServer,
    dir: &Path,
    name: &'static str,
    identity: &str,
    own: &str,
    ns: &str,
    config: Option<&str>,
) -> Role {
    let mut args = vec![
        "controller",
        "--own-relay",
        own,
        "--namespace",
        ns,
        "--lease-namespace",
        ns,
        "--identity",
        identity,
    ];
    args.extend(config.map(|c| ["--config", c]).into_iter().flatten());
    spawn_role(server, dir, name, &args)
}

/// `grasp-sync worker` named `name` (its role and its `--name`), for our relay `own`, watching
/// namespace `ns` and keeping its Lease there; `config` is its `--config` file.
pub fn spawn_worker(
    server: &TestApiServer,
    dir: &Path,
    name: &'static str,
    own: &str,
    ns: &str,
    config: Option<&str>,
) -> Role {
    spawn_worker_with_kubeconfig(server.kubeconfig_path(), dir, name, own, ns, config)
}

/// Writes the server's admin kubeconfig (same user and static token) to `path` with its cluster
/// pointed at `url`, e.g. a proxy in front of the server: `https://127.0.0.1:PORT` keeps the CA
/// (the serving certificate is for IP 127.0.0.1, so a TCP proxy on another port still
/// verifies); `http://…` drops it. Returns `path`.
pub fn write_kubeconfig_for(server: &TestApiServer, url: &str, path: &Path) -> PathBuf {
    let mut kubeconfig =
        kube::config::Kubeconfig::read_from(server.kubeconfig_path()).expect("admin kubeconfig");
    let plain = url.starts_with("http://");
    for named in &mut kubeconfig.clusters {
        let cluster = named.cluster.as_mut().expect("kubeconfig cluster");
        cluster.server = Some(url.to_string());
        if plain {
            cluster.certificate_authority = None;
            cluster.certificate_authority_data = None;
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("kubeconfig dir");
    }
    let yaml = serde_yaml::to_string(&kubeconfig).expect("kubeconfig yaml");
    std::fs::write(path, yaml).expect("write kubeconfig");
    path.to_path_buf()
}

/// Starts `grasp-sync <args…> --listen <free port>` with `kubeconfig` (the server's, or one
/// pointing at a proxy), logging to `<dir>/<name>.log`.
pub fn spawn_role_with_kubeconfig(
    kubeconfig: &Path,
    dir: &Path,
    name: &'static str,
    args: &[&str],
) -> Role {
    std::fs::create_dir_all(dir).expect("scratch dir");
    let http = free_addr();
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend(["--listen".to_string(), http.to_string()]);
    let envs = [
        ("KUBECONFIG", kubeconfig.display().to_string()),
        (
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info,kube=warn".into()),
        ),
    ];
    let proc = Guarded::spawn_env(name, dir, &grasp_binary(), &all, &envs);
    Role { proc, http }
}

/// [`spawn_worker`] with `kubeconfig` (e.g. one pointing at a proxy) instead of the server's.
pub fn spawn_worker_with_kubeconfig(
    kubeconfig: &Path,
    dir: &Path,
    name: &'static str,
    own: &str,
    ns: &str,
    config: Option<&str>,
) -> Role {
    let mut args = vec![
        "worker",
        "--own-relay",
        own,
        "--name",
        name,
        "--namespace",
        ns,
        "--lease-namespace",
        ns,
    ];
    args.extend(config.map(|c| ["--config", c]).into_iter().flatten());
    spawn_role_with_kubeconfig(kubeconfig, dir, name, &args)
}

/// A bed with the API server, the CRDs, namespace `ns` with `allowlist` (YAML), our embedded
/// relay, and one `grasp-sync controller` process (`controller-0`, ready) configured with
/// `settings` (YAML); the rows add their workers.
pub struct ControlledBed {
    /// The API server.
    pub server: TestApiServer,
    /// Its admin client.
    pub admin: kube::Client,
    /// Scratch dir: logs, our relay's store, the settings file.
    pub dir: PathBuf,
    /// Our relay.
    pub own: EmbeddedRelay,
    /// Its URL.
    pub own_url: String,
    /// Path of the settings file (for `--config`).
    pub settings: String,
    /// The controller.
    pub controller: Role,
}

/// Starts a [`ControlledBed`] in scratch dir `name`.
pub async fn start_controlled(
    name: &str,
    ns: &str,
    allowlist: &str,
    settings: &str,
) -> ControlledBed {
    let server = TestApiServer::start();
    let admin = server.client().await;
    let dir = scratch_dir(name);
    std::fs::create_dir_all(&dir).expect("scratch");
    std::fs::write(dir.join("settings.yaml"), settings).expect("settings");
    let own = EmbeddedRelay::start(EmbeddedRelayConfig::new(free_addr(), dir.join("own")))
        .await
        .expect("own relay");
    let own_url = own.url().to_string();
    create_namespace(&admin, ns).await;
    install_crds(&admin).await;
    let allowlists: Api<RelayAllowlist> = Api::namespaced(admin.clone(), ns);
    let allowlist: RelayAllowlist = serde_yaml::from_str(allowlist).expect("allowlist");
    create_retrying(&allowlists, &allowlist).await;
    let settings = dir.join("settings.yaml").display().to_string();
    let mut controller = spawn_controller(
        &server,
        &dir,
        "controller",
        "controller-0",
        &own_url,
        ns,
        Some(&settings),
    );
    controller.wait_ready(Duration::from_secs(30)).await;
    ControlledBed {
        server,
        admin,
        dir,
        own,
        own_url,
        settings,
        controller,
    }
}
