//! RBAC (issue 4): the controller and the worker, each running with exactly the ServiceAccount
//! permissions the Helm chart grants, do their whole job, and are refused anything outside it.
//!
//! For both scopes of the chart (namespace mode: `watchNamespace` set, so Roles in the watched
//! namespace; cluster mode: ClusterRoles), against a real kube-apiserver + etcd
//! (tests/support/apiserver.rs, authorization mode RBAC):
//!
//! 1. `helm template` (the real Helm CLI) renders the chart; its ServiceAccounts, Roles,
//!    ClusterRoles and bindings, exactly as rendered, are created on the server. The release
//!    namespace (ServiceAccounts, Leases) differs from the watched namespace, so each Role is
//!    proven to sit where the code needs it.
//! 2. The real controller and the real worker run in-process, each with a client that
//!    impersonates its ServiceAccount (`system:serviceaccount:<release ns>:gs-grasp-sync-…`).
//!    With nothing more, the whole job gets done: the controller leads (its Lease), adds the
//!    finalizer, labels an explicit SyncRelay and one it discovers from an announcement on our
//!    relay to the worker, writes `Accepted`/`Assigned`/`Ready`, the allowlist's status and
//!    Events; the worker holds its Lease, writes `Connected` and `Synced` (server-side apply on
//!    `status`), and the repositories' issues arrive on our relay. Deleting the explicit
//!    SyncRelay runs the drain handshake (controller annotates, worker acknowledges, controller
//!    removes the finalizer) and the object goes. On shutdown the worker writes
//!    `WorkerStopped` and releases its Lease, and the controller releases the leader Lease.
//!    Neither role saw a single refused write: their `grasp_sync_status_patches_total{result=
//!    "error"}` stay 0 and no warning they logged mentions 403/Forbidden.
//! 3. The same impersonating clients are refused (HTTP 403) everything outside the job: the
//!    worker patching, applying or replacing a SyncRelay's spec, creating or deleting one,
//!    touching a RelayAllowlist, listing or deleting Leases; either role reading Secrets,
//!    creating Pods/Deployments, binding itself to `cluster-admin`; the controller writing a
//!    RelayAllowlist's spec or another role's Lease; Leases outside the release namespace;
//!    and, in namespace mode, any SyncRelay outside the watched namespace (a SyncRelay there is
//!    never touched by either role). Every refusal has a positive control: the same request
//!    by the admin (as a server-side dry run for writes) succeeds, so the 403 is RBAC's and not
//!    a malformed request or a missing object.
//!
//! Needs the binaries from `scripts/k8s-tools` (`GRASP_SYNC_K8S_BIN`) and Helm from
//! `scripts/helm-tool` (`GRASP_SYNC_HELM`); `scripts/test` provides both. Every wait is bounded.

mod support;

use grasp_sync::api::types::{discovered_name, RelayAllowlist, SyncRelay};
use grasp_sync::config::settings_from_yaml;
use grasp_sync::core::url::RelayUrl;
use grasp_sync::k8s::consts::{
    CONTROLLER_LEASE, CONTROLLER_MANAGER, DISCOVERED_LABEL, DRAIN_ANNOTATION, FINALIZER,
    ROLE_LABEL, ROLE_WORKER, WORKER_LABEL, WORKER_MANAGER,
};
use grasp_sync::k8s::controller::ControllerOptions;
use grasp_sync::k8s::lease::worker_lease;
use grasp_sync::k8s::worker::WorkerOptions;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::api::events::v1::Event as KubeEvent;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::core::GroupVersionKind;
use kube::{Client, ResourceExt};
use nostr::Keys;
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::apiserver::TestApiServer;
use support::bed::{announcement, embedded_relay, free_addr, scratch_dir};
use support::k8s_bed::{
    condition_reason, condition_status, create_namespace, create_retrying, from_json, install_crds,
    scrape, wait_for,
};
use support::sync_bed::{
    coordinate, fast_session, publish, tagged, wait_for_ids, RemoteRelay, FAST_SETTINGS,
    LOOPBACK_ALLOWLIST,
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const HELM_VERSION: &str = "v4.3.1";
const RELEASE: &str = "gs";
/// The worker's name, as the StatefulSet's first pod would have it.
const WORKER: &str = "gs-grasp-sync-worker-0";
/// The controller's identity, as a Deployment pod's name would be.
const IDENTITY: &str = "gs-grasp-sync-controller-5d8c9b7f4-x2k8q";
const RBAC_KINDS: [&str; 5] = [
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
];

/// Where the chart is installed and what it watches.
#[derive(Debug, Clone, Copy)]
struct Mode {
    label: &'static str,
    /// The release namespace: the ServiceAccounts and every Lease.
    release_ns: &'static str,
    /// Where our SyncRelays and the RelayAllowlist live.
    watch_ns: &'static str,
    /// Some other namespace.
    other_ns: &'static str,
    /// `watchNamespace` set (Roles), else cluster mode (ClusterRoles).
    namespaced: bool,
}

const NAMESPACE_MODE: Mode = Mode {
    label: "namespace",
    release_ns: "gs-system",
    watch_ns: "gs-watch",
    other_ns: "gs-other",
    namespaced: true,
};

const CLUSTER_MODE: Mode = Mode {
    label: "cluster",
    release_ns: "gs-system",
    watch_ns: "gs-relays",
    other_ns: "gs-other",
    namespaced: false,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_mode_roles_do_their_whole_job_and_nothing_else() {
    prove(NAMESPACE_MODE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_roles_do_their_whole_job_and_nothing_else() {
    prove(CLUSTER_MODE).await;
}

// ---------------------------------------------------------------------------------------------
// Captured warnings (both roles run in this process)

/// Every WARN-or-worse line logged in this process (both tests share it; a 403 in either
/// role is a failure of that test's claim, so both check the whole buffer).
fn warnings() -> Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        // `RUST_LOG` may widen it for debugging; WARN by default.
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .try_init();
        buf
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        // Echoed, so `--nocapture` shows them too.
        let _ = std::io::stderr().write_all(data);
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn forbidden_warnings() -> Vec<String> {
    let buf = warnings();
    let text = String::from_utf8_lossy(&buf.lock().unwrap_or_else(|p| p.into_inner())).to_string();
    text.lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("403") || l.contains("forbidden")
        })
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Rendering the chart's RBAC with Helm

fn helm_path() -> PathBuf {
    let path = std::env::var_os("GRASP_SYNC_HELM")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("GRASP_SYNC_CACHE")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").expect("HOME or GRASP_SYNC_CACHE"))
                        .join(".cache/grasp-sync")
                });
            cache.join("helm").join(HELM_VERSION).join("helm")
        });
    assert!(
        path.is_file(),
        "helm not found at {}: run scripts/helm-tool (scripts/test runs it and exports \
         GRASP_SYNC_HELM)",
        path.display()
    );
    path
}

/// Runs `cmd` to completion, killing it (and failing) past `limit`.
fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{desc} ran longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// The chart's RBAC objects (and ServiceAccounts) as `helm template` renders them for `mode`.
fn render_rbac(mode: Mode) -> Vec<Value> {
    let home = std::env::temp_dir().join(format!(
        "grasp-sync-rbac-helm-{}-{}",
        std::process::id(),
        mode.label
    ));
    let mut cmd = Command::new(helm_path());
    cmd.env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG")
        .current_dir(ROOT)
        .args(["template", RELEASE, "charts/grasp-sync"])
        .args(["--namespace", mode.release_ns])
        .args(["--set", "ownRelay.url=ws://127.0.0.1:1"]);
    if mode.namespaced {
        cmd.args(["--set", &format!("watchNamespace={}", mode.watch_ns)]);
    }
    let out = output_within(&mut cmd, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8_lossy(&out.stdout).to_string();
    let _ = std::fs::remove_dir_all(&home);
    serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .filter(|v| RBAC_KINDS.contains(&v["kind"].as_str().unwrap_or_default()))
        .collect()
}

fn sa_name(role: &str) -> String {
    format!("{RELEASE}-grasp-sync-{role}")
}

/// Creates the rendered objects, exactly as rendered.
async fn create_rendered(admin: &Client, docs: &[Value]) {
    for doc in docs {
        let api_version = doc["apiVersion"].as_str().expect("apiVersion");
        let kind = doc["kind"].as_str().expect("kind");
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        let obj: DynamicObject = serde_json::from_value(doc.clone()).expect("object");
        let api: Api<DynamicObject> = match obj.metadata.namespace.as_deref() {
            Some(ns) => Api::namespaced_with(admin.clone(), ns, &ar),
            None => Api::all_with(admin.clone(), &ar),
        };
        api.create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("create {kind} {}: {e}", obj.name_any()));
    }
}

// ---------------------------------------------------------------------------------------------
// Requests outside the job

/// One request; `attempt` sends it as some identity.
#[derive(Debug, Clone)]
enum Op {
    /// A merge patch of `spec` on the main resource (verb `patch`).
    PatchRelaySpec {
        ns: String,
        name: String,
    },
    /// A server-side apply of `spec` on the main resource (verb `patch`).
    ApplyRelaySpec {
        ns: String,
        name: String,
    },
    /// A PUT of the whole object with a changed spec (verb `update`).
    ReplaceRelay(Box<SyncRelay>),
    /// A merge patch of the worker label (relabelling a relay to oneself).
    PatchRelayLabel {
        ns: String,
        name: String,
    },
    CreateRelay {
        ns: String,
    },
    DeleteRelay {
        ns: String,
        name: String,
    },
    ListRelays {
        ns: String,
    },
    /// The worker's own kind of status apply, on some relay.
    ApplyRelayStatus {
        ns: String,
        name: String,
    },
    PatchAllowlistSpec {
        ns: String,
        name: String,
    },
    ApplyAllowlistStatus {
        ns: String,
        name: String,
    },
    CreateAllowlist {
        ns: String,
    },
    DeleteAllowlist {
        ns: String,
        name: String,
    },
    GetSecret {
        ns: String,
        name: String,
    },
    ListSecrets {
        ns: String,
    },
    ListLeases {
        ns: String,
    },
    CreateLease {
        ns: String,
    },
    DeleteLease {
        ns: String,
        name: String,
    },
    CreateDeployment {
        ns: String,
    },
    CreatePod {
        ns: String,
    },
    ListNamespaces,
    BindClusterAdmin {
        sa_ns: String,
        sa: String,
    },
}

fn patch_params(dry_run: bool) -> PatchParams {
    PatchParams {
        dry_run,
        ..PatchParams::default()
    }
}

fn apply_params(manager: &str, dry_run: bool) -> PatchParams {
    let mut p = PatchParams::apply(manager).force();
    p.dry_run = dry_run;
    p
}

fn post_params(dry_run: bool) -> PostParams {
    PostParams {
        dry_run,
        field_manager: None,
    }
}

fn delete_params(dry_run: bool) -> DeleteParams {
    DeleteParams {
        dry_run,
        ..DeleteParams::default()
    }
}

/// Sends `op` as `client` (writes as a server-side dry run when `dry_run`).
async fn attempt(client: &Client, op: &Op, dry_run: bool) -> Result<(), kube::Error> {
    let relays = |ns: &str| Api::<SyncRelay>::namespaced(client.clone(), ns);
    let allowlists = |ns: &str| Api::<RelayAllowlist>::namespaced(client.clone(), ns);
    let leases = |ns: &str| Api::<Lease>::namespaced(client.clone(), ns);
    match op {
        Op::PatchRelaySpec { ns, name } => relays(ns)
            .patch(
                name,
                &patch_params(dry_run),
                &Patch::Merge(json!({"spec": {"suspend": true}})),
            )
            .await
            .map(drop),
        Op::ApplyRelaySpec { ns, name } => relays(ns)
            .patch(
                name,
                &apply_params(WORKER_MANAGER, dry_run),
                &Patch::Apply(json!({
                    "apiVersion": "sync.grasp.dev/v1alpha1", "kind": "SyncRelay",
                    "metadata": {"name": name},
                    "spec": {"suspend": true},
                })),
            )
            .await
            .map(drop),
        Op::ReplaceRelay(relay) => {
            let api = relays(&relay.namespace().expect("namespaced"));
            let mut base = (**relay).clone();
            // RBAC is checked before the version, so a refused client gets its 403 at once;
            // the admin's control retries on 409, since the roles keep writing status.
            let mut result = Ok(());
            for _ in 0..5 {
                let mut changed = base.clone();
                changed.spec.suspend = true;
                result = api
                    .replace(&relay.name_any(), &post_params(dry_run), &changed)
                    .await
                    .map(drop);
                match &result {
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        base = api.get(&relay.name_any()).await?;
                    }
                    _ => break,
                }
            }
            result
        }
        Op::PatchRelayLabel { ns, name } => relays(ns)
            .patch(
                name,
                &patch_params(dry_run),
                &Patch::Merge(json!({"metadata": {"labels": {WORKER_LABEL: "someone-else"}}})),
            )
            .await
            .map(drop),
        Op::CreateRelay { ns } => {
            let relay: SyncRelay = from_json(json!({
                "apiVersion": "sync.grasp.dev/v1alpha1", "kind": "SyncRelay",
                "metadata": {"name": "rbac-probe"},
                "spec": {"url": "ws://127.0.0.1:9"},
            }));
            relays(ns)
                .create(&post_params(dry_run), &relay)
                .await
                .map(drop)
        }
        Op::DeleteRelay { ns, name } => relays(ns)
            .delete(name, &delete_params(dry_run))
            .await
            .map(drop),
        Op::ListRelays { ns } => relays(ns).list(&ListParams::default()).await.map(drop),
        Op::ApplyRelayStatus { ns, name } => relays(ns)
            .patch_status(
                name,
                &apply_params(WORKER_MANAGER, dry_run),
                &Patch::Apply(json!({
                    "apiVersion": "sync.grasp.dev/v1alpha1", "kind": "SyncRelay",
                    "status": {"conditions": [{
                        "type": "Connected", "status": "True", "reason": "Connected",
                        "message": "probe", "lastTransitionTime": "2026-01-01T00:00:00Z",
                    }]},
                })),
            )
            .await
            .map(drop),
        Op::PatchAllowlistSpec { ns, name } => allowlists(ns)
            .patch(
                name,
                &patch_params(dry_run),
                &Patch::Merge(json!({"spec": {"allowPrivateNetworks": false}})),
            )
            .await
            .map(drop),
        Op::ApplyAllowlistStatus { ns, name } => allowlists(ns)
            .patch_status(
                name,
                &apply_params(CONTROLLER_MANAGER, dry_run),
                &Patch::Apply(json!({
                    "apiVersion": "sync.grasp.dev/v1alpha1", "kind": "RelayAllowlist",
                    "status": {"matched": 0, "refused": 0},
                })),
            )
            .await
            .map(drop),
        Op::CreateAllowlist { ns } => {
            let list: RelayAllowlist = from_json(json!({
                "apiVersion": "sync.grasp.dev/v1alpha1", "kind": "RelayAllowlist",
                "metadata": {"name": "rbac-probe"},
                "spec": {"allow": [{"host": "*"}]},
            }));
            allowlists(ns)
                .create(&post_params(dry_run), &list)
                .await
                .map(drop)
        }
        Op::DeleteAllowlist { ns, name } => allowlists(ns)
            .delete(name, &delete_params(dry_run))
            .await
            .map(drop),
        Op::GetSecret { ns, name } => Api::<Secret>::namespaced(client.clone(), ns)
            .get(name)
            .await
            .map(drop),
        Op::ListSecrets { ns } => Api::<Secret>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .map(drop),
        Op::ListLeases { ns } => leases(ns).list(&ListParams::default()).await.map(drop),
        Op::CreateLease { ns } => leases(ns)
            .create(
                &post_params(dry_run),
                &worker_lease("rbac-probe", now_millis(), Duration::from_secs(60)),
            )
            .await
            .map(drop),
        Op::DeleteLease { ns, name } => leases(ns)
            .delete(name, &delete_params(dry_run))
            .await
            .map(drop),
        Op::CreateDeployment { ns } => {
            let d: Deployment = from_json(json!({
                "metadata": {"name": "rbac-probe"},
                "spec": {
                    "selector": {"matchLabels": {"app": "rbac-probe"}},
                    "template": {
                        "metadata": {"labels": {"app": "rbac-probe"}},
                        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
                    },
                },
            }));
            Api::<Deployment>::namespaced(client.clone(), ns)
                .create(&post_params(dry_run), &d)
                .await
                .map(drop)
        }
        Op::CreatePod { ns } => {
            let p: Pod = from_json(json!({
                "metadata": {"name": "rbac-probe"},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            }));
            Api::<Pod>::namespaced(client.clone(), ns)
                .create(&post_params(dry_run), &p)
                .await
                .map(drop)
        }
        Op::ListNamespaces => Api::<Namespace>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map(drop),
        Op::BindClusterAdmin { sa_ns, sa } => {
            let b: ClusterRoleBinding = from_json(json!({
                "metadata": {"name": format!("rbac-probe-{sa}")},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "cluster-admin"},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": sa_ns}],
            }));
            Api::<ClusterRoleBinding>::all(client.clone())
                .create(&post_params(dry_run), &b)
                .await
                .map(drop)
        }
    }
}

/// `who` is refused `op` with 403, and the admin's same request (dry run) is not.
async fn assert_refused(admin: &Client, who: &str, client: &Client, op: &Op) {
    match attempt(client, op, false).await {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("{who} was not refused {op:?} (expected 403): {other:?}"),
    }
    if let Err(e) = attempt(admin, op, true).await {
        panic!("positive control: the admin's {op:?} failed, so the 403 proves nothing: {e}");
    }
}

/// `who` may do `op` (a read, or a dry-run write).
async fn assert_allowed(who: &str, client: &Client, op: &Op) {
    if let Err(e) = attempt(client, op, true).await {
        panic!("{who} was refused {op:?}, which the chart grants: {e}");
    }
}

fn now_millis() -> grasp_sync::core::Millis {
    grasp_sync::core::Millis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    )
}

fn holds(r: &SyncRelay, t: &str) -> bool {
    condition_status(r, t).as_deref() == Some("True")
}

/// Finalizer, our worker's label and every condition True.
fn fully_served(r: &SyncRelay) -> bool {
    r.finalizers().iter().any(|f| f == FINALIZER)
        && r.labels().get(WORKER_LABEL).map(String::as_str) == Some(WORKER)
        && r.status
            .as_ref()
            .and_then(|s| s.assignment.as_ref())
            .is_some_and(|a| a.worker == WORKER)
        && ["Accepted", "Assigned", "Connected", "Synced", "Ready"]
            .iter()
            .all(|t| holds(r, t))
}

/// Polls `name` until `ok`, for at most `limit`; on timeout, fails showing what it last was.
async fn wait_relay(
    api: &Api<SyncRelay>,
    name: &str,
    limit: Duration,
    ok: impl Fn(&SyncRelay) -> bool,
) -> SyncRelay {
    let start = Instant::now();
    let mut last = None;
    loop {
        if let Ok(Some(r)) = api.get_opt(name).await {
            if ok(&r) {
                return r;
            }
            last = Some(r);
        }
        if start.elapsed() > limit {
            let shown = last.map(|r| {
                let conditions: Vec<String> = r
                    .status
                    .iter()
                    .flat_map(|s| s.conditions.iter())
                    .map(|c| format!("{}={:?} ({}: {})", c.type_, c.status, c.reason, c.message))
                    .collect();
                format!(
                    "labels {:?}, annotations {:?}, finalizers {:?}, conditions {conditions:#?}",
                    r.labels(),
                    r.annotations(),
                    r.finalizers()
                )
            });
            panic!("timed out after {limit:?} waiting for SyncRelay {name}; last: {shown:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sa_client_groups(ns: &str) -> [String; 3] {
    [
        "system:serviceaccounts".to_string(),
        format!("system:serviceaccounts:{ns}"),
        "system:authenticated".to_string(),
    ]
}

async fn client_as_sa(server: &TestApiServer, ns: &str, sa: &str) -> Client {
    let groups = sa_client_groups(ns);
    let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
    server
        .client_as(&format!("system:serviceaccount:{ns}:{sa}"), &groups)
        .await
}

// ---------------------------------------------------------------------------------------------
// The proof

async fn prove(mode: Mode) {
    let started = Instant::now();
    let _ = warnings();

    // 1. The chart's RBAC, rendered by Helm, created as rendered.
    let rbac = render_rbac(mode);
    let count = |k: &str| rbac.iter().filter(|d| d["kind"] == k).count();
    assert_eq!(count("ServiceAccount"), 2, "{rbac:#?}");
    // The custom-resource rules (Role or ClusterRole) plus the two Lease Roles.
    if mode.namespaced {
        assert_eq!((count("Role"), count("RoleBinding")), (4, 4), "{rbac:#?}");
        assert_eq!(count("ClusterRole") + count("ClusterRoleBinding"), 0);
    } else {
        assert_eq!((count("Role"), count("RoleBinding")), (2, 2), "{rbac:#?}");
        assert_eq!(
            (count("ClusterRole"), count("ClusterRoleBinding")),
            (2, 2),
            "{rbac:#?}"
        );
    }
    for d in &rbac {
        if d["kind"] == "Role" || d["kind"] == "RoleBinding" {
            let ns = d["metadata"]["namespace"].as_str().unwrap_or_default();
            assert!(
                ns == mode.release_ns || (mode.namespaced && ns == mode.watch_ns),
                "{} {} in namespace {ns:?}",
                d["kind"],
                d["metadata"]["name"]
            );
        }
    }
    let controller_sa = sa_name("controller");
    let worker_sa = sa_name("worker");
    for sa in [&controller_sa, &worker_sa] {
        assert!(
            rbac.iter()
                .any(|d| d["kind"] == "ServiceAccount" && d["metadata"]["name"] == sa.as_str()),
            "ServiceAccount {sa} not rendered"
        );
    }

    let server = TestApiServer::start();
    let admin = server.client().await;
    for ns in [mode.release_ns, mode.watch_ns, mode.other_ns] {
        create_namespace(&admin, ns).await;
    }
    install_crds(&admin).await;
    create_rendered(&admin, &rbac).await;
    let controller_client = client_as_sa(&server, mode.release_ns, &controller_sa).await;
    let worker_client = client_as_sa(&server, mode.release_ns, &worker_sa).await;

    // The authorizer's cache catches up with the new bindings (each of the four).
    wait_for("RBAC in effect", Duration::from_secs(30), || {
        let (c, w) = (controller_client.clone(), worker_client.clone());
        async move {
            Api::<SyncRelay>::namespaced(c.clone(), mode.watch_ns)
                .list(&ListParams::default())
                .await
                .ok()?;
            Api::<Lease>::namespaced(c, mode.release_ns)
                .list(&ListParams::default())
                .await
                .ok()?;
            Api::<SyncRelay>::namespaced(w.clone(), mode.watch_ns)
                .list(&ListParams::default())
                .await
                .ok()?;
            match Api::<Lease>::namespaced(w, mode.release_ns)
                .get_opt("absent")
                .await
            {
                Ok(None) => Some(()),
                _ => None,
            }
        }
    })
    .await;

    // Relays: ours (embedded), one for the explicit SyncRelay, one to be discovered, and one
    // for a SyncRelay in another namespace.
    let dir = scratch_dir(&format!("rbac-{}", mode.label));
    let own = embedded_relay(&dir.join("own")).await;
    let own_url = own.url().to_string();
    let explicit_remote = RemoteRelay::start().await;
    let found_remote = RemoteRelay::start().await;
    let outside_remote = RemoteRelay::start().await;

    // Objects, as the admin.
    let relays: Api<SyncRelay> = Api::namespaced(admin.clone(), mode.watch_ns);
    let other_relays: Api<SyncRelay> = Api::namespaced(admin.clone(), mode.other_ns);
    let allowlists: Api<RelayAllowlist> = Api::namespaced(admin.clone(), mode.watch_ns);
    let leases: Api<Lease> = Api::namespaced(admin.clone(), mode.release_ns);
    let allowlist: RelayAllowlist = serde_yaml::from_str(LOOPBACK_ALLOWLIST).expect("allowlist");
    create_retrying(&allowlists, &allowlist).await;
    let explicit: SyncRelay = from_json(json!({
        "apiVersion": "sync.grasp.dev/v1alpha1", "kind": "SyncRelay",
        "metadata": {"name": "explicit"},
        "spec": {"url": explicit_remote.url(), "bootstrap": true},
    }));
    create_retrying(&relays, &explicit).await;
    let outside: SyncRelay = from_json(json!({
        "apiVersion": "sync.grasp.dev/v1alpha1", "kind": "SyncRelay",
        "metadata": {"name": "outside"},
        "spec": {"url": outside_remote.url(), "bootstrap": true},
    }));
    create_retrying(&other_relays, &outside).await;
    for (ns, name) in [
        (mode.release_ns, "probe-secret"),
        (mode.watch_ns, "probe-secret"),
    ] {
        Api::<Secret>::namespaced(admin.clone(), ns)
            .create(
                &PostParams::default(),
                &from_json(json!({"metadata": {"name": name}, "stringData": {"k": "v"}})),
            )
            .await
            .expect("secret");
    }
    // Two repositories, announced on our relay: one on the explicit relay, one on a relay
    // only the announcement names (discovered). Their issues are only on those relays.
    let keys = Keys::generate();
    let mut issue_ids = Vec::new();
    for (d, remote) in [
        ("explicit-repo", &explicit_remote),
        ("found-repo", &found_remote),
    ] {
        let issues: Vec<_> = (0..3)
            .map(|i| {
                tagged(
                    &keys,
                    1621,
                    "a",
                    &coordinate(&keys, d),
                    &format!("{d} issue {i}"),
                )
            })
            .collect();
        issue_ids.extend(issues.iter().map(|e| e.id));
        let repo = announcement(&keys, d, &[&own_url, &remote.url()]);
        publish(&remote.url(), std::slice::from_ref(&repo)).await;
        publish(&remote.url(), &issues).await;
        publish(&own_url, &[repo]).await;
    }
    let found_name = discovered_name(&RelayUrl::parse(&found_remote.url()).expect("url"));

    // 2. The real roles, in-process, each as its ServiceAccount.
    let settings = settings_from_yaml(FAST_SETTINGS).expect("settings");
    let scope = mode.namespaced.then(|| mode.watch_ns.to_string());
    let mut copts = ControllerOptions::new(own.url().clone(), IDENTITY.into());
    copts.namespace = scope.clone();
    copts.lease_namespace = mode.release_ns.into();
    copts.settings = settings.clone();
    copts.listen = free_addr();
    copts.debounce = Duration::from_millis(50);
    copts.renew_interval = Duration::from_secs(1);
    copts.lease_duration = Duration::from_secs(5);
    // Long: the finalizer may only go because the worker acknowledged the drain.
    copts.drain_timeout = Duration::from_secs(120);
    let controller_http = copts.listen;
    let mut wopts = WorkerOptions::new(own.url().clone(), WORKER.into());
    wopts.namespace = scope;
    wopts.lease_namespace = mode.release_ns.into();
    wopts.settings = settings;
    wopts.listen = free_addr();
    wopts.session = fast_session();
    wopts.reporter.interval = Duration::from_secs(1);
    wopts.status_interval = Duration::from_millis(500);
    wopts.renew_interval = Duration::from_secs(1);
    wopts.lease_duration = Duration::from_secs(5);
    wopts.close_wait = Duration::from_secs(5);
    let worker_http = wopts.listen;

    let (worker_stop, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(grasp_sync::k8s::worker::run(
        worker_client.clone(),
        wopts,
        async move {
            let _ = worker_stopped.await;
        },
    ));
    let (controller_stop, controller_stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = tokio::spawn(grasp_sync::k8s::controller::run(
        controller_client.clone(),
        copts,
        async move {
            let _ = controller_stopped.await;
        },
    ));

    // The leader Lease and the worker's Lease, written by the roles themselves.
    wait_for("the controller leads", Duration::from_secs(30), || {
        let leases = leases.clone();
        async move {
            let l = leases.get_opt(CONTROLLER_LEASE).await.ok()??;
            (l.spec?.holder_identity.as_deref() == Some(IDENTITY)).then_some(())
        }
    })
    .await;
    wait_for("the worker's Lease", Duration::from_secs(30), || {
        let leases = leases.clone();
        async move {
            let l = leases.get_opt(WORKER).await.ok()??;
            let role = l.labels().get(ROLE_LABEL).cloned();
            (role.as_deref() == Some(ROLE_WORKER)
                && l.spec?.holder_identity.as_deref() == Some(WORKER))
            .then_some(())
        }
    })
    .await;

    // Both relays: finalizer, label, assignment, every condition True.
    let job = Duration::from_secs(90);
    let explicit_now = wait_relay(&relays, "explicit", job, fully_served).await;
    let found = wait_relay(&relays, &found_name, job, fully_served).await;
    assert_eq!(
        found.labels().get(DISCOVERED_LABEL).map(String::as_str),
        Some("true")
    );
    assert_eq!(found.spec.url, found_remote.url());
    // Both repositories' issues, from both relays, are on our relay.
    wait_for_ids(
        &own_url,
        &issue_ids,
        Duration::from_secs(30),
        "issues on our relay",
    )
    .await;
    // The allowlist's status (relayallowlists/status) and the controller's Events.
    wait_for("allowlist status", Duration::from_secs(30), || {
        let allowlists = allowlists.clone();
        async move {
            let s = allowlists.get("loopback").await.ok()?.status?;
            (s.matched >= 1).then_some(())
        }
    })
    .await;
    let events: Api<KubeEvent> = Api::namespaced(admin.clone(), mode.watch_ns);
    wait_for("the controller's Events", Duration::from_secs(30), || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.ok()?;
            let by = |reason: &str| {
                list.items.iter().any(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.reporting_controller.as_deref() == Some(CONTROLLER_MANAGER)
                })
            };
            (by("Assigned") && by("Discovered")).then_some(())
        }
    })
    .await;
    // The other namespace: the roles never touched a SyncRelay there in namespace mode; in
    // cluster mode they serve it like any other.
    if mode.namespaced {
        // Long enough for several passes and status intervals.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let o = other_relays.get("outside").await.expect("outside");
        assert!(o.finalizers().is_empty(), "{o:?}");
        assert!(o.labels().get(WORKER_LABEL).is_none(), "{o:?}");
        assert!(o.status.is_none(), "{o:?}");
    } else {
        wait_relay(&other_relays, "outside", job, |r| {
            r.finalizers().iter().any(|f| f == FINALIZER)
                && r.labels().get(WORKER_LABEL).map(String::as_str) == Some(WORKER)
                && holds(r, "Connected")
        })
        .await;
    }

    // No refused write so far.
    let worker_applied = scrape(
        worker_http,
        "grasp_sync_status_patches_total{result=\"applied\"}",
    )
    .await;
    let worker_errors = scrape(
        worker_http,
        "grasp_sync_status_patches_total{result=\"error\"}",
    )
    .await;
    let controller_applied = scrape(
        controller_http,
        "grasp_sync_status_patches_total{result=\"applied\"}",
    )
    .await;
    let controller_errors = scrape(
        controller_http,
        "grasp_sync_status_patches_total{result=\"error\"}",
    )
    .await;
    assert!(worker_applied > 0.0, "the worker applied no status");
    assert!(controller_applied > 0.0, "the controller applied no status");
    assert_eq!(worker_errors, 0.0, "the worker's writes failed");
    assert_eq!(controller_errors, 0.0, "the controller's writes failed");

    // 3. Refused anything outside the job (while both roles run).
    let other_worker = "gs-grasp-sync-worker-1";
    // Not held (a live one would be handed relays): it only has to exist.
    leases
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": other_worker}, "spec": {}})),
        )
        .await
        .expect("another worker's Lease");
    let (w, c) = (&worker_client, &controller_client);
    let (rel, watch, other) = (
        mode.release_ns.to_string(),
        mode.watch_ns.to_string(),
        mode.other_ns.to_string(),
    );
    let (wn, en) = (watch.clone(), "explicit".to_string());
    let mut refused: Vec<(&str, &Client, Op)> = vec![
        // The worker never writes a SyncRelay but its status.
        (
            "worker",
            w,
            Op::PatchRelaySpec {
                ns: wn.clone(),
                name: en.clone(),
            },
        ),
        (
            "worker",
            w,
            Op::ApplyRelaySpec {
                ns: wn.clone(),
                name: en.clone(),
            },
        ),
        (
            "worker",
            w,
            Op::ReplaceRelay(Box::new(explicit_now.clone())),
        ),
        (
            "worker",
            w,
            Op::PatchRelayLabel {
                ns: wn.clone(),
                name: en.clone(),
            },
        ),
        ("worker", w, Op::CreateRelay { ns: watch.clone() }),
        (
            "worker",
            w,
            Op::DeleteRelay {
                ns: wn.clone(),
                name: en.clone(),
            },
        ),
        // RelayAllowlists: read by nobody but the controller, written by nobody.
        (
            "worker",
            w,
            Op::PatchAllowlistSpec {
                ns: watch.clone(),
                name: "loopback".into(),
            },
        ),
        (
            "worker",
            w,
            Op::ApplyAllowlistStatus {
                ns: watch.clone(),
                name: "loopback".into(),
            },
        ),
        (
            "controller",
            c,
            Op::PatchAllowlistSpec {
                ns: watch.clone(),
                name: "loopback".into(),
            },
        ),
        ("controller", c, Op::CreateAllowlist { ns: watch.clone() }),
        (
            "controller",
            c,
            Op::DeleteAllowlist {
                ns: watch.clone(),
                name: "loopback".into(),
            },
        ),
        // Leases: the worker only its own by name (no list), nobody deletes.
        ("worker", w, Op::ListLeases { ns: rel.clone() }),
        (
            "worker",
            w,
            Op::DeleteLease {
                ns: rel.clone(),
                name: other_worker.into(),
            },
        ),
        (
            "worker",
            w,
            Op::DeleteLease {
                ns: rel.clone(),
                name: CONTROLLER_LEASE.into(),
            },
        ),
        (
            "controller",
            c,
            Op::DeleteLease {
                ns: rel.clone(),
                name: other_worker.into(),
            },
        ),
        // Leases live only in the release namespace.
        ("worker", w, Op::CreateLease { ns: watch.clone() }),
        ("controller", c, Op::CreateLease { ns: watch.clone() }),
        ("controller", c, Op::ListLeases { ns: other.clone() }),
    ];
    // Not asserted: both Lease Roles grant update without resourceNames (worker names follow
    // the StatefulSet's scale), so the worker may also update the controller's leader Lease
    // and other workers' Leases.
    // Secrets, workloads, namespaces, escalation: neither role.
    for (who, client) in [("worker", w), ("controller", c)] {
        for ns in [&rel, &watch] {
            refused.push((
                who,
                client,
                Op::GetSecret {
                    ns: ns.clone(),
                    name: "probe-secret".into(),
                },
            ));
            refused.push((who, client, Op::ListSecrets { ns: ns.clone() }));
            refused.push((who, client, Op::CreatePod { ns: ns.clone() }));
            refused.push((who, client, Op::CreateDeployment { ns: ns.clone() }));
        }
        refused.push((who, client, Op::ListNamespaces));
        let sa = if who == "worker" {
            worker_sa.clone()
        } else {
            controller_sa.clone()
        };
        refused.push((
            who,
            client,
            Op::BindClusterAdmin {
                sa_ns: rel.clone(),
                sa,
            },
        ));
    }
    let mut allowed: Vec<(&str, &Client, Op)> = vec![
        ("worker", w, Op::ListRelays { ns: watch.clone() }),
        (
            "worker",
            w,
            Op::ApplyRelayStatus {
                ns: wn.clone(),
                name: en.clone(),
            },
        ),
        ("controller", c, Op::CreateRelay { ns: watch.clone() }),
        (
            "controller",
            c,
            Op::PatchRelayLabel {
                ns: wn.clone(),
                name: en.clone(),
            },
        ),
        (
            "controller",
            c,
            Op::ApplyAllowlistStatus {
                ns: watch.clone(),
                name: "loopback".into(),
            },
        ),
        ("controller", c, Op::ListLeases { ns: rel.clone() }),
    ];
    // Outside the watched namespace.
    let outside_ops = |ns: &str| {
        vec![
            ("worker", w, Op::ListRelays { ns: ns.to_string() }),
            (
                "worker",
                w,
                Op::ApplyRelayStatus {
                    ns: ns.to_string(),
                    name: "outside".into(),
                },
            ),
            ("controller", c, Op::ListRelays { ns: ns.to_string() }),
            ("controller", c, Op::CreateRelay { ns: ns.to_string() }),
            (
                "controller",
                c,
                Op::PatchRelayLabel {
                    ns: ns.to_string(),
                    name: "outside".into(),
                },
            ),
        ]
    };
    if mode.namespaced {
        refused.extend(outside_ops(&other));
        // Even the namespace the SyncRelays' ServiceAccounts live in.
        refused.push(("controller", c, Op::ListRelays { ns: rel.clone() }));
        refused.push(("worker", w, Op::ListRelays { ns: rel.clone() }));
    } else {
        allowed.extend(outside_ops(&other));
    }
    let before = relays.get("explicit").await.expect("explicit");
    for (who, client, op) in &refused {
        assert_refused(&admin, who, client, op).await;
    }
    for (who, client, op) in &allowed {
        assert_allowed(who, client, op).await;
    }
    // The worker's refused spec writes left nothing behind.
    let after = relays.get("explicit").await.expect("explicit");
    assert_eq!(after.metadata.generation, before.metadata.generation);
    assert!(!after.spec.suspend);
    assert_eq!(
        after.labels().get(WORKER_LABEL).map(String::as_str),
        Some(WORKER)
    );
    println!(
        "{}: {} requests refused with 403, {} allowed",
        mode.label,
        refused.len(),
        allowed.len()
    );

    // The drain handshake with both ServiceAccounts: delete as the admin; the controller asks
    // the worker to drain, the worker acknowledges, the controller removes its finalizer.
    relays
        .delete("explicit", &DeleteParams::default())
        .await
        .expect("delete");
    let deleted = Instant::now();
    let mut saw_drain = false;
    loop {
        match relays.get_opt("explicit").await {
            Ok(None) => break,
            Ok(Some(r)) => {
                saw_drain |= r.annotations().contains_key(DRAIN_ANNOTATION)
                    || condition_reason(&r, "Connected").as_deref() == Some("Drained");
                if deleted.elapsed() > Duration::from_secs(40) {
                    let metrics = support::k8s_bed::http_get(controller_http, "/metrics")
                        .await
                        .map(|m| m.1)
                        .unwrap_or_default();
                    panic!(
                        "the deleted SyncRelay was not finalized within 40 s: {:#?}\n{:#?}\n\
                         controller metrics:\n{metrics}",
                        r.metadata.annotations, r.status
                    );
                }
            }
            Err(e) => assert!(deleted.elapsed() < Duration::from_secs(40), "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{}: deleted SyncRelay finalized in {:?} (drain seen: {})",
        mode.label,
        deleted.elapsed(),
        saw_drain
    );

    // Still no refused write, after the drain.
    assert_eq!(
        scrape(
            worker_http,
            "grasp_sync_status_patches_total{result=\"error\"}"
        )
        .await,
        0.0,
        "the worker's writes failed"
    );
    assert_eq!(
        scrape(
            controller_http,
            "grasp_sync_status_patches_total{result=\"error\"}"
        )
        .await,
        0.0,
        "the controller's writes failed"
    );

    // Shutdown: the worker reports WorkerStopped and releases its Lease; then the controller
    // releases the leader Lease.
    let _ = worker_stop.send(());
    tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("worker stops")
        .expect("worker task")
        .expect("worker ran");
    let l = leases.get(WORKER).await.expect("worker lease");
    assert_eq!(
        l.spec.and_then(|s| s.holder_identity),
        None,
        "the worker released its Lease"
    );
    let stopped = relays.get(&found_name).await.expect("discovered relay");
    assert_eq!(
        condition_reason(&stopped, "Connected").as_deref(),
        Some("WorkerStopped"),
        "{stopped:?}"
    );
    let _ = controller_stop.send(());
    tokio::time::timeout(Duration::from_secs(30), controller)
        .await
        .expect("controller stops")
        .expect("controller task")
        .expect("controller ran");
    let l = leases.get(CONTROLLER_LEASE).await.expect("leader lease");
    assert_eq!(
        l.spec.and_then(|s| s.holder_identity),
        None,
        "the controller released the leader Lease"
    );

    // Nothing either role logged was a refusal.
    let forbidden = forbidden_warnings();
    assert!(
        forbidden.is_empty(),
        "refusals logged:\n{}",
        forbidden.join("\n")
    );

    own.shutdown();
    for r in [&explicit_remote, &found_remote, &outside_remote] {
        r.stop();
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("{} mode: proven in {:?}", mode.label, started.elapsed());
}
